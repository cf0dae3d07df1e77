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
    AccountId, AccountKind, Description, Entry, Hold, HoldResolution, HoldState, IdempotencyKey,
    LedgerAccount, LedgerError, Transfer, TransferId, TransferKind, entry_hash,
};
use crate::{
    error::{DomainError, ErrorCode},
    money::{Currency, PositiveAmount},
};

/// One movement of money from one book to another, after parsing: a transfer,
/// a deposit, a withdrawal, a reversal, a hold's terms or a batch's item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Movement {
    pub kind: TransferKind,
    pub from_account_id: AccountId,
    pub to_account_id: AccountId,
    pub amount: PositiveAmount,
    pub currency: Currency,
    pub description: Description,
    pub reverses_transfer_id: Option<TransferId>,
}

impl Movement {
    fn fingerprint_fields(&self, hasher: &mut Sha256) {
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
            hash_field(hasher, field);
        }
    }

    /// Whether the movement touches its currency's settlement book, which the
    /// store creates on first use.
    pub fn uses_settlement(&self) -> bool {
        matches!(self.kind, TransferKind::Deposit | TransferKind::Withdrawal)
    }
}

/// What a keyed request asks the ledger to do. Every action is one unit of a
/// commit group: it is decided whole, in arrival order, and refused whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Move money now.
    Move(Movement),
    /// Reserve money of the source for the destination until the hold is
    /// posted, voided, or `timeout_seconds` pass.
    Hold {
        movement: Movement,
        timeout_seconds: i64,
    },
    /// Move all of a pending hold (`amount` unset) or part of it, and release the
    /// rest.
    PostHold {
        hold_id: TransferId,
        amount: Option<PositiveAmount>,
    },
    /// Release a pending hold.
    VoidHold { hold_id: TransferId },
    /// Customer transfers applied in order, all of them or none.
    Batch(Vec<Movement>),
}

impl Action {
    /// How many new transfer ids the action needs.
    fn ids_needed(&self) -> usize {
        match self {
            Action::Move(_) | Action::Hold { .. } => 1,
            Action::PostHold { .. } | Action::VoidHold { .. } => 0,
            Action::Batch(items) => items.len(),
        }
    }

    /// The movements the action names.
    pub fn movements(&self) -> &[Movement] {
        match self {
            Action::Move(movement) | Action::Hold { movement, .. } => {
                std::slice::from_ref(movement)
            }
            Action::Batch(items) => items,
            Action::PostHold { .. } | Action::VoidHold { .. } => &[],
        }
    }

    /// The hold the action resolves.
    pub fn resolves(&self) -> Option<TransferId> {
        match self {
            Action::PostHold { hold_id, .. } | Action::VoidHold { hold_id } => Some(*hold_id),
            _ => None,
        }
    }
}

/// A keyed request, after parsing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostingRequest {
    pub action: Action,
    /// When set, the caller is this user and acts on its own accounts only:
    /// every source must be theirs (for a hold's post or void, the hold's source
    /// or the hold must be theirs). Unset for operators and services.
    pub required_owner: Option<String>,
    /// Who asked: scopes the idempotency key.
    pub scope: String,
    pub idempotency_key: IdempotencyKey,
}

fn hash_field(hasher: &mut Sha256, field: &str) {
    hasher.update((field.len() as u64).to_be_bytes());
    hasher.update(field.as_bytes());
}

impl PostingRequest {
    /// A plain movement under `idempotency_key`.
    pub fn movement(
        movement: Movement,
        required_owner: Option<String>,
        scope: String,
        idempotency_key: IdempotencyKey,
    ) -> PostingRequest {
        PostingRequest {
            action: Action::Move(movement),
            required_owner,
            scope,
            idempotency_key,
        }
    }

    /// A fingerprint of what the request asks for, so that a reused idempotency key
    /// with a different request is told apart from a retry. A plain movement's is
    /// the same as before holds existed, so older records still match.
    pub fn fingerprint(&self) -> String {
        let mut hasher = Sha256::new();
        match &self.action {
            Action::Move(movement) => movement.fingerprint_fields(&mut hasher),
            Action::Hold {
                movement,
                timeout_seconds,
            } => {
                hash_field(&mut hasher, "hold");
                hash_field(&mut hasher, &timeout_seconds.to_string());
                movement.fingerprint_fields(&mut hasher);
            }
            Action::PostHold { hold_id, amount } => {
                hash_field(&mut hasher, "post_hold");
                hash_field(&mut hasher, &hold_id.to_string());
                let amount = amount.map(|a| a.minor().to_string()).unwrap_or_default();
                hash_field(&mut hasher, &amount);
            }
            Action::VoidHold { hold_id } => {
                hash_field(&mut hasher, "void_hold");
                hash_field(&mut hasher, &hold_id.to_string());
            }
            Action::Batch(items) => {
                hash_field(&mut hasher, "batch");
                hash_field(&mut hasher, &items.len().to_string());
                for item in items {
                    item.fingerprint_fields(&mut hasher);
                }
            }
        }
        hex::encode(hasher.finalize())
    }

    pub fn record_key(&self) -> RecordKey {
        RecordKey {
            scope: self.scope.clone(),
            idempotency_key: self.idempotency_key.clone(),
        }
    }

    /// The kind counters and logs name the request by.
    pub fn kind_name(&self) -> &'static str {
        match &self.action {
            Action::Move(movement) => movement.kind.as_str(),
            Action::Hold { .. } => "hold",
            Action::PostHold { .. } => "hold_post",
            Action::VoidHold { .. } => "hold_void",
            Action::Batch(_) => "batch",
        }
    }
}

/// A request as the writer queues it. The ids its transfers get if it posts are
/// chosen before planning, so that the plan is a function of its inputs alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proposal {
    pub request: PostingRequest,
    pub transfer_ids: Vec<TransferId>,
}

impl Proposal {
    pub fn new(request: PostingRequest) -> Proposal {
        let transfer_ids = (0..request.action.ids_needed())
            .map(|_| TransferId::new())
            .collect();
        Proposal {
            request,
            transfer_ids,
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
/// A refused batch names every item that failed; its code and detail are the
/// first one's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{detail}")]
pub struct Refusal {
    pub code: ErrorCode,
    pub detail: String,
    pub items: Vec<ItemRefusal>,
}

/// Why one item of a batch was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemRefusal {
    pub index: usize,
    pub code: ErrorCode,
    pub detail: String,
}

impl From<LedgerError> for Refusal {
    fn from(error: LedgerError) -> Refusal {
        Refusal {
            code: error.code(),
            detail: error.to_string(),
            items: Vec::new(),
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
    /// The transfer it posted (a hold's post: the hold's id).
    Posted(TransferId),
    /// The hold it placed or voided.
    Hold(TransferId),
    /// The batch it posted, by its first transfer's id.
    Batch(TransferId),
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

/// A request record as read back, a posted outcome with its transfers as they
/// are now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownRequest {
    pub fingerprint: String,
    pub outcome: Result<Vec<Transfer>, Refusal>,
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
    /// The holds the group posts or voids, and every pending hold of a locked
    /// book whose time is up, as committed.
    pub holds: BTreeMap<TransferId, Hold>,
}

/// The answer to one request: its transfers (one, or a batch's in order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub result: Result<Vec<Transfer>, Refusal>,
    /// Whether the answer is an earlier request's under the same key.
    pub replayed: bool,
}

impl Outcome {
    /// The one transfer of a request that is not a batch.
    pub fn transfer(self) -> Result<Transfer, Refusal> {
        self.result?.into_iter().next().ok_or_else(|| Refusal {
            code: ErrorCode::Internal,
            detail: "an outcome without its transfer".into(),
            items: Vec::new(),
        })
    }
}

/// A transfer to insert, with who asked for it and, for a batch's item, its
/// place in the batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewTransfer {
    pub transfer: Transfer,
    pub initiated_by: String,
    pub batch: Option<BatchSlot>,
}

/// Where a transfer sits in its batch: the batch is named by its first
/// transfer's id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchSlot {
    pub batch_id: TransferId,
    pub index: usize,
}

/// A book's state after the group: what the store writes back to its row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BookUpdate {
    pub account_id: AccountId,
    pub balance_minor: i64,
    pub pending_debits_minor: i64,
    pub entry_count: i64,
    pub last_entry_hash: String,
}

/// Every row a commit group writes, in the order they were planned.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Writes {
    pub transfers: Vec<NewTransfer>,
    pub entries: Vec<Entry>,
    /// One per book whose balance or holds changed, in id order.
    pub books: Vec<BookUpdate>,
    /// Holds placed (without a resolution).
    pub holds: Vec<Hold>,
    /// How holds ended: posted, voided or expired.
    pub resolutions: Vec<(TransferId, HoldResolution)>,
    pub requests: Vec<RequestRecord>,
}

impl Writes {
    pub fn is_empty(&self) -> bool {
        self.transfers.is_empty()
            && self.requests.is_empty()
            && self.holds.is_empty()
            && self.resolutions.is_empty()
    }
}

/// A commit group's outcomes, one per proposal in order, and its rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub outcomes: Vec<Outcome>,
    pub writes: Writes,
}

/// The holds a group posts or voids, which the store reads (their terms never
/// change) before it knows which books to lock.
pub fn holds_to_read(proposals: &[Proposal]) -> Vec<TransferId> {
    proposals
        .iter()
        .filter_map(|proposal| proposal.request.action.resolves())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// The books a group must lock, sorted so that two groups always lock in the same
/// order and cannot deadlock: every book a movement names, and both sides of
/// every hold the group resolves (`holds`, as read by [`holds_to_read`]).
pub fn books_to_lock(proposals: &[Proposal], holds: &BTreeMap<TransferId, Hold>) -> Vec<AccountId> {
    let moved = proposals
        .iter()
        .flat_map(|proposal| proposal.request.action.movements())
        .flat_map(|movement| [movement.from_account_id, movement.to_account_id]);
    let resolved = holds
        .values()
        .flat_map(|hold| [hold.from_account_id, hold.to_account_id]);
    moved
        .chain(resolved)
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
    proposals
        .iter()
        .flat_map(|proposal| proposal.request.action.movements())
        .filter_map(|movement| movement.reverses_transfer_id)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// The currencies whose settlement books the group needs.
pub fn settlement_currencies(proposals: &[Proposal]) -> Vec<Currency> {
    let mut currencies: Vec<Currency> = proposals
        .iter()
        .flat_map(|proposal| proposal.request.action.movements())
        .filter(|movement| movement.uses_settlement())
        .map(|movement| movement.currency)
        .collect();
    currencies.sort_by(|left, right| left.as_str().cmp(right.as_str()));
    currencies.dedup();
    currencies
}

/// Decides a commit group: first releases every hold of a locked book whose time
/// is up at `now` (so nothing in the group counts it), then applies `proposals`
/// in order to `facts`.
pub fn plan(proposals: &[Proposal], facts: Facts, now: DateTime<Utc>) -> Plan {
    let mut group = Group {
        facts,
        writes: Writes::default(),
        touched: BTreeSet::new(),
        now,
    };
    group.expire_due();
    let outcomes = proposals
        .iter()
        .map(|proposal| group.plan_one(proposal))
        .collect();
    let Group {
        facts,
        mut writes,
        touched,
        ..
    } = group;
    writes.books = touched
        .into_iter()
        .filter_map(|account_id| facts.books.get(&account_id))
        .map(|book| BookUpdate {
            account_id: book.account_id,
            balance_minor: book.balance_minor,
            pending_debits_minor: book.pending_debits_minor,
            entry_count: book.entry_count,
            last_entry_hash: book.last_entry_hash.clone(),
        })
        .collect();
    Plan { outcomes, writes }
}

/// A group being planned: the facts as the requests so far left them.
struct Group {
    facts: Facts,
    writes: Writes,
    touched: BTreeSet<AccountId>,
    now: DateTime<Utc>,
}

/// What a batch's rollback restores.
struct Savepoint {
    books: BTreeMap<AccountId, LedgerAccount>,
    touched: BTreeSet<AccountId>,
    transfers: usize,
    entries: usize,
}

impl Group {
    fn expire_due(&mut self) {
        let now = self.now;
        let due: Vec<TransferId> = self
            .facts
            .holds
            .values()
            .filter(|hold| hold.is_due(now) && self.facts.books.contains_key(&hold.from_account_id))
            .map(|hold| hold.hold_id)
            .collect();
        for hold_id in due {
            self.resolve(hold_id, HoldState::Expired, 0);
        }
    }

    /// Ends a pending hold: its source no longer reserves the held amount.
    fn resolve(&mut self, hold_id: TransferId, state: HoldState, amount_minor: i64) {
        let Some(hold) = self.facts.holds.get_mut(&hold_id) else {
            return;
        };
        let resolution = HoldResolution {
            state,
            amount_minor,
            resolved_at: self.now,
        };
        hold.resolution = Some(resolution.clone());
        if let Some(book) = self.facts.books.get_mut(&hold.from_account_id) {
            book.pending_debits_minor = book
                .pending_debits_minor
                .saturating_sub(hold.held_minor)
                .max(0);
            self.touched.insert(book.account_id);
        }
        self.writes.resolutions.push((hold_id, resolution));
    }

    fn plan_one(&mut self, proposal: &Proposal) -> Outcome {
        let request = &proposal.request;
        let key = request.record_key();
        let fingerprint = request.fingerprint();
        if let Some(known) = self.facts.requests.get(&key) {
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
        let decided = self.decide(proposal);
        let recorded = match &decided {
            Ok((recorded, _)) => recorded.clone(),
            Err(refusal) => RecordedOutcome::Refused(refusal.clone()),
        };
        let result = decided.map(|(_, transfers)| transfers);
        self.writes.requests.push(RequestRecord {
            key: key.clone(),
            fingerprint: fingerprint.clone(),
            outcome: recorded,
            created_at: self.now,
        });
        self.facts.requests.insert(
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

    fn decide(&mut self, proposal: &Proposal) -> Result<(RecordedOutcome, Vec<Transfer>), Refusal> {
        let request = &proposal.request;
        let owner = request.required_owner.as_deref();
        let first_id = proposal.transfer_ids.first().copied();
        let new_id = || {
            first_id.ok_or_else(|| {
                Refusal::from(LedgerError::Invalid("a proposal without its ids".into()))
            })
        };
        match &request.action {
            Action::Move(movement) => {
                let transfer =
                    self.post_movement(movement, owner, new_id()?, &request.scope, None)?;
                Ok((
                    RecordedOutcome::Posted(transfer.transfer_id),
                    vec![transfer],
                ))
            }
            Action::Hold {
                movement,
                timeout_seconds,
            } => {
                let hold =
                    self.place_hold(movement, *timeout_seconds, owner, new_id()?, &request.scope)?;
                Ok((
                    RecordedOutcome::Hold(hold.hold_id),
                    vec![hold.to_transfer()],
                ))
            }
            Action::PostHold { hold_id, amount } => {
                let transfer = self.post_hold(*hold_id, *amount, owner, &request.scope)?;
                Ok((
                    RecordedOutcome::Posted(transfer.transfer_id),
                    vec![transfer],
                ))
            }
            Action::VoidHold { hold_id } => {
                let transfer = self.void_hold(*hold_id, owner, &request.scope)?;
                Ok((RecordedOutcome::Hold(transfer.transfer_id), vec![transfer]))
            }
            Action::Batch(items) => {
                let transfers =
                    self.post_batch(items, owner, &proposal.transfer_ids, &request.scope)?;
                let batch_id = new_id()?;
                Ok((RecordedOutcome::Batch(batch_id), transfers))
            }
        }
    }

    /// Checks and applies one movement.
    fn post_movement(
        &mut self,
        movement: &Movement,
        owner: Option<&str>,
        transfer_id: TransferId,
        scope: &str,
        batch: Option<BatchSlot>,
    ) -> Result<Transfer, LedgerError> {
        let (from, to) = admit(movement, owner, &self.facts)?;
        let amount = movement.amount.minor();
        let from_after = from.balance_after(-amount)?;
        let to_after = to.balance_after(amount)?;
        let transfer = Transfer {
            transfer_id,
            kind: movement.kind,
            from_account_id: movement.from_account_id,
            to_account_id: movement.to_account_id,
            amount_minor: amount,
            currency: movement.currency,
            description: movement.description.as_str().to_owned(),
            reverses_transfer_id: movement.reverses_transfer_id,
            created_at: self.now,
            hold: None,
        };
        self.journal(&transfer, from_after, to_after, scope, batch);
        if let Some(original) = transfer.reverses_transfer_id {
            self.facts.reversed.insert(original);
        }
        Ok(transfer)
    }

    fn place_hold(
        &mut self,
        movement: &Movement,
        timeout_seconds: i64,
        owner: Option<&str>,
        hold_id: TransferId,
        scope: &str,
    ) -> Result<Hold, LedgerError> {
        if movement.kind != TransferKind::Transfer {
            return Err(LedgerError::Invalid("only transfers can be held".into()));
        }
        if !(1..=Hold::MAX_TIMEOUT_SECONDS).contains(&timeout_seconds) {
            return Err(LedgerError::Invalid(
                "timeout_seconds must be between 1 and 2592000".into(),
            ));
        }
        let (from, _) = admit(movement, owner, &self.facts)?;
        let pending = from.pending_after_hold(movement.amount.minor())?;
        let hold = Hold {
            hold_id,
            from_account_id: movement.from_account_id,
            to_account_id: movement.to_account_id,
            held_minor: movement.amount.minor(),
            currency: movement.currency,
            description: movement.description.as_str().to_owned(),
            initiated_by: scope.to_owned(),
            created_at: self.now,
            expires_at: self.now + chrono::TimeDelta::seconds(timeout_seconds),
            resolution: None,
        };
        if let Some(book) = self.facts.books.get_mut(&movement.from_account_id) {
            book.pending_debits_minor = pending;
            self.touched.insert(book.account_id);
        }
        self.facts.holds.insert(hold_id, hold.clone());
        self.writes.holds.push(hold.clone());
        Ok(hold)
    }

    /// A pending hold the caller may resolve: its creator, its source's owner,
    /// operators and services. Its payee may read it but not resolve it; to
    /// anyone else it does not exist.
    fn resolvable(
        &self,
        hold_id: TransferId,
        owner: Option<&str>,
        scope: &str,
    ) -> Result<Hold, LedgerError> {
        let hold = self
            .facts
            .holds
            .get(&hold_id)
            .ok_or(LedgerError::TransferNotFound)?;
        if let Some(user) = owner
            && hold.initiated_by != scope
        {
            let owns = |id: AccountId| {
                self.facts
                    .books
                    .get(&id)
                    .is_some_and(|book| book.is_owned_by(user))
            };
            if !owns(hold.from_account_id) {
                return Err(if owns(hold.to_account_id) {
                    LedgerError::Forbidden("only the payer can post or void a hold".into())
                } else {
                    LedgerError::TransferNotFound
                });
            }
        }
        match hold.state() {
            HoldState::Pending => Ok(hold.clone()),
            state => Err(LedgerError::HoldNotPending(state)),
        }
    }

    fn post_hold(
        &mut self,
        hold_id: TransferId,
        amount: Option<PositiveAmount>,
        owner: Option<&str>,
        scope: &str,
    ) -> Result<Transfer, LedgerError> {
        let hold = self.resolvable(hold_id, owner, scope)?;
        let amount = amount.map_or(hold.held_minor, |amount| amount.minor());
        if amount > hold.held_minor {
            return Err(LedgerError::Invalid(
                "amount must not exceed the held amount".into(),
            ));
        }
        let movement = Movement {
            kind: TransferKind::Transfer,
            from_account_id: hold.from_account_id,
            to_account_id: hold.to_account_id,
            amount: PositiveAmount::parse(amount)
                .map_err(|error| LedgerError::Invalid(error.to_string()))?,
            currency: hold.currency,
            description: Description(hold.description.clone()),
            reverses_transfer_id: None,
        };
        // The destination is hidden from a payer as for any transfer; an
        // operator or a service sees it as it is. The amount is checked as if
        // the hold were already released.
        let as_payer = owner.filter(|user| {
            self.facts
                .books
                .get(&hold.from_account_id)
                .is_some_and(|book| book.is_owned_by(user))
        });
        let (from, to) = admit(&movement, as_payer, &self.facts)?;
        let mut released = from.clone();
        released.pending_debits_minor = released
            .pending_debits_minor
            .saturating_sub(hold.held_minor)
            .max(0);
        let from_after = released.balance_after(-amount)?;
        let to_after = to.balance_after(amount)?;
        self.resolve(hold_id, HoldState::Posted, amount);
        let journal_row = Transfer {
            transfer_id: hold_id,
            kind: TransferKind::Transfer,
            from_account_id: hold.from_account_id,
            to_account_id: hold.to_account_id,
            amount_minor: amount,
            currency: hold.currency,
            description: hold.description.clone(),
            reverses_transfer_id: None,
            created_at: self.now,
            hold: None,
        };
        self.journal(&journal_row, from_after, to_after, &hold.initiated_by, None);
        Ok(self
            .facts
            .holds
            .get(&hold_id)
            .map_or(journal_row, Hold::to_transfer))
    }

    fn void_hold(
        &mut self,
        hold_id: TransferId,
        owner: Option<&str>,
        scope: &str,
    ) -> Result<Transfer, LedgerError> {
        self.resolvable(hold_id, owner, scope)?;
        self.resolve(hold_id, HoldState::Voided, 0);
        self.facts
            .holds
            .get(&hold_id)
            .map(Hold::to_transfer)
            .ok_or(LedgerError::TransferNotFound)
    }

    /// Applies every item in order; if any is refused, none of them stays, and
    /// the refusal names each refused item (later items decided as if the refused
    /// ones were not there).
    fn post_batch(
        &mut self,
        items: &[Movement],
        owner: Option<&str>,
        ids: &[TransferId],
        scope: &str,
    ) -> Result<Vec<Transfer>, Refusal> {
        let Some(&batch_id) = ids.first() else {
            return Err(LedgerError::Invalid("a batch needs at least one transfer".into()).into());
        };
        let savepoint = Savepoint {
            books: self.facts.books.clone(),
            touched: self.touched.clone(),
            transfers: self.writes.transfers.len(),
            entries: self.writes.entries.len(),
        };
        let mut transfers = Vec::with_capacity(items.len());
        let mut refused = Vec::new();
        for (index, (item, &transfer_id)) in items.iter().zip(ids).enumerate() {
            if item.kind != TransferKind::Transfer {
                refused.push(item_refusal(
                    index,
                    LedgerError::Invalid("a batch holds transfers only".into()),
                ));
                continue;
            }
            let slot = BatchSlot { batch_id, index };
            match self.post_movement(item, owner, transfer_id, scope, Some(slot)) {
                Ok(transfer) => transfers.push(transfer),
                Err(error) => refused.push(item_refusal(index, error)),
            }
        }
        let Some(first) = refused.first() else {
            return Ok(transfers);
        };
        let refusal = Refusal {
            code: first.code,
            detail: format!("transfer {} of the batch: {}", first.index, first.detail),
            items: refused,
        };
        self.facts.books = savepoint.books;
        self.touched = savepoint.touched;
        self.writes.transfers.truncate(savepoint.transfers);
        self.writes.entries.truncate(savepoint.entries);
        Err(refusal)
    }

    /// Appends a transfer and both its entries, and moves the books to their new
    /// state.
    fn journal(
        &mut self,
        transfer: &Transfer,
        from_after: i64,
        to_after: i64,
        initiated_by: &str,
        batch: Option<BatchSlot>,
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
            let Some(book) = self.facts.books.get_mut(&account_id) else {
                // `admit` found both books; nothing removes one in between.
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
            self.touched.insert(account_id);
            self.writes.entries.push(entry);
        }
        self.writes.transfers.push(NewTransfer {
            transfer: transfer.clone(),
            initiated_by: initiated_by.to_owned(),
            batch,
        });
    }
}

fn item_refusal(index: usize, error: LedgerError) -> ItemRefusal {
    ItemRefusal {
        index,
        code: error.code(),
        detail: error.to_string(),
    }
}

/// The rules every movement must satisfy before its amounts are checked, in the
/// order their refusals take precedence; the two books when it may go on.
fn admit<'f>(
    movement: &Movement,
    owner: Option<&str>,
    facts: &'f Facts,
) -> Result<(&'f LedgerAccount, &'f LedgerAccount), LedgerError> {
    // A book whose account is still being opened does not exist yet for anyone:
    // no money reaches a half-open account.
    let book = |id: AccountId| {
        facts
            .books
            .get(&id)
            .filter(|book| book.is_activated())
            .ok_or(LedgerError::AccountNotFound)
    };
    let from = book(movement.from_account_id)?;
    let to = book(movement.to_account_id)?;
    if from.account_id == to.account_id {
        return Err(LedgerError::Invalid(
            "cannot transfer to the same account".into(),
        ));
    }
    if let Some(owner) = owner
        && !from.is_owned_by(owner)
    {
        return Err(LedgerError::AccountNotFound);
    }
    // Only deposits and withdrawals touch a settlement account; to a customer's
    // transfer it does not exist.
    if movement.kind == TransferKind::Transfer
        && (from.kind != AccountKind::Customer || to.kind != AccountKind::Customer)
    {
        return Err(LedgerError::AccountNotFound);
    }
    // The book at a currency's settlement id settles only if it is the settlement
    // book; one of another kind never takes the settlement side.
    let settlement_side = match movement.kind {
        TransferKind::Deposit => Some(from),
        TransferKind::Withdrawal => Some(to),
        TransferKind::Transfer | TransferKind::Reversal => None,
    };
    if let Some(book) = settlement_side
        && book.kind != AccountKind::Settlement
    {
        return Err(LedgerError::SettlementIdTaken(movement.currency));
    }
    if from.currency != movement.currency || to.currency != movement.currency {
        return Err(LedgerError::CurrencyMismatch);
    }
    from.ensure_open()?;
    // A destination the caller does not own that cannot receive is, to the
    // caller, not there: whether it is frozen or closed is its owner's business.
    if let Err(refusal) = to.ensure_open() {
        let foreign = owner.is_some_and(|owner| !to.is_owned_by(owner));
        return Err(if foreign {
            LedgerError::AccountNotFound
        } else {
            refusal
        });
    }
    if let Some(original) = movement.reverses_transfer_id
        && facts.reversed.contains(&original)
    {
        return Err(LedgerError::Conflict(
            "the transfer was already reversed".into(),
        ));
    }
    Ok((from, to))
}

#[cfg(test)]
mod tests;
