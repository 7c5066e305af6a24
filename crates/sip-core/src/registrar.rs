//! The registrar (RFC 3261 §10.3), sans-IO: REGISTER in, response out, and the table of
//! where each line (a `host=dynamic` peer of sip.conf) can be reached.
//!
//! - Every REGISTER without valid credentials is challenged, `qop="auth"`, with the
//!   configured algorithms (MD5 by default; SHA-256 then MD5 per RFC 8760 when set). The answer to a bad user name and to
//!   a bad password is the same `403`, after the same work ([`crate::digest::verify`]).
//! - The authenticated user must be the line (the peer's name, as chan_sip uses it).
//! - Expiry: the contact's `expires` parameter, else the `Expires` header, else the
//!   default; above the maximum it is lowered, below the minimum (but not 0) the request
//!   gets `423` with `Min-Expires`. `0` removes the binding; `*` with `Expires: 0`
//!   removes them all.
//! - Ordering (§10.3 step 7): a binding is only replaced by a request of the same
//!   Call-ID with a higher CSeq, or of another Call-ID.
//! - A line holds at most [`RegistrarConfig::max_contacts`] bindings; the one that
//!   expires first gives way.
//! - `nat=yes`: the binding remembers the address and transport the REGISTER came
//!   from; that, not the Contact, is where the line is reached.
//!
//! Bindings are plain data ([`Binding`]) that serialize, so the edge can persist them.

use std::collections::HashMap;
use std::net::SocketAddr;

use rsip::prelude::*;
use serde::{Deserialize, Serialize};

use crate::digest::{self, Algorithm, Challenge, Credentials, NonceAuthority, Verdict};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrarConfig {
    pub realm: String,
    /// The algorithms challenged with, in order of preference. MD5 alone by default, as
    /// chan_sip: some phones (baresip 1.0's libre among them) fail a whole challenge
    /// that lists SHA-256. RFC 8760 deployments set SHA-256 then MD5.
    pub algorithms: Vec<Algorithm>,
    pub min_expires: u32,
    pub max_expires: u32,
    pub default_expires: u32,
    pub max_contacts: usize,
}

impl Default for RegistrarConfig {
    /// chan_sip's defaults: realm "asterisk", 60..3600 s, 120 s.
    fn default() -> Self {
        Self {
            realm: "asterisk".into(),
            algorithms: vec![Algorithm::Md5],
            min_expires: 60,
            max_expires: 3600,
            default_expires: 120,
            max_contacts: 10,
        }
    }
}

/// A line that may register.
#[derive(Debug, Clone)]
pub struct Line {
    pub name: String,
    pub secret: Option<String>,
    pub nat: bool,
}

/// Where a line can be reached, until when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Binding {
    /// The Contact URI as the phone gave it.
    pub contact: String,
    /// Unix seconds.
    pub expires_at: u64,
    /// The address and transport the REGISTER came from.
    pub source: SocketAddr,
    pub transport: String,
    pub call_id: String,
    pub cseq: u32,
    pub user_agent: Option<String>,
    /// Where requests to this binding go: `source` for `nat=yes`, else the Contact's.
    pub nat: bool,
    /// When the phone last registered this binding (Unix seconds; 0 in bindings saved
    /// before it was kept).
    #[serde(default)]
    pub registered_at: u64,
}

/// How a request reached us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Source {
    pub addr: SocketAddr,
    pub reliable: bool,
}

/// Who sent a request, after authentication.
#[derive(Debug)]
pub enum Authenticated {
    /// The line the credentials are for.
    Line(String),
    /// Challenge or refuse with this response; `failed` when credentials were wrong.
    Respond {
        response: rsip::Response,
        failed: bool,
    },
}

/// What a REGISTER did.
#[derive(Debug)]
pub struct Outcome {
    pub response: rsip::Response,
    /// The line whose bindings changed (to persist and to report).
    pub changed: Option<String>,
    /// Authentication failed (for the ban counter).
    pub auth_failed: bool,
}

pub struct Registrar {
    config: RegistrarConfig,
    lines: HashMap<String, Line>,
    bindings: HashMap<String, Vec<Binding>>,
    nonces: NonceAuthority,
}

impl Registrar {
    pub fn new(config: RegistrarConfig, lines: Vec<Line>, nonce_secret: [u8; 32]) -> Self {
        Self {
            config,
            lines: lines.into_iter().map(|l| (l.name.clone(), l)).collect(),
            bindings: HashMap::new(),
            nonces: NonceAuthority::new(nonce_secret, 300),
        }
    }

    /// The bindings of `line` that have not expired at `now`.
    pub fn contacts(&self, line: &str, now: u64) -> Vec<&Binding> {
        self.bindings
            .get(line)
            .map(|b| b.iter().filter(|b| b.expires_at > now).collect())
            .unwrap_or_default()
    }

    /// Removes expired bindings; returns the lines that changed.
    pub fn expire(&mut self, now: u64) -> Vec<String> {
        let mut changed = Vec::new();
        for (line, bindings) in &mut self.bindings {
            let before = bindings.len();
            bindings.retain(|b| b.expires_at > now);
            if bindings.len() != before {
                changed.push(line.clone());
            }
        }
        self.bindings.retain(|_, b| !b.is_empty());
        changed
    }

    /// Every line with bindings (expired ones included until `expire` runs).
    pub fn lines_with_bindings(&self) -> impl Iterator<Item = (&str, &[Binding])> {
        self.bindings
            .iter()
            .map(|(l, b)| (l.as_str(), b.as_slice()))
    }

    /// Replaces the lines that may register (the file's and the resources' after a
    /// change). The bindings of lines that are gone end; their names are returned.
    pub fn set_lines(&mut self, lines: Vec<Line>) -> Vec<String> {
        self.lines = lines.into_iter().map(|l| (l.name.clone(), l)).collect();
        let gone: Vec<String> = self
            .bindings
            .keys()
            .filter(|line| !self.lines.contains_key(*line))
            .cloned()
            .collect();
        for line in &gone {
            self.bindings.remove(line);
        }
        gone
    }

    /// Whether `name` is a line that may register.
    pub fn has_line(&self, name: &str) -> bool {
        self.lines.contains_key(name)
    }

    /// How many bindings there are (expired ones included until `expire` runs).
    pub fn binding_count(&self) -> usize {
        self.bindings.values().map(Vec::len).sum()
    }

    /// Every binding, for persisting.
    /// A line's bindings, expired or not.
    pub fn bindings_of(&self, line: &str) -> &[Binding] {
        self.bindings.get(line).map_or(&[], Vec::as_slice)
    }

    pub fn snapshot(&self) -> HashMap<String, Vec<Binding>> {
        self.bindings.clone()
    }

    /// Restores persisted bindings (of lines that still exist, not yet expired).
    pub fn restore(&mut self, saved: HashMap<String, Vec<Binding>>, now: u64) {
        for (line, bindings) in saved {
            if self.lines.contains_key(&line) {
                let live: Vec<Binding> = bindings
                    .into_iter()
                    .filter(|b| b.expires_at > now)
                    .collect();
                if !live.is_empty() {
                    self.bindings.insert(line, live);
                }
            }
        }
    }

    /// Handles a REGISTER received at `now` (Unix seconds); `to_tag` is the To tag of
    /// our response.
    pub fn handle(
        &mut self,
        now: u64,
        request: &rsip::Request,
        source: Source,
        to_tag: &str,
    ) -> Outcome {
        let outcome = |response, changed, auth_failed| Outcome {
            response,
            changed,
            auth_failed,
        };
        let Some(line_name) = request
            .to_header()
            .ok()
            .and_then(|h| h.typed().ok())
            .and_then(|to| to.uri.user().map(str::to_owned))
        else {
            return outcome(
                response(request, 400, "No user in To", to_tag, vec![]),
                None,
                false,
            );
        };

        let authorization = request.authorization_header().map(|a| a.value().to_owned());
        let Some(authorization) = authorization else {
            return outcome(self.challenge(request, now, to_tag, false), None, false);
        };
        let credentials = match Credentials::parse(&authorization) {
            Ok(c) => c,
            Err(_) => return outcome(self.challenge(request, now, to_tag, false), None, true),
        };
        if !self.config.algorithms.contains(&credentials.algorithm) {
            // Not an algorithm we offered: no downgrade to one we did not choose.
            return outcome(
                response(request, 403, "Forbidden", to_tag, vec![]),
                None,
                true,
            );
        }
        let line = self.lines.get(&line_name).cloned();
        let password = line
            .as_ref()
            .filter(|_| credentials.username == line_name)
            .and_then(|l| l.secret.clone());
        match digest::verify(
            &mut self.nonces,
            &credentials,
            &self.config.realm,
            "REGISTER",
            password.as_deref(),
            now,
        ) {
            Verdict::Ok => {}
            Verdict::Stale => {
                return outcome(self.challenge(request, now, to_tag, true), None, false)
            }
            Verdict::Rejected => {
                return outcome(
                    response(request, 403, "Forbidden", to_tag, vec![]),
                    None,
                    true,
                )
            }
        }
        // Verified credentials always belong to a line; should that ever not hold, the
        // request is refused rather than the edge panicking.
        let Some(line) = line else {
            return outcome(
                response(request, 403, "Forbidden", to_tag, vec![]),
                None,
                true,
            );
        };
        self.update(now, request, source, &line, to_tag)
    }

    /// Authenticates a request other than REGISTER (an INVITE from a phone) with
    /// `Proxy-Authorization`, challenging with `407` as chan_sip does.
    pub fn authenticate(
        &mut self,
        now: u64,
        request: &rsip::Request,
        method: &str,
        to_tag: &str,
    ) -> Authenticated {
        let proxy_authorization = request.headers.iter().find_map(|h| match h {
            rsip::Header::ProxyAuthorization(a) => Some(a.value().to_owned()),
            _ => None,
        });
        let challenge = |r: &mut Self, stale: bool, failed: bool| Authenticated::Respond {
            response: r.challenge_with(request, now, to_tag, stale, 407, "Proxy-Authenticate"),
            failed,
        };
        let Some(value) = proxy_authorization else {
            return challenge(self, false, false);
        };
        let Ok(credentials) = Credentials::parse(&value) else {
            return challenge(self, false, true);
        };
        let refused = Authenticated::Respond {
            response: response(request, 403, "Forbidden", to_tag, vec![]),
            failed: true,
        };
        if !self.config.algorithms.contains(&credentials.algorithm) {
            return refused;
        }
        let password = self
            .lines
            .get(&credentials.username)
            .and_then(|l| l.secret.clone());
        match digest::verify(
            &mut self.nonces,
            &credentials,
            &self.config.realm,
            method,
            password.as_deref(),
            now,
        ) {
            Verdict::Ok => Authenticated::Line(credentials.username),
            Verdict::Stale => challenge(self, true, false),
            Verdict::Rejected => refused,
        }
    }

    fn challenge(
        &mut self,
        request: &rsip::Request,
        now: u64,
        to_tag: &str,
        stale: bool,
    ) -> rsip::Response {
        self.challenge_with(request, now, to_tag, stale, 401, "WWW-Authenticate")
    }

    fn challenge_with(
        &mut self,
        request: &rsip::Request,
        now: u64,
        to_tag: &str,
        stale: bool,
        status: u16,
        header: &str,
    ) -> rsip::Response {
        let nonce = self.nonces.issue(now);
        let headers = self
            .config
            .algorithms
            .iter()
            .map(|&algorithm| {
                let challenge = Challenge {
                    realm: self.config.realm.clone(),
                    nonce: nonce.clone(),
                    algorithm,
                    opaque: None,
                    qop_auth: true,
                    stale,
                };
                rsip::Header::Other(header.into(), challenge.to_header())
            })
            .collect();
        let reason = if status == 407 {
            "Proxy Authentication Required"
        } else {
            "Unauthorized"
        };
        response(request, status, reason, to_tag, headers)
    }

    fn update(
        &mut self,
        now: u64,
        request: &rsip::Request,
        source: Source,
        line: &Line,
        to_tag: &str,
    ) -> Outcome {
        let call_id = request
            .call_id_header()
            .map(|h| h.value().to_owned())
            .unwrap_or_default();
        let cseq = request
            .cseq_header()
            .ok()
            .and_then(|h| {
                h.value()
                    .split_whitespace()
                    .next()
                    .and_then(|n| n.parse::<u32>().ok())
            })
            .unwrap_or(0);
        let header_expires = request
            .expires_header()
            .and_then(|e| e.value().trim().parse::<u32>().ok());
        let user_agent = request.user_agent_header().map(|u| u.value().to_owned());
        let contacts: Vec<String> = request
            .headers
            .iter()
            .filter_map(|h| match h {
                rsip::Header::Contact(c) => Some(c.value()),
                _ => None,
            })
            .flat_map(sip_wire::header::split_list)
            .map(str::to_owned)
            .collect();
        let transport = if source.reliable { "tcp" } else { "udp" };
        let mut changed = false;

        if contacts.iter().any(|c| c.trim() == "*") {
            if contacts.len() != 1 || header_expires != Some(0) {
                return Outcome {
                    response: response(
                        request,
                        400,
                        "Contact * needs Expires: 0 and no other contact",
                        to_tag,
                        vec![],
                    ),
                    changed: None,
                    auth_failed: false,
                };
            }
            changed = self.bindings.remove(&line.name).is_some();
        } else {
            let mut updates = Vec::new();
            for contact in &contacts {
                let Some((uri, params)) = parse_contact(contact) else {
                    return Outcome {
                        response: response(request, 400, "Bad Contact", to_tag, vec![]),
                        changed: None,
                        auth_failed: false,
                    };
                };
                let expires = params
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case("expires"))
                    .and_then(|(_, v)| v.as_deref()?.parse::<u32>().ok())
                    .or(header_expires)
                    .unwrap_or(self.config.default_expires);
                if expires != 0 && expires < self.config.min_expires {
                    return Outcome {
                        response: response(
                            request,
                            423,
                            "Interval Too Brief",
                            to_tag,
                            vec![rsip::Header::Other(
                                "Min-Expires".into(),
                                self.config.min_expires.to_string(),
                            )],
                        ),
                        changed: None,
                        auth_failed: false,
                    };
                }
                updates.push((uri, expires.min(self.config.max_expires)));
            }
            let bindings = self.bindings.entry(line.name.clone()).or_default();
            for (uri, expires) in updates {
                match bindings.iter().position(|b| b.contact == uri) {
                    Some(i) if bindings[i].call_id == call_id && bindings[i].cseq >= cseq => {
                        // Out of order (§10.3 step 7): this contact is not updated.
                    }
                    Some(i) if expires == 0 => {
                        bindings.remove(i);
                        changed = true;
                    }
                    Some(i) => {
                        let b = &mut bindings[i];
                        b.expires_at = now + u64::from(expires);
                        b.source = source.addr;
                        b.transport = transport.into();
                        b.call_id = call_id.clone();
                        b.cseq = cseq;
                        b.user_agent = user_agent.clone();
                        b.registered_at = now;
                        changed = true;
                    }
                    None if expires == 0 => {}
                    None => {
                        if bindings.len() >= self.config.max_contacts {
                            if let Some(oldest) = bindings
                                .iter()
                                .enumerate()
                                .min_by_key(|(_, b)| b.expires_at)
                                .map(|(i, _)| i)
                            {
                                bindings.remove(oldest);
                            }
                        }
                        bindings.push(Binding {
                            contact: uri,
                            expires_at: now + u64::from(expires),
                            source: source.addr,
                            transport: transport.into(),
                            call_id: call_id.clone(),
                            cseq,
                            user_agent: user_agent.clone(),
                            nat: line.nat,
                            registered_at: now,
                        });
                        changed = true;
                    }
                }
            }
            if bindings.is_empty() {
                self.bindings.remove(&line.name);
            }
        }

        let current: Vec<rsip::Header> = self
            .contacts(&line.name, now)
            .into_iter()
            .map(|b| {
                rsip::Header::Contact(rsip::headers::Contact::new(format!(
                    "<{}>;expires={}",
                    b.contact,
                    b.expires_at.saturating_sub(now)
                )))
            })
            .collect();
        Outcome {
            response: response(request, 200, "OK", to_tag, current),
            changed: changed.then(|| line.name.clone()),
            auth_failed: false,
        }
    }
}

/// `;name[=value]` parameters, in order.
type Params = Vec<(String, Option<String>)>;

/// `["name"] <uri>;params` or `uri;params` to the URI and the parameters.
pub(crate) fn parse_contact(contact: &str) -> Option<(String, Params)> {
    let name_addr = sip_wire::header::NameAddr::parse(contact)?;
    let (uri, params) = (name_addr.uri, name_addr.params);
    if !uri.contains(':') {
        return None;
    }
    let params = params
        .split(';')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (
                k.trim().to_owned(),
                Some(v.trim().trim_matches('"').to_owned()),
            ),
            None => (p.to_owned(), None),
        })
        .collect();
    Some((uri.to_owned(), params))
}

/// A response to `request` (RFC 3261 §8.2.6): its Via headers, From, To with our tag
/// (none when `to_tag` is empty), Call-ID and CSeq, then `extra`.
pub fn response(
    request: &rsip::Request,
    status: u16,
    reason: &str,
    to_tag: &str,
    extra: Vec<rsip::Header>,
) -> rsip::Response {
    let mut headers = rsip::Headers::default();
    for header in request.headers.iter() {
        match header {
            rsip::Header::Via(_)
            | rsip::Header::From(_)
            | rsip::Header::CallId(_)
            | rsip::Header::CSeq(_) => headers.push(header.clone()),
            rsip::Header::To(to) => {
                let value = to.value();
                // An empty tag is no tag (a 100 Trying has none, §8.2.6.1).
                if to_tag.is_empty() || value.to_ascii_lowercase().contains(";tag=") {
                    headers.push(header.clone());
                } else {
                    headers.push(rsip::Header::To(rsip::headers::To::new(format!(
                        "{value};tag={to_tag}"
                    ))));
                }
            }
            _ => {}
        }
    }
    headers.extend(extra);
    headers.push(rsip::Header::ContentLength(
        rsip::headers::ContentLength::new("0"),
    ));
    rsip::Response {
        // Our own reason phrase: rsip would print its variant names ("IntervalTooBrief").
        status_code: rsip::StatusCode::Other(status, reason.to_owned()),
        version: rsip::Version::V2,
        headers,
        body: Vec::new(),
    }
}

#[cfg(test)]
mod tests;
