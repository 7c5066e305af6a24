//! The media relay's packet path: RTP/RTCP parsing, latching and forwarding verdicts,
//! receiver statistics. No panic; only well-formed packets from admitted sources are
//! forwarded, to the other leg. `cargo fuzz run rtp`
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if data.len() <= 16 * 1024 {
        media_relay::fuzzing::check(data);
    }
});
