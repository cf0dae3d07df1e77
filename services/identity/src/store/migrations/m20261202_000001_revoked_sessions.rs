//! The feed of ended sessions that token verifiers follow. A trigger appends a
//! row whenever a session's `revoked_at` is first set, whatever statement set it,
//! so no revoking path can forget the feed.
//!
//! On PostgreSQL each row also carries the id of the transaction that wrote it:
//! a reader that remembers the oldest transaction still running when it last
//! read (the snapshot's `xmin`) and asks for rows from that transaction onwards
//! never misses one that committed late. On SQLite writers take turns, so the
//! row's position alone is in commit order.

use sea_orm::{ConnectionTrait, DbBackend};
use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

const POSTGRES: &[&str] = &[
    "CREATE TABLE revoked_sessions (
        seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        session_id TEXT NOT NULL,
        revoked_at TIMESTAMPTZ NOT NULL,
        txid BIGINT NOT NULL DEFAULT (pg_current_xact_id()::text::bigint)
    )",
    "CREATE INDEX revoked_sessions_txid ON revoked_sessions (txid)",
    "CREATE INDEX revoked_sessions_revoked_at ON revoked_sessions (revoked_at)",
    r"CREATE FUNCTION identity_record_revocation() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO revoked_sessions (session_id, revoked_at) VALUES (NEW.session_id, NEW.revoked_at);
        RETURN NEW;
    END
    $$",
    "CREATE TRIGGER sessions_revoked AFTER UPDATE OF revoked_at ON sessions
     FOR EACH ROW WHEN (OLD.revoked_at IS NULL AND NEW.revoked_at IS NOT NULL)
     EXECUTE FUNCTION identity_record_revocation()",
    // Sessions ended before the feed existed whose tokens may still be alive.
    "INSERT INTO revoked_sessions (session_id, revoked_at, txid)
     SELECT session_id, revoked_at, 0 FROM sessions
     WHERE revoked_at > now() - interval '1 day'",
];

const SQLITE: &[&str] = &[
    "CREATE TABLE revoked_sessions (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        session_id TEXT NOT NULL,
        revoked_at TEXT NOT NULL
    )",
    "CREATE INDEX revoked_sessions_revoked_at ON revoked_sessions (revoked_at)",
    "CREATE TRIGGER sessions_revoked AFTER UPDATE OF revoked_at ON sessions
     FOR EACH ROW WHEN OLD.revoked_at IS NULL AND NEW.revoked_at IS NOT NULL
     BEGIN
        INSERT INTO revoked_sessions (session_id, revoked_at) VALUES (NEW.session_id, NEW.revoked_at);
     END",
    "INSERT INTO revoked_sessions (session_id, revoked_at)
     SELECT session_id, revoked_at FROM sessions WHERE revoked_at IS NOT NULL
     ORDER BY revoked_at",
];

#[sea_orm_migration::async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        let statements = match db.get_database_backend() {
            DbBackend::Postgres => POSTGRES,
            _ => SQLITE,
        };
        for statement in statements {
            db.execute_unprepared(statement).await?;
        }
        Ok(())
    }
}
