//! The dialplan language beyond the seed: lookup order, includes, caller-ID matching,
//! special extensions, Gosub, the signalling applications, what cannot run, and
//! injection through the caller's data. No network; simulated time.

mod harness;

use std::time::Duration;

use harness::{channel, dialplan, Harness};
use router::call::{Command, DialStatus, Event, Indication};

fn run(plan: &str, context: &str, exten: &str, caller: &str) -> Harness {
    Harness::start(dialplan(plan), channel("phone", context, exten, caller))
}

fn first_noop(h: &Harness) -> String {
    h.steps
        .iter()
        .find_map(|s| {
            s.strip_prefix("NoOp(")
                .map(|a| a.trim_end_matches(')').to_owned())
        })
        .unwrap_or_default()
}

fn last_noop(h: &Harness) -> String {
    h.steps
        .iter()
        .rev()
        .find_map(|s| {
            s.strip_prefix("NoOp(")
                .map(|a| a.trim_end_matches(')').to_owned())
        })
        .unwrap_or_default()
}

#[test]
fn exact_before_patterns_and_patterns_by_specificity() {
    let plan = "[c]\n\
        exten => _X.,1,NoOp(any)\n\
        exten => _1NXXNXXXXXX,1,NoOp(nanp)\n\
        exten => _1323NXXXXXX,1,NoOp(la)\n\
        exten => 13235550100,1,NoOp(exact)\n\
        exten => _!,1,NoOp(bang)\n";
    assert_eq!(first_noop(&run(plan, "c", "13235550100", "")), "exact");
    assert_eq!(first_noop(&run(plan, "c", "13235550101", "")), "la");
    assert_eq!(first_noop(&run(plan, "c", "13105550101", "")), "nanp");
    assert_eq!(first_noop(&run(plan, "c", "999", "")), "any");
    assert_eq!(
        first_noop(&run(plan, "c", "*", "")),
        "bang",
        "X needs a digit"
    );
    // As in Asterisk, `_!` also matches `h`: it runs when the call ends.
    assert_eq!(last_noop(&run(plan, "c", "999", "")), "bang");
}

#[test]
fn includes_are_searched_in_order_after_own_extensions() {
    let plan = "[main]\ninclude => first\ninclude => second\nexten => _9X.,1,NoOp(main)\n\
        [first]\nexten => _1X.,1,NoOp(first)\n\
        [second]\nexten => _1X.,1,NoOp(second)\nexten => 500,1,NoOp(second-500)\ninclude => main\n";
    assert_eq!(last_noop(&run(plan, "main", "9123", "")), "main");
    let h = run(plan, "main", "1123", "");
    assert_eq!(last_noop(&h), "first");
    assert_eq!(
        h.var("CONTEXT"),
        "main",
        "CONTEXT stays the channel's context"
    );
    assert_eq!(last_noop(&run(plan, "main", "500", "")), "second-500");
    // A loop of includes ends: the number is unallocated.
    assert_eq!(
        run(plan, "main", "777", "").commands[0].1,
        Command::Hangup { cause: 1 }
    );
}

#[test]
fn caller_id_matching() {
    let plan = "[c]\nexten => 100,1,NoOp(anyone)\nexten => 100/_310NXXXXXX,1,NoOp(from 310)\nexten => 100/5551234,1,NoOp(boss)\n";
    assert_eq!(last_noop(&run(plan, "c", "100", "5551234")), "boss");
    assert_eq!(last_noop(&run(plan, "c", "100", "3105550199")), "from 310");
    assert_eq!(last_noop(&run(plan, "c", "100", "2125550199")), "anyone");
}

#[test]
fn globals_variables_and_builtins() {
    let plan = "[globals]\nTRUNK=flowroute\n[c]\n\
        exten => _X.,1,Set(A=${TRUNK}-${EXTEN:-2}-${LEN(${EXTEN})})\n\
        same => n,Set(WHICH=A)\n\
        same => n,NoOp(${${WHICH}} ${CONTEXT} ${PRIORITY} ${CHANNEL} ${UNIQUEID} ${EPOCH} ${CALLERID(all)})\n";
    let h = run(plan, "c", "12345", "5551234");
    assert_eq!(h.var("A"), "flowroute-45-5");
    assert_eq!(
        last_noop(&h),
        "flowroute-45-5 c 3 SIP/phone-0000002a 1700000000.42 1700000000 \"\" <5551234>"
    );
}

#[test]
fn goto_labels_gotoif_and_expressions() {
    let plan = "[c]\nexten => s,1,Set(N=3)\n\
        same => n(loop),Set(N=$[${N} - 1])\n\
        same => n,GotoIf($[${N} > 0]?loop)\n\
        same => n,GotoIf($[${N} = 0 & \"a b\" = \"a b\"]?done,1:bad,1)\n\
        exten => done,1,NoOp(done ${N})\n\
        exten => bad,1,NoOp(bad)\n";
    assert_eq!(last_noop(&run(plan, "c", "s", "")), "done 0");
}

#[test]
fn gosub_and_return_with_arguments() {
    let plan = "[c]\nexten => s,1,Gosub(sub,s,1(alpha,beta))\n\
        same => n,NoOp(back ${GOSUB_RETVAL} [${ARG1}])\n\
        [sub]\nexten => s,1,Set(X=${ARG1}+${ARG2})\nsame => n,Return(${X})\n";
    let h = run(plan, "c", "s", "");
    assert_eq!(
        last_noop(&h),
        "back alpha+beta []",
        "arguments are local to the Gosub"
    );
}

#[test]
fn h_runs_when_the_caller_hangs_up() {
    let plan = "[c]\nexten => s,1,Dial(SIP/desk,30)\nexten => h,1,NoOp(bye ${DIALSTATUS} ${HANGUPCAUSE})\nsame => n,Dial(SIP/other)\n";
    let mut h = run(plan, "c", "s", "");
    h.event(Event::HangUp { cause: 16 });
    assert!(
        h.steps.contains(&"NoOp(bye CANCEL 16)".to_owned()),
        "{:?}",
        h.steps
    );
    // Dial cannot run after the caller is gone: h ends there, nothing is dialled again.
    assert_eq!(h.commands.len(), 1);
    assert!(h.call.is_finished());
}

#[test]
fn i_catches_jumps_to_missing_extensions() {
    let plan = "[c]\nexten => s,1,Goto(nowhere,1)\nexten => i,1,NoOp(invalid ${INVALID_EXTEN})\n";
    assert_eq!(last_noop(&run(plan, "c", "s", "")), "invalid nowhere");
    // Without `i`, the call is hung up.
    let h = run("[c]\nexten => s,1,Goto(nowhere,1)\n", "c", "s", "");
    assert_eq!(h.last_command().1, Command::Hangup { cause: 1 });
}

#[test]
fn t_after_waitexten_without_digits_and_digits_otherwise() {
    let plan = "[c]\nexten => s,1,Answer()\nsame => n,WaitExten(7)\n\
        exten => t,1,NoOp(timeout)\nexten => 42,1,NoOp(dialled 42)\nexten => i,1,NoOp(invalid)\n";
    let mut h = run(plan, "c", "s", "");
    h.complete();
    assert_eq!(h.advance_to_timeout(), Duration::from_secs(7));
    assert_eq!(last_noop(&h), "timeout");

    let mut h = run(plan, "c", "s", "");
    h.complete();
    h.event(Event::Dtmf('4'));
    h.event(Event::Dtmf('2'));
    h.event(Event::Dtmf('#'));
    assert_eq!(last_noop(&h), "dialled 42");

    let mut h = run(plan, "c", "s", "");
    h.complete();
    h.event(Event::Dtmf('9'));
    assert_eq!(
        h.advance_to_timeout(),
        Duration::from_secs(5),
        "the digit timeout"
    );
    assert_eq!(last_noop(&h), "invalid");
}

#[test]
fn t_capital_on_absolute_timeout() {
    let plan = "[c]\nexten => s,1,Set(TIMEOUT(absolute)=60)\nsame => n,Wait(3600)\n\
        exten => T,1,NoOp(too long)\n";
    let mut h = run(plan, "c", "s", "");
    assert_eq!(h.advance_to_timeout(), Duration::from_secs(60));
    assert_eq!(last_noop(&h), "too long");
}

#[test]
fn wait_busy_congestion_and_indications() {
    let mut h = run(
        "[c]\nexten => s,1,Wait(2.5)\nsame => n,NoOp(waited)\n",
        "c",
        "s",
        "",
    );
    assert_eq!(h.advance_to_timeout(), Duration::from_millis(2500));
    assert_eq!(last_noop(&h), "waited");

    let mut h = run(
        "[c]\nexten => s,1,Progress()\nsame => n,Ringing()\nsame => n,Busy(5)\n",
        "c",
        "s",
        "",
    );
    assert_eq!(h.last_command().1, Command::Indicate(Indication::Progress));
    h.complete();
    assert_eq!(h.last_command().1, Command::Indicate(Indication::Ringing));
    h.complete();
    assert_eq!(h.last_command().1, Command::Indicate(Indication::Busy));
    h.complete();
    assert_eq!(h.advance_to_timeout(), Duration::from_secs(5));
    assert_eq!(h.last_command().1, Command::Hangup { cause: 17 });

    let mut h = run("[c]\nexten => s,1,Congestion()\n", "c", "s", "");
    h.complete();
    assert!(
        h.call.poll_timeout().is_none(),
        "no timeout: waits for the caller to hang up"
    );
    h.event(Event::HangUp { cause: 16 });
    assert!(h.call.is_finished());
}

#[test]
fn playback_answers_first_and_hangup_takes_causes() {
    let mut h = run(
        "[c]\nexten => s,1,Playback(hello&digits/1)\nsame => n,Hangup(USER_BUSY)\n",
        "c",
        "s",
        "",
    );
    assert_eq!(h.last_command().1, Command::Answer);
    h.complete();
    assert_eq!(
        h.last_command().1,
        Command::Playback {
            files: vec!["hello".into(), "digits/1".into()],
            noanswer: false
        }
    );
    h.complete();
    assert_eq!(h.var("PLAYBACKSTATUS"), "SUCCESS");
    assert_eq!(h.last_command().1, Command::Hangup { cause: 17 });
}

#[test]
fn dial_with_several_targets_options_and_g() {
    let plan = "[c]\nexten => s,1,Dial(SIP/desk&SIP/13105550199@flowroute,15,rtTg)\nsame => n,NoOp(after ${DIALSTATUS})\n";
    let mut h = run(plan, "c", "s", "");
    let Command::Dial { spec, .. } = &h.last_command().1 else {
        panic!()
    };
    assert_eq!(spec.targets.len(), 2);
    assert!(spec.ringback && spec.callee_transfer && spec.caller_transfer);
    let id = h.last_command().0;
    h.event(Event::DialResult {
        id,
        status: DialStatus::Answer,
        answered_secs: 5,
    });
    assert_eq!(
        last_noop(&h),
        "after ANSWER",
        "`g` goes on after the callee hangs up"
    );
}

#[test]
fn log_and_verbose_are_logged() {
    let h = run(
        "[c]\nexten => s,1,Log(WARNING,caller ${CALLERID(num)})\nsame => n,Verbose(2,hello)\n",
        "c",
        "s",
        "555",
    );
    assert!(h.logs.contains(&"caller 555".to_owned()), "{:?}", h.logs);
    assert!(h.logs.contains(&"hello".to_owned()));
}

#[test]
fn an_unsupported_application_hangs_up_cleanly_with_a_clear_line() {
    let h = run(
        "[c]\nexten => s,1,NoOp(start)\nsame => n,MusicOnHold(default)\nsame => n,NoOp(never)\n",
        "c",
        "s",
        "",
    );
    assert_eq!(h.last_command().1, Command::Hangup { cause: 16 });
    assert!(h.call.is_finished());
    assert!(
        h.logs.iter().any(|l| l == "extensions.conf:3: application MusicOnHold() is not supported by this router; hanging up"),
        "{:?}",
        h.logs
    );
    assert!(!h.steps.iter().any(|s| s.contains("never")));
}

#[test]
fn a_dialplan_loop_is_stopped() {
    let h = run("[c]\nexten => s,1,Goto(s,1)\n", "c", "s", "");
    assert!(h.call.is_finished());
    assert!(h.logs.iter().any(|l| l.contains("dialplan loop")));
}

#[test]
fn caller_id_with_references_and_ampersands_stays_text() {
    let plan = "[c]\nexten => _X.,1,Set(WHO=${CALLERID(num)})\n\
        same => n,Set(ALSO=${CALLERID(name)})\n\
        same => n,Dial(SIP/${WHO}@flowroute&SIP/desk)\n";
    let mut info = channel("phone", "c", "100", "${SHELL(id)}");
    info.caller_name = "x&SIP/flowroute/011".into();
    let h = Harness::start(dialplan(plan), info);
    assert_eq!(h.var("WHO"), "${SHELL(id)}", "not evaluated");
    assert_eq!(h.var("ALSO"), "x&SIP/flowroute/011");
    let Command::Dial {
        spec, caller_name, ..
    } = &h.last_command().1
    else {
        panic!("{:?}", h.commands)
    };
    // The hostile number is refused as a target; the dialplan's own target stands.
    assert_eq!(spec.targets.len(), 1);
    assert_eq!(spec.targets[0].peer, "desk");
    assert_eq!(caller_name, "x&SIP/flowroute/011");
}

#[test]
fn a_dialled_number_with_ampersand_cannot_add_a_target() {
    let plan = "[c]\nexten => _X.,1,Dial(SIP/${EXTEN})\n";
    let h = run(plan, "c", "500&SIP/flowroute/01144207946000", "");
    match &h.last_command().1 {
        Command::Dial { spec, .. } => panic!("dialled {spec:?}"),
        Command::Hangup { .. } => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(h.var("DIALSTATUS"), "CHANUNAVAIL");
    // Nor can it inject into an expression or a Set.
    let plan = "[c]\nexten => _X.,1,GotoIf($[${EXTEN} = 13235550100]?yes)\nsame => n,NoOp(no)\nsame => n(yes),NoOp(yes)\n\
        exten => _X.,n,Set(${EXTEN}=1)\n";
    let h = run(plan, "c", "1 | 1", "");
    assert!(h.steps.iter().any(|s| s == "NoOp(no)"), "{:?}", h.steps);
    assert!(
        h.logs
            .iter()
            .any(|l| l.contains("comes from the caller; refused")),
        "{:?}",
        h.logs
    );
    assert_eq!(h.var("1 | 1"), "");
}

/// app_while: While() tests its condition each time round, EndWhile() goes back to it,
/// ContinueWhile() too, ExitWhile() leaves for the priority after the EndWhile; loops
/// nest by priority order, and a Goto out of a loop leaves it.
#[test]
fn while_loops_nest_continue_and_exit() {
    let plan = "[c]\nexten => s,1,Set(I=0)\n\
        same => n,Set(SEEN=)\n\
        same => n,While($[${I} < 4])\n\
        same => n,Set(I=$[${I} + 1])\n\
        same => n,GotoIf($[${I} = 2]?skip)\n\
        same => n,Set(J=0)\n\
        same => n,While($[${J} < 2])\n\
        same => n,Set(J=$[${J} + 1])\n\
        same => n,Set(SEEN=${SEEN}${I}.${J} )\n\
        same => n,EndWhile()\n\
        same => n(skip),GotoIf($[${I} = 3]?out)\n\
        same => n,EndWhile()\n\
        same => n(out),NoOp(seen ${SEEN}I=${I})\n";
    let h = run(plan, "c", "s", "");
    assert_eq!(last_noop(&h), "seen 1.1 1.2 3.1 3.2 I=3", "{:?}", h.steps);

    let plan = "[c]\nexten => s,1,Set(I=0)\n\
        same => n,While(1)\n\
        same => n,Set(I=$[${I} + 1])\n\
        same => n,GotoIf($[${I} < 3]?again)\n\
        same => n,ExitWhile()\n\
        same => n(again),ContinueWhile()\n\
        same => n,EndWhile()\n\
        same => n,NoOp(out at ${I})\n";
    let h = run(plan, "c", "s", "");
    assert_eq!(last_noop(&h), "out at 3", "{:?}", h.steps);
}

/// A While() whose condition is false at once skips to after its EndWhile; one with
/// no EndWhile is a broken dialplan: logged, and the call is hung up.
#[test]
fn while_without_a_way_out() {
    let plan = "[c]\nexten => s,1,While(0)\nsame => n,NoOp(inside)\nsame => n,EndWhile()\nsame => n,NoOp(after)\n";
    let h = run(plan, "c", "s", "");
    assert_eq!(first_noop(&h), "after");
    let plan = "[c]\nexten => s,1,While(0)\nsame => n,NoOp(inside)\n";
    let h = run(plan, "c", "s", "");
    assert!(
        h.steps.iter().all(|s| !s.starts_with("NoOp")),
        "{:?}",
        h.steps
    );
}
