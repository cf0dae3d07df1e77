//! The account service and the ledger agree: a retried open makes one account,
//! and racing status changes end the same in both.

use bank_e2e::{Parts, Stack, TestUser, authed, db_test, spawn};
use bank_kit::ErrorCode;
use bank_proto::{account::v1 as pb, ledger::v1 as ledger};

async fn open_keyed(
    stack: &Stack,
    user: &TestUser,
    nickname: &str,
    key: &str,
) -> Result<pb::Account, tonic::Status> {
    stack
        .account()
        .await
        .open_account(authed(
            &user.access_token,
            pb::OpenAccountRequest {
                currency: "EUR".into(),
                nickname: nickname.into(),
                idempotency_key: key.into(),
            },
        ))
        .await
        .map(|response| response.into_inner().account.unwrap())
}

async fn accounts_of(stack: &Stack, user: &TestUser) -> Vec<pb::Account> {
    stack
        .account()
        .await
        .list_accounts(authed(
            &user.access_token,
            pb::ListAccountsRequest::default(),
        ))
        .await
        .unwrap()
        .into_inner()
        .accounts
}

db_test!(
    a_retried_open_with_its_key_makes_one_account,
    databases = 3,
    keyed_opens
);
async fn keyed_opens(urls: Vec<String>) {
    let stack = spawn(&urls, Parts::SERVICES).await;
    let alice = stack.customer().await;
    let bob = stack.customer().await;

    // A client that lost the answer retries, several times at once.
    let mut retries = tokio::task::JoinSet::new();
    for _ in 0..6 {
        let client = stack.account().await;
        let token = alice.access_token.clone();
        retries.spawn(async move {
            let mut client = client;
            client
                .open_account(authed(
                    &token,
                    pb::OpenAccountRequest {
                        currency: "EUR".into(),
                        nickname: "Savings".into(),
                        idempotency_key: "open-savings".into(),
                    },
                ))
                .await
                .unwrap()
                .into_inner()
                .account
                .unwrap()
        });
    }
    let mut opened = Vec::new();
    while let Some(account) = retries.join_next().await {
        opened.push(account.unwrap());
    }
    let first = opened[0].clone();
    assert!(opened.iter().all(|account| account == &first), "{opened:?}");
    assert_eq!(first.status, pb::AccountStatus::Active as i32);
    let again = open_keyed(&stack, &alice, "Savings", "open-savings")
        .await
        .unwrap();
    assert_eq!(again, first);
    assert_eq!(accounts_of(&stack, &alice).await, vec![first.clone()]);

    // The key with another body is refused and opens nothing.
    let reused = open_keyed(&stack, &alice, "Holidays", "open-savings")
        .await
        .unwrap_err();
    assert_eq!(
        bank_kit::error::code_of_status(&reused),
        ErrorCode::IdempotencyKeyReused
    );
    assert_eq!(accounts_of(&stack, &alice).await.len(), 1);

    // Keys are per owner; without a key every open is a new account.
    let bobs = open_keyed(&stack, &bob, "Savings", "open-savings")
        .await
        .unwrap();
    assert_ne!(bobs.account_id, first.account_id);
    let unkeyed = open_keyed(&stack, &alice, "Savings", "").await.unwrap();
    assert_ne!(unkeyed.account_id, first.account_id);
    assert_eq!(accounts_of(&stack, &alice).await.len(), 2);
    let bad_key = open_keyed(&stack, &alice, "Savings", "has space")
        .await
        .unwrap_err();
    assert_eq!(bad_key.code(), tonic::Code::InvalidArgument);
}

db_test!(
    racing_freezes_and_unfreezes_end_the_same_in_account_and_ledger,
    databases = 3,
    racing_statuses
);
async fn racing_statuses(urls: Vec<String>) {
    let stack = spawn(&urls, Parts::SERVICES).await;
    let operator = stack.operator().await;
    let alice = stack.customer().await;
    let account = open_keyed(&stack, &alice, "Main", "").await.unwrap();

    for round in 0..3 {
        let mut racing = tokio::task::JoinSet::new();
        for index in 0..12 {
            let client = stack.account().await;
            let token = operator.access_token.clone();
            let account_id = account.account_id.clone();
            racing.spawn(async move {
                let mut client = client;
                if index % 2 == 0 {
                    client
                        .freeze_account(authed(&token, pb::FreezeAccountRequest { account_id }))
                        .await
                        .map(|_| ())
                } else {
                    client
                        .unfreeze_account(authed(&token, pb::UnfreezeAccountRequest { account_id }))
                        .await
                        .map(|_| ())
                }
            });
        }
        while let Some(done) = racing.join_next().await {
            done.unwrap().unwrap();
        }

        let recorded = stack
            .account()
            .await
            .get_account(authed(
                &alice.access_token,
                pb::GetAccountRequest {
                    account_id: account.account_id.clone(),
                },
            ))
            .await
            .unwrap()
            .into_inner()
            .account
            .unwrap();
        // What the ledger enforces: a deposit is refused exactly when it holds
        // the account frozen.
        let deposited = stack
            .ledger()
            .await
            .deposit(authed(
                &operator.access_token,
                ledger::DepositRequest {
                    account_id: account.account_id.clone(),
                    amount_minor: 1,
                    currency: "EUR".into(),
                    reference: "probe".into(),
                    idempotency_key: format!("probe-{round}"),
                },
            ))
            .await;
        let ledger_frozen = match &deposited {
            Ok(_) => false,
            Err(status) => {
                assert_eq!(
                    bank_kit::error::code_of_status(status),
                    ErrorCode::AccountFrozen
                );
                true
            }
        };
        let account_frozen = recorded.status == pb::AccountStatus::Frozen as i32;
        assert_eq!(
            account_frozen, ledger_frozen,
            "round {round}: the account service says {:?}, the ledger enforces frozen = {ledger_frozen}",
            recorded.status
        );
    }
}

db_test!(
    an_older_status_decision_never_overwrites_a_newer_one,
    databases = 1,
    older_decisions
);
async fn older_decisions(urls: Vec<String>) {
    use bank_account::{
        domain::{Account, AccountStatus},
        store::{AccountStore, Inserted, migrations::Migrator},
    };
    let db = bank_kit::db::connect_and_migrate::<Migrator>(&urls[0])
        .await
        .unwrap();
    let store = AccountStore::new(db);
    let account = Account {
        account_id: uuid::Uuid::now_v7(),
        number: "000000000000".into(),
        owner_id: uuid::Uuid::now_v7().to_string(),
        currency: bank_kit::money::Currency::parse("EUR").unwrap(),
        nickname: String::new(),
        status: AccountStatus::Pending,
        status_version: 0,
        created_at: bank_kit::time::now(),
    };
    assert_eq!(
        store.insert(&account, None, 10).await.unwrap(),
        Inserted::Inserted
    );
    store.record_active(account.account_id).await.unwrap();
    let recorded = || async { store.get(account.account_id).await.unwrap().unwrap() };
    assert_eq!(
        (recorded().await.status, recorded().await.status_version),
        (AccountStatus::Active, 0)
    );

    // The ledger decided frozen at 3 after active at 2; the answers arrive the
    // other way round.
    store
        .record_status(account.account_id, AccountStatus::Frozen, 3)
        .await
        .unwrap();
    store
        .record_status(account.account_id, AccountStatus::Active, 2)
        .await
        .unwrap();
    assert_eq!(
        (recorded().await.status, recorded().await.status_version),
        (AccountStatus::Frozen, 3)
    );
    store
        .record_status(account.account_id, AccountStatus::Active, 4)
        .await
        .unwrap();
    assert_eq!(
        (recorded().await.status, recorded().await.status_version),
        (AccountStatus::Active, 4)
    );
}

db_test!(
    a_customer_holds_at_most_the_configured_number_of_open_accounts,
    databases = 3,
    open_account_limit
);
async fn open_account_limit(urls: Vec<String>) {
    let stack = spawn(&urls, Parts::SERVICES).await;
    let alice = stack.customer().await;
    let limit = bank_e2e::MAX_OPEN_ACCOUNTS as usize;

    // Twice the limit at once: exactly the limit gets through.
    let mut opening = tokio::task::JoinSet::new();
    for _ in 0..limit * 2 {
        let client = stack.account().await;
        let token = alice.access_token.clone();
        opening.spawn(async move {
            let mut client = client;
            client
                .open_account(authed(
                    &token,
                    pb::OpenAccountRequest {
                        currency: "EUR".into(),
                        nickname: String::new(),
                        idempotency_key: String::new(),
                    },
                ))
                .await
                .map(|response| response.into_inner().account.unwrap())
        });
    }
    let (mut opened, mut refused) = (Vec::new(), Vec::new());
    while let Some(outcome) = opening.join_next().await {
        match outcome.unwrap() {
            Ok(account) => opened.push(account),
            Err(status) => refused.push(bank_kit::error::code_of_status(&status)),
        }
    }
    assert_eq!(opened.len(), limit);
    assert!(
        refused.iter().all(|code| *code == ErrorCode::LimitExceeded),
        "{refused:?}"
    );
    assert_eq!(accounts_of(&stack, &alice).await.len(), limit);

    // A closed account no longer counts.
    stack
        .account()
        .await
        .close_account(authed(
            &alice.access_token,
            pb::CloseAccountRequest {
                account_id: opened[0].account_id.clone(),
            },
        ))
        .await
        .unwrap();
    open_keyed(&stack, &alice, "again", "").await.unwrap();
    let over = open_keyed(&stack, &alice, "over", "").await.unwrap_err();
    assert_eq!(
        bank_kit::error::code_of_status(&over),
        ErrorCode::LimitExceeded
    );
}

db_test!(
    an_account_left_pending_before_the_upgrade_is_completed_with_an_activated_book,
    databases = 1,
    pending_before_upgrade
);
async fn pending_before_upgrade(urls: Vec<String>) {
    use bank_account::store::migrations::Migrator;
    use sea_orm::ConnectionTrait;
    use sea_orm_migration::MigratorTrait;
    let db = bank_kit::db::connect(&urls[0]).await.unwrap();
    // The schema as the previous version left it, with one account of each kind.
    Migrator::up(&db, Some(1)).await.unwrap();
    for (id, status) in [("pending", "pending"), ("active", "active")] {
        db.execute_unprepared(&format!(
            "INSERT INTO accounts (account_id, number, owner_id, currency, nickname, status, created_at, updated_at)
             VALUES ('{id}', '{id}', 'owner', 'EUR', '', '{status}', '2026-11-30T00:00:00Z', '2026-11-30T00:00:00Z')"
        ))
        .await
        .unwrap();
    }
    Migrator::up(&db, None).await.unwrap();

    for (id, expected) in [("pending", 0), ("active", 1)] {
        let row = db
            .query_one_raw(sea_orm::Statement::from_string(
                db.get_database_backend(),
                format!("SELECT status_version FROM accounts WHERE account_id = '{id}'"),
            ))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            row.try_get::<i64>("", "status_version").unwrap(),
            expected,
            "{id}"
        );
    }
}
