//! The security floor, sans-IO: a request rate limit per source address and a ban after
//! repeated authentication failures (default: 5 within 60 s -> 10 minutes).
//!
//! Two things are never refused: traffic from a trunk's addresses (a carrier is one
//! source for many callers) and a call to an emergency number (911 from a banned or
//! busy address still gets through; it is still authenticated like any call).
//!
//! Refused traffic is dropped without an answer (answering a flood only amplifies it).
//! Memory is bounded: at most [`GuardConfig::max_sources`] addresses are tracked; past
//! that the idlest are forgotten.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, PartialEq)]
pub struct GuardConfig {
    /// Requests per second per source address, sustained.
    pub rate: f64,
    /// Requests a source may send at once before the rate applies.
    pub burst: f64,
    pub ban_failures: u32,
    pub ban_window: Duration,
    pub ban_time: Duration,
    pub max_sources: usize,
}

impl Default for GuardConfig {
    fn default() -> Self {
        Self {
            rate: 50.0,
            burst: 100.0,
            ban_failures: 5,
            ban_window: Duration::from_secs(60),
            ban_time: Duration::from_secs(600),
            max_sources: 100_000,
        }
    }
}

/// What the guard says about a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Allowed,
    RateLimited,
    Banned,
}

#[derive(Debug, Clone)]
struct SourceState {
    tokens: f64,
    last: Instant,
    failures: VecDeque<Instant>,
    banned_until: Option<Instant>,
}

pub struct Guard {
    config: GuardConfig,
    sources: HashMap<IpAddr, SourceState>,
    exempt: HashSet<IpAddr>,
    /// Networks never limited either: the addresses of trunks given as resources,
    /// replaced as those change.
    exempt_nets: Vec<ipnet::IpNet>,
}

impl Guard {
    pub fn new(config: GuardConfig, exempt: impl IntoIterator<Item = IpAddr>) -> Self {
        Self {
            config,
            sources: HashMap::new(),
            exempt: exempt.into_iter().collect(),
            exempt_nets: Vec::new(),
        }
    }

    /// Adds addresses that are never limited (a trunk's, once resolved).
    pub fn exempt(&mut self, ip: IpAddr) {
        self.exempt.insert(ip);
        self.sources.remove(&ip);
    }

    /// Replaces the networks that are never limited (the resource trunks'); their
    /// sources' counts and bans are forgotten.
    pub fn set_exempt_nets(&mut self, nets: Vec<ipnet::IpNet>) {
        self.sources
            .retain(|ip, _| !nets.iter().any(|net| net.contains(ip)));
        self.exempt_nets = nets;
    }

    fn is_exempt(&self, ip: IpAddr) -> bool {
        self.exempt.contains(&ip) || self.exempt_nets.iter().any(|net| net.contains(&ip))
    }

    fn state(&mut self, now: Instant, ip: IpAddr) -> &mut SourceState {
        if !self.sources.contains_key(&ip) && self.sources.len() >= self.config.max_sources {
            self.forget_idlest(now);
        }
        let burst = self.config.burst;
        self.sources.entry(ip).or_insert_with(|| SourceState {
            tokens: burst,
            last: now,
            failures: VecDeque::new(),
            banned_until: None,
        })
    }

    fn forget_idlest(&mut self, now: Instant) {
        // Banned sources are kept; of the rest, the tenth idle the longest go.
        let mut idle: Vec<(IpAddr, Instant)> = self
            .sources
            .iter()
            .filter(|(_, s)| s.banned_until.is_none_or(|until| until <= now))
            .map(|(ip, s)| (*ip, s.last))
            .collect();
        idle.sort_by_key(|(_, last)| *last);
        let drop = (self.config.max_sources / 10).max(1);
        for (ip, _) in idle.into_iter().take(drop) {
            self.sources.remove(&ip);
        }
    }

    /// A request from `ip` at `now`; `emergency` when it is a call to an emergency number.
    pub fn admit(&mut self, now: Instant, ip: IpAddr, emergency: bool) -> Admission {
        if emergency || self.is_exempt(ip) {
            return Admission::Allowed;
        }
        let (rate, burst) = (self.config.rate, self.config.burst);
        let state = self.state(now, ip);
        if let Some(until) = state.banned_until {
            if now < until {
                return Admission::Banned;
            }
            state.banned_until = None;
            state.failures.clear();
        }
        let elapsed = now.saturating_duration_since(state.last).as_secs_f64();
        state.tokens = (state.tokens + elapsed * rate).min(burst);
        state.last = now;
        if state.tokens >= 1.0 {
            state.tokens -= 1.0;
            Admission::Allowed
        } else {
            Admission::RateLimited
        }
    }

    /// An authentication from `ip` failed; returns true when that bans it.
    pub fn auth_failed(&mut self, now: Instant, ip: IpAddr) -> bool {
        if self.is_exempt(ip) {
            return false;
        }
        let (window, limit, ban_time) = (
            self.config.ban_window,
            self.config.ban_failures,
            self.config.ban_time,
        );
        let state = self.state(now, ip);
        state.failures.push_back(now);
        while state
            .failures
            .front()
            .is_some_and(|&t| now.saturating_duration_since(t) > window)
        {
            state.failures.pop_front();
        }
        if state.failures.len() as u32 >= limit && state.banned_until.is_none() {
            state.banned_until = Some(now + ban_time);
            return true;
        }
        false
    }

    pub fn is_banned(&self, now: Instant, ip: IpAddr) -> bool {
        self.sources
            .get(&ip)
            .and_then(|s| s.banned_until)
            .is_some_and(|until| now < until)
    }

    /// Addresses tracked (for memory accounting and metrics).
    pub fn tracked(&self) -> usize {
        self.sources.len()
    }
}

/// The guard the edge's shards share: one [`Guard`] per stripe of source addresses,
/// each behind its own lock, so that two shards contend only for the same source.
pub struct SharedGuard {
    stripes: Vec<std::sync::Mutex<Guard>>,
}

impl SharedGuard {
    pub fn new(config: GuardConfig, exempt: &[IpAddr], stripes: usize) -> Self {
        let stripes = stripes.max(1);
        let config = GuardConfig {
            max_sources: (config.max_sources / stripes).max(1),
            ..config
        };
        Self {
            stripes: (0..stripes)
                .map(|_| std::sync::Mutex::new(Guard::new(config.clone(), exempt.iter().copied())))
                .collect(),
        }
    }

    fn stripe(&self, ip: IpAddr) -> std::sync::MutexGuard<'_, Guard> {
        let key = match ip {
            IpAddr::V4(v4) => u64::from(u32::from(v4)),
            IpAddr::V6(v6) => (u128::from(v6) ^ (u128::from(v6) >> 64)) as u64,
        };
        let index = (key.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32) as usize % self.stripes.len();
        self.stripes[index]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// See [`Guard::admit`].
    pub fn admit(&self, now: Instant, ip: IpAddr, emergency: bool) -> Admission {
        self.stripe(ip).admit(now, ip, emergency)
    }

    /// See [`Guard::auth_failed`].
    pub fn auth_failed(&self, now: Instant, ip: IpAddr) -> bool {
        self.stripe(ip).auth_failed(now, ip)
    }

    /// See [`Guard::set_exempt_nets`].
    pub fn set_exempt_nets(&self, nets: Vec<ipnet::IpNet>) {
        for stripe in &self.stripes {
            stripe
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .set_exempt_nets(nets.clone());
        }
    }
}

/// Whether a raw message is an INVITE to one of `numbers`, read from the request line
/// alone so that it can be decided before any parsing or limit.
pub fn is_emergency_invite(bytes: &[u8], numbers: &[String]) -> bool {
    let line_end = bytes
        .iter()
        .position(|&b| b == b'\r')
        .unwrap_or(bytes.len().min(512));
    let Ok(line) = std::str::from_utf8(&bytes[..line_end.min(bytes.len())]) else {
        return false;
    };
    let mut parts = line.split(' ');
    if parts.next() != Some("INVITE") {
        return false;
    }
    let Some(uri) = parts.next() else {
        return false;
    };
    let rest = uri
        .strip_prefix("sip:")
        .or_else(|| uri.strip_prefix("sips:"))
        .or_else(|| uri.strip_prefix("tel:"))
        .unwrap_or("");
    let user = rest.split(['@', ';']).next().unwrap_or("");
    numbers.iter().any(|n| n == user)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PHONE: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 20));
    const TRUNK: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 99));

    fn guard() -> Guard {
        Guard::new(
            GuardConfig {
                rate: 10.0,
                burst: 20.0,
                ..GuardConfig::default()
            },
            [TRUNK],
        )
    }

    #[test]
    fn a_burst_then_the_rate() {
        let mut g = guard();
        let t0 = Instant::now();
        let allowed = (0..25)
            .filter(|_| g.admit(t0, PHONE, false) == Admission::Allowed)
            .count();
        assert_eq!(allowed, 20, "the burst");
        assert_eq!(g.admit(t0, PHONE, false), Admission::RateLimited);
        let t1 = t0 + Duration::from_millis(500);
        let allowed = (0..10)
            .filter(|_| g.admit(t1, PHONE, false) == Admission::Allowed)
            .count();
        assert_eq!(allowed, 5, "10 per second refill");
        // The trunk and emergency calls are never limited.
        assert!((0..1000).all(|_| g.admit(t0, TRUNK, false) == Admission::Allowed));
        assert_eq!(g.admit(t1, PHONE, true), Admission::Allowed);
    }

    #[test]
    fn five_failures_in_a_minute_ban_for_ten_minutes() {
        let mut g = guard();
        let t0 = Instant::now();
        for i in 0..4 {
            assert!(!g.auth_failed(t0 + Duration::from_secs(i * 10), PHONE));
        }
        assert!(
            g.auth_failed(t0 + Duration::from_secs(50), PHONE),
            "the fifth within 60 s"
        );
        let t = t0 + Duration::from_secs(51);
        assert_eq!(g.admit(t, PHONE, false), Admission::Banned);
        assert_eq!(
            g.admit(t, PHONE, true),
            Admission::Allowed,
            "911 gets through a ban"
        );
        assert!(g.is_banned(t0 + Duration::from_secs(649), PHONE));
        assert_eq!(
            g.admit(t0 + Duration::from_secs(651), PHONE, false),
            Admission::Allowed,
            "the ban ends"
        );
        // Failures spread over more than the window do not ban.
        let mut g = guard();
        for i in 0..10 {
            assert!(!g.auth_failed(t0 + Duration::from_secs(i * 20), PHONE));
        }
        // The trunk is never banned.
        for _ in 0..100 {
            assert!(!g.auth_failed(t0, TRUNK));
        }
    }

    #[test]
    fn a_resource_trunks_networks_are_never_limited_until_they_are_replaced() {
        let mut g = guard();
        let t0 = Instant::now();
        let carrier = IpAddr::V4(std::net::Ipv4Addr::new(198, 51, 100, 77));
        for _ in 0..10 {
            g.auth_failed(t0, carrier);
        }
        assert_eq!(g.admit(t0, carrier, false), Admission::Banned);
        // The Trunk resource names its network: the ban goes, and nothing limits it.
        g.set_exempt_nets(vec!["198.51.100.0/24".parse().unwrap()]);
        for _ in 0..1000 {
            assert_eq!(g.admit(t0, carrier, false), Admission::Allowed);
            assert!(!g.auth_failed(t0, carrier));
        }
        g.set_exempt_nets(Vec::new());
        assert_eq!(g.admit(t0, carrier, false), Admission::Allowed);
        assert!((0..200).any(|_| g.admit(t0, carrier, false) == Admission::RateLimited));
    }

    #[test]
    fn tracked_sources_are_bounded() {
        let mut g = Guard::new(
            GuardConfig {
                max_sources: 100,
                ..GuardConfig::default()
            },
            [],
        );
        let t0 = Instant::now();
        for i in 0..1000u32 {
            let ip = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            g.admit(t0 + Duration::from_millis(u64::from(i)), ip, false);
        }
        assert!(g.tracked() <= 100, "{}", g.tracked());
    }

    #[test]
    fn emergency_invites_are_recognised_from_the_request_line() {
        let numbers = vec!["911".to_owned()];
        assert!(is_emergency_invite(
            b"INVITE sip:911@pbx.example.com SIP/2.0\r\nVia: x\r\n",
            &numbers
        ));
        assert!(is_emergency_invite(
            b"INVITE sip:911@pbx;user=phone SIP/2.0\r\n",
            &numbers
        ));
        assert!(is_emergency_invite(b"INVITE tel:911 SIP/2.0\r\n", &numbers));
        assert!(!is_emergency_invite(
            b"INVITE sip:9110@pbx SIP/2.0\r\n",
            &numbers
        ));
        assert!(!is_emergency_invite(
            b"REGISTER sip:911@pbx SIP/2.0\r\n",
            &numbers
        ));
        assert!(!is_emergency_invite(b"\xff\xfe", &numbers));
        assert!(!is_emergency_invite(b"", &numbers));
    }
}
