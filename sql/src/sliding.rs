//! Sliding windows: Kinesis Data Analytics' `OVER` windows on a stream.
//!
//! ```sql
//! SELECT STREAM ticker_symbol, AVG(price) OVER W1 AS avg_price
//! FROM "SOURCE_SQL_STREAM_001"
//! WINDOW W1 AS (PARTITION BY ticker_symbol RANGE INTERVAL '1' MINUTE PRECEDING);
//! ```
//!
//! Each row that arrives gives one output row at once, aggregating the rows of its window: those
//! of its partition within the range before it (`RANGE INTERVAL … PRECEDING`, over `ROWTIME`) or
//! the rows before it (`ROWS n PRECEDING`). KDA writes no `ORDER BY` in these windows: they are
//! ordered by `ROWTIME`, which [`order_windows_by_rowtime`] adds before planning.
//!
//! Rows that arrive in the same instant are taken in arrival order: a row's window holds the
//! rows before it, never those after it (SQL's peers would).
//!
//! Two ways to run one, chosen at planning: when every window function is `COUNT`, `SUM`,
//! `AVG`, `MIN` or `MAX`, [`SlidingState`] computes them row by row between the plan below
//! the windows and the plan above them (a row costs the same however wide its window).
//! Otherwise (`LAG`, `FIRST_VALUE`, …) the query runs as its own DataFusion plan
//! ([`BatchExec`]) over the rows still inside some window plus each new batch; the plan carries
//! every row's sequence number to its output, so only the new rows' results are handed on.
//! Either way what is kept is bounded by the windows: the last range of `ROWTIME`, and the last
//! `n` rows of each partition.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, AsArray, BooleanArray, RecordBatch, TimestampMillisecondArray,
};
use datafusion::arrow::compute::{cast, concat_batches, filter_record_batch};
use datafusion::arrow::datatypes::{SchemaRef, TimestampMillisecondType};
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::catalog::TableProvider;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{Column, Result as DFResult, ScalarValue, plan_err};
use datafusion::execution::SendableRecordBatchStream;
use datafusion::logical_expr::expr::WindowFunction;
use datafusion::logical_expr::{
    Expr, FetchType, LogicalPlan, Projection, SkipType, WindowFrameBound, WindowFrameUnits,
};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::prelude::SessionContext;
use datafusion::sql::parser::Statement as DFStatement;
use datafusion::sql::sqlparser::ast::{
    self as sql, NamedWindowExpr, OrderByExpr, OrderByOptions, Query, SetExpr, VisitMut, VisitorMut,
};
use futures::StreamExt;
use sluice_engine::schema::{ROWTIME, SEQUENCE_NUMBER};

use crate::batch_exec::{BatchExec, scans_of};
use crate::continuous::ContinuousTable;
use crate::sliding_state::SlidingState;

/// The column the plan carries each output row's sequence number in.
const CARRIED: &str = "__sluice_sequence_number";

/// Gives every window with a frame (`RANGE …`/`ROWS …`) but no `ORDER BY` the order Kinesis
/// Data Analytics gives it: `ORDER BY ROWTIME`.
pub fn order_windows_by_rowtime(statement: &mut DFStatement) {
    struct Orderer;
    fn order(spec: &mut sql::WindowSpec) {
        if spec.order_by.is_empty() && spec.window_frame.is_some() {
            spec.order_by.push(OrderByExpr {
                expr: sql::Expr::Identifier(sql::Ident::new(ROWTIME)),
                options: OrderByOptions {
                    asc: None,
                    nulls_first: None,
                },
                with_fill: None,
            });
        }
    }
    impl VisitorMut for Orderer {
        type Break = ();
        fn pre_visit_query(&mut self, query: &mut Query) -> ControlFlow<()> {
            if let SetExpr::Select(select) = query.body.as_mut() {
                for window in &mut select.named_window {
                    if let NamedWindowExpr::WindowSpec(spec) = &mut window.1 {
                        order(spec);
                    }
                }
            }
            ControlFlow::Continue(())
        }
        fn pre_visit_expr(&mut self, expr: &mut sql::Expr) -> ControlFlow<()> {
            if let sql::Expr::Function(f) = expr
                && let Some(sql::WindowType::WindowSpec(spec)) = &mut f.over
            {
                order(spec);
            }
            ControlFlow::Continue(())
        }
    }
    if let DFStatement::Statement(inner) = statement {
        let _ = inner.visit(&mut Orderer);
    }
}

/// What the windows of a query need kept between batches.
#[derive(Debug, Default, Clone, PartialEq)]
struct Retention {
    /// The longest `RANGE … PRECEDING` over `ROWTIME`, in milliseconds.
    range_ms: Option<i64>,
    /// For each `ROWS n PRECEDING` window: its partition columns and n.
    rows: Vec<(Vec<String>, usize)>,
    /// For each `RANGE` window, its partition columns: rows of a partition with the same
    /// `ROWTIME` are peers, and a row's window must not hold the peers that came after it.
    range_partitions: Vec<Vec<String>>,
}

/// A continuous query with sliding windows (`OVER`), as the streaming planner decided it: the
/// plan (without a LIMIT over the whole query, applied to the output), the stream it reads,
/// and how long its windows reach back.
#[derive(Debug)]
pub struct SlidingQuery {
    plan: LogicalPlan,
    remaining: Option<usize>,
    provider: Arc<dyn TableProvider>,
    retention: Retention,
}

impl SlidingQuery {
    /// The sliding-window query `plan` is, if it has `OVER` windows: `Ok(None)` when it has
    /// none. Refuses what cannot slide: more than one stream, unbounded or `FOLLOWING` frames.
    pub fn decide(plan: &LogicalPlan) -> DFResult<Option<Self>> {
        let mut windows = Vec::new();
        plan.apply(|node| {
            if let LogicalPlan::Window(window) = node {
                windows.extend(window.window_expr.iter().cloned());
            }
            Ok(TreeNodeRecursion::Continue)
        })?;
        if windows.is_empty() {
            return Ok(None);
        }
        let scans = scans_of::<ContinuousTable>(plan)?;
        let [provider] = scans.as_slice() else {
            return plan_err!(
                "a sliding window (OVER …) in a continuous query reads one stream; join or union the streams in a pump into one stream first"
            );
        };
        if provider.downcast_ref::<ContinuousTable>().is_none() {
            return Ok(None);
        }
        let retention = retention_of(&windows)?;
        let (plan, remaining) = match plan {
            LogicalPlan::Limit(limit) => match (limit.get_skip_type()?, limit.get_fetch_type()?) {
                (SkipType::Literal(0), FetchType::Literal(fetch)) => {
                    (limit.input.as_ref().clone(), fetch)
                }
                _ => return plan_err!("a sliding-window query takes LIMIT n without OFFSET"),
            },
            other => (other.clone(), None),
        };
        Ok(Some(Self {
            plan,
            remaining,
            provider: Arc::clone(provider),
            retention,
        }))
    }

    /// The windows, for people: how far back they reach.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(ms) = self.retention.range_ms {
            parts.push(format!("RANGE windows over the last {ms} ms of ROWTIME"));
        }
        for (partition, n) in &self.retention.rows {
            let by = if partition.is_empty() {
                String::new()
            } else {
                format!(" per {}", partition.join(", "))
            };
            parts.push(format!("the last {n} rows{by}"));
        }
        if parts.is_empty() {
            "one row out per row in".to_string()
        } else {
            format!("one row out per row in, over {}", parts.join(" and "))
        }
    }

    /// Starts the query: one output row per input row, as each arrives.
    pub async fn start(self, context: &SessionContext) -> DFResult<SendableRecordBatchStream> {
        let Self {
            plan,
            mut remaining,
            provider,
            retention,
        } = self;
        let provider = &provider;
        let Some(table) = provider.downcast_ref::<ContinuousTable>() else {
            return plan_err!("a sliding-window query reads a stream");
        };
        let stream = Arc::clone(table.stream());
        let public = Arc::clone(stream.public_schema());
        let mut processor = match Incremental::plan(context, &plan, provider, &public).await? {
            Some(incremental) => Processor::Incremental(incremental),
            None => {
                Processor::Rerun(Rerun::plan(context, plan, provider, &public, retention).await?)
            }
        };
        let output_schema = processor.schema();
        let mut input = table.rows();
        let rows = async_stream(move |emit| async move {
            while let Some(batch) = input.next().await {
                for mut result in processor.process(batch?).await? {
                    if let Some(left) = remaining.as_mut() {
                        if *left == 0 {
                            return Ok(());
                        }
                        if result.num_rows() > *left {
                            result = result.slice(0, *left);
                        }
                        *left -= result.num_rows();
                    }
                    emit.send(Ok(result)).await;
                }
                if remaining == Some(0) {
                    return Ok(());
                }
            }
            Ok(())
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(output_schema, rows)))
    }
}

/// How a sliding-window query turns each new batch into its output rows.
enum Processor {
    Incremental(Incremental),
    Rerun(Rerun),
}

impl Processor {
    fn schema(&self) -> SchemaRef {
        match self {
            Self::Incremental(p) => p.above.schema(),
            Self::Rerun(p) => Arc::clone(&p.schema),
        }
    }

    async fn process(&mut self, batch: RecordBatch) -> DFResult<Vec<RecordBatch>> {
        match self {
            Self::Incremental(p) => p.process(batch).await,
            Self::Rerun(p) => p.process(batch).await,
        }
    }
}

/// The fast path: the plan below the windows runs on each batch, [`SlidingState`] adds the
/// window columns row by row, and the plan above them runs on the result.
struct Incremental {
    below: BatchExec,
    state: SlidingState,
    above: BatchExec,
}

impl Incremental {
    async fn plan(
        context: &SessionContext,
        plan: &LogicalPlan,
        provider: &Arc<dyn datafusion::catalog::TableProvider>,
        public: &SchemaRef,
    ) -> DFResult<Option<Self>> {
        // The windows: one node, or a chain of them (one per distinct window), and what lies
        // below the chain.
        let mut top = None;
        plan.apply(|node| {
            if let LogicalPlan::Window(window) = node {
                top = Some(window.clone());
                return Ok(TreeNodeRecursion::Stop);
            }
            Ok(TreeNodeRecursion::Continue)
        })?;
        let Some(top) = top else {
            return Ok(None);
        };
        let mut chain = vec![top.clone()];
        while let LogicalPlan::Window(lower) = chain[chain.len() - 1].input.as_ref() {
            chain.push(lower.clone());
        }
        chain.reverse();
        let below = chain[0].input.as_ref().clone();
        let exprs: Vec<Expr> = chain.iter().flat_map(|w| w.window_expr.clone()).collect();
        let top_schema: SchemaRef = Arc::new(top.schema.as_arrow().clone());
        let Some(state) = SlidingState::plan(&exprs, below.schema(), Arc::clone(&top_schema))?
        else {
            return Ok(None);
        };
        let qualifier = below
            .schema()
            .iter()
            .find_map(|(q, _)| q.cloned())
            .unwrap_or_else(|| datafusion::common::TableReference::bare("sliding"));
        let placeholder: Arc<dyn datafusion::catalog::TableProvider> = Arc::new(
            datafusion::datasource::empty::EmptyTable::new(Arc::clone(&top_schema)),
        );
        let scan = datafusion::logical_expr::LogicalPlanBuilder::scan(
            qualifier,
            datafusion::datasource::provider_as_source(Arc::clone(&placeholder)),
            None,
        )?
        .build()?;
        let above =
            plan.clone()
                .transform_down(|node| match &node {
                    LogicalPlan::Window(window) if window.input == top.input => Ok(
                        Transformed::new(scan.clone(), true, TreeNodeRecursion::Jump),
                    ),
                    _ => Ok(Transformed::no(node)),
                })?
                .data;
        let below = BatchExec::plan(
            context,
            &below,
            &[(Arc::clone(provider), Arc::clone(public))],
        )
        .await?;
        let above = BatchExec::plan(context, &above, &[(placeholder, top_schema)]).await?;
        Ok(Some(Self {
            below,
            state,
            above,
        }))
    }

    async fn process(&mut self, batch: RecordBatch) -> DFResult<Vec<RecordBatch>> {
        let mut out = Vec::new();
        let mut newest = None;
        for rows in self.below.run(batch).await? {
            if rows.num_rows() == 0 {
                continue;
            }
            if let Ok(i) = rows.schema().index_of(ROWTIME)
                && let Some(max) = datafusion::arrow::compute::max(
                    cast(rows.column(i), &TIMESTAMP_MS)?.as_primitive::<TimestampMillisecondType>(),
                )
            {
                newest = Some(newest.map_or(max, |n: i64| n.max(max)));
            }
            let windowed = self.state.apply(&rows)?;
            out.extend(
                self.above
                    .run(windowed)
                    .await?
                    .into_iter()
                    .filter(|b| b.num_rows() > 0),
            );
        }
        if let Some(now) = newest {
            self.state.forget_quiet(now);
        }
        Ok(out)
    }
}

const TIMESTAMP_MS: datafusion::arrow::datatypes::DataType =
    datafusion::arrow::datatypes::DataType::Timestamp(
        datafusion::arrow::datatypes::TimeUnit::Millisecond,
        None,
    );

/// The general path: the query's whole plan runs over the rows still inside some window plus
/// each new batch (in runs without peers), and only the new rows' results are kept.
struct Rerun {
    exec: BatchExec,
    carried: usize,
    schema: SchemaRef,
    public: SchemaRef,
    kept: RecordBatch,
    retention: Retention,
}

impl Rerun {
    async fn plan(
        context: &SessionContext,
        plan: LogicalPlan,
        provider: &Arc<dyn datafusion::catalog::TableProvider>,
        public: &SchemaRef,
        retention: Retention,
    ) -> DFResult<Self> {
        let plan = carry_sequence_numbers(plan)?;
        let exec = BatchExec::plan(
            context,
            &plan,
            &[(Arc::clone(provider), Arc::clone(public))],
        )
        .await?;
        let carried_schema = exec.schema();
        let carried = carried_schema.index_of(CARRIED)?;
        let schema: SchemaRef = Arc::new(
            carried_schema.project(
                &(0..carried_schema.fields().len())
                    .filter(|&i| i != carried)
                    .collect::<Vec<_>>(),
            )?,
        );
        Ok(Self {
            exec,
            carried,
            schema,
            public: Arc::clone(public),
            kept: RecordBatch::new_empty(Arc::clone(public)),
            retention,
        })
    }

    async fn process(&mut self, batch: RecordBatch) -> DFResult<Vec<RecordBatch>> {
        let mut out = Vec::new();
        for batch in runs_without_peers(&batch, &self.retention)? {
            if batch.num_rows() == 0 {
                continue;
            }
            let first_new = first_new_per_shard(&batch)?;
            let all = concat_batches(&self.public, [&self.kept, &batch])?;
            for result in self.exec.run(all.clone()).await? {
                let fresh = is_new(result.column(self.carried).as_ref(), &first_new)?;
                let result = filter_record_batch(&result, &fresh)?;
                let result = result.project(
                    &(0..result.num_columns())
                        .filter(|&i| i != self.carried)
                        .collect::<Vec<_>>(),
                )?;
                let result =
                    RecordBatch::try_new(Arc::clone(&self.schema), result.columns().to_vec())?;
                if result.num_rows() > 0 {
                    out.push(result);
                }
            }
            self.kept = retain(&all, &self.retention)?;
        }
        Ok(out)
    }
}

/// A stream fed by an async task through a bounded channel; the task's error, if any, ends it.
fn async_stream<F, Fut>(
    task: F,
) -> impl futures::Stream<Item = DFResult<RecordBatch>> + Send + 'static
where
    F: FnOnce(Emitter) -> Fut,
    Fut: std::future::Future<Output = DFResult<()>> + Send + 'static,
{
    let (sender, receiver) = tokio::sync::mpsc::channel(2);
    let emitter = Emitter {
        sender: sender.clone(),
    };
    let work = task(emitter);
    let handle = tokio::spawn(async move {
        use futures::FutureExt;
        let failure = match std::panic::AssertUnwindSafe(work).catch_unwind().await {
            Ok(Ok(())) => return,
            Ok(Err(e)) => e,
            // Never a quiet end: a client would take it for a query with no more rows.
            Err(_) => datafusion::error::DataFusionError::Execution(
                "the sliding-window query stopped on an internal error (a bug in Sluice; the log has the details)"
                    .to_string(),
            ),
        };
        let _ = sender.send(Err(failure)).await;
    });
    let guard = AbortOnDrop(handle);
    futures::stream::unfold((receiver, guard), |(mut receiver, guard)| async move {
        let item = receiver.recv().await?;
        Some((item, (receiver, guard)))
    })
}

/// Hands results to the stream [`async_stream`] returns.
struct Emitter {
    sender: tokio::sync::mpsc::Sender<DFResult<RecordBatch>>,
}

impl Emitter {
    async fn send(&self, item: DFResult<RecordBatch>) {
        let _ = self.sender.send(item).await;
    }
}

/// Stops the query's task when its rows are dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The frames of `windows`, checked to be ones a stream can keep: bounded, looking back.
fn retention_of(windows: &[Expr]) -> DFResult<Retention> {
    let mut retention = Retention::default();
    for expr in windows {
        let Some(window) = window_function(expr) else {
            continue;
        };
        let frame = &window.params.window_frame;
        if matches!(frame.end_bound, WindowFrameBound::Following(_)) {
            return plan_err!(
                "a sliding window ends at the current row: a continuous query cannot wait for rows that follow; write RANGE INTERVAL '1' MINUTE PRECEDING or ROWS 10 PRECEDING"
            );
        }
        let WindowFrameBound::Preceding(start) = &frame.start_bound else {
            continue;
        };
        if start.is_null() {
            return plan_err!(
                "a sliding window over a stream needs a bound: write RANGE INTERVAL '1' MINUTE PRECEDING or ROWS 10 PRECEDING (UNBOUNDED PRECEDING would keep every row forever)"
            );
        }
        match frame.units {
            WindowFrameUnits::Range => {
                let by_rowtime = matches!(
                    window.params.order_by.as_slice(),
                    [sort] if matches!(&sort.expr, Expr::Column(c) if c.name == ROWTIME)
                );
                if !by_rowtime {
                    return plan_err!(
                        "a RANGE window over a stream is ordered by ROWTIME (write no ORDER BY, or ORDER BY ROWTIME)"
                    );
                }
                let ms = interval_millis(start).ok_or_else(|| {
                    datafusion::error::DataFusionError::Plan(format!(
                        "RANGE {start} PRECEDING: a sliding window's range is an interval such as INTERVAL '1' MINUTE"
                    ))
                })?;
                retention.range_ms = Some(retention.range_ms.unwrap_or(0).max(ms));
                retention
                    .range_partitions
                    .push(partition_columns(&window.params.partition_by, "RANGE")?);
            }
            WindowFrameUnits::Rows => {
                let n = match start {
                    ScalarValue::UInt64(Some(n)) => usize::try_from(*n).unwrap_or(usize::MAX),
                    ScalarValue::Int64(Some(n)) => usize::try_from(*n).unwrap_or(0),
                    other => return plan_err!("ROWS {other} PRECEDING: write a number of rows"),
                };
                let keys = partition_columns(&window.params.partition_by, "ROWS")?;
                retention.rows.push((keys, n));
            }
            WindowFrameUnits::Groups => {
                return plan_err!(
                    "GROUPS windows are not supported over streams; use RANGE or ROWS"
                );
            }
        }
    }
    Ok(retention)
}

fn partition_columns(partition_by: &[Expr], units: &str) -> DFResult<Vec<String>> {
    partition_by
        .iter()
        .map(|key| match key {
            Expr::Column(c) => Ok(c.name.clone()),
            other => {
                plan_err!("a {units} window over a stream is partitioned by columns, not {other}")
            }
        })
        .collect()
}

/// Cuts `batch` into runs in which no two rows are peers in a `RANGE` window (the same
/// partition and `ROWTIME`), so each row's window holds the rows before it and not those after.
fn runs_without_peers(batch: &RecordBatch, retention: &Retention) -> DFResult<Vec<RecordBatch>> {
    if retention.range_partitions.is_empty() || batch.num_rows() < 2 {
        return Ok(vec![batch.clone()]);
    }
    let schema = batch.schema();
    let mut encoded = Vec::new();
    for keys in &retention.range_partitions {
        let mut columns = vec![Arc::clone(batch.column(schema.index_of(ROWTIME)?))];
        for key in keys {
            columns.push(Arc::clone(batch.column(schema.index_of(key)?)));
        }
        encoded.push(encode_rows(&columns)?);
    }
    let mut runs = Vec::new();
    let mut start = 0;
    let mut seen: Vec<std::collections::HashSet<&[u8]>> =
        vec![std::collections::HashSet::new(); encoded.len()];
    for row in 0..batch.num_rows() {
        let peer = encoded
            .iter()
            .zip(&seen)
            .any(|(rows, seen)| seen.contains(rows.row(row).data()));
        if peer {
            runs.push(batch.slice(start, row - start));
            start = row;
            seen.iter_mut().for_each(std::collections::HashSet::clear);
        }
        for (rows, seen) in encoded.iter().zip(seen.iter_mut()) {
            seen.insert(rows.row(row).data());
        }
    }
    runs.push(batch.slice(start, batch.num_rows() - start));
    Ok(runs)
}

fn window_function(expr: &Expr) -> Option<&WindowFunction> {
    match expr {
        Expr::Alias(alias) => window_function(&alias.expr),
        Expr::WindowFunction(window) => Some(window),
        _ => None,
    }
}

/// An interval's length in milliseconds (months are not a fixed length).
pub(crate) fn interval_millis(value: &ScalarValue) -> Option<i64> {
    match value {
        ScalarValue::IntervalDayTime(Some(v)) => {
            Some(i64::from(v.days) * 86_400_000 + i64::from(v.milliseconds))
        }
        ScalarValue::IntervalMonthDayNano(Some(v)) if v.months == 0 => {
            Some(i64::from(v.days) * 86_400_000 + v.nanoseconds / 1_000_000)
        }
        // Before type coercion DataFusion keeps a RANGE offset as the text written.
        ScalarValue::Utf8(Some(text)) => interval_millis(
            &ScalarValue::try_from_string(
                text.clone(),
                &datafusion::arrow::datatypes::DataType::Interval(
                    datafusion::arrow::datatypes::IntervalUnit::MonthDayNano,
                ),
            )
            .ok()?,
        ),
        _ => None,
    }
}

/// `plan` with each row's sequence number carried to its output as [`CARRIED`]: every
/// projection from the scan up passes it through.
fn carry_sequence_numbers(plan: LogicalPlan) -> DFResult<LogicalPlan> {
    let carried = plan
        .transform_up(|node| match node {
            LogicalPlan::Projection(projection) => {
                let input_schema = projection.input.schema();
                let source = input_schema
                    .iter()
                    .find(|(_, f)| f.name() == CARRIED)
                    .or_else(|| {
                        input_schema
                            .iter()
                            .find(|(_, f)| f.name() == SEQUENCE_NUMBER)
                    })
                    .map(|(qualifier, field)| Column::new(qualifier.cloned(), field.name()));
                let Some(source) = source else {
                    return Ok(Transformed::no(LogicalPlan::Projection(projection)));
                };
                let mut exprs = projection.expr.clone();
                exprs.push(Expr::Column(source).alias(CARRIED));
                Ok(Transformed::yes(LogicalPlan::Projection(
                    Projection::try_new(exprs, Arc::clone(&projection.input))?,
                )))
            }
            other => Ok(Transformed::no(other)),
        })?
        .data;
    // Subquery aliases above a projection re-qualify it; the name stays.
    let carried = carried.recompute_schema()?;
    if carried
        .schema()
        .field_with_unqualified_name(CARRIED)
        .is_err()
    {
        return plan_err!(
            "this sliding-window query's rows cannot be told apart; select from the stream directly (SELECT STREAM …, AVG(x) OVER w FROM s WINDOW w AS (…))"
        );
    }
    Ok(carried)
}

/// Per shard (the sequence number's first ten characters), the first sequence number `batch`
/// brings: every row of that shard from there on is new.
fn first_new_per_shard(batch: &RecordBatch) -> DFResult<HashMap<String, String>> {
    let column = batch.column(batch.schema().index_of(SEQUENCE_NUMBER)?);
    let column =
        datafusion::arrow::compute::cast(column, &datafusion::arrow::datatypes::DataType::Utf8)?;
    let mut first: HashMap<String, String> = HashMap::new();
    for seq in column.as_string::<i32>().iter().flatten() {
        let shard = seq.get(..10).unwrap_or(seq).to_string();
        let entry = first.entry(shard).or_insert_with(|| seq.to_string());
        if seq < entry.as_str() {
            *entry = seq.to_string();
        }
    }
    Ok(first)
}

/// Which rows of a result came from the new batch.
fn is_new(carried: &dyn Array, first_new: &HashMap<String, String>) -> DFResult<BooleanArray> {
    let carried =
        datafusion::arrow::compute::cast(carried, &datafusion::arrow::datatypes::DataType::Utf8)?;
    Ok(carried
        .as_string::<i32>()
        .iter()
        .map(|seq| {
            Some(seq.is_some_and(|seq| {
                first_new
                    .get(seq.get(..10).unwrap_or(seq))
                    .is_some_and(|first| seq >= first.as_str())
            }))
        })
        .collect())
}

/// `columns` in arrow's row format, so equal keys are equal bytes.
fn encode_rows(
    columns: &[datafusion::arrow::array::ArrayRef],
) -> DFResult<datafusion::arrow::row::Rows> {
    let converter = RowConverter::new(
        columns
            .iter()
            .map(|c| SortField::new(c.data_type().clone()))
            .collect(),
    )?;
    Ok(converter.convert_columns(columns)?)
}

/// The rows of `all` some window may still need: those within the longest range of the newest
/// `ROWTIME`, and the last `n` rows of each partition of a `ROWS n` window.
fn retain(all: &RecordBatch, retention: &Retention) -> DFResult<RecordBatch> {
    let rows = all.num_rows();
    let mut keep = vec![false; rows];
    if let Some(range) = retention.range_ms {
        let times = all.column(all.schema().index_of(ROWTIME)?);
        let times: &TimestampMillisecondArray = times.as_primitive::<TimestampMillisecondType>();
        if let Some(newest) = datafusion::arrow::compute::max(times) {
            for (i, keep) in keep.iter_mut().enumerate() {
                *keep |= times.is_valid(i) && times.value(i) >= newest - range;
            }
        }
    }
    for (keys, n) in &retention.rows {
        if keys.is_empty() {
            // One partition: the last n rows.
            for keep in keep.iter_mut().skip(rows.saturating_sub(*n)) {
                *keep = true;
            }
            continue;
        }
        let columns = keys
            .iter()
            .map(|k| Ok(Arc::clone(all.column(all.schema().index_of(k)?))))
            .collect::<DFResult<Vec<_>>>()?;
        let encoded = encode_rows(&columns)?;
        let mut seen: HashMap<&[u8], usize> = HashMap::new();
        for i in (0..rows).rev() {
            let count = seen.entry(encoded.row(i).data()).or_insert(0);
            if *count < *n {
                keep[i] = true;
            }
            *count += 1;
        }
    }
    Ok(filter_record_batch(all, &BooleanArray::from(keep))?)
}
