//! Firehose over the wire against `sluice serve`, as Firehose users drive it: boto3's
//! `firehose` and `glue` clients (`tests/e2e/firehose.py`) create delivery streams into a bucket
//! on an S3-compatible server (`s3s-fs`, in this process, on 127.0.0.1), put records directly
//! and through a Kinesis stream (some KPL-aggregated), and read the objects back with DuckDB.
//! The delivery streams are the SQL's: `SHOW DELIVERY STREAMS` lists those made over the API,
//! and `ListDeliveryStreams` the one made in SQL. Then the server is killed with `kill -9` while
//! a delivery stream still buffers acknowledged records, and they are delivered after the
//! restart.

mod common;
#[path = "../../tests/support/s3_server.rs"]
mod s3_server;

use std::net::SocketAddr;
use std::path::Path;

type TestResult = Result<(), Box<dyn std::error::Error>>;

const KEY: &str = "lake-key";
const SECRET: &str = "lake-secret";

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

fn sql(flight: &str, text: &str) -> Result<String, String> {
    common::server::sql(env!("CARGO_BIN_EXE_sluice").as_ref(), flight, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn firehose_api_delivers_direct_puts_and_streams_and_survives_kill_9() -> TestResult {
    let dir = tempfile::tempdir()?;
    let root = dir.path().join("s3");
    std::fs::create_dir_all(root.join("lake"))?;
    let (s3, s3_addr) = s3_server::serve(&root, "127.0.0.1:0".parse()?, (KEY, SECRET)).await?;
    let data = dir.path().join("data");
    let bucket = root.join("lake").display().to_string();

    let (server, flight, kinesis) = serve(&data, s3_addr)?;
    sql(
        &flight,
        "CREATE STREAM orders (id INT) WITH (format = 'json');
         CREATE DELIVERY STREAM from_sql FROM orders WITH (destination = 's3://lake/sql/')",
    )?;
    let args = vec!["first".to_string(), kinesis.clone(), bucket.clone()];
    let out =
        tokio::task::spawn_blocking(move || common::server::python_script("firehose.py", &args))
            .await??;
    assert!(out.contains("first: ok"), "{out}");
    let shown = sql(&flight, "SHOW DELIVERY STREAMS")?;
    for name in ["events", "clicks-by-customer", "durable", "from_sql"] {
        assert!(shown.contains(name), "{name} not in {shown}");
    }
    assert!(!shown.contains("trades"), "deleted over the API: {shown}");
    // SQL sees the KPL aggregate put into `clicks` as its three user records (3 + 3 rows).
    let clicks = sql(
        &flight,
        "SELECT count(*) AS n, count(DISTINCT _partition_key) FILTER (WHERE _partition_key LIKE 'user-%') AS users FROM clicks",
    )?;
    assert!(clicks.contains('6') && clicks.contains('3'), "{clicks}");
    // Each user record has its own sub-sequence number, as the KCL numbers them.
    let subs = sql(
        &flight,
        "SELECT string_agg(_partition_key || ':' || CAST(_sub_sequence_number AS VARCHAR), ',' ORDER BY _sub_sequence_number) AS subs FROM clicks WHERE _sub_sequence_number IS NOT NULL",
    )?;
    assert!(subs.contains("user-0:0,user-1:1,user-2:2"), "{subs}");
    // A direct-put delivery stream's records are a stream SQL can read.
    let counted = sql(&flight, "SELECT count(*) AS n FROM firehose.durable")?;
    assert!(counted.contains("100"), "{counted}");

    // A crash (SIGKILL) while `durable` buffers 100 acknowledged records for 900 s.
    drop(server);
    let (server, _flight, kinesis) = serve(&data, s3_addr)?;
    let args = vec!["second".to_string(), kinesis, bucket];
    let out =
        tokio::task::spawn_blocking(move || common::server::python_script("firehose.py", &args))
            .await??;
    assert!(out.contains("second: ok"), "{out}");
    drop(server);
    s3.abort();
    Ok(())
}
