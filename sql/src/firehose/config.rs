//! A Firehose S3 destination (`ExtendedS3DestinationConfiguration`, or the older
//! `S3DestinationConfiguration`) as delivery options, checked as Firehose checks it; and the
//! options of a delivery stream made in SQL as a Firehose description.

use base64::Engine as _;
use serde_json::{Value, json};

use super::glue::GlueCatalog;
use super::{FirehoseError, REGION};

type Result<T, E = FirehoseError> = std::result::Result<T, E>;

/// The delivery options for destination `config` (named `what` in messages).
pub fn delivery_options(
    config: &Value,
    what: &str,
    glue: &GlueCatalog,
) -> Result<Vec<(String, String)>> {
    let invalid = |message: String| FirehoseError::invalid(message);
    let text = |field: &str| -> Result<Option<&str>> {
        match config.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(other) => Err(invalid(format!(
                "{what}.{field} must be a string, not {other}"
            ))),
        }
    };
    let bucket_arn = text("BucketARN")?.ok_or_else(|| {
        invalid(format!(
            "{what}.BucketARN is required (arn:aws:s3:::bucket)"
        ))
    })?;
    let bucket = bucket_arn
        .strip_prefix("arn:aws:s3:::")
        .filter(|b| !b.is_empty() && !b.contains('/'))
        .ok_or_else(|| {
            invalid(format!(
                "{what}.BucketARN '{bucket_arn}' is not a bucket ARN; write arn:aws:s3:::bucket"
            ))
        })?;
    let mut options: Vec<(String, String)> =
        vec![("destination".into(), format!("s3://{bucket}/"))];
    let mut push = |key: &str, value: String| options.push((key.to_string(), value));
    if let Some(prefix) = text("Prefix")?.filter(|p| !p.is_empty()) {
        push("prefix", prefix.to_string());
    }
    if let Some(prefix) = text("ErrorOutputPrefix")?.filter(|p| !p.is_empty()) {
        push("error_output_prefix", prefix.to_string());
    }
    if let Some(hints) = config.get("BufferingHints") {
        if let Some(size) = hints.get("SizeInMBs") {
            let size = size.as_u64().filter(|s| (1..=128).contains(s)).ok_or_else(|| {
                invalid(format!(
                    "{what}.BufferingHints.SizeInMBs must be a whole number from 1 to 128, not {size}"
                ))
            })?;
            push("buffer_size_mb", size.to_string());
        }
        if let Some(interval) = hints.get("IntervalInSeconds") {
            let interval = interval.as_u64().filter(|s| *s <= 900).ok_or_else(|| {
                invalid(format!(
                    "{what}.BufferingHints.IntervalInSeconds must be a whole number from 0 to 900, not {interval}"
                ))
            })?;
            push("buffer_interval_seconds", interval.to_string());
        }
    }
    let compression = text("CompressionFormat")?.unwrap_or("UNCOMPRESSED");
    let conversion = config
        .get("DataFormatConversionConfiguration")
        .filter(|c| c.get("Enabled").and_then(Value::as_bool) != Some(false));
    if let Some(conversion) = conversion {
        if compression != "UNCOMPRESSED" {
            return Err(invalid(format!(
                "{what}.CompressionFormat must be UNCOMPRESSED when DataFormatConversionConfiguration is enabled; Parquet compresses its pages (OutputFormatConfiguration.Serializer.ParquetSerDe.Compression)"
            )));
        }
        let serializer = conversion.pointer("/OutputFormatConfiguration/Serializer");
        if serializer.and_then(|s| s.get("OrcSerDe")).is_some() {
            return Err(invalid(format!(
                "{what}.DataFormatConversionConfiguration: ORC (OrcSerDe) is not supported by Sluice; use ParquetSerDe"
            )));
        }
        let parquet = serializer.and_then(|s| s.get("ParquetSerDe")).ok_or_else(|| {
            invalid(format!(
                "{what}.DataFormatConversionConfiguration.OutputFormatConfiguration.Serializer needs ParquetSerDe"
            ))
        })?;
        let codec = match parquet.get("Compression").and_then(Value::as_str) {
            None | Some("SNAPPY") => "snappy",
            Some("GZIP") => "gzip",
            Some("UNCOMPRESSED") => "none",
            Some(other) => {
                return Err(invalid(format!(
                    "{what}...ParquetSerDe.Compression '{other}' is not SNAPPY, GZIP or UNCOMPRESSED"
                )));
            }
        };
        let deserializer = conversion.pointer("/InputFormatConfiguration/Deserializer");
        if deserializer
            .is_some_and(|d| d.get("OpenXJsonSerDe").is_none() && d.get("HiveJsonSerDe").is_none())
        {
            return Err(invalid(format!(
                "{what}.DataFormatConversionConfiguration.InputFormatConfiguration.Deserializer must be OpenXJsonSerDe or HiveJsonSerDe"
            )));
        }
        let schema = conversion.get("SchemaConfiguration").ok_or_else(|| {
            invalid(format!(
                "{what}.DataFormatConversionConfiguration.SchemaConfiguration is required: the Glue DatabaseName and TableName whose columns records are converted into"
            ))
        })?;
        let database = schema.get("DatabaseName").and_then(Value::as_str);
        let table = schema.get("TableName").and_then(Value::as_str);
        let (Some(database), Some(table)) = (database, table) else {
            return Err(invalid(format!(
                "{what}.DataFormatConversionConfiguration.SchemaConfiguration needs DatabaseName and TableName"
            )));
        };
        let columns = glue.record_columns(database, table).map_err(|e| {
            invalid(format!(
                "{what}.DataFormatConversionConfiguration.SchemaConfiguration: {} (create the table in Sluice's Glue catalog first: aws glue create-table)",
                e.message
            ))
        })?;
        push("format", "parquet".into());
        push("compression", codec.into());
        push("record_columns", columns);
    } else {
        push("format", "json".into());
        push(
            "compression",
            match compression {
                "UNCOMPRESSED" => "none",
                "GZIP" => "gzip",
                "ZIP" | "Snappy" | "HADOOP_SNAPPY" => {
                    return Err(invalid(format!(
                        "{what}.CompressionFormat {compression} is not supported by Sluice; use GZIP or UNCOMPRESSED"
                    )));
                }
                other => {
                    return Err(invalid(format!(
                        "{what}.CompressionFormat '{other}' is not one of UNCOMPRESSED, GZIP, ZIP, Snappy, HADOOP_SNAPPY"
                    )));
                }
            }
            .into(),
        );
    }
    // Processing: metadata extraction, delimiters, multi-record de-aggregation.
    let dynamic = config
        .pointer("/DynamicPartitioningConfiguration/Enabled")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let mut delimiter = false;
    let processing_enabled = config
        .pointer("/ProcessingConfiguration/Enabled")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let processors = config
        .pointer("/ProcessingConfiguration/Processors")
        .and_then(Value::as_array)
        .filter(|_| processing_enabled)
        .cloned()
        .unwrap_or_default();
    let mut query = None;
    for (i, processor) in processors.iter().enumerate() {
        let at = format!("{what}.ProcessingConfiguration.Processors[{i}]");
        let parameter = |name: &str| {
            processor
                .get("Parameters")
                .and_then(Value::as_array)
                .and_then(|ps| {
                    ps.iter()
                        .find(|p| p.get("ParameterName").and_then(Value::as_str) == Some(name))
                })
                .and_then(|p| p.get("ParameterValue"))
                .and_then(Value::as_str)
        };
        match processor.get("Type").and_then(Value::as_str) {
            Some("MetadataExtraction") => {
                if let Some(engine) = parameter("JsonParsingEngine")
                    && !engine.starts_with("JQ")
                {
                    return Err(invalid(format!(
                        "{at}: JsonParsingEngine '{engine}' is not known; use JQ-1.6"
                    )));
                }
                let text = parameter("MetadataExtractionQuery").ok_or_else(|| {
                    invalid(format!(
                        "{at}: MetadataExtraction needs a MetadataExtractionQuery parameter"
                    ))
                })?;
                query = Some(text.to_string());
            }
            Some("AppendDelimiterToRecord") => delimiter = true,
            Some("RecordDeAggregation") => {
                let split = match parameter("SubRecordType") {
                    None | Some("JSON") => "json".to_string(),
                    Some("DELIMITED") => {
                        let encoded = parameter("Delimiter").ok_or_else(|| {
                            invalid(format!(
                                "{at}: SubRecordType DELIMITED needs a Delimiter parameter (base64)"
                            ))
                        })?;
                        let bytes = base64::engine::general_purpose::STANDARD
                            .decode(encoded)
                            .ok()
                            .and_then(|b| String::from_utf8(b).ok())
                            .filter(|d| !d.is_empty())
                            .ok_or_else(|| {
                                invalid(format!(
                                    "{at}: Delimiter '{encoded}' is not the base64 of a text delimiter"
                                ))
                            })?;
                        format!("delimited:{bytes}")
                    }
                    Some(other) => {
                        return Err(invalid(format!(
                            "{at}: SubRecordType '{other}' is not JSON or DELIMITED"
                        )));
                    }
                };
                push("record_split", split);
            }
            Some("Lambda") => {
                return Err(FirehoseError::new(
                    "InvalidArgumentException",
                    format!(
                        "{at}: Lambda processors are not supported by Sluice, which runs no Lambda functions; use MetadataExtraction (jq) or a pump in SQL to transform records"
                    ),
                ));
            }
            Some(other) => {
                return Err(invalid(format!(
                    "{at}: processor Type '{other}' is not supported; Sluice runs MetadataExtraction, AppendDelimiterToRecord and RecordDeAggregation"
                )));
            }
            None => return Err(invalid(format!("{at}: Type is required"))),
        }
    }
    let prefix = text("Prefix")?.unwrap_or("");
    if dynamic {
        if text("ErrorOutputPrefix")?.is_none_or(str::is_empty) {
            return Err(invalid(format!(
                "{what}.ErrorOutputPrefix is required when dynamic partitioning is enabled"
            )));
        }
        if !prefix.contains("!{partitionKeyFrom") {
            return Err(invalid(format!(
                "{what}.Prefix must use at least one !{{partitionKeyFromQuery:key}} when dynamic partitioning is enabled"
            )));
        }
        if prefix.contains("!{partitionKeyFromQuery:") && query.is_none() {
            return Err(invalid(format!(
                "{what}.Prefix uses !{{partitionKeyFromQuery:…}} but no MetadataExtraction processor gives the keys"
            )));
        }
    } else if prefix.contains("!{partitionKeyFrom") {
        return Err(invalid(format!(
            "{what}.Prefix uses partition keys, which need DynamicPartitioningConfiguration.Enabled = true"
        )));
    }
    if let Some(query) = query {
        if !dynamic {
            return Err(invalid(format!(
                "{what}: a MetadataExtraction processor needs DynamicPartitioningConfiguration.Enabled = true"
            )));
        }
        push("partition_query", query);
    }
    push(
        "record_delimiter",
        if delimiter { "newline" } else { "none" }.into(),
    );
    Ok(options)
}

/// Merges `update` (an `ExtendedS3DestinationUpdate`) into `config`: the members it gives
/// replace the ones there.
pub fn merge_update(config: &mut Value, update: &Value) {
    if let (Some(config), Some(update)) = (config.as_object_mut(), update.as_object()) {
        for (key, value) in update {
            config.insert(key.clone(), value.clone());
        }
    }
}

/// The destination description of a delivery stream: the configuration as given, with
/// Firehose's defaults filled in.
pub fn destination_description(config: &Value) -> Value {
    let mut out = config.clone();
    if let Some(object) = out.as_object_mut() {
        object
            .entry("BufferingHints")
            .or_insert(json!({"SizeInMBs": 5, "IntervalInSeconds": 300}));
        object
            .entry("CompressionFormat")
            .or_insert(json!("UNCOMPRESSED"));
        object
            .entry("EncryptionConfiguration")
            .or_insert(json!({"NoEncryptionConfig": "NoEncryption"}));
        object.entry("S3BackupMode").or_insert(json!("Disabled"));
        object.entry("RoleARN").or_insert(json!(""));
    }
    out
}

/// The description of a delivery stream made in SQL, from its options.
pub fn sql_destination_description(options: &[(String, String)]) -> Value {
    let get = |key: &str| {
        options
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    };
    let destination = get("destination").unwrap_or_default();
    let bucket = destination
        .strip_prefix("s3://")
        .map(|rest| rest.split('/').next().unwrap_or_default());
    let mut out = json!({
        "RoleARN": "",
        "Prefix": get("prefix").unwrap_or_default(),
        "ErrorOutputPrefix": get("error_output_prefix").unwrap_or_default(),
        "BufferingHints": {
            "SizeInMBs": get("buffer_size_mb").and_then(|v| v.parse::<u64>().ok()).unwrap_or(5),
            "IntervalInSeconds": get("buffer_interval_seconds").and_then(|v| v.parse::<u64>().ok()).unwrap_or(300),
        },
        "CompressionFormat": match get("compression") {
            Some("gzip") => "GZIP",
            _ => "UNCOMPRESSED",
        },
        "EncryptionConfiguration": {"NoEncryptionConfig": "NoEncryption"},
        "S3BackupMode": "Disabled",
    });
    if let (Some(object), Some(bucket)) = (out.as_object_mut(), bucket) {
        object.insert("BucketARN".into(), json!(format!("arn:aws:s3:::{bucket}")));
    }
    out
}

/// The ARN of Kinesis stream `name`.
pub fn kinesis_stream_arn(name: &str) -> String {
    format!("arn:aws:kinesis:{REGION}:{}:stream/{name}", super::ACCOUNT)
}

/// The ARN of delivery stream `name`.
pub fn delivery_stream_arn(name: &str) -> String {
    format!(
        "arn:aws:firehose:{REGION}:{}:deliverystream/{name}",
        super::ACCOUNT
    )
}
