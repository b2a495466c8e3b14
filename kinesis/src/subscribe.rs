//! `SubscribeToShard`: enhanced fan-out. The answer is a stream of event-stream messages
//! ([`crate::eventstream`]) over one HTTP response (HTTP/2 or HTTP/1.1 chunked): first an
//! `initial-response`, then `SubscribeToShardEvent`s, each with the records appended since the
//! last (`Records`), where to go on from (`ContinuationSequenceNumber`, for
//! `AFTER_SEQUENCE_NUMBER`), `MillisBehindLatest`, and at the end of a closed shard its
//! `ChildShards`. Records are pushed as they are appended (the stream's append watch wakes the
//! subscription; on a busy shard, appends less than [`EVENT_GAP`] apart share an event), with
//! an empty event at least every [`HEARTBEAT`]. A subscription lasts five
//! minutes, as on AWS; a consumer has at most one per shard (`ResourceInUseException`), and
//! deregistering the consumer ends its subscriptions.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use parking_lot::Mutex;
use serde_json::{Map, Value, json};
use sluice_engine::sequence::{format_sequence_number, parse_sequence_number};
use sluice_engine::{ShardIterator, StartPosition};

use crate::Services;
use crate::actions::{
    OutRecord, ReadLimits, check_sequence_number, check_shard_id, read_records, shard_index,
    str_field,
};
use crate::consumers;
use crate::error::{ACCOUNT, ApiError, ErrorKind, Validation};
use crate::eventstream::Message;
use crate::reshard::child_shards;
use crate::shared_events::{PreparedEvent, SharedEvents};
use crate::wire::Protocol;

/// How long a subscription lasts.
pub const LIFETIME: Duration = Duration::from_secs(5 * 60);
/// The longest a subscriber waits for an event when nothing is appended.
pub const HEARTBEAT: Duration = Duration::from_secs(5);
/// The least time between two events of a subscription at the tail of a busy shard: records
/// appended meanwhile go out together in the next event. A subscription catching up sends its
/// events back to back.
pub const EVENT_GAP: Duration = Duration::from_millis(5);
/// The most records and data in one event.
const EVENT_LIMITS: ReadLimits = ReadLimits {
    records: 10_000,
    bytes: 2 * 1024 * 1024,
};

/// A subscription in progress: its id, and how to end it.
type Active = (u64, Arc<tokio::sync::Notify>);

/// The subscriptions in progress, one per consumer (ARN) and shard.
#[derive(Debug, Default)]
pub(crate) struct Subscriptions {
    active: Mutex<HashMap<(String, u32), Active>>,
    next_id: AtomicU64,
    /// Events read once for all the subscriptions at one place of a shard.
    shared: Arc<SharedEvents>,
}

impl Subscriptions {
    /// Ends every subscription of consumer `arn`.
    pub(crate) fn end_consumer(&self, arn: &str) {
        for ((consumer, _), (_, end)) in self.active.lock().iter() {
            if consumer == arn {
                end.notify_one();
            }
        }
    }

    /// How many subscriptions are pushing records now.
    pub(crate) fn count(&self) -> usize {
        self.active.lock().len()
    }
}

/// One subscription's place in [`Subscriptions`], given up when the subscription ends.
struct Lease {
    services: Arc<Services>,
    key: (String, u32),
    id: u64,
    end: Arc<tokio::sync::Notify>,
}

impl Lease {
    fn take(
        services: &Arc<Services>,
        consumer: &str,
        stream: &str,
        shard: u32,
    ) -> Result<Self, ApiError> {
        let subscriptions = &services.subscriptions;
        let key = (consumer.to_string(), shard);
        let mut active = subscriptions.active.lock();
        if active.contains_key(&key) {
            return Err(ApiError::new(
                ErrorKind::ResourceInUse,
                format!(
                    "Another active subscription exists for this consumer: {ACCOUNT}:{stream}:{}:{consumer}",
                    sluice_engine::sequence::shard_id(shard)
                ),
            ));
        }
        let id = subscriptions.next_id.fetch_add(1, Ordering::Relaxed);
        let end = Arc::new(tokio::sync::Notify::new());
        active.insert(key.clone(), (id, Arc::clone(&end)));
        Ok(Self {
            services: Arc::clone(services),
            key,
            id,
            end,
        })
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut active = self.services.subscriptions.active.lock();
        if active.get(&self.key).is_some_and(|(id, _)| *id == self.id) {
            active.remove(&self.key);
        }
    }
}

/// Checks a `SubscribeToShard` request, as AWS checks it, and starts the subscription.
pub(crate) fn subscribe(
    services: &Arc<Services>,
    request: &Map<String, Value>,
    protocol: Protocol,
) -> Result<Response, ApiError> {
    let engine = &services.engine;
    let mut v = Validation::default();
    if str_field(request, "ConsumerARN")?.is_none() {
        v.missing("consumerARN");
    }
    let shard_text = str_field(request, "ShardId")?;
    match shard_text {
        None => v.missing("shardId"),
        Some(id) => check_shard_id(&mut v, id, "shardId"),
    }
    let position = match request.get("StartingPosition") {
        None | Some(Value::Null) => {
            v.missing("startingPosition");
            None
        }
        Some(Value::Object(position)) => {
            let kind = str_field(position, "Type")?;
            match kind {
                None => v.missing("startingPosition.type"),
                Some(kind) => v.check(
                    matches!(kind, "AT_SEQUENCE_NUMBER" | "AFTER_SEQUENCE_NUMBER" | "TRIM_HORIZON" | "LATEST" | "AT_TIMESTAMP"),
                    kind,
                    "startingPosition.type",
                    "Member must satisfy enum value set: [AFTER_SEQUENCE_NUMBER, AT_SEQUENCE_NUMBER, AT_TIMESTAMP, TRIM_HORIZON, LATEST]",
                ),
            }
            if let Some(sequence) = str_field(position, "SequenceNumber")? {
                check_sequence_number(&mut v, sequence, "startingPosition.sequenceNumber");
            }
            Some(position)
        }
        Some(other) => {
            return Err(ApiError::serialization(format!(
                "StartingPosition must be a structure, not {other}"
            )));
        }
    };
    v.finish()?;
    let (Some(shard_text), Some(position)) = (shard_text, position) else {
        return Err(ApiError::internal("checked above"));
    };
    let (stream, consumer) = consumers::find(services, request)?;
    if consumer.status(engine.clock().now_millis()) != "ACTIVE" {
        return Err(ApiError::new(
            ErrorKind::ResourceInUse,
            format!(
                "Consumer {}, account {ACCOUNT} is not ACTIVE.",
                consumer.arn
            ),
        ));
    }
    let shard = shard_index(&stream, shard_text)?;
    let kind = str_field(position, "Type")?.unwrap_or_default();
    let start = match kind {
        "TRIM_HORIZON" => StartPosition::TrimHorizon,
        "LATEST" => StartPosition::Latest,
        "AT_TIMESTAMP" => match position.get("Timestamp") {
            Some(Value::Number(n)) => {
                StartPosition::AtTimestamp((n.as_f64().unwrap_or(0.0) * 1000.0).round() as i64)
            }
            _ => {
                return Err(ApiError::invalid(
                    "Timestamp is required for StartingPosition type AT_TIMESTAMP.",
                ));
            }
        },
        _ => {
            let Some(sequence) = str_field(position, "SequenceNumber")? else {
                return Err(ApiError::invalid(format!(
                    "SequenceNumber is required for StartingPosition type {kind}."
                )));
            };
            let (shard_of, _) = parse_sequence_number(sequence).map_err(|_| {
                ApiError::invalid(format!(
                    "StartingSequenceNumber {sequence} used in SubscribeToShard on shard {shard_text} in stream {} under account {ACCOUNT} is invalid.",
                    stream.name()
                ))
            })?;
            if shard_of != shard {
                return Err(ApiError::invalid(format!(
                    "Invalid StartingSequenceNumber. It encodes {}, while it was used in a call to a shard with {shard_text}",
                    sluice_engine::sequence::shard_id(shard_of)
                )));
            }
            if kind == "AT_SEQUENCE_NUMBER" {
                StartPosition::AtSequenceNumber(sequence.to_string())
            } else {
                StartPosition::AfterSequenceNumber(sequence.to_string())
            }
        }
    };
    let from = ShardIterator::new(&stream, shard, start)?.position();
    let lease = Lease::take(services, &consumer.arn, stream.name(), shard)?;
    let (sender, receiver) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    tokio::spawn(push(
        Arc::clone(services),
        stream,
        shard,
        from,
        lease,
        protocol,
        sender,
    ));
    let body = Body::from_stream(tokio_stream_of(receiver));
    let mut response = (StatusCode::OK, body).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/vnd.amazon.eventstream"),
    );
    Ok(response)
}

fn tokio_stream_of(
    mut receiver: tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>,
) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> {
    futures::stream::poll_fn(move |cx| receiver.poll_recv(cx))
}

fn payload_type(protocol: Protocol) -> &'static str {
    match protocol {
        Protocol::Json => "application/json",
        Protocol::Cbor => "application/x-amz-cbor-1.1",
    }
}

/// A `SubscribeToShardEvent`'s payload.
#[derive(serde::Serialize)]
struct Event<'a> {
    #[serde(rename = "Records")]
    records: &'a [OutRecord],
    #[serde(rename = "ContinuationSequenceNumber")]
    continuation: String,
    #[serde(rename = "MillisBehindLatest")]
    millis_behind: i64,
    #[serde(rename = "ChildShards", skip_serializing_if = "Option::is_none")]
    child_shards: Option<Vec<Value>>,
}

/// Reads shard `shard` from `position` and encodes the `SubscribeToShardEvent` every
/// subscription there sends: its records, where to go on from, how far behind the tail it is,
/// and at the end of a closed shard its children.
fn prepare(
    services: &Services,
    stream: &sluice_engine::Stream,
    shard: u32,
    position: u64,
    protocol: Protocol,
) -> Result<PreparedEvent, ApiError> {
    let read = read_records(services, stream, shard, position, EVENT_LIMITS)?;
    let closed = stream
        .shard(shard)
        .and_then(|s| s.ending_seq())
        .is_some_and(|end| read.next_seq > end);
    let records = read.records.len();
    let event = Event {
        records: &read.records,
        continuation: format_sequence_number(shard, read.next_seq.saturating_sub(1)),
        millis_behind: read.millis_behind,
        child_shards: closed.then(|| child_shards(stream, shard)),
    };
    // JSON is written straight from the records; CBOR goes through a JSON value, whose blobs
    // and times the wire encoding converts.
    let payload = match protocol {
        Protocol::Json => serde_json::to_vec(&event),
        Protocol::Cbor => serde_json::to_value(&event).map(|value| protocol.encode(&value)),
    }
    .map_err(|e| ApiError::internal(format!("an event could not be encoded: {e}")))?;
    let frame = Message::event("SubscribeToShardEvent", payload_type(protocol), payload).encode();
    Ok(PreparedEvent {
        frame: Bytes::from(frame),
        records,
        next_seq: read.next_seq,
        full: read.full,
        closed,
    })
}

/// The subscription: pushes events until its five minutes are up, the shard is read to its
/// end, the consumer is deregistered or the subscriber goes away.
async fn push(
    services: Arc<Services>,
    stream: Arc<sluice_engine::Stream>,
    shard: u32,
    mut position: u64,
    lease: Lease,
    protocol: Protocol,
    sender: tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
) {
    let content_type = payload_type(protocol);
    let send = |message: Message| {
        let sender = sender.clone();
        async move { sender.send(Ok(Bytes::from(message.encode()))).await.is_ok() }
    };
    if !send(Message::event(
        "initial-response",
        content_type,
        protocol.encode(&json!({})),
    ))
    .await
    {
        return;
    }
    let deadline = tokio::time::Instant::now() + LIFETIME;
    let mut appends = stream.watch_appends();
    let tail = services
        .subscriptions
        .shared
        .join(stream.definition().id, shard, protocol);
    let mut last_event: Option<tokio::time::Instant> = None;
    let mut catching_up = true;
    loop {
        // At the tail, records appended within EVENT_GAP of the last event wait for the next
        // one, so a busy shard sends fuller events rather than one per append.
        if let (false, Some(at)) = (catching_up, last_event) {
            let due = at + EVENT_GAP;
            if tokio::time::Instant::now() < due {
                tokio::select! {
                    () = tokio::time::sleep_until(due) => {}
                    () = lease.end.notified() => return,
                    () = sender.closed() => return,
                }
            }
        }
        let seen = *appends.borrow_and_update();
        let read = tail
            .event(position, seen, || {
                let stream = Arc::clone(&stream);
                let services = Arc::clone(&services);
                async move {
                    tokio::task::spawn_blocking(move || {
                        prepare(&services, &stream, shard, position, protocol)
                    })
                    .await
                    .map_err(|e| ApiError::internal(format!("a read failed: {e}")))?
                }
            })
            .await;
        let event = match read {
            Ok(event) => event,
            Err(error) => {
                let payload = protocol.encode(&json!({ "message": error.message }));
                send(Message::exception(
                    error.kind.type_name(),
                    content_type,
                    payload,
                ))
                .await;
                return;
            }
        };
        position = event.next_seq;
        catching_up = event.full;
        let closed = event.closed;
        let heartbeat_due = last_event.is_none_or(|at| at.elapsed() >= HEARTBEAT);
        if event.records > 0 || closed || heartbeat_due {
            if sender.send(Ok(event.frame.clone())).await.is_err() {
                return;
            }
            last_event = Some(tokio::time::Instant::now());
        }
        if closed || tokio::time::Instant::now() >= deadline {
            return;
        }
        // More to read: a limit cut the event short, or it was read before an append this
        // subscription has not sent yet.
        if event.full || stream.shard(shard).is_some_and(|s| s.next_seq() > position) {
            continue;
        }
        let wake = last_event.map_or(deadline, |at| (at + HEARTBEAT).min(deadline));
        tokio::select! {
            changed = appends.changed() => {
                if changed.is_err() {
                    // The stream was deleted.
                    let payload = protocol.encode(&json!({ "message": format!("Stream {} under account {ACCOUNT} not found.", stream.name()) }));
                    send(Message::exception("ResourceNotFoundException", content_type, payload)).await;
                    return;
                }
            }
            () = tokio::time::sleep_until(wake) => {}
            () = lease.end.notified() => return,
            () = sender.closed() => return,
        }
    }
}
