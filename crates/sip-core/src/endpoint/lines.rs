//! The lines' side: digest authentication of requests (with the ban after failures),
//! the registrations and their persistence, and the keep-alive probes (`qualify=`)
//! that decide whether a binding is reachable.

use super::*;

impl SipCore {
    /// A wrong password from `source`: counted, and banned after repeated tries.
    pub(super) fn auth_failed(&mut self, source: std::net::IpAddr) {
        self.counters.auth_failures.inc();
        self.counters.refuse(RejectReason::AuthFailed);
        if self.guard.auth_failed(self.now, source) {
            self.counters.bans.inc();
            tracing::warn!(%source, "banned after repeated authentication failures");
        }
    }

    /// The line a request proves itself to be with digest (407 challenge), or the
    /// response to send; wrong passwords count towards a ban.
    pub(super) fn authenticate(
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

    /// Whether a binding answers its keep-alives (true when not qualified).
    pub fn reachable(&self, line: &str, contact: &str) -> bool {
        self.qualifier.reachable(line, contact)
    }

    /// Current registrations (at the endpoint's last input), for the gRPC API.
    pub fn registrations(&self, peer: Option<&str>) -> Vec<(String, Binding)> {
        let now = self.unix();
        // One line's bindings, or every line's: copied, but never the whole table for
        // one line (a Dial asks for its line's contacts).
        let mut out: Vec<(String, Binding)> = match peer {
            Some(line) => live(line, self.registrar.bindings_of(line), now).collect(),
            None => self
                .registrar
                .lines_with_bindings()
                .flat_map(|(line, bindings)| live(line, bindings, now))
                .collect(),
        };
        out.sort_by(|a, b| (&a.0, &a.1.contact).cmp(&(&b.0, &b.1.contact)));
        out
    }

    pub(super) fn update_gauge(&mut self) {
        let now = self.registrar.binding_count() as i64;
        self.counters.registrations.inc_by(now - self.gauged.0);
        self.gauged.0 = now;
    }

    /// Marks the bindings of `lines` changed; `handle_timeout` hands them out for
    /// writing and updates the gauge.
    pub(super) fn persist<'a>(&mut self, lines: impl IntoIterator<Item = &'a String>) {
        self.dirty = true;
        if self.persist {
            self.changed.extend(lines.into_iter().cloned());
        }
    }

    /// The bindings of the lines that changed since they were last handed out: each
    /// line's whole list, empty when it has none left.
    fn changes(&mut self) -> HashMap<String, Vec<Binding>> {
        let lines = std::mem::take(&mut self.changed);
        lines
            .into_iter()
            .map(|line| {
                let bindings = self.registrar.bindings_of(&line).to_vec();
                (line, bindings)
            })
            .collect()
    }

    /// The changes not handed out yet (at shutdown).
    pub fn flush(&mut self) -> Option<HashMap<String, Vec<Binding>>> {
        if !self.dirty || !self.persist {
            return None;
        }
        self.dirty = false;
        self.last_write = self.now;
        Some(self.changes())
    }

    /// When bindings changed and the last hand-out is `PERSIST_EVERY` old: the changed
    /// lines' bindings, for the driver to append to its journal (a copy of the whole
    /// table each second, with thousands of lines, overflowed the SIP socket's receive
    /// buffer). Updates the registrations gauge as well.
    pub(super) fn due_persistence(&mut self, now: Instant) {
        if !self.dirty || now.duration_since(self.last_write) < PERSIST_EVERY {
            return;
        }
        self.update_gauge();
        self.dirty = false;
        self.last_write = now;
        if self.persist {
            let changes = self.changes();
            self.events.push_back(Event::Persist(changes));
        }
    }

    /// Where to send a request to a binding: its source for `nat=yes`, else its
    /// Contact's address; over its own TCP connection when it registered over TCP.
    pub(super) fn path_to(&self, binding: &Binding) -> Option<Path> {
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

    pub(super) fn probe(&mut self, key: &Key, now: Instant) {
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
        let options = sip_wire::build::Outgoing {
            method: "OPTIONS",
            request_uri: &binding.contact,
            via: &Via::ours(path.reliable(), local, &branch),
            route: &[],
            from: &format!("<sip:asterisk@{local}>;tag={tag}"),
            to: &format!("<{}>", binding.contact),
            call_id: &format!("{tag}@{local}"),
            cseq: 1,
            contact: None,
            headers: "",
            body: None,
        };
        self.qualifier.sent(key, branch.clone(), now);
        self.start_client(branch, options.to_bytes(), path, now);
    }
}

/// A line's bindings that have not expired at `now`, with the line's name.
fn live<'a>(
    line: &'a str,
    bindings: &'a [Binding],
    now: u64,
) -> impl Iterator<Item = (String, Binding)> + 'a {
    bindings
        .iter()
        .filter(move |b| b.expires_at > now)
        .map(move |b| (line.to_owned(), b.clone()))
}
