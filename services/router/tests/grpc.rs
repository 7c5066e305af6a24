//! The router over real gRPC on loopback: the test plays the edge on the call-control
//! stream, for one inbound and one outbound call of the seed; reload; bad streams.

use std::path::{Path, PathBuf};
use std::time::Duration;

use phone_proto::router::v1::call_control_client::CallControlClient;
use phone_proto::router::v1::{
    channel_event, dialplan_command, CallerId, ChannelEvent, CommandDone, DialResult, DialStatus,
    DialplanCommand, HangUp, NewChannel,
};
use service_runtime::Shutdown;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

fn seed_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy/examples/freelancer")
}

struct Running {
    url: String,
    admin: std::net::SocketAddr,
    shutdown: Shutdown,
    task: tokio::task::JoinHandle<Result<(), router::Error>>,
    router: router::service::Router,
}

async fn start(config_dir: &Path, reload: Duration) -> Running {
    // Nothing listens at the voicemail's address: VoiceMail() gets UNAVAILABLE and sets
    // VMSTATUS=FAILED.
    let bound = router::bind(router::Config {
        reload_interval: reload,
        ..router::Config::loopback(config_dir.to_owned())
    })
    .await
    .unwrap();
    let url = format!("http://{}", bound.info().grpc);
    let admin = bound.info().admin;
    let router = bound.router().clone();
    let shutdown = Shutdown::new();
    let task = tokio::spawn(bound.run(shutdown.clone()));
    Running {
        url,
        admin,
        shutdown,
        task,
        router,
    }
}

/// The edge's side of one call.
struct Edge {
    tx: mpsc::Sender<ChannelEvent>,
    commands: tonic::Streaming<DialplanCommand>,
}

impl Edge {
    async fn open(url: &str, new_channel: NewChannel) -> Result<Self, tonic::Status> {
        let channel = service_runtime::grpc::client_channel(url).unwrap();
        let (tx, rx) = mpsc::channel(8);
        tx.send(ChannelEvent {
            event: Some(channel_event::Event::NewChannel(new_channel)),
        })
        .await
        .unwrap();
        let commands = CallControlClient::new(channel)
            .run(ReceiverStream::new(rx))
            .await?
            .into_inner();
        Ok(Self { tx, commands })
    }

    async fn next(&mut self) -> Option<(u64, dialplan_command::Command)> {
        let command = tokio::time::timeout(Duration::from_secs(10), self.commands.message())
            .await
            .expect("a command within 10 s")
            .expect("the stream is healthy")?;
        Some((command.id, command.command.expect("a command")))
    }

    async fn send(&self, event: channel_event::Event) {
        self.tx
            .send(ChannelEvent { event: Some(event) })
            .await
            .unwrap();
    }
}

/// A call from the carrier's number to the seed's DID.
fn carrier_call(channel: &str) -> NewChannel {
    new_channel(channel, "inbound", "13235550100", "13105550199")
}

fn new_channel(channel: &str, context: &str, exten: &str, caller: &str) -> NewChannel {
    NewChannel {
        channel: channel.into(),
        unique_id: "1700000000.1".into(),
        peer: channel[4..channel.len() - 9].into(),
        context: context.into(),
        exten: exten.into(),
        caller_id: Some(CallerId {
            number: caller.into(),
            name: String::new(),
        }),
        call_id: "abc@test".into(),
        codecs: vec!["ulaw".into()],
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn inbound_and_outbound_calls_over_the_call_control_stream() {
    let router = start(&seed_dir(), Duration::ZERO).await;

    // Inbound from the carrier: the phone is dialled for 20 s and answers.
    let mut edge = Edge::open(&router.url, carrier_call("SIP/flowroute-00000001"))
        .await
        .unwrap();
    let (id, command) = edge.next().await.unwrap();
    let dialplan_command::Command::Dial(dial) = command else {
        panic!("{command:?}")
    };
    assert_eq!(dial.targets.len(), 1);
    assert_eq!(
        (
            dial.targets[0].technology.as_str(),
            dial.targets[0].peer.as_str(),
            dial.targets[0].number.as_str()
        ),
        ("SIP", "13235550100", "")
    );
    assert_eq!(dial.timeout_secs, 20);
    assert_eq!(dial.caller_id.unwrap().number, "13105550199");
    edge.send(channel_event::Event::DialResult(DialResult {
        command_id: id,
        status: DialStatus::Answer as i32,
        answered_channel: "SIP/13235550100-00000002".into(),
        sip_status: 200,
        answered_secs: 30,
    }))
    .await;
    let (_, command) = edge.next().await.unwrap();
    assert!(
        matches!(command, dialplan_command::Command::Hangup(h) if h.cause == 16),
        "{command:?}"
    );
    assert!(
        edge.next().await.is_none(),
        "the router closes the stream when the call ends"
    );

    // Outbound from the phone: 10 digits become 1NXXNXXXXXX to the carrier, as the line.
    let mut edge = Edge::open(
        &router.url,
        new_channel(
            "SIP/13235550100-00000003",
            "localexts",
            "3105550199",
            "13235550100",
        ),
    )
    .await
    .unwrap();
    let (id, command) = edge.next().await.unwrap();
    let dialplan_command::Command::Dial(dial) = command else {
        panic!("{command:?}")
    };
    assert_eq!(
        (
            dial.targets[0].peer.as_str(),
            dial.targets[0].number.as_str()
        ),
        ("flowroute", "13105550199")
    );
    assert_eq!(dial.caller_id.unwrap().number, "13235550100");
    edge.send(channel_event::Event::DialResult(DialResult {
        command_id: id,
        status: DialStatus::Busy as i32,
        ..Default::default()
    }))
    .await;
    let (_, command) = edge.next().await.unwrap();
    assert!(
        matches!(command, dialplan_command::Command::Hangup(_)),
        "{command:?}"
    );
    assert!(edge.next().await.is_none());

    router.shutdown.trigger();
    router.task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn voicemail_unreachable_and_caller_hang_up() {
    let router = start(&seed_dir(), Duration::ZERO).await;
    let mut edge = Edge::open(&router.url, carrier_call("SIP/flowroute-00000004"))
        .await
        .unwrap();
    let (id, _) = edge.next().await.unwrap();
    edge.send(channel_event::Event::DialResult(DialResult {
        command_id: id,
        status: DialStatus::Noanswer as i32,
        ..Default::default()
    }))
    .await;
    // VoiceMail(): the voicemail service cannot be reached, VMSTATUS=FAILED, the dialplan
    // ends and the caller is hung up rather than left in silence.
    let (_, command) = edge.next().await.unwrap();
    assert!(
        matches!(command, dialplan_command::Command::Hangup(_)),
        "{command:?}"
    );
    assert!(edge.next().await.is_none());

    // A caller hanging up while the phone rings ends the stream.
    let mut edge = Edge::open(&router.url, carrier_call("SIP/flowroute-00000005"))
        .await
        .unwrap();
    edge.next().await.unwrap();
    edge.send(channel_event::Event::HangUp(HangUp {
        cause: 16,
        reason: "BYE".into(),
    }))
    .await;
    assert!(edge.next().await.is_none());
    router.shutdown.trigger();
    router.task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_streams_get_invalid_argument() {
    let router = start(&seed_dir(), Duration::ZERO).await;
    let channel = service_runtime::grpc::client_channel(&router.url).unwrap();
    let (tx, rx) = mpsc::channel(1);
    tx.send(ChannelEvent {
        event: Some(channel_event::Event::CommandDone(CommandDone {
            command_id: 1,
            error: String::new(),
        })),
    })
    .await
    .unwrap();
    let err = CallControlClient::new(channel)
        .run(ReceiverStream::new(rx))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let err = Edge::open(&router.url, NewChannel::default())
        .await
        .err()
        .unwrap();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    router.shutdown.trigger();
    router.task.await.unwrap().unwrap();
}

async fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_changed_dialplan_is_used_by_new_calls_and_running_calls_keep_theirs() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("extensions.conf");
    std::fs::write(
        &conf,
        "[c]\nexten => 100,1,Dial(SIP/old,5)\nsame => n,Dial(SIP/old-again)\n",
    )
    .unwrap();
    let router = start(dir.path(), Duration::from_millis(50)).await;
    let first = router.router.dialplan();

    // A call in progress on the first version.
    let mut running = Edge::open(
        &router.url,
        new_channel("SIP/phone-00000001", "c", "100", "1"),
    )
    .await
    .unwrap();
    let (id, command) = running.next().await.unwrap();
    assert!(matches!(&command, dialplan_command::Command::Dial(d) if d.targets[0].peer == "old"));

    std::fs::write(&conf, "[c]\nexten => 100,1,Dial(SIP/new,5)\n").unwrap();
    wait_for("the reload", || {
        !std::sync::Arc::ptr_eq(&first, &router.router.dialplan())
    })
    .await;

    let mut fresh = Edge::open(
        &router.url,
        new_channel("SIP/phone-00000002", "c", "100", "1"),
    )
    .await
    .unwrap();
    let (_, command) = fresh.next().await.unwrap();
    assert!(
        matches!(&command, dialplan_command::Command::Dial(d) if d.targets[0].peer == "new"),
        "{command:?}"
    );

    // The running call goes on with its own version: priority 2 of the old file.
    running
        .send(channel_event::Event::DialResult(DialResult {
            command_id: id,
            status: DialStatus::Noanswer as i32,
            ..Default::default()
        }))
        .await;
    let (_, command) = running.next().await.unwrap();
    assert!(
        matches!(&command, dialplan_command::Command::Dial(d) if d.targets[0].peer == "old-again"),
        "{command:?}"
    );

    // A file Asterisk refuses (a section header without its ']') is refused and the
    // current dialplan stays.
    let current = router.router.dialplan();
    std::fs::write(&conf, "[c\nexten => 100,1,Dial(SIP/broken)\n").unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !service_runtime::server::scrape_metrics(router.admin)
        .await
        .unwrap()
        .contains("phone_router_dialplan_reloads_total{result=\"failed\"} 1")
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for the failed reload to be counted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        std::sync::Arc::ptr_eq(&current, &router.router.dialplan()),
        "a broken file is not loaded"
    );

    router.shutdown.trigger();
    drop((running, fresh));
    router.task.await.unwrap().unwrap();
}

/// The drain (what SIGTERM starts): a call whose dialplan is running keeps its stream
/// to its end, a new call is refused, and the router stops within a second of the
/// last call's end.
#[tokio::test(flavor = "multi_thread")]
async fn a_draining_router_runs_its_calls_to_their_end_and_takes_no_new_one() {
    let router = start(&seed_dir(), Duration::ZERO).await;
    let mut edge = Edge::open(&router.url, carrier_call("SIP/flowroute-00000011"))
        .await
        .unwrap();
    let (id, command) = edge.next().await.unwrap();
    assert!(
        matches!(command, dialplan_command::Command::Dial(_)),
        "{command:?}"
    );

    router.shutdown.trigger();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let refused = Edge::open(&router.url, carrier_call("SIP/flowroute-00000012")).await;
    assert!(refused.is_err(), "a draining router took a new call");

    // The running call goes on: the Dial's outcome, then the dialplan's next step.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!router.task.is_finished());
    edge.send(channel_event::Event::DialResult(DialResult {
        command_id: id,
        status: DialStatus::Busy as i32,
        ..Default::default()
    }))
    .await;
    let (_, command) = edge.next().await.unwrap();
    assert!(
        matches!(command, dialplan_command::Command::Hangup(_)),
        "{command:?}"
    );
    assert!(edge.next().await.is_none());
    let ended = std::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(10), router.task)
        .await
        .expect("the router stops")
        .unwrap()
        .unwrap();
    assert!(
        ended.elapsed() < Duration::from_secs(1),
        "the router stopped {:?} after its last call",
        ended.elapsed()
    );
}
