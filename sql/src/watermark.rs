//! The watermark of a windowed continuous query: how far its time has certainly come, so
//! windows that end before it can close.
//!
//! A query reads one or more inputs (streams), each sharded. Per shard the tracker knows the
//! newest record read and the newest time seen in it. An input's watermark is:
//!
//! - with a shard that still has records not read: the least newest-time of the shards
//!   holding it back (a shard read to nothing holds it back entirely), less the delay;
//! - over event time, a shard read to its end keeps holding the watermark back until it has
//!   been quiet for the stream's idle timeout; then it stops counting, and with no shard
//!   holding it back the newest time of all counts, less the delay;
//! - over processing time (`ROWTIME`), a shard read to its end can only send rows newer than
//!   the clock, so with none holding it back the watermark is the clock.
//!
//! The query's watermark is the least of its inputs', and never goes back.
//!
//! # Example
//!
//! ```
//! use datafusion::arrow::datatypes::TimeUnit;
//! use sluice_sql::watermark::{ShardProgress, WatermarkRule, WatermarkTracker};
//!
//! let rule = WatermarkRule { delay: 5, idle_timeout_ms: 0, processing_time: false, unit: TimeUnit::Millisecond };
//! let mut tracker = WatermarkTracker::new(vec![rule], 0, None);
//! // Shard 0 has had records 1 and 2 appended; record 2 was read, the newest time in it 100.
//! tracker.observe(0, 0, 2, Some(100), 10);
//! let shards = [ShardProgress { index: 0, next_seq: 3, ending_seq: None }];
//! assert_eq!(tracker.advance(10, &[&shards[..]]), Some(95));
//! ```

use std::collections::HashMap;

use datafusion::arrow::datatypes::TimeUnit;

use crate::window::units_per_milli;

/// How one input's watermark follows its times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatermarkRule {
    /// How far the watermark trails the newest time, in the time column's unit.
    pub delay: i64,
    /// How long (ms of processing time) a shard read to its end keeps holding the watermark
    /// back over event time.
    pub idle_timeout_ms: i64,
    /// The time column is `ROWTIME`: the clock is the watermark once everything is read.
    pub processing_time: bool,
    /// The time column's unit.
    pub unit: TimeUnit,
}

impl WatermarkRule {
    fn in_unit(&self, ms: i64) -> i64 {
        let (mul, div) = units_per_milli(self.unit);
        ms * mul / div
    }
}

/// A shard as it is now: what the tracker asks of the stream when it advances.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardProgress {
    pub index: u32,
    /// The sequence number the next record appended gets (records below it exist).
    pub next_seq: u64,
    /// The last record of a shard closed by a split or merge.
    pub ending_seq: Option<u64>,
}

impl ShardProgress {
    /// The progress of an engine shard.
    pub fn of(shard: &sluice_engine::Shard) -> Self {
        Self {
            index: shard.index(),
            next_seq: shard.next_seq(),
            ending_seq: shard.ending_seq(),
        }
    }
}

/// How far one input has been read.
#[derive(Debug, Clone)]
struct InputProgress {
    rule: WatermarkRule,
    /// Per shard, the newest record read.
    last_seq: HashMap<u32, u64>,
    /// Per shard, when (processing time) a record was last read from it.
    last_read_ms: HashMap<u32, i64>,
    /// Per shard, the newest time seen.
    newest: HashMap<u32, i64>,
}

/// The watermark of a query over one or more inputs.
#[derive(Debug, Clone)]
pub struct WatermarkTracker {
    inputs: Vec<InputProgress>,
    /// When (ms) the query started: a shard never read from has been quiet since then.
    started_ms: i64,
    watermark: Option<i64>,
    next_idle_ms: Option<i64>,
}

impl WatermarkTracker {
    /// A tracker for inputs following `rules`, starting from a `restored` watermark (a pump's
    /// checkpoint) if there is one.
    pub fn new(rules: Vec<WatermarkRule>, started_ms: i64, restored: Option<i64>) -> Self {
        Self {
            inputs: rules
                .into_iter()
                .map(|rule| InputProgress {
                    rule,
                    last_seq: HashMap::new(),
                    last_read_ms: HashMap::new(),
                    newest: HashMap::new(),
                })
                .collect(),
            started_ms,
            watermark: restored,
            next_idle_ms: None,
        }
    }

    /// Notes that `input`'s shard `shard` has been read up to record `last_seq` at `now_ms`,
    /// the newest time among the records read being `newest_time`.
    pub fn observe(
        &mut self,
        input: usize,
        shard: u32,
        last_seq: u64,
        newest_time: Option<i64>,
        now_ms: i64,
    ) {
        let Some(input) = self.inputs.get_mut(input) else {
            return;
        };
        if let Some(newest) = newest_time {
            let max = input.newest.entry(shard).or_insert(newest);
            *max = (*max).max(newest);
        }
        let read = input.last_seq.entry(shard).or_insert(last_seq);
        *read = (*read).max(last_seq);
        input.last_read_ms.insert(shard, now_ms);
    }

    /// Moves the watermark at `now_ms`, given each input's shards as they are now, and
    /// returns it.
    pub fn advance(&mut self, now_ms: i64, shards: &[&[ShardProgress]]) -> Option<i64> {
        self.next_idle_ms = None;
        let mut least: Option<Option<i64>> = None;
        for (input, shards) in self.inputs.iter().zip(shards) {
            let (watermark, idle_at) = input.watermark(shards, now_ms, self.started_ms);
            if let Some(idle_at) = idle_at {
                self.next_idle_ms = Some(self.next_idle_ms.map_or(idle_at, |n| n.min(idle_at)));
            }
            least = Some(match least {
                None => watermark,
                Some(l) => l.min(watermark),
            });
        }
        if let Some(Some(candidate)) = least {
            self.watermark = Some(self.watermark.map_or(candidate, |w| w.max(candidate)));
        }
        self.watermark
    }

    /// The watermark, in the time column's unit.
    pub fn watermark(&self) -> Option<i64> {
        self.watermark
    }

    /// When (processing time, ms) a shard read to its end next turns idle and stops holding
    /// the watermark back: the clock brings work then.
    pub fn next_idle_ms(&self) -> Option<i64> {
        self.next_idle_ms
    }
}

impl InputProgress {
    /// This input's watermark, and when a shard of it next turns idle.
    fn watermark(
        &self,
        shards: &[ShardProgress],
        now: i64,
        started_ms: i64,
    ) -> (Option<i64>, Option<i64>) {
        let rule = &self.rule;
        let idle_timeout = if rule.processing_time {
            0
        } else {
            rule.idle_timeout_ms
        };
        let mut next_idle: Option<i64> = None;
        let mut holding: Option<Option<i64>> = None;
        let mut newest: Option<i64> = None;
        for shard in shards {
            let seen = self.newest.get(&shard.index).copied();
            newest = newest.max(seen);
            let read_to = self.last_seq.get(&shard.index).copied().unwrap_or(0);
            if shard.ending_seq.is_some_and(|end| read_to >= end) {
                continue; // split or merged, and read to its end: it sends nothing more
            }
            let unread = read_to + 1 < shard.next_seq;
            let quiet_since = self
                .last_read_ms
                .get(&shard.index)
                .copied()
                .unwrap_or(started_ms);
            let idle_at = quiet_since + idle_timeout;
            let idle = !unread && now >= idle_at;
            if !unread && !idle {
                next_idle = Some(next_idle.map_or(idle_at, |n| n.min(idle_at)));
            }
            if !idle {
                holding = Some(match holding {
                    None => seen,
                    Some(h) => h.min(seen),
                });
            }
        }
        let watermark = match (holding, rule.processing_time) {
            (Some(held), _) => held.map(|time| time - rule.delay),
            (None, true) => Some(rule.in_unit(now)),
            (None, false) => newest.map(|time| time - rule.delay),
        };
        (watermark, next_idle)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event_time(delay: i64, idle_timeout_ms: i64) -> WatermarkRule {
        WatermarkRule {
            delay,
            idle_timeout_ms,
            processing_time: false,
            unit: TimeUnit::Millisecond,
        }
    }

    fn shard(index: u32, next_seq: u64) -> ShardProgress {
        ShardProgress {
            index,
            next_seq,
            ending_seq: None,
        }
    }

    #[test]
    fn a_shard_with_unread_records_holds_the_watermark_at_its_newest_time() {
        let mut tracker = WatermarkTracker::new(vec![event_time(10, 0)], 0, None);
        tracker.observe(0, 0, 5, Some(1_000), 1);
        tracker.observe(0, 1, 3, Some(400), 1);
        // Shard 1 has records 4.. not read yet: it holds the watermark at 400 - 10.
        let shards = [shard(0, 6), shard(1, 9)];
        assert_eq!(tracker.advance(2, &[&shards[..]]), Some(390));
        // Read to its end, it lets go: the newest time of all counts.
        tracker.observe(0, 1, 8, Some(900), 3);
        assert_eq!(tracker.advance(3, &[&shards[..]]), Some(990));
    }

    #[test]
    fn a_shard_never_read_holds_everything_back() {
        let mut tracker = WatermarkTracker::new(vec![event_time(0, 0)], 0, None);
        tracker.observe(0, 0, 1, Some(500), 1);
        let shards = [shard(0, 2), shard(1, 4)];
        assert_eq!(tracker.advance(2, &[&shards[..]]), None);
    }

    #[test]
    fn a_quiet_shard_holds_the_watermark_until_the_idle_timeout() {
        let mut tracker = WatermarkTracker::new(vec![event_time(0, 1_000)], 0, None);
        tracker.observe(0, 0, 1, Some(100), 0);
        tracker.observe(0, 1, 1, Some(700), 500);
        let shards = [shard(0, 2), shard(1, 2)];
        // Both read to their end; shard 0 quiet since 0, shard 1 since 500.
        assert_eq!(tracker.advance(900, &[&shards[..]]), Some(100));
        assert_eq!(tracker.next_idle_ms(), Some(1_000));
        assert_eq!(tracker.advance(1_000, &[&shards[..]]), Some(700));
        assert_eq!(tracker.next_idle_ms(), Some(1_500));
        // Both idle: the newest time of all.
        assert_eq!(tracker.advance(1_500, &[&shards[..]]), Some(700));
        assert_eq!(tracker.next_idle_ms(), None);
    }

    #[test]
    fn over_processing_time_a_shard_read_to_its_end_lets_the_clock_through() {
        let rule = WatermarkRule {
            delay: 0,
            idle_timeout_ms: 60_000,
            processing_time: true,
            unit: TimeUnit::Microsecond,
        };
        let mut tracker = WatermarkTracker::new(vec![rule], 0, None);
        tracker.observe(0, 0, 1, Some(2_000), 2);
        let shards = [shard(0, 2)];
        // The idle timeout does not apply; the clock (5 ms) is the watermark, in µs.
        assert_eq!(tracker.advance(5, &[&shards[..]]), Some(5_000));
    }

    #[test]
    fn the_watermark_is_the_least_of_the_inputs_and_never_goes_back() {
        let mut tracker =
            WatermarkTracker::new(vec![event_time(0, 0), event_time(0, 0)], 0, Some(50));
        tracker.observe(0, 0, 1, Some(300), 1);
        tracker.observe(1, 0, 1, Some(200), 1);
        let (left, right) = ([shard(0, 2)], [shard(0, 2)]);
        assert_eq!(tracker.advance(1, &[&left[..], &right[..]]), Some(200));
        // A restarted reader with older times cannot move it back.
        let mut restored = WatermarkTracker::new(vec![event_time(0, 0)], 0, Some(250));
        restored.observe(0, 0, 1, Some(100), 1);
        assert_eq!(restored.advance(1, &[&left[..]]), Some(250));
    }

    #[test]
    fn a_closed_parent_read_to_its_end_no_longer_counts() {
        let mut tracker = WatermarkTracker::new(vec![event_time(0, 60_000)], 0, None);
        tracker.observe(0, 0, 4, Some(100), 1);
        tracker.observe(0, 1, 2, Some(900), 1);
        let parent = ShardProgress {
            index: 0,
            next_seq: 5,
            ending_seq: Some(4),
        };
        // The parent (ended, read to its end) is skipped; the child has unread records.
        let shards = [parent, shard(1, 7)];
        assert_eq!(tracker.advance(2, &[&shards[..]]), Some(900));
    }
}
