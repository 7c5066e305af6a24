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

/// How late a timer may run so that timers close together run in one wake.
pub const TIMER_SLACK: Duration = Duration::from_millis(10);

/// A new call and the channels of its task: `events` from the SIP side, and `notify`
/// for others (the relay's media-timeout watcher) to reach the task.
#[derive(Debug)]
pub struct CallTask {
    pub call: NewCall,
    pub events: mpsc::UnboundedReceiver<CallEvent>,
    pub notify: mpsc::UnboundedSender<CallEvent>,
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

/// The registrations on disk: `<data-dir>/registrations.json` (the whole table, as of
/// the last compaction) and `registrations.journal` after it (one JSON line per changed
/// line: its whole list of bindings, empty when it has none left). The shards hand
/// their changes over here; a thread of its own appends them, and rewrites the table
/// when the journal has grown past a few times its size, at start and at shutdown.
#[derive(Default)]
struct Journal {
    pending: Mutex<Pending>,
    wake: std::sync::Condvar,
}

#[derive(Default)]
struct Pending {
    /// Changes not written yet, the latest per line.
    changes: Bindings,
    /// The table as loaded, for the writer to start from.
    start: Option<Bindings>,
    closed: bool,
}

/// One line of the journal.
#[derive(serde::Serialize, serde::Deserialize)]
struct Entry {
    line: String,
    bindings: Vec<Binding>,
}

impl Journal {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn add(&self, changes: Bindings, close: bool) {
        let mut pending = self.lock();
        pending.changes.extend(changes);
        pending.closed |= close;
        self.wake.notify_one();
    }
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
    journal: Arc<Journal>,
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

/// The journal beside the registrations file.
fn journal_path(path: &FsPath) -> PathBuf {
    path.with_extension("journal")
}

/// Reads persisted bindings, if any: the table, then the journal's changes in order
/// (a torn last line, from a crash mid-write, is skipped).
pub fn load_bindings(path: &FsPath) -> Bindings {
    let mut table: Bindings = match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            tracing::warn!(path = %path.display(), error = %e, "registrations file unreadable; starting empty");
            HashMap::new()
        }),
        Err(_) => HashMap::new(),
    };
    let journal = std::fs::read(journal_path(path)).unwrap_or_default();
    for (n, line) in journal.split(|b| *b == b'\n').enumerate() {
        if line.is_empty() {
            continue;
        }
        match serde_json::from_slice::<Entry>(line) {
            Ok(Entry { line, bindings }) if bindings.is_empty() => {
                table.remove(&line);
            }
            Ok(Entry { line, bindings }) => {
                table.insert(line, bindings);
            }
            Err(e) => {
                tracing::warn!(path = %journal_path(path).display(), line = n + 1, error = %e, "registrations journal line unreadable; skipped")
            }
        }
    }
    table
}

/// Appends changes to the journal.
fn append_journal(path: &FsPath, changes: &Bindings) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = Vec::new();
    for (line, bindings) in changes {
        serde_json::to_writer(
            &mut out,
            &Entry {
                line: line.clone(),
                bindings: bindings.clone(),
            },
        )
        .map_err(std::io::Error::other)?;
        out.push(b'\n');
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(journal_path(path))?
        .write_all(&out)
}

/// Writes the whole table (dropping what has expired), then empties the journal. A
/// crash between the two replays the journal onto a table that has it already: each
/// entry is a line's whole list, so that changes nothing.
fn compact(path: &FsPath, table: &mut Bindings) -> std::io::Result<()> {
    let now = unix_now();
    table.retain(|_, bindings| {
        bindings.retain(|b| b.expires_at > now);
        !bindings.is_empty()
    });
    write_registrations(path, table)?;
    std::fs::File::create(journal_path(path)).map(drop)
}

/// The journal's writer: appends what the shards hand over, compacts now and then,
/// until the journal is closed.
fn write_journal(path: &FsPath, mut table: Bindings, journal: &Journal) {
    // The journal may compact once it holds this many entries past the table's size.
    const SLACK: usize = 1_000;
    let mut appended = 0;
    let mut healthy = compact(path, &mut table).is_ok();
    loop {
        let (changes, closed) = {
            let mut pending = journal.lock();
            while pending.changes.is_empty() && !pending.closed {
                pending = journal
                    .wake
                    .wait(pending)
                    .unwrap_or_else(|e| e.into_inner());
            }
            (std::mem::take(&mut pending.changes), pending.closed)
        };
        let written = healthy && append_journal(path, &changes).is_ok();
        appended += changes.len();
        for (line, bindings) in changes {
            if bindings.is_empty() {
                table.remove(&line);
            } else {
                table.insert(line, bindings);
            }
        }
        if !written || closed || appended > 4 * table.len() + SLACK {
            healthy = match compact(path, &mut table) {
                Ok(()) => {
                    appended = 0;
                    true
                }
                Err(e) => {
                    tracing::error!(path = %path.display(), error = %e, "cannot persist registrations");
                    false
                }
            };
        }
        if closed {
            return;
        }
    }
}

/// Writes bindings atomically: a temporary file, then a rename.
pub fn write_registrations(path: &FsPath, bindings: &Bindings) -> std::io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    let bytes = serde_json::to_vec(bindings).map_err(std::io::Error::other)?;
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
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
    pub fn new(
        cores: Vec<SipCore>,
        udp: Arc<UdpSocket>,
        persist: Option<(PathBuf, Bindings)>,
    ) -> Self {
        let count = cores.len();
        let local = udp.local_addr().ok();
        let journal = Journal::default();
        let persist_path = persist.map(|(path, table)| {
            journal.lock().start = Some(table);
            path
        });
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
            persist_path,
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
                    let (notify, events) = mpsc::unbounded_channel();
                    let id = call.id;
                    let task = CallTask {
                        call,
                        events,
                        notify: notify.clone(),
                    };
                    let started = self.spawner.get().is_some_and(|s| s.send(task).is_ok());
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
                Event::Persist(changes) => self.journal.add(changes, false),
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
    let writer = edge.persist_path.clone().and_then(|path| {
        let journal = edge.journal.clone();
        let table = journal.lock().start.take().unwrap_or_default();
        std::thread::Builder::new()
            .name("registrations".into())
            .spawn(move || write_journal(&path, table, &journal))
            .map_err(|e| tracing::error!(error = %e, "cannot start the registrations writer"))
            .ok()
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
    if let Some(writer) = writer {
        let _ = tokio::task::spawn_blocking(move || writer.join()).await;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn binding(contact: &str, expires_at: u64) -> Binding {
        Binding {
            contact: contact.into(),
            expires_at,
            source: "192.0.2.10:5060".parse().unwrap(),
            transport: "udp".into(),
            call_id: "c".into(),
            cseq: 1,
            user_agent: None,
            nat: false,
            registered_at: 0,
        }
    }

    #[test]
    fn the_journal_replays_onto_the_table_and_a_torn_line_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("registrations.json");
        let later = unix_now() + 3600;
        let table = HashMap::from([
            ("a".to_owned(), vec![binding("sip:a@x", later)]),
            ("b".to_owned(), vec![binding("sip:b@x", later)]),
        ]);
        write_registrations(&path, &table).unwrap();
        let changes = HashMap::from([
            ("a".to_owned(), Vec::new()),
            ("c".to_owned(), vec![binding("sip:c@x", later)]),
        ]);
        append_journal(&path, &changes).unwrap();
        let mut torn = std::fs::read(journal_path(&path)).unwrap();
        torn.extend_from_slice(b"{\"line\":\"d\",\"bindi");
        std::fs::write(journal_path(&path), torn).unwrap();
        let mut lines: Vec<String> = load_bindings(&path).into_keys().collect();
        lines.sort();
        assert_eq!(lines, ["b", "c"]);
    }

    #[test]
    fn the_writer_appends_changes_and_compacts_when_closed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("registrations.json");
        let later = unix_now() + 3600;
        let start = HashMap::from([
            ("a".to_owned(), vec![binding("sip:a@x", later)]),
            // Expired: dropped by the first compaction.
            ("old".to_owned(), vec![binding("sip:old@x", 1)]),
        ]);
        let journal = Arc::new(Journal::default());
        let writer = {
            let (path, journal) = (path.clone(), journal.clone());
            std::thread::spawn(move || write_journal(&path, start, &journal))
        };
        journal.add(
            HashMap::from([("b".to_owned(), vec![binding("sip:b@x", later)])]),
            false,
        );
        // Appended, not yet compacted: the journal holds it.
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::fs::metadata(journal_path(&path)).map_or(0, |m| m.len()) == 0 {
            assert!(Instant::now() < deadline, "nothing appended");
            std::thread::sleep(Duration::from_millis(5));
        }
        let mut lines: Vec<String> = load_bindings(&path).into_keys().collect();
        lines.sort();
        assert_eq!(lines, ["a", "b"]);
        journal.add(HashMap::from([("a".to_owned(), Vec::new())]), true);
        writer.join().unwrap();
        assert_eq!(std::fs::metadata(journal_path(&path)).unwrap().len(), 0);
        let table: Bindings = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(table.into_keys().collect::<Vec<_>>(), ["b"]);
    }
}
