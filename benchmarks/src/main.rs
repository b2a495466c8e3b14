//! Sluice's benchmark harness: each figure is printed beside a baseline measured in the same run.
//!
//! ```text
//! cargo run -p sluice-benchmarks --profile release-nonlto -- ingest [--records N] [--batch N]
//! cargo run -p sluice-benchmarks --profile release-nonlto -- window [--records N]
//! cargo run -p sluice-benchmarks --profile release-nonlto -- sliding [--records N]
//! cargo run -p sluice-benchmarks --profile release-nonlto -- stagger [--records N]
//! cargo run -p sluice-benchmarks --profile release-nonlto -- rcf [--records N]
//! cargo run -p sluice-benchmarks --profile release-nonlto -- mapping [--records N]
//! cargo run -p sluice-benchmarks --profile release-nonlto -- delivery [--records N]
//! cargo run -p sluice-benchmarks --profile release-nonlto -- flight [--records N]
//! cargo run -p sluice-benchmarks --profile release-nonlto -- durability [--records N]
//! benchmarks/kinesis.sh   # kinesis [--emulator NAME=URL]... [--seconds S] [--clients C], with ferrokinesis and kinesalite
//! cargo run -p sluice-benchmarks --profile release-nonlto -- soak [--seconds S] [--clients C] [--cache-mb M]
//! cargo run -p sluice-benchmarks --profile release-nonlto -- firehose [--seconds S] [--clients C]
//! cargo run -p sluice-benchmarks --profile release-nonlto -- agent [--mb MiB]
//! cargo run -p sluice-benchmarks --profile release-nonlto -- fanout [--seconds S]
//! cargo run -p sluice-benchmarks --profile release-nonlto -- cluster [--records PUTS] [--seconds S] [--clients C]
//! ```
//!
//! `ingest` appends N (default 10 million) ~100-byte JSON records to a 4-shard stream through
//! the engine's Rust API — routing, JSON decoding, appending and sealing, with the write-ahead log
//! and segment files on disk — and compares it with arrow-json decoding the same bytes into one
//! RecordBatch with no routing at all. It reports records per CPU-second (per core), the ratio to
//! the baseline, and memory per million retained records.

mod cluster;
mod delivery;
mod durability;
mod fanout;
mod firehose;
mod flight;
mod kinesis;
mod mapping;
mod measure;
mod rcf;
mod sliding;
mod soak;
mod stagger;
mod window;

/// The same allocator as the `sluice` binary, so the figures are the ones users get.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::sync::Arc;
use std::time::Instant;

use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use sluice_engine::{Durability, Engine, EngineOptions, RecordRef, StreamFormat, StreamSpec};

use crate::measure::{CpuTimer, peak_rss_bytes, rss_bytes};

/// The flags; a benchmark takes its own default for what is not given.
struct Args {
    records: Option<usize>,
    batch: usize,
    durability: Durability,
    emulators: Vec<(String, String)>,
    seconds: Option<u64>,
    clients: usize,
    cache_mb: usize,
    /// Size of the generated log (`agent`), MiB.
    mb: Option<u64>,
}

fn parse_args() -> Result<(String, Args), String> {
    let mut args = std::env::args().skip(1);
    let command = args.next().unwrap_or_else(|| "ingest".to_string());
    let mut parsed = Args {
        records: None,
        batch: 500,
        durability: Durability::Buffered,
        emulators: Vec::new(),
        seconds: None,
        clients: 8,
        cache_mb: 64,
        mb: None,
    };
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--mb" => parsed.mb = Some(value()?.parse().map_err(|e| format!("--mb: {e}"))?),
            "--records" => {
                parsed.records = Some(value()?.parse().map_err(|e| format!("--records: {e}"))?)
            }
            "--batch" => parsed.batch = value()?.parse().map_err(|e| format!("--batch: {e}"))?,
            "--fsync" => parsed.durability = Durability::Fsync,
            "--emulator" => {
                let given = value()?;
                let (name, url) = given
                    .split_once('=')
                    .ok_or_else(|| format!("--emulator {given}: expected NAME=URL"))?;
                parsed.emulators.push((name.to_string(), url.to_string()));
            }
            "--seconds" => {
                parsed.seconds = Some(value()?.parse().map_err(|e| format!("--seconds: {e}"))?)
            }
            "--clients" => {
                parsed.clients = value()?.parse().map_err(|e| format!("--clients: {e}"))?
            }
            "--cache-mb" => {
                parsed.cache_mb = value()?.parse().map_err(|e| format!("--cache-mb: {e}"))?
            }
            other => {
                return Err(format!(
                    "unknown flag {other}; expected --records N, --batch N, --fsync, --emulator NAME=URL, --seconds S, --clients C, --cache-mb M"
                ));
            }
        }
    }
    Ok((command, parsed))
}

fn main() {
    match parse_args() {
        Ok((command, args)) if command == "ingest" => {
            if let Err(e) = ingest(&args) {
                eprintln!("ingest benchmark failed: {e}");
                std::process::exit(1);
            }
        }
        Ok((command, args)) if command == "window" => {
            let records = args.records.unwrap_or(10_000_000);
            if let Err(e) = window::window(records, 100_000) {
                eprintln!("window benchmark failed: {e}");
                std::process::exit(1);
            }
        }
        Ok((command, args)) if command == "sliding" => {
            let records = args.records.unwrap_or(5_000_000);
            if let Err(e) = sliding::sliding(records, 20_000) {
                eprintln!("sliding benchmark failed: {e}");
                std::process::exit(1);
            }
        }
        Ok((command, args)) if command == "stagger" => {
            let records = args.records.unwrap_or(5_000_000);
            if let Err(e) = stagger::stagger(records, 20_000) {
                eprintln!("stagger benchmark failed: {e}");
                std::process::exit(1);
            }
        }
        Ok((command, args)) if command == "rcf" => {
            let records = args.records.unwrap_or(200_000);
            if let Err(e) = rcf::rcf(records) {
                eprintln!("rcf benchmark failed: {e}");
                std::process::exit(1);
            }
        }
        Ok((command, args)) if command == "mapping" => {
            let records = args.records.unwrap_or(1_000_000);
            if let Err(e) = mapping::mapping(records) {
                eprintln!("mapping benchmark failed: {e}");
                std::process::exit(1);
            }
        }
        Ok((command, args)) if command == "delivery" => {
            let records = args.records.unwrap_or(2_000_000);
            if let Err(e) = delivery::delivery(records) {
                eprintln!("delivery benchmark failed: {e}");
                std::process::exit(1);
            }
        }
        Ok((command, args)) if command == "flight" => {
            let records = args.records.unwrap_or(2_000_000);
            if let Err(e) = flight::flight(records) {
                eprintln!("flight benchmark failed: {e}");
                std::process::exit(1);
            }
        }
        Ok((command, args)) if command == "durability" => {
            let records = args.records.unwrap_or(2_000_000);
            if let Err(e) = durability::durability(records) {
                eprintln!("durability benchmark failed: {e}");
                std::process::exit(1);
            }
        }
        Ok((command, args)) if command == "kinesis" => {
            let kinesis = kinesis::KinesisArgs {
                emulators: args.emulators,
                seconds: args.seconds.unwrap_or(10),
                clients: args.clients,
                shards: 4,
            };
            if let Err(e) = kinesis::kinesis(&kinesis) {
                eprintln!("kinesis benchmark failed: {e}");
                std::process::exit(1);
            }
        }
        Ok((command, args)) if command == "cluster" => {
            let cluster = cluster::ClusterArgs {
                puts: args.records.unwrap_or(1000),
                seconds: args.seconds.unwrap_or(5),
                clients: args.clients,
            };
            if let Err(e) = cluster::cluster(&cluster) {
                eprintln!("cluster benchmark failed: {e}");
                std::process::exit(1);
            }
        }
        Ok((command, args)) if command == "firehose" => {
            if let Err(e) = firehose::firehose(args.seconds.unwrap_or(10), args.clients) {
                eprintln!("firehose benchmark failed: {e}");
                std::process::exit(1);
            }
        }
        Ok((command, args)) if command == "agent" => {
            let mb = args.mb.unwrap_or(1024);
            if let Err(e) = firehose::agent(mb) {
                eprintln!("agent benchmark failed: {e}");
                std::process::exit(1);
            }
        }
        Ok((command, args)) if command == "fanout" => {
            if let Err(e) = fanout::fanout(args.seconds.unwrap_or(10)) {
                eprintln!("fanout benchmark failed: {e}");
                std::process::exit(1);
            }
        }
        Ok((command, args)) if command == "soak" => {
            let soak = soak::SoakArgs {
                seconds: args.seconds.unwrap_or(120),
                clients: args.clients,
                cache_mb: args.cache_mb,
            };
            if let Err(e) = soak::soak(&soak) {
                eprintln!("soak failed: {e}");
                std::process::exit(1);
            }
        }
        Ok((command, _)) => {
            eprintln!(
                "unknown benchmark '{command}'; available: ingest, window, sliding, stagger, rcf, mapping, delivery, flight, durability, kinesis, firehose, agent, fanout, soak"
            );
            std::process::exit(2);
        }
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    }
}

/// The records: ~100 bytes of JSON each, 1,000 distinct symbols as partition keys.
fn generate(records: usize) -> (Vec<u8>, Vec<(usize, usize)>, Vec<String>) {
    let sectors = ["TECH", "ENERGY", "HEALTH", "RETAIL"];
    let symbols: Vec<String> = (0..1000).map(|i| format!("SYM{i:04}")).collect();
    let mut bytes = Vec::with_capacity(records * 112);
    let mut spans = Vec::with_capacity(records);
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    for i in 0..records {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let start = bytes.len();
        let symbol = &symbols[(state % 1000) as usize];
        let sector = sectors[(state >> 12) as usize % 4];
        let change = ((state >> 20) % 1000) as f64 / 100.0 - 5.0;
        let price = ((state >> 32) % 100_000) as f64 / 100.0;
        let second = i % 60;
        use std::io::Write;
        let _ = write!(
            bytes,
            r#"{{"symbol":"{symbol}","sector":"{sector}","change":{change:.2},"price":{price:.2},"ts":"2026-01-01T10:00:{second:02}","seq":{i}}}"#
        );
        spans.push((start, bytes.len()));
        bytes.push(b'\n');
    }
    (bytes, spans, symbols)
}

fn schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new("symbol", DataType::Utf8, true),
        Field::new("sector", DataType::Utf8, true),
        Field::new("change", DataType::Float64, true),
        Field::new("price", DataType::Float64, true),
        Field::new("ts", DataType::Timestamp(TimeUnit::Nanosecond, None), true),
        Field::new("seq", DataType::Int64, true),
    ]))
}

fn ingest(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let records = args.records.unwrap_or(10_000_000);
    println!(
        "ingest: {} JSON records into a 4-shard stream, {} records per append, durability {:?}",
        records, args.batch, args.durability
    );
    let (bytes, spans, _) = generate(records);
    let avg = spans.iter().map(|(s, e)| e - s).sum::<usize>() as f64 / spans.len().max(1) as f64;
    println!(
        "  record size: {avg:.0} bytes on average, {:.0} MB in all",
        bytes.len() as f64 / 1e6
    );

    // Sluice: the whole columnar path through the engine API.
    let dir = tempfile::tempdir()?;
    let options = EngineOptions::new(dir.path())
        .with_durability(args.durability)
        .with_background(false);
    let engine = Engine::open(options)?;
    let mut spec = StreamSpec::with_columns("ticker", 4, StreamFormat::Json, schema());
    spec.partition_key = Some("symbol".into());
    let stream = engine.create_stream(spec, false)?;
    let rss_before = rss_bytes();
    let cpu = CpuTimer::start();
    let wall = Instant::now();
    for chunk in spans.chunks(args.batch) {
        let records: Vec<RecordRef<'_>> = chunk
            .iter()
            .map(|&(start, end)| {
                // The partition key is the symbol, as a producer would send it.
                let key = std::str::from_utf8(&bytes[start + 11..start + 18]).unwrap_or("k");
                RecordRef::new(key, &bytes[start..end])
            })
            .collect();
        stream.append_refs(&records)?;
    }
    engine.flush()?;
    let sluice_wall = wall.elapsed().as_secs_f64();
    let sluice_cpu = cpu.elapsed_secs();
    let retained: usize = stream.stats().iter().map(|s| s.records).sum();
    assert_eq!(retained, records, "every record is retained");
    let batch_bytes: usize = stream.shards().iter().map(|s| s.retained_bytes()).sum();
    let rss_growth = rss_bytes().saturating_sub(rss_before);

    // Baseline: arrow-json decoding the same bytes into one RecordBatch, no routing.
    let cpu = CpuTimer::start();
    let wall = Instant::now();
    let mut decoder = arrow_json::ReaderBuilder::new(schema())
        .with_batch_size(records.max(1))
        .build_decoder()?;
    let mut offset = 0;
    while offset < bytes.len() {
        let read = decoder.decode(&bytes[offset..])?;
        if read == 0 {
            break;
        }
        offset += read;
    }
    let batch = decoder.flush()?.map(|b| b.num_rows()).unwrap_or(0);
    assert_eq!(batch, records);
    let base_wall = wall.elapsed().as_secs_f64();
    let base_cpu = cpu.elapsed_secs();

    let rate = |n: usize, secs: f64| n as f64 / secs.max(1e-9);
    let per_million = |b: usize| b as f64 / (records as f64 / 1e6) / 1e6;
    println!();
    crate::measure::print_side_by_side(
        ("sluice", "baseline"),
        &[
            (
                "records/s per core (CPU time)",
                rate(records, sluice_cpu),
                rate(records, base_cpu),
            ),
            (
                "records/s wall clock",
                rate(records, sluice_wall),
                rate(records, base_wall),
            ),
        ],
    );
    println!(
        "  {:<44} {:>14.2} {:>14.2}",
        "CPU seconds", sluice_cpu, base_cpu
    );
    println!(
        "  sluice / baseline CPU time: {:.2}x (target: at most 2x; at least 1,000,000 records/s per core)",
        sluice_cpu / base_cpu.max(1e-9)
    );
    println!(
        "  retained batches: {:.1} MB per million records; process RSS grew {:.1} MB per million during ingest; peak RSS {:.0} MB",
        per_million(batch_bytes),
        per_million(rss_growth),
        peak_rss_bytes() as f64 / 1e6
    );
    Ok(())
}
