//! Two additions, both expand-only (the previous version ignores them):
//!
//! - `accounts.status_version`: the ledger's version of the status recorded here.
//!   A status is written only over an older version, so concurrent changes end
//!   here as they ended in the ledger. A new account starts at 0: its book is not
//!   yet activated. Existing accounts mirror activated books, version 1; pending
//!   ones start at 0, so that completing them activates their books.
//! - `account_open_requests`: one row per `OpenAccount` that carried an
//!   idempotency key, naming the account it opened, so that a retried open
//!   returns that account instead of opening a second one.

use sea_orm::{ConnectionTrait, DbBackend};
use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[sea_orm_migration::async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        let (integer, timestamp) = match db.get_database_backend() {
            DbBackend::Postgres => ("BIGINT", "TIMESTAMPTZ"),
            _ => ("INTEGER", "TEXT"),
        };
        let statements = [
            format!(
                "ALTER TABLE accounts ADD COLUMN status_version {integer} NOT NULL DEFAULT 1
                 CHECK (status_version >= 0)"
            ),
            // A pending account was never confirmed by the ledger: its book may be
            // missing, and a book opened now starts unpostable. Version 0 sends it
            // through the activation step when it is completed.
            "UPDATE accounts SET status_version = 0 WHERE status = 'pending'".to_owned(),
            format!(
                "CREATE TABLE account_open_requests (
                    owner_id TEXT NOT NULL,
                    idempotency_key TEXT NOT NULL,
                    request_hash TEXT NOT NULL,
                    account_id TEXT NOT NULL REFERENCES accounts (account_id),
                    created_at {timestamp} NOT NULL,
                    PRIMARY KEY (owner_id, idempotency_key)
                )"
            ),
        ];
        for statement in statements {
            db.execute_unprepared(&statement).await?;
        }
        Ok(())
    }
}
