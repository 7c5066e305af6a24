//! The voicemail service against a real MinIO, driven as the router drives it (gRPC)
//! with an RTP peer that talks PCMU and presses keys by RFC 4733.

mod common;

use std::time::Duration;

use common::*;
use phone_proto::voicemail::v1 as pb;

const BOX: &str = "13235550100";
const INBOX: &str = "voicemail/default/13235550100/INBOX/";

async fn wait_for_keys(minio: &Minio, prefix: &str, n: usize) -> Vec<String> {
    for _ in 0..150 {
        let keys = minio.keys(prefix).await;
        if keys.len() >= n {
            return keys;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "{prefix} never held {n} objects: {:?}",
        minio.keys(prefix).await
    );
}

fn sox_decode(bytes: &[u8]) -> Vec<i16> {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("msg.wav");
    let output = dir.path().join("pcm.wav");
    std::fs::write(&input, bytes).unwrap();
    let ok = std::process::Command::new("sox")
        .arg(&input)
        .args(["-e", "signed-integer", "-b", "16"])
        .arg(&output)
        .status()
        .unwrap()
        .success();
    assert!(ok, "sox cannot read the wav49 file");
    phone_audio::wav::decode(&std::fs::read(output).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_left_by_rtp_lands_in_minio_with_its_envelope() {
    let minio = Minio::start(BUCKET).await;
    let service = Service::start(Some(minio.s3_args())).await;
    let mut caller = Caller::new("127.0.0.1:9".parse().unwrap()).await;
    let (_, voicemail, mut events) =
        start(&service, pb::Mode::Leave, BOX, "u", caller.addr()).await;
    caller.voicemail = voicemail;

    let greeting = until_after_beep(&mut caller).await;
    assert!(
        greeting.len() > 8000 * 3,
        "a spoken greeting before the beep"
    );
    let words =
        speech("Hello, this is a test message for the voicemail service. Please call me back.");
    caller.talk(&words).await;
    caller.listen(300).await;
    caller.press('#').await;

    let done = finished(&mut events).await;
    assert_eq!(done.status, pb::VmStatus::Success as i32);
    assert!(!done.message_id.is_empty());
    let keys = wait_for_keys(&minio, INBOX, 3).await;
    let id = &done.message_id;
    assert_eq!(
        keys,
        vec![
            format!("{INBOX}{id}.json"),
            format!("{INBOX}{id}.wav"),
            format!("{INBOX}{id}.wav49")
        ]
    );

    // The wav is the caller's audio.
    let wav = phone_audio::wav::decode(&minio.get(&format!("{INBOX}{id}.wav")).await).unwrap();
    let c = best_correlation_fast(&words, &wav, 4000);
    assert!(
        c > 0.9,
        "the stored wav correlates {c:.3} with what the caller said"
    );
    // The wav49 is GSM that sox reads, and it is the same audio.
    let gsm = sox_decode(&minio.get(&format!("{INBOX}{id}.wav49")).await);
    let c = best_correlation_fast(&words, &gsm, 4000);
    assert!(c > 0.75, "sox's decoding of the wav49 correlates {c:.3}");

    let envelope: serde_json::Value =
        serde_json::from_slice(&minio.get(&format!("{INBOX}{id}.json")).await).unwrap();
    assert_eq!(envelope["id"], id.as_str());
    assert_eq!(envelope["folder"], "INBOX");
    assert_eq!(envelope["caller_id_number"], "2065550123");
    assert_eq!(envelope["caller_id_name"], "Pat Caller");
    assert_eq!(envelope["channel"], "SIP/flowroute-00000001");
    assert_eq!(envelope["formats"], serde_json::json!(["wav49", "wav"]));
    let duration = envelope["duration"].as_u64().unwrap();
    let expected = (words.len() / 8000) as u64;
    assert!(
        (expected..=expected + 2).contains(&duration),
        "duration {duration}"
    );
    assert!(envelope["origtime"].as_i64().unwrap() > 1_700_000_000);

    // The mailer was asked to email it (wav49 first, as format= says), and MWI went on.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let deliveries = service.told.deliveries.lock().unwrap().clone();
    assert_eq!(deliveries.len(), 1);
    assert_eq!(&deliveries[0].message_id, id);
    assert_eq!(deliveries[0].message_number, 1);
    let formats: Vec<_> = deliveries[0]
        .recordings
        .iter()
        .map(|r| r.format.as_str())
        .collect();
    assert_eq!(formats, ["wav49", "wav"]);
    assert_eq!(
        deliveries[0].recordings[0].key,
        format!("{INBOX}{id}.wav49")
    );
    let mwi = service.told.mwi.lock().unwrap().clone();
    assert_eq!(
        mwi.last().map(|m| (m.new_messages, m.old_messages)),
        Some((1, 0))
    );

    // MailboxCounts reads the same from storage.
    let mut client = service.client().await;
    let counts = client
        .mailbox_counts(pb::MailboxCountsRequest {
            mailbox: BOX.into(),
            context: "default".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((counts.new_messages, counts.old_messages), (1, 0));
}

fn tone(freq: f64, secs: usize) -> Vec<i16> {
    (0..secs * 8000)
        .map(|n| (8000.0 * (2.0 * std::f64::consts::PI * freq * n as f64 / 8000.0).sin()) as i16)
        .collect()
}

/// Whether some 100 ms of `heard` is mostly `freq`.
fn heard_tone(heard: &[i16], freq: f64) -> bool {
    heard
        .chunks(800)
        .any(|c| c.len() == 800 && tone_share(c, freq) > 0.8)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn voicemailmain_logs_in_plays_deletes_and_saves_by_dtmf() {
    let minio = Minio::start(BUCKET).await;
    // Two messages in INBOX: a 500 Hz one, then an 800 Hz one.
    let blobs = voicemail::store::Blobs::s3(&minio.s3_args(), BUCKET.into()).await;
    let store = voicemail::store::Store::new(
        blobs,
        vec![phone_audio::Format::Wav49, phone_audio::Format::Wav],
        tempfile::tempdir().unwrap().keep(),
    );
    for (i, freq) in [500.0, 800.0].into_iter().enumerate() {
        let envelope = voicemail::store::Envelope {
            id: format!("0000000000{i}-test"),
            mailbox: BOX.into(),
            context: "default".into(),
            folder: "INBOX".into(),
            caller_id_number: "2065550123".into(),
            caller_id_name: String::new(),
            origtime: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs() as i64
                - 60
                + i as i64,
            origdate: String::new(),
            duration: 2,
            channel: String::new(),
            unique_id: String::new(),
            formats: vec!["wav49".into(), "wav".into()],
            trace: None,
        };
        let kept = store
            .save_message(&envelope, tone(freq, 2).into())
            .await
            .unwrap();
        assert_eq!(kept, voicemail::store::Kept::Stored);
    }
    let service = Service::start(Some(minio.s3_args())).await;
    let mut caller = Caller::new("127.0.0.1:9".parse().unwrap()).await;
    let (_, voicemail, mut events) = start(&service, pb::Mode::Main, BOX, "", caller.addr()).await;
    caller.voicemail = voicemail;

    caller.listen(1500).await; // "Password?"
    caller.keys("1234#").await;
    caller.listen(6000).await; // counts and the main menu
    caller.press('1').await;
    let first = caller.listen(14_000).await;
    let loud = first.iter().filter(|s| s.unsigned_abs() > 500).count();
    let shares: Vec<String> = first
        .chunks(8000)
        .map(|c| format!("{:.2}/{:.2}", tone_share(c, 500.0), tone_share(c, 800.0)))
        .collect();
    assert!(heard_tone(&first, 500.0), "the first message (500 Hz) plays: heard {} samples, {loud} loud, shares per second {shares:?}", first.len());
    assert!(!heard_tone(&first, 800.0));
    caller.press('7').await; // delete it; the next one plays
    let second = caller.listen(14_000).await;
    assert!(
        heard_tone(&second, 800.0),
        "the second message (800 Hz) plays after the delete"
    );
    caller.keys("92").await; // save it to Work
    caller.listen(3000).await;
    caller.press('#').await;
    let done = finished(&mut events).await;
    assert_eq!(done.status, pb::VmStatus::Userexit as i32);

    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(minio.keys(INBOX).await, Vec::<String>::new());
    assert_eq!(
        minio.keys("voicemail/default/13235550100/Old/").await,
        Vec::<String>::new()
    );
    assert_eq!(
        minio.keys("voicemail/default/13235550100/Work/").await,
        vec![
            "voicemail/default/13235550100/Work/00000000001-test.json".to_owned(),
            "voicemail/default/13235550100/Work/00000000001-test.wav".to_owned(),
            "voicemail/default/13235550100/Work/00000000001-test.wav49".to_owned(),
        ]
    );
    let mwi = service.told.mwi.lock().unwrap().clone();
    assert_eq!(
        mwi.last().map(|m| (m.new_messages, m.old_messages)),
        Some((0, 0))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_recorded_while_minio_is_down_arrives_once_when_it_is_back() {
    let mut minio = Minio::start(BUCKET).await;
    let service = Service::start(Some(minio.s3_args())).await;
    let mut caller = Caller::new("127.0.0.1:9".parse().unwrap()).await;
    let (_, voicemail, mut events) =
        start(&service, pb::Mode::Leave, BOX, "us", caller.addr()).await;
    caller.voicemail = voicemail;
    until_after_beep(&mut caller).await;
    minio.stop();
    caller.talk(&tone(440.0, 3)).await;
    caller.press('#').await;
    let done = finished(&mut events).await;
    assert_eq!(done.status, pb::VmStatus::Success as i32);
    // It waits in the spool.
    let spool = service.data.path().join("spool").join(&done.message_id);
    for _ in 0..100 {
        if spool.join("manifest.json").exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        spool.join("manifest.json").exists(),
        "spooled at {}",
        spool.display()
    );
    assert!(service.told.deliveries.lock().unwrap().is_empty());

    minio.resume().await;
    let keys = wait_for_keys(&minio, INBOX, 3).await;
    assert_eq!(keys.iter().filter(|k| k.ends_with(".json")).count(), 1);
    assert!(keys[0].contains(&done.message_id));
    for _ in 0..50 {
        if !service.told.deliveries.lock().unwrap().is_empty() && !spool.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!spool.exists(), "the spool is emptied");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(minio.keys(INBOX).await.len(), 3, "stored once");
    assert_eq!(
        service.told.deliveries.lock().unwrap().len(),
        1,
        "announced once"
    );
}
