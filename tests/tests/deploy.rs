//! The container image and the Helm chart, checked without a cluster or a Docker
//! engine: the Dockerfile copies exactly the service binaries the release build makes;
//! `helm lint --strict` passes; every object `helm template` renders (default values,
//! the production-like example, the try-out example) is valid against the Kubernetes
//! schemas (`kubernetes-validate`, offline); and the parts of the workloads that
//! matter (commands, ports, probes, env, volumes, host network) match golden files.
//! Regenerate those after a deliberate change with `UPDATE_GOLDEN=1`.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn chart() -> PathBuf {
    root().join("helm/phone")
}

const KUBE_VERSION: &str = "1.31.0";

/// The release binaries: the `[[bin]]` targets of the workspace's packages.
fn workspace_binaries() -> Vec<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "metadata",
            "--no-deps",
            "--format-version",
            "1",
            "--offline",
        ])
        .current_dir(root())
        .output()
        .expect("cargo metadata runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut bins: Vec<String> = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| {
            p["manifest_path"]
                .as_str()
                .is_some_and(|m| m.contains("/services/"))
        })
        .flat_map(|p| p["targets"].as_array().unwrap().clone())
        .filter(|t| t["kind"].as_array().unwrap().iter().any(|k| k == "bin"))
        .map(|t| t["name"].as_str().unwrap().to_owned())
        .collect();
    bins.sort();
    bins
}

#[test]
fn the_image_holds_every_service_binary_the_release_build_makes() {
    let dockerfile = std::fs::read_to_string(root().join("deploy/Dockerfile")).unwrap();
    let mut copied: Vec<String> = dockerfile
        .lines()
        .filter(|l| l.starts_with("COPY --from=build "))
        .flat_map(|l| l.split_whitespace().skip(2).collect::<Vec<_>>())
        .filter_map(|w| w.strip_prefix("/out/"))
        .map(str::to_owned)
        .collect();
    copied.sort();
    let mut built: Vec<String> = dockerfile
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("/src/target-cache/release/"))
        .map(str::to_owned)
        .collect();
    built.sort();
    let build = &dockerfile[dockerfile.find("cargo build").expect("a cargo build")..];
    let build = &build[..build.find("&&").unwrap_or(build.len())];
    let mut packages: Vec<String> = build
        .split(" -p ")
        .skip(1)
        .filter_map(|w| w.split_whitespace().next())
        .map(str::to_owned)
        .collect();
    packages.sort();
    let bins = workspace_binaries();
    assert_eq!(
        copied, bins,
        "the runtime image copies every service binary, and only those"
    );
    assert_eq!(
        built, bins,
        "the build stage takes them from the release build"
    );
    assert_eq!(packages, bins, "and builds the packages that make them");
    // The chart runs binaries that are in the image.
    for template in ["sip-edge.yaml", "media-relay.yaml", "services.yaml"] {
        let text = std::fs::read_to_string(chart().join("templates").join(template)).unwrap();
        for command in text.split("/usr/local/bin/").skip(1) {
            let name: String = command
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '{')
                .collect();
            if name.starts_with('{') {
                continue; // services.yaml: the component names, checked below
            }
            assert!(bins.contains(&name), "{template} runs {name}");
        }
    }
    for component in ["router", "voicemail", "mailer"] {
        assert!(bins.contains(&component.to_owned()));
    }
}

fn helm() -> PathBuf {
    phone_test_support::go_binary("helm")
}

fn run(command: &mut Command) -> String {
    let out = command.output().expect("the command runs");
    assert!(
        out.status.success(),
        "{command:?}:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The cases: (name, values files).
const CASES: [(&str, &[&str]); 3] = [
    ("default", &[]),
    ("flowroute", &["examples/values-flowroute.yaml"]),
    ("tryout", &["examples/values-tryout.yaml"]),
];

fn render(values: &[&str]) -> String {
    let mut command = Command::new(helm());
    command
        .args(["template", "phone", "."])
        .args(["--namespace", "voice", "--kube-version", KUBE_VERSION])
        .current_dir(chart());
    for v in values {
        command.args(["-f", v]);
    }
    run(&mut command)
}

#[test]
fn helm_lint_strict_passes_for_every_values_file() {
    for (name, values) in CASES {
        let mut command = Command::new(helm());
        command
            .args(["lint", "--strict", ".", "--kube-version", KUBE_VERSION])
            .current_dir(chart());
        for v in values {
            command.args(["-f", v]);
        }
        let out = run(&mut command);
        assert!(out.contains("0 chart(s) failed"), "{name}: {out}");
    }
}

#[test]
fn values_that_break_the_schema_are_refused() {
    for bad in [
        "smtp.security=ssl",
        "mediaRelay.rtpPorts=lots",
        "advertiseIp=not-an-ip",
    ] {
        let out = Command::new(helm())
            .args([
                "template",
                "phone",
                ".",
                "--kube-version",
                KUBE_VERSION,
                "--set",
                bad,
            ])
            .current_dir(chart())
            .output()
            .unwrap();
        assert!(!out.status.success(), "{bad} was accepted");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("schema"),
            "{bad}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// `helm template` with `--set` values: its output, or its error.
fn template_with(sets: &[&str]) -> Result<String, String> {
    let mut command = Command::new(helm());
    command
        .args(["template", "phone", "."])
        .args(["--kube-version", KUBE_VERSION])
        .current_dir(chart());
    for set in sets {
        command.args(["--set", set]);
    }
    let out = command.output().unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[test]
fn mailers_share_an_outbox_under_a_lease_only_with_s3() {
    // Without S3 each pod's outbox is its own: one replica, replaced by Recreate.
    let error = template_with(&["mailer.replicas=2"]).unwrap_err();
    assert!(
        error.contains("needs mailer.kubernetesApi and an S3 bucket"),
        "{error}"
    );
    let one = template_with(&[]).unwrap();
    let mailer = |text: &str| -> serde_json::Value {
        objects(text)
            .into_iter()
            .find(|o| o["kind"] == "Deployment" && o["metadata"]["name"] == "phone-mailer")
            .unwrap()
    };
    assert_eq!(mailer(&one)["spec"]["strategy"]["type"], "Recreate");
    assert!(!one.contains("PHONE_OUTBOX_LEASE"));
    // With S3, the replicas share it, and the Lease picks the sender.
    let shared = template_with(&["mailer.replicas=2", "minio.enabled=true"]).unwrap();
    let deployment = mailer(&shared);
    assert_eq!(deployment["spec"]["replicas"], 2);
    assert!(deployment["spec"].get("strategy").is_none(), "{deployment}");
    let env = deployment["spec"]["template"]["spec"]["containers"][0]["env"].to_string();
    assert!(
        env.contains(r#""name":"PHONE_OUTBOX_LEASE","value":"phone-mailer-outbox""#),
        "{env}"
    );
    let role = objects(&shared)
        .into_iter()
        .find(|o| o["kind"] == "Role" && o["metadata"]["name"] == "phone-mailer")
        .unwrap();
    assert!(
        role["rules"].to_string().contains("phone-mailer-outbox"),
        "{role}"
    );
    assert!(template_with(&[
        "mailer.replicas=2",
        "minio.enabled=true",
        "mailer.kubernetesApi=false"
    ])
    .is_err());
}

#[test]
fn every_rendered_object_is_valid_kubernetes() {
    let dir = tempfile::tempdir().unwrap();
    for (name, values) in CASES {
        let path = dir.path().join(format!("{name}.yaml"));
        std::fs::write(&path, render(values)).unwrap();
        let out = run(Command::new("kubernetes-validate")
            .args(["--strict", "-k", KUBE_VERSION, "--no-warn"])
            .arg(&path));
        assert!(
            !out.contains("FAILED") && !out.contains("ERROR"),
            "{name}: {out}"
        );
    }
}

/// The rendered objects as JSON (PyYAML, which kubernetes-validate brings).
fn objects(yaml: &str) -> Vec<serde_json::Value> {
    use std::io::Write;
    let mut child = Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps([d for d in yaml.safe_load_all(sys.stdin) if d]))",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(yaml.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    serde_json::from_slice(&out.stdout).unwrap()
}

/// What matters of each workload and Service.
fn summary(objects: &[serde_json::Value]) -> serde_json::Value {
    use serde_json::json;
    let mut out = serde_json::Map::new();
    for o in objects {
        let kind = o["kind"].as_str().unwrap_or_default();
        let name = o["metadata"]["name"].as_str().unwrap_or_default();
        let key = format!("{kind}/{name}");
        match kind {
            "Deployment" => {
                let pod = &o["spec"]["template"]["spec"];
                let containers: Vec<serde_json::Value> = pod["containers"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|c| {
                        json!({
                            "command": c["command"],
                            "args": c["args"],
                            "ports": c["ports"],
                            "env": c["env"],
                            "readinessProbe": c["readinessProbe"],
                            "livenessProbe": c["livenessProbe"],
                            "startupProbe": c["startupProbe"],
                            "volumeMounts": c["volumeMounts"],
                            "securityContext": c["securityContext"],
                        })
                    })
                    .collect();
                out.insert(
                    key,
                    json!({
                        "replicas": o["spec"]["replicas"],
                        "strategy": o["spec"]["strategy"],
                        "hostNetwork": pod["hostNetwork"],
                        "dnsPolicy": pod["dnsPolicy"],
                        "terminationGracePeriodSeconds": pod["terminationGracePeriodSeconds"],
                        "containers": containers,
                        "volumes": pod["volumes"],
                    }),
                );
            }
            "Service" => {
                out.insert(
                    key,
                    json!({"clusterIP": o["spec"]["clusterIP"], "ports": o["spec"]["ports"]}),
                );
            }
            "HorizontalPodAutoscaler" | "NetworkPolicy" | "PodDisruptionBudget" => {
                out.insert(key, o["spec"].clone());
            }
            _ => {
                out.insert(key, json!(null));
            }
        }
    }
    serde_json::Value::Object(out)
}

#[test]
fn the_workloads_match_their_golden_files() {
    for (name, values) in CASES {
        let got = summary(&objects(&render(values)));
        let text = serde_json::to_string_pretty(&got).unwrap() + "\n";
        golden(
            &chart().join(format!("tests/golden/{name}.json")),
            &text,
            &format!("{name}: the rendered workloads"),
        );
    }
}

/// `text` must be the file at `path` (`what` names it in the message);
/// `UPDATE_GOLDEN=1` writes it instead.
fn golden(path: &Path, text: &str, what: &str) {
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
        return;
    }
    let want = std::fs::read_to_string(path)
        .unwrap_or_else(|_| panic!("{} is missing: run with UPDATE_GOLDEN=1", path.display()));
    assert!(
        want == text,
        "{what} changed; if that is intended, run with UPDATE_GOLDEN=1 and review the diff of {}",
        path.display()
    );
}

#[test]
fn every_setting_the_chart_gives_is_one_the_binary_reads() {
    // Read from the environment only, never flags (no --help line).
    const SECRETS: [&str; 2] = ["PHONE_S3_SECRET_ACCESS_KEY", "PHONE_SMTP_PASSWORD"];
    let mut helps = std::collections::HashMap::new();
    for (name, values) in CASES {
        for o in objects(&render(values)) {
            if o["kind"] != "Deployment" {
                continue;
            }
            for c in o["spec"]["template"]["spec"]["containers"]
                .as_array()
                .unwrap()
            {
                let Some(binary) = c["command"][0]
                    .as_str()
                    .and_then(|c| c.strip_prefix("/usr/local/bin/"))
                else {
                    continue; // MinIO, Mailpit
                };
                let help = helps.entry(binary.to_owned()).or_insert_with(|| {
                    run(Command::new(phone_tests::system::binary(binary)).arg("--help"))
                });
                for env in c["env"].as_array().unwrap() {
                    let var = env["name"].as_str().unwrap();
                    if !var.starts_with("PHONE_") || SECRETS.contains(&var) {
                        continue;
                    }
                    assert!(
                        help.contains(&format!("[env: {var}=")),
                        "{name}: {binary} has no setting {var}"
                    );
                }
            }
        }
    }
}

/// The chart's `crds/` folder holds exactly the CRDs derived from the resource types
/// (`phone-kube`), so `helm install` creates what the services watch. Regenerate with
/// `UPDATE_GOLDEN=1`.
#[test]
fn the_charts_crds_are_the_ones_the_resource_types_derive() {
    let dir = chart().join("crds");
    let crds = phone_kube::crds();
    for (file, crd) in &crds {
        golden(
            &dir.join(file),
            &phone_kube::manifest(crd),
            &format!("the CRD {file} the types derive"),
        );
    }
    let mut shipped: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    shipped.sort();
    let mut derived: Vec<String> = crds.iter().map(|(f, _)| (*f).to_owned()).collect();
    derived.sort();
    assert_eq!(shipped, derived, "no stray file in crds/");
}
