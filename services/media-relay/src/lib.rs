//! `media-relay`: the RTP/RTCP forwarder in the middle of every call (`canreinvite=no`).
//! The edge creates a session per call over gRPC (`phone.media.v1.MediaRelay`), gets a
//! port pair per leg from the configured range, and tells the relay where each leg's
//! far end is; the relay latches, forwards, times out silent calls and keeps per-leg
//! statistics. Many replicas run, one chosen per call.
//!
//! What runs today (issue #2): the port range and addresses are checked at start, and
//! the gRPC API, health, metrics and drain run. Forwarding is issue #5; until then the
//! session RPCs answer UNIMPLEMENTED.

#![forbid(unsafe_code)]

use std::net::IpAddr;
use std::pin::Pin;

use futures::Stream;
use phone_proto::media::v1::media_relay_server::{MediaRelay, MediaRelayServer};
use phone_proto::media::v1::{
    CreateSessionRequest, DeleteSessionRequest, GetStatsRequest, ListSessionsRequest,
    ListSessionsResponse, RedirectLegRequest, Session, SessionEvent, SessionStats,
    UpdateLegRequest, WatchEventsRequest,
};
use service_runtime::grpc::not_yet;
use service_runtime::settings::PortRange;
use service_runtime::{CommonArgs, GrpcServer, ServiceInfo, Shutdown};
use tonic::{Request, Response, Status};

pub const NAME: &str = "media-relay";

/// Settings; each flag is also a `PHONE_*` environment variable.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = NAME, version, about = "The media relay of the phone system")]
pub struct Config {
    #[command(flatten)]
    pub common: CommonArgs,
    /// RTP ports, LOW-HIGH: RTP on even ports, RTCP on the odd one after.
    #[arg(long, env = "PHONE_RTP_PORTS", default_value = "10000-20000")]
    pub rtp_ports: PortRange,
    /// The address RTP sockets bind to.
    #[arg(long, env = "PHONE_RTP_BIND_IP", default_value = "0.0.0.0")]
    pub rtp_bind_ip: IpAddr,
    /// The address advertised in SDP (the node's or a public IP); default: the bind
    /// address, or 127.0.0.1 when that is unspecified.
    #[arg(long, env = "PHONE_ADVERTISE_IP")]
    pub advertise_ip: Option<IpAddr>,
}

impl Config {
    /// The address phones and carriers are told to send RTP to.
    pub fn advertised_ip(&self) -> IpAddr {
        match self.advertise_ip {
            Some(ip) => ip,
            None if self.rtp_bind_ip.is_unspecified() => IpAddr::from([127, 0, 0, 1]),
            None => self.rtp_bind_ip,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Runtime(#[from] service_runtime::Error),
    #[error("--advertise-ip {0} is not an address peers can send to")]
    UnusableAdvertiseIp(IpAddr),
}

/// The relay with its gRPC port bound.
pub struct Bound {
    server: GrpcServer,
    config: Config,
}

/// Checks the settings and binds the gRPC port.
pub async fn bind(config: Config) -> Result<Bound, Error> {
    let advertised = config.advertised_ip();
    if advertised.is_unspecified() || advertised.is_multicast() {
        return Err(Error::UnusableAdvertiseIp(advertised));
    }
    let server = GrpcServer::bind(NAME, &config.common).await?;
    Ok(Bound { server, config })
}

impl Bound {
    pub fn info(&self) -> ServiceInfo {
        let mut info = self.server.info();
        info.extra.push((
            "rtp".into(),
            format!("{}:{}", self.config.rtp_bind_ip, self.config.rtp_ports),
        ));
        info.extra
            .push(("advertise".into(), self.config.advertised_ip().to_string()));
        info
    }

    pub async fn run(self, shutdown: Shutdown) -> Result<(), Error> {
        self.server
            .serve_one(MediaRelayServer::new(Relay), shutdown)
            .await?;
        Ok(())
    }
}

/// Checks, binds and serves until `shutdown`, then drains.
pub async fn run(config: Config, shutdown: Shutdown) -> Result<(), Error> {
    bind(config).await?.run(shutdown).await
}

/// `phone.media.v1.MediaRelay`.
struct Relay;

const ISSUE: u32 = 5;

#[tonic::async_trait]
impl MediaRelay for Relay {
    type WatchEventsStream = Pin<Box<dyn Stream<Item = Result<SessionEvent, Status>> + Send>>;

    async fn create_session(
        &self,
        _: Request<CreateSessionRequest>,
    ) -> Result<Response<Session>, Status> {
        Err(not_yet("MediaRelay.CreateSession", ISSUE))
    }

    async fn update_leg(&self, _: Request<UpdateLegRequest>) -> Result<Response<Session>, Status> {
        Err(not_yet("MediaRelay.UpdateLeg", ISSUE))
    }

    async fn redirect_leg(
        &self,
        _: Request<RedirectLegRequest>,
    ) -> Result<Response<Session>, Status> {
        Err(not_yet("MediaRelay.RedirectLeg", ISSUE))
    }

    async fn delete_session(
        &self,
        _: Request<DeleteSessionRequest>,
    ) -> Result<Response<SessionStats>, Status> {
        Err(not_yet("MediaRelay.DeleteSession", ISSUE))
    }

    async fn get_stats(
        &self,
        _: Request<GetStatsRequest>,
    ) -> Result<Response<SessionStats>, Status> {
        Err(not_yet("MediaRelay.GetStats", ISSUE))
    }

    async fn list_sessions(
        &self,
        _: Request<ListSessionsRequest>,
    ) -> Result<Response<ListSessionsResponse>, Status> {
        Err(not_yet("MediaRelay.ListSessions", ISSUE))
    }

    async fn watch_events(
        &self,
        _: Request<WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        Err(not_yet("MediaRelay.WatchEvents", ISSUE))
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    #[test]
    fn bad_port_ranges_are_refused_by_the_flag_parser() {
        let err = super::Config::try_parse_from(["media-relay", "--rtp-ports", "20000-10000"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("the low port is above the high port"), "{err}");
    }
}
