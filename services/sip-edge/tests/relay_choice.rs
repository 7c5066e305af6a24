//! The edge's choice of media relay, against real relays over gRPC: least-loaded first,
//! a relay with no ports or a draining one skipped (both when a poll says so and when
//! it refuses a session between polls), and a host name standing for the addresses it
//! resolves to.

use phone_proto::media::v1 as pb;
use service_runtime::Shutdown;
use sip_edge::relays::{RelayError, RelayPool};

struct Relay {
    url: String,
    shutdown: Shutdown,
    task: tokio::task::JoinHandle<Result<(), media_relay::Error>>,
}

async fn relay(ports: &str) -> Relay {
    let mut config = media_relay::Config::loopback(ports.parse().unwrap());
    config.workers = 1;
    config.common.drain_deadline = std::time::Duration::from_secs(1);
    let bound = media_relay::bind(config).await.unwrap();
    let url = format!("http://{}", bound.info().grpc);
    let shutdown = Shutdown::new();
    let task = tokio::spawn(bound.run(shutdown.clone()));
    Relay {
        url,
        shutdown,
        task,
    }
}

fn request(id: &str) -> pb::CreateSessionRequest {
    pb::CreateSessionRequest {
        session_id: id.into(),
        call_id: id.into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn least_loaded_first_and_refusals_fall_through() {
    let big_a = relay("24400-24439").await;
    let big_b = relay("24440-24479").await;
    // Two pairs: room for exactly one session.
    let small = relay("24480-24483").await;
    // The small relay is named, not given as an address: `localhost` resolves (through
    // the system's resolver) to 127.0.0.1, and perhaps ::1 where nothing listens.
    let small_port = small.url.rsplit(':').next().unwrap().to_owned();
    let pool = RelayPool::new(&[
        big_a.url.clone(),
        big_b.url.clone(),
        format!("http://localhost:{small_port}"),
    ])
    .unwrap();
    assert!(
        pool.candidates().is_empty(),
        "nothing is chosen before the first poll"
    );
    pool.refresh().await;
    let relays = pool.relays();
    assert!(relays.len() >= 3, "every address is a relay");
    for relay in &relays {
        let status = relay.status();
        if relay.addr.is_ipv6() {
            assert!(!status.reachable, "nothing listens on {}", relay.addr);
        } else {
            assert!(
                status.reachable && status.serving,
                "{}: {status:?}",
                relay.url
            );
        }
    }
    assert_eq!(pool.candidates().len(), 3);

    // Six calls before the next poll: spread by what the edge placed since.
    let mut placed = std::collections::HashMap::<String, u32>::new();
    for n in 0..6 {
        let (relay, session) = pool
            .create_session(request(&format!("c{n}")))
            .await
            .unwrap();
        assert!(session.a.unwrap().local.is_some());
        *placed.entry(relay.url.clone()).or_default() += 1;
    }
    let small_url = format!("http://127.0.0.1:{small_port}");
    // The small relay took one; asked again it said RESOURCE_EXHAUSTED, and that call
    // went on to another relay.
    assert_eq!(placed.get(&small_url), Some(&1), "{placed:?}");
    assert_eq!(
        placed.get(&big_a.url).unwrap() + placed.get(&big_b.url).unwrap(),
        5,
        "{placed:?}"
    );
    pool.refresh().await;
    let loads: Vec<(String, u32, u32)> = pool
        .relays()
        .iter()
        .filter(|r| r.addr.is_ipv4())
        .map(|r| {
            (
                r.url.clone(),
                r.status().active_sessions,
                r.status().free_port_pairs,
            )
        })
        .collect();
    assert!(
        loads.contains(&(small_url.clone(), 1, 0)),
        "the poll sees the small relay full: {loads:?}"
    );
    assert_eq!(
        pool.candidates().len(),
        2,
        "a full relay is not a candidate"
    );

    // Draining relay A: between polls it is still the least loaded in the edge's view
    // (or tied), refuses with UNAVAILABLE, and the call lands on B.
    big_a.shutdown.trigger();
    for n in 6..9 {
        let (relay, _) = pool
            .create_session(request(&format!("c{n}")))
            .await
            .unwrap();
        assert_eq!(relay.url, big_b.url, "call {n} avoids the draining relay");
    }
    pool.refresh().await;
    let candidates: Vec<String> = pool.candidates().iter().map(|r| r.url.clone()).collect();
    assert_eq!(candidates, vec![big_b.url.clone()]);

    // With B gone too, nothing is left: the edge answers 503.
    big_b.shutdown.trigger();
    let err = pool.create_session(request("c9")).await.unwrap_err();
    assert!(
        matches!(err, RelayError::AllRefused(ref s) if s.code() == tonic::Code::Unavailable),
        "{err}"
    );
    pool.refresh().await;
    assert!(matches!(
        pool.create_session(request("c10")).await,
        Err(RelayError::NoneAvailable)
    ));

    small.shutdown.trigger();
    for relay in [big_a, big_b, small] {
        relay.task.await.unwrap().unwrap();
    }
}

/// A relay that came up after the last poll takes the call at once: with no candidate,
/// the pool polls again before it refuses (an edge that starts before its relays, as
/// in Kubernetes, places its first call without waiting for the next poll).
#[tokio::test]
async fn with_no_candidate_the_pool_polls_again_before_refusing() {
    let late = relay("24500-24519").await;
    let pool = RelayPool::new(std::slice::from_ref(&late.url)).unwrap();
    assert!(pool.candidates().is_empty(), "no poll yet");
    let (_, session) = pool
        .create_session(request("late-1"))
        .await
        .expect("the pool asks the relay, which has room");
    assert!(session.a.is_some() && session.b.is_some());

    // Nothing to find: still refused, with the reason.
    let nobody = RelayPool::new(&["http://127.0.0.1:9".to_owned()]).unwrap();
    assert!(matches!(
        nobody.create_session(request("none-1")).await,
        Err(RelayError::NoneAvailable)
    ));
    late.shutdown.trigger();
}
