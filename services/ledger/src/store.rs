//! The ledger's storage: every SQL statement the ledger runs lives here. A posting
//! is one database transaction that checks the idempotency record, locks both
//! accounts in a fixed order, checks balances and statuses, writes the transfer,
//! its entries and the new balances, and records the idempotency key, all or
//! nothing.

pub mod migrations;

use bank_kit::{db, money::Currency};
use chrono::{DateTime, Utc};
use sea_orm::{
    AccessMode, ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, DbErr,
    IsolationLevel, QueryResult, SqliteTransactionMode, Statement, TransactionOptions,
    TransactionTrait, Value,
};
use tokio::sync::{Mutex, MutexGuard};

use crate::domain::{
    AccountId, AccountKind, AccountStatus, Entry, GENESIS_HASH, LedgerAccount, LedgerError,
    Mismatch, PostingRequest, Transfer, TransferId, TransferKind, VerifyReport, entry_hash,
};

/// How often a posting is retried after a serialization failure, deadlock or a
/// lost race on a unique key before the caller is told to try again.
const MAX_ATTEMPTS: usize = 8;

const ACCOUNT_COLUMNS: &str =
    "account_id, owner_id, currency, kind, status, balance_minor, entry_count, last_entry_hash";
const TRANSFER_COLUMNS: &str = "transfer_id, kind, from_account_id, to_account_id, amount_minor, currency, description, reverses_transfer_id, created_at";
const ENTRY_COLUMNS: &str = "account_id, account_seq, transfer_id, amount_minor, balance_after_minor, currency, counterparty_account_id, description, prev_hash, entry_hash, created_at";

/// The ledger database.
pub struct LedgerStore {
    db: DatabaseConnection,
    /// SQLite allows one writer per file. Serialising writers in process turns
    /// what would be SQLITE_BUSY failures into an orderly queue.
    sqlite_writer: Option<Mutex<()>>,
}

impl LedgerStore {
    pub fn new(db: DatabaseConnection) -> LedgerStore {
        let sqlite_writer =
            (db.get_database_backend() == DbBackend::Sqlite).then(|| Mutex::new(()));
        LedgerStore { db, sqlite_writer }
    }

    pub fn connection(&self) -> &DatabaseConnection {
        &self.db
    }

    fn backend(&self) -> DbBackend {
        self.db.get_database_backend()
    }

    /// Starts a write transaction. On SQLite it is `BEGIN IMMEDIATE`: it takes the
    /// write lock up front, so it never has to upgrade a read snapshot later,
    /// even if another process writes to the file.
    async fn begin_write(&self) -> Result<DatabaseTransaction, DbErr> {
        match self.backend() {
            DbBackend::Sqlite => {
                self.db
                    .begin_with_options(TransactionOptions {
                        sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
                        ..TransactionOptions::default()
                    })
                    .await
            }
            _ => self.db.begin().await,
        }
    }

    async fn writer(&self) -> Option<MutexGuard<'_, ()>> {
        match &self.sqlite_writer {
            Some(mutex) => Some(mutex.lock().await),
            None => None,
        }
    }

    /// Creates the book of a customer account; a repeated call with the same owner
    /// and currency returns the existing book.
    pub async fn open_account(
        &self,
        account_id: AccountId,
        owner_id: &str,
        currency: Currency,
    ) -> Result<LedgerAccount, LedgerError> {
        let _writer = self.writer().await;
        let now = bank_kit::time::now();
        self.db
            .execute_raw(statement(
                self.backend(),
                "INSERT INTO ledger_accounts (account_id, owner_id, currency, kind, status, balance_minor, entry_count, last_entry_hash, created_at, updated_at)
                 VALUES ($1, $2, $3, 'customer', 'active', 0, 0, $4, $5, $5)
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
        let account = load_account(&self.db, account_id, false)
            .await?
            .ok_or(LedgerError::AccountNotFound)?;
        if account.kind != AccountKind::Customer
            || !account.is_owned_by(owner_id)
            || account.currency != currency
        {
            return Err(LedgerError::Conflict(
                "a book with this id already exists for another owner or currency".into(),
            ));
        }
        Ok(account)
    }

    /// Sets an account's status. Closing requires a zero balance, checked under the
    /// same row lock that postings take, so no posting can slip in between.
    pub async fn set_status(
        &self,
        account_id: AccountId,
        status: AccountStatus,
    ) -> Result<LedgerAccount, LedgerError> {
        for _ in 0..MAX_ATTEMPTS {
            let _writer = self.writer().await;
            let txn = match self.begin_write().await {
                Ok(txn) => txn,
                // Another process holds the file; take another turn.
                Err(error) if db::is_retryable(&error) => continue,
                Err(error) => return Err(error.into()),
            };
            let result = set_status_in(&txn, account_id, status).await;
            match finish(txn, result).await {
                Attempt::Done(result) => return result,
                Attempt::Retry => continue,
            }
        }
        Err(LedgerError::Conflict(
            "the account is busy, try again".into(),
        ))
    }

    pub async fn account(
        &self,
        account_id: AccountId,
    ) -> Result<Option<LedgerAccount>, LedgerError> {
        load_account(&self.db, account_id, false).await
    }

    /// Posts a transfer, or returns the one already posted under the same
    /// idempotency key.
    pub async fn post(&self, request: &PostingRequest) -> Result<Transfer, LedgerError> {
        let fingerprint = request.fingerprint();
        for _ in 0..MAX_ATTEMPTS {
            let _writer = self.writer().await;
            let txn = match self.begin_write().await {
                Ok(txn) => txn,
                // Another process holds the file; take another turn.
                Err(error) if db::is_retryable(&error) => continue,
                Err(error) => return record_posting(request, Err(error.into())),
            };
            let result = post_in(&txn, request, &fingerprint).await;
            match finish(txn, result).await {
                Attempt::Done(result) => return record_posting(request, result),
                Attempt::Retry => continue,
            }
        }
        record_posting(
            request,
            Err(LedgerError::Conflict(
                "the accounts are busy, retry with the same idempotency key".into(),
            )),
        )
    }

    pub async fn transfer(&self, transfer_id: TransferId) -> Result<Option<Transfer>, LedgerError> {
        load_transfer(&self.db, transfer_id).await
    }

    /// The transfer that reverses `transfer_id`, if any.
    pub async fn reversal_of(
        &self,
        transfer_id: TransferId,
    ) -> Result<Option<TransferId>, LedgerError> {
        reversal_of(&self.db, transfer_id).await
    }

    /// An account's entries, newest first, older than `before_seq` when given.
    pub async fn entries(
        &self,
        account_id: AccountId,
        before_seq: Option<i64>,
        limit: u64,
    ) -> Result<Vec<Entry>, LedgerError> {
        let rows = self
            .db
            .query_all_raw(statement(
                self.backend(),
                &format!(
                    "SELECT {ENTRY_COLUMNS} FROM ledger_entries
                     WHERE account_id = $1 AND account_seq < $2
                     ORDER BY account_seq DESC LIMIT $3"
                ),
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
    pub async fn verify(&self) -> Result<VerifyReport, LedgerError> {
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
        let report = verify_in(&txn).await;
        txn.rollback().await.ok();
        report
    }
}

/// Rows read per query while verifying.
const VERIFY_PAGE: i64 = 1_000;

async fn verify_in(txn: &DatabaseTransaction) -> Result<VerifyReport, LedgerError> {
    let backend = txn.get_database_backend();
    let mut report = VerifyReport::default();
    let mut after_account = String::new();
    loop {
        let accounts = txn
            .query_all_raw(statement(
                backend,
                &format!(
                    "SELECT {ACCOUNT_COLUMNS} FROM ledger_accounts WHERE account_id > $1
                     ORDER BY account_id LIMIT $2"
                ),
                [after_account.clone().into(), VERIFY_PAGE.into()],
            ))
            .await?;
        for row in &accounts {
            let account = account_from_row(row)?;
            verify_account(txn, &account, &mut report).await?;
            after_account = account.account_id.to_string();
        }
        if (accounts.len() as i64) < VERIFY_PAGE {
            break;
        }
    }
    let unbalanced = txn
        .query_all_raw(statement(
            backend,
            "SELECT transfer_id FROM ledger_entries GROUP BY transfer_id
             HAVING SUM(amount_minor) <> 0 OR COUNT(*) <> 2",
            [],
        ))
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
        .query_all_raw(statement(
            backend,
            "SELECT t.transfer_id FROM ledger_transfers t
             LEFT JOIN ledger_entries debit ON debit.transfer_id = t.transfer_id
                  AND debit.account_id = t.from_account_id AND debit.amount_minor = -t.amount_minor
             LEFT JOIN ledger_entries credit ON credit.transfer_id = t.transfer_id
                  AND credit.account_id = t.to_account_id AND credit.amount_minor = t.amount_minor
             WHERE debit.entry_id IS NULL OR credit.entry_id IS NULL",
            [],
        ))
        .await?;
    for row in &unmatched {
        let transfer_id: String = row.try_get("", "transfer_id")?;
        report.mismatches.push(Mismatch {
            account_id: String::new(),
            kind: "transfer_entries",
            detail: format!("transfer {transfer_id} lacks its debit or credit entry"),
        });
    }
    Ok(report)
}

/// Replays one account's entries in order, page by page.
async fn verify_account(
    txn: &DatabaseTransaction,
    account: &LedgerAccount,
    report: &mut VerifyReport,
) -> Result<(), LedgerError> {
    let mut balance: i64 = 0;
    let mut prev_hash = GENESIS_HASH.to_owned();
    let mut count: i64 = 0;
    // Pages continue after the last stored sequence number, starting below any
    // value so that an entry forged with a sequence of zero or less is read too.
    let mut cursor = i64::MIN;
    let mut chain_broken = false;
    loop {
        let rows = txn
            .query_all_raw(statement(
                txn.get_database_backend(),
                &format!(
                    "SELECT {ENTRY_COLUMNS} FROM ledger_entries WHERE account_id = $1 AND account_seq > $2
                     ORDER BY account_seq LIMIT $3"
                ),
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
    if !chain_broken && (count != account.entry_count || prev_hash != account.last_entry_hash) {
        report.mismatches.push(Mismatch {
            account_id: account.account_id.to_string(),
            kind: "hash_chain",
            detail: "the account's chain head does not match its last entry".into(),
        });
    }
    Ok(())
}

enum Attempt<T> {
    Done(Result<T, LedgerError>),
    Retry,
}

/// Commits on success, rolls back on failure, and tells transient failures (lost
/// races, serialization failures, deadlocks) apart so the caller retries them.
async fn finish<T>(txn: DatabaseTransaction, result: Result<T, LedgerError>) -> Attempt<T> {
    match result {
        Ok(value) => match txn.commit().await {
            Ok(()) => Attempt::Done(Ok(value)),
            Err(error) if db::is_retryable(&error) => Attempt::Retry,
            Err(error) => Attempt::Done(Err(error.into())),
        },
        Err(LedgerError::Storage(error))
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
) -> Result<LedgerAccount, LedgerError> {
    let mut account = load_account(txn, account_id, true)
        .await?
        .ok_or(LedgerError::AccountNotFound)?;
    if account.kind != AccountKind::Customer {
        return Err(LedgerError::AccountNotFound);
    }
    if account.status == status {
        return Ok(account);
    }
    match (account.status, status) {
        (AccountStatus::Closed, _) => return Err(LedgerError::AccountClosed(account_id)),
        (_, AccountStatus::Closed) if account.balance_minor != 0 => {
            return Err(LedgerError::Conflict(
                "the account can only be closed at a zero balance".into(),
            ));
        }
        _ => {}
    }
    txn.execute_raw(statement(
        txn.get_database_backend(),
        "UPDATE ledger_accounts SET status = $1, updated_at = $2 WHERE account_id = $3",
        [
            status.as_str().into(),
            bank_kit::time::now().into(),
            account_id.to_string().into(),
        ],
    ))
    .await?;
    account.status = status;
    Ok(account)
}

/// Business counters of the ledger: postings committed (a replay of an
/// idempotency key is not a new one) with the minor units they moved, and
/// postings refused, by kind and the refusal's error code.
fn record_posting(
    request: &PostingRequest,
    result: Result<Posted, LedgerError>,
) -> Result<Transfer, LedgerError> {
    let kind = request.kind.as_str();
    let currency = request.currency.as_str().to_owned();
    match &result {
        Ok(Posted::New(_)) => {
            let labels = [("kind", kind.to_owned()), ("currency", currency)];
            metrics::counter!("ledger_postings_total", &labels).increment(1);
            // Positive by construction, so the cast cannot wrap.
            metrics::counter!("ledger_posted_minor_units_total", &labels)
                .increment(request.amount.minor().unsigned_abs());
        }
        Ok(Posted::Replayed(_)) => {
            metrics::counter!("ledger_posting_replays_total", "kind" => kind).increment(1);
        }
        Err(error) => {
            let labels = [
                ("kind", kind.to_owned()),
                ("code", error.code().as_str().to_owned()),
            ];
            metrics::counter!("ledger_postings_refused_total", &labels).increment(1);
        }
    }
    result.map(Posted::into_transfer)
}

/// What a posting transaction did.
enum Posted {
    New(Transfer),
    /// The idempotency key was used before with the same request.
    Replayed(Transfer),
}

impl Posted {
    fn into_transfer(self) -> Transfer {
        match self {
            Posted::New(transfer) | Posted::Replayed(transfer) => transfer,
        }
    }
}

async fn post_in(
    txn: &DatabaseTransaction,
    request: &PostingRequest,
    fingerprint: &str,
) -> Result<Posted, LedgerError> {
    let backend = txn.get_database_backend();
    if matches!(
        request.kind,
        TransferKind::Deposit | TransferKind::Withdrawal
    ) {
        ensure_settlement_account(txn, request.currency).await?;
    }

    // Lock both books in a fixed order so two opposite transfers cannot deadlock.
    // Taking the locks before reading the idempotency record means a concurrent
    // duplicate waits here and then finds the record of the first.
    let mut ids = [request.from_account_id, request.to_account_id];
    ids.sort();
    let mut locked = Vec::with_capacity(2);
    for id in ids {
        locked.push(load_account(txn, id, true).await?);
    }

    if let Some(existing) = idempotent_replay(txn, request, fingerprint).await? {
        return Ok(Posted::Replayed(existing));
    }

    let find = |id: AccountId| {
        locked
            .iter()
            .flatten()
            .find(|account| account.account_id == id)
            .cloned()
            .ok_or(LedgerError::AccountNotFound)
    };
    let mut from = find(request.from_account_id)?;
    let mut to = find(request.to_account_id)?;
    if let Some(owner) = &request.required_owner
        && !from.is_owned_by(owner)
    {
        return Err(LedgerError::AccountNotFound);
    }
    // Only deposits and withdrawals touch a settlement account; to a customer's
    // transfer it does not exist.
    if request.kind == TransferKind::Transfer
        && (from.kind != AccountKind::Customer || to.kind != AccountKind::Customer)
    {
        return Err(LedgerError::AccountNotFound);
    }
    if from.currency != request.currency || to.currency != request.currency {
        return Err(LedgerError::CurrencyMismatch);
    }
    from.ensure_open()?;
    to.ensure_open()?;
    if let Some(original) = request.reverses_transfer_id
        && reversal_of(txn, original).await?.is_some()
    {
        return Err(LedgerError::Conflict(
            "the transfer was already reversed".into(),
        ));
    }

    let amount = request.amount.minor();
    let from_after = from.balance_after(-amount)?;
    let to_after = to.balance_after(amount)?;

    let transfer = Transfer {
        transfer_id: TransferId::new(),
        kind: request.kind,
        from_account_id: from.account_id,
        to_account_id: to.account_id,
        amount_minor: amount,
        currency: request.currency,
        description: request.description.as_str().to_owned(),
        reverses_transfer_id: request.reverses_transfer_id,
        created_at: bank_kit::time::now(),
    };
    txn.execute_raw(statement(
        backend,
        "INSERT INTO ledger_transfers (transfer_id, kind, from_account_id, to_account_id, amount_minor, currency, description, reverses_transfer_id, status, initiated_by, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'posted', $9, $10)",
        [
            transfer.transfer_id.to_string().into(),
            transfer.kind.as_str().into(),
            transfer.from_account_id.to_string().into(),
            transfer.to_account_id.to_string().into(),
            amount.into(),
            transfer.currency.as_str().into(),
            transfer.description.clone().into(),
            transfer.reverses_transfer_id.map(|id| id.to_string()).into(),
            request.scope.clone().into(),
            transfer.created_at.into(),
        ],
    ))
    .await?;

    append_entry(
        txn,
        &transfer,
        &mut from,
        -amount,
        from_after,
        to.account_id,
    )
    .await?;
    append_entry(txn, &transfer, &mut to, amount, to_after, from.account_id).await?;

    txn.execute_raw(statement(
        backend,
        "INSERT INTO ledger_idempotency_keys (scope, idempotency_key, request_hash, transfer_id, created_at)
         VALUES ($1, $2, $3, $4, $5)",
        [
            request.scope.clone().into(),
            request.idempotency_key.as_str().into(),
            fingerprint.into(),
            transfer.transfer_id.to_string().into(),
            transfer.created_at.into(),
        ],
    ))
    .await?;
    Ok(Posted::New(transfer))
}

async fn append_entry(
    txn: &DatabaseTransaction,
    transfer: &Transfer,
    account: &mut LedgerAccount,
    amount_minor: i64,
    balance_after_minor: i64,
    counterparty: AccountId,
) -> Result<(), LedgerError> {
    let mut entry = Entry {
        account_id: account.account_id,
        account_seq: account.entry_count + 1,
        transfer_id: transfer.transfer_id,
        amount_minor,
        balance_after_minor,
        currency: transfer.currency,
        counterparty_account_id: counterparty,
        description: transfer.description.clone(),
        prev_hash: account.last_entry_hash.clone(),
        entry_hash: String::new(),
        created_at: transfer.created_at,
    };
    entry.entry_hash = entry_hash(&entry);
    let backend = txn.get_database_backend();
    txn.execute_raw(statement(
        backend,
        &format!(
            "INSERT INTO ledger_entries ({ENTRY_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
        ),
        [
            entry.account_id.to_string().into(),
            entry.account_seq.into(),
            entry.transfer_id.to_string().into(),
            entry.amount_minor.into(),
            entry.balance_after_minor.into(),
            entry.currency.as_str().into(),
            entry.counterparty_account_id.to_string().into(),
            entry.description.clone().into(),
            entry.prev_hash.clone().into(),
            entry.entry_hash.clone().into(),
            entry.created_at.into(),
        ],
    ))
    .await?;
    txn.execute_raw(statement(
        backend,
        "UPDATE ledger_accounts SET balance_minor = $1, entry_count = $2, last_entry_hash = $3, updated_at = $4
         WHERE account_id = $5",
        [
            balance_after_minor.into(),
            entry.account_seq.into(),
            entry.entry_hash.clone().into(),
            entry.created_at.into(),
            account.account_id.to_string().into(),
        ],
    ))
    .await?;
    account.balance_minor = balance_after_minor;
    account.entry_count = entry.account_seq;
    account.last_entry_hash = entry.entry_hash;
    Ok(())
}

async fn idempotent_replay(
    txn: &DatabaseTransaction,
    request: &PostingRequest,
    fingerprint: &str,
) -> Result<Option<Transfer>, LedgerError> {
    let row = txn
        .query_one_raw(statement(
            txn.get_database_backend(),
            "SELECT request_hash, transfer_id FROM ledger_idempotency_keys
             WHERE scope = $1 AND idempotency_key = $2",
            [
                request.scope.clone().into(),
                request.idempotency_key.as_str().into(),
            ],
        ))
        .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let stored_hash: String = row.try_get("", "request_hash")?;
    if stored_hash != fingerprint {
        return Err(LedgerError::IdempotencyKeyReused);
    }
    let transfer_id: String = row.try_get("", "transfer_id")?;
    let transfer_id =
        TransferId::parse(&transfer_id).map_err(|_| LedgerError::Corrupt("transfer id".into()))?;
    load_transfer(txn, transfer_id)
        .await?
        .map(Some)
        .ok_or_else(|| LedgerError::Corrupt("idempotency record without transfer".into()))
}

async fn ensure_settlement_account(
    txn: &DatabaseTransaction,
    currency: Currency,
) -> Result<(), LedgerError> {
    let now = bank_kit::time::now();
    txn.execute_raw(statement(
        txn.get_database_backend(),
        "INSERT INTO ledger_accounts (account_id, owner_id, currency, kind, status, balance_minor, entry_count, last_entry_hash, created_at, updated_at)
         VALUES ($1, NULL, $2, 'settlement', 'active', 0, 0, $3, $4, $4)
         ON CONFLICT (account_id) DO NOTHING",
        [
            AccountId::settlement(currency).to_string().into(),
            currency.as_str().into(),
            GENESIS_HASH.into(),
            now.into(),
        ],
    ))
    .await?;
    Ok(())
}

async fn reversal_of(
    db: &impl ConnectionTrait,
    transfer_id: TransferId,
) -> Result<Option<TransferId>, LedgerError> {
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
                .map_err(|_| LedgerError::Corrupt("transfer id".into()))
        }
    }
}

async fn load_account(
    db: &impl ConnectionTrait,
    account_id: AccountId,
    for_update: bool,
) -> Result<Option<LedgerAccount>, LedgerError> {
    let backend = db.get_database_backend();
    // SQLite has no row locks; its writers are serialised by `LedgerStore::writer`.
    let lock = if for_update && backend == DbBackend::Postgres {
        " FOR UPDATE"
    } else {
        ""
    };
    let row = db
        .query_one_raw(statement(
            backend,
            &format!("SELECT {ACCOUNT_COLUMNS} FROM ledger_accounts WHERE account_id = $1{lock}"),
            [account_id.to_string().into()],
        ))
        .await?;
    row.as_ref().map(account_from_row).transpose()
}

async fn load_transfer(
    db: &impl ConnectionTrait,
    transfer_id: TransferId,
) -> Result<Option<Transfer>, LedgerError> {
    let row = db
        .query_one_raw(statement(
            db.get_database_backend(),
            &format!("SELECT {TRANSFER_COLUMNS} FROM ledger_transfers WHERE transfer_id = $1"),
            [transfer_id.to_string().into()],
        ))
        .await?;
    row.as_ref().map(transfer_from_row).transpose()
}

fn statement<const N: usize>(backend: DbBackend, sql: &str, values: [Value; N]) -> Statement {
    Statement::from_sql_and_values(backend, sql, values)
}

fn corrupt(what: &str) -> LedgerError {
    LedgerError::Corrupt(what.to_owned())
}

fn account_from_row(row: &QueryResult) -> Result<LedgerAccount, LedgerError> {
    let get_string = |column: &str| -> Result<String, DbErr> { row.try_get("", column) };
    Ok(LedgerAccount {
        account_id: AccountId::parse(&get_string("account_id")?)
            .map_err(|_| corrupt("account id"))?,
        owner_id: row.try_get("", "owner_id")?,
        currency: Currency::parse(&get_string("currency")?).map_err(|_| corrupt("currency"))?,
        kind: AccountKind::parse(&get_string("kind")?).ok_or_else(|| corrupt("account kind"))?,
        status: AccountStatus::parse(&get_string("status")?).ok_or_else(|| corrupt("status"))?,
        balance_minor: row.try_get("", "balance_minor")?,
        entry_count: row.try_get("", "entry_count")?,
        last_entry_hash: get_string("last_entry_hash")?,
    })
}

fn transfer_from_row(row: &QueryResult) -> Result<Transfer, LedgerError> {
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
    })
}

fn entry_from_row(row: &QueryResult) -> Result<Entry, LedgerError> {
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
