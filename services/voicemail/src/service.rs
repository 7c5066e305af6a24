//! The voicemail service at work: the gRPC API, one task per session (its RTP socket,
//! a 20 ms clock, the [`Session`] core, storage queries), and one task per session
//! that carries out its changes in order (new message, moves, deletes, greetings,
//! PIN), then tells the mailer and the edge (MWI). A message that storage cannot take
//! is spooled locally and uploaded by the spool task when storage is back.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use asterisk_conf::voicemail::{Mailbox, VoicemailConf};
use chrono::Utc;
use phone_audio::Law;
use phone_proto::edge::v1 as edge;
use phone_proto::mailer::v1 as mailer;
use phone_proto::voicemail::v1 as pb;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use service_runtime::grpc::TracedChannel;
use service_runtime::telemetry;
use service_runtime::Shutdown;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tokio_util::task::TaskTracker;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::audio::{Clip, Prompts, FRAME};
use crate::recorder::Limits;
use crate::rtp::{self, DtmfFilter, Incoming, JitterBuffer, Sender};
use crate::session::{self, Action, Change, Heard, MailboxInfo, Query, Reply, Session, Start};
use crate::store::{self, Envelope, Kept, Store};

/// Counters the service exports.
#[derive(Clone, Default)]
pub struct Metrics {
    pub sessions_active: Gauge,
    pub sessions: Counter,
    pub messages: Counter,
    pub messages_spooled: Counter,
    pub storage_errors: Counter,
    pub spool_depth: Gauge,
    pub late_samples: Counter,
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "voicemail_sessions_active",
            "Voicemail sessions in progress",
            m.sessions_active.clone(),
        );
        registry.register(
            "voicemail_sessions",
            "Voicemail sessions started",
            m.sessions.clone(),
        );
        registry.register("voicemail_messages", "Messages left", m.messages.clone());
        registry.register(
            "voicemail_messages_spooled",
            "Messages spooled locally because storage was unreachable",
            m.messages_spooled.clone(),
        );
        registry.register(
            "voicemail_storage_errors",
            "Failed storage operations",
            m.storage_errors.clone(),
        );
        registry.register(
            "voicemail_rtp_late_samples",
            "Received audio samples that came too late to be recorded",
            m.late_samples.clone(),
        );
        registry.register(
            "voicemail_spool_depth",
            "Messages waiting in the local spool",
            m.spool_depth.clone(),
        );
        m
    }
}

pub struct Shared {
    pub conf: VoicemailConf,
    pub store: Store,
    pub prompts: Arc<Prompts>,
    pub rtp_bind_ip: IpAddr,
    pub advertise_ip: Option<IpAddr>,
    pub mailer: TracedChannel,
    pub edge: TracedChannel,
    pub metrics: Metrics,
    pub tracker: TaskTracker,
    pub shutdown: Shutdown,
    sessions: Mutex<HashMap<String, Handle>>,
    /// Messages whose delivery to the mailer is being retried here.
    announcing: Mutex<HashSet<String>>,
    /// Mailboxes defined by resources (Kubernetes `Mailbox`), by (context, box).
    resource_mailboxes: std::sync::RwLock<HashMap<(String, String), Mailbox>>,
    /// The counts last read from storage, by (context, box): read again after each
    /// change made here (MWI), so the resources' status needs no storage read of its own.
    counted: Mutex<HashMap<(String, String), (u32, u32)>>,
}

struct Handle {
    stop: Option<oneshot::Sender<()>>,
    events: Option<mpsc::UnboundedReceiver<pb::SessionEvent>>,
}

impl Shared {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        conf: VoicemailConf,
        store: Store,
        prompts: Arc<Prompts>,
        rtp_bind_ip: IpAddr,
        advertise_ip: Option<IpAddr>,
        peers: [TracedChannel; 2],
        metrics: Metrics,
        tracker: TaskTracker,
        shutdown: Shutdown,
    ) -> Arc<Self> {
        let [mailer, edge] = peers;
        Arc::new(Self {
            conf,
            store,
            prompts,
            rtp_bind_ip,
            advertise_ip,
            mailer,
            edge,
            metrics,
            tracker,
            shutdown,
            sessions: Mutex::default(),
            announcing: Mutex::default(),
            resource_mailboxes: std::sync::RwLock::default(),
            counted: Mutex::default(),
        })
    }

    /// The mailbox `number@context`: voicemail.conf's, else a resource's.
    pub fn mailbox(&self, context: &str, number: &str) -> Option<Mailbox> {
        if let Some(m) = self.conf.mailbox(context, number) {
            return Some(m.clone());
        }
        self.resource_mailboxes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(context.to_owned(), number.to_owned()))
            .cloned()
    }

    /// Replaces the mailboxes defined by resources (the next login uses their PINs).
    pub fn set_resource_mailboxes(&self, mailboxes: Vec<Mailbox>) {
        *self
            .resource_mailboxes
            .write()
            .unwrap_or_else(|e| e.into_inner()) = mailboxes
            .into_iter()
            .map(|m| ((m.context.clone(), m.number.clone()), m))
            .collect();
    }

    /// New and old message counts of `number@context`, for a resource's status: as
    /// last read after a change here, else from storage.
    pub async fn message_counts(
        &self,
        context: &str,
        number: &str,
    ) -> Result<(u32, u32), store::StoreError> {
        let known = self
            .counted
            .lock()
            .unwrap()
            .get(&(context.to_owned(), number.to_owned()))
            .copied();
        match known {
            Some(counts) => Ok(counts),
            None => self.counts(context, number).await,
        }
    }

    fn context(context: &str) -> &str {
        if context.is_empty() {
            "default"
        } else {
            context
        }
    }

    /// The mailbox's settings from voicemail.conf, with a changed PIN from storage.
    async fn mailbox_info(
        &self,
        context: &str,
        number: &str,
    ) -> Result<Option<MailboxInfo>, store::StoreError> {
        let Some(m) = self.mailbox(context, number) else {
            return Ok(None);
        };
        let general = &self.conf.general;
        let pin = match self.store.pin(context, number).await? {
            Some(pin) => pin,
            None => m.pin.expose().to_owned(),
        };
        let (tz, say_format) = m
            .tz(general)
            .and_then(|name| self.conf.zone(name))
            .and_then(|zone| {
                zone.timezone
                    .parse()
                    .ok()
                    .map(|tz| (tz, zone.say_format.clone()))
            })
            .unwrap_or((chrono_tz::UTC, crate::saydate::DEFAULT_FORMAT.to_owned()));
        let number_option = |key: &str, default: u32| {
            m.option(key)
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(default)
        };
        Ok(Some(MailboxInfo {
            mailbox: number.to_owned(),
            context: context.to_owned(),
            pin,
            pin_locked: m.pin_locked,
            max_msg: number_option("maxmsg", general.max_msg),
            skip_ms: general.skip_ms,
            limits: Limits {
                max_silence_secs: number_option("maxsilence", general.max_silence),
                silence_threshold: general.silence_threshold,
                max_secs: number_option("maxsecs", general.max_secs),
                min_secs: number_option("minsecs", general.min_secs),
            },
            tz,
            say_format,
        }))
    }

    async fn counts(&self, context: &str, mailbox: &str) -> Result<(u32, u32), store::StoreError> {
        let new = self.store.count(context, mailbox, "INBOX").await?;
        let old = self.store.count(context, mailbox, "Old").await?;
        self.counted
            .lock()
            .unwrap()
            .insert((context.to_owned(), mailbox.to_owned()), (new, old));
        Ok((new, old))
    }

    /// New counts to the edge, for the phone's lamp. Best effort: the next change
    /// sends them again.
    async fn update_mwi(&self, context: &str, mailbox: &str) {
        let (new, old) = match self.counts(context, mailbox).await {
            Ok(counts) => counts,
            Err(e) => {
                self.metrics.storage_errors.inc();
                tracing::warn!(error = %e, "no counts for MWI");
                return;
            }
        };
        let mut client = edge::edge_client::EdgeClient::new(self.edge.clone());
        let update = edge::MailboxUpdate {
            mailbox: mailbox.to_owned(),
            context: context.to_owned(),
            new_messages: new,
            old_messages: old,
            urgent_new: 0,
            urgent_old: 0,
        };
        match client.update_mailbox(update).await {
            Ok(r) => tracing::info!(
                mailbox,
                new,
                old,
                notified = r.into_inner().notified,
                "MWI updated"
            ),
            Err(status) => tracing::warn!(%status, mailbox, "the edge did not take the MWI update"),
        }
    }

    /// A message is in storage: the edge gets the new counts (MWI), and the mailer is
    /// asked to email it. That request is noted in storage first and retried in the
    /// background until the mailer accepts it; a note left by a stop or a crash is
    /// taken up again by [`Shared::announce_task`], here or on another replica.
    async fn announce(self: &Arc<Self>, envelope: Envelope) {
        self.update_mwi(&envelope.context, &envelope.mailbox).await;
        if !self.addressed(&envelope) {
            return;
        }
        if let Err(e) = self.store.save_announcement(&envelope).await {
            self.metrics.storage_errors.inc();
            tracing::warn!(id = %envelope.id, error = %e, "cannot note the announcement; it is retried from memory only");
        }
        self.spawn_delivery(envelope);
    }

    fn addressed(&self, envelope: &Envelope) -> bool {
        self.mailbox(&envelope.context, &envelope.mailbox)
            .is_some_and(|m| m.email.is_some() || m.pager.is_some())
    }

    /// Starts the background requests to the mailer for `envelope`, unless they run.
    fn spawn_delivery(self: &Arc<Self>, envelope: Envelope) {
        if !self.announcing.lock().unwrap().insert(envelope.id.clone()) {
            return;
        }
        let shared = self.clone();
        tokio::spawn(async move {
            let id = envelope.id.clone();
            shared.deliver(envelope).await;
            shared.announcing.lock().unwrap().remove(&id);
        });
    }

    /// Asks the mailer until it accepts (backing off up to 5 minutes between tries) or
    /// the service stops; then removes the note.
    async fn deliver(&self, envelope: Envelope) {
        let number = self
            .store
            .number(
                &envelope.context,
                &envelope.mailbox,
                &envelope.folder,
                &envelope.id,
            )
            .await
            .unwrap_or(1);
        let request = mailer::DeliverRequest {
            message_id: envelope.id.clone(),
            mailbox: envelope.mailbox.clone(),
            context: envelope.context.clone(),
            folder: envelope.folder.clone(),
            message_number: number,
            caller_id_number: envelope.caller_id_number.clone(),
            caller_id_name: envelope.caller_id_name.clone(),
            origin_time: envelope.origtime,
            duration_secs: envelope.duration,
            recordings: envelope
                .formats
                .iter()
                .map(|f| mailer::Recording {
                    format: f.clone(),
                    // A format's name is its key's extension (Format::name).
                    key: store::message_key(
                        &envelope.context,
                        &envelope.mailbox,
                        &envelope.folder,
                        &envelope.id,
                        f,
                    ),
                })
                .collect(),
        };
        // The request to the mailer is part of the call's trace, even when it is made
        // from a note taken up after a restart.
        let span = tracing::info_span!("voicemail.deliver", id = %envelope.id);
        if let Some(trace) = &envelope.trace {
            telemetry::set_stored_parent(&span, trace);
        }
        self.ask_mailer(&envelope, request).instrument(span).await;
    }

    async fn ask_mailer(&self, envelope: &Envelope, request: mailer::DeliverRequest) {
        let mut delay = Duration::from_secs(1);
        loop {
            let mut client = mailer::mailer_client::MailerClient::new(self.mailer.clone());
            match client.deliver(request.clone()).await {
                Ok(_) => {
                    tracing::info!(id = %envelope.id, "the mailer has the message");
                    if let Err(e) = self.store.remove_announcement(&envelope.id).await {
                        // Left behind, it is announced again later: the mailer's
                        // Deliver is idempotent, so no second email.
                        tracing::warn!(id = %envelope.id, error = %e, "cannot remove the announcement note");
                    }
                    return;
                }
                Err(status)
                    if status.code() == tonic::Code::InvalidArgument
                        || status.code() == tonic::Code::NotFound
                        || status.code() == tonic::Code::FailedPrecondition =>
                {
                    // Asking again would get the same answer.
                    tracing::error!(%status, id = %envelope.id, "the mailer refused the message; no email");
                    let _ = self.store.remove_announcement(&envelope.id).await;
                    return;
                }
                Err(status) => {
                    tracing::warn!(%status, id = %envelope.id, retry_in = ?delay, "the mailer did not take the message");
                    tokio::select! {
                        _ = self.shutdown.triggered() => return,
                        _ = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(Duration::from_secs(300));
                }
            }
        }
    }

    /// Takes up the announcements not accepted yet (left by a stop, a crash, or another
    /// replica): at start, then every `every`.
    pub async fn announce_task(self: Arc<Self>, every: Duration, shutdown: Shutdown) {
        loop {
            match self.store.announcements().await {
                Ok(pending) => {
                    for envelope in pending {
                        if self.addressed(&envelope) {
                            self.spawn_delivery(envelope);
                        } else {
                            let _ = self.store.remove_announcement(&envelope.id).await;
                        }
                    }
                }
                Err(e) => tracing::debug!(error = %e, "announcements not read yet"),
            }
            tokio::select! {
                _ = shutdown.triggered() => return,
                _ = tokio::time::sleep(every) => {}
            }
        }
    }

    /// Uploads the spool every few seconds while anything is in it.
    pub async fn spool_task(self: Arc<Self>, shutdown: Shutdown) {
        loop {
            let depth = self.store.spooled();
            self.metrics.spool_depth.set(depth as i64);
            if depth > 0 {
                match self.store.drain_spool().await {
                    Ok(stored) => {
                        for envelope in stored {
                            self.announce(envelope).await;
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "spool not uploaded yet"),
                }
                self.metrics.spool_depth.set(self.store.spooled() as i64);
            }
            tokio::select! {
                _ = shutdown.triggered() => return,
                _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            }
        }
    }
}

/// `phone.voicemail.v1.Voicemail`.
pub struct Api(pub Arc<Shared>);

type EventStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<pb::SessionEvent, Status>> + Send>>;

fn storage_status(e: store::StoreError) -> Status {
    Status::unavailable(e.to_string())
}

#[tonic::async_trait]
impl pb::voicemail_server::Voicemail for Api {
    type SessionEventsStream = EventStream;

    async fn start_session(
        &self,
        request: Request<pb::StartSessionRequest>,
    ) -> Result<Response<pb::StartSessionResponse>, Status> {
        let shared = &self.0;
        if shared.shutdown.is_triggered() {
            return Err(Status::unavailable("draining: no new voicemail sessions"));
        }
        let r = request.into_inner();
        let context = Shared::context(&r.context).to_owned();
        let main = pb::Mode::try_from(r.mode) == Ok(pb::Mode::Main);
        let mailbox = if main && r.mailbox.is_empty() {
            None
        } else {
            let info = shared
                .mailbox_info(&context, &r.mailbox)
                .await
                .map_err(storage_status)?;
            match info {
                Some(info) => Some(info),
                None if main => None,
                None => {
                    return Err(Status::not_found(format!(
                        "no mailbox {}@{context}",
                        r.mailbox
                    )));
                }
            }
        };
        let law = match pb::Codec::try_from(r.codec) {
            Ok(pb::Codec::Pcma) => Law::Alaw,
            _ => Law::Ulaw,
        };
        let remote = r
            .remote
            .as_ref()
            .and_then(|e| {
                Some(SocketAddr::new(
                    e.ip.parse().ok()?,
                    u16::try_from(e.port).ok()?,
                ))
            })
            .filter(|a| a.port() != 0);
        let socket = UdpSocket::bind(SocketAddr::new(shared.rtp_bind_ip, 0))
            .await
            .map_err(|e| Status::resource_exhausted(format!("no RTP port: {e}")))?;
        let local = socket
            .local_addr()
            .map_err(|e| Status::internal(e.to_string()))?;
        let advertised = shared
            .advertise_ip
            .unwrap_or(if local.ip().is_unspecified() {
                IpAddr::from([127, 0, 0, 1])
            } else {
                local.ip()
            });
        let id = format!("vm-{}", store::new_message_id(Utc::now().timestamp()));
        let start = Start {
            main,
            mailbox: r.mailbox.clone(),
            context: context.clone(),
            options: r.options.clone(),
            caller_id_number: r.caller_id_number.clone(),
            caller_id_name: r.caller_id_name.clone(),
            max_logins: shared.conf.general.max_logins,
        };
        let session = Session::new(
            start,
            mailbox.filter(|_| !main),
            shared.prompts.clone(),
            Utc::now(),
        );
        let (stop_tx, stop_rx) = oneshot::channel();
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        shared.sessions.lock().expect("sessions lock").insert(
            id.clone(),
            Handle {
                stop: Some(stop_tx),
                events: Some(events_rx),
            },
        );
        shared.metrics.sessions.inc();
        let runner = Runner {
            shared: shared.clone(),
            id: id.clone(),
            context,
            request: r,
            session,
            socket,
            remote,
            law,
            events: events_tx,
        };
        let span = tracing::info_span!(
            "voicemail.session",
            session = %id,
            mode = if main { "main" } else { "leave" },
            mailbox = %runner.request.mailbox,
        );
        shared.tracker.spawn(runner.run(stop_rx).instrument(span));
        Ok(Response::new(pb::StartSessionResponse {
            session_id: id,
            local: Some(phone_proto::media::v1::Endpoint {
                ip: advertised.to_string(),
                port: u32::from(local.port()),
            }),
        }))
    }

    async fn session_events(
        &self,
        request: Request<pb::SessionEventsRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let id = request.into_inner().session_id;
        let mut sessions = self.0.sessions.lock().expect("sessions lock");
        let handle = sessions
            .get_mut(&id)
            .ok_or_else(|| Status::not_found(format!("no session {id}")))?;
        let events = handle.events.take().ok_or_else(|| {
            Status::failed_precondition("the session's events are already being read")
        })?;
        let stream = tokio_stream::wrappers::UnboundedReceiverStream::new(events);
        Ok(Response::new(Box::pin(futures::StreamExt::map(stream, Ok))))
    }

    async fn stop_session(
        &self,
        request: Request<pb::StopSessionRequest>,
    ) -> Result<Response<pb::StopSessionResponse>, Status> {
        let id = request.into_inner().session_id;
        let stop = self
            .0
            .sessions
            .lock()
            .expect("sessions lock")
            .get_mut(&id)
            .and_then(|h| h.stop.take());
        if let Some(stop) = stop {
            let _ = stop.send(());
        }
        Ok(Response::new(pb::StopSessionResponse {}))
    }

    async fn mailbox_counts(
        &self,
        request: Request<pb::MailboxCountsRequest>,
    ) -> Result<Response<pb::MailboxCountsResponse>, Status> {
        let r = request.into_inner();
        let context = Shared::context(&r.context);
        let (new, old) = self.0.counts(context, &r.mailbox).await.map_err(|e| {
            self.0.metrics.storage_errors.inc();
            storage_status(e)
        })?;
        Ok(Response::new(pb::MailboxCountsResponse {
            new_messages: new,
            old_messages: old,
            urgent_new: 0,
            urgent_old: 0,
        }))
    }
}

/// One session's task.
struct Runner {
    shared: Arc<Shared>,
    id: String,
    context: String,
    request: pb::StartSessionRequest,
    session: Session,
    socket: UdpSocket,
    remote: Option<SocketAddr>,
    law: Law,
    events: mpsc::UnboundedSender<pb::SessionEvent>,
}

/// A change with what it needs to be carried out.
struct Job {
    change: Change,
    mailbox: String,
    message_id: Option<String>,
}

/// What comes in: audio to the jitter buffer, key presses once each.
struct Inbound {
    jitter: JitterBuffer,
    dtmf: DtmfFilter,
    /// When audio last came.
    last_audio: Option<std::time::Instant>,
    dtmf_pt: u8,
}

impl Inbound {
    /// Takes one datagram; a new key press comes back. The first sender becomes the
    /// far end when none was given (symmetric RTP).
    fn datagram(
        &mut self,
        data: &[u8],
        from: SocketAddr,
        remote: &mut Option<SocketAddr>,
    ) -> Option<char> {
        match rtp::parse(data, self.dtmf_pt)? {
            Incoming::Audio {
                law,
                timestamp,
                payload,
            } => {
                remote.get_or_insert(from);
                self.jitter.push(law, timestamp, payload);
                self.last_audio = Some(std::time::Instant::now());
                None
            }
            Incoming::Dtmf { digit, timestamp } => {
                remote.get_or_insert(from);
                self.dtmf.accept(timestamp).then_some(digit)
            }
            Incoming::Other => None,
        }
    }
}

impl Runner {
    fn digit(&mut self, digit: char) {
        tracing::debug!(%digit, "DTMF");
        self.session.on_dtmf(digit);
        let _ = self.events.send(pb::SessionEvent {
            session_id: self.id.clone(),
            event: Some(pb::session_event::Event::Dtmf(digit.to_string())),
        });
    }

    async fn run(mut self, mut stop: oneshot::Receiver<()>) {
        let shared = self.shared.clone();
        shared.metrics.sessions_active.inc();
        let (jobs_tx, jobs_rx) = mpsc::unbounded_channel::<Job>();
        shared.tracker.spawn(
            changes(
                shared.clone(),
                self.context.clone(),
                self.request.clone(),
                jobs_rx,
            )
            .in_current_span(),
        );
        let dtmf_pt = u8::try_from(self.request.dtmf_payload_type)
            .ok()
            .filter(|pt| *pt > 0)
            .unwrap_or(101);
        let mut inbound = Inbound {
            jitter: JitterBuffer::default(),
            dtmf: DtmfFilter::default(),
            last_audio: None,
            dtmf_pt,
        };
        let mut sender = Sender::new(self.law, rand_ssrc(&self.id));
        let mut clock = tokio::time::interval(Duration::from_millis(session::TICK_MS));
        clock.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let mut buf = vec![0u8; 2048];
        let mut packet = Vec::with_capacity(12 + FRAME);
        let mut pending: Option<tokio::task::JoinHandle<Reply>> = None;
        let mut message_id: Option<String> = None;
        let mut mailbox = self.request.mailbox.clone();
        let mut hung_up = false;
        let mut finished = None;
        // A span for each recording (a message, a greeting), below the session's.
        let mut recording: Option<tracing::Span> = None;
        loop {
            match (self.session.is_recording(), recording.is_some()) {
                (true, false) => {
                    recording =
                        Some(tracing::info_span!("voicemail.recording", mailbox = %mailbox));
                }
                (false, true) => recording = None,
                _ => {}
            }
            // Carry out what the session asked for.
            while let Some(action) = self.session.poll_action() {
                match action {
                    Action::Query(query) => {
                        tracing::debug!(?query, "storage query");
                        if let Query::Mailbox { mailbox: m } = &query {
                            mailbox = m.clone();
                        }
                        pending = Some(tokio::spawn(query_store(
                            shared.clone(),
                            self.context.clone(),
                            mailbox.clone(),
                            query,
                        )));
                    }
                    Action::Apply(change) => {
                        let id = matches!(change, Change::SaveMessage { .. })
                            .then(|| store::new_message_id(Utc::now().timestamp()));
                        if id.is_some() {
                            message_id = id.clone();
                        }
                        let _ = jobs_tx.send(Job {
                            change,
                            mailbox: mailbox.clone(),
                            message_id: id,
                        });
                    }
                    Action::Finished {
                        status,
                        exit_extension,
                    } => {
                        finished = Some((status, exit_extension));
                    }
                }
            }
            for name in self.session.take_missing_prompts() {
                tracing::warn!(prompt = %name, "prompt missing from the prompt folder");
            }
            if let Some((status, exit)) = finished.take() {
                let status = match status {
                    session::Status::Success => pb::VmStatus::Success,
                    session::Status::UserExit => pb::VmStatus::Userexit,
                    session::Status::Failed => pb::VmStatus::Failed,
                };
                let late_samples = inbound.jitter.late;
                self.shared.metrics.late_samples.inc_by(late_samples);
                tracing::info!(
                    ?status,
                    exit = exit.unwrap_or(""),
                    message = message_id.as_deref().unwrap_or(""),
                    late_samples,
                    "voicemail session finished"
                );
                let _ = self.events.send(pb::SessionEvent {
                    session_id: self.id.clone(),
                    event: Some(pb::session_event::Event::Finished(pb::Finished {
                        status: status as i32,
                        exit_extension: exit.unwrap_or_default().to_owned(),
                        message_id: message_id.clone().unwrap_or_default(),
                    })),
                });
                break;
            }
            tokio::select! {
                _ = clock.tick() => {
                    // Whatever is waiting in the socket first: after a busy moment the
                    // clock must not run ahead of audio that has in fact come.
                    while let Ok((len, from)) = self.socket.try_recv_from(&mut buf) {
                        if let Some(digit) = inbound.datagram(&buf[..len], from, &mut self.remote) {
                            self.digit(digit);
                        }
                    }
                    // The caller's next 20 ms when it has come; after 200 ms without
                    // any audio, what is buffered (or silence) goes on, so silence
                    // detection and the tail of a message do not wait for packets.
                    let quiet = inbound.last_audio.is_none_or(|t| t.elapsed() > Duration::from_millis(200));
                    let mut heard = [0i16; FRAME];
                    let received = if inbound.jitter.ready() || (quiet && inbound.jitter.buffered() > 0) {
                        inbound.jitter.pop(&mut heard);
                        Heard::Audio(&heard)
                    } else if quiet {
                        Heard::Nothing
                    } else {
                        Heard::NotYet
                    };
                    let mut say = [0i16; FRAME];
                    self.session.tick(received, &mut say);
                    // After a busy moment the media is ahead of the clock: catch up.
                    for _ in 0..50 {
                        if !inbound.jitter.ready() {
                            break;
                        }
                        inbound.jitter.pop(&mut heard);
                        self.session.hear(&heard);
                    }
                    if let Some(remote) = self.remote {
                        sender.packet(&say, &mut packet);
                        let _ = self.socket.send_to(&packet, remote).await;
                    }
                }
                received = self.socket.recv_from(&mut buf) => {
                    let Ok((len, from)) = received else { continue };
                    if let Some(digit) = inbound.datagram(&buf[..len], from, &mut self.remote) {
                        self.digit(digit);
                    }
                }
                reply = async { pending.as_mut().expect("guarded").await }, if pending.is_some() => {
                    pending = None;
                    let reply = reply.unwrap_or_else(|e| Reply::Failed(e.to_string()));
                    tracing::debug!(reply = %reply_summary(&reply), "storage reply");
                    if let Reply::Failed(_) = &reply {
                        shared.metrics.storage_errors.inc();
                    }
                    self.session.on_reply(reply);
                }
                _ = &mut stop, if !hung_up => {
                    hung_up = true;
                    tracing::info!("the caller hung up");
                    // What is still buffered belongs to the message.
                    let mut heard = [0i16; FRAME];
                    while inbound.jitter.buffered() > 0 {
                        inbound.jitter.pop(&mut heard);
                        self.session.hear(&heard);
                    }
                    self.session.hang_up();
                }
            }
        }
        shared
            .sessions
            .lock()
            .expect("sessions lock")
            .remove(&self.id);
        shared.metrics.sessions_active.dec();
    }
}

fn reply_summary(reply: &Reply) -> String {
    match reply {
        Reply::Mailbox(m) => format!("mailbox found: {}", m.is_some()),
        Reply::Counts { new, old } => format!("counts {new} new, {old} old"),
        Reply::Greeting(g) => format!("greeting: {}", g.is_some()),
        Reply::List(l) => format!("{} messages", l.len()),
        Reply::Audio(a) => format!("audio: {} samples", a.as_ref().map_or(0, |a| a.len())),
        Reply::Failed(e) => format!("failed: {e}"),
    }
}

fn rand_ssrc(id: &str) -> u32 {
    id.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

async fn query_store(shared: Arc<Shared>, context: String, mailbox: String, query: Query) -> Reply {
    let store = &shared.store;
    let result = match query {
        Query::Mailbox { mailbox } => shared
            .mailbox_info(&context, &mailbox)
            .await
            .map(|m| Reply::Mailbox(m.map(Box::new))),
        Query::Counts => shared
            .counts(&context, &mailbox)
            .await
            .map(|(new, old)| Reply::Counts { new, old }),
        Query::Greeting(g) => store
            .greeting(&context, &mailbox, g)
            .await
            .map(|a| Reply::Greeting(a.map(Clip::from))),
        Query::List { folder } => store.list(&context, &mailbox, &folder).await.map(|list| {
            Reply::List(
                list.into_iter()
                    .map(|e| session::MessageInfo {
                        id: e.id,
                        folder: e.folder,
                        caller_id_number: e.caller_id_number,
                        caller_id_name: e.caller_id_name,
                        origtime: chrono::DateTime::from_timestamp(e.origtime, 0)
                            .unwrap_or_default(),
                        duration_secs: e.duration,
                    })
                    .collect(),
            )
        }),
        Query::Audio { folder, id } => store
            .audio(&context, &mailbox, &folder, &id)
            .await
            .map(|a| Reply::Audio(a.map(Clip::from))),
    };
    result.unwrap_or_else(|e| Reply::Failed(e.to_string()))
}

/// Carries out a session's changes in order; goes on after the session ends.
async fn changes(
    shared: Arc<Shared>,
    context: String,
    request: pb::StartSessionRequest,
    mut jobs: mpsc::UnboundedReceiver<Job>,
) {
    while let Some(job) = jobs.recv().await {
        let store = &shared.store;
        let mailbox = job.mailbox.as_str();
        let result = match job.change {
            Change::SaveMessage {
                audio,
                duration_secs,
            } => {
                let now = Utc::now();
                let envelope = Envelope {
                    id: job
                        .message_id
                        .unwrap_or_else(|| store::new_message_id(now.timestamp())),
                    mailbox: mailbox.to_owned(),
                    context: context.clone(),
                    folder: "INBOX".into(),
                    caller_id_number: request.caller_id_number.clone(),
                    caller_id_name: request.caller_id_name.clone(),
                    origtime: now.timestamp(),
                    origdate: now.format("%a %b %e %r UTC %Y").to_string(),
                    duration: duration_secs,
                    channel: request.channel.clone(),
                    unique_id: request.unique_id.clone(),
                    formats: store
                        .formats()
                        .iter()
                        .map(|f| f.name().to_owned())
                        .collect(),
                    trace: telemetry::traceparent(&tracing::Span::current()),
                };
                let upload = tracing::info_span!(
                    "voicemail.upload",
                    id = %envelope.id,
                    mailbox,
                    formats = %envelope.formats.join("|"),
                    samples = audio.len(),
                    kept = tracing::field::Empty,
                );
                let saved = store
                    .save_message(&envelope, audio)
                    .instrument(upload.clone())
                    .await;
                match &saved {
                    Ok(Kept::Stored) => upload.record("kept", "stored"),
                    Ok(Kept::Spooled) => upload.record("kept", "spooled"),
                    Err(_) => upload.record("kept", "failed"),
                };
                drop(upload);
                match saved {
                    Ok(Kept::Stored) => {
                        shared.metrics.messages.inc();
                        tracing::info!(id = %envelope.id, duration_secs, "message stored");
                        shared.announce(envelope).await;
                        Ok(())
                    }
                    Ok(Kept::Spooled) => {
                        shared.metrics.messages.inc();
                        shared.metrics.messages_spooled.inc();
                        Ok(())
                    }
                    Err(e) => Err(e),
                }
            }
            Change::Move { id, from, to } => {
                let r = store.move_message(&context, mailbox, &id, &from, &to).await;
                shared.update_mwi(&context, mailbox).await;
                r
            }
            Change::Delete { id, folder } => {
                let r = store.delete_message(&context, mailbox, &folder, &id).await;
                shared.update_mwi(&context, mailbox).await;
                r
            }
            Change::SaveGreeting { greeting, audio } => {
                store
                    .save_greeting(&context, mailbox, greeting, &audio)
                    .await
            }
            Change::SetPin { pin } => store.set_pin(&context, mailbox, &pin).await,
        };
        if let Err(e) = result {
            shared.metrics.storage_errors.inc();
            tracing::error!(error = %e, mailbox, "a voicemail change failed");
        }
    }
}
