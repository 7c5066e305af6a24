//! The invariants the `rtp` fuzz target (`fuzz/fuzz_targets/rtp.rs`) and the relay's
//! robustness test check on arbitrary bytes. Not part of the API.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::rtp::{build_rtp, check_rtcp, parse_rtp};
use crate::session::{
    Direction, Dropped, Kind, Latching, LegId, LegUpdate, Session, Timeouts, Verdict,
};
use crate::stats::ReceiverStats;

/// Asserts: no panic; a parsed RTP header is what the bytes say and prints back to them;
/// a session fed the bytes (cut into datagrams, from a few sources, on both legs and
/// ports) forwards only well-formed packets from admitted sources, to the other leg's
/// far end, and its counters add up; receiver statistics stay finite.
pub fn check(data: &[u8]) {
    if let Ok(header) = parse_rtp(data) {
        assert_eq!(header.sequence, u16::from_be_bytes([data[2], data[3]]));
        assert_eq!(header.payload_type, data[1] & 0x7f);
        if data[0] == 0x80 {
            assert_eq!(build_rtp(&header, &data[12..]), data);
        }
    }
    let _ = check_rtcp(data);

    let start = Instant::now();
    let timeouts = Timeouts {
        media: Duration::from_secs(60),
        hold: Duration::from_secs(3600),
    };
    let sources: [SocketAddr; 3] = [
        "192.0.2.1:4000".parse().unwrap_or_else(|_| unreachable!()),
        "192.0.2.2:5000".parse().unwrap_or_else(|_| unreachable!()),
        "198.51.100.3:6000"
            .parse()
            .unwrap_or_else(|_| unreachable!()),
    ];
    let mut session = Session::new(start, Latching::Symmetric, Latching::Strict, timeouts);
    for (leg, remote, latching) in [
        (LegId::A, sources[0], Latching::Symmetric),
        (LegId::B, sources[1], Latching::Strict),
    ] {
        session.update_leg(
            start,
            leg,
            LegUpdate {
                remote: Some(remote),
                direction: Direction::SendRecv,
                latching,
                clock_rate: 8000,
                event_payload_types: vec![101],
            },
        );
    }
    let mut forwarded = [0u64; 2];
    let mut stats = ReceiverStats::new(8000, &[101]);
    // Datagrams: the input cut at each 0xff byte; the byte after a cut picks the leg,
    // kind, source and arrival time.
    for (i, datagram) in data.split(|b| *b == 0xff).enumerate() {
        let pick = datagram.first().copied().unwrap_or(0);
        let leg = if pick & 1 == 0 { LegId::A } else { LegId::B };
        let kind = if pick & 2 == 0 { Kind::Rtp } else { Kind::Rtcp };
        let mut source = sources[usize::from(pick >> 2) % 3];
        if kind == Kind::Rtcp {
            source.set_port(source.port() + 1);
        }
        let now = start + Duration::from_millis(20 * i as u64 + u64::from(pick));
        let verdict = session.on_packet(now, leg, kind, source, datagram);
        if let Verdict::Forward {
            leg: out,
            kind: out_kind,
            ..
        } = verdict
        {
            assert_eq!(out, leg.other());
            assert_eq!(out_kind, kind);
            match kind {
                Kind::Rtp => assert!(parse_rtp(datagram).is_ok()),
                Kind::Rtcp => assert!(check_rtcp(datagram).is_ok()),
            }
            forwarded[out.index()] += 1;
        }
        if let Verdict::Drop(Dropped::Malformed(_)) = verdict {
            match kind {
                Kind::Rtp => assert!(parse_rtp(datagram).is_err()),
                Kind::Rtcp => assert!(check_rtcp(datagram).is_err()),
            }
        }
        if let Ok(header) = parse_rtp(datagram) {
            stats.on_rtp(now, &header);
        }
    }
    for leg in [LegId::A, LegId::B] {
        let counters = session.leg(leg).counters();
        assert_eq!(counters.packets_sent, forwarded[leg.index()]);
        assert!(session.leg(leg).jitter_ms().is_finite());
    }
    assert!(stats.jitter_ms().is_finite() && stats.jitter_ms() >= 0.0);
    let _ = session.handle_timeout(start + Duration::from_secs(7200));
}
