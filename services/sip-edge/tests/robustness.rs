//! Mutated SIP messages never panic the parsing path, our answers are valid SIP, and
//! stream framing does not depend on how bytes arrive. The same check runs under
//! libFuzzer (`fuzz/`, target `sip`); this is a fixed, seeded sample of it.

use asterisk_conf::fuzzing::XorShift;
use sip_edge::fuzzing::check;

const TOKENS: &[&[u8]] = &[
    b"\r\n",
    b"\r\n\r\n",
    b" ",
    b"\t",
    b":",
    b";",
    b";;",
    b",",
    b"<",
    b">",
    b"\"",
    b"\\",
    b"@",
    b"Content-Length: 99999\r\n",
    b"l: 0\r\n",
    b"CSeq: 1 INVITE\r\n",
    b"Via: SIP/2.0/UDP x\r\n",
    b"SIP/2.0",
    b"SIP/3.0",
    b"%00",
    b"\xff\xfe",
    b"\x00",
    b"sip:",
    b"tel:",
    b"?",
];

#[test]
fn mutated_torture_messages() {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata/rfc4475");
    let mut seeds: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "dat"))
        .map(|p| std::fs::read(p).unwrap())
        .collect();
    seeds.sort();
    seeds.push(
        b"v=0\r\no=- 1 2 IN IP4 192.0.2.20\r\ns=-\r\nc=IN IP4 192.0.2.20\r\nt=0 0\r\n\
m=audio 10024 RTP/AVP 0 8 101\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\na=sendrecv\r\n"
            .to_vec(),
    );
    let mut rng = XorShift(0x51b_ed6e_0001);
    for seed in &seeds {
        check(seed);
        let mut current = seed.clone();
        for _ in 0..150 {
            let at = rng.below(current.len() + 1);
            match rng.below(3) {
                0 => {
                    let token = TOKENS[rng.below(TOKENS.len())];
                    current.splice(at..at, token.iter().copied());
                }
                1 if !current.is_empty() => {
                    let end = (at + rng.below(12)).min(current.len());
                    current.drain(at.min(end)..end);
                }
                _ if at < current.len() => current[at] = rng.next_u64() as u8,
                _ => {}
            }
            check(&current);
        }
    }
}
