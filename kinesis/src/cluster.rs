//! The Kinesis API as one node of several: requests for a shard another node owns go to it.
//!
//! The cluster itself (who owns what, the shared log) lives outside this crate, behind
//! [`ShardPlacement`]; the server wires it in. Here: `PutRecord`, `GetShardIterator` and
//! `GetRecords` for a shard owned elsewhere are sent on to its owner and its answer (or error)
//! is returned as if this node had given it; `PutRecords` is split by owner, each part sent to
//! its owner (this node's part appended here), and the answers merged back in the request's
//! order. A forwarded request is signed again (SigV4, with the caller's key: this node verified
//! the caller's signature and knows the secret) and marked, so the receiving node never
//! forwards it further: if ownership moved meanwhile, it answers with a retryable error.
//! Records for shards owned here are appended through [`ShardPlacement::append`] (the shared
//! log, then the engine) instead of the engine alone.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, Request, header};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Map, Value, json};
use sluice_engine::{PutResult, RecordRef, Stream};

use crate::consumers::Consumer;
use crate::error::{ApiError, ErrorKind, REGION};
use crate::{Services, TARGET_PREFIX, actions};

/// Marks a request one node sent on to another.
pub const FORWARDED_HEADER: &str = "x-sluice-forwarded";
/// The longest a forwarded request may take. Longer than an owner's own writes take when
/// storage answers (so an answer is not lost on the way back), short enough that a request
/// caught by a partition is retried soon, by then most likely at the shard's new owner.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(4);
/// The longest connecting to another node may take: a node cut off answers nothing, and the
/// caller should hear "retry" while its shards move, not wait out a TCP timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Where a shard's requests are answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// This node owns the shard.
    Local,
    /// Another node does; its Kinesis API's `host:port`.
    Remote(String),
    /// Nobody does right now (it is moving): the caller should retry shortly.
    Moving,
}

/// The cluster as the Kinesis API needs it.
pub trait ShardPlacement: Send + Sync + std::fmt::Debug {
    /// Where `shard` of `stream` is answered now.
    fn place(&self, stream: &str, shard: u32) -> Placement;
    /// Appends each part's records (all routed to its shard, owned here) durably: the shared
    /// log first, which numbers them, then the engine. The parts go to their shards' logs at
    /// once, so a call spanning shards waits for one group commit, not one per shard; each
    /// part's outcome, in order. Blocking.
    fn append(
        &self,
        stream: &Stream,
        parts: &[(u32, Vec<RecordRef<'_>>)],
    ) -> Vec<Result<Vec<PutResult>, String>>;
    /// A stream was created through this node: make it known to the others. Blocking.
    fn stream_created(&self, stream: &Stream) -> Result<(), String>;
    /// A stream was deleted through this node. Blocking.
    fn stream_deleted(&self, name: &str) -> Result<(), String>;
    /// The enhanced fan-out consumers registered for `stream` (one the cluster shares), which
    /// the cluster keeps so that every node knows them. Blocking.
    fn consumers(&self, stream: &Stream) -> Result<Vec<Consumer>, String>;
    /// Registers `consumer` for `stream`; `false` if one of that name is registered already.
    /// Blocking.
    fn add_consumer(&self, stream: &Stream, consumer: &Consumer) -> Result<bool, String>;
    /// Deregisters `consumer` of `stream`. Blocking.
    fn remove_consumer(&self, stream: &Stream, consumer: &Consumer) -> Result<(), String>;
}

fn moving(stream: &str, shard: u32) -> ApiError {
    ApiError::new(
        ErrorKind::ShardMoving,
        format!(
            "shard {} of stream {stream} is moving between nodes; retry shortly",
            sluice_engine::sequence::shard_id(shard)
        ),
    )
}

/// Appends `records` of `stream`, through the cluster when there is one; all or nothing.
pub(crate) fn append(
    services: &Services,
    stream: &Stream,
    records: &[RecordRef<'_>],
) -> Result<Vec<PutResult>, ApiError> {
    append_each(services, stream, records)?
        .into_iter()
        .collect()
}

/// Appends `records` of `stream`, through the cluster when there is one: where each landed, or
/// why it did not. In a cluster each shard's records are appended on their own, so a shard that
/// is moving fails only its own records (the others landed, and must not be sent again).
pub(crate) fn append_each(
    services: &Services,
    stream: &Stream,
    records: &[RecordRef<'_>],
) -> Result<Vec<Result<PutResult, ApiError>>, ApiError> {
    let Some(placement) = services.placement.as_ref().filter(|_| stream.is_shared()) else {
        // One node, or a stream this node keeps for itself (created with SQL).
        return Ok(stream.append_refs(records)?.into_iter().map(Ok).collect());
    };
    let ranges = actions::open_ranges(stream);
    let mut by_shard: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
    for (i, record) in records.iter().enumerate() {
        by_shard
            .entry(actions::shard_for(&ranges, record))
            .or_default()
            .push(i);
    }
    let mut results: Vec<Result<PutResult, ApiError>> = (0..records.len())
        .map(|_| Err(ApiError::internal("the record was not appended")))
        .collect();
    // This node's shards are appended together; the others are moving (or were forwarded).
    let mut local: Vec<(u32, Vec<usize>)> = Vec::new();
    for (shard, members) in by_shard {
        if placement.place(stream.name(), shard) == Placement::Local {
            local.push((shard, members));
        } else {
            let error = moving(stream.name(), shard);
            for &i in &members {
                results[i] = Err(error.clone());
            }
        }
    }
    let parts: Vec<(u32, Vec<RecordRef<'_>>)> = local
        .iter()
        .map(|(shard, members)| (*shard, members.iter().map(|&i| records[i]).collect()))
        .collect();
    let outcomes = placement.append(stream, &parts);
    for ((_, members), outcome) in local.iter().zip(outcomes) {
        match outcome {
            Ok(puts) => {
                for (&i, put) in members.iter().zip(puts) {
                    results[i] = Ok(put);
                }
            }
            Err(reason) => {
                let error = ApiError::new(ErrorKind::ShardMoving, reason);
                for &i in members {
                    results[i] = Err(error.clone());
                }
            }
        }
    }
    Ok(results)
}

/// Where `action` on `request` is answered when it names one shard, if not here.
fn destination(
    services: &Services,
    placement: &dyn ShardPlacement,
    action: &str,
    request: &Map<String, Value>,
) -> Result<Option<String>, ApiError> {
    let (stream, shard) = match action {
        "PutRecord" => {
            let name = actions::stream_name(request)?;
            let stream = actions::find_stream(&services.engine, &name)?;
            let key = actions::str_field(request, "PartitionKey")?.unwrap_or_default();
            let mut record = RecordRef::new(key, &[]);
            record.explicit_hash_key =
                actions::hash_key_of(request.get("ExplicitHashKey"), "explicitHashKey")?;
            let shard = actions::shard_for(&actions::open_ranges(&stream), &record);
            (name, shard)
        }
        "GetShardIterator" => {
            let name = actions::stream_name(request)?;
            let stream = actions::find_stream(&services.engine, &name)?;
            let id = actions::str_field(request, "ShardId")?.unwrap_or_default();
            (name, actions::shard_index(&stream, id)?)
        }
        // Not forwarded (an event stream): any node serves a subscription from its own copy
        // of the shard, which follows the owner's log.
        "SubscribeToShard" => return Ok(None),
        "GetRecords" => {
            let token = actions::str_field(request, "ShardIterator")?.unwrap_or_default();
            match actions::iterator_place(token) {
                Some(place) => place,
                None => return Ok(None),
            }
        }
        _ => return Ok(None),
    };
    // A stream this node keeps for itself (created with SQL) is answered here.
    if services
        .engine
        .try_stream(&stream)
        .is_some_and(|s| !s.is_shared())
    {
        return Ok(None);
    }
    match placement.place(&stream, shard) {
        Placement::Local => Ok(None),
        Placement::Remote(addr) => Ok(Some(addr)),
        Placement::Moving => Err(moving(&stream, shard)),
    }
}

/// Answers `action` through the cluster: `None` when it is to be answered here as usual.
pub(crate) async fn route(
    services: &Arc<Services>,
    action: &str,
    request: &Map<String, Value>,
    headers: &HeaderMap,
) -> Option<Result<Value, ApiError>> {
    let placement = services.placement.as_ref()?;
    if headers.contains_key(FORWARDED_HEADER) {
        return None;
    }
    if action == "PutRecords" {
        return spread_put_records(services, placement.as_ref(), request, headers).await;
    }
    match destination(services, placement.as_ref(), action, request) {
        Ok(None) => None,
        Ok(Some(addr)) => Some(forward(services, &addr, action, request, headers).await),
        Err(error) => Some(Err(error)),
    }
}

/// `PutRecords` whose entries belong to several owners: each owner gets its part.
async fn spread_put_records(
    services: &Arc<Services>,
    placement: &dyn ShardPlacement,
    request: &Map<String, Value>,
    headers: &HeaderMap,
) -> Option<Result<Value, ApiError>> {
    // Anything malformed is answered by the ordinary path, with its ordinary errors.
    let name = actions::stream_name(request).ok()?;
    let stream = actions::find_stream(&services.engine, &name).ok()?;
    if !stream.is_shared() {
        return None;
    }
    let entries = request.get("Records")?.as_array()?;
    let ranges = actions::open_ranges(&stream);
    let mut parts: BTreeMap<Option<String>, Vec<usize>> = BTreeMap::new();
    for (i, entry) in entries.iter().enumerate() {
        let entry = entry.as_object()?;
        let key = entry.get("PartitionKey")?.as_str()?;
        let mut record = RecordRef::new(key, &[]);
        record.explicit_hash_key =
            actions::hash_key_of(entry.get("ExplicitHashKey"), "explicitHashKey").ok()?;
        let shard = actions::shard_for(&ranges, &record);
        let to = match placement.place(&name, shard) {
            Placement::Local => None,
            Placement::Remote(addr) => Some(addr),
            Placement::Moving => Some(String::new()),
        };
        parts.entry(to).or_default().push(i);
    }
    if parts.keys().all(Option::is_none) {
        return None;
    }
    let mut results: Vec<Value> = vec![Value::Null; entries.len()];
    let mut encryption = Value::from("NONE");
    // Every owner's part at once: the call waits for the slowest owner's group commit, not
    // for each in turn.
    let answers = futures::future::join_all(parts.iter().map(|(to, members)| {
        let mut part = request.clone();
        part.insert(
            "Records".into(),
            Value::Array(members.iter().map(|&i| entries[i].clone()).collect()),
        );
        let name = &name;
        async move {
            match to.as_deref() {
                None => actions::dispatch(services, "PutRecords", part).await,
                Some("") => Err(ApiError::new(
                    ErrorKind::ShardMoving,
                    format!("shards of stream {name} are moving between nodes; retry shortly"),
                )),
                Some(addr) => forward(services, addr, "PutRecords", &part, headers).await,
            }
        }
    }))
    .await;
    for ((_, members), answer) in parts.iter().zip(answers) {
        let answered = answer
            .as_ref()
            .ok()
            .and_then(|a| a.get("Records")?.as_array());
        for (n, &i) in members.iter().enumerate() {
            results[i] = match (answered.and_then(|r| r.get(n)), &answer) {
                (Some(result), _) => result.clone(),
                (None, Err(error)) => json!({
                    "ErrorCode": error.kind.type_name(),
                    "ErrorMessage": error.message,
                }),
                (None, Ok(_)) => json!({
                    "ErrorCode": "InternalFailure",
                    "ErrorMessage": "Internal service failure: the owner did not answer for this record",
                }),
            };
        }
        if let Some(kind) = answer.as_ref().ok().and_then(|a| a.get("EncryptionType")) {
            encryption = kind.clone();
        }
    }
    let failed = results
        .iter()
        .filter(|r| r.get("ErrorCode").is_some())
        .count();
    Some(Ok(json!({
        "FailedRecordCount": failed,
        "Records": results,
        "EncryptionType": encryption,
    })))
}

/// The access key a request was signed with (its Authorization header's credential).
fn access_key(headers: &HeaderMap) -> Option<&str> {
    let authorization = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let credential = authorization.split("Credential=").nth(1)?;
    credential.split('/').next()
}

fn client() -> &'static Client<HttpConnector, Full<bytes::Bytes>> {
    static CLIENT: std::sync::OnceLock<Client<HttpConnector, Full<bytes::Bytes>>> =
        std::sync::OnceLock::new();
    CLIENT.get_or_init(|| {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        connector.set_nodelay(true);
        Client::builder(TokioExecutor::new()).build(connector)
    })
}

/// Sends `action` to the node at `addr` and returns its answer as its own.
async fn forward(
    services: &Services,
    addr: &str,
    action: &str,
    request: &Map<String, Value>,
    headers: &HeaderMap,
) -> Result<Value, ApiError> {
    let body = serde_json::to_vec(request).map_err(|e| ApiError::internal(e.to_string()))?;
    let target = format!("{TARGET_PREFIX}{action}");
    let key = access_key(headers).unwrap_or("sluice-node");
    // Open (no credentials): any signature is accepted; the owner only needs one present.
    let secret = services
        .auth
        .signing_secret(key)
        .ok()
        .flatten()
        .unwrap_or("sluice-node")
        .to_string();
    let content_type = "application/x-amz-json-1.1";
    let now = chrono::Utc::now().timestamp();
    let signed = crate::sigv4::sign_json_post(
        addr,
        &target,
        &body,
        (key, &secret),
        REGION,
        "kinesis",
        content_type,
        now,
    );
    let mut builder = Request::post(format!("http://{addr}/"))
        .header(header::HOST, addr)
        .header(header::CONTENT_TYPE, content_type)
        .header("x-amz-target", &target)
        .header(FORWARDED_HEADER, "1");
    for (name, value) in signed {
        builder = builder.header(name, value);
    }
    let unreachable = |e: &dyn std::fmt::Display| {
        ApiError::new(
            ErrorKind::ShardMoving,
            format!("the node owning this shard ({addr}) did not answer: {e}; retry shortly"),
        )
    };
    let request = builder
        .body(Full::new(bytes::Bytes::from(body)))
        .map_err(|e| unreachable(&e))?;
    let response = tokio::time::timeout(FORWARD_TIMEOUT, client().request(request))
        .await
        .map_err(|e| unreachable(&e))?
        .map_err(|e| unreachable(&e))?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| unreachable(&e))?
        .to_bytes();
    if status.is_success() {
        if body.is_empty() {
            return Ok(json!({}));
        }
        return serde_json::from_slice(&body).map_err(|e| unreachable(&e));
    }
    let envelope: Value = serde_json::from_slice(&body).unwrap_or_default();
    let type_name = envelope
        .get("__type")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let message = envelope
        .get("message")
        .or_else(|| envelope.get("Message"))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let kind = match ErrorKind::from_type_name(type_name) {
        // Answered `InternalFailure` all the same, but not logged again here: the owner logged
        // it if it was a failure, and a shard moving is none.
        Some(ErrorKind::InternalFailure) => ErrorKind::ShardMoving,
        Some(kind) => kind,
        None => ErrorKind::InternalFailure,
    };
    Err(ApiError::new(kind, message))
}
