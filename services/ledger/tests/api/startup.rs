//! The binary's behaviour at start: whatever stops it is told in one line that
//! names the variable to fix.

use bank_e2e::{
    Parts, db_test, failed_start, healthcheck, pki::TestPki, spawn, spawn_with_tls, unused_addr,
};

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

db_test!(
    the_healthcheck_subcommand_finds_a_serving_ledger_and_reports_a_missing_one,
    databases = 3,
    probe_plaintext
);
async fn probe_plaintext(urls: Vec<String>) {
    let stack = spawn(&urls, Parts::ALL).await;
    let addr = stack.ledger_addr.unwrap().to_string();
    let (healthy, stderr) = healthcheck(LEDGER, &[("LEDGER_LISTEN_ADDR", &addr)]).await;
    assert!(healthy, "{stderr}");

    let closed = unused_addr();
    let (healthy, stderr) = healthcheck(LEDGER, &[("LEDGER_LISTEN_ADDR", &closed)]).await;
    assert!(!healthy);
    assert!(stderr.starts_with("unhealthy: "), "{stderr}");
}

db_test!(
    the_healthcheck_subcommand_speaks_tls_with_the_process_certificate,
    databases = 3,
    probe_tls
);
async fn probe_tls(urls: Vec<String>) {
    let pki = TestPki::new("bank");
    let stack = spawn_with_tls(&urls, Parts::ALL, &pki).await;
    let addr = stack.ledger_addr.unwrap().to_string();
    let (cert, key, ca) = (
        pki.cert.to_str().unwrap(),
        pki.key.to_str().unwrap(),
        pki.ca.to_str().unwrap(),
    );
    let tls = [
        ("LEDGER_LISTEN_ADDR", addr.as_str()),
        ("BANK_TLS_CERT_FILE", cert),
        ("BANK_TLS_KEY_FILE", key),
        ("BANK_TLS_CA_FILE", ca),
        ("BANK_TLS_CLIENT_CA_FILE", ca),
    ];
    let (healthy, stderr) = healthcheck(LEDGER, &tls).await;
    assert!(healthy, "{stderr}");

    // Without the process's TLS settings the probe speaks plaintext, which a TLS
    // listener refuses.
    let (healthy, _) = healthcheck(LEDGER, &tls[..1]).await;
    assert!(!healthy);
}

/// PostgreSQL only: SQLite has no roles.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs BANK_TEST_POSTGRES_URL; make test runs it when that is set"]
async fn migrate_runs_as_the_owner_and_the_service_starts_without_its_credentials_on_postgresql() {
    use bank_e2e::roles::RoleCluster;
    use bank_ledger::store::{GRANTS, migrations::Migrator};
    use sea_orm::ConnectionTrait;

    let Some(admin_url) = bank_kit::testing::postgres_server_or_skip() else {
        return;
    };
    let cluster = RoleCluster::create(&admin_url, 1).await;
    let service = cluster.urls(&cluster.service).remove(0);
    let owner = cluster.urls(&cluster.owner).remove(0);
    let outcome = tokio::spawn(async move {
        // The restricted role alone cannot bring the schema up, and says what to run.
        let refused = tokio::task::spawn_blocking({
            let service = service.clone();
            move || {
                failed_start(
                    LEDGER,
                    &[
                        ("LEDGER_DATABASE_URL", &service),
                        ("LEDGER_LISTEN_ADDR", "127.0.0.1:0"),
                        ("LEDGER_ADMIN_LISTEN_ADDR", "127.0.0.1:0"),
                    ],
                )
            }
        })
        .await
        .unwrap();
        assert!(refused.contains("migrate"), "{refused}");

        // What a Job or an init container runs, with the owner's URL.
        let migrated = tokio::process::Command::new(LEDGER)
            .arg("migrate")
            .env_clear()
            .env("LEDGER_DATABASE_URL", &service)
            .env("LEDGER_MIGRATION_DATABASE_URL", &owner)
            .output()
            .await
            .unwrap();
        assert!(
            migrated.status.success(),
            "{}",
            String::from_utf8_lossy(&migrated.stderr)
        );

        // Now the service's own URL is enough to start.
        let open = || {
            bank_kit::db::open_service_database::<Migrator>("LEDGER", &service, None, GRANTS)
        };
        open().await.unwrap().close().await.ok();

        // A newer release migrated further (expand only): this one still starts,
        // with its owner's URL or without.
        let as_owner = bank_kit::db::connect(&owner).await.unwrap();
        as_owner
            .execute_unprepared(
                "INSERT INTO seaql_migrations (version, applied_at) VALUES ('m29990101_000001_from_a_newer_release', 0)",
            )
            .await
            .unwrap();
        as_owner.close().await.ok();
        open().await.unwrap().close().await.ok();
        bank_kit::db::open_service_database::<Migrator>("LEDGER", &service, Some(&owner), GRANTS)
            .await
            .unwrap()
            .close()
            .await
            .ok();
    })
    .await;
    cluster.drop_all().await;
    if let Err(error) = outcome {
        std::panic::resume_unwind(error.into_panic());
    }
}
