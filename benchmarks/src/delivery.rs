//! The delivery benchmark: a delivery stream writing Parquet objects of a stream's records to a
//! local folder, beside the arrow-rs Parquet writer writing the same batches, grouped into
//! objects of the same size, to the same kind of store with no buffering logic.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use object_store::local::LocalFileSystem;
use object_store::path::Path as StorePath;
use object_store::{ObjectStoreExt, PutPayload};
use parquet::arrow::ArrowWriter;
use parquet::file::properties::WriterProperties;
use sluice_delivery::DeliveryManager;
use sluice_engine::{
    DeliveryDefinition, Durability, Engine, EngineOptions, RecordRef, ShardIterator, StartPosition,
    StreamFormat, StreamSpec,
};

use crate::measure::CpuTimer;

pub fn delivery(records: usize) -> Result<(), Box<dyn std::error::Error>> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(records))
}

async fn run(records: usize) -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let engine = Engine::open(
        EngineOptions::new(dir.path().join("data"))
            .with_durability(Durability::Buffered)
            .with_background(false),
    )?;
    let stream = engine.create_stream(
        StreamSpec::with_columns(
            "events",
            4,
            StreamFormat::Json,
            Arc::new(Schema::new(vec![
                Field::new("user_id", DataType::Utf8, true),
                Field::new("url", DataType::Utf8, true),
                Field::new("views", DataType::Int64, true),
                Field::new("ts", DataType::Timestamp(TimeUnit::Millisecond, None), true),
            ])),
        ),
        false,
    )?;
    let mut input_bytes = 0usize;
    let mut batch = Vec::with_capacity(500);
    for i in 0..records {
        let record = format!(
            r#"{{"user_id":"user-{:06}","url":"/page/{}","views":{},"ts":{}}}"#,
            i % 100_000,
            i % 997,
            i % 13,
            1_767_225_600_000i64 + i as i64
        );
        input_bytes += record.len();
        batch.push((format!("p{}", i % 64), record));
        if batch.len() == 500 || i + 1 == records {
            let refs: Vec<RecordRef<'_>> = batch
                .iter()
                .map(|(k, d)| RecordRef::new(k, d.as_bytes()))
                .collect();
            stream.append_refs(&refs)?;
            batch.clear();
        }
    }
    engine.flush()?;
    let mb = input_bytes as f64 / 1e6;
    println!(
        "delivery: {records} records ({mb:.1} MB of JSON) in a 4-shard stream -> Parquet (snappy) objects in a local folder"
    );

    // Baseline: read the same batches, group them into objects of the same size, write each
    // with the arrow-rs Parquet writer to a local object store. No buffering logic, no keys.
    let baseline_dir = dir.path().join("baseline");
    std::fs::create_dir_all(&baseline_dir)?;
    let store = LocalFileSystem::new_with_prefix(&baseline_dir)?;
    let n_user = stream.user_schema().fields().len();
    let columns: Vec<usize> = (0..n_user).collect();
    let cpu = CpuTimer::start();
    let wall = Instant::now();
    let mut objects = 0;
    for shard in stream.shards().iter() {
        let mut reader = ShardIterator::new(&stream, shard.index(), StartPosition::TrimHorizon)?;
        loop {
            let batches: Vec<RecordBatch> = reader
                .next_batches(8192)?
                .iter()
                .map(|b| b.project(&columns))
                .collect::<Result<_, _>>()?;
            if batches.is_empty() {
                break;
            }
            let schema = batches[0].schema();
            let mut out = Vec::new();
            let properties = WriterProperties::builder()
                .set_compression(parquet::basic::Compression::SNAPPY)
                .build();
            let mut writer = ArrowWriter::try_new(&mut out, schema, Some(properties))?;
            for b in &batches {
                writer.write(b)?;
            }
            writer.close()?;
            store
                .put(
                    &StorePath::from(format!("object-{objects}.parquet")),
                    PutPayload::from(out),
                )
                .await?;
            objects += 1;
        }
    }
    let base_cpu = cpu.elapsed_secs();
    let base_wall = wall.elapsed().as_secs_f64();

    // Sluice: a delivery stream writing everything read at each step (interval 0), so its
    // objects hold the same batches the baseline grouped.
    let lake = dir.path().join("lake");
    let manager = DeliveryManager::default();
    let cpu = CpuTimer::start();
    let wall = Instant::now();
    manager.start(
        &engine,
        &DeliveryDefinition {
            name: "bench".into(),
            source: "events".into(),
            options: vec![
                ("destination".into(), lake.display().to_string()),
                ("format".into(), "parquet".into()),
                ("buffer_size_mb".into(), "128".into()),
                ("buffer_interval_seconds".into(), "0".into()),
            ],
            version: 1,
        },
    )?;
    manager
        .wait_settled(&engine, Duration::from_secs(3600))
        .await?;
    let cpu_secs = cpu.elapsed_secs();
    let wall_secs = wall.elapsed().as_secs_f64();
    manager.stop_all().await;

    println!("  {:<36} {:>14} {:>14}", "", "delivery", "baseline");
    println!(
        "  {:<36} {:>14.1} {:>14.1}",
        "MB/s of input per core (CPU time)",
        mb / cpu_secs.max(1e-9),
        mb / base_cpu.max(1e-9)
    );
    println!(
        "  {:<36} {:>14.0} {:>14.0}",
        "records/s per core (CPU time)",
        records as f64 / cpu_secs.max(1e-9),
        records as f64 / base_cpu.max(1e-9)
    );
    println!(
        "  {:<36} {:>14.0} {:>14.0}",
        "records/s wall clock",
        records as f64 / wall_secs.max(1e-9),
        records as f64 / base_wall.max(1e-9)
    );
    println!(
        "  delivery / baseline CPU time: {:.2}x (target: at most 1.5x); baseline wrote {objects} objects",
        cpu_secs / base_cpu.max(1e-9)
    );
    Ok(())
}
