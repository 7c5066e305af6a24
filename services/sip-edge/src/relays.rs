//! Choosing a media relay for each call. The edge is given relay addresses
//! (`--media-relays`, comma-separated `http://host:port`); a host name counts as every
//! address it resolves to, which is how a Kubernetes headless Service presents its pods.
//! A refresher re-resolves the names and asks each relay for its health and load
//! (`MediaRelay.GetLoad`) every couple of seconds. A call goes to the least-loaded relay
//! that is reachable, serving and has ports free; sessions placed since the last poll
//! count towards a relay's load, so a burst of calls spreads out. When the chosen relay
//! refuses (draining: UNAVAILABLE, no ports: RESOURCE_EXHAUSTED, or unreachable) the
//! next one is tried, so a call fails (the edge answers 503) only when every relay does.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use phone_proto::media::v1 as pb;
use phone_proto::media::v1::media_relay_client::MediaRelayClient;
use service_runtime::grpc::{client_channel, TracedChannel};
use service_runtime::Shutdown;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// How long a relay may take to answer a poll or a CreateSession.
const RPC_TIMEOUT: Duration = Duration::from_secs(2);
/// The gRPC name the relay reports health under.
const SERVICE: &str = "phone.media.v1.MediaRelay";

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("'{0}' is not a relay address such as http://media-relay:50051")]
    BadAddress(String),
    #[error("no media relay is reachable, serving and has free ports")]
    NoneAvailable,
    #[error("every media relay refused the session; the last said: {0}")]
    AllRefused(tonic::Status),
}

/// One configured address: a name (or IP literal) and a port.
#[derive(Debug, Clone)]
struct Target {
    host: String,
    port: u16,
}

impl Target {
    fn parse(url: &str) -> Result<Self, RelayError> {
        let bad = || RelayError::BadAddress(url.to_owned());
        let rest = url.trim().strip_prefix("http://").ok_or_else(bad)?;
        let rest = rest.trim_end_matches('/');
        let (host, port) = rest.rsplit_once(':').ok_or_else(bad)?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port: u16 = port.parse().map_err(|_| bad())?;
        if host.is_empty() || port == 0 {
            return Err(bad());
        }
        Ok(Self {
            host: host.to_owned(),
            port,
        })
    }
}

/// What the last poll said about a relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status {
    pub reachable: bool,
    pub serving: bool,
    pub active_sessions: u32,
    pub free_port_pairs: u32,
    /// Sessions placed on it since that poll.
    pub placed: u32,
}

/// One relay, at one address.
pub struct Relay {
    pub addr: SocketAddr,
    /// The gRPC address, as `SessionRef.relay` records it.
    pub url: String,
    pub client: MediaRelayClient<TracedChannel>,
    health: HealthClient<TracedChannel>,
    status: Mutex<Status>,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("addr", &self.addr)
            .field("status", &self.status())
            .finish()
    }
}

impl Relay {
    fn new(addr: SocketAddr) -> Result<Self, RelayError> {
        let url = format!("http://{addr}");
        let channel = client_channel(&url).map_err(|_| RelayError::BadAddress(url.clone()))?;
        Ok(Self {
            addr,
            client: MediaRelayClient::new(channel.clone()),
            health: HealthClient::new(channel),
            url,
            // Unknown until polled: not chosen before the first answer.
            status: Mutex::new(Status {
                reachable: false,
                serving: false,
                active_sessions: 0,
                free_port_pairs: 0,
                placed: 0,
            }),
        })
    }

    pub fn status(&self) -> Status {
        *self.status.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn update(&self, change: impl FnOnce(&mut Status)) {
        change(&mut self.status.lock().unwrap_or_else(|e| e.into_inner()));
    }

    /// Asks the relay for its health and load.
    async fn poll(&self) {
        let mut health = self.health.clone();
        let mut client = self.client.clone();
        let answer = tokio::time::timeout(RPC_TIMEOUT, async move {
            let serving = health
                .check(HealthCheckRequest {
                    service: SERVICE.into(),
                })
                .await?
                .into_inner()
                .status
                == ServingStatus::Serving as i32;
            let load = client.get_load(pb::GetLoadRequest {}).await?.into_inner();
            Ok::<_, tonic::Status>((serving, load))
        })
        .await;
        match answer {
            Ok(Ok((serving, load))) => self.update(|s| {
                *s = Status {
                    reachable: true,
                    serving: serving && !load.draining,
                    active_sessions: load.active_sessions,
                    free_port_pairs: load.free_port_pairs,
                    placed: 0,
                }
            }),
            Ok(Err(e)) => {
                tracing::debug!(relay = %self.addr, error = %e, "relay poll failed");
                self.update(|s| s.reachable = false);
            }
            Err(_) => {
                tracing::debug!(relay = %self.addr, "relay poll timed out");
                self.update(|s| s.reachable = false);
            }
        }
    }

    /// Whether a new session may go here, and how loaded the relay is.
    fn eligible_load(&self) -> Option<u32> {
        let s = self.status();
        // A session takes two port pairs (one per leg).
        (s.reachable && s.serving && s.free_port_pairs >= 2)
            .then_some(s.active_sessions.saturating_add(s.placed))
    }
}

/// The relays the edge may use, kept fresh by [`RelayPool::spawn_refresher`].
#[derive(Clone)]
pub struct RelayPool {
    targets: Arc<Vec<Target>>,
    relays: Arc<Mutex<HashMap<SocketAddr, Arc<Relay>>>>,
    /// The ready relays of a Service's EndpointSlices (see `discover`), which replace
    /// the DNS targets once set.
    discovered: Arc<Mutex<Option<Vec<SocketAddr>>>>,
    /// Held by the one poll a call with no relay to choose may start: the calls that
    /// find it running wait for its answer rather than start polls of their own.
    on_demand: Arc<tokio::sync::Mutex<()>>,
}

impl RelayPool {
    pub fn new(urls: &[String]) -> Result<Self, RelayError> {
        let targets = urls
            .iter()
            .filter(|u| !u.trim().is_empty())
            .map(|u| Target::parse(u))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            targets: Arc::new(targets),
            relays: Arc::new(Mutex::new(HashMap::new())),
            discovered: Arc::new(Mutex::new(None)),
            on_demand: Arc::default(),
        })
    }

    /// The relays are these addresses from now on (the ready endpoints of their
    /// Service), not the names given at start. A relay that leaves the set takes no new
    /// session; its calls keep it until they end.
    pub fn set_discovered(&self, addrs: Vec<SocketAddr>) {
        *self.discovered.lock().unwrap_or_else(|e| e.into_inner()) = Some(addrs);
    }

    /// Resolves every name again (relays come and go behind it) and polls every relay.
    pub async fn refresh(&self) {
        let discovered = self
            .discovered
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut addrs = discovered.clone().unwrap_or_default();
        for target in self.targets.iter().filter(|_| discovered.is_none()) {
            match tokio::net::lookup_host((target.host.as_str(), target.port)).await {
                Ok(found) => addrs.extend(found),
                Err(e) => {
                    tracing::warn!(host = %target.host, error = %e, "cannot resolve a media relay name")
                }
            }
        }
        let relays: Vec<Arc<Relay>> = {
            let mut known = self.relays.lock().unwrap_or_else(|e| e.into_inner());
            known.retain(|addr, _| addrs.contains(addr));
            for addr in addrs {
                if let std::collections::hash_map::Entry::Vacant(slot) = known.entry(addr) {
                    match Relay::new(addr) {
                        Ok(relay) => {
                            tracing::info!(relay = %addr, "media relay found");
                            slot.insert(Arc::new(relay));
                        }
                        Err(e) => tracing::warn!(error = %e, "media relay skipped"),
                    }
                }
            }
            known.values().cloned().collect()
        };
        futures::future::join_all(relays.iter().map(|r| r.poll())).await;
    }

    /// The relay at `url` (a session's `SessionRef.relay`), known to the pool or not: a
    /// call restored after a restart finds its session there.
    pub fn by_url(&self, url: &str) -> Option<Arc<Relay>> {
        let addr: SocketAddr = url.strip_prefix("http://")?.parse().ok()?;
        let known = self
            .relays
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&addr)
            .cloned();
        known.or_else(|| Relay::new(addr).ok().map(Arc::new))
    }

    /// Refreshes every `every` until `shutdown`.
    pub fn spawn_refresher(&self, every: Duration, shutdown: Shutdown) {
        let pool = self.clone();
        tokio::spawn(async move {
            loop {
                pool.refresh().await;
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = shutdown.triggered() => return,
                }
            }
        });
    }

    /// Every known relay and its status, for metrics and tests.
    pub fn relays(&self) -> Vec<Arc<Relay>> {
        let mut relays: Vec<Arc<Relay>> = self
            .relays
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        relays.sort_by_key(|r| r.addr);
        relays
    }

    /// The relays a new session may go to, least loaded first.
    pub fn candidates(&self) -> Vec<Arc<Relay>> {
        let mut ranked: Vec<(u32, Arc<Relay>)> = self
            .relays()
            .into_iter()
            .filter_map(|r| r.eligible_load().map(|load| (load, r)))
            .collect();
        ranked.sort_by_key(|(load, relay)| (*load, relay.addr));
        ranked.into_iter().map(|(_, r)| r).collect()
    }

    /// Creates the call's media session on the least-loaded relay that accepts it.
    pub async fn create_session(
        &self,
        request: pb::CreateSessionRequest,
    ) -> Result<(Arc<Relay>, pb::Session), RelayError> {
        let mut candidates = self.candidates();
        if candidates.is_empty() {
            // What the last poll saw may be stale (an edge that started before its
            // relays, a relay back from a restart): ask them now rather than refuse.
            // One such poll at a time, so that an outage does not turn each call into
            // a poll of every relay.
            match self.on_demand.try_lock() {
                Ok(_polling) => self.refresh().await,
                Err(_) => drop(self.on_demand.lock().await),
            }
            candidates = self.candidates();
        }
        if candidates.is_empty() {
            return Err(RelayError::NoneAvailable);
        }
        let mut last = None;
        for relay in candidates {
            relay.update(|s| s.placed += 1);
            let mut client = relay.client.clone();
            let answer =
                tokio::time::timeout(RPC_TIMEOUT, client.create_session(request.clone())).await;
            let status = match answer {
                Ok(Ok(session)) => return Ok((relay, session.into_inner())),
                Ok(Err(status)) => status,
                Err(_) => tonic::Status::deadline_exceeded("the relay did not answer in time"),
            };
            tracing::warn!(relay = %relay.addr, error = %status, "media relay refused a session; trying the next");
            match status.code() {
                // Draining or unreachable: not chosen again until a poll says otherwise.
                Code::Unavailable | Code::DeadlineExceeded => relay.update(|s| s.serving = false),
                Code::ResourceExhausted => relay.update(|s| s.free_port_pairs = 0),
                _ => {}
            }
            last = Some(status);
        }
        Err(RelayError::AllRefused(last.unwrap_or_else(|| {
            tonic::Status::unavailable("no media relay")
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_addresses() {
        let t = Target::parse("http://media-relay.phone.svc:50051").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("media-relay.phone.svc", 50051));
        let t = Target::parse("http://[::1]:7000/").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("::1", 7000));
        for bad in [
            "media-relay:50051",
            "http://media-relay",
            "http://:80",
            "http://x:0",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
    }
}
