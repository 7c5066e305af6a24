//! `mailer`: turns each new voicemail into an email the way Asterisk's app_voicemail
//! builds it from `voicemail.conf` (`serveremail`, `emailsubject`, `emailbody`,
//! `emaildateformat`, the recording attached per `attach=`), and sends it over SMTP
//! from a durable outbox with retries, so that no message is lost and none is sent
//! twice. Deliveries arrive over `phone.mailer.v1.Mailer`.
//!
//! What runs today: `voicemail.conf` is loaded and checked at start (a broken file stops
//! the process with `file:line: message`); the gRPC API, health, metrics and drain run.
//! [`compose`] builds the email as app_voicemail does and [`smtp`] sends it with
//! `lettre`; the durable outbox that joins them to the RPCs is the rest of issue #7,
//! and until it lands the RPCs answer UNIMPLEMENTED.

#![forbid(unsafe_code)]

pub mod compose;
pub mod smtp;

use std::path::PathBuf;

use asterisk_conf::voicemail::VoicemailConf;
use phone_proto::mailer::v1::mailer_server::{Mailer, MailerServer};
use phone_proto::mailer::v1::{
    DeliverRequest, Delivery, GetDeliveryRequest, ListPendingRequest, ListPendingResponse,
};
use service_runtime::grpc::not_yet;
use service_runtime::{CommonArgs, GrpcServer, ServiceInfo, Shutdown};
use tonic::{Request, Response, Status};

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
    /// Local state (the outbox when no S3 bucket is configured).
    #[arg(long, env = "PHONE_DATA_DIR", default_value = "/var/lib/phone")]
    pub data_dir: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] asterisk_conf::Error),
    #[error(transparent)]
    Runtime(#[from] service_runtime::Error),
}

/// The mailer with its configuration loaded and its port bound.
pub struct Bound {
    server: GrpcServer,
    conf: VoicemailConf,
}

/// Loads voicemail.conf and binds the gRPC port.
pub async fn bind(config: Config) -> Result<Bound, Error> {
    let conf = asterisk_conf::voicemail::load(config.config_dir.join("voicemail.conf"))?;
    service_runtime::log_config_warnings(&conf.warnings);
    let server = GrpcServer::bind(NAME, &config.common).await?;
    Ok(Bound { server, conf })
}

impl Bound {
    pub fn info(&self) -> ServiceInfo {
        let mut info = self.server.info();
        info.extra
            .push(("from".into(), self.conf.general.server_email.clone()));
        info
    }

    pub async fn run(self, shutdown: Shutdown) -> Result<(), Error> {
        self.server
            .serve_one(MailerServer::new(MailerApi), shutdown)
            .await?;
        Ok(())
    }
}

/// Loads, binds and serves until `shutdown`, then drains.
pub async fn run(config: Config, shutdown: Shutdown) -> Result<(), Error> {
    bind(config).await?.run(shutdown).await
}

/// `phone.mailer.v1.Mailer`.
struct MailerApi;

const ISSUE: u32 = 7;

#[tonic::async_trait]
impl Mailer for MailerApi {
    async fn deliver(&self, _: Request<DeliverRequest>) -> Result<Response<Delivery>, Status> {
        Err(not_yet("Mailer.Deliver", ISSUE))
    }

    async fn get_delivery(
        &self,
        _: Request<GetDeliveryRequest>,
    ) -> Result<Response<Delivery>, Status> {
        Err(not_yet("Mailer.GetDelivery", ISSUE))
    }

    async fn list_pending(
        &self,
        _: Request<ListPendingRequest>,
    ) -> Result<Response<ListPendingResponse>, Status> {
        Err(not_yet("Mailer.ListPending", ISSUE))
    }
}
