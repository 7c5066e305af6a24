//! Objects by key, in S3 (any S3-compatible store: AWS, MinIO, Ceph, R2..., through
//! `aws-sdk-s3`) or, for the embedded default and tests, a local folder behind the same
//! interface. The voicemail service keeps its messages here and the mailer its outbox;
//! both read the same recordings.
//!
//! Keys are of our own making and checked: `/`-separated parts of letters, digits and
//! `-_.@`, none empty or dot-led, so a folder store cannot be walked out of. A folder
//! write goes to a `.partial` file, synced, renamed into place and the folder synced, so
//! a reader never sees half an object and a stored object survives a power cut.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    #[error("bad storage key {0:?}")]
    BadKey(String),
    #[error("storage folder: {0}")]
    Io(#[from] std::io::Error),
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

impl S3Args {
    /// No bucket: the folders are used.
    pub fn none() -> Self {
        Self {
            bucket: None,
            endpoint: None,
            region: "us-east-1".into(),
            path_style: false,
            access_key_id: None,
            secret_access_key: None,
            timeout_ms: 5000,
        }
    }
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

fn unavailable(e: impl std::fmt::Display) -> BlobError {
    BlobError::Unavailable(e.to_string())
}

/// A key of our own making: `/`-separated parts of letters, digits, `-`, `_`, `.`,
/// none empty or dot-led (so a folder store cannot be walked out of).
pub fn check_key(key: &str) -> Result<(), BlobError> {
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
        Err(BlobError::BadKey(key.to_owned()))
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

    pub async fn put(&self, key: &str, body: Vec<u8>, content_type: &str) -> Result<(), BlobError> {
        check_key(key)?;
        match self {
            Blobs::Dir(root) => {
                let path = root.join(key);
                let tmp = path.with_extension("partial");
                if let Some(parent) = path.parent() {
                    tokio::fs::create_dir_all(parent).await?;
                }
                // Durable before it counts: the data reaches the disk, then the name
                // (a rename, so a reader never sees half an object), then the folder.
                {
                    use tokio::io::AsyncWriteExt;
                    let mut file = tokio::fs::File::create(&tmp).await?;
                    file.write_all(&body).await?;
                    file.sync_all().await?;
                }
                tokio::fs::rename(&tmp, &path).await?;
                if let Some(parent) = path.parent() {
                    tokio::fs::File::open(parent).await?.sync_all().await?;
                }
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

    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, BlobError> {
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
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>, BlobError> {
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

    pub async fn delete(&self, key: &str) -> Result<(), BlobError> {
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
    pub async fn copy(&self, from: &str, to: &str) -> Result<bool, BlobError> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_cannot_leave_the_store() {
        for bad in [
            "",
            "/a",
            "a//b",
            "../x",
            "a/../b",
            "a/.hidden",
            "a b",
            "a/b\0",
        ] {
            assert!(check_key(bad).is_err(), "{bad:?}");
        }
        for good in ["a", "outbox/pending/0176-ab.json", "v/x@y.wav49"] {
            assert!(check_key(good).is_ok(), "{good:?}");
        }
    }

    #[tokio::test]
    async fn a_folder_store_puts_gets_lists_copies_and_deletes() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = Blobs::Dir(dir.path().to_owned());
        assert_eq!(blobs.get("a/b.json").await.unwrap(), None);
        assert!(blobs.list("a/").await.unwrap().is_empty());
        blobs.put("a/b.json", b"{}".to_vec(), "").await.unwrap();
        blobs.put("a/c/d.json", b"x".to_vec(), "").await.unwrap();
        assert_eq!(blobs.get("a/b.json").await.unwrap(), Some(b"{}".to_vec()));
        // One level deep: the folder `a/c/` is not a key.
        assert_eq!(blobs.list("a/").await.unwrap(), vec!["a/b.json"]);
        assert!(blobs.copy("a/b.json", "z/b.json").await.unwrap());
        assert!(!blobs.copy("a/none", "z/none").await.unwrap());
        blobs.delete("a/b.json").await.unwrap();
        blobs.delete("a/b.json").await.unwrap();
        assert_eq!(blobs.get("a/b.json").await.unwrap(), None);
        assert_eq!(blobs.get("z/b.json").await.unwrap(), Some(b"{}".to_vec()));
        assert!(matches!(
            blobs.get("../etc/passwd").await,
            Err(BlobError::BadKey(_))
        ));
    }
}
