//! Measuring audio, for tests and load tools that check what a call carried: how much
//! of a stretch is one tone (the Goertzel algorithm), and how alike two recordings are
//! (normalized cross-correlation, with a lag search).

/// The share of `samples`' energy at `freq` Hz (8 kHz audio): near 1 for a pure tone
/// at that frequency, near 0 for silence or other sounds.
pub fn tone_share(samples: &[i16], freq: f64) -> f64 {
    let w = 2.0 * std::f64::consts::PI * freq / 8000.0;
    let coeff = 2.0 * w.cos();
    let (mut s1, mut s2, mut total) = (0.0f64, 0.0f64, 0.0f64);
    for &x in samples {
        let x = f64::from(x);
        total += x * x;
        let s = x + coeff * s1 - s2;
        s2 = s1;
        s1 = s;
    }
    if total == 0.0 {
        return 0.0;
    }
    2.0 * (s1 * s1 + s2 * s2 - coeff * s1 * s2) / (samples.len() as f64 * total)
}

/// Normalized cross-correlation of `a` with `b` shifted by `lag` samples (`b[i + lag]`
/// against `a[i]`), over the overlap.
pub fn correlation_at(a: &[i16], b: &[i16], lag: isize) -> f64 {
    let (mut ab, mut aa, mut bb) = (0f64, 0f64, 0f64);
    for (i, &x) in a.iter().enumerate() {
        let j = i as isize + lag;
        if j < 0 || j as usize >= b.len() {
            continue;
        }
        let (x, y) = (f64::from(x), f64::from(b[j as usize]));
        ab += x * y;
        aa += x * x;
        bb += y * y;
    }
    ab / (aa.sqrt() * bb.sqrt()).max(1.0)
}

/// [`correlation_at`] with no shift.
pub fn correlation(a: &[i16], b: &[i16]) -> f64 {
    correlation_at(a, b, 0)
}

/// The best [`correlation_at`] over lags up to `max_lag` either way, and its lag.
pub fn best_correlation(a: &[i16], b: &[i16], max_lag: usize) -> (f64, isize) {
    let max_lag = max_lag as isize;
    (-max_lag..=max_lag)
        .map(|lag| (correlation_at(a, b, lag), lag))
        .fold((f64::MIN, 0), |best, c| if c.0 > best.0 { c } else { best })
}

/// [`best_correlation`] for long recordings: the lag is searched on every fourth
/// sample, then refined around the best.
pub fn best_correlation_fast(a: &[i16], b: &[i16], max_lag: usize) -> f64 {
    let decimate = |s: &[i16]| s.iter().step_by(4).copied().collect::<Vec<_>>();
    let (_, lag) = best_correlation(&decimate(a), &decimate(b), max_lag / 4);
    (lag * 4 - 8..=lag * 4 + 8)
        .map(|fine| correlation_at(a, b, fine))
        .fold(f64::MIN, f64::max)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(freq: f64, n: usize) -> Vec<i16> {
        (0..n)
            .map(|i| {
                (8000.0 * (2.0 * std::f64::consts::PI * freq * i as f64 / 8000.0).sin()) as i16
            })
            .collect()
    }

    #[test]
    fn a_tone_is_found_and_others_are_not() {
        let t = tone(600.0, 800);
        assert!(tone_share(&t, 600.0) > 0.95);
        assert!(tone_share(&t, 1000.0) < 0.05);
        assert_eq!(tone_share(&[0; 800], 600.0), 0.0);
    }

    #[test]
    fn a_shifted_copy_is_found_at_its_lag() {
        // A chirp from 200 to 1,200 Hz: like speech, it resembles no shifted copy of
        // itself (a steady tone would, at every period).
        let a: Vec<i16> = (0..4000)
            .map(|i| {
                let t = f64::from(i) / 8000.0;
                (8000.0 * (2.0 * std::f64::consts::PI * (200.0 * t + 1000.0 * t * t)).sin()) as i16
            })
            .collect();
        let mut b = vec![0i16; 37];
        b.extend_from_slice(&a);
        let (c, lag) = best_correlation(&a, &b, 100);
        assert_eq!(lag, 37);
        assert!(c > 0.999);
        assert!(best_correlation_fast(&a, &b, 400) > 0.999);
        assert!((correlation(&a, &a) - 1.0).abs() < 1e-9);
    }
}
