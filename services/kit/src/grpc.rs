//! The gRPC server shell every service runs in: health, reflection (v1 and v1alpha),
//! request limits, per-method metrics (and `GET /metrics` on the same port) and
//! graceful shutdown.

use std::{future::Future, time::Duration};

use tokio::net::TcpListener;
use tonic::{
    server::NamedService,
    service::Routes,
    transport::{Server, server::TcpIncoming},
};
use tonic_health::server::HealthReporter;

/// Largest request message a service decodes.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// Deadline for one RPC when the client sets none.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Routes with health and reflection in place, ready for the service's own API.
pub struct ServiceRoutes {
    pub routes: Routes,
    pub health: HealthReporter,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("reflection set-up failed: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Builds health and reflection for the service named `service_name` (its full
/// protobuf name). The service's own health status starts NOT_SERVING; call
/// [`mark_serving`] once it is ready (migrations ran).
pub async fn service_routes(service_name: &str) -> Result<ServiceRoutes, ServeError> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_service_status(service_name, tonic_health::ServingStatus::NotServing)
        .await;
    health
        .set_service_status("", tonic_health::ServingStatus::NotServing)
        .await;
    let reflection_v1 = reflection_builder(service_name).build_v1()?;
    let reflection_v1alpha = reflection_builder(service_name).build_v1alpha()?;
    let routes = Routes::new(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha);
    Ok(ServiceRoutes { routes, health })
}

fn reflection_builder(service_name: &str) -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(bank_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .with_service_name(service_name)
        .with_service_name("grpc.health.v1.Health")
        .with_service_name("grpc.reflection.v1.ServerReflection")
        .with_service_name("grpc.reflection.v1alpha.ServerReflection")
}

/// Reports the service, and the server as a whole, as SERVING.
pub async fn mark_serving(health: &HealthReporter, service_name: &str) {
    health
        .set_service_status(service_name, tonic_health::ServingStatus::Serving)
        .await;
    health
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
}

/// The full protobuf name of a generated server type.
pub fn service_name<S: NamedService>() -> &'static str {
    S::NAME
}

/// Serves `routes` on `listener` until `shutdown` completes, then drains in-flight
/// requests.
pub async fn serve(
    listener: TcpListener,
    routes: Routes,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    Server::builder()
        // Plain HTTP/1.1 reaches only `GET /metrics` usefully; gRPC needs HTTP/2.
        .accept_http1(true)
        .timeout(REQUEST_TIMEOUT)
        .concurrency_limit_per_connection(256)
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .trace_fn(crate::telemetry::grpc_request_span)
        .add_routes(crate::metrics::instrument(routes))
        // `serve_with_incoming` ignores the builder's TCP settings: without
        // TCP_NODELAY a response's trailers could wait for the caller's delayed ACK.
        .serve_with_incoming_shutdown(
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown,
        )
        .await?;
    Ok(())
}

/// Completes on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutdown requested");
}

/// A gRPC service bound to its port and ready to serve.
pub struct GrpcApp {
    listener: TcpListener,
    routes: Routes,
}

impl GrpcApp {
    /// Binds `addr`; port 0 lets the OS choose, as tests do.
    pub async fn bind(addr: std::net::SocketAddr, routes: Routes) -> std::io::Result<GrpcApp> {
        let listener = TcpListener::bind(addr).await?;
        Ok(GrpcApp { listener, routes })
    }

    pub fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` completes, then drains in-flight requests.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), ServeError> {
        serve(self.listener, self.routes, shutdown).await
    }
}
