//! The admin port every service has beside its API (DESIGN.md: `*_ADMIN_LISTEN_ADDR`):
//! plain HTTP for probes and scrapers, never the API and never behind client
//! certificates. `GET /livez` answers while the process works, `GET /readyz` while
//! it can serve (its database answers and it is not shutting down), `GET
//! /metrics` is the Prometheus text.
//!
//! Readiness is also what the gRPC health service reports: a background watch
//! pings the database every [`PROBE_INTERVAL`] and turns the service (and the
//! server as a whole) NOT_SERVING while the database does not answer within
//! [`PROBE_TIMEOUT`], and SERVING again once it does, without a restart.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use axum::{
    Json, Router,
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
};
use sea_orm::DatabaseConnection;
use serde::Serialize;
use tonic_health::{ServingStatus, server::HealthReporter};

/// How often the database is pinged.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// How long a ping may take before the database counts as unreachable. Shorter
/// than the pool's acquire timeout, which a database refusing connections would
/// otherwise make the probe wait for.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Whether this service can serve, shared by the admin port, the gRPC health
/// service and the watch that keeps both current.
#[derive(Clone)]
pub struct Readiness {
    inner: Arc<ReadinessState>,
}

struct ReadinessState {
    health: HealthReporter,
    service_name: &'static str,
    database_reachable: AtomicBool,
    draining: AtomicBool,
}

impl Readiness {
    /// Ready, as a service is once its migrations ran; the health service says so.
    pub async fn new(health: HealthReporter, service_name: &'static str) -> Readiness {
        let readiness = Readiness {
            inner: Arc::new(ReadinessState {
                health,
                service_name,
                database_reachable: AtomicBool::new(true),
                draining: AtomicBool::new(false),
            }),
        };
        readiness.publish().await;
        readiness
    }

    pub fn is_ready(&self) -> bool {
        self.inner.database_reachable.load(Ordering::SeqCst)
            && !self.inner.draining.load(Ordering::SeqCst)
    }

    /// Records a probe's result; tells the health service when it changed.
    pub async fn set_database_reachable(&self, reachable: bool) {
        let was = self
            .inner
            .database_reachable
            .swap(reachable, Ordering::SeqCst);
        if was != reachable {
            if reachable {
                tracing::info!("the database answers again: ready");
            } else {
                tracing::warn!("the database does not answer: not ready");
            }
            self.publish().await;
        }
    }

    /// Shutting down: no longer ready, so load balancers stop sending new work
    /// while the requests in flight finish.
    pub async fn start_draining(&self) {
        self.inner.draining.store(true, Ordering::SeqCst);
        self.publish().await;
    }

    async fn publish(&self) {
        let status = if self.is_ready() {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        let health = &self.inner.health;
        health
            .set_service_status(self.inner.service_name, status)
            .await;
        health.set_service_status("", status).await;
    }
}

/// Pings `database` every [`PROBE_INTERVAL`] for as long as the returned task
/// runs, keeping `readiness` current.
pub fn watch_database(
    database: DatabaseConnection,
    readiness: Readiness,
) -> tokio::task::JoinHandle<()> {
    // The pool's gauges exist from the start, before the first check.
    record_pool(&database, readiness.inner.service_name);
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(PROBE_INTERVAL);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            let reachable = matches!(
                tokio::time::timeout(PROBE_TIMEOUT, database.ping()).await,
                Ok(Ok(()))
            );
            readiness.set_database_reachable(reachable).await;
            record_pool(&database, readiness.inner.service_name);
        }
    })
}

/// The database pool's connections, open and idle, as gauges.
fn record_pool(database: &DatabaseConnection, service: &'static str) {
    let (open, idle, max) = match database.get_database_backend() {
        sea_orm::DbBackend::Postgres => {
            let pool = database.get_postgres_connection_pool();
            (
                pool.size(),
                pool.num_idle(),
                pool.options().get_max_connections(),
            )
        }
        _ => {
            let pool = database.get_sqlite_connection_pool();
            (
                pool.size(),
                pool.num_idle(),
                pool.options().get_max_connections(),
            )
        }
    };
    let idle = u32::try_from(idle).unwrap_or(u32::MAX).min(open);
    metrics::gauge!("db_pool_connections", "service" => service, "state" => "idle")
        .set(f64::from(idle));
    metrics::gauge!("db_pool_connections", "service" => service, "state" => "in_use")
        .set(f64::from(open - idle));
    metrics::gauge!("db_pool_max_connections", "service" => service).set(f64::from(max));
}

#[derive(Debug, Serialize)]
struct ProbeView {
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    database: Option<&'static str>,
}

/// `/livez`, `/readyz` and `/metrics`; anything else is 404.
pub fn router(readiness: Readiness) -> Router {
    crate::metrics::install();
    Router::new()
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route("/metrics", get(crate::metrics::render))
        .with_state(readiness)
}

async fn livez() -> Json<ProbeView> {
    Json(ProbeView {
        status: "ok",
        database: None,
    })
}

async fn readyz(State(readiness): State<Readiness>) -> Response {
    let database = if readiness.inner.database_reachable.load(Ordering::SeqCst) {
        "reachable"
    } else {
        "unreachable"
    };
    if readiness.is_ready() {
        return Json(ProbeView {
            status: "ready",
            database: Some(database),
        })
        .into_response();
    }
    let status = if readiness.inner.draining.load(Ordering::SeqCst) {
        "draining"
    } else {
        "not_ready"
    };
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(ProbeView {
            status,
            database: Some(database),
        }),
    )
        .into_response()
}
