//! G.711 (ITU-T, 1988): u-law (PCMU, payload type 0) and A-law (PCMA, payload type 8),
//! one byte per 8 kHz sample. Encoding follows the segment tables of the
//! Recommendation; decoding is a 256-entry table built once at compile time.

const BIAS: i32 = 0x84;
const CLIP: i32 = 32_635;

/// Linear 16-bit sample to u-law.
pub fn ulaw_encode(sample: i16) -> u8 {
    let mut s = i32::from(sample);
    let sign = if s < 0 {
        s = -s;
        0x80
    } else {
        0
    };
    s = s.min(CLIP) + BIAS;
    // The segment is the position of the highest set bit above bit 7.
    let exponent = (31 - (s as u32).leading_zeros()).saturating_sub(7).min(7) as i32;
    let mantissa = (s >> (exponent + 3)) & 0x0F;
    !(sign | (exponent << 4) as u8 | mantissa as u8)
}

const fn ulaw_decode_const(byte: u8) -> i16 {
    let b = !byte;
    let sign = b & 0x80;
    let exponent = ((b >> 4) & 0x07) as i32;
    let mantissa = (b & 0x0F) as i32;
    let magnitude = (((mantissa << 3) + BIAS) << exponent) - BIAS;
    if sign != 0 {
        -magnitude as i16
    } else {
        magnitude as i16
    }
}

/// Linear 16-bit sample to A-law.
pub fn alaw_encode(sample: i16) -> u8 {
    let s = i32::from(sample);
    let (sign, magnitude) = if s >= 0 {
        (0x80u8, s)
    } else {
        (0x00u8, (-s - 1).max(0))
    };
    let magnitude = magnitude.min(0x7FFF) >> 3; // 13-bit magnitude
    let byte = if magnitude < 32 {
        (magnitude >> 1) as u8
    } else {
        let exponent = (31 - (magnitude as u32).leading_zeros()) as i32 - 4; // 1..=7
        let mantissa = (magnitude >> exponent) & 0x0F;
        ((exponent << 4) | mantissa) as u8
    };
    (byte | sign) ^ 0x55
}

const fn alaw_decode_const(byte: u8) -> i16 {
    let b = byte ^ 0x55;
    let exponent = ((b >> 4) & 0x07) as i32;
    let mantissa = (b & 0x0F) as i32;
    let magnitude = if exponent == 0 {
        (mantissa << 4) + 8
    } else {
        ((mantissa << 4) + 0x108) << (exponent - 1)
    };
    if b & 0x80 != 0 {
        magnitude as i16
    } else {
        -magnitude as i16
    }
}

const fn table(alaw: bool) -> [i16; 256] {
    let mut t = [0i16; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = if alaw {
            alaw_decode_const(i as u8)
        } else {
            ulaw_decode_const(i as u8)
        };
        i += 1;
    }
    t
}

static ULAW: [i16; 256] = table(false);
static ALAW: [i16; 256] = table(true);

pub fn ulaw_decode(byte: u8) -> i16 {
    ULAW[usize::from(byte)]
}

pub fn alaw_decode(byte: u8) -> i16 {
    ALAW[usize::from(byte)]
}

/// The two G.711 laws.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Law {
    Ulaw,
    Alaw,
}

impl Law {
    /// The static RTP payload type (RFC 3551).
    pub fn payload_type(self) -> u8 {
        match self {
            Law::Ulaw => 0,
            Law::Alaw => 8,
        }
    }

    pub fn encode(self, sample: i16) -> u8 {
        match self {
            Law::Ulaw => ulaw_encode(sample),
            Law::Alaw => alaw_encode(sample),
        }
    }

    pub fn decode(self, byte: u8) -> i16 {
        match self {
            Law::Ulaw => ulaw_decode(byte),
            Law::Alaw => alaw_decode(byte),
        }
    }

    /// The byte of digital silence.
    pub fn silence(self) -> u8 {
        self.encode(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_survives_decode_then_encode() {
        for byte in 0..=255u8 {
            let u = ulaw_decode(byte);
            // u-law has two zeros (0x7F and 0xFF); both decode to 0.
            if u != 0 {
                assert_eq!(ulaw_encode(u), byte, "u-law {byte:#04x} -> {u}");
            }
            let a = alaw_decode(byte);
            assert_eq!(alaw_encode(a), byte, "A-law {byte:#04x} -> {a}");
        }
    }

    #[test]
    fn known_values_from_the_recommendation() {
        assert_eq!(ulaw_encode(0), 0xFF);
        assert_eq!(alaw_encode(0), 0xD5);
        assert_eq!(ulaw_decode(0x00), -32_124);
        assert_eq!(ulaw_decode(0x80), 32_124);
        assert_eq!(alaw_decode(0xAA), 32_256);
        assert_eq!(alaw_decode(0x2A), -32_256);
    }

    #[test]
    fn error_stays_within_the_segment_step() {
        for law in [Law::Ulaw, Law::Alaw] {
            for s in (-32_000i32..32_000).step_by(7) {
                let back = i32::from(law.decode(law.encode(s as i16)));
                let step = (s.abs() / 16).max(16);
                assert!((back - s).abs() <= step, "{law:?} {s} -> {back}");
            }
        }
    }
}
