//! The Firehose actions (`Firehose_20150804.<Action>`): each request read and checked as
//! Firehose checks it, run on the session's delivery streams, and answered in Firehose's shapes.

use std::collections::BTreeMap;

use base64::Engine as _;
use serde_json::{Value, json};
use sluice_engine::{DIRECT_PUT_NAMESPACE, PutRecord, StreamSpec};

use super::config::{
    delivery_options, delivery_stream_arn, destination_description, kinesis_stream_arn,
    merge_update, sql_destination_description,
};
use super::{DeliveryStreamRecord, Firehose, FirehoseError, now_seconds, write_json};

type Result<T, E = FirehoseError> = std::result::Result<T, E>;

/// The `X-Amz-Target` prefix of the API.
pub const TARGET_PREFIX: &str = "Firehose_20150804.";

/// Firehose's limits.
const MAX_RECORD_BYTES: usize = 1_024_000;
const MAX_BATCH_RECORDS: usize = 500;
const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;
const MAX_TAGS: usize = 50;
/// The one destination of a delivery stream.
const DESTINATION_ID: &str = "destinationId-000000000001";

/// Runs `action` with `request` on `firehose`.
pub async fn call(firehose: &Firehose, action: &str, request: Value) -> Result<Value> {
    match action {
        "CreateDeliveryStream" => create(firehose, &request).await,
        "DescribeDeliveryStream" => describe(firehose, &request).await,
        "ListDeliveryStreams" => list(firehose, &request),
        "DeleteDeliveryStream" => {
            let name = stream_name(&request)?;
            definition(firehose, &name)?;
            firehose
                .session
                .drop_delivery(&name, true)
                .await
                .map_err(|e| FirehoseError::unavailable(e.to_string()))?;
            let mut records = firehose.records.lock().await;
            if records.remove(&name).is_some() {
                write_json(&firehose.path, &*records)?;
            }
            Ok(json!({}))
        }
        "PutRecord" => {
            let name = stream_name(&request)?;
            let data = record_data(request.get("Record"), "Record")?;
            let ids = put(firehose, &name, vec![data]).await?;
            let id = ids.into_iter().next().unwrap_or_default();
            Ok(json!({"RecordId": id, "Encrypted": false}))
        }
        "PutRecordBatch" => put_record_batch(firehose, &request).await,
        "UpdateDestination" => update_destination(firehose, &request).await,
        "TagDeliveryStream" => {
            let name = stream_name(&request)?;
            let tags = request
                .get("Tags")
                .and_then(Value::as_array)
                .filter(|t| !t.is_empty())
                .ok_or_else(|| FirehoseError::invalid("Tags is required: 1 to 50 {Key, Value}"))?;
            let mut new = BTreeMap::new();
            for (i, tag) in tags.iter().enumerate() {
                let key = tag
                    .get("Key")
                    .and_then(Value::as_str)
                    .filter(|k| !k.is_empty() && k.len() <= 128)
                    .ok_or_else(|| {
                        FirehoseError::invalid(format!("Tags[{i}].Key must be 1 to 128 characters"))
                    })?;
                let value = tag.get("Value").and_then(Value::as_str).unwrap_or_default();
                if value.len() > 256 {
                    return Err(FirehoseError::invalid(format!(
                        "Tags[{i}].Value must be at most 256 characters"
                    )));
                }
                new.insert(key.to_string(), value.to_string());
            }
            change_record(firehose, &name, |record| {
                let mut tags = record.tags.clone();
                tags.extend(new);
                if tags.len() > MAX_TAGS {
                    return Err(FirehoseError::new(
                        "LimitExceededException",
                        format!(
                            "A delivery stream has at most {MAX_TAGS} tags; this would make {}",
                            tags.len()
                        ),
                    ));
                }
                record.tags = tags;
                Ok(())
            })
            .await?;
            Ok(json!({}))
        }
        "UntagDeliveryStream" => {
            let name = stream_name(&request)?;
            let keys: Vec<String> = request
                .get("TagKeys")
                .and_then(Value::as_array)
                .filter(|k| !k.is_empty())
                .ok_or_else(|| FirehoseError::invalid("TagKeys is required: 1 to 50 keys"))?
                .iter()
                .filter_map(|k| k.as_str().map(str::to_string))
                .collect();
            change_record(firehose, &name, |record| {
                record.tags.retain(|k, _| !keys.contains(k));
                Ok(())
            })
            .await?;
            Ok(json!({}))
        }
        "ListTagsForDeliveryStream" => {
            let name = stream_name(&request)?;
            definition(firehose, &name)?;
            let start = request.get("ExclusiveStartTagKey").and_then(Value::as_str);
            let limit = request.get("Limit").and_then(Value::as_u64).unwrap_or(50) as usize;
            let records = firehose.records.lock().await;
            let tags: Vec<(&String, &String)> = records
                .get(&name)
                .map(|r| {
                    r.tags
                        .iter()
                        .filter(|(k, _)| start.is_none_or(|s| k.as_str() > s))
                        .collect()
                })
                .unwrap_or_default();
            let more = tags.len() > limit;
            let tags: Vec<Value> = tags
                .into_iter()
                .take(limit)
                .map(|(k, v)| json!({"Key": k, "Value": v}))
                .collect();
            Ok(json!({"Tags": tags, "HasMoreTags": more}))
        }
        "StartDeliveryStreamEncryption" | "StopDeliveryStreamEncryption" => {
            Err(FirehoseError::invalid(format!(
                "{action} is not supported: Sluice does not encrypt delivery streams' records at rest"
            )))
        }
        other => Err(FirehoseError::new(
            "UnknownOperationException",
            format!("Firehose action {other} is not implemented by Sluice"),
        )),
    }
}

fn stream_name(request: &Value) -> Result<String> {
    let name = request
        .get("DeliveryStreamName")
        .and_then(Value::as_str)
        .ok_or_else(|| FirehoseError::invalid("DeliveryStreamName is required"))?;
    if name.is_empty()
        || name.len() > 64
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
    {
        return Err(FirehoseError::invalid(format!(
            "DeliveryStreamName '{name}' must be 1 to 64 letters, digits, '_', '.' and '-'"
        )));
    }
    Ok(name.to_string())
}

fn not_found(name: &str) -> FirehoseError {
    FirehoseError::new(
        "ResourceNotFoundException",
        format!(
            "Firehose {name} under account {} not found.",
            super::ACCOUNT
        ),
    )
}

/// Delivery stream `name`'s definition.
fn definition(firehose: &Firehose, name: &str) -> Result<sluice_engine::DeliveryDefinition> {
    firehose
        .session
        .engine()
        .deliveries()
        .into_iter()
        .find(|d| d.name == name)
        .ok_or_else(|| not_found(name))
}

/// Changes what the API keeps of `name` (made in SQL: a record is started for it).
async fn change_record(
    firehose: &Firehose,
    name: &str,
    change: impl FnOnce(&mut DeliveryStreamRecord) -> Result<()>,
) -> Result<()> {
    let definition = definition(firehose, name)?;
    let mut records = firehose.records.lock().await;
    let mut record = records
        .get(name)
        .cloned()
        .unwrap_or_else(|| sql_record(&definition));
    change(&mut record)?;
    records.insert(name.to_string(), record);
    write_json(&firehose.path, &*records)
}

/// What the API knows of a delivery stream made in SQL.
fn sql_record(definition: &sluice_engine::DeliveryDefinition) -> DeliveryStreamRecord {
    let now = now_seconds();
    DeliveryStreamRecord {
        delivery_stream_type: "KinesisStreamAsSource".into(),
        create_timestamp: now,
        last_update_timestamp: now,
        tags: BTreeMap::new(),
        source: Some(json!({"KinesisStreamARN": kinesis_stream_arn(&definition.source)})),
        destination: Value::Null,
    }
}

fn is_direct_put(definition: &sluice_engine::DeliveryDefinition) -> bool {
    definition.source == Firehose::direct_put_stream(&definition.name)
}

/// A record's bytes from its `Data` (base64).
fn record_data(record: Option<&Value>, at: &str) -> Result<Vec<u8>> {
    let data = record
        .and_then(|r| r.get("Data"))
        .and_then(Value::as_str)
        .ok_or_else(|| FirehoseError::invalid(format!("{at}.Data is required (base64)")))?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(data)
        .map_err(|e| FirehoseError::invalid(format!("{at}.Data is not base64: {e}")))?;
    if bytes.len() > MAX_RECORD_BYTES {
        return Err(FirehoseError::invalid(format!(
            "{at}.Data is {} bytes; a record is at most {MAX_RECORD_BYTES} bytes (1,000 KiB) before base64",
            bytes.len()
        )));
    }
    Ok(bytes)
}

/// Appends `records` to direct-put delivery stream `name`; their record IDs, once they are in
/// the write-ahead log.
async fn put(firehose: &Firehose, name: &str, records: Vec<Vec<u8>>) -> Result<Vec<String>> {
    // A direct-put delivery stream's own stream is found by its name; only when there is none
    // are the definitions looked through, to say why.
    let engine = firehose.session.engine();
    let Some(stream) = engine.try_stream(&Firehose::direct_put_stream(name)) else {
        let definition = definition(firehose, name)?;
        return Err(FirehoseError::invalid(format!(
            "This operation is not permitted on KinesisStreamAsSource delivery stream type: {name} reads stream '{}'; put records into that stream",
            definition.source
        )));
    };
    let key = name.to_string();
    let results = tokio::task::spawn_blocking(move || {
        let puts: Vec<PutRecord> = records
            .into_iter()
            .map(|data| PutRecord::new(key.clone(), data))
            .collect();
        stream.append(&puts)
    })
    .await
    .map_err(|e| FirehoseError::unavailable(format!("the put did not finish: {e}")))?
    .map_err(|e| FirehoseError::unavailable(e.to_string()))?;
    Ok(results.iter().map(|r| r.sequence_number()).collect())
}

async fn put_record_batch(firehose: &Firehose, request: &Value) -> Result<Value> {
    let name = stream_name(request)?;
    let records = request
        .get("Records")
        .and_then(Value::as_array)
        .ok_or_else(|| FirehoseError::invalid("Records is required: 1 to 500 records"))?;
    if records.is_empty() || records.len() > MAX_BATCH_RECORDS {
        return Err(FirehoseError::invalid(format!(
            "Records has {} records; PutRecordBatch takes 1 to {MAX_BATCH_RECORDS}",
            records.len()
        )));
    }
    let mut datas = Vec::with_capacity(records.len());
    let mut total = 0;
    for (i, record) in records.iter().enumerate() {
        let data = record_data(Some(record), &format!("Records[{i}]"))?;
        total += data.len();
        datas.push(data);
    }
    if total > MAX_BATCH_BYTES {
        return Err(FirehoseError::invalid(format!(
            "the records add up to {total} bytes; PutRecordBatch takes at most {MAX_BATCH_BYTES} (4 MiB)"
        )));
    }
    let count = datas.len();
    match put(firehose, &name, datas).await {
        Ok(ids) => Ok(json!({
            "FailedPutCount": 0,
            "Encrypted": false,
            "RequestResponses": ids.into_iter().map(|id| json!({"RecordId": id})).collect::<Vec<_>>(),
        })),
        // Sluice could not take the records (a full disk): each one failed, and the caller
        // retries the failed ones as Firehose's callers do.
        Err(e) if e.type_name == "ServiceUnavailableException" => Ok(json!({
            "FailedPutCount": count,
            "Encrypted": false,
            "RequestResponses": (0..count).map(|_| json!({
                "ErrorCode": "ServiceUnavailableException",
                "ErrorMessage": e.message,
            })).collect::<Vec<_>>(),
        })),
        Err(e) => Err(e),
    }
}

async fn create(firehose: &Firehose, request: &Value) -> Result<Value> {
    let name = stream_name(request)?;
    let kind = request
        .get("DeliveryStreamType")
        .and_then(Value::as_str)
        .unwrap_or("DirectPut");
    for other in [
        "RedshiftDestinationConfiguration",
        "ElasticsearchDestinationConfiguration",
        "AmazonopensearchserviceDestinationConfiguration",
        "AmazonOpenSearchServerlessDestinationConfiguration",
        "SplunkDestinationConfiguration",
        "HttpEndpointDestinationConfiguration",
        "SnowflakeDestinationConfiguration",
        "IcebergDestinationConfiguration",
    ] {
        if request.get(other).is_some() {
            return Err(FirehoseError::invalid(format!(
                "{other} is not supported by Sluice, which delivers to S3-compatible storage; use ExtendedS3DestinationConfiguration"
            )));
        }
    }
    let (what, destination) = match (
        request.get("ExtendedS3DestinationConfiguration"),
        request.get("S3DestinationConfiguration"),
    ) {
        (Some(d), _) => ("ExtendedS3DestinationConfiguration", d.clone()),
        (None, Some(d)) => ("S3DestinationConfiguration", d.clone()),
        (None, None) => {
            return Err(FirehoseError::invalid(
                "a destination is required: ExtendedS3DestinationConfiguration with BucketARN",
            ));
        }
    };
    let options = delivery_options(&destination, what, &firehose.glue)?;
    let mut tags = BTreeMap::new();
    for tag in request
        .get("Tags")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(key) = tag.get("Key").and_then(Value::as_str) {
            let value = tag.get("Value").and_then(Value::as_str).unwrap_or_default();
            tags.insert(key.to_string(), value.to_string());
        }
    }
    if tags.len() > MAX_TAGS {
        return Err(FirehoseError::new(
            "LimitExceededException",
            format!("A delivery stream has at most {MAX_TAGS} tags"),
        ));
    }
    let mut records = firehose.records.lock().await;
    if definition(firehose, &name).is_ok() {
        return Err(FirehoseError::new(
            "ResourceInUseException",
            format!(
                "Firehose {name} under accountId {} already exists",
                super::ACCOUNT
            ),
        ));
    }
    let engine = firehose.session.engine().clone();
    let (source, source_config) = match kind {
        "DirectPut" => {
            if request.get("KinesisStreamSourceConfiguration").is_some() {
                return Err(FirehoseError::invalid(
                    "KinesisStreamSourceConfiguration is only for DeliveryStreamType KinesisStreamAsSource",
                ));
            }
            let stream_name = name.clone();
            tokio::task::spawn_blocking(move || -> sluice_engine::Result<()> {
                let namespace = engine.namespace(DIRECT_PUT_NAMESPACE)?;
                // Left behind by a create that did not finish: a new delivery stream starts
                // empty.
                namespace.drop_stream(&stream_name, true)?;
                namespace.create_stream(StreamSpec::raw(stream_name, 1), false)?;
                Ok(())
            })
            .await
            .map_err(|e| FirehoseError::unavailable(e.to_string()))?
            .map_err(|e| FirehoseError::unavailable(e.to_string()))?;
            (Firehose::direct_put_stream(&name), None)
        }
        "KinesisStreamAsSource" => {
            let config = request
                .get("KinesisStreamSourceConfiguration")
                .ok_or_else(|| {
                    FirehoseError::invalid(
                        "KinesisStreamSourceConfiguration is required for DeliveryStreamType KinesisStreamAsSource",
                    )
                })?;
            let arn = config
                .get("KinesisStreamARN")
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    FirehoseError::invalid(
                        "KinesisStreamSourceConfiguration.KinesisStreamARN is required",
                    )
                })?;
            let stream = arn
                .split_once(":stream/")
                .map(|(_, name)| name)
                .filter(|n| arn.starts_with("arn:aws:kinesis:") && !n.is_empty())
                .ok_or_else(|| {
                    FirehoseError::invalid(format!(
                        "KinesisStreamSourceConfiguration.KinesisStreamARN '{arn}' is not a Kinesis stream ARN (arn:aws:kinesis:region:account:stream/name)"
                    ))
                })?;
            if engine.try_stream(stream).is_none() {
                return Err(FirehoseError::invalid(format!(
                    "KinesisStreamSourceConfiguration.KinesisStreamARN: stream {stream} does not exist"
                )));
            }
            (stream.to_string(), Some(config.clone()))
        }
        other => {
            return Err(FirehoseError::invalid(format!(
                "DeliveryStreamType '{other}' is not supported by Sluice; use DirectPut or KinesisStreamAsSource"
            )));
        }
    };
    if let Err(e) = firehose
        .session
        .create_delivery(&name, &source, options, false, false)
        .await
    {
        if kind == "DirectPut" {
            let _ = firehose.session.engine().drop_stream(&source, true);
        }
        return Err(FirehoseError::invalid(e.to_string()));
    }
    let now = now_seconds();
    records.insert(
        name.clone(),
        DeliveryStreamRecord {
            delivery_stream_type: kind.to_string(),
            create_timestamp: now,
            last_update_timestamp: now,
            tags,
            source: source_config,
            destination,
        },
    );
    write_json(&firehose.path, &*records)?;
    Ok(json!({"DeliveryStreamARN": delivery_stream_arn(&name)}))
}

async fn describe(firehose: &Firehose, request: &Value) -> Result<Value> {
    let name = stream_name(request)?;
    let definition = definition(firehose, &name)?;
    let records = firehose.records.lock().await;
    let record = records
        .get(&name)
        .cloned()
        .unwrap_or_else(|| sql_record(&definition));
    let kind = if is_direct_put(&definition) {
        "DirectPut"
    } else {
        "KinesisStreamAsSource"
    };
    let destination = if record.destination.is_null() {
        sql_destination_description(&definition.options)
    } else {
        destination_description(&record.destination)
    };
    let mut description = json!({
        "DeliveryStreamName": name,
        "DeliveryStreamARN": delivery_stream_arn(&name),
        "DeliveryStreamStatus": "ACTIVE",
        "DeliveryStreamType": kind,
        "DeliveryStreamEncryptionConfiguration": {"Status": "DISABLED"},
        "VersionId": definition.version.to_string(),
        "CreateTimestamp": record.create_timestamp,
        "LastUpdateTimestamp": record.last_update_timestamp,
        "Destinations": [{
            "DestinationId": DESTINATION_ID,
            "S3DestinationDescription": destination.clone(),
            "ExtendedS3DestinationDescription": destination,
        }],
        "HasMoreDestinations": false,
    });
    if kind == "KinesisStreamAsSource"
        && let Some(object) = description.as_object_mut()
    {
        let mut source = record
            .source
            .clone()
            .unwrap_or_else(|| json!({"KinesisStreamARN": kinesis_stream_arn(&definition.source)}));
        if let Some(source) = source.as_object_mut() {
            source.insert(
                "DeliveryStartTimestamp".into(),
                json!(record.create_timestamp),
            );
        }
        object.insert(
            "Source".into(),
            json!({"KinesisStreamSourceDescription": source}),
        );
    }
    Ok(json!({"DeliveryStreamDescription": description}))
}

fn list(firehose: &Firehose, request: &Value) -> Result<Value> {
    let limit = match request.get("Limit") {
        None => 10,
        Some(limit) => limit
            .as_u64()
            .filter(|l| (1..=10_000).contains(l))
            .ok_or_else(|| {
                FirehoseError::invalid(format!("Limit must be 1 to 10000, not {limit}"))
            })? as usize,
    };
    let kind = request.get("DeliveryStreamType").and_then(Value::as_str);
    let start = request
        .get("ExclusiveStartDeliveryStreamName")
        .and_then(Value::as_str);
    let mut names: Vec<String> = firehose
        .session
        .engine()
        .deliveries()
        .into_iter()
        .filter(|d| match kind {
            Some("DirectPut") => is_direct_put(d),
            Some("KinesisStreamAsSource") => !is_direct_put(d),
            _ => true,
        })
        .map(|d| d.name)
        .filter(|n| start.is_none_or(|s| n.as_str() > s))
        .collect();
    names.sort();
    let more = names.len() > limit;
    names.truncate(limit);
    Ok(json!({"DeliveryStreamNames": names, "HasMoreDeliveryStreams": more}))
}

async fn update_destination(firehose: &Firehose, request: &Value) -> Result<Value> {
    let name = stream_name(request)?;
    let version = request
        .get("CurrentDeliveryStreamVersionId")
        .and_then(Value::as_str)
        .ok_or_else(|| {
            FirehoseError::invalid("CurrentDeliveryStreamVersionId is required (VersionId from DescribeDeliveryStream)")
        })?;
    let destination_id = request
        .get("DestinationId")
        .and_then(Value::as_str)
        .ok_or_else(|| FirehoseError::invalid("DestinationId is required"))?;
    let (what, update) = match (
        request.get("ExtendedS3DestinationUpdate"),
        request.get("S3DestinationUpdate"),
    ) {
        (Some(u), _) => ("ExtendedS3DestinationUpdate", u),
        (None, Some(u)) => ("S3DestinationUpdate", u),
        (None, None) => {
            return Err(FirehoseError::invalid(
                "an update is required: ExtendedS3DestinationUpdate",
            ));
        }
    };
    let mut records = firehose.records.lock().await;
    let definition = definition(firehose, &name)?;
    if version != definition.version.to_string() {
        return Err(FirehoseError::new(
            "ConcurrentModificationException",
            format!(
                "CurrentDeliveryStreamVersionId {version} is not the current version {} of {name}; describe it again",
                definition.version
            ),
        ));
    }
    if destination_id != DESTINATION_ID {
        return Err(FirehoseError::invalid(format!(
            "DestinationId {destination_id} is not a destination of {name}; its destination is {DESTINATION_ID}"
        )));
    }
    let Some(record) = records.get(&name).filter(|r| !r.destination.is_null()) else {
        return Err(FirehoseError::invalid(format!(
            "{name} was made in SQL; change it with CREATE OR REPLACE DELIVERY STREAM"
        )));
    };
    let mut destination = record.destination.clone();
    merge_update(&mut destination, update);
    let options = delivery_options(&destination, what, &firehose.glue)?;
    firehose
        .session
        .update_delivery(&name, options)
        .await
        .map_err(|e| FirehoseError::invalid(e.to_string()))?;
    if let Some(record) = records.get_mut(&name) {
        record.destination = destination;
        record.last_update_timestamp = now_seconds();
    }
    write_json(&firehose.path, &*records)?;
    Ok(json!({}))
}
