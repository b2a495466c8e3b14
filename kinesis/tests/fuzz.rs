//! Fuzzing the request decoders and the router (proptest, a bounded number of cases so that it
//! runs in CI): arbitrary bytes as event-stream frames, JSON and CBOR bodies; arbitrary JSON
//! as the members of every operation; arbitrary bodies posted to every operation. Nothing may
//! panic or hang, every answer is a well-formed HTTP answer, and the server keeps serving.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use proptest::prelude::*;
use serde_json::Value;
use sluice_engine::{Engine, EngineOptions, ManualClock};
use sluice_kinesis::actions::ACTIONS;
use sluice_kinesis::eventstream::{Message, decode};
use sluice_kinesis::wire::Protocol;
use sluice_kinesis::{KinesisOptions, router, shapes};
use tower::ServiceExt;

const AUTH: &str = "AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/kinesis/aws4_request, SignedHeaders=host, Signature=0";

/// Any JSON value, a few levels deep, with the member names Kinesis uses among the keys.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        ".{0,40}".prop_map(Value::String),
        Just(Value::String("eA==".into())),
    ];
    let key = prop_oneof![
        Just("StreamName".to_string()),
        Just("Data".to_string()),
        Just("PartitionKey".to_string()),
        Just("Records".to_string()),
        Just("ShardCount".to_string()),
        Just("StartingPosition".to_string()),
        Just("Tags".to_string()),
        "[A-Za-z]{1,12}",
    ];
    leaf.prop_recursive(3, 48, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(key.clone(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn event_stream_frames_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = decode(&bytes);
    }

    #[test]
    fn event_stream_messages_round_trip(kind in "[A-Za-z]{1,30}", payload in prop::collection::vec(any::<u8>(), 0..512)) {
        let message = Message::event(&kind, "application/json", payload);
        let bytes = message.encode();
        let decoded = decode(&bytes).ok().flatten();
        prop_assert_eq!(decoded, Some((message, bytes.len())));
    }

    #[test]
    fn bodies_decode_or_are_refused(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = Protocol::Json.decode(&bytes);
        let _ = Protocol::Cbor.decode(&bytes);
    }

    #[test]
    fn member_types_are_checked_without_panicking(value in json_value(), action in prop::sample::select(ACTIONS)) {
        if let Value::Object(request) = value {
            let _ = shapes::check(action, &request);
        }
    }
}

#[test]
fn the_router_answers_arbitrary_requests_and_keeps_serving() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = Engine::open(
        EngineOptions::new(dir.path())
            .with_clock(Arc::new(ManualClock::new(1_767_261_600_000)))
            .with_background(false),
    )
    .expect("engine");
    let app = router(engine, KinesisOptions::default());
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 256,
        ..ProptestConfig::default()
    });
    let strategy = (
        prop::sample::select(ACTIONS),
        prop_oneof![
            json_value().prop_map(|v| v.to_string().into_bytes()),
            prop::collection::vec(any::<u8>(), 0..128),
        ],
        any::<bool>(),
    );
    runner
        .run(&strategy, |(action, body, cbor)| {
            let protocol = if cbor { Protocol::Cbor } else { Protocol::Json };
            let body = if cbor {
                serde_json::from_slice::<Value>(&body).map_or(body, |v| protocol.encode(&v))
            } else {
                body
            };
            let status = runtime.block_on(async {
                let request = Request::post("/")
                    .header("x-amz-target", format!("Kinesis_20131202.{action}"))
                    .header("content-type", protocol.content_type())
                    .header("authorization", AUTH)
                    .header("x-amz-date", "20260101T000000Z")
                    .body(Body::from(body))
                    .expect("request");
                let response = tokio::time::timeout(
                    std::time::Duration::from_secs(10),
                    app.clone().oneshot(request),
                )
                .await
                .expect("answered within 10 s")
                .expect("infallible");
                let status = response.status();
                // SubscribeToShard may stream: read only the first frame's worth.
                let _ = tokio::time::timeout(
                    std::time::Duration::from_millis(200),
                    response.into_body().frame(),
                )
                .await;
                status
            });
            prop_assert!(
                matches!(
                    status,
                    StatusCode::OK
                        | StatusCode::BAD_REQUEST
                        | StatusCode::FORBIDDEN
                        | StatusCode::NOT_FOUND
                ),
                "{action}: {status}"
            );
            Ok(())
        })
        .expect("every arbitrary request is answered");
    // Still serving.
    let status = runtime.block_on(async {
        let request = Request::post("/")
            .header("x-amz-target", "Kinesis_20131202.ListStreams")
            .header("content-type", "application/x-amz-json-1.1")
            .header("authorization", AUTH)
            .header("x-amz-date", "20260101T000000Z")
            .body(Body::from("{}"))
            .expect("request");
        app.clone()
            .oneshot(request)
            .await
            .expect("infallible")
            .status()
    });
    assert_eq!(status, StatusCode::OK);
}
