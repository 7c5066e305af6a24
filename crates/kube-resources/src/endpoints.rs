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

/// Where a self-published endpoint is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Serving {
    /// Takes new work.
    Ready,
    /// Draining: finishes its work in flight, takes no new work.
    Terminating,
}

/// The field manager of the slices a pod publishes for itself.
const MANAGER: &str = "phone-self-endpoint";

/// One pod's own EndpointSlice in a Service without a selector. A pod whose ports
/// are not those of its template (relays sharing a node's network each take their own
/// pair) cannot be described by a selector's slices, so it publishes itself: its
/// address, the ports it took, and its state; it is owned by the pod, so Kubernetes
/// removes it with the pod, and a restarted container writes it again.
#[derive(Debug, Clone)]
pub struct OwnSlice {
    api: Api<EndpointSlice>,
    /// The slice's name: the pod's.
    name: String,
    namespace: String,
    service: String,
    pod_uid: String,
    ip: IpAddr,
    ports: Vec<(String, u16)>,
}

impl OwnSlice {
    /// The slice of pod `pod_name` (`pod_uid`) in `namespace`, listed under `service`,
    /// at `ip` with the named `ports`.
    pub fn new(
        client: kube::Client,
        namespace: &str,
        service: &str,
        pod_name: &str,
        pod_uid: &str,
        ip: IpAddr,
        ports: Vec<(String, u16)>,
    ) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            name: pod_name.to_owned(),
            namespace: namespace.to_owned(),
            service: service.to_owned(),
            pod_uid: pod_uid.to_owned(),
            ip,
            ports,
        }
    }

    /// The object as it is published in `state`.
    pub fn object(&self, state: Serving) -> EndpointSlice {
        use k8s_openapi::api::core::v1::ObjectReference;
        use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort};
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
        let ready = state == Serving::Ready;
        EndpointSlice {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                namespace: Some(self.namespace.clone()),
                labels: Some(BTreeMap::from([
                    (SERVICE_LABEL.to_owned(), self.service.clone()),
                    (
                        "endpointslice.kubernetes.io/managed-by".to_owned(),
                        format!("{MANAGER}.phone.dev"),
                    ),
                ])),
                owner_references: Some(vec![OwnerReference {
                    api_version: "v1".into(),
                    kind: "Pod".into(),
                    name: self.name.clone(),
                    uid: self.pod_uid.clone(),
                    ..OwnerReference::default()
                }]),
                ..ObjectMeta::default()
            },
            address_type: if self.ip.is_ipv4() { "IPv4" } else { "IPv6" }.into(),
            endpoints: vec![Endpoint {
                addresses: vec![self.ip.to_string()],
                conditions: Some(EndpointConditions {
                    ready: Some(ready),
                    // A draining pod still serves its work in flight.
                    serving: Some(true),
                    terminating: Some(!ready),
                }),
                target_ref: Some(ObjectReference {
                    kind: Some("Pod".into()),
                    name: Some(self.name.clone()),
                    namespace: Some(self.namespace.clone()),
                    uid: Some(self.pod_uid.clone()),
                    ..ObjectReference::default()
                }),
                ..Endpoint::default()
            }],
            ports: Some(
                self.ports
                    .iter()
                    .map(|(name, port)| EndpointPort {
                        name: Some(name.clone()),
                        port: Some(i32::from(*port)),
                        protocol: Some("TCP".into()),
                        ..EndpointPort::default()
                    })
                    .collect(),
            ),
        }
    }

    /// Writes the slice in `state` (server-side apply: creates or replaces it).
    pub async fn apply(&self, state: Serving) -> Result<(), kube::Error> {
        use kube::api::{Patch, PatchParams};
        let params = PatchParams::apply(MANAGER).force();
        self.api
            .patch(&self.name, &params, &Patch::Apply(self.object(state)))
            .await
            .map(|_| ())
    }

    /// Removes the slice (gone already counts as removed).
    pub async fn delete(&self) -> Result<(), kube::Error> {
        match self
            .api
            .delete(&self.name, &kube::api::DeleteParams::default())
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Keeps the slice published as ready until `shutdown` (written again every
    /// `refresh`, so a slice deleted by hand or lost with the API's storage comes
    /// back; an API that does not answer is retried), then marks it terminating and
    /// returns. The caller deletes it once its work in flight has ended.
    pub async fn publish_until(&self, shutdown: Shutdown, refresh: std::time::Duration) {
        let mut failing = false;
        loop {
            match self.apply(Serving::Ready).await {
                Ok(()) if failing => {
                    failing = false;
                    tracing::info!(slice = %self.name, service = %self.service, "own EndpointSlice published again");
                }
                Ok(()) => {}
                Err(e) => {
                    if !failing {
                        tracing::warn!(slice = %self.name, service = %self.service, error = %e, "cannot publish own EndpointSlice; retrying");
                    }
                    failing = true;
                }
            }
            let wait = if failing {
                std::time::Duration::from_secs(2).min(refresh)
            } else {
                refresh
            };
            tokio::select! {
                _ = shutdown.triggered() => break,
                _ = tokio::time::sleep(wait) => {}
            }
        }
        // Terminating: the pod takes no new work. Tried for a while; the readers also
        // stop choosing a pod whose health says NOT_SERVING.
        for _ in 0..5 {
            match self.apply(Serving::Terminating).await {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(slice = %self.name, error = %e, "cannot mark own EndpointSlice terminating; retrying");
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                }
            }
        }
    }
}
