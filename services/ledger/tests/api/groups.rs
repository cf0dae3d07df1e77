//! Commit groups: the store's group transaction called directly, so a test decides
//! exactly what one group holds, and the posting engine under sixteen concurrent
//! clients, checked against a reference model applied in commit order.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use bank_e2e::db_test;
use bank_kit::{ErrorCode, money::Currency, money::PositiveAmount};
use bank_ledger::{
    domain::{
        AccountId, AccountStatus, Description, IdempotencyKey, TransferKind,
        plan::{Action, Movement, Outcome, PostingRequest, Proposal},
    },
    engine::{GroupConfig, PostingEngine},
    store::{LedgerStore, migrations::Migrator},
};
use futures::FutureExt;
use sea_orm::{ConnectionTrait, DbBackend, Statement};

fn eur() -> Currency {
    Currency::parse("EUR").unwrap()
}

async fn store(url: &str) -> Arc<LedgerStore> {
    let db = bank_kit::db::connect_and_migrate::<Migrator>(url)
        .await
        .unwrap();
    Arc::new(LedgerStore::new(db))
}

fn request(
    kind: TransferKind,
    from: AccountId,
    to: AccountId,
    amount: i64,
    key: &str,
) -> PostingRequest {
    PostingRequest::movement(
        Movement {
            kind,
            from_account_id: from,
            to_account_id: to,
            amount: PositiveAmount::parse(amount).unwrap(),
            currency: eur(),
            description: Description::default(),
            reverses_transfer_id: None,
        },
        (kind == TransferKind::Transfer).then(|| "alice".to_owned()),
        "user:alice".into(),
        IdempotencyKey::parse(key).unwrap(),
    )
}

/// The movement of a request that is one.
fn moved(request: &PostingRequest) -> &Movement {
    match &request.action {
        Action::Move(movement) => movement,
        other => panic!("not a movement: {other:?}"),
    }
}

fn transfer(from: AccountId, to: AccountId, amount: i64, key: &str) -> Proposal {
    Proposal::new(request(TransferKind::Transfer, from, to, amount, key))
}

/// A book of alice's holding `funding`.
async fn book(store: &LedgerStore, funding: i64) -> AccountId {
    let id = AccountId::from_uuid(uuid::Uuid::now_v7());
    store.open_account(id, "alice", eur()).await.unwrap();
    store
        .set_status(id, AccountStatus::Active, Some(0))
        .await
        .unwrap();
    if funding > 0 {
        let deposit = Proposal::new(request(
            TransferKind::Deposit,
            AccountId::settlement(eur()),
            id,
            funding,
            &format!("fund-{id}"),
        ));
        let outcomes = store.commit_group(&[deposit]).await.unwrap();
        assert!(outcomes[0].result.is_ok());
    }
    id
}

async fn balance(store: &LedgerStore, id: AccountId) -> i64 {
    store.account(id).await.unwrap().unwrap().balance_minor
}

fn refusal_code(outcome: &Outcome) -> Option<ErrorCode> {
    outcome.result.as_ref().err().map(|refusal| refusal.code)
}

db_test!(
    a_commit_group_with_one_refused_transfer_posts_the_others,
    databases = 1,
    one_refusal_in_a_group
);
async fn one_refusal_in_a_group(urls: Vec<String>) {
    let store = store(&urls[0]).await;
    let (a, b) = (book(&store, 100).await, book(&store, 0).await);

    let outcomes = store
        .commit_group(&[
            transfer(a, b, 60, "first"),
            transfer(a, b, 60, "beyond-the-balance"),
            transfer(a, b, 40, "last"),
        ])
        .await
        .unwrap();

    assert!(outcomes[0].result.is_ok());
    assert_eq!(
        refusal_code(&outcomes[1]),
        Some(ErrorCode::InsufficientFunds)
    );
    assert!(outcomes[2].result.is_ok());
    assert_eq!(balance(&store, a).await, 0);
    assert_eq!(balance(&store, b).await, 100);
    let report = store.verify().await.unwrap();
    assert!(report.mismatches.is_empty(), "{:?}", report.mismatches);
    assert_eq!(report.entries_checked, 2 + 4);
}

db_test!(
    one_key_twice_in_a_group_posts_once_and_both_callers_get_its_transfer,
    databases = 1,
    one_key_twice_in_a_group
);
async fn one_key_twice_in_a_group(urls: Vec<String>) {
    let store = store(&urls[0]).await;
    let (a, b) = (book(&store, 100).await, book(&store, 0).await);

    let outcomes = store
        .commit_group(&[transfer(a, b, 30, "twice"), transfer(a, b, 30, "twice")])
        .await
        .unwrap();

    let first = outcomes[0].clone().transfer().unwrap();
    let second = outcomes[1].clone().transfer().unwrap();
    assert_eq!(first.transfer_id, second.transfer_id);
    assert!(!outcomes[0].replayed && outcomes[1].replayed);
    assert_eq!(balance(&store, a).await, 70);
    let again = store
        .commit_group(&[transfer(a, b, 30, "twice")])
        .await
        .unwrap();
    assert_eq!(
        again[0].clone().transfer().map(|t| t.transfer_id).ok(),
        Some(first.transfer_id),
        "a later group replays the committed transfer"
    );
    assert_eq!(balance(&store, a).await, 70);
}

db_test!(
    a_caller_that_goes_away_does_not_abort_its_group_and_its_replay_returns_the_result,
    databases = 1,
    caller_goes_away
);
async fn caller_goes_away(urls: Vec<String>) {
    let store = store(&urls[0]).await;
    let (a, b) = (book(&store, 100).await, book(&store, 0).await);
    let engine = PostingEngine::start(Arc::clone(&store), GroupConfig::default());
    let posting = request(TransferKind::Transfer, a, b, 25, "abandoned");

    // The first poll queues the request; dropping the future then abandons only
    // the wait for its answer.
    let abandoned = engine.submit(posting.clone()).now_or_never();
    assert!(
        abandoned.is_none(),
        "the answer cannot be ready before a commit"
    );

    let replay = engine.submit(posting).await.unwrap();
    assert!(replay.replayed, "the abandoned request was committed first");
    let transfer = replay.transfer().unwrap();
    assert_eq!(transfer.amount_minor, 25);
    assert_eq!(balance(&store, a).await, 75);
    assert_eq!(balance(&store, b).await, 25);
}

db_test!(
    a_refused_key_stays_refused_after_the_account_is_funded,
    databases = 1,
    refused_key_stays_refused
);
async fn refused_key_stays_refused(urls: Vec<String>) {
    let store = store(&urls[0]).await;
    let (a, b) = (book(&store, 10).await, book(&store, 0).await);
    let refused = store
        .commit_group(&[transfer(a, b, 50, "early")])
        .await
        .unwrap();
    assert_eq!(
        refusal_code(&refused[0]),
        Some(ErrorCode::InsufficientFunds)
    );

    let funding = Proposal::new(request(
        TransferKind::Deposit,
        AccountId::settlement(eur()),
        a,
        1_000,
        "top-up",
    ));
    store.commit_group(&[funding]).await.unwrap();
    let retry = store
        .commit_group(&[transfer(a, b, 50, "early")])
        .await
        .unwrap();

    assert_eq!(refusal_code(&retry[0]), Some(ErrorCode::InsufficientFunds));
    assert!(retry[0].replayed);
    assert_eq!(balance(&store, a).await, 1_010);
}

const CLIENTS: usize = 16;
const REQUESTS_PER_CLIENT: usize = 24;

db_test!(
    sixteen_clients_with_hot_accounts_and_shared_keys_agree_with_the_model_in_commit_order,
    databases = 1,
    sixteen_clients_agree_with_the_model
);
async fn sixteen_clients_agree_with_the_model(urls: Vec<String>) {
    let store = store(&urls[0]).await;
    let books = [
        book(&store, 300).await,
        book(&store, 200).await,
        book(&store, 0).await,
    ];
    let engine = PostingEngine::start(Arc::clone(&store), GroupConfig::default());

    // Every client draws from the same three hot books and the same small pool of
    // keys, so groups hold duplicates, reused keys and refusals side by side.
    let mut clients = Vec::new();
    for client in 0..CLIENTS {
        let engine = engine.clone();
        clients.push(tokio::spawn(async move {
            let mut answers = Vec::new();
            for n in 0..REQUESTS_PER_CLIENT {
                let seed = client * 7 + n * 13;
                let from = books[seed % 3];
                let to = books[(seed + 1 + n % 2) % 3];
                let amount = [10, 50, 120, 400][(seed / 3) % 4];
                let key = format!("key-{}", seed % 40);
                let posting = request(TransferKind::Transfer, from, to, amount, &key);
                let outcome = engine.submit(posting.clone()).await.unwrap();
                answers.push((posting, outcome));
            }
            answers
        }));
    }
    let mut answers = Vec::new();
    for client in clients {
        answers.extend(client.await.unwrap());
    }

    // The order the requests were decided in, from their records.
    let sql = match store.backend() {
        DbBackend::Postgres => {
            "SELECT idempotency_key, request_hash, transfer_id, refusal_code FROM ledger_requests WHERE scope = 'user:alice' AND idempotency_key LIKE 'key-%' ORDER BY decided_seq"
        }
        _ => {
            "SELECT idempotency_key, request_hash, transfer_id, refusal_code FROM ledger_requests WHERE scope = 'user:alice' AND idempotency_key LIKE 'key-%' ORDER BY rowid"
        }
    };
    let rows = store
        .connection()
        .query_all_raw(Statement::from_string(store.backend(), sql))
        .await
        .unwrap();

    let mut model: BTreeMap<AccountId, i64> = BTreeMap::new();
    model.insert(books[0], 300);
    model.insert(books[1], 200);
    model.insert(books[2], 0);
    let mut decided: HashMap<String, (String, Result<String, ErrorCode>)> = HashMap::new();
    for row in &rows {
        let key: String = row.try_get("", "idempotency_key").unwrap();
        let fingerprint: String = row.try_get("", "request_hash").unwrap();
        let transfer_id: Option<String> = row.try_get("", "transfer_id").unwrap();
        let refusal: Option<String> = row.try_get("", "refusal_code").unwrap();
        let (posting, _) = answers
            .iter()
            .find(|(posting, _)| {
                posting.idempotency_key.as_str() == key && posting.fingerprint() == fingerprint
            })
            .expect("every record belongs to a request that was made");
        let movement = moved(posting);
        let amount = movement.amount.minor();
        let expected = if model[&movement.from_account_id] >= amount {
            *model.get_mut(&movement.from_account_id).unwrap() -= amount;
            *model.get_mut(&movement.to_account_id).unwrap() += amount;
            None
        } else {
            Some(ErrorCode::InsufficientFunds)
        };
        let recorded = refusal
            .as_deref()
            .map(|code| ErrorCode::parse(code).unwrap());
        assert_eq!(recorded, expected, "record of {key}");
        let outcome = match (transfer_id, recorded) {
            (Some(id), None) => Ok(id),
            (None, Some(code)) => Err(code),
            other => panic!("a record is a transfer or a refusal: {other:?}"),
        };
        decided.insert(key, (fingerprint, outcome));
    }

    // Every answer is its key's decision, or a reuse of the key with another body.
    for (posting, outcome) in &answers {
        let (fingerprint, decision) = &decided[posting.idempotency_key.as_str()];
        let got = outcome
            .clone()
            .transfer()
            .map(|transfer| transfer.transfer_id.to_string())
            .map_err(|refusal| refusal.code);
        if &posting.fingerprint() == fingerprint {
            assert_eq!(&got, decision);
        } else {
            assert_eq!(got, Err(ErrorCode::IdempotencyKeyReused));
        }
    }
    for (id, expected) in &model {
        assert_eq!(balance(&store, *id).await, *expected);
    }
    let report = store.verify().await.unwrap();
    assert!(report.mismatches.is_empty(), "{:?}", report.mismatches);
}
