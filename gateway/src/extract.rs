//! Request extractors whose failures are problem responses with the contract's
//! codes: 400 for malformed input, 413 for bodies over the limit, 415 for bodies
//! that are not JSON, 401 for a missing or invalid token.

use axum::{
    extract::{FromRequest, FromRequestParts, Query, Request, rejection::JsonRejection},
    http::{HeaderMap, header, request::Parts},
};
use bank_kit::{ErrorCode, auth::Principal};
use serde::de::DeserializeOwned;

use crate::{AppState, problem::ApiError};

/// A JSON body.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(request, state).await {
            Ok(axum::Json(value)) => Ok(ApiJson(value)),
            Err(rejection) => Err(json_rejection(&rejection)),
        }
    }
}

fn json_rejection(rejection: &JsonRejection) -> ApiError {
    match rejection {
        JsonRejection::MissingJsonContentType(_) => ApiError::new(
            ErrorCode::UnsupportedMediaType,
            "the body must be JSON with Content-Type: application/json",
        ),
        JsonRejection::JsonDataError(error) => {
            ApiError::invalid(format!("invalid JSON body: {}", error.body_text()))
        }
        JsonRejection::JsonSyntaxError(_) => ApiError::invalid("the body is not valid JSON"),
        JsonRejection::BytesRejection(error)
            if error.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE =>
        {
            ApiError::new(ErrorCode::PayloadTooLarge, "the body is larger than 64 KiB")
        }
        _ => ApiError::invalid("the body could not be read"),
    }
}

/// Query parameters.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(value)| ApiQuery(value))
            .map_err(|rejection| {
                ApiError::invalid(format!("invalid query: {}", rejection.body_text()))
            })
    }
}

/// An authenticated end user: the token was verified here, and is forwarded so
/// that each service verifies it again.
pub struct AuthUser {
    pub principal: Principal,
    pub user_id: String,
    pub bearer: String,
}

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let token = bearer(&parts.headers)
            .ok_or_else(|| ApiError::new(ErrorCode::Unauthenticated, "missing bearer token"))?;
        let principal = state.verifier.verify(token).await?;
        let user_id = principal
            .user_id()
            .ok_or_else(|| ApiError::new(ErrorCode::Forbidden, "this API is for users"))?
            .to_owned();
        Ok(AuthUser {
            bearer: token.to_owned(),
            principal,
            user_id,
        })
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The `Idempotency-Key` header, required on money-moving requests.
pub struct IdempotencyKey(pub String);

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let value = parts
            .headers
            .get("idempotency-key")
            .ok_or_else(|| ApiError::invalid("the Idempotency-Key header is required"))?;
        let key = value
            .to_str()
            .map_err(|_| ApiError::invalid("the Idempotency-Key header must be visible ASCII"))?
            .trim();
        if key.is_empty() || key.len() > 128 {
            return Err(ApiError::invalid(
                "the Idempotency-Key header must be 1 to 128 characters",
            ));
        }
        Ok(IdempotencyKey(key.to_owned()))
    }
}
