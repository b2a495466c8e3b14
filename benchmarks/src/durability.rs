//! `durability`: ingest with `fsync` durability against `os-buffered`, in the same run.
//!
//! Eight producer threads append 500-record batches of ~100-byte JSON records to one 4-shard
//! stream through the engine API, first with every append acknowledged only after an `fsync`
//! covers it (group commit shares one among the appends waiting), then with appends acknowledged
//! once written to the operating system. Prints records/s for both, the ratio (target: fsync
//! within 2x of buffered) and how many appends each `fsync` covered. Then recovery: the
//! write-ahead log of a stream that was never sealed is replayed by reopening, in MB/s.

use std::sync::Arc;
use std::time::Instant;

use sluice_engine::{Durability, Engine, EngineOptions, RecordRef, StreamFormat, StreamSpec};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const PRODUCERS: usize = 8;
const BATCH: usize = 500;

pub fn durability(records: usize) -> Result<(), BoxError> {
    let (bytes, spans, _) = crate::generate(records);
    println!(
        "durability: {records} JSON records (~{:.0} bytes each) from {PRODUCERS} producers in {BATCH}-record appends into a 4-shard stream",
        bytes.len() as f64 / records.max(1) as f64
    );
    let mut rates = Vec::new();
    for durability in [Durability::Fsync, Durability::Buffered] {
        let dir = tempfile::tempdir()?;
        let engine = Engine::open(
            EngineOptions::new(dir.path())
                .with_durability(durability)
                .with_background(false),
        )?;
        let mut spec = StreamSpec::with_columns("ticker", 4, StreamFormat::Json, crate::schema());
        spec.partition_key = Some("symbol".into());
        let stream = engine.create_stream(spec, false)?;
        let batches: Vec<&[(usize, usize)]> = spans.chunks(BATCH).collect();
        let started = Instant::now();
        std::thread::scope(|scope| -> Result<(), BoxError> {
            let handles: Vec<_> = (0..PRODUCERS)
                .map(|p| {
                    let stream = Arc::clone(&stream);
                    let batches = &batches;
                    let bytes = &bytes;
                    scope.spawn(move || -> Result<(), BoxError> {
                        for chunk in batches.iter().skip(p).step_by(PRODUCERS) {
                            let records: Vec<RecordRef<'_>> = chunk
                                .iter()
                                .map(|&(start, end)| {
                                    let key = std::str::from_utf8(&bytes[start + 11..start + 18])
                                        .unwrap_or("k");
                                    RecordRef::new(key, &bytes[start..end])
                                })
                                .collect();
                            stream.append_refs(&records)?;
                        }
                        Ok(())
                    })
                })
                .collect();
            for handle in handles {
                handle.join().map_err(|_| "a producer panicked")??;
            }
            Ok(())
        })?;
        let elapsed = started.elapsed().as_secs_f64();
        let retained: usize = stream.stats().iter().map(|s| s.records).sum();
        assert_eq!(retained, records, "every record is retained");
        let rate = records as f64 / elapsed;
        let appends = batches.len() as f64;
        let syncs = stream.wal_syncs();
        println!(
            "  {:<12} {:>12.0} records/s  ({} fsyncs for {} appends: {:.1} appends per fsync)",
            format!("{durability:?}"),
            rate,
            syncs,
            appends,
            if syncs == 0 {
                0.0
            } else {
                appends / syncs as f64
            }
        );
        rates.push(rate);
    }
    println!(
        "  fsync / os-buffered: {:.2}x slower (target: within 2x)",
        rates[1] / rates[0]
    );
    recovery(&bytes, &spans)
}

/// Recovery: a stream whose records are all still in the write-ahead log (sealing held off),
/// reopened as after a crash; the time to replay it, per GB of log.
fn recovery(bytes: &[u8], spans: &[(usize, usize)]) -> Result<(), BoxError> {
    let dir = tempfile::tempdir()?;
    let unsealed = |options: EngineOptions| EngineOptions {
        seal_rows: usize::MAX,
        seal_bytes: usize::MAX,
        seal_after: std::time::Duration::from_secs(86_400),
        ..options.with_background(false)
    };
    let engine = Engine::open(unsealed(EngineOptions::new(dir.path())))?;
    let mut spec = StreamSpec::with_columns("ticker", 4, StreamFormat::Json, crate::schema());
    spec.partition_key = Some("symbol".into());
    let stream = engine.create_stream(spec, false)?;
    for chunk in spans.chunks(BATCH) {
        let records: Vec<RecordRef<'_>> = chunk
            .iter()
            .map(|&(start, end)| {
                RecordRef::new(
                    std::str::from_utf8(&bytes[start + 11..start + 18]).unwrap_or("k"),
                    &bytes[start..end],
                )
            })
            .collect();
        stream.append_refs(&records)?;
    }
    let wal_bytes: u64 = std::fs::read_dir(stream.dir().join("wal"))?
        .filter_map(|e| e.ok()?.metadata().ok())
        .map(|m| m.len())
        .sum();
    drop(stream);
    drop(engine);
    let started = Instant::now();
    let engine = Engine::open(unsealed(EngineOptions::new(dir.path())))?;
    let elapsed = started.elapsed().as_secs_f64();
    let recovered: usize = engine
        .stream("ticker")?
        .stats()
        .iter()
        .map(|s| s.records)
        .sum();
    assert_eq!(recovered, spans.len(), "recovery restores every record");
    println!(
        "  recovery: {:.0} MB of write-ahead log ({recovered} records) replayed in {:.2} s = {:.1} s per GB",
        wal_bytes as f64 / 1e6,
        elapsed,
        elapsed / (wal_bytes as f64 / 1e9).max(1e-9)
    );
    Ok(())
}
