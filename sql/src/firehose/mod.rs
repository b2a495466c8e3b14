//! Amazon Data Firehose over the wire: delivery streams created, fed and changed through the
//! Firehose API (`Firehose_20150804.<Action>`), on the same delivery engine as
//! `CREATE DELIVERY STREAM`.
//!
//! A delivery stream made over the API is a [`DeliveryDefinition`](sluice_engine::DeliveryDefinition)
//! like one made in SQL (so `SHOW DELIVERY STREAMS` lists it, and `ListDeliveryStreams` lists
//! those made in SQL): [`config`] turns its `ExtendedS3DestinationConfiguration` into delivery
//! options. A `DirectPut` delivery stream reads a stream of its own, `firehose:<name>`
//! ([`DIRECT_PUT_NAMESPACE`]), which `PutRecord`/`PutRecordBatch` append to: a put is
//! acknowledged once it is in the write-ahead log, as for any stream. A `KinesisStreamAsSource`
//! one reads the Kinesis stream its ARN names. What the API keeps besides (its type, tags,
//! timestamps, the destination as given) is in `firehose.json`. [`glue`] is the small Glue
//! catalog whose tables give record format conversion its columns.
//!
//! # Example
//!
//! ```no_run
//! # async fn example(session: sluice_sql::SluiceSession) -> Result<(), Box<dyn std::error::Error>> {
//! use sluice_sql::firehose::Firehose;
//! use serde_json::json;
//!
//! let firehose = Firehose::open(session)?;
//! firehose.call("CreateDeliveryStream", json!({
//!     "DeliveryStreamName": "clicks",
//!     "ExtendedS3DestinationConfiguration": {"BucketARN": "arn:aws:s3:::lake", "RoleARN": "r"}
//! })).await?;
//! firehose.call("PutRecord", json!({
//!     "DeliveryStreamName": "clicks", "Record": {"Data": "eyJhIjoxfQ=="}
//! })).await?;
//! # Ok(()) }
//! ```

pub mod api;
pub mod config;
pub mod glue;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sluice_engine::DIRECT_PUT_NAMESPACE;

use crate::session::SluiceSession;

pub use glue::GlueCatalog;

/// The account and region ARNs name.
pub const ACCOUNT: &str = crate::application::model::ACCOUNT;
pub const REGION: &str = crate::application::model::REGION;

/// A refused or failed Firehose (or Glue) request, as AWS names it.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{type_name}: {message}")]
pub struct FirehoseError {
    pub type_name: &'static str,
    pub message: String,
}

impl FirehoseError {
    pub fn new(type_name: &'static str, message: impl Into<String>) -> Self {
        Self {
            type_name,
            message: message.into(),
        }
    }

    /// `InvalidArgumentException`.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new("InvalidArgumentException", message)
    }

    /// `ServiceUnavailableException`: something on Sluice's side.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new("ServiceUnavailableException", message)
    }

    /// The HTTP status AWS sends it with.
    pub fn status(&self) -> u16 {
        match self.type_name {
            "ServiceUnavailableException" => 503,
            _ => 400,
        }
    }
}

/// What the API keeps of a delivery stream besides its definition.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeliveryStreamRecord {
    /// `DirectPut` or `KinesisStreamAsSource`.
    pub delivery_stream_type: String,
    pub create_timestamp: f64,
    pub last_update_timestamp: f64,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// `KinesisStreamSourceConfiguration` as given.
    #[serde(default)]
    pub source: Option<Value>,
    /// `ExtendedS3DestinationConfiguration` as given, with updates merged in.
    pub destination: Value,
}

/// The Firehose API over a session's delivery streams.
pub struct Firehose {
    session: SluiceSession,
    path: PathBuf,
    records: tokio::sync::Mutex<BTreeMap<String, DeliveryStreamRecord>>,
    glue: Arc<GlueCatalog>,
}

impl std::fmt::Debug for Firehose {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Firehose")
            .field("path", &self.path)
            .finish()
    }
}

impl Firehose {
    /// The Firehose API of `session` (the engine's own), with what it kept in the data folder.
    pub fn open(session: SluiceSession) -> Result<Self, FirehoseError> {
        let dir = session.engine().options().data_dir.clone();
        let path = dir.join("firehose.json");
        let records = read_json(&path, "Firehose delivery streams")?;
        let glue = Arc::new(GlueCatalog::open(&dir)?);
        Ok(Self {
            session,
            path,
            records: tokio::sync::Mutex::new(records),
            glue,
        })
    }

    /// The Glue catalog record format conversion reads.
    pub fn glue(&self) -> &Arc<GlueCatalog> {
        &self.glue
    }

    /// Runs Firehose action `action` with `request`.
    pub async fn call(&self, action: &str, request: Value) -> Result<Value, FirehoseError> {
        api::call(self, action, request).await
    }

    /// The engine name of direct-put delivery stream `name`'s stream.
    fn direct_put_stream(name: &str) -> String {
        format!(
            "{DIRECT_PUT_NAMESPACE}{}{name}",
            sluice_engine::NAMESPACE_SEPARATOR
        )
    }
}

pub(crate) fn now_seconds() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| (d.as_millis() as f64) / 1000.0)
}

pub(crate) fn read_json<T: serde::de::DeserializeOwned + Default>(
    path: &Path,
    what: &'static str,
) -> Result<T, FirehoseError> {
    sluice_engine::read_json_or_default(path, what)
        .map_err(|e| FirehoseError::unavailable(e.to_string()))
}

/// Writes `value` to `path` durably (a synced temporary file renamed over it).
pub(crate) fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), FirehoseError> {
    sluice_engine::write_json_durably(path, value, "Firehose state")
        .map_err(|e| FirehoseError::unavailable(e.to_string()))
}
