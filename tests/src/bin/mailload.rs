//! The project's mailer load tool: N new voicemails, each with a 60-second wav49
//! recording (a speech-like mix of tones, so the GSM frames are not all alike), are
//! handed to the mailer at once (`Deliver`, `--concurrency` in flight), and the tool
//! waits until the outbox is empty. It reports how fast deliveries were accepted
//! (stored durably) and how fast they were sent, checks with the SMTP server (Mailpit's
//! API) that exactly N emails arrived, and reads the mailer's CPU time from /proc.
//!
//! ```sh
//! scripts/bench-mailer 500
//! ```

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Parser;
use futures::StreamExt;
use phone_proto::mailer::v1 as pb;
use phone_proto::mailer::v1::mailer_client::MailerClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Parser, Debug)]
#[command(about = "Voicemail emails through the mailer, as fast as it sends them")]
struct Args {
    /// The mailer's gRPC address (http://host:port).
    #[arg(long)]
    mailer: String,
    #[arg(long, default_value_t = 500)]
    deliveries: usize,
    /// Deliver calls in flight at once.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// The recording's length.
    #[arg(long, default_value_t = 60)]
    seconds: u32,
    /// The mailbox (in voicemail.conf, with an email address).
    #[arg(long, default_value = "1000")]
    mailbox: String,
    /// The folder the mailer reads recordings from (its --messages-dir).
    #[arg(long)]
    messages: PathBuf,
    /// Mailpit's HTTP port on loopback, to count what arrived.
    #[arg(long)]
    mailpit_http: u16,
    /// The mailer's pid, for its CPU time.
    #[arg(long)]
    pid: Option<u32>,
}

fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// A minute of something like speech: three drifting tones, syllable-shaped.
fn recording(seconds: u32) -> Vec<u8> {
    let n = seconds as usize * 8000;
    let samples: Vec<i16> = (0..n)
        .map(|i| {
            let t = i as f64 / 8000.0;
            let envelope = (std::f64::consts::PI * t * 4.0).sin().abs();
            let f = 180.0 + 40.0 * (t * 0.7).sin();
            let s = (2.0 * std::f64::consts::PI * f * t).sin()
                + 0.5 * (2.0 * std::f64::consts::PI * 2.3 * f * t).sin()
                + 0.25 * (2.0 * std::f64::consts::PI * 3.1 * f * t).sin();
            (s * envelope * 6000.0) as i16
        })
        .collect();
    phone_audio::Format::Wav49.encode(&samples)
}

async fn mailpit_total(port: u16) -> anyhow::Result<u64> {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    stream
        .write_all(b"GET /api/v1/messages?limit=1 HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .unwrap_or_default();
    let key = "\"total\":";
    let at = body
        .find(key)
        .ok_or_else(|| anyhow::anyhow!("no total in {body}"))?;
    let digits: String = body[at + key.len()..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    Ok(digits.parse()?)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let wav49 = recording(args.seconds);
    let run = std::process::id();
    let mut requests = Vec::with_capacity(args.deliveries);
    for i in 0..args.deliveries {
        let id = format!("01795734309-load{run}x{i:06}");
        let key = format!("voicemail/default/{}/INBOX/{id}.wav49", args.mailbox);
        let path = args.messages.join(&key);
        std::fs::create_dir_all(path.parent().unwrap())?;
        std::fs::write(&path, &wav49)?;
        requests.push(pb::DeliverRequest {
            message_id: id,
            mailbox: args.mailbox.clone(),
            context: "default".into(),
            folder: "INBOX".into(),
            message_number: i as u32 + 1,
            caller_id_number: "2065550123".into(),
            caller_id_name: "Load Caller".into(),
            origin_time: 1_795_734_309,
            duration_secs: args.seconds,
            recordings: vec![pb::Recording {
                format: "wav49".into(),
                key,
            }],
        });
    }
    println!(
        "{} deliveries, each with a {} s wav49 recording ({} bytes)",
        args.deliveries,
        args.seconds,
        wav49.len()
    );
    let before_total = mailpit_total(args.mailpit_http).await?;
    let client = MailerClient::connect(args.mailer.clone()).await?;
    let cpu_before = args.pid.and_then(cpu_seconds);
    let start = Instant::now();
    let results: Vec<Result<pb::Delivery, tonic::Status>> =
        futures::stream::iter(requests.iter().cloned().map(|r| {
            let mut client = client.clone();
            async move { client.deliver(r).await.map(|d| d.into_inner()) }
        }))
        .buffer_unordered(args.concurrency.max(1))
        .collect()
        .await;
    let accepted_in = start.elapsed();
    let refused = results.iter().filter(|r| r.is_err()).count();
    if let Some(Err(e)) = results.iter().find(|r| r.is_err()) {
        println!("first refusal: {e}");
    }
    // Until the outbox is empty.
    let mut client2 = client.clone();
    loop {
        let pending = client2
            .list_pending(pb::ListPendingRequest {})
            .await?
            .into_inner()
            .deliveries
            .len();
        if pending == 0 {
            break;
        }
        if start.elapsed() > Duration::from_secs(3600) {
            anyhow::bail!("{pending} deliveries still pending after an hour");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let sent_in = start.elapsed();
    let cpu = match (cpu_before, args.pid.and_then(cpu_seconds)) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    let mut states = [0usize; 4];
    for r in &requests {
        let d = client2
            .get_delivery(pb::GetDeliveryRequest {
                message_id: r.message_id.clone(),
            })
            .await?
            .into_inner();
        states[d.state as usize % 4] += 1;
    }
    // Mailpit stores what it accepted asynchronously: give it a moment.
    let mut arrived = 0;
    for _ in 0..100 {
        arrived = mailpit_total(args.mailpit_http).await? - before_total;
        if arrived >= args.deliveries as u64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let n = args.deliveries as f64;
    println!(
        "accepted (stored durably): {} in {:.2} s = {:.0} deliveries/s; refused {refused}",
        args.deliveries - refused,
        accepted_in.as_secs_f64(),
        (n - refused as f64) / accepted_in.as_secs_f64()
    );
    println!(
        "sent: {} in {:.2} s = {:.1} deliveries/s end to end; failed {}, still pending {}",
        states[2],
        sent_in.as_secs_f64(),
        states[2] as f64 / sent_in.as_secs_f64(),
        states[3],
        states[1]
    );
    println!("emails the SMTP server received: {arrived}");
    if let Some(cpu) = cpu {
        println!(
            "mailer CPU: {:.2} s = {:.1} ms per delivery ({:.0}% of one core over the run)",
            cpu,
            cpu * 1000.0 / n,
            cpu * 100.0 / sent_in.as_secs_f64()
        );
    }
    if refused > 0 || states[2] != args.deliveries || arrived != args.deliveries as u64 {
        anyhow::bail!("not every delivery arrived exactly once");
    }
    Ok(())
}
