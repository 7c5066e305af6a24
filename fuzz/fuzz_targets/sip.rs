//! The SIP edge's parsing path: no panic, our answers are valid SIP, stream framing is
//! independent of how bytes arrive. `cargo fuzz run sip`
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if data.len() <= 70 * 1024 {
        sip_edge::fuzzing::check(data);
    }
});
