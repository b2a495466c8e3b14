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
        // Kinesis API signatures are verified: boto3 and aws-cli sign with these.
        Self::start_with(
            data_dir,
            &["--token", TOKEN],
            &[
                "--aws-access-key-id",
                "test",
                "--aws-secret-access-key",
                "test",
            ],
        )
    }

    /// A server started with `global` arguments (credentials) and `serve_args` after the ports.
    fn start_with(
        data_dir: &Path,
        global: &[&str],
        serve_args: &[&str],
    ) -> Result<Self, Box<dyn std::error::Error>> {
        let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .arg("--data-dir")
            .arg(data_dir)
            .args(global)
            .args(["serve", "--flight-port", "0", "--kinesis-port", "0"])
            .args(serve_args)
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

/// Runs an e2e script with the provisioned Python; its standard output, once it succeeded.
fn run_python(
    script: &std::path::Path,
    args: &[&str],
) -> Result<String, Box<dyn std::error::Error>> {
    let run = Command::new(common::python::python())
        .arg(script)
        .args(args)
        .output()?;
    assert!(
        run.status.success(),
        "{} failed\nstdout:\n{}\nstderr:\n{}",
        script.display(),
        text(&run.stdout),
        text(&run.stderr)
    );
    Ok(text(&run.stdout))
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
fn a_remote_repl_says_when_no_server_answers_or_it_stops() -> TestResult {
    // Nothing listens on a port just freed.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let url = format!("grpc://127.0.0.1:{port}");
    let refused = sluice(&["--connect", &url, "-c", "SHOW STREAMS"])?;
    assert!(!refused.status.success());
    assert!(
        text(&refused.stderr).contains(&format!(
            "cannot connect to '{url}': connection refused; is `sluice serve` running at that address?"
        )),
        "{}",
        text(&refused.stderr)
    );

    // A server stopped (SIGTERM) or killed during a continuous query: an error, never a
    // quiet end that looks like a query with no more rows.
    for signal in ["-TERM", "-KILL"] {
        let dir = tempfile::tempdir()?;
        let server = Server::start(dir.path())?;
        let created = sluice(&[
            "--connect",
            &server.url,
            "--token",
            TOKEN,
            "-c",
            "CREATE STREAM s (k VARCHAR)",
            "-c",
            "INSERT INTO s VALUES ('a')",
        ])?;
        assert!(created.status.success(), "{}", text(&created.stderr));
        let watcher = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args([
                "--connect",
                &server.url,
                "--token",
                TOKEN,
                "--format",
                "csv",
            ])
            .args(["-c", "SELECT STREAM k FROM s"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        std::thread::sleep(std::time::Duration::from_secs(2));
        let stopped = Command::new("kill")
            .args([signal, &server.child.id().to_string()])
            .status()?;
        assert!(stopped.success());
        let watched = watcher.wait_with_output()?;
        let (out, err) = (text(&watched.stdout), text(&watched.stderr));
        assert_eq!(out, "k\na\n", "{err}");
        assert!(!watched.status.success(), "{signal}: {out} {err}");
        let expected = if signal == "-TERM" {
            "the Sluice server is shutting down; it ended this query".to_string()
        } else {
            format!("the connection to '{}' was lost", server.url)
        };
        assert!(err.contains(&expected), "{signal}: {err}");
        drop(server);
    }
    Ok(())
}

#[test]
fn adbc_and_pyarrow_flight_clients_work_unchanged() -> TestResult {
    let dir = tempfile::tempdir()?;
    let server = Server::start(dir.path())?;
    let script = common::e2e_script("flight_sql.py");
    let out = run_python(&script, &[&server.url, TOKEN])?;
    assert!(out.contains("all Flight SQL checks passed"));
    let status = server.terminate()?;
    assert!(status.success(), "{status:?}");
    Ok(())
}

#[test]
fn boto3_runs_the_kinesis_lifecycle_and_sql_reads_what_it_put() -> TestResult {
    let dir = tempfile::tempdir()?;
    let server = Server::start(dir.path())?;
    let script = common::e2e_script("kinesis_api.py");
    let out = run_python(&script, &[&server.kinesis])?;
    assert!(out.contains("all Kinesis API checks passed"));

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

#[test]
fn the_readme_aws_cli_lines_run_as_written() -> TestResult {
    // The README's shell block that drives aws-cli, with only the port changed.
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))?;
    let block = readme
        .split("```sh\n")
        .skip(1)
        .filter_map(|rest| rest.split_once("```").map(|(block, _)| block))
        .find(|block| block.contains("aws --endpoint-url"))
        .ok_or("the README has no aws-cli example")?;
    let dir = tempfile::tempdir()?;
    // As the README's user runs it: no credentials configured, so signatures are not checked
    // and any credentials are accepted.
    let server = Server::start_with(dir.path(), &[], &[])?;
    let script = block.replace("http://127.0.0.1:4567", &server.kinesis);
    let python = common::python::python();
    let bin = python.parent().ok_or("no venv bin folder")?;
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let work = tempfile::tempdir()?;
    let run = Command::new("bash")
        .args(["-euo", "pipefail", "-c", &script])
        .current_dir(work.path())
        .env("PATH", path)
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("AWS_DEFAULT_REGION")
        .env_remove("AWS_PROFILE")
        .env("AWS_CONFIG_FILE", work.path().join("no-config"))
        .env(
            "AWS_SHARED_CREDENTIALS_FILE",
            work.path().join("no-credentials"),
        )
        .output()?;
    assert!(
        run.status.success(),
        "the README's aws-cli lines failed:\n{script}\nstdout:\n{}\nstderr:\n{}",
        text(&run.stdout),
        text(&run.stderr)
    );
    assert!(
        text(&run.stdout).contains("SequenceNumber"),
        "{}",
        text(&run.stdout)
    );
    let read = sluice(&[
        "--connect",
        &server.url,
        "--token",
        TOKEN,
        "--format",
        "csv",
        "-c",
        "SELECT _partition_key, CAST(_data AS VARCHAR) AS data FROM events",
    ])?;
    assert_eq!(
        text(&read.stdout),
        "_partition_key,data\nuser-1,\"{\"\"user\"\":\"\"u1\"\",\"\"n\"\":1}\n\"\n",
        "{}",
        text(&read.stderr)
    );
    Ok(())
}

#[test]
fn a_kda_application_runs_fed_and_read_over_the_kinesis_api() -> TestResult {
    let dir = tempfile::tempdir()?;
    let server = Server::start(dir.path())?;
    let app = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/kda_ticker.sql");
    let setup = sluice(&["--connect", &server.url, "--token", TOKEN, "-f", app])?;
    assert!(setup.status.success(), "{}", text(&setup.stderr));
    assert!(text(&setup.stdout).contains("Pump 'STREAM_PUMP' created and running."));
    let out = run_python(&common::e2e_script("kda_app.py"), &[&server.kinesis])?;
    assert!(out.contains("the KDA application gave KDA's rows"));
    let status = server.terminate()?;
    assert!(status.success(), "{status:?}");
    Ok(())
}
