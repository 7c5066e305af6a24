//! The B2BUA's async side: one task per call. It gets the call's media session from a
//! relay ([`crate::relays`]), opens the router's call-control stream with the
//! channel's `NewChannel`, then runs the router's commands one at a time against the
//! SIP side (`sip_core::endpoint`) and passes what happens there back to the router: the
//! caller hanging up, the Dial's outcome (DIALSTATUS), the end of a bridged call.
//! Media follows the signalling: the relay's leg B is pointed at the callee when it
//! answers (or sends early media), and the caller's leg at the voicemail service for
//! `VoiceMail()`.
//!
//! ```text
//!   INVITE -> NewCall -> relay CreateSession + UpdateLeg(A) -> router NewChannel
//!   router: Dial -> INVITEs (fork) -> 180 -> 200 -> Bridged -> UpdateLeg(B)
//!           ... BYE from the callee -> DialResult(ANSWER, secs) -> router: Hangup
//!   caller BYE/CANCEL -> HangUp to the router -> it runs `h` and closes -> DeleteSession
//! ```

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use phone_proto::media::v1 as media;
use phone_proto::router::v1 as router;
use phone_proto::router::v1::{channel_event, dialplan_command};
use service_runtime::balance::Balanced;
use service_runtime::grpc::TracedChannel;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_util::task::TaskTracker;

use crate::driver::{CallTask, Driver};
use crate::endpoint::{CallEvent, CallRecord, MediaRef, SipCore, Target};
use crate::error::CallError;
use crate::relays::{Relay, RelayPool};

/// How long the router has to close the stream after a hang-up (it runs `h` first).
const HANGUP_GRACE: Duration = Duration::from_secs(5);
/// The same after the drain's deadline ended the call.
const HANGUP_GRACE_AT_DEADLINE: Duration = Duration::from_secs(1);

/// Routes the relays' media-timeout events to the calls they belong to: one
/// `WatchEvents` stream per relay (not per call), opened when a call first uses it.
#[derive(Clone, Default)]
struct MediaWatch {
    state: Arc<Mutex<WatchState>>,
}

#[derive(Default)]
struct WatchState {
    calls: HashMap<String, mpsc::UnboundedSender<CallEvent>>,
    watching: HashSet<String>,
}

impl MediaWatch {
    fn lock(&self) -> std::sync::MutexGuard<'_, WatchState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn register(&self, relay: &Relay, session_id: &str, notify: mpsc::UnboundedSender<CallEvent>) {
        let start = {
            let mut state = self.lock();
            state.calls.insert(session_id.to_owned(), notify);
            state.watching.insert(relay.url.clone())
        };
        if start {
            tokio::spawn(self.clone().watch(relay.client.clone(), relay.url.clone()));
        }
    }

    fn unregister(&self, session_id: &str) {
        self.lock().calls.remove(session_id);
    }

    /// Follows one relay's events for as long as the edge runs, reconnecting after
    /// errors.
    async fn watch(
        self,
        mut client: media::media_relay_client::MediaRelayClient<TracedChannel>,
        url: String,
    ) {
        loop {
            match client.watch_events(media::WatchEventsRequest {}).await {
                Ok(stream) => {
                    let mut stream = stream.into_inner();
                    while let Ok(Some(event)) = stream.message().await {
                        if let Some(media::session_event::Event::MediaTimeout(timeout)) =
                            event.event
                        {
                            let notify = self.lock().calls.get(&event.session_id).cloned();
                            if let Some(notify) = notify {
                                tracing::info!(session = %event.session_id, silent_secs = timeout.silent_secs, "media timeout: ending the call");
                                let _ = notify.send(CallEvent::MediaTimeout);
                            }
                        }
                    }
                }
                Err(e) => {
                    tracing::debug!(relay = %url, error = %e, "cannot watch the relay's events")
                }
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

/// Starts the task spawner: every new call gets its task, tracked for the drain.
/// `sessions` names this process's relay sessions (see [`Sessions`]).
pub fn spawner(
    edge: Arc<Driver>,
    router: Balanced,
    relays: RelayPool,
    in_flight: TaskTracker,
    sessions: Sessions,
) -> mpsc::UnboundedSender<CallTask> {
    let (tx, mut rx) = mpsc::unbounded_channel::<CallTask>();
    let epoch = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let watch = MediaWatch::default();
    tokio::spawn(async move {
        while let Some(new) = rx.recv().await {
            let call = &new.call;
            let task = Call {
                edge: edge.clone(),
                relays: relays.clone(),
                router: router.clone(),
                epoch,
                watch: watch.clone(),
                sessions: sessions.clone(),
            };
            // The call's span, the root of its trace: every service's work for it is
            // below (trace context goes out in the gRPC metadata).
            let span = tracing::info_span!(
                "sip-edge.call",
                channel = %call.channel,
                call_id = %call.call_id,
                peer = %call.peer,
                from = %call.caller_number,
                to = %call.exten,
                restored = new.restored.is_some(),
                sip.status = tracing::field::Empty,
                hangup.cause = tracing::field::Empty,
                ended_by = tracing::field::Empty,
            );
            in_flight.spawn(tracing::Instrument::instrument(task.run(new), span));
        }
    });
    tx
}

struct Call {
    edge: Arc<Driver>,
    relays: RelayPool,
    /// The routers; each call's stream stays on the one it was given.
    router: Balanced,
    epoch: u64,
    watch: MediaWatch,
    sessions: Sessions,
}

/// The names of the relay sessions an edge makes: `<instance>.<boot>/<Call-ID>/<id>`,
/// where the instance is the edge's own (kept in its data directory, the same after a
/// restart) and the boot this process's start. A restarted edge deletes the sessions
/// of its instance from an earlier boot that no restored call owns ([`reconcile`]);
/// sessions of other edges are not its to touch.
#[derive(Debug, Clone)]
pub struct Sessions {
    pub instance: String,
    pub boot: u64,
}

impl Sessions {
    fn name(&self, call_id: &str, id: u64) -> String {
        format!("{}.{}/{call_id}/{id}", self.instance, self.boot)
    }

    /// Made by this edge in an earlier run.
    fn earlier(&self, session_id: &str) -> bool {
        session_id
            .strip_prefix(&self.instance)
            .and_then(|rest| rest.strip_prefix('.'))
            .and_then(|rest| rest.split_once('/'))
            .is_some_and(|(boot, _)| boot != self.boot.to_string())
    }
}

/// After a restart: deletes, at every relay the edge knows of, the sessions its
/// earlier runs made that no restored call owns (their calls ended while the edge was
/// away, or were never answered). Returns how many.
pub async fn reconcile(
    relays: &RelayPool,
    sessions: &Sessions,
    restored: &HashSet<(String, String)>,
) -> usize {
    let mut targets: Vec<Arc<Relay>> = relays.relays();
    for (url, _) in restored {
        if !targets.iter().any(|r| &r.url == url) {
            targets.extend(relays.by_url(url));
        }
    }
    let mut deleted = 0;
    for relay in targets {
        let mut client = relay.client.clone();
        let listed = match client.list_sessions(media::ListSessionsRequest {}).await {
            Ok(listed) => listed.into_inner().sessions,
            Err(e) => {
                tracing::info!(relay = %relay.url, error = %e, "cannot list the relay's sessions");
                continue;
            }
        };
        for session in listed {
            let owned = restored.contains(&(relay.url.clone(), session.session_id.clone()));
            if owned || !sessions.earlier(&session.session_id) {
                continue;
            }
            let gone = client
                .delete_session(media::DeleteSessionRequest {
                    session_id: session.session_id.clone(),
                })
                .await;
            if gone.is_ok() {
                tracing::info!(relay = %relay.url, session = %session.session_id, "deleted a session no call owns since the restart");
                deleted += 1;
            }
        }
    }
    deleted
}

/// Notes on the call's span how it ended: the caller's final status, the Q.850 cause
/// and what ended it.
fn ended(status: Option<u16>, cause: u32, by: &str) {
    let span = tracing::Span::current();
    if let Some(status) = status {
        span.record("sip.status", status);
    }
    span.record("hangup.cause", cause);
    span.record("ended_by", by);
}

fn endpoint(addr: SocketAddr) -> media::Endpoint {
    media::Endpoint {
        ip: addr.ip().to_string(),
        port: u32::from(addr.port()),
    }
}

fn local_of(leg: &Option<media::Leg>) -> Option<(std::net::IpAddr, u16)> {
    let local = leg.as_ref()?.local.as_ref()?;
    Some((local.ip.parse().ok()?, u16::try_from(local.port).ok()?))
}

fn latching(nat: bool) -> media::Latching {
    if nat {
        media::Latching::Symmetric
    } else {
        media::Latching::Strict
    }
}

fn dial_status(status: crate::fork::DialStatus) -> router::DialStatus {
    use crate::fork::DialStatus;
    match status {
        DialStatus::Answer => router::DialStatus::Answer,
        DialStatus::Busy => router::DialStatus::Busy,
        DialStatus::Noanswer => router::DialStatus::Noanswer,
        DialStatus::Cancel => router::DialStatus::Cancel,
        DialStatus::Congestion => router::DialStatus::Congestion,
        DialStatus::Chanunavail => router::DialStatus::Chanunavail,
    }
}

fn direction(d: crate::sdp::Direction) -> media::Direction {
    match d {
        crate::sdp::Direction::SendRecv => media::Direction::Sendrecv,
        crate::sdp::Direction::SendOnly => media::Direction::Sendonly,
        crate::sdp::Direction::RecvOnly => media::Direction::Recvonly,
        crate::sdp::Direction::Inactive => media::Direction::Inactive,
    }
}

impl Call {
    /// Ends the call on `error`: the caller hears its status, the span notes its cause.
    fn fail(&self, id: u64, error: CallError) {
        let cause = error.q850();
        ended(
            self.sip(id, |core| core.call_hangup(id, cause)),
            cause,
            &error.to_string(),
        );
    }

    /// Runs a command on the SIP side of call `id`.
    fn sip<R>(&self, id: u64, f: impl FnOnce(&mut SipCore) -> R) -> R {
        self.edge.with_call(id, f)
    }

    async fn run(self, task: CallTask) {
        let CallTask {
            call,
            events: mut sip_events,
            notify,
            restored,
        } = task;
        if let Some(record) = restored {
            return self
                .run_restored(call.id, *record, sip_events, notify)
                .await;
        }
        let id = call.id;
        let session_id = self.sessions.name(&call.call_id, id);
        let created = self
            .relays
            .create_session(media::CreateSessionRequest {
                session_id: session_id.clone(),
                call_id: call.call_id.clone(),
                latching_a: latching(call.caller_nat).into(),
                latching_b: media::Latching::Strict.into(),
                remote_a: call.caller_media.map(endpoint),
                event_payload_types_a: call.event_payload_types.clone(),
            })
            .await;
        let (relay, session) = match created {
            Ok(created) => created,
            Err(e) => {
                // No relay: the caller gets 503, as Asterisk without RTP ports would.
                tracing::warn!(channel = %call.channel, error = %e, "no media relay for the call");
                self.fail(id, CallError::NoRelay);
                return;
            }
        };
        let (Some(relay_a), Some(relay_b)) = (local_of(&session.a), local_of(&session.b)) else {
            self.fail(id, CallError::NoRelay);
            return;
        };
        self.watch.register(&relay, &session_id, notify);
        self.sip(id, |core| {
            core.call_set_media(id, relay_a, relay_b);
            core.call_set_media_ref(
                id,
                MediaRef {
                    relay: relay.url.clone(),
                    session_id: session_id.clone(),
                },
            );
        });

        let (to_router, events) = mpsc::unbounded_channel();
        let context = self.sip(id, |core| core.peer_context(&call.peer));
        let _ = to_router.send(Box::new(router::ChannelEvent {
            event: Some(channel_event::Event::NewChannel(router::NewChannel {
                channel: call.channel.clone(),
                unique_id: format!("{}.{id}", self.epoch),
                peer: call.peer.clone(),
                context,
                exten: call.exten.clone(),
                caller_id: Some(router::CallerId {
                    number: call.caller_number.clone(),
                    name: call.caller_name.clone(),
                }),
                call_id: call.call_id.clone(),
                media: Some(media::SessionRef {
                    relay: relay.url.clone(),
                    session_id: session_id.clone(),
                }),
                variables: Default::default(),
                codecs: call.codecs.clone(),
            })),
        }));
        // The router with the fewest calls; the lease counts this call there until the
        // call's task ends.
        let (router_channel, _router_lease) = self.router.pick();
        let commands = open_call_control(router_channel, events).await;
        let mut commands = match commands {
            Ok(stream) => stream.into_inner(),
            Err(e) => {
                tracing::warn!(channel = %call.channel, error = %e, "the router is unreachable");
                self.fail(id, CallError::RouterUnreachable);
                self.watch.unregister(&session_id);
                self.delete(&relay, &session_id).await;
                return;
            }
        };
        let send = |event: channel_event::Event| {
            let _ = to_router.send(Box::new(router::ChannelEvent { event: Some(event) }));
        };
        // Whether the span already says how the call ended.
        let mut noted = false;
        loop {
            tokio::select! {
                command = commands.message() => {
                    let command = match command {
                        Ok(Some(command)) => command,
                        Ok(None) | Err(_) => break,
                    };
                    let Some(what) = command.command else { continue };
                    match self.command(id, command.id, what, &relay, &session_id).await {
                        Step::Done(error) => send(channel_event::Event::CommandDone(router::CommandDone {
                            command_id: command.id,
                            error,
                        })),
                        Step::Waiting => {}
                        Step::DialFailed(status) => send(channel_event::Event::DialResult(router::DialResult {
                            command_id: command.id,
                            status: status.into(),
                            ..Default::default()
                        })),
                        Step::HungUp => break,
                    }
                }
                event = sip_events.recv() => {
                    let Some(event) = event else { break };
                    let leg_b = media::LegId::B;
                    let gone = match event {
                        CallEvent::MediaTimeout => {
                            // Asterisk's rtptimeout: both legs end, the dialplan hears it.
                            ended(self.sip(id, |core| core.call_hangup(id, 16)), 16, "media timeout");
                            Some((16, "media timeout", HANGUP_GRACE))
                        }
                        CallEvent::Stopped { cause } => {
                            // The drain's deadline: the endpoint sent BYE both ways.
                            ended(Some(200), cause, "edge shutting down");
                            Some((cause, "edge shutting down", HANGUP_GRACE_AT_DEADLINE))
                        }
                        CallEvent::HandedOver => {
                            // The next edge takes the call over: its session stays. The
                            // router's stream ends with this task (it runs `h`).
                            ended(Some(200), 16, "handed over to the next edge");
                            self.watch.unregister(&session_id);
                            return;
                        }
                        CallEvent::CallerGone { cause, status } => {
                            ended(status, cause, "caller hung up");
                            Some((cause, "caller hung up", HANGUP_GRACE))
                        }
                        CallEvent::Bridged { channel, remote, event_payload_types, nat, .. } => {
                            tracing::info!(%channel, "bridged");
                            self.update_leg(&relay, &session_id, leg_b, remote, event_payload_types, nat, media::Direction::Sendrecv).await;
                            None
                        }
                        CallEvent::EarlyMedia { remote, nat } => {
                            self.update_leg(&relay, &session_id, leg_b, remote, Vec::new(), nat, media::Direction::Sendrecv).await;
                            None
                        }
                        CallEvent::DialFinished { command_id, status, sip_status } => {
                            send(channel_event::Event::DialResult(router::DialResult {
                                command_id,
                                status: dial_status(status).into(),
                                sip_status: u32::from(sip_status),
                                ..Default::default()
                            }));
                            None
                        }
                        CallEvent::BridgeEnded { command_id, channel, secs } => {
                            // The callee's side is silent from now on.
                            self.update_leg(&relay, &session_id, leg_b, None, Vec::new(), false, media::Direction::Inactive).await;
                            send(channel_event::Event::DialResult(router::DialResult {
                                command_id,
                                status: router::DialStatus::Answer.into(),
                                answered_channel: channel,
                                answered_secs: secs,
                                ..Default::default()
                            }));
                            None
                        }
                        CallEvent::Reinvite { b_leg, remote, direction: d } => {
                            let leg = if b_leg { leg_b } else { media::LegId::A };
                            let nat = !b_leg && call.caller_nat;
                            self.update_leg(&relay, &session_id, leg, remote, Vec::new(), nat, direction(d)).await;
                            None
                        }
                    };
                    if let Some((cause, reason, grace)) = gone {
                        noted = true;
                        send(channel_event::Event::HangUp(router::HangUp {
                            cause,
                            reason: reason.into(),
                        }));
                        // The router runs `h`, then closes; don't wait forever (and
                        // not long once the drain's deadline has passed).
                        let _ = tokio::time::timeout(grace, async {
                            while let Ok(Some(_)) = commands.message().await {}
                        })
                        .await;
                        break;
                    }
                }
            }
        }
        // Still up when the dialplan ends: Asterisk hangs up (cause 16) as well.
        let status = self.sip(id, |core| core.call_hangup(id, 16));
        if status.is_some() && !noted {
            ended(status, 16, "dialplan");
        }
        self.watch.unregister(&session_id);
        self.delete(&relay, &session_id).await;
    }

    /// A call bridged before a restart: no dialplan to run (the router's stream went
    /// with the old process), only its end to carry out, and its re-INVITEs to follow
    /// at the relay.
    async fn run_restored(
        self,
        id: u64,
        record: CallRecord,
        mut sip_events: mpsc::UnboundedReceiver<CallEvent>,
        notify: mpsc::UnboundedSender<CallEvent>,
    ) {
        let media = record
            .media
            .as_ref()
            .and_then(|m| Some((self.relays.by_url(&m.relay)?, m.session_id.clone())));
        let Some((relay, session_id)) = media else {
            tracing::warn!(channel = %record.channel, "a restored call without its relay session: ending it");
            ended(
                self.sip(id, |core| core.call_hangup(id, 41)),
                41,
                "no media after restart",
            );
            return;
        };
        // The relay may have ended the session while the edge was away (its media
        // timeout): then so does the call.
        let mut client = relay.client.clone();
        let status = client
            .get_stats(media::GetStatsRequest {
                session_id: session_id.clone(),
            })
            .await;
        if let Err(e) = status {
            if e.code() == tonic::Code::NotFound {
                tracing::info!(channel = %record.channel, "a restored call's relay session is gone: ending it");
                ended(
                    self.sip(id, |core| core.call_hangup(id, 16)),
                    16,
                    "media gone after restart",
                );
                return;
            }
        }
        self.watch.register(&relay, &session_id, notify);
        let nat_a = self.sip(id, |core| core.peer_nat(&record.peer));
        while let Some(event) = sip_events.recv().await {
            match event {
                CallEvent::CallerGone { cause, status } => {
                    ended(status, cause, "caller hung up");
                    break;
                }
                CallEvent::BridgeEnded { .. } => {
                    ended(
                        self.sip(id, |core| core.call_hangup(id, 16)),
                        16,
                        "callee hung up",
                    );
                    break;
                }
                CallEvent::MediaTimeout => {
                    ended(
                        self.sip(id, |core| core.call_hangup(id, 16)),
                        16,
                        "media timeout",
                    );
                    break;
                }
                CallEvent::Stopped { cause } => {
                    ended(Some(200), cause, "edge shutting down");
                    break;
                }
                CallEvent::HandedOver => {
                    ended(Some(200), 16, "handed over to the next edge");
                    self.watch.unregister(&session_id);
                    return;
                }
                CallEvent::Reinvite {
                    b_leg,
                    remote,
                    direction: d,
                } => {
                    let (leg, nat) = if b_leg {
                        (media::LegId::B, false)
                    } else {
                        (media::LegId::A, nat_a)
                    };
                    self.update_leg(
                        &relay,
                        &session_id,
                        leg,
                        remote,
                        Vec::new(),
                        nat,
                        direction(d),
                    )
                    .await;
                }
                CallEvent::Bridged { .. }
                | CallEvent::EarlyMedia { .. }
                | CallEvent::DialFinished { .. } => {}
            }
        }
        self.sip(id, |core| core.call_hangup(id, 16));
        self.watch.unregister(&session_id);
        self.delete(&relay, &session_id).await;
    }

    /// Points a relay leg at its far end (callee's answer, early media, re-INVITE).
    #[allow(clippy::too_many_arguments)]
    async fn update_leg(
        &self,
        relay: &Relay,
        session_id: &str,
        leg: media::LegId,
        remote: Option<SocketAddr>,
        event_payload_types: Vec<u32>,
        nat: bool,
        d: media::Direction,
    ) {
        let mut client = relay.client.clone();
        if let Err(e) = client
            .update_leg(media::UpdateLegRequest {
                session_id: session_id.to_owned(),
                leg: leg.into(),
                remote: remote.map(endpoint),
                direction: d.into(),
                latching: latching(nat).into(),
                clock_rate: 8000,
                event_payload_types,
            })
            .await
        {
            tracing::warn!(error = %e, ?leg, "cannot update the relay leg");
        }
    }

    async fn delete(&self, relay: &Relay, session_id: &str) {
        let mut client = relay.client.clone();
        let _ = client
            .delete_session(media::DeleteSessionRequest {
                session_id: session_id.to_owned(),
            })
            .await;
    }

    async fn command(
        &self,
        id: u64,
        command_id: u64,
        what: dialplan_command::Command,
        relay: &Relay,
        session_id: &str,
    ) -> Step {
        use dialplan_command::Command;
        match what {
            Command::Answer(_) => Step::done(self.sip(id, |core| core.call_answer(id))),
            Command::Indicate(indicate) => {
                use router::indicate::Indication;
                let status = match Indication::try_from(indicate.indication) {
                    Ok(Indication::Ringing) => 180,
                    Ok(Indication::Progress) => 183,
                    Ok(Indication::Busy) => 486,
                    Ok(Indication::Congestion) => 503,
                    _ => return Step::Done("unknown indication".into()),
                };
                Step::done(self.sip(id, |core| core.call_indicate(id, status)))
            }
            Command::Dial(dial) => {
                let targets: Vec<Target> = dial
                    .targets
                    .iter()
                    .filter(|t| t.technology.eq_ignore_ascii_case("SIP"))
                    .map(|t| Target {
                        peer: t.peer.clone(),
                        number: t.number.clone(),
                        // A line's contacts, from the shard that keeps its bindings.
                        contacts: self.edge.with_line(&t.peer, |core| core.contacts(&t.peer)),
                    })
                    .collect();
                let caller = dial
                    .caller_id
                    .map(|c| (c.number, c.name))
                    .unwrap_or_default();
                let timeout = (dial.timeout_secs > 0)
                    .then(|| Duration::from_secs(u64::from(dial.timeout_secs)));
                match self.sip(id, |core| {
                    core.call_dial(id, command_id, &targets, timeout, caller)
                }) {
                    Ok(()) => Step::Waiting,
                    Err(e) => {
                        tracing::info!(error = %e, "Dial cannot start");
                        Step::DialFailed(router::DialStatus::Chanunavail)
                    }
                }
            }
            Command::ConnectVoicemail(connect) => {
                if let Err(e) = self.sip(id, |core| core.call_answer(id)) {
                    return Step::Done(e.to_string());
                }
                let mut client = relay.client.clone();
                let redirected = client
                    .redirect_leg(media::RedirectLegRequest {
                        session_id: session_id.to_owned(),
                        from: media::LegId::A.into(),
                        target: connect.rtp,
                    })
                    .await;
                Step::Done(redirected.err().map(|e| e.to_string()).unwrap_or_default())
            }
            Command::Hangup(hangup) => {
                let cause = if hangup.cause == 0 { 16 } else { hangup.cause };
                ended(
                    self.sip(id, |core| core.call_hangup(id, cause)),
                    cause,
                    "Hangup",
                );
                Step::HungUp
            }
            Command::Playback(_) => Step::Done(
                "Playback: the edge has no prompt player (voicemail plays prompts)".into(),
            ),
        }
    }
}

/// tonic gives every stream an 8 KiB encode and an 8 KiB decode buffer; call-control
/// messages are a few hundred bytes, and a busy edge holds thousands of these streams
/// (one per call), so they get small buffers that grow only if a message needs it.
struct CallControlCodec;

impl tonic::codec::Codec for CallControlCodec {
    type Encode = router::ChannelEvent;
    type Decode = router::DialplanCommand;
    type Encoder = tonic_prost::ProstEncoder<router::ChannelEvent>;
    type Decoder = tonic_prost::ProstDecoder<router::DialplanCommand>;

    fn encoder(&mut self) -> Self::Encoder {
        tonic_prost::ProstEncoder::new(tonic::codec::BufferSettings::new(512, 32 * 1024))
    }

    fn decoder(&mut self) -> Self::Decoder {
        tonic_prost::ProstDecoder::new(tonic::codec::BufferSettings::new(512, 32 * 1024))
    }
}

/// `CallControl.Run` with [`CallControlCodec`] (the generated client's codec has the
/// default buffers).
async fn open_call_control(
    router: TracedChannel,
    events: mpsc::UnboundedReceiver<Box<router::ChannelEvent>>,
) -> Result<tonic::Response<tonic::Streaming<router::DialplanCommand>>, tonic::Status> {
    use tokio_stream::StreamExt;
    let mut grpc = tonic::client::Grpc::new(router);
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(format!("the router is not ready: {e}")))?;
    let path =
        tonic::codegen::http::uri::PathAndQuery::from_static("/phone.router.v1.CallControl/Run");
    grpc.streaming(
        // Boxed in the channel: its blocks hold 32 slots each, and a ChannelEvent is
        // hundreds of bytes.
        tonic::Request::new(UnboundedReceiverStream::new(events).map(|event| *event)),
        path,
        CallControlCodec,
    )
    .await
}

enum Step {
    /// CommandDone, with an error text or empty.
    Done(String),
    /// The answer comes later as an event (Dial).
    Waiting,
    DialFailed(router::DialStatus),
    HungUp,
}

impl Step {
    /// A command carried out, or the error the router is told.
    fn done(result: Result<(), CallError>) -> Self {
        Step::Done(result.err().map(|e| e.to_string()).unwrap_or_default())
    }
}
