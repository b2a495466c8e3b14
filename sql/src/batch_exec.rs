//! Running a continuous query's own DataFusion plan over one slice of its input at a time.
//!
//! The scan of the stream being followed is swapped for a bounded table fed through a channel;
//! the physical plan is built once and executed again for every window (or every batch), so
//! each execution is an ordinary bounded DataFusion run — aggregates finish, errors belong to
//! the rows just sent.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::streaming::StreamingTable;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{DataFusionError, Result as DFResult};
use datafusion::datasource::{provider_as_source, source_as_provider};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::{Expr, LogicalPlan, TableScanBuilder, TableType};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::PartitionStream;
use datafusion::prelude::SessionContext;
use futures::TryStreamExt;
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Batches queued to one execution before the sender waits for it.
const CHANNEL: usize = 4;

/// A query's physical plan with one scan reading from a channel, run once per slice of input.
pub struct BatchExec {
    physical: Arc<dyn ExecutionPlan>,
    /// Where the next execution's scan takes its rows from.
    slot: Arc<Mutex<Option<mpsc::Receiver<RecordBatch>>>>,
    task_ctx: Arc<TaskContext>,
}

impl BatchExec {
    /// Plans `plan` with the scans whose provider `replaced` picks reading rows of `schema`
    /// sent to each execution instead.
    pub async fn plan(
        context: &SessionContext,
        plan: &LogicalPlan,
        schema: &SchemaRef,
        replaced: impl Fn(&dyn TableProvider) -> bool,
    ) -> DFResult<Self> {
        let slot = Arc::new(Mutex::new(None));
        let table: Arc<dyn TableProvider> = Arc::new(ChannelRows {
            schema: Arc::clone(schema),
            slot: Arc::clone(&slot),
        });
        let plan = replace_scan(plan, table, replaced)?;
        let state = context.state();
        let physical = state.create_physical_plan(&plan).await?;
        Ok(Self {
            physical,
            slot,
            task_ctx: state.task_ctx(),
        })
    }

    /// The output schema.
    pub fn schema(&self) -> SchemaRef {
        self.physical.schema()
    }

    /// Starts one execution.
    pub fn open(&self) -> DFResult<Running> {
        let (tx, rx) = mpsc::channel(CHANNEL);
        *self.slot.lock() = Some(rx);
        let stream = self.physical.execute(0, Arc::clone(&self.task_ctx));
        let unread = self.slot.lock().take().is_some();
        let stream = stream?;
        if unread {
            return Err(DataFusionError::Internal(
                "a continuous query's plan did not open its rows when it started".into(),
            ));
        }
        let task = tokio::spawn(stream.try_collect::<Vec<_>>());
        Ok(Running { tx: Some(tx), task })
    }

    /// Runs the plan over `rows` alone.
    pub async fn run(&self, rows: RecordBatch) -> DFResult<Vec<RecordBatch>> {
        let mut running = self.open()?;
        running.send(rows).await;
        running.finish().await
    }
}

/// One execution in progress.
pub struct Running {
    tx: Option<mpsc::Sender<RecordBatch>>,
    task: JoinHandle<DFResult<Vec<RecordBatch>>>,
}

impl Running {
    /// Sends rows to the execution.
    pub async fn send(&mut self, batch: RecordBatch) {
        if let Some(tx) = &self.tx
            && tx.send(batch).await.is_err()
        {
            // The execution ended early (a LIMIT, or an error that `finish` reports).
            self.tx = None;
        }
    }

    /// Ends the input and returns the plan's rows.
    pub async fn finish(mut self) -> DFResult<Vec<RecordBatch>> {
        self.tx = None;
        match (&mut self.task).await {
            Ok(rows) => rows,
            Err(e) => Err(DataFusionError::External(Box::new(e))),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The swapped-in scan: one partition reading the rows sent to the execution being started.
#[derive(Debug)]
struct ChannelRows {
    schema: SchemaRef,
    slot: Arc<Mutex<Option<mpsc::Receiver<RecordBatch>>>>,
}

impl PartitionStream for ChannelRows {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let rx = self.slot.lock().take();
        let rows = futures::stream::unfold(rx, |rx| async move {
            let mut rx = rx?;
            let batch = rx.recv().await?;
            Some((Ok(batch), Some(rx)))
        });
        Box::pin(RecordBatchStreamAdapter::new(
            Arc::clone(&self.schema),
            rows,
        ))
    }
}

#[async_trait]
impl TableProvider for ChannelRows {
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
        let partition: Arc<dyn PartitionStream> = Arc::new(ChannelRows {
            schema: Arc::clone(&self.schema),
            slot: Arc::clone(&self.slot),
        });
        StreamingTable::try_new(Arc::clone(&self.schema), vec![partition])?
            .scan(state, projection, filters, limit)
            .await
    }
}

/// `plan` with the scans `replaced` picks reading `table` instead.
fn replace_scan(
    plan: &LogicalPlan,
    table: Arc<dyn TableProvider>,
    replaced: impl Fn(&dyn TableProvider) -> bool,
) -> DFResult<LogicalPlan> {
    plan.clone()
        .transform_up(|node| {
            let LogicalPlan::TableScan(scan) = &node else {
                return Ok(Transformed::no(node));
            };
            if !source_as_provider(&scan.source).is_ok_and(|p| replaced(p.as_ref())) {
                return Ok(Transformed::no(node));
            }
            let replaced = TableScanBuilder::new(
                scan.table_name.clone(),
                provider_as_source(Arc::clone(&table)),
            )
            .with_projection(scan.projection.clone())
            .with_filters(scan.filters.clone())
            .with_fetch(scan.fetch)
            .build()?;
            Ok(Transformed::yes(LogicalPlan::TableScan(replaced)))
        })
        .map(|t| t.data)
}
