//! End-to-end tests of the `sluice` binary: scripts with `-c` and `-f`, output formats, errors,
//! the interactive loop on piped input, and records surviving from one process to the next.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn sluice(data_dir: &Path, args: &[&str]) -> std::io::Result<Output> {
    Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .output()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

const CREATE: &str = "CREATE STREAM ticker (symbol VARCHAR, sector VARCHAR, change DOUBLE, price DOUBLE, ts TIMESTAMP) \
    WITH (shards = 4, format = 'json', partition_key = 'symbol', retention = '24 hours');";
const INSERT: &str = "INSERT INTO ticker VALUES ('AMZN', 'TECH', 1.5, 130.2, '2026-01-01 10:00:01'), \
    ('MSFT', 'TECH', -0.5, 410.5, '2026-01-01 10:00:02'), ('AMZN', 'TECH', 0.7, 130.9, '2026-01-01 10:00:03');";

#[test]
fn records_survive_from_one_process_to_the_next() -> TestResult {
    let dir = tempfile::tempdir()?;
    let first = sluice(dir.path(), &["-c", CREATE, "-c", INSERT])?;
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert!(stdout(&first).contains("Stream 'ticker' created with 4 shards."));

    let second = sluice(
        dir.path(),
        &[
            "--format",
            "csv",
            "-c",
            "SELECT symbol, count(*) AS n, max(price) AS top FROM ticker GROUP BY symbol ORDER BY symbol",
        ],
    )?;
    assert!(
        second.status.success(),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    assert_eq!(
        stdout(&second),
        "symbol,n,top\nAMZN,2,130.9\nMSFT,1,410.5\n"
    );
    Ok(())
}

#[test]
fn table_output_ends_with_a_row_count_and_timing() -> TestResult {
    let dir = tempfile::tempdir()?;
    let output = sluice(
        dir.path(),
        &["-c", CREATE, "-c", INSERT, "-c", "SHOW STREAMS"],
    )?;
    let text = stdout(&output);
    assert!(
        text.contains("| ticker       | json   | 4      | symbol"),
        "{text}"
    );
    assert!(text.contains("2 rows in set ("), "{text}");
    let quiet = sluice(dir.path(), &["-q", "-c", "SELECT 1"])?;
    assert!(!stdout(&quiet).contains("in set"));
    Ok(())
}

#[test]
fn json_and_ndjson_outputs_parse() -> TestResult {
    let dir = tempfile::tempdir()?;
    sluice(dir.path(), &["-c", CREATE, "-c", INSERT])?;
    let query = "SELECT symbol, price FROM ticker WHERE symbol = 'MSFT'";
    let json = sluice(dir.path(), &["--format", "json", "-c", query])?;
    assert_eq!(stdout(&json).trim(), r#"[{"symbol":"MSFT","price":410.5}]"#);
    let ndjson = sluice(dir.path(), &["--format", "ndjson", "-c", query])?;
    assert_eq!(stdout(&ndjson).trim(), r#"{"symbol":"MSFT","price":410.5}"#);
    Ok(())
}

#[test]
fn a_script_file_runs_in_order_and_stops_at_the_first_error() -> TestResult {
    let dir = tempfile::tempdir()?;
    let script = dir.path().join("setup.sql");
    std::fs::write(
        &script,
        format!("{CREATE}\n{INSERT}\nSELECT nope FROM ticker;\nDROP STREAM ticker;\n"),
    )?;
    let output = sluice(
        &dir.path().join("data"),
        &["-f", script.to_str().unwrap_or_default()],
    )?;
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("nope"), "{stderr}");
    // The DROP after the error did not run.
    let check = sluice(
        &dir.path().join("data"),
        &["--format", "csv", "-c", "SELECT count(*) AS n FROM ticker"],
    )?;
    assert_eq!(stdout(&check), "n\n3\n");
    Ok(())
}

#[test]
fn the_interactive_loop_reads_statements_across_lines() -> TestResult {
    let dir = tempfile::tempdir()?;
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("--data-dir")
        .arg(dir.path())
        .env("HOME", dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        writeln!(stdin, "CREATE STREAM s (n BIGINT)\n  WITH (shards = 2);")?;
        writeln!(
            stdin,
            "INSERT INTO s (_partition_key, n)\nVALUES ('k', 41), ('k', 42);"
        )?;
        writeln!(stdin, "SELECT nope FROM s;")?;
        writeln!(stdin, "\\pset format csv")?;
        writeln!(stdin, "SELECT max(n) AS top FROM s;")?;
        writeln!(stdin, "\\q")?;
    }
    let output = child.wait_with_output()?;
    let text = stdout(&output);
    assert!(output.status.success());
    assert!(text.contains("Stream 's' created with 2 shards."), "{text}");
    assert!(text.contains("top\n42\n"), "{text}");
    // An error is reported and the loop goes on.
    assert!(String::from_utf8_lossy(&output.stderr).contains("No field named nope"));
    Ok(())
}

#[test]
fn a_continuous_query_that_waits_says_what_for() -> TestResult {
    let dir = tempfile::tempdir()?;
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("--data-dir")
        .arg(dir.path())
        .env("HOME", dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let Some(mut stdin) = child.stdin.take() else {
        return Err("no stdin".into());
    };
    // Event times a year old: the window [10:00, 10:01) waits for a record past 10:01:05.
    writeln!(
        stdin,
        "CREATE STREAM taps (k VARCHAR, ts TIMESTAMP, WATERMARK FOR ts AS ts - INTERVAL '5' SECOND);"
    )?;
    writeln!(
        stdin,
        "INSERT INTO taps VALUES ('a', '2025-12-04 10:00:30'), ('b', '2025-12-04 10:00:50');"
    )?;
    writeln!(
        stdin,
        "SELECT STREAM window_start, count(*) AS n FROM tumble(taps, ts, INTERVAL '1' MINUTE) GROUP BY window_start;"
    )?;
    stdin.flush()?;
    std::thread::sleep(std::time::Duration::from_secs(5));
    // Ctrl-C stops the query and the prompt reads on.
    let interrupted = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()?;
    assert!(interrupted.success());
    writeln!(stdin, "SELECT _data FROM taps LIMIT 1;")?;
    writeln!(stdin, "\\q")?;
    drop(stdin);
    let output = child.wait_with_output()?;
    let (out, err) = (stdout(&output), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "{err}");
    assert!(
        out.starts_with(&format!(
            "Sluice {} on the data folder {}",
            env!("CARGO_PKG_VERSION"),
            dir.path().display()
        )),
        "{out}"
    );
    assert!(
        err.contains(
            "(waiting: 2 records read, watermark 2025-12-04 10:00:45.000; the first window's rows come out once the watermark passes 2025-12-04 10:01:00.000"
        ),
        "{err}"
    );
    assert!(err.contains("statement cancelled"), "{err}");
    // A record's data shows abbreviated in a table.
    assert!(
        out.contains("{\"k\":\"a\",\"ts\":\"2025-12-04T10:00… (36 bytes)"),
        "{out}"
    );
    Ok(())
}

#[test]
fn a_second_process_on_the_same_folder_is_refused() -> TestResult {
    let dir = tempfile::tempdir()?;
    let mut holder = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("--data-dir")
        .arg(dir.path())
        .env("HOME", dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    // The banner is printed once the engine holds the folder.
    let mut banner = String::new();
    if let Some(out) = holder.stdout.as_mut() {
        std::io::BufRead::read_line(&mut std::io::BufReader::new(out), &mut banner)?;
    }
    assert!(banner.starts_with("Sluice"), "{banner}");
    let output = sluice(dir.path(), &["-c", "SELECT 1"])?;
    let refused =
        (!output.status.success()).then(|| String::from_utf8_lossy(&output.stderr).into_owned());
    drop(holder.stdin.take());
    holder.wait()?;
    assert!(
        refused
            .unwrap_or_default()
            .contains("in use by another Sluice process")
    );
    Ok(())
}

#[test]
fn a_pump_keeps_working_from_one_process_to_the_next() -> TestResult {
    let dir = tempfile::tempdir()?;
    let setup = sluice(
        dir.path(),
        &[
            "-c",
            "CREATE STREAM raw_events (kind VARCHAR, n BIGINT) WITH (shards = 2, partition_key = 'kind')",
            "-c",
            "CREATE STREAM big (kind VARCHAR, n BIGINT) WITH (shards = 1)",
            "-c",
            "CREATE PUMP only_big AS INSERT INTO big SELECT STREAM kind, n FROM raw_events WHERE n >= 100",
        ],
    )?;
    assert!(
        setup.status.success(),
        "{}",
        String::from_utf8_lossy(&setup.stderr)
    );
    let feed = sluice(
        dir.path(),
        &[
            "-c",
            "INSERT INTO raw_events VALUES ('a', 5), ('b', 500), ('c', 100)",
            "-c",
            "FLUSH",
        ],
    )?;
    assert!(
        feed.status.success(),
        "{}",
        String::from_utf8_lossy(&feed.stderr)
    );
    let check = sluice(
        dir.path(),
        &[
            "--format",
            "csv",
            "-c",
            "SELECT kind, n FROM big ORDER BY n",
        ],
    )?;
    assert_eq!(stdout(&check), "kind,n\nc,100\nb,500\n");
    Ok(())
}

#[test]
fn sluice_demo_shows_rows_of_a_continuous_query_at_once() -> TestResult {
    let dir = tempfile::tempdir()?;
    let started = std::time::Instant::now();
    let run = sluice(
        dir.path(),
        &[
            "--format",
            "csv",
            "-c",
            "SELECT STREAM ticker_symbol, sector, price FROM demo_ticker LIMIT 3",
            "demo",
        ],
    )?;
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{err}");
    let out = stdout(&run);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.first(), Some(&"ticker_symbol,sector,price"), "{out}");
    assert_eq!(lines.len(), 4, "{out}");
    for line in &lines[1..] {
        let fields: Vec<&str> = line.split(',').collect();
        assert_eq!(fields.len(), 3, "{line}");
        assert!(
            [
                "TECHNOLOGY",
                "HEALTHCARE",
                "RETAIL",
                "FINANCIAL",
                "ENERGY",
                "AUTOMOBILE"
            ]
            .contains(&fields[1]),
            "{line}"
        );
        assert!(fields[2].parse::<f64>().is_ok_and(|p| p > 0.0), "{line}");
    }
    // Five records a second: three rows take well under the minute a newcomer gives it.
    assert!(started.elapsed() < std::time::Duration::from_secs(30));

    // The stream stays, and `sluice demo` on the same folder carries on with it.
    let again = sluice(
        dir.path(),
        &[
            "--format",
            "csv",
            "-c",
            "SELECT STREAM ticker_symbol FROM demo_ticker LIMIT 5",
            "-c",
            "SELECT count(*) >= 5 AS fed FROM demo_ticker",
            "demo",
        ],
    )?;
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert!(
        stdout(&again).ends_with("fed\ntrue\n"),
        "{}",
        stdout(&again)
    );
    Ok(())
}

#[test]
fn help_points_a_newcomer_to_the_demo() -> TestResult {
    let dir = tempfile::tempdir()?;
    let help = sluice(dir.path(), &["--help"])?;
    assert!(stdout(&help).contains("sluice demo"), "{}", stdout(&help));
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("--data-dir")
        .arg(dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .ok_or("stdin")?
        .write_all(b"\\?\n\\q\n")?;
    let shown = child.wait_with_output()?;
    let text = stdout(&shown);
    for wanted in [
        "sluice demo",
        "SHOW SHARDS",
        "CREATE PUMP",
        "CREATE DELIVERY STREAM",
        "--connect",
        "tumble(",
    ] {
        assert!(
            text.contains(wanted),
            "\\? does not mention {wanted}: {text}"
        );
    }
    Ok(())
}

#[test]
fn the_readme_example_script_runs_as_shipped() -> TestResult {
    let dir = tempfile::tempdir()?;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/ticker.sql");
    let run = sluice(
        dir.path(),
        &["--format", "csv", "-q", "-f", &script.display().to_string()],
    )?;
    let out = stdout(&run);
    assert!(
        run.status.success(),
        "{out}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(
        out.contains("symbol,trades,avg_price\nAMZN,2,130.55\nMSFT,2,411.5\nXOM,1,112.3\n"),
        "{out}"
    );
    assert!(
        out.ends_with(
            "window_start,sector,trades,avg_price\n\
             2026-01-01T10:00:00,TECHNOLOGY,3,223.86666666666667\n\
             2026-01-01T10:01:00,ENERGY,1,112.3\n"
        ),
        "{out}"
    );
    Ok(())
}
