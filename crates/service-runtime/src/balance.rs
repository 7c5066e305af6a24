//! Calls spread over the ready pods of a Service, each call kept on its pod.
//!
//! One HTTP/2 connection to a ClusterIP Service goes to one pod, whatever the replica
//! count: kube-proxy balances connections, not requests. A [`Balanced`] channel holds
//! one lazily connecting channel per ready endpoint (from the Service's EndpointSlices,
//! as the edge already finds the relays) and gives each new call the endpoint with the
//! fewest calls open, so calls spread evenly and deterministically. The call keeps the
//! channel it was given for its whole life (its stream stays on its pod), and the
//! [`Lease`] that came with it counts it until it is dropped. An endpoint that stops
//! being ready (its pod is terminating) gets no new call; its open calls go on over
//! their own clones of its channel.
//!
//! Until endpoints are known (or without discovery: `phone`, tests, a plain URL) every
//! call goes to the fallback channel on the configured URL.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::grpc::{client_channel, TracedChannel};
use crate::Error;

/// A channel per ready endpoint of a Service, and a fallback on its URL.
#[derive(Clone)]
pub struct Balanced {
    fallback: TracedChannel,
    /// `http` or `https`, for the endpoints' URLs.
    scheme: String,
    endpoints: Arc<Mutex<BTreeMap<SocketAddr, Endpoint>>>,
    /// Turns among endpoints with equally few calls, so that calls one after another
    /// (each ended before the next) still go round the pods.
    turn: Arc<AtomicUsize>,
}

#[derive(Clone)]
struct Endpoint {
    channel: TracedChannel,
    calls: Arc<AtomicUsize>,
}

/// Counts one call on its endpoint until dropped.
#[derive(Debug)]
pub struct Lease {
    calls: Option<Arc<AtomicUsize>>,
    /// Where the call went (`None`: the fallback URL).
    pub endpoint: Option<SocketAddr>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(calls) = &self.calls {
            calls.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Balanced {
    /// Calls go to `url` until [`Balanced::set_endpoints`] names the ready endpoints.
    pub fn new(url: &str) -> Result<Self, Error> {
        let scheme = url.split("://").next().unwrap_or("http").to_owned();
        Ok(Balanced {
            fallback: client_channel(url)?,
            scheme,
            endpoints: Arc::default(),
            turn: Arc::default(),
        })
    }

    /// The ready endpoints now: kept ones keep their channel and count, new ones get a
    /// lazily connecting channel, gone ones get no new call. An empty set sends calls
    /// to the fallback URL again.
    pub fn set_endpoints(&self, ready: &[SocketAddr]) {
        let mut endpoints = self.endpoints.lock().unwrap_or_else(|e| e.into_inner());
        endpoints.retain(|addr, _| ready.contains(addr));
        for addr in ready {
            if endpoints.contains_key(addr) {
                continue;
            }
            let url = format!("{}://{addr}", self.scheme);
            match client_channel(&url) {
                Ok(channel) => {
                    endpoints.insert(
                        *addr,
                        Endpoint {
                            channel,
                            calls: Arc::default(),
                        },
                    );
                }
                Err(e) => tracing::warn!(%url, error = %e, "cannot make a channel to an endpoint"),
            }
        }
    }

    /// The ready endpoints known now.
    pub fn endpoints(&self) -> Vec<SocketAddr> {
        let endpoints = self.endpoints.lock().unwrap_or_else(|e| e.into_inner());
        endpoints.keys().copied().collect()
    }

    /// The channel for one new call, on the endpoint with the fewest open calls (taking
    /// turns among equals), and the lease that counts the call there.
    pub fn pick(&self) -> (TracedChannel, Lease) {
        let endpoints = self.endpoints.lock().unwrap_or_else(|e| e.into_inner());
        let start = match endpoints.len() {
            0 => 0,
            n => self.turn.fetch_add(1, Ordering::Relaxed) % n,
        };
        // The first with the fewest calls, starting from this turn's endpoint.
        let least = endpoints
            .iter()
            .cycle()
            .skip(start)
            .take(endpoints.len())
            .min_by_key(|(_, e)| e.calls.load(Ordering::Relaxed));
        match least {
            Some((addr, endpoint)) => {
                endpoint.calls.fetch_add(1, Ordering::Relaxed);
                (
                    endpoint.channel.clone(),
                    Lease {
                        calls: Some(endpoint.calls.clone()),
                        endpoint: Some(*addr),
                    },
                )
            }
            None => (
                self.fallback.clone(),
                Lease {
                    calls: None,
                    endpoint: None,
                },
            ),
        }
    }

    /// The channel for a request that is not a call (a short unary request): the
    /// endpoint with the fewest calls, without counting it.
    pub fn channel(&self) -> TracedChannel {
        self.pick().0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(n: u8) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, n], 50051))
    }

    #[tokio::test]
    async fn calls_spread_evenly_and_a_leaving_endpoint_gets_none() {
        let pool = Balanced::new("http://router:50051").unwrap();
        // No endpoints yet: the fallback, counted nowhere.
        assert_eq!(pool.pick().1.endpoint, None);

        pool.set_endpoints(&[addr(1), addr(2), addr(3)]);
        let mut leases: Vec<Lease> = (0..30).map(|_| pool.pick().1).collect();
        let on = |leases: &[Lease], n: u8| {
            leases
                .iter()
                .filter(|l| l.endpoint == Some(addr(n)))
                .count()
        };
        assert_eq!(
            (on(&leases, 1), on(&leases, 2), on(&leases, 3)),
            (10, 10, 10)
        );

        // Calls on 1 end: the next calls go there until it catches up.
        leases.retain(|l| l.endpoint != Some(addr(1)));
        for _ in 0..4 {
            leases.push(pool.pick().1);
        }
        assert_eq!(on(&leases, 1), 4);

        // 2 stops being ready: no new call goes there; its calls' leases stay valid.
        pool.set_endpoints(&[addr(1), addr(3)]);
        assert_eq!(pool.endpoints(), vec![addr(1), addr(3)]);
        for _ in 0..12 {
            leases.push(pool.pick().1);
        }
        assert_eq!(on(&leases, 2), 10);
        assert_eq!(on(&leases, 1) + on(&leases, 3), 4 + 10 + 12);
        drop(leases);

        // Calls one after another (each ended before the next) take turns.
        pool.set_endpoints(&[addr(1), addr(2), addr(3)]);
        let mut seen = Vec::new();
        for _ in 0..6 {
            seen.push(pool.pick().1.endpoint.unwrap());
        }
        for n in 1..=3 {
            assert_eq!(
                seen.iter().filter(|a| **a == addr(n)).count(),
                2,
                "{seen:?}"
            );
        }

        // Everything gone: the fallback again.
        pool.set_endpoints(&[]);
        assert_eq!(pool.pick().1.endpoint, None);
    }
}
