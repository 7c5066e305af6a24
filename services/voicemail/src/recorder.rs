//! The recorder of a message or greeting: keeps the caller's audio, 20 ms at a time,
//! and decides when the recording ends (Asterisk's rules): the caller presses `#`,
//! `maxsilence` seconds of audio stay below `silencethreshold` (the silent tail is cut
//! off, as Asterisk does), or `maxsecs` is reached. A recording shorter than
//! `minsecs` is discarded.

use crate::audio::FRAME;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Seconds of silence that end the recording; 0: no silence detection.
    pub max_silence_secs: u32,
    /// Mean absolute amplitude below which a frame is silent (Asterisk's default 128).
    pub silence_threshold: u32,
    /// 0: no limit.
    pub max_secs: u32,
    pub min_secs: u32,
}

/// Why a recording stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    Pound,
    Silence,
    MaxLength,
    HangUp,
}

#[derive(Debug)]
pub struct Recorder {
    limits: Limits,
    samples: Vec<i16>,
    /// Consecutive silent frames at the end.
    silent_frames: u32,
    /// Consecutive frames at the end that stood for missing packets, not audio.
    filled_frames: u32,
}

impl Recorder {
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            samples: Vec::with_capacity(8000 * 30),
            silent_frames: 0,
            filled_frames: 0,
        }
    }

    /// Adds one 20 ms frame; `Some` when the recording must stop now.
    pub fn push(&mut self, frame: &[i16; FRAME]) -> Option<Stop> {
        self.filled_frames = 0;
        self.add(frame)
    }

    /// 20 ms in which no audio came at all: silence for `maxsilence`, but cut off
    /// when the recording ends on it (the caller had stopped sending before the `#`
    /// or the hang-up got through).
    pub fn push_missing(&mut self) -> Option<Stop> {
        self.filled_frames += 1;
        self.add(&[0; FRAME])
    }

    fn add(&mut self, frame: &[i16; FRAME]) -> Option<Stop> {
        self.samples.extend_from_slice(frame);
        let level = frame
            .iter()
            .map(|s| u32::from(s.unsigned_abs()))
            .sum::<u32>()
            / FRAME as u32;
        if level < self.limits.silence_threshold {
            self.silent_frames += 1;
        } else {
            self.silent_frames = 0;
        }
        if self.limits.max_silence_secs > 0
            && self.silent_frames >= self.limits.max_silence_secs * 50
        {
            return Some(Stop::Silence);
        }
        if self.limits.max_secs > 0 && self.samples.len() >= self.limits.max_secs as usize * 8000 {
            return Some(Stop::MaxLength);
        }
        None
    }

    pub fn duration_ms(&self) -> u64 {
        self.samples.len() as u64 / 8
    }

    /// The recording, or `None` when it is shorter than `minsecs` (after a silence stop,
    /// without its silent tail).
    pub fn finish(mut self, stop: Stop) -> Option<Vec<i16>> {
        let tail = if stop == Stop::Silence {
            self.silent_frames
        } else {
            self.filled_frames
        };
        let tail = tail as usize * FRAME;
        self.samples
            .truncate(self.samples.len().saturating_sub(tail));
        let min = self.limits.min_secs as usize * 8000;
        // Nothing at all is never a message, whatever minsecs says.
        if self.samples.is_empty() || self.samples.len() < min {
            return None;
        }
        Some(self.samples)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            max_silence_secs: 10,
            silence_threshold: 128,
            max_secs: 60,
            min_secs: 2,
        }
    }

    fn speech() -> [i16; FRAME] {
        std::array::from_fn(|i| if i % 2 == 0 { 2000 } else { -2000 })
    }

    #[test]
    fn ten_seconds_of_silence_stop_it_and_are_cut_off() {
        let mut r = Recorder::new(limits());
        for _ in 0..250 {
            assert_eq!(r.push(&speech()), None); // 5 s of speech
        }
        let quiet = [40i16; FRAME];
        for frame in 0..500 {
            let stop = r.push(&quiet);
            if frame < 499 {
                assert_eq!(stop, None, "frame {frame}");
            } else {
                assert_eq!(stop, Some(Stop::Silence));
            }
        }
        let audio = r.finish(Stop::Silence).unwrap();
        assert_eq!(audio.len(), 5 * 8000);
    }

    #[test]
    fn missing_audio_at_the_end_is_not_kept() {
        let mut r = Recorder::new(limits());
        for _ in 0..150 {
            r.push(&speech());
        }
        for _ in 0..20 {
            assert_eq!(r.push_missing(), None);
        }
        assert_eq!(r.finish(Stop::Pound).unwrap().len(), 150 * FRAME);
        // In the middle it is kept: it is where the caller's audio was lost.
        let mut r = Recorder::new(limits());
        r.push(&speech());
        r.push_missing();
        r.push(&speech());
        for _ in 0..100 {
            r.push(&speech());
        }
        assert_eq!(r.finish(Stop::HangUp).unwrap().len(), 103 * FRAME);
    }

    #[test]
    fn maxsecs_ends_it() {
        let mut r = Recorder::new(limits());
        let mut frames = 0;
        while r.push(&speech()).is_none() {
            frames += 1;
        }
        assert_eq!(frames + 1, 60 * 50);
        assert_eq!(r.duration_ms(), 60_000);
    }

    #[test]
    fn shorter_than_minsecs_is_discarded() {
        let mut r = Recorder::new(limits());
        for _ in 0..99 {
            r.push(&speech());
        }
        assert!(r.finish(Stop::Pound).is_none()); // 1.98 s
        let mut r = Recorder::new(limits());
        for _ in 0..100 {
            r.push(&speech());
        }
        assert_eq!(r.finish(Stop::HangUp).unwrap().len(), 16_000);
    }

    #[test]
    fn silence_after_a_silence_stop_that_leaves_too_little_is_discarded() {
        let mut r = Recorder::new(limits());
        for _ in 0..50 {
            r.push(&speech()); // 1 s
        }
        let mut stop = None;
        while stop.is_none() {
            stop = r.push(&[0; FRAME]);
        }
        assert!(r.finish(Stop::Silence).is_none());
    }
}
