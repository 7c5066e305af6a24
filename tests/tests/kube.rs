//! The phone system's Kubernetes side against a real API server (etcd and
//! kube-apiserver, started by the harness as envtest does): the chart's CRDs install,
//! `kubectl get` shows their printer columns with the status the services write, and
//! `helm install` of the chart with its default values succeeds.

use std::time::Duration;

use kube::api::{Api, Patch, PatchParams};
use phone_kube::{Line, Mailbox};
use phone_test_support::kube::KubeApi;
use phone_tests::wait_until;

fn chart() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../helm/phone")
}

async fn client(api: &KubeApi) -> kube::Client {
    client_of(&api.kubeconfig).await
}

/// A client with the credentials of `kubeconfig`.
async fn client_of(kubeconfig: &std::path::Path) -> kube::Client {
    service_runtime::install_tls_provider();
    let kubeconfig = kube::config::Kubeconfig::read_from(kubeconfig).unwrap();
    let config = kube::Config::from_custom_kubeconfig(
        kubeconfig,
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .unwrap();
    kube::Client::try_from(config).unwrap()
}

/// The columns of `kubectl get` as a table: the header's names, then each row's cells
/// (a blank cell stays a cell: the columns are cut at the header's positions).
fn table(text: &str) -> Vec<Vec<String>> {
    let mut lines = text.lines();
    let header = lines.next().unwrap_or_default();
    let mut starts = Vec::new();
    let mut previous = ' ';
    for (i, c) in header.char_indices() {
        if c != ' ' && previous == ' ' {
            starts.push(i);
        }
        previous = c;
    }
    let cut = |line: &str| -> Vec<String> {
        starts
            .iter()
            .enumerate()
            .map(|(n, &start)| {
                let end = starts
                    .get(n + 1)
                    .copied()
                    .unwrap_or(line.len())
                    .min(line.len());
                line.get(start.min(line.len())..end)
                    .unwrap_or("")
                    .trim()
                    .to_owned()
            })
            .collect()
    };
    std::iter::once(header).chain(lines).map(cut).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_crds_install_and_kubectl_shows_their_printer_columns_with_status() {
    let api = KubeApi::start().await;
    api.install_crds();
    api.apply(
        r#"
apiVersion: phone.dev/v1alpha1
kind: Line
metadata: {name: desk}
spec:
  number: "13235550100"
  secretRef: {name: desk-phone, key: password}
  context: outbound
  nat: true
  callerId: '"Desk" <13235550100>'
  mailbox: 13235550100@default
---
apiVersion: phone.dev/v1alpha1
kind: Mailbox
metadata: {name: desk}
spec:
  box: "13235550100"
  pinRef: {name: desk-phone, key: pin}
  email: email@domain.com
  options: {attach: "yes", tz: central}
"#,
    );

    // A resource the schema refuses: a line without its number or password.
    let (ok, why) = api.try_apply(
        "apiVersion: phone.dev/v1alpha1\nkind: Line\nmetadata: {name: broken}\nspec: {context: outbound}\n",
        &["--dry-run=server"],
    );
    assert!(!ok, "a line without number is refused");
    assert!(why.contains("number") && why.contains("secretRef"), "{why}");

    // The status the edge and the voicemail write, through the status subresource.
    let client = client(&api).await;
    let lines: Api<Line> = Api::namespaced(client.clone(), "default");
    let status = serde_json::json!({"status": {
        "registered": true,
        "contacts": [{"uri": "sip:13235550100@192.0.2.10:5060", "expires": "2026-11-26T23:00:00Z"}],
        "reachable": true,
    }});
    lines
        .patch_status("desk", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
    let mailboxes: Api<Mailbox> = Api::namespaced(client, "default");
    mailboxes
        .patch_status(
            "desk",
            &PatchParams::default(),
            &Patch::Merge(&serde_json::json!({"status": {"new": 2, "old": 5}})),
        )
        .await
        .unwrap();
    let line = lines.get("desk").await.unwrap();
    assert_eq!(line.spec.number, "13235550100");
    assert!(line.status.unwrap().registered);

    let (ok, out) = api.kubectl(&["get", "lines"]);
    assert!(ok, "{out}");
    let rows = table(&out);
    assert_eq!(
        rows[0],
        ["NAME", "NUMBER", "REGISTERED", "CONTACT", "AGE"],
        "{out}"
    );
    assert_eq!(
        rows[1][..4],
        [
            "desk",
            "13235550100",
            "true",
            "sip:13235550100@192.0.2.10:5060"
        ],
        "{out}"
    );
    let (ok, out) = api.kubectl(&["get", "mailboxes"]);
    assert!(ok, "{out}");
    let rows = table(&out);
    assert_eq!(rows[0], ["NAME", "BOX", "NEW", "OLD", "AGE"], "{out}");
    assert_eq!(rows[1][..4], ["desk", "13235550100", "2", "5"], "{out}");
    // The short names and the category work as kubectl users expect.
    let (ok, out) = api.kubectl(&["get", "phone"]);
    assert!(
        ok && out.contains("line.phone.dev/desk") && out.contains("mailbox.phone.dev/desk"),
        "{out}"
    );
}

/// `helm install phone` of the chart with its default values into namespace `phone`.
/// An API server with the chart installed in `phone` (default values).
async fn installed() -> KubeApi {
    let api = KubeApi::start().await;
    let out = helm_install(&api);
    assert!(
        out.status.success(),
        "helm install:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    api
}

/// `kubectl patch --type merge` of `what` (kind and name, then `-n` and namespace if
/// any) with `patch`.
fn merge_patch(api: &KubeApi, what: &[&str], patch: &str) {
    let mut args = vec!["patch"];
    args.extend_from_slice(what);
    args.extend_from_slice(&["--type", "merge", "-p", patch]);
    let (ok, out) = api.kubectl(&args);
    assert!(ok, "kubectl {args:?}: {out}");
}

fn helm_install(api: &KubeApi) -> std::process::Output {
    let helm = phone_test_support::go_binary("helm");
    let home = tempfile::tempdir().unwrap();
    std::process::Command::new(helm)
        .args(["install", "phone"])
        .arg(chart())
        .args(["--namespace", "phone", "--create-namespace", "--wait=false"])
        .arg("--kubeconfig")
        .arg(&api.kubeconfig)
        // helm's caches and config, not the user's
        .env("HELM_CACHE_HOME", home.path().join("cache"))
        .env("HELM_CONFIG_HOME", home.path().join("config"))
        .env("HELM_DATA_HOME", home.path().join("data"))
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_install_with_default_values_succeeds_and_installs_the_crds() {
    let api = KubeApi::start().await;
    let out = helm_install(&api);
    assert!(
        out.status.success(),
        "helm install:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let notes = String::from_utf8_lossy(&out.stdout);
    assert!(notes.contains("STATUS: deployed"), "{notes}");
    assert!(
        notes.contains("kind: Line") && notes.contains("kubectl get lines -n phone"),
        "NOTES tell how to add a Line: {notes}"
    );
    assert!(
        notes.contains("TCP 50061-50064 (the relays' gRPC") && notes.contains("9461-9464"),
        "NOTES list the relays' port slots for the firewall: {notes}"
    );

    let (ok, out) = api.kubectl(&[
        "get",
        "deployments,daemonsets,services",
        "-n",
        "phone",
        "-o",
        "name",
    ]);
    assert!(ok, "{out}");
    for object in [
        "deployment.apps/phone-router",
        "deployment.apps/phone-voicemail",
        "deployment.apps/phone-mailer",
    ] {
        assert!(out.contains(object), "{object} in:\n{out}");
    }
    // The chart's crds/ came with it: lines can be listed (none yet).
    let out = api
        .kubectl_until(&["get", "lines", "-n", "phone"], &[])
        .await;
    assert!(out.is_empty() || out.contains("No resources"), "{out}");
}

/// The sip-edge binary with the seed's sip.conf, using the `Line`s of `namespace` with
/// the credentials of `kubeconfig`.
struct Edge {
    child: std::process::Child,
    sip: std::net::SocketAddr,
    admin: std::net::SocketAddr,
    _dir: tempfile::TempDir,
}

impl Edge {
    fn start(kubeconfig: &std::path::Path, namespace: &str) -> Self {
        Self::start_with(kubeconfig, namespace, None, &[])
    }

    /// With `register_to`, sip.conf gets a `register =>` line to that registrar.
    fn start_with(
        kubeconfig: &std::path::Path,
        namespace: &str,
        register_to: Option<std::net::SocketAddr>,
        extra: &[&str],
    ) -> Self {
        use phone_test_support::free_port;
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("conf");
        std::fs::create_dir_all(&conf).unwrap();
        phone_tests::system::seed_config(&conf, "127.0.0.1:9".parse().unwrap());
        if let Some(registrar) = register_to {
            let path = conf.join("sip.conf");
            let text = format!(
                "[general]\nregister => 13235550100:trunk-secret@{registrar}\n\n{}",
                std::fs::read_to_string(&path).unwrap()
            );
            std::fs::write(&path, text).unwrap();
        }
        let sip = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
        let admin = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
        let child = std::process::Command::new(phone_tests::system::binary("sip-edge"))
            .args(["--config-dir", conf.to_str().unwrap()])
            .args(["--data-dir", dir.path().join("data").to_str().unwrap()])
            .args(["--sip-bind", &sip.to_string()])
            .args(["--grpc-bind", &format!("127.0.0.1:{}", free_port())])
            .args(["--admin-bind", &admin.to_string()])
            .args(["--media-relays", "http://127.0.0.1:9"])
            .args(["--kube-namespace", namespace])
            .args(extra)
            .env("KUBECONFIG", kubeconfig)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .spawn()
            .expect("sip-edge starts");
        Edge {
            child,
            sip,
            admin,
            _dir: dir,
        }
    }

    async fn registrations(&self) -> Option<f64> {
        let text = service_runtime::server::scrape_metrics(self.admin)
            .await
            .ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix("phone_sip_registrations "))
            .and_then(|v| v.trim().parse().ok())
    }
}

impl Drop for Edge {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_resource_lets_a_phone_register_shows_it_and_deleting_it_ends_it() {
    use phone_tests::baresip::{Phone, PhoneConfig};
    let api = KubeApi::start().await;
    api.install_crds();
    api.apply(
        r#"
apiVersion: v1
kind: Secret
metadata: {name: kitchen-phone}
stringData: {password: "k1tchen-secret"}
---
apiVersion: phone.dev/v1alpha1
kind: Line
metadata: {name: kitchen}
spec:
  number: "13235550111"
  secretRef: {name: kitchen-phone, key: password}
  context: outbound
---
apiVersion: phone.dev/v1alpha1
kind: Line
metadata: {name: desk-again}
spec:
  number: "13235550100"
  secretRef: {name: kitchen-phone, key: password}
  context: outbound
"#,
    );
    let edge = Edge::start(&api.kubeconfig, "default");

    // A Line that clashes with a sip.conf peer is reported, not merged.
    let clash = api
        .kubectl_until(
            &[
                "get",
                "line",
                "desk-again",
                "-o",
                "jsonpath={.status.problem}",
            ],
            &["sip.conf"],
        )
        .await;
    assert!(clash.contains("13235550100"), "{clash}");

    // The phone registers with the Line's number and the Secret's password.
    let phone = Phone::start(PhoneConfig::silent(
        format!("13235550111@{}", edge.sip),
        "k1tchen-secret",
    ));
    phone.assert_registers("kitchen").await;
    let out = api
        .kubectl_until(&["get", "lines"], &["kitchen", "true", "sip:13235550111"])
        .await;
    let rows = table(&out);
    let kitchen = rows.iter().find(|r| r[0] == "kitchen").unwrap();
    assert_eq!(kitchen[1..3], ["13235550111", "true"], "{out}");
    assert!(kitchen[3].starts_with("sip:13235550111"), "{out}");
    assert_eq!(edge.registrations().await, Some(1.0));
    let (_, seen) = api.kubectl(&[
        "get",
        "line",
        "kitchen",
        "-o",
        "jsonpath={.status.lastSeen}",
    ]);
    assert!(
        seen.len() == 20 && seen.contains('T') && seen.ends_with('Z'),
        "lastSeen is the REGISTER's time: {seen:?}"
    );

    // Deleting the Line ends the registration.
    let (ok, out) = api.kubectl(&["delete", "line", "kitchen"]);
    assert!(ok, "{out}");
    wait_until(Duration::from_secs(20), || async {
        (edge.registrations().await == Some(0.0)).then_some(())
    })
    .await
    .expect("the registration outlives its Line");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_charts_role_is_what_the_edge_needs_and_no_more() {
    use phone_tests::baresip::{Phone, PhoneConfig};
    let api = installed().await;
    let edge_account = "system:serviceaccount:phone:phone-sip-edge";
    let voicemail_account = "system:serviceaccount:phone:phone-voicemail";
    let mailer_account = "system:serviceaccount:phone:phone-mailer";
    let router_account = "system:serviceaccount:phone:phone-router";
    for (account, verb, resource, allowed) in [
        (router_account, "watch", "configmaps/phone-config", "yes"),
        (router_account, "get", "configmaps/phone-config", "yes"),
        (router_account, "watch", "configmaps", "no"),
        (router_account, "get", "configmaps/another", "no"),
        (router_account, "update", "configmaps/phone-config", "no"),
        (router_account, "get", "secrets", "no"),
        // The voicemail pods that are ready, to spread the sessions over.
        (
            router_account,
            "watch",
            "endpointslices.discovery.k8s.io",
            "yes",
        ),
        (
            router_account,
            "create",
            "endpointslices.discovery.k8s.io",
            "no",
        ),
        (voicemail_account, "watch", "mailboxes.phone.dev", "yes"),
        (
            voicemail_account,
            "patch",
            "mailboxes.phone.dev --subresource=status",
            "yes",
        ),
        (voicemail_account, "get", "secrets", "yes"),
        (voicemail_account, "list", "secrets", "no"),
        (voicemail_account, "watch", "lines.phone.dev", "no"),
        (voicemail_account, "update", "mailboxes.phone.dev", "no"),
        (edge_account, "watch", "mailboxes.phone.dev", "no"),
        (mailer_account, "watch", "mailboxes.phone.dev", "yes"),
        (mailer_account, "get", "secrets", "no"),
        // No S3 in the default values: each mailer's outbox is its own, no Lease.
        (mailer_account, "create", "leases", "no"),
        (
            mailer_account,
            "patch",
            "mailboxes.phone.dev --subresource=status",
            "no",
        ),
    ]
    .into_iter()
    .chain(
        [
            ("watch", "lines.phone.dev", "yes"),
            ("patch", "lines.phone.dev --subresource=status", "yes"),
            ("patch", "lines.phone.dev", "no"),
            ("watch", "trunks.phone.dev", "yes"),
            ("patch", "trunks.phone.dev --subresource=status", "yes"),
            ("update", "trunks.phone.dev", "no"),
            ("get", "secrets", "yes"),
            ("list", "secrets", "no"),
            ("update", "lines.phone.dev", "no"),
            ("delete", "lines.phone.dev", "no"),
            ("get", "mailboxes.phone.dev", "no"),
            ("update", "leases/phone-sip-edge-trunk-registration", "yes"),
            ("update", "leases/another", "no"),
            ("create", "leases", "yes"),
            ("watch", "endpointslices.discovery.k8s.io", "yes"),
            ("create", "endpointslices.discovery.k8s.io", "no"),
            ("create", "pods", "no"),
        ]
        .map(|(verb, resource, allowed)| (edge_account, verb, resource, allowed)),
    ) {
        // `can-i` says yes or no on stdout, and fails for no.
        let out = std::process::Command::new("kubectl")
            .args(["auth", "can-i", verb])
            .args(resource.split(' '))
            .args(["-n", "phone", "--as", account])
            .env("KUBECONFIG", &api.kubeconfig)
            .output()
            .unwrap();
        let answer = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            answer.trim(),
            allowed,
            "{verb} {resource}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // The edge with the account's own token: it reads the Line and its Secret and
    // writes the Line's status, so the Role is enough.
    let (ok, token) = api.kubectl(&["create", "token", "phone-sip-edge", "-n", "phone"]);
    assert!(ok, "{token}");
    let kubeconfig = api.kubeconfig_for("sip-edge", token.trim());
    api.apply(
        r#"
apiVersion: v1
kind: Secret
metadata: {name: hall-phone, namespace: phone}
stringData: {password: "h4ll"}
---
apiVersion: phone.dev/v1alpha1
kind: Line
metadata: {name: hall, namespace: phone}
spec:
  number: "13235550122"
  secretRef: {name: hall-phone, key: password}
  context: outbound
---
apiVersion: phone.dev/v1alpha1
kind: Trunk
metadata: {name: carrier, namespace: phone}
spec:
  host: 127.0.0.1
  port: 9
  ipAddresses: ["192.0.2.0/24"]
  context: inbound
"#,
    );
    let edge = Edge::start_with(
        &kubeconfig,
        "phone",
        None,
        &[
            "--trunk-lease",
            "phone-sip-edge-trunk-registration",
            "--pod-name",
            "phone-sip-edge-0",
        ],
    );
    // The edge has the line once it reports on it.
    api.kubectl_until(
        &[
            "get",
            "line",
            "hall",
            "-n",
            "phone",
            "-o",
            "jsonpath={.status.observedGeneration}",
        ],
        &["1"],
    )
    .await;
    let phone = Phone::start(PhoneConfig::silent(
        format!("13235550122@{}", edge.sip),
        "h4ll",
    ));
    phone.assert_registers("hall").await;
    // and holds the trunk's Lease.
    api.kubectl_until(
        &[
            "get",
            "lease",
            "phone-sip-edge-trunk-registration",
            "-n",
            "phone",
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ],
        &["phone-sip-edge-0"],
    )
    .await;
    api.kubectl_until(
        &["get", "lines", "-n", "phone"],
        &["hall", "true", "sip:13235550122"],
    )
    .await;
    // It reads the Trunk and, holding the Lease, writes its status.
    api.kubectl_until(
        &["get", "trunks", "-n", "phone"],
        &["carrier", "NotRegistering", "phone-sip-edge-0"],
    )
    .await;
}

/// A carrier's registrar that notes where each REGISTER came from. Without
/// credentials it accepts every one; with a user and password it challenges with 401
/// and accepts only a digest answer made with that password (else 403).
struct Registrar {
    addr: std::net::SocketAddr,
    seen: std::sync::Arc<std::sync::Mutex<Vec<std::net::SocketAddr>>>,
    /// REGISTERs whose digest answer was right.
    accepted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Registrar {
    async fn start() -> Self {
        Self::start_with(None).await
    }

    async fn start_with(credentials: Option<(&'static str, &'static str)>) -> Self {
        use std::sync::atomic::Ordering;
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (notes, count) = (seen.clone(), accepted.clone());
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 65535];
            while let Ok((n, from)) = socket.recv_from(&mut buf).await {
                let request = String::from_utf8_lossy(&buf[..n]).into_owned();
                if !request.starts_with("REGISTER ") {
                    continue;
                }
                notes.lock().unwrap().push(from);
                let header = |name: &str| {
                    request
                        .lines()
                        .filter(|l| {
                            l.split(':')
                                .next()
                                .is_some_and(|h| h.trim().eq_ignore_ascii_case(name))
                        })
                        .map(|l| format!("{l}\r\n"))
                        .collect::<String>()
                };
                let (status, extra) = match (credentials, header("Authorization")) {
                    (None, _) => ("200 OK", String::new()),
                    (Some(_), answer) if answer.is_empty() => (
                        "401 Unauthorized",
                        "WWW-Authenticate: Digest realm=\"carrier\", nonce=\"c4rr1er\"\r\n"
                            .to_owned(),
                    ),
                    (Some((user, password)), answer) => {
                        let value = answer.split_once(':').unwrap().1.trim();
                        let right = sip_edge::digest::Credentials::parse(value).is_ok_and(|c| {
                            c.username == user
                                && c.response
                                    == sip_edge::digest::compute_response(
                                        c.algorithm,
                                        user,
                                        "carrier",
                                        password,
                                        "REGISTER",
                                        &c.uri,
                                        "c4rr1er",
                                        c.qop.as_ref().map(|(nc, cnonce)| (*nc, cnonce.as_str())),
                                    )
                        });
                        if right {
                            count.fetch_add(1, Ordering::SeqCst);
                            ("200 OK", String::new())
                        } else {
                            ("403 Forbidden", String::new())
                        }
                    }
                };
                let response = format!(
                    "SIP/2.0 {status}\r\n{}{}{};tag=reg\r\n{}{}{};expires=60\r\n{extra}Content-Length: 0\r\n\r\n",
                    header("Via"),
                    header("From"),
                    header("To").trim_end(),
                    header("Call-ID"),
                    header("CSeq"),
                    header("Contact").trim_end(),
                );
                let _ = socket.send_to(response.as_bytes(), from).await;
            }
        });
        Registrar {
            addr,
            seen,
            accepted,
            task,
        }
    }

    fn sources(&self) -> Vec<std::net::SocketAddr> {
        self.seen.lock().unwrap().clone()
    }

    fn accepted(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for Registrar {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Sends an INVITE for the DID from a new socket on loopback and returns the status
/// codes of the answers that come within two seconds.
async fn invite_statuses(edge: std::net::SocketAddr, tag: &str) -> Vec<u16> {
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let local = socket.local_addr().unwrap();
    let sdp = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n";
    let request = format!(
        "INVITE sip:13235550100@{edge} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bK-{tag}\r\nMax-Forwards: 70\r\nFrom: <sip:15555550123@{local}>;tag=f{tag}\r\nTo: <sip:13235550100@{edge}>\r\nCall-ID: {tag}@carrier\r\nCSeq: 1 INVITE\r\nContact: <sip:15555550123@{local}>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
        sdp.len()
    );
    socket.send_to(request.as_bytes(), edge).await.unwrap();
    let mut statuses = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    let mut buf = vec![0u8; 65535];
    while let Ok(Ok((n, _))) = tokio::time::timeout_at(deadline, socket.recv_from(&mut buf)).await {
        let text = String::from_utf8_lossy(&buf[..n]);
        if let Some(code) = text
            .strip_prefix("SIP/2.0 ")
            .and_then(|rest| rest.get(..3))
            .and_then(|code| code.parse().ok())
        {
            statuses.push(code);
        }
    }
    statuses
}

/// The Trunk `carrier`, registering with the registrar on `port` with the password of
/// the Secret `secret`.
fn carrier_trunk(port: u16, secret: &str) -> String {
    format!(
        "apiVersion: phone.dev/v1alpha1\nkind: Trunk\nmetadata: {{name: carrier, namespace: default}}\nspec: {{host: 127.0.0.1, port: {port}, username: \"12345678\", secretRef: {{name: {secret}, key: password}}, register: true, context: inbound}}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trunk_resource_registers_with_its_secret_shows_its_state_and_its_addresses_calls_are_the_carriers(
) {
    let api = KubeApi::start().await;
    api.install_crds();
    let registrar = Registrar::start_with(Some(("12345678", "tr0nk"))).await;
    let port = registrar.addr.port();
    api.apply(&format!(
        r#"
apiVersion: v1
kind: Secret
metadata: {{name: carrier-old, namespace: default}}
stringData: {{password: "expired"}}
---
apiVersion: v1
kind: Secret
metadata: {{name: carrier-credentials, namespace: default}}
stringData: {{password: "tr0nk"}}
---
apiVersion: phone.dev/v1alpha1
kind: Trunk
metadata: {{name: flowroute, namespace: default}}
spec:
  host: 127.0.0.1
  context: inbound
---
{}"#,
        carrier_trunk(port, "carrier-old")
    ));
    let edge = Edge::start_with(
        &api.kubeconfig,
        "default",
        None,
        &[
            "--trunk-lease",
            "trunk-registration",
            "--pod-name",
            "edge-a",
        ],
    );
    // The carrier refuses the old password: the status says so.
    api.kubectl_until(
        &["get", "trunks"],
        &["carrier", "127.0.0.1", "Rejected", "edge-a"],
    )
    .await;
    let (_, problem) = api.kubectl(&[
        "get",
        "trunk",
        "carrier",
        "-o",
        "jsonpath={.status.problem}",
    ]);
    assert!(problem.contains("403"), "{problem}");
    assert_eq!(registrar.accepted(), 0);
    // A sip.conf peer of the same name is reported, not merged.
    api.kubectl_until(
        &[
            "get",
            "trunk",
            "flowroute",
            "-o",
            "jsonpath={.status.problem}",
        ],
        &["sip.conf defines the peer flowroute"],
    )
    .await;

    // The Trunk names the right Secret: it registers at once, with that password.
    api.apply(&carrier_trunk(port, "carrier-credentials"));
    let out = api.kubectl_until(&["get", "trunks"], &["Registered"]).await;
    let rows = table(&out);
    assert_eq!(rows[0], ["NAME", "HOST", "STATE", "OWNER", "AGE"], "{out}");
    let carrier = rows.iter().find(|r| r[0] == "carrier").unwrap();
    assert_eq!(
        carrier[1..4],
        ["127.0.0.1", "Registered", "edge-a"],
        "{out}"
    );
    assert!(registrar.accepted() >= 1);
    let (_, status) = api.kubectl(&["get", "trunk", "carrier", "-o", "jsonpath={.status}"]);
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert!(status["lastRegistered"].is_string(), "{status}");
    assert_eq!(status["observedGeneration"], 2, "{status}");
    assert_eq!(
        status["addresses"][0],
        format!("127.0.0.1:{port}"),
        "{status}"
    );
    assert!(status.get("problem").is_none(), "{status}");

    // IP authentication: a call from an address no trunk names is challenged; once
    // the Trunk lists it, the call is the carrier's and goes on unchallenged.
    let before = invite_statuses(edge.sip, "before").await;
    assert!(before.contains(&407), "{before:?}");
    merge_patch(
        &api,
        &["trunk", "carrier"],
        r#"{"spec":{"ipAddresses":["127.0.0.1/32"]}}"#,
    );
    api.kubectl_until(
        &[
            "get",
            "trunk",
            "carrier",
            "-o",
            "jsonpath={.status.observedGeneration}",
        ],
        &["3"],
    )
    .await;
    let after = invite_statuses(edge.sip, "after").await;
    assert!(after.contains(&100) && !after.contains(&407), "{after:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_edges_register_the_trunk_once_and_the_lease_moves_when_the_owner_dies() {
    let api = KubeApi::start().await;
    api.install_crds();
    let registrar = Registrar::start().await;
    let lease = |identity: &'static str| {
        [
            "--trunk-lease",
            "trunk-registration",
            "--trunk-lease-duration",
            "3s",
            "--pod-name",
            identity,
        ]
    };
    let mut a = Edge::start_with(
        &api.kubeconfig,
        "default",
        Some(registrar.addr),
        &lease("edge-a"),
    );
    let b = Edge::start_with(
        &api.kubeconfig,
        "default",
        Some(registrar.addr),
        &lease("edge-b"),
    );

    // One edge registers the trunk, and it is the Lease's holder.
    wait_until(Duration::from_secs(20), || {
        std::future::ready((!registrar.sources().is_empty()).then_some(()))
    })
    .await
    .expect("nobody registers the trunk");
    tokio::time::sleep(Duration::from_secs(4)).await;
    let mut sources = registrar.sources();
    sources.sort();
    sources.dedup();
    assert_eq!(sources.len(), 1, "one edge registers: {sources:?}");
    let (owner, other, other_name) = if sources[0] == a.sip {
        ("edge-a", &b, "edge-b")
    } else {
        assert_eq!(sources[0], b.sip);
        ("edge-b", &a, "edge-a")
    };
    let holder = |api: &KubeApi| {
        api.kubectl(&[
            "get",
            "lease",
            "trunk-registration",
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ])
        .1
    };
    assert_eq!(holder(&api), owner);

    // The owner dies without a word; the other edge takes the Lease and registers.
    let other_sip = other.sip;
    if owner == "edge-a" {
        let _ = a.child.kill();
        let _ = a.child.wait();
    } else {
        drop(b);
    }
    wait_until(Duration::from_secs(20), || {
        std::future::ready(registrar.sources().contains(&other_sip).then_some(()))
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "the Lease did not move to {other_name}: holder {}",
            holder(&api)
        )
    });
    assert_eq!(holder(&api), other_name);
    let (_, transitions) = api.kubectl(&[
        "get",
        "lease",
        "trunk-registration",
        "-o",
        "jsonpath={.spec.leaseTransitions}",
    ]);
    assert_eq!(transitions, "1");
}

/// A media relay in this process, on loopback.
async fn relay(ports: &str) -> (std::net::SocketAddr, service_runtime::Shutdown) {
    let mut config = media_relay::Config::loopback(ports.parse().unwrap());
    config.workers = 1;
    let bound = media_relay::bind(config).await.unwrap();
    let grpc = bound.info().grpc;
    let shutdown = service_runtime::Shutdown::new();
    tokio::spawn(bound.run(shutdown.clone()));
    (grpc, shutdown)
}

/// An EndpointSlice of `service`, as the EndpointSlice controller
/// writes it: `ready` and `terminating` per relay pod.
fn relay_slice(service: &str, port: u16, endpoints: &[(&str, bool, bool)]) -> String {
    let endpoints: Vec<serde_json::Value> = endpoints
        .iter()
        .map(|(ip, ready, terminating)| {
            serde_json::json!({
                "addresses": [ip],
                "conditions": {"ready": ready, "serving": true, "terminating": terminating},
            })
        })
        .collect();
    serde_json::json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": format!("{service}-abcde"),
            "namespace": "default",
            "labels": {"kubernetes.io/service-name": service},
        },
        "addressType": "IPv4",
        "ports": [{"name": "grpc", "port": port, "protocol": "TCP"}],
        "endpoints": endpoints,
    })
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_edge_finds_relays_in_endpointslices_and_skips_a_terminating_one() {
    let api = KubeApi::start().await;
    // What the watch finds. The addresses are documentation ones (the API server
    // refuses loopback in EndpointSlices): the test never sends to them.
    let (found_tx, mut found) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(sip_edge::discovery::watch_ready(
        Api::namespaced(client(&api).await, "default"),
        "media-relay".into(),
        "grpc".into(),
        service_runtime::Shutdown::new(),
        move |addrs| {
            let _ = found_tx.send(addrs);
            std::future::ready(())
        },
    ));
    let until = |want: Vec<&'static str>| {
        let want: Vec<std::net::SocketAddr> = want.iter().map(|a| a.parse().unwrap()).collect();
        want
    };
    let mut wait_for = async |want: Vec<std::net::SocketAddr>| {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let got = tokio::time::timeout_at(deadline, found.recv())
                .await
                .unwrap_or_else(|_| panic!("the relays never became {want:?}"))
                .unwrap();
            if got == want {
                return;
            }
        }
    };
    let (a, b) = ("192.0.2.10", "192.0.2.11");
    api.apply(&relay_slice(
        "media-relay",
        50061,
        &[(a, true, false), (b, true, false)],
    ));
    wait_for(until(vec!["192.0.2.10:50061", "192.0.2.11:50061"])).await;
    // The second pod is terminating (draining its calls): it is no longer a relay for
    // new calls.
    api.apply(&relay_slice(
        "media-relay",
        50061,
        &[(a, true, false), (b, false, true)],
    ));
    wait_for(until(vec!["192.0.2.10:50061"])).await;
    // An endpoint not ready yet (starting) is not one either; a slice of another
    // Service is not read.
    api.apply(&relay_slice(
        "router",
        50051,
        &[("192.0.2.20", true, false)],
    ));
    api.apply(&relay_slice(
        "media-relay",
        50061,
        &[(a, false, false), (b, false, true)],
    ));
    wait_for(vec![]).await;

    // The pool takes the set it is given: sessions go only to the relays in it.
    let (first, _stop_first) = relay("26400-26419").await;
    let (second, _stop_second) = relay("26420-26439").await;
    let pool = sip_edge::relays::RelayPool::new(&[]).unwrap();
    pool.set_discovered(vec![first, second]);
    pool.refresh().await;
    assert_eq!(pool.candidates().len(), 2);
    pool.set_discovered(vec![first]);
    pool.refresh().await;
    for i in 0..4 {
        let (relay, _) = pool
            .create_session(phone_proto::media::v1::CreateSessionRequest {
                session_id: format!("call-{i}"),
                call_id: format!("call-{i}"),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(relay.addr, first, "session {i}");
    }
}

/// Sends a REGISTER for `user` from a new socket and returns the answer's first lines.
async fn register_once(edge: std::net::SocketAddr, user: &str) -> String {
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let local = socket.local_addr().unwrap();
    let request = format!(
        "REGISTER sip:{edge} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bK-{user}\r\nMax-Forwards: 70\r\nFrom: <sip:{user}@{edge}>;tag=f{user}\r\nTo: <sip:{user}@{edge}>\r\nCall-ID: {user}@test\r\nCSeq: 1 REGISTER\r\nContact: <sip:{user}@{local}>\r\nExpires: 60\r\nContent-Length: 0\r\n\r\n"
    );
    for _ in 0..50 {
        socket.send_to(request.as_bytes(), edge).await.unwrap();
        let mut buf = vec![0u8; 4096];
        if let Ok(Ok((n, _))) =
            tokio::time::timeout(Duration::from_millis(200), socket.recv_from(&mut buf)).await
        {
            return String::from_utf8_lossy(&buf[..n]).into_owned();
        }
    }
    panic!("no answer to REGISTER from {edge}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn before_the_lines_are_read_an_unknown_user_is_told_to_retry_not_refused() {
    // An API server that does not answer: the Lines are never read.
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        "apiVersion: v1\nkind: Config\nclusters:\n- name: down\n  cluster: {server: 'https://127.0.0.1:9', insecure-skip-tls-verify: true}\nusers:\n- name: u\n  user: {token: t}\ncontexts:\n- name: down\n  context: {cluster: down, user: u}\ncurrent-context: down\n",
    )
    .unwrap();
    let edge = Edge::start(&kubeconfig, "default");
    let unknown = register_once(edge.sip, "13235550199").await;
    assert!(unknown.starts_with("SIP/2.0 503"), "{unknown}");
    assert!(unknown.contains("Retry-After: 5"), "{unknown}");
    // A sip.conf line is served as ever: challenged.
    let known = register_once(edge.sip, "13235550100").await;
    assert!(known.starts_with("SIP/2.0 401"), "{known}");
}

/// The first command the router gives a new channel in `context` at `exten`.
async fn first_command(
    url: &str,
    context: &str,
    exten: &str,
) -> phone_proto::router::v1::dialplan_command::Command {
    use phone_proto::router::v1::call_control_client::CallControlClient;
    use phone_proto::router::v1::{channel_event, ChannelEvent, NewChannel};
    let channel = service_runtime::grpc::client_channel(url).unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(ChannelEvent {
        event: Some(channel_event::Event::NewChannel(NewChannel {
            channel: "SIP/hall-00000001".into(),
            unique_id: "1700000000.1".into(),
            peer: "hall".into(),
            context: context.into(),
            exten: exten.into(),
            call_id: "kube@test".into(),
            codecs: vec!["ulaw".into()],
            ..Default::default()
        })),
    })
    .await
    .unwrap();
    let mut commands = CallControlClient::new(channel)
        .run(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let command = tokio::time::timeout(Duration::from_secs(10), commands.message())
        .await
        .expect("a command within 10 s")
        .unwrap()
        .expect("a command");
    drop(tx);
    command.command.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_router_follows_the_dialplans_configmap_with_its_own_account() {
    use phone_proto::router::v1::dialplan_command::Command;
    let api = installed().await;
    // The router's files as the pod mounts them: the chart's ConfigMap.
    let dir = tempfile::tempdir().unwrap();
    let (ok, mounted) = api.kubectl(&[
        "get",
        "configmap",
        "phone-config",
        "-n",
        "phone",
        "-o",
        "jsonpath={.data.extensions\\.conf}",
    ]);
    assert!(ok && mounted.contains("[inbound]"), "{mounted}");
    std::fs::write(dir.path().join("extensions.conf"), &mounted).unwrap();

    let (ok, token) = api.kubectl(&["create", "token", "phone-router", "-n", "phone"]);
    assert!(ok, "{token}");
    let client = client_of(&api.kubeconfig_for("router", token.trim())).await;
    let bound = router::bind(router::Config::loopback(dir.path().to_owned()))
        .await
        .unwrap();
    let (url, admin) = (format!("http://{}", bound.info().grpc), bound.info().admin);
    let router = bound.router().clone();
    let shutdown = service_runtime::Shutdown::new();
    tokio::spawn(bound.run(shutdown.clone()));
    tokio::spawn(router::resources::follow_configmap(
        Api::namespaced(client, "phone"),
        "phone-config".into(),
        dir.path().to_owned(),
        router.clone(),
        shutdown.clone(),
    ));
    let started = router.dialplan();
    assert!(matches!(
        first_command(&url, "inbound", "13235550100").await,
        Command::Dial(d) if d.targets[0].peer == "13235550100"
    ));

    // A new version, split over two keys (extensions.conf includes the other).
    let dialplan = ["configmap", "phone-config", "-n", "phone"];
    merge_patch(
        &api,
        &dialplan,
        r##"{"data":{"extensions.conf":"#include more.conf\n","more.conf":"[inbound]\nexten => 13235550100,1,Dial(SIP/kitchen,20)\n"}}"##,
    );
    wait_until(Duration::from_secs(20), || {
        std::future::ready((!std::sync::Arc::ptr_eq(&started, &router.dialplan())).then_some(()))
    })
    .await
    .expect("the ConfigMap's change never reached the router");
    let command = first_command(&url, "inbound", "13235550100").await;
    assert!(
        matches!(&command, Command::Dial(d) if d.targets[0].peer == "kitchen"),
        "{command:?}"
    );

    // A version Asterisk would refuse (a header without its ']') is counted and
    // refused; the running dialplan stays.
    let current = router.dialplan();
    merge_patch(
        &api,
        &dialplan,
        r#"{"data":{"more.conf":"[inbound\nexten => 13235550100,1,Dial(SIP/broken)\n"}}"#,
    );
    let metrics = wait_until(Duration::from_secs(20), || async {
        let text = service_runtime::server::scrape_metrics(admin).await.ok()?;
        text.contains("phone_router_dialplan_reloads_total{result=\"failed\"} 1")
            .then_some(text)
    })
    .await
    .expect("the broken version was not counted");
    assert!(std::sync::Arc::ptr_eq(&current, &router.dialplan()));
    // Loaded once: the version the pod started with was not loaded again.
    assert!(
        metrics.contains("phone_router_dialplan_reloads_total{result=\"loaded\"} 1"),
        "{metrics}"
    );
    shutdown.trigger();
}
