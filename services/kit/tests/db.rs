//! Classification of database errors into retryable or not, against real
//! databases: a busy SQLite file and a PostgreSQL serialization failure.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use bank_kit::{
    db,
    testing::{Backend, run_with_databases},
};
use sea_orm::{
    AccessMode, ConnectOptions, ConnectionTrait, Database, IsolationLevel, TransactionTrait,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_sqlite_file_is_retryable() {
    run_with_databases(Backend::Sqlite, 1, |urls| async move {
        let holder = db::connect(&urls[0]).await.unwrap();
        holder
            .execute_unprepared("CREATE TABLE counter (value INTEGER)")
            .await
            .unwrap();
        let mut options = ConnectOptions::new(urls[0].clone());
        options.max_connections(1).sqlx_logging(false);
        let impatient = Database::connect(options).await.unwrap();
        impatient
            .execute_unprepared("PRAGMA busy_timeout = 0")
            .await
            .unwrap();

        let writing = holder.begin().await.unwrap();
        writing
            .execute_unprepared("INSERT INTO counter VALUES (1)")
            .await
            .unwrap();
        let error = impatient
            .execute_unprepared("INSERT INTO counter VALUES (2)")
            .await
            .unwrap_err();

        assert!(db::is_retryable(&error), "{error}");
        writing.rollback().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_serialization_failure_is_retryable() {
    run_with_databases(Backend::Postgres, 1, |urls| async move {
        let pool = db::connect(&urls[0]).await.unwrap();
        pool.execute_unprepared("CREATE TABLE counter (id INT PRIMARY KEY, value INT)")
            .await
            .unwrap();
        pool.execute_unprepared("INSERT INTO counter VALUES (1, 0)")
            .await
            .unwrap();

        let first = pool
            .begin_with_config(
                Some(IsolationLevel::RepeatableRead),
                Some(AccessMode::ReadWrite),
            )
            .await
            .unwrap();
        first
            .execute_unprepared("SELECT value FROM counter WHERE id = 1")
            .await
            .unwrap();
        pool.execute_unprepared("UPDATE counter SET value = 1 WHERE id = 1")
            .await
            .unwrap();
        let error = first
            .execute_unprepared("UPDATE counter SET value = 2 WHERE id = 1")
            .await
            .unwrap_err();

        assert!(db::is_retryable(&error), "{error}");
        assert!(!db::is_unique_violation(&error));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn constraint_violations_are_not_retryable() {
    run_with_databases(Backend::Sqlite, 1, |urls| async move {
        let pool = db::connect(&urls[0]).await.unwrap();
        pool.execute_unprepared("CREATE TABLE unique_values (value INTEGER UNIQUE)")
            .await
            .unwrap();
        pool.execute_unprepared("INSERT INTO unique_values VALUES (1)")
            .await
            .unwrap();
        let error = pool
            .execute_unprepared("INSERT INTO unique_values VALUES (1)")
            .await
            .unwrap_err();

        assert!(!db::is_retryable(&error));
        assert!(db::is_unique_violation(&error));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_the_server_ended_is_unavailable_not_a_failed_statement() {
    run_with_databases(Backend::Postgres, 1, |urls| async move {
        let mut options = ConnectOptions::new(urls[0].clone());
        options.max_connections(1).sqlx_logging(false);
        let pool = Database::connect(options).await.unwrap();
        // What a server shutting down does to its sessions (57P01).
        let ended = pool
            .execute_unprepared("SELECT pg_terminate_backend(pg_backend_pid())")
            .await
            .unwrap_err();
        assert!(db::is_unavailable(&ended), "{ended:?}");

        let failed = pool
            .execute_unprepared("SELECT * FROM no_such_table")
            .await
            .unwrap_err();
        assert!(!db::is_unavailable(&failed), "{failed:?}");
    })
    .await;
}

#[cfg(unix)]
#[tokio::test]
async fn a_new_sqlite_database_is_readable_by_its_owner_alone() {
    use std::os::unix::fs::PermissionsExt;
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("var");
    let url = format!("sqlite://{}?mode=rwc", dir.join("bank.db").display());

    let db = db::connect(&url).await.unwrap();
    db.execute_unprepared("CREATE TABLE t (id INTEGER)")
        .await
        .unwrap();
    db.execute_unprepared("INSERT INTO t VALUES (1)")
        .await
        .unwrap();

    let mode = |path: std::path::PathBuf| {
        std::fs::metadata(&path)
            .unwrap_or_else(|error| panic!("{}: {error}", path.display()))
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode(dir.clone()), 0o700);
    for file in ["bank.db", "bank.db-wal", "bank.db-shm"] {
        assert_eq!(mode(dir.join(file)), 0o600, "{file}");
    }
    db.close().await.ok();
}
