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

use crate::guard::{self, Admission, Guard};
use crate::outbound::{self, OutboundRegistration};
use crate::qualify::{Key, Qualifier};
use crate::registrar::{Binding, Registrar, Source};
use crate::transaction::{ClientEvent, ClientTransaction};
use crate::transaction::{ServerTransaction, TimerValues, Transmit, Transport};
use crate::wire::{self, Parsed};

mod calls;
pub use calls::{event_types, CallEvent, NewCall, PeerInfo, Target};

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
    /// The bindings changed: write this copy (see [`PERSIST_EVERY`]); report a failed
    /// write with [`SipCore::persistence_failed`].
    Persist(HashMap<String, Vec<Binding>>),
}

/// A trunk (a peer with a `host`): where its requests come from and what is not
/// checked for them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trunk {
    pub name: String,
    pub addrs: Vec<SocketAddr>,
    /// `insecure=port`: match by address alone, any source port.
    pub any_port: bool,
    /// `insecure=invite`: its INVITEs are not challenged.
    pub no_challenge: bool,
    /// Networks whose requests are the trunk's from any port, never challenged (a
    /// Trunk resource's `ipAddresses`: the carrier's IP authentication).
    pub nets: Vec<ipnet::IpNet>,
}

impl Trunk {
    /// Whether a request from `source` is this trunk's, and then whether its INVITEs
    /// go unchallenged.
    fn matches(&self, source: SocketAddr) -> Option<bool> {
        if self.nets.iter().any(|net| net.contains(&source.ip())) {
            return Some(true);
        }
        self.addrs
            .iter()
            .any(|a| a.ip() == source.ip() && (self.any_port || a.port() == source.port()))
            .then_some(self.no_challenge)
    }
}

/// A registration to a provider, and where it goes. `id` names it for the branches of
/// its requests (the list changes as Trunk resources do); `trunk` is the Trunk
/// resource it comes from (`None` for sip.conf's `register =>` lines).
pub struct Outbound {
    id: u64,
    pub trunk: Option<String>,
    pub registration: OutboundRegistration,
    pub target: SocketAddr,
    /// What it was made from: a resource's registration is kept across resyncs while
    /// this stays the same.
    pub made_from: String,
    /// When the provider last accepted it.
    pub last_registered: Option<SystemTime>,
}

impl Outbound {
    pub fn new(
        trunk: Option<String>,
        registration: OutboundRegistration,
        target: SocketAddr,
        made_from: String,
    ) -> Self {
        Self {
            id: 0,
            trunk,
            registration,
            target,
            made_from,
            last_registered: None,
        }
    }
}

/// A message-summary subscription: the dialog the NOTIFYs go in.
#[derive(Debug, Clone)]
pub struct Subscription {
    pub line: String,
    pub mailbox: String,
    /// Where NOTIFYs go (the subscriber's Contact).
    pub target: String,
    /// Our side (the SUBSCRIBE's To, with our tag) and theirs (its From).
    pub local: String,
    pub remote: String,
    pub cseq: u32,
    pub expires_at: Instant,
    pub path: Path,
}

/// How long a subscription lasts at most, and without an Expires header.
pub const SUBSCRIPTION_EXPIRES: u32 = 3600;

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
}

/// The shared state of the SIP side of the edge.
pub struct SipCore {
    registrar: Registrar,
    guard: Guard,
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
    branch_sdp: HashMap<(u64, usize), crate::sdp::Session>,
    call_deadlines: BinaryHeap<Reverse<(Instant, u64)>>,
    /// Whether calls can get a task (the driver has a spawner).
    accepting_calls: bool,
    call_seq: u64,
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

/// A line's `mailbox=` as `box@context` (`box` alone is `box@default`).
pub fn mailbox_key(mailbox: &str) -> String {
    if mailbox.contains('@') {
        mailbox.to_owned()
    } else {
        format!("{mailbox}@default")
    }
}

/// What sip.conf defines, which resource lines are added to.
#[derive(Debug, Default)]
pub(crate) struct FileConfig {
    lines: Vec<crate::registrar::Line>,
    peers: Vec<PeerInfo>,
    mwi: HashMap<String, Vec<String>>,
}

/// A trunk defined by a resource: how its requests are recognised, what calls to it
/// need, and its registration if it registers.
pub struct ResourceTrunk {
    pub trunk: Trunk,
    pub peer: PeerInfo,
    pub registration: Option<Outbound>,
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
        guard: Guard,
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
        let core = Self {
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
            last_write: now,
            counters,
            tag_seed: seed,
            tag_counter: 0,
            peers: HashMap::new(),
            calls: HashMap::new(),
            call_ids: HashMap::new(),
            branch_owner: HashMap::new(),
            branch_sdp: HashMap::new(),
            call_deadlines: BinaryHeap::new(),
            accepting_calls: false,
            call_seq: 0,
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

    fn tag(&mut self) -> String {
        self.tag_counter += 1;
        format!(
            "{:x}",
            self.tag_seed
                .wrapping_add(self.tag_counter.wrapping_mul(0x9e37_79b9_7f4a_7c15))
        )
    }

    /// sip.conf's provider registrations (`register =>`), with their resolved
    /// addresses.
    pub fn set_outbound(&mut self, registrations: Vec<(OutboundRegistration, SocketAddr)>) {
        let resources: Vec<Outbound> = self
            .outbound
            .drain(..)
            .filter(|o| o.trunk.is_some())
            .collect();
        for (registration, target) in registrations {
            self.push_outbound(Outbound::new(None, registration, target, String::new()));
        }
        self.outbound.extend(resources);
    }

    fn push_outbound(&mut self, mut outbound: Outbound) {
        self.outbound_seq += 1;
        outbound.id = self.outbound_seq;
        if !self.registering {
            outbound.registration.restart(self.now);
        }
        self.outbound.push(outbound);
    }

    /// Whether this edge registers to the providers now (it holds the Lease, or there
    /// is none).
    pub fn registering(&self) -> bool {
        self.registering
    }

    /// Whether this edge sends the `register =>` lines' REGISTERs: always without a
    /// Lease; with one, only while it holds it (one registration per trunk, whatever the
    /// number of edges). A change starts the registrations over.
    pub fn set_registering(&mut self, registering: bool) {
        if self.registering == registering {
            return;
        }
        self.registering = registering;
        let now = self.now;
        for outbound in &mut self.outbound {
            outbound.registration.restart(now);
        }
        self.outbound_branches.clear();
        tracing::info!(registering, "trunk registration ownership changed");
    }

    /// sip.conf's trunks, by address.
    pub fn set_trunks(&mut self, trunks: Vec<Trunk>) {
        self.trunks = trunks;
    }

    /// The trunk a request from `source` belongs to, and whether its INVITEs go
    /// unchallenged (chan_sip's rule: by address and port, or by address alone with
    /// `insecure=port`; a resource's `ipAddresses` by network). sip.conf's come first.
    fn trunk_for(&self, source: SocketAddr) -> Option<(&Trunk, bool)> {
        self.trunks
            .iter()
            .chain(&self.resource_trunks)
            .find_map(|t| t.matches(source).map(|trusted| (t, trusted)))
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

    /// The state of each provider registration: (user, status).
    pub fn outbound_status(&self) -> Vec<(String, outbound::Status)> {
        self.outbound
            .iter()
            .map(|o| (o.registration.user.clone(), o.registration.status().clone()))
            .collect()
    }

    /// The registration of the Trunk resource `trunk`: its status and when the provider
    /// last accepted it.
    pub fn trunk_registration(
        &self,
        trunk: &str,
    ) -> Option<(outbound::Status, Option<SystemTime>)> {
        self.outbound
            .iter()
            .find(|o| o.trunk.as_deref() == Some(trunk))
            .map(|o| (o.registration.status().clone(), o.last_registered))
    }

    fn send_outbound(&mut self, index: usize, request: outbound::Request, now: Instant) {
        let Some(Outbound { id, target, .. }) = self.outbound.get(index) else {
            return;
        };
        let (id, target) = (*id, *target);
        let path = Path::udp(target);
        self.outbound_branches.insert(request.branch.clone(), id);
        self.start_client(request.branch, request.bytes, path, now);
    }

    /// Which lines show which mailbox (`box@context` -> lines).
    pub fn set_mwi_lines(&mut self, lines: HashMap<String, Vec<String>>) {
        self.mwi_lines = lines;
    }

    /// New message counts of `mailbox@context` (RFC 3842): a NOTIFY to every reachable
    /// binding of the lines that show it. Returns how many were sent.
    pub fn update_mailbox(
        &mut self,
        mailbox: &str,
        context: &str,
        new: u32,
        old: u32,
        urgent_new: u32,
        urgent_old: u32,
    ) -> u32 {
        let context = if context.is_empty() {
            "default"
        } else {
            context
        };
        let key = format!("{mailbox}@{context}");
        self.mwi_counts
            .insert(key.clone(), [new, old, urgent_new, urgent_old]);
        // Subscribers get the counts in their dialogs; lines without a subscription get
        // an unsolicited NOTIFY at each binding.
        let subscribed: Vec<String> = self
            .subscriptions
            .iter()
            .filter(|(_, s)| s.mailbox == key)
            .map(|(id, _)| id.clone())
            .collect();
        let mut sent = 0;
        let mut subscribed_lines = Vec::new();
        for call_id in subscribed {
            if let Some(line) = self.subscriptions.get(&call_id).map(|s| s.line.clone()) {
                subscribed_lines.push(line);
            }
            self.notify_subscription(&call_id, false);
            sent += 1;
        }
        let lines: Vec<String> = match self.mwi_lines.get(&key) {
            Some(lines) => lines.clone(),
            // As the seed has it: no `mailbox=`, the line named like the mailbox.
            None if context == "default" && self.registrar.has_line(mailbox) => {
                vec![mailbox.to_owned()]
            }
            None => Vec::new(),
        };
        let now = self.now;
        let unix = self.unix();
        for line in lines.into_iter().filter(|l| !subscribed_lines.contains(l)) {
            let bindings: Vec<Binding> = self
                .registrar
                .contacts(&line, unix)
                .into_iter()
                .cloned()
                .collect();
            for binding in bindings {
                if !self.qualifier.reachable(&line, &binding.contact) {
                    continue;
                }
                let Some(path) = self.path_to(&binding) else {
                    continue;
                };
                let Some(local) = self.local else {
                    continue;
                };
                let body = message_summary(mailbox, local.ip(), [new, old, urgent_new, urgent_old]);
                let branch = format!("z9hG4bK{}", self.tag());
                let tag = self.tag();
                let transport = if path.reliable() { "TCP" } else { "UDP" };
                let notify = format!(
                    "NOTIFY {contact} SIP/2.0\r\nVia: SIP/2.0/{transport} {local};branch={branch};rport\r\n\
Max-Forwards: 70\r\nFrom: <sip:{mailbox}@{local}>;tag={tag}\r\nTo: <{contact}>\r\n\
Call-ID: {tag}@{local}\r\nCSeq: 1 NOTIFY\r\nEvent: message-summary\r\n\
Subscription-State: active\r\nContent-Type: application/simple-message-summary\r\n\
Content-Length: {}\r\n\r\n{body}",
                    body.len(),
                    contact = binding.contact,
                );
                self.start_client(branch, notify.into_bytes(), path, now);
                sent += 1;
            }
        }
        sent
    }

    /// The mailbox a line shows: the one whose `mailbox=` names it, else its own name.
    fn mailbox_of(&self, line: &str) -> String {
        self.mwi_lines
            .iter()
            .find(|(_, lines)| lines.iter().any(|l| l == line))
            .map(|(key, _)| key.clone())
            .unwrap_or_else(|| format!("{line}@default"))
    }

    /// Sends the current counts in the subscription's dialog (RFC 3842 §5); `last` ends
    /// it (`Subscription-State: terminated`).
    fn notify_subscription(&mut self, call_id: &str, last: bool) {
        let Some(local) = self.local_addr() else {
            return;
        };
        let branch = format!("z9hG4bK{}", self.tag());
        let now = self.now;
        let Some(sub) = self.subscriptions.get_mut(call_id) else {
            return;
        };
        sub.cseq += 1;
        let [new, old, urgent_new, urgent_old] = self
            .mwi_counts
            .get(&sub.mailbox)
            .copied()
            .unwrap_or_default();
        let account = sub.mailbox.split('@').next().unwrap_or_default();
        let body = message_summary(account, local.ip(), [new, old, urgent_new, urgent_old]);
        let remaining = sub.expires_at.saturating_duration_since(now).as_secs();
        let state = if last {
            "terminated;reason=timeout".to_owned()
        } else {
            format!("active;expires={remaining}")
        };
        let transport = if sub.path.reliable() { "TCP" } else { "UDP" };
        let notify = format!(
            "NOTIFY {target} SIP/2.0\r\nVia: SIP/2.0/{transport} {local};branch={branch};rport\r\nMax-Forwards: 70\r\n\
From: {from}\r\nTo: {to}\r\nCall-ID: {call_id}\r\nCSeq: {cseq} NOTIFY\r\nContact: <sip:edge@{local}>\r\n\
Event: message-summary\r\nSubscription-State: {state}\r\nContent-Type: application/simple-message-summary\r\n\
Content-Length: {}\r\n\r\n{body}",
            body.len(),
            target = sub.target,
            from = sub.local,
            to = sub.remote,
            cseq = sub.cseq,
        );
        let path = sub.path;
        self.start_client(branch, notify.into_bytes(), path, now);
    }

    /// A wrong password from `source`: counted, and banned after repeated tries.
    fn auth_failed(&mut self, source: std::net::IpAddr) {
        self.counters.auth_failures.inc();
        if self.guard.auth_failed(self.now, source) {
            self.counters.bans.inc();
            tracing::warn!(%source, "banned after repeated authentication failures");
        }
    }

    /// The line a request proves itself to be with digest (407 challenge), or the
    /// response to send; wrong passwords count towards a ban.
    fn authenticate(
        &mut self,
        request: &rsip::Request,
        method: &str,
        tag: &str,
        path: &Path,
    ) -> Result<String, rsip::Response> {
        match self
            .registrar
            .authenticate(self.unix(), request, method, tag)
        {
            crate::registrar::Authenticated::Line(line) => Ok(line),
            crate::registrar::Authenticated::Respond { response, failed } => {
                if failed {
                    self.auth_failed(path.peer().ip());
                }
                Err(response)
            }
        }
    }

    /// A SUBSCRIBE: message-summary only, from an authenticated line.
    fn subscribe(&mut self, request: &rsip::Request, path: &Path, tag: &str) -> rsip::Response {
        let event = request
            .headers
            .iter()
            .find_map(|h| match h {
                rsip::Header::Event(e) => Some(e.value().to_owned()),
                rsip::Header::Other(n, v) if n.eq_ignore_ascii_case("Event") || n == "o" => {
                    Some(v.clone())
                }
                _ => None,
            })
            .unwrap_or_default();
        if event.split(';').next().unwrap_or("").trim() != "message-summary" {
            let allow = vec![rsip::Header::Other(
                "Allow-Events".into(),
                "message-summary".into(),
            )];
            return crate::registrar::response(request, 489, "Bad Event", tag, allow);
        }
        let line = match self.authenticate(request, "SUBSCRIBE", tag, path) {
            Ok(line) => line,
            Err(response) => return response,
        };
        let call_id = request
            .call_id_header()
            .map(|h| h.value().to_owned())
            .unwrap_or_default();
        let expires = request
            .expires_header()
            .and_then(|e| e.value().trim().parse::<u32>().ok())
            .unwrap_or(SUBSCRIPTION_EXPIRES)
            .min(SUBSCRIPTION_EXPIRES);
        let Some(local) = self.local_addr() else {
            return crate::registrar::response(request, 500, "Server Internal Error", tag, vec![]);
        };
        let contact = request
            .contact_header()
            .ok()
            .and_then(|c| crate::registrar::parse_contact(c.value()))
            .map(|(uri, _)| uri)
            .unwrap_or_else(|| request.uri.to_string());
        let response = crate::registrar::response(
            request,
            200,
            "OK",
            tag,
            vec![
                rsip::Header::Expires(rsip::headers::Expires::new(expires.to_string())),
                rsip::Header::Contact(rsip::headers::Contact::new(format!("<sip:edge@{local}>"))),
            ],
        );
        // Our side of the dialog is the To of our response (with the tag it has now).
        let local_party = response
            .to_header()
            .map(|t| t.value().to_owned())
            .unwrap_or_default();
        let remote_party = request
            .from_header()
            .map(|f| f.value().to_owned())
            .unwrap_or_default();
        let now = self.now;
        // A refresh keeps the dialog's tag and CSeq.
        let (cseq, local) = match self.subscriptions.get(&call_id) {
            Some(s) => (s.cseq, s.local.clone()),
            None => (0, local_party),
        };
        self.subscriptions.insert(
            call_id.clone(),
            Subscription {
                mailbox: self.mailbox_of(&line),
                line,
                target: contact,
                local,
                remote: remote_party,
                cseq,
                expires_at: now + Duration::from_secs(u64::from(expires)),
                path: *path,
            },
        );
        response
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

    /// Whether a binding answers its keep-alives (true when not qualified).
    pub fn reachable(&self, line: &str, contact: &str) -> bool {
        self.qualifier.reachable(line, contact)
    }

    /// Current registrations (at the endpoint's last input), for the gRPC API.
    pub fn registrations(&self, peer: Option<&str>) -> Vec<(String, Binding)> {
        let now = self.unix();
        let mut out = Vec::new();
        for (line, bindings) in self.registrar.snapshot() {
            if peer.is_some_and(|p| p != line) {
                continue;
            }
            for b in bindings.into_iter().filter(|b| b.expires_at > now) {
                out.push((line.clone(), b));
            }
        }
        out.sort_by(|a, b| (&a.0, &a.1.contact).cmp(&(&b.0, &b.1.contact)));
        out
    }

    fn update_gauge(&self) {
        self.counters
            .registrations
            .set(self.registrar.binding_count() as i64);
    }

    /// Marks the bindings changed; `handle_timeout` hands them out for writing and
    /// updates the gauge.
    fn persist(&mut self) {
        self.dirty = true;
    }

    /// The bindings to write now if they changed (at shutdown).
    pub fn flush(&mut self) -> Option<HashMap<String, Vec<Binding>>> {
        if !self.dirty || !self.persist {
            return None;
        }
        self.dirty = false;
        self.last_write = self.now;
        Some(self.registrar.snapshot())
    }

    /// When the bindings changed and the last write is `PERSIST_EVERY` old: a copy for
    /// the driver to serialize and write (with thousands of lines that takes long
    /// enough for the SIP socket's receive buffer to overflow if it were done here).
    /// Updates the registrations gauge as well.
    fn due_persistence(&mut self, now: Instant) {
        if !self.dirty || now.duration_since(self.last_write) < PERSIST_EVERY {
            return;
        }
        self.update_gauge();
        self.dirty = false;
        self.last_write = now;
        if self.persist {
            let bindings = self.registrar.snapshot();
            self.events.push_back(Event::Persist(bindings));
        }
    }

    /// A write of [`Event::Persist`] that failed or was not made: the bindings are
    /// written again later.
    pub fn persistence_failed(&mut self) {
        self.dirty = true;
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
                return;
            }
            Admission::Banned => {
                self.counters.banned_drops.inc();
                return;
            }
        }
        let tag = self.tag();
        match wire::parse(bytes, !path.reliable(), &tag) {
            Err(rejected) => {
                self.counters.rejected.inc();
                tracing::debug!(peer = %path.peer(), reason = %rejected.reason, "SIP message refused");
                match rejected.response {
                    Some(response) => self.send(path, response),
                    None => {
                        self.counters.dropped.inc();
                    }
                }
            }
            Ok(Parsed::Extension(e)) => {
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
            self.counters.dropped.inc();
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
        if owner.is_some() {
            self.branch_flush(branch);
        }
        let Some((tx, path)) = self.clients.get_mut(branch) else {
            return;
        };
        if owner.is_none() {
            flush_client(tx, *path, &mut self.outbox);
        }
        let mut events = Vec::new();
        while let Some(event) = tx.poll_event() {
            events.push(event);
        }
        let terminated = tx.is_terminated();
        let next = tx.poll_timeout();
        if terminated {
            self.clients.remove(branch);
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

    /// The position of the outbound registration a request's branch belongs to.
    fn outbound_index(&self, branch: &str) -> Option<usize> {
        let id = self.outbound_branches.get(branch)?;
        self.outbound.iter().position(|o| o.id == *id)
    }

    /// The trunks defined by resources (Kubernetes `Trunk`s), replacing the previous
    /// set: their addresses, the peers calls use, and their registrations. A
    /// registration made from the same settings as before is kept as it is (a resync
    /// does not register again); a gone trunk's registration stops.
    pub fn set_resource_trunks(&mut self, resources: Vec<ResourceTrunk>) {
        let (mut previous, kept): (Vec<Outbound>, Vec<Outbound>) =
            self.outbound.drain(..).partition(|o| o.trunk.is_some());
        self.outbound = kept;
        self.resource_trunks.clear();
        self.trunk_peers.clear();
        let mut fresh = Vec::new();
        let mut nets = Vec::new();
        for resource in resources {
            nets.extend(resource.trunk.nets.iter().copied());
            nets.extend(
                resource
                    .trunk
                    .addrs
                    .iter()
                    .map(|a| ipnet::IpNet::from(a.ip())),
            );
            self.resource_trunks.push(resource.trunk);
            self.trunk_peers.push(resource.peer);
            let Some(wanted) = resource.registration else {
                continue;
            };
            match previous
                .iter()
                .position(|o| o.trunk == wanted.trunk && o.made_from == wanted.made_from)
            {
                Some(at) => self.outbound.push(previous.swap_remove(at)),
                None => fresh.push(wanted),
            }
        }
        for outbound in fresh {
            tracing::info!(trunk = ?outbound.trunk, target = %outbound.target, "registering a trunk resource");
            self.push_outbound(outbound);
        }
        for gone in previous {
            tracing::info!(trunk = ?gone.trunk, "a trunk resource's registration stops");
        }
        let ids: HashSet<u64> = self.outbound.iter().map(|o| o.id).collect();
        self.outbound_branches.retain(|_, id| ids.contains(id));
        self.guard.set_exempt_nets(nets);
        self.rebuild_peers();
    }

    /// A response to a provider registration: final ones drive it on.
    fn outbound_answer(&mut self, index: usize, branch: &str, bytes: &[u8], now: Instant) {
        let Ok(Parsed::Sip(message)) = wire::parse(bytes, true, "x") else {
            return;
        };
        let rsip::SipMessage::Response(response) = *message else {
            return;
        };
        let status = response.status_code.code();
        if status < 200 {
            return;
        }
        self.outbound_branches.remove(branch);
        let header = |name: &str| {
            response.headers.iter().find_map(|h| {
                let text = h.to_string();
                let (n, v) = text.split_once(": ")?;
                n.eq_ignore_ascii_case(name).then(|| v.to_owned())
            })
        };
        let challenge = header(if status == 407 {
            "Proxy-Authenticate"
        } else {
            "WWW-Authenticate"
        });
        let expires = header("Expires")
            .and_then(|v| v.trim().parse().ok())
            .or_else(|| {
                header("Contact").and_then(|c| {
                    c.split(';')
                        .find_map(|p| p.trim().strip_prefix("expires="))
                        .and_then(|v| v.trim().parse().ok())
                })
            });
        let Some(local) = self.local_addr() else {
            return;
        };
        let next_branch = format!("z9hG4bK{}", self.tag());
        let unix = self.unix();
        let Some(Outbound {
            registration,
            last_registered,
            ..
        }) = self.outbound.get_mut(index)
        else {
            return;
        };
        let answer = outbound::Answer {
            status,
            challenge,
            expires,
        };
        let next = registration.handle_answer(now, branch, answer, local, next_branch);
        match registration.status() {
            outbound::Status::Registered { .. } => {
                *last_registered = Some(SystemTime::UNIX_EPOCH + Duration::from_secs(unix));
                tracing::debug!(user = %registration.user, "registered to the provider")
            }
            outbound::Status::Failed { reason } => {
                tracing::warn!(user = %registration.user, %reason, "provider registration failed")
            }
            outbound::Status::Unregistered => {}
        }
        if let Some(request) = next {
            self.send_outbound(index, request, now);
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

    /// Where to send a request to a binding: its source for `nat=yes`, else its
    /// Contact's address; over its own TCP connection when it registered over TCP.
    fn path_to(&self, binding: &Binding) -> Option<Path> {
        let to = if binding.nat {
            binding.source
        } else {
            contact_addr(&binding.contact)?
        };
        if binding.transport == "tcp" {
            return self
                .connections
                .contains(&binding.source)
                .then(|| Path::tcp(binding.source));
        }
        self.local?;
        Some(Path::udp(to))
    }

    fn probe(&mut self, key: &Key, now: Instant) {
        let binding = self
            .registrar
            .contacts(&key.0, self.unix())
            .into_iter()
            .find(|b| b.contact == key.1)
            .cloned();
        let way = binding.and_then(|b| Some((self.path_to(&b)?, self.local?, b)));
        let Some((path, local, binding)) = way else {
            self.qualifier.postpone(key, now);
            return;
        };
        let branch = format!("z9hG4bK{}", self.tag());
        let tag = self.tag();
        let transport = if path.reliable() { "TCP" } else { "UDP" };
        let options = format!(
            "OPTIONS {contact} SIP/2.0\r\nVia: SIP/2.0/{transport} {local};branch={branch};rport\r\n\
Max-Forwards: 70\r\nFrom: <sip:asterisk@{local}>;tag={tag}\r\nTo: <{contact}>\r\n\
Call-ID: {tag}@{local}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
            contact = binding.contact,
        );
        self.qualifier.sent(key, branch.clone(), now);
        self.start_client(branch, options.into_bytes(), path, now);
    }

    fn request(&mut self, mut request: rsip::Request, path: Path, tag: String) {
        stamp_via(&mut request, path.peer());
        let method = request.method;
        let via = request.via_header().ok().and_then(|v| v.typed().ok());
        let branch = via
            .as_ref()
            .and_then(|v| v.branch().map(|b| b.to_string()))
            .unwrap_or_default();
        let sent_by = via
            .as_ref()
            .map(|v| v.uri.host_with_port.to_string())
            .unwrap_or_default();
        let call_id = request
            .call_id_header()
            .map(|h| h.value().to_owned())
            .unwrap_or_default();
        // RFC 3261 §17.2.3: the branch, the top Via's sent-by and the method (ACK matches
        // its INVITE), or for RFC 2543 elements without the magic cookie, the Call-ID and
        // CSeq. Two phones may well pick the same branch; they differ in sent-by.
        let key_method = if method == rsip::Method::Ack {
            "INVITE".to_owned()
        } else {
            method.to_string()
        };
        let key = if branch.starts_with("z9hG4bK") {
            format!("{branch}|{sent_by}|{key_method}")
        } else {
            let cseq = request
                .cseq_header()
                .map(|h| h.value().to_owned())
                .unwrap_or_default();
            format!(
                "{call_id}|{}|{key_method}",
                cseq.split_whitespace().next().unwrap_or("")
            )
        };
        let now = self.now;
        if method == rsip::Method::Ack {
            // The ACK for a 2xx is its own transaction: for the call's dialog.
            self.call_request(&request, &key, &path, &tag);
            if let Some((tx, path)) = self.transactions.get_mut(&key) {
                tx.handle_ack(now, Vec::new());
                flush(tx, *path, &mut self.outbox);
                if let Some(at) = tx.poll_timeout() {
                    self.deadlines.push(Reverse((at, key)));
                }
            }
            return;
        }
        if let Some((tx, path)) = self.transactions.get_mut(&key) {
            tx.handle_retransmission();
            flush(tx, *path, &mut self.outbox);
            return;
        }
        let transport = path.transport();
        let invite = method == rsip::Method::Invite;
        let trying = invite.then(|| {
            crate::registrar::response(&request, 100, "Trying", "", vec![])
                .to_string()
                .into_bytes()
        });
        let mut tx = ServerTransaction::new(invite, trying, transport, TimerValues::default());

        let response = match method {
            rsip::Method::Register => {
                let source = Source {
                    addr: path.peer(),
                    reliable: path.reliable(),
                };
                let user = request
                    .to_header()
                    .ok()
                    .and_then(|t| t.typed().ok())
                    .and_then(|to| to.uri.user().map(str::to_owned));
                if self.lines_pending && user.is_some_and(|u| !self.registrar.has_line(&u)) {
                    // The line may be a resource not read yet (the edge has just
                    // started): come back shortly, rather than a 403 that phones take
                    // as final.
                    let retry = vec![rsip::Header::Other("Retry-After".into(), "5".into())];
                    crate::registrar::response(&request, 503, "Service Unavailable", &tag, retry)
                } else {
                    let outcome = self.registrar.handle(self.unix(), &request, source, &tag);
                    if outcome.auth_failed {
                        self.auth_failed(path.peer().ip());
                    }
                    if let Some(line) = &outcome.changed {
                        tracing::debug!(line = %line, "registration changed");
                        self.persist();
                    }
                    outcome.response
                }
            }
            rsip::Method::Options => {
                let allow = vec![rsip::Header::Other("Allow".into(), ALLOW.into())];
                crate::registrar::response(&request, 200, "OK", &tag, allow)
            }
            rsip::Method::Invite
                if request
                    .to_header()
                    .is_ok_and(|t| t.value().to_ascii_lowercase().contains(";tag=")) =>
            {
                // A re-INVITE inside a call's dialog.
                self.call_request(&request, &key, &path, &tag)
                    .unwrap_or_else(|| no_dialog(&request, &tag))
            }
            rsip::Method::Invite => {
                // Who is calling: a trunk by its address (not challenged with
                // insecure=invite), else a line that proves itself with digest (407).
                let caller = match self.trunk_for(path.peer()) {
                    Some((trunk, true)) => Ok(trunk.name.clone()),
                    _ => self.authenticate(&request, "INVITE", &tag, &path),
                };
                match caller {
                    Ok(peer) => {
                        match self.start_call(
                            request.clone(),
                            tx,
                            key.clone(),
                            path,
                            peer,
                            tag.clone(),
                        ) {
                            Ok(()) => return,
                            Err(refused) => {
                                let (back, response) = *refused;
                                tx = back;
                                response
                            }
                        }
                    }
                    Err(response) => response,
                }
            }
            rsip::Method::Subscribe => self.subscribe(&request, &path, &tag),
            rsip::Method::Bye | rsip::Method::Cancel => self
                .call_request(&request, &key, &path, &tag)
                .unwrap_or_else(|| no_dialog(&request, &tag)),
            _ => {
                let allow = vec![rsip::Header::Other("Allow".into(), ALLOW.into())];
                crate::registrar::response(&request, 405, "Method Not Allowed", &tag, allow)
            }
        };
        let status = response.status_code.code();
        tx.respond(now, status, response.to_string().into_bytes());
        flush(&mut tx, path, &mut self.outbox);
        if method == rsip::Method::Subscribe && status == 200 {
            // RFC 3265 §3.1.6.2: a NOTIFY follows the 200 at once; Expires: 0 ends it.
            let ending = self
                .subscriptions
                .get(&call_id)
                .is_some_and(|s| s.expires_at <= now);
            self.notify_subscription(&call_id, ending);
            if ending {
                self.subscriptions.remove(&call_id);
            }
        }
        if !tx.is_terminated() {
            if let Some(at) = tx.poll_timeout() {
                self.deadlines.push(Reverse((at, key.clone())));
            }
            self.transactions.insert(key, (tx, path));
        }
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
        heaps
            .into_iter()
            .chain([
                Some(self.next_second),
                self.qualifier.poll_timeout(),
                registering,
                persist,
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
            if !self.registrar.expire(unix).is_empty() {
                self.persist();
            }
            let bindings: Vec<Key> = self
                .registrar
                .lines_with_bindings()
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

/// An `application/simple-message-summary` body (RFC 3842 §5.2) for `account` at
/// `host`: counts are new, old, urgent new, urgent old.
fn message_summary(account: &str, host: std::net::IpAddr, counts: [u32; 4]) -> String {
    let [new, old, urgent_new, urgent_old] = counts;
    format!(
        "Messages-Waiting: {}\r\nMessage-Account: sip:{account}@{host}\r\nVoice-Message: {new}/{old} ({urgent_new}/{urgent_old})\r\n",
        if new > 0 { "yes" } else { "no" },
    )
}

/// 481: a BYE, CANCEL or re-INVITE for no call the edge knows.
fn no_dialog(request: &rsip::Request, tag: &str) -> rsip::Response {
    crate::registrar::response(request, 481, "Call/Transaction Does Not Exist", tag, vec![])
}

fn flush_client(tx: &mut ClientTransaction<Vec<u8>>, path: Path, out: &mut VecDeque<Datagram>) {
    while let Some(transmit) = tx.poll_transmit() {
        match transmit {
            Transmit::Message(bytes) | Transmit::Ack(bytes) => {
                out.push_back(Datagram { path, bytes })
            }
        }
    }
}

/// `sip:user@host:port;params` to `host:port` when the host is an address.
fn contact_addr(uri: &str) -> Option<SocketAddr> {
    let rest = uri.split_once(':')?.1;
    let host_port = rest.rsplit_once('@').map(|(_, h)| h).unwrap_or(rest);
    let host_port = host_port.split([';', '?', '>']).next()?;
    if let Ok(addr) = host_port.parse::<SocketAddr>() {
        return Some(addr);
    }
    let ip: std::net::IpAddr = host_port.trim_matches(['[', ']']).parse().ok()?;
    Some(SocketAddr::new(ip, 5060))
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

/// RFC 3261 §18.2.1 and RFC 3581: `received` when the source differs from sent-by or
/// `rport` was asked for; `rport` filled in with the source port.
fn stamp_via(request: &mut rsip::Request, source: SocketAddr) {
    let Some(via) = request.headers.iter_mut().find_map(|h| match h {
        rsip::Header::Via(v) => Some(v),
        _ => None,
    }) else {
        return;
    };
    let value = via.value().to_owned();
    let (first, rest) = match value.find(',') {
        Some(i) => (&value[..i], &value[i..]),
        None => (value.as_str(), ""),
    };
    let mut params: Vec<String> = first.split(';').map(str::to_owned).collect();
    let sent_by_host = params[0]
        .split_whitespace()
        .nth(1)
        .map(|h| {
            h.rsplit_once(':')
                .map(|(h, _)| h)
                .unwrap_or(h)
                .trim_matches(['[', ']'])
                .to_owned()
        })
        .unwrap_or_default();
    let mut wants_rport = false;
    for p in params.iter_mut().skip(1) {
        if p.trim().eq_ignore_ascii_case("rport") {
            *p = format!("rport={}", source.port());
            wants_rport = true;
        }
    }
    let ip = source.ip().to_string();
    if (wants_rport || sent_by_host != ip)
        && !params.iter().any(|p| p.trim().starts_with("received="))
    {
        params.push(format!("received={ip}"));
    }
    *via = rsip::headers::Via::new(format!("{}{rest}", params.join(";")));
}

#[cfg(test)]
mod trunk_tests {
    use super::*;

    fn core() -> SipCore {
        SipCore::new(
            crate::registrar::Registrar::new(Default::default(), Vec::new(), [7; 32]),
            Guard::new(Default::default(), []),
            Qualifier::new(HashMap::new()),
            Vec::new(),
            None,
            Counters::default(),
            (Instant::now(), 1_800_000_000),
            7,
        )
    }

    fn resource(name: &str, nets: &[&str], made_from: &str) -> ResourceTrunk {
        let line = asterisk_conf::sip::Registration {
            peer: None,
            transport: None,
            user: "12345678".into(),
            domain: None,
            secret: None,
            auth_user: None,
            host: "carrier.example".into(),
            port: None,
            extension: None,
            expiry: None,
            location: asterisk_conf::Location::new(std::path::PathBuf::from("t"), 1),
        };
        let target: SocketAddr = "192.0.2.10:5060".parse().unwrap();
        ResourceTrunk {
            trunk: Trunk {
                name: name.into(),
                addrs: vec![target],
                any_port: false,
                no_challenge: false,
                nets: nets.iter().map(|n| n.parse().unwrap()).collect(),
            },
            peer: PeerInfo {
                name: name.into(),
                context: "from-carrier".into(),
                trunk: Some(target),
                ..PeerInfo::default()
            },
            registration: Some(Outbound::new(
                Some(name.into()),
                OutboundRegistration::fresh(&line, name),
                target,
                made_from.into(),
            )),
        }
    }

    fn registration_id(core: &SipCore, trunk: &str) -> Option<u64> {
        core.outbound
            .iter()
            .find(|o| o.trunk.as_deref() == Some(trunk))
            .map(|o| o.id)
    }

    #[test]
    fn a_resync_keeps_the_registration_and_a_change_makes_a_new_one() {
        let mut core = core();
        core.set_resource_trunks(vec![resource("carrier", &[], "a")]);
        let first = registration_id(&core, "carrier").unwrap();
        core.set_resource_trunks(vec![resource("carrier", &[], "a")]);
        assert_eq!(registration_id(&core, "carrier"), Some(first));
        core.set_resource_trunks(vec![resource("carrier", &[], "b")]);
        let second = registration_id(&core, "carrier").unwrap();
        assert_ne!(second, first);
        assert!(matches!(
            core.trunk_registration("carrier"),
            Some((outbound::Status::Unregistered, None))
        ));
        core.set_resource_trunks(Vec::new());
        assert_eq!(registration_id(&core, "carrier"), None);
        assert!(core.trunk_registration("carrier").is_none());
    }

    /// The carrier's INVITE for the DID from `caller`, sent from `from`.
    fn did_invite(from: SocketAddr, caller: &str) -> Vec<u8> {
        let sdp = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n";
        format!(
            "INVITE sip:13235550100@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP {from};branch=z9hG4bK-{caller}\r\nMax-Forwards: 70\r\nFrom: \"Somebody\" <sip:{caller}@{from}>;tag=f1\r\nTo: <sip:13235550100@127.0.0.1>\r\nCall-ID: {caller}@carrier\r\nCSeq: 1 INVITE\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
            sdp.len()
        )
        .into_bytes()
    }

    /// The calls the endpoint asked a task for.
    fn new_calls(core: &mut SipCore) -> Vec<NewCall> {
        std::iter::from_fn(|| core.poll_event())
            .filter_map(|e| match e {
                Event::NewCall(call) => Some(call),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_peers_callerid_replaces_what_its_from_header_says() {
        let carrier: SocketAddr = "127.0.0.1:5999".parse().unwrap();
        let mut core = core();
        core.set_trunks(vec![Trunk {
            name: "flowroute".into(),
            addrs: vec![carrier],
            any_port: false,
            no_challenge: true,
            nets: Vec::new(),
        }]);
        core.set_local("127.0.0.1:5060".parse().unwrap());
        core.set_accepting_calls(true);
        let carrier_peer = |caller_id: Option<(String, String)>| PeerInfo {
            name: "flowroute".into(),
            codecs: vec!["ulaw".into()],
            caller_id,
            ..PeerInfo::default()
        };
        core.set_file_config(Vec::new(), vec![carrier_peer(None)], HashMap::new());
        let path = Path::udp(carrier);
        // Without callerid=, the From header's.
        let now = Instant::now();
        core.handle_datagram(now, path, &did_invite(carrier, "13105550199"));
        let [call] = <[NewCall; 1]>::try_from(new_calls(&mut core)).unwrap();
        assert_eq!(
            (call.caller_number.as_str(), call.caller_name.as_str()),
            ("13105550199", "Somebody")
        );
        // With it (sip.conf's callerid=, a Line's callerId), the peer's.
        let caller_id = asterisk_conf::CallerId::parse("\"Front Desk\" <13235550100>");
        core.set_file_config(
            Vec::new(),
            vec![carrier_peer(Some((caller_id.number, caller_id.name)))],
            HashMap::new(),
        );
        core.handle_datagram(now, path, &did_invite(carrier, "13105550198"));
        let [call] = <[NewCall; 1]>::try_from(new_calls(&mut core)).unwrap();
        assert_eq!(
            (call.caller_number.as_str(), call.caller_name.as_str()),
            ("13235550100", "Front Desk")
        );
    }

    #[test]
    fn file_trunks_stay_when_resource_trunks_change() {
        let mut core = core();
        core.set_trunks(vec![Trunk {
            name: "flowroute".into(),
            addrs: vec!["192.0.2.1:5060".parse().unwrap()],
            any_port: true,
            no_challenge: true,
            nets: Vec::new(),
        }]);
        core.set_resource_trunks(vec![resource("carrier", &["198.51.100.0/24"], "a")]);
        core.set_resource_trunks(vec![resource("carrier", &["198.51.100.0/24"], "a")]);
        fn name(core: &SipCore, source: &str) -> Option<(String, bool)> {
            core.trunk_for(source.parse().unwrap())
                .map(|(t, trusted)| (t.name.clone(), trusted))
        }
        assert_eq!(
            name(&core, "192.0.2.1:7000"),
            Some(("flowroute".into(), true))
        );
        // By its ipAddresses: from any port, and trusted.
        assert_eq!(
            name(&core, "198.51.100.77:40000"),
            Some(("carrier".into(), true))
        );
        // By its host's address: that port only, and challenged (no insecure=invite).
        assert_eq!(
            name(&core, "192.0.2.10:5060"),
            Some(("carrier".into(), false))
        );
        assert_eq!(name(&core, "192.0.2.10:5061"), None);
        assert_eq!(name(&core, "203.0.113.1:5060"), None);
        assert_eq!(core.peer_context("carrier"), "from-carrier");
        core.set_resource_trunks(Vec::new());
        assert_eq!(name(&core, "198.51.100.77:40000"), None);
        assert_eq!(
            name(&core, "192.0.2.1:7000"),
            Some(("flowroute".into(), true))
        );
        assert_eq!(core.peer_context("carrier"), "default");
    }
}
