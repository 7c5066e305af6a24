//! Mailboxes as Kubernetes resources (`Mailbox` of `phone.dev`): the voicemail watches
//! them in its namespace and uses them beside voicemail.conf without a restart. The
//! PIN comes from a Secret, read again every resync, so a changed PIN is the one the
//! next login asks for. A `Mailbox` that names a box of voicemail.conf is not merged;
//! its status says why. The status shows the box's NEW and OLD counts, written only
//! when they change.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use asterisk_conf::voicemail::Mailbox as ConfMailbox;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::ResourceExt;
use phone_kube::{Mailbox, MailboxStatus, SecretReader};
use service_runtime::Shutdown;

use crate::service::Shared;

/// How often the counts are looked at for the status.
const STATUS_EVERY: Duration = Duration::from_secs(5);

/// Each resource, and why it is not used (if so).
type Resolved = Vec<(Arc<Mailbox>, Option<String>)>;

/// Watches `Mailbox`es in `namespace` until `shutdown`: applies them (after each spec
/// change and every `resync`) and writes their status.
pub async fn run(
    client: kube::Client,
    namespace: String,
    resync: Duration,
    shared: Arc<Shared>,
    shutdown: Shutdown,
) {
    let api: Api<Mailbox> = Api::namespaced(client.clone(), &namespace);
    let secrets: Api<Secret> = Api::namespaced(client, &namespace);
    let resolved: Arc<Mutex<Resolved>> = Arc::default();
    tokio::spawn(status_task(
        api.clone(),
        resolved.clone(),
        shared.clone(),
        shutdown.clone(),
    ));
    phone_kube::on_spec_changes(api, resync, shutdown.triggered(), |found| {
        let (secrets, shared, resolved) = (secrets.clone(), shared.clone(), resolved.clone());
        async move {
            let (boxes, now) = resolve(found, SecretReader::new(secrets), &shared).await;
            tracing::info!(mailboxes = boxes.len(), "mailbox resources applied");
            shared.set_resource_mailboxes(boxes);
            *resolved.lock().unwrap_or_else(|e| e.into_inner()) = now;
        }
    })
    .await;
}

/// Writes the boxes' status every [`STATUS_EVERY`] until `shutdown`.
async fn status_task(
    api: Api<Mailbox>,
    resolved: Arc<Mutex<Resolved>>,
    shared: Arc<Shared>,
    shutdown: Shutdown,
) {
    let mut written: HashMap<String, MailboxStatus> = HashMap::new();
    loop {
        tokio::select! {
            _ = shutdown.triggered() => return,
            _ = tokio::time::sleep(STATUS_EVERY) => {}
        }
        let now = resolved.lock().unwrap_or_else(|e| e.into_inner()).clone();
        write_status(&api, &now, &shared, &mut written).await;
    }
}

/// The usable mailboxes, and each resource with its problem (if any).
async fn resolve(
    mut resources: Vec<Arc<Mailbox>>,
    mut secrets: SecretReader,
    shared: &Shared,
) -> (Vec<ConfMailbox>, Resolved) {
    let mut boxes = Vec::new();
    let mut resolved = Vec::new();
    let mut seen = HashSet::new();
    resources.sort_by_key(|m| m.name_any());
    for resource in resources {
        let name = resource.name_any();
        let spec = &resource.spec;
        let context = resource.context();
        let outcome = if shared.conf.mailbox(&context, &spec.mailbox).is_some() {
            Err(format!(
                "voicemail.conf defines {}@{context} too; the file's is used",
                spec.mailbox
            ))
        } else if !seen.insert((context.clone(), spec.mailbox.clone())) {
            Err(format!(
                "another Mailbox defines {}@{context}",
                spec.mailbox
            ))
        } else {
            secrets
                .read(&spec.pin_ref)
                .await
                .map(|pin| resource.to_conf(pin))
        };
        match outcome {
            Ok(mailbox) => {
                boxes.push(mailbox);
                resolved.push((resource, None));
            }
            Err(problem) => {
                tracing::warn!(mailbox = %name, %problem, "mailbox not used");
                resolved.push((resource, Some(problem)));
            }
        }
    }
    (boxes, resolved)
}

/// NEW and OLD (and the problem) of each resource, patched where they changed.
async fn write_status(
    api: &Api<Mailbox>,
    resolved: &Resolved,
    shared: &Shared,
    written: &mut HashMap<String, MailboxStatus>,
) {
    written.retain(|name, _| resolved.iter().any(|(m, _)| &m.name_any() == name));
    let mut wanted = Vec::new();
    for (resource, problem) in resolved {
        let name = resource.name_any();
        let (new, old) = if problem.is_none() {
            match shared
                .message_counts(&resource.context(), &resource.spec.mailbox)
                .await
            {
                Ok(counts) => counts,
                Err(e) => {
                    tracing::debug!(mailbox = %name, error = %e, "no counts for the status");
                    continue;
                }
            }
        } else {
            (0, 0)
        };
        let problem = problem.clone();
        wanted.push((name, MailboxStatus { new, old, problem }));
    }
    phone_kube::write_changed(api, wanted, written, |status| {
        serde_json::json!({
            "new": status.new,
            "old": status.old,
            "problem": status.problem,
        })
    })
    .await;
}
