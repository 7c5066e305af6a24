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

use crate::endpoint::{CallEvent, CallRecord, Event, NewCall, Path, SipCore};
use crate::journal::{self, Journal, Table};
use crate::registrar::Binding;
use crate::wire::{StreamFramer, StreamItem};

/// How long a TCP connection may stay silent before it is closed.
pub const TCP_IDLE: Duration = Duration::from_secs(600);

/// How late a timer may run so that timers close together run in one wake.
pub const TIMER_SLACK: Duration = Duration::from_millis(10);

/// A new call and the channels of its task: `events` from the SIP side, and `notify`
/// for others (the relay's media-timeout watcher) to reach the task.
#[derive(Debug)]
pub struct CallTask {
    pub call: NewCall,
    pub events: mpsc::UnboundedReceiver<CallEvent>,
    pub notify: mpsc::UnboundedSender<CallEvent>,
    /// A call from before a restart: bridged already, its media at this relay session.
    pub restored: Option<Box<CallRecord>>,
}

type Bindings = HashMap<String, Vec<Binding>>;

/// One endpoint and what the driver keeps beside it, under the shard's own lock.
struct State {
    core: SipCore,
    /// The event channel of each of its calls' tasks.
    calls: HashMap<u64, mpsc::UnboundedSender<CallEvent>>,
    /// The deadline its timer task sleeps for (it wakes up to TIMER_SLACK later).
    armed: Option<Instant>,
}

struct Shard {
    state: Mutex<State>,
    wake: Notify,
}

/// The endpoints (one per shard) and their I/O. Shared by the socket readers, the
/// timer tasks, the call tasks, the gRPC API and the resource watchers. A message
/// locks only its own shard ([`sip_wire::shard::shard_of`]): by Call-ID, REGISTERs by
/// line; a call's commands lock the shard of its id.
pub struct Driver {
    shards: Vec<Shard>,
    udp: Arc<UdpSocket>,
    /// Writers of the open TCP connections, by peer (locked to send over TCP only).
    tcp: Mutex<HashMap<SocketAddr, mpsc::UnboundedSender<Vec<u8>>>>,
    spawner: std::sync::OnceLock<mpsc::UnboundedSender<CallTask>>,
    /// The registrations and the answered calls, kept on disk (if anywhere).
    journal: Arc<Journal<Vec<Binding>>>,
    calls_journal: Arc<Journal<Option<CallRecord>>>,
    persist: Option<Files>,
}

/// What the edge keeps on disk, and where.
#[derive(Debug, Clone)]
pub struct Files {
    /// `registrations.json` (and its journal).
    pub registrations: PathBuf,
    /// `calls.json` (and its journal).
    pub calls: PathBuf,
}

impl Files {
    pub fn in_dir(dir: &FsPath) -> Self {
        Self {
            registrations: dir.join("registrations.json"),
            calls: dir.join("calls.json"),
        }
    }
}

/// What was kept on disk, as loaded at start.
#[derive(Debug, Default)]
pub struct Saved {
    pub bindings: Bindings,
    pub calls: Table<Option<CallRecord>>,
}

impl Saved {
    pub fn load(files: &Files) -> Self {
        Self {
            bindings: journal::load(&files.registrations, "registrations"),
            calls: journal::load(&files.calls, "calls"),
        }
    }
}

/// Unix seconds now.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The edge's own name for itself, kept in `<data-dir>/edge-id` (made at the first
/// start): the same across restarts on the same data, different between edges.
pub fn instance_id(dir: &FsPath) -> String {
    let path = dir.join("edge-id");
    if let Ok(text) = std::fs::read_to_string(&path) {
        let id = text.trim();
        if !id.is_empty() && id.len() <= 32 && id.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return id.to_owned();
        }
    }
    let id = format!("e{:016x}", random_seed());
    if let Err(e) = std::fs::write(&path, &id) {
        tracing::warn!(path = %path.display(), error = %e, "cannot keep the edge's id; its relay sessions will not be reconciled after a restart");
    }
    id
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

/// The saved bindings of the lines shard `index` of `shards` keeps.
pub fn bindings_of_shard(saved: &Bindings, index: usize, shards: usize) -> Bindings {
    saved
        .iter()
        .filter(|(line, _)| sip_wire::shard::shard_of_line(line, shards) == index)
        .map(|(line, b)| (line.clone(), b.clone()))
        .collect()
}

impl Driver {
    /// The driver of `cores` (shard `k` is `cores[k]`), sending UDP from `udp` (whose
    /// address the endpoints put in Via and Contact) and keeping the bindings at
    /// `persist`'s path, starting from the table loaded from it. Only shard 0
    /// registers to providers.
    pub fn new(cores: Vec<SipCore>, udp: Arc<UdpSocket>, persist: Option<(Files, Saved)>) -> Self {
        let count = cores.len();
        let local = udp.local_addr().ok();
        let (persist, saved) = match persist {
            Some((files, saved)) => (Some(files), saved),
            None => (None, Saved::default()),
        };
        let journal = Journal::starting_from(saved.bindings);
        let calls_journal = Journal::starting_from(saved.calls);
        let shards = cores
            .into_iter()
            .enumerate()
            .map(|(index, mut core)| {
                if let Some(local) = local {
                    core.set_local(local);
                }
                core.set_shard(index, count);
                if index > 0 {
                    core.set_registering(false);
                }
                Shard {
                    state: Mutex::new(State {
                        core,
                        calls: HashMap::new(),
                        armed: None,
                    }),
                    wake: Notify::new(),
                }
            })
            .collect();
        Self {
            shards,
            udp,
            tcp: Mutex::new(HashMap::new()),
            spawner: std::sync::OnceLock::new(),
            journal: Arc::new(journal),
            calls_journal: Arc::new(calls_journal),
            persist,
        }
    }

    /// How many shards (endpoints) there are.
    pub fn shards(&self) -> usize {
        self.shards.len()
    }

    fn lock(&self, index: usize) -> MutexGuard<'_, State> {
        self.shards[index]
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on shard `index` at the current time, then carries out its outputs.
    pub fn with_shard<R>(&self, index: usize, f: impl FnOnce(&mut SipCore, Instant) -> R) -> R {
        let now = Instant::now();
        let mut state = self.lock(index);
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
            self.shards[index].wake.notify_one();
        }
        result
    }

    /// Runs `f` on the shard of call `id`.
    pub fn with_call<R>(&self, id: u64, f: impl FnOnce(&mut SipCore) -> R) -> R {
        let index = (id % self.shards.len() as u64) as usize;
        self.with_shard(index, |core, _| f(core))
    }

    /// Runs `f` on the shard that keeps the registrations of `line`.
    pub fn with_line<R>(&self, line: &str, f: impl FnOnce(&mut SipCore) -> R) -> R {
        let index = sip_wire::shard::shard_of_line(line, self.shards.len());
        self.with_shard(index, |core, _| f(core))
    }

    /// Runs `f` on every shard (configuration, queries over all of them).
    pub fn each<R>(&self, mut f: impl FnMut(&mut SipCore) -> R) -> Vec<R> {
        (0..self.shards.len())
            .map(|index| self.with_shard(index, |core, _| f(core)))
            .collect()
    }

    /// The message from `path`, to its shard.
    pub fn handle(&self, path: Path, bytes: &[u8]) {
        let index = sip_wire::shard::shard_of(bytes, self.shards.len());
        self.with_shard(index, |core, now| core.handle_datagram(now, path, bytes));
    }

    /// Sends what shard `index` queued and acts on its events. Sends happen under the
    /// shard's lock, so that its messages on one TCP connection leave in the order
    /// they were made (a UDP send does not block; a TCP one is a queue push).
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
                let tcp = self.tcp.lock().unwrap_or_else(|e| e.into_inner());
                match tcp.get(&path.peer) {
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
                    self.start_task(state, call, None);
                }
                Event::Call { id, event } => {
                    if let Some(events) = state.calls.get(&id) {
                        let _ = events.send(event);
                    }
                }
                Event::CallGone(id) => {
                    state.calls.remove(&id);
                }
                Event::Persist(changes) => self.journal.add(changes, false),
                Event::CallState { key, record } => self
                    .calls_journal
                    .add(HashMap::from([(key, record.map(|r| *r))]), false),
            }
        }
        busy
    }

    /// Starts the drain on every shard ([`SipCore::drain`]): the calls up end at
    /// `deadline` from now. Returns how many there are.
    pub fn drain(&self, deadline: Duration) -> usize {
        (0..self.shards.len())
            .map(|index| {
                self.with_shard(index, |core, now| {
                    core.drain(now, now + deadline);
                    core.calls_up()
                })
            })
            .sum()
    }

    /// The answered calls kept from before a restart, each on the shard its requests
    /// will reach, with a task of its own (the spawner must be set). A record that
    /// cannot be restored is dropped from the table. Returns how many were restored.
    pub fn restore_calls(&self, records: Vec<CallRecord>) -> usize {
        let mut restored = 0;
        for record in records {
            let key = record.a_call_id.clone();
            let index = sip_wire::shard::shard_of_call_id(&key, self.shards.len());
            let mut state = self.lock(index);
            let Some(call) = state.core.restore_call(record.clone()) else {
                tracing::warn!(call_id = %key, "a kept call does not restore; dropped");
                self.calls_journal.add(HashMap::from([(key, None)]), false);
                continue;
            };
            if self.start_task(&mut state, call, Some(Box::new(record))) {
                restored += 1;
            }
            self.pump(&mut state);
        }
        restored
    }

    /// Hands a call to a task of its own, with the channel its events go through;
    /// false (and the call hung up: the caller hears 503) if the spawner is gone.
    fn start_task(
        &self,
        state: &mut State,
        call: NewCall,
        restored: Option<Box<CallRecord>>,
    ) -> bool {
        let (notify, events) = mpsc::unbounded_channel();
        let id = call.id;
        let task = CallTask {
            call,
            events,
            notify: notify.clone(),
            restored,
        };
        let started = self.spawner.get().is_some_and(|s| s.send(task).is_ok());
        if started {
            state.calls.insert(id, notify);
        } else {
            state.core.call_hangup(id, 41);
        }
        started
    }

    /// Where new calls get their task; INVITEs are taken from now on.
    pub fn set_spawner(&self, spawner: mpsc::UnboundedSender<CallTask>) {
        let _ = self.spawner.set(spawner);
        self.each(|core| core.set_accepting_calls(true));
    }

    /// The UDP socket the endpoints' datagrams leave from.
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
                Ok((len, from)) => edge.handle(Path::udp(from), &buffer[..len]),
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
    edge.tcp
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(peer, tx.clone());
    edge.each(|core| core.handle_connection_opened(peer));
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
                    edge.handle(Path::tcp(peer), &message);
                }
                Ok(None) => break,
                Err(reason) => {
                    tracing::debug!(%peer, %reason, "SIP TCP framing lost; closing");
                    break 'reading;
                }
            }
        }
    }
    let closed = {
        let mut tcp = edge.tcp.lock().unwrap_or_else(|e| e.into_inner());
        // A newer connection from the same address keeps its writer.
        let ours = tcp.get(&peer).is_some_and(|w| w.same_channel(&tx));
        if ours {
            tcp.remove(&peer);
        }
        ours
    };
    if closed {
        edge.each(|core| core.handle_connection_closed(peer));
    }
    drop(tx);
    let _ = write_task.await;
}

/// Runs every shard's timers until `stop`, with the registrations' journal writer
/// beside them; then hands the writer the last changes and waits for it to finish.
pub async fn run_timers(edge: Arc<Driver>, stop: service_runtime::Shutdown) {
    let writers = edge.persist.clone().map(|files| {
        let registrations = edge.journal.clone();
        let calls = edge.calls_journal.clone();
        [
            std::thread::Builder::new()
                .name("registrations".into())
                .spawn(move || registrations.write(&files.registrations, "registrations")),
            std::thread::Builder::new()
                .name("calls".into())
                .spawn(move || calls.write(&files.calls, "calls")),
        ]
    });
    let timers: Vec<_> = (0..edge.shards())
        .map(|index| tokio::spawn(shard_timers(edge.clone(), index, stop.clone())))
        .collect();
    for timer in timers {
        let _ = timer.await;
    }
    let last: Bindings = edge
        .each(|core| core.flush())
        .into_iter()
        .flatten()
        .flatten()
        .collect();
    edge.journal.add(last, true);
    edge.calls_journal.add(HashMap::new(), true);
    for writer in writers.into_iter().flatten() {
        match writer {
            Ok(writer) => {
                let _ = tokio::task::spawn_blocking(move || writer.join()).await;
            }
            Err(e) => tracing::error!(error = %e, "cannot start a writer of what the edge keeps"),
        }
    }
}

/// One shard's timers: sleeps until its endpoint's next deadline (or until an input
/// moves it earlier).
async fn shard_timers(edge: Arc<Driver>, index: usize, stop: service_runtime::Shutdown) {
    loop {
        let next = edge.with_shard(index, |core, now| {
            core.handle_timeout(now);
            core.poll_timeout()
        });
        // Timers due within TIMER_SLACK of each other run in one wake (thousands of
        // transactions make thousands of distinct deadlines a second; SIP's timers are
        // hundreds of milliseconds long), and a deadline left in the past cannot spin.
        let now = Instant::now();
        let at = next
            .unwrap_or(now + Duration::from_secs(3600))
            .max(now + TIMER_SLACK);
        // Inputs wake the task only for a deadline earlier than the one it knows of
        // (not for one inside the slack it added).
        edge.lock(index).armed = next;
        tokio::select! {
            _ = stop.triggered() => break,
            _ = tokio::time::sleep_until(tokio::time::Instant::from_std(at)) => {}
            _ = edge.shards[index].wake.notified() => {}
        }
    }
}
