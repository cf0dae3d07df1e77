//! Seeded random sequences of transfers, holds, posts, voids, batches, replays
//! and reused keys, committed group by group under a clock the test moves, agree
//! with a small reference model on both backends. The hold sweep runs at random
//! moments and must leave every book reserving exactly what the model's pending
//! holds hold.

use std::collections::{BTreeMap, HashMap};

use bank_e2e::db_test;
use bank_kit::{ErrorCode, money::PositiveAmount};
use bank_ledger::{
    domain::{
        AccountId, Description, HoldState, IdempotencyKey, TransferId, TransferKind,
        plan::{Action, Movement, Outcome, PostingRequest, Proposal},
    },
    engine,
    store::LedgerStore,
};
use chrono::{DateTime, TimeDelta, Utc};
use rand::{SeedableRng, rngs::StdRng};

use crate::helpers::{eur, funded_book as book, store_at as store};

const SEEDS: [u64; 3] = [7, 1_234, 987_654_321];
const GROUPS: usize = 60;
const SCOPE: &str = "user:alice";

/// A seeded generator (the lock file pins its algorithm), with the draws the
/// workloads need.
struct Rng(StdRng);

impl Rng {
    fn seeded(seed: u64) -> Rng {
        Rng(StdRng::seed_from_u64(seed))
    }

    fn below(&mut self, n: usize) -> usize {
        rand::Rng::random_range(&mut self.0, 0..n)
    }

    fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }
}

fn movement(from: AccountId, to: AccountId, amount: i64) -> Movement {
    Movement {
        kind: TransferKind::Transfer,
        from_account_id: from,
        to_account_id: to,
        amount: PositiveAmount::parse(amount).unwrap(),
        currency: eur(),
        description: Description::default(),
        reverses_transfer_id: None,
    }
}

fn keyed(action: Action, key: String) -> PostingRequest {
    PostingRequest {
        action,
        required_owner: Some("alice".into()),
        scope: SCOPE.into(),
        idempotency_key: IdempotencyKey::parse(&key).unwrap(),
    }
}

/// What a request came to, in the terms both sides can state: the transfers
/// (or hold) it made, or the refusal's code and the batch items it names.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Decision {
    Done(Vec<TransferId>),
    Refused(ErrorCode, Vec<usize>),
}

fn decision_of(outcome: &Outcome) -> Decision {
    match &outcome.result {
        Ok(transfers) => Decision::Done(transfers.iter().map(|t| t.transfer_id).collect()),
        Err(refusal) => Decision::Refused(
            refusal.code,
            refusal.items.iter().map(|item| item.index).collect(),
        ),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resolved {
    Pending,
    Posted,
    Voided,
}

#[derive(Debug)]
struct ModelHold {
    from: AccountId,
    to: AccountId,
    amount: i64,
    expires_at: DateTime<Utc>,
    resolved: Resolved,
}

impl ModelHold {
    /// Pending at `now`: neither resolved nor out of time.
    fn pending_at(&self, now: DateTime<Utc>) -> bool {
        self.resolved == Resolved::Pending && now < self.expires_at
    }
}

/// The ledger's rules for one owner's books, written as plainly as they read in
/// DESIGN.md: a debit needs the balance less what pending holds reserve; a hold
/// ends when posted, voided or its time is up at the group's clock.
#[derive(Default)]
struct Model {
    balances: BTreeMap<AccountId, i64>,
    holds: BTreeMap<TransferId, ModelHold>,
    records: HashMap<String, (String, Decision)>,
}

impl Model {
    fn reserved(&self, book: AccountId, now: DateTime<Utc>) -> i64 {
        self.holds
            .values()
            .filter(|hold| hold.from == book && hold.pending_at(now))
            .map(|hold| hold.amount)
            .sum()
    }

    fn available(
        &self,
        balances: &BTreeMap<AccountId, i64>,
        book: AccountId,
        now: DateTime<Utc>,
    ) -> i64 {
        balances[&book] - self.reserved(book, now)
    }

    fn decide(&mut self, proposal: &Proposal, now: DateTime<Utc>) -> Decision {
        let request = &proposal.request;
        let key = request.idempotency_key.as_str().to_owned();
        let fingerprint = request.fingerprint();
        if let Some((known, decision)) = self.records.get(&key) {
            return if *known == fingerprint {
                decision.clone()
            } else {
                Decision::Refused(ErrorCode::IdempotencyKeyReused, Vec::new())
            };
        }
        let decision = self.apply(proposal, now);
        self.records.insert(key, (fingerprint, decision.clone()));
        decision
    }

    fn apply(&mut self, proposal: &Proposal, now: DateTime<Utc>) -> Decision {
        let refused = |code| Decision::Refused(code, Vec::new());
        match &proposal.request.action {
            Action::Move(movement) => {
                let amount = movement.amount.minor();
                if self.available(&self.balances, movement.from_account_id, now) < amount {
                    return refused(ErrorCode::InsufficientFunds);
                }
                *self.balances.get_mut(&movement.from_account_id).unwrap() -= amount;
                *self.balances.get_mut(&movement.to_account_id).unwrap() += amount;
                Decision::Done(proposal.transfer_ids.clone())
            }
            Action::Hold {
                movement,
                timeout_seconds,
            } => {
                let amount = movement.amount.minor();
                if self.available(&self.balances, movement.from_account_id, now) < amount {
                    return refused(ErrorCode::InsufficientFunds);
                }
                let hold_id = proposal.transfer_ids[0];
                self.holds.insert(
                    hold_id,
                    ModelHold {
                        from: movement.from_account_id,
                        to: movement.to_account_id,
                        amount,
                        expires_at: now + TimeDelta::seconds(*timeout_seconds),
                        resolved: Resolved::Pending,
                    },
                );
                Decision::Done(vec![hold_id])
            }
            Action::PostHold { hold_id, amount } => {
                let Some(hold) = self.holds.get_mut(hold_id) else {
                    return refused(ErrorCode::NotFound);
                };
                if !hold.pending_at(now) {
                    return refused(ErrorCode::HoldNotPending);
                }
                let amount = amount.map_or(hold.amount, |amount| amount.minor());
                if amount > hold.amount {
                    return refused(ErrorCode::InvalidArgument);
                }
                hold.resolved = Resolved::Posted;
                let (from, to) = (hold.from, hold.to);
                *self.balances.get_mut(&from).unwrap() -= amount;
                *self.balances.get_mut(&to).unwrap() += amount;
                Decision::Done(vec![*hold_id])
            }
            Action::VoidHold { hold_id } => {
                let Some(hold) = self.holds.get_mut(hold_id) else {
                    return refused(ErrorCode::NotFound);
                };
                if !hold.pending_at(now) {
                    return refused(ErrorCode::HoldNotPending);
                }
                hold.resolved = Resolved::Voided;
                Decision::Done(vec![*hold_id])
            }
            Action::Batch(items) => {
                let mut balances = self.balances.clone();
                let mut failed = Vec::new();
                for (index, item) in items.iter().enumerate() {
                    let amount = item.amount.minor();
                    if self.available(&balances, item.from_account_id, now) < amount {
                        failed.push(index);
                        continue;
                    }
                    *balances.get_mut(&item.from_account_id).unwrap() -= amount;
                    *balances.get_mut(&item.to_account_id).unwrap() += amount;
                }
                if !failed.is_empty() {
                    return Decision::Refused(ErrorCode::InsufficientFunds, failed);
                }
                self.balances = balances;
                Decision::Done(proposal.transfer_ids.clone())
            }
        }
    }
}

/// Draws the next request: mostly new ones of every kind, some exact replays of
/// earlier ones, some earlier keys with another body.
struct Workload {
    rng: Rng,
    seed: u64,
    books: [AccountId; 3],
    made: Vec<PostingRequest>,
    holds: Vec<TransferId>,
    keys: usize,
}

impl Workload {
    fn pair(&mut self) -> (AccountId, AccountId) {
        let from = self.rng.below(3);
        let to = (from + 1 + self.rng.below(2)) % 3;
        (self.books[from], self.books[to])
    }

    fn amount(&mut self) -> i64 {
        self.rng.pick(&[5, 20, 60, 150])
    }

    fn new_key(&mut self) -> String {
        self.keys += 1;
        format!("model-{}-{}", self.seed, self.keys)
    }

    /// Mostly one of the newest holds, which may still be pending; now and then
    /// any, which has likely ended.
    fn some_hold(&mut self) -> TransferId {
        let newest = self.holds.len().saturating_sub(2);
        if self.rng.one_in(4) {
            self.rng.pick(&self.holds)
        } else {
            self.rng.pick(&self.holds[newest..])
        }
    }

    fn fresh_action(&mut self) -> Action {
        match self.rng.below(10) {
            0..=2 => {
                let (from, to) = self.pair();
                Action::Move(movement(from, to, self.amount()))
            }
            3..=4 => {
                let (from, to) = self.pair();
                Action::Hold {
                    movement: movement(from, to, self.amount()),
                    timeout_seconds: self.rng.pick(&[1, 20, 60, 120]),
                }
            }
            5..=6 if !self.holds.is_empty() => {
                let hold_id = self.some_hold();
                // All of it, part of it, or more than could be held.
                let amount = match self.rng.below(3) {
                    0 => None,
                    _ => Some(PositiveAmount::parse(self.rng.pick(&[1, 5, 19, 60, 151])).unwrap()),
                };
                Action::PostHold { hold_id, amount }
            }
            7 if !self.holds.is_empty() => Action::VoidHold {
                hold_id: self.some_hold(),
            },
            7 => Action::VoidHold {
                // A hold that never was.
                hold_id: TransferId::new(),
            },
            _ => {
                let items = (0..1 + self.rng.below(3))
                    .map(|_| {
                        let (from, to) = self.pair();
                        movement(from, to, self.amount())
                    })
                    .collect();
                Action::Batch(items)
            }
        }
    }

    fn next(&mut self) -> Proposal {
        let request = if !self.made.is_empty() && self.rng.one_in(10) {
            self.made[self.rng.below(self.made.len())].clone()
        } else if !self.made.is_empty() && self.rng.one_in(25) {
            let reused = self.made[self.rng.below(self.made.len())]
                .idempotency_key
                .clone();
            keyed(self.fresh_action(), reused.as_str().to_owned())
        } else {
            let action = self.fresh_action();
            keyed(action, self.new_key())
        };
        let proposal = Proposal::new(request.clone());
        if matches!(request.action, Action::Hold { .. }) {
            self.holds.push(proposal.transfer_ids[0]);
        }
        self.made.push(request);
        proposal
    }
}

/// The store against the model after a sweep at `now`: every hold whose time is
/// up is written as expired, and every book reserves what the model's pending
/// holds hold.
async fn check_swept(store: &LedgerStore, model: &Model, now: DateTime<Utc>, context: &str) {
    for (hold_id, hold) in &model.holds {
        if hold.resolved == Resolved::Pending && !hold.pending_at(now) {
            let stored = store.hold(*hold_id).await.unwrap().unwrap();
            assert_eq!(
                stored.state(),
                HoldState::Expired,
                "{context}: hold {hold_id}"
            );
        }
    }
    for book in model.balances.keys() {
        let stored = store.account(*book).await.unwrap().unwrap();
        assert_eq!(
            stored.pending_debits_minor,
            model.reserved(*book, now),
            "{context}: reservation of {book}"
        );
    }
}

db_test!(
    seeded_sequences_of_holds_expiries_and_batches_agree_with_the_model,
    databases = 1,
    sequences_agree_with_the_model
);
async fn sequences_agree_with_the_model(urls: Vec<String>) {
    let store = store(&urls[0]).await;
    let mut swept = 0;
    // One clock for every seed: it never goes back.
    let mut now = bank_kit::time::now();
    for seed in SEEDS {
        let books = [
            book(&store, 300).await,
            book(&store, 100).await,
            book(&store, 0).await,
        ];
        let mut model = Model::default();
        for (book, funding) in books.iter().zip([300, 100, 0]) {
            model.balances.insert(*book, funding);
        }
        let mut workload = Workload {
            rng: Rng::seeded(seed),
            seed,
            books,
            made: Vec::new(),
            holds: Vec::new(),
            keys: 0,
        };
        for group in 0..GROUPS {
            now += TimeDelta::seconds(workload.rng.below(16) as i64);
            let proposals: Vec<Proposal> = (0..1 + workload.rng.below(6))
                .map(|_| workload.next())
                .collect();
            let outcomes = store.commit_group_at(&proposals, now).await.unwrap();
            for (index, (proposal, outcome)) in proposals.iter().zip(&outcomes).enumerate() {
                let expected = model.decide(proposal, now);
                assert_eq!(
                    decision_of(outcome),
                    expected,
                    "seed {seed}, group {group}, request {index}: {:?}",
                    proposal.request.action
                );
            }
            if workload.rng.one_in(4) {
                swept += store.expire_due_holds_at(now).await.unwrap();
                check_swept(&store, &model, now, &format!("seed {seed}, group {group}")).await;
            }
        }
        swept += store.expire_due_holds_at(now).await.unwrap();
        check_swept(&store, &model, now, &format!("seed {seed}, at the end")).await;
        for (book, expected) in &model.balances {
            let stored = store.account(*book).await.unwrap().unwrap();
            assert_eq!(
                stored.balance_minor, *expected,
                "seed {seed}: balance of {book}"
            );
        }
    }
    assert!(swept > 0, "some hold was left for the sweep to expire");
    let report = store.verify().await.unwrap();
    assert!(report.mismatches.is_empty(), "{:?}", report.mismatches);
}

async fn reserved(store: &LedgerStore, book: AccountId) -> i64 {
    store
        .account(book)
        .await
        .unwrap()
        .unwrap()
        .pending_debits_minor
}

db_test!(
    the_sweep_writes_the_expiry_of_a_hold_no_posting_touches,
    databases = 1,
    the_sweep_expires_untouched_holds
);
async fn the_sweep_expires_untouched_holds(urls: Vec<String>) {
    let store = store(&urls[0]).await;
    let (from, to) = (book(&store, 100).await, book(&store, 0).await);
    let placed_at = bank_kit::time::now();
    let hold = Proposal::new(keyed(
        Action::Hold {
            movement: movement(from, to, 40),
            timeout_seconds: 30,
        },
        "swept".into(),
    ));
    let hold_id = hold.transfer_ids[0];
    store.commit_group_at(&[hold], placed_at).await.unwrap();

    let just_before = placed_at + TimeDelta::seconds(30) - TimeDelta::microseconds(1);
    assert_eq!(store.expire_due_holds_at(just_before).await.unwrap(), 0);
    assert_eq!(reserved(&store, from).await, 40);
    assert_eq!(
        store.hold(hold_id).await.unwrap().unwrap().state(),
        HoldState::Pending
    );

    let due = placed_at + TimeDelta::seconds(30);
    assert_eq!(store.expire_due_holds_at(due).await.unwrap(), 1);
    let expired = store.hold(hold_id).await.unwrap().unwrap();
    let resolution = expired.resolution.expect("the expiry is written");
    assert_eq!(resolution.state, HoldState::Expired);
    assert_eq!(resolution.resolved_at, due);
    assert_eq!(reserved(&store, from).await, 0);
    assert_eq!(store.expire_due_holds_at(due).await.unwrap(), 0, "once");

    // The engine's sweep task does the same on the real clock.
    let real = Proposal::new(keyed(
        Action::Hold {
            movement: movement(from, to, 25),
            timeout_seconds: 1,
        },
        "swept-by-the-task".into(),
    ));
    let real_id = real.transfer_ids[0];
    store.commit_group(&[real]).await.unwrap();
    assert_eq!(reserved(&store, from).await, 25);
    engine::start_hold_sweep(
        std::sync::Arc::clone(&store),
        std::time::Duration::from_millis(20),
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while store
        .hold(real_id)
        .await
        .unwrap()
        .unwrap()
        .resolution
        .is_none()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the sweep never wrote the expiry"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(
        store.hold(real_id).await.unwrap().unwrap().state(),
        HoldState::Expired
    );
    assert_eq!(reserved(&store, from).await, 0);
    let report = store.verify().await.unwrap();
    assert!(report.mismatches.is_empty(), "{:?}", report.mismatches);
}

const CLIENTS: usize = 16;
const REQUESTS_PER_CLIENT: usize = 20;

db_test!(
    sixteen_clients_holding_posting_and_voiding_on_hot_books_agree_with_the_model_in_commit_order,
    databases = 1,
    concurrent_holds_agree_with_the_model
);
async fn concurrent_holds_agree_with_the_model(urls: Vec<String>) {
    let store = store(&urls[0]).await;
    let books = [
        book(&store, 300).await,
        book(&store, 200).await,
        book(&store, 0).await,
    ];
    let engine = engine::PostingEngine::start(
        std::sync::Arc::clone(&store),
        engine::GroupConfig::default(),
    );
    // Holds any client placed: every client posts and voids them, so two
    // clients often race to resolve the same one.
    let placed = std::sync::Arc::new(std::sync::Mutex::new(Vec::<TransferId>::new()));

    let mut clients = Vec::new();
    for client in 0..CLIENTS {
        let (engine, placed) = (engine.clone(), std::sync::Arc::clone(&placed));
        clients.push(tokio::spawn(async move {
            let mut rng = Rng::seeded(client as u64 + 1);
            let mut answers = Vec::new();
            for n in 0..REQUESTS_PER_CLIENT {
                let from = rng.below(3);
                let to = (from + 1 + rng.below(2)) % 3;
                let (from, to) = (books[from], books[to]);
                let amount = rng.pick(&[10, 50, 120]);
                let newest = placed.lock().unwrap().last().copied();
                let request = match (rng.below(4), newest) {
                    // Keys shared by every client: duplicates and reuses.
                    (0, _) => keyed(
                        Action::Move(movement(from, to, amount)),
                        format!("c-move-{}", rng.below(30)),
                    ),
                    (1, Some(hold_id)) => keyed(
                        Action::PostHold {
                            hold_id,
                            amount: None,
                        },
                        format!("c-post-{hold_id}"),
                    ),
                    (2, Some(hold_id)) => {
                        keyed(Action::VoidHold { hold_id }, format!("c-void-{hold_id}"))
                    }
                    _ => keyed(
                        Action::Hold {
                            movement: movement(from, to, amount),
                            timeout_seconds: 3_600,
                        },
                        format!("c-hold-{client}-{n}"),
                    ),
                };
                let outcome = engine.submit(request.clone()).await.unwrap();
                if matches!(request.action, Action::Hold { .. })
                    && let Ok(transfers) = &outcome.result
                    && !outcome.replayed
                {
                    placed.lock().unwrap().push(transfers[0].transfer_id);
                }
                answers.push((request, outcome));
            }
            answers
        }));
    }
    let mut answers = Vec::new();
    for client in clients {
        answers.extend(client.await.unwrap());
    }

    // The order the requests were decided in, from their records; the model
    // decides each in that order, at a clock before any hold's time is up.
    let order = match store.backend() {
        sea_orm::DbBackend::Postgres => "decided_seq",
        _ => "rowid",
    };
    let sql = format!(
        "SELECT idempotency_key, request_hash, transfer_id, hold_id, refusal_code FROM ledger_requests \
         WHERE scope = '{SCOPE}' AND idempotency_key LIKE 'c-%' ORDER BY {order}"
    );
    let rows = sea_orm::ConnectionTrait::query_all_raw(
        store.connection(),
        sea_orm::Statement::from_string(store.backend(), sql),
    )
    .await
    .unwrap();
    assert!(!rows.is_empty());
    let mut model = Model::default();
    for (book, funding) in books.iter().zip([300, 200, 0]) {
        model.balances.insert(*book, funding);
    }
    let now = bank_kit::time::now();
    for row in &rows {
        let key: String = row.try_get("", "idempotency_key").unwrap();
        let fingerprint: String = row.try_get("", "request_hash").unwrap();
        let made: Option<String> = match row.try_get("", "transfer_id").unwrap() {
            Some(id) => Some(id),
            None => row.try_get("", "hold_id").unwrap(),
        };
        let refusal: Option<String> = row.try_get("", "refusal_code").unwrap();
        let (request, _) = answers
            .iter()
            .find(|(request, _)| {
                request.idempotency_key.as_str() == key && request.fingerprint() == fingerprint
            })
            .expect("every record belongs to a request that was made");
        let recorded = match (made, refusal) {
            (Some(id), None) => Decision::Done(vec![TransferId::parse(&id).unwrap()]),
            (None, Some(code)) => Decision::Refused(ErrorCode::parse(&code).unwrap(), Vec::new()),
            other => panic!("a record is a transfer, a hold or a refusal: {other:?}"),
        };
        // The model takes the ids the ledger chose; it decides everything else.
        let proposal = Proposal {
            request: request.clone(),
            transfer_ids: match &recorded {
                Decision::Done(ids) => ids.clone(),
                Decision::Refused(..) => vec![TransferId::new()],
            },
        };
        assert_eq!(model.decide(&proposal, now), recorded, "record of {key}");
    }

    // Every answer is its key's decision, or a reuse of the key with another body.
    let mut resolved = 0;
    for (request, outcome) in &answers {
        let (fingerprint, decision) = &model.records[request.idempotency_key.as_str()];
        if request.fingerprint() == *fingerprint {
            assert_eq!(
                &decision_of(outcome),
                decision,
                "answer to {}",
                request.idempotency_key.as_str()
            );
        } else {
            assert_eq!(
                decision_of(outcome),
                Decision::Refused(ErrorCode::IdempotencyKeyReused, Vec::new())
            );
        }
        if request.action.resolves().is_some() && outcome.result.is_ok() && !outcome.replayed {
            resolved += 1;
        }
    }
    assert!(resolved > 0, "some hold was posted or voided");
    for (book, expected) in &model.balances {
        let stored = store.account(*book).await.unwrap().unwrap();
        assert_eq!(stored.balance_minor, *expected, "balance of {book}");
        assert_eq!(
            stored.pending_debits_minor,
            model.reserved(*book, now),
            "reservation of {book}"
        );
        assert!(stored.available_minor() >= 0);
    }
    let report = store.verify().await.unwrap();
    assert!(report.mismatches.is_empty(), "{:?}", report.mismatches);
}
