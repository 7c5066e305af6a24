//! A real phone: baresip (Debian's package, installed by scripts/install-deps)
//! registers with the seed's credentials (line 13235550100, secret `password`), shows in
//! `ListRegistrations`, and takes its registration back when it stops.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use phone_proto::edge::v1::edge_client::EdgeClient;
use phone_proto::edge::v1::{ListRegistrationsRequest, Registration};
use service_runtime::Shutdown;

fn seed_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy/examples/freelancer")
}

struct Phone(Child);

impl Drop for Phone {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A baresip with one account on the edge at `edge`.
fn baresip(dir: &std::path::Path, edge: std::net::SocketAddr, password: &str) -> Phone {
    baresip_with(dir, edge, password, "", "", false)
}

/// The same with extra config lines and account parameters; `piped` captures its
/// output as it comes, through a pseudo-terminal (util-linux's `script`): on a pipe
/// baresip's output would wait in a buffer until it exits.
fn baresip_with(
    dir: &std::path::Path,
    edge: std::net::SocketAddr,
    password: &str,
    extra: &str,
    account: &str,
    piped: bool,
) -> Phone {
    std::fs::write(
        dir.join("config"),
        format!(
            "poll_method\tepoll\n\
             net_interface\t127.0.0.1\n\
             module_path\t/usr/lib/baresip/modules\n\
             module\tg711.so\n\
             module_tmp\tuuid.so\n\
             module_tmp\taccount.so\n{extra}"
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("accounts"),
        format!("<sip:13235550100@{edge}>;auth_pass={password};regint=600{account}\n"),
    )
    .unwrap();
    let mut command = if piped {
        let mut c = Command::new("script");
        c.args([
            "-qfec",
            &format!("baresip -f {}", dir.display()),
            "/dev/null",
        ]);
        c
    } else {
        let mut c = Command::new("baresip");
        c.arg("-f").arg(dir);
        c
    };
    // script ends when its input does: a pipe held open (in the child handle) keeps it.
    let child = command
        .stdin(if piped { Stdio::piped() } else { Stdio::null() })
        .stdout(if piped { Stdio::piped() } else { Stdio::null() })
        .stderr(Stdio::null())
        .spawn()
        .expect("baresip is installed (scripts/install-deps)");
    Phone(child)
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
