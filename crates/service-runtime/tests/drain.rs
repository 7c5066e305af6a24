//! The drain: in-flight work is waited for, but never past the deadline.

use std::time::{Duration, Instant};

use service_runtime::{CommonArgs, GrpcServer, Shutdown};

async fn serve_with_task(task_secs: f64, deadline: Duration) -> Duration {
    let common = CommonArgs {
        drain_deadline: deadline,
        ..CommonArgs::loopback()
    };
    let server = GrpcServer::bind("test", &common).await.unwrap();
    let finished = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = finished.clone();
    server.in_flight().spawn(async move {
        tokio::time::sleep(Duration::from_secs_f64(task_secs)).await;
        flag.store(true, std::sync::atomic::Ordering::SeqCst);
    });
    let shutdown = Shutdown::new();
    let serving =
        tokio::spawn(server.serve(tonic::service::Routes::default(), &[], shutdown.clone()));
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started = Instant::now();
    shutdown.trigger();
    serving.await.unwrap().unwrap();
    let took = started.elapsed();
    if task_secs < deadline.as_secs_f64() {
        assert!(
            finished.load(std::sync::atomic::Ordering::SeqCst),
            "the drain waited for the task"
        );
    }
    took
}

#[tokio::test]
async fn the_drain_waits_for_in_flight_work() {
    let took = serve_with_task(0.5, Duration::from_secs(20)).await;
    assert!(
        took >= Duration::from_millis(400),
        "returned before the work ended: {took:?}"
    );
    assert!(took < Duration::from_secs(10), "{took:?}");
}

#[tokio::test]
async fn the_drain_stops_at_the_deadline() {
    let took = serve_with_task(3600.0, Duration::from_millis(500)).await;
    assert!(took >= Duration::from_millis(500), "{took:?}");
    assert!(
        took < Duration::from_secs(10),
        "the deadline ended the drain: {took:?}"
    );
}
