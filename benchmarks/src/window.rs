//! The windowed-aggregation benchmark: a continuous tumbling-window aggregate over records
//! already in a stream, beside DataFusion computing the same aggregate as one batch query; the
//! latency from a window's close to its rows; and the memory held with 1 and with 100 windows
//! open.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use datafusion::arrow::array::{AsArray, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef, TimeUnit};
use futures::StreamExt;
use sluice_engine::{
    Durability, Engine, EngineOptions, RecordRef, ShardIterator, StartPosition, Stream,
    StreamFormat, StreamSpec, WatermarkDefinition,
};
use sluice_sql::{SluiceSession, StatementOutput};

use crate::measure::{CpuTimer, print_side_by_side, rss_bytes};

/// Distinct keys, as the issue asks.
const KEYS: u64 = 10_000;

/// Event time of the first record.
const START_MS: i64 = 1_767_261_600_000;

pub fn window(records: usize, per_second: usize) -> Result<(), Box<dyn std::error::Error>> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        throughput(records, per_second).await?;
        latency().await?;
        memory().await
    })
}

/// An engine for a benchmark: OS-buffered writes, no background sealing.
pub(crate) fn open_engine(dir: &std::path::Path) -> Result<Engine, Box<dyn std::error::Error>> {
    Ok(Engine::open(
        EngineOptions::new(dir)
            .with_durability(Durability::Buffered)
            .with_background(false),
    )?)
}

/// A 4-shard stream of `{k, v, ts}` records with its watermark `delay_ms` behind.
fn events_stream(
    engine: &Engine,
    name: &str,
    shards: u32,
    delay_ms: i64,
) -> Result<Arc<Stream>, Box<dyn std::error::Error>> {
    let mut spec = StreamSpec::with_columns(
        name,
        shards,
        StreamFormat::Json,
        Arc::new(Schema::new(vec![
            Field::new("k", DataType::Int64, true),
            Field::new("v", DataType::Int64, true),
            Field::new("ts", DataType::Timestamp(TimeUnit::Millisecond, None), true),
        ])),
    );
    spec.watermark = Some(WatermarkDefinition {
        column: "ts".into(),
        delay_ms,
        allowed_lateness_ms: 0,
        idle_timeout_ms: 0,
    });
    Ok(engine.create_stream(spec, false)?)
}

/// Appends records `from..to`, `per_second` of them per second of event time, random keys.
fn fill(
    stream: &Stream,
    from: usize,
    to: usize,
    per_second: usize,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut state = 0x9E37_79B9_7F4A_7C15u64 ^ from as u64;
    let mut batch = Vec::with_capacity(1000);
    for i in from..to {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let ts = START_MS
            + (i / per_second) as i64 * 1000
            + (i % per_second) as i64 * 1000 / per_second as i64;
        batch.push((
            format!("p{}", i % 64),
            format!(r#"{{"k":{},"v":{},"ts":{ts}}}"#, state % KEYS, state % 1000),
        ));
        if batch.len() == 1000 || i + 1 == to {
            let refs: Vec<RecordRef<'_>> = batch
                .iter()
                .map(|(p, d)| RecordRef::new(p, d.as_bytes()))
                .collect();
            stream.append_refs(&refs)?;
            batch.clear();
        }
    }
    Ok(())
}

fn first_i64(batches: &[(SchemaRef, Vec<RecordBatch>)]) -> usize {
    batches.first().and_then(|(_, b)| b.first()).map_or(0, |b| {
        b.column(0).as_primitive::<Int64Type>().value(0) as usize
    })
}

async fn throughput(records: usize, per_second: usize) -> Result<(), Box<dyn std::error::Error>> {
    let seconds = records.div_ceil(per_second);
    println!(
        "window throughput: {records} records, {per_second} per second of event time ({seconds} one-second windows), {KEYS} keys, 4 shards"
    );
    let dir = tempfile::tempdir()?;
    let engine = open_engine(dir.path())?;
    let stream = events_stream(&engine, "events", 4, 0)?;
    fill(&stream, 0, records, per_second)?;
    engine.flush()?;
    let session = SluiceSession::new(engine)?;

    // Baseline: DataFusion, one batch query over the same retained batches.
    let cpu = CpuTimer::start();
    let wall = Instant::now();
    let batch_rows: usize = session
        .execute_all(
            "SELECT date_bin(INTERVAL '1' SECOND, ts) AS w, k, count(*), sum(v), max(v) FROM events GROUP BY w, k",
        )
        .await?
        .iter()
        .flat_map(|(_, batches)| batches.iter().map(|b| b.num_rows()))
        .sum();
    let base_cpu = cpu.elapsed_secs();
    let base_wall = wall.elapsed().as_secs_f64();

    // The last window stays open (nothing moves the watermark past it), so the continuous
    // query produces every row but that window's.
    let last_window_rows = first_i64(
        &session
            .execute_all(&format!(
                "SELECT count(DISTINCT k) FROM events WHERE ts >= to_timestamp_millis({})",
                START_MS + (seconds as i64 - 1) * 1000
            ))
            .await?,
    );
    let expected = batch_rows - last_window_rows;

    let continuous = drain_continuous(&session, &format!(
            "SELECT STREAM window_start, k, count(*), sum(v), max(v) FROM tumble(events, ts, INTERVAL '1' SECOND) GROUP BY window_start, k LIMIT {expected}"
        )).await?;
    let (produced, cont_cpu) = (continuous.rows, continuous.cpu_secs);
    assert_eq!(produced, expected);

    let rate = |secs: f64| records as f64 / secs.max(1e-9);
    print_side_by_side(
        ("continuous", "batch"),
        &[
            (
                "events/s per core (CPU time)",
                rate(cont_cpu),
                rate(base_cpu),
            ),
            (
                "events/s wall clock",
                rate(continuous.wall_secs),
                rate(base_wall),
            ),
            ("result rows", produced as f64, batch_rows as f64),
        ],
    );
    println!(
        "  continuous / batch CPU time: {:.2}x (target: at most 2x; at least 5,000,000 events/s per core)",
        cont_cpu / base_cpu.max(1e-9)
    );
    session.shutdown().await;
    Ok(())
}

/// Time from the append that moves the watermark past a window's end to that window's rows
/// reaching the reader of a running `SELECT STREAM`, over 20 windows of 10,000 records.
async fn latency() -> Result<(), Box<dyn std::error::Error>> {
    const WINDOWS: usize = 20;
    const PER_WINDOW: usize = 10_000;
    println!(
        "window latency: {WINDOWS} one-second windows of {PER_WINDOW} records, each closed by the next window's first record"
    );
    let dir = tempfile::tempdir()?;
    let engine = open_engine(dir.path())?;
    let stream = events_stream(&engine, "live", 1, 0)?;
    let session = SluiceSession::new(engine)?;
    let output = session
        .execute(
            "SELECT STREAM window_start, k, count(*), sum(v), max(v) FROM tumble(live, ts, INTERVAL '1' SECOND) GROUP BY window_start, k",
        )
        .await?;
    let StatementOutput::Continuous(mut rows) = output else {
        return Err("SELECT STREAM did not run continuously".into());
    };
    let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel();
    let reader = tokio::spawn(async move {
        let mut last = None;
        while let Some(Ok(batch)) = rows.next().await {
            if batch.num_rows() == 0 {
                continue;
            }
            let starts = batch.column(0);
            let start = datafusion::arrow::compute::cast(starts, &DataType::Int64)
                .map(|a| a.as_primitive::<Int64Type>().value(0));
            if let Ok(start) = start
                && last != Some(start)
            {
                last = Some(start);
                let _ = seen_tx.send((start, Instant::now()));
            }
        }
    });
    let mut latencies = Vec::new();
    fill(&stream, 0, PER_WINDOW, PER_WINDOW)?;
    for window in 0..WINDOWS {
        tokio::time::sleep(Duration::from_millis(200)).await;
        // The first record of the next window moves the watermark past this window's end.
        let first = (window + 1) * PER_WINDOW;
        let closed = Instant::now();
        fill(&stream, first, first + 1, PER_WINDOW)?;
        let (start, at) = seen_rx.recv().await.ok_or("the query ended")?;
        assert_eq!(start, START_MS + window as i64 * 1000);
        latencies.push(at.duration_since(closed).as_secs_f64() * 1000.0);
        fill(&stream, first + 1, first + PER_WINDOW, PER_WINDOW)?;
    }
    reader.abort();
    latencies.sort_by(f64::total_cmp);
    println!(
        "  watermark past window end -> rows out: median {:.1} ms, max {:.1} ms (target: under 100 ms)",
        latencies[latencies.len() / 2],
        latencies[latencies.len() - 1]
    );
    session.shutdown().await;
    Ok(())
}

/// Memory held while the aggregate runs with about 1 and about 100 windows open (the watermark
/// 0 s and 100 s behind), sampled every 5 ms, above what the process held before the query.
async fn memory() -> Result<(), Box<dyn std::error::Error>> {
    const RECORDS: usize = 2_000_000;
    const PER_SECOND: usize = 10_000;
    println!(
        "window memory: {RECORDS} records, {PER_SECOND} per second of event time, {KEYS} keys, one-second windows"
    );
    for (open, delay_ms) in [(1, 0), (100, 100_000)] {
        let dir = tempfile::tempdir()?;
        let engine = open_engine(dir.path())?;
        let stream = events_stream(&engine, "mem", 1, delay_ms)?;
        fill(&stream, 0, RECORDS, PER_SECOND)?;
        engine.flush()?;
        // What a retained record takes, as a yardstick for holding rows instead.
        let per_record = stored_bytes(&stream)? as f64 / RECORDS as f64;
        let session = SluiceSession::new(engine)?;
        let windows = RECORDS / PER_SECOND;
        // Windows that close: all but the last (1 + delay) seconds' worth.
        let closing = windows - 1 - (delay_ms / 1000) as usize;
        let expected = first_i64(
            &session
                .execute_all(&format!(
                    "SELECT count(*) FROM (SELECT DISTINCT date_bin(INTERVAL '1' SECOND, ts), k FROM mem WHERE ts < to_timestamp_millis({}))",
                    START_MS + closing as i64 * 1000
                ))
                .await?,
        );
        let before = rss_bytes();
        let peak = Arc::new(AtomicUsize::new(before));
        let done = Arc::new(AtomicBool::new(false));
        let sampler = {
            let (peak, done) = (Arc::clone(&peak), Arc::clone(&done));
            std::thread::spawn(move || {
                while !done.load(Ordering::Relaxed) {
                    peak.fetch_max(rss_bytes(), Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(5));
                }
            })
        };
        let output = session
            .execute(&format!(
                "SELECT STREAM window_start, k, count(*), sum(v), max(v) FROM tumble(mem, ts, INTERVAL '1' SECOND) GROUP BY window_start, k LIMIT {expected}"
            ))
            .await?;
        let StatementOutput::Continuous(mut rows) = output else {
            return Err("SELECT STREAM did not run continuously".into());
        };
        while let Some(batch) = rows.next().await {
            batch?;
        }
        done.store(true, Ordering::Relaxed);
        let _ = sampler.join();
        let grown = peak.load(Ordering::Relaxed).saturating_sub(before);
        println!(
            "  ~{open:>3} open window(s): peak memory above the start {:.1} MB (the rows of {open} window(s) would be {:.1} MB as stored)",
            grown as f64 / 1e6,
            open as f64 * PER_SECOND as f64 * per_record / 1e6
        );
        session.shutdown().await;
    }
    Ok(())
}

/// The memory the retained records of `stream` take.
fn stored_bytes(stream: &Arc<Stream>) -> Result<usize, Box<dyn std::error::Error>> {
    let mut bytes = 0;
    for shard in stream.shards().iter() {
        let mut reader = ShardIterator::new(stream, shard.index(), StartPosition::TrimHorizon)?;
        loop {
            let batches = reader.next_batches(8192)?;
            if batches.is_empty() {
                break;
            }
            bytes += batches
                .iter()
                .map(RecordBatch::get_array_memory_size)
                .sum::<usize>();
        }
    }
    Ok(bytes)
}

/// A `SELECT STREAM` query run to its end: the rows it gave, and the CPU and wall time taken.
pub struct Drained {
    pub rows: usize,
    pub cpu_secs: f64,
    pub wall_secs: f64,
}

/// Runs a `SELECT STREAM` query to its end (its LIMIT), counting its rows and timing it.
pub async fn drain_continuous(
    session: &SluiceSession,
    sql: &str,
) -> Result<Drained, Box<dyn std::error::Error>> {
    let cpu = CpuTimer::start();
    let wall = Instant::now();
    let StatementOutput::Continuous(mut rows) = session.execute(sql).await? else {
        return Err("SELECT STREAM did not run continuously".into());
    };
    let mut produced = 0;
    while let Some(batch) = rows.next().await {
        produced += batch?.num_rows();
    }
    Ok(Drained {
        rows: produced,
        cpu_secs: cpu.elapsed_secs(),
        wall_secs: wall.elapsed().as_secs_f64(),
    })
}
