//! Files real users write that Asterisk loads, each a fixture in
//! `tests/fixtures/asterisk-loads/<case>`: they load here too, with the warning Asterisk
//! gives (or none where Asterisk is silent), and what Asterisk skips is skipped. The
//! comment on each case names the Asterisk source that decides it.

use std::path::{Path, PathBuf};

use asterisk_conf::extensions::{self, Priority};

fn fixture(case: &str, file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/asterisk-loads")
        .join(case)
        .join(file)
}

/// The warnings as `file-name:line: message`, the fixtures' directory left out.
fn warnings(list: &[asterisk_conf::Warning]) -> Vec<String> {
    list.iter()
        .map(|w| {
            let dir = w.location.file.parent().unwrap().display().to_string();
            let file = w.location.file.file_name().unwrap().to_string_lossy();
            let message = w.message.replace(&format!("{dir}/"), "");
            format!("{file}:{}: {message}", w.location.line)
        })
        .collect()
}

/// main/config.c, config_text_file_load: `;--` opens a block comment only when the
/// next character is not `-` (a `;-----` banner is a line comment); the count of open
/// block comments is the file's own, and one left open ends in a warning naming the
/// line it began on, in the file it is in.
#[test]
fn separator_lines_are_comments_and_an_unclosed_block_belongs_to_its_file() {
    let plan = extensions::load(fixture("separators", "extensions.conf")).unwrap();
    assert_eq!(
        warnings(&plan.warnings),
        ["more.conf:3: block comment ';--' is never closed with '--;': the rest of the file is a comment"]
    );
    assert_eq!(plan.general("static"), Some("yes"));
    assert_eq!(plan.context("included").unwrap().lines.len(), 1);
    // The comment does not run on into the including file.
    assert_eq!(
        plan.context("default").unwrap().lines[0].arguments,
        "after the include"
    );
}

/// main/config.c (AST_INCLUDE_GLOB): an `#include` is a glob, its matches read in name
/// order; a `#tryinclude` matching nothing is no error.
#[test]
fn include_globs_read_every_match_in_order() {
    let plan = extensions::load(fixture("glob", "extensions.conf")).unwrap();
    let names: Vec<&str> = plan.contexts.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["a", "b"]);
    assert!(plan.warnings.is_empty(), "{:?}", plan.warnings);
}

/// pbx/pbx_config.c, pbx_load_config: the label in `(...)` is taken off first, then a
/// `+N` offset is added to `n`, to a number or to a label's priority.
#[test]
fn priorities_with_offsets_and_label_references() {
    let plan = extensions::load(fixture("priorities", "extensions.conf")).unwrap();
    assert!(plan.warnings.is_empty(), "{:?}", plan.warnings);
    let lines = plan.context("default").unwrap().extension("100");
    let found: Vec<(Priority, &str)> = lines
        .iter()
        .map(|l| (l.priority, l.application.as_str()))
        .collect();
    assert_eq!(
        found,
        [
            (Priority::Number(1), "Dial"),
            (Priority::Number(3), "Playback"),
            (Priority::Number(104), "Voicemail"),
            (Priority::Number(105), "Hangup"),
        ]
    );
}

/// pbx/pbx_config.c: the arguments run from the first `(` to the last `)`; what
/// follows is dropped (Asterisk silently; a warning here says so).
#[test]
fn text_after_the_closing_parenthesis_is_dropped() {
    let plan = extensions::load(fixture("after-paren", "extensions.conf")).unwrap();
    let lines = &plan.context("default").unwrap().lines;
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[2].arguments, "dept,s,1(${EXTEN})");
    assert_eq!(
        warnings(&plan.warnings),
        [
            "extensions.conf:2: text after the ')' of Progress(...) dropped: '\"early media\"'",
            "extensions.conf:3: text after the ')' of Answer(...) dropped: ','",
            "extensions.conf:4: text after the ')' of Gosub(...) dropped: '${dept}'",
        ]
    );
}

/// main/pbx.c, ast_add_extension2 (via pbx_config): a priority or a label already in
/// use is refused with a warning; the first line stays.
#[test]
fn a_repeated_priority_or_label_keeps_the_first() {
    let plan = extensions::load(fixture("repeats", "extensions.conf")).unwrap();
    let lines = plan.context("default").unwrap().extension("s");
    let kept: Vec<&str> = lines.iter().map(|l| l.arguments.as_str()).collect();
    assert_eq!(kept, ["", "hello", ""]);
    assert_eq!(lines.last().unwrap().priority, Priority::Number(4));
    assert_eq!(
        warnings(&plan.warnings),
        [
            "extensions.conf:4: extension 's' priority 2 is already defined at extensions.conf:3; line ignored",
            "extensions.conf:5: label 'start' of extension 's' is already used at extensions.conf:2; line ignored",
        ]
    );
}

/// main/config.c, process_text_line: a line without `=` is skipped with a warning.
/// pbx/pbx_config.c: `same =>` with a word for its priority is an invalid priority or
/// label, and an empty application is no line; both skipped with a warning.
#[test]
fn lines_asterisk_skips_are_skipped_with_a_warning() {
    let plan = extensions::load(fixture("skipped-lines", "extensions.conf")).unwrap();
    let c = plan.context("default").unwrap();
    let kept: Vec<&str> = c.lines.iter().map(|l| l.application.as_str()).collect();
    assert_eq!(kept, ["Answer", "Hangup"]);
    assert_eq!(
        warnings(&plan.warnings),
        [
            "extensions.conf:2: no '=' in line '/* a C comment Asterisk does not know */'; line ignored",
            "extensions.conf:4: invalid priority/label 'Playback': not a number, n, s, hint or a label of extension 's' above; line ignored",
            "extensions.conf:5: application is missing; line ignored",
        ]
    );
}

/// apps/app_voicemail.c, load_config: the section `aliasescontext` names holds
/// `box@context => box@context` aliases, not mailboxes; a zone is taken as written.
#[test]
fn voicemail_aliases_from_asterisks_own_sample() {
    let conf =
        asterisk_conf::voicemail::load(fixture("voicemail-aliases", "voicemail.conf")).unwrap();
    assert!(conf.warnings.is_empty(), "{:?}", conf.warnings);
    assert_eq!(conf.general.aliases_context.as_deref(), Some("myaliases"));
    assert!(conf.contexts.iter().all(|c| c.name != "myaliases"));
    let aliased = conf.mailbox("devices", "1234").unwrap();
    assert_eq!(
        (aliased.context.as_str(), aliased.number.as_str()),
        ("default", "1234")
    );
    assert!(conf.zone("military").is_some());
}

/// channels/chan_sip.c, sip_parse_nat_option: the words of `nat=` it does not know are
/// ignored (`comedia instead` is not `comedia`).
#[test]
fn nat_words_chan_sip_does_not_know_are_ignored() {
    let conf = asterisk_conf::sip::load(fixture("sip-nat", "sip.conf")).unwrap();
    let nat = conf.peer("desk").unwrap().nat;
    assert!(nat.force_rport && !nat.comedia);
    assert_eq!(
        warnings(&conf.warnings),
        ["sip.conf:8: nat: 'comedia instead' is not yes, no, force_rport, comedia, auto_force_rport or auto_comedia; ignored, as chan_sip does"]
    );
}

/// pbx/pbx_config.c: the extension field goes through pbx_substitute_variables_helper
/// with no channel: `${NAME}` is the [globals] variable.
#[test]
fn extensions_named_by_globals() {
    let plan = extensions::load(fixture("globals", "extensions.conf")).unwrap();
    let names: Vec<&str> = plan
        .context("default")
        .unwrap()
        .lines
        .iter()
        .map(|l| l.extension.as_str())
        .collect();
    assert_eq!(names, ["1234", "89901"]);
}
