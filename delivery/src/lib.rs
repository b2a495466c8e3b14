//! Sluice's delivery streams, in the manner of Kinesis Data Firehose.
//!
//! `CREATE DELIVERY STREAM name FROM stream WITH (destination = …, format = …)` reads a stream
//! like any other reader, from where it last committed ([`runner`]); buffers its rows per
//! destination partition until `buffer_size_mb` of records or `buffer_interval_seconds` of age;
//! encodes each buffer as Parquet (with the stream's schema), JSON lines or CSV, compressed
//! ([`encode`]); and writes it under a key built from Firehose's prefix expressions
//! ([`prefix`]) through `object_store` ([`destination`]): a local folder or an S3-compatible
//! bucket. Positions are committed only after an object is durably written, and objects are
//! created conditionally, so a retry never overwrites and a crash never loses records (it can
//! deliver some twice). Records that did not decode go to the error output prefix as JSON lines
//! with the reason.

pub mod destination;
pub mod encode;
pub mod error;
pub mod options;
pub mod partition_query;
pub mod prefix;
pub mod record_columns;
pub mod runner;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema};
use parking_lot::Mutex;
use sluice_engine::{DeliveryDefinition, Engine, Stream};

pub use destination::Destination;
pub use error::{Error, Result};
pub use options::DeliveryOptions;
pub use runner::{DeliveryStats, Runner};

/// A running delivery stream.
struct Running {
    source: Arc<Stream>,
    destination: String,
    options: DeliveryOptions,
    stats: Arc<DeliveryStats>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The delivery streams running on an engine.
#[derive(Default)]
pub struct DeliveryManager {
    running: Mutex<HashMap<String, Running>>,
}

impl std::fmt::Debug for DeliveryManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeliveryManager")
            .field("running", &self.running.lock().keys().collect::<Vec<_>>())
            .finish()
    }
}

/// Checks a definition against the engine: the source exists, the options are valid, the
/// destination opens.
pub fn prepare(
    engine: &Engine,
    definition: &DeliveryDefinition,
) -> Result<(Arc<Stream>, DeliveryOptions, Destination)> {
    let source = engine.try_stream(&definition.source).ok_or_else(|| {
        Error::NotFound(format!(
            "stream '{}' does not exist; SHOW STREAMS lists the streams",
            definition.source
        ))
    })?;
    let options = DeliveryOptions::parse(&definition.options, source.user_schema())?;
    let destination = Destination::open(&options.destination, &options.s3)?;
    Ok((source, options, destination))
}

impl DeliveryManager {
    /// Starts delivery stream `definition` (checked with [`prepare`]). Needs a tokio runtime.
    pub fn start(&self, engine: &Engine, definition: &DeliveryDefinition) -> Result<()> {
        let (source, options, destination) = prepare(engine, definition)?;
        let stats = Arc::new(DeliveryStats::new());
        let runner = Runner::new(
            engine.clone(),
            &definition.name,
            definition.version,
            Arc::clone(&source),
            options.clone(),
            destination.clone(),
            Arc::clone(&stats),
        )?;
        let task = tokio::spawn(runner.run());
        self.running.lock().insert(
            definition.name.clone(),
            Running {
                source,
                destination: destination.url().to_string(),
                options,
                stats,
                task,
            },
        );
        Ok(())
    }

    /// Starts every delivery stream of the catalog; one that cannot start is logged and shows
    /// its reason in `SHOW DELIVERY STREAMS`.
    pub fn start_saved(&self, engine: &Engine) {
        for definition in engine.deliveries() {
            if let Err(e) = self.start(engine, &definition) {
                log::error!("delivery stream '{}' could not start: {e}", definition.name);
            }
        }
    }

    /// Stops delivery stream `name` if it runs; what it buffered is delivered after it starts
    /// again (its positions were never committed past it).
    pub async fn stop(&self, name: &str) {
        let running = self.running.lock().remove(name);
        if let Some(running) = running {
            running.task.abort();
            let _ = (&mut { running }.task).await;
        }
    }

    /// Stops every delivery stream.
    pub async fn stop_all(&self) {
        let names: Vec<String> = self.running.lock().keys().cloned().collect();
        for name in names {
            self.stop(&name).await;
        }
    }

    /// Waits until every running delivery stream has read everything appended so far and
    /// written every buffer that is due (all of them, with `buffer_interval_seconds = 0`).
    pub async fn wait_settled(&self, engine: &Engine, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let now = engine.clock().now_millis();
            let lagging: Vec<String> = self
                .running
                .lock()
                .iter()
                .filter(|(_, r)| !r.task.is_finished() && !r.stats.settled(&r.source, now))
                .map(|(name, _)| name.clone())
                .collect();
            if lagging.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Error::Invalid(format!(
                    "FLUSH gave up after {} s waiting for delivery streams {}",
                    timeout.as_secs(),
                    lagging.join(", ")
                )));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// `SHOW DELIVERY STREAMS`: every delivery stream of the catalog with what it has done.
    pub fn show(&self, engine: &Engine) -> Result<RecordBatch> {
        let running = self.running.lock();
        let now = engine.clock().now_millis();
        let mut names = Vec::new();
        let mut sources = Vec::new();
        let mut destinations = Vec::new();
        let mut formats = Vec::new();
        let mut states = Vec::new();
        let mut records = Vec::new();
        let mut bytes = Vec::new();
        let mut objects = Vec::new();
        let mut errors = Vec::new();
        let mut oldest = Vec::new();
        let mut last_errors = Vec::new();
        for definition in engine.deliveries() {
            let run = running.get(&definition.name);
            names.push(definition.name.clone());
            sources.push(definition.source.clone());
            let option = |key: &str| {
                definition
                    .options
                    .iter()
                    .find(|(k, _)| k == key)
                    .map(|(_, v)| v.clone())
            };
            destinations.push(
                run.map(|r| r.destination.clone())
                    .or_else(|| option("destination")),
            );
            formats.push(run.map(|r| {
                format!(
                    "{} ({})",
                    r.options.format.name(),
                    r.options.compression.name()
                )
            }));
            states.push(match run {
                Some(r) if r.task.is_finished() => "stopped".to_string(),
                Some(_) => "running".to_string(),
                None => "not running: could not start (see the log)".to_string(),
            });
            let stat = |f: &dyn Fn(&DeliveryStats) -> u64| run.map_or(0, |r| f(&r.stats));
            records.push(stat(&|s| s.records_delivered.load(Ordering::Relaxed)));
            bytes.push(stat(&|s| s.bytes_delivered.load(Ordering::Relaxed)));
            objects.push(stat(&|s| s.objects_written.load(Ordering::Relaxed)));
            errors.push(stat(&|s| s.error_records.load(Ordering::Relaxed)));
            oldest.push(run.and_then(|r| {
                let at = r.stats.oldest_undelivered_ms.load(Ordering::Relaxed);
                (at != i64::MIN).then(|| (now - at).max(0))
            }));
            last_errors.push(run.and_then(|r| r.stats.last_error.lock().clone()));
        }
        let schema = Arc::new(Schema::new(vec![
            Field::new("name", DataType::Utf8, false),
            Field::new("source", DataType::Utf8, false),
            Field::new("destination", DataType::Utf8, true),
            Field::new("format", DataType::Utf8, true),
            Field::new("state", DataType::Utf8, false),
            Field::new("records_delivered", DataType::UInt64, false),
            Field::new("bytes_delivered", DataType::UInt64, false),
            Field::new("objects_written", DataType::UInt64, false),
            Field::new("error_records", DataType::UInt64, false),
            Field::new("oldest_undelivered_age_ms", DataType::Int64, true),
            Field::new("last_error", DataType::Utf8, true),
        ]));
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(names)),
            Arc::new(StringArray::from(sources)),
            Arc::new(StringArray::from(destinations)),
            Arc::new(StringArray::from(formats)),
            Arc::new(StringArray::from(states)),
            Arc::new(UInt64Array::from(records)),
            Arc::new(UInt64Array::from(bytes)),
            Arc::new(UInt64Array::from(objects)),
            Arc::new(UInt64Array::from(errors)),
            Arc::new(Int64Array::from(oldest)),
            Arc::new(StringArray::from(last_errors)),
        ];
        Ok(RecordBatch::try_new(schema, columns)?)
    }

    /// `DESCRIBE DELIVERY STREAM name`: its settings, defaults included (never credentials).
    pub fn describe(&self, engine: &Engine, name: &str) -> Result<RecordBatch> {
        let Some(definition) = engine.deliveries().into_iter().find(|d| d.name == name) else {
            return Err(Error::NotFound(format!(
                "delivery stream '{name}' does not exist; SHOW DELIVERY STREAMS lists them"
            )));
        };
        let source = engine.try_stream(&definition.source);
        let empty = Schema::empty();
        let columns = source.as_ref().map_or(&empty, |s| s.user_schema().as_ref());
        let options = DeliveryOptions::parse(&definition.options, columns)?;
        let mut rows: Vec<(&str, String)> = vec![
            ("source", definition.source.clone()),
            ("destination", options.destination.clone()),
            ("format", options.format.name().to_string()),
            ("compression", options.compression.name().to_string()),
            (
                "buffer_size_mb",
                (options.buffer_size_bytes / (1024 * 1024)).to_string(),
            ),
            (
                "buffer_interval_seconds",
                (options.buffer_interval_ms / 1000).to_string(),
            ),
            ("prefix", options.prefix.text().to_string()),
            (
                "error_output_prefix",
                options.error_output_prefix.text().to_string(),
            ),
            ("version", definition.version.to_string()),
        ];
        if let Some(endpoint) = &options.s3.endpoint {
            rows.push(("s3_endpoint", endpoint.clone()));
        }
        if let Some(region) = &options.s3.region {
            rows.push(("s3_region", region.clone()));
        }
        let schema = Arc::new(Schema::new(vec![
            Field::new("option", DataType::Utf8, false),
            Field::new("value", DataType::Utf8, false),
        ]));
        Ok(RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(
                    rows.iter().map(|(k, _)| *k).collect::<Vec<_>>(),
                )),
                Arc::new(StringArray::from(
                    rows.iter().map(|(_, v)| v.as_str()).collect::<Vec<_>>(),
                )),
            ],
        )?)
    }
}
