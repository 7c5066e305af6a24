//! One call's media as a state machine without IO (STYLE.md habit 1): two legs, each
//! with the far end from SDP, its latching mode and receiver statistics. The driver
//! feeds every datagram with its arrival time and gets a verdict (forward to this
//! address out of that leg, or drop and why); it asks for the next timeout and feeds
//! the clock back. Nothing here reads a clock or touches a socket, so the tests below
//! run whole calls on simulated time.
//!
//! ```text
//!   far end A  --->  [leg A port]  -- verdict -->  [leg B port]  --->  far end B
//!   far end A  <---  [leg A port]  <-- verdict --  [leg B port]  <---  far end B
//! ```
//!
//! **Latching.** `Strict` (a peer with `nat=no`) takes packets only from the address
//! in the SDP (RTCP from its port + 1). `Symmetric` (`nat=yes`, "comedia") learns the
//! real source: at once when a packet comes from the SDP's IP address, otherwise after
//! [`LEARN_PACKETS`] packets in sequence from one source and SSRC, the defence against
//! RTP bleed (an attacker spraying the port before the phone speaks wins nothing with
//! one packet). Until latched nothing is forwarded from that leg. Once latched, packets
//! from any other source are dropped and counted as foreign. A new remote (re-INVITE)
//! starts the latching again.
//!
//! **Timeouts.** Once both legs have somewhere to send, a leg that sends nothing for
//! `media` (Asterisk's `rtptimeout`, 60 s) times out, or for `hold`
//! (`rtpholdtimeout`) while any leg is on hold (sendonly, recvonly or inactive). Before
//! that, a session still being set up lives for `hold` at most, so an edge that died
//! mid-call cannot leak its ports. Every update restarts the clock.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::rtp::{check_rtcp, parse_rtp, Malformed};
use crate::stats::ReceiverStats;

/// Packets in sequence from one source before a symmetric leg latches onto an address
/// other than the SDP's.
pub const LEARN_PACKETS: u32 = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LegId {
    A,
    B,
}

impl LegId {
    pub fn index(self) -> usize {
        match self {
            LegId::A => 0,
            LegId::B => 1,
        }
    }

    pub fn other(self) -> LegId {
        match self {
            LegId::A => LegId::B,
            LegId::B => LegId::A,
        }
    }
}

/// RTP on the even port, RTCP on the odd one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Rtp,
    Rtcp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Latching {
    Strict,
    Symmetric,
}

/// The SDP direction attribute (RFC 3264 §5.1) of a leg's last offer or answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    SendRecv,
    SendOnly,
    RecvOnly,
    Inactive,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub media: Duration,
    pub hold: Duration,
}

/// What a leg's SDP says, from the edge's UpdateLeg.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LegUpdate {
    pub remote: Option<SocketAddr>,
    pub direction: Direction,
    pub latching: Latching,
    /// The codec's RTP clock (0: 8000, as G.711).
    pub clock_rate: u32,
    /// RFC 4733 `telephone-event` payload types.
    pub event_payload_types: Vec<u8>,
}

/// Why a datagram was not forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dropped {
    Malformed(Malformed),
    /// From a source other than the expected or latched one (bleed, injection).
    Foreign,
    /// A symmetric leg still learning its source.
    Learning,
    /// The other leg has no far end yet (no SDP answer).
    NoDestination,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Send the datagram, unchanged, out of `leg`'s `kind` port to `to`.
    Forward {
        leg: LegId,
        kind: Kind,
        to: SocketAddr,
    },
    Drop(Dropped),
}

/// Counters of one leg: "received" is what its far end sent to the relay, "sent" what
/// the relay sent to its far end.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LegCounters {
    pub packets_received: u64,
    pub bytes_received: u64,
    pub packets_sent: u64,
    pub bytes_sent: u64,
    pub packets_foreign: u64,
    pub packets_malformed: u64,
    pub rtcp_packets_received: u64,
}

/// A symmetric leg's candidate source while learning.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    source: SocketAddr,
    ssrc: u32,
    next_seq: u16,
    seen: u32,
}

#[derive(Debug, Clone)]
pub struct Leg {
    remote: Option<SocketAddr>,
    latching: Latching,
    direction: Direction,
    latched: Option<SocketAddr>,
    latched_rtcp: Option<SocketAddr>,
    candidate: Option<Candidate>,
    /// Set while this leg's far end is replaced (RedirectLeg: the voicemail service).
    redirect: Option<SocketAddr>,
    rx: ReceiverStats,
    counters: LegCounters,
    last_rx: Option<Instant>,
}

impl Leg {
    fn new(latching: Latching) -> Self {
        Self {
            remote: None,
            latching,
            direction: Direction::SendRecv,
            latched: None,
            latched_rtcp: None,
            candidate: None,
            redirect: None,
            rx: ReceiverStats::new(8000, &[]),
            counters: LegCounters::default(),
            last_rx: None,
        }
    }

    pub fn remote(&self) -> Option<SocketAddr> {
        self.remote
    }

    pub fn latching(&self) -> Latching {
        self.latching
    }

    pub fn direction(&self) -> Direction {
        self.direction
    }

    /// Where this leg's packets really come from, once known: the redirect target, the
    /// symmetric leg's latched source, or a strict leg's remote once it has spoken.
    pub fn latched(&self) -> Option<SocketAddr> {
        match (self.redirect, self.latching) {
            (Some(target), _) => Some(target),
            (None, Latching::Symmetric) => self.latched,
            (None, Latching::Strict) => self.remote.filter(|_| self.counters.packets_received > 0),
        }
    }

    pub fn redirect(&self) -> Option<SocketAddr> {
        self.redirect
    }

    pub fn counters(&self) -> LegCounters {
        self.counters
    }

    /// Cumulative loss of what this leg's far end sent (RFC 3550 §6.4.1).
    pub fn packets_lost(&self) -> i64 {
        self.rx.lost()
    }

    /// Interarrival jitter of what this leg's far end sent, in ms (RFC 3550 A.8).
    pub fn jitter_ms(&self) -> f64 {
        self.rx.jitter_ms()
    }

    fn forget_latch(&mut self) {
        self.latched = None;
        self.latched_rtcp = None;
        self.candidate = None;
    }

    /// Whether the leg has somewhere to send to.
    fn reachable(&self) -> bool {
        self.redirect.is_some() || self.remote.is_some()
    }

    /// Where packets for this leg's far end go.
    fn destination(&self, kind: Kind) -> Option<SocketAddr> {
        let rtcp_of = |addr: SocketAddr| SocketAddr::new(addr.ip(), addr.port().wrapping_add(1));
        if let Some(target) = self.redirect {
            return Some(match kind {
                Kind::Rtp => target,
                Kind::Rtcp => rtcp_of(target),
            });
        }
        let rtp = match self.latching {
            Latching::Symmetric => self.latched.or(self.remote),
            Latching::Strict => self.remote,
        }?;
        Some(match kind {
            Kind::Rtp => rtp,
            Kind::Rtcp => match self.latching {
                Latching::Symmetric => self.latched_rtcp.unwrap_or_else(|| rtcp_of(rtp)),
                Latching::Strict => rtcp_of(rtp),
            },
        })
    }

    /// Whether `source` can only be foreign: not the redirect target, not the strict
    /// remote, or not what the leg latched to.
    fn known_foreign(&self, kind: Kind, source: SocketAddr) -> bool {
        let expected = |addr: SocketAddr| comes_from(kind, addr, source);
        if let Some(target) = self.redirect {
            return !expected(target);
        }
        match (self.latching, kind) {
            (Latching::Strict, _) => !self.remote.is_some_and(expected),
            (Latching::Symmetric, Kind::Rtp) => self.latched.is_some_and(|l| l != source),
            (Latching::Symmetric, Kind::Rtcp) => self.latched_rtcp.is_some_and(|l| l != source),
        }
    }

    /// Whether a packet from `source` is this leg's far end speaking, latching if it is
    /// the moment to.
    fn admit(
        &mut self,
        kind: Kind,
        source: SocketAddr,
        rtp: Option<&crate::rtp::RtpHeader>,
    ) -> Result<(), Dropped> {
        let expected = |addr: SocketAddr| comes_from(kind, addr, source);
        if let Some(target) = self.redirect {
            return if expected(target) {
                Ok(())
            } else {
                Err(Dropped::Foreign)
            };
        }
        match self.latching {
            Latching::Strict => match self.remote {
                Some(remote) if expected(remote) => Ok(()),
                _ => Err(Dropped::Foreign),
            },
            Latching::Symmetric => match kind {
                Kind::Rtp => self.admit_symmetric_rtp(source, rtp),
                Kind::Rtcp => self.admit_symmetric_rtcp(source),
            },
        }
    }

    fn admit_symmetric_rtp(
        &mut self,
        source: SocketAddr,
        rtp: Option<&crate::rtp::RtpHeader>,
    ) -> Result<(), Dropped> {
        if let Some(latched) = self.latched {
            return if latched == source {
                Ok(())
            } else {
                Err(Dropped::Foreign)
            };
        }
        // The SDP's own address speaking (no NAT in between): nothing to learn. Only
        // the exact address and port: another program on the phone's IP address (or
        // behind the same NAT) must go through learning like anyone else.
        if self.remote == Some(source) {
            self.latched = Some(source);
            return Ok(());
        }
        let Some(header) = rtp else {
            return Err(Dropped::Learning);
        };
        let candidate = match self.candidate {
            Some(c)
                if c.source == source && c.ssrc == header.ssrc && c.next_seq == header.sequence =>
            {
                Candidate {
                    seen: c.seen + 1,
                    next_seq: header.sequence.wrapping_add(1),
                    ..c
                }
            }
            _ => Candidate {
                source,
                ssrc: header.ssrc,
                next_seq: header.sequence.wrapping_add(1),
                seen: 1,
            },
        };
        if candidate.seen >= LEARN_PACKETS {
            self.candidate = None;
            self.latched = Some(source);
            Ok(())
        } else {
            self.candidate = Some(candidate);
            Err(Dropped::Learning)
        }
    }

    fn admit_symmetric_rtcp(&mut self, source: SocketAddr) -> Result<(), Dropped> {
        if let Some(latched) = self.latched_rtcp {
            return if latched == source {
                Ok(())
            } else {
                Err(Dropped::Foreign)
            };
        }
        // RTCP latches to the first packet from the IP address RTP latched to (a NAT
        // maps the RTCP port on its own); before RTP latches, nothing is admitted.
        match self.latched {
            Some(rtp) if rtp.ip() == source.ip() => {
                self.latched_rtcp = Some(source);
                Ok(())
            }
            _ => Err(Dropped::Foreign),
        }
    }
}

/// Whether a `kind` packet from `source` is from the far end whose RTP address is
/// `rtp` (its RTCP comes from the port after, RFC 3550 §11).
fn comes_from(kind: Kind, rtp: SocketAddr, source: SocketAddr) -> bool {
    match kind {
        Kind::Rtp => rtp == source,
        Kind::Rtcp => rtp.ip() == source.ip() && rtp.port().wrapping_add(1) == source.port(),
    }
}

/// A timed-out leg: the edge ends the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeout {
    pub leg: LegId,
    pub silent: Duration,
}

/// One call's two legs.
#[derive(Debug, Clone)]
pub struct Session {
    legs: [Leg; 2],
    timeouts: Timeouts,
    created: Instant,
    /// The clock the silence timers count from: creation, or the last update.
    timer_base: Instant,
}

impl Session {
    pub fn new(
        now: Instant,
        latching_a: Latching,
        latching_b: Latching,
        timeouts: Timeouts,
    ) -> Self {
        Self {
            legs: [Leg::new(latching_a), Leg::new(latching_b)],
            timeouts,
            created: now,
            timer_base: now,
        }
    }

    pub fn leg(&self, id: LegId) -> &Leg {
        &self.legs[id.index()]
    }

    pub fn created(&self) -> Instant {
        self.created
    }

    /// A datagram that arrived on `leg`'s `kind` port from `source`.
    pub fn on_packet(
        &mut self,
        now: Instant,
        leg: LegId,
        kind: Kind,
        source: SocketAddr,
        packet: &[u8],
    ) -> Verdict {
        let this = &mut self.legs[leg.index()];
        // A source that is certainly wrong is foreign whatever it sent.
        if this.known_foreign(kind, source) {
            this.counters.packets_foreign += 1;
            return Verdict::Drop(Dropped::Foreign);
        }
        let header = match kind {
            Kind::Rtp => parse_rtp(packet).map(Some),
            Kind::Rtcp => check_rtcp(packet).map(|()| None),
        };
        let header = match header {
            Ok(header) => header,
            Err(malformed) => {
                this.counters.packets_malformed += 1;
                return Verdict::Drop(Dropped::Malformed(malformed));
            }
        };
        if let Err(dropped) = this.admit(kind, source, header.as_ref()) {
            if dropped == Dropped::Foreign {
                this.counters.packets_foreign += 1;
            }
            return Verdict::Drop(dropped);
        }
        let len = packet.len() as u64;
        this.counters.packets_received += 1;
        this.counters.bytes_received += len;
        this.last_rx = Some(now);
        match header {
            Some(header) => this.rx.on_rtp(now, &header),
            None => this.counters.rtcp_packets_received += 1,
        }
        let out = &mut self.legs[leg.other().index()];
        match out.destination(kind) {
            Some(to) => {
                out.counters.packets_sent += 1;
                out.counters.bytes_sent += len;
                Verdict::Forward {
                    leg: leg.other(),
                    kind,
                    to,
                }
            }
            None => Verdict::Drop(Dropped::NoDestination),
        }
    }

    /// A leg's new SDP (offer, answer, re-INVITE or hold).
    pub fn update_leg(&mut self, now: Instant, leg: LegId, update: LegUpdate) {
        let this = &mut self.legs[leg.index()];
        if this.remote != update.remote || this.latching != update.latching {
            this.forget_latch();
        }
        this.remote = update.remote;
        this.latching = update.latching;
        this.direction = update.direction;
        this.rx
            .set_media(update.clock_rate, &update.event_payload_types);
        self.timer_base = now;
    }

    /// Replaces the far end of the leg opposite `from` with `target` (what `from`'s far
    /// end sends goes there; what `target` sends goes back to it); `None` undoes it.
    pub fn redirect(&mut self, now: Instant, from: LegId, target: Option<SocketAddr>) {
        self.legs[from.other().index()].redirect = target;
        self.timer_base = now;
    }

    fn on_hold(&self) -> bool {
        self.legs.iter().any(|l| l.direction != Direction::SendRecv)
    }

    fn deadline(&self, leg: LegId) -> Instant {
        if !self.legs.iter().all(Leg::reachable) {
            return self.timer_base + self.timeouts.hold;
        }
        let limit = if self.on_hold() {
            self.timeouts.hold
        } else {
            self.timeouts.media
        };
        let base = match self.legs[leg.index()].last_rx {
            Some(last) => last.max(self.timer_base),
            None => self.timer_base,
        };
        base + limit
    }

    /// When [`Session::handle_timeout`] has something to say at the latest.
    pub fn next_timeout(&self) -> Instant {
        self.deadline(LegId::A).min(self.deadline(LegId::B))
    }

    /// The first leg silent past its limit at `now`, if any.
    pub fn handle_timeout(&self, now: Instant) -> Option<Timeout> {
        [LegId::A, LegId::B].into_iter().find_map(|leg| {
            let deadline = self.deadline(leg);
            (now >= deadline).then(|| {
                let limit = deadline - self.base(leg);
                Timeout {
                    leg,
                    silent: limit + (now - deadline),
                }
            })
        })
    }

    fn base(&self, leg: LegId) -> Instant {
        match self.legs[leg.index()].last_rx {
            Some(last) if self.legs.iter().all(Leg::reachable) => last.max(self.timer_base),
            _ => self.timer_base,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rtp::{build_rtp, RtpHeader};

    const TIMEOUTS: Timeouts = Timeouts {
        media: Duration::from_secs(60),
        hold: Duration::from_secs(3600),
    };

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    fn rtp(ssrc: u32, sequence: u16) -> Vec<u8> {
        build_rtp(
            &RtpHeader {
                payload_type: 0,
                marker: false,
                sequence,
                timestamp: u32::from(sequence) * 160,
                ssrc,
            },
            &[0xd5; 160],
        )
    }

    fn update(remote: &str, latching: Latching) -> LegUpdate {
        LegUpdate {
            remote: Some(addr(remote)),
            direction: Direction::SendRecv,
            latching,
            clock_rate: 8000,
            event_payload_types: vec![101],
        }
    }

    /// A call between a carrier (strict) and a phone behind NAT (symmetric) whose SDP
    /// names its private address.
    fn call(now: Instant) -> Session {
        let mut session = Session::new(now, Latching::Strict, Latching::Symmetric, TIMEOUTS);
        session.update_leg(now, LegId::A, update("203.0.113.5:30000", Latching::Strict));
        session.update_leg(
            now,
            LegId::B,
            update("192.168.1.20:4000", Latching::Symmetric),
        );
        session
    }

    fn forward(leg: LegId, kind: Kind, to: &str) -> Verdict {
        Verdict::Forward {
            leg,
            kind,
            to: addr(to),
        }
    }

    #[test]
    fn strict_leg_forwards_from_the_sdp_address_only() {
        let now = Instant::now();
        let mut s = call(now);
        let carrier = addr("203.0.113.5:30000");
        // Before the phone latches, the carrier's audio goes to the SDP address.
        assert_eq!(
            s.on_packet(now, LegId::A, Kind::Rtp, carrier, &rtp(1, 1)),
            forward(LegId::B, Kind::Rtp, "192.168.1.20:4000")
        );
        assert_eq!(
            s.on_packet(
                now,
                LegId::A,
                Kind::Rtp,
                addr("203.0.113.5:30002"),
                &rtp(1, 2)
            ),
            Verdict::Drop(Dropped::Foreign)
        );
        let rtcp = [0x80, 201, 0, 1, 0, 0, 0, 1];
        assert_eq!(
            s.on_packet(now, LegId::A, Kind::Rtcp, addr("203.0.113.5:30001"), &rtcp),
            forward(LegId::B, Kind::Rtcp, "192.168.1.20:4001")
        );
        assert_eq!(s.leg(LegId::A).counters().packets_foreign, 1);
        assert_eq!(s.leg(LegId::A).counters().rtcp_packets_received, 1);
        assert_eq!(s.leg(LegId::B).counters().packets_sent, 2);
    }

    #[test]
    fn symmetric_leg_learns_the_nat_address_then_refuses_others() {
        let now = Instant::now();
        let mut s = call(now);
        let nat = addr("198.51.100.7:61000");
        // Two packets in sequence are not enough; the third latches.
        for seq in 10..12 {
            assert_eq!(
                s.on_packet(now, LegId::B, Kind::Rtp, nat, &rtp(9, seq)),
                Verdict::Drop(Dropped::Learning)
            );
        }
        assert_eq!(
            s.on_packet(now, LegId::B, Kind::Rtp, nat, &rtp(9, 12)),
            forward(LegId::A, Kind::Rtp, "203.0.113.5:30000")
        );
        assert_eq!(s.leg(LegId::B).latched(), Some(nat));
        // Audio to the phone now goes to where it really is.
        assert_eq!(
            s.on_packet(
                now,
                LegId::A,
                Kind::Rtp,
                addr("203.0.113.5:30000"),
                &rtp(1, 1)
            ),
            forward(LegId::B, Kind::Rtp, "198.51.100.7:61000")
        );
        // An injector on another port is dropped and counted; the call goes on.
        assert_eq!(
            s.on_packet(
                now,
                LegId::B,
                Kind::Rtp,
                addr("198.51.100.7:61002"),
                &rtp(9, 13)
            ),
            Verdict::Drop(Dropped::Foreign)
        );
        assert_eq!(s.leg(LegId::B).counters().packets_foreign, 1);
        // RTCP latches to the NAT's RTCP mapping from the same IP address.
        let rtcp = [0x80, 200, 0, 1, 0, 0, 0, 9];
        assert_eq!(
            s.on_packet(now, LegId::A, Kind::Rtcp, addr("203.0.113.5:30001"), &rtcp),
            forward(LegId::B, Kind::Rtcp, "198.51.100.7:61001")
        );
        assert_eq!(
            s.on_packet(now, LegId::B, Kind::Rtcp, addr("198.51.100.7:52000"), &rtcp),
            forward(LegId::A, Kind::Rtcp, "203.0.113.5:30001")
        );
        assert_eq!(
            s.on_packet(now, LegId::A, Kind::Rtcp, addr("203.0.113.5:30001"), &rtcp),
            forward(LegId::B, Kind::Rtcp, "198.51.100.7:52000")
        );
    }

    #[test]
    fn a_spray_before_the_phone_speaks_does_not_win_the_latch() {
        let now = Instant::now();
        let mut s = call(now);
        // RTP bleed: an attacker sprays packets with changing SSRCs and sequence
        // numbers, interleaved with the phone's first packets.
        let attacker = addr("192.0.2.66:5555");
        let nat = addr("198.51.100.7:61000");
        for i in 0..3u16 {
            s.on_packet(
                now,
                LegId::B,
                Kind::Rtp,
                attacker,
                &rtp(u32::from(i) + 100, i * 7),
            );
            s.on_packet(now, LegId::B, Kind::Rtp, nat, &rtp(9, 20 + i));
        }
        assert_eq!(s.leg(LegId::B).latched(), None);
        // The phone's next packets continue its sequence from the same source.
        assert_eq!(
            s.on_packet(now, LegId::B, Kind::Rtp, nat, &rtp(9, 23)),
            Verdict::Drop(Dropped::Learning)
        );
        assert_eq!(
            s.on_packet(now, LegId::B, Kind::Rtp, nat, &rtp(9, 24)),
            forward(LegId::A, Kind::Rtp, "203.0.113.5:30000")
        );
        assert_eq!(s.leg(LegId::B).latched(), Some(nat));
    }

    #[test]
    fn a_symmetric_leg_latches_at_once_from_its_sdp_address() {
        let now = Instant::now();
        let mut s = Session::new(now, Latching::Symmetric, Latching::Strict, TIMEOUTS);
        s.update_leg(
            now,
            LegId::A,
            update("203.0.113.9:7078", Latching::Symmetric),
        );
        s.update_leg(now, LegId::B, update("203.0.113.5:30000", Latching::Strict));
        // Another port on the same address must learn like any stranger.
        assert_eq!(
            s.on_packet(
                now,
                LegId::A,
                Kind::Rtp,
                addr("203.0.113.9:7080"),
                &rtp(3, 1)
            ),
            Verdict::Drop(Dropped::Learning)
        );
        assert_eq!(
            s.on_packet(
                now,
                LegId::A,
                Kind::Rtp,
                addr("203.0.113.9:7078"),
                &rtp(1, 1)
            ),
            forward(LegId::B, Kind::Rtp, "203.0.113.5:30000")
        );
        assert_eq!(s.leg(LegId::A).latched(), Some(addr("203.0.113.9:7078")));
    }

    #[test]
    fn a_reinvite_with_a_new_address_relatches() {
        let now = Instant::now();
        let mut s = call(now);
        let first = addr("192.168.1.20:4000");
        s.on_packet(now, LegId::B, Kind::Rtp, first, &rtp(9, 1));
        assert_eq!(s.leg(LegId::B).latched(), Some(first));
        s.update_leg(
            now,
            LegId::B,
            update("192.168.1.20:4100", Latching::Symmetric),
        );
        assert_eq!(s.leg(LegId::B).latched(), None);
        assert_eq!(
            s.on_packet(
                now,
                LegId::B,
                Kind::Rtp,
                addr("192.168.1.20:4100"),
                &rtp(9, 2)
            ),
            forward(LegId::A, Kind::Rtp, "203.0.113.5:30000")
        );
    }

    #[test]
    fn malformed_and_unanswered() {
        let now = Instant::now();
        let mut s = Session::new(now, Latching::Strict, Latching::Strict, TIMEOUTS);
        s.update_leg(now, LegId::A, update("203.0.113.5:30000", Latching::Strict));
        let carrier = addr("203.0.113.5:30000");
        assert!(matches!(
            s.on_packet(now, LegId::A, Kind::Rtp, carrier, b"hello"),
            Verdict::Drop(Dropped::Malformed(_))
        ));
        // Leg B has no SDP answer yet.
        assert_eq!(
            s.on_packet(now, LegId::A, Kind::Rtp, carrier, &rtp(1, 1)),
            Verdict::Drop(Dropped::NoDestination)
        );
        assert_eq!(s.leg(LegId::A).counters().packets_malformed, 1);
    }

    #[test]
    fn redirect_sends_the_caller_to_voicemail_and_back() {
        let now = Instant::now();
        let mut s = call(now);
        let voicemail = addr("10.0.0.30:20000");
        s.redirect(now, LegId::A, Some(voicemail));
        let carrier = addr("203.0.113.5:30000");
        assert_eq!(
            s.on_packet(now, LegId::A, Kind::Rtp, carrier, &rtp(1, 1)),
            forward(LegId::B, Kind::Rtp, "10.0.0.30:20000")
        );
        assert_eq!(
            s.on_packet(now, LegId::B, Kind::Rtp, voicemail, &rtp(5, 1)),
            forward(LegId::A, Kind::Rtp, "203.0.113.5:30000")
        );
        // The phone (still ringing, say) is not heard while redirected.
        assert_eq!(
            s.on_packet(
                now,
                LegId::B,
                Kind::Rtp,
                addr("192.168.1.20:4000"),
                &rtp(9, 1)
            ),
            Verdict::Drop(Dropped::Foreign)
        );
        s.redirect(now, LegId::A, None);
        assert_eq!(
            s.on_packet(now, LegId::A, Kind::Rtp, carrier, &rtp(1, 2)),
            forward(LegId::B, Kind::Rtp, "192.168.1.20:4000")
        );
    }

    #[test]
    fn silence_times_out_after_the_media_timeout() {
        let start = Instant::now();
        let mut s = call(start);
        let carrier = addr("203.0.113.5:30000");
        let phone = addr("192.168.1.20:4000");
        // 30 s of audio both ways, then the phone goes quiet.
        let mut now = start;
        for seq in 0..1500u16 {
            now = start + Duration::from_millis(20 * u64::from(seq));
            s.on_packet(now, LegId::A, Kind::Rtp, carrier, &rtp(1, seq));
            if seq < 500 {
                s.on_packet(now, LegId::B, Kind::Rtp, phone, &rtp(9, seq));
            }
        }
        let phone_quiet_since = start + Duration::from_millis(20 * 499);
        assert_eq!(s.next_timeout(), phone_quiet_since + TIMEOUTS.media);
        assert_eq!(s.handle_timeout(now), None);
        let at = s.next_timeout();
        assert_eq!(
            s.handle_timeout(at),
            Some(Timeout {
                leg: LegId::B,
                silent: TIMEOUTS.media
            })
        );
    }

    #[test]
    fn hold_gets_the_long_timeout_and_resume_restarts_the_clock() {
        let start = Instant::now();
        let mut s = call(start);
        let mut hold = update("203.0.113.5:30000", Latching::Strict);
        hold.direction = Direction::SendOnly;
        s.update_leg(start, LegId::A, hold);
        assert_eq!(s.handle_timeout(start + Duration::from_secs(120)), None);
        assert_eq!(s.next_timeout(), start + TIMEOUTS.hold);
        let resumed = start + Duration::from_secs(1800);
        s.update_leg(
            resumed,
            LegId::A,
            update("203.0.113.5:30000", Latching::Strict),
        );
        assert_eq!(s.next_timeout(), resumed + TIMEOUTS.media);
    }

    #[test]
    fn a_session_never_set_up_ends_after_the_hold_timeout() {
        let start = Instant::now();
        let s = Session::new(start, Latching::Strict, Latching::Strict, TIMEOUTS);
        assert_eq!(s.next_timeout(), start + TIMEOUTS.hold);
        assert_eq!(
            s.handle_timeout(start + TIMEOUTS.hold),
            Some(Timeout {
                leg: LegId::A,
                silent: TIMEOUTS.hold
            })
        );
    }

    #[test]
    fn stats_follow_what_was_injected() {
        let start = Instant::now();
        let mut s = call(start);
        let carrier = addr("203.0.113.5:30000");
        // 1,000 packets, every 50th lost, every other one 4 ms late.
        for seq in (0..1000u16).filter(|seq| seq % 50 != 25) {
            let late = if seq % 2 == 1 { 4 } else { 0 };
            let now = start + Duration::from_millis(20 * u64::from(seq) + late);
            s.on_packet(now, LegId::A, Kind::Rtp, carrier, &rtp(1, seq));
        }
        let a = s.leg(LegId::A);
        assert_eq!(a.packets_lost(), 20);
        assert_eq!(a.counters().packets_received, 980);
        assert_eq!(a.counters().bytes_received, 980 * 172);
        assert!((a.jitter_ms() - 4.0).abs() < 0.1, "{}", a.jitter_ms());
        assert_eq!(s.leg(LegId::B).counters().packets_sent, 980);
    }
}
