//! Asterisk config files: no panic on any bytes, printed configs parse back the same,
//! typed-view errors name a line. `cargo +nightly fuzz run config`
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if data.len() <= 64 * 1024 {
        asterisk_conf::fuzzing::check(data);
    }
});
