//! One trace per call, across the five services. The five service processes export
//! their spans over OTLP to a receiver in the test. The carrier brings a call to the
//! DID, nobody answers, the caller leaves a message and the mailer emails it. The
//! call's trace then holds spans from all five services, each below the one that caused
//! it:
//!
//! ```text
//! sip-edge.call                                       (sip-edge, the root)
//! ├── MediaRelay/CreateSession > media-relay.session  (media-relay, with final stats)
//! └── CallControl/Run > router.call > router.app ...  (router, one span per application)
//!     └── router.app VoiceMail > Voicemail/StartSession > voicemail.session
//!         ├── voicemail.recording, voicemail.upload
//!         └── voicemail.deliver > Mailer/Deliver > mailer.attempt > mailer.send
//! ```

use std::time::Duration;

use phone_test_support::free_port;
use phone_test_support::otlp::{Received, Receiver};
use phone_tests::baresip::{Phone, PhoneConfig};
use phone_tests::carrier::Carrier;
use phone_tests::system::{Mode, System};
use phone_tests::{tone, wait_until};

const DID: &str = "13235550100";

/// The spans of one trace, with lookups that explain themselves when they fail.
struct Trace(Vec<Received>);

impl Trace {
    fn one(&self, service: &str, name: &str) -> &Received {
        let found: Vec<&Received> = self
            .0
            .iter()
            .filter(|s| s.service == service && s.name() == name)
            .collect();
        assert!(
            !found.is_empty(),
            "no {name:?} span from {service} in the trace: {}",
            self.summary()
        );
        found[0]
    }

    /// The span `name` from `service` whose parent is `parent`.
    fn child(&self, parent: &Received, service: &str, name: &str) -> &Received {
        self.0
            .iter()
            .find(|s| s.service == service && s.name() == name && s.is_child_of(parent))
            .unwrap_or_else(|| {
                panic!(
                    "no {name:?} span from {service} below {:?} ({}): {}",
                    parent.name(),
                    parent.service,
                    self.summary()
                )
            })
    }

    fn summary(&self) -> String {
        let mut lines: Vec<String> = self
            .0
            .iter()
            .map(|s| {
                format!(
                    "\n  {} {} span={} parent={}",
                    s.service,
                    s.name(),
                    hex(&s.span.span_id),
                    hex(&s.span.parent_span_id)
                )
            })
            .collect();
        lines.sort();
        lines.concat()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inbound_call_to_voicemail_is_one_trace_across_the_five_services() {
    let receiver = Receiver::start().await;
    let sip = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    let carrier = Carrier::start(free_port(), sip);
    let system = System::start_with_env(
        Mode::FiveProcesses,
        sip,
        carrier.addr,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint.clone()),
            // Ended spans leave within a fraction of a second.
            ("OTEL_BSP_SCHEDULE_DELAY", "200".into()),
        ],
    )
    .await;
    carrier.ready().await;
    let pstn = Phone::start(PhoneConfig {
        aor: format!("pstn@{}", carrier.addr),
        password: "pstn",
        auto_answer: true,
        mwi: false,
        voice: tone(700.0),
    });
    let desk = Phone::start(PhoneConfig {
        aor: format!("{DID}@{sip}"),
        password: "password",
        auto_answer: false,
        mwi: false,
        voice: tone(440.0),
    });
    desk.assert_registers("desk").await;
    pstn.assert_registers("pstn").await;

    // Nobody answers; after 20 s the voicemail does, and the caller leaves a message.
    pstn.dial(&format!("sip:{DID}@{}", carrier.addr)).await;
    assert!(
        pstn.wait_for_output("established", Duration::from_secs(40))
            .await,
        "the voicemail answers:\n{}",
        pstn.output()
    );
    // The greeting and the beep take about 13 s; then a few seconds of message.
    tokio::time::sleep(Duration::from_secs(17)).await;
    pstn.hangup().await;
    let mails = system.mailpit.wait_for(1, Duration::from_secs(20)).await;
    assert_eq!(mails.len(), 1, "the message is emailed");

    // The call's trace: the edge's call span is its root, and the mailer's attempt is
    // in it once the email has gone (it ends after its send, and may reach the
    // receiver in a later batch; so may the voicemail's deliver, which ends when the
    // mailer has answered).
    let trace = wait_until(Duration::from_secs(30), || {
        let spans = receiver.spans();
        let found = spans
            .iter()
            .find(|s| s.service == "sip-edge" && s.name() == "sip-edge.call")
            .map(|root| root.span.trace_id.clone())
            .map(|id| {
                spans
                    .iter()
                    .filter(|s| s.span.trace_id == id)
                    .cloned()
                    .collect::<Vec<_>>()
            })
            .filter(|trace| {
                // Every span the checks below look for: each service exports in
                // batches of its own, so one may come a batch after the others.
                [
                    "media-relay.session",
                    "mailer.send",
                    "mailer.attempt",
                    "voicemail.session",
                    "voicemail.recording",
                    "voicemail.upload",
                    "voicemail.deliver",
                ]
                .iter()
                .all(|name| trace.iter().any(|s| s.name() == *name))
            });
        std::future::ready(found)
    })
    .await
    .map(Trace)
    .unwrap_or_else(|| {
        panic!(
            "no complete trace of the call; received: {}",
            Trace(receiver.spans()).summary()
        )
    });

    // One trace id, five services.
    let mut services: Vec<&str> = trace.0.iter().map(|s| s.service.as_str()).collect();
    services.sort();
    services.dedup();
    assert_eq!(
        services,
        ["mailer", "media-relay", "router", "sip-edge", "voicemail"],
        "{}",
        trace.summary()
    );

    // The edge: the call, the root of the trace, with its SIP facts.
    let call = trace.one("sip-edge", "sip-edge.call");
    assert!(call.span.parent_span_id.is_empty(), "the call is the root");
    assert_eq!(call.attribute("to").as_deref(), Some(DID));
    assert!(call.attribute("call_id").is_some_and(|c| !c.is_empty()));
    assert!(call.attribute("from").is_some());
    assert_eq!(
        call.attribute("sip.status").as_deref(),
        Some("200"),
        "the voicemail answered the caller"
    );
    assert_eq!(
        call.attribute("ended_by").as_deref(),
        Some("caller hung up")
    );

    // The media relay: the session, below its creation, with the final stats.
    let create = trace.child(
        call,
        "media-relay",
        "phone.media.v1.MediaRelay/CreateSession",
    );
    let session = trace.child(create, "media-relay", "media-relay.session");
    assert_eq!(session.attribute("ended_by").as_deref(), Some("deleted"));
    let received: u64 = session
        .attribute("a.packets_received")
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(
        received > 100,
        "the caller's RTP is counted on the session's span: {received}"
    );
    assert!(session.attribute("a.jitter_ms").is_some());

    // The router: the dialplan run, each application a span with its arguments.
    let run = trace.child(call, "router", "phone.router.v1.CallControl/Run");
    let dialplan = trace.child(run, "router", "router.call");
    assert_eq!(dialplan.attribute("context").as_deref(), Some("inbound"));
    let dial = trace.child(dialplan, "router", "router.app Dial");
    assert!(
        dial.attribute("args").is_some_and(|a| a.contains("SIP/")),
        "Dial's arguments: {:?}",
        dial.attribute("args")
    );
    let voicemail_app = trace.child(dialplan, "router", "router.app VoiceMail");

    // The voicemail: its session below the router's VoiceMail, then the recording and
    // the upload, and the request to the mailer.
    let start = trace.child(
        voicemail_app,
        "voicemail",
        "phone.voicemail.v1.Voicemail/StartSession",
    );
    let vm_session = trace.child(start, "voicemail", "voicemail.session");
    trace.child(vm_session, "voicemail", "voicemail.recording");
    let upload = trace.child(vm_session, "voicemail", "voicemail.upload");
    assert_eq!(upload.attribute("kept").as_deref(), Some("stored"));
    let deliver = trace.child(vm_session, "voicemail", "voicemail.deliver");

    // The mailer: the delivery request, the attempt and the SMTP send.
    let request = trace.child(deliver, "mailer", "phone.mailer.v1.Mailer/Deliver");
    let attempt = trace.child(request, "mailer", "mailer.attempt");
    assert_eq!(attempt.attribute("outcome").as_deref(), Some("sent"));
    let send = trace.child(attempt, "mailer", "mailer.send");
    assert_eq!(send.attribute("transport").as_deref(), Some("smtp"));
    assert_eq!(send.attribute("kind").as_deref(), Some("email"));

    drop(system);
}
