//! `phone.media.v1.MediaRelay`: the control plane. It binds each new session's ports,
//! places the session on the least-loaded worker and relays every other request to the
//! worker that owns the session. Errors follow the contract: RESOURCE_EXHAUSTED when no
//! port pair is free, NOT_FOUND for an unknown session, UNAVAILABLE while draining,
//! INVALID_ARGUMENT for a request that names no leg or a bad address.

use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use futures::{Stream, StreamExt};
use phone_proto::media::v1 as pb;
use phone_proto::media::v1::media_relay_server::MediaRelay;
use tokio::sync::oneshot;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tokio_stream::wrappers::BroadcastStream;
use tokio_util::task::TaskTracker;
use tonic::{Request, Response, Status};

use crate::metrics::{Metrics, ReasonLabel};
use crate::session::{Direction, Latching, LegId, LegUpdate, Session, Timeouts};
use crate::worker::{Bound, Command, Ended, Handle, Shared};

/// The gRPC service; cheap to clone.
#[derive(Clone)]
pub struct Control {
    pub(crate) shared: Arc<Shared>,
    pub(crate) workers: Arc<Vec<Handle>>,
    pub(crate) bind_ip: IpAddr,
    pub(crate) timeouts: Timeouts,
    pub(crate) metrics: Metrics,
    pub(crate) draining: Arc<AtomicBool>,
    pub(crate) in_flight: TaskTracker,
}

impl Control {
    fn worker_of(&self, id: &str) -> Result<usize, Status> {
        self.shared
            .index
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .copied()
            .ok_or_else(|| Status::not_found(format!("no media session '{id}'")))
    }

    /// Sends a command to `worker` and waits for its answer.
    async fn ask<T>(
        &self,
        worker: usize,
        command: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, Status> {
        let (reply, answer) = oneshot::channel();
        if !self.workers[worker].send(command(reply)) {
            return Err(Status::internal("the forwarding worker has stopped"));
        }
        answer
            .await
            .map_err(|_| Status::internal("the forwarding worker dropped the request"))
    }

    /// Asks the worker that owns session `id`; NOT_FOUND if none does.
    async fn ask_owner<T>(
        &self,
        id: &str,
        command: impl FnOnce(Arc<str>, oneshot::Sender<Option<T>>) -> Command,
    ) -> Result<T, Status> {
        let worker = self.worker_of(id)?;
        let id: Arc<str> = id.into();
        self.ask(worker, |reply| command(id.clone(), reply))
            .await?
            .ok_or_else(|| Status::not_found(format!("no media session '{id}'")))
    }

    fn refuse(&self, reason: &'static str, status: Status) -> Status {
        self.metrics
            .sessions_refused
            .get_or_create(&ReasonLabel { reason })
            .inc();
        status
    }

    /// Binds a port pair for each leg.
    fn bind_ports(&self) -> Result<Bound, Status> {
        let mut pool = self.shared.ports.lock().unwrap_or_else(|e| e.into_inner());
        let exhausted = |e: crate::ports::Exhausted| {
            tracing::warn!(error = %e, "media session refused");
            self.refuse("ports_exhausted", Status::resource_exhausted(e.to_string()))
        };
        let (port_a, [a_rtp, a_rtcp]) = pool.allocate(self.bind_ip).map_err(exhausted)?;
        let (port_b, [b_rtp, b_rtcp]) = match pool.allocate(self.bind_ip) {
            Ok(pair) => pair,
            Err(e) => {
                drop((a_rtp, a_rtcp));
                pool.release(port_a);
                return Err(exhausted(e));
            }
        };
        self.metrics.free_port_pairs.set(pool.free() as i64);
        Ok(Bound {
            ports: [port_a, port_b],
            sockets: [a_rtp, a_rtcp, b_rtp, b_rtcp],
        })
    }

    fn least_loaded(&self) -> usize {
        (0..self.workers.len())
            .min_by_key(|i| self.workers[*i].load.load(Ordering::Relaxed))
            .unwrap_or(0)
    }
}

fn leg_from_pb(value: i32) -> Result<LegId, Status> {
    match pb::LegId::try_from(value) {
        Ok(pb::LegId::A) => Ok(LegId::A),
        Ok(pb::LegId::B) => Ok(LegId::B),
        _ => Err(Status::invalid_argument("leg must be LEG_ID_A or LEG_ID_B")),
    }
}

fn latching_from_pb(value: i32) -> Latching {
    match pb::Latching::try_from(value) {
        Ok(pb::Latching::Symmetric) => Latching::Symmetric,
        // Unspecified means strict: never learn a source nobody asked for.
        _ => Latching::Strict,
    }
}

pub(crate) fn latching_to_pb(latching: Latching) -> pb::Latching {
    match latching {
        Latching::Strict => pb::Latching::Strict,
        Latching::Symmetric => pb::Latching::Symmetric,
    }
}

fn direction_from_pb(value: i32) -> Direction {
    match pb::Direction::try_from(value) {
        Ok(pb::Direction::Sendonly) => Direction::SendOnly,
        Ok(pb::Direction::Recvonly) => Direction::RecvOnly,
        Ok(pb::Direction::Inactive) => Direction::Inactive,
        _ => Direction::SendRecv,
    }
}

pub(crate) fn direction_to_pb(direction: Direction) -> pb::Direction {
    match direction {
        Direction::SendRecv => pb::Direction::Sendrecv,
        Direction::SendOnly => pb::Direction::Sendonly,
        Direction::RecvOnly => pb::Direction::Recvonly,
        Direction::Inactive => pb::Direction::Inactive,
    }
}

/// RFC 4733 payload types from the wire (0-127; anything else is ignored).
fn event_types(types: &[u32]) -> Vec<u8> {
    types
        .iter()
        .filter_map(|pt| u8::try_from(*pt).ok().filter(|pt| *pt < 128))
        .collect()
}

/// A far end from SDP. Port 0 (a rejected stream, RFC 3264 §6) and the unspecified
/// address (RFC 2543 hold, `c=0.0.0.0`) mean nowhere to send.
fn remote_from_pb(endpoint: Option<&pb::Endpoint>) -> Result<Option<SocketAddr>, Status> {
    let Some(endpoint) = endpoint else {
        return Ok(None);
    };
    let ip: IpAddr =
        endpoint.ip.trim().parse().map_err(|_| {
            Status::invalid_argument(format!("'{}' is not an IP address", endpoint.ip))
        })?;
    let port = u16::try_from(endpoint.port)
        .map_err(|_| Status::invalid_argument(format!("port {} is out of range", endpoint.port)))?;
    if port == 0 || ip.is_unspecified() {
        return Ok(None);
    }
    if ip.is_multicast() {
        return Err(Status::invalid_argument(format!(
            "{ip} is a multicast address; the relay forwards unicast RTP only"
        )));
    }
    Ok(Some(SocketAddr::new(ip, port)))
}

fn session_span(id: &str, call_id: &str, worker: usize) -> tracing::Span {
    use tracing::field::Empty;
    tracing::info_span!(
        "media-relay.session",
        session = %id,
        call_id = %call_id,
        worker,
        ended_by = Empty,
        duration_ms = Empty,
        a.packets_received = Empty,
        a.packets_sent = Empty,
        a.packets_lost = Empty,
        a.jitter_ms = Empty,
        a.packets_foreign = Empty,
        b.packets_received = Empty,
        b.packets_sent = Empty,
        b.packets_lost = Empty,
        b.jitter_ms = Empty,
        b.packets_foreign = Empty,
    )
}

/// The session's final stats on its span, per leg.
fn record_end(span: &tracing::Span, ended: &Ended) {
    span.record("ended_by", ended.how);
    span.record("duration_ms", ended.stats.duration_ms);
    for (name, leg) in [("a", ended.stats.a), ("b", ended.stats.b)] {
        let leg = leg.unwrap_or_default();
        let field = |what: &str| format!("{name}.{what}");
        span.record(field("packets_received").as_str(), leg.packets_received);
        span.record(field("packets_sent").as_str(), leg.packets_sent);
        span.record(field("packets_lost").as_str(), leg.packets_lost);
        span.record(field("jitter_ms").as_str(), leg.jitter_ms);
        span.record(field("packets_foreign").as_str(), leg.packets_foreign);
    }
}

#[tonic::async_trait]
impl MediaRelay for Control {
    type WatchEventsStream = Pin<Box<dyn Stream<Item = Result<pb::SessionEvent, Status>> + Send>>;

    async fn create_session(
        &self,
        request: Request<pb::CreateSessionRequest>,
    ) -> Result<Response<pb::Session>, Status> {
        let request = request.into_inner();
        if request.session_id.is_empty() {
            return Err(Status::invalid_argument("session_id is empty"));
        }
        if self.draining.load(Ordering::SeqCst) {
            return Err(self.refuse(
                "draining",
                Status::unavailable("this relay is draining; choose another"),
            ));
        }
        let id: Arc<str> = request.session_id.as_str().into();
        // A retried create returns the session it made the first time.
        if let Ok(worker) = self.worker_of(&id) {
            let view = self
                .ask(worker, |reply| Command::View {
                    id: id.clone(),
                    reply,
                })
                .await?;
            return view
                .map(Response::new)
                .ok_or_else(|| Status::aborted("the session ended while being created"));
        }
        let bound = self.bind_ports()?;
        let worker = self.least_loaded();
        {
            let mut index = self.shared.index.lock().unwrap_or_else(|e| e.into_inner());
            if index.contains_key(&id) {
                drop(index);
                let mut pool = self.shared.ports.lock().unwrap_or_else(|e| e.into_inner());
                let [a, b] = bound.ports;
                drop(bound.sockets);
                pool.release(a);
                pool.release(b);
                return Err(Status::aborted(
                    "the same session is being created concurrently",
                ));
            }
            index.insert(id.clone(), worker);
        }
        let remote_a = remote_from_pb(request.remote_a.as_ref())?;
        let now = Instant::now();
        let mut session = Session::new(
            now,
            latching_from_pb(request.latching_a),
            latching_from_pb(request.latching_b),
            self.timeouts,
        );
        if remote_a.is_some() {
            session.update_leg(
                now,
                LegId::A,
                LegUpdate {
                    remote: remote_a,
                    direction: Direction::SendRecv,
                    latching: latching_from_pb(request.latching_a),
                    clock_rate: 0,
                    event_payload_types: event_types(&request.event_payload_types_a),
                },
            );
        }
        let (done, finished) = oneshot::channel::<Ended>();
        // The session's span (in the call's trace, below this request's) lasts as long as
        // the session and ends with its final stats. The drain waits for every session to
        // end (or for its deadline).
        let span = session_span(&id, &request.call_id, worker);
        self.in_flight.spawn(async move {
            if let Ok(ended) = finished.await {
                record_end(&span, &ended);
            }
        });
        let view = self
            .ask(worker, |reply| Command::Add {
                id: id.clone(),
                call_id: request.call_id.clone(),
                session: Box::new(session),
                bound,
                done,
                reply,
            })
            .await?;
        self.metrics.sessions_created.inc();
        tracing::info!(session = %id, call_id = %request.call_id, worker,
            a = ?view.a.as_ref().and_then(|l| l.local.as_ref()).map(|e| e.port),
            b = ?view.b.as_ref().and_then(|l| l.local.as_ref()).map(|e| e.port),
            "media session created");
        Ok(Response::new(view))
    }

    async fn update_leg(
        &self,
        request: Request<pb::UpdateLegRequest>,
    ) -> Result<Response<pb::Session>, Status> {
        let request = request.into_inner();
        let leg = leg_from_pb(request.leg)?;
        let update = LegUpdate {
            remote: remote_from_pb(request.remote.as_ref())?,
            direction: direction_from_pb(request.direction),
            latching: latching_from_pb(request.latching),
            clock_rate: request.clock_rate,
            event_payload_types: event_types(&request.event_payload_types),
        };
        let view = self
            .ask_owner(&request.session_id, |id, reply| Command::Update {
                id,
                leg,
                update,
                reply,
            })
            .await?;
        Ok(Response::new(view))
    }

    async fn redirect_leg(
        &self,
        request: Request<pb::RedirectLegRequest>,
    ) -> Result<Response<pb::Session>, Status> {
        let request = request.into_inner();
        let from = leg_from_pb(request.from)?;
        let target = remote_from_pb(request.target.as_ref())?;
        if request.target.is_some() && target.is_none() {
            return Err(Status::invalid_argument(
                "the redirect target needs an address and a port",
            ));
        }
        let view = self
            .ask_owner(&request.session_id, |id, reply| Command::Redirect {
                id,
                from,
                target,
                reply,
            })
            .await?;
        Ok(Response::new(view))
    }

    async fn delete_session(
        &self,
        request: Request<pb::DeleteSessionRequest>,
    ) -> Result<Response<pb::SessionStats>, Status> {
        let id = request.into_inner().session_id;
        let stats = self
            .ask_owner(&id, |id, reply| Command::Delete { id, reply })
            .await?;
        tracing::info!(session = %id, duration_ms = stats.duration_ms, "media session deleted");
        Ok(Response::new(stats))
    }

    async fn get_stats(
        &self,
        request: Request<pb::GetStatsRequest>,
    ) -> Result<Response<pb::SessionStats>, Status> {
        let id = request.into_inner().session_id;
        let stats = self
            .ask_owner(&id, |id, reply| Command::Stats { id, reply })
            .await?;
        Ok(Response::new(stats))
    }

    async fn list_sessions(
        &self,
        _: Request<pb::ListSessionsRequest>,
    ) -> Result<Response<pb::ListSessionsResponse>, Status> {
        let mut sessions = Vec::new();
        for worker in 0..self.workers.len() {
            sessions.extend(self.ask(worker, |reply| Command::List { reply }).await?);
        }
        sessions.sort_by(|a, b| a.session_id.cmp(&b.session_id));
        Ok(Response::new(pb::ListSessionsResponse { sessions }))
    }

    async fn watch_events(
        &self,
        _: Request<pb::WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        let events =
            BroadcastStream::new(self.shared.events.subscribe()).filter_map(|event| async move {
                match event {
                    Ok(event) => Some(Ok(event)),
                    Err(BroadcastStreamRecvError::Lagged(missed)) => {
                        tracing::warn!(missed, "an event watcher fell behind; events skipped");
                        None
                    }
                }
            });
        Ok(Response::new(Box::pin(events)))
    }

    async fn get_load(&self, _: Request<pb::GetLoadRequest>) -> Result<Response<pb::Load>, Status> {
        let active: usize = self
            .workers
            .iter()
            .map(|w| w.load.load(Ordering::Relaxed))
            .sum();
        let free = self
            .shared
            .ports
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .free();
        Ok(Response::new(pb::Load {
            active_sessions: u32::try_from(active).unwrap_or(u32::MAX),
            free_port_pairs: u32::try_from(free).unwrap_or(u32::MAX),
            draining: self.draining.load(Ordering::SeqCst),
        }))
    }
}
