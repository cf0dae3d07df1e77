//! Each book counts its status decisions (`status_version`), so that the account
//! service's mirror of the status records only newer decisions and converges on
//! the ledger's whatever order answers arrive in. A customer's book is now opened
//! at version 0, unpostable until the account service activates it; books that
//! exist already (and the settlement books, created without naming the column)
//! are activated, version 1.
//!
//! Expand-only: a ledger of the previous version ignores the column, and its new
//! books get the default, activated, as they were.

use sea_orm::{ConnectionTrait, DbBackend};
use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[sea_orm_migration::async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        let integer = match db.get_database_backend() {
            DbBackend::Postgres => "BIGINT",
            _ => "INTEGER",
        };
        db.execute_unprepared(&format!(
            "ALTER TABLE ledger_accounts ADD COLUMN status_version {integer} NOT NULL DEFAULT 1
             CHECK (status_version >= 0)"
        ))
        .await?;
        Ok(())
    }
}
