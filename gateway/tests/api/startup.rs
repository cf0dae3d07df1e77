//! The binary's behaviour at start.

use bank_e2e::failed_start;

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
