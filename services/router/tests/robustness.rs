//! Arbitrary dialplan text and callers' numbers never panic the router's parsers, and a
//! caller's text stays one operand and one Dial target at most. The same check runs
//! under libFuzzer (`fuzz/`, target `dialplan`); this is a fixed, seeded sample of it.

use asterisk_conf::fuzzing::XorShift;
use router::fuzzing::check;

const SEEDS: &[&str] = &[
    "$[${EXTEN} = ${LINE}]?voicemail:outbound\x00+13235550100",
    "SIP/${EXTEN}@flowroute,20,rtT\x00500&SIP/flowroute/011",
    "${CUT(EXTEN,-,2-)}${LEN(${EXTEN})}${IF($[1]?a:b)}\x001-2-3",
    "$[\"a b\" : \"(.*)\" | (1 + 2) * -3 ? x :: y]\x00${SHELL(id)}",
    "_1NXX[2-4,7]X.\x0013235550100",
    "${REGEX(\"^1\" ${EXTEN})}${STRFTIME(${EPOCH},America/New_York,%c)}\x00(",
    "ctx,${EXTEN},1(a,b)\x00\"",
];

const TOKENS: &[&str] = &[
    "$", "{", "}", "[", "]", "(", ")", "${", "$[", ":", "::", "?", "=", "=~", "|", "&", ",", "\"",
    "\\", "-", "!", "%", "/", "@", "X", "N", ".", "\x00", "é", "\u{ffff}", " ",
];

#[test]
fn mutated_templates_and_numbers() {
    let mut rng = XorShift(0x0d1a_1b1a_4e00_0001);
    for seed in SEEDS {
        check(seed.as_bytes());
        let mut current: Vec<u8> = seed.as_bytes().to_vec();
        for _ in 0..2500 {
            let at = rng.below(current.len() + 1);
            match rng.below(3) {
                0 => {
                    let token = TOKENS[rng.below(TOKENS.len())].as_bytes();
                    current.splice(at..at, token.iter().copied());
                }
                1 if !current.is_empty() => {
                    let end = (at + rng.below(6)).min(current.len());
                    current.drain(at.min(end)..end);
                }
                _ => {
                    if at < current.len() {
                        current[at] = rng.next_u64() as u8;
                    }
                }
            }
            check(&current);
            if current.len() > 512 {
                current = seed.as_bytes().to_vec();
            }
        }
    }
}
