//! The `sip-edge` process killed (SIGKILL) in the middle of an answered call and
//! started again on the same data: the audio goes on through the relay meanwhile, and
//! the restarted edge carries the call's re-INVITE and its end; the relay's sessions
//! come back to zero. The router and relay run in the test's process; the test plays
//! the carrier and the desk phone.

mod common;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;

/// A `sip-edge` process over `backend`, its SIP at `sip`.
struct EdgeProcess {
    child: Child,
}

impl EdgeProcess {
    fn start(backend: &Backend, sip: SocketAddr) -> Self {
        Self::start_with(backend, sip, &[])
    }

    fn start_with(backend: &Backend, sip: SocketAddr, flags: &[&str]) -> Self {
        let child = Command::new(env!("CARGO_BIN_EXE_sip-edge"))
            .args(["--config-dir", backend.conf.path().to_str().unwrap()])
            .args(["--data-dir", backend.data.path().to_str().unwrap()])
            .args(["--sip-bind", &sip.to_string()])
            .args(["--grpc-bind", "127.0.0.1:0", "--admin-bind", "127.0.0.1:0"])
            .args(["--router-url", &backend.router_url])
            .args(["--media-relays", &backend.relay_url])
            .args(["--sip-shards", "2"])
            .args(flags)
            .env("RUST_LOG", "sip_edge=info,sip_core=info")
            .stdout(Stdio::null())
            .stderr(if std::env::var_os("EDGE_LOG").is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .spawn()
            .expect("sip-edge starts");
        Self { child }
    }

    /// SIGTERM (a rollout), then waits for the process to exit; returns how long it
    /// took.
    fn terminate(&mut self) -> Duration {
        let started = std::time::Instant::now();
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let exit = self.child.wait().unwrap();
        assert!(exit.success(), "the edge exits cleanly: {exit:?}");
        started.elapsed()
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for EdgeProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A free UDP and TCP port on loopback for the edge's SIP.
fn free_sip_addr() -> SocketAddr {
    for _ in 0..50 {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = udp.local_addr().unwrap();
        if std::net::TcpListener::bind(addr).is_ok() {
            return addr;
        }
    }
    panic!("no free port")
}

/// Waits until the edge at `sip` answers SIP (a REGISTER challenged).
async fn until_up(sip: SocketAddr) {
    let probe = Peer::new(sip).await;
    let local = probe.addr();
    for _ in 0..100 {
        probe
            .send(&format!(
                "OPTIONS sip:{sip} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bKup{};rport\r\nMax-Forwards: 70\r\nFrom: <sip:probe@{local}>;tag=up\r\nTo: <sip:{sip}>\r\nCall-ID: up-{}@{local}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
                rand_suffix(),
                rand_suffix()
            ))
            .await;
        let mut buffer = [0u8; 4096];
        if let Ok(Ok(_)) = tokio::time::timeout(
            Duration::from_millis(100),
            probe.socket.recv_from(&mut buffer),
        )
        .await
        {
            return;
        }
    }
    panic!("the edge did not come up");
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

/// The backend (relay flags `relay_flags`), an edge process (flags `edge_flags`) up on
/// its SIP address, and the carrier.
async fn edge_scene(
    relay_flags: &[&str],
    edge_flags: &[&str],
) -> (Backend, SocketAddr, EdgeProcess, Peer) {
    let carrier_socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let backend = Backend::start(carrier_socket.local_addr().unwrap(), None, relay_flags).await;
    let sip = free_sip_addr();
    let edge = EdgeProcess::start_with(&backend, sip, edge_flags);
    until_up(sip).await;
    let carrier = Peer {
        socket: carrier_socket,
        edge: sip,
    };
    (backend, sip, edge, carrier)
}

/// The same with the desk phone registered.
async fn scene(relay_flags: &[&str]) -> (Backend, SocketAddr, EdgeProcess, Peer, Peer) {
    let (backend, sip, edge, carrier) = edge_scene(relay_flags, &[]).await;
    let phone = registered_phone(sip).await;
    (backend, sip, edge, carrier, phone)
}

#[tokio::test(flavor = "multi_thread")]
async fn an_answered_call_survives_a_killed_edge() {
    let (backend, sip, mut edge, carrier, phone) = scene(&[]).await;
    let (carrier_rtp, phone_rtp) = (rtp_socket().await, rtp_socket().await);

    let offer = did_call(&carrier, &carrier_rtp, "k1", "13105550199");
    carrier.send(&offer).await;
    let (ring, ok) = answer_call(&carrier, &phone, &phone_rtp, &offer, "ph1").await;
    let (relay_a, relay_b) = (sdp_media(&ok), sdp_media(&ring));
    assert!(
        audio_flows(&carrier_rtp, relay_a, &phone_rtp, 0xa1).await,
        "before"
    );
    assert!(
        audio_flows(&phone_rtp, relay_b, &carrier_rtp, 0xb1).await,
        "before"
    );
    // The record is written by a thread of its own: give it a moment.
    tokio::time::sleep(Duration::from_millis(300)).await;

    edge.kill();
    assert!(
        audio_flows(&carrier_rtp, relay_a, &phone_rtp, 0xa2).await,
        "while away"
    );
    assert!(
        audio_flows(&phone_rtp, relay_b, &carrier_rtp, 0xb2).await,
        "while away"
    );
    assert_eq!(backend.relay_sessions().await.len(), 1, "the session stays");

    let _edge = EdgeProcess::start(&backend, sip);
    until_up(sip).await;
    assert!(
        audio_flows(&carrier_rtp, relay_a, &phone_rtp, 0xa3).await,
        "after"
    );
    assert!(
        audio_flows(&phone_rtp, relay_b, &carrier_rtp, 0xb3).await,
        "after"
    );

    // Hold and resume from the carrier, answered from the relay.
    let hold = with_sdp(
        &in_dialog("INVITE", &offer, &ok, 2, sip),
        &sdp(carrier_rtp.local_addr().unwrap()).replace("sendrecv", "sendonly"),
    );
    carrier.send(&hold).await;
    let held = carrier.expect_status(200).await;
    assert_eq!(sdp_media(&held), relay_a, "{held}");
    assert!(body(&held).contains("a=recvonly"), "{held}");
    carrier.send(&in_dialog("ACK", &offer, &held, 2, sip)).await;
    let resume = with_sdp(
        &in_dialog("INVITE", &offer, &ok, 3, sip),
        &sdp(carrier_rtp.local_addr().unwrap()),
    );
    carrier.send(&resume).await;
    let resumed = carrier.expect_status(200).await;
    carrier
        .send(&in_dialog("ACK", &offer, &resumed, 3, sip))
        .await;
    assert!(
        audio_flows(&carrier_rtp, relay_a, &phone_rtp, 0xa4).await,
        "resumed"
    );

    // The carrier hangs up: the phone gets the BYE in its dialog; the session goes.
    carrier.send(&in_dialog("BYE", &offer, &ok, 4, sip)).await;
    carrier.expect_status(200).await;
    let bye = phone.expect("BYE ").await;
    assert!(header(&bye, "To").unwrap().contains("tag=ph1"), "{bye}");
    assert_eq!(header(&bye, "Call-ID"), header(&ring, "Call-ID"));
    phone.send(&response_to(&bye, 200, "OK", "", "")).await;
    assert!(
        backend.relay_sessions_reach(0).await,
        "the relay session is deleted"
    );
}

/// `request` (no body) with `sdp` as its body.
fn with_sdp(request: &str, sdp: &str) -> String {
    let head = request
        .strip_suffix("Content-Length: 0\r\n\r\n")
        .expect("a request without a body");
    format!(
        "{head}Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
        sdp.len()
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_call_that_ended_while_the_edge_was_away_is_cleaned_up() {
    // The relay ends sessions whose media stopped for 2 s.
    let (backend, sip, mut edge, carrier, phone) = scene(&["--media-timeout", "2s"]).await;
    let (carrier_rtp, phone_rtp) = (rtp_socket().await, rtp_socket().await);
    let offer = did_call(&carrier, &carrier_rtp, "k2", "13105550199");
    carrier.send(&offer).await;
    let (ring, ok) = answer_call(&carrier, &phone, &phone_rtp, &offer, "ph2").await;
    assert!(audio_flows(&carrier_rtp, sdp_media(&ok), &phone_rtp, 0xa5).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    edge.kill();

    // Both ends went quiet while the edge was away: the relay timed the session out.
    assert!(backend.relay_sessions_reach(0).await);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let _edge = EdgeProcess::start(&backend, sip);
    // The restored call finds no session: both legs get a BYE in their dialogs.
    let to_carrier = carrier.expect("BYE ").await;
    assert_eq!(header(&to_carrier, "Call-ID"), header(&offer, "Call-ID"));
    let to_phone = phone.expect("BYE ").await;
    assert_eq!(header(&to_phone, "Call-ID"), header(&ring, "Call-ID"));
    carrier
        .send(&response_to(&to_carrier, 200, "OK", "", ""))
        .await;
    phone.send(&response_to(&to_phone, 200, "OK", "", "")).await;
    assert!(backend.relay_sessions_reach(0).await);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_session_no_kept_call_owns_is_deleted_after_the_restart() {
    let (backend, sip, mut edge, carrier, phone) = scene(&[]).await;
    // A call still ringing when the edge dies: not answered, so not kept.
    let carrier_rtp = rtp_socket().await;
    let offer = did_call(&carrier, &carrier_rtp, "k3", "13105550124");
    carrier.send(&offer).await;
    phone.expect("INVITE ").await;
    assert!(backend.relay_sessions_reach(1).await);
    edge.kill();
    assert_eq!(backend.relay_sessions().await.len(), 1);

    let _edge = EdgeProcess::start(&backend, sip);
    until_up(sip).await;
    assert!(
        backend.relay_sessions_reach(0).await,
        "sessions left: {:?}",
        backend.relay_sessions().await
    );
}

/// A rollout: SIGTERM with the call still up. At the drain deadline the answered call
/// is handed over (no BYE to either side), the process exits, and the next edge
/// carries the call's end.
#[tokio::test(flavor = "multi_thread")]
async fn a_rollout_hands_the_answered_call_over_to_the_next_edge() {
    let (backend, sip, mut edge, carrier) = edge_scene(&[], &["--drain-deadline", "2s"]).await;
    let phone = registered_phone(sip).await;
    let (carrier_rtp, phone_rtp) = (rtp_socket().await, rtp_socket().await);
    let offer = did_call(&carrier, &carrier_rtp, "r1", "13105550199");
    carrier.send(&offer).await;
    let (ring, ok) = answer_call(&carrier, &phone, &phone_rtp, &offer, "ph4").await;
    let relay_a = sdp_media(&ok);
    assert!(audio_flows(&carrier_rtp, relay_a, &phone_rtp, 0xa6).await);

    let took = edge.terminate();
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(8),
        "the edge waited for the call up to its deadline, then left: {took:?}"
    );
    assert!(
        no_bye(&carrier).await && no_bye(&phone).await,
        "no BYE at the handover"
    );
    assert_eq!(backend.relay_sessions().await.len(), 1, "the session stays");
    assert!(
        audio_flows(&carrier_rtp, relay_a, &phone_rtp, 0xa7).await,
        "between edges"
    );

    let _next = EdgeProcess::start(&backend, sip);
    until_up(sip).await;
    phone
        .send(&format!(
            "BYE {} SIP/2.0\r\nVia: SIP/2.0/UDP {};branch=z9hG4bKbye4;rport\r\nMax-Forwards: 70\r\nFrom: {};tag=ph4\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: 1 BYE\r\nContent-Length: 0\r\n\r\n",
            contact_uri(&ring),
            phone.addr(),
            header(&ring, "To").unwrap(),
            header(&ring, "From").unwrap(),
            header(&ring, "Call-ID").unwrap(),
        ))
        .await;
    phone.expect_status(200).await;
    let bye = carrier.expect("BYE ").await;
    assert_eq!(header(&bye, "Call-ID"), header(&offer, "Call-ID"));
    carrier.send(&response_to(&bye, 200, "OK", "", "")).await;
    assert!(
        backend.relay_sessions_reach(0).await,
        "the relay session is deleted"
    );
}

/// The edge's Contact in its INVITE (where the phone sends requests in the dialog).
fn contact_uri(invite: &str) -> String {
    let contact = header(invite, "Contact").unwrap();
    contact
        .trim()
        .trim_start_matches('<')
        .split('>')
        .next()
        .unwrap()
        .to_owned()
}

/// Nothing but other messages than a BYE reach `peer` for 300 ms.
async fn no_bye(peer: &Peer) -> bool {
    let mut buffer = [0u8; 4096];
    loop {
        match tokio::time::timeout(
            Duration::from_millis(300),
            peer.socket.recv_from(&mut buffer),
        )
        .await
        {
            Err(_) => return true,
            Ok(Ok((n, _))) if buffer[..n].starts_with(b"BYE ") => return false,
            Ok(_) => {}
        }
    }
}

/// A real phone: baresip answers the carrier's call and talks (a tone); the edge is
/// SIGKILLed and started again. The carrier hears baresip and the relay carries the
/// carrier's sound to baresip before, while the edge is away and after; a re-INVITE
/// after the restart; the carrier's BYE reaches baresip, which answers it, and the
/// relay's session is deleted.
#[tokio::test(flavor = "multi_thread")]
async fn baresip_keeps_talking_through_a_killed_edge() {
    use common::phone::{heard, talking_baresip};
    let (backend, sip, mut edge, carrier) = edge_scene(&[], &[]).await;
    let dir = tempfile::tempdir().unwrap();
    let _baresip = talking_baresip(dir.path(), sip, "", ";answermode=auto");
    // Once baresip has registered (the edge's file of bindings says so), the call.
    let bindings = backend.data.path().join("registrations.journal");
    for _ in 0..200 {
        let text = std::fs::read_to_string(&bindings).unwrap_or_default();
        let table = std::fs::read_to_string(backend.data.path().join("registrations.json"))
            .unwrap_or_default();
        if text.contains("13235550100") || table.contains("13235550100") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let carrier_rtp = std::sync::Arc::new(rtp_socket().await);
    let offer = invite(
        carrier.addr(),
        &format!("sip:13235550100@{sip}"),
        "13105550199",
        "bk1",
        carrier_rtp.local_addr().unwrap(),
        "",
        1,
    );
    carrier.send(&offer).await;
    let ok = carrier.expect_final().await;
    assert!(ok.starts_with("SIP/2.0 200"), "{ok}");
    carrier.send(&in_dialog("ACK", &offer, &ok, 1, sip)).await;
    let relay_a = sdp_media(&ok);

    // The carrier talks all along (a sound of its own).
    let speaking = common::phone::speak(carrier_rtp.clone(), relay_a, 1000);
    assert!(
        heard(&carrier_rtp, 25).await >= 25,
        "before: the carrier hears baresip"
    );
    let before = backend_session_b_sent(&backend).await;

    edge.kill();
    assert!(
        heard(&carrier_rtp, 25).await >= 25,
        "while away: the carrier hears baresip"
    );
    let away = backend_session_b_sent(&backend).await;
    assert!(
        away >= before + 10,
        "while away: baresip gets the carrier's sound ({before} -> {away})"
    );

    let _edge = EdgeProcess::start(&backend, sip);
    until_up(sip).await;
    assert!(
        heard(&carrier_rtp, 25).await >= 25,
        "after: the carrier hears baresip"
    );
    let after = backend_session_b_sent(&backend).await;
    assert!(
        after >= away + 10,
        "after: baresip gets the carrier's sound ({away} -> {after})"
    );

    // A re-INVITE from the carrier after the restart: answered from the relay.
    let refresh = with_sdp(
        &in_dialog("INVITE", &offer, &ok, 2, sip),
        &sdp(carrier_rtp.local_addr().unwrap()),
    );
    carrier.send(&refresh).await;
    let refreshed = carrier.expect_status(200).await;
    assert_eq!(sdp_media(&refreshed), relay_a);
    carrier
        .send(&in_dialog("ACK", &offer, &refreshed, 2, sip))
        .await;
    assert!(heard(&carrier_rtp, 25).await >= 25, "after the re-INVITE");

    // The carrier hangs up: baresip answers the BYE; the session goes.
    carrier.send(&in_dialog("BYE", &offer, &ok, 3, sip)).await;
    carrier.expect_status(200).await;
    speaking.abort();
    assert!(
        backend.relay_sessions_reach(0).await,
        "the relay session is deleted"
    );
}

/// Packets the relay has sent on leg B (to the phone) in its one session.
async fn backend_session_b_sent(backend: &Backend) -> u64 {
    use phone_proto::media::v1 as media;
    let sessions = backend.relay_sessions().await;
    let id = sessions.first().expect("a session").session_id.clone();
    let mut client = phone_proto::media::v1::media_relay_client::MediaRelayClient::connect(
        backend.relay_url.clone(),
    )
    .await
    .unwrap();
    let stats = client
        .get_stats(media::GetStatsRequest { session_id: id })
        .await
        .unwrap()
        .into_inner();
    stats.b.map_or(0, |b| b.packets_sent)
}
