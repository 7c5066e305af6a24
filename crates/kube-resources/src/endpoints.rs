//! The ready endpoints of a Service, from its EndpointSlices, the way Kubernetes itself
//! routes to pods: an endpoint counts only while it is ready and not terminating. A pod
//! that is being deleted (draining its calls) is marked so at once, before the DNS
//! records of a headless Service would change, so it gets no new work while its work in
//! flight goes on. The edge finds the media relays and the routers this way, and the
//! router the voicemail pods.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use futures::StreamExt;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use service_runtime::balance::Balanced;
use service_runtime::Shutdown;

/// The label Kubernetes puts on a Service's EndpointSlices.
const SERVICE_LABEL: &str = "kubernetes.io/service-name";

/// Watches the EndpointSlices of `service` until `shutdown`, calling `found` with the
/// ready endpoints' addresses after each change.
pub async fn watch_ready<F, Fut>(
    slices: Api<EndpointSlice>,
    service: String,
    port_name: String,
    shutdown: Shutdown,
    found: F,
) where
    F: Fn(Vec<SocketAddr>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let (store, writer) = reflector::store::<EndpointSlice>();
    let config = watcher::Config::default().labels(&format!("{SERVICE_LABEL}={service}"));
    let mut events = watcher(slices, config)
        .default_backoff()
        .reflect(writer)
        .boxed();
    let mut ready = false;
    loop {
        let event = tokio::select! {
            _ = shutdown.triggered() => return,
            event = events.next() => event,
        };
        match event {
            Some(Ok(watcher::Event::InitDone)) => ready = true,
            Some(Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_))) => {}
            Some(Ok(_)) => continue,
            Some(Err(e)) => {
                tracing::warn!(%service, error = %e, "watching the EndpointSlices failed; retrying");
                continue;
            }
            None => return,
        }
        if !ready {
            continue;
        }
        let addrs = ready_endpoints(&store, &port_name);
        tracing::info!(%service, endpoints = ?addrs, "ready endpoints from EndpointSlices");
        found(addrs).await;
    }
}

/// Every ready endpoint's address with the port named `port_name` of its slice (else
/// its first port).
pub fn ready_endpoints(store: &Store<EndpointSlice>, port_name: &str) -> Vec<SocketAddr> {
    let mut out = BTreeMap::new();
    for slice in store.state() {
        let ports = slice.ports.clone().unwrap_or_default();
        let port = ports
            .iter()
            .find(|p| p.name.as_deref() == Some(port_name))
            .or(ports.first())
            .and_then(|p| p.port)
            .and_then(|p| u16::try_from(p).ok());
        let Some(port) = port else { continue };
        for endpoint in &slice.endpoints {
            let conditions = endpoint.conditions.clone().unwrap_or_default();
            // Unset `ready` means ready (the API's own rule); terminating is never.
            if conditions.ready == Some(false) || conditions.terminating == Some(true) {
                continue;
            }
            for address in &endpoint.addresses {
                if let Ok(ip) = address.parse::<IpAddr>() {
                    out.insert(SocketAddr::new(ip, port), ());
                }
            }
        }
    }
    out.into_keys().collect()
}

/// Watches the EndpointSlices of `service` until `shutdown`, giving `pool` the ready
/// endpoints' gRPC addresses (the port named `grpc`) after each change: the routers of
/// the edge, the voicemail pods of the router.
pub async fn watch_balanced(
    slices: Api<EndpointSlice>,
    service: String,
    pool: Balanced,
    shutdown: Shutdown,
) {
    watch_ready(slices, service, "grpc".into(), shutdown, |addrs| {
        pool.set_endpoints(&addrs);
        async {}
    })
    .await;
}
