//! The Kinesis actions, each reading a request object and answering a response object, on the
//! engine's own streams: a stream created here is a `raw` stream SQL reads, and records put here
//! feed pumps and delivery streams like any other.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{Array, AsArray};
use arrow::datatypes::TimestampMillisecondType;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Map, Value, json};
use sluice_engine::routing::HashKeyRange;
use sluice_engine::sequence::{format_sequence_number, parse_sequence_number, shard_id};
use sluice_engine::{
    Engine, MAX_RETENTION_HOURS, MIN_RETENTION_HOURS, RecordRef, Shard, ShardIterator,
    StartPosition, Stream, StreamSpec,
};

use crate::Services;
use crate::consumers;
use crate::error::{ACCOUNT, ApiError, ErrorKind, REGION, Validation};
use crate::reshard::{ShardFilter, child_shards, merge_shards, split_shard, update_shard_count};
use crate::settings;

/// Iterators stop working this long after they were handed out, as in Kinesis.
pub const ITERATOR_TTL_MS: i64 = 5 * 60 * 1000;
/// The most records one GetRecords returns.
const MAX_GET_RECORDS: usize = 10_000;
/// The most bytes of data one GetRecords returns.
const MAX_GET_BYTES: usize = 10 * 1024 * 1024;
/// The most entries in one PutRecords.
const MAX_PUT_RECORDS: usize = 500;
/// The most data in one PutRecords (data and partition keys).
const MAX_PUT_BYTES: usize = 5 * 1024 * 1024;
const MAX_RECORD_BYTES: usize = 1024 * 1024;
const STREAM_NAME_PATTERN: &str = "[a-zA-Z0-9_.-]+";
const STREAM_ARN_PATTERN: &str = "arn:aws.*:kinesis:.*:\\d{12}:stream/\\S+";

/// The operations Sluice answers (others are `UnknownOperationException`, as AWS answers an
/// operation it does not have).
pub const ACTIONS: &[&str] = &[
    "CreateStream",
    "DeleteStream",
    "DescribeStream",
    "DescribeStreamSummary",
    "ListStreams",
    "ListShards",
    "PutRecord",
    "PutRecords",
    "GetShardIterator",
    "GetRecords",
    "IncreaseStreamRetentionPeriod",
    "DecreaseStreamRetentionPeriod",
    "AddTagsToStream",
    "RemoveTagsFromStream",
    "ListTagsForStream",
    "SplitShard",
    "MergeShards",
    "UpdateShardCount",
    "RegisterStreamConsumer",
    "DescribeStreamConsumer",
    "ListStreamConsumers",
    "DeregisterStreamConsumer",
    "SubscribeToShard",
    "UpdateStreamMode",
    "DescribeLimits",
    "EnableEnhancedMonitoring",
    "DisableEnhancedMonitoring",
    "StartStreamEncryption",
    "StopStreamEncryption",
    "PutResourcePolicy",
    "GetResourcePolicy",
    "DeleteResourcePolicy",
];

/// Runs `action` with `request`. Engine calls that touch the disk run on a blocking thread.
pub(crate) async fn dispatch(
    services: &Arc<Services>,
    action: &str,
    request: Map<String, Value>,
) -> Result<Value, ApiError> {
    let services = Arc::clone(services);
    let action = action.to_string();
    tokio::task::spawn_blocking(move || run(&services, &action, &request))
        .await
        .map_err(|e| ApiError::internal(format!("the request failed: {e}")))?
}

fn run(
    services: &Arc<Services>,
    action: &str,
    request: &Map<String, Value>,
) -> Result<Value, ApiError> {
    let engine = &services.engine;
    match action {
        "CreateStream" => create_stream(services, request),
        "DeleteStream" => delete_stream(services, request),
        "DescribeStream" => describe_stream(engine, request),
        "DescribeStreamSummary" => describe_stream_summary(services, request),
        "ListStreams" => list_streams(engine, request),
        "UpdateStreamMode" => settings::update_stream_mode(services, request),
        "DescribeLimits" => settings::describe_limits(services),
        "EnableEnhancedMonitoring" => settings::enhanced_monitoring(services, request, true),
        "DisableEnhancedMonitoring" => settings::enhanced_monitoring(services, request, false),
        "StartStreamEncryption" => settings::stream_encryption(services, request, true),
        "StopStreamEncryption" => settings::stream_encryption(services, request, false),
        "PutResourcePolicy" => settings::put_resource_policy(services, request),
        "GetResourcePolicy" => settings::get_resource_policy(services, request),
        "DeleteResourcePolicy" => settings::delete_resource_policy(services, request),
        "ListShards" => list_shards(engine, request),
        "PutRecord" => put_record(services, request),
        "PutRecords" => put_records(services, request),
        "GetShardIterator" => get_shard_iterator(engine, request),
        "GetRecords" => get_records(services, request),
        "IncreaseStreamRetentionPeriod" => change_retention(engine, request, true),
        "DecreaseStreamRetentionPeriod" => change_retention(engine, request, false),
        "AddTagsToStream" => add_tags(engine, request),
        "RemoveTagsFromStream" => remove_tags(engine, request),
        "ListTagsForStream" => list_tags(engine, request),
        "SplitShard" | "MergeShards" | "UpdateShardCount" if services.placement.is_some() => {
            Err(ApiError::invalid(format!(
                "{action} is not supported when Sluice runs as a cluster yet: streams keep the shards they were created with"
            )))
        }
        "SplitShard" => split_shard(engine, request),
        "MergeShards" => merge_shards(engine, request),
        "UpdateShardCount" => update_shard_count(engine, request),
        "RegisterStreamConsumer" => consumers::register(services, request),
        "DescribeStreamConsumer" => consumers::describe(services, request),
        "ListStreamConsumers" => consumers::list(services, request),
        "DeregisterStreamConsumer" => consumers::deregister(services, request),
        other => Err(ApiError::new(
            ErrorKind::UnknownOperation,
            format!("Operation {other} is not supported by Sluice's Kinesis API"),
        )),
    }
}

pub(crate) fn arn(name: &str) -> String {
    format!("arn:aws:kinesis:{REGION}:{ACCOUNT}:stream/{name}")
}

pub(crate) fn str_field<'a>(
    request: &'a Map<String, Value>,
    name: &str,
) -> Result<Option<&'a str>, ApiError> {
    match request.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(ApiError::serialization(format!(
            "{name} must be a string, not {other}"
        ))),
    }
}

pub(crate) fn int_field(request: &Map<String, Value>, name: &str) -> Result<Option<i64>, ApiError> {
    match request.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_i64()
            .map(Some)
            .ok_or_else(|| ApiError::serialization(format!("{name} must be an integer, not {n}"))),
        Some(other) => Err(ApiError::serialization(format!(
            "{name} must be a number, not {other}"
        ))),
    }
}

/// A page size member (`Limit`, `MaxResults`): 1 to 10,000, `default` when absent.
fn page_size(
    request: &Map<String, Value>,
    name: &str,
    at: &str,
    default: i64,
) -> Result<i64, ApiError> {
    let size = int_field(request, name)?.unwrap_or(default);
    let mut v = Validation::default();
    check_range(&mut v, size, at, 1, 10_000);
    v.finish()?;
    Ok(size)
}

/// The stream a request names, by `StreamName` or `StreamARN`.
pub(crate) fn stream_name(request: &Map<String, Value>) -> Result<String, ApiError> {
    let mut v = Validation::default();
    let name = stream_name_into(request, &mut v)?;
    v.finish()?;
    Ok(name)
}

/// The stream a request names (`StreamName`, or the name in `StreamARN`), the constraints of
/// both checked into `v` with the request's other members: AWS reports every constraint
/// together, and only then looks the stream up ([`find_stream`]).
pub(crate) fn stream_name_into(
    request: &Map<String, Value>,
    v: &mut Validation,
) -> Result<String, ApiError> {
    let name = str_field(request, "StreamName")?;
    if let Some(name) = name {
        check_stream_name(v, name, "streamName");
    }
    let arn_name = match str_field(request, "StreamARN")? {
        Some(arn) => check_stream_arn(v, arn, "streamARN"),
        None => None,
    };
    Ok(match (name, arn_name) {
        (Some(name), Some(from_arn)) => {
            if name != from_arn {
                v.refuse_after_constraints(ApiError::invalid(format!(
                    "StreamARN {} and StreamName {name} do not name the same stream.",
                    arn(from_arn)
                )));
            }
            name.to_string()
        }
        (Some(name), None) => name.to_string(),
        (None, Some(from_arn)) => from_arn.to_string(),
        (None, None) => {
            if str_field(request, "StreamARN")?.is_none() {
                v.refuse_after_constraints(ApiError::invalid(
                    "Either StreamName or StreamARN should be provided.",
                ));
            }
            String::new()
        }
    })
}

/// Checks stream ARN `arn` of member `at` as AWS does (length, pattern); the stream name in
/// it when it matches.
pub(crate) fn check_stream_arn<'a>(v: &mut Validation, arn: &'a str, at: &str) -> Option<&'a str> {
    check_length(v, arn, at, 1, 2048);
    let parsed = stream_of_arn(arn);
    v.check(
        parsed.is_some() || arn.is_empty(),
        arn,
        at,
        &format!("Member must satisfy regular expression pattern: {STREAM_ARN_PATTERN}"),
    );
    parsed
}

/// The stream name in a stream ARN (`arn:aws…:kinesis:<region>:<12 digits>:stream/<name>`), as
/// AWS's pattern for `StreamARN` matches it; `None` for anything else.
pub(crate) fn stream_of_arn(arn: &str) -> Option<&str> {
    let rest = arn.strip_prefix("arn:aws")?;
    let (_, after_service) = rest.split_once(":kinesis:")?;
    let (before, name) = after_service.rsplit_once(":stream/")?;
    let account = before.rsplit(':').next()?;
    let valid = account.len() == 12
        && account.bytes().all(|b| b.is_ascii_digit())
        && !name.is_empty()
        && !name.chars().any(char::is_whitespace);
    valid.then_some(name)
}

/// The stream called `name`.
pub(crate) fn find_stream(engine: &Engine, name: &str) -> Result<Arc<Stream>, ApiError> {
    engine
        .try_stream(name)
        .ok_or_else(|| ApiError::not_found(name))
}

fn check_stream_name(v: &mut Validation, name: &str, at: &str) {
    check_length(v, name, at, 1, 128);
    v.check(
        name.is_empty()
            || name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')),
        name,
        at,
        &format!("Member must satisfy regular expression pattern: {STREAM_NAME_PATTERN}"),
    );
}

/// The stream a request names and what `members` makes of its other members, in AWS's order:
/// every constraint of the name and of the members reported together, then whether the stream
/// exists.
pub(crate) fn checked_stream<T>(
    engine: &Engine,
    request: &Map<String, Value>,
    members: impl FnOnce(&mut Validation) -> Result<T, ApiError>,
) -> Result<(Arc<Stream>, T), ApiError> {
    let mut v = Validation::default();
    let name = stream_name_into(request, &mut v)?;
    let members = members(&mut v)?;
    v.finish()?;
    Ok((find_stream(engine, &name)?, members))
}

/// Checks a shard id member as AWS does: 1 to 128 characters of `[a-zA-Z0-9_.-]`.
pub(crate) fn check_shard_id(v: &mut Validation, id: &str, at: &str) {
    check_length(v, id, at, 1, 128);
    v.check(
        id.is_empty()
            || id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')),
        id,
        at,
        "Member must satisfy regular expression pattern: [a-zA-Z0-9_.-]+",
    );
}

/// Checks a sequence number member as AWS does: `0|([1-9]\d{0,128})`.
pub(crate) fn check_sequence_number(v: &mut Validation, sequence: &str, at: &str) {
    let ok = sequence == "0"
        || (!sequence.is_empty()
            && sequence.len() <= 129
            && !sequence.starts_with('0')
            && sequence.bytes().all(|b| b.is_ascii_digit()));
    v.check(
        ok,
        sequence,
        at,
        "Member must satisfy regular expression pattern: 0|([1-9]\\d{0,128})",
    );
}

/// Checks that `value` of member `at` lies in `min..=max`, worded as AWS words it.
pub(crate) fn check_range(v: &mut Validation, value: i64, at: &str, min: i64, max: i64) {
    let text = value.to_string();
    v.check(
        value >= min,
        &text,
        at,
        &format!("Member must have value greater than or equal to {min}"),
    );
    v.check(
        value <= max,
        &text,
        at,
        &format!("Member must have value less than or equal to {max}"),
    );
}

/// Checks the length of string `value` of member `at`, worded as AWS words it.
pub(crate) fn check_length(v: &mut Validation, value: &str, at: &str, min: usize, max: usize) {
    let length = value.chars().count();
    v.check(
        length >= min,
        value,
        at,
        &format!("Member must have length greater than or equal to {min}"),
    );
    v.check(
        length <= max,
        value,
        at,
        &format!("Member must have length less than or equal to {max}"),
    );
}

/// The stream a request names, when it has no other members to check first.
pub(crate) fn stream(
    engine: &Engine,
    request: &Map<String, Value>,
) -> Result<Arc<Stream>, ApiError> {
    checked_stream(engine, request, |_| Ok(())).map(|(stream, ())| stream)
}

fn create_stream(services: &Services, request: &Map<String, Value>) -> Result<Value, ApiError> {
    let engine = &services.engine;
    let name = str_field(request, "StreamName")?
        .unwrap_or_default()
        .to_string();
    let shards = int_field(request, "ShardCount")?;
    let mut v = Validation::default();
    let on_demand = settings::stream_mode(request, &mut v, false)?.unwrap_or(false);
    if request.get("StreamName").is_none() {
        v.missing("streamName");
    } else {
        check_stream_name(&mut v, &name, "streamName");
    }
    if let Some(count) = shards {
        v.check(
            count >= 1,
            &count.to_string(),
            "shardCount",
            "Member must have value greater than or equal to 1",
        );
    }
    v.finish()?;
    // On-demand streams start with four shards, as Kinesis's.
    let shards = match (shards, on_demand) {
        (Some(count), _) => count,
        (None, true) => 4,
        (None, false) => {
            return Err(ApiError::invalid(
                "ShardCount is required for a PROVISIONED stream",
            ));
        }
    };
    if shards > 1024 {
        return Err(ApiError::new(
            ErrorKind::LimitExceeded,
            format!(
                "This request would exceed the shard limit for the account {ACCOUNT} in {REGION}. Current shard count for the account: 0. Limit: 1024. Number of additional shards that would have resulted from this request: {shards}."
            ),
        ));
    }
    if on_demand {
        settings::check_on_demand_limit(engine)?;
    }
    if on_demand && services.placement.is_some() {
        return Err(ApiError::invalid(
            "ON_DEMAND streams are not supported when Sluice runs as a cluster yet: give a ShardCount (PROVISIONED)",
        ));
    }
    let stream = engine.create_stream(StreamSpec::raw(name, shards as u32), false)?;
    if on_demand {
        settings::set_on_demand(services, &stream, true)?;
    }
    if let Some(placement) = &services.placement
        && let Err(reason) = placement.stream_created(&stream)
    {
        // Not known to the cluster: not created at all.
        let _ = engine.drop_stream(stream.name(), true);
        return Err(ApiError::internal(format!(
            "the stream could not be registered with the cluster: {reason}"
        )));
    }
    Ok(json!({}))
}

/// Deletes a stream: refused while it has registered consumers unless
/// `EnforceConsumerDeletion` is true, as on AWS; its consumers, subscriptions and on-demand
/// meter go with it.
fn delete_stream(services: &Services, request: &Map<String, Value>) -> Result<Value, ApiError> {
    let engine = &services.engine;
    let stream = stream(engine, request)?;
    let name = stream.name().to_string();
    let enforce = matches!(
        request.get("EnforceConsumerDeletion"),
        Some(Value::Bool(true))
    );
    let registered = consumers::consumers(services, &stream)?;
    if !registered.is_empty() && !enforce {
        return Err(ApiError::new(
            ErrorKind::ResourceInUse,
            format!(
                "Stream {name} under account {ACCOUNT} has {} registered consumer(s); deregister them or set EnforceConsumerDeletion to true.",
                registered.len()
            ),
        ));
    }
    for consumer in &registered {
        services.subscriptions.end_consumer(&consumer.arn);
    }
    services.on_demand.forget(&stream);
    drop(stream);
    engine.drop_stream(&name, false).map_err(|e| match e {
        sluice_engine::Error::InvalidArgument(message) => {
            ApiError::new(ErrorKind::ResourceInUse, message)
        }
        other => other.into(),
    })?;
    if let Some(placement) = &services.placement
        && let Err(reason) = placement.stream_deleted(&name)
    {
        log::error!("stream {name} was deleted here but the cluster was not told: {reason}");
    }
    Ok(json!({}))
}

/// A shard as DescribeStream and ListShards show it, lineage and ending sequence number included.
pub(crate) fn shard_json(shard: &Shard) -> Value {
    let index = shard.index();
    let range = shard.hash_key_range();
    let mut sequence_range = json!({
        "StartingSequenceNumber": format_sequence_number(index, shard.trim_horizon()),
    });
    if let Some(end) = shard.ending_seq() {
        sequence_range["EndingSequenceNumber"] = Value::String(format_sequence_number(index, end));
    }
    let mut value = json!({
        "ShardId": shard_id(index),
        "HashKeyRange": {
            "StartingHashKey": range.start.to_string(),
            "EndingHashKey": range.end.to_string(),
        },
        "SequenceNumberRange": sequence_range,
    });
    if let Some(parent) = shard.parent() {
        value["ParentShardId"] = Value::String(shard_id(parent));
    }
    if let Some(adjacent) = shard.adjacent_parent() {
        value["AdjacentParentShardId"] = Value::String(shard_id(adjacent));
    }
    value
}

fn shards_json(stream: &Stream) -> Vec<Value> {
    stream.shards().iter().map(|s| shard_json(s)).collect()
}

fn created_seconds(stream: &Stream) -> f64 {
    stream.definition().created_at_ms as f64 / 1000.0
}

fn describe_stream(engine: &Engine, request: &Map<String, Value>) -> Result<Value, ApiError> {
    let (stream, (limit, after)) = checked_stream(engine, request, |v| {
        let limit = int_field(request, "Limit")?;
        if let Some(limit) = limit {
            check_range(v, limit, "limit", 1, 10_000);
        }
        let after = str_field(request, "ExclusiveStartShardId")?;
        if let Some(after) = after {
            check_shard_id(v, after, "exclusiveStartShardId");
        }
        Ok((limit.unwrap_or(100) as usize, after))
    })?;
    let name = stream.name();
    let shards: Vec<Value> = shards_json(&stream)
        .into_iter()
        .filter(|s| after.is_none_or(|a| s["ShardId"].as_str().is_some_and(|id| id > a)))
        .collect();
    let has_more = shards.len() > limit;
    let mut description = json!({
        "StreamName": name,
        "StreamARN": arn(name),
        "StreamStatus": "ACTIVE",
        "Shards": shards.into_iter().take(limit).collect::<Vec<_>>(),
        "HasMoreShards": has_more,
        "RetentionPeriodHours": stream.retention_hours(),
        "StreamCreationTimestamp": created_seconds(&stream),
    });
    settings::load(&stream)?.describe(&mut description);
    Ok(json!({ "StreamDescription": description }))
}

fn describe_stream_summary(
    services: &Services,
    request: &Map<String, Value>,
) -> Result<Value, ApiError> {
    let stream = stream(&services.engine, request)?;
    let name = stream.name();
    let mut summary = json!({
        "StreamName": name,
        "StreamARN": arn(name),
        "StreamStatus": "ACTIVE",
        "RetentionPeriodHours": stream.retention_hours(),
        "StreamCreationTimestamp": created_seconds(&stream),
        "OpenShardCount": stream.open_shards().len(),
        "ConsumerCount": consumers::consumers(services, &stream)?.len(),
    });
    settings::load(&stream)?.describe(&mut summary);
    Ok(json!({ "StreamDescriptionSummary": summary }))
}

fn list_streams(engine: &Engine, request: &Map<String, Value>) -> Result<Value, ApiError> {
    let limit = page_size(request, "Limit", "limit", 100)?;
    // A NextToken is the name of the last stream of the previous page.
    let after = match str_field(request, "NextToken")? {
        Some(token) => Some(decode_token(token)?),
        None => str_field(request, "ExclusiveStartStreamName")?.map(String::from),
    };
    let mut streams = engine.streams();
    streams.sort_by(|a, b| a.name().cmp(b.name()));
    let remaining: Vec<Arc<Stream>> = streams
        .into_iter()
        .filter(|s| after.as_deref().is_none_or(|a| s.name() > a))
        .collect();
    let page: Vec<&Arc<Stream>> = remaining.iter().take(limit as usize).collect();
    let has_more = remaining.len() > page.len();
    let mut summaries = Vec::with_capacity(page.len());
    for s in &page {
        summaries.push(json!({
            "StreamName": s.name(),
            "StreamARN": arn(s.name()),
            "StreamStatus": "ACTIVE",
            "StreamModeDetails": {"StreamMode": settings::load(s)?.mode()},
            "StreamCreationTimestamp": created_seconds(s),
        }));
    }
    let mut response = json!({
        "StreamNames": page.iter().map(|s| s.name()).collect::<Vec<_>>(),
        "HasMoreStreams": has_more,
        "StreamSummaries": summaries,
    });
    if has_more && let Some(last) = page.last() {
        response["NextToken"] = Value::String(encode_token(last.name()));
    }
    Ok(response)
}

fn encode_token(text: &str) -> String {
    STANDARD.encode(text)
}

fn decode_token(token: &str) -> Result<String, ApiError> {
    STANDARD
        .decode(token)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| ApiError::invalid(format!("NextToken '{token}' is not valid")))
}

fn list_shards(engine: &Engine, request: &Map<String, Value>) -> Result<Value, ApiError> {
    // A NextToken carries the stream and the last shard listed.
    let (name, after) = match str_field(request, "NextToken")? {
        Some(token) => {
            if request.contains_key("StreamName") {
                return Err(ApiError::invalid(
                    "NextToken and StreamName cannot be provided together.",
                ));
            }
            let decoded = decode_token(token)?;
            let (name, after) = decoded
                .split_once('\n')
                .ok_or_else(|| ApiError::invalid(format!("NextToken '{token}' is not valid")))?;
            (name.to_string(), Some(after.to_string()))
        }
        None => (
            stream_name(request)?,
            str_field(request, "ExclusiveStartShardId")?.map(String::from),
        ),
    };
    let stream = engine
        .try_stream(&name)
        .ok_or_else(|| ApiError::not_found(&name))?;
    let max = page_size(request, "MaxResults", "maxResults", 1000)?;
    let filter = ShardFilter::parse(request.get("ShardFilter"))?;
    let all = stream.shards();
    let shards: Vec<Value> = all
        .iter()
        .filter(|shard| {
            let id = shard_id(shard.index());
            after.as_deref().is_none_or(|a| id.as_str() > a) && filter.keeps(shard, &all)
        })
        .map(|shard| shard_json(shard))
        .collect();
    let page: Vec<Value> = shards.iter().take(max as usize).cloned().collect();
    let mut response = json!({ "Shards": page });
    if shards.len() > page.len()
        && let Some(last) = page.last().and_then(|s| s["ShardId"].as_str())
    {
        response["NextToken"] = Value::String(encode_token(&format!("{name}\n{last}")));
    }
    Ok(response)
}

/// A record's data, decoded from base64.
/// A record's `Data`, decoded; its constraints checked into `v`. `at` names the member, made
/// only when a message needs it (500 entries a request, rarely wrong).
fn data_of(
    value: Option<&Value>,
    at: &dyn Fn() -> String,
    v: &mut Validation,
) -> Result<Vec<u8>, ApiError> {
    let Some(value) = value.filter(|v| !v.is_null()) else {
        v.missing(&at());
        return Ok(vec![]);
    };
    let text = value
        .as_str()
        .ok_or_else(|| ApiError::serialization(format!("{} must be a base64 string", at())))?;
    let data = STANDARD
        .decode(text)
        .map_err(|e| ApiError::serialization(format!("{} is not valid base64: {e}", at())))?;
    if data.len() > MAX_RECORD_BYTES {
        v.check(
            false,
            "java.nio.HeapByteBuffer",
            &at(),
            "Member must have length less than or equal to 1048576",
        );
    }
    Ok(data)
}

/// A record's `PartitionKey`; its constraints checked into `v`.
fn key_of<'a>(
    value: Option<&'a Value>,
    at: &dyn Fn() -> String,
    v: &mut Validation,
) -> Result<&'a str, ApiError> {
    let Some(value) = value.filter(|v| !v.is_null()) else {
        v.missing(&at());
        return Ok("");
    };
    let key = value
        .as_str()
        .ok_or_else(|| ApiError::serialization(format!("{} must be a string", at())))?;
    let len = key.chars().count();
    if !(1..=256).contains(&len) {
        let at = at();
        v.check(
            len >= 1,
            key,
            &at,
            "Member must have length greater than or equal to 1",
        );
        v.check(
            len <= 256,
            key,
            &at,
            "Member must have length less than or equal to 256",
        );
    }
    Ok(key)
}

pub(crate) fn hash_key_of(value: Option<&Value>, at: &str) -> Result<Option<u128>, ApiError> {
    match value.and_then(Value::as_str) {
        None => Ok(None),
        Some(text) => text.parse::<u128>().map(Some).map_err(|_| {
            ApiError::invalid(format!(
                "Invalid ExplicitHashKey. ExplicitHashKey must be in the range: [0, 2^128-1]. Specified value was {text} ({at})"
            ))
        }),
    }
}

/// The open shards' hash-key ranges now, to route records for throttling (the engine routes
/// the append itself). Taken once per request.
pub fn open_ranges(stream: &Stream) -> Vec<(HashKeyRange, u32)> {
    stream
        .open_shards()
        .iter()
        .map(|s| (s.hash_key_range(), s.index()))
        .collect()
}

/// The open shard (of `ranges`) `record` routes to.
pub fn shard_for(ranges: &[(HashKeyRange, u32)], record: &RecordRef<'_>) -> u32 {
    let key = record
        .explicit_hash_key
        .unwrap_or_else(|| sluice_engine::routing::hash_key(record.partition_key));
    ranges
        .iter()
        .find(|(range, _)| range.contains(key))
        .map_or(0, |(_, index)| *index)
}

fn rate_exceeded(stream: &Stream, shard: u32) -> ApiError {
    ApiError::new(
        ErrorKind::ProvisionedThroughputExceeded,
        format!(
            "Rate exceeded for shard {} in stream {} under account {ACCOUNT}.",
            shard_id(shard),
            stream.name()
        ),
    )
}

fn put_record(services: &Arc<Services>, request: &Map<String, Value>) -> Result<Value, ApiError> {
    let mut v = Validation::default();
    let name = stream_name_into(request, &mut v)?;
    let data = data_of(request.get("Data"), &|| "data".to_string(), &mut v)?;
    let key = key_of(
        request.get("PartitionKey"),
        &|| "partitionKey".to_string(),
        &mut v,
    )?;
    v.finish()?;
    let stream = find_stream(&services.engine, &name)?;
    let mut record = RecordRef::new(key, &data);
    record.explicit_hash_key = hash_key_of(request.get("ExplicitHashKey"), "explicitHashKey")?;
    if services.throttle.is_on() {
        let shard = shard_for(&open_ranges(&stream), &record);
        if !services
            .throttle
            .admit_write(stream.name(), shard, data.len() + key.len())
        {
            services.metrics.throttled(stream.name(), shard, 1);
            return Err(rate_exceeded(&stream, shard));
        }
    }
    let put = crate::cluster::append(services, &stream, &[record])?;
    let put = put
        .first()
        .ok_or_else(|| ApiError::internal("nothing was appended"))?;
    services
        .metrics
        .put(stream.name(), put.shard_index, 1, data.len() as u64);
    let encryption = services
        .on_demand
        .observe(services, &stream, 1, data.len() + key.len());
    Ok(json!({
        "ShardId": put.shard_id(),
        "SequenceNumber": put.sequence_number(),
        "EncryptionType": encryption,
    }))
}

fn put_records(services: &Arc<Services>, request: &Map<String, Value>) -> Result<Value, ApiError> {
    let mut v = Validation::default();
    let name = stream_name_into(request, &mut v)?;
    let entries = match request.get("Records") {
        Some(Value::Array(entries)) => entries,
        Some(_) => return Err(ApiError::serialization("Records must be a list")),
        None => {
            v.missing("records");
            v.finish()?;
            return Ok(json!({}));
        }
    };
    v.check(
        !entries.is_empty(),
        "[]",
        "records",
        "Member must have length greater than or equal to 1",
    );
    v.check(
        entries.len() <= MAX_PUT_RECORDS,
        &format!("[{} entries]", entries.len()),
        "records",
        "Member must have length less than or equal to 500",
    );
    let mut decoded = Vec::with_capacity(entries.len());
    for (i, entry) in entries.iter().enumerate() {
        let entry = entry
            .as_object()
            .ok_or_else(|| ApiError::serialization("each record must be an object"))?;
        let data = data_of(
            entry.get("Data"),
            &|| format!("records.{}.member.data", i + 1),
            &mut v,
        )?;
        let key = key_of(
            entry.get("PartitionKey"),
            &|| format!("records.{}.member.partitionKey", i + 1),
            &mut v,
        )?;
        let hash = hash_key_of(entry.get("ExplicitHashKey"), "explicitHashKey")?;
        decoded.push((data, key, hash));
    }
    v.finish()?;
    let stream = find_stream(&services.engine, &name)?;
    let total: usize = decoded.iter().map(|(d, k, _)| d.len() + k.len()).sum();
    if total > MAX_PUT_BYTES {
        return Err(ApiError::invalid(format!(
            "Records size exceeds 5 MB limit: the request holds {total} bytes of data and partition keys"
        )));
    }
    let records: Vec<RecordRef<'_>> = decoded
        .iter()
        .map(|(data, key, hash)| {
            let mut record = RecordRef::new(key, data);
            record.explicit_hash_key = *hash;
            record
        })
        .collect();
    // With limits on, entries over their shard's allowance fail on their own; the rest land.
    let mut refused: Vec<Option<ApiError>> = vec![None; records.len()];
    if services.throttle.is_on() {
        let mut throttled: BTreeMap<u32, u64> = BTreeMap::new();
        let ranges = open_ranges(&stream);
        for (i, record) in records.iter().enumerate() {
            let shard = shard_for(&ranges, record);
            let bytes = record.data.len() + record.partition_key.len();
            if !services.throttle.admit_write(stream.name(), shard, bytes) {
                refused[i] = Some(rate_exceeded(&stream, shard));
                *throttled.entry(shard).or_default() += 1;
            }
        }
        for (shard, count) in throttled {
            services.metrics.throttled(stream.name(), shard, count);
        }
    }
    let accepted: Vec<RecordRef<'_>> = records
        .iter()
        .zip(&refused)
        .filter(|(_, r)| r.is_none())
        .map(|(record, _)| *record)
        .collect();
    // One append: every accepted entry lands or, if the engine fails, every entry reports it.
    // One append (per shard in a cluster): every accepted entry lands or reports why not. A
    // shard that failed does not fail the others', which did land (a retry would duplicate them).
    let mut puts = match crate::cluster::append_each(services, &stream, &accepted) {
        Ok(puts) => {
            let mut by_shard: BTreeMap<u32, (u64, u64)> = BTreeMap::new();
            for (put, record) in puts.iter().zip(&accepted) {
                match put {
                    Ok(put) => {
                        let counts = by_shard.entry(put.shard_index).or_default();
                        counts.0 += 1;
                        counts.1 += record.data.len() as u64;
                    }
                    Err(e) if e.kind == ErrorKind::ShardMoving => {
                        log::debug!("PutRecords into '{}': {e}", stream.name());
                    }
                    Err(e) => log::error!("PutRecords into '{}' failed: {e}", stream.name()),
                }
            }
            for (shard, (count, bytes)) in by_shard {
                services.metrics.put(stream.name(), shard, count, bytes);
            }
            puts.into_iter()
        }
        Err(e) => {
            log::error!("PutRecords into '{}' failed: {e}", stream.name());
            return Ok(json!({
                "FailedRecordCount": records.len(),
                "Records": records.iter().map(|_| json!({
                    "ErrorCode": "InternalFailure",
                    "ErrorMessage": format!("Internal service failure: {e}"),
                })).collect::<Vec<_>>(),
                "EncryptionType": "NONE",
            }));
        }
    };
    let written: usize = accepted
        .iter()
        .map(|r| r.data.len() + r.partition_key.len())
        .sum();
    let encryption = services
        .on_demand
        .observe(services, &stream, accepted.len(), written);
    let failure = |kind: ErrorKind, message: &str| json!({"ErrorCode": kind.type_name(), "ErrorMessage": message});
    let results: Vec<Value> = refused
        .into_iter()
        .map(|refusal| match refusal {
            Some(error) => failure(error.kind, &error.message),
            None => match puts.next() {
                Some(Ok(p)) => {
                    json!({"ShardId": p.shard_id(), "SequenceNumber": p.sequence_number()})
                }
                Some(Err(error)) => failure(error.kind, &error.message),
                None => failure(
                    ErrorKind::InternalFailure,
                    "Internal service failure: the record was not appended",
                ),
            },
        })
        .collect();
    let failed = results
        .iter()
        .filter(|r| r.get("ErrorCode").is_some())
        .count();
    Ok(json!({
        "FailedRecordCount": failed,
        "Records": results,
        "EncryptionType": encryption,
    }))
}

pub(crate) fn shard_index(stream: &Stream, id: &str) -> Result<u32, ApiError> {
    let not_found = || {
        ApiError::new(
            ErrorKind::ResourceNotFound,
            format!(
                "Shard {id} in stream {} under account {ACCOUNT} does not exist",
                stream.name()
            ),
        )
    };
    let index = id
        .strip_prefix("shardId-")
        .unwrap_or(id)
        .parse::<u32>()
        .map_err(|_| not_found())?;
    stream.shard(index).map(|_| index).ok_or_else(not_found)
}

/// What an iterator token holds: the stream (and its incarnation), the shard, where to read
/// next, and when the token was handed out.
struct IteratorToken {
    stream: String,
    stream_id: u64,
    shard: u32,
    seq: u64,
    issued_ms: i64,
}

impl IteratorToken {
    fn encode(&self) -> String {
        STANDARD.encode(format!(
            "{}|{}|{}|{}|{}",
            self.stream_id, self.shard, self.seq, self.issued_ms, self.stream
        ))
    }

    fn decode(token: &str) -> Result<Self, ApiError> {
        let invalid = || ApiError::invalid(format!("Invalid ShardIterator: {token}"));
        let text = STANDARD
            .decode(token)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(invalid)?;
        let mut parts = text.splitn(5, '|');
        let mut next = || parts.next().ok_or_else(invalid);
        Ok(Self {
            stream_id: next()?.parse().map_err(|_| invalid())?,
            shard: next()?.parse().map_err(|_| invalid())?,
            seq: next()?.parse().map_err(|_| invalid())?,
            issued_ms: next()?.parse().map_err(|_| invalid())?,
            stream: next()?.to_string(),
        })
    }
}

/// The stream and shard a shard iterator reads, if it is one of ours.
pub(crate) fn iterator_place(token: &str) -> Option<(String, u32)> {
    IteratorToken::decode(token)
        .ok()
        .map(|t| (t.stream, t.shard))
}

fn get_shard_iterator(engine: &Engine, request: &Map<String, Value>) -> Result<Value, ApiError> {
    let (stream, (shard_id_text, kind)) = checked_stream(engine, request, |v| {
        let shard = str_field(request, "ShardId")?;
        match shard {
            None => v.missing("shardId"),
            Some(shard) => check_shard_id(v, shard, "shardId"),
        }
        let kind = str_field(request, "ShardIteratorType")?;
        match kind {
            None => v.missing("shardIteratorType"),
            Some(kind) => v.check(
                matches!(
                    kind,
                    "AT_SEQUENCE_NUMBER" | "AFTER_SEQUENCE_NUMBER" | "TRIM_HORIZON" | "LATEST" | "AT_TIMESTAMP"
                ),
                kind,
                "shardIteratorType",
                "Member must satisfy enum value set: [AFTER_SEQUENCE_NUMBER, AT_SEQUENCE_NUMBER, AT_TIMESTAMP, TRIM_HORIZON, LATEST]",
            ),
        }
        if let Some(sequence) = str_field(request, "StartingSequenceNumber")? {
            check_sequence_number(v, sequence, "startingSequenceNumber");
        }
        Ok((shard.unwrap_or_default(), kind.unwrap_or_default()))
    })?;
    let index = shard_index(&stream, shard_id_text)?;
    let sequence = str_field(request, "StartingSequenceNumber")?;
    let start = match kind {
        "TRIM_HORIZON" => StartPosition::TrimHorizon,
        "LATEST" => StartPosition::Latest,
        "AT_SEQUENCE_NUMBER" | "AFTER_SEQUENCE_NUMBER" => {
            let sequence = sequence.ok_or_else(|| {
                ApiError::invalid(format!(
                    "StartingSequenceNumber is required for ShardIteratorType {kind}"
                ))
            })?;
            let (shard_of, _) = parse_sequence_number(sequence).map_err(|_| {
                ApiError::invalid(format!(
                    "StartingSequenceNumber {sequence} used in GetShardIterator on shard {shard_id_text} in stream {} under account {ACCOUNT} is invalid.",
                    stream.name()
                ))
            })?;
            if shard_of != index {
                return Err(ApiError::invalid(format!(
                    "Invalid StartingSequenceNumber. It encodes shardId-{shard_of:012}, while it was used in a call to a shard with {shard_id_text}"
                )));
            }
            if kind == "AT_SEQUENCE_NUMBER" {
                StartPosition::AtSequenceNumber(sequence.to_string())
            } else {
                StartPosition::AfterSequenceNumber(sequence.to_string())
            }
        }
        _ => {
            let seconds = match request.get("Timestamp") {
                Some(Value::Number(n)) => n.as_f64().unwrap_or(0.0),
                _ => {
                    return Err(ApiError::invalid(
                        "Timestamp is required for ShardIteratorType AT_TIMESTAMP",
                    ));
                }
            };
            StartPosition::AtTimestamp((seconds * 1000.0).round() as i64)
        }
    };
    let reader = ShardIterator::new(&stream, index, start)?;
    let token = IteratorToken {
        stream: stream.name().to_string(),
        stream_id: stream.definition().id,
        shard: index,
        seq: reader.position(),
        issued_ms: engine.clock().now_millis(),
    };
    Ok(json!({ "ShardIterator": token.encode() }))
}

fn get_records(services: &Services, request: &Map<String, Value>) -> Result<Value, ApiError> {
    let engine = &services.engine;
    let metrics = &services.metrics;
    let token = str_field(request, "ShardIterator")?;
    let limit = int_field(request, "Limit")?.unwrap_or(MAX_GET_RECORDS as i64);
    let mut v = Validation::default();
    match token {
        None => v.missing("shardIterator"),
        Some(token) => check_length(&mut v, token, "shardIterator", 1, 512),
    }
    check_range(&mut v, limit, "limit", 1, MAX_GET_RECORDS as i64);
    v.finish()?;
    let token = token.unwrap_or_default();
    let iterator = IteratorToken::decode(token)?;
    let now = engine.clock().now_millis();
    if now - iterator.issued_ms > ITERATOR_TTL_MS {
        return Err(ApiError::new(
            ErrorKind::ExpiredIterator,
            format!(
                "Iterator expired. The iterator was created at time {} while right now it is {} which is further in the future than the tolerated delay of {ITERATOR_TTL_MS} milliseconds.",
                iterator.issued_ms, now
            ),
        ));
    }
    let stream = engine
        .try_stream(&iterator.stream)
        .filter(|s| s.definition().id == iterator.stream_id)
        .ok_or_else(|| ApiError::not_found(&iterator.stream))?;
    let shard = stream.shard(iterator.shard).ok_or_else(|| {
        ApiError::invalid(format!(
            "Invalid ShardIterator: shard {} is gone",
            iterator.shard
        ))
    })?;
    if !services
        .throttle
        .admit_read(&iterator.stream, iterator.shard)
    {
        metrics.throttled(&iterator.stream, iterator.shard, 1);
        return Err(ApiError::new(
            ErrorKind::ProvisionedThroughputExceeded,
            format!(
                "Rate exceeded for Shard - {}/{}/{}",
                ACCOUNT,
                iterator.stream,
                shard_id(iterator.shard)
            ),
        ));
    }
    let read = read_records(
        services,
        &stream,
        iterator.shard,
        iterator.seq,
        ReadLimits {
            records: limit as usize,
            bytes: MAX_GET_BYTES,
        },
    )?;
    services
        .throttle
        .charge_read(&iterator.stream, iterator.shard, read.bytes);
    let (next_seq, behind) = (read.next_seq, read.millis_behind);
    let records = serde_json::to_value(&read.records)
        .map_err(|e| ApiError::internal(format!("records could not be encoded: {e}")))?;
    // Read to the end of a closed shard: no next iterator; the children say where to go on.
    if shard.ending_seq().is_some_and(|end| next_seq > end) {
        return Ok(json!({
            "Records": records,
            "MillisBehindLatest": behind,
            "ChildShards": child_shards(&stream, iterator.shard),
        }));
    }
    let next = IteratorToken {
        stream: iterator.stream,
        stream_id: iterator.stream_id,
        shard: iterator.shard,
        seq: next_seq,
        issued_ms: now,
    };
    Ok(json!({
        "Records": records,
        "NextShardIterator": next.encode(),
        "MillisBehindLatest": behind,
    }))
}

/// How much one read may return.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ReadLimits {
    pub records: usize,
    pub bytes: usize,
}

/// A record as GetRecords and SubscribeToShard return it. Serialized as JSON 1.1 carries it
/// (its data in base64, its arrival in epoch seconds) straight from here, without a
/// `serde_json::Value` per record.
#[derive(Debug)]
pub(crate) struct OutRecord {
    pub sequence_number: String,
    pub arrival_ms: i64,
    pub data: Vec<u8>,
    pub partition_key: String,
}

impl serde::Serialize for OutRecord {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(4))?;
        map.serialize_entry("SequenceNumber", &self.sequence_number)?;
        map.serialize_entry(
            "ApproximateArrivalTimestamp",
            &(self.arrival_ms as f64 / 1000.0),
        )?;
        map.serialize_entry("Data", &Base64(&self.data))?;
        map.serialize_entry("PartitionKey", &self.partition_key)?;
        map.end()
    }
}

/// Bytes serialized as a base64 string, written as they are encoded.
struct Base64<'a>(&'a [u8]);

impl serde::Serialize for Base64<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&base64::display::Base64Display::new(self.0, &STANDARD))
    }
}

/// Records read from a shard, as GetRecords and SubscribeToShard return them.
pub(crate) struct Read {
    pub records: Vec<OutRecord>,
    /// The counter of the next record to read.
    pub next_seq: u64,
    pub millis_behind: i64,
    pub bytes: usize,
    /// Whether a limit stopped the read (more may be there).
    pub full: bool,
}

/// Reads shard `shard` of `stream` from counter `from` (or the oldest record kept, when
/// retention has passed `from`), up to `limits`, counting what was read in the metrics.
pub(crate) fn read_records(
    services: &Services,
    stream: &Stream,
    shard: u32,
    from: u64,
    limits: ReadLimits,
) -> Result<Read, ApiError> {
    let now = services.engine.clock().now_millis();
    let shard_state = stream.shard(shard).ok_or_else(|| {
        ApiError::new(
            ErrorKind::ResourceNotFound,
            format!(
                "Shard {} in stream {} under account {ACCOUNT} does not exist",
                shard_id(shard),
                stream.name()
            ),
        )
    })?;
    let from = from.max(shard_state.trim_horizon());
    let mut reader = ShardIterator::new(
        stream,
        shard,
        StartPosition::AtSequenceNumber(format_sequence_number(shard, from)),
    )
    .or_else(|_| ShardIterator::new(stream, shard, StartPosition::TrimHorizon))?;
    let mut records = Vec::new();
    let mut bytes = 0usize;
    let mut full = false;
    // A shard's counters are consecutive, so where the next read starts follows from where
    // this one started and how many records it returned.
    let first_seq = reader.position();
    let mut last_arrival = None;
    'read: while records.len() < limits.records {
        let batches = reader.next_batches(limits.records - records.len())?;
        if batches.is_empty() {
            break;
        }
        for batch in &batches {
            let (Some(seq), Some(time), Some(key), Some(data)) = (
                batch.column_by_name("_sequence_number"),
                batch.column_by_name("rowtime"),
                batch.column_by_name("_partition_key"),
                batch.column_by_name("_data"),
            ) else {
                return Err(ApiError::internal(
                    "a stored batch lacks its system columns",
                ));
            };
            let seq = seq.as_string::<i32>();
            let time = time.as_primitive::<TimestampMillisecondType>();
            let key = key.as_string::<i32>();
            let data = data.as_binary::<i32>();
            for row in 0..batch.num_rows() {
                let blob = if data.is_null(row) {
                    &[][..]
                } else {
                    data.value(row)
                };
                if bytes + blob.len() > limits.bytes && !records.is_empty() {
                    full = true;
                    break 'read;
                }
                bytes += blob.len();
                let arrival = time.value(row);
                last_arrival = Some(arrival);
                records.push(OutRecord {
                    sequence_number: seq.value(row).to_string(),
                    arrival_ms: arrival,
                    data: blob.to_vec(),
                    partition_key: key.value(row).to_string(),
                });
            }
        }
    }
    full |= records.len() >= limits.records;
    let next_seq = first_seq + records.len() as u64;
    let millis_behind = if next_seq >= shard_state.next_seq() {
        0
    } else {
        last_arrival.map_or(0, |a| (now - a).max(0))
    };
    services.metrics.got(
        stream.name(),
        shard,
        records.len() as u64,
        bytes as u64,
        millis_behind,
    );
    Ok(Read {
        records,
        next_seq,
        millis_behind,
        bytes,
        full,
    })
}

fn change_retention(
    engine: &Engine,
    request: &Map<String, Value>,
    increase: bool,
) -> Result<Value, ApiError> {
    let (stream, hours) = checked_stream(engine, request, |v| {
        let hours = int_field(request, "RetentionPeriodHours")?;
        match hours {
            None => v.missing("retentionPeriodHours"),
            Some(hours) => check_range(
                v,
                hours,
                "retentionPeriodHours",
                i64::from(MIN_RETENTION_HOURS),
                i64::from(MAX_RETENTION_HOURS),
            ),
        }
        Ok(hours.unwrap_or_default())
    })?;
    let current = i64::from(stream.retention_hours());
    if increase && hours < current {
        return Err(ApiError::invalid(format!(
            "Requested retention period ({hours} hours) for stream {} can not be shorter than existing retention period ({current} hours). Use DecreaseRetentionPeriod API.",
            stream.name()
        )));
    }
    if !increase && hours > current {
        return Err(ApiError::invalid(format!(
            "Requested retention period ({hours} hours) for stream {} can not be longer than existing retention period ({current} hours). Use IncreaseRetentionPeriod API.",
            stream.name()
        )));
    }
    engine.set_retention(stream.name(), hours as u32)?;
    Ok(json!({}))
}

/// What AWS shows of a map or list in a validation message: Java's `{k=v, …}` / `[a, …]`.
fn java_map(entries: &[(String, String)]) -> String {
    let inner: Vec<String> = entries.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("{{{}}}", inner.join(", "))
}

/// Whether a tag key or value holds only what AWS allows: Unicode letters, digits, white
/// space and `_ . / = + - % @ :`.
fn tag_characters_allowed(text: &str) -> bool {
    text.chars().all(|c| {
        c.is_alphanumeric()
            || c.is_whitespace()
            || matches!(c, '_' | '.' | '/' | '=' | '+' | '-' | '%' | '@' | ':')
    })
}

const TAG_CHARACTERS: &str = "Some tags contain invalid characters. Valid characters: Unicode letters, digits, white space, _ . / = + - % @ :.";

/// AddTagsToStream's `Tags`, its constraints checked into `v`: required, at most 200 entries,
/// keys 1 to 128 characters, values at most 256.
fn tags_of(
    request: &Map<String, Value>,
    v: &mut Validation,
) -> Result<Vec<(String, String)>, ApiError> {
    let tags = match request.get("Tags") {
        None | Some(Value::Null) => {
            v.missing("tags");
            return Ok(Vec::new());
        }
        Some(Value::Object(tags)) => tags,
        Some(other) => {
            return Err(ApiError::serialization(format!(
                "Tags must be a map of keys to values, not {other}"
            )));
        }
    };
    let mut out = Vec::new();
    for (key, value) in tags {
        let value = match value {
            Value::String(value) => value.clone(),
            Value::Null => String::new(),
            other => {
                return Err(ApiError::serialization(format!(
                    "the value of tag '{key}' must be a string, not {other}"
                )));
            }
        };
        out.push((key.clone(), value));
    }
    let shown = java_map(&out);
    v.check(
        out.len() <= 200,
        &shown,
        "tags",
        "Member must have length less than or equal to 200",
    );
    v.check(
        out.iter().all(|(k, _)| (1..=128).contains(&k.chars().count())),
        &shown,
        "tags",
        "Map keys must satisfy constraint: [Member must have length less than or equal to 128, Member must have length greater than or equal to 1]",
    );
    v.check(
        out.iter().all(|(_, value)| value.chars().count() <= 256),
        &shown,
        "tags",
        "Map value must satisfy constraint: [Member must have length less than or equal to 256, Member must have length greater than or equal to 0]",
    );
    Ok(out)
}

/// Adds or replaces tags, in AWS's order: constraints, the stream, the tags' characters, then
/// the limit of 50 tags a stream may have.
fn add_tags(engine: &Engine, request: &Map<String, Value>) -> Result<Value, ApiError> {
    let (stream, new) = checked_stream(engine, request, |v| tags_of(request, v))?;
    let name = stream.name();
    if new
        .iter()
        .any(|(k, v)| !tag_characters_allowed(k) || !tag_characters_allowed(v))
    {
        return Err(ApiError::invalid(TAG_CHARACTERS));
    }
    if new.iter().any(|(k, v)| k.contains('%') || v.contains('%')) {
        return Err(ApiError::invalid(format!(
            "Failed to add tags to stream {name} under account {ACCOUNT} because some tags contained illegal characters. The allowed characters are Unicode letters, white-spaces, '_',',','/','=','+','-','@',':'."
        )));
    }
    let mut tags = engine.stream_tags(name)?;
    for (key, value) in new {
        tags.insert(key, value);
    }
    if tags.len() > MAX_TAGS {
        return Err(ApiError::invalid(format!(
            "Failed to add tags to stream {name} under account {ACCOUNT} because a given stream cannot have more than {MAX_TAGS} tags associated with it."
        )));
    }
    engine.set_stream_tags(name, tags)?;
    Ok(json!({}))
}

/// The most tags a stream may have.
const MAX_TAGS: usize = 50;

fn remove_tags(engine: &Engine, request: &Map<String, Value>) -> Result<Value, ApiError> {
    let (stream, keys) = checked_stream(engine, request, |v| {
        let keys: Vec<String> = match request.get("TagKeys") {
            None | Some(Value::Null) => {
                v.missing("tagKeys");
                return Ok(Vec::new());
            }
            Some(Value::Array(keys)) => keys
                .iter()
                .map(|k| {
                    k.as_str().map(str::to_string).ok_or_else(|| {
                        ApiError::serialization(format!("TagKeys must hold strings, not {k}"))
                    })
                })
                .collect::<Result<_, _>>()?,
            Some(other) => {
                return Err(ApiError::serialization(format!(
                    "TagKeys must be a list of tag keys, not {other}"
                )));
            }
        };
        let shown = format!("[{}]", keys.join(", "));
        v.check(
            !keys.is_empty(),
            &shown,
            "tagKeys",
            "Member must have length greater than or equal to 1",
        );
        v.check(
            keys.len() <= MAX_TAGS,
            &shown,
            "tagKeys",
            "Member must have length less than or equal to 50",
        );
        v.check(
            keys.iter().all(|k| (1..=128).contains(&k.chars().count())),
            &shown,
            "tagKeys",
            "Member must satisfy constraint: [Member must have length less than or equal to 128, Member must have length greater than or equal to 1]",
        );
        Ok(keys)
    })?;
    let name = stream.name();
    if keys.iter().any(|k| !tag_characters_allowed(k)) {
        return Err(ApiError::invalid(TAG_CHARACTERS));
    }
    if keys.iter().any(|k| k.contains('%')) {
        return Err(ApiError::invalid(format!(
            "Failed to remove tags from stream {name} under account {ACCOUNT} because some tags contained illegal characters. The allowed characters are Unicode letters, white-spaces, '_',',','/','=','+','-','@',':'."
        )));
    }
    let mut tags = engine.stream_tags(name)?;
    for key in &keys {
        tags.remove(key);
    }
    engine.set_stream_tags(name, tags)?;
    Ok(json!({}))
}

fn list_tags(engine: &Engine, request: &Map<String, Value>) -> Result<Value, ApiError> {
    let (stream, (limit, after)) = checked_stream(engine, request, |v| {
        let limit = int_field(request, "Limit")?;
        if let Some(limit) = limit {
            check_range(v, limit, "limit", 1, MAX_TAGS as i64);
        }
        let after = str_field(request, "ExclusiveStartTagKey")?;
        if let Some(after) = after {
            check_length(v, after, "exclusiveStartTagKey", 1, 128);
        }
        Ok((limit.unwrap_or(MAX_TAGS as i64) as usize, after))
    })?;
    let tags = engine.stream_tags(stream.name())?;
    let remaining: Vec<(&String, &String)> = tags
        .iter()
        .filter(|(k, _)| after.is_none_or(|a| k.as_str() > a))
        .collect();
    Ok(json!({
        "Tags": remaining.iter().take(limit).map(|(k, v)| json!({"Key": k, "Value": v})).collect::<Vec<_>>(),
        "HasMoreTags": remaining.len() > limit,
    }))
}
