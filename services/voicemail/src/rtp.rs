//! The session's RTP endpoint, sans I/O: parsing what arrives (G.711 audio by payload
//! type 0 or 8, RFC 4733 telephone events), a jitter buffer that places audio by its
//! RTP timestamp (so reordered packets land where they belong and lost ones leave
//! silence), and packetizing what the session says (20 ms, the call's law).

use std::collections::VecDeque;

use phone_audio::Law;

use crate::audio::FRAME;

/// How far behind the newest audio the recorder reads: room for reordering and for a
/// busy moment of the service.
const DELAY: u64 = 5 * FRAME as u64;
/// A timestamp further ahead than this starts over (a new source or a jump).
const MAX_AHEAD: u64 = 8000 * 2;

/// What a received datagram carries.
#[derive(Debug, PartialEq)]
pub enum Incoming<'a> {
    Audio {
        law: Law,
        timestamp: u32,
        payload: &'a [u8],
    },
    /// A telephone event: the digit, the event's timestamp (the same for every packet
    /// of one press), and whether this packet ends it.
    Dtmf {
        digit: char,
        timestamp: u32,
    },
    Other,
}

/// Parses an RTP packet (RFC 3550): version 2, CSRCs and extension skipped, padding
/// removed. Anything else is `None`.
pub fn parse(packet: &[u8], dtmf_payload_type: u8) -> Option<Incoming<'_>> {
    if packet.len() < 12 || packet[0] >> 6 != 2 {
        return None;
    }
    let csrcs = usize::from(packet[0] & 0x0F);
    let mut start = 12 + 4 * csrcs;
    if packet[0] & 0x10 != 0 {
        let ext = packet.get(start..start + 4)?;
        start += 4 + 4 * usize::from(u16::from_be_bytes([ext[2], ext[3]]));
    }
    let mut end = packet.len();
    if packet[0] & 0x20 != 0 {
        end = end.checked_sub(usize::from(*packet.last()?))?;
    }
    let payload = packet.get(start..end)?;
    let payload_type = packet[1] & 0x7F;
    let timestamp = u32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]);
    Some(match payload_type {
        0 => Incoming::Audio {
            law: Law::Ulaw,
            timestamp,
            payload,
        },
        8 => Incoming::Audio {
            law: Law::Alaw,
            timestamp,
            payload,
        },
        pt if pt == dtmf_payload_type && payload.len() >= 4 => {
            let digit = match payload[0] {
                d @ 0..=9 => char::from(b'0' + d),
                10 => '*',
                11 => '#',
                d @ 12..=15 => char::from(b'A' + d - 12),
                _ => return Some(Incoming::Other),
            };
            Incoming::Dtmf { digit, timestamp }
        }
        _ => Incoming::Other,
    })
}

/// Turns telephone-event packets into one digit per press (the packets of a press
/// share a timestamp; the end packet is sent three times).
#[derive(Debug, Default)]
pub struct DtmfFilter {
    last: Option<u32>,
}

impl DtmfFilter {
    pub fn accept(&mut self, timestamp: u32) -> bool {
        if self.last == Some(timestamp) {
            return false;
        }
        self.last = Some(timestamp);
        true
    }
}

/// Audio placed by RTP timestamp, read 20 ms at a time [`DELAY`] behind.
#[derive(Debug, Default)]
pub struct JitterBuffer {
    /// The timestamp of sample 0.
    origin: Option<u32>,
    /// Sample index of `ring[0]`.
    read: i64,
    ring: VecDeque<i16>,
    /// Samples that came too late to be placed.
    pub late: u64,
    /// One past the newest sample placed.
    newest: i64,
}

impl JitterBuffer {
    pub fn push(&mut self, law: Law, timestamp: u32, payload: &[u8]) {
        let origin = match self.origin {
            Some(origin) => origin,
            None => {
                self.origin = Some(timestamp);
                self.read = 0;
                self.newest = 0;
                timestamp
            }
        };
        // Extend the 32-bit offset to the 64-bit timeline near `read`.
        let offset = i64::from(timestamp.wrapping_sub(origin));
        let base = self.read.max(0) & !0xFFFF_FFFF;
        let mut position = base | offset;
        if position + (1 << 31) < self.read {
            position += 1 << 32;
        } else if position > self.read + (1 << 31) && position >= 1 << 32 {
            position -= 1 << 32;
        }
        let len = payload.len() as i64;
        if position + len <= self.read {
            self.late += payload.len() as u64;
            return;
        }
        if position > self.read + MAX_AHEAD as i64 {
            // A jump (a new source, or a timestamp reset): start over at this packet.
            self.origin = None;
            self.ring.clear();
            self.newest = 0;
            return self.push(law, timestamp, payload);
        }
        for (i, &byte) in payload.iter().enumerate() {
            let at = position + i as i64;
            if at < self.read {
                continue;
            }
            let index = (at - self.read) as usize;
            if index >= self.ring.len() {
                self.ring.resize(index + 1, 0);
            }
            self.ring[index] = law.decode(byte);
        }
        self.newest = self.newest.max(position + len);
    }

    /// Whether the next 20 ms can be read: audio has arrived [`DELAY`] beyond it, so
    /// whatever of it is still missing counts as lost. The media, not the clock,
    /// decides: after a busy moment the reader catches up without skipping audio.
    pub fn ready(&self) -> bool {
        self.origin.is_some() && self.newest >= self.read + FRAME as i64 + DELAY as i64
    }

    /// Audio buffered and not read yet, in samples.
    pub fn buffered(&self) -> usize {
        (self.newest - self.read).max(0) as usize
    }

    /// The next 20 ms (silence where nothing arrived), ready or not.
    pub fn pop(&mut self, out: &mut [i16; FRAME]) {
        for sample in out.iter_mut() {
            *sample = self.ring.pop_front().unwrap_or(0);
        }
        if self.origin.is_some() {
            self.read += FRAME as i64;
        }
    }
}

/// Packetizes what the session sends: one 20 ms G.711 packet per frame.
#[derive(Debug)]
pub struct Sender {
    law: Law,
    ssrc: u32,
    seq: u16,
    timestamp: u32,
}

impl Sender {
    pub fn new(law: Law, ssrc: u32) -> Self {
        Self {
            law,
            ssrc,
            seq: (ssrc >> 16) as u16,
            timestamp: ssrc.rotate_left(7),
        }
    }

    pub fn packet(&mut self, frame: &[i16; FRAME], out: &mut Vec<u8>) {
        out.clear();
        out.extend_from_slice(&[0x80, self.law.payload_type()]);
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.timestamp.to_be_bytes());
        out.extend_from_slice(&self.ssrc.to_be_bytes());
        out.extend(frame.iter().map(|&s| self.law.encode(s)));
        self.seq = self.seq.wrapping_add(1);
        self.timestamp = self.timestamp.wrapping_add(FRAME as u32);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(pt: u8, seq: u16, ts: u32, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0x80, pt];
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&ts.to_be_bytes());
        p.extend_from_slice(&[1, 2, 3, 4]);
        p.extend_from_slice(payload);
        p
    }

    #[test]
    fn parses_audio_and_events() {
        let p = packet(0, 1, 160, &[0xFF; 160]);
        assert!(
            matches!(parse(&p, 101), Some(Incoming::Audio { law: Law::Ulaw, timestamp: 160, payload }) if payload.len() == 160)
        );
        let p = packet(101, 2, 320, &[11, 0x8A, 0, 160]);
        assert_eq!(
            parse(&p, 101),
            Some(Incoming::Dtmf {
                digit: '#',
                timestamp: 320
            })
        );
        assert_eq!(parse(&[0x80, 0], 101), None);
        assert_eq!(parse(&packet(101, 1, 1, &[1]), 101), Some(Incoming::Other));
        // Padding longer than the packet.
        let mut p = packet(0, 1, 1, &[1, 2]);
        p[0] |= 0x20;
        *p.last_mut().unwrap() = 200;
        assert_eq!(parse(&p, 101), None);
    }

    #[test]
    fn a_press_is_one_digit() {
        let mut f = DtmfFilter::default();
        assert!(f.accept(800));
        assert!(!f.accept(800));
        assert!(!f.accept(800));
        assert!(f.accept(1600));
    }

    /// Frame `n` of a test stream: every byte is the u-law code `n` (each code decodes
    /// to a distinct, non-zero sample).
    fn frame(n: i16) -> Vec<u8> {
        vec![n as u8; FRAME]
    }

    /// The code a frame was made of; 0 for silence.
    fn level(out: &[i16; FRAME]) -> i16 {
        if out[0] == 0 {
            0
        } else {
            i16::from(Law::Ulaw.encode(out[0]))
        }
    }

    #[test]
    fn reordered_audio_lands_in_order_and_lost_audio_is_silence() {
        let mut jb = JitterBuffer::default();
        let ts0 = u32::MAX - 2 * FRAME as u32; // wraps during the test
        let order = [1i16, 3, 2, 4, 6, 7, 8, 9, 10, 11, 12, 13]; // 5 is lost, 2 and 3 swapped
        let mut heard = Vec::new();
        let mut out = [0i16; FRAME];
        for n in order {
            jb.push(
                Law::Ulaw,
                ts0.wrapping_add(FRAME as u32 * (n as u32 - 1)),
                &frame(n),
            );
            while jb.ready() {
                jb.pop(&mut out);
                heard.push(level(&out));
            }
        }
        // Read as soon as audio 100 ms beyond a frame has come: 5 is given up for lost
        // when 10 arrives, not before.
        assert_eq!(heard, vec![1, 2, 3, 4, 0, 6, 7, 8]);
        assert_eq!(jb.buffered(), 5 * FRAME);
        assert_eq!(jb.late, 0);
        // A late 5 is counted, not placed.
        jb.push(Law::Ulaw, ts0.wrapping_add(FRAME as u32 * 4), &frame(5));
        assert_eq!(jb.late, FRAME as u64);
    }

    #[test]
    fn after_a_stall_the_reader_catches_up_without_gaps() {
        let mut jb = JitterBuffer::default();
        let mut out = [0i16; FRAME];
        for n in 1..=50i16 {
            jb.push(Law::Ulaw, FRAME as u32 * (n as u32 - 1), &frame(n));
        }
        let mut heard = Vec::new();
        while jb.ready() {
            jb.pop(&mut out);
            heard.push(level(&out));
        }
        assert_eq!(heard, (1..=45).collect::<Vec<_>>());
    }

    #[test]
    fn a_packet_after_its_time_is_counted_late() {
        let mut jb = JitterBuffer::default();
        let mut out = [0i16; FRAME];
        jb.push(Law::Ulaw, 0, &frame(1));
        for _ in 0..2 {
            jb.pop(&mut out);
        }
        jb.push(Law::Ulaw, 160, &frame(2));
        assert_eq!(jb.late, 160);
    }

    #[test]
    fn the_sender_counts_up() {
        let mut s = Sender::new(Law::Alaw, 0x1234_5678);
        let mut a = Vec::new();
        let mut b = Vec::new();
        s.packet(&[0; FRAME], &mut a);
        s.packet(&[0; FRAME], &mut b);
        assert_eq!(a.len(), 12 + 160);
        assert_eq!(a[1], 8);
        assert_eq!(
            u16::from_be_bytes([b[2], b[3]]),
            u16::from_be_bytes([a[2], a[3]]).wrapping_add(1)
        );
        assert_eq!(
            u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
            u32::from_be_bytes([a[4], a[5], a[6], a[7]]).wrapping_add(160)
        );
        assert_eq!(a[12], Law::Alaw.silence());
    }
}
