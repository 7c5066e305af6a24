//! The relay as a service: real UDP peers on loopback exchange RTP through it while the
//! test drives it over gRPC, as the edge does. Each test has its own RTP port range
//! below the kernel's ephemeral range, so tests running at once never collide.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use media_relay::rtp::{build_rtp, RtpHeader};
use phone_proto::media::v1 as pb;
use phone_proto::media::v1::media_relay_client::MediaRelayClient;
use service_runtime::{CommonArgs, Shutdown};
use tokio::net::UdpSocket;
use tonic::transport::Channel;
use tonic::Code;

struct Relay {
    client: MediaRelayClient<Channel>,
    admin: SocketAddr,
    shutdown: Shutdown,
    task: tokio::task::JoinHandle<Result<(), media_relay::Error>>,
}

impl Relay {
    async fn start(ports: &str, extra: &[&str]) -> Self {
        let mut args = vec![
            "media-relay",
            "--rtp-ports",
            ports,
            "--rtp-bind-ip",
            "127.0.0.1",
            "--workers",
            "2",
        ];
        args.extend_from_slice(extra);
        let mut config = media_relay::Config::try_parse_from(args).unwrap();
        config.common = CommonArgs::loopback();
        // Sessions a test leaves behind hold the drain at stop for this long at most.
        config.common.drain_deadline = Duration::from_secs(1);
        let bound = media_relay::bind(config).await.unwrap();
        let info = bound.info();
        let shutdown = Shutdown::new();
        let task = tokio::spawn(bound.run(shutdown.clone()));
        let client = MediaRelayClient::connect(format!("http://{}", info.grpc))
            .await
            .unwrap();
        Relay {
            client,
            admin: info.admin,
            shutdown,
            task,
        }
    }

    async fn stop(self) {
        self.shutdown.trigger();
        self.task.await.unwrap().unwrap();
    }

    async fn metrics(&self) -> String {
        service_runtime::server::scrape_metrics(self.admin)
            .await
            .unwrap()
    }
}

fn endpoint(addr: SocketAddr) -> Option<pb::Endpoint> {
    Some(pb::Endpoint {
        ip: addr.ip().to_string(),
        port: u32::from(addr.port()),
    })
}

fn local(leg: &Option<pb::Leg>) -> SocketAddr {
    let local = leg.as_ref().unwrap().local.as_ref().unwrap();
    SocketAddr::new(local.ip.parse().unwrap(), local.port as u16)
}

/// Two phones on loopback and a session between them through the relay.
struct Call {
    id: String,
    a: UdpSocket,
    b: UdpSocket,
    /// The relay's ports for each leg.
    relay_a: SocketAddr,
    relay_b: SocketAddr,
}

/// A session as the edge makes one: leg A's far end given at creation (the caller's
/// offer), leg B's by UpdateLeg (the callee's answer).
async fn call(relay: &mut Relay, id: &str, latching: pb::Latching) -> Call {
    let a = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let b = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let session = relay
        .client
        .create_session(pb::CreateSessionRequest {
            session_id: id.into(),
            call_id: format!("{id}@test"),
            latching_a: latching.into(),
            latching_b: latching.into(),
            remote_a: endpoint(a.local_addr().unwrap()),
            event_payload_types_a: vec![101],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        session.a.as_ref().unwrap().remote,
        endpoint(a.local_addr().unwrap()),
        "leg A's far end is set at creation"
    );
    relay
        .client
        .update_leg(pb::UpdateLegRequest {
            session_id: id.into(),
            leg: pb::LegId::B.into(),
            remote: endpoint(b.local_addr().unwrap()),
            direction: pb::Direction::Sendrecv.into(),
            latching: latching.into(),
            clock_rate: 8000,
            event_payload_types: vec![101],
        })
        .await
        .unwrap();
    Call {
        id: id.into(),
        relay_a: local(&session.a),
        relay_b: local(&session.b),
        a,
        b,
    }
}

fn packet(ssrc: u32, sequence: u16, timestamp: u32) -> Vec<u8> {
    // The payload carries the sequence number, so the receiver can check it came
    // through untouched.
    let mut payload = vec![0xd5u8; 160];
    payload[..2].copy_from_slice(&sequence.to_be_bytes());
    build_rtp(
        &RtpHeader {
            payload_type: 0,
            marker: false,
            sequence,
            timestamp,
            ssrc,
        },
        &payload,
    )
}

async fn receive(socket: &UdpSocket) -> Option<(Vec<u8>, SocketAddr)> {
    let mut buf = vec![0u8; 2048];
    match tokio::time::timeout(Duration::from_secs(2), socket.recv_from(&mut buf)).await {
        Ok(Ok((len, from))) => {
            buf.truncate(len);
            Some((buf, from))
        }
        _ => None,
    }
}

/// Nothing arrives within a short while (after what should have arrived did).
async fn nothing_more(socket: &UdpSocket) -> bool {
    let mut buf = [0u8; 2048];
    tokio::time::timeout(Duration::from_millis(200), socket.recv_from(&mut buf))
        .await
        .is_err()
}

#[tokio::test]
async fn rtp_flows_both_ways_with_the_loss_and_jitter_the_test_injected() {
    let mut relay = Relay::start("24000-24019", &[]).await;
    let call = call(&mut relay, "flow", pb::Latching::Strict).await;

    // A -> B: sequence 0..300 with every 20th packet never sent (15 lost). Each packet
    // is sent once the previous one came out at B (so arrivals are evenly spaced), with
    // RTP timestamps that swing by 80 samples (10 ms at 8 kHz) from one packet to the
    // next: an interarrival jitter of 10 ms (RFC 3550 A.8).
    let mut forwarded = 0;
    for seq in (0..300u16).filter(|seq| seq % 20 != 10) {
        let sent = packet(0xa, seq, 8000 + 80 * (forwarded as u32 % 2));
        call.a.send_to(&sent, call.relay_a).await.unwrap();
        let (got, from) = receive(&call.b).await.expect("forwarded to B");
        assert_eq!(got, sent, "the payload is untouched");
        assert_eq!(from, call.relay_b, "B hears the relay's B port");
        forwarded += 1;
    }
    // B -> A: a clean stream (the timestamps keep pace with the lock-step arrivals).
    for seq in 0..100u16 {
        let sent = packet(0xb, seq, 0);
        call.b.send_to(&sent, call.relay_b).await.unwrap();
        let (got, from) = receive(&call.a).await.expect("forwarded to A");
        assert_eq!(got, sent);
        assert_eq!(from, call.relay_a);
    }
    // RTCP on the odd ports.
    let rtcp = [0x80, 201, 0, 1, 0, 0, 0, 0xa];
    let a_rtcp = UdpSocket::bind(SocketAddr::new(
        call.a.local_addr().unwrap().ip(),
        call.a.local_addr().unwrap().port() + 1,
    ))
    .await;
    let b_rtcp = UdpSocket::bind(SocketAddr::new(
        call.b.local_addr().unwrap().ip(),
        call.b.local_addr().unwrap().port() + 1,
    ))
    .await;
    // The odd port after an ephemeral one may be taken; RTCP is checked when it is not.
    let rtcp_sent = if let (Ok(a_rtcp), Ok(b_rtcp)) = (a_rtcp, b_rtcp) {
        let relay_a_rtcp = SocketAddr::new(call.relay_a.ip(), call.relay_a.port() + 1);
        a_rtcp.send_to(&rtcp, relay_a_rtcp).await.unwrap();
        let (got, from) = receive(&b_rtcp)
            .await
            .expect("RTCP forwarded to B's RTCP port");
        assert_eq!(got, rtcp);
        assert_eq!(from.port(), call.relay_b.port() + 1);
        1
    } else {
        0
    };

    let stats = relay
        .client
        .get_stats(pb::GetStatsRequest {
            session_id: call.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let a = stats.a.unwrap();
    let b = stats.b.unwrap();
    assert_eq!(a.packets_lost, 15);
    assert!(
        (a.jitter_ms - 10.0).abs() < 0.5,
        "A's jitter {} ms, injected 10 ms",
        a.jitter_ms
    );
    assert_eq!(b.packets_lost, 0);
    assert!(b.jitter_ms < 1.0, "B's jitter {} ms", b.jitter_ms);
    assert_eq!(a.packets_received, forwarded + rtcp_sent);
    assert_eq!(a.rtcp_packets_received, rtcp_sent);
    assert_eq!(b.packets_sent, forwarded + rtcp_sent);
    assert_eq!(b.bytes_sent, forwarded * 172 + rtcp_sent * 8);
    assert_eq!(a.packets_sent, 100);

    let metrics = relay.metrics().await;
    let rtp_total: u64 = metrics
        .lines()
        .filter(|l| {
            l.starts_with("phone_media_packets_forwarded_total{") && l.contains("kind=\"rtp\"")
        })
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(rtp_total, forwarded + 100, "{metrics}");

    let final_stats = relay
        .client
        .delete_session(pb::DeleteSessionRequest {
            session_id: call.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(final_stats.a.unwrap().packets_lost, 15);
    // Deleted means gone, and its ports stop forwarding.
    let err = relay
        .client
        .get_stats(pb::GetStatsRequest {
            session_id: call.id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    call.a
        .send_to(&packet(0xa, 400, 0), call.relay_a)
        .await
        .unwrap();
    assert!(nothing_more(&call.b).await);
    relay.stop().await;
}

#[tokio::test]
async fn spraying_the_ports_during_a_call_injects_nothing() {
    let mut relay = Relay::start("24040-24059", &[]).await;
    for latching in [pb::Latching::Strict, pb::Latching::Symmetric] {
        let id = format!("spray-{latching:?}");
        let call = call(&mut relay, &id, latching).await;
        let attacker = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        for seq in 0..50u16 {
            // The attacker, on the phones' own IP address, sprays both legs' RTP ports
            // with RTP that continues the phone's own sequence, before each of the
            // phones' packets.
            for target in [call.relay_a, call.relay_b] {
                attacker
                    .send_to(&packet(0xa, seq, 0), target)
                    .await
                    .unwrap();
            }
            let sent = packet(0xa, seq, 160 * u32::from(seq));
            call.a.send_to(&sent, call.relay_a).await.unwrap();
            let (got, from) = receive(&call.b).await.expect("the phone's packet");
            assert_eq!(got, sent, "{latching:?}: B hears A, never the attacker");
            assert_eq!(from, call.relay_b);
            let back = packet(0xb, seq, 160 * u32::from(seq));
            call.b.send_to(&back, call.relay_b).await.unwrap();
            assert_eq!(receive(&call.a).await.expect("B's packet").0, back);
        }
        assert!(nothing_more(&call.a).await && nothing_more(&call.b).await);
        let stats = relay
            .client
            .get_stats(pb::GetStatsRequest {
                session_id: id.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        let (a, b) = (stats.a.unwrap(), stats.b.unwrap());
        // A symmetric leg drops the very first spray as a learning candidate (the
        // phone had not spoken yet): not forwarded, but not yet foreign either.
        let before_latching = match latching {
            pb::Latching::Symmetric => 2,
            _ => 0,
        };
        assert_eq!(
            a.packets_foreign + b.packets_foreign,
            50 * 2 - before_latching,
            "{latching:?}"
        );
        assert_eq!((a.packets_received, b.packets_received), (50, 50));
        let session = relay
            .client
            .list_sessions(pb::ListSessionsRequest {})
            .await
            .unwrap()
            .into_inner()
            .sessions
            .into_iter()
            .find(|s| s.session_id == id)
            .unwrap();
        let latched = session.a.unwrap().latched.unwrap();
        assert_eq!(
            latched.port,
            u32::from(call.a.local_addr().unwrap().port()),
            "{latching:?}"
        );
        relay
            .client
            .delete_session(pb::DeleteSessionRequest { session_id: id })
            .await
            .unwrap();
    }
    let metrics = relay.metrics().await;
    assert!(
        metrics.contains("reason=\"foreign\""),
        "foreign drops are exported: {metrics}"
    );
    relay.stop().await;
}

#[tokio::test]
async fn an_exhausted_pool_says_so_and_deleted_ports_come_back() {
    // Two pairs: exactly one session.
    let mut relay = Relay::start("24100-24103", &[]).await;
    let first = call(&mut relay, "first", pb::Latching::Strict).await;
    let err = relay
        .client
        .create_session(pb::CreateSessionRequest {
            session_id: "second".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err}");
    assert!(
        err.message().contains("no free RTP/RTCP port pair"),
        "{err}"
    );
    // A retried create of an existing session is the same session.
    let again = relay
        .client
        .create_session(pb::CreateSessionRequest {
            session_id: "first".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(local(&again.a), first.relay_a);
    relay
        .client
        .delete_session(pb::DeleteSessionRequest {
            session_id: "first".into(),
        })
        .await
        .unwrap();
    let second = relay
        .client
        .create_session(pb::CreateSessionRequest {
            session_id: "second".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(second.a.is_some());
    let metrics = relay.metrics().await;
    assert!(
        metrics.contains("phone_media_sessions_refused_total{reason=\"ports_exhausted\"} 1"),
        "{metrics}"
    );
    relay.stop().await;
}

#[tokio::test]
async fn bad_requests_get_clear_errors() {
    let mut relay = Relay::start("24120-24139", &[]).await;
    let _call = call(&mut relay, "c", pb::Latching::Strict).await;
    let update = |leg: pb::LegId, ip: &str, port: u32| pb::UpdateLegRequest {
        session_id: "c".into(),
        leg: leg.into(),
        remote: Some(pb::Endpoint {
            ip: ip.into(),
            port,
        }),
        ..Default::default()
    };
    let cases = [
        (
            update(pb::LegId::Unspecified, "127.0.0.1", 4000),
            Code::InvalidArgument,
        ),
        (
            update(pb::LegId::A, "not-an-ip", 4000),
            Code::InvalidArgument,
        ),
        (
            update(pb::LegId::A, "127.0.0.1", 70000),
            Code::InvalidArgument,
        ),
        (
            update(pb::LegId::A, "224.0.0.1", 4000),
            Code::InvalidArgument,
        ),
        (
            pb::UpdateLegRequest {
                session_id: "nope".into(),
                ..update(pb::LegId::A, "127.0.0.1", 4000)
            },
            Code::NotFound,
        ),
    ];
    for (request, code) in cases {
        let err = relay.client.update_leg(request.clone()).await.unwrap_err();
        assert_eq!(err.code(), code, "{request:?}: {err}");
    }
    let err = relay
        .client
        .create_session(pb::CreateSessionRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    // Port 0 (a rejected stream) is accepted and means nowhere to send.
    let session = relay
        .client
        .update_leg(update(pb::LegId::B, "127.0.0.1", 0))
        .await
        .unwrap()
        .into_inner();
    assert!(session.b.unwrap().remote.is_none());
    relay.stop().await;
}

#[tokio::test]
async fn a_silent_call_times_out_with_an_event_and_its_ports_come_back() {
    let mut relay = Relay::start("24200-24219", &["--media-timeout", "1s"]).await;
    let mut events = relay
        .client
        .watch_events(pb::WatchEventsRequest {})
        .await
        .unwrap()
        .into_inner();
    let load = relay
        .client
        .get_load(pb::GetLoadRequest {})
        .await
        .unwrap()
        .into_inner();
    let call = call(&mut relay, "quiet", pb::Latching::Strict).await;
    // A speaks every 100 ms, B never does.
    let a = call.a;
    let relay_a = call.relay_a;
    let speaker = tokio::spawn(async move {
        for seq in 0.. {
            let _ = a.send_to(&packet(1, seq, 0), relay_a).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let timeout = tokio::time::timeout(Duration::from_secs(10), events.message())
        .await
        .expect("a timeout event within 10 s")
        .unwrap()
        .unwrap();
    assert_eq!(timeout.session_id, "quiet");
    match timeout.event {
        Some(pb::session_event::Event::MediaTimeout(t)) => {
            assert_eq!(t.leg, i32::from(pb::LegId::B));
            assert!(t.silent_secs >= 1);
        }
        other => panic!("expected a media timeout, got {other:?}"),
    }
    speaker.abort();
    let deleted = events.message().await.unwrap().unwrap();
    assert!(matches!(
        deleted.event,
        Some(pb::session_event::Event::Deleted(_))
    ));
    let after = relay
        .client
        .get_load(pb::GetLoadRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(after.free_port_pairs, load.free_port_pairs);
    assert_eq!(after.active_sessions, 0);
    relay.stop().await;
}

#[tokio::test]
async fn redirect_to_voicemail_and_back() {
    let mut relay = Relay::start("24240-24259", &[]).await;
    let call = call(&mut relay, "vm", pb::Latching::Strict).await;
    let voicemail = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    relay
        .client
        .redirect_leg(pb::RedirectLegRequest {
            session_id: "vm".into(),
            from: pb::LegId::A.into(),
            target: endpoint(voicemail.local_addr().unwrap()),
        })
        .await
        .unwrap();
    let greeting = packet(0x77, 1, 0);
    voicemail.send_to(&greeting, call.relay_b).await.unwrap();
    assert_eq!(receive(&call.a).await.unwrap().0, greeting);
    let message = packet(0xa, 1, 0);
    call.a.send_to(&message, call.relay_a).await.unwrap();
    assert_eq!(receive(&voicemail).await.unwrap().0, message);
    assert!(nothing_more(&call.b).await, "the phone hears nothing");
    relay.stop().await;
}

#[tokio::test]
async fn sdp_gets_the_advertised_address_not_the_bind_address() {
    // In Kubernetes the relay binds the pod's address and advertises the node's or a
    // public one.
    let mut relay = Relay::start("24260-24279", &["--advertise-ip", "203.0.113.10"]).await;
    let session = relay
        .client
        .create_session(pb::CreateSessionRequest {
            session_id: "nat".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    for leg in [session.a, session.b] {
        let local = leg.unwrap().local.unwrap();
        assert_eq!(local.ip, "203.0.113.10");
        assert_eq!(local.port % 2, 0, "RTP on an even port");
        assert!((24260..24279).contains(&local.port));
    }
    relay.stop().await;
}
