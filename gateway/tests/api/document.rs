//! What the OpenAPI document allows, the gateway accepts, and what it forbids,
//! the gateway refuses: the disagreements schemathesis found, one by one, so
//! they stay fixed where schemathesis is not installed.

use bank_e2e::{Parts, db_test, spawn};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{Rest, assert_problem};

db_test!(
    the_gateway_accepts_what_its_document_allows_and_refuses_the_rest,
    databases = 3,
    document_and_gateway_agree
);
async fn document_and_gateway_agree(urls: Vec<String>) {
    let stack = spawn(&urls, Parts::ALL).await;
    let rest = Rest::new(&stack);
    let operator = rest.operator_token().await;
    let (_, alice) = rest.customer().await;
    let from = rest.open_account(&alice, "EUR").await;
    let to = rest.open_account(&alice, "EUR").await;
    rest.deposit(&operator, &from, 1_000).await;
    let transfer = |amount: Value, key: &'static str| {
        rest.post(
            "/v1/transfers",
            Some(&alice),
            Some(key),
            json!({"from_account_id": from, "to_account_id": to, "amount": amount, "currency": "EUR"}),
        )
    };

    // JSON Schema counts 137.0 as the integer 137; 137.5 is no integer.
    let whole = transfer(json!(137.0), "whole").await;
    assert_eq!(whole.status, StatusCode::CREATED, "{:?}", whole.body);
    assert_eq!(whole.body["amount"], 137);
    let fraction = transfer(json!(137.5), "fraction").await;
    assert_problem(&fraction, StatusCode::BAD_REQUEST, "invalid_argument");

    // An optional body may be JSON null, as the document says.
    let hold = rest
        .post(
            "/v1/transfers",
            Some(&alice),
            Some("hold"),
            json!({"from_account_id": from, "to_account_id": to, "amount": 10.0, "currency": "EUR", "pending": true, "timeout_seconds": 60.0}),
        )
        .await;
    assert_eq!(hold.status, StatusCode::CREATED, "{:?}", hold.body);
    let hold_id = hold.body["id"].as_str().unwrap();
    let void = rest
        .call(
            Method::POST,
            &format!("/v1/transfers/{hold_id}/void"),
            Some(&alice),
            Some("void"),
            Some(Value::Null),
        )
        .await;
    assert_eq!(void.status, StatusCode::OK, "{:?}", void.body);
    assert_eq!(void.body["status"], "voided");
    let reversal = rest
        .call(
            Method::POST,
            &format!(
                "/v1/admin/transfers/{}/reverse",
                whole.body["id"].as_str().unwrap()
            ),
            Some(&operator),
            Some("reverse"),
            Some(Value::Null),
        )
        .await;
    assert_eq!(reversal.status, StatusCode::CREATED, "{:?}", reversal.body);

    // Page sizes outside 1 to 100 are refused, not quietly replaced.
    for size in [0, 101, -1] {
        for list in ["transactions", "holds"] {
            let page = rest
                .get(
                    &format!("/v1/accounts/{from}/{list}?page_size={size}"),
                    &alice,
                )
                .await;
            assert_problem(&page, StatusCode::BAD_REQUEST, "invalid_argument");
        }
    }

    // The document states the bounds the gateway and the services enforce.
    let document: Value = rest
        .http
        .get(stack.gateway_url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let schemas = &document["components"]["schemas"];
    let new_password = &schemas["ChangePasswordBody"]["properties"]["new_password"];
    assert_eq!(
        (&new_password["minLength"], &new_password["maxLength"]),
        (&json!(12), &json!(256))
    );
    let currencies = schemas["OpenAccountBody"]["properties"]["currency"]["enum"]
        .as_array()
        .expect("the currencies accounts open in are listed");
    assert!(currencies.contains(&json!("EUR")) && !currencies.contains(&json!("OZX")));
    let nickname = &schemas["OpenAccountBody"]["properties"]["nickname"];
    assert_eq!(nickname["maxLength"], 64);
    let control = rest
        .post(
            "/v1/accounts",
            Some(&alice),
            None,
            json!({"currency": "EUR", "nickname": "tab\there"}),
        )
        .await;
    assert_problem(&control, StatusCode::BAD_REQUEST, "invalid_argument");
    assert!(
        nickname["pattern"]
            .as_str()
            .unwrap()
            .contains("\\u0000-\\u001F"),
        "control characters are excluded by the pattern: {nickname}"
    );
}
