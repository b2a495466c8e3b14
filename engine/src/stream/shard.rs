//! One shard: an ordered run of records, sealed batches followed by an open tail.
//!
//! Appends land in the tail as small batches (one per append call), already decoded into
//! columns; the tail is *sealed* — concatenated into one batch and persisted as a segment — once it
//! holds enough rows or bytes or has waited long enough. Readers see sealed batches and the tail
//! alike, so a record is readable as soon as its append returns. Readers only take the lock long
//! enough to clone a few `Arc`s; they never hold up a writer.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::{SchemaRef, TimestampMillisecondType, UInt64Type};
use parking_lot::RwLock;

use crate::Durability;
use crate::cache::SegmentCache;
use crate::catalog::ShardDefinition;
use crate::error::Result;
use crate::routing::HashKeyRange;
use crate::segment::{read_segment, write_segment};

/// A run of consecutive records of one shard, in the stored layout: a batch in memory (the
/// open tail) or a sealed segment, read from disk through the [`SegmentCache`] when needed.
/// Cloning one is cheap and never copies records.
#[derive(Debug, Clone)]
pub struct Chunk {
    first_seq: u64,
    last_seq: u64,
    max_arrival_ms: i64,
    /// When its newest record was appended (ms): retention counts from here, never from the
    /// `ROWTIME` a record carries (a pump's window end may be a year old).
    appended_ms: i64,
    rows: usize,
    /// Bytes of memory the batch takes when loaded.
    bytes: usize,
    data: ChunkData,
}

#[derive(Debug, Clone)]
enum ChunkData {
    Resident(RecordBatch),
    Stored(Arc<StoredSegment>),
}

/// A sealed segment of a shard. Its batch is in the cache or on disk; dropping the last
/// reference (the segment expired) drops it from the cache.
#[derive(Debug)]
pub(crate) struct StoredSegment {
    id: u64,
    path: PathBuf,
    schema: SchemaRef,
    cache: Arc<SegmentCache>,
    /// Expired, or merged into a larger segment: the file goes once no reader holds this one.
    delete_when_dropped: std::sync::atomic::AtomicBool,
}

impl StoredSegment {
    pub(crate) fn new(path: PathBuf, schema: SchemaRef, cache: Arc<SegmentCache>) -> Self {
        Self {
            id: cache.next_id(),
            path,
            schema,
            cache,
            delete_when_dropped: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn load(&self) -> Result<RecordBatch> {
        if let Some(batch) = self.cache.get(self.id) {
            return Ok(batch);
        }
        let batch = read_segment(&self.path, &self.schema).map_err(|e| match e {
            crate::Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                crate::Error::Corrupt {
                    what: "segment",
                    path: self.path.clone(),
                    reason: "it was removed from the data folder while Sluice still held it"
                        .to_string(),
                }
            }
            other => other,
        })?;
        self.cache.insert(self.id, &batch);
        Ok(batch)
    }
}

impl Drop for StoredSegment {
    fn drop(&mut self) {
        self.cache.remove(self.id);
        if self.delete_when_dropped.load(Ordering::Acquire)
            && let Err(e) = std::fs::remove_file(&self.path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            // Harmless: the next start finds it expired again, or inside the segment it was
            // merged into, and removes it then.
            log::warn!("removing segment {}: {e}", self.path.display());
        }
    }
}

impl Chunk {
    /// Wraps a non-empty batch held in memory, reading its sequence and arrival bounds.
    pub(crate) fn resident(batch: RecordBatch) -> Option<Self> {
        let rows = batch.num_rows();
        if rows == 0 {
            return None;
        }
        let seqs = batch.column(0).as_primitive::<UInt64Type>();
        let arrivals = batch.column(1).as_primitive::<TimestampMillisecondType>();
        Some(Self {
            first_seq: seqs.value(0),
            last_seq: seqs.value(rows - 1),
            max_arrival_ms: arrivals.value(rows - 1),
            appended_ms: arrivals.value(rows - 1),
            rows,
            bytes: batch.get_array_memory_size(),
            data: ChunkData::Resident(batch),
        })
    }

    /// Marks it appended at `ms` (or later, if a record's `ROWTIME` is later still).
    pub(crate) fn appended_at(mut self, ms: i64) -> Self {
        self.appended_ms = self.appended_ms.max(ms);
        self
    }

    /// A sealed segment holding counters `first_seq..=last_seq`, read when needed.
    pub(crate) fn stored(
        first_seq: u64,
        last_seq: u64,
        rows: usize,
        (max_arrival_ms, appended_ms): (i64, i64),
        bytes: usize,
        segment: StoredSegment,
    ) -> Self {
        Self {
            first_seq,
            last_seq,
            max_arrival_ms,
            appended_ms,
            rows,
            bytes,
            data: ChunkData::Stored(Arc::new(segment)),
        }
    }

    /// The first sequence counter it holds.
    pub fn first_seq(&self) -> u64 {
        self.first_seq
    }

    /// The last sequence counter it holds.
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// How many records it holds.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Bytes of memory its records take when loaded.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// When its newest record arrived (ms since the epoch).
    pub fn max_arrival_ms(&self) -> i64 {
        self.max_arrival_ms
    }

    /// When its newest record was appended (ms since the epoch), what retention counts from.
    pub fn appended_ms(&self) -> i64 {
        self.appended_ms
    }

    /// Its records, read from disk if its segment is not cached.
    pub fn batch(&self) -> Result<RecordBatch> {
        match &self.data {
            ChunkData::Resident(batch) => Ok(batch.clone()),
            ChunkData::Stored(segment) => segment.load(),
        }
    }

    /// Its records if they are in memory (the tail, or a cached segment): no disk read.
    pub fn batch_in_memory(&self) -> Option<RecordBatch> {
        match &self.data {
            ChunkData::Resident(batch) => Some(batch.clone()),
            ChunkData::Stored(segment) => segment.cache.lookup(segment.id),
        }
    }

    /// Lets its segment file go once no reader holds it (it expired, or was merged away).
    fn delete_when_unread(&self) {
        if let ChunkData::Stored(segment) = &self.data {
            segment.delete_when_dropped.store(true, Ordering::Release);
        }
    }

    /// The rows of this chunk with sequence counter `>= seq`.
    fn rows_from(&self, seq: u64) -> Result<RecordBatch> {
        let batch = self.batch()?;
        if seq <= self.first_seq {
            return Ok(batch);
        }
        let seqs = batch.column(0).as_primitive::<UInt64Type>();
        let start = seqs.values().partition_point(|s| *s < seq);
        Ok(batch.slice(start, batch.num_rows() - start))
    }

    /// The sequence counter of the first row arriving at or after `ts_ms`, if any.
    fn first_at_or_after(&self, ts_ms: i64) -> Result<Option<u64>> {
        let batch = self.batch()?;
        let arrivals = batch.column(1).as_primitive::<TimestampMillisecondType>();
        let index = arrivals.values().partition_point(|t| *t < ts_ms);
        let seqs = batch.column(0).as_primitive::<UInt64Type>();
        Ok((index < seqs.len()).then(|| seqs.value(index)))
    }
}

#[derive(Debug)]
pub(crate) struct ShardState {
    pub sealed: Vec<Chunk>,
    pub tail: Vec<Chunk>,
    pub tail_rows: usize,
    pub tail_bytes: usize,
    pub tail_since: Option<Instant>,
    /// The counter the next record will get.
    pub next_seq: u64,
    /// Arrival times never go backwards within a shard.
    pub last_arrival_ms: i64,
    /// The highest counter that is durable in a segment.
    pub sealed_through: u64,
}

const HIGH_WATER: &str = "high_water";

/// Records the highest sequence counter ever sealed in the shard (atomically replaced).
fn write_high_water(dir: &std::path::Path, seq: u64) -> Result<()> {
    let path = dir.join(HIGH_WATER);
    let tmp = dir.join(format!("{HIGH_WATER}.tmp"));
    std::fs::write(&tmp, seq.to_string())
        .and_then(|_| std::fs::File::open(&tmp)?.sync_all())
        .map_err(|e| crate::Error::io("writing sequence high-water mark", &tmp, e))?;
    std::fs::rename(&tmp, &path)
        .map_err(|e| crate::Error::io("writing sequence high-water mark", &path, e))
}

/// The highest sequence counter recorded before segments expired, or 0.
fn read_high_water(dir: &std::path::Path) -> u64 {
    std::fs::read_to_string(dir.join(HIGH_WATER))
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(0)
}

impl ShardState {
    /// Every retained chunk, oldest first: the sealed ones, then the tail.
    fn chunks(&self) -> impl Iterator<Item = &Chunk> {
        self.sealed.iter().chain(self.tail.iter())
    }
}

/// A shard of a stream.
#[derive(Debug)]
pub struct Shard {
    pub(crate) index: u32,
    pub(crate) range: HashKeyRange,
    pub(crate) dir: PathBuf,
    pub(crate) stored_schema: SchemaRef,
    pub(crate) state: RwLock<ShardState>,
    cache: Arc<SegmentCache>,
    /// The shard this one was split from, or the first of the two merged into it.
    parent: Option<u32>,
    /// The second shard merged into this one.
    adjacent_parent: Option<u32>,
    /// The last sequence counter of a closed shard (0 if it never got a record); `OPEN` while
    /// it takes records.
    ending_seq: AtomicU64,
}

/// How many small segments [`Shard::compact`] merges at once.
pub(crate) const MERGE_RUN: usize = 16;

/// `Shard::ending_seq` of a shard that is still open.
const OPEN: u64 = u64::MAX;

/// A point-in-time summary of a shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardStats {
    pub index: u32,
    pub hash_key_range: HashKeyRange,
    pub records: usize,
    pub sealed_batches: usize,
    pub tail_records: usize,
    /// The counter the next record will get.
    pub next_seq: u64,
}

impl Shard {
    pub(crate) fn new(
        definition: &ShardDefinition,
        dir: PathBuf,
        stored_schema: SchemaRef,
        sealed: Vec<Chunk>,
        cache: Arc<SegmentCache>,
    ) -> Self {
        let last = sealed.last().map(|c| (c.last_seq, c.max_arrival_ms));
        let (sealed_through, last_arrival_ms) = last.unwrap_or((0, i64::MIN));
        let sealed_through = sealed_through.max(read_high_water(&dir));
        Self {
            index: definition.index,
            range: definition.hash_key_range,
            parent: definition.parent,
            adjacent_parent: definition.adjacent_parent,
            ending_seq: AtomicU64::new(definition.ending_seq.unwrap_or(OPEN)),
            dir,
            stored_schema,
            cache,
            state: RwLock::new(ShardState {
                sealed,
                tail: Vec::new(),
                tail_rows: 0,
                tail_bytes: 0,
                tail_since: None,
                next_seq: sealed_through + 1,
                last_arrival_ms,
                sealed_through,
            }),
        }
    }

    /// The shard's index within its stream.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// The hash keys the shard owns.
    pub fn hash_key_range(&self) -> HashKeyRange {
        self.range
    }

    /// The shard this one was split from, or the first of the two merged into it.
    pub fn parent(&self) -> Option<u32> {
        self.parent
    }

    /// The second of the two shards merged into this one.
    pub fn adjacent_parent(&self) -> Option<u32> {
        self.adjacent_parent
    }

    /// Whether the shard still takes records (it has not been split or merged).
    pub fn is_open(&self) -> bool {
        self.ending_seq.load(Ordering::Acquire) == OPEN
    }

    /// The last sequence counter of a closed shard (0 if it never got a record), or `None`
    /// while it is open. A reader past it has read the shard to its end.
    pub fn ending_seq(&self) -> Option<u64> {
        let end = self.ending_seq.load(Ordering::Acquire);
        (end != OPEN).then_some(end)
    }

    /// Closes the shard to new records (the caller holds the stream's append lock). Returns its
    /// ending sequence counter.
    pub(crate) fn close(&self) -> u64 {
        let end = self.next_seq() - 1;
        self.ending_seq.store(end, Ordering::Release);
        end
    }

    /// The shard as the catalog records it.
    pub fn definition(&self) -> ShardDefinition {
        ShardDefinition {
            index: self.index,
            hash_key_range: self.range,
            parent: self.parent,
            adjacent_parent: self.adjacent_parent,
            ending_seq: self.ending_seq(),
        }
    }

    /// Adds an already-numbered chunk to the tail.
    pub(crate) fn push_tail(&self, chunk: Chunk) {
        let mut state = self.state.write();
        state.next_seq = chunk.last_seq + 1;
        state.last_arrival_ms = state.last_arrival_ms.max(chunk.max_arrival_ms);
        state.tail_rows += chunk.rows;
        state.tail_bytes += chunk.bytes;
        state.tail_since.get_or_insert_with(Instant::now);
        state.tail.push(chunk);
    }

    /// Whether the tail has reached a sealing threshold.
    pub(crate) fn tail_is_due(&self, rows: usize, bytes: usize, age: std::time::Duration) -> bool {
        let state = self.state.read();
        state.tail_rows > 0
            && (state.tail_rows >= rows
                || state.tail_bytes >= bytes
                || state.tail_since.is_some_and(|t| t.elapsed() >= age))
    }

    /// Seals the tail into one batch persisted as a segment, which enters the cache. Returns
    /// the highest counter now durable in segments. If the segment cannot be written (a full
    /// disk), the tail stays as it was, still covered by the write-ahead log.
    ///
    /// The caller holds the stream's append lock, so the tail cannot grow meanwhile; the segment
    /// is written without holding the shard's lock, so readers are not held up by the disk.
    pub(crate) fn seal(&self, durability: Durability) -> Result<u64> {
        let tail: Vec<Chunk> = {
            let state = self.state.read();
            if state.tail.is_empty() {
                return Ok(state.sealed_through);
            }
            state.tail.clone()
        };
        let (sealed, batch) = self.write_chunk(&tail, durability)?;
        // Readers that follow the stream read it next.
        if let ChunkData::Stored(segment) = &sealed.data {
            self.cache.insert(segment.id, &batch);
        }
        let last = sealed.last_seq;
        let mut state = self.state.write();
        // Swap exactly the chunks that were sealed for the sealed batch, atomically for readers.
        state.tail.drain(..tail.len());
        state.sealed.push(sealed);
        state.tail_rows = state.tail.iter().map(|c| c.rows).sum();
        state.tail_bytes = state.tail.iter().map(|c| c.bytes).sum();
        if state.tail.is_empty() {
            state.tail_since = None;
        }
        state.sealed_through = last;
        Ok(last)
    }

    /// Merges the first run of small adjacent sealed segments — together at most `rows` records
    /// and `bytes` bytes, their newest records at most `span_ms` apart — into one segment, once
    /// the run holds [`MERGE_RUN`] segments or cannot grow any more. (Waiting for a run keeps
    /// rewriting low: a record is merged again only each time its segment's run fills.)
    /// Returns how many segments it replaced (0 if none were worth merging).
    ///
    /// The caller holds the stream's append lock (so the stream cannot be altered meanwhile).
    /// The merged segment is written first, under a name covering the run; then it takes the
    /// run's place for readers at once; the old files are deleted when no reader holds them
    /// any more. A crash in between leaves both, and opening the shard keeps the larger one.
    pub(crate) fn compact(
        &self,
        rows: usize,
        bytes: usize,
        span_ms: i64,
        durability: Durability,
    ) -> Result<usize> {
        let run: Vec<Chunk> = {
            let state = self.state.read();
            let small = |c: &Chunk| c.rows < rows / 2 && c.bytes < bytes / 2;
            let mut run: Vec<&Chunk> = Vec::new();
            let (mut run_rows, mut run_bytes) = (0, 0);
            let mut ready = false;
            for chunk in &state.sealed {
                let fits = small(chunk)
                    && run_rows + chunk.rows <= rows
                    && run_bytes + chunk.bytes <= bytes
                    && run
                        .first()
                        .is_none_or(|f| chunk.max_arrival_ms - f.max_arrival_ms <= span_ms);
                if fits {
                    run.push(chunk);
                    run_rows += chunk.rows;
                    run_bytes += chunk.bytes;
                    if run.len() == MERGE_RUN {
                        ready = true;
                        break;
                    }
                    continue;
                }
                // The run cannot take this chunk: merge it if it is as full as it gets (a small
                // chunk was refused for size or age), else start again after it.
                if run.len() >= 2 && small(chunk) {
                    ready = true;
                    break;
                }
                run.clear();
                (run_rows, run_bytes) = (0, 0);
                if small(chunk) {
                    run.push(chunk);
                    (run_rows, run_bytes) = (chunk.rows, chunk.bytes);
                }
            }
            if !ready {
                return Ok(0);
            }
            run.into_iter().cloned().collect()
        };
        let (merged, _) = self.write_chunk(&run, durability)?;
        let first = merged.first_seq;
        let mut state = self.state.write();
        // Retention may have dropped the front of the run meanwhile.
        let start = state.sealed.partition_point(|c| c.first_seq < first);
        let still_there = state
            .sealed
            .get(start..start + run.len())
            .is_some_and(|now| {
                now.iter()
                    .zip(&run)
                    .all(|(a, b)| (a.first_seq, a.last_seq) == (b.first_seq, b.last_seq))
            });
        if !still_there {
            drop(state);
            merged.delete_when_unread();
            return Ok(0);
        }
        let replaced: Vec<Chunk> = state
            .sealed
            .splice(start..start + run.len(), [merged])
            .collect();
        drop(state);
        replaced.iter().for_each(Chunk::delete_when_unread);
        Ok(replaced.len())
    }

    /// Writes consecutive `chunks` as one segment; returns it as a stored chunk, and its batch.
    fn write_chunk(
        &self,
        chunks: &[Chunk],
        durability: Durability,
    ) -> Result<(Chunk, RecordBatch)> {
        let batches = chunks
            .iter()
            .map(Chunk::batch)
            .collect::<Result<Vec<_>>>()?;
        let batch = arrow::compute::concat_batches(&self.stored_schema, &batches)?;
        drop(batches);
        let (first, last) = (chunks[0].first_seq, chunks[chunks.len() - 1].last_seq);
        let max_arrival_ms = chunks.iter().map(|c| c.max_arrival_ms).max().unwrap_or(0);
        let appended_ms = chunks.iter().map(|c| c.appended_ms).max().unwrap_or(0);
        let times = (max_arrival_ms, appended_ms);
        let path = write_segment(&self.dir, first, last, &batch, times, durability)?;
        let segment = StoredSegment::new(
            path,
            Arc::clone(&self.stored_schema),
            Arc::clone(&self.cache),
        );
        let chunk = Chunk::stored(
            first,
            last,
            batch.num_rows(),
            times,
            batch.get_array_memory_size(),
            segment,
        );
        Ok((chunk, batch))
    }

    /// How many sealed segments the shard keeps.
    pub fn segment_count(&self) -> usize {
        self.state.read().sealed.len()
    }

    /// Drops sealed batches whose newest record arrived before `cutoff_ms`; their segments are
    /// deleted once no reader holds them. Returns how many records expired.
    pub(crate) fn expire(&self, cutoff_ms: i64) -> Result<usize> {
        {
            let state = self.state.read();
            if state
                .sealed
                .first()
                .is_none_or(|c| c.appended_ms >= cutoff_ms)
            {
                return Ok(0);
            }
        }
        let mut state = self.state.write();
        let keep_from = state.sealed.partition_point(|c| c.appended_ms < cutoff_ms);
        // Remember how far numbering got before the segments that say so are deleted, so a
        // restart after everything expired does not hand out sequence numbers again.
        if let Some(newest) = state.sealed[..keep_from].last() {
            write_high_water(&self.dir, newest.last_seq)?;
        }
        let expired: Vec<Chunk> = state.sealed.drain(..keep_from).collect();
        drop(state);
        let mut records = 0;
        for chunk in expired {
            records += chunk.rows;
            // Deleted as soon as no reader holds it: now, unless a query that started before
            // the records expired is still reading them (it finishes with what it started on).
            chunk.delete_when_unread();
        }
        Ok(records)
    }

    /// Every retained record from counter `seq` on, up to `max_records` (stored layout). Sealed
    /// segments not in the cache are read from disk, outside the shard's lock.
    pub fn read_from(&self, seq: u64, max_records: usize) -> Result<Vec<RecordBatch>> {
        let chunks: Vec<Chunk> = {
            let state = self.state.read();
            let start = state.sealed.partition_point(|c| c.last_seq < seq);
            let tail_start = state.tail.partition_point(|c| c.last_seq < seq);
            state.sealed[start..]
                .iter()
                .chain(state.tail[tail_start..].iter())
                .cloned()
                .collect()
        };
        let mut out = Vec::new();
        let mut remaining = max_records;
        for chunk in chunks {
            if remaining == 0 {
                break;
            }
            let batch = chunk.rows_from(seq)?;
            let batch = if batch.num_rows() > remaining {
                batch.slice(0, remaining)
            } else {
                batch
            };
            remaining -= batch.num_rows();
            if batch.num_rows() > 0 {
                out.push(batch);
            }
        }
        Ok(out)
    }

    /// Every retained chunk (stored layout): the snapshot a bounded query scans, loading each
    /// chunk's records as it reaches it.
    pub fn snapshot(&self) -> Vec<Chunk> {
        let state = self.state.read();
        state.chunks().cloned().collect()
    }

    /// The counter the next record will get (where LATEST starts).
    pub fn next_seq(&self) -> u64 {
        self.state.read().next_seq
    }

    /// The counter of the oldest retained record, or the next one if none is retained.
    pub fn trim_horizon(&self) -> u64 {
        let state = self.state.read();
        state
            .sealed
            .first()
            .or(state.tail.first())
            .map_or(state.next_seq, |c| c.first_seq)
    }

    /// The counter of the first record that arrived at or after `ts_ms`, or the next one.
    pub fn seq_at_timestamp(&self, ts_ms: i64) -> Result<u64> {
        let (chunk, next_seq) = {
            let state = self.state.read();
            let chunks: Vec<&Chunk> = state.chunks().collect();
            let index = chunks.partition_point(|c| c.max_arrival_ms < ts_ms);
            (chunks.get(index).map(|c| (*c).clone()), state.next_seq)
        };
        Ok(match chunk {
            Some(chunk) => chunk.first_at_or_after(ts_ms)?.unwrap_or(next_seq),
            None => next_seq,
        })
    }

    /// Whether a retained record arrived at or after `ts_ms` (no disk read). Arrival times
    /// never go backwards in a shard, so the newest chunk says.
    pub fn has_records_since(&self, ts_ms: i64) -> bool {
        let state = self.state.read();
        state
            .tail
            .last()
            .or(state.sealed.last())
            .is_some_and(|c| c.max_arrival_ms >= ts_ms)
    }

    /// A summary of the shard now.
    pub fn stats(&self) -> ShardStats {
        let state = self.state.read();
        let sealed_rows: usize = state.sealed.iter().map(|c| c.rows).sum();
        ShardStats {
            index: self.index,
            hash_key_range: self.range,
            records: sealed_rows + state.tail_rows,
            sealed_batches: state.sealed.len(),
            tail_records: state.tail_rows,
            next_seq: state.next_seq,
        }
    }

    /// The highest counter durable in segments.
    pub(crate) fn sealed_through(&self) -> u64 {
        self.state.read().sealed_through
    }

    /// Bytes the retained records take as Arrow batches (in memory or on disk).
    pub fn retained_bytes(&self) -> usize {
        let state = self.state.read();
        state.chunks().map(|c| c.bytes).sum()
    }

    /// Bytes of the open tail: the records in memory only (and in the write-ahead log).
    pub fn tail_bytes(&self) -> usize {
        self.state.read().tail_bytes
    }
}
