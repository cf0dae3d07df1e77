//! Users, sessions with their rotating refresh tokens (stored hashed), and the
//! audit trail.

use sea_orm::{ConnectionTrait, DbBackend};
use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

fn statements(timestamp: &str, boolean: &str) -> Vec<String> {
    vec![
        format!(
            "CREATE TABLE users (
                user_id TEXT PRIMARY KEY,
                email TEXT NOT NULL UNIQUE,
                full_name TEXT NOT NULL,
                password_hash TEXT NOT NULL,
                roles TEXT NOT NULL,
                enabled {boolean} NOT NULL,
                created_at {timestamp} NOT NULL,
                updated_at {timestamp} NOT NULL
            )"
        ),
        format!(
            "CREATE TABLE sessions (
                session_id TEXT PRIMARY KEY,
                user_id TEXT NOT NULL REFERENCES users (user_id),
                created_at {timestamp} NOT NULL,
                last_used_at {timestamp} NOT NULL,
                expires_at {timestamp} NOT NULL,
                revoked_at {timestamp},
                revoked_reason TEXT
            )"
        ),
        "CREATE INDEX sessions_user ON sessions (user_id)".to_owned(),
        format!(
            "CREATE TABLE refresh_tokens (
                token_hash TEXT PRIMARY KEY,
                session_id TEXT NOT NULL REFERENCES sessions (session_id),
                issued_at {timestamp} NOT NULL,
                spent_at {timestamp}
            )"
        ),
        "CREATE INDEX refresh_tokens_session ON refresh_tokens (session_id)".to_owned(),
        format!(
            "CREATE TABLE audit_events (
                event_id TEXT PRIMARY KEY,
                occurred_at {timestamp} NOT NULL,
                kind TEXT NOT NULL,
                user_id TEXT,
                detail TEXT NOT NULL
            )"
        ),
        "CREATE INDEX audit_events_user ON audit_events (user_id, occurred_at)".to_owned(),
    ]
}

#[sea_orm_migration::async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        let (timestamp, boolean) = match db.get_database_backend() {
            DbBackend::Postgres => ("TIMESTAMPTZ", "BOOLEAN"),
            _ => ("TEXT", "INTEGER"),
        };
        for statement in statements(timestamp, boolean) {
            db.execute_unprepared(&statement).await?;
        }
        Ok(())
    }
}
