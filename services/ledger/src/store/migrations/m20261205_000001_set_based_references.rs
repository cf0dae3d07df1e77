//! The journal's references checked once per statement instead of once per row.
//!
//! A row-level foreign key on PostgreSQL runs one `SELECT … FOR KEY SHARE` per
//! inserted row and per key. A commit group inserts every row of its postings in
//! one statement, so those checks were seven queries per posting, and profiling
//! the ledger's database backend under load put a third of its time in them
//! (`AfterTriggerEndQuery`). Each table that a group writes now checks all the
//! rows a statement inserted in one query, from the statement's transition table,
//! with one index lookup per row and key, and the row-level foreign keys go.
//!
//! What a foreign key also gave is kept by refusing what could break a reference
//! afterwards: transfers, holds and their resolutions were append-only already,
//! and the books (`ledger_accounts`) can no longer be deleted, truncated, or have
//! their id changed (a book is closed by its status, never removed). With nothing
//! referenced ever going away, no lock on the referenced row is needed either.
//!
//! SQLite keeps its foreign keys, which it checks in process at little cost, and
//! gains the same guard on its books.
//!
//! Expand-only: the previous release writes the same rows and never deletes a book.

use sea_orm::{ConnectionTrait, DbBackend};
use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

/// The row-level foreign keys this migration replaces, by table.
const POSTGRES_FOREIGN_KEYS: &[(&str, &str)] = &[
    ("ledger_entries", "ledger_entries_account_id_fkey"),
    ("ledger_entries", "ledger_entries_transfer_id_fkey"),
    ("ledger_transfers", "ledger_transfers_from_account_id_fkey"),
    ("ledger_transfers", "ledger_transfers_to_account_id_fkey"),
    (
        "ledger_transfers",
        "ledger_transfers_reverses_transfer_id_fkey",
    ),
    ("ledger_requests", "ledger_requests_transfer_id_fkey"),
    ("ledger_requests", "ledger_requests_hold_id_fkey"),
    ("ledger_holds", "ledger_holds_from_account_id_fkey"),
    ("ledger_holds", "ledger_holds_to_account_id_fkey"),
    (
        "ledger_hold_resolutions",
        "ledger_hold_resolutions_hold_id_fkey",
    ),
];

/// Each checked table: the condition under which an inserted row `n` names
/// something that does not exist. Every lookup is a scalar subquery with
/// `LIMIT 1`, which the planner runs as one index probe per row whatever it
/// estimates of the transition table (a join it might choose instead would read
/// the whole referenced table, and plpgsql keeps the plan it made first).
const POSTGRES_CHECKS: &[(&str, &str)] = &[
    (
        "ledger_entries",
        "(SELECT 1 FROM ledger_accounts a WHERE a.account_id = n.account_id LIMIT 1) IS NULL
         OR (SELECT 1 FROM ledger_transfers t WHERE t.transfer_id = n.transfer_id LIMIT 1) IS NULL",
    ),
    (
        "ledger_transfers",
        "(SELECT 1 FROM ledger_accounts a WHERE a.account_id = n.from_account_id LIMIT 1) IS NULL
         OR (SELECT 1 FROM ledger_accounts a WHERE a.account_id = n.to_account_id LIMIT 1) IS NULL
         OR (n.reverses_transfer_id IS NOT NULL AND (SELECT 1 FROM ledger_transfers t
               WHERE t.transfer_id = n.reverses_transfer_id LIMIT 1) IS NULL)",
    ),
    (
        "ledger_requests",
        "(n.transfer_id IS NOT NULL AND (SELECT 1 FROM ledger_transfers t
               WHERE t.transfer_id = n.transfer_id LIMIT 1) IS NULL)
         OR (n.hold_id IS NOT NULL AND (SELECT 1 FROM ledger_holds h
               WHERE h.hold_id = n.hold_id LIMIT 1) IS NULL)",
    ),
    (
        "ledger_holds",
        "(SELECT 1 FROM ledger_accounts a WHERE a.account_id = n.from_account_id LIMIT 1) IS NULL
         OR (SELECT 1 FROM ledger_accounts a WHERE a.account_id = n.to_account_id LIMIT 1) IS NULL",
    ),
    (
        "ledger_hold_resolutions",
        "(SELECT 1 FROM ledger_holds h WHERE h.hold_id = n.hold_id LIMIT 1) IS NULL",
    ),
];

fn postgres_check(table: &str, dangling: &str) -> [String; 2] {
    [
        format!(
            "CREATE FUNCTION {table}_check_references() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
               IF EXISTS (SELECT 1 FROM inserted n WHERE {dangling}) THEN
                 RAISE EXCEPTION USING ERRCODE = 'foreign_key_violation',
                   MESSAGE = 'a row inserted into {table} names a row that does not exist';
               END IF;
               RETURN NULL;
             END
             $$"
        ),
        format!(
            "CREATE TRIGGER {table}_references AFTER INSERT ON {table}
             REFERENCING NEW TABLE AS inserted
             FOR EACH STATEMENT EXECUTE FUNCTION {table}_check_references()"
        ),
    ]
}

const POSTGRES_KEEP_BOOKS: &[&str] = &[
    r"CREATE FUNCTION ledger_accounts_keep() RETURNS trigger LANGUAGE plpgsql AS $$
      BEGIN
        RAISE EXCEPTION 'ledger books are never removed or renamed: % on ledger_accounts refused', TG_OP;
      END
      $$",
    r"CREATE TRIGGER ledger_accounts_no_delete BEFORE DELETE ON ledger_accounts
      FOR EACH ROW EXECUTE FUNCTION ledger_accounts_keep()",
    r"CREATE TRIGGER ledger_accounts_no_rename BEFORE UPDATE OF account_id ON ledger_accounts
      FOR EACH ROW WHEN (NEW.account_id IS DISTINCT FROM OLD.account_id)
      EXECUTE FUNCTION ledger_accounts_keep()",
    r"CREATE TRIGGER ledger_accounts_no_truncate BEFORE TRUNCATE ON ledger_accounts
      FOR EACH STATEMENT EXECUTE FUNCTION ledger_accounts_keep()",
];

const SQLITE_KEEP_BOOKS: &[&str] = &[
    r"CREATE TRIGGER ledger_accounts_no_delete BEFORE DELETE ON ledger_accounts
      BEGIN SELECT RAISE(ABORT, 'ledger books are never removed or renamed'); END",
    r"CREATE TRIGGER ledger_accounts_no_rename BEFORE UPDATE OF account_id ON ledger_accounts
      WHEN NEW.account_id IS NOT OLD.account_id
      BEGIN SELECT RAISE(ABORT, 'ledger books are never removed or renamed'); END",
];

#[sea_orm_migration::async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        if db.get_database_backend() != DbBackend::Postgres {
            for statement in SQLITE_KEEP_BOOKS {
                db.execute_unprepared(statement).await?;
            }
            return Ok(());
        }
        for statement in POSTGRES_KEEP_BOOKS {
            db.execute_unprepared(statement).await?;
        }
        for (table, dangling) in POSTGRES_CHECKS {
            for statement in postgres_check(table, dangling) {
                db.execute_unprepared(&statement).await?;
            }
        }
        for (table, constraint) in POSTGRES_FOREIGN_KEYS {
            db.execute_unprepared(&format!(
                "ALTER TABLE {table} DROP CONSTRAINT IF EXISTS {constraint}"
            ))
            .await?;
        }
        Ok(())
    }
}
