//! The ledger's domain: accounts' books, transfers, entries, the hash chain, and
//! (in [`plan`]) the rules that turn a commit group of posting requests into
//! outcomes and rows to write.

pub mod plan;

use std::fmt;

use crate::{
    error::{DomainError, ErrorCode},
    money::Currency,
};
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// The id of an account's book; the same UUID the account service gave it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AccountId(Uuid);

impl AccountId {
    pub fn from_uuid(id: Uuid) -> AccountId {
        AccountId(id)
    }

    pub fn parse(raw: &str) -> Result<AccountId, LedgerError> {
        Uuid::try_parse(raw)
            .map(AccountId)
            .map_err(|_| LedgerError::Invalid("account id must be a UUID".into()))
    }

    /// The id of a customer's new book. Name-based UUIDs (versions 3 and 5) are
    /// the form the bank's own books take (see [`AccountId::settlement`]), so none
    /// can be claimed for a customer: a book opened at a currency's settlement id
    /// before its first deposit would stop that currency's deposits and
    /// withdrawals for good.
    pub fn parse_customer(raw: &str) -> Result<AccountId, LedgerError> {
        let id = AccountId::parse(raw)?;
        match id.0.get_version_num() {
            3 | 5 => Err(LedgerError::Invalid(
                "account id must not be a name-based UUID: those are reserved for the bank's own books"
                    .into(),
            )),
            _ => Ok(id),
        }
    }

    /// The bank's settlement account for `currency`: it mirrors money outside the
    /// bank, so it is the other side of every deposit and withdrawal. Its id is
    /// derived from the currency so every replica agrees on it.
    pub fn settlement(currency: Currency) -> AccountId {
        AccountId(Uuid::new_v5(
            &Uuid::NAMESPACE_OID,
            format!("bank.ledger.settlement.{currency}").as_bytes(),
        ))
    }
}

impl fmt::Display for AccountId {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(formatter)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TransferId(Uuid);

impl TransferId {
    pub fn new() -> TransferId {
        TransferId(Uuid::now_v7())
    }

    pub fn from_uuid(id: Uuid) -> TransferId {
        TransferId(id)
    }

    pub fn parse(raw: &str) -> Result<TransferId, LedgerError> {
        Uuid::try_parse(raw)
            .map(TransferId)
            .map_err(|_| LedgerError::Invalid("transfer id must be a UUID".into()))
    }
}

impl Default for TransferId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for TransferId {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(formatter)
    }
}

pub use crate::idempotency::IdempotencyKey;

impl From<crate::idempotency::InvalidIdempotencyKey> for LedgerError {
    fn from(error: crate::idempotency::InvalidIdempotencyKey) -> LedgerError {
        LedgerError::Invalid(error.to_string())
    }
}

/// Free text attached to a transfer.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Description(String);

impl Description {
    pub const MAX_CHARS: usize = 140;

    pub fn parse(raw: &str) -> Result<Description, LedgerError> {
        let trimmed = raw.trim();
        if trimmed.chars().count() > Self::MAX_CHARS {
            return Err(LedgerError::Invalid(
                "description must be at most 140 characters".into(),
            ));
        }
        if trimmed.chars().any(char::is_control) {
            return Err(LedgerError::Invalid(
                "description must not contain control characters".into(),
            ));
        }
        Ok(Description(trimmed.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccountKind {
    Customer,
    Settlement,
}

impl AccountKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AccountKind::Customer => "customer",
            AccountKind::Settlement => "settlement",
        }
    }

    pub fn parse(raw: &str) -> Option<AccountKind> {
        match raw {
            "customer" => Some(AccountKind::Customer),
            "settlement" => Some(AccountKind::Settlement),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccountStatus {
    Active,
    Frozen,
    Closed,
}

impl AccountStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            AccountStatus::Active => "active",
            AccountStatus::Frozen => "frozen",
            AccountStatus::Closed => "closed",
        }
    }

    pub fn parse(raw: &str) -> Option<AccountStatus> {
        match raw {
            "active" => Some(AccountStatus::Active),
            "frozen" => Some(AccountStatus::Frozen),
            "closed" => Some(AccountStatus::Closed),
            _ => None,
        }
    }
}

/// An account's book as the ledger keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerAccount {
    pub account_id: AccountId,
    pub owner_id: Option<String>,
    pub currency: Currency,
    pub kind: AccountKind,
    pub status: AccountStatus,
    pub balance_minor: i64,
    /// What the account's pending holds reserve: `balance_minor` minus this is
    /// what can be spent.
    pub pending_debits_minor: i64,
    pub entry_count: i64,
    pub last_entry_hash: String,
    /// How many status decisions the book has had. A customer's book is opened
    /// at 0, unpostable, and the account service's activation makes it 1; every
    /// later change counts one more, so a mirror of the status can tell a newer
    /// decision from an older one.
    pub status_version: i64,
}

/// What a status change request comes to, decided under the book's lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusDecision {
    /// The book already is so: nothing to write.
    Unchanged,
    /// Write this status at this version.
    Change {
        status: AccountStatus,
        status_version: i64,
    },
}

impl LedgerAccount {
    /// Whether the book may take part in postings: activated, i.e. its account
    /// exists for its owner.
    pub fn is_activated(&self) -> bool {
        self.status_version > 0
    }

    /// Moving a customer's book to `target`: a closed book stays closed, closing
    /// needs a zero balance, and asking for the status a book already has (once
    /// activated) changes nothing. With `expected_version`, a book at another
    /// version is left as it is: the decision the caller based its request on is
    /// no longer the latest.
    pub fn decide_status(
        &self,
        target: AccountStatus,
        expected_version: Option<i64>,
    ) -> Result<StatusDecision, LedgerError> {
        let superseded = expected_version.is_some_and(|version| version != self.status_version);
        if superseded || (self.status == target && self.is_activated()) {
            return Ok(StatusDecision::Unchanged);
        }
        match (self.status, target) {
            (AccountStatus::Closed, _) => return Err(LedgerError::AccountClosed(self.account_id)),
            // An operator's freeze is not undone by its owner closing the account.
            (AccountStatus::Frozen, AccountStatus::Closed) => {
                return Err(LedgerError::AccountFrozen(self.account_id));
            }
            (_, AccountStatus::Closed) if self.balance_minor != 0 => {
                return Err(LedgerError::Conflict(
                    "the account can only be closed at a zero balance".into(),
                ));
            }
            (_, AccountStatus::Closed) if self.pending_debits_minor != 0 => {
                return Err(LedgerError::Conflict(
                    "the account has pending holds: post or void them first".into(),
                ));
            }
            _ => {}
        }
        Ok(StatusDecision::Change {
            status: target,
            status_version: self.status_version.saturating_add(1),
        })
    }
    /// Whether `user_id` may see this account.
    pub fn is_owned_by(&self, user_id: &str) -> bool {
        self.owner_id.as_deref() == Some(user_id)
    }

    /// Checks that the account may take part in a posting at all.
    pub fn ensure_open(&self) -> Result<(), LedgerError> {
        match self.status {
            AccountStatus::Active => Ok(()),
            AccountStatus::Frozen => Err(LedgerError::AccountFrozen(self.account_id)),
            AccountStatus::Closed => Err(LedgerError::AccountClosed(self.account_id)),
        }
    }

    /// What can be spent now: the balance less what pending holds reserve.
    pub fn available_minor(&self) -> i64 {
        self.balance_minor.saturating_sub(self.pending_debits_minor)
    }

    /// The balance after applying `delta`, enforcing no overdraft on customer
    /// accounts (what pending holds reserve cannot be spent) and refusing any
    /// overflow.
    pub fn balance_after(&self, delta: i64) -> Result<i64, LedgerError> {
        let after = self
            .balance_minor
            .checked_add(delta)
            .ok_or(LedgerError::AmountOverflow)?;
        if delta < 0 && self.kind == AccountKind::Customer && after < self.pending_debits_minor {
            return Err(LedgerError::InsufficientFunds);
        }
        Ok(after)
    }

    /// What pending holds reserve after reserving `amount` more.
    pub fn pending_after_hold(&self, amount: i64) -> Result<i64, LedgerError> {
        let pending = self
            .pending_debits_minor
            .checked_add(amount)
            .ok_or(LedgerError::AmountOverflow)?;
        if self.kind == AccountKind::Customer && pending > self.balance_minor {
            return Err(LedgerError::InsufficientFunds);
        }
        Ok(pending)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransferKind {
    Transfer,
    Deposit,
    Withdrawal,
    Reversal,
}

impl TransferKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TransferKind::Transfer => "transfer",
            TransferKind::Deposit => "deposit",
            TransferKind::Withdrawal => "withdrawal",
            TransferKind::Reversal => "reversal",
        }
    }

    pub fn parse(raw: &str) -> Option<TransferKind> {
        match raw {
            "transfer" => Some(TransferKind::Transfer),
            "deposit" => Some(TransferKind::Deposit),
            "withdrawal" => Some(TransferKind::Withdrawal),
            "reversal" => Some(TransferKind::Reversal),
            _ => None,
        }
    }
}

/// A transfer: one that was posted, or a hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transfer {
    pub transfer_id: TransferId,
    pub kind: TransferKind,
    pub from_account_id: AccountId,
    pub to_account_id: AccountId,
    pub amount_minor: i64,
    pub currency: Currency,
    pub description: String,
    pub reverses_transfer_id: Option<TransferId>,
    pub created_at: DateTime<Utc>,
    /// For a transfer that began as a hold: where the hold stands. Its
    /// `amount_minor` is then the held amount while pending, the posted amount
    /// once posted, and 0 once voided or expired.
    pub hold: Option<HoldView>,
}

impl Transfer {
    pub fn status(&self) -> HoldState {
        self.hold
            .as_ref()
            .map_or(HoldState::Posted, |hold| hold.state)
    }
}

/// Where a hold stands, as a transfer shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HoldView {
    pub state: HoldState,
    pub held_minor: i64,
    pub expires_at: DateTime<Utc>,
    pub resolved_at: Option<DateTime<Utc>>,
}

/// The life of a hold. A transfer that never was one is simply `Posted`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldState {
    Pending,
    Posted,
    Voided,
    Expired,
}

impl HoldState {
    pub fn as_str(self) -> &'static str {
        match self {
            HoldState::Pending => "pending",
            HoldState::Posted => "posted",
            HoldState::Voided => "voided",
            HoldState::Expired => "expired",
        }
    }

    pub fn parse(raw: &str) -> Option<HoldState> {
        match raw {
            "pending" => Some(HoldState::Pending),
            "posted" => Some(HoldState::Posted),
            "voided" => Some(HoldState::Voided),
            "expired" => Some(HoldState::Expired),
            _ => None,
        }
    }
}

/// A hold: money of `from_account_id` reserved for `to_account_id`, as placed,
/// and how it ended once it did. Both are appended events; neither is ever
/// changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hold {
    pub hold_id: TransferId,
    pub from_account_id: AccountId,
    pub to_account_id: AccountId,
    pub held_minor: i64,
    pub currency: Currency,
    pub description: String,
    pub initiated_by: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub resolution: Option<HoldResolution>,
}

/// How a hold ended: posted (with the amount that moved), voided or expired.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HoldResolution {
    pub state: HoldState,
    pub amount_minor: i64,
    pub resolved_at: DateTime<Utc>,
}

impl Hold {
    /// The longest a hold may stay pending, and how long it does by default.
    pub const MAX_TIMEOUT_SECONDS: i64 = 2_592_000;
    pub const DEFAULT_TIMEOUT_SECONDS: i64 = 604_800;

    pub fn state(&self) -> HoldState {
        self.resolution
            .as_ref()
            .map_or(HoldState::Pending, |resolution| resolution.state)
    }

    /// Whether the hold is pending but its time is up at `now`: it is to be
    /// released as expired before anything else reads its account.
    pub fn is_due(&self, now: DateTime<Utc>) -> bool {
        self.resolution.is_none() && now >= self.expires_at
    }

    /// The hold as a transfer as of `now`: one whose time is up reads as
    /// expired whether or not its expiry was written yet.
    pub fn to_transfer_at(&self, now: DateTime<Utc>) -> Transfer {
        if !self.is_due(now) {
            return self.to_transfer();
        }
        let mut expired = self.clone();
        expired.resolution = Some(HoldResolution {
            state: HoldState::Expired,
            amount_minor: 0,
            resolved_at: self.expires_at,
        });
        expired.to_transfer()
    }

    /// The hold as a transfer, as its events say.
    pub fn to_transfer(&self) -> Transfer {
        let amount_minor = match &self.resolution {
            None => self.held_minor,
            Some(resolution) => resolution.amount_minor,
        };
        Transfer {
            transfer_id: self.hold_id,
            kind: TransferKind::Transfer,
            from_account_id: self.from_account_id,
            to_account_id: self.to_account_id,
            amount_minor,
            currency: self.currency,
            description: self.description.clone(),
            reverses_transfer_id: None,
            created_at: self.created_at,
            hold: Some(HoldView {
                state: self.state(),
                held_minor: self.held_minor,
                expires_at: self.expires_at,
                resolved_at: self.resolution.as_ref().map(|r| r.resolved_at),
            }),
        }
    }
}

/// One side of a posting, from its account's point of view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub account_id: AccountId,
    pub account_seq: i64,
    pub transfer_id: TransferId,
    pub amount_minor: i64,
    pub balance_after_minor: i64,
    pub currency: Currency,
    pub counterparty_account_id: AccountId,
    pub description: String,
    pub prev_hash: String,
    pub entry_hash: String,
    pub created_at: DateTime<Utc>,
}

/// The hash of the first entry's predecessor.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The hash that chains an entry to its account's previous entry. Any change to a
/// stored entry, or a removed or inserted one, breaks every later hash.
pub fn entry_hash(entry: &Entry) -> String {
    let mut hasher = Sha256::new();
    for field in [
        entry.prev_hash.as_str(),
        &entry.account_id.to_string(),
        &entry.account_seq.to_string(),
        &entry.transfer_id.to_string(),
        &entry.amount_minor.to_string(),
        &entry.balance_after_minor.to_string(),
        entry.currency.as_str(),
        &entry.counterparty_account_id.to_string(),
        entry.description.as_str(),
        &entry.created_at.timestamp_micros().to_string(),
    ] {
        hasher.update((field.len() as u64).to_be_bytes());
        hasher.update(field.as_bytes());
    }
    hex::encode(hasher.finalize())
}

/// One inconsistency found while verifying the journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    pub account_id: String,
    pub kind: &'static str,
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VerifyReport {
    pub accounts_checked: i64,
    pub entries_checked: i64,
    pub mismatches: Vec<Mismatch>,
}

/// Everything a ledger operation can refuse, by cause.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LedgerError {
    #[error("{0}")]
    Invalid(String),
    #[error("account not found")]
    AccountNotFound,
    #[error("transfer not found")]
    TransferNotFound,
    #[error("insufficient funds")]
    InsufficientFunds,
    #[error("account {0} is frozen")]
    AccountFrozen(AccountId),
    #[error("account {0} is closed")]
    AccountClosed(AccountId),
    #[error("currency does not match the account's currency")]
    CurrencyMismatch,
    #[error("idempotency key was already used with a different request")]
    IdempotencyKeyReused,
    #[error("the amount would overflow the balance")]
    AmountOverflow,
    #[error("{0}")]
    Conflict(String),
    #[error("the hold is {}, not pending", .0.as_str())]
    HoldNotPending(HoldState),
    #[error("{0}")]
    Forbidden(String),
    /// A book that is not the settlement book sits at a currency's settlement id
    /// (opened there before ids were reserved): the currency cannot settle until
    /// an operator moves it.
    #[error("the settlement id of {0} is taken by a book of another kind")]
    SettlementIdTaken(Currency),
}

impl DomainError for LedgerError {
    fn code(&self) -> ErrorCode {
        match self {
            LedgerError::Invalid(_) | LedgerError::AmountOverflow => ErrorCode::InvalidArgument,
            LedgerError::AccountNotFound | LedgerError::TransferNotFound => ErrorCode::NotFound,
            LedgerError::InsufficientFunds => ErrorCode::InsufficientFunds,
            LedgerError::AccountFrozen(_) => ErrorCode::AccountFrozen,
            LedgerError::AccountClosed(_) => ErrorCode::AccountClosed,
            LedgerError::CurrencyMismatch => ErrorCode::CurrencyMismatch,
            LedgerError::IdempotencyKeyReused => ErrorCode::IdempotencyKeyReused,
            LedgerError::Conflict(_) => ErrorCode::Conflict,
            LedgerError::HoldNotPending(_) => ErrorCode::HoldNotPending,
            LedgerError::Forbidden(_) => ErrorCode::Forbidden,
            LedgerError::SettlementIdTaken(_) => ErrorCode::Internal,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn customer(balance_minor: i64) -> LedgerAccount {
        LedgerAccount {
            account_id: AccountId(Uuid::nil()),
            owner_id: Some("owner".into()),
            currency: Currency::parse("EUR").unwrap_or_else(|_| unreachable!()),
            kind: AccountKind::Customer,
            status: AccountStatus::Active,
            balance_minor,
            pending_debits_minor: 0,
            entry_count: 0,
            last_entry_hash: GENESIS_HASH.into(),
            status_version: 1,
        }
    }

    #[test]
    fn every_status_decision_counts_one_version_more() {
        let mut book = customer(0);
        book.status_version = 0;
        // Activation: the status it was opened with, now at version 1.
        assert_eq!(
            book.decide_status(AccountStatus::Active, None).ok(),
            Some(StatusDecision::Change {
                status: AccountStatus::Active,
                status_version: 1
            })
        );
        book.status_version = 4;
        assert_eq!(
            book.decide_status(AccountStatus::Active, None).ok(),
            Some(StatusDecision::Unchanged)
        );
        assert_eq!(
            book.decide_status(AccountStatus::Frozen, None).ok(),
            Some(StatusDecision::Change {
                status: AccountStatus::Frozen,
                status_version: 5
            })
        );
    }

    #[test]
    fn an_activation_never_undoes_a_later_decision() {
        let mut frozen = customer(0);
        frozen.status = AccountStatus::Frozen;
        frozen.status_version = 2;
        assert_eq!(
            frozen.decide_status(AccountStatus::Active, Some(0)).ok(),
            Some(StatusDecision::Unchanged)
        );
        let mut opening = customer(0);
        opening.status_version = 0;
        assert_eq!(
            opening.decide_status(AccountStatus::Active, Some(0)).ok(),
            Some(StatusDecision::Change {
                status: AccountStatus::Active,
                status_version: 1
            })
        );
    }

    #[test]
    fn a_frozen_book_cannot_be_closed() {
        let mut frozen = customer(0);
        frozen.status = AccountStatus::Frozen;
        assert!(matches!(
            frozen.decide_status(AccountStatus::Closed, None),
            Err(LedgerError::AccountFrozen(_))
        ));
    }

    #[test]
    fn a_closed_book_stays_closed_and_closing_needs_a_zero_balance() {
        assert!(matches!(
            customer(1).decide_status(AccountStatus::Closed, None),
            Err(LedgerError::Conflict(_))
        ));
        let mut closed = customer(0);
        closed.status = AccountStatus::Closed;
        assert!(matches!(
            closed.decide_status(AccountStatus::Active, None),
            Err(LedgerError::AccountClosed(_))
        ));
        assert_eq!(
            closed.decide_status(AccountStatus::Closed, None).ok(),
            Some(StatusDecision::Unchanged)
        );
    }

    #[test]
    fn customer_accounts_cannot_go_negative() {
        assert!(matches!(
            customer(100).balance_after(-101),
            Err(LedgerError::InsufficientFunds)
        ));
        assert_eq!(customer(100).balance_after(-100).ok(), Some(0));
    }

    #[test]
    fn settlement_accounts_may_go_negative() {
        let mut settlement = customer(0);
        settlement.kind = AccountKind::Settlement;
        assert_eq!(settlement.balance_after(-500).ok(), Some(-500));
    }

    #[test]
    fn balance_overflow_is_an_error_not_a_wrap() {
        assert!(matches!(
            customer(i64::MAX).balance_after(1),
            Err(LedgerError::AmountOverflow)
        ));
    }

    #[test]
    fn frozen_and_closed_accounts_refuse_postings() {
        let mut account = customer(0);
        account.status = AccountStatus::Frozen;
        assert!(matches!(
            account.ensure_open(),
            Err(LedgerError::AccountFrozen(_))
        ));
        account.status = AccountStatus::Closed;
        assert!(matches!(
            account.ensure_open(),
            Err(LedgerError::AccountClosed(_))
        ));
    }

    #[test]
    fn settlement_ids_cannot_be_claimed_for_customer_books() {
        let eur = Currency::parse("EUR").unwrap_or_else(|_| unreachable!());
        let settlement = AccountId::settlement(eur).to_string();
        assert!(matches!(
            AccountId::parse_customer(&settlement),
            Err(LedgerError::Invalid(_))
        ));
        let named = Uuid::new_v5(&Uuid::NAMESPACE_DNS, b"bank.example").to_string();
        assert!(AccountId::parse_customer(&named).is_err());
        for id in [Uuid::now_v7(), Uuid::new_v4()] {
            assert_eq!(
                AccountId::parse_customer(&id.to_string()).ok(),
                Some(AccountId::from_uuid(id))
            );
        }
    }

    #[test]
    fn settlement_ids_are_stable_per_currency() {
        let eur = Currency::parse("EUR").unwrap_or_else(|_| unreachable!());
        let usd = Currency::parse("USD").unwrap_or_else(|_| unreachable!());
        assert_eq!(AccountId::settlement(eur), AccountId::settlement(eur));
        assert_ne!(AccountId::settlement(eur), AccountId::settlement(usd));
    }

    #[test]
    fn changing_any_entry_field_changes_its_hash() {
        let entry = Entry {
            account_id: AccountId(Uuid::nil()),
            account_seq: 1,
            transfer_id: TransferId(Uuid::nil()),
            amount_minor: 100,
            balance_after_minor: 100,
            currency: Currency::parse("EUR").unwrap_or_else(|_| unreachable!()),
            counterparty_account_id: AccountId(Uuid::nil()),
            description: String::new(),
            prev_hash: GENESIS_HASH.into(),
            entry_hash: String::new(),
            created_at: DateTime::from_timestamp_micros(0).unwrap_or_default(),
        };
        let mut tampered = entry.clone();
        tampered.amount_minor = 101;
        assert_ne!(entry_hash(&entry), entry_hash(&tampered));
    }
}
