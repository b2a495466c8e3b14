//! A stream dropped and created again under its name is another stream. Positions saved in the
//! old one — by a pump, a delivery stream — are never applied to the new one (that skipped the
//! new stream's first records), and readers following a dropped stream end, saying why.
//!
//! Today a stream a pump or delivery stream uses cannot be dropped at all; these tests set up
//! saved positions as a data folder written before that rule (or a crash between a drop and a
//! pump's removal) leaves them.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::array::{AsArray, RecordBatch};
use futures::StreamExt;
use sluice_engine::{Engine, EngineOptions, ManualClock, PumpCheckpoint};
use sluice_sql::{SluiceSession, StatementOutput};

type TestResult = Result<(), Box<dyn std::error::Error>>;

const START_MS: i64 = 1_767_225_600_000; // 2026-01-01 00:00:00 UTC

fn open(dir: &Path, clock: &ManualClock) -> Result<SluiceSession, Box<dyn std::error::Error>> {
    let engine = Engine::open(
        EngineOptions::new(dir.join("data"))
            .with_clock(Arc::new(clock.clone()))
            .with_background(false),
    )?;
    Ok(SluiceSession::new(engine)?)
}

fn strings(batches: &[RecordBatch], column: usize) -> Vec<String> {
    let mut out: Vec<String> = batches
        .iter()
        .flat_map(|b| {
            let column = b.column(column);
            match column.as_string_view_opt() {
                Some(c) => c.iter().flatten().map(str::to_string).collect::<Vec<_>>(),
                None => column
                    .as_string::<i32>()
                    .iter()
                    .flatten()
                    .map(str::to_string)
                    .collect(),
            }
        })
        .collect();
    out.sort();
    out
}

/// The positions a reader of the old `src` saved: all three of its records read.
fn old_positions(session: &SluiceSession) -> Result<PumpCheckpoint, Box<dyn std::error::Error>> {
    let src = session.engine().stream("src")?;
    let next = src.shard(0).ok_or("shard 0")?.next_seq();
    Ok(PumpCheckpoint {
        positions: vec![("src".to_string(), 0, next)],
        stream_ids: [("src".to_string(), src.definition().id)]
            .into_iter()
            .collect(),
        watermark: None,
        epoch: 1,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pump_reads_a_recreated_stream_from_its_start() -> TestResult {
    let dir = tempfile::tempdir()?;
    let clock = ManualClock::new(START_MS);
    let session = open(dir.path(), &clock)?;
    session
        .execute_all(
            "CREATE STREAM src (k VARCHAR) WITH (format = 'json');
             CREATE STREAM dst (k VARCHAR) WITH (format = 'json');
             INSERT INTO src VALUES ('a'), ('b'), ('c');",
        )
        .await?;
    let saved = old_positions(&session)?;
    session.engine().save_pump_checkpoint("p", &saved)?;
    session
        .execute_all(
            "DROP STREAM src;
             CREATE STREAM src (k VARCHAR) WITH (format = 'json');
             INSERT INTO src VALUES ('d'), ('e'), ('f'), ('g');
             CREATE PUMP p AS INSERT INTO dst SELECT STREAM k FROM src;
             FLUSH;",
        )
        .await?;
    let rows = session.execute_all("SELECT k FROM dst").await?;
    assert_eq!(strings(&rows[0].1, 0), ["d", "e", "f", "g"]);

    // What the pump saves now names the new stream, and it resumes there after a restart.
    session.shutdown().await;
    drop(session);
    let session = open(dir.path(), &clock)?;
    session
        .execute_all("INSERT INTO src VALUES ('h'); FLUSH;")
        .await?;
    let rows = session.execute_all("SELECT k FROM dst").await?;
    assert_eq!(strings(&rows[0].1, 0), ["d", "e", "f", "g", "h"]);
    let saved = session.engine().pump_checkpoint("p")?;
    let id = session.engine().stream("src")?.definition().id;
    assert_eq!(saved.stream_ids.get("src"), Some(&id));
    session.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_stream_reads_a_recreated_stream_from_its_start() -> TestResult {
    let dir = tempfile::tempdir()?;
    let clock = ManualClock::new(START_MS);
    let session = open(dir.path(), &clock)?;
    let lake = dir.path().join("lake");
    session
        .execute_all(
            "CREATE STREAM src (k VARCHAR) WITH (format = 'json');
             INSERT INTO src VALUES ('a'), ('b'), ('c');",
        )
        .await?;
    let saved = old_positions(&session)?;
    session
        .engine()
        .save_delivery_positions("to_lake", &saved)?;
    session
        .execute_all(&format!(
            "DROP STREAM src;
             CREATE STREAM src (k VARCHAR) WITH (format = 'json');
             INSERT INTO src VALUES ('d'), ('e'), ('f'), ('g');
             CREATE DELIVERY STREAM to_lake FROM src WITH (
               destination = '{}', format = 'json', buffer_interval_seconds = 0);
             FLUSH;",
            lake.display()
        ))
        .await?;
    let mut delivered = Vec::new();
    let mut stack = vec![lake.clone()];
    while let Some(folder) = stack.pop() {
        for entry in std::fs::read_dir(&folder)?.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                for line in std::fs::read_to_string(&path)?.lines() {
                    let value: serde_json::Value = serde_json::from_str(line)?;
                    delivered.push(value["k"].as_str().unwrap_or_default().to_string());
                }
            }
        }
    }
    delivered.sort();
    assert_eq!(delivered, ["d", "e", "f", "g"]);

    // The stream a delivery stream reads cannot be dropped meanwhile.
    let Err(refused) = session.execute_all("DROP STREAM src").await else {
        panic!("a stream feeding a delivery stream was dropped");
    };
    assert!(
        refused
            .to_string()
            .contains("feeds delivery stream 'to_lake'; DROP DELIVERY STREAM to_lake first"),
        "{refused}"
    );
    session.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_continuous_query_over_a_dropped_stream_ends_saying_so() -> TestResult {
    let dir = tempfile::tempdir()?;
    let clock = ManualClock::new(START_MS);
    let session = open(dir.path(), &clock)?;
    session
        .execute_all(
            "CREATE STREAM gone (k VARCHAR) WITH (format = 'json');
             INSERT INTO gone VALUES ('a');",
        )
        .await?;
    let StatementOutput::Continuous(mut rows) =
        session.execute("SELECT STREAM k FROM gone").await?
    else {
        panic!("SELECT STREAM is continuous");
    };
    let first = tokio::time::timeout(Duration::from_secs(10), rows.next())
        .await?
        .ok_or("the query ended")??;
    assert_eq!(strings(&[first], 0), ["a"]);

    session.execute_all("DROP STREAM gone").await?;
    let ended = tokio::time::timeout(Duration::from_secs(10), rows.next()).await?;
    let Some(Err(error)) = ended else {
        panic!("the query went on after its stream was dropped: {ended:?}");
    };
    assert!(
        error
            .to_string()
            .contains("stream 'gone' was dropped; nothing more will arrive in it"),
        "{error}"
    );

    // A stream created again under the name is not fed to the old query.
    session
        .execute_all(
            "CREATE STREAM gone (k VARCHAR) WITH (format = 'json');
             INSERT INTO gone VALUES ('b');",
        )
        .await?;
    let after = tokio::time::timeout(Duration::from_millis(300), rows.next()).await;
    assert!(matches!(after, Ok(None)), "{after:?}");
    session.shutdown().await;
    Ok(())
}
