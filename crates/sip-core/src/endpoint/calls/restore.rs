//! Answered calls across a restart of the edge. Once a call is bridged, its two
//! dialogs (RFC 3261 §12: Call-IDs, tags, CSeqs, route sets, remote targets, the
//! transport) and its relay session go out as a [`CallRecord`] for the driver to keep
//! on disk; when the call ends, its removal does. An edge started again loads the
//! records back ([`SipCore::restore_call`]): the calls are bridged as before, and the
//! BYEs, re-INVITEs and retransmissions of either side are answered as they would
//! have been. Audio never passed through the edge: it went on at the relay meanwhile.
//! The dialplan is not resumed (the router's stream ended with the old process), so
//! a restored call only waits for its end.

use serde::{Deserialize, Serialize};

use super::*;

/// Where a call's media is: the relay (its gRPC URL) and the session there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MediaRef {
    pub relay: String,
    pub session_id: String,
}

/// A bridged call's state, as much as its dialogs need (see the module's docs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallRecord {
    pub channel: String,
    pub peer: String,
    /// The caller's INVITE as it came (its Via, From, To, Record-Route and SDP are
    /// what the responses and the edge's requests on leg A derive from).
    pub a_invite: String,
    /// Its Call-ID: the record's key.
    pub a_call_id: String,
    pub a_peer: SocketAddr,
    pub a_reliable: bool,
    pub a_tag: String,
    pub a_remote_target: String,
    pub a_route: Vec<String>,
    pub a_cseq: u32,
    pub relay_a: Option<(IpAddr, u16)>,
    pub relay_b: Option<(IpAddr, u16)>,
    pub media: Option<MediaRef>,
    /// Unix milliseconds when the callee answered.
    pub answered_at_ms: u64,
    pub callee: CalleeRecord,
}

/// The bridged B leg.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CalleeRecord {
    pub channel: String,
    pub peer: String,
    pub request_uri: String,
    pub call_id: String,
    pub from: String,
    pub to: String,
    pub remote_to: String,
    pub remote_target: String,
    pub route: Vec<String>,
    pub cseq: u32,
    pub via_branch: String,
    pub via: String,
    pub contact: String,
    pub peer_addr: SocketAddr,
    pub reliable: bool,
    /// The ACK of its 2xx, sent again if the 2xx comes again.
    pub ack: Option<String>,
}

impl SipCore {
    /// Where the task keeps the call's media: part of the call's record.
    pub fn call_set_media_ref(&mut self, id: u64, media: MediaRef) {
        if let Some(call) = self.calls.get_mut(&id) {
            call.media = Some(media);
        }
    }

    /// The record of a bridged call whose caller has been answered; `None` before.
    pub(super) fn call_record(&self, id: u64) -> Option<CallRecord> {
        let call = self.calls.get(&id)?;
        if !matches!(call.a_state, AState::Answered | AState::Confirmed) {
            return None;
        }
        let (index, since) = call.bridged?;
        let b = call.branches.get(index)?;
        let answered_at_ms = self
            .unix_ms()
            .saturating_sub(self.now.saturating_duration_since(since).as_millis() as u64);
        Some(CallRecord {
            channel: call.channel.clone(),
            peer: call.peer.clone(),
            a_invite: call.a_invite.to_string(),
            a_call_id: call.a_call_id.clone(),
            a_peer: call.a_path.peer,
            a_reliable: call.a_path.reliable,
            a_tag: call.a_tag.clone(),
            a_remote_target: call.a_remote_target.clone(),
            a_route: call.a_route.clone(),
            a_cseq: call.a_cseq,
            relay_a: call.relay_a,
            relay_b: call.relay_b,
            media: call.media.clone(),
            answered_at_ms,
            callee: CalleeRecord {
                channel: b.channel.clone(),
                peer: b.peer.clone(),
                request_uri: b.request_uri.clone(),
                call_id: b.call_id.clone(),
                from: b.from.clone(),
                to: b.to.clone(),
                remote_to: b.remote_to.clone()?,
                remote_target: b.remote_target.clone()?,
                route: b.route.clone(),
                cseq: b.cseq,
                via_branch: b.via_branch.clone(),
                via: b.via.clone(),
                contact: b.contact.clone(),
                peer_addr: b.path.peer,
                reliable: b.path.reliable,
                ack: b
                    .ack
                    .as_ref()
                    .map(|a| String::from_utf8_lossy(a).into_owned()),
            },
        })
    }

    /// Hands the call's record to the driver when it changes, and its removal when the
    /// call ends.
    pub(super) fn persist_call(&mut self, id: u64) {
        if !self.keep_calls {
            return;
        }
        let Some(record) = self.call_record(id) else {
            return;
        };
        if let Some(call) = self.calls.get_mut(&id) {
            call.persisted = true;
        }
        self.events.push_back(Event::CallState {
            key: record.a_call_id.clone(),
            record: Some(Box::new(record)),
        });
    }

    /// A B leg's 2xx come again with no transaction to absorb it (the call was
    /// restored, or its transaction has ended): its ACK again. False if the branch is
    /// not a B leg's with an ACK.
    pub(in crate::endpoint) fn ack_again(&mut self, branch: &str) -> bool {
        let Some(&(id, index)) = self.branch_owner.get(branch) else {
            return false;
        };
        let Some(b) = self.calls.get(&id).and_then(|c| c.branches.get(index)) else {
            return false;
        };
        let Some(ack) = b.ack.clone() else {
            return false;
        };
        let path = b.path;
        self.send(path, ack);
        true
    }

    /// A call from before a restart, bridged again from its record: what its task
    /// needs (the id on this endpoint, the caller), or `None` if the record does not
    /// hold together (its INVITE does not parse, or a call has its Call-ID already).
    pub fn restore_call(&mut self, record: CallRecord) -> Option<NewCall> {
        let a_invite = rsip::Request::try_from(record.a_invite.as_bytes()).ok()?;
        let a_call_id = a_invite.call_id_header().ok()?.value().to_owned();
        if a_call_id != record.a_call_id {
            return None;
        }
        if self.call_ids.contains_key(&a_call_id)
            || self.call_ids.contains_key(&record.callee.call_id)
        {
            return None;
        }
        let a_key = {
            let via = a_invite.via_header().ok()?.value().to_owned();
            let branch = sip_wire::header::Via::parse(&via)
                .and_then(|v| v.branch().map(str::to_owned))
                .unwrap_or_default();
            format!("{branch}|restored|INVITE")
        };
        self.call_seq += 1;
        let (shard, shards) = self.shard;
        let id = self.call_seq * shards as u64 + shard as u64;
        let talked = Duration::from_millis(self.unix_ms().saturating_sub(record.answered_at_ms));
        let since = self.now.checked_sub(talked).unwrap_or(self.now);
        let a_offer = std::str::from_utf8(&a_invite.body)
            .ok()
            .and_then(|t| sdp::Session::parse(t).ok());
        let c = record.callee;
        let path = |peer, reliable| Path { peer, reliable };
        let branch = Branch {
            channel: c.channel,
            peer: c.peer,
            request_uri: c.request_uri,
            call_id: c.call_id.clone(),
            from: c.from,
            to: c.to,
            cseq: c.cseq,
            via_branch: c.via_branch.clone(),
            via: c.via,
            contact: c.contact,
            extra: String::new(),
            sdp: String::new(),
            location: None,
            path: path(c.peer_addr, c.reliable),
            remote_to: Some(c.remote_to),
            remote_target: Some(c.remote_target),
            route: c.route,
            ack: c.ack.map(String::into_bytes),
            cancel_pending: false,
            provisional: true,
            authenticated: false,
            last_status: 200,
        };
        self.call_ids.insert(a_call_id.clone(), (id, None));
        self.call_ids.insert(c.call_id, (id, Some(0)));
        self.branch_owner.insert(c.via_branch, (id, 0));
        self.calls.insert(
            id,
            Call {
                channel: record.channel.clone(),
                peer: record.peer,
                a_invite,
                a_key,
                a_path: path(record.a_peer, record.a_reliable),
                a_tag: record.a_tag,
                a_call_id,
                a_state: AState::Confirmed,
                a_final: Some(200),
                a_remote_target: record.a_remote_target,
                a_route: record.a_route,
                a_cseq: record.a_cseq,
                a_offer,
                a_ok: None,
                relay_a: record.relay_a,
                relay_b: record.relay_b,
                fork: None,
                dial_command: 0,
                branches: vec![branch],
                bridged: Some((0, since)),
                bye_reason: None,
                media: record.media,
                persisted: true,
            },
        );
        tracing::info!(channel = %record.channel, "call restored");
        self.gauge_calls();
        let call = self.calls.get(&id)?;
        let (caller_number, caller_name) = caller_of(&call.a_invite);
        Some(NewCall {
            id,
            channel: call.channel.clone(),
            peer: call.peer.clone(),
            exten: call.a_invite.uri.user().unwrap_or("s").to_owned(),
            caller_number,
            caller_name,
            call_id: call.a_call_id.clone(),
            caller_media: call.a_offer.as_ref().and_then(sdp_remote),
            caller_nat: false,
            codecs: Vec::new(),
            event_payload_types: Vec::new(),
        })
    }
}
