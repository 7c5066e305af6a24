//! A real one-node Kubernetes cluster on this machine, for the tests that run the
//! project in pods: etcd and kube-apiserver as [`crate::kube`] starts them (with real
//! certificates, as pods verify the API server), kube-controller-manager,
//! kube-scheduler, a kubelet on Debian's containerd and runc with a CNI bridge, kube-proxy
//! (iptables) and CoreDNS. Images come from `scripts/build-images` (docker-archive files
//! imported into containerd); nothing is pulled.
//!
//! The node lives at [`NODE_IP`] on an interface of its own (a bridge with no ports), with the pod and
//! Service ranges routed to it, so that nothing the cluster sends leaves the machine.
//! One cluster runs per machine (the kubelet's cgroups, iptables and the interfaces are
//! the host's): [`Cluster::start`] takes a lock for its life.
//!
//! Teardown runs on drop (after a failed assertion or a panic too) and leaves the host
//! as it was found: every process the cluster started is stopped, the containers' cgroups
//! and mounts are removed, the interfaces deleted, iptables and the sysctls the node
//! changed restored from the snapshot taken before it started, and its folder deleted.
//! That snapshot is kept on disk, so a test process killed outright is cleaned up after
//! by the next start.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::go_binary;
use crate::kube::{kubeconfig_text, log_file, outcome, service_account_key, Kubectl};

/// Where the cluster keeps everything (a fixed place, so that the next start finds what
/// a killed run left).
pub const BASE: &str = "/var/tmp/phone-test-cluster";
/// The node's address, on [`INTERFACE`].
pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 1);
/// The world outside the cluster: a network namespace of its own, joined to the host by
/// a veth pair and routed to the node, where the tests run the phones and the carrier.
/// Their packets then reach the node from their own addresses, as a real deployment's
/// do (a process on the node itself sends to a node address from that same address).
pub const OUTSIDE_NETNS: &str = "phone-outside";
/// The phones' address in [`OUTSIDE_NETNS`].
pub const PHONES_IP: Ipv4Addr = Ipv4Addr::new(10, 250, 1, 2);
/// The carrier's address in [`OUTSIDE_NETNS`].
pub const CARRIER_IP: Ipv4Addr = Ipv4Addr::new(10, 250, 1, 3);
/// The host's end of the veth pair to [`OUTSIDE_NETNS`].
const OUTSIDE_LINK: &str = "phoneout0";
pub const NODE_NAME: &str = "phone-test-node";
/// The node's interface.
const INTERFACE: &str = "phonenode0";
const POD_CIDR: &str = "10.244.0.0/24";
const SERVICE_CIDR: &str = "10.96.0.0/16";
/// The cluster DNS Service's address.
pub const DNS_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
/// The sysctls the node's parts may change, restored at teardown.
const SYSCTLS: &[&str] = &[
    "net/ipv4/ip_forward",
    "net/bridge/bridge-nf-call-iptables",
    "net/bridge/bridge-nf-call-ip6tables",
    "net/ipv4/conf/all/route_localnet",
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
];
/// The tokens of the control plane's parts: (token, user, groups).
const TOKENS: &[(&str, &str, &str)] = &[
    (crate::kube::ADMIN_TOKEN, "admin", "system:masters"),
    ("phone-test-cm", "system:kube-controller-manager", ""),
    ("phone-test-scheduler", "system:kube-scheduler", ""),
    (
        "phone-test-node",
        "system:node:phone-test-node",
        "system:nodes",
    ),
    ("phone-test-proxy", "system:kube-proxy", ""),
];

/// Serialises the clusters of one test process.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub struct Cluster {
    client: Kubectl,
    children: Vec<(String, Child)>,
    _turn: tokio::sync::MutexGuard<'static, ()>,
}

impl std::ops::Deref for Cluster {
    type Target = Kubectl;
    fn deref(&self) -> &Kubectl {
        &self.client
    }
}

fn base(name: &str) -> PathBuf {
    Path::new(BASE).join(name)
}

fn base_str(name: &str) -> String {
    base(name).display().to_string()
}

/// The kubeconfig of one of the control plane's users.
fn kubeconfig_path(user: &str) -> PathBuf {
    base(&format!("kube/{}.kubeconfig", user.replace(':', "-")))
}

/// Runs a host command: success, and stdout (or stderr when it failed).
fn host(program: &str, args: &[&str]) -> (bool, String) {
    match Command::new(program).args(args).output() {
        Ok(out) => outcome(out),
        Err(e) => (false, format!("{program}: {e}")),
    }
}

/// Runs a host command that must succeed.
fn must(program: &str, args: &[&str]) -> String {
    let (ok, out) = host(program, args);
    assert!(ok, "{program} {args:?}: {out}");
    out
}

/// The folder of the images `scripts/build-images` writes.
pub fn images_dir() -> PathBuf {
    std::env::var_os("PHONE_IMAGES_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/images"))
}

impl Cluster {
    /// Starts the cluster and waits until the node is Ready and the cluster DNS answers.
    pub async fn start() -> Self {
        let turn = ONE_AT_A_TIME.lock().await;
        for image in ["phone", "pause", "coredns"] {
            let path = images_dir().join(format!("{image}.tar"));
            assert!(
                path.exists(),
                "{} is missing: run scripts/build-images (as root)",
                path.display()
            );
        }
        // What a killed run left, first.
        teardown();
        snapshot_host();
        // The API server's address is chosen first, so the client is made once.
        let port = crate::free_port();
        let url = format!("https://{NODE_IP}:{port}");
        let mut cluster = Cluster {
            client: Kubectl::new(url, &base("kube"), Some(base("pki/ca.crt"))),
            children: Vec::new(),
            _turn: turn,
        };
        cluster.network();
        cluster.control_plane(port);
        cluster
            .client
            .wait_ready(&base("logs/kube-apiserver.log"))
            .await;
        cluster.containerd().await;
        cluster.node();
        cluster.wait_node_ready().await;
        cluster.dns().await;
        cluster
    }

    fn spawn(&mut self, name: &str, program: &Path, args: &[String]) {
        let child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(log_file(&base("logs"), &format!("{name}.out")))
            .stderr(log_file(&base("logs"), &format!("{name}.log")))
            .spawn()
            .unwrap_or_else(|e| panic!("{name} starts ({e}): run scripts/install-deps"));
        self.children.push((name.to_owned(), child));
    }

    /// The node's interface and address, the routes that keep the cluster's traffic on
    /// this machine, and the forwarding the pods need.
    fn network(&self) {
        // A bridge with no ports: an interface of its own for the address (this kernel
        // has no dummy links), and no carrier, so what is routed to it goes nowhere.
        must("ip", &["link", "add", INTERFACE, "type", "bridge"]);
        must(
            "ip",
            &["addr", "add", &format!("{NODE_IP}/32"), "dev", INTERFACE],
        );
        must("ip", &["link", "set", INTERFACE, "up"]);
        // Services and pods (before the bridge exists) route to the node itself.
        must("ip", &["route", "add", SERVICE_CIDR, "dev", INTERFACE]);
        must("ip", &["route", "add", "10.244.0.0/16", "dev", INTERFACE]);
        // The outside world's namespace, at 10.250.1.0/24 behind the host's 10.250.1.1.
        must("ip", &["netns", "add", OUTSIDE_NETNS]);
        must(
            "ip",
            &[
                "link",
                "add",
                OUTSIDE_LINK,
                "type",
                "veth",
                "peer",
                "name",
                "out0",
                "netns",
                OUTSIDE_NETNS,
            ],
        );
        must("ip", &["addr", "add", "10.250.1.1/24", "dev", OUTSIDE_LINK]);
        must("ip", &["link", "set", OUTSIDE_LINK, "up"]);
        let inside = |args: &[&str]| {
            let mut all = vec!["netns", "exec", OUTSIDE_NETNS, "ip"];
            all.extend_from_slice(args);
            must("ip", &all);
        };
        for ip in [PHONES_IP, CARRIER_IP] {
            inside(&["addr", "add", &format!("{ip}/24"), "dev", "out0"]);
        }
        inside(&["link", "set", "out0", "up"]);
        inside(&["link", "set", "lo", "up"]);
        inside(&["route", "add", "default", "via", "10.250.1.1"]);
        write_sysctl("net/ipv4/ip_forward", "1");
        write_sysctl("net/bridge/bridge-nf-call-iptables", "1");
        // Pods reach the node and each other, nothing else.
        must(
            "iptables",
            &[
                "-I",
                "FORWARD",
                "-s",
                "10.244.0.0/16",
                "!",
                "-d",
                "10.0.0.0/8",
                "-j",
                "DROP",
            ],
        );
    }

    /// Certificates and tokens, etcd, kube-apiserver (on `port` of the node's address),
    /// the controller manager and the scheduler.
    fn control_plane(&mut self, port: u16) {
        certificates();
        service_account_key(&base("pki"));
        let tokens: String = TOKENS
            .iter()
            .map(|(token, user, groups)| format!("{token},{user},{user},\"{groups}\"\n"))
            .collect();
        std::fs::write(base("pki/tokens.csv"), tokens).unwrap();
        let (etcd, etcd_url) = crate::kube::spawn_etcd(&base("etcd"));
        self.children.push(("etcd".into(), etcd));
        let url = self.client.url.clone();
        let pki = |name: &str| base_str(&format!("pki/{name}"));
        let args: Vec<String> = vec![
            format!("--etcd-servers={etcd_url}"),
            format!("--secure-port={port}"),
            format!("--bind-address={NODE_IP}"),
            format!("--advertise-address={NODE_IP}"),
            format!("--tls-cert-file={}", pki("apiserver.crt")),
            format!("--tls-private-key-file={}", pki("apiserver.key")),
            format!("--client-ca-file={}", pki("ca.crt")),
            format!("--kubelet-client-certificate={}", pki("kubelet-client.crt")),
            format!("--kubelet-client-key={}", pki("kubelet-client.key")),
            "--kubelet-preferred-address-types=InternalIP,Hostname".into(),
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
            format!("--service-account-key-file={}", pki("sa.pub")),
            format!("--service-account-signing-key-file={}", pki("sa.key")),
            format!("--service-cluster-ip-range={SERVICE_CIDR}"),
            "--authorization-mode=Node,RBAC".into(),
            "--enable-admission-plugins=NodeRestriction".into(),
            format!("--token-auth-file={}", pki("tokens.csv")),
            "--allow-privileged=true".into(),
        ];
        self.spawn("kube-apiserver", &go_binary("kube-apiserver"), &args);
        for (token, user, _) in TOKENS {
            std::fs::write(
                kubeconfig_path(user),
                kubeconfig_text(&url, token, Some(&base("pki/ca.crt"))),
            )
            .unwrap();
        }
        let kubeconfig = |user: &str| format!("--kubeconfig={}", kubeconfig_path(user).display());
        let args = vec![
            kubeconfig("system:kube-controller-manager"),
            format!("--root-ca-file={}", pki("ca.crt")),
            format!("--service-account-private-key-file={}", pki("sa.key")),
            format!("--cluster-signing-cert-file={}", pki("ca.crt")),
            format!("--cluster-signing-key-file={}", pki("ca.key")),
            "--use-service-account-credentials".into(),
            "--leader-elect=false".into(),
            "--secure-port=0".into(),
        ];
        self.spawn(
            "kube-controller-manager",
            &go_binary("kube-controller-manager"),
            &args,
        );
        let args = vec![
            kubeconfig("system:kube-scheduler"),
            "--leader-elect=false".into(),
            "--secure-port=0".into(),
        ];
        self.spawn("kube-scheduler", &go_binary("kube-scheduler"), &args);
    }

    /// containerd with its state in the cluster's folder, then the images imported.
    async fn containerd(&mut self) {
        let dir = |name: &str| base_str(&format!("containerd/{name}"));
        let config = format!(
            r#"version = 2
root = "{root}"
state = "{state}"
[grpc]
  address = "{socket}"
[ttrpc]
  address = "{socket}.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "docker.io/local/pause:test"
  # This machine's root lacks CAP_SYS_RESOURCE: without it every sandbox fails.
  restrict_oom_score_adj = true
  # The pods' network namespaces in the cluster's folder, not /var/run/netns.
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{runc}"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{cni}"
"#,
            root = dir("root"),
            state = dir("state"),
            socket = dir("containerd.sock"),
            opt = dir("opt"),
            runc = dir("runc"),
            cni = base_str("cni/net.d"),
        );
        std::fs::write(base("containerd/config.toml"), config).unwrap();
        std::fs::create_dir_all(base("cni/net.d")).unwrap();
        std::fs::write(
            base("cni/net.d/10-phone.conflist"),
            format!(
                r#"{{
  "cniVersion": "0.4.0",
  "name": "phone-test",
  "plugins": [
    {{
      "type": "bridge",
      "bridge": "cni0",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {{
        "type": "host-local",
        "dataDir": "{ipam}",
        "ranges": [[{{"subnet": "{POD_CIDR}"}}]],
        "routes": [{{"dst": "0.0.0.0/0"}}]
      }}
    }}
  ]
}}
"#,
                ipam = base_str("cni/ipam"),
            ),
        )
        .unwrap();
        let args = vec!["--config".to_owned(), base_str("containerd/config.toml")];
        self.spawn("containerd", Path::new("containerd"), &args);
        let ready = crate::wait_until(Duration::from_secs(30), || async {
            self.ctr(&["version"]).0.then_some(())
        })
        .await;
        assert!(
            ready.is_some(),
            "containerd did not start:\n{}",
            log("containerd")
        );
        let mut images: Vec<PathBuf> = std::fs::read_dir(images_dir())
            .unwrap()
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "tar"))
            .collect();
        images.sort();
        for image in images {
            let (ok, out) = self.ctr(&["images", "import", image.to_str().unwrap()]);
            assert!(ok, "ctr images import {}: {out}", image.display());
        }
    }

    /// `ctr` against the cluster's containerd, namespace k8s.io.
    pub fn ctr(&self, args: &[&str]) -> (bool, String) {
        let socket = base_str("containerd/containerd.sock");
        let mut all = vec!["--address", &socket, "--namespace", "k8s.io"];
        all.extend_from_slice(args);
        host("ctr", &all)
    }

    /// The kubelet and kube-proxy.
    fn node(&mut self) {
        let config = format!(
            r#"apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: {NODE_IP}
healthzBindAddress: 127.0.0.1
readOnlyPort: 0
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
containerRuntimeEndpoint: unix://{socket}
authentication:
  anonymous: {{enabled: false}}
  webhook: {{enabled: true}}
  x509: {{clientCAFile: {ca}}}
authorization: {{mode: Webhook}}
clusterDNS: [{DNS_IP}]
clusterDomain: cluster.local
podLogsDir: {logs}
evictionHard: {{memory.available: 100Mi, nodefs.available: 1%, imagefs.available: 1%, nodefs.inodesFree: 1%}}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
protectKernelDefaults: false
"#,
            socket = base_str("containerd/containerd.sock"),
            ca = base_str("pki/ca.crt"),
            logs = base_str("pod-logs"),
        );
        std::fs::write(base("kubelet.yaml"), config).unwrap();
        let kubeconfig = |user: &str| kubeconfig_path(user).display().to_string();
        let args = vec![
            format!("--config={}", base_str("kubelet.yaml")),
            format!("--kubeconfig={}", kubeconfig("system:node:phone-test-node")),
            format!("--root-dir={}", base_str("kubelet")),
            format!("--cert-dir={}", base_str("kubelet/pki")),
            format!("--hostname-override={NODE_NAME}"),
            format!("--node-ip={NODE_IP}"),
        ];
        self.spawn("kubelet", &go_binary("kubelet"), &args);
        let args = vec![
            format!("--kubeconfig={}", kubeconfig("system:kube-proxy")),
            "--proxy-mode=iptables".into(),
            "--cluster-cidr=10.244.0.0/16".into(),
            format!("--hostname-override={NODE_NAME}"),
            format!("--nodeport-addresses={NODE_IP}/32"),
            "--conntrack-max-per-core=0".into(),
            "--conntrack-tcp-timeout-established=0".into(),
            "--conntrack-tcp-timeout-close-wait=0".into(),
            "--metrics-bind-address=127.0.0.1:10249".into(),
            "--healthz-bind-address=127.0.0.1:10256".into(),
        ];
        self.spawn("kube-proxy", &go_binary("kube-proxy"), &args);
    }

    async fn wait_node_ready(&self) {
        let ready = crate::wait_until(Duration::from_secs(90), || async {
            let (ok, out) = self.kubectl(&[
                "get",
                "node",
                NODE_NAME,
                "-o",
                r#"jsonpath={.status.conditions[?(@.type=="Ready")].status}"#,
            ]);
            (ok && out.trim() == "True").then_some(())
        })
        .await;
        assert!(
            ready.is_some(),
            "the node was not Ready in 90 s:\n{}",
            log("kubelet")
        );
    }

    /// CoreDNS (the static build of `scripts/install-deps`, as an image of its own) as
    /// the cluster DNS at [`DNS_IP`]; it answers for cluster.local only and forwards
    /// nothing. Waits until it resolves the `kubernetes` Service.
    async fn dns(&self) {
        self.apply(COREDNS);
        let resolved = crate::wait_until(Duration::from_secs(90), || async {
            resolve(DNS_IP, "kubernetes.default.svc.cluster.local").await
        })
        .await;
        let (_, pods) = self.kubectl(&["get", "pods", "-A", "-o", "wide"]);
        assert_eq!(
            resolved,
            Some(Ipv4Addr::new(10, 96, 0, 1)),
            "the cluster DNS did not answer in 90 s:\n{pods}"
        );
    }

    /// `helm <args>` against the cluster as its administrator (with caches and settings
    /// of its own, not the user's).
    pub fn helm(&self, args: &[&str]) -> (bool, String) {
        let out = Command::new(go_binary("helm"))
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("HELM_CACHE_HOME", base("helm/cache"))
            .env("HELM_CONFIG_HOME", base("helm/config"))
            .env("HELM_DATA_HOME", base("helm/data"))
            .output()
            .expect("helm runs");
        outcome(out)
    }

    /// `kubectl port-forward <target> :<port>` in `namespace`: the local port on
    /// loopback, open until the forward is dropped.
    pub async fn port_forward(&self, namespace: &str, target: &str, port: u16) -> PortForward {
        let local = crate::free_port();
        let child = Command::new("kubectl")
            .args([
                "port-forward",
                "-n",
                namespace,
                "--address",
                "127.0.0.1",
                target,
            ])
            .arg(format!("{local}:{port}"))
            .env("KUBECONFIG", &self.kubeconfig)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("kubectl runs");
        let forward = PortForward { child, port: local };
        let open = crate::wait_until(Duration::from_secs(30), || async {
            tokio::net::TcpStream::connect(("127.0.0.1", local))
                .await
                .ok()
                .map(|_| ())
        })
        .await;
        assert!(open.is_some(), "kubectl port-forward {target} {port}");
        forward
    }

    /// Each pod of `namespace` with its memory in bytes, two ways: the working set as
    /// the kubelet counts it (`kubectl top`: the pod cgroup's usage less its inactive
    /// file cache; the binaries' pages are charged to whoever read them first) and the
    /// resident set of its processes (VmRSS, shared pages included).
    pub fn pod_memory(&self, namespace: &str) -> Vec<PodMemory> {
        let (_, pods) = self.kubectl(&[
            "get",
            "pods",
            "-n",
            namespace,
            "-o",
            r#"jsonpath={range .items[*]}{.metadata.name} {.metadata.uid}{"\n"}{end}"#,
        ]);
        let cgroups: Vec<PathBuf> = pod_cgroups()
            .into_iter()
            .filter(|p| p.starts_with("/sys/fs/cgroup/memory/"))
            .collect();
        let mut out = Vec::new();
        for line in pods.lines() {
            let Some((name, uid)) = line.split_once(' ') else {
                continue;
            };
            let wanted = format!("pod{uid}");
            let Some(cgroup) = cgroups
                .iter()
                .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy() == wanted))
            else {
                continue;
            };
            let read = |file: &str| std::fs::read_to_string(cgroup.join(file)).unwrap_or_default();
            let usage: u64 = read("memory.usage_in_bytes").trim().parse().unwrap_or(0);
            let inactive: u64 = read("memory.stat")
                .lines()
                .find_map(|l| l.strip_prefix("total_inactive_file "))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            let rss_kib: u64 = cgroups
                .iter()
                .filter(|c| c.starts_with(cgroup))
                .flat_map(|c| {
                    std::fs::read_to_string(c.join("cgroup.procs"))
                        .unwrap_or_default()
                        .lines()
                        .filter_map(|pid| pid.parse().ok())
                        .collect::<Vec<u32>>()
                })
                .filter_map(crate::rss_kib)
                .sum();
            out.push(PodMemory {
                pod: name.to_owned(),
                working_set: usage.saturating_sub(inactive),
                rss: rss_kib * 1024,
            });
        }
        out
    }

    /// A component's log so far (`kubelet`, `containerd`, `kube-apiserver`, ...).
    pub fn log(&self, name: &str) -> String {
        log(name)
    }
}

/// One pod's memory ([`Cluster::pod_memory`]), in bytes.
#[derive(Debug, Clone)]
pub struct PodMemory {
    pub pod: String,
    pub working_set: u64,
    pub rss: u64,
}

/// A `kubectl port-forward` to a pod or Service, stopped on drop.
pub struct PortForward {
    child: Child,
    /// The local end, on 127.0.0.1.
    pub port: u16,
}

impl Drop for PortForward {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn log(name: &str) -> String {
    let text = std::fs::read_to_string(base(&format!("logs/{name}.log"))).unwrap_or_default();
    let mut start = text.len().saturating_sub(8000);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    text[start..].to_owned()
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            let _ = child.kill();
        }
        teardown();
        for (_, child) in &mut self.children {
            let _ = child.wait();
        }
    }
}

/// A CA, the API server's serving certificate (its addresses and the `kubernetes`
/// Service's names) and its client certificate for the kubelet, in `BASE/pki`.
fn certificates() {
    let pki = |name: &str| base(&format!("pki/{name}"));
    let ca = (pki("ca.key"), pki("ca.crt"));
    crate::make_ca(&ca.0, &ca.1, "/CN=phone-test-ca");
    let sign = |name: &str, subject: &str, extensions: &str| {
        crate::sign_certificate(
            (&ca.0, &ca.1),
            (&pki(&format!("{name}.key")), &pki(&format!("{name}.crt"))),
            subject,
            extensions,
        );
    };
    sign(
        "apiserver",
        "/CN=kube-apiserver",
        &format!(
            "subjectAltName=IP:{NODE_IP},IP:10.96.0.1,IP:127.0.0.1,DNS:kubernetes,\
             DNS:kubernetes.default,DNS:kubernetes.default.svc,\
             DNS:kubernetes.default.svc.cluster.local\n\
             extendedKeyUsage=serverAuth\n"
        ),
    );
    sign(
        "kubelet-client",
        "/O=system:masters/CN=kube-apiserver-kubelet-client",
        "extendedKeyUsage=clientAuth\n",
    );
}

fn sysctl_path(name: &str) -> PathBuf {
    Path::new("/proc/sys").join(name)
}

fn write_sysctl(name: &str, value: &str) {
    std::fs::write(sysctl_path(name), value)
        .unwrap_or_else(|e| panic!("sysctl {name}={value}: {e}"));
}

/// What teardown restores: iptables, the sysctls, the network namespaces and whether
/// /var/log/containers existed (the kubelet's links to the pods' logs), in
/// `BASE/host`, written before the cluster changes anything.
fn snapshot_host() {
    let dir = base("host");
    std::fs::create_dir_all(&dir).unwrap();
    for folder in ["logs", "pki", "kube", "etcd", "containerd", "pod-logs"] {
        std::fs::create_dir_all(base(folder)).unwrap();
    }
    for (tool, file) in [
        ("iptables-save", "iptables"),
        ("ip6tables-save", "ip6tables"),
    ] {
        let (_, rules) = host(tool, &[]);
        std::fs::write(dir.join(file), rules).unwrap();
    }
    let sysctls: String = SYSCTLS
        .iter()
        .filter_map(|name| {
            let value = std::fs::read_to_string(sysctl_path(name)).ok()?;
            Some(format!("{name} {}\n", value.trim()))
        })
        .collect();
    std::fs::write(dir.join("sysctls"), sysctls).unwrap();
    std::fs::write(dir.join("netns"), host("ip", &["netns", "list"]).1).unwrap();
    if Path::new("/var/log/containers").exists() {
        std::fs::write(dir.join("had-container-logs"), "").unwrap();
    }
    // `ip netns add` makes /run/netns a mount point of its own the first time.
    if mount_points().iter().any(|m| m == "/run/netns") {
        std::fs::write(dir.join("had-netns-mount"), "").unwrap();
    }
    if Path::new("/run/netns").exists() {
        std::fs::write(dir.join("had-netns-dir"), "").unwrap();
    }
    // Written last: teardown restores only from a whole snapshot.
    std::fs::write(dir.join("complete"), "").unwrap();
}

/// Stops everything a cluster started and restores the host from `BASE/host`; does
/// nothing when there is no cluster folder. Each step goes on whatever the last did.
fn teardown() {
    if !Path::new(BASE).exists() {
        return;
    }
    // The containers first (their processes, by their cgroups), so that nothing
    // restarts them, then every process started with the cluster's folder in its
    // command line: the control plane, the kubelet, kube-proxy, containerd and its shims.
    for _ in 0..3 {
        kill_pod_processes();
        kill_processes_naming(BASE);
        std::thread::sleep(Duration::from_millis(200));
    }
    // The pods' network namespaces, and every mount under the cluster's folder.
    let found = std::fs::read_to_string(base("host/netns")).unwrap_or_default();
    let (_, now) = host("ip", &["netns", "list"]);
    for netns in now.lines().filter_map(|l| l.split_whitespace().next()) {
        if netns.starts_with("cni-") && !found.lines().any(|l| l.starts_with(netns)) {
            let _ = host("ip", &["netns", "delete", netns]);
        }
    }
    let mut mounts: Vec<String> = mount_points()
        .into_iter()
        .filter(|m| m.starts_with(BASE))
        .collect();
    mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for mount in mounts {
        let _ = host("umount", &["-l", &mount]);
    }
    remove_pod_cgroups();
    let _ = host("ip", &["link", "delete", "cni0"]);
    let _ = host("ip", &["link", "delete", INTERFACE]);
    let _ = host("ip", &["link", "delete", OUTSIDE_LINK]);
    let _ = host("ip", &["netns", "delete", OUTSIDE_NETNS]);
    if base("host/complete").exists() {
        for (family, file) in [("iptables", "iptables"), ("ip6tables", "ip6tables")] {
            restore_tables(family, &base(&format!("host/{file}")));
        }
        if !base("host/had-netns-mount").exists() {
            let _ = host("umount", &["/run/netns"]);
        }
        if !base("host/had-netns-dir").exists() {
            let _ = std::fs::remove_dir("/run/netns");
        }
        let sysctls = std::fs::read_to_string(base("host/sysctls")).unwrap_or_default();
        for line in sysctls.lines() {
            if let Some((name, value)) = line.split_once(' ') {
                let _ = std::fs::write(sysctl_path(name), value);
            }
        }
        if !base("host/had-container-logs").exists() {
            let _ = std::fs::remove_dir_all("/var/log/containers");
        } else if let Ok(links) = std::fs::read_dir("/var/log/containers") {
            for link in links.filter_map(Result::ok) {
                let into_cluster =
                    std::fs::read_link(link.path()).is_ok_and(|target| target.starts_with(BASE));
                if into_cluster {
                    let _ = std::fs::remove_file(link.path());
                }
            }
        }
    }
    let _ = std::fs::remove_dir_all(BASE);
}

/// Puts `family`'s tables (iptables or ip6tables) back as `saved` has them: the tables
/// it holds are restored, the others (made by the kubelet and kube-proxy) emptied of
/// their rules and chains.
fn restore_tables(family: &str, saved: &Path) {
    let rules = std::fs::read_to_string(saved).unwrap_or_default();
    for table in ["filter", "nat", "mangle", "raw", "security"] {
        if !rules.lines().any(|l| l == format!("*{table}")) {
            let _ = host(family, &["-t", table, "-F"]);
            let _ = host(family, &["-t", table, "-X"]);
        }
    }
    if !rules.trim().is_empty() {
        let _ = Command::new(format!("{family}-restore"))
            .stdin(std::fs::File::open(saved).map_or(Stdio::null(), Stdio::from))
            .output();
    }
}

/// Every mount point of this machine.
fn mount_points() -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_owned))
        .collect()
}

/// SIGKILL to every process of the kubelet's pod cgroups, until none is left.
fn kill_pod_processes() {
    for _ in 0..20 {
        let mut any = false;
        for cgroup in pod_cgroups() {
            let procs = std::fs::read_to_string(cgroup.join("cgroup.procs")).unwrap_or_default();
            for pid in procs.lines() {
                any = true;
                let _ = host("kill", &["-KILL", pid]);
            }
        }
        if !any {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// SIGKILL to every process whose command line holds `text`.
fn kill_processes_naming(text: &str) {
    let me = std::process::id().to_string();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        let pid = entry.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) || pid == me {
            continue;
        }
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(text) {
            let _ = host("kill", &["-KILL", &pid]);
        }
    }
}

/// The kubelet's pod cgroups (`kubepods` and below) in every hierarchy, deepest first.
fn pod_cgroups() -> Vec<PathBuf> {
    fn walk(dir: &Path, into: &mut Vec<PathBuf>) {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for entry in entries.filter_map(Result::ok) {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    walk(&entry.path(), into);
                }
            }
        }
        into.push(dir.to_owned());
    }
    let mut found = Vec::new();
    if let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") {
        for hierarchy in hierarchies.filter_map(Result::ok) {
            let pods = hierarchy.path().join("kubepods");
            if pods.is_dir() {
                walk(&pods, &mut found);
            }
        }
    }
    found
}

fn remove_pod_cgroups() {
    for cgroup in pod_cgroups() {
        let _ = std::fs::remove_dir(cgroup);
    }
}

/// Asks `server` for `name`'s address (one DNS query over UDP).
pub async fn resolve(server: Ipv4Addr, name: &str) -> Option<Ipv4Addr> {
    let mut query = vec![0x70, 0x68, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.split('.') {
        query.push(label.len() as u8);
        query.extend_from_slice(label.as_bytes());
    }
    query.extend_from_slice(&[0, 0, 1, 0, 1]);
    let socket = tokio::net::UdpSocket::bind((NODE_IP, 0)).await.ok()?;
    socket
        .send_to(&query, SocketAddr::from((server, 53)))
        .await
        .ok()?;
    let mut answer = [0u8; 512];
    let n = tokio::time::timeout(Duration::from_millis(500), socket.recv(&mut answer))
        .await
        .ok()?
        .ok()?;
    let answer = &answer[..n];
    // The same id, no error, at least one answer: the last one's four bytes.
    let ok = n >= 16 && answer[..2] == query[..2] && answer[3] & 0x0f == 0 && answer[7] > 0;
    ok.then(|| Ipv4Addr::new(answer[n - 4], answer[n - 3], answer[n - 2], answer[n - 1]))
}

const COREDNS: &str = r#"
apiVersion: v1
kind: ServiceAccount
metadata: {name: coredns, namespace: kube-system}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: "system:coredns"}
rules:
  - apiGroups: [""]
    resources: [endpoints, services, pods, namespaces]
    verbs: [list, watch]
  - apiGroups: [discovery.k8s.io]
    resources: [endpointslices]
    verbs: [list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "system:coredns"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "system:coredns"}
subjects: [{kind: ServiceAccount, name: coredns, namespace: kube-system}]
---
apiVersion: v1
kind: ConfigMap
metadata: {name: coredns, namespace: kube-system}
data:
  Corefile: |
    .:53 {
        errors
        health :8080
        ready :8181
        kubernetes cluster.local in-addr.arpa ip6.arpa {
            pods insecure
        }
        cache 5
    }
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: coredns, namespace: kube-system, labels: {k8s-app: kube-dns}}
spec:
  replicas: 1
  selector: {matchLabels: {k8s-app: kube-dns}}
  template:
    metadata: {labels: {k8s-app: kube-dns}}
    spec:
      serviceAccountName: coredns
      dnsPolicy: Default
      terminationGracePeriodSeconds: 5
      containers:
        - name: coredns
          image: docker.io/local/coredns:test
          imagePullPolicy: Never
          args: ["-conf", "/etc/coredns/Corefile"]
          ports:
            - {name: dns, containerPort: 53, protocol: UDP}
            - {name: dns-tcp, containerPort: 53, protocol: TCP}
          readinessProbe:
            httpGet: {path: /ready, port: 8181}
            periodSeconds: 1
          volumeMounts: [{name: config, mountPath: /etc/coredns}]
      volumes: [{name: config, configMap: {name: coredns}}]
---
apiVersion: v1
kind: Service
metadata: {name: kube-dns, namespace: kube-system, labels: {k8s-app: kube-dns}}
spec:
  clusterIP: 10.96.0.10
  selector: {k8s-app: kube-dns}
  ports:
    - {name: dns, port: 53, protocol: UDP}
    - {name: dns-tcp, port: 53, protocol: TCP}
"#;
