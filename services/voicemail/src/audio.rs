//! What the caller hears: prompts loaded from the prompt folder, composed into
//! playlists (numbers and digits are said from word prompts), and played out one
//! 20 ms frame at a time, with seeking for VoiceMailMain's rewind and fast-forward.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

/// Samples per 20 ms frame at 8 kHz.
pub const FRAME: usize = 160;
/// Samples per millisecond.
pub const PER_MS: usize = 8;

/// A piece of audio, shared (prompts are played by every session).
pub type Clip = Arc<[i16]>;

/// The prompt set: file stem -> audio. Every prompt the service says is named in
/// [`names`]; `scripts/make-prompts` makes them with espeak-ng.
#[derive(Debug, Default, Clone)]
pub struct Prompts {
    clips: HashMap<String, Clip>,
}

/// Every prompt the voicemail service uses, with the words spoken: `prompts.tsv`
/// beside this crate's manifest, which `scripts/make-prompts` turns into speech.
pub const PROMPTS_TSV: &str = include_str!("../prompts.tsv");

/// The prompt names and words of [`PROMPTS_TSV`], in order.
pub fn names() -> &'static [(&'static str, &'static str)] {
    static NAMES: std::sync::OnceLock<Vec<(&'static str, &'static str)>> =
        std::sync::OnceLock::new();
    NAMES.get_or_init(|| {
        PROMPTS_TSV
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
            .filter_map(|l| l.split_once('\t'))
            .collect()
    })
}

impl Prompts {
    /// Loads every [`names`] prompt from `dir` (`<name>.wav`, 8 kHz mono PCM). A missing
    /// or unreadable prompt is an error naming the file: a voicemail that cannot speak
    /// is not started.
    pub fn load(dir: &Path) -> Result<Self, String> {
        let mut clips = HashMap::new();
        for (name, _) in names() {
            let path = dir.join(format!("{name}.wav"));
            let bytes = std::fs::read(&path).map_err(|e| {
                format!(
                    "{}: {e} (make the prompts with scripts/make-prompts)",
                    path.display()
                )
            })?;
            let samples =
                phone_audio::wav::decode(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
            clips.insert((*name).to_owned(), Clip::from(samples));
        }
        Ok(Self { clips })
    }

    /// A prompt set for tests: prompt `i` of [`names`] is 100 ms of the constant
    /// sample value `10 * (i + 1)`, so what a session plays can be read back.
    pub fn for_tests() -> Self {
        let clips = names()
            .iter()
            .enumerate()
            .map(|(i, (name, _))| {
                (
                    (*name).to_owned(),
                    Clip::from(vec![10 * (i as i16 + 1); 800]),
                )
            })
            .collect();
        Self { clips }
    }

    /// The prompt [`Prompts::for_tests`] plays as `value`.
    pub fn test_name(value: i16) -> Option<&'static str> {
        let i = usize::try_from(value / 10 - 1).ok()?;
        (value % 10 == 0)
            .then(|| names().get(i).map(|(n, _)| *n))
            .flatten()
    }

    pub fn get(&self, name: &str) -> Option<&Clip> {
        self.clips.get(name)
    }
}

/// An item of a playlist.
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    /// A prompt by name.
    Prompt(&'static str),
    /// A prompt whose name is built at run time (`digits/7`, `vm-Old`).
    Named(String),
    /// Recorded audio (a message or a greeting).
    Audio(Clip),
    /// The 1 kHz beep before a recording.
    Beep,
    Silence {
        ms: u32,
    },
}

/// The words for `n` ("twenty three", "one hundred five").
pub fn number(n: u32, out: &mut Vec<Item>) {
    let digit = |d: u32| Item::Named(format!("digits/{d}"));
    if n >= 1000 {
        number(n / 1000, out);
        out.push(Item::Prompt("digits/thousand"));
        if !n.is_multiple_of(1000) {
            number(n % 1000, out);
        }
        return;
    }
    if n >= 100 {
        out.push(digit(n / 100));
        out.push(Item::Prompt("digits/hundred"));
        if !n.is_multiple_of(100) {
            number(n % 100, out);
        }
        return;
    }
    if n >= 20 {
        out.push(digit(n / 10 * 10));
        if !n.is_multiple_of(10) {
            out.push(digit(n % 10));
        }
        return;
    }
    out.push(digit(n));
}

/// Each digit of `s` in turn (`*` and `#` by name; anything else is skipped).
pub fn digits(s: &str, out: &mut Vec<Item>) {
    for c in s.chars() {
        match c {
            '0'..='9' => out.push(Item::Named(format!("digits/{c}"))),
            '*' => out.push(Item::Prompt("digits/star")),
            '#' => out.push(Item::Prompt("digits/pound")),
            _ => {}
        }
    }
}

/// The ordinal of a day of the month ("twenty first").
pub fn ordinal(n: u32, out: &mut Vec<Item>) {
    match n {
        1..=20 | 30 => out.push(Item::Named(format!("digits/h-{n}"))),
        21..=29 | 31 => {
            out.push(Item::Named(format!("digits/{}", n / 10 * 10)));
            out.push(Item::Named(format!("digits/h-{}", n % 10)));
        }
        _ => number(n, out),
    }
}

/// What is playing: a queue of clips and a position in the current one.
#[derive(Debug, Default)]
pub struct Player {
    queue: std::collections::VecDeque<Clip>,
    position: usize,
    /// Prompt names asked for that the set lacks.
    missing: Vec<String>,
}

fn beep() -> Clip {
    // 260 ms: a whole number of frames.
    let samples: Vec<i16> = (0..2080)
        .map(|n| {
            (10_000.0 * (2.0 * std::f64::consts::PI * 1000.0 * n as f64 / 8000.0).sin()) as i16
        })
        .collect();
    Clip::from(samples)
}

impl Player {
    /// Replaces what is playing with `items`.
    pub fn play(&mut self, prompts: &Prompts, items: Vec<Item>) {
        self.stop();
        self.enqueue(prompts, items);
    }

    /// Adds `items` after what is playing.
    pub fn enqueue(&mut self, prompts: &Prompts, items: Vec<Item>) {
        for item in items {
            let clip = match item {
                Item::Prompt(name) => prompts.get(name).cloned(),
                Item::Named(name) => {
                    let clip = prompts.get(&name).cloned();
                    if clip.is_none() {
                        self.missing.push(name);
                    }
                    clip
                }
                Item::Audio(clip) => Some(clip),
                Item::Beep => Some(beep()),
                Item::Silence { ms } => Some(Clip::from(vec![0i16; ms as usize * PER_MS])),
            };
            if let Some(clip) = clip.filter(|c| !c.is_empty()) {
                self.queue.push_back(clip);
            }
        }
    }

    pub fn stop(&mut self) {
        self.queue.clear();
        self.position = 0;
    }

    pub fn is_playing(&self) -> bool {
        !self.queue.is_empty()
    }

    /// Prompts asked for but not in the set, since the last call (for a log line).
    pub fn take_missing(&mut self) -> Vec<String> {
        std::mem::take(&mut self.missing)
    }

    /// Moves within the current clip by `ms` (negative rewinds), clamped to its start;
    /// past its end goes to the next clip.
    pub fn seek(&mut self, ms: i64) {
        let Some(clip) = self.queue.front() else {
            return;
        };
        let target = self.position as i64 + ms * PER_MS as i64;
        if target >= clip.len() as i64 {
            self.queue.pop_front();
            self.position = 0;
        } else {
            self.position = target.max(0) as usize;
        }
    }

    /// The next 20 ms to send; silence when nothing plays. Returns whether the
    /// playlist ran out during this frame.
    pub fn frame(&mut self, out: &mut [i16; FRAME]) -> bool {
        let mut filled = 0;
        let was_playing = self.is_playing();
        while filled < FRAME {
            let Some(clip) = self.queue.front() else {
                break;
            };
            let n = (clip.len() - self.position).min(FRAME - filled);
            out[filled..filled + n].copy_from_slice(&clip[self.position..self.position + n]);
            filled += n;
            self.position += n;
            if self.position >= clip.len() {
                self.queue.pop_front();
                self.position = 0;
            }
        }
        out[filled..].fill(0);
        was_playing && !self.is_playing()
    }
}

/// The prompt names of a playlist (other items as their debug form), for tests.
#[cfg(test)]
pub(crate) fn item_names(items: &[Item]) -> Vec<String> {
    items
        .iter()
        .map(|i| match i {
            Item::Prompt(n) => (*n).to_owned(),
            Item::Named(n) => n.clone(),
            other => format!("{other:?}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(items: &[Item]) -> Vec<String> {
        item_names(items)
    }

    #[test]
    fn numbers_are_said_in_words() {
        let say = |n| {
            let mut v = Vec::new();
            number(n, &mut v);
            names(&v).join(" ")
        };
        assert_eq!(say(0), "digits/0");
        assert_eq!(say(13), "digits/13");
        assert_eq!(say(20), "digits/20");
        assert_eq!(say(42), "digits/40 digits/2");
        assert_eq!(say(105), "digits/1 digits/hundred digits/5");
        assert_eq!(say(2026), "digits/2 digits/thousand digits/20 digits/6");
        let mut v = Vec::new();
        ordinal(23, &mut v);
        assert_eq!(names(&v).join(" "), "digits/20 digits/h-3");
    }

    #[test]
    fn every_prompt_name_used_in_code_is_in_the_list() {
        let all: std::collections::HashSet<&str> = super::names().iter().map(|(n, _)| *n).collect();
        let mut v = Vec::new();
        for n in 0..=100 {
            number(n, &mut v);
        }
        for d in 1..=31 {
            ordinal(d, &mut v);
        }
        digits("0123456789*#", &mut v);
        for name in names(&v) {
            assert!(all.contains(name.as_str()), "{name}");
        }
    }

    #[test]
    fn the_player_paces_frames_and_seeks() {
        let prompts = Prompts::for_tests();
        let mut p = Player::default();
        let clip: Clip = (0..8000).map(|i| i as i16).collect::<Vec<_>>().into();
        p.play(&prompts, vec![Item::Audio(clip)]);
        let mut frame = [0i16; FRAME];
        assert!(!p.frame(&mut frame));
        assert_eq!(frame[0], 0);
        assert_eq!(frame[159], 159);
        p.seek(500); // +4000 samples
        p.frame(&mut frame);
        assert_eq!(frame[0], 4160);
        p.seek(-3000); // back to the start, clamped
        p.frame(&mut frame);
        assert_eq!(frame[0], 0);
        p.seek(10_000); // past the end: the clip is done
        assert!(!p.is_playing());
    }
}
