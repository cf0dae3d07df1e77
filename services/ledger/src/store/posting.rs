//! A commit group's transaction. One transaction per group, of a fixed shape:
//!
//! 1. create the settlement books the group needs, the first time a currency is
//!    seen by this process (they are never removed, so once is enough);
//! 2. lock every book the group names, in sorted id order, in one statement
//!    (`SELECT … WHERE account_id = ANY($1) ORDER BY account_id FOR UPDATE` on
//!    PostgreSQL; SQLite's `BEGIN IMMEDIATE` has locked the whole file already, and
//!    it reads them with `json_each` over the ids);
//! 3. read the request records of the group's keys, with their transfers, and
//!    which of the transfers the group reverses have a reversal already;
//! 4. plan (`bank_domain::ledger::plan`), in memory;
//! 5. insert the transfers, entries and request records and update the books: on
//!    PostgreSQL in one statement of data-modifying CTEs, each table from arrays
//!    (`UNNEST`, so the statement text never depends on the group's size); on
//!    SQLite one statement per table, its rows read from a JSON array with
//!    `json_each`;
//! 6. commit, once. Only then are the callers answered.
//!
//! Serialization failures, deadlocks, a busy SQLite file and a key inserted by
//! another replica meanwhile (a unique violation) roll the group back and run it
//! again from step 2, so the plan always decides on what is committed.

use std::{collections::HashSet, sync::Arc};

use bank_domain::ledger::plan::{
    self, Facts, KnownRequest, Outcome, Proposal, RecordKey, RecordedOutcome, Refusal, Writes,
};
use bank_kit::{ErrorCode, money::Currency};
use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait, DatabaseTransaction, DbBackend, QueryResult, Value};
use serde_json::json;

use super::{
    LedgerStore, StoreError, account_columns, account_from_row, corrupt, statement,
    transfer_from_row,
};
use crate::domain::{AccountId, GENESIS_HASH, IdempotencyKey, TransferId};

const ENSURE_SETTLEMENT: &str = "INSERT INTO ledger_accounts (account_id, owner_id, currency, kind, status, balance_minor, entry_count, last_entry_hash, created_at, updated_at)
     VALUES ($1, NULL, $2, 'settlement', 'active', 0, 0, $3, $4, $4)
     ON CONFLICT (account_id) DO NOTHING";

const LOCK_BOOKS_POSTGRES: &str = concat!(
    "SELECT ",
    account_columns!(),
    " FROM ledger_accounts WHERE account_id = ANY($1::text[]) ORDER BY account_id FOR UPDATE"
);

/// The request records' columns, with the transfer a posted one made.
macro_rules! request_columns {
    () => {
        "r.scope, r.idempotency_key, r.request_hash, r.refusal_code, r.refusal_detail,
         t.transfer_id, t.kind, t.from_account_id, t.to_account_id, t.amount_minor,
         t.currency, t.description, t.reverses_transfer_id, t.created_at"
    };
}

/// One index lookup per key: the `LIMIT 1` keeps the planner from turning the
/// lateral subquery into a join that scans the whole table (a plan it would keep,
/// once prepared, while the table grows).
const SELECT_REQUESTS_POSTGRES: &str = concat!(
    "SELECT ",
    request_columns!(),
    " FROM UNNEST($1::text[], $2::text[]) AS k (scope, idempotency_key)
       JOIN LATERAL (SELECT * FROM ledger_requests
                     WHERE scope = k.scope AND idempotency_key = k.idempotency_key
                     LIMIT 1) AS r ON true
       LEFT JOIN ledger_transfers t ON t.transfer_id = r.transfer_id"
);

const SELECT_REQUESTS_SQLITE: &str = concat!(
    "SELECT ",
    request_columns!(),
    " FROM json_each($1) AS k
       JOIN ledger_requests r ON r.scope = k.value ->> 0 AND r.idempotency_key = k.value ->> 1
       LEFT JOIN ledger_transfers t ON t.transfer_id = r.transfer_id"
);

const LOCK_BOOKS_SQLITE: &str = concat!(
    "SELECT ",
    account_columns!(),
    " FROM ledger_accounts WHERE account_id IN (SELECT value FROM json_each($1)) ORDER BY account_id"
);

const SELECT_REVERSED_POSTGRES: &str = "SELECT reverses_transfer_id FROM ledger_transfers WHERE reverses_transfer_id = ANY($1::text[])";

const SELECT_REVERSED_SQLITE: &str = "SELECT reverses_transfer_id FROM ledger_transfers
     WHERE reverses_transfer_id IN (SELECT value FROM json_each($1))";

/// Every row of a group in one statement, so the writes cost one round trip:
/// transfers, entries, book updates and request records, each from arrays. The
/// foreign keys of entries and records on the group's own transfers are checked
/// at the end of the statement, when those transfers are in place.
const WRITE_GROUP_POSTGRES: &str = "WITH new_transfers AS (
       INSERT INTO ledger_transfers (transfer_id, kind, from_account_id, to_account_id, amount_minor, currency, description, reverses_transfer_id, status, initiated_by, created_at)
       SELECT t.id, t.kind, t.from_id, t.to_id, t.amount, t.currency, t.description, NULLIF(t.reverses, ''), 'posted', t.initiated_by, $30
       FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[], $6::text[], $7::text[], $8::text[], $9::text[])
            AS t (id, kind, from_id, to_id, amount, currency, description, reverses, initiated_by)
     ), new_entries AS (
       INSERT INTO ledger_entries (account_id, account_seq, transfer_id, amount_minor, balance_after_minor, currency, counterparty_account_id, description, prev_hash, entry_hash, created_at)
       SELECT e.account_id, e.seq, e.transfer_id, e.amount, e.balance_after, e.currency, e.counterparty, e.description, e.prev_hash, e.entry_hash, $30
       FROM UNNEST($10::text[], $11::bigint[], $12::text[], $13::bigint[], $14::bigint[], $15::text[], $16::text[], $17::text[], $18::text[], $19::text[])
            AS e (account_id, seq, transfer_id, amount, balance_after, currency, counterparty, description, prev_hash, entry_hash)
     ), updated_books AS (
       UPDATE ledger_accounts AS a
       SET balance_minor = b.balance, entry_count = b.entry_count, last_entry_hash = b.last_hash, updated_at = $30
       FROM UNNEST($20::text[], $21::bigint[], $22::bigint[], $23::text[]) AS b (account_id, balance, entry_count, last_hash)
       WHERE a.account_id = ANY($20::text[]) AND a.account_id = b.account_id
     )
     INSERT INTO ledger_requests (scope, idempotency_key, request_hash, transfer_id, refusal_code, refusal_detail, created_at)
     SELECT r.scope, r.idempotency_key, r.request_hash, NULLIF(r.transfer_id, ''), NULLIF(r.code, ''), NULLIF(r.detail, ''), $30
     FROM UNNEST($24::text[], $25::text[], $26::text[], $27::text[], $28::text[], $29::text[])
          AS r (scope, idempotency_key, request_hash, transfer_id, code, detail)";

/// SQLite's forms of the group's writes: one statement per table, each reading
/// its rows from a JSON array of arrays with `json_each`, so a group costs four
/// statements, not one per row.
const INSERT_TRANSFERS_SQLITE: &str = "INSERT INTO ledger_transfers (transfer_id, kind, from_account_id, to_account_id, amount_minor, currency, description, reverses_transfer_id, status, initiated_by, created_at)
     SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4, value ->> 5, value ->> 6, value ->> 7, 'posted', value ->> 8, $2
     FROM json_each($1)";

const INSERT_ENTRIES_SQLITE: &str = "INSERT INTO ledger_entries (account_id, account_seq, transfer_id, amount_minor, balance_after_minor, currency, counterparty_account_id, description, prev_hash, entry_hash, created_at)
     SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4, value ->> 5, value ->> 6, value ->> 7, value ->> 8, value ->> 9, $2
     FROM json_each($1)";

const UPDATE_BOOKS_SQLITE: &str = "UPDATE ledger_accounts
     SET balance_minor = b.value ->> 1, entry_count = b.value ->> 2, last_entry_hash = b.value ->> 3, updated_at = $2
     FROM json_each($1) AS b WHERE ledger_accounts.account_id = b.value ->> 0";

const INSERT_REQUESTS_SQLITE: &str = "INSERT INTO ledger_requests (scope, idempotency_key, request_hash, transfer_id, refusal_code, refusal_detail, created_at)
     SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4, value ->> 5, $2
     FROM json_each($1)";

impl LedgerStore {
    /// Decides and commits one group of postings, answering each in order. The
    /// whole group is retried on a transient conflict; the outcomes returned are
    /// those of the attempt that committed.
    pub async fn commit_group(&self, proposals: &[Proposal]) -> Result<Vec<Outcome>, StoreError> {
        let currencies: Arc<[Currency]> = self.unsettled_currencies(proposals).into();
        let group: Arc<[Proposal]> = proposals.into();
        let outcomes = self
            .write_with_retries(|txn| {
                let (group, currencies) = (Arc::clone(&group), Arc::clone(&currencies));
                Box::pin(async move { group_in(txn, &group, &currencies).await })
            })
            .await?;
        self.mark_settled(&currencies);
        Ok(outcomes)
    }

    fn unsettled_currencies(&self, proposals: &[Proposal]) -> Vec<Currency> {
        let settled = self
            .settled
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        plan::settlement_currencies(proposals)
            .into_iter()
            .filter(|currency| !settled.contains(currency))
            .collect()
    }

    fn mark_settled(&self, currencies: &[Currency]) {
        let mut settled = self
            .settled
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        settled.extend(currencies.iter().copied());
    }
}

async fn group_in(
    txn: &DatabaseTransaction,
    proposals: &[Proposal],
    currencies: &[Currency],
) -> Result<Vec<Outcome>, StoreError> {
    let backend = txn.get_database_backend();
    let now = bank_kit::time::now();
    for currency in currencies {
        txn.execute_raw(statement(
            backend,
            ENSURE_SETTLEMENT,
            [
                AccountId::settlement(*currency).to_string().into(),
                currency.as_str().into(),
                GENESIS_HASH.into(),
                now.into(),
            ],
        ))
        .await?;
    }
    let facts = Facts {
        books: lock_books(txn, &plan::books_to_lock(proposals)).await?,
        requests: read_requests(txn, &plan::keys_to_read(proposals)).await?,
        reversed: read_reversed(txn, &plan::reversals_to_read(proposals)).await?,
    };
    let planned = plan::plan(proposals, facts, now);
    write(txn, &planned.writes, now).await?;
    Ok(planned.outcomes)
}

async fn lock_books(
    txn: &DatabaseTransaction,
    ids: &[AccountId],
) -> Result<std::collections::BTreeMap<AccountId, crate::domain::LedgerAccount>, StoreError> {
    let mut books = std::collections::BTreeMap::new();
    match txn.get_database_backend() {
        DbBackend::Postgres => {
            let rows = txn
                .query_all_raw(statement(
                    DbBackend::Postgres,
                    LOCK_BOOKS_POSTGRES,
                    [strings(ids.iter().map(ToString::to_string))],
                ))
                .await?;
            for row in &rows {
                let book = account_from_row(row)?;
                books.insert(book.account_id, book);
            }
        }
        backend => {
            let rows = txn
                .query_all_raw(statement(
                    backend,
                    LOCK_BOOKS_SQLITE,
                    [json_rows(ids.iter().map(|id| json!(id.to_string())))],
                ))
                .await?;
            for row in &rows {
                let book = account_from_row(row)?;
                books.insert(book.account_id, book);
            }
        }
    }
    Ok(books)
}

async fn read_requests(
    txn: &DatabaseTransaction,
    keys: &[RecordKey],
) -> Result<std::collections::HashMap<RecordKey, KnownRequest>, StoreError> {
    let backend = txn.get_database_backend();
    let rows: Vec<QueryResult> = match backend {
        DbBackend::Postgres => {
            txn.query_all_raw(statement(
                backend,
                SELECT_REQUESTS_POSTGRES,
                [
                    strings(keys.iter().map(|key| key.scope.clone())),
                    strings(
                        keys.iter()
                            .map(|key| key.idempotency_key.as_str().to_owned()),
                    ),
                ],
            ))
            .await?
        }
        _ => {
            txn.query_all_raw(statement(
                backend,
                SELECT_REQUESTS_SQLITE,
                [json_rows(keys.iter().map(|key| {
                    json!([key.scope, key.idempotency_key.as_str()])
                }))],
            ))
            .await?
        }
    };
    rows.iter().map(known_request_from_row).collect()
}

fn known_request_from_row(row: &QueryResult) -> Result<(RecordKey, KnownRequest), StoreError> {
    let scope: String = row.try_get("", "scope")?;
    let key: String = row.try_get("", "idempotency_key")?;
    let fingerprint: String = row.try_get("", "request_hash")?;
    let refusal_code: Option<String> = row.try_get("", "refusal_code")?;
    let outcome = match refusal_code {
        Some(code) => Err(Refusal {
            code: ErrorCode::parse(&code).ok_or_else(|| corrupt("refusal code"))?,
            detail: row
                .try_get::<Option<String>>("", "refusal_detail")?
                .unwrap_or_default(),
        }),
        None => {
            let present: Option<String> = row.try_get("", "transfer_id")?;
            if present.is_none() {
                return Err(corrupt("request record without its transfer"));
            }
            Ok(transfer_from_row(row)?)
        }
    };
    let record_key = RecordKey {
        scope,
        idempotency_key: IdempotencyKey::parse(&key).map_err(|_| corrupt("idempotency key"))?,
    };
    Ok((
        record_key,
        KnownRequest {
            fingerprint,
            outcome,
        },
    ))
}

async fn read_reversed(
    txn: &DatabaseTransaction,
    originals: &[TransferId],
) -> Result<HashSet<TransferId>, StoreError> {
    if originals.is_empty() {
        return Ok(HashSet::new());
    }
    let backend = txn.get_database_backend();
    let rows: Vec<QueryResult> = match backend {
        DbBackend::Postgres => {
            txn.query_all_raw(statement(
                backend,
                SELECT_REVERSED_POSTGRES,
                [strings(originals.iter().map(ToString::to_string))],
            ))
            .await?
        }
        _ => {
            txn.query_all_raw(statement(
                backend,
                SELECT_REVERSED_SQLITE,
                [json_rows(originals.iter().map(|id| json!(id.to_string())))],
            ))
            .await?
        }
    };
    rows.iter()
        .map(|row| {
            let id: String = row.try_get("", "reverses_transfer_id")?;
            TransferId::parse(&id).map_err(|_| corrupt("transfer id"))
        })
        .collect()
}

/// Writes a plan's rows: transfers first, since entries and request records
/// refer to them.
async fn write(
    txn: &DatabaseTransaction,
    writes: &Writes,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    if writes.is_empty() {
        return Ok(());
    }
    match txn.get_database_backend() {
        DbBackend::Postgres => write_postgres(txn, writes, now).await,
        _ => write_sqlite(txn, writes, now).await,
    }
}

async fn write_postgres(
    txn: &DatabaseTransaction,
    writes: &Writes,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let transfers = || writes.transfers.iter().map(|new| &new.transfer);
    let entries = || writes.entries.iter();
    let books = || writes.books.iter();
    let requests = || writes.requests.iter();
    let refusal = |outcome: &RecordedOutcome| match outcome {
        RecordedOutcome::Posted(_) => None,
        RecordedOutcome::Refused(refusal) => Some(refusal.clone()),
    };
    txn.execute_raw(statement(
        DbBackend::Postgres,
        WRITE_GROUP_POSTGRES,
        [
            strings(transfers().map(|t| t.transfer_id.to_string())),
            strings(transfers().map(|t| t.kind.as_str().to_owned())),
            strings(transfers().map(|t| t.from_account_id.to_string())),
            strings(transfers().map(|t| t.to_account_id.to_string())),
            integers(transfers().map(|t| t.amount_minor)),
            strings(transfers().map(|t| t.currency.as_str().to_owned())),
            strings(transfers().map(|t| t.description.clone())),
            strings(transfers().map(|t| {
                t.reverses_transfer_id
                    .map(|id| id.to_string())
                    .unwrap_or_default()
            })),
            strings(writes.transfers.iter().map(|new| new.initiated_by.clone())),
            strings(entries().map(|e| e.account_id.to_string())),
            integers(entries().map(|e| e.account_seq)),
            strings(entries().map(|e| e.transfer_id.to_string())),
            integers(entries().map(|e| e.amount_minor)),
            integers(entries().map(|e| e.balance_after_minor)),
            strings(entries().map(|e| e.currency.as_str().to_owned())),
            strings(entries().map(|e| e.counterparty_account_id.to_string())),
            strings(entries().map(|e| e.description.clone())),
            strings(entries().map(|e| e.prev_hash.clone())),
            strings(entries().map(|e| e.entry_hash.clone())),
            strings(books().map(|b| b.account_id.to_string())),
            integers(books().map(|b| b.balance_minor)),
            integers(books().map(|b| b.entry_count)),
            strings(books().map(|b| b.last_entry_hash.clone())),
            strings(requests().map(|r| r.key.scope.clone())),
            strings(requests().map(|r| r.key.idempotency_key.as_str().to_owned())),
            strings(requests().map(|r| r.fingerprint.clone())),
            strings(requests().map(|r| match &r.outcome {
                RecordedOutcome::Posted(id) => id.to_string(),
                RecordedOutcome::Refused(_) => String::new(),
            })),
            strings(requests().map(|r| {
                refusal(&r.outcome)
                    .map(|refusal| refusal.code.as_str().to_owned())
                    .unwrap_or_default()
            })),
            strings(requests().map(|r| {
                refusal(&r.outcome)
                    .map(|refusal| refusal.detail)
                    .unwrap_or_default()
            })),
            now.into(),
        ],
    ))
    .await?;
    Ok(())
}

async fn write_sqlite(
    txn: &DatabaseTransaction,
    writes: &Writes,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let backend = DbBackend::Sqlite;
    let transfers = json_rows(writes.transfers.iter().map(|new| {
        let t = &new.transfer;
        json!([
            t.transfer_id.to_string(),
            t.kind.as_str(),
            t.from_account_id.to_string(),
            t.to_account_id.to_string(),
            t.amount_minor,
            t.currency.as_str(),
            t.description,
            t.reverses_transfer_id.map(|id| id.to_string()),
            new.initiated_by,
        ])
    }));
    let entries = json_rows(writes.entries.iter().map(|e| {
        json!([
            e.account_id.to_string(),
            e.account_seq,
            e.transfer_id.to_string(),
            e.amount_minor,
            e.balance_after_minor,
            e.currency.as_str(),
            e.counterparty_account_id.to_string(),
            e.description,
            e.prev_hash,
            e.entry_hash,
        ])
    }));
    let books = json_rows(writes.books.iter().map(|b| {
        json!([
            b.account_id.to_string(),
            b.balance_minor,
            b.entry_count,
            b.last_entry_hash,
        ])
    }));
    let requests = json_rows(writes.requests.iter().map(|r| {
        let (transfer_id, code, detail) = match &r.outcome {
            RecordedOutcome::Posted(id) => (Some(id.to_string()), None, None),
            RecordedOutcome::Refused(refusal) => (
                None,
                Some(refusal.code.as_str()),
                Some(refusal.detail.as_str()),
            ),
        };
        json!([
            r.key.scope,
            r.key.idempotency_key.as_str(),
            r.fingerprint,
            transfer_id,
            code,
            detail,
        ])
    }));
    for (sql, rows, any) in [
        (
            INSERT_TRANSFERS_SQLITE,
            transfers,
            !writes.transfers.is_empty(),
        ),
        (INSERT_ENTRIES_SQLITE, entries, !writes.entries.is_empty()),
        (UPDATE_BOOKS_SQLITE, books, !writes.books.is_empty()),
        (
            INSERT_REQUESTS_SQLITE,
            requests,
            !writes.requests.is_empty(),
        ),
    ] {
        if any {
            txn.execute_raw(statement(backend, sql, [rows, now.into()]))
                .await?;
        }
    }
    Ok(())
}

/// A SQLite JSON array parameter, one element per row, read with `json_each`.
fn json_rows(rows: impl Iterator<Item = serde_json::Value>) -> Value {
    Value::from(serde_json::Value::Array(rows.collect()).to_string())
}

/// A PostgreSQL `text[]` parameter. Nulls travel as empty strings and are turned
/// back by `NULLIF` in the statement, so no array ever holds a null element.
fn strings(values: impl Iterator<Item = String>) -> Value {
    Value::from(values.collect::<Vec<String>>())
}

/// A PostgreSQL `bigint[]` parameter.
fn integers(values: impl Iterator<Item = i64>) -> Value {
    Value::from(values.collect::<Vec<i64>>())
}
