//! The message-waiting lamp over shards: a subscription lives on the shard of its
//! subscriber (the SUBSCRIBE's From), which need not be its line's. A mailbox update
//! lights the lamp once, in the subscription's dialog, and the line's own shard sends
//! no unsolicited NOTIFY beside it.

mod support;

use sip_wire::digest::{authorize, Challenge};
use sip_wire::shard::shard_of_line;
use support::{Msg, Sim, EDGE, PHONE};

fn subscribe(user: &str, cseq: u32, auth: &str) -> String {
    let edge_ip = EDGE.ip();
    format!(
        "SUBSCRIBE sip:desk@{EDGE} SIP/2.0\r\nVia: SIP/2.0/UDP {PHONE};branch=z9hG4bKsub{cseq}\r\nMax-Forwards: 70\r\nFrom: <sip:{user}@{edge_ip}>;tag=s1\r\nTo: <sip:desk@{edge_ip}>\r\nCall-ID: sub-1@phone\r\nCSeq: {cseq} SUBSCRIBE\r\nContact: <sip:desk@{PHONE}>\r\nEvent: message-summary\r\nExpires: 600\r\n{auth}Content-Length: 0\r\n\r\n"
    )
}

/// Answers every request the phone got with 200; returns the NOTIFYs.
fn notifies(sim: &mut Sim) -> Vec<Msg> {
    let mut found = Vec::new();
    while let Some(msg) = sim.to_phone.pop_front() {
        if msg.method() == Some("NOTIFY") {
            sim.phone_sends(&support::respond(&msg, 200, "", None));
            found.push(msg);
        }
    }
    found
}

#[test]
fn a_line_subscribed_on_another_shard_gets_one_notify() {
    let shards = 3;
    let desk = shard_of_line("desk", shards);
    let user = (0..)
        .map(|i| format!("lamp{i}"))
        .find(|u| shard_of_line(u, shards) != desk)
        .unwrap();
    let mut sim = Sim::sharded(shards);

    sim.phone_sends(&subscribe(&user, 1, ""));
    let challenge = sim.phone_gets();
    // chan_sip challenges a SUBSCRIBE as a proxy would.
    assert_eq!(challenge.status(), Some(407), "{}", challenge.0);
    let challenge = Challenge::parse(challenge.header("Proxy-Authenticate")).unwrap();
    let creds = authorize(
        &challenge,
        "desk",
        "s3cret",
        "SUBSCRIBE",
        &format!("sip:desk@{EDGE}"),
        "c",
        1,
    );
    sim.phone_sends(&subscribe(
        &user,
        2,
        &format!("Proxy-Authorization: {}\r\n", creds.to_header()),
    ));
    let ok = sim.phone_gets();
    assert_eq!(ok.status(), Some(200), "{}", ok.0);
    notifies(&mut sim);

    // The update as the driver makes it: the lines subscribed anywhere, then every
    // shard.
    let subscribed: Vec<String> = sim
        .edges
        .iter()
        .flat_map(|e| e.subscribed_lines("desk", "default"))
        .collect();
    assert_eq!(subscribed, ["desk"]);
    let sent: u32 = sim
        .edges
        .iter_mut()
        .map(|e| e.update_mailbox("desk", "default", [1, 0, 0, 0], &subscribed))
        .sum();
    sim.pump();
    assert_eq!(sent, 1);
    let lit = notifies(&mut sim);
    assert_eq!(lit.len(), 1, "{lit:?}");
    assert_eq!(
        lit[0].call_id(),
        "sub-1@phone",
        "in the subscription's dialog"
    );
    assert!(
        lit[0].body().contains("Messages-Waiting: yes"),
        "{}",
        lit[0].0
    );

    // Without the others' subscriptions (as before), the line's shard sent one more.
    let alone: u32 = sim
        .edges
        .iter_mut()
        .map(|e| e.update_mailbox("desk", "default", [2, 0, 0, 0], &[]))
        .sum();
    sim.pump();
    assert_eq!(alone, 2);
    assert_eq!(notifies(&mut sim).len(), 2);
}
