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
use crate::options::{Compression, DeliveryOptions, Format, RecordSplit};
use sluice_engine::kpl::Aggregated;

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

/// A partition: the values of the prefix's partition columns, or the error output of one
/// kind (`!{firehose:error-output-type}`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum PartitionKey {
    Rows(Vec<String>),
    Errors(&'static str),
}

/// Records that could not be converted, and records whose partition keys could not be found.
const CONVERSION_FAILED: &str = "format-conversion-failed";
const PARTITIONING_FAILED: &str = "partitioning-failed";

/// What one source batch adds to one buffer.
struct Filed {
    key: PartitionKey,
    rows: RecordBatch,
    /// Bytes of the source records it came from.
    bytes: usize,
    arrival: Option<i64>,
    /// The oldest source record it holds.
    oldest: Option<(u32, u64)>,
}

/// A record that goes to the error output.
struct FailedRecord<'a> {
    data: &'a [u8],
    partition_key: Option<&'a str>,
    position: Option<(u32, u64)>,
    sub_sequence_number: Option<u64>,
    arrival_ms: Option<i64>,
    reason: String,
}

/// One record as a delivery stream sees it on the record path: a user record of a KPL
/// aggregate or a piece of a split record is one of these.
struct Item<'a> {
    row: usize,
    partition_key: std::borrow::Cow<'a, str>,
    data: std::borrow::Cow<'a, [u8]>,
    sub_sequence_number: Option<u64>,
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
    /// Records are taken one by one (de-aggregated, split, converted, partitioned by a query)
    /// instead of whole batches of rows.
    record_path: bool,
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
        let record_path =
            raw || options.partition_query.is_some() || options.record_columns.is_some();
        let raw_output = raw && options.record_columns.is_none();
        let schema = match &options.record_columns {
            Some(converted) => Arc::clone(converted),
            None => Arc::new(public.project(&columns)?),
        };
        let keyed_by = options.record_columns.as_deref().unwrap_or(public.as_ref());
        let partition_columns = options
            .prefix
            .partition_columns()
            .iter()
            .filter_map(|c| keyed_by.index_of(c).ok())
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
            raw: raw_output,
            record_path,
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
        let filed = if self.record_path {
            self.file_records(batch)?
        } else {
            self.file_rows(batch)?
        };
        for Filed {
            key,
            rows,
            bytes,
            arrival,
            oldest,
        } in filed
        {
            let keys = match &key {
                PartitionKey::Rows(keys) => keys.clone(),
                PartitionKey::Errors(_) => Vec::new(),
            };
            let buffer = self
                .buffers
                .entry(key.clone())
                .or_insert_with(|| Buffer::new(keys, now));
            buffer.records += rows.num_rows();
            buffer.bytes += bytes;
            buffer.batches.push(rows);
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

    /// Files a batch of a stream with columns a row at a time: rows that did not decode (per
    /// `error_stream`) to the error output, the others by their partition columns.
    fn file_rows(&mut self, batch: &RecordBatch) -> Result<Vec<Filed>> {
        let positions = positions(batch);
        let any_failed = self.errors.as_ref().is_some_and(|e| !e.failed.is_empty());
        let mut groups: BTreeMap<PartitionKey, Vec<u32>> = BTreeMap::new();
        if !any_failed && self.partition_columns.is_empty() {
            // The common case: every row goes to the one buffer.
            groups.insert(PartitionKey::Rows(Vec::new()), Vec::new());
        } else {
            let key_columns = utf8_columns(batch, &self.partition_columns)?;
            for (row, position) in positions.iter().enumerate() {
                let failed = any_failed
                    && position.is_some_and(|p| {
                        self.errors
                            .as_ref()
                            .is_some_and(|e| e.failed.contains_key(&p))
                    });
                let key = if failed {
                    PartitionKey::Errors(CONVERSION_FAILED)
                } else {
                    PartitionKey::Rows(key_values(&key_columns, row))
                };
                groups.entry(key).or_default().push(row as u32);
            }
        }
        let whole = groups.len() == 1;
        let mut filed = Vec::with_capacity(groups.len());
        for (key, rows) in groups {
            let part = if whole {
                batch.clone()
            } else {
                take_record_batch(batch, &UInt32Array::from(rows.clone()))?
            };
            // A batch holds one shard's records in order: its first row is its oldest.
            let oldest = positions[rows.first().map_or(0, |&r| r as usize)];
            let bytes = data_bytes(&part);
            let arrival = min_arrival(&part);
            let rows_out = if let PartitionKey::Errors(_) = key {
                let data = part
                    .column_by_name(DATA)
                    .map(|c| c.as_binary::<i32>().clone());
                let keys = part
                    .column_by_name(PARTITION_KEY)
                    .map(|c| c.as_string::<i32>().clone());
                let arrivals = arrivals(&part);
                let failed: Vec<FailedRecord<'_>> = rows
                    .iter()
                    .enumerate()
                    .map(|(i, &row)| {
                        let position = positions[row as usize];
                        FailedRecord {
                            data: data
                                .as_ref()
                                .filter(|d| d.is_valid(i))
                                .map_or(&[], |d| d.value(i)),
                            partition_key: keys
                                .as_ref()
                                .filter(|k| k.is_valid(i))
                                .map(|k| k.value(i)),
                            position,
                            sub_sequence_number: None,
                            arrival_ms: arrivals[i],
                            reason: position
                                .and_then(|p| {
                                    self.errors.as_mut().and_then(|e| e.failed.remove(&p))
                                })
                                .unwrap_or_default(),
                        }
                    })
                    .collect();
                self.error_rows(&failed, "DataFormatConversion.MalformedData")?
            } else {
                part.project(&self.columns)?
            };
            filed.push(Filed {
                key,
                rows: rows_out,
                bytes,
                arrival,
                oldest,
            });
        }
        Ok(filed)
    }

    /// Files a batch record by record: KPL aggregates and split records taken apart, records
    /// converted into `record_columns`, partitioned by the partition query's keys (or the
    /// columns), and records that fail any of it to the error output with the reason.
    fn file_records(&mut self, batch: &RecordBatch) -> Result<Vec<Filed>> {
        let positions = positions(batch);
        let arrivals = arrivals(batch);
        let data = batch
            .column_by_name(DATA)
            .map(|c| c.as_binary::<i32>().clone());
        let partition_keys = batch
            .column_by_name(PARTITION_KEY)
            .map(|c| c.as_string::<i32>().clone());
        let failed_rows: HashMap<usize, String> = match self.errors.as_mut() {
            Some(errors) if !errors.failed.is_empty() => positions
                .iter()
                .enumerate()
                .filter_map(|(row, p)| p.and_then(|p| errors.failed.remove(&p)).map(|r| (row, r)))
                .collect(),
            _ => HashMap::new(),
        };
        // Every record, taken apart where it holds several.
        let mut items: Vec<Item<'_>> = Vec::with_capacity(batch.num_rows());
        for row in 0..batch.num_rows() {
            let bytes: &[u8] = data
                .as_ref()
                .filter(|d| d.is_valid(row))
                .map_or(&[], |d| d.value(row));
            let key = partition_keys
                .as_ref()
                .filter(|k| k.is_valid(row))
                .map_or("", |k| k.value(row));
            let aggregated = if self.raw || self.options.record_columns.is_some() {
                Aggregated::parse(bytes)
            } else {
                Aggregated::Plain
            };
            match aggregated {
                Aggregated::Records(records) => {
                    for record in records {
                        for piece in split(&self.options.record_split, &record.data) {
                            items.push(Item {
                                row,
                                partition_key: std::borrow::Cow::Owned(
                                    record.partition_key.clone(),
                                ),
                                data: std::borrow::Cow::Owned(piece.to_vec()),
                                sub_sequence_number: Some(record.sub_sequence_number),
                            });
                        }
                    }
                }
                Aggregated::Plain | Aggregated::Corrupt(_) => {
                    for piece in split(&self.options.record_split, bytes) {
                        items.push(Item {
                            row,
                            partition_key: std::borrow::Cow::Borrowed(key),
                            data: std::borrow::Cow::Borrowed(piece),
                            sub_sequence_number: None,
                        });
                    }
                }
            }
        }
        // Conversion into record_columns, all at once.
        let mut failure: Vec<Option<(&'static str, &'static str, String)>> = items
            .iter()
            .map(|item| {
                failed_rows.get(&item.row).map(|reason| {
                    (
                        CONVERSION_FAILED,
                        "DataFormatConversion.MalformedData",
                        reason.clone(),
                    )
                })
            })
            .collect();
        let converted: Option<Vec<ArrayRef>> = match &self.options.record_columns {
            Some(schema) => {
                let records: Vec<&[u8]> = items.iter().map(|i| i.data.as_ref()).collect();
                let decoded = sluice_engine::format::decode(
                    sluice_engine::StreamFormat::Json,
                    schema,
                    &records,
                )?;
                for (index, reason) in decoded.errors {
                    failure[index].get_or_insert((
                        CONVERSION_FAILED,
                        "DataFormatConversion.MalformedData",
                        reason,
                    ));
                }
                Some(decoded.columns)
            }
            None => None,
        };
        // Partition keys.
        let key_columns = match &converted {
            Some(columns) => self
                .partition_columns
                .iter()
                .map(|&c| cast(&columns[c], &DataType::Utf8))
                .collect::<std::result::Result<Vec<_>, _>>()?,
            None if self.options.partition_query.is_none() => {
                utf8_columns(batch, &self.partition_columns)?
            }
            None => Vec::new(),
        };
        let template_keys = self.options.prefix.partition_columns();
        let mut groups: BTreeMap<PartitionKey, Vec<usize>> = BTreeMap::new();
        for (index, item) in items.iter().enumerate() {
            let key = if let Some((kind, _, _)) = &failure[index] {
                PartitionKey::Errors(kind)
            } else if let Some(query) = &self.options.partition_query {
                match query.keys(&item.data).and_then(|found| {
                    template_keys
                        .iter()
                        .map(|k| {
                            found.get(*k).cloned().ok_or_else(|| {
                                format!("the partition query's result has no key '{k}' that the prefix names")
                            })
                        })
                        .collect::<std::result::Result<Vec<_>, _>>()
                }) {
                    Ok(keys) => PartitionKey::Rows(keys),
                    Err(reason) => {
                        failure[index] = Some((
                            PARTITIONING_FAILED,
                            "DynamicPartitioning.MetadataExtractionFailed",
                            reason,
                        ));
                        PartitionKey::Errors(PARTITIONING_FAILED)
                    }
                }
            } else {
                let at = if converted.is_some() { index } else { item.row };
                PartitionKey::Rows(key_values(&key_columns, at))
            };
            groups.entry(key).or_default().push(index);
        }
        let mut filed = Vec::with_capacity(groups.len());
        for (key, members) in groups {
            let rows: Vec<usize> = {
                let mut rows: Vec<usize> = members.iter().map(|&i| items[i].row).collect();
                rows.dedup();
                rows
            };
            let oldest = rows.iter().filter_map(|&r| positions[r]).min();
            let arrival = rows.iter().filter_map(|&r| arrivals[r]).min();
            let bytes = members.iter().map(|&i| items[i].data.len()).sum();
            let rows_out = if let PartitionKey::Errors(_) = key {
                let code = members
                    .first()
                    .and_then(|&i| failure[i].as_ref())
                    .map_or("DataFormatConversion.MalformedData", |f| f.1);
                let failed: Vec<FailedRecord<'_>> = members
                    .iter()
                    .map(|&i| FailedRecord {
                        data: &items[i].data,
                        partition_key: Some(&items[i].partition_key),
                        position: positions[items[i].row],
                        sub_sequence_number: items[i].sub_sequence_number,
                        arrival_ms: arrivals[items[i].row],
                        reason: failure[i].as_ref().map(|f| f.2.clone()).unwrap_or_default(),
                    })
                    .collect();
                self.error_rows(&failed, code)?
            } else if let Some(columns) = &converted {
                let take = UInt32Array::from_iter_values(members.iter().map(|&i| i as u32));
                let taken = columns
                    .iter()
                    .map(|c| arrow::compute::take(c, &take, None))
                    .collect::<std::result::Result<Vec<_>, _>>()?;
                RecordBatch::try_new(Arc::clone(&self.schema), taken)?
            } else if self.raw {
                let keys: Vec<&str> = members
                    .iter()
                    .map(|&i| items[i].partition_key.as_ref())
                    .collect();
                let datas: Vec<&[u8]> = members.iter().map(|&i| items[i].data.as_ref()).collect();
                let times = match batch.column_by_name(ROWTIME) {
                    Some(c) => {
                        let take = UInt32Array::from_iter_values(
                            members.iter().map(|&i| items[i].row as u32),
                        );
                        Some(arrow::compute::take(c, &take, None)?)
                    }
                    None => None,
                };
                let mut columns: Vec<ArrayRef> = Vec::with_capacity(self.schema.fields().len());
                for field in self.schema.fields() {
                    columns.push(match field.name().as_str() {
                        PARTITION_KEY => Arc::new(arrow::array::StringArray::from(keys.clone())),
                        DATA => Arc::new(arrow::array::BinaryArray::from(datas.clone())),
                        _ => match &times {
                            Some(times) => cast(times, field.data_type())?,
                            None => arrow::array::new_null_array(field.data_type(), members.len()),
                        },
                    });
                }
                RecordBatch::try_new(Arc::clone(&self.schema), columns)?
            } else {
                let take =
                    UInt32Array::from_iter_values(members.iter().map(|&i| items[i].row as u32));
                take_record_batch(batch, &take)?.project(&self.columns)?
            };
            filed.push(Filed {
                key,
                rows: rows_out,
                bytes,
                arrival,
                oldest,
            });
        }
        Ok(filed)
    }

    /// The error output's rows: one JSON line per record, in Firehose's error record shape.
    fn error_rows(&self, failed: &[FailedRecord<'_>], code: &str) -> Result<RecordBatch> {
        let now = self.now_ms();
        let lines: Vec<String> = failed
            .iter()
            .map(|f| {
                serde_json::json!({
                    "attemptsMade": 1,
                    "arrivalTimestamp": f.arrival_ms,
                    "lastErrorCode": code,
                    "lastErrorMessage": f.reason,
                    "attemptEndingTimestamp": now,
                    "rawData": base64::engine::general_purpose::STANDARD.encode(f.data),
                    "partitionKey": f.partition_key,
                    "sequenceNumber": f.position.map(|(s, q)| sluice_engine::sequence::format_sequence_number(s, q)),
                    "subSequenceNumber": f.sub_sequence_number,
                    "deliveryStreamName": self.name,
                })
                .to_string()
            })
            .collect();
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
        let error_type = match key {
            PartitionKey::Errors(kind) => Some(*kind),
            PartitionKey::Rows(_) => None,
        };
        let errors = error_type.is_some();
        let (format, compression, template) = if errors {
            (
                Format::Json,
                Compression::None,
                &self.options.error_output_prefix,
            )
        } else {
            (
                self.options.format,
                self.options.compression,
                &self.options.prefix,
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
            let raw = self.raw.then_some(self.options.newline_delimited);
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

/// Each row's position (shard, sequence counter).
fn positions(batch: &RecordBatch) -> Vec<Option<(u32, u64)>> {
    let Some(sequence) = batch.column_by_name(SEQUENCE_NUMBER) else {
        return vec![None; batch.num_rows()];
    };
    let sequence = sequence.as_string::<i32>();
    (0..batch.num_rows())
        .map(|row| {
            sequence
                .is_valid(row)
                .then(|| parse_sequence_number(sequence.value(row)).ok())
                .flatten()
        })
        .collect()
}

/// Each row's arrival time (ms).
fn arrivals(batch: &RecordBatch) -> Vec<Option<i64>> {
    let Some(times) = batch
        .column_by_name(ROWTIME)
        .and_then(|c| cast(c, &DataType::Int64).ok())
    else {
        return vec![None; batch.num_rows()];
    };
    times
        .as_primitive::<arrow::datatypes::Int64Type>()
        .iter()
        .collect()
}

/// Columns `indices` of `batch` as text.
fn utf8_columns(batch: &RecordBatch, indices: &[usize]) -> Result<Vec<ArrayRef>> {
    Ok(indices
        .iter()
        .map(|&c| cast(batch.column(c), &DataType::Utf8))
        .collect::<std::result::Result<_, _>>()?)
}

/// The partition key values of row `row` (`null` for a null).
fn key_values(columns: &[ArrayRef], row: usize) -> Vec<String> {
    columns
        .iter()
        .map(|c| {
            let c = c.as_string::<i32>();
            if c.is_null(row) {
                "null".to_string()
            } else {
                c.value(row).to_string()
            }
        })
        .collect()
}

/// One record's pieces under Firehose's multi-record de-aggregation.
fn split<'a>(how: &RecordSplit, data: &'a [u8]) -> Vec<&'a [u8]> {
    match how {
        RecordSplit::None => vec![data],
        RecordSplit::Delimited(delimiter) => {
            let mut pieces = Vec::new();
            let mut rest = data;
            while let Some(at) = find(rest, delimiter) {
                if at > 0 {
                    pieces.push(&rest[..at]);
                }
                rest = &rest[at + delimiter.len()..];
            }
            if !rest.is_empty() {
                pieces.push(rest);
            }
            pieces
        }
        RecordSplit::Json => {
            // Each top-level JSON value; what follows a piece that does not parse stays one
            // piece (and fails conversion or partitioning with its reason).
            let mut pieces = Vec::new();
            let mut stream =
                serde_json::Deserializer::from_slice(data).into_iter::<serde_json::Value>();
            let mut start = 0;
            loop {
                match stream.next() {
                    Some(Ok(_)) => {
                        let end = stream.byte_offset();
                        let piece = trim(&data[start..end]);
                        if !piece.is_empty() {
                            pieces.push(piece);
                        }
                        start = end;
                    }
                    Some(Err(_)) => {
                        let piece = trim(&data[start..]);
                        if !piece.is_empty() {
                            pieces.push(piece);
                        }
                        break;
                    }
                    None => break,
                }
            }
            if pieces.is_empty() {
                pieces.push(data);
            }
            pieces
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &bytes[start..end]
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
