//! Records in the KPL's aggregated format through SQL: a query, a continuous query and a pump
//! see each user record as its own row (its own partition key, its columns decoded), while the
//! stream keeps the aggregate as the one record it is (what `GetRecords` returns). A record that
//! only looks like an aggregate is an ordinary record and an `error_stream` row.

use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;
use sluice_engine::kpl::aggregate;
use sluice_engine::{Engine, EngineOptions, PutRecord, ShardIterator, StartPosition};
use sluice_sql::SluiceSession;

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// Every value of `column` in `batches`, as text.
fn texts(batches: &[RecordBatch], column: &str) -> Vec<String> {
    let mut out = Vec::new();
    for batch in batches {
        let Some(values) = batch.column_by_name(column) else {
            continue;
        };
        let values = cast(values, &DataType::Utf8).expect("text");
        let values = values.as_string::<i32>();
        for row in 0..values.len() {
            out.push(if values.is_null(row) {
                "NULL".to_string()
            } else {
                values.value(row).to_string()
            });
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_sees_each_user_record_of_an_aggregate() -> TestResult {
    let dir = tempfile::tempdir()?;
    let engine = Engine::open(EngineOptions::new(dir.path()))?;
    let session = SluiceSession::new(engine.clone())?;
    session
        .execute_all(
            "CREATE STREAM clicks (page VARCHAR, ms INT) WITH (format = 'json', shards = 1);
             CREATE STREAM slow (page VARCHAR, key VARCHAR);
             CREATE PUMP slow_pump AS INSERT INTO slow SELECT STREAM page, _partition_key FROM clicks WHERE ms > 100",
        )
        .await?;
    let stream = engine.stream("clicks")?;
    let packed = aggregate(&[
        ("user-a", br#"{"page": "/a", "ms": 120}"#.as_slice()),
        ("user-b", br#"{"page": "/b", "ms": 80}"#.as_slice()),
        ("user-a", br#"{"page": "/c", "ms": 300}"#.as_slice()),
    ]);
    let mut corrupt = packed.clone();
    let last = corrupt.len() - 1;
    corrupt[last] ^= 0xFF;
    stream.append(&[
        PutRecord::new("plain", r#"{"page": "/plain", "ms": 500}"#),
        PutRecord::new("agg", packed.clone()),
        PutRecord::new("bad", corrupt),
    ])?;

    // The stream holds three records, as stored: what GetRecords returns.
    let mut reader = ShardIterator::new(&stream, 0, StartPosition::TrimHorizon)?;
    let stored: usize = reader.next_batches(100)?.iter().map(|b| b.num_rows()).sum();
    assert_eq!(stored, 3);

    // SQL: the aggregate is three rows, each with its own key and columns.
    let rows = session
        .execute_all(
            "SELECT page, ms, _partition_key, _sequence_number, _sub_sequence_number FROM clicks",
        )
        .await?
        .pop()
        .map(|(_, b)| b)
        .unwrap_or_default();
    assert_eq!(texts(&rows, "page"), ["/plain", "/a", "/b", "/c", "NULL"]);
    assert_eq!(texts(&rows, "ms"), ["500", "120", "80", "300", "NULL"]);
    assert_eq!(
        texts(&rows, "_partition_key"),
        ["plain", "user-a", "user-b", "user-a", "bad"]
    );
    let sequence = texts(&rows, "_sequence_number");
    assert_eq!(
        sequence[1], sequence[2],
        "user records share their aggregate's number"
    );
    assert_eq!(sequence[2], sequence[3]);
    assert_ne!(sequence[0], sequence[1]);
    // Each user record's place in its aggregate, as the KCL numbers them; NULL for records
    // that were not aggregated (the corrupt look-alike is one of those).
    assert_eq!(
        texts(&rows, "_sub_sequence_number"),
        ["NULL", "0", "1", "2", "NULL"]
    );

    // The look-alike: an ordinary record, and one error row that says why.
    session.execute_all("FLUSH").await?;
    let errors = session
        .execute_all("SELECT reason FROM error_stream WHERE stream_name = 'clicks'")
        .await?
        .pop()
        .map(|(_, b)| b)
        .unwrap_or_default();
    let reasons = texts(&errors, "reason");
    assert_eq!(reasons.len(), 1, "{reasons:?}");
    assert!(reasons[0].contains("MD5"), "{reasons:?}");

    // A pump reads user records too.
    let slow = session
        .execute_all("SELECT page, key FROM slow ORDER BY page")
        .await?
        .pop()
        .map(|(_, b)| b)
        .unwrap_or_default();
    assert_eq!(texts(&slow, "page"), ["/a", "/c", "/plain"]);
    assert_eq!(texts(&slow, "key"), ["user-a", "user-a", "plain"]);
    session.shutdown().await;
    Ok(())
}
