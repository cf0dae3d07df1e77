//! Transfers between accounts.

use axum::{
    Json,
    extract::{Path, State},
    http::StatusCode,
};
use bank_proto::ledger::v1 as ledger;
use serde::{Deserialize, Serialize};

use super::{TransferView, forward, required};
use crate::{
    AppState,
    extract::{ApiJson, AuthUser, IdempotencyKey},
    problem::ApiError,
};

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TransferBody {
    #[schema(format = Uuid)]
    pub from_account_id: String,
    #[schema(format = Uuid)]
    pub to_account_id: String,
    /// Positive amount in minor units.
    #[schema(minimum = 1)]
    #[serde(deserialize_with = "crate::extract::whole_number::required")]
    pub amount: i64,
    #[schema(pattern = "^[A-Z]{3}$", example = "EUR")]
    pub currency: String,
    #[schema(max_length = 140)]
    pub description: Option<String>,
    /// Place a hold instead: reserve the amount until the hold is posted,
    /// voided or expires.
    pub pending: Option<bool>,
    /// For a hold: seconds until it expires (default 604800).
    #[schema(minimum = 1, maximum = 2592000)]
    #[serde(default, deserialize_with = "crate::extract::whole_number::optional")]
    pub timeout_seconds: Option<i64>,
}

/// What `POST /v1/transfers/{id}/post` may say.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PostHoldBody {
    /// How much of the hold to move (default all of it); the rest is released.
    #[schema(minimum = 1)]
    #[serde(default, deserialize_with = "crate::extract::whole_number::optional")]
    pub amount: Option<i64>,
}

/// What `POST /v1/transfers/{id}/void` may say: nothing.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VoidHoldBody {}

/// One transfer of a batch.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchItemBody {
    #[schema(format = Uuid)]
    pub from_account_id: String,
    #[schema(format = Uuid)]
    pub to_account_id: String,
    /// Positive amount in minor units.
    #[schema(minimum = 1)]
    #[serde(deserialize_with = "crate::extract::whole_number::required")]
    pub amount: i64,
    #[schema(pattern = "^[A-Z]{3}$", example = "EUR")]
    pub currency: String,
    #[schema(max_length = 140)]
    pub description: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchBody {
    /// 1 to 100 transfers, applied in this order as one atomic step.
    #[schema(min_items = 1, max_items = 100)]
    pub transfers: Vec<BatchItemBody>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct BatchView {
    /// The batch's transfers, in its order.
    pub transfers: Vec<TransferView>,
}

#[utoipa::path(post, path = "/v1/transfers", tag = "transfers", request_body = TransferBody,
    params(("Idempotency-Key" = String, Header, description = "Makes the request safe to retry; keys are scoped per user", min_length = 1, max_length = 128, pattern = "^[\\x21-\\x7E]{1,128}$")),
    responses((status = 201, body = TransferView), (status = 400, body = crate::problem::Problem, content_type = "application/problem+json"),
        (status = 404, body = crate::problem::Problem, content_type = "application/problem+json"), (status = 422, body = crate::problem::Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn create(
    State(state): State<AppState>,
    auth: AuthUser,
    IdempotencyKey(idempotency_key): IdempotencyKey,
    ApiJson(body): ApiJson<TransferBody>,
) -> Result<(StatusCode, Json<TransferView>), ApiError> {
    let response = state
        .ledger
        .clone()
        .create_transfer(forward(
            &auth,
            ledger::CreateTransferRequest {
                from_account_id: body.from_account_id,
                to_account_id: body.to_account_id,
                amount_minor: body.amount,
                currency: body.currency,
                description: body.description.unwrap_or_default(),
                idempotency_key,
                pending: body.pending.unwrap_or(false),
                timeout_seconds: match body.timeout_seconds {
                    // 0 asks the ledger for its default; say "at least 1" here.
                    Some(seconds) if seconds < 1 => {
                        return Err(ApiError::invalid(
                            "timeout_seconds must be between 1 and 2592000",
                        ));
                    }
                    Some(seconds) => seconds,
                    None => 0,
                },
            },
        ))
        .await?
        .into_inner();
    Ok((
        StatusCode::CREATED,
        Json(required(response.transfer)?.into()),
    ))
}

#[utoipa::path(post, path = "/v1/transfers/{id}/post", tag = "transfers", request_body(content = Option<PostHoldBody>),
    params(("id" = uuid::Uuid, Path), ("Idempotency-Key" = String, Header, description = "Makes the request safe to retry; keys are scoped per user", min_length = 1, max_length = 128, pattern = "^[\\x21-\\x7E]{1,128}$")),
    responses((status = 200, body = TransferView), (status = 400, body = crate::problem::Problem, content_type = "application/problem+json"),
        (status = 403, body = crate::problem::Problem, content_type = "application/problem+json"),
        (status = 404, body = crate::problem::Problem, content_type = "application/problem+json"),
        (status = 409, body = crate::problem::Problem, content_type = "application/problem+json"),
        (status = 422, body = crate::problem::Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn post_hold(
    State(state): State<AppState>,
    auth: AuthUser,
    Path(id): Path<String>,
    IdempotencyKey(idempotency_key): IdempotencyKey,
    body: Option<ApiJson<PostHoldBody>>,
) -> Result<Json<TransferView>, ApiError> {
    let body = body.map(|ApiJson(body)| body).unwrap_or_default();
    let amount_minor = match body.amount {
        Some(amount) if amount < 1 => {
            return Err(ApiError::invalid("amount must be a positive integer"));
        }
        Some(amount) => amount,
        None => 0,
    };
    let response = state
        .ledger
        .clone()
        .post_pending_transfer(forward(
            &auth,
            ledger::PostPendingTransferRequest {
                transfer_id: id,
                amount_minor,
                idempotency_key,
            },
        ))
        .await?
        .into_inner();
    Ok(Json(required(response.transfer)?.into()))
}

#[utoipa::path(post, path = "/v1/transfers/{id}/void", tag = "transfers", request_body(content = Option<VoidHoldBody>),
    params(("id" = uuid::Uuid, Path), ("Idempotency-Key" = String, Header, description = "Makes the request safe to retry; keys are scoped per user", min_length = 1, max_length = 128, pattern = "^[\\x21-\\x7E]{1,128}$")),
    responses((status = 200, body = TransferView), (status = 400, body = crate::problem::Problem, content_type = "application/problem+json"),
        (status = 403, body = crate::problem::Problem, content_type = "application/problem+json"),
        (status = 404, body = crate::problem::Problem, content_type = "application/problem+json"),
        (status = 409, body = crate::problem::Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn void_hold(
    State(state): State<AppState>,
    auth: AuthUser,
    Path(id): Path<String>,
    IdempotencyKey(idempotency_key): IdempotencyKey,
    _body: Option<ApiJson<VoidHoldBody>>,
) -> Result<Json<TransferView>, ApiError> {
    let response = state
        .ledger
        .clone()
        .void_pending_transfer(forward(
            &auth,
            ledger::VoidPendingTransferRequest {
                transfer_id: id,
                idempotency_key,
            },
        ))
        .await?
        .into_inner();
    Ok(Json(required(response.transfer)?.into()))
}

#[utoipa::path(post, path = "/v1/transfer-batches", tag = "transfers", request_body = BatchBody,
    params(("Idempotency-Key" = String, Header, description = "Makes the request safe to retry; the batch is idempotent as a whole; keys are scoped per user", min_length = 1, max_length = 128, pattern = "^[\\x21-\\x7E]{1,128}$")),
    responses((status = 201, body = BatchView),
        (status = 400, body = crate::problem::Problem, content_type = "application/problem+json", description = "A malformed item: `errors` lists every one"),
        (status = 404, body = crate::problem::Problem, content_type = "application/problem+json", description = "An item's account was not found: `errors` lists every refused item"),
        (status = 409, body = crate::problem::Problem, content_type = "application/problem+json"),
        (status = 422, body = crate::problem::Problem, content_type = "application/problem+json", description = "A refused item: nothing moved, `errors` lists every refused item")),
    security(("bearer" = [])))]
pub async fn create_batch(
    State(state): State<AppState>,
    auth: AuthUser,
    IdempotencyKey(idempotency_key): IdempotencyKey,
    ApiJson(body): ApiJson<BatchBody>,
) -> Result<(StatusCode, Json<BatchView>), ApiError> {
    if body.transfers.is_empty() || body.transfers.len() > 100 {
        return Err(ApiError::invalid("transfers must hold 1 to 100 items"));
    }
    let response = state
        .ledger
        .clone()
        .create_transfer_batch(forward(
            &auth,
            ledger::CreateTransferBatchRequest {
                transfers: body
                    .transfers
                    .into_iter()
                    .map(|item| ledger::TransferBatchItem {
                        from_account_id: item.from_account_id,
                        to_account_id: item.to_account_id,
                        amount_minor: item.amount,
                        currency: item.currency,
                        description: item.description.unwrap_or_default(),
                    })
                    .collect(),
                idempotency_key,
            },
        ))
        .await?
        .into_inner();
    Ok((
        StatusCode::CREATED,
        Json(BatchView {
            transfers: response.transfers.into_iter().map(Into::into).collect(),
        }),
    ))
}

#[utoipa::path(get, path = "/v1/transfers/{id}", tag = "transfers", params(("id" = uuid::Uuid, Path)),
    responses((status = 200, body = TransferView), (status = 404, body = crate::problem::Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub async fn get(
    State(state): State<AppState>,
    auth: AuthUser,
    Path(id): Path<String>,
) -> Result<Json<TransferView>, ApiError> {
    let response = state
        .ledger
        .clone()
        .get_transfer(forward(
            &auth,
            ledger::GetTransferRequest { transfer_id: id },
        ))
        .await?
        .into_inner();
    Ok(Json(required(response.transfer)?.into()))
}
