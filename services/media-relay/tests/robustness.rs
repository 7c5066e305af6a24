//! Mutated RTP and RTCP never panic the relay's packet path, and what it forwards is
//! well formed and from an admitted source. The same check runs under libFuzzer
//! (`fuzz/`, target `rtp`); this is a fixed, seeded sample of it.

use asterisk_conf::fuzzing::XorShift;
use media_relay::fuzzing::check;

/// Real packets: G.711 u-law, an RFC 4733 event, a padded packet, one with a header
/// extension and CSRCs, an RTCP sender report and a compound SR+SDES.
fn seeds() -> Vec<Vec<u8>> {
    let mut pcmu = vec![
        0x80, 0x00, 0x12, 0x34, 0, 0, 0x0a, 0, 0xde, 0xad, 0xbe, 0xef,
    ];
    pcmu.extend_from_slice(&[0xd5; 160]);
    let event = vec![
        0x80, 0xe5, 0, 7, 0, 0, 0x1f, 0x40, 0, 0, 0, 9, 0x05, 0x0a, 0x00, 0xa0,
    ];
    let mut padded = vec![0xa0, 0x08, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1];
    padded.extend_from_slice(&[0x55; 160]);
    padded.extend_from_slice(&[0, 0, 0, 4]);
    let extended = vec![
        0x92, 0x00, 0, 2, 0, 0, 0, 160, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 4, 0xbe, 0xde, 0, 1, 0x10,
        0xff, 0, 0, 1, 2, 3, 4,
    ];
    let sender_report = vec![
        0x80, 200, 0, 6, 0, 0, 0, 1, 0xe6, 0x5d, 0x1c, 0x00, 0x80, 0, 0, 0, 0, 0, 0x0f, 0xa0, 0, 0,
        0, 50, 0, 0, 0x1f, 0x40,
    ];
    let mut compound = sender_report.clone();
    compound.extend_from_slice(&[0x81, 202, 0, 2, 0, 0, 0, 1, 1, 1, b'a', 0]);
    vec![pcmu, event, padded, extended, sender_report, compound]
}

#[test]
fn mutated_packets() {
    let seeds = seeds();
    for seed in &seeds {
        check(seed);
    }
    let mut rng = XorShift(0x5eed_0005);
    for _ in 0..20_000 {
        let mut data = seeds[rng.below(seeds.len())].clone();
        for _ in 0..=rng.below(6) {
            match rng.below(5) {
                0 if !data.is_empty() => {
                    let at = rng.below(data.len());
                    data[at] = rng.below(256) as u8;
                }
                1 if !data.is_empty() => {
                    let at = rng.below(data.len());
                    data.truncate(at);
                }
                2 => {
                    let other = &seeds[rng.below(seeds.len())];
                    data.push(0xff);
                    data.extend_from_slice(other);
                }
                3 if !data.is_empty() => {
                    let at = rng.below(data.len());
                    data.insert(at, 0xff);
                }
                _ => data.extend((0..rng.below(8)).map(|_| rng.below(256) as u8)),
            }
        }
        check(&data);
    }
}
