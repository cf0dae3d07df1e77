//! Idempotency keys: what a client sends so that a retried request is answered
//! with the first one's outcome instead of acting twice. Every service that
//! accepts them parses them here.

/// A client-chosen key that makes a request safe to retry: 1 to 128 visible
/// ASCII characters, scoped per caller by whoever records it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IdempotencyKey(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("idempotency key is required: 1 to 128 visible ASCII characters")]
pub struct InvalidIdempotencyKey;

impl crate::DomainError for InvalidIdempotencyKey {
    fn code(&self) -> crate::ErrorCode {
        crate::ErrorCode::InvalidArgument
    }
}

impl IdempotencyKey {
    pub const MAX_LEN: usize = 128;

    pub fn parse(raw: &str) -> Result<IdempotencyKey, InvalidIdempotencyKey> {
        let valid = !raw.is_empty()
            && raw.len() <= Self::MAX_LEN
            && raw.bytes().all(|byte| byte.is_ascii_graphic());
        if valid {
            Ok(IdempotencyKey(raw.to_owned()))
        } else {
            Err(InvalidIdempotencyKey)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idempotency_keys_are_bounded_visible_ascii() {
        assert!(IdempotencyKey::parse("").is_err());
        assert!(IdempotencyKey::parse("has space").is_err());
        assert!(IdempotencyKey::parse(&"k".repeat(129)).is_err());
        assert!(IdempotencyKey::parse(&"k".repeat(128)).is_ok());
        assert!(IdempotencyKey::parse("order-42").is_ok());
    }
}
