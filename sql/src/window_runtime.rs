//! Windowed aggregation in continuous queries.
//!
//! A continuous query that aggregates over `tumble(…)` and groups by `window_start` (or
//! `window_end`) does not run as one DataFusion plan, since DataFusion cannot finish an
//! aggregate over endless input. Instead the windowed rows are read here and held per window;
//! the watermark — per shard, the newest time seen, less the stream's `WATERMARK FOR` delay,
//! then the least over the shards that have sent rows — decides when a window is complete. Rows
//! whose window has already closed are dropped and counted. When windows close, the query's own
//! plan runs, bounded, over just their rows (the windowed scan swapped for an in-memory table),
//! and its output is the query's next rows.
//!
//! State is the rows of the open windows, not yet per-window accumulators.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use datafusion::arrow::array::{Array, AsArray, Int64Array, RecordBatch, UInt32Array};
use datafusion::arrow::compute::{cast, concat_batches, take_record_batch};
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::catalog::MemTable;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{Result as DFResult, plan_err};
use datafusion::datasource::{provider_as_source, source_as_provider};
use datafusion::execution::SendableRecordBatchStream;
use datafusion::logical_expr::{Expr, LogicalPlan, TableScanBuilder};
use datafusion::logical_expr::{FetchType, SkipType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::prelude::SessionContext;
use futures::StreamExt;
use sluice_engine::schema::SEQUENCE_NUMBER;
use sluice_engine::sequence::parse_sequence_number;

use crate::continuous::PumpCursor;
use crate::window::{TumbleSpec, WINDOW_END, WINDOW_START, WindowedTable};

/// Whether `plan` aggregates.
pub fn has_aggregate(plan: &LogicalPlan) -> bool {
    let mut found = false;
    let _ = plan.apply(|node| {
        found |= matches!(node, LogicalPlan::Aggregate(_));
        Ok(if found {
            TreeNodeRecursion::Stop
        } else {
            TreeNodeRecursion::Continue
        })
    });
    found
}

/// The windowed table scanned by `plan`, if exactly one; an error if more than one.
fn windowed_scan(
    plan: &LogicalPlan,
) -> DFResult<Option<Arc<dyn datafusion::catalog::TableProvider>>> {
    let mut found = Vec::new();
    plan.apply(|node| {
        if let LogicalPlan::TableScan(scan) = node
            && let Ok(provider) = source_as_provider(&scan.source)
            && provider.downcast_ref::<WindowedTable>().is_some()
        {
            found.push(provider);
        }
        Ok(TreeNodeRecursion::Continue)
    })?;
    if found.len() > 1 {
        return plan_err!(
            "a continuous query can aggregate over one windowed stream for now; window joins are not supported yet"
        );
    }
    Ok(found.pop())
}

/// Whether the plan's aggregate groups by the window.
fn groups_by_window(plan: &LogicalPlan) -> bool {
    let mut grouped = false;
    let _ = plan.apply(|node| {
        if let LogicalPlan::Aggregate(aggregate) = node {
            grouped = aggregate.group_expr.iter().any(
                |e| matches!(e, Expr::Column(c) if c.name == WINDOW_START || c.name == WINDOW_END),
            );
        }
        Ok(TreeNodeRecursion::Continue)
    });
    grouped
}

/// Starts a windowed aggregation, if `plan` is one: `Ok(None)` when it is not windowed.
pub async fn start_windowed(
    context: &SessionContext,
    plan: &LogicalPlan,
) -> DFResult<Option<SendableRecordBatchStream>> {
    let Some(provider) = windowed_scan(plan)? else {
        return Ok(None);
    };
    if !groups_by_window(plan) {
        return plan_err!(
            "an aggregate over tumble(…) must group by window_start (or window_end), so each window's rows come out when it closes"
        );
    }
    let Some(table) = provider.downcast_ref::<WindowedTable>() else {
        return Ok(None);
    };
    // A LIMIT over the whole query counts rows across windows, so it is applied to the output
    // here rather than to each window's rows.
    let (plan, remaining) = match plan {
        LogicalPlan::Limit(limit) => match (limit.get_skip_type()?, limit.get_fetch_type()?) {
            (SkipType::Literal(0), FetchType::Literal(fetch)) => (limit.input.as_ref(), fetch),
            _ => return plan_err!("a windowed continuous query takes LIMIT n without OFFSET"),
        },
        other => (other, None),
    };
    let spec = table.spec().clone();
    let schema = table.schema_ref();
    let cursor = table.cursor();
    // Plan once over no rows, so mistakes show now rather than when a window closes.
    let empty = replace_scan(plan, &schema, vec![])?;
    let physical = context.state().create_physical_plan(&empty).await?;
    let out_schema = physical.schema();

    let runtime = WindowRuntime {
        input: table.continuous_rows(),
        spec,
        schema,
        stream_name: table.stream_name().to_string(),
        stream: Arc::clone(table.stream()),
        last_seq: HashMap::new(),
        windows: BTreeMap::new(),
        shard_max: HashMap::new(),
        watermark: cursor.as_ref().and_then(|c| c.watermark()),
        cursor,
        plan: plan.clone(),
        context: context.clone(),
        output: VecDeque::new(),
        remaining,
        finished: false,
    };
    let rows = futures::stream::unfold(Some(runtime), |runtime| async move {
        let mut runtime = runtime?;
        loop {
            if let Some(batch) = runtime.output.pop_front() {
                return Some((Ok(batch), Some(runtime)));
            }
            if runtime.finished {
                return None;
            }
            let batch = match runtime.input.next().await? {
                Ok(batch) => batch,
                Err(e) => return Some((Err(e), None)),
            };
            if let Err(e) = runtime.accept(&batch) {
                return Some((Err(e), None));
            }
            if let Err(e) = runtime.close_due().await {
                return Some((Err(e), None));
            }
            if let Some(left) = runtime.remaining.as_mut() {
                let mut kept = VecDeque::new();
                for batch in runtime.output.drain(..) {
                    let take = batch.num_rows().min(*left);
                    *left -= take;
                    if take > 0 {
                        kept.push_back(batch.slice(0, take));
                    }
                }
                runtime.output = kept;
                let done = *left == 0;
                runtime.finished = done;
            }
        }
    });
    Ok(Some(Box::pin(RecordBatchStreamAdapter::new(
        out_schema, rows,
    ))))
}

/// The rows of one open window, and per shard the oldest record among them.
#[derive(Default)]
struct OpenWindow {
    batches: Vec<RecordBatch>,
    oldest: HashMap<u32, u64>,
}

struct WindowRuntime {
    input: SendableRecordBatchStream,
    spec: TumbleSpec,
    schema: SchemaRef,
    stream_name: String,
    stream: Arc<sluice_engine::Stream>,
    /// Per shard, the newest record read.
    last_seq: HashMap<u32, u64>,
    windows: BTreeMap<i64, OpenWindow>,
    /// Per shard, the newest time seen.
    shard_max: HashMap<u32, i64>,
    watermark: Option<i64>,
    cursor: Option<Arc<PumpCursor>>,
    plan: LogicalPlan,
    context: SessionContext,
    output: VecDeque<RecordBatch>,
    /// Rows the query's LIMIT still allows.
    remaining: Option<usize>,
    /// The query's LIMIT is reached.
    finished: bool,
}

impl WindowRuntime {
    /// Files a batch of windowed rows under their windows, dropping late ones, and moves the
    /// watermark.
    fn accept(&mut self, batch: &RecordBatch) -> DFResult<()> {
        let starts = int64(batch.column(batch.num_columns() - 2))?;
        let times = int64(batch.column(self.spec.time_index))?;
        let sequence = batch
            .column_by_name(SEQUENCE_NUMBER)
            .map(|c| c.as_string::<i32>().clone());
        let mut rows: BTreeMap<i64, Vec<u32>> = BTreeMap::new();
        let mut late = 0u64;
        let mut newest: HashMap<u32, i64> = HashMap::new();
        let mut positions: Vec<Option<(u32, u64)>> = Vec::with_capacity(batch.num_rows());
        for row in 0..batch.num_rows() {
            let position = sequence
                .as_ref()
                .and_then(|s| parse_sequence_number(s.value(row)).ok());
            positions.push(position);
            if starts.is_null(row) {
                late += 1; // no time, no window
                continue;
            }
            let start = starts.value(row);
            if self.watermark.is_some_and(|w| start + self.spec.size <= w) {
                late += 1;
                continue;
            }
            rows.entry(start).or_default().push(row as u32);
            if let Some((shard, _)) = position {
                let time = times.value(row);
                let max = newest.entry(shard).or_insert(time);
                *max = (*max).max(time);
            }
        }
        for (start, indices) in rows {
            let window = self.windows.entry(start).or_default();
            for &row in &indices {
                if let Some((shard, seq)) = positions[row as usize] {
                    let oldest = window.oldest.entry(shard).or_insert(seq);
                    *oldest = (*oldest).min(seq);
                }
            }
            window
                .batches
                .push(take_record_batch(batch, &UInt32Array::from(indices))?);
        }
        for (shard, time) in newest {
            let max = self.shard_max.entry(shard).or_insert(time);
            *max = (*max).max(time);
        }
        for (shard, seq) in positions.iter().flatten() {
            let last = self.last_seq.entry(*shard).or_insert(*seq);
            *last = (*last).max(*seq);
        }
        self.advance_watermark();
        if let (Some(cursor), true) = (&self.cursor, late > 0) {
            cursor.add_late_rows(late);
        }
        Ok(())
    }

    /// Moves the watermark: a shard with records not yet read holds it back at the newest time
    /// read from it (or entirely, if none was read yet); a shard read to its end does not (it is
    /// idle). With every shard read to its end, the newest time of all counts. Less the delay.
    fn advance_watermark(&mut self) {
        let mut holding: Option<Option<i64>> = None;
        let mut newest: Option<i64> = None;
        for shard in self.stream.shards() {
            let index = shard.index();
            let seen = self.shard_max.get(&index).copied();
            newest = newest.max(seen);
            let read_to = self.last_seq.get(&index).copied().unwrap_or(0);
            if read_to + 1 < shard.next_seq() {
                holding = Some(match holding {
                    None => seen,
                    Some(h) => h.min(seen),
                });
            }
        }
        let candidate = match holding {
            Some(held) => held,
            None => newest,
        };
        if let Some(time) = candidate {
            let candidate = time - self.spec.delay;
            self.watermark = Some(self.watermark.map_or(candidate, |w| w.max(candidate)));
        }
    }

    /// Emits every window the watermark has passed.
    async fn close_due(&mut self) -> DFResult<()> {
        let Some(watermark) = self.watermark else {
            return Ok(());
        };
        let mut closed = Vec::new();
        while let Some(entry) = self.windows.first_entry() {
            if *entry.key() + self.spec.size > watermark {
                break;
            }
            closed.extend(entry.remove().batches);
        }
        if !closed.is_empty() {
            let rows = concat_batches(&self.schema, &closed)?;
            let plan = replace_scan(&self.plan, &self.schema, vec![rows])?;
            let frame = self.context.execute_logical_plan(plan).await?;
            self.output.extend(frame.collect().await?);
        }
        if let Some(cursor) = &self.cursor {
            let mut held: HashMap<(String, u32), u64> = HashMap::new();
            for window in self.windows.values() {
                for (shard, seq) in &window.oldest {
                    let entry = held
                        .entry((self.stream_name.clone(), *shard))
                        .or_insert(*seq);
                    *entry = (*entry).min(*seq);
                }
            }
            let (mul, div) = crate::window::units_per_milli(self.spec.unit);
            let watermark_ms = self.watermark.map(|w| w * div / mul);
            cursor.set_window_state(self.watermark, watermark_ms, held);
        }
        Ok(())
    }
}

fn int64(array: &Arc<dyn Array>) -> DFResult<Int64Array> {
    Ok(cast(array, &DataType::Int64)?.as_primitive().clone())
}

/// `plan` with its windowed scan reading `rows` instead.
fn replace_scan(
    plan: &LogicalPlan,
    schema: &SchemaRef,
    rows: Vec<RecordBatch>,
) -> DFResult<LogicalPlan> {
    let table = Arc::new(MemTable::try_new(Arc::clone(schema), vec![rows])?);
    plan.clone()
        .transform_up(|node| {
            let LogicalPlan::TableScan(scan) = &node else {
                return Ok(Transformed::no(node));
            };
            let windowed = source_as_provider(&scan.source)
                .is_ok_and(|p| p.downcast_ref::<WindowedTable>().is_some());
            if !windowed {
                return Ok(Transformed::no(node));
            }
            let replaced = TableScanBuilder::new(
                scan.table_name.clone(),
                provider_as_source(Arc::clone(&table) as _),
            )
            .with_projection(scan.projection.clone())
            .with_filters(scan.filters.clone())
            .with_fetch(scan.fetch)
            .build()?;
            Ok(Transformed::yes(LogicalPlan::TableScan(replaced)))
        })
        .map(|t| t.data)
}
