//! Money as the bank handles it: whole minor units in `i64` with an ISO 4217
//! currency. No floating point anywhere.

use std::fmt;

/// An ISO 4217 currency the bank supports.
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
    pub fn parse(code: &str) -> Result<Currency, UnsupportedCurrency> {
        if !SUPPORTED_CURRENCIES.contains(&code) {
            return Err(UnsupportedCurrency);
        }
        let bytes = code.as_bytes();
        Ok(Currency([bytes[0], bytes[1], bytes[2]]))
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII codes from the supported list are ever constructed.
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
    fn only_supported_upper_case_codes_parse() {
        assert_eq!(
            Currency::parse("EUR").map(|c| c.to_string()),
            Ok("EUR".to_owned())
        );
        assert!(Currency::parse("eur").is_err());
        assert!(Currency::parse("XXX").is_err());
        assert!(Currency::parse("EURO").is_err());
        assert!(Currency::parse("").is_err());
    }

    #[test]
    fn amounts_must_be_positive() {
        assert!(PositiveAmount::parse(0).is_err());
        assert!(PositiveAmount::parse(-5).is_err());
        assert_eq!(PositiveAmount::parse(1).map(PositiveAmount::minor), Ok(1));
    }
}
