//! Holds and batches.
//!
//! - `ledger_holds`: one row per hold placed, its terms; `ledger_hold_resolutions`:
//!   at most one row per hold, how it ended (posted with the amount that moved,
//!   voided, expired). Both are append-only: a hold's life is the events
//!   appended, never an update. A posted hold's transfer and entries go to the
//!   journal under the hold's id.
//! - `ledger_accounts.pending_debits_minor`: what the book's pending holds
//!   reserve, kept beside the balance under the same row lock; a customer's
//!   balance never drops below it.
//! - `ledger_transfers.batch_id` and `batch_index`: the batch a transfer was
//!   posted in (named by its first transfer's id) and its place there.
//! - `ledger_requests` gains the outcomes a request can now have: the hold it
//!   placed or voided (`hold_id`), the batch it posted (`batch_id`), and a
//!   refused batch's items (`refusal_items`, JSON); exactly one outcome per
//!   record. SQLite cannot change a table's CHECK, so there the table is rebuilt
//!   (its rows copied in their order) and its triggers made again.
//!
//! Expand only: every column is new and nullable or defaulted, so a replica of
//! the previous version keeps posting plain transfers during a rolling deploy.

use sea_orm::{ConnectionTrait, DbBackend};
use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

fn hold_tables(integer: &str, timestamp: &str) -> Vec<String> {
    vec![
        format!(
            "CREATE TABLE ledger_holds (
                hold_id TEXT PRIMARY KEY,
                from_account_id TEXT NOT NULL REFERENCES ledger_accounts (account_id),
                to_account_id TEXT NOT NULL REFERENCES ledger_accounts (account_id),
                amount_minor {integer} NOT NULL CHECK (amount_minor > 0),
                currency TEXT NOT NULL,
                description TEXT NOT NULL,
                initiated_by TEXT NOT NULL,
                created_at {timestamp} NOT NULL,
                expires_at {timestamp} NOT NULL,
                CHECK (from_account_id <> to_account_id)
            )"
        ),
        // An account's holds by expiry: its pending ones are those not yet
        // expired (at most the longest timeout back), and those due to expire.
        "CREATE INDEX ledger_holds_from ON ledger_holds (from_account_id, expires_at)".to_owned(),
        // Every account's holds by expiry, for the sweep.
        "CREATE INDEX ledger_holds_expiry ON ledger_holds (expires_at)".to_owned(),
        format!(
            "CREATE TABLE ledger_hold_resolutions (
                hold_id TEXT PRIMARY KEY REFERENCES ledger_holds (hold_id),
                state TEXT NOT NULL CHECK (state IN ('posted', 'voided', 'expired')),
                amount_minor {integer} NOT NULL CHECK (amount_minor >= 0),
                resolved_at {timestamp} NOT NULL,
                CHECK ((state = 'posted') = (amount_minor > 0))
            )"
        ),
        "ALTER TABLE ledger_transfers ADD COLUMN batch_id TEXT".to_owned(),
        format!("ALTER TABLE ledger_transfers ADD COLUMN batch_index {integer}"),
        "CREATE INDEX ledger_transfers_batch ON ledger_transfers (batch_id, batch_index)"
            .to_owned(),
    ]
}

const POSTGRES: &[&str] = &[
    "ALTER TABLE ledger_accounts
       ADD COLUMN pending_debits_minor BIGINT NOT NULL DEFAULT 0 CHECK (pending_debits_minor >= 0),
       ADD CONSTRAINT ledger_accounts_available CHECK (kind = 'settlement' OR balance_minor >= pending_debits_minor)",
    "ALTER TABLE ledger_requests
       ADD COLUMN hold_id TEXT REFERENCES ledger_holds (hold_id),
       ADD COLUMN batch_id TEXT,
       ADD COLUMN refusal_items TEXT,
       DROP CONSTRAINT IF EXISTS ledger_requests_check,
       ADD CONSTRAINT ledger_requests_one_outcome
         CHECK (num_nonnulls(transfer_id, hold_id, batch_id, refusal_code) = 1)",
    r"CREATE TRIGGER ledger_holds_append_only BEFORE UPDATE OR DELETE ON ledger_holds
      FOR EACH ROW EXECUTE FUNCTION ledger_reject_change()",
    r"CREATE TRIGGER ledger_holds_no_truncate BEFORE TRUNCATE ON ledger_holds
      FOR EACH STATEMENT EXECUTE FUNCTION ledger_reject_change()",
    r"CREATE TRIGGER ledger_hold_resolutions_append_only BEFORE UPDATE OR DELETE ON ledger_hold_resolutions
      FOR EACH ROW EXECUTE FUNCTION ledger_reject_change()",
    r"CREATE TRIGGER ledger_hold_resolutions_no_truncate BEFORE TRUNCATE ON ledger_hold_resolutions
      FOR EACH STATEMENT EXECUTE FUNCTION ledger_reject_change()",
];

/// SQLite: the account column and its check, the rebuilt request records, and the append-only triggers of all
/// three tables, including the refusal of `REPLACE` (see
/// m20261202_000001_refuse_replace).
const SQLITE: &[&str] = &[
    "ALTER TABLE ledger_accounts ADD COLUMN pending_debits_minor INTEGER NOT NULL DEFAULT 0
       CHECK (pending_debits_minor >= 0 AND (kind = 'settlement' OR balance_minor >= pending_debits_minor))",
    // The old table's triggers go first, by name: left to go with their table
    // they linger in the connection's schema and their names stay taken.
    "DROP TRIGGER ledger_requests_no_update",
    "DROP TRIGGER ledger_requests_no_delete",
    "DROP TRIGGER ledger_requests_no_replace",
    "ALTER TABLE ledger_requests RENAME TO ledger_requests_previous",
    "CREATE TABLE ledger_requests (
        scope TEXT NOT NULL,
        idempotency_key TEXT NOT NULL,
        request_hash TEXT NOT NULL,
        transfer_id TEXT REFERENCES ledger_transfers (transfer_id),
        hold_id TEXT REFERENCES ledger_holds (hold_id),
        batch_id TEXT,
        refusal_code TEXT,
        refusal_detail TEXT,
        refusal_items TEXT,
        created_at TEXT NOT NULL,
        PRIMARY KEY (scope, idempotency_key),
        CHECK ((transfer_id IS NOT NULL) + (hold_id IS NOT NULL) + (batch_id IS NOT NULL) + (refusal_code IS NOT NULL) = 1),
        CHECK ((refusal_code IS NULL) = (refusal_detail IS NULL))
    )",
    "INSERT INTO ledger_requests (scope, idempotency_key, request_hash, transfer_id, refusal_code, refusal_detail, created_at)
     SELECT scope, idempotency_key, request_hash, transfer_id, refusal_code, refusal_detail, created_at
     FROM ledger_requests_previous ORDER BY rowid",
    "DROP TABLE ledger_requests_previous",
    r"CREATE TRIGGER ledger_requests_no_update BEFORE UPDATE ON ledger_requests
      BEGIN SELECT RAISE(ABORT, 'the ledger journal is append-only'); END",
    r"CREATE TRIGGER ledger_requests_no_delete BEFORE DELETE ON ledger_requests
      BEGIN SELECT RAISE(ABORT, 'the ledger journal is append-only'); END",
    r"CREATE TRIGGER ledger_requests_no_replace BEFORE INSERT ON ledger_requests
      WHEN EXISTS (SELECT 1 FROM ledger_requests
                   WHERE scope = NEW.scope AND idempotency_key = NEW.idempotency_key)
      BEGIN SELECT RAISE(ABORT, 'the ledger journal is append-only'); END",
    r"CREATE TRIGGER ledger_holds_no_update BEFORE UPDATE ON ledger_holds
      BEGIN SELECT RAISE(ABORT, 'the ledger journal is append-only'); END",
    r"CREATE TRIGGER ledger_holds_no_delete BEFORE DELETE ON ledger_holds
      BEGIN SELECT RAISE(ABORT, 'the ledger journal is append-only'); END",
    r"CREATE TRIGGER ledger_holds_no_replace BEFORE INSERT ON ledger_holds
      WHEN EXISTS (SELECT 1 FROM ledger_holds WHERE hold_id = NEW.hold_id)
      BEGIN SELECT RAISE(ABORT, 'the ledger journal is append-only'); END",
    r"CREATE TRIGGER ledger_hold_resolutions_no_update BEFORE UPDATE ON ledger_hold_resolutions
      BEGIN SELECT RAISE(ABORT, 'the ledger journal is append-only'); END",
    r"CREATE TRIGGER ledger_hold_resolutions_no_delete BEFORE DELETE ON ledger_hold_resolutions
      BEGIN SELECT RAISE(ABORT, 'the ledger journal is append-only'); END",
    r"CREATE TRIGGER ledger_hold_resolutions_no_replace BEFORE INSERT ON ledger_hold_resolutions
      WHEN EXISTS (SELECT 1 FROM ledger_hold_resolutions WHERE hold_id = NEW.hold_id)
      BEGIN SELECT RAISE(ABORT, 'the ledger journal is append-only'); END",
];

#[sea_orm_migration::async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        let (integer, timestamp, rest) = match db.get_database_backend() {
            DbBackend::Postgres => ("BIGINT", "TIMESTAMPTZ", POSTGRES),
            _ => ("INTEGER", "TEXT", SQLITE),
        };
        for statement in hold_tables(integer, timestamp) {
            db.execute_unprepared(&statement).await?;
        }
        for statement in rest {
            db.execute_unprepared(statement).await?;
        }
        Ok(())
    }
}
