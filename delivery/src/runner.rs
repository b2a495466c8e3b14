//! One delivery stream at work: reading its source from where it last committed, buffering
//! per destination partition, and writing an object whenever a buffer is full or old enough.
//!
//! A buffer holds decoded rows (the stream's own columns); it is flushed when the records in it
//! reach `buffer_size_mb` (counted as the bytes of the records as they arrived, before any
//! compression) or when its oldest record has waited `buffer_interval_seconds` by the engine's
//! clock. Positions are committed only after an object is written: for each shard, the oldest
//! record still in a buffer, or everything read when none is. So a crash loses nothing; it can
//! only deliver again records of objects written after the last commit.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, UInt32Array};
use arrow::compute::{cast, take_record_batch};
use arrow::datatypes::{DataType, SchemaRef};
use base64::Engine as _;
use parking_lot::Mutex;
use sluice_engine::schema::{DATA, PARTITION_KEY, ROWTIME, SEQUENCE_NUMBER};
use sluice_engine::sequence::parse_sequence_number;
use sluice_engine::{
    ERROR_STREAM, Engine, PumpCheckpoint, ShardIterator, StartPosition, Stream, StreamReader,
};

use crate::destination::Destination;
use crate::encode::{encode, extension};
use crate::error::Result;
use crate::options::{Compression, DeliveryOptions, Format};

/// Records read from a shard per step.
const READ_BATCH: usize = 8192;
/// At most this many bytes are buffered over all partitions before the oldest buffer is
/// written early.
const MEMORY_CAP: usize = 256 * 1024 * 1024;
/// At most this many partitions are buffered at once.
const PARTITION_CAP: usize = 512;
/// How often a waiting delivery stream looks at the clock.
const TICK: Duration = Duration::from_millis(50);
/// The longest wait between attempts to write an object.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// What a running delivery stream reports.
#[derive(Debug, Default)]
pub struct DeliveryStats {
    pub records_delivered: AtomicU64,
    pub bytes_delivered: AtomicU64,
    pub objects_written: AtomicU64,
    pub error_records: AtomicU64,
    /// Arrival time (ms) of the oldest record read but not yet delivered; `i64::MIN` for none.
    pub oldest_undelivered_ms: AtomicI64,
    pub last_error: Mutex<Option<String>>,
    /// Per shard, how far it had read the last time it found nothing new and held nothing due.
    settled: Mutex<HashMap<u32, u64>>,
    /// When (engine clock, ms) a buffer next falls due; `i64::MAX` for never.
    next_due_ms: AtomicI64,
}

impl DeliveryStats {
    pub(crate) fn new() -> Self {
        Self {
            oldest_undelivered_ms: AtomicI64::new(i64::MIN),
            next_due_ms: AtomicI64::new(i64::MAX),
            ..Self::default()
        }
    }

    /// Whether every record appended to `stream` so far has been read, and nothing buffered is
    /// due by `now_ms` (with a 0-second interval, whether everything read has been written).
    pub fn settled(&self, stream: &Stream, now_ms: i64) -> bool {
        if self.next_due_ms.load(Ordering::Acquire) <= now_ms {
            return false;
        }
        let settled = self.settled.lock();
        stream.shards().iter().all(|shard| {
            settled
                .get(&shard.index())
                .is_some_and(|&s| s >= shard.next_seq())
        })
    }
}

/// Rows waiting to be written to one partition.
struct Buffer {
    keys: Vec<String>,
    batches: Vec<RecordBatch>,
    bytes: usize,
    records: usize,
    /// When (engine clock) the buffer got its first record.
    opened_ms: i64,
    /// Arrival time of its oldest record.
    oldest_arrival_ms: i64,
    /// Per shard, the oldest record in it.
    held: HashMap<u32, u64>,
}

impl Buffer {
    fn new(keys: Vec<String>, now_ms: i64) -> Self {
        Self {
            keys,
            batches: Vec::new(),
            bytes: 0,
            records: 0,
            opened_ms: now_ms,
            oldest_arrival_ms: i64::MAX,
            held: HashMap::new(),
        }
    }
}

/// A partition: the values of the prefix's partition columns, or the error output.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum PartitionKey {
    Rows(Vec<String>),
    Errors,
}

/// Which of the source's records did not decode, from `error_stream`.
struct ErrorIndex {
    reader: ShardIterator,
    source: String,
    failed: HashMap<(u32, u64), String>,
}

impl ErrorIndex {
    fn catch_up(&mut self) -> Result<()> {
        loop {
            let batches = self.reader.next_batches(READ_BATCH)?;
            if batches.is_empty() {
                return Ok(());
            }
            for batch in batches {
                let column = |name: &str| {
                    batch
                        .column_by_name(name)
                        .and_then(|c| cast(c, &DataType::Utf8).ok())
                };
                let (Some(names), Some(seqs), Some(reasons)) = (
                    column("stream_name"),
                    column("sequence_number"),
                    column("reason"),
                ) else {
                    continue;
                };
                let (names, seqs, reasons) = (
                    names.as_string::<i32>(),
                    seqs.as_string::<i32>(),
                    reasons.as_string::<i32>(),
                );
                for row in 0..batch.num_rows() {
                    if names.is_null(row) || names.value(row) != self.source || seqs.is_null(row) {
                        continue;
                    }
                    if let Ok(position) = parse_sequence_number(seqs.value(row)) {
                        let reason = if reasons.is_null(row) {
                            String::new()
                        } else {
                            reasons.value(row).to_string()
                        };
                        self.failed.insert(position, reason);
                    }
                }
            }
        }
    }
}

/// A delivery stream's reading, buffering and writing.
pub struct Runner {
    name: String,
    version: u32,
    engine: Engine,
    stream: Arc<Stream>,
    options: DeliveryOptions,
    destination: Destination,
    /// Every shard of the source, followed through resharding (parents before children).
    reader: StreamReader,
    errors: Option<ErrorIndex>,
    /// The output columns: the stream's own, or for a `raw` stream its key, data and arrival.
    columns: Vec<usize>,
    schema: SchemaRef,
    raw: bool,
    partition_columns: Vec<usize>,
    buffers: BTreeMap<PartitionKey, Buffer>,
    buffered_bytes: usize,
    stats: Arc<DeliveryStats>,
    committed: Vec<(String, u32, u64)>,
}

impl Runner {
    /// Prepares delivery stream `name` (version `version`) of `stream`, resuming from its
    /// committed positions.
    pub fn new(
        engine: Engine,
        name: &str,
        version: u32,
        stream: Arc<Stream>,
        options: DeliveryOptions,
        destination: Destination,
        stats: Arc<DeliveryStats>,
    ) -> Result<Self> {
        let mut saved = engine.delivery_positions(name)?;
        let stream_id = stream.definition().id;
        if !saved.applies_to(stream.name(), stream_id) {
            // Saved in another stream that had this name: this one is read from its start.
            log::warn!(
                "delivery stream '{name}': stream '{}' was created again since its positions were saved; reading the new stream from its oldest record",
                stream.name()
            );
            saved = PumpCheckpoint::default();
        }
        let reader = StreamReader::new(Arc::clone(&stream), |index| {
            saved.position(stream.name(), stream_id, index).map_or(
                StartPosition::TrimHorizon,
                |seq| {
                    StartPosition::AtSequenceNumber(
                        sluice_engine::sequence::format_sequence_number(index, seq),
                    )
                },
            )
        })?;
        let errors = match engine.try_stream(ERROR_STREAM) {
            Some(errors) if stream.name() != ERROR_STREAM => Some(ErrorIndex {
                reader: ShardIterator::new(&errors, 0, StartPosition::TrimHorizon)?,
                source: stream.name().to_string(),
                failed: HashMap::new(),
            }),
            _ => None,
        };
        let public = stream.public_schema();
        let n_user = stream.user_schema().fields().len();
        let raw = n_user == 0;
        let columns: Vec<usize> = if raw {
            [PARTITION_KEY, DATA, ROWTIME]
                .iter()
                .filter_map(|c| public.index_of(c).ok())
                .collect()
        } else {
            (0..n_user).collect()
        };
        let schema = Arc::new(public.project(&columns)?);
        let partition_columns = options
            .prefix
            .partition_columns()
            .iter()
            .filter_map(|c| public.index_of(c).ok())
            .collect();
        Ok(Self {
            name: name.to_string(),
            version,
            engine,
            stream,
            options,
            destination,
            reader,
            errors,
            columns,
            schema,
            raw,
            partition_columns,
            buffers: BTreeMap::new(),
            buffered_bytes: 0,
            stats,
            committed: saved.positions,
        })
    }

    fn now_ms(&self) -> i64 {
        self.engine.clock().now_millis()
    }

    /// Runs until the task is aborted.
    pub async fn run(mut self) {
        let mut appends = self.stream.watch_appends();
        loop {
            appends.borrow_and_update();
            let read = match self.step().await {
                Ok(read) => read,
                Err(e) => {
                    log::error!("delivery stream '{}': {e}", self.name);
                    *self.stats.last_error.lock() = Some(e.to_string());
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            if read {
                continue;
            }
            self.publish_settled();
            tokio::select! {
                changed = appends.changed() => {
                    if changed.is_err() {
                        return; // the stream is gone
                    }
                }
                _ = tokio::time::sleep(TICK) => {}
            }
        }
    }

    /// Reads what is new, files it, and writes what is due. True if anything was read.
    async fn step(&mut self) -> Result<bool> {
        let reads = self.reader.read(READ_BATCH)?;
        let read = !reads.is_empty();
        if read && let Some(errors) = self.errors.as_mut() {
            errors.catch_up()?;
        }
        for batch in reads.into_iter().flat_map(|r| r.batches) {
            self.file(&batch).await?;
        }
        self.write_due().await?;
        Ok(read)
    }

    /// Files one batch of source rows (public layout) into the buffers.
    async fn file(&mut self, batch: &RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let now = self.now_ms();
        let sequence = batch
            .column_by_name(SEQUENCE_NUMBER)
            .map(|c| c.as_string::<i32>().clone());
        let position = |row: usize| {
            sequence
                .as_ref()
                .filter(|s| s.is_valid(row))
                .and_then(|s| parse_sequence_number(s.value(row)).ok())
        };
        let any_failed = self.errors.as_ref().is_some_and(|e| !e.failed.is_empty());
        let mut groups: BTreeMap<PartitionKey, Vec<u32>> = BTreeMap::new();
        if !any_failed && self.partition_columns.is_empty() {
            // The common case: every row goes to the one buffer.
            groups.insert(PartitionKey::Rows(Vec::new()), Vec::new());
        } else {
            let key_columns: Vec<ArrayRef> = self
                .partition_columns
                .iter()
                .map(|&c| cast(batch.column(c), &DataType::Utf8))
                .collect::<std::result::Result<_, _>>()?;
            for row in 0..batch.num_rows() {
                let failed = any_failed
                    && position(row).is_some_and(|p| {
                        self.errors
                            .as_ref()
                            .is_some_and(|e| e.failed.contains_key(&p))
                    });
                let key = if failed {
                    PartitionKey::Errors
                } else {
                    PartitionKey::Rows(
                        key_columns
                            .iter()
                            .map(|c| {
                                let c = c.as_string::<i32>();
                                if c.is_null(row) {
                                    "null".to_string()
                                } else {
                                    c.value(row).to_string()
                                }
                            })
                            .collect(),
                    )
                };
                groups.entry(key).or_default().push(row as u32);
            }
        }
        let whole = groups.len() == 1;
        for (key, rows) in groups {
            let part = if whole {
                batch.clone()
            } else {
                take_record_batch(batch, &UInt32Array::from(rows.clone()))?
            };
            // A batch holds one shard's records in order: its first row is its oldest.
            let first = rows.first().map_or(0, |&r| r as usize);
            let oldest = position(first);
            let part_positions: Vec<Option<(u32, u64)>> = if key == PartitionKey::Errors {
                rows.iter().map(|&r| position(r as usize)).collect()
            } else {
                Vec::new()
            };
            let bytes = data_bytes(&part);
            let arrival = min_arrival(&part);
            let rows_out = if key == PartitionKey::Errors {
                self.error_rows(&part, &part_positions)?
            } else {
                part.project(&self.columns)?
            };
            let keys = match &key {
                PartitionKey::Rows(keys) => keys.clone(),
                PartitionKey::Errors => Vec::new(),
            };
            let buffer = self
                .buffers
                .entry(key.clone())
                .or_insert_with(|| Buffer::new(keys, now));
            buffer.records += rows_out.num_rows();
            buffer.bytes += bytes;
            buffer.batches.push(rows_out);
            if let Some(arrival) = arrival {
                buffer.oldest_arrival_ms = buffer.oldest_arrival_ms.min(arrival);
            }
            if let Some((shard, seq)) = oldest {
                let held = buffer.held.entry(shard).or_insert(seq);
                *held = (*held).min(seq);
            }
            self.buffered_bytes += bytes;
            if buffer.bytes >= self.options.buffer_size_bytes {
                self.write(&key).await?;
            }
        }
        // Bounded memory: write the oldest buffers early when too much is held.
        while self.buffered_bytes > MEMORY_CAP.max(self.options.buffer_size_bytes * 2)
            || self.buffers.len() > PARTITION_CAP
        {
            let Some(oldest) = self
                .buffers
                .iter()
                .min_by_key(|(_, b)| b.opened_ms)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            self.write(&oldest).await?;
        }
        self.publish_oldest();
        Ok(())
    }

    /// The error output's rows for records that did not decode: Firehose's error records.
    fn error_rows(
        &mut self,
        part: &RecordBatch,
        positions: &[Option<(u32, u64)>],
    ) -> Result<RecordBatch> {
        let data = part
            .column_by_name(DATA)
            .map(|c| c.as_binary::<i32>().clone());
        let keys = part
            .column_by_name(PARTITION_KEY)
            .map(|c| c.as_string::<i32>().clone());
        let arrivals = part
            .column_by_name(ROWTIME)
            .and_then(|c| cast(c, &DataType::Int64).ok());
        let mut lines = Vec::with_capacity(part.num_rows());
        for (row, position) in positions.iter().enumerate() {
            let reason = position
                .and_then(|p| self.errors.as_mut().and_then(|e| e.failed.remove(&p)))
                .unwrap_or_default();
            let raw = data
                .as_ref()
                .filter(|d| d.is_valid(row))
                .map(|d| base64::engine::general_purpose::STANDARD.encode(d.value(row)))
                .unwrap_or_default();
            let line = serde_json::json!({
                "attemptsMade": 1,
                "arrivalTimestamp": arrivals
                    .as_ref()
                    .map(|a| a.as_primitive::<arrow::datatypes::Int64Type>())
                    .filter(|a| a.is_valid(row))
                    .map(|a| a.value(row)),
                "errorCode": "DataFormatConversion.MalformedData",
                "errorMessage": reason,
                "rawData": raw,
                "partitionKey": keys.as_ref().filter(|k| k.is_valid(row)).map(|k| k.value(row)),
                "sequenceNumber": position.map(|(s, q)| sluice_engine::sequence::format_sequence_number(s, q)),
                "deliveryStreamName": self.name,
            });
            lines.push(line.to_string());
        }
        let schema = Arc::new(arrow::datatypes::Schema::new(vec![
            arrow::datatypes::Field::new("line", DataType::Utf8, false),
        ]));
        Ok(RecordBatch::try_new(
            schema,
            vec![Arc::new(arrow::array::StringArray::from(lines))],
        )?)
    }

    /// Writes every buffer that is due: old enough, or any at all with a 0-second interval.
    async fn write_due(&mut self) -> Result<()> {
        let now = self.now_ms();
        let due: Vec<PartitionKey> = self
            .buffers
            .iter()
            .filter(|(_, b)| now - b.opened_ms >= self.options.buffer_interval_ms)
            .map(|(k, _)| k.clone())
            .collect();
        for key in due {
            self.write(&key).await?;
        }
        let next_due = self
            .buffers
            .values()
            .map(|b| b.opened_ms + self.options.buffer_interval_ms)
            .min()
            .unwrap_or(i64::MAX);
        self.stats.next_due_ms.store(next_due, Ordering::Release);
        Ok(())
    }

    /// Writes one buffer as an object, retrying until it lands, then commits positions.
    async fn write(&mut self, key: &PartitionKey) -> Result<()> {
        let Some(buffer) = self.buffers.get(key) else {
            return Ok(());
        };
        let errors = *key == PartitionKey::Errors;
        let (format, compression, template, error_type) = if errors {
            (
                Format::Json,
                Compression::None,
                &self.options.error_output_prefix,
                Some("format-conversion-failed"),
            )
        } else {
            (
                self.options.format,
                self.options.compression,
                &self.options.prefix,
                None,
            )
        };
        let arrival = if buffer.oldest_arrival_ms == i64::MAX {
            buffer.opened_ms
        } else {
            buffer.oldest_arrival_ms
        };
        let prefix = template.evaluate(arrival, &buffer.keys, error_type);
        let time = chrono::DateTime::from_timestamp_millis(arrival).unwrap_or_default();
        let object = format!(
            "{prefix}{}-{}-{}-{}{}",
            self.name,
            self.version,
            time.format("%Y-%m-%d-%H-%M-%S"),
            uuid::Uuid::new_v4(),
            extension(format, compression)
        );
        let bytes = if errors {
            let mut out = Vec::new();
            for batch in &buffer.batches {
                let lines = batch.column(0).as_string::<i32>();
                for line in lines.iter().flatten() {
                    out.extend_from_slice(line.as_bytes());
                    out.push(b'\n');
                }
            }
            out
        } else {
            let batches = buffer.batches.clone();
            let schema = Arc::clone(&self.schema);
            let raw = self.raw;
            tokio::task::spawn_blocking(move || encode(&batches, &schema, format, compression, raw))
                .await
                .map_err(|e| crate::error::Error::Invalid(format!("encoding failed: {e}")))??
        };
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.destination.put_new(&object, bytes.clone()).await {
                Ok(()) => break,
                Err(e) => {
                    let message = format!(
                        "writing {} to {} failed (retrying in {:.1} s): {e}",
                        object,
                        self.destination.url(),
                        backoff.as_secs_f64()
                    );
                    log::warn!("delivery stream '{}': {message}", self.name);
                    *self.stats.last_error.lock() = Some(message);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
        let Some(buffer) = self.buffers.remove(key) else {
            return Ok(());
        };
        self.buffered_bytes = self.buffered_bytes.saturating_sub(buffer.bytes);
        if errors {
            self.stats
                .error_records
                .fetch_add(buffer.records as u64, Ordering::Relaxed);
        } else {
            self.stats
                .records_delivered
                .fetch_add(buffer.records as u64, Ordering::Relaxed);
            self.stats
                .bytes_delivered
                .fetch_add(buffer.bytes as u64, Ordering::Relaxed);
        }
        self.stats.objects_written.fetch_add(1, Ordering::Relaxed);
        self.commit().await?;
        self.publish_oldest();
        Ok(())
    }

    /// Saves, per shard, where to resume: the oldest record still buffered, or everything
    /// read.
    async fn commit(&mut self) -> Result<()> {
        let name = self.stream.name().to_string();
        let mut positions: Vec<(String, u32, u64)> = self
            .reader
            .positions()
            .map(|(shard, position)| {
                let held = self
                    .buffers
                    .values()
                    .filter_map(|b| b.held.get(&shard).copied())
                    .min();
                let resume = held.map_or(position, |h| h.min(position));
                (name.clone(), shard, resume)
            })
            .collect();
        positions.sort();
        if positions == self.committed {
            return Ok(());
        }
        let engine = self.engine.clone();
        let delivery = self.name.clone();
        let checkpoint = PumpCheckpoint {
            positions: positions.clone(),
            stream_ids: [(name, self.stream.definition().id)].into_iter().collect(),
            watermark: None,
            epoch: 0,
        };
        tokio::task::spawn_blocking(move || engine.save_delivery_positions(&delivery, &checkpoint))
            .await
            .map_err(|e| crate::error::Error::Invalid(format!("saving positions failed: {e}")))??;
        self.committed = positions;
        Ok(())
    }

    fn publish_oldest(&self) {
        let oldest = self
            .buffers
            .values()
            .map(|b| b.oldest_arrival_ms)
            .filter(|a| *a != i64::MAX)
            .min()
            .unwrap_or(i64::MIN);
        self.stats
            .oldest_undelivered_ms
            .store(oldest, Ordering::Relaxed);
    }

    /// Records how far every shard was read, now that nothing new was found.
    fn publish_settled(&self) {
        let positions = self.reader.positions().collect();
        *self.stats.settled.lock() = positions;
    }
}

/// The bytes of the records as they arrived.
fn data_bytes(batch: &RecordBatch) -> usize {
    batch
        .column_by_name(DATA)
        .map(|c| {
            let data = c.as_binary::<i32>();
            let offsets = data.value_offsets();
            (offsets[offsets.len() - 1] - offsets[0]) as usize
        })
        .unwrap_or(0)
}

/// The earliest arrival time in the batch.
fn min_arrival(batch: &RecordBatch) -> Option<i64> {
    let times = batch
        .column_by_name(ROWTIME)
        .and_then(|c| cast(c, &DataType::Int64).ok())?;
    arrow::compute::min(times.as_primitive::<arrow::datatypes::Int64Type>())
}
