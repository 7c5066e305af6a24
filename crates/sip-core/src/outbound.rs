//! Registering to a provider: a `register =>` line of sip.conf
//! (`user[:secret[:authuser]]@host[:port][/extension]`), sans-IO.
//!
//! ```text
//!  Idle --due--> Waiting --200--> Registered --refresh (80% of the granted time)--> Waiting
//!                   |  \--401/407--> Waiting (same request, with credentials, CSeq + 1)
//!                   \--failure, or a second challenge that is not stale--> Failed --retry--> Waiting
//! ```
//!
//! The driver sends what [`OutboundRegistration::poll_request`] returns in a client
//! transaction and reports the outcome; time is an input.

use std::time::{Duration, Instant};

use crate::digest::{self, Challenge};

/// Seconds asked for when the line gives no `~expiry` (chan_sip's default).
pub const DEFAULT_EXPIRY: u32 = 120;
/// Wait after a failure before trying again.
pub const RETRY_AFTER: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    Unregistered,
    Registered { until: Instant },
    Failed { reason: String },
}

#[derive(Debug, Clone)]
enum State {
    Idle { next: Instant },
    Waiting { branch: String },
    Registered { refresh: Instant },
}

/// What to send: the branch of the request (its transaction key) and the bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub branch: String,
    pub bytes: Vec<u8>,
}

/// The answer to a REGISTER, as far as this machine needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    /// `WWW-Authenticate` (401) or `Proxy-Authenticate` (407) value.
    pub challenge: Option<String>,
    /// The granted time: `Expires`, or our contact's `expires`.
    pub expires: Option<u32>,
}

pub struct OutboundRegistration {
    pub user: String,
    secret: String,
    auth_user: String,
    domain: String,
    /// `host[:port]` of the Request-URI.
    registrar: String,
    contact_user: String,
    expiry: u32,
    call_id: String,
    from_tag: String,
    cseq: u32,
    state: State,
    status: Status,
    /// The challenge to answer in the next request, and whether it was a 407.
    credentials: Option<(Challenge, bool)>,
    /// Credentials were already sent for the current challenge's nonce.
    answered_nonce: Option<String>,
    nc: u32,
}

impl OutboundRegistration {
    /// `call_id` and `from_tag` stay for the life of the registration (RFC 3261 §10.2).
    pub fn new(
        line: &asterisk_conf::sip::Registration,
        call_id: String,
        from_tag: String,
        now: Instant,
    ) -> Self {
        let registrar = match line.port {
            Some(port) => format!("{}:{port}", line.host),
            None => line.host.clone(),
        };
        Self {
            user: line.user.clone(),
            secret: line
                .secret
                .as_ref()
                .map(|s| s.expose().to_owned())
                .unwrap_or_default(),
            auth_user: line.auth_user.clone().unwrap_or_else(|| line.user.clone()),
            domain: line.domain.clone().unwrap_or_else(|| line.host.clone()),
            registrar,
            contact_user: line.extension.clone().unwrap_or_else(|| "s".into()),
            expiry: line.expiry.unwrap_or(DEFAULT_EXPIRY),
            call_id,
            from_tag,
            cseq: 0,
            state: State::Idle { next: now },
            status: Status::Unregistered,
            credentials: None,
            answered_nonce: None,
            nc: 0,
        }
    }

    /// A registration for `line` with a Call-ID and From tag of its own (`salt` keeps
    /// two made at the same moment apart).
    pub fn fresh(line: &asterisk_conf::sip::Registration, salt: &str) -> Self {
        let mut seed = [0u8; 16];
        if getrandom::fill(&mut seed).is_err() {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            seed = nanos.to_le_bytes();
        }
        let seed = u128::from_le_bytes(seed);
        Self::new(
            line,
            format!("{seed:x}-{salt}@edge"),
            format!("{:x}", seed.rotate_left(64) ^ 0x5bd1_e995),
            Instant::now(),
        )
    }

    pub fn status(&self) -> &Status {
        &self.status
    }

    /// Starts over: the next REGISTER is due at `now` (this edge has just become the
    /// one that registers, or has stopped being it).
    pub fn restart(&mut self, now: Instant) {
        self.state = State::Idle { next: now };
        self.status = Status::Unregistered;
        self.credentials = None;
        self.answered_nonce = None;
    }

    /// When something is due next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match &self.state {
            State::Idle { next } => Some(*next),
            State::Registered { refresh } => Some(*refresh),
            State::Waiting { .. } => None,
        }
    }

    /// The REGISTER to send now, if one is due. `local` goes in Via and Contact; `branch`
    /// is fresh for each request.
    pub fn poll_request(
        &mut self,
        now: Instant,
        local: std::net::SocketAddr,
        branch: String,
    ) -> Option<Request> {
        let due = match &self.state {
            State::Idle { next } => *next <= now,
            State::Registered { refresh } => *refresh <= now,
            State::Waiting { .. } => false,
        };
        if !due {
            return None;
        }
        Some(self.request(local, branch))
    }

    fn request(&mut self, local: std::net::SocketAddr, branch: String) -> Request {
        self.cseq += 1;
        let uri = format!("sip:{}", self.registrar);
        let mut authorization = String::new();
        if let Some((challenge, proxy)) = &self.credentials {
            self.nc += 1;
            let cnonce = format!("{:08x}", self.cseq.wrapping_mul(0x9e37_79b9) ^ self.nc);
            let creds = digest::authorize(
                challenge,
                &self.auth_user,
                &self.secret,
                "REGISTER",
                &uri,
                &cnonce,
                self.nc,
            );
            let name = if *proxy {
                "Proxy-Authorization"
            } else {
                "Authorization"
            };
            authorization = format!("{name}: {}\r\n", creds.to_header());
            self.answered_nonce = Some(challenge.nonce.clone());
        }
        let user_uri = format!("<sip:{}@{}>", self.user, self.domain);
        let bytes = sip_wire::build::Outgoing {
            method: "REGISTER",
            request_uri: &uri,
            via: &sip_wire::header::Via::ours(false, local, &branch),
            route: &[],
            from: &format!("{user_uri};tag={}", self.from_tag),
            to: &user_uri,
            call_id: &self.call_id,
            cseq: self.cseq,
            contact: Some(&format!("<sip:{}@{local}>", self.contact_user)),
            headers: &format!("Expires: {}\r\n{authorization}", self.expiry),
            body: None,
        }
        .to_bytes();
        self.state = State::Waiting {
            branch: branch.clone(),
        };
        Request { branch, bytes }
    }

    /// The final answer to the request with `branch`. A challenge is answered at once:
    /// the returned request is to be sent.
    pub fn handle_answer(
        &mut self,
        now: Instant,
        branch: &str,
        answer: Answer,
        local: std::net::SocketAddr,
        next_branch: String,
    ) -> Option<Request> {
        if !matches!(&self.state, State::Waiting { branch: b } if b == branch) {
            return None;
        }
        match answer.status {
            200..=299 => {
                let granted = answer.expires.unwrap_or(self.expiry).max(1);
                let until = now + Duration::from_secs(u64::from(granted));
                let refresh = now
                    + Duration::from_secs(u64::from(granted) * 8 / 10).max(Duration::from_secs(1));
                self.status = Status::Registered { until };
                self.state = State::Registered { refresh };
                None
            }
            401 | 407 => {
                let parsed = answer.challenge.as_deref().map(Challenge::parse);
                match parsed {
                    Some(Ok(challenge)) => {
                        let repeated =
                            self.answered_nonce.as_deref() == Some(challenge.nonce.as_str());
                        if (repeated && !challenge.stale) || self.secret.is_empty() {
                            self.fail(
                                now,
                                format!(
                                    "{} after sending credentials: check the user and secret",
                                    answer.status
                                ),
                            );
                            return None;
                        }
                        self.credentials = Some((challenge, answer.status == 407));
                        self.nc = 0;
                        Some(self.request(local, next_branch))
                    }
                    _ => {
                        self.fail(now, format!("{} without a usable challenge", answer.status));
                        None
                    }
                }
            }
            status => {
                self.fail(now, format!("the provider answered {status}"));
                None
            }
        }
    }

    /// The request with `branch` got no answer (timeout or transport error).
    pub fn handle_failure(&mut self, now: Instant, branch: &str) {
        if matches!(&self.state, State::Waiting { branch: b } if b == branch) {
            self.fail(now, "no answer from the provider".into());
        }
    }

    fn fail(&mut self, now: Instant, reason: String) {
        self.status = Status::Failed { reason };
        self.state = State::Idle {
            next: now + RETRY_AFTER,
        };
        self.credentials = None;
        self.answered_nonce = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Algorithm;

    fn line() -> asterisk_conf::sip::Registration {
        let conf = asterisk_conf::sip::from_config(
            asterisk_conf::parse_str(
                "sip.conf",
                "[general]\nregister => 12345678:password@sip.example.com:5080/13235550100~300\n",
            )
            .unwrap(),
        )
        .unwrap();
        conf.registrations[0].clone()
    }

    fn local() -> std::net::SocketAddr {
        "192.0.2.2:5060".parse().unwrap()
    }

    fn challenge(nonce: &str, stale: bool) -> String {
        Challenge {
            realm: "sip.example.com".into(),
            nonce: nonce.into(),
            algorithm: Algorithm::Md5,
            opaque: None,
            qop_auth: true,
            stale,
        }
        .to_header()
    }

    #[test]
    fn registers_through_a_challenge_and_refreshes() {
        let t0 = Instant::now();
        let mut r = OutboundRegistration::new(&line(), "c1@edge".into(), "f1".into(), t0);
        let first = r.poll_request(t0, local(), "z9hG4bK1".into()).unwrap();
        let text = String::from_utf8(first.bytes).unwrap();
        assert!(
            text.starts_with("REGISTER sip:sip.example.com:5080 SIP/2.0\r\n"),
            "{text}"
        );
        assert!(text.contains("\r\nFrom: <sip:12345678@sip.example.com>;tag=f1\r\n"));
        assert!(text.contains("\r\nContact: <sip:13235550100@192.0.2.2:5060>\r\nExpires: 300\r\n"));
        assert!(!text.contains("Authorization"));
        assert!(
            r.poll_request(t0, local(), "x".into()).is_none(),
            "one at a time"
        );

        let retry = r
            .handle_answer(
                t0,
                "z9hG4bK1",
                Answer {
                    status: 407,
                    challenge: Some(challenge("n1", false)),
                    expires: None,
                },
                local(),
                "z9hG4bK2".into(),
            )
            .expect("answers the challenge at once");
        let text = String::from_utf8(retry.bytes).unwrap();
        assert!(
            text.contains("\r\nCSeq: 2 REGISTER\r\n")
                && text.contains("\r\nProxy-Authorization: Digest username=\"12345678\""),
            "{text}"
        );
        let creds = digest::Credentials::parse(
            text.split("Proxy-Authorization: ")
                .nth(1)
                .unwrap()
                .split("\r\n")
                .next()
                .unwrap(),
        )
        .unwrap();
        let expected = digest::compute_response(
            Algorithm::Md5,
            "12345678",
            "sip.example.com",
            "password",
            "REGISTER",
            "sip:sip.example.com:5080",
            "n1",
            creds.qop.as_ref().map(|(n, c)| (*n, c.as_str())),
        );
        assert_eq!(creds.response, expected);

        assert!(r
            .handle_answer(
                t0,
                "z9hG4bK2",
                Answer {
                    status: 200,
                    challenge: None,
                    expires: Some(300)
                },
                local(),
                "b".into()
            )
            .is_none());
        assert!(matches!(r.status(), Status::Registered { .. }));
        assert_eq!(
            r.poll_timeout().unwrap() - t0,
            Duration::from_secs(240),
            "refresh at 80%"
        );
        let refresh = r
            .poll_request(t0 + Duration::from_secs(240), local(), "z9hG4bK3".into())
            .unwrap();
        assert!(
            String::from_utf8(refresh.bytes)
                .unwrap()
                .contains("\r\nCSeq: 3 REGISTER\r\nContact"),
            "same Call-ID, next CSeq"
        );
    }

    fn unauthorized(nonce: &str, stale: bool) -> Answer {
        Answer {
            status: 401,
            challenge: Some(challenge(nonce, stale)),
            expires: None,
        }
    }

    /// A registration whose first REGISTER (branch b1) was challenged and answered
    /// (branch b2).
    fn challenged_once(t0: Instant) -> OutboundRegistration {
        let mut r = OutboundRegistration::new(&line(), "c".into(), "f".into(), t0);
        r.poll_request(t0, local(), "b1".into()).unwrap();
        r.handle_answer(t0, "b1", unauthorized("n1", false), local(), "b2".into())
            .unwrap();
        r
    }

    #[test]
    fn wrong_credentials_and_silence_fail_and_retry_later() {
        let t0 = Instant::now();
        let mut r = challenged_once(t0);
        // Challenged again on the same nonce: the secret is wrong; no loop.
        assert!(r
            .handle_answer(t0, "b2", unauthorized("n1", false), local(), "b3".into())
            .is_none());
        assert!(
            matches!(r.status(), Status::Failed { reason } if reason.contains("check the user and secret"))
        );
        assert_eq!(r.poll_timeout().unwrap() - t0, RETRY_AFTER);
        // A stale nonce is simply answered again.
        let mut r = challenged_once(t0);
        assert!(r
            .handle_answer(t0, "b2", unauthorized("n1", true), local(), "b3".into())
            .is_some());
        // No answer at all.
        r.handle_failure(t0, "b3");
        assert!(matches!(r.status(), Status::Failed { reason } if reason.contains("no answer")));
        // Answers to other branches are ignored.
        assert!(r
            .handle_answer(
                t0,
                "zzz",
                Answer {
                    status: 200,
                    challenge: None,
                    expires: None
                },
                local(),
                "b".into()
            )
            .is_none());
        assert!(matches!(r.status(), Status::Failed { .. }));
    }
}
