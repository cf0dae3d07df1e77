//! What the ledger tells its operators about itself: per-method call metrics,
//! business counters and its background verification's results, served at
//! `GET /metrics`.
//!
//! A test binary of its own: the metrics recorder is one per process, so under
//! `cargo test` (every test of a binary in one process) these tests would count
//! what the others do. Here each takes the lock below for its whole run and
//! compares counts before and after, so they hold under nextest's one process
//! per test and cargo test's one process per binary alike.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "api/helpers.rs"]
#[allow(dead_code)]
mod helpers;

use bank_e2e::{Parts, db_test, sample, scrape, spawn};

use crate::helpers::{deposit, open_book, tamper_with_balance, transfer, transfer_request};

/// One metrics test at a time in this process.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

db_test!(
    calls_and_postings_are_counted,
    databases = 2,
    calls_and_postings
);
async fn calls_and_postings(urls: Vec<String>) {
    let _alone = ONE_AT_A_TIME.lock().await;
    let stack = spawn(&urls, Parts::LEDGER).await;
    let before = scrape(stack.ledger_addr.unwrap()).await;
    let operator = stack.operator().await;
    let alice = stack.customer().await;
    let from = open_book(&stack, &alice, "EUR").await;
    let to = open_book(&stack, &alice, "EUR").await;
    deposit(&stack, &operator, &from, 1_000).await;
    transfer(&stack, &alice, transfer_request(&from, &to, 300, "t-1"))
        .await
        .unwrap();
    transfer(&stack, &alice, transfer_request(&from, &to, 300, "t-1"))
        .await
        .unwrap();
    transfer(&stack, &alice, transfer_request(&from, &to, 5_000, "t-2"))
        .await
        .unwrap_err();

    let text = scrape(stack.ledger_addr.unwrap()).await;
    // What this test added.
    let sample = |text: &str, name: &str, labels: &[(&str, &str)]| {
        sample(text, name, labels) - sample(&before, name, labels)
    };
    let rpc = |method: &str, code: &str| {
        sample(
            &text,
            "grpc_server_handled_total",
            &[
                ("grpc_service", "bank.ledger.v1.LedgerService"),
                ("grpc_method", method),
                ("grpc_code", code),
            ],
        )
    };
    assert_eq!(rpc("CreateTransfer", "Ok"), 2.0, "{text}");
    assert_eq!(rpc("CreateTransfer", "FailedPrecondition"), 1.0, "{text}");
    assert_eq!(rpc("Deposit", "Ok"), 1.0, "{text}");
    assert_eq!(rpc("OpenLedgerAccount", "Ok"), 2.0, "{text}");
    assert!(
        sample(
            &text,
            "grpc_server_handling_seconds_count",
            &[("grpc_method", "CreateTransfer")]
        ) >= 3.0,
        "{text}"
    );

    let postings = |kind: &str| {
        sample(
            &text,
            "ledger_postings_total",
            &[("kind", kind), ("currency", "EUR")],
        )
    };
    assert_eq!(postings("deposit"), 1.0, "{text}");
    assert_eq!(postings("transfer"), 1.0, "{text}");
    let moved = |kind: &str| {
        sample(
            &text,
            "ledger_posted_minor_units_total",
            &[("kind", kind), ("currency", "EUR")],
        )
    };
    assert_eq!(moved("deposit"), 1_000.0, "{text}");
    assert_eq!(moved("transfer"), 300.0, "{text}");
    assert_eq!(
        sample(
            &text,
            "ledger_posting_replays_total",
            &[("kind", "transfer")]
        ),
        1.0,
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "ledger_postings_refused_total",
            &[("kind", "transfer"), ("code", "insufficient_funds")]
        ),
        1.0,
        "{text}"
    );
    // On PostgreSQL the refusal, planned on books the ledger had just written,
    // was one guarded statement; SQLite locks its file for every group.
    let groups = |path: &str| sample(&text, "ledger_commit_groups_total", &[("path", path)]);
    if urls[0].starts_with("postgres") {
        assert!(groups("known_books") >= 1.0, "{text}");
    } else {
        assert_eq!(groups("known_books"), 0.0, "{text}");
    }
    assert!(groups("locked") >= 2.0, "{text}");
}

db_test!(
    unknown_methods_share_one_label,
    databases = 2,
    unknown_methods
);
async fn unknown_methods(urls: Vec<String>) {
    let _alone = ONE_AT_A_TIME.lock().await;
    let stack = spawn(&urls, Parts::LEDGER).await;
    let addr = stack.ledger_addr.unwrap();
    let before = scrape(addr).await;
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    for path in [
        "/bank.ledger.v1.LedgerService/Nope1",
        "/bank.ledger.v1.LedgerService/Nope2",
        "/bank.nothing.v1.Nope3/Call",
    ] {
        let mut grpc = tonic::client::Grpc::new(channel.clone());
        grpc.ready().await.unwrap();
        let status = grpc
            .unary::<(), (), _>(
                tonic::Request::new(()),
                path.parse().unwrap(),
                tonic_prost::ProstCodec::default(),
            )
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unimplemented, "{path}");
    }
    // Over HTTP/1.1 only the scrape path answers; nothing else is served or counted.
    let http1 = reqwest::Client::new()
        .post(format!(
            "http://{addr}/bank.ledger.v1.LedgerService/GetBalance"
        ))
        .header("content-type", "text/plain")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(http1.status(), reqwest::StatusCode::NOT_FOUND);

    let text = scrape(addr).await;
    assert!(!text.contains("Nope"), "{text}");
    assert!(!text.contains("GetBalance"), "{text}");
    let unknown = [("grpc_method", "unknown"), ("grpc_code", "Unimplemented")];
    assert_eq!(
        sample(&text, "grpc_server_handled_total", &unknown)
            - sample(&before, "grpc_server_handled_total", &unknown),
        3.0,
        "{text}"
    );
}

db_test!(
    the_ledger_verifies_itself_in_the_background_and_exposes_the_result,
    databases = 2,
    background_verification
);
async fn background_verification(urls: Vec<String>) {
    use std::time::{SystemTime, UNIX_EPOCH};

    let _alone = ONE_AT_A_TIME.lock().await;
    let stack = spawn(&urls, Parts::LEDGER).await;
    let admin = stack.admin_addrs["ledger"];
    let metric = |text: &str, name: &str| sample(text, name, &[]);
    let before = scrape(admin).await;
    let operator = stack.operator().await;
    let alice = stack.customer().await;
    let account = open_book(&stack, &alice, "EUR").await;
    deposit(&stack, &operator, &account, 1_000).await;
    let deposited_at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();

    // The harness verifies every second. The gauges are the process's, and a
    // test before this one may have left them set, so wait for a clean round
    // of this stack's that ended after the deposit and replayed its entries.
    let entries_checked = |text: &str| {
        metric(text, "ledger_verify_entries_checked_total")
            - metric(&before, "ledger_verify_entries_checked_total")
    };
    let text = scrape_until(admin, "clean round after the deposit", |text| {
        metric(text, "ledger_verify_last_success_timestamp_seconds") > deposited_at
            && entries_checked(text) >= 2.0
    })
    .await;
    assert_eq!(metric(&text, "ledger_verify_mismatches"), 0.0, "{text}");

    tamper_with_balance(&stack, &account).await;
    scrape_until(admin, "round that saw the tampering", |text| {
        metric(text, "ledger_verify_mismatches") >= 1.0
    })
    .await;
}

/// Scrapes `addr` until its metrics satisfy `done` (20 s at most, or the test
/// fails waiting for `what`), and returns them.
async fn scrape_until(
    addr: std::net::SocketAddr,
    what: &str,
    done: impl Fn(&str) -> bool,
) -> String {
    use std::time::{Duration, Instant};
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = scrape(addr).await;
        if done(&text) {
            return text;
        }
        assert!(Instant::now() < deadline, "no {what}: {text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
