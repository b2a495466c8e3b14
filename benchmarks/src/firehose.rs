//! `firehose` and `agent`: Firehose's ingest path and the agent's tailing, each beside the
//! baseline a user would otherwise have, in the same run.
//!
//! - **firehose**: `--clients` concurrent clients send 500-record `PutRecordBatch` calls of
//!   ~100-byte JSON records to a direct-put delivery stream for `--seconds`, then the same load
//!   as `PutRecords` into a one-shard Kinesis stream (a direct-put delivery stream's records
//!   are one shard) on the same server. Records acknowledged per second, both, and the ratio.
//!   The delivery stream buffers (900 s) while this runs, so its reading is in the figure but no
//!   S3 writing is.
//! - **agent**: writes a log of `--mb` MiB (default 1024) of ~100-byte lines, reads it once
//!   with a plain buffered line reader (the baseline: no processing, no sending), then runs
//!   `sluice agent --exit-when-caught-up` on it into a 4-shard stream of `sluice serve` (fsync
//!   durability) and checks every line arrived. Lines per second, both, and the ratio
//!   (target: the agent within 3x of the plain read).

use std::io::{BufRead, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::kinesis::{BATCH, Client, put_records_body, start_sluice};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

pub fn firehose(seconds: u64, clients: usize) -> Result<(), BoxError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run_firehose(seconds, clients))
}

async fn run_firehose(seconds: u64, clients: usize) -> Result<(), BoxError> {
    let dir = tempfile::tempdir()?;
    let (mut server, endpoint) = start_sluice(dir.path(), &[])?;
    let client = Arc::new(Client {
        http: reqwest::Client::builder()
            .pool_max_idle_per_host(clients * 2)
            .build()?,
        endpoint,
    });
    client
        .call_target(
            "Firehose_20150804.CreateDeliveryStream",
            json!({
                "DeliveryStreamName": "bench",
                "ExtendedS3DestinationConfiguration": {
                    "BucketARN": "arn:aws:s3:::bench", "RoleARN": "r",
                    "BufferingHints": {"SizeInMBs": 128, "IntervalInSeconds": 900}
                }
            })
            .to_string(),
        )
        .await?;
    client
        .call(
            "CreateStream",
            json!({"StreamName": "bench", "ShardCount": 1}).to_string(),
        )
        .await?;
    println!(
        "Firehose ingest: {clients} clients x 500-record calls of ~100-byte records for {seconds} s each"
    );
    let batch = put(&client, seconds, clients, true).await?;
    let records = put(&client, seconds, clients, false).await?;
    let _ = server.kill();
    println!("  PutRecordBatch (direct put) {batch:>10.0} records/s");
    println!("  PutRecords (1-shard stream) {records:>10.0} records/s (baseline, same server)");
    println!("  ratio PutRecordBatch/PutRecords: {:.2}x", batch / records);
    Ok(())
}

/// Records acknowledged per second over `seconds` with `clients` clients.
async fn put(
    client: &Arc<Client>,
    seconds: u64,
    clients: usize,
    firehose: bool,
) -> Result<f64, BoxError> {
    let acknowledged = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let client = Arc::clone(client);
        let acknowledged = Arc::clone(&acknowledged);
        let (kinesis_body, _) = put_records_body("bench", c);
        let body = if firehose {
            // The same records, as a PutRecordBatch.
            let parsed: Value = serde_json::from_slice(&kinesis_body)?;
            let records: Vec<Value> = parsed["Records"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|r| json!({"Data": r["Data"]}))
                .collect();
            bytes::Bytes::from(
                json!({"DeliveryStreamName": "bench", "Records": records}).to_string(),
            )
        } else {
            kinesis_body
        };
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                let (out, failed_key, results_key) = if firehose {
                    (
                        client
                            .call_target("Firehose_20150804.PutRecordBatch", body.clone())
                            .await?,
                        "FailedPutCount",
                        "RequestResponses",
                    )
                } else {
                    (
                        client.call("PutRecords", body.clone()).await?,
                        "FailedRecordCount",
                        "Records",
                    )
                };
                let failed = out[failed_key].as_u64().unwrap_or(0);
                let sent = out[results_key].as_array().map_or(0, Vec::len) as u64;
                if sent != BATCH as u64 {
                    return Err::<(), BoxError>(
                        format!("{sent} answers for {BATCH} records").into(),
                    );
                }
                acknowledged.fetch_add(sent - failed, Ordering::Relaxed);
            }
            Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(acknowledged.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64())
}

pub fn agent(mb: u64) -> Result<(), BoxError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run_agent(mb))
}

async fn run_agent(mb: u64) -> Result<(), BoxError> {
    let dir = tempfile::tempdir()?;
    let log = dir.path().join("app.log");
    let mut lines = 0u64;
    {
        let mut out = std::io::BufWriter::new(std::fs::File::create(&log)?);
        let target = mb * 1024 * 1024;
        let mut written = 0u64;
        while written < target {
            let line = format!(
                "2026-12-07T10:00:00.000Z INFO [worker-{}] request {lines:010} served in {} ms path=/p/{}\n",
                lines % 16,
                lines % 997,
                lines % 1000
            );
            out.write_all(line.as_bytes())?;
            written += line.len() as u64;
            lines += 1;
        }
        out.flush()?;
    }
    // Baseline: the same file read line by line, nothing else.
    let started = Instant::now();
    let mut counted = 0u64;
    let mut reader = std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(&log)?);
    let mut line = Vec::new();
    while reader.read_until(b'\n', &mut line)? > 0 {
        counted += 1;
        line.clear();
    }
    let plain = counted as f64 / started.elapsed().as_secs_f64();
    if counted != lines {
        return Err(format!("read {counted} lines of {lines}").into());
    }

    let (mut server, endpoint) = start_sluice(&dir.path().join("data"), &[])?;
    let client = Client {
        http: reqwest::Client::new(),
        endpoint: endpoint.clone(),
    };
    client
        .call(
            "CreateStream",
            json!({"StreamName": "logs", "ShardCount": 4}).to_string(),
        )
        .await?;
    let config = json!({
        "kinesis.endpoint": endpoint,
        "awsAccessKeyId": "bench", "awsSecretAccessKey": "bench",
        "checkpointFile": dir.path().join("checkpoints.json"),
        "flows": [{"filePattern": log, "kinesisStream": "logs", "initialPosition": "START_OF_FILE",
                   "maxBufferAgeMillis": 1000}]
    });
    let config_path = dir.path().join("agent.json");
    std::fs::write(&config_path, config.to_string())?;
    let sluice = std::env::current_exe()?.with_file_name("sluice");
    let started = Instant::now();
    let status = std::process::Command::new(&sluice)
        .args(["agent", "-c"])
        .arg(&config_path)
        .args(["--exit-when-caught-up", "--progress-seconds", "0"])
        .status()?;
    let elapsed = started.elapsed().as_secs_f64();
    if !status.success() {
        return Err(format!("sluice agent exited with {status}").into());
    }
    // Every line arrived: the stream holds as many records as the file has lines.
    let shards = client
        .call("ListShards", json!({"StreamName": "logs"}).to_string())
        .await?;
    let mut stored = 0u64;
    for shard in shards["Shards"].as_array().into_iter().flatten() {
        let id = shard["ShardId"].as_str().unwrap_or_default();
        let mut iterator = client.trim_horizon("logs", id).await?;
        while let Some(token) = iterator {
            let (got, next) = client.get_records(&token, 10_000).await?;
            stored += got;
            if got == 0 {
                break;
            }
            iterator = next;
        }
    }
    let _ = server.kill();
    if stored < lines {
        return Err(format!("{lines} lines written but {stored} records in the stream").into());
    }
    let agent = lines as f64 / elapsed;
    println!("Agent: {mb} MiB log, {lines} lines of ~100 bytes");
    println!("  plain read (baseline) {plain:>12.0} lines/s");
    println!(
        "  sluice agent -> sluice serve (4 shards, fsync) {agent:>12.0} lines/s ({:.1} s, {} duplicates)",
        elapsed,
        stored - lines
    );
    println!(
        "  plain read / agent: {:.1}x (target: within 3x)",
        plain / agent
    );
    Ok(())
}
