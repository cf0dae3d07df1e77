//! The REST gateway: the edge external clients talk to. It validates JWTs,
//! enforces limits, and forwards each request to a service over gRPC with the
//! caller's token, which the service verifies again.

pub mod client;
pub mod extract;
pub mod metrics;
pub mod problem;
pub mod rate_limit;
pub mod routes;
pub mod serve;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context;
use axum::{
    Router,
    extract::{DefaultBodyLimit, Request},
    http::{HeaderName, HeaderValue, Method, header},
    middleware::{self, Next},
    response::Response,
    routing::{get, post},
};
use bank_kit::{
    ErrorCode,
    auth::TokenVerifier,
    config::{ConfigError, Env},
    grpc::{self, Pool},
    tls::{Connector, ServerTls, TlsSettings},
};
use bank_proto::{
    account::v1::account_service_client::AccountServiceClient,
    identity::v1::identity_service_client::IdentityServiceClient,
    ledger::v1::ledger_service_client::LedgerServiceClient,
};
use tokio::net::TcpListener;
use tonic::transport::Channel;
use tower_http::{
    cors::{AllowOrigin, CorsLayer},
    trace::TraceLayer,
};

use crate::{
    client::{ClientAddress, TrustedProxies},
    problem::{ApiError, REQUEST_ID},
    rate_limit::{Decision, Quota, RateLimiter},
};

/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// The largest transfer batch body accepted.
pub const MAX_BATCH_BODY_BYTES: usize = 256 * 1024;

/// The variable naming the address the gateway listens on, and its default.
pub const LISTEN: (&str, &str) = ("GATEWAY_LISTEN_ADDR", "127.0.0.1:8080");

/// The gateway's configuration, read once at start.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen_addr: SocketAddr,
    pub identity_endpoint: String,
    pub account_endpoint: String,
    pub ledger_endpoint: String,
    pub cors_allowed_origins: Vec<HeaderValue>,
    pub request_timeout: Duration,
    /// Unset: buckets in process. Set: buckets in Redis, shared by all replicas.
    pub redis_url: Option<String>,
    /// Prefix of the Redis keys, so that several deployments can share a server.
    pub rate_limit_namespace: String,
    /// Per client address, for every `/v1/` route but `/v1/auth/*`.
    pub api_quota: Quota,
    /// Per client address, for `/v1/auth/*`: tight, against credential stuffing.
    pub auth_quota: Quota,
    /// Load balancers and ingresses whose `X-Forwarded-For` names the client.
    pub trusted_proxies: TrustedProxies,
    /// The gateway's own secret at identity (client id `gateway`), with which it
    /// vouches for the client addresses it reports, so that identity throttles
    /// logins per client. Unset: identity counts every login under the
    /// gateway's own address.
    pub service_client_secret: Option<secrecy::SecretString>,
    /// HTTPS (with client certificates when a client CA is set) instead of
    /// plain HTTP, and the CA that verifies `https://` services.
    pub tls: TlsSettings,
    /// How long clients may take to send a request head, and to leave a
    /// connection idle ([`HEADER_READ_TIMEOUT`], [`IDLE_TIMEOUT`]).
    pub timeouts: serve::Timeouts,
}

impl Config {
    pub fn from_env(env: &Env) -> Result<Config, ConfigError> {
        let origins = env
            .string("BANK_CORS_ALLOWED_ORIGINS", "")
            .split(',')
            .map(str::trim)
            .filter(|origin| !origin.is_empty())
            .map(|origin| {
                let valid = (origin.starts_with("https://") || origin.starts_with("http://"))
                    && !origin.ends_with('/')
                    && origin != "*";
                if !valid {
                    return Err(ConfigError::new(
                        "BANK_CORS_ALLOWED_ORIGINS",
                        format!("{origin:?} is not an origin like https://app.example.com"),
                    ));
                }
                HeaderValue::from_str(origin).map_err(|_| {
                    ConfigError::new(
                        "BANK_CORS_ALLOWED_ORIGINS",
                        format!("{origin:?} is not valid"),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let timeout_seconds: u64 = env.parse("GATEWAY_REQUEST_TIMEOUT_SECONDS", 10)?;
        if timeout_seconds == 0 || timeout_seconds > 300 {
            return Err(ConfigError::new(
                "GATEWAY_REQUEST_TIMEOUT_SECONDS",
                "must be between 1 and 300",
            ));
        }
        let redis_url = env.optional("REDIS_URL");
        if let Some(url) = &redis_url
            && !(url.starts_with("redis://") || url.starts_with("rediss://"))
        {
            return Err(ConfigError::new(
                "REDIS_URL",
                "must start with redis:// or rediss:// (value not shown)",
            ));
        }
        if redis_url
            .as_ref()
            .is_some_and(|url| url.contains("#insecure"))
        {
            return Err(ConfigError::new(
                "REDIS_URL",
                "#insecure would skip verifying Redis' certificate: use BANK_TLS_CA_FILE for a private CA",
            ));
        }
        let api_per_minute: u32 = env.parse("GATEWAY_RATE_LIMIT_PER_MINUTE", 1200)?;
        let auth_per_minute: u32 = env.parse("GATEWAY_AUTH_RATE_LIMIT_PER_MINUTE", 30)?;
        for (variable, value) in [
            ("GATEWAY_RATE_LIMIT_PER_MINUTE", api_per_minute),
            ("GATEWAY_AUTH_RATE_LIMIT_PER_MINUTE", auth_per_minute),
        ] {
            if value == 0 {
                return Err(ConfigError::new(variable, "must be at least 1"));
            }
        }
        Ok(Config {
            listen_addr: env.socket_addr(LISTEN.0, LISTEN.1)?,
            identity_endpoint: env.endpoint("IDENTITY_ENDPOINT", "http://127.0.0.1:50051")?,
            account_endpoint: env.endpoint("ACCOUNT_ENDPOINT", "http://127.0.0.1:50052")?,
            ledger_endpoint: env.endpoint("LEDGER_ENDPOINT", "http://127.0.0.1:50053")?,
            cors_allowed_origins: origins,
            request_timeout: Duration::from_secs(timeout_seconds),
            redis_url,
            rate_limit_namespace: "bank".to_owned(),
            api_quota: Quota::per_minute(api_per_minute),
            auth_quota: Quota::per_minute(auth_per_minute),
            trusted_proxies: TrustedProxies::parse(&env.string("GATEWAY_TRUSTED_PROXIES", ""))
                .map_err(|reason| ConfigError::new("GATEWAY_TRUSTED_PROXIES", reason))?,
            service_client_secret: env.secret("GATEWAY_SERVICE_CLIENT_SECRET"),
            tls: TlsSettings::from_env(env)?,
            timeouts: serve::Timeouts {
                header_read: HEADER_READ_TIMEOUT,
                idle: IDLE_TIMEOUT,
            },
        })
    }
}

/// Channels used by the readiness check, and its last answer.
#[derive(Clone)]
pub struct HealthChannels {
    pub identity: Channel,
    pub account: Channel,
    pub ledger: Channel,
    last_seen: std::sync::Arc<
        std::sync::Mutex<Option<(std::time::Instant, routes::ops::DownstreamStates)>>,
    >,
}

impl HealthChannels {
    pub fn new(identity: Channel, account: Channel, ledger: Channel) -> HealthChannels {
        HealthChannels {
            identity,
            account,
            ledger,
            last_seen: std::sync::Arc::default(),
        }
    }

    /// The states seen within the last `ttl`, if any.
    pub fn recent(&self, ttl: Duration) -> Option<routes::ops::DownstreamStates> {
        let last_seen = self.last_seen.lock().ok()?;
        last_seen
            .as_ref()
            .filter(|(seen_at, _)| seen_at.elapsed() < ttl)
            .map(|(_, states)| states.clone())
    }

    pub fn remember(&self, states: routes::ops::DownstreamStates) {
        if let Ok(mut last_seen) = self.last_seen.lock() {
            *last_seen = Some((std::time::Instant::now(), states));
        }
    }
}

/// What every handler shares, behind one pointer: a request clones the state
/// for each extractor and middleware that takes it, and what it holds (the
/// clients' pools, the verifier, the health channels) is many pointers.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The gateway's shared state: a pool of HTTP/2 connections per service.
pub struct Shared {
    pub identity: IdentityServiceClient<Pool>,
    pub account: AccountServiceClient<Pool>,
    pub ledger: LedgerServiceClient<Pool>,
    pub verifier: TokenVerifier,
    pub health_channels: HealthChannels,
    /// The JWKS document last fetched from identity, and when.
    pub jwks: Arc<tokio::sync::Mutex<Option<(tokio::time::Instant, routes::auth::JwksView)>>>,
    /// The gateway's service token, to vouch for client addresses to identity.
    pub service_token: Option<bank_kit::auth::ServiceTokenSource>,
}

/// HTTP/2 connections the gateway keeps to each service (see [`Pool`]).
const UPSTREAM_CONNECTIONS: usize = 4;

/// A client that sends no complete request head in this long is disconnected:
/// slow senders cannot hold connections open, and an HTTP/1.1 connection idle
/// between requests is closed after as long.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection with no request open for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Streams one client HTTP/2 connection may have open at once.
const MAX_CLIENT_STREAMS: u32 = 128;

/// The gateway, bound to its port.
pub struct GatewayApp {
    listener: TcpListener,
    tls: Option<ServerTls>,
    timeouts: serve::Timeouts,
    router: Router,
}

impl GatewayApp {
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` completes, then drains in-flight requests.
    pub async fn run_until_stopped(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        serve::serve(
            self.listener,
            self.tls,
            self.timeouts,
            self.router,
            shutdown,
        )
        .await;
        Ok(())
    }
}

/// Builds the router and binds the listener.
pub async fn build(config: &Config) -> anyhow::Result<GatewayApp> {
    let timeout = config.request_timeout;
    let connector = Connector::new(&config.tls)?;
    let pool = |variable: &str, url: &str| {
        Pool::new(variable, url, &connector, timeout, UPSTREAM_CONNECTIONS)
    };
    let channel = |variable: &str, url: &str| grpc::channel(variable, url, &connector, timeout);
    let state = AppState(Arc::new(Shared {
        identity: IdentityServiceClient::new(pool("IDENTITY_ENDPOINT", &config.identity_endpoint)?),
        account: AccountServiceClient::new(pool("ACCOUNT_ENDPOINT", &config.account_endpoint)?),
        ledger: LedgerServiceClient::new(pool("LEDGER_ENDPOINT", &config.ledger_endpoint)?),
        verifier: TokenVerifier::remote(&config.identity_endpoint, &connector)?,
        service_token: match &config.service_client_secret {
            Some(secret) => Some(bank_kit::auth::ServiceTokenSource::new(
                &config.identity_endpoint,
                &connector,
                bank_kit::auth::GATEWAY_CLIENT_ID.to_owned(),
                secret.clone(),
            )?),
            None => {
                tracing::warn!(
                    "GATEWAY_SERVICE_CLIENT_SECRET is unset: identity throttles every login under the gateway's own address"
                );
                None
            }
        },
        jwks: Arc::default(),
        health_channels: HealthChannels::new(
            channel("IDENTITY_ENDPOINT", &config.identity_endpoint)?,
            channel("ACCOUNT_ENDPOINT", &config.account_endpoint)?,
            channel("LEDGER_ENDPOINT", &config.ledger_endpoint)?,
        ),
    }));
    let limiter = match &config.redis_url {
        Some(url) => RateLimiter::redis(url, &config.rate_limit_namespace, &config.tls)
            .await
            .map_err(|error| anyhow::anyhow!("REDIS_URL: {error}"))?,
        None => RateLimiter::in_process(),
    };
    crate::metrics::install();
    let router = router(state, config, limiter);
    let listener = TcpListener::bind(config.listen_addr)
        .await
        .with_context(|| {
            format!(
                "GATEWAY_LISTEN_ADDR: cannot listen on {}",
                config.listen_addr
            )
        })?;
    let tls = ServerTls::new(&config.tls, &[b"h2", b"http/1.1"])?;
    Ok(GatewayApp {
        listener,
        tls,
        timeouts: config.timeouts,
        router,
    })
}

/// Every route, with the layers that guard them.
pub fn router(state: AppState, config: &Config, limiter: RateLimiter) -> Router {
    use routes::{accounts, admin, auth, ops, transfers};
    let api = Router::new()
        .route("/v1/auth/register", post(auth::register))
        .route("/v1/auth/login", post(auth::login))
        .route("/v1/auth/refresh", post(auth::refresh))
        .route("/v1/auth/logout", post(auth::logout))
        .route("/v1/me", get(auth::me))
        .route("/v1/me/password", post(auth::change_password))
        .route("/v1/accounts", post(accounts::open).get(accounts::list))
        .route("/v1/accounts/{id}", get(accounts::get))
        .route("/v1/accounts/{id}/balance", get(accounts::balance))
        .route(
            "/v1/accounts/{id}/transactions",
            get(accounts::transactions),
        )
        .route("/v1/accounts/{id}/close", post(accounts::close))
        .route("/v1/accounts/{id}/holds", get(accounts::holds))
        .route("/v1/transfers", post(transfers::create))
        .route("/v1/transfers/{id}", get(transfers::get))
        .route("/v1/transfers/{id}/post", post(transfers::post_hold))
        .route("/v1/transfers/{id}/void", post(transfers::void_hold))
        .route(
            "/v1/transfer-batches",
            post(transfers::create_batch).layer(DefaultBodyLimit::max(MAX_BATCH_BODY_BYTES)),
        )
        .route("/v1/admin/deposits", post(admin::deposit))
        .route("/v1/admin/withdrawals", post(admin::withdraw))
        .route("/v1/admin/accounts/{id}/freeze", post(admin::freeze))
        .route("/v1/admin/accounts/{id}/unfreeze", post(admin::unfreeze))
        .route("/v1/admin/transfers/{id}/reverse", post(admin::reverse))
        .route("/v1/admin/ledger/verify", get(admin::verify))
        .route("/.well-known/jwks.json", get(auth::jwks))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/openapi.json", get(ops::openapi_json))
        .route("/metrics", get(crate::metrics::render))
        .route_layer(middleware::from_fn(crate::metrics::track))
        .fallback(not_found)
        .with_state(state);

    let guards = Arc::new(Guards {
        timeout: config.request_timeout,
        trusted_proxies: config.trusted_proxies.clone(),
        limiter,
        quotas: Quotas {
            api: config.api_quota,
            auth: config.auth_quota,
        },
    });
    // One layer stack for every route: `Router::layer` boxes each layer it is
    // given again, and a request clones the whole stack of its route, so the
    // layers are stacked once here (outermost first) and given to the router
    // together, after routing (the request span names the matched route).
    let layers = tower::ServiceBuilder::new()
        // Outermost, so that the request's span and deadline live in the task
        // it runs the rest in: a client that hangs up never cancels the call it
        // started (see `bank_kit::detach`).
        .layer(middleware::from_fn(request_id))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|request: &Request| {
                    let span = bank_kit::telemetry::http_request_span(request);
                    if let Some(id) = request
                        .headers()
                        .get(REQUEST_ID_HEADER)
                        .and_then(|value| value.to_str().ok())
                    {
                        span.record("request_id", id);
                    }
                    span
                })
                .on_response(
                    |response: &Response, _latency: std::time::Duration, span: &tracing::Span| {
                        bank_kit::telemetry::record_http_response(span, response.status());
                    },
                ),
        )
        .layer(middleware::from_fn(trace_scope))
        .layer(cors(&config.cors_allowed_origins))
        // Inside the header layers, so the documents it writes get them too.
        .layer(middleware::from_fn(move |request, next| {
            guard(Arc::clone(&guards), request, next)
        }))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES));
    api.layer(layers)
}

/// What every answer says about how it may be used: never cached, framed,
/// sniffed, referred to or run as a page, and only ever fetched over HTTPS.
const SECURITY_HEADERS: [(HeaderName, &str); 6] = [
    (header::REFERRER_POLICY, "no-referrer"),
    (
        header::CONTENT_SECURITY_POLICY,
        "default-src 'none'; frame-ancestors 'none'",
    ),
    (
        header::STRICT_TRANSPORT_SECURITY,
        "max-age=63072000; includeSubDomains",
    ),
    (header::CACHE_CONTROL, "no-store"),
    (header::X_FRAME_OPTIONS, "DENY"),
    (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
];

/// Sets [`SECURITY_HEADERS`] on an answer, replacing what a handler set.
fn set_security_headers(response: &mut Response) {
    let headers = response.headers_mut();
    for (name, value) in SECURITY_HEADERS {
        headers.insert(name, HeaderValue::from_static(value));
    }
}

/// The answer of a handler that panicked.
fn internal_problem() -> Response {
    use axum::response::IntoResponse;
    ApiError::new(ErrorCode::Internal, "internal error").into_response()
}

const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// Gives every request an id (the client's `x-request-id` when it is sane), makes
/// it available to problem bodies, and echoes it in the response; the rest of
/// the stack runs detached (see `bank_kit::detach`), with the id.
async fn request_id(mut request: Request, next: Next) -> Response {
    let id = request
        .headers()
        .get(&REQUEST_ID_HEADER)
        .and_then(|value| value.to_str().ok())
        .filter(|value| {
            !value.is_empty()
                && value.len() <= 64
                && value
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
    if let Ok(value) = HeaderValue::from_str(&id) {
        request.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    let handler = REQUEST_ID.scope(id.clone(), next.run(request));
    let mut response = bank_kit::detach::detach(handler, internal_problem).await;
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    response
}

/// Makes the request's trace id available to problem bodies and outgoing calls,
/// inside the request's span: its OpenTelemetry trace's, or where no spans are
/// recorded the client's `traceparent`'s or a fresh one, which the request's
/// span then records for the logs. Sets [`SECURITY_HEADERS`] on the answer,
/// CORS preflights' included.
async fn trace_scope(request: Request, next: Next) -> Response {
    use bank_kit::telemetry;
    let trace_id = telemetry::current_trace_id()
        .or_else(|| telemetry::traceparent_trace_id(request.headers()))
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
    if !telemetry::recording_spans() {
        tracing::Span::current().record("trace_id", trace_id.as_str());
    }
    let mut response = telemetry::TRACE_ID.scope(trace_id, next.run(request)).await;
    set_security_headers(&mut response);
    response
}

/// What [`guard`] needs, shared by every request.
struct Guards {
    timeout: Duration,
    trusted_proxies: crate::client::TrustedProxies,
    limiter: RateLimiter,
    quotas: Quotas,
}

/// The guards every route runs inside the header layers, in one layer (each
/// `from_fn` layer costs a request an allocation and a clone of the stack
/// below it), outermost first: any error answer becomes a problem document
/// ([`as_problem`]), the request's deadline ([`deadline`]), the client's
/// address ([`crate::client::resolve`]) and its quota ([`rate_limit`]).
async fn guard(guards: Arc<Guards>, mut request: Request, next: Next) -> Response {
    crate::client::resolve(&guards.trusted_proxies, &mut request);
    let guarded = async {
        let quota = quota_of(guards.quotas, &request);
        match rate_limit(&guards.limiter, quota).await {
            Some(refusal) => refusal,
            None => next.run(request).await,
        }
    };
    as_problem(deadline(guards.timeout, guarded).await)
}

#[derive(Clone, Copy)]
struct Quotas {
    api: Quota,
    auth: Quota,
}

/// The quota a request counts against and the key of its client there, `None`
/// for a path no quota covers. Clients are told apart by their resolved address
/// (see [`crate::client`]).
fn quota_of(quotas: Quotas, request: &Request) -> Option<(String, Quota)> {
    let path = request.uri().path();
    let (class, quota) = if path.starts_with("/v1/auth/") {
        ("auth", quotas.auth)
    } else if path.starts_with("/v1/") {
        ("api", quotas.api)
    } else {
        return None;
    };
    let client = request
        .extensions()
        .get::<ClientAddress>()
        .map(|client| client.bucket())
        .unwrap_or_default();
    Some((format!("{class}:{client}"), quota))
}

/// The 429 answer, with `Retry-After`, for a client that has exceeded its
/// quota; `None` to let the request through.
async fn rate_limit(limiter: &RateLimiter, quota: Option<(String, Quota)>) -> Option<Response> {
    use axum::response::IntoResponse;
    let (key, quota) = quota?;
    match limiter.check(&key, quota).await {
        Decision::Allowed => None,
        Decision::Limited { retry_after } => {
            Some(ApiError::rate_limited(retry_after.as_secs_f64().ceil() as u64).into_response())
        }
    }
}

/// Answers 503 when a request takes longer than the configured deadline. The
/// deadline also travels with every call the request makes (`grpc-timeout`, see
/// [`routes::anonymous`]), so a service stops working on it when the gateway has
/// stopped waiting.
async fn deadline(limit: Duration, run: impl std::future::Future<Output = Response>) -> Response {
    let ends_at = tokio::time::Instant::now() + limit;
    let run = problem::DEADLINE.scope(ends_at, run);
    match tokio::time::timeout_at(ends_at, run).await {
        Ok(response) => response,
        Err(_) => {
            use axum::response::IntoResponse;
            ApiError::new(ErrorCode::Unavailable, "the request took too long").into_response()
        }
    }
}

fn cors(origins: &[HeaderValue]) -> CorsLayer {
    CorsLayer::new()
        .allow_origin(AllowOrigin::list(origins.iter().cloned()))
        .allow_methods([Method::GET, Method::POST])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            HeaderName::from_static("idempotency-key"),
            REQUEST_ID_HEADER,
        ])
        .expose_headers([REQUEST_ID_HEADER, header::RETRY_AFTER])
        .max_age(Duration::from_secs(600))
}

/// Turns any error response that is not yet a problem document (from a layer or
/// extractor outside our control) into one, so every error has the same shape.
fn as_problem(response: Response) -> Response {
    use axum::response::IntoResponse;
    let status = response.status();
    let is_problem = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes().starts_with(b"application/problem+json"));
    if !(status.is_client_error() || status.is_server_error()) || is_problem {
        return response;
    }
    let (code, detail) = match status.as_u16() {
        401 => (ErrorCode::Unauthenticated, "authentication required"),
        403 => (ErrorCode::Forbidden, "forbidden"),
        404 => (ErrorCode::NotFound, "not found"),
        405 => (
            ErrorCode::MethodNotAllowed,
            "method not allowed on this route",
        ),
        409 => (ErrorCode::Conflict, "conflict"),
        413 => (ErrorCode::PayloadTooLarge, "the body is larger than 64 KiB"),
        415 => (ErrorCode::UnsupportedMediaType, "unsupported media type"),
        429 => (ErrorCode::RateLimited, "too many requests"),
        503 => (ErrorCode::Unavailable, "service unavailable"),
        400..=499 => (ErrorCode::InvalidArgument, "the request is malformed"),
        _ => (ErrorCode::Internal, "internal error"),
    };
    let allow = response.headers().get(header::ALLOW).cloned();
    let mut problem = ApiError::new(code, detail).into_response();
    if let Some(allow) = allow {
        problem.headers_mut().insert(header::ALLOW, allow);
    }
    problem
}

async fn not_found() -> ApiError {
    ApiError::new(ErrorCode::NotFound, "no such route")
}

#[cfg(test)]
mod tests {
    use axum::http::StatusCode;

    use super::*;

    /// A request still running at its deadline is answered 503 with a problem
    /// document; one done in time is answered as it ended, its deadline known
    /// to what it calls.
    #[tokio::test]
    async fn a_request_past_its_deadline_is_answered_unavailable() {
        use axum::response::IntoResponse;
        let late = deadline(Duration::from_millis(20), std::future::pending()).await;
        assert_eq!(late.status(), StatusCode::SERVICE_UNAVAILABLE);
        let late = as_problem(late);
        assert!(
            late.headers()[header::CONTENT_TYPE]
                .as_bytes()
                .starts_with(b"application/problem+json")
        );

        let on_time = deadline(Duration::from_secs(5), async {
            assert!(problem::DEADLINE.try_with(|_| ()).is_ok());
            StatusCode::CREATED.into_response()
        })
        .await;
        assert_eq!(on_time.status(), StatusCode::CREATED);
    }

    /// An error answer that is not a problem document becomes one with the
    /// matching code; a success or a problem already is left as it is.
    #[test]
    fn error_answers_become_problem_documents() {
        use axum::response::IntoResponse;
        let plain = (StatusCode::PAYLOAD_TOO_LARGE, "too big").into_response();
        let problem = as_problem(plain);
        assert_eq!(problem.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert!(
            problem.headers()[header::CONTENT_TYPE]
                .as_bytes()
                .starts_with(b"application/problem+json")
        );
        let fine = as_problem(StatusCode::OK.into_response());
        assert_eq!(fine.status(), StatusCode::OK);
        assert!(fine.headers().get(header::CONTENT_TYPE).is_none());
    }
}
