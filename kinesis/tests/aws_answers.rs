//! Request/response pairs: what Sluice answers, byte for byte where AWS's answer is fixed, for
//! the requests that are not well-formed Kinesis calls — the wrong method, a browser's
//! preflight, empty and malformed bodies, unknown operations, missing and incomplete
//! signatures, tampered bodies — and for calls AWS answers with an empty body. The expected
//! answers are AWS's as the long-standing Kinesis emulators recorded them.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::BodyExt;
use sluice_auth::Authorizer;
use sluice_engine::{Engine, EngineOptions, ManualClock};
use sluice_kinesis::sigv4::sign_json_post;
use sluice_kinesis::{KinesisOptions, router};
use tower::ServiceExt;

type TestResult = Result<(), Box<dyn std::error::Error>>;

const AUTH: &str = "AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/kinesis/aws4_request, SignedHeaders=host, Signature=0";
const JSON: &str = "application/x-amz-json-1.1";

fn app(
    dir: &std::path::Path,
    auth: Authorizer,
) -> Result<axum::Router, Box<dyn std::error::Error>> {
    let engine = Engine::open(
        EngineOptions::new(dir)
            .with_clock(Arc::new(ManualClock::new(1_767_261_600_000)))
            .with_background(false),
    )?;
    Ok(router(
        engine,
        KinesisOptions {
            auth,
            ..KinesisOptions::default()
        },
    ))
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

async fn send(
    app: &axum::Router,
    method: Method,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Answer, Box<dyn std::error::Error>> {
    let mut request = Request::builder().method(method).uri("/");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = app
        .clone()
        .oneshot(request.body(Body::from(body.to_vec()))?)
        .await?;
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await?.to_bytes();
    Ok(Answer {
        status,
        headers,
        body: String::from_utf8_lossy(&bytes).into_owned(),
    })
}

/// A JSON call with placeholder signature material (no keys configured).
async fn call(
    app: &axum::Router,
    action: &str,
    body: &str,
) -> Result<Answer, Box<dyn std::error::Error>> {
    let target = format!("Kinesis_20131202.{action}");
    send(
        app,
        Method::POST,
        &[
            ("x-amz-target", &target),
            ("content-type", JSON),
            ("authorization", AUTH),
            ("x-amz-date", "20260101T000000Z"),
        ],
        body.as_bytes(),
    )
    .await
}

#[tokio::test]
async fn requests_that_are_not_calls_get_aws_s_answers() -> TestResult {
    let dir = tempfile::tempdir()?;
    let app = app(dir.path(), Authorizer::open())?;

    // Any method but POST.
    let got = send(&app, Method::GET, &[], b"").await?;
    assert_eq!(got.status, StatusCode::FORBIDDEN);
    assert_eq!(
        got.body,
        "<AccessDeniedException>\n  <Message>Unable to determine service/operation name to be authorized</Message>\n</AccessDeniedException>\n"
    );
    assert!(got.headers.contains_key("x-amzn-RequestId"));

    // A browser's preflight: allowed as asked, for two days; CORS headers on the call after.
    let got = send(
        &app,
        Method::OPTIONS,
        &[
            ("origin", "http://localhost:3000"),
            ("access-control-request-method", "POST"),
            (
                "access-control-request-headers",
                "content-type,x-amz-target,authorization",
            ),
        ],
        b"",
    )
    .await?;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.body, "");
    assert_eq!(got.headers["access-control-allow-origin"], "*");
    assert_eq!(got.headers["access-control-allow-methods"], "POST");
    assert_eq!(
        got.headers["access-control-allow-headers"],
        "content-type,x-amz-target,authorization"
    );
    assert_eq!(got.headers["access-control-max-age"], "172800");
    let got = send(
        &app,
        Method::POST,
        &[
            ("origin", "http://localhost:3000"),
            ("x-amz-target", "Kinesis_20131202.ListStreams"),
            ("content-type", JSON),
            ("authorization", AUTH),
            ("x-amz-date", "20260101T000000Z"),
        ],
        b"{}",
    )
    .await?;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.headers["access-control-allow-origin"], "*");
    assert!(
        got.headers["access-control-expose-headers"]
            .to_str()?
            .contains("x-amzn-RequestId")
    );

    // An empty body: the type alone.
    let got = send(
        &app,
        Method::POST,
        &[
            ("x-amz-target", "Kinesis_20131202.ListStreams"),
            ("content-type", JSON),
        ],
        b"",
    )
    .await?;
    assert_eq!(
        (got.status, got.body.as_str()),
        (
            StatusCode::BAD_REQUEST,
            r#"{"__type":"SerializationException"}"#
        )
    );
    let got = send(
        &app,
        Method::POST,
        &[
            ("x-amz-target", "Kinesis_20131202.Nope"),
            ("content-type", JSON),
        ],
        b"",
    )
    .await?;
    assert_eq!(
        (got.status, got.body.as_str()),
        (
            StatusCode::BAD_REQUEST,
            r#"{"__type":"UnknownOperationException"}"#
        )
    );

    // A content type that is neither JSON nor CBOR.
    let got = send(
        &app,
        Method::POST,
        &[
            ("x-amz-target", "Kinesis_20131202.ListStreams"),
            ("content-type", "text/plain"),
        ],
        b"{}",
    )
    .await?;
    assert_eq!(
        (got.status, got.body.as_str()),
        (StatusCode::NOT_FOUND, "<UnknownOperationException/>\n")
    );
    let got = send(&app, Method::POST, &[("content-type", "text/plain")], b"{}").await?;
    assert_eq!(got.status, StatusCode::FORBIDDEN);
    assert!(
        got.body
            .contains("Unable to determine service/operation name"),
        "{}",
        got.body
    );

    // A body that is not JSON, before anything else is looked at.
    let got = send(
        &app,
        Method::POST,
        &[
            ("x-amz-target", "Kinesis_20131202.Nope"),
            ("content-type", JSON),
        ],
        b"{not json",
    )
    .await?;
    assert_eq!(got.status, StatusCode::BAD_REQUEST);
    assert!(
        got.body
            .starts_with(r#"{"__type":"SerializationException""#),
        "{}",
        got.body
    );

    // An operation Kinesis does not have, then one it has with no signature.
    let got = send(
        &app,
        Method::POST,
        &[
            ("x-amz-target", "Kinesis_20131202.Nope"),
            ("content-type", JSON),
        ],
        b"{}",
    )
    .await?;
    assert_eq!(
        (got.status, got.body.as_str()),
        (
            StatusCode::BAD_REQUEST,
            r#"{"__type":"UnknownOperationException"}"#
        )
    );
    let got = send(
        &app,
        Method::POST,
        &[
            ("x-amz-target", "Kinesis_20131202.ListStreams"),
            ("content-type", JSON),
        ],
        b"{}",
    )
    .await?;
    assert_eq!(
        got.body,
        r#"{"__type":"MissingAuthenticationTokenException","message":"Missing Authentication Token"}"#
    );

    // Incomplete signatures name everything missing.
    let got = send(
        &app,
        Method::POST,
        &[
            ("x-amz-target", "Kinesis_20131202.ListStreams"),
            ("content-type", JSON),
            ("authorization", "AWS4-HMAC-SHA256 Signature=abc"),
        ],
        b"{}",
    )
    .await?;
    assert_eq!(
        got.body,
        r#"{"__type":"IncompleteSignatureException","message":"Authorization header requires 'Credential' parameter. Authorization header requires 'SignedHeaders' parameter. Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header. Authorization=AWS4-HMAC-SHA256 Signature=abc"}"#
    );
    let got = send(
        &app,
        Method::POST,
        &[
            ("x-amz-target", "Kinesis_20131202.ListStreams"),
            ("content-type", JSON),
            ("authorization", AUTH),
            ("x-amz-date", "20260101T000000Z"),
        ],
        b"{}",
    )
    .await?;
    assert_eq!(got.status, StatusCode::OK);
    Ok(())
}

#[tokio::test]
async fn operations_without_output_answer_with_an_empty_body() -> TestResult {
    let dir = tempfile::tempdir()?;
    let app = app(dir.path(), Authorizer::open())?;
    let got = call(&app, "CreateStream", r#"{"StreamName":"s","ShardCount":1}"#).await?;
    assert_eq!((got.status, got.body.as_str()), (StatusCode::OK, ""));
    assert_eq!(got.headers["content-type"], JSON);
    let got = call(
        &app,
        "AddTagsToStream",
        r#"{"StreamName":"s","Tags":{"a":"b"}}"#,
    )
    .await?;
    assert_eq!((got.status, got.body.as_str()), (StatusCode::OK, ""));
    let got = call(&app, "ListStreams", "{}").await?;
    assert!(got.body.contains(r#""StreamName":"s""#), "{}", got.body);
    Ok(())
}

#[tokio::test]
async fn a_signed_request_with_another_body_is_refused() -> TestResult {
    let dir = tempfile::tempdir()?;
    let app = app(
        dir.path(),
        Authorizer::open().with_password("AKID", "secret"),
    )?;
    let body = br#"{"StreamName":"signed","ShardCount":1}"#;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs() as i64;
    let signed = sign_json_post(
        "localhost",
        "Kinesis_20131202.CreateStream",
        body,
        ("AKID", "secret"),
        "us-east-1",
        "kinesis",
        JSON,
        now,
    );
    let mut headers = vec![
        ("host", "localhost"),
        ("x-amz-target", "Kinesis_20131202.CreateStream"),
        ("content-type", JSON),
    ];
    headers.extend(signed.iter().map(|(n, v)| (*n, v.as_str())));
    let tampered = br#"{"StreamName":"forged","ShardCount":1}"#;
    let got = send(&app, Method::POST, &headers, tampered).await?;
    assert_eq!(got.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        got.body,
        r#"{"__type":"InvalidSignatureException","message":"The provided 'x-amz-content-sha256' header does not match what was computed."}"#
    );
    let got = send(&app, Method::POST, &headers, body).await?;
    assert_eq!((got.status, got.body.as_str()), (StatusCode::OK, ""));
    Ok(())
}

#[tokio::test]
async fn types_then_constraints_then_existence() -> TestResult {
    let dir = tempfile::tempdir()?;
    let app = app(dir.path(), Authorizer::open())?;
    // A member of the wrong JSON type: SerializationException, its text in `Message`.
    let got = call(
        &app,
        "CreateStream",
        r#"{"StreamName":"s","ShardCount":"2"}"#,
    )
    .await?;
    assert_eq!(
        (got.status, got.body.as_str()),
        (
            StatusCode::BAD_REQUEST,
            r#"{"Message":"class java.lang.String can not be converted to an Integer","__type":"SerializationException"}"#
        )
    );
    // Every broken constraint together, before the stream is looked up.
    let long_key = "k".repeat(257);
    let got = call(
        &app,
        "PutRecord",
        &format!(r#"{{"StreamName":"no such stream!","PartitionKey":"{long_key}","Data":"eA=="}}"#),
    )
    .await?;
    assert_eq!(got.status, StatusCode::BAD_REQUEST);
    assert!(
        got.body.contains(r#""__type":"ValidationException""#)
            && got.body.contains("2 validation errors detected: Value 'no such stream!' at 'streamName' failed to satisfy constraint: Member must satisfy regular expression pattern: [a-zA-Z0-9_.-]+; Value '"),
        "{}",
        got.body
    );
    // Then existence.
    let got = call(
        &app,
        "PutRecord",
        r#"{"StreamName":"missing","PartitionKey":"k","Data":"eA=="}"#,
    )
    .await?;
    assert_eq!(
        got.body,
        r#"{"__type":"ResourceNotFoundException","message":"Stream missing under account 000000000000 not found."}"#
    );
    Ok(())
}

/// The `message` of an error answer, and its `__type`.
fn error_of(answer: &Answer) -> Result<(String, String), Box<dyn std::error::Error>> {
    let body: serde_json::Value = serde_json::from_str(&answer.body)?;
    Ok((
        body["__type"].as_str().unwrap_or_default().to_string(),
        body["message"].as_str().unwrap_or_default().to_string(),
    ))
}

#[tokio::test]
async fn every_action_checks_constraints_before_the_stream_exists() -> TestResult {
    let dir = tempfile::tempdir()?;
    let app = app(dir.path(), Authorizer::open())?;
    let validation = |n: usize, parts: &[&str]| {
        format!(
            "{n} validation error{} detected: {}",
            if n == 1 { "" } else { "s" },
            parts.join("; ")
        )
    };
    // Each request names a stream that does not exist and breaks constraints: the constraints
    // are what is reported, every one of them.
    let cases: Vec<(&str, String, String)> = vec![
        (
            "DescribeStream",
            r#"{"StreamName":"missing","Limit":0}"#.into(),
            validation(1, &["Value '0' at 'limit' failed to satisfy constraint: Member must have value greater than or equal to 1"]),
        ),
        (
            "DescribeStream",
            r#"{"StreamName":"missing","ExclusiveStartShardId":"shard/0"}"#.into(),
            validation(1, &["Value 'shard/0' at 'exclusiveStartShardId' failed to satisfy constraint: Member must satisfy regular expression pattern: [a-zA-Z0-9_.-]+"]),
        ),
        (
            "GetShardIterator",
            r#"{"StreamName":"","ShardId":"s","ShardIteratorType":"OLDEST","StartingSequenceNumber":"007"}"#.into(),
            validation(3, &[
                "Value '' at 'streamName' failed to satisfy constraint: Member must have length greater than or equal to 1",
                "Value 'OLDEST' at 'shardIteratorType' failed to satisfy constraint: Member must satisfy enum value set: [AFTER_SEQUENCE_NUMBER, AT_SEQUENCE_NUMBER, AT_TIMESTAMP, TRIM_HORIZON, LATEST]",
                "Value '007' at 'startingSequenceNumber' failed to satisfy constraint: Member must satisfy regular expression pattern: 0|([1-9]\\d{0,128})",
            ]),
        ),
        (
            "GetRecords",
            r#"{"Limit":0}"#.into(),
            validation(2, &[
                "Value null at 'shardIterator' failed to satisfy constraint: Member must not be null",
                "Value '0' at 'limit' failed to satisfy constraint: Member must have value greater than or equal to 1",
            ]),
        ),
        (
            "IncreaseStreamRetentionPeriod",
            r#"{"StreamName":"missing","RetentionPeriodHours":9000}"#.into(),
            validation(1, &["Value '9000' at 'retentionPeriodHours' failed to satisfy constraint: Member must have value less than or equal to 8760"]),
        ),
        (
            "AddTagsToStream",
            format!(r#"{{"StreamName":"missing","Tags":{{"{}":"v"}}}}"#, "k".repeat(129)),
            validation(1, &[&format!("Value '{{{}=v}}' at 'tags' failed to satisfy constraint: Map keys must satisfy constraint: [Member must have length less than or equal to 128, Member must have length greater than or equal to 1]", "k".repeat(129))]),
        ),
        (
            "AddTagsToStream",
            r#"{"StreamName":"missing"}"#.into(),
            validation(1, &["Value null at 'tags' failed to satisfy constraint: Member must not be null"]),
        ),
        (
            "RemoveTagsFromStream",
            r#"{"StreamName":"missing","TagKeys":[]}"#.into(),
            validation(1, &["Value '[]' at 'tagKeys' failed to satisfy constraint: Member must have length greater than or equal to 1"]),
        ),
        (
            "ListTagsForStream",
            r#"{"StreamName":"missing","Limit":51}"#.into(),
            validation(1, &["Value '51' at 'limit' failed to satisfy constraint: Member must have value less than or equal to 50"]),
        ),
        (
            "SplitShard",
            r#"{"StreamName":"bad name","ShardToSplit":"shardId-000000000000","NewStartingHashKey":"-1"}"#.into(),
            validation(2, &[
                "Value 'bad name' at 'streamName' failed to satisfy constraint: Member must satisfy regular expression pattern: [a-zA-Z0-9_.-]+",
                "Value '-1' at 'newStartingHashKey' failed to satisfy constraint: Member must satisfy regular expression pattern: 0|([1-9]\\d{0,38})",
            ]),
        ),
        (
            "DescribeStreamSummary",
            r#"{"StreamARN":"arn:aws:kinesis:us-east-1:123:stream/s"}"#.into(),
            validation(1, &["Value 'arn:aws:kinesis:us-east-1:123:stream/s' at 'streamARN' failed to satisfy constraint: Member must satisfy regular expression pattern: arn:aws.*:kinesis:.*:\\d{12}:stream/\\S+"]),
        ),
    ];
    for (action, body, expected) in cases {
        let got = call(&app, action, &body).await?;
        assert_eq!(got.status, StatusCode::BAD_REQUEST, "{action} {body}");
        assert_eq!(
            error_of(&got)?,
            ("ValidationException".to_string(), expected),
            "{action} {body}"
        );
    }
    // With the constraints met, the missing stream is what is reported.
    for (action, body) in [
        ("DescribeStream", r#"{"StreamName":"missing","Limit":5}"#),
        (
            "ListTagsForStream",
            r#"{"StreamName":"missing","Limit":50}"#,
        ),
        (
            "AddTagsToStream",
            r#"{"StreamName":"missing","Tags":{"a":"b"}}"#,
        ),
        (
            "DescribeStreamSummary",
            r#"{"StreamARN":"arn:aws:kinesis:us-east-1:000000000000:stream/missing"}"#,
        ),
    ] {
        let got = call(&app, action, body).await?;
        assert_eq!(
            error_of(&got)?,
            (
                "ResourceNotFoundException".to_string(),
                "Stream missing under account 000000000000 not found.".to_string()
            ),
            "{action}"
        );
    }
    // Two members that disagree are refused only once every constraint holds.
    let got = call(
        &app,
        "DescribeStreamSummary",
        r#"{"StreamName":"a","StreamARN":"arn:aws:kinesis:us-east-1:000000000000:stream/b"}"#,
    )
    .await?;
    assert_eq!(error_of(&got)?.0, "InvalidArgumentException");
    let got = call(
        &app,
        "DescribeStreamSummary",
        r#"{"StreamName":"a!","StreamARN":"arn:aws:kinesis:us-east-1:000000000000:stream/b"}"#,
    )
    .await?;
    assert_eq!(error_of(&got)?.0, "ValidationException");
    Ok(())
}

#[tokio::test]
async fn tags_are_checked_for_characters_and_limited_to_fifty() -> TestResult {
    let dir = tempfile::tempdir()?;
    let app = app(dir.path(), Authorizer::open())?;
    call(&app, "CreateStream", r#"{"StreamName":"t","ShardCount":1}"#).await?;
    let got = call(
        &app,
        "AddTagsToStream",
        r#"{"StreamName":"t","Tags":{"team":"data#1"}}"#,
    )
    .await?;
    assert_eq!(
        error_of(&got)?,
        (
            "InvalidArgumentException".to_string(),
            "Some tags contain invalid characters. Valid characters: Unicode letters, digits, white space, _ . / = + - % @ :.".to_string()
        )
    );
    let got = call(
        &app,
        "AddTagsToStream",
        r#"{"StreamName":"t","Tags":{"größe":"Ünïcode ok","path":"a/b=c+d-e@f:g_h.i"}}"#,
    )
    .await?;
    assert_eq!((got.status, got.body.as_str()), (StatusCode::OK, ""));
    // 48 more make 50; one more is refused, and nothing of that request is kept.
    let tags: serde_json::Map<String, serde_json::Value> = (0..48)
        .map(|i| (format!("k{i}"), serde_json::Value::from("v")))
        .collect();
    let body = serde_json::json!({"StreamName": "t", "Tags": tags}).to_string();
    assert_eq!(
        call(&app, "AddTagsToStream", &body).await?.status,
        StatusCode::OK
    );
    let got = call(
        &app,
        "AddTagsToStream",
        r#"{"StreamName":"t","Tags":{"one-too-many":"v"}}"#,
    )
    .await?;
    assert_eq!(
        error_of(&got)?,
        (
            "InvalidArgumentException".to_string(),
            "Failed to add tags to stream t under account 000000000000 because a given stream cannot have more than 50 tags associated with it.".to_string()
        )
    );
    let listed = call(
        &app,
        "ListTagsForStream",
        r#"{"StreamName":"t","Limit":50}"#,
    )
    .await?;
    let listed: serde_json::Value = serde_json::from_str(&listed.body)?;
    assert_eq!(listed["Tags"].as_array().map(Vec::len), Some(50));
    assert_eq!(listed["HasMoreTags"], false);
    Ok(())
}

#[tokio::test]
async fn the_servers_one_authorizer_closes_the_aws_apis_and_metrics_too() -> TestResult {
    let dir = tempfile::tempdir()?;
    // Only a bearer token, as `sluice --token T serve` configures for Flight.
    let app = app(dir.path(), Authorizer::open().with_token("t0ken"))?;
    let got = call(&app, "ListStreams", "{}").await?;
    assert_eq!(
        error_of(&got)?,
        (
            "UnrecognizedClientException".to_string(),
            "The security token included in the request is invalid.".to_string()
        )
    );
    let metrics = |authorization: Option<&'static str>| {
        let app = app.clone();
        async move {
            let mut request = Request::builder().method(Method::GET).uri("/metrics");
            if let Some(value) = authorization {
                request = request.header("authorization", value);
            }
            let response = app.oneshot(request.body(Body::empty())?).await?;
            let status = response.status();
            let challenge = response
                .headers()
                .get("www-authenticate")
                .map(|v| v.to_str().unwrap_or_default().to_string());
            Ok::<_, Box<dyn std::error::Error>>((status, challenge))
        }
    };
    let (status, challenge) = metrics(None).await?;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        challenge.as_deref(),
        Some(r#"Bearer realm="sluice", Basic realm="sluice""#)
    );
    assert_eq!(
        metrics(Some("Bearer guess")).await?.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(metrics(Some("Bearer t0ken")).await?.0, StatusCode::OK);
    // An AWS key is a user: it signs Kinesis requests and opens /metrics as Basic credentials.
    let keyed_dir = tempfile::tempdir()?;
    let keyed = self::app(
        keyed_dir.path(),
        Authorizer::open().with_password("AKID", "secret"),
    )?;
    let response = keyed
        .oneshot(
            Request::builder()
                .method(Method::GET)
                .uri("/metrics")
                .header("authorization", "Basic QUtJRDpzZWNyZXQ=")
                .body(Body::empty())?,
        )
        .await?;
    assert_eq!(response.status(), StatusCode::OK);
    Ok(())
}
