//! Holds and transfer batches through the REST routes of the contract.

use bank_e2e::{Parts, db_test, spawn};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{Rest, assert_problem};

db_test!(
    holds_and_batches_walk_the_contract,
    databases = 3,
    holds_walk
);
async fn holds_walk(urls: Vec<String>) {
    let stack = spawn(&urls, Parts::ALL).await;
    let rest = Rest::new(&stack);
    let operator = rest.operator_token().await;
    let (_, alice) = rest.customer().await;
    let (_, bob) = rest.customer().await;
    let from = rest.open_account(&alice, "EUR").await;
    let second = rest.open_account(&alice, "EUR").await;
    let to = rest.open_account(&bob, "EUR").await;
    rest.deposit(&operator, &from, 1_000).await;

    // A plain transfer carries the hold fields as nulls.
    let plain = rest
        .post(
            "/v1/transfers",
            Some(&alice),
            Some("plain"),
            json!({"from_account_id": from, "to_account_id": second, "amount": 100, "currency": "EUR"}),
        )
        .await;
    assert_eq!(plain.status, StatusCode::CREATED, "{:?}", plain.body);
    for field in ["held_amount", "expires_at", "resolved_at"] {
        assert_eq!(plain.body[field], Value::Null, "{field}");
    }

    let hold = rest
        .post(
            "/v1/transfers",
            Some(&alice),
            Some("hold"),
            json!({"from_account_id": from, "to_account_id": to, "amount": 400, "currency": "EUR", "pending": true, "timeout_seconds": 3600}),
        )
        .await;
    assert_eq!(hold.status, StatusCode::CREATED, "{:?}", hold.body);
    assert_eq!(hold.body["status"], "pending");
    assert_eq!(hold.body["held_amount"], 400);
    assert!(hold.body["expires_at"].is_string());
    assert_eq!(hold.body["resolved_at"], Value::Null);
    let hold_id = hold.body["id"].as_str().unwrap().to_owned();
    let balance = rest
        .get(&format!("/v1/accounts/{from}/balance"), &alice)
        .await;
    assert_eq!(
        (
            balance.body["balance"].as_i64(),
            balance.body["available"].as_i64()
        ),
        (Some(900), Some(500))
    );
    let holds = rest
        .get(&format!("/v1/accounts/{from}/holds"), &alice)
        .await;
    assert_eq!(holds.status, StatusCode::OK);
    assert_eq!(holds.body["holds"][0]["id"], hold_id.as_str());
    // The payee reads it but cannot resolve it.
    assert_eq!(
        rest.get(&format!("/v1/transfers/{hold_id}"), &bob)
            .await
            .body["status"],
        "pending"
    );
    let by_payee = rest
        .post(
            &format!("/v1/transfers/{hold_id}/void"),
            Some(&bob),
            Some("v"),
            json!({}),
        )
        .await;
    assert_problem(&by_payee, StatusCode::FORBIDDEN, "forbidden");
    let keyless = rest
        .post(
            &format!("/v1/transfers/{hold_id}/post"),
            Some(&alice),
            None,
            json!({}),
        )
        .await;
    assert_problem(&keyless, StatusCode::BAD_REQUEST, "invalid_argument");
    let too_much = rest
        .post(
            &format!("/v1/transfers/{hold_id}/post"),
            Some(&alice),
            Some("p-over"),
            json!({"amount": 401}),
        )
        .await;
    assert_problem(&too_much, StatusCode::BAD_REQUEST, "invalid_argument");
    let misspelt = rest
        .post(
            &format!("/v1/transfers/{hold_id}/post"),
            Some(&alice),
            Some("p-misspelt"),
            json!({"amonut": 1}),
        )
        .await;
    assert_problem(&misspelt, StatusCode::BAD_REQUEST, "invalid_argument");

    let posted = rest
        .post(
            &format!("/v1/transfers/{hold_id}/post"),
            Some(&alice),
            Some("p"),
            json!({"amount": 150}),
        )
        .await;
    assert_eq!(posted.status, StatusCode::OK, "{:?}", posted.body);
    assert_eq!(posted.body["status"], "posted");
    assert_eq!(posted.body["amount"], 150);
    assert!(posted.body["resolved_at"].is_string());
    assert_eq!(rest.balance(&alice, &from).await, 750);
    // A void with no body at all, after the post: the hold is no longer pending.
    let late = rest
        .call(
            Method::POST,
            &format!("/v1/transfers/{hold_id}/void"),
            Some(&alice),
            Some("v"),
            None,
        )
        .await;
    assert_problem(&late, StatusCode::CONFLICT, "hold_not_pending");

    // A batch: all of it, or none of it with every refused item named.
    let item = |from: &str, to: &str, amount: i64| json!({"from_account_id": from, "to_account_id": to, "amount": amount, "currency": "EUR"});
    let batch = rest
        .post(
            "/v1/transfer-batches",
            Some(&alice),
            Some("b1"),
            json!({"transfers": [item(&from, &second, 50), item(&second, &to, 120)]}),
        )
        .await;
    assert_eq!(batch.status, StatusCode::CREATED, "{:?}", batch.body);
    assert_eq!(batch.body["transfers"].as_array().map(Vec::len), Some(2));
    let refused = rest
        .post(
            "/v1/transfer-batches",
            Some(&alice),
            Some("b2"),
            json!({"transfers": [item(&from, &to, 1), item(&from, &to, 5_000), item(&second, &to, 5_000)]}),
        )
        .await;
    assert_problem(
        &refused,
        StatusCode::UNPROCESSABLE_ENTITY,
        "insufficient_funds",
    );
    let indexes: Vec<i64> = refused.body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|error| error["index"].as_i64().unwrap())
        .collect();
    assert_eq!(indexes, [1, 2]);
    assert_eq!(refused.body["errors"][0]["code"], "insufficient_funds");
    assert_eq!(
        rest.balance(&alice, &from).await,
        700,
        "nothing of the batch moved"
    );
    let malformed = rest
        .post(
            "/v1/transfer-batches",
            Some(&alice),
            Some("b3"),
            json!({"transfers": [item(&from, &to, 1), item(&from, &to, -1)]}),
        )
        .await;
    assert_problem(&malformed, StatusCode::BAD_REQUEST, "invalid_argument");
    assert_eq!(malformed.body["errors"][0]["index"], 1);
    let empty = rest
        .post(
            "/v1/transfer-batches",
            Some(&alice),
            Some("b4"),
            json!({"transfers": []}),
        )
        .await;
    assert_problem(&empty, StatusCode::BAD_REQUEST, "invalid_argument");
    let too_many: Vec<Value> = (0..101).map(|_| item(&from, &to, 1)).collect();
    let over = rest
        .post(
            "/v1/transfer-batches",
            Some(&alice),
            Some("b5"),
            json!({"transfers": too_many}),
        )
        .await;
    assert_problem(&over, StatusCode::BAD_REQUEST, "invalid_argument");

    let verified = rest.get("/v1/admin/ledger/verify", &operator).await;
    assert_eq!(verified.body["ok"], true, "{:?}", verified.body);
}
