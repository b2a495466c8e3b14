//! The Kinesis Data Streams wire API over Sluice's engine, so boto3, aws-cli and the AWS SDKs
//! work against Sluice with only their endpoint URL changed.
//!
//! `POST /` with `X-Amz-Target: Kinesis_20131202.<Action>` and a body in AWS JSON 1.1 or CBOR 1.1
//! ([`wire`]) runs one of the [`actions`]; failures answer in AWS's error envelope
//! (`{"__type": "ResourceNotFoundException", "message": "…"}`, [`error`]). Requests must carry
//! SigV4 material (an `Authorization: AWS4-HMAC-SHA256 …` header or `X-Amz-Signature` query),
//! as AWS requires; bodies over 10 MiB get 413. `GET /metrics` serves the per-shard counters
//! ([`metrics`]) as Prometheus text.
//!
//! The streams are the engine's: one created here is a `raw` stream SQL reads (`_data`,
//! `ROWTIME`, …), and records put here feed pumps and delivery streams like any other.

pub mod actions;
pub mod error;
pub mod metrics;
pub mod reshard;
pub mod wire;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;
use sluice_engine::Engine;
use tokio::net::TcpListener;

use crate::error::{ApiError, ErrorKind};
use crate::metrics::Metrics;
use crate::wire::Protocol;

/// The largest request body accepted (a full PutRecords, base64, with room to spare).
pub const MAX_BODY_BYTES: usize = 10 * 1024 * 1024;
const TARGET_PREFIX: &str = "Kinesis_20131202.";

/// What every request sees.
#[derive(Clone)]
struct Api {
    engine: Engine,
    metrics: Arc<Metrics>,
}

/// The Kinesis API as an axum router: `POST /` for the actions, `GET /metrics` for Prometheus.
pub fn router(engine: Engine) -> Router {
    let api = Api {
        engine,
        metrics: Arc::new(Metrics::default()),
    };
    Router::new()
        .route("/", post(handle))
        .route("/metrics", get(metrics_text))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(api)
}

async fn metrics_text(State(api): State<Api>) -> Response {
    let text = api.metrics.render(&api.engine);
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        )],
        text,
    )
        .into_response()
}

/// A bound Kinesis endpoint, not yet serving.
pub struct KinesisServer {
    listener: TcpListener,
    engine: Engine,
}

impl KinesisServer {
    pub async fn bind(engine: Engine, addr: SocketAddr) -> std::io::Result<Self> {
        Ok(Self {
            listener: TcpListener::bind(addr).await?,
            engine,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` completes, then finishes the requests in flight.
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        axum::serve(self.listener, router(self.engine))
            .with_graceful_shutdown(shutdown)
            .await
    }
}

async fn handle(
    State(api): State<Api>,
    uri: Uri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let protocol = Protocol::from_content_type(
        headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok()),
    );
    let result = match body {
        Ok(body) => answer(&api, &uri, &headers, &body, protocol).await,
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            Err(ApiError::new(
                ErrorKind::PayloadTooLarge,
                format!("Request body is larger than the {MAX_BODY_BYTES} bytes allowed"),
            ))
        }
        Err(rejection) => Err(ApiError::serialization(format!(
            "the request body could not be read: {}",
            rejection.body_text()
        ))),
    };
    let request_id = uuid::Uuid::new_v4().to_string();
    let (status, value) = match result {
        Ok(value) => (StatusCode::OK, value),
        Err(error) => {
            if error.kind == ErrorKind::InternalFailure {
                log::error!("Kinesis API: {}", error.message);
            }
            (
                error.kind.status(),
                json!({"__type": error.kind.type_name(), "message": error.message}),
            )
        }
    };
    let mut response = (status, protocol.encode(&value)).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(protocol.content_type()),
    );
    if let Ok(id) = HeaderValue::from_str(&request_id) {
        headers.insert("x-amzn-RequestId", id);
    }
    response
}

async fn answer(
    api: &Api,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
    protocol: Protocol,
) -> Result<serde_json::Value, ApiError> {
    let target = headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let Some(action) = target.strip_prefix(TARGET_PREFIX) else {
        return Err(ApiError::new(
            ErrorKind::UnknownOperation,
            format!("X-Amz-Target '{target}' is not a Kinesis_20131202 operation"),
        ));
    };
    let signed = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("AWS4-HMAC-SHA256"))
        || uri.query().is_some_and(|q| q.contains("X-Amz-Signature="));
    if !signed {
        return Err(ApiError::new(
            ErrorKind::MissingAuthenticationToken,
            "Missing Authentication Token",
        ));
    }
    let request = protocol.decode(body)?;
    actions::dispatch(&api.engine, &api.metrics, action, request).await
}
