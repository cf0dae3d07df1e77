//! Accounts and their owners.

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
        let statements = [
            format!(
                "CREATE TABLE accounts (
                    account_id TEXT PRIMARY KEY,
                    number TEXT NOT NULL UNIQUE,
                    owner_id TEXT NOT NULL,
                    currency TEXT NOT NULL,
                    nickname TEXT NOT NULL,
                    status TEXT NOT NULL CHECK (status IN ('pending', 'active', 'frozen', 'closed')),
                    created_at {timestamp} NOT NULL,
                    updated_at {timestamp} NOT NULL
                )"
            ),
            "CREATE INDEX accounts_owner ON accounts (owner_id, account_id)".to_owned(),
        ];
        for statement in statements {
            db.execute_unprepared(&statement).await?;
        }
        Ok(())
    }
}
