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
    std::fs::write(
        dir.join("config"),
        "poll_method\tepoll\n\
         net_interface\t127.0.0.1\n\
         module_path\t/usr/lib/baresip/modules\n\
         module\tg711.so\n\
         module_tmp\tuuid.so\n\
         module_tmp\taccount.so\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("accounts"),
        format!("<sip:13235550100@{edge}>;auth_pass={password};regint=600\n"),
    )
    .unwrap();
    let child = Command::new("baresip")
        .arg("-f")
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
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
