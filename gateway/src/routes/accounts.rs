//! The caller's accounts: open, list, fetch, balance, history, close.

use axum::{
    Json,
    extract::{Path, State},
    http::StatusCode,
};
use bank_proto::{account::v1 as pb, ledger::v1 as ledger};
use serde::{Deserialize, Serialize};

use super::{forward, required};
use crate::{
    AppState,
    extract::{ApiJson, ApiQuery, AuthUser, IdempotencyKey},
    problem::ApiError,
};

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OpenAccountBody {
    /// ISO 4217 code of a supported currency, e.g. `EUR`.
    #[schema(schema_with = supported_currency)]
    pub currency: String,
    /// Up to 64 characters, no control characters.
    #[schema(max_length = 64, pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*$")]
    pub nickname: Option<String>,
}

/// The currencies accounts can be opened in, as the document lists them.
fn supported_currency() -> utoipa::openapi::Object {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .enum_values(Some(bank_kit::money::SUPPORTED_CURRENCIES.iter().copied()))
        .examples(["EUR"])
        .build()
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AccountView {
    pub id: String,
    pub number: String,
    pub owner_id: String,
    pub currency: String,
    pub nickname: String,
    /// `active`, `frozen` or `closed`.
    pub status: String,
    pub created_at: String,
}

impl From<pb::Account> for AccountView {
    fn from(account: pb::Account) -> AccountView {
        let status = match pb::AccountStatus::try_from(account.status) {
            Ok(pb::AccountStatus::Active) => "active",
            Ok(pb::AccountStatus::Frozen) => "frozen",
            Ok(pb::AccountStatus::Closed) => "closed",
            Ok(pb::AccountStatus::Unspecified) | Err(_) => "unknown",
        };
        AccountView {
            id: account.account_id,
            number: account.number,
            owner_id: account.owner_id,
            currency: account.currency,
            nickname: account.nickname,
            status: status.to_owned(),
            created_at: account.created_at,
        }
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AccountsView {
    pub accounts: Vec<AccountView>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct BalanceView {
    pub account_id: String,
    pub currency: String,
    /// Posted balance in minor units.
    pub balance: i64,
    /// Spendable now, in minor units.
    pub available: i64,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// 1 to 100, default 50.
    #[param(minimum = 1, maximum = 100)]
    pub page_size: Option<i32>,
    /// From the previous page's `next_page_token`.
    pub page_token: Option<String>,
}

impl PageQuery {
    /// The page size to ask for: 0 lets the service choose its default.
    fn page_size(&self) -> Result<i32, ApiError> {
        match self.page_size {
            None => Ok(0),
            Some(size) if (1..=100).contains(&size) => Ok(size),
            Some(_) => Err(ApiError::invalid("page_size must be between 1 and 100")),
        }
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TransactionView {
    pub transfer_id: String,
    /// Signed from this account's side: negative when money left it.
    pub amount: i64,
    pub balance_after: i64,
    pub counterparty_account_id: String,
    pub description: String,
    pub created_at: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TransactionsView {
    pub transactions: Vec<TransactionView>,
    /// Empty when there are no older transactions.
    pub next_page_token: String,
}

#[utoipa::path(post, path = "/v1/accounts", tag = "accounts", request_body = OpenAccountBody,
    params(("Idempotency-Key" = Option<String>, Header, description = "Optional: a retry with the same key and body returns the account the first request opened instead of opening another; keys are scoped per user", min_length = 1, max_length = 128, pattern = "^[\\x21-\\x7E]{1,128}$")),
    responses((status = 201, body = AccountView), (status = 400, body = crate::problem::Problem, content_type = "application/problem+json"),
        (status = 422, body = crate::problem::Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub async fn open(
    State(state): State<AppState>,
    auth: AuthUser,
    idempotency_key: Option<IdempotencyKey>,
    ApiJson(body): ApiJson<OpenAccountBody>,
) -> Result<(StatusCode, Json<AccountView>), ApiError> {
    let response = state
        .account
        .clone()
        .open_account(forward(
            &auth,
            pb::OpenAccountRequest {
                currency: body.currency,
                nickname: body.nickname.unwrap_or_default(),
                idempotency_key: idempotency_key.map(|key| key.0).unwrap_or_default(),
            },
        ))
        .await?
        .into_inner();
    Ok((
        StatusCode::CREATED,
        Json(required(response.account)?.into()),
    ))
}

#[utoipa::path(get, path = "/v1/accounts", tag = "accounts",
    responses((status = 200, body = AccountsView)), security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    auth: AuthUser,
) -> Result<Json<AccountsView>, ApiError> {
    let mut accounts = Vec::new();
    let mut page_token = String::new();
    // A customer has few accounts: the REST list returns all of them.
    loop {
        let response = state
            .account
            .clone()
            .list_accounts(forward(
                &auth,
                pb::ListAccountsRequest {
                    page_size: 100,
                    page_token: page_token.clone(),
                    owner_id: String::new(),
                },
            ))
            .await?
            .into_inner();
        accounts.extend(response.accounts.into_iter().map(AccountView::from));
        if response.next_page_token.is_empty() || accounts.len() >= 1000 {
            break;
        }
        page_token = response.next_page_token;
    }
    Ok(Json(AccountsView { accounts }))
}

#[utoipa::path(get, path = "/v1/accounts/{id}", tag = "accounts", params(("id" = uuid::Uuid, Path)),
    responses((status = 200, body = AccountView), (status = 404, body = crate::problem::Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub async fn get(
    State(state): State<AppState>,
    auth: AuthUser,
    Path(id): Path<String>,
) -> Result<Json<AccountView>, ApiError> {
    let response = state
        .account
        .clone()
        .get_account(forward(&auth, pb::GetAccountRequest { account_id: id }))
        .await?
        .into_inner();
    Ok(Json(required(response.account)?.into()))
}

#[utoipa::path(get, path = "/v1/accounts/{id}/balance", tag = "accounts", params(("id" = uuid::Uuid, Path)),
    responses((status = 200, body = BalanceView), (status = 404, body = crate::problem::Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub async fn balance(
    State(state): State<AppState>,
    auth: AuthUser,
    Path(id): Path<String>,
) -> Result<Json<BalanceView>, ApiError> {
    let response = state
        .ledger
        .clone()
        .get_balance(forward(&auth, ledger::GetBalanceRequest { account_id: id }))
        .await?
        .into_inner();
    Ok(Json(BalanceView {
        account_id: response.account_id,
        currency: response.currency,
        balance: response.balance_minor,
        available: response.available_minor,
    }))
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct HoldsView {
    /// The account's pending outgoing holds, newest first.
    pub holds: Vec<super::TransferView>,
    /// Empty when there are no older holds.
    pub next_page_token: String,
}

#[utoipa::path(get, path = "/v1/accounts/{id}/holds", tag = "accounts", params(("id" = uuid::Uuid, Path), PageQuery),
    responses((status = 200, body = HoldsView), (status = 400, body = crate::problem::Problem, content_type = "application/problem+json"),
        (status = 404, body = crate::problem::Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub async fn holds(
    State(state): State<AppState>,
    auth: AuthUser,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> Result<Json<HoldsView>, ApiError> {
    let response = state
        .ledger
        .clone()
        .list_holds(forward(
            &auth,
            ledger::ListHoldsRequest {
                account_id: id,
                page_size: query.page_size()?,
                page_token: query.page_token.unwrap_or_default(),
            },
        ))
        .await?
        .into_inner();
    Ok(Json(HoldsView {
        holds: response.holds.into_iter().map(Into::into).collect(),
        next_page_token: response.next_page_token,
    }))
}

#[utoipa::path(get, path = "/v1/accounts/{id}/transactions", tag = "accounts", params(("id" = uuid::Uuid, Path), PageQuery),
    responses((status = 200, body = TransactionsView), (status = 404, body = crate::problem::Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub async fn transactions(
    State(state): State<AppState>,
    auth: AuthUser,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> Result<Json<TransactionsView>, ApiError> {
    let response = state
        .ledger
        .clone()
        .list_account_entries(forward(
            &auth,
            ledger::ListAccountEntriesRequest {
                account_id: id,
                page_size: query.page_size()?,
                page_token: query.page_token.unwrap_or_default(),
            },
        ))
        .await?
        .into_inner();
    Ok(Json(TransactionsView {
        transactions: response
            .entries
            .into_iter()
            .map(|entry| TransactionView {
                transfer_id: entry.transfer_id,
                amount: entry.amount_minor,
                balance_after: entry.balance_after_minor,
                counterparty_account_id: entry.counterparty_account_id,
                description: entry.description,
                created_at: entry.created_at,
            })
            .collect(),
        next_page_token: response.next_page_token,
    }))
}

#[utoipa::path(post, path = "/v1/accounts/{id}/close", tag = "accounts", params(("id" = uuid::Uuid, Path)),
    responses((status = 200, body = AccountView), (status = 409, body = crate::problem::Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub async fn close(
    State(state): State<AppState>,
    auth: AuthUser,
    Path(id): Path<String>,
) -> Result<Json<AccountView>, ApiError> {
    let response = state
        .account
        .clone()
        .close_account(forward(&auth, pb::CloseAccountRequest { account_id: id }))
        .await?
        .into_inner();
    Ok(Json(required(response.account)?.into()))
}
