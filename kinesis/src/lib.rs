//! The Kinesis Data Streams wire API over Sluice's engine, so boto3, aws-cli and the AWS SDKs
//! work against Sluice with only their endpoint URL changed.
//!
//! `POST /` with `X-Amz-Target: Kinesis_20131202.<Action>` and a body in AWS JSON 1.1 or CBOR 1.1
//! ([`wire`]) runs one of the [`actions`]; failures answer in AWS's error envelope
//! (`{"__type": "ResourceNotFoundException", "message": "…"}`, [`error`]). Requests must carry
//! SigV4 material (an `Authorization: AWS4-HMAC-SHA256 …` header or `X-Amz-Signature` query),
//! as AWS requires, and its signature is verified when access keys are configured ([`sigv4`]).
//! Bodies over 10 MiB get 413. Per-shard throughput limits ([`throttle`]) are off unless asked
//! for; writes beyond what the engine can take in get `ProvisionedThroughputExceededException`
//! after a short wait rather than queueing without bound. `GET /metrics` serves the per-shard
//! counters ([`metrics`]) as Prometheus text.
//!
//! # Example
//!
//! ```no_run
//! # async fn run(engine: sluice_engine::Engine) -> std::io::Result<()> {
//! use sluice_kinesis::{KinesisOptions, KinesisServer};
//!
//! let server = KinesisServer::bind(engine, "127.0.0.1:4567".parse().unwrap(), KinesisOptions::default()).await?;
//! server.serve(std::future::pending()).await
//! # }
//! ```
//!
//! The streams are the engine's: one created here is a `raw` stream SQL reads (`_data`,
//! `ROWTIME`, …), and records put here feed pumps and delivery streams like any other.

pub mod actions;
pub mod consumers;
pub mod error;
pub mod eventstream;
pub mod metrics;
pub mod reshard;
pub mod sigv4;
pub mod subscribe;
pub mod throttle;
pub mod wire;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;
use sluice_engine::Engine;
use tokio::net::TcpListener;

use crate::error::{ApiError, ErrorKind};
use crate::metrics::Metrics;
use crate::sigv4::Credentials;
use crate::throttle::{ShardLimits, Throttle};
use crate::wire::Protocol;

/// The largest request body accepted (a full PutRecords, base64, with room to spare).
pub const MAX_BODY_BYTES: usize = 10 * 1024 * 1024;
const TARGET_PREFIX: &str = "Kinesis_20131202.";

/// How the endpoint checks and limits requests.
#[derive(Debug, Clone, Default)]
pub struct KinesisOptions {
    /// Access keys whose signatures are verified; empty: any SigV4-shaped request is accepted.
    pub credentials: Credentials,
    /// Kinesis's per-shard throughput limits, when enforced.
    pub shard_limits: Option<ShardLimits>,
    /// Other AWS JSON APIs answered on the same port, by `X-Amz-Target` prefix, with the same
    /// signature checks and error envelopes.
    pub services: Vec<Arc<dyn JsonService>>,
}

/// An error of a [`JsonService`]: its `__type`, HTTP status and message.
#[derive(Debug, Clone)]
pub struct ServiceError {
    pub type_name: &'static str,
    pub status: u16,
    pub message: String,
}

/// The answer a [`JsonService`] gives.
pub type ServiceAnswer =
    std::pin::Pin<Box<dyn Future<Output = Result<serde_json::Value, ServiceError>> + Send>>;

/// Another AWS JSON 1.1 API served beside Kinesis (the kinesisanalytics API): requests whose
/// `X-Amz-Target` starts with its prefix go to it, signed and enveloped as Kinesis's are.
pub trait JsonService: Send + Sync + std::fmt::Debug {
    /// The target prefix it answers, with its dot (`KinesisAnalytics_20150814.`).
    fn target_prefix(&self) -> &'static str;
    /// Runs `action` on `request`.
    fn call(&self, action: String, request: serde_json::Value) -> ServiceAnswer;
}

/// Writes allowed to wait for the engine at once; more wait up to `WRITE_WAIT`, then get
/// `ProvisionedThroughputExceededException` (SDKs back off and retry), so a flood of producers
/// holds at most this many request bodies in memory.
const WRITE_SLOTS: usize = 64;
const WRITE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// What every request sees.
pub(crate) struct Services {
    pub engine: Engine,
    pub metrics: Metrics,
    pub throttle: Throttle,
    credentials: Credentials,
    write_slots: tokio::sync::Semaphore,
    services: Vec<Arc<dyn JsonService>>,
    /// Held while a stream's consumers are changed (read, changed, written).
    pub(crate) consumers_lock: parking_lot::Mutex<()>,
    pub(crate) subscriptions: subscribe::Subscriptions,
}

#[derive(Clone)]
struct Api {
    services: Arc<Services>,
}

/// The Kinesis API as an axum router: `POST /` for the actions, `GET /metrics` for Prometheus.
pub fn router(engine: Engine, options: KinesisOptions) -> Router {
    let api = Api {
        services: Arc::new(Services {
            engine,
            metrics: Metrics::default(),
            throttle: Throttle::new(options.shard_limits),
            credentials: options.credentials,
            write_slots: tokio::sync::Semaphore::new(WRITE_SLOTS),
            services: options.services,
            consumers_lock: parking_lot::Mutex::new(()),
            subscriptions: subscribe::Subscriptions::default(),
        }),
    };
    Router::new()
        .route("/", post(handle))
        .route("/metrics", get(metrics_text))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(api)
}

async fn metrics_text(State(api): State<Api>) -> Response {
    let mut text = api.services.metrics.render(&api.services.engine);
    text.push_str(&format!(
        "# HELP sluice_kinesis_subscriptions SubscribeToShard subscriptions pushing records\n# TYPE sluice_kinesis_subscriptions gauge\nsluice_kinesis_subscriptions {}\n",
        api.services.subscriptions.count()
    ));
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
    options: KinesisOptions,
}

impl KinesisServer {
    pub async fn bind(
        engine: Engine,
        addr: SocketAddr,
        options: KinesisOptions,
    ) -> std::io::Result<Self> {
        Ok(Self {
            listener: TcpListener::bind(addr).await?,
            engine,
            options,
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
        axum::serve(self.listener, router(self.engine, self.options))
            .with_graceful_shutdown(shutdown)
            .await
    }
}

async fn handle(
    State(api): State<Api>,
    method: Method,
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
        Ok(body) => answer(&api.services, &method, &uri, &headers, &body, protocol).await,
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
        Ok(Answer::Value(value)) => (StatusCode::OK, value),
        Ok(Answer::Events(mut response)) => {
            if let Ok(id) = HeaderValue::from_str(&request_id) {
                response.headers_mut().insert("x-amzn-RequestId", id);
            }
            return response;
        }
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

/// What a request is answered with.
enum Answer {
    /// A response object, encoded in the request's protocol.
    Value(serde_json::Value),
    /// An event stream (`SubscribeToShard`), already a response.
    Events(Response),
}

async fn answer(
    services: &Arc<Services>,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
    protocol: Protocol,
) -> Result<Answer, ApiError> {
    let target = headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if let Some((service, action)) = services
        .services
        .iter()
        .find_map(|s| target.strip_prefix(s.target_prefix()).map(|a| (s, a)))
    {
        services.credentials.verify(method, uri, headers, body)?;
        let request = protocol.decode(body)?;
        return service
            .call(action.to_string(), serde_json::Value::Object(request))
            .await
            .map(Answer::Value)
            .map_err(|e| {
                ApiError::new(
                    ErrorKind::Service {
                        type_name: e.type_name,
                        status: e.status,
                    },
                    e.message,
                )
            });
    }
    let Some(action) = target.strip_prefix(TARGET_PREFIX) else {
        return Err(ApiError::new(
            ErrorKind::UnknownOperation,
            format!("X-Amz-Target '{target}' is not a Kinesis_20131202 operation"),
        ));
    };
    services.credentials.verify(method, uri, headers, body)?;
    let request = protocol.decode(body)?;
    if matches!(action, "PutRecord" | "PutRecords") {
        let Ok(Ok(_slot)) = tokio::time::timeout(WRITE_WAIT, services.write_slots.acquire()).await
        else {
            return Err(ApiError::new(
                ErrorKind::ProvisionedThroughputExceeded,
                "Sluice is taking in records as fast as it can; slow down and retry.",
            ));
        };
        return actions::dispatch(services, action, request)
            .await
            .map(Answer::Value);
    }
    if action == "SubscribeToShard" {
        let services = Arc::clone(services);
        // Checking the request reads the consumer's file and finds the start: off the runtime.
        return tokio::task::spawn_blocking(move || {
            subscribe::subscribe(&services, &request, protocol)
        })
        .await
        .map_err(|e| ApiError::internal(format!("the request failed: {e}")))?
        .map(Answer::Events);
    }
    actions::dispatch(services, action, request)
        .await
        .map(Answer::Value)
}
