//! Identity's domain: users, roles, and the rules for emails, names and passwords.
//! No IO: the store maps database errors into [`IdentityError`], the api maps it
//! to a status through its [`DomainError`] code.

use std::fmt;

use bank_domain::{
    DomainError, ErrorCode,
    principal::{ROLE_CUSTOMER, ROLE_OPERATOR},
};
use chrono::{DateTime, Utc};

/// A normalised email address: trimmed and lower-cased, so that one mailbox maps
/// to one user.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Email(String);

impl Email {
    pub const MAX_LEN: usize = 254;

    pub fn parse(raw: &str) -> Result<Email, IdentityError> {
        let normalised = raw.trim().to_lowercase();
        let invalid = || IdentityError::Invalid("email must be a valid address".into());
        if normalised.len() > Self::MAX_LEN
            || normalised
                .chars()
                .any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(invalid());
        }
        let (local, domain) = normalised.rsplit_once('@').ok_or_else(invalid)?;
        let domain_ok = domain.contains('.')
            && !domain.starts_with('.')
            && !domain.ends_with('.')
            && !domain.contains("..")
            && !domain.contains('@');
        if local.is_empty() || local.len() > 64 || !domain_ok {
            return Err(invalid());
        }
        Ok(Email(normalised))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Email {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FullName(String);

impl FullName {
    pub const MAX_CHARS: usize = 200;

    pub fn parse(raw: &str) -> Result<FullName, IdentityError> {
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.chars().count() > Self::MAX_CHARS {
            return Err(IdentityError::Invalid(
                "full_name must be 1 to 200 characters".into(),
            ));
        }
        if trimmed.chars().any(char::is_control) {
            return Err(IdentityError::Invalid(
                "full_name must not contain control characters".into(),
            ));
        }
        Ok(FullName(trimmed.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A password that satisfies the policy (NIST SP 800-63B), held in its NFKC form:
/// 12 to 256 characters after normalisation, no composition rules, and hard to
/// guess by a strength estimator that knows the frequency lists of common
/// passwords, words and names, and who the password is for.
pub struct NewPassword(String);

/// The words a guesser tries first against a given user: their email and its
/// parts, their name, and the bank's own name.
pub struct PasswordContext(Vec<String>);

impl PasswordContext {
    pub fn new(email: &str, full_name: &str) -> PasswordContext {
        let mut words = vec!["bank".to_owned(), "banking".to_owned(), email.to_owned()];
        words.extend(
            email
                .split(['@', '.', '-', '_', '+'])
                .chain(full_name.split_whitespace())
                .filter(|word| word.chars().count() >= 3)
                .map(str::to_owned),
        );
        words.push(full_name.to_owned());
        PasswordContext(words)
    }
}

/// A password as it is checked and hashed: its NFKC form (NIST SP 800-63B), so
/// that the same password typed on another keyboard or system still matches.
pub fn normalize_password(raw: &str) -> String {
    use unicode_normalization::UnicodeNormalization;
    raw.nfkc().collect()
}

impl NewPassword {
    pub const MIN_CHARS: usize = 12;
    pub const MAX_CHARS: usize = 256;
    /// The least zxcvbn score accepted: 3, about 10^8 guesses or more.
    pub const MIN_SCORE: u8 = 3;
    /// The estimator reads at most this many characters. Its cost grows faster
    /// than the length, and registration is open to anyone.
    const ESTIMATED_CHARS: usize = 100;

    /// Checks `raw` against the policy. The estimate costs milliseconds of CPU:
    /// run it off the async threads.
    pub fn parse(raw: &str, context: &PasswordContext) -> Result<NewPassword, IdentityError> {
        if raw.len() > MAX_PASSWORD_BYTES {
            return Err(IdentityError::Invalid(
                "password must be at most 256 characters".into(),
            ));
        }
        let normalized = normalize_password(raw);
        let chars = normalized.chars().count();
        if chars < Self::MIN_CHARS {
            return Err(IdentityError::Invalid(
                "password must be at least 12 characters".into(),
            ));
        }
        if chars > Self::MAX_CHARS {
            return Err(IdentityError::Invalid(
                "password must be at most 256 characters".into(),
            ));
        }
        let prefix: String = normalized.chars().take(Self::ESTIMATED_CHARS).collect();
        let inputs: Vec<&str> = context.0.iter().map(String::as_str).collect();
        let estimate = zxcvbn::zxcvbn(&prefix, &inputs);
        if u8::from(estimate.score()) < Self::MIN_SCORE {
            let warning = estimate
                .feedback()
                .and_then(|feedback| feedback.warning())
                .map(|warning| format!(": {warning}"))
                .unwrap_or_default();
            return Err(IdentityError::Invalid(format!(
                "password is too easy to guess{warning}; a few uncommon words make a strong one"
            )));
        }
        Ok(NewPassword(normalized))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The largest password, in bytes, that is ever handed to the hasher. Longer input
/// is refused before any work is done, so it cannot be used to burn CPU.
pub const MAX_PASSWORD_BYTES: usize = 1024;

/// How failed logins slow down further attempts. Counting per email and client
/// pair punishes the guesser, not the owner on another device; a looser count per
/// email alone slows guessing spread over many clients, with a short cap so that
/// nobody can keep the owner out for long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Failures allowed before any delay.
    pub free_failures: i64,
    /// The delay after the first failure beyond the free ones, in seconds.
    pub first_delay_seconds: i64,
    /// The longest delay, in seconds.
    pub cap_seconds: i64,
    /// From this many consecutive failures on, every client waits, new ones
    /// included, and at least [`LOCKOUT_MIN_WAIT_SECONDS`] between attempts,
    /// until one succeeds (NIST SP 800-63B allows at most 100 consecutive
    /// failures per account). `None`: only clients that failed before wait.
    pub lockout_after: Option<i64>,
}

/// The least wait between attempts on an account past its lockout threshold.
pub const LOCKOUT_MIN_WAIT_SECONDS: i64 = 60;

/// Consecutive failures on one account after which every client waits.
pub const ACCOUNT_LOCKOUT_FAILURES: i64 = 100;

impl Backoff {
    /// The delay after `failures` consecutive failures: none for the free ones,
    /// then doubling from the first delay up to the cap.
    pub fn delay_after(self, failures: i64) -> Option<chrono::Duration> {
        let over = failures.checked_sub(self.free_failures)?;
        if over < 1 {
            return None;
        }
        let doublings = u32::try_from(over - 1).unwrap_or(u32::MAX).min(40);
        let mut seconds = self
            .first_delay_seconds
            .saturating_mul(1_i64 << doublings)
            .min(self.cap_seconds);
        if self
            .lockout_after
            .is_some_and(|threshold| failures >= threshold)
        {
            seconds = seconds.max(LOCKOUT_MIN_WAIT_SECONDS);
        }
        Some(chrono::Duration::seconds(seconds))
    }
}

/// How failed logins are slowed down: per email and client address, and per email
/// alone (which only holds back clients that have failed before).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginThrottle {
    pub per_client: Backoff,
    pub per_account: Backoff,
}

impl Default for LoginThrottle {
    /// Five free failures per client, then 5 s doubling up to 15 min; twenty free
    /// failures per account, then 1 s doubling up to 1 min.
    fn default() -> LoginThrottle {
        LoginThrottle {
            per_client: Backoff {
                free_failures: 5,
                first_delay_seconds: 5,
                cap_seconds: 15 * 60,
                lockout_after: None,
            },
            per_account: Backoff {
                free_failures: 20,
                first_delay_seconds: 1,
                cap_seconds: 60,
                lockout_after: Some(ACCOUNT_LOCKOUT_FAILURES),
            },
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Customer,
    Operator,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Customer => ROLE_CUSTOMER,
            Role::Operator => ROLE_OPERATOR,
        }
    }

    pub fn parse(raw: &str) -> Result<Role, IdentityError> {
        match raw {
            ROLE_CUSTOMER => Ok(Role::Customer),
            ROLE_OPERATOR => Ok(Role::Operator),
            _ => Err(IdentityError::Invalid(format!(
                "unknown role; roles are {ROLE_CUSTOMER} and {ROLE_OPERATOR}"
            ))),
        }
    }

    /// Parses a complete role set: non-empty, known roles, deduplicated, sorted.
    pub fn parse_set<'a>(
        raw: impl IntoIterator<Item = &'a str>,
    ) -> Result<Vec<Role>, IdentityError> {
        let mut roles = raw
            .into_iter()
            .map(Role::parse)
            .collect::<Result<Vec<_>, _>>()?;
        roles.sort();
        roles.dedup();
        if roles.is_empty() {
            return Err(IdentityError::Invalid(
                "a user needs at least one role".into(),
            ));
        }
        Ok(roles)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub user_id: String,
    pub email: Email,
    pub full_name: String,
    pub roles: Vec<Role>,
    pub enabled: bool,
    pub created_at: DateTime<Utc>,
}

impl User {
    pub fn role_names(&self) -> Vec<String> {
        self.roles
            .iter()
            .map(|role| role.as_str().to_owned())
            .collect()
    }
}

/// Everything identity can refuse, by cause.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("{0}")]
    Invalid(String),
    #[error("invalid email or password")]
    InvalidCredentials,
    #[error("invalid or expired refresh token")]
    InvalidRefreshToken,
    #[error("invalid client credentials")]
    InvalidClient,
    #[error("a user with this email already exists")]
    EmailTaken,
    #[error("user not found")]
    UserNotFound,
    #[error("too many failed logins, retry in {0} seconds")]
    LoginThrottled(u64),
    #[error("database error: {0}")]
    Storage(String),
    #[error("database unavailable: {0}")]
    StorageUnavailable(String),
    #[error("password hashing failed: {0}")]
    Hashing(String),
    #[error("token signing failed: {0}")]
    Signing(String),
    #[error("corrupt row: {0}")]
    Corrupt(String),
}

impl DomainError for IdentityError {
    fn code(&self) -> ErrorCode {
        match self {
            IdentityError::Invalid(_) => ErrorCode::InvalidArgument,
            IdentityError::InvalidCredentials
            | IdentityError::InvalidRefreshToken
            | IdentityError::InvalidClient => ErrorCode::Unauthenticated,
            IdentityError::EmailTaken => ErrorCode::Conflict,
            IdentityError::UserNotFound => ErrorCode::NotFound,
            IdentityError::LoginThrottled(_) => ErrorCode::RateLimited,
            IdentityError::StorageUnavailable(_) => ErrorCode::Unavailable,
            IdentityError::Storage(_)
            | IdentityError::Hashing(_)
            | IdentityError::Signing(_)
            | IdentityError::Corrupt(_) => ErrorCode::Internal,
        }
    }

    fn retry_after_seconds(&self) -> Option<u64> {
        match self {
            IdentityError::LoginThrottled(seconds) => Some(*seconds),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_normalised() {
        assert_eq!(
            Email::parse("  Alice@Example.COM ")
                .map(|e| e.to_string())
                .ok(),
            Some("alice@example.com".into())
        );
    }

    #[test]
    fn malformed_emails_are_refused() {
        for raw in [
            "",
            "alice",
            "alice@",
            "@example.com",
            "alice@example",
            "a b@example.com",
            "alice@.com",
            "alice@example..com",
        ] {
            assert!(Email::parse(raw).is_err(), "{raw:?} was accepted");
        }
    }

    fn alice() -> PasswordContext {
        PasswordContext::new("alice.martin@example.com", "Alice Martin")
    }

    #[test]
    fn passwords_follow_the_length_policy_counted_after_normalisation() {
        let context = alice();
        assert!(NewPassword::parse("short", &context).is_err());
        assert!(NewPassword::parse(&"x".repeat(257), &context).is_err());
        assert!(NewPassword::parse("correct horse battery", &context).is_ok());
        // Eleven characters, one of them a ligature NFKC spells as two: twelve.
        assert!(NewPassword::parse("q\u{fb01}zm otrvwk", &context).is_ok());
        // 200 characters that NFKC turns into 400.
        assert!(NewPassword::parse(&"\u{fb01}".repeat(200), &context).is_err());
        assert!(NewPassword::parse(&"\u{fb01}".repeat(2_000), &context).is_err());
    }

    #[test]
    fn passwords_are_held_in_their_nfkc_form() {
        let decomposed = "cafe\u{301} au lait sans sucre";
        let parsed = NewPassword::parse(decomposed, &alice()).map(|password| password.0);
        assert_eq!(parsed.ok().as_deref(), Some("caf\u{e9} au lait sans sucre"));
        let full_width = "\u{ff37}\u{ff49}\u{ff4e}\u{ff54}\u{ff45}\u{ff52} moorland cottage";
        let parsed = NewPassword::parse(full_width, &alice()).map(|password| password.0);
        assert_eq!(parsed.ok().as_deref(), Some("Winter moorland cottage"));
    }

    #[test]
    fn common_and_guessable_passwords_are_refused() {
        let context = alice();
        for weak in [
            "password1234",
            "Password1234",
            "qwertyuiop123",
            "123456789012",
            "iloveyou2024!",
            "aaaaaaaaaaaaaaaa",
            "abcdefghijklmnop",
            "P@ssw0rd12345",
            "bankbankbank1",
        ] {
            assert!(
                NewPassword::parse(weak, &context).is_err(),
                "{weak:?} was accepted"
            );
        }
    }

    #[test]
    fn passwords_made_of_the_users_own_details_are_refused() {
        let own_email = "alice.martin@example.com";
        assert!(NewPassword::parse(own_email, &alice()).is_err());
        let bob = PasswordContext::new("bob@example.com", "Bob Stone");
        assert!(
            NewPassword::parse(own_email, &bob).is_ok(),
            "only the owner's details count"
        );
    }

    #[test]
    fn a_refusal_says_why() {
        let refused = NewPassword::parse("password1234", &alice()).err();
        let message = refused.map(|error| error.to_string()).unwrap_or_default();
        assert!(message.contains("too easy to guess"), "{message}");
    }

    #[test]
    fn past_the_lockout_threshold_every_attempt_waits_at_least_a_minute() {
        let backoff = Backoff {
            free_failures: 20,
            first_delay_seconds: 1,
            cap_seconds: 30,
            lockout_after: Some(ACCOUNT_LOCKOUT_FAILURES),
        };
        assert_eq!(backoff.delay_after(99), Some(chrono::Duration::seconds(30)));
        assert_eq!(
            backoff.delay_after(100),
            Some(chrono::Duration::seconds(LOCKOUT_MIN_WAIT_SECONDS))
        );
    }

    #[test]
    fn backoff_doubles_after_the_free_failures_up_to_the_cap() {
        let backoff = Backoff {
            free_failures: 5,
            first_delay_seconds: 2,
            cap_seconds: 60,
            lockout_after: None,
        };
        assert_eq!(backoff.delay_after(5), None);
        assert_eq!(backoff.delay_after(6), Some(chrono::Duration::seconds(2)));
        assert_eq!(backoff.delay_after(8), Some(chrono::Duration::seconds(8)));
        assert_eq!(
            backoff.delay_after(100),
            Some(chrono::Duration::seconds(60))
        );
        assert_eq!(
            backoff.delay_after(i64::MAX),
            Some(chrono::Duration::seconds(60))
        );
    }

    #[test]
    fn role_sets_are_known_non_empty_and_deduplicated() {
        assert_eq!(
            Role::parse_set(["operator", "customer", "operator"]).ok(),
            Some(vec![Role::Customer, Role::Operator])
        );
        assert!(Role::parse_set([]).is_err());
        assert!(Role::parse_set(["admin"]).is_err());
    }
}
