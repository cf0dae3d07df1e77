//! Request extractors whose failures are problem responses with the contract's
//! codes: 400 for malformed input, 413 for bodies over the limit, 415 for bodies
//! that are not JSON, 401 for a missing or invalid token.

use axum::{
    extract::{
        FromRequest, FromRequestParts, OptionalFromRequest, Query, Request,
        rejection::JsonRejection,
    },
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
        match <axum::Json<T> as FromRequest<S>>::from_request(request, state).await {
            Ok(axum::Json(value)) => Ok(ApiJson(value)),
            Err(rejection) => Err(json_rejection(&rejection)),
        }
    }
}

/// A JSON body a route may also go without: no body at all (and no
/// `Content-Type`) is `None`, and so is JSON `null`, as the document says;
/// anything else must be the JSON the route takes.
impl<T: DeserializeOwned, S: Send + Sync> OptionalFromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Option<Self>, Self::Rejection> {
        if request.headers().contains_key(header::CONTENT_TYPE) {
            return <ApiJson<Option<T>> as FromRequest<S>>::from_request(request, state)
                .await
                .map(|ApiJson(body)| body.map(ApiJson));
        }
        let body = axum::body::Bytes::from_request(request, state)
            .await
            .map_err(|_| ApiError::invalid("the body could not be read"))?;
        if body.is_empty() {
            Ok(None)
        } else {
            Err(ApiError::new(
                ErrorCode::UnsupportedMediaType,
                "the body must be JSON with Content-Type: application/json",
            ))
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
            ApiError::invalid(describe_data_error(&error.body_text()))
        }
        JsonRejection::JsonSyntaxError(_) => ApiError::invalid("the body is not valid JSON"),
        JsonRejection::BytesRejection(error)
            if error.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE =>
        {
            ApiError::new(
                ErrorCode::PayloadTooLarge,
                "the body is larger than this route accepts (64 KiB; 256 KiB for a transfer batch)",
            )
        }
        _ => ApiError::invalid("the body could not be read"),
    }
}

/// Says which field of a JSON body is wrong without echoing serde's wording,
/// which names Rust types.
fn describe_data_error(text: &str) -> String {
    let inner = text
        .split_once("target type: ")
        .map_or(text, |(_, inner)| inner);
    if let Some(start) = inner.find("unknown field `") {
        let rest = &inner[start + "unknown field `".len()..];
        if let Some(end) = rest.find('`') {
            return format!(
                "invalid JSON body: unknown field `{}`: this route takes only its documented fields",
                &rest[..end]
            );
        }
    }
    if let Some(start) = inner.find("missing field `") {
        let rest = &inner[start + "missing field `".len()..];
        if let Some(end) = rest.find('`') {
            return format!("invalid JSON body: missing field `{}`", &rest[..end]);
        }
    }
    match inner.split_once(": ") {
        Some((path, _)) if !path.is_empty() && !path.contains(' ') => {
            format!("invalid JSON body: `{path}` has the wrong type or value")
        }
        _ => "invalid JSON body: expected an object with the documented fields".to_owned(),
    }
}

fn describe_query_error(text: &str) -> String {
    let inner = text.split_once("string: ").map_or(text, |(_, inner)| inner);
    match inner.split_once(": ") {
        Some((parameter, _)) if !parameter.is_empty() && !parameter.contains(' ') => {
            format!("invalid query: `{parameter}` has the wrong type or value")
        }
        _ => "invalid query parameters".to_owned(),
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
            .map_err(|rejection| ApiError::invalid(describe_query_error(&rejection.body_text())))
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

/// An authenticated operator. Extracted before the body and the headers that a
/// route validates, so that a customer is told 403 whatever else is wrong with
/// the request.
pub struct Operator(pub AuthUser);

impl FromRequestParts<AppState> for Operator {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let auth = AuthUser::from_request_parts(parts, state).await?;
        if auth.principal.is_operator() {
            Ok(Operator(auth))
        } else {
            Err(ApiError::new(
                ErrorCode::Forbidden,
                "this route requires the operator role",
            ))
        }
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The `Idempotency-Key` header, required on money-moving requests and optional
/// (as `Option<IdempotencyKey>`) where a retry is merely made safe by it, as when
/// opening an account.
pub struct IdempotencyKey(pub String);

impl IdempotencyKey {
    fn from_header(value: &axum::http::HeaderValue) -> Result<IdempotencyKey, ApiError> {
        let key = value
            .to_str()
            .map_err(|_| ApiError::invalid("the Idempotency-Key header must be visible ASCII"))?
            .trim();
        if key.is_empty() || key.len() > 128 || !key.bytes().all(|byte| byte.is_ascii_graphic()) {
            return Err(ApiError::invalid(
                "the Idempotency-Key header must be 1 to 128 visible ASCII characters without spaces",
            ));
        }
        Ok(IdempotencyKey(key.to_owned()))
    }
}

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let value = parts
            .headers
            .get("idempotency-key")
            .ok_or_else(|| ApiError::invalid("the Idempotency-Key header is required"))?;
        IdempotencyKey::from_header(value)
    }
}

impl<S: Send + Sync> axum::extract::OptionalFromRequestParts<S> for IdempotencyKey {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        _state: &S,
    ) -> Result<Option<Self>, Self::Rejection> {
        parts
            .headers
            .get("idempotency-key")
            .map(IdempotencyKey::from_header)
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_errors_name_the_field_but_no_rust_type() {
        let wrong_type = describe_data_error(
            "Failed to deserialize the JSON body into the target type: amount: invalid type: floating point `10.5`, expected i64 at line 1 column 80",
        );
        assert_eq!(
            wrong_type,
            "invalid JSON body: `amount` has the wrong type or value"
        );
        let missing = describe_data_error(
            "Failed to deserialize the JSON body into the target type: missing field `currency` at line 1 column 25",
        );
        assert_eq!(missing, "invalid JSON body: missing field `currency`");
        let not_an_object = describe_data_error(
            "Failed to deserialize the JSON body into the target type: invalid type: string \"x\", expected struct TransferBody at line 1 column 3",
        );
        assert!(!not_an_object.contains("TransferBody") && !not_an_object.contains("struct"));
        let unknown = describe_data_error(
            "Failed to deserialize the JSON body into the target type: unknown field `amout`, expected one of `from_account_id`, `to_account_id`, `amount` at line 1 column 9",
        );
        assert_eq!(
            unknown,
            "invalid JSON body: unknown field `amout`: this route takes only its documented fields"
        );
    }
}

/// Whole numbers as JSON Schema counts them: `137` and `137.0` are the same
/// integer. A fraction, a string, or a number a double cannot hold exactly is
/// not one. For `#[serde(deserialize_with = "whole_number::required")]` (and
/// `whole_number::optional` with `#[serde(default)]`).
pub mod whole_number {
    use serde::{Deserialize, Deserializer, de::Error};

    /// The largest integer every double below it holds exactly, 2^53.
    const EXACT: f64 = 9_007_199_254_740_992.0;

    fn from_number(number: &serde_json::Number) -> Option<i64> {
        if let Some(integer) = number.as_i64() {
            return Some(integer);
        }
        let float = number.as_f64()?;
        // Exact: the value is a whole number no larger than 2^53.
        #[allow(clippy::cast_possible_truncation)]
        (float.fract() == 0.0 && float.abs() <= EXACT).then_some(float as i64)
    }

    pub fn required<'de, D: Deserializer<'de>>(deserializer: D) -> Result<i64, D::Error> {
        let number = serde_json::Number::deserialize(deserializer)?;
        from_number(&number).ok_or_else(|| D::Error::custom("expected a whole number"))
    }

    pub fn optional<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<i64>, D::Error> {
        Option::<serde_json::Number>::deserialize(deserializer)?
            .map(|number| {
                from_number(&number).ok_or_else(|| D::Error::custom("expected a whole number"))
            })
            .transpose()
    }

    #[cfg(test)]
    mod tests {
        #[derive(Debug, serde::Deserialize)]
        struct Body {
            #[serde(deserialize_with = "super::required")]
            amount: i64,
            #[serde(default, deserialize_with = "super::optional")]
            timeout: Option<i64>,
        }

        fn parse(json: &str) -> Option<(i64, Option<i64>)> {
            serde_json::from_str::<Body>(json)
                .ok()
                .map(|body| (body.amount, body.timeout))
        }

        #[test]
        fn integral_floats_are_integers_and_fractions_are_not() {
            assert_eq!(parse(r#"{"amount": 137}"#), Some((137, None)));
            assert_eq!(
                parse(r#"{"amount": 137.0, "timeout": 60.0}"#),
                Some((137, Some(60)))
            );
            assert_eq!(
                parse(r#"{"amount": -2.0, "timeout": null}"#),
                Some((-2, None))
            );
            assert_eq!(parse(r#"{"amount": 137.5}"#), None);
            assert_eq!(parse(r#"{"amount": "137"}"#), None);
            assert_eq!(parse(r#"{"amount": 1e300}"#), None);
            assert_eq!(parse(r#"{"amount": 18446744073709551615}"#), None);
            assert_eq!(parse(r#"{"amount": 1, "timeout": 0.5}"#), None);
        }
    }
}
