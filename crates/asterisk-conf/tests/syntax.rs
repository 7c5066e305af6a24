//! The shared file syntax: sections, comments, includes, templates, errors.

use std::path::Path;

use asterisk_conf::{load, load_from, parse_str, Error, MemorySource};

fn values(config: &asterisk_conf::Config, section: &str) -> Vec<(String, String)> {
    config
        .section(section)
        .unwrap()
        .entries
        .iter()
        .map(|e| (e.key.clone(), e.value.clone()))
        .collect()
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn keys_values_and_object_lines() {
    let c = parse_str(
        "x.conf",
        "[s]\na=1\n b = two words \nc=>3\nd => \na=again\n",
    )
    .unwrap();
    let s = c.section("s").unwrap();
    assert_eq!(
        values(&c, "s"),
        pairs(&[
            ("a", "1"),
            ("b", "two words"),
            ("c", "3"),
            ("d", ""),
            ("a", "again")
        ])
    );
    assert!(!s.entries[0].object && s.entries[2].object && s.entries[3].object);
    assert_eq!(
        s.get("A"),
        Some("again"),
        "keys are case-insensitive, last wins"
    );
    let all: Vec<&str> = s.get_all("a").map(|e| e.value.as_str()).collect();
    assert_eq!(all, ["1", "again"], "repeated keys kept in order");
    assert_eq!(s.entries[4].location.to_string(), "x.conf:6");
}

#[test]
fn comments_escapes_and_block_comments() {
    let text = "; leading comment\n[s] ; after header\na=1 ; trailing\nb=x\\;y;z\n;-- a block\nc=hidden\n--; d=after\ne=f;--inline--;g\n";
    let c = parse_str("x.conf", text).unwrap();
    assert_eq!(
        values(&c, "s"),
        pairs(&[("a", "1"), ("b", "x;y"), ("d", "after"), ("e", "fg")])
    );
    // config_text_file_load: an unclosed block comment is a warning (naming the line
    // it opened on), and the rest of the file is comment.
    let c = parse_str("x.conf", "[s]\n;-- never closed\na=1\n").unwrap();
    assert!(values(&c, "s").is_empty());
    assert_eq!(
        c.warnings[0].to_string(),
        "x.conf:2: warning: block comment ';--' is never closed with '--;': the rest of the file is a comment"
    );
}

#[test]
fn templates_and_append() {
    let text = "\
[base](!)
type=friend
context=a
[more](!,base)
nat=yes
[phone](more)
context=b
[phone](+)
qualify=yes
[other](base)
";
    let c = parse_str("x.conf", text).unwrap();
    let phone = c.section("phone").unwrap();
    assert_eq!(
        values(&c, "phone"),
        pairs(&[
            ("type", "friend"),
            ("context", "a"),
            ("nat", "yes"),
            ("context", "b"),
            ("qualify", "yes")
        ])
    );
    assert_eq!(
        phone.get("context"),
        Some("b"),
        "own line overrides the template"
    );
    assert_eq!(phone.entries[0].inherited_from.as_deref(), Some("base"));
    assert_eq!(
        phone.entries[0].location.line, 2,
        "inherited entries keep their origin"
    );
    assert_eq!(phone.templates, ["more"]);
    assert!(
        c.section("base").is_none(),
        "templates are not sections of their own"
    );
    assert_eq!(c.sections.iter().filter(|s| s.is_template).count(), 2);
    assert_eq!(c.section("other").unwrap().get("context"), Some("a"));
}

#[test]
fn includes_are_relative_to_the_including_file() {
    let source = MemorySource::new()
        .with(
            "/etc/pbx/sip.conf",
            "[general]\n#include \"peers/phones.conf\"\n[last]\nz=1\n",
        )
        .with(
            "/etc/pbx/peers/phones.conf",
            "[100]\nsecret=a\n#tryinclude missing.conf\n#include <more.conf>\n",
        )
        .with("/etc/pbx/peers/more.conf", "[101]\nsecret=b\n");
    let c = load_from(&source, Path::new("/etc/pbx/sip.conf")).unwrap();
    let names: Vec<&str> = c.sections.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["general", "100", "101", "last"]);
    let entry = &c.section("101").unwrap().entries[0];
    assert_eq!(entry.location.to_string(), "/etc/pbx/peers/more.conf:2");
}

#[test]
fn include_errors() {
    let source = MemorySource::new().with("/a.conf", "[s]\n#include b.conf\n");
    let err = load_from(&source, Path::new("/a.conf")).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("/a.conf:2: cannot include /b.conf:"),
        "{err}"
    );

    let source = MemorySource::new()
        .with("/a.conf", "[s]\n#include b.conf\n")
        .with("/b.conf", "x=1\n#include a.conf\n");
    let err = load_from(&source, Path::new("/a.conf")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "/b.conf:2: /a.conf includes itself (through /a.conf -> /b.conf)"
    );

    // process_text_line: a directive without its argument is a warning.
    let c = parse_str("x.conf", "[s]\n#include\n").unwrap();
    assert_eq!(
        c.warnings[0].to_string(),
        "x.conf:2: warning: #include needs a file name; line ignored"
    );
    let c = parse_str("x.conf", "[s]\n#exec /bin/date\n#bogus\n").unwrap();
    assert_eq!(c.warnings.len(), 2);
    assert!(c.warnings[0]
        .to_string()
        .starts_with("x.conf:2: warning: #exec"));
}

#[test]
fn broken_lines_name_file_and_line() {
    for (text, expected) in [
        ("[s\n", "x.conf:1: section header has no closing ']'"),
        ("\n[]\n", "x.conf:2: section header has an empty name"),
        ("a=1\n", "x.conf:1: 'a' appears before any [section]"),
        (
            "[s](nope)\n",
            "x.conf:1: template 'nope' is not defined above this line",
        ),
        (
            "[s](+)\n",
            "x.conf:1: [s](+) appends to a section that does not exist above this line",
        ),
        ("[s](!\n", "x.conf:1: section options have no closing ')'"),
    ] {
        let err = parse_str("x.conf", text).unwrap_err();
        assert!(matches!(err, Error::Syntax { .. }));
        assert_eq!(err.to_string(), expected, "{text:?}");
    }
    // What process_text_line warns about and skips (a line without '=', nothing before
    // the '=') or ignores (text after the header), the file still loads.
    for (text, expected) in [
        (
            "[s]\njust words\na=1\n",
            "x.conf:2: warning: no '=' in line 'just words'; line ignored",
        ),
        (
            "[s]\n=1\na=1\n",
            "x.conf:2: warning: no name before '=' in line '=1'; line ignored",
        ),
        (
            "[s] junk\na=1\n",
            "x.conf:1: warning: text after the section header ignored: 'junk' (options go right after ']')",
        ),
        (
            "[s](!) junk\n[t](s)\na=1\n",
            "x.conf:1: warning: text after the section's options ignored: 'junk'",
        ),
    ] {
        let c = parse_str("x.conf", text).unwrap();
        assert_eq!(c.warnings[0].to_string(), expected, "{text:?}");
        assert!(c.sections.iter().any(|s| s.get("a") == Some("1")), "{text:?}");
    }
}

#[test]
fn files_on_disk_and_missing_files() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("main.conf"), "[s]\n#include sub.conf\n").unwrap();
    std::fs::write(dir.path().join("sub.conf"), "k=v\r\n").unwrap();
    let c = load(dir.path().join("main.conf")).unwrap();
    assert_eq!(c.section("s").unwrap().get("k"), Some("v"));
    let err = load(dir.path().join("absent.conf")).unwrap_err();
    assert!(matches!(err, Error::Read { .. }));
    assert!(
        err.to_string().contains("absent.conf: cannot read"),
        "{err}"
    );
}

#[test]
fn invalid_utf8_is_a_warning_not_a_failure() {
    let source = MemorySource::new().with("/v.conf", b"[default]\n100 => 1,Jos\xe9\n".to_vec());
    let c = load_from(&source, Path::new("/v.conf")).unwrap();
    assert_eq!(c.warnings[0].location.line, 2);
    assert_eq!(
        c.section("default").unwrap().get("100"),
        Some("1,Jos\u{fffd}")
    );
}

#[test]
fn printing_and_reading_again_gives_the_same_sections() {
    let text = "[a](!)\nk=v;c\n[b](a)\nx => y\\;z\n[c\\;d]\n";
    let c = parse_str("x.conf", text).unwrap();
    let printed = c.to_string();
    assert_eq!(
        printed,
        "[a](!)\nk = v\n\n[b]\nk = v\nx => y\\;z\n\n[c\\;d]\n\n"
    );
    // The shared invariant of the fuzz target: the reprint parses to the same tree.
    asterisk_conf::fuzzing::check(text.as_bytes());
}
