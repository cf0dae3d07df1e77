//! The binary's behaviour at start.

use bank_e2e::failed_start;

const IDENTITY: &str = env!("CARGO_BIN_EXE_bank-identity");

#[test]
fn an_unusable_key_directory_stops_the_process_with_one_line_naming_the_variable() {
    let stderr = failed_start(IDENTITY, &[("IDENTITY_SIGNING_KEYS_DIR", "/dev/null/keys")]);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("cannot start: IDENTITY_SIGNING_KEYS_DIR:"),
        "{stderr}"
    );
}

#[test]
fn a_weak_bootstrap_password_stops_the_process_naming_the_variable() {
    let stderr = failed_start(
        IDENTITY,
        &[
            ("BANK_BOOTSTRAP_OPERATOR_EMAIL", "operator@example.com"),
            ("BANK_BOOTSTRAP_OPERATOR_PASSWORD", "abc123"),
        ],
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("BANK_BOOTSTRAP_OPERATOR_PASSWORD"),
        "{stderr}"
    );
    assert!(!stderr.contains("abc123"), "{stderr}");
}
