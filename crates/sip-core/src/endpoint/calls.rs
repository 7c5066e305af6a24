//! The B2BUA's SIP side: every call is an A leg (the caller; the edge is its UAS) and,
//! while `Dial()` runs, B legs (the edge is their UAC), one per contact or trunk
//! target. This module keeps the dialogs and drives the INVITE, CANCEL, ACK and BYE
//! transactions; the call's async task (`sip_edge::b2bua`) holds the router's
//! call-control stream and the media relay session, and calls in here for each step.
//! Things that happen on the SIP side (the caller hangs up, a target answers, the
//! bridge ends) go back to the task as [`CallEvent`]s.
//!
//! Deliberate simplifications, for now: a re-INVITE (hold, resume) is answered by the
//! edge itself with the relay's address and the mirrored direction, as Asterisk with
//! `canreinvite=no` does, and not passed to the other leg. Record-Route is honoured
//! (RFC 3261 §12.1): the caller's Record-Route is echoed in the edge's responses, and
//! each leg's route set goes as Route headers on the edge's requests in the dialog
//! (ACK, BYE), which are sent to the leg's first hop, so a carrier's proxy that
//! record-routes sees them.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use super::{Event, Path, SipCore};
use crate::fork::{DialStatus, Fork, ForkAction};
use crate::sdp;
use crate::transaction::{
    ClientEvent, ClientTransaction, ServerTransaction, TimerValues, Transmit,
};
use rsip::prelude::*;

/// RFC 3261 T1 and T2, for the 2xx the edge retransmits itself (§13.3.1.4).
const T1: Duration = Duration::from_millis(500);
const T2: Duration = Duration::from_secs(4);

/// What the SIP side tells a call's task.
#[derive(Debug, Clone, PartialEq)]
pub enum CallEvent {
    /// The caller hung up (BYE, CANCEL) or its leg failed; Q.850 cause, and the final
    /// status the caller's INVITE got (200 when it had been answered, 487 on CANCEL).
    CallerGone { cause: u32, status: Option<u16> },
    /// A B leg answered and is bridged to the caller; `remote` is its media from SDP.
    Bridged {
        command_id: u64,
        channel: String,
        remote: Option<SocketAddr>,
        event_payload_types: Vec<u32>,
        /// The callee's `nat=yes`: latch its media symmetrically.
        nat: bool,
    },
    /// A B leg sent early media (183 with SDP).
    EarlyMedia {
        remote: Option<SocketAddr>,
        nat: bool,
    },
    /// The Dial is over without a bridge.
    DialFinished {
        command_id: u64,
        status: DialStatus,
        sip_status: u16,
    },
    /// The bridged callee hung up after `secs` of talk.
    BridgeEnded {
        command_id: u64,
        channel: String,
        secs: u32,
    },
    /// The relay saw no media for its timeout: end the call.
    MediaTimeout,
    /// A leg's new SDP direction (hold/resume re-INVITE) and media address.
    Reinvite {
        b_leg: bool,
        remote: Option<SocketAddr>,
        direction: sdp::Direction,
    },
}

/// A new call for the task spawner: everything the router's `NewChannel` needs.
#[derive(Debug)]
pub struct NewCall {
    pub id: u64,
    pub channel: String,
    pub peer: String,
    pub exten: String,
    pub caller_number: String,
    pub caller_name: String,
    pub call_id: String,
    /// Where the caller wants media, from its offer.
    pub caller_media: Option<SocketAddr>,
    pub caller_nat: bool,
    pub codecs: Vec<String>,
    pub event_payload_types: Vec<u32>,
}

/// An INVITE that does not become a call: its transaction back, and the answer.
pub(super) type Refused = Box<(ServerTransaction<Vec<u8>>, rsip::Response)>;

/// What a peer needs for calls: its codecs, NAT, credentials and caller ID.
#[derive(Debug, Clone, Default)]
pub struct PeerInfo {
    pub name: String,
    pub codecs: Vec<String>,
    pub nat: bool,
    pub context: String,
    /// A trunk's address (a peer with `host`), for calls to it.
    pub trunk: Option<SocketAddr>,
    /// The host name to put in Request-URIs to a trunk.
    pub host: Option<String>,
    pub username: Option<String>,
    pub secret: Option<String>,
    pub from_user: Option<String>,
    pub from_domain: Option<String>,
    /// `callerid=`: the caller ID of the peer's calls, (number, name), in place of what
    /// its From header says.
    pub caller_id: Option<(String, String)>,
    /// Where the peer (a line) is, as a PIDF-LO document: sent with its emergency calls
    /// to a trunk (RFC 6442).
    pub location: Option<String>,
}

/// A Dial target, resolved by the task from the router's command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub peer: String,
    /// `SIP/<number>@<peer>`; empty for `SIP/<peer>`.
    pub number: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AState {
    /// The INVITE is pending (100, 180, 183 sent).
    Early,
    /// 200 sent, waiting for the ACK.
    Answered,
    Confirmed,
    Ended,
}

/// One outgoing INVITE of a Dial.
#[derive(Debug)]
struct Branch {
    channel: String,
    peer: String,
    request_uri: String,
    call_id: String,
    from: String,
    to: String,
    cseq: u32,
    via_branch: String,
    via: String,
    contact: String,
    /// Headers only some INVITEs carry (P-Asserted-Identity, credentials).
    extra: String,
    sdp: String,
    /// The caller's location (PIDF-LO), conveyed by value with an emergency call.
    location: Option<String>,
    path: Path,
    /// The To with the callee's tag, once it answered.
    remote_to: Option<String>,
    remote_target: Option<String>,
    /// The callee's route set: its answer's Record-Route, reversed.
    route: Vec<String>,
    /// The ACK for the 2xx, kept to answer its retransmissions.
    ack: Option<Vec<u8>>,
    /// A CANCEL waiting for a provisional response (RFC 3261 §9.1).
    cancel_pending: bool,
    /// A provisional response came: a CANCEL may be sent.
    provisional: bool,
    authenticated: bool,
    last_status: u16,
}

/// The caller's 200, sent again until its ACK comes (RFC 3261 §13.3.1.4): every
/// `interval` (T1 doubling up to T2) until `give_up` (64*T1).
#[derive(Debug)]
struct OkRetransmit {
    bytes: Vec<u8>,
    next: Instant,
    interval: Duration,
    give_up: Instant,
}

/// One call.
#[derive(Debug)]
pub struct Call {
    channel: String,
    peer: String,
    /// The caller's INVITE and its server transaction key.
    a_invite: rsip::Request,
    a_key: String,
    a_path: Path,
    a_tag: String,
    a_call_id: String,
    a_state: AState,
    /// The final status the caller's INVITE got, once it has one.
    a_final: Option<u16>,
    a_remote_target: String,
    /// The caller's route set: its INVITE's Record-Route, in order.
    a_route: Vec<String>,
    a_cseq: u32,
    a_offer: Option<sdp::Session>,
    /// The 200 the edge retransmits until the ACK (§13.3.1.4).
    a_ok: Option<OkRetransmit>,
    /// The relay's address for each leg: what SDP to each side names.
    relay_a: Option<(IpAddr, u16)>,
    relay_b: Option<(IpAddr, u16)>,
    fork: Option<Fork>,
    dial_command: u64,
    branches: Vec<Branch>,
    bridged: Option<(usize, Instant)>,
}

/// `<sip:x@y>;params` or `sip:x@y` to the URI.
fn uri_of(value: &str) -> String {
    match (value.find('<'), value.find('>')) {
        (Some(start), Some(end)) if start < end => value[start + 1..end].to_owned(),
        _ => value.split(';').next().unwrap_or(value).trim().to_owned(),
    }
}

fn tag_of(value: &str) -> Option<String> {
    value
        .split(';')
        .find_map(|p| p.trim().strip_prefix("tag="))
        .map(|t| t.trim().to_owned())
}

fn sdp_remote(session: &sdp::Session) -> Option<SocketAddr> {
    session
        .audio_endpoint()
        .map(|(ip, port)| SocketAddr::new(ip, port))
}

/// The RFC 4733 payload types of the first audio stream.
pub fn event_types(session: &sdp::Session) -> Vec<u32> {
    session
        .media
        .iter()
        .find(|m| m.kind == "audio")
        .map(|m| {
            m.formats
                .iter()
                .filter(|pt| m.codec(**pt).as_deref() == Some("telephone-event"))
                .map(|pt| u32::from(*pt))
                .collect()
        })
        .unwrap_or_default()
}

fn with_body(mut response: rsip::Response, body: &str) -> rsip::Response {
    response
        .headers
        .retain(|h| !matches!(h, rsip::Header::ContentLength(_)));
    response
        .headers
        .push(rsip::Header::ContentType(rsip::headers::ContentType::new(
            "application/sdp",
        )));
    response.headers.push(rsip::Header::ContentLength(
        rsip::headers::ContentLength::new(body.len().to_string()),
    ));
    response.body = body.as_bytes().to_vec();
    response
}

impl SipCore {
    /// The peers calls may use (set at start from sip.conf).
    pub fn set_peers(&mut self, peers: Vec<PeerInfo>) {
        self.peers = peers.into_iter().map(|p| (p.name.clone(), p)).collect();
    }

    /// What sip.conf defines (its lines, peers and MWI lines), kept apart from the lines
    /// that come from resources so that those can change without touching it.
    pub fn set_file_config(
        &mut self,
        lines: Vec<crate::registrar::Line>,
        peers: Vec<PeerInfo>,
        mwi: std::collections::HashMap<String, Vec<String>>,
    ) {
        self.file = super::FileConfig { lines, peers, mwi };
        self.apply_lines(Vec::new());
    }

    /// The lines defined by resources (Kubernetes `Line`s), replacing the previous set.
    /// A line that is gone loses its registrations, whose names are returned.
    pub fn set_resource_lines(&mut self, resources: Vec<super::ResourceLine>) -> Vec<String> {
        let gone = self.apply_lines(resources);
        self.lines_pending = false;
        // The first set: the registrations persisted before a restart come back.
        if let Some(saved) = self.saved_bindings.take() {
            if !saved.is_empty() {
                self.registrar.restore(saved, self.unix());
                self.persist();
                self.update_gauge();
            }
        }
        gone
    }

    /// Resource lines are coming: until the first set, a REGISTER for a line nobody
    /// knows gets 503 with Retry-After, not 403.
    pub fn expect_resource_lines(&mut self) {
        self.lines_pending = true;
    }

    /// The peers calls may use: sip.conf's, then the resource lines' and trunks'.
    pub(super) fn rebuild_peers(&mut self) {
        let peers = self
            .file
            .peers
            .iter()
            .chain(&self.line_peers)
            .chain(&self.trunk_peers)
            .cloned()
            .collect();
        self.set_peers(peers);
    }

    fn apply_lines(&mut self, resources: Vec<super::ResourceLine>) -> Vec<String> {
        let mut lines = self.file.lines.clone();
        let mut peers = Vec::new();
        let mut mwi = self.file.mwi.clone();
        for resource in resources {
            for mailbox in &resource.mailboxes {
                mwi.entry(super::mailbox_key(mailbox))
                    .or_default()
                    .push(resource.line.name.clone());
            }
            lines.push(resource.line);
            peers.push(resource.peer);
        }
        let gone = self.registrar.set_lines(lines);
        self.line_peers = peers;
        self.rebuild_peers();
        self.mwi_lines = mwi;
        if !gone.is_empty() {
            tracing::info!(lines = ?gone, "lines removed; their registrations end");
            self.persist();
            self.update_gauge();
        }
        gone
    }

    /// Where new calls go to get a task; without one, INVITEs get 503.
    /// Whether new calls are taken: the driver gives each an async task (see
    /// [`Event::NewCall`]). Without, INVITEs get 503.
    pub fn set_accepting_calls(&mut self, accepting: bool) {
        self.accepting_calls = accepting;
    }

    /// The `context=` new calls from `peer` start in.
    pub fn peer_context(&self, peer: &str) -> String {
        self.peers
            .get(peer)
            .map(|p| p.context.clone())
            .unwrap_or_else(|| "default".into())
    }

    /// Calls in progress (tests, metrics).
    pub fn active_calls(&self) -> usize {
        self.calls.len()
    }

    fn contact(&self, user: &str, path: &Path) -> String {
        let local = self
            .local_addr()
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 5060)));
        let transport = if path.reliable() {
            ";transport=tcp"
        } else {
            ""
        };
        format!("<sip:{user}@{local}{transport}>")
    }

    /// An authenticated INVITE that starts a call: kept pending (100 Trying sent) and
    /// handed to a new task; `false` if there is no task spawner (the caller gets 503).
    pub(super) fn start_call(
        &mut self,
        request: rsip::Request,
        mut tx: ServerTransaction<Vec<u8>>,
        key: String,
        path: Path,
        peer: String,
        tag: String,
    ) -> Result<(), Refused> {
        let offer = std::str::from_utf8(&request.body)
            .ok()
            .filter(|b| !b.trim().is_empty())
            .map(sdp::Session::parse);
        let offer = match offer {
            Some(Ok(offer)) => Some(offer),
            Some(Err(e)) => {
                tracing::info!(error = %e, "INVITE with unreadable SDP");
                let response =
                    crate::registrar::response(&request, 488, "Not Acceptable Here", &tag, vec![]);
                return Err(Box::new((tx, response)));
            }
            // No offer: the edge offers in its 200 (RFC 3264 late offer): not yet.
            None => {
                let response = crate::registrar::response(
                    &request,
                    488,
                    "Not Acceptable Here (an INVITE needs an SDP offer)",
                    &tag,
                    vec![],
                );
                return Err(Box::new((tx, response)));
            }
        };
        let info = self.peers.get(&peer).cloned().unwrap_or_default();
        // RFC 3264 §6: an offer with no codec we take is refused with 488.
        if let Some(offer) = &offer {
            if let Err(e) = offer.anchored(&info.codecs, (IpAddr::from([127, 0, 0, 1]), 9), "x") {
                tracing::info!(%peer, error = %e, "no common codec");
                let response =
                    crate::registrar::response(&request, 488, "Not Acceptable Here", &tag, vec![]);
                return Err(Box::new((tx, response)));
            }
        }
        if !self.accepting_calls {
            let retry = vec![rsip::Header::Other("Retry-After".into(), "60".into())];
            let response =
                crate::registrar::response(&request, 503, "Service Unavailable", &tag, retry);
            return Err(Box::new((tx, response)));
        };
        self.call_seq += 1;
        let id = self.call_seq;
        let channel = format!(
            "SIP/{peer}-{:08x}",
            (self.tag_seed as u32).wrapping_add(id as u32)
        );
        let from = request
            .from_header()
            .map(|h| h.value().to_owned())
            .unwrap_or_default();
        let (caller_number, caller_name) = match &info.caller_id {
            Some(forced) => forced.clone(),
            None => (
                uri_of(&from)
                    .split_once(':')
                    .map(|(_, rest)| rest.split('@').next().unwrap_or("").to_owned())
                    .unwrap_or_default(),
                from.split('<')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .trim_matches('"')
                    .to_owned(),
            ),
        };
        let call_id = request
            .call_id_header()
            .map(|h| h.value().to_owned())
            .unwrap_or_default();
        let exten = request.uri.user().unwrap_or("s").to_owned();
        let remote_target = request
            .contact_header()
            .map(|c| uri_of(c.value()))
            .unwrap_or_else(|_| format!("sip:{}", path.peer()));
        let a_route = record_route(&request.headers);
        let new_call = NewCall {
            id,
            channel: channel.clone(),
            peer: peer.clone(),
            exten,
            caller_number,
            caller_name,
            call_id: call_id.clone(),
            caller_media: offer.as_ref().and_then(sdp_remote),
            caller_nat: info.nat,
            codecs: info.codecs.clone(),
            event_payload_types: offer.as_ref().map(event_types).unwrap_or_default(),
        };
        self.events.push_back(Event::NewCall(new_call));
        tracing::info!(%channel, %call_id, "call admitted");
        self.counters.calls.inc();
        super::flush(&mut tx, path, &mut self.outbox);
        self.transactions.insert(key.clone(), (tx, path));
        self.call_ids.insert(call_id.clone(), (id, None));
        self.calls.insert(
            id,
            Call {
                channel,
                peer,
                a_invite: request,
                a_key: key,
                a_path: path,
                a_tag: tag,
                a_call_id: call_id,
                a_state: AState::Early,
                a_final: None,
                a_remote_target: remote_target,
                a_route,
                a_cseq: 0,
                a_offer: offer,
                a_ok: None,
                relay_a: None,
                relay_b: None,
                fork: None,
                dial_command: 0,
                branches: Vec::new(),
                bridged: None,
            },
        );
        self.counters.calls_active.set(self.calls.len() as i64);
        Ok(())
    }

    /// Sends a response on the caller's pending INVITE transaction.
    fn respond_a(&mut self, id: u64, response: rsip::Response) {
        let Some(call) = self.calls.get(&id) else {
            return;
        };
        let key = call.a_key.clone();
        let status = response.status_code.code();
        if status >= 200 {
            if let Some(call) = self.calls.get_mut(&id) {
                call.a_final.get_or_insert(status);
            }
        }
        let now = self.now;
        if let Some((tx, path)) = self.transactions.get_mut(&key) {
            tx.respond(now, status, response.to_string().into_bytes());
            super::flush(tx, *path, &mut self.outbox);
            if let Some(at) = tx.poll_timeout() {
                self.deadlines.push(std::cmp::Reverse((at, key)));
            }
        }
    }

    /// The SDP the caller gets: its offer answered from the relay's leg A.
    fn a_answer_sdp(&self, id: u64) -> Option<String> {
        let call = self.calls.get(&id)?;
        let relay = call.relay_a?;
        let codecs = self
            .peers
            .get(&call.peer)
            .map(|p| p.codecs.clone())
            .unwrap_or_default();
        let mut answer = call
            .a_offer
            .as_ref()?
            .anchored(&codecs, relay, "phone")
            .ok()?;
        for media in &mut answer.media {
            media.direction = media.direction.map(sdp::Direction::answer);
        }
        answer.direction = answer.direction.map(sdp::Direction::answer);
        Some(answer.to_string())
    }

    /// The relay's address for each leg, once the task has a media session.
    pub fn call_set_media(&mut self, id: u64, a: (IpAddr, u16), b: (IpAddr, u16)) {
        if let Some(call) = self.calls.get_mut(&id) {
            call.relay_a = Some(a);
            call.relay_b = Some(b);
        }
    }

    /// `Answer()`: 200 with SDP to the caller (retransmitted until the ACK).
    pub fn call_answer(&mut self, id: u64) -> Result<(), String> {
        let call = self.calls.get(&id).ok_or("the call is gone")?;
        match call.a_state {
            AState::Answered | AState::Confirmed => return Ok(()),
            AState::Ended => return Err("the call has ended".into()),
            AState::Early => {}
        }
        let sdp = self.a_answer_sdp(id).ok_or("no media for the caller")?;
        let call = self.calls.get(&id).ok_or("the call is gone")?;
        let contact = self.contact(&call.peer, &call.a_path);
        let response = with_body(
            crate::registrar::response(
                &call.a_invite,
                200,
                "OK",
                &call.a_tag,
                echo_record_route(
                    &call.a_invite,
                    vec![
                        rsip::Header::Other("Contact".into(), contact),
                        rsip::Header::Other("Allow".into(), super::ALLOW.into()),
                    ],
                ),
            ),
            &sdp,
        );
        let bytes = response.to_string().into_bytes();
        self.respond_a(id, response);
        let now = self.now;
        if let Some(call) = self.calls.get_mut(&id) {
            call.a_state = AState::Answered;
            call.a_ok = Some(OkRetransmit {
                bytes,
                next: now + T1,
                interval: T1,
                give_up: now + T1 * 64,
            });
            self.call_deadlines.push(std::cmp::Reverse((now + T1, id)));
        }
        Ok(())
    }

    /// `Ringing()`/`Progress()` (180, 183 with SDP), `Busy()` (486), `Congestion()` (503).
    pub fn call_indicate(&mut self, id: u64, status: u16) -> Result<(), String> {
        let call = self.calls.get(&id).ok_or("the call is gone")?;
        if call.a_state != AState::Early {
            return Ok(());
        }
        let response = match status {
            180 => crate::registrar::response(
                &call.a_invite,
                180,
                "Ringing",
                &call.a_tag,
                echo_record_route(&call.a_invite, vec![]),
            ),
            183 => {
                let sdp = self.a_answer_sdp(id).ok_or("no media for the caller")?;
                let call = self.calls.get(&id).ok_or("the call is gone")?;
                let contact = self.contact(&call.peer, &call.a_path);
                with_body(
                    crate::registrar::response(
                        &call.a_invite,
                        183,
                        "Session Progress",
                        &call.a_tag,
                        echo_record_route(
                            &call.a_invite,
                            vec![rsip::Header::Other("Contact".into(), contact)],
                        ),
                    ),
                    &sdp,
                )
            }
            _ => {
                let reason = match status {
                    486 => "Busy Here",
                    480 => "Temporarily Unavailable",
                    404 => "Not Found",
                    603 => "Decline",
                    _ => "Service Unavailable",
                };
                let response =
                    crate::registrar::response(&call.a_invite, status, reason, &call.a_tag, vec![]);
                self.respond_a(id, response);
                if let Some(call) = self.calls.get_mut(&id) {
                    call.a_state = AState::Ended;
                }
                return Ok(());
            }
        };
        self.respond_a(id, response);
        Ok(())
    }

    /// Ends the call on the SIP side: the caller gets a final response (not answered
    /// yet) or a BYE, ringing B legs a CANCEL, a bridged one a BYE; the call is
    /// forgotten.
    /// The final status the caller's INVITE got is returned (`None` when the call had
    /// already gone).
    pub fn call_hangup(&mut self, id: u64, cause: u32) -> Option<u16> {
        let call = self.calls.get(&id)?;
        match call.a_state {
            AState::Early => {
                let status = match cause {
                    17 => 486,
                    1 => 404,
                    18 | 19 => 480,
                    21 => 603,
                    34 | 38 | 41 | 42 => 503,
                    _ => 480,
                };
                let _ = self.call_indicate(id, status);
            }
            AState::Answered | AState::Confirmed => self.bye_a(id),
            AState::Ended => {}
        }
        let status = self.calls.get(&id).and_then(|call| call.a_final);
        self.end_branches(id, None);
        self.forget_call(id);
        status
    }

    fn forget_call(&mut self, id: u64) {
        if let Some(call) = self.calls.remove(&id) {
            self.call_ids.remove(&call.a_call_id);
            for index in 0..call.branches.len() {
                self.branch_sdp.remove(&(id, index));
            }
            for branch in &call.branches {
                self.call_ids.remove(&branch.call_id);
                self.branch_owner.remove(&branch.via_branch);
            }
            tracing::info!(channel = %call.channel, "call ended");
            self.events.push_back(Event::CallGone(id));
            self.counters.calls_active.set(self.calls.len() as i64);
        }
    }

    /// BYE to the caller.
    fn bye_a(&mut self, id: u64) {
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        if call.a_state == AState::Ended {
            return;
        }
        call.a_state = AState::Ended;
        call.a_ok = None;
        call.a_cseq += 1;
        let to = call
            .a_invite
            .from_header()
            .map(|h| h.value().to_owned())
            .unwrap_or_default();
        let from = call
            .a_invite
            .to_header()
            .map(|h| h.value().to_owned())
            .unwrap_or_default();
        let from = if tag_of(&from).is_some() {
            from
        } else {
            format!("{from};tag={}", call.a_tag)
        };
        let (target, call_id, cseq, path, route) = (
            call.a_remote_target.clone(),
            call.a_call_id.clone(),
            call.a_cseq,
            call.a_path,
            call.a_route.clone(),
        );
        self.send_in_dialog("BYE", &target, &route, &from, &to, &call_id, cseq, path);
    }

    /// A request inside a dialog (BYE), in its own client transaction, with the
    /// dialog's route set.
    #[allow(clippy::too_many_arguments)]
    fn send_in_dialog(
        &mut self,
        method: &str,
        target: &str,
        route: &[String],
        from: &str,
        to: &str,
        call_id: &str,
        cseq: u32,
        path: Path,
    ) {
        let Some(local) = self.local_addr() else {
            return;
        };
        let branch = format!("z9hG4bK{}", self.tag());
        let transport = if path.reliable() { "TCP" } else { "UDP" };
        let request = format!(
            "{method} {target} SIP/2.0\r\nVia: SIP/2.0/{transport} {local};branch={branch};rport\r\nMax-Forwards: 70\r\n{}From: {from}\r\nTo: {to}\r\nCall-ID: {call_id}\r\nCSeq: {cseq} {method}\r\nUser-Agent: phone-sip-edge\r\nContent-Length: 0\r\n\r\n",
            route_headers(route)
        );
        self.start_client(branch, request.into_bytes(), path, self.now);
    }

    /// `Dial()`: INVITEs to every target (every reachable contact of a line, or the
    /// trunk), ringing at once; the Dial ends in a [`CallEvent`].
    pub fn call_dial(
        &mut self,
        id: u64,
        command_id: u64,
        targets: &[Target],
        timeout: Option<Duration>,
        caller: (String, String),
    ) -> Result<(), String> {
        let now = self.now;
        let local = self.local_addr().ok_or("no SIP socket")?;
        let call = self.calls.get(&id).ok_or("the call is gone")?;
        let offer = call.a_offer.clone().ok_or("no offer from the caller")?;
        let relay_b = call.relay_b.ok_or("no media session")?;
        let caller_location = self.peers.get(&call.peer).and_then(|p| p.location.clone());
        let mut branches = Vec::new();
        for target in targets {
            let Some(info) = self.peers.get(&target.peer).cloned() else {
                tracing::info!(peer = %target.peer, "Dial to an unknown peer");
                continue;
            };
            // Where to send: the trunk's address, or each reachable registered contact.
            let mut destinations: Vec<(String, Path)> = Vec::new();
            if let Some(addr) = info.trunk {
                let number = if target.number.is_empty() {
                    target.peer.clone()
                } else {
                    target.number.clone()
                };
                let host = info.host.clone().unwrap_or_else(|| addr.ip().to_string());
                destinations.push((format!("sip:{number}@{host}"), Path::udp(addr)));
            } else {
                for (line, binding) in self.registrations(Some(&target.peer)) {
                    if !self.reachable(&line, &binding.contact) {
                        continue;
                    }
                    if let Some(path) = self.path_to(&binding) {
                        destinations.push((uri_of(&binding.contact), path));
                    }
                }
            }
            let codecs = info.codecs.clone();
            let Ok(sdp) = offer.anchored(&codecs, relay_b, "phone") else {
                tracing::info!(peer = %target.peer, "no codec in common with the Dial target");
                continue;
            };
            let sdp = sdp.to_string();
            for (request_uri, path) in destinations {
                let n = branches.len();
                let channel = format!(
                    "SIP/{}-{:08x}",
                    target.peer,
                    (self.tag_seed as u32).wrapping_add((id * 16 + n as u64) as u32 ^ 0x5a5a)
                );
                let tag = self.tag();
                let call_id = format!("{}-{id}-{n}@{}", self.tag(), local.ip());
                let via_branch = format!("z9hG4bK{}", self.tag());
                let (number, name) = &caller;
                let from_user = info.from_user.clone().unwrap_or_else(|| number.clone());
                let from_host = info
                    .from_domain
                    .clone()
                    .unwrap_or_else(|| local.ip().to_string());
                let display = if name.is_empty() {
                    String::new()
                } else {
                    format!("\"{}\" ", name.replace('"', ""))
                };
                let from = format!("{display}<sip:{from_user}@{from_host}>;tag={tag}");
                let to = format!("<{request_uri}>");
                let transport = if path.reliable() { "TCP" } else { "UDP" };
                let via = format!("SIP/2.0/{transport} {local};branch={via_branch};rport");
                let mut extra = String::new();
                let mut location = None;
                if info.trunk.is_some() {
                    // RFC 3325: the caller ID as we assert it, for the carrier.
                    extra.push_str(&format!(
                        "P-Asserted-Identity: {display}<sip:{number}@{from_host}>\r\n"
                    ));
                    // RFC 6442: an emergency call carries where the caller is, by value.
                    if self.emergency_numbers.contains(&target.number) {
                        location = caller_location.clone();
                        if location.is_some() {
                            extra.push_str(&format!(
                                "Geolocation: <cid:{}>\r\nGeolocation-Routing: no\r\n",
                                location_cid(&call_id)
                            ));
                        }
                    }
                }
                let contact = self.contact(&from_user, &path);
                branches.push(Branch {
                    channel,
                    peer: target.peer.clone(),
                    request_uri,
                    call_id,
                    from,
                    to,
                    cseq: 1,
                    via_branch,
                    via,
                    contact,
                    extra,
                    sdp: sdp.clone(),
                    location,
                    path,
                    remote_to: None,
                    remote_target: None,
                    route: Vec::new(),
                    ack: None,
                    cancel_pending: false,
                    provisional: false,
                    authenticated: false,
                    last_status: 0,
                });
            }
        }
        let mut fork = Fork::new(branches.len(), timeout.map(|t| now + t));
        for (index, branch) in branches.iter().enumerate() {
            self.call_ids
                .insert(branch.call_id.clone(), (id, Some(index)));
            self.branch_owner
                .insert(branch.via_branch.clone(), (id, index));
        }
        let actions = fork.poll_actions();
        if let Some(at) = fork.poll_timeout() {
            self.call_deadlines.push(std::cmp::Reverse((at, id)));
        }
        let call = self.calls.get_mut(&id).ok_or("the call is gone")?;
        call.dial_command = command_id;
        call.branches = branches;
        call.fork = Some(fork);
        self.fork_actions(id, actions, now);
        Ok(())
    }

    fn fork_actions(&mut self, id: u64, actions: Vec<ForkAction>, now: Instant) {
        for action in actions {
            match action {
                ForkAction::Invite { index } => {
                    let Some(branch) = self.calls.get(&id).and_then(|c| c.branches.get(index))
                    else {
                        continue;
                    };
                    let transport = branch.path.transport();
                    let tx = ClientTransaction::new(
                        true,
                        branch.invite(),
                        transport,
                        TimerValues::default(),
                        now,
                    );
                    let (key, path) = (branch.via_branch.clone(), branch.path);
                    self.clients.insert(key.clone(), (tx, path));
                    self.client_events(&key, now);
                }
                ForkAction::Cancel { index } => self.cancel_branch(id, index, now),
                ForkAction::Ringing { index, early_media } => {
                    if !early_media {
                        let _ = self.call_indicate(id, 180);
                    } else {
                        let remote = self.branch_sdp_remote(id, index);
                        let nat = self.branch_nat(id, index);
                        if self.calls.contains_key(&id) {
                            let event = CallEvent::EarlyMedia { remote, nat };
                            self.events.push_back(Event::Call { id, event });
                        }
                        let _ = self.call_indicate(id, 183);
                    }
                }
                ForkAction::Answered { index } => self.branch_answered(id, index, now),
                ForkAction::Finished(status) => {
                    let Some(call) = self.calls.get(&id) else {
                        continue;
                    };
                    if status == DialStatus::Answer {
                        continue;
                    }
                    let sip_status = call
                        .branches
                        .iter()
                        .map(|b| b.last_status)
                        .filter(|s| *s >= 300)
                        .min()
                        .unwrap_or(0);
                    self.events.push_back(Event::Call {
                        id,
                        event: CallEvent::DialFinished {
                            command_id: call.dial_command,
                            status,
                            sip_status,
                        },
                    });
                }
            }
        }
    }

    fn branch_nat(&self, id: u64, index: usize) -> bool {
        self.calls
            .get(&id)
            .and_then(|c| c.branches.get(index))
            .and_then(|b| self.peers.get(&b.peer))
            .is_some_and(|p| p.nat)
    }

    /// Remembered SDP answers of branches, by (call, branch).
    fn branch_sdp_remote(&self, id: u64, index: usize) -> Option<SocketAddr> {
        self.branch_sdp.get(&(id, index)).and_then(sdp_remote)
    }

    fn cancel_branch(&mut self, id: u64, index: usize, now: Instant) {
        let Some(branch) = self
            .calls
            .get_mut(&id)
            .and_then(|c| c.branches.get_mut(index))
        else {
            return;
        };
        if !branch.provisional {
            // §9.1: a CANCEL waits for a provisional response.
            branch.cancel_pending = true;
            return;
        }
        let cancel = format!(
            "CANCEL {} SIP/2.0\r\nVia: {}\r\nMax-Forwards: 70\r\nFrom: {}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: {} CANCEL\r\nContent-Length: 0\r\n\r\n",
            branch.request_uri, branch.via, branch.from, branch.to, branch.call_id, branch.cseq
        );
        let key = format!("{}|CANCEL", branch.via_branch);
        let path = branch.path;
        let transport = path.transport();
        let tx = ClientTransaction::new(
            false,
            cancel.into_bytes(),
            transport,
            TimerValues::default(),
            now,
        );
        self.clients.insert(key.clone(), (tx, path));
        self.client_events(&key, now);
    }

    /// A B leg answered: ACK it, bridge the caller (200 if not answered yet), and tell
    /// the task so it points the relay's leg B at the callee.
    fn branch_answered(&mut self, id: u64, index: usize, now: Instant) {
        let remote = self.branch_sdp_remote(id, index);
        let events = self
            .branch_sdp
            .get(&(id, index))
            .map(event_types)
            .unwrap_or_default();
        let nat = self.branch_nat(id, index);
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        call.bridged = Some((index, now));
        let channel = call.branches[index].channel.clone();
        self.events.push_back(Event::Call {
            id,
            event: CallEvent::Bridged {
                command_id: call.dial_command,
                channel,
                remote,
                event_payload_types: events,
                nat,
            },
        });
        if call.a_state == AState::Early {
            if let Err(e) = self.call_answer(id) {
                tracing::warn!(error = %e, "cannot answer the caller after the callee answered");
            }
        }
    }

    /// A response on a B leg's INVITE (or its CANCEL) client transaction.
    pub(super) fn branch_event(
        &mut self,
        id: u64,
        index: usize,
        event: ClientEvent<Vec<u8>>,
        now: Instant,
    ) {
        let (status, response) = match event {
            // The response `SipCore::response` parsed for this very event.
            ClientEvent::Response(_) => {
                let Some(response) = self.last_response.take() else {
                    return;
                };
                (response.status_code.code(), Some(response))
            }
            // Timer B: as a 408; a transport error: as a 503.
            ClientEvent::Failed(crate::transaction::Failure::Timeout) => (408, None),
            ClientEvent::Failed(_) => (503, None),
        };
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        let Some(branch) = call.branches.get_mut(index) else {
            return;
        };
        if let Some(response) = &response {
            let invite = response
                .cseq_header()
                .is_ok_and(|c| c.value().trim_end().ends_with("INVITE"));
            if !invite {
                return;
            }
            if let Ok(to) = response.to_header() {
                if tag_of(to.value()).is_some() {
                    branch.remote_to = Some(to.value().to_owned());
                }
            }
            if let Ok(contact) = response.contact_header() {
                branch.remote_target = Some(uri_of(contact.value()));
            }
            let mut route = record_route(&response.headers);
            if !route.is_empty() {
                route.reverse();
                branch.route = route;
            }
            if !response.body.is_empty() {
                if let Ok(session) = std::str::from_utf8(&response.body)
                    .map_err(|_| ())
                    .and_then(|t| sdp::Session::parse(t).map_err(|_| ()))
                {
                    self.branch_sdp.insert((id, index), session);
                }
            }
        }
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        let branch = &mut call.branches[index];
        branch.last_status = status;
        // A trunk's challenge: once, with the peer's credentials, on a new branch.
        if (status == 401 || status == 407) && !branch.authenticated {
            if let Some(response) = &response {
                if self.retry_with_credentials(id, index, status, response, now) {
                    return;
                }
            }
        }
        let local = self.local_addr();
        let seed = self.tag();
        let call = match self.calls.get_mut(&id) {
            Some(call) => call,
            None => return,
        };
        let branch = &mut call.branches[index];
        if (200..300).contains(&status) {
            // ACK every 2xx (the first and its retransmissions), §13.2.2.4.
            let ack = match &branch.ack {
                Some(ack) => ack.clone(),
                None => {
                    let ack = build_ack(branch, local, &seed);
                    branch.ack = Some(ack.clone());
                    ack
                }
            };
            let path = branch.path;
            self.outbox.push_back(super::Datagram { path, bytes: ack });
        }
        let mut cancel_now = false;
        if (100..200).contains(&status) {
            branch.provisional = true;
            // A CANCEL held for this first provisional response (§9.1) goes now.
            cancel_now = std::mem::take(&mut branch.cancel_pending);
        }
        if cancel_now {
            self.cancel_branch(id, index, now);
        }
        let has_sdp = self.branch_sdp.contains_key(&(id, index));
        let bridged = self.calls.get(&id).and_then(|c| c.bridged).map(|(i, _)| i);
        let Some(fork) = self.calls.get_mut(&id).and_then(|c| c.fork.as_mut()) else {
            return;
        };
        if status == 100 {
            return;
        }
        if (200..300).contains(&status) && fork.is_finished() && bridged != Some(index) {
            // Another branch won (or the Dial ended) before this one answered: it has
            // its ACK, and now its BYE.
            self.bye_branch(id, index);
            return;
        }
        fork.handle_response(index, status, has_sdp);
        let actions = fork.poll_actions();
        self.fork_actions(id, actions, now);
    }

    /// Re-sends a challenged INVITE with the peer's digest credentials.
    fn retry_with_credentials(
        &mut self,
        id: u64,
        index: usize,
        status: u16,
        response: &rsip::Response,
        now: Instant,
    ) -> bool {
        let Some(call) = self.calls.get(&id) else {
            return false;
        };
        let branch = &call.branches[index];
        let Some(info) = self.peers.get(&branch.peer) else {
            return false;
        };
        let (Some(user), Some(secret)) = (
            info.username.clone().or_else(|| info.from_user.clone()),
            info.secret.clone(),
        ) else {
            return false;
        };
        let challenge = response.headers.iter().find_map(|h| match h {
            rsip::Header::ProxyAuthenticate(v) if status == 407 => Some(v.value()),
            rsip::Header::WwwAuthenticate(v) if status == 401 => Some(v.value()),
            _ => None,
        });
        let Some(challenge) = challenge.and_then(|v| crate::digest::Challenge::parse(v).ok())
        else {
            return false;
        };
        let cnonce = format!("{:x}", self.tag_seed ^ u64::from(branch.cseq));
        let credentials = crate::digest::authorize(
            &challenge,
            &user,
            &secret,
            "INVITE",
            &branch.request_uri,
            &cnonce,
            1,
        );
        let auth_header = if status == 407 {
            "Proxy-Authorization"
        } else {
            "Authorization"
        };
        let Some(local) = self.local_addr() else {
            return false;
        };
        let old_branch = branch.via_branch.clone();
        let new_branch = format!("z9hG4bK{}", self.tag());
        let call = match self.calls.get_mut(&id) {
            Some(call) => call,
            None => return false,
        };
        let branch = &mut call.branches[index];
        let transport = if branch.path.reliable() { "TCP" } else { "UDP" };
        branch.via_branch = new_branch.clone();
        branch.via = format!("SIP/2.0/{transport} {local};branch={new_branch};rport");
        branch.cseq += 1;
        branch.authenticated = true;
        branch
            .extra
            .push_str(&format!("{auth_header}: {}\r\n", credentials.to_header()));
        self.branch_owner.remove(&old_branch);
        self.branch_owner.insert(new_branch.clone(), (id, index));
        let (invite, path) = (branch.invite(), branch.path);
        let reliable = path.transport();
        let tx = ClientTransaction::new(true, invite, reliable, TimerValues::default(), now);
        self.clients.insert(new_branch.clone(), (tx, path));
        self.client_events(&new_branch, now);
        true
    }

    /// CANCEL every ringing branch, BYE the bridged one (unless it is `except`).
    fn end_branches(&mut self, id: u64, except: Option<usize>) {
        let now = self.now;
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        if let Some(fork) = call.fork.as_mut() {
            fork.caller_cancelled();
            let actions: Vec<ForkAction> = fork
                .poll_actions()
                .into_iter()
                .filter(|a| matches!(a, ForkAction::Cancel { .. }))
                .collect();
            self.fork_actions(id, actions, now);
        }
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        if let Some((index, _)) = call.bridged.take() {
            if Some(index) == except {
                return;
            }
            self.bye_branch(id, index);
        }
    }

    /// BYE to a B leg that answered.
    fn bye_branch(&mut self, id: u64, index: usize) {
        let Some(branch) = self
            .calls
            .get_mut(&id)
            .and_then(|c| c.branches.get_mut(index))
        else {
            return;
        };
        branch.cseq += 1;
        let (Some(to), Some(target)) = (branch.remote_to.clone(), branch.remote_target.clone())
        else {
            return;
        };
        let (from, call_id, cseq, path, route) = (
            branch.from.clone(),
            branch.call_id.clone(),
            branch.cseq,
            branch.path,
            branch.route.clone(),
        );
        self.send_in_dialog("BYE", &target, &route, &from, &to, &call_id, cseq, path);
    }

    /// BYE, CANCEL, ACK and re-INVITE inside a call; false if the request is not for a
    /// call (the caller answers it as before).
    pub(super) fn call_request(
        &mut self,
        request: &rsip::Request,
        key: &str,
        path: &Path,
        tag: &str,
    ) -> Option<rsip::Response> {
        let call_id = request.call_id_header().ok()?.value().to_owned();
        match request.method {
            rsip::Method::Cancel => {
                // The CANCEL names the INVITE's transaction: same branch and sent-by.
                let invite_key = key.rsplit_once('|').map(|(k, _)| format!("{k}|INVITE"))?;
                let (id, _) = *self.call_ids.get(&call_id)?;
                let call = self.calls.get(&id)?;
                if call.a_key != invite_key || call.a_state != AState::Early {
                    return Some(crate::registrar::response(request, 200, "OK", tag, vec![]));
                }
                let terminated = crate::registrar::response(
                    &call.a_invite,
                    487,
                    "Request Terminated",
                    &call.a_tag,
                    vec![],
                );
                self.respond_a(id, terminated);
                if let Some(call) = self.calls.get_mut(&id) {
                    call.a_state = AState::Ended;
                }
                self.end_branches(id, None);
                self.events.push_back(Event::Call {
                    id,
                    event: CallEvent::CallerGone {
                        cause: 16,
                        status: Some(487),
                    },
                });
                self.forget_call(id);
                Some(crate::registrar::response(request, 200, "OK", tag, vec![]))
            }
            rsip::Method::Ack => {
                let (id, leg) = *self.call_ids.get(&call_id)?;
                if leg.is_none() {
                    if let Some(call) = self.calls.get_mut(&id) {
                        if call.a_state == AState::Answered {
                            call.a_state = AState::Confirmed;
                        }
                        call.a_ok = None;
                    }
                }
                None
            }
            rsip::Method::Bye => {
                let (id, leg) = *self.call_ids.get(&call_id)?;
                let ok = crate::registrar::response(request, 200, "OK", tag, vec![]);
                match leg {
                    None => {
                        let call = self.calls.get(&id)?;
                        let status = call.a_final;
                        if let Some(call) = self.calls.get_mut(&id) {
                            call.a_state = AState::Ended;
                            call.a_ok = None;
                        }
                        self.end_branches(id, None);
                        self.events.push_back(Event::Call {
                            id,
                            event: CallEvent::CallerGone { cause: 16, status },
                        });
                        self.forget_call(id);
                    }
                    Some(index) => {
                        let now = self.now;
                        let call = self.calls.get_mut(&id)?;
                        if call.bridged.map(|(i, _)| i) == Some(index) {
                            let (_, since) = call.bridged.take()?;
                            let talk = now.saturating_duration_since(since);
                            let secs = u32::try_from(talk.as_secs()).unwrap_or(u32::MAX);
                            self.events.push_back(Event::Call {
                                id,
                                event: CallEvent::BridgeEnded {
                                    command_id: call.dial_command,
                                    channel: call.branches[index].channel.clone(),
                                    secs,
                                },
                            });
                        }
                    }
                }
                Some(ok)
            }
            rsip::Method::Invite => {
                // A re-INVITE: inside a dialog (To has a tag) of a call we know.
                let to = request.to_header().ok()?.value().to_owned();
                tag_of(&to)?;
                let (id, leg) = *self.call_ids.get(&call_id)?;
                let offer = std::str::from_utf8(&request.body)
                    .ok()
                    .and_then(|t| sdp::Session::parse(t).ok());
                let call = self.calls.get(&id)?;
                let relay = if leg.is_none() {
                    call.relay_a
                } else {
                    call.relay_b
                };
                let peer = if leg.is_none() {
                    call.peer.clone()
                } else {
                    call.branches.get(leg.unwrap_or(0))?.peer.clone()
                };
                let codecs = self
                    .peers
                    .get(&peer)
                    .map(|p| p.codecs.clone())
                    .unwrap_or_default();
                let (Some(offer), Some(relay)) = (offer, relay) else {
                    return Some(crate::registrar::response(
                        request,
                        488,
                        "Not Acceptable Here",
                        tag,
                        vec![],
                    ));
                };
                let Ok(mut answer) = offer.anchored(&codecs, relay, "phone") else {
                    return Some(crate::registrar::response(
                        request,
                        488,
                        "Not Acceptable Here",
                        tag,
                        vec![],
                    ));
                };
                let direction = offer.audio_direction();
                for media in &mut answer.media {
                    media.direction = Some(direction.answer());
                }
                answer.direction = None;
                self.events.push_back(Event::Call {
                    id,
                    event: CallEvent::Reinvite {
                        b_leg: leg.is_some(),
                        remote: sdp_remote(&offer),
                        direction,
                    },
                });
                let contact = self.contact(&peer, path);
                let to_tag = tag_of(&to).unwrap_or_default();
                Some(with_body(
                    crate::registrar::response(
                        request,
                        200,
                        "OK",
                        &to_tag,
                        vec![rsip::Header::Other("Contact".into(), contact)],
                    ),
                    &answer.to_string(),
                ))
            }
            _ => None,
        }
    }

    /// The dialog timers due at `now`: 2xx retransmissions to the caller until its
    /// ACK (hanging up when none comes), and Dial timeouts. Each call's next timer is
    /// in `call_deadlines`; entries whose timer moved are skipped when popped.
    pub(super) fn call_tick(&mut self, now: Instant) {
        while let Some(std::cmp::Reverse((at, id))) = self.call_deadlines.peek().copied() {
            if at > now {
                break;
            }
            self.call_deadlines.pop();
            let Some(call) = self.calls.get_mut(&id) else {
                continue;
            };
            if let Some(ok) = call.a_ok.as_mut() {
                if now >= ok.give_up {
                    tracing::warn!(call = id, "no ACK for the 200: hanging up");
                    let status = call.a_final;
                    let event = CallEvent::CallerGone { cause: 41, status };
                    self.events.push_back(Event::Call { id, event });
                    self.call_hangup(id, 41);
                    continue;
                }
                if now >= ok.next {
                    let bytes = ok.bytes.clone();
                    ok.interval = (ok.interval * 2).min(T2);
                    ok.next = now + ok.interval;
                    let path = call.a_path;
                    self.outbox.push_back(super::Datagram { path, bytes });
                }
            }
            let Some(call) = self.calls.get_mut(&id) else {
                continue;
            };
            if let Some(fork) = call.fork.as_mut() {
                if fork.poll_timeout().is_some_and(|at| at <= now) {
                    fork.handle_timeout(now);
                    let actions = fork.poll_actions();
                    self.fork_actions(id, actions, now);
                }
            }
            if let Some(next) = self.calls.get(&id).and_then(Call::next_timer) {
                self.call_deadlines.push(std::cmp::Reverse((next, id)));
            }
        }
    }

    /// The ACK a B leg's non-2xx final response needs (§17.1.1.3): same branch,
    /// Request-URI and From, the response's To.
    pub(super) fn branch_flush(&mut self, key: &str) {
        let Some(&(id, index)) = self.branch_owner.get(key) else {
            return;
        };
        let Some((tx, path)) = self.clients.get_mut(key) else {
            return;
        };
        let mut out = Vec::new();
        while let Some(transmit) = tx.poll_transmit() {
            out.push(transmit);
        }
        let path = *path;
        let Some(branch) = self.calls.get(&id).and_then(|c| c.branches.get(index)) else {
            for transmit in out {
                if let Transmit::Message(bytes) = transmit {
                    self.outbox.push_back(super::Datagram { path, bytes });
                }
            }
            return;
        };
        for transmit in out {
            match transmit {
                Transmit::Message(bytes) => self.outbox.push_back(super::Datagram { path, bytes }),
                Transmit::Ack(_) => {
                    // The final response's To (with the callee's tag), as parsed by
                    // `SipCore::response` for this transmit.
                    let to = self
                        .last_response
                        .as_ref()
                        .and_then(|r| r.to_header().ok())
                        .map(|t| t.value().to_owned())
                        .unwrap_or_else(|| branch.to.clone());
                    let ack = format!(
                        "ACK {} SIP/2.0\r\nVia: {}\r\nMax-Forwards: 70\r\nFrom: {}\r\nTo: {to}\r\nCall-ID: {}\r\nCSeq: {} ACK\r\nContent-Length: 0\r\n\r\n",
                        branch.request_uri, branch.via, branch.from, branch.call_id, branch.cseq
                    );
                    let bytes = ack.into_bytes();
                    self.outbox.push_back(super::Datagram { path, bytes });
                }
            }
        }
    }
}

impl Call {
    /// The call's earliest dialog timer: its 200's next retransmission or give-up, or
    /// its Dial's timeout.
    fn next_timer(&self) -> Option<Instant> {
        let ok = self.a_ok.as_ref().map(|ok| ok.next.min(ok.give_up));
        let dial = self.fork.as_ref().and_then(Fork::poll_timeout);
        ok.into_iter().chain(dial).min()
    }
}

impl Branch {
    /// The INVITE as it stands (a retry with credentials has a new Via, CSeq and
    /// `extra`).
    fn invite(&self) -> Vec<u8> {
        // With a location, the SDP and the PIDF-LO go as two parts (RFC 6442 §4.1).
        let (content_type, body) = match &self.location {
            None => ("application/sdp".to_owned(), self.sdp.clone()),
            Some(pidf) => {
                let boundary = "phone-location-boundary";
                (
                    format!("multipart/mixed;boundary={boundary}"),
                    format!(
                        "--{boundary}\r\nContent-Type: application/sdp\r\n\r\n{}\r\n--{boundary}\r\nContent-Type: application/pidf+xml\r\nContent-ID: <{}>\r\n\r\n{pidf}\r\n--{boundary}--\r\n",
                        self.sdp,
                        location_cid(&self.call_id)
                    ),
                )
            }
        };
        format!(
            "INVITE {} SIP/2.0\r\nVia: {}\r\nMax-Forwards: 70\r\nFrom: {}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: {} INVITE\r\nContact: {}\r\n{}Allow: {}\r\nUser-Agent: phone-sip-edge\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n{body}",
            self.request_uri,
            self.via,
            self.from,
            self.to,
            self.call_id,
            self.cseq,
            self.contact,
            self.extra,
            super::ALLOW,
            body.len(),
        )
        .into_bytes()
    }
}

/// The Content-ID of an INVITE's location part (unique with its Call-ID).
fn location_cid(call_id: &str) -> String {
    format!("location-{}", call_id.replace(['<', '>', ' '], ""))
}

/// The ACK for a B leg's 2xx (§13.2.2.4): a new transaction to the remote target.
fn build_ack(branch: &Branch, local: Option<SocketAddr>, seed: &str) -> Vec<u8> {
    let local = local.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 5060)));
    let transport = if branch.path.reliable() { "TCP" } else { "UDP" };
    let target = branch
        .remote_target
        .clone()
        .unwrap_or_else(|| branch.request_uri.clone());
    let to = branch
        .remote_to
        .clone()
        .unwrap_or_else(|| branch.to.clone());
    format!(
        "ACK {target} SIP/2.0\r\nVia: SIP/2.0/{transport} {local};branch=z9hG4bK{seed}a{};rport\r\nMax-Forwards: 70\r\n{}From: {}\r\nTo: {to}\r\nCall-ID: {}\r\nCSeq: {} ACK\r\nContent-Length: 0\r\n\r\n",
        branch.cseq,
        route_headers(&branch.route),
        branch.from,
        branch.call_id,
        branch.cseq
    )
    .into_bytes()
}

/// The entries of a message's Record-Route headers, in order (a header may hold several,
/// comma-separated).
fn record_route(headers: &rsip::Headers) -> Vec<String> {
    let mut out = Vec::new();
    for header in headers.iter() {
        if let rsip::Header::RecordRoute(rr) = header {
            let value = rr.value();
            let (mut depth, mut start) = (0i32, 0usize);
            for (i, c) in value.char_indices() {
                match c {
                    '<' => depth += 1,
                    '>' => depth -= 1,
                    ',' if depth == 0 => {
                        out.push(value[start..i].trim().to_owned());
                        start = i + 1;
                    }
                    _ => {}
                }
            }
            out.push(value[start..].trim().to_owned());
        }
    }
    out.retain(|r| !r.is_empty());
    out
}

/// `extra` with the request's Record-Route headers after it (§12.1.1: the UAS copies
/// them into every response that makes a dialog).
fn echo_record_route(request: &rsip::Request, mut extra: Vec<rsip::Header>) -> Vec<rsip::Header> {
    extra.extend(
        request
            .headers
            .iter()
            .filter(|h| matches!(h, rsip::Header::RecordRoute(_)))
            .cloned(),
    );
    extra
}

/// Route headers for a route set.
fn route_headers(route: &[String]) -> String {
    route.iter().map(|r| format!("Route: {r}\r\n")).collect()
}

#[cfg(test)]
mod route_tests {
    use super::*;

    #[test]
    fn record_route_entries_keep_their_order_across_headers_and_commas() {
        let request = rsip::Request::try_from(
            "INVITE sip:1@a SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5;branch=z9hG4bKx\r\nRecord-Route: <sip:p1.example;lr>, <sip:p2.example;lr;x=\"a,b\">\r\nRecord-Route: <sip:p3.example;lr>\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:1@a>\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
                .as_bytes()
                .to_vec(),
        )
        .unwrap();
        let route = record_route(&request.headers);
        assert_eq!(
            route,
            vec![
                "<sip:p1.example;lr>",
                "<sip:p2.example;lr;x=\"a,b\">",
                "<sip:p3.example;lr>"
            ]
        );
        assert_eq!(route_headers(&route[..1]), "Route: <sip:p1.example;lr>\r\n");
        assert_eq!(echo_record_route(&request, vec![]).len(), 2);
    }
}
