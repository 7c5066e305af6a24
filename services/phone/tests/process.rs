//! `phone` as a process: start-up, health, metrics, drain on SIGTERM, broken configs.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

const SERVICES: [(&str, &str); 5] = [
    ("sip-edge", "phone.edge.v1.Edge"),
    ("router", "phone.router.v1.CallControl"),
    ("media-relay", "phone.media.v1.MediaRelay"),
    ("voicemail", "phone.voicemail.v1.Voicemail"),
    ("mailer", "phone.mailer.v1.Mailer"),
];

struct Phone {
    child: Child,
    services: HashMap<String, (SocketAddr, SocketAddr)>,
    lines: Vec<String>,
}

impl Drop for Phone {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(data_dir: &Path, extra: &[&str]) -> Phone {
    let mut child = Command::new(env!("CARGO_BIN_EXE_phone"))
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--sip-bind", "127.0.0.1:0", "--rtp-ports", "40000-40099"])
        .args(extra)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("phone starts");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line == "ready" => break,
            Ok(line) => lines.push(line),
            Err(_) => panic!("phone did not print 'ready' within 60 s; it printed {lines:?}"),
        }
    }
    let mut services = HashMap::new();
    for line in &lines {
        let mut words = line.split_whitespace();
        let name = words.next().unwrap().to_owned();
        let field = |key: &str| -> SocketAddr {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(key))
                .unwrap_or_else(|| panic!("no {key} in {line}"))
                .parse()
                .unwrap()
        };
        services.insert(name, (field("grpc="), field("admin=")));
    }
    Phone {
        child,
        services,
        lines,
    }
}

async fn health(addr: SocketAddr, service: &str) -> Result<i32, tonic::Status> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.to_owned(),
        })
        .await
        .map(|r| r.into_inner().status)
}

fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response[9..12].parse().unwrap();
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

fn wait_exit(child: &mut Child, within: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

fn sigterm(child: &Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread")]
async fn starts_prints_addresses_and_every_service_is_healthy() {
    let dir = tempfile::tempdir().unwrap();
    let phone = start(dir.path(), &[]);
    let names: Vec<&str> = phone
        .lines
        .iter()
        .map(|l| l.split(' ').next().unwrap())
        .collect();
    assert_eq!(
        names,
        SERVICES.map(|(n, _)| n),
        "one line per service, in order"
    );
    assert!(
        phone.lines[0].contains(" sip=udp+tcp:127.0.0.1:"),
        "{}",
        phone.lines[0]
    );
    assert!(
        phone.lines[2].contains("rtp=0.0.0.0:40000-40099"),
        "{}",
        phone.lines[2]
    );
    // Without --config-dir the shipped example is used: two peers, two contexts, one box.
    assert!(phone.lines[0].contains("peers=2"));
    assert!(phone.lines[1].contains("contexts=2"));
    assert!(phone.lines[3].contains("mailboxes=1"));

    for (name, grpc_name) in SERVICES {
        let (grpc, admin) = phone.services[name];
        for service in ["", grpc_name] {
            assert_eq!(
                health(grpc, service).await.unwrap(),
                ServingStatus::Serving as i32,
                "{name} health of '{service}'"
            );
        }
        let unknown = health(grpc, "no.such.Service").await.unwrap_err();
        assert_eq!(unknown.code(), tonic::Code::NotFound);

        let (status, body) = http_get(admin, "/readyz");
        assert_eq!((status, body.as_str()), (200, "ready\n"), "{name}");
        let (status, metrics) = http_get(admin, "/metrics");
        assert_eq!(status, 200);
        assert!(
            metrics.contains(&format!("phone_build_info_info{{service=\"{name}\"")),
            "{metrics}"
        );
        let started = format!(
            "phone_grpc_server_started_total{{service=\"{name}\",method=\"/grpc.health.v1.Health/Check\"}}"
        );
        let count: u64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix(&started))
            .unwrap_or_else(|| panic!("no {started} in {metrics}"))
            .trim()
            .parse()
            .unwrap();
        assert!(
            count >= 3,
            "phone's own check and ours are counted: {count}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_embedded_mailer_writes_a_voicemails_email_to_the_data_folder() {
    let dir = tempfile::tempdir().unwrap();
    let phone = start(dir.path(), &[]);
    let (grpc, _) = phone.services["mailer"];
    // A recording where phone's voicemail service keeps it.
    let id = "01795734309-0a1b2c3d4e5f";
    let key = format!("voicemail/default/13235550100/INBOX/{id}.wav49");
    let path = dir.path().join("voicemail/messages").join(&key);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, phone_audio::Format::Wav49.encode(&[0i16; 8000])).unwrap();
    let channel = service_runtime::grpc::client_channel(&format!("http://{grpc}")).unwrap();
    let mut client = phone_proto::mailer::v1::mailer_client::MailerClient::new(channel);
    client
        .deliver(phone_proto::mailer::v1::DeliverRequest {
            message_id: id.into(),
            mailbox: "13235550100".into(),
            context: "default".into(),
            folder: "INBOX".into(),
            message_number: 1,
            caller_id_number: "2065550123".into(),
            caller_id_name: String::new(),
            origin_time: 1_795_734_309,
            duration_secs: 1,
            recordings: vec![phone_proto::mailer::v1::Recording {
                format: "wav49".into(),
                key,
            }],
        })
        .await
        .expect("the delivery is stored");
    let eml = dir.path().join(format!("mailer/mail/{id}.email.eml"));
    for _ in 0..100 {
        if eml.exists() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let text = std::fs::read_to_string(&eml).expect("the email is written as a .eml file");
    assert!(
        text.contains("To: \"First Last\" <email@domain.com>"),
        "{text}"
    );
    assert!(text.contains("msg0000.WAV"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_reports_not_serving_then_exits_cleanly_within_the_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let mut phone = start(
        dir.path(),
        &["--drain-delay", "3s", "--drain-deadline", "10s"],
    );
    let (router, router_admin) = phone.services["router"];
    let sent = Instant::now();
    sigterm(&phone.child);

    // During the drain delay the services still answer, and say NOT_SERVING.
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut saw_not_serving = false;
    while Instant::now() < deadline {
        if health(router, "").await.ok() == Some(ServingStatus::NotServing as i32) {
            saw_not_serving = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        saw_not_serving,
        "health never reported NOT_SERVING after SIGTERM"
    );
    let (status, _) = http_get(router_admin, "/readyz");
    assert_eq!(status, 503, "/readyz fails while draining");

    let status = wait_exit(&mut phone.child, Duration::from_secs(15))
        .expect("phone exits after SIGTERM within its drain deadline");
    assert!(status.success(), "clean exit: {status}");
    let took = sent.elapsed();
    assert!(
        took >= Duration::from_secs(3) && took < Duration::from_secs(13),
        "exit came after the drain delay and before the deadline: {took:?}"
    );
}

#[test]
fn broken_config_files_stop_phone_with_file_line_and_message() {
    // What Asterisk itself refuses (config.c); what it only warns about loads (the
    // asterisk-conf tests).
    let cases = [
        (
            "sip.conf",
            "[flowroute]",
            "[flowroute",
            "sip.conf:1: section header has no closing ']'",
        ),
        (
            "extensions.conf",
            "[inbound]",
            "[inbound](nope)",
            "extensions.conf:1: template 'nope' is not defined above this line",
        ),
        (
            "voicemail.conf",
            "[general]",
            "maxlogins=3\n[general]",
            "voicemail.conf:1: 'maxlogins' appears before any [section]",
        ),
        (
            "voicemail.conf",
            "[zonemessages]",
            "[zonemessages",
            "voicemail.conf:14: section header has no closing ']'",
        ),
    ];
    for (file, from, to, expected) in cases {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config");
        std::fs::create_dir(&config).unwrap();
        for (name, text) in phone::EXAMPLE_CONFIG {
            let text = if name == file {
                assert!(text.contains(from), "{file} has {from}");
                text.replacen(from, to, 1)
            } else {
                text.to_owned()
            };
            std::fs::write(config.join(name), text).unwrap();
        }
        let output = Command::new(env!("CARGO_BIN_EXE_phone"))
            .arg("--config-dir")
            .arg(&config)
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(["--sip-bind", "127.0.0.1:0"])
            .output()
            .unwrap();
        assert!(
            !output.status.success(),
            "{file}: exit status {}",
            output.status
        );
        let stderr = String::from_utf8_lossy(&output.stderr);
        let wanted = format!("phone: {}/{expected}", config.display());
        assert!(
            stderr.lines().any(|l| l == wanted),
            "{file}: expected the line\n{wanted}\nin stderr:\n{stderr}"
        );
        assert!(!String::from_utf8_lossy(&output.stdout).contains("ready"));
    }
}

#[test]
fn a_missing_config_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_phone"))
        .arg("--config-dir")
        .arg(dir.path())
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["--sip-bind", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("sip.conf: cannot read:"), "{stderr}");
}

#[test]
fn check_dialplan_lists_what_cannot_run_and_exits() {
    let dir = tempfile::tempdir().unwrap();
    let run = |config: Option<&Path>| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_phone"));
        command
            .arg("--check-dialplan")
            .arg("--data-dir")
            .arg(dir.path().join("data"));
        if let Some(config) = config {
            command.arg("--config-dir").arg(config);
        }
        command.output().unwrap()
    };
    // The shipped example: everything runs.
    let output = run(None);
    assert!(output.status.success());
    assert!(String::from_utf8_lossy(&output.stdout).contains("every line can run"));

    let config = dir.path().join("config");
    std::fs::create_dir(&config).unwrap();
    std::fs::write(
        config.join("extensions.conf"),
        "[c]\nexten => s,1,Playback(x)\nsame => n,Queue(support)\n",
    )
    .unwrap();
    let output = run(Some(&config));
    assert!(!output.status.success());
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        format!("{}/extensions.conf:3: application Queue() is not supported; a call reaching it is hung up\n", config.display())
    );
}
