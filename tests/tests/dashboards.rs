//! The Grafana dashboards in `deploy/grafana/dashboards/` are valid JSON and reference
//! only metrics the services export: `phone` is started, each service's `/metrics` is
//! scraped, and every `phone_*` name in a panel's query must be one of them (a
//! counter's `_total`, a histogram's `_bucket`/`_sum`/`_count`).

use std::collections::BTreeSet;
use std::io::BufRead;
use std::path::Path;
use std::time::Duration;

/// The metric names the services export, as samples are named.
async fn exported() -> BTreeSet<String> {
    let data = tempfile::tempdir().unwrap();
    let mut phone = std::process::Command::new(phone_tests::system::binary("phone"))
        .arg("--data-dir")
        .arg(data.path())
        .args(["--sip-bind", "127.0.0.1:0", "--rtp-ports", "26300-26319"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = std::io::BufReader::new(phone.stdout.take().unwrap());
    let mut admins = Vec::new();
    for line in stdout.lines().map_while(Result::ok) {
        if line == "ready" {
            break;
        }
        if let Some(admin) = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("admin="))
        {
            admins.push(admin.parse().unwrap());
        }
    }
    assert_eq!(admins.len(), 5, "five services printed their admin address");
    let mut names = BTreeSet::new();
    for admin in admins {
        let text = tokio::time::timeout(
            Duration::from_secs(10),
            service_runtime::server::scrape_metrics(admin),
        )
        .await
        .unwrap()
        .unwrap();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut words = rest.split_whitespace();
                let (Some(name), Some(kind)) = (words.next(), words.next()) else {
                    continue;
                };
                match kind {
                    "counter" => {
                        names.insert(format!("{name}_total"));
                    }
                    "histogram" => {
                        for suffix in ["_bucket", "_sum", "_count"] {
                            names.insert(format!("{name}{suffix}"));
                        }
                    }
                    _ => {
                        names.insert(name.to_owned());
                    }
                }
            }
        }
    }
    let _ = phone.kill();
    let _ = phone.wait();
    names
}

/// `phone_*` names in a PromQL expression.
fn referenced(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("phone_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        out.push(name);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboards_reference_only_exported_metrics() {
    let exported = exported().await;
    assert!(
        exported.contains("phone_router_calls_total"),
        "the scrape found the services' metrics: {exported:?}"
    );
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana/dashboards");
    let mut dashboards = 0;
    let mut missing = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let json: serde_json::Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{}: not JSON: {e}", path.display()));
        assert!(json["uid"].is_string() && json["title"].is_string());
        let panels = json["panels"].as_array().expect("panels");
        assert!(!panels.is_empty());
        let mut queries = 0;
        for panel in panels {
            for target in panel["targets"].as_array().into_iter().flatten() {
                let expr = target["expr"].as_str().expect("a PromQL expr");
                queries += 1;
                for name in referenced(expr) {
                    if !exported.contains(&name) {
                        missing.push(format!(
                            "{}: panel {} uses {name}",
                            path.file_name().unwrap().to_string_lossy(),
                            panel["title"]
                        ));
                    }
                }
            }
        }
        assert!(queries > 0, "{}", path.display());
        dashboards += 1;
    }
    assert!(
        missing.is_empty(),
        "metrics no service exports:\n{}",
        missing.join("\n")
    );
    assert_eq!(dashboards, 3, "calls, media quality, voicemail and mail");
}
