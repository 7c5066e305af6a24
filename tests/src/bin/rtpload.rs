//! The project's RTP load tool: N calls of G.711 (160-byte payloads every 20 ms) both
//! ways through a media relay, measuring what came out: forwarded packets per second,
//! loss, and the one-way time from the tool's send to its receive (an upper bound on
//! the latency the relay adds). It drives either our relay (gRPC, as the edge does) or
//! rtpengine (its ng control protocol, as Kamailio does), so both run under the same
//! load and pinning.
//!
//! The tool's "phones" are a few sockets per side shared by all calls (a relay leg
//! only needs a far-end address), so the tool spends its core on packets, not on
//! sockets. Each packet's payload carries its send time and stream number.
//!
//! ```sh
//! taskset -c 0 ./target/release/media-relay --rtp-ports 20000-30000 --rtp-bind-ip 127.0.0.1 \
//!     --grpc-bind 127.0.0.1:50061 --admin-bind 127.0.0.1:0 &
//! taskset -c 1 ./target/release/rtpload --relay http://127.0.0.1:50061 --calls 2500 --pid $!
//! ```

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use futures::StreamExt;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use phone_proto::media::v1 as pb;
use phone_proto::media::v1::media_relay_client::MediaRelayClient;
use phone_tests::rss_kib;

#[derive(Parser, Debug)]
#[command(about = "RTP load through a media relay")]
struct Args {
    /// Our relay's gRPC address (http://host:port).
    #[arg(long, conflicts_with = "rtpengine")]
    relay: Option<String>,
    /// rtpengine's ng control address (host:port).
    #[arg(long)]
    rtpengine: Option<SocketAddr>,
    /// No relay: each side sends straight to the other, the baseline of the tool's own
    /// share of the one-way time.
    #[arg(long, conflicts_with_all = ["relay", "rtpengine"])]
    direct: bool,
    /// Calls, each two streams (A to B and B to A).
    #[arg(long, default_value_t = 1250)]
    calls: usize,
    /// Measured seconds, after the warm-up.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    #[arg(long, default_value_t = 2)]
    warmup: u64,
    /// Sockets per side the calls share.
    #[arg(long, default_value_t = 64)]
    sockets: usize,
    /// Busy-poll instead of sleeping between sends (see the loop).
    #[arg(long)]
    spin: bool,
    /// The relay's PID: its CPU time and memory (VmRSS) are reported.
    #[arg(long)]
    pid: Option<u32>,
}

const PTIME_MS: u64 = 20;
const PAYLOAD: usize = 160;
/// Latency histogram: 1 us bins up to 20 ms.
const BINS: usize = 20_000;

/// Where each stream goes: the tool's sending socket and the relay port.
#[derive(Clone, Copy)]
struct Stream {
    socket: usize,
    to: SocketAddr,
}

/// User + system CPU seconds of `pid` (clock ticks of 1/100 s).
fn cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

fn endpoint(addr: SocketAddr) -> Option<pb::Endpoint> {
    Some(pb::Endpoint {
        ip: addr.ip().to_string(),
        port: u32::from(addr.port()),
    })
}

fn local(leg: Option<pb::Leg>) -> anyhow::Result<SocketAddr> {
    let local = leg
        .and_then(|l| l.local)
        .ok_or_else(|| anyhow::anyhow!("no local address"))?;
    Ok(SocketAddr::new(
        local.ip.parse()?,
        u16::try_from(local.port)?,
    ))
}

/// Sets up `calls` sessions on our relay; returns (relay A port, relay B port) per call.
async fn setup_relay(
    url: &str,
    calls: usize,
    a_of: impl Fn(usize) -> SocketAddr,
    b_of: impl Fn(usize) -> SocketAddr,
) -> anyhow::Result<Vec<(SocketAddr, SocketAddr)>> {
    let client = MediaRelayClient::connect(url.to_owned()).await?;
    let results = futures::stream::iter(0..calls)
        .map(|call| {
            let mut client = client.clone();
            let (a, b) = (a_of(call), b_of(call));
            async move {
                let id = format!("load-{call}");
                let session = client
                    .create_session(pb::CreateSessionRequest {
                        session_id: id.clone(),
                        call_id: id.clone(),
                        latching_a: pb::Latching::Strict.into(),
                        latching_b: pb::Latching::Strict.into(),
                        remote_a: endpoint(a),
                        event_payload_types_a: vec![],
                    })
                    .await?
                    .into_inner();
                client
                    .update_leg(pb::UpdateLegRequest {
                        session_id: id.clone(),
                        leg: pb::LegId::B.into(),
                        remote: endpoint(b),
                        direction: pb::Direction::Sendrecv.into(),
                        latching: pb::Latching::Strict.into(),
                        clock_rate: 8000,
                        event_payload_types: vec![],
                    })
                    .await?;
                anyhow::Ok((call, local(session.a)?, local(session.b)?))
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
    let mut ports = vec![None; calls];
    for result in results {
        let (call, a, b) = result?;
        ports[call] = Some((a, b));
    }
    Ok(ports.into_iter().flatten().collect())
}

// --- rtpengine's ng protocol: bencoded dictionaries over UDP, behind a cookie. ---

fn bencode(pairs: &[(&str, &str)]) -> Vec<u8> {
    let mut out = b"d".to_vec();
    for (key, value) in pairs {
        out.extend_from_slice(format!("{}:{}{}:{}", key.len(), key, value.len(), value).as_bytes());
    }
    out.push(b'e');
    out
}

/// The value of string key `key` in a flat bencoded dictionary.
fn bdecode_string(dict: &[u8], key: &str) -> Option<String> {
    let needle = format!("{}:{}", key.len(), key);
    let text = String::from_utf8_lossy(dict);
    let at = text.find(&needle)? + needle.len();
    let rest = &text[at..];
    let (len, rest) = rest.split_once(':')?;
    let len: usize = len.parse().ok()?;
    Some(rest.get(..len)?.to_owned())
}

fn sdp(addr: SocketAddr) -> String {
    format!(
        "v=0\r\no=- 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\nm=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n",
        ip = addr.ip(),
        port = addr.port()
    )
}

fn sdp_media(sdp: &str) -> Option<SocketAddr> {
    let ip = sdp
        .lines()
        .find_map(|l| l.strip_prefix("c=IN IP4 "))?
        .trim();
    let port = sdp
        .lines()
        .find_map(|l| l.strip_prefix("m=audio "))?
        .split_whitespace()
        .next()?;
    format!("{ip}:{port}").parse().ok()
}

fn ng(
    control: &UdpSocket,
    server: SocketAddr,
    cookie: usize,
    pairs: &[(&str, &str)],
) -> anyhow::Result<String> {
    let mut request = format!("{cookie} ").into_bytes();
    request.extend_from_slice(&bencode(pairs));
    control.send_to(&request, server)?;
    let mut buf = vec![0u8; 65_536];
    let (len, _) = control.recv_from(&mut buf)?;
    let reply = &buf[..len];
    let body = reply
        .iter()
        .position(|b| *b == b' ')
        .map(|i| &reply[i + 1..])
        .unwrap_or(reply);
    match bdecode_string(body, "result").as_deref() {
        Some("ok") => bdecode_string(body, "sdp").ok_or_else(|| anyhow::anyhow!("no sdp in reply")),
        _ => anyhow::bail!("rtpengine: {}", String::from_utf8_lossy(body)),
    }
}

fn setup_rtpengine(
    server: SocketAddr,
    calls: usize,
    a_of: impl Fn(usize) -> SocketAddr,
    b_of: impl Fn(usize) -> SocketAddr,
) -> anyhow::Result<Vec<(SocketAddr, SocketAddr)>> {
    let control = UdpSocket::bind("127.0.0.1:0")?;
    control.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut ports = Vec::with_capacity(calls);
    for call in 0..calls {
        let id = format!("load-{call}");
        let offer_sdp = sdp(a_of(call));
        let answer_sdp = sdp(b_of(call));
        // The offer's reply is what the callee (B) sends to; the answer's, the caller (A).
        let to_b = ng(
            &control,
            server,
            call * 2,
            &[
                ("command", "offer"),
                ("call-id", &id),
                ("from-tag", "a"),
                ("sdp", &offer_sdp),
            ],
        )?;
        let to_a = ng(
            &control,
            server,
            call * 2 + 1,
            &[
                ("command", "answer"),
                ("call-id", &id),
                ("from-tag", "a"),
                ("to-tag", "b"),
                ("sdp", &answer_sdp),
            ],
        )?;
        let a = sdp_media(&to_a).ok_or_else(|| anyhow::anyhow!("no media in {to_a}"))?;
        let b = sdp_media(&to_b).ok_or_else(|| anyhow::anyhow!("no media in {to_b}"))?;
        ports.push((a, b));
    }
    Ok(ports)
}

/// What came back of the packets sent inside the measured window.
struct Received {
    packets: u64,
    latency_us: Vec<u64>,
    over: u64,
    foreign: u64,
}

impl Received {
    /// Reads everything queued on `socket`.
    fn drain(&mut self, socket: &UdpSocket, buf: &mut [u8], epoch: Instant, window_start: u64) {
        loop {
            let len = match socket.recv_from(buf) {
                Ok((len, _)) => len,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(_) => continue,
            };
            let now = epoch.elapsed().as_nanos() as u64;
            if len != 12 + PAYLOAD {
                self.foreign += 1;
                continue;
            }
            let sent = u64::from_be_bytes(buf[12..20].try_into().unwrap_or([0; 8]));
            if sent < window_start {
                continue;
            }
            self.packets += 1;
            let us = now.saturating_sub(sent) / 1000;
            match self.latency_us.get_mut(us as usize) {
                Some(bin) => *bin += 1,
                None => self.over += 1,
            }
        }
    }
}

/// The kernel's count of UDP datagrams dropped for a full receive buffer (all sockets).
fn udp_rcvbuf_errors() -> Option<u64> {
    let snmp = std::fs::read_to_string("/proc/net/snmp").ok()?;
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let names: Vec<&str> = udp.next()?.split_whitespace().collect();
    let values: Vec<&str> = udp.next()?.split_whitespace().collect();
    let at = names.iter().position(|n| *n == "RcvbufErrors")?;
    values.get(at)?.parse().ok()
}

fn percentile(bins: &[u64], over: u64, p: f64) -> String {
    let total: u64 = bins.iter().sum::<u64>() + over;
    let target = (total as f64 * p).ceil() as u64;
    let mut count = 0;
    for (us, n) in bins.iter().enumerate() {
        count += n;
        if count >= target {
            return format!("{us} us");
        }
    }
    format!(">{} us", bins.len())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let make = |n: usize| -> anyhow::Result<Vec<UdpSocket>> {
        (0..n)
            .map(|_| {
                let s = UdpSocket::bind("127.0.0.1:0")?;
                s.set_nonblocking(true)?;
                Ok(s)
            })
            .collect()
    };
    // Sockets 0..S are the A side, S..2S the B side.
    let mut both = make(args.sockets)?;
    both.extend(make(args.sockets)?);
    let sockets = Arc::new(both);
    let s = args.sockets;
    let addr = |i: usize| sockets[i].local_addr().expect("bound");
    let a_of = |call: usize| addr(call % s);
    let b_of = |call: usize| addr(s + call % s);

    let rss_before = args.pid.and_then(rss_kib);
    let setup_started = Instant::now();
    let ports = match (&args.relay, args.rtpengine) {
        (Some(url), _) => {
            tokio::runtime::Runtime::new()?.block_on(setup_relay(url, args.calls, a_of, b_of))?
        }
        (None, Some(server)) => setup_rtpengine(server, args.calls, a_of, b_of)?,
        (None, None) if args.direct => (0..args.calls).map(|c| (b_of(c), a_of(c))).collect(),
        (None, None) => anyhow::bail!("give --relay, --rtpengine or --direct"),
    };
    let setup = setup_started.elapsed();
    let rss_sessions = args.pid.and_then(rss_kib);
    // Stream 2c: A -> B through the relay's A port; 2c+1: B -> A through its B port.
    let streams: Vec<Stream> = ports
        .iter()
        .enumerate()
        .flat_map(|(call, (relay_a, relay_b))| {
            [
                Stream {
                    socket: call % s,
                    to: *relay_a,
                },
                Stream {
                    socket: s + call % s,
                    to: *relay_b,
                },
            ]
        })
        .collect();

    // One thread sends and receives: every millisecond the streams whose phase is that
    // millisecond of 20, in chunks, reading what came back between chunks, so the tool
    // itself holds a packet for no longer than a chunk takes to send.
    let mut poll = Poll::new()?;
    for (i, socket) in sockets.iter().enumerate() {
        poll.registry().register(
            &mut SourceFd(&socket.as_raw_fd()),
            Token(i),
            Interest::READABLE,
        )?;
    }
    let mut events = Events::with_capacity(1024);
    let mut buf = vec![0u8; 2048];
    let mut seen = Received {
        packets: 0,
        latency_us: vec![0; BINS],
        over: 0,
        foreign: 0,
    };
    let mut packet = vec![0u8; 12 + PAYLOAD];
    packet[0] = 0x80;
    let mut sequence = vec![0u16; streams.len()];
    let epoch = Instant::now();
    let warmup_end = epoch + Duration::from_secs(args.warmup);
    let end = warmup_end + Duration::from_secs(args.seconds);
    let (mut sent, mut send_errors, mut late_slots) = (0u64, 0u64, 0u64);
    let mut window_start = u64::MAX;
    let mut started = None;
    let mut slot: u64 = 0;
    let drops_before = udp_rcvbuf_errors();
    let mut receive = |poll: &mut Poll,
                       seen: &mut Received,
                       timeout: Duration,
                       window_start: u64|
     -> anyhow::Result<()> {
        poll.poll(&mut events, Some(timeout))?;
        for event in events.iter() {
            seen.drain(&sockets[event.token().0], &mut buf, epoch, window_start);
        }
        Ok(())
    };
    loop {
        let due = epoch + Duration::from_millis(slot);
        if due >= end {
            break;
        }
        let now = Instant::now();
        if due > now {
            // --spin: poll without sleeping, so the relay's sends never have to wake
            // this thread (a wake-up is an inter-processor interrupt charged to the
            // relay's core; a NIC would not cost it that).
            let wait = if args.spin { Duration::ZERO } else { due - now };
            receive(&mut poll, &mut seen, wait, window_start)?;
            continue;
        }
        if now - due > Duration::from_millis(1) {
            late_slots += 1;
        }
        if started.is_none() && now >= warmup_end {
            window_start = epoch.elapsed().as_nanos() as u64;
            started = Some((Instant::now(), args.pid.and_then(cpu_secs)));
        }
        let phase = (slot % PTIME_MS) as usize;
        let due_streams: Vec<usize> = (phase..streams.len()).step_by(PTIME_MS as usize).collect();
        for chunk in due_streams.chunks(16) {
            for &index in chunk {
                let stream = streams[index];
                let seq = &mut sequence[index];
                *seq = seq.wrapping_add(1);
                packet[2..4].copy_from_slice(&seq.to_be_bytes());
                packet[4..8].copy_from_slice(&(u32::from(*seq) * 160).to_be_bytes());
                packet[8..12].copy_from_slice(&(index as u32).to_be_bytes());
                let at = epoch.elapsed().as_nanos() as u64;
                packet[12..20].copy_from_slice(&at.to_be_bytes());
                match sockets[stream.socket].send_to(&packet, stream.to) {
                    Ok(_) if started.is_some() => sent += 1,
                    Ok(_) => {}
                    Err(_) => send_errors += 1,
                }
            }
            receive(&mut poll, &mut seen, Duration::ZERO, window_start)?;
        }
        slot += 1;
    }
    let (window_started, cpu_before) = started.unwrap_or((Instant::now(), None));
    let window = window_started.elapsed();
    let cpu_after = args.pid.and_then(cpu_secs);
    // Let the last packets arrive.
    let stop = Instant::now() + Duration::from_millis(500);
    while Instant::now() < stop {
        receive(
            &mut poll,
            &mut seen,
            Duration::from_millis(50),
            window_start,
        )?;
    }
    let drops = udp_rcvbuf_errors()
        .zip(drops_before)
        .map(|(after, before)| after - before);
    let rss_after = args.pid.and_then(rss_kib);

    let loss = 1.0 - seen.packets as f64 / sent.max(1) as f64;
    println!(
        "relay: {}",
        args.relay.as_deref().map_or("rtpengine", |_| "media-relay")
    );
    println!(
        "calls: {} ({} streams of 50 packets/s), set up in {:.2} s",
        args.calls,
        streams.len(),
        setup.as_secs_f64()
    );
    println!(
        "window: {:.2} s; sent {sent}, received {} ({:.0} forwarded packets/s)",
        window.as_secs_f64(),
        seen.packets,
        seen.packets as f64 / window.as_secs_f64()
    );
    println!("loss: {:.4}% ({} lost); send errors {send_errors}; late 1 ms slots {late_slots}; foreign {}; kernel receive-buffer drops {}", loss * 100.0, sent.saturating_sub(seen.packets), seen.foreign, drops.map_or("?".into(), |d| d.to_string()));
    println!(
        "one-way time through the relay: p50 {}, p99 {}, p99.9 {}, max bin overflow (>20 ms) {}",
        percentile(&seen.latency_us, seen.over, 0.50),
        percentile(&seen.latency_us, seen.over, 0.99),
        percentile(&seen.latency_us, seen.over, 0.999),
        seen.over
    );
    if let (Some(before), Some(after)) = (cpu_before, cpu_after) {
        println!(
            "relay CPU: {:.1}% of one core",
            100.0 * (after - before) / window.as_secs_f64()
        );
    }
    if let (Some(before), Some(sessions), Some(after)) = (rss_before, rss_sessions, rss_after) {
        println!(
            "relay VmRSS: {before} KiB before, {sessions} KiB with the sessions ({:.2} KiB per session), {after} KiB after the load",
            (sessions as f64 - before as f64) / args.calls as f64
        );
    }
    Ok(())
}
