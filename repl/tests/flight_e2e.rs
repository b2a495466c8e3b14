//! `sluice serve` end to end: the real binary on 127.0.0.1, driven by `sluice --connect`, by
//! ADBC's Flight SQL driver and by pyarrow.flight (tests/e2e/flight_sql.py), by boto3 over the
//! Kinesis API (tests/e2e/kinesis_api.py), and stopped by SIGTERM with everything kept.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

type TestResult = Result<(), Box<dyn std::error::Error>>;

const TOKEN: &str = "e2e-token";

/// A running `sluice serve`, killed if the test ends without stopping it.
struct Server {
    child: Child,
    url: String,
    kinesis: String,
}

impl Server {
    fn start(data_dir: &Path) -> Result<Self, Box<dyn std::error::Error>> {
        let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .arg("--data-dir")
            .arg(data_dir)
            .args([
                "--token",
                TOKEN,
                "serve",
                "--flight-port",
                "0",
                "--kinesis-port",
                "0",
                // Kinesis API signatures are verified: boto3 and aws-cli sign with these.
                "--aws-access-key-id",
                "test",
                "--aws-secret-access-key",
                "test",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let mut first = String::new();
        BufReader::new(stdout).read_line(&mut first)?;
        let url = first
            .split_whitespace()
            .find(|w| w.starts_with("grpc://"))
            .ok_or_else(|| format!("no address in {first:?}"))?
            .to_string();
        let kinesis = first
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .ok_or_else(|| format!("no Kinesis address in {first:?}"))?
            .to_string();
        Ok(Self {
            child,
            url,
            kinesis,
        })
    }

    /// SIGTERM, then the exit status.
    fn terminate(mut self) -> Result<std::process::ExitStatus, Box<dyn std::error::Error>> {
        let killed = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()?;
        assert!(killed.success());
        Ok(self.child.wait()?)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sluice(args: &[&str]) -> std::io::Result<Output> {
    Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(args)
        .output()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

const SCRIPT: &str = "CREATE STREAM ticker (symbol VARCHAR, price DOUBLE) WITH (shards = 2, partition_key = 'symbol');
INSERT INTO ticker VALUES ('AMZN', 130.2), ('MSFT', 410.5), ('AMZN', 131.0);
SELECT symbol, count(*) AS n, max(price) AS top FROM ticker GROUP BY symbol ORDER BY symbol;
DESCRIBE ticker;";

#[test]
fn the_repl_prints_the_same_against_a_server_as_embedded() -> TestResult {
    let embedded_dir = tempfile::tempdir()?;
    let embedded = sluice(&[
        "--data-dir",
        &embedded_dir.path().display().to_string(),
        "--format",
        "csv",
        "-c",
        SCRIPT,
    ])?;
    assert!(embedded.status.success(), "{}", text(&embedded.stderr));

    let served_dir = tempfile::tempdir()?;
    let server = Server::start(served_dir.path())?;
    let remote = sluice(&[
        "--connect",
        &server.url,
        "--token",
        TOKEN,
        "--format",
        "csv",
        "-c",
        SCRIPT,
    ])?;
    assert!(remote.status.success(), "{}", text(&remote.stderr));
    assert_eq!(text(&remote.stdout), text(&embedded.stdout));
    assert!(text(&remote.stdout).contains("AMZN,2,131.0"));

    // Table output with notes, and errors as the embedded REPL words them.
    let notes = sluice(&[
        "--connect",
        &server.url,
        "--token",
        TOKEN,
        "-c",
        "CREATE STREAM other (v BIGINT)",
        "-c",
        "SELECT v FROM missing",
    ])?;
    assert!(!notes.status.success());
    assert!(text(&notes.stdout).contains("Stream 'other' created with 1 shard."));
    assert!(
        text(&notes.stderr).contains("stream or table 'missing' does not exist"),
        "{}",
        text(&notes.stderr)
    );

    // A wrong token gets nothing done.
    let refused = sluice(&[
        "--connect",
        &server.url,
        "--token",
        "wrong",
        "-c",
        "SHOW STREAMS",
    ])?;
    assert!(!refused.status.success());
    assert!(
        text(&refused.stderr).contains("token"),
        "{}",
        text(&refused.stderr)
    );

    // SIGTERM stops the server cleanly and the records stay.
    let status = server.terminate()?;
    assert!(status.success(), "{status:?}");
    let after = sluice(&[
        "--data-dir",
        &served_dir.path().display().to_string(),
        "--format",
        "csv",
        "-c",
        "SELECT count(*) AS n FROM ticker",
    ])?;
    assert_eq!(text(&after.stdout), "n\n3\n", "{}", text(&after.stderr));
    Ok(())
}

#[test]
fn adbc_and_pyarrow_flight_clients_work_unchanged() -> TestResult {
    let dir = tempfile::tempdir()?;
    let server = Server::start(dir.path())?;
    let script = common::e2e_script("flight_sql.py");
    let run = Command::new(common::python::python())
        .arg(script)
        .args([&server.url, TOKEN])
        .output()?;
    assert!(
        run.status.success(),
        "stdout:\n{}\nstderr:\n{}",
        text(&run.stdout),
        text(&run.stderr)
    );
    assert!(text(&run.stdout).contains("all Flight SQL checks passed"));
    let status = server.terminate()?;
    assert!(status.success(), "{status:?}");
    Ok(())
}

#[test]
fn boto3_runs_the_kinesis_lifecycle_and_sql_reads_what_it_put() -> TestResult {
    let dir = tempfile::tempdir()?;
    let server = Server::start(dir.path())?;
    let script = common::e2e_script("kinesis_api.py");
    let run = Command::new(common::python::python())
        .arg(script)
        .arg(&server.kinesis)
        .output()?;
    assert!(
        run.status.success(),
        "stdout:\n{}\nstderr:\n{}",
        text(&run.stdout),
        text(&run.stderr)
    );
    assert!(text(&run.stdout).contains("all Kinesis API checks passed"));

    // The records put over the API are the stream SQL sees, and they feed a pump.
    let sql = sluice(&[
        "--connect",
        &server.url,
        "--token",
        TOKEN,
        "--format",
        "csv",
        "-c",
        "ALTER STREAM events (user VARCHAR, n BIGINT) SET (format = 'json');
         CREATE STREAM keys (k VARCHAR) WITH (shards = 1);
         CREATE PUMP copy_keys AS INSERT INTO keys SELECT STREAM _partition_key AS k FROM events;
         CREATE PUMP copy_scaled AS INSERT INTO keys SELECT STREAM _partition_key AS k FROM scaled;
         FLUSH;
         SELECT (SELECT count(*) FROM events) AS put, (SELECT sum(n) FROM events) AS total, (SELECT count(DISTINCT _shard_id) FROM scaled) AS shards, count(*) AS pumped FROM keys;",
    ])?;
    assert!(sql.status.success(), "{}", text(&sql.stderr));
    // `events`, created raw over the API, decodes as JSON once altered (n: 1 + 0..=99).
    // `scaled` was split, merged and scaled over the API: its records sit in the parent and the
    // two children of the split, and the pump follows the lineage to all 40 of them.
    assert!(
        text(&sql.stdout).ends_with("put,total,shards,pumped\n101,4951,3,141\n"),
        "{}",
        text(&sql.stdout)
    );
    let status = server.terminate()?;
    assert!(status.success(), "{status:?}");
    Ok(())
}
