//! Filters that pass rows on at once, for continuous queries.
//!
//! DataFusion's `FilterExec` gathers its output into batches of `batch_size` rows before passing
//! them on, which suits a bounded query but would hold a continuous query's rows back until
//! thousands had matched. [`StreamingFilterRule`], a physical optimizer rule of the continuous
//! planner only, swaps each `FilterExec` for a [`StreamingFilterExec`] that evaluates the same
//! predicate (and projection and fetch) on each input batch and passes the matching rows on
//! straight away.

use std::fmt;
use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::compute::filter_record_batch;
use datafusion::common::cast::as_boolean_array;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{Result, internal_err};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, PhysicalExpr, PlanProperties,
};
use futures::StreamExt;

/// Replaces every `FilterExec` with a [`StreamingFilterExec`].
#[derive(Debug, Default)]
pub struct StreamingFilterRule;

impl PhysicalOptimizerRule for StreamingFilterRule {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| {
            let Some(filter) = node.downcast_ref::<FilterExec>() else {
                return Ok(Transformed::no(node));
            };
            let exec = StreamingFilterExec {
                predicate: Arc::clone(filter.predicate()),
                input: Arc::clone(filter.input()),
                projection: filter.projection().as_ref().map(|p| p.to_vec()),
                fetch: filter.fetch(),
                properties: Arc::clone(filter.properties()),
            };
            Ok(Transformed::yes(Arc::new(exec) as Arc<dyn ExecutionPlan>))
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "streaming_filter"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// A filter (with optional projection and row limit) that emits each input batch's matches
/// immediately.
#[derive(Debug)]
pub struct StreamingFilterExec {
    predicate: Arc<dyn PhysicalExpr>,
    input: Arc<dyn ExecutionPlan>,
    projection: Option<Vec<usize>>,
    fetch: Option<usize>,
    properties: Arc<PlanProperties>,
}

impl DisplayAs for StreamingFilterExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StreamingFilterExec: {}", self.predicate)?;
        if let Some(fetch) = self.fetch {
            write!(f, ", fetch={fetch}")?;
        }
        Ok(())
    }
}

impl ExecutionPlan for StreamingFilterExec {
    fn name(&self) -> &'static str {
        "StreamingFilterExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        f(&self.predicate)
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let Some(input) = children.pop().filter(|_| children.is_empty()) else {
            return internal_err!("StreamingFilterExec takes exactly one input");
        };
        Ok(Arc::new(Self {
            predicate: Arc::clone(&self.predicate),
            input,
            projection: self.projection.clone(),
            fetch: self.fetch,
            properties: Arc::clone(&self.properties),
        }))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let input = self.input.execute(partition, context)?;
        let schema = self.schema();
        let state = FilterState {
            input,
            predicate: Arc::clone(&self.predicate),
            projection: self.projection.clone(),
            remaining: self.fetch,
        };
        let output = futures::stream::unfold(state, |mut state| async move {
            if state.remaining == Some(0) {
                return None;
            }
            loop {
                let filtered = match state.input.next().await? {
                    Ok(batch) => filter(&batch, &state.predicate, state.projection.as_deref()),
                    Err(e) => Err(e),
                };
                let batch = match filtered {
                    Ok(batch) if batch.num_rows() == 0 => continue,
                    Ok(batch) => batch,
                    Err(e) => {
                        state.remaining = Some(0);
                        return Some((Err(e), state));
                    }
                };
                let batch = match state.remaining.as_mut() {
                    Some(left) => {
                        let take = batch.num_rows().min(*left);
                        *left -= take;
                        batch.slice(0, take)
                    }
                    None => batch,
                };
                return Some((Ok(batch), state));
            }
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, output)))
    }
}

struct FilterState {
    input: SendableRecordBatchStream,
    predicate: Arc<dyn PhysicalExpr>,
    projection: Option<Vec<usize>>,
    remaining: Option<usize>,
}

fn filter(
    batch: &RecordBatch,
    predicate: &Arc<dyn PhysicalExpr>,
    projection: Option<&[usize]>,
) -> Result<RecordBatch> {
    let mask = predicate.evaluate(batch)?.into_array(batch.num_rows())?;
    let mask = as_boolean_array(&mask)?;
    let filtered = filter_record_batch(batch, mask)?;
    Ok(match projection {
        Some(columns) => filtered.project(columns)?,
        None => filtered,
    })
}
