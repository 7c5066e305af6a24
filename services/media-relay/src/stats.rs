//! Receiver statistics of one leg's incoming RTP, as RFC 3550 defines them for an RTCP
//! receiver report: the extended highest sequence number and cumulative loss (§6.4.1,
//! Appendix A.1 and A.3) and the interarrival jitter (Appendix A.8). Time is an input.

use std::time::Instant;

use crate::rtp::RtpHeader;

/// A.1: a source is valid after this many packets in sequence.
const MIN_SEQUENTIAL: u32 = 2;
/// A.1: a forward jump up to this is a loss, not a restart.
const MAX_DROPOUT: u16 = 3000;
/// A.1: a backward step up to this is reordering (or a duplicate).
const MAX_MISORDER: u16 = 100;
const SEQ_MOD: u32 = 1 << 16;

/// Sequence state of one SSRC (A.1's `source` struct).
#[derive(Debug, Clone)]
struct Source {
    ssrc: u32,
    max_seq: u16,
    /// Shifted count of sequence number wraps.
    cycles: u32,
    base_seq: u32,
    /// The sequence number after a large jump; a second packet right after it means
    /// the sender restarted.
    bad_seq: u32,
    probation: u32,
    received: u32,
    /// The previous packet used for jitter: its arrival and RTP timestamp.
    last: Option<(Instant, u32)>,
}

impl Source {
    fn new(ssrc: u32, seq: u16) -> Self {
        Self {
            ssrc,
            max_seq: seq.wrapping_sub(1),
            cycles: 0,
            base_seq: u32::from(seq),
            bad_seq: SEQ_MOD + 1,
            probation: MIN_SEQUENTIAL,
            received: 0,
            last: None,
        }
    }

    fn init_seq(&mut self, seq: u16) {
        self.base_seq = u32::from(seq);
        self.max_seq = seq;
        self.bad_seq = SEQ_MOD + 1;
        self.cycles = 0;
        self.received = 0;
    }

    /// A.1 `update_seq`: whether the packet counts.
    fn update_seq(&mut self, seq: u16) -> bool {
        let udelta = seq.wrapping_sub(self.max_seq);
        if self.probation > 0 {
            if seq == self.max_seq.wrapping_add(1) {
                self.probation -= 1;
                self.max_seq = seq;
                if self.probation == 0 {
                    self.init_seq(seq);
                    self.received += 1;
                    return true;
                }
            } else {
                self.probation = MIN_SEQUENTIAL - 1;
                self.max_seq = seq;
            }
            return false;
        }
        if udelta < MAX_DROPOUT {
            if seq < self.max_seq {
                self.cycles += SEQ_MOD;
            }
            self.max_seq = seq;
        } else if u32::from(udelta) <= SEQ_MOD - u32::from(MAX_MISORDER) {
            // A very large jump: a restarted sender if the next packet follows it.
            if u32::from(seq) == self.bad_seq {
                self.init_seq(seq);
            } else {
                self.bad_seq = (u32::from(seq) + 1) & (SEQ_MOD - 1);
                return false;
            }
        }
        // Otherwise a duplicate or reordered packet: counted, max_seq unchanged.
        self.received += 1;
        true
    }

    /// A.3: packets expected minus packets received (negative with duplicates).
    fn lost(&self) -> i64 {
        if self.probation > 0 {
            return 0;
        }
        let extended_max = i64::from(self.cycles) + i64::from(self.max_seq);
        let expected = extended_max - i64::from(self.base_seq) + 1;
        expected - i64::from(self.received)
    }
}

/// What one leg received, for `LegStats` and the receiver side of RTCP.
#[derive(Debug, Clone)]
pub struct ReceiverStats {
    clock_rate: u32,
    /// Payload types left out of the jitter (RFC 4733 events repeat one timestamp
    /// for the whole event, which is not network jitter).
    event_types: u128,
    source: Option<Source>,
    /// Loss of the SSRCs seen before the current one.
    lost_before: i64,
    /// A.8 `jitter`, in timestamp units.
    jitter: f64,
}

impl ReceiverStats {
    pub fn new(clock_rate: u32, event_payload_types: &[u8]) -> Self {
        let mut stats = Self {
            clock_rate: 8000,
            event_types: 0,
            source: None,
            lost_before: 0,
            jitter: 0.0,
        };
        stats.set_media(clock_rate, event_payload_types);
        stats
    }

    /// The clock rate of the leg's codec (0 means G.711's 8000 Hz) and the RFC 4733
    /// payload types, from the leg's SDP.
    pub fn set_media(&mut self, clock_rate: u32, event_payload_types: &[u8]) {
        self.clock_rate = if clock_rate == 0 { 8000 } else { clock_rate };
        self.event_types = event_payload_types
            .iter()
            .filter(|pt| **pt < 128)
            .fold(0, |bits, pt| bits | 1 << pt);
    }

    /// One RTP packet from the leg's far end, arriving at `now`.
    pub fn on_rtp(&mut self, now: Instant, header: &RtpHeader) {
        let source = match &mut self.source {
            Some(source) if source.ssrc == header.ssrc => source,
            _ => {
                if let Some(old) = self.source.take() {
                    self.lost_before += old.lost();
                }
                self.source
                    .insert(Source::new(header.ssrc, header.sequence))
            }
        };
        if !source.update_seq(header.sequence) {
            return;
        }
        if self.event_types & (1 << header.payload_type) != 0 {
            return;
        }
        // A.8: D(i-1, i) = (R_i - R_{i-1}) - (S_i - S_{i-1}), in timestamp units;
        // J += (|D| - J) / 16.
        if let Some((arrived, timestamp)) = source.last {
            let arrival_units =
                now.saturating_duration_since(arrived).as_secs_f64() * f64::from(self.clock_rate);
            let sent_units = f64::from(header.timestamp.wrapping_sub(timestamp) as i32);
            let d = (arrival_units - sent_units).abs();
            self.jitter += (d - self.jitter) / 16.0;
        }
        source.last = Some((now, header.timestamp));
    }

    /// Cumulative packets lost (§6.4.1), over every SSRC the leg has sent.
    pub fn lost(&self) -> i64 {
        self.lost_before + self.source.as_ref().map_or(0, Source::lost)
    }

    /// Interarrival jitter in milliseconds.
    pub fn jitter_ms(&self) -> f64 {
        self.jitter * 1000.0 / f64::from(self.clock_rate)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn header(sequence: u16, timestamp: u32) -> RtpHeader {
        RtpHeader {
            payload_type: 0,
            marker: false,
            sequence,
            timestamp,
            ssrc: 7,
        }
    }

    /// Feeds packets `(seq, timestamp, arrival ms)`.
    fn feed(stats: &mut ReceiverStats, packets: impl IntoIterator<Item = (u16, u32, u64)>) {
        let start = Instant::now();
        for (seq, ts, ms) in packets {
            stats.on_rtp(start + Duration::from_millis(ms), &header(seq, ts));
        }
    }

    #[test]
    fn a_clean_stream_has_no_loss_and_no_jitter() {
        let mut stats = ReceiverStats::new(8000, &[101]);
        feed(
            &mut stats,
            (0..500).map(|i| (i, 160 * u32::from(i), 20 * u64::from(i))),
        );
        assert_eq!(stats.lost(), 0);
        assert!(stats.jitter_ms() < 1e-9, "{}", stats.jitter_ms());
    }

    #[test]
    fn loss_counts_the_gaps_across_a_sequence_wrap() {
        let mut stats = ReceiverStats::new(8000, &[]);
        // 65,500 .. 65,535, 0 .. 100 with every 10th packet missing: 14 lost.
        let packets = (0..137u32)
            .filter(|i| i % 10 != 5)
            .map(|i| ((65_500 + i) as u16, 160 * i, 20 * u64::from(i)));
        feed(&mut stats, packets);
        assert_eq!(stats.lost(), 14);
    }

    #[test]
    fn reordering_is_not_loss_and_duplicates_make_it_negative() {
        let mut stats = ReceiverStats::new(8000, &[]);
        feed(
            &mut stats,
            [
                (1, 0, 0),
                (2, 160, 20),
                (4, 480, 40),
                (3, 320, 41),
                (5, 640, 80),
            ],
        );
        assert_eq!(stats.lost(), 0);
        feed(&mut stats, [(5, 640, 100)]);
        assert_eq!(stats.lost(), -1);
    }

    #[test]
    fn jitter_converges_to_the_injected_delay_variation() {
        // Every other packet 10 ms late: |D| = 10 ms for every pair, so J -> 10 ms.
        let mut stats = ReceiverStats::new(8000, &[]);
        feed(
            &mut stats,
            (0..400u16).map(|i| {
                let late = if i % 2 == 1 { 10 } else { 0 };
                (i, 160 * u32::from(i), 20 * u64::from(i) + late)
            }),
        );
        assert!(
            (stats.jitter_ms() - 10.0).abs() < 0.01,
            "{}",
            stats.jitter_ms()
        );
    }

    #[test]
    fn dtmf_events_do_not_count_as_jitter() {
        // RFC 4733: one timestamp for the whole event, packets every 50 ms.
        let mut stats = ReceiverStats::new(8000, &[101]);
        let start = Instant::now();
        for i in 0..50u16 {
            let mut event = header(i, 8000);
            event.payload_type = 101;
            stats.on_rtp(start + Duration::from_millis(50 * u64::from(i)), &event);
        }
        assert_eq!(stats.jitter_ms(), 0.0);
        assert_eq!(stats.lost(), 0);
    }

    #[test]
    fn a_new_ssrc_keeps_the_old_loss() {
        let mut stats = ReceiverStats::new(8000, &[]);
        feed(&mut stats, [(1, 0, 0), (2, 160, 20), (4, 480, 60)]);
        assert_eq!(stats.lost(), 1);
        let start = Instant::now();
        for (i, seq) in [900u16, 901, 903].into_iter().enumerate() {
            let mut h = header(seq, 0);
            h.ssrc = 8;
            stats.on_rtp(start + Duration::from_millis(20 * i as u64), &h);
        }
        assert_eq!(stats.lost(), 2);
    }

    #[test]
    fn a_restarted_sender_is_followed_after_two_packets() {
        let mut stats = ReceiverStats::new(8000, &[]);
        feed(&mut stats, [(1, 0, 0), (2, 160, 20), (3, 320, 40)]);
        // Same SSRC jumps to 40,000: the first is ignored, the second restarts.
        feed(
            &mut stats,
            [(40_000, 0, 60), (40_001, 160, 80), (40_002, 320, 100)],
        );
        assert_eq!(stats.lost(), 0);
    }
}
