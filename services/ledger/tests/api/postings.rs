//! Moving money: transfers, deposits, withdrawals, reversals, idempotency.

use bank_e2e::{Parts, authed, db_test, spawn};
use bank_kit::ErrorCode;
use bank_proto::ledger::v1 as pb;

use crate::helpers::{
    World, balance, code, deposit, open_book, transfer, transfer_request, verify, world,
};

db_test!(
    transfer_moves_money_between_accounts,
    databases = 2,
    transfer_moves_money
);
async fn transfer_moves_money(urls: Vec<String>) {
    let stack = spawn(&urls, Parts::LEDGER).await;
    let operator = stack.operator().await;
    let alice = stack.customer().await;
    let bob = stack.customer().await;
    let from = open_book(&stack, &alice, "EUR").await;
    let to = open_book(&stack, &bob, "EUR").await;
    deposit(&stack, &operator, &from, 10_000).await;

    let posted = transfer(&stack, &alice, transfer_request(&from, &to, 2_500, "t-1"))
        .await
        .unwrap();

    assert_eq!(posted.amount_minor, 2_500);
    assert_eq!(posted.status, pb::TransferStatus::Posted as i32);
    assert_eq!(balance(&stack, &alice, &from).await, 7_500);
    assert_eq!(balance(&stack, &bob, &to).await, 2_500);
    let entries = stack
        .ledger()
        .await
        .list_account_entries(authed(
            &alice.access_token,
            pb::ListAccountEntriesRequest {
                account_id: from.clone(),
                page_size: 0,
                page_token: String::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .entries;
    assert_eq!(entries.len(), 2);
    assert_eq!(
        entries[0].amount_minor, -2_500,
        "newest first, signed from the account's side"
    );
    assert_eq!(entries[0].balance_after_minor, 7_500);
    assert_eq!(entries[0].counterparty_account_id, to);
    assert_eq!(entries[1].amount_minor, 10_000);
    let report = verify(&stack, &operator).await;
    assert!(report.ok, "{:?}", report.mismatches);
    assert_eq!(report.entries_checked, 4);
}

db_test!(
    replayed_transfer_returns_the_original_and_moves_nothing,
    databases = 2,
    replay_is_idempotent
);
async fn replay_is_idempotent(urls: Vec<String>) {
    let World {
        stack,
        operator: _,
        alice,
        from,
        to,
    } = world(&urls, 10_000).await;

    let first = transfer(
        &stack,
        &alice,
        transfer_request(&from, &to, 1_000, "same-key"),
    )
    .await
    .unwrap();
    let second = transfer(
        &stack,
        &alice,
        transfer_request(&from, &to, 1_000, "same-key"),
    )
    .await
    .unwrap();

    assert_eq!(first.transfer_id, second.transfer_id);
    assert_eq!(balance(&stack, &alice, &from).await, 9_000);
    assert_eq!(balance(&stack, &alice, &to).await, 1_000);
}

db_test!(
    reused_key_with_another_request_is_refused,
    databases = 2,
    key_reuse_is_refused
);
async fn key_reuse_is_refused(urls: Vec<String>) {
    let World {
        stack,
        operator: _,
        alice,
        from,
        to,
    } = world(&urls, 10_000).await;
    transfer(&stack, &alice, transfer_request(&from, &to, 1_000, "key"))
        .await
        .unwrap();

    let error = transfer(&stack, &alice, transfer_request(&from, &to, 2_000, "key"))
        .await
        .unwrap_err();

    assert_eq!(code(&error), ErrorCode::IdempotencyKeyReused);
    assert_eq!(balance(&stack, &alice, &from).await, 9_000);
}

db_test!(keys_are_scoped_per_caller, databases = 2, keys_are_scoped);
async fn keys_are_scoped(urls: Vec<String>) {
    let stack = spawn(&urls, Parts::LEDGER).await;
    let operator = stack.operator().await;
    let alice = stack.customer().await;
    let bob = stack.customer().await;
    let alice_from = open_book(&stack, &alice, "EUR").await;
    let bob_from = open_book(&stack, &bob, "EUR").await;
    deposit(&stack, &operator, &alice_from, 5_000).await;
    deposit(&stack, &operator, &bob_from, 5_000).await;

    let by_alice = transfer(
        &stack,
        &alice,
        transfer_request(&alice_from, &bob_from, 100, "shared"),
    )
    .await
    .unwrap();
    let by_bob = transfer(
        &stack,
        &bob,
        transfer_request(&bob_from, &alice_from, 300, "shared"),
    )
    .await
    .unwrap();

    assert_ne!(by_alice.transfer_id, by_bob.transfer_id);
    assert_eq!(balance(&stack, &alice, &alice_from).await, 5_200);
}

db_test!(
    transfer_is_rejected_when_balance_is_insufficient,
    databases = 2,
    overdraft_is_refused
);
async fn overdraft_is_refused(urls: Vec<String>) {
    let World {
        stack,
        operator,
        alice,
        from,
        to,
    } = world(&urls, 1_000).await;

    let error = transfer(
        &stack,
        &alice,
        transfer_request(&from, &to, 1_001, "too-much"),
    )
    .await
    .unwrap_err();

    assert_eq!(code(&error), ErrorCode::InsufficientFunds);
    assert_eq!(balance(&stack, &alice, &from).await, 1_000);
    assert_eq!(balance(&stack, &alice, &to).await, 0);
    // A refused key stays refused: a retry after the account was funded gets the
    // same refusal and moves nothing, while a new key posts.
    deposit(&stack, &operator, &from, 1).await;
    let retry = transfer(
        &stack,
        &alice,
        transfer_request(&from, &to, 1_001, "too-much"),
    )
    .await
    .unwrap_err();
    assert_eq!(code(&retry), ErrorCode::InsufficientFunds);
    assert_eq!(balance(&stack, &alice, &from).await, 1_001);
    transfer(
        &stack,
        &alice,
        transfer_request(&from, &to, 1_001, "funded-now"),
    )
    .await
    .unwrap();
    let report = verify(&stack, &operator).await;
    assert!(report.ok, "{:?}", report.mismatches);
}

db_test!(
    zero_and_negative_amounts_are_refused,
    databases = 2,
    non_positive_amounts_are_refused
);
async fn non_positive_amounts_are_refused(urls: Vec<String>) {
    let World {
        stack,
        operator: _,
        alice,
        from,
        to,
    } = world(&urls, 1_000).await;

    for (amount, key) in [(0, "zero"), (-500, "negative"), (i64::MIN, "minimum")] {
        let error = transfer(&stack, &alice, transfer_request(&from, &to, amount, key))
            .await
            .unwrap_err();
        assert_eq!(code(&error), ErrorCode::InvalidArgument, "amount {amount}");
    }
    assert_eq!(balance(&stack, &alice, &from).await, 1_000);
    assert_eq!(balance(&stack, &alice, &to).await, 0);
}

db_test!(
    currency_mismatch_is_refused,
    databases = 2,
    currency_mismatch
);
async fn currency_mismatch(urls: Vec<String>) {
    let stack = spawn(&urls, Parts::LEDGER).await;
    let operator = stack.operator().await;
    let alice = stack.customer().await;
    let euros = open_book(&stack, &alice, "EUR").await;
    let dollars = open_book(&stack, &alice, "USD").await;
    deposit(&stack, &operator, &euros, 1_000).await;

    let error = transfer(
        &stack,
        &alice,
        transfer_request(&euros, &dollars, 100, "fx"),
    )
    .await
    .unwrap_err();
    assert_eq!(code(&error), ErrorCode::CurrencyMismatch);
    let mut in_dollars = transfer_request(&euros, &dollars, 100, "fx-2");
    in_dollars.currency = "USD".into();
    let error = transfer(&stack, &alice, in_dollars).await.unwrap_err();
    assert_eq!(code(&error), ErrorCode::CurrencyMismatch);

    // A well-formed code no account can hold is a mismatch too, but only once the
    // accounts are known to be the caller's; a malformed code is invalid.
    let bob = stack.customer().await;
    let bobs = open_book(&stack, &bob, "EUR").await;
    let missing = uuid::Uuid::now_v7().to_string();
    let cases = [
        ("HUF", &euros, &bobs, ErrorCode::CurrencyMismatch),
        ("HUF", &bobs, &euros, ErrorCode::NotFound),
        ("HUF", &euros, &missing, ErrorCode::NotFound),
        ("huf", &euros, &bobs, ErrorCode::InvalidArgument),
        ("EURO", &euros, &bobs, ErrorCode::InvalidArgument),
    ];
    for (index, (currency, from, to, expected)) in cases.into_iter().enumerate() {
        let mut request = transfer_request(from, to, 100, &format!("odd-{index}"));
        request.currency = currency.into();
        let error = transfer(&stack, &alice, request).await.unwrap_err();
        assert_eq!(code(&error), expected, "{currency} from {from} to {to}");
    }
    // A used key with an unsupported currency is a reused key, as with any other
    // change of body.
    let mut request = transfer_request(&euros, &bobs, 100, "paid");
    transfer(&stack, &alice, request.clone()).await.unwrap();
    request.currency = "HUF".into();
    let error = transfer(&stack, &alice, request).await.unwrap_err();
    assert_eq!(code(&error), ErrorCode::IdempotencyKeyReused);
    let ledger = stack.ledger().await;
    for (account_id, expected) in [
        (&euros, ErrorCode::CurrencyMismatch),
        (&missing, ErrorCode::NotFound),
    ] {
        let deposit = pb::DepositRequest {
            account_id: account_id.clone(),
            amount_minor: 100,
            currency: "HUF".into(),
            reference: "odd".into(),
            idempotency_key: uuid::Uuid::new_v4().to_string(),
        };
        let withdrawal = pb::WithdrawRequest {
            account_id: deposit.account_id.clone(),
            amount_minor: deposit.amount_minor,
            currency: deposit.currency.clone(),
            reference: deposit.reference.clone(),
            idempotency_key: uuid::Uuid::new_v4().to_string(),
        };
        let token = &operator.access_token;
        let errors = [
            ledger
                .clone()
                .deposit(authed(token, deposit))
                .await
                .unwrap_err(),
            ledger
                .clone()
                .withdraw(authed(token, withdrawal))
                .await
                .unwrap_err(),
        ];
        for error in errors {
            assert_eq!(code(&error), expected, "{account_id}");
        }
    }

    assert_eq!(balance(&stack, &alice, &euros).await, 900);
    assert_eq!(balance(&stack, &alice, &dollars).await, 0);
    assert_eq!(balance(&stack, &bob, &bobs).await, 100);
    let report = verify(&stack, &operator).await;
    assert!(report.ok, "{:?}", report.mismatches);
}

db_test!(
    withdrawal_takes_money_out_and_cannot_overdraw,
    databases = 2,
    withdrawal
);
async fn withdrawal(urls: Vec<String>) {
    let stack = spawn(&urls, Parts::LEDGER).await;
    let operator = stack.operator().await;
    let alice = stack.customer().await;
    let account = open_book(&stack, &alice, "EUR").await;
    deposit(&stack, &operator, &account, 1_000).await;
    let withdraw = |amount_minor: i64, key: &str| pb::WithdrawRequest {
        account_id: account.clone(),
        amount_minor,
        currency: "EUR".into(),
        reference: "cash".into(),
        idempotency_key: key.into(),
    };

    stack
        .ledger()
        .await
        .withdraw(authed(&operator.access_token, withdraw(400, "w-1")))
        .await
        .unwrap();
    let error = stack
        .ledger()
        .await
        .withdraw(authed(&operator.access_token, withdraw(601, "w-2")))
        .await
        .unwrap_err();

    assert_eq!(code(&error), ErrorCode::InsufficientFunds);
    assert_eq!(balance(&stack, &alice, &account).await, 600);
    assert!(verify(&stack, &operator).await.ok);
}

db_test!(reversal_moves_the_money_back_once, databases = 2, reversal);
async fn reversal(urls: Vec<String>) {
    let World {
        stack,
        operator,
        alice,
        from,
        to,
    } = world(&urls, 1_000).await;
    let original = transfer(&stack, &alice, transfer_request(&from, &to, 700, "pay"))
        .await
        .unwrap();
    let reverse = |key: &str| pb::ReverseTransferRequest {
        transfer_id: original.transfer_id.clone(),
        reason: "sent in error".into(),
        idempotency_key: key.into(),
    };

    let reversal = stack
        .ledger()
        .await
        .reverse_transfer(authed(&operator.access_token, reverse("r-1")))
        .await
        .unwrap()
        .into_inner()
        .transfer
        .unwrap();
    let again = stack
        .ledger()
        .await
        .reverse_transfer(authed(&operator.access_token, reverse("r-2")))
        .await
        .unwrap_err();

    assert_eq!(reversal.reverses_transfer_id, original.transfer_id);
    assert_eq!(reversal.from_account_id, to);
    assert_eq!(code(&again), ErrorCode::Conflict);
    assert_eq!(balance(&stack, &alice, &from).await, 1_000);
    assert_eq!(balance(&stack, &alice, &to).await, 0);
}

db_test!(
    frozen_and_closed_accounts_refuse_postings,
    databases = 2,
    frozen_and_closed
);
async fn frozen_and_closed(urls: Vec<String>) {
    let World {
        stack,
        operator: _,
        alice,
        from,
        to,
    } = world(&urls, 1_000).await;
    let service = stack.account_service_token().await;
    let set_status = |account_id: &str, status: pb::LedgerAccountStatus| {
        authed(
            &service,
            pb::SetLedgerAccountStatusRequest {
                account_id: account_id.into(),
                status: status as i32,
                expected_status_version: None,
            },
        )
    };

    stack
        .ledger()
        .await
        .set_ledger_account_status(set_status(&to, pb::LedgerAccountStatus::Frozen))
        .await
        .unwrap();
    let frozen = transfer(
        &stack,
        &alice,
        transfer_request(&from, &to, 100, "to-frozen"),
    )
    .await
    .unwrap_err();
    assert_eq!(code(&frozen), ErrorCode::AccountFrozen);

    let not_empty = stack
        .ledger()
        .await
        .set_ledger_account_status(set_status(&from, pb::LedgerAccountStatus::Closed))
        .await
        .unwrap_err();
    assert_eq!(
        code(&not_empty),
        ErrorCode::Conflict,
        "closing needs a zero balance"
    );

    stack
        .ledger()
        .await
        .set_ledger_account_status(set_status(&to, pb::LedgerAccountStatus::Active))
        .await
        .unwrap();
    stack
        .ledger()
        .await
        .set_ledger_account_status(set_status(&to, pb::LedgerAccountStatus::Closed))
        .await
        .unwrap();
    let closed = transfer(
        &stack,
        &alice,
        transfer_request(&from, &to, 100, "to-closed"),
    )
    .await
    .unwrap_err();
    assert_eq!(code(&closed), ErrorCode::AccountClosed);
    assert_eq!(balance(&stack, &alice, &from).await, 1_000);
}

db_test!(
    concurrent_transfers_never_overdraw,
    databases = 2,
    concurrent_transfers
);
async fn concurrent_transfers(urls: Vec<String>) {
    let stack = spawn(&urls, Parts::LEDGER).await;
    let operator = stack.operator().await;
    let alice = stack.customer().await;
    let bob = stack.customer().await;
    let from = open_book(&stack, &alice, "EUR").await;
    let to = open_book(&stack, &bob, "EUR").await;
    deposit(&stack, &operator, &from, 10_000).await;
    deposit(&stack, &operator, &to, 10_000).await;

    // Twenty transfers of 1,000 race out of an account holding 10,000 while
    // twenty more race the other way: exactly the affordable ones succeed.
    let mut attempts = Vec::new();
    for index in 0..20 {
        let client = stack.ledger().await;
        for (user, source, target) in [(&alice, &from, &to), (&bob, &to, &from)] {
            let mut client = client.clone();
            let request = authed(
                &user.access_token,
                transfer_request(source, target, 1_000, &format!("race-{index}")),
            );
            attempts.push(tokio::spawn(async move {
                client.create_transfer(request).await
            }));
        }
    }
    let mut refused = 0;
    for attempt in attempts {
        if let Err(status) = attempt.await.unwrap() {
            assert_eq!(code(&status), ErrorCode::InsufficientFunds, "{status:?}");
            refused += 1;
        }
    }

    let total = balance(&stack, &alice, &from).await + balance(&stack, &bob, &to).await;
    assert_eq!(total, 20_000, "money is neither created nor destroyed");
    assert!(balance(&stack, &alice, &from).await >= 0);
    assert!(balance(&stack, &bob, &to).await >= 0);
    assert!(refused < 40);
    let report = verify(&stack, &operator).await;
    assert!(report.ok, "{:?}", report.mismatches);
}
