//! The identity service: users, credentials (Argon2id), sessions with rotating
//! refresh tokens, EdDSA-signed access tokens and the JWKS that verifies them.

pub mod api;
pub mod domain;
pub mod keys;
pub mod passwords;
pub mod store;

use std::{collections::HashMap, net::SocketAddr, path::PathBuf, sync::Arc};

use anyhow::Context;
use bank_kit::{
    auth::TokenVerifier,
    config::{ConfigError, Env},
    db,
    grpc::{self, GrpcApp},
};
use bank_proto::identity::v1::identity_service_server::IdentityServiceServer;
use secrecy::{ExposeSecret, SecretString};

use crate::domain::{Email, NewPassword, PasswordContext};

/// The full name of an operator the bootstrap variables create.
pub const BOOTSTRAP_OPERATOR_NAME: &str = "Operator";

/// The operator ensured at start.
#[derive(Clone)]
pub struct BootstrapOperator {
    pub email: String,
    pub password: SecretString,
}

impl std::fmt::Debug for BootstrapOperator {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("BootstrapOperator")
            .field("email", &self.email)
            .field("password", &"[redacted]")
            .finish()
    }
}

/// The variable naming the address identity listens on, and its default.
pub const LISTEN: (&str, &str) = ("IDENTITY_LISTEN_ADDR", "127.0.0.1:50051");

/// Identity's configuration, read once at start.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen_addr: SocketAddr,
    /// Plain HTTP for probes and scrapers: `/livez`, `/readyz`, `/metrics`.
    pub admin_listen_addr: SocketAddr,
    pub database_url: String,
    /// PostgreSQL only: the schema owner's URL the migrations run with, when the
    /// service runs as a restricted role (see `bank_kit::db::TableGrant`).
    pub migration_database_url: Option<String>,
    /// Directory of the PEM signing keys; generated there when empty.
    pub signing_keys_dir: PathBuf,
    pub bootstrap_operator: Option<BootstrapOperator>,
    /// Service principals allowed to use IssueServiceToken: client id -> secret.
    pub service_clients: HashMap<String, SecretString>,
    pub session_idle_timeout: chrono::Duration,
    pub session_absolute_lifetime: chrono::Duration,
    pub tls: bank_kit::tls::TlsSettings,
    /// Whether server reflection is served (`BANK_GRPC_REFLECTION`).
    pub reflection: bool,
    /// The backoff after failed logins; fixed in code, set here by tests.
    pub login_throttle: domain::LoginThrottle,
}

impl Config {
    pub fn from_env(env: &Env) -> Result<Config, ConfigError> {
        let bootstrap_operator = match (
            env.optional("BANK_BOOTSTRAP_OPERATOR_EMAIL"),
            env.secret("BANK_BOOTSTRAP_OPERATOR_PASSWORD"),
        ) {
            (None, None) => None,
            (Some(email), Some(password)) => {
                Email::parse(&email).map_err(|error| {
                    ConfigError::new("BANK_BOOTSTRAP_OPERATOR_EMAIL", error.to_string())
                })?;
                let context = PasswordContext::new(&email, BOOTSTRAP_OPERATOR_NAME);
                NewPassword::parse(password.expose_secret(), &context).map_err(|error| {
                    ConfigError::new("BANK_BOOTSTRAP_OPERATOR_PASSWORD", error.to_string())
                })?;
                Some(BootstrapOperator { email, password })
            }
            (Some(_), None) => {
                return Err(ConfigError::new(
                    "BANK_BOOTSTRAP_OPERATOR_PASSWORD",
                    "must be set together with BANK_BOOTSTRAP_OPERATOR_EMAIL",
                ));
            }
            (None, Some(_)) => {
                return Err(ConfigError::new(
                    "BANK_BOOTSTRAP_OPERATOR_EMAIL",
                    "must be set together with BANK_BOOTSTRAP_OPERATOR_PASSWORD",
                ));
            }
        };
        let listen_addr = env.socket_addr(LISTEN.0, LISTEN.1)?;
        let admin_listen_addr = env.socket_addr("IDENTITY_ADMIN_LISTEN_ADDR", "127.0.0.1:9051")?;
        let database_url =
            env.database_url("IDENTITY_DATABASE_URL", "sqlite://var/identity.db?mode=rwc")?;
        Ok(Config {
            listen_addr,
            admin_listen_addr,
            migration_database_url: env
                .migration_database_url("IDENTITY_MIGRATION_DATABASE_URL", &database_url)?,
            database_url,
            signing_keys_dir: PathBuf::from(
                env.string("IDENTITY_SIGNING_KEYS_DIR", "var/identity-keys"),
            ),
            bootstrap_operator,
            service_clients: parse_service_clients(env)?,
            session_idle_timeout: chrono::Duration::minutes(bounded(
                env,
                "IDENTITY_SESSION_IDLE_MINUTES",
                30,
                1..=24 * 60,
            )?),
            session_absolute_lifetime: chrono::Duration::hours(bounded(
                env,
                "IDENTITY_SESSION_LIFETIME_HOURS",
                12,
                1..=24 * 90,
            )?),
            login_throttle: domain::LoginThrottle::default(),
            tls: bank_kit::tls::TlsSettings::from_env(env)?,
            reflection: grpc::reflection_from_env(env)?,
        })
    }
}

/// A whole number in `range`, or an error naming the variable.
fn bounded(
    env: &Env,
    variable: &str,
    default: i64,
    range: std::ops::RangeInclusive<i64>,
) -> Result<i64, ConfigError> {
    let value: i64 = env.parse(variable, default)?;
    if range.contains(&value) {
        Ok(value)
    } else {
        Err(ConfigError::new(
            variable,
            format!("must be between {} and {}", range.start(), range.end()),
        ))
    }
}

/// `IDENTITY_SERVICE_CLIENTS`: comma-separated `client_id=secret` pairs.
fn parse_service_clients(env: &Env) -> Result<HashMap<String, SecretString>, ConfigError> {
    const VAR: &str = "IDENTITY_SERVICE_CLIENTS";
    let mut clients = HashMap::new();
    let Some(raw) = env.optional(VAR) else {
        return Ok(clients);
    };
    for pair in raw
        .split(',')
        .map(str::trim)
        .filter(|pair| !pair.is_empty())
    {
        let (id, secret) = pair.split_once('=').ok_or_else(|| {
            ConfigError::new(VAR, "expected client_id=secret pairs separated by commas")
        })?;
        if id.is_empty() || secret.len() < 16 {
            return Err(ConfigError::new(
                VAR,
                "each client needs an id and a secret of at least 16 characters",
            ));
        }
        clients.insert(id.to_owned(), SecretString::from(secret.to_owned()));
    }
    Ok(clients)
}

/// What `bank-identity migrate` does: applies the migrations (as the schema owner
/// of `IDENTITY_MIGRATION_DATABASE_URL` when set, granting the service's role
/// what it needs) and returns, so that a Job or an init container migrates with
/// the owner's credentials and the service runs without them.
pub async fn migrate(config: &Config) -> anyhow::Result<()> {
    db::migrate_service_database::<store::migrations::Migrator>(
        "IDENTITY",
        &config.database_url,
        config.migration_database_url.as_deref(),
        store::GRANTS,
    )
    .await
}

/// Connects, migrates, loads the signing keys, ensures the bootstrap operator,
/// and binds identity's gRPC server.
pub async fn build(config: &Config) -> anyhow::Result<GrpcApp> {
    let connection = db::open_service_database::<store::migrations::Migrator>(
        "IDENTITY",
        &config.database_url,
        config.migration_database_url.as_deref(),
        store::GRANTS,
    )
    .await?;
    let keys = Arc::new(
        keys::KeyRing::load_or_generate(&config.signing_keys_dir)
            .context("IDENTITY_SIGNING_KEYS_DIR: cannot load or create the signing keys")?,
    );
    let store = Arc::new(store::IdentityStore::new(connection.clone()));
    let api = api::IdentityApi {
        verifier: TokenVerifier::fixed_with_revocations(
            &keys.jwks(),
            api::LocalRevocations(store.clone()),
        ),
        store,
        keys,
        hasher: passwords::PasswordHasherPool::new()?,
        sessions: store::SessionPolicy {
            idle_timeout: config.session_idle_timeout,
            absolute_lifetime: config.session_absolute_lifetime,
        },
        login_throttle: config.login_throttle,
        service_clients: config
            .service_clients
            .iter()
            .map(|(id, secret)| (id.clone(), api::client_secret_digest(secret)))
            .collect(),
    };
    if let Some(operator) = &config.bootstrap_operator {
        let email = Email::parse(&operator.email)?;
        let context = PasswordContext::new(email.as_str(), BOOTSTRAP_OPERATOR_NAME);
        let password = NewPassword::parse(operator.password.expose_secret(), &context)?;
        api.ensure_operator(&email, &password).await?;
        tracing::info!(email = %email, "bootstrap operator ensured");
    }
    let service_name = grpc::service_name::<IdentityServiceServer<api::IdentityApi>>();
    let service_routes = grpc::service_routes(service_name, config.reflection).await?;
    let server = IdentityServiceServer::new(api).max_decoding_message_size(grpc::MAX_MESSAGE_BYTES);
    let routes = service_routes.routes.add_service(server);
    let spec = grpc::ServiceSpec {
        service_name,
        variable_prefix: "IDENTITY",
        listen_addr: config.listen_addr,
        admin_listen_addr: config.admin_listen_addr,
        database: connection,
        tls: config.tls.clone(),
    };
    GrpcApp::bind(spec, routes, service_routes.health).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_lifetimes_out_of_range_name_their_variable() {
        for (variable, value) in [
            ("IDENTITY_SESSION_IDLE_MINUTES", "0"),
            ("IDENTITY_SESSION_IDLE_MINUTES", "-5"),
            ("IDENTITY_SESSION_LIFETIME_HOURS", "2000000000"),
        ] {
            let error = Config::from_env(&Env::from_pairs([(variable, value)])).err();
            assert_eq!(error.map(|error| error.variable), Some(variable.to_owned()));
        }
    }

    /// The domain module stays free of IO: storage and RPC types are mapped in
    /// the store and api modules.
    #[test]
    fn the_domain_names_no_storage_or_rpc_crate() {
        let source = include_str!("domain.rs");
        for forbidden in ["sea_orm", "sqlx", "tonic", "tokio", "bank_kit"] {
            assert!(!source.contains(forbidden), "domain.rs names {forbidden}");
        }
    }

    #[test]
    fn service_clients_need_long_secrets() {
        let short = Env::from_pairs([("IDENTITY_SERVICE_CLIENTS", "account=short")]);
        assert!(Config::from_env(&short).is_err());
        let good = Env::from_pairs([("IDENTITY_SERVICE_CLIENTS", "account=0123456789abcdef")]);
        let config = Config::from_env(&good).unwrap_or_else(|error| panic!("{error}"));
        assert!(config.service_clients.contains_key("account"));
    }
}
