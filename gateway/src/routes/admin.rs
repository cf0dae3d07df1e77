//! Operator routes: deposits, withdrawals, freezes, reversals, ledger checks. The
//! gateway refuses non-operators up front (before reading headers or body), and
//! each service checks the role again.

use axum::{
    Json,
    extract::{Path, State},
    http::StatusCode,
};
use bank_proto::{account::v1 as account, ledger::v1 as ledger};
use serde::{Deserialize, Serialize};

use super::{TransferView, accounts::AccountView, forward, required};
use crate::{
    AppState,
    extract::{ApiJson, IdempotencyKey, Operator},
    problem::ApiError,
};

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MoneyMovementBody {
    #[schema(format = Uuid)]
    pub account_id: String,
    /// Positive amount in minor units.
    #[schema(minimum = 1)]
    #[serde(deserialize_with = "crate::extract::whole_number::required")]
    pub amount: i64,
    #[schema(pattern = "^[A-Z]{3}$", example = "EUR")]
    pub currency: String,
    /// External reference, e.g. the incoming wire's id.
    #[schema(min_length = 1, max_length = 140)]
    pub reference: String,
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReverseBody {
    #[schema(max_length = 140)]
    pub reason: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct VerifyView {
    pub ok: bool,
    pub accounts_checked: i64,
    pub entries_checked: i64,
    pub mismatches: Vec<MismatchView>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct MismatchView {
    pub account_id: String,
    pub kind: String,
    pub detail: String,
}

#[utoipa::path(post, path = "/v1/admin/deposits", tag = "admin", request_body = MoneyMovementBody,
    params(("Idempotency-Key" = String, Header, description = "Makes the request safe to retry; keys are scoped per user", min_length = 1, max_length = 128, pattern = "^[\\x21-\\x7E]{1,128}$")),
    responses((status = 201, body = TransferView), (status = 403, body = crate::problem::Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub async fn deposit(
    State(state): State<AppState>,
    Operator(auth): Operator,
    IdempotencyKey(idempotency_key): IdempotencyKey,
    ApiJson(body): ApiJson<MoneyMovementBody>,
) -> Result<(StatusCode, Json<TransferView>), ApiError> {
    let response = state
        .ledger
        .clone()
        .deposit(forward(
            &auth,
            ledger::DepositRequest {
                account_id: body.account_id,
                amount_minor: body.amount,
                currency: body.currency,
                reference: body.reference,
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

#[utoipa::path(post, path = "/v1/admin/withdrawals", tag = "admin", request_body = MoneyMovementBody,
    params(("Idempotency-Key" = String, Header, description = "Makes the request safe to retry; keys are scoped per user", min_length = 1, max_length = 128, pattern = "^[\\x21-\\x7E]{1,128}$")),
    responses((status = 201, body = TransferView), (status = 403, body = crate::problem::Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub async fn withdraw(
    State(state): State<AppState>,
    Operator(auth): Operator,
    IdempotencyKey(idempotency_key): IdempotencyKey,
    ApiJson(body): ApiJson<MoneyMovementBody>,
) -> Result<(StatusCode, Json<TransferView>), ApiError> {
    let response = state
        .ledger
        .clone()
        .withdraw(forward(
            &auth,
            ledger::WithdrawRequest {
                account_id: body.account_id,
                amount_minor: body.amount,
                currency: body.currency,
                reference: body.reference,
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

#[utoipa::path(post, path = "/v1/admin/accounts/{id}/freeze", tag = "admin", params(("id" = uuid::Uuid, Path)),
    responses((status = 200, body = AccountView), (status = 403, body = crate::problem::Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub async fn freeze(
    State(state): State<AppState>,
    Operator(auth): Operator,
    Path(id): Path<String>,
) -> Result<Json<AccountView>, ApiError> {
    let response = state
        .account
        .clone()
        .freeze_account(forward(
            &auth,
            account::FreezeAccountRequest { account_id: id },
        ))
        .await?
        .into_inner();
    Ok(Json(required(response.account)?.into()))
}

#[utoipa::path(post, path = "/v1/admin/accounts/{id}/unfreeze", tag = "admin", params(("id" = uuid::Uuid, Path)),
    responses((status = 200, body = AccountView), (status = 403, body = crate::problem::Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub async fn unfreeze(
    State(state): State<AppState>,
    Operator(auth): Operator,
    Path(id): Path<String>,
) -> Result<Json<AccountView>, ApiError> {
    let response = state
        .account
        .clone()
        .unfreeze_account(forward(
            &auth,
            account::UnfreezeAccountRequest { account_id: id },
        ))
        .await?
        .into_inner();
    Ok(Json(required(response.account)?.into()))
}

#[utoipa::path(post, path = "/v1/admin/transfers/{id}/reverse", tag = "admin", params(("id" = uuid::Uuid, Path), ("Idempotency-Key" = String, Header, description = "Makes the request safe to retry; keys are scoped per user", min_length = 1, max_length = 128, pattern = "^[\\x21-\\x7E]{1,128}$")),
    request_body(content = Option<ReverseBody>, description = "Optional reason"),
    responses((status = 201, body = TransferView), (status = 409, body = crate::problem::Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub async fn reverse(
    State(state): State<AppState>,
    Operator(auth): Operator,
    IdempotencyKey(idempotency_key): IdempotencyKey,
    Path(id): Path<String>,
    body: Option<ApiJson<ReverseBody>>,
) -> Result<(StatusCode, Json<TransferView>), ApiError> {
    let body = body.map(|ApiJson(body)| body).unwrap_or_default();
    let response = state
        .ledger
        .clone()
        .reverse_transfer(forward(
            &auth,
            ledger::ReverseTransferRequest {
                transfer_id: id,
                reason: body.reason.unwrap_or_default(),
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

#[utoipa::path(get, path = "/v1/admin/ledger/verify", tag = "admin",
    responses((status = 200, body = VerifyView), (status = 403, body = crate::problem::Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub async fn verify(
    State(state): State<AppState>,
    Operator(auth): Operator,
) -> Result<Json<VerifyView>, ApiError> {
    let response = state
        .ledger
        .clone()
        .verify_ledger(forward(&auth, ledger::VerifyLedgerRequest {}))
        .await?
        .into_inner();
    Ok(Json(VerifyView {
        ok: response.ok,
        accounts_checked: response.accounts_checked,
        entries_checked: response.entries_checked,
        mismatches: response
            .mismatches
            .into_iter()
            .map(|mismatch| MismatchView {
                account_id: mismatch.account_id,
                kind: mismatch.kind,
                detail: mismatch.detail,
            })
            .collect(),
    }))
}
