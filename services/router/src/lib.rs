//! `router`: the dialplan. It reads Asterisk's `extensions.conf` and, for every channel
//! the edge opens a call-control stream for (`phone.router.v1.CallControl/Run`), runs
//! the dialplan from the channel's context and extension: it sends commands (answer,
//! dial, connect to voicemail, hang up) and reacts to what the edge and the voicemail
//! service report. It keeps nothing between calls, so any number of replicas can run.
//!
//! Layers (STYLE.md, habit 7):
//!
//! - [`pattern`], [`text`], [`expr`], [`subst`], [`apps`]: the language: extension
//!   patterns in Asterisk's order, text that remembers what came from the caller (no
//!   dial-string or expression injection), `$[...]`, `${...}`, application arguments.
//! - [`dialplan`]: `extensions.conf` compiled for lookup, and the check of what this
//!   router cannot run.
//! - [`call`]: the interpreter of one channel, sans-IO: state plus event gives commands.
//! - [`service`]: the gRPC layer that moves events and commands, reload, metrics.
//! - [`resources`]: on Kubernetes, the dialplan followed in its ConfigMap through the
//!   API, rather than waiting for the kubelet to refresh the mounted file.
//!
//! The reference is Asterisk's documented behaviour. Where this router differs, on
//! purpose (each module says more):
//!
//! - Text from the caller never becomes syntax: no dial-string, option, expression or
//!   variable-name injection (Asterisk leaves that to `FILTER()`) ([`text`]).
//! - `WaitExten` collects digits until `#` or the digit timeout ([`call`]).
//! - `TIMEOUT(absolute)` passing during a Dial hangs the caller up ([`call`]).
//! - More than 10,000 priorities without waiting is taken for a loop and hung up
//!   ([`call`]).
//! - Arithmetic is `f64`, not `long double` ([`expr`]).
//! - Includes with a time restriction and `switch =>` are not run; the check lists
//!   them ([`dialplan`]).
//! - `VoiceMail` with several mailboxes (`a&b`) leaves the message in the first only
//!   ([`apps`]).

#![forbid(unsafe_code)]

pub mod apps;
pub mod call;
pub mod dialplan;
pub mod expr;
#[doc(hidden)]
pub mod fuzzing;
pub mod pattern;
pub mod resources;
pub mod service;
pub mod subst;
pub mod text;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use service_runtime::balance::Balanced;
use service_runtime::settings::parse_duration;
use service_runtime::{CommonArgs, GrpcServer, ServiceInfo, Shutdown};

pub use dialplan::Dialplan;

pub const NAME: &str = "router";

/// Settings; each flag is also a `PHONE_*` environment variable.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = NAME, version, about = "The dialplan router of the phone system")]
pub struct Config {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Directory holding extensions.conf.
    #[arg(long, env = "PHONE_CONFIG_DIR", default_value = "/etc/phone")]
    pub config_dir: PathBuf,
    #[arg(long, env = "PHONE_EDGE_URL", default_value = "http://sip-edge:50051")]
    pub edge_url: String,
    #[arg(
        long,
        env = "PHONE_VOICEMAIL_URL",
        default_value = "http://voicemail:50051"
    )]
    pub voicemail_url: String,
    /// How often extensions.conf (and what it includes) is checked for changes; new
    /// calls use the new version, calls in progress finish on theirs. 0 turns it off.
    #[arg(long, env = "PHONE_RELOAD_INTERVAL", default_value = "2s", value_parser = parse_duration)]
    pub reload_interval: Duration,
    /// Follow the dialplan in this ConfigMap (of --kube-namespace) through the
    /// Kubernetes API: its `extensions.conf` key (and the files that includes, as other
    /// keys) applies within a second of a change. The router starts from
    /// --config-dir's file all the same, and stops checking that file for changes.
    #[arg(long, env = "PHONE_DIALPLAN_CONFIGMAP", requires = "kube_namespace")]
    pub dialplan_configmap: Option<String>,
    /// Spread the voicemail sessions over the ready pods of this Service (in
    /// --kube-namespace, from its EndpointSlices), each session on the pod it started
    /// on, instead of one connection to --voicemail-url.
    #[arg(long, env = "PHONE_VOICEMAIL_SERVICE", requires = "kube_namespace")]
    pub voicemail_service: Option<String>,
    /// The namespace of --dialplan-configmap (the chart sets the pod's own). The API
    /// server and credentials come from the pod's service account, or from KUBECONFIG.
    #[arg(long, env = "PHONE_KUBE_NAMESPACE")]
    pub kube_namespace: Option<String>,
    /// List every line of extensions.conf this router cannot run, with file:line, and
    /// exit: 0 when there is none, 1 otherwise. Nothing is served.
    #[arg(long, env = "PHONE_CHECK_DIALPLAN")]
    pub check_dialplan: bool,
}

impl Config {
    /// A router on loopback with the dialplan of `config_dir`, not reloaded, whose
    /// peers are unreachable until set (tests, and `phone`).
    pub fn loopback(config_dir: PathBuf) -> Self {
        Self {
            common: CommonArgs::loopback(),
            config_dir,
            edge_url: "http://127.0.0.1:9".into(),
            voicemail_url: "http://127.0.0.1:9".into(),
            reload_interval: Duration::ZERO,
            dialplan_configmap: None,
            voicemail_service: None,
            kube_namespace: None,
            check_dialplan: false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] asterisk_conf::Error),
    #[error(transparent)]
    Runtime(#[from] service_runtime::Error),
    #[error("the Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("{lines} lines in {files} files cannot run (listed above)")]
    Unsupported { lines: usize, files: usize },
}

/// Reads and compiles `extensions.conf` in `dir`.
pub fn load_dialplan(
    dir: &Path,
) -> Result<(Arc<Dialplan>, asterisk_conf::extensions::Dialplan), Error> {
    let ast = asterisk_conf::extensions::load(dir.join("extensions.conf"))?;
    Ok((Dialplan::compile(&ast), ast))
}

/// What the check finds: the lines Asterisk itself would warn about and skip (as the
/// loader read them), and the lines the router cannot run as Asterisk would.
#[derive(Debug, Default)]
pub struct Check {
    pub warnings: Vec<String>,
    pub unsupported: Vec<String>,
    /// How many distinct lines, and in how many files, cannot run.
    pub lines: usize,
    pub files: usize,
}

/// The check mode: every warning and every unsupported line, as `file:line: message`.
pub fn check(dir: &Path) -> Result<Check, Error> {
    let (plan, ast) = load_dialplan(dir)?;
    let found = plan.check();
    let lines: std::collections::BTreeSet<(String, u32)> = found
        .iter()
        .map(|u| (u.location.file.display().to_string(), u.location.line))
        .collect();
    let files: std::collections::BTreeSet<&String> = lines.iter().map(|(f, _)| f).collect();
    let mut warnings = ast.warnings.clone();
    warnings.sort_by(|a, b| {
        (&a.location.file, a.location.line).cmp(&(&b.location.file, b.location.line))
    });
    Ok(Check {
        warnings: warnings.iter().map(ToString::to_string).collect(),
        unsupported: found.iter().map(ToString::to_string).collect(),
        lines: lines.len(),
        files: files.len(),
    })
}

/// Prints the check's findings and turns them into the exit status.
pub fn run_check(dir: &Path) -> Result<(), Error> {
    let found = check(dir)?;
    for line in found.warnings.iter().chain(&found.unsupported) {
        println!("{line}");
    }
    if found.unsupported.is_empty() {
        println!(
            "{}: every line can run",
            dir.join("extensions.conf").display()
        );
        Ok(())
    } else {
        Err(Error::Unsupported {
            lines: found.lines,
            files: found.files,
        })
    }
}

/// The router with its dialplan loaded and its port bound.
pub struct Bound {
    server: GrpcServer,
    router: service::Router,
    reload: Option<service::Reloader>,
    /// The ConfigMap followed instead: the API client, its namespace and name.
    configmap: Option<(kube::Client, String, String)>,
    /// The voicemail Service whose ready pods get the sessions: the API client, its
    /// namespace and name, and the pool it fills.
    voicemail_service: Option<(kube::Client, String, String, Balanced)>,
    config_dir: PathBuf,
    contexts: usize,
}

/// Loads extensions.conf and binds the gRPC port.
pub async fn bind(config: Config) -> Result<Bound, Error> {
    let (dialplan, ast) = load_dialplan(&config.config_dir)?;
    service_runtime::log_config_warnings(&ast.warnings);
    for line in dialplan.check() {
        tracing::warn!("{line}");
    }
    let mut server = GrpcServer::bind(NAME, &config.common).await?;
    let metrics = service::Metrics::register(server.registry());
    let voicemail = Balanced::new(&config.voicemail_url)?;
    let router = service::Router::new(dialplan, voicemail.clone(), metrics, server.in_flight());
    let kube = match (
        &config.kube_namespace,
        &config.dialplan_configmap,
        &config.voicemail_service,
    ) {
        (Some(namespace), Some(_), _) | (Some(namespace), _, Some(_)) => {
            Some((kube::Client::try_default().await?, namespace.clone()))
        }
        _ => None,
    };
    let configmap = kube
        .clone()
        .zip(config.dialplan_configmap)
        .map(|((client, namespace), name)| (client, namespace, name));
    let voicemail_service = kube
        .zip(config.voicemail_service)
        .map(|((client, namespace), service)| (client, namespace, service, voicemail));
    let file_reload = !config.reload_interval.is_zero() && configmap.is_none();
    let reload = file_reload.then(|| {
        service::Reloader::new(
            config.config_dir.join("extensions.conf"),
            &ast,
            config.reload_interval,
            router.clone(),
        )
    });
    Ok(Bound {
        server,
        router,
        reload,
        configmap,
        voicemail_service,
        config_dir: config.config_dir,
        contexts: ast.contexts.len(),
    })
}

impl Bound {
    pub fn info(&self) -> ServiceInfo {
        let mut info = self.server.info();
        info.extra
            .push(("contexts".into(), self.contexts.to_string()));
        info
    }

    /// The dialplan new calls start on (tests).
    pub fn router(&self) -> &service::Router {
        &self.router
    }

    pub async fn run(self, shutdown: Shutdown) -> Result<(), Error> {
        if let Some(reload) = self.reload {
            tokio::spawn(reload.run(shutdown.clone()));
        }
        if let Some((client, namespace, service, pool)) = self.voicemail_service {
            tokio::spawn(phone_kube::endpoints::watch_balanced(
                kube::Api::namespaced(client, &namespace),
                service,
                pool,
                shutdown.clone(),
            ));
        }
        if let Some((client, namespace, name)) = self.configmap {
            tokio::spawn(resources::follow_configmap(
                kube::Api::namespaced(client, &namespace),
                name,
                self.config_dir.clone(),
                self.router.clone(),
                shutdown.clone(),
            ));
        }
        self.server
            .serve_one(self.router.into_server(), shutdown)
            .await?;
        Ok(())
    }
}

/// Loads, binds and serves until `shutdown`, then drains. With `--check-dialplan`,
/// prints the check and returns instead.
pub async fn run(config: Config, shutdown: Shutdown) -> Result<(), Error> {
    if config.check_dialplan {
        return run_check(&config.config_dir);
    }
    bind(config).await?.run(shutdown).await
}
