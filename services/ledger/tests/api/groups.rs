//! Commit groups: the store's group transaction called directly, so a test decides
//! exactly what one group holds, and the engine's answer to a caller that goes
//! away. Sixteen concurrent clients against a reference model are in `model.rs`.

use std::sync::Arc;

use bank_e2e::db_test;
use bank_kit::{ErrorCode, money::PositiveAmount};
use bank_ledger::{
    domain::{
        AccountId, AccountStatus, Description, IdempotencyKey, TransferKind,
        plan::{Action, Movement, Outcome, PostingRequest, Proposal},
    },
    engine::{GroupConfig, PostingEngine},
    store::LedgerStore,
};
use futures::FutureExt;

use crate::helpers::{eur, funded_book, store_at};

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

fn transfer(from: AccountId, to: AccountId, amount: i64, key: &str) -> Proposal {
    Proposal::new(request(TransferKind::Transfer, from, to, amount, key))
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
    let store = store_at(&urls[0]).await;
    let (a, b) = (funded_book(&store, 100).await, funded_book(&store, 0).await);

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
    let store = store_at(&urls[0]).await;
    let (a, b) = (funded_book(&store, 100).await, funded_book(&store, 0).await);

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
    let store = store_at(&urls[0]).await;
    let (a, b) = (funded_book(&store, 100).await, funded_book(&store, 0).await);
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
    let store = store_at(&urls[0]).await;
    let (a, b) = (funded_book(&store, 10).await, funded_book(&store, 0).await);
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

db_test!(
    a_book_another_replica_changed_is_seen_by_the_next_group,
    databases = 1,
    another_replica_changed_a_book
);
/// A ledger plans a group on its books as it last committed them and writes it
/// in one statement that checks them under its locks (PostgreSQL). Here a
/// second ledger on the same database (another replica) freezes the book,
/// unfreezes it, and posts from it under keys of its own in between: each later
/// group of the first ledger must decide on what is committed, not on what it
/// remembers. The status changes write no entry, so only that check sees them.
async fn another_replica_changed_a_book(urls: Vec<String>) {
    let here = store_at(&urls[0]).await;
    let (a, b) = (funded_book(&here, 100).await, funded_book(&here, 0).await);
    let there = store_at(&urls[0]).await;
    let posted = |outcomes: Vec<Outcome>| outcomes[0].clone().transfer().unwrap();

    // Both books are now the ones `here` committed last.
    posted(
        here.commit_group(&[transfer(a, b, 10, "here-1")])
            .await
            .unwrap(),
    );
    there
        .set_status(a, AccountStatus::Frozen, None)
        .await
        .unwrap();
    let frozen = here
        .commit_group(&[transfer(a, b, 10, "here-2")])
        .await
        .unwrap();
    assert_eq!(refusal_code(&frozen[0]), Some(ErrorCode::AccountFrozen));

    there
        .set_status(a, AccountStatus::Active, None)
        .await
        .unwrap();
    posted(
        here.commit_group(&[transfer(a, b, 20, "here-3")])
            .await
            .unwrap(),
    );
    let theirs = posted(
        there
            .commit_group(&[transfer(a, b, 5, "there-1")])
            .await
            .unwrap(),
    );
    // The same key and body through `here`: the other replica's transfer.
    let replayed = here
        .commit_group(&[transfer(a, b, 5, "there-1")])
        .await
        .unwrap();
    assert!(replayed[0].replayed);
    assert_eq!(posted(replayed).transfer_id, theirs.transfer_id);

    // 100 - 10 - 20 - 5 = 65 left: 65 posts, one more unit is refused.
    let last = here
        .commit_group(&[transfer(a, b, 65, "here-4"), transfer(a, b, 1, "here-5")])
        .await
        .unwrap();
    assert_eq!(last[0].clone().transfer().unwrap().amount_minor, 65);
    assert_eq!(refusal_code(&last[1]), Some(ErrorCode::InsufficientFunds));
    assert_eq!(balance(&here, a).await, 0);
    assert_eq!(balance(&there, b).await, 100);
    let report = here.verify().await.unwrap();
    assert!(report.mismatches.is_empty(), "{report:?}");
}

/// Alice's request to do `action`, under `key`.
fn alices(action: Action, key: &str) -> Proposal {
    Proposal::new(PostingRequest {
        action,
        required_owner: Some("alice".to_owned()),
        scope: "user:alice".into(),
        idempotency_key: IdempotencyKey::parse(key).unwrap(),
    })
}

db_test!(
    a_hold_another_replica_resolved_is_not_posted_again,
    databases = 1,
    another_replica_resolved_a_hold
);
/// A ledger posts and voids the holds it placed without reading them first
/// (PostgreSQL): here a second ledger on the same database voids one of them in
/// between, and the first must answer `hold_not_pending`, not post it.
async fn another_replica_resolved_a_hold(urls: Vec<String>) {
    let here = store_at(&urls[0]).await;
    let (a, b) = (funded_book(&here, 100).await, funded_book(&here, 0).await);
    let there = store_at(&urls[0]).await;
    let hold = |amount: i64, key: &str| {
        let Proposal { request, .. } = transfer(a, b, amount, key);
        let Action::Move(movement) = request.action else {
            unreachable!("a transfer moves")
        };
        alices(
            Action::Hold {
                movement,
                timeout_seconds: 600,
            },
            key,
        )
    };
    let placed = |outcomes: Vec<Outcome>| outcomes[0].clone().transfer().unwrap().transfer_id;

    let first = placed(here.commit_group(&[hold(60, "hold-1")]).await.unwrap());
    let posted = here
        .commit_group(&[alices(
            Action::PostHold {
                hold_id: first,
                amount: Some(PositiveAmount::parse(40).unwrap()),
            },
            "post-1",
        )])
        .await
        .unwrap();
    assert_eq!(posted[0].clone().transfer().unwrap().amount_minor, 40);
    let again = here
        .commit_group(&[alices(
            Action::PostHold {
                hold_id: first,
                amount: None,
            },
            "post-1-again",
        )])
        .await
        .unwrap();
    assert_eq!(refusal_code(&again[0]), Some(ErrorCode::HoldNotPending));

    let second = placed(here.commit_group(&[hold(30, "hold-2")]).await.unwrap());
    let voided = there
        .commit_group(&[alices(Action::VoidHold { hold_id: second }, "void-2")])
        .await
        .unwrap();
    assert!(voided[0].result.is_ok(), "{voided:?}");
    let late = here
        .commit_group(&[alices(
            Action::PostHold {
                hold_id: second,
                amount: None,
            },
            "post-2",
        )])
        .await
        .unwrap();
    assert_eq!(refusal_code(&late[0]), Some(ErrorCode::HoldNotPending));

    let book = here.account(a).await.unwrap().unwrap();
    assert_eq!((book.balance_minor, book.pending_debits_minor), (60, 0));
    assert_eq!(balance(&there, b).await, 40);
    let report = here.verify().await.unwrap();
    assert!(report.mismatches.is_empty(), "{report:?}");
}

db_test!(
    the_database_refuses_a_second_reversal_of_one_transfer,
    databases = 1,
    second_reversal_in_the_database
);
/// The plan refuses a second reversal of a transfer under its books' locks; the
/// database refuses one all the same, from a writer that skipped the plan,
/// while a transfer that reverses nothing is never in the way (on PostgreSQL
/// the unique index covers only the transfers that reverse one).
async fn second_reversal_in_the_database(urls: Vec<String>) {
    use sea_orm::ConnectionTrait;
    let store = store_at(&urls[0]).await;
    let (a, b) = (funded_book(&store, 100).await, funded_book(&store, 0).await);
    let original = store
        .commit_group(&[transfer(a, b, 10, "t-1")])
        .await
        .unwrap()[0]
        .clone()
        .transfer()
        .unwrap()
        .transfer_id;
    let reversal = |id: &str| {
        format!(
            "INSERT INTO ledger_transfers (transfer_id, kind, from_account_id, to_account_id, amount_minor, currency, description, reverses_transfer_id, status, initiated_by, created_at)
             VALUES ('{id}', 'reversal', '{b}', '{a}', 10, 'EUR', 'forged', '{original}', 'posted', 'operator', CURRENT_TIMESTAMP)"
        )
    };
    let db = store.connection();

    db.execute_unprepared(&reversal("forged-1")).await.unwrap();
    let second = db.execute_unprepared(&reversal("forged-2")).await;

    assert!(second.is_err(), "a second reversal was written: {second:?}");
    assert_eq!(balance(&store, a).await, 90);
    let next = store
        .commit_group(&[transfer(a, b, 10, "t-2")])
        .await
        .unwrap();
    assert!(next[0].clone().transfer().is_ok());
}

/// The one-statement path writes on a connection of its own, held between
/// groups (PostgreSQL). Here the server ends that session between two groups:
/// the group that meets the closed connection is written the locked way, and
/// the next one opens a new connection and takes the one-statement path again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs BANK_TEST_POSTGRES_URL; make test runs it when that is set"]
async fn a_guarded_connection_the_server_closed_is_opened_again() {
    bank_kit::testing::run_with_databases(
        bank_kit::testing::Backend::Postgres,
        1,
        guarded_connection_closed,
    )
    .await;
}

async fn guarded_connection_closed(urls: Vec<String>) {
    use sea_orm::ConnectionTrait;
    let store = store_at(&urls[0]).await;
    let (a, b) = (funded_book(&store, 100).await, funded_book(&store, 0).await);
    let guarded_backends = || async {
        let rows = store
            .connection()
            .query_all_raw(sea_orm::Statement::from_sql_and_values(
                sea_orm::DbBackend::Postgres,
                "SELECT pid FROM pg_stat_activity
                 WHERE datname = current_database() AND application_name = $1",
                [bank_ledger::store::posting::GUARDED_WRITER_APPLICATION_NAME.into()],
            ))
            .await
            .unwrap();
        rows.iter()
            .map(|row| row.try_get::<i32>("", "pid").unwrap())
            .collect::<Vec<i32>>()
    };
    let posted = |outcomes: Vec<Outcome>| outcomes[0].clone().transfer().unwrap();

    // The first group reads both books; the next is planned on them, and is
    // the guarded statement.
    for (amount, key) in [(5, "k-0"), (5, "k-1")] {
        posted(
            store
                .commit_group(&[transfer(a, b, amount, key)])
                .await
                .unwrap(),
        );
    }
    let first = guarded_backends().await;
    assert_eq!(first.len(), 1, "{first:?}");
    store
        .connection()
        .execute_raw(sea_orm::Statement::from_sql_and_values(
            sea_orm::DbBackend::Postgres,
            "SELECT pg_terminate_backend($1, 30000)",
            [first[0].into()],
        ))
        .await
        .unwrap();

    posted(
        store
            .commit_group(&[transfer(a, b, 20, "k-2")])
            .await
            .unwrap(),
    );
    posted(
        store
            .commit_group(&[transfer(a, b, 30, "k-3")])
            .await
            .unwrap(),
    );
    let now = guarded_backends().await;
    assert_eq!(now.len(), 1, "{now:?}");
    assert_ne!(now[0], first[0]);
    assert_eq!(balance(&store, a).await, 40);
    assert_eq!(balance(&store, b).await, 60);
    let report = store.verify().await.unwrap();
    assert!(report.mismatches.is_empty(), "{report:?}");
}
