//! The `media-relay` binary drains on SIGTERM: health turns NOT_SERVING, new sessions
//! are refused with UNAVAILABLE, and a call in progress keeps its audio until the edge
//! deletes it; then the process exits by itself, long before its drain deadline, even
//! with the edge's event watch still open.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use phone_proto::media::v1 as pb;
use phone_proto::media::v1::media_relay_client::MediaRelayClient;
use tokio::net::UdpSocket;
use tonic::transport::Channel;
use tonic::Code;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A loopback TCP port free right now (the relay binds it a moment later).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn connect(addr: SocketAddr) -> Channel {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
        {
            Ok(channel) => return channel,
            Err(e) if Instant::now() > deadline => panic!("relay never listened: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

async fn serving(channel: &Channel) -> i32 {
    HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .map(|r| r.into_inner().status)
        .unwrap_or(-1)
}

fn rtp(sequence: u16) -> Vec<u8> {
    let mut packet = vec![0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    packet[2..4].copy_from_slice(&sequence.to_be_bytes());
    packet.extend_from_slice(&[0xd5; 160]);
    packet
}

async fn forwards(a: &UdpSocket, relay_a: SocketAddr, b: &UdpSocket, sequence: u16) -> bool {
    a.send_to(&rtp(sequence), relay_a).await.unwrap();
    let mut buf = [0u8; 512];
    matches!(
        tokio::time::timeout(Duration::from_secs(2), b.recv_from(&mut buf)).await,
        Ok(Ok((len, _))) if buf[..len] == rtp(sequence)[..]
    )
}

#[tokio::test]
async fn sigterm_keeps_the_active_call_forwarding_and_refuses_new_ones() {
    let grpc = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut child = Process(
        Command::new(env!("CARGO_BIN_EXE_media-relay"))
            .args(["--grpc-bind", &grpc.to_string()])
            .args(["--admin-bind", "127.0.0.1:0"])
            .args(["--rtp-ports", "24300-24319", "--rtp-bind-ip", "127.0.0.1"])
            .args(["--drain-deadline", "60s"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("media-relay starts"),
    );
    let channel = connect(grpc).await;
    let mut relay = MediaRelayClient::new(channel.clone());
    assert_eq!(serving(&channel).await, 1, "SERVING before SIGTERM");
    // The edge watches each relay's events for as long as it knows the relay: a stream
    // that never ends by itself, which must not hold the drained relay up.
    let _events = MediaRelayClient::new(channel.clone())
        .watch_events(pb::WatchEventsRequest {})
        .await
        .unwrap()
        .into_inner();

    let a = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let b = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let session = relay
        .create_session(pb::CreateSessionRequest {
            session_id: "call-1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    for (leg, socket) in [(pb::LegId::A, &a), (pb::LegId::B, &b)] {
        let addr = socket.local_addr().unwrap();
        relay
            .update_leg(pb::UpdateLegRequest {
                session_id: "call-1".into(),
                leg: leg.into(),
                remote: Some(pb::Endpoint {
                    ip: addr.ip().to_string(),
                    port: u32::from(addr.port()),
                }),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let local = session.a.unwrap().local.unwrap();
    let relay_a = SocketAddr::new(local.ip.parse().unwrap(), local.port as u16);
    assert!(forwards(&a, relay_a, &b, 1).await);

    let status = Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    while serving(&channel).await != 2 {
        assert!(Instant::now() < deadline, "NOT_SERVING after SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Draining: the call goes on for as long as it lasts...
    for sequence in 2..50 {
        assert!(
            forwards(&a, relay_a, &b, sequence).await,
            "packet {sequence} forwarded while draining"
        );
    }
    // ...a new call goes to another relay...
    let refused = relay
        .create_session(pb::CreateSessionRequest {
            session_id: "call-2".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused}");
    let load = relay
        .get_load(pb::GetLoadRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(load.draining);
    assert_eq!(load.active_sessions, 1);
    assert!(child.0.try_wait().unwrap().is_none(), "still running");

    // ...and when the edge ends it, the relay exits well before the 60 s deadline.
    relay
        .delete_session(pb::DeleteSessionRequest {
            session_id: "call-1".into(),
        })
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let exit = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the relay exits once drained");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(exit.success(), "{exit}");
}
