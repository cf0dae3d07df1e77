//! The account service's domain: accounts, their numbers, owners and lifecycle.
//! No IO: the store maps database errors into [`AccountError`], the api maps it
//! to a status through its [`DomainError`] code.

use bank_domain::{DomainError, ErrorCode, money::Currency};
use chrono::{DateTime, Utc};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccountStatus {
    /// Written, but its book in the ledger is not confirmed yet. Never shown to
    /// clients and unusable for money: the ledger does not know it.
    Pending,
    Active,
    Frozen,
    Closed,
}

impl AccountStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            AccountStatus::Pending => "pending",
            AccountStatus::Active => "active",
            AccountStatus::Frozen => "frozen",
            AccountStatus::Closed => "closed",
        }
    }

    pub fn parse(raw: &str) -> Option<AccountStatus> {
        match raw {
            "pending" => Some(AccountStatus::Pending),
            "active" => Some(AccountStatus::Active),
            "frozen" => Some(AccountStatus::Frozen),
            "closed" => Some(AccountStatus::Closed),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub account_id: uuid::Uuid,
    pub number: String,
    pub owner_id: String,
    pub currency: Currency,
    pub nickname: String,
    pub status: AccountStatus,
    /// The ledger's version of `status`: 0 until the ledger activated the book
    /// (see [`Account::needs_activation`]); a status is only ever recorded over
    /// an older version.
    pub status_version: i64,
    pub created_at: DateTime<Utc>,
}

/// Where an account is on its way to being usable. The ledger takes no money for
/// a book until the account is recorded here as active, so opening is: record
/// the account pending, open its book (unpostable), record it active, activate
/// the book. A crash between any two steps leaves a state the next read resumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provisioning {
    /// Pending: its book may not exist yet.
    OpenBook,
    /// Recorded active, but its book not yet activated.
    ActivateBook,
    Done,
}

impl Account {
    pub fn provisioning(&self) -> Provisioning {
        match (self.status, self.status_version) {
            (AccountStatus::Pending, _) => Provisioning::OpenBook,
            (AccountStatus::Active, 0) => Provisioning::ActivateBook,
            _ => Provisioning::Done,
        }
    }

    /// Whether the book still waits for its activation.
    pub fn needs_activation(&self) -> bool {
        self.provisioning() != Provisioning::Done
    }
}

/// The fingerprint of an `OpenAccount` request, so that a key reused with
/// another body is told apart from a retry.
pub fn open_request_hash(currency: Currency, nickname: &Nickname) -> String {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    for field in [currency.as_str(), nickname.as_str()] {
        hasher.update((field.len() as u64).to_be_bytes());
        hasher.update(field.as_bytes());
    }
    hex::encode(hasher.finalize())
}

/// An optional label the owner gives an account.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Nickname(String);

impl Nickname {
    pub const MAX_CHARS: usize = 64;

    pub fn parse(raw: &str) -> Result<Nickname, AccountError> {
        let trimmed = raw.trim();
        if trimmed.chars().count() > Self::MAX_CHARS || trimmed.chars().any(char::is_control) {
            return Err(AccountError::Invalid(
                "nickname must be at most 64 characters without control characters".into(),
            ));
        }
        Ok(Nickname(trimmed.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Makes an account number: eleven random digits and a Luhn check digit, so that
/// a mistyped number is caught before it reaches anyone.
pub fn account_number(random_digits: [u8; 11]) -> String {
    let mut digits: Vec<u8> = random_digits.iter().map(|digit| digit % 10).collect();
    digits.push(luhn_check_digit(&digits));
    digits
        .iter()
        .map(|digit| char::from(b'0' + digit))
        .collect()
}

fn luhn_check_digit(digits: &[u8]) -> u8 {
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(index, &digit)| {
            let digit = u32::from(digit);
            if index % 2 == 0 {
                let doubled = digit * 2;
                if doubled > 9 { doubled - 9 } else { doubled }
            } else {
                digit
            }
        })
        .sum();
    u8::try_from((10 - sum % 10) % 10).unwrap_or(0)
}

/// Whether `number` carries a valid Luhn check digit.
pub fn is_valid_account_number(number: &str) -> bool {
    let digits: Option<Vec<u8>> = number
        .chars()
        .map(|c| c.to_digit(10).and_then(|d| u8::try_from(d).ok()))
        .collect();
    match digits {
        Some(digits) if digits.len() == 12 => luhn_check_digit(&digits[..11]) == digits[11],
        _ => false,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error("{0}")]
    Invalid(String),
    #[error("account not found")]
    NotFound,
    #[error("account is closed")]
    Closed,
    #[error("idempotency key was already used with a different request")]
    IdempotencyKeyReused,
    #[error("a customer may hold at most {0} open accounts; close one to open another")]
    LimitExceeded(u32),
    #[error("database error: {0}")]
    Storage(String),
    #[error("database unavailable: {0}")]
    StorageUnavailable(String),
    #[error("corrupt row: {0}")]
    Corrupt(String),
}

impl DomainError for AccountError {
    fn code(&self) -> ErrorCode {
        match self {
            AccountError::Invalid(_) => ErrorCode::InvalidArgument,
            AccountError::NotFound => ErrorCode::NotFound,
            AccountError::Closed => ErrorCode::AccountClosed,
            AccountError::IdempotencyKeyReused => ErrorCode::IdempotencyKeyReused,
            AccountError::LimitExceeded(_) => ErrorCode::LimitExceeded,
            AccountError::StorageUnavailable(_) => ErrorCode::Unavailable,
            AccountError::Storage(_) | AccountError::Corrupt(_) => ErrorCode::Internal,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_numbers_pass_the_luhn_check() {
        let number = account_number([7, 9, 9, 2, 7, 3, 9, 8, 7, 1, 3]);
        assert_eq!(number.len(), 12);
        assert!(is_valid_account_number(&number));
    }

    #[test]
    fn a_single_mistyped_digit_is_caught() {
        let number = account_number([1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]);
        let mut digits: Vec<char> = number.chars().collect();
        digits[3] = if digits[3] == '0' { '1' } else { '0' };
        let mistyped: String = digits.into_iter().collect();
        assert!(!is_valid_account_number(&mistyped));
    }

    #[test]
    fn nicknames_are_bounded() {
        assert!(Nickname::parse(&"n".repeat(65)).is_err());
        assert_eq!(
            Nickname::parse("  Savings ")
                .map(|n| n.as_str().to_owned())
                .ok(),
            Some("Savings".into())
        );
    }
}
