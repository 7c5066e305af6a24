//! The harness of the voicemail service tests: a real MinIO (from
//! `phone-test-support`), the voicemail service on loopback
//! with the seed's voicemail.conf, an RTP peer that speaks G.711 and RFC 4733, and
//! recording stand-ins for the two gRPC peers the service calls (the mailer, whose
//! delivery is issue #7, and the edge's MWI entry point), so the tests can check what
//! the service told them.

#![allow(dead_code, unused_imports)] // each test file uses its own part

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use phone_audio::analysis::{best_correlation_fast, tone_share};
use phone_audio::Law;
use phone_proto::edge::v1 as edge;
use phone_proto::mailer::v1 as mailer;
use phone_proto::voicemail::v1 as pb;
use service_runtime::{CommonArgs, Shutdown};
use tokio::net::UdpSocket;

#[allow(unused_imports)]
pub use phone_test_support::Minio;

pub const BUCKET: &str = "voicemail";

/// What the stand-in mailer and edge were told.
#[derive(Default)]
pub struct Told {
    pub deliveries: Mutex<Vec<mailer::DeliverRequest>>,
    pub mwi: Mutex<Vec<edge::MailboxUpdate>>,
}

struct FakeMailer(Arc<Told>);

#[tonic::async_trait]
impl mailer::mailer_server::Mailer for FakeMailer {
    async fn deliver(
        &self,
        r: tonic::Request<mailer::DeliverRequest>,
    ) -> Result<tonic::Response<mailer::Delivery>, tonic::Status> {
        let r = r.into_inner();
        let id = r.message_id.clone();
        self.0.deliveries.lock().unwrap().push(r);
        Ok(tonic::Response::new(mailer::Delivery {
            message_id: id,
            state: mailer::DeliveryState::Pending as i32,
            ..Default::default()
        }))
    }
    async fn get_delivery(
        &self,
        _: tonic::Request<mailer::GetDeliveryRequest>,
    ) -> Result<tonic::Response<mailer::Delivery>, tonic::Status> {
        Err(tonic::Status::unimplemented("stand-in"))
    }
    async fn list_pending(
        &self,
        _: tonic::Request<mailer::ListPendingRequest>,
    ) -> Result<tonic::Response<mailer::ListPendingResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("stand-in"))
    }
}

struct FakeEdge(Arc<Told>);

#[tonic::async_trait]
impl edge::edge_server::Edge for FakeEdge {
    async fn update_mailbox(
        &self,
        r: tonic::Request<edge::MailboxUpdate>,
    ) -> Result<tonic::Response<edge::MailboxUpdateResponse>, tonic::Status> {
        self.0.mwi.lock().unwrap().push(r.into_inner());
        Ok(tonic::Response::new(edge::MailboxUpdateResponse {
            notified: 1,
        }))
    }
    async fn list_registrations(
        &self,
        _: tonic::Request<edge::ListRegistrationsRequest>,
    ) -> Result<tonic::Response<edge::ListRegistrationsResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("stand-in"))
    }
}

pub fn seed_config_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/examples/freelancer")
}

/// The voicemail service with its peers.
pub struct Service {
    pub grpc: SocketAddr,
    pub told: Arc<Told>,
    pub shutdown: Shutdown,
    /// The service's task, for drain tests.
    pub task: Option<tokio::task::JoinHandle<Result<(), voicemail::Error>>>,
    pub data: tempfile::TempDir,
}

impl Service {
    pub async fn start(s3: Option<voicemail::store::S3Args>) -> Self {
        Self::start_on(tempfile::tempdir().unwrap(), s3).await
    }

    /// With a data folder prepared by the test.
    pub async fn start_on(data: tempfile::TempDir, s3: Option<voicemail::store::S3Args>) -> Self {
        Self::start_configured(data, s3, None).await
    }

    /// Using the `Mailbox`es of `namespace` (the API server from KUBECONFIG), their
    /// Secrets read again every `resync`.
    pub async fn start_with_mailboxes(namespace: &str, resync: Duration) -> Self {
        Self::start_configured(
            tempfile::tempdir().unwrap(),
            None,
            Some((namespace.to_owned(), resync)),
        )
        .await
    }

    async fn start_configured(
        data: tempfile::TempDir,
        s3: Option<voicemail::store::S3Args>,
        kube: Option<(String, Duration)>,
    ) -> Self {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let told = Arc::new(Told::default());
        let peers = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let peers_addr = peers.local_addr().unwrap();
        let routes = tonic::service::Routes::new(mailer::mailer_server::MailerServer::new(
            FakeMailer(told.clone()),
        ))
        .add_service(edge::edge_server::EdgeServer::new(FakeEdge(told.clone())));
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_routes(routes)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(peers)),
        );
        let common = CommonArgs::loopback();
        let config = voicemail::Config {
            common,
            config_dir: seed_config_dir(),
            data_dir: data.path().to_owned(),
            prompts_dir: voicemail::DEFAULT_PROMPTS_DIR.into(),
            rtp_bind_ip: "127.0.0.1".parse().unwrap(),
            advertise_ip: None,
            mailer_url: format!("http://{peers_addr}"),
            edge_url: format!("http://{peers_addr}"),
            s3: s3.unwrap_or_else(voicemail::store::S3Args::none),
            kube_namespace: kube.as_ref().map(|(namespace, _)| namespace.clone()),
            kube_resync: kube.map_or(Duration::from_secs(30), |(_, resync)| resync),
        };
        let bound = voicemail::bind(config).await.expect("voicemail binds");
        let grpc = bound.info().grpc;
        let shutdown = Shutdown::new();
        let task = Some(tokio::spawn(bound.run(shutdown.clone())));
        Service {
            grpc,
            told,
            shutdown,
            task,
            data,
        }
    }

    pub async fn client(&self) -> pb::voicemail_client::VoicemailClient<tonic::transport::Channel> {
        pb::voicemail_client::VoicemailClient::connect(format!("http://{}", self.grpc))
            .await
            .unwrap()
    }
}

/// The caller's side of the media: a UDP socket speaking PCMU and RFC 4733.
pub struct Caller {
    pub socket: UdpSocket,
    pub voicemail: SocketAddr,
    seq: u16,
    ts: u32,
    /// The 20 ms clock of everything the caller sends.
    clock: tokio::time::Interval,
    /// The law the caller speaks (and expects back).
    pub law: Law,
    /// Payload types of the audio received.
    pub payload_types: std::collections::BTreeSet<u8>,
}

impl Caller {
    pub async fn new(voicemail: SocketAddr) -> Self {
        Caller {
            socket: UdpSocket::bind("127.0.0.1:0").await.unwrap(),
            voicemail,
            seq: 1,
            ts: 8000,
            clock: tokio::time::interval(Duration::from_millis(20)),
            law: Law::Ulaw,
            payload_types: Default::default(),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.socket.local_addr().unwrap()
    }

    async fn send_packet(&mut self, pt: u8, ts: u32, payload: &[u8], marker: bool) {
        let mut p = vec![0x80, pt | if marker { 0x80 } else { 0 }];
        p.extend_from_slice(&self.seq.to_be_bytes());
        p.extend_from_slice(&ts.to_be_bytes());
        p.extend_from_slice(&0x5eed_5eedu32.to_be_bytes());
        p.extend_from_slice(payload);
        self.socket.send_to(&p, self.voicemail).await.unwrap();
        self.seq = self.seq.wrapping_add(1);
    }

    /// Sends `samples` as 20 ms PCMU packets in real time, and returns what came back
    /// meanwhile (decoded).
    pub async fn talk(&mut self, samples: &[i16]) -> Vec<i16> {
        let mut heard = Vec::new();
        for frame in samples.chunks(160) {
            self.clock.tick().await;
            let payload: Vec<u8> = frame.iter().map(|&s| self.law.encode(s)).collect();
            self.send_packet(self.law.payload_type(), self.ts, &payload, false)
                .await;
            self.ts = self.ts.wrapping_add(160);
            self.drain(&mut heard);
        }
        heard
    }

    /// Silence for `ms`, returning what was heard.
    pub async fn listen(&mut self, ms: usize) -> Vec<i16> {
        self.talk(&vec![0i16; ms * 8]).await
    }

    fn drain(&mut self, heard: &mut Vec<i16>) {
        let mut buf = [0u8; 2048];
        while let Ok((len, _)) = self.socket.try_recv_from(&mut buf) {
            let pt = buf[1] & 0x7F;
            let law = match pt {
                0 => Law::Ulaw,
                8 => Law::Alaw,
                _ => continue,
            };
            if len > 12 {
                self.payload_types.insert(pt);
                heard.extend(buf[12..len].iter().map(|&b| law.decode(b)));
            }
        }
    }

    /// One key press by RFC 4733: three event packets, then three end packets, while
    /// the audio clock goes on.
    pub async fn press(&mut self, key: char) {
        let event = match key {
            '0'..='9' => key as u8 - b'0',
            '*' => 10,
            '#' => 11,
            _ => panic!("key {key}"),
        };
        let ts = self.ts;
        for i in 0..6u16 {
            self.clock.tick().await;
            let end = i >= 3;
            let duration = (i + 1) * 160;
            let payload = [
                event,
                if end { 0x8A } else { 0x0A },
                (duration >> 8) as u8,
                duration as u8,
            ];
            self.send_packet(101, ts, &payload, i == 0).await;
        }
        self.ts = self.ts.wrapping_add(6 * 160);
        let mut ignore = Vec::new();
        self.drain(&mut ignore);
    }

    pub async fn keys(&mut self, keys: &str) {
        for k in keys.chars() {
            self.press(k).await;
            self.listen(100).await;
        }
    }
}

/// Runs until the beep (1 kHz) has been heard and ended; returns what was heard.
pub async fn until_after_beep(caller: &mut Caller) -> Vec<i16> {
    let mut heard = Vec::new();
    let mut beeped = false;
    for _ in 0..1500 {
        let chunk = caller.listen(20).await;
        let is_beep = chunk.len() >= 160 && tone_share(&chunk, 1000.0) > 0.8;
        heard.extend_from_slice(&chunk);
        if is_beep {
            beeped = true;
        } else if beeped {
            return heard;
        }
    }
    let loud = heard.iter().filter(|s| s.unsigned_abs() > 500).count();
    panic!(
        "no beep in 30 s: heard {} samples, {loud} loud",
        heard.len()
    );
}

/// espeak-ng's speech at 8 kHz.
pub fn speech(text: &str) -> Vec<i16> {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("s.wav");
    let pcm = dir.path().join("s8k.wav");
    assert!(Command::new("espeak-ng")
        .arg("-w")
        .arg(&raw)
        .arg(text)
        .status()
        .unwrap()
        .success());
    assert!(Command::new("sox")
        .arg(&raw)
        .args(["-r", "8000", "-c", "1", "-b", "16"])
        .arg(&pcm)
        .status()
        .unwrap()
        .success());
    phone_audio::wav::decode(&std::fs::read(pcm).unwrap()).unwrap()
}

/// Starts a session as the router does; the caller's RTP address is given.
pub async fn start(
    service: &Service,
    mode: pb::Mode,
    mailbox: &str,
    options: &str,
    caller: SocketAddr,
) -> (String, SocketAddr, tonic::Streaming<pb::SessionEvent>) {
    start_with(service, mode, mailbox, options, caller, pb::Codec::Pcmu).await
}

/// [`start`] with the call's codec.
pub async fn start_with(
    service: &Service,
    mode: pb::Mode,
    mailbox: &str,
    options: &str,
    caller: SocketAddr,
    codec: pb::Codec,
) -> (String, SocketAddr, tonic::Streaming<pb::SessionEvent>) {
    let mut client = service.client().await;
    let started = client
        .start_session(pb::StartSessionRequest {
            mailbox: mailbox.into(),
            context: "default".into(),
            mode: mode as i32,
            options: options.into(),
            caller_id_number: "2065550123".into(),
            caller_id_name: "Pat Caller".into(),
            channel: "SIP/flowroute-00000001".into(),
            unique_id: "1764190000.1".into(),
            remote: Some(phone_proto::media::v1::Endpoint {
                ip: caller.ip().to_string(),
                port: u32::from(caller.port()),
            }),
            codec: codec as i32,
            dtmf_payload_type: 101,
        })
        .await
        .unwrap()
        .into_inner();
    let local = started.local.unwrap();
    let addr = SocketAddr::new(local.ip.parse().unwrap(), local.port as u16);
    let events = client
        .session_events(pb::SessionEventsRequest {
            session_id: started.session_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    (started.session_id, addr, events)
}

/// The session's `finished` event, skipping DTMF echoes.
pub async fn finished(events: &mut tonic::Streaming<pb::SessionEvent>) -> pb::Finished {
    loop {
        let event = tokio::time::timeout(Duration::from_secs(20), events.message())
            .await
            .expect("finished within 20 s")
            .unwrap()
            .expect("the stream ends after finished");
        if let Some(pb::session_event::Event::Finished(f)) = event.event {
            return f;
        }
    }
}
