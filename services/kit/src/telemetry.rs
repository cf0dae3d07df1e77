//! Logging and tracing set-up. Logs are human-readable in a terminal and JSON lines
//! otherwise; spans are exported over OTLP when `OTEL_EXPORTER_OTLP_ENDPOINT` is set.

use std::io::IsTerminal;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::{Resource, trace::SdkTracerProvider};
use tracing_subscriber::{EnvFilter, Layer, layer::SubscriberExt, util::SubscriberInitExt};

use crate::config::{ConfigError, Env};

/// Flushes exported spans when dropped at the end of `main`.
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
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

/// Installs the global subscriber. Must run inside the tokio runtime because the
/// OTLP exporter spawns onto it.
pub fn init(env: &Env, default_service_name: &str) -> Result<TelemetryGuard, ConfigError> {
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
            .boxed()
    } else {
        tracing_subscriber::fmt::layer().boxed()
    };

    let (otel_layer, provider) = match env.optional("OTEL_EXPORTER_OTLP_ENDPOINT") {
        None => (None, None),
        Some(endpoint) => {
            let service_name = env.string("OTEL_SERVICE_NAME", default_service_name);
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .build()
                .map_err(|error| {
                    ConfigError::new("OTEL_EXPORTER_OTLP_ENDPOINT", error.to_string())
                })?;
            let provider = SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_resource(Resource::builder().with_service_name(service_name).build())
                .build();
            let tracer = provider.tracer("bank");
            opentelemetry::global::set_text_map_propagator(
                opentelemetry_sdk::propagation::TraceContextPropagator::new(),
            );
            // The exporter's own transport must not be traced, or every export
            // produces spans that produce exports.
            let quiet_transport = EnvFilter::new("info,h2=off,hyper=off,tonic=off,tower=off");
            let layer = tracing_opentelemetry::layer()
                .with_tracer(tracer)
                .with_filter(quiet_transport);
            (Some(layer), Some(provider))
        }
    };

    tracing_subscriber::registry()
        .with(filter)
        .with(fmt_layer)
        .with(otel_layer)
        .try_init()
        .map_err(|error| ConfigError::new("RUST_LOG", error.to_string()))?;
    Ok(TelemetryGuard { provider })
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
    let span =
        tracing::info_span!("grpc.request", rpc = %request.uri().path(), trace_id = %request_id);
    // Fails only when no OpenTelemetry layer is installed, where there is no
    // trace to continue.
    let _ = span.set_parent(parent);
    span
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
