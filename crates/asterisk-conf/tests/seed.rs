//! The seed's three files (deploy/examples/freelancer), parsed field by field.

use std::path::PathBuf;

use asterisk_conf::extensions::{Priority, WrittenPriority};
use asterisk_conf::sip::{DtmfMode, Host, Insecure, Nat, PeerType, Qualify};
use asterisk_conf::PhoneConfig;

fn seed_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy/examples/freelancer")
}

fn seed() -> PhoneConfig {
    PhoneConfig::load(seed_dir()).expect("the seed's files load")
}

#[test]
fn seed_files_load_without_warnings() {
    let config = seed();
    let warnings: Vec<String> = config.warnings().map(ToString::to_string).collect();
    assert!(warnings.is_empty(), "{warnings:#?}");
}

#[test]
fn sip_conf_carrier_peer() {
    let sip = seed().sip;
    assert_eq!(sip.peers.len(), 2);
    assert!(sip.registrations.is_empty());
    let p = sip.peer("flowroute").unwrap();
    assert_eq!(p.location.line, 1);
    assert_eq!(p.host, Host::Static("sip.flowroute.com".into()));
    assert_eq!(p.username.as_deref(), Some("12345678"));
    assert_eq!(p.secret.as_ref().unwrap().expose(), "password");
    assert_eq!(p.context, "inbound");
    assert_eq!(p.kind, PeerType::Friend);
    assert_eq!(p.nat, Nat::default());
    assert!(!p.nat.is_on());
    assert_eq!(p.qualify, Qualify::Within(2000));
    assert_eq!(p.dtmf_mode, DtmfMode::Rfc2833);
    assert!(!p.direct_media);
    assert_eq!(p.codecs, ["ulaw"]);
    assert_eq!(
        p.insecure,
        Insecure {
            port: true,
            invite: true
        }
    );
    assert_eq!(p.port, None);
    assert_eq!(p.caller_id, None);
    assert_eq!(p.from_user, None);
    assert_eq!(p.from_domain, None);
}

#[test]
fn sip_conf_desk_phone() {
    let sip = seed().sip;
    let p = sip.peer("13235550100").unwrap();
    assert_eq!(p.location.line, 15);
    assert_eq!(p.host, Host::Dynamic);
    assert_eq!(p.username, None);
    assert_eq!(p.secret.as_ref().unwrap().expose(), "password");
    assert_eq!(p.context, "localexts");
    assert_eq!(p.kind, PeerType::Friend);
    assert!(p.nat.force_rport && p.nat.comedia);
    assert!(!p.direct_media);
    assert_eq!(p.codecs, ["ulaw"]);
    assert_eq!(
        p.insecure,
        Insecure {
            port: true,
            invite: true
        }
    );
    assert_eq!(p.qualify, Qualify::Within(2000));
    // The secret never shows in debug output.
    assert!(!format!("{p:?}").contains("password"));
}

#[test]
fn voicemail_conf_general() {
    let vm = seed().voicemail;
    let g = &vm.general;
    assert_eq!(g.formats, ["wav49", "wav"]);
    assert_eq!(g.server_email, "voicemail@domain.com");
    assert_eq!(g.from_string, None);
    assert!(g.attach);
    assert_eq!(g.skip_ms, 3000);
    assert_eq!(g.max_silence, 10);
    assert_eq!(g.silence_threshold, 128);
    assert_eq!(g.max_logins, 3);
    assert_eq!(g.max_msg, 100, "Asterisk's default");
    assert_eq!(g.max_secs, 0);
    assert_eq!(g.min_secs, 0);
    assert_eq!(g.email_date_format, "A%, %B %d, %Y at %r");
    assert_eq!(g.pager_date_format, "A%, %B %d, %Y at %r");
    assert!(g.send_voicemail);
    assert_eq!(g.tz.as_deref(), Some("pacific"));
    assert_eq!(g.email_subject, None);
    assert_eq!(g.email_body, None);
    assert!(!g.delete);
}

#[test]
fn voicemail_conf_zones_and_mailbox() {
    let vm = seed().voicemail;
    let names: Vec<&str> = vm.zones.iter().map(|z| z.name.as_str()).collect();
    assert_eq!(names, ["eastern", "central", "pacific"]);
    let pacific = vm.zone("pacific").unwrap();
    assert_eq!(pacific.timezone, "America/Los_Angeles");
    assert_eq!(pacific.say_format, "'vm-received' Q 'digits/at' IMp");
    assert_eq!(vm.zone("eastern").unwrap().timezone, "America/New_York");
    assert_eq!(vm.zone("central").unwrap().timezone, "America/Chicago");

    assert_eq!(vm.contexts.len(), 1);
    let mb = vm.mailbox("default", "13235550100").unwrap();
    assert_eq!(mb.pin.expose(), "1234");
    assert!(!mb.pin_locked);
    assert_eq!(mb.full_name, "First Last");
    assert_eq!(mb.email.as_deref(), Some("email@domain.com"));
    assert_eq!(mb.pager, None);
    assert!(mb.options.is_empty());
    assert!(mb.attach(&vm.general));
    assert_eq!(mb.tz(&vm.general), Some("pacific"));
    assert_eq!(mb.location.line, 20);
}

#[test]
fn extensions_conf_inbound() {
    let plan = seed().dialplan;
    assert!(plan.globals.is_empty());
    let names: Vec<&str> = plan.contexts.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["inbound", "localexts"]);
    let inbound = plan.context("inbound").unwrap();
    let lines = inbound.extension("_1NXXNXXXXXX");
    let steps: Vec<(Priority, &str, &str, u32)> = lines
        .iter()
        .map(|l| {
            (
                l.priority,
                l.application.as_str(),
                l.arguments.as_str(),
                l.location.line,
            )
        })
        .collect();
    assert_eq!(
        steps,
        [
            (Priority::Number(1), "NoOp", "", 2),
            (Priority::Number(2), "Dial", "SIP/${EXTEN},20", 3),
            (Priority::Number(3), "VoiceMail", "${EXTEN}@default,u", 4),
        ]
    );
    assert!(lines[1].same && lines[1].written_priority == WrittenPriority::Next);
}

#[test]
fn extensions_conf_localexts() {
    let plan = seed().dialplan;
    let ctx = plan.context("localexts").unwrap();
    assert!(ctx.includes.is_empty());
    let step = |ext: &str| -> Vec<(u32, Option<String>, String, String)> {
        ctx.extension(ext)
            .iter()
            .map(|l| {
                let Priority::Number(p) = l.priority else {
                    panic!("hint")
                };
                (
                    p,
                    l.label.clone(),
                    l.application.clone(),
                    l.arguments.clone(),
                )
            })
            .collect()
    };
    let s = |x: &str| x.to_owned();
    assert_eq!(
        step("911"),
        [
            (1, None, s("NoOp"), s("")),
            (2, None, s("Set"), s("CALLERID(num)=${CHANNEL:4:11}")),
            (3, None, s("Dial"), s("SIP/${EXTEN}@flowroute")),
        ]
    );
    assert_eq!(step("1"), [(1, None, s("Goto"), s("${CHANNEL:4:11},1"))]);
    assert_eq!(step("_+X!"), [(1, None, s("Goto"), s("${EXTEN:1},1"))]);
    assert_eq!(
        step("_NXXNXXXXXX"),
        [(1, None, s("Goto"), s("1${EXTEN},1"))]
    );
    assert_eq!(
        step("_1NXXNXXXXXX"),
        [
            (1, None, s("NoOp"), s("")),
            (2, None, s("Set"), s("LINE=${CHANNEL:4:11}")),
            (
                3,
                None,
                s("GotoIf"),
                s("$[${EXTEN} = ${LINE}]?voicemail:outbound")
            ),
            (
                4,
                Some(s("voicemail")),
                s("VoiceMailMain"),
                s("${LINE}@default,s")
            ),
            (5, None, s("Hangup"), s("")),
            (6, Some(s("outbound")), s("Set"), s("CALLERID(num)=${LINE}")),
            (7, None, s("Dial"), s("SIP/${EXTEN}@flowroute")),
            (8, None, s("Hangup"), s("")),
        ]
    );
    let lines: Vec<u32> = ctx
        .extension("_1NXXNXXXXXX")
        .iter()
        .map(|l| l.location.line)
        .collect();
    assert_eq!(lines, [22, 23, 24, 25, 26, 27, 28, 29]);
}
