//! The account service: customer accounts, their numbers, owners and lifecycle,
//! mirrored into the ledger that holds their money.

pub mod api;
pub mod domain;
pub mod store;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use bank_kit::{
    auth::{ServiceTokenSource, TokenVerifier},
    config::{ConfigError, Env},
    db,
    grpc::{self, GrpcApp},
    tls::{Connector, TlsSettings},
};
use bank_proto::{
    account::v1::account_service_server::AccountServiceServer,
    ledger::v1::ledger_service_client::LedgerServiceClient,
};
use secrecy::SecretString;

/// The variable naming the address the account service listens on, and its default.
pub const LISTEN: (&str, &str) = ("ACCOUNT_LISTEN_ADDR", "127.0.0.1:50052");

/// The account service's configuration, read once at start.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen_addr: SocketAddr,
    /// Plain HTTP for probes and scrapers: `/livez`, `/readyz`, `/metrics`.
    pub admin_listen_addr: SocketAddr,
    pub database_url: String,
    /// PostgreSQL only: the schema owner's URL the migrations run with, when the
    /// service runs as a restricted role (see `bank_kit::db::TableGrant`).
    pub migration_database_url: Option<String>,
    pub identity_endpoint: String,
    pub ledger_endpoint: String,
    /// This service's principal at identity, for calling the ledger's internal
    /// methods.
    pub service_client_id: String,
    pub service_client_secret: SecretString,
    /// Accounts a customer may hold open at once (closed ones do not count).
    pub max_open_per_user: u32,
    pub tls: TlsSettings,
    /// Whether server reflection is served (`BANK_GRPC_REFLECTION`).
    pub reflection: bool,
}

impl Config {
    pub fn from_env(env: &Env) -> Result<Config, ConfigError> {
        let listen_addr = env.socket_addr(LISTEN.0, LISTEN.1)?;
        let admin_listen_addr = env.socket_addr("ACCOUNT_ADMIN_LISTEN_ADDR", "127.0.0.1:9052")?;
        let database_url =
            env.database_url("ACCOUNT_DATABASE_URL", "sqlite://var/account.db?mode=rwc")?;
        Ok(Config {
            listen_addr,
            admin_listen_addr,
            migration_database_url: env.migration_database_url("ACCOUNT_MIGRATION_DATABASE_URL", &database_url)?,
            database_url,
            identity_endpoint: env.endpoint("IDENTITY_ENDPOINT", "http://127.0.0.1:50051")?,
            ledger_endpoint: env.endpoint("LEDGER_ENDPOINT", "http://127.0.0.1:50053")?,
            service_client_id: env.string("ACCOUNT_SERVICE_CLIENT_ID", "account"),
            service_client_secret: env.secret("ACCOUNT_SERVICE_CLIENT_SECRET").ok_or_else(|| {
                ConfigError::new(
                    "ACCOUNT_SERVICE_CLIENT_SECRET",
                    "is required: the secret of this service's entry in IDENTITY_SERVICE_CLIENTS",
                )
            })?,
            max_open_per_user: match env.parse("ACCOUNT_MAX_OPEN_PER_USER", 10_u32)? {
                0 => {
                    return Err(ConfigError::new(
                        "ACCOUNT_MAX_OPEN_PER_USER",
                        "must be at least 1",
                    ));
                }
                limit => limit,
            },
            tls: TlsSettings::from_env(env)?,
            reflection: grpc::reflection_from_env(env)?,
        })
    }
}

/// What `bank-account migrate` does: applies the migrations (as the schema owner
/// of `ACCOUNT_MIGRATION_DATABASE_URL` when set, granting the service's role
/// what it needs) and returns, so that a Job or an init container migrates with
/// the owner's credentials and the service runs without them.
pub async fn migrate(config: &Config) -> anyhow::Result<()> {
    db::migrate_service_database::<store::migrations::Migrator>(
        "ACCOUNT",
        &config.database_url,
        config.migration_database_url.as_deref(),
        store::GRANTS,
    )
    .await
}

/// Connects, migrates, and binds the account service's gRPC server.
pub async fn build(config: &Config) -> anyhow::Result<GrpcApp> {
    let connection = db::open_service_database::<store::migrations::Migrator>(
        "ACCOUNT",
        &config.database_url,
        config.migration_database_url.as_deref(),
        store::GRANTS,
    )
    .await?;
    let connector = Connector::new(&config.tls)?;
    // A pool, so that each call to the ledger is a CLIENT span of its caller's
    // trace (see `grpc::Pool`).
    let ledger_channel = grpc::Pool::new(
        "LEDGER_ENDPOINT",
        &config.ledger_endpoint,
        &connector,
        Duration::from_secs(10),
        2,
    )?;
    let api = api::AccountApi::new(
        Arc::new(store::AccountStore::new(connection.clone())),
        TokenVerifier::remote(&config.identity_endpoint, &connector)?,
        LedgerServiceClient::new(ledger_channel),
        ServiceTokenSource::new(
            &config.identity_endpoint,
            &connector,
            config.service_client_id.clone(),
            config.service_client_secret.clone(),
        )?,
        config.max_open_per_user,
    );
    let service_name = grpc::service_name::<AccountServiceServer<api::AccountApi>>();
    let service_routes = grpc::service_routes(service_name, config.reflection).await?;
    let server = AccountServiceServer::new(api).max_decoding_message_size(grpc::MAX_MESSAGE_BYTES);
    let routes = service_routes.routes.add_service(server);
    let spec = grpc::ServiceSpec {
        service_name,
        variable_prefix: "ACCOUNT",
        listen_addr: config.listen_addr,
        admin_listen_addr: config.admin_listen_addr,
        database: connection,
        tls: config.tls.clone(),
    };
    GrpcApp::bind(spec, routes, service_routes.health).await
}

#[cfg(test)]
mod tests {
    /// The domain module stays free of IO: storage and RPC types are mapped in
    /// the store and api modules.
    #[test]
    fn the_domain_names_no_storage_or_rpc_crate() {
        let source = include_str!("domain.rs");
        for forbidden in ["sea_orm", "sqlx", "tonic", "tokio", "bank_kit"] {
            assert!(!source.contains(forbidden), "domain.rs names {forbidden}");
        }
    }
}
