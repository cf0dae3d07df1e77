//! The one table of stable error codes, and their mapping to `tonic::Status` and to
//! HTTP. Services attach the code to the status as metadata so that the gateway can
//! tell `insufficient_funds` from `account_frozen` although both are
//! `FAILED_PRECONDITION` on the wire.

use tonic::{Code, Status, metadata::MetadataValue};

/// Metadata key carrying the stable snake_case error code on every error status.
pub const ERROR_CODE_METADATA: &str = "bank-error-code";

/// Metadata key telling a rate-limited caller how many seconds to wait.
pub const RETRY_AFTER_METADATA: &str = "retry-after";

pub use bank_domain::{DomainError, ErrorCode, error::GrpcCode};

/// The gRPC status code that carries `code`.
pub fn grpc_code(code: ErrorCode) -> Code {
    Code::from_i32(code.grpc() as i32)
}

/// The code for a status that carries none: one no service of the bank built, so
/// it was raised by tonic, by the HTTP/2 transport or by a proxy between the two.
/// A transport failure (a reset stream, a GOAWAY, a refused or dropped
/// connection, all of which tonic reports as `UNKNOWN`, `INTERNAL`, `CANCELLED`
/// or `RESOURCE_EXHAUSTED`) says the service could not be reached, not that it
/// failed: `unavailable`, never `internal`.
pub fn code_from_grpc(code: Code) -> ErrorCode {
    match code {
        Code::InvalidArgument | Code::OutOfRange => ErrorCode::InvalidArgument,
        Code::Unauthenticated => ErrorCode::Unauthenticated,
        Code::PermissionDenied => ErrorCode::Forbidden,
        Code::NotFound => ErrorCode::NotFound,
        Code::AlreadyExists | Code::Aborted | Code::FailedPrecondition => ErrorCode::Conflict,
        Code::Unknown
        | Code::Internal
        | Code::ResourceExhausted
        | Code::Unavailable
        | Code::DeadlineExceeded
        | Code::Cancelled => ErrorCode::Unavailable,
        Code::Ok | Code::Unimplemented | Code::DataLoss => ErrorCode::Internal,
    }
}

/// The code a status carries: its metadata if present and known, else derived
/// from the gRPC code.
pub fn code_of_status(status: &Status) -> ErrorCode {
    status
        .metadata()
        .get(ERROR_CODE_METADATA)
        .and_then(|value| value.to_str().ok())
        .and_then(ErrorCode::parse)
        .unwrap_or_else(|| code_from_grpc(status.code()))
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

/// Every domain error becomes the service error of its code. A server error's
/// message is logged, never shown.
impl<E: DomainError> From<E> for ServiceError {
    fn from(error: E) -> ServiceError {
        let code = error.code();
        if code.is_server_error() {
            tracing::error!(error = %error, code = code.as_str(), "internal error");
            ServiceError::new(code, code.title())
        } else {
            let mut service_error = ServiceError::new(code, error.to_string());
            service_error.retry_after_seconds =
                error.retry_after_seconds().map(|seconds| seconds.max(1));
            service_error
        }
    }
}

impl From<ServiceError> for Status {
    fn from(error: ServiceError) -> Status {
        let message = if error.code.is_server_error() {
            error.code.title().to_owned()
        } else {
            error.message
        };
        let mut status = Status::new(grpc_code(error.code), message);
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
    let code = code_of_status(status);
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
    fn status_carries_the_code_in_metadata() {
        let status = Status::from(ServiceError::new(ErrorCode::InsufficientFunds, "short"));
        assert_eq!(status.code(), Code::FailedPrecondition);
        assert_eq!(code_of_status(&status), ErrorCode::InsufficientFunds);
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
    fn transport_failures_are_unavailable_not_internal() {
        // What tonic reports for a reset stream, a GOAWAY (ENHANCE_YOUR_CALM), a
        // dropped connection and a refused one.
        for status in [
            Status::internal("h2 protocol error: stream error received"),
            Status::resource_exhausted("h2 protocol error: connection error received"),
            Status::unknown("transport error"),
            Status::unavailable("tcp connect error"),
            Status::cancelled("operation was canceled"),
        ] {
            assert_eq!(
                code_of_status(&status),
                ErrorCode::Unavailable,
                "{status:?}"
            );
        }
        // A service's own internal failure stays internal.
        let ours: Status = ServiceError::new(ErrorCode::Internal, "boom").into();
        assert_eq!(code_of_status(&ours), ErrorCode::Internal);
    }

    #[test]
    fn grpc_codes_match_the_contract() {
        assert_eq!(grpc_code(ErrorCode::InvalidArgument), Code::InvalidArgument);
        assert_eq!(grpc_code(ErrorCode::Conflict), Code::AlreadyExists);
        assert_eq!(
            grpc_code(ErrorCode::InsufficientFunds),
            Code::FailedPrecondition
        );
        assert_eq!(grpc_code(ErrorCode::RateLimited), Code::ResourceExhausted);
        assert_eq!(grpc_code(ErrorCode::Unavailable), Code::Unavailable);
        for code in ErrorCode::ALL {
            let status = Status::from(ServiceError::new(code, "detail"));
            assert_eq!(code_of_status(&status), code);
            assert_ne!(status.code(), Code::Unknown, "{code}");
        }
    }
}
