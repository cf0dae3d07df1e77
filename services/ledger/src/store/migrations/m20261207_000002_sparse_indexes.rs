//! The journal's sparse columns indexed only where they are set (PostgreSQL).
//!
//! Most transfers reverse nothing and belong to no batch, and most request
//! records name no batch, yet every row put a null key into the index of each of
//! those columns: three of the thirteen index insertions of a posting, for
//! lookups that always ask for a value (`= $1`, `= ANY($1)`, a join on it),
//! which a partial index `WHERE … IS NOT NULL` answers the same. The reversal's
//! uniqueness moves to a partial unique index, which refuses a second reversal
//! of one transfer with the same unique violation as the constraint did.
//!
//! SQLite kept its whole indexes here; its batch indexes became partial later
//! (`m20261208_000002_sparse_batch_indexes_on_sqlite`), its reversal column
//! keeps its constraint.
//!
//! Expand-only: the previous release reads and writes the same rows, and runs
//! the same lookups. The indexes are built in the migration's transaction, which
//! holds off writes to the two tables for as long as that takes.

use sea_orm::DbBackend;
use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

const POSTGRES_REVERSAL: &[&str] = &[
    "CREATE UNIQUE INDEX ledger_transfers_one_reversal ON ledger_transfers (reverses_transfer_id)
       WHERE reverses_transfer_id IS NOT NULL",
    "ALTER TABLE ledger_transfers DROP CONSTRAINT ledger_transfers_reverses_transfer_id_key",
];

/// The batch columns' indexes made partial: the same statements on both
/// backends (SQLite's run in `m20261208_000002_sparse_batch_indexes_on_sqlite`).
pub(super) const BATCH_INDEXES: &[&str] = &[
    "DROP INDEX ledger_transfers_batch",
    "CREATE INDEX ledger_transfers_batch ON ledger_transfers (batch_id, batch_index)
       WHERE batch_id IS NOT NULL",
    "DROP INDEX ledger_requests_batch",
    "CREATE INDEX ledger_requests_batch ON ledger_requests (batch_id) WHERE batch_id IS NOT NULL",
];

#[sea_orm_migration::async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        super::run_on(manager, DbBackend::Postgres, POSTGRES_REVERSAL).await?;
        super::run_on(manager, DbBackend::Postgres, BATCH_INDEXES).await
    }
}
