//! With the standard OTEL_EXPORTER_OTLP_ENDPOINT set, `phone` exports its spans over
//! OTLP/gRPC: a real OTLP trace receiver in the test collects them.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use phone_test_support::otlp::Receiver;

#[tokio::test(flavor = "multi_thread")]
async fn spans_are_exported_over_otlp_when_the_endpoint_is_set() {
    let receiver = Receiver::start().await;
    let endpoint = receiver.endpoint.clone();

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
    let lines = tokio::task::spawn_blocking(move || {
        let mut lines = Vec::new();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line == "ready" {
                return Some(lines);
            }
            lines.push(line);
        }
        None
    });
    let lines = tokio::time::timeout(Duration::from_secs(60), lines)
        .await
        .unwrap()
        .unwrap()
        .expect("phone printed ready");
    let mailer = lines
        .iter()
        .find(|l| l.starts_with("mailer "))
        .and_then(|l| l.split_whitespace().find_map(|w| w.strip_prefix("grpc=")))
        .unwrap()
        .to_owned();

    // An RPC from a traced client: the mailer's server span goes to the receiver.
    let channel = service_runtime::grpc::client_channel(&format!("http://{mailer}")).unwrap();
    let answer = phone_proto::mailer::v1::mailer_client::MailerClient::new(channel)
        .list_pending(phone_proto::mailer::v1::ListPendingRequest {})
        .await;
    assert!(answer.unwrap().into_inner().deliveries.is_empty());

    // The batch exporter sends what it holds on shutdown at the latest.
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

    let spans: Vec<(String, String)> = receiver
        .spans()
        .into_iter()
        .map(|s| (s.service.clone(), s.name().to_owned()))
        .collect();
    assert!(
        spans
            .iter()
            .any(|(service, name)| service == "phone"
                && name == "phone.mailer.v1.Mailer/ListPending"),
        "the RPC's server span exported with service.name=phone: {spans:?}"
    );
    assert!(
        !spans
            .iter()
            .any(|(_, name)| name.starts_with("grpc.health.v1.Health")),
        "health checks (phone's own start-up probes) are not traced: {spans:?}"
    );
}
