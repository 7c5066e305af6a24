//! The edge's endpoint in simulated time: a carrier calls the DID, the desk phone
//! answers or not, and every timer runs at its deadline without a sleep. Each
//! scenario ends with the endpoint holding nothing (no transaction, dialog or call
//! left behind).

mod support;

use std::time::Duration;

use sip_core::endpoint::{CallEvent, Held};
use sip_core::fork::DialStatus;
use support::{phone_bye, respond, sdp, CarrierCall, Msg, Sim, PHONE};

fn answer_sdp() -> String {
    sdp(PHONE.ip(), 20_000, "sendrecv")
}

/// The carrier's INVITE reaches the phone; returns the phone's copy.
fn ring(sim: &mut Sim, call: &CarrierCall) -> Msg {
    sim.carrier_sends(&call.invite());
    assert_eq!(sim.carrier_gets().status(), Some(100));
    let invite = sim.phone_gets_request("INVITE");
    assert!(invite.body().contains("c=IN IP4 10.0.0.5"), "{}", invite.0);
    invite
}

/// A call answered by the phone and ACKed by the carrier: (carrier's side, the
/// phone's INVITE).
fn answered_call(sim: &mut Sim) -> (CarrierCall, Msg) {
    let mut call = CarrierCall::new(1);
    let invite = ring(sim, &call);
    sim.phone_sends(&respond(&invite, 180, "p1", None));
    assert_eq!(sim.carrier_gets().status(), Some(180));
    sim.phone_sends(&respond(&invite, 200, "p1", Some(&answer_sdp())));
    let ack = sim.phone_gets_request("ACK");
    assert!(ack.header("To").contains("tag=p1"));
    let ok = sim.carrier_gets_status(200);
    assert!(ok.body().contains("c=IN IP4 10.0.0.5"), "{}", ok.0);
    call.answered(&ok);
    sim.carrier_sends(&call.ack(&ok));
    (call, invite)
}

fn assert_idle(sim: &mut Sim) {
    sim.settle(Duration::from_secs(300));
    assert_eq!(sim.held(), Held::default(), "after {:?}", sim.elapsed());
    assert!(sim
        .tasks
        .started
        .iter()
        .all(|id| sim.tasks.gone.contains(id)));
}

#[test]
fn a_call_answered_then_hung_up_by_the_caller() {
    let mut sim = Sim::new();
    let (mut call, _) = answered_call(&mut sim);
    let id = sim.tasks.started[0];
    assert!(matches!(
        sim.tasks.events[&id][..],
        [CallEvent::Bridged { .. }]
    ));
    sim.advance(Duration::from_secs(60));
    // The 200 is not sent again once ACKed.
    assert!(sim.to_carrier.is_empty(), "{:?}", sim.to_carrier);
    let bye = call.in_dialog("BYE", None);
    sim.carrier_sends(&bye);
    assert_eq!(sim.carrier_gets().status(), Some(200));
    let to_phone = sim.phone_gets_request("BYE");
    assert!(to_phone.header("To").contains("tag=p1"));
    sim.phone_sends(&respond(&to_phone, 200, "p1", None));
    // A retransmitted BYE gets the same 200 and nothing else.
    sim.carrier_sends(&bye);
    assert_eq!(sim.carrier_gets().status(), Some(200));
    assert!(sim.to_phone.is_empty());
    assert!(matches!(
        sim.tasks.events[&id][..],
        [
            CallEvent::Bridged { .. },
            CallEvent::CallerGone {
                cause: 16,
                status: Some(200)
            }
        ]
    ));
    assert_idle(&mut sim);
}

#[test]
fn the_phone_hangs_up_first() {
    let mut sim = Sim::new();
    let (_, invite) = answered_call(&mut sim);
    sim.advance(Duration::from_secs(5));
    sim.phone_sends(&phone_bye(&invite, "p1"));
    assert_eq!(sim.phone_gets().status(), Some(200));
    let id = sim.tasks.started[0];
    let ended = sim.tasks.events[&id].last().cloned();
    assert!(
        matches!(ended, Some(CallEvent::BridgeEnded { secs: 5, .. })),
        "{ended:?}"
    );
    // The task hangs up: the caller gets a BYE.
    let bye = sim.carrier_gets();
    assert_eq!(bye.method(), Some("BYE"));
    sim.carrier_sends(&respond(&bye, 200, "x", None));
    assert_idle(&mut sim);
}

#[test]
fn timer_b_on_the_b_leg_ends_the_dial_with_408() {
    let mut sim = Sim::new();
    sim.dial_timeout = Duration::from_secs(120);
    let call = CarrierCall::new(1);
    ring(&mut sim, &call);
    // The phone never answers: the INVITE goes again at 0.5, 1.5, 3.5, 7.5, 15.5 and
    // 31.5 s, then Timer B (64*T1) fails the branch.
    sim.advance(Duration::from_millis(31_900));
    assert_eq!(sim.to_phone.len(), 6);
    assert!(sim.to_phone.iter().all(|m| m.method() == Some("INVITE")));
    sim.to_phone.clear();
    sim.advance(Duration::from_millis(200));
    let id = sim.tasks.started[0];
    assert_eq!(
        sim.tasks.events[&id],
        vec![CallEvent::DialFinished {
            command_id: 1,
            status: DialStatus::Chanunavail,
            sip_status: 408,
        }]
    );
    // The task hung up: the caller hears 480, and ACKs it.
    let refused = sim.carrier_gets_status(480);
    sim.carrier_sends(&call.ack(&refused));
    assert_idle(&mut sim);
}

#[test]
fn the_20_s_dial_cancels_the_ringing_phone() {
    let mut sim = Sim::new();
    let call = CarrierCall::new(1);
    let invite = ring(&mut sim, &call);
    sim.phone_sends(&respond(&invite, 180, "p1", None));
    assert_eq!(sim.carrier_gets().status(), Some(180));
    sim.advance(Duration::from_millis(19_999));
    assert!(sim.to_phone.is_empty());
    sim.advance(Duration::from_millis(1));
    let cancel = sim.phone_gets_request("CANCEL");
    assert_eq!(cancel.call_id(), invite.call_id());
    assert_eq!(cancel.header("Via"), invite.header("Via"));
    sim.phone_sends(&respond(&cancel, 200, "p1", None));
    sim.phone_sends(&respond(&invite, 487, "p1", None));
    let ack = sim.phone_gets_request("ACK");
    assert_eq!(ack.header("Via"), invite.header("Via"));
    let id = sim.tasks.started[0];
    assert!(matches!(
        sim.tasks.events[&id][..],
        [CallEvent::DialFinished {
            status: DialStatus::Noanswer,
            ..
        }]
    ));
    let refused = sim.carrier_gets_status(480);
    sim.carrier_sends(&call.ack(&refused));
    assert_idle(&mut sim);
}

#[test]
fn a_caller_that_never_acks_the_200_is_hung_up_after_64_t1() {
    let mut sim = Sim::new();
    let call = CarrierCall::new(1);
    let invite = ring(&mut sim, &call);
    sim.phone_sends(&respond(&invite, 200, "p1", Some(&answer_sdp())));
    sim.phone_gets_request("ACK");
    let ok = sim.carrier_gets_status(200);
    // §13.3.1.4: the 200 again at 0.5, 1.5, 3.5, 7.5, then every 4 s.
    sim.advance(Duration::from_millis(7_600));
    let again: Vec<_> = sim.to_carrier.drain(..).collect();
    assert_eq!(again.len(), 4);
    assert!(again.iter().all(|m| *m == ok));
    sim.advance(Duration::from_millis(24_000));
    assert_eq!(sim.to_carrier.drain(..).count(), 6);
    assert!(sim.to_phone.is_empty());
    sim.advance(Duration::from_millis(500));
    let id = sim.tasks.started[0];
    assert!(
        sim.tasks.events[&id].contains(&CallEvent::CallerGone {
            cause: 41,
            status: Some(200)
        }),
        "{:?}",
        sim.tasks.events[&id]
    );
    // Both legs get a BYE.
    let bye = sim.carrier_gets();
    assert_eq!(bye.method(), Some("BYE"));
    assert_eq!(sim.phone_gets_request("BYE").call_id(), invite.call_id());
    assert_idle(&mut sim);
}

#[test]
fn a_cancel_that_loses_the_race_with_the_200() {
    let mut sim = Sim::new();
    let mut call = CarrierCall::new(1);
    let invite = ring(&mut sim, &call);
    // The phone's 200 arrives first: the caller is answered...
    sim.phone_sends(&respond(&invite, 200, "p1", Some(&answer_sdp())));
    sim.phone_gets_request("ACK");
    let ok = sim.carrier_gets_status(200);
    call.answered(&ok);
    // ...and its CANCEL, crossing the 200, gets a 200 of its own and ends nothing.
    sim.carrier_sends(&call.cancel());
    let answer = sim.carrier_gets();
    assert_eq!(
        (answer.status(), answer.cseq_method()),
        (Some(200), "CANCEL")
    );
    assert!(sim.to_phone.is_empty());
    sim.carrier_sends(&call.ack(&ok));
    sim.carrier_sends(&call.in_dialog("BYE", None));
    assert_eq!(sim.carrier_gets().status(), Some(200));
    let bye = sim.phone_gets_request("BYE");
    sim.phone_sends(&respond(&bye, 200, "p1", None));
    assert_idle(&mut sim);
}

#[test]
fn a_cancel_that_wins_the_race_with_the_200() {
    let mut sim = Sim::new();
    let call = CarrierCall::new(1);
    let invite = ring(&mut sim, &call);
    sim.phone_sends(&respond(&invite, 180, "p1", None));
    sim.carrier_sends(&call.cancel());
    let answers: Vec<_> = sim.to_carrier.drain(..).collect();
    assert!(answers
        .iter()
        .any(|m| m.status() == Some(200) && m.cseq_method() == "CANCEL"));
    let terminated = answers
        .iter()
        .find(|m| m.status() == Some(487))
        .cloned()
        .expect("487 to the INVITE");
    sim.carrier_sends(&call.ack(&terminated));
    let cancel = sim.phone_gets_request("CANCEL");
    // The phone's 200 to the INVITE crosses the CANCEL: the edge ACKs it and hangs
    // it up with a BYE, since the caller is gone.
    sim.phone_sends(&respond(&invite, 200, "p1", Some(&answer_sdp())));
    sim.phone_sends(&respond(&cancel, 200, "p1", None));
    let ack = sim.phone_gets_request("ACK");
    assert!(ack.header("To").contains("tag=p1"));
    let bye = sim.phone_gets_request("BYE");
    sim.phone_sends(&respond(&bye, 200, "p1", None));
    let id = sim.tasks.started[0];
    assert_eq!(
        sim.tasks.events[&id][0],
        CallEvent::CallerGone {
            cause: 16,
            status: Some(487)
        }
    );
    assert_idle(&mut sim);
}

#[test]
fn a_hold_re_invite_is_answered_from_the_relay() {
    let mut sim = Sim::new();
    let (mut call, _) = answered_call(&mut sim);
    let hold = call.in_dialog(
        "INVITE",
        Some(&sdp(support::CARRIER.ip(), 40_000, "sendonly")),
    );
    sim.carrier_sends(&hold);
    let answers: Vec<_> = sim.to_carrier.drain(..).collect();
    let ok = answers
        .iter()
        .find(|m| m.status() == Some(200))
        .expect("200 to the re-INVITE");
    assert!(ok.body().contains("a=recvonly"), "{}", ok.0);
    assert!(ok.body().contains("c=IN IP4 10.0.0.5"));
    sim.carrier_sends(&call.ack(ok));
    let id = sim.tasks.started[0];
    assert!(matches!(
        sim.tasks.events[&id].last(),
        Some(CallEvent::Reinvite { b_leg: false, .. })
    ));
    // Nothing went to the phone: the edge answers holds itself.
    assert!(sim.to_phone.is_empty());
    sim.carrier_sends(&call.in_dialog("BYE", None));
    assert_idle(&mut sim);
}

#[test]
fn retransmissions_of_every_kind_are_absorbed() {
    let mut sim = Sim::new();
    let mut call = CarrierCall::new(1);
    let invite = ring(&mut sim, &call);
    // The carrier's INVITE again: its 100 again, no second call.
    sim.carrier_sends(&call.invite());
    assert_eq!(sim.carrier_gets().status(), Some(100));
    assert_eq!(sim.tasks.started.len(), 1);
    assert!(sim.to_phone.is_empty());
    // The phone's 180 twice: passed on once per copy is fine, a second call is not.
    sim.phone_sends(&respond(&invite, 180, "p1", None));
    sim.phone_sends(&respond(&invite, 180, "p1", None));
    // The carrier's INVITE once more: now the 180 is what it gets again.
    sim.to_carrier.clear();
    sim.carrier_sends(&call.invite());
    assert_eq!(sim.carrier_gets().status(), Some(180));
    // The phone's 200 three times: each is ACKed, one call is bridged.
    for _ in 0..3 {
        sim.phone_sends(&respond(&invite, 200, "p1", Some(&answer_sdp())));
        assert_eq!(sim.phone_gets().method(), Some("ACK"));
    }
    let id = sim.tasks.started[0];
    let bridged = sim.tasks.events[&id]
        .iter()
        .filter(|e| matches!(e, CallEvent::Bridged { .. }))
        .count();
    assert_eq!(bridged, 1);
    let ok = sim.carrier_gets_status(200);
    call.answered(&ok);
    sim.carrier_sends(&call.ack(&ok));
    // A second ACK is absorbed.
    sim.carrier_sends(&call.ack(&ok));
    assert!(sim.to_carrier.is_empty() && sim.to_phone.is_empty());
    sim.carrier_sends(&call.in_dialog("BYE", None));
    assert_idle(&mut sim);
}

#[test]
fn a_thousand_calls_leave_nothing_behind() {
    thousand_calls(Sim::new());
}

#[test]
fn a_thousand_calls_over_three_shards_leave_nothing_behind() {
    let sim = Sim::sharded(3);
    thousand_calls(sim);
}

fn thousand_calls(mut sim: Sim) {
    for n in 0..1000 {
        let mut call = CarrierCall::new(n);
        sim.carrier_sends(&call.invite());
        let invite = sim.phone_gets_request("INVITE");
        sim.phone_sends(&respond(&invite, 200, "p", Some(&answer_sdp())));
        let ok = sim.carrier_gets_status(200);
        call.answered(&ok);
        sim.carrier_sends(&call.ack(&ok));
        sim.advance(Duration::from_millis(1));
        sim.carrier_sends(&call.in_dialog("BYE", None));
        let bye = sim.phone_gets_request("BYE");
        sim.phone_sends(&respond(&bye, 200, "p", None));
        sim.to_carrier.clear();
        sim.to_phone.clear();
    }
    assert_eq!(sim.tasks.started.len(), 1000);
    if sim.edges.len() > 1 {
        // Every shard took some of the calls.
        let shards = sim.edges.len() as u64;
        for shard in 0..shards {
            assert!(sim.tasks.started.iter().any(|id| id % shards == shard));
        }
    }
    assert_idle(&mut sim);
}

#[test]
fn the_100_trying_has_no_empty_tag() {
    let mut sim = Sim::new();
    sim.carrier_sends(&CarrierCall::new(1).invite());
    let trying = sim.carrier_gets();
    assert_eq!(trying.status(), Some(100));
    assert_eq!(trying.header("To"), "<sip:13235550100@192.0.2.100>");
}

#[test]
fn a_bye_before_the_answer_ends_the_invite_with_487() {
    let mut sim = Sim::new();
    let mut call = CarrierCall::new(1);
    let invite = ring(&mut sim, &call);
    sim.phone_sends(&respond(&invite, 180, "p1", None));
    let ringing = sim.carrier_gets_status(180);
    // The carrier ends the early dialog with a BYE (§15.1.2 allows it for a UAS).
    call.remote_to = Some(ringing.header("To").to_owned());
    call.remote_target = Some(format!("sip:{}@192.0.2.100", support::DID));
    sim.carrier_sends(&call.in_dialog("BYE", None));
    let answers: Vec<_> = sim.to_carrier.drain(..).collect();
    assert!(answers
        .iter()
        .any(|m| m.status() == Some(200) && m.cseq_method() == "BYE"));
    let terminated = answers
        .iter()
        .find(|m| m.status() == Some(487))
        .cloned()
        .expect("487 to the INVITE");
    sim.carrier_sends(&call.ack(&terminated));
    sim.phone_gets_request("CANCEL");
    assert_idle(&mut sim);
}

#[test]
fn requests_of_an_earlier_dialog_with_the_same_call_id_are_not_this_calls() {
    let mut sim = Sim::new();
    let (mut first, _) = answered_call(&mut sim);
    let stale_bye = first.in_dialog("BYE", None);
    sim.carrier_sends(&stale_bye);
    let bye = sim.phone_gets_request("BYE");
    sim.phone_sends(&respond(&bye, 200, "p1", None));
    sim.advance(Duration::from_secs(40));
    sim.to_carrier.clear();
    // The carrier calls again with the same Call-ID (a new INVITE transaction).
    let mut second = CarrierCall::new(1);
    second.branch = "z9hG4bKsecond".into();
    second.from = second.from.replace("tag=cf1", "tag=cf2");
    let invite = ring(&mut sim, &second);
    sim.phone_sends(&respond(&invite, 200, "p2", Some(&answer_sdp())));
    let ok = sim.carrier_gets_status(200);
    // The first call's BYE and an ACK with the first call's To tag are not for it.
    let mut stale = first.clone();
    stale.cseq = 10;
    sim.carrier_sends(&stale.in_dialog("BYE", None));
    assert_eq!(sim.carrier_gets().status(), Some(481));
    sim.carrier_sends(&first.ack(&Msg(
        ok.0.replace(ok.header("To"), first.remote_to.as_deref().unwrap()),
    )));
    sim.advance(Duration::from_millis(600));
    assert_eq!(sim.carrier_gets(), ok, "the 200 is still sent again");
    second.answered(&ok);
    sim.carrier_sends(&second.ack(&ok));
    sim.carrier_sends(&second.in_dialog("BYE", None));
    assert_eq!(sim.carrier_gets().status(), Some(200));
    assert_idle(&mut sim);
}

/// The drain (SIGTERM) in simulated time: an answered call goes on, a new call is
/// turned away with 503 and Retry-After, the call's own requests are served. At the
/// deadline, an edge that does not keep calls ends the call: a BYE on both legs saying
/// why, and its task hears `Stopped` (it tells the router and deletes the relay
/// session). One that keeps them hands the call over to the next edge: no BYE, its
/// record stays, its task hears `HandedOver`. Nothing is left behind either way.
#[test]
fn at_the_drain_deadline_a_call_is_ended_on_both_legs_or_handed_over() {
    for (shards, keep) in [(1, false), (3, false), (1, true), (3, true)] {
        let mut sim = Sim::sharded(shards);
        for edge in &mut sim.edges {
            edge.set_keep_calls(keep);
        }
        let (mut call, invite) = answered_call(&mut sim);
        let id = sim.tasks.started[0];
        assert_eq!(sim.tasks.records.len(), usize::from(keep));
        let (now, deadline) = (sim.now, sim.now + Duration::from_secs(30));
        for edge in &mut sim.edges {
            edge.drain(now, deadline);
        }

        // A new call: 503 with Retry-After, no task.
        let second = CarrierCall::new(2);
        sim.carrier_sends(&second.invite());
        let refused = sim.carrier_gets_status(503);
        assert!(!refused.header("Retry-After").is_empty(), "{}", refused.0);
        sim.carrier_sends(&second.ack(&refused));
        assert_eq!(sim.tasks.started, vec![id]);

        // The call's own re-INVITE (hold) is still answered.
        sim.advance(Duration::from_secs(10));
        let hold = call.in_dialog(
            "INVITE",
            Some(&sdp(support::CARRIER.ip(), 40_000, "sendonly")),
        );
        sim.carrier_sends(&hold);
        let ok = sim.carrier_gets_status(200);
        sim.carrier_sends(&call.ack(&ok));
        assert!(sim.to_phone.is_empty(), "{:?}", sim.to_phone);

        // Nothing happens before the deadline.
        sim.advance(Duration::from_secs(19));
        assert!(sim.to_carrier.is_empty() && sim.to_phone.is_empty());
        sim.advance(Duration::from_secs(1));
        assert!(sim.tasks.gone.contains(&id));
        if keep {
            assert!(sim.to_carrier.is_empty() && sim.to_phone.is_empty());
            assert!(matches!(
                sim.tasks.events[&id].last(),
                Some(CallEvent::HandedOver)
            ));
            assert_eq!(
                sim.tasks.records.len(),
                1,
                "the record stays for the next edge"
            );
            assert_idle(&mut sim);
            continue;
        }
        let to_carrier = sim.carrier_gets();
        let to_phone = sim.phone_gets_request("BYE");
        assert_eq!(to_carrier.method(), Some("BYE"), "{}", to_carrier.0);
        for bye in [&to_carrier, &to_phone] {
            assert_eq!(
                bye.header("Reason"),
                "Q.850;cause=41;text=\"edge shutting down\"",
                "{}",
                bye.0
            );
        }
        assert!(to_phone.header("To").contains("tag=p1"));
        assert_eq!(to_phone.call_id(), invite.call_id());
        assert!(matches!(
            sim.tasks.events[&id].last(),
            Some(CallEvent::Stopped { cause: 41 })
        ));
        sim.carrier_sends(&respond(&to_carrier, 200, "x", None));
        sim.phone_sends(&respond(&to_phone, 200, "p1", None));
        assert_idle(&mut sim);
    }
}

/// A bridged call's record is handed out when it is answered and taken back when it
/// ends; an edge started again from it carries the call's end either way, a re-INVITE
/// and the callee's resent 2xx, as the edge before the crash would have.
#[test]
fn a_call_restored_after_a_crash_ends_as_it_would_have() {
    for shards in [1, 3] {
        // The caller hangs up after the restart.
        let mut sim = Sim::sharded(shards);
        let (mut call, invite) = answered_call(&mut sim);
        assert_eq!(sim.tasks.records.len(), 1, "the bridged call's record");
        let record = sim.tasks.records.values().next().unwrap().clone();
        assert_eq!(record.a_call_id, call.call_id);
        assert_eq!(
            record.callee.remote_to,
            invite.header("To").to_owned() + ";tag=p1"
        );
        sim.advance(Duration::from_secs(7));

        let (mut restarted, ids) = sim.restarted();
        assert_eq!(ids.len(), 1);
        // The callee's 2xx again (our ACK was lost in the crash): ACKed again.
        restarted.phone_sends(&respond(&invite, 200, "p1", Some(&answer_sdp())));
        let ack = restarted.phone_gets_request("ACK");
        assert!(ack.header("To").contains("tag=p1"), "{}", ack.0);
        // A hold re-INVITE from the caller is answered from the relay.
        let hold = call.in_dialog(
            "INVITE",
            Some(&sdp(support::CARRIER.ip(), 40_000, "sendonly")),
        );
        restarted.carrier_sends(&hold);
        let ok = restarted.carrier_gets_status(200);
        assert!(ok.body().contains("c=IN IP4 10.0.0.5"), "{}", ok.0);
        assert!(ok.body().contains("a=recvonly"), "{}", ok.0);
        restarted.carrier_sends(&call.ack(&ok));
        // The caller's BYE: answered, passed to the callee in its dialog.
        restarted.carrier_sends(&call.in_dialog("BYE", None));
        assert_eq!(restarted.carrier_gets().status(), Some(200));
        let bye = restarted.phone_gets_request("BYE");
        assert!(bye.header("To").contains("tag=p1"), "{}", bye.0);
        assert_eq!(bye.call_id(), invite.call_id());
        assert_eq!(bye.header("CSeq"), "2 BYE");
        restarted.phone_sends(&respond(&bye, 200, "p1", None));
        let id = ids[0];
        assert!(matches!(
            restarted.tasks.events[&id][..],
            [
                CallEvent::Reinvite { .. },
                CallEvent::CallerGone {
                    cause: 16,
                    status: Some(200)
                }
            ]
        ));
        assert!(
            restarted.tasks.records.is_empty(),
            "the record goes with the call"
        );
        assert_idle(&mut restarted);

        // The callee hangs up after the restart.
        let mut sim = Sim::sharded(shards);
        let (_, invite) = answered_call(&mut sim);
        sim.advance(Duration::from_secs(3));
        let (mut restarted, ids) = sim.restarted();
        restarted.advance(Duration::from_secs(2));
        restarted.phone_sends(&phone_bye(&invite, "p1"));
        assert_eq!(restarted.phone_gets().status(), Some(200));
        let ended = restarted.tasks.events[&ids[0]].last().cloned();
        assert!(
            matches!(ended, Some(CallEvent::BridgeEnded { secs: 5, .. })),
            "the talk time counts from the answer: {ended:?}"
        );
        let bye = restarted.carrier_gets();
        assert_eq!(bye.method(), Some("BYE"), "{}", bye.0);
        assert!(
            bye.header("From")
                .contains(&format!("tag={}", tag_of_ok(&sim))),
            "{}",
            bye.0
        );
        restarted.carrier_sends(&respond(&bye, 200, "x", None));
        assert!(restarted.tasks.records.is_empty());
        assert_idle(&mut restarted);
    }
}

/// The edge's tag on the carrier's leg, from the record.
fn tag_of_ok(sim: &Sim) -> String {
    sim.tasks.records.values().next().unwrap().a_tag.clone()
}
