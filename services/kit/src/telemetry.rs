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
    let json = !std::io::stdout().is_terminal();
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
