//! Request records: one append-only row per keyed posting request, whatever it
//! ended as: the transfer it made, or the code and detail of its refusal. They
//! replace `ledger_idempotency_keys`, which only knew requests that posted, so a
//! refused request retried after the account was funded would post. Existing keys
//! are copied over as posted records.
//!
//! The old table is dropped in the same migration rather than left behind: a
//! ledger replica of the previous version still running during the rollout then
//! fails its postings loudly instead of recording keys the new version never reads.

use sea_orm::{ConnectionTrait, DbBackend};
use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

/// `decided_seq` numbers the records in the order they were decided (on SQLite
/// the table's rowid does, as rows are never deleted), for audits and tests.
fn table(timestamp: &str, sequence: &str) -> String {
    format!(
        "CREATE TABLE ledger_requests (
            scope TEXT NOT NULL,{sequence}
            idempotency_key TEXT NOT NULL,
            request_hash TEXT NOT NULL,
            transfer_id TEXT REFERENCES ledger_transfers (transfer_id),
            refusal_code TEXT,
            refusal_detail TEXT,
            created_at {timestamp} NOT NULL,
            PRIMARY KEY (scope, idempotency_key),
            CHECK ((transfer_id IS NULL) <> (refusal_code IS NULL)),
            CHECK ((refusal_code IS NULL) = (refusal_detail IS NULL))
        )"
    )
}

const COPY: &str = "INSERT INTO ledger_requests (scope, idempotency_key, request_hash, transfer_id, created_at)
     SELECT scope, idempotency_key, request_hash, transfer_id, created_at FROM ledger_idempotency_keys";

const POSTGRES_TRIGGERS: &[&str] = &[
    r"CREATE TRIGGER ledger_requests_append_only BEFORE UPDATE OR DELETE ON ledger_requests
      FOR EACH ROW EXECUTE FUNCTION ledger_reject_change()",
    r"CREATE TRIGGER ledger_requests_no_truncate BEFORE TRUNCATE ON ledger_requests
      FOR EACH STATEMENT EXECUTE FUNCTION ledger_reject_change()",
];

const SQLITE_TRIGGERS: &[&str] = &[
    r"CREATE TRIGGER ledger_requests_no_update BEFORE UPDATE ON ledger_requests
      BEGIN SELECT RAISE(ABORT, 'the ledger journal is append-only'); END",
    r"CREATE TRIGGER ledger_requests_no_delete BEFORE DELETE ON ledger_requests
      BEGIN SELECT RAISE(ABORT, 'the ledger journal is append-only'); END",
];

#[sea_orm_migration::async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        let (timestamp, sequence, triggers) = match db.get_database_backend() {
            DbBackend::Postgres => (
                "TIMESTAMPTZ",
                "\n            decided_seq BIGSERIAL NOT NULL UNIQUE,",
                POSTGRES_TRIGGERS,
            ),
            _ => ("TEXT", "", SQLITE_TRIGGERS),
        };
        db.execute_unprepared(&table(timestamp, sequence)).await?;
        db.execute_unprepared(COPY).await?;
        db.execute_unprepared("DROP TABLE ledger_idempotency_keys")
            .await?;
        for statement in triggers {
            db.execute_unprepared(statement).await?;
        }
        Ok(())
    }
}
