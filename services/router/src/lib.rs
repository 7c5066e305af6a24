//! `router`: the dialplan. It reads Asterisk's `extensions.conf` and, for every channel
//! the edge opens a call-control stream for (`phone.router.v1.CallControl/Run`), runs
//! the dialplan from the channel's context and extension, sending commands (dial,
//! answer, connect to voicemail, hang up) and reacting to what the edge reports. It is
//! stateless between calls, so it scales to any number of replicas.
//!
//! What runs today (issue #2): `extensions.conf` is loaded into the dialplan AST and
//! checked at start (a broken file stops the process with `file:line: message`); the
//! gRPC API, health, metrics and drain run. The interpreter is issue #3; until then
//! `Run` answers UNIMPLEMENTED.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::pin::Pin;

use asterisk_conf::extensions::Dialplan;
use futures::Stream;
use phone_proto::router::v1::call_control_server::{CallControl, CallControlServer};
use phone_proto::router::v1::{ChannelEvent, DialplanCommand};
use service_runtime::grpc::{client_channel, not_yet, TracedChannel};
use service_runtime::{CommonArgs, GrpcServer, ServiceInfo, Shutdown};
use tonic::{Request, Response, Status, Streaming};

pub const NAME: &str = "router";

/// Settings; each flag is also a `PHONE_*` environment variable.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = NAME, version, about = "The dialplan router of the phone system")]
pub struct Config {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Directory holding extensions.conf.
    #[arg(long, env = "PHONE_CONFIG_DIR", default_value = "/etc/phone")]
    pub config_dir: PathBuf,
    #[arg(long, env = "PHONE_EDGE_URL", default_value = "http://sip-edge:50051")]
    pub edge_url: String,
    #[arg(
        long,
        env = "PHONE_VOICEMAIL_URL",
        default_value = "http://voicemail:50051"
    )]
    pub voicemail_url: String,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] asterisk_conf::Error),
    #[error(transparent)]
    Runtime(#[from] service_runtime::Error),
}

/// The router with its dialplan loaded and its port bound.
pub struct Bound {
    server: GrpcServer,
    dialplan: Dialplan,
    /// Clients for VoiceMail()/VoiceMailMain() and the edge; used by issue #3.
    #[allow(dead_code)]
    peers: [TracedChannel; 2],
}

/// Loads extensions.conf and binds the gRPC port.
pub async fn bind(config: Config) -> Result<Bound, Error> {
    let dialplan = asterisk_conf::extensions::load(config.config_dir.join("extensions.conf"))?;
    service_runtime::log_config_warnings(&dialplan.warnings);
    let server = GrpcServer::bind(NAME, &config.common).await?;
    let peers = [
        client_channel(&config.edge_url)?,
        client_channel(&config.voicemail_url)?,
    ];
    Ok(Bound {
        server,
        dialplan,
        peers,
    })
}

impl Bound {
    pub fn info(&self) -> ServiceInfo {
        let mut info = self.server.info();
        info.extra
            .push(("contexts".into(), self.dialplan.contexts.len().to_string()));
        info
    }

    pub async fn run(self, shutdown: Shutdown) -> Result<(), Error> {
        self.server
            .serve_one(CallControlServer::new(Router), shutdown)
            .await?;
        Ok(())
    }
}

/// Loads, binds and serves until `shutdown`, then drains.
pub async fn run(config: Config, shutdown: Shutdown) -> Result<(), Error> {
    bind(config).await?.run(shutdown).await
}

/// `phone.router.v1.CallControl`.
struct Router;

#[tonic::async_trait]
impl CallControl for Router {
    type RunStream = Pin<Box<dyn Stream<Item = Result<DialplanCommand, Status>> + Send>>;

    async fn run(
        &self,
        _request: Request<Streaming<ChannelEvent>>,
    ) -> Result<Response<Self::RunStream>, Status> {
        Err(not_yet("CallControl.Run (the dialplan interpreter)", 3))
    }
}
