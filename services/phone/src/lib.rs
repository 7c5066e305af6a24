//! `phone`: the five services in one process, each on its own loopback gRPC port and
//! wired to the others over real gRPC, as in a cluster. It is the embedded default for a
//! laptop, a demo and the end-to-end tests (as Loki and Tempo have a single-binary
//! mode).
//!
//! Start-up: the Asterisk files are read from `--config-dir` (or the shipped freelancer
//! example, written under `--data-dir`), every service binds, then `phone` asks each
//! one's gRPC health service until all report SERVING, prints one line per service
//! with its addresses, and a last line `ready`. SIGTERM drains all five together.

#![forbid(unsafe_code)]

pub mod guide;
pub mod probe;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::future::{BoxFuture, FutureExt};
use service_runtime::settings::{parse_duration, PortRange};
use service_runtime::{CommonArgs, Listeners, ServiceInfo, Shutdown};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

pub const NAME: &str = "phone";

/// The seed's configuration, shipped in the binary.
pub const EXAMPLE_CONFIG: [(&str, &str); 3] = [
    (
        "sip.conf",
        include_str!("../../../deploy/examples/freelancer/sip.conf"),
    ),
    (
        "extensions.conf",
        include_str!("../../../deploy/examples/freelancer/extensions.conf"),
    ),
    (
        "voicemail.conf",
        include_str!("../../../deploy/examples/freelancer/voicemail.conf"),
    ),
];

/// Settings; each flag is also a `PHONE_*` environment variable.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = NAME, version, about = "The whole phone system in one process")]
pub struct Config {
    /// Directory holding sip.conf, extensions.conf and voicemail.conf; without it, the
    /// shipped freelancer example.
    #[arg(long, env = "PHONE_CONFIG_DIR")]
    pub config_dir: Option<PathBuf>,
    /// Local state: registrations, messages, the mail outbox.
    #[arg(long, env = "PHONE_DATA_DIR", default_value = "phone-data")]
    pub data_dir: PathBuf,
    /// The voicemail prompts (scripts/make-prompts makes them).
    #[arg(long, env = "PHONE_PROMPTS_DIR", default_value = voicemail::DEFAULT_PROMPTS_DIR)]
    pub prompts_dir: PathBuf,
    /// Messages and the mail outbox in S3 instead of the data folder.
    #[command(flatten)]
    pub s3: phone_blobs::S3Args,
    /// Voicemail emails through this SMTP server; without it they are written as .eml
    /// files to `<data>/mailer/mail`.
    #[command(flatten)]
    pub smtp: mailer::smtp::SmtpArgs,
    /// SIP over UDP and TCP.
    #[arg(long, env = "PHONE_SIP_BIND", default_value = "0.0.0.0:5060")]
    pub sip_bind: SocketAddr,
    /// RTP ports of the media relay, LOW-HIGH.
    #[arg(long, env = "PHONE_RTP_PORTS", default_value = "10000-20000")]
    pub rtp_ports: PortRange,
    /// The address phones and carriers are told to send SIP and RTP to.
    #[arg(long, env = "PHONE_ADVERTISE_IP")]
    pub advertise_ip: Option<IpAddr>,
    /// After SIGTERM, how long to report NOT_SERVING before refusing new work.
    #[arg(long, env = "PHONE_DRAIN_DELAY", default_value = "0s", value_parser = parse_duration)]
    pub drain_delay: Duration,
    /// After SIGTERM, the longest wait for calls and requests in flight.
    #[arg(long, env = "PHONE_DRAIN_DEADLINE", default_value = "30s", value_parser = parse_duration)]
    pub drain_deadline: Duration,
    /// List every line of extensions.conf the router cannot run (file:line) and exit:
    /// 0 when there is none, 1 otherwise. Nothing starts.
    #[arg(long, env = "PHONE_CHECK_DIALPLAN")]
    pub check_dialplan: bool,
    /// Check a running deployment and exit (the chart's `helm test`): each of these
    /// gRPC URLs must report SERVING on its health service. Nothing starts.
    #[arg(long, env = "PHONE_PROBE_GRPC", value_delimiter = ',')]
    pub probe_grpc: Vec<String>,
    /// With the probe: this SIP address (`host:port`) must answer OPTIONS over UDP
    /// with 200.
    #[arg(long, env = "PHONE_PROBE_SIP")]
    pub probe_sip: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Runtime(#[from] service_runtime::Error),
    #[error("cannot prepare {}: {source}", path.display())]
    DataDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    SipEdge(#[from] sip_edge::Error),
    #[error(transparent)]
    Router(#[from] router::Error),
    #[error(transparent)]
    MediaRelay(#[from] media_relay::Error),
    #[error(transparent)]
    Voicemail(#[from] voicemail::Error),
    #[error(transparent)]
    Mailer(#[from] mailer::Error),
    #[error(transparent)]
    Probe(#[from] probe::Failed),
    #[error("{service} did not report SERVING within {timeout:?}")]
    NotServing {
        service: &'static str,
        timeout: Duration,
    },
}

/// How long start-up may take before `phone` gives up.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs the five services until `shutdown`, then drains them.
pub async fn run(config: Config, shutdown: Shutdown) -> Result<(), Error> {
    if !config.probe_grpc.is_empty() || config.probe_sip.is_some() {
        let sip = config.probe_sip.as_deref();
        return Ok(probe::run(&config.probe_grpc, sip, probe::CHECK_TIMEOUT).await?);
    }
    let config_dir = match &config.config_dir {
        Some(dir) => dir.clone(),
        None => write_example_config(&config.data_dir)?,
    };
    if config.check_dialplan {
        return router::run_check(&config_dir).map_err(Error::from);
    }
    let data_dir = |service: &str| -> Result<PathBuf, Error> {
        let path = config.data_dir.join(service);
        std::fs::create_dir_all(&path).map_err(|source| Error::DataDir {
            path: path.clone(),
            source,
        })?;
        Ok(path)
    };

    // Every service's listeners first, so each can be told where the others are.
    let listeners = Wiring {
        edge: Listeners::bind_loopback()?,
        router: Listeners::bind_loopback()?,
        media_relay: Listeners::bind_loopback()?,
        voicemail: Listeners::bind_loopback()?,
        mailer: Listeners::bind_loopback()?,
    };
    let common = |l: &Listeners| CommonArgs {
        handed_over: Some(l.clone()),
        drain_delay: config.drain_delay,
        drain_deadline: config.drain_deadline,
        ..CommonArgs::loopback()
    };
    let url = |l: &Listeners| format!("http://{}", l.grpc_addr());

    let edge = sip_edge::bind(sip_edge::Config {
        common: common(&listeners.edge),
        sip_bind: config.sip_bind,
        advertise_ip: config.advertise_ip,
        router_url: url(&listeners.router),
        media_relays: vec![url(&listeners.media_relay)],
        voicemail_url: url(&listeners.voicemail),
        ..sip_edge::Config::loopback(config_dir.clone(), data_dir("sip-edge")?)
    })
    .await?;
    let edge_sip = edge.sip_addr();
    let config_dir_for_guide = config_dir.clone();
    let router = router::bind(router::Config {
        common: common(&listeners.router),
        edge_url: url(&listeners.edge),
        voicemail_url: url(&listeners.voicemail),
        reload_interval: Duration::from_secs(2),
        ..router::Config::loopback(config_dir.clone())
    })
    .await?;
    let media_relay = media_relay::bind(media_relay::Config {
        common: common(&listeners.media_relay),
        rtp_bind_ip: IpAddr::from([0, 0, 0, 0]),
        advertise_ip: config.advertise_ip,
        ..media_relay::Config::loopback(config.rtp_ports)
    })
    .await?;
    let voicemail_data = data_dir("voicemail")?;
    let voicemail = voicemail::bind(voicemail::Config {
        common: common(&listeners.voicemail),
        config_dir: config_dir.clone(),
        data_dir: voicemail_data.clone(),
        prompts_dir: config.prompts_dir.clone(),
        rtp_bind_ip: IpAddr::from([0, 0, 0, 0]),
        advertise_ip: config.advertise_ip,
        mailer_url: url(&listeners.mailer),
        edge_url: url(&listeners.edge),
        s3: config.s3.clone(),
        kube_namespace: None,
        kube_resync: std::time::Duration::from_secs(30),
    })
    .await?;
    let mailer = mailer::bind(mailer::Config {
        common: common(&listeners.mailer),
        smtp: config.smtp.clone(),
        s3: config.s3.clone(),
        ..mailer::Config::loopback(
            config_dir,
            data_dir("mailer")?,
            voicemail_data.join("messages"),
        )
    })
    .await?;

    let guide = {
        let sip = asterisk_conf::sip::load(config_dir_for_guide.join("sip.conf"));
        let dialplan =
            asterisk_conf::extensions::load(config_dir_for_guide.join("extensions.conf"));
        let mail_dir = config.data_dir.join("mailer").join("mail");
        match (sip, dialplan) {
            (Ok(sip), Ok(dialplan)) => guide::guide(
                &sip,
                &dialplan,
                &config_dir_for_guide,
                edge_sip.unwrap_or(config.sip_bind),
                config.advertise_ip,
                match &config.smtp.host {
                    Some(host) => guide::Mail::Smtp {
                        host,
                        port: config.smtp.port,
                    },
                    None => guide::Mail::Folder(&mail_dir),
                },
            ),
            _ => String::new(),
        }
    };
    let infos = [
        edge.info(),
        router.info(),
        media_relay.info(),
        voicemail.info(),
        mailer.info(),
    ];
    // One service failing stops the others: a phone system missing a part is down.
    let services: Vec<BoxFuture<'static, Result<(), Error>>> = vec![
        edge.run(shutdown.clone())
            .map(|r| r.map_err(Error::from))
            .boxed(),
        router
            .run(shutdown.clone())
            .map(|r| r.map_err(Error::from))
            .boxed(),
        media_relay
            .run(shutdown.clone())
            .map(|r| r.map_err(Error::from))
            .boxed(),
        voicemail
            .run(shutdown.clone())
            .map(|r| r.map_err(Error::from))
            .boxed(),
        mailer
            .run(shutdown.clone())
            .map(|r| r.map_err(Error::from))
            .boxed(),
    ];
    let all = {
        let shutdown = shutdown.clone();
        futures::future::join_all(services.into_iter().map(move |service| {
            let shutdown = shutdown.clone();
            async move {
                let result = service.await;
                if result.is_err() {
                    shutdown.trigger();
                }
                result
            }
        }))
    };
    let announce = async {
        for info in &infos {
            wait_serving(info).await?;
        }
        for info in &infos {
            println!("{info}");
        }
        println!("ready");
        print!("{guide}");
        Ok::<(), Error>(())
    };

    tokio::pin!(all);
    tokio::select! {
        results = &mut all => return first_error(results),
        announced = announce => {
            if let Err(e) = announced {
                shutdown.trigger();
                let _ = all.await;
                return Err(e);
            }
        }
    }
    first_error(all.await)
}

struct Wiring {
    edge: Listeners,
    router: Listeners,
    media_relay: Listeners,
    voicemail: Listeners,
    mailer: Listeners,
}

fn first_error(results: Vec<Result<(), Error>>) -> Result<(), Error> {
    results
        .into_iter()
        .collect::<Result<Vec<()>, Error>>()
        .map(|_| ())
}

/// Asks the service's gRPC health service, as a Kubernetes probe would, until it says
/// SERVING.
async fn wait_serving(info: &ServiceInfo) -> Result<(), Error> {
    let url = format!("http://{}", info.grpc);
    let deadline = tokio::time::Instant::now() + START_TIMEOUT;
    let mut client = HealthClient::new(service_runtime::grpc::client_channel(&url)?);
    loop {
        let status = client
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .map(|r| r.into_inner().status);
        if matches!(status, Ok(s) if s == ServingStatus::Serving as i32) {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(Error::NotServing {
                service: info.name,
                timeout: START_TIMEOUT,
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Writes the shipped example to `<data-dir>/example-config` (refreshed at every start;
/// use `--config-dir` for files of your own) and returns that directory.
pub fn write_example_config(data_dir: &Path) -> Result<PathBuf, Error> {
    let dir = data_dir.join("example-config");
    let io = |source| Error::DataDir {
        path: dir.clone(),
        source,
    };
    std::fs::create_dir_all(&dir).map_err(io)?;
    for (name, text) in EXAMPLE_CONFIG {
        std::fs::write(dir.join(name), text).map_err(io)?;
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// `--sip-bind` = `PHONE_SIP_BIND`, for every flag of every binary.
    #[test]
    fn every_flag_of_every_binary_has_its_env_variable() {
        for command in [
            super::Config::command(),
            sip_edge::Config::command(),
            router::Config::command(),
            media_relay::Config::command(),
            voicemail::Config::command(),
            mailer::Config::command(),
        ] {
            let name = command.get_name().to_owned();
            service_runtime::settings::check_env_names(&command)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }

    #[test]
    fn the_shipped_example_is_the_seed_and_loads() {
        let dir = tempfile::tempdir().unwrap();
        let config_dir = super::write_example_config(dir.path()).unwrap();
        let config = asterisk_conf::PhoneConfig::load(&config_dir).unwrap();
        assert!(config.sip.peer("13235550100").is_some());
        assert!(config.dialplan.context("localexts").is_some());
        assert!(config.voicemail.mailbox("default", "13235550100").is_some());
    }
}
