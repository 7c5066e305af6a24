//! The seed's extensions.conf, unchanged, through every path of the seed, with no
//! network: the test plays the edge and the voicemail service.

mod harness;

use harness::{channel, seed_dialplan, Harness};
use router::apps::DialTarget;
use router::call::{Command, DialStatus, Event, VmStatus, VoicemailMode};

const LINE: &str = "13235550100";

fn inbound(exten: &str) -> Harness {
    Harness::start(
        seed_dialplan(),
        channel("flowroute", "inbound", exten, "13105550199"),
    )
}

fn from_phone(exten: &str) -> Harness {
    Harness::start(seed_dialplan(), channel(LINE, "localexts", exten, LINE))
}

/// The Dial command's targets, timeout and caller ID number.
fn dial(h: &Harness) -> (Vec<DialTarget>, Option<u32>, String) {
    match &h.last_command().1 {
        Command::Dial {
            spec,
            caller_number,
            ..
        } => (
            spec.targets.clone(),
            spec.timeout_secs,
            caller_number.clone(),
        ),
        other => panic!("expected Dial, got {other:?}; steps {:?}", h.steps),
    }
}

fn target(peer: &str, number: Option<&str>) -> DialTarget {
    DialTarget {
        peer: peer.into(),
        number: number.map(Into::into),
    }
}

fn answer_dial(h: &mut Harness, status: DialStatus) {
    let id = h.last_command().0;
    h.event(Event::DialResult {
        id,
        status,
        answered_secs: 42,
    });
}

#[test]
fn inbound_call_rings_the_phone_for_20_seconds_and_is_answered() {
    let mut h = inbound(LINE);
    assert_eq!(h.steps, ["NoOp()", "Dial(SIP/13235550100,20)"]);
    let (targets, timeout, caller) = dial(&h);
    assert_eq!(targets, [target(LINE, None)]);
    assert_eq!(timeout, Some(20));
    assert_eq!(caller, "13105550199", "the caller's number is passed on");
    answer_dial(&mut h, DialStatus::Answer);
    // The phone hung up after talking: Dial ends the call.
    assert_eq!(h.last_command().1, Command::Hangup { cause: 16 });
    assert!(h.call.is_finished());
    assert_eq!(h.var("DIALSTATUS"), "ANSWER");
    assert_eq!(h.var("ANSWEREDTIME"), "42");
    assert!(h.voicemail.is_empty());
}

fn leave_voicemail(mut h: Harness, dialstatus: DialStatus) {
    answer_dial(&mut h, dialstatus);
    assert_eq!(h.var("DIALSTATUS"), dialstatus.as_str());
    assert_eq!(h.steps.last().unwrap(), "VoiceMail(13235550100@default,u)");
    let (id, request) = h
        .voicemail
        .last()
        .expect("a voicemail session is asked for")
        .clone();
    assert_eq!(request.mode, VoicemailMode::Leave);
    assert_eq!(
        (request.mailbox.as_str(), request.context.as_str()),
        (LINE, "default")
    );
    assert_eq!(request.options, "u", "the unavailable greeting");
    assert_eq!(request.caller_number, "13105550199");
    assert_eq!(request.channel, "SIP/flowroute-0000002a");
    h.event(Event::VoicemailStarted {
        id,
        session_id: "vm-1".into(),
        rtp_ip: "127.0.0.1".into(),
        rtp_port: 30000,
    });
    assert_eq!(
        h.last_command().1,
        Command::ConnectVoicemail {
            session_id: "vm-1".into(),
            rtp_ip: "127.0.0.1".into(),
            rtp_port: 30000
        }
    );
    h.complete();
    assert!(!h.call.is_finished(), "waits for the message to be left");
    h.event(Event::VoicemailFinished {
        session_id: "vm-1".into(),
        status: VmStatus::Success,
        exit_extension: None,
    });
    assert_eq!(h.var("VMSTATUS"), "SUCCESS");
    // The dialplan ends after VoiceMail: autofallthrough hangs up.
    assert_eq!(h.last_command().1, Command::Hangup { cause: 16 });
    assert!(h.call.is_finished());
}

#[test]
fn inbound_call_unanswered_after_20_seconds_goes_to_voicemail_unavailable() {
    leave_voicemail(inbound(LINE), DialStatus::NoAnswer);
}

#[test]
fn inbound_call_to_an_unavailable_line_goes_to_voicemail() {
    leave_voicemail(inbound(LINE), DialStatus::ChanUnavail);
}

#[test]
fn inbound_caller_hanging_up_during_voicemail_stops_the_session() {
    let mut h = inbound(LINE);
    answer_dial(&mut h, DialStatus::NoAnswer);
    let id = h.voicemail[0].0;
    h.event(Event::VoicemailStarted {
        id,
        session_id: "vm-2".into(),
        rtp_ip: "127.0.0.1".into(),
        rtp_port: 30002,
    });
    h.complete();
    h.event(Event::HangUp { cause: 16 });
    assert_eq!(h.stopped, ["vm-2"]);
    assert!(h.call.is_finished());
}

#[test]
fn voicemail_service_failure_sets_vmstatus_failed() {
    let mut h = inbound(LINE);
    answer_dial(&mut h, DialStatus::NoAnswer);
    let id = h.voicemail[0].0;
    h.event(Event::VoicemailFailed {
        id,
        error: "UNAVAILABLE".into(),
    });
    assert_eq!(h.var("VMSTATUS"), "FAILED");
    assert!(h.call.is_finished());
}

fn outbound(exten: &str, expected_number: &str) {
    let mut h = from_phone(exten);
    let (targets, timeout, caller) = dial(&h);
    assert_eq!(
        targets,
        [target("flowroute", Some(expected_number))],
        "steps: {:?}",
        h.steps
    );
    assert_eq!(timeout, None);
    assert_eq!(caller, LINE, "CALLERID(num) is set to the line");
    assert_eq!(h.var("LINE"), LINE);
    answer_dial(&mut h, DialStatus::Answer);
    assert!(h.call.is_finished());
}

#[test]
fn outbound_10_digits_gets_the_1() {
    outbound("3105550199", "13105550199");
    let h = from_phone("3105550199");
    assert_eq!(h.steps[0], "Goto(13105550199,1)");
}

#[test]
fn outbound_11_digits() {
    outbound("13105550199", "13105550199");
    let h = from_phone("13105550199");
    assert_eq!(
        h.steps,
        [
            "NoOp()",
            "Set(LINE=13235550100)",
            "GotoIf(0?voicemail:outbound)",
            "Set(CALLERID(num)=13235550100)",
            "Dial(SIP/13105550199@flowroute)"
        ]
    );
}

#[test]
fn outbound_plus_1_loses_the_plus() {
    outbound("+13105550199", "13105550199");
    assert_eq!(from_phone("+13105550199").steps[0], "Goto(13105550199,1)");
}

#[test]
fn outbound_busy_hangs_up_with_busy() {
    let mut h = from_phone("13105550199");
    answer_dial(&mut h, DialStatus::Busy);
    assert_eq!(h.steps.last().unwrap(), "Hangup()");
    assert_eq!(h.last_command().1, Command::Hangup { cause: 16 });
    assert_eq!(h.var("DIALSTATUS"), "BUSY");
}

fn voicemail_main(exten: &str) {
    let h = from_phone(exten);
    let (_, request) = h
        .voicemail
        .last()
        .unwrap_or_else(|| panic!("no voicemail for {exten}: {:?}", h.steps));
    assert_eq!(request.mode, VoicemailMode::Main);
    assert_eq!(
        (request.mailbox.as_str(), request.context.as_str()),
        (LINE, "default")
    );
    assert_eq!(request.options, "s", "no PIN asked");
    assert!(h.commands.is_empty(), "no Dial: {:?}", h.commands);
}

#[test]
fn own_number_goes_to_voicemail_main() {
    voicemail_main(LINE);
    let h = from_phone(LINE);
    assert_eq!(h.steps[2], "GotoIf(1?voicemail:outbound)");
}

#[test]
fn one_goes_to_voicemail_main() {
    voicemail_main("1");
    assert_eq!(from_phone("1").steps[0], "Goto(13235550100,1)");
}

#[test]
fn voicemail_main_ends_with_hangup_when_the_user_leaves() {
    let mut h = from_phone("1");
    let id = h.voicemail[0].0;
    h.event(Event::VoicemailStarted {
        id,
        session_id: "vm-3".into(),
        rtp_ip: "127.0.0.1".into(),
        rtp_port: 30004,
    });
    h.complete();
    h.event(Event::VoicemailFinished {
        session_id: "vm-3".into(),
        status: VmStatus::Success,
        exit_extension: None,
    });
    assert_eq!(h.steps.last().unwrap(), "Hangup()");
    assert!(h.call.is_finished());
    assert_eq!(h.var("VMSTATUS"), "", "VoiceMailMain does not set VMSTATUS");
}

#[test]
fn emergency_911_goes_to_the_carrier_with_the_line_as_caller_id() {
    let h = from_phone("911");
    assert_eq!(
        h.steps,
        [
            "NoOp()",
            "Set(CALLERID(num)=13235550100)",
            "Dial(SIP/911@flowroute)"
        ]
    );
    let (targets, _, caller) = dial(&h);
    assert_eq!(targets, [target("flowroute", Some("911"))]);
    assert_eq!(caller, LINE);
}

#[test]
fn numbers_no_pattern_matches_are_refused_as_unallocated() {
    for exten in ["12", "0", "123456789012", "*99", "", "+"] {
        let h = from_phone(exten);
        assert_eq!(h.commands, [(1, Command::Hangup { cause: 1 })], "{exten:?}");
        assert!(h.call.is_finished());
    }
    // The carrier sending a number that is not ours (no 1NXXNXXXXXX).
    let h = inbound("5551234");
    assert_eq!(h.commands, [(1, Command::Hangup { cause: 1 })]);
}

#[test]
fn a_hostile_dialled_number_cannot_add_a_dial_target() {
    // `_+X!` takes anything after +1: the rest must not become targets or options.
    for exten in [
        "+1500&SIP/flowroute/01144207946000",
        "+15,1,rM(evil)",
        "+1${SHELL(id)}",
    ] {
        let h = from_phone(exten);
        for (_, command) in &h.commands {
            if let Command::Dial { spec, .. } = command {
                panic!("{exten}: dialled {spec:?}");
            }
        }
        assert!(h.call.is_finished(), "{exten}");
    }
}
