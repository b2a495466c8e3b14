//! Stream modes and the rest of Kinesis's stream API, through the router: an ON_DEMAND stream
//! (four shards, scaled up as its write rate grows), UpdateStreamMode, DescribeLimits, enhanced
//! monitoring, encryption recorded and reported, resource policies, and StreamSummaries.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use sluice_engine::{Engine, EngineOptions, ManualClock};
use sluice_kinesis::{KinesisOptions, router};
use tower::ServiceExt;

type TestResult = Result<(), Box<dyn std::error::Error>>;

const AUTH: &str = "AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/kinesis/aws4_request, SignedHeaders=host, Signature=0";
const ARN: &str = "arn:aws:kinesis:us-east-1:000000000000:stream/";

async fn call(
    app: &axum::Router,
    action: &str,
    body: Value,
) -> Result<(StatusCode, Value), Box<dyn std::error::Error>> {
    let request = Request::post("/")
        .header("x-amz-target", format!("Kinesis_20131202.{action}"))
        .header("content-type", "application/x-amz-json-1.1")
        .header("authorization", AUTH)
        .header("x-amz-date", "20260101T000000Z")
        .body(Body::from(body.to_string()))?;
    let response = app.clone().oneshot(request).await?;
    let status = response.status();
    let bytes = response.into_body().collect().await?.to_bytes();
    let value = if bytes.is_empty() {
        json!({})
    } else {
        serde_json::from_slice(&bytes)?
    };
    Ok((status, value))
}

async fn ok(
    app: &axum::Router,
    action: &str,
    body: Value,
) -> Result<Value, Box<dyn std::error::Error>> {
    let (status, value) = call(app, action, body).await?;
    assert_eq!(status, StatusCode::OK, "{action}: {value}");
    Ok(value)
}

fn app(dir: &std::path::Path) -> Result<axum::Router, Box<dyn std::error::Error>> {
    let engine = Engine::open(
        EngineOptions::new(dir)
            .with_clock(Arc::new(ManualClock::new(1_767_261_600_000)))
            .with_background(false),
    )?;
    Ok(router(engine, KinesisOptions::default()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_demand_streams_start_with_four_shards_and_grow_with_their_writes() -> TestResult {
    let dir = tempfile::tempdir()?;
    let app = app(dir.path())?;
    ok(
        &app,
        "CreateStream",
        json!({"StreamName": "auto", "StreamModeDetails": {"StreamMode": "ON_DEMAND"}}),
    )
    .await?;
    let summary = ok(&app, "DescribeStreamSummary", json!({"StreamName": "auto"})).await?;
    let summary = &summary["StreamDescriptionSummary"];
    assert_eq!(summary["StreamModeDetails"]["StreamMode"], "ON_DEMAND");
    assert_eq!(summary["OpenShardCount"], 4);
    let limits = ok(&app, "DescribeLimits", json!({})).await?;
    assert_eq!(limits["OnDemandStreamCount"], 1);
    assert_eq!(limits["OnDemandStreamCountLimit"], 50);
    assert_eq!(
        limits["OpenShardCount"].as_u64().map(|n| n >= 4),
        Some(true)
    );

    // 4 shards take 4,000 records a second; on-demand keeps twice the peak write rate, so a rate
    // over 2,000 records a second needs more than 4 (a step at most doubles: to at most 8).
    let records: Vec<Value> = (0..500)
        .map(|i| json!({"PartitionKey": format!("k{i}"), "Data": "eA=="}))
        .collect();
    let started = std::time::Instant::now();
    for _ in 0..10 {
        ok(
            &app,
            "PutRecords",
            json!({"StreamName": "auto", "Records": records}),
        )
        .await?;
    }
    assert!(
        started.elapsed().as_secs_f64() < 2.0,
        "the writes were too slow to need more shards"
    );
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    ok(
        &app,
        "PutRecords",
        json!({"StreamName": "auto", "Records": records}),
    )
    .await?;
    let mut open = 0;
    for _ in 0..100 {
        let summary = ok(&app, "DescribeStreamSummary", json!({"StreamName": "auto"})).await?;
        open = summary["StreamDescriptionSummary"]["OpenShardCount"]
            .as_u64()
            .unwrap_or(0);
        if open > 4 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(
        (5..=8).contains(&open),
        "{open} open shards: the stream did not scale up by at most double"
    );

    // Back to PROVISIONED: listed as such, and no longer scaled.
    ok(&app, "UpdateStreamMode", json!({"StreamARN": format!("{ARN}auto"), "StreamModeDetails": {"StreamMode": "PROVISIONED"}})).await?;
    let listed = ok(&app, "ListStreams", json!({})).await?;
    let auto = listed["StreamSummaries"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["StreamName"] == "auto"))
        .cloned();
    assert_eq!(
        auto.map(|s| s["StreamModeDetails"]["StreamMode"].clone()),
        Some(json!("PROVISIONED"))
    );
    let (status, error) = call(&app, "UpdateStreamMode", json!({"StreamARN": format!("{ARN}auto"), "StreamModeDetails": {"StreamMode": "SOMETIMES"}})).await?;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        error["message"],
        "1 validation error detected: Value 'SOMETIMES' at 'streamModeDetails.streamMode' failed to satisfy constraint: Member must satisfy enum value set: [ON_DEMAND, PROVISIONED]"
    );
    Ok(())
}

#[tokio::test]
async fn monitoring_encryption_and_policies_are_recorded_and_reported() -> TestResult {
    let dir = tempfile::tempdir()?;
    let app = app(dir.path())?;
    ok(
        &app,
        "CreateStream",
        json!({"StreamName": "s", "ShardCount": 1}),
    )
    .await?;

    let enabled = ok(&app, "EnableEnhancedMonitoring", json!({"StreamName": "s", "ShardLevelMetrics": ["IncomingBytes", "IteratorAgeMilliseconds"]})).await?;
    assert_eq!(enabled["CurrentShardLevelMetrics"], json!([]));
    assert_eq!(
        enabled["DesiredShardLevelMetrics"],
        json!(["IncomingBytes", "IteratorAgeMilliseconds"])
    );
    let disabled = ok(
        &app,
        "DisableEnhancedMonitoring",
        json!({"StreamName": "s", "ShardLevelMetrics": ["IncomingBytes"]}),
    )
    .await?;
    assert_eq!(
        disabled["DesiredShardLevelMetrics"],
        json!(["IteratorAgeMilliseconds"])
    );
    let (_, error) = call(
        &app,
        "EnableEnhancedMonitoring",
        json!({"StreamName": "s", "ShardLevelMetrics": ["Bytes"]}),
    )
    .await?;
    assert_eq!(error["__type"], "ValidationException");

    ok(
        &app,
        "StartStreamEncryption",
        json!({"StreamName": "s", "EncryptionType": "KMS", "KeyId": "alias/aws/kinesis"}),
    )
    .await?;
    let described = ok(&app, "DescribeStream", json!({"StreamName": "s"})).await?;
    let description = &described["StreamDescription"];
    assert_eq!(description["EncryptionType"], "KMS");
    assert_eq!(description["KeyId"], "alias/aws/kinesis");
    assert_eq!(
        description["EnhancedMonitoring"],
        json!([{"ShardLevelMetrics": ["IteratorAgeMilliseconds"]}])
    );
    let put = ok(
        &app,
        "PutRecord",
        json!({"StreamName": "s", "PartitionKey": "k", "Data": "eA=="}),
    )
    .await?;
    assert_eq!(put["EncryptionType"], "KMS");
    ok(
        &app,
        "StopStreamEncryption",
        json!({"StreamName": "s", "EncryptionType": "KMS", "KeyId": "alias/aws/kinesis"}),
    )
    .await?;
    let put = ok(
        &app,
        "PutRecord",
        json!({"StreamName": "s", "PartitionKey": "k", "Data": "eA=="}),
    )
    .await?;
    assert_eq!(put["EncryptionType"], "NONE");

    let policy = r#"{"Version":"2012-10-17","Statement":[]}"#;
    ok(
        &app,
        "PutResourcePolicy",
        json!({"ResourceARN": format!("{ARN}s"), "Policy": policy}),
    )
    .await?;
    let got = ok(
        &app,
        "GetResourcePolicy",
        json!({"ResourceARN": format!("{ARN}s")}),
    )
    .await?;
    assert_eq!(got["Policy"], policy);
    ok(
        &app,
        "DeleteResourcePolicy",
        json!({"ResourceARN": format!("{ARN}s")}),
    )
    .await?;
    let got = ok(
        &app,
        "GetResourcePolicy",
        json!({"ResourceARN": format!("{ARN}s")}),
    )
    .await?;
    assert_eq!(got["Policy"], "{}");
    let (status, error) = call(
        &app,
        "GetResourcePolicy",
        json!({"ResourceARN": format!("{ARN}missing")}),
    )
    .await?;
    assert_eq!(
        (status, error["__type"].as_str()),
        (StatusCode::BAD_REQUEST, Some("ResourceNotFoundException"))
    );
    let (_, error) = call(
        &app,
        "PutResourcePolicy",
        json!({"ResourceARN": format!("{ARN}s"), "Policy": "not json"}),
    )
    .await?;
    assert_eq!(error["__type"], "InvalidArgumentException");
    Ok(())
}
