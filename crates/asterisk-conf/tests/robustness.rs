//! Arbitrary and mutated input never panics the parser, and what parses round-trips.
//! The same check runs under libFuzzer in `fuzz/` (cargo +nightly fuzz run config); this
//! test runs a fixed, seeded sample of it on stable in every CI run.

use asterisk_conf::fuzzing::{check, XorShift};

const SEEDS: &[&[u8]] = &[
    include_bytes!("../../../deploy/examples/freelancer/sip.conf"),
    include_bytes!("../../../deploy/examples/freelancer/extensions.conf"),
    include_bytes!("../../../deploy/examples/freelancer/voicemail.conf"),
    b"[t](!)\nk=v\n[s](t,+)\n#include a.conf\n\0x=1\n#include sub/b.conf\n\0[b](+)\n;-- c --;y=>z\\;\n",
    b"[general]\nregister => a?tcp://u@d:s:au@h:1/e~9\n[p]\nallow=all\ndisallow=ulaw&alaw\n",
    b"[c]\nexten => _[1-5,7]X./_1N,n(l),App(a,(b))\nsame=>s,X\nexten=>1,hint,SIP/1\n",
];

const TOKENS: &[&[u8]] = &[
    b"[",
    b"]",
    b"(",
    b")",
    b"(!)",
    b"(+)",
    b"=",
    b"=>",
    b";",
    b"\\;",
    b";--",
    b"--;",
    b"\n",
    b"\r\n",
    b"#include ",
    b"#tryinclude ",
    b"a.conf",
    b"sub/b.conf",
    b"main.conf",
    b"\0",
    b",",
    b"exten",
    b"same",
    b"n(",
    b"hint",
    b"include",
    b"_",
    b"X",
    b"\xff",
    b"\xe9",
    b"\xf0\x9f",
    b" ",
    b"register",
    b"@",
    b":",
    b"/",
    b"~",
    b"?",
    b"|",
    b"-",
];

fn mutate(rng: &mut XorShift, input: &[u8]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..1 + rng.below(8) {
        let at = rng.below(out.len() + 1);
        match rng.below(4) {
            0 => {
                let token = TOKENS[rng.below(TOKENS.len())];
                out.splice(at..at, token.iter().copied());
            }
            1 if !out.is_empty() => {
                let end = (at + rng.below(16)).min(out.len());
                out.drain(at.min(end)..end);
            }
            2 if at < out.len() => out[at] = rng.next_u64() as u8,
            _ => {
                let other = SEEDS[rng.below(SEEDS.len())];
                let from = rng.below(other.len());
                let end = (from + rng.below(64)).min(other.len());
                out.splice(at..at, other[from..end].iter().copied());
            }
        }
    }
    out
}

#[test]
fn mutated_configs_never_panic_and_round_trip() {
    let mut rng = XorShift(0x5eed_0fa5_7e41_5c00);
    for seed in SEEDS {
        check(seed);
        let mut current = seed.to_vec();
        for _ in 0..3000 {
            current = mutate(&mut rng, &current);
            check(&current);
            if current.len() > 4096 {
                current = seed.to_vec();
            }
        }
    }
}

#[test]
fn random_bytes_never_panic() {
    let mut rng = XorShift(42);
    for _ in 0..5000 {
        let len = rng.below(256);
        let bytes: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
        check(&bytes);
    }
}
