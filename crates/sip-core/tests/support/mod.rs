//! A simulated network and clock around the edge's endpoint: a carrier and a desk
//! phone that are plain message builders, a clock that jumps from one deadline of the
//! endpoint to the next, and the part of a call's task the SIP side needs (a relay's
//! addresses, then `Dial(SIP/desk,20)`, then a hang-up when the Dial or the caller
//! ends). A scenario that lasts minutes of SIP time runs in microseconds.

#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use sip_core::endpoint::{
    CallEvent, CallRecord, Counters, Event, Held, Path, PeerInfo, SipCore, Target, Trunk,
};
use sip_core::guard::{GuardConfig, SharedGuard};
use sip_core::qualify::Qualifier;
use sip_core::registrar::{Binding, Line, Registrar, RegistrarConfig};

pub const CARRIER: SocketAddr =
    SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1)), 5060);
pub const PHONE: SocketAddr =
    SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 10)), 5060);
pub const EDGE: SocketAddr =
    SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 100)), 5060);
pub const DID: &str = "13235550100";
const UNIX: u64 = 1_800_000_000;

/// A SIP message as the simulated peers read it: its text, looked at line by line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Msg(pub String);

impl Msg {
    pub fn start(&self) -> &str {
        self.0.lines().next().unwrap_or("")
    }

    pub fn is_request(&self) -> bool {
        !self.start().starts_with("SIP/2.0")
    }

    pub fn method(&self) -> Option<&str> {
        self.is_request()
            .then(|| self.start().split(' ').next().unwrap_or(""))
    }

    pub fn status(&self) -> Option<u16> {
        if self.is_request() {
            return None;
        }
        self.start().split(' ').nth(1)?.parse().ok()
    }

    fn head(&self) -> &str {
        self.0.split("\r\n\r\n").next().unwrap_or("")
    }

    pub fn body(&self) -> &str {
        self.0.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("")
    }

    /// Every value of a header, in order.
    pub fn headers(&self, name: &str) -> Vec<&str> {
        self.head()
            .split("\r\n")
            .skip(1)
            .filter_map(|line| {
                let (n, v) = line.split_once(':')?;
                n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
            })
            .collect()
    }

    pub fn header(&self, name: &str) -> &str {
        self.headers(name).first().copied().unwrap_or("")
    }

    /// The method in CSeq.
    pub fn cseq_method(&self) -> &str {
        self.header("CSeq").split_whitespace().nth(1).unwrap_or("")
    }

    pub fn call_id(&self) -> &str {
        self.header("Call-ID")
    }

    /// `<uri>` of a Contact, or the bare URI.
    pub fn contact_uri(&self) -> String {
        let contact = self.header("Contact");
        match (contact.find('<'), contact.find('>')) {
            (Some(a), Some(b)) if a < b => contact[a + 1..b].to_owned(),
            _ => contact.split(';').next().unwrap_or("").to_owned(),
        }
    }
}

/// The response of a simulated peer to `request`: its Vias, From, Call-ID and CSeq,
/// its To with `to_tag` added when it has none.
pub fn respond(request: &Msg, status: u16, to_tag: &str, sdp: Option<&str>) -> String {
    let mut out = format!("SIP/2.0 {status} {}\r\n", reason(status));
    for via in request.headers("Via") {
        out.push_str(&format!("Via: {via}\r\n"));
    }
    let to = request.header("To");
    let to = if to.contains(";tag=") || status == 100 {
        to.to_owned()
    } else {
        format!("{to};tag={to_tag}")
    };
    out.push_str(&format!(
        "From: {}\r\nTo: {to}\r\nCall-ID: {}\r\nCSeq: {}\r\n",
        request.header("From"),
        request.call_id(),
        request.header("CSeq")
    ));
    if (200..300).contains(&status) && request.method() == Some("INVITE") {
        out.push_str(&format!(
            "Contact: <sip:peer@{}>\r\n",
            request_target(request)
        ));
    }
    finish(out, sdp)
}

fn request_target(request: &Msg) -> String {
    let uri = request.start().split(' ').nth(1).unwrap_or("");
    uri.rsplit('@').next().unwrap_or(uri).to_owned()
}

fn reason(status: u16) -> &'static str {
    match status {
        100 => "Trying",
        180 => "Ringing",
        183 => "Session Progress",
        200 => "OK",
        486 => "Busy Here",
        487 => "Request Terminated",
        _ => "Whatever",
    }
}

fn finish(mut head: String, sdp: Option<&str>) -> String {
    match sdp {
        Some(sdp) => head.push_str(&format!(
            "Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
            sdp.len()
        )),
        None => head.push_str("Content-Length: 0\r\n\r\n"),
    }
    head
}

pub fn sdp(ip: IpAddr, port: u16, direction: &str) -> String {
    format!(
        "v=0\r\no=- 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\nm=audio {port} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na={direction}\r\n"
    )
}

/// The carrier's side of one call: what it sent, and the edge's tag once answered.
#[derive(Debug, Clone)]
pub struct CarrierCall {
    pub call_id: String,
    pub branch: String,
    pub from: String,
    pub to: String,
    pub cseq: u32,
    /// The To of the edge's answer (with its tag), and its Contact.
    pub remote_to: Option<String>,
    pub remote_target: Option<String>,
}

impl CarrierCall {
    pub fn new(n: u32) -> Self {
        Self {
            call_id: format!("carrier-{n}@{}", CARRIER.ip()),
            branch: format!("z9hG4bKc{n}"),
            from: format!(
                "\"Caller {n}\" <sip:1310555{n:04}@{}>;tag=cf{n}",
                CARRIER.ip()
            ),
            to: format!("<sip:{DID}@{}>", EDGE.ip()),
            cseq: 1,
            remote_to: None,
            remote_target: None,
        }
    }

    pub fn invite(&self) -> String {
        let head = format!(
            "INVITE sip:{DID}@{} SIP/2.0\r\nVia: SIP/2.0/UDP {CARRIER};branch={}\r\nMax-Forwards: 70\r\nFrom: {}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: 1 INVITE\r\nContact: <sip:carrier@{CARRIER}>\r\n",
            EDGE.ip(),
            self.branch,
            self.from,
            self.to,
            self.call_id
        );
        finish(head, Some(&sdp(CARRIER.ip(), 40_000, "sendrecv")))
    }

    pub fn cancel(&self) -> String {
        finish(
            format!(
                "CANCEL sip:{DID}@{} SIP/2.0\r\nVia: SIP/2.0/UDP {CARRIER};branch={}\r\nMax-Forwards: 70\r\nFrom: {}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: 1 CANCEL\r\n",
                EDGE.ip(),
                self.branch,
                self.from,
                self.to,
                self.call_id
            ),
            None,
        )
    }

    /// Takes the edge's final answer: a 2xx makes the dialog.
    pub fn answered(&mut self, response: &Msg) {
        if response.status().is_some_and(|s| (200..300).contains(&s)) {
            self.remote_to = Some(response.header("To").to_owned());
            self.remote_target = Some(response.contact_uri());
        }
    }

    /// The ACK: for a 2xx its own transaction to the Contact, for a failure the
    /// INVITE's branch (RFC 3261 §17.1.1.3).
    pub fn ack(&self, response: &Msg) -> String {
        let two_xx = response.status().is_some_and(|s| (200..300).contains(&s));
        let (uri, branch) = if two_xx {
            (
                self.remote_target.clone().unwrap_or_default(),
                format!("{}-ack", self.branch),
            )
        } else {
            (format!("sip:{DID}@{}", EDGE.ip()), self.branch.clone())
        };
        finish(
            format!(
                "ACK {uri} SIP/2.0\r\nVia: SIP/2.0/UDP {CARRIER};branch={branch}\r\nMax-Forwards: 70\r\nFrom: {}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: 1 ACK\r\n",
                self.from,
                response.header("To"),
                self.call_id
            ),
            None,
        )
    }

    /// A request in the dialog (BYE, or a re-INVITE with `sdp`).
    pub fn in_dialog(&mut self, method: &str, sdp: Option<&str>) -> String {
        self.cseq += 1;
        finish(
            format!(
                "{method} {} SIP/2.0\r\nVia: SIP/2.0/UDP {CARRIER};branch={}-{}\r\nMax-Forwards: 70\r\nFrom: {}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: {} {method}\r\nContact: <sip:carrier@{CARRIER}>\r\n",
                self.remote_target.clone().unwrap_or_default(),
                self.branch,
                self.cseq,
                self.from,
                self.remote_to.clone().unwrap_or_default(),
                self.call_id,
                self.cseq
            ),
            sdp,
        )
    }
}

/// The phone's BYE in the dialog the edge's INVITE `invite` made, answered by its
/// 200 with `tag`.
pub fn phone_bye(invite: &Msg, tag: &str) -> String {
    let target = invite
        .header("Contact")
        .trim_matches(|c| c == '<' || c == '>')
        .to_owned();
    let target = target.split('>').next().unwrap_or("").to_owned();
    finish(
        format!(
            "BYE {target} SIP/2.0\r\nVia: SIP/2.0/UDP {PHONE};branch=z9hG4bKpb{tag}\r\nMax-Forwards: 70\r\nFrom: {};tag={tag}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: 1 BYE\r\n",
            invite.header("To"),
            invite.header("From"),
            invite.call_id()
        ),
        None,
    )
}

/// What the simulated call tasks saw.
#[derive(Debug, Default)]
pub struct Tasks {
    /// Calls started, in order.
    pub started: Vec<u64>,
    pub events: HashMap<u64, Vec<CallEvent>>,
    /// Calls the SIP side is done with.
    pub gone: Vec<u64>,
    /// The records of bridged calls, by the caller's Call-ID, as the driver keeps them.
    pub records: HashMap<String, CallRecord>,
}

/// The endpoints (one per shard, as the edge runs them), their clock and the two
/// peers' inboxes.
pub struct Sim {
    pub edges: Vec<SipCore>,
    pub start: Instant,
    pub now: Instant,
    pub to_carrier: VecDeque<Msg>,
    pub to_phone: VecDeque<Msg>,
    pub tasks: Tasks,
    /// The Dial's timeout (the seed's `Dial(SIP/desk,20)`).
    pub dial_timeout: Duration,
}

impl Default for Sim {
    fn default() -> Self {
        Self::new()
    }
}

impl Sim {
    /// An edge with the carrier as a trunk (its INVITEs unchallenged) and the desk
    /// phone registered at [`PHONE`].
    pub fn new() -> Self {
        Self::sharded(1)
    }

    /// The same edge as `shards` endpoints, messages routed between them as the
    /// driver routes them (`sip_wire::shard`).
    pub fn sharded(shards: usize) -> Self {
        Self::sharded_from(shards, Instant::now())
    }

    /// The same, its clock and Unix time starting at `start`.
    fn sharded_from(shards: usize, start: Instant) -> Self {
        let desk = Line {
            name: "desk".into(),
            secret: Some("s3cret".into()),
            nat: false,
        };
        let binding = Binding {
            contact: format!("sip:desk@{PHONE}"),
            expires_at: UNIX + 7200,
            source: PHONE,
            transport: "udp".into(),
            call_id: "reg@desk".into(),
            cseq: 1,
            user_agent: None,
            nat: false,
            registered_at: UNIX,
        };
        let guard = std::sync::Arc::new(SharedGuard::new(
            GuardConfig::default(),
            &[CARRIER.ip(), PHONE.ip()],
            shards,
        ));
        let desk_shard = sip_wire::shard::shard_of_line("desk", shards);
        let edges = (0..shards)
            .map(|index| {
                let registrar =
                    Registrar::new(RegistrarConfig::default(), vec![desk.clone()], [9; 32]);
                let saved = if index == desk_shard {
                    HashMap::from([("desk".to_owned(), vec![binding.clone()])])
                } else {
                    HashMap::new()
                };
                let mut edge = SipCore::new(
                    registrar,
                    guard.clone(),
                    Qualifier::new(HashMap::new()),
                    vec!["911".into()],
                    Some(saved),
                    Counters::default(),
                    (start, UNIX),
                    42 + index as u64,
                );
                let peer = |name: &str, trunk: Option<SocketAddr>| PeerInfo {
                    name: name.into(),
                    codecs: vec!["ulaw".into()],
                    context: "inbound".into(),
                    trunk,
                    ..PeerInfo::default()
                };
                edge.set_file_config(
                    vec![desk.clone()],
                    vec![peer("desk", None), peer("carrier", Some(CARRIER))],
                    HashMap::new(),
                );
                edge.set_trunks(vec![Trunk {
                    name: "carrier".into(),
                    addrs: vec![CARRIER],
                    any_port: false,
                    no_challenge: true,
                    nets: Vec::new(),
                }]);
                edge.set_local(EDGE);
                edge.set_shard(index, shards);
                edge.set_accepting_calls(true);
                edge.set_keep_calls(true);
                edge
            })
            .collect();
        Self {
            edges,
            start,
            now: start,
            to_carrier: VecDeque::new(),
            to_phone: VecDeque::new(),
            tasks: Tasks::default(),
            dial_timeout: Duration::from_secs(20),
        }
    }

    /// The edge started again after a crash: new endpoints (as many), the bindings as
    /// persisted, and the calls restored from their records, each on the shard its
    /// caller's requests go to. Returns the restored calls' ids.
    pub fn restarted(&self) -> (Sim, Vec<u64>) {
        let mut sim = Sim::sharded_from(self.edges.len(), self.start);
        sim.now = self.now;
        for edge in &mut sim.edges {
            edge.advance(self.now);
        }
        let mut ids = Vec::new();
        for record in self.tasks.records.values() {
            let shard = sip_wire::shard::shard_of_call_id(&record.a_call_id, sim.edges.len());
            let call = sim.edges[shard]
                .restore_call(record.clone())
                .expect("the record restores");
            ids.push(call.id);
        }
        sim.tasks.records = self.tasks.records.clone();
        (sim, ids)
    }

    /// The first (or only) endpoint.
    pub fn edge(&mut self) -> &mut SipCore {
        &mut self.edges[0]
    }

    /// What every endpoint holds, added up.
    pub fn held(&self) -> Held {
        self.edges
            .iter()
            .map(SipCore::held)
            .fold(Held::default(), |a, b| Held {
                server_transactions: a.server_transactions + b.server_transactions,
                client_transactions: a.client_transactions + b.client_transactions,
                calls: a.calls + b.calls,
                call_ids: a.call_ids + b.call_ids,
                branches: a.branches + b.branches,
                branch_answers: a.branch_answers + b.branch_answers,
                queued: a.queued + b.queued,
            })
    }

    pub fn held_keys(&self) -> Vec<String> {
        self.edges.iter().flat_map(SipCore::held_keys).collect()
    }

    /// SIP time since the start.
    pub fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    fn deliver(&mut self, from: SocketAddr, text: &str) {
        let shard = sip_wire::shard::shard_of(text.as_bytes(), self.edges.len());
        self.edges[shard].handle_datagram(self.now, Path::udp(from), text.as_bytes());
        self.pump();
    }

    pub fn carrier_sends(&mut self, text: &str) {
        self.deliver(CARRIER, text);
    }

    pub fn phone_sends(&mut self, text: &str) {
        self.deliver(PHONE, text);
    }

    /// Carries out what the endpoints asked for: datagrams into the peers' inboxes
    /// (each must be one well-formed message), events to the call tasks.
    pub fn pump(&mut self) {
        loop {
            let mut busy = false;
            for shard in 0..self.edges.len() {
                while let Some(datagram) = self.edges[shard].poll_transmit() {
                    busy = true;
                    let text = String::from_utf8(datagram.bytes).expect("the edge sends text");
                    assert!(
                        matches!(
                            sip_core::wire::parse(text.as_bytes(), true, "t"),
                            Ok(sip_core::wire::Parsed::Sip(_))
                        ),
                        "the edge sent a message its own parser refuses:\n{text}"
                    );
                    let msg = Msg(text);
                    match datagram.path.peer {
                        p if p == CARRIER => self.to_carrier.push_back(msg),
                        p if p == PHONE => self.to_phone.push_back(msg),
                        other => panic!("a message to {other}: {}", msg.start()),
                    }
                }
                while let Some(event) = self.edges[shard].poll_event() {
                    busy = true;
                    self.task(shard, event);
                }
            }
            if !busy {
                return;
            }
        }
    }

    /// The call tasks' part: media from a relay, the Dial, and a hang-up when the
    /// Dial or the caller ends (the dialplan has nothing after the Dial). A call's
    /// commands go to its shard, the desk's contacts come from the desk's.
    fn task(&mut self, shard: usize, event: Event) {
        let shards = self.edges.len();
        match event {
            Event::NewCall(call) => {
                assert_eq!(
                    call.id % shards as u64,
                    shard as u64,
                    "a call's id names its shard"
                );
                self.tasks.started.push(call.id);
                let relay = IpAddr::from([10, 0, 0, 5]);
                let contacts =
                    self.edges[sip_wire::shard::shard_of_line("desk", shards)].contacts("desk");
                let edge = &mut self.edges[shard];
                edge.call_set_media(call.id, (relay, 30_000), (relay, 30_002));
                let desk = Target {
                    peer: "desk".into(),
                    number: String::new(),
                    contacts,
                };
                let caller = (call.caller_number, call.caller_name);
                edge.call_dial(call.id, 1, &[desk], Some(self.dial_timeout), caller)
                    .expect("the Dial starts");
            }
            Event::Call { id, event } => {
                self.tasks.events.entry(id).or_default().push(event.clone());
                match event {
                    CallEvent::CallerGone { .. }
                    | CallEvent::DialFinished { .. }
                    | CallEvent::BridgeEnded { .. } => {
                        self.edges[shard].call_hangup(id, 16);
                    }
                    _ => {}
                }
            }
            Event::CallGone(id) => self.tasks.gone.push(id),
            Event::CallState { key, record } => match record {
                Some(record) => {
                    self.tasks.records.insert(key, *record);
                }
                None => {
                    self.tasks.records.remove(&key);
                }
            },
            Event::Persist(_) => {}
        }
    }

    /// The earliest deadline of any endpoint.
    fn poll_timeout(&self) -> Option<Instant> {
        self.edges.iter().filter_map(SipCore::poll_timeout).min()
    }

    /// Runs every endpoint's timers due now.
    fn run_timers(&mut self) {
        let now = self.now;
        for edge in &mut self.edges {
            if edge.poll_timeout().is_some_and(|at| at <= now) {
                edge.handle_timeout(now);
            }
        }
        self.pump();
    }

    /// Runs the endpoints' timers up to `by` from now, deadline by deadline.
    pub fn advance(&mut self, by: Duration) {
        let until = self.now + by;
        while let Some(at) = self.poll_timeout().filter(|at| *at <= until) {
            self.now = self.now.max(at);
            self.run_timers();
        }
        self.now = until;
    }

    /// Jumps to the next deadline and runs it.
    pub fn next_timeout(&mut self) {
        if let Some(at) = self.poll_timeout() {
            self.now = self.now.max(at);
            self.run_timers();
        }
    }

    /// The next message the carrier got; panics if there is none.
    pub fn carrier_gets(&mut self) -> Msg {
        self.to_carrier
            .pop_front()
            .expect("a message for the carrier")
    }

    pub fn phone_gets(&mut self) -> Msg {
        self.to_phone.pop_front().expect("a message for the phone")
    }

    /// The carrier's messages up to the first with `status`, which is returned.
    pub fn carrier_gets_status(&mut self, status: u16) -> Msg {
        while let Some(msg) = self.to_carrier.pop_front() {
            if msg.status() == Some(status) {
                return msg;
            }
        }
        panic!("no {status} for the carrier")
    }

    pub fn phone_gets_request(&mut self, method: &str) -> Msg {
        while let Some(msg) = self.to_phone.pop_front() {
            if msg.method() == Some(method) {
                return msg;
            }
        }
        panic!("no {method} for the phone")
    }

    /// Both peers answer whatever they are sent as a well-behaved but passive peer
    /// would (200 to BYE, CANCEL, NOTIFY and OPTIONS; 486 to a new INVITE; nothing
    /// else), while the endpoint's timers run for `for_` of SIP time.
    pub fn settle(&mut self, for_: Duration) {
        self.settle_with(for_, false);
    }

    /// As [`Self::settle`], but the carrier ends every call it is answered: it ACKs
    /// each 2xx to an INVITE and sends a BYE in its dialog (as the relay's media
    /// timeout would end a call whose ends both went silent).
    pub fn close_and_settle(&mut self, for_: Duration) {
        self.settle_with(for_, true);
    }

    fn settle_with(&mut self, for_: Duration, closing: bool) {
        let until = self.now + for_;
        loop {
            let mut busy = false;
            while let Some(msg) = self.to_phone.pop_front() {
                busy = true;
                if std::env::var("SIM_DEBUG").is_ok() {
                    eprintln!("PHONE GETS {}", msg.start());
                }
                if let Some(answer) = passive_answer(&msg, "ps") {
                    self.phone_sends(&answer);
                }
            }
            while let Some(msg) = self.to_carrier.pop_front() {
                busy = true;
                if std::env::var("SIM_DEBUG").is_ok() {
                    eprintln!("CARRIER GETS {}\n{}", msg.start(), msg.0);
                }
                if let Some(answer) = passive_answer(&msg, "cs") {
                    self.carrier_sends(&answer);
                }
                let answered = msg.status().is_some_and(|s| (200..300).contains(&s));
                if closing && answered && msg.cseq_method() == "INVITE" {
                    let (ack, bye) = ack_and_bye(&msg);
                    self.carrier_sends(&ack);
                    self.carrier_sends(&bye);
                }
            }
            if busy {
                continue;
            }
            match self.poll_timeout() {
                Some(at) if at <= until => {
                    self.now = self.now.max(at);
                    self.run_timers();
                }
                _ => break,
            }
        }
        self.now = until;
    }
}

fn passive_answer(msg: &Msg, tag: &str) -> Option<String> {
    match msg.method()? {
        "BYE" | "CANCEL" | "NOTIFY" | "OPTIONS" => Some(respond(msg, 200, tag, None)),
        "INVITE" if !msg.header("To").contains(";tag=") => Some(respond(msg, 486, tag, None)),
        _ => None,
    }
}

/// The carrier's ACK of a 2xx to its INVITE, and a BYE in the dialog it made.
fn ack_and_bye(ok: &Msg) -> (String, String) {
    let seq: u32 = ok
        .header("CSeq")
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1);
    let request = |method: &str, seq: u32, branch: &str| {
        finish(
            format!(
                "{method} {} SIP/2.0\r\nVia: SIP/2.0/UDP {CARRIER};branch=z9hG4bK{branch}\r\nMax-Forwards: 70\r\nFrom: {}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: {seq} {method}\r\n",
                ok.contact_uri(),
                ok.header("From"),
                ok.header("To"),
                ok.call_id()
            ),
            None,
        )
    };
    let id: String = ok
        .call_id()
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .collect();
    (
        request("ACK", seq, &format!("closing-ack-{id}")),
        request("BYE", seq + 1, &format!("closing-bye-{id}")),
    )
}
