//! Streams as DataFusion tables.
//!
//! A bounded `SELECT … FROM stream` scans a snapshot of every retained record: each shard is
//! one partition ([`SnapshotPartition`]) over the shard's chunks, each read (from the segment
//! cache or disk) only when the scan reaches it, so a query over a long stream holds a few
//! batches at a time rather than the stream. Batches are projected without copying (the derived
//! `_shard_id` and `_sequence_number` columns are built only when asked for).
//! `INSERT INTO stream …` plans through DataFusion (so casts and `INSERT … SELECT` just work) and
//! ends in [`StreamSink`], which turns rows back into records.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Int64Type, SchemaRef, TimeUnit};
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::{DataFusionError, Result as DFResult, exec_err, not_impl_err, plan_err};
use datafusion::datasource::sink::{DataSink, DataSinkExec};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::dml::InsertOp;
use datafusion::logical_expr::{Expr, TableType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::{PartitionStream, StreamingTableExec};
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan};
use futures::StreamExt;
use sluice_engine::schema::{
    DATA, PARTITION_KEY, ROWTIME, SEQUENCE_NUMBER, SHARD_ID, SUB_SEQUENCE_NUMBER,
};
use sluice_engine::{
    Chunk, PublicProjector, PutRecord, PutResult, RecordRef, Stream, StreamFormat,
};

use crate::error::to_datafusion;

/// A stream seen as a table.
#[derive(Debug)]
pub struct StreamTable {
    stream: Arc<Stream>,
}

impl StreamTable {
    pub fn new(stream: Arc<Stream>) -> Self {
        Self { stream }
    }
}

#[async_trait]
impl TableProvider for StreamTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(self.stream.public_schema())
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        let columns = projection.map(|p| p.as_slice());
        let schema = match columns {
            Some(columns) => Arc::new(self.stream.public_schema().project(columns)?),
            None => Arc::clone(self.stream.public_schema()),
        };
        // A cluster node's copy first takes in what other nodes acknowledged, so the query
        // sees every record acknowledged before it began.
        self.stream.catch_up().await;
        snapshot_scan(&self.stream, columns, None, schema, None)
    }

    async fn insert_into(
        &self,
        _state: &dyn Session,
        input: Arc<dyn ExecutionPlan>,
        insert_op: InsertOp,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        if insert_op != InsertOp::Append {
            return not_impl_err!(
                "streams are append-only: {insert_op} into stream '{}' is not possible; use INSERT INTO",
                self.stream.name()
            );
        }
        let sink = StreamSink::new(Arc::clone(&self.stream));
        Ok(Arc::new(DataSinkExec::new(input, Arc::new(sink), None)))
    }

    async fn delete_from(
        &self,
        _state: &dyn Session,
        _filters: Vec<Expr>,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        self.immutable("DELETE")
    }

    async fn update(
        &self,
        _state: &dyn Session,
        _assignments: Vec<(String, Expr)>,
        _filters: Vec<Expr>,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        self.immutable("UPDATE")
    }

    async fn truncate(&self, _state: &dyn Session) -> DFResult<Arc<dyn ExecutionPlan>> {
        self.immutable("TRUNCATE")
    }
}

impl StreamTable {
    fn immutable(&self, verb: &str) -> DFResult<Arc<dyn ExecutionPlan>> {
        plan_err!(
            "streams are immutable: {verb} on stream '{}' is not possible; records expire with the stream's retention ({} hours)",
            self.stream.name(),
            self.stream.retention_hours()
        )
    }
}

/// A function applied to every batch of a snapshot after projection.
pub(crate) type MapBatch = Arc<dyn Fn(&RecordBatch) -> DFResult<RecordBatch> + Send + Sync>;

/// A scan of every retained record of `stream`, one partition per shard: each batch in the
/// public layout with the `columns` given (indexes into the public schema; `None` for all),
/// then through `map` if given, giving batches of `schema`; the plan projects those to
/// `projection`. The chunks are fixed now; their records are read as the scan pulls them.
pub(crate) fn snapshot_scan(
    stream: &Stream,
    columns: Option<&[usize]>,
    map: Option<MapBatch>,
    schema: SchemaRef,
    projection: Option<&Vec<usize>>,
) -> DFResult<Arc<dyn ExecutionPlan>> {
    // KPL aggregates are taken apart: SQL sees each user record as its own row.
    let projector = Arc::new(
        PublicProjector::new(stream.user_schema(), columns)
            .map_err(to_datafusion)?
            .deaggregating(stream.format()),
    );
    let partitions = stream
        .snapshot()
        .map_err(to_datafusion)?
        .into_iter()
        .map(|(shard, chunks)| {
            Arc::new(SnapshotPartition {
                shard,
                chunks,
                projector: Arc::clone(&projector),
                schema: Arc::clone(&schema),
                map: map.clone(),
            }) as Arc<dyn PartitionStream>
        })
        .collect();
    Ok(Arc::new(StreamingTableExec::try_new(
        schema,
        partitions,
        projection,
        [],
        false,
        None,
    )?))
}

/// Hands every batch of a snapshot (public layout, all columns) to `f`, one at a time, reading
/// each chunk only when its turn comes; the first error stops the walk.
pub(crate) fn for_each_snapshot_batch(
    stream: &Stream,
    mut f: impl FnMut(&RecordBatch) -> DFResult<()>,
) -> DFResult<()> {
    let projector = PublicProjector::new(stream.user_schema(), None)
        .map_err(to_datafusion)?
        .deaggregating(stream.format());
    for (shard, chunks) in stream.snapshot().map_err(to_datafusion)? {
        for chunk in chunks {
            let batch = chunk.batch().map_err(to_datafusion)?;
            f(&projector.project(shard, &batch).map_err(to_datafusion)?)?;
        }
    }
    Ok(())
}

/// One shard of a snapshot as a partition of a scan: each chunk is read when the scan pulls
/// it — from memory if it is the tail or a cached segment, else from disk on a blocking thread.
pub(crate) struct SnapshotPartition {
    shard: u32,
    chunks: Vec<Chunk>,
    projector: Arc<PublicProjector>,
    schema: SchemaRef,
    map: Option<MapBatch>,
}

impl fmt::Debug for SnapshotPartition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SnapshotPartition")
            .field("shard", &self.shard)
            .field("chunks", &self.chunks.len())
            .finish()
    }
}

impl PartitionStream for SnapshotPartition {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let shard = self.shard;
        let projector = Arc::clone(&self.projector);
        let map = self.map.clone();
        let batches = futures::stream::iter(self.chunks.clone()).then(move |chunk| {
            let projector = Arc::clone(&projector);
            let map = map.clone();
            async move {
                let stored = match chunk.batch_in_memory() {
                    Some(batch) => batch,
                    None => tokio::task::spawn_blocking(move || chunk.batch())
                        .await
                        .map_err(|e| DataFusionError::External(Box::new(e)))?
                        .map_err(to_datafusion)?,
                };
                let batch = projector.project(shard, &stored).map_err(to_datafusion)?;
                match &map {
                    Some(map) => map(&batch),
                    None => Ok(batch),
                }
            }
        });
        Box::pin(RecordBatchStreamAdapter::new(
            Arc::clone(&self.schema),
            batches,
        ))
    }
}

/// Turns inserted rows into records: the user columns encoded in the stream's format become the
/// data blob (or `_data` is taken as given), and the partition key comes from `_partition_key`,
/// else the stream's `partition_key` column, else a fresh key that spreads rows over the shards.
#[derive(Debug)]
pub struct StreamSink {
    stream: Arc<Stream>,
    schema: SchemaRef,
    /// Rows may set `ROWTIME` (a pump writing windows at their end).
    rowtime_settable: bool,
}

static GENERATED_KEYS: AtomicU64 = AtomicU64::new(0);

impl StreamSink {
    pub fn new(stream: Arc<Stream>) -> Self {
        let schema = Arc::clone(stream.public_schema());
        Self {
            stream,
            schema,
            rowtime_settable: false,
        }
    }

    /// A sink whose rows may carry their `ROWTIME`: how a pump over windows gives each output
    /// row its window's end.
    pub fn with_settable_rowtime(mut self) -> Self {
        self.rowtime_settable = true;
        self
    }

    /// The records for one batch of inserted rows (public layout).
    pub(crate) fn records(&self, batch: &RecordBatch) -> DFResult<Appendable> {
        let name = self.stream.name();
        let n_user = self.stream.user_schema().fields().len();
        let rowtimes = match batch.column_by_name(ROWTIME) {
            Some(column) if self.rowtime_settable && column.null_count() < column.len() => Some(
                cast(
                    &cast(column, &DataType::Timestamp(TimeUnit::Millisecond, None))?,
                    &DataType::Int64,
                )?
                .as_primitive::<Int64Type>()
                .clone(),
            ),
            _ => None,
        };
        for system in [ROWTIME, SHARD_ID, SEQUENCE_NUMBER, SUB_SEQUENCE_NUMBER] {
            if system == ROWTIME && rowtimes.is_some() {
                continue;
            }
            if let Some(column) = batch.column_by_name(system)
                && column.null_count() != column.len()
            {
                return exec_err!(
                    "{system} is assigned by Sluice when a record arrives and cannot be inserted into stream '{name}'"
                );
            }
        }
        let rows = batch.num_rows();
        let data = batch
            .column_by_name(DATA)
            .map(|c| c.as_binary::<i32>().clone());
        let explicit_keys = batch
            .column_by_name(PARTITION_KEY)
            .map(|c| c.as_string::<i32>().clone());
        let key_column = match &self.stream.definition().partition_key {
            Some(column) => {
                let array = batch.column_by_name(column).ok_or_else(|| {
                    datafusion::error::DataFusionError::Execution(format!(
                        "partition key column '{column}' is missing from the insert into '{name}'"
                    ))
                })?;
                Some((column.clone(), cast(array, &DataType::Utf8)?))
            }
            None => None,
        };
        let user_columns = batch.project(&(0..n_user).collect::<Vec<_>>())?;
        let encoded = match self.stream.format() {
            StreamFormat::Raw => vec![None; rows],
            format => encode_rows(format, &user_columns)?
                .into_iter()
                .map(Some)
                .collect(),
        };
        // When every blob is encoded from the row's columns, the columns are the decoded
        // record: the engine keeps them instead of decoding the blobs again.
        let derived = self.stream.format() != StreamFormat::Raw
            && data.as_ref().is_none_or(|d| d.null_count() == d.len());
        let columns = if derived {
            Some(RecordBatch::try_new(
                Arc::clone(self.stream.user_schema()),
                user_columns.columns().to_vec(),
            )?)
        } else {
            None
        };
        let mut records = Vec::with_capacity(rows);
        for (row, encoded) in encoded.into_iter().enumerate() {
            let blob = match data.as_ref().filter(|d| d.is_valid(row)) {
                Some(d) => d.value(row).to_vec(),
                None => match encoded {
                    Some(bytes) => bytes,
                    None => {
                        return exec_err!(
                            "stream '{name}' has format 'raw': each inserted row needs a non-NULL _data value (row {row} has none)"
                        );
                    }
                },
            };
            let key = match (
                explicit_keys.as_ref().filter(|k| k.is_valid(row)),
                &key_column,
            ) {
                (Some(keys), _) => keys.value(row).to_string(),
                (None, Some((column, values))) => {
                    let values = values.as_string::<i32>();
                    if values.is_null(row) {
                        return exec_err!(
                            "row {row} has NULL in '{column}', the partition key column of stream '{name}'; a partition key is required"
                        );
                    }
                    values.value(row).to_string()
                }
                (None, None) => {
                    let n = GENERATED_KEYS.fetch_add(1, Ordering::Relaxed);
                    format!("{:016x}", n.wrapping_mul(0x9E37_79B9_7F4A_7C15))
                }
            };
            let mut record = PutRecord::new(key, blob);
            record.arrival_ms = rowtimes
                .as_ref()
                .filter(|t| t.is_valid(row))
                .map(|t| t.value(row));
            records.push(record);
        }
        Ok(Appendable { records, columns })
    }

    /// Appends one batch of rows (public layout; columns may be missing, system columns
    /// NULL), returning how many records were appended.
    pub async fn append_batch(&self, batch: &RecordBatch) -> DFResult<u64> {
        if batch.num_rows() == 0 {
            return Ok(0);
        }
        let rows = self.records(batch)?;
        let stream = Arc::clone(&self.stream);
        // Appending syncs the write-ahead log: keep it off the async workers.
        tokio::task::spawn_blocking(move || rows.append_to(&stream))
            .await
            .map_err(|e| datafusion::error::DataFusionError::External(Box::new(e)))?
            .map_err(to_datafusion)?;
        Ok(batch.num_rows() as u64)
    }
}

/// Rows ready to append: their records and, when each record's blob was encoded from the
/// row's columns, those columns.
pub(crate) struct Appendable {
    records: Vec<PutRecord>,
    columns: Option<RecordBatch>,
}

impl Appendable {
    pub(crate) fn len(&self) -> usize {
        self.records.len()
    }

    /// The records, encoded for the stream (for a writer that appends them elsewhere).
    pub(crate) fn into_records(self) -> Vec<PutRecord> {
        self.records
    }

    /// Appends the records to `stream` with `writer`'s commit in the same log frame.
    pub(crate) fn append_committing_to(
        &self,
        stream: &Stream,
        writer: &str,
        commit: &[u8],
    ) -> sluice_engine::Result<Vec<PutResult>> {
        let refs: Vec<RecordRef<'_>> = self.records.iter().map(RecordRef::from).collect();
        stream.append_committing(&refs, self.columns.as_ref(), writer, commit)
    }

    /// Appends the records to `stream`, all or none.
    pub(crate) fn append_to(&self, stream: &Stream) -> sluice_engine::Result<Vec<PutResult>> {
        match &self.columns {
            Some(columns) => {
                let refs: Vec<RecordRef<'_>> = self.records.iter().map(RecordRef::from).collect();
                stream.append_decoded(&refs, columns)
            }
            None => stream.append(&self.records),
        }
    }
}

/// Encodes each row of `batch` (the user columns) as one record in `format`.
pub(crate) fn encode_rows(format: StreamFormat, batch: &RecordBatch) -> DFResult<Vec<Vec<u8>>> {
    match format {
        StreamFormat::Json => {
            let mut buffer = Vec::new();
            {
                let mut writer = arrow_json::LineDelimitedWriter::new(&mut buffer);
                writer.write(batch)?;
                writer.finish()?;
            }
            // JSON escapes newlines inside strings, so every line is one row.
            let mut rows: Vec<Vec<u8>> = buffer
                .split(|b| *b == b'\n')
                .map(|line| line.to_vec())
                .collect();
            rows.truncate(batch.num_rows());
            Ok(rows)
        }
        StreamFormat::Csv => (0..batch.num_rows())
            .map(|row| {
                let mut buffer = Vec::new();
                {
                    let mut writer = arrow_csv::WriterBuilder::new()
                        .with_header(false)
                        .build(&mut buffer);
                    writer.write(&batch.slice(row, 1))?;
                }
                if buffer.last() == Some(&b'\n') {
                    buffer.pop();
                }
                Ok(buffer)
            })
            .collect(),
        StreamFormat::Raw => Ok(vec![Vec::new(); batch.num_rows()]),
    }
}

impl DisplayAs for StreamSink {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StreamSink: stream={}", self.stream.name())
    }
}

#[async_trait]
impl DataSink for StreamSink {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    async fn write_all(
        &self,
        mut data: SendableRecordBatchStream,
        _context: &Arc<TaskContext>,
    ) -> DFResult<u64> {
        let mut count = 0u64;
        while let Some(batch) = data.next().await {
            count += self.append_batch(&batch?).await?;
        }
        Ok(count)
    }
}
