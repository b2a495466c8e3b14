//! Enhanced fan-out consumers: `RegisterStreamConsumer`, `DescribeStreamConsumer`,
//! `ListStreamConsumers` and `DeregisterStreamConsumer`. A consumer belongs to one stream (its
//! ARN is the stream's ARN, `/consumer/<name>:<creation seconds>`), is `CREATING` for a moment
//! after it is registered and `ACTIVE` after, and is kept durably in the stream's folder, so it
//! goes when the stream goes. `SubscribeToShard` ([`crate::subscribe`]) reads as a consumer.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use sluice_engine::{Engine, Stream};

use crate::Services;
use crate::actions::{self, arn, int_field, str_field};
use crate::error::{ACCOUNT, ApiError, ErrorKind, Validation};

/// How long a new consumer is `CREATING` (AWS takes seconds; clients wait for `ACTIVE`).
pub const ACTIVATION_MS: i64 = 500;
/// Registered consumers per stream, as on AWS.
pub const MAX_CONSUMERS: usize = 20;
const CONSUMER_NAME_PATTERN: &str = "[a-zA-Z0-9_.-]+";
const FILE: &str = "kinesis-consumers.json";

/// One registered consumer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Consumer {
    pub name: String,
    pub arn: String,
    pub created_ms: i64,
}

impl Consumer {
    pub fn status(&self, now_ms: i64) -> &'static str {
        if now_ms - self.created_ms < ACTIVATION_MS {
            "CREATING"
        } else {
            "ACTIVE"
        }
    }

    fn json(&self, now_ms: i64) -> Value {
        json!({
            "ConsumerName": self.name,
            "ConsumerARN": self.arn,
            "ConsumerStatus": self.status(now_ms),
            "ConsumerCreationTimestamp": self.created_ms as f64 / 1000.0,
        })
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct ConsumerFile {
    consumers: Vec<Consumer>,
}

/// The consumers of `stream`.
/// The consumers registered for `stream`: kept by the cluster for a stream it shares, else in
/// the stream's folder.
pub(crate) fn consumers(services: &Services, stream: &Stream) -> Result<Vec<Consumer>, ApiError> {
    if let Some(placement) = shared(services, stream) {
        return placement.consumers(stream).map_err(ApiError::internal);
    }
    let file: ConsumerFile =
        sluice_engine::read_json_or_default(&stream.dir().join(FILE), "the stream's consumers")?;
    Ok(file.consumers)
}

/// The cluster, if it keeps `stream`'s consumers.
fn shared<'a>(
    services: &'a Services,
    stream: &Stream,
) -> Option<&'a dyn crate::cluster::ShardPlacement> {
    services.placement.as_deref().filter(|_| stream.is_shared())
}

fn save(stream: &Stream, consumers: Vec<Consumer>) -> Result<(), ApiError> {
    sluice_engine::write_json_durably(
        &stream.dir().join(FILE),
        &ConsumerFile { consumers },
        "the stream's consumers",
    )?;
    Ok(())
}

/// The stream a `StreamARN` member names (required, checked as AWS checks it).
fn stream_of_arn(
    engine: &Engine,
    request: &Map<String, Value>,
    v: &mut Validation,
) -> Result<Option<Arc<Stream>>, ApiError> {
    let Some(stream_arn) = str_field(request, "StreamARN")? else {
        v.missing("streamARN");
        return Ok(None);
    };
    let name = actions::check_stream_arn(v, stream_arn, "streamARN");
    // Existence is reported after every constraint is checked, as AWS does.
    Ok(name.and_then(|name| engine.try_stream(name)))
}

fn check_consumer_name(v: &mut Validation, name: &str) {
    v.check(
        (1..=128).contains(&name.len()),
        name,
        "consumerName",
        "Member must have length less than or equal to 128",
    );
    v.check(
        !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')),
        name,
        "consumerName",
        &format!("Member must satisfy regular expression pattern: {CONSUMER_NAME_PATTERN}"),
    );
}

fn stream_not_found(request: &Map<String, Value>) -> ApiError {
    let arn = request
        .get("StreamARN")
        .and_then(Value::as_str)
        .unwrap_or_default();
    ApiError::new(
        ErrorKind::ResourceNotFound,
        format!(
            "Stream {} under account {ACCOUNT} not found.",
            arn.rsplit_once(":stream/").map_or(arn, |(_, n)| n)
        ),
    )
}

pub(crate) fn register(
    services: &Services,
    request: &Map<String, Value>,
) -> Result<Value, ApiError> {
    let engine = &services.engine;
    let mut v = Validation::default();
    let stream = stream_of_arn(engine, request, &mut v)?;
    let name = str_field(request, "ConsumerName")?;
    match name {
        Some(name) => check_consumer_name(&mut v, name),
        None => v.missing("consumerName"),
    }
    v.finish()?;
    let (Some(stream), Some(name)) = (stream, name) else {
        return Err(stream_not_found(request));
    };
    let _guard = services.stream_files_lock.lock();
    let mut all = consumers(services, &stream)?;
    let exists = || {
        ApiError::new(
            ErrorKind::ResourceInUse,
            format!(
                "Consumer {name} under stream {} already exists for account {ACCOUNT}.",
                stream.name()
            ),
        )
    };
    if all.iter().any(|c| c.name == name) {
        return Err(exists());
    }
    if all.len() >= MAX_CONSUMERS {
        return Err(ApiError::new(
            ErrorKind::LimitExceeded,
            format!(
                "Stream {} under account {ACCOUNT} already has {MAX_CONSUMERS} registered consumers, the most a stream can have.",
                stream.name()
            ),
        ));
    }
    let now = engine.clock().now_millis();
    let consumer = Consumer {
        name: name.to_string(),
        arn: format!("{}/consumer/{name}:{}", arn(stream.name()), now / 1000),
        created_ms: now,
    };
    match shared(services, &stream) {
        // Created once in the cluster: of two nodes registering the name at once, one wins.
        Some(placement) => {
            if !placement
                .add_consumer(&stream, &consumer)
                .map_err(ApiError::internal)?
            {
                return Err(exists());
            }
        }
        None => {
            all.push(consumer.clone());
            save(&stream, all)?;
        }
    }
    Ok(json!({ "Consumer": consumer.json(now) }))
}

/// The stream and consumer a request names: `ConsumerARN`, or `StreamARN` and `ConsumerName`.
pub(crate) fn find(
    services: &Services,
    request: &Map<String, Value>,
) -> Result<(Arc<Stream>, Consumer), ApiError> {
    let engine = &services.engine;
    let mut v = Validation::default();
    let consumer_arn = str_field(request, "ConsumerARN")?;
    let stream_arn = str_field(request, "StreamARN")?;
    let name = str_field(request, "ConsumerName")?;
    if let Some(arn) = consumer_arn {
        check_consumer_arn(&mut v, arn, "consumerARN");
    }
    if let Some(arn) = stream_arn {
        actions::check_stream_arn(&mut v, arn, "streamARN");
    }
    if let Some(name) = name {
        check_consumer_name(&mut v, name);
    }
    v.finish()?;
    // The consumer is named by its ARN (which names its stream), or by name in a stream.
    let (stream_name, by_arn) = match (consumer_arn, stream_arn, name) {
        (Some(arn), _, _) => (
            stream_of_consumer_arn(arn).ok_or_else(|| consumer_not_found(arn))?,
            true,
        ),
        (None, Some(stream_arn), Some(_)) => (
            actions::stream_of_arn(stream_arn)
                .unwrap_or(stream_arn)
                .to_string(),
            false,
        ),
        _ => {
            return Err(ApiError::invalid(
                "Either ConsumerARN or both ConsumerName and StreamARN must be provided.",
            ));
        }
    };
    let described = consumer_arn.map_or_else(
        || format!("{} under stream {stream_name}", name.unwrap_or_default()),
        str::to_string,
    );
    let stream = engine
        .try_stream(&stream_name)
        .ok_or_else(|| consumer_not_found(&described))?;
    let consumer = consumers(services, &stream)?
        .into_iter()
        .find(|c| {
            if by_arn {
                consumer_arn == Some(c.arn.as_str())
            } else {
                name == Some(c.name.as_str())
            }
        })
        .ok_or_else(|| consumer_not_found(&described))?;
    Ok((stream, consumer))
}

fn check_consumer_arn(v: &mut Validation, value: &str, at: &str) {
    v.check(
        (1..=2048).contains(&value.len()),
        value,
        at,
        "Member must have length less than or equal to 2048",
    );
    v.check(
        stream_of_consumer_arn(value).is_some(),
        value,
        at,
        "Member must satisfy regular expression pattern: ^(arn):aws.*:kinesis:.*:\\d{12}:.*stream\\/[a-zA-Z0-9_.-]+\\/consumer\\/[a-zA-Z0-9_.-]+:[0-9]+",
    );
}

/// The stream name in `arn:aws:kinesis:<region>:<account>:stream/<name>/consumer/<c>:<secs>`.
pub(crate) fn stream_of_consumer_arn(arn: &str) -> Option<String> {
    let rest = arn.strip_prefix("arn:aws")?.split_once(":kinesis:")?.1;
    let (stream, consumer) = rest.split_once(":stream/")?.1.split_once("/consumer/")?;
    let (name, seconds) = consumer.rsplit_once(':')?;
    let fine = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
    };
    (fine(stream)
        && fine(name)
        && !seconds.is_empty()
        && seconds.bytes().all(|b| b.is_ascii_digit()))
    .then(|| stream.to_string())
}

pub(crate) fn consumer_not_found(what: &str) -> ApiError {
    ApiError::new(
        ErrorKind::ResourceNotFound,
        format!("Consumer {what}, account {ACCOUNT} not found."),
    )
}

pub(crate) fn describe(
    services: &Services,
    request: &Map<String, Value>,
) -> Result<Value, ApiError> {
    let (stream, consumer) = find(services, request)?;
    let mut description = consumer.json(services.engine.clock().now_millis());
    description["StreamARN"] = Value::String(arn(stream.name()));
    Ok(json!({ "ConsumerDescription": description }))
}

pub(crate) fn deregister(
    services: &Services,
    request: &Map<String, Value>,
) -> Result<Value, ApiError> {
    let (stream, consumer) = find(services, request)?;
    if let Some(placement) = shared(services, &stream) {
        placement
            .remove_consumer(&stream, &consumer)
            .map_err(ApiError::internal)?;
    } else {
        let _guard = services.stream_files_lock.lock();
        let all = consumers(services, &stream)?
            .into_iter()
            .filter(|c| c.arn != consumer.arn)
            .collect();
        save(&stream, all)?;
    }
    // Its subscriptions end, as on AWS.
    services.subscriptions.end_consumer(&consumer.arn);
    Ok(json!({}))
}

pub(crate) fn list(services: &Services, request: &Map<String, Value>) -> Result<Value, ApiError> {
    let engine = &services.engine;
    let mut v = Validation::default();
    let stream = stream_of_arn(engine, request, &mut v)?;
    let limit = int_field(request, "MaxResults")?.unwrap_or(100);
    v.check(
        (1..=10_000).contains(&limit),
        &limit.to_string(),
        "maxResults",
        "Member must have value less than or equal to 10000",
    );
    let token = str_field(request, "NextToken")?;
    if let Some(token) = token {
        v.check(
            (1..=1_048_576).contains(&token.len()),
            token,
            "nextToken",
            "Member must have length greater than or equal to 1",
        );
    }
    v.finish()?;
    let Some(stream) = stream else {
        return Err(stream_not_found(request));
    };
    let now = engine.clock().now_millis();
    let all = consumers(services, &stream)?;
    let start = match token {
        None => 0,
        Some(token) => token
            .strip_prefix("consumers:")
            .and_then(|n| n.parse::<usize>().ok())
            .filter(|&n| n <= all.len())
            .ok_or_else(|| ApiError::invalid(format!("NextToken {token} is not valid: pass the NextToken a previous ListStreamConsumers returned.")))?,
    };
    let end = (start + limit as usize).min(all.len());
    let mut answer = json!({
        "Consumers": all[start..end].iter().map(|c| c.json(now)).collect::<Vec<_>>(),
    });
    if end < all.len() {
        answer["NextToken"] = Value::String(format!("consumers:{end}"));
    }
    Ok(answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consumer_arns_name_their_stream() {
        let arn = "arn:aws:kinesis:us-east-1:000000000000:stream/clicks/consumer/app-1:1767225600";
        assert_eq!(stream_of_consumer_arn(arn).as_deref(), Some("clicks"));
        for bad in [
            "arn:aws:kinesis:us-east-1:000000000000:stream/clicks",
            "arn:aws:kinesis:us-east-1:000000000000:stream/clicks/consumer/app-1",
            "arn:aws:kinesis:us-east-1:000000000000:stream/cl icks/consumer/app:1",
            "clicks",
        ] {
            assert_eq!(stream_of_consumer_arn(bad), None, "{bad}");
        }
    }
}
