//! A stream: its shards, its write-ahead log, and the append path that ties them together.
//!
//! An append validates every record first (size, partition key), routes each to its shard by
//! hash key, numbers them and decodes each shard's records into columns in one pass, writes the
//! whole call as one write-ahead-log frame, and only then makes the records visible in the shards'
//! tails. So an append either happens whole or not at all, and a record is in the log (it
//! survives the process being killed) before anyone can read it. The call returns — the records
//! are acknowledged — once an `fsync` covers the frame (with `fsync` durability); concurrent
//! appends share one `fsync` (group commit, see [`crate::wal`]).

mod commits;
mod numbered;
pub mod reshard;
pub mod shard;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{
    ArrayRef, BinaryArray, RecordBatch, StringArray, TimestampMillisecondArray, UInt64Array,
};
use arrow::datatypes::SchemaRef;
use parking_lot::{Mutex, RwLock};

use crate::cache::SegmentCache;
use crate::catalog::{ShardDefinition, StreamDefinition};
use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::format::{StreamFormat, decode};
use crate::kpl::Aggregated;
use crate::routing::{HashKeyRange, hash_key, route};
use crate::schema::{public_schema, stored_schema};
use crate::sequence::{format_sequence_number, shard_id};
use crate::wal::{GroupCommit, WalEntry, WalRecord, WriteAheadLog};
use crate::{Durability, EngineOptions};
pub use commits::COMMIT_SHARD;
pub use numbered::NumberedRecord;
pub use reshard::{MAX_OPEN_SHARDS, Reshard};
pub use shard::{Chunk, Shard, ShardStats};

/// The largest data blob a record may carry: 1 MiB, as Kinesis.
pub const MAX_RECORD_BYTES: usize = 1024 * 1024;
/// The longest partition key, in characters, as Kinesis.
pub const MAX_PARTITION_KEY_CHARS: usize = 256;

/// A record to append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutRecord {
    /// 1 to 256 characters; hashed with MD5 to choose the shard unless `explicit_hash_key` is set.
    pub partition_key: String,
    /// Routes the record by this hash key instead of the partition key's.
    pub explicit_hash_key: Option<u128>,
    /// The data blob, up to 1 MiB.
    pub data: Vec<u8>,
    /// The record's `ROWTIME`, when its writer sets it (a pump writing a window's rows at the
    /// window's end) instead of the arrival clock. Arrival times never go backwards within a
    /// shard: an earlier time is raised to the shard's latest.
    pub arrival_ms: Option<i64>,
}

impl PutRecord {
    /// A record routed by its partition key.
    pub fn new(partition_key: impl Into<String>, data: impl Into<Vec<u8>>) -> Self {
        Self {
            partition_key: partition_key.into(),
            explicit_hash_key: None,
            data: data.into(),
            arrival_ms: None,
        }
    }
}

/// A record to append, borrowed: lets a producer append straight from its own buffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordRef<'a> {
    pub partition_key: &'a str,
    pub explicit_hash_key: Option<u128>,
    pub data: &'a [u8],
    /// See [`PutRecord::arrival_ms`].
    pub arrival_ms: Option<i64>,
}

impl<'a> RecordRef<'a> {
    /// A record routed by its partition key.
    pub fn new(partition_key: &'a str, data: &'a [u8]) -> Self {
        Self {
            partition_key,
            explicit_hash_key: None,
            data,
            arrival_ms: None,
        }
    }
}

impl<'a> From<&'a PutRecord> for RecordRef<'a> {
    fn from(record: &'a PutRecord) -> Self {
        Self {
            partition_key: &record.partition_key,
            explicit_hash_key: record.explicit_hash_key,
            data: &record.data,
            arrival_ms: record.arrival_ms,
        }
    }
}

/// Where an appended record went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PutResult {
    pub shard_index: u32,
    /// The per-shard sequence counter.
    pub seq: u64,
}

impl PutResult {
    /// The record's sequence number as Kinesis shows it.
    pub fn sequence_number(&self) -> String {
        format_sequence_number(self.shard_index, self.seq)
    }

    /// The record's shard id, `shardId-000000000000`.
    pub fn shard_id(&self) -> String {
        shard_id(self.shard_index)
    }
}

/// A record or row that could not be taken in or processed, reported to its namespace's
/// `error_stream` with both Sluice's columns (`stream_name`, `shard_id`, `sequence_number`,
/// `reason`) and Kinesis Data Analytics's (`ERROR_TIME`, `ERROR_LEVEL`, `ERROR_NAME`,
/// `MESSAGE`, `DATA_ROWTIME`, `DATA_ROW` hex-encoded, `PUMP_NAME`); each error stream keeps the
/// columns it declares.
#[derive(Debug, Clone, Default)]
pub struct ErrorReport {
    pub shard_index: u32,
    pub seq: u64,
    /// What kind of error (KDA's `ERROR_NAME`), e.g. `Data_Conversion_Error`.
    pub name: &'static str,
    pub reason: String,
    /// The `ROWTIME` of the record the error is about.
    pub data_rowtime_ms: Option<i64>,
    /// The record as it was read.
    pub data: Option<Vec<u8>>,
    /// The pump that failed on it.
    pub pump: Option<String>,
}

/// `ERROR_NAME` of a record that did not decode into its stream's columns.
pub const DATA_CONVERSION_ERROR: &str = "Data_Conversion_Error";

type DecodeFailure = ErrorReport;

/// Settings every stream of an engine shares.
#[derive(Debug, Clone)]
pub(crate) struct StreamRuntime {
    pub clock: Arc<dyn Clock>,
    pub durability: Durability,
    pub seal_rows: usize,
    pub seal_bytes: usize,
    pub seal_after: Duration,
    /// The engine's segment cache.
    pub cache: Arc<SegmentCache>,
}

impl StreamRuntime {
    pub fn from_options(options: &EngineOptions) -> Self {
        Self {
            cache: Arc::new(SegmentCache::new(options.cache_bytes)),
            clock: Arc::clone(&options.clock),
            durability: options.durability,
            seal_rows: options.seal_rows,
            seal_bytes: options.seal_bytes,
            seal_after: options.seal_after,
        }
    }
}

/// A stream of records split across shards.
#[derive(Debug)]
pub struct Stream {
    definition: StreamDefinition,
    /// The retention now, which `Engine::set_retention` changes.
    retention_hours: std::sync::atomic::AtomicU32,
    user_schema: SchemaRef,
    stored_schema: SchemaRef,
    public_schema: SchemaRef,
    /// Every shard, open and closed; replaced whole (under the append lock) when resharding.
    shards: RwLock<Arc<ShardSet>>,
    dir: PathBuf,
    wal: Mutex<WriteAheadLog>,
    /// Makes appends durable after the append lock is released (group commit).
    group_commit: Arc<GroupCommit>,
    /// The latest commit of each writer that commits with its appends (pumps).
    commits: Mutex<commits::Commits>,
    /// Set once `ALTER STREAM` has replaced this object: appends go to the new one.
    retired: std::sync::atomic::AtomicBool,
    /// Set once `DROP STREAM` has removed the stream: readers following it stop.
    dropped: std::sync::atomic::AtomicBool,
    /// The last seal failed: appends try it again first and are refused while it fails.
    seal_failing: std::sync::atomic::AtomicBool,
    runtime: StreamRuntime,
    /// Where records that do not decode are reported (`None` for the error stream itself).
    errors: Option<Arc<Stream>>,
    /// Counts appends, so tailing readers can wait for new records instead of polling.
    appends: tokio::sync::watch::Sender<u64>,
    /// Set when a cluster numbers this stream's records ([`Stream::set_shared`]): only
    /// [`Stream::append_numbered`] may write it.
    shared: std::sync::atomic::AtomicBool,
    /// What brings this copy up to date before a query reads it ([`Stream::set_catch_up`]).
    catch_up: CatchUpSlot,
    /// How long after its `ROWTIME` a record may reach this copy ([`Stream::set_arrival_lag`]).
    arrival_lag_ms: std::sync::atomic::AtomicI64,
}

#[derive(Default)]
struct CatchUpSlot(RwLock<Option<CatchUp>>);

impl std::fmt::Debug for CatchUpSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.read().is_some() {
            "CatchUp(set)"
        } else {
            "CatchUp(none)"
        })
    }
}

/// Brings a copy of a stream up to date with records taken elsewhere (a cluster node's copy of
/// shards other nodes own); completes once it has, or has given up.
pub type CatchUp =
    Arc<dyn Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> + Send + Sync>;

/// Segments are merged only if their newest records arrived within this long of each other,
/// so a merged segment does not keep expired records much past the retention period.
const COMPACT_SPAN_MS: i64 = 10 * 60 * 1000;

/// A stream's shards at one moment.
#[derive(Debug)]
struct ShardSet {
    /// Every shard, open and closed, in index order.
    all: Arc<[Arc<Shard>]>,
    /// The open shards' hash-key ranges, in key order, and each one's position in `all`.
    ranges: Vec<HashKeyRange>,
    positions: Vec<usize>,
}

impl ShardSet {
    fn new(mut shards: Vec<Arc<Shard>>) -> Self {
        shards.sort_by_key(|s| s.index);
        let mut open: Vec<(HashKeyRange, usize)> = shards
            .iter()
            .enumerate()
            .filter(|(_, s)| s.is_open())
            .map(|(position, s)| (s.range, position))
            .collect();
        open.sort_by_key(|(range, _)| range.start);
        Self {
            all: shards.into(),
            ranges: open.iter().map(|(r, _)| *r).collect(),
            positions: open.iter().map(|(_, p)| *p).collect(),
        }
    }
}

/// A numbered record on its way into a shard.
#[derive(Debug, Clone, Copy)]
struct Numbered<'a> {
    seq: u64,
    arrival_ms: i64,
    partition_key: &'a str,
    data: &'a [u8],
}

impl Numbered<'_> {
    /// The report of this record of shard `shard_index`, which did not decode.
    fn failure(&self, shard_index: u32, reason: String) -> DecodeFailure {
        DecodeFailure {
            shard_index,
            seq: self.seq,
            name: DATA_CONVERSION_ERROR,
            reason,
            data_rowtime_ms: Some(self.arrival_ms),
            data: Some(self.data.to_vec()),
            pump: None,
        }
    }
}

impl Stream {
    /// Opens (or creates) the stream's files under `dir`, recovering sealed segments and
    /// replaying the write-ahead log.
    pub(crate) fn open(
        definition: StreamDefinition,
        dir: PathBuf,
        runtime: StreamRuntime,
        errors: Option<Arc<Stream>>,
    ) -> Result<Arc<Self>> {
        let user_schema = definition.user_schema()?;
        let stored = stored_schema(&user_schema);
        let public = public_schema(&user_schema);
        let mut shards = Vec::with_capacity(definition.shards.len());
        for shard_def in &definition.shards {
            let shard_dir = dir.join("shards").join(shard_def.index.to_string());
            fs::create_dir_all(&shard_dir)
                .map_err(|e| Error::io("creating shard folder", &shard_dir, e))?;
            let mut sealed = Vec::new();
            for (first, last, path) in crate::segment::list_segments(&shard_dir)? {
                sealed.extend(open_segment(
                    &definition,
                    &user_schema,
                    &stored,
                    &runtime,
                    (first, last, path),
                )?);
            }
            shards.push(Arc::new(Shard::new(
                shard_def,
                shard_dir,
                Arc::clone(&stored),
                sealed,
                Arc::clone(&runtime.cache),
            )));
        }
        let (wal, replay) = WriteAheadLog::open(&dir.join("wal"), runtime.durability)?;
        let retention_hours = std::sync::atomic::AtomicU32::new(definition.retention_hours);
        let commits = Mutex::new(commits::Commits::load(&dir)?);
        let stream = Arc::new(Self {
            definition,
            user_schema,
            stored_schema: stored,
            public_schema: public,
            shards: RwLock::new(Arc::new(ShardSet::new(shards))),
            dir,
            group_commit: wal.group_commit(),
            retired: std::sync::atomic::AtomicBool::new(false),
            dropped: std::sync::atomic::AtomicBool::new(false),
            seal_failing: std::sync::atomic::AtomicBool::new(false),
            commits,
            wal: Mutex::new(wal),
            runtime,
            errors,
            appends: tokio::sync::watch::Sender::new(0),
            shared: std::sync::atomic::AtomicBool::new(false),
            arrival_lag_ms: std::sync::atomic::AtomicI64::new(0),
            catch_up: CatchUpSlot::default(),
            retention_hours,
        });
        stream.replay(replay.records)?;
        Ok(stream)
    }

    /// Puts logged records that were not yet sealed back into their shards' tails.
    fn replay(&self, mut records: Vec<WalRecord>) -> Result<()> {
        // Writers' commits, newest last, over those saved when the log was last trimmed.
        {
            let mut commits = self.commits.lock();
            for marker in records.iter().filter(|r| r.shard == COMMIT_SHARD) {
                commits.set(&marker.partition_key, &marker.data);
            }
        }
        records.retain(|r| r.shard != COMMIT_SHARD);
        let mut replayed = 0usize;
        let mut start = 0;
        while start < records.len() {
            let shard_index = records[start].shard;
            let mut end = start + 1;
            while end < records.len() && records[end].shard == shard_index {
                end += 1;
            }
            let Some(shard) = self.shard(shard_index) else {
                return Err(Error::Corrupt {
                    what: "write-ahead log",
                    path: self.dir.join("wal"),
                    reason: format!(
                        "it holds records for shard {shard_index}, which does not exist"
                    ),
                });
            };
            let sealed_through = shard.sealed_through();
            let expected = shard.next_seq();
            let run: Vec<Numbered<'_>> = records[start..end]
                .iter()
                .filter(|r| r.seq > sealed_through && r.seq >= expected)
                .map(|r| Numbered {
                    seq: r.seq,
                    arrival_ms: r.arrival_ms,
                    partition_key: &r.partition_key,
                    data: &r.data,
                })
                .collect();
            if let Some(first) = run.first() {
                if first.seq != expected {
                    log::warn!(
                        "stream '{}' shard {shard_index}: write-ahead log resumes at {} but the shard expected {expected}",
                        self.definition.name,
                        first.seq
                    );
                }
                let (batch, _) = self.build_batch(shard_index, &run)?;
                replayed += run.len();
                // When they were appended is not logged: now, so retention keeps them at least
                // as long as it should.
                let now = self.runtime.clock.now_millis();
                if let Some(chunk) = shard::Chunk::resident(batch) {
                    shard.push_tail(chunk.appended_at(now));
                }
            }
            start = end;
        }
        if replayed > 0 {
            log::info!(
                "stream '{}': replayed {replayed} records from the write-ahead log",
                self.definition.name
            );
        }
        Ok(())
    }

    /// The stream's name.
    pub fn name(&self) -> &str {
        &self.definition.name
    }

    /// The stream's definition as it was opened. Its `shards` are the shards then; resharding
    /// changes them since ([`Self::shard_definitions`], [`Self::open_shards`]).
    pub fn definition(&self) -> &StreamDefinition {
        &self.definition
    }

    /// The user columns.
    pub fn user_schema(&self) -> &SchemaRef {
        &self.user_schema
    }

    /// The columns readers and SQL see: user columns, then system columns.
    pub fn public_schema(&self) -> &SchemaRef {
        &self.public_schema
    }

    /// The stream's record format.
    pub fn format(&self) -> StreamFormat {
        self.definition.format
    }

    /// Every shard, open and closed, in index order. Resharding adds shards (and closes
    /// some) but never removes one, so a shard once seen stays.
    pub fn shards(&self) -> Arc<[Arc<Shard>]> {
        Arc::clone(&self.shards.read().all)
    }

    /// The shards that take records now (every shard until a split or merge closes some).
    pub fn open_shards(&self) -> Vec<Arc<Shard>> {
        let set = self.shards.read();
        set.positions
            .iter()
            .map(|&p| Arc::clone(&set.all[p]))
            .collect()
    }

    /// The shard with `index`.
    pub fn shard(&self, index: u32) -> Option<Arc<Shard>> {
        let set = self.shards.read();
        set.all
            .binary_search_by_key(&index, |s| s.index)
            .ok()
            .map(|p| Arc::clone(&set.all[p]))
    }

    /// Every shard as the catalog records it (lineage and ending sequence numbers included).
    pub fn shard_definitions(&self) -> Vec<ShardDefinition> {
        self.shards().iter().map(|s| s.definition()).collect()
    }

    /// How long records are kept.
    pub fn retention(&self) -> Duration {
        Duration::from_secs(u64::from(self.retention_hours()) * 3600)
    }

    /// How long records are kept, in hours (it can change: `Engine::set_retention`).
    pub fn retention_hours(&self) -> u32 {
        self.retention_hours
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    pub(crate) fn set_retention_hours(&self, hours: u32) {
        self.retention_hours
            .store(hours, std::sync::atomic::Ordering::Relaxed);
    }

    /// Validates, routes, numbers, decodes, logs and appends `records`, in that order. Either all
    /// of them are appended or, on error, none.
    pub fn append(&self, records: &[PutRecord]) -> Result<Vec<PutResult>> {
        let refs: Vec<RecordRef<'_>> = records.iter().map(RecordRef::from).collect();
        self.append_refs(&refs)
    }

    /// [`Self::append`] for borrowed records.
    pub fn append_refs(&self, records: &[RecordRef<'_>]) -> Result<Vec<PutResult>> {
        self.append_inner(records, None, None)
    }

    /// [`Self::append_refs`] (or [`Self::append_decoded`], with `columns`) together with
    /// `writer`'s commit, in one write-ahead-log frame: after a crash either both are there or
    /// neither is. A pump commits its read positions this way, so its output is exact.
    pub fn append_committing(
        &self,
        records: &[RecordRef<'_>],
        columns: Option<&RecordBatch>,
        writer: &str,
        commit: &[u8],
    ) -> Result<Vec<PutResult>> {
        if let Some(columns) = columns {
            self.check_columns(records, columns)?;
        }
        self.append_inner(records, columns, Some((writer, commit)))
    }

    /// The latest commit `writer` made with its appends, if any.
    pub fn commit_of(&self, writer: &str) -> Option<Vec<u8>> {
        self.commits.lock().latest.get(writer).cloned()
    }

    /// Forgets `writer`'s commit, durably (a dropped pump; a new one of that name starts over).
    pub fn forget_commit(&self, writer: &str) -> Result<()> {
        if self.commit_of(writer).is_none() {
            return Ok(());
        }
        let position = {
            let mut wal = self.wal.lock();
            let position = wal.write(&[commits::commit_entry(writer, &[])])?;
            self.commits.lock().set(writer, &[]);
            position
        };
        self.group_commit.wait(position)
    }

    /// Appends records whose columns the writer already holds: row `i` of `columns` (the
    /// stream's user columns, exactly its user schema) is record `i` decoded, so nothing is
    /// decoded again. The columnar ingest path (Flight `DoPut`, SQL `INSERT`): the writer encodes
    /// each row once for its data blob, and the write-ahead log keeps the blobs as always.
    pub fn append_decoded(
        &self,
        records: &[RecordRef<'_>],
        columns: &RecordBatch,
    ) -> Result<Vec<PutResult>> {
        self.check_columns(records, columns)?;
        self.append_inner(records, Some(columns), None)
    }

    /// Checks that `columns` are the stream's user columns, one row per record.
    fn check_columns(&self, records: &[RecordRef<'_>], columns: &RecordBatch) -> Result<()> {
        if columns.num_rows() != records.len() {
            return Err(Error::InvalidArgument(format!(
                "{} records but {} rows of columns",
                records.len(),
                columns.num_rows()
            )));
        }
        let expected = self.user_schema.fields();
        let given = columns.schema();
        if given.fields().len() != expected.len()
            || given
                .fields()
                .iter()
                .zip(expected.iter())
                .any(|(g, e)| g.name() != e.name() || g.data_type() != e.data_type())
        {
            return Err(Error::InvalidArgument(format!(
                "columns for stream '{}' must be its columns ({}), got ({})",
                self.definition.name,
                describe_fields(expected),
                describe_fields(given.fields())
            )));
        }
        Ok(())
    }

    /// Marks this stream as one a cluster shares: its shards' owners number its records in
    /// their shared logs and append them with [`Stream::append_numbered`], so every other way
    /// of appending is refused ([`Error::SharedStream`]) — a record numbered here would take a
    /// sequence number the shard's owner gives to another.
    pub fn set_shared(&self, shared: bool) {
        self.shared
            .store(shared, std::sync::atomic::Ordering::Release);
    }

    /// Sets what [`Stream::catch_up`] runs: a cluster node reads what other nodes logged to the
    /// shards they own, so that a query sees every record acknowledged before it began.
    pub fn set_catch_up(&self, catch_up: CatchUp) {
        *self.catch_up.0.write() = Some(catch_up);
    }

    /// Brings this copy up to date with records taken elsewhere, if it is a copy of that kind
    /// (immediately otherwise). A query over the stream awaits this before it reads.
    pub async fn catch_up(&self) {
        let catch_up = self.catch_up.0.read().clone();
        if let Some(catch_up) = catch_up {
            catch_up().await;
        }
    }

    /// Sets how long after its `ROWTIME` (its arrival at the shard's owner) a record may reach
    /// this copy: a cluster node takes other nodes' records in as it follows their logs, so a
    /// window over `ROWTIME` waits that much longer before it closes (none on one node).
    pub fn set_arrival_lag(&self, lag: std::time::Duration) {
        self.arrival_lag_ms.store(
            i64::try_from(lag.as_millis()).unwrap_or(i64::MAX),
            std::sync::atomic::Ordering::Release,
        );
    }

    /// How long after its `ROWTIME` a record may reach this copy, in ms
    /// ([`Stream::set_arrival_lag`]).
    pub fn arrival_lag_ms(&self) -> i64 {
        self.arrival_lag_ms
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// Whether a cluster shares this stream ([`Stream::set_shared`]).
    pub fn is_shared(&self) -> bool {
        self.shared.load(std::sync::atomic::Ordering::Acquire)
    }

    fn append_inner(
        &self,
        records: &[RecordRef<'_>],
        columns: Option<&RecordBatch>,
        commit: Option<(&str, &[u8])>,
    ) -> Result<Vec<PutResult>> {
        if self.is_shared() {
            return Err(Error::SharedStream(self.definition.name.clone()));
        }
        for (index, record) in records.iter().enumerate() {
            if record.data.len() > MAX_RECORD_BYTES {
                return Err(Error::RecordTooLarge {
                    index,
                    size: record.data.len(),
                });
            }
            let len = record.partition_key.chars().count();
            if len == 0 || len > MAX_PARTITION_KEY_CHARS {
                return Err(Error::InvalidPartitionKey { index, len });
            }
        }
        if records.is_empty() {
            return Ok(vec![]);
        }
        let keys: Vec<u128> = records
            .iter()
            .map(|r| {
                r.explicit_hash_key
                    .unwrap_or_else(|| hash_key(r.partition_key))
            })
            .collect();

        let mut results = vec![
            PutResult {
                shard_index: 0,
                seq: 0
            };
            records.len()
        ];
        let mut failures = Vec::new();
        let durable_at;
        {
            let mut wal = self.wal.lock();
            if self.dropped.load(std::sync::atomic::Ordering::Acquire) {
                return Err(Error::StreamNotFound(self.definition.name.clone()));
            }
            if self.retired.load(std::sync::atomic::Ordering::Acquire) {
                return Err(Error::Retry(format!(
                    "stream '{}' was altered while this append waited; send it again",
                    self.definition.name
                )));
            }
            // While tails cannot be sealed (a full disk), new records are refused rather than
            // held in memory without bound; they are taken again once a seal succeeds.
            if self.seal_failing.load(std::sync::atomic::Ordering::Acquire) {
                self.seal_locked(&mut wal, false)?;
            }
            // Routed under the append lock, which resharding also takes: no record can land in
            // a shard that a split or merge has just closed.
            let set = Arc::clone(&self.shards.read());
            let mut by_shard: Vec<Vec<usize>> = vec![Vec::new(); set.all.len()];
            for (i, key) in keys.iter().enumerate() {
                by_shard[set.positions[route(&set.ranges, *key)]].push(i);
            }
            let now = self.runtime.clock.now_millis();
            let mut chunks = Vec::with_capacity(set.all.len());
            let mut entries = Vec::with_capacity(records.len());
            for (position, members) in by_shard.iter().enumerate() {
                if members.is_empty() {
                    continue;
                }
                let shard = &set.all[position];
                let (next_seq, last_arrival) = {
                    let state = shard.state.read();
                    (state.next_seq, state.last_arrival_ms)
                };
                let mut arrival_ms = last_arrival;
                let run: Vec<Numbered<'_>> = members
                    .iter()
                    .enumerate()
                    .map(|(offset, &i)| {
                        arrival_ms = arrival_ms.max(records[i].arrival_ms.unwrap_or(now));
                        Numbered {
                            seq: next_seq + offset as u64,
                            arrival_ms,
                            partition_key: records[i].partition_key,
                            data: records[i].data,
                        }
                    })
                    .collect();
                let (batch, errors) = match columns {
                    Some(columns) => (self.build_decoded_batch(&run, columns, members)?, vec![]),
                    None => self.build_batch(shard.index, &run)?,
                };
                failures.extend(
                    errors
                        .into_iter()
                        .map(|(offset, reason)| run[offset].failure(shard.index, reason)),
                );
                for (n, &i) in run.iter().zip(members) {
                    results[i] = PutResult {
                        shard_index: shard.index,
                        seq: n.seq,
                    };
                    entries.push(WalEntry {
                        shard: shard.index,
                        seq: n.seq,
                        arrival_ms: n.arrival_ms,
                        partition_key: n.partition_key,
                        data: n.data,
                    });
                }
                chunks.push((position, batch));
            }
            if let Some((writer, data)) = commit {
                entries.push(commits::commit_entry(writer, data));
            }
            durable_at = wal.write(&entries)?;
            if let Some((writer, data)) = commit {
                self.commits.lock().set(writer, data);
            }
            self.publish_logged(
                &mut wal,
                std::mem::take(&mut failures),
                chunks
                    .into_iter()
                    .map(|(position, batch)| (&*set.all[position], batch)),
                now,
            );
        }
        // Acknowledged only once durable: one fsync covers every append waiting here.
        self.group_commit.wait(durable_at)?;
        Ok(results)
    }

    /// What every append does once its frame is in the write-ahead log, under the append lock:
    /// reports the records that did not decode (before the records become visible, so a
    /// reader that sees a record can already find its report), makes the records visible in
    /// their shards' tails, wakes followers, and seals the tails that are due. Nothing here may
    /// fail the append — the records are logged and their sequence numbers taken — so a report
    /// or seal that fails is logged instead.
    fn publish_logged<'a>(
        &self,
        wal: &mut WriteAheadLog,
        failures: Vec<DecodeFailure>,
        chunks: impl IntoIterator<Item = (&'a Shard, RecordBatch)>,
        now: i64,
    ) {
        if let Err(e) = self.report_failures(failures) {
            log::error!(
                "stream '{}': could not report records that did not decode: {e}",
                self.definition.name
            );
        }
        let mut due = false;
        for (shard, batch) in chunks {
            if let Some(chunk) = shard::Chunk::resident(batch) {
                shard.push_tail(chunk.appended_at(now));
            }
            due |= shard.tail_is_due(
                self.runtime.seal_rows,
                self.runtime.seal_bytes,
                self.runtime.seal_after,
            );
        }
        self.appends.send_modify(|n| *n += 1);
        if due && let Err(e) = self.seal_locked(wal, false) {
            log::error!(
                "stream '{}': sealing failed, the records stay in the write-ahead log: {e}",
                self.definition.name
            );
        }
    }

    /// Builds a stored batch for a run of numbered records of one shard, with the records that
    /// did not decode.
    fn build_batch(
        &self,
        _shard_index: u32,
        run: &[Numbered<'_>],
    ) -> Result<(RecordBatch, Vec<(usize, String)>)> {
        let blobs: Vec<&[u8]> = run.iter().map(|n| n.data).collect();
        let decoded = decode(self.definition.format, &self.user_schema, &blobs)?;
        let mut columns = system_columns(run);
        columns.extend(decoded.columns);
        let batch = RecordBatch::try_new(Arc::clone(&self.stored_schema), columns)?;
        let mut errors = decoded.errors;
        if blobs.iter().any(|b| Aggregated::claims(b)) {
            // KPL aggregates decode into their user records when read (`kpl::expand_stored`),
            // not as one record; one that only looks like an aggregate is reported as such.
            for (index, blob) in blobs.iter().enumerate() {
                if !Aggregated::claims(blob) {
                    continue;
                }
                let existing = errors.iter().position(|(i, _)| *i == index);
                match (Aggregated::parse(blob), existing) {
                    (Aggregated::Records(_), Some(at)) => {
                        errors.remove(at);
                    }
                    (Aggregated::Corrupt(reason), Some(at)) => errors[at].1 = reason,
                    (Aggregated::Corrupt(reason), None) => errors.push((index, reason)),
                    _ => {}
                }
            }
            errors.sort_by_key(|(i, _)| *i);
        }
        Ok((batch, errors))
    }

    /// Builds a stored batch for a run of numbered records of one shard whose columns are rows
    /// `members` of `columns`.
    fn build_decoded_batch(
        &self,
        run: &[Numbered<'_>],
        columns: &RecordBatch,
        members: &[usize],
    ) -> Result<RecordBatch> {
        let mut stored = system_columns(run);
        let indices = (members.len() != columns.num_rows()).then(|| {
            arrow::array::UInt32Array::from_iter_values(members.iter().map(|&i| i as u32))
        });
        for column in columns.columns() {
            let column = match &indices {
                // Every row went to this shard, in order.
                None => Arc::clone(column),
                Some(indices) => arrow::compute::take(column, indices, None)?,
            };
            // Rows taken from (or a client's batch sliced from) a larger batch keep its strings.
            stored.push(crate::views::compact_views(&column));
        }
        Ok(RecordBatch::try_new(
            Arc::clone(&self.stored_schema),
            stored,
        )?)
    }

    /// Reports records of this stream that a reader could not process (a pump's query failing
    /// on them) to `error_stream`: (shard, sequence counter, reason) each.
    pub fn report_errors(&self, failures: &[(u32, u64, String)]) -> Result<()> {
        self.report_failures(
            failures
                .iter()
                .map(|(shard_index, seq, reason)| DecodeFailure {
                    shard_index: *shard_index,
                    seq: *seq,
                    name: DATA_CONVERSION_ERROR,
                    reason: reason.clone(),
                    ..DecodeFailure::default()
                })
                .collect(),
        )
    }

    /// Reports records or rows of this stream that could not be processed to its
    /// namespace's `error_stream`.
    pub fn report(&self, reports: Vec<ErrorReport>) -> Result<()> {
        self.report_failures(reports)
    }

    /// Reports records of this stream that could not be processed to `errors`, another
    /// namespace's `error_stream` (an application reading a stream outside it).
    pub fn report_to(&self, errors: &Stream, reports: Vec<ErrorReport>) -> Result<()> {
        self.report_into(errors, reports)
    }

    fn report_failures(&self, failures: Vec<DecodeFailure>) -> Result<()> {
        let Some(errors) = &self.errors else {
            return Ok(());
        };
        self.report_into(errors, failures)
    }

    fn report_into(&self, errors: &Stream, failures: Vec<DecodeFailure>) -> Result<()> {
        if failures.is_empty() {
            return Ok(());
        }
        let records: Vec<PutRecord> = failures
            .iter()
            .map(|f| {
                let row = serde_json::json!({
                    "stream_name": self.definition.name,
                    "shard_id": shard_id(f.shard_index),
                    "sequence_number": format_sequence_number(f.shard_index, f.seq),
                    "reason": f.reason,
                    "ERROR_TIME": self.runtime.clock.now_millis(),
                    "ERROR_LEVEL": "Error",
                    "ERROR_NAME": f.name,
                    "MESSAGE": f.reason,
                    "DATA_ROWTIME": f.data_rowtime_ms,
                    "DATA_ROW": f.data.as_deref().map(hex),
                    "PUMP_NAME": f.pump,
                });
                PutRecord::new(self.definition.name.clone(), row.to_string())
            })
            .collect();
        errors.append(&records)?;
        Ok(())
    }

    /// Stops taking appends for good, with every record sealed into segments and the log
    /// empty, then runs `replace` (which reopens the stream's folder under a new definition).
    /// If `replace` fails, the stream takes appends again. Appends waiting meanwhile fail with
    /// [`Error::Retry`]; the new stream object takes them.
    pub(crate) fn retire<T>(&self, replace: impl FnOnce() -> Result<T>) -> Result<T> {
        let mut wal = self.wal.lock();
        self.seal_locked(&mut wal, true)?;
        self.retired
            .store(true, std::sync::atomic::Ordering::Release);
        let replaced = replace();
        if replaced.is_err() {
            self.retired
                .store(false, std::sync::atomic::Ordering::Release);
        }
        replaced
    }

    /// Seals the tails that are due (or all of them, with `force`) and trims the log.
    pub fn seal(&self, force: bool) -> Result<()> {
        let mut wal = self.wal.lock();
        self.seal_locked(&mut wal, force)
    }

    /// Seals under the append lock, remembering whether it failed (see `seal_failing`).
    fn seal_locked(&self, wal: &mut WriteAheadLog, force: bool) -> Result<()> {
        let sealed = self.seal_and_trim(wal, force);
        self.seal_failing
            .store(sealed.is_err(), std::sync::atomic::Ordering::Release);
        sealed
    }

    fn seal_and_trim(&self, wal: &mut WriteAheadLog, force: bool) -> Result<()> {
        for shard in self.shards().iter() {
            if force
                || shard.tail_is_due(
                    self.runtime.seal_rows,
                    self.runtime.seal_bytes,
                    self.runtime.seal_after,
                )
            {
                shard.seal(self.runtime.durability)?;
            }
        }
        // The log about to be trimmed may hold the only copy of a writer's latest commit.
        self.commits
            .lock()
            .save(&self.dir, self.runtime.durability)?;
        wal.trim(|index| self.shard(index).map_or(u64::MAX, |s| s.sealed_through()))
    }

    /// Merges small sealed segments (sealed by age, from a slow stream) into segments of up to
    /// the sealing thresholds, one run per shard per call, so a stream keeps few files however
    /// slowly it is written. Returns how many segments were merged away.
    pub fn compact(&self) -> Result<usize> {
        let _append_lock = self.wal.lock();
        if self.retired.load(std::sync::atomic::Ordering::Acquire) {
            return Ok(0);
        }
        let mut merged = 0;
        for shard in self.shards().iter() {
            merged += shard.compact(
                self.runtime.seal_rows,
                self.runtime.seal_bytes,
                COMPACT_SPAN_MS,
                self.runtime.durability,
            )?;
        }
        Ok(merged)
    }

    /// Drops sealed batches older than the retention period. Returns how many records expired.
    pub fn expire(&self) -> Result<usize> {
        let retention_ms = self.retention().as_millis() as i64;
        let cutoff = self.runtime.clock.now_millis().saturating_sub(retention_ms);
        let mut expired = 0;
        for shard in self.shards().iter() {
            expired += shard.expire(cutoff)?;
        }
        Ok(expired)
    }

    /// Every retained chunk of every shard, in the stored layout, by shard index: what a
    /// bounded query scans, loading each chunk's records as it reaches it. Expired segments are
    /// dropped first.
    pub fn snapshot(&self) -> Result<Vec<(u32, Vec<Chunk>)>> {
        self.expire()?;
        Ok(self
            .shards()
            .iter()
            .map(|s| (s.index, s.snapshot()))
            .collect())
    }

    /// Counts of retained records, per shard.
    pub fn stats(&self) -> Vec<ShardStats> {
        self.shards().iter().map(|s| s.stats()).collect()
    }

    /// Marks the stream dropped and wakes every reader following it, so it can stop.
    pub(crate) fn mark_dropped(&self) {
        self.dropped
            .store(true, std::sync::atomic::Ordering::Release);
        self.retired
            .store(true, std::sync::atomic::Ordering::Release);
        self.appends.send_modify(|n| *n += 1);
    }

    /// Whether `DROP STREAM` removed this stream: nothing more will arrive in it (a stream
    /// created again under its name is another stream).
    pub fn is_dropped(&self) -> bool {
        self.dropped.load(std::sync::atomic::Ordering::Acquire)
    }

    /// How many readers follow this stream's appends right now (continuous queries, pumps,
    /// subscriptions): each holds one watch, released when it stops.
    pub fn followers(&self) -> usize {
        self.appends.receiver_count()
    }

    /// A receiver that changes after every append: a tailing reader marks it seen, reads until
    /// caught up, then awaits `changed()`, and so never misses a record nor polls.
    pub fn watch_appends(&self) -> tokio::sync::watch::Receiver<u64> {
        self.appends.subscribe()
    }

    /// How many write-ahead-log `fsync`s this stream has run (group commit shares one among
    /// concurrent appends).
    pub fn wal_syncs(&self) -> u64 {
        self.group_commit.syncs()
    }

    /// The stream's folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// A sealed segment found when a stream opens, as a chunk whose records stay on disk until
/// read. Only its footer is read, unless it predates footers that summarise it or was written
/// with other columns (before `ALTER STREAM`): then its records are read, and in the second case
/// decoded again from their data and the segment rewritten (atomically) in the new form.
fn open_segment(
    definition: &StreamDefinition,
    user_schema: &SchemaRef,
    stored: &SchemaRef,
    runtime: &StreamRuntime,
    (first, last, path): (u64, u64, PathBuf),
) -> Result<Option<shard::Chunk>> {
    let header = crate::segment::read_segment_header(&path)?;
    let (rows, times, bytes) = match header.summary {
        Some((rows, max_arrival, appended)) if header.columns.fields() == stored.fields() => {
            (rows, (max_arrival, appended), header.file_bytes as usize)
        }
        _ => {
            let (found, mut batch) = crate::segment::read_segment_as_written(&path)?;
            if found.fields() != stored.fields() {
                batch = redecode(definition, user_schema, stored, &path, &batch)?;
            }
            let Some(chunk) = shard::Chunk::resident(batch.clone()) else {
                return Ok(None);
            };
            let dir = path.parent().unwrap_or(Path::new("."));
            let times = (chunk.max_arrival_ms(), chunk.appended_ms());
            crate::segment::write_segment(dir, first, last, &batch, times, runtime.durability)?;
            (chunk.rows(), times, chunk.bytes())
        }
    };
    if rows == 0 {
        return Ok(None);
    }
    let segment = shard::StoredSegment::new(path, Arc::clone(stored), Arc::clone(&runtime.cache));
    Ok(Some(shard::Chunk::stored(
        first, last, rows, times, bytes, segment,
    )))
}

/// A stored batch written with other user columns (before `ALTER STREAM`), decoded again from
/// its records' data into the stream's current columns. Records that do not decode keep NULL
/// columns, as on append.
fn redecode(
    definition: &StreamDefinition,
    user_schema: &SchemaRef,
    stored: &SchemaRef,
    path: &Path,
    batch: &RecordBatch,
) -> Result<RecordBatch> {
    use arrow::array::{Array, AsArray};
    let system = crate::schema::STORED_SYSTEM_COLUMNS;
    let fits = batch.num_columns() >= system
        && (0..system).all(|i| batch.schema().field(i) == stored.field(i));
    if !fits {
        return Err(Error::Corrupt {
            what: "segment",
            path: path.to_path_buf(),
            reason: format!(
                "its columns {:?} are not a Sluice segment's",
                batch.schema().fields()
            ),
        });
    }
    let data = batch.column(system - 1).as_binary::<i32>();
    let blobs: Vec<&[u8]> = (0..data.len())
        .map(|i| {
            if data.is_null(i) {
                &[][..]
            } else {
                data.value(i)
            }
        })
        .collect();
    let decoded = decode(definition.format, user_schema, &blobs)?;
    if !decoded.errors.is_empty() {
        log::warn!(
            "stream '{}': {} records of {} do not decode as {} and keep NULL columns",
            definition.name,
            decoded.errors.len(),
            path.display(),
            definition.format
        );
    }
    let mut columns: Vec<ArrayRef> = batch.columns()[..system].to_vec();
    columns.extend(decoded.columns);
    Ok(RecordBatch::try_new(Arc::clone(stored), columns)?)
}

/// The stored system columns (sequence counter, arrival time, partition key, data) of a run.
fn system_columns(run: &[Numbered<'_>]) -> Vec<ArrayRef> {
    vec![
        Arc::new(UInt64Array::from_iter_values(run.iter().map(|n| n.seq))),
        Arc::new(TimestampMillisecondArray::from_iter_values(
            run.iter().map(|n| n.arrival_ms),
        )),
        Arc::new(StringArray::from_iter_values(
            run.iter().map(|n| n.partition_key),
        )),
        Arc::new(BinaryArray::from_iter_values(run.iter().map(|n| n.data))),
    ]
}

fn describe_fields(fields: &arrow::datatypes::Fields) -> String {
    fields
        .iter()
        .map(|f| format!("{} {}", f.name(), f.data_type()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `bytes` as lower-case hex, as KDA's `error_stream` carries a row (`DATA_ROW`).
fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        let _ = write!(out, "{byte:02x}");
    }
    out
}
