//! Two mailers share one outbox under a `coordination.k8s.io` Lease, against a real API
//! server (etcd and kube-apiserver, as envtest runs them) and a real SMTP server
//! (Mailpit): both accept deliveries, only the Lease's holder sends, each email arrives
//! once, and when the holder stops the other takes the Lease and sends.
//!
//! The two share the outbox as a folder here; in a cluster they share it in S3.

use std::time::Duration;

use phone_test_support::kube::KubeApi;
use phone_test_support::Mailpit;

mod common;
use common::*;

/// Pat's box: each delivery is an email and a pager mail.
const BOX: &str = "100";

const HOLDER: [&str; 5] = [
    "get",
    "lease",
    "mailer-outbox",
    "-o",
    "jsonpath={.spec.holderIdentity}",
];

/// Waits until every one of `ids` is SENT, as `mailer` reports it.
async fn all_sent(mailer: &mut Running, ids: &[&str]) {
    for id in ids {
        let done = mailer.settled(id, Duration::from_secs(20)).await;
        assert_eq!(
            done.state(),
            phone_proto::mailer::v1::DeliveryState::Sent,
            "{id}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_mailers_share_the_outbox_one_sends_and_the_other_takes_over() {
    let api = KubeApi::start().await;
    api.install_crds();
    let files = Files::new();
    let mailpit = Mailpit::start().await;
    // The process's API server is the test's (kube reads KUBECONFIG).
    std::env::set_var("KUBECONFIG", &api.kubeconfig);
    let replica = |name: &str| mailer::Config {
        smtp: smtp_to(&mailpit),
        kube_namespace: Some("default".into()),
        outbox_lease: Some("mailer-outbox".into()),
        outbox_lease_duration: Duration::from_secs(3),
        pod_name: Some(name.into()),
        ..config(&files)
    };
    let a = Running::start(replica("mailer-a")).await;
    let b = Running::start(replica("mailer-b")).await;
    let first = api.kubectl_until(&HOLDER, &["mailer-"]).await;
    let (mut sender, mut other) = if first == "mailer-a" { (a, b) } else { (b, a) };

    // Both accept; the holder sends what either stored, each once.
    let mut ids = Vec::new();
    for n in 0..6 {
        let id = format!("0176419830{n}-lease");
        let key = files.record(BOX, &id, &tone(500.0 + 50.0 * f64::from(n), 8000));
        let to = if n % 2 == 0 { &mut sender } else { &mut other };
        let delivery = to.deliver(request(BOX, &id, &key)).await;
        assert_eq!(delivery.message_id, id);
        ids.push(id);
    }
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    all_sent(&mut other, &ids).await;
    let mails = mailpit.wait_for(12, Duration::from_secs(15)).await;
    assert_eq!(mails.len(), 12);
    assert_eq!(sender.metric("phone_mailer_sent_total").await, 6.0);
    assert_eq!(other.metric("phone_mailer_sent_total").await, 0.0);

    // The holder stops: it gives the Lease up, and the other sends from then on,
    // including what it accepted before it held the Lease.
    let key = files.record(BOX, "01764198310-lease", &tone(900.0, 8000));
    other.deliver(request(BOX, "01764198310-lease", &key)).await;
    let stopped = api.kubectl(&HOLDER).1;
    sender.stop().await;
    let survivor = if stopped == "mailer-a" {
        "mailer-b"
    } else {
        "mailer-a"
    };
    api.kubectl_until(&HOLDER, &[survivor]).await;
    let key = files.record(BOX, "01764198311-lease", &tone(950.0, 8000));
    other.deliver(request(BOX, "01764198311-lease", &key)).await;
    all_sent(&mut other, &["01764198310-lease", "01764198311-lease"]).await;
    let mails = mailpit.wait_for(16, Duration::from_secs(15)).await;
    assert_eq!(mails.len(), 16, "each mail once");
    let sent_by_survivor = other.metric("phone_mailer_sent_total").await;
    assert!(
        (1.0..=2.0).contains(&sent_by_survivor),
        "the survivor sent {sent_by_survivor}"
    );
    other.stop().await;
}
