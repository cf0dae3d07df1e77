//! The binary's behaviour at start.

use bank_e2e::{Parts, db_test, failed_start, healthcheck, spawn, unused_addr};

const GATEWAY: &str = env!("CARGO_BIN_EXE_bank-gateway");

#[test]
fn bad_configuration_stops_the_gateway_with_one_line_naming_the_variable() {
    for (variable, value) in [
        ("GATEWAY_LISTEN_ADDR", "localhost"),
        ("REDIS_URL", "http://127.0.0.1:6379"),
        ("BANK_CORS_ALLOWED_ORIGINS", "*"),
        ("LEDGER_ENDPOINT", "127.0.0.1:50053"),
        ("GATEWAY_AUTH_RATE_LIMIT_PER_MINUTE", "0"),
    ] {
        let stderr = failed_start(GATEWAY, &[(variable, value)]);
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains(variable), "{stderr}");
    }
}

#[test]
fn a_listen_address_in_use_stops_the_gateway_with_one_line_naming_the_variable() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let stderr = failed_start(GATEWAY, &[("GATEWAY_LISTEN_ADDR", &addr)]);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("cannot start: GATEWAY_LISTEN_ADDR:"),
        "{stderr}"
    );
}

db_test!(
    the_healthcheck_subcommand_asks_the_gateway_for_readyz,
    databases = 3,
    probe
);
async fn probe(urls: Vec<String>) {
    let stack = spawn(&urls, Parts::ALL).await;
    let addr = stack.gateway_addr.unwrap().to_string();
    let (healthy, stderr) = healthcheck(GATEWAY, &[("GATEWAY_LISTEN_ADDR", &addr)]).await;
    assert!(healthy, "{stderr}");

    let closed = unused_addr();
    let (healthy, stderr) = healthcheck(GATEWAY, &[("GATEWAY_LISTEN_ADDR", &closed)]).await;
    assert!(!healthy);
    assert!(stderr.starts_with("unhealthy: "), "{stderr}");
}
