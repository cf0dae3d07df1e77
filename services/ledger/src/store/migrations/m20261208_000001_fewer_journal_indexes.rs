//! Two indexes that no lookup uses are gone (PostgreSQL).
//!
//! Every posting put ten entries into the journal's B-trees: `ledger_entries`
//! was indexed three ways (its serial `entry_id`, `(account_id, account_seq)` and
//! `transfer_id`) and `ledger_requests` three (its key, `decided_seq` and
//! `transfer_id`). No statement looks an entry up by `entry_id` nor a record by
//! `decided_seq`: entries are read by book and sequence or by transfer, records by
//! key or by what they made, and `decided_seq` only orders records, which its
//! sequence already numbers uniquely. So:
//! - the entries' primary key is their place in their book, `(account_id,
//!   account_seq)`, which was already unique and not null, instead of
//!   `entry_id`; the column stays, numbered as before, in no index;
//! - `decided_seq` keeps its sequence without a unique index.
//!
//! Seven index entries per posting instead of ten: less B-tree work, and less
//! WAL (an index entry was about 91 of a posting's 2,682 bytes of WAL when
//! measured on 2026-12-07, BENCHMARKS.md).
//!
//! SQLite keeps its tables: its `entry_id` is the rowid, which costs no index, and
//! its records are numbered by their rowid.
//!
//! Expand-only: the previous release never reads by either column. The new key
//! is built in the migration's transaction, which holds off writes to
//! `ledger_entries` for as long as that takes.

use sea_orm::DbBackend;
use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

const POSTGRES: &[&str] = &[
    "ALTER TABLE ledger_entries DROP CONSTRAINT ledger_entries_pkey",
    "ALTER TABLE ledger_entries DROP CONSTRAINT ledger_entries_account_id_account_seq_key",
    "ALTER TABLE ledger_entries ADD CONSTRAINT ledger_entries_pkey PRIMARY KEY (account_id, account_seq)",
    "ALTER TABLE ledger_requests DROP CONSTRAINT ledger_requests_decided_seq_key",
];

#[sea_orm_migration::async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        super::run_on(manager, DbBackend::Postgres, POSTGRES).await
    }
}
