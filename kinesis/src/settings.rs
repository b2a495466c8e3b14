//! What Kinesis keeps about a stream besides its shards and records: its capacity mode
//! (`PROVISIONED`, or `ON_DEMAND`, which adds shards as write throughput grows), server-side
//! encryption as asked for (recorded and reported — Sluice does not encrypt data at rest), the
//! shard-level metrics enabled, and resource policies (stored and returned, not enforced). Kept
//! in the stream's folder (`kinesis-settings.json`), so they go with the stream.
//!
//! The actions: `UpdateStreamMode`, `DescribeLimits`, `Enable/DisableEnhancedMonitoring`,
//! `Start/StopStreamEncryption`, `Put/Get/DeleteResourcePolicy`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use sluice_engine::{Engine, Reshard, Stream};

use crate::Services;
use crate::actions::{self, arn, str_field};
use crate::consumers;
use crate::error::{ACCOUNT, ApiError, ErrorKind, Validation};

const FILE: &str = "kinesis-settings.json";
/// The shard-level metrics `ALL` stands for.
const METRICS: [&str; 7] = [
    "IncomingBytes",
    "IncomingRecords",
    "OutgoingBytes",
    "OutgoingRecords",
    "WriteProvisionedThroughputExceeded",
    "ReadProvisionedThroughputExceeded",
    "IteratorAgeMilliseconds",
];
/// Shards an account may have (what CreateStream also allows).
pub const SHARD_LIMIT: usize = 1024;
/// On-demand streams an account may have, as on AWS.
pub const ON_DEMAND_STREAM_LIMIT: usize = 50;
/// What one shard takes in per second: 1 MiB or 1,000 records.
const SHARD_BYTES_PER_SECOND: f64 = 1024.0 * 1024.0;
const SHARD_RECORDS_PER_SECOND: f64 = 1000.0;
/// How long an on-demand stream's write rate is measured over.
const WINDOW: Duration = Duration::from_secs(1);

/// A stream's Kinesis settings.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StreamSettings {
    #[serde(default)]
    pub on_demand: bool,
    /// The KMS key asked for with `StartStreamEncryption` (`EncryptionType` `KMS` while set).
    #[serde(default)]
    pub encryption_key: Option<String>,
    #[serde(default)]
    pub shard_level_metrics: Vec<String>,
    /// Resource ARN (the stream's, or one of its consumers') → policy document.
    #[serde(default)]
    pub policies: BTreeMap<String, String>,
}

impl StreamSettings {
    pub fn mode(&self) -> &'static str {
        if self.on_demand {
            "ON_DEMAND"
        } else {
            "PROVISIONED"
        }
    }

    /// The members DescribeStream, DescribeStreamSummary and PutRecord(s) report.
    pub fn describe(&self, into: &mut Value) {
        into["StreamModeDetails"] = json!({"StreamMode": self.mode()});
        into["EnhancedMonitoring"] = json!([{"ShardLevelMetrics": self.shard_level_metrics}]);
        into["EncryptionType"] = json!(self.encryption_type());
        if let Some(key) = &self.encryption_key {
            into["KeyId"] = json!(key);
        }
    }

    pub fn encryption_type(&self) -> &'static str {
        if self.encryption_key.is_some() {
            "KMS"
        } else {
            "NONE"
        }
    }
}

/// The settings of `stream`.
pub fn load(stream: &Stream) -> Result<StreamSettings, ApiError> {
    Ok(sluice_engine::read_json_or_default(
        &stream.dir().join(FILE),
        "the stream's Kinesis settings",
    )?)
}

/// Changes `stream`'s settings with `change`, durably, one change at a time.
fn update<T>(
    services: &Services,
    stream: &Stream,
    change: impl FnOnce(&mut StreamSettings) -> Result<T, ApiError>,
) -> Result<T, ApiError> {
    let _guard = services.stream_files_lock.lock();
    let mut settings = load(stream)?;
    let out = change(&mut settings)?;
    sluice_engine::write_json_durably(
        &stream.dir().join(FILE),
        &settings,
        "the stream's Kinesis settings",
    )?;
    services.on_demand.forget(stream);
    Ok(out)
}

/// Sets a new stream's mode (CreateStream).
pub(crate) fn set_on_demand(
    services: &Services,
    stream: &Stream,
    on_demand: bool,
) -> Result<(), ApiError> {
    update(services, stream, |s| {
        s.on_demand = on_demand;
        Ok(())
    })
}

/// A `StreamModeDetails` member: `Some(true)` for ON_DEMAND.
pub(crate) fn stream_mode(
    request: &Map<String, Value>,
    v: &mut Validation,
    required: bool,
) -> Result<Option<bool>, ApiError> {
    match request.get("StreamModeDetails") {
        None | Some(Value::Null) => {
            if required {
                v.missing("streamModeDetails");
            }
            Ok(None)
        }
        Some(Value::Object(details)) => match str_field(details, "StreamMode")? {
            None => {
                v.missing("streamModeDetails.streamMode");
                Ok(None)
            }
            Some(mode) => {
                v.check(
                    matches!(mode, "PROVISIONED" | "ON_DEMAND"),
                    mode,
                    "streamModeDetails.streamMode",
                    "Member must satisfy enum value set: [ON_DEMAND, PROVISIONED]",
                );
                Ok(Some(mode == "ON_DEMAND"))
            }
        },
        Some(other) => Err(ApiError::serialization(format!(
            "StreamModeDetails must be a structure, not {other}"
        ))),
    }
}

fn on_demand_count(engine: &Engine) -> Result<usize, ApiError> {
    let mut count = 0;
    for stream in engine.streams() {
        count += usize::from(load(&stream)?.on_demand);
    }
    Ok(count)
}

/// Refuses one more on-demand stream past the account's limit.
pub(crate) fn check_on_demand_limit(engine: &Engine) -> Result<(), ApiError> {
    if on_demand_count(engine)? >= ON_DEMAND_STREAM_LIMIT {
        return Err(ApiError::new(
            ErrorKind::LimitExceeded,
            format!(
                "This request would exceed the on-demand stream limit of {ON_DEMAND_STREAM_LIMIT} for account {ACCOUNT}."
            ),
        ));
    }
    Ok(())
}

pub(crate) fn update_stream_mode(
    services: &Services,
    request: &Map<String, Value>,
) -> Result<Value, ApiError> {
    let mut v = Validation::default();
    let name = match str_field(request, "StreamARN")? {
        None => {
            v.missing("streamARN");
            None
        }
        Some(arn) => actions::check_stream_arn(&mut v, arn, "streamARN"),
    };
    let on_demand = stream_mode(request, &mut v, true)?;
    v.finish()?;
    let stream = actions::find_stream(&services.engine, name.unwrap_or_default())?;
    let on_demand = on_demand.unwrap_or(false);
    if on_demand && !load(&stream)?.on_demand {
        check_on_demand_limit(&services.engine)?;
    }
    update(services, &stream, |s| {
        s.on_demand = on_demand;
        Ok(())
    })?;
    Ok(json!({}))
}

pub(crate) fn describe_limits(services: &Services) -> Result<Value, ApiError> {
    let engine = &services.engine;
    let open: usize = engine.streams().iter().map(|s| s.open_shards().len()).sum();
    Ok(json!({
        "ShardLimit": SHARD_LIMIT,
        "OpenShardCount": open,
        "OnDemandStreamCount": on_demand_count(engine)?,
        "OnDemandStreamCountLimit": ON_DEMAND_STREAM_LIMIT,
    }))
}

pub(crate) fn enhanced_monitoring(
    services: &Services,
    request: &Map<String, Value>,
    enable: bool,
) -> Result<Value, ApiError> {
    let mut v = Validation::default();
    let name = actions::stream_name_into(request, &mut v)?;
    let metrics: Vec<String> = match request.get("ShardLevelMetrics") {
        None | Some(Value::Null) => {
            v.missing("shardLevelMetrics");
            Vec::new()
        }
        Some(Value::Array(items)) => {
            let mut names = Vec::new();
            for item in items {
                let Some(name) = item.as_str() else {
                    return Err(ApiError::serialization(format!(
                        "ShardLevelMetrics must hold strings, not {item}"
                    )));
                };
                names.push(name.to_string());
            }
            v.check(
                (1..=7).contains(&names.len()),
                &format!("[{}]", names.join(", ")),
                "shardLevelMetrics",
                "Member must have length less than or equal to 7",
            );
            for name in &names {
                v.check(
                    name == "ALL" || METRICS.contains(&name.as_str()),
                    name,
                    "shardLevelMetrics",
                    "Member must satisfy enum value set: [IncomingBytes, IncomingRecords, OutgoingBytes, OutgoingRecords, WriteProvisionedThroughputExceeded, ReadProvisionedThroughputExceeded, IteratorAgeMilliseconds, ALL]",
                );
            }
            names
        }
        Some(other) => {
            return Err(ApiError::serialization(format!(
                "ShardLevelMetrics must be a list, not {other}"
            )));
        }
    };
    v.finish()?;
    let stream = actions::find_stream(&services.engine, &name)?;
    let named: Vec<String> = if metrics.iter().any(|m| m == "ALL") {
        METRICS.iter().map(|m| m.to_string()).collect()
    } else {
        metrics
    };
    let (current, desired) = update(services, &stream, |s| {
        let current = s.shard_level_metrics.clone();
        let mut desired: Vec<String> = if enable {
            current.iter().chain(&named).cloned().collect()
        } else {
            current
                .iter()
                .filter(|m| !named.contains(m))
                .cloned()
                .collect()
        };
        desired.sort_by_key(|m| METRICS.iter().position(|k| k == m));
        desired.dedup();
        s.shard_level_metrics = desired.clone();
        Ok((current, desired))
    })?;
    Ok(json!({
        "StreamName": stream.name(),
        "StreamARN": arn(stream.name()),
        "CurrentShardLevelMetrics": current,
        "DesiredShardLevelMetrics": desired,
    }))
}

pub(crate) fn stream_encryption(
    services: &Services,
    request: &Map<String, Value>,
    start: bool,
) -> Result<Value, ApiError> {
    let mut v = Validation::default();
    let name = actions::stream_name_into(request, &mut v)?;
    match str_field(request, "EncryptionType")? {
        None => v.missing("encryptionType"),
        Some(kind) => v.check(
            matches!(kind, "NONE" | "KMS"),
            kind,
            "encryptionType",
            "Member must satisfy enum value set: [KMS, NONE]",
        ),
    }
    let key = str_field(request, "KeyId")?;
    match key {
        None => v.missing("keyId"),
        Some(key) => v.check(
            (1..=2048).contains(&key.len()),
            key,
            "keyId",
            "Member must have length less than or equal to 2048",
        ),
    }
    v.finish()?;
    if str_field(request, "EncryptionType")? != Some("KMS") {
        return Err(ApiError::invalid("EncryptionType must be KMS."));
    }
    let stream = actions::find_stream(&services.engine, &name)?;
    let key = key.unwrap_or_default().to_string();
    update(services, &stream, |s| {
        if start {
            s.encryption_key = Some(key);
        } else if s.encryption_key.as_deref() == Some(key.as_str()) {
            s.encryption_key = None;
        } else {
            return Err(ApiError::invalid(format!(
                "Stream {} under account {ACCOUNT} is not encrypted with key {key}.",
                stream.name()
            )));
        }
        Ok(())
    })?;
    Ok(json!({}))
}

/// The stream a resource ARN names (its own, or one of its consumers'), checked to exist.
fn resource(
    services: &Services,
    request: &Map<String, Value>,
    v: &mut Validation,
) -> Result<Option<(Arc<Stream>, String)>, ApiError> {
    let Some(resource) = str_field(request, "ResourceARN")? else {
        v.missing("resourceARN");
        return Ok(None);
    };
    let name = consumers::stream_of_consumer_arn(resource)
        .or_else(|| actions::stream_of_arn(resource).map(str::to_string));
    v.check(
        name.is_some(),
        resource,
        "resourceARN",
        "Member must satisfy regular expression pattern: arn:aws.*:kinesis:.*:\\d{12}:.*stream\\/\\S+",
    );
    Ok(name
        .and_then(|n| services.engine.try_stream(&n))
        .map(|s| (s, resource.to_string())))
}

fn resource_not_found(request: &Map<String, Value>) -> ApiError {
    let arn = request
        .get("ResourceARN")
        .and_then(Value::as_str)
        .unwrap_or_default();
    ApiError::new(
        ErrorKind::ResourceNotFound,
        format!("Resource {arn} under account {ACCOUNT} not found."),
    )
}

pub(crate) fn put_resource_policy(
    services: &Services,
    request: &Map<String, Value>,
) -> Result<Value, ApiError> {
    let mut v = Validation::default();
    let found = resource(services, request, &mut v)?;
    let policy = str_field(request, "Policy")?;
    if policy.is_none() {
        v.missing("policy");
    }
    v.finish()?;
    let (Some((stream, arn)), Some(policy)) = (found, policy) else {
        return Err(resource_not_found(request));
    };
    if serde_json::from_str::<Map<String, Value>>(policy).is_err() {
        return Err(ApiError::invalid(
            "Policy is not a valid JSON policy document.",
        ));
    }
    update(services, &stream, |s| {
        s.policies.insert(arn, policy.to_string());
        Ok(())
    })?;
    Ok(json!({}))
}

pub(crate) fn get_resource_policy(
    services: &Services,
    request: &Map<String, Value>,
) -> Result<Value, ApiError> {
    let mut v = Validation::default();
    let found = resource(services, request, &mut v)?;
    v.finish()?;
    let Some((stream, arn)) = found else {
        return Err(resource_not_found(request));
    };
    let policy = load(&stream)?
        .policies
        .get(&arn)
        .cloned()
        .unwrap_or_else(|| "{}".to_string());
    Ok(json!({ "Policy": policy }))
}

pub(crate) fn delete_resource_policy(
    services: &Services,
    request: &Map<String, Value>,
) -> Result<Value, ApiError> {
    let mut v = Validation::default();
    let found = resource(services, request, &mut v)?;
    v.finish()?;
    let Some((stream, arn)) = found else {
        return Err(resource_not_found(request));
    };
    update(services, &stream, |s| {
        s.policies.remove(&arn);
        Ok(())
    })?;
    Ok(json!({}))
}

/// On-demand capacity: each on-demand stream's write rate is measured over one-second windows,
/// and when a window's bytes or records need more shards than are open (at 1 MiB or 1,000
/// records per shard per second, kept at twice the peak seen, as AWS describes), the stream is
/// scaled up uniformly — at most doubling at a time, as UpdateShardCount allows.
#[derive(Debug, Default)]
pub(crate) struct OnDemand {
    meters: Mutex<HashMap<u64, Meter>>,
}

#[derive(Debug)]
struct Meter {
    on_demand: bool,
    encrypted: bool,
    started: Instant,
    bytes: f64,
    records: f64,
    scaling: bool,
}

impl OnDemand {
    /// Forgets what is known of `stream` (its mode changed, or it is deleted).
    pub(crate) fn forget(&self, stream: &Stream) {
        self.meters.lock().remove(&stream.definition().id);
    }

    /// Counts a write of `records` records and `bytes` bytes into `stream`; scales it when
    /// needed. The stream's `EncryptionType`, for the put's answer (the settings are read once
    /// and kept here, not read from disk on every put).
    pub(crate) fn observe(
        &self,
        services: &Arc<Services>,
        stream: &Arc<Stream>,
        records: usize,
        bytes: usize,
    ) -> &'static str {
        let encryption;
        let target = {
            let mut meters = self.meters.lock();
            let meter = match meters.entry(stream.definition().id) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => {
                    let settings = load(stream).unwrap_or_default();
                    e.insert(Meter {
                        on_demand: settings.on_demand,
                        encrypted: settings.encryption_key.is_some(),
                        started: Instant::now(),
                        bytes: 0.0,
                        records: 0.0,
                        scaling: false,
                    })
                }
            };
            encryption = if meter.encrypted { "KMS" } else { "NONE" };
            if !meter.on_demand {
                return encryption;
            }
            meter.bytes += bytes as f64;
            meter.records += records as f64;
            let elapsed = meter.started.elapsed();
            if elapsed < WINDOW {
                return encryption;
            }
            let seconds = elapsed.as_secs_f64();
            let needed = (2.0 * meter.bytes / seconds / SHARD_BYTES_PER_SECOND)
                .max(2.0 * meter.records / seconds / SHARD_RECORDS_PER_SECOND)
                .ceil() as usize;
            meter.started = Instant::now();
            meter.bytes = 0.0;
            meter.records = 0.0;
            let open = stream.open_shards().len();
            if needed <= open || meter.scaling {
                return encryption;
            }
            meter.scaling = true;
            needed.min(open * 2).min(SHARD_LIMIT) as u32
        };
        let services = Arc::clone(services);
        let stream = Arc::clone(stream);
        // Resharding writes the catalog: not on the producer's request.
        std::thread::spawn(move || {
            match services
                .engine
                .reshard(stream.name(), Reshard::UniformScaling { target })
            {
                Ok(_) => log::info!(
                    "on-demand stream '{}' scaled to {target} shards",
                    stream.name()
                ),
                Err(e) => log::warn!(
                    "on-demand stream '{}' could not scale to {target} shards: {e}",
                    stream.name()
                ),
            }
            if let Some(meter) = services
                .on_demand
                .meters
                .lock()
                .get_mut(&stream.definition().id)
            {
                meter.scaling = false;
            }
        });
        encryption
    }
}
