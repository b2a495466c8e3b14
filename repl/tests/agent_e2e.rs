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
