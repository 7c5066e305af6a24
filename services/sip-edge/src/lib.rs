//! `sip-edge`: the only component that speaks SIP. It owns the transports (UDP and TCP
//! on one port), the transactions of RFC 3261 §17, dialogs, the registrar and digest
//! auth, the carrier trunk, and the two B2BUA legs of every call; it asks `router` what
//! to do with a call (one call-control stream per channel), `media-relay` to anchor the
//! RTP, and serves `phone.edge.v1.Edge` (MWI updates, registrations) to the others.
//!
//! What runs today (issue #2): `sip.conf` is loaded and checked at start (a broken file
//! stops the process with `file:line: message`), the SIP port is bound on UDP and TCP
//! so a port conflict shows at start, and gRPC, health, metrics and drain run. SIP
//! messages are counted and not yet answered; the SIP stack is issue #4.

#![forbid(unsafe_code)]

pub mod digest;
#[doc(hidden)]
pub mod fuzzing;
pub mod registrar;
pub mod transaction;
pub mod wire;

use std::net::SocketAddr;
use std::path::PathBuf;

use asterisk_conf::sip::SipConf;
use phone_proto::edge::v1::edge_server::{Edge, EdgeServer};
use phone_proto::edge::v1::{
    ListRegistrationsRequest, ListRegistrationsResponse, MailboxUpdate, MailboxUpdateResponse,
};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use service_runtime::grpc::{client_channel, not_yet, TracedChannel};
use service_runtime::{CommonArgs, GrpcServer, ServiceInfo, Shutdown};
use tokio::net::{TcpListener, UdpSocket};
use tonic::{Request, Response, Status};

pub const NAME: &str = "sip-edge";

/// Settings; each flag is also a `PHONE_*` environment variable.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = NAME, version, about = "The SIP edge of the phone system")]
pub struct Config {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Directory holding sip.conf.
    #[arg(long, env = "PHONE_CONFIG_DIR", default_value = "/etc/phone")]
    pub config_dir: PathBuf,
    /// Where registrations are persisted.
    #[arg(long, env = "PHONE_DATA_DIR", default_value = "/var/lib/phone")]
    pub data_dir: PathBuf,
    /// SIP over UDP and TCP on this address.
    #[arg(long, env = "PHONE_SIP_BIND", default_value = "0.0.0.0:5060")]
    pub sip_bind: SocketAddr,
    /// The address put in Via, Contact and SDP (a public or node address); default: the
    /// bound address.
    #[arg(long, env = "PHONE_ADVERTISE_IP")]
    pub advertise_ip: Option<std::net::IpAddr>,
    #[arg(long, env = "PHONE_ROUTER_URL", default_value = "http://router:50051")]
    pub router_url: String,
    #[arg(
        long,
        env = "PHONE_MEDIA_RELAY_URL",
        default_value = "http://media-relay:50051"
    )]
    pub media_relay_url: String,
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
    #[error("cannot listen for SIP on {transport}/{addr}: {source}")]
    SipBind {
        transport: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// The edge with every socket bound, before it serves.
pub struct Bound {
    server: GrpcServer,
    sip: SipConf,
    udp: UdpSocket,
    tcp: TcpListener,
    /// Clients of the services the edge drives; used by the call path (issue #4).
    #[allow(dead_code)]
    peers: Peers,
    metrics: SipMetrics,
}

#[allow(dead_code)]
struct Peers {
    router: TracedChannel,
    media_relay: TracedChannel,
    voicemail: TracedChannel,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TransportLabel {
    transport: &'static str,
}

#[derive(Clone, Default)]
struct SipMetrics {
    received: Family<TransportLabel, Counter>,
}

/// Loads sip.conf and binds the SIP and gRPC ports.
pub async fn bind(config: Config) -> Result<Bound, Error> {
    let sip = asterisk_conf::sip::load(config.config_dir.join("sip.conf"))?;
    service_runtime::log_config_warnings(&sip.warnings);
    let mut server = GrpcServer::bind(NAME, &config.common).await?;
    let udp = UdpSocket::bind(config.sip_bind)
        .await
        .map_err(|source| Error::SipBind {
            transport: "udp",
            addr: config.sip_bind,
            source,
        })?;
    // TCP on the port UDP got, so that `:0` gives one port for both transports.
    let udp_addr = udp.local_addr().map_err(|source| Error::SipBind {
        transport: "udp",
        addr: config.sip_bind,
        source,
    })?;
    let tcp = TcpListener::bind(udp_addr)
        .await
        .map_err(|source| Error::SipBind {
            transport: "tcp",
            addr: udp_addr,
            source,
        })?;
    let metrics = SipMetrics::default();
    server.registry().register(
        "sip_messages_received",
        "SIP messages (UDP datagrams, TCP connections) received, by transport",
        metrics.received.clone(),
    );
    let peers = Peers {
        router: client_channel(&config.router_url)?,
        media_relay: client_channel(&config.media_relay_url)?,
        voicemail: client_channel(&config.voicemail_url)?,
    };
    Ok(Bound {
        server,
        sip,
        udp,
        tcp,
        peers,
        metrics,
    })
}

impl Bound {
    pub fn info(&self) -> ServiceInfo {
        let mut info = self.server.info();
        if let Ok(addr) = self.udp.local_addr() {
            info.extra.push(("sip".into(), format!("udp+tcp:{addr}")));
        }
        info.extra
            .push(("peers".into(), self.sip.peers.len().to_string()));
        info
    }

    pub async fn run(self, shutdown: Shutdown) -> Result<(), Error> {
        let Bound {
            server,
            udp,
            tcp,
            metrics,
            ..
        } = self;
        let in_flight = server.in_flight();
        in_flight.spawn(receive_udp(udp, metrics.clone(), shutdown.clone()));
        in_flight.spawn(accept_tcp(tcp, metrics, shutdown.clone()));
        server.serve_one(EdgeServer::new(EdgeApi), shutdown).await?;
        Ok(())
    }
}

/// Loads, binds and serves until `shutdown`, then drains.
pub async fn run(config: Config, shutdown: Shutdown) -> Result<(), Error> {
    bind(config).await?.run(shutdown).await
}

async fn receive_udp(socket: UdpSocket, metrics: SipMetrics, shutdown: Shutdown) {
    let mut buffer = vec![0u8; 65_535];
    let counter = metrics
        .received
        .get_or_create(&TransportLabel { transport: "udp" })
        .clone();
    loop {
        tokio::select! {
            _ = shutdown.triggered() => return,
            received = socket.recv_from(&mut buffer) => match received {
                Ok((len, from)) => {
                    counter.inc();
                    tracing::debug!(%from, len, "SIP datagram received; the SIP stack is not in this build (issue #4)");
                }
                Err(e) => tracing::debug!(error = %e, "SIP UDP receive error"),
            }
        }
    }
}

async fn accept_tcp(listener: TcpListener, metrics: SipMetrics, shutdown: Shutdown) {
    let counter = metrics
        .received
        .get_or_create(&TransportLabel { transport: "tcp" })
        .clone();
    loop {
        tokio::select! {
            _ = shutdown.triggered() => return,
            accepted = listener.accept() => match accepted {
                // Closed at once: a peer sees a refused stream rather than a hang.
                Ok((_stream, from)) => {
                    counter.inc();
                    tracing::debug!(%from, "SIP TCP connection closed; the SIP stack is not in this build (issue #4)");
                }
                Err(e) => tracing::debug!(error = %e, "SIP TCP accept error"),
            }
        }
    }
}

/// `phone.edge.v1.Edge`.
struct EdgeApi;

#[tonic::async_trait]
impl Edge for EdgeApi {
    async fn update_mailbox(
        &self,
        _request: Request<MailboxUpdate>,
    ) -> Result<Response<MailboxUpdateResponse>, Status> {
        Err(not_yet("Edge.UpdateMailbox (MWI NOTIFY)", 4))
    }

    async fn list_registrations(
        &self,
        _request: Request<ListRegistrationsRequest>,
    ) -> Result<Response<ListRegistrationsResponse>, Status> {
        Err(not_yet("Edge.ListRegistrations", 4))
    }
}
