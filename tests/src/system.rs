//! The phone system under test, started from the release or debug binaries the
//! workspace builds: either `phone` (all five services in one process) or the five
//! service binaries as five processes wired by their flags, as in Kubernetes. Either
//! way it runs the seed's three files (the carrier's host and port put in sip.conf),
//! keeps messages in MinIO and sends email through Mailpit.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use phone_test_support::{free_port, Mailpit, Minio};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `phone`: one process.
    OneProcess,
    /// `sip-edge`, `router`, `media-relay`, `voicemail`, `mailer`.
    FiveProcesses,
}

/// A built binary of the workspace (`cargo test --workspace` builds them all).
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/<test>-<hash>
    let dir = exe.parent().and_then(Path::parent).unwrap();
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is not built: run `cargo build --workspace` (scripts/test does)",
        path.display()
    );
    path
}

/// The seed's files with the carrier's address as the trunk's host. The seed's
/// `insecure=port,invite` becomes `insecure=invite` for the trunk: on one loopback
/// address the phones' port is what tells them from the carrier.
pub fn seed_config(dir: &Path, carrier: SocketAddr) {
    let seed = crate::example_config_dir();
    let sip = std::fs::read_to_string(seed.join("sip.conf"))
        .unwrap()
        .replace(
            "host=sip.flowroute.com",
            &format!("host={}\nport={}", carrier.ip(), carrier.port()),
        )
        .replacen("insecure=port,invite", "insecure=invite", 1);
    std::fs::write(dir.join("sip.conf"), sip).unwrap();
    for file in ["extensions.conf", "voicemail.conf"] {
        std::fs::copy(seed.join(file), dir.join(file)).unwrap();
    }
}

pub struct System {
    children: Vec<(String, Child)>,
    /// Each service's admin address (`/metrics`).
    pub admins: std::collections::HashMap<String, SocketAddr>,
    pub sip: SocketAddr,
    pub mode: Mode,
    pub minio: Minio,
    pub mailpit: Mailpit,
    _dir: tempfile::TempDir,
}

pub const BUCKET: &str = "phone";

impl System {
    /// Starts the system on `sip` (a free UDP+TCP port) with the trunk at `carrier`.
    pub async fn start(mode: Mode, sip: SocketAddr, carrier: SocketAddr) -> Self {
        Self::start_with_env(mode, sip, carrier, &[]).await
    }

    /// [`System::start`] with more environment for every process (the OTLP exporter's).
    pub async fn start_with_env(
        mode: Mode,
        sip: SocketAddr,
        carrier: SocketAddr,
        env: &[(&str, String)],
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("conf");
        std::fs::create_dir_all(&conf).unwrap();
        seed_config(&conf, carrier);
        let minio = Minio::start(BUCKET).await;
        let mailpit = Mailpit::start().await;
        let s3: Vec<String> = vec![
            "--s3-bucket".into(),
            BUCKET.into(),
            "--s3-endpoint".into(),
            minio.endpoint(),
            "--s3-path-style".into(),
            "--s3-access-key-id".into(),
            phone_test_support::MINIO_USER.into(),
        ];
        let smtp: Vec<String> = vec![
            "--smtp-host".into(),
            "127.0.0.1".into(),
            "--smtp-port".into(),
            mailpit.smtp.to_string(),
            "--smtp-security".into(),
            "none".into(),
        ];
        let conf_flag = vec!["--config-dir".to_owned(), conf.display().to_string()];
        let prompts = vec![
            "--prompts-dir".to_owned(),
            "/usr/share/phone/prompts".to_owned(),
        ];
        let rtp = "26000-26199".to_owned();
        let mut children = Vec::new();
        let mut admins = std::collections::HashMap::new();
        let spawn = |name: &str, args: Vec<String>| -> (String, Child) {
            let child = Command::new(binary(name))
                .args(&args)
                .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
                .env(
                    "PHONE_S3_SECRET_ACCESS_KEY",
                    phone_test_support::MINIO_PASSWORD,
                )
                .env(
                    "RUST_LOG",
                    std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
                )
                .stdin(Stdio::null())
                .stdout(if name == "phone" {
                    Stdio::piped()
                } else {
                    Stdio::null()
                })
                .stderr(Stdio::inherit())
                .spawn()
                .unwrap_or_else(|e| panic!("{name} starts: {e}"));
            (name.to_owned(), child)
        };
        match mode {
            Mode::OneProcess => {
                let mut args = vec![
                    "--data-dir".to_owned(),
                    dir.path().join("data").display().to_string(),
                    "--sip-bind".into(),
                    sip.to_string(),
                    "--rtp-ports".into(),
                    rtp,
                    "--advertise-ip".into(),
                    "127.0.0.1".into(),
                ];
                args.extend(conf_flag);
                args.extend(prompts);
                args.extend(s3);
                args.extend(smtp);
                let (name, mut child) = spawn("phone", args);
                // phone prints each service's addresses, then `ready`.
                use std::io::BufRead;
                let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
                let mut lines = stdout.lines();
                for line in lines.by_ref().map_while(Result::ok) {
                    if line == "ready" {
                        break;
                    }
                    let service = line.split_whitespace().next().unwrap_or("").to_owned();
                    if let Some(admin) = line
                        .split_whitespace()
                        .find_map(|w| w.strip_prefix("admin="))
                        .and_then(|a| a.parse().ok())
                    {
                        admins.insert(service, admin);
                    }
                }
                // Keep reading, so that phone never blocks on a full pipe.
                std::thread::spawn(move || for _ in lines {});
                children.push((name, child));
            }
            Mode::FiveProcesses => {
                let grpc: Vec<u16> = (0..5).map(|_| free_port()).collect();
                let url = |i: usize| format!("http://127.0.0.1:{}", grpc[i]);
                let admin: Vec<u16> = (0..5).map(|_| free_port()).collect();
                for (i, name) in ["sip-edge", "router", "media-relay", "voicemail", "mailer"]
                    .iter()
                    .enumerate()
                {
                    admins.insert(
                        (*name).to_owned(),
                        SocketAddr::from(([127, 0, 0, 1], admin[i])),
                    );
                }
                let common = |i: usize| {
                    vec![
                        "--grpc-bind".to_owned(),
                        format!("127.0.0.1:{}", grpc[i]),
                        "--admin-bind".to_owned(),
                        format!("127.0.0.1:{}", admin[i]),
                    ]
                };
                let data = |name: &str| {
                    let path = dir.path().join(name);
                    std::fs::create_dir_all(&path).unwrap();
                    vec!["--data-dir".to_owned(), path.display().to_string()]
                };
                // 0 edge, 1 router, 2 relay, 3 voicemail, 4 mailer
                let mut relay = common(2);
                relay.extend([
                    "--rtp-ports".into(),
                    rtp,
                    "--rtp-bind-ip".into(),
                    "127.0.0.1".into(),
                    "--advertise-ip".into(),
                    "127.0.0.1".into(),
                ]);
                children.push(spawn("media-relay", relay));
                let mut mailer = common(4);
                mailer.extend(conf_flag.clone());
                mailer.extend(data("mailer"));
                mailer.extend(s3.clone());
                mailer.extend(smtp);
                children.push(spawn("mailer", mailer));
                let mut voicemail = common(3);
                voicemail.extend(conf_flag.clone());
                voicemail.extend(data("voicemail"));
                voicemail.extend(prompts);
                voicemail.extend(s3);
                voicemail.extend([
                    "--rtp-bind-ip".into(),
                    "127.0.0.1".into(),
                    "--mailer-url".into(),
                    url(4),
                    "--edge-url".into(),
                    url(0),
                ]);
                children.push(spawn("voicemail", voicemail));
                let mut router = common(1);
                router.extend(conf_flag.clone());
                router.extend([
                    "--edge-url".into(),
                    url(0),
                    "--voicemail-url".into(),
                    url(3),
                ]);
                children.push(spawn("router", router));
                let mut edge = common(0);
                edge.extend(conf_flag);
                edge.extend(data("sip-edge"));
                edge.extend([
                    "--sip-bind".into(),
                    sip.to_string(),
                    "--advertise-ip".into(),
                    "127.0.0.1".into(),
                    "--router-url".into(),
                    url(1),
                    "--media-relays".into(),
                    url(2),
                    "--voicemail-url".into(),
                    url(3),
                ]);
                children.push(spawn("sip-edge", edge));
            }
        }
        let system = System {
            children,
            admins,
            sip,
            mode,
            minio,
            mailpit,
            _dir: dir,
        };
        system.wait_ready().await;
        system
    }

    /// Until the edge answers SIP OPTIONS (and so every service it needs is up).
    async fn wait_ready(&self) {
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let local = socket.local_addr().unwrap();
        for i in 0..300 {
            let probe = format!(
                "OPTIONS sip:{sip} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bKready{i}\r\nMax-Forwards: 70\r\nFrom: <sip:probe@{local}>;tag=p\r\nTo: <sip:{sip}>\r\nCall-ID: ready{i}@test\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
                sip = self.sip
            );
            let _ = socket.send_to(probe.as_bytes(), self.sip).await;
            let mut buf = [0u8; 2048];
            if let Ok(Ok((n, _))) =
                tokio::time::timeout(Duration::from_millis(100), socket.recv_from(&mut buf)).await
            {
                if buf[..n].starts_with(b"SIP/2.0 200") {
                    // The other services: a moment for the edge's first relay poll.
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    return;
                }
            }
        }
        panic!("the system did not answer OPTIONS on {}", self.sip);
    }

    /// One sample of a service's `/metrics` (the first line that starts with `sample`).
    pub async fn metric(&self, service: &str, sample: &str) -> Option<f64> {
        let text = service_runtime::server::scrape_metrics(self.admins[service])
            .await
            .ok()?;
        crate::sample(&text, sample)
    }

    /// The keys under `prefix` in the bucket.
    pub async fn keys(&self, prefix: &str) -> Vec<String> {
        self.minio.keys(prefix).await
    }
}

impl Drop for System {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
