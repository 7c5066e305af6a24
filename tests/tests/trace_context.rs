//! Trace context crosses a gRPC call between services: the caller's span (as the edge
//! opening a call-control stream) and the router's server span share one trace id, the
//! server span is the caller's child, and the router's span for the call's dialplan run
//! is the server span's child. Spans are captured by an in-test exporter.

use std::time::Duration;

use opentelemetry::trace::{SpanId, TraceId};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use phone_proto::router::v1::call_control_client::CallControlClient;
use phone_proto::router::v1::{ChannelEvent, NewChannel};
use phone_tests::{example_config_dir, wait_until};
use service_runtime::Shutdown;
use tracing::Instrument;

fn finished(exporter: &InMemorySpanExporter) -> Vec<SpanData> {
    exporter.get_finished_spans().unwrap()
}

fn new_channel() -> ChannelEvent {
    ChannelEvent {
        event: Some(phone_proto::router::v1::channel_event::Event::NewChannel(
            NewChannel {
                channel: "SIP/flowroute-0000000a".into(),
                context: "inbound".into(),
                exten: "13235550100".into(),
                ..Default::default()
            },
        )),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn trace_context_crosses_grpc_between_services() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let _telemetry =
        service_runtime::telemetry::install("phone-tests", Some(provider.clone())).unwrap();

    // The router, as it runs in production (its own gRPC server and runtime layers).
    let router = router::bind(router::Config::loopback(example_config_dir()))
        .await
        .unwrap();
    let url = format!("http://{}", router.info().grpc);
    let shutdown = Shutdown::new();
    let serving = tokio::spawn(router.run(shutdown.clone()));

    // The caller: the edge's client side, through the channel every service uses.
    let call_span =
        tracing::info_span!("sip-edge.call", otel.kind = "client", call_id = "abc@edge");
    let mut client = CallControlClient::new(service_runtime::grpc::client_channel(&url).unwrap());
    let (events, stream) = one_event_then_open(new_channel());
    let mut commands = client
        .run(stream)
        .instrument(call_span)
        .await
        .unwrap()
        .into_inner();
    // The router runs the seed's [inbound]: its first command dials the desk phone.
    let first = commands.message().await.unwrap().unwrap();
    assert!(matches!(
        first.command,
        Some(phone_proto::router::v1::dialplan_command::Command::Dial(_))
    ));
    // The edge closes its side: the caller hung up.
    drop(events);
    assert!(commands.message().await.unwrap().is_none(), "the call ends");

    // A call without the interceptor starts a trace of its own: the check below can fail.
    let plain = tonic::transport::Endpoint::from_shared(url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let (events, stream) = one_event_then_open(new_channel());
    let mut commands = CallControlClient::new(plain)
        .run(stream)
        .instrument(tracing::info_span!("untraced.call"))
        .await
        .unwrap()
        .into_inner();
    drop(events);
    while commands.message().await.unwrap().is_some() {}

    let spans = wait_until(Duration::from_secs(10), || {
        let spans = finished(&exporter);
        let servers = spans
            .iter()
            .filter(|s| s.name == "phone.router.v1.CallControl/Run")
            .count();
        let clients = spans
            .iter()
            .filter(|s| s.name.ends_with(".call") && !s.name.starts_with("router"))
            .count();
        let calls = spans.iter().filter(|s| s.name == "router.call").count();
        std::future::ready((servers == 2 && clients == 2 && calls == 2).then_some(spans))
    })
    .await
    .unwrap_or_else(|| panic!("spans not exported: {:#?}", finished(&exporter)));

    let find = |name: &str| spans.iter().find(|s| s.name == name).unwrap();
    let client_span = find("sip-edge.call");
    let server_spans: Vec<&SpanData> = spans
        .iter()
        .filter(|s| s.name == "phone.router.v1.CallControl/Run")
        .collect();
    let traced = server_spans
        .iter()
        .find(|s| s.span_context.trace_id() == client_span.span_context.trace_id())
        .expect("the router's span is in the caller's trace");
    assert_ne!(traced.span_context.trace_id(), TraceId::INVALID);
    assert_eq!(
        traced.parent_span_id,
        client_span.span_context.span_id(),
        "server span is the caller's child"
    );
    assert_eq!(traced.span_kind, opentelemetry::trace::SpanKind::Server);
    let attribute = |span: &SpanData, key: &str| {
        span.attributes
            .iter()
            .find(|kv| kv.key.as_str() == key)
            .map(|kv| kv.value.to_string())
    };
    assert_eq!(
        attribute(traced, "phone.service").as_deref(),
        Some("router")
    );
    assert_eq!(attribute(traced, "rpc.method").as_deref(), Some("Run"));
    // The dialplan run of the call is a child of the router's server span.
    let run = spans
        .iter()
        .find(|s| {
            s.name == "router.call"
                && s.span_context.trace_id() == client_span.span_context.trace_id()
        })
        .expect("the call's dialplan span is in the caller's trace");
    assert_eq!(run.parent_span_id, traced.span_context.span_id());
    assert_eq!(attribute(run, "context").as_deref(), Some("inbound"));

    let untraced_client = find("untraced.call");
    let untraced = server_spans
        .iter()
        .find(|s| s.span_context.trace_id() != client_span.span_context.trace_id())
        .expect("the second call has a server span too");
    assert_ne!(
        untraced.span_context.trace_id(),
        untraced_client.span_context.trace_id()
    );
    assert_eq!(
        untraced.parent_span_id,
        SpanId::INVALID,
        "no context, no parent"
    );

    shutdown.trigger();
    serving.await.unwrap().unwrap();
}

/// A request stream that starts with `event` and stays open (as the edge's does during
/// a call) until the returned sender is dropped.
fn one_event_then_open(
    event: ChannelEvent,
) -> (
    futures::channel::mpsc::UnboundedSender<ChannelEvent>,
    futures::channel::mpsc::UnboundedReceiver<ChannelEvent>,
) {
    let (tx, rx) = futures::channel::mpsc::unbounded();
    tx.unbounded_send(event).unwrap();
    (tx, rx)
}
