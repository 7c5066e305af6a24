//! The durable outbox: every accepted delivery is stored before `Deliver` answers, and
//! a scheduler sends what is due, retrying temporary failures with exponential backoff
//! until a deadline, so that a restart, an SMTP outage or a storage outage loses no
//! email and sends none twice.
//!
//! Layout, in the S3 bucket under `outbox/` or in the data folder:
//!
//! - `outbox/mail/<id>.<kind>.eml`: the finished message (`kind` is `email` or `pager`),
//!   written first, so that what is sent never depends on the configuration or the
//!   recording at the time of sending;
//! - `outbox/pending/<id>.json`: the [`Record`], written last; its presence is the
//!   delivery;
//! - `outbox/sent/<id>.json` and `outbox/failed/<id>.json`: the final record, written
//!   before the pending one is removed, so a lookup always finds one of them. Sent
//!   records are what makes a repeated request send nothing; an S3 lifecycle rule on
//!   `outbox/sent/` bounds how long they are kept. A failed delivery keeps its `.eml`
//!   for the operator.
//!
//! A record is rewritten after each mail of a delivery is sent (the email and the pager
//! mail are two), so a retry sends only what has not gone. The one window left is a
//! crash between the SMTP server's acceptance and that write; the Message-ID is stable,
//! so such a duplicate is recognisably the same email.
//!
//! One scheduler sends from an outbox: it loads the pending records at start and owns
//! them from then on. Several mailers may share one outbox (S3) under a
//! `coordination.k8s.io` Lease ([`Outbox::under_lease`]): each stores the deliveries it
//! accepts, only the holder sends, and it reads the stored pending records again every
//! [`RESCAN_EVERY`] to find the others'. A holder that loses the Lease stops its sends
//! at once; the next holder starts from what is stored, and a delivery whose final
//! record exists is not sent again.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use phone_blobs::{BlobError, Blobs};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use service_runtime::{telemetry, Shutdown};
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::smtp::{SendError, Smtp};

/// When to try again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// The wait after the first failure; it doubles after each further one.
    pub first: Duration,
    /// The longest wait between two attempts.
    pub max: Duration,
    /// How long after the delivery was accepted it is given up.
    pub give_up: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            first: Duration::from_secs(60),
            max: Duration::from_secs(3600),
            give_up: Duration::from_secs(5 * 24 * 3600),
        }
    }
}

impl Policy {
    /// The wait after `failures` failed attempts (1 or more).
    pub fn delay(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(30);
        self.first
            .saturating_mul(1u32 << doublings)
            .min(self.max)
            .max(Duration::from_millis(1))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Pending,
    Sent,
    Failed,
}

/// One mail of a delivery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mail {
    /// `email` or `pager`: the `.eml` is `outbox/mail/<id>.<kind>.eml`.
    pub kind: String,
    /// The Message-ID header.
    pub header_id: String,
    /// The SMTP envelope.
    pub from: String,
    pub to: Vec<String>,
    pub sent: bool,
}

/// A delivery as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The voicemail message's id.
    pub id: String,
    pub context: String,
    pub mailbox: String,
    pub state: State,
    /// Unix milliseconds.
    pub created_ms: i64,
    pub attempts: u32,
    pub next_attempt_ms: i64,
    #[serde(default)]
    pub last_error: String,
    pub mails: Vec<Mail>,
    /// The W3C `traceparent` of the request that made the delivery (in the call's
    /// trace): the first attempt is its child, later ones link to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<String>,
}

pub fn pending_key(id: &str) -> String {
    format!("outbox/pending/{id}.json")
}

fn final_key(state: State, id: &str) -> String {
    match state {
        State::Sent => format!("outbox/sent/{id}.json"),
        State::Failed => format!("outbox/failed/{id}.json"),
        State::Pending => pending_key(id),
    }
}

pub fn mail_key(id: &str, kind: &str) -> String {
    format!("outbox/mail/{id}.{kind}.eml")
}

pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Where mail goes: an SMTP server, or (the embedded default without one) `.eml` files
/// in a folder.
#[derive(Clone)]
pub enum Transport {
    Smtp(Smtp),
    Folder(PathBuf),
}

impl Transport {
    fn name(&self) -> &'static str {
        match self {
            Transport::Smtp(_) => "smtp",
            Transport::Folder(_) => "folder",
        }
    }

    async fn send(&self, id: &str, mail: &Mail, eml: &[u8]) -> Result<(), SendError> {
        match self {
            Transport::Smtp(smtp) => {
                let address = |a: &str| {
                    a.parse::<lettre::Address>()
                        .map_err(|e| SendError::Permanent(format!("address {a:?}: {e}")))
                };
                let to = mail
                    .to
                    .iter()
                    .map(|a| address(a))
                    .collect::<Result<Vec<_>, _>>()?;
                let envelope = lettre::address::Envelope::new(Some(address(&mail.from)?), to)
                    .map_err(|e| SendError::Permanent(e.to_string()))?;
                smtp.send_raw(&envelope, eml).await
            }
            Transport::Folder(dir) => {
                let write = async {
                    tokio::fs::create_dir_all(dir).await?;
                    let path = dir.join(format!("{id}.{}.eml", mail.kind));
                    let tmp = path.with_extension("partial");
                    tokio::fs::write(&tmp, eml).await?;
                    tokio::fs::rename(&tmp, &path).await
                };
                write
                    .await
                    .map_err(|e| SendError::Temporary(format!("{}: {e}", dir.display())))
            }
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

/// What the outbox exports.
#[derive(Clone, Default)]
pub struct Metrics {
    pub queue_depth: Gauge,
    pub oldest_pending_age_seconds: Gauge,
    pub sent: Counter,
    pub retries: Counter,
    pub failed: Family<ReasonLabel, Counter>,
    pub storage_errors: Counter,
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        // Every reason from the start, so that the series exist at zero.
        for reason in ["permanent", "expired", "broken"] {
            let _ = m.failed.get_or_create(&ReasonLabel { reason });
        }
        registry.register(
            "mailer_queue_depth",
            "Deliveries waiting to be sent",
            m.queue_depth.clone(),
        );
        registry.register(
            "mailer_oldest_pending_age_seconds",
            "Age of the oldest delivery waiting to be sent",
            m.oldest_pending_age_seconds.clone(),
        );
        registry.register("mailer_sent", "Deliveries sent", m.sent.clone());
        registry.register(
            "mailer_retries",
            "Delivery attempts that failed temporarily and will be retried",
            m.retries.clone(),
        );
        registry.register(
            "mailer_failed",
            "Deliveries given up: permanent (a 5xx answer), expired (retries ran out) or broken (the stored mail is gone)",
            m.failed.clone(),
        );
        registry.register(
            "mailer_storage_errors",
            "Failed outbox or recording storage operations",
            m.storage_errors.clone(),
        );
        m
    }
}

struct Entry {
    record: Record,
    /// Being sent right now.
    busy: bool,
    /// The stored record is behind this one (storage failed when it was written).
    dirty: bool,
}

/// Under a Lease, how often the holder reads the stored pending deliveries again (to
/// find those the other replicas accepted).
pub const RESCAN_EVERY: Duration = Duration::from_secs(5);

/// The outbox: stored deliveries and the scheduler's view of them.
pub struct Outbox {
    blobs: Blobs,
    policy: Policy,
    metrics: Metrics,
    /// This replica sends: it holds the outbox's Lease, or there is none.
    scheduling: AtomicBool,
    /// Other replicas share the outbox (see [`Outbox::under_lease`]).
    leased: AtomicBool,
    entries: Mutex<BTreeMap<String, Entry>>,
    wake: Notify,
    /// One `Deliver` at a time per message id.
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// How one attempt ended.
enum Outcome {
    Sent,
    Temporary(String),
    Permanent(String, &'static str),
}

impl Outbox {
    pub fn new(blobs: Blobs, policy: Policy, metrics: Metrics) -> Arc<Self> {
        Arc::new(Self {
            blobs,
            policy,
            metrics,
            scheduling: AtomicBool::new(true),
            leased: AtomicBool::new(false),
            entries: Mutex::new(BTreeMap::new()),
            wake: Notify::new(),
            locks: Mutex::new(HashMap::new()),
        })
    }

    pub fn policy(&self) -> Policy {
        self.policy
    }

    /// Other replicas share this outbox: this one sends only while
    /// [`Outbox::set_scheduling`] says so (it holds the Lease).
    pub fn under_lease(&self) {
        self.leased.store(true, Ordering::SeqCst);
        self.set_scheduling(false);
    }

    /// Whether this replica sends now.
    pub fn set_scheduling(&self, on: bool) {
        if self.scheduling.swap(on, Ordering::SeqCst) != on {
            tracing::info!(sending = on, "outbox ownership changed");
        }
        self.wake.notify_one();
    }

    pub fn scheduling(&self) -> bool {
        self.scheduling.load(Ordering::SeqCst)
    }

    /// Holds off other `Deliver`s of the same id until the guard is dropped.
    pub async fn lock(&self, id: &str) -> IdGuard<'_> {
        let lock = self
            .locks
            .lock()
            .unwrap()
            .entry(id.to_owned())
            .or_default()
            .clone();
        let guard = lock.clone().lock_owned().await;
        IdGuard {
            outbox: self,
            id: id.to_owned(),
            lock,
            _guard: Some(guard),
        }
    }

    /// The delivery of `id`: the scheduler's copy, else the stored one.
    pub async fn lookup(&self, id: &str) -> Result<Option<Record>, BlobError> {
        if let Some(entry) = self.entries.lock().unwrap().get(id) {
            return Ok(Some(entry.record.clone()));
        }
        for state in [State::Pending, State::Sent, State::Failed] {
            let key = final_key(state, id);
            if let Some(bytes) = self.read(&key).await? {
                match serde_json::from_slice::<Record>(&bytes) {
                    Ok(record) => return Ok(Some(record)),
                    Err(e) => tracing::error!(%key, error = %e, "unreadable outbox record"),
                }
            }
        }
        Ok(None)
    }

    async fn read(&self, key: &str) -> Result<Option<Vec<u8>>, BlobError> {
        self.blobs.get(key).await.inspect_err(|_| {
            self.metrics.storage_errors.inc();
        })
    }

    async fn write(&self, key: &str, body: Vec<u8>, content_type: &str) -> Result<(), BlobError> {
        self.blobs
            .put(key, body, content_type)
            .await
            .inspect_err(|_| {
                self.metrics.storage_errors.inc();
            })
    }

    /// Stores a new delivery (its mails first, the record last) and hands it to the
    /// scheduler. Returns once it is stored.
    pub async fn add(&self, record: Record, emls: Vec<(String, Vec<u8>)>) -> Result<(), BlobError> {
        for (kind, eml) in emls {
            self.write(&mail_key(&record.id, &kind), eml, "message/rfc822")
                .await?;
        }
        self.write(&pending_key(&record.id), json(&record), "application/json")
            .await?;
        tracing::info!(id = %record.id, mailbox = %record.mailbox, mails = record.mails.len(), "delivery stored");
        if !self.scheduling() {
            // The Lease's holder finds it in storage and sends it.
            return Ok(());
        }
        self.entries.lock().unwrap().insert(
            record.id.clone(),
            Entry {
                record,
                busy: false,
                dirty: false,
            },
        );
        self.update_gauges();
        self.wake.notify_one();
        Ok(())
    }

    /// The deliveries still to be sent: the scheduler's, or (on a replica that does not
    /// send) the stored ones.
    pub async fn pending(&self) -> Result<Vec<Record>, BlobError> {
        if !self.scheduling() {
            return self.stored_pending().await;
        }
        Ok(self.scheduled())
    }

    fn scheduled(&self) -> Vec<Record> {
        self.entries
            .lock()
            .unwrap()
            .values()
            .filter(|e| e.record.state == State::Pending)
            .map(|e| e.record.clone())
            .collect()
    }

    /// Loads the stored pending deliveries; tries again until storage answers.
    async fn resume(&self, shutdown: &Shutdown) {
        loop {
            match self.load_pending().await {
                Ok(n) => {
                    if n > 0 {
                        tracing::info!(deliveries = n, "pending deliveries resumed");
                    }
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the outbox yet; trying again");
                    tokio::select! {
                        _ = shutdown.triggered() => return,
                        _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                    }
                }
            }
        }
    }

    /// The pending records in storage.
    async fn stored_pending(&self) -> Result<Vec<Record>, BlobError> {
        let keys = self.blobs.list("outbox/pending/").await.inspect_err(|_| {
            self.metrics.storage_errors.inc();
        })?;
        let mut loaded = Vec::new();
        for key in keys.iter().filter(|k| k.ends_with(".json")) {
            let Some(bytes) = self.read(key).await? else {
                continue;
            };
            match serde_json::from_slice::<Record>(&bytes) {
                Ok(record) if record.state == State::Pending => loaded.push(record),
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(%key, error = %e, "unreadable outbox record; left as it is")
                }
            }
        }
        Ok(loaded)
    }

    /// Adds the stored pending records the scheduler does not have yet; returns how
    /// many were new. A record whose final one exists too was finished by a sender that
    /// stopped before removing it (a crash, or a replica that lost the Lease): it is
    /// tidied, not sent again.
    async fn load_pending(&self) -> Result<usize, BlobError> {
        let mut loaded = self.stored_pending().await?;
        {
            let entries = self.entries.lock().unwrap();
            loaded.retain(|record| !entries.contains_key(&record.id));
        }
        let mut new = 0;
        for record in loaded {
            if let Some(done) = self.finished(&record.id).await? {
                tracing::info!(id = %record.id, state = ?done.state, "delivery already finished; not sent again");
                self.persist(done, false).await;
                continue;
            }
            let mut entries = self.entries.lock().unwrap();
            entries.entry(record.id.clone()).or_insert_with(|| {
                new += 1;
                Entry {
                    record,
                    busy: false,
                    dirty: false,
                }
            });
        }
        self.update_gauges();
        Ok(new)
    }

    /// The final (sent or failed) record of `id`, if there is one.
    async fn finished(&self, id: &str) -> Result<Option<Record>, BlobError> {
        for state in [State::Sent, State::Failed] {
            if let Some(bytes) = self.read(&final_key(state, id)).await? {
                if let Ok(done) = serde_json::from_slice::<Record>(&bytes) {
                    return Ok(Some(done));
                }
            }
        }
        Ok(None)
    }

    fn update_gauges(&self) {
        let entries = self.entries.lock().unwrap();
        let pending = entries
            .values()
            .filter(|e| e.record.state == State::Pending);
        let (mut depth, mut oldest) = (0i64, None::<i64>);
        for entry in pending {
            depth += 1;
            let created = entry.record.created_ms;
            oldest = Some(oldest.map_or(created, |o| o.min(created)));
        }
        drop(entries);
        self.metrics.queue_depth.set(depth);
        self.metrics
            .oldest_pending_age_seconds
            .set(oldest.map_or(0, |o| (now_ms() - o).max(0) / 1000));
    }

    /// The scheduler: resumes stored deliveries, then sends each when it is due, up to
    /// `parallel` at a time, until `shutdown` (the sends in progress are finished).
    pub async fn run(self: Arc<Self>, transport: Transport, parallel: usize, shutdown: Shutdown) {
        let mut running: JoinSet<()> = JoinSet::new();
        let parallel = parallel.max(1);
        let mut sending = false;
        let mut scanned = Instant::now();
        loop {
            if shutdown.is_triggered() {
                break;
            }
            match (sending, self.scheduling()) {
                (false, true) => {
                    // At start, or taking over: what is stored is the truth.
                    self.entries.lock().unwrap().clear();
                    self.resume(&shutdown).await;
                    (sending, scanned) = (true, Instant::now());
                }
                (true, false) => {
                    // Another replica sends from now on: the sends in progress stop
                    // (as a crash would stop them), and it starts from storage.
                    running.abort_all();
                    while running.join_next().await.is_some() {}
                    self.entries.lock().unwrap().clear();
                    self.update_gauges();
                    sending = false;
                }
                _ => {}
            }
            if !sending {
                tokio::select! {
                    _ = shutdown.triggered() => break,
                    _ = self.wake.notified() => {}
                    _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                }
                continue;
            }
            if self.leased.load(Ordering::SeqCst) && scanned.elapsed() >= RESCAN_EVERY {
                scanned = Instant::now();
                match self.load_pending().await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(
                        deliveries = n,
                        "deliveries stored by other replicas taken up"
                    ),
                    Err(e) => tracing::warn!(error = %e, "cannot read the outbox; trying again"),
                }
            }
            let now = now_ms();
            let mut next_due: Option<i64> = None;
            let mut due = Vec::new();
            let mut dirty = Vec::new();
            {
                let mut entries = self.entries.lock().unwrap();
                for entry in entries.values_mut() {
                    if entry.busy {
                        continue;
                    }
                    if entry.dirty {
                        dirty.push(entry.record.clone());
                        continue;
                    }
                    if entry.record.state != State::Pending {
                        continue;
                    }
                    if entry.record.next_attempt_ms <= now {
                        if running.len() + due.len() < parallel {
                            entry.busy = true;
                            due.push(entry.record.clone());
                        }
                    } else {
                        let at = entry.record.next_attempt_ms;
                        next_due = Some(next_due.map_or(at, |n| n.min(at)));
                    }
                }
            }
            for record in dirty {
                self.persist(record, false).await;
            }
            for record in due {
                let outbox = self.clone();
                let transport = transport.clone();
                running.spawn(async move { outbox.attempt(record, &transport).await });
            }
            self.update_gauges();
            // Wake for the next due delivery, a new one, a finished send, or every few
            // seconds (records left dirty by a storage outage, the age gauge).
            let wait = next_due
                .map(|at| Duration::from_millis((at - now).clamp(0, 5000) as u64))
                .unwrap_or(Duration::from_secs(5))
                .min(RESCAN_EVERY);
            tokio::select! {
                _ = shutdown.triggered() => break,
                _ = self.wake.notified() => {}
                Some(_) = running.join_next(), if !running.is_empty() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
        while running.join_next().await.is_some() {}
        tracing::info!(
            pending = self.scheduled().len(),
            "mailer scheduler stopped; pending deliveries stay in the outbox"
        );
    }

    /// One attempt at a delivery, in its span: the first in the call's trace, a retry
    /// (minutes or hours later) in a trace of its own that links to the call's.
    async fn attempt(&self, record: Record, transport: &Transport) {
        let span = tracing::info_span!(
            "mailer.attempt",
            id = %record.id,
            mailbox = %record.mailbox,
            attempt = record.attempts + 1,
            outcome = tracing::field::Empty,
        );
        if let Some(trace) = &record.trace {
            if record.attempts == 0 {
                telemetry::set_stored_parent(&span, trace);
            } else {
                telemetry::link_stored(&span, trace);
            }
        }
        self.attempt_in_span(record, transport)
            .instrument(span)
            .await;
    }

    /// Each mail not sent yet, in order.
    async fn attempt_in_span(&self, mut record: Record, transport: &Transport) {
        record.attempts += 1;
        let mut outcome = Outcome::Sent;
        for i in 0..record.mails.len() {
            if record.mails[i].sent {
                continue;
            }
            let mail = record.mails[i].clone();
            let eml = match self.read(&mail_key(&record.id, &mail.kind)).await {
                Ok(Some(eml)) => eml,
                Ok(None) => {
                    outcome = Outcome::Permanent(
                        format!("the stored {} mail is missing from the outbox", mail.kind),
                        "broken",
                    );
                    break;
                }
                Err(e) => {
                    outcome = Outcome::Temporary(e.to_string());
                    break;
                }
            };
            let send = tracing::info_span!(
                "mailer.send",
                kind = %mail.kind,
                transport = transport.name(),
                recipients = mail.to.len(),
                bytes = eml.len(),
                error = tracing::field::Empty,
            );
            let sent = transport
                .send(&record.id, &mail, &eml)
                .instrument(send.clone())
                .await;
            if let Err(e) = &sent {
                send.record("error", tracing::field::display(e));
            }
            drop(send);
            match sent {
                Ok(()) => {
                    tracing::info!(id = %record.id, kind = %mail.kind, to = ?mail.to, attempt = record.attempts, "mail sent");
                    record.mails[i].sent = true;
                    if record.mails.iter().any(|m| !m.sent) {
                        // Remember it before the next mail, so a retry skips this one.
                        self.persist(record.clone(), true).await;
                    }
                }
                Err(SendError::Temporary(e)) => {
                    outcome = Outcome::Temporary(e);
                    break;
                }
                Err(SendError::Permanent(e) | SendError::Build(e)) => {
                    outcome = Outcome::Permanent(e, "permanent");
                    break;
                }
            }
        }
        let now = now_ms();
        tracing::Span::current().record(
            "outcome",
            match &outcome {
                Outcome::Sent => "sent",
                Outcome::Permanent(..) => "failed",
                Outcome::Temporary(_) => "temporary failure",
            },
        );
        match outcome {
            Outcome::Sent => {
                record.state = State::Sent;
                record.last_error.clear();
                self.metrics.sent.inc();
            }
            Outcome::Permanent(error, reason) => {
                tracing::error!(id = %record.id, mailbox = %record.mailbox, %error, "delivery failed for good; not retried");
                record.state = State::Failed;
                record.last_error = error;
                self.metrics
                    .failed
                    .get_or_create(&ReasonLabel { reason })
                    .inc();
            }
            Outcome::Temporary(error) => {
                let age = Duration::from_millis((now - record.created_ms).max(0) as u64);
                record.last_error = error;
                if age >= self.policy.give_up {
                    tracing::error!(id = %record.id, mailbox = %record.mailbox, attempts = record.attempts, error = %record.last_error, "delivery given up: retries ran out");
                    record.state = State::Failed;
                    record.last_error = format!(
                        "gave up after {} attempts: {}",
                        record.attempts, record.last_error
                    );
                    self.metrics
                        .failed
                        .get_or_create(&ReasonLabel { reason: "expired" })
                        .inc();
                } else {
                    let delay = self.policy.delay(record.attempts);
                    tracing::warn!(id = %record.id, attempt = record.attempts, retry_in = ?delay, error = %record.last_error, "delivery failed; will retry");
                    record.next_attempt_ms = now + delay.as_millis() as i64;
                    self.metrics.retries.inc();
                }
            }
        }
        self.persist(record, false).await;
    }

    /// Writes a record where its state says, and updates the scheduler's copy; when
    /// storage fails the copy is marked dirty and written again later (nothing is sent
    /// again meanwhile). `busy` while the attempt goes on.
    async fn persist(&self, record: Record, busy: bool) {
        let id = record.id.clone();
        let stored = async {
            match record.state {
                State::Pending => {
                    self.write(&pending_key(&id), json(&record), "application/json")
                        .await
                }
                State::Sent | State::Failed => {
                    self.write(
                        &final_key(record.state, &id),
                        json(&record),
                        "application/json",
                    )
                    .await?;
                    self.blobs.delete(&pending_key(&id)).await?;
                    if record.state == State::Sent {
                        for mail in &record.mails {
                            self.blobs.delete(&mail_key(&id, &mail.kind)).await?;
                        }
                    }
                    Ok(())
                }
            }
        }
        .await;
        let mut entries = self.entries.lock().unwrap();
        match stored {
            Ok(()) if record.state != State::Pending => {
                entries.remove(&id);
            }
            ok_or_err => {
                if let Err(e) = &ok_or_err {
                    self.metrics.storage_errors.inc();
                    tracing::warn!(%id, error = %e, "cannot update the outbox record; will write it again");
                }
                entries.insert(
                    id,
                    Entry {
                        record,
                        busy,
                        dirty: ok_or_err.is_err(),
                    },
                );
            }
        }
        drop(entries);
        self.wake.notify_one();
    }
}

/// Exclusive use of one message id (see [`Outbox::lock`]).
pub struct IdGuard<'a> {
    outbox: &'a Outbox,
    id: String,
    lock: Arc<tokio::sync::Mutex<()>>,
    _guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Drop for IdGuard<'_> {
    fn drop(&mut self) {
        self._guard = None;
        let mut locks = self.outbox.locks.lock().unwrap();
        // The map holds one reference and this guard another: nobody else waits.
        if Arc::strong_count(&self.lock) == 2 {
            locks.remove(&self.id);
        }
    }
}

fn json(record: &Record) -> Vec<u8> {
    serde_json::to_vec_pretty(record).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_the_first_wait_to_the_cap() {
        let policy = Policy::default();
        let waits: Vec<u64> = (1..=9).map(|n| policy.delay(n).as_secs()).collect();
        assert_eq!(waits, [60, 120, 240, 480, 960, 1920, 3600, 3600, 3600]);
        assert!(
            policy.delay(1) <= Duration::from_secs(300),
            "first retry within 5 minutes"
        );
        assert_eq!(policy.delay(u32::MAX), Duration::from_secs(3600));
        assert_eq!(policy.give_up, Duration::from_secs(5 * 24 * 3600));
    }
}
