//! Logs and traces. `tracing` writes to stderr (filter with `RUST_LOG`, default `info`);
//! when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, spans are also exported over OTLP/gRPC
//! (the exporter reads the other standard `OTEL_EXPORTER_OTLP_*` variables too). W3C
//! trace context (`traceparent`) is the propagator either way, so a trace crosses
//! services even when only some of them export.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

use crate::Error;

/// The standard variable that turns OTLP export on.
pub const OTLP_ENDPOINT_ENV: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";

/// Flushes and stops the exporter when dropped (at the end of `main`).
#[must_use = "dropping the guard stops trace export"]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            if let Err(e) = provider.shutdown() {
                eprintln!("trace export did not shut down cleanly: {e}");
            }
        }
    }
}

/// Sets up logging, and OTLP export when `OTEL_EXPORTER_OTLP_ENDPOINT` is set.
/// `service` becomes the OpenTelemetry `service.name` (unless `OTEL_SERVICE_NAME` says
/// otherwise). Call once per process, inside a tokio runtime.
pub fn init(service: &'static str) -> Result<TelemetryGuard, Error> {
    let provider = match std::env::var_os(OTLP_ENDPOINT_ENV) {
        Some(endpoint) if !endpoint.is_empty() => {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .build()
                .map_err(|e| Error::Telemetry(e.to_string()))?;
            Some(
                SdkTracerProvider::builder()
                    .with_batch_exporter(exporter)
                    .with_resource(resource(service))
                    .build(),
            )
        }
        _ => None,
    };
    install(service, provider)
}

/// Like [`init`] but with a tracer provider of the caller's (tests use an in-memory
/// exporter). With `None`, only logs.
pub fn install(
    service: &'static str,
    provider: Option<SdkTracerProvider>,
) -> Result<TelemetryGuard, Error> {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let otel = provider.as_ref().map(|p| {
        opentelemetry::global::set_tracer_provider(p.clone());
        tracing_opentelemetry::layer().with_tracer(p.tracer(service))
    });
    tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(otel)
        .try_init()
        .map_err(|e| Error::Telemetry(e.to_string()))?;
    Ok(TelemetryGuard { provider })
}

/// `service.name` (and `OTEL_RESOURCE_ATTRIBUTES`, read by the SDK's default detectors).
pub fn resource(service: &'static str) -> Resource {
    let builder = Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_some() {
        builder.build()
    } else {
        builder.with_service_name(service).build()
    }
}
