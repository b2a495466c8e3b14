//! Request/response pairs: what Sluice answers, byte for byte where AWS's answer is fixed, for
//! the requests that are not well-formed Kinesis calls — the wrong method, a browser's
//! preflight, empty and malformed bodies, unknown operations, missing and incomplete
//! signatures, tampered bodies — and for calls AWS answers with an empty body. The expected
//! answers are AWS's as the long-standing Kinesis emulators recorded them.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::BodyExt;
use sluice_engine::{Engine, EngineOptions, ManualClock};
use sluice_kinesis::sigv4::{Credentials, sign_json_post};
use sluice_kinesis::{KinesisOptions, router};
use tower::ServiceExt;

type TestResult = Result<(), Box<dyn std::error::Error>>;

const AUTH: &str = "AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/kinesis/aws4_request, SignedHeaders=host, Signature=0";
const JSON: &str = "application/x-amz-json-1.1";

fn app(
    dir: &std::path::Path,
    credentials: Credentials,
) -> Result<axum::Router, Box<dyn std::error::Error>> {
    let engine = Engine::open(
        EngineOptions::new(dir)
            .with_clock(Arc::new(ManualClock::new(1_767_261_600_000)))
            .with_background(false),
    )?;
    Ok(router(
        engine,
        KinesisOptions {
            credentials,
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
    let app = app(dir.path(), Credentials::default())?;

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
    let app = app(dir.path(), Credentials::default())?;
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
        Credentials::new([("AKID".to_string(), "secret".to_string())]),
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
    let app = app(dir.path(), Credentials::default())?;
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
