//! The gRPC server shell every service runs in: health, reflection (v1 and v1alpha),
//! request and HTTP/2 limits chosen on purpose, handlers detached from their
//! callers, per-method metrics (and `GET /metrics` on the same port) and graceful
//! shutdown.

use std::{
    future::{Future, IntoFuture},
    time::Duration,
};

use tokio::net::TcpListener;
use tonic::{server::NamedService, service::Routes, transport::Server};
use tonic_health::server::HealthReporter;

/// Largest request message a service decodes.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// Deadline for one RPC when the client sets none.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Streams one HTTP/2 connection may have open at once. Advertised in SETTINGS,
/// so a client queues beyond it instead of being refused; the gateway keeps a few
/// connections per service, which makes this the bound of its requests in flight.
pub const MAX_CONCURRENT_STREAMS: u32 = 256;

/// Streams a client may open and reset again before the server accepted them.
/// h2's default (20) is a defence against the "rapid reset" flood, but a busy
/// gateway whose clients hang up legitimately resets that many in a burst, and the
/// GOAWAY that follows fails every other request on the connection. As many as
/// may be open at once lets a caller reset nothing it could not have had in
/// flight anyway.
pub const MAX_PENDING_ACCEPT_RESET_STREAMS: usize = MAX_CONCURRENT_STREAMS as usize;

/// Streams the server may reset because of the client's protocol errors before it
/// ends the connection.
pub const MAX_LOCAL_ERROR_RESET_STREAMS: usize = 1024;

/// Largest header block a request may carry (a token and a few metadata entries
/// need a few KiB).
pub const MAX_HEADER_LIST_BYTES: u32 = 64 * 1024;

/// A connection whose peer has not answered a keep-alive ping in this long is
/// closed, so the requests on it fail over instead of waiting forever.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// The variable that turns server reflection off (`false`); it is on by default.
pub const REFLECTION_VARIABLE: &str = "BANK_GRPC_REFLECTION";

/// Whether the services serve reflection, as [`REFLECTION_VARIABLE`] says.
pub fn reflection_from_env(env: &crate::config::Env) -> Result<bool, crate::config::ConfigError> {
    env.parse(REFLECTION_VARIABLE, true)
}

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

/// Builds health, and reflection unless `reflection` is off, for the service
/// named `service_name` (its full protobuf name). The service's own health status starts NOT_SERVING; binding the
/// [`GrpcApp`] reports it SERVING, and its database watch keeps it current.
pub async fn service_routes(
    service_name: &str,
    reflection: bool,
) -> Result<ServiceRoutes, ServeError> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_service_status(service_name, tonic_health::ServingStatus::NotServing)
        .await;
    health
        .set_service_status("", tonic_health::ServingStatus::NotServing)
        .await;
    let mut routes = Routes::new(health_service);
    if reflection {
        routes = routes
            .add_service(reflection_builder(service_name).build_v1()?)
            .add_service(reflection_builder(service_name).build_v1alpha()?);
    }
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

/// The full protobuf name of a generated server type.
pub fn service_name<S: NamedService>() -> &'static str {
    S::NAME
}

/// Serves `routes` on `listener` until `shutdown` completes, then drains in-flight
/// requests.
pub async fn serve(
    listener: TcpListener,
    tls: Option<crate::tls::ServerTls>,
    routes: Routes,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    Server::builder()
        // Plain HTTP/1.1 reaches only `GET /metrics` usefully; gRPC needs HTTP/2.
        .accept_http1(true)
        .timeout(REQUEST_TIMEOUT)
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .concurrency_limit_per_connection(MAX_CONCURRENT_STREAMS as usize)
        .http2_max_pending_accept_reset_streams(Some(MAX_PENDING_ACCEPT_RESET_STREAMS))
        .http2_max_local_error_reset_streams(Some(MAX_LOCAL_ERROR_RESET_STREAMS))
        .http2_max_header_list_size(MAX_HEADER_LIST_BYTES)
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .trace_fn(crate::telemetry::grpc_request_span)
        .add_routes(crate::metrics::instrument(routes))
        // Every accepted socket sets TCP_NODELAY (`serve_with_incoming` ignores
        // the builder's TCP settings): without it a response's trailers could
        // wait for the caller's delayed ACK.
        .serve_with_incoming_shutdown(crate::tls::incoming(listener, tls), shutdown)
        .await?;
    Ok(())
}

/// How long a call may take to connect to another service.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A lazily connected channel to the service at `url` (named by `variable`, for
/// errors), through `connector`: TLS for `https://`, with each request's deadline
/// at most `timeout`.
pub fn channel(
    variable: &str,
    url: &str,
    connector: &crate::tls::Connector,
    timeout: Duration,
) -> anyhow::Result<tonic::transport::Channel> {
    if url.starts_with("https://") && !connector.has_tls() {
        anyhow::bail!("{variable}: an https:// endpoint needs BANK_TLS_CA_FILE to verify it");
    }
    let endpoint = tonic::transport::Endpoint::from_shared(url.to_owned())
        .map_err(|error| anyhow::anyhow!("{variable}: {error}"))?
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(timeout)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT);
    Ok(endpoint.connect_with_connector_lazy(connector.clone()))
}

/// Several connections to one service, used in turn. One HTTP/2 connection
/// carries at most the server's stream limit and funnels every request through
/// one socket and one pair of tasks; a few spread the work and keep one
/// connection's trouble from stopping the rest.
#[derive(Clone)]
pub struct Pool {
    channels: std::sync::Arc<[tonic::transport::Channel]>,
    next: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// The channel `poll_ready` chose for the next `call`.
    chosen: Option<tonic::transport::Channel>,
}

impl Pool {
    /// `size` lazily connected channels to `url` (see [`channel`]).
    pub fn new(
        variable: &str,
        url: &str,
        connector: &crate::tls::Connector,
        timeout: Duration,
        size: usize,
    ) -> anyhow::Result<Pool> {
        let channels = (0..size.max(1))
            .map(|_| channel(variable, url, connector, timeout))
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Pool {
            channels: channels.into(),
            next: std::sync::Arc::default(),
            chosen: None,
        })
    }
}

impl tower::Service<http::Request<tonic::body::Body>> for Pool {
    type Response = http::Response<tonic::body::Body>;
    type Error = tonic::transport::Error;
    type Future = std::pin::Pin<
        Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send + 'static>,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        let channels = &self.channels;
        let next = &self.next;
        let chosen = self.chosen.get_or_insert_with(|| {
            let index = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % channels.len();
            channels[index].clone()
        });
        tower::Service::poll_ready(chosen, cx)
    }

    /// A call made inside a trace is a CLIENT span of it, and carries that span
    /// as the callee's parent (W3C `traceparent`); background calls outside any
    /// trace (a feed polled every half second) make no spans.
    fn call(&mut self, mut request: http::Request<tonic::body::Body>) -> Self::Future {
        let mut channel = self
            .chosen
            .take()
            .unwrap_or_else(|| self.channels[0].clone());
        if !crate::telemetry::recording_spans() {
            // No spans here: the request's trace id still travels, for the
            // callee's logs.
            if let Ok(trace_id) = crate::telemetry::TRACE_ID.try_with(Clone::clone)
                && let Ok(value) =
                    http::HeaderValue::from_str(&crate::telemetry::unsampled_traceparent(&trace_id))
            {
                request.headers_mut().insert("traceparent", value);
            }
            return Box::pin(tower::Service::call(&mut channel, request));
        }
        if crate::telemetry::current_trace_id().is_none() {
            return Box::pin(tower::Service::call(&mut channel, request));
        }
        let span = crate::telemetry::grpc_client_span(request.uri().path());
        crate::telemetry::inject_span_context(&span, request.headers_mut());
        let call = tower::Service::call(&mut channel, request);
        Box::pin(tracing::Instrument::instrument(
            async move {
                let response = call.await;
                if let Ok(response) = &response {
                    // A call that failed outright answers with its status in the
                    // headers; one that succeeded, in the trailers (0).
                    let code = response
                        .headers()
                        .get("grpc-status")
                        .and_then(|value| value.to_str().ok())
                        .and_then(|value| value.parse::<i32>().ok())
                        .unwrap_or(0);
                    tracing::Span::current().record("rpc.grpc.status_code", code);
                }
                response
            },
            span,
        ))
    }
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

/// What a service needs to be served: its name, where it listens, and the
/// database its readiness follows.
pub struct ServiceSpec {
    /// The full protobuf name of the service (see [`service_name`]).
    pub service_name: &'static str,
    /// The prefix of the service's variables, e.g. `LEDGER`, so that a port that
    /// cannot be bound is reported by the variable that names it.
    pub variable_prefix: &'static str,
    pub listen_addr: std::net::SocketAddr,
    pub admin_listen_addr: std::net::SocketAddr,
    pub database: sea_orm::DatabaseConnection,
    /// TLS for the API port (never for the admin port).
    pub tls: crate::tls::TlsSettings,
}

/// A gRPC service bound to its API and admin ports and ready to serve.
pub struct GrpcApp {
    listener: TcpListener,
    tls: Option<crate::tls::ServerTls>,
    admin_listener: TcpListener,
    routes: Routes,
    readiness: crate::admin::Readiness,
    database: sea_orm::DatabaseConnection,
}

impl GrpcApp {
    /// Binds both ports (port 0 lets the OS choose, as tests do) and reports the
    /// service SERVING: it is built, so its database answered.
    pub async fn bind(
        spec: ServiceSpec,
        routes: Routes,
        health: HealthReporter,
    ) -> anyhow::Result<GrpcApp> {
        use anyhow::Context;
        let prefix = spec.variable_prefix;
        let listener = TcpListener::bind(spec.listen_addr).await.with_context(|| {
            format!(
                "{prefix}_LISTEN_ADDR: cannot listen on {}",
                spec.listen_addr
            )
        })?;
        let admin_listener = TcpListener::bind(spec.admin_listen_addr)
            .await
            .with_context(|| {
                format!(
                    "{prefix}_ADMIN_LISTEN_ADDR: cannot listen on {}",
                    spec.admin_listen_addr
                )
            })?;
        let tls = crate::tls::ServerTls::new(&spec.tls, &[b"h2"])?;
        let readiness = crate::admin::Readiness::new(health, spec.service_name).await;
        Ok(GrpcApp {
            listener,
            tls,
            admin_listener,
            routes,
            readiness,
            database: spec.database,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.listener.local_addr()
    }

    /// The admin port: `/livez`, `/readyz`, `/metrics`.
    pub fn admin_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.admin_listener.local_addr()
    }

    /// Serves until `shutdown` completes, then reports NOT_SERVING and drains
    /// in-flight requests. The database is watched meanwhile (see
    /// [`crate::admin`]).
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), ServeError> {
        let watch = crate::admin::watch_database(self.database, self.readiness.clone());
        let (stop_admin, admin_stopped) = tokio::sync::oneshot::channel::<()>();
        let admin = tokio::spawn(
            axum::serve(
                self.admin_listener,
                crate::admin::router(self.readiness.clone()),
            )
            .with_graceful_shutdown(async move {
                admin_stopped.await.ok();
            })
            .into_future(),
        );
        let readiness = self.readiness;
        let served = serve(self.listener, self.tls, self.routes, async move {
            shutdown.await;
            readiness.start_draining().await;
        })
        .await;
        watch.abort();
        stop_admin.send(()).ok();
        match admin.await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::error!(%error, "the admin port failed"),
            Err(error) => tracing::error!(%error, "the admin port's task failed"),
        }
        served
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use http::{Request, Response};
    use tokio::net::TcpStream;

    use super::*;

    /// A health service on a port of its own; returns its address.
    async fn health_server() -> std::net::SocketAddr {
        let name = "bank.test.v1.TestService";
        let ServiceRoutes { routes, health } = service_routes(name, true)
            .await
            .unwrap_or_else(|error| panic!("routes: {error}"));
        let database = crate::db::connect("sqlite::memory:")
            .await
            .unwrap_or_else(|error| panic!("database: {error}"));
        let any_port: std::net::SocketAddr = ([127, 0, 0, 1], 0).into();
        let spec = ServiceSpec {
            service_name: name,
            variable_prefix: "TEST",
            listen_addr: any_port,
            admin_listen_addr: any_port,
            database,
            tls: crate::tls::TlsSettings::default(),
        };
        let app = GrpcApp::bind(spec, routes, health)
            .await
            .unwrap_or_else(|error| panic!("bind: {error}"));
        let addr = app
            .local_addr()
            .unwrap_or_else(|error| panic!("address: {error}"));
        tokio::spawn(app.run_until_stopped(std::future::pending()));
        addr
    }

    fn health_check() -> Request<()> {
        Request::post("http://127.0.0.1/grpc.health.v1.Health/Check")
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .unwrap_or_else(|error| panic!("request: {error}"))
    }

    /// The `grpc-status` a response ends with, from its head or its trailers.
    async fn grpc_status(response: Response<h2::RecvStream>) -> Option<String> {
        if let Some(status) = response.headers().get("grpc-status") {
            return status.to_str().ok().map(str::to_owned);
        }
        let mut body = response.into_body();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.ok()?;
            body.flow_control().release_capacity(chunk.len()).ok()?;
        }
        let trailers = body.trailers().await.ok()??;
        trailers
            .get("grpc-status")
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned)
    }

    /// A gRPC server that answers every call `OK` at once and reports the
    /// `traceparent` each one came with; returns its address.
    async fn traceparent_recorder() -> (
        std::net::SocketAddr,
        tokio::sync::mpsc::UnboundedReceiver<Option<String>>,
    ) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|error| panic!("bind: {error}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|error| panic!("address: {error}"));
        let (seen, received) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                tokio::spawn(record_traceparents(socket, seen.clone()));
            }
        });
        (addr, received)
    }

    async fn record_traceparents(
        socket: TcpStream,
        seen: tokio::sync::mpsc::UnboundedSender<Option<String>>,
    ) {
        let Ok(mut connection) = h2::server::handshake(socket).await else {
            return;
        };
        while let Some(Ok((request, mut respond))) = connection.accept().await {
            let traceparent = request
                .headers()
                .get("traceparent")
                .and_then(|value| value.to_str().ok())
                .map(str::to_owned);
            seen.send(traceparent).ok();
            let answer = Response::builder()
                .header("content-type", "application/grpc")
                .header("grpc-status", "0")
                .body(())
                .unwrap_or_else(|error| panic!("response: {error}"));
            respond.send_response(answer, true).ok();
        }
    }

    #[tokio::test]
    async fn without_recorded_spans_calls_carry_the_trace_id_unsampled() {
        use tower::ServiceExt;
        assert!(!crate::telemetry::recording_spans());
        let (addr, mut seen) = traceparent_recorder().await;
        let connector = crate::tls::Connector::new(&crate::tls::TlsSettings::default())
            .unwrap_or_else(|error| panic!("connector: {error}"));
        let pool = Pool::new(
            "TEST_ENDPOINT",
            &format!("http://{addr}"),
            &connector,
            Duration::from_secs(5),
            2,
        )
        .unwrap_or_else(|error| panic!("pool: {error}"));
        let call = |pool: Pool| async move {
            let request = Request::post(format!("http://{addr}/bank.test.v1.TestService/Ping"))
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .body(tonic::body::Body::empty())
                .unwrap_or_else(|error| panic!("request: {error}"));
            pool.oneshot(request)
                .await
                .unwrap_or_else(|error| panic!("call: {error}"))
        };

        let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
        crate::telemetry::TRACE_ID
            .scope(trace_id.to_owned(), call(pool.clone()))
            .await;
        let sent = seen.recv().await.flatten().unwrap_or_default();
        let parts: Vec<&str> = sent.split('-').collect();
        assert_eq!(parts.len(), 4, "a W3C traceparent: {sent:?}");
        assert_eq!(parts[0], "00");
        assert_eq!(parts[1], trace_id, "the request's trace id travels");
        assert!(
            parts[2].len() == 16 && parts[2].bytes().all(|b| b.is_ascii_hexdigit()),
            "a parent span id: {sent:?}"
        );
        assert_eq!(
            parts[3], "00",
            "an unsampled parent asks the callee to record nothing"
        );

        // Outside any request there is no trace to name.
        call(pool).await;
        assert_eq!(seen.recv().await, Some(None));
    }

    #[tokio::test]
    async fn callers_that_hang_up_in_a_burst_leave_the_connection_serving() {
        let addr = health_server().await;
        let tcp = TcpStream::connect(addr)
            .await
            .unwrap_or_else(|error| panic!("connect: {error}"));
        let (client, connection) = h2::client::handshake(tcp)
            .await
            .unwrap_or_else(|error| panic!("handshake: {error}"));
        tokio::spawn(connection);
        let mut client = client
            .ready()
            .await
            .unwrap_or_else(|error| panic!("ready: {error}"));
        // A gateway whose clients all hang up at once: each request is opened and
        // reset again (dropping it sends RST_STREAM CANCEL) before the server has
        // accepted it, five times h2's default allowance.
        for _ in 0..100 {
            client = client
                .ready()
                .await
                .unwrap_or_else(|error| panic!("ready: {error}"));
            let (response, stream) = client
                .send_request(health_check(), false)
                .unwrap_or_else(|error| panic!("send: {error}"));
            drop((response, stream));
        }

        // The connection still serves everyone else.
        client = client
            .ready()
            .await
            .unwrap_or_else(|error| panic!("the connection was closed: {error}"));
        let (response, mut stream) = client
            .send_request(health_check(), false)
            .unwrap_or_else(|error| panic!("the connection was closed: {error}"));
        stream
            .send_data(Bytes::from_static(&[0, 0, 0, 0, 0]), true)
            .unwrap_or_else(|error| panic!("send: {error}"));
        let response = response
            .await
            .unwrap_or_else(|error| panic!("the connection was closed: {error}"));
        assert_eq!(grpc_status(response).await.as_deref(), Some("0"));
        assert_eq!(
            client.current_max_send_streams(),
            MAX_CONCURRENT_STREAMS as usize,
            "the stream limit is advertised"
        );
    }
}
