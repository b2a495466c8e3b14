//! `kinesis`: the Kinesis wire API under load, Sluice against an emulator in the same run.
//!
//! Starts the real `sluice serve` (built beside this binary, on a fresh data folder, default
//! fsync durability) and talks to each emulator endpoint given (`--emulator NAME=URL`, any
//! number; `benchmarks/kinesis.sh` installs and starts ferrokinesis, the fastest emulator we
//! know, and kinesalite, the most used). Against each, the same load:
//!
//! 1. **PutRecords**: `--clients` concurrent HTTP/1.1 clients on loopback, each sending
//!    500-record batches of ~100-byte JSON records with random partition keys into a 4-shard
//!    stream, for `--seconds`; records acknowledged per second (failed entries not counted).
//! 2. **GetRecords**: one reader per shard from TRIM_HORIZON with `Limit` 10,000 until every
//!    acknowledged record has been read back; records per second.
//!
//! Every response is checked (HTTP 200, FailedRecordCount, records read = records acknowledged),
//! so a fast wrong answer cannot pass. The ratio Sluice / emulator is printed for each, beside
//! its target: at least 2x ferrokinesis (issue 22) and 10x kinesalite, with Sluice fsyncing
//! every acknowledged write and the emulators keeping theirs in memory.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What to run.
pub struct KinesisArgs {
    /// (name, endpoint) of each emulator to compare with.
    pub emulators: Vec<(String, String)>,
    pub seconds: u64,
    pub clients: usize,
    pub shards: u32,
}

/// Figures for one endpoint.
struct Figures {
    put_records_per_s: f64,
    put_mb_per_s: f64,
    acknowledged: u64,
    get_records_per_s: f64,
}

pub(crate) const BATCH: usize = 500;
/// Distinct request bodies each client cycles through (building them is not what is measured).
const BODIES: usize = 8;

pub fn kinesis(args: &KinesisArgs) -> Result<(), BoxError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(args))
}

async fn run(args: &KinesisArgs) -> Result<(), BoxError> {
    let dir = tempfile::tempdir()?;
    let (mut server, endpoint) = start_sluice(dir.path(), &[])?;
    println!(
        "Kinesis API load: {} clients x PutRecords of {BATCH} ~100-byte records for {} s into {} shards, then GetRecords of everything",
        args.clients, args.seconds, args.shards
    );
    let sluice = measure(&endpoint, "sluice", args).await;
    let _ = server.kill();
    let _ = server.wait();
    let sluice = sluice?;
    print_figures("sluice", &sluice);
    if args.emulators.is_empty() {
        println!(
            "no --emulator given: run benchmarks/kinesis.sh to compare with ferrokinesis and kinesalite"
        );
    }
    for (name, endpoint) in &args.emulators {
        let other = measure(endpoint, name, args).await?;
        print_figures(name, &other);
        let put = sluice.put_records_per_s / other.put_records_per_s;
        let target = target_over(name);
        println!(
            "ratio sluice/{name}: PutRecords {put:.1}x (target: at least {target}x: {}), GetRecords {:.1}x",
            if put >= target { "met" } else { "not met" },
            sluice.get_records_per_s / other.get_records_per_s,
        );
    }
    println!(
        "ingest target 200,000 records/s: {}",
        if sluice.put_records_per_s >= 200_000.0 {
            "met"
        } else {
            "not met"
        }
    );
    Ok(())
}

/// How many times an emulator's PutRecords rate Sluice should reach.
fn target_over(emulator: &str) -> f64 {
    if emulator.contains("ferrokinesis") {
        2.0
    } else {
        10.0
    }
}

fn print_figures(name: &str, f: &Figures) {
    println!(
        "{name:>12}: PutRecords {:>9.0} records/s ({:.1} MB/s of data, {} acknowledged); GetRecords {:>9.0} records/s",
        f.put_records_per_s, f.put_mb_per_s, f.acknowledged, f.get_records_per_s
    );
}

/// Starts `sluice serve` (with `extra` arguments) from beside this binary; returns it and its
/// Kinesis endpoint.
pub(crate) fn start_sluice(
    dir: &std::path::Path,
    extra: &[&str],
) -> Result<(std::process::Child, String), BoxError> {
    start_sluice_env(dir, extra, &[])
}

/// [`start_sluice`] with `env` set over the placeholder S3 settings.
pub(crate) fn start_sluice_env(
    dir: &std::path::Path,
    extra: &[&str],
    env: &[(&str, String)],
) -> Result<(std::process::Child, String), BoxError> {
    start_sluice_served(dir, extra, env).map(|(child, kinesis, _)| (child, kinesis))
}

/// [`start_sluice_env`], returning its Flight SQL address (`host:port`) too.
pub(crate) fn start_sluice_served(
    dir: &std::path::Path,
    extra: &[&str],
    env: &[(&str, String)],
) -> Result<(std::process::Child, String, String), BoxError> {
    use std::io::BufRead;
    let exe = std::env::current_exe()?;
    let sluice = exe.with_file_name("sluice");
    if !sluice.exists() {
        return Err(format!(
            "{} is missing: build it with the same profile (cargo build --profile release-nonlto -p sluice-repl)",
            sluice.display()
        )
        .into());
    }
    let mut child = std::process::Command::new(&sluice)
        .arg("--data-dir")
        .arg(dir)
        .args(["serve", "--flight-port", "0", "--kinesis-port", "0"])
        .args(extra)
        // The benchmarks deliver nothing to S3, but a delivery stream's object store is made
        // when it is created: point it at a closed loopback port with placeholder keys, so
        // nothing looks for credentials (or anything else) beyond this machine.
        .env("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
        .env("AWS_ALLOW_HTTP", "true")
        .env("AWS_ACCESS_KEY_ID", "bench")
        .env("AWS_SECRET_ACCESS_KEY", "bench")
        .env("AWS_REGION", "us-east-1")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().ok_or("sluice serve has no stdout")?;
    let mut first = String::new();
    std::io::BufReader::new(stdout).read_line(&mut first)?;
    let endpoint = first
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .ok_or_else(|| format!("no Kinesis address in {first:?}"))?
        .to_string();
    let flight = first
        .split_whitespace()
        .find_map(|w| w.strip_prefix("grpc://"))
        .ok_or_else(|| format!("no Flight SQL address in {first:?}"))?
        .to_string();
    Ok((child, endpoint, flight))
}

pub(crate) struct Client {
    pub http: reqwest::Client,
    pub endpoint: String,
}

impl Client {
    pub(crate) async fn call(
        &self,
        action: &str,
        body: impl Into<reqwest::Body>,
    ) -> Result<Value, BoxError> {
        self.call_target(&format!("Kinesis_20131202.{action}"), body)
            .await
    }

    /// A JSON 1.1 POST of `target` (`Service_Version.Action`), with placeholder SigV4 material
    /// (the servers measured do not check signatures).
    pub(crate) fn request(&self, target: &str) -> reqwest::RequestBuilder {
        self.http
            .post(&self.endpoint)
            .header("x-amz-target", target)
            .header("content-type", "application/x-amz-json-1.1")
            .header("x-amz-date", "20260101T000000Z")
            .header(
                "authorization",
                "AWS4-HMAC-SHA256 Credential=bench/20260101/us-east-1/kinesis/aws4_request, SignedHeaders=host;x-amz-date, Signature=0000",
            )
    }

    /// Calls `target` (`Service_Version.Action`) with `body`.
    pub(crate) async fn call_target(
        &self,
        target: &str,
        body: impl Into<reqwest::Body>,
    ) -> Result<Value, BoxError> {
        let action = target;
        let response = self.request(target).body(body).send().await?;
        let status = response.status();
        let bytes = response.bytes().await?;
        if !status.is_success() {
            return Err(format!(
                "{action}: HTTP {status}: {}",
                String::from_utf8_lossy(&bytes)
            )
            .into());
        }
        // kinesalite answers CreateStream with an empty body.
        if bytes.is_empty() {
            return Ok(json!({}));
        }
        Ok(serde_json::from_slice(&bytes)?)
    }

    /// A TRIM_HORIZON iterator for `shard` of `stream`.
    pub(crate) async fn trim_horizon(
        &self,
        stream: &str,
        shard: &str,
    ) -> Result<Option<String>, BoxError> {
        let out = self
            .call(
                "GetShardIterator",
                json!({"StreamName": stream, "ShardId": shard, "ShardIteratorType": "TRIM_HORIZON"})
                    .to_string(),
            )
            .await?;
        Ok(out["ShardIterator"].as_str().map(str::to_string))
    }

    /// One GetRecords call: how many records it returned, and the next iterator.
    pub(crate) async fn get_records(
        &self,
        iterator: &str,
        limit: usize,
    ) -> Result<(u64, Option<String>), BoxError> {
        let out = self
            .call(
                "GetRecords",
                json!({"ShardIterator": iterator, "Limit": limit}).to_string(),
            )
            .await?;
        let got = out["Records"].as_array().map_or(0, Vec::len) as u64;
        Ok((got, out["NextShardIterator"].as_str().map(str::to_string)))
    }
}

async fn measure(endpoint: &str, label: &str, args: &KinesisArgs) -> Result<Figures, BoxError> {
    let client = Arc::new(Client {
        http: reqwest::Client::builder()
            .pool_max_idle_per_host(args.clients * 2)
            .build()?,
        endpoint: endpoint.to_string(),
    });
    let stream = format!("bench-{label}");
    client
        .call(
            "CreateStream",
            json!({"StreamName": stream, "ShardCount": args.shards}).to_string(),
        )
        .await?;
    // Emulators create streams asynchronously.
    for _ in 0..100 {
        let summary = client
            .call(
                "DescribeStreamSummary",
                json!({"StreamName": stream}).to_string(),
            )
            .await?;
        if summary["StreamDescriptionSummary"]["StreamStatus"] == "ACTIVE" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let acknowledged = Arc::new(AtomicU64::new(0));
    let data_bytes = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..args.clients {
        let client = Arc::clone(&client);
        let acknowledged = Arc::clone(&acknowledged);
        let data_bytes = Arc::clone(&data_bytes);
        let bodies: Vec<(bytes::Bytes, u64)> = (0..BODIES)
            .map(|b| put_records_body(&stream, c * BODIES + b))
            .collect();
        tasks.push(tokio::spawn(async move {
            let mut n = 0;
            while Instant::now() < deadline {
                let (body, bytes) = &bodies[n % BODIES];
                n += 1;
                let out = client.call("PutRecords", body.clone()).await?;
                let failed = out["FailedRecordCount"].as_u64().unwrap_or(0);
                let sent = out["Records"].as_array().map_or(0, Vec::len) as u64;
                if sent != BATCH as u64 {
                    return Err::<(), BoxError>(
                        format!("PutRecords answered {sent} entries for {BATCH}").into(),
                    );
                }
                acknowledged.fetch_add(sent - failed, Ordering::Relaxed);
                data_bytes.fetch_add(bytes * (sent - failed) / sent, Ordering::Relaxed);
            }
            Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    let put_elapsed = started.elapsed().as_secs_f64();
    let acknowledged = acknowledged.load(Ordering::Relaxed);

    let shards = client
        .call("ListShards", json!({"StreamName": stream}).to_string())
        .await?;
    let shard_ids: Vec<String> = shards["Shards"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["ShardId"].as_str().map(str::to_string))
        .collect();
    let read_started = Instant::now();
    let mut readers = Vec::new();
    for shard in shard_ids {
        let client = Arc::clone(&client);
        let stream = stream.clone();
        readers.push(tokio::spawn(async move {
            let mut iterator = client.trim_horizon(&stream, &shard).await?;
            let mut read = 0u64;
            while let Some(token) = iterator {
                let (got, next) = client.get_records(&token, 10_000).await?;
                read += got;
                if got == 0 {
                    break;
                }
                iterator = next;
            }
            Ok::<u64, BoxError>(read)
        }));
    }
    let mut read = 0;
    for reader in readers {
        read += reader.await??;
    }
    let read_elapsed = read_started.elapsed().as_secs_f64();
    if read != acknowledged {
        return Err(
            format!("{label}: {acknowledged} records acknowledged but {read} read back").into(),
        );
    }
    Ok(Figures {
        put_records_per_s: acknowledged as f64 / put_elapsed,
        put_mb_per_s: data_bytes.load(Ordering::Relaxed) as f64 / put_elapsed / 1e6,
        acknowledged,
        get_records_per_s: read as f64 / read_elapsed,
    })
}

/// One PutRecords body of `BATCH` ~100-byte JSON records, and its bytes of record data.
pub(crate) fn put_records_body(stream: &str, seed: usize) -> (bytes::Bytes, u64) {
    let mut state = 0x9E37_79B9_7F4A_7C15u64 ^ (seed as u64).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    let mut data_bytes = 0u64;
    let records: Vec<Value> = (0..BATCH)
        .map(|i| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let data = format!(
                r#"{{"user":"u{:05}","event":"click","page":"/p/{}","value":{:.2},"n":{i},"ts":"2026-01-01T10:00:00Z"}}"#,
                state % 100_000,
                (state >> 20) % 1000,
                ((state >> 32) % 10_000) as f64 / 100.0
            );
            data_bytes += data.len() as u64;
            json!({
                "PartitionKey": format!("user-{}", state % 100_000),
                "Data": base64::engine::general_purpose::STANDARD.encode(data),
            })
        })
        .collect();
    let body = json!({"StreamName": stream, "Records": records}).to_string();
    (bytes::Bytes::from(body), data_bytes)
}
