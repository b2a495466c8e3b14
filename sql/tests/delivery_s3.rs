//! Delivery into S3: a real S3 protocol server (`s3s-fs`) on 127.0.0.1 in this process,
//! stopped in the middle of a delivery and started again with nothing lost.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use sluice_engine::{Engine, EngineOptions, ManualClock};
use sluice_sql::SluiceSession;
use tokio::task::JoinHandle;

#[path = "../../tests/support/s3_server.rs"]
mod s3_server;

type TestResult = Result<(), Box<dyn std::error::Error>>;

const KEY: &str = "sluice-test";
const SECRET: &str = "sluice-test-secret";

/// Serves `root` (one folder per bucket) over S3 on `addr` until aborted.
async fn serve(
    root: &Path,
    addr: SocketAddr,
) -> Result<(JoinHandle<()>, SocketAddr), Box<dyn std::error::Error>> {
    s3_server::serve(root, addr, (KEY, SECRET)).await
}

/// Every object file under the bucket folder (s3s-fs keeps its own metadata beside them).
fn objects(bucket: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![bucket.to_path_buf()];
    while let Some(folder) = stack.pop() {
        for entry in std::fs::read_dir(&folder).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "parquet") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

fn rows_in(paths: &[PathBuf]) -> Result<Vec<i64>, Box<dyn std::error::Error>> {
    use datafusion::arrow::array::AsArray;
    let mut values = Vec::new();
    for path in paths {
        let reader =
            ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(path)?)?.build()?;
        for batch in reader {
            let batch = batch?;
            values.extend(
                batch
                    .column(0)
                    .as_primitive::<datafusion::arrow::datatypes::Int64Type>()
                    .values()
                    .iter()
                    .copied(),
            );
        }
    }
    values.sort();
    Ok(values)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parquet_lands_in_s3_and_survives_the_server_going_away() -> TestResult {
    let dir = tempfile::tempdir()?;
    let root = dir.path().join("s3");
    let bucket = root.join("analytics");
    std::fs::create_dir_all(&bucket)?;
    let (server, addr) = serve(&root, "127.0.0.1:0".parse()?).await?;

    let clock = ManualClock::new(1_767_225_600_000);
    let engine = Engine::open(
        EngineOptions::new(dir.path().join("data")).with_clock(Arc::new(clock.clone())),
    )?;
    let session = SluiceSession::new(engine)?;
    session
        .execute_all(&format!(
            "CREATE STREAM n (v BIGINT) WITH (shards = 2);
             CREATE DELIVERY STREAM to_s3 FROM n WITH (
               destination = 's3://analytics/views/', format = 'parquet',
               buffer_interval_seconds = 0, s3_endpoint = 'http://{addr}', s3_allow_http = true,
               s3_region = 'us-east-1', s3_access_key_id = '{KEY}', s3_secret_access_key = '{SECRET}');
             INSERT INTO n VALUES (1), (2), (3);
             FLUSH;"
        ))
        .await?;
    let written = objects(&bucket);
    assert!(!written.is_empty(), "nothing written to the bucket");
    assert!(
        written.iter().all(|p| p
            .strip_prefix(&bucket)
            .is_ok_and(|k| k.starts_with("views/2026/01/01/00"))),
        "{written:?}"
    );
    assert_eq!(rows_in(&written)?, [1, 2, 3]);

    // The server goes away: records inserted meanwhile wait, the failure shows, nothing is lost.
    server.abort();
    let _ = server.await;
    session.execute_all("INSERT INTO n VALUES (4), (5)").await?;
    let mut last_error = None;
    for _ in 0..600 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let shown = session.execute_all("SHOW DELIVERY STREAMS").await?;
        let batch = &shown[0].1[0];
        let column = batch
            .column_by_name("last_error")
            .ok_or("no last_error column")?;
        let errors = datafusion::arrow::compute::cast(
            column,
            &datafusion::arrow::datatypes::DataType::Utf8,
        )?;
        use datafusion::arrow::array::{Array, AsArray};
        let errors = errors.as_string::<i32>();
        if errors.is_valid(0) {
            last_error = Some(errors.value(0).to_string());
            break;
        }
    }
    let last_error = last_error.ok_or("the failed write was never reported")?;
    assert!(last_error.contains("retrying"), "{last_error}");

    let (_server, _) = serve(&root, addr).await?;
    session.execute_all("FLUSH").await?;
    assert_eq!(rows_in(&objects(&bucket))?, [1, 2, 3, 4, 5]);
    session.shutdown().await;
    Ok(())
}
