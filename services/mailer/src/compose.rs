//! The email of a new voicemail, as Asterisk's app_voicemail writes it, sans I/O:
//! From `serveremail` (named by `fromstring`, else "Asterisk PBX"), To the mailbox's
//! full name and email; subject and body from `emailsubject` / `emailbody` with the
//! `${VM_*}` variables and `\n` `\t` escapes, or Asterisk's own wording when they are
//! unset; `${VM_DATE}` per `emaildateformat` in the mailbox's `[zonemessages]` zone; the
//! first format of `format=` attached as Asterisk names it (`msg0000.WAV`,
//! `audio/x-WAV` for wav49); and the short pager mail for a pager address.

use asterisk_conf::voicemail::{Mailbox, VoicemailConf};
use chrono::{DateTime, Utc};

/// What the mailer knows of a new message (the voicemail service's Deliver request).
#[derive(Debug, Clone, PartialEq)]
pub struct Notice {
    pub message_id: String,
    pub mailbox: String,
    pub context: String,
    /// `${VM_MSGNUM}`: the message's number in its folder, from 1.
    pub message_number: u32,
    pub caller_id_number: String,
    pub caller_id_name: String,
    pub origin_time: DateTime<Utc>,
    pub duration_secs: u32,
    /// Storage keys of the recording by format name, in `format=` order.
    pub recordings: Vec<(String, String)>,
}

/// The recording to attach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    /// The storage key to read it from.
    pub key: String,
    /// `msg0000.WAV`.
    pub filename: String,
    /// `audio/x-WAV`.
    pub content_type: String,
}

/// A composed email.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Composed {
    /// Display name and address.
    pub from: (String, String),
    pub to: (String, String),
    pub subject: String,
    pub body: String,
    /// The Message-ID header, derived from the voicemail id alone, so that a resent
    /// delivery is recognisably the same email.
    pub message_id: String,
    pub attachment: Option<Attachment>,
}

/// Asterisk's date format when `emaildateformat` is unset.
pub const DEFAULT_DATE_FORMAT: &str = "%A, %B %d, %Y at %r";

/// The `${VM_*}` variables of a message.
pub fn variables(notice: &Notice, full_name: &str, date: &str) -> Vec<(&'static str, String)> {
    let cidnum = notice.caller_id_number.trim().to_owned();
    let cidname = notice.caller_id_name.trim().to_owned();
    let callerid = match (cidname.is_empty(), cidnum.is_empty()) {
        (false, false) => format!("\"{cidname}\" <{cidnum}>"),
        (false, true) => cidname.clone(),
        (true, false) => cidnum.clone(),
        (true, true) => "an unknown caller".to_owned(),
    };
    vec![
        ("VM_NAME", full_name.to_owned()),
        (
            "VM_DUR",
            format!(
                "{}:{:02}",
                notice.duration_secs / 60,
                notice.duration_secs % 60
            ),
        ),
        ("VM_MSGNUM", notice.message_number.to_string()),
        ("VM_MAILBOX", notice.mailbox.clone()),
        ("VM_CALLERID", callerid),
        ("VM_CIDNUM", cidnum),
        ("VM_CIDNAME", cidname),
        ("VM_DATE", date.to_owned()),
        ("VM_CATEGORY", String::new()),
        ("VM_FLAG", String::new()),
    ]
}

/// `${NAME}` replaced by its value (unknown names by nothing, as Asterisk does for an
/// unset variable), and the `\n`, `\t` and `\\` escapes of voicemail.conf.
pub fn substitute(template: &str, vars: &[(&str, String)]) -> String {
    let mut out = String::with_capacity(template.len() + 64);
    let mut rest = template;
    while let Some(c) = rest.chars().next() {
        if let Some(after) = rest.strip_prefix("${") {
            if let Some(end) = after.find('}') {
                let name = &after[..end];
                if let Some((_, value)) = vars.iter().find(|(n, _)| *n == name) {
                    out.push_str(value);
                }
                rest = &after[end + 1..];
                continue;
            }
        }
        if let Some(after) = rest.strip_prefix('\\') {
            match after.chars().next() {
                Some('n') => {
                    out.push('\n');
                    rest = &after[1..];
                    continue;
                }
                Some('t') => {
                    out.push('\t');
                    rest = &after[1..];
                    continue;
                }
                Some('\\') => {
                    out.push('\\');
                    rest = &after[1..];
                    continue;
                }
                _ => {}
            }
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

/// `strftime` as the C library does it for Asterisk: known conversions are expanded,
/// anything else after a `%` is kept as written (the seed's `A%,` stays `A%,`).
pub fn strftime<Tz: chrono::TimeZone>(format: &str, when: &DateTime<Tz>) -> String
where
    Tz::Offset: std::fmt::Display,
{
    const KNOWN: &str = "aAbBcCdDeFgGhHIjklmMnpPrRsStTuUVwWxXyYzZ%";
    let mut safe = String::with_capacity(format.len() + 8);
    let mut chars = format.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            safe.push(c);
            continue;
        }
        match chars.peek() {
            Some(&next) if KNOWN.contains(next) => {
                safe.push('%');
                safe.push(next);
                chars.next();
            }
            // A `%` not followed by a conversion is printed as is.
            _ => safe.push_str("%%"),
        }
    }
    when.format(&safe).to_string()
}

/// The zone of a mailbox: its `tz=` (or `[general]`'s) looked up in `[zonemessages]`;
/// UTC when there is none, as a container's local time is.
pub fn zone(conf: &VoicemailConf, mailbox: &Mailbox) -> chrono_tz::Tz {
    mailbox
        .tz(&conf.general)
        .and_then(|name| conf.zone(name))
        .and_then(|z| z.timezone.parse().ok())
        .unwrap_or(chrono_tz::UTC)
}

/// The Message-ID of a voicemail's email.
pub fn message_id(voicemail_id: &str, domain: &str) -> String {
    let safe: String = voicemail_id
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
        .collect();
    format!("<voicemail-{safe}@{domain}>")
}

fn sender(conf: &VoicemailConf, vars: &[(&str, String)]) -> (String, String) {
    let name = match &conf.general.from_string {
        Some(from) => substitute(from, vars),
        None => "Asterisk PBX".to_owned(),
    };
    (name, conf.general.server_email.clone())
}

fn domain(address: &str) -> &str {
    address.rsplit_once('@').map_or("phone.invalid", |(_, d)| d)
}

/// The date as `format` (or Asterisk's default) writes it in the mailbox's zone, and
/// the message's variables with it.
fn dated(
    conf: &VoicemailConf,
    mailbox: &Mailbox,
    notice: &Notice,
    format: &str,
) -> (String, Vec<(&'static str, String)>) {
    let format = if format.is_empty() {
        DEFAULT_DATE_FORMAT
    } else {
        format
    };
    let tz = zone(conf, mailbox);
    let date = strftime(format, &notice.origin_time.with_timezone(&tz));
    let vars = variables(notice, &mailbox.full_name, &date);
    (date, vars)
}

/// The caller as Asterisk's default wording names them: name, else number.
fn caller_or<'a>(notice: &'a Notice, unknown: &'a str) -> &'a str {
    [&notice.caller_id_name, &notice.caller_id_number]
        .into_iter()
        .map(|s| s.trim())
        .find(|s| !s.is_empty())
        .unwrap_or(unknown)
}

/// The email to the mailbox's address; `None` when it has none.
pub fn email(conf: &VoicemailConf, mailbox: &Mailbox, notice: &Notice) -> Option<Composed> {
    let to = mailbox.email.clone().filter(|e| !e.trim().is_empty())?;
    let general = &conf.general;
    let (date, vars) = dated(conf, mailbox, notice, &general.email_date_format);
    let subject = match &general.email_subject {
        Some(template) => substitute(template, &vars),
        None => format!(
            "[PBX]: New message {} in mailbox {}",
            notice.message_number, notice.mailbox
        ),
    };
    let body = match &general.email_body {
        Some(template) => substitute(template, &vars),
        None => {
            let from = caller_or(notice, "an unknown caller");
            format!(
                "Dear {}:\n\n\tJust wanted to let you know you were just left a {} long message (number {})\nin mailbox {} from {}, on {} so you might\nwant to check it when you get a chance.  Thanks!\n\n\t\t\t\t--Asterisk\n\n",
                mailbox.full_name,
                vars[1].1,
                notice.message_number,
                notice.mailbox,
                from,
                date
            )
        }
    };
    let attachment = if mailbox.attach(general) {
        notice.recordings.first().map(|(format, key)| {
            // Asterisk names wav49 files `.WAV`.
            let ext = if format.eq_ignore_ascii_case("wav49") {
                "WAV".to_owned()
            } else {
                format.clone()
            };
            Attachment {
                key: key.clone(),
                filename: format!("msg{:04}.{ext}", notice.message_number.saturating_sub(1)),
                content_type: format!("audio/x-{ext}"),
            }
        })
    } else {
        None
    };
    let from = sender(conf, &vars);
    Some(Composed {
        message_id: message_id(&notice.message_id, domain(&from.1)),
        from,
        to: (mailbox.full_name.clone(), to),
        subject,
        body,
        attachment,
    })
}

/// The short mail to the mailbox's pager address; `None` when it has none.
pub fn pager(conf: &VoicemailConf, mailbox: &Mailbox, notice: &Notice) -> Option<Composed> {
    let to = mailbox.pager.clone().filter(|e| !e.trim().is_empty())?;
    let general = &conf.general;
    let (date, vars) = dated(conf, mailbox, notice, &general.pager_date_format);
    let subject = match &general.pager_subject {
        Some(template) => substitute(template, &vars),
        None => "New VM".to_owned(),
    };
    let body = match &general.pager_body {
        Some(template) => substitute(template, &vars),
        None => format!(
            "New {} long msg in box {}\nfrom {}, on {}",
            vars[1].1,
            notice.mailbox,
            caller_or(notice, "unknown"),
            date
        ),
    };
    let from = sender(conf, &vars);
    Some(Composed {
        message_id: message_id(&format!("{}-pager", notice.message_id), domain(&from.1)),
        from,
        to: (mailbox.full_name.clone(), to),
        subject,
        body,
        attachment: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn seed() -> VoicemailConf {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../deploy/examples/freelancer/voicemail.conf");
        asterisk_conf::voicemail::load(path).unwrap()
    }

    fn notice() -> Notice {
        Notice {
            message_id: "01764194700-0a1b2c3d4e5f".into(),
            mailbox: "13235550100".into(),
            context: "default".into(),
            message_number: 3,
            caller_id_number: "2065550123".into(),
            caller_id_name: "Pat Caller".into(),
            // 23:05 UTC is 3:05 PM in Los Angeles (PST).
            origin_time: Utc.with_ymd_and_hms(2026, 11, 26, 23, 5, 9).unwrap(),
            duration_secs: 75,
            recordings: vec![
                (
                    "wav49".into(),
                    "voicemail/default/13235550100/INBOX/x.wav49".into(),
                ),
                (
                    "wav".into(),
                    "voicemail/default/13235550100/INBOX/x.wav".into(),
                ),
            ],
        }
    }

    #[test]
    fn the_seeds_email_has_asterisks_default_wording() {
        let conf = seed();
        let mailbox = conf.mailbox("default", "13235550100").unwrap();
        let mail = email(&conf, mailbox, &notice()).unwrap();
        assert_eq!(
            mail.from,
            ("Asterisk PBX".into(), "voicemail@domain.com".into())
        );
        assert_eq!(mail.to, ("First Last".into(), "email@domain.com".into()));
        assert_eq!(mail.subject, "[PBX]: New message 3 in mailbox 13235550100");
        // The seed's emaildateformat is "A%, %B %d, %Y at %r" (a typo for %A): the
        // stray "A%," is printed as written, as the C library does.
        assert_eq!(
            mail.body,
            "Dear First Last:\n\n\tJust wanted to let you know you were just left a 1:15 long message (number 3)\nin mailbox 13235550100 from Pat Caller, on A%, November 26, 2026 at 03:05:09 PM so you might\nwant to check it when you get a chance.  Thanks!\n\n\t\t\t\t--Asterisk\n\n"
        );
        assert_eq!(
            mail.attachment,
            Some(Attachment {
                key: "voicemail/default/13235550100/INBOX/x.wav49".into(),
                filename: "msg0002.WAV".into(),
                content_type: "audio/x-WAV".into(),
            })
        );
        assert_eq!(
            mail.message_id,
            "<voicemail-01764194700-0a1b2c3d4e5f@domain.com>"
        );
        // The same delivery composes the same email, Message-ID included.
        assert_eq!(email(&conf, mailbox, &notice()), Some(mail));
    }

    #[test]
    fn templates_take_every_variable_and_escape() {
        let text = "[general]\nformat=wav|wav49\nserveremail=vm@example.org\nfromstring=Voicemail for ${VM_NAME}\nemailsubject=New ${VM_DUR} message ${VM_MSGNUM} for ${VM_MAILBOX}\nemailbody=${VM_NAME}\\n\\t${VM_CALLERID}|${VM_CIDNUM}|${VM_CIDNAME}|${VM_DATE}|${UNKNOWN}|\\\\n\nemaildateformat=%Y-%m-%d %H:%M\nattach=no\n\n[zonemessages]\neastern=America/New_York|'vm-received' Q\n\n[default]\n100 => 1,Pat Q,pat@example.org,,tz=eastern\n";
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("voicemail.conf"), text).unwrap();
        let conf = asterisk_conf::voicemail::load(dir.path().join("voicemail.conf")).unwrap();
        let mailbox = conf.mailbox("default", "100").unwrap();
        let mut n = notice();
        n.mailbox = "100".into();
        let mail = email(&conf, mailbox, &n).unwrap();
        assert_eq!(mail.from.0, "Voicemail for Pat Q");
        assert_eq!(mail.subject, "New 1:15 message 3 for 100");
        assert_eq!(
            mail.body,
            "Pat Q\n\t\"Pat Caller\" <2065550123>|2065550123|Pat Caller|2026-11-26 18:05||\\n"
        );
        assert_eq!(mail.attachment, None, "attach=no");
        // wav first in format=: msg0002.wav, audio/x-wav.
        let conf2 = seed();
        let mut n2 = notice();
        n2.recordings.reverse();
        let a = email(
            &conf2,
            conf2.mailbox("default", "13235550100").unwrap(),
            &n2,
        )
        .unwrap()
        .attachment
        .unwrap();
        assert_eq!(
            (a.filename.as_str(), a.content_type.as_str()),
            ("msg0002.wav", "audio/x-wav")
        );
    }

    #[test]
    fn an_unknown_caller_and_the_pager_mail() {
        let text = "[general]\nserveremail=vm@example.org\npagerdateformat=%T\n\n[default]\n100 => 1,Pat Q,pat@example.org,page@example.org\n";
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("voicemail.conf"), text).unwrap();
        let conf = asterisk_conf::voicemail::load(dir.path().join("voicemail.conf")).unwrap();
        let mailbox = conf.mailbox("default", "100").unwrap();
        let mut n = notice();
        n.caller_id_name.clear();
        n.caller_id_number.clear();
        let mail = email(&conf, mailbox, &n).unwrap();
        assert!(
            mail.body
                .contains("from an unknown caller, on Thursday, November 26, 2026 at 11:05:09 PM"),
            "{}",
            mail.body
        );
        let page = pager(&conf, mailbox, &n).unwrap();
        assert_eq!(page.to.1, "page@example.org");
        assert_eq!(page.subject, "New VM");
        assert_eq!(
            page.body,
            "New 1:15 long msg in box 13235550100\nfrom unknown, on 23:05:09"
        );
        assert_eq!(page.attachment, None);
        assert_ne!(page.message_id, mail.message_id);
    }

    #[test]
    fn substitution_leaves_broken_references_alone() {
        let vars = vec![("VM_NAME", "X".to_owned())];
        assert_eq!(substitute("${VM_NAME", &vars), "${VM_NAME");
        assert_eq!(substitute("a\\qb\\", &vars), "a\\qb\\");
        assert_eq!(substitute("é${VM_NAME}ü", &vars), "éXü");
    }
}
