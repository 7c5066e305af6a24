//! The invariants the fuzz target (`fuzz/fuzz_targets/config.rs`) and the robustness
//! tests check on arbitrary input. Not part of the API.

use std::path::Path;

use crate::tree::{self, Config, MemorySource};
use crate::{extensions, sip, voicemail};

/// Parses `data` as a file that may include two others (also built from `data`), then
/// asserts:
/// - no panic, whatever the bytes;
/// - what parses prints back to text that parses to the same sections and entries;
/// - the typed views either build or fail with an error that names a line.
pub fn check(data: &[u8]) {
    // Split the input into up to three files so that includes are exercised too.
    let mut parts = data.splitn(3, |&b| b == 0);
    let main = parts.next().unwrap_or_default();
    let source = MemorySource::new()
        .with("/conf/main.conf", main)
        .with("/conf/a.conf", parts.next().unwrap_or_default())
        .with("/conf/sub/b.conf", parts.next().unwrap_or_default());
    let Ok(config) = tree::load_from(&source, Path::new("/conf/main.conf")) else {
        return;
    };
    let printed = config.to_string();
    let again = tree::parse_str("/conf/printed.conf", &printed)
        .unwrap_or_else(|e| panic!("printed config does not parse: {e}\n{printed}"));
    assert_eq!(
        shape(&config),
        shape(&again),
        "round trip changed the config:\n{printed}"
    );

    for result in [
        sip::from_config(config.clone()).map(|_| ()),
        voicemail::from_config(config.clone()).map(|_| ()),
        extensions::from_config(config).map(|_| ()),
    ] {
        if let Err(e) = result {
            assert!(
                e.location().is_some(),
                "typed-view error without a line: {e}"
            );
        }
    }
}

type Shape = Vec<(String, bool, Vec<(String, String, bool)>)>;

fn shape(config: &Config) -> Shape {
    config
        .sections
        .iter()
        .map(|s| {
            (
                s.name.clone(),
                s.is_template,
                s.entries
                    .iter()
                    .map(|e| (e.key.clone(), e.value.clone(), e.object))
                    .collect(),
            )
        })
        .collect()
}

/// A small, fixed pseudo-random generator for the seeded robustness tests: the same
/// sample on every run, no dependency.
#[derive(Debug, Clone)]
pub struct XorShift(pub u64);

impl XorShift {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    pub fn pick<'a, T: ?Sized>(&mut self, items: &[&'a T]) -> &'a T {
        items[self.below(items.len())]
    }
}
