//! Continuous queries: `SELECT STREAM …` runs for as long as its reader wants rows.
//!
//! In a continuous query every stream is an unbounded DataFusion table
//! ([`StreamingTable`] marked infinite) with one [`ShardTail`] partition per shard. A tail reads
//! the shard's retained records from the oldest on, then waits on the stream's append signal and
//! yields each new batch as it lands, so the DataFusion plan over it (filters, projections,
//! scalar functions, `CASE`, `LIKE`, regular expressions) runs batch by batch forever. Plans
//! that cannot run on unbounded input are refused by DataFusion's own checks.

use std::collections::VecDeque;
use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::TableProvider;
use datafusion::catalog::streaming::StreamingTable;
use datafusion::common::Result as DFResult;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::PartitionStream;
use sluice_engine::{ShardIterator, StartPosition, Stream};

use crate::error::to_datafusion;

/// Records read from a shard per step.
const READ_BATCH: usize = 8192;

/// One shard of a stream, read from `start` and then followed as records arrive.
#[derive(Debug)]
pub struct ShardTail {
    stream: Arc<Stream>,
    shard: u32,
    start: StartPosition,
}

impl ShardTail {
    pub fn new(stream: Arc<Stream>, shard: u32, start: StartPosition) -> Self {
        Self {
            stream,
            shard,
            start,
        }
    }
}

struct TailState {
    stream: Arc<Stream>,
    reader: Option<ShardIterator>,
    appends: tokio::sync::watch::Receiver<u64>,
    pending: VecDeque<RecordBatch>,
}

impl PartitionStream for ShardTail {
    fn schema(&self) -> &SchemaRef {
        self.stream.public_schema()
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let schema = Arc::clone(self.stream.public_schema());
        let appends = self.stream.watch_appends();
        let reader = ShardIterator::new(&self.stream, self.shard, self.start.clone());
        let state = match reader {
            Ok(reader) => Ok(TailState {
                stream: Arc::clone(&self.stream),
                reader: Some(reader),
                appends,
                pending: VecDeque::new(),
            }),
            Err(e) => Err(to_datafusion(e)),
        };
        let batches = futures::stream::unfold(Some(state), |state| async move {
            let mut tail = match state? {
                Ok(tail) => tail,
                // Report a failure to start once, then end.
                Err(e) => return Some((Err(e), None)),
            };
            loop {
                if let Some(batch) = tail.pending.pop_front() {
                    return Some((Ok(batch), Some(Ok(tail))));
                }
                // Mark the current append count seen *before* reading, so an append that lands
                // after the read still wakes us.
                tail.appends.borrow_and_update();
                let reader = tail.reader.as_mut()?;
                match reader.next_batches(READ_BATCH) {
                    Ok(batches) if !batches.is_empty() => tail.pending.extend(batches),
                    Ok(_) => {
                        if tail.appends.changed().await.is_err() {
                            // The stream is gone: nothing more will arrive.
                            return None;
                        }
                    }
                    Err(e) => {
                        let name = tail.stream.name().to_string();
                        log::warn!("continuous read of stream '{name}' failed: {e}");
                        return Some((Err(to_datafusion(e)), None));
                    }
                }
            }
        });
        Box::pin(RecordBatchStreamAdapter::new(schema, batches))
    }
}

/// The unbounded table a continuous query sees for `stream`.
pub fn continuous_table(stream: Arc<Stream>) -> DFResult<Arc<dyn TableProvider>> {
    let partitions: Vec<Arc<dyn PartitionStream>> = stream
        .shards()
        .iter()
        .map(|shard| {
            Arc::new(ShardTail::new(
                Arc::clone(&stream),
                shard.index(),
                StartPosition::TrimHorizon,
            )) as Arc<dyn PartitionStream>
        })
        .collect();
    let table = StreamingTable::try_new(Arc::clone(stream.public_schema()), partitions)?
        .with_infinite_table(true);
    Ok(Arc::new(table))
}
