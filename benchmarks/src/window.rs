//! The windowed-aggregation benchmark: a continuous tumbling-window aggregate over records
//! already in a stream, beside DataFusion computing the same aggregate as one batch query.

use std::sync::Arc;
use std::time::Instant;

use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use futures::StreamExt;
use sluice_engine::{
    Durability, Engine, EngineOptions, RecordRef, StreamFormat, StreamSpec, WatermarkDefinition,
};
use sluice_sql::{SluiceSession, StatementOutput};

use crate::measure::{CpuTimer, peak_rss_bytes};

/// Distinct keys, as the issue asks.
const KEYS: u64 = 10_000;

pub fn window(records: usize, per_second: usize) -> Result<(), Box<dyn std::error::Error>> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(records, per_second))
}

async fn run(records: usize, per_second: usize) -> Result<(), Box<dyn std::error::Error>> {
    let seconds = records.div_ceil(per_second);
    println!(
        "window: {records} records, {per_second} per second of event time ({seconds} one-second windows), {KEYS} keys"
    );
    let dir = tempfile::tempdir()?;
    let engine = Engine::open(
        EngineOptions::new(dir.path())
            .with_durability(Durability::Buffered)
            .with_background(false),
    )?;
    let mut spec = StreamSpec::with_columns(
        "events",
        4,
        StreamFormat::Json,
        Arc::new(Schema::new(vec![
            Field::new("k", DataType::Int64, true),
            Field::new("v", DataType::Int64, true),
            Field::new("ts", DataType::Timestamp(TimeUnit::Millisecond, None), true),
        ])),
    );
    spec.watermark = Some(WatermarkDefinition {
        column: "ts".into(),
        delay_ms: 0,
        allowed_lateness_ms: 0,
        idle_timeout_ms: 0,
    });
    let stream = engine.create_stream(spec, false)?;
    let start_ms: i64 = 1_767_261_600_000;
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut batch = Vec::with_capacity(1000);
    for i in 0..records {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let ts = start_ms
            + (i / per_second) as i64 * 1000
            + (i % per_second) as i64 * 1000 / per_second as i64;
        batch.push((
            format!("p{}", i % 64),
            format!(r#"{{"k":{},"v":{},"ts":{ts}}}"#, state % KEYS, state % 1000),
        ));
        if batch.len() == 1000 || i + 1 == records {
            let refs: Vec<RecordRef<'_>> = batch
                .iter()
                .map(|(p, d)| RecordRef::new(p, d.as_bytes()))
                .collect();
            stream.append_refs(&refs)?;
            batch.clear();
        }
    }
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
    let last_window_rows: usize = session
        .execute_all(&format!(
            "SELECT count(DISTINCT k) FROM events WHERE ts >= to_timestamp_millis({})",
            start_ms + (seconds as i64 - 1) * 1000
        ))
        .await?
        .first()
        .and_then(|(_, b)| {
            b.first().map(|b| {
                datafusion::arrow::array::AsArray::as_primitive::<
                    datafusion::arrow::datatypes::Int64Type,
                >(b.column(0))
                .value(0) as usize
            })
        })
        .unwrap_or(0);
    let expected = batch_rows - last_window_rows;
    eprintln!(
        "  batch query done: {batch_rows} rows, expecting {expected} from the continuous query"
    );

    let cpu = CpuTimer::start();
    let wall = Instant::now();
    let output = session
        .execute(&format!(
            "SELECT STREAM window_start, k, count(*), sum(v), max(v) FROM tumble(events, ts, INTERVAL '1' SECOND) GROUP BY window_start, k LIMIT {expected}"
        ))
        .await?;
    let StatementOutput::Continuous(mut rows) = output else {
        return Err("SELECT STREAM did not run continuously".into());
    };
    let mut produced = 0;
    while let Some(batch) = rows.next().await {
        produced += batch?.num_rows();
    }
    let cont_cpu = cpu.elapsed_secs();
    let cont_wall = wall.elapsed().as_secs_f64();
    assert_eq!(produced, expected);

    let rate = |secs: f64| records as f64 / secs.max(1e-9);
    println!();
    println!("  {:<44} {:>14} {:>14}", "", "continuous", "batch");
    println!(
        "  {:<44} {:>14.0} {:>14.0}",
        "events/s per core (CPU time)",
        rate(cont_cpu),
        rate(base_cpu)
    );
    println!(
        "  {:<44} {:>14.0} {:>14.0}",
        "events/s wall clock",
        rate(cont_wall),
        rate(base_wall)
    );
    println!(
        "  {:<44} {:>14} {:>14}",
        "result rows", produced, batch_rows
    );
    println!(
        "  continuous / batch CPU time: {:.2}x (target: at most 2x; at least 5,000,000 events/s per core)",
        cont_cpu / base_cpu.max(1e-9)
    );
    println!("  peak RSS {:.0} MB", peak_rss_bytes() as f64 / 1e6);
    Ok(())
}
