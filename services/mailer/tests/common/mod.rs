//! What the mailer's test files share: a voicemail.conf, recordings stored where the
//! voicemail service keeps them, requests, and the mailer running in the test's process.

#![allow(dead_code)] // each test file uses its own part

use std::path::PathBuf;
use std::time::Duration;

use phone_proto::mailer::v1 as pb;
use phone_proto::mailer::v1::mailer_client::MailerClient;
use phone_test_support::Mailpit;
use service_runtime::{CommonArgs, Shutdown};

pub const CONF: &str = "[general]
format=wav49|wav
serveremail=voicemail@example.org
attach=yes
emaildateformat=%Y-%m-%d %H:%M
fromstring=Voicemail of ${VM_NAME}
emailsubject=[Voicemail] ${VM_MSGNUM} from ${VM_CALLERID}
emailbody=Hi ${VM_NAME},\\n\\n\\t${VM_DUR} from ${VM_CIDNAME} (${VM_CIDNUM}) on ${VM_DATE}, box ${VM_MAILBOX}.\\n

[zonemessages]
central=America/Chicago|'vm-received' Q 'digits/at' IMp

[default]
100 => 1234,Pat Q,pat@example.org,page@example.org,tz=central
200 => 1234,Bo R,bo@blocked.example
300 => 1234,No Mail
";

pub fn tone(freq: f64, samples: usize) -> Vec<i16> {
    (0..samples)
        .map(|n| (8000.0 * (2.0 * std::f64::consts::PI * freq * n as f64 / 8000.0).sin()) as i16)
        .collect()
}

/// A config folder with [`CONF`] and a messages folder as the voicemail service keeps it.
pub struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("conf")).unwrap();
        std::fs::write(dir.path().join("conf/voicemail.conf"), CONF).unwrap();
        Files { dir }
    }
    pub fn conf(&self) -> PathBuf {
        self.dir.path().join("conf")
    }
    pub fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }
    pub fn messages(&self) -> PathBuf {
        self.dir.path().join("messages")
    }
    /// Stores a recording where the voicemail service would; returns its key.
    pub fn record(&self, mailbox: &str, id: &str, audio: &[i16]) -> String {
        let key = format!("voicemail/default/{mailbox}/INBOX/{id}.wav49");
        let path = self.messages().join(&key);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, phone_audio::Format::Wav49.encode(audio)).unwrap();
        key
    }
}

pub fn request(mailbox: &str, id: &str, key: &str) -> pb::DeliverRequest {
    pb::DeliverRequest {
        message_id: id.into(),
        mailbox: mailbox.into(),
        context: "default".into(),
        folder: "INBOX".into(),
        message_number: 1,
        caller_id_number: "2065550123".into(),
        caller_id_name: "Pat Caller".into(),
        // 2026-11-26 23:05:09 UTC, 17:05 in Chicago.
        origin_time: 1_795_734_309,
        duration_secs: 2,
        recordings: vec![pb::Recording {
            format: "wav49".into(),
            key: key.into(),
        }],
    }
}

pub fn smtp_to(mailpit: &Mailpit) -> mailer::smtp::SmtpArgs {
    mailer::smtp::SmtpArgs {
        host: Some("127.0.0.1".into()),
        port: mailpit.smtp,
        security: mailer::smtp::Security::None,
        user: None,
        password: None,
        ca_file: None,
        timeout_ms: 2000,
    }
}

pub struct Running {
    pub client: MailerClient<tonic::transport::Channel>,
    pub admin: std::net::SocketAddr,
    pub grpc: std::net::SocketAddr,
    pub shutdown: Shutdown,
    pub task: tokio::task::JoinHandle<Result<(), mailer::Error>>,
}

impl Running {
    pub async fn start(config: mailer::Config) -> Self {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let bound = mailer::bind(config).await.expect("mailer binds");
        let info = bound.info();
        let shutdown = Shutdown::new();
        let task = tokio::spawn(bound.run(shutdown.clone()));
        let client = MailerClient::connect(format!("http://{}", info.grpc))
            .await
            .unwrap();
        Running {
            client,
            admin: info.admin,
            grpc: info.grpc,
            shutdown,
            task,
        }
    }

    pub async fn metric(&self, name: &str) -> f64 {
        let text = service_runtime::server::scrape_metrics(self.admin)
            .await
            .unwrap();
        text.lines()
            .find_map(|l| {
                l.strip_prefix(name)
                    .filter(|rest| rest.starts_with(' '))
                    .and_then(|rest| rest.trim().parse().ok())
            })
            .unwrap_or_else(|| panic!("no metric {name} in\n{text}"))
    }

    /// Deliver, which must be accepted.
    pub async fn deliver(&mut self, request: pb::DeliverRequest) -> pb::Delivery {
        self.client.deliver(request).await.unwrap().into_inner()
    }

    pub async fn state(&mut self, id: &str) -> pb::Delivery {
        self.client
            .get_delivery(pb::GetDeliveryRequest {
                message_id: id.into(),
            })
            .await
            .unwrap()
            .into_inner()
    }

    /// Waits until the delivery leaves PENDING.
    pub async fn settled(&mut self, id: &str, within: Duration) -> pb::Delivery {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let d = self.state(id).await;
            if d.state() != pb::DeliveryState::Pending || tokio::time::Instant::now() > deadline {
                return d;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn stop(self) {
        self.shutdown.trigger();
        self.task.await.unwrap().unwrap();
    }
}

pub fn config(files: &Files) -> mailer::Config {
    mailer::Config {
        common: CommonArgs::loopback(),
        retry_first: Duration::from_millis(300),
        retry_max: Duration::from_secs(2),
        ..mailer::Config::loopback(files.conf(), files.data(), files.messages())
    }
}
