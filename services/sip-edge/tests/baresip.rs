//! A real phone: baresip (Debian's package, installed by scripts/install-deps)
//! registers with the seed's credentials (line 13235550100, secret `password`), shows in
//! `ListRegistrations`, and takes its registration back when it stops.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use phone_proto::edge::v1::edge_client::EdgeClient;
use phone_proto::edge::v1::{ListRegistrationsRequest, Registration};
use service_runtime::Shutdown;

mod common;
use common::phone::*;

fn seed_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy/examples/freelancer")
}

async fn registrations(grpc: &str) -> Vec<Registration> {
    let channel = service_runtime::grpc::client_channel(grpc).unwrap();
    EdgeClient::new(channel)
        .list_registrations(ListRegistrationsRequest {
            peer: "13235550100".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .registrations
}

async fn wait_for<T>(what: &str, mut probe: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn baresip_registers_with_the_seed_credentials_and_unregisters() {
    let data = tempfile::tempdir().unwrap();
    let bound = sip_edge::bind(sip_edge::Config::loopback(
        seed_dir(),
        data.path().to_owned(),
    ))
    .await
    .unwrap();
    let info = bound.info();
    let sip = bound.sip_addr().unwrap();
    let grpc = format!("http://{}", info.grpc);
    let shutdown = Shutdown::new();
    let task = tokio::spawn(bound.run(shutdown.clone()));

    // A wrong password never registers.
    let wrong_dir = tempfile::tempdir().unwrap();
    let wrong = baresip(wrong_dir.path(), sip, "not-the-password");

    let phone_dir = tempfile::tempdir().unwrap();
    let mut phone = baresip(phone_dir.path(), sip, "password");
    let registration = wait_for("baresip to register", async || {
        registrations(&grpc).await.into_iter().next()
    })
    .await;
    assert!(
        registration.user_agent.starts_with("baresip"),
        "{registration:?}"
    );
    assert_eq!(registration.transport, "udp");
    assert!(
        registration.source.starts_with("127.0.0.1:"),
        "nat=yes: reached where it came from"
    );
    assert!(
        registration.contact.starts_with("sip:13235550100"),
        "{registration:?}"
    );
    assert!(
        registration.contact.contains("@127.0.0.1:"),
        "{registration:?}"
    );
    assert_eq!(
        registrations(&grpc).await.len(),
        1,
        "only the right password registered"
    );
    drop(wrong);

    // baresip unregisters (Expires: 0) when it is stopped.
    Command::new("kill")
        .args(["-TERM", &phone.0.id().to_string()])
        .status()
        .unwrap();
    wait_for("the registration to be taken back", async || {
        registrations(&grpc).await.is_empty().then_some(())
    })
    .await;
    let _ = phone.0.wait();

    shutdown.trigger();
    task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn baresip_subscribes_to_message_summary_and_its_lamp_lights() {
    use phone_proto::edge::v1::MailboxUpdate;
    use std::io::BufRead;
    let data = tempfile::tempdir().unwrap();
    let bound = sip_edge::bind(sip_edge::Config::loopback(
        seed_dir(),
        data.path().to_owned(),
    ))
    .await
    .unwrap();
    let sip = bound.sip_addr().unwrap();
    let grpc = format!("http://{}", bound.info().grpc);
    let dir = tempfile::tempdir().unwrap();
    let mut phone = baresip_with(
        dir.path(),
        sip,
        "password",
        "module_app\tmwi.so\nmodule_app\tmenu.so\n",
        ";mwi=yes",
        true,
    );
    // baresip 1.0's mwi module runs a start-up timer that subscribes every account
    // already in its list while appending to that list: if registration beats the
    // timer, it resubscribes forever. The edge's socket is bound but not yet served,
    // so the phone's REGISTER waits in it until the timer has long fired.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let shutdown = Shutdown::new();
    let task = tokio::spawn(bound.run(shutdown.clone()));
    let stdout = phone.0.stdout.take().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    wait_for("baresip to register", async || {
        registrations(&grpc).await.into_iter().next()
    })
    .await;

    // New message counts until the phone shows them (its subscription may still be on
    // its way when the first update goes out).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut seen = Vec::new();
    loop {
        let channel = service_runtime::grpc::client_channel(&grpc).unwrap();
        EdgeClient::new(channel)
            .update_mailbox(MailboxUpdate {
                mailbox: "13235550100".into(),
                context: "default".into(),
                new_messages: 1,
                ..Default::default()
            })
            .await
            .unwrap();
        let wait = tokio::time::sleep(Duration::from_millis(500));
        tokio::pin!(wait);
        loop {
            tokio::select! {
                line = rx.recv() => match line {
                    Some(line) => seen.push(line),
                    None => break,
                },
                _ = &mut wait => break,
            }
        }
        let text = seen.join("\n");
        if text.contains("MWI for")
            && text.contains("Messages-Waiting: yes")
            && text.contains("Voice-Message: 1/0")
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "baresip never showed the message: {text}"
        );
    }
    drop(phone);
    shutdown.trigger();
    task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn baresip_answers_a_carrier_call_and_audio_flows_both_ways() {
    use common::*;
    let carrier_socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let system = System::start(carrier_socket.local_addr().unwrap(), None).await;
    let carrier = Peer {
        socket: carrier_socket,
        edge: system.edge_sip,
    };
    let dir = tempfile::tempdir().unwrap();
    let _phone = talking_baresip(dir.path(), system.edge_sip, "", ";answermode=auto");
    let edge_grpc = system.edge_grpc.clone();
    wait_for("baresip to register", async || {
        registrations(&edge_grpc).await.into_iter().next()
    })
    .await;

    let carrier_rtp = rtp_socket().await;
    let offer = invite(
        carrier.addr(),
        &format!("sip:13235550100@{}", system.edge_sip),
        "13105550199",
        "bs1",
        carrier_rtp.local_addr().unwrap(),
        "",
        1,
    );
    carrier.send(&offer).await;
    let ok = carrier.expect_status(200).await;
    carrier
        .send(&in_dialog("ACK", &offer, &ok, 1, system.edge_sip))
        .await;
    let relay_a = sdp_media(&ok);

    // The carrier talks (a sound of its own) while listening for baresip's tone.
    let carrier_rtp = std::sync::Arc::new(carrier_rtp);
    let speaking = common::phone::speak(carrier_rtp.clone(), relay_a, 150);
    assert!(
        heard(&carrier_rtp, 25).await >= 25,
        "the carrier hears baresip's tone through the relay"
    );
    speaking.await.unwrap();
    let sessions = system.relay_session_stats().await;
    let b = sessions[0].b.unwrap();
    assert!(
        b.packets_sent >= 100,
        "the relay sent the carrier's audio to baresip: {b:?}"
    );
    assert!(b.packets_received >= 25, "{b:?}");

    // The carrier hangs up; baresip gets the BYE and answers it.
    carrier
        .send(&in_dialog("BYE", &offer, &ok, 2, system.edge_sip))
        .await;
    carrier.expect_status(200).await;
    wait_for("the media session to end", async || {
        (system.relay_session_stats().await.is_empty()).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn baresip_places_a_call_to_the_carrier() {
    use common::*;
    let carrier_socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let system = System::start(carrier_socket.local_addr().unwrap(), None).await;
    let carrier = Peer {
        socket: carrier_socket,
        edge: system.edge_sip,
    };
    let control = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let control_addr = control.local_addr().unwrap();
    drop(control);
    let dir = tempfile::tempdir().unwrap();
    let _phone = talking_baresip(
        dir.path(),
        system.edge_sip,
        &format!("module_app\tmenu.so\nmodule_app\tctrl_tcp.so\nctrl_tcp_listen\t{control_addr}\n"),
        "",
    );
    let edge_grpc = system.edge_grpc.clone();
    wait_for("baresip to register", async || {
        registrations(&edge_grpc).await.into_iter().next()
    })
    .await;

    // Dial 10 digits through baresip's control socket (netstring JSON).
    let mut stream = tokio::net::TcpStream::connect(control_addr).await.unwrap();
    let command = format!(
        "{{\"command\":\"dial\",\"params\":\"sip:3105550123@{}\",\"token\":\"t1\"}}",
        system.edge_sip
    );
    use tokio::io::AsyncWriteExt;
    stream
        .write_all(format!("{}:{command},", command.len()).as_bytes())
        .await
        .unwrap();

    // The carrier gets 1 + 10 digits with the line's caller ID (baresip answered the
    // edge's 407 on its own) and answers.
    let outbound = carrier.expect("INVITE ").await;
    assert!(
        outbound.starts_with("INVITE sip:13105550123@127.0.0.1 "),
        "{outbound}"
    );
    assert!(header(&outbound, "P-Asserted-Identity")
        .unwrap()
        .contains("13235550100"));
    let carrier_rtp = rtp_socket().await;
    carrier
        .send(&response_to(
            &outbound,
            200,
            "OK",
            "cx",
            &sdp(carrier_rtp.local_addr().unwrap()),
        ))
        .await;
    carrier.expect("ACK ").await;
    assert!(
        heard(&carrier_rtp, 25).await >= 25,
        "the carrier hears baresip's tone"
    );
}
