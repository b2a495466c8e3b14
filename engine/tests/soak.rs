//! A soak run, bounded in time: producers append as fast as they can while a reader replays the
//! stream from its trim horizon far behind them, with the background sealer, retention and
//! segment merging running. Memory must not follow the retained data: the segment cache never
//! passes its capacity, the tails never pass the sealing thresholds, and the process's resident
//! memory grows by a small fraction of what the stream retains meanwhile. The samples are
//! printed (`--nocapture`). `SLUICE_SOAK_SECONDS` sets the length (default 12);
//! `sluice-bench soak` is the long version against the real server.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arrow::datatypes::DataType;
use sluice_engine::{
    Durability, Engine, EngineOptions, PutRecord, ShardIterator, StartPosition, StreamFormat,
    StreamSpec, fields,
};

type TestResult = Result<(), Box<dyn std::error::Error>>;

const CACHE: usize = 8 * 1024 * 1024;
const SHARDS: u32 = 4;

/// Resident memory of this process, in bytes.
fn rss() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}

#[test]
fn memory_stays_flat_while_the_stream_grows() -> TestResult {
    let seconds: u64 = std::env::var("SLUICE_SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(12);
    let dir = tempfile::tempdir()?;
    let options = EngineOptions::new(dir.path())
        .with_durability(Durability::Buffered)
        .with_cache_bytes(CACHE);
    let (seal_rows, seal_bytes) = (options.seal_rows, options.seal_bytes);
    let engine = Arc::new(Engine::open(options)?);
    let stream = engine.create_stream(
        StreamSpec::with_columns(
            "soak",
            SHARDS,
            StreamFormat::Json,
            fields(&[("n", DataType::Int64), ("note", DataType::Utf8)]),
        ),
        false,
    )?;
    let stop = Arc::new(AtomicBool::new(false));
    let appended = Arc::new(AtomicU64::new(0));
    let replayed = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for producer in 0..2u64 {
        let (stream, stop, appended) = (
            Arc::clone(&stream),
            Arc::clone(&stop),
            Arc::clone(&appended),
        );
        workers.push(std::thread::spawn(move || -> sluice_engine::Result<()> {
            let mut n = producer * 1_000_000_000;
            while !stop.load(Ordering::Relaxed) {
                let records: Vec<PutRecord> = (n..n + 500)
                    .map(|i| {
                        PutRecord::new(
                            format!("k{}", i % 1009),
                            format!(r#"{{"n":{i},"note":"soak record {i:012} abcdefghijklmnopqrstuvwxyz"}}"#),
                        )
                    })
                    .collect();
                stream.append(&records)?;
                appended.fetch_add(500, Ordering::Relaxed);
                n += 500;
            }
            Ok(())
        }));
    }
    {
        let (stream, stop, replayed) = (
            Arc::clone(&stream),
            Arc::clone(&stop),
            Arc::clone(&replayed),
        );
        workers.push(std::thread::spawn(move || -> sluice_engine::Result<()> {
            let mut readers = (0..SHARDS)
                .map(|s| ShardIterator::new(&stream, s, StartPosition::TrimHorizon))
                .collect::<Result<Vec<_>, _>>()?;
            while !stop.load(Ordering::Relaxed) {
                for reader in &mut readers {
                    let rows: usize = reader.next_batches(100)?.iter().map(|b| b.num_rows()).sum();
                    replayed.fetch_add(rows as u64, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Ok(())
        }));
    }

    let started = Instant::now();
    let mut samples = Vec::new();
    while started.elapsed() < Duration::from_secs(seconds) {
        std::thread::sleep(Duration::from_millis(500));
        let cache = engine.cache_stats();
        let tails: Vec<usize> = stream.shards().iter().map(|s| s.tail_bytes()).collect();
        let retained: usize = stream.shards().iter().map(|s| s.retained_bytes()).sum();
        assert!(cache.bytes <= CACHE, "cache at {} bytes", cache.bytes);
        for tail in &tails {
            assert!(*tail <= 2 * seal_bytes, "a tail holds {tail} bytes");
        }
        let records: usize = stream.stats().iter().map(|s| s.tail_records).sum();
        assert!(
            records <= SHARDS as usize * 2 * seal_rows,
            "tails hold {records} records"
        );
        samples.push((started.elapsed().as_secs_f64(), rss(), retained));
    }
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.join().map_err(|_| "a worker panicked")??;
    }

    for (at, rss, retained) in samples.iter().step_by((samples.len() / 8).max(1)) {
        println!(
            "t={at:>5.1} s  RSS {:>7.1} MB  retained {:>7.1} MB",
            *rss as f64 / 1e6,
            *retained as f64 / 1e6
        );
    }
    let (_, rss_quarter, retained_quarter) = samples[samples.len() / 4];
    let rss_peak = samples[samples.len() / 4..]
        .iter()
        .map(|s| s.1)
        .max()
        .unwrap_or(0);
    let (_, _, retained_end) = samples[samples.len() - 1];
    let data_growth = retained_end.saturating_sub(retained_quarter) as u64;
    let rss_growth = rss_peak.saturating_sub(rss_quarter);
    println!(
        "after the first quarter: retained +{:.1} MB, RSS +{:.1} MB; {} appended, {} replayed; cache {:?}",
        data_growth as f64 / 1e6,
        rss_growth as f64 / 1e6,
        appended.load(Ordering::Relaxed),
        replayed.load(Ordering::Relaxed),
        engine.cache_stats()
    );
    assert!(
        data_growth > 4 * CACHE as u64,
        "the stream should outgrow the cache several times over (grew {data_growth} bytes)"
    );
    assert!(
        rss_growth < data_growth / 4,
        "memory followed the data: RSS +{rss_growth} bytes while retained data grew {data_growth}"
    );
    assert!(
        replayed.load(Ordering::Relaxed) > 0 && engine.cache_stats().misses > 0,
        "the reader replayed segments from disk"
    );
    Ok(())
}
