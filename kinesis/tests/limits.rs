//! The endpoint's guards, through its router: signatures verified against configured keys,
//! per-shard throughput limits with per-entry failures, and the same answers in CBOR as in JSON.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use sluice_auth::Authorizer;
use sluice_engine::{Engine, EngineOptions, ManualClock};
use sluice_kinesis::throttle::ShardLimits;
use sluice_kinesis::wire::Protocol;
use sluice_kinesis::{KinesisOptions, router};
use tower::ServiceExt;

type TestResult = Result<(), Box<dyn std::error::Error>>;

const UNSIGNED_AUTH: &str = "AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/kinesis/aws4_request, SignedHeaders=host, Signature=0";

fn engine(dir: &std::path::Path) -> sluice_engine::Result<Engine> {
    Engine::open(
        EngineOptions::new(dir)
            .with_clock(Arc::new(ManualClock::new(1_767_261_600_000)))
            .with_background(false),
    )
}

/// Sends one action in `protocol` and returns the status and the decoded answer.
async fn call(
    app: &axum::Router,
    protocol: Protocol,
    action: &str,
    body: Value,
    authorization: &str,
) -> Result<(StatusCode, Value), Box<dyn std::error::Error>> {
    let request = Request::post("/")
        .header("x-amz-target", format!("Kinesis_20131202.{action}"))
        .header("content-type", protocol.content_type())
        .header("authorization", authorization)
        .header("x-amz-date", "20260101T000000Z")
        .body(Body::from(protocol.encode(&body)))?;
    let response = app.clone().oneshot(request).await?;
    let status = response.status();
    let bytes = response.into_body().collect().await?.to_bytes();
    let value = protocol.decode(&bytes).map(Value::Object)?;
    Ok((status, value))
}

#[tokio::test]
async fn per_shard_limits_fail_only_the_entries_over_them() -> TestResult {
    let dir = tempfile::tempdir()?;
    let app = router(
        engine(dir.path())?,
        KinesisOptions {
            shard_limits: Some(ShardLimits::kinesis()),
            ..KinesisOptions::default()
        },
    );
    let json = Protocol::Json;
    call(
        &app,
        json,
        "CreateStream",
        json!({"StreamName": "s", "ShardCount": 1}),
        UNSIGNED_AUTH,
    )
    .await?;
    let records: Vec<Value> = (0..500)
        .map(|i| json!({"PartitionKey": format!("k{i}"), "Data": "eA=="}))
        .collect();
    let mut accepted = 0;
    let mut refused = 0;
    for _ in 0..3 {
        let (status, out) = call(
            &app,
            json,
            "PutRecords",
            json!({"StreamName": "s", "Records": records}),
            UNSIGNED_AUTH,
        )
        .await?;
        assert_eq!(status, StatusCode::OK);
        for entry in out["Records"].as_array().into_iter().flatten() {
            if entry.get("SequenceNumber").is_some() {
                accepted += 1;
            } else {
                assert_eq!(entry["ErrorCode"], "ProvisionedThroughputExceededException");
                assert!(entry["ErrorMessage"].as_str().is_some_and(|m| m.contains("Rate exceeded for shard shardId-000000000000")));
                refused += 1;
            }
        }
        assert_eq!(
            out["FailedRecordCount"].as_u64(),
            Some(out["Records"].as_array().map_or(0, |r| {
                r.iter().filter(|e| e.get("ErrorCode").is_some()).count() as u64
            }))
        );
    }
    // One second's allowance (and what refilled meanwhile) got in; the rest was refused.
    assert!((1000..1400).contains(&accepted), "{accepted} accepted");
    assert_eq!(accepted + refused, 1500);

    let (_, iterator) = call(&app, json, "GetShardIterator", json!({"StreamName": "s", "ShardId": "shardId-000000000000", "ShardIteratorType": "TRIM_HORIZON"}), UNSIGNED_AUTH).await?;
    let token = iterator["ShardIterator"].clone();
    let (_, first) = call(
        &app,
        json,
        "GetRecords",
        json!({"ShardIterator": token}),
        UNSIGNED_AUTH,
    )
    .await?;
    assert_eq!(
        first["Records"].as_array().map(Vec::len),
        Some(accepted),
        "everything accepted is there"
    );
    let mut statuses = Vec::new();
    // Small reads, so that five calls fit in the second the allowance of five is for.
    for _ in 0..5 {
        let (status, out) = call(
            &app,
            json,
            "GetRecords",
            json!({"ShardIterator": token, "Limit": 1}),
            UNSIGNED_AUTH,
        )
        .await?;
        statuses.push((status, out["__type"].as_str().map(str::to_string)));
    }
    assert_eq!(
        statuses.last(),
        Some(&(
            StatusCode::BAD_REQUEST,
            Some("ProvisionedThroughputExceededException".to_string())
        )),
        "{statuses:?}"
    );
    Ok(())
}

#[tokio::test]
async fn signatures_are_checked_when_keys_are_configured() -> TestResult {
    let dir = tempfile::tempdir()?;
    let app = router(
        engine(dir.path())?,
        KinesisOptions {
            auth: Authorizer::open().with_password("test", "secret"),
            ..KinesisOptions::default()
        },
    );
    // A signature of zeros from a known key fails the check (the date is checked first, so this
    // request, dated 2026-01-01, may be refused as expired; either way it is refused as a bad
    // signature).
    let (status, out) = call(
        &app,
        Protocol::Json,
        "ListStreams",
        json!({}),
        UNSIGNED_AUTH,
    )
    .await?;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(out["__type"], "InvalidSignatureException");
    let (_, out) = call(
        &app,
        Protocol::Json,
        "ListStreams",
        json!({}),
        &UNSIGNED_AUTH.replace("test/", "nobody/"),
    )
    .await?;
    assert_eq!(out["__type"], "UnrecognizedClientException");
    // Another scheme is an incomplete AWS signature, as AWS reads it.
    let (status, out) = call(&app, Protocol::Json, "ListStreams", json!({}), "Bearer x").await?;
    assert_eq!(
        (status, out["__type"].as_str()),
        (
            StatusCode::BAD_REQUEST,
            Some("IncompleteSignatureException")
        )
    );
    Ok(())
}

/// Replaces what legitimately differs between two runs (sequence numbers keep their shard but
/// the streams differ; arrival times and iterators are per call).
fn normalize(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| {
                    let v = match k.as_str() {
                        "ShardIterator" | "NextShardIterator" | "StreamARN" | "StreamName" => {
                            json!("…")
                        }
                        "ApproximateArrivalTimestamp" | "StreamCreationTimestamp" => json!(0),
                        _ => normalize(v),
                    };
                    (k.clone(), v)
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(normalize).collect()),
        other => other.clone(),
    }
}

#[tokio::test]
async fn cbor_requests_get_the_answers_json_requests_get() -> TestResult {
    let dir = tempfile::tempdir()?;
    let app = router(engine(dir.path())?, KinesisOptions::default());
    let mut answers: Vec<Vec<Value>> = Vec::new();
    for (protocol, name) in [(Protocol::Json, "viajson"), (Protocol::Cbor, "viacbor")] {
        let mut out = Vec::new();
        let mut run =
            async |action: &str, body: Value| -> Result<Value, Box<dyn std::error::Error>> {
                let (status, value) = call(&app, protocol, action, body, UNSIGNED_AUTH).await?;
                out.push(json!({"status": status.as_u16(), "body": normalize(&value)}));
                Ok(value)
            };
        run("CreateStream", json!({"StreamName": name, "ShardCount": 2})).await?;
        run("DescribeStreamSummary", json!({"StreamName": name})).await?;
        run(
            "PutRecord",
            json!({"StreamName": name, "PartitionKey": "a", "Data": "aGVsbG8="}),
        )
        .await?;
        run(
            "PutRecords",
            json!({"StreamName": name, "Records": [
                {"PartitionKey": "b", "Data": "d29ybGQ="},
                {"PartitionKey": "c", "Data": ""},
            ]}),
        )
        .await?;
        run("ListShards", json!({"StreamName": name})).await?;
        let shard = run("GetShardIterator", json!({"StreamName": name, "ShardId": "shardId-000000000001", "ShardIteratorType": "AT_TIMESTAMP", "Timestamp": 1_767_261_000.5})).await?;
        run(
            "GetRecords",
            json!({"ShardIterator": shard["ShardIterator"]}),
        )
        .await?;
        run("SplitShard", json!({"StreamName": name, "ShardToSplit": "shardId-000000000000", "NewStartingHashKey": "1000"})).await?;
        run(
            "ListShards",
            json!({"StreamName": name, "ShardFilter": {"Type": "AT_LATEST"}}),
        )
        .await?;
        run("DescribeStream", json!({"StreamName": "missing"})).await?;
        run(
            "PutRecord",
            json!({"StreamName": name, "PartitionKey": "", "Data": "eA=="}),
        )
        .await?;
        answers.push(out);
    }
    assert_eq!(answers[0].len(), answers[1].len());
    for (via_json, via_cbor) in answers[0].iter().zip(&answers[1]) {
        assert_eq!(via_json, via_cbor);
    }
    Ok(())
}
