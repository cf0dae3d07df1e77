//! The batch columns indexed only where they are set, on SQLite too.
//!
//! Most transfers and request records belong to no batch, yet on SQLite every
//! row still put a null key into `ledger_transfers_batch` and
//! `ledger_requests_batch`: two of the fourteen B-tree insertions of a posting
//! there, on the writer's serial path. Both lookups on those columns compare
//! them with `=` (a batch's transfers by id, a transfer with no record of its
//! batch), which SQLite's planner knows is false for a null, so it answers them
//! from a partial index `WHERE batch_id IS NOT NULL` the same (PostgreSQL has
//! had them since `m20261207_000002_sparse_indexes`; a test reads SQLite's
//! plans).
//!
//! The reversal's uniqueness stays a column constraint on SQLite: making it a
//! partial index would mean rebuilding `ledger_transfers`.
//!
//! Expand-only: the previous release runs the same lookups. The indexes are
//! built in the migration's transaction.

use sea_orm::DbBackend;
use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[sea_orm_migration::async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        super::run_on(
            manager,
            DbBackend::Sqlite,
            super::m20261207_000002_sparse_indexes::BATCH_INDEXES,
        )
        .await
    }
}
