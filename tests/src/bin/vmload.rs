//! The project's voicemail load tool: N callers leave messages at once. Each starts a
//! session as the router does (gRPC), sends a tone of its own frequency as 20 ms PCMU
//! packets from the first moment (the recording begins after the greeting and the
//! beep), presses `#` by RFC 4733 after `--seconds`, and waits for `finished`. Then
//! every stored message is checked: it exists, its wav lasts as long as the caller
//! spoke after the beep, and every 100 ms of it is the caller's tone (a lost or
//! misplaced packet would leave a gap). The voicemail's CPU time over the window is
//! read from /proc.
//!
//! ```sh
//! scripts/bench-voicemail 500
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use phone_audio::analysis::tone_share;
use phone_audio::Law;
use phone_proto::voicemail::v1 as pb;
use tokio::net::UdpSocket;

#[derive(Parser, Debug)]
#[command(about = "Concurrent voicemail recordings")]
struct Args {
    /// The voicemail service's gRPC address (http://host:port).
    #[arg(long)]
    voicemail: String,
    /// Concurrent callers; caller i leaves a message in mailbox `first_mailbox + i`.
    #[arg(long, default_value_t = 500)]
    callers: usize,
    #[arg(long, default_value_t = 1000)]
    first_mailbox: usize,
    /// How long each caller talks in all (greeting included).
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    /// The voicemail's message folder (its data dir's `messages`), to check each message.
    #[arg(long)]
    messages: PathBuf,
    /// The voicemail's PID, for its CPU time.
    #[arg(long)]
    pid: Option<u32>,
}

fn frequency(i: usize) -> f64 {
    f64::from(300 + (i % 200) as u32 * 13)
}

fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

struct Outcome {
    mailbox: String,
    message_id: String,
    status: i32,
    freq: f64,
    /// Seconds from the session's start to the `#`.
    talked: f64,
}

async fn caller(
    args: Arc<Args>,
    i: usize,
    start_at: tokio::time::Instant,
) -> anyhow::Result<Outcome> {
    let mailbox = (args.first_mailbox + i).to_string();
    let socket = UdpSocket::bind("127.0.0.1:0").await?;
    let me = socket.local_addr()?;
    let mut client = pb::voicemail_client::VoicemailClient::connect(args.voicemail.clone()).await?;
    tokio::time::sleep_until(start_at).await;
    let started = client
        .start_session(pb::StartSessionRequest {
            mailbox: mailbox.clone(),
            context: "default".into(),
            mode: pb::Mode::Leave as i32,
            options: "us".into(),
            caller_id_number: format!("206555{i:04}"),
            caller_id_name: "Load".into(),
            channel: format!("SIP/load-{i:08x}"),
            unique_id: format!("load.{i}"),
            remote: Some(phone_proto::media::v1::Endpoint {
                ip: me.ip().to_string(),
                port: u32::from(me.port()),
            }),
            codec: pb::Codec::Pcmu as i32,
            dtmf_payload_type: 101,
        })
        .await?
        .into_inner();
    let local = started.local.unwrap_or_default();
    let to = SocketAddr::new(local.ip.parse()?, u16::try_from(local.port)?);
    let mut events = client
        .session_events(pb::SessionEventsRequest {
            session_id: started.session_id.clone(),
        })
        .await?
        .into_inner();
    let began = Instant::now();
    let freq = frequency(i);
    // One second of the tone, coded once (a whole number of cycles: it loops).
    let second: Vec<u8> = (0..8000)
        .map(|n| {
            Law::Ulaw.encode(
                (8000.0 * (2.0 * std::f64::consts::PI * freq * f64::from(n) / 8000.0).sin()) as i16,
            )
        })
        .collect();
    let mut clock = tokio::time::interval(Duration::from_millis(20));
    let (mut seq, mut ts, mut n) = (0u16, 0u32, 0u64);
    let mut packet = Vec::with_capacity(172);
    let mut sink = [0u8; 2048];
    let frames = args.seconds * 50;
    for _ in 0..frames {
        clock.tick().await;
        packet.clear();
        packet.extend_from_slice(&[0x80, 0]);
        packet.extend_from_slice(&seq.to_be_bytes());
        packet.extend_from_slice(&ts.to_be_bytes());
        packet.extend_from_slice(&(i as u32).to_be_bytes());
        let at = (n % 8000) as usize;
        packet.extend_from_slice(&second[at..at + 160]);
        n += 160;
        socket.send_to(&packet, to).await?;
        seq = seq.wrapping_add(1);
        ts = ts.wrapping_add(160);
        while socket.try_recv_from(&mut sink).is_ok() {}
    }
    let talked = began.elapsed().as_secs_f64();
    // '#': three event packets and three end packets, on one timestamp.
    for k in 0..6u16 {
        clock.tick().await;
        let end = k >= 3;
        let duration = (k + 1) * 160;
        let mut p = vec![0x80, 101 | if k == 0 { 0x80 } else { 0 }];
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&ts.to_be_bytes());
        p.extend_from_slice(&(i as u32).to_be_bytes());
        p.extend_from_slice(&[
            11,
            if end { 0x8A } else { 0x0A },
            (duration >> 8) as u8,
            duration as u8,
        ]);
        socket.send_to(&p, to).await?;
        seq = seq.wrapping_add(1);
    }
    let finished = loop {
        match tokio::time::timeout(Duration::from_secs(30), events.message()).await {
            Ok(Ok(Some(pb::SessionEvent {
                event: Some(pb::session_event::Event::Finished(f)),
                ..
            }))) => break f,
            Ok(Ok(Some(_))) => continue,
            other => anyhow::bail!("caller {i}: no finished event ({other:?})"),
        }
    };
    Ok(Outcome {
        mailbox,
        message_id: finished.message_id,
        status: finished.status,
        freq,
        talked,
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Arc::new(Args::parse());
    let start_at = tokio::time::Instant::now() + Duration::from_secs(2);
    let cpu_before = args.pid.and_then(cpu_ticks);
    let wall = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..args.callers {
        // Spread the starts over one second, as calls arrive.
        let at = start_at + Duration::from_micros((i as u64 * 1_000_000) / args.callers as u64);
        tasks.push(tokio::spawn(caller(args.clone(), i, at)));
    }
    let mut outcomes = Vec::new();
    let mut failed = 0;
    for t in tasks {
        match t.await? {
            Ok(o) => outcomes.push(o),
            Err(e) => {
                failed += 1;
                eprintln!("{e:#}");
            }
        }
    }
    let elapsed = wall.elapsed().as_secs_f64() - 2.0;
    let cpu_after = args.pid.and_then(cpu_ticks);
    // Give the storage writes a moment (they follow `finished`).
    tokio::time::sleep(Duration::from_secs(3)).await;

    let (mut stored, mut lost, mut corrupt) = (0, 0, 0);
    let mut recorded_secs = 0.0;
    for o in &outcomes {
        if o.status != pb::VmStatus::Success as i32 || o.message_id.is_empty() {
            lost += 1;
            eprintln!(
                "mailbox {}: status {} without a message",
                o.mailbox, o.status
            );
            continue;
        }
        let path = args.messages.join(format!(
            "voicemail/default/{}/INBOX/{}.wav",
            o.mailbox, o.message_id
        ));
        let Ok(bytes) = std::fs::read(&path) else {
            lost += 1;
            eprintln!("{}: missing", path.display());
            continue;
        };
        let audio = phone_audio::wav::decode(&bytes)?;
        let secs = audio.len() as f64 / 8000.0;
        // Every whole 100 ms but the last half second (where the caller stops talking
        // and presses #: a load tool that falls behind leaves a pause there).
        let chunks: Vec<_> = audio.chunks_exact(800).collect();
        let bad = chunks
            .iter()
            .take(chunks.len().saturating_sub(5))
            .filter(|c| tone_share(c, o.freq) < 0.9)
            .count();
        if bad > 0 || secs < 5.0 || secs > o.talked {
            corrupt += 1;
            let where_: Vec<String> = chunks
                .iter()
                .enumerate()
                .filter(|(_, c)| tone_share(c, o.freq) < 0.9)
                .take(12)
                .map(|(k, c)| format!("{k}:{:.2}", tone_share(c, o.freq)))
                .collect();
            eprintln!(
                "{}: {secs:.2} s, {bad} chunks not the caller's tone: {}",
                path.display(),
                where_.join(" ")
            );
        } else {
            stored += 1;
            recorded_secs += secs;
        }
        if !path.with_extension("wav49").exists() || !path.with_extension("json").exists() {
            corrupt += 1;
            eprintln!("{}: wav49 or envelope missing", path.display());
        }
    }
    println!(
        "callers: {} concurrent, {} s each",
        args.callers, args.seconds
    );
    println!(
        "messages: {stored} stored and intact, {lost} lost, {corrupt} corrupt, {failed} sessions failed; {:.1} s recorded on average",
        recorded_secs / stored.max(1) as f64
    );
    if let (Some(before), Some(after)) = (cpu_before, cpu_after) {
        let ticks = 100.0; // USER_HZ
        let cpu = (after - before) as f64 / ticks;
        println!(
            "voicemail CPU: {cpu:.1} s over {elapsed:.1} s ({:.1}% of one core); {:.2} ms of CPU per recorded second, {:.3}% of a core per concurrent recording",
            100.0 * cpu / elapsed,
            1000.0 * cpu / recorded_secs.max(1.0),
            100.0 * cpu / elapsed / args.callers as f64
        );
    }
    if lost + corrupt + failed > 0 {
        std::process::exit(1);
    }
    Ok(())
}
