//! What the call tests share: the system (relay, router, edge) on loopback, and a
//! SIP endpoint played by the test with helpers for the messages it sends.
#![allow(dead_code)]

pub mod phone;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use phone_proto::media::v1 as media;
use phone_proto::media::v1::media_relay_client::MediaRelayClient;
use service_runtime::{CommonArgs, Shutdown};
use sip_edge::digest::{self, Challenge};
use tokio::net::UdpSocket;

pub fn seed_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy/examples/freelancer")
}

/// The seed's sip.conf with the carrier on the test's socket. On loopback the phone
/// shares the carrier's IP address, so the trunk is matched by address and port here
/// (`insecure=invite`, not `port,invite`), or every phone would pass for the carrier.
pub fn sip_conf(carrier: SocketAddr) -> String {
    std::fs::read_to_string(seed_dir().join("sip.conf"))
        .unwrap()
        .replace(
            "host=sip.flowroute.com",
            &format!("host=127.0.0.1\nport={}", carrier.port()),
        )
        .replacen("insecure=port,invite", "insecure=invite", 1)
}

/// The edge's drain settings in a test.
#[derive(Debug, Clone, Copy)]
pub struct EdgeOptions {
    pub drain_deadline: Duration,
    pub keep_calls: bool,
}

impl Default for EdgeOptions {
    fn default() -> Self {
        Self {
            drain_deadline: Duration::from_secs(30),
            keep_calls: true,
        }
    }
}

/// Everything but the edge: relay, mailer, voicemail and router on loopback, with the
/// seed's configuration (the carrier at `carrier`).
pub struct Backend {
    pub conf: tempfile::TempDir,
    /// The edge's data directory (the edge is not started).
    pub data: tempfile::TempDir,
    pub voicemail_data: tempfile::TempDir,
    pub mailer_data: tempfile::TempDir,
    pub relay_url: String,
    pub router_url: String,
    pub stops: Vec<Shutdown>,
}

impl Backend {
    pub async fn start(
        carrier: SocketAddr,
        extensions: Option<&str>,
        relay_flags: &[&str],
    ) -> Self {
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

        let mut flags = vec![
            "media-relay",
            "--rtp-bind-ip",
            "127.0.0.1",
            "--workers",
            "1",
        ];
        if !relay_flags.contains(&"--rtp-ports") {
            flags.extend_from_slice(&["--rtp-ports", "25000-25099"]);
        }
        flags.extend_from_slice(relay_flags);
        let mut relay_config = media_relay::Config::try_parse_from(flags).unwrap();
        relay_config.common = CommonArgs::loopback();
        relay_config.common.drain_deadline = Duration::from_secs(1);
        let relay = media_relay::bind(relay_config).await.unwrap();
        let relay_url = format!("http://{}", relay.info().grpc);
        let stop = Shutdown::new();
        tokio::spawn(relay.run(stop.clone()));
        stops.push(stop);

        // The mailer, writing .eml files (no SMTP server here), and the voicemail, with
        // messages in a folder; MWI updates are not needed here.
        let voicemail_data = tempfile::tempdir().unwrap();
        let mailer_data = tempfile::tempdir().unwrap();
        let mailer = mailer::bind(mailer::Config::loopback(
            conf.path().to_owned(),
            mailer_data.path().to_owned(),
            voicemail_data.path().join("messages"),
        ))
        .await
        .unwrap();
        let mailer_url = format!("http://{}", mailer.info().grpc);
        let stop = Shutdown::new();
        tokio::spawn(mailer.run(stop.clone()));
        stops.push(stop);
        let mut vm_config = voicemail::Config::try_parse_from([
            "voicemail",
            "--rtp-bind-ip",
            "127.0.0.1",
            "--mailer-url",
            &mailer_url,
            "--edge-url",
            "http://127.0.0.1:9",
        ])
        .unwrap();
        vm_config.common = CommonArgs::loopback();
        vm_config.common.drain_deadline = Duration::from_secs(1);
        vm_config.config_dir = conf.path().to_owned();
        vm_config.data_dir = voicemail_data.path().to_owned();
        let voicemail = voicemail::bind(vm_config).await.unwrap();
        let voicemail_url = format!("http://{}", voicemail.info().grpc);
        let stop = Shutdown::new();
        tokio::spawn(voicemail.run(stop.clone()));
        stops.push(stop);

        let router = router::bind(router::Config {
            voicemail_url,
            ..router::Config::loopback(conf.path().to_owned())
        })
        .await
        .unwrap();
        let router_url = format!("http://{}", router.info().grpc);
        let stop = Shutdown::new();
        tokio::spawn(router.run(stop.clone()));
        stops.push(stop);

        Self {
            conf,
            data,
            voicemail_data,
            mailer_data,
            relay_url,
            router_url,
            stops,
        }
    }

    pub async fn relay_sessions(&self) -> Vec<media::Session> {
        list_relay_sessions(&self.relay_url).await
    }

    /// Whether the relay comes to hold `count` sessions within 5 s.
    pub async fn relay_sessions_reach(&self, count: usize) -> bool {
        relay_sessions_reach(&self.relay_url, count).await
    }
}

/// The sessions of the relay at `url`.
pub async fn list_relay_sessions(url: &str) -> Vec<media::Session> {
    MediaRelayClient::connect(url.to_owned())
        .await
        .unwrap()
        .list_sessions(media::ListSessionsRequest {})
        .await
        .unwrap()
        .into_inner()
        .sessions
}

/// Whether the relay at `url` comes to hold `count` sessions within 5 s.
pub async fn relay_sessions_reach(url: &str, count: usize) -> bool {
    for _ in 0..100 {
        if list_relay_sessions(url).await.len() == count {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

pub struct System {
    pub edge_sip: SocketAddr,
    pub edge_grpc: String,
    pub relay: String,
    /// Where the voicemail keeps messages (its folder store).
    pub voicemail_messages: PathBuf,
    /// Where the mailer writes the emails (`<id>.email.eml`).
    pub mail: PathBuf,
    /// The edge's SIP side, to give it lines as resources would.
    pub edge: std::sync::Arc<sip_edge::driver::Driver>,
    /// The edge's own shutdown (SIGTERM) and its task, for drain tests.
    pub edge_stop: Shutdown,
    pub edge_task: Option<tokio::task::JoinHandle<Result<(), sip_edge::Error>>>,
    stops: Vec<Shutdown>,
    _dirs: Vec<tempfile::TempDir>,
}

impl System {
    /// Relay, mailer, voicemail, router and edge, with `extensions` as extensions.conf (or the
    /// seed's).
    pub async fn start(carrier: SocketAddr, extensions: Option<&str>) -> Self {
        Self::start_with(carrier, extensions, &[]).await
    }

    /// The same with extra flags for the relay.
    pub async fn start_with(
        carrier: SocketAddr,
        extensions: Option<&str>,
        relay_flags: &[&str],
    ) -> Self {
        Self::start_draining_in(carrier, extensions, relay_flags, EdgeOptions::default()).await
    }

    /// The same with the edge's drain settings.
    pub async fn start_draining_in(
        carrier: SocketAddr,
        extensions: Option<&str>,
        relay_flags: &[&str],
        options: EdgeOptions,
    ) -> Self {
        let Backend {
            conf,
            data,
            voicemail_data,
            mailer_data,
            relay_url,
            router_url,
            mut stops,
        } = Backend::start(carrier, extensions, relay_flags).await;
        let mut config = sip_edge::Config::loopback(conf.path().to_owned(), data.path().to_owned());
        // Three shards whatever the machine: every message must find its shard.
        config.sip_shards = 3;
        config.router_url = router_url;
        config.media_relays = vec![relay_url.clone()];
        config.common.drain_deadline = options.drain_deadline;
        config.keep_calls = options.keep_calls;
        let edge = sip_edge::bind(config).await.unwrap();
        let edge_sip = edge.sip_addr().unwrap();
        let edge_driver = edge.edge();
        let edge_grpc = format!("http://{}", edge.info().grpc);
        let edge_stop = Shutdown::new();
        let edge_task = Some(tokio::spawn(edge.run(edge_stop.clone())));
        stops.push(edge_stop.clone());
        let system = Self {
            edge_sip,
            edge: edge_driver,
            edge_stop,
            edge_task,
            edge_grpc,
            relay: relay_url,
            voicemail_messages: voicemail_data.path().join("messages"),
            mail: mailer_data.path().join("mail"),
            stops,
            _dirs: vec![conf, data, voicemail_data, mailer_data],
        };
        // The edge polls the relay every 2 s; the first poll is at start.
        tokio::time::sleep(Duration::from_millis(300)).await;
        system
    }

    /// Every media session's stats.
    pub async fn relay_session_stats(&self) -> Vec<media::SessionStats> {
        let mut client = MediaRelayClient::connect(self.relay.clone()).await.unwrap();
        let sessions = client
            .list_sessions(media::ListSessionsRequest {})
            .await
            .unwrap()
            .into_inner()
            .sessions;
        let mut out = Vec::new();
        for s in sessions {
            if let Ok(stats) = client
                .get_stats(media::GetStatsRequest {
                    session_id: s.session_id,
                })
                .await
            {
                out.push(stats.into_inner());
            }
        }
        out
    }

    pub async fn relay_sessions(&self) -> usize {
        list_relay_sessions(&self.relay).await.len()
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
pub struct Peer {
    pub socket: UdpSocket,
    pub edge: SocketAddr,
}

pub fn header(message: &str, name: &str) -> Option<String> {
    message
        .split("\r\n\r\n")
        .next()?
        .split("\r\n")
        .filter_map(|l| l.split_once(':'))
        .find(|(n, _)| n.trim().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim().to_owned())
}

pub fn body(message: &str) -> &str {
    message.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("")
}

/// The audio address of an SDP body.
pub fn sdp_media(message: &str) -> SocketAddr {
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

pub fn sdp(rtp: SocketAddr) -> String {
    format!(
        "v=0\r\no=- 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\nm=audio {port} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=sendrecv\r\n",
        ip = rtp.ip(),
        port = rtp.port()
    )
}

impl Peer {
    pub async fn new(edge: SocketAddr) -> Self {
        Self {
            socket: UdpSocket::bind("127.0.0.1:0").await.unwrap(),
            edge,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.socket.local_addr().unwrap()
    }

    pub async fn send(&self, message: &str) {
        self.socket
            .send_to(message.as_bytes(), self.edge)
            .await
            .unwrap();
    }

    /// The next message other than an OPTIONS keep-alive (answered 200).
    pub async fn next(&self) -> String {
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

    /// True if nothing but keep-alives arrives for `quiet`.
    pub async fn quiet_for(&self, quiet: Duration) -> bool {
        let mut buffer = vec![0u8; 65_535];
        let end = tokio::time::Instant::now() + quiet;
        loop {
            match tokio::time::timeout_at(end, self.socket.recv_from(&mut buffer)).await {
                Err(_) => return true,
                Ok(Ok((n, _))) => {
                    let text = String::from_utf8_lossy(&buffer[..n]).into_owned();
                    if text.starts_with("OPTIONS ") {
                        self.send(&response_to(&text, 200, "OK", "", "")).await;
                        continue;
                    }
                    if std::env::var_os("SIP_TRACE").is_some() {
                        eprintln!("<<< unexpected:\n{text}");
                    }
                    return false;
                }
                Ok(Err(_)) => return false,
            }
        }
    }

    /// The next message that starts with `start` (skipping retransmissions and others).
    pub async fn expect(&self, start: &str) -> String {
        for _ in 0..20 {
            let message = self.next().await;
            if message.starts_with(start) {
                return message;
            }
        }
        panic!("no {start}");
    }

    /// The next response to `method` with a final or given status.
    pub async fn expect_status(&self, status: u16) -> String {
        self.expect(&format!("SIP/2.0 {status} ")).await
    }

    /// The next final response (200 and up).
    pub async fn expect_final(&self) -> String {
        for _ in 0..20 {
            let message = self.next().await;
            let status = message
                .strip_prefix("SIP/2.0 ")
                .and_then(|rest| rest.get(..3))
                .and_then(|code| code.parse::<u16>().ok());
            if status.is_some_and(|s| s >= 200) {
                return message;
            }
        }
        panic!("no final response");
    }
}

/// A response to `request`, with `to_tag` added to its To (unless it has one).
pub fn response_to(
    request: &str,
    status: u16,
    reason: &str,
    to_tag: &str,
    sdp_body: &str,
) -> String {
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
pub async fn registered_phone(edge: SocketAddr) -> Peer {
    let phone = Peer::new(edge).await;
    let local = phone.addr();
    let register = |cseq: u32, auth: &str| {
        format!(
            "REGISTER sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bKr{cseq};rport\r\nMax-Forwards: 70\r\nTo: <sip:13235550100@127.0.0.1>\r\nFrom: <sip:13235550100@127.0.0.1>;tag=p1\r\nCall-ID: reg@{local}\r\nCSeq: {cseq} REGISTER\r\nContact: <sip:13235550100@{local}>;expires=600\r\n{auth}Content-Length: 0\r\n\r\n"
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

pub fn invite(
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
pub fn in_dialog(
    method: &str,
    invite: &str,
    answer: &str,
    cseq: u32,
    target: SocketAddr,
) -> String {
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

pub async fn rtp_socket() -> UdpSocket {
    UdpSocket::bind("127.0.0.1:0").await.unwrap()
}

pub fn rtp(seq: u16, marker: u8) -> Vec<u8> {
    let mut packet = vec![0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, marker];
    packet[2..4].copy_from_slice(&seq.to_be_bytes());
    packet.extend_from_slice(&[marker; 160]);
    packet
}

/// Sends RTP from `from` to `to` until `at` receives it (latching takes a packet or
/// three); returns whether it arrived.
pub async fn audio_flows(from: &UdpSocket, to: SocketAddr, at: &UdpSocket, marker: u8) -> bool {
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

/// A started system with the carrier and the registered desk phone, and an RTP socket
/// for each.
pub struct Scene {
    pub system: System,
    pub carrier: Peer,
    pub phone: Peer,
    pub carrier_rtp: UdpSocket,
    pub phone_rtp: UdpSocket,
}

impl Scene {
    pub async fn start(extensions: Option<&str>, relay_flags: &[&str]) -> Self {
        Self::start_draining_in(extensions, relay_flags, EdgeOptions::default()).await
    }

    /// The same with the edge's drain settings.
    pub async fn start_draining_in(
        extensions: Option<&str>,
        relay_flags: &[&str],
        options: EdgeOptions,
    ) -> Self {
        let carrier = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let system = System::start_draining_in(
            carrier.local_addr().unwrap(),
            extensions,
            relay_flags,
            options,
        )
        .await;
        let carrier = Peer {
            socket: carrier,
            edge: system.edge_sip,
        };
        let phone = registered_phone(system.edge_sip).await;
        Self {
            system,
            carrier,
            phone,
            carrier_rtp: rtp_socket().await,
            phone_rtp: rtp_socket().await,
        }
    }
}

/// The carrier's INVITE to the seed's DID from `caller`, with its RTP at `rtp`.
pub fn did_call(carrier: &Peer, rtp: &UdpSocket, call_id: &str, caller: &str) -> String {
    invite(
        carrier.addr(),
        &format!("sip:13235550100@{}", carrier.edge),
        caller,
        call_id,
        rtp.local_addr().unwrap(),
        "",
        1,
    )
}

/// The phone takes the INVITE the edge sends it for `offer` and answers 200 with its
/// RTP at `phone_rtp`; the carrier gets the 200 and ACKs it. Returns (the phone's
/// INVITE, the carrier's 200).
pub async fn answer_call(
    carrier: &Peer,
    phone: &Peer,
    phone_rtp: &UdpSocket,
    offer: &str,
    tag: &str,
) -> (String, String) {
    let ring = phone.expect("INVITE ").await;
    let body = sdp(phone_rtp.local_addr().unwrap());
    phone.send(&response_to(&ring, 200, "OK", tag, &body)).await;
    let ok = carrier.expect_status(200).await;
    carrier
        .send(&in_dialog("ACK", offer, &ok, 1, carrier.edge))
        .await;
    (ring, ok)
}
