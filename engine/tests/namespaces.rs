//! Namespaces: two applications' in-app streams under the same names, each with its own
//! error stream, invisible to the engine's own handle, surviving a restart, and dropped whole.

use std::sync::Arc;

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::DataType;
use sluice_engine::{
    ERROR_STREAM, Engine, EngineOptions, Error, ManualClock, PumpDefinition, PutRecord,
    ShardIterator, StartPosition, StreamFormat, StreamSpec, fields,
};

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn options(dir: &std::path::Path) -> EngineOptions {
    EngineOptions::new(dir)
        .with_clock(Arc::new(ManualClock::new(1_767_261_600_000)))
        .with_background(false)
}

fn source_spec() -> StreamSpec {
    StreamSpec::with_columns(
        "SOURCE_SQL_STREAM_001",
        1,
        StreamFormat::Json,
        fields(&[("TICKER", DataType::Utf8), ("PRICE", DataType::Float64)]),
    )
}

fn rows(stream: &Arc<sluice_engine::Stream>) -> Result<Vec<RecordBatch>, Error> {
    let mut reader = ShardIterator::new(stream, 0, StartPosition::TrimHorizon)?;
    let mut out = Vec::new();
    loop {
        let batches = reader.next_batches(1000)?;
        if batches.is_empty() {
            return Ok(out);
        }
        out.extend(batches);
    }
}

fn count(batches: &[RecordBatch]) -> usize {
    batches.iter().map(|b| b.num_rows()).sum()
}

#[test]
fn same_names_in_two_namespaces_stay_apart() -> TestResult {
    let dir = tempfile::tempdir()?;
    let engine = Engine::open(options(dir.path()))?;
    let a = engine.namespace("app_a")?;
    let b = engine.namespace("app_b")?;
    let in_a = a.create_stream(source_spec(), false)?;
    let in_b = b.create_stream(source_spec(), false)?;
    in_a.append(&[PutRecord::new("k", r#"{"TICKER":"AMZN","PRICE":1.5}"#)])?;
    in_b.append(&[
        PutRecord::new("k", r#"{"TICKER":"ORCL","PRICE":2.5}"#),
        PutRecord::new("k", "{not json"),
    ])?;

    assert_eq!(count(&rows(&a.stream("SOURCE_SQL_STREAM_001")?)?), 1);
    assert_eq!(count(&rows(&b.stream("SOURCE_SQL_STREAM_001")?)?), 2);
    // Each namespace lists its own streams under their own names; the engine's handle sees
    // neither, and cannot be reached by the bare name.
    let mut names: Vec<String> = a
        .streams()
        .iter()
        .map(|s| a.local_name(s.name()).to_string())
        .collect();
    names.sort();
    assert_eq!(names, ["SOURCE_SQL_STREAM_001", ERROR_STREAM]);
    assert!(engine.try_stream("SOURCE_SQL_STREAM_001").is_none());
    assert!(
        engine
            .streams()
            .iter()
            .all(|s| !s.name().contains("SOURCE"))
    );
    assert_eq!(engine.namespaces(), ["app_a", "app_b"]);
    // The qualified name reaches it from anywhere.
    assert!(engine.try_stream("app_b:SOURCE_SQL_STREAM_001").is_some());

    // b's bad record went to b's error stream, not a's nor the engine's.
    let reported = rows(&b.stream(ERROR_STREAM)?)?;
    assert_eq!(count(&reported), 1);
    let reason = reported[0]
        .column_by_name("reason")
        .map(|c| c.as_string::<i32>().value(0).to_string())
        .unwrap_or_default();
    assert!(reason.contains("not valid json"), "{reason}");
    assert_eq!(count(&rows(&a.stream(ERROR_STREAM)?)?), 0);
    assert_eq!(count(&rows(&engine.stream(ERROR_STREAM)?)?), 0);

    // A name taken in one namespace is free in the engine's own.
    engine.create_stream(source_spec(), false)?;
    assert!(matches!(
        a.create_stream(source_spec(), false),
        Err(Error::StreamAlreadyExists(name)) if name == "SOURCE_SQL_STREAM_001"
    ));
    Ok(())
}

#[test]
fn namespaces_survive_a_restart_and_drop_whole() -> TestResult {
    let dir = tempfile::tempdir()?;
    {
        let engine = Engine::open(options(dir.path()))?;
        let a = engine.namespace("app_a")?;
        a.create_stream(source_spec(), false)?
            .append(&[PutRecord::new("k", "{oops")])?;
        a.save_pump(PumpDefinition {
            name: "STREAM_PUMP".into(),
            sql: "INSERT INTO x SELECT * FROM SOURCE_SQL_STREAM_001".into(),
            running: true,
            reads: vec!["SOURCE_SQL_STREAM_001".into()],
            writes: None,
        })?;
        assert!(engine.pumps().is_empty());
        // The pump's stream cannot go while the pump reads it.
        assert!(a.drop_stream("SOURCE_SQL_STREAM_001", false).is_err());
        assert!(a.drop_stream(ERROR_STREAM, false).is_err());
    }
    let engine = Engine::open(options(dir.path()))?;
    let a = engine.namespace("app_a")?;
    let pumps = a.pumps();
    assert_eq!(pumps.len(), 1);
    assert_eq!(pumps[0].name, "STREAM_PUMP");
    assert_eq!(pumps[0].reads, ["SOURCE_SQL_STREAM_001"]);
    // The recovered stream still reports into its namespace's error stream.
    a.stream("SOURCE_SQL_STREAM_001")?
        .append(&[PutRecord::new("k", "{again")])?;
    assert_eq!(count(&rows(&a.stream(ERROR_STREAM)?)?), 2);

    engine.drop_namespace("app_a")?;
    assert!(engine.namespaces().is_empty());
    assert!(a.pumps().is_empty());
    drop((a, engine));
    let engine = Engine::open(options(dir.path()))?;
    assert!(engine.namespaces().is_empty());
    assert!(engine.namespace("bad:name").is_err());
    Ok(())
}

#[test]
fn a_namespace_error_stream_has_kda_columns() -> TestResult {
    let dir = tempfile::tempdir()?;
    let engine = Engine::open(options(dir.path()))?;
    let a = engine.namespace("app_a")?;
    let stream = a.create_stream(source_spec(), false)?;
    stream.append(&[PutRecord::new("k", "{x")])?;
    let reported = rows(&a.stream(ERROR_STREAM)?)?;
    let text = |name: &str| {
        reported[0]
            .column_by_name(name)
            .map(|c| c.as_string::<i32>().value(0).to_string())
    };
    assert_eq!(text("ERROR_NAME").as_deref(), Some("Data_Conversion_Error"));
    assert_eq!(text("DATA_ROW").as_deref(), Some("7b78"));
    assert_eq!(text("ERROR_LEVEL").as_deref(), Some("Error"));
    assert!(
        text("MESSAGE")
            .unwrap_or_default()
            .contains("not valid json")
    );
    let rowtime = reported[0].column_by_name("DATA_ROWTIME").map(|c| {
        c.as_primitive::<arrow::datatypes::TimestampMillisecondType>()
            .value(0)
    });
    assert_eq!(rowtime, Some(1_767_261_600_000));
    Ok(())
}
