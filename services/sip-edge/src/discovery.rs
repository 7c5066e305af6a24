//! Finding the media relays through the EndpointSlices of their Service, the way
//! Kubernetes itself routes to pods: only endpoints that are ready count. A relay whose
//! pod is terminating (draining its calls) is marked not ready by Kubernetes at once,
//! before the DNS records of a headless Service would change, so it gets no new
//! session while its calls go on.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use futures::StreamExt;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use service_runtime::Shutdown;

use crate::relays::RelayPool;

/// The label Kubernetes puts on a Service's EndpointSlices.
const SERVICE_LABEL: &str = "kubernetes.io/service-name";

/// Watches the EndpointSlices of `service` until `shutdown`, giving the pool the ready
/// relays' gRPC addresses (the port named `port_name`, else the first) after each change.
pub async fn watch_relays(
    slices: Api<EndpointSlice>,
    service: String,
    port_name: String,
    pool: RelayPool,
    shutdown: Shutdown,
) {
    watch_ready(slices, service, port_name, shutdown, |addrs| {
        let pool = pool.clone();
        async move {
            pool.set_discovered(addrs);
            // Poll the new set now, not at the next refresh.
            pool.refresh().await;
        }
    })
    .await;
}

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
                tracing::warn!(%service, error = %e, "watching the relays' EndpointSlices failed; retrying");
                continue;
            }
            None => return,
        }
        if !ready {
            continue;
        }
        let addrs = ready_relays(&store, &port_name);
        tracing::info!(%service, relays = ?addrs, "media relays from EndpointSlices");
        found(addrs).await;
    }
}

/// Every ready endpoint's address with the gRPC port of its slice.
fn ready_relays(store: &Store<EndpointSlice>, port_name: &str) -> Vec<SocketAddr> {
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
