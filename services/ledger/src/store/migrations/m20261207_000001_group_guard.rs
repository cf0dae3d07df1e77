//! The guard of a commit group written without a lock round trip (PostgreSQL).
//!
//! A group planned against the books as this process last committed them is
//! written in one autocommit statement that locks those books in sorted order and
//! checks that each still is what the plan read. `ledger_require_current_books`
//! raises a serialization failure when one is not, which rolls back the whole
//! statement: nothing of the group is written, and the ledger plans it again on
//! books it locks and reads first.
//!
//! SQLite has no use for it: its writers take the whole file before reading.
//!
//! Expand-only: a new function that the previous release never calls.

use sea_orm::{ConnectionTrait, DbBackend};
use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

const GUARD: &str = r"CREATE OR REPLACE FUNCTION ledger_require_current_books(current boolean)
    RETURNS boolean LANGUAGE plpgsql VOLATILE AS $$
    BEGIN
      IF current IS NOT TRUE THEN
        RAISE EXCEPTION 'a book changed after the commit group was planned'
          USING ERRCODE = 'serialization_failure';
      END IF;
      RETURN true;
    END $$";

#[sea_orm_migration::async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        if db.get_database_backend() == DbBackend::Postgres {
            db.execute_unprepared(GUARD).await?;
        }
        Ok(())
    }
}
