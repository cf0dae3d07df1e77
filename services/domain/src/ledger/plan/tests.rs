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

fn transfer(from: AccountId, to: AccountId, amount: i64, key: &str) -> Proposal {
    Proposal::new(PostingRequest {
        kind: TransferKind::Transfer,
        from_account_id: from,
        to_account_id: to,
        amount: PositiveAmount::parse(amount).unwrap_or_else(|_| unreachable!()),
        currency: eur(),
        description: Description::default(),
        reverses_transfer_id: None,
        required_owner: Some("alice".into()),
        scope: "user:alice".into(),
        idempotency_key: IdempotencyKey::parse(key).unwrap_or_else(|_| unreachable!()),
    })
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
        proposal.request.kind = TransferKind::Reversal;
        proposal.request.required_owner = None;
        proposal.request.reverses_transfer_id = Some(original);
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
    deposit.request.kind = TransferKind::Deposit;
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
    deposit.request.kind = TransferKind::Deposit;
    deposit.request.required_owner = None;
    let mut withdrawal = transfer(a, AccountId::settlement(eur()), 10, "withdrawal");
    withdrawal.request.kind = TransferKind::Withdrawal;
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
        proposal.request.kind = TransferKind::Deposit;
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

// The reference model: the same rules, written as plainly as possible, applied to
// one request at a time.

#[derive(Debug, Clone)]
struct ModelAccount {
    owner: Option<String>,
    settlement: bool,
    currency: Currency,
    status: AccountStatus,
    balance: i64,
}

#[derive(Debug, Default)]
struct Model {
    accounts: BTreeMap<AccountId, ModelAccount>,
    /// The answer each key got: its request and the transfer id or refusal code.
    keys: HashMap<(String, String), (PostingRequest, Result<TransferId, ErrorCode>)>,
    reversed: HashSet<TransferId>,
}

impl Model {
    fn apply(&mut self, proposal: &Proposal) -> (Result<TransferId, ErrorCode>, bool) {
        let request = &proposal.request;
        let key = (
            request.scope.clone(),
            request.idempotency_key.as_str().to_owned(),
        );
        if let Some((earlier, answer)) = self.keys.get(&key) {
            return if earlier == request {
                (*answer, true)
            } else {
                (Err(ErrorCode::IdempotencyKeyReused), false)
            };
        }
        let answer = self.decide(request).map(|()| {
            let amount = request.amount.minor();
            if let Some(from) = self.accounts.get_mut(&request.from_account_id) {
                from.balance -= amount;
            }
            if let Some(to) = self.accounts.get_mut(&request.to_account_id) {
                to.balance += amount;
            }
            if let Some(original) = request.reverses_transfer_id {
                self.reversed.insert(original);
            }
            proposal.transfer_id
        });
        self.keys.insert(key, (request.clone(), answer));
        (answer, false)
    }

    fn decide(&self, request: &PostingRequest) -> Result<(), ErrorCode> {
        let from = self
            .accounts
            .get(&request.from_account_id)
            .ok_or(ErrorCode::NotFound)?;
        let to = self
            .accounts
            .get(&request.to_account_id)
            .ok_or(ErrorCode::NotFound)?;
        if request.from_account_id == request.to_account_id {
            return Err(ErrorCode::InvalidArgument);
        }
        if let Some(owner) = &request.required_owner
            && from.owner.as_ref() != Some(owner)
        {
            return Err(ErrorCode::NotFound);
        }
        if request.kind == TransferKind::Transfer && (from.settlement || to.settlement) {
            return Err(ErrorCode::NotFound);
        }
        if from.currency != request.currency || to.currency != request.currency {
            return Err(ErrorCode::CurrencyMismatch);
        }
        let foreign_destination = request
            .required_owner
            .as_ref()
            .is_some_and(|owner| to.owner.as_ref() != Some(owner));
        for (side, hidden) in [(from, false), (to, foreign_destination)] {
            match side.status {
                AccountStatus::Active => {}
                _ if hidden => return Err(ErrorCode::NotFound),
                AccountStatus::Frozen => return Err(ErrorCode::AccountFrozen),
                AccountStatus::Closed => return Err(ErrorCode::AccountClosed),
            }
        }
        if request
            .reverses_transfer_id
            .is_some_and(|original| self.reversed.contains(&original))
        {
            return Err(ErrorCode::Conflict);
        }
        let amount = i128::from(request.amount.minor());
        let fits = |value: i128| (i128::from(i64::MIN)..=i128::from(i64::MAX)).contains(&value);
        let from_after = i128::from(from.balance) - amount;
        if !fits(from_after) {
            return Err(ErrorCode::InvalidArgument);
        }
        if !from.settlement && from_after < 0 {
            return Err(ErrorCode::InsufficientFunds);
        }
        if !fits(i128::from(to.balance) + amount) {
            return Err(ErrorCode::InvalidArgument);
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
        1 => (0..7usize, amount, 0..6usize).prop_map(|(from, amount, key)| Step::Withdrawal { from, amount, key }),
        2 => (0..3usize, 0..6usize).prop_map(|(nth, key)| Step::Reversal { nth, key }),
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
            },
        );
    }
    (ids, facts(books), model)
}

fn proposal_of(step: &Step, ids: &[AccountId], committed: &[Transfer]) -> Option<Proposal> {
    let owners = ["alice", "bob"];
    let key = |scope: &str, key: usize| {
        IdempotencyKey::parse(&format!("{scope}-key-{key}")).unwrap_or_else(|_| unreachable!())
    };
    let amount = |minor: i64| PositiveAmount::parse(minor).unwrap_or_else(|_| unreachable!());
    let settlement = AccountId::settlement(eur());
    let request = match step {
        Step::Transfer {
            from,
            to,
            amount: minor,
            scope,
            key: k,
            description,
        } => PostingRequest {
            kind: TransferKind::Transfer,
            from_account_id: ids[*from],
            to_account_id: ids[*to],
            amount: amount(*minor),
            currency: eur(),
            description: Description::parse(["", "rent"][*description])
                .unwrap_or_else(|_| unreachable!()),
            reverses_transfer_id: None,
            required_owner: Some(owners[*scope].to_owned()),
            scope: format!("user:{}", owners[*scope]),
            idempotency_key: key(owners[*scope], *k),
        },
        Step::Deposit {
            to,
            amount: minor,
            key: k,
        } => PostingRequest {
            kind: TransferKind::Deposit,
            from_account_id: settlement,
            to_account_id: ids[*to],
            amount: amount(*minor),
            currency: eur(),
            description: Description::default(),
            reverses_transfer_id: None,
            required_owner: None,
            scope: "user:operator".into(),
            idempotency_key: key("deposit", *k),
        },
        Step::Withdrawal {
            from,
            amount: minor,
            key: k,
        } => PostingRequest {
            kind: TransferKind::Withdrawal,
            from_account_id: ids[*from],
            to_account_id: settlement,
            amount: amount(*minor),
            currency: eur(),
            description: Description::default(),
            reverses_transfer_id: None,
            required_owner: None,
            scope: "user:operator".into(),
            idempotency_key: key("withdrawal", *k),
        },
        Step::Reversal { nth, key: k } => {
            let original = committed.get(*nth)?;
            PostingRequest {
                kind: TransferKind::Reversal,
                from_account_id: original.to_account_id,
                to_account_id: original.from_account_id,
                amount: amount(original.amount_minor),
                currency: original.currency,
                description: Description::default(),
                reverses_transfer_id: Some(original.transfer_id),
                required_owner: None,
                scope: "user:operator".into(),
                idempotency_key: key("reversal", *k),
            }
        }
    };
    Some(Proposal::new(request))
}

/// The store's part, in memory: writes a plan's rows back into the facts the next
/// group reads.
fn commit(facts: &mut Facts, plan: &Plan) {
    for update in &plan.writes.books {
        if let Some(book) = facts.books.get_mut(&update.account_id) {
            book.balance_minor = update.balance_minor;
            book.entry_count = update.entry_count;
            book.last_entry_hash = update.last_entry_hash.clone();
        }
    }
    let transfers: HashMap<TransferId, Transfer> = plan
        .writes
        .transfers
        .iter()
        .map(|new| (new.transfer.transfer_id, new.transfer.clone()))
        .collect();
    for record in &plan.writes.requests {
        let outcome = match &record.outcome {
            RecordedOutcome::Posted(id) => Ok(transfers[id].clone()),
            RecordedOutcome::Refused(refusal) => Err(refusal.clone()),
        };
        facts.requests.insert(
            record.key.clone(),
            KnownRequest {
                fingerprint: record.fingerprint.clone(),
                outcome,
            },
        );
    }
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
        cuts in proptest::collection::vec(1..8usize, 1..60),
    ) {
        let (ids, mut facts, mut model) = world();
        let mut committed: Vec<Transfer> = Vec::new();
        let mut entries: Vec<Entry> = Vec::new();
        let mut remaining = steps.as_slice();
        let mut cuts = cuts.iter().cycle();
        let mut second = 0;
        while !remaining.is_empty() {
            let size = (*cuts.next().unwrap_or(&1)).min(remaining.len());
            let (group_steps, rest) = remaining.split_at(size);
            remaining = rest;
            let group: Vec<Proposal> = group_steps
                .iter()
                .filter_map(|step| proposal_of(step, &ids, &committed))
                .collect();
            second += 1;
            let planned = plan(&group, facts.clone(), at(second));

            for (proposal, outcome) in group.iter().zip(&planned.outcomes) {
                let (expected, replayed) = model.apply(proposal);
                let got = outcome.result.as_ref().map(|t| t.transfer_id).map_err(|r| r.code);
                prop_assert_eq!(got, expected, "{:?}", proposal.request);
                prop_assert_eq!(outcome.replayed, replayed);
            }
            commit(&mut facts, &planned);
            committed.extend(planned.writes.transfers.iter().map(|new| new.transfer.clone()));
            entries.extend(planned.writes.entries.iter().cloned());
        }

        // Balances agree with the model and with the entries; chains are intact.
        for (id, book) in &facts.books {
            prop_assert_eq!(book.balance_minor, model.accounts[id].balance);
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
            prop_assert!(book.kind == AccountKind::Settlement || book.balance_minor >= 0);
        }
        let total: i128 = entries.iter().map(|e| i128::from(e.amount_minor)).sum();
        prop_assert_eq!(total, 0);
    }
}
