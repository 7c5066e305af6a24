//! Message waiting (RFC 3842): message-summary subscriptions (RFC 3265) and the
//! NOTIFYs that light a phone's lamp when the voicemail's counts change.

use super::*;

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

/// A line's `mailbox=` as `box@context` (`box` alone is `box@default`).
pub fn mailbox_key(mailbox: &str) -> String {
    if mailbox.contains('@') {
        mailbox.to_owned()
    } else {
        format!("{mailbox}@default")
    }
}

/// An `application/simple-message-summary` body (RFC 3842 §5.2) for `account` at
/// `host`: counts are new, old, urgent new, urgent old.
pub(super) fn message_summary(account: &str, host: std::net::IpAddr, counts: [u32; 4]) -> String {
    let [new, old, urgent_new, urgent_old] = counts;
    format!(
        "Messages-Waiting: {}\r\nMessage-Account: sip:{account}@{host}\r\nVoice-Message: {new}/{old} ({urgent_new}/{urgent_old})\r\n",
        if new > 0 { "yes" } else { "no" },
    )
}

impl SipCore {
    /// Which lines show which mailbox (`box@context` -> lines).
    pub fn set_mwi_lines(&mut self, lines: HashMap<String, Vec<String>>) {
        self.mwi_lines = lines;
    }

    /// The lines with a subscription to `mailbox@context` on this endpoint.
    pub fn subscribed_lines(&self, mailbox: &str, context: &str) -> Vec<String> {
        let key = mailbox_in(mailbox, context);
        self.subscriptions
            .values()
            .filter(|s| s.mailbox == key)
            .map(|s| s.line.clone())
            .collect()
    }

    /// New message counts (new, old, urgent new, urgent old) of `mailbox@context` (RFC
    /// 3842): a NOTIFY in each subscription's dialog, and an unsolicited one to every
    /// reachable binding of the lines that show it and have no subscription, here or
    /// on another shard (`subscribed_elsewhere`: a subscription lives on the shard of
    /// its subscriber, which need not be its line's). Returns how many were sent.
    pub fn update_mailbox(
        &mut self,
        mailbox: &str,
        context: &str,
        [new, old, urgent_new, urgent_old]: [u32; 4],
        subscribed_elsewhere: &[String],
    ) -> u32 {
        let context = default_context(context);
        let key = mailbox_in(mailbox, context);
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
        let mut subscribed_lines = subscribed_elsewhere.to_vec();
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
                let notify = sip_wire::build::Outgoing {
                    method: "NOTIFY",
                    request_uri: &binding.contact,
                    via: &Via::ours(path.reliable(), local, &branch),
                    route: &[],
                    from: &format!("<sip:{mailbox}@{local}>;tag={tag}"),
                    to: &format!("<{}>", binding.contact),
                    call_id: &format!("{tag}@{local}"),
                    cseq: 1,
                    contact: None,
                    headers: "Event: message-summary\r\nSubscription-State: active\r\n",
                    body: Some(("application/simple-message-summary", &body)),
                }
                .to_bytes();
                self.start_client(branch, notify, path, now);
                sent += 1;
            }
        }
        sent
    }

    /// The mailbox a line shows: the one whose `mailbox=` names it, else its own name.
    pub(super) fn mailbox_of(&self, line: &str) -> String {
        self.mwi_lines
            .iter()
            .find(|(_, lines)| lines.iter().any(|l| l == line))
            .map(|(key, _)| key.clone())
            .unwrap_or_else(|| format!("{line}@default"))
    }

    /// Sends the current counts in the subscription's dialog (RFC 3842 §5); `last` ends
    /// it (`Subscription-State: terminated`).
    pub(super) fn notify_subscription(&mut self, call_id: &str, last: bool) {
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
        let notify = sip_wire::build::Outgoing {
            method: "NOTIFY",
            request_uri: &sub.target,
            via: &Via::ours(sub.path.reliable(), local, &branch),
            route: &[],
            from: &sub.local,
            to: &sub.remote,
            call_id,
            cseq: sub.cseq,
            contact: Some(&format!("<sip:edge@{local}>")),
            headers: &format!("Event: message-summary\r\nSubscription-State: {state}\r\n"),
            body: Some(("application/simple-message-summary", &body)),
        }
        .to_bytes();
        let path = sub.path;
        self.start_client(branch, notify, path, now);
    }

    /// A SUBSCRIBE: message-summary only, from an authenticated line.
    pub(super) fn subscribe(
        &mut self,
        request: &rsip::Request,
        path: &Path,
        tag: &str,
    ) -> rsip::Response {
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
}

/// `mailbox@context`, the context `default` when empty.
fn mailbox_in(mailbox: &str, context: &str) -> String {
    format!("{mailbox}@{}", default_context(context))
}

fn default_context(context: &str) -> &str {
    if context.is_empty() {
        "default"
    } else {
        context
    }
}
