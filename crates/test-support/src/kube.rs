//! A real Kubernetes API server for tests, started the way controller-runtime's envtest
//! starts one: Debian's etcd and the kube-apiserver `scripts/install-deps` builds, on
//! loopback ports, with their data in a temporary folder. There are no controllers,
//! kubelets or scheduler: objects are stored, validated, watched and authorised
//! (RBAC) as in a cluster, and nothing runs them.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{free_port, go_binary};

/// The bearer token of the harness's administrator (`system:masters`).
pub const ADMIN_TOKEN: &str = "phone-test-admin";

pub struct KubeApi {
    client: Kubectl,
    etcd: Child,
    apiserver: Child,
    dir: tempfile::TempDir,
}

/// `kubectl` against one API server as its administrator: what [`KubeApi`] and the
/// test cluster ([`crate::cluster::Cluster`]) both offer (through `Deref`).
pub struct Kubectl {
    /// `https://<address>:<port>`.
    pub url: String,
    /// A kubeconfig for the administrator (namespace `default`).
    pub kubeconfig: PathBuf,
    /// Where [`Kubectl::kubeconfig_for`] writes.
    dir: PathBuf,
    /// The cluster's CA certificate, when the server has a real one.
    ca: Option<PathBuf>,
}

impl std::ops::Deref for KubeApi {
    type Target = Kubectl;
    fn deref(&self) -> &Kubectl {
        &self.client
    }
}

impl KubeApi {
    /// Starts etcd and kube-apiserver and waits until the API server is ready.
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = |name: &str| dir.path().join(name).display().to_string();
        let secure = free_port();
        let (etcd, etcd_url) = spawn_etcd(dir.path());

        // The service-account signing key, and the administrator's token.
        let key = path("sa.key");
        service_account_key(dir.path());
        std::fs::write(
            dir.path().join("tokens.csv"),
            format!("{ADMIN_TOKEN},admin,admin,system:masters\n"),
        )
        .unwrap();

        let url = format!("https://127.0.0.1:{secure}");
        let apiserver = Command::new(go_binary("kube-apiserver"))
            .args([
                &format!("--etcd-servers={etcd_url}"),
                &format!("--cert-dir={}", path("certs")),
                &format!("--secure-port={secure}"),
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                &format!("--service-account-issuer={url}"),
                &format!("--service-account-key-file={}", path("sa.pub")),
                &format!("--service-account-signing-key-file={key}"),
                "--service-cluster-ip-range=10.96.0.0/24",
                "--authorization-mode=RBAC",
                &format!("--token-auth-file={}", path("tokens.csv")),
                "--allow-privileged=true",
            ])
            .stdout(Stdio::null())
            .stderr(log_file(dir.path(), "kube-apiserver.log"))
            .spawn()
            .expect("kube-apiserver starts (run scripts/install-deps)");

        let client = Kubectl::new(url, dir.path(), None);
        let api = KubeApi {
            client,
            etcd,
            apiserver,
            dir,
        };
        api.wait_ready(&api.dir.path().join("kube-apiserver.log"))
            .await;
        api
    }
}

impl Kubectl {
    /// A client of the server at `url` whose kubeconfigs are written into `dir`; with
    /// `ca`, the server's certificate is verified against it.
    pub fn new(url: String, dir: &Path, ca: Option<PathBuf>) -> Self {
        let kubeconfig = dir.join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            kubeconfig_text(&url, ADMIN_TOKEN, ca.as_deref()),
        )
        .unwrap();
        Kubectl {
            url,
            kubeconfig,
            dir: dir.to_owned(),
            ca,
        }
    }

    /// Waits until the API server is ready (60 s at most); panics with its log.
    pub async fn wait_ready(&self, log: &Path) {
        for _ in 0..600 {
            let (ok, out) = self.kubectl(&["get", "--raw", "/readyz"]);
            if ok && out.trim() == "ok" {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "kube-apiserver was not ready in 60 s:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
    }

    /// Installs the chart's CRDs (`helm/phone/crds`) and waits until they are served.
    pub fn install_crds(&self) {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../helm/phone/crds");
        let (ok, out) = self.kubectl(&["apply", "-f", dir.to_str().unwrap()]);
        assert!(ok, "the CRDs apply: {out}");
        let (ok, out) = self.kubectl(&[
            "wait",
            "--for=condition=Established",
            "--timeout=30s",
            "crd/lines.phone.dev",
            "crd/trunks.phone.dev",
            "crd/mailboxes.phone.dev",
        ]);
        assert!(ok, "the CRDs are established: {out}");
    }

    /// Runs `kubectl` (the machine's) as the administrator: success, and stdout (or
    /// stderr when it failed).
    pub fn kubectl(&self, args: &[&str]) -> (bool, String) {
        let out = Command::new("kubectl")
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .output()
            .expect("kubectl runs");
        outcome(out)
    }

    /// Polls `kubectl <args>` until its output holds every one of `wanted` (30 s at
    /// most), and returns that output.
    pub async fn kubectl_until(&self, args: &[&str], wanted: &[&str]) -> String {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let (ok, out) = self.kubectl(args);
            if ok && wanted.iter().all(|w| out.contains(w)) {
                return out;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "kubectl {args:?} never showed {wanted:?}:\n{out}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }

    /// `kubectl apply -f -` of `manifest` (YAML or JSON); panics when refused.
    pub fn apply(&self, manifest: &str) -> String {
        let (ok, out) = self.try_apply(manifest, &[]);
        assert!(ok, "kubectl apply refused:\n{out}\n{manifest}");
        out
    }

    /// `kubectl apply -f - <extra>` of `manifest`: success, and stdout (or stderr when
    /// refused).
    pub fn try_apply(&self, manifest: &str, extra: &[&str]) -> (bool, String) {
        use std::io::Write;
        let mut child = Command::new("kubectl")
            .args(["apply", "-f", "-"])
            .args(extra)
            .env("KUBECONFIG", &self.kubeconfig)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kubectl runs");
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(manifest.as_bytes());
        }
        let out = child.wait_with_output().expect("kubectl ends");
        outcome(out)
    }

    /// A kubeconfig for another user's bearer token (to test RBAC as a service account).
    pub fn kubeconfig_for(&self, name: &str, token: &str) -> PathBuf {
        let path = self.dir.join(format!("kubeconfig-{name}"));
        std::fs::write(&path, kubeconfig_text(&self.url, token, self.ca.as_deref())).unwrap();
        path
    }
}

impl Drop for KubeApi {
    fn drop(&mut self) {
        for child in [&mut self.apiserver, &mut self.etcd] {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Debian's etcd on free loopback ports with its data in `dir`: the process and its
/// client URL.
pub(crate) fn spawn_etcd(dir: &Path) -> (Child, String) {
    let path = |name: &str| dir.join(name).display().to_string();
    let (client, peer) = (free_port(), free_port());
    let etcd_url = format!("http://127.0.0.1:{client}");
    let etcd = Command::new("etcd")
        .args([
            "--data-dir",
            &path("etcd"),
            "--listen-client-urls",
            &etcd_url,
            "--advertise-client-urls",
            &etcd_url,
            "--listen-peer-urls",
            &format!("http://127.0.0.1:{peer}"),
            "--initial-advertise-peer-urls",
            &format!("http://127.0.0.1:{peer}"),
            "--initial-cluster",
            &format!("default=http://127.0.0.1:{peer}"),
        ])
        .stdout(Stdio::null())
        .stderr(log_file(dir, "etcd.log"))
        .spawn()
        .expect("etcd starts (Debian's etcd-server; run scripts/install-deps)");
    (etcd, etcd_url)
}

/// The service-account signing key pair: `dir/sa.key` and `dir/sa.pub`.
pub(crate) fn service_account_key(dir: &Path) {
    let path = |name: &str| dir.join(name).display().to_string();
    openssl(&["genrsa", "-out", &path("sa.key"), "2048"]);
    openssl(&[
        "rsa",
        "-in",
        &path("sa.key"),
        "-pubout",
        "-out",
        &path("sa.pub"),
    ]);
}

/// Runs `openssl <args>`; panics when it fails.
pub(crate) fn openssl(args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Whether a command succeeded, and its stdout (or its stderr when it failed).
pub(crate) fn outcome(out: std::process::Output) -> (bool, String) {
    let text = if out.status.success() {
        out.stdout
    } else {
        out.stderr
    };
    (
        out.status.success(),
        String::from_utf8_lossy(&text).into_owned(),
    )
}

pub(crate) fn log_file(dir: &Path, name: &str) -> Stdio {
    std::fs::File::create(dir.join(name))
        .map(Stdio::from)
        .unwrap_or_else(|_| Stdio::null())
}

/// A kubeconfig for `token` at `url`. Without a CA the API server's certificate is its
/// own self-signed one, so the client skips its verification (loopback only).
pub(crate) fn kubeconfig_text(url: &str, token: &str, ca: Option<&Path>) -> String {
    let trust = match ca {
        Some(ca) => format!("certificate-authority: {}", ca.display()),
        None => "insecure-skip-tls-verify: true".to_owned(),
    };
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: test
  cluster:
    server: {url}
    {trust}
users:
- name: user
  user:
    token: {token}
contexts:
- name: test
  context:
    cluster: test
    user: user
    namespace: default
current-context: test
"
    )
}
