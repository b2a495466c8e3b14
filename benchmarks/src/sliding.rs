//! The sliding-window benchmark: KDA's `AVG(v) OVER (PARTITION BY k RANGE INTERVAL '1' MINUTE
//! PRECEDING)` as a continuous query over records already in a stream (one output row per input
//! row), beside DataFusion computing the same window as one batch query over the same rows.

use std::sync::Arc;
use std::time::Instant;

use datafusion::arrow::datatypes::{DataType, Field, Schema};
use sluice_engine::{RecordRef, StreamFormat, StreamSpec};
use sluice_sql::SluiceSession;

use crate::measure::CpuTimer;

/// Distinct keys, as the issue asks.
pub const KEYS: u64 = 10_000;

/// Arrival time (ROWTIME) of the first record.
const START_MS: i64 = 1_767_261_600_000;

/// Fills stream `events` (`k`, `v`, 4 shards) with `records` JSON records over `KEYS` keys,
/// arriving `per_second` per second from `START_MS` (their ROWTIMEs), then flushes.
pub fn keyed_events(
    engine: &sluice_engine::Engine,
    records: usize,
    per_second: usize,
) -> Result<(), Box<dyn std::error::Error>> {
    let stream = engine.create_stream(
        StreamSpec::with_columns(
            "events",
            4,
            StreamFormat::Json,
            Arc::new(Schema::new(vec![
                Field::new("k", DataType::Int64, true),
                Field::new("v", DataType::Int64, true),
            ])),
        ),
        false,
    )?;
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut batch = Vec::with_capacity(1000);
    for i in 0..records {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let arrival = START_MS + (i as i64 * 1000) / per_second as i64;
        let key = state % KEYS;
        batch.push((
            format!("k{key}"),
            format!(r#"{{"k":{key},"v":{}}}"#, state % 1000),
            arrival,
        ));
        if batch.len() == 1000 || i + 1 == records {
            let refs: Vec<RecordRef<'_>> = batch
                .iter()
                .map(|(p, d, at)| {
                    let mut record = RecordRef::new(p, d.as_bytes());
                    record.arrival_ms = Some(*at);
                    record
                })
                .collect();
            stream.append_refs(&refs)?;
            batch.clear();
        }
    }
    engine.flush()?;
    Ok(())
}

pub fn sliding(records: usize, per_second: usize) -> Result<(), Box<dyn std::error::Error>> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(throughput(records, per_second))
}

async fn throughput(records: usize, per_second: usize) -> Result<(), Box<dyn std::error::Error>> {
    println!(
        "sliding throughput: {records} records arriving {per_second} per second ({} rows per one-minute range), {KEYS} keys, 4 shards",
        per_second * 60
    );
    let dir = tempfile::tempdir()?;
    let engine = crate::window::open_engine(dir.path())?;
    keyed_events(&engine, records, per_second)?;
    let session = SluiceSession::new(engine)?;

    // Baseline: DataFusion's own window over the same retained rows, as one batch query.
    let cpu = CpuTimer::start();
    let wall = Instant::now();
    let batch_rows: usize = session
        .execute_all(
            "SELECT k, v, AVG(v) OVER (PARTITION BY k ORDER BY rowtime RANGE BETWEEN INTERVAL '1' MINUTE PRECEDING AND CURRENT ROW) FROM events",
        )
        .await?
        .iter()
        .flat_map(|(_, batches)| batches.iter().map(|b| b.num_rows()))
        .sum();
    let base_cpu = cpu.elapsed_secs();
    let base_wall = wall.elapsed().as_secs_f64();

    let continuous = crate::window::drain_continuous(&session, &format!(
            "SELECT STREAM k, v, AVG(v) OVER (PARTITION BY k RANGE INTERVAL '1' MINUTE PRECEDING) FROM events LIMIT {records}"
        )).await?;
    let (cont_cpu, cont_wall) = (continuous.cpu_secs, continuous.wall_secs);
    assert_eq!(continuous.rows, records);
    assert_eq!(batch_rows, records);

    let rate = |secs: f64| records as f64 / secs.max(1e-9);
    crate::measure::print_side_by_side(
        ("continuous", "batch"),
        &[
            ("rows/s per core (CPU time)", rate(cont_cpu), rate(base_cpu)),
            ("rows/s wall clock", rate(cont_wall), rate(base_wall)),
        ],
    );
    println!(
        "  continuous / batch CPU time: {:.2}x (target: at most 2x)",
        cont_cpu / base_cpu.max(1e-9)
    );
    session.shutdown().await;
    Ok(())
}
