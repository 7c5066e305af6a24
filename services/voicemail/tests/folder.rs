//! The voicemail service with its embedded default store (a folder): an A-law caller
//! who hangs up instead of pressing `#`.

mod common;

use common::*;
use phone_audio::Law;
use phone_proto::voicemail::v1 as pb;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_a_law_caller_who_hangs_up_leaves_the_message() {
    let service = Service::start(None).await;
    let mut caller = Caller::new("127.0.0.1:9".parse().unwrap()).await;
    caller.law = Law::Alaw;
    let (session, voicemail, mut events) = start_with(
        &service,
        pb::Mode::Leave,
        "13235550100",
        "us",
        caller.addr(),
        pb::Codec::Pcma,
    )
    .await;
    caller.voicemail = voicemail;
    until_after_beep(&mut caller).await;
    assert_eq!(
        caller.payload_types.iter().copied().collect::<Vec<_>>(),
        vec![8],
        "the service speaks A-law"
    );
    let words = speech("Call me when you get this, it is about the invoice.");
    caller.talk(&words).await;
    // The caller hangs up: the router says so with StopSession.
    let mut client = service.client().await;
    client
        .stop_session(pb::StopSessionRequest {
            session_id: session,
        })
        .await
        .unwrap();
    let done = finished(&mut events).await;
    assert_eq!(done.status, pb::VmStatus::Success as i32);
    let path = service.data.path().join(format!(
        "messages/voicemail/default/13235550100/INBOX/{}.wav",
        done.message_id
    ));
    let mut bytes = None;
    for _ in 0..100 {
        if let Ok(b) = std::fs::read(&path) {
            bytes = Some(b);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let stored = phone_audio::wav::decode(&bytes.expect("the message is in the folder")).unwrap();
    let c = best_correlation_fast(&words, &stored, 4000);
    assert!(
        c > 0.85,
        "the stored message correlates {c:.3} with what the caller said"
    );
    // Everything said is there: the buffered tail went in at the hang-up.
    assert!(
        stored.len() + 8 * 120 >= words.len(),
        "{} of {} samples",
        stored.len(),
        words.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_the_mailer_never_accepted_is_announced_after_a_restart() {
    // What a stopped or crashed run leaves: the message's announcement note.
    let data = tempfile::tempdir().unwrap();
    let envelope = voicemail::store::Envelope {
        id: "01795734309-feedfacecafe".into(),
        mailbox: "13235550100".into(),
        context: "default".into(),
        folder: "INBOX".into(),
        caller_id_number: "2065550123".into(),
        caller_id_name: String::new(),
        origtime: 1_795_734_309,
        origdate: String::new(),
        duration: 3,
        channel: String::new(),
        unique_id: String::new(),
        formats: vec!["wav49".into(), "wav".into()],
        trace: None,
    };
    let note = data
        .path()
        .join("messages/voicemail-announce/01795734309-feedfacecafe.json");
    std::fs::create_dir_all(note.parent().unwrap()).unwrap();
    std::fs::write(&note, serde_json::to_vec(&envelope).unwrap()).unwrap();

    let service = Service::start_on(data, None).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while service.told.deliveries.lock().unwrap().is_empty() && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let delivered = service.told.deliveries.lock().unwrap().clone();
    assert_eq!(delivered.len(), 1);
    assert_eq!(delivered[0].message_id, "01795734309-feedfacecafe");
    assert_eq!(
        delivered[0].recordings[0].key,
        "voicemail/default/13235550100/INBOX/01795734309-feedfacecafe.wav49"
    );
    while note.exists() && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(
        !note.exists(),
        "the note goes once the mailer has the message"
    );
}

/// The drain (what SIGTERM starts) during a recording: the caller goes on talking, a
/// new session is refused, the message is stored whole when the caller hangs up, and
/// the service stops within a second of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_voicemail_finishes_the_recording_in_progress_and_takes_no_new_one() {
    let mut service = Service::start(None).await;
    let mut caller = Caller::new("127.0.0.1:9".parse().unwrap()).await;
    let (session, voicemail, mut events) = start(
        &service,
        pb::Mode::Leave,
        "13235550100",
        "us",
        caller.addr(),
    )
    .await;
    caller.voicemail = voicemail;
    until_after_beep(&mut caller).await;
    let words = speech("Please call me back about the drain.");
    let half = words.len() / 2;
    caller.talk(&words[..half]).await;

    service.shutdown.trigger();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let other = Caller::new("127.0.0.1:9".parse().unwrap()).await;
    let refused = service
        .client()
        .await
        .start_session(pb::StartSessionRequest {
            mailbox: "13235550100".into(),
            context: "default".into(),
            mode: pb::Mode::Leave as i32,
            remote: Some(phone_proto::media::v1::Endpoint {
                ip: "127.0.0.1".into(),
                port: u32::from(other.addr().port()),
            }),
            codec: pb::Codec::Pcmu as i32,
            ..Default::default()
        })
        .await;
    assert_eq!(
        refused.map(|_| ()).unwrap_err().code(),
        tonic::Code::Unavailable
    );

    caller.talk(&words[half..]).await;
    let mut client = service.client().await;
    client
        .stop_session(pb::StopSessionRequest {
            session_id: session,
        })
        .await
        .unwrap();
    let done = finished(&mut events).await;
    assert_eq!(done.status, pb::VmStatus::Success as i32);
    let ended = std::time::Instant::now();
    let task = service.task.take().unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(10), task)
        .await
        .expect("the voicemail stops")
        .unwrap()
        .unwrap();
    let stopped_after = ended.elapsed();
    let path = service.data.path().join(format!(
        "messages/voicemail/default/13235550100/INBOX/{}.wav",
        done.message_id
    ));
    let stored =
        phone_audio::wav::decode(&std::fs::read(&path).expect("the message is stored")).unwrap();
    assert!(
        stored.len() + 8 * 120 >= words.len(),
        "{} of {} samples",
        stored.len(),
        words.len()
    );
    // Each half, wherever the pause put it.
    for part in [&words[..half], &words[half..]] {
        let c = best_correlation_fast(part, &stored, words.len() + 4000);
        assert!(c > 0.85, "a half of the message correlates {c:.3}");
    }
    assert!(
        stopped_after < std::time::Duration::from_secs(1),
        "the voicemail stopped {stopped_after:?} after its last recording"
    );
}
