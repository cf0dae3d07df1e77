//! End to end: all four components in one process, each service on its own fresh
//! database. The same customer journey is walked over REST through the gateway
//! and over gRPC directly against the services, as an operator with grpcurl or an
//! internal service would.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use bank_e2e::{OPERATOR_PASSWORD, Parts, USER_PASSWORD, authed, db_test, spawn};
use bank_proto::{account::v1 as account, identity::v1 as identity, ledger::v1 as ledger};
use reqwest::StatusCode;
use serde_json::{Value, json};

async fn post(
    http: &reqwest::Client,
    url: String,
    token: Option<&str>,
    key: Option<&str>,
    body: Value,
) -> (StatusCode, Value) {
    let mut request = http.post(url).json(&body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn get(http: &reqwest::Client, url: String, token: &str) -> Value {
    let response = http.get(url).bearer_auth(token).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    response.json().await.unwrap()
}

db_test!(customer_journey_over_rest, databases = 3, journey_over_rest);
async fn journey_over_rest(urls: Vec<String>) {
    let stack = spawn(&urls, Parts::ALL).await;
    let http = reqwest::Client::new();
    let url = |path: &str| stack.gateway_url(path);

    let (status, user) = post(
        &http,
        url("/v1/auth/register"),
        None,
        None,
        json!({"email": "journey@example.com", "password": USER_PASSWORD, "full_name": "Journey"}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, tokens) = post(
        &http,
        url("/v1/auth/login"),
        None,
        None,
        json!({"email": "journey@example.com", "password": USER_PASSWORD}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let token = tokens["access_token"].as_str().unwrap().to_owned();
    let (_, op_tokens) = post(
        &http,
        url("/v1/auth/login"),
        None,
        None,
        json!({"email": stack.operator_email, "password": OPERATOR_PASSWORD}),
    )
    .await;
    let operator = op_tokens["access_token"].as_str().unwrap().to_owned();

    let (_, checking) = post(
        &http,
        url("/v1/accounts"),
        Some(&token),
        None,
        json!({"currency": "EUR", "nickname": "Checking"}),
    )
    .await;
    let (_, savings) = post(
        &http,
        url("/v1/accounts"),
        Some(&token),
        None,
        json!({"currency": "EUR", "nickname": "Savings"}),
    )
    .await;
    let checking = checking["id"].as_str().unwrap().to_owned();
    let savings = savings["id"].as_str().unwrap().to_owned();

    let (status, _) = post(&http, url("/v1/admin/deposits"), Some(&operator), Some("salary-1"), json!({"account_id": checking, "amount": 250_000, "currency": "EUR", "reference": "salary"})).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, transfer) = post(&http, url("/v1/transfers"), Some(&token), Some("save-1"), json!({"from_account_id": checking, "to_account_id": savings, "amount": 50_000, "currency": "EUR", "description": "savings"})).await;
    assert_eq!(status, StatusCode::CREATED);

    let checking_balance = get(
        &http,
        url(&format!("/v1/accounts/{checking}/balance")),
        &token,
    )
    .await;
    let savings_balance = get(
        &http,
        url(&format!("/v1/accounts/{savings}/balance")),
        &token,
    )
    .await;
    assert_eq!(checking_balance["balance"], 200_000);
    assert_eq!(savings_balance["balance"], 50_000);
    assert_eq!(user["roles"], json!(["customer"]));
    let history = get(
        &http,
        url(&format!("/v1/accounts/{savings}/transactions")),
        &token,
    )
    .await;
    assert_eq!(history["transactions"][0]["transfer_id"], transfer["id"]);
    assert_eq!(history["transactions"][0]["amount"], 50_000);
}

db_test!(customer_journey_over_grpc, databases = 3, journey_over_grpc);
async fn journey_over_grpc(urls: Vec<String>) {
    let stack = spawn(&urls, Parts::ALL).await;
    let mut identity_client = stack.identity().await;
    let mut account_client = stack.account().await;
    let mut ledger_client = stack.ledger().await;

    identity_client
        .register(identity::RegisterRequest {
            email: "grpc@example.com".into(),
            password: USER_PASSWORD.into(),
            full_name: "Grpc".into(),
        })
        .await
        .unwrap();
    let token = stack
        .login("grpc@example.com", USER_PASSWORD)
        .await
        .access_token;
    let operator = stack.operator().await.access_token;

    let open = |nickname: &str| {
        let request = authed(
            &token,
            account::OpenAccountRequest {
                currency: "EUR".into(),
                nickname: nickname.into(),
                idempotency_key: String::new(),
            },
        );
        let mut client = account_client.clone();
        async move {
            client
                .open_account(request)
                .await
                .unwrap()
                .into_inner()
                .account
                .unwrap()
                .account_id
        }
    };
    let checking = open("Checking").await;
    let savings = open("Savings").await;

    ledger_client
        .deposit(authed(
            &operator,
            ledger::DepositRequest {
                account_id: checking.clone(),
                amount_minor: 250_000,
                currency: "EUR".into(),
                reference: "salary".into(),
                idempotency_key: "salary-1".into(),
            },
        ))
        .await
        .unwrap();
    ledger_client
        .create_transfer(authed(
            &token,
            ledger::CreateTransferRequest {
                from_account_id: checking.clone(),
                to_account_id: savings.clone(),
                amount_minor: 50_000,
                currency: "EUR".into(),
                description: "savings".into(),
                idempotency_key: "save-1".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap();

    let balance = |account_id: String| {
        let request = authed(&token, ledger::GetBalanceRequest { account_id });
        let mut client = ledger_client.clone();
        async move {
            client
                .get_balance(request)
                .await
                .unwrap()
                .into_inner()
                .balance_minor
        }
    };
    assert_eq!(balance(checking.clone()).await, 200_000);
    assert_eq!(balance(savings.clone()).await, 50_000);
    let listed = account_client
        .list_accounts(authed(&token, account::ListAccountsRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .accounts;
    assert_eq!(listed.len(), 2);
}

/// A connected plaintext channel to `addr`.
async fn plaintext_channel(addr: std::net::SocketAddr) -> tonic::transport::Channel {
    tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// A reflection v1 request that lists the services.
fn list_services_v1() -> tonic_reflection::pb::v1::ServerReflectionRequest {
    use tonic_reflection::pb::v1;
    v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    }
}

/// The services reflection lists on `addr`, asked over reflection v1 and v1alpha.
async fn reflected_services(addr: std::net::SocketAddr) -> (Vec<String>, Vec<String>) {
    use tonic_reflection::pb::{v1, v1alpha};
    let channel = plaintext_channel(addr).await;

    let request = list_services_v1();
    let mut stream = v1::server_reflection_client::ServerReflectionClient::new(channel.clone())
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(listed)) =
        stream.message().await.unwrap().unwrap().message_response
    else {
        panic!("reflection v1 did not list services");
    };
    let mut v1_names: Vec<String> = listed
        .service
        .into_iter()
        .map(|service| service.name)
        .collect();
    v1_names.sort();

    let request = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            v1alpha::server_reflection_request::MessageRequest::ListServices(String::new()),
        ),
    };
    let mut stream = v1alpha::server_reflection_client::ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let Some(v1alpha::server_reflection_response::MessageResponse::ListServicesResponse(listed)) =
        stream.message().await.unwrap().unwrap().message_response
    else {
        panic!("reflection v1alpha did not list services");
    };
    let mut v1alpha_names: Vec<String> = listed
        .service
        .into_iter()
        .map(|service| service.name)
        .collect();
    v1alpha_names.sort();
    (v1_names, v1alpha_names)
}

db_test!(
    every_service_lists_its_api_health_and_reflection_and_is_serving,
    databases = 3,
    operators_view
);
async fn operators_view(urls: Vec<String>) {
    let stack = spawn(&urls, Parts::ALL).await;
    let services = [
        (stack.identity_addr, "bank.identity.v1.IdentityService"),
        (
            stack.account_addr.unwrap(),
            "bank.account.v1.AccountService",
        ),
        (stack.ledger_addr.unwrap(), "bank.ledger.v1.LedgerService"),
    ];

    for (addr, api) in services {
        let mut expected = vec![
            api.to_owned(),
            "grpc.health.v1.Health".to_owned(),
            "grpc.reflection.v1.ServerReflection".to_owned(),
            "grpc.reflection.v1alpha.ServerReflection".to_owned(),
        ];
        expected.sort();
        let (v1, v1alpha) = reflected_services(addr).await;
        assert_eq!(v1, expected, "reflection v1 on {api}");
        assert_eq!(v1alpha, expected, "reflection v1alpha on {api}");

        let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
        for service in ["", api] {
            let status = health
                .check(tonic_health::pb::HealthCheckRequest {
                    service: service.to_owned(),
                })
                .await
                .unwrap()
                .into_inner()
                .status;
            assert_eq!(
                status,
                tonic_health::pb::health_check_response::ServingStatus::Serving as i32,
                "{api} {service:?}"
            );
        }
    }
}

#[tokio::test]
async fn reflection_can_be_turned_off() {
    use tonic_reflection::pb::v1;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/identity.db?mode=rwc", dir.path().display());
    let mut config = bank_e2e::identity_config(url, None, &dir.path().join("keys"), None);
    config.reflection = false;
    let identity = bank_identity::build(&config).await.unwrap();
    let addr = identity.local_addr().unwrap();
    tokio::spawn(identity.run_until_stopped(std::future::pending()));
    let channel = plaintext_channel(addr).await;

    let request = list_services_v1();
    let reflection = v1::server_reflection_client::ServerReflectionClient::new(channel.clone())
        .server_reflection_info(tokio_stream::iter([request]))
        .await;

    assert_eq!(
        reflection.err().map(|status| status.code()),
        Some(tonic::Code::Unimplemented)
    );
    let health = tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await;
    assert!(health.is_ok(), "health is still served");
}
