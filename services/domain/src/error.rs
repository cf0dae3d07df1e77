//! The one table of stable error codes: each code's name, HTTP status, gRPC status
//! code and title. Every domain error names its code through [`DomainError`]; the
//! service kit turns that into a `tonic::Status` and the gateway into a problem
//! document, both from this table.

/// Stable error codes shared by every service and the REST API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    InvalidArgument,
    Unauthenticated,
    Forbidden,
    NotFound,
    Conflict,
    HoldNotPending,
    InsufficientFunds,
    AccountFrozen,
    AccountClosed,
    CurrencyMismatch,
    IdempotencyKeyReused,
    LimitExceeded,
    PayloadTooLarge,
    UnsupportedMediaType,
    MethodNotAllowed,
    RateLimited,
    Unavailable,
    Internal,
}

/// The canonical gRPC status codes the table uses, by their wire numbers. Kept
/// here rather than borrowed from an RPC crate so this crate stays free of one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum GrpcCode {
    InvalidArgument = 3,
    NotFound = 5,
    AlreadyExists = 6,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    FailedPrecondition = 9,
    OutOfRange = 11,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
    Unauthenticated = 16,
}

/// An error of a domain, told by its stable code. Its `Display` is the message a
/// client may see for a client error; for a server error only the code's title is
/// ever shown, and the message goes to the log.
pub trait DomainError: std::error::Error {
    fn code(&self) -> ErrorCode;

    /// For [`ErrorCode::RateLimited`]: whole seconds until a retry may succeed.
    fn retry_after_seconds(&self) -> Option<u64> {
        None
    }
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 18] = [
        ErrorCode::InvalidArgument,
        ErrorCode::Unauthenticated,
        ErrorCode::Forbidden,
        ErrorCode::NotFound,
        ErrorCode::Conflict,
        ErrorCode::HoldNotPending,
        ErrorCode::InsufficientFunds,
        ErrorCode::AccountFrozen,
        ErrorCode::AccountClosed,
        ErrorCode::CurrencyMismatch,
        ErrorCode::IdempotencyKeyReused,
        ErrorCode::LimitExceeded,
        ErrorCode::PayloadTooLarge,
        ErrorCode::UnsupportedMediaType,
        ErrorCode::MethodNotAllowed,
        ErrorCode::RateLimited,
        ErrorCode::Unavailable,
        ErrorCode::Internal,
    ];

    /// The snake_case code clients match on.
    pub fn as_str(self) -> &'static str {
        self.row().0
    }

    /// HTTP status of a problem response carrying this code.
    pub fn http_status(self) -> u16 {
        self.row().1
    }

    /// gRPC status code carrying this error.
    pub fn grpc(self) -> GrpcCode {
        self.row().2
    }

    /// Short human-readable title for problem responses.
    pub fn title(self) -> &'static str {
        self.row().3
    }

    /// Whether the detail message may be shown to a client. Server-side failures
    /// answer with the title only: their cause goes to the log.
    pub fn is_server_error(self) -> bool {
        self.http_status() >= 500
    }

    pub fn parse(code: &str) -> Option<ErrorCode> {
        Self::ALL
            .into_iter()
            .find(|candidate| candidate.as_str() == code)
    }

    fn row(self) -> (&'static str, u16, GrpcCode, &'static str) {
        match self {
            ErrorCode::InvalidArgument => (
                "invalid_argument",
                400,
                GrpcCode::InvalidArgument,
                "Invalid argument",
            ),
            ErrorCode::Unauthenticated => (
                "unauthenticated",
                401,
                GrpcCode::Unauthenticated,
                "Authentication required",
            ),
            ErrorCode::Forbidden => ("forbidden", 403, GrpcCode::PermissionDenied, "Forbidden"),
            ErrorCode::NotFound => ("not_found", 404, GrpcCode::NotFound, "Not found"),
            ErrorCode::Conflict => ("conflict", 409, GrpcCode::AlreadyExists, "Conflict"),
            ErrorCode::HoldNotPending => (
                "hold_not_pending",
                409,
                GrpcCode::FailedPrecondition,
                "Hold not pending",
            ),
            ErrorCode::InsufficientFunds => (
                "insufficient_funds",
                422,
                GrpcCode::FailedPrecondition,
                "Insufficient funds",
            ),
            ErrorCode::AccountFrozen => (
                "account_frozen",
                422,
                GrpcCode::FailedPrecondition,
                "Account frozen",
            ),
            ErrorCode::AccountClosed => (
                "account_closed",
                422,
                GrpcCode::FailedPrecondition,
                "Account closed",
            ),
            ErrorCode::CurrencyMismatch => (
                "currency_mismatch",
                422,
                GrpcCode::FailedPrecondition,
                "Currency mismatch",
            ),
            ErrorCode::LimitExceeded => (
                "limit_exceeded",
                422,
                GrpcCode::FailedPrecondition,
                "Limit exceeded",
            ),
            ErrorCode::IdempotencyKeyReused => (
                "idempotency_key_reused",
                422,
                GrpcCode::FailedPrecondition,
                "Idempotency key reused",
            ),
            ErrorCode::PayloadTooLarge => (
                "payload_too_large",
                413,
                GrpcCode::OutOfRange,
                "Payload too large",
            ),
            ErrorCode::UnsupportedMediaType => (
                "unsupported_media_type",
                415,
                GrpcCode::InvalidArgument,
                "Unsupported media type",
            ),
            ErrorCode::MethodNotAllowed => (
                "method_not_allowed",
                405,
                GrpcCode::Unimplemented,
                "Method not allowed",
            ),
            ErrorCode::RateLimited => (
                "rate_limited",
                429,
                GrpcCode::ResourceExhausted,
                "Too many requests",
            ),
            ErrorCode::Unavailable => (
                "unavailable",
                503,
                GrpcCode::Unavailable,
                "Service unavailable",
            ),
            ErrorCode::Internal => ("internal", 500, GrpcCode::Internal, "Internal error"),
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_round_trips_through_its_name() {
        for code in ErrorCode::ALL {
            assert_eq!(ErrorCode::parse(code.as_str()), Some(code));
        }
    }

    #[test]
    fn http_statuses_match_the_contract() {
        let expected = [
            ("invalid_argument", 400),
            ("unauthenticated", 401),
            ("forbidden", 403),
            ("not_found", 404),
            ("conflict", 409),
            ("hold_not_pending", 409),
            ("insufficient_funds", 422),
            ("account_frozen", 422),
            ("account_closed", 422),
            ("currency_mismatch", 422),
            ("idempotency_key_reused", 422),
            ("payload_too_large", 413),
            ("unsupported_media_type", 415),
            ("method_not_allowed", 405),
            ("rate_limited", 429),
            ("unavailable", 503),
            ("internal", 500),
        ];
        for (name, http) in expected {
            assert_eq!(
                ErrorCode::parse(name).map(ErrorCode::http_status),
                Some(http)
            );
        }
    }
}
