//! Identity's gRPC API: parses requests into domain types, authenticates callers,
//! and answers with users and tokens.

use std::{collections::HashMap, sync::Arc};

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use bank_kit::{
    ServiceError,
    auth::{
        AUDIENCE, Claims, ISSUER, Principal, SERVICE_SUBJECT_PREFIX, TYPE_ACCESS, TYPE_SERVICE,
        TokenVerifier,
    },
    time::to_rfc3339,
};
use bank_proto::identity::v1::{self as pb, identity_service_server::IdentityService};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tonic::{Request, Response, Status};

use crate::{
    domain::{
        Email, FullName, IdentityError, LoginThrottle, MAX_PASSWORD_BYTES, NewPassword,
        PasswordContext, Role, User, normalize_password,
    },
    keys::KeyRing,
    passwords::{PasswordHasherPool, Verified},
    store::{IdentityStore, Reservation, RevocationPage, RevokeReason, Rotation, SessionPolicy},
};

/// Identity's errors answer callers with the status of their code.
impl From<IdentityError> for Status {
    fn from(error: IdentityError) -> Status {
        ServiceError::from(error).into()
    }
}

/// Lifetime of access and service tokens.
pub const ACCESS_TOKEN_TTL_SECONDS: i64 = 15 * 60;

/// How long an ended session stays in the revocation feed: past it, every
/// access token of the session has expired (the lifetime, plus the leeway
/// verifiers allow, plus slack for clocks).
const REVOCATION_MEMORY: chrono::Duration =
    chrono::Duration::seconds(ACCESS_TOKEN_TTL_SECONDS + 5 * 60);

/// Most ended sessions in one page of the feed.
const REVOCATION_PAGE_SIZE: u32 = 5_000;

/// One page of the feed of ended sessions, as `ListRevokedSessions` answers it.
async fn revocation_page(
    store: &IdentityStore,
    request: pb::ListRevokedSessionsRequest,
) -> Result<pb::ListRevokedSessionsResponse, ServiceError> {
    if request.horizon < 0 || request.after_seq < 0 {
        return Err(ServiceError::invalid(
            "horizon and after_seq are never negative",
        ));
    }
    let since = bank_kit::time::now() - REVOCATION_MEMORY;
    let page = store
        .revoked_sessions(
            request.horizon,
            request.after_seq,
            since,
            REVOCATION_PAGE_SIZE,
        )
        .await?;
    Ok(revocation_page_to_proto(page))
}

/// Identity's own verifier reads the feed from its database.
pub(crate) struct LocalRevocations(pub(crate) Arc<IdentityStore>);

#[tonic::async_trait]
impl bank_kit::auth::RevocationSource for LocalRevocations {
    async fn page(
        &self,
        request: pb::ListRevokedSessionsRequest,
    ) -> Result<pb::ListRevokedSessionsResponse, ServiceError> {
        revocation_page(&self.0, request).await
    }
}

fn revocation_page_to_proto(page: RevocationPage) -> pb::ListRevokedSessionsResponse {
    pb::ListRevokedSessionsResponse {
        sessions: page
            .sessions
            .into_iter()
            .map(|(session_id, revoked_at)| pb::RevokedSession {
                session_id,
                not_after_unix: (revoked_at + REVOCATION_MEMORY).timestamp(),
            })
            .collect(),
        last_seq: page.last_seq,
        complete: page.complete,
        horizon: page.horizon,
    }
}

pub struct IdentityApi {
    pub(crate) store: Arc<IdentityStore>,
    pub(crate) keys: Arc<KeyRing>,
    pub(crate) hasher: PasswordHasherPool,
    pub(crate) verifier: TokenVerifier,
    pub(crate) sessions: SessionPolicy,
    pub(crate) login_throttle: LoginThrottle,
    /// SHA-256 of each service client's secret, by client id.
    pub(crate) service_clients: HashMap<String, [u8; 32]>,
}

/// Hashes a service client's secret for constant-time comparison.
pub fn client_secret_digest(secret: &SecretString) -> [u8; 32] {
    Sha256::digest(secret.expose_secret().as_bytes()).into()
}

fn refresh_token_digest(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Checks a new password against the policy on the blocking pool: the strength
/// estimate is CPU work an anonymous caller can ask for.
async fn new_password(raw: String, context: PasswordContext) -> Result<NewPassword, IdentityError> {
    tokio::task::spawn_blocking(move || NewPassword::parse(&raw, &context))
        .await
        .map_err(|_| IdentityError::Hashing("the password check stopped".into()))?
}

fn new_refresh_token() -> Result<String, IdentityError> {
    let mut bytes = [0u8; 32];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| IdentityError::Signing("no randomness".into()))?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

impl IdentityApi {
    async fn caller<T>(&self, request: &Request<T>) -> Result<Principal, ServiceError> {
        self.verifier.authenticate(request).await
    }

    fn access_token(&self, user: &User, session_id: &str) -> Result<String, IdentityError> {
        let now = chrono::Utc::now().timestamp();
        self.keys.sign(&Claims {
            iss: ISSUER.into(),
            aud: AUDIENCE.into(),
            sub: user.user_id.clone(),
            exp: now + ACCESS_TOKEN_TTL_SECONDS,
            nbf: now,
            iat: now,
            jti: uuid::Uuid::new_v4().to_string(),
            roles: user.role_names(),
            typ: TYPE_ACCESS.into(),
            sid: Some(session_id.to_owned()),
        })
    }

    fn token_pair(
        &self,
        user: &User,
        session_id: &str,
        refresh_token: String,
    ) -> Result<pb::TokenPair, IdentityError> {
        Ok(pb::TokenPair {
            access_token: self.access_token(user, session_id)?,
            refresh_token,
            token_type: "Bearer".into(),
            expires_in: ACCESS_TOKEN_TTL_SECONDS,
        })
    }

    async fn current_user(&self, principal: &Principal) -> Result<User, ServiceError> {
        let user_id = principal.require_user()?;
        match self.store.user_by_id(user_id).await? {
            Some(user) if user.enabled => Ok(user),
            _ => Err(ServiceError::unauthenticated(
                "invalid or expired access token",
            )),
        }
    }

    /// Creates the operator named by the bootstrap variables, or makes sure the
    /// existing user with that email is an enabled operator.
    pub async fn ensure_operator(
        &self,
        email: &Email,
        password: &NewPassword,
    ) -> Result<(), IdentityError> {
        if let Some((user, _)) = self.store.user_by_email(email).await? {
            if user.roles.contains(&Role::Operator) {
                if !user.enabled {
                    // Someone disabled it on purpose; a restart must not undo that.
                    tracing::warn!(email = %email, "bootstrap operator is disabled; left disabled");
                }
                return Ok(());
            }
            // Whoever registered this address before it was configured must not
            // become an operator with a password of their own: the configured
            // password replaces theirs and every session of theirs ends.
            let hash = self.hasher.hash(password.as_str()).await?;
            self.store.set_password_hash(&user.user_id, &hash).await?;
            self.store
                .revoke_sessions_of_user(&user.user_id, None, RevokeReason::PasswordChanged)
                .await?;
            let mut roles = user.roles.clone();
            roles.push(Role::Operator);
            let roles = Role::parse_set(roles.iter().map(|role| role.as_str()))?;
            self.store.set_roles(&user.user_id, &roles).await?;
            self.store.set_enabled(&user.user_id, true).await?;
            self.store
                .audit(
                    "operator_bootstrapped",
                    Some(&user.user_id),
                    "existing user: configured password set, sessions revoked",
                )
                .await?;
            return Ok(());
        }
        let user = User {
            user_id: uuid::Uuid::new_v4().to_string(),
            email: email.clone(),
            full_name: crate::BOOTSTRAP_OPERATOR_NAME.into(),
            roles: vec![Role::Customer, Role::Operator],
            enabled: true,
            created_at: bank_kit::time::now(),
        };
        let hash = self.hasher.hash(password.as_str()).await?;
        match self.store.insert_user(&user, &hash).await {
            // Another replica created it first.
            Ok(()) | Err(IdentityError::EmailTaken) => {}
            Err(error) => return Err(error),
        }
        self.store
            .audit("operator_bootstrapped", Some(&user.user_id), "new user")
            .await?;
        Ok(())
    }

    /// Counts the attempt against the client and the account before the password
    /// is checked. The account-wide count only holds back clients that have failed
    /// before, so a guesser elsewhere can never keep the owner's device out.
    async fn reserve_attempt(&self, throttle: &ThrottleKeys) -> Result<(), IdentityError> {
        let blocked = |wait: chrono::Duration| {
            // Whole seconds, rounded up, so a client that waits as told is let in.
            let millis = u64::try_from(wait.num_milliseconds()).unwrap_or(0);
            IdentityError::LoginThrottled(millis.div_ceil(1000).max(1))
        };
        let client_attempts = match self
            .store
            .reserve_login_attempt(&throttle.per_client, self.login_throttle.per_client, true)
            .await?
        {
            Reservation::Counted(attempts) => attempts,
            Reservation::Blocked(wait) => return Err(blocked(wait)),
        };
        let returning_client = client_attempts > 1;
        match self
            .store
            .reserve_login_attempt(
                &throttle.per_account,
                self.login_throttle.per_account,
                returning_client,
            )
            .await?
        {
            Reservation::Counted(_) => Ok(()),
            Reservation::Blocked(wait) => Err(blocked(wait)),
        }
    }

    /// Checks a presented password against a stored hash in its NFKC form, and,
    /// for a hash made before passwords were normalised, in its raw form too: a
    /// match that way calls for a rehash of the normalised form.
    async fn check_password(
        &self,
        presented: &str,
        stored: &str,
    ) -> Result<Verified, IdentityError> {
        let normalized = normalize_password(presented);
        let verified = self.hasher.verify(&normalized, stored).await?;
        if verified.matches || normalized == presented {
            return Ok(verified);
        }
        let raw = self.hasher.verify(presented, stored).await?;
        Ok(Verified {
            matches: raw.matches,
            needs_rehash: raw.matches,
        })
    }

    /// The user the credentials belong to, or why they do not (and whose they
    /// were meant to be, if known). Rehashes the password when its parameters are
    /// out of date.
    async fn check_credentials(
        &self,
        body: &pb::LoginRequest,
    ) -> Result<Result<(User, String), (&'static str, Option<String>)>, IdentityError> {
        if body.password.len() > MAX_PASSWORD_BYTES {
            return Ok(Err(("password too long", None)));
        }
        let found = match Email::parse(&body.email) {
            Ok(email) => self.store.user_by_email(&email).await?,
            Err(_) => None,
        };
        let Some((user, stored_hash)) = found else {
            // Same work as a real check, so response time does not reveal whether
            // the email is registered.
            self.hasher.verify_dummy(&body.password).await?;
            if normalize_password(&body.password) != body.password {
                self.hasher.verify_dummy(&body.password).await?;
            }
            return Ok(Err(("unknown email", None)));
        };
        let verified = self.check_password(&body.password, &stored_hash).await?;
        if !verified.matches {
            return Ok(Err(("wrong password", Some(user.user_id))));
        }
        if !user.enabled {
            return Ok(Err(("user disabled", Some(user.user_id))));
        }
        // The user and the hash the password matched; the session is only
        // created while that hash is still theirs.
        if verified.needs_rehash {
            let hash = self
                .hasher
                .hash(&normalize_password(&body.password))
                .await?;
            if self
                .store
                .replace_password_hash(&user.user_id, &stored_hash, &hash)
                .await?
            {
                return Ok(Ok((user, hash)));
            }
            // The hash changed meanwhile: another login rehashed the same password,
            // or the password changed. Only the current hash can tell.
            let current = self.store.password_hash(&user.user_id).await?;
            return match current {
                Some(current) if self.check_password(&body.password, &current).await?.matches => {
                    Ok(Ok((user, current)))
                }
                _ => Ok(Err(("password changed during login", Some(user.user_id)))),
            };
        }
        Ok(Ok((user, stored_hash)))
    }

    async fn target_user(
        &self,
        principal: &Principal,
        user_id: &str,
    ) -> Result<User, ServiceError> {
        principal.require_operator()?;
        let user_id = uuid::Uuid::try_parse(user_id)
            .map_err(|_| ServiceError::invalid("user_id must be a UUID"))?
            .to_string();
        Ok(self
            .store
            .user_by_id(&user_id)
            .await?
            .ok_or(IdentityError::UserNotFound)?)
    }
}

/// Metadata naming the end client's address, set by the gateway.
pub const CLIENT_ADDRESS_METADATA: &str = "x-client-address";

/// The address the login comes from, as the gateway reports it, else the peer;
/// counted per address (IPv6: per /64, see [`bank_kit::net::client_bucket`]).
impl IdentityApi {
    /// The address a request counts under for throttling: what the gateway
    /// reports (`x-client-address`) only when the gateway vouches for it with its
    /// own service token; from anyone else, the TCP peer. A caller reaching
    /// identity's port directly cannot pose as a stream of fresh clients.
    async fn client_address<T>(&self, request: &Request<T>) -> String {
        let peer = request.remote_addr().map(|addr| addr.ip());
        let claimed = request
            .metadata()
            .get(CLIENT_ADDRESS_METADATA)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse::<std::net::IpAddr>().ok());
        let vouched = match request
            .metadata()
            .get(bank_kit::auth::SERVICE_AUTHORIZATION_METADATA)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
        {
            Some(token) if claimed.is_some() => {
                self.verifier.verify(token).await.is_ok_and(|principal| {
                    principal
                        .require_service(bank_kit::auth::GATEWAY_CLIENT_ID)
                        .is_ok()
                })
            }
            _ => false,
        };
        let address = if vouched { claimed } else { peer };
        address
            .map(bank_kit::net::client_bucket)
            .unwrap_or_default()
    }
}

/// Throttle keys for a login attempt: hashed, so the table holds no emails.
struct ThrottleKeys {
    per_client: String,
    per_account: String,
}

impl ThrottleKeys {
    fn new(raw_email: &str, client: &str) -> ThrottleKeys {
        let email = raw_email.trim().to_lowercase();
        let digest = |parts: &[&str]| hex::encode(Sha256::digest(parts.join("\n").as_bytes()));
        ThrottleKeys {
            per_client: digest(&["client", &email, client]),
            per_account: digest(&["account", &email]),
        }
    }

    /// Keys for another secret check, counted apart from logins: `purpose`
    /// (`password_change`, `service_token`) and whose secret it is.
    fn for_secret(purpose: &str, subject: &str, client: &str) -> ThrottleKeys {
        let digest = |parts: &[&str]| hex::encode(Sha256::digest(parts.join("\n").as_bytes()));
        ThrottleKeys {
            per_client: digest(&[purpose, "client", subject, client]),
            per_account: digest(&[purpose, "account", subject]),
        }
    }

    fn both(&self) -> [&str; 2] {
        [&self.per_client, &self.per_account]
    }
}

fn user_to_proto(user: &User) -> pb::User {
    pb::User {
        user_id: user.user_id.clone(),
        email: user.email.to_string(),
        full_name: user.full_name.clone(),
        roles: user.role_names(),
        enabled: user.enabled,
        created_at: to_rfc3339(user.created_at),
    }
}

#[tonic::async_trait]
impl IdentityService for IdentityApi {
    #[tracing::instrument(name = "identity.register", skip_all)]
    async fn register(
        &self,
        request: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::RegisterResponse>, Status> {
        let body = request.into_inner();
        let email = Email::parse(&body.email)?;
        let full_name = FullName::parse(&body.full_name)?;
        let context = PasswordContext::new(email.as_str(), full_name.as_str());
        let password = new_password(body.password, context).await?;
        let user = User {
            user_id: uuid::Uuid::new_v4().to_string(),
            email,
            full_name: full_name.as_str().to_owned(),
            roles: vec![Role::Customer],
            enabled: true,
            created_at: bank_kit::time::now(),
        };
        let hash = self.hasher.hash(password.as_str()).await?;
        self.store.insert_user(&user, &hash).await?;
        self.store
            .audit("user_registered", Some(&user.user_id), "")
            .await?;
        tracing::info!(user_id = %user.user_id, "user registered");
        Ok(Response::new(pb::RegisterResponse {
            user: Some(user_to_proto(&user)),
        }))
    }

    #[tracing::instrument(name = "identity.login", skip_all)]
    async fn login(
        &self,
        request: Request<pb::LoginRequest>,
    ) -> Result<Response<pb::LoginResponse>, Status> {
        let client = self.client_address(&request).await;
        let body = request.into_inner();
        let throttle = ThrottleKeys::new(&body.email, &client);
        self.reserve_attempt(&throttle).await?;
        let outcome = self.check_credentials(&body).await?;
        let (user, verified_hash) = match outcome {
            Ok(verified) => verified,
            Err((reason, user_id)) => {
                self.store
                    .audit("login_failed", user_id.as_deref(), reason)
                    .await?;
                return Err(IdentityError::InvalidCredentials.into());
            }
        };
        self.store.clear_login_failures(&throttle.both()).await?;
        let refresh_token = new_refresh_token()?;
        let session_id = self
            .store
            .create_session(
                &user.user_id,
                &verified_hash,
                &refresh_token_digest(&refresh_token),
                self.sessions,
            )
            .await?;
        self.store
            .audit("login_succeeded", Some(&user.user_id), "")
            .await?;
        let tokens = self.token_pair(&user, &session_id, refresh_token)?;
        Ok(Response::new(pb::LoginResponse {
            tokens: Some(tokens),
        }))
    }

    #[tracing::instrument(name = "identity.refresh", skip_all)]
    async fn refresh(
        &self,
        request: Request<pb::RefreshRequest>,
    ) -> Result<Response<pb::RefreshResponse>, Status> {
        let presented = request.into_inner().refresh_token;
        if presented.is_empty() || presented.len() > 128 {
            return Err(IdentityError::InvalidRefreshToken.into());
        }
        let replacement = new_refresh_token()?;
        let rotation = self
            .store
            .rotate_refresh_token(
                &refresh_token_digest(&presented),
                &refresh_token_digest(&replacement),
                self.sessions,
            )
            .await?;
        match rotation {
            Rotation::Rotated {
                session_id,
                user_id,
            } => {
                let user = match self.store.user_by_id(&user_id).await? {
                    Some(user) if user.enabled => user,
                    _ => return Err(IdentityError::InvalidRefreshToken.into()),
                };
                let tokens = self.token_pair(&user, &session_id, replacement)?;
                Ok(Response::new(pb::RefreshResponse {
                    tokens: Some(tokens),
                }))
            }
            Rotation::ReuseDetected {
                session_id,
                user_id,
            } => {
                tracing::warn!(%user_id, %session_id, "refresh token reuse: session revoked");
                self.store
                    .audit(
                        "refresh_token_reused",
                        Some(&user_id),
                        &format!("session {session_id} revoked"),
                    )
                    .await?;
                Err(IdentityError::InvalidRefreshToken.into())
            }
            Rotation::Invalid => Err(IdentityError::InvalidRefreshToken.into()),
        }
    }

    #[tracing::instrument(name = "identity.logout", skip_all)]
    async fn logout(
        &self,
        request: Request<pb::LogoutRequest>,
    ) -> Result<Response<pb::LogoutResponse>, Status> {
        let principal = self.caller(&request).await?;
        let user_id = principal.require_user()?.to_owned();
        // The session of the access token presented ends, whatever refresh
        // token came with it; a refresh token of another of the caller's
        // sessions ends that one too.
        if let Some(session_id) = principal.session_id() {
            self.store.revoke_session(session_id, &user_id).await?;
        }
        let token = request.into_inner().refresh_token;
        if !token.is_empty() && token.len() <= 128 {
            self.store
                .revoke_session_of_token(&refresh_token_digest(&token), &user_id)
                .await?;
        }
        self.store.audit("logout", Some(&user_id), "").await?;
        Ok(Response::new(pb::LogoutResponse {}))
    }

    #[tracing::instrument(name = "identity.get_current_user", skip_all)]
    async fn get_current_user(
        &self,
        request: Request<pb::GetCurrentUserRequest>,
    ) -> Result<Response<pb::GetCurrentUserResponse>, Status> {
        let principal = self.caller(&request).await?;
        let user = self.current_user(&principal).await?;
        Ok(Response::new(pb::GetCurrentUserResponse {
            user: Some(user_to_proto(&user)),
        }))
    }

    #[tracing::instrument(name = "identity.change_password", skip_all)]
    async fn change_password(
        &self,
        request: Request<pb::ChangePasswordRequest>,
    ) -> Result<Response<pb::ChangePasswordResponse>, Status> {
        let principal = self.caller(&request).await?;
        let user = self.current_user(&principal).await?;
        let client = self.client_address(&request).await;
        let body = request.into_inner();
        let context = PasswordContext::new(user.email.as_str(), &user.full_name);
        let new_password = new_password(body.new_password, context).await?;
        // The current password is a secret check like a login, throttled alike.
        let throttle = ThrottleKeys::for_secret("password_change", &user.user_id, &client);
        self.reserve_attempt(&throttle).await?;
        let stored = self
            .store
            .password_hash(&user.user_id)
            .await?
            .ok_or(IdentityError::UserNotFound)?;
        let current_ok = body.current_password.len() <= MAX_PASSWORD_BYTES
            && self
                .check_password(&body.current_password, &stored)
                .await?
                .matches;
        if !current_ok {
            self.store
                .audit(
                    "password_change_failed",
                    Some(&user.user_id),
                    "wrong current password",
                )
                .await?;
            return Err(ServiceError::invalid("current_password is incorrect").into());
        }
        self.store.clear_login_failures(&throttle.both()).await?;
        let hash = self.hasher.hash(new_password.as_str()).await?;
        self.store.set_password_hash(&user.user_id, &hash).await?;
        let revoked = self
            .store
            .revoke_sessions_of_user(
                &user.user_id,
                principal.session_id(),
                RevokeReason::PasswordChanged,
            )
            .await?;
        self.store
            .audit(
                "password_changed",
                Some(&user.user_id),
                &format!("{revoked} other sessions revoked"),
            )
            .await?;
        Ok(Response::new(pb::ChangePasswordResponse {}))
    }

    #[tracing::instrument(name = "identity.get_jwks", skip_all)]
    async fn get_jwks(
        &self,
        _request: Request<pb::GetJwksRequest>,
    ) -> Result<Response<pb::GetJwksResponse>, Status> {
        Ok(Response::new(pb::GetJwksResponse {
            keys: self.keys.jwks(),
        }))
    }

    #[tracing::instrument(name = "identity.disable_user", skip_all)]
    async fn disable_user(
        &self,
        request: Request<pb::DisableUserRequest>,
    ) -> Result<Response<pb::DisableUserResponse>, Status> {
        let principal = self.caller(&request).await?;
        let mut user = self
            .target_user(&principal, &request.get_ref().user_id)
            .await?;
        if principal.user_id() == Some(user.user_id.as_str()) {
            return Err(ServiceError::invalid("operators cannot disable themselves").into());
        }
        self.store.disable_user(&user.user_id).await?;
        let actor = principal.user_id().unwrap_or_default().to_owned();
        self.store
            .audit("user_disabled", Some(&user.user_id), &format!("by {actor}"))
            .await?;
        user.enabled = false;
        Ok(Response::new(pb::DisableUserResponse {
            user: Some(user_to_proto(&user)),
        }))
    }

    #[tracing::instrument(name = "identity.set_user_roles", skip_all)]
    async fn set_user_roles(
        &self,
        request: Request<pb::SetUserRolesRequest>,
    ) -> Result<Response<pb::SetUserRolesResponse>, Status> {
        let principal = self.caller(&request).await?;
        let body = request.get_ref();
        let roles = Role::parse_set(body.roles.iter().map(String::as_str))?;
        let mut user = self.target_user(&principal, &body.user_id).await?;
        if !self.store.set_roles(&user.user_id, &roles).await? {
            return Err(ServiceError::conflict(
                "the last enabled operator keeps the operator role",
            )
            .into());
        }
        let actor = principal.user_id().unwrap_or_default().to_owned();
        let names: Vec<&str> = roles.iter().map(|role| role.as_str()).collect();
        self.store
            .audit(
                "roles_changed",
                Some(&user.user_id),
                &format!("{} by {actor}", names.join(",")),
            )
            .await?;
        user.roles = roles;
        Ok(Response::new(pb::SetUserRolesResponse {
            user: Some(user_to_proto(&user)),
        }))
    }

    #[tracing::instrument(name = "identity.list_revoked_sessions", skip_all)]
    async fn list_revoked_sessions(
        &self,
        request: Request<pb::ListRevokedSessionsRequest>,
    ) -> Result<Response<pb::ListRevokedSessionsResponse>, Status> {
        let page = revocation_page(&self.store, request.into_inner()).await?;
        Ok(Response::new(page))
    }

    #[tracing::instrument(name = "identity.issue_service_token", skip_all)]
    async fn issue_service_token(
        &self,
        request: Request<pb::IssueServiceTokenRequest>,
    ) -> Result<Response<pb::IssueServiceTokenResponse>, Status> {
        let client = self.client_address(&request).await;
        let body = request.into_inner();
        let throttle = ThrottleKeys::for_secret("service_token", &body.client_id, &client);
        self.reserve_attempt(&throttle).await?;
        let presented: [u8; 32] = Sha256::digest(body.client_secret.as_bytes()).into();
        let known = self
            .service_clients
            .get(&body.client_id)
            .is_some_and(|expected| bool::from(expected.ct_eq(&presented)));
        if !known {
            tracing::warn!(client_id = %body.client_id, "service token refused");
            return Err(IdentityError::InvalidClient.into());
        }
        self.store.clear_login_failures(&throttle.both()).await?;
        let now = chrono::Utc::now().timestamp();
        let access_token = self.keys.sign(&Claims {
            iss: ISSUER.into(),
            aud: AUDIENCE.into(),
            sub: format!("{SERVICE_SUBJECT_PREFIX}{}", body.client_id),
            exp: now + ACCESS_TOKEN_TTL_SECONDS,
            nbf: now,
            iat: now,
            jti: uuid::Uuid::new_v4().to_string(),
            roles: Vec::new(),
            typ: TYPE_SERVICE.into(),
            sid: None,
        })?;
        Ok(Response::new(pb::IssueServiceTokenResponse {
            access_token,
            token_type: "Bearer".into(),
            expires_in: ACCESS_TOKEN_TTL_SECONDS,
        }))
    }
}
