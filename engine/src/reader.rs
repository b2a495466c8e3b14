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
            })?;
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
            StartPosition::AtTimestamp(ts) => shard.seq_at_timestamp(*ts)?,
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
        Ok(self
            .next_batches_ending(max_records)?
            .into_iter()
            .map(|(batch, _)| batch)
            .collect())
    }

    /// [`Self::next_batches`], each batch with the counter just after its last record (where a
    /// reader that has handed on this batch, and no further, resumes).
    pub fn next_batches_ending(&mut self, max_records: usize) -> Result<Vec<(RecordBatch, u64)>> {
        let stored = self.shard.read_from(self.position, max_records)?;
        let mut out = Vec::with_capacity(stored.len());
        for batch in stored {
            if let Some(last) = last_seq(&batch) {
                self.position = last + 1;
            }
            out.push((
                self.projector.project(self.shard.index(), &batch)?,
                self.position,
            ));
        }
        Ok(out)
    }

    /// Takes KPL aggregated records apart into their user records (for SQL and pumps; see
    /// [`PublicProjector::deaggregating`]).
    pub fn deaggregating(mut self, format: crate::StreamFormat) -> Self {
        self.projector = self.projector.deaggregating(format);
        self
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

/// One shard's records from a [`StreamReader::read`].
#[derive(Debug)]
pub struct ShardRead {
    /// The shard the records came from.
    pub shard: u32,
    /// Public-layout batches, in sequence order.
    pub batches: Vec<RecordBatch>,
    /// For each batch, the counter just after its last record.
    pub ends: Vec<u64>,
    /// The counter the reader will read next from this shard.
    pub position: u64,
}

/// Every shard of a stream, followed through resharding: shards that a split or merge opens
/// later are picked up (from their first record), and a child shard is read only once its
/// parents have been read to their ends, so records of one partition key come out in order
/// across a reshard, as Kinesis readers (the KCL) promise.
#[derive(Debug)]
pub struct StreamReader {
    stream: Arc<Stream>,
    /// One iterator per shard, in index order.
    iterators: Vec<ShardIterator>,
    deaggregate: Option<crate::StreamFormat>,
}

impl StreamReader {
    /// A reader over every shard of `stream`, each starting where `start` says.
    pub fn new(stream: Arc<Stream>, mut start: impl FnMut(u32) -> StartPosition) -> Result<Self> {
        let iterators = stream
            .shards()
            .iter()
            .map(|shard| ShardIterator::new(&stream, shard.index(), start(shard.index())))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            stream,
            iterators,
            deaggregate: None,
        })
    }

    /// Takes KPL aggregated records apart into their user records, in every shard's reads.
    pub fn deaggregating(mut self, format: crate::StreamFormat) -> Self {
        self.deaggregate = Some(format);
        self.iterators = self
            .iterators
            .into_iter()
            .map(|i| i.deaggregating(format))
            .collect();
        self
    }

    /// The stream read.
    pub fn stream(&self) -> &Arc<Stream> {
        &self.stream
    }

    /// Up to `max_records` records from each shard that is ready to read, per shard; advances
    /// past them. Empty when the reader has caught up for now.
    pub fn read(&mut self, max_records: usize) -> Result<Vec<ShardRead>> {
        self.pick_up_new_shards()?;
        let mut out = Vec::new();
        for i in 0..self.iterators.len() {
            if !self.ready(i) {
                continue;
            }
            let iterator = &mut self.iterators[i];
            let read = iterator.next_batches_ending(max_records)?;
            if !read.is_empty() {
                let (batches, ends) = read.into_iter().unzip();
                out.push(ShardRead {
                    shard: iterator.shard_index(),
                    batches,
                    ends,
                    position: iterator.position(),
                });
            }
        }
        Ok(out)
    }

    /// `(shard, next counter)` for every shard followed: what a checkpoint saves.
    pub fn positions(&self) -> impl Iterator<Item = (u32, u64)> + '_ {
        self.iterators
            .iter()
            .map(|it| (it.shard_index(), it.position()))
    }

    /// Whether everything appended so far has been read.
    pub fn caught_up(&self) -> bool {
        self.stream.shards().len() == self.iterators.len()
            && self
                .iterators
                .iter()
                .all(|it| it.position() >= it.shard.next_seq())
    }

    /// Whether the shard at position `i` has been read to the end of a closed shard.
    fn finished(&self, i: usize) -> bool {
        let it = &self.iterators[i];
        it.shard.ending_seq().is_some_and(|end| it.position() > end)
    }

    /// Whether the shard at position `i` may be read: its parents (if followed) are finished.
    fn ready(&self, i: usize) -> bool {
        let shard = &self.iterators[i].shard;
        [shard.parent(), shard.adjacent_parent()]
            .into_iter()
            .flatten()
            .all(|parent| {
                match self
                    .iterators
                    .binary_search_by_key(&parent, |it| it.shard_index())
                {
                    Ok(p) => self.finished(p),
                    Err(_) => true,
                }
            })
    }

    fn pick_up_new_shards(&mut self) -> Result<()> {
        let shards = self.stream.shards();
        if shards.len() == self.iterators.len() {
            return Ok(());
        }
        for shard in shards.iter().skip(self.iterators.len()) {
            // Born after this reader started: every record of it is new to the reader.
            let mut iterator =
                ShardIterator::new(&self.stream, shard.index(), StartPosition::TrimHorizon)?;
            if let Some(format) = self.deaggregate {
                iterator = iterator.deaggregating(format);
            }
            self.iterators.push(iterator);
        }
        Ok(())
    }
}
