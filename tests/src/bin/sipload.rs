//! The project's SIP load generator (SIPp is not packaged here). `register` mode: N
//! workers, each with its own UDP socket, register distinct lines `load00001...` again
//! and again through the whole digest exchange (REGISTER, 401, REGISTER with
//! Authorization, 200) and count what completes.
//!
//! `cargo run --release -p phone-tests --bin sipload -- register --target 127.0.0.1:5060`
//! (the edge needs `sip.conf` lines `load00001`.. with `secret=load`; `--write-config DIR`
//! writes one, with as many lines as `--lines`).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use phone_tests::rss_kib;
use sip_edge::digest::{authorize, Challenge};
use tokio::net::UdpSocket;

#[derive(Parser, Debug)]
#[command(about = "SIP load generator")]
struct Args {
    /// What to load: `register`.
    mode: String,
    #[arg(long, default_value = "127.0.0.1:5060")]
    target: SocketAddr,
    /// Concurrent workers (one UDP socket and one outstanding exchange each).
    #[arg(long, default_value_t = 64)]
    workers: usize,
    /// Lines to register (each worker takes its share).
    #[arg(long, default_value_t = 10_000)]
    lines: usize,
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Writes a sip.conf with the lines to this directory and exits.
    #[arg(long)]
    write_config: Option<std::path::PathBuf>,
    /// The edge's PID, to report its memory (VmRSS) before and after.
    #[arg(long)]
    edge_pid: Option<u32>,
}

fn line(n: usize) -> String {
    format!("load{n:05}")
}

fn register(local: SocketAddr, user: &str, cseq: u64, auth: &str) -> String {
    format!(
        "REGISTER sip:{host} SIP/2.0\r\n\
Via: SIP/2.0/UDP {local};branch=z9hG4bK{user}x{cseq};rport\r\n\
Max-Forwards: 70\r\n\
To: <sip:{user}@{host}>\r\n\
From: <sip:{user}@{host}>;tag={user}\r\n\
Call-ID: {user}@load\r\n\
CSeq: {cseq} REGISTER\r\n\
Contact: <sip:{user}@{local}>;expires=3600\r\n\
{auth}Content-Length: 0\r\n\r\n",
        host = "127.0.0.1"
    )
}

async fn exchange(
    socket: &UdpSocket,
    target: SocketAddr,
    message: &str,
    buffer: &mut [u8],
) -> Option<String> {
    socket.send_to(message.as_bytes(), target).await.ok()?;
    let (n, _) = tokio::time::timeout(Duration::from_secs(2), socket.recv_from(buffer))
        .await
        .ok()?
        .ok()?;
    Some(String::from_utf8_lossy(&buffer[..n]).into_owned())
}

async fn worker(
    id: usize,
    args: Arc<Args>,
    deadline: Instant,
    done: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
) {
    let socket = UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("a local UDP socket");
    let local = socket.local_addr().expect("bound");
    let mut buffer = vec![0u8; 65_535];
    let mut cseq = 0u64;
    let mut n = id;
    while Instant::now() < deadline {
        let user = line(1 + n % args.lines);
        n += args.workers;
        cseq += 2;
        let Some(challenge) = exchange(
            &socket,
            args.target,
            &register(local, &user, cseq, ""),
            &mut buffer,
        )
        .await
        else {
            failed.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let Some(value) = challenge
            .split("\r\n")
            .find_map(|l| l.strip_prefix("WWW-Authenticate: "))
            .and_then(|v| Challenge::parse(v).ok())
        else {
            failed.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let creds = authorize(&value, &user, "load", "REGISTER", "sip:127.0.0.1", "c", 1);
        let auth = format!("Authorization: {}\r\n", creds.to_header());
        match exchange(
            &socket,
            args.target,
            &register(local, &user, cseq + 1, &auth),
            &mut buffer,
        )
        .await
        {
            Some(ok) if ok.starts_with("SIP/2.0 200") => {
                done.fetch_add(1, Ordering::Relaxed);
            }
            _ => {
                failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

#[tokio::main]
async fn main() {
    let args = Arc::new(Args::parse());
    if let Some(dir) = &args.write_config {
        std::fs::create_dir_all(dir).expect("the config directory");
        let mut text = String::from("[general]\n");
        for n in 1..=args.lines {
            text.push_str(&format!(
                "\n[{}]\ntype=friend\nhost=dynamic\nsecret=load\ncontext=localexts\n",
                line(n)
            ));
        }
        std::fs::write(dir.join("sip.conf"), text).expect("sip.conf written");
        println!(
            "wrote {} lines to {}",
            args.lines,
            dir.join("sip.conf").display()
        );
        return;
    }
    assert_eq!(args.mode, "register", "only `register` is implemented");
    let before = args.edge_pid.and_then(rss_kib);
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.seconds);
    let tasks: Vec<_> = (0..args.workers)
        .map(|id| {
            tokio::spawn(worker(
                id,
                args.clone(),
                deadline,
                done.clone(),
                failed.clone(),
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
        "REGISTER with digest auth: {done} completed in {elapsed:.1} s = {:.0}/s, {failed} failed, {} workers, {} lines",
        done as f64 / elapsed,
        args.workers,
        args.lines
    );
    if let (Some(before), Some(after)) = (before, args.edge_pid.and_then(rss_kib)) {
        let bindings = args.lines.min(done as usize);
        println!(
            "edge VmRSS {before} KiB -> {after} KiB: {:.2} KiB per registration ({bindings} bindings)",
            (after.saturating_sub(before)) as f64 / bindings.max(1) as f64
        );
    }
}
