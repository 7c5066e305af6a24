//! One owner for work that must have a single owner across replicas (the edge's trunk
//! registrations, the mailer's outbox), through a `coordination.k8s.io` Lease, as
//! client-go's leader election does it. The holder renews the Lease every
//! [`Timing::renew`]. Another replica takes it over when the record has not changed for
//! [`Timing::duration`] by its own clock (never by comparing clocks across nodes).
//! Every write carries the resourceVersion it read, so two replicas never both win. A
//! replica that cannot renew in time stops its work before anyone can take over, and a
//! stopping holder gives the Lease up at once.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, ObjectMeta, PostParams};

/// How long a Lease lasts without renewal, and how often the holder renews it.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub duration: Duration,
    pub renew: Duration,
}

impl Timing {
    /// Renewing at a fifth of the duration leaves room for four failed attempts.
    pub fn new(duration: Duration) -> Self {
        Self {
            duration,
            renew: (duration / 5).max(Duration::from_millis(200)),
        }
    }
}

/// What was last seen of the Lease, and when (on this replica's clock).
struct Observed {
    holder: Option<String>,
    renew: Option<MicroTime>,
    at: Instant,
}

/// Holds the Lease `name` of `leases` as `identity` while it can, until `stop`:
/// `set(true)` when this replica may do the work, `set(false)` when it may not (at
/// once, after a renewal too late, and at the end).
pub async fn hold(
    leases: Api<Lease>,
    name: String,
    identity: String,
    timing: Timing,
    mut set: impl FnMut(bool),
    stop: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(stop);
    set(false);
    let mut observed: Option<Observed> = None;
    let mut renewed: Option<Instant> = None;
    loop {
        match attempt(&leases, &name, &identity, timing, &mut observed).await {
            Ok(true) => renewed = Some(Instant::now()),
            Ok(false) => renewed = None,
            Err(e) => tracing::warn!(lease = %name, error = %e, "cannot reach the Lease"),
        }
        // Stop before the Lease can expire for the others: they may take it then.
        let holding = renewed.is_some_and(|at| at.elapsed() < timing.duration - timing.renew);
        set(holding);
        tokio::select! {
            _ = &mut stop => break,
            _ = tokio::time::sleep(timing.renew) => {}
        }
    }
    set(false);
    if renewed.is_some() {
        release(&leases, &name, &identity).await;
    }
}

/// One round: takes or renews the Lease if it may. `Ok(true)` when this replica holds
/// it now.
async fn attempt(
    leases: &Api<Lease>,
    name: &str,
    identity: &str,
    timing: Timing,
    observed: &mut Option<Observed>,
) -> Result<bool, kube::Error> {
    let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
    let seconds = i32::try_from(timing.duration.as_secs().max(1)).unwrap_or(i32::MAX);
    let Some(mut lease) = leases.get_opt(name).await? else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(identity.to_owned()),
                lease_duration_seconds: Some(seconds),
                acquire_time: Some(now.clone()),
                renew_time: Some(now),
                lease_transitions: Some(0),
                ..LeaseSpec::default()
            }),
        };
        return match leases.create(&PostParams::default(), &lease).await {
            Ok(_) => {
                tracing::info!(lease = %name, %identity, "took the Lease");
                Ok(true)
            }
            // Another replica created it first.
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
            Err(e) => Err(e),
        };
    };
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
    let changed = match observed.as_ref() {
        Some(seen) => seen.holder != holder || seen.renew != spec.renew_time,
        None => true,
    };
    if changed {
        *observed = Some(Observed {
            holder: holder.clone(),
            renew: spec.renew_time.clone(),
            at: Instant::now(),
        });
    }
    let mine = holder.as_deref() == Some(identity);
    let expired = observed
        .as_ref()
        .is_some_and(|seen| seen.at.elapsed() >= timing.duration);
    if !(mine || holder.is_none() || expired) {
        return Ok(false);
    }
    if !mine {
        spec.holder_identity = Some(identity.to_owned());
        spec.acquire_time = Some(now.clone());
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
    }
    spec.renew_time = Some(now);
    spec.lease_duration_seconds = Some(seconds);
    // The resourceVersion read above goes back with the write: if another replica
    // wrote in between, this one gets 409 and does not hold the Lease.
    match leases.replace(name, &PostParams::default(), &lease).await {
        Ok(written) => {
            if !mine {
                tracing::info!(lease = %name, %identity, previous = ?holder, "took the Lease");
            }
            *observed = written.spec.map(|spec| Observed {
                holder: spec.holder_identity,
                renew: spec.renew_time,
                at: Instant::now(),
            });
            Ok(true)
        }
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

/// Gives the Lease up (a stopping replica), so another one takes it at once.
async fn release(leases: &Api<Lease>, name: &str, identity: &str) {
    let Ok(Some(mut lease)) = leases.get_opt(name).await else {
        return;
    };
    let Some(spec) = lease.spec.as_mut() else {
        return;
    };
    if spec.holder_identity.as_deref() != Some(identity) {
        return;
    }
    spec.holder_identity = None;
    spec.renew_time = None;
    match leases.replace(name, &PostParams::default(), &lease).await {
        Ok(_) => tracing::info!(lease = %name, "gave the Lease up"),
        Err(e) => tracing::warn!(lease = %name, error = %e, "cannot give the Lease up"),
    }
}
