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

use phone_audio::Format;
use serde::{Deserialize, Serialize};

pub use phone_blobs::{BlobError, Blobs, S3Args};

use crate::session::Greeting;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Blob(#[from] BlobError),
    #[error("corrupt object {key}: {error}")]
    Corrupt { key: String, error: String },
    #[error("spool: {0}")]
    Spool(#[from] std::io::Error),
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
    /// The W3C `traceparent` of the call that left the message: the mailer's work for
    /// it joins the call's trace, however much later it happens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<String>,
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

    /// Notes that the mailer has yet to accept `envelope`'s message (see
    /// [`Store::announcements`]).
    pub async fn save_announcement(&self, envelope: &Envelope) -> Result<(), StoreError> {
        let body = serde_json::to_vec(envelope).unwrap_or_default();
        self.blobs
            .put(&announce_key(&envelope.id), body, "application/json")
            .await?;
        Ok(())
    }

    /// The mailer has the message.
    pub async fn remove_announcement(&self, id: &str) -> Result<(), StoreError> {
        self.blobs.delete(&announce_key(id)).await?;
        Ok(())
    }

    /// Messages the mailer has not accepted yet, by any replica: what a restart (or
    /// another replica) announces again. The mailer's Deliver is idempotent, so
    /// announcing twice sends one email.
    pub async fn announcements(&self) -> Result<Vec<Envelope>, StoreError> {
        let mut out = Vec::new();
        for key in self.blobs.list(ANNOUNCE_PREFIX).await? {
            let Some(bytes) = self.blobs.get(&key).await? else {
                continue;
            };
            match serde_json::from_slice(&bytes) {
                Ok(envelope) => out.push(envelope),
                Err(e) => {
                    tracing::error!(%key, error = %e, "unreadable announcement; left as it is")
                }
            }
        }
        Ok(out)
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
                    .map_err(|e| BlobError::Unavailable(e.to_string()))?;
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
            .await?;
        Ok(())
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
            .await?;
        Ok(())
    }
}

const ANNOUNCE_PREFIX: &str = "voicemail-announce/";

fn announce_key(id: &str) -> String {
    format!("{ANNOUNCE_PREFIX}{id}.json")
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
