//! Helpers shared by the ledger's integration tests.

use std::sync::Arc;

use bank_e2e::{Parts, Stack, TestUser, authed, spawn};
use bank_kit::{ErrorCode, money::Currency, money::PositiveAmount};
use bank_ledger::{
    domain::{
        AccountId, AccountStatus, Description, IdempotencyKey, TransferKind,
        plan::{Movement, PostingRequest, Proposal},
    },
    store::{LedgerStore, migrations::Migrator},
};
use bank_proto::ledger::v1 as pb;

pub fn eur() -> Currency {
    Currency::parse("EUR").unwrap()
}

/// The ledger's store on a migrated database, for tests that decide exactly
/// what one commit group holds.
pub async fn store_at(url: &str) -> Arc<LedgerStore> {
    let db = bank_kit::db::connect_and_migrate::<Migrator>(url)
        .await
        .unwrap();
    Arc::new(LedgerStore::new(db))
}

/// A book of alice's in EUR, active and holding `funding` (deposited at the
/// real clock).
pub async fn funded_book(store: &LedgerStore, funding: i64) -> AccountId {
    let id = AccountId::from_uuid(uuid::Uuid::now_v7());
    store.open_account(id, "alice", eur()).await.unwrap();
    store
        .set_status(id, AccountStatus::Active, Some(0))
        .await
        .unwrap();
    if funding > 0 {
        let deposit = PostingRequest::movement(
            Movement {
                kind: TransferKind::Deposit,
                from_account_id: AccountId::settlement(eur()),
                to_account_id: id,
                amount: PositiveAmount::parse(funding).unwrap(),
                currency: eur(),
                description: Description::default(),
                reverses_transfer_id: None,
            },
            None,
            "service:test".into(),
            IdempotencyKey::parse(&format!("fund-{id}")).unwrap(),
        );
        let outcomes = store.commit_group(&[Proposal::new(deposit)]).await.unwrap();
        assert!(outcomes[0].result.is_ok());
    }
    id
}

/// Opens a book for `owner` in `currency` and activates it, as the account
/// service does once it recorded the account.
pub async fn open_book(stack: &Stack, owner: &TestUser, currency: &str) -> String {
    let account_id = open_unactivated_book(stack, owner, currency).await;
    let token = stack.account_service_token().await;
    let activated = set_book_status(stack, &token, &account_id, pb::LedgerAccountStatus::Active)
        .await
        .expect("activate book");
    assert_eq!(activated.status_version, 1);
    account_id
}

/// Opens a book as the account service's first step does: not yet postable.
pub async fn open_unactivated_book(stack: &Stack, owner: &TestUser, currency: &str) -> String {
    let account_id = uuid::Uuid::now_v7().to_string();
    let token = stack.account_service_token().await;
    let opened = stack
        .ledger()
        .await
        .open_ledger_account(authed(
            &token,
            pb::OpenLedgerAccountRequest {
                account_id: account_id.clone(),
                owner_id: owner.user_id.clone(),
                currency: currency.into(),
            },
        ))
        .await
        .expect("open book")
        .into_inner();
    assert_eq!(opened.status_version, 0);
    account_id
}

/// `SetLedgerAccountStatus` as the principal of `token`.
pub async fn set_book_status(
    stack: &Stack,
    token: &str,
    account_id: &str,
    status: pb::LedgerAccountStatus,
) -> Result<pb::SetLedgerAccountStatusResponse, tonic::Status> {
    stack
        .ledger()
        .await
        .set_ledger_account_status(authed(
            token,
            pb::SetLedgerAccountStatusRequest {
                account_id: account_id.to_owned(),
                status: status as i32,
                expected_status_version: None,
            },
        ))
        .await
        .map(tonic::Response::into_inner)
}

/// Writes a book's balance behind the ledger's back, as a forger with database
/// access would: 5,000 minor units that no entry explains.
pub async fn tamper_with_balance(stack: &Stack, account_id: &str) {
    use sea_orm::ConnectionTrait;
    let db = bank_kit::db::connect(&stack.database_urls["ledger"])
        .await
        .unwrap();
    db.execute_unprepared(&format!(
        "UPDATE ledger_accounts SET balance_minor = 5000 WHERE account_id = '{account_id}'"
    ))
    .await
    .unwrap();
}

pub async fn deposit(
    stack: &Stack,
    operator: &TestUser,
    account_id: &str,
    amount_minor: i64,
) -> pb::Transfer {
    stack
        .ledger()
        .await
        .deposit(authed(
            &operator.access_token,
            pb::DepositRequest {
                account_id: account_id.into(),
                amount_minor,
                currency: "EUR".into(),
                reference: "test deposit".into(),
                idempotency_key: uuid::Uuid::new_v4().to_string(),
            },
        ))
        .await
        .expect("deposit")
        .into_inner()
        .transfer
        .expect("transfer")
}

pub fn transfer_request(
    from: &str,
    to: &str,
    amount_minor: i64,
    key: &str,
) -> pb::CreateTransferRequest {
    pb::CreateTransferRequest {
        from_account_id: from.into(),
        to_account_id: to.into(),
        amount_minor,
        currency: "EUR".into(),
        description: "test transfer".into(),
        idempotency_key: key.into(),
        ..Default::default()
    }
}

pub async fn transfer(
    stack: &Stack,
    user: &TestUser,
    request: pb::CreateTransferRequest,
) -> Result<pb::Transfer, tonic::Status> {
    stack
        .ledger()
        .await
        .create_transfer(authed(&user.access_token, request))
        .await
        .map(|response| response.into_inner().transfer.expect("transfer"))
}

pub async fn balance(stack: &Stack, user: &TestUser, account_id: &str) -> i64 {
    balances(stack, user, account_id).await.balance_minor
}

/// An account's balance and what of it is available.
pub async fn balances(stack: &Stack, user: &TestUser, account_id: &str) -> pb::GetBalanceResponse {
    stack
        .ledger()
        .await
        .get_balance(authed(
            &user.access_token,
            pb::GetBalanceRequest {
                account_id: account_id.into(),
            },
        ))
        .await
        .expect("balance")
        .into_inner()
}

pub async fn verify(stack: &Stack, operator: &TestUser) -> pb::VerifyLedgerResponse {
    stack
        .ledger()
        .await
        .verify_ledger(authed(&operator.access_token, pb::VerifyLedgerRequest {}))
        .await
        .expect("verify")
        .into_inner()
}

pub fn code(status: &tonic::Status) -> ErrorCode {
    bank_kit::error::code_of_status(status)
}

/// The world most ledger tests start from: an operator, a customer (alice) with two
/// euro books, and `funding` deposited into the first.
pub struct World {
    pub stack: Stack,
    pub operator: TestUser,
    pub alice: TestUser,
    pub from: String,
    pub to: String,
}

pub async fn world(urls: &[String], funding: i64) -> World {
    let stack = spawn(urls, Parts::LEDGER).await;
    let operator = stack.operator().await;
    let alice = stack.customer().await;
    let from = open_book(&stack, &alice, "EUR").await;
    let to = open_book(&stack, &alice, "EUR").await;
    deposit(&stack, &operator, &from, funding).await;
    World {
        stack,
        operator,
        alice,
        from,
        to,
    }
}
