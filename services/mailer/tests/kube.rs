//! The mailer mails the boxes of `Mailbox` resources too, against a real API server
//! (etcd and kube-apiserver, as envtest runs them) and a real SMTP server (Mailpit): a
//! box that voicemail.conf does not have gets its email once its Mailbox exists, and
//! none after the Mailbox is deleted.

use std::time::Duration;

use phone_test_support::kube::KubeApi;
use phone_test_support::Mailpit;

mod common;
use common::*;

const BOX: &str = "13235550155";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mailbox_resources_box_is_emailed_and_not_after_it_is_deleted() {
    let api = KubeApi::start().await;
    api.install_crds();
    api.apply(&format!(
        "apiVersion: phone.dev/v1alpha1\nkind: Mailbox\nmetadata: {{name: kitchen}}\nspec: {{box: \"{BOX}\", pinRef: {{name: box-pin, key: pin}}, fullName: Kitchen, email: kitchen@example.org}}\n"
    ));

    let files = Files::new();
    let mailpit = Mailpit::start().await;
    // The process's API server is the test's (kube reads KUBECONFIG).
    std::env::set_var("KUBECONFIG", &api.kubeconfig);
    let mut mailer = Running::start(mailer::Config {
        smtp: smtp_to(&mailpit),
        kube_namespace: Some("default".into()),
        ..config(&files)
    })
    .await;

    // Accepted once the mailer has read the Mailbox (NOT_FOUND before).
    let key = files.record(BOX, "01764198309-kkkk", &tone(600.0, 8000));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        match mailer
            .client
            .deliver(request(BOX, "01764198309-kkkk", &key))
            .await
        {
            Ok(_) => break,
            Err(status) if status.code() == tonic::Code::NotFound => {
                assert!(tokio::time::Instant::now() < deadline, "{status}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(status) => panic!("{status}"),
        }
    }
    let mails = mailpit.wait_for(1, Duration::from_secs(15)).await;
    assert_eq!(mails.len(), 1);
    let id = mails[0]["ID"].as_str().unwrap().to_owned();
    let mail = mailpit.message(&id).await;
    assert_eq!(mail["To"][0]["Address"], "kitchen@example.org");
    assert_eq!(mail["To"][0]["Name"], "Kitchen");

    // Deleted: the box is unknown again.
    let (ok, out) = api.kubectl(&["delete", "mailbox", "kitchen"]);
    assert!(ok, "{out}");
    let key = files.record(BOX, "01764198310-kkkk", &tone(600.0, 8000));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        match mailer
            .client
            .deliver(request(BOX, "01764198310-kkkk", &key))
            .await
        {
            Err(status) if status.code() == tonic::Code::NotFound => break,
            other => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "still accepted after the Mailbox went: {other:?}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    mailer.stop().await;
}
