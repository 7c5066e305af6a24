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

use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::ResourceExt;
use phone_kube::{Contact, Line, LineStatus, SecretReader};
use service_runtime::Shutdown;

use crate::driver::Driver;
use crate::endpoint::{PeerInfo, ResourceLine, SipCore};
use crate::registrar;

/// The shortest time between two status writes of the edge.
pub const STATUS_EVERY: Duration = Duration::from_secs(2);
/// Secrets are read again this often (a changed password applies then).
pub const RESYNC_EVERY: Duration = Duration::from_secs(30);

/// A line resource as the edge uses it, or why it cannot.
struct Resolved {
    name: String,
    peer: String,
    /// The spec generation it was resolved from.
    generation: Option<i64>,
    outcome: Result<ResourceLine, String>,
}

/// Watches `Line`s in `namespace` until `shutdown`: applies them to the SIP core (after
/// each spec change and every [`RESYNC_EVERY`]) and writes their status.
pub async fn run(
    client: kube::Client,
    namespace: String,
    edge: Arc<Driver>,
    file_peers: HashSet<String>,
    shutdown: Shutdown,
) {
    let lines: Api<Line> = Api::namespaced(client.clone(), &namespace);
    let secrets: Api<Secret> = Api::namespaced(client, &namespace);
    let resolved: Arc<Mutex<Vec<Resolved>>> = Arc::default();
    let file_peers = Arc::new(file_peers);
    tokio::spawn(status_task(
        lines.clone(),
        resolved.clone(),
        edge.clone(),
        shutdown.clone(),
    ));
    phone_kube::on_spec_changes(lines, RESYNC_EVERY, shutdown.triggered(), |found| {
        let (secrets, file_peers) = (secrets.clone(), file_peers.clone());
        let (edge, resolved) = (edge.clone(), resolved.clone());
        async move {
            let now = resolve(found, SecretReader::new(secrets), &file_peers).await;
            let usable: Vec<ResourceLine> = now
                .iter()
                .filter_map(|r| r.outcome.as_ref().ok().cloned())
                .collect();
            let count = usable.len();
            let mut gone: Vec<String> = edge
                .each(|core| core.set_resource_lines(usable.clone()))
                .into_iter()
                .flatten()
                .collect();
            gone.sort();
            gone.dedup();
            tracing::info!(lines = count, ended = gone.len(), "line resources applied");
            *resolved.lock().unwrap_or_else(|e| e.into_inner()) = now;
        }
    })
    .await;
}

/// Writes the lines' status every [`STATUS_EVERY`] until `shutdown`.
async fn status_task(
    lines: Api<Line>,
    resolved: Arc<Mutex<Vec<Resolved>>>,
    edge: Arc<Driver>,
    shutdown: Shutdown,
) {
    let mut written: HashMap<String, LineStatus> = HashMap::new();
    loop {
        tokio::select! {
            _ = shutdown.triggered() => return,
            _ = tokio::time::sleep(STATUS_EVERY) => {}
        }
        write_status(&lines, &resolved, &edge, &mut written).await;
    }
}

/// Every line, with its password read from its Secret.
async fn resolve(
    mut lines: Vec<Arc<Line>>,
    mut secrets: SecretReader,
    file_peers: &HashSet<String>,
) -> Vec<Resolved> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
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
            secrets
                .read(&line.spec.secret_ref)
                .await
                .map(|password| resource_line(&line, &peer, password))
        };
        if let Err(problem) = &outcome {
            tracing::warn!(line = %name, %problem, "line not used");
        }
        out.push(Resolved {
            name,
            peer,
            generation: line.metadata.generation,
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
            caller_id: spec.caller_id.as_deref().map(|text| {
                let parsed = asterisk_conf::CallerId::parse(text);
                (parsed.number, parsed.name)
            }),
            location: spec
                .emergency_location
                .as_ref()
                .map(|address| address.pidf_lo(&format!("pres:{peer}@phone"))),
            ..PeerInfo::default()
        },
        mailboxes: spec.mailbox.iter().cloned().collect(),
    }
}

/// The status each line should show now; patched where it differs from what was
/// last written.
async fn write_status(
    lines: &Api<Line>,
    resolved: &Mutex<Vec<Resolved>>,
    edge: &Driver,
    written: &mut HashMap<String, LineStatus>,
) {
    let wanted: Vec<(String, LineStatus)> = {
        let resolved = resolved.lock().unwrap_or_else(|e| e.into_inner());
        written.retain(|name, _| resolved.iter().any(|r| &r.name == name));
        resolved
            .iter()
            .map(|r| {
                (
                    r.name.clone(),
                    edge.with_line(&r.peer, |core| status_of(core, r)),
                )
            })
            .collect()
    };
    phone_kube::write_changed(lines, wanted, written, |status| {
        serde_json::json!({
            "registered": status.registered,
            "contacts": status.contacts,
            "reachable": status.reachable,
            "lastSeen": status.last_seen,
            "observedGeneration": status.observed_generation,
            "problem": status.problem,
        })
    })
    .await;
}

fn status_of(core: &SipCore, line: &Resolved) -> LineStatus {
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
        observed_generation: line.generation,
        problem: line.outcome.as_ref().err().cloned(),
    }
}

pub(crate) fn rfc3339(unix: u64) -> String {
    chrono::DateTime::from_timestamp(i64::try_from(unix).unwrap_or(i64::MAX), 0)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
}
