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
        stderr.contains("router: 5 line(s) of the dialplan cannot run here"),
        "{stderr}"
    );
}
