//! The harness of the end-to-end tests: what every test needs to start the system and
//! wait for it, never with fixed sleeps (STYLE.md, habit 11). [`system`] starts the
//! five services (as `phone` or as five processes) with MinIO and Mailpit,
//! [`carrier`] is Kamailio playing the provider, and [`baresip`] the phones.

#![forbid(unsafe_code)]

pub mod baresip;
pub mod carrier;
pub mod system;

use std::path::PathBuf;

/// Collects a child's output lines as they come, on a thread of their own.
pub fn collect_lines(
    output: impl std::io::Read + Send + 'static,
) -> std::sync::Arc<std::sync::Mutex<Vec<String>>> {
    use std::io::BufRead;
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = lines.clone();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(output)
            .lines()
            .map_while(Result::ok)
        {
            sink.lock().unwrap().push(line);
        }
    });
    lines
}

/// The shipped example configuration (the seed's three files).
pub fn example_config_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/freelancer")
}

pub use phone_test_support::{rss_kib, wait_until};

/// One second of a sine tone at `hz`, 8 kHz: what a test phone says.
pub fn tone(hz: f64) -> Vec<i16> {
    (0..8000)
        .map(|n| (8000.0 * (std::f64::consts::TAU * hz * f64::from(n) / 8000.0).sin()) as i16)
        .collect()
}

/// Seconds (in 100 ms steps) of `audio` that are mostly the tone `hz`.
pub fn seconds_of(audio: &[i16], hz: f64) -> f64 {
    audio
        .chunks_exact(800)
        .filter(|c| phone_audio::analysis::tone_share(c, hz) > 0.7)
        .count() as f64
        / 10.0
}

/// One sample of a Prometheus text page: the value of the first line that is `name`
/// followed by a space.
pub fn sample(metrics: &str, name: &str) -> Option<f64> {
    metrics.lines().find_map(|l| {
        l.strip_prefix(name)
            .filter(|rest| rest.starts_with(' '))
            .and_then(|rest| rest.trim().parse().ok())
    })
}
