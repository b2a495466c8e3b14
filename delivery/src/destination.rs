//! Where objects go: a local folder or an S3-compatible bucket, through `object_store`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use object_store::aws::{AmazonS3Builder, S3ConditionalPut};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{
    ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, RetryConfig, WriteMultipart,
};

use crate::error::{Error, Result};
use crate::options::S3Options;

/// Objects larger than this go up in parts.
const MULTIPART_THRESHOLD: usize = 16 * 1024 * 1024;
/// The size of each part.
const PART_SIZE: usize = 8 * 1024 * 1024;

/// A destination: a store and the key prefix inside it.
#[derive(Debug, Clone)]
pub struct Destination {
    store: Arc<dyn ObjectStore>,
    base: String,
    url: String,
}

impl Destination {
    /// Opens `destination`: `s3://bucket/prefix/`, `file:///folder/`, or a folder relative to
    /// the current directory.
    pub fn open(destination: &str, s3: &S3Options) -> Result<Self> {
        if let Some(rest) = destination.strip_prefix("s3://") {
            return open_s3(destination, rest, s3);
        }
        let folder = match destination.strip_prefix("file://") {
            Some(path) if path.starts_with('/') => PathBuf::from(path),
            Some(path) => {
                return Err(Error::Invalid(format!(
                    "destination '{destination}': a file:// address needs an absolute path, as in file:///var/lake/ ('{path}' is not one)"
                )));
            }
            None if destination.contains("://") => {
                return Err(Error::Invalid(format!(
                    "destination '{destination}' is not a place Sluice writes to; use s3://bucket/prefix/, file:///folder/ or a relative folder"
                )));
            }
            None => std::env::current_dir()?.join(destination),
        };
        std::fs::create_dir_all(&folder).map_err(|e| {
            Error::Invalid(format!(
                "destination '{destination}': cannot create folder {}: {e}",
                folder.display()
            ))
        })?;
        let store = LocalFileSystem::new_with_prefix(&folder)?;
        Ok(Self {
            store: Arc::new(store),
            base: String::new(),
            url: format!(
                "file://{}/",
                folder.display().to_string().trim_end_matches('/')
            ),
        })
    }

    /// A destination over any store (tests, benchmarks).
    pub fn with_store(store: Arc<dyn ObjectStore>, base: &str, url: &str) -> Self {
        Self {
            store,
            base: base.trim_matches('/').to_string(),
            url: url.to_string(),
        }
    }

    /// Where objects go, for people.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// The full path of object `key`.
    pub fn path(&self, key: &str) -> Result<Path> {
        let full = if self.base.is_empty() {
            key.to_string()
        } else {
            format!("{}/{key}", self.base)
        };
        Path::parse(&full).map_err(|e| Error::Invalid(format!("object key '{full}': {e}")))
    }

    /// Writes a new object. A key that already exists is never overwritten: small objects are
    /// created conditionally, and finding one already there means an earlier attempt of this
    /// same write landed.
    pub async fn put_new(&self, key: &str, bytes: Vec<u8>) -> Result<()> {
        let path = self.path(key)?;
        if bytes.len() > MULTIPART_THRESHOLD {
            let upload = self.store.put_multipart(&path).await?;
            let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
            writer.put(Bytes::from(bytes));
            writer.finish().await?;
            return Ok(());
        }
        let options = PutOptions {
            mode: PutMode::Create,
            ..PutOptions::default()
        };
        // Cheap to clone: the payload's buffers are shared.
        let payload = PutPayload::from(bytes);
        match self.store.put_opts(&path, payload.clone(), options).await {
            Ok(_) | Err(object_store::Error::AlreadyExists { .. }) => Ok(()),
            // A store without conditional writes: the key is new (it holds a fresh UUID), so a
            // plain write cannot overwrite another object.
            Err(object_store::Error::NotImplemented { .. }) => {
                self.store.put(&path, payload).await?;
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }
}

fn open_s3(destination: &str, rest: &str, s3: &S3Options) -> Result<Destination> {
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err(Error::Invalid(format!(
            "destination '{destination}' names no bucket; write s3://bucket/prefix/"
        )));
    }
    // Options win over the AWS_* environment variables.
    let mut builder = AmazonS3Builder::from_env()
        .with_bucket_name(bucket)
        .with_conditional_put(S3ConditionalPut::ETagMatch)
        // The delivery runner retries a failed object forever with its own backoff and shows
        // each failure; the client's own retries only cover brief blips, so a failure surfaces
        // in SHOW DELIVERY STREAMS within seconds.
        .with_retry(RetryConfig {
            max_retries: 3,
            retry_timeout: Duration::from_secs(30),
            ..RetryConfig::default()
        });
    if let Some(endpoint) = &s3.endpoint {
        builder = builder.with_endpoint(endpoint);
    }
    // Left unset, AWS_ALLOW_HTTP decides (as for every other setting).
    if s3.allow_http {
        builder = builder.with_allow_http(true);
    }
    match &s3.region {
        Some(region) => builder = builder.with_region(region),
        None if std::env::var("AWS_REGION").is_err()
            && std::env::var("AWS_DEFAULT_REGION").is_err() =>
        {
            builder = builder.with_region("us-east-1");
        }
        None => {}
    }
    if let Some(key) = &s3.access_key_id {
        builder = builder.with_access_key_id(key);
    }
    if let Some(secret) = &s3.secret_access_key {
        builder = builder.with_secret_access_key(secret);
    }
    if let Some(token) = &s3.session_token {
        builder = builder.with_token(token);
    }
    let store = builder
        .build()
        .map_err(|e| Error::Invalid(format!("destination '{destination}': {e}")))?;
    Ok(Destination {
        store: Arc::new(store),
        base: prefix.trim_matches('/').to_string(),
        url: format!("s3://{bucket}/{}", prefix.trim_start_matches('/')),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;

    #[tokio::test]
    async fn large_objects_go_up_in_parts_and_existing_keys_are_kept() -> Result<()> {
        let store = Arc::new(InMemory::new());
        let destination = Destination::with_store(store.clone(), "lake/", "memory://lake/");
        let big = vec![7u8; MULTIPART_THRESHOLD + PART_SIZE + 3];
        destination.put_new("a/big.json", big.clone()).await?;
        let read = store
            .get(&Path::from("lake/a/big.json"))
            .await?
            .bytes()
            .await?;
        assert_eq!(read.len(), big.len());

        destination
            .put_new("a/small.json", b"first".to_vec())
            .await?;
        // A retry of a write that already landed leaves the object as it was.
        destination
            .put_new("a/small.json", b"second".to_vec())
            .await?;
        let read = store
            .get(&Path::from("lake/a/small.json"))
            .await?
            .bytes()
            .await?;
        assert_eq!(&read[..], b"first");
        Ok(())
    }
}
