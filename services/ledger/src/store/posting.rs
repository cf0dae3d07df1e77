//! A commit group's transaction. One transaction per group, of a fixed shape:
//!
//! 1. create the settlement books the group needs, the first time a currency is
//!    seen by this process (they are never removed, so once is enough);
//! 2. lock every book the group names, in sorted id order, in one statement
//!    (`SELECT … WHERE account_id = ANY($1) ORDER BY account_id FOR UPDATE` on
//!    PostgreSQL; SQLite's `BEGIN IMMEDIATE` has locked the whole file already, and
//!    it reads them with `json_each` over the ids);
//! 3. read the request records of the group's keys, with their transfers, which
//!    of the transfers the group reverses have a reversal already, and the holds
//!    it posts or voids (their terms are read once before the locks, to know
//!    which books to lock, and again under them);
//! 4. plan (`bank_domain::ledger::plan`), in memory. If a request was refused
//!    for want of funds on a book whose holds reserve some, the book's holds
//!    whose time is up are read and the group planned again, so an expired hold
//!    never counts (the common case pays nothing for holds);
//! 5. insert the transfers, entries, holds, hold resolutions and request
//!    records and update the books: on
//!    PostgreSQL in one statement of data-modifying CTEs, each table from arrays
//!    (`UNNEST`, so the statement text never depends on the group's size); on
//!    SQLite one statement per table, its rows read from a JSON array with
//!    `json_each`;
//! 6. commit, once. Only then are the callers answered.
//!
//! Serialization failures, deadlocks, a busy SQLite file and a key inserted by
//! another replica meanwhile (a unique violation) roll the group back and run it
//! again from step 2, so the plan always decides on what is committed.
//!
//! On PostgreSQL most groups take a shorter way, one round trip instead of five:
//! the store remembers every book as its last group committed it and the
//! pending holds it placed or read, and a group whose books and resolved holds
//! are all remembered, and that reverses nothing, is planned on them with no
//! read at all and written by one autocommit statement. That statement locks
//! the books in the same sorted order and checks each against what the plan
//! read (balance, reservation, entry count, status and its version) before it
//! writes anything; a book that changed meanwhile (another replica, a status
//! change), a key decided before or a hold resolved meanwhile (their inserts
//! fail) or any other failure leaves nothing written, and the group takes the
//! locked way above, which reads what is committed.

use std::{collections::HashSet, sync::Arc, time::Instant};

use bank_domain::ledger::plan::{
    self, Facts, ItemRefusal, KnownRequest, Outcome, Proposal, RecordKey, RecordedOutcome, Refusal,
    Writes,
};
use bank_kit::{ErrorCode, db, money::Currency};
use chrono::{DateTime, Utc};
use sea_orm::{
    ConnectionTrait, DatabaseTransaction, DbBackend, QueryResult, Statement, Value, sqlx,
};
use serde_json::json;

use super::{
    LedgerStore, StoreError, account_columns, account_from_row, batch_transfers, corrupt,
    holds::{read_due, read_holds},
    load_transfer_view, statement,
};
use crate::domain::{AccountId, GENESIS_HASH, Hold, IdempotencyKey, LedgerAccount, TransferId};

const ENSURE_SETTLEMENT: &str = "INSERT INTO ledger_accounts (account_id, owner_id, currency, kind, status, balance_minor, entry_count, last_entry_hash, created_at, updated_at)
     VALUES ($1, NULL, $2, 'settlement', 'active', 0, 0, $3, $4, $4)
     ON CONFLICT (account_id) DO NOTHING";

const LOCK_BOOKS_POSTGRES: &str = concat!(
    "SELECT ",
    account_columns!(),
    " FROM ledger_accounts WHERE account_id = ANY($1::text[]) ORDER BY account_id FOR UPDATE"
);

/// The request records' columns.
macro_rules! request_columns {
    () => {
        "r.scope, r.idempotency_key, r.request_hash, r.transfer_id, r.hold_id, r.batch_id,
         r.refusal_code, r.refusal_detail, r.refusal_items"
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
                     LIMIT 1) AS r ON true"
);

const SELECT_REQUESTS_SQLITE: &str = concat!(
    "SELECT ",
    request_columns!(),
    " FROM json_each($1) AS k
       JOIN ledger_requests r ON r.scope = k.value ->> 0 AND r.idempotency_key = k.value ->> 1"
);

const LOCK_BOOKS_SQLITE: &str = concat!(
    "SELECT ",
    account_columns!(),
    " FROM ledger_accounts WHERE account_id IN (SELECT value FROM json_each($1)) ORDER BY account_id"
);

const SELECT_REVERSED_POSTGRES: &str = "SELECT reverses_transfer_id FROM ledger_transfers WHERE reverses_transfer_id = ANY($1::text[])";

const SELECT_REVERSED_SQLITE: &str = "SELECT reverses_transfer_id FROM ledger_transfers
     WHERE reverses_transfer_id IN (SELECT value FROM json_each($1))";

/// The data-modifying CTEs and the final insert of a group's writes on
/// PostgreSQL, shared by its two statements below.
macro_rules! write_group_postgres {
    () => {
        "new_transfers AS (
       INSERT INTO ledger_transfers (transfer_id, kind, from_account_id, to_account_id, amount_minor, currency, description, reverses_transfer_id, status, initiated_by, batch_id, batch_index, created_at)
       SELECT t.id, t.kind, t.from_id, t.to_id, t.amount, t.currency, t.description, NULLIF(t.reverses, ''), 'posted', t.initiated_by, NULLIF(t.batch_id, ''), NULLIF(t.batch_index, -1), $47
       FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[], $6::text[], $7::text[], $8::text[], $9::text[], $10::text[], $11::bigint[])
            AS t (id, kind, from_id, to_id, amount, currency, description, reverses, initiated_by, batch_id, batch_index)
     ), new_entries AS (
       INSERT INTO ledger_entries (account_id, account_seq, transfer_id, amount_minor, balance_after_minor, currency, counterparty_account_id, description, prev_hash, entry_hash, created_at)
       SELECT e.account_id, e.seq, e.transfer_id, e.amount, e.balance_after, e.currency, e.counterparty, e.description, e.prev_hash, e.entry_hash, $47
       FROM UNNEST($12::text[], $13::bigint[], $14::text[], $15::bigint[], $16::bigint[], $17::text[], $18::text[], $19::text[], $20::text[], $21::text[])
            AS e (account_id, seq, transfer_id, amount, balance_after, currency, counterparty, description, prev_hash, entry_hash)
     ), updated_books AS (
       UPDATE ledger_accounts AS a
       SET balance_minor = b.balance, pending_debits_minor = b.pending, entry_count = b.entry_count, last_entry_hash = b.last_hash, updated_at = $47
       FROM UNNEST($22::text[], $23::bigint[], $24::bigint[], $25::bigint[], $26::text[]) AS b (account_id, balance, pending, entry_count, last_hash)
       WHERE a.account_id = ANY($22::text[]) AND a.account_id = b.account_id
     ), new_holds AS (
       INSERT INTO ledger_holds (hold_id, from_account_id, to_account_id, amount_minor, currency, description, initiated_by, created_at, expires_at)
       SELECT h.id, h.from_id, h.to_id, h.amount, h.currency, h.description, h.initiated_by, $47, h.expires_at::timestamptz
       FROM UNNEST($36::text[], $37::text[], $38::text[], $39::bigint[], $40::text[], $41::text[], $42::text[], $43::text[])
            AS h (id, from_id, to_id, amount, currency, description, initiated_by, expires_at)
     ), new_resolutions AS (
       INSERT INTO ledger_hold_resolutions (hold_id, state, amount_minor, resolved_at)
       SELECT r.hold_id, r.state, r.amount, $47
       FROM UNNEST($44::text[], $45::text[], $46::bigint[]) AS r (hold_id, state, amount)
     )
     INSERT INTO ledger_requests (scope, idempotency_key, request_hash, transfer_id, hold_id, batch_id, refusal_code, refusal_detail, refusal_items, created_at)
     SELECT r.scope, r.idempotency_key, r.request_hash, NULLIF(r.transfer_id, ''), NULLIF(r.hold_id, ''), NULLIF(r.batch_id, ''), NULLIF(r.code, ''), NULLIF(r.detail, ''), NULLIF(r.items, ''), $47
     FROM UNNEST($27::text[], $28::text[], $29::text[], $30::text[], $31::text[], $32::text[], $33::text[], $34::text[], $35::text[])
          AS r (scope, idempotency_key, request_hash, transfer_id, hold_id, batch_id, code, detail, items)"
    };
}

/// Every row of a group in one statement, so the writes cost one round trip:
/// transfers, entries, book updates, holds, hold resolutions and request
/// records, each from arrays. The foreign keys on the group's own transfers and
/// holds are checked at the end of the statement, when those rows are in place.
const WRITE_GROUP_POSTGRES: &str = concat!("WITH ", write_group_postgres!());

/// A whole commit group as one autocommit statement, for a group planned on the
/// books as this process last committed them: it first locks those books in
/// sorted id order (the order every group locks in) and checks that each still
/// has the balance, reservation, entry count and status the plan read
/// (`$48` to `$53`); if one has not, `ledger_require_current_books` raises a
/// serialization failure before any row is written and the statement, its own
/// transaction, leaves nothing. The request records are the statement's main
/// query, which reads the check first; the other tables' rows are written after
/// it.
const WRITE_GUARDED_GROUP_POSTGRES: &str = concat!(
    "WITH current_books AS MATERIALIZED (
       SELECT a.account_id
       FROM ledger_accounts AS a
       JOIN UNNEST($48::text[], $49::bigint[], $50::bigint[], $51::bigint[], $52::bigint[], $53::text[])
            AS g (account_id, balance, pending, entry_count, status_version, status)
         ON a.account_id = g.account_id
       WHERE a.balance_minor = g.balance AND a.pending_debits_minor = g.pending
         AND a.entry_count = g.entry_count AND a.status_version = g.status_version
         AND a.status = g.status
       ORDER BY a.account_id
       FOR UPDATE OF a
     ), checked AS MATERIALIZED (
       SELECT ledger_require_current_books(
                (SELECT count(*) FROM current_books) = cardinality($48::text[])) AS ok
     ), ",
    write_group_postgres!(),
    " WHERE (SELECT ok FROM checked)"
);

/// SQLite's forms of the group's writes: one statement per table, each reading
/// its rows from a JSON array of arrays with `json_each`, so a group costs one
/// statement per kind of row, not one per row.
const INSERT_TRANSFERS_SQLITE: &str = "INSERT INTO ledger_transfers (transfer_id, kind, from_account_id, to_account_id, amount_minor, currency, description, reverses_transfer_id, status, initiated_by, batch_id, batch_index, created_at)
     SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4, value ->> 5, value ->> 6, value ->> 7, 'posted', value ->> 8, value ->> 9, value ->> 10, $2
     FROM json_each($1)";

const INSERT_ENTRIES_SQLITE: &str = "INSERT INTO ledger_entries (account_id, account_seq, transfer_id, amount_minor, balance_after_minor, currency, counterparty_account_id, description, prev_hash, entry_hash, created_at)
     SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4, value ->> 5, value ->> 6, value ->> 7, value ->> 8, value ->> 9, $2
     FROM json_each($1)";

const UPDATE_BOOKS_SQLITE: &str = "UPDATE ledger_accounts
     SET balance_minor = b.value ->> 1, pending_debits_minor = b.value ->> 2, entry_count = b.value ->> 3, last_entry_hash = b.value ->> 4, updated_at = $2
     FROM json_each($1) AS b WHERE ledger_accounts.account_id = b.value ->> 0";

const INSERT_HOLDS_SQLITE: &str = "INSERT INTO ledger_holds (hold_id, from_account_id, to_account_id, amount_minor, currency, description, initiated_by, created_at, expires_at)
     SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4, value ->> 5, value ->> 6, $2, value ->> 7
     FROM json_each($1)";

const INSERT_RESOLUTIONS_SQLITE: &str =
    "INSERT INTO ledger_hold_resolutions (hold_id, state, amount_minor, resolved_at)
     SELECT value ->> 0, value ->> 1, value ->> 2, $2
     FROM json_each($1)";

const INSERT_REQUESTS_SQLITE: &str = "INSERT INTO ledger_requests (scope, idempotency_key, request_hash, transfer_id, hold_id, batch_id, refusal_code, refusal_detail, refusal_items, created_at)
     SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4, value ->> 5, value ->> 6, value ->> 7, value ->> 8, $2
     FROM json_each($1)";

impl LedgerStore {
    /// Decides and commits one group of postings, answering each in order. The
    /// whole group is retried on a transient conflict; the outcomes returned are
    /// those of the attempt that committed.
    pub async fn commit_group(&self, proposals: &[Proposal]) -> Result<Vec<Outcome>, StoreError> {
        self.commit_group_on(proposals, None).await
    }

    /// [`commit_group`](Self::commit_group) with the ledger's clock reading `now`
    /// for every attempt: what a test uses to decide when holds expire. The
    /// clock must not go back between calls.
    pub async fn commit_group_at(
        &self,
        proposals: &[Proposal],
        now: DateTime<Utc>,
    ) -> Result<Vec<Outcome>, StoreError> {
        self.commit_group_on(proposals, Some(now)).await
    }

    async fn commit_group_on(
        &self,
        proposals: &[Proposal],
        clock: Option<DateTime<Utc>>,
    ) -> Result<Vec<Outcome>, StoreError> {
        let currencies: Arc<[Currency]> = self.unsettled_currencies(proposals).into();
        if currencies.is_empty() {
            let now = clock.unwrap_or_else(bank_kit::time::now);
            if let Some(outcomes) = self.commit_on_known_books(proposals, now).await {
                return Ok(outcomes);
            }
        }
        let group: Arc<[Proposal]> = proposals.into();
        let (outcomes, remembered) = self
            .write_with_retries(|txn| {
                let (group, currencies) = (Arc::clone(&group), Arc::clone(&currencies));
                // Each attempt decides at its own moment unless the caller fixed it.
                let now = clock.unwrap_or_else(bank_kit::time::now);
                Box::pin(async move { group_in(txn, &group, &currencies, now).await })
            })
            .await?;
        self.mark_settled(&currencies);
        self.remember(remembered);
        metrics::counter!("ledger_commit_groups_total", "path" => "locked").increment(1);
        Ok(outcomes)
    }

    /// The group written in one round trip (PostgreSQL): planned on the books and
    /// pending holds as this process last committed or locked them, with no
    /// request record to read, and written by one autocommit statement that
    /// locks the books and checks them against what the plan read
    /// ([`WRITE_GUARDED_GROUP_POSTGRES`]). `None` when the group needs more than
    /// that (a book or a hold not known yet, a reversal, a key used before, a
    /// refusal for funds that an expired hold could change) or when the
    /// statement failed, a book having changed or a hold having been resolved
    /// meanwhile included (its resolution's primary key): nothing of it was
    /// written, or if the connection broke at the commit, what was written is
    /// recorded under the group's keys. Either way the group then takes the
    /// locked path, which reads those records and answers from them.
    async fn commit_on_known_books(
        &self,
        proposals: &[Proposal],
        now: DateTime<Utc>,
    ) -> Option<Vec<Outcome>> {
        let guarded = self.guarded.as_ref()?;
        if !plan::reversals_to_read(proposals).is_empty() {
            return None;
        }
        let resolved = plan::holds_to_read(proposals);
        let holds = self.holds.known(&resolved)?;
        let ids = plan::books_to_lock(proposals, &holds);
        let books = self.books.known(&ids)?;
        let facts = Facts {
            books: books.clone(),
            holds: holds.clone(),
            ..Facts::default()
        };
        let planned = plan::plan(proposals, facts, now);
        // A key decided before makes the records' insert fail, and the locked
        // path answers it; one the plan decided twice in the group is written once.
        if planned.writes.requests.is_empty()
            || !short_of_funds(&planned.outcomes, &books).is_empty()
        {
            return None;
        }
        // Only a group that would try counts against the backoff.
        if !self.backoff.allows() {
            return None;
        }
        let remembered = Remembered::after(books.clone(), &holds, &planned.writes);
        match write_guarded(guarded, &planned.writes, &books, now).await {
            Ok(()) => {
                self.backoff.succeeded();
                self.remember(remembered);
                metrics::counter!("ledger_commit_groups_total", "path" => "known_books")
                    .increment(1);
                Some(planned.outcomes)
            }
            Err(error) => {
                // A book changed meanwhile (or a deadlock): other writers are
                // on these books. A key or hold decided before says nothing
                // of the next groups.
                if matches!(&error, StoreError::Database(cause) if bank_kit::db::is_retryable(cause))
                {
                    self.backoff.failed();
                }
                metrics::counter!("ledger_commit_groups_unwritten_total").increment(1);
                self.books.forget(&ids);
                self.holds.forget(&resolved);
                tracing::debug!(error = %error, "commit group on known books not written; locking its books");
                None
            }
        }
    }

    /// Keeps what a committed group left, for the next groups to plan on
    /// (PostgreSQL: SQLite's writer holds the whole file, and reads in process).
    fn remember(&self, remembered: Remembered) {
        if self.backend() != DbBackend::Postgres {
            return;
        }
        self.books.keep(remembered.books);
        self.holds.forget(&remembered.resolved);
        self.holds.keep(
            remembered
                .pending
                .into_iter()
                .map(|hold| (hold.hold_id, hold)),
        );
    }

    /// Drops what this process knew of the books `ids` and of the holds on
    /// them: they were written outside a commit group (a status change, the
    /// hold sweep), which may have expired some of those holds too.
    pub(crate) fn forget_books(&self, ids: &[AccountId]) {
        self.books.forget(ids);
        let books: HashSet<AccountId> = ids.iter().copied().collect();
        self.holds
            .forget_where(|hold| books.contains(&hold.from_account_id));
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

/// What the ledger remembers between groups, by id: books as the last group
/// left them, pending holds. At most [`Memory::LIMIT`] of each (a few hundred
/// bytes apiece); past it the memory starts over, and what it held comes back
/// as groups lock and read it.
pub(crate) struct Memory<K, V>(std::sync::Mutex<std::collections::HashMap<K, V>>);

impl<K: std::hash::Hash + Ord + Copy, V: Clone> Memory<K, V> {
    const LIMIT: usize = 16_384;

    /// The values of `ids`, if every one is remembered.
    fn known(&self, ids: &[K]) -> Option<std::collections::BTreeMap<K, V>> {
        let known = self.0.lock().unwrap_or_else(|poison| poison.into_inner());
        ids.iter()
            .map(|id| known.get(id).map(|value| (*id, value.clone())))
            .collect()
    }

    fn keep(&self, values: impl IntoIterator<Item = (K, V)>) {
        let mut known = self.0.lock().unwrap_or_else(|poison| poison.into_inner());
        for (id, value) in values {
            if known.len() >= Self::LIMIT && !known.contains_key(&id) {
                known.clear();
            }
            known.insert(id, value);
        }
    }

    fn forget(&self, ids: &[K]) {
        let mut known = self.0.lock().unwrap_or_else(|poison| poison.into_inner());
        for id in ids {
            known.remove(id);
        }
    }

    /// Forgets every value for which `gone` is true.
    fn forget_where(&self, mut gone: impl FnMut(&V) -> bool) {
        let mut known = self.0.lock().unwrap_or_else(|poison| poison.into_inner());
        known.retain(|_, value| !gone(value));
    }
}

impl<K, V> Default for Memory<K, V> {
    fn default() -> Self {
        Memory(std::sync::Mutex::default())
    }
}

/// How often the ledger tries the one-statement path. Each failed try costs a
/// round trip before the locked path; when other replicas keep writing the same
/// books (a settlement book every deposit touches), most tries would fail. After
/// a try fails because a book changed, the next groups go straight to the
/// locked path, one after the first such failure in a row, then twice as many
/// after each further one, up to [`Backoff::MAX_SKIP`]; a success starts over.
/// At worst one group in `MAX_SKIP + 1` pays for a failed try.
#[derive(Debug, Default)]
pub(crate) struct Backoff(std::sync::Mutex<BackoffState>);

#[derive(Debug, Default, Clone, Copy)]
struct BackoffState {
    /// Groups still to send straight to the locked path.
    skip: u32,
    /// How many the latest failure skipped (0: the latest try succeeded).
    penalty: u32,
}

impl Backoff {
    const MAX_SKIP: u32 = 64;

    /// Whether the next group may try the one-statement path; counts a skip.
    pub(crate) fn allows(&self) -> bool {
        let mut state = self.0.lock().unwrap_or_else(|poison| poison.into_inner());
        if state.skip == 0 {
            return true;
        }
        state.skip -= 1;
        false
    }

    pub(crate) fn failed(&self) {
        let mut state = self.0.lock().unwrap_or_else(|poison| poison.into_inner());
        state.penalty = (state.penalty * 2).clamp(1, Self::MAX_SKIP);
        state.skip = state.penalty;
    }

    pub(crate) fn succeeded(&self) {
        *self.0.lock().unwrap_or_else(|poison| poison.into_inner()) = BackoffState::default();
    }
}

/// What a committed group leaves for the next groups to plan on: its books as
/// written, the holds it read or placed that are still pending, and the holds
/// it resolved (which the next groups must read, to refuse them as no longer
/// pending).
struct Remembered {
    books: std::collections::BTreeMap<AccountId, LedgerAccount>,
    pending: Vec<Hold>,
    resolved: Vec<TransferId>,
}

impl Remembered {
    /// From the books and holds a group planned on and the rows it writes.
    fn after(
        books: std::collections::BTreeMap<AccountId, LedgerAccount>,
        holds: &std::collections::BTreeMap<TransferId, Hold>,
        writes: &Writes,
    ) -> Remembered {
        let resolved: Vec<TransferId> = writes.resolutions.iter().map(|(id, _)| *id).collect();
        let pending = holds
            .values()
            .filter(|hold| hold.resolution.is_none() && !resolved.contains(&hold.hold_id))
            .chain(&writes.holds)
            .cloned()
            .collect();
        Remembered {
            books: books_after(books, &writes.books),
            pending,
            resolved,
        }
    }
}

/// The books of a group once its writes are applied.
fn books_after(
    mut books: std::collections::BTreeMap<AccountId, LedgerAccount>,
    updates: &[plan::BookUpdate],
) -> std::collections::BTreeMap<AccountId, LedgerAccount> {
    for update in updates {
        if let Some(book) = books.get_mut(&update.account_id) {
            book.balance_minor = update.balance_minor;
            book.pending_debits_minor = update.pending_debits_minor;
            book.entry_count = update.entry_count;
            book.last_entry_hash.clone_from(&update.last_entry_hash);
        }
    }
    books
}

/// The group's transaction on its locked books: its outcomes, and what it
/// leaves for the next groups to plan on once it commits.
async fn group_in(
    txn: &DatabaseTransaction,
    proposals: &[Proposal],
    currencies: &[Currency],
    now: DateTime<Utc>,
) -> Result<(Vec<Outcome>, Remembered), StoreError> {
    let backend = txn.get_database_backend();
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
    // (Each statement is a span of the group's, see `bank_kit::db::connect`.)
    let resolved = plan::holds_to_read(proposals);
    let terms = read_holds(txn, &resolved).await?;
    let books = lock_books(txn, &plan::books_to_lock(proposals, &terms)).await?;
    let mut facts = Facts {
        books,
        requests: read_requests(txn, &plan::keys_to_read(proposals)).await?,
        reversed: read_reversed(txn, &plan::reversals_to_read(proposals)).await?,
        // Again, now that their books are locked: how each ended is settled.
        holds: read_holds(txn, &resolved).await?,
    };
    let (read_books, read_holds) = (facts.books.clone(), facts.holds.clone());
    let mut planned = plan::plan(proposals, facts.clone(), now);
    let short = short_of_funds(&planned.outcomes, &facts.books);
    if !short.is_empty() {
        facts.holds.extend(read_due(txn, &short, now).await?);
        planned = plan::plan(proposals, facts, now);
    }
    write(txn, &planned.writes, now).await?;
    let remembered = Remembered::after(read_books, &read_holds, &planned.writes);
    Ok((planned.outcomes, remembered))
}

/// The books whose pending holds might have expired, when some request of the
/// group was refused for want of funds: releasing them could change its answer.
fn short_of_funds(
    outcomes: &[Outcome],
    books: &std::collections::BTreeMap<AccountId, LedgerAccount>,
) -> Vec<AccountId> {
    let refused_for_funds = outcomes.iter().any(|outcome| {
        outcome.result.as_ref().err().is_some_and(|refusal| {
            refusal.code == ErrorCode::InsufficientFunds
                || refusal
                    .items
                    .iter()
                    .any(|item| item.code == ErrorCode::InsufficientFunds)
        })
    });
    if !refused_for_funds {
        return Vec::new();
    }
    books
        .values()
        .filter(|book| book.pending_debits_minor > 0)
        .map(|book| book.account_id)
        .collect()
}

pub(crate) async fn lock_books(
    txn: &DatabaseTransaction,
    ids: &[AccountId],
) -> Result<std::collections::BTreeMap<AccountId, LedgerAccount>, StoreError> {
    let mut books = std::collections::BTreeMap::new();
    let rows = match txn.get_database_backend() {
        DbBackend::Postgres => {
            txn.query_all_raw(statement(
                DbBackend::Postgres,
                LOCK_BOOKS_POSTGRES,
                [strings(ids.iter().map(ToString::to_string)).into()],
            ))
            .await?
        }
        backend => {
            txn.query_all_raw(statement(
                backend,
                LOCK_BOOKS_SQLITE,
                [json_rows(ids.iter().map(ToString::to_string))?],
            ))
            .await?
        }
    };
    for row in &rows {
        let book = account_from_row(row)?;
        books.insert(book.account_id, book);
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
                    strings(keys.iter().map(|key| key.scope.clone())).into(),
                    strings(
                        keys.iter()
                            .map(|key| key.idempotency_key.as_str().to_owned()),
                    )
                    .into(),
                ],
            ))
            .await?
        }
        _ => {
            txn.query_all_raw(statement(
                backend,
                SELECT_REQUESTS_SQLITE,
                [json_rows(keys.iter().map(|key| {
                    (key.scope.as_str(), key.idempotency_key.as_str())
                }))?],
            ))
            .await?
        }
    };
    let mut known = std::collections::HashMap::with_capacity(rows.len());
    for row in &rows {
        let (key, request) = known_request_from_row(txn, row).await?;
        known.insert(key, request);
    }
    Ok(known)
}

/// A request record, its outcome read as it stands now: the transfer it made
/// (a hold's, with the hold), the hold it placed or voided, the batch it
/// posted, or its refusal.
async fn known_request_from_row(
    txn: &DatabaseTransaction,
    row: &QueryResult,
) -> Result<(RecordKey, KnownRequest), StoreError> {
    let scope: String = row.try_get("", "scope")?;
    let key: String = row.try_get("", "idempotency_key")?;
    let fingerprint: String = row.try_get("", "request_hash")?;
    let column = |name: &str| -> Result<Option<String>, StoreError> { Ok(row.try_get("", name)?) };
    let id = |raw: String| TransferId::parse(&raw).map_err(|_| corrupt("transfer id"));
    let outcome = if let Some(code) = column("refusal_code")? {
        Err(Refusal {
            code: ErrorCode::parse(&code).ok_or_else(|| corrupt("refusal code"))?,
            detail: column("refusal_detail")?.unwrap_or_default(),
            items: column("refusal_items")?
                .map(|items| items_from_json(&items))
                .transpose()?
                .unwrap_or_default(),
        })
    } else if let Some(batch_id) = column("batch_id")? {
        Ok(batch_transfers(txn, id(batch_id)?).await?)
    } else {
        let subject = column("transfer_id")?
            .or(column("hold_id")?)
            .ok_or_else(|| corrupt("request record without its outcome"))?;
        let transfer = load_transfer_view(txn, id(subject)?)
            .await?
            .ok_or_else(|| corrupt("request record without its transfer"))?;
        Ok(vec![transfer])
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

fn items_to_json(items: &[ItemRefusal]) -> String {
    serde_json::Value::Array(
        items
            .iter()
            .map(|item| json!([item.index, item.code.as_str(), item.detail]))
            .collect(),
    )
    .to_string()
}

fn items_from_json(raw: &str) -> Result<Vec<ItemRefusal>, StoreError> {
    let parsed: Vec<(usize, String, String)> =
        serde_json::from_str(raw).map_err(|_| corrupt("refused batch items"))?;
    parsed
        .into_iter()
        .map(|(index, code, detail)| {
            Ok(ItemRefusal {
                index,
                code: ErrorCode::parse(&code).ok_or_else(|| corrupt("refusal code"))?,
                detail,
            })
        })
        .collect()
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
                [strings(originals.iter().map(ToString::to_string)).into()],
            ))
            .await?
        }
        _ => {
            txn.query_all_raw(statement(
                backend,
                SELECT_REVERSED_SQLITE,
                [json_rows(originals.iter().map(ToString::to_string))?],
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

/// Writes a plan's rows: transfers and holds first, since entries, resolutions
/// and request records refer to them.
pub(crate) async fn write(
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

/// A request record's outcome as its columns: transfer, hold, batch, and the
/// refusal's code, detail and items; empty strings for none.
fn outcome_columns(outcome: &RecordedOutcome) -> [String; 6] {
    let mut columns: [String; 6] = Default::default();
    match outcome {
        RecordedOutcome::Posted(id) => columns[0] = id.to_string(),
        RecordedOutcome::Hold(id) => columns[1] = id.to_string(),
        RecordedOutcome::Batch(id) => columns[2] = id.to_string(),
        RecordedOutcome::Refused(refusal) => {
            columns[3] = refusal.code.as_str().to_owned();
            columns[4] = refusal.detail.clone();
            if !refusal.items.is_empty() {
                columns[5] = items_to_json(&refusal.items);
            }
        }
    }
    columns
}

async fn write_postgres(
    txn: &DatabaseTransaction,
    writes: &Writes,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    txn.execute_raw(Statement::from_sql_and_values(
        DbBackend::Postgres,
        WRITE_GROUP_POSTGRES,
        write_parameters(writes, now).into_iter().map(Value::from),
    ))
    .await?;
    Ok(())
}

/// Writes a group planned on `books` in one autocommit statement that checks
/// them first ([`WRITE_GUARDED_GROUP_POSTGRES`]), on the connection of
/// `writer`.
async fn write_guarded(
    writer: &GuardedWriter,
    writes: &Writes,
    books: &std::collections::BTreeMap<AccountId, LedgerAccount>,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let books = || books.values();
    let mut params = write_parameters(writes, now);
    params.extend([
        strings(books().map(|b| b.account_id.to_string())),
        integers(books().map(|b| b.balance_minor)),
        integers(books().map(|b| b.pending_debits_minor)),
        integers(books().map(|b| b.entry_count)),
        integers(books().map(|b| b.status_version)),
        strings(books().map(|b| b.status.as_str().to_owned())),
    ]);
    writer.execute(WRITE_GUARDED_GROUP_POSTGRES, params).await
}

/// The connection the one-statement path writes on (PostgreSQL), held by the
/// store between groups rather than taken from a pool.
///
/// A pooled connection goes back to its pool through a ping, one more round
/// trip to the server after every statement; and sea-orm's statements carry
/// their arrays as one boxed value per element, which were cloned and turned
/// into the driver's arguments on the writer's path. This connection is bound
/// straight from the plan's arrays (sqlx, under sea-orm) and never released:
/// a group's statement is its only traffic. It is pinged first only after
/// [`db::IDLE_BEFORE_PING`] without use, like the pools' connections.
///
/// Its session keeps one generic plan of the statement
/// (`plan_cache_mode = force_generic_plan`), made at its first execution and
/// again whenever an `ANALYZE` changes what the planner knows of the tables.
/// Left to choose, PostgreSQL plans a prepared statement anew at every execution
/// while that plan costs less than the generic one, which is what it finds for
/// the small groups of a lightly loaded ledger: a connection opened at low load
/// paid about 0.3 ms of planning per group, more than the statement's own
/// execution for one posting. The generic plan is the same index lookups
/// whatever the arrays hold (every table is reached through the group's ids,
/// and the next setting keeps it so), so nothing is lost by keeping it.
///
/// That plan must not depend on how large the tables were when it was made,
/// and the session's `enable_seqscan = off` (`store::WRITES_SETTINGS`, which
/// the store's write connection shares) sees to it. The first group of a
/// new ledger is planned on nearly empty tables, where reading the whole of
/// `ledger_accounts` costs less than its index, and a generic plan is kept until
/// an `ANALYZE` of a table it reads: on a server whose autovacuum is off (or
/// long before it analyzes the books), every group then read every book to
/// find its own, more of them with each account opened and each page the
/// books' updates leave behind. Every table the statement reads it reaches
/// through a key, so an index is always there to take instead.
///
/// A statement the server refused leaves it usable; any other failure (the
/// connection broke, the server ended the session, or the group's task was
/// dropped mid-way) closes it, and the next group opens another.
pub(crate) struct GuardedWriter {
    options: sqlx::postgres::PgConnectOptions,
    connection: tokio::sync::Mutex<Option<(sqlx::PgConnection, Instant)>>,
}

impl GuardedWriter {
    /// A writer that opens its connection, on first use, with `options`.
    pub(crate) fn new(options: &sqlx::postgres::PgConnectOptions) -> GuardedWriter {
        GuardedWriter {
            options: options
                .clone()
                .application_name(GUARDED_WRITER_APPLICATION_NAME)
                .options(
                    super::WRITES_SETTINGS
                        .iter()
                        .copied()
                        .chain([("plan_cache_mode", "force_generic_plan")]),
                ),
            connection: tokio::sync::Mutex::new(None),
        }
    }

    async fn execute(&self, sql: &'static str, params: Vec<Param>) -> Result<(), StoreError> {
        use sqlx::{Arguments, Connection, Executor};
        let mut arguments = sqlx::postgres::PgArguments::default();
        for param in params {
            match param {
                Param::Strings(values) => arguments.add(values),
                Param::Integers(values) => arguments.add(values),
                Param::Time(at) => arguments.add(at),
            }
            .map_err(|error| {
                StoreError::Corrupt(format!("a parameter could not be encoded: {error}"))
            })?;
        }
        let mut slot = self.connection.lock().await;
        // Out of the slot while in use: dropped mid-statement, it is closed.
        let mut connection = match slot.take() {
            Some((connection, used)) if used.elapsed() < db::IDLE_BEFORE_PING => connection,
            Some((mut connection, _)) => match connection.ping().await {
                Ok(()) => connection,
                Err(_) => self.connect().await?,
            },
            None => self.connect().await?,
        };
        let started = Instant::now();
        let result = connection
            .execute(sqlx::query_with(sql, arguments))
            .await
            .map(drop);
        db::trace_sql(DbBackend::Postgres, sql, started.elapsed(), result.is_err());
        match result {
            Ok(()) => {
                *slot = Some((connection, Instant::now()));
                Ok(())
            }
            Err(error) => {
                let answered = matches!(error, sqlx::Error::Database(_));
                let error = exec_error(error);
                // A refusal of the statement leaves the session as it was; the
                // server ending the session (an administrator, a shutdown) does not.
                if answered
                    && !matches!(&error, StoreError::Database(cause) if db::is_unavailable(cause))
                {
                    *slot = Some((connection, Instant::now()));
                }
                Err(error)
            }
        }
    }

    async fn connect(&self) -> Result<sqlx::PgConnection, StoreError> {
        use sqlx::ConnectOptions;
        self.options.connect().await.map_err(|error| {
            StoreError::Database(sea_orm::DbErr::Conn(sea_orm::RuntimeErr::SqlxError(
                error.into(),
            )))
        })
    }
}

/// The `application_name` of the one-statement path's connection, which tells
/// it apart in `pg_stat_activity`.
pub const GUARDED_WRITER_APPLICATION_NAME: &str = "bank-ledger guarded writes";

fn exec_error(error: sqlx::Error) -> StoreError {
    StoreError::Database(sea_orm::DbErr::Exec(sea_orm::RuntimeErr::SqlxError(
        error.into(),
    )))
}

/// The parameters `$1` to `$47` of a group's writes on PostgreSQL.
fn write_parameters(writes: &Writes, now: DateTime<Utc>) -> Vec<Param> {
    let transfers = || writes.transfers.iter().map(|new| &new.transfer);
    let entries = || writes.entries.iter();
    let books = || writes.books.iter();
    let holds = || writes.holds.iter();
    let resolutions = || writes.resolutions.iter();
    let outcomes: Vec<[String; 6]> = writes
        .requests
        .iter()
        .map(|r| outcome_columns(&r.outcome))
        .collect();
    let outcome = |n: usize| strings(outcomes.iter().map(|columns| columns[n].clone()));
    let requests = || writes.requests.iter();
    vec![
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
        strings(writes.transfers.iter().map(|new| {
            new.batch
                .map(|slot| slot.batch_id.to_string())
                .unwrap_or_default()
        })),
        integers(writes.transfers.iter().map(|new| {
            new.batch
                .map_or(-1, |slot| i64::try_from(slot.index).unwrap_or(i64::MAX))
        })),
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
        integers(books().map(|b| b.pending_debits_minor)),
        integers(books().map(|b| b.entry_count)),
        strings(books().map(|b| b.last_entry_hash.clone())),
        strings(requests().map(|r| r.key.scope.clone())),
        strings(requests().map(|r| r.key.idempotency_key.as_str().to_owned())),
        strings(requests().map(|r| r.fingerprint.clone())),
        outcome(0),
        outcome(1),
        outcome(2),
        outcome(3),
        outcome(4),
        outcome(5),
        strings(holds().map(|h| h.hold_id.to_string())),
        strings(holds().map(|h| h.from_account_id.to_string())),
        strings(holds().map(|h| h.to_account_id.to_string())),
        integers(holds().map(|h| h.held_minor)),
        strings(holds().map(|h| h.currency.as_str().to_owned())),
        strings(holds().map(|h| h.description.clone())),
        strings(holds().map(|h| h.initiated_by.clone())),
        strings(holds().map(|h| bank_kit::time::to_rfc3339(h.expires_at))),
        strings(resolutions().map(|(id, _)| id.to_string())),
        strings(resolutions().map(|(_, r)| r.state.as_str().to_owned())),
        integers(resolutions().map(|(_, r)| r.amount_minor)),
        Param::Time(now),
    ]
}

/// One parameter of a statement on PostgreSQL: a column's array, or the
/// group's time. Nulls travel as empty strings (or -1) and are turned back by
/// `NULLIF` in the statement, so no array ever holds a null element.
pub(crate) enum Param {
    Strings(Vec<String>),
    Integers(Vec<i64>),
    Time(DateTime<Utc>),
}

impl From<Param> for Value {
    fn from(param: Param) -> Value {
        match param {
            Param::Strings(values) => Value::from(values),
            Param::Integers(values) => Value::from(values),
            Param::Time(at) => Value::from(at),
        }
    }
}

/// A PostgreSQL `text[]` parameter (a `Value` by `into` for sea-orm).
pub(crate) fn strings(values: impl Iterator<Item = String>) -> Param {
    Param::Strings(values.collect())
}

/// A PostgreSQL `bigint[]` parameter.
fn integers(values: impl Iterator<Item = i64>) -> Param {
    Param::Integers(values.collect())
}

async fn write_sqlite(
    txn: &DatabaseTransaction,
    writes: &Writes,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let backend = DbBackend::Sqlite;
    // Rows as tuples, serialized straight to JSON text: no value tree, and the
    // texts borrowed, not copied, on the writer's serial path.
    let transfers = json_rows(writes.transfers.iter().map(|new| {
        let t = &new.transfer;
        (
            t.transfer_id.to_string(),
            t.kind.as_str(),
            t.from_account_id.to_string(),
            t.to_account_id.to_string(),
            t.amount_minor,
            t.currency.as_str(),
            t.description.as_str(),
            t.reverses_transfer_id.map(|id| id.to_string()),
            new.initiated_by.as_str(),
            new.batch.map(|slot| slot.batch_id.to_string()),
            new.batch.map(|slot| slot.index),
        )
    }))?;
    let entries = json_rows(writes.entries.iter().map(|e| {
        (
            e.account_id.to_string(),
            e.account_seq,
            e.transfer_id.to_string(),
            e.amount_minor,
            e.balance_after_minor,
            e.currency.as_str(),
            e.counterparty_account_id.to_string(),
            e.description.as_str(),
            e.prev_hash.as_str(),
            e.entry_hash.as_str(),
        )
    }))?;
    let books = json_rows(writes.books.iter().map(|b| {
        (
            b.account_id.to_string(),
            b.balance_minor,
            b.pending_debits_minor,
            b.entry_count,
            b.last_entry_hash.as_str(),
        )
    }))?;
    let holds = json_rows(writes.holds.iter().map(|h| {
        (
            h.hold_id.to_string(),
            h.from_account_id.to_string(),
            h.to_account_id.to_string(),
            h.held_minor,
            h.currency.as_str(),
            h.description.as_str(),
            h.initiated_by.as_str(),
            // The same text sqlx gives a timestamp, so comparisons hold.
            sqlite_timestamp(h.expires_at),
        )
    }))?;
    let resolutions = json_rows(
        writes
            .resolutions
            .iter()
            .map(|(id, r)| (id.to_string(), r.state.as_str(), r.amount_minor)),
    )?;
    let requests = json_rows(writes.requests.iter().map(|r| {
        let [transfer_id, hold_id, batch_id, code, detail, items] = outcome_columns(&r.outcome);
        let nullable = |value: String| (!value.is_empty()).then_some(value);
        // A refusal's detail is kept even when empty.
        let detail = (!code.is_empty()).then_some(detail);
        (
            r.key.scope.as_str(),
            r.key.idempotency_key.as_str(),
            r.fingerprint.as_str(),
            nullable(transfer_id),
            nullable(hold_id),
            nullable(batch_id),
            nullable(code),
            detail,
            nullable(items),
        )
    }))?;
    for (sql, rows, any) in [
        (
            INSERT_TRANSFERS_SQLITE,
            transfers,
            !writes.transfers.is_empty(),
        ),
        (INSERT_ENTRIES_SQLITE, entries, !writes.entries.is_empty()),
        (UPDATE_BOOKS_SQLITE, books, !writes.books.is_empty()),
        (INSERT_HOLDS_SQLITE, holds, !writes.holds.is_empty()),
        (
            INSERT_RESOLUTIONS_SQLITE,
            resolutions,
            !writes.resolutions.is_empty(),
        ),
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

/// A timestamp as sqlx writes one to SQLite, for rows built in JSON.
fn sqlite_timestamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, false)
}

/// A SQLite JSON array parameter, one element per row (a tuple is an array), read
/// with `json_each`.
pub(crate) fn json_rows<T: serde::Serialize>(
    rows: impl Iterator<Item = T>,
) -> Result<Value, StoreError> {
    let rows: Vec<T> = rows.collect();
    serde_json::to_string(&rows)
        .map(Value::from)
        .map_err(|error| StoreError::Corrupt(format!("rows not written as JSON: {error}")))
}

#[cfg(test)]
mod backoff_tests {
    use super::Backoff;

    /// How many of the next `groups` groups the backoff lets try.
    fn tries(backoff: &Backoff, groups: usize) -> usize {
        (0..groups).filter(|_| backoff.allows()).count()
    }

    #[test]
    fn failures_in_a_row_skip_twice_as_many_groups_each_up_to_the_cap_and_a_success_starts_over() {
        let backoff = Backoff::default();
        assert_eq!(tries(&backoff, 3), 3, "nothing failed yet");
        backoff.failed();
        assert!(
            !backoff.allows(),
            "one group skipped after the first failure"
        );
        assert!(backoff.allows());
        backoff.failed();
        assert_eq!(tries(&backoff, 3), 1, "two skipped after the second");
        for _ in 0..10 {
            backoff.failed();
        }
        assert_eq!(tries(&backoff, Backoff::MAX_SKIP as usize + 1), 1, "capped");
        backoff.succeeded();
        assert_eq!(tries(&backoff, 3), 3);
        backoff.failed();
        assert_eq!(
            tries(&backoff, 2),
            1,
            "a success forgot the earlier failures"
        );
    }
}

#[cfg(test)]
mod memory_tests {
    use bank_kit::money::Currency;
    use chrono::Utc;

    use super::Memory;
    use crate::{
        domain::{AccountId, Hold, TransferId},
        store::LedgerStore,
    };

    #[test]
    fn values_are_forgotten_by_what_they_hold() {
        let memory = Memory::<u32, &str>::default();
        memory.keep([(1, "book a"), (2, "book b"), (3, "book a")]);

        memory.forget_where(|value| *value == "book a");

        assert_eq!(memory.known(&[1]), None);
        assert_eq!(memory.known(&[3]), None);
        assert_eq!(memory.known(&[2]).map(|known| known[&2]), Some("book b"));
    }

    /// A status change or the hold sweep may have expired holds on the books
    /// it wrote: those holds are no longer planned on from memory.
    #[tokio::test]
    async fn books_written_outside_a_group_take_their_holds_out_of_memory() {
        let db = bank_kit::db::connect("sqlite::memory:")
            .await
            .unwrap_or_else(|error| panic!("{error}"));
        let store = LedgerStore::new(db);
        let book = || AccountId::from_uuid(uuid::Uuid::now_v7());
        let (written, untouched, payee) = (book(), book(), book());
        let hold = |from: AccountId| Hold {
            hold_id: TransferId::new(),
            from_account_id: from,
            to_account_id: payee,
            held_minor: 10,
            currency: Currency::parse("EUR").unwrap_or_else(|error| panic!("{error:?}")),
            description: String::new(),
            initiated_by: "alice".into(),
            created_at: Utc::now(),
            expires_at: Utc::now(),
            resolution: None,
        };
        let (gone, kept) = (hold(written), hold(untouched));
        store
            .holds
            .keep([(gone.hold_id, gone.clone()), (kept.hold_id, kept.clone())]);

        store.forget_books(&[written]);

        assert!(store.holds.known(&[gone.hold_id]).is_none());
        assert!(store.holds.known(&[kept.hold_id]).is_some());
    }
}

#[cfg(test)]
mod guarded_tests {
    use sea_orm::sqlx::{Connection, Executor, Row};
    use sea_orm_migration::MigratorTrait;

    use super::{GUARDED_WRITER_APPLICATION_NAME, GuardedWriter, WRITE_GUARDED_GROUP_POSTGRES};

    /// A connection opened as the guarded writer opens its own, to the
    /// migrated ledger database at `url`.
    async fn writer_connection(url: &str) -> sea_orm::sqlx::PgConnection {
        let db = bank_kit::db::connect(url)
            .await
            .unwrap_or_else(|error| panic!("{error}"));
        crate::store::migrations::Migrator::up(&db, None)
            .await
            .unwrap_or_else(|error| panic!("{error}"));
        GuardedWriter::new(&db.get_postgres_connection_pool().connect_options())
            .connect()
            .await
            .unwrap_or_else(|error| panic!("{error}"))
    }

    /// The lines of `name`'s plan, as one text, once checked that no step of it
    /// reads a whole table.
    fn indexed_plan(name: &str, lines: impl Iterator<Item = String>) -> String {
        let plan = lines.collect::<Vec<_>>().join("\n");
        assert!(!plan.contains("Seq Scan"), "{name}:\n{plan}");
        plan
    }

    /// A posting writes seven index entries: its transfer's key, and each of its
    /// two entries' place in its book and transfer, and its record's key and
    /// transfer. The sparse indexes take none of a plain transfer's rows.
    #[tokio::test]
    #[ignore = "needs BANK_TEST_POSTGRES_URL; make test runs it when that is set"]
    async fn a_posting_writes_seven_index_entries_on_postgresql() {
        bank_kit::testing::run_with_databases(
            bank_kit::testing::Backend::Postgres,
            1,
            |urls| async move {
                let mut connection = writer_connection(&urls[0]).await;
                let indexes: Vec<(String, String)> = connection
                    .fetch_all(
                        "SELECT indexname, indexdef FROM pg_indexes
                         WHERE tablename IN ('ledger_transfers', 'ledger_entries', 'ledger_requests')
                           AND indexdef NOT LIKE '% WHERE %'
                         ORDER BY indexname",
                    )
                    .await
                    .unwrap_or_else(|error| panic!("{error}"))
                    .iter()
                    .map(|row| (row.get(0), row.get(1)))
                    .collect();
                let names: Vec<&str> = indexes.iter().map(|(name, _)| name.as_str()).collect();
                assert_eq!(
                    names,
                    [
                        "ledger_entries_pkey",
                        "ledger_entries_transfer",
                        "ledger_requests_pkey",
                        "ledger_requests_transfer",
                        "ledger_transfers_pkey",
                    ]
                );
                assert!(
                    indexes[0].1.ends_with("(account_id, account_seq)"),
                    "{}",
                    indexes[0].1
                );
            },
        )
        .await;
    }

    #[tokio::test]
    #[ignore = "needs BANK_TEST_POSTGRES_URL; make test runs it when that is set"]
    async fn the_guarded_connection_keeps_one_generic_plan_on_postgresql() {
        bank_kit::testing::run_with_databases(
            bank_kit::testing::Backend::Postgres,
            1,
            |urls| async move {
                let mut connection = writer_connection(&urls[0]).await;
                let row = sea_orm::sqlx::query(
                    "SELECT current_setting('plan_cache_mode'), current_setting('application_name')",
                )
                .fetch_one(&mut connection)
                .await
                .unwrap_or_else(|error| panic!("{error}"));
                assert_eq!(row.get::<String, _>(0), "force_generic_plan");
                assert_eq!(row.get::<String, _>(1), GUARDED_WRITER_APPLICATION_NAME);
                connection.close().await.ok();
            },
        )
        .await;
    }

    /// The plan the guarded connection makes of its statement on a new, empty
    /// ledger, which it keeps while the tables grow, finds every row through
    /// an index: none of it reads a whole table.
    #[tokio::test]
    #[ignore = "needs BANK_TEST_POSTGRES_URL; make test runs it when that is set"]
    async fn the_guarded_statement_planned_on_empty_tables_reads_no_whole_table_on_postgresql() {
        bank_kit::testing::run_with_databases(
            bank_kit::testing::Backend::Postgres,
            1,
            |urls| async move {
                let mut connection = writer_connection(&urls[0]).await;
                // The generic plan, as the writer's session makes and keeps it
                // (a statement prepared with its parameters would be planned
                // on their values instead): every parameter is an array but
                // `$47`, the group's time.
                let prepare = format!("PREPARE guarded AS {WRITE_GUARDED_GROUP_POSTGRES}");
                let values = (1..=53)
                    .map(|n| if n == 47 { "now()" } else { "'{}'" })
                    .collect::<Vec<_>>()
                    .join(", ");
                connection
                    .execute(sea_orm::sqlx::AssertSqlSafe(prepare))
                    .await
                    .unwrap_or_else(|error| panic!("{error}"));
                let plan = indexed_plan(
                    "guarded",
                    sea_orm::sqlx::query(sea_orm::sqlx::AssertSqlSafe(format!(
                        "EXPLAIN EXECUTE guarded({values})"
                    )))
                    .fetch_all(&mut connection)
                    .await
                    .unwrap_or_else(|error| panic!("{error}"))
                    .iter()
                    .map(|row| row.get::<String, _>(0)),
                );
                assert!(plan.contains("ledger_accounts_pkey"), "{plan}");
                connection.close().await.ok();
            },
        )
        .await;
    }

    /// The locked path's statements run on the store's write connection, where
    /// PostgreSQL settles on one generic plan of each after a few executions:
    /// made on a new, empty ledger, those plans too must find the group's rows
    /// through an index, not read whole tables while the ledger grows.
    #[tokio::test]
    #[ignore = "needs BANK_TEST_POSTGRES_URL; make test runs it when that is set"]
    async fn the_locked_path_planned_on_empty_tables_reads_no_whole_table_on_postgresql() {
        use sea_orm::{ConnectionTrait, DbBackend, Statement};
        bank_kit::testing::run_with_databases(
            bank_kit::testing::Backend::Postgres,
            1,
            |urls| async move {
                let db = bank_kit::db::connect_and_migrate::<crate::store::migrations::Migrator>(
                    &urls[0],
                )
                .await
                .unwrap_or_else(|error| panic!("{error}"));
                let store = crate::store::LedgerStore::new(db);
                let txn = store
                    .begin_write()
                    .await
                    .unwrap_or_else(|error| panic!("{error}"));
                let run = |sql: String| {
                    let txn = &txn;
                    async move {
                        txn.query_all_raw(Statement::from_string(DbBackend::Postgres, sql))
                            .await
                            .unwrap_or_else(|error| panic!("{error}"))
                    }
                };
                // The plan that the connection's session keeps, made now.
                run("SET LOCAL plan_cache_mode = force_generic_plan".into()).await;
                for (name, sql, arguments) in [
                    ("lock_books", super::LOCK_BOOKS_POSTGRES, "'{}'"),
                    ("requests", super::SELECT_REQUESTS_POSTGRES, "'{}', '{}'"),
                    ("reversed", super::SELECT_REVERSED_POSTGRES, "'{}'"),
                ] {
                    run(format!("PREPARE {name} AS {sql}")).await;
                    let plan = run(format!("EXPLAIN EXECUTE {name}({arguments})")).await;
                    indexed_plan(
                        name,
                        plan.iter().map(|row| {
                            row.try_get_by_index::<String>(0)
                                .unwrap_or_else(|error| panic!("{error}"))
                        }),
                    );
                    run(format!("DEALLOCATE {name}")).await;
                }
                txn.rollback()
                    .await
                    .unwrap_or_else(|error| panic!("{error}"));
            },
        )
        .await;
    }
}
