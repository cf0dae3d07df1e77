//! The binary's behaviour at start.

use std::process::Command;

#[test]
fn bad_configuration_stops_the_gateway_with_one_line_naming_the_variable() {
    for (variable, value) in [
        ("GATEWAY_LISTEN_ADDR", "localhost"),
        ("REDIS_URL", "http://127.0.0.1:6379"),
        ("BANK_CORS_ALLOWED_ORIGINS", "*"),
        ("LEDGER_ENDPOINT", "127.0.0.1:50053"),
        ("GATEWAY_AUTH_RATE_LIMIT_PER_MINUTE", "0"),
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_bank-gateway"))
            .env(variable, value)
            .output()
            .unwrap();

        assert!(!output.status.success(), "{variable}={value} was accepted");
        let stderr = String::from_utf8(output.stderr).unwrap();
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains(variable), "{stderr}");
    }
}
