//! Kinesis Data Analytics applications against `sluice serve`, as KDA users manage them:
//! aws-cli and boto3 over the kinesisanalytics API (`tests/e2e/kda_applications.py`), a
//! reference table on an S3-compatible server (`s3s-fs`, in this process, on 127.0.0.1), an
//! output to a stream and one to a delivery stream read back with DuckDB; then the server is
//! killed with `kill -9`, started again, and the applications carry on exactly where they were.

mod common;
#[path = "../../tests/support/s3_server.rs"]
mod s3_server;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};

type TestResult = Result<(), Box<dyn std::error::Error>>;

const KEY: &str = "ref-key";
const SECRET: &str = "ref-secret";

/// A server process, killed (like `kill -9`) when dropped, so a failing test leaves none.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `sluice serve` on `data`, reading reference data from the S3 server at `s3`; its Flight
/// and Kinesis addresses.
fn serve(
    data: &Path,
    s3: SocketAddr,
) -> Result<(Server, String, String), Box<dyn std::error::Error>> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("--data-dir")
        .arg(data)
        .args([
            "serve",
            "--flight-port",
            "0",
            "--kinesis-port",
            "0",
            "--aws-access-key-id",
            "test",
            "--aws-secret-access-key",
            "test",
        ])
        .env("AWS_ENDPOINT_URL", format!("http://{s3}"))
        .env("AWS_ALLOW_HTTP", "true")
        .env("AWS_ACCESS_KEY_ID", KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET)
        .env("AWS_REGION", "us-east-1")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let child = Server(child);
    let mut first = String::new();
    BufReader::new(stdout).read_line(&mut first)?;
    let find = |scheme: &str| {
        first
            .split_whitespace()
            .find(|w| w.starts_with(scheme))
            .map(str::to_string)
            .ok_or_else(|| format!("no {scheme} address in {first:?}"))
    };
    let flight = find("grpc://")?;
    let kinesis = find("http://")?;
    Ok((child, flight, kinesis))
}

fn python(args: Vec<String>) -> Result<String, String> {
    let run = Command::new(common::python::python())
        .arg(common::e2e_script("kda_applications.py"))
        .args(&args)
        .env_remove("AWS_PROFILE")
        .output()
        .map_err(|e| e.to_string())?;
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    if run.status.success() {
        Ok(text(&run.stdout))
    } else {
        Err(format!(
            "kda_applications.py {args:?} failed\nstdout:\n{}\nstderr:\n{}",
            text(&run.stdout),
            text(&run.stderr)
        ))
    }
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
        .args(["--connect", &flight, "-c"])
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
