//! Pumps: continuous `INSERT INTO stream SELECT STREAM …` statements that run with the engine.
//!
//! A pump plans its statement in a continuous context whose streams are read through a
//! [`PumpCursor`], so it resumes where it stopped: after each batch it writes into its target
//! stream, it saves the positions its source had read when that batch came out, in the same
//! log frame as the batch (exactly once). Pumps are kept in the engine's catalog and the ones
//! marked running start again when a session opens the engine.
//!
//! In a cluster, a pump whose target is a shared stream is the cluster's: CREATE PUMP hands it
//! to [`ClusterPumps`], which runs it on one node at a time, writing through a [`PumpOutput`]
//! that commits each batch once with the positions after it, wherever the pump runs next.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use datafusion::arrow::array::{
    ArrayRef, RecordBatch, StringArray, TimestampMillisecondArray, UInt64Array,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::execution::SendableRecordBatchStream;
use datafusion::logical_expr::LogicalPlan;
use futures::StreamExt;
use parking_lot::Mutex;
use sluice_engine::{Engine, PumpCheckpoint, PumpDefinition, PutRecord, Stream};

use crate::continuous::PumpCursor;
use crate::error::{Error, Result};
use crate::parser::{SluiceStatement, parse_statements};
use crate::streaming_planner::{ContinuousPlan, ContinuousPlanner};
use crate::table::StreamSink;

/// Where a pump's output goes when its target is a stream a cluster shares: each batch is
/// committed once, with the checkpoint after it, wherever the pump runs.
#[async_trait::async_trait]
pub trait PumpOutput: Send + Sync {
    /// Where the pump resumes: the checkpoint committed with its last batch, if any.
    fn resume_point(&self) -> Option<PumpCheckpoint>;
    /// Commits one batch of the pump's output (records encoded for the target) with the
    /// checkpoint after it. An error stops the pump (another node may own it now).
    async fn commit(
        &self,
        records: Vec<PutRecord>,
        checkpoint: PumpCheckpoint,
    ) -> std::result::Result<(), String>;
}

/// A pump a cluster keeps, as `SHOW PUMPS` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterPump {
    pub name: String,
    pub sql: String,
    /// The node running it, if one does.
    pub node: Option<String>,
}

/// The cluster's pumps: those writing into streams it shares, defined once for every node.
#[async_trait::async_trait]
pub trait ClusterPumps: Send + Sync {
    /// Keeps pump `name` (its statement checked already), which writes into `target`;
    /// replaces one of that name only if `or_replace`.
    async fn create(
        &self,
        name: &str,
        sql: &str,
        target: &str,
        or_replace: bool,
    ) -> std::result::Result<(), String>;
    /// Drops pump `name`; whether it existed.
    async fn remove(&self, name: &str) -> std::result::Result<bool, String>;
    /// Every pump the cluster keeps.
    async fn list(&self) -> std::result::Result<Vec<ClusterPump>, String>;
    /// Whether the cluster shares stream `name` (a pump into it is the cluster's), whatever
    /// this node's copy knows yet.
    async fn shares(&self, name: &str) -> std::result::Result<bool, String>;
}

/// What a running pump shares with the statements that ask about it.
#[derive(Debug, Default)]
struct PumpProgress {
    cursor: Arc<PumpCursor>,
    rows_out: AtomicU64,
    /// Planned and reading (a saved pump plans in the background).
    ready: AtomicBool,
    /// Why it stopped, if it failed.
    failure: Mutex<Option<String>>,
}

#[derive(Debug)]
struct RunningPump {
    progress: Arc<PumpProgress>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl RunningPump {
    fn new(progress: Arc<PumpProgress>, task: tokio::task::JoinHandle<()>) -> Self {
        Self {
            progress,
            task: Some(task),
        }
    }

    fn is_finished(&self) -> bool {
        self.task.as_ref().is_none_or(|t| t.is_finished())
    }

    /// Aborts the pump's task and waits until it is gone, and with it the engine handles it
    /// held.
    async fn stop(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for RunningPump {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// The pumps running on an engine.
#[derive(Debug, Default)]
pub struct PumpManager {
    running: Mutex<HashMap<String, RunningPump>>,
}

/// A pump ready to run: its source stream of rows and the stream they go into.
struct PreparedPump {
    rows: SendableRecordBatchStream,
    target: Arc<Stream>,
    progress: Arc<PumpProgress>,
}

impl PumpManager {
    /// Starts every pump the catalog marks as running, each planning in the background.
    pub fn start_saved(&self, planner: Arc<dyn ContinuousPlanner>) -> Result<()> {
        let saved: Vec<PumpDefinition> = planner
            .engine()
            .pumps()
            .into_iter()
            .filter(|p| p.running)
            .collect();
        if saved.is_empty() {
            return Ok(());
        }
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(Error::Plan(
                "pumps need a Tokio runtime to run; open the session inside one".into(),
            ));
        }
        for pump in saved {
            let progress = Arc::new(PumpProgress {
                cursor: Arc::new(
                    PumpCursor::resuming(resume_point(planner.engine(), &pump.name, &pump.sql)?)
                        .for_pump(&pump.name),
                ),
                ..PumpProgress::default()
            });
            let task_planner = Arc::clone(&planner);
            let task_progress = Arc::clone(&progress);
            let name = pump.name.clone();
            let task = tokio::spawn(async move {
                match prepare(&*task_planner, &pump.sql, Arc::clone(&task_progress)).await {
                    Ok(prepared) => {
                        run(task_planner.engine().clone(), pump.name, prepared, None).await
                    }
                    Err(e) => {
                        log::error!("pump '{}' could not start: {e}", pump.name);
                        *task_progress.failure.lock() = Some(format!("could not start: {e}"));
                    }
                }
            });
            self.running
                .lock()
                .insert(name, RunningPump::new(progress, task));
        }
        Ok(())
    }

    /// Plans `sql` for pump `name` (reporting any error now), then runs it in the background.
    pub async fn start(
        &self,
        planner: &dyn ContinuousPlanner,
        name: &str,
        sql: &str,
    ) -> Result<()> {
        let checkpoint = resume_point(planner.engine(), name, sql)?;
        self.start_from(planner, name, sql, checkpoint, None).await
    }

    /// Plans `sql` for pump `name`, a cluster's, and runs it writing through `output`, from
    /// where `output` says it stopped.
    pub async fn start_with_output(
        &self,
        planner: &dyn ContinuousPlanner,
        name: &str,
        sql: &str,
        output: Arc<dyn PumpOutput>,
    ) -> Result<()> {
        let checkpoint = output.resume_point().unwrap_or_default();
        self.start_from(planner, name, sql, checkpoint, Some(output))
            .await
    }

    /// Plans `sql` for pump `name` reading from `checkpoint` on, and runs it writing into its
    /// target here or through `output`.
    async fn start_from(
        &self,
        planner: &dyn ContinuousPlanner,
        name: &str,
        sql: &str,
        checkpoint: PumpCheckpoint,
        output: Option<Arc<dyn PumpOutput>>,
    ) -> Result<()> {
        let progress = Arc::new(PumpProgress {
            cursor: Arc::new(PumpCursor::resuming(checkpoint).for_pump(name)),
            ..PumpProgress::default()
        });
        let prepared = prepare(planner, sql, Arc::clone(&progress)).await?;
        let task = tokio::spawn(run(
            planner.engine().clone(),
            name.to_string(),
            prepared,
            output,
        ));
        self.running
            .lock()
            .insert(name.to_string(), RunningPump::new(progress, task));
        Ok(())
    }

    /// Checks that `sql` plans as a pump (its errors now, as CREATE PUMP reports them),
    /// without running it; the streams it reads.
    pub async fn check(
        &self,
        planner: &dyn ContinuousPlanner,
        name: &str,
        sql: &str,
    ) -> Result<Vec<String>> {
        let progress = Arc::new(PumpProgress {
            cursor: Arc::new(PumpCursor::default().for_pump(name)),
            ..PumpProgress::default()
        });
        let prepared = prepare(planner, sql, Arc::clone(&progress)).await?;
        drop(prepared);
        Ok(progress.cursor.streams())
    }

    /// Stops pump `name` if it runs, and waits until it has stopped.
    pub async fn stop(&self, name: &str) {
        let pump = self.running.lock().remove(name);
        if let Some(pump) = pump {
            pump.stop().await;
        }
    }

    /// Stops every pump and waits until they have stopped.
    pub async fn stop_all(&self) {
        let pumps: Vec<RunningPump> = self.running.lock().drain().map(|(_, p)| p).collect();
        for pump in pumps {
            pump.stop().await;
        }
    }

    /// The streams running pump `name` reads (known once it is planned).
    pub fn reads(&self, name: &str) -> Vec<String> {
        self.running
            .lock()
            .get(name)
            .map(|p| p.progress.cursor.streams())
            .unwrap_or_default()
    }

    /// Whether pump `name` runs.
    pub fn is_running(&self, name: &str) -> bool {
        self.running
            .lock()
            .get(name)
            .is_some_and(|p| !p.is_finished())
    }

    /// Waits until every running pump has read and processed everything appended to its source
    /// streams, including what other pumps append meanwhile.
    pub async fn wait_caught_up(&self, engine: &Engine, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let lagging: Vec<String> = self
                .running
                .lock()
                .iter()
                .filter(|(_, pump)| {
                    let done = pump.is_finished()
                        || (pump.progress.ready.load(Ordering::Acquire)
                            && pump.progress.cursor.caught_up(engine));
                    !done
                })
                .map(|(name, _)| name.clone())
                .collect();
            if lagging.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Error::Plan(format!(
                    "FLUSH gave up after {} s waiting for pumps {} to catch up",
                    timeout.as_secs(),
                    lagging.join(", ")
                )));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// `SHOW PUMPS`: every pump of the catalog, then every pump of the cluster's, with its
    /// state and counters (a cluster's pump counts only on the node running it).
    pub fn show(&self, engine: &Engine, cluster: &[ClusterPump]) -> Result<RecordBatch> {
        let pumps: Vec<(String, String, Option<String>)> = engine
            .pumps()
            .into_iter()
            .map(|p| (p.name, p.sql, None))
            .chain(cluster.iter().map(|p| {
                let elsewhere = match &p.node {
                    Some(node) => format!("running on {node}"),
                    None => "waiting for a node".to_string(),
                };
                (p.name.clone(), p.sql.clone(), Some(elsewhere))
            }))
            .collect();
        let running = self.running.lock();
        let mut states = Vec::with_capacity(pumps.len());
        let mut rows_in = Vec::with_capacity(pumps.len());
        let mut rows_out = Vec::with_capacity(pumps.len());
        let mut late_rows = Vec::with_capacity(pumps.len());
        let mut watermarks = Vec::with_capacity(pumps.len());
        for (name, _, elsewhere) in &pumps {
            let live = running.get(name);
            let failure = live.and_then(|p| p.progress.failure.lock().clone());
            states.push(match (live, failure) {
                (_, Some(reason)) => format!("failed: {reason}"),
                (Some(p), None) if !p.is_finished() => {
                    if p.progress.ready.load(Ordering::Acquire) {
                        "running".to_string()
                    } else {
                        "starting".to_string()
                    }
                }
                (Some(_), None) => "finished".to_string(),
                (None, _) => elsewhere.clone().unwrap_or_else(|| "stopped".to_string()),
            });
            rows_in.push(live.map_or(0, |p| p.progress.cursor.rows_in()));
            rows_out.push(live.map_or(0, |p| p.progress.rows_out.load(Ordering::Relaxed)));
            late_rows.push(live.map_or(0, |p| p.progress.cursor.late_rows()));
            watermarks.push(live.and_then(|p| p.progress.cursor.watermark_ms()));
        }
        let schema = Arc::new(Schema::new(vec![
            Field::new("name", DataType::Utf8, false),
            Field::new("state", DataType::Utf8, false),
            Field::new("rows_in", DataType::UInt64, false),
            Field::new("rows_out", DataType::UInt64, false),
            Field::new("late_rows", DataType::UInt64, false),
            Field::new(
                "watermark",
                DataType::Timestamp(datafusion::arrow::datatypes::TimeUnit::Millisecond, None),
                true,
            ),
            Field::new("statement", DataType::Utf8, false),
        ]));
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from_iter_values(
                pumps.iter().map(|(name, _, _)| name.as_str()),
            )),
            Arc::new(StringArray::from_iter_values(states)),
            Arc::new(UInt64Array::from(rows_in)),
            Arc::new(UInt64Array::from(rows_out)),
            Arc::new(UInt64Array::from(late_rows)),
            Arc::new(TimestampMillisecondArray::from(watermarks)),
            Arc::new(StringArray::from_iter_values(
                pumps.iter().map(|(_, sql, _)| crate::parser::one_line(sql)),
            )),
        ];
        Ok(RecordBatch::try_new(schema, columns)?)
    }
}

/// Where a [`Feed`] starts reading its source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeedStart {
    /// Where it stopped (or the oldest record, the first time): KDA's `LAST_STOPPED_POINT`.
    Resume,
    /// After the records there are now: KDA's `NOW`.
    Now,
    /// From the oldest record retained: KDA's `TRIM_HORIZON`.
    TrimHorizon,
}

/// Turns a batch of a feed's source rows into rows of its target.
pub type FeedTransform =
    Box<dyn FnMut(RecordBatch) -> datafusion::error::Result<RecordBatch> + Send>;

/// A pump written in Rust rather than SQL: every row of `source`, read through a cursor,
/// turned by `transform` into rows of `target` (the target's user columns first, then any of
/// its system columns to set). It writes and resumes like a pump — its output and read
/// positions in one log frame, exactly once — but is kept by its owner (an application's
/// inputs and outputs), not the catalog.
pub struct Feed {
    pub name: String,
    pub source: Arc<Stream>,
    pub target: Arc<Stream>,
    pub start: FeedStart,
    pub transform: FeedTransform,
}

impl PumpManager {
    /// Starts `feed` in the background.
    pub fn start_feed(&self, engine: &Engine, feed: Feed) -> Result<()> {
        let Feed {
            name,
            source,
            target,
            start,
            mut transform,
        } = feed;
        let saved = engine.pump_checkpoint(&name)?;
        let committed = target
            .commit_of(&engine.qualify(&name))
            .and_then(|bytes| PumpCheckpoint::from_bytes(&bytes));
        let resumed = match committed {
            Some(committed) if committed.epoch > saved.epoch => committed,
            _ => saved,
        };
        let checkpoint = match start {
            FeedStart::Resume => resumed,
            FeedStart::TrimHorizon => PumpCheckpoint {
                epoch: resumed.epoch,
                ..PumpCheckpoint::default()
            },
            FeedStart::Now => PumpCheckpoint {
                positions: source
                    .stats()
                    .iter()
                    .map(|shard| (source.name().to_string(), shard.index, shard.next_seq))
                    .collect(),
                stream_ids: [(source.name().to_string(), source.definition().id)].into(),
                watermark: None,
                epoch: resumed.epoch,
            },
        };
        if start != FeedStart::Resume {
            engine.save_pump_checkpoint(&name, &checkpoint)?;
        }
        let progress = Arc::new(PumpProgress {
            cursor: Arc::new(PumpCursor::resuming(checkpoint).for_pump(&name)),
            ..PumpProgress::default()
        });
        let rows = crate::continuous::follow(Arc::clone(&source), Arc::clone(&progress.cursor));
        let schema = rows.schema();
        let mapped = rows.map(move |batch| batch.and_then(&mut transform));
        let rows: SendableRecordBatchStream = Box::pin(
            datafusion::physical_plan::stream::RecordBatchStreamAdapter::new(schema, mapped),
        );
        progress.ready.store(true, Ordering::Release);
        let task = tokio::spawn(run(
            engine.clone(),
            engine.qualify(&name).into_owned(),
            PreparedPump {
                rows,
                target,
                progress: Arc::clone(&progress),
            },
            None,
        ));
        self.running
            .lock()
            .insert(name, RunningPump::new(progress, task));
        Ok(())
    }
}

/// Plans a pump's `INSERT INTO stream SELECT …` over unbounded streams read through the pump's
/// cursor, and starts its source.
async fn prepare(
    planner: &dyn ContinuousPlanner,
    sql: &str,
    progress: Arc<PumpProgress>,
) -> Result<PreparedPump> {
    let not_insert = || {
        Error::Plan(format!(
            "a pump runs INSERT INTO stream SELECT STREAM …; '{sql}' is not one"
        ))
    };
    let mut statements = parse_statements(sql)?;
    let statement = match (statements.pop(), statements.is_empty()) {
        (Some(SluiceStatement::DataFusion(statement)), true) => *statement,
        _ => return Err(not_insert()),
    };
    let (context, plan) = planner
        .plan_continuous(statement, Some(Arc::clone(&progress.cursor)))
        .await?;
    let LogicalPlan::Dml(dml) = plan else {
        return Err(not_insert());
    };
    let target_name = dml.table_name.table().to_string();
    let target = planner.engine().try_stream(&target_name).ok_or_else(|| {
        Error::Plan(format!(
            "a pump writes into a stream, and '{target_name}' is not one; CREATE STREAM it first"
        ))
    })?;
    let plan = ContinuousPlan::decide(dml.input.as_ref().clone())?;
    log::info!(
        "pump '{}' runs {}",
        progress.cursor.pump().unwrap_or_default(),
        plan.describe()
    );
    let rows = plan.start(&context).await?;
    progress.ready.store(true, Ordering::Release);
    Ok(PreparedPump {
        rows,
        target,
        progress,
    })
}

/// The stream a pump's `INSERT INTO target …` writes, from its SQL.
pub(crate) fn pump_target(sql: &str) -> Option<String> {
    use datafusion::sql::parser::Statement as DFStatement;
    use datafusion::sql::sqlparser::ast::{Statement, TableObject};
    let mut statements = parse_statements(sql).ok()?;
    let Some(SluiceStatement::DataFusion(statement)) = statements.pop() else {
        return None;
    };
    let DFStatement::Statement(statement) = *statement else {
        return None;
    };
    let Statement::Insert(insert) = *statement else {
        return None;
    };
    match &insert.table {
        TableObject::TableName(name) => crate::parser::object_name(name).ok(),
        _ => None,
    }
}

/// Where pump `name` resumes: the newer of its own checkpoint file and the commit it wrote with
/// its last output (the file is saved just after the output; a crash in between leaves the
/// commit newer).
pub(crate) fn resume_point(engine: &Engine, name: &str, sql: &str) -> Result<PumpCheckpoint> {
    let saved = engine.pump_checkpoint(name)?;
    let committed = pump_target(sql)
        .and_then(|target| engine.try_stream(&target))
        .and_then(|target| target.commit_of(name))
        .and_then(|bytes| PumpCheckpoint::from_bytes(&bytes));
    Ok(match committed {
        Some(committed) if committed.epoch > saved.epoch => committed,
        _ => saved,
    })
}

/// Runs a pump until its source ends, it fails, or it is stopped (its task aborted); into its
/// target stream here, or through the cluster's `output`.
async fn run(
    engine: Engine,
    name: String,
    prepared: PreparedPump,
    output: Option<Arc<dyn PumpOutput>>,
) {
    let PreparedPump {
        mut rows,
        target,
        progress,
    } = prepared;
    let sink = StreamSink::new(Arc::clone(&target)).with_settable_rowtime();
    while let Some(batch) = rows.next().await {
        // Where to resume once this batch is written: what was read when it came out (all of
        // it is in this batch, filtered away, or still held in an open window, which the
        // checkpoint accounts for), and the watermark then.
        let mut checkpoint = progress.cursor.checkpoint();
        checkpoint.epoch = progress.cursor.next_epoch();
        let written = async {
            let batch = batch?;
            let records = sink.records(&batch)?;
            let count = records.len() as u64;
            if let Some(output) = &output {
                if count > 0 {
                    output
                        .commit(records.into_records(), checkpoint)
                        .await
                        .map_err(|e| datafusion::error::DataFusionError::External(e.into()))?;
                }
                return Ok(count);
            }
            let target = Arc::clone(&target);
            let engine = engine.clone();
            let pump = name.clone();
            tokio::task::spawn_blocking(move || {
                // The output and the positions it came from, in one log frame: after a crash
                // the pump resumes exactly after what it wrote (exactly-once output).
                if records.len() > 0 {
                    records.append_committing_to(&target, &pump, &checkpoint.to_bytes())?;
                }
                engine.save_pump_checkpoint(&pump, &checkpoint)
            })
            .await
            .map_err(|e| datafusion::error::DataFusionError::External(Box::new(e)))?
            .map_err(crate::error::to_datafusion)?;
            Ok::<u64, datafusion::error::DataFusionError>(count)
        };
        match written.await {
            Ok(count) => {
                progress.rows_out.fetch_add(count, Ordering::Relaxed);
            }
            Err(e) => {
                let reason = Error::from(e).to_string();
                log::error!("pump '{name}' stopped: {reason}");
                *progress.failure.lock() = Some(reason);
                return;
            }
        }
    }
}
