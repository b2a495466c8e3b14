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
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{DataFusionError, Result as DFResult};
use datafusion::datasource::{provider_as_source, source_as_provider};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::{Expr, LogicalPlan, TableScanBuilder, TableType};
use datafusion::physical_expr::EquivalenceProperties;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PhysicalExpr, PlanProperties,
};
use datafusion::prelude::SessionContext;
use futures::TryStreamExt;
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// The tables of type `T` that `plan` scans, in plan order.
pub fn scans_of<T: TableProvider + 'static>(
    plan: &LogicalPlan,
) -> DFResult<Vec<Arc<dyn TableProvider>>> {
    let mut found = Vec::new();
    plan.apply(|node| {
        if let LogicalPlan::TableScan(scan) = node
            && let Ok(provider) = source_as_provider(&scan.source)
            && provider.downcast_ref::<T>().is_some()
        {
            found.push(provider);
        }
        Ok(TreeNodeRecursion::Continue)
    })?;
    Ok(found)
}

/// Batches queued to one execution before the sender waits for it.
const CHANNEL: usize = 4;

/// A query's physical plan with its inputs' scans reading from channels, run once per slice of
/// input.
pub struct BatchExec {
    physical: Arc<dyn ExecutionPlan>,
    inputs: usize,
    task_ctx: Arc<TaskContext>,
}

impl BatchExec {
    /// Plans `plan` with the scans of each input's table (by identity) reading rows of that
    /// input's schema sent to each execution instead.
    pub async fn plan(
        context: &SessionContext,
        plan: &LogicalPlan,
        inputs: &[(Arc<dyn TableProvider>, SchemaRef)],
    ) -> DFResult<Self> {
        let mut plan = plan.clone();
        for (input, (original, schema)) in inputs.iter().enumerate() {
            let table: Arc<dyn TableProvider> = Arc::new(ChannelRows {
                schema: Arc::clone(schema),
                input,
            });
            plan = replace_scan(&plan, table, |p| {
                std::ptr::addr_eq(p as *const dyn TableProvider, Arc::as_ptr(original))
            })?;
        }
        let state = context.state();
        let physical = state.create_physical_plan(&plan).await?;
        Ok(Self {
            physical,
            inputs: inputs.len(),
            task_ctx: state.task_ctx(),
        })
    }

    /// The output schema.
    pub fn schema(&self) -> SchemaRef {
        self.physical.schema()
    }

    /// Starts one execution. With one input the channel is bounded, so a reader cannot run
    /// ahead of the plan; with several (a join) it is not, since the plan may read one input
    /// to its end before it looks at the next.
    pub fn open(&self) -> DFResult<Running> {
        let (txs, rxs): (Vec<_>, Vec<_>) = (0..self.inputs)
            .map(|_| {
                if self.inputs == 1 {
                    let (tx, rx) = mpsc::channel(CHANNEL);
                    (Some(Sender::Bounded(tx)), Some(Receiver::Bounded(rx)))
                } else {
                    let (tx, rx) = mpsc::unbounded_channel();
                    (Some(Sender::Unbounded(tx)), Some(Receiver::Unbounded(rx)))
                }
            })
            .unzip();
        // A fresh copy of the plan for this execution: its scans holding this execution's
        // channels, every other operator's state (a join's dynamic filters, say) reset.
        let mut rxs = rxs;
        let plan = Arc::clone(&self.physical)
            .transform_up(|node| {
                if let Some(scan) = node.downcast_ref::<ChannelExec>() {
                    let rx = rxs.get_mut(scan.input).and_then(Option::take);
                    return Ok(Transformed::yes(Arc::new(scan.reading(rx)) as _));
                }
                Ok(Transformed::yes(node.reset_state()?))
            })?
            .data;
        if rxs.iter().any(Option::is_some) {
            return Err(DataFusionError::Internal(
                "a continuous query's plan does not read every input it was given".into(),
            ));
        }
        let stream = plan.execute(0, Arc::clone(&self.task_ctx))?;
        let task = tokio::spawn(stream.try_collect::<Vec<_>>());
        Ok(Running { txs, task })
    }

    /// Runs the plan over `rows` alone (a single-input plan).
    pub async fn run(&self, rows: RecordBatch) -> DFResult<Vec<RecordBatch>> {
        let mut running = self.open()?;
        running.send(0, rows).await;
        running.finish().await
    }
}

enum Sender {
    Bounded(mpsc::Sender<RecordBatch>),
    Unbounded(mpsc::UnboundedSender<RecordBatch>),
}

enum Receiver {
    Bounded(mpsc::Receiver<RecordBatch>),
    Unbounded(mpsc::UnboundedReceiver<RecordBatch>),
}

impl Receiver {
    async fn recv(&mut self) -> Option<RecordBatch> {
        match self {
            Receiver::Bounded(rx) => rx.recv().await,
            Receiver::Unbounded(rx) => rx.recv().await,
        }
    }
}

/// One execution in progress.
pub struct Running {
    txs: Vec<Option<Sender>>,
    task: JoinHandle<DFResult<Vec<RecordBatch>>>,
}

impl Running {
    /// Sends rows of input `input` to the execution.
    pub async fn send(&mut self, input: usize, batch: RecordBatch) {
        let sent = match &self.txs[input] {
            Some(Sender::Bounded(tx)) => tx.send(batch).await.is_ok(),
            Some(Sender::Unbounded(tx)) => tx.send(batch).is_ok(),
            None => true,
        };
        if !sent {
            // The execution ended early (a LIMIT, or an error that `finish` reports).
            self.txs[input] = None;
        }
    }

    /// Ends the inputs and returns the plan's rows.
    pub async fn finish(mut self) -> DFResult<Vec<RecordBatch>> {
        self.txs.clear();
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

/// The swapped-in table of one input.
#[derive(Debug)]
struct ChannelRows {
    schema: SchemaRef,
    input: usize,
}

impl std::fmt::Debug for Receiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Receiver")
    }
}

/// The scan of one input: reads the rows sent to its execution's channel.
#[derive(Debug)]
struct ChannelExec {
    input: usize,
    projection: Option<Vec<usize>>,
    rx: Mutex<Option<Receiver>>,
    properties: Arc<PlanProperties>,
}

impl ChannelExec {
    /// The same scan reading from `rx`.
    fn reading(&self, rx: Option<Receiver>) -> Self {
        Self {
            input: self.input,
            projection: self.projection.clone(),
            rx: Mutex::new(rx),
            properties: Arc::clone(&self.properties),
        }
    }
}

impl DisplayAs for ChannelExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ChannelExec: input={}", self.input)
    }
}

impl ExecutionPlan for ChannelExec {
    fn name(&self) -> &'static str {
        "ChannelExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DFResult<TreeNodeRecursion>,
    ) -> DFResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        if !children.is_empty() {
            return Err(DataFusionError::Internal(
                "ChannelExec has no children".into(),
            ));
        }
        Ok(Arc::new(self.reading(self.rx.lock().take())))
    }

    fn execute(
        &self,
        _partition: usize,
        _context: Arc<TaskContext>,
    ) -> DFResult<SendableRecordBatchStream> {
        let rx = self.rx.lock().take();
        let projection = self.projection.clone();
        let rows = futures::stream::unfold(rx, move |rx| {
            let projection = projection.clone();
            async move {
                let mut rx = rx?;
                let batch = rx.recv().await?;
                let batch = match &projection {
                    Some(columns) => batch.project(columns).map_err(DataFusionError::from),
                    None => Ok(batch),
                };
                Some((batch, Some(rx)))
            }
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(self.schema(), rows)))
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
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        let schema = match projection {
            Some(columns) => Arc::new(self.schema.project(columns)?),
            None => Arc::clone(&self.schema),
        };
        let properties = PlanProperties::new(
            EquivalenceProperties::new(schema),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        Ok(Arc::new(ChannelExec {
            input: self.input,
            projection: projection.cloned(),
            rx: Mutex::new(None),
            properties: Arc::new(properties),
        }))
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
