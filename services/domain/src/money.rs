//! Money as the bank handles it: whole minor units in `i64` with an ISO 4217
//! currency. No floating point anywhere.

use std::fmt;

/// A well-formed ISO 4217 currency code. Accounts are only opened in the
/// [`SUPPORTED_CURRENCIES`] ([`Currency::parse_supported`]); a posting may name any
/// well-formed code, and one no account holds is then a currency mismatch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Currency([u8; 3]);

/// Currencies accounts can be opened in.
pub const SUPPORTED_CURRENCIES: &[&str] = &[
    "AUD", "CAD", "CHF", "CZK", "DKK", "EUR", "GBP", "JPY", "NOK", "PLN", "SEK", "USD",
];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("currency must be a supported ISO 4217 code such as EUR or USD")]
pub struct UnsupportedCurrency;

impl Currency {
    /// Any three upper-case letters, the shape of an ISO 4217 code.
    pub fn parse(code: &str) -> Result<Currency, UnsupportedCurrency> {
        match code.as_bytes() {
            &[a, b, c] if [a, b, c].iter().all(u8::is_ascii_uppercase) => Ok(Currency([a, b, c])),
            _ => Err(UnsupportedCurrency),
        }
    }

    /// A currency accounts can be opened in.
    pub fn parse_supported(code: &str) -> Result<Currency, UnsupportedCurrency> {
        if SUPPORTED_CURRENCIES.contains(&code) {
            Currency::parse(code)
        } else {
            Err(UnsupportedCurrency)
        }
    }

    pub fn as_str(&self) -> &str {
        // Only upper-case ASCII codes are ever constructed.
        std::str::from_utf8(&self.0).unwrap_or("XXX")
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// A strictly positive amount to move, in minor units.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PositiveAmount(i64);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("amount must be a positive whole number of minor units")]
pub struct NonPositiveAmount;

impl PositiveAmount {
    pub fn parse(minor: i64) -> Result<PositiveAmount, NonPositiveAmount> {
        if minor > 0 {
            Ok(PositiveAmount(minor))
        } else {
            Err(NonPositiveAmount)
        }
    }

    pub fn minor(self) -> i64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_three_upper_case_letters_and_accounts_use_supported_ones() {
        assert_eq!(
            Currency::parse("EUR").map(|c| c.to_string()),
            Ok("EUR".to_owned())
        );
        assert!(Currency::parse("HUF").is_ok());
        assert!(Currency::parse_supported("HUF").is_err());
        assert!(Currency::parse_supported("EUR").is_ok());
        for malformed in ["eur", "EURO", "EU", "", "E1R", "ÉUR"] {
            assert!(Currency::parse(malformed).is_err(), "{malformed}");
            assert!(Currency::parse_supported(malformed).is_err(), "{malformed}");
        }
    }

    #[test]
    fn amounts_must_be_positive() {
        assert!(PositiveAmount::parse(0).is_err());
        assert!(PositiveAmount::parse(-5).is_err());
        assert_eq!(PositiveAmount::parse(1).map(PositiveAmount::minor), Ok(1));
    }
}
