//! The edge's SIP endpoint, sans IO: bytes and time in, bytes, events and the next
//! deadline out, as quinn-proto's `Endpoint` or str0m's `Rtc`. It reads no clock and
//! holds no socket, file or channel: the driver (`sip_edge::driver`) owns those, feeds it with
//! [`SipCore::handle_datagram`], [`SipCore::handle_timeout`] and the calls' commands
//! (`call_*`), and carries out what [`SipCore::poll_transmit`] and
//! [`SipCore::poll_event`] give, sleeping until [`SipCore::poll_timeout`].
//!
//! Inside, it parses ([`crate::wire`]), keeps transactions ([`crate::transaction`])
//! and hands requests to their handler:
//! - REGISTER: the registrar (bindings persisted by the driver on [`Event::Persist`]).
//! - OPTIONS: `200` with `Allow` (keep-alives and monitoring).
//! - INVITE: a call (`calls.rs`, the B2BUA), whose task the driver starts on
//!   [`Event::NewCall`]; BYE, CANCEL and re-INVITE inside a call go to it, with no
//!   call: `481`; extension methods: `501`; other known methods: `405` with `Allow`.
//! - Unparsable requests: `400`/`416`/`505`/`513` when an answer can be routed, else
//!   dropped and counted.
//!
//! RFC 3581: the response's top Via gets `received` and the filled-in `rport`, and
//! responses go back to the address and port the request came from.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use rsip::prelude::*;

use crate::error::{RejectLabels, RejectReason};
use crate::guard::{self, Admission, SharedGuard};
use crate::outbound::{self, OutboundRegistration};
use crate::qualify::{Key, Qualifier};
use crate::registrar::{Binding, Registrar, Source};
use crate::transaction::{ClientEvent, ClientTransaction};
use crate::transaction::{ServerTransaction, TimerValues, Transmit, Transport};
use crate::wire::{self, Parsed};
use sip_wire::header::Via;

mod calls;
mod lines;
mod mwi;
mod requests;
mod trunks;
pub use calls::{
    event_types, CallEvent, CallRecord, CalleeRecord, MediaRef, NewCall, PeerInfo, Target,
};
pub use mwi::{mailbox_key, Subscription, SUBSCRIPTION_EXPIRES};
pub use trunks::{Outbound, ResourceTrunk, Trunk};

/// How often changed registrations are written to disk, at most.
pub const PERSIST_EVERY: Duration = Duration::from_secs(1);
pub(crate) const ALLOW: &str = "INVITE, ACK, CANCEL, BYE, OPTIONS, REGISTER, SUBSCRIBE";

/// Where a message goes, or where one came from: the peer's address and whether it is
/// over TCP (the driver writes to the connection with that peer) or UDP (from the
/// edge's socket).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Path {
    pub peer: SocketAddr,
    pub reliable: bool,
}

impl Path {
    pub fn udp(peer: SocketAddr) -> Self {
        Self {
            peer,
            reliable: false,
        }
    }

    pub fn tcp(peer: SocketAddr) -> Self {
        Self {
            peer,
            reliable: true,
        }
    }

    fn peer(&self) -> SocketAddr {
        self.peer
    }

    fn reliable(&self) -> bool {
        self.reliable
    }

    /// How the transaction layer times retransmissions on this path.
    fn transport(&self) -> Transport {
        if self.reliable {
            Transport::Reliable
        } else {
            Transport::Unreliable
        }
    }
}

/// Bytes for the driver to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Datagram {
    pub path: Path,
    pub bytes: Vec<u8>,
}

/// What the endpoint asks of its driver, besides sending.
#[derive(Debug)]
pub enum Event {
    /// An INVITE became a call: give it a task.
    NewCall(NewCall),
    /// Something happened on a call's SIP side: for its task.
    Call { id: u64, event: CallEvent },
    /// The call is gone from the SIP side: its task gets no more events.
    CallGone(u64),
    /// Bindings changed: each changed line's whole list (empty: it has none left), to
    /// add to what is persisted (see [`PERSIST_EVERY`]).
    Persist(HashMap<String, Vec<Binding>>),
    /// A bridged call's state changed (`Some`), or it ended (`None`): to keep for a
    /// restart ([`CallRecord`]), by the caller's Call-ID.
    CallState {
        key: String,
        record: Option<Box<CallRecord>>,
    },
}

/// Counters the service exports.
#[derive(Debug, Default, Clone)]
pub struct Counters {
    pub received: prometheus_client::metrics::counter::Counter,
    pub rejected: prometheus_client::metrics::counter::Counter,
    pub dropped: prometheus_client::metrics::counter::Counter,
    pub auth_failures: prometheus_client::metrics::counter::Counter,
    pub registrations: prometheus_client::metrics::gauge::Gauge,
    pub rate_limited: prometheus_client::metrics::counter::Counter,
    pub banned_drops: prometheus_client::metrics::counter::Counter,
    pub bans: prometheus_client::metrics::counter::Counter,
    /// Calls admitted, and calls up now.
    pub calls: prometheus_client::metrics::counter::Counter,
    pub calls_active: prometheus_client::metrics::gauge::Gauge,
    /// Messages refused, by why.
    pub refused: prometheus_client::metrics::family::Family<
        crate::error::RejectLabels,
        prometheus_client::metrics::counter::Counter,
    >,
}

impl Counters {
    fn refuse(&self, reason: RejectReason) {
        self.refused.get_or_create(&RejectLabels { reason }).inc();
    }
}

/// The shared state of the SIP side of the edge.
pub struct SipCore {
    registrar: Registrar,
    guard: std::sync::Arc<SharedGuard>,
    emergency_numbers: Vec<String>,
    transactions: HashMap<String, (ServerTransaction<Vec<u8>>, Path)>,
    /// When each transaction next needs `handle_timeout`, earliest first. Entries go
    /// stale when a transaction's timers move; a popped entry is checked against the
    /// transaction (lazy deletion), so a tick costs the due timers, not every
    /// transaction.
    deadlines: BinaryHeap<Reverse<(Instant, String)>>,
    /// Requests the edge sends (OPTIONS probes), by branch.
    clients: HashMap<String, (ClientTransaction<Vec<u8>>, Path)>,
    client_deadlines: BinaryHeap<Reverse<(Instant, String)>>,
    qualifier: Qualifier,
    file: FileConfig,
    /// Persisted bindings of lines sip.conf does not define, until the resource lines
    /// are first known.
    saved_bindings: Option<HashMap<String, Vec<Binding>>>,
    /// The UDP address requests leave from, and the address in their Via.
    local: Option<SocketAddr>,
    /// Open TCP connections by peer, to reach phones registered over TCP.
    connections: HashSet<SocketAddr>,
    /// `box@context` -> the lines that show its message-waiting lamp.
    mwi_lines: HashMap<String, Vec<String>>,
    /// Registrations to providers (`register =>`, then the Trunk resources').
    outbound: Vec<Outbound>,
    outbound_seq: u64,
    /// Whether the outbound registrations run here (see `set_registering`).
    registering: bool,
    /// Lines come from resources too, and have not been read yet.
    lines_pending: bool,
    /// Branch of a request in flight -> the id of the outbound registration it belongs
    /// to.
    outbound_branches: HashMap<String, u64>,
    /// The address put in Via and Contact (`--advertise-ip`), if not the bound one.
    advertise: Option<std::net::IpAddr>,
    /// sip.conf's trunks, and the Trunk resources'.
    trunks: Vec<Trunk>,
    resource_trunks: Vec<Trunk>,
    /// What calls need of the resource lines and trunks (sip.conf's are in `file`).
    line_peers: Vec<PeerInfo>,
    trunk_peers: Vec<PeerInfo>,
    /// Current counts by `box@context`: (new, old, urgent new, urgent old).
    mwi_counts: HashMap<String, [u32; 4]>,
    /// message-summary subscriptions (RFC 3265 / RFC 3842), by Call-ID.
    subscriptions: HashMap<String, Subscription>,
    /// Whether the bindings are persisted by the driver.
    persist: bool,
    /// Bindings changed since the last write: handed out for writing at most every
    /// [`PERSIST_EVERY`], and by `flush` at shutdown (a write per REGISTER would cost
    /// the whole table each time).
    dirty: bool,
    /// The lines whose bindings changed since they were last handed out.
    changed: HashSet<String>,
    last_write: Instant,
    counters: Counters,
    tag_seed: u64,
    tag_counter: u64,
    /// The B2BUA (`calls.rs`): peers by name, calls by id, SIP Call-IDs (leg A, or
    /// leg B and its branch index), B-leg INVITE branches, SDP of B-leg answers, Dial
    /// timeouts, and where new calls get their task.
    peers: HashMap<String, PeerInfo>,
    calls: HashMap<u64, calls::Call>,
    call_ids: HashMap<String, (u64, Option<usize>)>,
    branch_owner: HashMap<String, (u64, usize)>,
    /// B-leg INVITEs answered after their call had ended: hung up once (by branch).
    orphans: HashSet<String>,
    branch_sdp: HashMap<(u64, usize), crate::sdp::Session>,
    call_deadlines: BinaryHeap<Reverse<(Instant, u64)>>,
    /// Whether calls can get a task (the driver has a spawner).
    accepting_calls: bool,
    /// Draining: when the calls still up are ended ([`SipCore::drain`]).
    drain_deadline: Option<Instant>,
    draining: bool,
    /// See [`SipCore::set_keep_calls`].
    keep_calls: bool,
    call_seq: u64,
    /// (this shard, shards): see [`SipCore::set_shard`].
    shard: (usize, usize),
    /// What this shard last added to the shared gauges (registrations, calls up).
    gauged: (i64, i64),
    /// The response being handed to its client transaction, parsed once: a call's
    /// B leg reads it from here instead of parsing the bytes again.
    last_response: Option<rsip::Response>,
    /// What the driver sends, and the other things it is asked to do, in order.
    outbox: VecDeque<Datagram>,
    events: VecDeque<Event>,
    /// The time of the input being handled (the endpoint reads no clock), and the
    /// Unix time at some earlier instant, which Unix times are counted from.
    now: Instant,
    epoch: (Instant, u64),
    /// When the once-a-second work (registration expiry) is next due.
    next_second: Instant,
}

/// What sip.conf defines, which resource lines are added to.
#[derive(Debug, Default)]
pub(crate) struct FileConfig {
    lines: Vec<crate::registrar::Line>,
    peers: Vec<PeerInfo>,
    mwi: HashMap<String, Vec<String>>,
}

/// A line defined by a resource: what the registrar, calls and MWI need of it.
#[derive(Debug, Clone)]
pub struct ResourceLine {
    pub line: crate::registrar::Line,
    pub peer: PeerInfo,
    /// `mailbox=` of the line (`box` or `box@context`).
    pub mailboxes: Vec<String>,
}

impl SipCore {
    /// The endpoint at `now`, which is `unix` in Unix seconds. `saved` are the
    /// persisted bindings when they are persisted (then [`Event::Persist`] asks for
    /// writes); `seed` makes its tags and Call-IDs its own.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        mut registrar: Registrar,
        guard: std::sync::Arc<SharedGuard>,
        qualifier: Qualifier,
        emergency_numbers: Vec<String>,
        saved: Option<HashMap<String, Vec<Binding>>>,
        counters: Counters,
        (now, unix): (Instant, u64),
        seed: u64,
    ) -> Self {
        // Bindings of lines the file does not define may belong to resource lines that
        // arrive later: they are kept for the first set of resource lines.
        let persist = saved.is_some();
        let mut saved_bindings = saved.unwrap_or_default();
        if persist {
            registrar.restore(saved_bindings.clone(), unix);
            saved_bindings.retain(|line, _| !registrar.has_line(line));
        }
        let mut core = Self {
            registrar,
            guard,
            emergency_numbers,
            transactions: HashMap::new(),
            deadlines: BinaryHeap::new(),
            clients: HashMap::new(),
            client_deadlines: BinaryHeap::new(),
            qualifier,
            file: FileConfig::default(),
            saved_bindings: Some(saved_bindings),
            local: None,
            connections: HashSet::new(),
            mwi_lines: HashMap::new(),
            outbound: Vec::new(),
            outbound_seq: 0,
            registering: true,
            lines_pending: false,
            outbound_branches: HashMap::new(),
            advertise: None,
            trunks: Vec::new(),
            resource_trunks: Vec::new(),
            line_peers: Vec::new(),
            trunk_peers: Vec::new(),
            mwi_counts: HashMap::new(),
            subscriptions: HashMap::new(),
            persist,
            dirty: false,
            changed: HashSet::new(),
            last_write: now,
            counters,
            tag_seed: seed,
            tag_counter: 0,
            peers: HashMap::new(),
            calls: HashMap::new(),
            call_ids: HashMap::new(),
            branch_owner: HashMap::new(),
            orphans: HashSet::new(),
            branch_sdp: HashMap::new(),
            call_deadlines: BinaryHeap::new(),
            accepting_calls: false,
            drain_deadline: None,
            draining: false,
            keep_calls: false,
            call_seq: 0,
            shard: (0, 1),
            gauged: (0, 0),
            last_response: None,
            outbox: VecDeque::new(),
            events: VecDeque::new(),
            now,
            epoch: (now, unix),
            next_second: now,
        };
        core.update_gauge();
        core
    }

    /// Moves the endpoint's clock to `now` (never back): the time of the inputs that
    /// follow (the calls' commands, configuration). [`Self::handle_datagram`] and
    /// [`Self::handle_timeout`] take their time themselves.
    pub fn advance(&mut self, now: Instant) {
        self.now = self.now.max(now);
    }

    /// Unix seconds now.
    fn unix(&self) -> u64 {
        self.epoch.1 + self.now.saturating_duration_since(self.epoch.0).as_secs()
    }

    /// Unix time in milliseconds (the epoch's second, then the clock's own time).
    fn unix_ms(&self) -> u64 {
        self.epoch.1 * 1000 + self.now.saturating_duration_since(self.epoch.0).as_millis() as u64
    }

    /// The next message to send.
    pub fn poll_transmit(&mut self) -> Option<Datagram> {
        self.outbox.pop_front()
    }

    /// The next thing the driver is asked to do.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    fn send(&mut self, path: Path, bytes: Vec<u8>) {
        self.outbox.push_back(Datagram { path, bytes });
    }

    /// A fresh token for tags, branches and Call-IDs: `<shard>s<hex>`, so that the
    /// answers to our requests and the requests in our dialogs come back to this
    /// shard ([`sip_wire::shard::shard_of`]).
    fn tag(&mut self) -> String {
        self.tag_counter += 1;
        format!(
            "{}s{:x}",
            self.shard.0,
            self.tag_seed
                .wrapping_add(self.tag_counter.wrapping_mul(0x9e37_79b9_7f4a_7c15))
        )
    }

    /// This endpoint is shard `index` of `count` (the driver spreads messages over
    /// them by Call-ID, and REGISTERs by line): its call ids are `index` modulo
    /// `count`, and its tokens say `index`.
    pub fn set_shard(&mut self, index: usize, count: usize) {
        self.shard = (index, count.max(1));
    }

    /// Which shard this is, of how many.
    pub fn shard(&self) -> (usize, usize) {
        self.shard
    }

    /// The address advertised in Via and Contact instead of the bound one.
    pub fn set_advertise(&mut self, ip: Option<std::net::IpAddr>) {
        self.advertise = ip;
    }

    /// Where requests say they come from: the advertised address (with the SIP port),
    /// else the bound one.
    fn local_addr(&self) -> Option<SocketAddr> {
        let bound = self.local?;
        Some(match self.advertise {
            Some(ip) => SocketAddr::new(ip, bound.port()),
            None => bound,
        })
    }

    /// The address of the UDP socket requests leave from.
    pub fn set_local(&mut self, addr: SocketAddr) {
        self.local = Some(addr);
    }

    /// A TCP connection with `peer` opened: requests to bindings registered over it
    /// can go.
    pub fn handle_connection_opened(&mut self, peer: SocketAddr) {
        self.connections.insert(peer);
    }

    /// The TCP connection with `peer` closed.
    pub fn handle_connection_closed(&mut self, peer: SocketAddr) {
        self.connections.remove(&peer);
    }

    /// One message from `path`, received at `now`.
    pub fn handle_datagram(&mut self, now: Instant, path: Path, bytes: &[u8]) {
        self.advance(now);
        self.counters.received.inc();
        let emergency = guard::is_emergency_invite(bytes, &self.emergency_numbers);
        match self.guard.admit(self.now, path.peer().ip(), emergency) {
            Admission::Allowed => {}
            Admission::RateLimited => {
                self.counters.rate_limited.inc();
                self.counters.refuse(RejectReason::RateLimited);
                return;
            }
            Admission::Banned => {
                self.counters.banned_drops.inc();
                self.counters.refuse(RejectReason::Banned);
                return;
            }
        }
        let tag = self.tag();
        match wire::parse(bytes, !path.reliable(), &tag) {
            Err(rejected) => {
                self.counters.rejected.inc();
                self.counters.refuse(RejectReason::Malformed);
                tracing::debug!(peer = %path.peer(), reason = %rejected.reason, "SIP message refused");
                match rejected.response {
                    Some(response) => self.send(path, response),
                    None => {
                        self.counters.dropped.inc();
                    }
                }
            }
            Ok(Parsed::Extension(e)) => {
                self.counters.refuse(RejectReason::NotImplemented);
                if let Some(response) =
                    wire::response_from_headers(&e.headers, 501, "Not Implemented", &tag)
                {
                    self.send(path, response);
                }
            }
            Ok(Parsed::Sip(message)) => match *message {
                rsip::SipMessage::Request(request) => self.request(request, path, tag),
                rsip::SipMessage::Response(response) => self.response(response, bytes),
            },
        }
    }

    /// A response: to the client transaction of its branch, if any.
    fn response(&mut self, response: rsip::Response, bytes: &[u8]) {
        let branch = response
            .via_header()
            .ok()
            .and_then(|v| v.typed().ok())
            .and_then(|v| v.branch().map(|b| b.to_string()))
            .unwrap_or_default();
        // A CANCEL shares its INVITE's branch; its transaction is kept apart.
        let cancel = response
            .cseq_header()
            .map(|h| h.value().trim().ends_with("CANCEL"))
            .unwrap_or(false);
        let branch = if cancel {
            format!("{branch}|CANCEL")
        } else {
            branch
        };
        // No branch (empty) matches none of ours.
        let Some((tx, _)) = self.clients.get_mut(&branch) else {
            if !cancel && response.status_code.code() / 100 == 2 && self.ack_again(&branch) {
                return;
            }
            self.counters.dropped.inc();
            self.counters.refuse(RejectReason::Stray);
            return;
        };
        let now = self.now;
        tx.handle_response(now, response.status_code.code(), bytes.to_vec());
        self.last_response = Some(response);
        self.client_events(&branch, now);
        self.last_response = None;
    }

    fn client_events(&mut self, branch: &str, now: Instant) {
        let owner = self.branch_owner.get(branch).copied();
        let Some((tx, path)) = self.clients.get_mut(branch) else {
            return;
        };
        flush_client(tx, *path, &mut self.outbox);
        let path = *path;
        let invite = (owner.is_none() && tx.is_invite()).then(|| tx.request().clone());
        let mut events = Vec::new();
        while let Some(event) = tx.poll_event() {
            events.push(event);
        }
        let terminated = tx.is_terminated();
        let next = tx.poll_timeout();
        if terminated {
            self.clients.remove(branch);
            self.orphans.remove(branch);
        } else if let Some(at) = next {
            self.client_deadlines.push(Reverse((at, branch.to_owned())));
        }
        if let Some((id, index)) = owner {
            for event in events {
                self.branch_event(id, index, event, now);
            }
            return;
        }
        for event in events {
            match event {
                ClientEvent::Response(bytes) => {
                    if let Some(invite) = &invite {
                        self.orphan_answer(branch, invite, &bytes, path);
                        continue;
                    }
                    if let Some((line, contact)) = self.qualifier.answered(branch, now) {
                        tracing::info!(%line, %contact, "reachable again");
                    }
                    if let Some(index) = self.outbound_index(branch) {
                        self.outbound_answer(index, branch, &bytes, now);
                    }
                }
                ClientEvent::Failed(_) => {
                    self.qualifier.gave_up(branch);
                    if let Some(index) = self.outbound_index(branch) {
                        self.outbound_branches.remove(branch);
                        if let Some(Outbound { registration, .. }) = self.outbound.get_mut(index) {
                            registration.handle_failure(now, branch);
                            tracing::warn!(user = %registration.user, "provider registration failed: no answer");
                        }
                    }
                }
            }
        }
    }

    /// Sends a request the edge originates in a client transaction over `path`; its
    /// answers come back through `client_events` by `branch`.
    fn start_client(&mut self, branch: String, bytes: Vec<u8>, path: Path, now: Instant) {
        let transport = path.transport();
        let tx = ClientTransaction::new(false, bytes, transport, TimerValues::default(), now);
        self.clients.insert(branch.clone(), (tx, path));
        self.client_events(&branch, now);
    }

    /// When [`Self::handle_timeout`] is next due: the earliest transaction, dialog,
    /// keep-alive or provider-registration timer, and the once-a-second expiry.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let heaps = [
            self.deadlines.peek().map(|Reverse((at, _))| *at),
            self.client_deadlines.peek().map(|Reverse((at, _))| *at),
            self.call_deadlines.peek().map(|Reverse((at, _))| *at),
        ];
        let registering = (self.registering && self.local.is_some())
            .then(|| {
                self.outbound
                    .iter()
                    .filter_map(|o| o.registration.poll_timeout())
                    .min()
            })
            .flatten();
        let persist = self.dirty.then_some(self.last_write + PERSIST_EVERY);
        let drain = self.drain_deadline.filter(|_| !self.calls.is_empty());
        heaps
            .into_iter()
            .chain([
                Some(self.next_second),
                self.qualifier.poll_timeout(),
                registering,
                persist,
                drain,
            ])
            .flatten()
            .min()
    }

    /// Runs every timer due at `now`: transaction and dialog timers (2xx
    /// retransmission, Dial timeouts), keep-alives, provider registrations, expiry of
    /// registrations and subscriptions, and persistence ([`Event::Persist`]).
    pub fn handle_timeout(&mut self, now: Instant) {
        self.advance(now);
        let now = self.now;
        self.call_tick(now);
        if self.drain_deadline.is_some_and(|at| at <= now) {
            self.drain_deadline = None;
            self.stop_calls();
        }
        for key in pop_due(&mut self.deadlines, now) {
            let Some((tx, path)) = self.transactions.get_mut(&key) else {
                continue;
            };
            if tx.poll_timeout().is_some_and(|at| at <= now) {
                tx.handle_timeout(now);
                flush(tx, *path, &mut self.outbox);
            }
            match tx.poll_timeout() {
                _ if tx.is_terminated() => {
                    self.transactions.remove(&key);
                }
                Some(at) => self.deadlines.push(Reverse((at, key))),
                None => {}
            }
        }
        for branch in pop_due(&mut self.client_deadlines, now) {
            let due = self
                .clients
                .get(&branch)
                .is_some_and(|(tx, _)| tx.poll_timeout().is_some_and(|at| at <= now));
            if due {
                if let Some((tx, _)) = self.clients.get_mut(&branch) {
                    tx.handle_timeout(now);
                }
                self.client_events(&branch, now);
            }
        }
        if now >= self.next_second {
            self.next_second = now + Duration::from_secs(1);
            let unix = self.unix();
            let expired = self.registrar.expire(unix);
            if !expired.is_empty() {
                self.persist(&expired);
            }
            // Only the lines that are probed: with thousands of lines, a copy of every
            // binding each second held the shard for long enough to drop datagrams.
            let qualifier = &self.qualifier;
            let bindings: Vec<Key> = self
                .registrar
                .lines_with_bindings()
                .filter(|(line, _)| qualifier.qualifies(line))
                .flat_map(|(line, bindings)| {
                    bindings
                        .iter()
                        .map(move |b| (line.to_owned(), b.contact.clone()))
                })
                .collect();
            self.qualifier.sync(now, bindings);
            self.subscriptions.retain(|_, s| s.expires_at > now);
        }
        for key in self.qualifier.due(now) {
            self.probe(&key, now);
        }
        if let Some(local) = self.local_addr().filter(|_| self.registering) {
            for index in 0..self.outbound.len() {
                let branch = format!("z9hG4bK{}", self.tag());
                if let Some(request) = self.outbound[index]
                    .registration
                    .poll_request(now, local, branch)
                {
                    self.send_outbound(index, request, now);
                }
            }
        }
        for (line, contact) in self.qualifier.check(now) {
            tracing::warn!(%line, %contact, "unreachable: no answer to OPTIONS in time");
        }
        self.due_persistence(now);
    }

    /// Open server transactions (tests, metrics).
    pub fn transactions(&self) -> usize {
        self.transactions.len()
    }

    /// The keys and states of the open server transactions, and the branches of the
    /// client ones (to say what [`Self::held`] counts).
    pub fn held_keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self
            .transactions
            .iter()
            .map(|(key, (tx, _))| format!("server {key} {:?}", tx.state()))
            .chain(
                self.clients
                    .iter()
                    .map(|(key, (tx, _))| format!("client {key} {:?}", tx.state())),
            )
            .collect();
        keys.sort();
        keys
    }

    /// How much per-call and per-transaction state the endpoint holds: once every
    /// call has ended and every timer has run out, all of it is zero (a leak
    /// otherwise).
    pub fn held(&self) -> Held {
        Held {
            server_transactions: self.transactions.len(),
            client_transactions: self.clients.len(),
            calls: self.calls.len(),
            call_ids: self.call_ids.len(),
            branches: self.branch_owner.len() + self.orphans.len(),
            branch_answers: self.branch_sdp.len(),
            queued: self.outbox.len() + self.events.len(),
        }
    }
}

/// What [`SipCore::held`] counts.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    pub server_transactions: usize,
    pub client_transactions: usize,
    pub calls: usize,
    /// SIP Call-IDs of calls' legs.
    pub call_ids: usize,
    /// B-leg INVITE branches, and the SDP answers kept for them.
    pub branches: usize,
    pub branch_answers: usize,
    /// Datagrams and events the driver has not taken.
    pub queued: usize,
}

/// Pops every entry of a deadline heap due at `now` (stale ones included: callers check
/// the transaction's own timeout).
fn pop_due(heap: &mut BinaryHeap<Reverse<(Instant, String)>>, now: Instant) -> Vec<String> {
    let mut due = Vec::new();
    while heap.peek().is_some_and(|Reverse((at, _))| *at <= now) {
        if let Some(Reverse((_, key))) = heap.pop() {
            due.push(key);
        }
    }
    due
}

fn flush_client(tx: &mut ClientTransaction<Vec<u8>>, path: Path, out: &mut VecDeque<Datagram>) {
    while let Some(transmit) = tx.poll_transmit() {
        let bytes = match transmit {
            Transmit::Message(bytes) => bytes,
            Transmit::Ack(response) => match ack_for_failure(tx.request(), &response) {
                Some(ack) => ack,
                None => continue,
            },
        };
        out.push_back(Datagram { path, bytes });
    }
}

/// The ACK of a failure to one of our INVITEs, from the bytes of both (§17.1.1.3).
fn ack_for_failure(invite: &[u8], response: &[u8]) -> Option<Vec<u8>> {
    let invite = rsip::Request::try_from(invite).ok()?;
    let response = rsip::Response::try_from(response).ok()?;
    let ack = sip_wire::build::ack_for_failure(&invite, &response)?;
    Some(ack.to_string().into_bytes())
}

/// `sip:user@host:port;params` (or in `<...>`) to `host:port` when the host is an
/// address.
fn contact_addr(contact: &str) -> Option<SocketAddr> {
    let uri = sip_wire::header::NameAddr::parse(contact)?.uri;
    sip_wire::header::SipUri::parse(uri)?.addr(5060)
}

fn flush(tx: &mut ServerTransaction<Vec<u8>>, path: Path, out: &mut VecDeque<Datagram>) {
    while let Some(transmit) = tx.poll_transmit() {
        match transmit {
            Transmit::Message(bytes) | Transmit::Ack(bytes) => {
                out.push_back(Datagram { path, bytes })
            }
        }
    }
}
