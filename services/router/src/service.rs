//! The gRPC layer: one task per call-control stream that feeds the stream's events and
//! the voicemail service's answers into a [`Call`], and sends the call's commands back.
//! It owns no dialplan logic. Also: reloading `extensions.conf`, and metrics.

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use futures::Stream;
use phone_proto::media::v1::Endpoint;
use phone_proto::router::v1 as pb;
use phone_proto::router::v1::call_control_server::{CallControl, CallControlServer};
use phone_proto::voicemail::v1 as vm;
use phone_proto::voicemail::v1::voicemail_client::VoicemailClient;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use service_runtime::balance::{Balanced, Lease};
use service_runtime::grpc::TracedChannel;
use service_runtime::Shutdown;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::task::TaskTracker;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use crate::call::{
    Action, Call, ChannelInfo, Command, DialStatus, Event, Indication, LogLevel, VmStatus,
    VoicemailMode, VoicemailRequest,
};
use crate::dialplan::Dialplan;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    status: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

/// The router's metrics (prefixed `phone_router_`).
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    calls: Counter,
    active: Gauge,
    dial_status: Family<StatusLabel, Counter>,
    steps: Counter,
    reloads: Family<ResultLabel, Counter>,
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        // Every DIALSTATUS and reload result from the start, so that the series exist at
        // zero before the first call.
        for status in [
            "ANSWER",
            "BUSY",
            "NOANSWER",
            "CANCEL",
            "CONGESTION",
            "CHANUNAVAIL",
        ] {
            let _ = m.dial_status.get_or_create(&StatusLabel {
                status: status.to_owned(),
            });
        }
        for result in ["loaded", "failed"] {
            let _ = m.reloads.get_or_create(&ResultLabel { result });
        }
        let r = registry.sub_registry_with_prefix("router");
        r.register("calls", "Calls that entered the dialplan", m.calls.clone());
        r.register(
            "active_calls",
            "Calls running in the dialplan now",
            m.active.clone(),
        );
        r.register(
            "dial_status",
            "Dial() results, by DIALSTATUS",
            m.dial_status.clone(),
        );
        r.register("steps", "Dialplan priorities run", m.steps.clone());
        r.register(
            "dialplan_reloads",
            "Reloads of extensions.conf, by result",
            m.reloads.clone(),
        );
        m
    }
}

struct Shared {
    dialplan: RwLock<Arc<Dialplan>>,
    /// The voicemail pods; a call's session stays on the one it started on.
    voicemail: Balanced,
    metrics: Metrics,
    in_flight: TaskTracker,
}

/// `phone.router.v1.CallControl`, and the dialplan new calls start on.
#[derive(Clone)]
pub struct Router {
    shared: Arc<Shared>,
}

impl Router {
    pub fn new(
        dialplan: Arc<Dialplan>,
        voicemail: Balanced,
        metrics: Metrics,
        in_flight: TaskTracker,
    ) -> Self {
        Self {
            shared: Arc::new(Shared {
                dialplan: RwLock::new(dialplan),
                voicemail,
                metrics,
                in_flight,
            }),
        }
    }

    /// The dialplan new calls start on.
    pub fn dialplan(&self) -> Arc<Dialplan> {
        self.shared
            .dialplan
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn replace(&self, dialplan: Arc<Dialplan>) {
        *self
            .shared
            .dialplan
            .write()
            .unwrap_or_else(|e| e.into_inner()) = dialplan;
    }

    /// A new version of the dialplan, read from `from`: new calls take it, calls in
    /// progress finish on theirs. A version that does not load is counted and logged,
    /// and the running one stays. Returns whether it was taken.
    pub fn reload(
        &self,
        from: &str,
        loaded: Result<asterisk_conf::extensions::Dialplan, asterisk_conf::Error>,
    ) -> bool {
        let result = match loaded {
            Ok(ast) => {
                service_runtime::log_config_warnings(&ast.warnings);
                let plan = Dialplan::compile(&ast);
                for line in plan.check() {
                    tracing::warn!("{line}");
                }
                self.replace(plan);
                tracing::info!(%from, "dialplan reloaded; new calls use it");
                "loaded"
            }
            Err(e) => {
                tracing::error!(%from, "dialplan not reloaded, the running one stays: {e}");
                "failed"
            }
        };
        self.shared
            .metrics
            .reloads
            .get_or_create(&ResultLabel { result })
            .inc();
        result == "loaded"
    }

    pub fn into_server(self) -> CallControlServer<Router> {
        CallControlServer::new(self)
    }
}

type CommandStream = Pin<Box<dyn Stream<Item = Result<pb::DialplanCommand, Status>> + Send>>;

#[tonic::async_trait]
impl CallControl for Router {
    type RunStream = CommandStream;

    async fn run(
        &self,
        request: Request<Streaming<pb::ChannelEvent>>,
    ) -> Result<Response<Self::RunStream>, Status> {
        let mut inbound = request.into_inner();
        let first = inbound
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("the stream ended before new_channel"))?;
        let Some(pb::channel_event::Event::NewChannel(channel)) = first.event else {
            return Err(Status::invalid_argument(
                "the first event must be new_channel",
            ));
        };
        if channel.context.is_empty() || channel.channel.is_empty() {
            return Err(Status::invalid_argument(
                "new_channel needs channel and context",
            ));
        }
        let (tx, rx) = mpsc::channel(32);
        let span = tracing::info_span!(
            "router.call",
            otel.kind = "internal",
            channel = %channel.channel,
            call_id = %channel.call_id,
            context = %channel.context,
            exten = %channel.exten,
        );
        let shared = self.shared.clone();
        // Tracked: the drain waits for calls in the dialplan to end.
        shared
            .in_flight
            .clone()
            .spawn(drive(shared, channel, inbound, tx).instrument(span));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

fn channel_info(channel: &pb::NewChannel) -> ChannelInfo {
    let caller = channel.caller_id.clone().unwrap_or_default();
    ChannelInfo {
        channel: channel.channel.clone(),
        unique_id: channel.unique_id.clone(),
        context: channel.context.clone(),
        exten: if channel.exten.is_empty() {
            "s".into()
        } else {
            channel.exten.clone()
        },
        caller_number: caller.number,
        caller_name: caller.name,
        variables: channel
            .variables
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        epoch: SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0),
    }
}

/// Runs one call: events in, commands out, until the interpreter is finished.
async fn drive(
    shared: Arc<Shared>,
    channel: pb::NewChannel,
    mut inbound: Streaming<pb::ChannelEvent>,
    tx: mpsc::Sender<Result<pb::DialplanCommand, Status>>,
) {
    let metrics = shared.metrics.clone();
    metrics.calls.inc();
    metrics.active.inc();
    let codec = match channel.codecs.first().map(String::as_str) {
        Some("alaw") => vm::Codec::Pcma,
        _ => vm::Codec::Pcmu,
    };
    let dialplan = shared
        .dialplan
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let mut call = Call::new(dialplan, channel_info(&channel), Instant::now());
    let (events_tx, mut events_rx) = mpsc::channel::<Event>(16);
    let mut inbound_open = true;
    let mut edge_gone = false;
    // The voicemail pod of this call's session: its stop goes where its start went.
    let mut voicemail: Option<(TracedChannel, Lease)> = None;
    // The application running now, as a span (a child of the call's): it ends when the
    // next step starts, so its length is the application's.
    let mut app = tracing::Span::none();
    loop {
        while let Some(action) = call.poll_action() {
            match action {
                Action::Command { id, command } => {
                    if let Command::Dial { .. } = &command {
                        tracing::info!(id, "dial");
                    }
                    if !edge_gone && tx.send(Ok(to_proto(id, command))).await.is_err() {
                        // The edge dropped the stream: as good as a hang-up.
                        edge_gone = true;
                    }
                }
                Action::StartVoicemail { id, request } => {
                    let (channel, lease) = shared.voicemail.pick();
                    voicemail = Some((channel.clone(), lease));
                    tokio::spawn(
                        voicemail_session(channel, id, request, codec, events_tx.clone())
                            .instrument(app.clone()),
                    );
                }
                Action::StopVoicemail { session_id } => {
                    let channel = match &voicemail {
                        Some((channel, _)) => channel.clone(),
                        None => shared.voicemail.channel(),
                    };
                    let mut client = VoicemailClient::new(channel);
                    tokio::spawn(
                        async move {
                            if let Err(e) = client
                                .stop_session(vm::StopSessionRequest { session_id })
                                .await
                            {
                                tracing::warn!(error = %e, "cannot stop the voicemail session");
                            }
                        }
                        .in_current_span(),
                    );
                }
                Action::Log { level, message } => match level {
                    LogLevel::Error => tracing::error!("{message}"),
                    LogLevel::Warning => tracing::warn!("{message}"),
                    LogLevel::Notice => tracing::info!("{message}"),
                    LogLevel::Debug => tracing::debug!("{message}"),
                },
                Action::Step(step) => {
                    metrics.steps.inc();
                    app = tracing::info_span!(
                        "router.app",
                        otel.name = %format_args!("router.app {}", step.app),
                        app = %step.app,
                        args = %step.args,
                        context = %step.context,
                        exten = %step.exten,
                        priority = step.priority,
                    );
                    tracing::info!(
                        context = %step.context,
                        exten = %step.exten,
                        priority = step.priority,
                        app = %step.app,
                        args = %step.args,
                        at = %step.location,
                        "dialplan step"
                    );
                }
            }
        }
        if call.is_finished() {
            break;
        }
        if edge_gone || !inbound_open {
            call.handle_event(Instant::now(), Event::HangUp { cause: 16 });
            inbound_open = false;
            edge_gone = true;
            continue;
        }
        let deadline = call.poll_timeout();
        tokio::select! {
            message = inbound.message() => match message {
                Ok(Some(event)) => {
                    if let Some(event) = from_proto(event, &metrics) {
                        call.handle_event(Instant::now(), event);
                    }
                }
                Ok(None) => inbound_open = false,
                Err(status) => {
                    tracing::debug!(%status, "call-control stream failed");
                    inbound_open = false;
                }
            },
            Some(event) = events_rx.recv() => call.handle_event(Instant::now(), event),
            _ = sleep_until(deadline), if deadline.is_some() => call.handle_timeout(Instant::now()),
        }
    }
    drop(app);
    metrics.active.dec();
}

async fn sleep_until(deadline: Option<Instant>) {
    if let Some(deadline) = deadline {
        tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)).await;
    }
}

/// Starts a voicemail session and reports its start and its end as events.
async fn voicemail_session(
    channel: TracedChannel,
    id: u64,
    request: VoicemailRequest,
    codec: vm::Codec,
    events: mpsc::Sender<Event>,
) {
    let mut client = VoicemailClient::new(channel);
    let mode = match request.mode {
        VoicemailMode::Leave => vm::Mode::Leave,
        VoicemailMode::Main => vm::Mode::Main,
    };
    let started = client
        .start_session(vm::StartSessionRequest {
            mailbox: request.mailbox,
            context: request.context,
            mode: mode as i32,
            options: request.options,
            caller_id_number: request.caller_number,
            caller_id_name: request.caller_name,
            channel: request.channel,
            unique_id: request.unique_id,
            remote: None,
            codec: codec as i32,
            dtmf_payload_type: 101,
        })
        .await;
    let session = match started {
        Ok(response) => response.into_inner(),
        Err(status) => {
            let _ = events
                .send(Event::VoicemailFailed {
                    id,
                    error: format!("{}: {}", status.code(), status.message()),
                })
                .await;
            return;
        }
    };
    let local = session.local.unwrap_or_default();
    let session_id = session.session_id.clone();
    let _ = events
        .send(Event::VoicemailStarted {
            id,
            session_id: session_id.clone(),
            rtp_ip: local.ip,
            rtp_port: u16::try_from(local.port).unwrap_or(0),
        })
        .await;
    let finished = async {
        let mut stream = client
            .session_events(vm::SessionEventsRequest {
                session_id: session_id.clone(),
            })
            .await?
            .into_inner();
        while let Some(event) = stream.message().await? {
            if let Some(vm::session_event::Event::Finished(f)) = event.event {
                return Ok::<_, Status>(Some(f));
            }
        }
        Ok(None)
    }
    .await;
    let (status, exit_extension) = match finished {
        Ok(Some(f)) => (
            match vm::VmStatus::try_from(f.status) {
                Ok(vm::VmStatus::Success) => VmStatus::Success,
                Ok(vm::VmStatus::Userexit) => VmStatus::UserExit,
                _ => VmStatus::Failed,
            },
            Some(f.exit_extension).filter(|e| !e.is_empty()),
        ),
        Ok(None) | Err(_) => (VmStatus::Failed, None),
    };
    let _ = events
        .send(Event::VoicemailFinished {
            session_id,
            status,
            exit_extension,
        })
        .await;
}

fn to_proto(id: u64, command: Command) -> pb::DialplanCommand {
    use pb::dialplan_command::Command as C;
    let command = match command {
        Command::Answer => C::Answer(pb::Answer {}),
        Command::Indicate(i) => C::Indicate(pb::Indicate {
            indication: match i {
                Indication::Progress => pb::indicate::Indication::Progress,
                Indication::Ringing => pb::indicate::Indication::Ringing,
                Indication::Busy => pb::indicate::Indication::Busy,
                Indication::Congestion => pb::indicate::Indication::Congestion,
            } as i32,
        }),
        Command::Dial {
            spec,
            caller_number,
            caller_name,
        } => C::Dial(pb::Dial {
            targets: spec
                .targets
                .into_iter()
                .map(|t| pb::DialTarget {
                    technology: "SIP".into(),
                    peer: t.peer,
                    number: t.number.unwrap_or_default(),
                })
                .collect(),
            timeout_secs: spec.timeout_secs.unwrap_or(0),
            caller_id: Some(pb::CallerId {
                number: caller_number,
                name: caller_name,
            }),
            ringback: spec.ringback,
            callee_transfer: spec.callee_transfer,
            caller_transfer: spec.caller_transfer,
            options: spec.options,
        }),
        Command::Playback { files, noanswer } => C::Playback(pb::Playback { files, noanswer }),
        Command::ConnectVoicemail {
            session_id,
            rtp_ip,
            rtp_port,
        } => C::ConnectVoicemail(pb::ConnectVoicemail {
            session_id,
            rtp: Some(Endpoint {
                ip: rtp_ip,
                port: u32::from(rtp_port),
            }),
        }),
        Command::Hangup { cause } => C::Hangup(pb::Hangup { cause }),
    };
    pb::DialplanCommand {
        id,
        command: Some(command),
    }
}

fn from_proto(event: pb::ChannelEvent, metrics: &Metrics) -> Option<Event> {
    use pb::channel_event::Event as E;
    Some(match event.event? {
        E::NewChannel(_) => {
            tracing::warn!("a second new_channel on one stream is ignored");
            return None;
        }
        E::CommandDone(done) => Event::CommandDone {
            id: done.command_id,
            error: Some(done.error).filter(|e| !e.is_empty()),
        },
        E::DialResult(result) => {
            let status = match pb::DialStatus::try_from(result.status) {
                Ok(pb::DialStatus::Answer) => DialStatus::Answer,
                Ok(pb::DialStatus::Busy) => DialStatus::Busy,
                Ok(pb::DialStatus::Noanswer) => DialStatus::NoAnswer,
                Ok(pb::DialStatus::Cancel) => DialStatus::Cancel,
                Ok(pb::DialStatus::Congestion) => DialStatus::Congestion,
                _ => DialStatus::ChanUnavail,
            };
            metrics
                .dial_status
                .get_or_create(&StatusLabel {
                    status: status.as_str().to_owned(),
                })
                .inc();
            Event::DialResult {
                id: result.command_id,
                status,
                answered_secs: result.answered_secs,
            }
        }
        E::Dtmf(d) => {
            let digit = d.digit.chars().next()?;
            if !matches!(digit, '0'..='9' | '*' | '#' | 'A'..='D') {
                return None;
            }
            Event::Dtmf(digit)
        }
        E::HangUp(h) => Event::HangUp {
            cause: if h.cause == 0 { 16 } else { h.cause },
        },
    })
}

/// Watches extensions.conf and what it includes; a changed, valid file replaces the
/// dialplan for new calls. A broken one is logged and the running dialplan stays.
pub struct Reloader {
    path: PathBuf,
    files: Vec<PathBuf>,
    fingerprint: u64,
    interval: Duration,
    router: Router,
}

impl Reloader {
    pub fn new(
        path: PathBuf,
        ast: &asterisk_conf::extensions::Dialplan,
        interval: Duration,
        router: Router,
    ) -> Self {
        let files = files_of(&path, ast);
        let fingerprint = fingerprint(&files);
        Self {
            path,
            files,
            fingerprint,
            interval,
            router,
        }
    }

    pub async fn run(mut self, shutdown: Shutdown) {
        loop {
            tokio::select! {
                _ = shutdown.triggered() => return,
                _ = tokio::time::sleep(self.interval) => {}
            }
            let current = fingerprint(&self.files);
            if current == self.fingerprint {
                continue;
            }
            self.fingerprint = current;
            let loaded = asterisk_conf::extensions::load(&self.path);
            if let Ok(ast) = &loaded {
                self.files = files_of(&self.path, ast);
                self.fingerprint = fingerprint(&self.files);
            }
            self.router.reload(&self.path.display().to_string(), loaded);
        }
    }
}

/// extensions.conf and every file an item came from (its includes).
fn files_of(path: &std::path::Path, ast: &asterisk_conf::extensions::Dialplan) -> Vec<PathBuf> {
    let mut files = vec![path.to_owned()];
    let locations = ast
        .contexts
        .iter()
        .flat_map(|c| std::iter::once(&c.location).chain(c.lines.iter().map(|l| &l.location)))
        .chain(ast.globals.iter().map(|g| &g.location));
    for location in locations {
        let file = location.file.to_path_buf();
        if !files.contains(&file) {
            files.push(file);
        }
    }
    files
}

/// A hash of the files' contents (a missing file counts as a change too). Contents, not
/// modification times: a Kubernetes ConfigMap update swaps a symlink and keeps times.
fn fingerprint(files: &[PathBuf]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    for file in files {
        std::fs::read(file).ok().hash(&mut hasher);
    }
    hasher.finish()
}
