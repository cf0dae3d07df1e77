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

/// One pooled connection's value of a PRAGMA.
async fn pragma(db: &sea_orm::DatabaseTransaction, name: &str) -> String {
    let row = db
        .query_one_raw(sea_orm::Statement::from_string(
            sea_orm::DbBackend::Sqlite,
            format!("PRAGMA {name}"),
        ))
        .await
        .unwrap()
        .unwrap();
    row.try_get_by_index::<i64>(0)
        .map(|value| value.to_string())
        .or_else(|_| row.try_get_by_index::<String>(0))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sqlite_connection_commits_durably_and_keeps_its_wal_in_bounds() {
    run_with_databases(Backend::Sqlite, 1, |urls| async move {
        let db = db::connect(&urls[0]).await.unwrap();
        // Two connections of the pool at once, each asked on its own, and the
        // writer's connection.
        let first = db.begin().await.unwrap();
        let second = db.begin().await.unwrap();
        let writer = db::writer_connection(&db).expect("SQLite has a writer connection");
        let third = writer.begin().await.unwrap();
        for connection in [&first, &second, &third] {
            assert_eq!(pragma(connection, "journal_mode").await, "wal");
            // 2 is FULL: the WAL is synced before a commit returns.
            assert_eq!(pragma(connection, "synchronous").await, "2");
            // 2 is MEMORY: no temporary files for statement journals.
            assert_eq!(pragma(connection, "temp_store").await, "2");
            assert_eq!(
                pragma(connection, "wal_autocheckpoint").await,
                db::SQLITE_AUTOCHECKPOINT_FRAMES.to_string()
            );
            assert_eq!(
                pragma(connection, "journal_size_limit").await,
                db::SQLITE_WAL_SIZE_LIMIT_BYTES.to_string()
            );
        }
        first.rollback().await.unwrap();
        second.rollback().await.unwrap();
        third.rollback().await.unwrap();
        db.close().await.ok();
    })
    .await;
}

/// The one integer a query answers, on either backend.
async fn scalar(db: &impl ConnectionTrait, sql: &str) -> i64 {
    db.query_one_raw(sea_orm::Statement::from_string(
        db.get_database_backend(),
        sql,
    ))
    .await
    .unwrap()
    .unwrap()
    .try_get_by_index::<i64>(0)
    .unwrap()
}

/// The size of `url`'s database file, without its WAL.
fn database_file_size(url: &str) -> u64 {
    let path = url
        .trim_start_matches("sqlite://")
        .split('?')
        .next()
        .unwrap();
    std::fs::metadata(path).unwrap().len()
}

/// About 1 MiB of committed pages, far fewer frames than the commits' own
/// checkpoint waits for: until a checkpoint they live in the WAL alone.
async fn commit_a_mebibyte(db: &sea_orm::DatabaseConnection) {
    db.execute_unprepared("CREATE TABLE payload (body BLOB)")
        .await
        .unwrap();
    db.execute_unprepared(
        "WITH RECURSIVE n (i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 256)
         INSERT INTO payload SELECT randomblob(4000) FROM n",
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_moves_committed_pages_from_the_wal_into_the_database_file() {
    run_with_databases(Backend::Sqlite, 1, |urls| async move {
        // A pool without the checkpointer task, so only this test checkpoints.
        let mut options = ConnectOptions::new(urls[0].clone());
        options.max_connections(2).sqlx_logging(false);
        let db = Database::connect(options).await.unwrap();
        db.execute_unprepared("PRAGMA journal_mode = WAL")
            .await
            .unwrap();
        commit_a_mebibyte(&db).await;
        assert!(database_file_size(&urls[0]) < 64 * 1024);

        db::checkpoint(&db).await.unwrap();

        assert!(database_file_size(&urls[0]) > 1024 * 1024);
        assert_eq!(scalar(&db, "SELECT count(*) FROM payload").await, 256);
        db.close().await.ok();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_checkpoints_its_wal_beside_its_writers_until_it_is_closed() {
    run_with_databases(Backend::Sqlite, 1, |urls| async move {
        let db = db::connect(&urls[0]).await.unwrap();
        commit_a_mebibyte(&db).await;
        // The pool's own task copies the pages back without any commit
        // asking for it.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while database_file_size(&urls[0]) < 1024 * 1024 {
            assert!(
                std::time::Instant::now() < deadline,
                "no checkpoint within 30 s"
            );
            tokio::time::sleep(db::SQLITE_CHECKPOINT_INTERVAL).await;
        }

        let task = db::start_checkpointer(db.clone(), std::time::Duration::from_millis(1));
        db.close().await.ok();
        tokio::time::timeout(std::time::Duration::from_secs(30), task)
            .await
            .expect("the checkpointer outlived its pool")
            .unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_through_the_writer_connection_are_the_pools_to_read() {
    run_with_databases(Backend::Sqlite, 1, |urls| async move {
        let db = db::connect(&urls[0]).await.unwrap();
        let writer = db::writer_connection(&db).unwrap();
        writer
            .execute_unprepared("CREATE TABLE counter (value INTEGER)")
            .await
            .unwrap();
        for value in 1..=3 {
            let txn = writer.begin().await.unwrap();
            txn.execute_unprepared(&format!("INSERT INTO counter VALUES ({value})"))
                .await
                .unwrap();
            txn.commit().await.unwrap();
        }
        assert_eq!(scalar(&db, "SELECT sum(value) FROM counter").await, 6);
        writer.close().await.ok();
        db.close().await.ok();
    })
    .await;
}

#[tokio::test]
async fn postgresql_writes_run_in_one_backend_of_their_own() {
    run_with_databases(Backend::Postgres, 1, |urls| async move {
        let db = db::connect(&urls[0]).await.unwrap();
        let writer = db::writer_connection(&db).expect("PostgreSQL has a writer connection");
        writer
            .execute_unprepared("CREATE TABLE counter (value INTEGER)")
            .await
            .unwrap();
        let mut backends = std::collections::BTreeSet::new();
        for value in 1..=3 {
            let txn = writer.begin().await.unwrap();
            txn.execute_unprepared(&format!("INSERT INTO counter VALUES ({value})"))
                .await
                .unwrap();
            backends.insert(scalar(&txn, "SELECT pg_backend_pid()::bigint").await);
            txn.commit().await.unwrap();
            backends.insert(scalar(&writer, "SELECT pg_backend_pid()::bigint").await);
        }
        assert_eq!(backends.len(), 1, "every write ran in one backend");
        assert_eq!(
            scalar(&db, "SELECT sum(value)::bigint FROM counter").await,
            6
        );
        writer.close().await.ok();
        db.close().await.ok();
    })
    .await;
}

#[tokio::test]
async fn a_database_says_whether_it_compares_text_byte_by_byte() {
    run_with_databases(Backend::Sqlite, 1, |urls| async move {
        let db = db::connect(&urls[0]).await.unwrap();
        assert_eq!(db::collation(&db).await.unwrap(), None);
        db.close().await.ok();
    })
    .await;
    let Some(admin_url) = std::env::var(bank_kit::testing::POSTGRES_URL_VAR)
        .ok()
        .filter(|url| !url.is_empty())
    else {
        return;
    };
    let admin = Database::connect(&admin_url).await.unwrap();
    let name = format!("bank_test_{}", uuid::Uuid::new_v4().simple());
    for (options, bytewise) in [
        (
            "TEMPLATE template0 LOCALE_PROVIDER libc LC_COLLATE 'C'",
            true,
        ),
        (
            "TEMPLATE template0 LOCALE_PROVIDER libc LC_COLLATE 'C.UTF-8'",
            false,
        ),
    ] {
        admin
            .execute_unprepared(&format!("CREATE DATABASE {name} {options}"))
            .await
            .unwrap();
        let url = bank_kit::testing::replace_database_name(&admin_url, &name);
        let db = db::connect(&url).await.unwrap();
        let collation = db::collation(&db).await.unwrap().unwrap();
        db.close().await.ok();
        admin
            .execute_unprepared(&format!("DROP DATABASE {name} WITH (FORCE)"))
            .await
            .unwrap();
        assert_eq!(collation.provider, "libc");
        assert_eq!(collation.is_bytewise(), bytewise, "{collation:?}");
    }
    admin.close().await.ok();
}
