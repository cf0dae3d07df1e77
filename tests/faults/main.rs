//! `make test-faults`: the bank under crashes, outages and a database restart,
//! with real processes on 127.0.0.1. Clients behave as careful clients do: they
//! retry a request that got a server error or no answer, with the same
//! idempotency key and body. Whatever happens, nothing acknowledged is lost,
//! nothing is applied twice, no answer is a 500, and VerifyLedger stays clean.
//!
//! `BANK_FAULTS_SHORT=1` (CI) runs fewer clients and requests.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod harness;

use std::time::{Duration, Instant};

use harness::{Bank, Databases, PrivateCluster, eventually, short};
use serde_json::json;

const OUTAGE_LIMIT: Duration = Duration::from_secs(60);

fn load_shape() -> (usize, usize) {
    if short() { (4, 15) } else { (8, 60) }
}

/// `clients` clients each moving `per_client` single cents from `from` to `to`,
/// each transfer under its own key, retried until answered. Returns every
/// final status and every status seen before one.
fn transfer_load(
    bank: &std::sync::Arc<Bank>,
    token: &str,
    from: &str,
    to: &str,
) -> tokio::task::JoinSet<(Vec<u16>, Vec<u16>)> {
    let (clients, per_client) = load_shape();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..clients {
        let (bank, token, from, to) = (
            std::sync::Arc::clone(bank),
            token.to_owned(),
            from.to_owned(),
            to.to_owned(),
        );
        tasks.spawn(async move {
            let mut finals = Vec::new();
            let mut seen = Vec::new();
            for _ in 0..per_client {
                let key = uuid::Uuid::new_v4().to_string();
                let ((status, _), retried) = bank
                    .post_until_answered(
                        "/v1/transfers",
                        &token,
                        Some(&key),
                        json!({"from_account_id": from, "to_account_id": to, "amount": 1, "currency": "EUR"}),
                        OUTAGE_LIMIT,
                    )
                    .await;
                finals.push(status);
                seen.extend(retried);
            }
            (finals, seen)
        });
    }
    tasks
}

async fn finish(mut tasks: tokio::task::JoinSet<(Vec<u16>, Vec<u16>)>) -> (Vec<u16>, Vec<u16>) {
    let (mut finals, mut seen) = (Vec::new(), Vec::new());
    while let Some(result) = tasks.join_next().await {
        let (f, s) = result.unwrap();
        finals.extend(f);
        seen.extend(s);
    }
    (finals, seen)
}

/// A customer with two accounts, the first funded by the operator.
struct Scene {
    operator: String,
    token: String,
    from: String,
    to: String,
    funding: i64,
}

async fn scene(bank: &Bank) -> Scene {
    let operator = bank.operator().await;
    let token = bank.customer().await;
    let (from, to) = (
        bank.open_account(&token).await,
        bank.open_account(&token).await,
    );
    let funding = 1_000_000;
    bank.deposit(&operator, &from, funding).await;
    Scene {
        operator,
        token,
        from,
        to,
        funding,
    }
}

/// Every transfer was acknowledged once and applied once; the outage showed as
/// 503 and nothing worse.
async fn assert_exactly_once(bank: &Bank, scene: &Scene, (finals, seen): (Vec<u16>, Vec<u16>)) {
    let (clients, per_client) = load_shape();
    let expected = (clients * per_client) as i64;
    assert_eq!(finals.len() as i64, expected);
    assert!(
        finals.iter().all(|status| *status == 201),
        "final answers: {finals:?}"
    );
    assert!(
        seen.iter().all(|status| *status == 503),
        "during the outage the clients saw {seen:?}: only 503 is acceptable"
    );
    assert_eq!(
        bank.balance(&scene.token, &scene.to).await,
        expected,
        "acknowledged transfers lost or applied twice"
    );
    assert_eq!(
        bank.balance(&scene.token, &scene.from).await,
        scene.funding - expected
    );
    let report = bank.verify(&scene.operator).await;
    assert_eq!(report["ok"], true, "{report}");
}

async fn ledger_state(bank: &Bank) -> String {
    let Ok(response) = bank
        .http
        .get(format!("{}/readyz", bank.gateway))
        .send()
        .await
    else {
        return String::new();
    };
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    body["services"]["ledger"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ledger_killed_under_load_loses_nothing_acknowledged_and_applies_nothing_twice_on_sqlite()
 {
    ledger_killed_under_load(std::sync::Arc::new(
        Bank::start(Databases::sqlite, &[]).await,
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ledger_killed_under_load_loses_nothing_acknowledged_and_applies_nothing_twice_on_postgresql()
 {
    let Some(cluster) = PrivateCluster::create() else {
        return;
    };
    let databases = cluster.databases().await;
    ledger_killed_under_load(std::sync::Arc::new(
        Bank::start(move |_| databases, &[]).await,
    ))
    .await;
}

async fn ledger_killed_under_load(bank: std::sync::Arc<Bank>) {
    let scene = scene(&bank).await;
    let load = transfer_load(&bank, &scene.token, &scene.from, &scene.to);
    for _ in 0..2 {
        // Mid-load: some transfers are through, others in flight.
        assert!(
            eventually(OUTAGE_LIMIT, || async {
                bank.balance(&scene.token, &scene.to).await > 0
            })
            .await
        );
        kill_and_restart(&bank, "ledger").await;
    }
    assert_exactly_once(&bank, &scene, finish(load).await).await;
}

/// SIGKILLs `name`, waits until the gateway sees it gone, starts it again on the
/// same port and database, and waits until it serves.
async fn kill_and_restart(bank: &std::sync::Arc<Bank>, name: &str) {
    bank.with_component(name, |component| component.kill());
    if name == "ledger" {
        assert!(
            eventually(OUTAGE_LIMIT, || async {
                ledger_state(bank).await == "unreachable"
            })
            .await
        );
    }
    bank.with_component(name, |component| component.restart());
    assert!(
        bank.all_serving(OUTAGE_LIMIT).await,
        "{name} did not come back"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_account_service_killed_while_accounts_open_makes_each_keyed_open_once() {
    let bank = std::sync::Arc::new(Bank::start(Databases::sqlite, &[]).await);
    let operator = bank.operator().await;
    let token = bank.customer().await;
    let (clients, per_client) = if short() { (3, 4) } else { (4, 10) };

    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..clients {
        let (bank, token) = (std::sync::Arc::clone(&bank), token.clone());
        tasks.spawn(async move {
            let mut opened = Vec::new();
            for _ in 0..per_client {
                let key = uuid::Uuid::new_v4().to_string();
                let ((status, body), seen) = bank
                    .post_until_answered(
                        "/v1/accounts",
                        &token,
                        Some(&key),
                        json!({"currency": "EUR"}),
                        OUTAGE_LIMIT,
                    )
                    .await;
                assert_eq!(status, 201, "{body}");
                assert!(seen.iter().all(|status| *status == 503), "{seen:?}");
                opened.push(body["id"].as_str().unwrap().to_owned());
            }
            opened
        });
    }
    assert!(
        eventually(OUTAGE_LIMIT, || async {
            bank.get("/v1/accounts", &token)
                .await
                .is_ok_and(|(_, body)| {
                    body["accounts"]
                        .as_array()
                        .is_some_and(|accounts| !accounts.is_empty())
                })
        })
        .await
    );
    kill_and_restart(&bank, "account").await;
    let mut opened = Vec::new();
    while let Some(ids) = tasks.join_next().await {
        opened.extend(ids.unwrap());
    }

    let distinct: std::collections::HashSet<_> = opened.iter().cloned().collect();
    assert_eq!(distinct.len(), clients * per_client, "one account per key");
    let (_, listed) = bank.get_until_answered("/v1/accounts", &token).await;
    let listed: std::collections::HashSet<String> = listed["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|account| account["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(listed, distinct, "no account beyond those the keys made");
    // Every one of them takes money: none was left half-open.
    for account in &distinct {
        bank.deposit(&operator, account, 1).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgresql_restarted_under_load_is_ridden_out_without_restarting_the_services() {
    let Some(cluster) = PrivateCluster::create() else {
        return;
    };
    let databases = cluster.databases().await;
    let bank = std::sync::Arc::new(Bank::start(move |_| databases, &[]).await);
    let scene = scene(&bank).await;
    let token = scene.token.clone();
    let (spare, third) = (
        bank.open_account(&token).await,
        bank.open_account(&token).await,
    );
    bank.deposit(&scene.operator, &spare, 10).await;

    let load = transfer_load(&bank, &token, &scene.from, &scene.to);
    assert!(
        eventually(OUTAGE_LIMIT, || async {
            bank.balance(&token, &scene.to).await > 0
        })
        .await
    );
    cluster.stop();
    // The services stay up and say they cannot serve; requests get 503.
    assert!(
        eventually(OUTAGE_LIMIT, || async {
            ledger_state(&bank).await == "not_serving"
        })
        .await,
        "the ledger did not report its database gone"
    );
    let during = bank
        .post(
            "/v1/transfers",
            Some(&token),
            Some("during-the-outage"),
            json!({"from_account_id": spare, "to_account_id": third, "amount": 1, "currency": "EUR"}),
        )
        .await
        .unwrap();
    assert_eq!(during.0, 503, "{:?}", during.1);
    cluster.start();
    assert!(
        bank.all_serving(OUTAGE_LIMIT).await,
        "the services did not reconnect"
    );
    let outcomes = finish(load).await;

    // The refused request made no transfer, and its retry makes exactly one.
    let ((status, _), _) = bank
        .post_until_answered(
            "/v1/transfers",
            &token,
            Some("during-the-outage"),
            json!({"from_account_id": spare, "to_account_id": third, "amount": 1, "currency": "EUR"}),
            OUTAGE_LIMIT,
        )
        .await;
    assert_eq!(status, 201);
    assert_eq!(bank.balance(&token, &third).await, 1);
    assert_exactly_once(&bank, &scene, outcomes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_identity_or_the_ledger_down_the_rest_answers_as_documented() {
    let bank = std::sync::Arc::new(Bank::start(Databases::sqlite, &[]).await);
    let operator = bank.operator().await;
    let token = bank.customer().await;
    let (from, to) = (
        bank.open_account(&token).await,
        bank.open_account(&token).await,
    );
    bank.deposit(&operator, &from, 1_000).await;

    // Identity down: existing tokens keep working, logging in is 503.
    bank.with_component("identity", |component| component.kill());
    let moved = bank
        .post(
            "/v1/transfers",
            Some(&token),
            Some("identity-down"),
            json!({"from_account_id": from, "to_account_id": to, "amount": 10, "currency": "EUR"}),
        )
        .await
        .unwrap();
    assert_eq!(moved.0, 201, "{:?}", moved.1);
    let login = bank
        .post(
            "/v1/auth/login",
            None,
            None,
            json!({"email": "nobody@bank.test", "password": "whatever it is here"}),
        )
        .await
        .unwrap();
    assert_eq!(login.0, 503, "{:?}", login.1);
    assert_eq!(login.1["code"], "unavailable");
    bank.with_component("identity", |component| component.restart());
    assert!(bank.all_serving(OUTAGE_LIMIT).await);
    bank.operator().await;

    // Ledger down: money routes are 503 well within the request deadline (5 s).
    bank.with_component("ledger", |component| component.kill());
    let started = Instant::now();
    let refused = bank
        .post(
            "/v1/transfers",
            Some(&token),
            Some("ledger-down"),
            json!({"from_account_id": from, "to_account_id": to, "amount": 10, "currency": "EUR"}),
        )
        .await
        .unwrap();
    assert_eq!(refused.0, 503, "{:?}", refused.1);
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );
    // Routes that do not need the ledger keep working.
    let (status, _) = bank.get_until_answered("/v1/me", &token).await;
    assert_eq!(status, 200);
    bank.with_component("ledger", |component| component.restart());
    assert!(bank.all_serving(OUTAGE_LIMIT).await);
    let ((status, _), _) = bank
        .post_until_answered(
            "/v1/transfers",
            &token,
            Some("ledger-down"),
            json!({"from_account_id": from, "to_account_id": to, "amount": 10, "currency": "EUR"}),
            OUTAGE_LIMIT,
        )
        .await;
    assert_eq!(status, 201);
    assert_eq!(bank.balance(&token, &to).await, 20);
    assert_eq!(bank.verify(&operator).await["ok"], true);
}

/// A Redis server of the test's own, on a free port, or `None` (said on
/// stderr) when this machine has no `redis-server`.
fn private_redis() -> Option<(std::process::Child, u16)> {
    spawn_redis(|port| vec!["--port".into(), port.to_string().into()])
}

/// `redis-server` on a free port with the arguments `listen` gives for it, no
/// persistence and only 127.0.0.1, or `None` when the machine has none.
fn spawn_redis(
    listen: impl FnOnce(u16) -> Vec<std::ffi::OsString>,
) -> Option<(std::process::Child, u16)> {
    let port = harness::free_port();
    let child = std::process::Command::new("redis-server")
        .args(listen(port))
        .args(["--save", "", "--appendonly", "no", "--bind", "127.0.0.1"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
    match child {
        Ok(child) => Some((child, port)),
        Err(_) => {
            eprintln!("skipped: no redis-server on this machine");
            None
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_gone_the_gateway_limits_in_process_and_keeps_serving() {
    let Some((mut redis, port)) = private_redis() else {
        return;
    };
    let url = format!("redis://127.0.0.1:{port}");
    assert!(
        eventually(OUTAGE_LIMIT, || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
        })
        .await
    );
    let bank = Bank::start(Databases::sqlite, &[("REDIS_URL", url.as_str())]).await;
    let token = bank.customer().await;
    assert_eq!(bank.get("/v1/me", &token).await.unwrap().0, 200);

    redis.kill().ok();
    redis.wait().ok();
    // As documented: the buckets fall back to the gateway's own memory.
    for _ in 0..5 {
        let (status, body) = bank.get("/v1/me", &token).await.unwrap();
        assert_eq!(status, 200, "{body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bank_runs_on_postgresql_over_verified_tls() {
    use sea_orm::ConnectionTrait;
    let Some(cluster) = PrivateCluster::create() else {
        return;
    };
    let pki = bank_e2e::pki::TestPki::new("postgres");
    cluster.enable_tls(&pki.cert, &pki.key);
    let verified = |url: String, ca: &std::path::Path| {
        format!("{url}?sslmode=verify-full&sslrootcert={}", ca.display())
    };

    let db = bank_kit::db::connect(&verified(cluster.url("postgres"), &pki.ca))
        .await
        .unwrap();
    let row = db
        .query_one_raw(sea_orm::Statement::from_string(
            db.get_database_backend(),
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
        ))
        .await
        .unwrap()
        .unwrap();
    assert!(
        row.try_get::<bool>("", "ssl").unwrap(),
        "the session is encrypted"
    );
    let stranger = bank_e2e::pki::TestPki::new("stranger");
    let refused = bank_kit::db::connect(&verified(cluster.url("postgres"), &stranger.ca)).await;
    assert!(
        refused.is_err(),
        "a server certificate from another CA was accepted"
    );

    let plain = cluster.databases().await;
    let databases = Databases {
        identity: verified(plain.identity, &pki.ca),
        ledger: verified(plain.ledger, &pki.ca),
        account: verified(plain.account, &pki.ca),
    };
    let bank = Bank::start(move |_| databases, &[]).await;
    let operator = bank.operator().await;
    let token = bank.customer().await;
    let account = bank.open_account(&token).await;
    bank.deposit(&operator, &account, 700).await;
    assert_eq!(bank.balance(&token, &account).await, 700);
    assert_eq!(bank.verify(&operator).await["ok"], true);
}

/// A Redis server of the test's own serving TLS only with `pki`'s
/// certificate, or `None` when this machine has no `redis-server`.
fn private_tls_redis(pki: &bank_e2e::pki::TestPki) -> Option<(std::process::Child, u16)> {
    spawn_redis(|port| {
        vec![
            "--port".into(),
            "0".into(),
            "--tls-port".into(),
            port.to_string().into(),
            "--tls-cert-file".into(),
            pki.cert.clone().into(),
            "--tls-key-file".into(),
            pki.key.clone().into(),
            "--tls-ca-cert-file".into(),
            pki.ca.clone().into(),
            "--tls-auth-clients".into(),
            "yes".into(),
        ]
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_reaches_redis_over_mutual_tls() {
    use bank_gateway::rate_limit::{Decision, Quota, RateLimiter};
    let pki = bank_e2e::pki::TestPki::new("redis");
    let Some((mut redis, port)) = private_tls_redis(&pki) else {
        return;
    };
    assert!(
        eventually(OUTAGE_LIMIT, || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
        })
        .await
    );
    let url = format!("rediss://127.0.0.1:{port}");

    let limiter = RateLimiter::redis(&url, "bank-tls", &pki.client_settings())
        .await
        .unwrap();
    let quota = Quota::per_minute(1);
    assert!(matches!(
        limiter.check("client", quota).await,
        Decision::Allowed
    ));
    let second = RateLimiter::redis(&url, "bank-tls", &pki.client_settings())
        .await
        .unwrap();
    assert!(
        matches!(
            second.check("client", quota).await,
            Decision::Limited { .. }
        ),
        "the bucket lives in Redis, shared over TLS"
    );

    let stranger = bank_e2e::pki::TestPki::new("stranger");
    let untrusting = bank_kit::tls::TlsSettings {
        ca: Some(stranger.ca.clone()),
        ..pki.client_settings()
    };
    assert!(
        RateLimiter::redis(&url, "bank-tls", &untrusting)
            .await
            .is_err()
    );
    let anonymous = bank_kit::tls::TlsSettings {
        identity: None,
        ..pki.client_settings()
    };
    assert!(
        RateLimiter::redis(&url, "bank-tls", &anonymous)
            .await
            .is_err(),
        "Redis asks for a client certificate"
    );
    redis.kill().ok();
    redis.wait().ok();
}
