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
use crate::error::{CallError, RejectReason};
use crate::fork::{DialStatus, Fork, ForkAction};
use crate::sdp;
use crate::transaction::{ClientEvent, ClientTransaction, ServerTransaction, TimerValues};
use rsip::prelude::*;
use sip_wire::build::Dialog;
use sip_wire::header::{NameAddr, SipUri, Via};

mod dial;
mod dialog;
mod restore;
use dial::Branch;
use dialog::{echo_record_route, record_route};
pub use restore::{CallRecord, CalleeRecord, MediaRef};

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
    /// The edge's drain deadline passed with the call still up: the endpoint has sent
    /// BYE on both legs (Q.850 `cause`); the task tells the router and deletes the
    /// relay session.
    Stopped { cause: u32 },
    /// The drain deadline passed with the call bridged and its record kept: the next
    /// edge takes it over. The SIP side forgot it without a BYE; the task leaves the
    /// relay session as it is.
    HandedOver,
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
    /// A line's reachable registered contacts (Request-URI, where to send), from
    /// [`SipCore::contacts`] on the shard that holds the line's registrations; unused
    /// for a trunk.
    pub contacts: Vec<(String, Path)>,
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
    /// The Reason header (RFC 3326) of the BYEs the edge sends when it ends the call.
    bye_reason: Option<String>,
    /// The relay session, for the call's record.
    media: Option<MediaRef>,
    /// Its record was handed out (its removal is, when it ends).
    persisted: bool,
}

/// `<sip:x@y>;params` or `sip:x@y` to the URI.
/// The URI of a name-addr (`sip_wire::build::uri`), owned.
fn uri_of(value: &str) -> String {
    sip_wire::build::uri(value).to_owned()
}

/// The caller's number (the From URI's user) and display name.
fn caller_of(request: &rsip::Request) -> (String, String) {
    let from = request.from_header().map(|h| h.value()).unwrap_or_default();
    NameAddr::parse(from)
        .map(|from| {
            let user = SipUri::parse(from.uri).and_then(|uri| uri.user);
            (user.unwrap_or("").to_owned(), from.display.to_owned())
        })
        .unwrap_or_default()
}

/// The tag of a From or To value (`sip_wire::build::tag`), owned.
fn tag_of(value: &str) -> Option<String> {
    sip_wire::build::tag(value).map(str::to_owned)
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
                let lines: Vec<String> = saved.keys().cloned().collect();
                self.registrar.restore(saved, self.unix());
                self.persist(&lines);
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
            self.persist(&gone);
            self.update_gauge();
        }
        gone
    }

    /// Where new calls go to get a task; without one, INVITEs get 503.
    /// Whether new calls are taken: the driver gives each an async task (see
    /// [`Event::NewCall`]). Without, INVITEs get 503.
    /// The drain (SIGTERM): from `now`, new INVITEs get 503 with Retry-After (so the
    /// caller tries another edge); registrations, subscriptions and the calls' own
    /// requests are served as before. At `deadline`, the calls still up end: BYE on
    /// both legs saying why, and a [`CallEvent::Stopped`] to each call's task.
    pub fn drain(&mut self, now: Instant, deadline: Instant) {
        self.advance(now);
        self.accepting_calls = false;
        self.draining = true;
        self.drain_deadline = Some(deadline);
    }

    /// The calls this endpoint holds (ringing, answered, or ending).
    pub fn calls_up(&self) -> usize {
        self.calls.len()
    }

    /// Whether bridged calls are kept for the next edge at the drain deadline (the
    /// driver keeps their records on disk) rather than ended.
    pub fn set_keep_calls(&mut self, keep: bool) {
        self.keep_calls = keep;
    }

    /// The drain deadline: a bridged call whose record is kept is handed over to the
    /// next edge (no BYE: its audio goes on at the relay); every other call ends on
    /// both legs (Q.850 41, temporary failure: the caller may call again and reach
    /// another edge).
    pub(super) fn stop_calls(&mut self) {
        let ids: Vec<u64> = self.calls.keys().copied().collect();
        for id in ids {
            let kept = self.keep_calls && self.calls.get(&id).is_some_and(|c| c.persisted);
            if kept {
                tracing::info!(
                    id,
                    "drain deadline: the call is handed over to the next edge"
                );
                self.events.push_back(Event::Call {
                    id,
                    event: CallEvent::HandedOver,
                });
                if let Some(call) = self.calls.get_mut(&id) {
                    // Its record stays for the next edge.
                    call.persisted = false;
                }
                self.forget_call(id);
                continue;
            }
            tracing::warn!(id, "drain deadline: ending a call still up");
            self.events.push_back(Event::Call {
                id,
                event: CallEvent::Stopped { cause: 41 },
            });
            self.call_hangup_because(id, 41, Some("edge shutting down"));
        }
    }

    pub fn set_accepting_calls(&mut self, accepting: bool) {
        // A drain is not undone (a Lease won or a trunk loaded while draining).
        self.accepting_calls = accepting && !self.draining;
    }

    /// `nat=` of `peer` (its media is latched symmetrically).
    pub fn peer_nat(&self, peer: &str) -> bool {
        self.peers.get(peer).is_some_and(|p| p.nat)
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
                self.counters.refuse(RejectReason::NotAcceptable);
                let response =
                    crate::registrar::response(&request, 488, "Not Acceptable Here", &tag, vec![]);
                return Err(Box::new((tx, response)));
            }
            // No offer: the edge offers in its 200 (RFC 3264 late offer): not yet.
            None => {
                self.counters.refuse(RejectReason::NotAcceptable);
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
                self.counters.refuse(RejectReason::NotAcceptable);
                let response =
                    crate::registrar::response(&request, 488, "Not Acceptable Here", &tag, vec![]);
                return Err(Box::new((tx, response)));
            }
        }
        if !self.accepting_calls {
            self.counters.refuse(RejectReason::Unavailable);
            let retry = vec![rsip::Header::Other("Retry-After".into(), "60".into())];
            let response =
                crate::registrar::response(&request, 503, "Service Unavailable", &tag, retry);
            return Err(Box::new((tx, response)));
        };
        self.call_seq += 1;
        let (shard, shards) = self.shard;
        let id = self.call_seq * shards as u64 + shard as u64;
        let channel = format!(
            "SIP/{peer}-{:08x}",
            (self.tag_seed as u32).wrapping_add(id as u32)
        );
        let (caller_number, caller_name) = match &info.caller_id {
            Some(forced) => forced.clone(),
            None => caller_of(&request),
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
                bye_reason: None,
                media: None,
                persisted: false,
                branches: Vec::new(),
                bridged: None,
            },
        );
        self.gauge_calls();
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
    pub fn call_answer(&mut self, id: u64) -> Result<(), CallError> {
        let call = self.calls.get(&id).ok_or(CallError::Gone)?;
        match call.a_state {
            AState::Answered | AState::Confirmed => return Ok(()),
            AState::Ended => return Err(CallError::Ended),
            AState::Early => {}
        }
        let sdp = self.a_answer_sdp(id).ok_or(CallError::NoMedia)?;
        let call = self.calls.get(&id).ok_or(CallError::Gone)?;
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
    pub fn call_indicate(&mut self, id: u64, status: u16) -> Result<(), CallError> {
        let call = self.calls.get(&id).ok_or(CallError::Gone)?;
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
                let sdp = self.a_answer_sdp(id).ok_or(CallError::NoMedia)?;
                let call = self.calls.get(&id).ok_or(CallError::Gone)?;
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
        self.call_hangup_because(id, cause, None)
    }

    /// [`Self::call_hangup`], the BYEs saying why (RFC 3326: `Reason: Q.850;cause=..`,
    /// with `text` when given).
    pub fn call_hangup_because(&mut self, id: u64, cause: u32, text: Option<&str>) -> Option<u16> {
        let call = self.calls.get_mut(&id)?;
        call.bye_reason = Some(match text {
            Some(text) => format!(
                "Q.850;cause={cause};text=\"{}\"",
                text.replace(['"', '\\', '\r', '\n'], "")
            ),
            None => format!("Q.850;cause={cause}"),
        });
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
            if call.persisted {
                self.events.push_back(Event::CallState {
                    key: call.a_call_id.clone(),
                    record: None,
                });
            }
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
            self.gauge_calls();
        }
    }

    /// The shared calls-up gauge, by this shard's change.
    fn gauge_calls(&mut self) {
        let now = self.calls.len() as i64;
        self.counters.calls_active.inc_by(now - self.gauged.1);
        self.gauged.1 = now;
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
        let dialog = Dialog {
            call_id: call.a_call_id.clone(),
            local: from,
            remote: to,
            remote_target: call.a_remote_target.clone(),
            route: call.a_route.clone(),
        };
        let (cseq, path) = (call.a_cseq, call.a_path);
        let reason = call.bye_reason.clone();
        self.send_in_dialog("BYE", &dialog, cseq, path, reason.as_deref());
    }

    /// A request inside a dialog (BYE), in its own client transaction, along the
    /// dialog's route set.
    fn send_in_dialog(
        &mut self,
        method: &str,
        dialog: &Dialog,
        cseq: u32,
        path: Path,
        reason: Option<&str>,
    ) {
        let Some(local) = self.local_addr() else {
            return;
        };
        let branch = format!("z9hG4bK{}", self.tag());
        let via = Via::ours(path.reliable(), local, &branch);
        let mut extra = String::from("User-Agent: phone-sip-edge\r\n");
        if let Some(reason) = reason {
            extra.push_str(&format!("Reason: {reason}\r\n"));
        }
        let request = dialog.request(method, cseq, &via, &extra);
        self.start_client(branch, request.into_bytes(), path, self.now);
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
