//! Windows in `FROM`: `tumble(stream, time_column, size [, offset])`,
//! `hop(stream, time_column, slide, size [, offset])`,
//! `cumulate(stream, time_column, step, size [, offset])` and
//! `session(stream, [key, …,] time_column, gap)`.
//!
//! The table functions turn a stream into the same rows plus `window_start` and `window_end`:
//! the bounds of the fixed-size window (aligned to the epoch, shifted by the offset) that each
//! row's time falls in — for hopping windows, one copy of the row per window holding it; for
//! cumulating windows (Flink's `CUMULATE`), windows that share a start aligned to the size and
//! end a step, two steps, … later, up to the size, one copy of the row per window holding it. In a bounded query that is all there is to it. In a continuous query an
//! aggregate grouped by the window runs in [`crate::window_runtime`], which holds each window's
//! rows until the watermark passes its end.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{Array, ArrayRef, Int64Array, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::catalog::streaming::StreamingTable;
use datafusion::catalog::{Session, TableFunctionArgs, TableFunctionImpl, TableProvider};
use datafusion::common::{Result as DFResult, ScalarValue, plan_err};
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::{Expr, TableType};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::PartitionStream;
use futures::StreamExt;
use sluice_engine::schema::ROWTIME;
use sluice_engine::{Clock, Engine, Stream};

use crate::continuous::{PumpCursor, StreamTail};
use crate::create_stream::literal_interval_millis;
use crate::schema_provider::StreamView;
use crate::session_window::Sessions;
use crate::table::{MapBatch, for_each_snapshot_batch, snapshot_scan};

/// The window columns every windowed row gets.
pub const WINDOW_START: &str = "window_start";
pub const WINDOW_END: &str = "window_end";

/// A tumbling window over one time column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TumbleSpec {
    /// The time column's name and position in the stream's public schema.
    pub time_column: String,
    pub time_index: usize,
    /// The time column's unit; sizes below are in it.
    pub unit: TimeUnit,
    pub timezone: Option<Arc<str>>,
    pub size: i64,
    /// How far apart windows start: the size for tumbling windows, less for hopping ones.
    pub slide: i64,
    pub offset: i64,
    /// How far the watermark trails the newest time seen, in the column's unit (the stream's
    /// `WATERMARK FOR` delay when it is declared on this column, else 0).
    pub delay: i64,
    /// How long past its end a window stays open for late rows, in the column's unit (the
    /// stream's `allowed_lateness` when its watermark is on this column, else 0).
    pub lateness: i64,
    /// How long a shard read to its end keeps holding the watermark back, in milliseconds of
    /// processing time (the stream's `idle_timeout`; 0 lets it go at once).
    pub idle_timeout_ms: i64,
    /// Session windows: the key columns' positions in the public schema (sessions are per
    /// key; empty for one session across the stream). `size` is then the gap.
    pub session_keys: Option<Vec<usize>>,
    /// Stagger windows (Kinesis Data Analytics' `WINDOWED BY STAGGER`): like sessions, per key,
    /// but each window lasts `size` from the row that opened it. Their keys may be expressions
    /// (`FLOOR(EVENT_TIME TO MINUTE)`), evaluated over the public schema.
    pub stagger_keys: Option<Vec<KeyExpr>>,
    /// The windows follow processing time: the time column is `ROWTIME`, so windows close as
    /// the clock passes their end rather than as rows arrive.
    pub processing_time: bool,
    /// Cumulating windows: they start every `size` and end every `slide` (the step) after
    /// their start, up to `size`.
    pub cumulate: bool,
}

impl TumbleSpec {
    /// The start of the last window holding time `t` (the only one, for tumbling windows).
    pub fn start_of(&self, t: i64) -> i64 {
        let every = if self.cumulate { self.size } else { self.slide };
        (t - self.offset).div_euclid(every) * every + self.offset
    }

    /// How many windows hold each time.
    pub fn windows_per_row(&self) -> i64 {
        self.size / self.slide
    }

    /// Converts milliseconds to the time column's unit.
    pub fn from_millis(&self, ms: i64) -> i64 {
        let (mul, div) = units_per_milli(self.unit);
        ms * mul / div
    }

    /// How this window's watermark follows its time column.
    pub fn watermark_rule(&self) -> crate::watermark::WatermarkRule {
        crate::watermark::WatermarkRule {
            delay: self.delay,
            idle_timeout_ms: self.idle_timeout_ms,
            processing_time: self.processing_time,
            unit: self.unit,
        }
    }

    /// Converts a time in the column's unit to milliseconds.
    pub fn to_millis(&self, t: i64) -> i64 {
        let (mul, div) = units_per_milli(self.unit);
        t * div / mul
    }
}

pub(crate) fn units_per_milli(unit: TimeUnit) -> (i64, i64) {
    // (multiply, divide) to go from milliseconds to `unit`.
    match unit {
        TimeUnit::Second => (1, 1000),
        TimeUnit::Millisecond => (1, 1),
        TimeUnit::Microsecond => (1000, 1),
        TimeUnit::Nanosecond => (1_000_000, 1),
    }
}

/// A window key computed from each row (told apart by how it prints).
#[derive(Debug, Clone)]
pub struct KeyExpr(pub Arc<dyn datafusion::physical_plan::PhysicalExpr>);

impl PartialEq for KeyExpr {
    fn eq(&self, other: &Self) -> bool {
        self.0.to_string() == other.0.to_string()
    }
}

impl Eq for KeyExpr {}

/// Which window table function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowKind {
    /// `tumble(stream, time, size [, offset])`
    Tumble,
    /// `hop(stream, time, slide, size [, offset])`
    Hop,
    /// `session(stream, [key, …,] time, gap)`
    Session,
    /// `stagger(stream, [key, …,] time, range)`: what `WINDOWED BY STAGGER (PARTITION BY key, …
    /// RANGE range)` becomes.
    Stagger,
    /// `cumulate(stream, time, step, size [, offset])`: Flink's `CUMULATE`.
    Cumulate,
}

/// The `tumble` and `hop` table functions. One instance per planning context, so it knows
/// whether streams are snapshots or endless, and which pump cursor (if any) reads them.
#[derive(Debug)]
pub struct TumbleFunction {
    engine: Engine,
    view: StreamView,
    cursor: Option<Arc<PumpCursor>>,
    kind: WindowKind,
}

impl TumbleFunction {
    pub fn new(engine: Engine, view: StreamView, cursor: Option<Arc<PumpCursor>>) -> Self {
        Self {
            engine,
            view,
            cursor,
            kind: WindowKind::Tumble,
        }
    }

    /// The same function as `hop`.
    pub fn hopping(mut self) -> Self {
        self.kind = WindowKind::Hop;
        self
    }

    /// The same function as `session`.
    pub fn sessions(mut self) -> Self {
        self.kind = WindowKind::Session;
        self
    }

    /// The same function as `cumulate`.
    pub fn cumulating(mut self) -> Self {
        self.kind = WindowKind::Cumulate;
        self
    }

    /// The same function as `stagger`.
    pub fn staggered(mut self) -> Self {
        self.kind = WindowKind::Stagger;
        self
    }
}

fn name_of(expr: &Expr) -> Option<String> {
    match expr {
        Expr::Column(column) => Some(column.name.clone()),
        Expr::Literal(ScalarValue::Utf8(Some(name)), _) => Some(name.clone()),
        _ => None,
    }
}

impl TableFunctionImpl for TumbleFunction {
    fn call_with_args(&self, args: TableFunctionArgs) -> DFResult<Arc<dyn TableProvider>> {
        let exprs = args.exprs();
        let (f, shape) = match self.kind {
            WindowKind::Tumble => (
                "tumble",
                "(stream, time_column, size [, offset]), e.g. tumble(clicks, ts, INTERVAL '1' MINUTE)",
            ),
            WindowKind::Hop => (
                "hop",
                "(stream, time_column, slide, size [, offset]), e.g. hop(clicks, ts, INTERVAL '1' MINUTE, INTERVAL '5' MINUTE)",
            ),
            WindowKind::Session => (
                "session",
                "(stream, [key_column, …,] time_column, gap), e.g. session(clicks, user_id, ts, INTERVAL '30' MINUTE)",
            ),
            WindowKind::Cumulate => (
                "cumulate",
                "(stream, time_column, step, size [, offset]), e.g. cumulate(bids, bidtime, INTERVAL '2' MINUTE, INTERVAL '10' MINUTE)",
            ),
            WindowKind::Stagger => (
                "stagger",
                "(stream, [key, …,] time_column, range), e.g. WINDOWED BY STAGGER (PARTITION BY ticker_symbol RANGE INTERVAL '1' MINUTE)",
            ),
        };
        let arity_ok = match self.kind {
            WindowKind::Tumble => (3..=4).contains(&exprs.len()),
            WindowKind::Hop | WindowKind::Cumulate => (4..=5).contains(&exprs.len()),
            WindowKind::Session | WindowKind::Stagger => exprs.len() >= 3,
        };
        if !arity_ok {
            return plan_err!("{f} takes {shape}; got {} arguments", exprs.len());
        }
        let Some(stream_name) = name_of(&exprs[0]) else {
            return plan_err!("{f}'s first argument must name a stream, not {}", exprs[0]);
        };
        let Some(stream) = self.engine.try_stream(&stream_name) else {
            return plan_err!(
                "{f}: stream '{stream_name}' does not exist; SHOW STREAMS lists the streams"
            );
        };
        let schema = stream.public_schema();
        let column_index = |what: &str, expr: &Expr| -> DFResult<(String, usize)> {
            let Some(column) = name_of(expr) else {
                return plan_err!("{f}'s {what} must be a column of '{stream_name}', not {expr}");
            };
            match schema.index_of(&column) {
                Ok(index) => Ok((column, index)),
                Err(_) => plan_err!("{f}: stream '{stream_name}' has no column '{column}'"),
            }
        };
        let time_at = match self.kind {
            WindowKind::Session | WindowKind::Stagger => exprs.len() - 2,
            _ => 1,
        };
        let (column, time_index) = column_index("time column", &exprs[time_at])?;
        let DataType::Timestamp(unit, timezone) = schema.field(time_index).data_type().clone()
        else {
            return plan_err!(
                "{f}'s time column must be a TIMESTAMP; '{column}' of '{stream_name}' is {}",
                schema.field(time_index).data_type()
            );
        };
        let (mul, div) = units_per_milli(unit);
        let to_unit = |what: &str, expr: &Expr| -> DFResult<i64> {
            let Some(ms) = literal_interval_millis(expr) else {
                return plan_err!(
                    "{f}'s {what} must be an interval such as INTERVAL '1' MINUTE, not {expr}"
                );
            };
            if ms % div != 0 {
                return plan_err!("{f}'s {what} must be whole seconds for a seconds column");
            }
            Ok(ms * mul / div)
        };
        let (size_at, what) = match self.kind {
            WindowKind::Tumble => (2, "window size"),
            WindowKind::Hop => (3, "window size"),
            WindowKind::Cumulate => (3, "maximum window size"),
            WindowKind::Session => (exprs.len() - 1, "gap"),
            WindowKind::Stagger => (exprs.len() - 1, "range"),
        };
        let size = to_unit(what, &exprs[size_at])?;
        if size <= 0 {
            return plan_err!("{f}'s {what} must be positive, not {}", exprs[size_at]);
        }
        let slide = match self.kind {
            WindowKind::Tumble | WindowKind::Session | WindowKind::Stagger => size,
            WindowKind::Hop | WindowKind::Cumulate => {
                let step = if self.kind == WindowKind::Hop {
                    "slide"
                } else {
                    "step"
                };
                let slide = to_unit(step, &exprs[2])?;
                if slide <= 0 {
                    return plan_err!("{f}'s {step} must be positive, not {}", exprs[2]);
                }
                if size % slide != 0 {
                    let seconds =
                        |e: &Expr| literal_interval_millis(e).unwrap_or(0) as f64 / 1000.0;
                    return plan_err!(
                        "{f}'s {step} ({} s) must divide its {what} ({} s) evenly",
                        seconds(&exprs[2]),
                        seconds(&exprs[3])
                    );
                }
                slide
            }
        };
        let offset = match (self.kind, exprs.get(size_at + 1)) {
            (WindowKind::Session | WindowKind::Stagger, _) | (_, None) => 0,
            (_, Some(expr)) => to_unit("offset", expr)?,
        };
        let cumulate = self.kind == WindowKind::Cumulate;
        // Cumulating windows start every size; the others every slide.
        if offset < 0 || offset >= if cumulate { size } else { slide } {
            return plan_err!(
                "{f}'s offset must be at least zero and less than the {}",
                if cumulate { "window size" } else { "slide" }
            );
        }
        let session_keys = match self.kind {
            WindowKind::Session => Some(
                exprs[1..time_at]
                    .iter()
                    .map(|e| column_index("key", e).map(|(_, i)| i))
                    .collect::<DFResult<Vec<_>>>()?,
            ),
            WindowKind::Stagger => Some(vec![]),
            _ => None,
        };
        let stagger_keys = match self.kind {
            WindowKind::Stagger => {
                let df_schema = datafusion::common::DFSchema::try_from_qualified_schema(
                    stream_name.as_str(),
                    schema,
                )?;
                // Each key is SQL text over the stream's columns (or a column), planned, coerced
                // and simplified as any query's expressions are.
                let planner = datafusion::prelude::SessionContext::new();
                let mut keys = Vec::new();
                for key in &exprs[1..time_at] {
                    let logical = match key {
                        Expr::Literal(ScalarValue::Utf8(Some(sql)), _) => {
                            planner.parse_sql_expr(sql, &df_schema)?
                        }
                        other => other.clone(),
                    };
                    keys.push(KeyExpr(planner.create_physical_expr(logical, &df_schema)?));
                }
                Some(keys)
            }
            _ => None,
        };
        let watermark = stream.definition().watermark.clone();
        let (delay, lateness, idle_timeout_ms) = match &watermark {
            Some(w) if w.column == column => (
                w.delay_ms * mul / div,
                w.allowed_lateness_ms * mul / div,
                w.idle_timeout_ms,
            ),
            Some(w) => (0, 0, w.idle_timeout_ms),
            None => (0, 0, 0),
        };
        // Over `ROWTIME`, a record reaching this copy of the stream late (a cluster node takes
        // other nodes' records in as it follows them) still finds its window open.
        let lateness = if column == ROWTIME {
            lateness.max(stream.arrival_lag_ms() * mul / div)
        } else {
            lateness
        };
        let spec = TumbleSpec {
            processing_time: column == ROWTIME,
            time_column: column,
            time_index,
            unit,
            timezone,
            size,
            slide,
            offset,
            delay,
            lateness,
            idle_timeout_ms,
            session_keys,
            stagger_keys,
            cumulate,
        };
        Ok(Arc::new(WindowedTable::new(
            stream,
            spec,
            self.view,
            self.cursor.clone(),
            Arc::clone(self.engine.clock()),
        )))
    }
}

/// A stream with each row's tumbling window added.
#[derive(Debug)]
pub struct WindowedTable {
    stream: Arc<Stream>,
    spec: TumbleSpec,
    schema: SchemaRef,
    view: StreamView,
    cursor: Option<Arc<PumpCursor>>,
    clock: Arc<dyn Clock>,
}

impl WindowedTable {
    fn new(
        stream: Arc<Stream>,
        spec: TumbleSpec,
        view: StreamView,
        cursor: Option<Arc<PumpCursor>>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let time_type = DataType::Timestamp(spec.unit, spec.timezone.clone());
        let mut fields: Vec<Field> = stream
            .public_schema()
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        fields.push(Field::new(WINDOW_START, time_type.clone(), true));
        fields.push(Field::new(WINDOW_END, time_type, true));
        Self {
            stream,
            spec,
            schema: Arc::new(Schema::new(fields)),
            view,
            cursor,
            clock,
        }
    }

    /// The engine's clock: processing time.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// The window.
    pub fn spec(&self) -> &TumbleSpec {
        &self.spec
    }

    /// The windowed rows' schema.
    pub fn schema_ref(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    /// The pump cursor reading through this table, if any.
    pub fn cursor(&self) -> Option<Arc<PumpCursor>> {
        self.cursor.clone()
    }

    /// The windowed stream's name.
    pub fn stream_name(&self) -> &str {
        self.stream.name()
    }

    /// The windowed stream.
    pub fn stream(&self) -> &Arc<Stream> {
        &self.stream
    }

    /// The stream's rows, endlessly, as a windowed aggregate consumes them: with their fixed
    /// windows added, or as they are for session windows (whose bounds come later).
    pub fn continuous_rows(&self) -> SendableRecordBatchStream {
        if self.spec.session_keys.is_some() {
            return StreamTail::new(Arc::clone(&self.stream), self.cursor.clone())
                .execute(Arc::new(TaskContext::default()));
        }
        windowed_tail(
            &self.stream,
            self.cursor.clone(),
            &self.spec,
            &self.schema,
            Arc::new(TaskContext::default()),
        )
    }
}

/// The stream followed endlessly, each batch with its windows added.
fn windowed_tail(
    stream: &Arc<Stream>,
    cursor: Option<Arc<PumpCursor>>,
    spec: &TumbleSpec,
    schema: &SchemaRef,
    ctx: Arc<TaskContext>,
) -> SendableRecordBatchStream {
    let rows = StreamTail::new(Arc::clone(stream), cursor).execute(ctx);
    let spec = spec.clone();
    let out_schema = Arc::clone(schema);
    let schema = Arc::clone(schema);
    let windowed =
        rows.map(move |batch| batch.and_then(|b| add_window_columns(&b, &spec, &schema)));
    Box::pin(RecordBatchStreamAdapter::new(out_schema, windowed))
}

/// Appends `window_start` and `window_end` to a public-layout batch.
pub fn add_window_columns(
    batch: &RecordBatch,
    spec: &TumbleSpec,
    schema: &SchemaRef,
) -> DFResult<RecordBatch> {
    let times = cast(batch.column(spec.time_index), &DataType::Int64)?;
    let times = times
        .as_any()
        .downcast_ref::<Int64Array>()
        .ok_or_else(|| datafusion::error::DataFusionError::Internal("time column cast".into()))?;
    let time_type = DataType::Timestamp(spec.unit, spec.timezone.clone());
    let per_row = spec.windows_per_row();
    let (rows, starts, ends): (RecordBatch, Int64Array, Int64Array) =
        if per_row == 1 && !spec.cumulate {
            let starts: Int64Array = times.iter().map(|t| t.map(|t| spec.start_of(t))).collect();
            let ends = starts.iter().map(|s| s.map(|s| s + spec.size)).collect();
            (batch.clone(), starts, ends)
        } else {
            // Hopping and cumulating windows: each row once per window holding it.
            let mut indices = Vec::with_capacity(batch.num_rows() * per_row as usize);
            let mut starts = Vec::with_capacity(indices.capacity());
            let mut ends = Vec::with_capacity(indices.capacity());
            for (row, time) in times.iter().enumerate() {
                let Some(time) = time else {
                    indices.push(row as u32);
                    starts.push(None);
                    ends.push(None);
                    continue;
                };
                let last = spec.start_of(time);
                if spec.cumulate {
                    // Windows [last, last + k·step) for every k whose window holds the time.
                    let first = (time - last).div_euclid(spec.slide) + 1;
                    for k in first..=per_row {
                        indices.push(row as u32);
                        starts.push(Some(last));
                        ends.push(Some(last + k * spec.slide));
                    }
                } else {
                    for k in (0..per_row).rev() {
                        indices.push(row as u32);
                        starts.push(Some(last - k * spec.slide));
                        ends.push(Some(last - k * spec.slide + spec.size));
                    }
                }
            }
            let rows = datafusion::arrow::compute::take_record_batch(
                batch,
                &datafusion::arrow::array::UInt32Array::from(indices),
            )?;
            (
                rows,
                starts.into_iter().collect(),
                ends.into_iter().collect(),
            )
        };
    let mut columns: Vec<ArrayRef> = rows.columns().to_vec();
    columns.push(cast(&starts, &time_type)?);
    columns.push(cast(&ends, &time_type)?);
    Ok(RecordBatch::try_new(Arc::clone(schema), columns)?)
}

#[derive(Debug)]
struct WindowedTail {
    table_schema: SchemaRef,
    stream: Arc<Stream>,
    spec: TumbleSpec,
    cursor: Option<Arc<PumpCursor>>,
}

impl PartitionStream for WindowedTail {
    fn schema(&self) -> &SchemaRef {
        &self.table_schema
    }

    fn execute(&self, ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        windowed_tail(
            &self.stream,
            self.cursor.clone(),
            &self.spec,
            &self.table_schema,
            ctx,
        )
    }
}

#[async_trait]
impl TableProvider for WindowedTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
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
        match self.view {
            StreamView::Bounded if self.spec.session_keys.is_some() => {
                // Sessions span shards: gather every retained row, then close every session.
                let public = Arc::clone(self.stream.public_schema());
                let mut sessions = Sessions::new(&self.spec, &public, Arc::clone(&self.schema))?;
                for_each_snapshot_batch(&self.stream, |batch| {
                    sessions.accept(batch, None, &|_| None).map(|_| ())
                })?;
                let rows = sessions.close(None)?.into_iter().collect::<Vec<_>>();
                Ok(MemorySourceConfig::try_new_exec(
                    &[rows],
                    Arc::clone(&self.schema),
                    projection.cloned(),
                )?)
            }
            StreamView::Continuous if self.spec.session_keys.is_some() => plan_err!(
                "session windows in a continuous query need an aggregate grouped by window_start or window_end"
            ),
            StreamView::Bounded => {
                let (spec, schema) = (self.spec.clone(), Arc::clone(&self.schema));
                let add_windows: MapBatch =
                    Arc::new(move |b: &RecordBatch| add_window_columns(b, &spec, &schema));
                snapshot_scan(
                    &self.stream,
                    None,
                    Some(add_windows),
                    Arc::clone(&self.schema),
                    projection,
                )
            }
            StreamView::Continuous => {
                let tail: Arc<dyn PartitionStream> = Arc::new(WindowedTail {
                    table_schema: Arc::clone(&self.schema),
                    stream: Arc::clone(&self.stream),
                    spec: self.spec.clone(),
                    cursor: self.cursor.clone(),
                });
                let table = StreamingTable::try_new(Arc::clone(&self.schema), vec![tail])?
                    .with_infinite_table(true);
                table.scan(state, projection, filters, limit).await
            }
        }
    }
}
