//! Continuous queries see records appended after they started, as they arrive.

use std::time::Duration;

use datafusion::arrow::array::AsArray;
use datafusion::arrow::datatypes::Int64Type;
use futures::StreamExt;
use sluice_engine::{Engine, EngineOptions};
use sluice_sql::{SluiceSession, StatementOutput};

type TestResult = Result<(), Box<dyn std::error::Error>>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_query_receives_rows_inserted_after_it_started() -> TestResult {
    let dir = tempfile::tempdir()?;
    let session = SluiceSession::new(Engine::open(EngineOptions::new(dir.path()))?)?;
    session
        .execute_all("CREATE STREAM readings (sensor VARCHAR, value BIGINT) WITH (shards = 3, partition_key = 'sensor')")
        .await?;
    let StatementOutput::Continuous(mut rows) = session
        .execute("SELECT STREAM sensor, value * 2 AS doubled FROM readings WHERE value > 10")
        .await?
    else {
        panic!("SELECT STREAM is continuous");
    };

    // Nothing yet: the query waits rather than ending.
    let nothing = tokio::time::timeout(Duration::from_millis(200), rows.next()).await;
    assert!(
        nothing.is_err(),
        "the query produced rows before any were inserted"
    );

    let mut seen = Vec::new();
    for (round, value) in [(1, 5), (2, 21), (3, 50)] {
        session
            .execute_all(&format!(
                "INSERT INTO readings VALUES ('s{round}', {value})"
            ))
            .await?;
        if value > 10 {
            let batch = tokio::time::timeout(Duration::from_secs(10), rows.next())
                .await?
                .ok_or("the query ended")??;
            seen.extend(
                batch
                    .column(1)
                    .as_primitive::<Int64Type>()
                    .values()
                    .iter()
                    .copied(),
            );
        }
    }
    assert_eq!(seen, vec![42, 100]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aggregate_without_a_window_is_refused() -> TestResult {
    let dir = tempfile::tempdir()?;
    let session = SluiceSession::new(Engine::open(EngineOptions::new(dir.path()))?)?;
    session
        .execute_all("CREATE STREAM s (k VARCHAR) WITH (shards = 1)")
        .await?;
    let result = session
        .execute("SELECT STREAM k, count(*) FROM s GROUP BY k")
        .await;
    let message = result.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(
        message.contains("never finishes without a window"),
        "{message}"
    );
    let result = session.execute("SELECT STREAM k FROM s ORDER BY k").await;
    let message = result.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(
        message.contains("ORDER BY cannot run continuously"),
        "{message}"
    );
    Ok(())
}
