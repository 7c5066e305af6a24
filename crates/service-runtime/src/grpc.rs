//! Trace context across gRPC, both ways, so that one call is one trace across all
//! services.
//!
//! - Server side, [`ServerTraceLayer`]: every request gets a `grpc.server` span whose
//!   parent is the W3C `traceparent` in the request's metadata (a new trace when there
//!   is none), and counts in the service's request metrics.
//! - Client side, [`TraceContextInterceptor`]: every outgoing request carries the
//!   current span's context in `traceparent`/`tracestate`. [`client_channel`] builds a
//!   lazily connecting channel to another service with it.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use http::HeaderMap;
use opentelemetry::propagation::{Extractor, Injector};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::Error;

/// A channel to another service that injects trace context into every request.
pub type TracedChannel = InterceptedService<Channel, TraceContextInterceptor>;

/// A channel to `url` (`http://router:50051`) that connects on first use and reconnects
/// after failures, with trace context injected. Creating it does no IO, so services
/// start in any order.
pub fn client_channel(url: &str) -> Result<TracedChannel, Error> {
    let endpoint = Endpoint::from_shared(url.to_owned()).map_err(|e| Error::Endpoint {
        url: url.to_owned(),
        message: e.to_string(),
    })?;
    let channel = endpoint
        .connect_timeout(std::time::Duration::from_secs(5))
        .tcp_nodelay(true)
        .connect_lazy();
    Ok(InterceptedService::new(channel, TraceContextInterceptor))
}

/// Writes the current span's trace context into the request metadata.
#[derive(Debug, Clone, Copy, Default)]
pub struct TraceContextInterceptor;

impl tonic::service::Interceptor for TraceContextInterceptor {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        inject(&tracing::Span::current(), request.metadata_mut());
        Ok(request)
    }
}

/// Writes `span`'s trace context into `metadata`.
pub fn inject(span: &tracing::Span, metadata: &mut MetadataMap) {
    let context = span.context();
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, &mut MetadataInjector(metadata));
    });
}

struct MetadataInjector<'a>(&'a mut MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) = (
            MetadataKey::from_bytes(key.as_bytes()),
            MetadataValue::try_from(value.as_str()),
        ) {
            self.0.insert(key, value);
        }
    }
}

struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// Request metrics of one gRPC server.
#[derive(Debug, Clone)]
pub struct GrpcMetrics {
    started: Family<MethodLabels, Counter>,
    handling: Family<MethodLabels, Histogram>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    service: String,
    method: String,
}

impl GrpcMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let started = Family::<MethodLabels, Counter>::default();
        let handling = Family::<MethodLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.0, 16))
        });
        registry.register(
            "grpc_server_started",
            "gRPC requests received, by service and method",
            started.clone(),
        );
        registry.register(
            "grpc_server_handling_seconds",
            "Time from a gRPC request to its response headers, by service and method",
            handling.clone(),
        );
        Self { started, handling }
    }
}

/// The gRPC name of the standard health service, whose requests get no span.
const HEALTH_SERVICE: &str = "grpc.health.v1.Health";

/// The server-side layer: a span per request (health checks excepted), child of the caller's trace, and metrics.
#[derive(Debug, Clone)]
pub struct ServerTraceLayer {
    service: &'static str,
    metrics: Arc<GrpcMetrics>,
}

impl ServerTraceLayer {
    pub fn new(service: &'static str, metrics: GrpcMetrics) -> Self {
        Self {
            service,
            metrics: Arc::new(metrics),
        }
    }
}

impl<S> tower::Layer<S> for ServerTraceLayer {
    type Service = ServerTrace<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ServerTrace {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct ServerTrace<S> {
    inner: S,
    layer: ServerTraceLayer,
}

impl<S, B> tower::Service<http::Request<B>> for ServerTrace<S>
where
    S: tower::Service<http::Request<B>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = futures::future::BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let path = request.uri().path().to_owned();
        let (rpc_service, rpc_method) = path
            .trim_start_matches('/')
            .split_once('/')
            .unwrap_or((path.as_str(), ""));
        let labels = MethodLabels {
            service: self.layer.service.to_owned(),
            method: path.clone(),
        };
        self.layer.metrics.started.get_or_create(&labels).inc();
        let metrics = self.layer.metrics.clone();
        let started = Instant::now();
        let timed = |future: S::Future| async move {
            let result = future.await;
            metrics
                .handling
                .get_or_create(&labels)
                .observe(started.elapsed().as_secs_f64());
            result
        };

        // Probes run every few seconds on every pod; a trace each would drown the calls
        // in Tempo. They are counted, not traced.
        if rpc_service == HEALTH_SERVICE {
            return Box::pin(timed(self.inner.call(request)));
        }

        let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
            propagator.extract(&HeaderExtractor(request.headers()))
        });
        let span = tracing::info_span!(
            "grpc.server",
            otel.name = %path.trim_start_matches('/'),
            otel.kind = "server",
            rpc.system = "grpc",
            rpc.service = %rpc_service,
            rpc.method = %rpc_method,
            phone.service = self.layer.service,
        );
        let _ = span.set_parent(parent);
        let future = span.in_scope(|| self.inner.call(request));
        Box::pin(timed(future).instrument(span))
    }
}

/// The answer of an RPC whose service is running but whose behaviour lands with a
/// later issue: `UNIMPLEMENTED`, naming the issue, never a made-up result.
pub fn not_yet(rpc: &str, issue: u32) -> tonic::Status {
    tonic::Status::unimplemented(format!("{rpc} is not implemented yet (issue #{issue})"))
}
