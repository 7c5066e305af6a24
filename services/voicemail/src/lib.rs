//! `voicemail`: a media endpoint that does what Asterisk's `VoiceMail()` and
//! `VoiceMailMain()` do for `voicemail.conf`: greetings, beep, recording with silence
//! detection, the mailbox menu over DTMF, messages and greetings in S3 (S3 is the
//! source of truth for counts), then the mailer is told and the edge gets new counts
//! for MWI. Sessions are started by the router over `phone.voicemail.v1.Voicemail`.
//!
//! What runs today (issue #2): `voicemail.conf` is loaded and checked at start (a broken
//! file stops the process with `file:line: message`); the gRPC API, health, metrics and
//! drain run. Sessions are issue #6; until then they answer UNIMPLEMENTED.

#![forbid(unsafe_code)]

pub mod audio;
pub mod recorder;
pub mod rtp;
pub mod saydate;
pub mod session;
pub mod store;

use std::net::IpAddr;
use std::path::PathBuf;
use std::pin::Pin;

use asterisk_conf::voicemail::VoicemailConf;
use futures::Stream;
use phone_proto::voicemail::v1::voicemail_server::{Voicemail, VoicemailServer};
use phone_proto::voicemail::v1::{
    MailboxCountsRequest, MailboxCountsResponse, SessionEvent, SessionEventsRequest,
    StartSessionRequest, StartSessionResponse, StopSessionRequest, StopSessionResponse,
};
use service_runtime::grpc::{client_channel, not_yet, TracedChannel};
use service_runtime::{CommonArgs, GrpcServer, ServiceInfo, Shutdown};
use tonic::{Request, Response, Status};

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
    /// Local state (and the message store when no S3 bucket is configured).
    #[arg(long, env = "PHONE_DATA_DIR", default_value = "/var/lib/phone")]
    pub data_dir: PathBuf,
    /// The address media relays send this service's RTP to.
    #[arg(long, env = "PHONE_ADVERTISE_IP")]
    pub advertise_ip: Option<IpAddr>,
    #[arg(long, env = "PHONE_MAILER_URL", default_value = "http://mailer:50051")]
    pub mailer_url: String,
    #[arg(long, env = "PHONE_EDGE_URL", default_value = "http://sip-edge:50051")]
    pub edge_url: String,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] asterisk_conf::Error),
    #[error(transparent)]
    Runtime(#[from] service_runtime::Error),
}

/// The voicemail service with its configuration loaded and its port bound.
pub struct Bound {
    server: GrpcServer,
    conf: VoicemailConf,
    /// The mailer (new messages) and the edge (MWI); used by issue #6.
    #[allow(dead_code)]
    peers: [TracedChannel; 2],
}

/// Loads voicemail.conf and binds the gRPC port.
pub async fn bind(config: Config) -> Result<Bound, Error> {
    let conf = asterisk_conf::voicemail::load(config.config_dir.join("voicemail.conf"))?;
    service_runtime::log_config_warnings(&conf.warnings);
    let server = GrpcServer::bind(NAME, &config.common).await?;
    let peers = [
        client_channel(&config.mailer_url)?,
        client_channel(&config.edge_url)?,
    ];
    Ok(Bound {
        server,
        conf,
        peers,
    })
}

impl Bound {
    pub fn info(&self) -> ServiceInfo {
        let mut info = self.server.info();
        let mailboxes: usize = self.conf.contexts.iter().map(|c| c.mailboxes.len()).sum();
        info.extra.push(("mailboxes".into(), mailboxes.to_string()));
        info
    }

    pub async fn run(self, shutdown: Shutdown) -> Result<(), Error> {
        self.server
            .serve_one(VoicemailServer::new(VoicemailApi), shutdown)
            .await?;
        Ok(())
    }
}

/// Loads, binds and serves until `shutdown`, then drains.
pub async fn run(config: Config, shutdown: Shutdown) -> Result<(), Error> {
    bind(config).await?.run(shutdown).await
}

/// `phone.voicemail.v1.Voicemail`.
struct VoicemailApi;

const ISSUE: u32 = 6;

#[tonic::async_trait]
impl Voicemail for VoicemailApi {
    type SessionEventsStream = Pin<Box<dyn Stream<Item = Result<SessionEvent, Status>> + Send>>;

    async fn start_session(
        &self,
        _: Request<StartSessionRequest>,
    ) -> Result<Response<StartSessionResponse>, Status> {
        Err(not_yet("Voicemail.StartSession", ISSUE))
    }

    async fn session_events(
        &self,
        _: Request<SessionEventsRequest>,
    ) -> Result<Response<Self::SessionEventsStream>, Status> {
        Err(not_yet("Voicemail.SessionEvents", ISSUE))
    }

    async fn stop_session(
        &self,
        _: Request<StopSessionRequest>,
    ) -> Result<Response<StopSessionResponse>, Status> {
        Err(not_yet("Voicemail.StopSession", ISSUE))
    }

    async fn mailbox_counts(
        &self,
        _: Request<MailboxCountsRequest>,
    ) -> Result<Response<MailboxCountsResponse>, Status> {
        Err(not_yet("Voicemail.MailboxCounts", ISSUE))
    }
}
