//! Built-in sources: generators that feed a stream while Sluice runs, so a newcomer sees a
//! continuous query produce rows within a minute of the first build.
//!
//! `CREATE STREAM ticker (ticker_symbol VARCHAR, sector VARCHAR, change DOUBLE, price DOUBLE)
//! WITH (source = 'demo')` makes a stream fed by a stock ticker shaped like the Kinesis Data
//! Analytics console's demo stream: a few records per second (`rate`), each a JSON record with
//! the stream's own column names, occasionally a large price change (a spike, about one record
//! in forty). Columns are filled by name, in any case: `ticker_symbol` (or `symbol`, `ticker`),
//! `sector`, `change`, `price`, and any `TIMESTAMP` column gets the record's event time.
//!
//! Record `k` is due at `created + k / rate` seconds of processing time and is the same for the
//! same `seed`, whenever and however often it is generated: with the tests' manual clock a
//! stream holds exactly the records its clock has reached. A source feeds only while Sluice
//! runs: after a restart it carries on from the present, not from the time it was stopped, and
//! it never generates more than a minute of records at once.
//!
//! # Example
//!
//! ```text
//! sluice> CREATE STREAM ticker (ticker_symbol VARCHAR, sector VARCHAR, change DOUBLE,
//!      ->   price DOUBLE) WITH (source = 'demo');
//! sluice> SELECT STREAM ticker_symbol, change, price FROM ticker WHERE abs(change) > 4;
//! ```

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::datatypes::{DataType, Schema};
use parking_lot::Mutex;
use sluice_engine::{Engine, PutRecord, SourceDefinition, StreamDefinition};

use crate::error::{Error, Result};

/// The one source kind there is.
pub const DEMO: &str = "demo";
/// Records per second when `rate` is not given.
pub const DEFAULT_RATE: u32 = 5;
/// The most records per second a source makes.
pub const MAX_RATE: u32 = 10_000;
/// A source never makes more than this much processing time's records in one go.
const MAX_BACKLOG_MS: i64 = 60_000;
/// How often a running source looks at the clock.
const POLL: Duration = Duration::from_millis(100);

/// The companies of the ticker: symbol, sector and a price to move around.
const COMPANIES: [(&str, &str, f64); 24] = [
    ("AMZN", "TECHNOLOGY", 186.40),
    ("MSFT", "TECHNOLOGY", 415.20),
    ("AAPL", "TECHNOLOGY", 227.50),
    ("CRM", "TECHNOLOGY", 268.10),
    ("QXZ", "HEALTHCARE", 84.50),
    ("PPL", "HEALTHCARE", 31.70),
    ("MJN", "HEALTHCARE", 104.20),
    ("BNM", "HEALTHCARE", 57.30),
    ("WAS", "RETAIL", 41.90),
    ("TBV", "RETAIL", 18.60),
    ("ALY", "RETAIL", 72.80),
    ("IOP", "RETAIL", 123.40),
    ("ASD", "FINANCIAL", 66.10),
    ("VVY", "FINANCIAL", 29.40),
    ("NFS", "FINANCIAL", 142.70),
    ("WSB", "FINANCIAL", 88.20),
    ("KFU", "ENERGY", 54.90),
    ("DFG", "ENERGY", 112.30),
    ("UHN", "ENERGY", 23.80),
    ("PLM", "ENERGY", 76.50),
    ("ZTO", "AUTOMOBILE", 35.60),
    ("JYB", "AUTOMOBILE", 198.00),
    ("HJK", "AUTOMOBILE", 61.20),
    ("SAC", "AUTOMOBILE", 47.10),
];

/// One record of the ticker.
#[derive(Debug, Clone, PartialEq)]
pub struct Tick {
    pub symbol: &'static str,
    pub sector: &'static str,
    pub change: f64,
    pub price: f64,
    /// When it is due, in milliseconds of processing time.
    pub at_ms: i64,
}

/// Record `k` of a ticker seeded with `seed` and made at `created_ms` with `rate` per second.
pub fn tick(seed: u64, rate: u32, created_ms: i64, k: u64) -> Tick {
    let mut state = seed ^ k.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut next = || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let (symbol, sector, base) = COMPANIES[(next() % COMPANIES.len() as u64) as usize];
    let unit = |bits: u64| (bits >> 11) as f64 / (1u64 << 53) as f64;
    let spike = next() % 40 == 0;
    let size = unit(next());
    let up = next() % 2 == 0;
    let magnitude = if spike { 5.0 + 10.0 * size } else { size };
    let change = round2(if up { magnitude } else { -magnitude });
    Tick {
        symbol,
        sector,
        change,
        price: round2(base + change),
        at_ms: created_ms + (k as i64).saturating_mul(1000) / i64::from(rate.max(1)),
    }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// What fills each of a stream's columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fill {
    Symbol,
    Sector,
    Change,
    Price,
    EventTime,
}

/// Which of `schema`'s columns the ticker fills, or an error naming what it can fill.
fn layout(stream: &str, schema: &Schema) -> Result<Vec<(String, Fill)>> {
    let filled: Vec<(String, Fill)> = schema
        .fields()
        .iter()
        .filter_map(|field| {
            let fill = match field.name().to_ascii_lowercase().as_str() {
                "ticker_symbol" | "symbol" | "ticker" => Fill::Symbol,
                "sector" => Fill::Sector,
                "change" => Fill::Change,
                "price" => Fill::Price,
                _ if matches!(field.data_type(), DataType::Timestamp(_, _)) => Fill::EventTime,
                _ => return None,
            };
            Some((field.name().clone(), fill))
        })
        .collect();
    if filled.iter().all(|(_, fill)| *fill == Fill::EventTime) {
        return Err(Error::Plan(format!(
            "source 'demo' fills the columns ticker_symbol, sector, change and price (and a TIMESTAMP column with each record's event time); stream '{stream}' has none of them, e.g. CREATE STREAM {stream} (ticker_symbol VARCHAR, sector VARCHAR, change DOUBLE, price DOUBLE) WITH (source = 'demo')"
        )));
    }
    Ok(filled)
}

/// Checks that a stream defined as `definition` can be fed by its source.
pub fn check(name: &str, schema: &Schema, source: &SourceDefinition) -> Result<()> {
    if source.kind != DEMO {
        return Err(Error::Plan(format!(
            "unknown source '{}' for stream '{name}'; the built-in source is 'demo'",
            source.kind
        )));
    }
    layout(name, schema).map(|_| ())
}

/// One running source's state: which record is next.
#[derive(Debug)]
struct Feeder {
    engine: Engine,
    /// The stream fed, by name and by incarnation: a stream dropped and made again under the
    /// same name is not fed by the old stream's source.
    name: String,
    stream_id: u64,
    created_ms: i64,
    source: SourceDefinition,
    columns: Vec<(String, Fill)>,
    next: Mutex<u64>,
}

impl Feeder {
    fn new(engine: &Engine, definition: &StreamDefinition, fresh: bool) -> Result<Option<Self>> {
        let Some(source) = definition.source.clone() else {
            return Ok(None);
        };
        let schema = definition.user_schema()?;
        let columns = layout(&definition.name, &schema)?;
        let rate = i64::from(source.rate.max(1));
        let now = engine.clock().now_millis();
        // A new stream starts at its first record; a restarted one at the present.
        let next = if fresh {
            0
        } else {
            ((now - definition.created_at_ms).max(0) * rate / 1000 + 1) as u64
        };
        Ok(Some(Self {
            engine: engine.clone(),
            name: definition.name.clone(),
            stream_id: definition.id,
            created_ms: definition.created_at_ms,
            source,
            columns,
            next: Mutex::new(next),
        }))
    }

    /// Appends every record due by now. Returns false once the stream is gone.
    fn catch_up(&self) -> Result<bool> {
        let Some(stream) = self
            .engine
            .try_stream(&self.name)
            .filter(|s| s.definition().id == self.stream_id)
        else {
            return Ok(false);
        };
        let rate = i64::from(self.source.rate.max(1));
        let now = self.engine.clock().now_millis();
        if now < self.created_ms {
            return Ok(true);
        }
        let due = ((now - self.created_ms) * rate / 1000) as u64;
        let mut next = self.next.lock();
        let oldest = due.saturating_sub((MAX_BACKLOG_MS * rate / 1000) as u64);
        *next = (*next).max(oldest);
        if *next > due {
            return Ok(true);
        }
        let records: Vec<PutRecord> = (*next..=due)
            .map(|k| self.record(tick(self.source.seed, self.source.rate, self.created_ms, k)))
            .collect();
        stream.append(&records)?;
        *next = due + 1;
        Ok(true)
    }

    fn record(&self, tick: Tick) -> PutRecord {
        let mut object = serde_json::Map::new();
        for (column, fill) in &self.columns {
            let value = match fill {
                Fill::Symbol => serde_json::Value::from(tick.symbol),
                Fill::Sector => serde_json::Value::from(tick.sector),
                Fill::Change => serde_json::Value::from(tick.change),
                Fill::Price => serde_json::Value::from(tick.price),
                Fill::EventTime => serde_json::Value::from(
                    chrono::DateTime::from_timestamp_millis(tick.at_ms)
                        .map(|t| t.naive_utc().format("%Y-%m-%dT%H:%M:%S%.3f").to_string())
                        .unwrap_or_default(),
                ),
            };
            object.insert(column.clone(), value);
        }
        PutRecord::new(tick.symbol, serde_json::Value::Object(object).to_string())
    }
}

#[derive(Debug)]
struct RunningSource {
    feeder: Arc<Feeder>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RunningSource {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The sources running on an engine, one per stream that has one.
#[derive(Debug, Default)]
pub struct SourceManager {
    running: Mutex<HashMap<String, RunningSource>>,
}

impl SourceManager {
    /// Starts the source of every stream that has one, from the present.
    pub fn start_saved(&self, engine: &Engine) -> Result<()> {
        for stream in engine.streams() {
            if stream.definition().source.is_some() {
                self.start(engine, stream.definition(), false)?;
            }
        }
        Ok(())
    }

    /// Starts feeding the stream `definition` describes (`fresh`: it was just created, so its
    /// first record is due at once).
    pub fn start(&self, engine: &Engine, definition: &StreamDefinition, fresh: bool) -> Result<()> {
        let Some(feeder) = Feeder::new(engine, definition, fresh)? else {
            return Ok(());
        };
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(Error::Plan(
                "a stream's source needs a Tokio runtime to run; open the session inside one"
                    .into(),
            ));
        }
        let feeder = Arc::new(feeder);
        let task_feeder = Arc::clone(&feeder);
        let task = tokio::spawn(async move {
            loop {
                let feeder = Arc::clone(&task_feeder);
                match tokio::task::spawn_blocking(move || feeder.catch_up()).await {
                    Ok(Ok(true)) => {}
                    Ok(Ok(false)) => return,
                    Ok(Err(e)) => log::warn!(
                        "the demo source of stream '{}' could not append: {e}",
                        task_feeder.name
                    ),
                    Err(_) => return,
                }
                tokio::time::sleep(POLL).await;
            }
        });
        self.running
            .lock()
            .insert(definition.name.clone(), RunningSource { feeder, task });
        Ok(())
    }

    /// Stops the source feeding stream `name`, if any.
    pub fn stop(&self, name: &str) {
        self.running.lock().remove(name);
    }

    /// Stops every source, and waits (up to a few seconds) for an append in progress to end:
    /// aborting a source's task does not stop the blocking append it may be waiting on, which
    /// holds the engine, and with it the data folder's lock, until it returns.
    pub async fn stop_all(&self) {
        let stopped: Vec<RunningSource> = self.running.lock().drain().map(|(_, r)| r).collect();
        let feeders: Vec<Arc<Feeder>> = stopped.iter().map(|r| Arc::clone(&r.feeder)).collect();
        drop(stopped);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        // Each feeder is now held here and, while it runs, by its append.
        while feeders.iter().any(|f| Arc::strong_count(f) > 1)
            && std::time::Instant::now() < deadline
        {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    /// Appends every record due by the clock now, for every source: what `FLUSH` waits for.
    pub async fn catch_up(&self) -> Result<()> {
        let feeders: Vec<Arc<Feeder>> = self
            .running
            .lock()
            .values()
            .map(|r| Arc::clone(&r.feeder))
            .collect();
        for feeder in feeders {
            tokio::task::spawn_blocking(move || feeder.catch_up())
                .await
                .map_err(|e| Error::Plan(format!("a source's task failed: {e}")))??;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_ticks_and_spikes_happen() {
        let a: Vec<Tick> = (0..2000).map(|k| tick(7, 5, 0, k)).collect();
        let b: Vec<Tick> = (0..2000).map(|k| tick(7, 5, 0, k)).collect();
        assert_eq!(a, b);
        let other: Vec<Tick> = (0..2000).map(|k| tick(8, 5, 0, k)).collect();
        assert_ne!(a, other);
        let spikes = a.iter().filter(|t| t.change.abs() >= 5.0).count();
        assert!((20..=80).contains(&spikes), "{spikes} spikes in 2000");
        assert!(a.iter().all(|t| t.change.abs() <= 15.0 && t.price > 0.0));
        assert_eq!(a[10].at_ms, 2000, "record 10 at 5 per second is due at 2 s");
        let symbols: std::collections::BTreeSet<_> = a.iter().map(|t| t.symbol).collect();
        assert_eq!(symbols.len(), COMPANIES.len());
    }

    #[test]
    fn a_stream_without_ticker_columns_is_refused_by_name() {
        let schema = Schema::new(vec![datafusion::arrow::datatypes::Field::new(
            "user_id",
            DataType::Utf8,
            true,
        )]);
        let source = SourceDefinition {
            kind: DEMO.into(),
            rate: 5,
            seed: 1,
        };
        let Err(err) = check("clicks", &schema, &source) else {
            panic!("a stream without ticker columns was accepted");
        };
        let err = err.to_string();
        assert!(
            err.contains("ticker_symbol, sector, change and price"),
            "{err}"
        );
        let other = SourceDefinition {
            kind: "kafka".into(),
            ..source
        };
        let Err(err) = check("clicks", &schema, &other) else {
            panic!("an unknown source was accepted");
        };
        let err = err.to_string();
        assert!(err.contains("unknown source 'kafka'"), "{err}");
    }
}
