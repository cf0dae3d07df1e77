//! Access-token claims and their verification. Every service verifies the bearer
//! token itself against the identity service's published keys (JWKS), cached and
//! refetched when a token names a key the cache does not hold.

use std::{
    collections::HashMap,
    sync::{
        Arc, RwLock,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use bank_proto::identity::v1::{
    GetJwksRequest, Jwk, ListRevokedSessionsRequest, ListRevokedSessionsResponse,
    identity_service_client::IdentityServiceClient,
};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::error::{ErrorCode, ServiceError};

/// `iss` of every token the identity service signs.
pub const ISSUER: &str = "bank-identity";
/// `aud` of every token: the bank's APIs.
pub const AUDIENCE: &str = "bank";
/// `typ` of a user's access token.
pub const TYPE_ACCESS: &str = "access";
/// `typ` of a service principal's token.
pub const TYPE_SERVICE: &str = "service";
pub use bank_domain::principal::{ROLE_CUSTOMER, ROLE_OPERATOR};
/// Prefix of a service principal's `sub`.
pub const SERVICE_SUBJECT_PREFIX: &str = "service:";

/// The variable that names identity's endpoint, for errors.
const IDENTITY_ENDPOINT: &str = "IDENTITY_ENDPOINT";

/// Deadline of a call to identity for keys, revocations or a service token.
const IDENTITY_CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Shortest time between two JWKS fetches triggered by unknown key ids, so that a
/// flood of forged `kid`s cannot turn into a flood of requests to identity.
const MIN_REFETCH_INTERVAL: Duration = Duration::from_secs(10);

/// How long a fetched key set is trusted before it is fetched again, so that a
/// key removed from identity (rotated out, or compromised) stops verifying.
const KEY_SET_TTL: Duration = Duration::from_secs(5 * 60);

/// Shortest time between two fetches while none has succeeded yet.
const MIN_RETRY_INTERVAL: Duration = Duration::from_secs(1);

/// The oldest key set that still verifies. Past it, when identity cannot be
/// reached, tokens are refused: every honest token has expired by then anyway,
/// and a key withdrawn at identity must not stay trusted forever.
const MAX_KEY_SET_AGE: Duration = Duration::from_secs(60 * 60);

/// How often a verifier asks identity for sessions that ended: well inside the
/// two seconds in which a revoked session must stop working everywhere.
const REVOCATION_POLL_INTERVAL: Duration = Duration::from_millis(500);

/// How long a verifier may go without hearing from identity before it stops
/// serving operators: their revocations may be the ones it is missing.
const MAX_REVOCATION_SILENCE: Duration = Duration::from_secs(60);

/// How long an operator's call waits for a verifier that has just started to
/// hear from identity the first time.
const FIRST_REVOCATION_WAIT: Duration = Duration::from_secs(2);

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
            // A user's token always names its session, so that it can be revoked.
            TYPE_ACCESS => match claims.sid {
                Some(session_id) if !session_id.is_empty() => Ok(Principal::User {
                    user_id: claims.sub,
                    roles: claims.roles,
                    session_id: Some(session_id),
                }),
                _ => Err(invalid_token()),
            },
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

/// Where a remote verifier gets the identity service's published keys.
#[tonic::async_trait]
pub trait KeySource: Send + Sync + 'static {
    async fn fetch(&self) -> Result<Vec<Jwk>, ServiceError>;
}

/// The identity service's `GetJwks`.
struct IdentityKeys(IdentityServiceClient<crate::grpc::Pool>);

#[tonic::async_trait]
impl KeySource for IdentityKeys {
    async fn fetch(&self) -> Result<Vec<Jwk>, ServiceError> {
        let response = self
            .0
            .clone()
            .get_jwks(GetJwksRequest {})
            .await
            .map_err(|status| {
                ServiceError::new(
                    ErrorCode::Unavailable,
                    format!("cannot fetch signing keys: {}", status.code()),
                )
            })?;
        Ok(response.into_inner().keys)
    }
}

/// Where a verifier learns which sessions have ended: identity's
/// `ListRevokedSessions`, or identity's own database inside identity.
#[tonic::async_trait]
pub trait RevocationSource: Send + Sync + 'static {
    async fn page(
        &self,
        request: ListRevokedSessionsRequest,
    ) -> Result<ListRevokedSessionsResponse, ServiceError>;
}

#[tonic::async_trait]
impl RevocationSource for IdentityServiceClient<crate::grpc::Pool> {
    async fn page(
        &self,
        request: ListRevokedSessionsRequest,
    ) -> Result<ListRevokedSessionsResponse, ServiceError> {
        self.clone()
            .list_revoked_sessions(request)
            .await
            .map(tonic::Response::into_inner)
            .map_err(|status| {
                ServiceError::new(
                    ErrorCode::Unavailable,
                    format!("cannot fetch revoked sessions: {}", status.code()),
                )
            })
    }
}

/// The ended sessions a verifier knows of, kept current by a task that follows
/// the revocation feed. Access tokens name their session (`sid`); one whose
/// session is here is refused, whether or not it was verified before.
struct Revocations {
    /// Ended session ids, with the time (Unix seconds) after which none of
    /// their tokens can verify anyway and the entry is dropped.
    sessions: RwLock<HashMap<String, i64>>,
    /// When the feed was last read to its end.
    heard_at: tokio::sync::watch::Sender<Option<Instant>>,
}

impl Revocations {
    fn new() -> Revocations {
        Revocations {
            sessions: RwLock::new(HashMap::new()),
            heard_at: tokio::sync::watch::Sender::new(None),
        }
    }

    fn is_revoked(&self, session_id: &str) -> bool {
        self.sessions
            .read()
            .map_or(true, |sessions| sessions.contains_key(session_id))
    }

    /// Refuses the principal of a revoked session, and operators while the
    /// feed is silent: customers keep working with the revocations known
    /// while identity is unreachable, operators do not past a minute.
    async fn check(&self, principal: &Principal) -> Result<(), ServiceError> {
        if let Some(session_id) = principal.session_id()
            && self.is_revoked(session_id)
        {
            return Err(invalid_token());
        }
        if !principal.is_operator() {
            return Ok(());
        }
        let mut heard_at = self.heard_at.subscribe();
        // A verifier that has just started gives the feed a moment.
        let first =
            tokio::time::timeout(FIRST_REVOCATION_WAIT, heard_at.wait_for(Option::is_some)).await;
        let heard_at = match first {
            Ok(Ok(heard_at)) => *heard_at,
            _ => None,
        };
        match heard_at {
            Some(at) if at.elapsed() < MAX_REVOCATION_SILENCE => {
                // A session may have ended while the feed was being awaited.
                match principal.session_id() {
                    Some(session_id) if self.is_revoked(session_id) => Err(invalid_token()),
                    _ => Ok(()),
                }
            }
            _ => Err(ServiceError::new(
                ErrorCode::Unavailable,
                "session revocations cannot be confirmed with identity; operator calls wait until they can",
            )),
        }
    }

    /// Reads the feed from `horizon` to its end, and answers the horizon of
    /// the next round.
    async fn read_round(
        &self,
        source: &dyn RevocationSource,
        horizon: i64,
    ) -> Result<i64, ServiceError> {
        let mut after_seq = 0;
        let mut next_horizon = None;
        loop {
            let page = source
                .page(ListRevokedSessionsRequest { horizon, after_seq })
                .await?;
            next_horizon.get_or_insert(page.horizon);
            if let Ok(mut sessions) = self.sessions.write() {
                for revoked in page.sessions {
                    sessions.insert(revoked.session_id, revoked.not_after_unix);
                }
            }
            if page.complete || page.last_seq <= after_seq {
                break;
            }
            after_seq = page.last_seq;
        }
        let now = chrono::Utc::now().timestamp();
        if let Ok(mut sessions) = self.sessions.write() {
            sessions.retain(|_, not_after| now <= *not_after);
        }
        self.heard_at.send_replace(Some(Instant::now()));
        Ok(next_horizon.unwrap_or(horizon))
    }

    /// Follows the feed for as long as a verifier holds `revocations`.
    fn follow(revocations: &Arc<Revocations>, source: Arc<dyn RevocationSource>) {
        let revocations = Arc::downgrade(revocations);
        tokio::spawn(async move {
            let mut horizon = 0;
            let mut failing = false;
            let mut ever_read = false;
            loop {
                let Some(held) = revocations.upgrade() else {
                    return;
                };
                match held.read_round(source.as_ref(), horizon).await {
                    Ok(next) => {
                        horizon = next;
                        ever_read = true;
                        if std::mem::take(&mut failing) {
                            tracing::info!("the revocation feed is reachable");
                        }
                    }
                    Err(error) => {
                        if !std::mem::replace(&mut failing, true) {
                            if ever_read {
                                tracing::warn!(%error, "the revocation feed cannot be read");
                            } else {
                                // Identity is usually still starting.
                                tracing::info!(%error, "waiting for identity's revocation feed");
                            }
                        }
                    }
                }
                drop(held);
                tokio::time::sleep(REVOCATION_POLL_INTERVAL).await;
            }
        });
    }
}

struct Inner {
    keys: RwLock<HashMap<String, DecodingKey>>,
    /// `None`: no revocation feed (tests of the key handling only).
    revocations: Option<Arc<Revocations>>,
    /// `None`: the keys were handed in and never change (identity verifying its
    /// own tokens).
    source: Option<Arc<dyn KeySource>>,
    /// When a fetch was last attempted. Held during a fetch, so concurrent
    /// callers wait for one fetch instead of each making their own.
    last_fetch: tokio::sync::Mutex<Option<Instant>>,
    /// When the key set was last fetched successfully.
    fetched_at: RwLock<Option<Instant>>,
    /// Whether a background refresh of a stale key set is under way.
    refreshing: AtomicBool,
    /// Tokens verified already, so that a client's next request skips the
    /// signature check.
    verified: VerifiedTokens,
}

/// How many verified tokens a verifier remembers.
const VERIFIED_TOKENS_CAPACITY: usize = 16_384;

/// A bounded cache of verified tokens, keyed by the SHA-256 of the token (the
/// token itself is never kept) and valid until the token's `exp`. It is emptied
/// whenever the key set changes, so a withdrawn key stops verifying at once, and
/// a lookup happens only after the key set's age was checked, like a full
/// verification. Revocation checks run on the principal after the lookup, so a
/// cached token is revoked like any other.
#[derive(Default)]
struct VerifiedTokens(std::sync::Mutex<HashMap<[u8; 32], (Principal, i64)>>);

impl VerifiedTokens {
    fn digest(token: &str) -> [u8; 32] {
        use sha2::{Digest, Sha256};
        Sha256::digest(token.as_bytes()).into()
    }

    fn get(&self, digest: &[u8; 32], now: i64) -> Option<Principal> {
        let mut tokens = self.0.lock().unwrap_or_else(|poison| poison.into_inner());
        match tokens.get(digest) {
            Some((principal, expires_at)) if now < *expires_at => Some(principal.clone()),
            Some(_) => {
                tokens.remove(digest);
                None
            }
            None => None,
        }
    }

    fn insert(&self, digest: [u8; 32], principal: Principal, expires_at: i64, now: i64) {
        let mut tokens = self.0.lock().unwrap_or_else(|poison| poison.into_inner());
        if tokens.len() >= VERIFIED_TOKENS_CAPACITY {
            tokens.retain(|_, (_, expires_at)| now < *expires_at);
            if tokens.len() >= VERIFIED_TOKENS_CAPACITY {
                tokens.clear();
            }
        }
        tokens.insert(digest, (principal, expires_at));
    }

    fn clear(&self) {
        self.0
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .clear();
    }
}

/// Verifies bearer tokens. Cheap to clone.
#[derive(Clone)]
pub struct TokenVerifier {
    inner: Arc<Inner>,
}

impl TokenVerifier {
    /// A verifier that fetches keys from the identity service at `endpoint` and
    /// follows its feed of ended sessions. The channel connects lazily, so the
    /// service can start before identity does. Call it inside a Tokio runtime.
    pub fn remote(
        endpoint: &str,
        connector: &crate::tls::Connector,
    ) -> anyhow::Result<TokenVerifier> {
        let channel = crate::grpc::Pool::new(
            IDENTITY_ENDPOINT,
            endpoint,
            connector,
            IDENTITY_CALL_TIMEOUT,
            1,
        )?;
        let client = IdentityServiceClient::new(channel);
        Ok(Self::build(
            Some(Arc::new(IdentityKeys(client.clone()))),
            Some(Arc::new(client)),
        ))
    }

    /// A verifier that fetches its keys from `source`, without a revocation feed.
    pub fn from_source(source: impl KeySource) -> TokenVerifier {
        Self::build(Some(Arc::new(source)), None)
    }

    /// A verifier that fetches its keys from `keys` and follows the feed of
    /// ended sessions of `revocations`. Call it inside a Tokio runtime.
    pub fn from_sources(keys: impl KeySource, revocations: impl RevocationSource) -> TokenVerifier {
        Self::build(Some(Arc::new(keys)), Some(Arc::new(revocations)))
    }

    /// A verifier that trusts exactly `keys`, without a revocation feed.
    pub fn fixed(keys: &[Jwk]) -> TokenVerifier {
        let verifier = Self::build(None, None);
        verifier.replace_keys(keys);
        verifier
    }

    /// A verifier that trusts exactly `keys` and follows the feed of ended
    /// sessions of `revocations`: identity's own. Call it inside a Tokio runtime.
    pub fn fixed_with_revocations(
        keys: &[Jwk],
        revocations: impl RevocationSource,
    ) -> TokenVerifier {
        let verifier = Self::build(None, Some(Arc::new(revocations)));
        verifier.replace_keys(keys);
        verifier
    }

    fn build(
        source: Option<Arc<dyn KeySource>>,
        revocation_source: Option<Arc<dyn RevocationSource>>,
    ) -> TokenVerifier {
        let revocations = revocation_source.map(|revocation_source| {
            let revocations = Arc::new(Revocations::new());
            Revocations::follow(&revocations, revocation_source);
            revocations
        });
        TokenVerifier {
            inner: Arc::new(Inner {
                keys: RwLock::new(HashMap::new()),
                revocations,
                source,
                last_fetch: tokio::sync::Mutex::new(None),
                fetched_at: RwLock::new(None),
                refreshing: AtomicBool::new(false),
                verified: VerifiedTokens::default(),
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
        self.inner.verified.clear();
    }

    /// Verifies `token` and returns who it speaks for, unless its session has
    /// ended.
    pub async fn verify(&self, token: &str) -> Result<Principal, ServiceError> {
        let principal = self.verify_signed(token).await?;
        if let Some(revocations) = &self.inner.revocations {
            revocations.check(&principal).await?;
        }
        Ok(principal)
    }

    /// Verifies `token`'s signature and claims, from the cache when it was
    /// verified before.
    async fn verify_signed(&self, token: &str) -> Result<Principal, ServiceError> {
        self.keep_keys_fresh().await?;
        let digest = VerifiedTokens::digest(token);
        let now = chrono::Utc::now().timestamp();
        if let Some(principal) = self.inner.verified.get(&digest, now) {
            return Ok(principal);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| invalid_token())?;
        if header.alg != Algorithm::EdDSA {
            return Err(invalid_token());
        }
        let kid = header.kid.ok_or_else(invalid_token)?;
        let key = match self.cached_key(&kid) {
            Some(key) => key,
            None => {
                self.refetch().await?;
                self.cached_key(&kid).ok_or_else(invalid_token)?
            }
        };
        let data = jsonwebtoken::decode::<Claims>(token, &key, &validation())
            .map_err(|_| invalid_token())?;
        let expires_at = data.claims.exp;
        let principal = Principal::from_claims(data.claims)?;
        self.inner
            .verified
            .insert(digest, principal.clone(), expires_at, now);
        Ok(principal)
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

    /// How long ago the key set was fetched; `None` for fixed keys and before
    /// the first fetch.
    fn key_set_age(&self) -> Option<Duration> {
        self.inner.source.as_ref()?;
        self.inner
            .fetched_at
            .read()
            .ok()
            .and_then(|fetched_at| *fetched_at)
            .map(|at| at.elapsed())
    }

    /// A key set past its time to live is refreshed in the background while the
    /// keys held keep verifying, so a slow or briefly unreachable identity does
    /// not slow every request. One that is much older is no longer trusted: it
    /// must be refreshed before anything verifies with it.
    async fn keep_keys_fresh(&self) -> Result<(), ServiceError> {
        match self.key_set_age() {
            Some(age) if age >= MAX_KEY_SET_AGE => {
                if let Err(error) = self.refetch().await {
                    tracing::warn!(%error, "signing keys could not be refreshed");
                }
                if self.key_set_age().is_some_and(|age| age >= MAX_KEY_SET_AGE) {
                    return Err(ServiceError::new(
                        ErrorCode::Unavailable,
                        "signing keys cannot be refreshed",
                    ));
                }
            }
            Some(age) if age >= KEY_SET_TTL => self.refresh_in_background(),
            _ => {}
        }
        Ok(())
    }

    fn refresh_in_background(&self) {
        if self.inner.refreshing.swap(true, Ordering::AcqRel) {
            return;
        }
        let verifier = self.clone();
        tokio::spawn(async move {
            if let Err(error) = verifier.refetch().await {
                tracing::warn!(%error, "signing keys could not be refreshed");
            }
            verifier.inner.refreshing.store(false, Ordering::Release);
        });
    }

    /// Fetches the key set, unless a fetch was attempted too recently: at most
    /// once per [`MIN_REFETCH_INTERVAL`], or [`MIN_RETRY_INTERVAL`] while no fetch
    /// has succeeded yet, so a flood of forged `kid`s or an unreachable identity
    /// never turns into a flood of requests to identity.
    async fn refetch(&self) -> Result<(), ServiceError> {
        let Some(source) = &self.inner.source else {
            return Ok(());
        };
        let mut last_fetch = self.inner.last_fetch.lock().await;
        let ever_fetched = self
            .inner
            .fetched_at
            .read()
            .is_ok_and(|fetched_at| fetched_at.is_some());
        let interval = if ever_fetched {
            MIN_REFETCH_INTERVAL
        } else {
            MIN_RETRY_INTERVAL
        };
        if last_fetch.is_some_and(|at| at.elapsed() < interval) {
            return if ever_fetched {
                Ok(())
            } else {
                Err(ServiceError::new(
                    ErrorCode::Unavailable,
                    "signing keys are not available yet",
                ))
            };
        }
        // Counted as an attempt even if it fails.
        *last_fetch = Some(Instant::now());
        let keys = source.fetch().await?;
        self.replace_keys(&keys);
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

    /// Unsigned tokens whose header names key `k1` or `k2`: enough to drive key
    /// lookup, never to verify.
    const TOKEN_K1: &str = "eyJhbGciOiJFZERTQSIsImtpZCI6ImsxIiwidHlwIjoiSldUIn0.e30.c2ln";
    const TOKEN_K2: &str = "eyJhbGciOiJFZERTQSIsImtpZCI6ImsyIiwidHlwIjoiSldUIn0.e30.c2ln";

    /// A key source that answers fetch `n` (from 0) as `script` says: keys, an
    /// error, or (None) never.
    struct Scripted {
        fetches: Arc<std::sync::atomic::AtomicUsize>,
        script: fn(usize) -> Option<Result<Vec<Jwk>, ServiceError>>,
    }

    #[tonic::async_trait]
    impl KeySource for Scripted {
        async fn fetch(&self) -> Result<Vec<Jwk>, ServiceError> {
            let n = self.fetches.fetch_add(1, Ordering::SeqCst);
            match (self.script)(n) {
                Some(answer) => answer,
                None => std::future::pending().await,
            }
        }
    }

    fn key_k1() -> Vec<Jwk> {
        vec![Jwk {
            kty: "OKP".into(),
            crv: "Ed25519".into(),
            x: "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8".into(),
            kid: "k1".into(),
            alg: "EdDSA".into(),
            r#use: "sig".into(),
        }]
    }

    fn unreachable_identity() -> ServiceError {
        ServiceError::new(ErrorCode::Unavailable, "identity is down")
    }

    fn scripted(
        script: fn(usize) -> Option<Result<Vec<Jwk>, ServiceError>>,
    ) -> (TokenVerifier, Arc<std::sync::atomic::AtomicUsize>) {
        let fetches = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let verifier = TokenVerifier::from_source(Scripted {
            fetches: fetches.clone(),
            script,
        });
        (verifier, fetches)
    }

    async fn code_of(verifier: &TokenVerifier, token: &str) -> Option<ErrorCode> {
        verifier.verify(token).await.err().map(|error| error.code)
    }

    #[tokio::test(start_paused = true)]
    async fn unknown_key_ids_fetch_at_most_once_per_interval() {
        let (verifier, fetches) = scripted(|_| Some(Ok(key_k1())));

        assert_eq!(
            code_of(&verifier, TOKEN_K2).await,
            Some(ErrorCode::Unauthenticated)
        );
        assert_eq!(
            code_of(&verifier, TOKEN_K2).await,
            Some(ErrorCode::Unauthenticated)
        );
        assert_eq!(
            code_of(&verifier, TOKEN_K1).await,
            Some(ErrorCode::Unauthenticated)
        );
        assert_eq!(fetches.load(Ordering::SeqCst), 1);

        tokio::time::advance(MIN_REFETCH_INTERVAL).await;
        code_of(&verifier, TOKEN_K2).await;
        assert_eq!(fetches.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn an_unreachable_identity_is_asked_at_most_once_per_retry_interval() {
        let (verifier, fetches) = scripted(|_| Some(Err(unreachable_identity())));

        for _ in 0..5 {
            assert_eq!(
                code_of(&verifier, TOKEN_K1).await,
                Some(ErrorCode::Unavailable)
            );
        }
        assert_eq!(fetches.load(Ordering::SeqCst), 1);

        tokio::time::advance(MIN_RETRY_INTERVAL).await;
        code_of(&verifier, TOKEN_K1).await;
        assert_eq!(fetches.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stale_key_set_is_refreshed_without_holding_requests() {
        // The first fetch answers; every later one hangs.
        let (verifier, fetches) = scripted(|n| (n == 0).then(|| Ok(key_k1())));
        code_of(&verifier, TOKEN_K1).await;

        tokio::time::advance(KEY_SET_TTL).await;
        for _ in 0..3 {
            let answered =
                tokio::time::timeout(Duration::from_secs(1), code_of(&verifier, TOKEN_K1)).await;
            assert_eq!(answered.ok(), Some(Some(ErrorCode::Unauthenticated)));
        }
        tokio::task::yield_now().await;

        assert_eq!(fetches.load(Ordering::SeqCst), 2, "one background refresh");
    }

    #[tokio::test(start_paused = true)]
    async fn keys_past_their_maximum_age_stop_verifying() {
        let (verifier, _) = scripted(|n| {
            Some(if n == 0 {
                Ok(key_k1())
            } else {
                Err(unreachable_identity())
            })
        });
        code_of(&verifier, TOKEN_K1).await;

        tokio::time::advance(MAX_KEY_SET_AGE).await;

        assert_eq!(
            code_of(&verifier, TOKEN_K1).await,
            Some(ErrorCode::Unavailable)
        );
    }

    fn customer(user_id: &str) -> Principal {
        Principal::User {
            user_id: user_id.into(),
            roles: vec![ROLE_CUSTOMER.into()],
            session_id: None,
        }
    }

    #[test]
    fn verified_tokens_are_remembered_until_they_expire() {
        let tokens = VerifiedTokens::default();
        let digest = VerifiedTokens::digest("token");
        tokens.insert(digest, customer("u1"), 100, 50);

        assert_eq!(tokens.get(&digest, 99), Some(customer("u1")));
        assert_eq!(tokens.get(&digest, 100), None, "expired at exp");
        assert_eq!(tokens.get(&digest, 99), None, "and forgotten");
        assert_eq!(tokens.get(&VerifiedTokens::digest("other"), 0), None);
    }

    #[test]
    fn the_verified_token_cache_stays_bounded() {
        let tokens = VerifiedTokens::default();
        for n in 0..VERIFIED_TOKENS_CAPACITY + 10 {
            let digest = VerifiedTokens::digest(&n.to_string());
            tokens.insert(digest, customer("u"), 1_000, 0);
        }
        let held = tokens.0.lock().map(|map| map.len()).unwrap_or_default();
        assert!(held <= VERIFIED_TOKENS_CAPACITY, "{held}");
        let newest = VerifiedTokens::digest(&(VERIFIED_TOKENS_CAPACITY + 9).to_string());
        assert!(tokens.get(&newest, 1).is_some());
    }

    /// A revocation feed that answers round by round from `pages`, or fails
    /// while `down` is set; it records the requests it was asked.
    #[derive(Clone, Default)]
    struct Feed {
        pages: Arc<std::sync::Mutex<std::collections::VecDeque<ListRevokedSessionsResponse>>>,
        asked: Arc<std::sync::Mutex<Vec<(i64, i64)>>>,
        down: Arc<AtomicBool>,
    }

    #[tonic::async_trait]
    impl RevocationSource for Feed {
        async fn page(
            &self,
            request: ListRevokedSessionsRequest,
        ) -> Result<ListRevokedSessionsResponse, ServiceError> {
            if self.down.load(Ordering::SeqCst) {
                return Err(unreachable_identity());
            }
            if let Ok(mut asked) = self.asked.lock() {
                asked.push((request.horizon, request.after_seq));
            }
            let next = self
                .pages
                .lock()
                .ok()
                .and_then(|mut pages| pages.pop_front());
            Ok(next.unwrap_or(ListRevokedSessionsResponse {
                sessions: Vec::new(),
                last_seq: request.after_seq,
                complete: true,
                horizon: request.horizon,
            }))
        }
    }

    fn page(
        sessions: &[&str],
        last_seq: i64,
        complete: bool,
        horizon: i64,
    ) -> ListRevokedSessionsResponse {
        ListRevokedSessionsResponse {
            sessions: sessions
                .iter()
                .map(|id| bank_proto::identity::v1::RevokedSession {
                    session_id: (*id).to_owned(),
                    not_after_unix: chrono::Utc::now().timestamp() + 600,
                })
                .collect(),
            last_seq,
            complete,
            horizon,
        }
    }

    fn user(session_id: &str, roles: &[&str]) -> Principal {
        Principal::User {
            user_id: "u".into(),
            roles: roles.iter().map(|role| (*role).to_owned()).collect(),
            session_id: Some(session_id.into()),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_round_reads_every_page_and_keeps_the_first_pages_horizon() {
        let feed = Feed::default();
        if let Ok(mut pages) = feed.pages.lock() {
            pages.extend([
                page(&["s1", "s2"], 7, false, 40),
                page(&["s3"], 9, true, 45),
            ]);
        }
        let revocations = Revocations::new();

        let next = revocations.read_round(&feed, 30).await.ok();

        assert_eq!(
            next,
            Some(40),
            "the horizon read before the round's first page"
        );
        assert_eq!(
            feed.asked
                .lock()
                .map(|asked| asked.clone())
                .unwrap_or_default(),
            vec![(30, 0), (30, 7)]
        );
        for session in ["s1", "s2", "s3"] {
            assert!(revocations.is_revoked(session), "{session}");
        }
        assert!(!revocations.is_revoked("s4"));
    }

    /// Revocations following `feed`.
    fn following(feed: &Feed) -> Arc<Revocations> {
        let revocations = Arc::new(Revocations::new());
        Revocations::follow(&revocations, Arc::new(feed.clone()));
        revocations
    }

    /// The code a user of `session` with `role` is refused with, if refused.
    async fn refusal(revocations: &Revocations, session: &str, role: &str) -> Option<ErrorCode> {
        let principal = user(session, &[role]);
        revocations
            .check(&principal)
            .await
            .err()
            .map(|error| error.code)
    }

    #[tokio::test(start_paused = true)]
    async fn revoked_sessions_are_refused_and_others_pass() {
        let feed = Feed::default();
        if let Ok(mut pages) = feed.pages.lock() {
            pages.push_back(page(&["ended"], 1, true, 2));
        }
        let revocations = following(&feed);

        for role in [ROLE_OPERATOR, ROLE_CUSTOMER] {
            let refused = refusal(&revocations, "ended", role).await;
            assert_eq!(refused, Some(ErrorCode::Unauthenticated));
        }
        assert_eq!(refusal(&revocations, "live", ROLE_OPERATOR).await, None);
        let service = Principal::Service {
            name: "account".into(),
        };
        assert!(revocations.check(&service).await.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn operators_wait_for_the_first_round_then_are_refused_without_it() {
        let feed = Feed::default();
        feed.down.store(true, Ordering::SeqCst);
        let revocations = following(&feed);

        let operator = refusal(&revocations, "s", ROLE_OPERATOR).await;
        assert_eq!(operator, Some(ErrorCode::Unavailable));
        assert_eq!(refusal(&revocations, "s", ROLE_CUSTOMER).await, None);

        feed.down.store(false, Ordering::SeqCst);
        let waiting = tokio::spawn({
            let revocations = revocations.clone();
            async move { refusal(&revocations, "s", ROLE_OPERATOR).await }
        });
        let answered = waiting.await.ok();
        assert_eq!(answered, Some(None), "served once the feed answered");
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_feed_stops_operators_after_a_minute_but_not_customers() {
        let feed = Feed::default();
        let revocations = following(&feed);
        assert_eq!(refusal(&revocations, "s", ROLE_OPERATOR).await, None);

        feed.down.store(true, Ordering::SeqCst);
        tokio::time::advance(MAX_REVOCATION_SILENCE - Duration::from_secs(1)).await;
        assert_eq!(refusal(&revocations, "s", ROLE_OPERATOR).await, None);
        tokio::time::advance(Duration::from_secs(2)).await;
        let operator = refusal(&revocations, "s", ROLE_OPERATOR).await;
        assert_eq!(operator, Some(ErrorCode::Unavailable));
        assert_eq!(refusal(&revocations, "s", ROLE_CUSTOMER).await, None);

        feed.down.store(false, Ordering::SeqCst);
        tokio::time::advance(REVOCATION_POLL_INTERVAL).await;
        tokio::task::yield_now().await;
        assert_eq!(refusal(&revocations, "s", ROLE_OPERATOR).await, None);
    }

    #[tokio::test(start_paused = true)]
    async fn the_feed_stops_being_followed_when_its_verifier_is_gone() {
        let feed = Feed::default();
        let revocations = following(&feed);
        tokio::time::advance(REVOCATION_POLL_INTERVAL * 3).await;
        tokio::task::yield_now().await;
        drop(revocations);
        tokio::time::advance(REVOCATION_POLL_INTERVAL * 2).await;
        tokio::task::yield_now().await;
        let asked = || {
            feed.asked
                .lock()
                .map(|asked| asked.len())
                .unwrap_or_default()
        };
        let before = asked();

        tokio::time::advance(REVOCATION_POLL_INTERVAL * 10).await;
        tokio::task::yield_now().await;

        assert!(before > 0);
        assert_eq!(asked(), before);
    }

    #[test]
    fn access_tokens_without_a_session_are_refused() {
        let claims = Claims {
            iss: ISSUER.into(),
            aud: AUDIENCE.into(),
            sub: "u".into(),
            exp: 0,
            nbf: 0,
            iat: 0,
            jti: "j".into(),
            roles: vec![ROLE_OPERATOR.into()],
            typ: TYPE_ACCESS.into(),
            sid: None,
        };
        assert!(Principal::from_claims(claims.clone()).is_err());
        let empty = Claims {
            sid: Some(String::new()),
            ..claims.clone()
        };
        assert!(Principal::from_claims(empty).is_err());
        let named = Claims {
            sid: Some("s".into()),
            ..claims
        };
        assert!(Principal::from_claims(named).is_ok());
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
    client: IdentityServiceClient<crate::grpc::Pool>,
    client_id: String,
    client_secret: secrecy::SecretString,
    cached: Arc<tokio::sync::Mutex<Option<(String, Instant)>>>,
}

/// Metadata entry in which a service vouches for what it reports about its caller
/// (`x-client-address`): the service's own token, beside the user's
/// `authorization`.
pub const SERVICE_AUTHORIZATION_METADATA: &str = "x-bank-service-authorization";

/// The service principal of the gateway, the one caller identity believes about
/// a client's address.
pub const GATEWAY_CLIENT_ID: &str = "gateway";

impl ServiceTokenSource {
    /// Adds this service's token to `request` as [`SERVICE_AUTHORIZATION_METADATA`],
    /// leaving its `authorization` (the user's) as it is.
    pub async fn vouch<T>(&self, request: &mut tonic::Request<T>) -> Result<(), ServiceError> {
        let token = self.token().await?;
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|_| ServiceError::internal(&"service token is not a valid header"))?;
        request
            .metadata_mut()
            .insert(SERVICE_AUTHORIZATION_METADATA, value);
        Ok(())
    }

    pub fn new(
        identity_endpoint: &str,
        connector: &crate::tls::Connector,
        client_id: String,
        client_secret: secrecy::SecretString,
    ) -> anyhow::Result<ServiceTokenSource> {
        let channel = crate::grpc::Pool::new(
            IDENTITY_ENDPOINT,
            identity_endpoint,
            connector,
            IDENTITY_CALL_TIMEOUT,
            1,
        )?;
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
