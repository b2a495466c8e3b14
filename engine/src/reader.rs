//! Readers: per-shard iterators over retained records, from any starting position.
//!
//! A [`ShardIterator`] is a cursor (the next sequence counter to read) on one shard; any number
//! of them can read the same shard independently, and none of them holds anything up. Batches come
//! back in the public layout (user columns, then `ROWTIME`, `_shard_id`, `_sequence_number`,
//! `_partition_key`, `_data`).

use std::sync::Arc;

use arrow::array::RecordBatch;

use crate::error::{Error, Result};
use crate::schema::PublicProjector;
use crate::sequence::{parse_sequence_number, shard_id};
use crate::stream::{Shard, Stream};

/// Where a reader starts, as in Kinesis's GetShardIterator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartPosition {
    /// The oldest retained record.
    TrimHorizon,
    /// Just after the newest record: only records appended from now on.
    Latest,
    /// At the record with this sequence number.
    AtSequenceNumber(String),
    /// Just after the record with this sequence number.
    AfterSequenceNumber(String),
    /// At the first record that arrived at or after this time (milliseconds since the epoch).
    AtTimestamp(i64),
}

/// A cursor over one shard's records.
#[derive(Debug, Clone)]
pub struct ShardIterator {
    shard: Arc<Shard>,
    projector: PublicProjector,
    position: u64,
}

impl ShardIterator {
    /// An iterator on shard `shard_index` of `stream` from `start`.
    pub fn new(stream: &Stream, shard_index: u32, start: StartPosition) -> Result<Self> {
        let shard = stream
            .shard(shard_index)
            .ok_or_else(|| Error::ShardNotFound {
                stream: stream.name().to_string(),
                shard: shard_id(shard_index),
            })?
            .clone();
        let counter_of = |text: &str| -> Result<u64> {
            let (shard_of_seq, counter) = parse_sequence_number(text)?;
            if shard_of_seq != shard_index {
                return Err(Error::InvalidArgument(format!(
                    "sequence number {text} belongs to {}, not {}",
                    shard_id(shard_of_seq),
                    shard_id(shard_index)
                )));
            }
            Ok(counter)
        };
        stream.expire()?;
        let position = match &start {
            StartPosition::TrimHorizon => shard.trim_horizon(),
            StartPosition::Latest => shard.next_seq(),
            StartPosition::AtSequenceNumber(text) => counter_of(text)?,
            StartPosition::AfterSequenceNumber(text) => counter_of(text)? + 1,
            StartPosition::AtTimestamp(ts) => shard.seq_at_timestamp(*ts),
        };
        Ok(Self {
            shard,
            projector: PublicProjector::new(stream.user_schema(), None)?,
            position,
        })
    }

    /// Up to `max_records` records from the cursor on, as public-layout batches; advances the
    /// cursor past them. An empty result means the reader has caught up for now.
    pub fn next_batches(&mut self, max_records: usize) -> Result<Vec<RecordBatch>> {
        let stored = self.shard.read_from(self.position, max_records);
        let mut out = Vec::with_capacity(stored.len());
        for batch in stored {
            if let Some(last) = last_seq(&batch) {
                self.position = last + 1;
            }
            out.push(self.projector.project(self.shard.index(), &batch)?);
        }
        Ok(out)
    }

    /// The sequence counter this iterator will read next.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// The shard this iterator reads.
    pub fn shard_index(&self) -> u32 {
        self.shard.index()
    }
}

fn last_seq(batch: &RecordBatch) -> Option<u64> {
    use arrow::array::AsArray;
    let seqs = batch
        .column(0)
        .as_primitive::<arrow::datatypes::UInt64Type>();
    (!seqs.is_empty()).then(|| seqs.value(seqs.len() - 1))
}
