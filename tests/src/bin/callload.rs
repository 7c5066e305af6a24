//! The project's call load generator (SIPp is not packaged here): whole calls through
//! the edge with the router and a media relay in the loop, signalling only. A carrier
//! side (UAC workers, one socket each) sends INVITE (with SDP), waits for the 200,
//! sends ACK and then BYE; a phone side (one registered line) answers every INVITE the
//! edge's Dial sends it, and every BYE. Each completed INVITE...BYE counts once; a call
//! with any unexpected answer or a 5 s silence counts as failed.
//!
//! `--hold N` instead sets up N calls, keeps them up, and reports the edge's VmRSS per
//! active call, then ends them.
//!
//! ```sh
//! callload --write-config DIR                      # sip.conf, extensions.conf, voicemail.conf
//! callload --edge 127.0.0.1:5060 --workers 64 --seconds 10 --edge-pid PID
//! callload --edge 127.0.0.1:5060 --hold 2000 --edge-pid PID
//! ```

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use phone_tests::rss_kib;
use sip_edge::digest::{authorize, Challenge};
use tokio::net::UdpSocket;

#[derive(Parser, Debug)]
#[command(about = "SIP call load generator")]
struct Args {
    #[arg(long, default_value = "127.0.0.1:5060")]
    edge: SocketAddr,
    /// Concurrent callers.
    #[arg(long, default_value_t = 64)]
    workers: usize,
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Set up this many calls, hold them, report memory per call, end them.
    #[arg(long)]
    hold: Option<usize>,
    /// Writes the configuration the load needs to this directory and exits.
    #[arg(long)]
    write_config: Option<std::path::PathBuf>,
    /// The edge's PID, for its memory (VmRSS).
    #[arg(long)]
    edge_pid: Option<u32>,
}

const SIP_CONF: &str = "[general]\n\n\
[carrier]\ntype=peer\nhost=127.0.0.1\ncontext=inbound\ninsecure=port,invite\ndisallow=all\nallow=ulaw\n\n\
[callee]\ntype=friend\nhost=dynamic\nsecret=load\ncontext=inbound\nnat=no\ndisallow=all\nallow=ulaw\n";
const EXTENSIONS_CONF: &str =
    "[inbound]\nexten => _X.,1,Dial(SIP/callee,30)\n same => n,Hangup()\n";
const VOICEMAIL_CONF: &str = "[general]\nformat=wav\n\n[default]\n";

fn header(message: &str, name: &str) -> Option<String> {
    message
        .split("\r\n\r\n")
        .next()?
        .split("\r\n")
        .filter_map(|l| l.split_once(':'))
        .find(|(n, _)| n.trim().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim().to_owned())
}

fn sdp(rtp: SocketAddr) -> String {
    format!(
        "v=0\r\no=- 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\nm=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n",
        ip = rtp.ip(),
        port = rtp.port()
    )
}

/// The answer to `request` (Via, From, Call-ID, CSeq copied; To tagged).
fn response(request: &str, status: &str, body: &str, local: SocketAddr) -> String {
    let mut out = format!("SIP/2.0 {status}\r\n");
    let head = request.split("\r\n\r\n").next().unwrap_or("");
    for line in head.split("\r\n").skip(1) {
        let name = line
            .split(':')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        match name.as_str() {
            "via" | "v" | "from" | "f" | "call-id" | "i" | "cseq" => {
                out.push_str(line);
                out.push_str("\r\n");
            }
            "to" | "t" => {
                out.push_str(line);
                if !line.contains(";tag=") {
                    out.push_str(";tag=callee");
                }
                out.push_str("\r\n");
            }
            _ => {}
        }
    }
    if !body.is_empty() {
        out.push_str(&format!(
            "Contact: <sip:callee@{local}>\r\nContent-Type: application/sdp\r\n"
        ));
    }
    out.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    out
}

/// The phone: registers the line, then answers whatever the edge sends.
async fn callee(edge: SocketAddr) -> UdpSocket {
    let socket = UdpSocket::bind("127.0.0.1:0").await.expect("a socket");
    let local = socket.local_addr().expect("bound");
    let register = |cseq: u32, auth: &str| {
        format!(
            "REGISTER sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bKreg{cseq}\r\nMax-Forwards: 70\r\nTo: <sip:callee@127.0.0.1>\r\nFrom: <sip:callee@127.0.0.1>;tag=r\r\nCall-ID: reg@callee\r\nCSeq: {cseq} REGISTER\r\nContact: <sip:callee@{local}>;expires=3600\r\n{auth}Content-Length: 0\r\n\r\n"
        )
    };
    let mut buffer = vec![0u8; 65_535];
    socket
        .send_to(register(1, "").as_bytes(), edge)
        .await
        .expect("sent");
    let (n, _) = socket.recv_from(&mut buffer).await.expect("a challenge");
    let text = String::from_utf8_lossy(&buffer[..n]).into_owned();
    let challenge = header(&text, "WWW-Authenticate")
        .and_then(|v| Challenge::parse(&v).ok())
        .expect("a digest challenge");
    let creds = authorize(
        &challenge,
        "callee",
        "load",
        "REGISTER",
        "sip:127.0.0.1",
        "c",
        1,
    );
    socket
        .send_to(
            register(2, &format!("Authorization: {}\r\n", creds.to_header())).as_bytes(),
            edge,
        )
        .await
        .expect("sent");
    let (n, _) = socket.recv_from(&mut buffer).await.expect("a 200");
    assert!(
        buffer[..n].starts_with(b"SIP/2.0 200"),
        "the callee line registers"
    );
    socket
}

async fn answer_everything(socket: UdpSocket) {
    let local = socket.local_addr().expect("bound");
    let body = sdp(SocketAddr::new(local.ip(), 40_000));
    let mut buffer = vec![0u8; 65_535];
    loop {
        let Ok((n, from)) = socket.recv_from(&mut buffer).await else {
            continue;
        };
        let text = String::from_utf8_lossy(&buffer[..n]);
        let reply = if text.starts_with("INVITE ") {
            response(&text, "200 OK", &body, local)
        } else if text.starts_with("BYE ")
            || text.starts_with("OPTIONS ")
            || text.starts_with("CANCEL ")
        {
            response(&text, "200 OK", "", local)
        } else {
            continue;
        };
        let _ = socket.send_to(reply.as_bytes(), from).await;
    }
}

struct Caller {
    socket: UdpSocket,
    local: SocketAddr,
    edge: SocketAddr,
    buffer: Vec<u8>,
    retransmits: Arc<AtomicU64>,
}

impl Caller {
    async fn new(edge: SocketAddr, retransmits: Arc<AtomicU64>) -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").await.expect("a socket");
        let local = socket.local_addr().expect("bound");
        Self {
            socket,
            local,
            edge,
            buffer: vec![0u8; 65_535],
            retransmits,
        }
    }

    /// Sends `request` as a UDP client transaction would (RFC 3261 §17.1: again after
    /// T1, doubling, at most T2 apart for non-INVITE) until the final answer to `method`
    /// of `call_id` arrives, or gives up after 64*T1 (32 s). Provisional responses are
    /// skipped; a 2xx to the INVITE seen again while waiting (our ACK was lost) gets
    /// `ack` again.
    async fn transact(
        &mut self,
        request: &str,
        call_id: &str,
        method: &str,
        ack: Option<&str>,
    ) -> Option<String> {
        let (socket, edge, buffer) = (&self.socket, self.edge, &mut self.buffer);
        let started = tokio::time::Instant::now();
        let mut interval = Duration::from_millis(500);
        socket.send_to(request.as_bytes(), edge).await.ok()?;
        let mut resend_at = started + interval;
        loop {
            if started.elapsed() > Duration::from_secs(32) {
                return None;
            }
            let received = tokio::time::timeout_at(resend_at, socket.recv_from(buffer)).await;
            let Ok(Ok((n, _))) = received else {
                socket.send_to(request.as_bytes(), edge).await.ok()?;
                self.retransmits.fetch_add(1, Ordering::Relaxed);
                interval = if method == "INVITE" {
                    interval * 2
                } else {
                    (interval * 2).min(Duration::from_secs(4))
                };
                resend_at = tokio::time::Instant::now() + interval;
                continue;
            };
            let text = String::from_utf8_lossy(&buffer[..n]).into_owned();
            if !text.starts_with("SIP/2.0 ") || text.starts_with("SIP/2.0 1") {
                continue;
            }
            if header(&text, "Call-ID").as_deref() != Some(call_id) {
                continue;
            }
            let cseq = header(&text, "CSeq").unwrap_or_default();
            if cseq.ends_with(method) {
                return Some(text);
            }
            if let (true, Some(ack)) = (cseq.ends_with("INVITE"), ack) {
                let _ = socket.send_to(ack.as_bytes(), edge).await;
            }
        }
    }

    /// INVITE until the 200, then ACK; returns the 200.
    async fn setup(&mut self, call_id: &str) -> Option<String> {
        let local = self.local;
        let body = sdp(SocketAddr::new(local.ip(), 30_000));
        let invite = format!(
            "INVITE sip:13235550100@{edge} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bK{call_id}i\r\nMax-Forwards: 70\r\nFrom: <sip:13105550199@{ip}>;tag=c{call_id}\r\nTo: <sip:13235550100@{edge}>\r\nCall-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContact: <sip:carrier@{local}>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{body}",
            body.len(),
            edge = self.edge,
            ip = local.ip(),
        );
        let ok = self.transact(&invite, call_id, "INVITE", None).await?;
        if !ok.starts_with("SIP/2.0 200") {
            return None;
        }
        let ack = self.in_dialog("ACK", call_id, &ok, 1);
        self.socket.send_to(ack.as_bytes(), self.edge).await.ok()?;
        Some(ok)
    }

    /// BYE until its 200.
    async fn hang_up(&mut self, call_id: &str, ok: &str) -> bool {
        let bye = self.in_dialog("BYE", call_id, ok, 2);
        let ack = self.in_dialog("ACK", call_id, ok, 1);
        let answer = self.transact(&bye, call_id, "BYE", Some(&ack)).await;
        match answer {
            Some(answer) if answer.starts_with("SIP/2.0 200") => true,
            Some(answer) => {
                eprintln!(
                    "call {call_id}: BYE answered {}",
                    answer.lines().next().unwrap_or("")
                );
                false
            }
            None => false,
        }
    }

    fn in_dialog(&self, method: &str, call_id: &str, ok: &str, cseq: u32) -> String {
        format!(
            "{method} sip:edge@{edge} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bK{call_id}{method}\r\nMax-Forwards: 70\r\nFrom: <sip:13105550199@{ip}>;tag=c{call_id}\r\nTo: {to}\r\nCall-ID: {call_id}\r\nCSeq: {cseq} {method}\r\nContent-Length: 0\r\n\r\n",
            edge = self.edge,
            local = self.local,
            ip = self.local.ip(),
            to = header(ok, "To").unwrap_or_default(),
        )
    }
}

async fn worker(
    id: usize,
    edge: SocketAddr,
    deadline: Instant,
    done: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    retransmits: Arc<AtomicU64>,
) {
    let mut caller = Caller::new(edge, retransmits).await;
    let mut n = 0u64;
    while Instant::now() < deadline {
        n += 1;
        let call_id = format!("w{id}c{n}");
        let completed = match caller.setup(&call_id).await {
            Some(ok) => {
                let ended = caller.hang_up(&call_id, &ok).await;
                if !ended && failed.load(Ordering::Relaxed) < 5 {
                    eprintln!("call {call_id}: no 200 for the BYE");
                }
                ended
            }
            None => {
                if failed.load(Ordering::Relaxed) < 5 {
                    eprintln!("call {call_id}: no 200 for the INVITE");
                }
                false
            }
        };
        if completed {
            done.fetch_add(1, Ordering::Relaxed);
        } else {
            failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    if let Some(dir) = &args.write_config {
        std::fs::create_dir_all(dir).expect("the config directory");
        for (name, text) in [
            ("sip.conf", SIP_CONF),
            ("extensions.conf", EXTENSIONS_CONF),
            ("voicemail.conf", VOICEMAIL_CONF),
        ] {
            std::fs::write(dir.join(name), text).expect("written");
        }
        println!(
            "wrote sip.conf, extensions.conf and voicemail.conf to {}",
            dir.display()
        );
        return;
    }
    let phone = callee(args.edge).await;
    tokio::spawn(answer_everything(phone));

    if let Some(count) = args.hold {
        let before = args.edge_pid.and_then(rss_kib);
        let mut held = Vec::new();
        let mut failed = 0;
        for n in 0..count {
            let mut caller = Caller::new(args.edge, Arc::default()).await;
            let call_id = format!("hold{n}");
            match caller.setup(&call_id).await {
                Some(ok) => held.push((caller, call_id, ok)),
                None => failed += 1,
            }
        }
        // Let the edge settle (2xx retransmissions stop at the ACK).
        tokio::time::sleep(Duration::from_secs(1)).await;
        let during = args.edge_pid.and_then(rss_kib);
        println!("{} calls up, {failed} failed", held.len());
        if let (Some(before), Some(during)) = (before, during) {
            println!(
                "edge VmRSS {before} KiB -> {during} KiB with the calls up: {:.2} KiB per active call",
                during.saturating_sub(before) as f64 / held.len().max(1) as f64
            );
        }
        let mut ended = 0;
        for (mut caller, call_id, ok) in held {
            if caller.hang_up(&call_id, &ok).await {
                ended += 1;
            }
        }
        println!("{ended} calls ended with BYE/200");
        return;
    }

    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let retransmits = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.seconds);
    let tasks: Vec<_> = (0..args.workers)
        .map(|id| {
            tokio::spawn(worker(
                id,
                args.edge,
                deadline,
                done.clone(),
                failed.clone(),
                retransmits.clone(),
            ))
        })
        .collect();
    for task in tasks {
        let _ = task.await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let done = done.load(Ordering::Relaxed);
    let failed = failed.load(Ordering::Relaxed);
    println!(
        "calls (INVITE, 200, ACK, BYE, 200; the edge dials a registered line): {done} completed in {elapsed:.1} s = {:.0}/s, {failed} failed, {} workers, {} requests sent again (UDP)",
        done as f64 / elapsed,
        args.workers,
        retransmits.load(Ordering::Relaxed)
    );
}
