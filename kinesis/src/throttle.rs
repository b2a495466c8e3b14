//! Per-shard throughput limits, as Kinesis enforces them on a provisioned stream: 1,000 records
//! and 1 MiB per second of writes, 2 MiB and 5 GetRecords calls per second of reads. Off by
//! default (a local endpoint should not throttle a developer); `sluice serve
//! --kinesis-shard-limits` turns them on for testing how producers and consumers cope.
//!
//! Each shard has token buckets refilled continuously at the limit's rate and holding at most one
//! second's worth. A write takes its record and bytes up front, entry by entry, so a PutRecords
//! fails exactly the entries over the limit (`ProvisionedThroughputExceededException` per entry,
//! the rest land). A read is refused while the shard's read bytes are in debt: a GetRecords that
//! returned 10 MiB holds the next ones off for about five seconds, as in Kinesis.

use std::collections::HashMap;
use std::time::Instant;

use parking_lot::Mutex;

/// The per-shard rates enforced.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ShardLimits {
    pub write_records_per_second: f64,
    pub write_bytes_per_second: f64,
    pub read_bytes_per_second: f64,
    pub read_calls_per_second: f64,
}

impl ShardLimits {
    /// Kinesis's limits for a provisioned shard.
    pub fn kinesis() -> Self {
        Self {
            write_records_per_second: 1000.0,
            write_bytes_per_second: 1024.0 * 1024.0,
            read_bytes_per_second: 2.0 * 1024.0 * 1024.0,
            read_calls_per_second: 5.0,
        }
    }
}

/// A token bucket: `tokens` refill at `rate` per second up to `rate` (one second's burst).
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    rate: f64,
}

impl Bucket {
    fn new(rate: f64) -> Self {
        Self { tokens: rate, rate }
    }

    fn refill(&mut self, seconds: f64) {
        self.tokens = (self.tokens + seconds * self.rate).min(self.rate);
    }
}

#[derive(Debug, Clone, Copy)]
struct ShardBuckets {
    last: Instant,
    write_records: Bucket,
    write_bytes: Bucket,
    read_bytes: Bucket,
    read_calls: Bucket,
}

impl ShardBuckets {
    fn new(limits: &ShardLimits, now: Instant) -> Self {
        Self {
            last: now,
            write_records: Bucket::new(limits.write_records_per_second),
            write_bytes: Bucket::new(limits.write_bytes_per_second),
            read_bytes: Bucket::new(limits.read_bytes_per_second),
            read_calls: Bucket::new(limits.read_calls_per_second),
        }
    }

    fn refill(&mut self, now: Instant) {
        let seconds = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        for bucket in [
            &mut self.write_records,
            &mut self.write_bytes,
            &mut self.read_bytes,
            &mut self.read_calls,
        ] {
            bucket.refill(seconds);
        }
    }
}

/// The shards' buckets, when limits are on.
#[derive(Debug, Default)]
pub struct Throttle {
    limits: Option<ShardLimits>,
    shards: Mutex<HashMap<(String, u32), ShardBuckets>>,
}

impl Throttle {
    /// Enforces `limits` (none: never throttles).
    pub fn new(limits: Option<ShardLimits>) -> Self {
        Self {
            limits,
            shards: Mutex::default(),
        }
    }

    /// Whether limits are enforced.
    pub fn is_on(&self) -> bool {
        self.limits.is_some()
    }

    /// Takes one record of `bytes` from the shard's write allowance; false if it would exceed
    /// the limit (nothing is taken then).
    pub fn admit_write(&self, stream: &str, shard: u32, bytes: usize) -> bool {
        self.with_shard(stream, shard, |b| {
            let bytes = bytes as f64;
            if b.write_records.tokens < 1.0 || b.write_bytes.tokens < bytes {
                return false;
            }
            b.write_records.tokens -= 1.0;
            b.write_bytes.tokens -= bytes;
            true
        })
    }

    /// Takes one GetRecords call from the shard's allowance; false if calls are over the limit
    /// or earlier reads left the shard's read bytes in debt.
    pub fn admit_read(&self, stream: &str, shard: u32) -> bool {
        self.with_shard(stream, shard, |b| {
            if b.read_calls.tokens < 1.0 || b.read_bytes.tokens < 0.0 {
                return false;
            }
            b.read_calls.tokens -= 1.0;
            true
        })
    }

    /// Charges `bytes` a GetRecords returned to the shard's read allowance (it may go into debt).
    pub fn charge_read(&self, stream: &str, shard: u32, bytes: usize) {
        self.with_shard(stream, shard, |b| {
            b.read_bytes.tokens -= bytes as f64;
            true
        });
    }

    fn with_shard(
        &self,
        stream: &str,
        shard: u32,
        f: impl FnOnce(&mut ShardBuckets) -> bool,
    ) -> bool {
        let Some(limits) = &self.limits else {
            return true;
        };
        let now = Instant::now();
        let mut shards = self.shards.lock();
        let buckets = shards
            .entry((stream.to_string(), shard))
            .or_insert_with(|| ShardBuckets::new(limits, now));
        buckets.refill(now);
        f(buckets)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_over_a_shards_allowance_are_refused_and_others_pass() {
        let throttle = Throttle::new(Some(ShardLimits::kinesis()));
        let admitted = (0..1500)
            .filter(|_| throttle.admit_write("s", 0, 100))
            .count();
        // One second's burst (plus whatever refilled while looping).
        assert!((1000..1100).contains(&admitted), "{admitted}");
        assert!(
            throttle.admit_write("s", 1, 100),
            "another shard has its own allowance"
        );
        assert!(
            !throttle.admit_write("s", 2, 2 * 1024 * 1024),
            "more than a second's bytes"
        );
    }

    #[test]
    fn reads_in_byte_debt_wait_until_it_is_paid() {
        let throttle = Throttle::new(Some(ShardLimits::kinesis()));
        assert!(throttle.admit_read("s", 0));
        throttle.charge_read("s", 0, 10 * 1024 * 1024);
        assert!(!throttle.admit_read("s", 0));
        let off = Throttle::new(None);
        off.charge_read("s", 0, usize::MAX / 2);
        assert!(off.admit_read("s", 0) && off.admit_write("s", 0, usize::MAX / 2));
    }
}
