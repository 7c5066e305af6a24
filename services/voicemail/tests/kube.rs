//! Mailboxes as Kubernetes resources, against a real API server (etcd and
//! kube-apiserver, as envtest runs them): a `Mailbox` the voicemail.conf does not have
//! can log in to VoiceMailMain with the PIN of its Secret; after the Secret changes,
//! the next login takes the new PIN and refuses the old one; its status shows the
//! counts; a Mailbox that names a voicemail.conf box is reported, not merged.

use std::time::Duration;

use phone_proto::voicemail::v1 as pb;
use phone_test_support::kube::KubeApi;

mod common;
use common::*;

const BOX: &str = "13235550155";

async fn until(api: &KubeApi, args: &[&str], want: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (ok, out) = api.kubectl(args);
        if ok && out.contains(want) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "kubectl {args:?} never showed {want:?}: {out}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn pin_secret(pin: &str) -> String {
    format!("apiVersion: v1\nkind: Secret\nmetadata: {{name: box-pin}}\nstringData: {{pin: \"{pin}\"}}\n")
}

/// A VoiceMailMain session for [`BOX`] that enters each PIN of `pins` in turn; how it
/// finished.
async fn login(service: &Service, pins: &[&str], then_exit: bool) -> pb::VmStatus {
    let mut caller = Caller::new("127.0.0.1:9".parse().unwrap()).await;
    let (_, voicemail, mut events) = start(service, pb::Mode::Main, BOX, "", caller.addr()).await;
    caller.voicemail = voicemail;
    for pin in pins {
        caller.listen(2500).await; // "Password?" (again after "incorrect")
        caller.keys(&format!("{pin}#")).await;
    }
    if then_exit {
        caller.listen(5000).await; // the counts and the main menu
        caller.press('#').await;
    }
    let done = finished(&mut events).await;
    pb::VmStatus::try_from(done.status).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mailbox_resource_logs_in_with_its_secrets_pin_and_a_new_pin_applies_live() {
    let api = KubeApi::start().await;
    api.install_crds();
    api.apply(&pin_secret("4321"));
    api.apply(&format!(
        "apiVersion: phone.dev/v1alpha1\nkind: Mailbox\nmetadata: {{name: kitchen}}\nspec: {{box: \"{BOX}\", pinRef: {{name: box-pin, key: pin}}, email: kitchen@example.org}}\n---\napiVersion: phone.dev/v1alpha1\nkind: Mailbox\nmetadata: {{name: desk}}\nspec: {{box: \"13235550100\", pinRef: {{name: box-pin, key: pin}}}}\n"
    ));
    // The process's API server is the test's (kube reads KUBECONFIG).
    std::env::set_var("KUBECONFIG", &api.kubeconfig);
    let service = Service::start_with_mailboxes("default", Duration::from_secs(1)).await;

    // Applied: the status shows the counts; the clash is reported.
    until(&api, &["get", "mailboxes"], "kitchen").await;
    until(
        &api,
        &[
            "get",
            "mailbox",
            "kitchen",
            "-o",
            "jsonpath={.status.new}/{.status.old}",
        ],
        "0/0",
    )
    .await;
    until(
        &api,
        &["get", "mailbox", "desk", "-o", "jsonpath={.status.problem}"],
        "voicemail.conf defines 13235550100@default",
    )
    .await;

    assert_eq!(
        login(&service, &["4321"], true).await,
        pb::VmStatus::Userexit,
        "the Secret's PIN logs in"
    );

    // The PIN changes in the Secret: the next login wants the new one.
    api.apply(&pin_secret("9876"));
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        login(&service, &["4321", "4321", "4321"], false).await,
        pb::VmStatus::Failed,
        "the old PIN no longer logs in"
    );
    assert_eq!(
        login(&service, &["9876"], true).await,
        pb::VmStatus::Userexit,
        "the new PIN logs in"
    );
}
