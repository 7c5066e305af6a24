//! The mailer service against a real SMTP server (Mailpit) and, for the outbox in S3, a
//! real MinIO: a delivery becomes exactly one email with the recording attached; an
//! SMTP outage delays it without losing or doubling it; a mailer killed with
//! deliveries pending sends each once after it restarts; a 5xx answer is not retried;
//! retries run out after the configured time; hostile requests are refused.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use phone_proto::mailer::v1 as pb;
use phone_proto::mailer::v1::mailer_client::MailerClient;
use phone_test_support::{free_port, Mailpit, Minio};

mod common;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_is_one_email_and_a_pager_mail_and_a_repeat_sends_nothing() {
    let files = Files::new();
    let mailpit = Mailpit::start().await;
    let audio = tone(440.0, 16_000);
    let key = files.record("100", "01764198309-aaaa", &audio);
    let mut mailer = Running::start(mailer::Config {
        smtp: smtp_to(&mailpit),
        ..config(&files)
    })
    .await;

    let accepted = mailer
        .deliver(request("100", "01764198309-aaaa", &key))
        .await;
    assert_eq!(
        accepted.email_message_id,
        "<voicemail-01764198309-aaaa@example.org>"
    );
    // Stored before the answer.
    assert!(
        files
            .data()
            .join("outbox/pending/01764198309-aaaa.json")
            .exists()
            || mailer.state("01764198309-aaaa").await.state() == pb::DeliveryState::Sent
    );
    let done = mailer
        .settled("01764198309-aaaa", Duration::from_secs(10))
        .await;
    assert_eq!(done.state(), pb::DeliveryState::Sent, "{done:?}");
    assert_eq!(done.attempts, 1);

    let got = mailpit.wait_for(2, Duration::from_secs(5)).await;
    assert_eq!(got.len(), 2, "the email and the pager mail");
    let email = got
        .iter()
        .find(|m| m["To"][0]["Address"] == "pat@example.org")
        .expect("the email");
    let page = got
        .iter()
        .find(|m| m["To"][0]["Address"] == "page@example.org")
        .expect("the pager mail");
    // emailsubject/emailbody/fromstring with the variables, and the escapes.
    assert_eq!(
        email["Subject"],
        "[Voicemail] 1 from \"Pat Caller\" <2065550123>"
    );
    assert_eq!(email["From"]["Name"], "Voicemail of Pat Q");
    assert_eq!(page["Subject"], "New VM");
    let id = email["ID"].as_str().unwrap();
    let full = mailpit.message(id).await;
    let text = full["Text"].as_str().unwrap().replace("\r\n", "\n");
    assert_eq!(
        text.trim_end(),
        "Hi Pat Q,\n\n\t0:02 from Pat Caller (2065550123) on 2026-11-26 17:05, box 100.",
        "the date in the mailbox's zone"
    );
    let attachment = &full["Attachments"][0];
    assert_eq!(attachment["FileName"], "msg0000.WAV");
    let bytes = mailpit
        .part(id, attachment["PartID"].as_str().unwrap())
        .await;
    let decoded = phone_audio::wav::decode(&bytes).unwrap();
    let c = phone_audio::analysis::correlation(&audio[800..], &decoded[800..]);
    assert!(c > 0.9, "the attachment is the recording ({c:.3})");

    // The same request again (a voicemail retry): the same delivery, nothing sent.
    let again = mailer
        .deliver(request("100", "01764198309-aaaa", &key))
        .await;
    assert_eq!(again.state(), pb::DeliveryState::Sent);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(mailpit.messages().await.len(), 2);
    assert_eq!(mailer.metric("phone_mailer_sent_total").await, 1.0);
    assert_eq!(mailer.metric("phone_mailer_queue_depth").await, 0.0);
    // Sent: its mails are no longer kept.
    assert!(!files
        .data()
        .join("outbox/mail/01764198309-aaaa.email.eml")
        .exists());
    mailer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_smtp_outage_delays_the_email_but_it_arrives_once() {
    let files = Files::new();
    let mut mailpit = Mailpit::stopped();
    let key = files.record("100", "01764198309-bbbb", &tone(600.0, 8000));
    let mut mailer = Running::start(mailer::Config {
        smtp: smtp_to(&mailpit),
        ..config(&files)
    })
    .await;
    let accepted = mailer
        .deliver(request("100", "01764198309-bbbb", &key))
        .await;
    assert_eq!(accepted.state(), pb::DeliveryState::Pending);

    // Failing: pending, with the error and a next attempt.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let pending = loop {
        let list = mailer
            .client
            .list_pending(pb::ListPendingRequest {})
            .await
            .unwrap()
            .into_inner()
            .deliveries;
        if list.first().is_some_and(|d| d.attempts >= 2) || tokio::time::Instant::now() > deadline {
            break list;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].message_id, "01764198309-bbbb");
    assert!(pending[0].attempts >= 2, "{pending:?}");
    assert!(!pending[0].last_error.is_empty());
    assert!(mailer.metric("phone_mailer_retries_total").await >= 2.0);
    assert_eq!(mailer.metric("phone_mailer_queue_depth").await, 1.0);

    mailpit.resume().await;
    let done = mailer
        .settled("01764198309-bbbb", Duration::from_secs(10))
        .await;
    assert_eq!(done.state(), pb::DeliveryState::Sent, "{done:?}");
    // Let any stray retry happen, then count: one email, one pager mail.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let got = mailpit.messages().await;
    assert_eq!(got.len(), 2, "{got:#?}");
    mailer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_5xx_is_not_retried_and_retries_run_out() {
    let files = Files::new();
    // Only example.org is accepted: bo@blocked.example gets 550.
    let mailpit = Mailpit::start_with(&["--smtp-allowed-recipients", "@example\\.org$"]).await;
    let key = files.record("200", "01764198309-cccc", &tone(500.0, 8000));
    let mut mailer = Running::start(mailer::Config {
        smtp: smtp_to(&mailpit),
        ..config(&files)
    })
    .await;
    mailer
        .deliver(request("200", "01764198309-cccc", &key))
        .await;
    let done = mailer
        .settled("01764198309-cccc", Duration::from_secs(10))
        .await;
    assert_eq!(done.state(), pb::DeliveryState::Failed);
    assert_eq!(done.attempts, 1, "a permanent failure is not retried");
    assert!(done.last_error.contains("550"), "{}", done.last_error);
    assert!(files
        .data()
        .join("outbox/failed/01764198309-cccc.json")
        .exists());
    // The failed mail is kept for the operator.
    assert!(files
        .data()
        .join("outbox/mail/01764198309-cccc.email.eml")
        .exists());
    mailer.stop().await;

    // Retries that run out: no server at all, given up after 1 s.
    let files = Files::new();
    let key = files.record("100", "01764198309-dddd", &tone(500.0, 8000));
    let mut mailer = Running::start(mailer::Config {
        smtp: mailer::smtp::SmtpArgs {
            port: free_port(),
            ..smtp_to(&mailpit)
        },
        give_up_after: Duration::from_secs(1),
        ..config(&files)
    })
    .await;
    mailer
        .deliver(request("100", "01764198309-dddd", &key))
        .await;
    let done = mailer
        .settled("01764198309-dddd", Duration::from_secs(10))
        .await;
    assert_eq!(done.state(), pb::DeliveryState::Failed);
    assert!(done.attempts >= 2);
    assert!(done.last_error.starts_with("gave up after"), "{done:?}");
    let text = service_runtime::server::scrape_metrics(mailer.admin)
        .await
        .unwrap();
    assert!(
        text.contains("phone_mailer_failed_total{reason=\"expired\"} 1"),
        "{text}"
    );
    mailer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_or_impossible_requests_are_refused_and_nothing_is_stored() {
    let files = Files::new();
    let key = files.record("100", "01764198309-eeee", &tone(500.0, 8000));
    let mut mailer = Running::start(config(&files)).await;
    let cases = [
        (
            request("100", "../../etc/passwd", &key),
            tonic::Code::InvalidArgument,
        ),
        (request("100", "a/b", &key), tonic::Code::InvalidArgument),
        (request("100", "", &key), tonic::Code::InvalidArgument),
        // Another mailbox's recording, or anything else in the store.
        (
            request("100", "x1", "voicemail/default/200/INBOX/secret.wav49"),
            tonic::Code::InvalidArgument,
        ),
        (
            request("100", "x2", "voicemail/default/100/../../../outbox/x"),
            tonic::Code::InvalidArgument,
        ),
        (request("999", "x3", &key), tonic::Code::NotFound),
        (
            request("300", "x4", "voicemail/default/300/INBOX/x4.wav49"),
            tonic::Code::FailedPrecondition,
        ),
    ];
    for (req, code) in cases {
        let id = req.message_id.clone();
        let status = mailer.client.deliver(req).await.unwrap_err();
        assert_eq!(status.code(), code, "{id}: {status:?}");
    }
    assert!(mailer
        .client
        .list_pending(pb::ListPendingRequest {})
        .await
        .unwrap()
        .into_inner()
        .deliveries
        .is_empty());
    let status = mailer
        .client
        .get_delivery(pb::GetDeliveryRequest {
            message_id: "nothing".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound);

    // Without SMTP (the embedded default) the mail is a .eml file.
    mailer
        .deliver(request("100", "01764198309-eeee", &key))
        .await;
    let done = mailer
        .settled("01764198309-eeee", Duration::from_secs(10))
        .await;
    assert_eq!(done.state(), pb::DeliveryState::Sent);
    let eml =
        std::fs::read_to_string(files.data().join("mail/01764198309-eeee.email.eml")).unwrap();
    assert!(eml.contains("Subject: [Voicemail] 1 from"), "{eml}");
    assert!(eml.contains("msg0000.WAV"));
    assert!(files
        .data()
        .join("mail/01764198309-eeee.pager.eml")
        .exists());
    mailer.stop().await;
}

/// The mailer binary, run as a process (so it can be killed).
fn spawn_mailer(files: &Files, minio: &Minio, mailpit: &Mailpit) -> (Child, u16) {
    let grpc = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_mailer"))
        .arg("--grpc-bind")
        .arg(format!("127.0.0.1:{grpc}"))
        .arg("--admin-bind")
        .arg("127.0.0.1:0")
        .arg("--config-dir")
        .arg(files.conf())
        .arg("--data-dir")
        .arg(files.data())
        .args(["--s3-bucket", &minio.bucket, "--s3-endpoint"])
        .arg(minio.endpoint())
        .args([
            "--s3-path-style",
            "--s3-access-key-id",
            phone_test_support::MINIO_USER,
        ])
        .env(
            "PHONE_S3_SECRET_ACCESS_KEY",
            phone_test_support::MINIO_PASSWORD,
        )
        .args(["--smtp-host", "127.0.0.1", "--smtp-security", "none"])
        .arg("--smtp-port")
        .arg(mailpit.smtp.to_string())
        .args(["--retry-first", "300ms", "--retry-max", "1s"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the mailer starts");
    (child, grpc)
}

async fn connect(port: u16) -> MailerClient<tonic::transport::Channel> {
    for _ in 0..200 {
        if let Ok(client) = MailerClient::connect(format!("http://127.0.0.1:{port}")).await {
            return client;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the mailer did not start");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_mailer_sends_each_pending_delivery_once_after_restart() {
    let files = Files::new();
    let minio = Minio::start("phone").await;
    let mut mailpit = Mailpit::stopped();
    // The recordings in S3, where the voicemail service puts them.
    let s3 = minio.client();
    let mut requests = Vec::new();
    for (i, freq) in [400.0, 700.0, 1000.0].into_iter().enumerate() {
        let id = format!("0176419830{i}-ffff");
        let key = format!("voicemail/default/100/INBOX/{id}.wav49");
        s3.put_object()
            .bucket("phone")
            .key(&key)
            .body(phone_audio::Format::Wav49.encode(&tone(freq, 8000)).into())
            .send()
            .await
            .unwrap();
        requests.push(request("100", &id, &key));
    }

    let (mut first, port) = spawn_mailer(&files, &minio, &mailpit);
    let mut client = connect(port).await;
    for r in &requests {
        let d = client.deliver(r.clone()).await.unwrap().into_inner();
        assert_eq!(d.state(), pb::DeliveryState::Pending);
    }
    assert_eq!(minio.keys("outbox/pending/").await.len(), 3);
    // Let it fail an attempt or two, then kill it outright.
    tokio::time::sleep(Duration::from_millis(800)).await;
    first.kill().unwrap();
    first.wait().unwrap();

    mailpit.resume().await;
    let (mut second, port) = spawn_mailer(&files, &minio, &mailpit);
    let mut client = connect(port).await;
    let got = mailpit.wait_for(6, Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let got_later = mailpit.messages().await;
    assert_eq!(got.len(), 6, "three emails and three pager mails");
    assert_eq!(got_later.len(), 6, "and nothing more");
    let mut ids: Vec<String> = got
        .iter()
        .map(|m| m["MessageID"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 6, "each mail once: {ids:?}");
    for r in &requests {
        let d = client
            .get_delivery(pb::GetDeliveryRequest {
                message_id: r.message_id.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(d.state(), pb::DeliveryState::Sent, "{d:?}");
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !minio.keys("outbox/pending/").await.is_empty() && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(minio.keys("outbox/pending/").await.is_empty());
    assert_eq!(minio.keys("outbox/sent/").await.len(), 3);
    second.kill().unwrap();
    second.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_s3_outage_refuses_new_deliveries_and_delays_stored_ones_without_loss() {
    let files = Files::new();
    let mut minio = Minio::start("phone").await;
    let mut mailpit = Mailpit::stopped();
    let s3 = minio.client();
    let mut requests = Vec::new();
    for id in ["01764198309-gggg", "01764198309-hhhh"] {
        let key = format!("voicemail/default/100/INBOX/{id}.wav49");
        s3.put_object()
            .bucket("phone")
            .key(&key)
            .body(phone_audio::Format::Wav49.encode(&tone(500.0, 8000)).into())
            .send()
            .await
            .unwrap();
        requests.push(request("100", id, &key));
    }
    let mut mailer = Running::start(mailer::Config {
        smtp: smtp_to(&mailpit),
        s3: minio.s3_args(),
        ..config(&files)
    })
    .await;
    mailer.client.deliver(requests[0].clone()).await.unwrap();

    // Storage goes away: a new delivery cannot be stored, so it is refused (the
    // voicemail service retries it); the stored one waits.
    minio.stop();
    let status = mailer
        .client
        .deliver(requests[1].clone())
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    mailpit.resume().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        mailpit.messages().await.is_empty(),
        "the stored mail cannot be read while storage is down"
    );
    assert!(mailer.metric("phone_mailer_storage_errors_total").await >= 1.0);

    minio.resume().await;
    mailer.client.deliver(requests[1].clone()).await.unwrap();
    for r in &requests {
        let done = mailer.settled(&r.message_id, Duration::from_secs(15)).await;
        assert_eq!(done.state(), pb::DeliveryState::Sent, "{done:?}");
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        mailpit.messages().await.len(),
        4,
        "two emails, two pager mails"
    );
    mailer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_finished_before_a_crash_left_its_pending_record_is_not_sent_again() {
    let files = Files::new();
    let mut mailpit = Mailpit::stopped();
    // SMTP is down: the delivery stays pending, its mails stored.
    let mailer = Running::start(mailer::Config {
        smtp: smtp_to(&mailpit),
        ..config(&files)
    })
    .await;
    let id = "01764198320-dddd";
    let key = files.record("100", id, &tone(700.0, 8000));
    let mut client = mailer.client.clone();
    client.deliver(request("100", id, &key)).await.unwrap();
    mailer.stop().await;

    // A sender finished it (its final record is written) and died before removing the
    // pending one.
    let outbox = files.data().join("outbox");
    let pending = outbox.join(format!("pending/{id}.json"));
    let mut record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&pending).unwrap()).unwrap();
    record["state"] = "sent".into();
    std::fs::create_dir_all(outbox.join("sent")).unwrap();
    std::fs::write(
        outbox.join(format!("sent/{id}.json")),
        serde_json::to_vec(&record).unwrap(),
    )
    .unwrap();

    // The next mailer tidies the pending record and sends nothing.
    mailpit.resume().await;
    let mut next = Running::start(mailer::Config {
        smtp: smtp_to(&mailpit),
        ..config(&files)
    })
    .await;
    // (A lookup finds the pending record first: SENT means it is gone.)
    let done = next.settled(id, Duration::from_secs(10)).await;
    assert_eq!(done.state(), pb::DeliveryState::Sent);
    assert!(!pending.exists());
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(mailpit.messages().await.is_empty(), "nothing sent again");
    next.stop().await;
}

/// An SMTP server that answers each connection only after `delay` (a slow relay):
/// a proxy in front of Mailpit.
async fn slow_smtp(mailpit: &Mailpit, delay: Duration) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let upstream = mailpit.smtp;
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                if let Ok(mut server) =
                    tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await
                {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                }
            });
        }
    });
    port
}

/// The drain (what SIGTERM starts) with a send in progress: it finishes, a new
/// delivery is refused, the mailer stops within a second of the send, and a mailer
/// started again on the same outbox sends nothing twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_mailer_finishes_its_send_refuses_new_ones_and_sends_nothing_twice() {
    let files = Files::new();
    let mailpit = Mailpit::start().await;
    let key = files.record("100", "01764198309-dddd", &tone(450.0, 8000));
    let other = files.record("100", "01764198309-eeee", &tone(550.0, 8000));
    let mut smtp = smtp_to(&mailpit);
    smtp.port = slow_smtp(&mailpit, Duration::from_millis(1200)).await;
    smtp.timeout_ms = 5000;
    let mut mailer = Running::start(mailer::Config {
        smtp,
        ..config(&files)
    })
    .await;
    let accepted = mailer
        .deliver(request("100", "01764198309-dddd", &key))
        .await;
    assert_eq!(accepted.state(), pb::DeliveryState::Pending);
    tokio::time::sleep(Duration::from_millis(300)).await;

    // SIGTERM while the relay is slow to answer.
    mailer.shutdown.trigger();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let refused = mailer
        .client
        .deliver(request("100", "01764198309-eeee", &other))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");

    // The send goes on to its end; the mailer stops soon after.
    let mut sent_at = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !mailer.task.is_finished() {
        assert!(tokio::time::Instant::now() < deadline, "the mailer stops");
        if sent_at.is_none() && mailpit.messages().await.len() == 2 {
            sent_at = Some(std::time::Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stopped = std::time::Instant::now();
    (&mut mailer.task).await.unwrap().unwrap();
    assert_eq!(
        mailpit.messages().await.len(),
        2,
        "the email and the pager mail"
    );
    let sent_at = sent_at.unwrap_or(stopped);
    assert!(
        stopped - sent_at < Duration::from_secs(1),
        "the mailer stopped {:?} after its last send",
        stopped - sent_at
    );

    // Started again on the same outbox: the delivery is Sent, and nothing is sent twice.
    let mut again = Running::start(mailer::Config {
        smtp: smtp_to(&mailpit),
        ..config(&files)
    })
    .await;
    assert_eq!(
        again.state("01764198309-dddd").await.state(),
        pb::DeliveryState::Sent
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(mailpit.messages().await.len(), 2, "nothing sent twice");
    again.stop().await;
}
