//! The stream catalog: every stream's definition, kept in `catalog.json` in the data folder.
//!
//! The catalog is small and changes rarely (create, drop, alter), so it is rewritten whole on
//! each change: written to a temporary file, synced and renamed over the old one.

use std::fs;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::format::StreamFormat;
use crate::routing::HashKeyRange;

/// Hours of retention when a stream does not say.
pub const DEFAULT_RETENTION_HOURS: u32 = 24;
/// The longest retention Kinesis allows (365 days).
pub const MAX_RETENTION_HOURS: u32 = 8760;
/// The shortest retention Kinesis allows.
pub const MIN_RETENTION_HOURS: u32 = 24;

/// A user column: its name and arrow type (stored as arrow's own type syntax, e.g. `Utf8`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ColumnDefinition {
    pub name: String,
    pub data_type: String,
}

/// One shard of a stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardDefinition {
    pub index: u32,
    pub hash_key_range: HashKeyRange,
    /// The shard this one was split from or merged into (resharding).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<u32>,
    /// The other parent of a merged shard.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adjacent_parent: Option<u32>,
    /// The last sequence counter of a closed shard.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ending_seq: Option<u64>,
}

/// A stream's event-time watermark: `WATERMARK FOR column AS column - INTERVAL '…'`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatermarkDefinition {
    /// The timestamp column holding event time.
    pub column: String,
    /// How far the watermark trails the newest event time seen, in milliseconds.
    pub delay_ms: i64,
    /// How long past its end a window on this column stays open for late rows, in
    /// milliseconds (`allowed_lateness`).
    #[serde(default)]
    pub allowed_lateness_ms: i64,
    /// How long a shard with nothing new keeps holding the watermark back, in milliseconds of
    /// processing time (`idle_timeout`; 0 = not at all).
    #[serde(default)]
    pub idle_timeout_ms: i64,
}

/// Everything that defines a stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamDefinition {
    /// Unique for the life of the data folder; names the stream's folder.
    pub id: u64,
    pub name: String,
    pub columns: Vec<ColumnDefinition>,
    pub format: StreamFormat,
    /// The user column whose value is each record's partition key on SQL inserts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition_key: Option<String>,
    pub retention_hours: u32,
    pub shards: Vec<ShardDefinition>,
    pub created_at_ms: i64,
    /// The event-time watermark, if the stream declares one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watermark: Option<WatermarkDefinition>,
    /// Tags set over the Kinesis API (`AddTagsToStream`).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub tags: std::collections::BTreeMap<String, String>,
    /// A generator that feeds the stream while Sluice runs (`WITH (source = 'demo')`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<SourceDefinition>,
}

/// A built-in generator feeding a stream: `CREATE STREAM … WITH (source = 'demo')`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceDefinition {
    /// What it generates; `demo` is a stock ticker like the Kinesis Data Analytics console's
    /// demo stream.
    pub kind: String,
    /// Records per second of processing time.
    pub rate: u32,
    /// Seeds the generator: the same seed gives the same records.
    pub seed: u64,
}

impl StreamDefinition {
    /// The user columns as an arrow schema.
    pub fn user_schema(&self) -> Result<SchemaRef> {
        let fields = self
            .columns
            .iter()
            .map(|c| {
                let data_type = DataType::from_str(&c.data_type).map_err(|e| {
                    Error::InvalidArgument(format!(
                        "column '{}' of stream '{}' has type '{}' that cannot be read: {e}",
                        c.name, self.name, c.data_type
                    ))
                })?;
                Ok(Field::new(&c.name, data_type, true))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Arc::new(Schema::new(fields)))
    }
}

/// A pump: a continuous `INSERT INTO … SELECT STREAM …` that runs with the engine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PumpDefinition {
    pub name: String,
    /// The `INSERT INTO … SELECT …` statement, without the `STREAM` keyword.
    pub sql: String,
    /// Whether it runs when the engine opens (`START PUMP` / `STOP PUMP`).
    pub running: bool,
    /// The streams it reads, as planned when it was created: they cannot be dropped while
    /// the pump exists.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reads: Vec<String>,
    /// The stream it writes into.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub writes: Option<String>,
}

/// How far a pump (or a delivery stream) has got: where to resume reading, and its watermark
/// then.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PumpCheckpoint {
    /// `(stream, shard, next sequence counter)` for every shard the pump reads.
    pub positions: Vec<(String, u32, u64)>,
    /// The incarnation ([`StreamDefinition::id`]) of each stream the positions are in: a
    /// stream dropped and created again under the same name is another stream, and positions
    /// saved in the old one never apply to it.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub stream_ids: std::collections::BTreeMap<String, u64>,
    /// The event-time watermark of a windowed pump (in its time column's unit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watermark: Option<i64>,
    /// Counts the pump's output batches: of two checkpoints, the one with the higher epoch is
    /// newer (the pump's own file, or the commit it wrote with its output).
    #[serde(default)]
    pub epoch: u64,
}

impl PumpCheckpoint {
    /// The checkpoint as the bytes of a writer commit (JSON).
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// A checkpoint from a writer commit's bytes, if they hold one.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        serde_json::from_slice(bytes).ok()
    }

    /// Whether positions saved for stream `name` belong to its incarnation `id`. Checkpoints
    /// saved before streams' incarnations were recorded name none, and apply.
    pub fn applies_to(&self, name: &str, id: u64) -> bool {
        self.stream_ids.get(name).is_none_or(|saved| *saved == id)
    }

    /// Where to resume shard `shard` of stream `name` (incarnation `id`), if saved for it.
    pub fn position(&self, name: &str, id: u64, shard: u32) -> Option<u64> {
        if !self.applies_to(name, id) {
            return None;
        }
        self.positions
            .iter()
            .find(|(s, i, _)| s == name && *i == shard)
            .map(|(_, _, seq)| *seq)
    }
}

/// A delivery stream: a stream's records buffered and written as objects to a destination.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryDefinition {
    pub name: String,
    /// The stream it reads.
    pub source: String,
    /// `WITH` options as given (keys lower-cased).
    pub options: Vec<(String, String)>,
    /// Goes up each time the delivery stream is replaced; part of every object's name.
    pub version: u32,
}

/// The catalog file's contents.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Catalog {
    pub version: u32,
    pub next_stream_id: u64,
    pub streams: Vec<StreamDefinition>,
    #[serde(default)]
    pub pumps: Vec<PumpDefinition>,
    #[serde(default)]
    pub deliveries: Vec<DeliveryDefinition>,
}

impl Catalog {
    /// The definition of stream `name`.
    pub fn stream(&self, name: &str) -> Result<&StreamDefinition> {
        Ok(&self.streams[self.position(name)?])
    }

    /// Where stream `name` is in [`Self::streams`].
    pub fn position(&self, name: &str) -> Result<usize> {
        self.streams
            .iter()
            .position(|s| s.name == name)
            .ok_or_else(|| Error::StreamNotFound(name.to_string()))
    }

    /// Applies `change` to stream `name`'s definition and saves the catalog at `path`; if the
    /// save fails, the definition is put back as it was, so memory never runs ahead of disk.
    pub fn update_stream(
        &mut self,
        path: &Path,
        name: &str,
        change: impl FnOnce(&mut StreamDefinition),
    ) -> Result<()> {
        let position = self.position(name)?;
        let before = self.streams[position].clone();
        change(&mut self.streams[position]);
        let saved = self.save(path);
        if saved.is_err() {
            self.streams[position] = before;
        }
        saved
    }

    /// Reads the catalog at `path`, or an empty one if there is none yet.
    pub fn load(path: &Path) -> Result<Self> {
        match fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| Error::Corrupt {
                what: "catalog",
                path: path.to_path_buf(),
                reason: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self {
                version: 1,
                next_stream_id: 1,
                streams: vec![],
                pumps: vec![],
                deliveries: vec![],
            }),
            Err(e) => Err(Error::io("reading catalog", path, e)),
        }
    }

    /// Replaces the catalog at `path` atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        let tmp = path.with_extension("json.tmp");
        let bytes = serde_json::to_vec_pretty(self).map_err(|e| Error::Corrupt {
            what: "catalog",
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        {
            use std::io::Write;
            let mut file =
                fs::File::create(&tmp).map_err(|e| Error::io("writing catalog", &tmp, e))?;
            file.write_all(&bytes)
                .and_then(|_| file.sync_all())
                .map_err(|e| Error::io("writing catalog", &tmp, e))?;
        }
        fs::rename(&tmp, path).map_err(|e| Error::io("replacing catalog", path, e))?;
        if let Some(dir) = path.parent() {
            crate::segment::sync_dir(dir)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalog_round_trips_through_its_file() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| Error::io("tempdir", "/tmp", e))?;
        let path = dir.path().join("catalog.json");
        let mut catalog = Catalog::load(&path)?;
        assert!(catalog.streams.is_empty());
        catalog.streams.push(StreamDefinition {
            id: 1,
            name: "ticker".into(),
            columns: vec![ColumnDefinition {
                name: "ts".into(),
                data_type: DataType::Timestamp(arrow::datatypes::TimeUnit::Nanosecond, None)
                    .to_string(),
            }],
            format: StreamFormat::Json,
            partition_key: Some("symbol".into()),
            retention_hours: 24,
            shards: vec![ShardDefinition {
                index: 0,
                hash_key_range: HashKeyRange {
                    start: 0,
                    end: u128::MAX,
                },
                parent: None,
                adjacent_parent: None,
                ending_seq: None,
            }],
            created_at_ms: 0,
            watermark: None,
            tags: Default::default(),
            source: None,
        });
        catalog.save(&path)?;
        let loaded = Catalog::load(&path)?;
        assert_eq!(loaded.streams, catalog.streams);
        let schema = loaded.streams[0].user_schema()?;
        assert!(matches!(
            schema.field(0).data_type(),
            DataType::Timestamp(_, None)
        ));
        Ok(())
    }
}
