//! The dialplan from a ConfigMap, watched through the Kubernetes API. The chart gives
//! `extensions.conf` in a ConfigMap, which the pod also mounts; the kubelet refreshes
//! a mounted ConfigMap only on its own sync (a minute or more), while a watch sees a
//! change within a second. The router still starts from the mounted file, so it runs
//! when the API server is away, and then follows the ConfigMap: `extensions.conf` is
//! its entry file, and its other keys are the files that one `#include`s.
//!
//! A version that does not load keeps the running dialplan (logged, and counted in
//! `router_dialplan_reloads_total{result="failed"}`); a deleted ConfigMap does too.

use std::collections::BTreeMap;
use std::path::PathBuf;

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::Api;
use kube::runtime::{watcher, WatchStreamExt};
use service_runtime::Shutdown;

use crate::service::Router;

/// The key of the entry file.
pub const ENTRY: &str = "extensions.conf";

/// Follows the ConfigMap `name` of `api` until `shutdown`: each change of its data is
/// loaded as the dialplan (its files placed in `dir`, where includes are looked for).
pub async fn follow_configmap(
    api: Api<ConfigMap>,
    name: String,
    dir: PathBuf,
    router: Router,
    shutdown: Shutdown,
) {
    // Only this ConfigMap: the Role may then name it alone.
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut events = watcher(api, config).default_backoff().boxed();
    // What is running: at start, the mounted files.
    let mut running: Option<BTreeMap<String, String>> = None;
    let mut first = true;
    loop {
        let event = tokio::select! {
            _ = shutdown.triggered() => return,
            event = events.next() => match event {
                Some(event) => event,
                None => return,
            },
        };
        let map = match event {
            Ok(watcher::Event::Apply(map) | watcher::Event::InitApply(map)) => map,
            Ok(watcher::Event::Delete(_)) => {
                tracing::warn!(configmap = %name, "the dialplan's ConfigMap was deleted; the running dialplan stays");
                continue;
            }
            Ok(watcher::Event::Init | watcher::Event::InitDone) => continue,
            Err(e) => {
                tracing::warn!(configmap = %name, error = %e, "watching the dialplan's ConfigMap failed; retrying");
                continue;
            }
        };
        let data = map.data.unwrap_or_default();
        if !data.contains_key(ENTRY) {
            tracing::error!(configmap = %name, "the dialplan's ConfigMap has no {ENTRY}; the running dialplan stays");
            continue;
        }
        if first {
            first = false;
            // Unchanged since the pod started: the mounted files are the same.
            let mounted = data.iter().all(|(key, text)| {
                std::fs::read_to_string(dir.join(key)).is_ok_and(|file| &file == text)
            });
            if mounted {
                running = Some(data);
                continue;
            }
        }
        if running.as_ref() == Some(&data) {
            continue;
        }
        let mut source = asterisk_conf::MemorySource::default();
        for (key, text) in &data {
            source.insert(dir.join(key), text.clone().into_bytes());
        }
        let loaded = asterisk_conf::extensions::load_from(&source, &dir.join(ENTRY));
        router.reload(&format!("ConfigMap {name}"), loaded);
        // A broken version is not tried again; the next change is.
        running = Some(data);
    }
}
