//! The account service's storage. Every SQL statement it runs lives here.

pub mod migrations;

/// What the account service's own role may do when it is not the schema's
/// owner: no schema changes, no deletes.
pub const GRANTS: &[bank_kit::db::TableGrant] = &[
    bank_kit::db::TableGrant {
        table: "accounts",
        privileges: "SELECT, INSERT, UPDATE",
    },
    bank_kit::db::TableGrant {
        table: "account_open_requests",
        privileges: "SELECT, INSERT",
    },
];

use bank_domain::idempotency::IdempotencyKey;
use bank_kit::money::Currency;
use sea_orm::{
    ConnectionTrait, DatabaseConnection, DbBackend, QueryResult, Statement, TransactionTrait, Value,
};

use crate::domain::{Account, AccountError, AccountStatus};

/// A database error, as the account domain sees it: the database could not be
/// reached (the caller may retry), or it failed otherwise.
impl From<sea_orm::DbErr> for AccountError {
    fn from(error: sea_orm::DbErr) -> AccountError {
        if bank_kit::db::is_unavailable(&error) {
            AccountError::StorageUnavailable(error.to_string())
        } else {
            AccountError::Storage(error.to_string())
        }
    }
}

const COLUMNS: &str =
    "account_id, number, owner_id, currency, nickname, status, status_version, created_at";

pub struct AccountStore {
    db: DatabaseConnection,
}

impl AccountStore {
    pub fn new(db: DatabaseConnection) -> AccountStore {
        AccountStore { db }
    }

    fn backend(&self) -> DbBackend {
        self.db.get_database_backend()
    }

    /// Inserts a new account, and with `request` the record of the keyed open
    /// that made it, in one transaction, unless its owner would then hold more
    /// than `max_open` open accounts. Opens of one owner take turns (the
    /// insert's write lock on SQLite, an advisory lock on the owner on
    /// PostgreSQL), so concurrent opens cannot all slip under the limit.
    pub async fn insert(
        &self,
        account: &Account,
        request: Option<&OpenRequest>,
        max_open: u32,
    ) -> Result<Inserted, AccountError> {
        let txn = self.db.begin().await?;
        if self.backend() == DbBackend::Postgres {
            txn.execute_raw(statement(
                self.backend(),
                "SELECT pg_advisory_xact_lock(hashtext($1))",
                [account.owner_id.clone().into()],
            ))
            .await?;
        }
        let inserted = txn
            .execute_raw(statement(
                self.backend(),
                &format!("INSERT INTO accounts ({COLUMNS}, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8)"),
                [
                    account.account_id.to_string().into(),
                    account.number.clone().into(),
                    account.owner_id.clone().into(),
                    account.currency.as_str().into(),
                    account.nickname.clone().into(),
                    account.status.as_str().into(),
                    account.status_version.into(),
                    account.created_at.into(),
                ],
            ))
            .await;
        match inserted {
            Ok(_) => {}
            Err(error) if bank_kit::db::is_unique_violation(&error) => {
                txn.rollback().await.ok();
                return Ok(Inserted::NumberTaken);
            }
            Err(error) => return Err(error.into()),
        }
        let open = txn
            .query_one_raw(statement(
                self.backend(),
                "SELECT COUNT(*) AS open FROM accounts WHERE owner_id = $1 AND status <> 'closed'",
                [account.owner_id.clone().into()],
            ))
            .await?
            .map(|row| row.try_get::<i64>("", "open"))
            .transpose()?
            .unwrap_or_default();
        if open > i64::from(max_open) {
            txn.rollback().await.ok();
            return Ok(Inserted::LimitReached);
        }
        if let Some(request) = request {
            // A concurrent open with the same key waits here for the first to
            // commit, then finds the key taken.
            let recorded = txn
                .execute_raw(statement(
                    self.backend(),
                    "INSERT INTO account_open_requests (owner_id, idempotency_key, request_hash, account_id, created_at)
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (owner_id, idempotency_key) DO NOTHING",
                    [
                        account.owner_id.clone().into(),
                        request.idempotency_key.as_str().into(),
                        request.request_hash.clone().into(),
                        account.account_id.to_string().into(),
                        account.created_at.into(),
                    ],
                ))
                .await?;
            if recorded.rows_affected() == 0 {
                txn.rollback().await.ok();
                return Ok(Inserted::KeyTaken);
            }
        }
        txn.commit().await?;
        Ok(Inserted::Inserted)
    }

    /// The account an earlier keyed open of `owner_id` made, with that request's
    /// fingerprint.
    pub async fn open_request(
        &self,
        owner_id: &str,
        idempotency_key: &IdempotencyKey,
    ) -> Result<Option<(String, uuid::Uuid)>, AccountError> {
        let row = self
            .db
            .query_one_raw(statement(
                self.backend(),
                "SELECT request_hash, account_id FROM account_open_requests
                 WHERE owner_id = $1 AND idempotency_key = $2",
                [owner_id.into(), idempotency_key.as_str().into()],
            ))
            .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let account_id: String = row.try_get("", "account_id")?;
        let account_id = uuid::Uuid::try_parse(&account_id)
            .map_err(|_| AccountError::Corrupt("open request account id".into()))?;
        Ok(Some((row.try_get("", "request_hash")?, account_id)))
    }

    pub async fn get(&self, account_id: uuid::Uuid) -> Result<Option<Account>, AccountError> {
        let row = self
            .db
            .query_one_raw(statement(
                self.backend(),
                &format!("SELECT {COLUMNS} FROM accounts WHERE account_id = $1"),
                [account_id.to_string().into()],
            ))
            .await?;
        row.as_ref().map(account_from_row).transpose()
    }

    /// The owner's accounts in id order (ids are time-ordered UUIDv7), after
    /// `after` when given.
    pub async fn list_by_owner(
        &self,
        owner_id: &str,
        after: Option<uuid::Uuid>,
        limit: u64,
    ) -> Result<Vec<Account>, AccountError> {
        let rows = self
            .db
            .query_all_raw(statement(
                self.backend(),
                &format!(
                    "SELECT {COLUMNS} FROM accounts WHERE owner_id = $1 AND account_id > $2
                     ORDER BY account_id LIMIT $3"
                ),
                [
                    owner_id.into(),
                    after.map(|id| id.to_string()).unwrap_or_default().into(),
                    i64::try_from(limit).unwrap_or(i64::MAX).into(),
                ],
            ))
            .await?;
        rows.iter().map(account_from_row).collect()
    }

    /// Records a pending account as active, its book not yet activated.
    pub async fn record_active(&self, account_id: uuid::Uuid) -> Result<(), AccountError> {
        self.db
            .execute_raw(statement(
                self.backend(),
                "UPDATE accounts SET status = 'active', updated_at = $1
                 WHERE account_id = $2 AND status = 'pending'",
                [bank_kit::time::now().into(), account_id.to_string().into()],
            ))
            .await?;
        Ok(())
    }

    /// Records the status the ledger decided at `status_version`, unless a newer
    /// decision is recorded already: answers of concurrent changes may arrive in
    /// any order, and the newest one wins here as it did in the ledger.
    pub async fn record_status(
        &self,
        account_id: uuid::Uuid,
        status: AccountStatus,
        status_version: i64,
    ) -> Result<(), AccountError> {
        self.db
            .execute_raw(statement(
                self.backend(),
                "UPDATE accounts SET status = $1, status_version = $2, updated_at = $3
                 WHERE account_id = $4 AND status_version < $2",
                [
                    status.as_str().into(),
                    status_version.into(),
                    bank_kit::time::now().into(),
                    account_id.to_string().into(),
                ],
            ))
            .await?;
        Ok(())
    }
}

/// An `OpenAccount` that carried an idempotency key.
pub struct OpenRequest {
    pub idempotency_key: IdempotencyKey,
    pub request_hash: String,
}

/// What [`AccountStore::insert`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inserted {
    Inserted,
    /// The number was drawn before: draw another.
    NumberTaken,
    /// An earlier request holds the key: it made the account to answer with.
    KeyTaken,
    /// The owner holds the most open accounts allowed.
    LimitReached,
}

fn statement<const N: usize>(backend: DbBackend, sql: &str, values: [Value; N]) -> Statement {
    Statement::from_sql_and_values(backend, sql, values)
}

fn account_from_row(row: &QueryResult) -> Result<Account, AccountError> {
    let corrupt = |what: &str| AccountError::Corrupt(what.to_owned());
    let account_id: String = row.try_get("", "account_id")?;
    let currency: String = row.try_get("", "currency")?;
    let status: String = row.try_get("", "status")?;
    Ok(Account {
        account_id: uuid::Uuid::try_parse(&account_id).map_err(|_| corrupt("account id"))?,
        number: row.try_get("", "number")?,
        owner_id: row.try_get("", "owner_id")?,
        currency: Currency::parse_supported(&currency).map_err(|_| corrupt("currency"))?,
        nickname: row.try_get("", "nickname")?,
        status: AccountStatus::parse(&status).ok_or_else(|| corrupt("status"))?,
        status_version: row.try_get("", "status_version")?,
        created_at: row.try_get("", "created_at")?,
    })
}
