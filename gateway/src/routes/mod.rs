//! REST handlers. Each parses the request, makes one call to a service over gRPC
//! with the caller's token, and maps the answer to the contract's JSON.

pub mod accounts;
pub mod admin;
pub mod auth;
pub mod ops;
pub mod transfers;

use bank_proto::ledger::v1 as ledger;
use serde::Serialize;

use crate::{extract::AuthUser, problem::current_request_id};

/// Wraps `message` in a gRPC request that carries the caller's token and the
/// request id.
pub fn forward<T>(auth: &AuthUser, message: T) -> tonic::Request<T> {
    let mut request = anonymous(message);
    if let Ok(value) = format!("Bearer {}", auth.bearer).parse() {
        request.metadata_mut().insert("authorization", value);
    }
    request
}

/// A gRPC request for a method anyone may call. It carries what is left of the
/// REST request's deadline as its own (`grpc-timeout`).
pub fn anonymous<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(remaining) = crate::problem::remaining_time() {
        request.set_timeout(remaining);
    }
    if let Ok(value) = current_request_id().parse() {
        request.metadata_mut().insert("x-request-id", value);
    }
    bank_kit::telemetry::inject_trace_context(request.metadata_mut());
    request
}

/// A transfer as the REST API shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TransferView {
    pub id: String,
    pub from_account_id: String,
    pub to_account_id: String,
    /// Amount in minor units: for a hold, the held amount while pending, the
    /// posted amount once posted, 0 once voided or expired.
    pub amount: i64,
    pub currency: String,
    /// `posted` once the money has moved; a hold is `pending` until it is
    /// `posted`, `voided` or `expired`.
    #[schema(pattern = "^(posted|pending|voided|expired)$")]
    pub status: String,
    pub description: String,
    pub created_at: String,
    /// For a hold: what was reserved. Null for transfers that never were holds.
    pub held_amount: Option<i64>,
    /// For a hold: when it expires unless posted or voided.
    pub expires_at: Option<String>,
    /// For a hold: when it was posted, voided or expired.
    pub resolved_at: Option<String>,
}

impl From<ledger::Transfer> for TransferView {
    fn from(transfer: ledger::Transfer) -> TransferView {
        let status = match ledger::TransferStatus::try_from(transfer.status) {
            Ok(ledger::TransferStatus::Posted) => "posted",
            Ok(ledger::TransferStatus::Pending) => "pending",
            Ok(ledger::TransferStatus::Voided) => "voided",
            Ok(ledger::TransferStatus::Expired) => "expired",
            Ok(ledger::TransferStatus::Unspecified) | Err(_) => "unknown",
        };
        let is_hold = transfer.held_amount_minor.is_some();
        let present = |value: String| (is_hold && !value.is_empty()).then_some(value);
        TransferView {
            id: transfer.transfer_id,
            from_account_id: transfer.from_account_id,
            to_account_id: transfer.to_account_id,
            amount: transfer.amount_minor,
            currency: transfer.currency,
            status: status.to_owned(),
            description: transfer.description,
            created_at: transfer.created_at,
            held_amount: transfer.held_amount_minor,
            expires_at: present(transfer.expires_at),
            resolved_at: present(transfer.resolved_at),
        }
    }
}

/// The transfer in a response, or an internal error if a service left it out.
pub fn required<T>(value: Option<T>) -> Result<T, crate::problem::ApiError> {
    value.ok_or_else(|| {
        tracing::error!("a service answered without the expected message");
        crate::problem::ApiError::new(bank_kit::ErrorCode::Internal, "missing message")
    })
}
