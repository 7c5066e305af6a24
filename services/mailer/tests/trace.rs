//! The mailer's spans: a delivery's first attempt is in the trace of the request that
//! made it (the call's), and a retry, which may come hours later, starts a trace of its
//! own that links to it. Spans are captured by an in-memory exporter.

use std::time::Duration;

use opentelemetry::trace::{SpanId, TraceId};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use phone_proto::mailer::v1 as pb;
use phone_proto::mailer::v1::mailer_client::MailerClient;
use phone_test_support::Mailpit;
use tracing::Instrument;

mod common;
use common::*;

fn attribute(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_links_to_the_calls_trace_and_the_first_attempt_is_in_it() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let _telemetry = service_runtime::telemetry::install("mailer", Some(provider)).unwrap();

    let files = Files::new();
    let mut mailpit = Mailpit::stopped();
    let key = files.record("100", "01764198309-cccc", &tone(600.0, 8000));
    let mut mailer = Running::start(mailer::Config {
        smtp: smtp_to(&mailpit),
        ..config(&files)
    })
    .await;
    let url = format!("http://{}", mailer.grpc);

    // The voicemail's request, made under the call's span, through the channel every
    // service uses (it carries traceparent).
    let call = tracing::info_span!("voicemail.deliver");
    let mut client = MailerClient::new(service_runtime::grpc::client_channel(&url).unwrap());
    client
        .deliver(request("100", "01764198309-cccc", &key))
        .instrument(call.clone())
        .await
        .unwrap();
    drop(call);

    // Two failed attempts while SMTP is down, then the server comes back.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while mailer.state("01764198309-cccc").await.attempts < 2 {
        assert!(tokio::time::Instant::now() < deadline, "no retry");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    mailpit.resume().await;
    let done = mailer
        .settled("01764198309-cccc", Duration::from_secs(10))
        .await;
    assert_eq!(done.state(), pb::DeliveryState::Sent, "{done:?}");
    let attempts = done.attempts;
    assert!(attempts >= 3, "{done:?}");
    mailer.stop().await;

    let spans = exporter.get_finished_spans().unwrap();
    let find = |name: &str| {
        spans
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no {name} span: {spans:#?}"))
    };
    let caller = find("voicemail.deliver");
    let trace = caller.span_context.trace_id();
    assert_ne!(trace, TraceId::INVALID);
    let server = find("phone.mailer.v1.Mailer/Deliver");
    assert_eq!(server.span_context.trace_id(), trace);
    assert_eq!(server.parent_span_id, caller.span_context.span_id());

    let attempt_spans: Vec<&SpanData> = spans
        .iter()
        .filter(|s| s.name == "mailer.attempt")
        .collect();
    assert_eq!(attempt_spans.len(), attempts as usize);
    let numbered = |n: u32| {
        attempt_spans
            .iter()
            .find(|s| attribute(s, "attempt") == Some(n.to_string()))
            .unwrap_or_else(|| panic!("no attempt {n}: {attempt_spans:#?}"))
    };

    // The first attempt: in the call's trace, below the Deliver request.
    let first = numbered(1);
    assert_eq!(first.span_context.trace_id(), trace);
    assert_eq!(first.parent_span_id, server.span_context.span_id());
    assert_eq!(
        attribute(first, "outcome").as_deref(),
        Some("temporary failure")
    );

    // Each retry: a root of its own trace, linked to the Deliver request.
    for n in 2..=attempts {
        let retry = numbered(n);
        assert_ne!(retry.span_context.trace_id(), trace, "attempt {n}");
        assert_eq!(retry.parent_span_id, SpanId::INVALID, "attempt {n}");
        let links: Vec<_> = retry.links.iter().map(|l| l.span_context.clone()).collect();
        assert_eq!(links.len(), 1, "attempt {n}: {links:?}");
        assert_eq!(links[0].trace_id(), trace, "attempt {n}");
        assert_eq!(links[0].span_id(), server.span_context.span_id());
    }
    let last = numbered(attempts);
    assert_eq!(attribute(last, "outcome").as_deref(), Some("sent"));

    // The sends: below their attempt; the failed ones say why.
    let sends: Vec<&SpanData> = spans.iter().filter(|s| s.name == "mailer.send").collect();
    let first_send = sends
        .iter()
        .find(|s| s.parent_span_id == first.span_context.span_id())
        .expect("the first attempt tried to send");
    assert!(attribute(first_send, "error").is_some_and(|e| e.contains("temporary")));
    let sent: Vec<_> = sends
        .iter()
        .filter(|s| s.parent_span_id == last.span_context.span_id())
        .collect();
    assert_eq!(sent.len(), 2, "the email and the pager mail");
    assert!(sent.iter().all(|s| attribute(s, "error").is_none()));
    assert_eq!(attribute(sent[0], "transport").as_deref(), Some("smtp"));
}
