//! `Dial()`: the B legs. One INVITE per target (every reachable contact of a line, or
//! the trunk), forked at once ([`crate::fork`]); their responses, CANCELs, the ACK of
//! a 2xx, a retry with the trunk's credentials after a challenge, and the BYE of the
//! bridged leg.

use super::*;

/// One outgoing INVITE of a Dial.
#[derive(Debug)]
pub(super) struct Branch {
    pub(super) channel: String,
    pub(super) peer: String,
    pub(super) request_uri: String,
    pub(super) call_id: String,
    pub(super) from: String,
    pub(super) to: String,
    pub(super) cseq: u32,
    pub(super) via_branch: String,
    pub(super) via: String,
    pub(super) contact: String,
    /// Headers only some INVITEs carry (P-Asserted-Identity, credentials).
    pub(super) extra: String,
    pub(super) sdp: String,
    /// The caller's location (PIDF-LO), conveyed by value with an emergency call.
    pub(super) location: Option<String>,
    pub(super) path: Path,
    /// The To with the callee's tag, once it answered.
    pub(super) remote_to: Option<String>,
    pub(super) remote_target: Option<String>,
    /// The callee's route set: its answer's Record-Route, reversed.
    pub(super) route: Vec<String>,
    /// The ACK for the 2xx, kept to answer its retransmissions.
    pub(super) ack: Option<Vec<u8>>,
    /// A CANCEL waiting for a provisional response (RFC 3261 §9.1).
    pub(super) cancel_pending: bool,
    /// A provisional response came: a CANCEL may be sent.
    pub(super) provisional: bool,
    pub(super) authenticated: bool,
    pub(super) last_status: u16,
}

impl Branch {
    /// The dialog the callee's answer made: `to` is its To (with its tag), `target` its
    /// Contact.
    pub(super) fn dialog(&self, to: String, target: String) -> sip_wire::build::Dialog {
        sip_wire::build::Dialog {
            call_id: self.call_id.clone(),
            local: self.from.clone(),
            remote: to,
            remote_target: target,
            route: self.route.clone(),
        }
    }

    /// The INVITE as it stands (a retry with credentials has a new Via, CSeq and
    /// `extra`).
    pub(super) fn invite(&self) -> Vec<u8> {
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
        let headers = format!(
            "{}Allow: {}\r\nUser-Agent: phone-sip-edge\r\n",
            self.extra,
            crate::endpoint::ALLOW
        );
        sip_wire::build::Outgoing {
            method: "INVITE",
            request_uri: &self.request_uri,
            via: &self.via,
            route: &[],
            from: &self.from,
            to: &self.to,
            call_id: &self.call_id,
            cseq: self.cseq,
            contact: Some(&self.contact),
            headers: &headers,
            body: Some((&content_type, &body)),
        }
        .to_bytes()
    }
}

/// The Content-ID of an INVITE's location part (unique with its Call-ID).
pub(super) fn location_cid(call_id: &str) -> String {
    format!("location-{}", call_id.replace(['<', '>', ' '], ""))
}

/// The ACK of a B leg's 2xx (and of its retransmissions).
pub(super) fn build_ack(branch: &Branch, local: Option<SocketAddr>, seed: &str) -> Vec<u8> {
    let local = local.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 5060)));
    let target = branch
        .remote_target
        .clone()
        .unwrap_or_else(|| branch.request_uri.clone());
    let to = branch
        .remote_to
        .clone()
        .unwrap_or_else(|| branch.to.clone());
    let via = Via::ours(
        branch.path.reliable(),
        local,
        &format!("z9hG4bK{seed}a{}", branch.cseq),
    );
    // §13.2.2.4: the ACK of a 2xx is a request in the dialog with the INVITE's CSeq.
    branch
        .dialog(to, target)
        .request("ACK", branch.cseq, &via, "")
        .into_bytes()
}

impl SipCore {
    /// Where a Dial to `line` rings: each of its registered contacts that answers its
    /// keep-alives, as (Request-URI, path).
    pub fn contacts(&self, line: &str) -> Vec<(String, Path)> {
        self.registrations(Some(line))
            .into_iter()
            .filter(|(line, binding)| self.reachable(line, &binding.contact))
            .filter_map(|(_, binding)| Some((uri_of(&binding.contact), self.path_to(&binding)?)))
            .collect()
    }

    /// A 2xx to a B leg's INVITE whose call is gone (the caller's CANCEL or the Dial's
    /// timeout crossed the callee's answer): ACK it, each time it comes, and end the
    /// dialog it made with one BYE (RFC 3261 §15, §13.2.2.4).
    pub(in crate::endpoint) fn orphan_answer(
        &mut self,
        branch: &str,
        invite: &[u8],
        response: &[u8],
        path: Path,
    ) {
        let (Ok(invite), Ok(response)) = (
            rsip::Request::try_from(invite),
            rsip::Response::try_from(response),
        ) else {
            return;
        };
        if !(200..300).contains(&response.status_code.code()) {
            return;
        }
        let parties = sip_wire::build::request_parties(&invite);
        let answer = sip_wire::build::response_parties(&response);
        let (Some(parties), Some(answer)) = (parties, answer) else {
            return;
        };
        let target = response
            .contact_header()
            .map(|c| sip_wire::build::uri(c.value()).to_owned())
            .unwrap_or_else(|_| invite.uri.to_string());
        let mut route = record_route(&response.headers);
        route.reverse();
        let dialog = sip_wire::build::Dialog {
            call_id: parties.call_id,
            local: parties.from,
            remote: answer.to,
            remote_target: target,
            route,
        };
        let Some(local) = self.local_addr() else {
            return;
        };
        let via = Via::ours(path.reliable(), local, &format!("{branch}a"));
        let ack = dialog.request("ACK", parties.cseq, &via, "");
        self.send(path, ack.into_bytes());
        if self.orphans.insert(branch.to_owned()) {
            tracing::info!(call_id = %dialog.call_id, "a callee answered after the call ended: BYE");
            self.send_in_dialog("BYE", &dialog, parties.cseq + 1, path, None);
        }
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
    ) -> Result<(), CallError> {
        let now = self.now;
        let local = self.local_addr().ok_or(CallError::NoSocket)?;
        let call = self.calls.get(&id).ok_or(CallError::Gone)?;
        let offer = call.a_offer.clone().ok_or(CallError::NoOffer)?;
        let relay_b = call.relay_b.ok_or(CallError::NoMedia)?;
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
                destinations.extend(target.contacts.iter().cloned());
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
                let via = Via::ours(path.reliable(), local, &via_branch);
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
        let call = self.calls.get_mut(&id).ok_or(CallError::Gone)?;
        call.dial_command = command_id;
        call.branches = branches;
        call.fork = Some(fork);
        self.fork_actions(id, actions, now);
        Ok(())
    }

    pub(super) fn fork_actions(&mut self, id: u64, actions: Vec<ForkAction>, now: Instant) {
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

    pub(super) fn branch_nat(&self, id: u64, index: usize) -> bool {
        self.calls
            .get(&id)
            .and_then(|c| c.branches.get(index))
            .and_then(|b| self.peers.get(&b.peer))
            .is_some_and(|p| p.nat)
    }

    /// Remembered SDP answers of branches, by (call, branch).
    pub(super) fn branch_sdp_remote(&self, id: u64, index: usize) -> Option<SocketAddr> {
        self.branch_sdp.get(&(id, index)).and_then(sdp_remote)
    }

    pub(super) fn cancel_branch(&mut self, id: u64, index: usize, now: Instant) {
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
        let invite = branch.invite();
        let cancel = rsip::Request::try_from(invite.as_slice())
            .ok()
            .and_then(|invite| sip_wire::build::cancel(&invite));
        let Some(cancel) = cancel else {
            tracing::warn!(channel = %branch.channel, "cannot build the CANCEL of a B leg");
            return;
        };
        let cancel = cancel.to_string();
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
    pub(super) fn branch_answered(&mut self, id: u64, index: usize, now: Instant) {
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
        self.persist_call(id);
    }

    /// A response on a B leg's INVITE (or its CANCEL) client transaction.
    pub(in crate::endpoint) fn branch_event(
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
            self.outbox
                .push_back(crate::endpoint::Datagram { path, bytes: ack });
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
    pub(super) fn retry_with_credentials(
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
    pub(super) fn end_branches(&mut self, id: u64, except: Option<usize>) {
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
    pub(super) fn bye_branch(&mut self, id: u64, index: usize) {
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
        let dialog = branch.dialog(to, target);
        let (cseq, path) = (branch.cseq, branch.path);
        let reason = self.calls.get(&id).and_then(|c| c.bye_reason.clone());
        self.send_in_dialog("BYE", &dialog, cseq, path, reason.as_deref());
    }
}
