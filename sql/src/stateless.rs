//! Stateless pumps (filters, projections, scalar functions over one stream) run their plan
//! once per batch read, so a row the query fails on — a division by zero, a cast that does not
//! fit — is found, reported to `error_stream` with its stream, shard, sequence number and
//! values, and skipped, while the rest of the batch and the pump carry on.

use std::collections::VecDeque;
use std::sync::Arc;

use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Int64Type, TimeUnit};
use datafusion::catalog::TableProvider;
use datafusion::common::Result as DFResult;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::prelude::SessionContext;
use futures::StreamExt;
use sluice_engine::schema::{ROWTIME, SEQUENCE_NUMBER};
use sluice_engine::{ErrorReport, Stream};

/// `ERROR_NAME` of a row a pump's query failed on.
pub const PUMP_ERROR: &str = "Pump_Error";
use sluice_engine::sequence::parse_sequence_number;

use crate::batch_exec::{BatchExec, scans_of};
use crate::continuous::ContinuousTable;

/// A pump's stateless query over exactly one stream, as the streaming planner decided it:
/// run batch by batch so a row it fails on is reported and skipped.
#[derive(Debug)]
pub struct IsolatedQuery {
    plan: LogicalPlan,
    provider: Arc<dyn TableProvider>,
    pump: String,
}

impl IsolatedQuery {
    /// The isolated query `plan` is, if it is a pump's over one stream; `Ok(None)` otherwise
    /// (an interactive `SELECT STREAM` reports its errors to whoever reads it).
    pub fn decide(plan: &LogicalPlan) -> DFResult<Option<Self>> {
        let scans = scans_of::<ContinuousTable>(plan)?;
        let [provider] = scans.as_slice() else {
            return Ok(None);
        };
        let Some(table) = provider.downcast_ref::<ContinuousTable>() else {
            return Ok(None);
        };
        let Some(pump) = table.cursor().and_then(|c| c.pump()).map(str::to_string) else {
            return Ok(None);
        };
        Ok(Some(Self {
            plan: plan.clone(),
            provider: Arc::clone(provider),
            pump,
        }))
    }

    /// The query's plan.
    pub fn plan(&self) -> &LogicalPlan {
        &self.plan
    }

    /// Starts the query batch by batch.
    pub async fn start(self, context: &SessionContext) -> DFResult<SendableRecordBatchStream> {
        let Self {
            plan,
            provider,
            pump,
        } = self;
        let (plan, provider) = (&plan, &provider);
        let Some(table) = provider.downcast_ref::<ContinuousTable>() else {
            return datafusion::common::plan_err!("an isolated query reads a stream");
        };
        let stream = Arc::clone(table.stream());
        let exec = BatchExec::plan(
            context,
            plan,
            &[(Arc::clone(provider), Arc::clone(stream.public_schema()))],
        )
        .await?;
        let schema = exec.schema();
        let state = Isolated {
            input: table.rows(),
            exec,
            stream,
            pump,
            output: VecDeque::new(),
        };
        let rows = futures::stream::unfold(state, |mut state| async move {
            loop {
                if let Some(batch) = state.output.pop_front() {
                    return Some((Ok(batch), state));
                }
                let batch = match state.input.next().await? {
                    Ok(batch) => batch,
                    Err(e) => return Some((Err(e), state)),
                };
                if let Err(e) = state.process(batch).await {
                    return Some((Err(e), state));
                }
            }
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, rows)))
    }
}

struct Isolated {
    input: SendableRecordBatchStream,
    exec: BatchExec,
    stream: Arc<Stream>,
    pump: String,
    output: VecDeque<RecordBatch>,
}

impl Isolated {
    /// Runs the plan over one batch; if it fails, over each row alone, reporting the rows it
    /// fails on.
    async fn process(&mut self, batch: RecordBatch) -> DFResult<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        match self.exec.run(batch.clone()).await {
            Ok(rows) => {
                self.output.extend(rows);
                return Ok(());
            }
            Err(e) if batch.num_rows() == 1 => {
                report(
                    Arc::clone(&self.stream),
                    self.pump.clone(),
                    &batch,
                    vec![(0, e.to_string())],
                )
                .await;
                return Ok(());
            }
            Err(_) => {}
        }
        let mut failures = Vec::new();
        for row in 0..batch.num_rows() {
            match self.exec.run(batch.slice(row, 1)).await {
                Ok(rows) => self.output.extend(rows),
                Err(e) => failures.push((row, e.to_string())),
            }
        }
        report(
            Arc::clone(&self.stream),
            self.pump.clone(),
            &batch,
            failures,
        )
        .await;
        Ok(())
    }
}

/// Sends the failed rows of `batch` to `error_stream`.
async fn report(
    stream: Arc<Stream>,
    pump: String,
    batch: &RecordBatch,
    failures: Vec<(usize, String)>,
) {
    let sequence = batch
        .column_by_name(SEQUENCE_NUMBER)
        .map(|c| c.as_string::<i32>().clone());
    let users = stream.user_schema().fields().len();
    let rowtimes = batch
        .column_by_name(ROWTIME)
        .and_then(|c| cast(c, &DataType::Timestamp(TimeUnit::Millisecond, None)).ok())
        .and_then(|c| cast(&c, &DataType::Int64).ok())
        .map(|c| c.as_primitive::<Int64Type>().clone());
    let mut reports = Vec::new();
    for (row, reason) in failures {
        let Some((shard, seq)) = sequence
            .as_ref()
            .filter(|s| s.is_valid(row))
            .and_then(|s| parse_sequence_number(s.value(row)).ok())
        else {
            continue;
        };
        let values = row_json(batch, row, users).unwrap_or_default();
        log::warn!(
            "pump '{}' skipped a record of '{}' it failed on: {reason}",
            pump,
            stream.name()
        );
        reports.push(ErrorReport {
            shard_index: shard,
            seq,
            name: PUMP_ERROR,
            reason: format!("pump '{}': {reason}; row: {values}", pump),
            data_rowtime_ms: rowtimes.as_ref().map(|t| t.value(row)),
            data: Some(values.into_bytes()),
            pump: Some(pump.clone()),
        });
    }
    if reports.is_empty() {
        return;
    }
    match tokio::task::spawn_blocking(move || stream.report(reports)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => log::error!("pump '{}' could not report to error_stream: {e}", pump),
        Err(e) => log::error!("pump '{}' could not report to error_stream: {e}", pump),
    }
}

/// One row's user columns as a JSON object.
fn row_json(batch: &RecordBatch, row: usize, users: usize) -> Option<String> {
    let columns: Vec<usize> = (0..users).collect();
    let one = batch.slice(row, 1).project(&columns).ok()?;
    let mut buffer = Vec::new();
    {
        let mut writer = arrow_json::LineDelimitedWriter::new(&mut buffer);
        writer.write(&one).ok()?;
        writer.finish().ok()?;
    }
    Some(String::from_utf8_lossy(&buffer).trim().to_string())
}
