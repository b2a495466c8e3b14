//! The Kinesis Data Streams wire API over Sluice's engine, so boto3, aws-cli and the AWS SDKs
//! work against Sluice with only their endpoint URL changed.
//!
//! `POST /` with `X-Amz-Target: Kinesis_20131202.<Action>` and a body in AWS JSON 1.1 or CBOR 1.1
//! ([`wire`]) runs one of the [`actions`]; failures answer in AWS's error envelope
//! (`{"__type": "ResourceNotFoundException", "message": "…"}`, [`error`]). Requests must carry
//! SigV4 material (an `Authorization: AWS4-HMAC-SHA256 …` header or `X-Amz-Signature` query),
//! as AWS requires, and its signature is verified unless the server's one authorizer
//! ([`sluice_auth::Authorizer`], shared with Flight) is open ([`sigv4`]).
//! Bodies over 10 MiB get 413. Per-shard throughput limits ([`throttle`]) are off unless asked
//! for; writes beyond what the engine can take in get `ProvisionedThroughputExceededException`
//! after a short wait rather than queueing without bound. `GET /metrics` serves the per-shard
//! counters ([`metrics`]) as Prometheus text to whom the same authorizer admits.
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
pub mod cluster;
pub mod consumers;
pub mod error;
pub mod eventstream;
pub mod metrics;
pub mod reshard;
pub mod settings;
pub mod shapes;
mod shared_events;
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
use axum::routing::{any, get};
use serde_json::json;
use sluice_auth::Authorizer;
use sluice_engine::Engine;
use tokio::net::TcpListener;

use crate::error::{ApiError, ErrorKind};
use crate::metrics::Metrics;
use crate::throttle::{ShardLimits, Throttle};
use crate::wire::Protocol;

/// The largest request body accepted (a full PutRecords, base64, with room to spare).
pub const MAX_BODY_BYTES: usize = 10 * 1024 * 1024;
const TARGET_PREFIX: &str = "Kinesis_20131202.";

/// How the endpoint checks and limits requests.
#[derive(Debug, Clone, Default)]
pub struct KinesisOptions {
    /// Who may call: the server's one authorizer. Its users are the access keys signatures are
    /// verified against (the id is the user, the secret the password); open, any SigV4-shaped
    /// request is accepted. `GET /metrics` takes its bearer token or Basic credentials.
    pub auth: Authorizer,
    /// Kinesis's per-shard throughput limits, when enforced.
    pub shard_limits: Option<ShardLimits>,
    /// Other AWS JSON APIs answered on the same port, by `X-Amz-Target` prefix, with the same
    /// signature checks and error envelopes.
    pub services: Vec<Arc<dyn JsonService>>,
    /// The cluster this node belongs to, if any: requests for shards other nodes own go to
    /// them, and records for shards owned here go through the shared log.
    pub placement: Option<Arc<dyn cluster::ShardPlacement>>,
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
    auth: Authorizer,
    write_slots: tokio::sync::Semaphore,
    services: Vec<Arc<dyn JsonService>>,
    /// Held while a stream's consumers file or settings file is read, changed and written.
    pub(crate) stream_files_lock: parking_lot::Mutex<()>,
    pub(crate) subscriptions: subscribe::Subscriptions,
    pub(crate) on_demand: settings::OnDemand,
    pub(crate) placement: Option<Arc<dyn cluster::ShardPlacement>>,
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
            auth: options.auth,
            write_slots: tokio::sync::Semaphore::new(WRITE_SLOTS),
            services: options.services,
            stream_files_lock: parking_lot::Mutex::new(()),
            subscriptions: subscribe::Subscriptions::default(),
            on_demand: settings::OnDemand::default(),
            placement: options.placement,
        }),
    };
    Router::new()
        .route("/", any(handle))
        .fallback(handle)
        .route("/metrics", get(metrics_text))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(api)
}

/// Prometheus text, for whoever the server's authorizer lets in (Prometheus sends a bearer
/// token or Basic credentials from its scrape config).
async fn metrics_text(State(api): State<Api>, headers: HeaderMap) -> Response {
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if let Err(denied) = api.services.auth.check_header(authorization) {
        return (
            StatusCode::UNAUTHORIZED,
            [(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"sluice\", Basic realm=\"sluice\""),
            )],
            format!("{denied}\n"),
        )
            .into_response();
    }
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

/// Answers one request in the order AWS checks it: CORS preflight; the method (only POST);
/// an empty body; the content type; the body's syntax; the target (service and operation); the
/// signature; then the action, which checks its members' types, then their constraints, then
/// that what they name exists.
async fn handle(
    State(api): State<Api>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let request_id = uuid::Uuid::new_v4().to_string();
    let origin = headers.contains_key(header::ORIGIN);
    let mut response = if origin && method == Method::OPTIONS {
        preflight(&headers)
    } else {
        respond(&api.services, &method, &uri, &headers, body).await
    };
    let out = response.headers_mut();
    if let Ok(id) = HeaderValue::from_str(&request_id) {
        out.insert("x-amzn-RequestId", id);
    }
    if origin {
        out.insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_static("*"),
        );
        if method != Method::OPTIONS {
            out.insert(
                header::ACCESS_CONTROL_EXPOSE_HEADERS,
                HeaderValue::from_static(
                    "x-amzn-RequestId,x-amzn-ErrorType,x-amz-request-id,x-amz-id-2,x-amzn-ErrorMessage,Date",
                ),
            );
        }
    }
    response
}

/// A browser's CORS preflight: whatever it asks for is allowed, for two days, as AWS answers.
fn preflight(headers: &HeaderMap) -> Response {
    let mut response = StatusCode::OK.into_response();
    let out = response.headers_mut();
    if let Some(asked) = headers.get(header::ACCESS_CONTROL_REQUEST_HEADERS) {
        out.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, asked.clone());
    }
    if let Some(asked) = headers.get(header::ACCESS_CONTROL_REQUEST_METHOD) {
        out.insert(header::ACCESS_CONTROL_ALLOW_METHODS, asked.clone());
    }
    out.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("172800"),
    );
    response
}

/// AWS's answer to a request it cannot route, as XML: 403 with a message, or a bare element.
fn xml_error(status: StatusCode, type_name: &str, message: Option<&str>) -> Response {
    let body = match message {
        Some(message) => {
            format!("<{type_name}>\n  <Message>{message}</Message>\n</{type_name}>\n")
        }
        None => format!("<{type_name}/>\n"),
    };
    (status, body).into_response()
}

const UNROUTABLE: &str = "Unable to determine service/operation name to be authorized";

async fn respond(
    services: &Arc<Services>,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    if method != Method::POST {
        return xml_error(
            StatusCode::FORBIDDEN,
            "AccessDeniedException",
            Some(UNROUTABLE),
        );
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|t| {
            t.split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase()
        });
    let protocol = Protocol::from_content_type(content_type.as_deref());
    let target = headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let route = route(services, target);
    let result = match body {
        Ok(body) if body.is_empty() => Err(match route {
            // An empty body is not a request: its type alone, with no message, as AWS answers.
            Some(_) => ApiError::new(ErrorKind::Serialization, ""),
            None => ApiError::new(ErrorKind::UnknownOperation, ""),
        }),
        Ok(body) => {
            let known_type = matches!(
                content_type.as_deref(),
                Some(
                    "application/x-amz-json-1.1"
                        | "application/x-amz-json-1.0"
                        | "application/json"
                        | "application/x-amz-cbor-1.1"
                        | "application/cbor"
                )
            );
            if !known_type {
                return if target
                    .split_once('.')
                    .is_none_or(|(s, o)| s.is_empty() || o.is_empty())
                {
                    xml_error(
                        StatusCode::FORBIDDEN,
                        "AccessDeniedException",
                        Some(UNROUTABLE),
                    )
                } else {
                    xml_error(StatusCode::NOT_FOUND, "UnknownOperationException", None)
                };
            }
            answer(services, method, uri, headers, &body, protocol, route).await
        }
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
    let (status, body) = match result {
        Ok(Answer::Value(value)) => {
            // An operation with no output answers with an empty body, as Kinesis does.
            let empty = matches!(route, Some(Route::Kinesis(_)))
                && value.as_object().is_some_and(serde_json::Map::is_empty);
            (
                StatusCode::OK,
                if empty {
                    Vec::new()
                } else {
                    protocol.encode(&value)
                },
            )
        }
        Ok(Answer::Events(response)) => return response,
        Err(error) => {
            if error.kind == ErrorKind::InternalFailure {
                log::error!("Kinesis API: {}", error.message);
            }
            let mut envelope = serde_json::Map::new();
            envelope.insert("__type".into(), json!(error.kind.type_name()));
            if !error.message.is_empty() {
                let key = if error.capitalised {
                    "Message"
                } else {
                    "message"
                };
                envelope.insert(key.into(), json!(error.message));
            }
            (
                error.kind.status(),
                protocol.encode(&serde_json::Value::Object(envelope)),
            )
        }
    };
    let mut response = (status, body).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(protocol.content_type()),
    );
    response
}

/// Where a target goes (`None`: an operation nobody here answers).
#[derive(Clone, Copy)]
enum Route<'a> {
    /// A Kinesis action.
    Kinesis(&'a str),
    /// An action of another API on this port.
    Service(&'a Arc<dyn JsonService>, &'a str),
}

fn route<'a>(services: &'a Services, target: &'a str) -> Option<Route<'a>> {
    if let Some(action) = target.strip_prefix(TARGET_PREFIX) {
        return actions::ACTIONS
            .contains(&action)
            .then_some(Route::Kinesis(action));
    }
    services
        .services
        .iter()
        .find_map(|s| {
            target
                .strip_prefix(s.target_prefix())
                .map(|a| Route::Service(s, a))
        })
        .filter(|r| !matches!(r, Route::Service(_, "")))
}

/// What a request is answered with.
enum Answer {
    /// A response object, encoded in the request's protocol.
    Value(serde_json::Value),
    /// An event stream (`SubscribeToShard`), already a response.
    Events(Response),
}

#[allow(clippy::too_many_arguments)]
async fn answer(
    services: &Arc<Services>,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
    protocol: Protocol,
    route: Option<Route<'_>>,
) -> Result<Answer, ApiError> {
    let request = protocol.decode(body)?;
    let action = match route {
        None => return Err(ApiError::new(ErrorKind::UnknownOperation, "")),
        Some(Route::Service(service, action)) => {
            sigv4::verify(&services.auth, method, uri, headers, body)?;
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
        Some(Route::Kinesis(action)) => action,
    };
    shapes::check(action, &request)?;
    sigv4::verify(&services.auth, method, uri, headers, body)?;
    if let Some(answered) = cluster::route(services, action, &request, headers).await {
        return answered.map(Answer::Value);
    }
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
