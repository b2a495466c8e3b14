//! The segment cache: which sealed batches stay in memory.
//!
//! A shard keeps every retained record on disk, in segments; only its open tail and the
//! segments in this cache are in memory. The cache is shared by every stream of an engine and
//! holds at most its capacity in bytes, evicting the least recently read segment first, so the
//! memory a stream costs is bounded by the cache and the tails, not by how much it retains. A
//! freshly sealed segment enters the cache (readers that follow a stream read it next); a
//! reader replaying older records loads each segment from disk as it reaches it.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};

use arrow::array::RecordBatch;
use parking_lot::Mutex;

/// A point-in-time view of a [`SegmentCache`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheStats {
    /// The most bytes the cache holds.
    pub capacity: usize,
    /// Bytes of the batches held now.
    pub bytes: usize,
    /// Segments held now.
    pub segments: usize,
    /// Reads answered from memory.
    pub hits: u64,
    /// Reads that loaded a segment from disk.
    pub misses: u64,
}

/// A least-recently-used cache of sealed batches, bounded in bytes.
#[derive(Debug)]
pub struct SegmentCache {
    capacity: usize,
    state: Mutex<CacheState>,
    next_id: AtomicU64,
    hits: AtomicU64,
    misses: AtomicU64,
}

#[derive(Debug, Default)]
struct CacheState {
    entries: HashMap<u64, Entry>,
    /// Entries by when they were last used (a counter), oldest first.
    by_use: BTreeMap<u64, u64>,
    clock: u64,
    bytes: usize,
}

#[derive(Debug)]
struct Entry {
    batch: RecordBatch,
    bytes: usize,
    used: u64,
}

impl SegmentCache {
    /// A cache holding at most `capacity` bytes of batches.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            state: Mutex::new(CacheState::default()),
            next_id: AtomicU64::new(1),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// A fresh key for a segment.
    pub(crate) fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// The batch cached under `id`, marked as just used; a miss is counted (the caller reads
    /// the segment from disk next).
    pub(crate) fn get(&self, id: u64) -> Option<RecordBatch> {
        let found = self.lookup(id);
        if found.is_none() {
            self.misses.fetch_add(1, Ordering::Relaxed);
        }
        found
    }

    /// [`Self::get`] for a caller that only asks whether the batch is in memory: a miss is
    /// counted by the [`Self::get`] that follows it, not here.
    pub(crate) fn lookup(&self, id: u64) -> Option<RecordBatch> {
        let mut state = self.state.lock();
        state.clock += 1;
        let now = state.clock;
        let entry = state.entries.get_mut(&id)?;
        let previous = std::mem::replace(&mut entry.used, now);
        let batch = entry.batch.clone();
        state.by_use.remove(&previous);
        state.by_use.insert(now, id);
        drop(state);
        self.hits.fetch_add(1, Ordering::Relaxed);
        Some(batch)
    }

    /// Caches `batch` under `id`, evicting the least recently used batches to stay within the
    /// capacity. A batch larger than the whole cache is not kept.
    pub(crate) fn insert(&self, id: u64, batch: &RecordBatch) {
        let bytes = batch.get_array_memory_size();
        if bytes > self.capacity {
            return;
        }
        let mut state = self.state.lock();
        state.remove(id);
        while state.bytes + bytes > self.capacity {
            let Some((_, oldest)) = state.by_use.pop_first() else {
                break;
            };
            if let Some(evicted) = state.entries.remove(&oldest) {
                state.bytes -= evicted.bytes;
            }
        }
        state.clock += 1;
        let used = state.clock;
        state.by_use.insert(used, id);
        state.bytes += bytes;
        state.entries.insert(
            id,
            Entry {
                batch: batch.clone(),
                bytes,
                used,
            },
        );
    }

    /// Forgets the batch cached under `id` (its segment is gone).
    pub(crate) fn remove(&self, id: u64) {
        self.state.lock().remove(id);
    }

    /// What the cache holds now, and how reads have fared.
    pub fn stats(&self) -> CacheStats {
        let state = self.state.lock();
        CacheStats {
            capacity: self.capacity,
            bytes: state.bytes,
            segments: state.entries.len(),
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
        }
    }
}

impl CacheState {
    fn remove(&mut self, id: u64) {
        if let Some(entry) = self.entries.remove(&id) {
            self.by_use.remove(&entry.used);
            self.bytes -= entry.bytes;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{ArrayRef, Int64Array};
    use std::sync::Arc;

    fn batch(rows: usize) -> RecordBatch {
        let column: ArrayRef = Arc::new(Int64Array::from(vec![7i64; rows]));
        RecordBatch::try_from_iter([("x", column)]).expect("batch")
    }

    #[test]
    fn evicts_the_least_recently_used_within_capacity() {
        let one = batch(1000).get_array_memory_size();
        let cache = SegmentCache::new(one * 2 + one / 2);
        cache.insert(1, &batch(1000));
        cache.insert(2, &batch(1000));
        assert!(cache.get(1).is_some(), "1 is now the most recently used");
        cache.insert(3, &batch(1000));
        assert!(cache.get(2).is_none(), "2 was the least recently used");
        assert!(cache.get(1).is_some() && cache.get(3).is_some());
        let stats = cache.stats();
        assert_eq!((stats.segments, stats.bytes), (2, one * 2));
        assert!(stats.bytes <= stats.capacity);
        assert_eq!((stats.hits, stats.misses), (3, 1));
    }

    #[test]
    fn a_batch_larger_than_the_cache_is_not_kept_and_removal_frees_bytes() {
        let cache = SegmentCache::new(batch(10).get_array_memory_size());
        cache.insert(1, &batch(100_000));
        assert_eq!(cache.stats().segments, 0);
        cache.insert(2, &batch(10));
        cache.insert(2, &batch(10));
        assert_eq!(cache.stats().segments, 1);
        cache.remove(2);
        assert_eq!((cache.stats().segments, cache.stats().bytes), (0, 0));
    }
}
