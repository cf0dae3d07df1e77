//! The binary's behaviour at start: whatever stops it is told in one line that
//! names the variable to fix.

use bank_e2e::failed_start;

const LEDGER: &str = env!("CARGO_BIN_EXE_bank-ledger");

fn one_line(stderr: &str) -> &str {
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    lines[0]
}

#[test]
fn bad_configuration_stops_the_process_with_one_line_naming_the_variable() {
    let stderr = failed_start(
        LEDGER,
        &[
            ("LEDGER_LISTEN_ADDR", "not-an-address"),
            ("LEDGER_DATABASE_URL", "mysql://user:secret@host/db"),
        ],
    );
    assert!(one_line(&stderr).contains("LEDGER_LISTEN_ADDR"), "{stderr}");
}

#[test]
fn database_urls_are_never_echoed_in_configuration_errors() {
    let stderr = failed_start(
        LEDGER,
        &[("LEDGER_DATABASE_URL", "mysql://user:secret@host/db")],
    );
    assert!(stderr.contains("LEDGER_DATABASE_URL"), "{stderr}");
    assert!(!stderr.contains("secret"), "{stderr}");
}

#[test]
fn an_unusable_database_stops_the_process_with_one_line_naming_the_variable() {
    // A directory cannot be made under a character device, whoever runs this.
    let stderr = failed_start(
        LEDGER,
        &[(
            "LEDGER_DATABASE_URL",
            "sqlite:///dev/null/ledger.db?mode=rwc",
        )],
    );
    assert!(
        one_line(&stderr).starts_with("cannot start: LEDGER_DATABASE_URL:"),
        "{stderr}"
    );
}

#[test]
fn a_listen_address_in_use_stops_the_process_with_one_line_naming_the_variable() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let stderr = failed_start(LEDGER, &[("LEDGER_LISTEN_ADDR", &addr)]);
    let line = one_line(&stderr);
    assert!(
        line.starts_with("cannot start: LEDGER_LISTEN_ADDR:"),
        "{stderr}"
    );
    assert!(line.contains(&addr), "{stderr}");
}

#[test]
fn an_admin_address_in_use_stops_the_process_with_one_line_naming_the_variable() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let stderr = failed_start(
        LEDGER,
        &[
            ("LEDGER_LISTEN_ADDR", "127.0.0.1:0"),
            ("LEDGER_ADMIN_LISTEN_ADDR", &addr),
        ],
    );
    let line = one_line(&stderr);
    assert!(
        line.starts_with("cannot start: LEDGER_ADMIN_LISTEN_ADDR:"),
        "{stderr}"
    );
    assert!(line.contains(&addr), "{stderr}");
}
