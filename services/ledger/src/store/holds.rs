//! Holds as stored: the terms of each hold placed (`ledger_holds`) and how it
//! ended (`ledger_hold_resolutions`), read back as [`Hold`]s; the sweep that
//! releases the holds whose time is up; and the reads of an account's pending
//! holds.
//!
//! A hold whose time is up counts for nothing from that moment, whether or not
//! its expiry was written yet: reads count only holds that are pending and not
//! yet expired, and a commit group releases the due holds of its books (see
//! [`super::posting`]) before any of its decisions could depend on them. The
//! sweep writes those expiries for books no posting touches.

use std::collections::BTreeMap;

use chrono::{DateTime, TimeDelta, Utc};
use sea_orm::{ConnectionTrait, DatabaseTransaction, DbBackend, QueryResult};

use super::{
    LedgerStore, StoreError, corrupt,
    posting::{json_rows, lock_books, strings, write},
    statement,
};
use crate::domain::{
    AccountId, Hold, HoldResolution, HoldState, LedgerAccount, TransferId,
    plan::{self, Facts},
};
use bank_kit::money::Currency;

/// The columns of a hold with its resolution, if any.
macro_rules! hold_columns {
    () => {
        "h.hold_id, h.from_account_id, h.to_account_id, h.amount_minor, h.currency, h.description,
         h.initiated_by, h.created_at, h.expires_at,
         r.state AS resolved_state, r.amount_minor AS resolved_minor, r.resolved_at"
    };
}

const SELECT_HOLDS_POSTGRES: &str = concat!(
    "SELECT ",
    hold_columns!(),
    " FROM ledger_holds h LEFT JOIN ledger_hold_resolutions r ON r.hold_id = h.hold_id
     WHERE h.hold_id = ANY($1::text[])"
);

const SELECT_HOLDS_SQLITE: &str = concat!(
    "SELECT ",
    hold_columns!(),
    " FROM ledger_holds h LEFT JOIN ledger_hold_resolutions r ON r.hold_id = h.hold_id
     WHERE h.hold_id IN (SELECT value FROM json_each($1))"
);

/// The pending holds of some books whose time is up at `$2`, expired since `$3`.
const SELECT_DUE_POSTGRES: &str = concat!(
    "SELECT ",
    hold_columns!(),
    " FROM ledger_holds h LEFT JOIN ledger_hold_resolutions r ON r.hold_id = h.hold_id
     WHERE h.from_account_id = ANY($1::text[]) AND h.expires_at <= $2 AND h.expires_at > $3
       AND r.hold_id IS NULL"
);

const SELECT_DUE_SQLITE: &str = concat!(
    "SELECT ",
    hold_columns!(),
    " FROM ledger_holds h LEFT JOIN ledger_hold_resolutions r ON r.hold_id = h.hold_id
     WHERE h.from_account_id IN (SELECT value FROM json_each($1)) AND h.expires_at <= $2
       AND h.expires_at > $3 AND r.hold_id IS NULL"
);

/// The books with a pending hold that expired between `$2` and `$1`.
const SELECT_BOOKS_WITH_DUE_HOLDS: &str = "SELECT DISTINCT h.from_account_id FROM ledger_holds h
     WHERE h.expires_at <= $1 AND h.expires_at > $2
       AND NOT EXISTS (SELECT 1 FROM ledger_hold_resolutions r WHERE r.hold_id = h.hold_id)
     LIMIT $3";

/// An account's pending holds, newest first, older than the cursor `($3, $4)`.
const SELECT_PENDING_PAGE: &str = concat!(
    "SELECT ",
    hold_columns!(),
    " FROM ledger_holds h LEFT JOIN ledger_hold_resolutions r ON r.hold_id = h.hold_id
     WHERE h.from_account_id = $1 AND h.expires_at > $2 AND r.hold_id IS NULL
       AND (h.created_at < $3 OR (h.created_at = $3 AND h.hold_id < $4))
     ORDER BY h.created_at DESC, h.hold_id DESC LIMIT $5"
);

const SELECT_HELD: &str = "SELECT CAST(COALESCE(SUM(h.amount_minor), 0) AS BIGINT) AS held
     FROM ledger_holds h
     WHERE h.from_account_id = $1 AND h.expires_at > $2
       AND NOT EXISTS (SELECT 1 FROM ledger_hold_resolutions r WHERE r.hold_id = h.hold_id)";

/// How far back the due holds of a book are looked for: a hold is pending at
/// most this long, so one that expired earlier was released by the sweep,
/// whose first pass after a start looks at every hold.
fn due_horizon(now: DateTime<Utc>) -> DateTime<Utc> {
    now - TimeDelta::seconds(Hold::MAX_TIMEOUT_SECONDS) - TimeDelta::days(1)
}

/// How far back each sweep looks again behind the previous one: a hold whose
/// transaction committed late (its expiry is counted from its group's clock)
/// is still found.
const SWEEP_OVERLAP: TimeDelta = TimeDelta::minutes(10);

/// Books with due holds released per sweep transaction.
const SWEEP_BATCH: i64 = 256;

impl LedgerStore {
    /// A hold as it stands, if `hold_id` names one.
    pub async fn hold(&self, hold_id: TransferId) -> Result<Option<Hold>, StoreError> {
        let mut holds = read_holds(&self.db, &[hold_id]).await?;
        Ok(holds.remove(&hold_id))
    }

    /// What the pending holds of `account_id` reserve at `now`; one that expired
    /// counts for nothing, written as expired or not.
    pub async fn held(&self, account_id: AccountId, now: DateTime<Utc>) -> Result<i64, StoreError> {
        let row = self
            .db
            .query_one_raw(statement(
                self.backend(),
                SELECT_HELD,
                [account_id.to_string().into(), now.into()],
            ))
            .await?;
        Ok(match row {
            Some(row) => row.try_get("", "held")?,
            None => 0,
        })
    }

    /// The pending holds of `account_id` at `now`, newest first, after the
    /// cursor (the creation time and id of the last one of the previous page).
    pub async fn pending_holds(
        &self,
        account_id: AccountId,
        now: DateTime<Utc>,
        before: Option<(DateTime<Utc>, TransferId)>,
        limit: u64,
    ) -> Result<Vec<Hold>, StoreError> {
        let (created_at, hold_id) = match before {
            Some((created_at, hold_id)) => (created_at, hold_id.to_string()),
            // Later than any hold: every one is older.
            None => (now + TimeDelta::days(36_500), String::new()),
        };
        let rows = self
            .db
            .query_all_raw(statement(
                self.backend(),
                SELECT_PENDING_PAGE,
                [
                    account_id.to_string().into(),
                    now.into(),
                    created_at.into(),
                    hold_id.into(),
                    i64::try_from(limit).unwrap_or(i64::MAX).into(),
                ],
            ))
            .await?;
        rows.iter().map(hold_from_row).collect()
    }

    /// Writes the expiry of the pending holds whose time is up, a bounded number
    /// of books per transaction, until none is left. Returns how many holds it
    /// released.
    pub async fn expire_due_holds(&self) -> Result<usize, StoreError> {
        self.expire_due_holds_at(bank_kit::time::now()).await
    }

    /// [`expire_due_holds`](Self::expire_due_holds) with the ledger's clock
    /// reading `now`, as a test decides it.
    pub async fn expire_due_holds_at(&self, now: DateTime<Utc>) -> Result<usize, StoreError> {
        let floor = {
            let swept = self.swept_until.lock().unwrap_or_else(|p| p.into_inner());
            swept.map_or(DateTime::<Utc>::UNIX_EPOCH, |until| until - SWEEP_OVERLAP)
        };
        let mut released = 0;
        loop {
            let rows = self
                .db
                .query_all_raw(statement(
                    self.backend(),
                    SELECT_BOOKS_WITH_DUE_HOLDS,
                    [now.into(), floor.into(), SWEEP_BATCH.into()],
                ))
                .await?;
            let books = rows
                .iter()
                .map(|row| {
                    let id: String = row.try_get("", "from_account_id")?;
                    AccountId::parse(&id).map_err(|_| corrupt("account id"))
                })
                .collect::<Result<Vec<_>, StoreError>>()?;
            if books.is_empty() {
                break;
            }
            let books: std::sync::Arc<[AccountId]> = books.into();
            released += self
                .write_with_retries(|txn| {
                    let books = std::sync::Arc::clone(&books);
                    Box::pin(async move {
                        let mut locked = lock_books(txn, &books).await?;
                        release_due(txn, &mut locked, now).await
                    })
                })
                .await?;
            self.forget_books(&books);
            if (books.len() as i64) < SWEEP_BATCH {
                break;
            }
        }
        *self.swept_until.lock().unwrap_or_else(|p| p.into_inner()) = Some(now);
        Ok(released)
    }
}

/// Releases, in `txn`, the due holds of `books` (locked by the caller): writes
/// their expiry and the books' new reservations, and leaves `books` as written.
/// Returns how many it released.
pub(crate) async fn release_due(
    txn: &DatabaseTransaction,
    books: &mut BTreeMap<AccountId, LedgerAccount>,
    now: DateTime<Utc>,
) -> Result<usize, StoreError> {
    let holding: Vec<AccountId> = books
        .values()
        .filter(|book| book.pending_debits_minor > 0)
        .map(|book| book.account_id)
        .collect();
    let holds = read_due(txn, &holding, now).await?;
    if holds.is_empty() {
        return Ok(0);
    }
    let facts = Facts {
        books: books.clone(),
        holds,
        ..Facts::default()
    };
    let planned = plan::plan(&[], facts, now);
    write(txn, &planned.writes, now).await?;
    for update in &planned.writes.books {
        if let Some(book) = books.get_mut(&update.account_id) {
            book.pending_debits_minor = update.pending_debits_minor;
        }
    }
    Ok(planned.writes.resolutions.len())
}

/// Holds by id, with their resolutions as committed.
pub(crate) async fn read_holds(
    db: &impl ConnectionTrait,
    ids: &[TransferId],
) -> Result<BTreeMap<TransferId, Hold>, StoreError> {
    if ids.is_empty() {
        return Ok(BTreeMap::new());
    }
    let backend = db.get_database_backend();
    let ids = ids.iter().map(ToString::to_string);
    let rows = match backend {
        DbBackend::Postgres => {
            db.query_all_raw(statement(
                backend,
                SELECT_HOLDS_POSTGRES,
                [strings(ids).into()],
            ))
            .await?
        }
        _ => {
            db.query_all_raw(statement(backend, SELECT_HOLDS_SQLITE, [json_rows(ids)?]))
                .await?
        }
    };
    holds_from_rows(&rows)
}

/// The pending holds of `books` whose time is up at `now`.
pub(crate) async fn read_due(
    txn: &DatabaseTransaction,
    books: &[AccountId],
    now: DateTime<Utc>,
) -> Result<BTreeMap<TransferId, Hold>, StoreError> {
    if books.is_empty() {
        return Ok(BTreeMap::new());
    }
    let backend = txn.get_database_backend();
    let ids = books.iter().map(ToString::to_string);
    let (sql, ids) = match backend {
        DbBackend::Postgres => (SELECT_DUE_POSTGRES, strings(ids).into()),
        _ => (SELECT_DUE_SQLITE, json_rows(ids)?),
    };
    let rows = txn
        .query_all_raw(statement(
            backend,
            sql,
            [ids, now.into(), due_horizon(now).into()],
        ))
        .await?;
    holds_from_rows(&rows)
}

fn holds_from_rows(rows: &[QueryResult]) -> Result<BTreeMap<TransferId, Hold>, StoreError> {
    rows.iter()
        .map(|row| hold_from_row(row).map(|hold| (hold.hold_id, hold)))
        .collect()
}

fn hold_from_row(row: &QueryResult) -> Result<Hold, StoreError> {
    let text = |column: &str| -> Result<String, StoreError> { Ok(row.try_get("", column)?) };
    let id = |column: &str| -> Result<AccountId, StoreError> {
        AccountId::parse(&text(column)?).map_err(|_| corrupt("account id"))
    };
    let state: Option<String> = row.try_get("", "resolved_state")?;
    let resolution = match state {
        None => None,
        Some(state) => Some(HoldResolution {
            state: HoldState::parse(&state).ok_or_else(|| corrupt("hold state"))?,
            amount_minor: row.try_get("", "resolved_minor")?,
            resolved_at: row.try_get("", "resolved_at")?,
        }),
    };
    Ok(Hold {
        hold_id: TransferId::parse(&text("hold_id")?).map_err(|_| corrupt("hold id"))?,
        from_account_id: id("from_account_id")?,
        to_account_id: id("to_account_id")?,
        held_minor: row.try_get("", "amount_minor")?,
        currency: Currency::parse(&text("currency")?).map_err(|_| corrupt("currency"))?,
        description: text("description")?,
        initiated_by: text("initiated_by")?,
        created_at: row.try_get("", "created_at")?,
        expires_at: row.try_get("", "expires_at")?,
        resolution,
    })
}
