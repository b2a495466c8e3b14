//! `GET /metrics`: the CloudWatch stream metrics Kinesis users watch, as Prometheus text —
//! per shard, records and bytes put, GetRecords calls, records and bytes read, iterator age —
//! and what each shard retains.

use std::collections::BTreeMap;
use std::fmt::Write;

use parking_lot::Mutex;
use sluice_engine::Engine;
use sluice_engine::sequence::shard_id;

#[derive(Debug, Default, Clone, Copy)]
struct ShardCounters {
    incoming_records: u64,
    incoming_bytes: u64,
    get_records_calls: u64,
    outgoing_records: u64,
    outgoing_bytes: u64,
    iterator_age_ms: i64,
    throttled: u64,
}

/// A counter's name, Prometheus type, help text, and how to read it from a shard's counters.
type Series = (
    &'static str,
    &'static str,
    &'static str,
    fn(&ShardCounters) -> i64,
);

/// Counters of the Kinesis API, by stream and shard.
#[derive(Debug, Default)]
pub struct Metrics {
    shards: Mutex<BTreeMap<(String, u32), ShardCounters>>,
}

impl Metrics {
    pub fn put(&self, stream: &str, shard: u32, records: u64, bytes: u64) {
        self.update(stream, shard, |c| {
            c.incoming_records += records;
            c.incoming_bytes += bytes;
        });
    }

    /// Counts `requests` (or PutRecords entries) refused by the shard's throughput limits.
    pub fn throttled(&self, stream: &str, shard: u32, requests: u64) {
        self.update(stream, shard, |c| c.throttled += requests);
    }

    pub fn got(&self, stream: &str, shard: u32, records: u64, bytes: u64, age_ms: i64) {
        self.update(stream, shard, |c| {
            c.get_records_calls += 1;
            c.outgoing_records += records;
            c.outgoing_bytes += bytes;
            c.iterator_age_ms = age_ms;
        });
    }

    fn update(&self, stream: &str, shard: u32, change: impl FnOnce(&mut ShardCounters)) {
        let mut shards = self.shards.lock();
        change(shards.entry((stream.to_string(), shard)).or_default());
    }

    /// The Prometheus text exposition of every counter, and of what the engine's shards hold.
    pub fn render(&self, engine: &Engine) -> String {
        let shards = self.shards.lock().clone();
        let mut out = String::new();
        let series: [Series; 7] = [
            (
                "sluice_kinesis_incoming_records_total",
                "counter",
                "Records put into the shard over the Kinesis API.",
                |c| c.incoming_records as i64,
            ),
            (
                "sluice_kinesis_incoming_bytes_total",
                "counter",
                "Bytes of record data put into the shard over the Kinesis API.",
                |c| c.incoming_bytes as i64,
            ),
            (
                "sluice_kinesis_get_records_total",
                "counter",
                "GetRecords calls on the shard.",
                |c| c.get_records_calls as i64,
            ),
            (
                "sluice_kinesis_outgoing_records_total",
                "counter",
                "Records returned by GetRecords from the shard.",
                |c| c.outgoing_records as i64,
            ),
            (
                "sluice_kinesis_outgoing_bytes_total",
                "counter",
                "Bytes of record data returned by GetRecords from the shard.",
                |c| c.outgoing_bytes as i64,
            ),
            (
                "sluice_kinesis_iterator_age_milliseconds",
                "gauge",
                "MillisBehindLatest of the shard's latest GetRecords.",
                |c| c.iterator_age_ms,
            ),
            (
                "sluice_kinesis_throttled_total",
                "counter",
                "Requests (or PutRecords entries) refused with ProvisionedThroughputExceededException.",
                |c| c.throttled as i64,
            ),
        ];
        for (name, kind, help, value) in series {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for ((stream, shard), counters) in &shards {
                let _ = writeln!(
                    out,
                    "{name}{{stream=\"{}\",shard=\"{}\"}} {}",
                    escape(stream),
                    shard_id(*shard),
                    value(counters)
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP sluice_shard_retained_records Records the shard retains.\n# TYPE sluice_shard_retained_records gauge"
        );
        let mut streams = engine.streams();
        streams.sort_by(|a, b| a.name().cmp(b.name()));
        for stream in &streams {
            for stats in stream.stats() {
                let _ = writeln!(
                    out,
                    "sluice_shard_retained_records{{stream=\"{}\",shard=\"{}\"}} {}",
                    escape(stream.name()),
                    shard_id(stats.index),
                    stats.records
                );
            }
        }
        let cache = engine.cache_stats();
        for (name, kind, help, value) in [
            (
                "sluice_segment_cache_bytes",
                "gauge",
                "Bytes of sealed segments held in memory (bounded by --cache-mb).",
                cache.bytes as u64,
            ),
            (
                "sluice_segment_cache_capacity_bytes",
                "gauge",
                "The most bytes of sealed segments held in memory.",
                cache.capacity as u64,
            ),
            (
                "sluice_segment_cache_hits_total",
                "counter",
                "Reads of sealed records answered from memory.",
                cache.hits,
            ),
            (
                "sluice_segment_cache_misses_total",
                "counter",
                "Reads of sealed records that loaded a segment from disk.",
                cache.misses,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        }
        out
    }
}

/// A label value as the exposition format escapes it.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
