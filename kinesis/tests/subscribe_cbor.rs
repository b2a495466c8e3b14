//! SubscribeToShard in CBOR, as the AWS SDK for Java (and so the KCL) calls it by default:
//! events whose payload is CBOR, records' `Data` as byte strings and arrival times in epoch
//! milliseconds, the same records a JSON subscriber gets.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use ciborium::Value as Cbor;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use sluice_auth::Authorizer;
use sluice_engine::{Engine, EngineOptions, ManualClock};
use sluice_kinesis::eventstream::{Message, decode};
use sluice_kinesis::wire::Protocol;
use sluice_kinesis::{KinesisOptions, router};
use tower::ServiceExt;

type TestResult = Result<(), Box<dyn std::error::Error>>;

const AUTH: &str = "AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/kinesis/aws4_request, SignedHeaders=host, Signature=0";
const NOW: i64 = 1_767_261_600_000;

async fn call(
    app: &axum::Router,
    protocol: Protocol,
    action: &str,
    body: &Value,
) -> Result<axum::response::Response, Box<dyn std::error::Error>> {
    let request = Request::post("/")
        .header("x-amz-target", format!("Kinesis_20131202.{action}"))
        .header("content-type", protocol.content_type())
        .header("authorization", AUTH)
        .header("x-amz-date", "20260101T000000Z")
        .body(Body::from(protocol.encode(body)))?;
    Ok(app.clone().oneshot(request).await?)
}

/// The first `n` event-stream messages of a streaming answer.
async fn messages(
    response: axum::response::Response,
    n: usize,
) -> Result<Vec<Message>, Box<dyn std::error::Error>> {
    let mut body = response.into_body();
    let mut buffer = Vec::new();
    let mut out = Vec::new();
    while out.len() < n {
        let frame = tokio::time::timeout(std::time::Duration::from_secs(10), body.frame())
            .await?
            .ok_or("the event stream ended")??;
        if let Ok(data) = frame.into_data() {
            buffer.extend_from_slice(&data);
        }
        while let Some((message, used)) = decode(&buffer)? {
            buffer.drain(..used);
            out.push(message);
        }
    }
    Ok(out)
}

fn field<'a>(map: &'a Cbor, name: &str) -> Option<&'a Cbor> {
    map.as_map()?
        .iter()
        .find(|(k, _)| k.as_text() == Some(name))
        .map(|(_, v)| v)
}

#[tokio::test]
async fn a_cbor_subscriber_gets_byte_strings_and_millisecond_times() -> TestResult {
    let dir = tempfile::tempdir()?;
    let clock = Arc::new(ManualClock::new(NOW));
    let engine = Engine::open(
        EngineOptions::new(dir.path())
            .with_clock(clock.clone())
            .with_background(false),
    )?;
    let app = router(
        engine,
        KinesisOptions {
            auth: Authorizer::open(),
            ..KinesisOptions::default()
        },
    );
    let json = Protocol::Json;
    let created = call(
        &app,
        json,
        "CreateStream",
        &json!({"StreamName": "s", "ShardCount": 1}),
    )
    .await?;
    assert_eq!(created.status(), StatusCode::OK);
    // Bytes that are not text, put over JSON as base64.
    let data = [0u8, 1, 2, 255, b'{'];
    let put = call(
        &app,
        json,
        "PutRecord",
        &json!({"StreamName": "s", "PartitionKey": "k", "Data": "AAEC/3s="}),
    )
    .await?;
    assert_eq!(put.status(), StatusCode::OK);
    let registered = call(
        &app,
        json,
        "RegisterStreamConsumer",
        &json!({"StreamARN": "arn:aws:kinesis:us-east-1:000000000000:stream/s", "ConsumerName": "java"}),
    )
    .await?;
    let registered: Value =
        serde_json::from_slice(&registered.into_body().collect().await?.to_bytes())?;
    let consumer = registered["Consumer"]["ConsumerARN"]
        .as_str()
        .ok_or("no ConsumerARN")?
        .to_string();
    clock.advance(1_000);

    let cbor = Protocol::Cbor;
    let response = call(
        &app,
        cbor,
        "SubscribeToShard",
        &json!({
            "ConsumerARN": consumer,
            "ShardId": "shardId-000000000000",
            "StartingPosition": {"Type": "TRIM_HORIZON"},
        }),
    )
    .await?;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["content-type"],
        "application/vnd.amazon.eventstream"
    );
    let got = messages(response, 2).await?;
    assert_eq!(got[0].header(":event-type"), Some("initial-response"));
    let event = &got[1];
    assert_eq!(event.header(":event-type"), Some("SubscribeToShardEvent"));
    assert_eq!(
        event.header(":content-type"),
        Some("application/x-amz-cbor-1.1")
    );
    let payload: Cbor = ciborium::de::from_reader(event.payload.as_slice())?;
    let records = field(&payload, "Records")
        .and_then(Cbor::as_array)
        .ok_or("no Records")?;
    assert_eq!(records.len(), 1);
    let record = &records[0];
    assert_eq!(
        field(record, "Data").and_then(Cbor::as_bytes),
        Some(&data.to_vec())
    );
    assert_eq!(
        field(record, "PartitionKey").and_then(Cbor::as_text),
        Some("k")
    );
    let arrival = field(record, "ApproximateArrivalTimestamp")
        .and_then(Cbor::as_integer)
        .map(i128::from);
    assert_eq!(arrival, Some(i128::from(NOW)));
    let sequence = field(record, "SequenceNumber")
        .and_then(Cbor::as_text)
        .ok_or("no SequenceNumber")?;
    assert_eq!(
        field(&payload, "ContinuationSequenceNumber").and_then(Cbor::as_text),
        Some(sequence)
    );
    assert_eq!(
        field(&payload, "MillisBehindLatest")
            .and_then(Cbor::as_integer)
            .map(i128::from),
        Some(0)
    );
    Ok(())
}
