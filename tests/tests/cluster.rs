//! The seed's phone system in pods (issue #18): `helm install` of the chart with its
//! try-out values into a real one-node cluster built on this machine
//! (`phone_test_support::cluster`), the images from `scripts/build-images`. The edge
//! and the relays run on the node's network at the node's address; the phones
//! (baresip) and the carrier (Kamailio) run on the host, as they would outside a real
//! cluster. The tests of this file take turns: one cluster per machine.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use phone_test_support::cluster::{Cluster, CARRIER_IP, NODE_IP, OUTSIDE_NETNS, PHONES_IP};
use phone_test_support::otlp::Receiver;
use phone_test_support::{free_port, Mailpit, Minio, MINIO_PASSWORD, MINIO_USER};
use phone_tests::baresip::{Phone, PhoneConfig};
use phone_tests::carrier::{Carrier, TRUNK_USER};
use phone_tests::{seconds_of, tone};

const DID: &str = "13235550100";
const DESK_HZ: f64 = 440.0;
const PSTN_HZ: f64 = 700.0;
const NAMESPACE: &str = "phone";

fn chart() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../helm/phone")
}

/// The try-out values with this cluster's images, the carrier on the host at
/// `carrier`, no desk phone in sip.conf (it comes as a Line resource), and traces to
/// `otel`.
fn values(carrier: SocketAddr, otel: &str) -> String {
    format!(
        r#"image: {{repository: docker.io/local/phone, tag: test, pullPolicy: Never}}
minio:
  image: docker.io/local/minio:test
  mcImage: docker.io/local/mc:test
  rootUser: {MINIO_USER}
  rootPassword: {MINIO_PASSWORD}
mailpit:
  image: docker.io/local/mailpit:test
otel:
  endpoint: {otel}
networkPolicy:
  nodeCIDRs: ["{NODE_IP}/32"]
config:
  sipConf: |
    [flowroute]
    host={ip}
    port={port}
    username=12345678
    secret=password
    context=inbound
    type=friend
    nat=no
    qualify=yes
    dtmfmode=rfc2833
    canreinvite=no
    disallow=all
    allow=ulaw
    insecure=port,invite
"#,
        ip = carrier.ip(),
        port = carrier.port(),
    )
}

/// The desk phone as a Line resource, its password and PIN in a Secret.
const DESK_LINE: &str = r#"
apiVersion: v1
kind: Secret
metadata: {name: desk-phone, namespace: phone}
stringData: {password: desk-secret, pin: "1234"}
---
apiVersion: phone.dev/v1alpha1
kind: Line
metadata: {name: desk, namespace: phone}
spec:
  number: "13235550100"
  secretRef: {name: desk-phone, key: password}
  context: localexts
  nat: true
  mailbox: 13235550100@default
"#;

/// Every pod of the release, as `name phase ready hostIP podIP` lines.
fn pods(cluster: &Cluster) -> String {
    cluster
        .kubectl(&[
            "get",
            "pods",
            "-n",
            NAMESPACE,
            "-o",
            r#"jsonpath={range .items[*]}{.metadata.name} {.status.phase} {.status.conditions[?(@.type=="Ready")].status} {.status.hostIP} {.status.podIP}{"\n"}{end}"#,
        ])
        .1
}

/// The relay's counters of packets not forwarded, for failure messages.
async fn relay_drops() -> String {
    let text = service_runtime::server::scrape_metrics(SocketAddr::from((NODE_IP, 9461)))
        .await
        .unwrap_or_default();
    text.lines()
        .filter(|l| l.contains("dropped") && !l.starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The last lines each pod of the release logged, for failure messages.
fn pod_logs(cluster: &Cluster) -> String {
    cluster
        .kubectl(&[
            "logs",
            "-n",
            NAMESPACE,
            "-l",
            "app.kubernetes.io/instance=phone",
            "--all-containers",
            "--prefix",
            "--tail=40",
            "--max-log-requests=20",
        ])
        .1
}

/// Each router pod (Running, terminating ones too) with its calls so far
/// (`phone_router_calls_total`) and its calls running now, read from its metrics.
async fn router_calls(cluster: &Cluster) -> Vec<(String, f64, f64)> {
    let (_, pods) = cluster.kubectl(&[
        "get",
        "pods",
        "-n",
        NAMESPACE,
        "-l",
        "app.kubernetes.io/component=router",
        "-o",
        r#"jsonpath={range .items[*]}{.metadata.name} {.status.podIP}{"\n"}{end}"#,
    ]);
    let mut out = Vec::new();
    for line in pods.lines() {
        let Some((name, Ok(ip))) = line
            .split_once(' ')
            .map(|(n, ip)| (n, ip.parse::<IpAddr>()))
        else {
            continue;
        };
        let Ok(text) = service_runtime::server::scrape_metrics(SocketAddr::new(ip, 9090)).await
        else {
            continue;
        };
        let sample = |metric: &str| phone_tests::sample(&text, metric).unwrap_or(0.0);
        out.push((
            name.to_owned(),
            sample("phone_router_calls_total"),
            sample("phone_router_active_calls"),
        ));
    }
    out
}

/// The router Service's endpoints as `pod=ready/terminating` words.
fn router_endpoints(cluster: &Cluster) -> String {
    cluster
        .kubectl(&[
            "get",
            "endpointslices",
            "-n",
            NAMESPACE,
            "-l",
            "kubernetes.io/service-name=phone-router",
            "-o",
            r#"jsonpath={range .items[*].endpoints[*]}{.targetRef.name}={.conditions.ready}/{.conditions.terminating}{" "}{end}"#,
        ])
        .1
}

/// How many calls the phone has seen end.
fn ended(phone: &Phone) -> usize {
    phone.output().matches(" terminated (duration").count()
}

/// Calls spread over three routers (issue #18, gRPC across replicas): thirty calls
/// from the carrier, each answered by the desk phone; halfway, the router running the call that is up is
/// deleted: that call goes on to its end, and the pod takes no new call.
async fn calls_spread_over_the_routers(
    cluster: &Cluster,
    release: &[&str],
    (pstn, desk): (&Phone, &Phone),
    did_uri: &str,
) {
    let mut upgrade = vec!["upgrade"];
    upgrade.extend_from_slice(release);
    upgrade.extend(["--set", "router.replicas=3"]);
    let (ok, out) = cluster.helm(&upgrade);
    assert!(ok, "helm upgrade to three routers:\n{out}");
    let three = phone_tests::wait_until(Duration::from_secs(30), || async {
        (router_endpoints(cluster).matches("=true/").count() == 3).then_some(())
    })
    .await;
    assert!(three.is_some(), "three ready routers");
    let before: std::collections::HashMap<String, f64> = router_calls(cluster)
        .await
        .into_iter()
        .map(|(pod, calls, _)| (pod, calls))
        .collect();
    assert_eq!(before.len(), 3, "{before:?}");

    let mut deleted: Option<(String, f64)> = None;
    for i in 0..30 {
        let up_before = established(pstn);
        let rings = offered(desk);
        let ends = ended(pstn);
        pstn.dial(did_uri).await;
        let ringing = phone_tests::wait_until(Duration::from_secs(15), || async {
            (offered(desk) > rings).then_some(())
        })
        .await;
        assert!(ringing.is_some(), "call {i} rings:\n{}", pod_logs(cluster));
        desk.answer().await;
        let up = phone_tests::wait_until(Duration::from_secs(15), || async {
            (established(pstn) > up_before).then_some(())
        })
        .await;
        assert!(up.is_some(), "call {i} is answered:\n{}", pod_logs(cluster));
        if i == 15 {
            // The router running this call is deleted while the call is up.
            let running = router_calls(cluster).await;
            let (victim, calls, _) = running
                .iter()
                .find(|(_, _, active)| *active >= 1.0)
                .cloned()
                .expect("a router runs the call");
            let (ok, out) =
                cluster.kubectl(&["delete", "pod", "-n", NAMESPACE, &victim, "--wait=false"]);
            assert!(ok, "{out}");
            // Its endpoint stops being ready; the call goes on meanwhile.
            let gone = phone_tests::wait_until(Duration::from_secs(30), || async {
                let endpoints = router_endpoints(cluster);
                endpoints
                    .contains(&format!("{victim}=false/true"))
                    .then_some(())
            })
            .await;
            assert!(
                gone.is_some(),
                "the deleted router's endpoint: {}",
                router_endpoints(cluster)
            );
            tokio::time::sleep(Duration::from_secs(2)).await;
            assert_eq!(ended(pstn), ends, "the call on the deleted router goes on");
            deleted = Some((victim, calls));
        }
        // A second of conversation.
        tokio::time::sleep(Duration::from_secs(1)).await;
        pstn.hangup().await;
        let down = phone_tests::wait_until(Duration::from_secs(10), || async {
            (ended(pstn) > ends).then_some(())
        })
        .await;
        assert!(
            down.is_some(),
            "call {i} ends:\nPSTN:\n{}\nDESK:\n{}\n{}",
            pstn.output(),
            desk.output(),
            pod_logs(cluster)
        );
    }

    let (victim, victim_calls) = deleted.expect("a router was deleted");
    let after = router_calls(cluster).await;
    let mut ran: Vec<(String, f64)> = before
        .iter()
        .map(|(pod, calls)| {
            let now = after
                .iter()
                .find(|(p, _, _)| p == pod)
                .map(|(_, c, _)| *c)
                .unwrap_or(victim_calls);
            (pod.clone(), now - calls)
        })
        .collect();
    ran.sort_by(|a, b| a.0.cmp(&b.0));
    eprintln!("calls per router: {ran:?}, after: {after:?}");
    for (pod, calls) in &ran {
        assert!(*calls >= 5.0, "{pod} ran {calls} of 30 calls: {ran:?}");
    }
    // The deleted router took no call after it was deleted (while it drained).
    if let Some((_, calls, active)) = after.iter().find(|(p, _, _)| *p == victim) {
        assert_eq!(*calls, victim_calls, "the deleted router took no new call");
        assert_eq!(*active, 0.0, "and finished its own");
    }
    // Every call ran on some router: the three, and the deleted one's replacement.
    let total: f64 = ran.iter().map(|(_, c)| c).sum::<f64>()
        + after
            .iter()
            .filter(|(p, _, _)| !before.contains_key(p))
            .map(|(_, c, _)| c)
            .sum::<f64>();
    assert_eq!(total, 30.0, "{ran:?} {after:?}");
}

/// Restarts a Deployment of the release (`kubectl rollout restart`), waiting for the
/// rollout: the new pods are Ready and the old ones are terminating or gone.
fn rollout(cluster: &Cluster, component: &str) {
    let deployment = format!("deployment/phone-{component}");
    let (ok, out) = cluster.kubectl(&["rollout", "restart", "-n", NAMESPACE, &deployment]);
    assert!(ok, "rollout restart {component}: {out}");
    let (ok, out) = cluster.kubectl(&[
        "rollout",
        "status",
        "-n",
        NAMESPACE,
        &deployment,
        "--timeout=180s",
    ]);
    assert!(ok, "rollout of {component}: {out}\n{}", pods(cluster));
}

/// The pods of one component, terminating ones too.
fn component_pods(cluster: &Cluster, component: &str) -> Vec<String> {
    cluster
        .kubectl(&[
            "get",
            "pods",
            "-n",
            NAMESPACE,
            "-l",
            &format!("app.kubernetes.io/component={component}"),
            "-o",
            r#"jsonpath={range .items[*]}{.metadata.name}{"\n"}{end}"#,
        ])
        .1
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Each relay as it publishes itself (its own EndpointSlice): pod, ready, terminating,
/// and the calls it forwards now (`phone_media_sessions_active` at its admin port).
async fn relays(cluster: &Cluster) -> Vec<(String, bool, bool, f64)> {
    let (_, text) = cluster.kubectl(&[
        "get",
        "endpointslices",
        "-n",
        NAMESPACE,
        "-l",
        "kubernetes.io/service-name=phone-media-relay",
        "-o",
        r#"jsonpath={range .items[*]}{.endpoints[0].targetRef.name} {.endpoints[0].conditions.ready} {.endpoints[0].conditions.terminating} {.ports[?(@.name=="admin")].port}{"\n"}{end}"#,
    ]);
    let mut out = Vec::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [pod, ready, terminating, port] = fields[..] else {
            continue;
        };
        let Ok(port) = port.parse::<u16>() else {
            continue;
        };
        let sessions = service_runtime::server::scrape_metrics(SocketAddr::from((NODE_IP, port)))
            .await
            .ok()
            .and_then(|text| phone_tests::sample(&text, "phone_media_sessions_active"))
            .unwrap_or(-1.0);
        out.push((
            pod.to_owned(),
            ready == "true",
            terminating == "true",
            sessions,
        ));
    }
    out
}

/// Waits until the edge has read the Line `name` (its status says so): a REGISTER
/// before that is told to retry.
async fn line_read(cluster: &Cluster, name: &str) {
    cluster
        .kubectl_until(
            &[
                "get",
                "line",
                name,
                "-n",
                NAMESPACE,
                "-o",
                "jsonpath={.status.observedGeneration}",
            ],
            &["1"],
        )
        .await;
}

/// A phone of the public network, registered at the carrier as `user`, saying the
/// PSTN tone.
fn carrier_phone(carrier: SocketAddr, user: &str, auto_answer: bool) -> Phone {
    Phone::start_in(
        OUTSIDE_NETNS,
        IpAddr::V4(PHONES_IP),
        PhoneConfig {
            aor: format!("{user}@{carrier}"),
            password: user,
            auto_answer,
            mwi: false,
            voice: tone(PSTN_HZ),
        },
    )
}

/// How many incoming calls the phone has been offered.
fn offered(phone: &Phone) -> usize {
    phone.output().matches("ncoming call").count()
}

fn established(phone: &Phone) -> usize {
    phone.output().matches("Call established").count()
}

/// The carrier's caller calls the DID and the desk phone answers: the call is up.
async fn desk_answers(cluster: &Cluster, pstn: &Phone, desk: &Phone, did_uri: &str) {
    let (rings, up) = (offered(desk), established(pstn));
    pstn.dial(did_uri).await;
    let ringing = phone_tests::wait_until(Duration::from_secs(15), || async {
        (offered(desk) > rings).then_some(())
    })
    .await;
    assert!(ringing.is_some(), "the desk rings:\n{}", pod_logs(cluster));
    desk.answer().await;
    let answered = phone_tests::wait_until(Duration::from_secs(15), || async {
        (established(pstn) > up).then_some(())
    })
    .await;
    assert!(
        answered.is_some(),
        "the desk answers:\n{}",
        pod_logs(cluster)
    );
}

/// While the desk phone is on a call, a second caller reaches the voicemail (the desk
/// does not answer it; after the dialplan's 20 s it goes to the mailbox) and hears
/// the beep.
async fn caller_reaches_voicemail(cluster: &Cluster, caller: &Phone, did_uri: &str) {
    let (up, calls) = (established(caller), caller.heard().len());
    caller.dial(did_uri).await;
    let answered = phone_tests::wait_until(Duration::from_secs(45), || async {
        (established(caller) > up).then_some(())
    })
    .await;
    assert!(
        answered.is_some(),
        "the voicemail answers the second caller:\n{}\n{}",
        caller.output(),
        pod_logs(cluster)
    );
    let beep = phone_tests::wait_until(Duration::from_secs(40), || async {
        let heard = caller.heard();
        let this_call = heard.get(calls..).unwrap_or_default().concat();
        (seconds_of(&this_call, 1000.0) >= 0.1).then_some(())
    })
    .await;
    assert!(beep.is_some(), "the second caller hears the beep");
}

/// Checks a watched call's audio: it came, and never stopped for more than 200 ms.
fn no_gap(who: &str, gaps: &phone_tests::baresip::Gaps) {
    eprintln!("{who}: {gaps:?}");
    assert!(gaps.bytes > 8000 * 2 * 10, "{who} heard the call: {gaps:?}");
    assert!(
        gaps.longest <= Duration::from_millis(200),
        "{who} heard nothing for {:?}, {:?} into the call (the watch's own worst poll \
         interval: {:?})",
        gaps.longest,
        gaps.longest_ended_after,
        gaps.worst_poll
    );
}

/// Rollouts with a call up (issues #18, #20): during an answered call with tones both
/// ways, the router, the voicemail, the SIP edge, the mailer and the media relays are
/// restarted one after another; the call's audio never stops for more than 200 ms and its hang-up goes
/// through. A message left while the mailer restarts is emailed exactly once. Then
/// the relays are scaled from 2 to 1 while each carries a call: neither drops, and the
/// draining relay exits when its call ends.
async fn rollouts_drop_no_call(
    cluster: &Cluster,
    release: &[&str],
    (pstn, desk, caller): (&Phone, &Phone, &Phone),
    did_uri: &str,
    mailpit: &phone_test_support::Mailpit,
) {
    let mails = mailpit.messages().await.len();
    let (desk_hears, pstn_hears) = (desk.watch_heard(), pstn.watch_heard());
    let ends = ended(pstn);
    desk_answers(cluster, pstn, desk, did_uri).await;
    let flowing = phone_tests::wait_until(Duration::from_secs(10), || async {
        (desk_hears.now().bytes > 0 && pstn_hears.now().bytes > 0).then_some(())
    })
    .await;
    assert!(flowing.is_some(), "the call's audio flows both ways");
    let old_relays = component_pods(cluster, "media-relay");

    // The edge too (issue #20): its pod is replaced (Recreate) after the drain
    // deadline, which hands the answered call over; the new pod takes it from the
    // state it finds on the node.
    for component in ["router", "voicemail", "sip-edge"] {
        rollout(cluster, component);
        assert_eq!(
            ended(pstn),
            ends,
            "the call goes on after the {component}'s rollout"
        );
    }

    // The mailer restarts while a message is left: it is emailed once.
    caller_reaches_voicemail(cluster, caller, did_uri).await;
    let deployment = "deployment/phone-mailer";
    let (ok, out) = cluster.kubectl(&["rollout", "restart", "-n", NAMESPACE, deployment]);
    assert!(ok, "{out}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    caller.hangup().await;
    let (ok, out) = cluster.kubectl(&[
        "rollout",
        "status",
        "-n",
        NAMESPACE,
        deployment,
        "--timeout=180s",
    ]);
    assert!(ok, "rollout of the mailer: {out}");
    let got = mailpit.wait_for(mails + 1, Duration::from_secs(60)).await;
    assert_eq!(
        got.len(),
        mails + 1,
        "the message is emailed\n{}",
        pod_logs(cluster)
    );
    // And only once: the old mailer has drained and exited, the new one holds the
    // outbox.
    let one = phone_tests::wait_until(Duration::from_secs(90), || async {
        (component_pods(cluster, "mailer").len() == 1).then_some(())
    })
    .await;
    assert!(one.is_some(), "the old mailer exits: {}", pods(cluster));
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        mailpit.messages().await.len(),
        mails + 1,
        "the message is emailed exactly once"
    );
    assert_eq!(
        ended(pstn),
        ends,
        "the call goes on after the mailer's rollout"
    );

    // The relays: the new one starts beside the old (another port slot on the node);
    // the old one keeps forwarding the call.
    rollout(cluster, "media-relay");
    let now = relays(cluster).await;
    let draining: Vec<_> = now
        .iter()
        .filter(|(pod, ..)| old_relays.contains(pod))
        .collect();
    assert!(
        matches!(draining[..], [(_, false, true, sessions)] if *sessions >= 1.0),
        "the old relay drains with the call: {now:?}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let desk_ends = ended(desk);
    pstn.hangup().await;
    let down = phone_tests::wait_until(Duration::from_secs(10), || async {
        (ended(pstn) > ends && ended(desk) > desk_ends).then_some(())
    })
    .await;
    assert!(
        down.is_some(),
        "the hang-up reaches the desk:\n{}\n{}",
        desk.output(),
        pod_logs(cluster)
    );
    no_gap("the desk", &desk_hears.stop());
    no_gap("the caller", &pstn_hears.stop());
    // Its call ended, the old relay exits.
    let exited = phone_tests::wait_until(Duration::from_secs(30), || async {
        let pods = component_pods(cluster, "media-relay");
        (!pods.iter().any(|p| old_relays.contains(p))).then_some(())
    })
    .await;
    assert!(
        exited.is_some(),
        "the drained relay exits: {}",
        pods(cluster)
    );

    // Two relays, a call on each; down to one: neither call drops.
    let mut upgrade = vec!["upgrade"];
    upgrade.extend_from_slice(release);
    upgrade.extend([
        "--reuse-values",
        "--set",
        "mediaRelay.autoscaling.enabled=false",
        "--set",
        "mediaRelay.replicas=2",
    ]);
    let (ok, out) = cluster.helm(&upgrade);
    assert!(ok, "two relays: {out}");
    let two = phone_tests::wait_until(Duration::from_secs(60), || async {
        let now = relays(cluster).await;
        (now.iter()
            .filter(|(_, ready, _, s)| *ready && *s == 0.0)
            .count()
            == 2)
            .then_some(())
    })
    .await;
    assert!(
        two.is_some(),
        "two ready relays: {:?}",
        relays(cluster).await
    );
    let mails = mailpit.messages().await.len();
    let (desk_hears, pstn_hears) = (desk.watch_heard(), pstn.watch_heard());
    let ends = ended(pstn);
    desk_answers(cluster, pstn, desk, did_uri).await;
    caller_reaches_voicemail(cluster, caller, did_uri).await;
    let both = relays(cluster).await;
    assert!(
        both.iter().filter(|(_, _, _, s)| *s == 1.0).count() == 2,
        "a call on each relay: {both:?}"
    );
    let last = upgrade.len() - 1;
    upgrade[last] = "mediaRelay.replicas=1";
    let (ok, out) = cluster.helm(&upgrade);
    assert!(ok, "one relay: {out}");
    let draining = phone_tests::wait_until(Duration::from_secs(30), || async {
        let now = relays(cluster).await;
        now.iter()
            .find(|(_, ready, terminating, s)| !ready && *terminating && *s == 1.0)
            .map(|(pod, ..)| pod.clone())
    })
    .await;
    let Some(draining) = draining else {
        panic!("a relay drains its call: {:?}", relays(cluster).await);
    };
    // The caller goes on speaking for a while after the scale-down.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(ended(pstn), ends, "the desk's call goes on");
    let desk_ends = ended(desk);
    caller.hangup().await;
    pstn.hangup().await;
    let down = phone_tests::wait_until(Duration::from_secs(10), || async {
        (ended(pstn) > ends && ended(desk) > desk_ends).then_some(())
    })
    .await;
    assert!(
        down.is_some(),
        "the desk's call ends:\n{}",
        pod_logs(cluster)
    );
    no_gap("the desk, relays 2 to 1", &desk_hears.stop());
    no_gap("the caller, relays 2 to 1", &pstn_hears.stop());
    let exited = phone_tests::wait_until(Duration::from_secs(30), || async {
        (!component_pods(cluster, "media-relay").contains(&draining)).then_some(())
    })
    .await;
    assert!(
        exited.is_some(),
        "the drained relay {draining} exits: {}",
        pods(cluster)
    );
    // The second caller's message, over the scale-down, holds its voice.
    let got = mailpit.wait_for(mails + 1, Duration::from_secs(60)).await;
    assert_eq!(got.len(), mails + 1, "the second message is emailed");
    let id = got[0]["ID"].as_str().unwrap().to_owned();
    let mail = mailpit.message(&id).await;
    let attachment = &mail["Attachments"][0];
    let bytes = mailpit
        .part(&id, attachment["PartID"].as_str().unwrap())
        .await;
    let attached = phone_audio::wav::decode(&bytes).unwrap();
    let voice = seconds_of(&attached, PSTN_HZ);
    assert!(
        voice >= 5.0,
        "the message holds the caller across the scale-down: {voice} s"
    );
}

/// A second line for the load: SIPp's built-in UAS answers its calls.
const LOAD_LINE: &str = r#"
apiVersion: v1
kind: Secret
metadata: {name: load-line, namespace: phone}
stringData: {password: load-secret}
---
apiVersion: phone.dev/v1alpha1
kind: Line
metadata: {name: load, namespace: phone}
spec:
  number: "13235550199"
  secretRef: {name: load-line, key: password}
  context: localexts
"#;

/// A SIPp process in the outside world's network namespace, ended with the test; its
/// errors and final screen go to files of its own.
struct Sipp {
    child: std::process::Child,
    dir: tempfile::TempDir,
}

impl Sipp {
    fn spawn(args: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let child = std::process::Command::new("ip")
            .args(["netns", "exec", OUTSIDE_NETNS, "sipp"])
            .args(args)
            .args(["-nostdin", "-trace_err", "-trace_screen"])
            .arg("-error_file")
            .arg(dir.path().join("errors"))
            .arg("-screen_file")
            .arg(dir.path().join("screen"))
            .current_dir(dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("SIPp is installed (scripts/install-deps)");
        Sipp { child, dir }
    }

    /// Waits for it to end: its exit status (0: every call succeeded), and its last
    /// screen and errors.
    async fn finish(mut self, within: Duration) -> (Option<i32>, String) {
        let deadline = Instant::now() + within;
        let status = loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                break status.code();
            }
            if Instant::now() > deadline {
                break None;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let read =
            |name: &str| std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
        let errors = read("errors");
        let errors: Vec<&str> = errors.lines().take(20).collect();
        (status, format!("{}\n{}", read("screen"), errors.join("\n")))
    }
}

impl Drop for Sipp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Each pod's memory with `calls` calls up (BENCHMARKS.md): SIPp, the field's load
/// generator, calls the second line from the trunk's address at 20 calls/s and holds
/// each call 20 s (signalling through the edge, a router and a relay session each;
/// no RTP); SIPp's built-in UAS, registered as that line, answers.
async fn memory_with_calls_up(cluster: &Cluster, calls: usize) {
    cluster.apply(LOAD_LINE);
    line_read(cluster, "load").await;
    let scenarios = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("sipp");
    let edge = format!("{NODE_IP}:5060");
    let uas_port = free_port().to_string();
    let phones = PHONES_IP.to_string();
    let _uas = Sipp::spawn(&["-sn", "uas", "-i", &phones, "-p", &uas_port]);
    let contact = format!("{PHONES_IP}:{uas_port}");
    let register = Sipp::spawn(&[
        &edge,
        "-sf",
        scenarios.join("register.xml").to_str().unwrap(),
        "-s",
        "13235550199",
        "-au",
        "13235550199",
        "-ap",
        "load-secret",
        "-set",
        "contact",
        &contact,
        "-i",
        &phones,
        "-p",
        &free_port().to_string(),
        "-m",
        "1",
        "-timeout",
        "20s",
    ]);
    let (status, errors) = register.finish(Duration::from_secs(30)).await;
    assert_eq!(status, Some(0), "SIPp registers the load line: {errors}");
    let total = calls.to_string();
    let carrier = CARRIER_IP.to_string();
    let uac = Sipp::spawn(&[
        &edge,
        "-sn",
        "uac",
        "-s",
        "13235550199",
        "-i",
        &carrier,
        "-p",
        &free_port().to_string(),
        "-r",
        "20",
        "-l",
        &total,
        "-m",
        &total,
        "-d",
        "20000",
        "-timeout",
        "120s",
    ]);
    let up = phone_tests::wait_until(Duration::from_secs(30), || async {
        let sessions: f64 = relays(cluster).await.iter().map(|r| r.3.max(0.0)).sum();
        (sessions >= calls as f64).then_some(())
    })
    .await;
    assert!(
        up.is_some(),
        "{calls} calls up: {:?}\n{}",
        relays(cluster).await,
        pod_logs(cluster)
    );
    for pod in cluster.pod_memory(NAMESPACE) {
        eprintln!(
            "memory with {calls} calls up: {} {:.1} MiB working set, {:.1} MiB RSS",
            pod.pod,
            pod.working_set as f64 / 1048576.0,
            pod.rss as f64 / 1048576.0
        );
    }
    let (status, errors) = uac.finish(Duration::from_secs(120)).await;
    assert_eq!(
        status,
        Some(0),
        "SIPp: every call answered and ended: {errors}\n{}",
        pod_logs(cluster)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_runs_in_pods_after_helm_install() {
    let cluster = Cluster::start().await;
    let otlp = Receiver::start_on(IpAddr::V4(NODE_IP)).await;
    let sip = SocketAddr::from((NODE_IP, 5060));
    let carrier = Carrier::start_in(OUTSIDE_NETNS, IpAddr::V4(CARRIER_IP), free_port(), sip);
    carrier.ready().await;
    let values_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(values_file.path(), values(carrier.addr, &otlp.endpoint)).unwrap();
    let tryout = chart().join("examples/values-tryout.yaml");

    // helm install, then every pod Ready.
    let started = Instant::now();
    let chart_dir = chart();
    let release = [
        "phone",
        chart_dir.to_str().unwrap(),
        "--namespace",
        NAMESPACE,
        "-f",
        tryout.to_str().unwrap(),
        "-f",
        values_file.path().to_str().unwrap(),
        "--wait",
        "--timeout",
        "5m",
    ];
    let mut install = vec!["install", "--create-namespace"];
    install.extend_from_slice(&release);
    let (ok, out) = cluster.helm(&install);
    let ready_after = started.elapsed();
    assert!(ok, "helm install --wait:\n{out}\n{}", pods(&cluster));
    eprintln!("helm install to every pod Ready: {ready_after:?}");
    let listed = pods(&cluster);
    let components = [
        "sip-edge",
        "router",
        "media-relay",
        "voicemail",
        "mailer",
        "minio",
        "mailpit",
    ];
    for component in components {
        assert!(
            listed.lines().any(|l| l.contains(component)),
            "a {component} pod:\n{listed}"
        );
    }
    for line in listed.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(fields.get(1..3), Some(&["Running", "True"][..]), "{line}");
        // The edge and the relays on the node's network, at the node's address.
        if line.contains("sip-edge") || line.contains("media-relay") {
            let node = NODE_IP.to_string();
            assert_eq!(
                fields.get(3..5),
                Some(&[&node[..], &node[..]][..]),
                "{line}"
            );
        }
    }

    // Each pod's memory with no call up (BENCHMARKS.md, scripts/bench-cluster).
    for pod in cluster.pod_memory(NAMESPACE) {
        eprintln!(
            "idle memory: {} {:.1} MiB working set, {:.1} MiB RSS",
            pod.pod,
            pod.working_set as f64 / 1048576.0,
            pod.rss as f64 / 1048576.0
        );
    }

    // `helm test`: each service's gRPC health, and OPTIONS to the edge.
    let (ok, out) = cluster.helm(&[
        "test",
        "phone",
        "--namespace",
        NAMESPACE,
        "--logs",
        "--timeout",
        "2m",
    ]);
    let (_, logs) = cluster.kubectl(&["logs", "-n", NAMESPACE, "phone-test"]);
    assert!(ok, "helm test:\n{out}\n{logs}");
    assert_eq!(out.matches("ok      gRPC health").count(), 5, "{out}");
    assert!(
        out.contains("ok      SIP OPTIONS phone-sip-edge:5060: SIP/2.0 200"),
        "{out}"
    );

    // The desk phone as a Line: it registers at the node's address and kubectl shows it.
    cluster.apply(DESK_LINE);
    // The edge has read the Line (it says so in its status) before the phone registers:
    // a REGISTER before that is told to retry, and baresip 1.0 then resubscribes its
    // MWI in a loop.
    line_read(&cluster, "desk").await;
    let desk = Phone::start_in(
        OUTSIDE_NETNS,
        IpAddr::V4(PHONES_IP),
        PhoneConfig {
            aor: format!("{DID}@{sip}"),
            password: "desk-secret",
            auto_answer: false,
            mwi: true,
            voice: tone(DESK_HZ),
        },
    );
    desk.subscribe_mwi().await;
    desk.assert_registers("desk").await;
    cluster
        .kubectl_until(&["get", "lines", "-n", NAMESPACE], &["desk", DID, "true"])
        .await;
    let pstn = carrier_phone(carrier.addr, "pstn", true);
    pstn.assert_registers("pstn").await;
    let did_uri = format!("sip:{DID}@{}", carrier.addr);

    // The carrier calls the DID; the phone rings, is answered, both ends hear the other.
    pstn.dial(&did_uri).await;
    assert!(
        desk.wait_for_output("ncoming call", Duration::from_secs(15))
            .await,
        "the desk phone rings:\n{}\n{}",
        desk.output(),
        carrier.log().join("\n")
    );
    desk.answer().await;
    assert!(
        desk.wait_for_output("Call established", Duration::from_secs(10))
            .await,
        "the desk phone answers:\n{}",
        desk.output()
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    pstn.hangup().await;
    let heard = phone_tests::wait_until(Duration::from_secs(5), || async {
        let desk_got = seconds_of(&desk.heard().concat(), PSTN_HZ);
        let pstn_got = seconds_of(&pstn.heard().concat(), DESK_HZ);
        (desk_got >= 2.0 && pstn_got >= 2.0).then_some((desk_got, pstn_got))
    })
    .await;
    assert!(
        heard.is_some(),
        "both ends hear each other: the desk {} s, the caller {} s\n{}\n{}",
        seconds_of(&desk.heard().concat(), PSTN_HZ),
        seconds_of(&pstn.heard().concat(), DESK_HZ),
        relay_drops().await,
        pod_logs(&cluster)
    );

    calls_spread_over_the_routers(&cluster, &release, (&pstn, &desk), &did_uri).await;

    // Unanswered: the voicemail takes the message; it lands in MinIO, the email with its
    // attachment in Mailpit, and the lamp lights.
    let calls_before = pstn.heard().len();
    pstn.dial(&did_uri).await;
    let up_before = established(&pstn);
    let answered = phone_tests::wait_until(Duration::from_secs(40), || async {
        (established(&pstn) > up_before).then_some(())
    })
    .await;
    assert!(
        answered.is_some(),
        "the voicemail answers:\n{}",
        pstn.output()
    );
    // The greeting, then the beep (1 kHz); then the caller speaks for 3 s.
    let beep = phone_tests::wait_until(Duration::from_secs(40), || async {
        let heard = pstn.heard();
        let this_call = heard.get(calls_before..).unwrap_or_default().concat();
        (seconds_of(&this_call, 1000.0) >= 0.1).then_some(())
    })
    .await;
    assert!(beep.is_some(), "the caller hears the greeting and the beep");
    tokio::time::sleep(Duration::from_secs(3)).await;
    pstn.hangup().await;

    let s3 = cluster
        .port_forward(NAMESPACE, "service/phone-minio", 9000)
        .await;
    let minio = Minio::remote(s3.port, "phone");
    let inbox = format!("voicemail/default/{DID}/INBOX/");
    let keys = phone_tests::wait_until(Duration::from_secs(20), || async {
        let keys = minio.keys(&inbox).await;
        keys.iter().any(|k| k.ends_with(".json")).then_some(keys)
    })
    .await
    .expect("the message lands in MinIO");
    let wav = keys
        .iter()
        .find(|k| k.ends_with(".wav"))
        .expect("its recording");
    let recorded = phone_audio::wav::decode(&minio.get(wav).await).unwrap();
    let got = seconds_of(&recorded, PSTN_HZ);
    assert!(
        got >= 2.0,
        "the message holds the caller: {got} s of {} s\n{}\n{}",
        recorded.len() / 8000,
        relay_drops().await,
        pod_logs(&cluster)
    );

    let web = cluster
        .port_forward(NAMESPACE, "service/phone-mailpit", 8025)
        .await;
    let mailpit = Mailpit::remote(web.port);
    let mails = mailpit.wait_for(1, Duration::from_secs(30)).await;
    assert_eq!(mails.len(), 1, "one email");
    let id = mails[0]["ID"].as_str().unwrap().to_owned();
    let mail = mailpit.message(&id).await;
    assert_eq!(mail["To"][0]["Address"], "email@domain.com");
    let attachment = &mail["Attachments"][0];
    assert_eq!(attachment["FileName"], "msg0000.WAV");
    let bytes = mailpit
        .part(&id, attachment["PartID"].as_str().unwrap())
        .await;
    let attached = phone_audio::wav::decode(&bytes).unwrap();
    assert!(
        seconds_of(&attached, PSTN_HZ) >= 2.0,
        "the attachment holds the caller"
    );
    assert!(
        desk.wait_for_output("Messages-Waiting: yes", Duration::from_secs(20))
            .await,
        "the lamp lights:\n{}",
        desk.output()
    );

    // Rollouts with a call up. A second caller at the carrier leaves messages meanwhile.
    let caller = carrier_phone(carrier.addr, "caller", false);
    caller.assert_registers("caller").await;
    rollouts_drop_no_call(
        &cluster,
        &release,
        (&pstn, &desk, &caller),
        &did_uri,
        &mailpit,
    )
    .await;

    // The phone dials out through the carrier (the trunk's digest, the line's caller
    // ID), and 911.
    for (i, (dialled, expected)) in [("3105550123", "13105550123"), ("911", "911")]
        .iter()
        .enumerate()
    {
        let ends = ended(&pstn);
        desk.dial(&format!("sip:{dialled}@{sip}")).await;
        let seen = phone_tests::wait_until(Duration::from_secs(15), || async {
            let seen = carrier.outbound();
            (seen.len() > i).then_some(seen)
        })
        .await
        .unwrap_or_else(|| panic!("the carrier gets {dialled}:\n{}", carrier.log().join("\n")));
        let call = &seen[i];
        assert_eq!(&call.number, expected, "{call:?}");
        assert_eq!(call.auth_user, TRUNK_USER, "{call:?}");
        assert!(
            call.from_user == DID || call.asserted.contains(DID),
            "the line's caller ID: {call:?}"
        );
        // The PSTN phone answers; the desk phone hangs up; the hang-up reaches the far
        // end through the carrier (the edge's BYE follows the route set Kamailio
        // recorded).
        let answered = phone_tests::wait_until(Duration::from_secs(10), || async {
            (established(&pstn) > 0).then_some(())
        })
        .await;
        assert!(answered.is_some(), "the PSTN answers {dialled}");
        tokio::time::sleep(Duration::from_secs(1)).await;
        desk.hangup().await;
        let down = phone_tests::wait_until(Duration::from_secs(10), || async {
            (ended(&pstn) > ends).then_some(())
        })
        .await;
        assert!(
            down.is_some(),
            "the hang-up of {dialled} reaches the PSTN:\n{}\n{}",
            carrier.log().join("\n"),
            pod_logs(&cluster)
        );
    }

    memory_with_calls_up(&cluster, 100).await;

    // The calls' traces reached the receiver set in the values, from every service.
    let services = phone_tests::wait_until(Duration::from_secs(30), || async {
        let spans = otlp.spans();
        let mut services: Vec<String> = spans.iter().map(|s| s.service.clone()).collect();
        services.sort();
        services.dedup();
        (services.len() >= 5).then_some(services)
    })
    .await;
    assert!(
        services.is_some(),
        "spans from the five services: {:?}",
        otlp.spans()
            .iter()
            .map(|s| &s.service)
            .collect::<std::collections::BTreeSet<_>>()
    );
}
