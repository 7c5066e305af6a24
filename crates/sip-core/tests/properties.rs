//! Random interleavings of what a carrier, a desk phone, the network and the clock do
//! to the edge's endpoint during a few calls: messages delivered, lost, repeated or
//! crossed, hang-ups from either side at any moment, timers run at any point. Then
//! the carrier hangs up what it was answered, both peers turn passive (they answer
//! BYE and CANCEL; the carrier ACKs and ends a late answer) and the clock runs ten
//! minutes: the endpoint must hold no transaction, dialog or call, and every call's
//! task must have been told its call is gone. The edge runs as one, two or three
//! shards, messages routed between them as the driver routes them.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use proptest::prelude::*;
use sip_core::endpoint::Held;
use support::{phone_bye, respond, sdp, CarrierCall, Msg, Sim, PHONE};

#[derive(Debug, Clone, Copy)]
enum Reaction {
    Ring,
    Answer,
    Busy,
    Ignore,
}

#[derive(Debug, Clone)]
enum Action {
    /// The carrier calls the DID (at most three calls).
    Invite,
    /// The carrier, on call `n` (modulo the calls made): CANCEL, ACK of the last final
    /// response it got, BYE, or its INVITE again.
    Cancel(usize),
    Ack(usize),
    Bye(usize),
    ResendInvite(usize),
    /// The phone reads a message of its inbox and reacts.
    Phone(usize, Reaction),
    /// The phone hangs up an answered call.
    PhoneBye(usize),
    /// The carrier reads a message of its inbox.
    Carrier(usize),
    /// A message to the phone or to the carrier is lost.
    DropToPhone(usize),
    DropToCarrier(usize),
    /// Time passes.
    Wait(u16),
    NextTimeout,
    /// SIGTERM: every endpoint drains, its calls ending at most this many
    /// milliseconds later.
    Drain(u16),
}

fn reaction() -> impl Strategy<Value = Reaction> {
    prop_oneof![
        Just(Reaction::Ring),
        Just(Reaction::Answer),
        Just(Reaction::Busy),
        Just(Reaction::Ignore)
    ]
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        2 => Just(Action::Invite),
        1 => any::<usize>().prop_map(Action::Cancel),
        2 => any::<usize>().prop_map(Action::Ack),
        2 => any::<usize>().prop_map(Action::Bye),
        1 => any::<usize>().prop_map(Action::ResendInvite),
        6 => (any::<usize>(), reaction()).prop_map(|(n, r)| Action::Phone(n, r)),
        1 => any::<usize>().prop_map(Action::PhoneBye),
        4 => any::<usize>().prop_map(Action::Carrier),
        1 => any::<usize>().prop_map(Action::DropToPhone),
        1 => any::<usize>().prop_map(Action::DropToCarrier),
        2 => (0u16..5_000).prop_map(Action::Wait),
        2 => Just(Action::NextTimeout),
        1 => (0u16..40_000).prop_map(Action::Drain),
    ]
}

/// What the simulated peers remember between actions.
#[derive(Default)]
struct Peers {
    carrier: Vec<CarrierCall>,
    /// The last final response the carrier got, by call.
    finals: HashMap<usize, Msg>,
    /// The INVITEs the phone got, and whether (and with which tag) it answered them,
    /// by Call-ID.
    invites: HashMap<String, Msg>,
    answered: HashMap<String, String>,
}

fn pick<T>(items: &[T], n: usize) -> Option<usize> {
    (!items.is_empty()).then(|| n % items.len())
}

fn phone_reads(sim: &mut Sim, peers: &mut Peers, msg: Msg, reaction: Reaction) {
    let Some(method) = msg.method() else {
        return;
    };
    let call_id = msg.call_id().to_owned();
    let tag = format!(
        "p{}",
        call_id.len() + call_id.bytes().map(usize::from).sum::<usize>()
    );
    match method {
        "INVITE" => {
            peers.invites.insert(call_id.clone(), msg.clone());
            let answer = match reaction {
                Reaction::Ring => respond(&msg, 180, &tag, None),
                Reaction::Answer => {
                    peers.answered.insert(call_id, tag.clone());
                    respond(&msg, 200, &tag, Some(&sdp(PHONE.ip(), 20_000, "sendrecv")))
                }
                Reaction::Busy => respond(&msg, 486, &tag, None),
                Reaction::Ignore => return,
            };
            sim.phone_sends(&answer);
        }
        "CANCEL" => {
            sim.phone_sends(&respond(&msg, 200, &tag, None));
            if !peers.answered.contains_key(&call_id) {
                if let Some(invite) = peers.invites.get(&call_id).cloned() {
                    sim.phone_sends(&respond(&invite, 487, &tag, None));
                }
            }
        }
        "BYE" => {
            peers.answered.remove(&call_id);
            sim.phone_sends(&respond(&msg, 200, &tag, None));
        }
        _ => {}
    }
}

fn carrier_reads(sim: &mut Sim, peers: &mut Peers, msg: Msg) {
    let Some(n) = peers
        .carrier
        .iter()
        .position(|c| c.call_id == msg.call_id())
    else {
        return;
    };
    match (msg.status(), msg.method()) {
        (Some(status), _) if status >= 200 && msg.cseq_method() == "INVITE" => {
            peers.carrier[n].answered(&msg);
            peers.finals.insert(n, msg);
        }
        (_, Some("BYE")) => sim.carrier_sends(&respond(&msg, 200, "c", None)),
        _ => {}
    }
}

fn run(actions: Vec<Action>, shards: usize) -> Result<(), TestCaseError> {
    let mut sim = Sim::sharded(shards);
    let mut peers = Peers::default();
    for action in actions {
        match action {
            Action::Invite if peers.carrier.len() < 3 => {
                let call = CarrierCall::new(peers.carrier.len() as u32);
                sim.carrier_sends(&call.invite());
                peers.carrier.push(call);
            }
            Action::Invite => {}
            Action::Cancel(n) => {
                if let Some(n) = pick(&peers.carrier, n) {
                    let cancel = peers.carrier[n].cancel();
                    sim.carrier_sends(&cancel);
                }
            }
            Action::Ack(n) => {
                if let Some(n) = pick(&peers.carrier, n) {
                    if let Some(response) = peers.finals.get(&n) {
                        let ack = peers.carrier[n].ack(response);
                        sim.carrier_sends(&ack);
                    }
                }
            }
            Action::Bye(n) => {
                if let Some(n) = pick(&peers.carrier, n) {
                    if peers.carrier[n].remote_to.is_some() {
                        let bye = peers.carrier[n].in_dialog("BYE", None);
                        sim.carrier_sends(&bye);
                    }
                }
            }
            Action::ResendInvite(n) => {
                if let Some(n) = pick(&peers.carrier, n) {
                    let invite = peers.carrier[n].invite();
                    sim.carrier_sends(&invite);
                }
            }
            Action::Phone(n, reaction) => {
                let inbox: Vec<Msg> = sim.to_phone.iter().cloned().collect();
                if let Some(i) = pick(&inbox, n) {
                    let msg = sim.to_phone.remove(i).unwrap();
                    phone_reads(&mut sim, &mut peers, msg, reaction);
                }
            }
            Action::PhoneBye(n) => {
                let mut answered: Vec<(String, String)> = peers
                    .answered
                    .iter()
                    .map(|(c, t)| (c.clone(), t.clone()))
                    .collect();
                answered.sort();
                if let Some(i) = pick(&answered, n) {
                    let (call_id, tag) = answered[i].clone();
                    if let Some(invite) = peers.invites.get(&call_id).cloned() {
                        peers.answered.remove(&call_id);
                        sim.phone_sends(&phone_bye(&invite, &tag));
                    }
                }
            }
            Action::Carrier(n) => {
                let inbox: Vec<Msg> = sim.to_carrier.iter().cloned().collect();
                if let Some(i) = pick(&inbox, n) {
                    let msg = sim.to_carrier.remove(i).unwrap();
                    carrier_reads(&mut sim, &mut peers, msg);
                }
            }
            Action::DropToPhone(n) => {
                let len = sim.to_phone.len();
                if len > 0 {
                    sim.to_phone.remove(n % len);
                }
            }
            Action::DropToCarrier(n) => {
                let len = sim.to_carrier.len();
                if len > 0 {
                    sim.to_carrier.remove(n % len);
                }
            }
            Action::Wait(ms) => sim.advance(Duration::from_millis(u64::from(ms))),
            Action::NextTimeout => sim.next_timeout(),
            Action::Drain(ms) => {
                let (now, deadline) = (sim.now, sim.now + Duration::from_millis(u64::from(ms)));
                for edge in &mut sim.edges {
                    edge.drain(now, deadline);
                }
            }
        }
    }
    // The carrier ends the calls it was answered, as the relay's media timeout
    // would end them otherwise.
    for call in &mut peers.carrier {
        if call.remote_to.is_some() {
            let bye = call.in_dialog("BYE", None);
            sim.carrier_sends(&bye);
        }
    }
    sim.close_and_settle(Duration::from_secs(600));
    prop_assert_eq!(sim.held(), Held::default(), "{:?}", sim.held_keys());
    for id in &sim.tasks.started {
        prop_assert!(sim.tasks.gone.contains(id), "call {} never ended", id);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        // PROPTEST_CASES=20000 for a longer search.
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(512),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn no_transaction_dialog_or_call_is_left_behind(
        actions in proptest::collection::vec(action(), 1..80),
        shards in 1usize..=3,
    ) {
        run(actions, shards)?;
    }
}
