//! What every phone service runs on, so that the five behave the same way in
//! Kubernetes:
//!
//! - [`settings`]: flags that are also environment variables of the same name
//!   (`--sip-bind` = `PHONE_SIP_BIND`), and the flags all services share.
//! - [`telemetry`]: `tracing` to stderr, and OpenTelemetry export over OTLP when the
//!   standard `OTEL_EXPORTER_OTLP_ENDPOINT` is set; W3C trace context as the propagator.
//! - [`grpc`]: trace context injected into every outgoing gRPC call and extracted from
//!   every incoming one (one span per RPC, child of the caller's), request metrics.
//! - [`server`]: a service's gRPC server with the standard health service, its admin
//!   HTTP port (`/metrics`, `/livez`, `/readyz`), and the drain on shutdown.
//! - [`shutdown`]: SIGTERM/SIGINT to a cancellation every task can wait on.
//!
//! The drain follows linkerd2-proxy and tonic-health: on SIGTERM the health service
//! reports NOT_SERVING at once (Kubernetes stops sending new work), the server keeps
//! serving for `--drain-delay` while endpoints update, then stops accepting and waits
//! for in-flight RPCs and calls until `--drain-deadline`, then exits.

#![forbid(unsafe_code)]

pub mod balance;
pub mod grpc;
pub mod server;
pub mod settings;
pub mod shutdown;
pub mod telemetry;

use std::future::Future;
use std::process::ExitCode;

pub use server::{GrpcServer, Listeners, ServiceInfo};
pub use settings::CommonArgs;
pub use shutdown::Shutdown;

/// Errors of the runtime itself.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("admin HTTP server failed: {0}")]
    Admin(#[source] std::io::Error),
    #[error("telemetry setup failed: {0}")]
    Telemetry(String),
    #[error("invalid gRPC address '{url}': {message}")]
    Endpoint { url: String, message: String },
}

/// Logs what Asterisk would warn about in a configuration file (`file:line: warning`).
pub fn log_config_warnings<W: std::fmt::Display>(warnings: &[W]) {
    for warning in warnings {
        tracing::warn!("{warning}");
    }
}

/// Chooses aws-lc-rs as the process's TLS provider. rustls picks one by itself only
/// when a single provider is built in; with the AWS SDK (aws-lc-rs) and kube (ring) in
/// one workspace build, a client that relies on the default (kube's) would panic.
/// Idempotent; tests that make such clients call it too.
pub fn install_tls_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// The `main` of a service binary: parses flags (and their environment variables),
/// sets up telemetry, runs `run` until SIGTERM/SIGINT and its drain end, and turns an
/// error into a one-line message on stderr and exit code 1.
pub fn main<C, F, Fut, E>(service: &'static str, run: F) -> ExitCode
where
    C: clap::Parser,
    F: FnOnce(C, Shutdown) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let config = C::parse();
    install_tls_provider();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{service}: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let _telemetry = match telemetry::init(service) {
            Ok(guard) => guard,
            Err(e) => {
                eprintln!("{service}: {e}");
                return ExitCode::FAILURE;
            }
        };
        let shutdown = Shutdown::new();
        shutdown.trigger_on_signals();
        match run(config, shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                // One plain line, `service: file:line: message` for config errors.
                eprintln!("{service}: {e}");
                ExitCode::FAILURE
            }
        }
    })
}
