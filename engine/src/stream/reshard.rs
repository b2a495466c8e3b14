//! Resharding: splitting a shard in two, merging two adjacent shards, and scaling a stream to a
//! shard count, as Kinesis's SplitShard, MergeShards and UpdateShardCount do.
//!
//! A reshard closes its parent shards — they take no more records and keep an ending sequence
//! number — and opens children that own the parents' hash keys, with `parent` /
//! `adjacent_parent` naming where they came from. Closed shards stay readable until their
//! records expire; readers that follow lineage ([`crate::StreamReader`]) finish a parent before
//! reading its children, so per-key order holds across a reshard.
//!
//! The change happens under the stream's append lock: every append routes either entirely
//! before it (into the parents) or entirely after it (into the children). The new shard list is
//! made durable (the engine's catalog) before any record can be routed by it.

use std::sync::Arc;

use crate::catalog::ShardDefinition;
use crate::error::{Error, Result};
use crate::routing::{HashKeyRange, even_split};
use crate::sequence::shard_id;

use super::{Shard, ShardSet, Stream};

/// The most shards a stream may have open at once.
pub const MAX_OPEN_SHARDS: usize = 1024;

/// A change to a stream's shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reshard {
    /// Splits `shard` into two: its hash keys below `new_starting_hash_key`, and the rest.
    Split {
        shard: u32,
        new_starting_hash_key: u128,
    },
    /// Merges two open shards whose hash-key ranges touch into one.
    Merge { shard: u32, adjacent: u32 },
    /// Splits and merges until `target` open shards split the hash keys evenly (Kinesis's
    /// `UNIFORM_SCALING`): at most double and at least half the open shards, as Kinesis allows.
    UniformScaling { target: u32 },
}

/// The shard list being reshaped: definitions, plus each shard's sequence state.
struct Plan<'a> {
    stream: &'a str,
    shards: Vec<ShardDefinition>,
    /// The last counter of each shard that exists now (its ending counter if it is closed).
    last_seq: Box<dyn Fn(u32) -> u64 + 'a>,
    next_index: u32,
}

impl Plan<'_> {
    fn open(&self, index: u32) -> Result<&ShardDefinition> {
        let shard = self
            .shards
            .iter()
            .find(|s| s.index == index)
            .ok_or_else(|| Error::ShardNotFound {
                stream: self.stream.to_string(),
                shard: shard_id(index),
            })?;
        if shard.ending_seq.is_some() {
            return Err(Error::ShardClosed {
                stream: self.stream.to_string(),
                shard: shard_id(index),
            });
        }
        Ok(shard)
    }

    fn close(&mut self, index: u32) {
        let ending = (self.last_seq)(index);
        if let Some(shard) = self.shards.iter_mut().find(|s| s.index == index) {
            shard.ending_seq = Some(ending);
        }
    }

    fn add(&mut self, range: HashKeyRange, parent: u32, adjacent_parent: Option<u32>) -> u32 {
        let index = self.next_index;
        self.next_index += 1;
        self.shards.push(ShardDefinition {
            index,
            hash_key_range: range,
            parent: Some(parent),
            adjacent_parent,
            ending_seq: None,
        });
        index
    }

    fn open_ranges(&self) -> Vec<(HashKeyRange, u32)> {
        let mut open: Vec<(HashKeyRange, u32)> = self
            .shards
            .iter()
            .filter(|s| s.ending_seq.is_none())
            .map(|s| (s.hash_key_range, s.index))
            .collect();
        open.sort_by_key(|(range, _)| range.start);
        open
    }

    fn split(&mut self, index: u32, at: u128) -> Result<[u32; 2]> {
        let range = self.open(index)?.hash_key_range;
        if at <= range.start || at > range.end {
            return Err(Error::InvalidArgument(format!(
                "NewStartingHashKey {at} used in SplitShard() on shard {} in stream {} is not both greater than the shard's StartingHashKey {} and at most its EndingHashKey {}",
                shard_id(index),
                self.stream,
                range.start,
                range.end
            )));
        }
        self.close(index);
        let low = self.add(
            HashKeyRange {
                start: range.start,
                end: at - 1,
            },
            index,
            None,
        );
        let high = self.add(
            HashKeyRange {
                start: at,
                end: range.end,
            },
            index,
            None,
        );
        Ok([low, high])
    }

    fn merge(&mut self, index: u32, adjacent: u32) -> Result<u32> {
        let a = self.open(index)?.hash_key_range;
        let b = self.open(adjacent)?.hash_key_range;
        let touching = (a.end < u128::MAX && a.end + 1 == b.start)
            || (b.end < u128::MAX && b.end + 1 == a.start);
        if index == adjacent || !touching {
            return Err(Error::InvalidArgument(format!(
                "shards {} and {} in stream {} are not an adjacent pair of shards eligible for merging",
                shard_id(index),
                shard_id(adjacent),
                self.stream
            )));
        }
        self.close(index);
        self.close(adjacent);
        Ok(self.add(
            HashKeyRange {
                start: a.start.min(b.start),
                end: a.end.max(b.end),
            },
            index,
            Some(adjacent),
        ))
    }

    /// Splits at every boundary of an even split into `target` ranges the open shards lack,
    /// then merges the shards inside each target range, pairwise from the left: only real
    /// splits and merges, so every child has at most two parents, as in Kinesis.
    fn scale(&mut self, target: u32) -> Result<()> {
        let open = self.open_ranges().len() as u32;
        if target == 0 || target as usize > MAX_OPEN_SHARDS {
            return Err(Error::InvalidArgument(format!(
                "TargetShardCount {target} is out of range; a stream has 1 to {MAX_OPEN_SHARDS} shards"
            )));
        }
        if target > open.saturating_mul(2) {
            return Err(Error::LimitExceeded(format!(
                "UpdateShardCount cannot scale up over double your current open shard count. Current open shard count: {open} Target shard count: {target}"
            )));
        }
        if target.saturating_mul(2) < open {
            return Err(Error::LimitExceeded(format!(
                "UpdateShardCount cannot scale down below half your current open shard count. Current open shard count: {open} Target shard count: {target}"
            )));
        }
        let targets = even_split(target);
        for boundary in targets.iter().skip(1).map(|r| r.start) {
            let open = self.open_ranges();
            if let Some(&(range, index)) = open.iter().find(|(r, _)| r.contains(boundary))
                && range.start != boundary
            {
                self.split(index, boundary)?;
            }
        }
        for wanted in &targets {
            loop {
                let inside: Vec<u32> = self
                    .open_ranges()
                    .into_iter()
                    .filter(|(r, _)| wanted.contains(r.start))
                    .map(|(_, index)| index)
                    .collect();
                if inside.len() < 2 {
                    break;
                }
                self.merge(inside[0], inside[1])?;
            }
        }
        Ok(())
    }
}

impl Stream {
    /// Applies `change` to the stream's shards. `persist` is handed the whole new shard list
    /// before any record can be routed by it (the engine saves its catalog there); if it fails,
    /// nothing changes. Returns the indexes of the shards opened.
    pub(crate) fn reshard(
        &self,
        change: Reshard,
        persist: impl FnOnce(&[ShardDefinition]) -> Result<()>,
    ) -> Result<Vec<u32>> {
        // The append lock: no append is routed while the shards change.
        let _appends = self.wal.lock();
        let current = Arc::clone(&self.shards.read());
        let existing = current.all.len();
        let mut plan = Plan {
            stream: &self.definition.name,
            shards: current.all.iter().map(|s| s.definition()).collect(),
            last_seq: Box::new(|index| {
                current
                    .all
                    .iter()
                    .find(|s| s.index == index)
                    .map_or(0, |s| s.next_seq() - 1)
            }),
            next_index: current.all.iter().map(|s| s.index + 1).max().unwrap_or(0),
        };
        match change {
            Reshard::Split {
                shard,
                new_starting_hash_key,
            } => {
                plan.split(shard, new_starting_hash_key)?;
            }
            Reshard::Merge { shard, adjacent } => {
                plan.merge(shard, adjacent)?;
            }
            Reshard::UniformScaling { target } => plan.scale(target)?,
        }
        if plan.open_ranges().len() > MAX_OPEN_SHARDS {
            return Err(Error::LimitExceeded(format!(
                "stream {} would have more than {MAX_OPEN_SHARDS} open shards",
                self.definition.name
            )));
        }
        let definitions = plan.shards;
        let mut created = Vec::new();
        for definition in &definitions[existing..] {
            let dir = self.dir.join("shards").join(definition.index.to_string());
            std::fs::create_dir_all(&dir)
                .map_err(|e| Error::io("creating shard folder", &dir, e))?;
            created.push(Arc::new(Shard::new(
                definition,
                dir,
                Arc::clone(&self.stored_schema),
                Vec::new(),
                Arc::clone(&self.runtime.cache),
            )));
        }
        persist(&definitions)?;
        for (shard, definition) in current.all.iter().zip(&definitions) {
            if shard.is_open() && definition.ending_seq.is_some() {
                shard.close();
            }
        }
        let mut all: Vec<Arc<Shard>> = current.all.to_vec();
        all.extend(created);
        *self.shards.write() = Arc::new(ShardSet::new(all));
        // Wakes tailing readers, so they find the new shards.
        self.appends.send_modify(|n| *n += 1);
        Ok(definitions[existing..]
            .iter()
            .filter(|d| d.ending_seq.is_none())
            .map(|d| d.index)
            .collect())
    }
}
