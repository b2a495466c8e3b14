//! SplitShard, MergeShards and UpdateShardCount on the engine's own resharding, and the pieces
//! of the other actions that show lineage: ListShards's `ShardFilter` and GetRecords's
//! `ChildShards` at the end of a closed shard.
//!
//! Resharding in Sluice is immediate: the stream stays `ACTIVE`, the parents are closed and the
//! children take records as soon as the call returns.

use serde_json::{Map, Value, json};
use sluice_engine::sequence::shard_id;
use sluice_engine::{Engine, Reshard, Shard, Stream};

use crate::actions::{
    arn, check_shard_id, find_stream, int_field, shard_index, str_field, stream_name_into,
};
use crate::error::{ApiError, Validation};

const HASH_KEY_PATTERN: &str = "0|([1-9]\\d{0,38})";

/// A required shard id member, checked as AWS checks it.
fn shard_member(
    request: &Map<String, Value>,
    name: &str,
    at: &str,
    v: &mut Validation,
) -> Result<String, ApiError> {
    match str_field(request, name)? {
        None => {
            v.missing(at);
            Ok(String::new())
        }
        Some(id) => {
            check_shard_id(v, id, at);
            Ok(id.to_string())
        }
    }
}

pub fn split_shard(engine: &Engine, request: &Map<String, Value>) -> Result<Value, ApiError> {
    let mut v = Validation::default();
    let name = stream_name_into(request, &mut v)?;
    let shard = shard_member(request, "ShardToSplit", "shardToSplit", &mut v)?;
    let key = str_field(request, "NewStartingHashKey")?;
    let hash_key = match key {
        None => {
            v.missing("newStartingHashKey");
            None
        }
        Some(text) => {
            let parsed = (text == "0" || !text.starts_with('0'))
                .then(|| text.parse::<u128>().ok())
                .flatten()
                .filter(|_| text.len() <= 39);
            v.check(
                parsed.is_some(),
                text,
                "newStartingHashKey",
                &format!("Member must satisfy regular expression pattern: {HASH_KEY_PATTERN}"),
            );
            parsed
        }
    };
    v.finish()?;
    let stream = find_stream(engine, &name)?;
    let index = shard_index(&stream, &shard)?;
    let new_starting_hash_key = hash_key.unwrap_or_default();
    engine.reshard(
        stream.name(),
        Reshard::Split {
            shard: index,
            new_starting_hash_key,
        },
    )?;
    Ok(json!({}))
}

pub fn merge_shards(engine: &Engine, request: &Map<String, Value>) -> Result<Value, ApiError> {
    let mut v = Validation::default();
    let name = stream_name_into(request, &mut v)?;
    let shard = shard_member(request, "ShardToMerge", "shardToMerge", &mut v)?;
    let adjacent = shard_member(
        request,
        "AdjacentShardToMerge",
        "adjacentShardToMerge",
        &mut v,
    )?;
    v.finish()?;
    let stream = find_stream(engine, &name)?;
    let shard = shard_index(&stream, &shard)?;
    let adjacent = shard_index(&stream, &adjacent)?;
    engine.reshard(stream.name(), Reshard::Merge { shard, adjacent })?;
    Ok(json!({}))
}

pub fn update_shard_count(
    engine: &Engine,
    request: &Map<String, Value>,
) -> Result<Value, ApiError> {
    let mut v = Validation::default();
    let name = stream_name_into(request, &mut v)?;
    let target = int_field(request, "TargetShardCount")?;
    match target {
        None => v.missing("targetShardCount"),
        Some(n) => v.check(
            n >= 1,
            &n.to_string(),
            "targetShardCount",
            "Member must have value greater than or equal to 1",
        ),
    }
    match str_field(request, "ScalingType")? {
        None => v.missing("scalingType"),
        Some(kind) => v.check(
            kind == "UNIFORM_SCALING",
            kind,
            "scalingType",
            "Member must satisfy enum value set: [UNIFORM_SCALING]",
        ),
    }
    v.finish()?;
    let target = target.unwrap_or(1);
    let stream = find_stream(engine, &name)?;
    let current = stream.open_shards().len();
    let target_u32 = u32::try_from(target).map_err(|_| {
        ApiError::invalid(format!(
            "TargetShardCount {target} is more than Sluice allows"
        ))
    })?;
    engine.reshard(
        stream.name(),
        Reshard::UniformScaling { target: target_u32 },
    )?;
    Ok(json!({
        "StreamName": stream.name(),
        "StreamARN": arn(stream.name()),
        "CurrentShardCount": current,
        "TargetShardCount": target,
    }))
}

/// The children of shard `index`, as GetRecords reports them at the end of a closed shard.
pub fn child_shards(stream: &Stream, index: u32) -> Vec<Value> {
    stream
        .shards()
        .iter()
        .filter(|s| s.parent() == Some(index) || s.adjacent_parent() == Some(index))
        .map(|child| {
            let range = child.hash_key_range();
            let parents: Vec<String> = [child.parent(), child.adjacent_parent()]
                .into_iter()
                .flatten()
                .map(shard_id)
                .collect();
            json!({
                "ShardId": shard_id(child.index()),
                "ParentShards": parents,
                "HashKeyRange": {
                    "StartingHashKey": range.start.to_string(),
                    "EndingHashKey": range.end.to_string(),
                },
            })
        })
        .collect()
}

/// ListShards's `ShardFilter`: which shards a consumer starting somewhere should see.
pub enum ShardFilter {
    All,
    AfterShardId(String),
    /// The shards open at the oldest retained record: no parent with records left.
    AtTrimHorizon,
    /// Every shard with records retained or still open.
    FromTrimHorizon,
    /// The shards open now.
    AtLatest,
    /// The shards open at the time: those with a record at or after it or still open, less
    /// those whose parent also qualifies.
    AtTimestamp(i64),
    /// Every shard with a record at or after the time, or still open.
    FromTimestamp(i64),
}

impl ShardFilter {
    pub fn parse(filter: Option<&Value>) -> Result<Self, ApiError> {
        let Some(filter) = filter.filter(|f| !f.is_null()) else {
            return Ok(Self::All);
        };
        let filter = filter
            .as_object()
            .ok_or_else(|| ApiError::serialization("ShardFilter must be an object"))?;
        let kind = filter.get("Type").and_then(Value::as_str);
        let timestamp = || -> Result<i64, ApiError> {
            match filter.get("Timestamp") {
                Some(Value::Number(n)) => Ok((n.as_f64().unwrap_or(0.0) * 1000.0).round() as i64),
                _ => Err(ApiError::invalid(format!(
                    "Timestamp is required for ShardFilter type {}",
                    kind.unwrap_or_default()
                ))),
            }
        };
        Ok(match kind {
            Some("AFTER_SHARD_ID") => {
                let id = filter
                    .get("ShardId")
                    .and_then(Value::as_str)
                    .ok_or_else(|| {
                        ApiError::invalid("ShardId is required for ShardFilter type AFTER_SHARD_ID")
                    })?;
                Self::AfterShardId(id.to_string())
            }
            Some("AT_TRIM_HORIZON") => Self::AtTrimHorizon,
            Some("FROM_TRIM_HORIZON") => Self::FromTrimHorizon,
            Some("AT_LATEST") => Self::AtLatest,
            Some("AT_TIMESTAMP") => Self::AtTimestamp(timestamp()?),
            Some("FROM_TIMESTAMP") => Self::FromTimestamp(timestamp()?),
            Some(other) => {
                let mut v = Validation::default();
                v.check(
                    false,
                    other,
                    "shardFilter.type",
                    "Member must satisfy enum value set: [AFTER_SHARD_ID, AT_TRIM_HORIZON, FROM_TRIM_HORIZON, AT_LATEST, AT_TIMESTAMP, FROM_TIMESTAMP]",
                );
                v.finish()?;
                Self::All
            }
            None => {
                let mut v = Validation::default();
                v.missing("shardFilter.type");
                v.finish()?;
                Self::All
            }
        })
    }

    /// Whether `shard` (of the stream's `all` shards) passes.
    pub fn keeps(&self, shard: &Shard, all: &[std::sync::Arc<Shard>]) -> bool {
        let parents = || {
            [shard.parent(), shard.adjacent_parent()]
                .into_iter()
                .flatten()
                .filter_map(|p| all.iter().find(|s| s.index() == p))
        };
        let retained = |s: &Shard| s.is_open() || s.stats().records > 0;
        let since = |s: &Shard, ts: i64| s.is_open() || s.has_records_since(ts);
        match self {
            Self::All => true,
            Self::AfterShardId(id) => shard_id(shard.index()).as_str() > id.as_str(),
            Self::AtTrimHorizon => retained(shard) && !parents().any(|p| retained(p)),
            Self::FromTrimHorizon => retained(shard),
            Self::AtLatest => shard.is_open(),
            Self::AtTimestamp(ts) => since(shard, *ts) && !parents().any(|p| since(p, *ts)),
            Self::FromTimestamp(ts) => since(shard, *ts),
        }
    }
}
