//! Logging and tracing set-up. Logs are human-readable in a terminal and JSON lines
//! otherwise, filtered by `RUST_LOG`; spans follow the OpenTelemetry settings
//! (`OTEL_*`) instead, and are recorded and exported over OTLP when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set.
//!
//! Without an exporter no OpenTelemetry layer is installed: recording spans that
//! go nowhere cost a tenth of the ledger's and a sixth of the gateway's
//! throughput (`make bench`), sampled or not. Requests still carry a W3C trace
//! id: the caller's `traceparent`'s, or one the gateway makes, which it names in
//! problem bodies and sends on as `traceparent`, and which every request span
//! records, so log lines name it.

use std::{
    io::IsTerminal,
    sync::atomic::{AtomicBool, Ordering},
};

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::{
    Resource,
    trace::{Sampler, SdkTracerProvider},
};
use tracing_subscriber::{EnvFilter, Layer, layer::SubscriberExt, util::SubscriberInitExt};

use crate::config::{ConfigError, Env};

/// Flushes exported spans when dropped at the end of `main`.
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl TelemetryGuard {
    /// Exports every span ended so far.
    pub fn flush(&self) {
        if let Some(provider) = &self.provider
            && let Err(error) = provider.force_flush()
        {
            eprintln!("failed to flush traces: {error}");
        }
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(error) = provider.shutdown()
        {
            eprintln!("failed to flush traces: {error}");
        }
    }
}

/// Whether this process records OpenTelemetry spans (it exports them).
static RECORDING: AtomicBool = AtomicBool::new(false);

/// Whether spans become OpenTelemetry spans here: only where they are exported.
pub fn recording_spans() -> bool {
    RECORDING.load(Ordering::Relaxed)
}

tokio::task_local! {
    /// The W3C trace id of the request being handled, when no OpenTelemetry
    /// layer keeps it: set by the gateway around each request.
    pub static TRACE_ID: String;
}

/// What a process's spans are exported under and how it samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A service behind the gateway: it follows its caller's sampling decision
    /// (the SDK's default, `parentbased_always_on`, or `OTEL_TRACES_SAMPLER`).
    Service,
    /// The edge: an outside client's `traceparent` is continued, but whether the
    /// request is sampled is the gateway's own decision, by trace id at the
    /// ratio `OTEL_TRACES_SAMPLER_ARG` (default 1, every request).
    Edge,
}

/// Installs the global subscriber: logs filtered by `RUST_LOG`, and spans for
/// OpenTelemetry filtered apart from the logs (so a quiet log level never
/// silences traces), exported over OTLP when `OTEL_EXPORTER_OTLP_ENDPOINT` is
/// set. Spans always carry OpenTelemetry trace ids, exported or not, so that
/// logs and problem bodies name the trace. Must run inside the tokio runtime
/// because the OTLP exporter spawns onto it.
pub fn init(env: &Env, default_service_name: &str) -> Result<TelemetryGuard, ConfigError> {
    init_as(env, default_service_name, Role::Service)
}

/// [`init`] for a process of `role`.
pub fn init_as(
    env: &Env,
    default_service_name: &str,
    role: Role,
) -> Result<TelemetryGuard, ConfigError> {
    let filter = EnvFilter::try_new(env.string("RUST_LOG", "info"))
        .map_err(|error| ConfigError::new("RUST_LOG", error.to_string()))?;
    // JSON lines for collectors, unless told otherwise; text on a terminal.
    let json = match env.optional("BANK_LOG_FORMAT").as_deref() {
        None => !std::io::stdout().is_terminal(),
        Some("json") => true,
        Some("text") => false,
        Some(_) => return Err(ConfigError::new("BANK_LOG_FORMAT", "must be json or text")),
    };
    let fmt_layer = if json {
        tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_filter(filter)
            .boxed()
    } else {
        tracing_subscriber::fmt::layer().with_filter(filter).boxed()
    };

    let service_name = env.string("OTEL_SERVICE_NAME", default_service_name);
    let mut builder = SdkTracerProvider::builder()
        .with_resource(Resource::builder().with_service_name(service_name).build());
    if role == Role::Edge {
        let ratio = match env.optional("OTEL_TRACES_SAMPLER_ARG") {
            None => 1.0,
            Some(arg) => arg
                .parse::<f64>()
                .ok()
                .filter(|ratio| (0.0..=1.0).contains(ratio))
                .ok_or_else(|| {
                    ConfigError::new("OTEL_TRACES_SAMPLER_ARG", "must be a ratio between 0 and 1")
                })?,
        };
        builder = builder.with_sampler(Sampler::TraceIdRatioBased(ratio));
    }
    let endpoint = env.optional("OTEL_EXPORTER_OTLP_ENDPOINT");
    if let Some(endpoint) = &endpoint {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .build()
            .map_err(|error| ConfigError::new("OTEL_EXPORTER_OTLP_ENDPOINT", error.to_string()))?;
        builder = builder.with_batch_exporter(exporter);
    }
    let provider = builder.build();
    // Also the global one, which the database statements' spans come from.
    opentelemetry::global::set_tracer_provider(provider.clone());
    let tracer = provider.tracer("bank");
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    let otel_layer = endpoint.is_some().then(|| {
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_filter(span_filter())
    });
    RECORDING.store(otel_layer.is_some(), Ordering::Relaxed);

    tracing_subscriber::registry()
        .with(fmt_layer)
        .with(otel_layer)
        .try_init()
        .map_err(|error| ConfigError::new("RUST_LOG", error.to_string()))?;
    Ok(TelemetryGuard {
        provider: Some(provider),
    })
}

/// Which spans become OpenTelemetry spans, whatever `RUST_LOG` says: the bank's
/// own at info and above, and none of the transports' (the exporter's own calls
/// must not be traced, or every export produces spans that produce exports).
pub fn span_filter() -> EnvFilter {
    EnvFilter::new("info,h2=off,hyper=off,hyper_util=off,tonic=off,tower=off,sqlx=off")
}

/// The W3C trace id (32 hex digits) of the request being handled: its
/// OpenTelemetry trace's, or without a recording layer the one set in
/// [`TRACE_ID`]; none outside a request.
pub fn current_trace_id() -> Option<String> {
    span_trace_id(&tracing::Span::current()).or_else(|| TRACE_ID.try_with(Clone::clone).ok())
}

/// The trace id of a W3C `traceparent` header
/// (`00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`), when it is well
/// formed and not all zeros.
pub fn traceparent_trace_id(headers: &http::HeaderMap) -> Option<String> {
    let value = headers.get("traceparent")?.to_str().ok()?;
    let mut parts = value.split('-');
    let (version, trace_id, parent_id, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |part: &str, len: usize| {
        part.len() == len
            && part
                .bytes()
                .all(|byte| byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte))
    };
    let valid = hex(version, 2)
        && version != "ff"
        && (version != "00" || parts.next().is_none())
        && hex(trace_id, 32)
        && trace_id.bytes().any(|byte| byte != b'0')
        && hex(parent_id, 16)
        && parent_id.bytes().any(|byte| byte != b'0')
        && hex(flags, 2);
    valid.then(|| trace_id.to_owned())
}

/// A `traceparent` naming `trace_id` with a fresh parent id, not sampled: what a
/// process that records no spans sends on so that its callee's logs name the
/// same trace.
pub fn unsampled_traceparent(trace_id: &str) -> String {
    let parent = uuid::Uuid::new_v4().simple().to_string();
    format!("00-{trace_id}-{}-00", &parent[..16])
}

/// Writes the current span's trace context (W3C `traceparent`) into outgoing gRPC
/// metadata, so the callee's spans join the caller's trace. A no-op when no
/// OpenTelemetry exporter is configured.
pub fn inject_trace_context(metadata: &mut tonic::metadata::MetadataMap) {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let context = tracing::Span::current().context();
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, &mut MetadataInjector(metadata));
    });
}

/// The service and method a gRPC path (`/service/method`) names.
fn rpc_parts(path: &str) -> (&str, &str) {
    path.strip_prefix('/')
        .and_then(|rest| rest.split_once('/'))
        .unwrap_or(("", ""))
}

/// The CLIENT span of one outgoing gRPC call to `path` (`/service/method`).
pub fn grpc_client_span(path: &str) -> tracing::Span {
    let (service, method) = rpc_parts(path);
    tracing::info_span!(
        "grpc.call",
        otel.name = %path.trim_start_matches('/'),
        otel.kind = "client",
        rpc.system = "grpc",
        rpc.service = %service,
        rpc.method = %method,
        rpc.grpc.status_code = tracing::field::Empty,
    )
}

/// Writes `span`'s trace context (W3C `traceparent`) into outgoing headers.
pub fn inject_span_context(span: &tracing::Span, headers: &mut http::HeaderMap) {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let context = span.context();
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, &mut HeaderInjector(headers));
    });
}

struct HeaderInjector<'a>(&'a mut http::HeaderMap);

impl opentelemetry::propagation::Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) = (
            http::HeaderName::from_bytes(key.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) {
            self.0.insert(key, value);
        }
    }
}

/// The span of one incoming gRPC request, continuing the caller's trace when
/// its metadata carries one.
pub fn grpc_request_span(request: &http::Request<()>) -> tracing::Span {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract(&HeaderExtractor(request.headers()))
    });
    let request_id = request
        .headers()
        .get("x-request-id")
        .and_then(|value| value.to_str().ok())
        .filter(|value| value.len() <= 64)
        .unwrap_or_default();
    let path = request.uri().path();
    let (service, method) = rpc_parts(path);
    // Semantic-convention names; the status code is recorded when the call ends.
    let span = tracing::info_span!(
        "grpc.request",
        otel.name = %path.trim_start_matches('/'),
        otel.kind = "server",
        rpc.system = "grpc",
        rpc.service = %service,
        rpc.method = %method,
        rpc.grpc.status_code = tracing::field::Empty,
        request_id = %request_id,
        trace_id = tracing::field::Empty,
    );
    // Fails only when no OpenTelemetry layer is installed; the caller's trace
    // id is then read from its `traceparent` alone, for the logs.
    let _ = span.set_parent(parent);
    if let Some(trace_id) = span_trace_id(&span).or_else(|| traceparent_trace_id(request.headers()))
    {
        span.record("trace_id", trace_id);
    }
    span
}

/// The W3C trace id of `span`, when OpenTelemetry gave it one.
pub fn span_trace_id(span: &tracing::Span) -> Option<String> {
    use opentelemetry::trace::TraceContextExt;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let context = span.context();
    let otel = context.span();
    let span_context = otel.span_context();
    span_context
        .is_valid()
        .then(|| span_context.trace_id().to_string())
}

/// The span of one incoming REST request at the edge, continuing an outside
/// client's `traceparent` when it sends one (whether the request is sampled
/// stays the edge's own decision, see [`Role::Edge`]).
pub fn http_request_span(request: &http::Request<axum::body::Body>) -> tracing::Span {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract(&HeaderExtractor(request.headers()))
    });
    let method = request.method().as_str();
    // Unknown methods are `_OTHER`, as the conventions ask, so that none can
    // invent a span name.
    let method = match method {
        "GET" | "POST" | "PUT" | "DELETE" | "PATCH" | "HEAD" | "OPTIONS" => method,
        _ => "_OTHER",
    };
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|path| path.as_str().to_owned());
    let name = match &route {
        Some(route) => format!("{method} {route}"),
        None => method.to_owned(),
    };
    let span = tracing::info_span!(
        "http.request",
        otel.name = %name,
        otel.kind = "server",
        http.request.method = %method,
        http.route = tracing::field::Empty,
        url.path = %request.uri().path(),
        http.response.status_code = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
        request_id = tracing::field::Empty,
        trace_id = tracing::field::Empty,
    );
    if let Some(route) = route {
        span.record("http.route", route);
    }
    let _ = span.set_parent(parent);
    if let Some(trace_id) = span_trace_id(&span) {
        span.record("trace_id", trace_id);
    }
    span
}

/// Records a REST answer on its request's span.
pub fn record_http_response(span: &tracing::Span, status: http::StatusCode) {
    span.record("http.response.status_code", status.as_u16());
    if status.is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
}

struct MetadataInjector<'a>(&'a mut tonic::metadata::MetadataMap);

impl opentelemetry::propagation::Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) = (
            tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
            value.parse(),
        ) {
            self.0.insert(key, value);
        }
    }
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl opentelemetry::propagation::Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    /// Log output kept in memory.
    #[derive(Clone, Default)]
    struct Buffer(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
    impl std::io::Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(|poison| poison.into_inner())
                .extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Buffer {
        /// Asserts the log lines written name `trace_id`.
        fn assert_names(&self, trace_id: &str) {
            let written = self.0.lock().unwrap_or_else(|poison| poison.into_inner());
            let line = String::from_utf8_lossy(&written);
            assert!(
                line.contains(&format!("\"trace_id\":\"{trace_id}\"")),
                "{line}"
            );
        }
    }

    /// Writes one log line inside `span`.
    fn log_inside(span: &tracing::Span) {
        let _entered = span.enter();
        tracing::warn!("something worth a log line");
    }

    /// Where no spans are recorded (no exporter, no OpenTelemetry layer), a
    /// service's log lines still name the trace of the caller's `traceparent`.
    #[test]
    fn without_recorded_spans_log_lines_name_the_callers_trace() {
        let buffer = Buffer::default();
        let logs = buffer.clone();
        let subscriber = tracing_subscriber::registry().with(
            tracing_subscriber::fmt::layer()
                .json()
                .with_current_span(true)
                .with_writer(move || logs.clone()),
        );
        let trace_id = "0af7651916cd43dd8448eb211c80319c";
        tracing::subscriber::with_default(subscriber, || {
            let request = http::Request::builder()
                .uri("/bank.ledger.v1.LedgerService/CreateTransfer")
                .header("traceparent", unsampled_traceparent(trace_id))
                .body(())
                .unwrap_or_else(|error| panic!("{error}"));
            log_inside(&grpc_request_span(&request));
        });
        buffer.assert_names(trace_id);
    }

    #[test]
    fn only_well_formed_traceparents_name_a_trace() {
        let trace_id = |value: &str| {
            let mut headers = http::HeaderMap::new();
            headers.insert(
                "traceparent",
                http::HeaderValue::from_str(value).unwrap_or_else(|error| panic!("{error}")),
            );
            traceparent_trace_id(&headers)
        };
        let id = "4bf92f3577b34da6a3ce929d0e0e4736";
        assert_eq!(
            trace_id(&format!("00-{id}-00f067aa0ba902b7-01")).as_deref(),
            Some(id)
        );
        // A later version may add fields; version 00 may not.
        assert!(trace_id(&format!("01-{id}-00f067aa0ba902b7-01-extra")).is_some());
        for malformed in [
            format!("00-{id}-00f067aa0ba902b7-01-extra"),
            format!("ff-{id}-00f067aa0ba902b7-01"),
            format!("00-{}-00f067aa0ba902b7-01", id.to_uppercase()),
            format!("00-{}-00f067aa0ba902b7-01", "0".repeat(32)),
            format!("00-{id}-0000000000000000-01"),
            format!("00-{}-00f067aa0ba902b7-01", &id[..31]),
            format!("00-{id}-00f067aa0ba902b7"),
            "not a traceparent".to_owned(),
        ] {
            assert_eq!(trace_id(&malformed), None, "{malformed}");
        }
        let sent = unsampled_traceparent(id);
        assert!(sent.ends_with("-00"), "{sent}");
        assert_eq!(trace_id(&sent).as_deref(), Some(id));
    }

    /// Log lines carry the request span's `trace_id`, and it is the
    /// OpenTelemetry trace id, continued from the caller's `traceparent`.
    #[test]
    fn log_lines_name_the_opentelemetry_trace() {
        opentelemetry::global::set_text_map_propagator(
            opentelemetry_sdk::propagation::TraceContextPropagator::new(),
        );
        let provider = SdkTracerProvider::builder().build();
        let buffer = Buffer::default();
        let logs = buffer.clone();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")))
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_current_span(true)
                    .with_writer(move || logs.clone()),
            );
        let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
        tracing::subscriber::with_default(subscriber, || {
            let request = http::Request::builder()
                .uri("/v1/transfers")
                .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
                .body(axum::body::Body::empty())
                .unwrap_or_else(|error| panic!("{error}"));
            log_inside(&http_request_span(&request));
        });
        buffer.assert_names(trace_id);
    }

    #[test]
    fn the_callers_trace_continues_across_grpc_metadata() {
        opentelemetry::global::set_text_map_propagator(
            opentelemetry_sdk::propagation::TraceContextPropagator::new(),
        );
        let provider = SdkTracerProvider::builder().build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        tracing::subscriber::with_default(subscriber, || {
            let caller = tracing::info_span!("caller");
            let _entered = caller.enter();
            let trace_id = caller.context().span().span_context().trace_id();

            let mut metadata = tonic::metadata::MetadataMap::new();
            inject_trace_context(&mut metadata);
            let mut request = http::Request::new(());
            *request.headers_mut() = metadata.into_headers();
            let callee = grpc_request_span(&request);

            assert_eq!(callee.context().span().span_context().trace_id(), trace_id);
        });
    }
}
