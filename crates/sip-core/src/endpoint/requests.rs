//! A request that is not a retransmission: matched to its server transaction (RFC
//! 3261 §17.2.3) and handed to what answers it (registrar, calls, subscriptions).

use super::*;

impl SipCore {
    pub(super) fn request(&mut self, mut request: rsip::Request, path: Path, tag: String) {
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
                    self.counters.refuse(RejectReason::Unavailable);
                    let retry = vec![rsip::Header::Other("Retry-After".into(), "5".into())];
                    crate::registrar::response(&request, 503, "Service Unavailable", &tag, retry)
                } else {
                    let outcome = self.registrar.handle(self.unix(), &request, source, &tag);
                    if outcome.auth_failed {
                        self.auth_failed(path.peer().ip());
                    }
                    if let Some(line) = &outcome.changed {
                        tracing::debug!(line = %line, "registration changed");
                        self.persist([line]);
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
                    .unwrap_or_else(|| no_dialog(&self.counters, &request, &tag))
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
                .unwrap_or_else(|| no_dialog(&self.counters, &request, &tag)),
            _ => {
                self.counters.refuse(RejectReason::NotAllowed);
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
}

/// 481: a BYE, CANCEL or re-INVITE for no call the edge knows.
fn no_dialog(counters: &Counters, request: &rsip::Request, tag: &str) -> rsip::Response {
    counters.refuse(RejectReason::NoDialog);
    crate::registrar::response(request, 481, "Call/Transaction Does Not Exist", tag, vec![])
}

/// RFC 3261 §18.2.1 and RFC 3581 on the top Via (`sip_wire::header::stamp_via`).
fn stamp_via(request: &mut rsip::Request, source: SocketAddr) {
    let Some(via) = request.headers.iter_mut().find_map(|h| match h {
        rsip::Header::Via(v) => Some(v),
        _ => None,
    }) else {
        return;
    };
    if let Some(stamped) = sip_wire::header::stamp_via(via.value(), source) {
        *via = rsip::headers::Via::new(stamped);
    }
}
