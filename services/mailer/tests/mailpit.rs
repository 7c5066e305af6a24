//! The composed email through a real SMTP server: Mailpit (built by
//! `scripts/install-deps` with `go install` at a pinned version), read back over its
//! HTTP API: headers, text, and the attachment decoded back to the recorded audio.

use std::path::Path;

use chrono::TimeZone;
use mailer::compose::{self, Notice};
use mailer::smtp::{self, Security, SendError, Smtp, SmtpArgs};
use phone_test_support::{free_port, Mailpit};

fn args(port: u16) -> SmtpArgs {
    SmtpArgs {
        host: Some("127.0.0.1".into()),
        port,
        security: Security::None,
        user: Some("voicemail".into()),
        password: Some(asterisk_conf::Secret::new("not-logged")),
        ca_file: None,
        timeout_ms: 5000,
    }
}

#[tokio::test]
async fn the_seeds_email_arrives_with_its_recording() {
    let mailpit = Mailpit::start().await;
    let conf = asterisk_conf::voicemail::load(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../deploy/examples/freelancer/voicemail.conf"),
    )
    .unwrap();
    let mailbox = conf.mailbox("default", "13235550100").unwrap();
    let tone: Vec<i16> = (0..16_000)
        .map(|n| {
            (8000.0 * (2.0 * std::f64::consts::PI * 440.0 * f64::from(n) / 8000.0).sin()) as i16
        })
        .collect();
    let recording = phone_audio::Format::Wav49.encode(&tone);
    let notice = Notice {
        message_id: "01764194700-0a1b2c3d4e5f".into(),
        mailbox: "13235550100".into(),
        context: "default".into(),
        message_number: 1,
        caller_id_number: "2065550123".into(),
        caller_id_name: "Pat Caller".into(),
        origin_time: chrono::Utc
            .with_ymd_and_hms(2026, 11, 26, 23, 5, 9)
            .unwrap(),
        duration_secs: 2,
        recordings: vec![
            ("wav49".into(), "k.wav49".into()),
            ("wav".into(), "k.wav".into()),
        ],
    };
    let mail = compose::email(&conf, mailbox, &notice).unwrap();
    let message = smtp::message(&mail, Some(recording)).unwrap();
    let client = Smtp::new(&args(mailpit.smtp), "127.0.0.1").unwrap();
    client.send(message).await.expect("sent");

    let list = mailpit.messages().await;
    assert_eq!(list.len(), 1);
    let id = list[0]["ID"].as_str().unwrap().to_owned();
    let got = mailpit.message(&id).await;
    assert_eq!(
        got["Subject"],
        "[PBX]: New message 1 in mailbox 13235550100"
    );
    assert_eq!(got["From"]["Name"], "Asterisk PBX");
    assert_eq!(got["From"]["Address"], "voicemail@domain.com");
    assert_eq!(got["To"][0]["Name"], "First Last");
    assert_eq!(got["To"][0]["Address"], "email@domain.com");
    assert_eq!(
        format!("<{}>", got["MessageID"].as_str().unwrap()),
        "<voicemail-01764194700-0a1b2c3d4e5f@domain.com>"
    );
    // SMTP carries lines as CRLF.
    assert_eq!(
        got["Text"]
            .as_str()
            .unwrap()
            .replace("\r\n", "\n")
            .trim_end(),
        mail.body.trim_end()
    );
    let attachment = &got["Attachments"][0];
    assert_eq!(attachment["FileName"], "msg0000.WAV");
    // MIME types are case-insensitive (RFC 2045); Asterisk writes audio/x-WAV.
    assert!(attachment["ContentType"]
        .as_str()
        .unwrap()
        .eq_ignore_ascii_case("audio/x-WAV"));
    let part = attachment["PartID"].as_str().unwrap();
    let bytes = mailpit.part(&id, part).await;
    let audio = phone_audio::wav::decode(&bytes).unwrap();
    assert_eq!(audio.len(), tone.len());
    let c = phone_audio::analysis::correlation(&tone[800..], &audio[800..]);
    assert!(
        c > 0.9,
        "the attachment decodes to the recording (correlation {c:.3})"
    );
}

#[tokio::test]
async fn no_server_is_a_temporary_failure() {
    let port = free_port();
    let client = Smtp::new(&args(port), "127.0.0.1").unwrap();
    match client.send(short_mail("x")).await {
        Err(SendError::Temporary(_)) => {}
        other => panic!("{other:?}"),
    }
}

/// A small email of the seed's mailbox, for the transport tests.
fn short_mail(message_id: &str) -> lettre::Message {
    let conf = asterisk_conf::voicemail::load(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../deploy/examples/freelancer/voicemail.conf"),
    )
    .unwrap();
    let mailbox = conf.mailbox("default", "13235550100").unwrap();
    let notice = Notice {
        message_id: message_id.into(),
        mailbox: "13235550100".into(),
        context: "default".into(),
        message_number: 1,
        caller_id_number: "2065550123".into(),
        caller_id_name: String::new(),
        origin_time: chrono::Utc::now(),
        duration_secs: 1,
        recordings: Vec::new(),
    };
    smtp::message(&compose::email(&conf, mailbox, &notice).unwrap(), None).unwrap()
}

#[tokio::test]
async fn starttls_and_implicit_tls_with_auth_against_a_private_ca() {
    let dir = tempfile::tempdir().unwrap();
    phone_test_support::test_certificates(dir.path());
    let path = |name: &str| dir.path().join(name).display().to_string();
    std::fs::write(dir.path().join("users"), "voicemail:right-password\n").unwrap();
    let tls_args = |extra: &[&str]| {
        let mut a = vec![
            "--smtp-tls-cert".to_owned(),
            path("cert.pem"),
            "--smtp-tls-key".to_owned(),
            path("key.pem"),
            "--smtp-auth-file".to_owned(),
            path("users"),
        ];
        a.extend(extra.iter().map(|s| (*s).to_owned()));
        a
    };
    for (security, extra) in [
        (Security::Starttls, &["--smtp-require-starttls"][..]),
        (Security::Tls, &["--smtp-require-tls"][..]),
    ] {
        let flags = tls_args(extra);
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let mailpit = Mailpit::start_with(&flags).await;
        let settings = SmtpArgs {
            security,
            password: Some(asterisk_conf::Secret::new("right-password")),
            ca_file: Some(dir.path().join("ca.pem")),
            ..args(mailpit.smtp)
        };
        let client = Smtp::new(&settings, "127.0.0.1").unwrap();
        client
            .send(short_mail("tls-1"))
            .await
            .unwrap_or_else(|e| panic!("{security:?}: {e}"));
        assert_eq!(mailpit.messages().await.len(), 1, "{security:?}");

        // A wrong password is refused for good (535).
        let wrong = SmtpArgs {
            password: Some(asterisk_conf::Secret::new("wrong-password")),
            ..settings.clone()
        };
        match Smtp::new(&wrong, "127.0.0.1")
            .unwrap()
            .send(short_mail("tls-2"))
            .await
        {
            Err(SendError::Permanent(e)) => assert!(e.contains("535"), "{e}"),
            other => panic!("{security:?}: {other:?}"),
        }
        // Without the private CA the server's certificate is not trusted: no mail,
        // and not the plain text either.
        let untrusted = SmtpArgs {
            ca_file: None,
            ..settings.clone()
        };
        assert!(Smtp::new(&untrusted, "127.0.0.1")
            .unwrap()
            .send(short_mail("tls-3"))
            .await
            .is_err());
        assert_eq!(mailpit.messages().await.len(), 1, "{security:?}");
    }
}
