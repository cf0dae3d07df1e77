//! Probes that tell the truth: each service's admin port and gRPC health follow
//! its database, and the gateway stays ready while a service it calls is down.

use std::{
    future::Future,
    net::SocketAddr,
    time::{Duration, Instant},
};

use bank_e2e::{Parts, Stack, db_test, spawn};
use reqwest::StatusCode;
use sea_orm::ConnectionTrait;
use serde_json::{Value, json};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

/// Polls `check` until it is true or `limit` has passed; returns whether it held.
async fn eventually<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn probe(http: &reqwest::Client, admin: SocketAddr, path: &str) -> (StatusCode, String) {
    let response = http
        .get(format!("http://{admin}{path}"))
        .send()
        .await
        .unwrap();
    (response.status(), response.text().await.unwrap())
}

/// The gRPC health of the server at `addr` as a whole (`""`).
async fn grpc_health(addr: SocketAddr) -> Option<i32> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .ok()?
        .connect()
        .await
        .ok()?;
    let response = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .ok()?;
    Some(response.into_inner().status)
}

const SERVING: i32 = tonic_health::pb::health_check_response::ServingStatus::Serving as i32;
const NOT_SERVING: i32 = tonic_health::pb::health_check_response::ServingStatus::NotServing as i32;

db_test!(
    every_service_has_an_admin_port_for_probes_and_scrapers,
    databases = 3,
    admin_ports
);
async fn admin_ports(urls: Vec<String>) {
    let stack = spawn(&urls, Parts::ALL).await;
    let http = reqwest::Client::new();
    // One call to each, so that each has a series to show.
    for addr in [
        stack.identity_addr,
        stack.account_addr.unwrap(),
        stack.ledger_addr.unwrap(),
    ] {
        assert_eq!(grpc_health(addr).await, Some(SERVING));
    }

    for (service, admin) in &stack.admin_addrs {
        assert_eq!(
            probe(&http, *admin, "/livez").await,
            (StatusCode::OK, json!({"status": "ok"}).to_string()),
            "{service}"
        );
        let (status, body) = probe(&http, *admin, "/readyz").await;
        assert_eq!(status, StatusCode::OK, "{service}: {body}");
        assert_eq!(
            serde_json::from_str::<Value>(&body).unwrap(),
            json!({"status": "ready", "database": "reachable"})
        );
        let (status, metrics) = probe(&http, *admin, "/metrics").await;
        assert_eq!(status, StatusCode::OK, "{service}");
        assert!(
            metrics.contains("grpc_server_handled_total"),
            "{service}: {metrics}"
        );
        for help in [
            "# HELP grpc_server_handled_total ",
            "# HELP grpc_server_handling_seconds ",
            "# HELP db_pool_connections ",
            "# HELP db_pool_max_connections ",
        ] {
            assert!(metrics.contains(help), "{service}: no {help:?}");
        }
        // Every series has its help line.
        for line in metrics.lines().filter(|line| line.starts_with("# TYPE ")) {
            let name = line.split_whitespace().nth(2).unwrap();
            assert!(
                metrics.contains(&format!("# HELP {name} ")),
                "{service}: {name} has no help"
            );
        }
        // The pool gauges appear with the first database check, at start.
        let pool_name = match *service {
            "identity" => "bank.identity.v1.IdentityService",
            "account" => "bank.account.v1.AccountService",
            _ => "bank.ledger.v1.LedgerService",
        };
        let max = bank_e2e::sample(
            &metrics,
            "db_pool_max_connections",
            &[("service", pool_name)],
        );
        assert!(max >= 1.0, "{service}: pool of {max} connections");
        // Only probes and metrics: the API is not there.
        let (status, _) = probe(&http, *admin, "/bank.ledger.v1.LedgerService/GetBalance").await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{service}");
    }
    assert_eq!(stack.admin_addrs.len(), 3);
}

/// Name of the database a test URL points at.
fn database_name(url: &str) -> String {
    url.rsplit('/')
        .next()
        .and_then(|tail| tail.split('?').next())
        .unwrap()
        .to_owned()
}

/// Refuses (or admits again) every connection to `database`, dropping the ones
/// it has: to its service the database is gone, as if its server were down.
async fn set_reachable(admin_url: &str, database: &str, reachable: bool) {
    let admin = sea_orm::Database::connect(admin_url).await.unwrap();
    admin
        .execute_unprepared(&format!(
            "ALTER DATABASE {database} WITH ALLOW_CONNECTIONS {reachable}"
        ))
        .await
        .unwrap();
    if !reachable {
        admin
            .execute_unprepared(&format!(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                 WHERE datname = '{database}' AND pid <> pg_backend_pid()"
            ))
            .await
            .unwrap();
    }
    admin.close().await.ok();
}

async fn gateway_ready(stack: &Stack, http: &reqwest::Client) -> Value {
    let response = http.get(stack.gateway_url("/readyz")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK, "the gateway stays ready");
    response.json().await.unwrap()
}

/// PostgreSQL only: a database the test can take away from its service while
/// the service keeps running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs BANK_TEST_POSTGRES_URL; make test runs it when that is set"]
async fn a_service_whose_database_is_down_is_not_ready_until_it_is_back_on_postgresql() {
    let Some(admin_url) = bank_kit::testing::postgres_server_or_skip() else {
        return;
    };
    bank_kit::testing::run_with_databases(
        bank_kit::testing::Backend::Postgres,
        3,
        |urls| async move {
            let stack = spawn(&urls, Parts::ALL).await;
            let http = reqwest::Client::new();
            let ledger = stack.ledger_addr.unwrap();
            let ledger_admin = stack.admin_addrs["ledger"];
            let database = database_name(&stack.database_urls["ledger"]);
            let limit = Duration::from_secs(20);

            set_reachable(&admin_url, &database, false).await;
            let down = eventually(limit, || async {
                grpc_health(ledger).await == Some(NOT_SERVING)
                    && probe(&http, ledger_admin, "/readyz").await.0
                        == StatusCode::SERVICE_UNAVAILABLE
            })
            .await;
            let while_down = probe(&http, ledger_admin, "/readyz").await;
            let livez_while_down = probe(&http, ledger_admin, "/livez").await.0;
            let gateway_while_down = eventually(limit, || async {
                gateway_ready(&stack, &http).await["services"]["ledger"] == "not_serving"
            })
            .await;
            let others_while_down = gateway_ready(&stack, &http).await;
            set_reachable(&admin_url, &database, true).await;

            assert!(
                down,
                "the ledger still reports SERVING without its database"
            );
            assert_eq!(
                serde_json::from_str::<Value>(&while_down.1).unwrap(),
                json!({"status": "not_ready", "database": "unreachable"})
            );
            assert_eq!(livez_while_down, StatusCode::OK, "the process still works");
            assert!(gateway_while_down, "{others_while_down}");
            assert_eq!(others_while_down["services"]["identity"], "serving");
            assert_eq!(others_while_down["services"]["account"], "serving");

            // Back without a restart.
            let back = eventually(limit, || async {
                grpc_health(ledger).await == Some(SERVING)
                    && probe(&http, ledger_admin, "/readyz").await.0 == StatusCode::OK
            })
            .await;
            assert!(back, "the ledger did not come back once its database did");
            assert!(
                eventually(limit, || async {
                    gateway_ready(&stack, &http).await["services"]["ledger"] == "serving"
                })
                .await
            );
        },
    )
    .await;
}
