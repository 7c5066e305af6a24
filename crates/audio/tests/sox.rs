//! The GSM codec against libgsm, as sox uses it: what we write decodes in sox to the
//! audio we encoded, and what sox writes decodes here to exactly what sox decodes.
//! Speech comes from espeak-ng. Both are Debian packages that `scripts/install-deps`
//! installs.

use std::path::Path;
use std::process::Command;

use phone_audio::analysis::correlation;
use phone_audio::wav::{decode, Format};

fn run(program: &str, args: &[&str]) {
    let status = Command::new(program)
        .args(args)
        .status()
        .unwrap_or_else(|e| panic!("{program} cannot run ({e}); run scripts/install-deps"));
    assert!(status.success(), "{program} {args:?} failed");
}

/// espeak-ng's speech, converted by sox to 8 kHz, 16-bit, mono.
fn speech(dir: &Path, text: &str) -> Vec<i16> {
    let raw = dir.join("speech.wav");
    let pcm = dir.join("speech8k.wav");
    run("espeak-ng", &["-w", raw.to_str().unwrap(), text]);
    run(
        "sox",
        &[
            raw.to_str().unwrap(),
            "-r",
            "8000",
            "-b",
            "16",
            "-c",
            "1",
            pcm.to_str().unwrap(),
        ],
    );
    decode(&std::fs::read(pcm).unwrap()).unwrap()
}

#[test]
fn sox_decodes_our_wav49_to_the_speech_we_encoded() {
    let dir = tempfile::tempdir().unwrap();
    let input = speech(dir.path(), "Please leave your message after the tone");
    let ours = dir.path().join("msg0000.WAV");
    std::fs::write(&ours, Format::Wav49.encode(&input)).unwrap();
    let back = dir.path().join("back.wav");
    run(
        "sox",
        &[
            ours.to_str().unwrap(),
            "-e",
            "signed-integer",
            "-b",
            "16",
            back.to_str().unwrap(),
        ],
    );
    let decoded = decode(&std::fs::read(back).unwrap()).unwrap();
    // sox gives whole 320-sample blocks; the fact chunk has the exact count.
    assert_eq!(decoded.len(), input.len().div_ceil(320) * 320);
    let c = correlation(&input, &decoded);
    assert!(c > 0.9, "sox's decoding correlates {c:.3} with the input");
}

#[test]
fn our_decoder_matches_libgsm_sample_for_sample() {
    let dir = tempfile::tempdir().unwrap();
    let input = speech(dir.path(), "You have two new messages");
    let pcm = dir.path().join("in.wav");
    std::fs::write(&pcm, Format::Wav.encode(&input)).unwrap();
    let gsm = dir.path().join("sox-gsm.wav");
    run(
        "sox",
        &[
            pcm.to_str().unwrap(),
            "-e",
            "gsm-full-rate",
            gsm.to_str().unwrap(),
        ],
    );
    let back = dir.path().join("sox-back.wav");
    run(
        "sox",
        &[
            gsm.to_str().unwrap(),
            "-e",
            "signed-integer",
            "-b",
            "16",
            back.to_str().unwrap(),
        ],
    );
    let ours = decode(&std::fs::read(&gsm).unwrap()).unwrap();
    let theirs = decode(&std::fs::read(back).unwrap()).unwrap();
    assert_eq!(ours.len(), input.len(), "the fact chunk's count");
    let differing = ours.iter().zip(&theirs).filter(|(a, b)| a != b).count();
    assert_eq!(differing, 0, "{differing} of {} samples differ", ours.len());
}
