//! The binary's behaviour at start.

use bank_e2e::failed_start;

const ACCOUNT: &str = env!("CARGO_BIN_EXE_bank-account");

#[test]
fn a_missing_service_secret_stops_the_process_with_one_line_naming_the_variable() {
    let stderr = failed_start(ACCOUNT, &[]);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("ACCOUNT_SERVICE_CLIENT_SECRET"), "{stderr}");
}

#[test]
fn an_unusable_database_stops_the_process_with_one_line_naming_the_variable() {
    let stderr = failed_start(
        ACCOUNT,
        &[
            (
                "ACCOUNT_SERVICE_CLIENT_SECRET",
                "a secret of sixteen or more",
            ),
            (
                "ACCOUNT_DATABASE_URL",
                "sqlite:///dev/null/account.db?mode=rwc",
            ),
        ],
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("cannot start: ACCOUNT_DATABASE_URL:"),
        "{stderr}"
    );
}
