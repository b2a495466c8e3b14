//! `fanout`: enhanced fan-out under load, against the real `sluice serve`.
//!
//! 1. **Latency**: one consumer subscribed (SubscribeToShard over HTTP/1.1, AWS event-stream
//!    frames decoded as the SDKs decode them) while a producer puts one record every 20 ms, each
//!    carrying its number; for each record, the time from its PutRecord being sent to its
//!    event's arrival (the put's own round trip included: an event often arrives before the
//!    producer has read its acknowledgement). Beside it, the baseline a consumer without fan-out
//!    runs: GetRecords polled every 200 ms (the KCL's default idle time between calls is 1 s),
//!    the same records measured the same way. Target (issue 22): fan-out under 50 ms.
//! 2. **Producers with five consumers**: PutRecords throughput (8 clients, 500-record batches)
//!    with no subscriber, then with five consumers each subscribed to every shard and counting
//!    what it is pushed (checked: every consumer receives every record); then beside five
//!    consumers subscribed from TRIM_HORIZON that read nothing (their buffers fill; producers
//!    must not wait on them). Target: producers not slowed. The server's CPU time per million
//!    records and the benchmark clients' own CPU time are printed, since on one 2-core machine
//!    the consumers' decoding competes with the producers for the same cores.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use serde_json::{Value, json};

use crate::kinesis::{BATCH, Client, start_sluice};
use crate::measure::process_cpu_secs;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const SHARDS: usize = 4;
const CONSUMERS: usize = 5;
const PRODUCERS: usize = 8;

pub fn fanout(seconds: u64) -> Result<(), BoxError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(seconds))
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

async fn run(seconds: u64) -> Result<(), BoxError> {
    let dir = tempfile::tempdir()?;
    let (mut server, endpoint) = start_sluice(dir.path(), &[])?;
    let server_pid = server.id();
    let client = Arc::new(Client {
        http: reqwest::Client::builder()
            .pool_max_idle_per_host(64)
            .build()?,
        endpoint,
    });
    let result = measure(&client, seconds, server_pid).await;
    let _ = server.kill();
    let _ = server.wait();
    result
}

async fn measure(client: &Arc<Client>, seconds: u64, server_pid: u32) -> Result<(), BoxError> {
    client
        .call(
            "CreateStream",
            json!({"StreamName": "latency", "ShardCount": 1}).to_string(),
        )
        .await?;
    let stream_arn = "arn:aws:kinesis:us-east-1:000000000000:stream/latency";
    let consumer = register(client, stream_arn, "latency").await?;
    println!("SubscribeToShard latency: a record put every 20 ms for {seconds} s, one consumer");
    let fanout = latency_fanout(client, &consumer, seconds).await?;
    let polled = latency_polling(client, seconds).await?;
    report("SubscribeToShard (push)", &fanout);
    report("GetRecords every 200 ms (baseline)", &polled);
    let p99 = percentile(&fanout, 0.99);
    println!(
        "  target: fan-out p99 under 50 ms: {}",
        if p99 < 50.0 { "met" } else { "not met" }
    );

    client
        .call(
            "CreateStream",
            json!({"StreamName": "wide", "ShardCount": SHARDS}).to_string(),
        )
        .await?;
    println!(
        "Producers with {CONSUMERS} fan-out consumers: {PRODUCERS} clients x PutRecords of {BATCH} ~100-byte records for {seconds} s into {SHARDS} shards"
    );
    let cpu_before = process_cpu_secs(server_pid);
    let alone = produce(client, "wide", seconds).await?;
    let cpu_alone = process_cpu_secs(server_pid) - cpu_before;
    let wide_arn = "arn:aws:kinesis:us-east-1:000000000000:stream/wide";
    let received = Arc::new(AtomicU64::new(0));
    let mut subscriptions = Vec::new();
    for c in 0..CONSUMERS {
        let consumer = register(client, wide_arn, &format!("c{c}")).await?;
        for shard in 0..SHARDS {
            let client = Arc::clone(client);
            let consumer = consumer.clone();
            let received = Arc::clone(&received);
            subscriptions.push(tokio::spawn(async move {
                subscribe(&client, &consumer, shard, "LATEST", |records| {
                    received.fetch_add(records.len() as u64, Ordering::Relaxed);
                    true
                })
                .await
            }));
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let cpu_before = (
        process_cpu_secs(server_pid),
        process_cpu_secs(std::process::id()),
    );
    let with = produce(client, "wide", seconds).await?;
    let cpu_with = (
        process_cpu_secs(server_pid) - cpu_before.0,
        process_cpu_secs(std::process::id()) - cpu_before.1,
    );
    // Every consumer gets every record put while it was subscribed.
    let expected = with.1 * CONSUMERS as u64;
    let deadline = Instant::now() + Duration::from_secs(60);
    while received.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for s in subscriptions {
        s.abort();
    }
    let got = received.load(Ordering::Relaxed);
    // Consumers that stop reading: their subscriptions stay open, their buffers fill, and the
    // producers must not wait for them.
    let mut stalled = Vec::new();
    for c in 0..CONSUMERS {
        let consumer = register(client, wide_arn, &format!("stalled{c}")).await?;
        for shard in 0..SHARDS {
            stalled.push(open_subscription(client, &consumer, shard, "TRIM_HORIZON").await?);
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let beside_stalled = produce(client, "wide", seconds).await?;
    drop(stalled);
    println!(
        "  PutRecords, no consumer          {:>10.0} records/s",
        alone.0
    );
    println!(
        "  PutRecords, {CONSUMERS} consumers          {:>10.0} records/s ({got} of {expected} records pushed to the consumers)",
        with.0
    );
    println!(
        "  PutRecords, {CONSUMERS} stalled consumers  {:>10.0} records/s (subscribed from TRIM_HORIZON, reading nothing)",
        beside_stalled.0
    );
    println!(
        "  ratio with/without consumers: {:.2} reading, {:.2} stalled",
        with.0 / alone.0,
        beside_stalled.0 / alone.0
    );
    // Where the two cores went: the server's CPU per million records put, alone and with the
    // consumers (its share of pushing to them), and what the benchmark's own clients took.
    println!(
        "  server CPU per million records put: {:.2} s alone, {:.2} s with {CONSUMERS} consumers; benchmark clients (producers + consumers) used {:.1} CPU-s of the {seconds} s",
        cpu_alone / (alone.1 as f64 / 1e6),
        cpu_with.0 / (with.1 as f64 / 1e6),
        cpu_with.1
    );
    if got < expected {
        return Err(format!("the consumers received {got} records of {expected}").into());
    }
    Ok(())
}

async fn register(client: &Client, stream_arn: &str, name: &str) -> Result<String, BoxError> {
    let out = client
        .call(
            "RegisterStreamConsumer",
            json!({"StreamARN": stream_arn, "ConsumerName": name}).to_string(),
        )
        .await?;
    let arn = out["Consumer"]["ConsumerARN"]
        .as_str()
        .ok_or("no ConsumerARN")?
        .to_string();
    // CREATING, then ACTIVE.
    loop {
        let out = client
            .call(
                "DescribeStreamConsumer",
                json!({"ConsumerARN": arn}).to_string(),
            )
            .await?;
        if out["ConsumerDescription"]["ConsumerStatus"] == "ACTIVE" {
            return Ok(arn);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What a consumer reads of an event: its records' data, borrowed from the payload (decoded
/// as a typed SDK decodes it, not into a tree of values).
#[derive(serde::Deserialize)]
struct Event<'a> {
    #[serde(rename = "Records", borrow)]
    records: Vec<EventRecord<'a>>,
}

#[derive(serde::Deserialize)]
struct EventRecord<'a> {
    #[serde(rename = "Data", borrow)]
    data: &'a str,
}

/// Opens a subscription of `consumer` to `shard` and returns its response unread.
async fn open_subscription(
    client: &Client,
    consumer: &str,
    shard: usize,
    position: &str,
) -> Result<reqwest::Response, BoxError> {
    let body = json!({
        "ConsumerARN": consumer,
        "ShardId": format!("shardId-{shard:012}"),
        "StartingPosition": {"Type": position},
    });
    let response = client
        .request("Kinesis_20131202.SubscribeToShard")
        .body(body.to_string())
        .send()
        .await?;
    if !response.status().is_success() {
        return Err(format!("SubscribeToShard: HTTP {}", response.status()).into());
    }
    Ok(response)
}

/// Subscribes `consumer` to `shard` and hands each event's records to `on_records` until it
/// returns false or the subscription ends.
async fn subscribe(
    client: &Client,
    consumer: &str,
    shard: usize,
    position: &str,
    mut on_records: impl FnMut(&[EventRecord<'_>]) -> bool,
) -> Result<(), BoxError> {
    let mut response = open_subscription(client, consumer, shard, position).await?;
    let mut buffer: Vec<u8> = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        buffer.extend_from_slice(&chunk);
        while let Some((message, used)) = sluice_kinesis::eventstream::decode(&buffer)? {
            buffer.drain(..used);
            if message.header(":event-type") != Some("SubscribeToShardEvent") {
                continue;
            }
            let event: Event<'_> = serde_json::from_slice(&message.payload)?;
            if !on_records(&event.records) {
                return Ok(());
            }
        }
    }
    Ok(())
}

/// Puts one record every 20 ms for `seconds` while one consumer is subscribed; the latency of
/// each record from its put being sent to its event's arrival, in milliseconds.
async fn latency_fanout(
    client: &Arc<Client>,
    consumer: &str,
    seconds: u64,
) -> Result<Vec<f64>, BoxError> {
    let latencies = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let sent = Arc::new(parking_lot::Mutex::new(
        std::collections::HashMap::<u64, u64>::new(),
    ));
    let subscriber = {
        let client = Arc::clone(client);
        let consumer = consumer.to_string();
        let latencies = Arc::clone(&latencies);
        let sent = Arc::clone(&sent);
        tokio::spawn(async move {
            subscribe(&client, &consumer, 0, "LATEST", |records| {
                let now = now_micros();
                for record in records {
                    if let Some(id) = record_id(record.data) {
                        let from = sent.lock().get(&id).copied().unwrap_or(now);
                        latencies
                            .lock()
                            .push(now.saturating_sub(from) as f64 / 1000.0);
                    }
                }
                true
            })
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    put_paced(client, seconds, &sent).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    subscriber.abort();
    let out = latencies.lock().clone();
    Ok(out)
}

/// The id a paced record carries, from its base64 data.
fn record_id(data: &str) -> Option<u64> {
    let data = base64::engine::general_purpose::STANDARD
        .decode(data)
        .ok()?;
    std::str::from_utf8(&data).ok()?.parse().ok()
}

/// Puts records `0, 1, 2, …` into `latency`, one every 20 ms, noting when each was sent.
async fn put_paced(
    client: &Client,
    seconds: u64,
    sent: &parking_lot::Mutex<std::collections::HashMap<u64, u64>>,
) -> Result<u64, BoxError> {
    let started = Instant::now();
    let mut id = 0;
    let mut next = tokio::time::Instant::now();
    while started.elapsed() < Duration::from_secs(seconds) {
        let data = base64::engine::general_purpose::STANDARD.encode(id.to_string());
        sent.lock().insert(id, now_micros());
        client
            .call(
                "PutRecord",
                json!({"StreamName": "latency", "PartitionKey": "k", "Data": data}).to_string(),
            )
            .await?;
        id += 1;
        next += Duration::from_millis(20);
        tokio::time::sleep_until(next).await;
    }
    Ok(id)
}

/// The baseline: GetRecords every 200 ms from LATEST, while records are put as above.
async fn latency_polling(client: &Arc<Client>, seconds: u64) -> Result<Vec<f64>, BoxError> {
    let out = client
        .call(
            "GetShardIterator",
            json!({"StreamName": "latency", "ShardId": "shardId-000000000000", "ShardIteratorType": "LATEST"}).to_string(),
        )
        .await?;
    let mut iterator = out["ShardIterator"]
        .as_str()
        .ok_or("no iterator")?
        .to_string();
    let sent = Arc::new(parking_lot::Mutex::new(
        std::collections::HashMap::<u64, u64>::new(),
    ));
    let producer = {
        let client = Arc::clone(client);
        let sent = Arc::clone(&sent);
        tokio::spawn(async move { put_paced(&client, seconds, &sent).await })
    };
    let mut latencies = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(seconds) + Duration::from_millis(500);
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let page = client
            .call("GetRecords", json!({"ShardIterator": iterator}).to_string())
            .await?;
        let now = now_micros();
        for record in page["Records"].as_array().into_iter().flatten() {
            if let Some(id) = record["Data"].as_str().and_then(record_id) {
                let from = sent.lock().get(&id).copied().unwrap_or(now);
                latencies.push(now.saturating_sub(from) as f64 / 1000.0);
            }
        }
        iterator = page["NextShardIterator"]
            .as_str()
            .ok_or("no next iterator")?
            .to_string();
    }
    producer.await??;
    Ok(latencies)
}

fn percentile(values: &[f64], p: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted
        .get(((sorted.len() as f64 * p).ceil() as usize).saturating_sub(1))
        .copied()
        .unwrap_or(f64::NAN)
}

fn report(name: &str, latencies: &[f64]) {
    println!(
        "  {name:<36} {} records: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        latencies.len(),
        percentile(latencies, 0.5),
        percentile(latencies, 0.99),
        percentile(latencies, 1.0)
    );
}

/// PutRecords from `PRODUCERS` clients for `seconds`: records/s and records acknowledged.
async fn produce(client: &Arc<Client>, stream: &str, seconds: u64) -> Result<(f64, u64), BoxError> {
    let acknowledged = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for p in 0..PRODUCERS {
        let client = Arc::clone(client);
        let acknowledged = Arc::clone(&acknowledged);
        let stream = stream.to_string();
        tasks.push(tokio::spawn(async move {
            let records: Vec<Value> = (0..BATCH)
                .map(|i| {
                    let data = format!("{{\"producer\":{p},\"i\":{i},\"pad\":\"{}\"}}", "x".repeat(60));
                    json!({"PartitionKey": format!("{p}-{i}"), "Data": base64::engine::general_purpose::STANDARD.encode(data)})
                })
                .collect();
            let body = json!({"StreamName": stream, "Records": records}).to_string();
            while started.elapsed() < Duration::from_secs(seconds) {
                let out = client.call("PutRecords", body.clone()).await?;
                let failed = out["FailedRecordCount"].as_u64().unwrap_or(0);
                acknowledged.fetch_add(BATCH as u64 - failed, Ordering::Relaxed);
            }
            Ok::<_, BoxError>(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    let n = acknowledged.load(Ordering::Relaxed);
    Ok((n as f64 / started.elapsed().as_secs_f64(), n))
}
