//! The edge's driver: the sockets, the disk, the clock and the call tasks around the
//! sans-IO endpoint ([`crate::endpoint::SipCore`]). Every input goes through
//! [`Driver::with`], which hands the endpoint the time, then carries out what it asked
//! for (datagrams to send, calls to start, events for call tasks, bindings to write)
//! and wakes the timer task when the endpoint's next deadline moved earlier. One task
//! sleeps until that deadline ([`run_timers`]); nothing polls on an interval.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path as FsPath, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{mpsc, Notify};

use crate::endpoint::{CallEvent, Event, NewCall, Path, SipCore};
use crate::registrar::Binding;
use crate::wire::{StreamFramer, StreamItem};

/// How long a TCP connection may stay silent before it is closed.
pub const TCP_IDLE: Duration = Duration::from_secs(600);

/// A new call and the channels of its task: `events` from the SIP side, and `notify`
/// for others (the relay's media-timeout watcher) to reach the task.
#[derive(Debug)]
pub struct CallTask {
    pub call: NewCall,
    pub events: mpsc::UnboundedReceiver<CallEvent>,
    pub notify: mpsc::UnboundedSender<CallEvent>,
}

type Bindings = HashMap<String, Vec<Binding>>;

/// What the driver keeps beside the endpoint, under the same lock.
struct State {
    core: SipCore,
    /// Writers of the open TCP connections, by peer.
    tcp: HashMap<SocketAddr, mpsc::UnboundedSender<Vec<u8>>>,
    /// The event channel of each call's task.
    calls: HashMap<u64, mpsc::UnboundedSender<CallEvent>>,
    spawner: Option<mpsc::UnboundedSender<CallTask>>,
    /// The bindings writer (one write at a time; a copy that finds it busy is taken
    /// again later).
    persist: Option<mpsc::Sender<Bindings>>,
    /// When the timer task will next wake by itself.
    armed: Option<Instant>,
}

/// The endpoint and its I/O. Shared by the socket readers, the timer task, the call
/// tasks, the gRPC API and the resource watchers.
pub struct Driver {
    state: Mutex<State>,
    udp: Arc<UdpSocket>,
    wake: Notify,
    /// Where the bindings are written, if anywhere.
    persist_path: Option<PathBuf>,
}

/// Unix seconds now.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A random seed for the endpoint's tags and Call-IDs.
pub fn random_seed() -> u64 {
    let mut bytes = [0u8; 8];
    if getrandom::fill(&mut bytes).is_err() {
        // No system randomness: fall back on the clock (nonces stay unforgeable through
        // their HMAC; only the tags' unpredictability suffers).
        return SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x9e37_79b9);
    }
    u64::from_le_bytes(bytes)
}

/// Reads persisted bindings, if any.
pub fn load_bindings(path: &FsPath) -> Bindings {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            tracing::warn!(path = %path.display(), error = %e, "registrations file unreadable; starting empty");
            HashMap::new()
        }),
        Err(_) => HashMap::new(),
    }
}

/// Writes bindings atomically: a temporary file, then a rename.
pub fn write_registrations(path: &FsPath, bindings: &Bindings) -> std::io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    let bytes = serde_json::to_vec(bindings).map_err(std::io::Error::other)?;
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

impl Driver {
    /// The driver of `core`, sending UDP from `udp` (whose address the endpoint puts
    /// in Via and Contact) and writing the bindings to `persist_path`.
    pub fn new(mut core: SipCore, udp: Arc<UdpSocket>, persist_path: Option<PathBuf>) -> Self {
        if let Ok(local) = udp.local_addr() {
            core.set_local(local);
        }
        Self {
            state: Mutex::new(State {
                core,
                tcp: HashMap::new(),
                calls: HashMap::new(),
                spawner: None,
                persist: None,
                armed: None,
            }),
            udp,
            wake: Notify::new(),
            persist_path,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on the endpoint at the current time, then carries out its outputs.
    pub fn with<R>(&self, f: impl FnOnce(&mut SipCore, Instant) -> R) -> R {
        let now = Instant::now();
        let mut state = self.lock();
        state.core.advance(now);
        let result = f(&mut state.core, now);
        self.pump(&mut state);
        let next = state.core.poll_timeout();
        let earlier = match (next, state.armed) {
            (Some(next), Some(armed)) => next < armed,
            (Some(_), None) => true,
            (None, _) => false,
        };
        drop(state);
        if earlier {
            self.wake.notify_one();
        }
        result
    }

    /// Sends what the endpoint queued and acts on its events. Sends happen under the
    /// lock, so messages on one TCP connection leave in the order they were made (a
    /// UDP send does not block; a TCP one is a queue push).
    fn pump(&self, state: &mut State) {
        // Acting on an event may queue more (a call refused as it starts).
        while self.pump_once(state) {}
    }

    fn pump_once(&self, state: &mut State) -> bool {
        let mut busy = false;
        while let Some(datagram) = state.core.poll_transmit() {
            busy = true;
            let path = datagram.path;
            if path.reliable {
                match state.tcp.get(&path.peer) {
                    Some(writer) => {
                        let _ = writer.send(datagram.bytes);
                    }
                    None => tracing::debug!(peer = %path.peer, "no TCP connection for a message"),
                }
            } else {
                // A failed UDP send is a lost datagram, which retransmissions cover.
                let _ = self.udp.try_send_to(&datagram.bytes, path.peer);
            }
        }
        while let Some(event) = state.core.poll_event() {
            busy = true;
            match event {
                Event::NewCall(call) => {
                    let (notify, events) = mpsc::unbounded_channel();
                    let id = call.id;
                    let task = CallTask {
                        call,
                        events,
                        notify: notify.clone(),
                    };
                    let started = state.spawner.as_ref().is_some_and(|s| s.send(task).is_ok());
                    if started {
                        state.calls.insert(id, notify);
                    } else {
                        // The spawner is gone (shutting down): the caller hears 503.
                        state.core.call_hangup(id, 41);
                    }
                }
                Event::Call { id, event } => {
                    if let Some(events) = state.calls.get(&id) {
                        let _ = events.send(event);
                    }
                }
                Event::CallGone(id) => {
                    state.calls.remove(&id);
                }
                Event::Persist(bindings) => {
                    let sent = state
                        .persist
                        .as_ref()
                        .is_some_and(|w| w.try_send(bindings).is_ok());
                    if !sent {
                        state.core.persistence_failed();
                    }
                }
            }
        }
        busy
    }

    /// Where new calls get their task; INVITEs are taken from now on.
    pub fn set_spawner(&self, spawner: mpsc::UnboundedSender<CallTask>) {
        let mut state = self.lock();
        state.spawner = Some(spawner);
        state.core.set_accepting_calls(true);
    }

    /// The UDP socket the endpoint's datagrams leave from.
    pub fn udp(&self) -> &Arc<UdpSocket> {
        &self.udp
    }
}

/// Receives datagrams until `stop`.
pub async fn serve_udp(edge: Arc<Driver>, stop: service_runtime::Shutdown) {
    let socket = edge.udp.clone();
    let mut buffer = vec![0u8; 65_535];
    loop {
        tokio::select! {
            _ = stop.triggered() => return,
            received = socket.recv_from(&mut buffer) => match received {
                Ok((len, from)) => {
                    edge.with(|core, now| core.handle_datagram(now, Path::udp(from), &buffer[..len]));
                }
                Err(e) => tracing::debug!(error = %e, "SIP UDP receive error"),
            }
        }
    }
}

/// Accepts TCP connections until `stop`.
pub async fn serve_tcp(edge: Arc<Driver>, listener: TcpListener, stop: service_runtime::Shutdown) {
    loop {
        tokio::select! {
            _ = stop.triggered() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    tokio::spawn(connection(edge.clone(), stream, peer, stop.clone()));
                }
                Err(e) => tracing::debug!(error = %e, "SIP TCP accept error"),
            }
        }
    }
}

async fn connection(
    edge: Arc<Driver>,
    stream: TcpStream,
    peer: SocketAddr,
    stop: service_runtime::Shutdown,
) {
    let (mut reader, mut writer) = stream.into_split();
    let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
    let write_task = tokio::spawn(async move {
        while let Some(bytes) = rx.recv().await {
            if writer.write_all(&bytes).await.is_err() {
                break;
            }
        }
    });
    edge.lock().tcp.insert(peer, tx.clone());
    edge.with(|core, _| core.handle_connection_opened(peer));
    let mut framer = StreamFramer::new();
    let mut buffer = vec![0u8; 16 * 1024];
    'reading: loop {
        let read = tokio::select! {
            _ = stop.triggered() => break,
            read = tokio::time::timeout(TCP_IDLE, reader.read(&mut buffer)) => read,
        };
        let n = match read {
            Err(_) => {
                tracing::debug!(%peer, "idle SIP TCP connection closed");
                break;
            }
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => n,
        };
        framer.push(&buffer[..n]);
        loop {
            match framer.next_item() {
                Ok(Some(StreamItem::Ping)) => {
                    let _ = tx.send(b"\r\n".to_vec());
                }
                Ok(Some(StreamItem::Message(message))) => {
                    edge.with(|core, now| core.handle_datagram(now, Path::tcp(peer), &message));
                }
                Ok(None) => break,
                Err(reason) => {
                    tracing::debug!(%peer, %reason, "SIP TCP framing lost; closing");
                    break 'reading;
                }
            }
        }
    }
    {
        let mut state = edge.lock();
        // A newer connection from the same address keeps its writer.
        if state.tcp.get(&peer).is_some_and(|w| w.same_channel(&tx)) {
            state.tcp.remove(&peer);
            state.core.handle_connection_closed(peer);
        }
    }
    drop(tx);
    let _ = write_task.await;
}

/// Runs the endpoint's timers until `stop`, sleeping until its next deadline (or until
/// an input moves it earlier), then writes what changed in the bindings. The bindings
/// are written by a task of their own, one write at a time, off the endpoint's lock.
pub async fn run_timers(edge: Arc<Driver>, stop: service_runtime::Shutdown) {
    let writer = edge.persist_path.clone().map(|path| {
        let (to_writer, mut writes) = mpsc::channel::<Bindings>(1);
        edge.lock().persist = Some(to_writer);
        let edge = edge.clone();
        tokio::spawn(async move {
            while let Some(bindings) = writes.recv().await {
                let path = path.clone();
                let shown = path.display().to_string();
                let written =
                    tokio::task::spawn_blocking(move || write_registrations(&path, &bindings))
                        .await;
                let error = match written {
                    Ok(Ok(())) => continue,
                    Ok(Err(e)) => e.to_string(),
                    Err(e) => e.to_string(),
                };
                tracing::error!(path = %shown, %error, "cannot persist registrations");
                edge.with(|core, _| core.persistence_failed());
            }
        })
    });
    loop {
        let next = edge.with(|core, now| {
            core.handle_timeout(now);
            core.poll_timeout()
        });
        // At least a millisecond apart: a deadline that stays in the past cannot spin.
        let now = Instant::now();
        let at = next
            .unwrap_or(now + Duration::from_secs(3600))
            .max(now + Duration::from_millis(1));
        edge.lock().armed = Some(at);
        tokio::select! {
            _ = stop.triggered() => break,
            _ = tokio::time::sleep_until(tokio::time::Instant::from_std(at)) => {}
            _ = edge.wake.notified() => {}
        }
    }
    edge.lock().persist = None;
    if let Some(writer) = writer {
        let _ = writer.await;
    }
    let last = edge.with(|core, _| core.flush());
    if let (Some(bindings), Some(path)) = (last, &edge.persist_path) {
        if let Err(e) = write_registrations(path, &bindings) {
            tracing::error!(path = %path.display(), error = %e, "cannot persist registrations");
        }
    }
}
