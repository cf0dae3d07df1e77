//! Each entry is checked against its transfer's two books (PostgreSQL).
//!
//! The statement-level check of `ledger_entries` looked up, for every inserted
//! row, its book and its transfer: two index probes per entry, four per posting.
//! An entry is always on one of its transfer's two books, and the transfer's own
//! check has found both books, which are never removed; so one probe, the
//! transfer's, now checks both references, and refuses more: an entry on a book
//! its transfer does not name.
//!
//! SQLite keeps its foreign keys.
//!
//! Expand-only: the previous release writes every entry on its transfer's books.

use sea_orm::{ConnectionTrait, DbBackend};
use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

const CHECK: &str = r"CREATE OR REPLACE FUNCTION ledger_entries_check_references() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
      IF EXISTS (SELECT 1 FROM inserted n
                 WHERE (SELECT 1 FROM ledger_transfers t
                        WHERE t.transfer_id = n.transfer_id
                          AND n.account_id IN (t.from_account_id, t.to_account_id)
                        LIMIT 1) IS NULL) THEN
        RAISE EXCEPTION USING ERRCODE = 'foreign_key_violation',
          MESSAGE = 'a row inserted into ledger_entries names a transfer that does not exist or a book its transfer does not name';
      END IF;
      RETURN NULL;
    END
    $$";

#[sea_orm_migration::async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        if db.get_database_backend() == DbBackend::Postgres {
            db.execute_unprepared(CHECK).await?;
        }
        Ok(())
    }
}
