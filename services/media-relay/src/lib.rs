//! `media-relay`: the RTP/RTCP forwarder in the middle of every call (`canreinvite=no`).
//! The edge creates a session per call over gRPC (`phone.media.v1.MediaRelay`), gets a
//! port pair per leg from the configured range, and tells the relay where each leg's
//! far end is; the relay latches, forwards, times out silent calls and keeps per-leg
//! statistics. Many replicas run, one chosen per call.
//!
//! Layers, bottom up:
//! - [`rtp`]: the RTP and RTCP header bytes the relay reads (payloads are untouched);
//! - [`stats`]: RFC 3550 receiver statistics (loss, jitter) on time given as input;
//! - [`session`]: one call's two legs as a state machine without IO (latching, the
//!   forwarding verdict, timeouts), tested on simulated time;
//! - [`ports`]: the even/odd port pair pool;
//! - [`probe`]: the exec probe of a relay whose ports are not fixed;
//! - `worker`: one thread per core, each owning its sessions' sockets (no lock per
//!   packet);
//! - `control`: the gRPC service, which places sessions on workers.

#![forbid(unsafe_code)]

mod control;
pub mod fuzzing;
mod metrics;
pub mod ports;
pub mod probe;
pub mod rtp;
pub mod session;
pub mod stats;
mod worker;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use phone_kube::endpoints::OwnSlice;
use phone_proto::media::v1::media_relay_server::MediaRelayServer;
use service_runtime::server::Listeners;
use service_runtime::settings::{parse_duration, PortRange};
use service_runtime::{CommonArgs, GrpcServer, ServiceInfo, Shutdown};

/// How often a published relay writes its EndpointSlice again.
const SLICE_REFRESH: Duration = Duration::from_secs(30);

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
    /// Forwarding threads; 0 means one per core the process may run on.
    #[arg(long, env = "PHONE_WORKERS", default_value_t = 0)]
    pub workers: usize,
    /// A leg that sends no RTP for this long ends the call (Asterisk's rtptimeout).
    #[arg(long, env = "PHONE_MEDIA_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub media_timeout: Duration,
    /// The same while the call is on hold (Asterisk's rtpholdtimeout); also the
    /// longest a session may wait to be set up.
    #[arg(long, env = "PHONE_HOLD_TIMEOUT", default_value = "1h", value_parser = parse_duration)]
    pub hold_timeout: Duration,
    /// How many relays may share this host's network (pods on a node's network): this
    /// one takes the first slot `k` below this whose gRPC and admin ports (those of
    /// --grpc-bind and --admin-bind, plus `k`) are free. RTP ports need no slot: each
    /// relay skips the pairs another holds.
    #[arg(long, env = "PHONE_PORT_SLOTS", default_value_t = 1)]
    pub port_slots: u16,
    /// Publish this relay in the EndpointSlices of this Service (one without a
    /// selector) with a slice of its own, owned by its pod: the advertised address, the
    /// ports it took, ready while it serves and terminating while it drains. With
    /// --port-slots the ports differ from pod to pod, which a selector cannot say.
    #[arg(
        long,
        env = "PHONE_PUBLISH_SERVICE",
        requires_all = ["kube_namespace", "pod_name", "pod_uid"]
    )]
    pub publish_service: Option<String>,
    /// The namespace of --publish-service.
    #[arg(long, env = "PHONE_KUBE_NAMESPACE")]
    pub kube_namespace: Option<String>,
    /// This relay's pod (its slice's name and owner).
    #[arg(long, env = "PHONE_POD_NAME")]
    pub pod_name: Option<String>,
    /// The uid of --pod-name.
    #[arg(long, env = "PHONE_POD_UID")]
    pub pod_uid: Option<String>,
    /// Write the gRPC and admin addresses taken to this file (`grpc=IP:PORT` and
    /// `admin=IP:PORT` lines), for `media-relay probe` and operators.
    #[arg(long, env = "PHONE_ADDRESS_FILE")]
    pub address_file: Option<std::path::PathBuf>,
}

impl Config {
    /// Every setting at its default, with RTP on 127.0.0.1 in `rtp_ports` and gRPC and
    /// admin on loopback ephemeral ports: for `phone` and tests, which then set what
    /// they need.
    pub fn loopback(rtp_ports: PortRange) -> Self {
        Self {
            common: CommonArgs::loopback(),
            rtp_ports,
            rtp_bind_ip: IpAddr::from([127, 0, 0, 1]),
            advertise_ip: None,
            workers: 0,
            media_timeout: Duration::from_secs(60),
            hold_timeout: Duration::from_secs(3600),
            port_slots: 1,
            publish_service: None,
            kube_namespace: None,
            pod_name: None,
            pod_uid: None,
            address_file: None,
        }
    }

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
    #[error("cannot start a forwarding worker: {0}")]
    Worker(#[source] std::io::Error),
    #[error("no Kubernetes API client for --publish-service: {0}")]
    Kube(#[source] kube::Error),
    #[error("cannot write --address-file {path}: {source}")]
    AddressFile {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

/// The relay with its gRPC port bound and its workers running.
pub struct Bound {
    server: GrpcServer,
    config: Config,
    control: control::Control,
    own_slice: Option<OwnSlice>,
}

/// Checks the settings, binds the gRPC port and starts the forwarding workers.
pub async fn bind(config: Config) -> Result<Bound, Error> {
    let advertised = config.advertised_ip();
    if advertised.is_unspecified() || advertised.is_multicast() {
        return Err(Error::UnusableAdvertiseIp(advertised));
    }
    let mut common = config.common.clone();
    if config.port_slots > 1 && common.handed_over.is_none() {
        let (listeners, slot) =
            Listeners::bind_first_free(common.grpc_bind, common.admin_bind, config.port_slots)?;
        tracing::info!(
            slot,
            grpc = %listeners.grpc_addr(),
            admin = %listeners.admin_addr(),
            "took a port slot on this host"
        );
        common.handed_over = Some(listeners);
    }
    let mut server = GrpcServer::bind(NAME, &common).await?;
    let info = server.info();
    if let Some(path) = &config.address_file {
        let text = format!("grpc={}\nadmin={}\n", info.grpc, info.admin);
        std::fs::write(path, text).map_err(|source| Error::AddressFile {
            path: path.clone(),
            source,
        })?;
    }
    let own_slice = match (
        &config.publish_service,
        &config.kube_namespace,
        &config.pod_name,
        &config.pod_uid,
    ) {
        (Some(service), Some(namespace), Some(pod), Some(uid)) => {
            let client = kube::Client::try_default().await.map_err(Error::Kube)?;
            Some(OwnSlice::new(
                client,
                namespace,
                service,
                pod,
                uid,
                advertised,
                vec![
                    ("grpc".into(), info.grpc.port()),
                    ("admin".into(), info.admin.port()),
                ],
            ))
        }
        _ => None,
    };
    // Sessions are in-flight work: a draining relay keeps its API up until they end.
    server.accept_while_draining();
    let metrics = metrics::Metrics::register(server.registry());
    let pool = ports::PortPool::new(config.rtp_ports);
    metrics.free_port_pairs.set(pool.free() as i64);
    let shared = Arc::new(worker::Shared {
        advertise_ip: advertised,
        ports: Mutex::new(pool),
        index: Mutex::new(HashMap::new()),
        events: tokio::sync::broadcast::channel(4096).0,
    });
    let count = match config.workers {
        0 => std::thread::available_parallelism().map_or(1, usize::from),
        n => n,
    };
    let workers = (0..count)
        .map(|n| worker::Handle::spawn(n, shared.clone(), metrics.worker(n)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(Error::Worker)?;
    let control = control::Control {
        shared,
        workers: Arc::new(workers),
        bind_ip: config.rtp_bind_ip,
        timeouts: session::Timeouts {
            media: config.media_timeout,
            hold: config.hold_timeout,
        },
        metrics,
        draining: Arc::new(AtomicBool::new(false)),
        in_flight: server.in_flight(),
    };
    Ok(Bound {
        server,
        config,
        control,
        own_slice,
    })
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
        info.extra
            .push(("workers".into(), self.control.workers.len().to_string()));
        info
    }

    /// Serves until `shutdown`; then refuses new sessions, keeps forwarding the existing
    /// ones until they are deleted or the drain deadline passes, and stops the workers.
    pub async fn run(self, shutdown: Shutdown) -> Result<(), Error> {
        let Bound {
            server,
            control,
            own_slice,
            ..
        } = self;
        let draining = control.draining.clone();
        let watch = shutdown.clone();
        tokio::spawn(async move {
            watch.triggered().await;
            draining.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        let publisher = own_slice.clone().map(|slice| {
            let shutdown = shutdown.clone();
            tokio::spawn(async move { slice.publish_until(shutdown, SLICE_REFRESH).await })
        });
        let workers = control.workers.clone();
        let served = server
            .serve_one(MediaRelayServer::new(control), shutdown)
            .await;
        let _ = tokio::task::spawn_blocking(move || workers.iter().for_each(|w| w.stop())).await;
        if let Some(slice) = own_slice {
            // Its sessions have ended (or the deadline passed): no reader should poll
            // a relay that is about to exit.
            if let Some(publisher) = publisher {
                publisher.abort();
            }
            match tokio::time::timeout(Duration::from_secs(5), slice.delete()).await {
                Ok(Ok(())) => tracing::info!("own EndpointSlice removed"),
                Ok(Err(e)) => tracing::warn!(error = %e, "cannot remove own EndpointSlice (its pod's deletion will)"),
                Err(_) => tracing::warn!("the API did not answer the removal of the own EndpointSlice (its pod's deletion will)"),
            }
        }
        served?;
        Ok(())
    }
}

/// Checks, binds and serves until `shutdown`, then drains.
pub async fn run(config: Config, shutdown: Shutdown) -> Result<(), Error> {
    bind(config).await?.run(shutdown).await
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
