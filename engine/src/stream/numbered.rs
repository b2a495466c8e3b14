//! Appending records that were numbered elsewhere: a cluster owner logs records to shared
//! storage first (which hands out their sequence numbers and arrival times) and then appends
//! them here with those numbers; a node taking a shard over appends what earlier owners logged.
//! The same write-ahead log, tail and group commit as [`Stream::append`]; only the numbering
//! is the caller's.

use super::{DecodeFailure, Numbered, Stream};
use crate::error::{Error, Result};
use crate::wal::WalEntry;

/// A record with the sequence number and arrival time it was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NumberedRecord<'a> {
    pub seq: u64,
    pub arrival_ms: i64,
    pub partition_key: &'a str,
    pub data: &'a [u8],
}

impl Stream {
    /// Appends `records` to shard `shard_index` with their own sequence numbers, which must
    /// follow on from the shard's: records the shard already holds (below its next sequence
    /// number) are skipped, so appending the same records again changes nothing; a gap is an
    /// error. Returns how many records were appended.
    pub fn append_numbered(
        &self,
        shard_index: u32,
        records: &[NumberedRecord<'_>],
    ) -> Result<usize> {
        let durable_at;
        let appended;
        {
            let mut wal = self.wal.lock();
            if self.dropped.load(std::sync::atomic::Ordering::Acquire) {
                return Err(Error::StreamNotFound(self.definition.name.clone()));
            }
            let set = std::sync::Arc::clone(&self.shards.read());
            let shard = set
                .all
                .iter()
                .find(|s| s.index == shard_index)
                .ok_or_else(|| {
                    Error::InvalidArgument(format!(
                        "stream '{}' has no shard {shard_index}",
                        self.definition.name
                    ))
                })?;
            let next = shard.next_seq();
            let fresh: Vec<&NumberedRecord<'_>> =
                records.iter().filter(|r| r.seq >= next).collect();
            if fresh.is_empty() {
                return Ok(0);
            }
            if let Some((at, record)) = fresh
                .iter()
                .enumerate()
                .find(|(at, r)| r.seq != next + *at as u64)
            {
                return Err(Error::InvalidArgument(format!(
                    "stream '{}' shard {shard_index}: record {} was numbered {} where {} comes next",
                    self.definition.name,
                    at,
                    record.seq,
                    next + at as u64
                )));
            }
            let run: Vec<Numbered<'_>> = fresh
                .iter()
                .map(|r| Numbered {
                    seq: r.seq,
                    arrival_ms: r.arrival_ms,
                    partition_key: r.partition_key,
                    data: r.data,
                })
                .collect();
            let (batch, errors) = self.build_batch(shard_index, &run)?;
            let failures: Vec<DecodeFailure> = errors
                .into_iter()
                .map(|(offset, reason)| run[offset].failure(shard_index, reason))
                .collect();
            let entries: Vec<WalEntry<'_>> = run
                .iter()
                .map(|n| WalEntry {
                    shard: shard_index,
                    seq: n.seq,
                    arrival_ms: n.arrival_ms,
                    partition_key: n.partition_key,
                    data: n.data,
                })
                .collect();
            durable_at = wal.write(&entries)?;
            let now = self.runtime.clock.now_millis();
            self.publish_logged(&mut wal, failures, [(&**shard, batch)], now);
            appended = run.len();
        }
        self.group_commit.wait(durable_at)?;
        Ok(appended)
    }
}

#[cfg(test)]
mod tests {
    use crate::{Engine, EngineOptions, ShardIterator, StartPosition, StreamSpec};

    use super::NumberedRecord;

    #[test]
    fn numbered_records_keep_their_numbers_and_times_and_repeat_harmlessly()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let engine = Engine::open(EngineOptions::new(dir.path()))?;
        let stream = engine.create_stream(StreamSpec::raw("s", 2), false)?;
        let year_ago = 1_733_500_000_000;
        // A shard numbers its records from 1.
        let records: Vec<NumberedRecord<'_>> = (1..=5)
            .map(|i| NumberedRecord {
                seq: i,
                arrival_ms: year_ago + i as i64,
                partition_key: "k",
                data: b"x",
            })
            .collect();
        assert_eq!(stream.append_numbered(1, &records[..3])?, 3);
        // Overlapping the shard's records: only the new ones land.
        assert_eq!(stream.append_numbered(1, &records)?, 2);
        assert_eq!(stream.append_numbered(1, &records)?, 0);
        // A gap is refused, saying where.
        let gap = [NumberedRecord {
            seq: 9,
            ..records[0]
        }];
        let err = stream.append_numbered(1, &gap).expect_err("a gap");
        assert!(
            err.to_string().contains("numbered 9 where 6 comes next"),
            "{err}"
        );
        assert!(stream.append_numbered(7, &records).is_err());
        // An ordinary append continues the numbers.
        let put = stream.append(&[crate::PutRecord {
            explicit_hash_key: Some(u128::MAX),
            ..crate::PutRecord::new("k", "y")
        }])?;
        assert_eq!((put[0].shard_index, put[0].seq), (1, 6));
        let mut reader = ShardIterator::new(&stream, 1, StartPosition::TrimHorizon)?;
        let rows: usize = reader.next_batches(100)?.iter().map(|b| b.num_rows()).sum();
        assert_eq!(rows, 6);
        drop(stream);
        drop(engine);
        // And they survive a restart (they went through the write-ahead log).
        let engine = Engine::open(EngineOptions::new(dir.path()))?;
        let stream = engine.stream("s")?;
        assert_eq!(stream.shard(1).map(|s| s.next_seq()), Some(7));
        Ok(())
    }
}
