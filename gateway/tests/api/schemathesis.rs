//! The OpenAPI document held against the live gateway by schemathesis, with
//! every check, as a customer and as an operator: every answer must be one the
//! document describes, schema-valid input must not be refused as malformed,
//! invalid input must be refused, and nothing may answer 5xx. Skipped (and said
//! so) where schemathesis is not installed; CI installs it.
//!
//! Left out, because they would end the run's own session half-way:
//! - `POST /v1/auth/logout` revokes the session whose token the run uses;
//! - `POST /v1/me/password` ends every session of the user.
//!
//! Both are covered by `revocation.rs` and `contract.rs`.

use bank_e2e::{Parts, db_test, spawn};

use crate::helpers::Rest;

/// Examples per operation and phase.
const EXAMPLES: &str = "50";

/// Which answers count as conforming, and why (business-rule refusals).
const CONFIG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/api/schemathesis.toml");

fn installed() -> bool {
    std::process::Command::new("schemathesis")
        .arg("--version")
        .output()
        .is_ok_and(|output| output.status.success())
}

#[derive(Clone, Copy)]
enum Role {
    Customer,
    Operator,
}

async fn fuzz(urls: Vec<String>, role: Role) {
    if !installed() {
        eprintln!("schemathesis is not installed (pip install schemathesis): skipped");
        return;
    }
    let stack = spawn(&urls, Parts::ALL).await;
    let rest = Rest::new(&stack);
    let operator = rest.operator_token().await;
    let (_, customer) = rest.customer().await;
    // Something real to find beside the random ids: a funded account.
    let account = rest.open_account(&customer, "EUR").await;
    rest.deposit(&operator, &account, 1_000_000).await;
    let token = match role {
        Role::Customer => customer,
        Role::Operator => operator,
    };

    let schema = stack.gateway_url("/openapi.json");
    let reports = tempfile_dir();
    // One worker: the generator's parser is not safe across threads on every
    // Python it runs on.
    let output = tokio::process::Command::new("schemathesis")
        .args(["--config-file", CONFIG, "run", &schema])
        .args(["--checks", "all", "--max-examples", EXAMPLES])
        .args(["--seed", "1", "--no-color", "--workers", "1"])
        .args(["--generation-database", "none"])
        .args(["--exclude-path", "/v1/auth/logout"])
        .args(["--exclude-path", "/v1/me/password"])
        .arg("--header")
        .arg(format!("Authorization: Bearer {token}"))
        .arg("--report-dir")
        .arg(&reports)
        .current_dir(&reports)
        .output()
        .await
        .expect("run schemathesis");
    let _ = std::fs::remove_dir_all(&reports);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "schemathesis found failures:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // Every operation it selected was exercised.
    let count = |label: &str| {
        stdout
            .lines()
            .find_map(|line| line.trim().strip_prefix(label))
            .and_then(|rest| rest.split('/').next())
            .and_then(|number| number.trim().parse::<usize>().ok())
    };
    let selected = count("Selected:").expect("a summary of selected operations");
    assert!(selected >= 20, "{stdout}");
    assert_eq!(count("Tested:"), Some(selected), "{stdout}");
}

/// A directory of this test's own for schemathesis's files, so that nothing is
/// left in the checkout.
fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("schemathesis-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

db_test!(
    schemathesis_finds_nothing_as_a_customer,
    databases = 3,
    as_customer
);
async fn as_customer(urls: Vec<String>) {
    fuzz(urls, Role::Customer).await;
}

db_test!(
    schemathesis_finds_nothing_as_an_operator,
    databases = 3,
    as_operator
);
async fn as_operator(urls: Vec<String>) {
    fuzz(urls, Role::Operator).await;
}
