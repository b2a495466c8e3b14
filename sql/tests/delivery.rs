//! Delivery streams end to end through SQL: records in, objects out in a local folder, read
//! back with the Parquet reader, gzip and zstd, and compared with what went in.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::arrow::array::{AsArray, RecordBatch};
use datafusion::arrow::datatypes::Int64Type;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use sluice_engine::{Engine, EngineOptions, ManualClock};
use sluice_sql::SluiceSession;

type TestResult = Result<(), Box<dyn std::error::Error>>;

const START_MS: i64 = 1_767_225_600_000; // 2026-01-01 00:00:00 UTC

fn open(dir: &Path, clock: &ManualClock) -> Result<SluiceSession, Box<dyn std::error::Error>> {
    let engine =
        Engine::open(EngineOptions::new(dir.join("data")).with_clock(Arc::new(clock.clone())))?;
    Ok(SluiceSession::new(engine)?)
}

/// Every file under `dir`, relative to it, sorted.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(folder) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&folder) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(relative) = path.strip_prefix(dir) {
                out.push(relative.to_path_buf());
            }
        }
    }
    out.sort();
    out
}

fn read_parquet(path: &Path) -> Result<Vec<RecordBatch>, Box<dyn std::error::Error>> {
    let file = std::fs::File::open(path)?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)?.build()?;
    Ok(reader.collect::<Result<Vec<_>, _>>()?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parquet_objects_hold_every_record_under_firehose_keys() -> TestResult {
    let dir = tempfile::tempdir()?;
    let clock = ManualClock::new(START_MS);
    let session = open(dir.path(), &clock)?;
    let lake = dir.path().join("lake");
    session
        .execute_all(&format!(
            "CREATE STREAM views (url VARCHAR, n BIGINT) WITH (shards = 1);
             CREATE DELIVERY STREAM to_lake FROM views WITH (
               destination = '{}', format = 'parquet', compression = 'zstd',
               buffer_interval_seconds = 0);
             INSERT INTO views VALUES ('/a', 1), ('/b', 2), ('/c', 3);
             FLUSH;",
            lake.display()
        ))
        .await?;
    let written = files(&lake);
    assert_eq!(written.len(), 1, "{written:?}");
    let key = written[0].to_string_lossy().to_string();
    // YYYY/MM/dd/HH/ of the oldest record, then name-version-time-uuid.parquet.
    assert!(
        key.starts_with("2026/01/01/00/to_lake-1-2026-01-01-00-00-00-"),
        "{key}"
    );
    assert!(key.ends_with(".parquet"), "{key}");
    let batches = read_parquet(&lake.join(&written[0]))?;
    let urls: Vec<String> = batches
        .iter()
        .flat_map(|b| {
            b.column(0)
                .as_string_view_opt()
                .map(|c| c.iter().flatten().map(str::to_string).collect::<Vec<_>>())
                .or_else(|| {
                    b.column(0)
                        .as_string_opt::<i32>()
                        .map(|c| c.iter().flatten().map(str::to_string).collect())
                })
                .unwrap_or_default()
        })
        .collect();
    assert_eq!(urls, ["/a", "/b", "/c"]);
    let total: i64 = batches
        .iter()
        .map(|b| {
            b.column(1)
                .as_primitive::<Int64Type>()
                .values()
                .iter()
                .sum::<i64>()
        })
        .sum();
    assert_eq!(total, 6);

    let shown = session.execute_all("SHOW DELIVERY STREAMS").await?;
    let batch = &shown[0].1[0];
    assert_eq!(
        batch
            .column(5)
            .as_primitive::<datafusion::arrow::datatypes::UInt64Type>()
            .value(0),
        3
    );
    assert_eq!(
        batch
            .column(7)
            .as_primitive::<datafusion::arrow::datatypes::UInt64Type>()
            .value(0),
        1
    );
    session.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buffers_fill_by_time_and_restart_loses_nothing() -> TestResult {
    let dir = tempfile::tempdir()?;
    let clock = ManualClock::new(START_MS);
    let lake = dir.path().join("lake");
    let session = open(dir.path(), &clock)?;
    session
        .execute_all(&format!(
            "CREATE STREAM events (k VARCHAR, v BIGINT) WITH (shards = 2, partition_key = 'k');
             CREATE DELIVERY STREAM out FROM events WITH (
               destination = 'file://{}', format = 'json', compression = 'gzip',
               buffer_interval_seconds = 60, prefix = 'k=!{{partitionKeyFromQuery:k}}/');
             INSERT INTO events VALUES ('a', 1), ('b', 2), ('a', 3);
             FLUSH;",
            lake.display()
        ))
        .await?;
    assert!(
        files(&lake).is_empty(),
        "written before the interval passed"
    );

    // A restart with records still buffered: they are delivered after it, not lost.
    session.shutdown().await;
    drop(session);
    let session = open(dir.path(), &clock)?;
    session
        .execute_all("INSERT INTO events VALUES ('b', 4); FLUSH;")
        .await?;
    assert!(files(&lake).is_empty());
    clock.advance(61_000);
    session.execute_all("FLUSH").await?;
    let written = files(&lake);
    assert_eq!(written.len(), 2, "{written:?}");
    let mut lines = Vec::new();
    for file in &written {
        let name = file.to_string_lossy().to_string();
        assert!(
            name.starts_with("k=a/out-1-") || name.starts_with("k=b/out-1-"),
            "{name}"
        );
        assert!(name.ends_with(".json.gz"), "{name}");
        let mut text = String::new();
        flate2::read::GzDecoder::new(std::fs::File::open(lake.join(file))?)
            .read_to_string(&mut text)?;
        for line in text.lines() {
            assert!(line.contains(if name.starts_with("k=a") {
                "\"k\":\"a\""
            } else {
                "\"k\":\"b\""
            }));
            lines.push(line.to_string());
        }
    }
    lines.sort();
    assert_eq!(
        lines,
        [
            r#"{"k":"a","v":1}"#,
            r#"{"k":"a","v":3}"#,
            r#"{"k":"b","v":2}"#,
            r#"{"k":"b","v":4}"#
        ]
    );
    session.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_that_did_not_decode_go_to_the_error_prefix() -> TestResult {
    let dir = tempfile::tempdir()?;
    let clock = ManualClock::new(START_MS);
    let lake = dir.path().join("lake");
    let session = open(dir.path(), &clock)?;
    session
        .execute_all(&format!(
            "CREATE STREAM nums (n BIGINT) WITH (shards = 1);
             CREATE DELIVERY STREAM out FROM nums WITH (
               destination = '{}', format = 'csv', compression = 'zstd',
               buffer_interval_seconds = 0, error_output_prefix = 'failed/!{{firehose:error-output-type}}/');
             INSERT INTO nums (_partition_key, _data) VALUES ('p', '{{\"n\": 1}}'), ('p', 'not json'), ('p', '{{\"n\": 3}}');
             FLUSH;",
            lake.display()
        ))
        .await?;
    let written = files(&lake);
    assert_eq!(written.len(), 2, "{written:?}");
    let (errors, good): (Vec<_>, Vec<_>) = written
        .iter()
        .partition(|f| f.starts_with("failed/format-conversion-failed"));
    assert_eq!(errors.len(), 1);
    let text = std::fs::read_to_string(lake.join(errors[0]))?;
    let record: serde_json::Value = serde_json::from_str(text.trim())?;
    assert_eq!(
        record["lastErrorCode"],
        "DataFormatConversion.MalformedData"
    );
    assert_eq!(record["rawData"], "bm90IGpzb24="); // base64 of "not json"
    assert_eq!(record["sequenceNumber"], "490000000000000000000000000002");
    assert!(
        record["lastErrorMessage"]
            .as_str()
            .is_some_and(|m| !m.is_empty())
    );
    let csv = zstd::decode_all(std::fs::File::open(lake.join(good[0]))?)?;
    assert_eq!(String::from_utf8(csv)?, "n\n1\n3\n");
    session.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_buffer_is_written_before_its_interval() -> TestResult {
    let dir = tempfile::tempdir()?;
    let clock = ManualClock::new(START_MS);
    let lake = dir.path().join("lake");
    let session = open(dir.path(), &clock)?;
    session
        .execute_all(&format!(
            "CREATE STREAM blobs WITH (shards = 1, format = 'raw');
             CREATE DELIVERY STREAM out FROM blobs WITH (
               destination = '{}', format = 'json', buffer_size_mb = 1, buffer_interval_seconds = 900);",
            lake.display()
        ))
        .await?;
    // 1,100 records of 1,000 bytes: past 1 MiB after 1,049 of them.
    let line = "x".repeat(999);
    for chunk in 0..11 {
        let values: Vec<String> = (0..100)
            .map(|i| format!("('k{}', '{line}')", chunk * 100 + i))
            .collect();
        session
            .execute_all(&format!("INSERT INTO blobs VALUES {}", values.join(", ")))
            .await?;
    }
    session.execute_all("FLUSH").await?;
    let written = files(&lake);
    assert_eq!(written.len(), 1, "{written:?}");
    let text = std::fs::read_to_string(lake.join(&written[0]))?;
    assert!(
        text.lines().count() >= 1_049,
        "{} lines",
        text.lines().count()
    );
    assert!(text.lines().all(|l| l == line));
    session.shutdown().await;
    Ok(())
}
