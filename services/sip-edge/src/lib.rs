//! `sip-edge`: the only component that speaks SIP. It owns the transports (UDP and TCP
//! on one port), the transactions of RFC 3261 §17, dialogs, the registrar and digest
//! auth, the carrier trunk, and the two B2BUA legs of every call; it asks `router` what
//! to do with a call (one call-control stream per channel), `media-relay` to anchor the
//! RTP, and serves `phone.edge.v1.Edge` (MWI updates, registrations) to the others.
//!
//! Layers: the parsing front line ([`wire`]); transactions as sans-IO state machines
//! ([`transaction`]); the registrar with digest auth ([`registrar`], [`digest`]),
//! `qualify` ([`qualify`]), provider registrations ([`outbound`]) and the security
//! floor ([`guard`]); SDP offer/answer anchored at the relay ([`sdp`]) and `Dial()`
//! forking ([`fork`]); the sans-IO endpoint with the calls' SIP side ([`endpoint`], in `sip-core`) and
//! its driver, which owns the sockets, the disk and the clock ([`driver`]); the task per
//! call that talks to the router and the relay ([`b2bua`]); and the choice of relay
//! ([`relays`]). `sip.conf` is loaded and checked at start: a broken file stops the
//! process with `file:line: message`. On Kubernetes, lines and trunks may also come
//! from `Line` and `Trunk` resources, applied live ([`resources`], [`trunks`]); one
//! edge of several registers the trunks, by Lease (`phone_kube::lease`); relays are found in
//! EndpointSlices ([`discovery`]).

#![forbid(unsafe_code)]

pub use sip_core::endpoint;
pub use sip_core::{error, fork, guard, outbound, qualify, registrar, transaction};
pub use sip_wire::{digest, fuzzing, sdp, wire};

pub mod b2bua;
pub mod discovery;
pub mod driver;
pub mod journal;
pub mod relays;
pub mod resources;
pub mod trunks;

use std::net::SocketAddr;
use std::path::PathBuf;

use std::sync::Arc;

use asterisk_conf::sip::{Host, SipConf};
use phone_proto::edge::v1::edge_server::{Edge, EdgeServer};
use phone_proto::edge::v1::{
    ListRegistrationsRequest, ListRegistrationsResponse, MailboxUpdate, MailboxUpdateResponse,
    Registration,
};
use registrar::{Line, Registrar, RegistrarConfig};
use service_runtime::balance::Balanced;
use service_runtime::grpc::{client_channel, TracedChannel};
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
    /// Digest algorithms to challenge with, in order of preference: MD5 (as chan_sip),
    /// or SHA-256,MD5 (RFC 8760) for phones that accept it.
    #[arg(long, env = "PHONE_AUTH_ALGORITHMS", default_value = "MD5")]
    pub auth_algorithms: Algorithms,
    /// Requests per second a source address may send, sustained.
    #[arg(long, env = "PHONE_RATE_LIMIT", default_value_t = 50.0)]
    pub rate_limit: f64,
    /// Requests a source address may send at once.
    #[arg(long, env = "PHONE_RATE_BURST", default_value_t = 100.0)]
    pub rate_burst: f64,
    /// Failed authentications within --ban-window that ban a source address.
    #[arg(long, env = "PHONE_BAN_FAILURES", default_value_t = 5)]
    pub ban_failures: u32,
    #[arg(long, env = "PHONE_BAN_WINDOW", default_value = "60s", value_parser = service_runtime::settings::parse_duration)]
    pub ban_window: std::time::Duration,
    #[arg(long, env = "PHONE_BAN_TIME", default_value = "10m", value_parser = service_runtime::settings::parse_duration)]
    pub ban_time: std::time::Duration,
    /// Numbers whose calls no limit or ban ever refuses.
    #[arg(
        long,
        env = "PHONE_EMERGENCY_NUMBERS",
        default_value = "911",
        value_delimiter = ','
    )]
    pub emergency_numbers: Vec<String>,
    #[arg(long, env = "PHONE_ROUTER_URL", default_value = "http://router:50051")]
    pub router_url: String,
    /// Media relays, comma-separated; a name stands for every address it resolves to
    /// (a Kubernetes headless Service), re-resolved every few seconds.
    #[arg(
        long,
        env = "PHONE_MEDIA_RELAYS",
        default_value = "http://media-relay:50051",
        value_delimiter = ','
    )]
    pub media_relays: Vec<String>,
    #[arg(
        long,
        env = "PHONE_VOICEMAIL_URL",
        default_value = "http://voicemail:50051"
    )]
    pub voicemail_url: String,
    /// Watch `Line` and `Trunk` resources in this Kubernetes namespace and use them beside sip.conf
    /// (the chart sets the pod's own). The API server and credentials come from the
    /// pod's service account, or from KUBECONFIG.
    #[arg(long, env = "PHONE_KUBE_NAMESPACE")]
    pub kube_namespace: Option<String>,
    /// Register the `register =>` lines and registering Trunks only while holding this
    /// Lease (in --kube-namespace), so that of several edges exactly one registers.
    #[arg(long, env = "PHONE_TRUNK_LEASE", requires = "kube_namespace")]
    pub trunk_lease: Option<String>,
    /// How long the trunk's Lease lasts without renewal: the failover time.
    #[arg(long, env = "PHONE_TRUNK_LEASE_DURATION", default_value = "15s", value_parser = service_runtime::settings::parse_duration)]
    pub trunk_lease_duration: std::time::Duration,
    /// Find the media relays through the EndpointSlices of this Service (in
    /// --kube-namespace; ready endpoints only) instead of --media-relays.
    #[arg(long, env = "PHONE_MEDIA_RELAY_SERVICE", requires = "kube_namespace")]
    pub media_relay_service: Option<String>,
    /// Spread the calls over the ready routers of this Service (in --kube-namespace,
    /// from its EndpointSlices), each call's stream on the pod it started on, instead
    /// of one connection to --router-url (which goes to one pod whatever the replicas).
    #[arg(long, env = "PHONE_ROUTER_SERVICE", requires = "kube_namespace")]
    pub router_service: Option<String>,
    /// This replica's name in the Lease: the pod's name (default: the host name).
    #[arg(long, env = "PHONE_POD_NAME")]
    pub pod_name: Option<String>,
    /// SIP endpoints to spread calls and registrations over (by Call-ID, REGISTERs by
    /// line), each with its own lock and timers; 0: one per core.
    #[arg(long, env = "PHONE_SIP_SHARDS", default_value_t = 0)]
    pub sip_shards: usize,
    /// Keep answered calls across a restart: their dialogs are written to the data
    /// directory, the next edge takes them over, and the drain deadline hands them
    /// over instead of hanging them up. `false`: a restart or the deadline ends them,
    /// as Asterisk does.
    #[arg(long, env = "PHONE_KEEP_CALLS", default_value_t = true, action = clap::ArgAction::Set)]
    pub keep_calls: bool,
}

impl Config {
    /// Every setting at its default, SIP and gRPC on loopback ephemeral ports: for
    /// `phone` and tests, which then set what they need.
    pub fn loopback(config_dir: PathBuf, data_dir: PathBuf) -> Self {
        Self {
            common: CommonArgs::loopback(),
            config_dir,
            data_dir,
            sip_bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            advertise_ip: None,
            auth_algorithms: Algorithms(vec![digest::Algorithm::Md5]),
            rate_limit: 50.0,
            rate_burst: 100.0,
            ban_failures: 5,
            ban_window: std::time::Duration::from_secs(60),
            ban_time: std::time::Duration::from_secs(600),
            emergency_numbers: vec!["911".into()],
            router_url: "http://127.0.0.1:9".into(),
            media_relays: Vec::new(),
            voicemail_url: "http://127.0.0.1:9".into(),
            kube_namespace: None,
            trunk_lease: None,
            trunk_lease_duration: std::time::Duration::from_secs(15),
            pod_name: None,
            media_relay_service: None,
            router_service: None,
            sip_shards: 0,
            keep_calls: true,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] asterisk_conf::Error),
    #[error(transparent)]
    Runtime(#[from] service_runtime::Error),
    #[error("cannot prepare {}: {source}", path.display())]
    DataDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Relays(#[from] relays::RelayError),
    #[error("cannot reach the Kubernetes API server (in-cluster or KUBECONFIG): {0}")]
    Kube(#[from] kube::Error),
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
    advertise_ip: Option<std::net::IpAddr>,
    sip: SipConf,
    tcp: TcpListener,
    edge: Arc<driver::Driver>,
    /// The namespace whose `Line`s and `Trunk`s the edge uses, and its API client.
    kube: Option<(kube::Client, String)>,
    /// This replica's name (the pod's), in the Lease and the trunks' status.
    identity: String,
    /// The trunk's Lease: its name and timing.
    lease: Option<(String, phone_kube::lease::Timing)>,
    /// The Service whose EndpointSlices list the relays.
    relay_service: Option<String>,
    router_service: Option<String>,
    /// How long a drain lets calls run before it ends them.
    drain_deadline: std::time::Duration,
    /// The names of this run's relay sessions.
    sessions: b2bua::Sessions,
    /// The answered calls kept from before a restart.
    restore: Vec<endpoint::CallRecord>,
    /// Clients of the services the edge drives; used by the call path (issue #4).
    #[allow(dead_code)]
    peers: Peers,
}

#[allow(dead_code)]
struct Peers {
    router: Balanced,
    media_relays: relays::RelayPool,
    voicemail: TracedChannel,
}

/// `MD5` or `SHA-256,MD5`: digest algorithms in order of preference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Algorithms(pub Vec<digest::Algorithm>);

impl std::str::FromStr for Algorithms {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        text.split(',')
            .map(|a| {
                digest::Algorithm::parse(a.trim())
                    .ok_or_else(|| format!("'{}' is not MD5 or SHA-256", a.trim()))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Algorithms)
    }
}

/// The trunks (peers with a `host`), their hosts resolved through DNS (A and AAAA
/// records). Their addresses are never rate-limited or banned; a name that does not
/// resolve is logged and that trunk is not recognised by address.
async fn trunks(sip: &SipConf) -> Vec<endpoint::Trunk> {
    let mut out = Vec::new();
    for peer in &sip.peers {
        let Host::Static(host) = &peer.host else {
            continue;
        };
        match tokio::net::lookup_host((host.as_str(), peer.port.unwrap_or(5060))).await {
            Ok(addrs) => out.push(endpoint::Trunk {
                name: peer.name.clone(),
                addrs: addrs.collect(),
                any_port: peer.insecure.port,
                no_challenge: peer.insecure.invite,
                nets: Vec::new(),
            }),
            Err(e) => {
                tracing::warn!(peer = %peer.name, host = %host, error = %e, "cannot resolve the trunk's host; it is not recognised by address")
            }
        }
    }
    out
}

/// What calls need of each peer: codecs, NAT, context, a trunk's address and
/// credentials.
fn peer_infos(sip: &SipConf, trunks: &[endpoint::Trunk]) -> Vec<endpoint::PeerInfo> {
    sip.peers
        .iter()
        .map(|p| endpoint::PeerInfo {
            name: p.name.clone(),
            codecs: p.codecs.clone(),
            nat: p.nat.is_on(),
            context: p.context.clone(),
            trunk: trunks
                .iter()
                .find(|t| t.name == p.name)
                .and_then(|t| t.addrs.iter().find(|a| a.is_ipv4()).or(t.addrs.first()))
                .copied(),
            host: match &p.host {
                Host::Static(host) => Some(host.clone()),
                Host::Dynamic => None,
            },
            username: p.username.clone().or_else(|| p.default_user.clone()),
            secret: p.secret.as_ref().map(|s| s.expose().to_owned()),
            from_user: p.from_user.clone(),
            from_domain: p.from_domain.clone(),
            caller_id: p
                .caller_id
                .as_ref()
                .map(|c| (c.number.clone(), c.name.clone())),
            location: None,
        })
        .collect()
}

/// The `register =>` lines, their hosts resolved through DNS (A and AAAA records). A
/// host that does not resolve is logged and its line skipped.
async fn outbound_registrations(
    sip: &SipConf,
) -> Vec<(outbound::OutboundRegistration, SocketAddr)> {
    let mut out = Vec::new();
    for (index, line) in sip.registrations.iter().enumerate() {
        let target = tokio::net::lookup_host((line.host.as_str(), line.port.unwrap_or(5060)))
            .await
            .ok()
            .and_then(|mut addrs| addrs.find(|a| a.is_ipv4()).or_else(|| addrs.next()));
        let Some(target) = target else {
            tracing::warn!(host = %line.host, at = %line.location, "cannot resolve the register => host; not registering");
            continue;
        };
        let registration = outbound::OutboundRegistration::fresh(line, &index.to_string());
        out.push((registration, target));
    }
    out
}

/// `box@context` -> the lines whose `mailbox=` names it (`box` alone is `box@default`).
fn mwi_lines(sip: &SipConf) -> std::collections::HashMap<String, Vec<String>> {
    let mut map: std::collections::HashMap<String, Vec<String>> = std::collections::HashMap::new();
    for peer in &sip.peers {
        for mailbox in &peer.mailboxes {
            map.entry(endpoint::mailbox_key(mailbox))
                .or_default()
                .push(peer.name.clone());
        }
    }
    map
}

/// The lines with `qualify`: probed every `qualifyfreq` seconds, unreachable past the
/// qualify time.
fn qualifier_for(sip: &SipConf) -> qualify::Qualifier {
    let policies = sip
        .peers
        .iter()
        .filter(|p| p.host == Host::Dynamic)
        .filter_map(|p| match p.qualify {
            asterisk_conf::sip::Qualify::Within(ms) => Some((
                p.name.clone(),
                qualify::Policy {
                    limit: std::time::Duration::from_millis(u64::from(ms)),
                    every: std::time::Duration::from_secs(u64::from(p.qualify_freq_secs.max(1))),
                },
            )),
            asterisk_conf::sip::Qualify::No => None,
        })
        .collect();
    qualify::Qualifier::new(policies)
}

/// The lines of sip.conf: its `host=dynamic` peers.
fn file_lines(sip: &SipConf) -> Vec<Line> {
    sip.peers
        .iter()
        .filter(|p| p.host == Host::Dynamic)
        .map(|p| Line {
            name: p.name.clone(),
            secret: p.secret.as_ref().map(|s| s.expose().to_owned()),
            nat: p.nat.is_on(),
        })
        .collect()
}

/// The registrar, with the lines of sip.conf.
fn registrar_for(sip: &SipConf, algorithms: &[digest::Algorithm]) -> Registrar {
    let lines = file_lines(sip);
    let config = RegistrarConfig {
        realm: sip
            .general
            .realm
            .clone()
            .unwrap_or_else(|| "asterisk".into()),
        algorithms: algorithms.to_vec(),
        min_expires: sip.general.min_expiry,
        max_expires: sip.general.max_expiry,
        default_expires: sip.general.default_expiry,
        ..RegistrarConfig::default()
    };
    let mut secret = [0u8; 32];
    if getrandom::fill(&mut secret).is_err() {
        tracing::warn!("no system randomness for the nonce key; using a time-derived one");
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        secret[..16].copy_from_slice(&t.to_le_bytes());
    }
    Registrar::new(config, lines, secret)
}

/// Binds SIP over UDP and TCP on one port. With port 0, the port UDP gets may be taken
/// for TCP (by another socket's ephemeral port): then both are tried again elsewhere.
async fn bind_sip(addr: SocketAddr) -> Result<(UdpSocket, TcpListener), Error> {
    let mut attempts = 0;
    loop {
        attempts += 1;
        let udp = UdpSocket::bind(addr)
            .await
            .map_err(|source| Error::SipBind {
                transport: "udp",
                addr,
                source,
            })?;
        let udp_addr = udp.local_addr().map_err(|source| Error::SipBind {
            transport: "udp",
            addr,
            source,
        })?;
        match TcpListener::bind(udp_addr).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e)
                if addr.port() == 0
                    && e.kind() == std::io::ErrorKind::AddrInUse
                    && attempts < 20 =>
            {
                continue
            }
            Err(source) => {
                return Err(Error::SipBind {
                    transport: "tcp",
                    addr: udp_addr,
                    source,
                })
            }
        }
    }
}

/// Loads sip.conf and binds the SIP and gRPC ports.
pub async fn bind(config: Config) -> Result<Bound, Error> {
    let sip = asterisk_conf::sip::load(config.config_dir.join("sip.conf"))?;
    service_runtime::log_config_warnings(&sip.warnings);
    let mut server = GrpcServer::bind(NAME, &config.common).await?;
    let (udp, tcp) = bind_sip(config.sip_bind).await?;
    let counters = endpoint::Counters::default();
    let registry = server.registry().sub_registry_with_prefix("sip");
    for (name, help, counter) in [
        (
            "messages_received",
            "SIP messages received (UDP and TCP)",
            &counters.received,
        ),
        (
            "messages_rejected",
            "SIP messages refused by the parser",
            &counters.rejected,
        ),
        (
            "messages_dropped",
            "SIP messages dropped without an answer",
            &counters.dropped,
        ),
        (
            "auth_failures",
            "Failed digest authentications",
            &counters.auth_failures,
        ),
        (
            "rate_limited",
            "SIP messages dropped by the per-source rate limit",
            &counters.rate_limited,
        ),
        (
            "banned_drops",
            "SIP messages dropped because their source is banned",
            &counters.banned_drops,
        ),
        (
            "bans",
            "Sources banned after repeated authentication failures",
            &counters.bans,
        ),
        (
            "calls",
            "Calls admitted (INVITEs that started a call)",
            &counters.calls,
        ),
    ] {
        registry.register(name, help, counter.clone());
    }
    registry.register(
        "registrations",
        "Registered contacts",
        counters.registrations.clone(),
    );
    registry.register(
        "refused",
        "SIP messages refused, by reason (malformed, rate_limited, banned, not_implemented, not_allowed, stray, no_dialog, not_acceptable, unavailable, auth_failed)",
        counters.refused.clone(),
    );
    registry.register(
        "calls_active",
        "Calls up now (from admission to the last BYE)",
        counters.calls_active.clone(),
    );
    std::fs::create_dir_all(&config.data_dir).map_err(|source| Error::DataDir {
        path: config.data_dir.clone(),
        source,
    })?;
    let trunks = trunks(&sip).await;
    let shards = match config.sip_shards {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let exempt: Vec<std::net::IpAddr> = trunks
        .iter()
        .flat_map(|t| t.addrs.iter().map(|a| a.ip()))
        .collect();
    let guard = Arc::new(guard::SharedGuard::new(
        guard::GuardConfig {
            rate: config.rate_limit,
            burst: config.rate_burst,
            ban_failures: config.ban_failures,
            ban_window: config.ban_window,
            ban_time: config.ban_time,
            ..guard::GuardConfig::default()
        },
        &exempt,
        shards,
    ));
    let files = driver::Files::in_dir(&config.data_dir);
    let saved = driver::Saved::load(&files);
    let restore: Vec<endpoint::CallRecord> = if config.keep_calls {
        saved.calls.values().flatten().cloned().collect()
    } else {
        Vec::new()
    };
    let sessions = b2bua::Sessions {
        instance: driver::instance_id(&config.data_dir),
        boot: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0),
    };
    let epoch = (std::time::Instant::now(), driver::unix_now());
    let cores = (0..shards)
        .map(|index| {
            let mut core = endpoint::SipCore::new(
                registrar_for(&sip, &config.auth_algorithms.0),
                guard.clone(),
                qualifier_for(&sip),
                config.emergency_numbers.clone(),
                Some(driver::bindings_of_shard(&saved.bindings, index, shards)),
                counters.clone(),
                epoch,
                driver::random_seed(),
            );
            core.set_file_config(file_lines(&sip), peer_infos(&sip, &trunks), mwi_lines(&sip));
            core.set_trunks(trunks.clone());
            core.set_keep_calls(config.keep_calls);
            core
        })
        .collect();
    let peers = Peers {
        router: Balanced::new(&config.router_url)?,
        media_relays: relays::RelayPool::new(&config.media_relays)?,
        voicemail: client_channel(&config.voicemail_url)?,
    };
    let kube = match config.kube_namespace {
        Some(namespace) => Some((kube::Client::try_default().await?, namespace)),
        None => None,
    };
    let identity = config.pod_name.clone().unwrap_or_else(|| {
        std::env::var("HOSTNAME").unwrap_or_else(|_| format!("sip-edge-{}", std::process::id()))
    });
    let lease = config.trunk_lease.map(|name| {
        (
            name,
            phone_kube::lease::Timing::new(config.trunk_lease_duration),
        )
    });
    Ok(Bound {
        server,
        kube,
        identity,
        lease,
        relay_service: config.media_relay_service,
        router_service: config.router_service,
        drain_deadline: config.common.drain_deadline,
        sessions,
        restore,
        advertise_ip: config.advertise_ip,
        sip,
        edge: Arc::new(driver::Driver::new(
            cores,
            Arc::new(udp),
            Some((files, saved)),
        )),
        tcp,
        peers,
    })
}

impl Bound {
    /// Where SIP is served (UDP and TCP on the same port).
    pub fn sip_addr(&self) -> Option<SocketAddr> {
        self.edge.udp().local_addr().ok()
    }

    /// The SIP side (tests: resource lines without an API server).
    pub fn edge(&self) -> Arc<driver::Driver> {
        self.edge.clone()
    }

    pub fn info(&self) -> ServiceInfo {
        let mut info = self.server.info();
        if let Ok(addr) = self.edge.udp().local_addr() {
            info.extra.push(("sip".into(), format!("udp+tcp:{addr}")));
        }
        info.extra
            .push(("peers".into(), self.sip.peers.len().to_string()));
        info
    }

    pub async fn run(self, shutdown: Shutdown) -> Result<(), Error> {
        let outbound = outbound_registrations(&self.sip).await;
        let advertise = self.advertise_ip;
        let file_peers: std::collections::HashSet<String> =
            self.sip.peers.iter().map(|p| p.name.clone()).collect();
        let Bound {
            mut server,
            tcp,
            edge,
            peers,
            kube,
            identity,
            lease,
            relay_service,
            router_service,
            drain_deadline,
            sessions,
            restore,
            ..
        } = self;
        if let (Some((client, namespace)), Some(service)) = (&kube, router_service) {
            tokio::spawn(phone_kube::endpoints::watch_balanced(
                kube::Api::namespaced(client.clone(), namespace),
                service,
                peers.router.clone(),
                shutdown.clone(),
            ));
        }
        if let (Some((client, namespace)), Some(service)) = (&kube, relay_service) {
            tokio::spawn(discovery::watch_relays(
                kube::Api::namespaced(client.clone(), namespace),
                service,
                "grpc".into(),
                peers.media_relays.clone(),
                shutdown.clone(),
            ));
        }
        if let (Some((client, namespace)), Some((name, timing))) = (&kube, lease) {
            // Registering waits for the Lease (set before the first tick).
            edge.with_shard(0, |core, _| core.set_registering(false));
            let registering = edge.clone();
            let stop = shutdown.clone();
            tokio::spawn(phone_kube::lease::hold(
                kube::Api::namespaced(client.clone(), namespace),
                name,
                identity.clone(),
                timing,
                move |holding| {
                    registering.with_shard(0, |core, _| core.set_registering(holding));
                },
                async move { stop.triggered().await },
            ));
        }
        if let Some((client, namespace)) = kube {
            edge.each(|core| core.expect_resource_lines());
            tokio::spawn(trunks::run(
                client.clone(),
                namespace.clone(),
                edge.clone(),
                file_peers.clone(),
                identity,
                shutdown.clone(),
            ));
            tokio::spawn(resources::run(
                client,
                namespace,
                edge.clone(),
                file_peers,
                shutdown.clone(),
            ));
        }
        peers
            .media_relays
            .spawn_refresher(std::time::Duration::from_secs(2), shutdown.clone());
        let spawner = b2bua::spawner(
            edge.clone(),
            peers.router.clone(),
            peers.media_relays.clone(),
            server.in_flight(),
            sessions.clone(),
        );
        edge.set_spawner(spawner);
        // The answered calls from before a restart go on; then the relay sessions of
        // earlier runs that no call owns are deleted.
        let owned: std::collections::HashSet<(String, String)> = restore
            .iter()
            .filter_map(|r| r.media.as_ref())
            .map(|m| (m.relay.clone(), m.session_id.clone()))
            .collect();
        if !restore.is_empty() {
            let restored = edge.restore_calls(restore);
            tracing::info!(calls = restored, "answered calls restored after a restart");
        }
        tokio::spawn({
            let relays = peers.media_relays.clone();
            async move {
                relays.refresh().await;
                let deleted = b2bua::reconcile(&relays, &sessions, &owned).await;
                if deleted > 0 {
                    tracing::info!(sessions = deleted, "relay sessions of earlier runs deleted");
                }
            }
        });
        edge.with_shard(0, |core, _| core.set_outbound(outbound));
        edge.each(|core| core.set_advertise(advertise));
        // SIP runs through the drain, until the last call has ended: its own stop.
        let sip_stop = Shutdown::new();
        // A reader per shard on the one socket: any reader takes any message, to its
        // shard.
        for _ in 0..edge.shards() {
            tokio::spawn(driver::serve_udp(edge.clone(), sip_stop.clone()));
        }
        tokio::spawn(driver::serve_tcp(edge.clone(), tcp, sip_stop.clone()));
        let ticker = tokio::spawn(driver::run_timers(edge.clone(), sip_stop.clone()));
        // The drain: new INVITEs get 503 from the first moment; the calls up go on
        // until they end, or until the deadline ends them.
        tokio::spawn({
            let (edge, shutdown) = (edge.clone(), shutdown.clone());
            async move {
                shutdown.triggered().await;
                let calls = edge.drain(drain_deadline);
                tracing::info!(calls, deadline = ?drain_deadline, "draining: new calls get 503, the calls up go on");
            }
        });
        let calls = server.in_flight();
        server.accept_while_draining();
        server
            .serve_one(EdgeServer::new(EdgeApi { edge: edge.clone() }), shutdown)
            .await?;
        // At the deadline the endpoint sent the BYEs; the calls' tasks tell their
        // routers and delete their relay sessions.
        if !calls.is_empty() {
            let _ = tokio::time::timeout(ENDED_CALLS_GRACE, calls.wait()).await;
        }
        sip_stop.trigger();
        // The ticker writes the last registration changes to disk as it stops.
        let _ = ticker.await;
        Ok(())
    }
}

/// After the drain deadline, how long the calls it ended have to finish (their BYEs
/// sent, their relay sessions deleted).
const ENDED_CALLS_GRACE: std::time::Duration = std::time::Duration::from_secs(3);

/// Loads, binds and serves until `shutdown`, then drains.
pub async fn run(config: Config, shutdown: Shutdown) -> Result<(), Error> {
    bind(config).await?.run(shutdown).await
}

/// `phone.edge.v1.Edge`.
struct EdgeApi {
    edge: Arc<driver::Driver>,
}

#[tonic::async_trait]
impl Edge for EdgeApi {
    async fn update_mailbox(
        &self,
        request: Request<MailboxUpdate>,
    ) -> Result<Response<MailboxUpdateResponse>, Status> {
        let update = request.into_inner();
        if update.mailbox.is_empty() {
            return Err(Status::invalid_argument("mailbox is empty"));
        }
        // Each shard lights the lamps of the subscriptions and bindings it keeps; a line
        // subscribed on any shard gets no unsolicited NOTIFY from its own.
        let subscribed: Vec<String> = self
            .edge
            .each(|core| core.subscribed_lines(&update.mailbox, &update.context))
            .into_iter()
            .flatten()
            .collect();
        let counts = [
            update.new_messages,
            update.old_messages,
            update.urgent_new,
            update.urgent_old,
        ];
        let notified = self
            .edge
            .each(|core| core.update_mailbox(&update.mailbox, &update.context, counts, &subscribed))
            .into_iter()
            .sum();
        Ok(Response::new(MailboxUpdateResponse { notified }))
    }

    async fn list_registrations(
        &self,
        request: Request<ListRegistrationsRequest>,
    ) -> Result<Response<ListRegistrationsResponse>, Status> {
        let peer = request.into_inner().peer;
        let mut registrations: Vec<Registration> = self
            .edge
            .each(|core| {
                core.registrations(Some(peer.as_str()).filter(|p| !p.is_empty()))
                    .into_iter()
                    .map(|(line, b)| Registration {
                        reachable: core.reachable(&line, &b.contact),
                        peer: line,
                        contact: b.contact,
                        expires_time: i64::try_from(b.expires_at).unwrap_or(i64::MAX),
                        source: b.source.to_string(),
                        transport: b.transport,
                        user_agent: b.user_agent.unwrap_or_default(),
                    })
                    .collect::<Vec<_>>()
            })
            .into_iter()
            .flatten()
            .collect();
        registrations.sort_by(|a, b| (&a.peer, &a.contact).cmp(&(&b.peer, &b.contact)));
        Ok(Response::new(ListRegistrationsResponse { registrations }))
    }
}
