//! GSM 06.10 full-rate speech (RPE-LTP, 13 kbit/s): 160 samples of 8 kHz audio per
//! 20 ms frame, 260 bits of parameters.
//!
//! The [`Decoder`] is the Recommendation's fixed-point decoder, operation for
//! operation, so it sounds like every other GSM decoder. The [`Encoder`] does the
//! analysis (autocorrelation and Schur recursion, the long-term lag and gain search,
//! the RPE grid choice) in floating point, and everything a decoder repeats (LAR
//! decoding and interpolation, the short-term lattice, the long-term filter, APCM
//! quantization and its inverse) in the same fixed-point arithmetic as the decoder, so
//! the encoder's own reconstruction tracks the far end's and the long-term predictor
//! does not drift. Its frames are valid GSM 06.10 and decode with any decoder (libgsm
//! in sox, Asterisk, the one here), though they are not bit-identical to the
//! reference encoder's.

/// Samples per frame.
pub const FRAME_SAMPLES: usize = 160;

/// The parameters of one frame, as transmitted (every field non-negative).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Frame {
    /// Log-area ratios, offset so that each is non-negative (6, 6, 5, 5, 4, 4, 3, 3 bits).
    pub larc: [u8; 8],
    pub sub: [Subframe; 4],
}

/// One 5 ms sub-frame: long-term lag and gain, RPE grid, block maximum and pulses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Subframe {
    /// Lag, 40..=120 (7 bits).
    pub nc: u8,
    /// Gain index (2 bits).
    pub bc: u8,
    /// Grid position (2 bits).
    pub mc: u8,
    /// Block amplitude (6 bits).
    pub xmaxc: u8,
    /// The 13 pulses (3 bits each).
    pub xmc: [u8; 13],
}

const LARC_BITS: [u32; 8] = [6, 6, 5, 5, 4, 4, 3, 3];
const MIC: [i16; 8] = [-32, -32, -16, -16, -8, -8, -4, -4];
const MAC: [i16; 8] = [31, 31, 15, 15, 7, 7, 3, 3];
const A: [i16; 8] = [20480, 20480, 20480, 20480, 13964, 15360, 8534, 9036];
const B: [i16; 8] = [0, 0, 2048, -2560, 94, -1792, -341, -1144];
const INVA: [i16; 8] = [13107, 13107, 13107, 13107, 19223, 17476, 31454, 29708];
/// Long-term gain decision levels and quantized gains.
const DLB: [f64; 3] = [6554.0 / 32768.0, 16384.0 / 32768.0, 26214.0 / 32768.0];
const QLB: [i16; 4] = [3277, 11469, 21299, 32767];
/// The RPE weighting filter.
const H: [i32; 11] = [-134, -374, 0, 2054, 5741, 8192, 5741, 2054, 0, -374, -134];
/// Normalized inverse mantissa: 16 / (9 + m) / 2, in Q15.
const NRFAC: [i16; 8] = [29128, 26215, 23832, 21846, 20165, 18725, 17476, 16384];
/// Normalized direct mantissa: (9 + m) / 16, in Q15.
const FAC: [i16; 8] = [18431, 20479, 22527, 24575, 26623, 28671, 30719, 32767];

// The Recommendation's 16-bit arithmetic.
fn sat(x: i32) -> i16 {
    x.clamp(i32::from(i16::MIN), i32::from(i16::MAX)) as i16
}
fn add(a: i16, b: i16) -> i16 {
    sat(i32::from(a) + i32::from(b))
}
fn sub(a: i16, b: i16) -> i16 {
    sat(i32::from(a) - i32::from(b))
}
fn mult(a: i16, b: i16) -> i16 {
    if a == i16::MIN && b == i16::MIN {
        i16::MAX
    } else {
        ((i32::from(a) * i32::from(b)) >> 15) as i16
    }
}
fn mult_r(a: i16, b: i16) -> i16 {
    if a == i16::MIN && b == i16::MIN {
        i16::MAX
    } else {
        ((i32::from(a) * i32::from(b) + 16384) >> 15) as i16
    }
}
fn abs(a: i16) -> i16 {
    if a == i16::MIN {
        i16::MAX
    } else {
        a.abs()
    }
}
fn asr(a: i16, n: i32) -> i16 {
    if n >= 16 {
        if a < 0 {
            -1
        } else {
            0
        }
    } else if n <= -16 {
        0
    } else if n < 0 {
        asl(a, -n)
    } else {
        a >> n
    }
}
fn asl(a: i16, n: i32) -> i16 {
    if n >= 16 {
        0
    } else if n <= -16 {
        if a < 0 {
            -1
        } else {
            0
        }
    } else if n < 0 {
        asr(a, -n)
    } else {
        (i32::from(a) << n) as i16
    }
}

/// Transmitted LARs to LAR'' (4.2.15 / 4.3.1).
fn decode_lars(larc: &[u8; 8]) -> [i16; 8] {
    std::array::from_fn(|i| {
        let signed = i16::from(larc[i]) + MIC[i];
        let mut t = sub(asl(signed, 10), asl(B[i], 1));
        t = mult_r(INVA[i], t);
        add(t, t)
    })
}

/// LAR' of one of the four interpolation segments (4.2.9.1), and the segment's range.
fn interpolate(old: &[i16; 8], new: &[i16; 8], segment: usize) -> [i16; 8] {
    std::array::from_fn(|i| match segment {
        0 => add(add(asr(old[i], 2), asr(new[i], 2)), asr(old[i], 1)),
        1 => add(asr(old[i], 1), asr(new[i], 1)),
        2 => add(add(asr(old[i], 2), asr(new[i], 2)), asr(new[i], 1)),
        _ => new[i],
    })
}

const SEGMENTS: [std::ops::Range<usize>; 4] = [0..13, 13..27, 27..40, 40..160];

/// LAR' to reflection coefficients r' (4.2.9.2).
fn reflection(larp: &[i16; 8]) -> [i16; 8] {
    std::array::from_fn(|i| {
        let l = larp[i];
        let mut t = abs(l);
        t = if t < 11059 {
            t << 1
        } else if t < 20070 {
            t + 11059
        } else {
            add(t >> 2, 26112)
        };
        if l < 0 {
            -t
        } else {
            t
        }
    })
}

/// The block maximum code to exponent and mantissa (4.2.15).
fn exp_mant(xmaxc: u8) -> (i16, i16) {
    let xmaxc = i16::from(xmaxc);
    let mut exp = if xmaxc > 15 { (xmaxc >> 3) - 1 } else { 0 };
    let mut mant = xmaxc - (exp << 3);
    if mant == 0 {
        exp = -4;
        mant = 7;
    } else {
        while mant <= 7 {
            mant = mant << 1 | 1;
            exp -= 1;
        }
        mant -= 8;
    }
    (exp, mant)
}

/// APCM inverse quantization and RPE grid positioning (4.2.16-4.2.17): the 40-sample
/// excitation of a sub-frame.
fn rpe_decode(sub: &Subframe) -> [i16; 40] {
    let (exp, mant) = exp_mant(sub.xmaxc & 63);
    let temp1 = FAC[mant as usize];
    let temp2 = sub_i32(6, exp);
    let temp3 = asl(1, temp2 - 1);
    let mut e = [0i16; 40];
    let mc = usize::from(sub.mc & 3);
    for (i, &x) in sub.xmc.iter().enumerate() {
        let mut t = (i16::from(x & 7) << 1) - 7;
        t <<= 12;
        t = mult_r(temp1, t);
        t = add(t, temp3);
        e[mc + 3 * i] = asr(t, temp2);
    }
    e
}

fn sub_i32(a: i16, b: i16) -> i32 {
    i32::from(a) - i32::from(b)
}

/// The GSM 06.10 decoder. Its state carries from frame to frame.
#[derive(Debug, Clone)]
pub struct Decoder {
    /// Reconstructed residual: 120 samples of history, then the current sub-frame.
    drp: [i16; 160],
    nrp: usize,
    v: [i16; 9],
    larpp_old: [i16; 8],
    msr: i16,
}

impl Default for Decoder {
    fn default() -> Self {
        Self {
            drp: [0; 160],
            nrp: 40,
            v: [0; 9],
            larpp_old: [0; 8],
            msr: 0,
        }
    }
}

impl Decoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Decodes one frame into 160 samples.
    pub fn decode(&mut self, frame: &Frame) -> [i16; FRAME_SAMPLES] {
        let mut wt = [0i16; FRAME_SAMPLES];
        for (j, sub) in frame.sub.iter().enumerate() {
            let erp = rpe_decode(sub);
            let nc = usize::from(sub.nc);
            if (40..=120).contains(&nc) {
                self.nrp = nc;
            }
            let brp = QLB[usize::from(sub.bc & 3)];
            for (k, &e) in erp.iter().enumerate() {
                let drpp = mult_r(brp, self.drp[120 + k - self.nrp]);
                self.drp[120 + k] = add(e, drpp);
            }
            wt[j * 40..(j + 1) * 40].copy_from_slice(&self.drp[120..160]);
            self.drp.copy_within(40..160, 0);
        }
        let larpp = decode_lars(&frame.larc);
        let mut sr = [0i16; FRAME_SAMPLES];
        for (segment, range) in SEGMENTS.iter().enumerate() {
            let rrp = reflection(&interpolate(&self.larpp_old, &larpp, segment));
            for k in range.clone() {
                let mut sri = wt[k];
                for i in (0..8).rev() {
                    sri = sub(sri, mult_r(rrp[i], self.v[i]));
                    self.v[i + 1] = add(self.v[i], mult_r(rrp[i], sri));
                }
                self.v[0] = sri;
                sr[k] = sri;
            }
        }
        self.larpp_old = larpp;
        // De-emphasis, then upscaling.
        sr.map(|s| {
            self.msr = add(s, mult_r(self.msr, 28180));
            asl(asr(add(self.msr, self.msr), 3), 3)
        })
    }
}

/// The GSM 06.10 encoder. Its state carries from frame to frame.
#[derive(Debug, Clone)]
pub struct Encoder {
    z1: f64,
    sof: f64,
    mp: f64,
    u: [i16; 8],
    larpp_old: [i16; 8],
    /// The reconstructed residual of the last 120 samples, as the decoder has it.
    dp: [i16; 120],
}

impl Default for Encoder {
    fn default() -> Self {
        Self {
            z1: 0.0,
            sof: 0.0,
            mp: 0.0,
            u: [0; 8],
            larpp_old: [0; 8],
            dp: [0; 120],
        }
    }
}

impl Encoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Encodes 160 samples.
    pub fn encode(&mut self, input: &[i16; FRAME_SAMPLES]) -> Frame {
        let s = self.preprocess(input);
        let larc = lpc_analysis(&s);
        let d = self.short_term_analysis(&s, &larc);
        let mut frame = Frame {
            larc,
            ..Frame::default()
        };
        for (j, sub) in frame.sub.iter_mut().enumerate() {
            let mut dj = [0i16; 40];
            dj.copy_from_slice(&d[j * 40..(j + 1) * 40]);
            *sub = self.subframe(&dj);
        }
        frame
    }

    /// Downscaling, offset compensation and pre-emphasis (4.2.1-4.2.3).
    fn preprocess(&mut self, input: &[i16; FRAME_SAMPLES]) -> [i16; FRAME_SAMPLES] {
        input.map(|x| {
            let so = f64::from((x >> 3) << 2);
            let s1 = so - self.z1;
            self.z1 = so;
            self.sof = s1 + self.sof * (32735.0 / 32768.0);
            let s = self.sof - self.mp * (28180.0 / 32768.0);
            self.mp = self.sof;
            s.round().clamp(-32768.0, 32767.0) as i16
        })
    }

    /// Short-term analysis filtering with the quantized, interpolated coefficients
    /// (4.2.10): the residual d.
    fn short_term_analysis(&mut self, s: &[i16; 160], larc: &[u8; 8]) -> [i16; 160] {
        let larpp = decode_lars(larc);
        let mut d = [0i16; 160];
        for (segment, range) in SEGMENTS.iter().enumerate() {
            let rp = reflection(&interpolate(&self.larpp_old, &larpp, segment));
            for k in range.clone() {
                let mut di = s[k];
                let mut sav = di;
                for (u, &r) in self.u.iter_mut().zip(&rp) {
                    let ui = *u;
                    *u = sav;
                    sav = add(ui, mult_r(r, di));
                    di = add(di, mult_r(r, ui));
                }
                d[k] = di;
            }
        }
        self.larpp_old = larpp;
        d
    }

    /// Long-term prediction and RPE coding of one sub-frame (4.2.11-4.2.18).
    fn subframe(&mut self, d: &[i16; 40]) -> Subframe {
        // The lag with the largest cross-correlation, and its gain.
        let mut best = (40usize, f64::MIN);
        for lag in 40..=120usize {
            let r: f64 = (0..40)
                .map(|k| f64::from(d[k]) * f64::from(self.dp[120 + k - lag]))
                .sum();
            if r > best.1 {
                best = (lag, r);
            }
        }
        let (nc, r) = best;
        let power: f64 = (0..40)
            .map(|k| f64::from(self.dp[120 + k - nc]).powi(2))
            .sum();
        let bc = if r <= 0.0 || power <= 0.0 {
            0
        } else {
            let ratio = r / power;
            DLB.iter().position(|&level| ratio <= level).unwrap_or(3)
        };
        let dpp: [i16; 40] = std::array::from_fn(|k| mult_r(QLB[bc], self.dp[120 + k - nc]));
        let e: [i16; 40] = std::array::from_fn(|k| sub(d[k], dpp[k]));

        // Weighting filter, then the grid with the most energy.
        let x: [i16; 40] = std::array::from_fn(|k| {
            let mut acc: i32 = 4096;
            for (i, h) in H.iter().enumerate() {
                let n = k as isize + i as isize - 5;
                if (0..40).contains(&n) {
                    acc += h * i32::from(e[n as usize]);
                }
            }
            sat(acc >> 13)
        });
        let energy = |m: usize| -> f64 { (0..13).map(|i| f64::from(x[m + 3 * i]).powi(2)).sum() };
        let mc = (0..4)
            .max_by(|&a, &b| energy(a).total_cmp(&energy(b)))
            .unwrap_or(0);
        let xm: [i16; 13] = std::array::from_fn(|i| x[mc + 3 * i]);

        // APCM quantization of the 13 pulses.
        let xmax = xm.iter().map(|&v| abs(v)).max().unwrap_or(0);
        let mut exp: i16 = 0;
        let mut temp = asr(xmax, 9);
        let mut itest = false;
        for _ in 0..=5 {
            itest |= temp <= 0;
            temp = asr(temp, 1);
            if !itest {
                exp += 1;
            }
        }
        let xmaxc = add(asr(xmax, i32::from(exp) + 5), exp << 3).clamp(0, 63) as u8;
        let (exp, mant) = exp_mant(xmaxc);
        let shift = 6 - i32::from(exp);
        let xmc = xm.map(|v| {
            let t = ((i32::from(v) << shift) * i32::from(NRFAC[mant as usize])) >> 15;
            ((t >> 12) + 4).clamp(0, 7) as u8
        });
        let sub = Subframe {
            nc: nc as u8,
            bc: bc as u8,
            mc: mc as u8,
            xmaxc,
            xmc,
        };

        // What the decoder will reconstruct, for the next sub-frames' prediction.
        let ep = rpe_decode(&sub);
        self.dp.copy_within(40..120, 0);
        for k in 0..40 {
            self.dp[80 + k] = add(ep[k], dpp[k]);
        }
        sub
    }
}

/// Autocorrelation, Schur recursion, LARs and their quantization (4.2.4-4.2.8).
fn lpc_analysis(s: &[i16; 160]) -> [u8; 8] {
    let acf: [f64; 9] = std::array::from_fn(|k| {
        (k..160)
            .map(|i| f64::from(s[i]) * f64::from(s[i - k]))
            .sum()
    });
    let mut r = [0f64; 8];
    if acf[0] > 0.0 {
        let mut p = acf;
        let mut kk = [0f64; 9];
        kk[1..8].copy_from_slice(&acf[1..8]);
        for n in 1..=8 {
            if p[0] <= 0.0 || p[0] < p[1].abs() {
                break;
            }
            let rn = (-p[1] / p[0]).clamp(-0.999_97, 0.999_97);
            r[n - 1] = rn;
            if n == 8 {
                break;
            }
            p[0] += p[1] * rn;
            for m in 1..=8 - n {
                let pm1 = p[m + 1];
                p[m] = pm1 + kk[m] * rn;
                kk[m] += pm1 * rn;
            }
        }
    }
    std::array::from_fn(|i| {
        let rq = (r[i] * 32768.0).round().clamp(-32767.0, 32767.0) as i16;
        let mut t = abs(rq);
        t = if t < 22118 {
            t >> 1
        } else if t < 31130 {
            t - 11059
        } else {
            (t - 26112) << 2
        };
        let lar = if rq < 0 { -t } else { t };
        let mut q = mult(A[i], lar);
        q = add(q, B[i]);
        q = add(q, 256);
        let larc = asr(q, 9).clamp(MIC[i], MAC[i]);
        (larc - MIC[i]) as u8
    })
}

/// Packs two frames into the 65-byte block of Microsoft's GSM 6.10 WAV format
/// (WAVE_FORMAT_GSM610, "WAV49"): every parameter least-significant bit first, in
/// transmission order, the second frame starting at bit 260.
pub fn pack_wav49(frames: &[Frame; 2]) -> [u8; 65] {
    let mut out = [0u8; 65];
    let mut writer = BitWriter {
        out: &mut out,
        bit: 0,
    };
    for frame in frames {
        for (larc, bits) in frame.larc.iter().zip(LARC_BITS) {
            writer.put(*larc, bits);
        }
        for sub in &frame.sub {
            writer.put(sub.nc, 7);
            writer.put(sub.bc, 2);
            writer.put(sub.mc, 2);
            writer.put(sub.xmaxc, 6);
            for x in sub.xmc {
                writer.put(x, 3);
            }
        }
    }
    out
}

/// The two frames of a 65-byte WAV49 block.
pub fn unpack_wav49(block: &[u8; 65]) -> [Frame; 2] {
    let mut bit = 0usize;
    let mut get = |bits: u32| -> u8 {
        let mut v = 0u8;
        for b in 0..bits {
            let byte = block[bit / 8];
            v |= ((byte >> (bit % 8)) & 1) << b;
            bit += 1;
        }
        v
    };
    let mut frames = [Frame::default(); 2];
    for frame in &mut frames {
        for (larc, bits) in frame.larc.iter_mut().zip(LARC_BITS) {
            *larc = get(bits);
        }
        for sub in &mut frame.sub {
            sub.nc = get(7);
            sub.bc = get(2);
            sub.mc = get(2);
            sub.xmaxc = get(6);
            for x in &mut sub.xmc {
                *x = get(3);
            }
        }
    }
    frames
}

struct BitWriter<'a> {
    out: &'a mut [u8; 65],
    bit: usize,
}

impl BitWriter<'_> {
    fn put(&mut self, value: u8, bits: u32) {
        for b in 0..bits {
            if (value >> b) & 1 == 1 {
                self.out[self.bit / 8] |= 1 << (self.bit % 8);
            }
            self.bit += 1;
        }
    }
}

#[cfg(test)]
pub(crate) mod tests_support {
    /// A voiced, speech-like test signal: a 140 Hz pulse train through two formant
    /// resonators, with a slow amplitude envelope.
    pub(crate) fn voice(samples: usize) -> Vec<i16> {
        let mut out = Vec::with_capacity(samples);
        let (mut y1, mut y2, mut z1, mut z2) = (0f64, 0f64, 0f64, 0f64);
        let resonator = |f: f64, bw: f64| {
            let r = (-std::f64::consts::PI * bw / 8000.0).exp();
            (
                2.0 * r * (2.0 * std::f64::consts::PI * f / 8000.0).cos(),
                -r * r,
            )
        };
        let (a1, a2) = resonator(700.0, 130.0);
        let (b1, b2) = resonator(1220.0, 70.0);
        for n in 0..samples {
            let pulse = if n % 57 == 0 { 3000.0 } else { 0.0 };
            let y = pulse + a1 * y1 + a2 * y2;
            y2 = y1;
            y1 = y;
            let z = y + b1 * z1 + b2 * z2;
            z2 = z1;
            z1 = z;
            let envelope = 0.6 + 0.4 * (n as f64 / 4000.0).sin();
            out.push((z * 0.5 * envelope).clamp(-30000.0, 30000.0) as i16);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::tests_support::voice;
    use super::*;
    use crate::analysis::correlation;

    fn snr_db(reference: &[i16], decoded: &[i16]) -> f64 {
        let (mut signal, mut noise) = (0f64, 0f64);
        for (x, y) in reference.iter().zip(decoded) {
            signal += f64::from(*x).powi(2);
            noise += (f64::from(*x) - f64::from(*y)).powi(2);
        }
        10.0 * (signal / noise.max(1.0)).log10()
    }

    fn round_trip(input: &[i16]) -> Vec<i16> {
        let mut encoder = Encoder::new();
        let mut decoder = Decoder::new();
        let mut out = Vec::new();
        for chunk in input.chunks_exact(FRAME_SAMPLES) {
            let frame = encoder.encode(chunk.try_into().unwrap());
            out.extend_from_slice(&decoder.decode(&frame));
        }
        out
    }

    #[test]
    fn speech_like_audio_survives_the_codec() {
        let input = voice(8000 * 2);
        let output = round_trip(&input);
        // Skip the first frames (filters settling) before comparing.
        let c = correlation(&input[800..], &output[800..]);
        let snr = snr_db(&input[800..], &output[800..]);
        assert!(c > 0.9, "correlation {c:.3}");
        assert!(snr > 6.0, "SNR {snr:.1} dB");
    }

    #[test]
    fn silence_stays_silent_and_loud_input_does_not_overflow() {
        let out = round_trip(&[0i16; 1600]);
        assert!(out.iter().all(|&s| s.abs() < 64), "{:?}", &out[..16]);
        let square: Vec<i16> = (0..1600)
            .map(|n| if (n / 20) % 2 == 0 { 32767 } else { -32768 })
            .collect();
        let out = round_trip(&square);
        assert!(correlation(&square[320..], &out[320..]) > 0.5);
    }

    #[test]
    fn wav49_packing_round_trips_every_field() {
        let mut encoder = Encoder::new();
        let input = voice(320);
        let frames = [
            encoder.encode(input[..160].try_into().unwrap()),
            encoder.encode(input[160..].try_into().unwrap()),
        ];
        assert_eq!(unpack_wav49(&pack_wav49(&frames)), frames);
        // All ones in every field fill all 520 bits.
        let full = Frame {
            larc: [63, 63, 31, 31, 15, 15, 7, 7],
            sub: [Subframe {
                nc: 127,
                bc: 3,
                mc: 3,
                xmaxc: 63,
                xmc: [7; 13],
            }; 4],
        };
        assert_eq!(pack_wav49(&[full, full]), [0xFF; 65]);
    }

    #[test]
    fn any_bits_decode_without_panic() {
        let mut decoder = Decoder::new();
        let mut x: u32 = 12345;
        for _ in 0..500 {
            let mut block = [0u8; 65];
            for b in &mut block {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                *b = (x >> 16) as u8;
            }
            for frame in unpack_wav49(&block) {
                decoder.decode(&frame);
            }
        }
    }
}
