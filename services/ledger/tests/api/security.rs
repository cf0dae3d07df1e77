//! Who may do what: ownership, roles, service principals, tokens.

use bank_e2e::{Parts, authed, db_test, spawn};
use bank_kit::ErrorCode;
use bank_proto::ledger::v1 as pb;

use crate::helpers::{World, balance, code, deposit, open_book, transfer, transfer_request, world};

db_test!(
    transfer_from_someone_elses_account_is_not_found,
    databases = 2,
    foreign_account_is_not_found
);
async fn foreign_account_is_not_found(urls: Vec<String>) {
    let stack = spawn(&urls, Parts::LEDGER).await;
    let operator = stack.operator().await;
    let alice = stack.customer().await;
    let mallory = stack.customer().await;
    let alices = open_book(&stack, &alice, "EUR").await;
    let mallorys = open_book(&stack, &mallory, "EUR").await;
    deposit(&stack, &operator, &alices, 1_000).await;

    let theft = transfer(
        &stack,
        &mallory,
        transfer_request(&alices, &mallorys, 500, "steal"),
    )
    .await
    .unwrap_err();
    let peek = stack
        .ledger()
        .await
        .get_balance(authed(
            &mallory.access_token,
            pb::GetBalanceRequest {
                account_id: alices.clone(),
            },
        ))
        .await
        .unwrap_err();
    let missing = stack
        .ledger()
        .await
        .get_balance(authed(
            &mallory.access_token,
            pb::GetBalanceRequest {
                account_id: uuid::Uuid::now_v7().to_string(),
            },
        ))
        .await
        .unwrap_err();

    assert_eq!(code(&theft), ErrorCode::NotFound);
    assert_eq!(code(&peek), ErrorCode::NotFound);
    assert_eq!(
        peek.message(),
        missing.message(),
        "a foreign account looks exactly like a missing one"
    );
    assert_eq!(balance(&stack, &alice, &alices).await, 1_000);
}

db_test!(
    transfers_are_visible_to_either_side_only,
    databases = 2,
    transfer_visibility
);
async fn transfer_visibility(urls: Vec<String>) {
    let stack = spawn(&urls, Parts::LEDGER).await;
    let operator = stack.operator().await;
    let alice = stack.customer().await;
    let bob = stack.customer().await;
    let eve = stack.customer().await;
    let from = open_book(&stack, &alice, "EUR").await;
    let to = open_book(&stack, &bob, "EUR").await;
    deposit(&stack, &operator, &from, 1_000).await;
    let posted = transfer(&stack, &alice, transfer_request(&from, &to, 10, "gift"))
        .await
        .unwrap();
    let get = |token: String| {
        let transfer_id = posted.transfer_id.clone();
        let stack = &stack;
        async move {
            stack
                .ledger()
                .await
                .get_transfer(authed(&token, pb::GetTransferRequest { transfer_id }))
                .await
        }
    };

    assert!(get(alice.access_token.clone()).await.is_ok());
    assert!(get(bob.access_token.clone()).await.is_ok());
    assert!(get(operator.access_token.clone()).await.is_ok());
    assert_eq!(
        code(&get(eve.access_token.clone()).await.unwrap_err()),
        ErrorCode::NotFound
    );
}

db_test!(
    customers_cannot_call_operator_methods,
    databases = 2,
    operator_methods_need_the_role
);
async fn operator_methods_need_the_role(urls: Vec<String>) {
    let stack = spawn(&urls, Parts::LEDGER).await;
    let alice = stack.customer().await;
    let account = open_book(&stack, &alice, "EUR").await;

    let deposit = stack
        .ledger()
        .await
        .deposit(authed(
            &alice.access_token,
            pb::DepositRequest {
                account_id: account.clone(),
                amount_minor: 1_000_000,
                currency: "EUR".into(),
                reference: "free money".into(),
                idempotency_key: "k".into(),
            },
        ))
        .await
        .unwrap_err();
    let verify = stack
        .ledger()
        .await
        .verify_ledger(authed(&alice.access_token, pb::VerifyLedgerRequest {}))
        .await
        .unwrap_err();

    assert_eq!(deposit.code(), tonic::Code::PermissionDenied);
    assert_eq!(verify.code(), tonic::Code::PermissionDenied);
    assert_eq!(balance(&stack, &alice, &account).await, 0);
}

db_test!(
    internal_methods_accept_only_the_account_service,
    databases = 2,
    internal_methods
);
async fn internal_methods(urls: Vec<String>) {
    let stack = spawn(&urls, Parts::LEDGER).await;
    let operator = stack.operator().await;
    let alice = stack.customer().await;

    for token in [&alice.access_token, &operator.access_token] {
        let error = stack
            .ledger()
            .await
            .open_ledger_account(authed(
                token,
                pb::OpenLedgerAccountRequest {
                    account_id: uuid::Uuid::now_v7().to_string(),
                    owner_id: alice.user_id.clone(),
                    currency: "EUR".into(),
                },
            ))
            .await
            .unwrap_err();
        assert_eq!(error.code(), tonic::Code::PermissionDenied);
    }
    let service = stack.account_service_token().await;
    let transfer_as_service = stack
        .ledger()
        .await
        .create_transfer(authed(
            &service,
            transfer_request(
                &uuid::Uuid::now_v7().to_string(),
                &uuid::Uuid::now_v7().to_string(),
                1,
                "svc",
            ),
        ))
        .await
        .unwrap_err();
    assert_eq!(transfer_as_service.code(), tonic::Code::PermissionDenied);
}

db_test!(
    calls_without_a_valid_token_are_unauthenticated,
    databases = 2,
    tokens_are_required
);
async fn tokens_are_required(urls: Vec<String>) {
    let stack = spawn(&urls, Parts::LEDGER).await;
    let alice = stack.customer().await;
    let account = open_book(&stack, &alice, "EUR").await;
    let request = || pb::GetBalanceRequest {
        account_id: account.clone(),
    };

    let missing = stack
        .ledger()
        .await
        .get_balance(tonic::Request::new(request()))
        .await
        .unwrap_err();
    let garbage = stack
        .ledger()
        .await
        .get_balance(authed("not.a.token", request()))
        .await
        .unwrap_err();
    let mut tampered_token = alice.access_token.clone();
    tampered_token.pop();
    tampered_token.push(if alice.access_token.ends_with('A') {
        'B'
    } else {
        'A'
    });
    let tampered = stack
        .ledger()
        .await
        .get_balance(authed(&tampered_token, request()))
        .await
        .unwrap_err();

    for error in [missing, garbage, tampered] {
        assert_eq!(error.code(), tonic::Code::Unauthenticated);
    }
}

db_test!(
    transfers_require_an_idempotency_key,
    databases = 2,
    idempotency_key_is_required
);
async fn idempotency_key_is_required(urls: Vec<String>) {
    let World {
        stack,
        operator: _,
        alice,
        from,
        to,
    } = world(&urls, 1_000).await;

    let error = transfer(&stack, &alice, transfer_request(&from, &to, 100, ""))
        .await
        .unwrap_err();

    assert_eq!(code(&error), ErrorCode::InvalidArgument);
    assert_eq!(balance(&stack, &alice, &from).await, 1_000);
}

db_test!(
    customers_cannot_transfer_into_the_settlement_account,
    databases = 2,
    settlement_is_not_a_customer_target
);
async fn settlement_is_not_a_customer_target(urls: Vec<String>) {
    let stack = spawn(&urls, Parts::LEDGER).await;
    let operator = stack.operator().await;
    let alice = stack.customer().await;
    let account = open_book(&stack, &alice, "EUR").await;
    let funding = deposit(&stack, &operator, &account, 1_000).await;
    let settlement = funding.from_account_id;

    let error = transfer(
        &stack,
        &alice,
        transfer_request(&account, &settlement, 500, "out"),
    )
    .await
    .unwrap_err();

    assert_eq!(code(&error), ErrorCode::NotFound);
    assert_eq!(balance(&stack, &alice, &account).await, 1_000);
}

db_test!(
    a_settlement_id_cannot_be_claimed_before_the_currencys_first_deposit,
    databases = 2,
    settlement_ids_are_reserved
);
async fn settlement_ids_are_reserved(urls: Vec<String>) {
    let stack = spawn(&urls, Parts::LEDGER).await;
    let operator = stack.operator().await;
    let mallory = stack.customer().await;
    let service = stack.account_service_token().await;
    // The id USD's settlement book will have: derived from the currency, so anyone
    // can compute it before USD's first deposit.
    let usd = bank_kit::money::Currency::parse("USD").unwrap();
    let settlement_id = bank_ledger::domain::AccountId::settlement(usd).to_string();

    for currency in ["USD", "EUR"] {
        let squat = stack
            .ledger()
            .await
            .open_ledger_account(authed(
                &service,
                pb::OpenLedgerAccountRequest {
                    account_id: settlement_id.clone(),
                    owner_id: mallory.user_id.clone(),
                    currency: currency.into(),
                },
            ))
            .await
            .unwrap_err();
        assert_eq!(code(&squat), ErrorCode::InvalidArgument, "{currency}");
    }

    // USD still settles: its first deposit creates the real settlement book there.
    let account = open_book(&stack, &mallory, "USD").await;
    let funding = stack
        .ledger()
        .await
        .deposit(authed(
            &operator.access_token,
            pb::DepositRequest {
                account_id: account.clone(),
                amount_minor: 700,
                currency: "USD".into(),
                reference: "wire".into(),
                idempotency_key: "first-usd".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .transfer
        .unwrap();
    assert_eq!(funding.from_account_id, settlement_id);
    assert_eq!(balance(&stack, &mallory, &account).await, 700);
}
