//! `soak`: memory under sustained load, for a bounded time.
//!
//! Starts the real `sluice serve` (built beside this binary, fsync durability, `--cache-mb`)
//! and for `--seconds` keeps it busy the way a long-lived deployment is: `--clients` producers
//! sending PutRecords of 500 ~100-byte records as fast as it takes them, and one reader per
//! shard replaying from TRIM_HORIZON at a tenth of that pace, so it falls ever further behind and
//! reads segments that left memory long ago. Every second it samples the server's resident
//! memory (`VmRSS`) beside what the stream retains on disk.
//!
//! What the run shows: retained data grows without end (it is all kept: retention is 24 h),
//! and memory does not follow it. It prints the samples and the growth of resident memory from
//! the end of the first quarter (once the cache and the allocator have warmed up) to the end,
//! beside the growth of retained data over the same time; "flat" means memory grew by less than
//! a tenth of its size then while the data at least doubled.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::kinesis::{BATCH, Client, put_records_body, start_sluice};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What to run.
pub struct SoakArgs {
    pub seconds: u64,
    pub clients: usize,
    pub cache_mb: usize,
}

const SHARDS: u32 = 4;
const BODIES: usize = 8;

pub fn soak(args: &SoakArgs) -> Result<(), BoxError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(args))
}

/// One sample of the server.
struct Sample {
    at: f64,
    rss: u64,
    on_disk: u64,
    acknowledged: u64,
    read: u64,
}

async fn run(args: &SoakArgs) -> Result<(), BoxError> {
    let dir = tempfile::tempdir()?;
    let cache = args.cache_mb.to_string();
    let (mut server, endpoint) = start_sluice(dir.path(), &["--cache-mb", &cache])?;
    let result = drive(args, dir.path(), server.id(), &endpoint).await;
    let _ = server.kill();
    let _ = server.wait();
    let samples = result?;
    report(args, &samples)
}

async fn drive(
    args: &SoakArgs,
    dir: &Path,
    pid: u32,
    endpoint: &str,
) -> Result<Vec<Sample>, BoxError> {
    println!(
        "soak: {} clients x PutRecords of {BATCH} ~100-byte records into {SHARDS} shards for {} s, a reader per shard replaying from TRIM_HORIZON behind them, --cache-mb {}",
        args.clients, args.seconds, args.cache_mb
    );
    let client = Arc::new(Client {
        http: reqwest::Client::builder()
            .pool_max_idle_per_host(args.clients * 2 + SHARDS as usize)
            .build()?,
        endpoint: endpoint.to_string(),
    });
    let stream = "soak".to_string();
    client
        .call(
            "CreateStream",
            json!({"StreamName": stream, "ShardCount": SHARDS}).to_string(),
        )
        .await?;

    let acknowledged = Arc::new(AtomicU64::new(0));
    let read = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.seconds);
    let mut tasks = Vec::new();
    for c in 0..args.clients {
        let client = Arc::clone(&client);
        let acknowledged = Arc::clone(&acknowledged);
        let bodies: Vec<bytes::Bytes> = (0..BODIES)
            .map(|b| put_records_body(&stream, c * BODIES + b).0)
            .collect();
        tasks.push(tokio::spawn(async move {
            let mut n = 0;
            while Instant::now() < deadline {
                let out = client
                    .call("PutRecords", bodies[n % BODIES].clone())
                    .await?;
                n += 1;
                let failed = out["FailedRecordCount"].as_u64().unwrap_or(0);
                acknowledged.fetch_add(BATCH as u64 - failed, Ordering::Relaxed);
            }
            Ok::<(), BoxError>(())
        }));
    }
    for shard in 0..SHARDS {
        let client = Arc::clone(&client);
        let read = Arc::clone(&read);
        let stream = stream.clone();
        tasks.push(tokio::spawn(async move {
            let shard_id = format!("shardId-{shard:012}");
            let mut iterator = client.trim_horizon(&stream, &shard_id).await?;
            while let Some(token) = iterator {
                if Instant::now() >= deadline {
                    break;
                }
                let (got, next) = client.get_records(&token, 1000).await?;
                read.fetch_add(got, Ordering::Relaxed);
                iterator = next;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Ok::<(), BoxError>(())
        }));
    }

    let mut samples = Vec::new();
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(1)).await;
        samples.push(Sample {
            at: started.elapsed().as_secs_f64(),
            rss: rss_of(pid)?,
            on_disk: bytes_under(dir),
            acknowledged: acknowledged.load(Ordering::Relaxed),
            read: read.load(Ordering::Relaxed),
        });
    }
    for task in tasks {
        task.await??;
    }
    Ok(samples)
}

fn report(args: &SoakArgs, samples: &[Sample]) -> Result<(), BoxError> {
    if samples.len() < 8 {
        return Err("the soak needs at least 8 s to say anything".into());
    }
    let step = (samples.len() / 10).max(1);
    let last_index = samples.len() - 1;
    let shown = samples
        .iter()
        .enumerate()
        .filter(|(i, _)| i % step == 0 || *i == last_index);
    for (_, s) in shown {
        println!(
            "  t={:>5.0} s  server RSS {:>7.1} MB  retained on disk {:>8.1} MB  acknowledged {:>11}  replayed {:>10}",
            s.at,
            s.rss as f64 / 1e6,
            s.on_disk as f64 / 1e6,
            s.acknowledged,
            s.read
        );
    }
    let quarter = &samples[samples.len() / 4];
    let last = samples.last().ok_or("no samples")?;
    let peak_after_quarter = samples[samples.len() / 4..]
        .iter()
        .map(|s| s.rss)
        .max()
        .unwrap_or(0);
    let rss_growth = peak_after_quarter as f64 / quarter.rss as f64 - 1.0;
    let data_growth = last.on_disk as f64 / quarter.on_disk.max(1) as f64;
    println!(
        "from t={:.0} s to the end: retained data {:.0} MB -> {:.0} MB ({:.1}x); server RSS {:.0} MB -> peak {:.0} MB ({:+.1}%); average ingest {:.0} records/s",
        quarter.at,
        quarter.on_disk as f64 / 1e6,
        last.on_disk as f64 / 1e6,
        data_growth,
        quarter.rss as f64 / 1e6,
        peak_after_quarter as f64 / 1e6,
        rss_growth * 100.0,
        last.acknowledged as f64 / last.at
    );
    let flat = rss_growth < 0.10 && data_growth >= 2.0;
    println!(
        "memory flat (RSS +<10% while retained data at least doubles, cache {} MB): {}",
        args.cache_mb,
        if flat { "yes" } else { "NO" }
    );
    Ok(())
}

/// Resident memory of process `pid`, in bytes.
fn rss_of(pid: u32) -> Result<u64, BoxError> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .ok_or("no VmRSS in /proc status")?;
    Ok(kb * 1024)
}

/// Bytes of every file under `dir`.
fn bytes_under(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => bytes_under(&e.path()),
            Ok(_) => e.metadata().map_or(0, |m| m.len()),
            Err(_) => 0,
        })
        .sum()
}
