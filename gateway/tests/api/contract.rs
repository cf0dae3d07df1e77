//! The REST routes of the contract, walked with real data.

use bank_e2e::{Parts, db_test, spawn};
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::helpers::{Rest, assert_problem};

db_test!(
    transfer_walk_matches_the_contract,
    databases = 3,
    transfer_walk
);
async fn transfer_walk(urls: Vec<String>) {
    let stack = spawn(&urls, Parts::ALL).await;
    let rest = Rest::new(&stack);
    let operator = rest.operator_token().await;
    let (alice_id, alice) = rest.customer().await;

    let me = rest.get("/v1/me", &alice).await;
    assert_eq!(me.status, StatusCode::OK);
    assert_eq!(me.body["id"], alice_id.as_str());
    assert_eq!(me.body["roles"], json!(["customer"]));

    let opened = rest
        .post(
            "/v1/accounts",
            Some(&alice),
            None,
            json!({"currency": "EUR", "nickname": "Main"}),
        )
        .await;
    assert_eq!(opened.status, StatusCode::CREATED);
    for field in [
        "id",
        "number",
        "owner_id",
        "currency",
        "nickname",
        "status",
        "created_at",
    ] {
        assert!(opened.body.get(field).is_some(), "account lacks {field}");
    }
    assert_eq!(opened.body["status"], "active");
    assert_eq!(opened.body["owner_id"], alice_id.as_str());
    let from = opened.body["id"].as_str().unwrap().to_owned();
    let to = rest.open_account(&alice, "EUR").await;
    let listed = rest.get("/v1/accounts", &alice).await;
    assert_eq!(listed.body["accounts"].as_array().unwrap().len(), 2);

    rest.deposit(&operator, &from, 10_000).await;
    let body = json!({"from_account_id": from, "to_account_id": to, "amount": 2_500, "currency": "EUR", "description": "rent"});
    let created = rest
        .post("/v1/transfers", Some(&alice), Some("rent-1"), body.clone())
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{:?}", created.body);
    for field in [
        "id",
        "from_account_id",
        "to_account_id",
        "amount",
        "currency",
        "status",
        "description",
        "created_at",
    ] {
        assert!(created.body.get(field).is_some(), "transfer lacks {field}");
    }
    assert_eq!(created.body["status"], "posted");
    assert_eq!(created.body["amount"], 2_500);

    let replay = rest
        .post("/v1/transfers", Some(&alice), Some("rent-1"), body.clone())
        .await;
    assert_eq!(replay.status, StatusCode::CREATED);
    assert_eq!(
        replay.body["id"], created.body["id"],
        "a replay returns the original transfer"
    );
    let mut changed = body.clone();
    changed["amount"] = json!(2_600);
    let reused = rest
        .post("/v1/transfers", Some(&alice), Some("rent-1"), changed)
        .await;
    assert_problem(
        &reused,
        StatusCode::UNPROCESSABLE_ENTITY,
        "idempotency_key_reused",
    );
    let keyless = rest
        .post("/v1/transfers", Some(&alice), None, body.clone())
        .await;
    assert_problem(&keyless, StatusCode::BAD_REQUEST, "invalid_argument");

    assert_eq!(rest.balance(&alice, &from).await, 7_500);
    assert_eq!(rest.balance(&alice, &to).await, 2_500);
    let balance = rest
        .get(&format!("/v1/accounts/{from}/balance"), &alice)
        .await;
    assert_eq!(
        balance.body,
        json!({"account_id": from, "currency": "EUR", "balance": 7_500, "available": 7_500})
    );

    let history = rest
        .get(
            &format!("/v1/accounts/{from}/transactions?page_size=10"),
            &alice,
        )
        .await;
    let transactions = history.body["transactions"].as_array().unwrap();
    assert_eq!(transactions.len(), 2);
    assert_eq!(transactions[0]["amount"], -2_500);
    assert_eq!(transactions[0]["balance_after"], 7_500);
    assert_eq!(transactions[0]["counterparty_account_id"], to.as_str());
    assert_eq!(transactions[0]["description"], "rent");
    assert_eq!(history.body["next_page_token"], "");

    let transfer_id = created.body["id"].as_str().unwrap();
    let fetched = rest
        .get(&format!("/v1/transfers/{transfer_id}"), &alice)
        .await;
    assert_eq!(fetched.body, created.body);

    let verified = rest.get("/v1/admin/ledger/verify", &operator).await;
    assert_eq!(verified.status, StatusCode::OK);
    assert_eq!(verified.body["ok"], true);
}

db_test!(
    refused_transfers_answer_the_contract_codes_and_move_nothing,
    databases = 3,
    refused_transfers
);
async fn refused_transfers(urls: Vec<String>) {
    let stack = spawn(&urls, Parts::ALL).await;
    let rest = Rest::new(&stack);
    let operator = rest.operator_token().await;
    let (_, alice) = rest.customer().await;
    let (_, mallory) = rest.customer().await;
    let from = rest.open_account(&alice, "EUR").await;
    let to = rest.open_account(&alice, "EUR").await;
    let dollars = rest.open_account(&alice, "USD").await;
    let mallorys = rest.open_account(&mallory, "EUR").await;
    rest.deposit(&operator, &from, 1_000).await;
    let transfer = |from: &str, to: &str, amount: i64| json!({"from_account_id": from, "to_account_id": to, "amount": amount, "currency": "EUR"});

    let overdraw = rest
        .post(
            "/v1/transfers",
            Some(&alice),
            Some("k1"),
            transfer(&from, &to, 1_001),
        )
        .await;
    assert_problem(
        &overdraw,
        StatusCode::UNPROCESSABLE_ENTITY,
        "insufficient_funds",
    );
    let zero = rest
        .post(
            "/v1/transfers",
            Some(&alice),
            Some("k2"),
            transfer(&from, &to, 0),
        )
        .await;
    assert_problem(&zero, StatusCode::BAD_REQUEST, "invalid_argument");
    let negative = rest
        .post(
            "/v1/transfers",
            Some(&alice),
            Some("k3"),
            transfer(&from, &to, -100),
        )
        .await;
    assert_problem(&negative, StatusCode::BAD_REQUEST, "invalid_argument");
    let fractional = rest.post("/v1/transfers", Some(&alice), Some("k4"), json!({"from_account_id": from, "to_account_id": to, "amount": 10.5, "currency": "EUR"})).await;
    assert_problem(&fractional, StatusCode::BAD_REQUEST, "invalid_argument");
    let mismatch = rest
        .post(
            "/v1/transfers",
            Some(&alice),
            Some("k5"),
            transfer(&from, &dollars, 100),
        )
        .await;
    assert_problem(
        &mismatch,
        StatusCode::UNPROCESSABLE_ENTITY,
        "currency_mismatch",
    );
    let theft = rest
        .post(
            "/v1/transfers",
            Some(&mallory),
            Some("k6"),
            transfer(&from, &mallorys, 100),
        )
        .await;
    assert_problem(&theft, StatusCode::NOT_FOUND, "not_found");

    assert_eq!(rest.balance(&alice, &from).await, 1_000);
    assert_eq!(rest.balance(&alice, &to).await, 0);
    assert_eq!(rest.balance(&alice, &dollars).await, 0);
    assert_eq!(rest.balance(&mallory, &mallorys).await, 0);
}

db_test!(
    other_users_resources_are_not_found,
    databases = 3,
    foreign_resources
);
async fn foreign_resources(urls: Vec<String>) {
    let stack = spawn(&urls, Parts::ALL).await;
    let rest = Rest::new(&stack);
    let (_, alice) = rest.customer().await;
    let (_, mallory) = rest.customer().await;
    let account = rest.open_account(&alice, "EUR").await;

    for path in [
        format!("/v1/accounts/{account}"),
        format!("/v1/accounts/{account}/balance"),
        format!("/v1/accounts/{account}/transactions"),
    ] {
        let reply = rest.get(&path, &mallory).await;
        assert_problem(&reply, StatusCode::NOT_FOUND, "not_found");
    }
    let close = rest
        .call(
            Method::POST,
            &format!("/v1/accounts/{account}/close"),
            Some(&mallory),
            None,
            None,
        )
        .await;
    assert_problem(&close, StatusCode::NOT_FOUND, "not_found");
}

db_test!(
    operator_routes_refuse_customers,
    databases = 3,
    operator_routes
);
async fn operator_routes(urls: Vec<String>) {
    let stack = spawn(&urls, Parts::ALL).await;
    let rest = Rest::new(&stack);
    let operator = rest.operator_token().await;
    let (_, alice) = rest.customer().await;
    let account = rest.open_account(&alice, "EUR").await;
    let money = json!({"account_id": account, "amount": 100, "currency": "EUR", "reference": "x"});

    let deposit = rest
        .post("/v1/admin/deposits", Some(&alice), Some("d"), money.clone())
        .await;
    assert_problem(&deposit, StatusCode::FORBIDDEN, "forbidden");
    // The role is checked before the key and the body: a customer learns 403,
    // not which header or field would have been wrong.
    for path in ["/v1/admin/deposits", "/v1/admin/withdrawals"] {
        let bare = rest
            .call(Method::POST, path, Some(&alice), None, None)
            .await;
        assert_problem(&bare, StatusCode::FORBIDDEN, "forbidden");
    }
    let reverse = rest
        .call(
            Method::POST,
            &format!("/v1/admin/transfers/{account}/reverse"),
            Some(&alice),
            None,
            None,
        )
        .await;
    assert_problem(&reverse, StatusCode::FORBIDDEN, "forbidden");
    let freeze = rest
        .call(
            Method::POST,
            &format!("/v1/admin/accounts/{account}/freeze"),
            Some(&alice),
            None,
            None,
        )
        .await;
    assert_problem(&freeze, StatusCode::FORBIDDEN, "forbidden");
    let verify = rest.get("/v1/admin/ledger/verify", &alice).await;
    assert_problem(&verify, StatusCode::FORBIDDEN, "forbidden");
    assert_eq!(rest.balance(&alice, &account).await, 0);

    let frozen = rest
        .call(
            Method::POST,
            &format!("/v1/admin/accounts/{account}/freeze"),
            Some(&operator),
            None,
            None,
        )
        .await;
    assert_eq!(frozen.status, StatusCode::OK);
    assert_eq!(frozen.body["status"], "frozen");
    let into_frozen = rest
        .post(
            "/v1/admin/deposits",
            Some(&operator),
            Some("d2"),
            money.clone(),
        )
        .await;
    assert_problem(
        &into_frozen,
        StatusCode::UNPROCESSABLE_ENTITY,
        "account_frozen",
    );
    let unfrozen = rest
        .call(
            Method::POST,
            &format!("/v1/admin/accounts/{account}/unfreeze"),
            Some(&operator),
            None,
            None,
        )
        .await;
    assert_eq!(unfrozen.body["status"], "active");
    let deposited = rest
        .post(
            "/v1/admin/deposits",
            Some(&operator),
            Some("d3"),
            money.clone(),
        )
        .await;
    assert_eq!(deposited.status, StatusCode::CREATED);
    let withdrawn = rest
        .post("/v1/admin/withdrawals", Some(&operator), Some("w1"), money)
        .await;
    assert_eq!(withdrawn.status, StatusCode::CREATED);
    let reversal = rest
        .call(
            Method::POST,
            &format!(
                "/v1/admin/transfers/{}/reverse",
                withdrawn.body["id"].as_str().unwrap()
            ),
            Some(&operator),
            Some("r1"),
            None,
        )
        .await;
    assert_eq!(reversal.status, StatusCode::CREATED, "{:?}", reversal.body);
    assert_eq!(rest.balance(&alice, &account).await, 100);
    let closed_with_money = rest
        .call(
            Method::POST,
            &format!("/v1/accounts/{account}/close"),
            Some(&alice),
            None,
            None,
        )
        .await;
    assert_problem(&closed_with_money, StatusCode::CONFLICT, "conflict");
}

db_test!(sessions_refresh_and_end_over_rest, databases = 3, sessions);
async fn sessions(urls: Vec<String>) {
    let stack = spawn(&urls, Parts::ALL).await;
    let rest = Rest::new(&stack);
    let email = format!("s-{}@bank.test", uuid::Uuid::new_v4().simple());
    let password = bank_e2e::USER_PASSWORD;
    rest.post(
        "/v1/auth/register",
        None,
        None,
        json!({"email": email, "password": password, "full_name": "S"}),
    )
    .await;
    let login = rest.login(&email, password).await;
    assert_eq!(login.body["token_type"], "Bearer");
    assert_eq!(login.body["expires_in"], 900);
    let refresh_token = login.body["refresh_token"].as_str().unwrap().to_owned();

    let refreshed = rest
        .post(
            "/v1/auth/refresh",
            None,
            None,
            json!({"refresh_token": refresh_token}),
        )
        .await;
    assert_eq!(refreshed.status, StatusCode::OK);
    let spent = rest
        .post(
            "/v1/auth/refresh",
            None,
            None,
            json!({"refresh_token": refresh_token}),
        )
        .await;
    assert_problem(&spent, StatusCode::UNAUTHORIZED, "unauthenticated");

    let second = rest.login(&email, password).await;
    let access = second.body["access_token"].as_str().unwrap().to_owned();
    let logout = rest
        .post(
            "/v1/auth/logout",
            Some(&access),
            None,
            json!({"refresh_token": second.body["refresh_token"]}),
        )
        .await;
    assert_eq!(logout.status, StatusCode::NO_CONTENT);
    let after_logout = rest
        .post(
            "/v1/auth/refresh",
            None,
            None,
            json!({"refresh_token": second.body["refresh_token"]}),
        )
        .await;
    assert_problem(&after_logout, StatusCode::UNAUTHORIZED, "unauthenticated");

    // A session of its own: the logged-out one's access token is refused as
    // soon as the gateway hears of its revocation, which races this call.
    let third = rest.login(&email, password).await;
    let access = third.body["access_token"].as_str().unwrap().to_owned();
    let changed = rest
        .post(
            "/v1/me/password",
            Some(&access),
            None,
            json!({"current_password": password, "new_password": "another long passphrase"}),
        )
        .await;
    assert_eq!(changed.status, StatusCode::NO_CONTENT);
    let old = rest.login(&email, password).await;
    assert_problem(&old, StatusCode::UNAUTHORIZED, "unauthenticated");
}

db_test!(
    a_retried_account_open_with_its_key_opens_one_account,
    databases = 3,
    keyed_account_opens
);
async fn keyed_account_opens(urls: Vec<String>) {
    let stack = spawn(&urls, Parts::ALL).await;
    let rest = Rest::new(&stack);
    let (_, token) = rest.customer().await;
    let body = json!({"currency": "EUR", "nickname": "Savings"});

    let first = rest
        .post("/v1/accounts", Some(&token), Some("open-1"), body.clone())
        .await;
    let retry = rest
        .post("/v1/accounts", Some(&token), Some("open-1"), body.clone())
        .await;
    assert_eq!(first.status, StatusCode::CREATED, "{:?}", first.body);
    assert_eq!(retry.status, StatusCode::CREATED, "{:?}", retry.body);
    assert_eq!(retry.body["id"], first.body["id"]);

    let reused = rest
        .post(
            "/v1/accounts",
            Some(&token),
            Some("open-1"),
            json!({"currency": "EUR", "nickname": "Other"}),
        )
        .await;
    assert_problem(
        &reused,
        StatusCode::UNPROCESSABLE_ENTITY,
        "idempotency_key_reused",
    );
    let malformed = rest
        .post("/v1/accounts", Some(&token), Some("has space"), body)
        .await;
    assert_problem(&malformed, StatusCode::BAD_REQUEST, "invalid_argument");

    let listed = rest.get("/v1/accounts", &token).await;
    assert_eq!(listed.body["accounts"].as_array().map(Vec::len), Some(1));
}
