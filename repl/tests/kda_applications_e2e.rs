//! Kinesis Data Analytics applications against `sluice serve`, as KDA users manage them:
//! aws-cli and boto3 over the kinesisanalytics API (`tests/e2e/kda_applications.py`), a
//! reference table on an S3-compatible server (`s3s-fs`, in this process, on 127.0.0.1), an
//! output to a stream and one to a delivery stream read back with DuckDB; then the server is
//! killed with `kill -9`, started again, and the applications carry on exactly where they were.

mod common;
#[path = "../../tests/support/s3_server.rs"]
mod s3_server;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

type TestResult = Result<(), Box<dyn std::error::Error>>;

const KEY: &str = "ref-key";
const SECRET: &str = "ref-secret";

fn serve(
    data: &Path,
    s3: SocketAddr,
) -> Result<(common::server::Server, String, String), Box<dyn std::error::Error>> {
    common::server::serve(
        env!("CARGO_BIN_EXE_sluice").as_ref(),
        data,
        s3,
        (KEY, SECRET),
    )
}

fn python(args: Vec<String>) -> Result<String, String> {
    common::server::python_script("kda_applications.py", &args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kda_applications_run_from_aws_cli_and_boto3_and_survive_kill_9() -> TestResult {
    let dir = tempfile::tempdir()?;
    let root = dir.path().join("s3");
    std::fs::create_dir_all(root.join("refdata"))?;
    std::fs::write(
        root.join("refdata/companies.csv"),
        "AMZN,Amazon\nORCL,Oracle\nMSFT,Microsoft\n",
    )?;
    let (s3, s3_addr) = s3_server::serve(&root, "127.0.0.1:0".parse()?, (KEY, SECRET)).await?;
    let data = dir.path().join("data");
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work)?;

    let (server, flight, kinesis) = serve(&data, s3_addr)?;
    // The delivery stream the application's Firehose output names, made in SQL.
    let setup = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["--connect", &flight, "--user", "test", "--password", "test", "-c"])
        .arg(format!(
            "CREATE STREAM lake_in (TICKER_SYMBOL VARCHAR, COMPANY VARCHAR, PRICE DOUBLE, EVENT_TIME TIMESTAMP) WITH (format = 'csv');
             CREATE DELIVERY STREAM lake FROM lake_in WITH (destination = '{}', format = 'json', buffer_interval_seconds = 0)",
            work.join("lake").display()
        ))
        .output()?;
    assert!(
        setup.status.success(),
        "{}",
        String::from_utf8_lossy(&setup.stderr)
    );
    let args = |phase: &str, kinesis: &str| {
        vec![
            phase.to_string(),
            kinesis.to_string(),
            work.display().to_string(),
        ]
    };
    let first = args("first", &kinesis);
    let out = tokio::task::spawn_blocking(move || python(first)).await??;
    assert!(out.contains("phase one"), "{out}");

    // A crash (SIGKILL), then the same data folder again.
    drop(server);
    let (server, _flight, kinesis) = serve(&data, s3_addr)?;
    let second = args("second", &kinesis);
    let out = tokio::task::spawn_blocking(move || python(second)).await??;
    assert!(out.contains("phase two"), "{out}");
    drop(server);
    s3.abort();
    Ok(())
}
