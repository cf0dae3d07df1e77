//! The plan's rules one by one, and a property test: any sequence of requests, cut
//! into commit groups anywhere, ends exactly as a small reference model applying
//! the same requests one at a time says it must.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, Utc};
use proptest::prelude::*;
use uuid::Uuid;

use super::*;
use crate::ledger::{AccountStatus, GENESIS_HASH};

fn eur() -> Currency {
    Currency::parse("EUR").unwrap_or_else(|_| unreachable!())
}

fn usd() -> Currency {
    Currency::parse("USD").unwrap_or_else(|_| unreachable!())
}

fn at(second: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_800_000_000 + second, 0).unwrap_or_default()
}

fn account(n: u128) -> AccountId {
    AccountId::from_uuid(Uuid::from_u128(n))
}

fn book(id: AccountId, owner: &str, currency: Currency, balance_minor: i64) -> LedgerAccount {
    LedgerAccount {
        account_id: id,
        owner_id: Some(owner.to_owned()),
        currency,
        kind: AccountKind::Customer,
        status: AccountStatus::Active,
        balance_minor,
        pending_debits_minor: 0,
        entry_count: 0,
        last_entry_hash: GENESIS_HASH.to_owned(),
        status_version: 1,
    }
}

fn settlement(currency: Currency) -> LedgerAccount {
    LedgerAccount {
        account_id: AccountId::settlement(currency),
        owner_id: None,
        kind: AccountKind::Settlement,
        ..book(AccountId::settlement(currency), "", currency, 0)
    }
}

fn movement(from: AccountId, to: AccountId, amount: i64) -> Movement {
    Movement {
        kind: TransferKind::Transfer,
        from_account_id: from,
        to_account_id: to,
        amount: PositiveAmount::parse(amount).unwrap_or_else(|_| unreachable!()),
        currency: eur(),
        description: Description::default(),
        reverses_transfer_id: None,
    }
}

fn key(raw: &str) -> IdempotencyKey {
    IdempotencyKey::parse(raw).unwrap_or_else(|_| unreachable!())
}

fn transfer(from: AccountId, to: AccountId, amount: i64, raw_key: &str) -> Proposal {
    Proposal::new(PostingRequest::movement(
        movement(from, to, amount),
        Some("alice".into()),
        "user:alice".into(),
        key(raw_key),
    ))
}

/// The movement of a proposal that is one.
fn moved(proposal: &mut Proposal) -> &mut Movement {
    match &mut proposal.request.action {
        Action::Move(movement) => movement,
        _ => unreachable!("not a movement"),
    }
}

fn facts(books: impl IntoIterator<Item = LedgerAccount>) -> Facts {
    Facts {
        books: books
            .into_iter()
            .map(|book| (book.account_id, book))
            .collect(),
        ..Facts::default()
    }
}

/// Alice's book `account(1)` holding `balance_minor` and bob's empty `account(2)`.
fn alice_pays_bob(balance_minor: i64) -> Facts {
    facts([
        book(account(1), "alice", eur(), balance_minor),
        book(account(2), "bob", eur(), 0),
    ])
}

fn code(outcome: &Outcome) -> Option<ErrorCode> {
    outcome.result.as_ref().err().map(|refusal| refusal.code)
}

#[test]
fn a_refused_request_in_a_group_does_not_fail_the_others() {
    let (a, b) = (account(1), account(2));
    let group = [
        transfer(a, b, 60, "first"),
        transfer(a, b, 60, "too-much"),
        transfer(a, b, 40, "last"),
    ];

    let plan = plan(&group, alice_pays_bob(100), at(0));

    assert!(plan.outcomes[0].result.is_ok());
    assert_eq!(code(&plan.outcomes[1]), Some(ErrorCode::InsufficientFunds));
    assert!(plan.outcomes[2].result.is_ok());
    assert_eq!(plan.writes.transfers.len(), 2);
    assert_eq!(plan.writes.entries.len(), 4);
    assert_eq!(plan.writes.requests.len(), 3, "the refusal is recorded too");
    let balances: Vec<i64> = plan.writes.books.iter().map(|b| b.balance_minor).collect();
    assert_eq!(balances, [0, 100]);
}

#[test]
fn one_key_twice_in_a_group_posts_once_and_both_get_its_transfer() {
    let (a, b) = (account(1), account(2));
    let group = [transfer(a, b, 10, "same"), transfer(a, b, 10, "same")];

    let plan = plan(&group, alice_pays_bob(100), at(0));

    let first = plan.outcomes[0].result.clone().ok();
    assert!(first.is_some());
    assert_eq!(plan.outcomes[1].result.clone().ok(), first);
    assert!(plan.outcomes[1].replayed);
    assert_eq!(plan.writes.transfers.len(), 1);
    assert_eq!(plan.writes.requests.len(), 1);
}

#[test]
fn one_key_with_another_body_in_the_same_group_is_reused() {
    let (a, b) = (account(1), account(2));
    let group = [transfer(a, b, 10, "same"), transfer(a, b, 11, "same")];

    let plan = plan(&group, alice_pays_bob(100), at(0));

    assert_eq!(
        code(&plan.outcomes[1]),
        Some(ErrorCode::IdempotencyKeyReused)
    );
    assert_eq!(plan.writes.requests.len(), 1, "a reuse leaves no record");
}

#[test]
fn a_refused_key_stays_refused_when_replayed_after_funding() {
    let (a, b) = (account(1), account(2));
    let request = transfer(a, b, 500, "early");
    let first = plan(std::slice::from_ref(&request), alice_pays_bob(100), at(0));
    assert_eq!(code(&first.outcomes[0]), Some(ErrorCode::InsufficientFunds));
    let record = first.writes.requests[0].clone();
    let RecordedOutcome::Refused(refusal) = record.outcome else {
        panic!("a refusal is recorded as one");
    };

    let mut funded = alice_pays_bob(1_000);
    funded.requests.insert(
        record.key,
        KnownRequest {
            fingerprint: record.fingerprint,
            outcome: Err(refusal),
        },
    );
    let retry = plan(&[Proposal::new(request.request)], funded, at(1));

    assert_eq!(code(&retry.outcomes[0]), Some(ErrorCode::InsufficientFunds));
    assert!(retry.outcomes[0].replayed);
    assert!(retry.writes.is_empty());
}

#[test]
fn entries_chain_across_postings_of_one_group() {
    let (a, b) = (account(1), account(2));
    let group = [transfer(a, b, 10, "k1"), transfer(a, b, 20, "k2")];

    let plan = plan(&group, alice_pays_bob(100), at(0));

    let of_a: Vec<&Entry> = plan
        .writes
        .entries
        .iter()
        .filter(|e| e.account_id == a)
        .collect();
    assert_eq!(of_a[0].account_seq, 1);
    assert_eq!(of_a[0].prev_hash, GENESIS_HASH);
    assert_eq!(of_a[1].account_seq, 2);
    assert_eq!(of_a[1].prev_hash, of_a[0].entry_hash);
    assert_eq!(of_a[1].balance_after_minor, 70);
    for entry in &plan.writes.entries {
        assert_eq!(entry.entry_hash, entry_hash(entry));
    }
    let head = plan.writes.books.iter().find(|b| b.account_id == a);
    assert_eq!(
        head.map(|b| b.last_entry_hash.as_str()),
        Some(of_a[1].entry_hash.as_str())
    );
}

#[test]
fn a_second_reversal_in_the_same_group_is_refused() {
    let (a, b) = (account(1), account(2));
    let original = TransferId::from_uuid(Uuid::from_u128(99));
    let reversal = |key: &str| {
        let mut proposal = transfer(b, a, 10, key);
        moved(&mut proposal).kind = TransferKind::Reversal;
        proposal.request.required_owner = None;
        moved(&mut proposal).reverses_transfer_id = Some(original);
        proposal
    };

    let plan = plan(
        &[reversal("r1"), reversal("r2")],
        facts([book(a, "alice", eur(), 0), book(b, "bob", eur(), 10)]),
        at(0),
    );

    assert!(plan.outcomes[0].result.is_ok());
    assert_eq!(code(&plan.outcomes[1]), Some(ErrorCode::Conflict));
}

#[test]
fn refusals_take_the_contracts_precedence() {
    let (a, b, c) = (account(1), account(2), account(3));
    // Alice's own frozen account: someone else's would be not found to her.
    let mut frozen = book(b, "alice", eur(), 0);
    frozen.status = AccountStatus::Frozen;
    let world = || {
        facts([
            book(a, "alice", eur(), 100),
            frozen.clone(),
            book(c, "carol", usd(), 0),
        ])
    };

    let missing = plan(&[transfer(a, account(9), 1, "k")], world(), at(0));
    let not_owner = plan(&[transfer(c, a, 1, "k")], world(), at(0));
    let mismatch = plan(&[transfer(a, c, 1, "k")], world(), at(0));
    let to_frozen = plan(&[transfer(a, b, 1, "k")], world(), at(0));

    assert_eq!(code(&missing.outcomes[0]), Some(ErrorCode::NotFound));
    assert_eq!(code(&not_owner.outcomes[0]), Some(ErrorCode::NotFound));
    assert_eq!(
        code(&mismatch.outcomes[0]),
        Some(ErrorCode::CurrencyMismatch)
    );
    assert_eq!(code(&to_frozen.outcomes[0]), Some(ErrorCode::AccountFrozen));
}

#[test]
fn customers_cannot_transfer_to_or_from_a_settlement_book() {
    let a = account(1);
    let plan = plan(
        &[transfer(a, AccountId::settlement(eur()), 1, "k")],
        facts([book(a, "alice", eur(), 100), settlement(eur())]),
        at(0),
    );
    assert_eq!(code(&plan.outcomes[0]), Some(ErrorCode::NotFound));
}

#[test]
fn a_frozen_or_closed_destination_of_someone_else_is_not_found() {
    let alice = account(1);
    let mut bobs = book(account(2), "bob", eur(), 0);
    bobs.status = AccountStatus::Frozen;
    let mut own = book(account(3), "alice", eur(), 0);
    own.status = AccountStatus::Frozen;

    let plan = plan(
        &[
            transfer(alice, account(2), 10, "to-bob"),
            transfer(alice, account(3), 10, "to-own"),
        ],
        facts([book(alice, "alice", eur(), 100), bobs, own]),
        at(0),
    );

    assert_eq!(code(&plan.outcomes[0]), Some(ErrorCode::NotFound));
    // Her own frozen account she is told about.
    assert_eq!(code(&plan.outcomes[1]), Some(ErrorCode::AccountFrozen));
}

#[test]
fn no_money_reaches_a_book_whose_account_is_still_being_opened() {
    let a = account(1);
    let mut half_open = book(account(2), "bob", eur(), 0);
    half_open.status_version = 0;
    let mut deposit = transfer(AccountId::settlement(eur()), account(2), 10, "deposit");
    moved(&mut deposit).kind = TransferKind::Deposit;
    deposit.request.required_owner = None;

    let plan = plan(
        &[transfer(a, account(2), 10, "pay"), deposit],
        facts([book(a, "alice", eur(), 100), half_open, settlement(eur())]),
        at(0),
    );

    for outcome in &plan.outcomes {
        assert_eq!(code(outcome), Some(ErrorCode::NotFound));
    }
    assert!(plan.writes.transfers.is_empty() && plan.writes.books.is_empty());
}

#[test]
fn a_customer_book_squatting_a_settlement_id_never_settles() {
    let a = account(1);
    let squatter = book(AccountId::settlement(eur()), "mallory", eur(), 0);
    let mut deposit = transfer(AccountId::settlement(eur()), a, 10, "deposit");
    moved(&mut deposit).kind = TransferKind::Deposit;
    deposit.request.required_owner = None;
    let mut withdrawal = transfer(a, AccountId::settlement(eur()), 10, "withdrawal");
    moved(&mut withdrawal).kind = TransferKind::Withdrawal;
    withdrawal.request.required_owner = None;

    let plan = plan(
        &[deposit, withdrawal],
        facts([book(a, "alice", eur(), 100), squatter]),
        at(0),
    );

    for outcome in &plan.outcomes {
        assert_eq!(code(outcome), Some(ErrorCode::Internal));
    }
    assert!(plan.writes.transfers.is_empty() && plan.writes.books.is_empty());
}

#[test]
fn a_deposit_may_take_the_settlement_book_below_zero_but_never_overflow() {
    let a = account(1);
    let deposit = |amount: i64, key: &str| {
        let mut proposal = transfer(AccountId::settlement(eur()), a, amount, key);
        moved(&mut proposal).kind = TransferKind::Deposit;
        proposal.request.required_owner = None;
        proposal
    };

    let plan = plan(
        &[deposit(i64::MAX, "max"), deposit(1, "one-more")],
        facts([book(a, "alice", eur(), 0), settlement(eur())]),
        at(0),
    );

    assert!(plan.outcomes[0].result.is_ok());
    assert_eq!(code(&plan.outcomes[1]), Some(ErrorCode::InvalidArgument));
    let settlement_book = plan
        .writes
        .books
        .iter()
        .find(|b| b.account_id == AccountId::settlement(eur()));
    assert_eq!(settlement_book.map(|b| b.balance_minor), Some(-i64::MAX));
}

// Holds and batches, rule by rule.

fn hold(from: AccountId, to: AccountId, amount: i64, raw_key: &str) -> Proposal {
    hold_by(from, to, amount, raw_key, "alice", 60)
}

fn hold_by(
    from: AccountId,
    to: AccountId,
    amount: i64,
    raw_key: &str,
    user: &str,
    timeout_seconds: i64,
) -> Proposal {
    Proposal::new(PostingRequest {
        action: Action::Hold {
            movement: movement(from, to, amount),
            timeout_seconds,
        },
        required_owner: Some(user.into()),
        scope: format!("user:{user}"),
        idempotency_key: key(raw_key),
    })
}

fn resolve(action: Action, user: Option<&str>, raw_key: &str) -> Proposal {
    Proposal::new(PostingRequest {
        action,
        required_owner: user.map(str::to_owned),
        scope: user.map_or("user:operator".to_owned(), |user| format!("user:{user}")),
        idempotency_key: key(raw_key),
    })
}

fn post(hold_id: TransferId, amount: Option<i64>, user: Option<&str>, raw_key: &str) -> Proposal {
    let amount =
        amount.map(|minor| PositiveAmount::parse(minor).unwrap_or_else(|_| unreachable!()));
    resolve(Action::PostHold { hold_id, amount }, user, raw_key)
}

fn void(hold_id: TransferId, user: Option<&str>, raw_key: &str) -> Proposal {
    resolve(Action::VoidHold { hold_id }, user, raw_key)
}

fn batch(items: &[(AccountId, AccountId, i64)], raw_key: &str) -> Proposal {
    Proposal::new(PostingRequest {
        action: Action::Batch(
            items
                .iter()
                .map(|&(from, to, amount)| movement(from, to, amount))
                .collect(),
        ),
        required_owner: Some("alice".into()),
        scope: "user:alice".into(),
        idempotency_key: key(raw_key),
    })
}

/// Plans `proposals` and writes the result back into `facts`, as the store would.
fn run(facts: &mut Facts, proposals: &[Proposal], now: DateTime<Utc>) -> Plan {
    let planned = plan(proposals, facts.clone(), now);
    commit(facts, &planned);
    planned
}

fn only_id(outcome: &Outcome) -> TransferId {
    match &outcome.result {
        Ok(transfers) if transfers.len() == 1 => transfers[0].transfer_id,
        other => panic!("expected one transfer, got {other:?}"),
    }
}

fn state_of(outcome: &Outcome) -> Option<HoldState> {
    outcome
        .result
        .as_ref()
        .ok()
        .and_then(|t| t.first())
        .map(Transfer::status)
}

#[test]
fn a_hold_reserves_available_money_but_leaves_the_balance() {
    let (a, b) = (account(1), account(2));
    let mut facts = alice_pays_bob(100);

    let planned = run(
        &mut facts,
        &[
            hold(a, b, 70, "h"),
            transfer(a, b, 40, "t"),
            hold(a, b, 31, "h2"),
            transfer(a, b, 30, "t2"),
        ],
        at(0),
    );

    assert_eq!(state_of(&planned.outcomes[0]), Some(HoldState::Pending));
    assert_eq!(
        code(&planned.outcomes[1]),
        Some(ErrorCode::InsufficientFunds)
    );
    assert_eq!(
        code(&planned.outcomes[2]),
        Some(ErrorCode::InsufficientFunds)
    );
    assert!(planned.outcomes[3].result.is_ok());
    assert_eq!(facts.books[&a].balance_minor, 70);
    assert_eq!(facts.books[&a].pending_debits_minor, 70);
    assert_eq!(facts.books[&a].available_minor(), 0);
    assert_eq!(planned.writes.holds.len(), 1);
    assert!(
        planned
            .writes
            .entries
            .iter()
            .all(|e| e.transfer_id != only_id(&planned.outcomes[0]))
    );
}

#[test]
fn posting_part_of_a_hold_moves_that_part_and_releases_the_rest() {
    let (a, b) = (account(1), account(2));
    let mut facts = alice_pays_bob(100);
    let placed = run(&mut facts, &[hold(a, b, 80, "h")], at(0));
    let hold_id = only_id(&placed.outcomes[0]);

    let posted = run(
        &mut facts,
        &[post(hold_id, Some(50), Some("alice"), "p")],
        at(1),
    );

    let transfer = posted.outcomes[0].clone().transfer().ok();
    assert_eq!(
        transfer.as_ref().map(Transfer::status),
        Some(HoldState::Posted)
    );
    assert_eq!(transfer.as_ref().map(|t| t.amount_minor), Some(50));
    assert_eq!(
        transfer
            .as_ref()
            .and_then(|t| t.hold.as_ref())
            .map(|h| h.held_minor),
        Some(80)
    );
    assert_eq!(transfer.map(|t| t.transfer_id), Some(hold_id));
    assert_eq!(facts.books[&a].balance_minor, 50);
    assert_eq!(facts.books[&a].pending_debits_minor, 0);
    assert_eq!(facts.books[&b].balance_minor, 50);
    // The journal's transfer carries the hold's id and the posted amount.
    assert_eq!(posted.writes.transfers[0].transfer.transfer_id, hold_id);
    assert_eq!(posted.writes.transfers[0].transfer.amount_minor, 50);

    let again = run(
        &mut facts,
        &[
            post(hold_id, None, Some("alice"), "p2"),
            void(hold_id, None, "v"),
        ],
        at(2),
    );
    for outcome in &again.outcomes {
        assert_eq!(code(outcome), Some(ErrorCode::HoldNotPending));
    }
}

#[test]
fn a_hold_cannot_post_more_than_it_holds_and_a_void_releases_it_all() {
    let (a, b) = (account(1), account(2));
    let mut facts = alice_pays_bob(100);
    let hold_id = only_id(&run(&mut facts, &[hold(a, b, 30, "h")], at(0)).outcomes[0]);

    let over = run(
        &mut facts,
        &[post(hold_id, Some(31), Some("alice"), "p")],
        at(1),
    );
    assert_eq!(code(&over.outcomes[0]), Some(ErrorCode::InvalidArgument));
    let voided = run(&mut facts, &[void(hold_id, Some("alice"), "v")], at(2));

    assert_eq!(state_of(&voided.outcomes[0]), Some(HoldState::Voided));
    assert_eq!(
        voided.outcomes[0]
            .clone()
            .transfer()
            .map(|t| t.amount_minor)
            .ok(),
        Some(0)
    );
    assert_eq!(facts.books[&a].pending_debits_minor, 0);
    assert_eq!(facts.books[&a].balance_minor, 100);
    assert!(voided.writes.entries.is_empty());
}

#[test]
fn a_hold_expires_when_the_clock_at_commit_reaches_its_time() {
    let (a, b) = (account(1), account(2));
    let mut facts = alice_pays_bob(100);
    let hold_id =
        only_id(&run(&mut facts, &[hold_by(a, b, 100, "h", "alice", 10)], at(0)).outcomes[0]);

    let before = run(&mut facts, &[transfer(a, b, 1, "early")], at(9));
    assert_eq!(
        code(&before.outcomes[0]),
        Some(ErrorCode::InsufficientFunds)
    );
    // At its expiry time the hold no longer counts, and can no longer be posted.
    let after = run(
        &mut facts,
        &[
            transfer(a, b, 1, "on-time"),
            post(hold_id, None, Some("alice"), "late"),
        ],
        at(10),
    );

    assert!(after.outcomes[0].result.is_ok());
    assert_eq!(code(&after.outcomes[1]), Some(ErrorCode::HoldNotPending));
    assert_eq!(facts.holds[&hold_id].state(), HoldState::Expired);
    assert_eq!(facts.books[&a].pending_debits_minor, 0);
    assert_eq!(after.writes.resolutions.len(), 1);
}

#[test]
fn only_the_payer_operators_and_services_resolve_a_hold() {
    let (a, b) = (account(1), account(2));
    let mut facts = alice_pays_bob(100);
    facts
        .books
        .insert(account(3), book(account(3), "carol", eur(), 0));
    let hold_id = only_id(&run(&mut facts, &[hold(a, b, 10, "h")], at(0)).outcomes[0]);

    let by_payee = run(&mut facts, &[post(hold_id, None, Some("bob"), "p")], at(1));
    let by_stranger = run(&mut facts, &[void(hold_id, Some("carol"), "v")], at(1));
    assert_eq!(code(&by_payee.outcomes[0]), Some(ErrorCode::Forbidden));
    assert_eq!(code(&by_stranger.outcomes[0]), Some(ErrorCode::NotFound));
    assert_eq!(facts.holds[&hold_id].state(), HoldState::Pending);

    let by_operator = run(&mut facts, &[post(hold_id, None, None, "p")], at(2));
    assert_eq!(state_of(&by_operator.outcomes[0]), Some(HoldState::Posted));
}

#[test]
fn a_frozen_source_keeps_its_hold_pending_and_a_hidden_destination_is_not_found() {
    let (a, b) = (account(1), account(2));
    let mut facts = alice_pays_bob(100);
    let hold_id = only_id(&run(&mut facts, &[hold(a, b, 10, "h")], at(0)).outcomes[0]);

    if let Some(book) = facts.books.get_mut(&b) {
        book.status = AccountStatus::Frozen;
    }
    let into_frozen = run(
        &mut facts,
        &[post(hold_id, None, Some("alice"), "p1")],
        at(1),
    );
    assert_eq!(code(&into_frozen.outcomes[0]), Some(ErrorCode::NotFound));
    if let Some(book) = facts.books.get_mut(&a) {
        book.status = AccountStatus::Frozen;
    }
    let from_frozen = run(
        &mut facts,
        &[post(hold_id, None, Some("alice"), "p2")],
        at(2),
    );
    assert_eq!(
        code(&from_frozen.outcomes[0]),
        Some(ErrorCode::AccountFrozen)
    );
    assert_eq!(facts.holds[&hold_id].state(), HoldState::Pending);
    // Voiding is allowed in every account state.
    let voided = run(&mut facts, &[void(hold_id, Some("alice"), "v")], at(3));
    assert_eq!(state_of(&voided.outcomes[0]), Some(HoldState::Voided));
}

#[test]
fn a_batch_posts_every_item_in_order_or_none_and_names_each_refused_item() {
    let (a, b) = (account(1), account(2));
    let mut facts = alice_pays_bob(100);
    facts
        .books
        .insert(account(3), book(account(3), "alice", eur(), 0));
    let c = account(3);

    // The second item is paid by the first one.
    let chained = run(&mut facts, &[batch(&[(a, c, 60), (c, b, 50)], "ok")], at(0));
    let transfers = chained.outcomes[0].result.clone().unwrap_or_default();
    assert_eq!(transfers.len(), 2);
    assert_eq!(
        chained.writes.transfers[1].batch.map(|slot| slot.index),
        Some(1)
    );
    assert_eq!(facts.books[&b].balance_minor, 50);

    let refused = run(
        &mut facts,
        &[
            batch(&[(a, b, 10), (a, account(9), 1), (a, b, 1_000)], "bad"),
            transfer(a, b, 40, "after"),
        ],
        at(1),
    );
    let refusal = refused.outcomes[0].result.clone().err();
    assert_eq!(refusal.as_ref().map(|r| r.code), Some(ErrorCode::NotFound));
    let indexes: Vec<usize> = refusal
        .iter()
        .flat_map(|r| &r.items)
        .map(|item| item.index)
        .collect();
    assert_eq!(indexes, [1, 2]);
    // Nothing of the batch stays; the next request of the group sees the books as they were.
    assert!(refused.outcomes[1].result.is_ok());
    assert_eq!(refused.writes.transfers.len(), 1);
    assert_eq!(facts.books[&a].balance_minor, 0);
    // Replayed, the batch is refused the same way.
    let replay = run(
        &mut facts,
        &[batch(
            &[(a, b, 10), (a, account(9), 1), (a, b, 1_000)],
            "bad",
        )],
        at(2),
    );
    assert!(replay.outcomes[0].replayed);
    assert_eq!(replay.outcomes[0].result.clone().err(), refusal);
}

#[test]
fn closing_waits_for_pending_holds() {
    let (a, b) = (account(1), account(2));
    let mut facts = alice_pays_bob(10);
    run(
        &mut facts,
        &[hold(a, b, 10, "h"), transfer(a, b, 1, "t")],
        at(0),
    );
    let mut emptied = facts.books[&a].clone();
    emptied.balance_minor = 0;
    assert!(matches!(
        emptied.decide_status(AccountStatus::Closed, None),
        Err(LedgerError::Conflict(_))
    ));
}

// The reference model: the same rules, written as plainly as possible, applied to
// one request at a time.

#[derive(Debug, Clone)]
struct ModelAccount {
    owner: Option<String>,
    settlement: bool,
    currency: Currency,
    status: AccountStatus,
    balance: i64,
    pending: i64,
}

#[derive(Debug, Clone)]
struct ModelHold {
    from: AccountId,
    to: AccountId,
    amount: i64,
    creator: String,
    expires_at: DateTime<Utc>,
    state: HoldState,
}

/// What a request got: its transfers' ids, or its code and refused items.
type Answer = Result<Vec<TransferId>, (ErrorCode, Vec<usize>)>;

#[derive(Debug, Default, Clone)]
struct Model {
    accounts: BTreeMap<AccountId, ModelAccount>,
    /// The answer each key got: its request and the answer.
    keys: HashMap<(String, String), (PostingRequest, Answer)>,
    reversed: HashSet<TransferId>,
    holds: BTreeMap<TransferId, ModelHold>,
}

fn refused(code: ErrorCode) -> (ErrorCode, Vec<usize>) {
    (code, Vec::new())
}

impl Model {
    fn expire(&mut self, now: DateTime<Utc>) {
        for hold in self.holds.values_mut() {
            if hold.state == HoldState::Pending && now >= hold.expires_at {
                hold.state = HoldState::Expired;
                if let Some(from) = self.accounts.get_mut(&hold.from) {
                    from.pending -= hold.amount;
                }
            }
        }
    }

    fn apply(&mut self, proposal: &Proposal, now: DateTime<Utc>) -> (Answer, bool) {
        self.expire(now);
        let request = &proposal.request;
        let key = (
            request.scope.clone(),
            request.idempotency_key.as_str().to_owned(),
        );
        if let Some((earlier, answer)) = self.keys.get(&key) {
            return if earlier == request {
                (answer.clone(), true)
            } else {
                (Err(refused(ErrorCode::IdempotencyKeyReused)), false)
            };
        }
        let owner = request.required_owner.as_deref();
        let answer = match &request.action {
            Action::Move(movement) => self
                .movement(movement, owner, true)
                .map(|()| vec![proposal.transfer_ids[0]])
                .map_err(refused),
            Action::Hold {
                movement,
                timeout_seconds,
            } => self
                .place(
                    movement,
                    owner,
                    &request.scope,
                    proposal.transfer_ids[0],
                    now,
                    *timeout_seconds,
                )
                .map(|()| vec![proposal.transfer_ids[0]])
                .map_err(refused),
            Action::PostHold { hold_id, amount } => self
                .post(*hold_id, amount.map(|a| a.minor()), owner, &request.scope)
                .map(|()| vec![*hold_id])
                .map_err(refused),
            Action::VoidHold { hold_id } => self
                .void(*hold_id, owner, &request.scope)
                .map(|()| vec![*hold_id])
                .map_err(refused),
            Action::Batch(items) => {
                let before = self.accounts.clone();
                let mut failed = Vec::new();
                for (index, item) in items.iter().enumerate() {
                    if let Err(code) = self.movement(item, owner, true) {
                        failed.push((index, code));
                    }
                }
                match failed.first() {
                    None => Ok(proposal.transfer_ids.clone()),
                    Some(&(_, code)) => {
                        self.accounts = before;
                        Err((code, failed.iter().map(|(index, _)| *index).collect()))
                    }
                }
            }
        };
        self.keys.insert(key, (request.clone(), answer.clone()));
        (answer, false)
    }

    /// Decides a movement and, if `apply`, moves the money.
    fn movement(
        &mut self,
        movement: &Movement,
        owner: Option<&str>,
        apply: bool,
    ) -> Result<(), ErrorCode> {
        self.admit(movement, owner)?;
        let amount = i128::from(movement.amount.minor());
        let from = &self.accounts[&movement.from_account_id];
        let to = &self.accounts[&movement.to_account_id];
        let fits = |value: i128| (i128::from(i64::MIN)..=i128::from(i64::MAX)).contains(&value);
        let from_after = i128::from(from.balance) - amount;
        if !fits(from_after) {
            return Err(ErrorCode::InvalidArgument);
        }
        if !from.settlement && from_after < i128::from(from.pending) {
            return Err(ErrorCode::InsufficientFunds);
        }
        if !fits(i128::from(to.balance) + amount) {
            return Err(ErrorCode::InvalidArgument);
        }
        if apply {
            let amount = movement.amount.minor();
            if let Some(from) = self.accounts.get_mut(&movement.from_account_id) {
                from.balance -= amount;
            }
            if let Some(to) = self.accounts.get_mut(&movement.to_account_id) {
                to.balance += amount;
            }
            if let Some(original) = movement.reverses_transfer_id {
                self.reversed.insert(original);
            }
        }
        Ok(())
    }

    fn admit(&self, movement: &Movement, owner: Option<&str>) -> Result<(), ErrorCode> {
        let from = self
            .accounts
            .get(&movement.from_account_id)
            .ok_or(ErrorCode::NotFound)?;
        let to = self
            .accounts
            .get(&movement.to_account_id)
            .ok_or(ErrorCode::NotFound)?;
        if movement.from_account_id == movement.to_account_id {
            return Err(ErrorCode::InvalidArgument);
        }
        if let Some(owner) = owner
            && from.owner.as_deref() != Some(owner)
        {
            return Err(ErrorCode::NotFound);
        }
        if movement.kind == TransferKind::Transfer && (from.settlement || to.settlement) {
            return Err(ErrorCode::NotFound);
        }
        if from.currency != movement.currency || to.currency != movement.currency {
            return Err(ErrorCode::CurrencyMismatch);
        }
        let foreign_destination = owner.is_some_and(|owner| to.owner.as_deref() != Some(owner));
        for (side, hidden) in [(from, false), (to, foreign_destination)] {
            match side.status {
                AccountStatus::Active => {}
                _ if hidden => return Err(ErrorCode::NotFound),
                AccountStatus::Frozen => return Err(ErrorCode::AccountFrozen),
                AccountStatus::Closed => return Err(ErrorCode::AccountClosed),
            }
        }
        if movement
            .reverses_transfer_id
            .is_some_and(|original| self.reversed.contains(&original))
        {
            return Err(ErrorCode::Conflict);
        }
        Ok(())
    }

    fn place(
        &mut self,
        movement: &Movement,
        owner: Option<&str>,
        scope: &str,
        id: TransferId,
        now: DateTime<Utc>,
        timeout_seconds: i64,
    ) -> Result<(), ErrorCode> {
        self.admit(movement, owner)?;
        let amount = movement.amount.minor();
        let from = self
            .accounts
            .get_mut(&movement.from_account_id)
            .ok_or(ErrorCode::NotFound)?;
        let pending = from
            .pending
            .checked_add(amount)
            .ok_or(ErrorCode::InvalidArgument)?;
        if pending > from.balance {
            return Err(ErrorCode::InsufficientFunds);
        }
        from.pending = pending;
        self.holds.insert(
            id,
            ModelHold {
                from: movement.from_account_id,
                to: movement.to_account_id,
                amount,
                creator: scope.to_owned(),
                expires_at: now + chrono::TimeDelta::seconds(timeout_seconds),
                state: HoldState::Pending,
            },
        );
        Ok(())
    }

    fn resolvable(
        &self,
        id: TransferId,
        owner: Option<&str>,
        scope: &str,
    ) -> Result<ModelHold, ErrorCode> {
        let hold = self.holds.get(&id).ok_or(ErrorCode::NotFound)?;
        if let Some(user) = owner
            && hold.creator != scope
            && self.accounts[&hold.from].owner.as_deref() != Some(user)
        {
            return Err(if self.accounts[&hold.to].owner.as_deref() == Some(user) {
                ErrorCode::Forbidden
            } else {
                ErrorCode::NotFound
            });
        }
        if hold.state != HoldState::Pending {
            return Err(ErrorCode::HoldNotPending);
        }
        Ok(hold.clone())
    }

    fn post(
        &mut self,
        id: TransferId,
        amount: Option<i64>,
        owner: Option<&str>,
        scope: &str,
    ) -> Result<(), ErrorCode> {
        let hold = self.resolvable(id, owner, scope)?;
        let amount = amount.unwrap_or(hold.amount);
        if amount > hold.amount {
            return Err(ErrorCode::InvalidArgument);
        }
        let as_payer =
            owner.filter(|user| self.accounts[&hold.from].owner.as_deref() == Some(*user));
        let movement = Movement {
            amount: PositiveAmount::parse(amount).map_err(|_| ErrorCode::InvalidArgument)?,
            ..movement(hold.from, hold.to, 1)
        };
        self.admit(&movement, as_payer)?;
        if i128::from(self.accounts[&hold.to].balance) + i128::from(amount) > i128::from(i64::MAX) {
            return Err(ErrorCode::InvalidArgument);
        }
        if let Some(from) = self.accounts.get_mut(&hold.from) {
            from.pending -= hold.amount;
            from.balance -= amount;
        }
        if let Some(to) = self.accounts.get_mut(&hold.to) {
            to.balance += amount;
        }
        if let Some(hold) = self.holds.get_mut(&id) {
            hold.state = HoldState::Posted;
        }
        Ok(())
    }

    fn void(&mut self, id: TransferId, owner: Option<&str>, scope: &str) -> Result<(), ErrorCode> {
        let hold = self.resolvable(id, owner, scope)?;
        if let Some(from) = self.accounts.get_mut(&hold.from) {
            from.pending -= hold.amount;
        }
        if let Some(hold) = self.holds.get_mut(&id) {
            hold.state = HoldState::Voided;
        }
        Ok(())
    }
}

/// A request as generated: which accounts, how much, under which key.
#[derive(Debug, Clone)]
enum Step {
    Transfer {
        from: usize,
        to: usize,
        amount: i64,
        scope: usize,
        key: usize,
        description: usize,
    },
    Deposit {
        to: usize,
        amount: i64,
        key: usize,
    },
    Withdrawal {
        from: usize,
        amount: i64,
        key: usize,
    },
    /// Reverses the n-th transfer committed by an earlier group, if any.
    Reversal {
        nth: usize,
        key: usize,
    },
    Hold {
        from: usize,
        to: usize,
        amount: i64,
        scope: usize,
        key: usize,
        timeout_seconds: i64,
    },
    /// Posts (all, or `amount` of) the n-th hold placed so far, as alice, bob or
    /// an operator.
    PostHold {
        nth: usize,
        amount: Option<i64>,
        scope: usize,
        key: usize,
    },
    VoidHold {
        nth: usize,
        scope: usize,
        key: usize,
    },
    Batch {
        items: Vec<(usize, usize, i64)>,
        scope: usize,
        key: usize,
    },
}

fn step() -> impl Strategy<Value = Step> {
    let amount = prop_oneof![1..=200i64, Just(i64::MAX), Just(i64::MAX - 1)];
    prop_oneof![
        6 => (0..7usize, 0..7usize, amount.clone(), 0..2usize, 0..6usize, 0..2usize).prop_map(
            |(from, to, amount, scope, key, description)| Step::Transfer {
                from, to, amount, scope, key, description
            }
        ),
        2 => (0..7usize, 1..=300i64, 0..6usize).prop_map(|(to, amount, key)| Step::Deposit { to, amount, key }),
        1 => (0..7usize, amount.clone(), 0..6usize).prop_map(|(from, amount, key)| Step::Withdrawal { from, amount, key }),
        2 => (0..3usize, 0..6usize).prop_map(|(nth, key)| Step::Reversal { nth, key }),
        4 => (0..7usize, 0..7usize, amount.clone(), 0..2usize, 0..6usize, 1..=120i64).prop_map(
            |(from, to, amount, scope, key, timeout_seconds)| Step::Hold {
                from, to, amount, scope, key, timeout_seconds
            }
        ),
        3 => (0..4usize, proptest::option::of(1..=250i64), 0..3usize, 0..6usize).prop_map(
            |(nth, amount, scope, key)| Step::PostHold { nth, amount, scope, key }
        ),
        2 => (0..4usize, 0..3usize, 0..6usize).prop_map(|(nth, scope, key)| Step::VoidHold { nth, scope, key }),
        2 => (proptest::collection::vec((0..7usize, 0..7usize, 1..=200i64), 1..4), 0..2usize, 0..6usize).prop_map(
            |(items, scope, key)| Step::Batch { items, scope, key }
        ),
    ]
}

/// Six customer books (two owners, one frozen, one closed, one in dollars) and a
/// seventh id no book has.
fn world() -> (Vec<AccountId>, Facts, Model) {
    let ids: Vec<AccountId> = (1..=7).map(account).collect();
    let mut books = vec![
        book(ids[0], "alice", eur(), 500),
        book(ids[1], "alice", eur(), 0),
        book(ids[2], "bob", eur(), 100),
        book(ids[3], "bob", eur(), 100),
        book(ids[4], "alice", eur(), 100),
        book(ids[5], "alice", usd(), 100),
        settlement(eur()),
    ];
    books[3].status = AccountStatus::Frozen;
    books[4].status = AccountStatus::Closed;
    let mut model = Model::default();
    for book in &books {
        model.accounts.insert(
            book.account_id,
            ModelAccount {
                owner: book.owner_id.clone(),
                settlement: book.kind == AccountKind::Settlement,
                currency: book.currency,
                status: book.status,
                balance: book.balance_minor,
                pending: 0,
            },
        );
    }
    (ids, facts(books), model)
}

fn proposal_of(
    step: &Step,
    ids: &[AccountId],
    committed: &[Transfer],
    holds: &[TransferId],
) -> Option<Proposal> {
    let owners = ["alice", "bob"];
    let key = |scope: &str, key: usize| {
        IdempotencyKey::parse(&format!("{scope}-key-{key}")).unwrap_or_else(|_| unreachable!())
    };
    let amount = |minor: i64| PositiveAmount::parse(minor).unwrap_or_else(|_| unreachable!());
    let settlement = AccountId::settlement(eur());
    let operator = |action: Action, k: String| PostingRequest {
        action,
        required_owner: None,
        scope: "user:operator".into(),
        idempotency_key: key(&k, 0),
    };
    let user = |action: Action, scope: usize, k: usize| PostingRequest {
        action,
        required_owner: Some(owners[scope].to_owned()),
        scope: format!("user:{}", owners[scope]),
        idempotency_key: key(owners[scope], k),
    };
    // Alice, bob, or (scope 2) an operator.
    let anyone = |action: Action, scope: usize, k: usize| match scope {
        2 => operator(action, format!("resolve-{k}")),
        _ => user(action, scope, k),
    };
    let plain = |kind, from, to, minor| Movement {
        kind,
        from_account_id: from,
        to_account_id: to,
        amount: amount(minor),
        currency: eur(),
        description: Description::default(),
        reverses_transfer_id: None,
    };
    let request = match step {
        Step::Transfer {
            from,
            to,
            amount: minor,
            scope,
            key: k,
            description,
        } => user(
            Action::Move(Movement {
                description: Description::parse(["", "rent"][*description])
                    .unwrap_or_else(|_| unreachable!()),
                ..plain(TransferKind::Transfer, ids[*from], ids[*to], *minor)
            }),
            *scope,
            *k,
        ),
        Step::Deposit {
            to,
            amount: minor,
            key: k,
        } => operator(
            Action::Move(plain(TransferKind::Deposit, settlement, ids[*to], *minor)),
            format!("deposit-{k}"),
        ),
        Step::Withdrawal {
            from,
            amount: minor,
            key: k,
        } => operator(
            Action::Move(plain(
                TransferKind::Withdrawal,
                ids[*from],
                settlement,
                *minor,
            )),
            format!("withdrawal-{k}"),
        ),
        Step::Reversal { nth, key: k } => {
            let original = committed.get(*nth)?;
            operator(
                Action::Move(Movement {
                    reverses_transfer_id: Some(original.transfer_id),
                    currency: original.currency,
                    ..plain(
                        TransferKind::Reversal,
                        original.to_account_id,
                        original.from_account_id,
                        original.amount_minor,
                    )
                }),
                format!("reversal-{k}"),
            )
        }
        Step::Hold {
            from,
            to,
            amount: minor,
            scope,
            key: k,
            timeout_seconds,
        } => user(
            Action::Hold {
                movement: plain(TransferKind::Transfer, ids[*from], ids[*to], *minor),
                timeout_seconds: *timeout_seconds,
            },
            *scope,
            *k,
        ),
        Step::PostHold {
            nth,
            amount: minor,
            scope,
            key: k,
        } => anyone(
            Action::PostHold {
                hold_id: *holds.get(*nth)?,
                amount: minor.map(amount),
            },
            *scope,
            *k,
        ),
        Step::VoidHold { nth, scope, key: k } => anyone(
            Action::VoidHold {
                hold_id: *holds.get(*nth)?,
            },
            *scope,
            *k,
        ),
        Step::Batch {
            items,
            scope,
            key: k,
        } => user(
            Action::Batch(
                items
                    .iter()
                    .map(|&(from, to, minor)| {
                        plain(TransferKind::Transfer, ids[from], ids[to], minor)
                    })
                    .collect(),
            ),
            *scope,
            *k,
        ),
    };
    Some(Proposal::new(request))
}

/// The store's part, in memory: writes a plan's rows back into the facts the next
/// group reads.
fn commit(facts: &mut Facts, plan: &Plan) {
    for update in &plan.writes.books {
        if let Some(book) = facts.books.get_mut(&update.account_id) {
            book.balance_minor = update.balance_minor;
            book.pending_debits_minor = update.pending_debits_minor;
            book.entry_count = update.entry_count;
            book.last_entry_hash = update.last_entry_hash.clone();
        }
    }
    for hold in &plan.writes.holds {
        facts.holds.insert(hold.hold_id, hold.clone());
    }
    for (hold_id, resolution) in &plan.writes.resolutions {
        if let Some(hold) = facts.holds.get_mut(hold_id) {
            hold.resolution = Some(resolution.clone());
        }
    }
    let transfers: HashMap<TransferId, Transfer> = plan
        .writes
        .transfers
        .iter()
        .map(|new| (new.transfer.transfer_id, new.transfer.clone()))
        .collect();
    let view = |id: &TransferId| match facts.holds.get(id) {
        Some(hold) => hold.to_transfer(),
        None => transfers[id].clone(),
    };
    let mut records = Vec::new();
    for record in &plan.writes.requests {
        let outcome = match &record.outcome {
            RecordedOutcome::Posted(id) | RecordedOutcome::Hold(id) => Ok(vec![view(id)]),
            RecordedOutcome::Batch(id) => Ok(plan
                .writes
                .transfers
                .iter()
                .filter(|new| new.batch.is_some_and(|slot| slot.batch_id == *id))
                .map(|new| new.transfer.clone())
                .collect()),
            RecordedOutcome::Refused(refusal) => Err(refusal.clone()),
        };
        records.push((
            record.key.clone(),
            KnownRequest {
                fingerprint: record.fingerprint.clone(),
                outcome,
            },
        ));
    }
    facts.requests.extend(records);
    for new in &plan.writes.transfers {
        if let Some(original) = new.transfer.reverses_transfer_id {
            facts.reversed.insert(original);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn any_grouping_of_requests_ends_as_the_model_applying_them_one_by_one(
        steps in proptest::collection::vec(step(), 1..60),
        cuts in proptest::collection::vec((1..8usize, 0..40i64), 1..60),
    ) {
        let (ids, mut facts, mut model) = world();
        let mut committed: Vec<Transfer> = Vec::new();
        let mut holds: Vec<TransferId> = Vec::new();
        let mut entries: Vec<Entry> = Vec::new();
        let mut remaining = steps.as_slice();
        let mut cuts = cuts.iter().cycle();
        let mut second = 0;
        while !remaining.is_empty() {
            let (size, tick) = *cuts.next().unwrap_or(&(1, 1));
            let size = size.min(remaining.len());
            let (group_steps, rest) = remaining.split_at(size);
            remaining = rest;
            let group: Vec<Proposal> = group_steps
                .iter()
                .filter_map(|step| proposal_of(step, &ids, &committed, &holds))
                .collect();
            // The clock the test controls: groups commit 0 to 39 seconds apart.
            second += tick;
            let now = at(second);
            let planned = plan(&group, facts.clone(), now);

            for (proposal, outcome) in group.iter().zip(&planned.outcomes) {
                let (expected, replayed) = model.apply(proposal, now);
                let got = outcome
                    .result
                    .as_ref()
                    .map(|transfers| transfers.iter().map(|t| t.transfer_id).collect::<Vec<_>>())
                    .map_err(|r| (r.code, r.items.iter().map(|item| item.index).collect::<Vec<_>>()));
                prop_assert_eq!(got, expected, "{:?}", proposal.request);
                prop_assert_eq!(outcome.replayed, replayed);
            }
            commit(&mut facts, &planned);
            committed.extend(planned.writes.transfers.iter().map(|new| new.transfer.clone()));
            holds.extend(planned.writes.holds.iter().map(|hold| hold.hold_id));
            entries.extend(planned.writes.entries.iter().cloned());
        }
        // Whatever is due by the end is released by the next group to touch it.
        second += 1_000;
        let last = plan(&[], facts.clone(), at(second));
        commit(&mut facts, &last);
        model.expire(at(second));

        // Balances and holds agree with the model and with the entries; chains are intact.
        for (id, book) in &facts.books {
            prop_assert_eq!(book.balance_minor, model.accounts[id].balance);
            prop_assert_eq!(book.pending_debits_minor, model.accounts[id].pending);
            let open: i64 = facts
                .holds
                .values()
                .filter(|hold| hold.from_account_id == *id && hold.state() == HoldState::Pending)
                .map(|hold| hold.held_minor)
                .sum();
            prop_assert_eq!(book.pending_debits_minor, open);
            let mut of_book: Vec<&Entry> = entries.iter().filter(|e| e.account_id == *id).collect();
            of_book.sort_by_key(|e| e.account_seq);
            let mut prev = GENESIS_HASH.to_owned();
            let initial = world().1.books[id].balance_minor;
            let mut balance = initial;
            for (n, entry) in of_book.iter().enumerate() {
                prop_assert_eq!(entry.account_seq, n as i64 + 1);
                prop_assert_eq!(&entry.prev_hash, &prev);
                prop_assert_eq!(&entry.entry_hash, &entry_hash(entry));
                balance += entry.amount_minor;
                prop_assert_eq!(entry.balance_after_minor, balance);
                prev = entry.entry_hash.clone();
            }
            prop_assert_eq!(&book.last_entry_hash, &prev);
            prop_assert!(book.kind == AccountKind::Settlement || book.available_minor() >= 0);
        }
        for (id, hold) in &model.holds {
            prop_assert_eq!(facts.holds[id].state(), hold.state);
        }
        let total: i128 = entries.iter().map(|e| i128::from(e.amount_minor)).sum();
        prop_assert_eq!(total, 0);
    }
}
