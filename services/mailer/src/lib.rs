//! `mailer`: turns each new voicemail into an email the way Asterisk's app_voicemail
//! builds it from `voicemail.conf` (`serveremail`, `emailsubject`, `emailbody`,
//! `emaildateformat`, the recording attached per `attach=`, the pager mail), and sends
//! it over SMTP from a durable outbox with retries, so that no message is lost and none
//! is sent twice. Deliveries arrive over `phone.mailer.v1.Mailer` from the voicemail
//! service.
//!
//! [`compose`] builds the mails (sans I/O), [`smtp`] sends them with `lettre`,
//! [`outbox`] stores each delivery (in S3 under `outbox/`, or the data folder) before
//! `Deliver` answers and retries until it is sent or given up, and [`api`] is the gRPC
//! service. Without an SMTP host (the embedded default) mail is written as `.eml` files
//! to `<data>/mail`. On Kubernetes the mailer also mails the boxes of `Mailbox`
//! resources, and several mailers can share an outbox in S3, the holder of a Lease
//! sending (`--outbox-lease`).

#![forbid(unsafe_code)]

pub mod api;
pub mod compose;
pub mod outbox;
pub mod smtp;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use phone_blobs::{Blobs, S3Args};
use phone_proto::mailer::v1::mailer_server::MailerServer;
use service_runtime::settings::parse_duration;
use service_runtime::{CommonArgs, GrpcServer, ServiceInfo, Shutdown};

use crate::outbox::{Outbox, Policy, Transport};

pub const NAME: &str = "mailer";

/// Settings; each flag is also a `PHONE_*` environment variable.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = NAME, version, about = "The voicemail-to-email service of the phone system")]
pub struct Config {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Directory holding voicemail.conf.
    #[arg(long, env = "PHONE_CONFIG_DIR", default_value = "/etc/phone")]
    pub config_dir: PathBuf,
    /// Local state: the outbox when no S3 bucket is configured, and `mail/` (the
    /// `.eml` files) when no SMTP host is.
    #[arg(long, env = "PHONE_DATA_DIR", default_value = "/var/lib/phone")]
    pub data_dir: PathBuf,
    /// Where the voicemail service keeps its messages when there is no S3 bucket (its
    /// `<data-dir>/messages`).
    #[arg(
        long,
        env = "PHONE_MESSAGES_DIR",
        default_value = "/var/lib/phone/messages"
    )]
    pub messages_dir: PathBuf,
    #[command(flatten)]
    pub smtp: smtp::SmtpArgs,
    /// Recordings and the outbox in S3 instead of folders.
    #[command(flatten)]
    pub s3: S3Args,
    /// The wait before the first retry of a failed delivery; it doubles after each
    /// further failure.
    #[arg(long, env = "PHONE_RETRY_FIRST", default_value = "1m", value_parser = parse_duration)]
    pub retry_first: Duration,
    /// The longest wait between two attempts.
    #[arg(long, env = "PHONE_RETRY_MAX", default_value = "1h", value_parser = parse_duration)]
    pub retry_max: Duration,
    /// A delivery not sent this long after it was accepted is given up.
    #[arg(long, env = "PHONE_GIVE_UP_AFTER", default_value = "5d", value_parser = parse_duration)]
    pub give_up_after: Duration,
    /// Deliveries sent at the same time.
    #[arg(long, env = "PHONE_SMTP_PARALLEL", default_value_t = 4)]
    pub smtp_parallel: usize,
    /// Also mail the boxes of the `Mailbox` resources of this Kubernetes namespace (the
    /// API server from the pod's service account, or KUBECONFIG).
    #[arg(long, env = "PHONE_KUBE_NAMESPACE")]
    pub kube_namespace: Option<String>,
    /// Send only while holding this Lease (in --kube-namespace), so that several
    /// mailers can share one outbox (S3): each accepts and stores deliveries, one sends.
    #[arg(long, env = "PHONE_OUTBOX_LEASE", requires = "kube_namespace")]
    pub outbox_lease: Option<String>,
    /// How long the outbox's Lease lasts without renewal: the failover time.
    #[arg(long, env = "PHONE_OUTBOX_LEASE_DURATION", default_value = "15s", value_parser = parse_duration)]
    pub outbox_lease_duration: Duration,
    /// This replica's name in the Lease: the pod's name (default: the host name).
    #[arg(long, env = "PHONE_POD_NAME")]
    pub pod_name: Option<String>,
}

impl Config {
    /// The embedded defaults for `phone` and tests: folders under `data_dir`, no SMTP.
    pub fn loopback(config_dir: PathBuf, data_dir: PathBuf, messages_dir: PathBuf) -> Self {
        Self {
            common: CommonArgs::loopback(),
            config_dir,
            data_dir,
            messages_dir,
            smtp: smtp::SmtpArgs::none(),
            s3: S3Args::none(),
            retry_first: Duration::from_secs(60),
            retry_max: Duration::from_secs(3600),
            give_up_after: Duration::from_secs(5 * 86_400),
            smtp_parallel: 4,
            kube_namespace: None,
            outbox_lease: None,
            outbox_lease_duration: Duration::from_secs(15),
            pod_name: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] asterisk_conf::Error),
    #[error(transparent)]
    Runtime(#[from] service_runtime::Error),
    #[error("data folder {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("SMTP settings: {0}")]
    Smtp(#[from] smtp::SendError),
    #[error("cannot reach the Kubernetes API server (in-cluster or KUBECONFIG): {0}")]
    Kube(#[from] kube::Error),
}

/// The mailer with its configuration loaded and its port bound.
pub struct Bound {
    server: GrpcServer,
    api: api::Api,
    transport: Transport,
    parallel: usize,
    shutdown: Shutdown,
    storage: &'static str,
    sends_to: String,
    /// The namespace whose `Mailbox`es are mailed too, and its client.
    kube: Option<(kube::Client, String)>,
    /// The outbox's Lease: its name, this replica's identity, its timing.
    lease: Option<(String, String, phone_kube::lease::Timing)>,
}

/// Loads voicemail.conf, connects storage and binds the gRPC port.
pub async fn bind(config: Config) -> Result<Bound, Error> {
    let conf = asterisk_conf::voicemail::load(config.config_dir.join("voicemail.conf"))?;
    service_runtime::log_config_warnings(&conf.warnings);
    let mut server = GrpcServer::bind(NAME, &config.common).await?;
    let (recordings, outbox_blobs, storage) = match &config.s3.bucket {
        Some(bucket) => {
            let blobs = Blobs::s3(&config.s3, bucket.clone()).await;
            (blobs.clone(), blobs, "s3")
        }
        None => {
            create_dir(&config.data_dir)?;
            (
                Blobs::Dir(config.messages_dir.clone()),
                Blobs::Dir(config.data_dir.clone()),
                "folder",
            )
        }
    };
    let (transport, sends_to) = match &config.smtp.host {
        Some(host) => (
            Transport::Smtp(smtp::Smtp::new(&config.smtp, host)?),
            format!("smtp://{host}:{}", config.smtp.port),
        ),
        None => {
            let dir = config.data_dir.join("mail");
            create_dir(&dir)?;
            let to = dir.display().to_string();
            (Transport::Folder(dir), to)
        }
    };
    let metrics = outbox::Metrics::register(server.registry());
    let policy = Policy {
        first: config.retry_first,
        max: config.retry_max.max(config.retry_first),
        give_up: config.give_up_after,
    };
    let shutdown = Shutdown::new();
    let api = api::Api {
        conf: Arc::new(conf),
        resource_mailboxes: Arc::default(),
        recordings,
        outbox: Outbox::new(outbox_blobs, policy, metrics),
        shutdown: shutdown.clone(),
    };
    let kube = match config.kube_namespace {
        Some(namespace) => Some((kube::Client::try_default().await?, namespace)),
        None => None,
    };
    let lease = config.outbox_lease.map(|name| {
        let identity = config.pod_name.clone().unwrap_or_else(|| {
            std::env::var("HOSTNAME").unwrap_or_else(|_| format!("mailer-{}", std::process::id()))
        });
        (
            name,
            identity,
            phone_kube::lease::Timing::new(config.outbox_lease_duration),
        )
    });
    if lease.is_some() {
        api.outbox.under_lease();
    }
    Ok(Bound {
        kube,
        lease,
        server,
        api,
        transport,
        parallel: config.smtp_parallel,
        shutdown,
        storage,
        sends_to,
    })
}

fn create_dir(path: &std::path::Path) -> Result<(), Error> {
    std::fs::create_dir_all(path).map_err(|source| Error::DataDir {
        path: path.to_owned(),
        source,
    })
}

impl Bound {
    pub fn info(&self) -> ServiceInfo {
        let mut info = self.server.info();
        info.extra
            .push(("from".into(), self.api.conf.general.server_email.clone()));
        info.extra.push(("storage".into(), self.storage.to_owned()));
        info.extra.push(("sends to".into(), self.sends_to.clone()));
        info
    }

    pub async fn run(self, shutdown: Shutdown) -> Result<(), Error> {
        // New deliveries are refused and no new send starts once shutdown begins; the
        // sends in progress finish within the drain (what is left stays stored).
        let inner = self.shutdown.clone();
        let outer = shutdown.clone();
        tokio::spawn(async move {
            outer.triggered().await;
            inner.trigger();
        });
        if let Some((client, namespace)) = self.kube.clone() {
            let boxes = self.api.resource_mailboxes.clone();
            let stop = self.shutdown.clone();
            tokio::spawn(phone_kube::on_spec_changes(
                kube::Api::<phone_kube::Mailbox>::namespaced(client, &namespace),
                Duration::from_secs(60),
                async move { stop.triggered().await },
                move |resources| {
                    // The mailer needs no PIN: only the addresses and options.
                    let found: std::collections::HashMap<_, _> = resources
                        .iter()
                        .map(|m| {
                            (
                                (m.context(), m.spec.mailbox.clone()),
                                m.to_conf(String::new()),
                            )
                        })
                        .collect();
                    tracing::info!(mailboxes = found.len(), "mailbox resources applied");
                    *boxes.write().unwrap_or_else(|e| e.into_inner()) = found;
                    std::future::ready(())
                },
            ));
        }
        // Under a Lease, it is given up only once the scheduler has stopped, so that
        // the next holder never sends beside this one's last sends.
        let stopped = Shutdown::new();
        let mut lease = None;
        if let (Some((client, namespace)), Some((name, identity, timing))) =
            (self.kube.clone(), self.lease.clone())
        {
            let outbox = self.api.outbox.clone();
            let stopped = stopped.clone();
            lease = Some(tokio::spawn(phone_kube::lease::hold(
                kube::Api::namespaced(client, &namespace),
                name,
                identity,
                timing,
                move |holding| outbox.set_scheduling(holding),
                async move { stopped.triggered().await },
            )));
        }
        let run = self
            .api
            .outbox
            .clone()
            .run(self.transport, self.parallel, self.shutdown.clone());
        let done = stopped.clone();
        let scheduler = self.server.in_flight().spawn(async move {
            run.await;
            done.trigger();
        });
        self.server
            .serve_one(MailerServer::new(self.api), shutdown)
            .await?;
        scheduler.abort();
        // The Lease goes to another replica now, not when it expires.
        stopped.trigger();
        if let Some(lease) = lease {
            let _ = tokio::time::timeout(Duration::from_secs(5), lease).await;
        }
        Ok(())
    }
}

/// Loads, binds and serves until `shutdown`, then drains.
pub async fn run(config: Config, shutdown: Shutdown) -> Result<(), Error> {
    bind(config).await?.run(shutdown).await
}
