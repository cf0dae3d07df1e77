//! Opening, listing, freezing and closing accounts, and who may do it.

use bank_e2e::{Parts, Stack, TestUser, authed, db_test, spawn};
use bank_kit::ErrorCode;
use bank_proto::{account::v1 as pb, ledger::v1 as ledger};

async fn open(stack: &Stack, user: &TestUser, currency: &str) -> pb::Account {
    stack
        .account()
        .await
        .open_account(authed(
            &user.access_token,
            pb::OpenAccountRequest {
                currency: currency.into(),
                nickname: "Main".into(),
                idempotency_key: String::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .account
        .unwrap()
}

async fn balance(stack: &Stack, user: &TestUser, account_id: &str) -> Result<i64, tonic::Status> {
    stack
        .ledger()
        .await
        .get_balance(authed(
            &user.access_token,
            ledger::GetBalanceRequest {
                account_id: account_id.into(),
            },
        ))
        .await
        .map(|response| response.into_inner().balance_minor)
}

db_test!(
    opened_account_is_active_and_has_a_book_in_the_ledger,
    databases = 3,
    open_account
);
async fn open_account(urls: Vec<String>) {
    let stack = spawn(&urls, Parts::SERVICES).await;
    let alice = stack.customer().await;

    let account = open(&stack, &alice, "EUR").await;

    assert_eq!(account.status, pb::AccountStatus::Active as i32);
    assert_eq!(account.owner_id, alice.user_id);
    assert_eq!(account.currency, "EUR");
    assert!(bank_account::domain::is_valid_account_number(
        &account.number
    ));
    assert_eq!(
        balance(&stack, &alice, &account.account_id).await.unwrap(),
        0
    );
}

db_test!(users_see_only_their_own_accounts, databases = 3, ownership);
async fn ownership(urls: Vec<String>) {
    let stack = spawn(&urls, Parts::SERVICES).await;
    let alice = stack.customer().await;
    let bob = stack.customer().await;
    let alices = open(&stack, &alice, "EUR").await;
    open(&stack, &alice, "USD").await;
    open(&stack, &bob, "EUR").await;
    let mut accounts = stack.account().await;

    let listed = accounts
        .list_accounts(authed(
            &alice.access_token,
            pb::ListAccountsRequest::default(),
        ))
        .await
        .unwrap()
        .into_inner()
        .accounts;
    let foreign = accounts
        .get_account(authed(
            &bob.access_token,
            pb::GetAccountRequest {
                account_id: alices.account_id.clone(),
            },
        ))
        .await
        .unwrap_err();
    let other_owner = accounts
        .list_accounts(authed(
            &alice.access_token,
            pb::ListAccountsRequest {
                owner_id: bob.user_id.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();

    assert_eq!(listed.len(), 2);
    assert!(
        listed
            .iter()
            .all(|account| account.owner_id == alice.user_id)
    );
    assert_eq!(
        bank_kit::error::code_of_status(&foreign),
        ErrorCode::NotFound
    );
    assert_eq!(other_owner.code(), tonic::Code::PermissionDenied);
}

db_test!(
    unsupported_currencies_and_long_nicknames_are_refused,
    databases = 3,
    open_validation
);
async fn open_validation(urls: Vec<String>) {
    let stack = spawn(&urls, Parts::SERVICES).await;
    let alice = stack.customer().await;
    let mut accounts = stack.account().await;

    for request in [
        pb::OpenAccountRequest {
            currency: "XYZ".into(),
            nickname: String::new(),
            idempotency_key: String::new(),
        },
        pb::OpenAccountRequest {
            currency: "eur".into(),
            nickname: String::new(),
            idempotency_key: String::new(),
        },
        pb::OpenAccountRequest {
            currency: "EUR".into(),
            nickname: "n".repeat(65),
            idempotency_key: String::new(),
        },
    ] {
        let error = accounts
            .open_account(authed(&alice.access_token, request))
            .await
            .unwrap_err();
        assert_eq!(error.code(), tonic::Code::InvalidArgument);
    }
    let listed = accounts
        .list_accounts(authed(
            &alice.access_token,
            pb::ListAccountsRequest::default(),
        ))
        .await
        .unwrap()
        .into_inner()
        .accounts;
    assert!(listed.is_empty());
}

db_test!(
    freezing_is_for_operators_and_stops_money_moving,
    databases = 3,
    freeze
);
async fn freeze(urls: Vec<String>) {
    let stack = spawn(&urls, Parts::SERVICES).await;
    let operator = stack.operator().await;
    let alice = stack.customer().await;
    let from = open(&stack, &alice, "EUR").await;
    let to = open(&stack, &alice, "EUR").await;
    let mut ledger_client = stack.ledger().await;
    ledger_client
        .deposit(authed(
            &operator.access_token,
            ledger::DepositRequest {
                account_id: from.account_id.clone(),
                amount_minor: 1_000,
                currency: "EUR".into(),
                reference: "wire".into(),
                idempotency_key: "d-1".into(),
            },
        ))
        .await
        .unwrap();
    let mut accounts = stack.account().await;

    let by_owner = accounts
        .freeze_account(authed(
            &alice.access_token,
            pb::FreezeAccountRequest {
                account_id: from.account_id.clone(),
            },
        ))
        .await
        .unwrap_err();
    let frozen = accounts
        .freeze_account(authed(
            &operator.access_token,
            pb::FreezeAccountRequest {
                account_id: from.account_id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .account
        .unwrap();
    let transfer = ledger_client
        .create_transfer(authed(
            &alice.access_token,
            ledger::CreateTransferRequest {
                from_account_id: from.account_id.clone(),
                to_account_id: to.account_id.clone(),
                amount_minor: 100,
                currency: "EUR".into(),
                description: String::new(),
                idempotency_key: "t-1".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();

    assert_eq!(by_owner.code(), tonic::Code::PermissionDenied);
    assert_eq!(frozen.status, pb::AccountStatus::Frozen as i32);
    assert_eq!(
        bank_kit::error::code_of_status(&transfer),
        ErrorCode::AccountFrozen
    );
    let unfrozen = accounts
        .unfreeze_account(authed(
            &operator.access_token,
            pb::UnfreezeAccountRequest {
                account_id: from.account_id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .account
        .unwrap();
    assert_eq!(unfrozen.status, pb::AccountStatus::Active as i32);
}

db_test!(accounts_close_only_at_a_zero_balance, databases = 3, close);
async fn close(urls: Vec<String>) {
    let stack = spawn(&urls, Parts::SERVICES).await;
    let operator = stack.operator().await;
    let alice = stack.customer().await;
    let funded = open(&stack, &alice, "EUR").await;
    let empty = open(&stack, &alice, "EUR").await;
    stack
        .ledger()
        .await
        .deposit(authed(
            &operator.access_token,
            ledger::DepositRequest {
                account_id: funded.account_id.clone(),
                amount_minor: 1,
                currency: "EUR".into(),
                reference: "wire".into(),
                idempotency_key: "d-1".into(),
            },
        ))
        .await
        .unwrap();
    let mut accounts = stack.account().await;

    // An operator sees the account but cannot end it for its owner.
    let by_operator = accounts
        .close_account(authed(
            &operator.access_token,
            pb::CloseAccountRequest {
                account_id: empty.account_id.clone(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(
        bank_kit::error::code_of_status(&by_operator),
        ErrorCode::Forbidden
    );

    let refused = accounts
        .close_account(authed(
            &alice.access_token,
            pb::CloseAccountRequest {
                account_id: funded.account_id.clone(),
            },
        ))
        .await
        .unwrap_err();
    let closed = accounts
        .close_account(authed(
            &alice.access_token,
            pb::CloseAccountRequest {
                account_id: empty.account_id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .account
        .unwrap();

    assert_eq!(
        bank_kit::error::code_of_status(&refused),
        ErrorCode::Conflict
    );
    assert_eq!(closed.status, pb::AccountStatus::Closed as i32);
    let still_open = accounts
        .get_account(authed(
            &alice.access_token,
            pb::GetAccountRequest {
                account_id: funded.account_id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .account
        .unwrap();
    assert_eq!(still_open.status, pb::AccountStatus::Active as i32);
}
