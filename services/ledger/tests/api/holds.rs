//! Holds (two-phase transfers) and atomic batches over gRPC, on both backends.

use std::time::{Duration, Instant};

use bank_e2e::{Parts, Stack, TestUser, authed, db_test, spawn};
use bank_kit::ErrorCode;
use bank_proto::ledger::v1 as pb;

use crate::helpers::{
    balance, balances, code, deposit, open_book, transfer, transfer_request, verify,
};

fn hold_request(from: &str, to: &str, amount_minor: i64, key: &str) -> pb::CreateTransferRequest {
    pb::CreateTransferRequest {
        pending: true,
        ..transfer_request(from, to, amount_minor, key)
    }
}

async fn available(stack: &Stack, user: &TestUser, account_id: &str) -> i64 {
    balances(stack, user, account_id).await.available_minor
}

async fn reverse(
    stack: &Stack,
    operator: &TestUser,
    transfer_id: &str,
) -> Result<pb::Transfer, tonic::Status> {
    stack
        .ledger()
        .await
        .reverse_transfer(authed(
            &operator.access_token,
            pb::ReverseTransferRequest {
                transfer_id: transfer_id.into(),
                reason: String::new(),
                idempotency_key: format!("reverse-{transfer_id}"),
            },
        ))
        .await
        .map(|response| response.into_inner().transfer.expect("transfer"))
}

async fn post(
    stack: &Stack,
    user: &TestUser,
    hold_id: &str,
    amount_minor: i64,
    key: &str,
) -> Result<pb::Transfer, tonic::Status> {
    stack
        .ledger()
        .await
        .post_pending_transfer(authed(
            &user.access_token,
            pb::PostPendingTransferRequest {
                transfer_id: hold_id.into(),
                amount_minor,
                idempotency_key: key.into(),
            },
        ))
        .await
        .map(|response| response.into_inner().transfer.expect("transfer"))
}

async fn void(
    stack: &Stack,
    user: &TestUser,
    hold_id: &str,
    key: &str,
) -> Result<pb::Transfer, tonic::Status> {
    stack
        .ledger()
        .await
        .void_pending_transfer(authed(
            &user.access_token,
            pb::VoidPendingTransferRequest {
                transfer_id: hold_id.into(),
                idempotency_key: key.into(),
            },
        ))
        .await
        .map(|response| response.into_inner().transfer.expect("transfer"))
}

async fn get(stack: &Stack, user: &TestUser, id: &str) -> Result<pb::Transfer, tonic::Status> {
    stack
        .ledger()
        .await
        .get_transfer(authed(
            &user.access_token,
            pb::GetTransferRequest {
                transfer_id: id.into(),
            },
        ))
        .await
        .map(|response| response.into_inner().transfer.expect("transfer"))
}

async fn holds_of(stack: &Stack, user: &TestUser, account_id: &str) -> Vec<pb::Transfer> {
    stack
        .ledger()
        .await
        .list_holds(authed(
            &user.access_token,
            pb::ListHoldsRequest {
                account_id: account_id.into(),
                page_size: 0,
                page_token: String::new(),
            },
        ))
        .await
        .expect("holds")
        .into_inner()
        .holds
}

/// Alice's funded book, bob's empty one, and an operator.
struct Parties {
    stack: Stack,
    operator: TestUser,
    alice: TestUser,
    bob: TestUser,
    from: String,
    to: String,
}

async fn parties(urls: &[String], funding: i64) -> Parties {
    let stack = spawn(urls, Parts::LEDGER).await;
    let operator = stack.operator().await;
    let alice = stack.customer().await;
    let bob = stack.customer().await;
    let from = open_book(&stack, &alice, "EUR").await;
    let to = open_book(&stack, &bob, "EUR").await;
    deposit(&stack, &operator, &from, funding).await;
    Parties {
        stack,
        operator,
        alice,
        bob,
        from,
        to,
    }
}

db_test!(
    a_hold_reserves_money_and_posting_part_of_it_moves_that_part,
    databases = 2,
    hold_then_post
);
async fn hold_then_post(urls: Vec<String>) {
    let Parties {
        stack,
        operator,
        alice,
        bob,
        from,
        to,
    } = parties(&urls, 1_000).await;

    let hold = transfer(&stack, &alice, hold_request(&from, &to, 600, "h"))
        .await
        .unwrap();
    assert_eq!(hold.status, pb::TransferStatus::Pending as i32);
    assert_eq!(hold.held_amount_minor, Some(600));
    assert_eq!(hold.amount_minor, 600);
    assert!(!hold.expires_at.is_empty() && hold.resolved_at.is_empty());
    assert_eq!(balance(&stack, &alice, &from).await, 1_000);
    assert_eq!(available(&stack, &alice, &from).await, 400);
    // What the hold reserves cannot be spent again.
    let over = transfer(&stack, &alice, transfer_request(&from, &to, 401, "t"))
        .await
        .unwrap_err();
    assert_eq!(code(&over), ErrorCode::InsufficientFunds);
    assert_eq!(holds_of(&stack, &alice, &from).await.len(), 1);
    // The payee can read it.
    assert_eq!(
        get(&stack, &bob, &hold.transfer_id).await.unwrap().status,
        pb::TransferStatus::Pending as i32
    );

    let posted = post(&stack, &alice, &hold.transfer_id, 250, "p")
        .await
        .unwrap();
    assert_eq!(posted.transfer_id, hold.transfer_id);
    assert_eq!(posted.status, pb::TransferStatus::Posted as i32);
    assert_eq!(posted.amount_minor, 250);
    assert_eq!(posted.held_amount_minor, Some(600));
    assert!(!posted.resolved_at.is_empty());
    assert_eq!(balance(&stack, &alice, &from).await, 750);
    assert_eq!(available(&stack, &alice, &from).await, 750);
    assert_eq!(balance(&stack, &bob, &to).await, 250);
    assert!(holds_of(&stack, &alice, &from).await.is_empty());
    // The same post again is a replay; another post or a void is refused.
    let replay = post(&stack, &alice, &hold.transfer_id, 250, "p")
        .await
        .unwrap();
    assert_eq!(replay.amount_minor, 250);
    assert_eq!(balance(&stack, &bob, &to).await, 250);
    let again = post(&stack, &alice, &hold.transfer_id, 0, "p2")
        .await
        .unwrap_err();
    assert_eq!(code(&again), ErrorCode::HoldNotPending);
    let late_void = void(&stack, &operator, &hold.transfer_id, "v")
        .await
        .unwrap_err();
    assert_eq!(code(&late_void), ErrorCode::HoldNotPending);
    // A posted hold reverses its posted amount.
    let reversal = reverse(&stack, &operator, &hold.transfer_id).await.unwrap();
    assert_eq!(reversal.amount_minor, 250);
    assert_eq!(balance(&stack, &alice, &from).await, 1_000);
    let report = verify(&stack, &operator).await;
    assert!(report.ok, "{:?}", report.mismatches);
}

db_test!(
    only_the_payer_operators_and_services_resolve_a_hold_and_only_once,
    databases = 2,
    who_resolves
);
async fn who_resolves(urls: Vec<String>) {
    let Parties {
        stack,
        operator,
        alice,
        bob,
        from,
        to,
    } = parties(&urls, 1_000).await;
    let carol = stack.customer().await;
    let hold = transfer(&stack, &alice, hold_request(&from, &to, 300, "h"))
        .await
        .unwrap();

    let by_payee = post(&stack, &bob, &hold.transfer_id, 0, "p")
        .await
        .unwrap_err();
    assert_eq!(code(&by_payee), ErrorCode::Forbidden);
    let by_stranger = void(&stack, &carol, &hold.transfer_id, "v")
        .await
        .unwrap_err();
    assert_eq!(code(&by_stranger), ErrorCode::NotFound);
    assert_eq!(
        code(&get(&stack, &carol, &hold.transfer_id).await.unwrap_err()),
        ErrorCode::NotFound
    );
    let too_much = post(&stack, &alice, &hold.transfer_id, 301, "p")
        .await
        .unwrap_err();
    assert_eq!(code(&too_much), ErrorCode::InvalidArgument);
    // Only posted transfers can be reversed.
    let reversal = reverse(&stack, &operator, &hold.transfer_id)
        .await
        .unwrap_err();
    assert_eq!(code(&reversal), ErrorCode::HoldNotPending);

    let voided = void(&stack, &operator, &hold.transfer_id, "v")
        .await
        .unwrap();
    assert_eq!(voided.status, pb::TransferStatus::Voided as i32);
    assert_eq!(voided.amount_minor, 0);
    assert_eq!(available(&stack, &alice, &from).await, 1_000);
    let post_after_void = post(&stack, &alice, &hold.transfer_id, 0, "p3")
        .await
        .unwrap_err();
    assert_eq!(code(&post_after_void), ErrorCode::HoldNotPending);
    // Post and void require a key.
    let keyless = void(&stack, &alice, &hold.transfer_id, "")
        .await
        .unwrap_err();
    assert_eq!(code(&keyless), ErrorCode::InvalidArgument);
    let report = verify(&stack, &operator).await;
    assert!(report.ok, "{:?}", report.mismatches);
}

db_test!(
    concurrent_holds_against_one_balance_leave_exactly_the_affordable_ones,
    databases = 2,
    concurrent_holds
);
async fn concurrent_holds(urls: Vec<String>) {
    let Parties {
        stack,
        operator,
        alice,
        bob: _,
        from,
        to,
    } = parties(&urls, 100).await;

    let attempts = (0..16).map(|n| {
        let (stack, alice) = (&stack, &alice);
        let request = if n % 4 == 0 {
            transfer_request(&from, &to, 30, &format!("t-{n}"))
        } else {
            hold_request(&from, &to, 30, &format!("h-{n}"))
        };
        async move { transfer(stack, alice, request).await }
    });
    let results = futures::future::join_all(attempts).await;

    let accepted = results.iter().filter(|result| result.is_ok()).count();
    assert_eq!(
        accepted, 3,
        "100 affords three of 30, holds and transfers alike"
    );
    for refused in results.iter().filter_map(|result| result.as_ref().err()) {
        assert_eq!(code(refused), ErrorCode::InsufficientFunds);
    }
    let held: i64 = holds_of(&stack, &alice, &from)
        .await
        .iter()
        .map(|hold| hold.amount_minor)
        .sum();
    let moved = 100 - balance(&stack, &alice, &from).await;
    assert_eq!(held + moved, 90);
    assert_eq!(available(&stack, &alice, &from).await, 10);
    let report = verify(&stack, &operator).await;
    assert!(report.ok, "{:?}", report.mismatches);
}

db_test!(
    an_expired_hold_counts_for_nothing_and_cannot_be_posted,
    databases = 2,
    expiry
);
async fn expiry(urls: Vec<String>) {
    let Parties {
        stack,
        operator,
        alice,
        bob: _,
        from,
        to,
    } = parties(&urls, 500).await;
    let hold = transfer(
        &stack,
        &alice,
        pb::CreateTransferRequest {
            timeout_seconds: 1,
            ..hold_request(&from, &to, 500, "h")
        },
    )
    .await
    .unwrap();
    assert_eq!(available(&stack, &alice, &from).await, 0);

    // Real time has to pass: the ledger's clock decides. Reads stop counting the
    // hold the moment it expires, before the sweep writes anything.
    let deadline = Instant::now() + Duration::from_secs(10);
    while available(&stack, &alice, &from).await != 500 {
        assert!(Instant::now() < deadline, "the hold never expired");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let late = post(&stack, &alice, &hold.transfer_id, 0, "p")
        .await
        .unwrap_err();
    assert_eq!(code(&late), ErrorCode::HoldNotPending);
    assert_eq!(
        get(&stack, &alice, &hold.transfer_id).await.unwrap().status,
        pb::TransferStatus::Expired as i32
    );
    transfer(&stack, &alice, transfer_request(&from, &to, 500, "all"))
        .await
        .unwrap();
    let report = verify(&stack, &operator).await;
    assert!(report.ok, "{:?}", report.mismatches);
}

db_test!(
    a_batch_applies_every_transfer_or_none_and_names_every_refused_one,
    databases = 2,
    batches
);
async fn batches(urls: Vec<String>) {
    let Parties {
        stack,
        operator,
        alice,
        bob,
        from,
        to,
    } = parties(&urls, 100).await;
    let second = open_book(&stack, &alice, "EUR").await;
    let item = |from: &str, to: &str, amount_minor: i64| pb::TransferBatchItem {
        from_account_id: from.into(),
        to_account_id: to.into(),
        amount_minor,
        currency: "EUR".into(),
        description: String::new(),
    };
    let submit = |transfers: Vec<pb::TransferBatchItem>, key: &str| {
        let request = pb::CreateTransferBatchRequest {
            transfers,
            idempotency_key: key.into(),
        };
        let (stack, alice) = (&stack, &alice);
        async move {
            stack
                .ledger()
                .await
                .create_transfer_batch(authed(&alice.access_token, request))
                .await
                .map(|response| response.into_inner().transfers)
        }
    };

    // The second transfer is paid by the first.
    let posted = submit(vec![item(&from, &second, 80), item(&second, &to, 70)], "ok")
        .await
        .unwrap();
    assert_eq!(posted.len(), 2);
    assert_eq!(balance(&stack, &bob, &to).await, 70);
    let replay = submit(vec![item(&from, &second, 80), item(&second, &to, 70)], "ok")
        .await
        .unwrap();
    assert_eq!(replay[1].transfer_id, posted[1].transfer_id);
    assert_eq!(balance(&stack, &bob, &to).await, 70);

    let refused = submit(
        vec![
            item(&from, &to, 5),
            item(&second, &to, 11),
            item(&from, &to, 1_000),
        ],
        "bad",
    )
    .await
    .unwrap_err();
    assert_eq!(code(&refused), ErrorCode::InsufficientFunds);
    let errors = pb::batch_errors_of(&refused)
        .expect("the refused items")
        .errors;
    let indexes: Vec<i32> = errors.iter().map(|error| error.index).collect();
    assert_eq!(indexes, [1, 2]);
    assert!(
        errors
            .iter()
            .all(|error| error.code == "insufficient_funds")
    );
    assert_eq!(
        balance(&stack, &alice, &from).await,
        20,
        "nothing of it moved"
    );

    let malformed = submit(
        vec![
            item(&from, &to, 1),
            item(&from, &from, 1),
            item("x", &to, 0),
        ],
        "m",
    )
    .await
    .unwrap_err();
    assert_eq!(code(&malformed), ErrorCode::InvalidArgument);
    let indexes: Vec<i32> = pb::batch_errors_of(&malformed)
        .expect("the malformed items")
        .errors
        .iter()
        .map(|error| error.index)
        .collect();
    assert_eq!(indexes, [1, 2]);
    let empty = submit(Vec::new(), "e").await.unwrap_err();
    assert_eq!(code(&empty), ErrorCode::InvalidArgument);
    // Every source must be the caller's.
    let foreign = submit(vec![item(&to, &from, 1)], "f").await.unwrap_err();
    assert_eq!(code(&foreign), ErrorCode::NotFound);
    let report = verify(&stack, &operator).await;
    assert!(report.ok, "{:?}", report.mismatches);
}
