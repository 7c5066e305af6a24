//! Inside a call's dialogs: the caller's CANCEL, ACK and BYE, the callee's BYE,
//! re-INVITEs on either leg (hold and resume), the dialog timers (the 200's
//! retransmission until its ACK, the Dial timeout), and route sets (RFC 3261 §12.1).

use super::*;

impl SipCore {
    /// Whether `request` (ACK, BYE, re-INVITE) is in the dialog of the call's leg: its
    /// To carries our tag on that leg (RFC 3261 §12.2.2). A request of an earlier call
    /// that had the same Call-ID is not.
    fn in_dialog(&self, id: u64, leg: Option<usize>, request: &rsip::Request) -> bool {
        let Some(call) = self.calls.get(&id) else {
            return false;
        };
        let ours = match leg {
            None => Some(call.a_tag.as_str()),
            Some(index) => call
                .branches
                .get(index)
                .and_then(|b| sip_wire::build::tag(&b.from)),
        };
        let theirs = request
            .to_header()
            .ok()
            .and_then(|to| sip_wire::build::tag(to.value()));
        ours.is_some() && theirs == ours
    }

    /// The caller ended its leg (CANCEL, or BYE): an INVITE not answered yet gets 487
    /// (§9.2, and §15.1.2 for a BYE, else its transaction waits for ever), the B legs a
    /// CANCEL or a BYE, the task `CallerGone`; the call is forgotten.
    fn caller_left(&mut self, id: u64) {
        let Some(call) = self.calls.get(&id) else {
            return;
        };
        if call.a_state == AState::Early {
            let terminated = crate::registrar::response(
                &call.a_invite,
                487,
                "Request Terminated",
                &call.a_tag,
                vec![],
            );
            self.respond_a(id, terminated);
        }
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        let status = call.a_final;
        call.a_state = AState::Ended;
        call.a_ok = None;
        self.end_branches(id, None);
        let event = CallEvent::CallerGone { cause: 16, status };
        self.events.push_back(Event::Call { id, event });
        self.forget_call(id);
    }

    /// BYE, CANCEL, ACK and re-INVITE inside a call; false if the request is not for a
    /// call (the caller answers it as before).
    pub(in crate::endpoint) fn call_request(
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
                self.caller_left(id);
                Some(crate::registrar::response(request, 200, "OK", tag, vec![]))
            }
            rsip::Method::Ack => {
                let (id, leg) = *self.call_ids.get(&call_id)?;
                if leg.is_none() && self.in_dialog(id, leg, request) {
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
                if !self.in_dialog(id, leg, request) {
                    return None;
                }
                let ok = crate::registrar::response(request, 200, "OK", tag, vec![]);
                match leg {
                    None => self.caller_left(id),
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
                if !self.in_dialog(id, leg, request) {
                    return None;
                }
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
                    self.counters.refuse(RejectReason::NotAcceptable);
                    return Some(crate::registrar::response(
                        request,
                        488,
                        "Not Acceptable Here",
                        tag,
                        vec![],
                    ));
                };
                let Ok(mut answer) = offer.anchored(&codecs, relay, "phone") else {
                    self.counters.refuse(RejectReason::NotAcceptable);
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
    pub(in crate::endpoint) fn call_tick(&mut self, now: Instant) {
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
                    self.outbox
                        .push_back(crate::endpoint::Datagram { path, bytes });
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
}

/// The entries of a message's Record-Route headers, in order (a header may hold several,
/// comma-separated).
pub(super) fn record_route(headers: &rsip::Headers) -> Vec<String> {
    headers
        .iter()
        .filter_map(|header| match header {
            rsip::Header::RecordRoute(rr) => Some(rr.value()),
            _ => None,
        })
        .flat_map(sip_wire::header::split_list)
        .map(str::to_owned)
        .collect()
}

/// `extra` with the request's Record-Route headers after it (§12.1.1: the UAS copies
/// them into every response that makes a dialog).
pub(super) fn echo_record_route(
    request: &rsip::Request,
    mut extra: Vec<rsip::Header>,
) -> Vec<rsip::Header> {
    extra.extend(
        request
            .headers
            .iter()
            .filter(|h| matches!(h, rsip::Header::RecordRoute(_)))
            .cloned(),
    );
    extra
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
        assert_eq!(echo_record_route(&request, vec![]).len(), 2);
    }
}
