//! The one table of stable error codes, and their mapping to `tonic::Status` and to
//! HTTP. Services attach the code to the status as metadata so that the gateway can
//! tell `insufficient_funds` from `account_frozen` although both are
//! `FAILED_PRECONDITION` on the wire.

use tonic::{Code, Status, metadata::MetadataValue};

/// Metadata key carrying the stable snake_case error code on every error status.
pub const ERROR_CODE_METADATA: &str = "bank-error-code";

/// Metadata key telling a rate-limited caller how many seconds to wait.
pub const RETRY_AFTER_METADATA: &str = "retry-after";

/// Stable error codes shared by every service and the REST API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    InvalidArgument,
    Unauthenticated,
    Forbidden,
    NotFound,
    Conflict,
    InsufficientFunds,
    AccountFrozen,
    AccountClosed,
    CurrencyMismatch,
    IdempotencyKeyReused,
    PayloadTooLarge,
    UnsupportedMediaType,
    MethodNotAllowed,
    RateLimited,
    Unavailable,
    Internal,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 16] = [
        ErrorCode::InvalidArgument,
        ErrorCode::Unauthenticated,
        ErrorCode::Forbidden,
        ErrorCode::NotFound,
        ErrorCode::Conflict,
        ErrorCode::InsufficientFunds,
        ErrorCode::AccountFrozen,
        ErrorCode::AccountClosed,
        ErrorCode::CurrencyMismatch,
        ErrorCode::IdempotencyKeyReused,
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
    pub fn grpc_code(self) -> Code {
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

    /// The code for a status that carries none, e.g. one produced by tonic itself.
    pub fn from_grpc(code: Code) -> ErrorCode {
        match code {
            Code::InvalidArgument | Code::OutOfRange => ErrorCode::InvalidArgument,
            Code::Unauthenticated => ErrorCode::Unauthenticated,
            Code::PermissionDenied => ErrorCode::Forbidden,
            Code::NotFound => ErrorCode::NotFound,
            Code::AlreadyExists | Code::Aborted | Code::FailedPrecondition => ErrorCode::Conflict,
            Code::ResourceExhausted => ErrorCode::RateLimited,
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled => ErrorCode::Unavailable,
            Code::Ok | Code::Unknown | Code::Unimplemented | Code::Internal | Code::DataLoss => {
                ErrorCode::Internal
            }
        }
    }

    /// The code a status carries: its metadata if present and known, else derived
    /// from the gRPC code.
    pub fn of_status(status: &Status) -> ErrorCode {
        status
            .metadata()
            .get(ERROR_CODE_METADATA)
            .and_then(|value| value.to_str().ok())
            .and_then(ErrorCode::parse)
            .unwrap_or_else(|| ErrorCode::from_grpc(status.code()))
    }

    fn row(self) -> (&'static str, u16, Code, &'static str) {
        match self {
            ErrorCode::InvalidArgument => (
                "invalid_argument",
                400,
                Code::InvalidArgument,
                "Invalid argument",
            ),
            ErrorCode::Unauthenticated => (
                "unauthenticated",
                401,
                Code::Unauthenticated,
                "Authentication required",
            ),
            ErrorCode::Forbidden => ("forbidden", 403, Code::PermissionDenied, "Forbidden"),
            ErrorCode::NotFound => ("not_found", 404, Code::NotFound, "Not found"),
            ErrorCode::Conflict => ("conflict", 409, Code::AlreadyExists, "Conflict"),
            ErrorCode::InsufficientFunds => (
                "insufficient_funds",
                422,
                Code::FailedPrecondition,
                "Insufficient funds",
            ),
            ErrorCode::AccountFrozen => (
                "account_frozen",
                422,
                Code::FailedPrecondition,
                "Account frozen",
            ),
            ErrorCode::AccountClosed => (
                "account_closed",
                422,
                Code::FailedPrecondition,
                "Account closed",
            ),
            ErrorCode::CurrencyMismatch => (
                "currency_mismatch",
                422,
                Code::FailedPrecondition,
                "Currency mismatch",
            ),
            ErrorCode::IdempotencyKeyReused => (
                "idempotency_key_reused",
                422,
                Code::FailedPrecondition,
                "Idempotency key reused",
            ),
            ErrorCode::PayloadTooLarge => (
                "payload_too_large",
                413,
                Code::OutOfRange,
                "Payload too large",
            ),
            ErrorCode::UnsupportedMediaType => (
                "unsupported_media_type",
                415,
                Code::InvalidArgument,
                "Unsupported media type",
            ),
            ErrorCode::MethodNotAllowed => (
                "method_not_allowed",
                405,
                Code::Unimplemented,
                "Method not allowed",
            ),
            ErrorCode::RateLimited => (
                "rate_limited",
                429,
                Code::ResourceExhausted,
                "Too many requests",
            ),
            ErrorCode::Unavailable => {
                ("unavailable", 503, Code::Unavailable, "Service unavailable")
            }
            ErrorCode::Internal => ("internal", 500, Code::Internal, "Internal error"),
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// An error a service answers with: a stable code and a message safe to show.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ServiceError {
    pub code: ErrorCode,
    pub message: String,
    /// For `rate_limited`: seconds until a retry may succeed.
    pub retry_after_seconds: Option<u64>,
}

impl ServiceError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ServiceError {
            code,
            message: message.into(),
            retry_after_seconds: None,
        }
    }

    pub fn rate_limited(message: impl Into<String>, retry_after_seconds: u64) -> Self {
        ServiceError {
            code: ErrorCode::RateLimited,
            message: message.into(),
            retry_after_seconds: Some(retry_after_seconds.max(1)),
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidArgument, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Forbidden, message)
    }

    pub fn unauthenticated(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unauthenticated, message)
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Conflict, message)
    }

    /// An internal failure. The cause is logged here, with the current span's
    /// context; the client sees only the opaque title.
    pub fn internal(cause: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        Self::new(ErrorCode::Internal, ErrorCode::Internal.title())
    }

    /// A dependency could not be reached. Logged, opaque to the client.
    pub fn unavailable(cause: &dyn std::fmt::Display) -> Self {
        tracing::warn!(error = %cause, "dependency unavailable");
        Self::new(ErrorCode::Unavailable, ErrorCode::Unavailable.title())
    }
}

impl From<ServiceError> for Status {
    fn from(error: ServiceError) -> Status {
        let message = if error.code.is_server_error() {
            error.code.title().to_owned()
        } else {
            error.message
        };
        let mut status = Status::new(error.code.grpc_code(), message);
        status.metadata_mut().insert(
            ERROR_CODE_METADATA,
            MetadataValue::from_static(error.code.as_str()),
        );
        if let Some(seconds) = error.retry_after_seconds {
            status
                .metadata_mut()
                .insert(RETRY_AFTER_METADATA, MetadataValue::from(seconds));
        }
        status
    }
}

/// Turns a status received from another service into an error this service can
/// answer with. Client errors keep their code and message; anything else becomes
/// `unavailable` so that a downstream's internals are never passed on.
pub fn from_downstream(status: &Status) -> ServiceError {
    let code = ErrorCode::of_status(status);
    if code.is_server_error() {
        ServiceError::unavailable(&format_args!(
            "downstream answered {:?}: {}",
            status.code(),
            status.message()
        ))
    } else {
        ServiceError {
            code,
            message: client_detail_of(status, code),
            retry_after_seconds: retry_after_of(status),
        }
    }
}

/// The message of a client-error status received from another service, safe to
/// pass on: only a status that one of the bank's services built (it carries the
/// error-code metadata) has a message meant for clients; any other status, e.g.
/// one raised by the transport, is told by its code's title.
pub fn client_detail_of(status: &Status, code: ErrorCode) -> String {
    if status.metadata().contains_key(ERROR_CODE_METADATA) {
        status.message().to_owned()
    } else {
        code.title().to_owned()
    }
}

/// The `retry-after` seconds a status carries, if any.
pub fn retry_after_of(status: &Status) -> Option<u64> {
    status
        .metadata()
        .get(RETRY_AFTER_METADATA)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse().ok())
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
    fn status_carries_the_code_in_metadata() {
        let status = Status::from(ServiceError::new(ErrorCode::InsufficientFunds, "short"));
        assert_eq!(status.code(), Code::FailedPrecondition);
        assert_eq!(ErrorCode::of_status(&status), ErrorCode::InsufficientFunds);
        assert_eq!(status.message(), "short");
    }

    #[test]
    fn server_errors_hide_their_message() {
        let status = Status::from(ServiceError::new(
            ErrorCode::Internal,
            "SELECT * FROM secrets",
        ));
        assert_eq!(status.message(), "Internal error");
    }

    #[test]
    fn downstream_internal_errors_become_unavailable() {
        let error = from_downstream(&Status::internal("stack trace at src/main.rs"));
        assert_eq!(error.code, ErrorCode::Unavailable);
        assert!(!error.message.contains("src/main.rs"));
    }

    #[test]
    fn only_the_banks_own_statuses_pass_their_message_on() {
        let ours: Status = ServiceError::invalid("amount must be positive").into();
        let error = from_downstream(&ours);
        assert_eq!(error.code, ErrorCode::InvalidArgument);
        assert_eq!(error.message, "amount must be positive");

        let transport = Status::invalid_argument("h2 frame at src/codec.rs rejected");
        let error = from_downstream(&transport);
        assert_eq!(error.code, ErrorCode::InvalidArgument);
        assert_eq!(error.message, ErrorCode::InvalidArgument.title());
    }

    #[test]
    fn http_statuses_match_the_contract() {
        let expected = [
            ("invalid_argument", 400),
            ("unauthenticated", 401),
            ("forbidden", 403),
            ("not_found", 404),
            ("conflict", 409),
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
