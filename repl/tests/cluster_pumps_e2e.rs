//! A pump of the cluster's, on three `sluice serve --cluster` processes (127.0.0.1, a real
//! etcd and a real S3 server): `CREATE PUMP` into a shared stream through one node defines it
//! for every node; one node runs it; killed with SIGKILL while records flow, the pump moves to
//! another node and goes on from its last committed batch, so the target holds every record
//! of the source exactly once, and a windowed pump beside it emits each window once (`tests/e2e/cluster.py pump` and `copies`); the batches every
//! target shard took are then deleted from object storage.

mod common;
#[path = "../../tests/support/etcd.rs"]
mod etcd;
#[path = "../../tests/support/s3_server.rs"]
mod s3_server;

use std::collections::BTreeMap;
use std::path::Path;

type TestResult = Result<(), Box<dyn std::error::Error>>;

const S3_KEY: &str = "lake-key";
const S3_SECRET: &str = "lake-secret";

struct Node {
    server: common::server::Server,
    kinesis: String,
    flight: String,
}

fn node(
    data: &Path,
    s3: std::net::SocketAddr,
    etcd: &str,
    id: &str,
) -> Result<Node, Box<dyn std::error::Error>> {
    let (server, flight, kinesis) = common::server::serve_cluster_node(
        env!("CARGO_BIN_EXE_sluice").as_ref(),
        data,
        s3,
        (S3_KEY, S3_SECRET),
        etcd,
        id,
    )?;
    Ok(Node {
        server,
        kinesis,
        flight,
    })
}

fn write(state: &Path, first: usize, count: usize, endpoints: &[String]) -> Result<String, String> {
    let mut args = vec![
        "write".to_string(),
        state.display().to_string(),
        first.to_string(),
        count.to_string(),
    ];
    args.extend(endpoints.iter().cloned());
    common::server::python_script("cluster.py", &args)
}

/// How many files are under `dir`, at any depth.
fn count_files(dir: &Path) -> std::io::Result<usize> {
    let mut count = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                count += 1;
            }
        }
    }
    Ok(count)
}

#[test]
fn a_clusters_pump_moves_with_its_node_and_copies_every_record_once() -> TestResult {
    let dir = tempfile::tempdir()?;
    let root = dir.path().join("s3");
    std::fs::create_dir_all(root.join("lake"))?;
    let runtime = tokio::runtime::Runtime::new()?;
    let (s3, s3_addr) = runtime.block_on(s3_server::serve(
        &root,
        "127.0.0.1:0".parse()?,
        (S3_KEY, S3_SECRET),
    ))?;
    let etcd = etcd::EtcdServer::start();
    let mut nodes: BTreeMap<String, Node> = BTreeMap::new();
    for id in ["n1", "n2", "n3"] {
        nodes.insert(
            id.to_string(),
            node(&dir.path().join(id), s3_addr, &etcd.endpoint, id)?,
        );
    }
    let state = dir.path().join("acknowledged.jsonl");
    let all: Vec<String> = nodes.values().map(|n| n.kinesis.clone()).collect();
    let out = write(&state, 0, 60, &all)?;
    assert!(out.contains("acknowledged: 60"), "{out}");

    // The pump, created through n1, copies what is there and what comes.
    let n1 = &nodes["n1"];
    let args = ["pump-windows", &n1.kinesis, &n1.flight, "n1"].map(String::from);
    let out = common::server::python_script("cluster.py", &args)?;
    let runs_on = out
        .lines()
        .find_map(|l| l.strip_prefix("pump runs on: "))
        .ok_or_else(|| format!("no node runs the pump: {out}"))?
        .trim()
        .to_string();
    let survivors: Vec<String> = nodes
        .iter()
        .filter(|(id, _)| **id != runs_on)
        .map(|(_, n)| n.kinesis.clone())
        .collect();
    let out = write(&state, 60, 60, &survivors)?;
    assert!(out.contains("acknowledged: 60"), "{out}");

    // kill -9 of the pump's node while records flow: the pump moves and goes on.
    let producer = {
        let state = state.clone();
        let survivors = survivors.clone();
        std::thread::spawn(move || write(&state, 120, 150, &survivors))
    };
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let killed = nodes.remove(&runs_on).ok_or("the pump's node")?;
    drop(killed.server);
    let out = producer.join().map_err(|_| "the producer panicked")??;
    assert!(out.contains("acknowledged: 150"), "{out}");
    eprintln!("pump ran on {runs_on}, killed mid-stream");

    // The windowed pump, which moved with it, emitted each closed window once.
    let survivor = nodes.values().next().ok_or("a surviving node")?;
    let windows = ["windows", &survivor.kinesis, &survivor.flight].map(String::from);
    let out = common::server::python_script("cluster.py", &windows)?;
    eprintln!("{}", out.trim());
    assert!(out.contains("windows: ok"), "{out}");

    let mut args = vec!["copies".to_string()];
    args.extend(survivors.iter().cloned());
    let out = common::server::python_script("cluster.py", &args)?;
    eprintln!("{}", out.trim());
    assert!(out.contains("copies: ok"), "{out}");

    // Once every target shard has gone through them (recorded every 10 s), the pump's node
    // deletes its batches (every 30 s), all but the last committed one (and any a zombie left
    // after it).
    let pumps = root.join("lake").join("cluster").join(".pumps");
    let copier = std::fs::read_dir(&pumps)?
        .filter_map(|e| e.ok())
        .find(|e| e.file_name().to_string_lossy().starts_with("copier@"))
        .ok_or("the copier's batches")?;
    let batches = copier.path();
    let committed = count_files(&batches)?;
    assert!(committed > 2, "{committed} batch objects");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    loop {
        let left = count_files(&batches)?;
        if left <= 2 {
            eprintln!("pump batches: {committed} written, {left} left once every shard took them");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{left} of {committed} pump batches still there after 90 s"
        );
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
    // And the target still reads back whole.
    let out = common::server::python_script("cluster.py", &args)?;
    assert!(out.contains("copies: ok"), "{out}");

    // Dropped through any node, it stops everywhere and its batches go.
    let survivor = nodes.values().next().ok_or("a surviving node")?;
    let args = ["unpump", &survivor.flight, &survivor.kinesis].map(String::from);
    let out = common::server::python_script("cluster.py", &args)?;
    assert!(out.contains("unpump: ok"), "{out}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while count_files(&batches)? > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "a dropped pump's batches are still there after 20 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    drop(nodes);
    s3.abort();
    Ok(())
}
