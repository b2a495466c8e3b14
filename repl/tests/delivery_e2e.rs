//! Delivery streams end to end with real readers: the `sluice` binary writes objects in every
//! format and compression to a folder, then pyarrow and DuckDB (pinned in `tests/e2e/requirements.txt`,
//! installed by the tests themselves) read them back and compare them row for row with what went in
//! (`tests/e2e/read_delivery.py`).

mod common;

use std::process::Command;

type TestResult = Result<(), Box<dyn std::error::Error>>;

#[test]
fn objects_in_every_format_read_back_with_pyarrow_and_duckdb() -> TestResult {
    let dir = tempfile::tempdir()?;
    let lake = dir.path().join("lake");
    let rows = [
        (
            1,
            Some("Zoë"),
            Some(1.5),
            Some(true),
            Some("2026-01-01 10:00:01"),
        ),
        (
            2,
            Some("comma, \"quoted\""),
            Some(-0.25),
            Some(false),
            Some("2026-01-01 10:00:02"),
        ),
        (3, None, None, None, None),
        (
            4,
            Some("plain"),
            Some(1e10),
            Some(true),
            Some("2026-03-04 05:06:07"),
        ),
    ];
    let values: Vec<String> = rows
        .iter()
        .map(|(id, name, price, ok, ts)| {
            let text = |v: Option<&str>| {
                v.map_or("NULL".to_string(), |s| {
                    format!("'{}'", s.replace('\'', "''"))
                })
            };
            format!(
                "({id}, {}, {}, {}, {})",
                text(*name),
                price.map_or("NULL".to_string(), |p| p.to_string()),
                ok.map_or("NULL".to_string(), |b| b.to_string()),
                text(*ts)
            )
        })
        .collect();
    let mut args = vec![
        "-c".to_string(),
        "CREATE STREAM items (id BIGINT, name VARCHAR, price DOUBLE, ok BOOLEAN, ts TIMESTAMP) WITH (shards = 3)".to_string(),
    ];
    for (format, codecs) in [
        ("parquet", &["snappy", "zstd", "gzip", "none"][..]),
        ("json", &["gzip", "zstd", "none"][..]),
        ("csv", &["gzip", "zstd", "none"][..]),
    ] {
        for codec in codecs {
            args.push("-c".into());
            args.push(format!(
                "CREATE DELIVERY STREAM d_{format}_{codec} FROM items WITH (destination = '{}', format = '{format}', compression = '{codec}', buffer_interval_seconds = 0)",
                lake.join(format!("{format}-{codec}")).display()
            ));
        }
    }
    args.push("-c".into());
    args.push(format!("INSERT INTO items VALUES {}", values.join(", ")));
    args.push("-c".into());
    args.push("FLUSH".into());
    let output = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(&args)
        .output()?;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    let expected: Vec<serde_json::Value> = rows
        .iter()
        .map(|(id, name, price, ok, ts)| {
            serde_json::json!({"id": id, "name": name, "price": price, "ok": ok,
                "ts": ts.map(|t| t.replace(' ', "T"))})
        })
        .collect();
    let expected_path = dir.path().join("expected.json");
    std::fs::write(&expected_path, serde_json::to_string(&expected)?)?;
    let script = common::e2e_script("read_delivery.py");
    let check = Command::new(common::python::python())
        .arg(script)
        .arg(&lake)
        .arg(&expected_path)
        .output()?;
    assert!(
        check.status.success(),
        "{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    let report = String::from_utf8_lossy(&check.stdout);
    assert_eq!(
        report.lines().filter(|l| l.starts_with("ok ")).count(),
        10,
        "{report}"
    );
    Ok(())
}
