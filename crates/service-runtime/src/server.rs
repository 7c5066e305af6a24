//! A service's servers: gRPC (its API plus the standard `grpc.health.v1.Health`) and
//! admin HTTP (`/metrics`, `/livez`, `/readyz`), with the drain on shutdown.
//!
//! Binding and serving are two steps so that a caller binding port 0 (tests, `phone`)
//! learns the addresses before anything runs.
//!
//! ```text
//!  bind ──> serve: SERVING ──SIGTERM──> NOT_SERVING ──drain_delay──> stop accepting
//!                                                        └──> wait for in-flight RPCs
//!                                                             and tracked tasks, at most
//!                                                             drain_deadline ──> exit
//! ```

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::task::TaskTracker;
use tonic::service::Routes;
use tonic_health::ServingStatus;

use crate::grpc::{GrpcMetrics, ServerTraceLayer};
use crate::settings::CommonArgs;
use crate::shutdown::Shutdown;
use crate::Error;

/// How long a drained server waits for the streams still open (watches) to close
/// before it closes them.
const STREAMS_LINGER: Duration = Duration::from_secs(2);

/// What a running service tells `phone` and the logs about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceInfo {
    pub name: &'static str,
    pub grpc: SocketAddr,
    pub admin: SocketAddr,
    /// Other addresses the service listens on, as `label=value` (`sip=udp:...`).
    pub extra: Vec<(String, String)>,
}

impl std::fmt::Display for ServiceInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} grpc={} admin={}", self.name, self.grpc, self.admin)?;
        for (label, value) in &self.extra {
            write!(f, " {label}={value}")?;
        }
        Ok(())
    }
}

/// A gRPC and an admin listener bound ahead of time by a parent process or a test,
/// so that it knows every service's address before any service starts (services
/// point at each other in both directions). Taken once by [`GrpcServer::bind`].
#[derive(Debug, Clone)]
pub struct Listeners {
    inner: Arc<Mutex<Option<(std::net::TcpListener, std::net::TcpListener)>>>,
    grpc: SocketAddr,
    admin: SocketAddr,
}

impl Listeners {
    /// Binds two ephemeral ports on 127.0.0.1.
    pub fn bind_loopback() -> Result<Self, Error> {
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        Self::bind_first_free(any, any, 1).map(|(listeners, _)| listeners)
    }

    /// Binds the first of `slots` port pairs that is free: the gRPC port of `grpc` and
    /// the admin port of `admin`, each plus `k`, for `k` from 0. Several processes on
    /// one host (pods on a node's network) each take their own pair this way, the bind
    /// itself deciding who has which; the pair is held until the process ends. Returns
    /// the listeners and `k`.
    pub fn bind_first_free(
        grpc: SocketAddr,
        admin: SocketAddr,
        slots: u16,
    ) -> Result<(Self, u16), Error> {
        let bind = |addr: SocketAddr| {
            std::net::TcpListener::bind(addr)
                .and_then(|l| l.set_nonblocking(true).map(|()| l))
                .map_err(|source| Error::Bind {
                    addr: addr.to_string(),
                    source,
                })
        };
        let shifted = |addr: SocketAddr, k: u16| match addr.port() {
            0 => Some(addr),
            port => port.checked_add(k).map(|p| SocketAddr::new(addr.ip(), p)),
        };
        let mut last = None;
        for k in 0..slots.max(1) {
            let (Some(g), Some(a)) = (shifted(grpc, k), shifted(admin, k)) else {
                break;
            };
            let pair = bind(g).and_then(|g| Ok((g, bind(a)?)));
            match pair {
                Ok((g, a)) => {
                    let addr = |l: &std::net::TcpListener| {
                        l.local_addr().map_err(|source| Error::Bind {
                            addr: "a bound listener".into(),
                            source,
                        })
                    };
                    let listeners = Self {
                        grpc: addr(&g)?,
                        admin: addr(&a)?,
                        inner: Arc::new(Mutex::new(Some((g, a)))),
                    };
                    return Ok((listeners, k));
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or(Error::Bind {
            addr: grpc.to_string(),
            source: std::io::Error::new(
                std::io::ErrorKind::AddrNotAvailable,
                "no port slot left below 65536",
            ),
        }))
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    fn take(&self) -> Option<(std::net::TcpListener, std::net::TcpListener)> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// A service's bound but not yet serving listeners, its metrics registry and the
/// tracker for in-flight work that the drain waits for.
pub struct GrpcServer {
    name: &'static str,
    grpc: TcpListener,
    admin: TcpListener,
    drain_delay: Duration,
    drain_deadline: Duration,
    registry: Registry,
    in_flight: TaskTracker,
    accept_while_draining: bool,
}

impl GrpcServer {
    /// Binds the gRPC and admin listeners of `common` (or takes the handed-over ones).
    pub async fn bind(name: &'static str, common: &CommonArgs) -> Result<Self, Error> {
        let bind = |addr: SocketAddr| async move {
            TcpListener::bind(addr).await.map_err(|source| Error::Bind {
                addr: addr.to_string(),
                source,
            })
        };
        let adopt = |listener: std::net::TcpListener| {
            TcpListener::from_std(listener).map_err(|source| Error::Bind {
                addr: "handed-over listener".into(),
                source,
            })
        };
        let (grpc, admin) = match common.handed_over.as_ref().and_then(Listeners::take) {
            Some((grpc, admin)) => (adopt(grpc)?, adopt(admin)?),
            None => (
                bind(common.grpc_bind).await?,
                bind(common.admin_bind).await?,
            ),
        };
        let mut registry = Registry::with_prefix("phone");
        registry.register(
            "build_info",
            "The running version",
            prometheus_client::metrics::info::Info::new(vec![
                ("service", name),
                ("version", env!("CARGO_PKG_VERSION")),
            ]),
        );
        Ok(Self {
            name,
            grpc,
            admin,
            drain_delay: common.drain_delay,
            drain_deadline: common.drain_deadline,
            registry,
            in_flight: TaskTracker::new(),
            accept_while_draining: false,
        })
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc
            .local_addr()
            .expect("a bound listener has an address")
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
            .local_addr()
            .expect("a bound listener has an address")
    }

    pub fn info(&self) -> ServiceInfo {
        ServiceInfo {
            name: self.name,
            grpc: self.grpc_addr(),
            admin: self.admin_addr(),
            extra: Vec::new(),
        }
    }

    /// Where the service registers its own metrics (prefixed `phone_`).
    pub fn registry(&mut self) -> &mut Registry {
        &mut self.registry
    }

    /// Work the drain waits for: spawn calls and sessions on it.
    pub fn in_flight(&self) -> TaskTracker {
        self.in_flight.clone()
    }

    /// Keeps answering gRPC requests while draining, until the in-flight work is done
    /// (or the deadline), instead of closing the API after the drain delay. For work
    /// that ends by a later request, such as a media session ended by DeleteSession:
    /// the service itself refuses new work while draining.
    pub fn accept_while_draining(&mut self) {
        self.accept_while_draining = true;
    }

    /// Serves one gRPC service (the service's API) with health and admin until
    /// `shutdown`, then drains; health reports it under its gRPC name.
    pub async fn serve_one<S>(self, service: S, shutdown: Shutdown) -> Result<(), Error>
    where
        S: tower::Service<http::Request<tonic::body::Body>, Error = std::convert::Infallible>
            + tonic::server::NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Response: axum::response::IntoResponse,
        S::Future: Send + 'static,
    {
        self.serve(Routes::new(service), &[S::NAME], shutdown).await
    }

    /// Serves `routes` (the service's gRPC API) with health and admin until `shutdown`,
    /// then drains. `health_names` are the gRPC service names reported in the health
    /// service (besides "", the whole server).
    pub async fn serve(
        mut self,
        routes: Routes,
        health_names: &[&str],
        shutdown: Shutdown,
    ) -> Result<(), Error> {
        let name = self.name;
        let metrics = GrpcMetrics::register(&mut self.registry);
        let (health, health_service) = tonic_health::server::health_reporter();
        let mut names: Vec<String> = vec![String::new()];
        names.extend(health_names.iter().map(|n| (*n).to_owned()));
        for n in &names {
            health.set_service_status(n, ServingStatus::Serving).await;
        }
        let ready = Arc::new(AtomicBool::new(true));

        // The admin server runs until the very end, so /metrics stays scrapeable while
        // draining.
        let admin_stop = Shutdown::new();
        let admin = tokio::spawn(serve_admin(
            self.admin,
            Arc::new(Mutex::new(self.registry)),
            ready.clone(),
            admin_stop.clone(),
        ));

        // The gRPC server stops accepting only after the drain delay.
        let stop_accepting = Shutdown::new();
        let grpc = tonic::transport::Server::builder()
            .layer(ServerTraceLayer::new(name, metrics))
            .add_routes(routes.add_service(health_service))
            .serve_with_incoming_shutdown(incoming(self.grpc), {
                let stop = stop_accepting.clone();
                async move { stop.triggered().await }
            });
        tokio::pin!(grpc);
        tracing::info!(service = name, "serving");

        let early = tokio::select! {
            result = &mut grpc => Some(result),
            _ = shutdown.triggered() => None,
        };
        if let Some(result) = early {
            admin_stop.trigger();
            let _ = admin.await;
            return result.map_err(Error::from);
        }

        // Drain: NOT_SERVING first, so probes and callers move away.
        ready.store(false, Ordering::SeqCst);
        for n in &names {
            health
                .set_service_status(n, ServingStatus::NotServing)
                .await;
        }
        tracing::info!(
            service = name,
            delay = ?self.drain_delay,
            deadline = ?self.drain_deadline,
            "draining: health is NOT_SERVING"
        );
        let deadline = tokio::time::Instant::now() + self.drain_deadline;
        tokio::select! {
            result = &mut grpc => {
                // The server ended on its own during the delay.
                admin_stop.trigger();
                let _ = admin.await;
                return result.map_err(Error::from);
            }
            _ = tokio::time::sleep(self.drain_delay.min(self.drain_deadline)) => {}
        }
        self.in_flight.close();
        let in_flight = self.in_flight.clone();
        let accept_while_draining = self.accept_while_draining;
        let finished = tokio::time::timeout_at(deadline, async {
            if accept_while_draining {
                tokio::select! {
                    result = &mut grpc => return result,
                    () = in_flight.wait() => {}
                }
                stop_accepting.trigger();
            } else {
                stop_accepting.trigger();
                tokio::select! {
                    result = &mut grpc => {
                        in_flight.wait().await;
                        return result;
                    }
                    () = in_flight.wait() => {}
                }
            }
            // The work is done. Streams still open are subscriptions (a relay's event
            // watch, health watches) that never end by themselves: the graceful stop
            // would wait for them until the deadline.
            match tokio::time::timeout(STREAMS_LINGER, &mut grpc).await {
                Ok(result) => result,
                Err(_) => {
                    tracing::info!(
                        service = name,
                        "drained; closing the watch streams still open"
                    );
                    Ok(())
                }
            }
        })
        .await;
        admin_stop.trigger();
        let _ = admin.await;
        match finished {
            Ok(result) => {
                tracing::info!(service = name, "drained");
                result.map_err(Error::from)
            }
            Err(_) => {
                tracing::warn!(
                    service = name,
                    remaining = self.in_flight.len(),
                    "drain deadline passed; stopping with work in flight"
                );
                Ok(())
            }
        }
    }
}

/// The Prometheus text of the admin server at `admin` (`GET /metrics`), for tests and
/// tools; the whole HTTP response, headers included, or the error.
pub async fn scrape_metrics(admin: SocketAddr) -> std::io::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(admin).await?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
        .await?;
    let mut text = String::new();
    stream.read_to_string(&mut text).await?;
    Ok(text)
}

/// Accepted gRPC connections with Nagle's algorithm off: a response written in more
/// than one piece would otherwise wait for the client's delayed ACK (40 ms per call
/// leg between services).
fn incoming(
    listener: TcpListener,
) -> impl futures::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use futures::StreamExt;
    TcpListenerStream::new(listener).map(|accepted| {
        accepted.inspect(|stream| {
            if let Err(e) = stream.set_nodelay(true) {
                tracing::debug!(error = %e, "cannot set TCP_NODELAY");
            }
        })
    })
}

#[derive(Clone)]
struct AdminState {
    registry: Arc<Mutex<Registry>>,
    ready: Arc<AtomicBool>,
}

async fn serve_admin(
    listener: TcpListener,
    registry: Arc<Mutex<Registry>>,
    ready: Arc<AtomicBool>,
    stop: Shutdown,
) -> Result<(), Error> {
    let app = axum::Router::new()
        .route("/metrics", axum::routing::get(metrics))
        .route("/livez", axum::routing::get(|| async { "ok\n" }))
        .route("/readyz", axum::routing::get(readyz))
        .with_state(AdminState { registry, ready });
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.triggered().await })
        .await
        .map_err(Error::Admin)
}

async fn metrics(State(state): State<AdminState>) -> impl IntoResponse {
    let mut body = String::new();
    let encoded = {
        let registry = state.registry.lock().unwrap_or_else(|e| e.into_inner());
        prometheus_client::encoding::text::encode(&mut body, &registry)
    };
    match encoded {
        Ok(()) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        ),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain")],
            format!("cannot encode metrics: {e}\n"),
        ),
    }
}

async fn readyz(State(state): State<AdminState>) -> impl IntoResponse {
    if state.ready.load(Ordering::SeqCst) {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap()
    }

    #[test]
    fn a_second_process_on_the_host_takes_the_next_port_pair() {
        let squatter = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let grpc = squatter.local_addr().unwrap();
        let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
        // One slot, taken: refused with the address.
        let refused = Listeners::bind_first_free(grpc, admin, 1).unwrap_err();
        assert!(refused.to_string().contains(&grpc.to_string()), "{refused}");
        // More slots: the first whose two ports are free.
        let (listeners, k) = Listeners::bind_first_free(grpc, admin, 4).unwrap();
        assert!((1..4).contains(&k), "slot {k}");
        assert_eq!(listeners.grpc_addr().port(), grpc.port() + k);
        assert_eq!(listeners.admin_addr().port(), admin.port() + k);
        // While it holds them, the next one goes further.
        let (next, j) = Listeners::bind_first_free(grpc, admin, 8).unwrap();
        assert!(j > k, "slot {j} after {k}");
        assert_eq!(next.grpc_addr().port(), grpc.port() + j);
    }
}
