//! `router --check-dialplan`: every line that cannot run, with file:line, before
//! anything runs.

use std::process::Command;

fn check(dir: &std::path::Path) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_router"))
        .arg("--check-dialplan")
        .arg("--config-dir")
        .arg(dir)
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn the_seed_dialplan_runs_entirely() {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../deploy/examples/freelancer");
    let (ok, stdout, stderr) = check(&dir);
    assert!(ok, "{stdout}{stderr}");
    assert!(
        stdout.ends_with("extensions.conf: every line can run\n"),
        "{stdout}"
    );
}

#[test]
fn unsupported_lines_are_listed_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("extensions.conf"),
        "[c]\n\
         exten => s,1,Answer()\n\
         same => n,MusicOnHold(default)\n\
         same => n,Set(X=${SHELL(id)})\n\
         include => office,9:00-17:00,mon-fri,*,*\n\
         switch => IAX2/user@peer/ctx\n\
         same => n,Dial(SIP/a,20)\n\
         [office]\n\
         exten => _[]1,1,NoOp()\n",
    )
    .unwrap();
    let (ok, stdout, stderr) = check(dir.path());
    assert!(!ok);
    let path = dir.path().join("extensions.conf");
    let p = path.display();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines,
        [
            format!(
                "{p}:3: application MusicOnHold() is not supported; a call reaching it is hung up"
            ),
            format!("{p}:4: function SHELL() is not supported; it reads as empty"),
            format!(
                "{p}:5: include => office with a time restriction is not supported; it is skipped"
            ),
            format!("{p}:6: switch => is not supported"),
            format!("{p}:9: extension '_[]1': empty set '[]' in pattern; it never matches"),
        ]
    );
    assert!(
        stderr.contains("router: 5 lines in 1 files cannot run"),
        "{stderr}"
    );
}

/// What used to pass the check silently and then fail during the call (issue #21):
/// writes to functions the router does not write, Dial to other technologies, and
/// variables in extension names (substituted from [globals], as pbx_config does).
#[test]
fn lines_that_would_fail_during_the_call_are_listed_too() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("extensions.conf"),
        "[globals]\n\
         NODE=1234\n\
         [c]\n\
         exten => ${NODE},1,Set(DB(cf/${EXTEN})=1)\n\
         same => n,Set(CALLERID(num)=100)\n\
         same => n,Set(CDR(userfield)=x,CHANNEL(language)=fr)\n\
         same => n,Dial(PJSIP/desk&SIP/phone&IAX2/far,20)\n\
         same => n,Dial(SIP/phone,20)\n\
         same => n,Dial(${TRUNK}/123)\n",
    )
    .unwrap();
    let (ok, stdout, stderr) = check(dir.path());
    assert!(!ok);
    let path = dir.path().join("extensions.conf");
    let p = path.display();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines,
        [
            format!("{p}:4: Set(DB(...)=...): the router does not write DB(); the line is skipped"),
            format!("{p}:6: Set(CDR(...)=...): the router does not write CDR(); the line is skipped"),
            format!("{p}:6: Set(CHANNEL(...)=...): the router does not write CHANNEL(); the line is skipped"),
            format!("{p}:7: Dial(PJSIP/...): only SIP channels can be dialled here; that target fails"),
            format!("{p}:7: Dial(IAX2/...): only SIP channels can be dialled here; that target fails"),
        ]
    );
    assert!(
        stderr.contains("router: 3 lines in 1 files cannot run"),
        "{stderr}"
    );
    // The extension is the global's value.
    let plan = asterisk_conf::extensions::load(&path).unwrap();
    assert_eq!(plan.context("c").unwrap().lines[0].extension, "1234");
}

/// Lines Asterisk itself warns about and skips are listed as warnings, and the file
/// still loads.
#[test]
fn lines_asterisk_skips_are_warnings() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("extensions.conf"),
        ";------------------------------\n\
         [c]\n\
         exten => s,1,Answer()\n\
         same => n,Wait(1)\n\
         exten => s,2,NoOp(again)\n\
         /* a stray comment */\n",
    )
    .unwrap();
    let (ok, stdout, stderr) = check(dir.path());
    assert!(ok, "{stdout}{stderr}");
    let p = dir.path().join("extensions.conf");
    let p = p.display();
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        [
            format!("{p}:5: warning: extension 's' priority 2 is already defined at {p}:4; line ignored"),
            format!("{p}:6: warning: no '=' in line '/* a stray comment */'; line ignored"),
            format!("{p}: every line can run"),
        ]
    );
}
