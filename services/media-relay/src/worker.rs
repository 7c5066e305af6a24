//! The forwarding threads. Each worker is one OS thread with its own `mio` poll and
//! owns its sessions outright: the four sockets of a session (RTP and RTCP of each
//! leg) and its [`Session`] core live in that thread alone, so the per-packet path
//! takes no lock and shares no cache line with another worker. The control plane
//! (gRPC) places each new session on the least-loaded worker and talks to it through
//! a channel and a [`mio::Waker`]; replies come back on oneshot channels. With one
//! worker per core the relay uses every core it is given, and a core's worth of calls
//! is the unit of scaling.
//!
//! Per readable socket the worker drains the kernel queue with batched `recvmmsg` (mio
//! is edge-triggered, and a short batch shows the queue empty without a further call), asks the session for a verdict and sends the datagram, unchanged,
//! out of the other leg's socket. Once a second it checks the sessions' timeouts.

use std::collections::HashMap;
use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use std::io::IoSliceMut;
use std::os::fd::AsRawFd;

use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token, Waker};
use nix::errno::Errno;
use nix::sys::socket::{recvmmsg, MsgFlags, MultiHeaders, SockaddrStorage};
use phone_proto::media::v1 as pb;
use slab::Slab;
use tokio::sync::{broadcast, oneshot};

use crate::metrics::WorkerMetrics;
use crate::ports::PortPool;
use crate::session::{Dropped, Kind, LegId, LegUpdate, Session, Verdict};

const WAKER: Token = Token(usize::MAX);
/// How often the timeouts are checked; a 60 s timeout fires within a second of it.
const TICK: Duration = Duration::from_secs(1);
/// The largest UDP payload; a datagram is never truncated.
const MAX_DATAGRAM: usize = 65_536;

/// Socket `i` of a session: 0 A RTP, 1 A RTCP, 2 B RTP, 3 B RTCP.
fn role(socket: usize) -> (LegId, Kind) {
    let leg = if socket < 2 { LegId::A } else { LegId::B };
    let kind = if socket.is_multiple_of(2) {
        Kind::Rtp
    } else {
        Kind::Rtcp
    };
    (leg, kind)
}

fn socket_of(leg: LegId, kind: Kind) -> usize {
    leg.index() * 2
        + match kind {
            Kind::Rtp => 0,
            Kind::Rtcp => 1,
        }
}

/// Datagrams taken per `recvmmsg` call.
const BATCH: usize = 8;

/// A worker's receive buffers: [`BATCH`] datagrams of [`MAX_DATAGRAM`] bytes and their
/// message headers, reused by every `recvmmsg`. Built on the worker's own thread
/// (the headers are not `Send`).
struct Receiver {
    headers: MultiHeaders<SockaddrStorage>,
    buffers: Vec<u8>,
}

impl Receiver {
    fn new() -> Self {
        Self {
            headers: MultiHeaders::preallocate(BATCH, None),
            buffers: vec![0; BATCH * MAX_DATAGRAM],
        }
    }
}

/// The IP source address of a received datagram.
fn socket_addr(address: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = address.as_sockaddr_in() {
        return Some(SocketAddr::V4((*v4).into()));
    }
    address
        .as_sockaddr_in6()
        .map(|v6| SocketAddr::V6((*v6).into()))
}

/// A new session's ports, bound by the control plane.
pub struct Bound {
    /// The even RTP port of leg A and of leg B.
    pub ports: [u16; 2],
    /// A RTP, A RTCP, B RTP, B RTCP.
    pub sockets: [std::net::UdpSocket; 4],
}

pub enum Command {
    Add {
        id: Arc<str>,
        call_id: String,
        session: Box<Session>,
        bound: Bound,
        /// Gets the final stats and how the session ended (or is dropped with the
        /// worker): the drain waits for it, and the session's span records it.
        done: oneshot::Sender<Ended>,
        reply: oneshot::Sender<pb::Session>,
    },
    View {
        id: Arc<str>,
        reply: oneshot::Sender<Option<pb::Session>>,
    },
    Update {
        id: Arc<str>,
        leg: LegId,
        update: LegUpdate,
        reply: oneshot::Sender<Option<pb::Session>>,
    },
    Redirect {
        id: Arc<str>,
        from: LegId,
        target: Option<SocketAddr>,
        reply: oneshot::Sender<Option<pb::Session>>,
    },
    Delete {
        id: Arc<str>,
        reply: oneshot::Sender<Option<pb::SessionStats>>,
    },
    Stats {
        id: Arc<str>,
        reply: oneshot::Sender<Option<pb::SessionStats>>,
    },
    List {
        reply: oneshot::Sender<Vec<pb::Session>>,
    },
    Stop,
}

/// What every worker shares with the control plane (never touched per packet).
pub struct Shared {
    pub advertise_ip: IpAddr,
    pub ports: Mutex<PortPool>,
    /// Session id -> worker, for routing commands.
    pub index: Mutex<HashMap<Arc<str>, usize>>,
    pub events: broadcast::Sender<pb::SessionEvent>,
}

/// The control plane's end of a worker.
pub struct Handle {
    commands: mpsc::Sender<Command>,
    waker: Arc<Waker>,
    /// Sessions on this worker, for placement.
    pub load: Arc<AtomicUsize>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Handle {
    /// Starts worker `number`.
    pub fn spawn(
        number: usize,
        shared: Arc<Shared>,
        metrics: WorkerMetrics,
    ) -> std::io::Result<Self> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let (commands, inbox) = mpsc::channel();
        let load = Arc::new(AtomicUsize::new(0));
        let mut worker = Worker {
            number,
            poll,
            inbox,
            slots: Slab::new(),
            by_id: HashMap::new(),
            shared,
            metrics,
            load: load.clone(),
        };
        let thread = std::thread::Builder::new()
            .name(format!("relay-worker-{number}"))
            .spawn(move || worker.run())?;
        Ok(Self {
            commands,
            waker,
            load,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Hands `command` to the worker; false if the worker is gone.
    pub fn send(&self, command: Command) -> bool {
        self.commands.send(command).is_ok() && self.waker.wake().is_ok()
    }

    /// Stops the worker (its sessions end without events) and waits for the thread.
    pub fn stop(&self) {
        self.send(Command::Stop);
        let thread = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.stop();
    }
}

struct Slot {
    id: Arc<str>,
    call_id: String,
    session: Session,
    sockets: [UdpSocket; 4],
    ports: [u16; 2],
    done: oneshot::Sender<Ended>,
}

/// A session's end, for whoever created it: its final stats and why it ended
/// (`deleted`, `media timeout`, `relay stopped`).
#[derive(Debug)]
pub struct Ended {
    pub stats: pb::SessionStats,
    pub how: &'static str,
}

/// How a session ended.
enum End {
    Deleted,
    TimedOut(crate::session::Timeout),
    Stopped,
}

struct Worker {
    number: usize,
    poll: Poll,
    inbox: mpsc::Receiver<Command>,
    slots: Slab<Slot>,
    by_id: HashMap<Arc<str>, usize>,
    shared: Arc<Shared>,
    metrics: WorkerMetrics,
    load: Arc<AtomicUsize>,
}

impl Worker {
    fn run(&mut self) {
        let mut events = Events::with_capacity(1024);
        let mut rx = Receiver::new();
        let mut next_tick = Instant::now() + TICK;
        loop {
            let wait = next_tick.saturating_duration_since(Instant::now());
            if let Err(e) = self.poll.poll(&mut events, Some(wait)) {
                if e.kind() != ErrorKind::Interrupted {
                    tracing::error!(worker = self.number, error = %e, "poll failed; worker stops");
                    return;
                }
            }
            for event in events.iter() {
                if event.token() == WAKER {
                    if !self.commands() {
                        self.end_all();
                        return;
                    }
                    continue;
                }
                self.readable(event.token().0, &mut rx);
            }
            let now = Instant::now();
            if now >= next_tick {
                self.check_timeouts(now);
                next_tick = now + TICK;
            }
        }
    }

    /// Drains socket `token` (slot * 4 + socket): up to [`BATCH`] datagrams per
    /// `recvmmsg`, until a call returns fewer than it had room for (the queue was
    /// empty then) or nothing at all.
    fn readable(&mut self, token: usize, rx: &mut Receiver) {
        let (slot, socket) = (token / 4, token % 4);
        let Some(s) = self.slots.get_mut(slot) else {
            return;
        };
        let (leg, kind) = role(socket);
        let fd = s.sockets[socket].as_raw_fd();
        loop {
            let mut buffers = rx.buffers.chunks_exact_mut(MAX_DATAGRAM);
            let mut slices: [[IoSliceMut; 1]; BATCH] =
                std::array::from_fn(|_| [IoSliceMut::new(buffers.next().unwrap_or_default())]);
            let results = match recvmmsg(
                fd,
                &mut rx.headers,
                slices.iter_mut(),
                MsgFlags::MSG_DONTWAIT,
                None,
            ) {
                Ok(results) => results,
                Err(Errno::EAGAIN) => return,
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    // ICMP errors reported on the socket: nothing to forward.
                    tracing::debug!(error = %e, session = %s.id, "receive error");
                    continue;
                }
            };
            let mut received = 0;
            let now = Instant::now();
            for message in results {
                received += 1;
                let Some(source) = message.address.as_ref().and_then(socket_addr) else {
                    continue;
                };
                let packet = message.iovs().next().unwrap_or_default();
                match s.session.on_packet(now, leg, kind, source, packet) {
                    Verdict::Forward { leg, kind, to } => {
                        match s.sockets[socket_of(leg, kind)].send_to(packet, to) {
                            Ok(_) => self.metrics.forwarded(kind, packet.len()),
                            Err(e) => {
                                tracing::debug!(error = %e, %to, session = %s.id, "send failed");
                                self.metrics.dropped_send_failed.inc();
                            }
                        }
                    }
                    Verdict::Drop(reason) => self.metrics.dropped(reason),
                }
            }
            if received < BATCH {
                return;
            }
        }
    }

    /// Runs the queued commands; false on Stop.
    fn commands(&mut self) -> bool {
        while let Ok(command) = self.inbox.try_recv() {
            match command {
                Command::Add {
                    id,
                    call_id,
                    session,
                    bound,
                    done,
                    reply,
                } => {
                    let entry = self.slots.vacant_entry();
                    let key = entry.key();
                    let mut sockets = bound.sockets.map(UdpSocket::from_std);
                    let mut registered = true;
                    for (i, socket) in sockets.iter_mut().enumerate() {
                        if let Err(e) = self.poll.registry().register(
                            socket,
                            Token(key * 4 + i),
                            Interest::READABLE,
                        ) {
                            tracing::error!(error = %e, session = %id, "cannot poll a socket");
                            registered = false;
                        }
                    }
                    if !registered {
                        // The reply is dropped: the control plane answers INTERNAL.
                        let free = self.shared.release(&id, bound.ports);
                        self.metrics.free_port_pairs.set(free as i64);
                        continue;
                    }
                    let slot = entry.insert(Slot {
                        id: id.clone(),
                        call_id,
                        session: *session,
                        sockets,
                        ports: bound.ports,
                        done,
                    });
                    let view = view(slot, self.shared.advertise_ip);
                    self.by_id.insert(id, key);
                    self.load.fetch_add(1, Ordering::Relaxed);
                    self.metrics.sessions_active.inc();
                    let _ = reply.send(view);
                }
                Command::View { id, reply } => {
                    let view = self.slot(&id).map(|s| view(s, self.shared.advertise_ip));
                    let _ = reply.send(view);
                }
                Command::Update {
                    id,
                    leg,
                    update,
                    reply,
                } => {
                    let advertise = self.shared.advertise_ip;
                    let view = self.slot_mut(&id).map(|s| {
                        s.session.update_leg(Instant::now(), leg, update);
                        view(s, advertise)
                    });
                    let _ = reply.send(view);
                }
                Command::Redirect {
                    id,
                    from,
                    target,
                    reply,
                } => {
                    let advertise = self.shared.advertise_ip;
                    let view = self.slot_mut(&id).map(|s| {
                        s.session.redirect(Instant::now(), from, target);
                        view(s, advertise)
                    });
                    let _ = reply.send(view);
                }
                Command::Delete { id, reply } => {
                    let stats = self
                        .by_id
                        .get(&id)
                        .copied()
                        .map(|key| self.end(key, End::Deleted));
                    let _ = reply.send(stats);
                }
                Command::Stats { id, reply } => {
                    let _ = reply.send(self.slot(&id).map(|s| stats(s, Instant::now())));
                }
                Command::List { reply } => {
                    let advertise = self.shared.advertise_ip;
                    let _ =
                        reply.send(self.slots.iter().map(|(_, s)| view(s, advertise)).collect());
                }
                Command::Stop => return false,
            }
        }
        true
    }

    fn slot(&self, id: &str) -> Option<&Slot> {
        self.by_id.get(id).and_then(|key| self.slots.get(*key))
    }

    fn slot_mut(&mut self, id: &str) -> Option<&mut Slot> {
        self.by_id.get(id).and_then(|key| self.slots.get_mut(*key))
    }

    fn check_timeouts(&mut self, now: Instant) {
        let expired: Vec<(usize, crate::session::Timeout)> = self
            .slots
            .iter()
            .filter(|(_, s)| s.session.next_timeout() <= now)
            .filter_map(|(key, s)| s.session.handle_timeout(now).map(|t| (key, t)))
            .collect();
        for (key, timeout) in expired {
            self.end(key, End::TimedOut(timeout));
        }
    }

    /// Ends session `key`: closes its sockets, gives its ports back, tells watchers.
    fn end(&mut self, key: usize, how: End) -> pb::SessionStats {
        let mut slot = self.slots.remove(key);
        for socket in &mut slot.sockets {
            let _ = self.poll.registry().deregister(socket);
        }
        let final_stats = stats(&slot, Instant::now());
        drop(slot.sockets);
        self.by_id.remove(&slot.id);
        self.load.fetch_sub(1, Ordering::Relaxed);
        let free = self.shared.release(&slot.id, slot.ports);
        self.metrics.free_port_pairs.set(free as i64);
        self.metrics.session_ended(&final_stats);
        let id = slot.id.to_string();
        if let End::TimedOut(timeout) = &how {
            tracing::info!(session = %id, call_id = %slot.call_id, leg = ?timeout.leg,
                silent_secs = timeout.silent.as_secs(), "media timeout");
            self.metrics.timeouts.inc();
            let _ = self.shared.events.send(pb::SessionEvent {
                session_id: id.clone(),
                event: Some(pb::session_event::Event::MediaTimeout(pb::MediaTimeout {
                    leg: leg_id(timeout.leg).into(),
                    silent_secs: u32::try_from(timeout.silent.as_secs()).unwrap_or(u32::MAX),
                })),
            });
        }
        let _ = slot.done.send(Ended {
            stats: final_stats.clone(),
            how: match how {
                End::Deleted => "deleted",
                End::TimedOut(_) => "media timeout",
                End::Stopped => "relay stopped",
            },
        });
        if !matches!(how, End::Stopped) {
            let _ = self.shared.events.send(pb::SessionEvent {
                session_id: id,
                event: Some(pb::session_event::Event::Deleted(pb::SessionDeleted {
                    stats: Some(final_stats.clone()),
                })),
            });
        }
        final_stats
    }

    fn end_all(&mut self) {
        let keys: Vec<usize> = self.slots.iter().map(|(key, _)| key).collect();
        for key in keys {
            self.end(key, End::Stopped);
        }
    }
}

impl Shared {
    /// Forgets session `id` and gives its ports back; returns the pairs now free.
    fn release(&self, id: &Arc<str>, ports: [u16; 2]) -> usize {
        self.index
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
        let mut pool = self.ports.lock().unwrap_or_else(|e| e.into_inner());
        for port in ports {
            pool.release(port);
        }
        pool.free()
    }
}

pub fn leg_id(leg: LegId) -> pb::LegId {
    match leg {
        LegId::A => pb::LegId::A,
        LegId::B => pb::LegId::B,
    }
}

fn endpoint(addr: SocketAddr) -> pb::Endpoint {
    pb::Endpoint {
        ip: addr.ip().to_string(),
        port: u32::from(addr.port()),
    }
}

fn view(slot: &Slot, advertise: IpAddr) -> pb::Session {
    let leg = |id: LegId| {
        let leg = slot.session.leg(id);
        pb::Leg {
            id: leg_id(id).into(),
            local: Some(endpoint(SocketAddr::new(advertise, slot.ports[id.index()]))),
            remote: leg.remote().map(endpoint),
            latched: leg.latched().map(endpoint),
            latching: crate::control::latching_to_pb(leg.latching()).into(),
            direction: crate::control::direction_to_pb(leg.direction()).into(),
        }
    };
    pb::Session {
        session_id: slot.id.to_string(),
        a: Some(leg(LegId::A)),
        b: Some(leg(LegId::B)),
        redirect: slot.session.leg(LegId::B).redirect().map(endpoint),
    }
}

fn stats(slot: &Slot, now: Instant) -> pb::SessionStats {
    let leg = |id: LegId| {
        let leg = slot.session.leg(id);
        let c = leg.counters();
        pb::LegStats {
            packets_received: c.packets_received,
            bytes_received: c.bytes_received,
            packets_sent: c.packets_sent,
            bytes_sent: c.bytes_sent,
            packets_lost: leg.packets_lost(),
            jitter_ms: leg.jitter_ms(),
            packets_foreign: c.packets_foreign,
            rtcp_packets_received: c.rtcp_packets_received,
        }
    };
    pb::SessionStats {
        session_id: slot.id.to_string(),
        a: Some(leg(LegId::A)),
        b: Some(leg(LegId::B)),
        duration_ms: u64::try_from(
            now.saturating_duration_since(slot.session.created())
                .as_millis(),
        )
        .unwrap_or(u64::MAX),
    }
}

impl WorkerMetrics {
    fn dropped(&self, reason: Dropped) {
        match reason {
            Dropped::Malformed(_) => self.dropped_malformed.inc(),
            Dropped::Foreign => self.dropped_foreign.inc(),
            Dropped::Learning => self.dropped_learning.inc(),
            Dropped::NoDestination => self.dropped_no_destination.inc(),
        };
    }
}
