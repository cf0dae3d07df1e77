//! Careless clients: callers that hang up mid-request must never hurt anybody
//! else's request, and what they started either happens whole or not at all.

use bank_e2e::{Parts, db_test, spawn};
use reqwest::StatusCode;
use serde_json::json;
use tokio::{io::AsyncWriteExt, net::TcpStream};

use crate::helpers::Rest;

const ABORTING_CLIENTS: usize = 6;
const HONEST_CLIENTS: usize = 6;
const REQUESTS_EACH: usize = 30;

/// Writes a transfer request (all of it, or its head and half the body) and
/// hangs up with a TCP reset, without reading the answer.
async fn hang_up_on_a_transfer(
    gateway: std::net::SocketAddr,
    token: &str,
    from: &str,
    to: &str,
    whole: bool,
) {
    let body =
        json!({"from_account_id": from, "to_account_id": to, "amount": 1, "currency": "EUR"})
            .to_string();
    let head = format!(
        "POST /v1/transfers HTTP/1.1\r\nhost: {gateway}\r\nauthorization: Bearer {token}\r\n\
         idempotency-key: {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        uuid::Uuid::new_v4(),
        body.len()
    );
    let Ok(mut stream) = TcpStream::connect(gateway).await else {
        return;
    };
    let sent = if whole {
        format!("{head}{body}")
    } else {
        format!("{head}{}", &body[..body.len() / 2])
    };
    if stream.write_all(sent.as_bytes()).await.is_err() {
        return;
    }
    // Let the gateway start on it, so that some hang-ups land while the call to
    // the ledger is in flight.
    for _ in 0..3 {
        tokio::task::yield_now().await;
    }
    stream.set_zero_linger().ok();
    drop(stream);
}

db_test!(
    clients_that_hang_up_never_fail_other_clients_transfers,
    databases = 3,
    hang_ups
);
async fn hang_ups(urls: Vec<String>) {
    let stack = spawn(&urls, Parts::ALL).await;
    let gateway = stack.gateway_addr.unwrap();
    let rest = Rest::new(&stack);
    let operator = rest.operator_token().await;
    let (_, token) = rest.customer().await;
    let from = rest.open_account(&token, "EUR").await;
    let to = rest.open_account(&token, "EUR").await;
    let funding = 1_000_000;
    rest.deposit(&operator, &from, funding).await;

    let mut tasks = tokio::task::JoinSet::new();
    for client in 0..ABORTING_CLIENTS {
        let (token, from, to) = (token.clone(), from.clone(), to.clone());
        tasks.spawn(async move {
            for request in 0..REQUESTS_EACH {
                hang_up_on_a_transfer(gateway, &token, &from, &to, (client + request) % 2 == 0)
                    .await;
            }
            Vec::new()
        });
    }
    for _ in 0..HONEST_CLIENTS {
        let url = stack.gateway_url("/v1/transfers");
        let (token, from, to) = (token.clone(), from.clone(), to.clone());
        tasks.spawn(async move {
            let http = reqwest::Client::new();
            let mut statuses = Vec::new();
            for _ in 0..REQUESTS_EACH {
                let response = http
                    .post(&url)
                    .bearer_auth(&token)
                    .header("idempotency-key", uuid::Uuid::new_v4().to_string())
                    .json(&json!({"from_account_id": from, "to_account_id": to, "amount": 1, "currency": "EUR"}))
                    .send()
                    .await
                    .unwrap();
                statuses.push(response.status());
            }
            statuses
        });
    }
    let mut honest = Vec::new();
    while let Some(statuses) = tasks.join_next().await {
        honest.extend(statuses.unwrap());
    }

    assert_eq!(honest.len(), HONEST_CLIENTS * REQUESTS_EACH);
    let failed: Vec<_> = honest
        .iter()
        .filter(|status| **status != StatusCode::CREATED)
        .collect();
    assert!(
        failed.is_empty(),
        "other clients' transfers failed: {failed:?}"
    );

    // Every transfer, hung up on or not, happened whole or not at all.
    let sent = rest.balance(&token, &to).await;
    assert!(sent >= (HONEST_CLIENTS * REQUESTS_EACH) as i64, "{sent}");
    assert_eq!(rest.balance(&token, &from).await + sent, funding);
    let verified = rest.get("/v1/admin/ledger/verify", &operator).await;
    assert_eq!(verified.status, StatusCode::OK, "{:?}", verified.body);
    assert_eq!(verified.body["ok"], true, "{:?}", verified.body);
}
