//! Memory is bounded by the segment cache and the open tails, not by how much a stream retains:
//! sealed segments leave memory when the cache is full and are read back from disk when a reader
//! reaches them, and opening a data folder reads segment footers, not records.

use std::sync::Arc;

use arrow::array::AsArray;
use arrow::datatypes::{DataType, Int64Type};
use sluice_engine::{
    Engine, EngineOptions, ManualClock, PutRecord, ShardIterator, StartPosition, StreamFormat,
    StreamSpec, fields,
};

type TestResult = Result<(), Box<dyn std::error::Error>>;

const START: i64 = 1_767_261_600_000; // 2026-01-01 10:00:00 UTC
const CACHE: usize = 2 * 1024 * 1024;
const RECORDS: i64 = 120_000;

fn options(dir: &std::path::Path, clock: &ManualClock) -> EngineOptions {
    let mut options = EngineOptions::new(dir)
        .with_clock(Arc::new(clock.clone()))
        .with_background(false)
        .with_cache_bytes(CACHE);
    options.seal_rows = 4096;
    options
}

fn spec() -> StreamSpec {
    StreamSpec::with_columns(
        "events",
        2,
        StreamFormat::Json,
        fields(&[("n", DataType::Int64), ("note", DataType::Utf8)]),
    )
}

/// Every `n` of a shard from the trim horizon, in order, read through a fresh iterator.
fn read_shard(stream: &sluice_engine::Stream, shard: u32) -> sluice_engine::Result<Vec<i64>> {
    let mut reader = ShardIterator::new(stream, shard, StartPosition::TrimHorizon)?;
    let mut out = Vec::new();
    loop {
        let batches = reader.next_batches(5000)?;
        if batches.is_empty() {
            return Ok(out);
        }
        for batch in batches {
            let n = batch
                .column_by_name("n")
                .expect("column n")
                .as_primitive::<Int64Type>();
            out.extend(n.values().iter().copied());
        }
    }
}

#[test]
fn retained_records_beyond_the_cache_live_on_disk_and_read_back_in_order() -> TestResult {
    let dir = tempfile::tempdir()?;
    let clock = ManualClock::new(START);
    let note = "x".repeat(200);
    {
        let engine = Engine::open(options(dir.path(), &clock))?;
        let stream = engine.create_stream(spec(), false)?;
        for start in (0..RECORDS).step_by(1000) {
            let records: Vec<PutRecord> = (start..start + 1000)
                .map(|n| {
                    PutRecord::new(
                        format!("k{}", n % 97),
                        format!(r#"{{"n":{n},"note":"{note}"}}"#),
                    )
                })
                .collect();
            stream.append(&records)?;
            clock.advance(10);
            let cached = engine.cache_stats();
            assert!(
                cached.bytes <= CACHE,
                "the cache holds {} bytes, over its {CACHE}",
                cached.bytes
            );
            let tails: usize = stream.shards().iter().map(|s| s.tail_bytes()).sum();
            assert!(
                tails <= 2 * 8 * 1024 * 1024,
                "tails hold {tails} bytes, over the sealing threshold"
            );
        }
        let retained: usize = stream.shards().iter().map(|s| s.retained_bytes()).sum();
        assert!(
            retained > 10 * CACHE,
            "the stream retains {retained} bytes, which should dwarf the cache"
        );

        let misses_before = engine.cache_stats().misses;
        let mut all: Vec<i64> = Vec::new();
        for shard in 0..2 {
            let ns = read_shard(&stream, shard)?;
            assert!(ns.windows(2).all(|w| w[0] < w[1]), "shard {shard} in order");
            all.extend(ns);
        }
        all.sort_unstable();
        assert_eq!(all, (0..RECORDS).collect::<Vec<_>>(), "every record once");
        let stats = engine.cache_stats();
        assert!(
            stats.misses > misses_before,
            "old segments were read from disk"
        );
        assert!(stats.bytes <= CACHE);
    }

    // Reopening reads footers only: nothing is cached until a reader asks.
    let engine = Engine::open(options(dir.path(), &clock))?;
    assert_eq!(engine.cache_stats().bytes, 0);
    let stream = engine.stream("events")?;
    let retained: usize = stream.stats().iter().map(|s| s.records).sum();
    assert_eq!(retained, RECORDS as usize);
    // AT_TIMESTAMP finds the record from a segment on disk: the 50,000th record arrived after
    // 50 appends of 10 ms each.
    let mut found = Vec::new();
    for shard in 0..2 {
        let mut reader =
            ShardIterator::new(&stream, shard, StartPosition::AtTimestamp(START + 500))?;
        let first = reader.next_batches(1)?;
        let n = first[0]
            .column_by_name("n")
            .expect("column n")
            .as_primitive::<Int64Type>()
            .value(0);
        found.push(n);
    }
    assert_eq!(found.iter().min(), Some(&50_000));
    let mut all: Vec<i64> = (0..2)
        .map(|shard| read_shard(&stream, shard))
        .collect::<Result<Vec<_>, _>>()?
        .concat();
    all.sort_unstable();
    assert_eq!(all.len(), RECORDS as usize);
    assert!(engine.cache_stats().bytes <= CACHE);
    Ok(())
}

#[test]
fn a_segment_deleted_from_under_the_engine_is_reported_by_name() -> TestResult {
    let dir = tempfile::tempdir()?;
    let clock = ManualClock::new(START);
    let engine = Engine::open(options(dir.path(), &clock).with_cache_bytes(0))?;
    let stream = engine.create_stream(spec(), false)?;
    let records: Vec<PutRecord> = (0..10)
        .map(|n| PutRecord::new("k", format!(r#"{{"n":{n},"note":"a"}}"#)))
        .collect();
    let put = stream.append(&records)?;
    engine.flush()?;
    let shard_dir = stream
        .dir()
        .join("shards")
        .join(put[0].shard_index.to_string());
    for entry in std::fs::read_dir(&shard_dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "arrow") {
            std::fs::remove_file(path)?;
        }
    }
    let error = read_shard(&stream, put[0].shard_index)
        .expect_err("the records are gone")
        .to_string();
    assert!(error.contains(".arrow"), "{error}");
    Ok(())
}

/// Every record of `chunks`, read (from disk, the cache being off) and counted.
fn rows_read(chunks: &[sluice_engine::Chunk]) -> sluice_engine::Result<usize> {
    chunks.iter().map(|c| c.batch().map(|b| b.num_rows())).sum()
}

/// The `.arrow` files in a shard's folder.
fn segment_files(stream: &sluice_engine::Stream, shard: u32) -> std::io::Result<Vec<String>> {
    let dir = stream.dir().join("shards").join(shard.to_string());
    let mut names: Vec<String> = std::fs::read_dir(dir)?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".arrow"))
        .collect();
    names.sort();
    Ok(names)
}

#[test]
fn a_slow_streams_small_segments_are_merged_and_a_crash_mid_merge_loses_nothing() -> TestResult {
    let dir = tempfile::tempdir()?;
    let backup = tempfile::tempdir()?;
    let clock = ManualClock::new(START);
    let mut one_shard = spec();
    one_shard.shards = 1;
    let engine = Engine::open(options(dir.path(), &clock).with_cache_bytes(0))?;
    let stream = engine.create_stream(one_shard, false)?;
    // A slow producer: five records a second, each second sealed by age.
    for second in 0..40 {
        let records: Vec<PutRecord> = (second * 5..second * 5 + 5)
            .map(|n| PutRecord::new("k", format!(r#"{{"n":{n},"note":"slow"}}"#)))
            .collect();
        stream.append(&records)?;
        clock.advance(1000);
        stream.seal(true)?;
    }
    let shard_dir = stream.dir().join("shards").join("0");
    for name in segment_files(&stream, 0)? {
        std::fs::copy(shard_dir.join(&name), backup.path().join(&name))?;
    }
    assert_eq!(segment_files(&stream, 0)?.len(), 40);

    // A query that started before the merge keeps reading the segments it started with.
    let snapshot = stream.snapshot()?;
    let mut merged_away = 0;
    loop {
        let merged = stream.compact()?;
        if merged == 0 {
            break;
        }
        merged_away += merged;
    }
    assert_eq!(merged_away, 32, "two runs of 16 merged");
    assert_eq!(stream.shards()[0].segment_count(), 10);
    let from_snapshot = rows_read(&snapshot[0].1)?;
    assert_eq!(from_snapshot, 200, "the snapshot's files outlive the merge");
    drop(snapshot);
    assert_eq!(segment_files(&stream, 0)?.len(), 10, "merged parts deleted");
    assert_eq!(read_shard(&stream, 0)?, (0..200).collect::<Vec<_>>());
    drop((stream, engine));

    // A crash between writing a merged segment and deleting its parts: both are on disk.
    for entry in std::fs::read_dir(backup.path())? {
        let entry = entry?;
        std::fs::copy(entry.path(), shard_dir.join(entry.file_name()))?;
    }
    let engine = Engine::open(options(dir.path(), &clock))?;
    let stream = engine.stream("events")?;
    assert_eq!(read_shard(&stream, 0)?, (0..200).collect::<Vec<_>>());
    assert_eq!(
        segment_files(&stream, 0)?.len(),
        10,
        "parts removed at open"
    );
    Ok(())
}

#[test]
fn a_query_that_started_before_records_expired_still_reads_them() -> TestResult {
    let dir = tempfile::tempdir()?;
    let clock = ManualClock::new(START);
    let engine = Engine::open(options(dir.path(), &clock).with_cache_bytes(0))?;
    let mut one_shard = spec();
    one_shard.shards = 1;
    let stream = engine.create_stream(one_shard, false)?;
    let records: Vec<PutRecord> = (0..50)
        .map(|n| PutRecord::new("k", format!(r#"{{"n":{n},"note":"old"}}"#)))
        .collect();
    stream.append(&records)?;
    stream.seal(true)?;
    let snapshot = stream.snapshot()?;
    clock.advance(25 * 3600 * 1000);
    assert_eq!(stream.expire()?, 50);
    assert!(
        read_shard(&stream, 0)?.is_empty(),
        "expired for new readers"
    );
    let rows = rows_read(&snapshot[0].1)?;
    assert_eq!(rows, 50, "the query that started before still reads them");
    assert_eq!(segment_files(&stream, 0)?.len(), 1);
    drop(snapshot);
    assert!(segment_files(&stream, 0)?.is_empty(), "deleted once unread");
    Ok(())
}
