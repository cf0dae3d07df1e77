//! The journal: account books, transfers, entries and idempotency records. Entries
//! and transfers are append-only, enforced by triggers on both backends; the
//! no-overdraft rule is also a CHECK constraint, so that no code path can break it.

use sea_orm::{ConnectionTrait, DbBackend};
use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

/// Column types that differ between the backends.
struct Types {
    integer: &'static str,
    timestamp: &'static str,
    serial_key: &'static str,
}

const POSTGRES_TYPES: Types = Types {
    integer: "BIGINT",
    timestamp: "TIMESTAMPTZ",
    serial_key: "BIGSERIAL PRIMARY KEY",
};

const SQLITE_TYPES: Types = Types {
    integer: "INTEGER",
    timestamp: "TEXT",
    serial_key: "INTEGER PRIMARY KEY AUTOINCREMENT",
};

fn tables(types: &Types) -> Vec<String> {
    let Types {
        integer,
        timestamp,
        serial_key,
    } = types;
    vec![
        format!(
            "CREATE TABLE ledger_accounts (
                account_id TEXT PRIMARY KEY,
                owner_id TEXT,
                currency TEXT NOT NULL,
                kind TEXT NOT NULL CHECK (kind IN ('customer', 'settlement')),
                status TEXT NOT NULL CHECK (status IN ('active', 'frozen', 'closed')),
                balance_minor {integer} NOT NULL DEFAULT 0,
                entry_count {integer} NOT NULL DEFAULT 0,
                last_entry_hash TEXT NOT NULL,
                created_at {timestamp} NOT NULL,
                updated_at {timestamp} NOT NULL,
                CHECK (kind = 'settlement' OR balance_minor >= 0)
            )"
        ),
        format!(
            "CREATE TABLE ledger_transfers (
                transfer_id TEXT PRIMARY KEY,
                kind TEXT NOT NULL,
                from_account_id TEXT NOT NULL REFERENCES ledger_accounts (account_id),
                to_account_id TEXT NOT NULL REFERENCES ledger_accounts (account_id),
                amount_minor {integer} NOT NULL CHECK (amount_minor > 0),
                currency TEXT NOT NULL,
                description TEXT NOT NULL,
                reverses_transfer_id TEXT UNIQUE REFERENCES ledger_transfers (transfer_id),
                status TEXT NOT NULL,
                initiated_by TEXT NOT NULL,
                created_at {timestamp} NOT NULL,
                CHECK (from_account_id <> to_account_id)
            )"
        ),
        format!(
            "CREATE TABLE ledger_entries (
                entry_id {serial_key},
                transfer_id TEXT NOT NULL REFERENCES ledger_transfers (transfer_id),
                account_id TEXT NOT NULL REFERENCES ledger_accounts (account_id),
                account_seq {integer} NOT NULL,
                amount_minor {integer} NOT NULL CHECK (amount_minor <> 0),
                balance_after_minor {integer} NOT NULL,
                currency TEXT NOT NULL,
                counterparty_account_id TEXT NOT NULL,
                description TEXT NOT NULL,
                prev_hash TEXT NOT NULL,
                entry_hash TEXT NOT NULL,
                created_at {timestamp} NOT NULL,
                UNIQUE (account_id, account_seq)
            )"
        ),
        "CREATE INDEX ledger_entries_transfer ON ledger_entries (transfer_id)".to_owned(),
        format!(
            "CREATE TABLE ledger_idempotency_keys (
                scope TEXT NOT NULL,
                idempotency_key TEXT NOT NULL,
                request_hash TEXT NOT NULL,
                transfer_id TEXT NOT NULL REFERENCES ledger_transfers (transfer_id),
                created_at {timestamp} NOT NULL,
                PRIMARY KEY (scope, idempotency_key)
            )"
        ),
    ]
}

const POSTGRES_TRIGGERS: &[&str] = &[
    r"CREATE FUNCTION ledger_reject_change() RETURNS trigger LANGUAGE plpgsql AS $$
      BEGIN
        RAISE EXCEPTION 'the ledger journal is append-only: % on % refused', TG_OP, TG_TABLE_NAME;
      END
      $$",
    r"CREATE TRIGGER ledger_entries_append_only BEFORE UPDATE OR DELETE ON ledger_entries
      FOR EACH ROW EXECUTE FUNCTION ledger_reject_change()",
    r"CREATE TRIGGER ledger_entries_no_truncate BEFORE TRUNCATE ON ledger_entries
      FOR EACH STATEMENT EXECUTE FUNCTION ledger_reject_change()",
    r"CREATE TRIGGER ledger_transfers_append_only BEFORE UPDATE OR DELETE ON ledger_transfers
      FOR EACH ROW EXECUTE FUNCTION ledger_reject_change()",
    r"CREATE TRIGGER ledger_transfers_no_truncate BEFORE TRUNCATE ON ledger_transfers
      FOR EACH STATEMENT EXECUTE FUNCTION ledger_reject_change()",
];

const SQLITE_TRIGGERS: &[&str] = &[
    r"CREATE TRIGGER ledger_entries_no_update BEFORE UPDATE ON ledger_entries
      BEGIN SELECT RAISE(ABORT, 'the ledger journal is append-only'); END",
    r"CREATE TRIGGER ledger_entries_no_delete BEFORE DELETE ON ledger_entries
      BEGIN SELECT RAISE(ABORT, 'the ledger journal is append-only'); END",
    r"CREATE TRIGGER ledger_transfers_no_update BEFORE UPDATE ON ledger_transfers
      BEGIN SELECT RAISE(ABORT, 'the ledger journal is append-only'); END",
    r"CREATE TRIGGER ledger_transfers_no_delete BEFORE DELETE ON ledger_transfers
      BEGIN SELECT RAISE(ABORT, 'the ledger journal is append-only'); END",
];

#[sea_orm_migration::async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        let (types, triggers) = match db.get_database_backend() {
            DbBackend::Postgres => (&POSTGRES_TYPES, POSTGRES_TRIGGERS),
            _ => (&SQLITE_TYPES, SQLITE_TRIGGERS),
        };
        for statement in tables(types) {
            db.execute_unprepared(&statement).await?;
        }
        for statement in triggers {
            db.execute_unprepared(statement).await?;
        }
        Ok(())
    }
}
