//! Indexes on what a request record made: its transfer and its batch. Verifying
//! the ledger looks up every transfer's record by them; without an index SQLite
//! scans the whole table once per transfer, so verification grew with the square
//! of the journal. They are whole indexes rather than partial ones (a record
//! names one outcome and leaves the rest null) so that SQLite's planner never
//! has to prove a lookup's column is not null to use them.
//!
//! Expand-only: a ledger of the previous version writes the same rows.

use sea_orm::ConnectionTrait;
use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

const INDEXES: [&str; 2] = [
    "CREATE INDEX IF NOT EXISTS ledger_requests_transfer ON ledger_requests (transfer_id)",
    "CREATE INDEX IF NOT EXISTS ledger_requests_batch ON ledger_requests (batch_id)",
];

#[sea_orm_migration::async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        for index in INDEXES {
            db.execute_unprepared(index).await?;
        }
        Ok(())
    }
}
