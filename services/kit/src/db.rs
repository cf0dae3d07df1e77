//! Database connection and migration for both backends: SQLite (embedded default,
//! WAL mode) and PostgreSQL (production).

use std::time::Duration;

use sea_orm::{ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, DbErr};
use sea_orm_migration::MigratorTrait;

/// Opens a pool on `url`. For SQLite the parent directory of the file is created
/// and the journal switched to WAL so readers never block the writer.
pub async fn connect(url: &str) -> Result<DatabaseConnection, DbErr> {
    let is_sqlite = url.starts_with("sqlite:");
    if is_sqlite {
        create_sqlite_parent_dir(url)?;
    }
    let mut options = ConnectOptions::new(url.to_owned());
    options
        .max_connections(if is_sqlite { 8 } else { 16 })
        .min_connections(1)
        .acquire_timeout(Duration::from_secs(10))
        .connect_timeout(Duration::from_secs(10))
        .sqlx_logging(false);
    let db = Database::connect(options).await?;
    if db.get_database_backend() == DbBackend::Sqlite {
        db.execute_unprepared("PRAGMA journal_mode = WAL").await?;
    }
    Ok(db)
}

/// Connects and applies every pending migration of `M`. On PostgreSQL, replicas
/// starting together take turns: a session-level advisory lock, held on a
/// connection of its own, serialises their migrations.
pub async fn connect_and_migrate<M: MigratorTrait>(url: &str) -> Result<DatabaseConnection, DbErr> {
    let db = connect(url).await?;
    if db.get_database_backend() != DbBackend::Postgres {
        M::up(&db, None).await?;
        return Ok(db);
    }
    // One connection that the pool never recycles, so the session holding the
    // lock lives until it is released.
    let mut lock_options = ConnectOptions::new(url.to_owned());
    lock_options
        .max_connections(1)
        .min_connections(1)
        .idle_timeout(None)
        .max_lifetime(None)
        .connect_timeout(Duration::from_secs(10))
        .sqlx_logging(false);
    let lock = Database::connect(lock_options).await?;
    lock.execute_unprepared(&format!("SELECT pg_advisory_lock({MIGRATION_LOCK_KEY})"))
        .await?;
    let migrated = M::up(&db, None).await;
    let unlocked = lock
        .query_one_raw(sea_orm::Statement::from_string(
            DbBackend::Postgres,
            format!("SELECT pg_advisory_unlock({MIGRATION_LOCK_KEY}) AS released"),
        ))
        .await;
    lock.close().await.ok();
    migrated?;
    let released = unlocked?
        .map(|row| row.try_get::<bool>("", "released"))
        .transpose()?;
    if released != Some(true) {
        return Err(DbErr::Custom(
            "the migration lock was lost while migrating".into(),
        ));
    }
    Ok(db)
}

/// Advisory lock key taken while migrating ("bankmigr" in ASCII).
const MIGRATION_LOCK_KEY: i64 = 0x62616e6b6d696772;

fn create_sqlite_parent_dir(url: &str) -> Result<(), DbErr> {
    let path = url
        .trim_start_matches("sqlite:")
        .trim_start_matches("//")
        .split('?')
        .next()
        .unwrap_or_default();
    if path.is_empty() || path == ":memory:" {
        return Ok(());
    }
    if let Some(parent) = std::path::Path::new(path).parent()
        && !parent.as_os_str().is_empty()
    {
        std::fs::create_dir_all(parent)
            .map_err(|error| DbErr::Custom(format!("cannot create database directory: {error}")))?;
    }
    Ok(())
}

/// Whether an error is a transient conflict worth retrying the whole transaction
/// for: a serialization failure or deadlock (SQLSTATE 40001, 40P01, as PostgreSQL
/// and Postgres-compatible distributed engines report them) or a busy SQLite file
/// (SQLITE_BUSY and its extended codes). Decided by the database's error code,
/// never by message text.
pub fn is_retryable(error: &DbErr) -> bool {
    use sea_orm::{RuntimeErr, sqlx};
    let (DbErr::Exec(RuntimeErr::SqlxError(inner))
    | DbErr::Query(RuntimeErr::SqlxError(inner))
    | DbErr::Conn(RuntimeErr::SqlxError(inner))) = error
    else {
        return false;
    };
    let sqlx::Error::Database(database_error) = inner.as_ref() else {
        return false;
    };
    let Some(code) = database_error.code() else {
        return false;
    };
    match code.as_ref() {
        "40001" | "40P01" => true,
        // SQLite reports its (extended) result code as the code: 5 is SQLITE_BUSY,
        // 261 SQLITE_BUSY_RECOVERY, 517 SQLITE_BUSY_SNAPSHOT, 773 SQLITE_BUSY_TIMEOUT.
        sqlite_code => matches!(sqlite_code.parse::<u32>(), Ok(5 | 261 | 517 | 773)),
    }
}

/// Whether an error is a unique-constraint violation.
pub fn is_unique_violation(error: &DbErr) -> bool {
    matches!(
        error.sql_err(),
        Some(sea_orm::SqlErr::UniqueConstraintViolation(_))
    )
}
