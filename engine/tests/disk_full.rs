//! A full disk: appends fail with an error that says so, nothing acknowledged is damaged, and
//! appends resume once space returns — checked on a real, small filesystem (a tmpfs), so the
//! `ENOSPC` comes from the kernel in whatever write it happens to hit: a log frame half written,
//! a segment, the log's rotation.
//!
//! Mounting needs root (CI runs as root). Elsewhere the test says it was skipped, unless `CI` is
//! set, where not being able to mount is a failure.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use arrow::array::AsArray;
use arrow::datatypes::{DataType, Int64Type};
use sluice_engine::{
    Durability, Engine, EngineOptions, ManualClock, PutRecord, ShardIterator, StartPosition,
    StreamFormat, StreamSpec, fields,
};

type TestResult = Result<(), Box<dyn std::error::Error>>;

const START: i64 = 1_767_261_600_000; // 2026-01-01 10:00:00 UTC

/// A tmpfs mounted for the test's life.
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Option<Self> {
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        mounted.then(|| Self {
            dir: dir.to_path_buf(),
        })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.dir).status();
    }
}

fn options(dir: &Path, clock: &ManualClock, seal_rows: usize) -> EngineOptions {
    let mut options = EngineOptions::new(dir)
        .with_clock(Arc::new(clock.clone()))
        .with_background(false)
        .with_durability(Durability::Fsync);
    options.seal_rows = seal_rows;
    options.seal_bytes = usize::MAX;
    options
}

/// Every `n` of every shard from the trim horizon, by shard, in the order read.
fn read_all(engine: &Engine) -> sluice_engine::Result<BTreeMap<u32, Vec<i64>>> {
    let stream = engine.stream("events")?;
    let mut out = BTreeMap::new();
    for shard in stream.shards().iter() {
        let mut reader = ShardIterator::new(&stream, shard.index(), StartPosition::TrimHorizon)?;
        let ns: &mut Vec<i64> = out.entry(shard.index()).or_default();
        loop {
            let batches = reader.next_batches(10_000)?;
            if batches.is_empty() {
                break;
            }
            for batch in batches {
                let n = batch
                    .column_by_name("n")
                    .expect("n")
                    .as_primitive::<Int64Type>();
                ns.extend(n.values().iter().copied());
            }
        }
    }
    Ok(out)
}

fn batch(first: i64, count: i64) -> Vec<PutRecord> {
    let pad = "p".repeat(400);
    (first..first + count)
        .map(|n| PutRecord::new(format!("k{n}"), format!(r#"{{"n":{n},"pad":"{pad}"}}"#)))
        .collect()
}

/// Appends batches until one fails; returns the acknowledged `n`s and the error.
fn append_until_full(engine: &Engine, next: &mut i64) -> (Vec<i64>, String) {
    let stream = engine.stream("events").expect("stream");
    let mut acknowledged = Vec::new();
    loop {
        match stream.append(&batch(*next, 100)) {
            Ok(_) => acknowledged.extend(*next..*next + 100),
            Err(e) => return (acknowledged, e.to_string()),
        }
        *next += 100;
        assert!(*next < 1_000_000, "the disk never filled");
    }
}

fn assert_exactly(found: &BTreeMap<u32, Vec<i64>>, acknowledged: &[i64]) {
    for (shard, ns) in found {
        assert!(
            ns.windows(2).all(|w| w[0] < w[1]),
            "shard {shard} out of order"
        );
    }
    let mut all: Vec<i64> = found.values().flatten().copied().collect();
    all.sort_unstable();
    let mut expected = acknowledged.to_vec();
    expected.sort_unstable();
    assert_eq!(all.len(), expected.len(), "records lost or duplicated");
    assert_eq!(all, expected);
}

#[test]
fn a_full_disk_while_sealing_segments_refuses_appends_until_space_returns() -> TestResult {
    fill_and_recover(2000, "writing segment")
}

#[test]
fn a_full_disk_mid_log_frame_cuts_the_torn_frame_and_keeps_what_was_acknowledged() -> TestResult {
    // Nothing seals: the log takes every write, and the disk fills part way through a frame.
    fill_and_recover(usize::MAX, "appending to write-ahead log")
}

/// Fills the disk through appends, checks the error and the records, frees space, appends
/// again, restarts: the first failure must be in `failing` (what was being written).
fn fill_and_recover(seal_rows: usize, failing: &str) -> TestResult {
    let dir = tempfile::tempdir()?;
    let Some(_tmpfs) = Tmpfs::mount(dir.path(), "24m") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must be able to mount a tmpfs for the disk-full test (run as root)"
        );
        eprintln!("skipped: cannot mount a tmpfs here (needs root)");
        return Ok(());
    };
    let ballast = dir.path().join("ballast");
    std::fs::write(&ballast, vec![0u8; 16 * 1024 * 1024])?;
    let data = dir.path().join("data");
    let clock = ManualClock::new(START);
    let mut acknowledged = Vec::new();
    let mut next = 0;
    {
        let engine = Engine::open(options(&data, &clock, seal_rows))?;
        engine.create_stream(
            StreamSpec::with_columns(
                "events",
                2,
                StreamFormat::Json,
                fields(&[("n", DataType::Int64), ("pad", DataType::Utf8)]),
            ),
            false,
        )?;

        let (acked, error) = append_until_full(&engine, &mut next);
        acknowledged.extend(acked);
        assert!(
            error.contains("No space left on device") && error.contains(failing),
            "the error says the disk is full while {failing}: {error}"
        );
        assert!(
            acknowledged.len() > 1000,
            "{} before full",
            acknowledged.len()
        );
        // Still full: the next appends fail too, and nothing acknowledged is touched.
        for _ in 0..3 {
            let (acked, error) = append_until_full(&engine, &mut next);
            assert!(error.contains("No space left on device"), "{error}");
            acknowledged.extend(acked);
            next += 100;
        }
        assert_exactly(&read_all(&engine)?, &acknowledged);

        // Space returns: appends and sealing resume.
        std::fs::remove_file(&ballast)?;
        let stream = engine.stream("events")?;
        for _ in 0..5 {
            stream.append(&batch(next, 100))?;
            acknowledged.extend(next..next + 100);
            next += 100;
        }
        assert_exactly(&read_all(&engine)?, &acknowledged);
    }

    // After a restart (replaying the log the disk filled in the middle of), the same records,
    // each once, in order per shard; then everything seals.
    let engine = Engine::open(options(&data, &clock, seal_rows))?;
    assert_exactly(&read_all(&engine)?, &acknowledged);
    let stream = engine.stream("events")?;
    stream.append(&batch(next, 100))?;
    acknowledged.extend(next..next + 100);
    engine.flush()?;
    assert_exactly(&read_all(&engine)?, &acknowledged);
    drop((stream, engine));
    let engine = Engine::open(options(&data, &clock, seal_rows))?;
    assert_exactly(&read_all(&engine)?, &acknowledged);
    Ok(())
}
