//! The account service's storage. Every SQL statement it runs lives here.

pub mod migrations;

use bank_kit::money::Currency;
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, QueryResult, Statement, Value};

use crate::domain::{Account, AccountError, AccountStatus};

const COLUMNS: &str = "account_id, number, owner_id, currency, nickname, status, created_at";

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

    /// Inserts a new account. Returns false when the number is already taken, so
    /// the caller can draw another.
    pub async fn insert(&self, account: &Account) -> Result<bool, AccountError> {
        let result = self
            .db
            .execute_raw(statement(
                self.backend(),
                &format!("INSERT INTO accounts ({COLUMNS}, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $7)"),
                [
                    account.account_id.to_string().into(),
                    account.number.clone().into(),
                    account.owner_id.clone().into(),
                    account.currency.as_str().into(),
                    account.nickname.clone().into(),
                    account.status.as_str().into(),
                    account.created_at.into(),
                ],
            ))
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(error) if bank_kit::db::is_unique_violation(&error) => Ok(false),
            Err(error) => Err(error.into()),
        }
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

    pub async fn set_status(
        &self,
        account_id: uuid::Uuid,
        status: AccountStatus,
    ) -> Result<(), AccountError> {
        self.db
            .execute_raw(statement(
                self.backend(),
                "UPDATE accounts SET status = $1, updated_at = $2 WHERE account_id = $3",
                [
                    status.as_str().into(),
                    bank_kit::time::now().into(),
                    account_id.to_string().into(),
                ],
            ))
            .await?;
        Ok(())
    }
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
        created_at: row.try_get("", "created_at")?,
    })
}
