//! Dialplan expressions, substitution, patterns and application arguments: no panic,
//! and a caller's text is never syntax. `cargo fuzz run dialplan`
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if data.len() <= 4096 {
        router::fuzzing::check(data);
    }
});
