//! The ledger's storage: every SQL statement the ledger runs lives here. Postings
//! are committed in groups ([`posting`]): one transaction locks the group's books,
//! reads what the plan needs, and writes the rows the plan decided. The rules
//! themselves live in `bank_domain::ledger::plan`; this module only reads facts and
//! writes decisions.
//!
//! Statements are constant text with `$n` placeholders, so sqlx prepares each once
//! per connection and reuses it.

pub mod migrations;

/// What the ledger's own role may do when it is not the schema's owner: read
/// and append the journal and the request records, and move balances and
/// statuses on the books. Nothing else, so its credentials cannot rewrite
/// history even with the triggers in the way removed, and cannot remove them.
pub const GRANTS: &[bank_kit::db::TableGrant] = &[
    bank_kit::db::TableGrant {
        table: "ledger_accounts",
        privileges: "SELECT, INSERT, UPDATE",
    },
    bank_kit::db::TableGrant {
        table: "ledger_transfers",
        privileges: "SELECT, INSERT",
    },
    bank_kit::db::TableGrant {
        table: "ledger_entries",
        privileges: "SELECT, INSERT",
    },
    bank_kit::db::TableGrant {
        table: "ledger_requests",
        privileges: "SELECT, INSERT",
    },
    bank_kit::db::TableGrant {
        table: "ledger_holds",
        privileges: "SELECT, INSERT",
    },
    bank_kit::db::TableGrant {
        table: "ledger_hold_resolutions",
        privileges: "SELECT, INSERT",
    },
];
pub mod holds;
pub mod posting;

use bank_kit::{db, money::Currency};
use chrono::{DateTime, Utc};
use sea_orm::{
    AccessMode, ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, DbErr,
    IsolationLevel, QueryResult, SqliteTransactionMode, Statement, TransactionOptions,
    TransactionTrait, Value,
};
use tokio::sync::{Mutex, MutexGuard};

use bank_kit::{DomainError, ErrorCode};

use crate::domain::{
    AccountId, AccountKind, AccountStatus, Entry, GENESIS_HASH, Hold, LedgerAccount, LedgerError,
    Mismatch, StatusDecision, Transfer, TransferId, TransferKind, VerifyReport, entry_hash,
};

/// How often a transaction is retried after a serialization failure, deadlock or
/// a lost race on a unique key before the callers are told to try again.
const MAX_ATTEMPTS: usize = 8;

/// Column lists, as macros so that every statement is one constant string.
macro_rules! account_columns {
    () => {
        "account_id, owner_id, currency, kind, status, balance_minor, pending_debits_minor, entry_count, last_entry_hash, status_version"
    };
}
macro_rules! transfer_columns {
    () => {
        "transfer_id, kind, from_account_id, to_account_id, amount_minor, currency, description, reverses_transfer_id, created_at"
    };
}
macro_rules! entry_columns {
    () => {
        "account_id, account_seq, transfer_id, amount_minor, balance_after_minor, currency, counterparty_account_id, description, prev_hash, entry_hash, created_at"
    };
}
pub(crate) use account_columns;

/// What the store can fail with: a refusal of the ledger's rules, or a failure of
/// the database itself.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Refused(#[from] LedgerError),
    #[error("database error: {0}")]
    Database(#[from] DbErr),
    #[error("corrupt row: {0}")]
    Corrupt(String),
    #[error("the ledger is busy, retry with the same idempotency key")]
    Busy,
    #[error("the posting writer stopped: {0}")]
    WriterStopped(String),
    /// The database could not be reached for a whole commit group; each of its
    /// callers gets this copy of the cause.
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
}

impl DomainError for StoreError {
    fn code(&self) -> ErrorCode {
        match self {
            StoreError::Refused(error) => error.code(),
            StoreError::Busy => ErrorCode::Conflict,
            StoreError::Database(error) if db::is_unavailable(error) => ErrorCode::Unavailable,
            StoreError::Unavailable(_) => ErrorCode::Unavailable,
            StoreError::Database(_) | StoreError::Corrupt(_) | StoreError::WriterStopped(_) => {
                ErrorCode::Internal
            }
        }
    }
}

/// The PostgreSQL session settings of both of the ledger's write connections,
/// the store's `writes` and the guarded writer's (see [`LedgerStore`]'s
/// `writes`): plans without sequential scans.
pub(crate) const WRITES_SETTINGS: &[(&str, &str)] = &[("enable_seqscan", "off")];

/// The ledger database.
pub struct LedgerStore {
    db: DatabaseConnection,
    /// Where write transactions run: one connection of its own
    /// (`bank_kit::db::writer_connection`), whose caches stay warm from one
    /// commit group to the next (SQLite's pages; PostgreSQL's backend with its
    /// plans and compiled trigger functions).
    ///
    /// On PostgreSQL its session plans without sequential scans
    /// ([`WRITES_SETTINGS`]), as the guarded writer's does: sqlx prepares each
    /// statement once per connection and PostgreSQL settles on one generic
    /// plan of it after a few executions, replaced only when an `ANALYZE`
    /// changes what it knows of the tables. Planned while a new ledger's
    /// tables were nearly empty, that plan locked the group's books by reading
    /// all of `ledger_accounts`, and went on doing so on a server whose
    /// autovacuum is off. Every statement of a write transaction finds its rows
    /// through a key (books, request keys, holds by id or book), so an index is
    /// always there to take instead; the verification's whole-table queries run
    /// on the pool.
    writes: DatabaseConnection,
    /// SQLite allows one writer per file. Serialising writers in process turns
    /// what would be SQLITE_BUSY failures into an orderly queue.
    sqlite_writer: Option<Mutex<()>>,
    /// Currencies whose settlement book is known to exist. Books are never
    /// removed, so a commit group creates each at most once per process.
    settled: std::sync::Mutex<std::collections::HashSet<Currency>>,
    /// When the hold sweep last finished: the next one looks only at holds
    /// that expired since (with an overlap). Unset until the first, which looks
    /// at every hold.
    swept_until: std::sync::Mutex<Option<DateTime<Utc>>>,
    /// The books as this process last committed or locked them, which the next
    /// commit groups plan on without reading them first; a group's statement
    /// checks them under its locks, so a stale one costs a retry, never a wrong
    /// answer (`store::posting`).
    books: posting::Memory<AccountId, LedgerAccount>,
    /// The pending holds this process last placed or read under their books'
    /// locks, which the next groups post or void without reading them first; a
    /// hold resolved meanwhile fails the group's write (its resolution's
    /// primary key), never gives a wrong answer.
    holds: posting::Memory<TransferId, Hold>,
    /// How often groups try the one-statement path, which fails while other
    /// replicas keep writing the same books (`store::posting`).
    backoff: posting::Backoff,
    /// The one-statement path's own connection (PostgreSQL).
    guarded: Option<posting::GuardedWriter>,
}

impl LedgerStore {
    pub fn new(db: DatabaseConnection) -> LedgerStore {
        let sqlite_writer =
            (db.get_database_backend() == DbBackend::Sqlite).then(|| Mutex::new(()));
        let writes = bank_kit::db::writer_connection_with(&db, WRITES_SETTINGS)
            .unwrap_or_else(|| db.clone());
        let guarded = (db.get_database_backend() == DbBackend::Postgres).then(|| {
            posting::GuardedWriter::new(&db.get_postgres_connection_pool().connect_options())
        });
        LedgerStore {
            guarded,
            db,
            writes,
            sqlite_writer,
            settled: std::sync::Mutex::default(),
            swept_until: std::sync::Mutex::default(),
            books: posting::Memory::default(),
            holds: posting::Memory::default(),
            backoff: posting::Backoff::default(),
        }
    }

    pub fn connection(&self) -> &DatabaseConnection {
        &self.db
    }

    pub fn backend(&self) -> DbBackend {
        self.db.get_database_backend()
    }

    /// Starts a write transaction. On SQLite it is `BEGIN IMMEDIATE`: it takes the
    /// write lock up front, so it never has to upgrade a read snapshot later,
    /// even if another process writes to the file.
    pub(crate) async fn begin_write(&self) -> Result<DatabaseTransaction, DbErr> {
        match self.backend() {
            DbBackend::Sqlite => {
                self.writes
                    .begin_with_options(TransactionOptions {
                        sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
                        ..TransactionOptions::default()
                    })
                    .await
            }
            _ => self.writes.begin().await,
        }
    }

    pub(crate) async fn writer(&self) -> Option<MutexGuard<'_, ()>> {
        match &self.sqlite_writer {
            Some(mutex) => Some(mutex.lock().await),
            None => None,
        }
    }

    /// Creates the book of a customer account, unpostable until
    /// [`LedgerStore::set_status`] activates it; a repeated call with the same
    /// owner and currency returns the existing book.
    pub async fn open_account(
        &self,
        account_id: AccountId,
        owner_id: &str,
        currency: Currency,
    ) -> Result<LedgerAccount, StoreError> {
        let _writer = self.writer().await;
        let now = bank_kit::time::now();
        self.writes
            .execute_raw(statement(
                self.backend(),
                "INSERT INTO ledger_accounts (account_id, owner_id, currency, kind, status, balance_minor, entry_count, last_entry_hash, status_version, created_at, updated_at)
                 VALUES ($1, $2, $3, 'customer', 'active', 0, 0, $4, 0, $5, $5)
                 ON CONFLICT (account_id) DO NOTHING",
                [
                    account_id.to_string().into(),
                    owner_id.into(),
                    currency.as_str().into(),
                    GENESIS_HASH.into(),
                    now.into(),
                ],
            ))
            .await?;
        let account = load_account(&self.db, account_id)
            .await?
            .ok_or(StoreError::Refused(LedgerError::AccountNotFound))?;
        if account.kind != AccountKind::Customer
            || !account.is_owned_by(owner_id)
            || account.currency != currency
        {
            return Err(LedgerError::Conflict(
                "a book with this id already exists for another owner or currency".into(),
            )
            .into());
        }
        Ok(account)
    }

    /// Sets an account's status (activating a book that was still being opened),
    /// decided under the same row lock that postings take, so no posting can slip
    /// in between; closing requires a zero balance. Returns the book as it is
    /// after the decision, with its status version.
    pub async fn set_status(
        &self,
        account_id: AccountId,
        status: AccountStatus,
        expected_version: Option<i64>,
    ) -> Result<LedgerAccount, StoreError> {
        let decided = self
            .write_with_retries(|txn| {
                Box::pin(set_status_in(txn, account_id, status, expected_version))
            })
            .await;
        self.forget_books(&[account_id]);
        decided
    }

    /// Runs `work` in a write transaction and commits it, again from the start
    /// after a transient conflict (a busy SQLite file, a serialization failure,
    /// a deadlock, a lost unique-key race), at most [`MAX_ATTEMPTS`] times.
    pub(crate) async fn write_with_retries<T>(
        &self,
        work: impl for<'txn> Fn(&'txn DatabaseTransaction) -> TransactionWork<'txn, T>,
    ) -> Result<T, StoreError> {
        for _ in 0..MAX_ATTEMPTS {
            let _writer = self.writer().await;
            let txn = match self.begin_write().await {
                Ok(txn) => txn,
                // Another process holds the file; take another turn.
                Err(error) if db::is_retryable(&error) => continue,
                Err(error) => return Err(error.into()),
            };
            let result = work(&txn).await;
            match finish(txn, result).await {
                Attempt::Done(result) => return result,
                Attempt::Retry => continue,
            }
        }
        Err(StoreError::Busy)
    }

    pub async fn account(
        &self,
        account_id: AccountId,
    ) -> Result<Option<LedgerAccount>, StoreError> {
        load_account(&self.db, account_id).await
    }

    /// A transfer as it stands: a hold (pending, or how it ended) or a transfer
    /// posted outright.
    pub async fn transfer(&self, transfer_id: TransferId) -> Result<Option<Transfer>, StoreError> {
        load_transfer_view(&self.db, transfer_id).await
    }

    /// The transfer that reverses `transfer_id`, if any.
    pub async fn reversal_of(
        &self,
        transfer_id: TransferId,
    ) -> Result<Option<TransferId>, StoreError> {
        reversal_of(&self.db, transfer_id).await
    }

    /// An account's entries, newest first, older than `before_seq` when given.
    pub async fn entries(
        &self,
        account_id: AccountId,
        before_seq: Option<i64>,
        limit: u64,
    ) -> Result<Vec<Entry>, StoreError> {
        let rows = self
            .db
            .query_all_raw(statement(
                self.backend(),
                SELECT_ENTRIES_PAGE,
                [
                    account_id.to_string().into(),
                    before_seq.unwrap_or(i64::MAX).into(),
                    i64::try_from(limit).unwrap_or(i64::MAX).into(),
                ],
            ))
            .await?;
        rows.iter().map(entry_from_row).collect()
    }

    /// Recomputes every account's hash chain and balance from its entries, and
    /// checks every transfer against its entries. Runs in one read-only snapshot
    /// (repeatable read on PostgreSQL, a read transaction on SQLite), so postings
    /// committing meanwhile are either wholly seen or not at all; entries are read
    /// page by page so memory stays bounded however long the journal grows.
    pub async fn verify(&self) -> Result<VerifyReport, StoreError> {
        self.verify_with(&mut VerifyCheckpoint::default(), VerifyScope::Full)
            .await
    }

    /// Verification that goes on from `checkpoint`: with [`VerifyScope::Full`]
    /// as [`verify`](Self::verify); with [`VerifyScope::SinceCheckpoint`] only
    /// each book's entries after the last one found intact (a book not seen yet
    /// from its first entry), its balance and chain head against them, and every
    /// hold check. Either way the checkpoint moves to the last intact entry of
    /// each book whose replay matched; a book that did not match keeps its point,
    /// so the next round finds the mismatch again.
    pub async fn verify_with(
        &self,
        checkpoint: &mut VerifyCheckpoint,
        scope: VerifyScope,
    ) -> Result<VerifyReport, StoreError> {
        let txn = match self.backend() {
            DbBackend::Postgres => {
                self.db
                    .begin_with_config(
                        Some(IsolationLevel::RepeatableRead),
                        Some(AccessMode::ReadOnly),
                    )
                    .await?
            }
            _ => self.db.begin().await?,
        };
        let report = verify_in(&txn, checkpoint, scope).await;
        txn.rollback().await.ok();
        report
    }
}

/// How much a verification round reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerifyScope {
    /// Every entry of every book, and every transfer and request record.
    Full,
    /// Each book's entries after its checkpoint, and the holds.
    SinceCheckpoint,
}

/// How far verification got on each book: its last entry found intact, with
/// the balance the entries sum to there.
#[derive(Debug, Default, Clone)]
pub struct VerifyCheckpoint {
    points: std::collections::HashMap<AccountId, ChainPoint>,
}

#[derive(Debug, Clone)]
struct ChainPoint {
    seq: i64,
    hash: String,
    balance: i64,
}

impl ChainPoint {
    fn genesis() -> ChainPoint {
        ChainPoint {
            seq: 0,
            hash: GENESIS_HASH.to_owned(),
            balance: 0,
        }
    }
}

/// Rows read per query while verifying.
const VERIFY_PAGE: i64 = 1_000;

async fn verify_in(
    txn: &DatabaseTransaction,
    checkpoint: &mut VerifyCheckpoint,
    scope: VerifyScope,
) -> Result<VerifyReport, StoreError> {
    let backend = txn.get_database_backend();
    let mut report = VerifyReport::default();
    let mut after_account = String::new();
    loop {
        let accounts = txn
            .query_all_raw(statement(
                backend,
                SELECT_ACCOUNTS_PAGE,
                [after_account.clone().into(), VERIFY_PAGE.into()],
            ))
            .await?;
        for row in &accounts {
            let account = account_from_row(row)?;
            let start = match scope {
                VerifyScope::Full => None,
                VerifyScope::SinceCheckpoint => checkpoint.points.get(&account.account_id),
            }
            .cloned()
            .unwrap_or_else(ChainPoint::genesis);
            if let Some(intact) = verify_account(txn, &account, start, &mut report).await? {
                checkpoint.points.insert(account.account_id, intact);
            }
            after_account = account.account_id.to_string();
        }
        if (accounts.len() as i64) < VERIFY_PAGE {
            break;
        }
    }
    if scope == VerifyScope::SinceCheckpoint {
        verify_holds(txn, &mut report).await?;
        return Ok(report);
    }
    let unbalanced = txn
        .query_all_raw(statement(backend, SELECT_UNBALANCED_TRANSFERS, []))
        .await?;
    for row in &unbalanced {
        let transfer_id: String = row.try_get("", "transfer_id")?;
        report.mismatches.push(Mismatch {
            account_id: String::new(),
            kind: "transfer_sum",
            detail: format!("entries of transfer {transfer_id} do not sum to zero in two legs"),
        });
    }
    let unmatched = txn
        .query_all_raw(statement(backend, SELECT_UNMATCHED_TRANSFERS, []))
        .await?;
    for row in &unmatched {
        let transfer_id: String = row.try_get("", "transfer_id")?;
        report.mismatches.push(Mismatch {
            account_id: String::new(),
            kind: "transfer_entries",
            detail: format!("transfer {transfer_id} lacks its debit or credit entry"),
        });
    }
    // Every posting has a key, so every transfer has the request record that made
    // it: one deleted would turn a client's retry into a second posting.
    let unrecorded = txn
        .query_all_raw(statement(backend, SELECT_UNRECORDED_TRANSFERS, []))
        .await?;
    for row in &unrecorded {
        let transfer_id: String = row.try_get("", "transfer_id")?;
        report.mismatches.push(Mismatch {
            account_id: String::new(),
            kind: "request_record",
            detail: format!("transfer {transfer_id} has no request record"),
        });
    }
    verify_holds(txn, &mut report).await?;
    let dangling = txn
        .query_all_raw(statement(backend, SELECT_DANGLING_REQUESTS, []))
        .await?;
    for row in &dangling {
        let key: String = row.try_get("", "idempotency_key")?;
        report.mismatches.push(Mismatch {
            account_id: String::new(),
            kind: "request_record",
            detail: format!("the request record of key {key} names a transfer that does not exist"),
        });
    }
    Ok(report)
}

/// Holds: each book reserves exactly what its pending holds hold, no customer's
/// reservation exceeds its balance, and every posted hold has its transfer.
async fn verify_holds(
    txn: &DatabaseTransaction,
    report: &mut VerifyReport,
) -> Result<(), StoreError> {
    let backend = txn.get_database_backend();
    for row in &txn
        .query_all_raw(statement(backend, SELECT_UNMATCHED_RESERVATIONS, []))
        .await?
    {
        let account_id: String = row.try_get("", "account_id")?;
        let pending: i64 = row.try_get("", "pending_debits_minor")?;
        let open: i64 = row.try_get("", "open_minor")?;
        report.mismatches.push(Mismatch {
            account_id,
            kind: "holds",
            detail: format!("the book reserves {pending} but its pending holds hold {open}"),
        });
    }
    for row in &txn
        .query_all_raw(statement(backend, SELECT_OVERDRAWN, []))
        .await?
    {
        let account_id: String = row.try_get("", "account_id")?;
        report.mismatches.push(Mismatch {
            account_id,
            kind: "available",
            detail: "the pending holds reserve more than the balance".into(),
        });
    }
    for row in &txn
        .query_all_raw(statement(backend, SELECT_UNMATCHED_POSTED_HOLDS, []))
        .await?
    {
        let hold_id: String = row.try_get("", "hold_id")?;
        report.mismatches.push(Mismatch {
            account_id: String::new(),
            kind: "holds",
            detail: format!("posted hold {hold_id} has no transfer of its posted amount"),
        });
    }
    Ok(())
}

/// Replays one account's entries in order, page by page, from `start`; the
/// point its last entry reached when every entry and the book matched.
async fn verify_account(
    txn: &DatabaseTransaction,
    account: &LedgerAccount,
    start: ChainPoint,
    report: &mut VerifyReport,
) -> Result<Option<ChainPoint>, StoreError> {
    let mut balance: i64 = start.balance;
    let mut prev_hash = start.hash;
    let mut count: i64 = start.seq;
    // Pages continue after the last stored sequence number; from the first entry
    // they start below any value, so that an entry forged with a sequence of zero
    // or less is read too.
    let mut cursor = if count == 0 { i64::MIN } else { count };
    let mut chain_broken = false;
    loop {
        let rows = txn
            .query_all_raw(statement(
                txn.get_database_backend(),
                SELECT_ENTRIES_AFTER,
                [
                    account.account_id.to_string().into(),
                    cursor.into(),
                    VERIFY_PAGE.into(),
                ],
            ))
            .await?;
        for row in &rows {
            let entry = entry_from_row(row)?;
            report.entries_checked += 1;
            count += 1;
            balance = balance.saturating_add(entry.amount_minor);
            let intact = entry.account_seq == count
                && entry.prev_hash == prev_hash
                && entry.entry_hash == entry_hash(&entry)
                && entry.balance_after_minor == balance;
            if !intact && !chain_broken {
                chain_broken = true;
                report.mismatches.push(Mismatch {
                    account_id: account.account_id.to_string(),
                    kind: "hash_chain",
                    detail: format!("entry {} does not match the chain", entry.account_seq),
                });
            }
            cursor = entry.account_seq;
            prev_hash = entry.entry_hash;
        }
        if (rows.len() as i64) < VERIFY_PAGE {
            break;
        }
    }
    report.accounts_checked += 1;
    if balance != account.balance_minor {
        report.mismatches.push(Mismatch {
            account_id: account.account_id.to_string(),
            kind: "balance",
            detail: format!(
                "stored balance {} but entries sum to {balance}",
                account.balance_minor
            ),
        });
    }
    let head_matches = count == account.entry_count && prev_hash == account.last_entry_hash;
    if !chain_broken && !head_matches {
        report.mismatches.push(Mismatch {
            account_id: account.account_id.to_string(),
            kind: "hash_chain",
            detail: "the account's chain head does not match its last entry".into(),
        });
    }
    let intact = !chain_broken && head_matches && balance == account.balance_minor;
    Ok(intact.then_some(ChainPoint {
        seq: count,
        hash: prev_hash,
        balance,
    }))
}

/// What a write transaction does, borrowing the transaction.
pub(crate) type TransactionWork<'txn, T> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, StoreError>> + Send + 'txn>>;

pub(crate) enum Attempt<T> {
    Done(Result<T, StoreError>),
    Retry,
}

/// Commits on success, rolls back on failure, and tells transient failures (lost
/// races, serialization failures, deadlocks) apart so the caller retries them.
pub(crate) async fn finish<T>(
    txn: DatabaseTransaction,
    result: Result<T, StoreError>,
) -> Attempt<T> {
    let commit_span = db::commit_span(txn.get_database_backend());
    match result {
        Ok(value) => match tracing::Instrument::instrument(txn.commit(), commit_span).await {
            Ok(()) => Attempt::Done(Ok(value)),
            Err(error) if db::is_retryable(&error) => Attempt::Retry,
            Err(error) => Attempt::Done(Err(error.into())),
        },
        Err(StoreError::Database(error))
            if db::is_retryable(&error) || db::is_unique_violation(&error) =>
        {
            txn.rollback().await.ok();
            Attempt::Retry
        }
        Err(error) => {
            txn.rollback().await.ok();
            Attempt::Done(Err(error))
        }
    }
}

async fn set_status_in(
    txn: &DatabaseTransaction,
    account_id: AccountId,
    status: AccountStatus,
    expected_version: Option<i64>,
) -> Result<LedgerAccount, StoreError> {
    let mut account = lock_account(txn, account_id)
        .await?
        .ok_or(StoreError::Refused(LedgerError::AccountNotFound))?;
    if account.kind != AccountKind::Customer {
        return Err(LedgerError::AccountNotFound.into());
    }
    // Holds whose time is up do not keep an account open.
    if status == AccountStatus::Closed && account.pending_debits_minor > 0 {
        let mut books = std::collections::BTreeMap::from([(account_id, account)]);
        holds::release_due(txn, &mut books, bank_kit::time::now()).await?;
        account = books
            .remove(&account_id)
            .ok_or(StoreError::Refused(LedgerError::AccountNotFound))?;
    }
    let StatusDecision::Change {
        status,
        status_version,
    } = account.decide_status(status, expected_version)?
    else {
        return Ok(account);
    };
    txn.execute_raw(statement(
        txn.get_database_backend(),
        "UPDATE ledger_accounts SET status = $1, status_version = $2, updated_at = $3 WHERE account_id = $4",
        [
            status.as_str().into(),
            status_version.into(),
            bank_kit::time::now().into(),
            account_id.to_string().into(),
        ],
    ))
    .await?;
    account.status = status;
    account.status_version = status_version;
    Ok(account)
}

async fn reversal_of(
    db: &impl ConnectionTrait,
    transfer_id: TransferId,
) -> Result<Option<TransferId>, StoreError> {
    let row = db
        .query_one_raw(statement(
            db.get_database_backend(),
            "SELECT transfer_id FROM ledger_transfers WHERE reverses_transfer_id = $1",
            [transfer_id.to_string().into()],
        ))
        .await?;
    match row {
        None => Ok(None),
        Some(row) => {
            let id: String = row.try_get("", "transfer_id")?;
            TransferId::parse(&id)
                .map(Some)
                .map_err(|_| corrupt("transfer id"))
        }
    }
}

const SELECT_ENTRIES_PAGE: &str = concat!(
    "SELECT ",
    entry_columns!(),
    " FROM ledger_entries
                     WHERE account_id = $1 AND account_seq < $2
                     ORDER BY account_seq DESC LIMIT $3"
);
const SELECT_ACCOUNTS_PAGE: &str = concat!(
    "SELECT ",
    account_columns!(),
    " FROM ledger_accounts WHERE account_id > $1
                     ORDER BY account_id LIMIT $2"
);
const SELECT_ENTRIES_AFTER: &str = concat!(
    "SELECT ",
    entry_columns!(),
    " FROM ledger_entries WHERE account_id = $1 AND account_seq > $2
                     ORDER BY account_seq LIMIT $3"
);
const SELECT_TRANSFER: &str = concat!(
    "SELECT ",
    transfer_columns!(),
    " FROM ledger_transfers WHERE transfer_id = $1"
);
const SELECT_BATCH: &str = concat!(
    "SELECT ",
    transfer_columns!(),
    " FROM ledger_transfers WHERE batch_id = $1 ORDER BY batch_index"
);
const SELECT_UNBALANCED_TRANSFERS: &str =
    "SELECT transfer_id FROM ledger_entries GROUP BY transfer_id
     HAVING SUM(amount_minor) <> 0 OR COUNT(*) <> 2";
const SELECT_UNMATCHED_TRANSFERS: &str = "SELECT t.transfer_id FROM ledger_transfers t
     LEFT JOIN ledger_entries debit ON debit.transfer_id = t.transfer_id
          AND debit.account_id = t.from_account_id AND debit.amount_minor = -t.amount_minor
     LEFT JOIN ledger_entries credit ON credit.transfer_id = t.transfer_id
          AND credit.account_id = t.to_account_id AND credit.amount_minor = t.amount_minor
     WHERE debit.entry_id IS NULL OR credit.entry_id IS NULL";
const SELECT_UNRECORDED_TRANSFERS: &str = "SELECT t.transfer_id FROM ledger_transfers t
     WHERE NOT EXISTS (SELECT 1 FROM ledger_requests r WHERE r.transfer_id = t.transfer_id)
       AND NOT EXISTS (SELECT 1 FROM ledger_requests r WHERE r.batch_id = t.batch_id)";
/// Each book's reservation against the holds that are pending (written as
/// expired or not yet).
const SELECT_UNMATCHED_RESERVATIONS: &str = "SELECT a.account_id, a.pending_debits_minor,
            CAST(COALESCE(SUM(h.amount_minor), 0) AS BIGINT) AS open_minor
     FROM ledger_accounts a
     LEFT JOIN ledger_holds h ON h.from_account_id = a.account_id
          AND NOT EXISTS (SELECT 1 FROM ledger_hold_resolutions r WHERE r.hold_id = h.hold_id)
     GROUP BY a.account_id, a.pending_debits_minor
     HAVING a.pending_debits_minor <> CAST(COALESCE(SUM(h.amount_minor), 0) AS BIGINT)";
const SELECT_OVERDRAWN: &str = "SELECT account_id FROM ledger_accounts
     WHERE kind = 'customer' AND balance_minor < pending_debits_minor";
/// Posted holds whose journal transfer is missing or moved another amount.
const SELECT_UNMATCHED_POSTED_HOLDS: &str = "SELECT r.hold_id FROM ledger_hold_resolutions r
     LEFT JOIN ledger_transfers t ON t.transfer_id = r.hold_id
     WHERE r.state = 'posted' AND (t.transfer_id IS NULL OR t.amount_minor <> r.amount_minor)";
const SELECT_DANGLING_REQUESTS: &str = "SELECT r.idempotency_key FROM ledger_requests r
     WHERE r.transfer_id IS NOT NULL
       AND NOT EXISTS (SELECT 1 FROM ledger_transfers t WHERE t.transfer_id = r.transfer_id)";
const SELECT_ACCOUNT: &str = concat!(
    "SELECT ",
    account_columns!(),
    " FROM ledger_accounts WHERE account_id = $1"
);
const SELECT_ACCOUNT_FOR_UPDATE: &str = concat!(
    "SELECT ",
    account_columns!(),
    " FROM ledger_accounts WHERE account_id = $1 FOR UPDATE"
);

/// An account's book as committed.
async fn load_account(
    db: &impl ConnectionTrait,
    account_id: AccountId,
) -> Result<Option<LedgerAccount>, StoreError> {
    let row = db
        .query_one_raw(statement(
            db.get_database_backend(),
            SELECT_ACCOUNT,
            [account_id.to_string().into()],
        ))
        .await?;
    row.as_ref().map(account_from_row).transpose()
}

/// An account's book, locked until the transaction ends. SQLite has no row
/// locks; its writers are serialised by `LedgerStore::writer` and `BEGIN
/// IMMEDIATE`.
async fn lock_account(
    txn: &DatabaseTransaction,
    account_id: AccountId,
) -> Result<Option<LedgerAccount>, StoreError> {
    let backend = txn.get_database_backend();
    let sql = match backend {
        DbBackend::Postgres => SELECT_ACCOUNT_FOR_UPDATE,
        _ => SELECT_ACCOUNT,
    };
    let row = txn
        .query_one_raw(statement(backend, sql, [account_id.to_string().into()]))
        .await?;
    row.as_ref().map(account_from_row).transpose()
}

/// A transfer as it stands: if `transfer_id` names a hold, the hold (whose
/// journal transfer, once posted, carries the same id); otherwise the journal's
/// transfer.
pub(crate) async fn load_transfer_view(
    db: &impl ConnectionTrait,
    transfer_id: TransferId,
) -> Result<Option<Transfer>, StoreError> {
    if let Some(hold) = holds::read_holds(db, &[transfer_id])
        .await?
        .remove(&transfer_id)
    {
        return Ok(Some(hold.to_transfer_at(bank_kit::time::now())));
    }
    load_transfer(db, transfer_id).await
}

/// The transfers of the batch named `batch_id`, in the batch's order.
pub(crate) async fn batch_transfers(
    db: &impl ConnectionTrait,
    batch_id: TransferId,
) -> Result<Vec<Transfer>, StoreError> {
    let rows = db
        .query_all_raw(statement(
            db.get_database_backend(),
            SELECT_BATCH,
            [batch_id.to_string().into()],
        ))
        .await?;
    if rows.is_empty() {
        return Err(corrupt("a batch without its transfers"));
    }
    rows.iter().map(transfer_from_row).collect()
}

async fn load_transfer(
    db: &impl ConnectionTrait,
    transfer_id: TransferId,
) -> Result<Option<Transfer>, StoreError> {
    let row = db
        .query_one_raw(statement(
            db.get_database_backend(),
            SELECT_TRANSFER,
            [transfer_id.to_string().into()],
        ))
        .await?;
    row.as_ref().map(transfer_from_row).transpose()
}

fn statement<const N: usize>(backend: DbBackend, sql: &str, values: [Value; N]) -> Statement {
    Statement::from_sql_and_values(backend, sql, values)
}

fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt(what.to_owned())
}

fn account_from_row(row: &QueryResult) -> Result<LedgerAccount, StoreError> {
    let get_string = |column: &str| -> Result<String, DbErr> { row.try_get("", column) };
    Ok(LedgerAccount {
        account_id: AccountId::parse(&get_string("account_id")?)
            .map_err(|_| corrupt("account id"))?,
        owner_id: row.try_get("", "owner_id")?,
        currency: Currency::parse(&get_string("currency")?).map_err(|_| corrupt("currency"))?,
        kind: AccountKind::parse(&get_string("kind")?).ok_or_else(|| corrupt("account kind"))?,
        status: AccountStatus::parse(&get_string("status")?).ok_or_else(|| corrupt("status"))?,
        balance_minor: row.try_get("", "balance_minor")?,
        pending_debits_minor: row.try_get("", "pending_debits_minor")?,
        entry_count: row.try_get("", "entry_count")?,
        last_entry_hash: get_string("last_entry_hash")?,
        status_version: row.try_get("", "status_version")?,
    })
}

fn transfer_from_row(row: &QueryResult) -> Result<Transfer, StoreError> {
    let get_string = |column: &str| -> Result<String, DbErr> { row.try_get("", column) };
    let reverses: Option<String> = row.try_get("", "reverses_transfer_id")?;
    Ok(Transfer {
        transfer_id: TransferId::parse(&get_string("transfer_id")?)
            .map_err(|_| corrupt("transfer id"))?,
        kind: TransferKind::parse(&get_string("kind")?).ok_or_else(|| corrupt("transfer kind"))?,
        from_account_id: AccountId::parse(&get_string("from_account_id")?)
            .map_err(|_| corrupt("account id"))?,
        to_account_id: AccountId::parse(&get_string("to_account_id")?)
            .map_err(|_| corrupt("account id"))?,
        amount_minor: row.try_get("", "amount_minor")?,
        currency: Currency::parse(&get_string("currency")?).map_err(|_| corrupt("currency"))?,
        description: get_string("description")?,
        reverses_transfer_id: reverses
            .map(|id| TransferId::parse(&id))
            .transpose()
            .map_err(|_| corrupt("transfer id"))?,
        created_at: row.try_get::<DateTime<Utc>>("", "created_at")?,
        hold: None,
    })
}

fn entry_from_row(row: &QueryResult) -> Result<Entry, StoreError> {
    let get_string = |column: &str| -> Result<String, DbErr> { row.try_get("", column) };
    Ok(Entry {
        account_id: AccountId::parse(&get_string("account_id")?)
            .map_err(|_| corrupt("account id"))?,
        account_seq: row.try_get("", "account_seq")?,
        transfer_id: TransferId::parse(&get_string("transfer_id")?)
            .map_err(|_| corrupt("transfer id"))?,
        amount_minor: row.try_get("", "amount_minor")?,
        balance_after_minor: row.try_get("", "balance_after_minor")?,
        currency: Currency::parse(&get_string("currency")?).map_err(|_| corrupt("currency"))?,
        counterparty_account_id: AccountId::parse(&get_string("counterparty_account_id")?)
            .map_err(|_| corrupt("account id"))?,
        description: get_string("description")?,
        prev_hash: get_string("prev_hash")?,
        entry_hash: get_string("entry_hash")?,
        created_at: row.try_get::<DateTime<Utc>>("", "created_at")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The steps of SQLite's plan for `sql`.
    async fn plan_steps(db: &DatabaseConnection, sql: &str) -> Vec<String> {
        db.query_all_raw(Statement::from_string(
            DbBackend::Sqlite,
            format!("EXPLAIN QUERY PLAN {sql}"),
        ))
        .await
        .unwrap_or_else(|error| panic!("{error}"))
        .iter()
        .map(|row| {
            row.try_get::<String>("", "detail")
                .unwrap_or_else(|error| panic!("{error}"))
        })
        .collect()
    }

    /// Verification reads whole tables under live traffic: each statement may
    /// scan at most the one table it walks, and must find everything else by index, or
    /// it grows with the square of the journal (on SQLite, whose planner has no
    /// hash joins, a lookup without an index is a scan per row). Lookups by batch
    /// use the batch columns' partial indexes.
    #[tokio::test]
    async fn verification_walks_one_table_and_finds_the_rest_by_index() {
        bank_kit::testing::run_with_databases(
            bank_kit::testing::Backend::Sqlite,
            1,
            |urls| async move {
                let db = bank_kit::db::connect_and_migrate::<migrations::Migrator>(&urls[0])
                    .await
                    .unwrap_or_else(|error| panic!("{error}"));
                // The planner reads table statistics (sqlx runs `PRAGMA optimize`
                // when a connection closes): on empty tables a scan is cheapest,
                // so plan for a journal of some size, as in production.
                for sql in [
                    "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2000)
                     INSERT INTO ledger_requests (scope, idempotency_key, request_hash, batch_id, created_at)
                     SELECT 'test', 'key-' || i, 'hash', 'batch-' || i, '2026-12-01T00:00:00Z' FROM n",
                    "ANALYZE",
                ] {
                    db.execute_unprepared(sql)
                        .await
                        .unwrap_or_else(|error| panic!("{error}"));
                }
                for sql in [
                    SELECT_UNBALANCED_TRANSFERS,
                    SELECT_UNMATCHED_TRANSFERS,
                    SELECT_UNRECORDED_TRANSFERS,
                    SELECT_DANGLING_REQUESTS,
                    SELECT_UNMATCHED_RESERVATIONS,
                    SELECT_OVERDRAWN,
                    SELECT_UNMATCHED_POSTED_HOLDS,
                ] {
                    let steps = plan_steps(&db, sql).await;
                    let scans = steps.iter().filter(|step| step.starts_with("SCAN")).count();
                    assert!(scans <= 1, "{sql}\n{steps:#?}");
                }
                // The batch columns' indexes are partial (no row outside a batch
                // is in them), and the lookups by batch still find them.
                for (sql, index) in [
                    (SELECT_BATCH, "ledger_transfers_batch"),
                    (SELECT_UNRECORDED_TRANSFERS, "ledger_requests_batch"),
                ] {
                    let steps = plan_steps(&db, sql).await;
                    let by_index = format!("INDEX {index} ");
                    assert!(
                        steps.iter().any(|step| step.contains(&by_index)),
                        "{sql}\n{steps:#?}"
                    );
                    let definition = db
                        .query_one_raw(Statement::from_sql_and_values(
                            DbBackend::Sqlite,
                            "SELECT sql FROM sqlite_master WHERE type = 'index' AND name = $1",
                            [index.into()],
                        ))
                        .await
                        .unwrap_or_else(|error| panic!("{error}"))
                        .and_then(|row| row.try_get::<String>("", "sql").ok())
                        .unwrap_or_default();
                    assert!(
                        definition.ends_with("WHERE batch_id IS NOT NULL"),
                        "{definition}"
                    );
                }
            },
        )
        .await;
    }
}
