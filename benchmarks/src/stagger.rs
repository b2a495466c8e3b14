//! The stagger-window benchmark: KDA's `WINDOWED BY STAGGER (PARTITION BY k RANGE INTERVAL '1'
//! MINUTE)` as a continuous query over records already in a stream, beside the tumbling window
//! it replaces (`GROUP BY k, STEP(ROWTIME BY INTERVAL '60' SECOND)`) over the same rows in the
//! same run. Both aggregate the same way (a count and a sum per window and key); the stagger
//! window opens per key at its first row, so it holds the rows of its open windows where the
//! tumbling window holds one accumulator per group.

use sluice_sql::SluiceSession;

use crate::measure::{peak_rss_bytes, print_side_by_side};
use crate::sliding::{KEYS, keyed_events};
use crate::window::{Drained, drain_continuous};

pub fn stagger(records: usize, per_second: usize) -> Result<(), Box<dyn std::error::Error>> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(throughput(records, per_second))
}

async fn throughput(records: usize, per_second: usize) -> Result<(), Box<dyn std::error::Error>> {
    println!(
        "stagger throughput: {records} records arriving {per_second} per second, {KEYS} keys, 4 shards, one-minute windows over ROWTIME"
    );
    let dir = tempfile::tempdir()?;
    let engine = crate::window::open_engine(dir.path())?;
    keyed_events(&engine, records, per_second)?;
    let session = SluiceSession::new(engine)?;
    let tumbling = "SELECT k, COUNT(*) AS n, SUM(v) AS total FROM events GROUP BY k, STEP(events.ROWTIME BY INTERVAL '60' SECOND)";
    let stagger = "SELECT k, COUNT(*) AS n, SUM(v) AS total FROM events WINDOWED BY STAGGER (PARTITION BY k RANGE INTERVAL '1' MINUTE)";
    let tumbling = run(&session, tumbling).await?;
    let stagger = run(&session, stagger).await?;

    let rate = |secs: f64| records as f64 / secs.max(1e-9);
    print_side_by_side(
        ("stagger", "tumbling"),
        &[
            ("windows closed", stagger.rows as f64, tumbling.rows as f64),
            (
                "events/s per core (CPU time)",
                rate(stagger.cpu_secs),
                rate(tumbling.cpu_secs),
            ),
            (
                "events/s wall clock",
                rate(stagger.wall_secs),
                rate(tumbling.wall_secs),
            ),
        ],
    );
    println!(
        "  stagger / tumbling CPU time: {:.2}x; peak RSS of the run {:.0} MiB",
        stagger.cpu_secs / tumbling.cpu_secs.max(1e-9),
        peak_rss_bytes() as f64 / (1024.0 * 1024.0)
    );
    session.shutdown().await;
    Ok(())
}

/// Runs `query` continuously (`SELECT STREAM`) over the retained records until every window
/// is out. How many there are is counted first by the same query over the retained records
/// (without STREAM), so the continuous run can end on a LIMIT rather than a timeout.
async fn run(session: &SluiceSession, query: &str) -> Result<Drained, Box<dyn std::error::Error>> {
    let windows: usize = session
        .execute_all(query)
        .await?
        .iter()
        .flat_map(|(_, batches)| batches.iter().map(|b| b.num_rows()))
        .sum();
    let continuous = query.replacen("SELECT", "SELECT STREAM", 1);
    let run = drain_continuous(session, &format!("{continuous} LIMIT {windows}")).await?;
    if run.rows != windows {
        return Err(format!("{query}: {} windows out, {windows} expected", run.rows).into());
    }
    Ok(run)
}
