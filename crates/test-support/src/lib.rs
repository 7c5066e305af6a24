//! What the services' tests share: the real external servers they run against, started
//! on loopback ports from the binaries `scripts/install-deps` builds with `go install`
//! (MinIO for S3, Mailpit for SMTP), each with its data in a temporary folder, stoppable
//! and restartable on the same port to stage outages. [`kube`] starts a real Kubernetes
//! API server (etcd and kube-apiserver), [`cluster`] a real one-node cluster that runs
//! pods, and [`otlp`] a trace collector.

#![forbid(unsafe_code)]

pub mod cluster;
pub mod kube;
pub mod otlp;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A program installed on `PATH` or by `go install` (`$GOPATH/bin`).
pub fn go_binary(name: &str) -> PathBuf {
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(name))
            .find(|p| p.is_file())
    });
    if let Some(path) = on_path {
        return path;
    }
    let gopath = Command::new("go")
        .args(["env", "GOPATH"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let path = Path::new(&gopath).join("bin").join(name);
    assert!(
        path.exists(),
        "{name} is not installed: run scripts/install-deps"
    );
    path
}

/// Polls `condition` until it returns `Some`, or gives up after `deadline` with `None`.
pub async fn wait_until<T, F, Fut>(deadline: Duration, mut condition: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let end = tokio::time::Instant::now() + deadline;
    loop {
        if let Some(value) = condition().await {
            return Some(value);
        }
        if tokio::time::Instant::now() >= end {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A process's resident memory (VmRSS) in KiB, for the load tools' and the cluster's
/// memory figures.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// A TCP port free on loopback right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `GET path` over HTTP/1.0 on loopback: the status and the body.
pub async fn http_get(port: u16, path: &str) -> Option<(u16, Vec<u8>)> {
    http(port, "GET", path).await
}

async fn http(port: u16, method: &str, path: &str) -> Option<(u16, Vec<u8>)> {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    let request = format!("{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.ok()?;
    let split = response.windows(4).position(|w| w == b"\r\n\r\n")?;
    let status = std::str::from_utf8(&response[..split])
        .ok()?
        .split(' ')
        .nth(1)?
        .parse()
        .ok()?;
    Some((status, response[split + 4..].to_vec()))
}

fn kill(child: &mut Option<Child>) {
    if let Some(mut child) = child.take() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

pub const MINIO_USER: &str = "phonetest";
pub const MINIO_PASSWORD: &str = "phonetest-secret";

/// A MinIO server on loopback with one bucket.
pub struct Minio {
    child: Option<Child>,
    pub port: u16,
    pub bucket: String,
    dir: tempfile::TempDir,
}

impl Minio {
    pub async fn start(bucket: &str) -> Self {
        let mut minio = Minio {
            child: None,
            port: free_port(),
            bucket: bucket.to_owned(),
            dir: tempfile::tempdir().unwrap(),
        };
        minio.resume().await;
        minio
            .client()
            .create_bucket()
            .bucket(bucket)
            .send()
            .await
            .expect("create the bucket");
        minio
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Starts (again) on the same port and data.
    pub async fn resume(&mut self) {
        let console = free_port();
        let child = Command::new(go_binary("minio"))
            .args(["server", "--quiet", "--address"])
            .arg(format!("127.0.0.1:{}", self.port))
            .arg("--console-address")
            .arg(format!("127.0.0.1:{console}"))
            .arg(self.dir.path())
            .env("MINIO_ROOT_USER", MINIO_USER)
            .env("MINIO_ROOT_PASSWORD", MINIO_PASSWORD)
            .env("MINIO_BROWSER", "off")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("minio starts");
        self.child = Some(child);
        for _ in 0..200 {
            if let Some((200, _)) = http_get(self.port, "/minio/health/ready").await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("MinIO did not become ready on port {}", self.port);
    }

    pub fn stop(&mut self) {
        kill(&mut self.child);
    }

    /// A MinIO this harness did not start (a pod's, forwarded to `port` on loopback),
    /// with the harness's credentials.
    pub fn remote(port: u16, bucket: &str) -> Self {
        Minio {
            child: None,
            port,
            bucket: bucket.to_owned(),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn client(&self) -> aws_sdk_s3::Client {
        let config = aws_sdk_s3::config::Builder::new()
            .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
            .region(aws_sdk_s3::config::Region::new("us-east-1"))
            .endpoint_url(self.endpoint())
            .force_path_style(true)
            .credentials_provider(aws_sdk_s3::config::Credentials::new(
                MINIO_USER,
                MINIO_PASSWORD,
                None,
                None,
                "test",
            ))
            .build();
        aws_sdk_s3::Client::from_conf(config)
    }

    /// The services' S3 settings for this server.
    pub fn s3_args(&self) -> phone_blobs::S3Args {
        phone_blobs::S3Args {
            bucket: Some(self.bucket.clone()),
            endpoint: Some(self.endpoint()),
            region: "us-east-1".into(),
            path_style: true,
            access_key_id: Some(MINIO_USER.into()),
            secret_access_key: Some(asterisk_conf::Secret::new(MINIO_PASSWORD)),
            timeout_ms: 1000,
        }
    }

    /// Keys under `prefix`, sorted.
    pub async fn keys(&self, prefix: &str) -> Vec<String> {
        let listed = self
            .client()
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(prefix)
            .send()
            .await
            .unwrap();
        let mut keys: Vec<String> = listed
            .contents()
            .iter()
            .filter_map(|o| o.key().map(str::to_owned))
            .collect();
        keys.sort();
        keys
    }

    pub async fn get(&self, key: &str) -> Vec<u8> {
        let object = self
            .client()
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .unwrap();
        object.body.collect().await.unwrap().into_bytes().to_vec()
    }
}

impl Drop for Minio {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A Mailpit SMTP server on loopback, read back over its HTTP API.
pub struct Mailpit {
    child: Option<Child>,
    pub smtp: u16,
    pub http: u16,
    dir: tempfile::TempDir,
    args: Vec<String>,
}

impl Mailpit {
    pub async fn start() -> Self {
        Self::start_with(&[]).await
    }

    /// With more of Mailpit's flags, such as `--smtp-allowed-recipients REGEX` (other
    /// recipients are refused with 550), `--smtp-tls-cert`/`--smtp-tls-key` (STARTTLS;
    /// with `--smtp-require-tls`, TLS from the first byte) or `--smtp-auth-file`.
    pub async fn start_with(args: &[&str]) -> Self {
        let mut mailpit = Self::stopped();
        mailpit.args = args.iter().map(|a| (*a).to_owned()).collect();
        mailpit.resume().await;
        mailpit
    }

    /// The API of a Mailpit this harness did not start (a pod's, forwarded to
    /// `http` on loopback).
    pub fn remote(http: u16) -> Self {
        let mut mailpit = Self::stopped();
        mailpit.http = http;
        mailpit
    }

    /// A Mailpit that is not running yet: its ports are chosen (an SMTP client gets
    /// "connection refused") and [`Mailpit::resume`] starts it.
    pub fn stopped() -> Self {
        Mailpit {
            child: None,
            smtp: free_port(),
            http: free_port(),
            dir: tempfile::tempdir().unwrap(),
            args: Vec::new(),
        }
    }

    /// Starts (again) on the same ports and mail database.
    pub async fn resume(&mut self) {
        let child = Command::new(go_binary("mailpit"))
            .arg("--smtp")
            .arg(format!("127.0.0.1:{}", self.smtp))
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", self.http))
            .arg("--database")
            .arg(self.dir.path().join("mail.db"))
            .arg("--disable-version-check")
            .args(if self.args.iter().any(|a| a == "--smtp-auth-file") {
                &[][..]
            } else {
                // Any AUTH is accepted, also without TLS, unless the test gives users.
                &["--smtp-auth-accept-any", "--smtp-auth-allow-insecure"][..]
            })
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mailpit starts");
        self.child = Some(child);
        for _ in 0..200 {
            if let Some((200, _)) = http_get(self.http, "/api/v1/info").await {
                if tokio::net::TcpStream::connect(("127.0.0.1", self.smtp))
                    .await
                    .is_ok()
                {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("Mailpit did not start");
    }

    pub fn stop(&mut self) {
        kill(&mut self.child);
    }

    /// A JSON document of the API (`/api/v1/...`).
    pub async fn json(&self, path: &str) -> serde_json::Value {
        let (status, body) = http_get(self.http, path).await.expect("Mailpit answers");
        assert_eq!(status, 200, "{path}: {}", String::from_utf8_lossy(&body));
        serde_json::from_slice(&body).unwrap()
    }

    /// The summaries of every message received, newest first.
    pub async fn messages(&self) -> Vec<serde_json::Value> {
        let list = self.json("/api/v1/messages?limit=1000").await;
        list["messages"].as_array().cloned().unwrap_or_default()
    }

    /// One message in full (headers, text, attachments' part ids).
    pub async fn message(&self, id: &str) -> serde_json::Value {
        self.json(&format!("/api/v1/message/{id}")).await
    }

    /// The bytes of one part of a message (an attachment).
    pub async fn part(&self, id: &str, part: &str) -> Vec<u8> {
        let (status, bytes) = http_get(self.http, &format!("/api/v1/message/{id}/part/{part}"))
            .await
            .expect("Mailpit answers");
        assert_eq!(status, 200);
        bytes
    }

    /// Waits until `count` messages have arrived (or `within` passes) and returns them.
    pub async fn wait_for(&self, count: usize, within: Duration) -> Vec<serde_json::Value> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let got = self.messages().await;
            if got.len() >= count || tokio::time::Instant::now() >= deadline {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Mailpit {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A private CA and a server certificate it signed for `127.0.0.1` and `localhost`,
/// made with the `openssl` command: `ca.pem`, `cert.pem`, `key.pem` in `dir`.
pub fn test_certificates(dir: &Path) {
    let (ca_key, ca) = (dir.join("ca.key"), dir.join("ca.pem"));
    make_ca(&ca_key, &ca, "/CN=phone test CA");
    sign_certificate(
        (&ca_key, &ca),
        (&dir.join("key.pem"), &dir.join("cert.pem")),
        "/CN=localhost",
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    );
}

/// A self-signed CA (2 days, RSA 2048): its key and certificate at `key` and `cert`.
pub(crate) fn make_ca(key: &Path, cert: &Path, subject: &str) {
    let (key, cert) = (key.display().to_string(), cert.display().to_string());
    kube::openssl(&[
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", subject, "-keyout",
        &key, "-out", &cert,
    ]);
}

/// A new key at `key` and a certificate for `subject` at `cert`, signed by the CA
/// `(ca_key, ca_cert)`, with the X.509 `extensions` (an openssl extfile's lines); the
/// request and the extensions are kept beside the key.
pub(crate) fn sign_certificate(
    (ca_key, ca_cert): (&Path, &Path),
    (key, cert): (&Path, &Path),
    subject: &str,
    extensions: &str,
) {
    let csr = key.with_extension("csr");
    let ext = key.with_extension("ext");
    std::fs::write(&ext, extensions).unwrap();
    let text = |p: &Path| p.display().to_string();
    kube::openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        subject,
        "-keyout",
        &text(key),
        "-out",
        &text(&csr),
    ]);
    kube::openssl(&[
        "x509",
        "-req",
        "-in",
        &text(&csr),
        "-CA",
        &text(ca_cert),
        "-CAkey",
        &text(ca_key),
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        &text(&ext),
        "-out",
        &text(cert),
    ]);
}
