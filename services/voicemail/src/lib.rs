//! `voicemail`: a media endpoint that does what Asterisk's `VoiceMail()` and
//! `VoiceMailMain()` do for `voicemail.conf`: greetings, beep, recording with silence
//! detection, the mailbox menu over DTMF, messages and greetings in S3 (S3 is the
//! source of truth for counts), then the mailer is told and the edge gets new counts
//! for MWI. Sessions are started by the router over `phone.voicemail.v1.Voicemail`.
//!
//! The parts: [`session`] is the application itself, sans I/O, on 20 ms ticks (with
//! [`recorder`], [`audio`] for prompts and playlists, [`saydate`] for envelopes);
//! [`rtp`] parses, buffers and packetizes the media; [`store`] keeps messages in S3 or
//! a folder, with a spool for outages; [`service`] runs sessions and the gRPC API.

#![forbid(unsafe_code)]

pub mod audio;
pub mod recorder;
pub mod resources;
pub mod rtp;
pub mod saydate;
pub mod service;
pub mod session;
pub mod store;

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use asterisk_conf::voicemail::VoicemailConf;
use phone_audio::Format;
use phone_proto::voicemail::v1::voicemail_server::VoicemailServer;
use service_runtime::grpc::client_channel;
use service_runtime::{CommonArgs, GrpcServer, ServiceInfo, Shutdown};

pub const NAME: &str = "voicemail";

/// Settings; each flag is also a `PHONE_*` environment variable.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = NAME, version, about = "The voicemail service of the phone system")]
pub struct Config {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Directory holding voicemail.conf.
    #[arg(long, env = "PHONE_CONFIG_DIR", default_value = "/etc/phone")]
    pub config_dir: PathBuf,
    /// Local state: the spool, and the message store when no S3 bucket is configured.
    #[arg(long, env = "PHONE_DATA_DIR", default_value = "/var/lib/phone")]
    pub data_dir: PathBuf,
    /// The spoken prompts (made by scripts/make-prompts).
    #[arg(long, env = "PHONE_PROMPTS_DIR", default_value = DEFAULT_PROMPTS_DIR)]
    pub prompts_dir: PathBuf,
    /// Where sessions receive RTP.
    #[arg(long, env = "PHONE_RTP_BIND_IP", default_value = "0.0.0.0")]
    pub rtp_bind_ip: IpAddr,
    /// The address media relays send this service's RTP to (in Kubernetes, the pod's).
    #[arg(long, env = "PHONE_ADVERTISE_IP")]
    pub advertise_ip: Option<IpAddr>,
    #[arg(long, env = "PHONE_MAILER_URL", default_value = "http://mailer:50051")]
    pub mailer_url: String,
    #[arg(long, env = "PHONE_EDGE_URL", default_value = "http://sip-edge:50051")]
    pub edge_url: String,
    #[command(flatten)]
    pub s3: store::S3Args,
    /// Use the `Mailbox` resources of this Kubernetes namespace beside voicemail.conf
    /// (the API server from the pod's service account, or KUBECONFIG).
    #[arg(long, env = "PHONE_KUBE_NAMESPACE")]
    pub kube_namespace: Option<String>,
    /// How often the Mailboxes' Secrets (PINs) are read again.
    #[arg(long, env = "PHONE_KUBE_RESYNC", default_value = "30s", value_parser = service_runtime::settings::parse_duration)]
    pub kube_resync: Duration,
}

/// Where `scripts/install-deps` (and the image) put the prompts.
pub const DEFAULT_PROMPTS_DIR: &str = "/usr/share/phone/prompts";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] asterisk_conf::Error),
    #[error(transparent)]
    Runtime(#[from] service_runtime::Error),
    #[error("cannot reach the Kubernetes API server (in-cluster or KUBECONFIG): {0}")]
    Kube(#[from] kube::Error),
    #[error("prompts: {0}")]
    Prompts(String),
    #[error("cannot prepare {}: {source}", path.display())]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The voicemail service with its configuration and prompts loaded and its port bound.
pub struct Bound {
    server: GrpcServer,
    shared: Arc<service::Shared>,
    shutdown: Shutdown,
    backend: &'static str,
    /// The namespace whose `Mailbox`es are used, its client, and the resync period.
    kube: Option<(kube::Client, String, Duration)>,
}

/// The formats of `format=`, those this service writes; wav when none is left.
fn formats(conf: &VoicemailConf) -> Vec<Format> {
    let mut out = Vec::new();
    for name in &conf.general.formats {
        match Format::from_name(name) {
            Some(f) if !out.contains(&f) => out.push(f),
            Some(_) => {}
            None => {
                tracing::warn!(format = %name, "format= names a format this service does not write; skipped")
            }
        }
    }
    if out.is_empty() {
        out.push(Format::Wav);
    }
    out
}

/// Loads voicemail.conf and the prompts, connects storage and binds the gRPC port.
pub async fn bind(config: Config) -> Result<Bound, Error> {
    let conf = asterisk_conf::voicemail::load(config.config_dir.join("voicemail.conf"))?;
    service_runtime::log_config_warnings(&conf.warnings);
    let prompts = audio::Prompts::load(&config.prompts_dir).map_err(Error::Prompts)?;
    let mut server = GrpcServer::bind(NAME, &config.common).await?;
    server.accept_while_draining();
    let (blobs, backend) = match &config.s3.bucket {
        Some(bucket) => (store::Blobs::s3(&config.s3, bucket.clone()).await, "s3"),
        None => {
            let path = config.data_dir.join("messages");
            std::fs::create_dir_all(&path).map_err(|source| Error::DataDir {
                path: path.clone(),
                source,
            })?;
            (store::Blobs::Dir(path), "folder")
        }
    };
    let spool = store::data_spool(&config.data_dir);
    let store = store::Store::new(blobs, formats(&conf), spool);
    let metrics = service::Metrics::register(server.registry());
    let shutdown = Shutdown::new();
    let shared = service::Shared::new(
        conf,
        store,
        Arc::new(prompts),
        config.rtp_bind_ip,
        config.advertise_ip,
        [
            client_channel(&config.mailer_url)?,
            client_channel(&config.edge_url)?,
        ],
        metrics,
        server.in_flight(),
        shutdown.clone(),
    );
    let kube = match config.kube_namespace {
        Some(namespace) => Some((
            kube::Client::try_default().await?,
            namespace,
            config.kube_resync,
        )),
        None => None,
    };
    Ok(Bound {
        server,
        shared,
        shutdown,
        backend,
        kube,
    })
}

impl Bound {
    pub fn info(&self) -> ServiceInfo {
        let mut info = self.server.info();
        let mailboxes: usize = self
            .shared
            .conf
            .contexts
            .iter()
            .map(|c| c.mailboxes.len())
            .sum();
        info.extra.push(("mailboxes".into(), mailboxes.to_string()));
        info.extra.push(("storage".into(), self.backend.to_owned()));
        info
    }

    pub async fn run(self, shutdown: Shutdown) -> Result<(), Error> {
        // New sessions are refused from the moment shutdown starts.
        let inner = self.shutdown.clone();
        let outer = shutdown.clone();
        tokio::spawn(async move {
            outer.triggered().await;
            inner.trigger();
        });
        tokio::spawn(self.shared.clone().spool_task(self.shutdown.clone()));
        if let Some((client, namespace, resync)) = self.kube.clone() {
            tokio::spawn(resources::run(
                client,
                namespace,
                resync,
                self.shared.clone(),
                self.shutdown.clone(),
            ));
        }
        tokio::spawn(
            self.shared
                .clone()
                .announce_task(Duration::from_secs(300), self.shutdown.clone()),
        );
        self.server
            .serve_one(VoicemailServer::new(service::Api(self.shared)), shutdown)
            .await?;
        Ok(())
    }
}

/// Loads, binds and serves until `shutdown`, then drains.
pub async fn run(config: Config, shutdown: Shutdown) -> Result<(), Error> {
    bind(config).await?.run(shutdown).await
}
