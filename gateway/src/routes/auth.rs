//! Registration, login, token refresh, logout and the caller's own profile.

use axum::{Extension, Json, extract::State, http::StatusCode};
use bank_proto::identity::v1 as pb;
use serde::{Deserialize, Serialize};

use super::{anonymous, forward, required};
use crate::{
    AppState,
    client::ClientAddress,
    extract::{ApiJson, AuthUser},
    problem::ApiError,
};

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterBody {
    #[schema(max_length = 254, example = "alice@example.com")]
    pub email: String,
    /// 12 to 256 characters (after NFKC normalisation); passwords a strength
    /// estimator finds easy to guess, or made of the user's own details, are refused.
    #[schema(min_length = 12, max_length = 256)]
    pub password: String,
    #[schema(min_length = 1, max_length = 200)]
    pub full_name: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct UserView {
    pub id: String,
    pub email: String,
    pub full_name: String,
    pub roles: Vec<String>,
}

impl From<pb::User> for UserView {
    fn from(user: pb::User) -> UserView {
        UserView {
            id: user.user_id,
            email: user.email,
            full_name: user.full_name,
            roles: user.roles,
        }
    }
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginBody {
    pub email: String,
    pub password: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TokenView {
    pub access_token: String,
    pub refresh_token: String,
    /// Always `Bearer`.
    pub token_type: String,
    /// Seconds until the access token expires.
    pub expires_in: i64,
}

impl From<pb::TokenPair> for TokenView {
    fn from(tokens: pb::TokenPair) -> TokenView {
        TokenView {
            access_token: tokens.access_token,
            refresh_token: tokens.refresh_token,
            token_type: tokens.token_type,
            expires_in: tokens.expires_in,
        }
    }
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshBody {
    pub refresh_token: String,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangePasswordBody {
    pub current_password: String,
    /// 12 to 256 characters (counted after NFKC normalisation), and not easy
    /// to guess.
    #[schema(min_length = 12, max_length = 256)]
    pub new_password: String,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct JwksView {
    pub keys: Vec<JwkView>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct JwkView {
    pub kty: String,
    pub crv: String,
    pub x: String,
    pub kid: String,
    pub alg: String,
    #[serde(rename = "use")]
    pub key_use: String,
}

#[utoipa::path(post, path = "/v1/auth/register", tag = "auth", request_body = RegisterBody,
    responses((status = 201, body = UserView), (status = 400, body = crate::problem::Problem, content_type = "application/problem+json"), (status = 409, body = crate::problem::Problem, content_type = "application/problem+json")))]
pub async fn register(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<RegisterBody>,
) -> Result<(StatusCode, Json<UserView>), ApiError> {
    let response = state
        .identity
        .clone()
        .register(anonymous(pb::RegisterRequest {
            email: body.email,
            password: body.password,
            full_name: body.full_name,
        }))
        .await?
        .into_inner();
    Ok((StatusCode::CREATED, Json(required(response.user)?.into())))
}

#[utoipa::path(post, path = "/v1/auth/login", tag = "auth", request_body = LoginBody,
    responses((status = 200, body = TokenView), (status = 401, body = crate::problem::Problem, content_type = "application/problem+json"), (status = 429, body = crate::problem::Problem, content_type = "application/problem+json")))]
pub async fn login(
    State(state): State<AppState>,
    client: Option<Extension<ClientAddress>>,
    ApiJson(body): ApiJson<LoginBody>,
) -> Result<Json<TokenView>, ApiError> {
    let mut request = anonymous(pb::LoginRequest {
        email: body.email,
        password: body.password,
    });
    // Identity throttles failed logins per email and client address, and
    // believes the address only when the gateway vouches for it.
    if let Some(Extension(ClientAddress(address))) = client
        && let Some(service_token) = &state.service_token
        && let Ok(value) = address.to_string().parse()
    {
        service_token.vouch(&mut request).await?;
        request.metadata_mut().insert("x-client-address", value);
    }
    let response = state.identity.clone().login(request).await?.into_inner();
    Ok(Json(required(response.tokens)?.into()))
}

#[utoipa::path(post, path = "/v1/auth/refresh", tag = "auth", request_body = RefreshBody,
    responses((status = 200, body = TokenView), (status = 401, body = crate::problem::Problem, content_type = "application/problem+json")))]
pub async fn refresh(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<RefreshBody>,
) -> Result<Json<TokenView>, ApiError> {
    let response = state
        .identity
        .clone()
        .refresh(anonymous(pb::RefreshRequest {
            refresh_token: body.refresh_token,
        }))
        .await?
        .into_inner();
    Ok(Json(required(response.tokens)?.into()))
}

#[utoipa::path(post, path = "/v1/auth/logout", tag = "auth", request_body = RefreshBody,
    responses((status = 204), (status = 401, body = crate::problem::Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub async fn logout(
    State(state): State<AppState>,
    auth: AuthUser,
    ApiJson(body): ApiJson<RefreshBody>,
) -> Result<StatusCode, ApiError> {
    state
        .identity
        .clone()
        .logout(forward(
            &auth,
            pb::LogoutRequest {
                refresh_token: body.refresh_token,
            },
        ))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/v1/me", tag = "auth",
    responses((status = 200, body = UserView), (status = 401, body = crate::problem::Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub async fn me(State(state): State<AppState>, auth: AuthUser) -> Result<Json<UserView>, ApiError> {
    let response = state
        .identity
        .clone()
        .get_current_user(forward(&auth, pb::GetCurrentUserRequest {}))
        .await?
        .into_inner();
    Ok(Json(required(response.user)?.into()))
}

#[utoipa::path(post, path = "/v1/me/password", tag = "auth", request_body = ChangePasswordBody,
    responses((status = 204), (status = 400, body = crate::problem::Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub async fn change_password(
    State(state): State<AppState>,
    auth: AuthUser,
    ApiJson(body): ApiJson<ChangePasswordBody>,
) -> Result<StatusCode, ApiError> {
    state
        .identity
        .clone()
        .change_password(forward(
            &auth,
            pb::ChangePasswordRequest {
                current_password: body.current_password,
                new_password: body.new_password,
            },
        ))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/.well-known/jwks.json", tag = "auth", responses((status = 200, body = JwksView)))]
pub async fn jwks(State(state): State<AppState>) -> Result<Json<JwksView>, ApiError> {
    // One fetch at a time; the others wait for it and share its answer.
    let mut cached = state.jwks.lock().await;
    if let Some((fetched_at, document)) = cached.as_ref()
        && fetched_at.elapsed() < JWKS_CACHE_TTL
    {
        return Ok(Json(document.clone()));
    }
    let response = state
        .identity
        .clone()
        .get_jwks(anonymous(pb::GetJwksRequest {}))
        .await?
        .into_inner();
    let document = JwksView {
        keys: response
            .keys
            .into_iter()
            .map(|key| JwkView {
                kty: key.kty,
                crv: key.crv,
                x: key.x,
                kid: key.kid,
                alg: key.alg,
                key_use: key.r#use,
            })
            .collect(),
    };
    *cached = Some((tokio::time::Instant::now(), document.clone()));
    Ok(Json(document))
}

/// How long the gateway serves the JWKS document it fetched before asking
/// identity again: an anonymous route must not turn into a call to identity per
/// request, and a new signing key is published well before it signs.
pub const JWKS_CACHE_TTL: std::time::Duration = std::time::Duration::from_secs(30);
