//! Mailboxes as Kubernetes resources (`Mailbox` of `phone.dev`): the voicemail watches
//! them in its namespace and uses them beside voicemail.conf without a restart. The
//! PIN comes from a Secret, read again every resync, so a changed PIN is the one the
//! next login asks for. A `Mailbox` that names a box of voicemail.conf is not merged;
//! its status says why. The status shows the box's NEW and OLD counts, written only
//! when they change.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use asterisk_conf::voicemail::Mailbox as ConfMailbox;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::ResourceExt;
use phone_kube::{Mailbox, MailboxStatus};
use service_runtime::Shutdown;

use crate::service::Shared;

/// How often the counts are looked at for the status.
const STATUS_EVERY: Duration = Duration::from_secs(5);

/// Watches `Mailbox`es in `namespace` until `shutdown`.
pub async fn run(
    client: kube::Client,
    namespace: String,
    resync: Duration,
    shared: Arc<Shared>,
    shutdown: Shutdown,
) {
    let api: Api<Mailbox> = Api::namespaced(client.clone(), &namespace);
    let secrets: Api<Secret> = Api::namespaced(client, &namespace);
    let (store, writer) = reflector::store::<Mailbox>();
    let mut events = watcher(api.clone(), watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        .boxed();
    let mut resync_tick = tokio::time::interval(resync);
    let mut status_tick = tokio::time::interval(STATUS_EVERY);
    let mut generations: HashMap<String, Option<i64>> = HashMap::new();
    let mut problems: HashMap<String, Option<String>> = HashMap::new();
    let mut written: HashMap<String, MailboxStatus> = HashMap::new();
    let (mut ready, mut dirty) = (false, false);
    loop {
        tokio::select! {
            _ = shutdown.triggered() => return,
            event = events.next() => match event {
                Some(Ok(watcher::Event::InitDone)) => (ready, dirty) = (true, true),
                Some(Ok(watcher::Event::InitApply(m))) => {
                    generations.insert(m.name_any(), m.metadata.generation);
                }
                // The voicemail's own status writes come back too: only a spec change
                // (a new generation) needs the boxes applied again.
                Some(Ok(watcher::Event::Apply(m))) => {
                    dirty |= generations.insert(m.name_any(), m.metadata.generation)
                        != Some(m.metadata.generation);
                }
                Some(Ok(watcher::Event::Delete(m))) => {
                    generations.remove(&m.name_any());
                    dirty = true;
                }
                Some(Ok(watcher::Event::Init)) => {}
                Some(Err(e)) => tracing::warn!(error = %e, "watching mailboxes failed; retrying"),
                None => return,
            },
            _ = resync_tick.tick() => dirty = ready,
            _ = status_tick.tick() => {
                if ready {
                    write_status(&api, &store, &shared, &problems, &mut written).await;
                }
            }
        }
        if dirty && ready {
            dirty = false;
            let (boxes, found) = resolve(&store, &secrets, &shared).await;
            tracing::info!(mailboxes = boxes.len(), "mailbox resources applied");
            shared.set_resource_mailboxes(boxes);
            problems = found;
            write_status(&api, &store, &shared, &problems, &mut written).await;
        }
    }
}

/// The usable mailboxes, and each resource's problem (if any).
async fn resolve(
    store: &Store<Mailbox>,
    secrets: &Api<Secret>,
    shared: &Shared,
) -> (Vec<ConfMailbox>, HashMap<String, Option<String>>) {
    let mut boxes = Vec::new();
    let mut problems = HashMap::new();
    let mut seen = HashSet::new();
    let mut resources = store.state();
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
            phone_kube::read_secret(secrets, &spec.pin_ref)
                .await
                .map(|pin| resource.to_conf(pin))
        };
        match outcome {
            Ok(mailbox) => {
                boxes.push(mailbox);
                problems.insert(name, None);
            }
            Err(problem) => {
                tracing::warn!(mailbox = %name, %problem, "mailbox not used");
                problems.insert(name, Some(problem));
            }
        }
    }
    (boxes, problems)
}

/// NEW and OLD (and the problem) of each resource, patched where they changed.
async fn write_status(
    api: &Api<Mailbox>,
    store: &Store<Mailbox>,
    shared: &Shared,
    problems: &HashMap<String, Option<String>>,
    written: &mut HashMap<String, MailboxStatus>,
) {
    written.retain(|name, _| problems.contains_key(name));
    for resource in store.state() {
        let name = resource.name_any();
        let Some(problem) = problems.get(&name) else {
            continue;
        };
        let context = resource.context();
        let (new, old) = if problem.is_none() {
            match shared
                .message_counts(&context, &resource.spec.mailbox)
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
        let status = MailboxStatus {
            new,
            old,
            problem: problem.clone(),
        };
        if written.get(&name) == Some(&status) {
            continue;
        }
        let patch = serde_json::json!({ "status": {
            "new": status.new,
            "old": status.old,
            "problem": status.problem,
        }});
        match api
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {
                written.insert(name, status);
            }
            Err(e) => tracing::debug!(mailbox = %name, error = %e, "mailbox status not written"),
        }
    }
}
