//! End-to-end tests of the engine API: routing, readers, restart, retention and bad input.

use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Float64Type};
use sluice_engine::routing::{even_split, hash_key, route};
use sluice_engine::{
    ERROR_STREAM, Engine, EngineOptions, Error, ManualClock, PutRecord, ShardIterator,
    StartPosition, StreamFormat, StreamSpec, fields,
};

type TestResult = Result<(), Box<dyn std::error::Error>>;

const START: i64 = 1_767_261_600_000; // 2026-01-01 10:00:00 UTC

fn options(dir: &std::path::Path, clock: &ManualClock) -> EngineOptions {
    EngineOptions::new(dir)
        .with_clock(Arc::new(clock.clone()))
        .with_background(false)
}

fn ticker_spec(shards: u32) -> StreamSpec {
    let mut spec = StreamSpec::with_columns(
        "ticker",
        shards,
        StreamFormat::Json,
        fields(&[("symbol", DataType::Utf8), ("price", DataType::Float64)]),
    );
    spec.partition_key = Some("symbol".into());
    spec
}

fn tick(symbol: &str, price: f64) -> PutRecord {
    PutRecord::new(
        symbol,
        format!(r#"{{"symbol":"{symbol}","price":{price}}}"#),
    )
}

fn read_all(
    stream: &sluice_engine::Stream,
    shard: u32,
    start: StartPosition,
) -> Result<Vec<RecordBatch>, Error> {
    let mut reader = ShardIterator::new(stream, shard, start)?;
    let mut out = Vec::new();
    loop {
        let batches = reader.next_batches(1000)?;
        if batches.is_empty() {
            return Ok(out);
        }
        out.extend(batches);
    }
}

fn prices(batches: &[RecordBatch]) -> Vec<f64> {
    batches
        .iter()
        .flat_map(|b| {
            let column = b
                .column_by_name("price")
                .map(|c| c.as_primitive::<Float64Type>().clone());
            column.map(|c| c.values().to_vec()).unwrap_or_default()
        })
        .collect()
}

#[test]
fn records_route_by_md5_and_read_back_in_order() -> TestResult {
    let dir = tempfile::tempdir()?;
    let clock = ManualClock::new(START);
    let engine = Engine::open(options(dir.path(), &clock))?;
    let stream = engine.create_stream(ticker_spec(3), false)?;
    let puts = stream.append(&[tick("a", 1.0), tick("a", 2.0), tick("b", 3.0)])?;
    let expected = route(&even_split(3), hash_key("a")) as u32;
    assert_eq!(expected, 0);
    assert_eq!(puts[0].shard_index, expected);
    assert_eq!(puts[1].shard_index, expected);
    assert!(puts[0].sequence_number() < puts[1].sequence_number());
    let shard_a = read_all(&stream, expected, StartPosition::TrimHorizon)?;
    assert_eq!(prices(&shard_a), vec![1.0, 2.0]);
    let seqs = shard_a[0]
        .column_by_name("_sequence_number")
        .map(|c| c.as_string::<i32>().value(1).to_string());
    assert_eq!(seqs, Some(puts[1].sequence_number()));
    Ok(())
}

#[test]
fn readers_start_where_kinesis_lets_them() -> TestResult {
    let dir = tempfile::tempdir()?;
    let clock = ManualClock::new(START);
    let engine = Engine::open(options(dir.path(), &clock))?;
    let stream = engine.create_stream(ticker_spec(1), false)?;
    let first = stream.append(&[tick("x", 1.0), tick("x", 2.0)])?;
    engine.flush()?; // the first two are sealed, the rest stay in the tail
    clock.advance(60_000);
    let later = stream.append(&[tick("x", 3.0)])?;
    let mut latest = ShardIterator::new(&stream, 0, StartPosition::Latest)?;
    stream.append(&[tick("x", 4.0)])?;

    assert_eq!(
        prices(&read_all(&stream, 0, StartPosition::TrimHorizon)?),
        vec![1.0, 2.0, 3.0, 4.0]
    );
    assert_eq!(prices(&latest.next_batches(10)?), vec![4.0]);
    assert!(latest.next_batches(10)?.is_empty());
    let at = StartPosition::AtSequenceNumber(first[1].sequence_number());
    assert_eq!(prices(&read_all(&stream, 0, at)?), vec![2.0, 3.0, 4.0]);
    let after = StartPosition::AfterSequenceNumber(first[1].sequence_number());
    assert_eq!(prices(&read_all(&stream, 0, after)?), vec![3.0, 4.0]);
    let at_time = StartPosition::AtTimestamp(START + 30_000);
    assert_eq!(prices(&read_all(&stream, 0, at_time)?), vec![3.0, 4.0]);
    assert_eq!(later[0].seq, 3);

    // Independent readers each keep their own place.
    let mut one = ShardIterator::new(&stream, 0, StartPosition::TrimHorizon)?;
    let mut two = ShardIterator::new(&stream, 0, StartPosition::TrimHorizon)?;
    assert_eq!(prices(&one.next_batches(1)?), vec![1.0]);
    assert_eq!(prices(&two.next_batches(3)?), vec![1.0, 2.0, 3.0]);
    assert_eq!(prices(&one.next_batches(1)?), vec![2.0]);
    Ok(())
}

#[test]
fn a_sequence_number_of_another_shard_is_refused() -> TestResult {
    let dir = tempfile::tempdir()?;
    let clock = ManualClock::new(START);
    let engine = Engine::open(options(dir.path(), &clock))?;
    let stream = engine.create_stream(ticker_spec(2), false)?;
    let put = stream.append(&[tick("a", 1.0)])?;
    let other = 1 - put[0].shard_index;
    let err = ShardIterator::new(
        &stream,
        other,
        StartPosition::AtSequenceNumber(put[0].sequence_number()),
    );
    assert!(
        err.err()
            .map(|e| e.to_string())
            .unwrap_or_default()
            .contains("belongs to")
    );
    Ok(())
}

#[test]
fn sealed_and_logged_records_survive_a_restart() -> TestResult {
    let dir = tempfile::tempdir()?;
    let clock = ManualClock::new(START);
    {
        let engine = Engine::open(options(dir.path(), &clock))?;
        let stream = engine.create_stream(ticker_spec(4), false)?;
        stream.append(&[tick("a", 1.0), tick("b", 2.0)])?;
        engine.flush()?;
        stream.append(&[tick("a", 3.0), tick("c", 4.0)])?; // only in the write-ahead log
    }
    let engine = Engine::open(options(dir.path(), &clock))?;
    let stream = engine.stream("ticker")?;
    let mut all: Vec<f64> = (0..4)
        .map(|shard| read_all(&stream, shard, StartPosition::TrimHorizon))
        .collect::<Result<Vec<_>, _>>()?
        .iter()
        .flat_map(|b| prices(b))
        .collect();
    all.sort_by(f64::total_cmp);
    assert_eq!(all, vec![1.0, 2.0, 3.0, 4.0]);
    // Numbering continues after the recovered records.
    let put = stream.append(&[tick("a", 5.0)])?;
    assert_eq!(put[0].seq, 3);
    Ok(())
}

#[test]
fn a_second_engine_cannot_open_the_same_folder() -> TestResult {
    let dir = tempfile::tempdir()?;
    let clock = ManualClock::new(START);
    let _engine = Engine::open(options(dir.path(), &clock))?;
    let second = Engine::open(options(dir.path(), &clock));
    assert!(
        second
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
            .contains("in use")
    );
    Ok(())
}

#[test]
fn retention_expires_whole_sealed_batches_only() -> TestResult {
    let dir = tempfile::tempdir()?;
    let clock = ManualClock::new(START);
    let engine = Engine::open(options(dir.path(), &clock))?;
    let stream = engine.create_stream(ticker_spec(1), false)?;
    stream.append(&[tick("a", 1.0)])?;
    engine.flush()?;
    clock.advance(23 * 3600 * 1000);
    stream.append(&[tick("a", 2.0)])?;
    engine.flush()?;
    clock.advance(2 * 3600 * 1000); // the first batch is now 25 h old, the second 2 h
    assert_eq!(engine.expire()?, 1);
    assert_eq!(
        prices(&read_all(&stream, 0, StartPosition::TrimHorizon)?),
        vec![2.0]
    );
    Ok(())
}

#[test]
fn numbering_continues_after_everything_expired_and_a_restart() -> TestResult {
    let dir = tempfile::tempdir()?;
    let clock = ManualClock::new(START);
    {
        let engine = Engine::open(options(dir.path(), &clock))?;
        let stream = engine.create_stream(ticker_spec(1), false)?;
        stream.append(&[tick("a", 1.0), tick("a", 2.0)])?;
        engine.flush()?;
        clock.advance(25 * 3600 * 1000);
        assert_eq!(engine.expire()?, 2);
    }
    let engine = Engine::open(options(dir.path(), &clock))?;
    let stream = engine.stream("ticker")?;
    assert!(read_all(&stream, 0, StartPosition::TrimHorizon)?.is_empty());
    let put = stream.append(&[tick("a", 3.0)])?;
    assert_eq!(put[0].seq, 3, "sequence numbers are never handed out twice");
    Ok(())
}

#[test]
fn bad_records_are_kept_with_null_columns_and_reported() -> TestResult {
    let dir = tempfile::tempdir()?;
    let clock = ManualClock::new(START);
    let engine = Engine::open(options(dir.path(), &clock))?;
    let stream = engine.create_stream(ticker_spec(1), false)?;
    let puts = stream.append(&[tick("a", 1.0), PutRecord::new("a", "{oops"), tick("a", 2.0)])?;
    let batches = read_all(&stream, 0, StartPosition::TrimHorizon)?;
    assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 3);
    let price = batches[0].column_by_name("price").map(|c| c.is_null(1));
    assert_eq!(price, Some(true));
    let data = batches[0]
        .column_by_name("_data")
        .map(|c| c.as_binary::<i32>().value(1).to_vec());
    assert_eq!(data, Some(b"{oops".to_vec()));

    let errors = engine.stream(ERROR_STREAM)?;
    let reported = read_all(&errors, 0, StartPosition::TrimHorizon)?;
    assert_eq!(reported[0].num_rows(), 1);
    let column = |name: &str| {
        reported[0]
            .column_by_name(name)
            .map(|c| c.as_string::<i32>().value(0).to_string())
    };
    assert_eq!(column("stream_name").as_deref(), Some("ticker"));
    assert_eq!(column("sequence_number"), Some(puts[1].sequence_number()));
    assert!(
        column("reason")
            .unwrap_or_default()
            .contains("not valid json")
    );
    Ok(())
}

#[test]
fn limits_are_enforced_before_anything_is_accepted() -> TestResult {
    let dir = tempfile::tempdir()?;
    let clock = ManualClock::new(START);
    let engine = Engine::open(options(dir.path(), &clock))?;
    let stream = engine.create_stream(StreamSpec::raw("blobs", 2), false)?;
    let big = PutRecord::new("k", vec![0u8; 1024 * 1024 + 1]);
    let err = stream
        .append(&[PutRecord::new("k", "ok"), big])
        .err()
        .map(|e| e.to_string());
    assert!(err.unwrap_or_default().contains("at most 1048576 bytes"));
    let long_key = PutRecord::new("k".repeat(257), "x");
    let err = stream.append(&[long_key]).err().map(|e| e.to_string());
    assert!(err.unwrap_or_default().contains("1 to 256 characters"));
    assert!(stream.append(&[PutRecord::new("", "x")]).is_err());
    assert_eq!(stream.stats().iter().map(|s| s.records).sum::<usize>(), 0);
    // Exactly 1 MiB and 256 characters are fine.
    stream.append(&[PutRecord::new("k".repeat(256), vec![7u8; 1024 * 1024])])?;
    Ok(())
}

#[test]
fn dropped_streams_are_gone_after_restart() -> TestResult {
    let dir = tempfile::tempdir()?;
    let clock = ManualClock::new(START);
    {
        let engine = Engine::open(options(dir.path(), &clock))?;
        engine.create_stream(ticker_spec(2), false)?;
        assert!(matches!(
            engine.create_stream(ticker_spec(2), false),
            Err(Error::StreamAlreadyExists(_))
        ));
        engine.drop_stream("ticker", false)?;
        assert!(engine.drop_stream(ERROR_STREAM, false).is_err());
    }
    let engine = Engine::open(options(dir.path(), &clock))?;
    assert!(matches!(
        engine.stream("ticker"),
        Err(Error::StreamNotFound(_))
    ));
    let recreated = engine.create_stream(ticker_spec(2), false)?;
    assert_eq!(
        recreated.stats().iter().map(|s| s.records).sum::<usize>(),
        0
    );
    Ok(())
}

#[test]
fn explicit_hash_keys_override_the_partition_key() -> TestResult {
    let dir = tempfile::tempdir()?;
    let clock = ManualClock::new(START);
    let engine = Engine::open(options(dir.path(), &clock))?;
    let stream = engine.create_stream(StreamSpec::raw("blobs", 3), false)?;
    let mut record = PutRecord::new("a", "x"); // "a" hashes into shard 0
    record.explicit_hash_key = Some(u128::MAX);
    assert_eq!(stream.append(&[record])?[0].shard_index, 2);
    Ok(())
}

#[test]
fn csv_streams_decode_by_position() -> TestResult {
    let dir = tempfile::tempdir()?;
    let clock = ManualClock::new(START);
    let engine = Engine::open(options(dir.path(), &clock))?;
    let spec = StreamSpec::with_columns(
        "quotes",
        1,
        StreamFormat::Csv,
        fields(&[("symbol", DataType::Utf8), ("price", DataType::Float64)]),
    );
    let stream = engine.create_stream(spec, false)?;
    stream.append(&[
        PutRecord::new("k", "AMZN,1.5"),
        PutRecord::new("k", "MSFT,2.5"),
    ])?;
    assert_eq!(
        prices(&read_all(&stream, 0, StartPosition::TrimHorizon)?),
        vec![1.5, 2.5]
    );
    Ok(())
}

#[test]
fn decoded_appends_route_like_blobs_and_recover_from_the_log() -> TestResult {
    use arrow::array::{Float64Array, StringArray};
    use sluice_engine::RecordRef;
    let dir = tempfile::tempdir()?;
    let clock = ManualClock::new(START);
    let symbols = ["a", "b", "c", "d", "e", "f"];
    let blobs: Vec<String> = symbols
        .iter()
        .enumerate()
        .map(|(i, s)| format!(r#"{{"symbol":"{s}","price":{i}.5}}"#))
        .collect();
    {
        let engine = Engine::open(options(dir.path(), &clock))?;
        let stream = engine.create_stream(ticker_spec(3), false)?;
        let schema = Arc::clone(stream.user_schema());
        let columns = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from_iter_values(symbols)),
                Arc::new(Float64Array::from_iter_values(
                    (0..symbols.len()).map(|i| i as f64 + 0.5),
                )),
            ],
        )?;
        let refs: Vec<RecordRef<'_>> = symbols
            .iter()
            .zip(&blobs)
            .map(|(s, b)| RecordRef::new(s, b.as_bytes()))
            .collect();
        let put = stream.append_decoded(&refs, &columns)?;
        // Each record goes where its partition key routes it, as on the blob path.
        for (symbol, put) in symbols.iter().zip(&put) {
            assert_eq!(
                put.shard_index,
                route(&even_split(3), hash_key(symbol)) as u32
            );
        }
        // Columns that are not the stream's are refused, naming both.
        let wrong = RecordBatch::try_new(
            Arc::new(arrow::datatypes::Schema::new(vec![
                arrow::datatypes::Field::new("symbol", DataType::Utf8, true),
            ])),
            vec![Arc::new(StringArray::from_iter_values(["a"]))],
        )?;
        let error = stream
            .append_decoded(&refs[..1], &wrong)
            .err()
            .ok_or("mismatched columns accepted")?;
        assert!(error.to_string().contains("price Float64"), "{error}");
    }
    // Recovery decodes the logged blobs: the same rows come back.
    let engine = Engine::open(options(dir.path(), &clock))?;
    let stream = engine.stream("ticker")?;
    let mut all: Vec<f64> = (0..3)
        .map(|shard| read_all(&stream, shard, StartPosition::TrimHorizon))
        .collect::<Result<Vec<_>, _>>()?
        .iter()
        .flat_map(|b| prices(b))
        .collect();
    all.sort_by(f64::total_cmp);
    assert_eq!(all, vec![0.5, 1.5, 2.5, 3.5, 4.5, 5.5]);
    Ok(())
}

#[test]
fn concurrent_appends_share_fsyncs_and_all_survive_a_restart() -> TestResult {
    let dir = tempfile::tempdir()?;
    let clock = ManualClock::new(START);
    let appends_per_writer = 40;
    let writers = 8;
    {
        let engine = Engine::open(
            options(dir.path(), &clock).with_durability(sluice_engine::Durability::Fsync),
        )?;
        let stream = engine.create_stream(StreamSpec::raw("events", 2), false)?;
        std::thread::scope(|scope| {
            for w in 0..writers {
                let stream = Arc::clone(&stream);
                scope.spawn(move || {
                    for i in 0..appends_per_writer {
                        let records: Vec<PutRecord> = (0..10)
                            .map(|r| PutRecord::new(format!("w{w}-{r}"), format!("{w}-{i}-{r}")))
                            .collect();
                        stream.append(&records).expect("append");
                    }
                });
            }
        });
        let appends = (writers * appends_per_writer) as u64;
        let syncs = stream.wal_syncs();
        assert!(
            syncs > 0 && syncs <= appends,
            "{syncs} fsyncs for {appends} appends"
        );
        eprintln!("group commit: {syncs} fsyncs for {appends} appends");
    }
    let engine = Engine::open(options(dir.path(), &clock))?;
    let stream = engine.stream("events")?;
    let total: usize = stream.stats().iter().map(|s| s.records).sum();
    assert_eq!(total, writers * appends_per_writer * 10);
    Ok(())
}
