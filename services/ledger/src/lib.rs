//! The ledger service: the bank's double-entry journal, balances and atomic
//! transfers, in a database of its own.

pub mod api;
pub mod engine;
pub mod store;

/// The ledger's rules live in the IO-free domain crate.
pub use bank_domain::ledger as domain;

use std::{net::SocketAddr, sync::Arc};

use bank_kit::{
    auth::TokenVerifier,
    config::{ConfigError, Env},
    db,
    grpc::{self, GrpcApp},
    tls::{Connector, TlsSettings},
};
use bank_proto::ledger::v1::ledger_service_server::LedgerServiceServer;

/// The variable naming the address the ledger listens on, and its default.
pub const LISTEN: (&str, &str) = ("LEDGER_LISTEN_ADDR", "127.0.0.1:50053");

/// The ledger's configuration, read once at start.
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
    pub tls: TlsSettings,
    /// Whether server reflection is served (`BANK_GRPC_REFLECTION`).
    pub reflection: bool,
    /// How often the ledger verifies what it wrote since the last round
    /// (`LEDGER_VERIFY_INTERVAL_SECONDS`, default 60; 0 turns it off).
    pub verify_interval: Option<std::time::Duration>,
}

impl Config {
    pub fn from_env(env: &Env) -> Result<Config, ConfigError> {
        let listen_addr = env.socket_addr(LISTEN.0, LISTEN.1)?;
        let admin_listen_addr = env.socket_addr("LEDGER_ADMIN_LISTEN_ADDR", "127.0.0.1:9053")?;
        let database_url =
            env.database_url("LEDGER_DATABASE_URL", "sqlite://var/ledger.db?mode=rwc")?;
        Ok(Config {
            listen_addr,
            admin_listen_addr,
            migration_database_url: env
                .migration_database_url("LEDGER_MIGRATION_DATABASE_URL", &database_url)?,
            database_url,
            identity_endpoint: env.endpoint("IDENTITY_ENDPOINT", "http://127.0.0.1:50051")?,
            tls: TlsSettings::from_env(env)?,
            reflection: grpc::reflection_from_env(env)?,
            verify_interval: match env.parse::<u64>("LEDGER_VERIFY_INTERVAL_SECONDS", 60)? {
                0 => None,
                seconds => Some(std::time::Duration::from_secs(seconds)),
            },
        })
    }
}

/// What `bank-ledger migrate` does: applies the migrations (as the schema owner
/// of `LEDGER_MIGRATION_DATABASE_URL` when set, granting the service's role
/// what it needs) and returns, so that a Job or an init container migrates with
/// the owner's credentials and the service runs without them.
pub async fn migrate(config: &Config) -> anyhow::Result<()> {
    db::migrate_service_database::<store::migrations::Migrator>(
        "LEDGER",
        &config.database_url,
        config.migration_database_url.as_deref(),
        store::GRANTS,
    )
    .await
}

/// Says so at start when the ledger's PostgreSQL database compares text by a
/// locale's rules: every id comparison of a posting then goes through the C
/// library, about a tenth of the database's time per posting (ARCHITECTURE.md,
/// "Lookups stay cheap"). Nothing else depends on it.
async fn warn_unless_bytewise(connection: &sea_orm::DatabaseConnection) {
    match db::collation(connection).await {
        Ok(Some(collation)) if !collation.is_bytewise() => tracing::warn!(
            provider = %collation.provider,
            collation = %collation.name,
            "the ledger's database does not use the C collation; postings work the same but compare their ids more slowly (create the database with LC_COLLATE 'C', see deploy/postgres-init.sql)"
        ),
        Ok(_) => {}
        Err(error) => tracing::debug!(error = %error, "could not read the database's collation"),
    }
}

/// Connects, migrates, and binds the ledger's gRPC server.
pub async fn build(config: &Config) -> anyhow::Result<GrpcApp> {
    let connection = db::open_service_database::<store::migrations::Migrator>(
        "LEDGER",
        &config.database_url,
        config.migration_database_url.as_deref(),
        store::GRANTS,
    )
    .await?;
    warn_unless_bytewise(&connection).await;
    let store = Arc::new(store::LedgerStore::new(connection.clone()));
    let engine = engine::PostingEngine::start(Arc::clone(&store), engine::GroupConfig::default());
    engine::start_hold_sweep(Arc::clone(&store), engine::HOLD_SWEEP_INTERVAL);
    if let Some(interval) = config.verify_interval {
        engine::start_verifier(Arc::clone(&store), interval);
    }
    let connector = Connector::new(&config.tls)?;
    let verifier = TokenVerifier::remote(&config.identity_endpoint, &connector)?;
    let service_name = grpc::service_name::<LedgerServiceServer<api::LedgerApi>>();
    let service_routes = grpc::service_routes(service_name, config.reflection).await?;
    let server = LedgerServiceServer::new(api::LedgerApi::new(store, engine, verifier))
        .max_decoding_message_size(grpc::MAX_MESSAGE_BYTES);
    let routes = service_routes.routes.add_service(server);
    let spec = grpc::ServiceSpec {
        service_name,
        variable_prefix: "LEDGER",
        listen_addr: config.listen_addr,
        admin_listen_addr: config.admin_listen_addr,
        database: connection,
        tls: config.tls.clone(),
    };
    GrpcApp::bind(spec, routes, service_routes.health).await
}
