//! The binary's behaviour at start.

use std::process::Command;

#[test]
fn bad_configuration_stops_the_process_with_one_line_naming_the_variable() {
    let output = Command::new(env!("CARGO_BIN_EXE_bank-ledger"))
        .env("LEDGER_LISTEN_ADDR", "not-an-address")
        .env("LEDGER_DATABASE_URL", "mysql://user:secret@host/db")
        .output()
        .unwrap();

    assert!(!output.status.success());
    let stderr = String::from_utf8(output.stderr).unwrap();
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(lines[0].contains("LEDGER_LISTEN_ADDR"), "{stderr}");
}

#[test]
fn database_urls_are_never_echoed_in_configuration_errors() {
    let output = Command::new(env!("CARGO_BIN_EXE_bank-ledger"))
        .env("LEDGER_DATABASE_URL", "mysql://user:secret@host/db")
        .output()
        .unwrap();

    assert!(!output.status.success());
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("LEDGER_DATABASE_URL"), "{stderr}");
    assert!(!stderr.contains("secret"), "{stderr}");
}
