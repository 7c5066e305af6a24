//! Lines as Kubernetes resources (`Line` of `phone.dev`, see the `phone-kube` crate):
//! the edge watches them in its namespace and applies every change without a restart.
//! A new line can register at once; a deleted line's registrations end; a changed
//! password is used from the next resync. sip.conf stays supported: a `Line` with the
//! name of a sip.conf peer is not merged; its status says why it is not used.
//!
//! The edge writes each line's status: whether it is registered, its contacts and
//! whether they answer qualify. Writes go out only when the status changed, and at
//! most once per [`STATUS_EVERY`], so a busy registrar never floods the API server.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::ResourceExt;
use phone_kube::{Contact, Line, LineStatus};
use service_runtime::Shutdown;

use crate::registrar;
use crate::server::{PeerInfo, ResourceLine, SipCore};

/// The shortest time between two status writes of the edge.
pub const STATUS_EVERY: Duration = Duration::from_secs(2);
/// Secrets are read again this often (a changed password applies then).
pub const RESYNC_EVERY: Duration = Duration::from_secs(30);

/// A line resource as the edge uses it, or why it cannot.
struct Resolved {
    name: String,
    peer: String,
    outcome: Result<ResourceLine, String>,
}

/// Watches `Line`s in `namespace` until `shutdown`: applies them to the SIP core and
/// writes their status.
pub async fn run(
    client: kube::Client,
    namespace: String,
    core: Arc<Mutex<SipCore>>,
    file_peers: HashSet<String>,
    shutdown: Shutdown,
) {
    let lines: Api<Line> = Api::namespaced(client.clone(), &namespace);
    let secrets: Api<Secret> = Api::namespaced(client, &namespace);
    let (store, writer) = reflector::store::<Line>();
    let mut events = watcher(lines.clone(), watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        .boxed();
    let mut status_tick = tokio::time::interval(STATUS_EVERY);
    let mut resync = tokio::time::interval(RESYNC_EVERY);
    let mut ready = false;
    let mut dirty = false;
    let mut resolved: Vec<Resolved> = Vec::new();
    let mut written: HashMap<String, LineStatus> = HashMap::new();
    // The spec generation of each line seen: the edge's own status writes come back as
    // events too, and only a spec change needs the lines applied again.
    let mut generations: HashMap<String, Option<i64>> = HashMap::new();
    loop {
        tokio::select! {
            _ = shutdown.triggered() => return,
            event = events.next() => match event {
                Some(Ok(watcher::Event::InitDone)) => {
                    ready = true;
                    dirty = true;
                }
                Some(Ok(watcher::Event::Apply(line))) => {
                    let generation = line.metadata.generation;
                    if generations.insert(line.name_any(), generation) != Some(generation) {
                        dirty = true;
                    }
                }
                Some(Ok(watcher::Event::Delete(line))) => {
                    generations.remove(&line.name_any());
                    dirty = true;
                }
                Some(Ok(watcher::Event::InitApply(line))) => {
                    generations.insert(line.name_any(), line.metadata.generation);
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => tracing::warn!(error = %e, "watching lines failed; retrying"),
                None => return,
            },
            _ = resync.tick() => dirty = ready,
            _ = status_tick.tick() => {
                if ready {
                    write_status(&lines, &store, &resolved, &core, &mut written).await;
                }
            }
        }
        if dirty && ready {
            dirty = false;
            resolved = resolve(&store, &secrets, &file_peers).await;
            let usable: Vec<ResourceLine> = resolved
                .iter()
                .filter_map(|r| r.outcome.as_ref().ok().cloned())
                .collect();
            let count = usable.len();
            let gone = core
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .set_resource_lines(usable);
            tracing::info!(lines = count, ended = gone.len(), "line resources applied");
            write_status(&lines, &store, &resolved, &core, &mut written).await;
        }
    }
}

/// Every line in the store, with its password read from its Secret.
async fn resolve(
    store: &Store<Line>,
    secrets: &Api<Secret>,
    file_peers: &HashSet<String>,
) -> Vec<Resolved> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    let mut lines = store.state();
    lines.sort_by_key(|l| l.name_any());
    for line in lines {
        let name = line.name_any();
        let peer = line
            .spec
            .peer_name
            .clone()
            .unwrap_or_else(|| line.spec.number.clone());
        let outcome = if file_peers.contains(&peer) {
            Err(format!(
                "sip.conf defines the peer {peer} too; the file's is used"
            ))
        } else if !seen.insert(peer.clone()) {
            Err(format!("another Line defines the peer {peer}"))
        } else {
            phone_kube::read_secret(secrets, &line.spec.secret_ref)
                .await
                .map(|password| resource_line(&line, &peer, password))
        };
        if let Err(problem) = &outcome {
            tracing::warn!(line = %name, %problem, "line not used");
        }
        out.push(Resolved {
            name,
            peer,
            outcome,
        });
    }
    out
}

fn resource_line(line: &Line, peer: &str, password: String) -> ResourceLine {
    let spec = &line.spec;
    ResourceLine {
        line: registrar::Line {
            name: peer.to_owned(),
            secret: Some(password),
            nat: spec.nat,
        },
        peer: PeerInfo {
            name: peer.to_owned(),
            codecs: if spec.codecs.is_empty() {
                vec!["ulaw".into()]
            } else {
                spec.codecs.clone()
            },
            nat: spec.nat,
            context: spec.context.clone(),
            ..PeerInfo::default()
        },
        mailboxes: spec.mailbox.iter().cloned().collect(),
    }
}

/// The status each line should show now; patched where it differs from what was
/// last written.
async fn write_status(
    lines: &Api<Line>,
    store: &Store<Line>,
    resolved: &[Resolved],
    core: &Arc<Mutex<SipCore>>,
    written: &mut HashMap<String, LineStatus>,
) {
    let wanted: Vec<(String, LineStatus)> = {
        let core = core.lock().unwrap_or_else(|e| e.into_inner());
        resolved
            .iter()
            .map(|r| {
                let generation = store
                    .state()
                    .iter()
                    .find(|l| l.name_any() == r.name)
                    .and_then(|l| l.metadata.generation);
                (r.name.clone(), status_of(&core, r, generation))
            })
            .collect()
    };
    written.retain(|name, _| resolved.iter().any(|r| &r.name == name));
    for (name, status) in wanted {
        if written.get(&name) == Some(&status) {
            continue;
        }
        // Every field named, nulls included: a merge patch leaves out what it omits, and
        // gone contacts or a solved problem must be cleared.
        let patch = serde_json::json!({ "status": {
            "registered": status.registered,
            "contacts": status.contacts,
            "reachable": status.reachable,
            "lastSeen": status.last_seen,
            "observedGeneration": status.observed_generation,
            "problem": status.problem,
        }});
        match lines
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {
                written.insert(name, status);
            }
            // Deleted meanwhile, or the API server is away: the next tick tries again.
            Err(e) => tracing::debug!(line = %name, error = %e, "line status not written"),
        }
    }
}

fn status_of(core: &SipCore, line: &Resolved, generation: Option<i64>) -> LineStatus {
    let registrations = match &line.outcome {
        Ok(_) => core.registrations(Some(&line.peer)),
        Err(_) => Vec::new(),
    };
    let contacts: Vec<Contact> = registrations
        .iter()
        .map(|(_, b)| Contact {
            uri: b.contact.clone(),
            expires: rfc3339(b.expires_at),
            source: Some(b.source.to_string()),
            user_agent: b.user_agent.clone(),
        })
        .collect();
    let reachable = (!registrations.is_empty()).then(|| {
        registrations
            .iter()
            .any(|(l, b)| core.reachable(l, &b.contact))
    });
    LineStatus {
        registered: !contacts.is_empty(),
        contacts,
        last_seen: registrations
            .iter()
            .map(|(_, b)| b.registered_at)
            .max()
            .filter(|at| *at > 0)
            .map(rfc3339),
        reachable,
        observed_generation: generation,
        problem: line.outcome.as_ref().err().cloned(),
    }
}

fn rfc3339(unix: u64) -> String {
    chrono::DateTime::from_timestamp(i64::try_from(unix).unwrap_or(i64::MAX), 0)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
}
