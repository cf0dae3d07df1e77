//! SQLite's `REPLACE` conflict resolution (`INSERT OR REPLACE`, `REPLACE INTO`)
//! deletes the row in its way without firing its delete triggers (unless a
//! connection turned `recursive_triggers` on), so the append-only triggers of the
//! journal and the request records could be bypassed by re-inserting a row under
//! an existing key. Each table now refuses, before the insert, a row whose key is
//! already taken. A plain insert under a taken key failed anyway (a unique
//! constraint); the engine never writes one, as it plans against the rows it
//! read under the writer's lock.
//!
//! PostgreSQL needs nothing here: it has no `REPLACE`, and `ON CONFLICT DO UPDATE`
//! and `MERGE` fire the row's update and delete triggers.

use sea_orm::DbBackend;
use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

const SQLITE_TRIGGERS: &[&str] = &[
    r"CREATE TRIGGER ledger_entries_no_replace BEFORE INSERT ON ledger_entries
      WHEN EXISTS (SELECT 1 FROM ledger_entries WHERE entry_id = NEW.entry_id)
        OR EXISTS (SELECT 1 FROM ledger_entries
                   WHERE account_id = NEW.account_id AND account_seq = NEW.account_seq)
      BEGIN SELECT RAISE(ABORT, 'the ledger journal is append-only'); END",
    r"CREATE TRIGGER ledger_transfers_no_replace BEFORE INSERT ON ledger_transfers
      WHEN EXISTS (SELECT 1 FROM ledger_transfers WHERE transfer_id = NEW.transfer_id)
        OR EXISTS (SELECT 1 FROM ledger_transfers
                   WHERE reverses_transfer_id = NEW.reverses_transfer_id)
      BEGIN SELECT RAISE(ABORT, 'the ledger journal is append-only'); END",
    r"CREATE TRIGGER ledger_requests_no_replace BEFORE INSERT ON ledger_requests
      WHEN EXISTS (SELECT 1 FROM ledger_requests
                   WHERE scope = NEW.scope AND idempotency_key = NEW.idempotency_key)
      BEGIN SELECT RAISE(ABORT, 'the ledger journal is append-only'); END",
];

#[sea_orm_migration::async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        super::run_on(manager, DbBackend::Sqlite, SQLITE_TRIGGERS).await
    }
}
