//! Posting plans: the ledger's money rules as one pure function.
//!
//! The ledger commits postings in *commit groups*: many requests, one database
//! transaction. The store locks every book the group names, reads the request
//! records of the group's idempotency keys and which of the transfers it would
//! reverse are reversed already (the [`Facts`]), and hands them to [`plan`]. The
//! plan applies the requests in arrival order to those facts in memory and returns
//! each request's [`Outcome`] and the rows to write ([`Writes`]); the store writes
//! exactly those rows and commits once. Nothing here does IO, so every rule can be
//! tested without a database.
//!
//! Invariants the plan keeps, whatever the group holds:
//! - a refused request changes no book and never affects another request of the
//!   group;
//! - every keyed request that is decided leaves exactly one request record, the
//!   transfer it made or the code of its refusal, so a retry gets the same answer;
//! - the same key twice in one group is decided once: the second is a replay of
//!   the first (or `idempotency_key_reused` if its body differs);
//! - every posting writes one transfer and two entries that sum to zero, each
//!   entry chained to its book's previous one, and each book's final balance,
//!   entry count and chain head.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

use super::{
    AccountId, AccountKind, Description, Entry, IdempotencyKey, LedgerAccount, LedgerError,
    Transfer, TransferId, TransferKind, entry_hash,
};
use crate::{
    error::{DomainError, ErrorCode},
    money::{Currency, PositiveAmount},
};

/// What a posting asks for, after parsing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostingRequest {
    pub kind: TransferKind,
    pub from_account_id: AccountId,
    pub to_account_id: AccountId,
    pub amount: PositiveAmount,
    pub currency: Currency,
    pub description: Description,
    pub reverses_transfer_id: Option<TransferId>,
    /// When set, `from_account_id` must belong to this user.
    pub required_owner: Option<String>,
    /// Who asked: scopes the idempotency key.
    pub scope: String,
    pub idempotency_key: IdempotencyKey,
}

impl PostingRequest {
    /// A fingerprint of what the request asks for, so that a reused idempotency key
    /// with a different request is told apart from a retry.
    pub fn fingerprint(&self) -> String {
        let mut hasher = Sha256::new();
        let reverses = self
            .reverses_transfer_id
            .map(|id| id.to_string())
            .unwrap_or_default();
        for field in [
            self.kind.as_str(),
            &self.from_account_id.to_string(),
            &self.to_account_id.to_string(),
            &self.amount.minor().to_string(),
            self.currency.as_str(),
            self.description.as_str(),
            &reverses,
        ] {
            hasher.update((field.len() as u64).to_be_bytes());
            hasher.update(field.as_bytes());
        }
        hex::encode(hasher.finalize())
    }

    pub fn record_key(&self) -> RecordKey {
        RecordKey {
            scope: self.scope.clone(),
            idempotency_key: self.idempotency_key.clone(),
        }
    }

    /// Whether the posting touches its currency's settlement book, which the store
    /// creates on first use.
    pub fn uses_settlement(&self) -> bool {
        matches!(self.kind, TransferKind::Deposit | TransferKind::Withdrawal)
    }
}

/// A request as the writer queues it. The id its transfer gets if it posts is
/// chosen before planning, so that the plan is a function of its inputs alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proposal {
    pub request: PostingRequest,
    pub transfer_id: TransferId,
}

impl Proposal {
    pub fn new(request: PostingRequest) -> Proposal {
        Proposal {
            request,
            transfer_id: TransferId::new(),
        }
    }
}

/// The key a request record is found by: idempotency keys are scoped per caller.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RecordKey {
    pub scope: String,
    pub idempotency_key: IdempotencyKey,
}

/// A refused posting, as the caller is told and as its request record keeps it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{detail}")]
pub struct Refusal {
    pub code: ErrorCode,
    pub detail: String,
}

impl From<LedgerError> for Refusal {
    fn from(error: LedgerError) -> Refusal {
        Refusal {
            code: error.code(),
            detail: error.to_string(),
        }
    }
}

impl DomainError for Refusal {
    fn code(&self) -> ErrorCode {
        self.code
    }
}

/// What a keyed request ended as, as its append-only record keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordedOutcome {
    Posted(TransferId),
    Refused(Refusal),
}

/// One request record to write: one per decided keyed request, refusals included.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    pub key: RecordKey,
    pub fingerprint: String,
    pub outcome: RecordedOutcome,
    pub created_at: DateTime<Utc>,
}

/// A request record as read back, a posted outcome with its transfer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownRequest {
    pub fingerprint: String,
    pub outcome: Result<Transfer, Refusal>,
}

/// What the store read, under the group's locks, for the plan to decide on.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    /// Every book the group names that exists, locked.
    pub books: BTreeMap<AccountId, LedgerAccount>,
    /// The records of the group's keys that exist.
    pub requests: HashMap<RecordKey, KnownRequest>,
    /// Which of the transfers the group would reverse have a reversal already.
    pub reversed: HashSet<TransferId>,
}

/// The answer to one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub result: Result<Transfer, Refusal>,
    /// Whether the answer is an earlier request's under the same key.
    pub replayed: bool,
}

/// A transfer to insert, with who asked for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewTransfer {
    pub transfer: Transfer,
    pub initiated_by: String,
}

/// A book's state after the group: what the store writes back to its row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BookUpdate {
    pub account_id: AccountId,
    pub balance_minor: i64,
    pub entry_count: i64,
    pub last_entry_hash: String,
}

/// Every row a commit group writes, in the order they were planned.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Writes {
    pub transfers: Vec<NewTransfer>,
    pub entries: Vec<Entry>,
    /// One per book whose balance changed, in id order.
    pub books: Vec<BookUpdate>,
    pub requests: Vec<RequestRecord>,
}

impl Writes {
    pub fn is_empty(&self) -> bool {
        self.transfers.is_empty() && self.requests.is_empty()
    }
}

/// A commit group's outcomes, one per proposal in order, and its rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub outcomes: Vec<Outcome>,
    pub writes: Writes,
}

/// The books a group must lock, sorted so that two groups always lock in the same
/// order and cannot deadlock.
pub fn books_to_lock(proposals: &[Proposal]) -> Vec<AccountId> {
    proposals
        .iter()
        .flat_map(|proposal| {
            [
                proposal.request.from_account_id,
                proposal.request.to_account_id,
            ]
        })
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// The request records a group must read, one per distinct key.
pub fn keys_to_read(proposals: &[Proposal]) -> Vec<RecordKey> {
    proposals
        .iter()
        .map(|proposal| proposal.request.record_key())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// The transfers the group's reversals name, whose reversals must be read.
pub fn reversals_to_read(proposals: &[Proposal]) -> Vec<TransferId> {
    let mut ids: Vec<TransferId> = proposals
        .iter()
        .filter_map(|proposal| proposal.request.reverses_transfer_id)
        .collect();
    ids.sort();
    ids.dedup();
    ids
}

/// The currencies whose settlement books the group needs.
pub fn settlement_currencies(proposals: &[Proposal]) -> Vec<Currency> {
    let mut currencies: Vec<Currency> = proposals
        .iter()
        .filter(|proposal| proposal.request.uses_settlement())
        .map(|proposal| proposal.request.currency)
        .collect();
    currencies.sort_by(|left, right| left.as_str().cmp(right.as_str()));
    currencies.dedup();
    currencies
}

/// Decides a commit group: applies `proposals` in order to `facts`, as of `now`.
pub fn plan(proposals: &[Proposal], mut facts: Facts, now: DateTime<Utc>) -> Plan {
    let mut writes = Writes::default();
    let mut touched = BTreeSet::new();
    let outcomes = proposals
        .iter()
        .map(|proposal| plan_one(proposal, &mut facts, now, &mut writes, &mut touched))
        .collect();
    writes.books = touched
        .into_iter()
        .filter_map(|account_id| facts.books.get(&account_id))
        .map(|book| BookUpdate {
            account_id: book.account_id,
            balance_minor: book.balance_minor,
            entry_count: book.entry_count,
            last_entry_hash: book.last_entry_hash.clone(),
        })
        .collect();
    Plan { outcomes, writes }
}

fn plan_one(
    proposal: &Proposal,
    facts: &mut Facts,
    now: DateTime<Utc>,
    writes: &mut Writes,
    touched: &mut BTreeSet<AccountId>,
) -> Outcome {
    let request = &proposal.request;
    let key = request.record_key();
    let fingerprint = request.fingerprint();
    if let Some(known) = facts.requests.get(&key) {
        if known.fingerprint != fingerprint {
            return Outcome {
                result: Err(LedgerError::IdempotencyKeyReused.into()),
                replayed: false,
            };
        }
        return Outcome {
            result: known.outcome.clone(),
            replayed: true,
        };
    }

    let result = decide(proposal, facts, now).map(|(transfer, from_after, to_after)| {
        apply(&transfer, from_after, to_after, facts, writes);
        touched.insert(transfer.from_account_id);
        touched.insert(transfer.to_account_id);
        if let Some(original) = transfer.reverses_transfer_id {
            facts.reversed.insert(original);
        }
        writes.transfers.push(NewTransfer {
            transfer: transfer.clone(),
            initiated_by: request.scope.clone(),
        });
        transfer
    });
    let result = result.map_err(Refusal::from);
    let recorded = match &result {
        Ok(transfer) => RecordedOutcome::Posted(transfer.transfer_id),
        Err(refusal) => RecordedOutcome::Refused(refusal.clone()),
    };
    writes.requests.push(RequestRecord {
        key: key.clone(),
        fingerprint: fingerprint.clone(),
        outcome: recorded,
        created_at: now,
    });
    facts.requests.insert(
        key,
        KnownRequest {
            fingerprint,
            outcome: result.clone(),
        },
    );
    Outcome {
        result,
        replayed: false,
    }
}

/// The rules a posting must satisfy, in the order their refusals take precedence,
/// and the transfer with both new balances when it may post.
fn decide(
    proposal: &Proposal,
    facts: &Facts,
    now: DateTime<Utc>,
) -> Result<(Transfer, i64, i64), LedgerError> {
    let request = &proposal.request;
    // A book whose account is still being opened does not exist yet for anyone:
    // no money reaches a half-open account.
    let book = |id: AccountId| {
        facts
            .books
            .get(&id)
            .filter(|book| book.is_activated())
            .ok_or(LedgerError::AccountNotFound)
    };
    let from = book(request.from_account_id)?;
    let to = book(request.to_account_id)?;
    if from.account_id == to.account_id {
        return Err(LedgerError::Invalid(
            "cannot transfer to the same account".into(),
        ));
    }
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
    // The book at a currency's settlement id settles only if it is the settlement
    // book; one of another kind never takes the settlement side.
    let settlement_side = match request.kind {
        TransferKind::Deposit => Some(from),
        TransferKind::Withdrawal => Some(to),
        TransferKind::Transfer | TransferKind::Reversal => None,
    };
    if let Some(book) = settlement_side
        && book.kind != AccountKind::Settlement
    {
        return Err(LedgerError::SettlementIdTaken(request.currency));
    }
    if from.currency != request.currency || to.currency != request.currency {
        return Err(LedgerError::CurrencyMismatch);
    }
    from.ensure_open()?;
    // A destination the caller does not own that cannot receive is, to the
    // caller, not there: whether it is frozen or closed is its owner's business.
    if let Err(refusal) = to.ensure_open() {
        let foreign = request
            .required_owner
            .as_ref()
            .is_some_and(|owner| !to.is_owned_by(owner));
        return Err(if foreign {
            LedgerError::AccountNotFound
        } else {
            refusal
        });
    }
    if let Some(original) = request.reverses_transfer_id
        && facts.reversed.contains(&original)
    {
        return Err(LedgerError::Conflict(
            "the transfer was already reversed".into(),
        ));
    }
    let amount = request.amount.minor();
    let from_after = from.balance_after(-amount)?;
    let to_after = to.balance_after(amount)?;
    let transfer = Transfer {
        transfer_id: proposal.transfer_id,
        kind: request.kind,
        from_account_id: from.account_id,
        to_account_id: to.account_id,
        amount_minor: amount,
        currency: request.currency,
        description: request.description.as_str().to_owned(),
        reverses_transfer_id: request.reverses_transfer_id,
        created_at: now,
    };
    Ok((transfer, from_after, to_after))
}

/// Appends both entries of `transfer` and moves the books to their new state.
fn apply(
    transfer: &Transfer,
    from_after: i64,
    to_after: i64,
    facts: &mut Facts,
    writes: &mut Writes,
) {
    let legs = [
        (
            transfer.from_account_id,
            -transfer.amount_minor,
            from_after,
            transfer.to_account_id,
        ),
        (
            transfer.to_account_id,
            transfer.amount_minor,
            to_after,
            transfer.from_account_id,
        ),
    ];
    for (account_id, amount_minor, balance_after_minor, counterparty) in legs {
        let Some(book) = facts.books.get_mut(&account_id) else {
            // `decide` found both books; nothing removes one in between.
            continue;
        };
        let mut entry = Entry {
            account_id,
            account_seq: book.entry_count + 1,
            transfer_id: transfer.transfer_id,
            amount_minor,
            balance_after_minor,
            currency: transfer.currency,
            counterparty_account_id: counterparty,
            description: transfer.description.clone(),
            prev_hash: book.last_entry_hash.clone(),
            entry_hash: String::new(),
            created_at: transfer.created_at,
        };
        entry.entry_hash = entry_hash(&entry);
        book.balance_minor = balance_after_minor;
        book.entry_count = entry.account_seq;
        book.last_entry_hash = entry.entry_hash.clone();
        writes.entries.push(entry);
    }
}

#[cfg(test)]
mod tests;
