//! Enhanced fan-out against `sluice serve`, with the clients people consume with: boto3's
//! `subscribe_to_shard` over HTTP/1.1 (`tests/e2e/fanout.py`: consumers, records pushed as they
//! are put, one subscription per consumer and shard, resuming after the continuation number,
//! LATEST, a split seen as `ChildShards`) and the AWS SDK for JavaScript v3 over HTTP/2
//! (`tests/e2e/fanout.cjs`, from npm into a folder beside the tests' Python).

mod common;

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// No S3 is used: the server's object store points at a closed loopback port.
const NO_S3: &str = "127.0.0.1:9";

fn serve(
    data: &std::path::Path,
) -> Result<(common::server::Server, String), Box<dyn std::error::Error>> {
    let (server, _flight, kinesis) = common::server::serve(
        env!("CARGO_BIN_EXE_sluice").as_ref(),
        data,
        NO_S3.parse()?,
        ("test", "test"),
    )?;
    Ok((server, kinesis))
}

#[test]
fn boto3_subscribes_to_shards_and_receives_records_as_they_are_put() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (_server, kinesis) = serve(&dir.path().join("data"))?;
    let out = common::server::python_script("fanout.py", &[kinesis])?;
    assert!(out.contains("fanout: ok"), "{out}");
    Ok(())
}

#[test]
fn the_javascript_sdk_subscribes_over_http2() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (_server, kinesis) = serve(&dir.path().join("data"))?;
    let out = common::node::script("fanout.cjs", &[kinesis])?;
    assert!(out.contains("fanout.cjs: ok"), "{out}");
    Ok(())
}
