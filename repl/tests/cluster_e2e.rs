//! Three `sluice serve --cluster` processes on 127.0.0.1 sharing a stream through a real etcd
//! and a real S3 server (s3s-fs), driven with boto3 (`tests/e2e/cluster.py`): any node answers
//! any request; a node killed with SIGKILL has its shards taken over by the others, which go on
//! numbering where it stopped, and every record acknowledged before or after is read back
//! exactly once, in order, through every surviving node; a node stopped with SIGTERM hands its
//! shards off and the last node serves them all. Flight SQL through every node reads every
//! acknowledged record too: each node follows the shards it does not own from the shared log.

mod common;
#[path = "../../tests/support/etcd.rs"]
mod etcd;
#[path = "../../tests/support/s3_server.rs"]
mod s3_server;

use std::path::Path;

type TestResult = Result<(), Box<dyn std::error::Error>>;

const S3_KEY: &str = "lake-key";
const S3_SECRET: &str = "lake-secret";

fn node(
    data: &Path,
    s3: std::net::SocketAddr,
    etcd: &str,
    id: &str,
) -> Result<(common::server::Server, Endpoints), Box<dyn std::error::Error>> {
    let (server, flight, kinesis) = common::server::serve_cluster_node(
        env!("CARGO_BIN_EXE_sluice").as_ref(),
        data,
        s3,
        (S3_KEY, S3_SECRET),
        etcd,
        id,
    )?;
    Ok((server, Endpoints { kinesis, flight }))
}

/// A node's Kinesis API and Flight SQL addresses.
struct Endpoints {
    kinesis: String,
    flight: String,
}

fn write(state: &Path, first: usize, count: usize, nodes: &[&Endpoints]) -> Result<String, String> {
    let mut args = vec![
        "write".to_string(),
        state.display().to_string(),
        first.to_string(),
        count.to_string(),
    ];
    args.extend(nodes.iter().map(|e| e.kinesis.clone()));
    common::server::python_script("cluster.py", &args)
}

/// Reads everything back through every node, with the Kinesis API and with Flight SQL.
fn check(state: &Path, nodes: &[&Endpoints]) -> Result<String, String> {
    let mut args = vec!["check".to_string(), state.display().to_string()];
    args.extend(nodes.iter().map(|e| e.kinesis.clone()));
    let read = common::server::python_script("cluster.py", &args)?;
    let mut args = vec!["query".to_string(), state.display().to_string()];
    args.extend(nodes.iter().map(|e| e.flight.clone()));
    let queried = common::server::python_script("cluster.py", &args)?;
    eprintln!("{}", queried.trim());
    Ok(read + &queried)
}

/// Puts through one node and queries at once through the next.
fn fresh(state: &Path, nodes: &[&Endpoints]) -> Result<String, String> {
    let mut args = vec!["fresh".to_string(), state.display().to_string()];
    args.extend(nodes.iter().map(|e| format!("{},{}", e.kinesis, e.flight)));
    common::server::python_script("cluster.py", &args)
}

/// The streams' log folders (`{stream}@{incarnation}`) under `logs` that hold any chunk.
fn folders_with_chunks(logs: &Path) -> std::io::Result<Vec<String>> {
    let mut holding = Vec::new();
    for entry in std::fs::read_dir(logs)? {
        let entry = entry?;
        let mut stack = vec![entry.path()];
        let mut chunks = 0;
        while let Some(dir) = stack.pop() {
            for inner in std::fs::read_dir(&dir)? {
                let path = inner?.path();
                if path.is_dir() {
                    stack.push(path);
                } else if path.extension().is_some_and(|e| e == "arrow") {
                    chunks += 1;
                }
            }
        }
        if chunks > 0 {
            holding.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    Ok(holding)
}

#[test]
fn three_nodes_share_a_stream_and_a_lost_nodes_shards_move_losing_nothing() -> TestResult {
    let dir = tempfile::tempdir()?;
    let root = dir.path().join("s3");
    std::fs::create_dir_all(root.join("lake"))?;
    // The S3 server runs on its own runtime while this thread drives the processes.
    let runtime = tokio::runtime::Runtime::new()?;
    let (s3, s3_addr) = runtime.block_on(s3_server::serve(
        &root,
        "127.0.0.1:0".parse()?,
        (S3_KEY, S3_SECRET),
    ))?;
    let etcd = etcd::EtcdServer::start();
    let (n1, e1) = node(&dir.path().join("n1"), s3_addr, &etcd.endpoint, "n1")?;
    let (n2, e2) = node(&dir.path().join("n2"), s3_addr, &etcd.endpoint, "n2")?;
    let (mut n3, e3) = node(&dir.path().join("n3"), s3_addr, &etcd.endpoint, "n3")?;
    let state = dir.path().join("acknowledged.jsonl");

    let out = write(&state, 0, 120, &[&e1, &e2, &e3])?;
    assert!(out.contains("acknowledged: 120"), "{out}");
    // Read-your-writes across nodes, and a consumer served by nodes that do not own its shards.
    let out = fresh(&state, &[&e1, &e2, &e3])?;
    assert!(out.contains("fresh: ok"), "{out}");
    let mut args = vec!["fanout".to_string(), state.display().to_string()];
    args.extend([&e1, &e2, &e3].iter().map(|e| e.kinesis.clone()));
    let out = common::server::python_script("cluster.py", &args)?;
    assert!(out.contains("fanout: ok"), "{out}");
    let out = check(&state, &[&e1, &e2, &e3])?;
    assert!(
        out.contains("cluster: ok") && out.contains("query: ok"),
        "{out}"
    );

    // kill -9 one node: its shards move; nothing acknowledged is lost, writes go on.
    drop(n2);
    let out = write(&state, 120, 120, &[&e1, &e3])?;
    assert!(out.contains("acknowledged: 120"), "{out}");
    eprintln!("after kill -9 of n2: {}", out.trim().replace('\n', "; "));
    let out = fresh(&state, &[&e1, &e3])?;
    assert!(out.contains("fresh: ok"), "{out}");
    let out = check(&state, &[&e1, &e3])?;
    assert!(
        out.contains("cluster: ok") && out.contains("query: ok"),
        "{out}"
    );

    // Deleted and created again under its name: the new stream starts empty, numbered from
    // the start, on every node.
    let mut args = vec!["recreate".to_string(), state.display().to_string()];
    args.extend([&e1, &e3].iter().map(|e| e.kinesis.clone()));
    common::server::python_script("cluster.py", &args)?;
    let out = write(&state, 1000, 60, &[&e1, &e3])?;
    assert!(out.contains("acknowledged: 60"), "{out}");
    let out = check(&state, &[&e1, &e3])?;
    assert!(
        out.contains("cluster: ok") && out.contains("query: ok"),
        "{out}"
    );
    // The deleted stream's chunks are removed from object storage; the new one's stay.
    let logs = root.join("lake").join("cluster");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let holding = folders_with_chunks(&logs)?;
        if holding.len() == 1 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "chunks of {holding:?} after the first incarnation was deleted"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }

    // n2 comes back with its data folder, which holds a copy of the deleted stream: it replaces
    // that copy with one of the new stream, and serves it like the others.
    let (n2, e2) = node(&dir.path().join("n2"), s3_addr, &etcd.endpoint, "n2")?;
    let out = write(&state, 1060, 30, &[&e1, &e2, &e3])?;
    assert!(out.contains("acknowledged: 30"), "{out}");
    let out = check(&state, &[&e1, &e2, &e3])?;
    assert!(
        out.contains("cluster: ok") && out.contains("query: ok"),
        "{out}"
    );

    // A graceful stop hands n3's shards to the others.
    n3.terminate()?;
    let out = write(&state, 1090, 60, &[&e1, &e2])?;
    eprintln!("after SIGTERM of n3: {}", out.trim().replace('\n', "; "));
    let out = check(&state, &[&e1, &e2])?;
    assert!(
        out.contains("cluster: ok") && out.contains("query: ok"),
        "{out}"
    );
    drop(n2);
    drop(n1);
    s3.abort();
    Ok(())
}
