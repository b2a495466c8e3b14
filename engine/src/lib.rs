//! The Sluice engine: durable, Kinesis-style streams of records held as Arrow batches.
//!
//! A stream has shards; a record's partition key (MD5-hashed, as Kinesis) picks its shard, and
//! each shard numbers its records with increasing sequence numbers. Records are decoded by the
//! stream's format (`json`, `csv` or `raw`) into columns as they are appended, held in the
//! shard's open tail, and sealed into Arrow batches persisted as segment files; a per-stream
//! write-ahead log covers the tail, so an acknowledged append survives a restart. Readers
//! ([`ShardIterator`]) start anywhere Kinesis allows and see every record as soon as its append
//! returns. Records expire with their stream's retention, a whole sealed batch at a time.
//!
//! Memory is bounded by the open tails and the [`cache`] of recently read segments (shared by
//! every stream, [`EngineOptions::cache_bytes`]), not by how much a stream retains: a reader
//! that reaches an older segment loads it from disk, opening a stream reads only segment
//! footers, and bounded queries read one segment at a time. Small segments of slowly written
//! streams are merged in the background ([`Stream::compact`]).
//!
//! An append returns once an `fsync` covers it; concurrent appends share one (group commit, in
//! [`wal`]). Shards can be split and merged ([`Engine::reshard`]): parents close with an ending
//! sequence number and children record their lineage, and a [`StreamReader`] follows a stream
//! through it, reading parents to their ends before their children. A writer that reads
//! elsewhere (a pump) can commit its position in the same log frame as its output
//! ([`Stream::append_committing`]), which makes its output exactly-once across crashes.
//!
//! The engine is a library first: the SQL layer, the REPL and the servers are all clients of
//! this API.
//!
//! # Example
//!
//! ```
//! use arrow::datatypes::DataType;
//! use sluice_engine::{Engine, EngineOptions, PutRecord, ShardIterator, StartPosition, StreamFormat, StreamSpec, fields};
//!
//! # fn main() -> sluice_engine::Result<()> {
//! let dir = tempfile::tempdir().expect("temporary folder");
//! let engine = Engine::open(EngineOptions::new(dir.path()))?;
//! let columns = fields(&[("symbol", DataType::Utf8), ("price", DataType::Float64)]);
//! let stream = engine.create_stream(StreamSpec::with_columns("ticker", 4, StreamFormat::Json, columns), false)?;
//! let put = stream.append(&[PutRecord::new("AMZN", r#"{"symbol":"AMZN","price":130.2}"#)])?;
//!
//! let mut reader = ShardIterator::new(&stream, put[0].shard_index, StartPosition::TrimHorizon)?;
//! let batches = reader.next_batches(100)?;
//! assert_eq!(batches[0].num_rows(), 1);
//! # Ok(())
//! # }
//! ```

pub mod cache;
pub mod catalog;
pub mod clock;
mod engine;
pub mod error;
pub mod format;
pub mod kpl;
pub mod reader;
pub mod routing;
pub mod schema;
pub mod segment;
pub mod sequence;
pub mod stream;
pub mod views;
pub mod wal;

pub use cache::CacheStats;
pub use catalog::{
    DEFAULT_RETENTION_HOURS, DeliveryDefinition, MAX_RETENTION_HOURS, MIN_RETENTION_HOURS,
    PumpCheckpoint, PumpDefinition, SourceDefinition, StreamDefinition, WatermarkDefinition,
};
pub use clock::{Clock, ManualClock, SystemClock};
pub use engine::{
    DEFAULT_CACHE_BYTES, DIRECT_PUT_NAMESPACE, Durability, ERROR_STREAM, Engine, EngineOptions,
    NAMESPACE_SEPARATOR, StreamSpec, fields, read_json_or_default, write_json_durably,
};
pub use error::{Error, ErrorClass, Result};
pub use format::StreamFormat;
pub use reader::{ShardIterator, ShardRead, StartPosition, StreamReader};
pub use schema::PublicProjector;
pub use stream::{
    COMMIT_SHARD, CatchUp, Chunk, DATA_CONVERSION_ERROR, ErrorReport, MAX_OPEN_SHARDS,
    NumberedRecord, PutRecord, PutResult, RecordRef, Reshard, Shard, ShardStats, Stream,
};
