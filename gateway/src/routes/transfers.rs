//! Transfers between accounts.

use axum::{
    Json,
    extract::{Path, State},
    http::StatusCode,
};
use bank_proto::ledger::v1 as ledger;
use serde::Deserialize;

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
    pub amount: i64,
    #[schema(pattern = "^[A-Z]{3}$", example = "EUR")]
    pub currency: String,
    #[schema(max_length = 140)]
    pub description: Option<String>,
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
            },
        ))
        .await?
        .into_inner();
    Ok((
        StatusCode::CREATED,
        Json(required(response.transfer)?.into()),
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
