//! Several nodes beside one (`sluice-bench cluster`): what sharing streams through etcd and
//! object storage costs, and how fast a lost node's shards move. Everything runs on this
//! machine, on 127.0.0.1: an etcd (the tests' one: `SLUICE_ETCD`, `PATH`, or the package the
//! test suite unpacked under the target folder), an S3 server (s3s-fs, in this process), and
//! `sluice serve` processes built with the same profile as this binary.
//!
//! Figures, each beside its baseline from the same run:
//! - PutRecord latency (one record at a time, p50/p99): one node acknowledging after its local
//!   fsync (the default) — the baseline — beside a cluster node acknowledging once the record is
//!   in object storage (`shared`), at the shard's owner and at another node (forwarded); then
//!   with the puts 100 ms apart, so each finds its shard idle;
//! - PutRecords throughput: three nodes (clients spread over them) beside one node, on the same
//!   2 cores (this shows the overhead, not scaling);
//! - a pump's latency: from a PutRecord into a stream until a Flight SQL query sees the pump's
//!   copy of the record in another stream — one node's pump beside a cluster's (whose output is
//!   committed to its pump log, then taken by the target shard's owner);
//! - failover: from `kill -9` of the node owning a shard until that shard takes a write through
//!   another node (target under 10 s, aim 3 s).

#[path = "../../tests/support/etcd.rs"]
mod etcd;
#[path = "../../tests/support/s3_server.rs"]
mod s3_server;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use sluice_cluster::Coordinator;

use crate::kinesis::{Client, put_records_body, start_sluice_served};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What to run.
pub struct ClusterArgs {
    /// PutRecord calls per latency figure.
    pub puts: usize,
    /// Seconds of PutRecords per throughput figure.
    pub seconds: u64,
    /// Concurrent PutRecords clients per throughput figure.
    pub clients: usize,
}

const S3_KEY: &str = "bench-key";
const S3_SECRET: &str = "bench-secret";
const STREAM: &str = "bench";
const SHARDS: u32 = 6;
/// Puts spaced out so the shard is idle (past its group-commit window) at each one.
const IDLE_PUTS: usize = 100;
const IDLE_GAP: Duration = Duration::from_millis(100);
/// Records put one at a time through a pump per pump-latency figure.
const PUMP_PUTS: usize = 30;

pub fn cluster(args: &ClusterArgs) -> Result<(), BoxError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(args))
}

struct Node {
    child: std::process::Child,
    client: Client,
    /// Its Flight SQL address.
    flight: String,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn client(endpoint: &str) -> Result<Client, BoxError> {
    Ok(Client {
        http: reqwest::Client::builder()
            .pool_max_idle_per_host(64)
            .build()?,
        endpoint: endpoint.to_string(),
    })
}

fn start_node(
    dir: &std::path::Path,
    etcd: &str,
    s3: std::net::SocketAddr,
    id: &str,
) -> Result<Node, BoxError> {
    let cluster = format!("etcd://{etcd}");
    let (child, endpoint, flight) = start_sluice_with_s3(
        &dir.join(id),
        s3,
        &[
            "--cluster",
            &cluster,
            "--node-id",
            id,
            "--storage",
            "s3://lake/bench",
            "--advertise",
            "127.0.0.1",
        ],
    )?;
    Ok(Node {
        child,
        client: client(&endpoint)?,
        flight,
    })
}

fn start_sluice_with_s3(
    dir: &std::path::Path,
    s3: std::net::SocketAddr,
    extra: &[&str],
) -> Result<(std::process::Child, String, String), BoxError> {
    start_sluice_served(
        dir,
        extra,
        &[
            ("AWS_ENDPOINT_URL", format!("http://{s3}")),
            ("AWS_ACCESS_KEY_ID", S3_KEY.to_string()),
            ("AWS_SECRET_ACCESS_KEY", S3_SECRET.to_string()),
        ],
    )
}

/// The explicit hash key that routes to `shard` of a stream of [`SHARDS`] shards.
fn hash_key_of(shard: u32) -> String {
    ((u128::MAX / SHARDS as u128 + 1) * shard as u128).to_string()
}

async fn create_stream(client: &Client) -> Result<(), BoxError> {
    client
        .call(
            "CreateStream",
            json!({"StreamName": STREAM, "ShardCount": SHARDS}).to_string(),
        )
        .await?;
    Ok(())
}

/// One PutRecord to `shard`, retried while the shard moves; how long until acknowledged.
async fn put_to(
    client: &Client,
    shard: u32,
    n: usize,
    patience: Duration,
) -> Result<Duration, BoxError> {
    let body = json!({
        "StreamName": STREAM,
        "PartitionKey": format!("k{n}"),
        "ExplicitHashKey": hash_key_of(shard),
        "Data": "eyJuIjoxfQ==",
    })
    .to_string();
    let started = Instant::now();
    loop {
        match client.call("PutRecord", body.clone()).await {
            Ok(_) => return Ok(started.elapsed()),
            Err(_) if started.elapsed() < patience => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Creates streams `pump_in` and `pump_out` through `client` and, with Flight SQL at `flight`,
/// a pump copying the one into the other; then puts [`PUMP_PUTS`] records into `pump_in` one at
/// a time, each once the previous one's copy was seen: p50 and p99 (ms) of how long until a
/// query counts the copy.
async fn pump_latency(client: &Client, flight: &str) -> Result<(f64, f64), BoxError> {
    use arrow_flight::sql::client::FlightSqlServiceClient;
    for name in ["pump_in", "pump_out"] {
        client
            .call(
                "CreateStream",
                json!({"StreamName": name, "ShardCount": 2}).to_string(),
            )
            .await?;
    }
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{flight}"))?
        .connect()
        .await?;
    let mut sql = FlightSqlServiceClient::new(channel);
    // The copy is made where its node is: retried while the cluster still creates the streams
    // on every node or assigns the pump.
    let create = "CREATE PUMP copier AS INSERT INTO pump_out SELECT STREAM _partition_key, _data FROM pump_in";
    let started = Instant::now();
    while let Err(e) = sql.execute_update(create.to_string(), None).await {
        if started.elapsed() > Duration::from_secs(30) {
            return Err(format!("CREATE PUMP: {e}").into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut waits = Vec::with_capacity(PUMP_PUTS);
    for n in 0..PUMP_PUTS {
        let body = json!({"StreamName": "pump_in", "PartitionKey": format!("k{n}"), "Data": "eyJuIjoxfQ=="})
            .to_string();
        let started = Instant::now();
        loop {
            match client.call("PutRecord", body.clone()).await {
                Ok(_) => break,
                Err(_) if started.elapsed() < Duration::from_secs(30) => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => return Err(e),
            }
        }
        loop {
            if count_rows(&mut sql, "SELECT count(*) FROM pump_out").await? > n as i64 {
                break;
            }
            if started.elapsed() > Duration::from_secs(30) {
                return Err(format!("record {n} was not copied within 30 s").into());
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        waits.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    waits.sort_by(f64::total_cmp);
    let at = |q: f64| waits[((waits.len() - 1) as f64 * q).round() as usize];
    Ok((at(0.5), at(0.99)))
}

/// The single `count(*)` a query answers.
async fn count_rows(
    sql: &mut arrow_flight::sql::client::FlightSqlServiceClient<tonic::transport::Channel>,
    query: &str,
) -> Result<i64, BoxError> {
    use arrow::array::AsArray;
    use futures::StreamExt;
    let info = sql.execute(query.to_string(), None).await?;
    let mut count = 0;
    for endpoint in info.endpoint {
        let ticket = endpoint.ticket.ok_or("no ticket")?;
        let mut stream = sql.do_get(ticket).await?;
        while let Some(batch) = stream.next().await {
            let batch = batch?;
            let column = batch
                .column(0)
                .as_primitive::<arrow::datatypes::Int64Type>();
            if !column.is_empty() {
                count = column.value(0);
            }
        }
    }
    Ok(count)
}

/// Waits until every node answers PutRecord for every shard (stream known, shards owned).
async fn wait_writable(nodes: &[&Client]) -> Result<(), BoxError> {
    for node in nodes {
        for shard in 0..SHARDS {
            put_to(node, shard, 0, Duration::from_secs(30)).await?;
        }
    }
    Ok(())
}

/// Waits until every shard is owned by the node it is assigned to and the nodes own two each.
async fn wait_settled(coordinator: &dyn Coordinator) -> Result<(), BoxError> {
    let started = Instant::now();
    loop {
        let owners = coordinator.list(sluice_cluster::keys::OWNER).await?;
        let assigned = coordinator.list(sluice_cluster::keys::ASSIGN).await?;
        let mut per_node: std::collections::BTreeMap<Vec<u8>, usize> = Default::default();
        for owner in &owners {
            *per_node.entry(owner.value.clone()).or_default() += 1;
        }
        let matches = owners.len() == SHARDS as usize
            && assigned.len() == SHARDS as usize
            && owners
                .iter()
                .zip(&assigned)
                .all(|(o, a)| o.value == a.value);
        if matches && per_node.len() == 3 && per_node.values().all(|&n| n == 2) {
            // Let the last owner finish opening.
            tokio::time::sleep(Duration::from_secs(1)).await;
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(60) {
            return Err("the cluster did not settle within 60 s".into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// p50 and p99 of `puts` sequential PutRecord calls to `shard` through `client`, in ms.
async fn latency(client: &Client, shard: u32, puts: usize) -> Result<(f64, f64), BoxError> {
    spaced_latency(client, shard, puts, Duration::ZERO).await
}

/// [`latency`] with `gap` between one answer and the next call (a producer that puts now and
/// then, to a shard otherwise idle).
async fn spaced_latency(
    client: &Client,
    shard: u32,
    puts: usize,
    gap: Duration,
) -> Result<(f64, f64), BoxError> {
    let mut took = Vec::with_capacity(puts);
    for n in 0..puts {
        took.push(put_to(client, shard, n, Duration::ZERO).await?);
        tokio::time::sleep(gap).await;
    }
    took.sort();
    let at = |q: f64| took[((took.len() as f64 * q) as usize).min(took.len() - 1)];
    Ok((at(0.50).as_secs_f64() * 1e3, at(0.99).as_secs_f64() * 1e3))
}

/// Records acknowledged per second by `clients` PutRecords loops spread over `nodes`.
async fn throughput(nodes: &[&Client], clients: usize, seconds: u64) -> Result<f64, BoxError> {
    let acknowledged = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let client = client(&nodes[c % nodes.len()].endpoint)?;
        let acknowledged = Arc::clone(&acknowledged);
        let (body, _) = put_records_body(STREAM, c);
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                let out = client.call("PutRecords", body.clone()).await?;
                let failed = out["FailedRecordCount"].as_u64().unwrap_or(0);
                let sent = out["Records"].as_array().map_or(0, Vec::len) as u64;
                acknowledged.fetch_add(sent - failed, Ordering::Relaxed);
            }
            Ok::<(), BoxError>(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(acknowledged.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64())
}

async fn run(args: &ClusterArgs) -> Result<(), BoxError> {
    let dir = tempfile::tempdir()?;
    let root = dir.path().join("s3");
    std::fs::create_dir_all(root.join("lake"))?;
    let (s3, s3_addr) = s3_server::serve(&root, "127.0.0.1:0".parse()?, (S3_KEY, S3_SECRET))
        .await
        .map_err(|e| e.to_string())?;

    // The baseline: one node, its default durability (acknowledged after the local fsync).
    let (local_child, local_endpoint, local_flight) =
        start_sluice_served(&dir.path().join("single"), &[], &[])?;
    let single = Node {
        child: local_child,
        client: client(&local_endpoint)?,
        flight: local_flight,
    };
    create_stream(&single.client).await?;
    wait_writable(&[&single.client]).await?;
    let (local_p50, local_p99) = latency(&single.client, 0, args.puts).await?;
    let (local_idle_p50, local_idle_p99) =
        spaced_latency(&single.client, 0, IDLE_PUTS, IDLE_GAP).await?;
    let single_rate = throughput(&[&single.client], args.clients, args.seconds).await?;
    let (local_pump_p50, local_pump_p99) = pump_latency(&single.client, &single.flight).await?;
    drop(single);

    // Three nodes sharing the stream through etcd and S3.
    let server = etcd::EtcdServer::start();
    let nodes: Vec<Node> = ["n1", "n2", "n3"]
        .iter()
        .map(|id| start_node(dir.path(), &server.endpoint, s3_addr, id))
        .collect::<Result<_, _>>()?;
    create_stream(&nodes[0].client).await?;
    let clients: Vec<&Client> = nodes.iter().map(|n| &n.client).collect();
    wait_writable(&clients).await?;
    // Measured once the controller has settled the shards (two per node), not while it moves
    // them.
    let coordinator = sluice_cluster::etcd::EtcdCoordinator::connect(&[&server.endpoint])?;
    wait_settled(&coordinator).await?;
    let owner_key = sluice_cluster::ShardKey::new(STREAM, 0).key(sluice_cluster::keys::OWNER);
    let owner = coordinator
        .get(&owner_key)
        .await?
        .map(|kv| String::from_utf8_lossy(&kv.value).into_owned())
        .ok_or("nobody owns shard 0")?;
    let owner_at: usize = owner.trim_start_matches('n').parse::<usize>()? - 1;
    let other_at = (owner_at + 1) % nodes.len();
    let (owner_p50, owner_p99) = latency(&nodes[owner_at].client, 0, args.puts)
        .await
        .map_err(|e| format!("at the owner ({owner}): {e}"))?;
    let (other_p50, other_p99) = latency(&nodes[other_at].client, 0, args.puts)
        .await
        .map_err(|e| format!("forwarded: {e}"))?;
    let (idle_p50, idle_p99) = spaced_latency(&nodes[owner_at].client, 0, IDLE_PUTS, IDLE_GAP)
        .await
        .map_err(|e| format!("at the owner, spaced: {e}"))?;
    let cluster_rate = throughput(&clients, args.clients, args.seconds).await?;
    let (pump_p50, pump_p99) = pump_latency(&nodes[other_at].client, &nodes[owner_at].flight)
        .await
        .map_err(|e| format!("through a cluster's pump: {e}"))?;

    // kill -9 of shard 0's owner: until shard 0 takes a write through another node.
    let mut nodes = nodes;
    let killed = nodes.remove(owner_at);
    let survivor = client(&nodes[0].client.endpoint)?;
    let started = Instant::now();
    drop(killed);
    put_to(&survivor, 0, 1, Duration::from_secs(30)).await?;
    let failover = started.elapsed();
    drop(nodes);
    s3.abort();

    println!(
        "PutRecord latency, one record at a time ({} calls each):",
        args.puts
    );
    println!(
        "  one node, local fsync (baseline)        p50 {local_p50:>7.2} ms   p99 {local_p99:>7.2} ms"
    );
    println!(
        "  cluster, shared (S3), at the owner      p50 {owner_p50:>7.2} ms   p99 {owner_p99:>7.2} ms"
    );
    println!(
        "  cluster, shared (S3), forwarded         p50 {other_p50:>7.2} ms   p99 {other_p99:>7.2} ms"
    );
    println!(
        "PutRecord latency, one record every {} ms ({IDLE_PUTS} calls each):",
        IDLE_GAP.as_millis()
    );
    println!(
        "  one node, local fsync (baseline)        p50 {local_idle_p50:>7.2} ms   p99 {local_idle_p99:>7.2} ms"
    );
    println!(
        "  cluster, shared (S3), at the owner      p50 {idle_p50:>7.2} ms   p99 {idle_p99:>7.2} ms"
    );
    println!(
        "PutRecords throughput ({} clients, {} s): one node {single_rate:>9.0} records/s; three nodes {cluster_rate:>9.0} records/s ({:.2}x)",
        args.clients,
        args.seconds,
        cluster_rate / single_rate
    );
    println!(
        "Through a pump: PutRecord until a Flight SQL query sees its copy ({PUMP_PUTS} records, one at a time):"
    );
    println!(
        "  one node's pump (baseline)              p50 {local_pump_p50:>7.2} ms   p99 {local_pump_p99:>7.2} ms"
    );
    println!(
        "  a cluster's pump (pump log, then owner) p50 {pump_p50:>7.2} ms   p99 {pump_p99:>7.2} ms"
    );
    println!(
        "Failover: kill -9 of a shard's owner until the shard took a write elsewhere: {:.2} s (target under 10 s, aim 3 s)",
        failover.as_secs_f64()
    );
    Ok(())
}
