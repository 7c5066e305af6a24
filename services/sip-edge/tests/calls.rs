//! Calls through the B2BUA with the real router (the seed's `extensions.conf`) and a
//! real media relay, the test playing the carrier and the desk phone over UDP on
//! loopback: who gets which INVITE, what SDP says, that RTP flows both ways through
//! the relay, and how each call ends.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use phone_proto::media::v1 as media;
use phone_proto::media::v1::media_relay_client::MediaRelayClient;
use service_runtime::{CommonArgs, Shutdown};
use sip_edge::digest::{self, Challenge};
use tokio::net::UdpSocket;

fn seed_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy/examples/freelancer")
}

/// The seed's sip.conf with the carrier on the test's socket. On loopback the phone
/// shares the carrier's IP address, so the trunk is matched by address and port here
/// (`insecure=invite`, not `port,invite`), or every phone would pass for the carrier.
fn sip_conf(carrier: SocketAddr) -> String {
    std::fs::read_to_string(seed_dir().join("sip.conf"))
        .unwrap()
        .replace(
            "host=sip.flowroute.com",
            &format!("host=127.0.0.1\nport={}", carrier.port()),
        )
        .replacen("insecure=port,invite", "insecure=invite", 1)
}

struct System {
    edge_sip: SocketAddr,
    relay: String,
    stops: Vec<Shutdown>,
    _dirs: Vec<tempfile::TempDir>,
}

impl System {
    /// Relay, router and edge, with `extensions` as extensions.conf (or the seed's).
    async fn start(carrier: SocketAddr, extensions: Option<&str>) -> Self {
        let conf = tempfile::tempdir().unwrap();
        std::fs::write(conf.path().join("sip.conf"), sip_conf(carrier)).unwrap();
        for file in ["extensions.conf", "voicemail.conf"] {
            std::fs::copy(seed_dir().join(file), conf.path().join(file)).unwrap();
        }
        if let Some(text) = extensions {
            std::fs::write(conf.path().join("extensions.conf"), text).unwrap();
        }
        let data = tempfile::tempdir().unwrap();
        let mut stops = Vec::new();

        let mut relay_config = media_relay::Config::try_parse_from([
            "media-relay",
            "--rtp-ports",
            "25000-25099",
            "--rtp-bind-ip",
            "127.0.0.1",
            "--workers",
            "1",
        ])
        .unwrap();
        relay_config.common = CommonArgs::loopback();
        relay_config.common.drain_deadline = Duration::from_secs(1);
        let relay = media_relay::bind(relay_config).await.unwrap();
        let relay_url = format!("http://{}", relay.info().grpc);
        let stop = Shutdown::new();
        tokio::spawn(relay.run(stop.clone()));
        stops.push(stop);

        let router = router::bind(router::Config {
            common: CommonArgs::loopback(),
            config_dir: conf.path().to_owned(),
            edge_url: "http://127.0.0.1:9".into(),
            voicemail_url: "http://127.0.0.1:9".into(),
            reload_interval: Duration::ZERO,
            check_dialplan: false,
        })
        .await
        .unwrap();
        let router_url = format!("http://{}", router.info().grpc);
        let stop = Shutdown::new();
        tokio::spawn(router.run(stop.clone()));
        stops.push(stop);

        let mut config = sip_edge::Config::loopback(conf.path().to_owned(), data.path().to_owned());
        config.router_url = router_url;
        config.media_relays = vec![relay_url.clone()];
        let edge = sip_edge::bind(config).await.unwrap();
        let edge_sip = edge.sip_addr().unwrap();
        let stop = Shutdown::new();
        tokio::spawn(edge.run(stop.clone()));
        stops.push(stop);
        let system = Self {
            edge_sip,
            relay: relay_url,
            stops,
            _dirs: vec![conf, data],
        };
        // The edge polls the relay every 2 s; the first poll is at start.
        tokio::time::sleep(Duration::from_millis(300)).await;
        system
    }

    async fn relay_sessions(&self) -> usize {
        MediaRelayClient::connect(self.relay.clone())
            .await
            .unwrap()
            .list_sessions(media::ListSessionsRequest {})
            .await
            .unwrap()
            .into_inner()
            .sessions
            .len()
    }
}

impl Drop for System {
    fn drop(&mut self) {
        for stop in &self.stops {
            stop.trigger();
        }
    }
}

/// A SIP endpoint played by the test.
struct Peer {
    socket: UdpSocket,
    edge: SocketAddr,
}

fn header(message: &str, name: &str) -> Option<String> {
    message
        .split("\r\n\r\n")
        .next()?
        .split("\r\n")
        .filter_map(|l| l.split_once(':'))
        .find(|(n, _)| n.trim().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim().to_owned())
}

fn body(message: &str) -> &str {
    message.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("")
}

/// The audio address of an SDP body.
fn sdp_media(message: &str) -> SocketAddr {
    let sdp = body(message);
    let ip = sdp
        .lines()
        .find_map(|l| l.strip_prefix("c=IN IP4 "))
        .expect("c= line")
        .trim();
    let port = sdp
        .lines()
        .find_map(|l| l.strip_prefix("m=audio "))
        .expect("m=audio line")
        .split_whitespace()
        .next()
        .unwrap();
    format!("{ip}:{port}").parse().unwrap()
}

fn sdp(rtp: SocketAddr) -> String {
    format!(
        "v=0\r\no=- 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\nm=audio {port} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=sendrecv\r\n",
        ip = rtp.ip(),
        port = rtp.port()
    )
}

impl Peer {
    async fn new(edge: SocketAddr) -> Self {
        Self {
            socket: UdpSocket::bind("127.0.0.1:0").await.unwrap(),
            edge,
        }
    }

    fn addr(&self) -> SocketAddr {
        self.socket.local_addr().unwrap()
    }

    async fn send(&self, message: &str) {
        self.socket
            .send_to(message.as_bytes(), self.edge)
            .await
            .unwrap();
    }

    /// The next message other than an OPTIONS keep-alive (answered 200).
    async fn next(&self) -> String {
        let mut buffer = vec![0u8; 65_535];
        loop {
            let (n, _) =
                tokio::time::timeout(Duration::from_secs(10), self.socket.recv_from(&mut buffer))
                    .await
                    .expect("a message within 10 s")
                    .unwrap();
            let text = String::from_utf8_lossy(&buffer[..n]).into_owned();
            if std::env::var_os("SIP_TRACE").is_some() {
                eprintln!("<<< {} got:\n{text}", self.addr());
            }
            if text.starts_with("OPTIONS ") {
                self.send(&response_to(&text, 200, "OK", "", "")).await;
                continue;
            }
            return text;
        }
    }

    /// The next message that starts with `start` (skipping retransmissions and others).
    async fn expect(&self, start: &str) -> String {
        for _ in 0..20 {
            let message = self.next().await;
            if message.starts_with(start) {
                return message;
            }
        }
        panic!("no {start}");
    }

    /// The next response to `method` with a final or given status.
    async fn expect_status(&self, status: u16) -> String {
        self.expect(&format!("SIP/2.0 {status} ")).await
    }
}

/// A response to `request`, with `to_tag` added to its To (unless it has one).
fn response_to(request: &str, status: u16, reason: &str, to_tag: &str, sdp_body: &str) -> String {
    let mut out = format!("SIP/2.0 {status} {reason}\r\n");
    for name in ["Via", "From", "Call-ID", "CSeq"] {
        for line in request.split("\r\n\r\n").next().unwrap().split("\r\n") {
            if line
                .split_once(':')
                .is_some_and(|(n, _)| n.trim().eq_ignore_ascii_case(name))
            {
                out.push_str(line);
                out.push_str("\r\n");
            }
        }
    }
    let to = header(request, "To").unwrap();
    if to.contains(";tag=") || to_tag.is_empty() {
        out.push_str(&format!("To: {to}\r\n"));
    } else {
        out.push_str(&format!("To: {to};tag={to_tag}\r\n"));
    }
    if !sdp_body.is_empty() {
        out.push_str("Contact: <sip:phone@127.0.0.1>\r\nContent-Type: application/sdp\r\n");
    }
    out.push_str(&format!(
        "Content-Length: {}\r\n\r\n{sdp_body}",
        sdp_body.len()
    ));
    out
}

/// The desk phone, registered as the seed's line.
async fn registered_phone(edge: SocketAddr) -> Peer {
    let phone = Peer::new(edge).await;
    let local = phone.addr();
    let register = |cseq: u32, auth: &str| {
        format!(
            "REGISTER sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bKr{cseq};rport\r\nMax-Forwards: 70\r\nTo: <sip:13235550100@127.0.0.1>\r\nFrom: <sip:13235550100@127.0.0.1>;tag=p1\r\nCall-ID: reg@phone\r\nCSeq: {cseq} REGISTER\r\nContact: <sip:13235550100@{local}>;expires=600\r\n{auth}Content-Length: 0\r\n\r\n"
        )
    };
    phone.send(&register(1, "")).await;
    let challenge = phone.expect_status(401).await;
    let challenge = Challenge::parse(&header(&challenge, "WWW-Authenticate").unwrap()).unwrap();
    let creds = digest::authorize(
        &challenge,
        "13235550100",
        "password",
        "REGISTER",
        "sip:127.0.0.1",
        "c",
        1,
    );
    phone
        .send(&register(
            2,
            &format!("Authorization: {}\r\n", creds.to_header()),
        ))
        .await;
    phone.expect_status(200).await;
    phone
}

fn invite(
    from: SocketAddr,
    ruri: &str,
    caller: &str,
    call_id: &str,
    rtp: SocketAddr,
    auth: &str,
    cseq: u32,
) -> String {
    let body = sdp(rtp);
    format!(
        "INVITE {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP {from};branch=z9hG4bK{call_id}{cseq};rport\r\nMax-Forwards: 70\r\nFrom: \"Caller\" <sip:{caller}@{ip}>;tag=c{call_id}\r\nTo: <{ruri}>\r\nCall-ID: {call_id}\r\nCSeq: {cseq} INVITE\r\nContact: <sip:{caller}@{from}>\r\n{auth}Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{body}",
        body.len(),
        ip = from.ip()
    )
}

/// An in-dialog request from the side that sent `invite`, with the To of `answer`.
fn in_dialog(method: &str, invite: &str, answer: &str, cseq: u32, target: SocketAddr) -> String {
    let from = header(invite, "From").unwrap();
    let to = header(answer, "To").unwrap();
    let call_id = header(invite, "Call-ID").unwrap();
    let via_host = header(invite, "Via").unwrap();
    let via_host = via_host
        .split_whitespace()
        .nth(1)
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    format!(
        "{method} sip:edge@{target} SIP/2.0\r\nVia: SIP/2.0/UDP {via_host};branch=z9hG4bK{method}{cseq}x;rport\r\nMax-Forwards: 70\r\nFrom: {from}\r\nTo: {to}\r\nCall-ID: {call_id}\r\nCSeq: {cseq} {method}\r\nContent-Length: 0\r\n\r\n"
    )
}

async fn rtp_socket() -> UdpSocket {
    UdpSocket::bind("127.0.0.1:0").await.unwrap()
}

fn rtp(seq: u16, marker: u8) -> Vec<u8> {
    let mut packet = vec![0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, marker];
    packet[2..4].copy_from_slice(&seq.to_be_bytes());
    packet.extend_from_slice(&[marker; 160]);
    packet
}

/// Sends RTP from `from` to `to` until `at` receives it (latching takes a packet or
/// three); returns whether it arrived.
async fn audio_flows(from: &UdpSocket, to: SocketAddr, at: &UdpSocket, marker: u8) -> bool {
    let mut buffer = [0u8; 2048];
    for seq in 0..20u16 {
        from.send_to(&rtp(seq, marker), to).await.unwrap();
        if let Ok(Ok((n, _))) =
            tokio::time::timeout(Duration::from_millis(200), at.recv_from(&mut buffer)).await
        {
            if n == 172 && buffer[171] == marker {
                return true;
            }
        }
    }
    false
}

#[tokio::test(flavor = "multi_thread")]
async fn a_carrier_call_rings_the_desk_phone_which_answers_and_both_hear_each_other() {
    let carrier = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let carrier_addr = carrier.local_addr().unwrap();
    let system = System::start(carrier_addr, None).await;
    let carrier = Peer {
        socket: carrier,
        edge: system.edge_sip,
    };
    let phone = registered_phone(system.edge_sip).await;
    let carrier_rtp = rtp_socket().await;
    let phone_rtp = rtp_socket().await;

    // The carrier sends the DID call, unauthenticated (insecure=port,invite).
    let offer = invite(
        carrier.addr(),
        &format!("sip:13235550100@{}", system.edge_sip),
        "13105550199",
        "in1",
        carrier_rtp.local_addr().unwrap(),
        "",
        1,
    );
    carrier.send(&offer).await;
    carrier.expect_status(100).await;

    // The phone rings with an offer that points at the relay.
    let ring = phone.expect("INVITE ").await;
    assert!(
        header(&ring, "From").unwrap().contains("13105550199"),
        "{ring}"
    );
    let relay_b = sdp_media(&ring);
    assert!((25000..25100).contains(&relay_b.port()), "{ring}");
    assert!(body(&ring).contains("PCMU/8000"), "{ring}");
    phone
        .send(&response_to(&ring, 180, "Ringing", "ph1", ""))
        .await;
    carrier.expect_status(180).await;
    let answer_sdp = sdp(phone_rtp.local_addr().unwrap());
    phone
        .send(&response_to(&ring, 200, "OK", "ph1", &answer_sdp))
        .await;
    let ack = phone.expect("ACK ").await;
    assert!(header(&ack, "To").unwrap().contains("tag=ph1"), "{ack}");

    let ok = carrier.expect_status(200).await;
    let relay_a = sdp_media(&ok);
    assert!((25000..25100).contains(&relay_a.port()), "{ok}");
    assert_ne!(relay_a, relay_b);
    carrier
        .send(&in_dialog("ACK", &offer, &ok, 1, system.edge_sip))
        .await;

    // Audio both ways through the relay.
    assert!(
        audio_flows(&carrier_rtp, relay_a, &phone_rtp, 0xa1).await,
        "carrier -> phone"
    );
    assert!(
        audio_flows(&phone_rtp, relay_b, &carrier_rtp, 0xb2).await,
        "phone -> carrier"
    );
    assert_eq!(system.relay_sessions().await, 1);

    // The carrier hangs up: the phone gets a BYE, the relay session goes.
    carrier
        .send(&in_dialog("BYE", &offer, &ok, 2, system.edge_sip))
        .await;
    carrier.expect_status(200).await;
    let bye = phone.expect("BYE ").await;
    phone.send(&response_to(&bye, 200, "OK", "", "")).await;
    let mut left = 1;
    for _ in 0..100 {
        left = system.relay_sessions().await;
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(left, 0, "the media session is deleted");
}

#[tokio::test(flavor = "multi_thread")]
async fn nobody_answers_the_dial_times_out_with_cancel_and_the_dialplan_goes_on() {
    let carrier = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let carrier_addr = carrier.local_addr().unwrap();
    // The seed's inbound context with a 1 s Dial, then Busy() so that the carrier's
    // answer tells which way the dialplan went after NOANSWER.
    let extensions = "[inbound]\nexten => _1NXXNXXXXXX,1,Dial(SIP/${EXTEN},1)\n same => n,GotoIf($[\"${DIALSTATUS}\" = \"NOANSWER\"]?busy)\n same => n,Hangup()\n same => n(busy),Busy()\n\n[localexts]\nexten => 1,1,Hangup()\n";
    let system = System::start(carrier_addr, Some(extensions)).await;
    let carrier = Peer {
        socket: carrier,
        edge: system.edge_sip,
    };
    let phone = registered_phone(system.edge_sip).await;
    let carrier_rtp = rtp_socket().await;
    let offer = invite(
        carrier.addr(),
        &format!("sip:13235550100@{}", system.edge_sip),
        "13105550199",
        "in2",
        carrier_rtp.local_addr().unwrap(),
        "",
        1,
    );
    carrier.send(&offer).await;
    let ring = phone.expect("INVITE ").await;
    phone
        .send(&response_to(&ring, 180, "Ringing", "ph2", ""))
        .await;
    carrier.expect_status(180).await;
    // After the Dial timeout the edge CANCELs the ringing phone.
    let cancel = phone.expect("CANCEL ").await;
    assert_eq!(header(&cancel, "Call-ID"), header(&ring, "Call-ID"));
    phone.send(&response_to(&cancel, 200, "OK", "", "")).await;
    phone
        .send(&response_to(&ring, 487, "Request Terminated", "ph2", ""))
        .await;
    phone.expect("ACK ").await;
    // NOANSWER -> Busy(): the carrier gets 486.
    let busy = carrier.expect_status(486).await;
    assert!(header(&busy, "To").unwrap().contains("tag="), "{busy}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_caller_cancels_while_the_phone_rings() {
    let carrier = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let carrier_addr = carrier.local_addr().unwrap();
    let system = System::start(carrier_addr, None).await;
    let carrier = Peer {
        socket: carrier,
        edge: system.edge_sip,
    };
    let phone = registered_phone(system.edge_sip).await;
    let carrier_rtp = rtp_socket().await;
    let offer = invite(
        carrier.addr(),
        &format!("sip:13235550100@{}", system.edge_sip),
        "13105550199",
        "in3",
        carrier_rtp.local_addr().unwrap(),
        "",
        1,
    );
    carrier.send(&offer).await;
    let ring = phone.expect("INVITE ").await;
    phone
        .send(&response_to(&ring, 180, "Ringing", "ph3", ""))
        .await;
    carrier.expect_status(180).await;
    // CANCEL: same branch as the INVITE, CSeq 1 CANCEL.
    let cancel = offer
        .split("\r\n\r\n")
        .next()
        .unwrap()
        .replacen("INVITE ", "CANCEL ", 1)
        .replace("CSeq: 1 INVITE", "CSeq: 1 CANCEL")
        .lines()
        .filter(|l| !l.starts_with("Content-"))
        .collect::<Vec<_>>()
        .join("\r\n")
        + "\r\nContent-Length: 0\r\n\r\n";
    carrier.send(&cancel).await;
    carrier.expect_status(200).await;
    carrier.expect_status(487).await;
    let cancelled = phone.expect("CANCEL ").await;
    assert_eq!(header(&cancelled, "Call-ID"), header(&ring, "Call-ID"));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_outbound_call_answers_the_carriers_407_and_carries_the_line_caller_id() {
    let carrier = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let carrier_addr = carrier.local_addr().unwrap();
    let system = System::start(carrier_addr, None).await;
    let carrier = Peer {
        socket: carrier,
        edge: system.edge_sip,
    };
    let phone = registered_phone(system.edge_sip).await;
    let phone_rtp = rtp_socket().await;
    let carrier_rtp = rtp_socket().await;

    // The phone dials 10 digits; the edge challenges it first (407).
    let ruri = format!("sip:3105550123@{}", system.edge_sip);
    let first = invite(
        phone.addr(),
        &ruri,
        "13235550100",
        "out1",
        phone_rtp.local_addr().unwrap(),
        "",
        1,
    );
    phone.send(&first).await;
    let challenge = phone.expect_status(407).await;
    phone
        .send(
            &in_dialog("ACK", &first, &challenge, 1, system.edge_sip)
                .replace("branch=z9hG4bKACK1x", "branch=z9hG4bKout11"),
        )
        .await;
    let challenge = Challenge::parse(&header(&challenge, "Proxy-Authenticate").unwrap()).unwrap();
    let creds = digest::authorize(
        &challenge,
        "13235550100",
        "password",
        "INVITE",
        &ruri,
        "c",
        1,
    );
    let second = invite(
        phone.addr(),
        &ruri,
        "13235550100",
        "out1",
        phone_rtp.local_addr().unwrap(),
        &format!("Proxy-Authorization: {}\r\n", creds.to_header()),
        2,
    );
    phone.send(&second).await;

    // The carrier gets 1 + 10 digits, challenges with 407, and gets credentials.
    let outbound = carrier.expect("INVITE ").await;
    assert!(
        outbound.starts_with("INVITE sip:13105550123@127.0.0.1 "),
        "{outbound}"
    );
    assert!(
        header(&outbound, "From").unwrap().contains("13235550100"),
        "{outbound}"
    );
    assert!(
        header(&outbound, "P-Asserted-Identity")
            .unwrap()
            .contains("13235550100"),
        "{outbound}"
    );
    let nonce = "carriernonce1";
    let mut challenge_407 = response_to(&outbound, 407, "Proxy Authentication Required", "cr1", "");
    challenge_407 = challenge_407.replacen(
        "Content-Length: 0",
        &format!("Proxy-Authenticate: Digest realm=\"sip.flowroute.com\", nonce=\"{nonce}\", algorithm=MD5, qop=\"auth\"\r\nContent-Length: 0"),
        1,
    );
    carrier.send(&challenge_407).await;
    let ack = carrier.expect("ACK ").await;
    assert!(ack.starts_with("ACK sip:13105550123@127.0.0.1 "), "{ack}");
    let authed = carrier.expect("INVITE ").await;
    let credentials =
        digest::Credentials::parse(&header(&authed, "Proxy-Authorization").unwrap()).unwrap();
    assert_eq!(credentials.username, "12345678");
    let expected = digest::compute_response(
        digest::Algorithm::Md5,
        "12345678",
        "sip.flowroute.com",
        "password",
        "INVITE",
        &credentials.uri,
        nonce,
        credentials.qop.as_ref().map(|(n, c)| (*n, c.as_str())),
    );
    assert_eq!(
        credentials.response, expected,
        "the digest is right for the trunk's secret"
    );
    assert_eq!(header(&authed, "CSeq").unwrap(), "2 INVITE");

    carrier
        .send(&response_to(
            &authed,
            200,
            "OK",
            "cr2",
            &sdp(carrier_rtp.local_addr().unwrap()),
        ))
        .await;
    carrier.expect("ACK ").await;
    let ok = phone.expect_status(200).await;
    let relay_a = sdp_media(&ok);
    let relay_b = sdp_media(&authed);
    phone
        .send(&in_dialog("ACK", &second, &ok, 2, system.edge_sip))
        .await;
    assert!(
        audio_flows(&phone_rtp, relay_a, &carrier_rtp, 0xc3).await,
        "phone -> carrier"
    );
    assert!(
        audio_flows(&carrier_rtp, relay_b, &phone_rtp, 0xd4).await,
        "carrier -> phone"
    );

    // The carrier's side hangs up: the phone gets the BYE.
    let bye = format!(
        "BYE sip:13235550100@{edge} SIP/2.0\r\nVia: SIP/2.0/UDP {c};branch=z9hG4bKcbye;rport\r\nMax-Forwards: 70\r\nFrom: {to}\r\nTo: {from}\r\nCall-ID: {cid}\r\nCSeq: 1 BYE\r\nContent-Length: 0\r\n\r\n",
        edge = system.edge_sip,
        c = carrier.addr(),
        to = header(&response_to(&authed, 200, "OK", "cr2", ""), "To").unwrap(),
        from = header(&authed, "From").unwrap(),
        cid = header(&authed, "Call-ID").unwrap(),
    );
    carrier.send(&bye).await;
    carrier.expect_status(200).await;
    let bye = phone.expect("BYE ").await;
    phone.send(&response_to(&bye, 200, "OK", "", "")).await;
}
