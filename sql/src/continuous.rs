//! Continuous queries: `SELECT STREAM …` runs for as long as its reader wants rows.
//!
//! In a continuous query every stream is an unbounded DataFusion table
//! ([`StreamingTable`] marked infinite) with one [`StreamTail`] partition following all its
//! shards. A tail reads the retained records from the oldest on (or from a pump's saved
//! positions), then waits on the stream's append signal and yields each new batch as it lands, so the DataFusion plan over it (filters, projections,
//! scalar functions, `CASE`, `LIKE`, regular expressions) runs batch by batch forever. Plans
//! that cannot run on unbounded input are refused by DataFusion's own checks.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use async_trait::async_trait;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::streaming::StreamingTable;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::Result as DFResult;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::{Expr, TableType};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::PartitionStream;
use sluice_engine::{Engine, PumpCheckpoint, StartPosition, Stream, StreamReader};

use crate::error::to_datafusion;

/// Records read from a shard per step.
const READ_BATCH: usize = 8192;

/// How far a continuous query (a pump) has read, shared between its source and its runner.
///
/// `read` moves when the source hands a batch downstream. The source is pulled one batch at a
/// time through a plan with no buffering (one partition, streaming filters), so when it is
/// polled again everything it handed out before has been processed; when it then finds nothing
/// new it copies `read` to `caught_up`, which is what `FLUSH` waits on.
#[derive(Debug, Default)]
pub struct PumpCursor {
    /// Where a resumed pump starts reading each shard (saved positions), and the
    /// incarnation of each stream they were saved in.
    resume: PumpCheckpoint,
    /// The incarnation of each stream read now.
    stream_ids: Mutex<HashMap<String, u64>>,
    /// The number of the pump's last output batch (see [`PumpCheckpoint::epoch`]).
    epoch: std::sync::atomic::AtomicU64,
    /// How far each shard read by the running query has been read.
    read: Mutex<HashMap<(String, u32), u64>>,
    caught_up: Mutex<HashMap<(String, u32), u64>>,
    rows_in: AtomicU64,
    /// Per shard, the oldest record still held in an open window: a restart must read again
    /// from there.
    held: Mutex<HashMap<(String, u32), u64>>,
    /// The watermark of a windowed pump, in its time column's unit.
    watermark: Mutex<Option<i64>>,
    /// The same watermark in milliseconds since the epoch, for people.
    watermark_ms: Mutex<Option<i64>>,
    /// Rows dropped for arriving behind the watermark.
    late_rows: AtomicU64,
    /// The pump reading through this cursor, for its error reports.
    pump: Option<String>,
    /// When (processing time, ms) a windowed pump next has work that only the clock brings: a
    /// processing-time window due to close, or a shard due to turn idle. Once the clock has
    /// passed it the pump is not caught up until it has done that work.
    due_ms: Mutex<Option<i64>>,
    /// When (ms, on the watermark's clock) the earliest open window may close: its end plus
    /// the allowed lateness.
    next_close_ms: Mutex<Option<i64>>,
}

/// How far a continuous query has come, for a client waiting on its first rows: the records
/// read, the watermark and when the earliest open window can close.
#[derive(Debug, Clone, Default)]
pub struct QueryProgress {
    cursor: Arc<PumpCursor>,
}

impl QueryProgress {
    /// The progress recorded in `cursor`.
    pub fn new(cursor: Arc<PumpCursor>) -> Self {
        Self { cursor }
    }

    /// Records read so far.
    pub fn rows_in(&self) -> u64 {
        self.cursor.rows_in()
    }

    /// The watermark (ms since the epoch), once a windowed query has one.
    pub fn watermark_ms(&self) -> Option<i64> {
        self.cursor.watermark_ms()
    }

    /// When (ms) the watermark lets the earliest open window close, if one is open.
    pub fn next_close_ms(&self) -> Option<i64> {
        self.cursor.next_close_ms()
    }

    /// Rows dropped for arriving behind the watermark.
    pub fn late_rows(&self) -> u64 {
        self.cursor.late_rows()
    }
}

impl PumpCursor {
    /// A cursor resuming from a saved checkpoint.
    pub fn resuming(checkpoint: PumpCheckpoint) -> Self {
        Self {
            epoch: std::sync::atomic::AtomicU64::new(checkpoint.epoch),
            watermark: Mutex::new(checkpoint.watermark),
            resume: checkpoint,
            ..Self::default()
        }
    }

    /// The streams read so far, by name.
    pub fn streams(&self) -> Vec<String> {
        let mut names: Vec<String> = self.stream_ids.lock().keys().cloned().collect();
        names.sort();
        names
    }

    /// The cursor of pump `name`.
    pub fn for_pump(mut self, name: &str) -> Self {
        self.pump = Some(name.to_string());
        self
    }

    /// The pump reading through this cursor, if it is a pump's.
    pub fn pump(&self) -> Option<&str> {
        self.pump.as_deref()
    }

    /// What to save: for every shard the position to resume from (before any record still
    /// held in an open window), and the watermark.
    pub fn checkpoint(&self) -> PumpCheckpoint {
        let held = self.held.lock();
        let mut positions: Vec<_> = self
            .read
            .lock()
            .iter()
            .map(|(key, seq)| {
                let resume = held.get(key).map_or(*seq, |h| (*h).min(*seq));
                (key.0.clone(), key.1, resume)
            })
            .collect();
        positions.sort();
        PumpCheckpoint {
            positions,
            stream_ids: self
                .stream_ids
                .lock()
                .iter()
                .map(|(name, id)| (name.clone(), *id))
                .collect(),
            watermark: *self.watermark.lock(),
            epoch: self.epoch.load(Ordering::Relaxed),
        }
    }

    /// Numbers the pump's next output batch: its checkpoint carries the number, so of two
    /// checkpoints the newer is known.
    pub fn next_epoch(&self) -> u64 {
        self.epoch.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// The watermark saved or reached so far.
    pub fn watermark(&self) -> Option<i64> {
        *self.watermark.lock()
    }

    /// Records that a windowed runtime reached `watermark` and still holds records from
    /// `held` (stream, shard) → oldest counter.
    pub fn set_window_state(
        &self,
        watermark: Option<i64>,
        watermark_ms: Option<i64>,
        held: HashMap<(String, u32), u64>,
    ) {
        *self.watermark.lock() = watermark;
        *self.watermark_ms.lock() = watermark_ms;
        *self.held.lock() = held;
    }

    /// Records when (ms) the watermark lets the earliest open window close.
    pub fn set_next_close(&self, close_ms: Option<i64>) {
        *self.next_close_ms.lock() = close_ms;
    }

    /// When (ms) the watermark lets the earliest open window close, if one is open.
    pub fn next_close_ms(&self) -> Option<i64> {
        *self.next_close_ms.lock()
    }

    /// Records when (processing time, ms) the clock next brings the pump work.
    pub fn set_due(&self, due_ms: Option<i64>) {
        *self.due_ms.lock() = due_ms;
    }

    /// The watermark in milliseconds since the epoch, once a windowed pump has one.
    pub fn watermark_ms(&self) -> Option<i64> {
        *self.watermark_ms.lock()
    }

    /// Counts rows dropped for lateness.
    pub fn add_late_rows(&self, rows: u64) {
        self.late_rows.fetch_add(rows, Ordering::Relaxed);
    }

    /// Rows dropped for lateness so far.
    pub fn late_rows(&self) -> u64 {
        self.late_rows.load(Ordering::Relaxed)
    }

    /// Records read so far.
    pub fn rows_in(&self) -> u64 {
        self.rows_in.load(Ordering::Relaxed)
    }

    /// Whether everything appended so far to the shards this cursor reads has been read and
    /// fully processed, and no processing-time window the clock has passed is still open.
    pub fn caught_up(&self, engine: &Engine) -> bool {
        if self
            .due_ms
            .lock()
            .is_some_and(|due| due <= engine.clock().now_millis())
        {
            return false;
        }
        // One lock at a time (never `read` and `caught_up` together).
        let streams: std::collections::BTreeSet<String> = self
            .read
            .lock()
            .keys()
            .map(|(stream, _)| stream.clone())
            .collect();
        let caught_up = self.caught_up.lock();
        // Every shard of every stream read, including shards a reshard opened since.
        streams.into_iter().all(|name| {
            // By full name: an application's feeds are checked through its namespace's handle,
            // and read streams of the default namespace (before, such a stream was not found
            // there and counted as caught up, so FLUSH could return before the feeds ran).
            let Some(stream) = engine.stream_by_full_name(&name) else {
                return true;
            };
            stream.shards().iter().all(|shard| {
                caught_up
                    .get(&(name.clone(), shard.index()))
                    .is_some_and(|seq| *seq >= shard.next_seq())
            })
        })
    }

    /// Where to start reading `shard` of `stream`: the saved position, unless the stream is
    /// another incarnation than the one it was saved in (dropped and created again).
    fn start(&self, stream: &Stream, shard: u32) -> Option<u64> {
        let id = stream.definition().id;
        self.stream_ids.lock().insert(stream.name().to_string(), id);
        if !self.resume.applies_to(stream.name(), id) {
            // Neither its positions nor the watermark its records made mean anything for the
            // stream now called so: start it as a new pump would.
            *self.watermark.lock() = None;
            return None;
        }
        self.resume.position(stream.name(), id, shard)
    }
}

/// Every shard of a stream, read from the start (or a pump's saved positions) and then followed
/// as records arrive, as one partition.
#[derive(Debug)]
pub struct StreamTail {
    stream: Arc<Stream>,
    cursor: Option<Arc<PumpCursor>>,
    /// Where every shard starts without a cursor position: the oldest record unless told.
    start: StartPosition,
}

impl StreamTail {
    pub fn new(stream: Arc<Stream>, cursor: Option<Arc<PumpCursor>>) -> Self {
        Self {
            stream,
            cursor,
            start: StartPosition::TrimHorizon,
        }
    }

    /// A subscription: every shard's records from `start` on (`Latest`, `TrimHorizon` or
    /// `AtTimestamp`; sequence numbers name one shard and are refused), endlessly.
    pub fn subscribe(
        stream: Arc<Stream>,
        start: StartPosition,
    ) -> sluice_engine::Result<SendableRecordBatchStream> {
        if matches!(
            start,
            StartPosition::AtSequenceNumber(_) | StartPosition::AfterSequenceNumber(_)
        ) {
            return Err(sluice_engine::Error::InvalidArgument(
                "a subscription starts every shard at the same place: LATEST, TRIM_HORIZON or a timestamp".to_string(),
            ));
        }
        let tail = Self {
            stream,
            cursor: None,
            start,
        };
        Ok(tail.execute(Arc::new(TaskContext::default())))
    }
}

struct TailState {
    /// The stream's name, as the cursor keys positions by it.
    name: String,
    reader: StreamReader,
    cursor: Option<Arc<PumpCursor>>,
    appends: tokio::sync::watch::Receiver<u64>,
    /// Batches read and not yet handed on, each with its shard and the position after it.
    pending: VecDeque<(RecordBatch, u32, u64)>,
}

impl TailState {
    /// Reads what is new from every shard into `pending`; false if there was nothing.
    fn read_more(&mut self) -> sluice_engine::Result<bool> {
        let reads = self.reader.read(READ_BATCH)?;
        let any = !reads.is_empty();
        if let Some(cursor) = &self.cursor {
            let name = &self.name;
            let rows: usize = reads
                .iter()
                .flat_map(|r| &r.batches)
                .map(|b| b.num_rows())
                .sum();
            cursor.rows_in.fetch_add(rows as u64, Ordering::Relaxed);
            // Shards a reshard opened start where the reader starts them; positions of shards
            // with records move as their batches are handed on (`next_batch`).
            let read = {
                let mut read = cursor.read.lock();
                for (shard, position) in self.reader.positions() {
                    read.entry((name.clone(), shard)).or_insert(position);
                }
                read.clone()
            };
            // `caught_up` is locked with `read` released: `PumpCursor::caught_up` takes them
            // the other way round.
            if !any {
                cursor.caught_up.lock().extend(read);
            }
        }
        for read in reads {
            for (batch, end) in read.batches.into_iter().zip(read.ends) {
                self.pending.push_back((batch, read.shard, end));
            }
        }
        Ok(any)
    }

    /// The next batch to hand on; the cursor moves past it (and no further), so a checkpoint
    /// taken when the pump writes what came of it resumes right after it.
    fn next_batch(&mut self) -> Option<RecordBatch> {
        let (batch, shard, end) = self.pending.pop_front()?;
        if let Some(cursor) = &self.cursor {
            cursor.read.lock().insert((self.name.clone(), shard), end);
        }
        Some(batch)
    }
}

impl PartitionStream for StreamTail {
    fn schema(&self) -> &SchemaRef {
        self.stream.public_schema()
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let schema = Arc::clone(self.stream.public_schema());
        let appends = self.stream.watch_appends();
        let name = self.stream.name().to_string();
        let reader = StreamReader::new(Arc::clone(&self.stream), |index| {
            match self
                .cursor
                .as_ref()
                .and_then(|c| c.start(&self.stream, index))
            {
                Some(seq) => StartPosition::AtSequenceNumber(
                    sluice_engine::sequence::format_sequence_number(index, seq),
                ),
                None => self.start.clone(),
            }
        });
        let format = self.stream.format();
        // KPL aggregates are taken apart: a continuous query sees each user record.
        let reader = reader.map(|r| r.deaggregating(format));
        let state = reader.map_err(to_datafusion).map(|reader| {
            if let Some(cursor) = &self.cursor {
                let mut read = cursor.read.lock();
                for (shard, position) in reader.positions() {
                    read.insert((name.clone(), shard), position);
                }
            }
            TailState {
                name: name.clone(),
                reader,
                cursor: self.cursor.clone(),
                appends,
                pending: VecDeque::new(),
            }
        });
        let batches = futures::stream::unfold(Some(state), |state| async move {
            let mut tail = match state? {
                Ok(tail) => tail,
                // Report a failure to start once, then end.
                Err(e) => return Some((Err(e), None)),
            };
            loop {
                if let Some(batch) = tail.next_batch() {
                    return Some((Ok(batch), Some(Ok(tail))));
                }
                // Mark the current append count seen *before* reading, so an append that lands
                // after the read still wakes us.
                tail.appends.borrow_and_update();
                if tail.reader.stream().is_dropped() {
                    let name = tail.reader.stream().name().to_string();
                    return Some((
                        Err(datafusion::error::DataFusionError::Execution(format!(
                            "stream '{name}' was dropped; nothing more will arrive in it"
                        ))),
                        None,
                    ));
                }
                match tail.read_more() {
                    Ok(true) => {}
                    Ok(false) => {
                        if tail.appends.changed().await.is_err() {
                            return None; // the stream is gone: nothing more will arrive
                        }
                    }
                    Err(e) => {
                        log::warn!(
                            "continuous read of stream '{}' failed: {e}",
                            tail.reader.stream().name()
                        );
                        return Some((Err(to_datafusion(e)), None));
                    }
                }
            }
        });
        Box::pin(RecordBatchStreamAdapter::new(schema, batches))
    }
}

/// The unbounded table a continuous query sees for a stream: one partition following every
/// shard, so the plan above it pulls one batch at a time.
#[derive(Debug)]
pub struct ContinuousTable {
    stream: Arc<Stream>,
    cursor: Option<Arc<PumpCursor>>,
    table: StreamingTable,
}

impl ContinuousTable {
    /// The cursor reading the stream, when a pump's.
    pub fn cursor(&self) -> Option<&Arc<PumpCursor>> {
        self.cursor.as_ref()
    }

    /// The stream followed.
    pub fn stream(&self) -> &Arc<Stream> {
        &self.stream
    }

    /// The stream's rows, endlessly, read through the table's cursor.
    pub fn rows(&self) -> SendableRecordBatchStream {
        StreamTail::new(Arc::clone(&self.stream), self.cursor.clone())
            .execute(Arc::new(TaskContext::default()))
    }
}

#[async_trait]
impl TableProvider for ContinuousTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(self.stream.public_schema())
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        self.table.scan(state, projection, filters, limit).await
    }
}

/// Every row of `stream`, endlessly, read through `cursor` (a feed's source).
pub(crate) fn follow(stream: Arc<Stream>, cursor: Arc<PumpCursor>) -> SendableRecordBatchStream {
    StreamTail::new(stream, Some(cursor)).execute(Arc::new(TaskContext::default()))
}

/// The unbounded table a continuous query sees for `stream`.
pub fn continuous_table(
    stream: Arc<Stream>,
    cursor: Option<Arc<PumpCursor>>,
) -> DFResult<Arc<dyn TableProvider>> {
    let schema = Arc::clone(stream.public_schema());
    let tail: Arc<dyn PartitionStream> =
        Arc::new(StreamTail::new(Arc::clone(&stream), cursor.clone()));
    let table = StreamingTable::try_new(schema, vec![tail])?.with_infinite_table(true);
    Ok(Arc::new(ContinuousTable {
        stream,
        cursor,
        table,
    }))
}
