//! `sluice agent` against `sluice serve` (`tests/e2e/agent.py`): a log file written while it is
//! rotated by rename and by copytruncate, the agent killed with `kill -9` mid-file and started
//! again, every line arriving at least once; Apache combined-log lines into a Kinesis stream and
//! syslog lines into a Firehose delivery stream (on an S3-compatible server, `s3s-fs`, in this
//! process, on 127.0.0.1), turned into JSON as the Kinesis Agent does.

mod common;
#[path = "../../tests/support/s3_server.rs"]
mod s3_server;

type TestResult = Result<(), Box<dyn std::error::Error>>;

const KEY: &str = "agent-key";
const SECRET: &str = "agent-secret";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_tails_rotating_files_through_kill_9_into_kinesis_and_firehose() -> TestResult {
    let dir = tempfile::tempdir()?;
    let root = dir.path().join("s3");
    std::fs::create_dir_all(root.join("lake"))?;
    let (s3, s3_addr) = s3_server::serve(&root, "127.0.0.1:0".parse()?, (KEY, SECRET)).await?;
    let binary = std::path::PathBuf::from(env!("CARGO_BIN_EXE_sluice"));
    let (server, _flight, kinesis) =
        common::server::serve(&binary, &dir.path().join("data"), s3_addr, (KEY, SECRET))?;
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work)?;
    let args = vec![
        binary.display().to_string(),
        kinesis,
        work.display().to_string(),
        root.join("lake").display().to_string(),
    ];
    let out = tokio::task::spawn_blocking(move || common::server::python_script("agent.py", &args))
        .await??;
    assert!(out.contains("agent: ok"), "{out}");
    println!("{out}");
    drop(server);
    s3.abort();
    Ok(())
}

/// Against a server that enforces Kinesis's per-shard limits (1,000 records/s), the agent is
/// throttled — records answered `ProvisionedThroughputExceededException` — and sends those again
/// with backoff until every line is in the stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttled_agent_retries_until_every_line_is_in() -> TestResult {
    let dir = tempfile::tempdir()?;
    let binary = std::path::PathBuf::from(env!("CARGO_BIN_EXE_sluice"));
    let (server, flight, kinesis) = common::server::serve_with(
        &binary,
        &dir.path().join("data"),
        "127.0.0.1:9".parse()?,
        (KEY, SECRET),
        &["--kinesis-shard-limits"],
    )?;
    common::server::sql(&binary, &flight, "CREATE STREAM lines WITH (shards = 1)")?;
    let log = dir.path().join("app.log");
    let lines = 4000;
    let text: String = (0..lines).map(|i| format!("line {i}\n")).collect();
    std::fs::write(&log, text)?;
    let config = serde_json::json!({
        "kinesis.endpoint": kinesis,
        "awsAccessKeyId": "test", "awsSecretAccessKey": "test",
        "checkpointFile": dir.path().join("checkpoints.json"),
        "flows": [{"filePattern": log, "kinesisStream": "lines",
                   "initialPosition": "START_OF_FILE", "maxBufferAgeMillis": 1000}]
    });
    let config_path = dir.path().join("agent.json");
    std::fs::write(&config_path, config.to_string())?;
    let agent = tokio::task::spawn_blocking(move || {
        std::process::Command::new(&binary)
            .args(["agent", "-c"])
            .arg(&config_path)
            .args(["--exit-when-caught-up", "--progress-seconds", "0"])
            .output()
    })
    .await??;
    let stderr = String::from_utf8_lossy(&agent.stderr);
    assert!(agent.status.success(), "{stderr}");
    // The last progress line: every line sent, after retries.
    let last = stderr.lines().last().unwrap_or_default();
    assert!(last.contains(&format!("{lines} records sent")), "{stderr}");
    let retries: u64 = last
        .split(", ")
        .find_map(|part| part.strip_suffix(" retries"))
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("no retries in {last:?}"))?;
    assert!(retries > 0, "the server's limits were never hit: {last}");
    let counted = common::server::sql(
        env!("CARGO_BIN_EXE_sluice").as_ref(),
        &flight,
        "SELECT count(DISTINCT _data) AS n FROM lines",
    )?;
    assert!(counted.contains(&lines.to_string()), "{counted}");
    drop(server);
    Ok(())
}
