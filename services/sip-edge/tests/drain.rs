//! The edge's drain (what SIGTERM starts) with a call up, through the real router and
//! relay, the test playing the carrier and the desk phone: the call goes on, new
//! calls get 503 with Retry-After, registrations are served, and the edge stops
//! within a second of the call's end; or, at the deadline, the call ends on both
//! legs with a Reason and its relay session is deleted (an edge that does not keep
//! calls; one that does hands them over, see `restart.rs`).

mod common;

use std::time::{Duration, Instant};

use common::*;

/// Waits for the edge's task to end; returns when it did.
async fn edge_exits(system: &mut System, within: Duration) -> Instant {
    let task = system.edge_task.take().expect("the edge runs");
    tokio::time::timeout(within, task)
        .await
        .expect("the edge stops")
        .unwrap()
        .expect("the edge stops cleanly");
    Instant::now()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_draining_edge_keeps_its_call_refuses_new_ones_and_stops_when_it_ends() {
    let Scene {
        mut system,
        carrier,
        phone,
        carrier_rtp,
        phone_rtp,
    } = Scene::start(None, &[]).await;
    let offer = did_call(&carrier, &carrier_rtp, "d1", "13105550199");
    carrier.send(&offer).await;
    let (ring, ok) = answer_call(&carrier, &phone, &phone_rtp, &offer, "ph1").await;
    let relay_a = sdp_media(&ok);
    assert!(audio_flows(&carrier_rtp, relay_a, &phone_rtp, 0xa1).await);

    // SIGTERM.
    system.edge_stop.trigger();
    tokio::time::sleep(Duration::from_millis(200)).await;

    // A new call is turned away, with a time to come back.
    let second_rtp = rtp_socket().await;
    let second = did_call(&carrier, &second_rtp, "d2", "13105550123");
    carrier.send(&second).await;
    let refused = carrier.expect_status(503).await;
    assert!(header(&refused, "Retry-After").is_some(), "{refused}");
    let rung = tokio::time::timeout(Duration::from_millis(500), phone.expect("INVITE ")).await;
    assert!(rung.is_err(), "a draining edge rang the phone: {rung:?}");

    // Registrations are served as before.
    let _another_phone = registered_phone(system.edge_sip).await;

    // The call goes on, media both ways.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(audio_flows(&carrier_rtp, relay_a, &phone_rtp, 0xa2).await);
    let relay_b = sdp_media(&ring);
    assert!(audio_flows(&phone_rtp, relay_b, &carrier_rtp, 0xb2).await);
    assert_eq!(system.relay_sessions().await, 1);
    assert!(!system.edge_task.as_ref().unwrap().is_finished());

    // The carrier hangs up: BYE answered, passed on; then the edge stops.
    carrier
        .send(&in_dialog("BYE", &offer, &ok, 2, system.edge_sip))
        .await;
    carrier.expect_status(200).await;
    let bye = phone.expect("BYE ").await;
    phone.send(&response_to(&bye, 200, "OK", "", "")).await;
    let ended = Instant::now();
    let stopped = edge_exits(&mut system, Duration::from_secs(10)).await;
    assert!(
        stopped - ended < Duration::from_secs(1),
        "the edge stopped {:?} after its last call ended",
        stopped - ended
    );
    assert!(relay_sessions_reach(&system.relay, 0).await);
}

#[tokio::test(flavor = "multi_thread")]
async fn at_the_drain_deadline_both_legs_get_a_bye_and_the_relay_session_goes() {
    let Scene {
        mut system,
        carrier,
        phone,
        carrier_rtp,
        phone_rtp,
    } = Scene::start_draining_in(
        None,
        &[],
        EdgeOptions {
            drain_deadline: Duration::from_secs(2),
            // An edge that does not keep calls for the next one (as Asterisk).
            keep_calls: false,
        },
    )
    .await;
    let offer = did_call(&carrier, &carrier_rtp, "d3", "13105550199");
    carrier.send(&offer).await;
    let (_, ok) = answer_call(&carrier, &phone, &phone_rtp, &offer, "ph3").await;
    assert!(audio_flows(&carrier_rtp, sdp_media(&ok), &phone_rtp, 0xa3).await);

    let started = Instant::now();
    system.edge_stop.trigger();
    let to_carrier = carrier.expect("BYE ").await;
    let to_phone = phone.expect("BYE ").await;
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(1900),
        "BYE after {waited:?}, before the deadline"
    );
    for bye in [&to_carrier, &to_phone] {
        assert_eq!(
            header(bye, "Reason").as_deref(),
            Some("Q.850;cause=41;text=\"edge shutting down\""),
            "{bye}"
        );
    }
    carrier
        .send(&response_to(&to_carrier, 200, "OK", "", ""))
        .await;
    phone.send(&response_to(&to_phone, 200, "OK", "", "")).await;
    assert!(
        relay_sessions_reach(&system.relay, 0).await,
        "the session is deleted"
    );
    edge_exits(&mut system, Duration::from_secs(10)).await;
}
