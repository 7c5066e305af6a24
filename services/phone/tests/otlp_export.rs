//! With the standard OTEL_EXPORTER_OTLP_ENDPOINT set, `phone` exports its spans over
//! OTLP/gRPC: a real OTLP trace receiver in the test collects them.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;

#[derive(Clone, Default)]
struct Receiver {
    requests: Arc<Mutex<Vec<ExportTraceServiceRequest>>>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.requests.lock().unwrap().push(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// (service.name, span name) of every span received.
fn received(receiver: &Receiver) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for request in receiver.requests.lock().unwrap().iter() {
        for resource_spans in &request.resource_spans {
            let service = resource_spans
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| kv.value.as_ref()?.value.as_ref())
                .map(|v| match v {
                    Value::StringValue(s) => s.clone(),
                    other => format!("{other:?}"),
                })
                .unwrap_or_default();
            for scope in &resource_spans.scope_spans {
                for span in &scope.spans {
                    out.push((service.clone(), span.name.clone()));
                }
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn spans_are_exported_over_otlp_when_the_endpoint_is_set() {
    let receiver = Receiver::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(receiver.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );

    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_phone"))
        .arg("--data-dir")
        .arg(dir.path())
        .args(["--sip-bind", "127.0.0.1:0", "--drain-deadline", "5s"])
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)
        .env_remove("OTEL_SERVICE_NAME")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let ready = tokio::task::spawn_blocking(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .any(|line| line == "ready")
    });
    assert!(
        tokio::time::timeout(Duration::from_secs(60), ready)
            .await
            .unwrap()
            .unwrap(),
        "phone printed ready"
    );
    // phone's own start-up health checks are gRPC requests, each a server span. The
    // batch exporter sends them on shutdown at the latest.
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let status = child.try_wait().unwrap().expect("phone exited");
    assert!(status.success(), "{status}");

    let spans = received(&receiver);
    assert!(
        spans
            .iter()
            .any(|(service, name)| service == "phone" && name == "grpc.health.v1.Health/Check"),
        "health-check server spans exported with service.name=phone: {spans:?}"
    );
}
