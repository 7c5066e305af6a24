//! Real users' Asterisk configurations (`tests/fixtures/asterisk`, each set's source
//! repository, commit and licence in its SOURCES.md), loaded as Asterisk loads them:
//! every set Asterisk loads loads here, and what `--check-dialplan` says of each
//! (Asterisk's own warnings, the lines the router cannot run, in how many files) is
//! asserted, so that a change in either shows. The sets are kept to measure, not tuned
//! to: a fix that changes a count changes this table.

use std::path::{Path, PathBuf};

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/asterisk")
}

/// What one set gives: the dialplan's load warnings, the lines that cannot run and in
/// how many files, and the warnings of its sip.conf and voicemail.conf (when it has
/// them); or the load error Asterisk also stops at.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    Loads {
        warnings: usize,
        lines: usize,
        files: usize,
        sip: Option<Result<usize, String>>,
        voicemail: Option<Result<usize, String>>,
    },
    Refused(String),
}

/// A load's warnings, or its error with the corpus directory taken out of it.
fn outcome<T>(
    result: Result<T, asterisk_conf::Error>,
    warnings: impl Fn(&T) -> usize,
) -> Result<usize, String> {
    result.map(|conf| warnings(&conf)).map_err(|e| {
        e.to_string()
            .replace(&format!("{}/", corpus().display()), "")
    })
}

fn look(dir: &Path) -> Seen {
    let check = match router::check(dir) {
        Ok(check) => check,
        Err(e) => {
            return Seen::Refused(
                e.to_string()
                    .replace(&format!("{}/", corpus().display()), ""),
            )
        }
    };
    let sip = dir.join("sip.conf");
    let sip = sip
        .exists()
        .then(|| outcome(asterisk_conf::sip::load(&sip), |c| c.warnings.len()));
    let voicemail = dir.join("voicemail.conf");
    let voicemail = voicemail.exists().then(|| {
        outcome(asterisk_conf::voicemail::load(&voicemail), |c| {
            c.warnings.len()
        })
    });
    Seen::Loads {
        warnings: check.warnings.len(),
        lines: check.lines,
        files: check.files,
        sip,
        voicemail,
    }
}

#[test]
fn every_set_asterisk_loads_loads_and_the_checks_counts_hold() {
    let mut sets: Vec<String> = std::fs::read_dir(corpus())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    sets.sort();
    let seen: Vec<(String, Seen)> = sets
        .iter()
        .map(|name| (name.clone(), look(&corpus().join(name))))
        .collect();
    if std::env::var_os("CORPUS_PRINT").is_some() {
        for (name, seen) in &seen {
            eprintln!("{name}: {seen:?}");
        }
    }
    let expected = expected();
    assert_eq!(
        seen.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
        expected.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
        "the sets"
    );
    for ((name, seen), (_, want)) in seen.iter().zip(expected) {
        match (seen, want) {
            (Seen::Refused(error), Seen::Refused(part)) => {
                assert!(error.contains(&part), "{name}: {error}")
            }
            (seen, want) => assert_eq!(seen, &want, "{name}"),
        }
    }
    assert!(seen.len() >= 15);
}

fn loads(
    warnings: usize,
    lines: usize,
    files: usize,
    sip: Option<Result<usize, String>>,
    voicemail: Option<Result<usize, String>>,
) -> Seen {
    Seen::Loads {
        warnings,
        lines,
        files,
        sip,
        voicemail,
    }
}

/// Measured 2026-12-06 (issue #21): 20 of the 22 sets load whole; 6 have every line
/// runnable here.
fn expected() -> Vec<(&'static str, Seen)> {
    vec![
        ("ansible-ctf-phones", loads(0, 12, 1, None, None)),
        ("avr-audiosocket", loads(0, 8, 1, None, None)),
        ("doorpi-fritzbox", loads(0, 0, 0, Some(Ok(11)), None)),
        ("freepbx-asterisk-rasa", loads(94, 976, 2, Some(Ok(26)), Some(Ok(26)))),
        ("gotrunk-uk-sip-trunk", loads(0, 0, 0, Some(Ok(2)), None)),
        ("hackerspace-krk-privatedial", loads(6, 82, 7, None, None)),
        ("halef-agi", loads(0, 1, 1, Some(Ok(5)), None)),
        ("ht503-home-fxo", loads(0, 0, 0, Some(Ok(4)), None)),
        ("intercom-tomosatop", loads(0, 1, 1, None, None)),
        ("ipsafe-ipbx-core", loads(1, 52, 2, Some(Ok(8)), None)),
        ("ivozprovider-multitenant", loads(1, 61, 3, None, Some(Ok(7)))),
        ("mojobol-callback", loads(0, 2, 1, Some(Ok(4)), None)),
        ("opendialup", loads(0, 2, 1, None, None)),
        ("phreaknet-boilerplate", loads(0, 335, 4, Some(Ok(16)), None)),
        ("potsbliz", loads(0, 3, 1, Some(Ok(2)), None)),
        ("sip-doorbell-apartments", loads(0, 1, 1, None, None)),
        ("telekinesis-hamshack", loads(0, 17, 1, None, Some(Ok(1)))),
        ("the-red-phone", loads(0, 0, 0, Some(Ok(2)), None)),
        ("unifi-edu-schoolbell", loads(0, 18, 1, None, None)),
        ("uuru-dect-realtime", loads(0, 2, 1, None, None)),
        // Asterisk stops here too: the absolute #include names a file of the Wazo
        // installation, not in the repository.
        (
            "wazo-packaged-config",
            Seen::Refused("cannot include /etc/xivo/asterisk/xivo_globals.conf: no such file".into()),
        ),
        (
            "xpbx-realtime",
            loads(
                0,
                5,
                1,
                None,
                // Its voicemail.conf includes a file of the running system (Asterisk
                // refuses it too).
                Some(Err("xpbx-realtime/voicemail.conf:22: cannot include /data/voicemail_mailboxes.conf: no such file".into())),
            ),
        ),
    ]
}
