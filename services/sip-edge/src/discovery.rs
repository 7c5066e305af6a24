//! Finding the media relays through the EndpointSlices of their Service, the way
//! Kubernetes itself routes to pods: only endpoints that are ready count. A relay whose
//! pod is terminating (draining its calls) is marked not ready by Kubernetes at once,
//! before the DNS records of a headless Service would change, so it gets no new
//! session while its calls go on.

use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::Api;
pub use phone_kube::endpoints::watch_ready;
use service_runtime::Shutdown;

use crate::relays::RelayPool;

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
