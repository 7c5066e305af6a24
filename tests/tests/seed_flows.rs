//! The seed's calls end to end (DESIGN.md, "The calls of the seed"), with real peers:
//! baresip as the desk phone and as the PSTN, Kamailio as the carrier, MinIO for the
//! messages, Mailpit for the email. Each flow runs against `phone` (one process) and
//! against the five services as five processes. The systems are heavy, so the tests of
//! this file take turns.

use std::time::Duration;

use phone_test_support::free_port;
use phone_tests::baresip::{Phone, PhoneConfig};
use phone_tests::carrier::{Carrier, TRUNK_USER};
use phone_tests::system::{Mode, System};
use phone_tests::{seconds_of, tone};

const DID: &str = "13235550100";
/// What the desk phone says, and what the PSTN says.
const DESK_HZ: f64 = 440.0;
const PSTN_HZ: f64 = 700.0;

/// One system at a time (a test that fails does not stop the others' turns).
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

struct World {
    carrier: Carrier,
    system: System,
    desk: Phone,
    pstn: Phone,
}

impl World {
    async fn start(mode: Mode, desk_answers: bool) -> Self {
        Self::start_phones(mode, desk_answers, false).await
    }

    /// The desk phone does not answer and subscribes to its message lamp.
    async fn start_with_lamp(mode: Mode) -> Self {
        Self::start_phones(mode, false, true).await
    }

    async fn start_phones(mode: Mode, desk_answers: bool, lamp: bool) -> Self {
        let sip = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
        let carrier = Carrier::start(free_port(), sip);
        let system = System::start(mode, sip, carrier.addr).await;
        carrier.ready().await;
        let pstn = Phone::start(PhoneConfig {
            aor: format!("pstn@{}", carrier.addr),
            password: "pstn",
            auto_answer: true,
            mwi: false,
            voice: tone(PSTN_HZ),
        });
        let desk = Phone::start(PhoneConfig {
            aor: format!("{DID}@{sip}"),
            password: "password",
            auto_answer: desk_answers,
            mwi: lamp,
            voice: tone(DESK_HZ),
        });
        if lamp {
            desk.subscribe_mwi().await;
        }
        desk.assert_registers("desk").await;
        pstn.assert_registers("pstn").await;
        World {
            carrier,
            system,
            desk,
            pstn,
        }
    }

    fn did_uri(&self) -> String {
        format!("sip:{DID}@{}", self.carrier.addr)
    }
}

/// Flow 1: the carrier brings a call to the DID, the desk phone answers, and each side
/// hears the other.
async fn inbound_call_is_answered_with_audio_both_ways(mode: Mode) {
    let _turn = TURN.lock().await;
    let world = World::start(mode, true).await;
    world.pstn.dial(&world.did_uri()).await;
    assert!(
        world
            .desk
            .wait_for_output("established", Duration::from_secs(15))
            .await,
        "{mode:?}: the desk phone answers:\n{}",
        world.desk.output()
    );
    // Three seconds of conversation.
    tokio::time::sleep(Duration::from_secs(3)).await;
    world.pstn.hangup().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let desk_heard = world.desk.heard().concat();
    let pstn_heard = world.pstn.heard().concat();
    let (desk_got, pstn_got) = (
        seconds_of(&desk_heard, PSTN_HZ),
        seconds_of(&pstn_heard, DESK_HZ),
    );
    eprintln!(
        "{mode:?}: desk heard {desk_got} s of the caller, the caller {pstn_got} s of the desk"
    );
    assert!(
        desk_got >= 2.0,
        "{mode:?}: the desk phone heard the caller for {desk_got} s"
    );
    assert!(
        pstn_got >= 2.0,
        "{mode:?}: the caller heard the desk phone for {pstn_got} s"
    );
    assert!(world
        .carrier
        .log()
        .iter()
        .any(|l| l.contains(&format!("CARRIER INBOUND number={DID}"))));
    drop(world.system);
}

/// Flows 4 and 6: 10 digits, 11 digits, `+1...` and 911 reach the carrier as
/// `1NXXNXXXXXX` (911 as is) with the line's caller ID, after the edge answers the
/// carrier's digest challenge; the PSTN phone answers and hears the desk phone.
async fn outbound_calls_reach_the_carrier_with_the_lines_caller_id(mode: Mode) {
    let _turn = TURN.lock().await;
    let world = World::start(mode, true).await;
    let cases = [
        ("3105550123", "13105550123"),
        ("13105550124", "13105550124"),
        ("+13105550125", "13105550125"),
        ("911", "911"),
    ];
    for (i, (dialled, expected)) in cases.iter().enumerate() {
        world
            .desk
            .dial(&format!("sip:{dialled}@{}", world.system.sip))
            .await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        while world.carrier.outbound().len() <= i && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let seen = world.carrier.outbound();
        assert!(
            seen.len() > i,
            "{mode:?}: the carrier got {dialled}:\n{:#?}",
            world.carrier.log()
        );
        let call = &seen[i];
        assert_eq!(&call.number, expected, "{mode:?}: {call:?}");
        assert_eq!(call.auth_user, TRUNK_USER);
        assert!(
            call.from_user == DID || call.asserted.contains(DID),
            "{mode:?}: the line's caller ID: {call:?}"
        );
        // The PSTN phone answers; a moment of audio; the desk phone hangs up.
        assert!(
            world
                .pstn
                .wait_for_output("established", Duration::from_secs(10))
                .await,
            "{mode:?}: the PSTN answers {dialled}"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
        world.desk.hangup().await;
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    assert!(
        world.carrier.challenges() >= cases.len(),
        "every INVITE was challenged first"
    );
    // Each hang-up reached the far end through the carrier (the edge's BYE follows the
    // route set Kamailio recorded).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while world.pstn.output().matches(" terminated (duration").count() < cases.len()
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        world.pstn.output().matches(" terminated (duration").count(),
        cases.len(),
        "{mode:?}: every call ended at the PSTN phone:\n{}",
        world.pstn.output()
    );
    let pstn_heard = world.pstn.heard();
    assert_eq!(
        pstn_heard.len(),
        cases.len(),
        "{mode:?}: one recording per call"
    );
    for (call, audio) in pstn_heard.iter().enumerate() {
        let got = seconds_of(audio, DESK_HZ);
        assert!(
            got >= 1.0,
            "{mode:?}: call {call}: the PSTN heard the desk phone for {got} s"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flow1_inbound_answered_one_process() {
    inbound_call_is_answered_with_audio_both_ways(Mode::OneProcess).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flow1_inbound_answered_five_processes() {
    inbound_call_is_answered_with_audio_both_ways(Mode::FiveProcesses).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flows4_6_outbound_and_911_one_process() {
    outbound_calls_reach_the_carrier_with_the_lines_caller_id(Mode::OneProcess).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flows4_6_outbound_and_911_five_processes() {
    outbound_calls_reach_the_carrier_with_the_lines_caller_id(Mode::FiveProcesses).await;
}

/// Flows 2, 3 and 5: nobody answers in 20 s, so the caller gets the unavailable
/// greeting and leaves a message; the message is in S3, it is emailed with its
/// recording attached, and the desk phone's lamp lights. Then the desk phone dials `1`
/// (VoiceMailMain, no PIN: option `s`), plays the message with `1`, deletes it with `7`:
/// it is gone from S3 and the lamp goes off.
async fn voicemail_email_lamp_and_voicemailmain(mode: Mode) {
    let _turn = TURN.lock().await;
    let world = World::start_with_lamp(mode).await;
    world.pstn.dial(&world.did_uri()).await;
    // 20 s of ringing, then the voicemail answers.
    assert!(
        world
            .pstn
            .wait_for_output("established", Duration::from_secs(40))
            .await,
        "{mode:?}: the voicemail answers:\n{}",
        world.pstn.output()
    );
    // Each service's metrics count the call while it is up.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for (service, sample) in [
        ("sip-edge", "phone_sip_calls_active"),
        ("router", "phone_router_active_calls"),
        ("media-relay", "phone_media_sessions_active"),
        ("voicemail", "phone_voicemail_sessions_active"),
    ] {
        assert_eq!(
            world.system.metric(service, sample).await,
            Some(1.0),
            "{mode:?}: {service} counts the call in {sample}"
        );
    }
    // The greeting and the beep, then the caller's message.
    tokio::time::sleep(Duration::from_secs(13)).await;
    world.pstn.hangup().await;

    let inbox = format!("voicemail/default/{DID}/INBOX/");
    let mut keys = Vec::new();
    for _ in 0..100 {
        keys = world.system.keys(&inbox).await;
        if keys.iter().any(|k| k.ends_with(".json")) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let wav_key = keys
        .iter()
        .find(|k| k.ends_with(".wav"))
        .unwrap_or_else(|| panic!("{mode:?}: a message in S3: {keys:?}"))
        .clone();
    let recorded = phone_audio::wav::decode(&world.system.minio.get(&wav_key).await).unwrap();
    let got = seconds_of(&recorded, PSTN_HZ);
    assert!(
        got >= 2.0,
        "{mode:?}: the message holds the caller for {got} s"
    );
    // What the caller heard: the greeting (speech) before the beep.
    let caller_heard = world.pstn.heard().concat();
    assert!(
        caller_heard.len() > 8000 * 3,
        "{mode:?}: the caller heard the greeting"
    );

    // The email, with the recording attached.
    let mails = world
        .system
        .mailpit
        .wait_for(1, Duration::from_secs(15))
        .await;
    assert_eq!(mails.len(), 1, "{mode:?}: one email");
    let id = mails[0]["ID"].as_str().unwrap().to_owned();
    let mail = world.system.mailpit.message(&id).await;
    assert_eq!(mail["To"][0]["Address"], "email@domain.com");
    assert_eq!(
        mail["Subject"],
        format!("[PBX]: New message 1 in mailbox {DID}")
    );
    let attachment = &mail["Attachments"][0];
    assert_eq!(attachment["FileName"], "msg0000.WAV");
    let bytes = world
        .system
        .mailpit
        .part(&id, attachment["PartID"].as_str().unwrap())
        .await;
    let attached = phone_audio::wav::decode(&bytes).unwrap();
    let got = seconds_of(&attached, PSTN_HZ);
    assert!(
        got >= 2.0,
        "{mode:?}: the attachment holds the caller for {got} s"
    );

    assert_eq!(
        world
            .system
            .metric("mailer", "phone_mailer_sent_total")
            .await,
        Some(1.0),
        "{mode:?}: the mailer counts the email"
    );
    assert!(
        world
            .system
            .metric("sip-edge", "phone_sip_calls_total")
            .await
            >= Some(1.0),
        "{mode:?}: the edge counted the call"
    );

    // The lamp.
    assert!(
        world
            .desk
            .wait_for_output("Messages-Waiting: yes", Duration::from_secs(15))
            .await,
        "{mode:?}: the desk phone's lamp lights:\n{}",
        world.desk.output()
    );

    // VoiceMailMain from the desk phone. First: 1 plays the new message; hanging up
    // after hearing it saves it (it moves to Old), and the lamp goes off.
    let old = format!("voicemail/default/{DID}/Old/");
    world.listen_in_voicemailmain(mode).await;
    world.desk.hangup().await;
    wait_for_keys(&world, &old, 1).await;
    assert!(
        world.system.keys(&inbox).await.is_empty(),
        "{mode:?}: heard, the message left INBOX"
    );
    assert!(
        world
            .desk
            .wait_for_output("Messages-Waiting: no", Duration::from_secs(15))
            .await,
        "{mode:?}: the lamp goes off:\n{}",
        world.desk.output()
    );
    // Then: 1 plays the saved message, 7 deletes it.
    world.listen_in_voicemailmain(mode).await;
    world.desk.digits("7").await;
    wait_for_keys(&world, &old, 0).await;
    world.desk.hangup().await;
    assert!(
        world.system.keys(&old).await.is_empty(),
        "{mode:?}: 7 deleted the message from S3"
    );
}

/// Waits until `prefix` holds `n` envelopes.
async fn wait_for_keys(world: &World, prefix: &str, n: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let keys = world.system.keys(prefix).await;
        let envelopes = keys.iter().filter(|k| k.ends_with(".json")).count();
        if envelopes == n {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{prefix} holds {envelopes} messages, not {n}: {keys:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

impl World {
    /// The desk phone dials `1` (VoiceMailMain), presses `1`, and hears the envelope
    /// and then the message: the caller's tone.
    async fn listen_in_voicemailmain(&self, mode: Mode) {
        let calls_before = self.desk.heard().len();
        let established = self.desk.output().matches("established").count();
        self.desk.dial(&format!("sip:1@{}", self.system.sip)).await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        while self.desk.output().matches("established").count() <= established {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{mode:?}: VoiceMailMain answers:\n{}",
                self.desk.output()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        self.desk.digits("1").await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let mut got = 0.0;
        while got < 1.0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let heard = self.desk.heard();
            got = seconds_of(&heard[calls_before.min(heard.len())..].concat(), PSTN_HZ);
        }
        assert!(
            got >= 1.0,
            "{mode:?}: the desk phone hears the message ({got} s)"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flows2_3_5_voicemail_email_lamp_one_process() {
    voicemail_email_lamp_and_voicemailmain(Mode::OneProcess).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flows2_3_5_voicemail_email_lamp_five_processes() {
    voicemail_email_lamp_and_voicemailmain(Mode::FiveProcesses).await;
}

/// The README's run command: `phone` with nothing but its data folder (the shipped
/// example, no carrier, no S3, no SMTP). It prints how to register; a softphone that
/// does so registers, and dialling `1` reaches the voicemail, whose prompts it hears.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_default_registers_a_softphone_that_reaches_voicemail() {
    use std::io::BufRead;
    let _turn = TURN.lock().await;
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut phone = std::process::Command::new(phone_tests::system::binary("phone"))
        .arg("--data-dir")
        .arg(data.path())
        .args(["--sip-bind", &format!("127.0.0.1:{port}")])
        .args(["--rtp-ports", "26200-26299", "--advertise-ip", "127.0.0.1"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = phone.stdout.take().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut printed = Vec::new();
    while !printed
        .iter()
        .any(|l: &String| l.starts_with("voicemail email:"))
    {
        match tokio::time::timeout(Duration::from_secs(60), rx.recv()).await {
            Ok(Some(line)) => printed.push(line),
            _ => panic!("phone printed {printed:#?}"),
        }
    }
    let text = printed.join("\n");
    assert!(
        text.contains(&format!(
            "register a softphone: server 127.0.0.1:{port} (UDP or TCP), user {DID}"
        )),
        "{text}"
    );
    assert!(
        text.contains("it can dial (context localexts): 911, 1,"),
        "{text}"
    );
    assert!(
        text.contains("voicemail email: written as .eml files to"),
        "{text}"
    );

    let softphone = Phone::start(PhoneConfig {
        aor: format!("{DID}@127.0.0.1:{port}"),
        password: "password",
        auto_answer: false,
        mwi: false,
        voice: tone(DESK_HZ),
    });
    assert!(
        softphone
            .wait_for_output("200 OK", Duration::from_secs(20))
            .await,
        "the softphone registers:\n{}",
        softphone.output()
    );
    softphone.dial(&format!("sip:1@127.0.0.1:{port}")).await;
    assert!(
        softphone
            .wait_for_output("established", Duration::from_secs(15))
            .await,
        "dialling 1 reaches the voicemail:\n{}",
        softphone.output()
    );
    // The voicemail speaks: its prompts reach the softphone.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let mut loud = 0;
    while loud < 8000 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
        loud = softphone
            .heard()
            .concat()
            .iter()
            .filter(|s| s.unsigned_abs() > 500)
            .count();
    }
    assert!(loud >= 8000, "the softphone hears the voicemail's prompts");
    softphone.hangup().await;
    let _ = phone.kill();
    let _ = phone.wait();
}
