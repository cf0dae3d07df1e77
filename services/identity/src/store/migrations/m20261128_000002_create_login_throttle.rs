//! Failed-login counters with backoff, kept in the database so that they survive
//! restarts and are shared by every replica.

use sea_orm::{ConnectionTrait, DbBackend};
use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[sea_orm_migration::async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        let timestamp = match db.get_database_backend() {
            DbBackend::Postgres => "TIMESTAMPTZ",
            _ => "TEXT",
        };
        db.execute_unprepared(&format!(
            "CREATE TABLE login_throttle (
                throttle_key TEXT PRIMARY KEY,
                failures BIGINT NOT NULL,
                blocked_until {timestamp},
                updated_at {timestamp} NOT NULL
            )"
        ))
        .await?;
        Ok(())
    }
}
