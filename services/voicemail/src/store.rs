//! Where messages live: S3 (any S3-compatible store, through `aws-sdk-s3`) or, for the
//! embedded default, a local folder behind the same interface. S3 is the source of
//! truth: counts are listings, moves are copy-then-delete, nothing is cached.
//!
//! Layout (DESIGN.md): `voicemail/<context>/<mailbox>/<folder>/<id>.json` (the
//! envelope) with `<id>.wav` and `<id>.wav49` beside it; greetings under
//! `voicemail/<context>/<mailbox>/greetings/`; a changed PIN in
//! `voicemail/<context>/<mailbox>/settings.json`. A message counts once its envelope
//! exists, so the audio goes up first and the envelope last; a move copies the audio,
//! then the envelope, then deletes the old envelope and then the old audio. A crash in
//! between leaves a message in two folders, never in none.
//!
//! When the store cannot take a new message, the message goes to a local spool
//! (`<data>/spool/<id>/`) and [`Store::drain_spool`] uploads it when the store is back.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use phone_audio::Format;
use serde::{Deserialize, Serialize};

use crate::session::Greeting;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    #[error("bad storage key {0:?}")]
    BadKey(String),
    #[error("corrupt object {key}: {error}")]
    Corrupt { key: String, error: String },
    #[error("spool: {0}")]
    Spool(#[from] std::io::Error),
}

/// S3 settings; each is also a `PHONE_S3_*` environment variable (credentials come from
/// the usual `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY`, or a mounted Secret).
#[derive(Debug, Clone, clap::Args)]
pub struct S3Args {
    /// The bucket; without it messages are kept under the data folder.
    #[arg(long = "s3-bucket", env = "PHONE_S3_BUCKET")]
    pub bucket: Option<String>,
    /// A custom endpoint (MinIO, Ceph, R2...).
    #[arg(long = "s3-endpoint", env = "PHONE_S3_ENDPOINT")]
    pub endpoint: Option<String>,
    #[arg(
        long = "s3-region",
        env = "PHONE_S3_REGION",
        default_value = "us-east-1"
    )]
    pub region: String,
    /// Path-style addressing (`endpoint/bucket/key`), which most self-hosted stores need.
    #[arg(
        long = "s3-path-style",
        env = "PHONE_S3_PATH_STYLE",
        default_value_t = false
    )]
    pub path_style: bool,
    /// An access key; without it the SDK's usual chain (`AWS_ACCESS_KEY_ID`, web
    /// identity, instance profile...).
    #[arg(long = "s3-access-key-id", env = "PHONE_S3_ACCESS_KEY_ID")]
    pub access_key_id: Option<String>,
    /// The access key's secret: from the environment (a Kubernetes Secret), never a flag.
    #[arg(skip = std::env::var("PHONE_S3_SECRET_ACCESS_KEY").ok().map(asterisk_conf::Secret::new))]
    pub secret_access_key: Option<asterisk_conf::Secret>,
    /// How long one S3 call may take before the store counts as unreachable.
    #[arg(
        long = "s3-timeout-ms",
        env = "PHONE_S3_TIMEOUT_MS",
        default_value_t = 5000
    )]
    pub timeout_ms: u64,
}

/// Objects by key.
#[derive(Clone)]
pub enum Blobs {
    Dir(PathBuf),
    S3 {
        client: aws_sdk_s3::Client,
        bucket: String,
    },
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// A key of our own making: `/`-separated parts of letters, digits, `-`, `_`, `.`,
/// none empty or dot-led (so a folder store cannot be walked out of).
fn check_key(key: &str) -> Result<(), StoreError> {
    let ok = !key.is_empty()
        && key.split('/').all(|part| {
            !part.is_empty()
                && !part.starts_with('.')
                && part
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'))
        });
    if ok {
        Ok(())
    } else {
        Err(StoreError::BadKey(key.to_owned()))
    }
}

impl Blobs {
    /// The S3 client for `args` (credentials and the rest from the environment).
    pub async fn s3(args: &S3Args, bucket: String) -> Self {
        let timeout = Duration::from_millis(args.timeout_ms.max(100));
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new(args.region.clone()))
            .timeout_config(
                aws_config::timeout::TimeoutConfig::builder()
                    .connect_timeout(timeout)
                    .operation_attempt_timeout(timeout)
                    .build(),
            )
            .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(2));
        if let Some(endpoint) = &args.endpoint {
            loader = loader.endpoint_url(endpoint);
        }
        if let (Some(id), Some(secret)) = (&args.access_key_id, &args.secret_access_key) {
            loader = loader.credentials_provider(aws_sdk_s3::config::Credentials::new(
                id.clone(),
                secret.expose().to_owned(),
                None,
                None,
                "phone-config",
            ));
        }
        let shared = loader.load().await;
        let config = aws_sdk_s3::config::Builder::from(&shared)
            .force_path_style(args.path_style)
            .build();
        Blobs::S3 {
            client: aws_sdk_s3::Client::from_conf(config),
            bucket,
        }
    }

    pub async fn put(
        &self,
        key: &str,
        body: Vec<u8>,
        content_type: &str,
    ) -> Result<(), StoreError> {
        check_key(key)?;
        match self {
            Blobs::Dir(root) => {
                let path = root.join(key);
                let tmp = path.with_extension("partial");
                if let Some(parent) = path.parent() {
                    tokio::fs::create_dir_all(parent).await?;
                }
                tokio::fs::write(&tmp, body).await?;
                tokio::fs::rename(&tmp, &path).await?;
                Ok(())
            }
            Blobs::S3 { client, bucket } => client
                .put_object()
                .bucket(bucket)
                .key(key)
                .content_type(content_type)
                .body(body.into())
                .send()
                .await
                .map(|_| ())
                .map_err(|e| unavailable(aws_sdk_s3::error::DisplayErrorContext(e))),
        }
    }

    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        check_key(key)?;
        match self {
            Blobs::Dir(root) => match tokio::fs::read(root.join(key)).await {
                Ok(bytes) => Ok(Some(bytes)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e.into()),
            },
            Blobs::S3 { client, bucket } => {
                match client.get_object().bucket(bucket).key(key).send().await {
                    Ok(object) => {
                        let bytes = object.body.collect().await.map_err(unavailable)?;
                        Ok(Some(bytes.into_bytes().to_vec()))
                    }
                    Err(e) => match e.as_service_error() {
                        Some(service) if service.is_no_such_key() => Ok(None),
                        _ => Err(unavailable(aws_sdk_s3::error::DisplayErrorContext(e))),
                    },
                }
            }
        }
    }

    /// Keys under `prefix` (a folder: ends with `/`), one level deep.
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        check_key(prefix.trim_end_matches('/'))?;
        match self {
            Blobs::Dir(root) => {
                let mut keys = Vec::new();
                let mut dir = match tokio::fs::read_dir(root.join(prefix)).await {
                    Ok(dir) => dir,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(keys),
                    Err(e) => return Err(e.into()),
                };
                while let Some(entry) = dir.next_entry().await? {
                    if let Some(name) = entry.file_name().to_str() {
                        if entry.file_type().await?.is_file() && !name.ends_with(".partial") {
                            keys.push(format!("{prefix}{name}"));
                        }
                    }
                }
                keys.sort();
                Ok(keys)
            }
            Blobs::S3 { client, bucket } => {
                let mut keys = Vec::new();
                let mut pages = client
                    .list_objects_v2()
                    .bucket(bucket)
                    .prefix(prefix)
                    .delimiter("/")
                    .into_paginator()
                    .send();
                while let Some(page) = pages.next().await {
                    let page =
                        page.map_err(|e| unavailable(aws_sdk_s3::error::DisplayErrorContext(e)))?;
                    keys.extend(
                        page.contents()
                            .iter()
                            .filter_map(|o| o.key().map(str::to_owned)),
                    );
                }
                Ok(keys)
            }
        }
    }

    pub async fn delete(&self, key: &str) -> Result<(), StoreError> {
        check_key(key)?;
        match self {
            Blobs::Dir(root) => match tokio::fs::remove_file(root.join(key)).await {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
                _ => Ok(()),
            },
            Blobs::S3 { client, bucket } => client
                .delete_object()
                .bucket(bucket)
                .key(key)
                .send()
                .await
                .map(|_| ())
                .map_err(|e| unavailable(aws_sdk_s3::error::DisplayErrorContext(e))),
        }
    }

    /// Copies `from` to `to`; false when `from` does not exist.
    pub async fn copy(&self, from: &str, to: &str) -> Result<bool, StoreError> {
        check_key(from)?;
        check_key(to)?;
        match self {
            Blobs::Dir(_) => match self.get(from).await? {
                Some(bytes) => self.put(to, bytes, "").await.map(|()| true),
                None => Ok(false),
            },
            Blobs::S3 { client, bucket } => {
                match client
                    .copy_object()
                    .bucket(bucket)
                    .copy_source(format!("{bucket}/{from}"))
                    .key(to)
                    .send()
                    .await
                {
                    Ok(_) => Ok(true),
                    Err(e) => match e.as_service_error() {
                        Some(service) if service.meta().code() == Some("NoSuchKey") => Ok(false),
                        _ => Err(unavailable(aws_sdk_s3::error::DisplayErrorContext(e))),
                    },
                }
            }
        }
    }
}

/// A message's metadata, stored as `<id>.json` beside its audio (Asterisk's
/// `msgNNNN.txt`, as JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    pub id: String,
    pub mailbox: String,
    pub context: String,
    pub folder: String,
    pub caller_id_number: String,
    pub caller_id_name: String,
    /// Unix seconds.
    pub origtime: i64,
    /// Asterisk's origdate text, in UTC.
    pub origdate: String,
    pub duration: u32,
    #[serde(default)]
    pub channel: String,
    #[serde(default)]
    pub unique_id: String,
    /// The formats stored, in `format=` order.
    pub formats: Vec<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Settings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pin: Option<String>,
}

/// How a new message was kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kept {
    Stored,
    /// In the local spool until the store is back.
    Spooled,
}

/// Messages, greetings and settings of every mailbox.
#[derive(Clone)]
pub struct Store {
    blobs: Blobs,
    formats: Vec<Format>,
    spool: PathBuf,
}

pub fn mailbox_prefix(context: &str, mailbox: &str) -> String {
    format!("voicemail/{context}/{mailbox}/")
}

pub fn message_key(context: &str, mailbox: &str, folder: &str, id: &str, ext: &str) -> String {
    format!("{}{folder}/{id}.{ext}", mailbox_prefix(context, mailbox))
}

impl Store {
    pub fn new(blobs: Blobs, formats: Vec<Format>, spool: PathBuf) -> Self {
        Self {
            blobs,
            formats,
            spool,
        }
    }

    pub fn blobs(&self) -> &Blobs {
        &self.blobs
    }

    pub fn formats(&self) -> &[Format] {
        &self.formats
    }

    /// The objects of a new message, audio first and the envelope last.
    /// The encoding (GSM above all) runs on the blocking pool, off the sessions' threads.
    async fn message_objects(
        &self,
        envelope: &Envelope,
        audio: Arc<[i16]>,
    ) -> Vec<(String, Vec<u8>, &'static str)> {
        let formats = self.formats.clone();
        let encoded = tokio::task::spawn_blocking(move || {
            formats
                .iter()
                .map(|f| (*f, f.encode(&audio)))
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_default();
        let mut objects: Vec<_> = encoded
            .into_iter()
            .map(|(format, bytes)| {
                (
                    message_key(
                        &envelope.context,
                        &envelope.mailbox,
                        &envelope.folder,
                        &envelope.id,
                        format.name(),
                    ),
                    bytes,
                    format.mime_type(),
                )
            })
            .collect();
        objects.push((
            message_key(
                &envelope.context,
                &envelope.mailbox,
                &envelope.folder,
                &envelope.id,
                "json",
            ),
            serde_json::to_vec_pretty(envelope).unwrap_or_default(),
            "application/json",
        ));
        objects
    }

    /// Stores a new message; when the store fails, spools it (nothing is lost unless
    /// the local disk fails too).
    pub async fn save_message(
        &self,
        envelope: &Envelope,
        audio: Arc<[i16]>,
    ) -> Result<Kept, StoreError> {
        let objects = self.message_objects(envelope, audio).await;
        let mut failure = None;
        for (key, body, content_type) in &objects {
            if let Err(e) = self.blobs.put(key, body.clone(), content_type).await {
                failure = Some(e);
                break;
            }
        }
        let Some(error) = failure else {
            return Ok(Kept::Stored);
        };
        tracing::warn!(%error, id = %envelope.id, "storage failed; the message goes to the local spool");
        let dir = self.spool.join(&envelope.id);
        tokio::fs::create_dir_all(&dir).await?;
        let mut manifest = Vec::new();
        for (i, (key, body, content_type)) in objects.into_iter().enumerate() {
            let file = format!("{i}.blob");
            tokio::fs::write(dir.join(&file), body).await?;
            manifest.push((key, file, content_type.to_owned()));
        }
        let tmp = dir.join("manifest.partial");
        tokio::fs::write(
            &tmp,
            serde_json::to_vec(&(envelope, manifest)).unwrap_or_default(),
        )
        .await?;
        tokio::fs::rename(&tmp, dir.join("manifest.json")).await?;
        Ok(Kept::Spooled)
    }

    /// Uploads spooled messages; returns the envelopes now stored. Stops at the first
    /// failure (the store is still away).
    pub async fn drain_spool(&self) -> Result<Vec<Envelope>, StoreError> {
        let mut stored = Vec::new();
        let mut dirs = match tokio::fs::read_dir(&self.spool).await {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(stored),
            Err(e) => return Err(e.into()),
        };
        let mut names = Vec::new();
        while let Some(entry) = dirs.next_entry().await? {
            names.push(entry.path());
        }
        names.sort();
        for dir in names {
            let Ok(manifest) = tokio::fs::read(dir.join("manifest.json")).await else {
                continue; // still being written, or not ours
            };
            let (envelope, objects): (Envelope, Vec<(String, String, String)>) =
                serde_json::from_slice(&manifest).map_err(|e| StoreError::Corrupt {
                    key: dir.display().to_string(),
                    error: e.to_string(),
                })?;
            for (key, file, content_type) in &objects {
                let body = tokio::fs::read(dir.join(file)).await?;
                self.blobs.put(key, body, content_type).await?;
            }
            tokio::fs::remove_dir_all(&dir).await?;
            tracing::info!(id = %envelope.id, "spooled message uploaded");
            stored.push(envelope);
        }
        Ok(stored)
    }

    /// Messages waiting in the spool.
    pub fn spooled(&self) -> usize {
        std::fs::read_dir(&self.spool)
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter(|e| e.path().join("manifest.json").exists())
                    .count()
            })
            .unwrap_or(0)
    }

    /// A message's number in its folder, from 1 (`${VM_MSGNUM}`), from the keys alone:
    /// ids sort by time, so no envelope needs reading.
    pub async fn number(
        &self,
        context: &str,
        mailbox: &str,
        folder: &str,
        id: &str,
    ) -> Result<u32, StoreError> {
        let prefix = format!("{}{folder}/", mailbox_prefix(context, mailbox));
        let own = format!("{prefix}{id}.json");
        let keys = self.blobs.list(&prefix).await?;
        Ok(keys
            .iter()
            .filter(|k| k.ends_with(".json") && k.as_str() <= own.as_str())
            .count()
            .max(1) as u32)
    }

    pub async fn count(
        &self,
        context: &str,
        mailbox: &str,
        folder: &str,
    ) -> Result<u32, StoreError> {
        let prefix = format!("{}{folder}/", mailbox_prefix(context, mailbox));
        let keys = self.blobs.list(&prefix).await?;
        Ok(keys.iter().filter(|k| k.ends_with(".json")).count() as u32)
    }

    pub async fn list(
        &self,
        context: &str,
        mailbox: &str,
        folder: &str,
    ) -> Result<Vec<Envelope>, StoreError> {
        let prefix = format!("{}{folder}/", mailbox_prefix(context, mailbox));
        let mut out = Vec::new();
        for key in self.blobs.list(&prefix).await? {
            if !key.ends_with(".json") {
                continue;
            }
            let Some(bytes) = self.blobs.get(&key).await? else {
                continue; // moved or deleted meanwhile
            };
            match serde_json::from_slice::<Envelope>(&bytes) {
                Ok(mut envelope) => {
                    envelope.folder = folder.to_owned();
                    out.push(envelope);
                }
                Err(e) => tracing::warn!(%key, error = %e, "unreadable envelope skipped"),
            }
        }
        out.sort_by(|a, b| a.origtime.cmp(&b.origtime).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    /// A message's audio, from the first stored format that decodes.
    pub async fn audio(
        &self,
        context: &str,
        mailbox: &str,
        folder: &str,
        id: &str,
    ) -> Result<Option<Vec<i16>>, StoreError> {
        for format in [Format::Wav, Format::Wav49] {
            let key = message_key(context, mailbox, folder, id, format.name());
            if let Some(bytes) = self.blobs.get(&key).await? {
                let decoded = tokio::task::spawn_blocking(move || phone_audio::wav::decode(&bytes))
                    .await
                    .map_err(|e| StoreError::Unavailable(e.to_string()))?;
                match decoded {
                    Ok(samples) => return Ok(Some(samples)),
                    Err(e) => tracing::warn!(%key, error = %e, "undecodable recording"),
                }
            }
        }
        Ok(None)
    }

    pub async fn move_message(
        &self,
        context: &str,
        mailbox: &str,
        id: &str,
        from: &str,
        to: &str,
    ) -> Result<(), StoreError> {
        let key = |folder: &str, ext: &str| message_key(context, mailbox, folder, id, ext);
        let Some(bytes) = self.blobs.get(&key(from, "json")).await? else {
            return Ok(()); // gone already
        };
        let mut envelope: Envelope =
            serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
                key: key(from, "json"),
                error: e.to_string(),
            })?;
        for ext in ["wav", "wav49"] {
            self.blobs.copy(&key(from, ext), &key(to, ext)).await?;
        }
        envelope.folder = to.to_owned();
        self.blobs
            .put(
                &key(to, "json"),
                serde_json::to_vec_pretty(&envelope).unwrap_or_default(),
                "application/json",
            )
            .await?;
        self.blobs.delete(&key(from, "json")).await?;
        for ext in ["wav", "wav49"] {
            self.blobs.delete(&key(from, ext)).await?;
        }
        Ok(())
    }

    pub async fn delete_message(
        &self,
        context: &str,
        mailbox: &str,
        folder: &str,
        id: &str,
    ) -> Result<(), StoreError> {
        for ext in ["json", "wav", "wav49"] {
            self.blobs
                .delete(&message_key(context, mailbox, folder, id, ext))
                .await?;
        }
        Ok(())
    }

    fn greeting_key(context: &str, mailbox: &str, greeting: Greeting) -> String {
        format!(
            "{}greetings/{}.wav",
            mailbox_prefix(context, mailbox),
            greeting.file()
        )
    }

    pub async fn greeting(
        &self,
        context: &str,
        mailbox: &str,
        greeting: Greeting,
    ) -> Result<Option<Vec<i16>>, StoreError> {
        let key = Self::greeting_key(context, mailbox, greeting);
        Ok(match self.blobs.get(&key).await? {
            Some(bytes) => phone_audio::wav::decode(&bytes)
                .map_err(|e| tracing::warn!(%key, error = %e, "undecodable greeting"))
                .ok(),
            None => None,
        })
    }

    pub async fn save_greeting(
        &self,
        context: &str,
        mailbox: &str,
        greeting: Greeting,
        audio: &[i16],
    ) -> Result<(), StoreError> {
        let key = Self::greeting_key(context, mailbox, greeting);
        self.blobs
            .put(&key, Format::Wav.encode(audio), "audio/x-wav")
            .await
    }

    pub async fn pin(&self, context: &str, mailbox: &str) -> Result<Option<String>, StoreError> {
        let key = format!("{}settings.json", mailbox_prefix(context, mailbox));
        Ok(self
            .blobs
            .get(&key)
            .await?
            .and_then(|b| serde_json::from_slice::<Settings>(&b).ok())
            .and_then(|s| s.pin))
    }

    pub async fn set_pin(&self, context: &str, mailbox: &str, pin: &str) -> Result<(), StoreError> {
        let key = format!("{}settings.json", mailbox_prefix(context, mailbox));
        let settings = Settings {
            pin: Some(pin.to_owned()),
        };
        self.blobs
            .put(
                &key,
                serde_json::to_vec(&settings).unwrap_or_default(),
                "application/json",
            )
            .await
    }
}

/// A message id: sortable by time, unique across replicas.
pub fn new_message_id(origtime: i64) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let pid = std::process::id();
    let mix = (u64::from(nanos) ^ (u64::from(pid) << 32) ^ seq.wrapping_mul(0x9E37_79B9_7F4A_7C15))
        & 0xFFFF_FFFF_FFFF;
    format!("{origtime:011}-{mix:012x}")
}

pub fn data_spool(data_dir: &Path) -> PathBuf {
    data_dir.join("spool")
}
