//! Windowed aggregation in continuous queries.
//!
//! A continuous query that aggregates over `tumble(…)`, `hop(…)` or `session(…)` and groups by
//! `window_start` (or `window_end`) does not run as one DataFusion plan, since DataFusion cannot
//! finish an aggregate over endless input. It runs as one bounded execution of the query's own
//! physical plan per window: the windowed scan is swapped for a channel, each window's rows are
//! sent down its own execution as they arrive, and when the watermark passes the window's end
//! (plus the stream's `allowed_lateness`) the channel is closed and the plan's output for that
//! window is the query's next rows. So the state of an open tumbling or hopping window is what
//! DataFusion's aggregate holds — one accumulator per group — never the raw rows, and it is
//! freed when the window closes. Session windows, whose bounds are only known once they end,
//! hold their rows ([`crate::session_window`]) and run the plan over them as they close.
//!
//! The watermark of event-time windows is, per shard, the newest time read less the stream's
//! `WATERMARK FOR` delay, then the least over the shards still holding it back: a shard with
//! records not yet read always does; one read to its end stops after the stream's
//! `idle_timeout` (at once by default). Windows over `ROWTIME` follow processing time: they
//! close when the engine's clock passes their end. Rows whose window has already closed are
//! dropped and counted.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::array::{Array, AsArray, Int64Array, RecordBatch, UInt32Array};
use datafusion::arrow::compute::{cast, take_record_batch};
use datafusion::arrow::datatypes::DataType;
use datafusion::catalog::TableProvider;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::common::{DataFusionError, Result as DFResult, plan_err};
use datafusion::execution::SendableRecordBatchStream;
use datafusion::logical_expr::{Expr, LogicalPlan};
use datafusion::logical_expr::{FetchType, SkipType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::prelude::SessionContext;
use futures::StreamExt;
use sluice_engine::Clock;
use sluice_engine::schema::SEQUENCE_NUMBER;
use sluice_engine::sequence::parse_sequence_number;

use crate::batch_exec::{BatchExec, scans_of};
use crate::continuous::PumpCursor;
use crate::session_window::Sessions;
use crate::watermark::{ShardProgress, WatermarkTracker};
use crate::window::{TumbleSpec, WINDOW_END, WINDOW_START, WindowedTable};

/// The longest a query over processing time (or with an idle timeout) waits before looking at
/// the clock again.
const TICK: Duration = Duration::from_millis(50);
/// Whether `plan` aggregates.
pub fn has_aggregate(plan: &LogicalPlan) -> bool {
    plan_has(plan, |node| matches!(node, LogicalPlan::Aggregate(_)))
}

/// Whether some node of `plan` is one `is` picks.
fn plan_has(plan: &LogicalPlan, is: impl Fn(&LogicalPlan) -> bool) -> bool {
    let mut found = false;
    let _ = plan.apply(|node| {
        found |= is(node);
        Ok(if found {
            TreeNodeRecursion::Stop
        } else {
            TreeNodeRecursion::Continue
        })
    });
    found
}

/// Whether `plan` sorts its rows (`ORDER BY`).
fn has_sort(plan: &LogicalPlan) -> bool {
    plan_has(plan, |node| matches!(node, LogicalPlan::Sort(_)))
}

/// The windowed tables scanned by `plan`: none, one, or two (a window join); more is an error.
fn windowed_scans(plan: &LogicalPlan) -> DFResult<Vec<Arc<dyn TableProvider>>> {
    let found = scans_of::<WindowedTable>(plan)?;
    if found.len() > 2 {
        return plan_err!(
            "a continuous query reads at most two windowed streams (a window join); this one reads {}",
            found.len()
        );
    }
    Ok(found)
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

/// A windowed continuous query, as the streaming planner decided it: the plan to run once
/// per window (without a LIMIT over the whole query, which counts rows across windows and is
/// applied to the output), and the windowed streams it reads.
#[derive(Debug)]
pub struct WindowedQuery {
    plan: LogicalPlan,
    remaining: Option<usize>,
    providers: Vec<Arc<dyn TableProvider>>,
}

impl WindowedQuery {
    /// The windowed query `plan` is, if it is one: `Ok(None)` when it is not (a query over
    /// fixed windows without an aggregate or a sort runs row by row). Refuses what a window
    /// cannot run: an aggregate not grouped by the window, a join of unlike windows.
    pub fn decide(plan: &LogicalPlan) -> DFResult<Option<Self>> {
        let providers = windowed_scans(plan)?;
        let tables: Vec<&WindowedTable> = providers
            .iter()
            .filter_map(|p| p.downcast_ref::<WindowedTable>())
            .collect();
        let Some(first) = tables.first() else {
            return Ok(None);
        };
        let session = first.spec().session_keys.is_some();
        // Rows sorted within each window (KDA's ORDER BY FLOOR(ROWTIME TO SECOND), …) wait
        // for the window like an aggregate's; other rows of one window pass through as they
        // come.
        if !has_aggregate(plan) && !has_sort(plan) && !session && tables.len() == 1 {
            return Ok(None);
        }
        if has_aggregate(plan) && !groups_by_window(plan) {
            return plan_err!(
                "an aggregate over a window must group by window_start (or window_end), so each window's rows come out when it closes"
            );
        }
        if let [left, right] = tables.as_slice() {
            let (l, r) = (left.spec(), right.spec());
            if l.session_keys.is_some() || r.session_keys.is_some() {
                return plan_err!(
                    "session windows cannot be joined; join tumbling or hopping windows"
                );
            }
            if (l.size, l.slide, l.offset, l.unit) != (r.size, r.slide, r.offset, r.unit)
                || l.processing_time != r.processing_time
            {
                return plan_err!(
                    "a window join needs the same window on both sides: the same size, slide and offset over time columns of the same kind"
                );
            }
        }
        // A LIMIT over the whole query counts rows across windows, so it is applied to the
        // output rather than to each window's rows.
        let (plan, remaining) = match plan {
            LogicalPlan::Limit(limit) => match (limit.get_skip_type()?, limit.get_fetch_type()?) {
                (SkipType::Literal(0), FetchType::Literal(fetch)) => {
                    (limit.input.as_ref().clone(), fetch)
                }
                _ => {
                    return plan_err!("a windowed continuous query takes LIMIT n without OFFSET");
                }
            },
            other => (other.clone(), None),
        };
        Ok(Some(Self {
            plan,
            remaining,
            providers,
        }))
    }

    /// The window's specification (the first input's, when two are joined).
    pub fn spec(&self) -> Option<&TumbleSpec> {
        self.providers
            .first()
            .and_then(|p| p.downcast_ref::<WindowedTable>())
            .map(WindowedTable::spec)
    }

    /// Starts the query: rows come out window by window as the watermark closes them.
    pub async fn start(self, context: &SessionContext) -> DFResult<SendableRecordBatchStream> {
        let Self {
            plan,
            remaining,
            providers,
        } = self;
        let tables: Vec<&WindowedTable> = providers
            .iter()
            .filter_map(|p| p.downcast_ref::<WindowedTable>())
            .collect();
        let Some(first) = tables.first() else {
            return plan_err!("a windowed query reads a windowed stream");
        };
        let plan = &plan;
        let spec = first.spec().clone();
        let cursor = first.cursor();
        let exec_inputs: Vec<_> = providers
            .iter()
            .zip(&tables)
            .map(|(p, t)| (Arc::clone(p), t.schema_ref()))
            .collect();
        let exec = BatchExec::plan(context, plan, &exec_inputs).await?;
        let out_schema = exec.schema();
        let state = match &spec.session_keys {
            Some(_) => WindowState::Sessions(Box::new(Sessions::new(
                &spec,
                first.stream().public_schema(),
                first.schema_ref(),
            )?)),
            None => WindowState::Fixed(BTreeMap::new()),
        };
        let clock = Arc::clone(first.clock());
        let watermark = WatermarkTracker::new(
            tables.iter().map(|t| t.spec().watermark_rule()).collect(),
            clock.now_millis(),
            cursor.as_ref().and_then(|c| c.watermark()),
        );
        let streams: Vec<_> = tables
            .iter()
            .enumerate()
            .map(|(i, t)| t.continuous_rows().map(move |batch| (i, batch)))
            .collect();
        let inputs = tables
            .iter()
            .map(|t| Input {
                spec: t.spec().clone(),
                stream: Arc::clone(t.stream()),
            })
            .collect();
        let runtime = WindowRuntime {
            rows: Box::pin(futures::stream::select_all(streams)),
            inputs,
            spec,
            clock,
            state,
            watermark,
            cursor,
            exec,
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
                if let Err(e) = runtime.step().await {
                    return Some((Err(e), None));
                }
            }
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(out_schema, rows)))
    }
}

/// An open fixed window: its start, its execution, and per (input, shard) the oldest record
/// sent to it.
struct OpenWindow {
    start: i64,
    running: crate::batch_exec::Running,
    oldest: HashMap<(usize, u32), u64>,
}

enum WindowState {
    /// Tumbling, hopping or cumulating windows by end.
    Fixed(BTreeMap<i64, OpenWindow>),
    Sessions(Box<Sessions>),
}

/// One windowed stream the query reads.
struct Input {
    spec: TumbleSpec,
    stream: Arc<sluice_engine::Stream>,
}

struct WindowRuntime {
    /// The inputs' rows, tagged with the input's position.
    rows: futures::stream::BoxStream<'static, (usize, DFResult<RecordBatch>)>,
    inputs: Vec<Input>,
    /// The window (the same for every input).
    spec: TumbleSpec,
    clock: Arc<dyn Clock>,
    state: WindowState,
    /// The least of the inputs' watermarks.
    watermark: WatermarkTracker,
    cursor: Option<Arc<PumpCursor>>,
    exec: BatchExec,
    output: VecDeque<RecordBatch>,
    /// Rows the query's LIMIT still allows.
    remaining: Option<usize>,
    /// The query's LIMIT is reached.
    finished: bool,
}

impl WindowRuntime {
    /// Reads the next batch (or waits for the clock), then closes what is due.
    async fn step(&mut self) -> DFResult<()> {
        self.publish_due();
        let ticking = self
            .inputs
            .iter()
            .any(|i| i.spec.processing_time || i.spec.idle_timeout_ms > 0);
        let next = if ticking {
            let wait = self.tick_wait();
            tokio::select! {
                item = self.rows.next() => Some(item),
                _ = tokio::time::sleep(wait) => None,
            }
        } else {
            Some(self.rows.next().await)
        };
        match next {
            // The streams are gone: nothing more will arrive.
            Some(None) => self.finished = true,
            Some(Some((input, batch))) => self.accept(input, &batch?).await?,
            None => {}
        }
        self.advance_watermark();
        self.close_due().await?;
        self.publish_state();
        if let Some(left) = self.remaining.as_mut() {
            let mut kept = VecDeque::new();
            for batch in self.output.drain(..) {
                let take = batch.num_rows().min(*left);
                *left -= take;
                if take > 0 {
                    kept.push_back(batch.slice(0, take));
                }
            }
            self.output = kept;
            if *left == 0 {
                self.finished = true;
            }
        }
        Ok(())
    }

    /// How long to wait for rows before looking at the clock again.
    fn tick_wait(&self) -> Duration {
        let due = match &self.state {
            WindowState::Fixed(windows) => {
                windows.keys().next().map(|end| end + self.spec.lateness)
            }
            WindowState::Sessions(sessions) => sessions.next_end().map(|e| e + self.spec.lateness),
        };
        match (self.spec.processing_time, due) {
            (true, Some(due)) => {
                let left = self.spec.to_millis(due) - self.clock.now_millis();
                TICK.min(Duration::from_millis(left.clamp(1, 1_000) as u64))
            }
            _ => TICK,
        }
    }

    /// Files a batch of rows under their windows, dropping late ones, and notes how far each
    /// shard has been read.
    async fn accept(&mut self, input: usize, batch: &RecordBatch) -> DFResult<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        // Every batch comes from one shard, in sequence order.
        let sequence = batch
            .column_by_name(SEQUENCE_NUMBER)
            .map(|c| c.as_string::<i32>().clone());
        let position = |row: usize| {
            sequence
                .as_ref()
                .filter(|s| s.is_valid(row))
                .and_then(|s| parse_sequence_number(s.value(row)).ok())
        };
        let last = position(batch.num_rows() - 1);
        let times = int64(batch.column(self.inputs[input].spec.time_index))?;
        let late = match &mut self.state {
            WindowState::Fixed(windows) => {
                // Windows are filed by their end, which is when they close (cumulating
                // windows share a start).
                let starts = int64(batch.column(batch.num_columns() - 2))?;
                let ends = int64(batch.column(batch.num_columns() - 1))?;
                let closed_upto = self.watermark.watermark().map(|w| w - self.spec.lateness);
                let mut groups: BTreeMap<i64, (i64, Vec<u32>)> = BTreeMap::new();
                let mut late = 0u64;
                for row in 0..batch.num_rows() {
                    if ends.is_null(row) || starts.is_null(row) {
                        late += 1; // no time, no window
                        continue;
                    }
                    let end = ends.value(row);
                    if closed_upto.is_some_and(|c| end <= c) {
                        late += 1;
                        continue;
                    }
                    groups
                        .entry(end)
                        .or_insert_with(|| (starts.value(row), Vec::new()))
                        .1
                        .push(row as u32);
                }
                let whole = groups.len() == 1 && late == 0;
                for (end, (start, rows)) in groups {
                    let oldest = position(rows[0] as usize);
                    let rows = if whole {
                        batch.clone()
                    } else {
                        take_record_batch(batch, &UInt32Array::from(rows))?
                    };
                    let window = match windows.entry(end) {
                        std::collections::btree_map::Entry::Occupied(o) => o.into_mut(),
                        std::collections::btree_map::Entry::Vacant(v) => v.insert(OpenWindow {
                            start,
                            running: self.exec.open()?,
                            oldest: HashMap::new(),
                        }),
                    };
                    if let Some((shard, seq)) = oldest {
                        window.oldest.entry((input, shard)).or_insert(seq);
                    }
                    window.running.send(input, rows).await;
                }
                late
            }
            WindowState::Sessions(sessions) => {
                let watermark = self.watermark.watermark().map(|w| w - self.spec.lateness);
                sessions.accept(batch, watermark, &position)?
            }
        };
        if let Some((shard, seq)) = last {
            let newest = datafusion::arrow::compute::max(&times);
            self.watermark
                .observe(input, shard, seq, newest, self.clock.now_millis());
        }
        if let (Some(cursor), true) = (&self.cursor, late > 0) {
            cursor.add_late_rows(late);
        }
        Ok(())
    }

    /// Moves the watermark: the least of the inputs' ([`WatermarkTracker`]).
    fn advance_watermark(&mut self) {
        let shards: Vec<Vec<ShardProgress>> = self
            .inputs
            .iter()
            .map(|i| {
                i.stream
                    .shards()
                    .iter()
                    .map(|s| ShardProgress::of(s))
                    .collect()
            })
            .collect();
        let views: Vec<&[ShardProgress]> = shards.iter().map(Vec::as_slice).collect();
        self.watermark.advance(self.clock.now_millis(), &views);
    }

    /// Emits every window the watermark (less the allowed lateness) has passed.
    async fn close_due(&mut self) -> DFResult<()> {
        let Some(upto) = self.watermark.watermark().map(|w| w - self.spec.lateness) else {
            return Ok(());
        };
        match &mut self.state {
            WindowState::Fixed(windows) => {
                while let Some(entry) = windows.first_entry() {
                    if *entry.key() > upto {
                        break;
                    }
                    let end = *entry.key();
                    let window = entry.remove();
                    let start = window.start;
                    match window.running.finish().await {
                        Ok(rows) => self.output.extend(rows),
                        Err(e) => {
                            let at = window.oldest.iter().map(|(k, q)| (*k, *q)).min();
                            let what = describe_window(&self.spec, start, end);
                            let at = at.map(|((input, shard), seq)| {
                                (Arc::clone(&self.inputs[input].stream), shard, seq)
                            });
                            window_failed(&self.cursor, at, &what, e).await?;
                        }
                    }
                }
            }
            WindowState::Sessions(sessions) => {
                if let Some(rows) = sessions.close(Some(upto))? {
                    let at = rows
                        .column_by_name(SEQUENCE_NUMBER)
                        .map(|c| c.as_string::<i32>().clone())
                        .filter(|s| !s.is_empty() && s.is_valid(0))
                        .and_then(|s| parse_sequence_number(s.value(0)).ok());
                    match self.exec.run(rows).await {
                        Ok(rows) => self.output.extend(rows),
                        Err(e) => {
                            let at = at.map(|(shard, seq)| {
                                (Arc::clone(&self.inputs[0].stream), shard, seq)
                            });
                            window_failed(&self.cursor, at, "sessions", e).await?
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Records the window state in the pump's cursor, for its checkpoints: the oldest record
    /// an open window still holds per shard, and the watermark.
    fn publish_state(&self) {
        let Some(cursor) = &self.cursor else {
            return;
        };
        let mut held: HashMap<(String, u32), u64> = HashMap::new();
        let mut hold = |input: usize, shard: u32, seq: u64| {
            let name = self.inputs[input].stream.name().to_string();
            let entry = held.entry((name, shard)).or_insert(seq);
            *entry = (*entry).min(seq);
        };
        match &self.state {
            WindowState::Fixed(windows) => {
                for window in windows.values() {
                    for ((input, shard), seq) in &window.oldest {
                        hold(*input, *shard, *seq);
                    }
                }
            }
            WindowState::Sessions(sessions) => {
                for (shard, seq) in sessions.oldest_held() {
                    hold(0, shard, seq);
                }
            }
        }
        let watermark = self.watermark.watermark();
        let watermark_ms = watermark.map(|w| self.spec.to_millis(w));
        cursor.set_window_state(watermark, watermark_ms, held);
        let next_close = match &self.state {
            WindowState::Fixed(windows) => windows.keys().next().copied(),
            WindowState::Sessions(sessions) => sessions.next_end(),
        };
        cursor.set_next_close(next_close.map(|e| self.spec.to_millis(e + self.spec.lateness)));
    }

    /// Records in the pump's cursor when the clock next brings work (a processing-time window
    /// to close, a shard turning idle). Called at the start of a step, once the rows of earlier
    /// steps have been taken downstream, so `FLUSH` never sees a window as done before its rows
    /// have landed.
    fn publish_due(&self) {
        let Some(cursor) = &self.cursor else {
            return;
        };
        let window_due = match (&self.state, self.spec.processing_time) {
            (WindowState::Fixed(windows), true) => windows
                .keys()
                .next()
                .map(|end| self.spec.to_millis(end + self.spec.lateness)),
            (WindowState::Sessions(sessions), true) => sessions
                .next_end()
                .map(|e| self.spec.to_millis(e + self.spec.lateness)),
            _ => None,
        };
        let due_ms = match (window_due, self.watermark.next_idle_ms()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        cursor.set_due(due_ms);
    }
}

/// A window's bounds for people.
fn describe_window(spec: &TumbleSpec, start: i64, end: i64) -> String {
    let time = |t: i64| {
        chrono::DateTime::from_timestamp_millis(spec.to_millis(t))
            .map_or(t.to_string(), |d| d.naive_utc().to_string())
    };
    format!("window [{}, {})", time(start), time(end))
}

/// A window whose plan failed: a pump reports it to `error_stream` (naming the window's oldest
/// record) and carries on with the next; any other query fails with the error.
async fn window_failed(
    cursor: &Option<Arc<PumpCursor>>,
    at: Option<(Arc<sluice_engine::Stream>, u32, u64)>,
    what: &str,
    error: DataFusionError,
) -> DFResult<()> {
    let Some(pump) = cursor.as_ref().and_then(|c| c.pump()).map(str::to_string) else {
        return Err(error);
    };
    let reason = format!("pump '{pump}': {what} failed and was skipped: {error}");
    log::warn!("{reason}");
    let Some((stream, shard, seq)) = at else {
        return Ok(());
    };
    match tokio::task::spawn_blocking(move || stream.report_errors(&[(shard, seq, reason)])).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => log::error!("pump '{pump}' could not report to error_stream: {e}"),
        Err(e) => log::error!("pump '{pump}' could not report to error_stream: {e}"),
    }
    Ok(())
}

fn int64(array: &Arc<dyn Array>) -> DFResult<Int64Array> {
    Ok(cast(array, &DataType::Int64)?.as_primitive().clone())
}
