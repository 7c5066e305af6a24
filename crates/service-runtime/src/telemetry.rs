//! Logs and traces. `tracing` writes to stderr (filter with `RUST_LOG`, default `info`);
//! when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, spans are also exported over OTLP/gRPC
//! (the exporter reads the other standard `OTEL_EXPORTER_OTLP_*` variables too). W3C
//! trace context (`traceparent`) is the propagator either way, so a trace crosses
//! services even when only some of them export. `OTEL_BSP_SCHEDULE_DELAY` and the other
//! batch settings are read as the SDK documents them.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer;

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
    // `RUST_LOG` chooses what is logged, not what is traced: an operator who quiets the
    // logs to `warn` keeps the calls' spans (info and above).
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_filter(filter);
    let otel = provider.as_ref().map(|p| {
        opentelemetry::global::set_tracer_provider(p.clone());
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer(service))
            .with_filter(LevelFilter::INFO)
    });
    tracing_subscriber::registry()
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

/// `span`'s W3C `traceparent`, to keep with work that outlives the request that started
/// it (a message waiting for the mailer, an email waiting for its SMTP server), so the
/// later spans can join or link to the call's trace. `None` when the span is not traced.
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let mut carrier = std::collections::HashMap::new();
    let context = span.context();
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, &mut carrier);
    });
    carrier.remove("traceparent")
}

/// The span context a stored [`traceparent`] names (invalid when it is malformed).
fn stored_context(traceparent: &str) -> opentelemetry::Context {
    let carrier =
        std::collections::HashMap::from([("traceparent".to_owned(), traceparent.to_owned())]);
    opentelemetry::global::get_text_map_propagator(|propagator| propagator.extract(&carrier))
}

/// Makes `span` a child of the span a stored [`traceparent`] names: later work that is
/// still part of the call (a message handed to the mailer after a restart).
pub fn set_stored_parent(span: &tracing::Span, traceparent: &str) {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let _ = span.set_parent(stored_context(traceparent));
}

/// Links `span` to the span a stored [`traceparent`] names: work that belongs to the
/// call without being inside it (an email retried hours later gets a trace of its own).
pub fn link_stored(span: &tracing::Span, traceparent: &str) {
    use opentelemetry::trace::TraceContextExt;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let context = stored_context(traceparent);
    let linked = context.span().span_context().clone();
    if linked.is_valid() {
        span.add_link(linked);
    }
}
