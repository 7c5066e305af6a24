//! The edge over real UDP and TCP on loopback, the test playing a phone: REGISTER with
//! digest auth, the registration in `ListRegistrations`, persistence across a restart,
//! malformed input answered or dropped while the edge keeps serving.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use phone_proto::edge::v1::edge_client::EdgeClient;
use phone_proto::edge::v1::ListRegistrationsRequest;
use service_runtime::Shutdown;
use sip_edge::digest::{self, Challenge};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

fn seed_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy/examples/freelancer")
}

struct Edge {
    sip: SocketAddr,
    grpc: String,
    admin: SocketAddr,
    shutdown: Shutdown,
    task: tokio::task::JoinHandle<Result<(), sip_edge::Error>>,
}

async fn start(data_dir: &Path) -> Edge {
    start_with(sip_edge::Config::loopback(seed_dir(), data_dir.to_owned())).await
}

/// An edge on a `sip.conf` of the test's own; the directories live as long as it.
async fn start_with_sip_conf(sip_conf: &str) -> (Edge, [tempfile::TempDir; 2]) {
    let conf = tempfile::tempdir().unwrap();
    std::fs::write(conf.path().join("sip.conf"), sip_conf).unwrap();
    let data = tempfile::tempdir().unwrap();
    let edge = start_with(sip_edge::Config::loopback(
        conf.path().to_owned(),
        data.path().to_owned(),
    ))
    .await;
    (edge, [conf, data])
}

async fn start_with(mut config: sip_edge::Config) -> Edge {
    // Three shards whatever the machine: every message must find its shard.
    config.sip_shards = 3;
    let bound = sip_edge::bind(config).await.unwrap();
    let info = bound.info();
    let sip = bound.sip_addr().unwrap();
    let grpc = format!("http://{}", info.grpc);
    let shutdown = Shutdown::new();
    let task = tokio::spawn(bound.run(shutdown.clone()));
    Edge {
        sip,
        grpc,
        admin: info.admin,
        shutdown,
        task,
    }
}

impl Edge {
    async fn stop(self) {
        self.shutdown.trigger();
        self.task.await.unwrap().unwrap();
    }

    /// The admin port's `/metrics` text.
    async fn metrics(&self) -> String {
        service_runtime::server::scrape_metrics(self.admin)
            .await
            .unwrap()
    }
}

fn register(local: SocketAddr, cseq: u32, auth: &str, transport: &str) -> String {
    format!(
        "REGISTER sip:127.0.0.1 SIP/2.0\r\n\
Via: SIP/2.0/{transport} {local};branch=z9hG4bKt{cseq};rport\r\n\
Max-Forwards: 70\r\n\
To: <sip:13235550100@127.0.0.1>\r\n\
From: <sip:13235550100@127.0.0.1>;tag=phone1\r\n\
Call-ID: reg-test@127.0.0.1\r\n\
CSeq: {cseq} REGISTER\r\n\
Contact: <sip:13235550100@{local}>;expires=600\r\n\
{auth}Content-Length: 0\r\n\r\n"
    )
}

/// Sends `message` and returns the response to it. Requests the edge sends meanwhile
/// (qualify's OPTIONS probes to a registered line) are skipped.
async fn exchange(socket: &UdpSocket, to: SocketAddr, message: &str) -> String {
    socket.send_to(message.as_bytes(), to).await.unwrap();
    let mut buffer = vec![0u8; 65_535];
    loop {
        let (n, _) = tokio::time::timeout(Duration::from_secs(5), socket.recv_from(&mut buffer))
            .await
            .expect("an answer within 5 s")
            .unwrap();
        let text = String::from_utf8_lossy(&buffer[..n]).into_owned();
        if text.starts_with("SIP/2.0 ") {
            return text;
        }
    }
}

fn header<'a>(response: &'a str, name: &str) -> Vec<&'a str> {
    response
        .split("\r\n")
        .filter_map(|l| l.split_once(": "))
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v)
        .collect()
}

fn answer(challenge_response: &str, local: SocketAddr, cseq: u32, transport: &str) -> String {
    answer_with(challenge_response, local, cseq, transport, "password")
}

fn answer_with(
    challenge_response: &str,
    local: SocketAddr,
    cseq: u32,
    transport: &str,
    password: &str,
) -> String {
    let challenge = header(challenge_response, "WWW-Authenticate")
        .into_iter()
        .map(|v| Challenge::parse(v).unwrap())
        .find(|c| c.algorithm == digest::Algorithm::Md5)
        .expect("an MD5 challenge");
    let creds = digest::authorize(
        &challenge,
        "13235550100",
        password,
        "REGISTER",
        "sip:127.0.0.1",
        "c1",
        1,
    );
    register(
        local,
        cseq,
        &format!("Authorization: {}\r\n", creds.to_header()),
        transport,
    )
}

/// A phone on UDP registered through the digest challenge.
async fn registered_phone(edge: &Edge) -> UdpSocket {
    let phone = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let local = phone.local_addr().unwrap();
    let challenge = exchange(&phone, edge.sip, &register(local, 1, "", "UDP")).await;
    let ok = exchange(&phone, edge.sip, &answer(&challenge, local, 2, "UDP")).await;
    assert!(ok.starts_with("SIP/2.0 200"), "{ok}");
    phone
}

async fn registrations(grpc: &str) -> Vec<phone_proto::edge::v1::Registration> {
    let channel = service_runtime::grpc::client_channel(grpc).unwrap();
    EdgeClient::new(channel)
        .list_registrations(ListRegistrationsRequest {
            peer: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .registrations
}

#[tokio::test(flavor = "multi_thread")]
async fn a_phone_registers_over_udp_and_the_registration_survives_a_restart() {
    let data = tempfile::tempdir().unwrap();
    let edge = start(data.path()).await;
    let phone = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let local = phone.local_addr().unwrap();

    let challenge = exchange(&phone, edge.sip, &register(local, 1, "", "UDP")).await;
    assert!(
        challenge.starts_with("SIP/2.0 401 Unauthorized\r\n"),
        "{challenge}"
    );
    assert_eq!(
        header(&challenge, "Via"),
        [format!(
            "SIP/2.0/UDP {local};branch=z9hG4bKt1;rport={};received=127.0.0.1",
            local.port()
        )],
        "RFC 3581: rport filled in, received added"
    );
    let ok = exchange(&phone, edge.sip, &answer(&challenge, local, 2, "UDP")).await;
    assert!(ok.starts_with("SIP/2.0 200 OK\r\n"), "{ok}");
    assert_eq!(
        header(&ok, "Contact"),
        [format!("<sip:13235550100@{local}>;expires=600")]
    );

    let regs = registrations(&edge.grpc).await;
    assert_eq!(regs.len(), 1);
    assert_eq!(
        (
            regs[0].peer.as_str(),
            regs[0].source.as_str(),
            regs[0].transport.as_str()
        ),
        ("13235550100", local.to_string().as_str(), "udp")
    );

    // Bad input is answered or dropped; the edge keeps serving.
    let bad = exchange(
        &phone,
        edge.sip,
        &register(local, 3, "Expires: soon\r\n", "UDP"),
    )
    .await;
    assert!(bad.starts_with("SIP/2.0 400 "), "{bad}");
    phone.send_to(b"\x00\x01 garbage", edge.sip).await.unwrap();
    let options = "OPTIONS sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:1;branch=z9hG4bKo1\r\nMax-Forwards: 70\r\nTo: <sip:127.0.0.1>\r\nFrom: <sip:monitor@127.0.0.1>;tag=m\r\nCall-ID: o1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n";
    let pong = exchange(&phone, edge.sip, options).await;
    assert!(
        pong.starts_with("SIP/2.0 200 OK\r\n") && header(&pong, "Allow")[0].contains("REGISTER"),
        "{pong}"
    );
    let invite = options
        .replace("OPTIONS", "INVITE")
        .replace("z9hG4bKo1", "z9hG4bKi1");
    let busy = exchange(&phone, edge.sip, &invite).await;
    assert!(busy.starts_with("SIP/2.0 100 Trying\r\n"), "{busy}");

    edge.stop().await;
    let edge = start(data.path()).await;
    let regs = registrations(&edge.grpc).await;
    assert_eq!(regs.len(), 1, "the registration was persisted");
    assert_eq!(regs[0].contact, format!("sip:13235550100@{local}"));
    edge.stop().await;
}

async fn read(stream: &mut TcpStream) -> String {
    let mut buffer = vec![0u8; 65_535];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buffer))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8_lossy(&buffer[..n]).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_phone_registers_over_tcp() {
    // No qualify: an OPTIONS probe on the stream would interleave with the answers
    // this test reads byte for byte.
    let (edge, _dirs) =
        start_with_sip_conf("[13235550100]\ntype=friend\nhost=dynamic\nsecret=password\n").await;
    let mut stream = TcpStream::connect(edge.sip).await.unwrap();
    let local = stream.local_addr().unwrap();
    stream
        .write_all(register(local, 1, "", "TCP").as_bytes())
        .await
        .unwrap();
    let challenge = read(&mut stream).await;
    assert!(challenge.starts_with("SIP/2.0 401"), "{challenge}");
    stream
        .write_all(answer(&challenge, local, 2, "TCP").as_bytes())
        .await
        .unwrap();
    let ok = read(&mut stream).await;
    assert!(ok.starts_with("SIP/2.0 200 OK"), "{ok}");
    // A keep-alive ping gets its pong.
    stream.write_all(b"\r\n\r\n").await.unwrap();
    assert_eq!(read(&mut stream).await, "\r\n");
    let regs = registrations(&edge.grpc).await;
    assert_eq!(regs[0].transport, "tcp");
    edge.stop().await;
}

/// Whether anything comes back within `wait` (for checks that something is dropped).
async fn answered_within(socket: &UdpSocket, wait: Duration) -> bool {
    let mut buffer = vec![0u8; 65_535];
    tokio::time::timeout(wait, socket.recv_from(&mut buffer))
        .await
        .is_ok()
}

#[tokio::test(flavor = "multi_thread")]
async fn repeated_auth_failures_ban_the_source_but_911_still_gets_through() {
    let data = tempfile::tempdir().unwrap();
    let edge = start(data.path()).await;
    let phone = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let local = phone.local_addr().unwrap();
    for attempt in 0..5u32 {
        let challenge = exchange(
            &phone,
            edge.sip,
            &register(local, attempt * 2 + 1, "", "UDP"),
        )
        .await;
        let bad = answer_with(&challenge, local, attempt * 2 + 2, "UDP", "guess");
        let refused = exchange(&phone, edge.sip, &bad).await;
        assert!(refused.starts_with("SIP/2.0 403 "), "{refused}");
    }
    // Banned: a REGISTER gets no answer at all.
    phone
        .send_to(register(local, 99, "", "UDP").as_bytes(), edge.sip)
        .await
        .unwrap();
    assert!(
        !answered_within(&phone, Duration::from_millis(700)).await,
        "a banned source is dropped"
    );
    let metrics = edge.metrics().await;
    for line in [
        "sip_auth_failures_total 5",
        "sip_bans_total 1",
        "sip_banned_drops_total 1",
        "sip_refused_total{reason=\"auth_failed\"} 5",
        "sip_refused_total{reason=\"banned\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
    // A call to 911 from the banned address is still taken: answered 100 Trying, not
    // dropped.
    let invite = format!(
        "INVITE sip:911@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bK911\r\nMax-Forwards: 70\r\n\
To: <sip:911@127.0.0.1>\r\nFrom: <sip:13235550100@127.0.0.1>;tag=e\r\nCall-ID: e911\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
    );
    let trying = exchange(&phone, edge.sip, &invite).await;
    assert!(trying.starts_with("SIP/2.0 100 Trying"), "{trying}");
    // Another address (127.0.0.2 is loopback too) is not affected.
    let other = UdpSocket::bind("127.0.0.2:0").await.unwrap();
    let challenge = exchange(
        &other,
        edge.sip,
        &register(other.local_addr().unwrap(), 1, "", "UDP"),
    )
    .await;
    assert!(challenge.starts_with("SIP/2.0 401"), "{challenge}");
    edge.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_passwords_on_subscribe_ban_the_source_too() {
    let data = tempfile::tempdir().unwrap();
    let edge = start(data.path()).await;
    let phone = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let local = phone.local_addr().unwrap();
    let subscribe = |cseq: u32, auth: &str| {
        format!(
            "SUBSCRIBE sip:13235550100@127.0.0.1 SIP/2.0\r\n\
Via: SIP/2.0/UDP {local};branch=z9hG4bKs{cseq}\r\nMax-Forwards: 70\r\n\
To: <sip:13235550100@127.0.0.1>\r\nFrom: <sip:13235550100@127.0.0.1>;tag=s\r\n\
Call-ID: sub-guess\r\nCSeq: {cseq} SUBSCRIBE\r\nEvent: message-summary\r\n\
Contact: <sip:13235550100@{local}>\r\n{auth}Content-Length: 0\r\n\r\n"
        )
    };
    for attempt in 0..5u32 {
        let challenge = exchange(&phone, edge.sip, &subscribe(attempt * 2 + 1, "")).await;
        assert!(challenge.starts_with("SIP/2.0 407 "), "{challenge}");
        let challenge = Challenge::parse(header(&challenge, "Proxy-Authenticate")[0]).unwrap();
        let creds = digest::authorize(
            &challenge,
            "13235550100",
            "guess",
            "SUBSCRIBE",
            "sip:13235550100@127.0.0.1",
            "c1",
            1,
        );
        let auth = format!("Proxy-Authorization: {}\r\n", creds.to_header());
        let refused = exchange(&phone, edge.sip, &subscribe(attempt * 2 + 2, &auth)).await;
        assert!(refused.starts_with("SIP/2.0 403 "), "{refused}");
    }
    phone
        .send_to(subscribe(99, "").as_bytes(), edge.sip)
        .await
        .unwrap();
    assert!(
        !answered_within(&phone, Duration::from_millis(700)).await,
        "a source guessing through SUBSCRIBE is banned like one guessing through REGISTER"
    );
    edge.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flood_from_one_source_is_rate_limited() {
    let data = tempfile::tempdir().unwrap();
    let edge = start_with(sip_edge::Config {
        rate_limit: 1.0,
        rate_burst: 5.0,
        ..sip_edge::Config::loopback(seed_dir(), data.path().to_owned())
    })
    .await;
    let phone = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let local = phone.local_addr().unwrap();
    for i in 0..20u32 {
        let options = format!(
            "OPTIONS sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bKflood{i}\r\nMax-Forwards: 70\r\n\
To: <sip:127.0.0.1>\r\nFrom: <sip:x@127.0.0.1>;tag=f\r\nCall-ID: flood{i}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
        );
        phone.send_to(options.as_bytes(), edge.sip).await.unwrap();
    }
    let mut answers = 0;
    while answered_within(&phone, Duration::from_millis(500)).await {
        answers += 1;
    }
    assert!(
        (5..=7).contains(&answers),
        "the burst of 5 (and a refill or two) answered, the rest dropped: {answers}"
    );
    let metrics = edge.metrics().await;
    let limited = format!("sip_rate_limited_total {}", 20 - answers);
    assert!(metrics.contains(&limited), "{limited} in {metrics}");
    let by_reason = format!(
        "sip_refused_total{{reason=\"rate_limited\"}} {}",
        20 - answers
    );
    assert!(metrics.contains(&by_reason), "{by_reason} in {metrics}");
    edge.stop().await;
}

/// A 200 to a request from the edge, its transaction headers copied (RFC 3261 §8.2.6).
fn ok_for(request: &str) -> String {
    let mut response = String::from("SIP/2.0 200 OK\r\n");
    for line in request.split("\r\n") {
        if ["Via:", "From:", "Call-ID:", "CSeq:"]
            .iter()
            .any(|h| line.starts_with(h))
        {
            response.push_str(line);
            response.push_str("\r\n");
        } else if line.starts_with("To:") {
            response.push_str(line);
            response.push_str(";tag=phone\r\n");
        }
    }
    response.push_str("Content-Length: 0\r\n\r\n");
    response
}

/// Answers one OPTIONS from the edge with 200, copying its transaction headers.
async fn answer_options(socket: &UdpSocket) -> bool {
    let mut buffer = vec![0u8; 65_535];
    let Ok(Ok((n, from))) =
        tokio::time::timeout(Duration::from_secs(5), socket.recv_from(&mut buffer)).await
    else {
        return false;
    };
    let text = String::from_utf8_lossy(&buffer[..n]).into_owned();
    if !text.starts_with("OPTIONS sip:") {
        return false;
    }
    let response = ok_for(&text);
    socket.send_to(response.as_bytes(), from).await.is_ok()
}

async fn reachable(grpc: &str) -> Option<bool> {
    registrations(grpc).await.first().map(|r| r.reachable)
}

#[tokio::test(flavor = "multi_thread")]
async fn qualify_probes_registered_phones_and_marks_silent_ones_unreachable() {
    let (edge, _edge_dirs) = start_with_sip_conf("[13235550100]\ntype=friend\nhost=dynamic\nsecret=password\nnat=yes\nqualify=300\nqualifyfreq=1\n").await;
    let phone = registered_phone(&edge).await;

    // The phone answers its probes: reachable.
    assert!(answer_options(&phone).await, "an OPTIONS probe arrives");
    assert_eq!(reachable(&edge.grpc).await, Some(true));
    // It stops answering: unreachable after the next probe's 300 ms.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while reachable(&edge.grpc).await != Some(false) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never marked unreachable"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Answering again brings it back.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        answer_options(&phone).await;
        if reachable(&edge.grpc).await == Some(true) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never reachable again"
        );
    }
    edge.stop().await;
}

/// Reads requests from the edge, answers each with 200, and returns the first NOTIFY.
async fn next_notify(socket: &UdpSocket) -> String {
    let mut buffer = vec![0u8; 65_535];
    loop {
        let (n, from) = tokio::time::timeout(Duration::from_secs(5), socket.recv_from(&mut buffer))
            .await
            .expect("a request from the edge within 5 s")
            .unwrap();
        let text = String::from_utf8_lossy(&buffer[..n]).into_owned();
        let response = ok_for(&text);
        socket.send_to(response.as_bytes(), from).await.unwrap();
        if text.starts_with("NOTIFY ") {
            return text;
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn mailbox_counts_light_the_phone_lamp_with_a_message_summary_notify() {
    use phone_proto::edge::v1::MailboxUpdate;
    let data = tempfile::tempdir().unwrap();
    let edge = start(data.path()).await;
    let phone = registered_phone(&edge).await;
    let local = phone.local_addr().unwrap();

    let update = |new: u32, old: u32| {
        let grpc = edge.grpc.clone();
        async move {
            let channel = service_runtime::grpc::client_channel(&grpc).unwrap();
            EdgeClient::new(channel)
                .update_mailbox(MailboxUpdate {
                    mailbox: "13235550100".into(),
                    context: "default".into(),
                    new_messages: new,
                    old_messages: old,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
                .notified
        }
    };
    // The seed's line has no mailbox=: the line named like the mailbox shows it.
    let (notified, notify) = tokio::join!(update(1, 0), next_notify(&phone));
    assert_eq!(notified, 1);
    assert!(
        notify.starts_with(&format!("NOTIFY sip:13235550100@{local} SIP/2.0\r\n")),
        "{notify}"
    );
    assert!(
        notify.contains("\r\nEvent: message-summary\r\n"),
        "{notify}"
    );
    assert!(
        notify.contains("\r\nContent-Type: application/simple-message-summary\r\n"),
        "{notify}"
    );
    assert!(notify.ends_with("\r\n\r\nMessages-Waiting: yes\r\nMessage-Account: sip:13235550100@127.0.0.1\r\nVoice-Message: 1/0 (0/0)\r\n"), "{notify}");

    let (_, notify) = tokio::join!(update(0, 1), next_notify(&phone));
    assert!(
        notify.contains("Messages-Waiting: no\r\n") && notify.contains("Voice-Message: 0/1 (0/0)"),
        "{notify}"
    );

    // A mailbox no line shows notifies nobody.
    let channel = service_runtime::grpc::client_channel(&edge.grpc).unwrap();
    let none = EdgeClient::new(channel)
        .update_mailbox(MailboxUpdate {
            mailbox: "999".into(),
            new_messages: 3,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .notified;
    assert_eq!(none, 0);
    edge.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn register_lines_register_to_the_provider_through_its_challenge() {
    // The provider: another edge with the trunk's account as a line.
    let (provider, _provider_dirs) = start_with_sip_conf(
        "[12345678]\ntype=friend\nhost=dynamic\nsecret=password\ncontext=from-customer\n",
    )
    .await;

    // Our edge, with the seed's kind of trunk registration (`register =>`).
    let (edge, _edge_dirs) = start_with_sip_conf(&format!(
            "[general]\nregister => 12345678:password@127.0.0.1:{}/13235550100~300\n\n\
             [flowroute]\ntype=friend\nhost=127.0.0.1\nusername=12345678\nsecret=password\ncontext=inbound\n",
            provider.sip.port()
        )).await;

    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let registration = loop {
        let regs = registrations(&provider.grpc).await;
        if let Some(r) = regs.into_iter().find(|r| r.peer == "12345678") {
            break r;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never registered to the provider"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        registration.contact,
        format!("sip:13235550100@{}", edge.sip),
        "calls for the DID come to us"
    );
    assert!(registration.expires_time > 0);
    edge.stop().await;
    provider.stop().await;
}

/// Sends an INVITE and returns the final response (skipping 100 Trying).
async fn invite_final(
    socket: &UdpSocket,
    edge: SocketAddr,
    number: &str,
    branch: &str,
    extra: &str,
) -> String {
    let local = socket.local_addr().unwrap();
    // A retry with credentials (`<branch>-2`) keeps its challenged INVITE's Call-ID.
    let call_id = branch.split('-').next().unwrap_or(branch);
    let invite = format!(
        "INVITE sip:{number}@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch={branch}\r\nMax-Forwards: 70\r\n\
To: <sip:{number}@127.0.0.1>\r\nFrom: <sip:13105550199@carrier.example.com>;tag=c1\r\nCall-ID: {call_id}@test\r\n\
CSeq: 1 INVITE\r\n{extra}Content-Length: 0\r\n\r\n"
    );
    socket.send_to(invite.as_bytes(), edge).await.unwrap();
    let mut buffer = vec![0u8; 65_535];
    loop {
        let (n, _) = tokio::time::timeout(Duration::from_secs(5), socket.recv_from(&mut buffer))
            .await
            .unwrap()
            .unwrap();
        let text = String::from_utf8_lossy(&buffer[..n]).into_owned();
        if !text.starts_with("SIP/2.0 100 ") {
            return text;
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn invites_from_the_trunk_are_not_challenged_and_phones_must_authenticate() {
    let (edge, _edge_dirs) = start_with_sip_conf(
        "[flowroute]\ntype=friend\nhost=127.0.0.2\ncontext=inbound\ninsecure=port,invite\n\n\
         [13235550100]\ntype=friend\nhost=dynamic\nsecret=password\ncontext=localexts\n",
    )
    .await;

    // The carrier, from its address (any port, insecure=port): admitted without a
    // challenge. Admitted means the call path sees it: these INVITEs carry no SDP
    // offer, which it refuses with 488 (`tests/calls.rs` has whole calls).
    let carrier = UdpSocket::bind("127.0.0.2:0").await.unwrap();
    let answer = invite_final(&carrier, edge.sip, "13235550100", "z9hG4bKc1", "").await;
    assert!(answer.starts_with("SIP/2.0 488 "), "{answer}");

    // A phone: challenged with 407, admitted with the right password, refused with a wrong one.
    let phone = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let challenge = invite_final(&phone, edge.sip, "13105550199", "z9hG4bKp1", "").await;
    assert!(
        challenge.starts_with("SIP/2.0 407 Proxy Authentication Required\r\n"),
        "{challenge}"
    );
    let header = challenge
        .split("\r\n")
        .find_map(|l| l.strip_prefix("Proxy-Authenticate: "))
        .expect("Proxy-Authenticate");
    let challenge = Challenge::parse(header).unwrap();
    let uri = "sip:13105550199@127.0.0.1";
    // Each retry keeps its challenged INVITE's Call-ID (RFC 3261 §22.2), as phones do:
    // the edge's shards are chosen by Call-ID.
    for (password, branch, expected) in [
        ("password", "z9hG4bKp1-2", "SIP/2.0 488 "),
        ("guess", "z9hG4bKp3-2", "SIP/2.0 403 "),
    ] {
        let nonce_challenge = if password == "password" {
            challenge.clone()
        } else {
            // A fresh nonce for the second try (nonces are single-use).
            let again = invite_final(&phone, edge.sip, "13105550199", "z9hG4bKp3", "").await;
            Challenge::parse(
                again
                    .split("\r\n")
                    .find_map(|l| l.strip_prefix("Proxy-Authenticate: "))
                    .unwrap(),
            )
            .unwrap()
        };
        let creds = digest::authorize(
            &nonce_challenge,
            "13235550100",
            password,
            "INVITE",
            uri,
            "c",
            1,
        );
        let answer = invite_final(
            &phone,
            edge.sip,
            "13105550199",
            branch,
            &format!("Proxy-Authorization: {}\r\n", creds.to_header()),
        )
        .await;
        assert!(answer.starts_with(expected), "{password}: {answer}");
    }
    edge.stop().await;
}
