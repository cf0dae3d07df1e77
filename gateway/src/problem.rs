//! Problem responses (RFC 9457, `application/problem+json`) built from the kit's
//! one table of error codes. Server-side failures never carry their cause: it is
//! logged with the request's trace id instead.

use axum::{
    Json,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use bank_kit::{ErrorCode, ServiceError};
use serde::Serialize;

tokio::task_local! {
    /// The request's id (`x-request-id`), passed on to the services.
    pub static REQUEST_ID: String;
}

tokio::task_local! {
    /// When the gateway stops waiting for the request being handled.
    pub static DEADLINE: tokio::time::Instant;
}

/// What is left of the current request's deadline, if it has one.
pub fn remaining_time() -> Option<std::time::Duration> {
    DEADLINE
        .try_with(|ends_at| ends_at.saturating_duration_since(tokio::time::Instant::now()))
        .ok()
}

/// The trace id of the current request (see `bank_kit::telemetry::TRACE_ID`),
/// or empty outside one.
pub fn current_trace_id() -> String {
    bank_kit::telemetry::TRACE_ID
        .try_with(Clone::clone)
        .unwrap_or_default()
}

/// The id of the current request, or empty outside one.
pub fn current_request_id() -> String {
    REQUEST_ID.try_with(Clone::clone).unwrap_or_default()
}

/// The body of every error response.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Problem {
    /// A URI naming the problem type.
    #[serde(rename = "type")]
    pub problem_type: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// Stable snake_case error code, e.g. `insufficient_funds`.
    pub code: String,
    /// The request's W3C trace id (32 hex digits), as its OpenTelemetry spans
    /// and the logs carry it.
    pub trace_id: String,
    /// For a refused transfer batch: every item that failed, in the batch's
    /// order. The problem's own `code` is the first one's.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    #[schema(nullable = false)]
    pub errors: Vec<ProblemItem>,
}

/// Why one item of a request was refused.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ProblemItem {
    /// The item's position, from 0.
    pub index: u32,
    /// Stable snake_case error code of the item.
    pub code: String,
    pub detail: String,
}

/// An error the gateway answers with.
#[derive(Debug)]
pub struct ApiError {
    code: ErrorCode,
    detail: String,
    retry_after_seconds: Option<u64>,
    items: Vec<ProblemItem>,
}

impl ApiError {
    pub fn new(code: ErrorCode, detail: impl Into<String>) -> ApiError {
        ApiError {
            code,
            detail: detail.into(),
            retry_after_seconds: None,
            items: Vec::new(),
        }
    }

    pub fn invalid(detail: impl Into<String>) -> ApiError {
        Self::new(ErrorCode::InvalidArgument, detail)
    }

    pub fn rate_limited(retry_after_seconds: u64) -> ApiError {
        ApiError {
            code: ErrorCode::RateLimited,
            detail: "too many requests, retry later".into(),
            retry_after_seconds: Some(retry_after_seconds.max(1)),
            items: Vec::new(),
        }
    }

    pub fn code(&self) -> ErrorCode {
        self.code
    }
}

impl From<ServiceError> for ApiError {
    fn from(error: ServiceError) -> ApiError {
        ApiError {
            code: error.code,
            detail: error.message,
            retry_after_seconds: error.retry_after_seconds,
            items: Vec::new(),
        }
    }
}

/// A status from a downstream service. Client errors keep their message, which
/// services write for clients; anything else is logged and answered opaquely.
impl From<tonic::Status> for ApiError {
    fn from(status: tonic::Status) -> ApiError {
        let code = bank_kit::error::code_of_status(&status);
        if code.is_server_error() {
            tracing::error!(grpc_code = ?status.code(), message = status.message(), "downstream failure");
            ApiError::new(code, code.title())
        } else {
            ApiError {
                code,
                detail: bank_kit::error::client_detail_of(&status, code),
                retry_after_seconds: bank_kit::error::retry_after_of(&status),
                items: batch_items(&status),
            }
        }
    }
}

/// The refused items a refused batch's status carries, with only codes of the
/// bank's table passed on.
fn batch_items(status: &tonic::Status) -> Vec<ProblemItem> {
    let Some(errors) = bank_proto::ledger::v1::batch_errors_of(status) else {
        return Vec::new();
    };
    errors
        .errors
        .into_iter()
        .filter_map(|error| {
            let code = ErrorCode::parse(&error.code).filter(|code| !code.is_server_error())?;
            Some(ProblemItem {
                index: u32::try_from(error.index).ok()?,
                code: code.as_str().to_owned(),
                detail: error.detail,
            })
        })
        .collect()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let detail = if self.code.is_server_error() {
            self.code.title().to_owned()
        } else {
            self.detail
        };
        let problem = Problem {
            problem_type: format!("https://errors.bank.example/{}", self.code.as_str()),
            title: self.code.title().to_owned(),
            status: status.as_u16(),
            detail,
            code: self.code.as_str().to_owned(),
            trace_id: current_trace_id(),
            errors: if self.code.is_server_error() {
                Vec::new()
            } else {
                self.items
            },
        };
        let mut response = (status, Json(problem)).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        // A 429 always says when to come back; a second when nobody said.
        let retry_after = match (self.code, self.retry_after_seconds) {
            (ErrorCode::RateLimited, None) => Some(1),
            (_, seconds) => seconds,
        };
        if let Some(seconds) = retry_after
            && let Ok(value) = HeaderValue::from_str(&seconds.to_string())
        {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn retry_after(error: ApiError) -> Option<String> {
        error
            .into_response()
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned)
    }

    #[test]
    fn every_rate_limited_answer_says_when_to_come_back() {
        assert_eq!(
            retry_after(ApiError::new(ErrorCode::RateLimited, "slow down")),
            Some("1".into())
        );
        assert_eq!(retry_after(ApiError::rate_limited(7)), Some("7".into()));
        assert_eq!(retry_after(ApiError::invalid("bad")), None);
    }

    #[test]
    fn downstream_details_pass_only_from_the_banks_own_statuses() {
        let ours: tonic::Status =
            bank_kit::ServiceError::new(ErrorCode::NotFound, "account not found").into();
        assert_eq!(ApiError::from(ours).detail, "account not found");
        let foreign = tonic::Status::not_found("/grpc.Foo/Bar in crate::router");
        let error = ApiError::from(foreign);
        assert_eq!(error.code, ErrorCode::NotFound);
        assert_eq!(error.detail, ErrorCode::NotFound.title());
    }

    #[tokio::test]
    async fn server_errors_hide_their_detail() {
        let response = ApiError::new(ErrorCode::Internal, "table users is locked").into_response();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(
            response.headers().get(header::CONTENT_TYPE),
            Some(&HeaderValue::from_static("application/problem+json"))
        );
        let body = axum::body::to_bytes(response.into_body(), 4096)
            .await
            .unwrap_or_default();
        let body = String::from_utf8_lossy(&body);
        assert!(body.contains("\"code\":\"internal\""), "{body}");
        assert!(!body.contains("users"), "{body}");
    }
}
