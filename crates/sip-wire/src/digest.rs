//! HTTP Digest authentication as SIP uses it (RFC 3261 §22, RFC 7616's algorithms,
//! RFC 8760 for SHA-256 in SIP), both sides, sans-IO: time and randomness are inputs.
//!
//! - As a server (the registrar, phones' INVITEs): [`NonceAuthority`] issues nonces that
//!   carry their own issue time and an HMAC-SHA-256 tag, so any nonce can be checked
//!   without having stored it; each is good once and for a lifetime (after that the
//!   client is told `stale=true` and retries without asking the user), so a captured
//!   request cannot be replayed. [`verify`] checks a response in the same time
//!   whether the user exists or not, so the answer tells nothing about which users exist.
//! - As a client (the carrier's 401/407 to our INVITE or REGISTER): [`authorize`].
//!
//! `qop=auth` is always offered; a client that answers without qop (RFC 2069 style) is
//! accepted too. Nonces are single-use whatever `nc` says (RFC 7616 §3.3 leaves that to
//! the server): a second request on one nonce is challenged again, `stale=true`.

use std::fmt::Write as _;

use hmac::{Hmac, KeyInit, Mac};
use md5::Md5;
use sha2::{Digest as _, Sha256};

/// The hash of the challenge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    Md5,
    Sha256,
}

impl Algorithm {
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Md5 => "MD5",
            Algorithm::Sha256 => "SHA-256",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        match name.to_ascii_uppercase().as_str() {
            "MD5" => Some(Algorithm::Md5),
            "SHA-256" => Some(Algorithm::Sha256),
            _ => None,
        }
    }

    fn hex(self, data: &str) -> String {
        let mut out = String::with_capacity(64);
        let bytes: Vec<u8> = match self {
            Algorithm::Md5 => Md5::digest(data.as_bytes()).to_vec(),
            Algorithm::Sha256 => Sha256::digest(data.as_bytes()).to_vec(),
        };
        for b in bytes {
            let _ = write!(out, "{b:02x}");
        }
        out
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    #[error("not a Digest header")]
    NotDigest,
    #[error("malformed parameters: {0}")]
    Malformed(String),
    #[error("missing parameter '{0}'")]
    Missing(&'static str),
    #[error("unsupported algorithm '{0}'")]
    Algorithm(String),
}

/// `Digest k="v", k=v, ...` to its parameters (keys lower-cased, quotes and escapes
/// removed). At most 32 parameters of 1 KiB each, so a hostile header costs little.
pub fn parse_params(value: &str) -> Result<Vec<(String, String)>, DigestError> {
    let rest = value.trim_start();
    let scheme_end = rest.find(char::is_whitespace).unwrap_or(rest.len());
    if !rest[..scheme_end].eq_ignore_ascii_case("Digest") {
        return Err(DigestError::NotDigest);
    }
    let mut params = Vec::new();
    let mut chars = rest[scheme_end..].chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace() || *c == ',') {
            chars.next();
        }
        if chars.peek().is_none() {
            break;
        }
        let key: String = chars.by_ref().take_while(|&c| c != '=').collect();
        let key = key.trim().to_ascii_lowercase();
        if key.is_empty()
            || !key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(DigestError::Malformed(format!(
                "bad parameter name '{key}'"
            )));
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            let mut closed = false;
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '"' => {
                        closed = true;
                        break;
                    }
                    c => value.push(c),
                }
            }
            if !closed {
                return Err(DigestError::Malformed(format!("unclosed quote in '{key}'")));
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ',' {
                    break;
                }
                value.push(c);
                chars.next();
            }
            value = value.trim().to_owned();
        }
        if value.len() > 1024 || params.len() >= 32 {
            return Err(DigestError::Malformed("too long".into()));
        }
        params.push((key, value));
    }
    Ok(params)
}

fn get<'a>(params: &'a [(String, String)], key: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// A challenge (`WWW-Authenticate` / `Proxy-Authenticate`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    pub realm: String,
    pub nonce: String,
    pub algorithm: Algorithm,
    pub opaque: Option<String>,
    /// `qop` offered includes `auth`.
    pub qop_auth: bool,
    pub stale: bool,
}

impl Challenge {
    pub fn parse(value: &str) -> Result<Self, DigestError> {
        let params = parse_params(value)?;
        let algorithm = match get(&params, "algorithm") {
            None => Algorithm::Md5,
            Some(a) => Algorithm::parse(a).ok_or_else(|| DigestError::Algorithm(a.to_owned()))?,
        };
        Ok(Self {
            realm: get(&params, "realm")
                .ok_or(DigestError::Missing("realm"))?
                .to_owned(),
            nonce: get(&params, "nonce")
                .ok_or(DigestError::Missing("nonce"))?
                .to_owned(),
            algorithm,
            opaque: get(&params, "opaque").map(str::to_owned),
            qop_auth: get(&params, "qop")
                .is_some_and(|q| q.split(',').any(|o| o.trim().eq_ignore_ascii_case("auth"))),
            stale: get(&params, "stale").is_some_and(|s| s.eq_ignore_ascii_case("true")),
        })
    }

    /// The header value.
    pub fn to_header(&self) -> String {
        let mut out = format!(
            "Digest realm=\"{}\", nonce=\"{}\", algorithm={}",
            self.realm,
            self.nonce,
            self.algorithm.name()
        );
        if self.qop_auth {
            out.push_str(", qop=\"auth\"");
        }
        if let Some(opaque) = &self.opaque {
            let _ = write!(out, ", opaque=\"{opaque}\"");
        }
        if self.stale {
            out.push_str(", stale=true");
        }
        out
    }
}

/// An answer to a challenge (`Authorization` / `Proxy-Authorization`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub realm: String,
    pub nonce: String,
    pub uri: String,
    pub response: String,
    pub algorithm: Algorithm,
    /// `(nc, cnonce)` when `qop=auth`.
    pub qop: Option<(u32, String)>,
    pub opaque: Option<String>,
}

impl Credentials {
    pub fn parse(value: &str) -> Result<Self, DigestError> {
        let params = parse_params(value)?;
        let need = |k: &'static str| {
            get(&params, k)
                .map(str::to_owned)
                .ok_or(DigestError::Missing(k))
        };
        let algorithm = match get(&params, "algorithm") {
            None => Algorithm::Md5,
            Some(a) => Algorithm::parse(a).ok_or_else(|| DigestError::Algorithm(a.to_owned()))?,
        };
        let qop = match get(&params, "qop") {
            None => None,
            Some(q) if q.eq_ignore_ascii_case("auth") => {
                let nc = need("nc")?;
                let nc = u32::from_str_radix(&nc, 16).map_err(|_| {
                    DigestError::Malformed(format!("nc '{nc}' is not 8 hex digits"))
                })?;
                Some((nc, need("cnonce")?))
            }
            Some(other) => {
                return Err(DigestError::Malformed(format!(
                    "qop '{other}' is not supported"
                )))
            }
        };
        Ok(Self {
            username: need("username")?,
            realm: need("realm")?,
            nonce: need("nonce")?,
            uri: need("uri")?,
            response: need("response")?,
            algorithm,
            qop,
            opaque: get(&params, "opaque").map(str::to_owned),
        })
    }

    pub fn to_header(&self) -> String {
        let mut out = format!(
            "Digest username=\"{}\", realm=\"{}\", nonce=\"{}\", uri=\"{}\", response=\"{}\", algorithm={}",
            escape(&self.username),
            escape(&self.realm),
            escape(&self.nonce),
            escape(&self.uri),
            self.response,
            self.algorithm.name()
        );
        if let Some((nc, cnonce)) = &self.qop {
            let _ = write!(
                out,
                ", qop=auth, nc={nc:08x}, cnonce=\"{}\"",
                escape(cnonce)
            );
        }
        if let Some(opaque) = &self.opaque {
            let _ = write!(out, ", opaque=\"{}\"", escape(opaque));
        }
        out
    }
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

/// The `response` value (RFC 7616 §3.4.1, `qop=auth` or none).
#[allow(clippy::too_many_arguments)]
pub fn compute_response(
    algorithm: Algorithm,
    username: &str,
    realm: &str,
    password: &str,
    method: &str,
    uri: &str,
    nonce: &str,
    qop: Option<(u32, &str)>,
) -> String {
    let ha1 = algorithm.hex(&format!("{username}:{realm}:{password}"));
    let ha2 = algorithm.hex(&format!("{method}:{uri}"));
    match qop {
        Some((nc, cnonce)) => algorithm.hex(&format!("{ha1}:{nonce}:{nc:08x}:{cnonce}:auth:{ha2}")),
        None => algorithm.hex(&format!("{ha1}:{nonce}:{ha2}")),
    }
}

/// The client side: credentials answering `challenge` for `method uri`.
pub fn authorize(
    challenge: &Challenge,
    username: &str,
    password: &str,
    method: &str,
    uri: &str,
    cnonce: &str,
    nc: u32,
) -> Credentials {
    let qop = challenge.qop_auth.then(|| (nc, cnonce.to_owned()));
    let response = compute_response(
        challenge.algorithm,
        username,
        &challenge.realm,
        password,
        method,
        uri,
        &challenge.nonce,
        qop.as_ref().map(|(n, c)| (*n, c.as_str())),
    );
    Credentials {
        username: username.to_owned(),
        realm: challenge.realm.clone(),
        nonce: challenge.nonce.clone(),
        uri: uri.to_owned(),
        response,
        algorithm: challenge.algorithm,
        qop,
        opaque: challenge.opaque.clone(),
    }
}

/// What a nonce check says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonceState {
    Valid,
    /// Ours, but expired or already used: challenge again with `stale=true` (the client
    /// retries with the new nonce, without asking its user).
    Stale,
    /// Not a nonce we issued.
    Forged,
}

/// Issues and checks single-use nonces: `hex(issued-at u64 ‖ sequence u64 ‖ tag 16
/// bytes)`, the tag an HMAC-SHA-256 of the first 16 bytes under the authority's secret,
/// so no nonce can be made up and none needs storing to be recognised.
///
/// Use is recorded in a bitmap, one bit per nonce by sequence number, from the oldest
/// nonce still within its lifetime: a nonce is accepted once, then is stale. The cost is
/// a bit per nonce issued in the last lifetime (about 200 KiB at 5,000 registrations a
/// second for 300 s), pruned by whole words as time passes.
pub struct NonceAuthority {
    secret: [u8; 32],
    lifetime_secs: u64,
    next_seq: u64,
    /// Sequence number of bit 0 of `used` (a multiple of 64).
    base_seq: u64,
    used: std::collections::VecDeque<u64>,
    /// `(second, first sequence issued in it)`, oldest first: where to cut when pruning.
    seconds: std::collections::VecDeque<(u64, u64)>,
}

impl NonceAuthority {
    pub fn new(secret: [u8; 32], lifetime_secs: u64) -> Self {
        Self {
            secret,
            lifetime_secs,
            next_seq: 0,
            base_seq: 0,
            used: std::collections::VecDeque::new(),
            seconds: std::collections::VecDeque::new(),
        }
    }

    fn tag(&self, head: &[u8]) -> [u8; 16] {
        let mut mac =
            <Hmac<Sha256> as KeyInit>::new_from_slice(&self.secret).expect("any key length");
        mac.update(head);
        let full = mac.finalize().into_bytes();
        let mut tag = [0u8; 16];
        tag.copy_from_slice(&full[..16]);
        tag
    }

    /// A fresh nonce issued at `now` (Unix seconds).
    pub fn issue(&mut self, now: u64) -> String {
        self.prune(now);
        let seq = self.next_seq;
        self.next_seq += 1;
        if self.seconds.back().is_none_or(|(second, _)| *second < now) {
            self.seconds.push_back((now, seq));
        }
        let mut head = [0u8; 16];
        head[..8].copy_from_slice(&now.to_be_bytes());
        head[8..].copy_from_slice(&seq.to_be_bytes());
        let tag = self.tag(&head);
        let mut out = String::with_capacity(64);
        for b in head.iter().chain(tag.iter()) {
            let _ = write!(out, "{b:02x}");
        }
        out
    }

    /// Drops the bits of nonces past their lifetime.
    fn prune(&mut self, now: u64) {
        while let Some(&(second, _)) = self.seconds.front() {
            if now.saturating_sub(second) <= self.lifetime_secs {
                break;
            }
            self.seconds.pop_front();
        }
        let oldest_live = self
            .seconds
            .front()
            .map(|&(_, seq)| seq)
            .unwrap_or(self.next_seq);
        while self.base_seq + 64 <= oldest_live && !self.used.is_empty() {
            self.used.pop_front();
            self.base_seq += 64;
        }
        if self.used.is_empty() {
            self.base_seq = oldest_live - oldest_live % 64;
        }
    }

    /// Checks a nonce and, when valid, uses it up.
    pub fn check(&mut self, nonce: &str, now: u64) -> NonceState {
        let Some(bytes) = decode_hex::<32>(nonce) else {
            return NonceState::Forged;
        };
        let (head, tag) = bytes.split_at(16);
        // Both sides are fixed-length and compared in full.
        let expected = self.tag(head);
        if expected
            .iter()
            .zip(tag)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            != 0
        {
            return NonceState::Forged;
        }
        let issued = u64::from_be_bytes(head[..8].try_into().unwrap_or([0; 8]));
        let seq = u64::from_be_bytes(head[8..].try_into().unwrap_or([0; 8]));
        if now.saturating_sub(issued) > self.lifetime_secs
            || issued > now + 60
            || seq < self.base_seq
        {
            return NonceState::Stale;
        }
        let offset = seq - self.base_seq;
        let word = (offset / 64) as usize;
        while self.used.len() <= word {
            self.used.push_back(0);
        }
        let bit = 1u64 << (offset % 64);
        if self.used[word] & bit != 0 {
            return NonceState::Stale;
        }
        self.used[word] |= bit;
        NonceState::Valid
    }

    /// Bytes held for replay checks (for memory accounting).
    pub fn replay_bytes(&self) -> usize {
        self.used.len() * 8 + self.seconds.len() * 16
    }
}

fn decode_hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != N * 2 {
        return None;
    }
    let mut out = [0u8; N];
    for (i, chunk) in s.as_bytes().chunks(2).enumerate() {
        let hi = (chunk[0] as char).to_digit(16)?;
        let lo = (chunk[1] as char).to_digit(16)?;
        out[i] = (hi * 16 + lo) as u8;
    }
    Some(out)
}

/// The result of checking credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Ok,
    /// Challenge again with `stale=true`: the password was right but the nonce old.
    Stale,
    /// Wrong user, password, realm, or a replay: `403`, the same for every cause.
    Rejected,
}

/// Checks `credentials` for `method`. `password` is `None` for a user that does not
/// exist: the same hashing is done against a fixed stand-in, so the time and the answer
/// do not tell the two cases apart.
pub fn verify(
    authority: &mut NonceAuthority,
    credentials: &Credentials,
    realm: &str,
    method: &str,
    password: Option<&str>,
    now: u64,
) -> Verdict {
    let expected = compute_response(
        credentials.algorithm,
        &credentials.username,
        &credentials.realm,
        password.unwrap_or("\u{0}no such user\u{0}"),
        method,
        &credentials.uri,
        &credentials.nonce,
        credentials.qop.as_ref().map(|(n, c)| (*n, c.as_str())),
    );
    let matches = expected.len() == credentials.response.len()
        && expected
            .bytes()
            .zip(credentials.response.to_ascii_lowercase().bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if !matches || password.is_none() || credentials.realm != realm {
        return Verdict::Rejected;
    }
    match authority.check(&credentials.nonce, now) {
        NonceState::Valid => Verdict::Ok,
        // The password is right but the nonce is not one of ours: another shard's, or
        // one from before a restart. Only the password's owner can answer a nonce, so a
        // new challenge (stale=true) gives nothing away.
        NonceState::Stale | NonceState::Forged => Verdict::Stale,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_2617_md5_example() {
        let response = compute_response(
            Algorithm::Md5,
            "Mufasa",
            "testrealm@host.com",
            "Circle Of Life",
            "GET",
            "/dir/index.html",
            "dcd98b7102dd2f0e8b11d0f600bfb0c093",
            Some((1, "0a4f113b")),
        );
        assert_eq!(response, "6629fae49393a05397450978507c4ef1");
    }

    #[test]
    fn rfc_7616_sha256_and_md5_examples() {
        let args = |alg| {
            compute_response(
                alg,
                "Mufasa",
                "http-auth@example.org",
                "Circle of Life",
                "GET",
                "/dir/index.html",
                "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",
                Some((1, "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ")),
            )
        };
        assert_eq!(
            args(Algorithm::Sha256),
            "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"
        );
        assert_eq!(args(Algorithm::Md5), "8ca523f5e9506fed4657c9700eebdbec");
    }

    #[test]
    fn headers_parse_and_print() {
        // A carrier's challenge, as Kamailio sends it.
        let c = Challenge::parse("Digest realm=\"sip.flowroute.com\", nonce=\"Y2ZhZmVm\", qop=\"auth,auth-int\", algorithm=MD5").unwrap();
        assert_eq!(
            (
                c.realm.as_str(),
                c.nonce.as_str(),
                c.algorithm,
                c.qop_auth,
                c.stale
            ),
            ("sip.flowroute.com", "Y2ZhZmVm", Algorithm::Md5, true, false)
        );
        assert_eq!(Challenge::parse(&c.to_header()).unwrap(), c);
        let creds = authorize(
            &c,
            "12345678",
            "password",
            "INVITE",
            "sip:13105550199@sip.flowroute.com",
            "abc",
            1,
        );
        let printed = creds.to_header();
        assert!(
            printed.contains("nc=00000001") && printed.contains("qop=auth"),
            "{printed}"
        );
        assert_eq!(Credentials::parse(&printed).unwrap(), creds);
        // A phone's answer with odd spacing and escapes.
        let creds = Credentials::parse(
            "Digest  username=\"13235550100\",realm=\"phone\" , nonce=\"n\",uri=\"sip:phone\",response=\"ab\",qop=auth,nc=0000000a,cnonce=\"c\\\"x\"",
        )
        .unwrap();
        assert_eq!(creds.qop, Some((10, "c\"x".into())));
        for bad in [
            "Basic abc",
            "Digest realm=\"x",
            "Digest =x",
            "Digest username=\"a\"",
        ] {
            assert!(Credentials::parse(bad).is_err(), "{bad}");
        }
        assert!(matches!(
            Challenge::parse("Digest realm=x, nonce=y, algorithm=SHA-512-256"),
            Err(DigestError::Algorithm(_))
        ));
    }

    fn authority() -> NonceAuthority {
        NonceAuthority::new([7; 32], 300)
    }

    fn answer(nonce: &str, password: &str, nc: u32, algorithm: Algorithm) -> Credentials {
        let challenge = Challenge {
            realm: "phone".into(),
            nonce: nonce.into(),
            algorithm,
            opaque: None,
            qop_auth: true,
            stale: false,
        };
        authorize(
            &challenge,
            "13235550100",
            password,
            "REGISTER",
            "sip:phone",
            "cn",
            nc,
        )
    }

    #[test]
    fn nonces_verify_once_expire_and_cannot_be_forged() {
        let mut a = authority();
        for algorithm in [Algorithm::Md5, Algorithm::Sha256] {
            let nonce = a.issue(1_000);
            let creds = answer(&nonce, "password", 1, algorithm);
            assert_eq!(
                verify(&mut a, &creds, "phone", "REGISTER", Some("password"), 1_010),
                Verdict::Ok
            );
            assert_eq!(
                verify(&mut a, &creds, "phone", "REGISTER", Some("password"), 1_011),
                Verdict::Stale,
                "replay"
            );
            let next = answer(&nonce, "password", 2, algorithm);
            assert_eq!(
                verify(&mut a, &next, "phone", "REGISTER", Some("password"), 1_011),
                Verdict::Stale,
                "single use"
            );
        }
        let nonce = a.issue(1_000);
        let wrong = answer(&nonce, "guess", 1, Algorithm::Md5);
        assert_eq!(
            verify(&mut a, &wrong, "phone", "REGISTER", Some("password"), 1_020),
            Verdict::Rejected
        );
        let late = answer(&nonce, "password", 1, Algorithm::Md5);
        assert_eq!(
            verify(&mut a, &late, "phone", "REGISTER", Some("password"), 1_400),
            Verdict::Stale,
            "expired"
        );
        // A nonce that is not ours, answered with the right password (another shard's,
        // one from before a restart): challenged again, not refused; with a wrong one,
        // refused.
        let mut forged = a.issue(1_000);
        forged.replace_range(0..2, "ff");
        let creds = answer(&forged, "password", 1, Algorithm::Md5);
        assert_eq!(
            verify(&mut a, &creds, "phone", "REGISTER", Some("password"), 1_010),
            Verdict::Stale
        );
        let creds = answer(&forged, "guess", 1, Algorithm::Md5);
        assert_eq!(
            verify(&mut a, &creds, "phone", "REGISTER", Some("password"), 1_010),
            Verdict::Rejected
        );
        assert_eq!(a.check("not hex", 1_010), NonceState::Forged);
        let mut b = NonceAuthority::new([8; 32], 300);
        assert_eq!(
            b.check(&a.issue(1_000), 1_010),
            NonceState::Forged,
            "another secret"
        );
    }

    #[test]
    fn unknown_users_are_rejected_like_wrong_passwords() {
        let mut a = authority();
        let nonce = a.issue(1_000);
        let creds = answer(&nonce, "password", 1, Algorithm::Md5);
        assert_eq!(
            verify(&mut a, &creds, "phone", "REGISTER", None, 1_001),
            Verdict::Rejected
        );
        assert_eq!(
            verify(&mut a, &creds, "phone", "REGISTER", Some("password"), 1_001),
            Verdict::Ok,
            "a rejected attempt does not use the nonce"
        );
    }

    #[test]
    fn the_replay_bitmap_is_pruned_as_time_passes() {
        let mut a = authority();
        for second in 0..1_000u64 {
            for _ in 0..100 {
                let nonce = a.issue(second);
                assert_eq!(a.check(&nonce, second), NonceState::Valid);
            }
        }
        // 301 seconds of nonces are live: about 30,100 bits.
        assert!(
            a.replay_bytes() < 30_100 / 8 + 64 + 302 * 16,
            "{}",
            a.replay_bytes()
        );
    }
}
