//! Access-token claims and their verification. Every service verifies the bearer
//! token itself against the identity service's published keys (JWKS), cached and
//! refetched when a token names a key the cache does not hold.

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use bank_proto::identity::v1::{
    GetJwksRequest, Jwk, identity_service_client::IdentityServiceClient,
};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};
use tonic::transport::{Channel, Endpoint};

use crate::error::{ErrorCode, ServiceError};

/// `iss` of every token the identity service signs.
pub const ISSUER: &str = "bank-identity";
/// `aud` of every token: the bank's APIs.
pub const AUDIENCE: &str = "bank";
/// `typ` of a user's access token.
pub const TYPE_ACCESS: &str = "access";
/// `typ` of a service principal's token.
pub const TYPE_SERVICE: &str = "service";
/// Role that grants operator methods.
pub const ROLE_OPERATOR: &str = "operator";
/// Role every registered user has.
pub const ROLE_CUSTOMER: &str = "customer";
/// Prefix of a service principal's `sub`.
pub const SERVICE_SUBJECT_PREFIX: &str = "service:";

/// Shortest time between two JWKS fetches triggered by unknown key ids, so that a
/// flood of forged `kid`s cannot turn into a flood of requests to identity.
const MIN_REFETCH_INTERVAL: Duration = Duration::from_secs(10);

/// How long a fetched key set is trusted before it is fetched again, so that a
/// key removed from identity (rotated out, or compromised) stops verifying.
const KEY_SET_TTL: Duration = Duration::from_secs(5 * 60);

/// Claims of every token. All are required: a token missing one is rejected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub aud: String,
    pub sub: String,
    pub exp: i64,
    pub nbf: i64,
    pub iat: i64,
    pub jti: String,
    pub roles: Vec<String>,
    pub typ: String,
    /// The session an access token was issued for; absent on service tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
}

/// Who is calling, as established from a verified token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    User {
        user_id: String,
        roles: Vec<String>,
        session_id: Option<String>,
    },
    Service {
        name: String,
    },
}

impl Principal {
    pub fn is_operator(&self) -> bool {
        matches!(self, Principal::User { roles, .. } if roles.iter().any(|role| role == ROLE_OPERATOR))
    }

    pub fn user_id(&self) -> Option<&str> {
        match self {
            Principal::User { user_id, .. } => Some(user_id),
            Principal::Service { .. } => None,
        }
    }

    pub fn session_id(&self) -> Option<&str> {
        match self {
            Principal::User { session_id, .. } => session_id.as_deref(),
            Principal::Service { .. } => None,
        }
    }

    pub fn is_service(&self, name: &str) -> bool {
        matches!(self, Principal::Service { name: own } if own == name)
    }

    /// A stable string naming the principal, used to scope idempotency keys.
    pub fn scope(&self) -> String {
        match self {
            Principal::User { user_id, .. } => format!("user:{user_id}"),
            Principal::Service { name } => format!("{SERVICE_SUBJECT_PREFIX}{name}"),
        }
    }

    /// The caller's user id, or `forbidden` for a service principal.
    pub fn require_user(&self) -> Result<&str, ServiceError> {
        self.user_id()
            .ok_or_else(|| ServiceError::forbidden("this method is for users"))
    }

    pub fn require_operator(&self) -> Result<(), ServiceError> {
        if self.is_operator() {
            Ok(())
        } else {
            Err(ServiceError::forbidden(
                "this method requires the operator role",
            ))
        }
    }

    pub fn require_service(&self, name: &str) -> Result<(), ServiceError> {
        if self.is_service(name) {
            Ok(())
        } else {
            Err(ServiceError::forbidden("this method is internal"))
        }
    }

    fn from_claims(claims: Claims) -> Result<Principal, ServiceError> {
        match claims.typ.as_str() {
            TYPE_ACCESS => Ok(Principal::User {
                user_id: claims.sub,
                roles: claims.roles,
                session_id: claims.sid,
            }),
            TYPE_SERVICE => match claims.sub.strip_prefix(SERVICE_SUBJECT_PREFIX) {
                Some(name) if !name.is_empty() => Ok(Principal::Service {
                    name: name.to_owned(),
                }),
                _ => Err(invalid_token()),
            },
            _ => Err(invalid_token()),
        }
    }
}

fn invalid_token() -> ServiceError {
    ServiceError::unauthenticated("invalid or expired access token")
}

/// The validation every token must pass: EdDSA only, our issuer and audience, and
/// every registered claim present.
pub fn validation() -> Validation {
    let mut validation = Validation::new(Algorithm::EdDSA);
    validation.set_issuer(&[ISSUER]);
    validation.set_audience(&[AUDIENCE]);
    validation.set_required_spec_claims(&["exp", "nbf", "iat", "iss", "aud", "sub"]);
    validation.validate_nbf = true;
    validation.leeway = 30;
    validation
}

enum KeySource {
    /// Keys fetched from the identity service's `GetJwks`.
    Identity(IdentityServiceClient<Channel>),
    /// Keys handed in directly (the identity service verifying its own tokens).
    Fixed,
}

struct Inner {
    keys: RwLock<HashMap<String, DecodingKey>>,
    source: KeySource,
    /// When a fetch was last attempted; limits refetches on unknown key ids.
    last_fetch: tokio::sync::Mutex<Option<Instant>>,
    /// When the key set was last fetched successfully.
    fetched_at: RwLock<Option<Instant>>,
}

/// Verifies bearer tokens. Cheap to clone.
#[derive(Clone)]
pub struct TokenVerifier {
    inner: Arc<Inner>,
}

impl TokenVerifier {
    /// A verifier that fetches keys from the identity service at `endpoint`. The
    /// channel connects lazily, so the service can start before identity does.
    pub fn remote(endpoint: &str) -> Result<TokenVerifier, tonic::transport::Error> {
        let channel = Endpoint::from_shared(endpoint.to_owned())?
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(5))
            .connect_lazy();
        Ok(Self::with_source(KeySource::Identity(
            IdentityServiceClient::new(channel),
        )))
    }

    /// A verifier that trusts exactly `keys`.
    pub fn fixed(keys: &[Jwk]) -> TokenVerifier {
        let verifier = Self::with_source(KeySource::Fixed);
        verifier.replace_keys(keys);
        verifier
    }

    fn with_source(source: KeySource) -> TokenVerifier {
        TokenVerifier {
            inner: Arc::new(Inner {
                keys: RwLock::new(HashMap::new()),
                source,
                last_fetch: tokio::sync::Mutex::new(None),
                fetched_at: RwLock::new(None),
            }),
        }
    }

    /// Replaces the trusted key set. Keys that are not Ed25519 are ignored.
    pub fn replace_keys(&self, keys: &[Jwk]) {
        let parsed: HashMap<String, DecodingKey> = keys
            .iter()
            .filter(|jwk| jwk.kty == "OKP" && jwk.crv == "Ed25519")
            .filter_map(|jwk| {
                DecodingKey::from_ed_components(&jwk.x)
                    .ok()
                    .map(|key| (jwk.kid.clone(), key))
            })
            .collect();
        if let Ok(mut guard) = self.inner.keys.write() {
            *guard = parsed;
        }
    }

    /// Verifies `token` and returns who it speaks for.
    pub async fn verify(&self, token: &str) -> Result<Principal, ServiceError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| invalid_token())?;
        if header.alg != Algorithm::EdDSA {
            return Err(invalid_token());
        }
        let kid = header.kid.ok_or_else(invalid_token)?;
        if self.key_set_is_stale()
            && let Err(error) = self.refetch().await
        {
            // Keep verifying with the keys already held rather than failing every
            // request while identity is briefly unreachable.
            tracing::warn!(%error, "signing keys could not be refreshed");
        }
        let key = match self.cached_key(&kid) {
            Some(key) => key,
            None => {
                self.refetch().await?;
                self.cached_key(&kid).ok_or_else(invalid_token)?
            }
        };
        let data = jsonwebtoken::decode::<Claims>(token, &key, &validation())
            .map_err(|_| invalid_token())?;
        Principal::from_claims(data.claims)
    }

    /// Verifies the `authorization: Bearer` metadata of a gRPC request.
    pub async fn authenticate<T>(
        &self,
        request: &tonic::Request<T>,
    ) -> Result<Principal, ServiceError> {
        let token = bearer_token(request.metadata())
            .ok_or_else(|| ServiceError::unauthenticated("missing bearer token"))?;
        self.verify(token).await
    }

    fn cached_key(&self, kid: &str) -> Option<DecodingKey> {
        self.inner
            .keys
            .read()
            .ok()
            .and_then(|keys| keys.get(kid).cloned())
    }

    fn key_set_is_stale(&self) -> bool {
        matches!(self.inner.source, KeySource::Identity(_))
            && self
                .inner
                .fetched_at
                .read()
                .ok()
                .and_then(|fetched_at| *fetched_at)
                .is_some_and(|at| at.elapsed() >= KEY_SET_TTL)
    }

    async fn refetch(&self) -> Result<(), ServiceError> {
        let KeySource::Identity(client) = &self.inner.source else {
            return Ok(());
        };
        let mut last_fetch = self.inner.last_fetch.lock().await;
        let ever_fetched = self
            .inner
            .fetched_at
            .read()
            .is_ok_and(|fetched_at| fetched_at.is_some());
        if ever_fetched && last_fetch.is_some_and(|at| at.elapsed() < MIN_REFETCH_INTERVAL) {
            return Ok(());
        }
        // Counted as an attempt even if it fails, so an unreachable identity is
        // not asked again on every request.
        *last_fetch = Some(Instant::now());
        let response = client
            .clone()
            .get_jwks(GetJwksRequest {})
            .await
            .map_err(|status| {
                ServiceError::new(
                    ErrorCode::Unavailable,
                    format!("cannot fetch signing keys: {}", status.code()),
                )
            })?;
        self.replace_keys(&response.into_inner().keys);
        if let Ok(mut fetched_at) = self.inner.fetched_at.write() {
            *fetched_at = Some(Instant::now());
        }
        Ok(())
    }
}

/// The token of an `authorization: Bearer <token>` header, if well-formed.
pub fn bearer_token(metadata: &tonic::metadata::MetadataMap) -> Option<&str> {
    let value = metadata.get("authorization")?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_token_requires_the_bearer_scheme() {
        let mut metadata = tonic::metadata::MetadataMap::new();
        metadata.insert(
            "authorization",
            tonic::metadata::MetadataValue::from_static("Basic abc"),
        );
        assert_eq!(bearer_token(&metadata), None);
        metadata.insert(
            "authorization",
            tonic::metadata::MetadataValue::from_static("Bearer abc"),
        );
        assert_eq!(bearer_token(&metadata), Some("abc"));
    }

    #[test]
    fn only_users_with_the_operator_role_are_operators() {
        let operator = Principal::User {
            user_id: "u".into(),
            roles: vec![ROLE_CUSTOMER.into(), ROLE_OPERATOR.into()],
            session_id: None,
        };
        let customer = Principal::User {
            user_id: "u".into(),
            roles: vec![ROLE_CUSTOMER.into()],
            session_id: None,
        };
        let service = Principal::Service {
            name: "account".into(),
        };
        assert!(operator.is_operator());
        assert!(!customer.is_operator());
        assert!(!service.is_operator());
        assert!(service.is_service("account"));
        assert!(!customer.is_service("account"));
    }

    #[tokio::test]
    async fn garbage_tokens_are_unauthenticated() {
        let verifier = TokenVerifier::fixed(&[]);
        let error = verifier.verify("not.a.jwt").await.err();
        assert_eq!(
            error.map(|error| error.code),
            Some(ErrorCode::Unauthenticated)
        );
    }
}

/// Obtains and caches a service principal's token from the identity service
/// (client-credentials grant), renewing it shortly before it expires.
#[derive(Clone)]
pub struct ServiceTokenSource {
    client: IdentityServiceClient<Channel>,
    client_id: String,
    client_secret: secrecy::SecretString,
    cached: Arc<tokio::sync::Mutex<Option<(String, Instant)>>>,
}

impl ServiceTokenSource {
    pub fn new(
        identity_endpoint: &str,
        client_id: String,
        client_secret: secrecy::SecretString,
    ) -> Result<ServiceTokenSource, tonic::transport::Error> {
        let channel = Endpoint::from_shared(identity_endpoint.to_owned())?
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(5))
            .connect_lazy();
        Ok(ServiceTokenSource {
            client: IdentityServiceClient::new(channel),
            client_id,
            client_secret,
            cached: Arc::new(tokio::sync::Mutex::new(None)),
        })
    }

    /// A token valid for at least another minute.
    pub async fn token(&self) -> Result<String, ServiceError> {
        use secrecy::ExposeSecret;
        let mut cached = self.cached.lock().await;
        if let Some((token, renew_at)) = cached.as_ref()
            && Instant::now() < *renew_at
        {
            return Ok(token.clone());
        }
        let response = self
            .client
            .clone()
            .issue_service_token(bank_proto::identity::v1::IssueServiceTokenRequest {
                client_id: self.client_id.clone(),
                client_secret: self.client_secret.expose_secret().to_owned(),
            })
            .await
            .map_err(|status| {
                ServiceError::unavailable(&format_args!(
                    "cannot obtain a service token: {:?}",
                    status.code()
                ))
            })?
            .into_inner();
        let lifetime = Duration::from_secs(u64::try_from(response.expires_in).unwrap_or(0));
        let renew_at = Instant::now() + lifetime.saturating_sub(Duration::from_secs(60));
        *cached = Some((response.access_token.clone(), renew_at));
        Ok(response.access_token)
    }

    /// Wraps `message` in a request carrying the service token.
    pub async fn request<T>(&self, message: T) -> Result<tonic::Request<T>, ServiceError> {
        let token = self.token().await?;
        let mut request = tonic::Request::new(message);
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|_| ServiceError::internal(&"service token is not a valid header"))?;
        request.metadata_mut().insert("authorization", value);
        Ok(request)
    }
}
