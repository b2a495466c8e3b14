//! The Amazon Kinesis Agent's configuration file (`agent.json`), read as the Agent reads it:
//! the endpoints and credentials at the top, then `flows`, each a file pattern and where its
//! records go. Settings Sluice does not act on (CloudWatch metrics, STS roles) are accepted and
//! named in a warning; a setting that is wrong is refused with its name and what it takes.

use std::path::PathBuf;

use serde_json::Value;

use crate::error::{Error, Result};
use crate::process::Processor;

/// Where a flow's records go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// `kinesisStream`: PutRecords into a Kinesis stream.
    Kinesis(String),
    /// `deliveryStream`: PutRecordBatch into a Firehose delivery stream.
    Firehose(String),
}

/// How records get their partition keys (Kinesis only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartitionKeyOption {
    /// A random key per record: records spread over every shard.
    Random,
    /// The MD5 of the record: the same record always goes to the same shard.
    Deterministic,
}

/// Where a file with no checkpoint is read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitialPosition {
    StartOfFile,
    EndOfFile,
}

/// One flow: files matching a pattern, tailed into one destination.
#[derive(Debug, Clone)]
pub struct FlowConfig {
    /// The pattern as written; `*` and `?` match within the file name.
    pub file_pattern: String,
    pub destination: Destination,
    pub partition_key: PartitionKeyOption,
    pub initial_position: InitialPosition,
    /// A line matching this starts a record; the lines up to the next one belong to it.
    pub multi_line_start: Option<regex::Regex>,
    pub skip_header_lines: usize,
    /// What ends a record that was cut at the size limit.
    pub truncated_record_terminator: Vec<u8>,
    pub max_buffer_age_ms: u64,
    pub max_buffer_size_records: usize,
    pub max_buffer_size_bytes: usize,
    pub processors: Vec<Processor>,
}

impl FlowConfig {
    /// Largest record the destination takes.
    pub fn max_record_bytes(&self) -> usize {
        match self.destination {
            Destination::Kinesis(_) => 1024 * 1024,
            Destination::Firehose(_) => 1_024_000,
        }
    }

    /// A short name for messages and checkpoints: the destination and the pattern.
    pub fn id(&self) -> String {
        match &self.destination {
            Destination::Kinesis(s) => format!("kinesis:{s}:{}", self.file_pattern),
            Destination::Firehose(s) => format!("firehose:{s}:{}", self.file_pattern),
        }
    }
}

/// The whole configuration.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub kinesis_endpoint: Option<String>,
    pub firehose_endpoint: Option<String>,
    pub region: String,
    /// `awsAccessKeyId`/`awsSecretAccessKey`, else the `AWS_*` environment variables.
    pub credentials: (String, String),
    pub checkpoint_file: PathBuf,
    /// `maxSendingThreads`: how many requests the agent keeps in flight at once, over all flows
    /// (each flow's batches are still acknowledged and checkpointed in file order).
    pub max_sending_threads: usize,
    pub flows: Vec<FlowConfig>,
}

/// Requests in flight when `maxSendingThreads` is not set.
pub const DEFAULT_SENDING_THREADS: usize = 8;

/// Top-level settings the Agent knows that Sluice reads but does not act on.
const IGNORED: [&str; 8] = [
    "cloudwatch.emitMetrics",
    "cloudwatch.endpoint",
    "assumeRoleARN",
    "assumeRoleExternalId",
    "sts.endpoint",
    "log.level",
    "shutdownTimeoutMillis",
    "userDefinedCredentialsProvider.classname",
];

impl AgentConfig {
    /// Reads `agent.json` text.
    pub fn parse(text: &str) -> Result<Self> {
        let root: Value = serde_json::from_str(text)
            .map_err(|e| Error::Config(format!("the configuration is not JSON: {e}")))?;
        let Some(object) = root.as_object() else {
            return Err(Error::Config(
                "the configuration must be a JSON object with \"flows\"".to_string(),
            ));
        };
        for key in object.keys() {
            let known = matches!(
                key.as_str(),
                "flows"
                    | "kinesis.endpoint"
                    | "firehose.endpoint"
                    | "awsAccessKeyId"
                    | "awsSecretAccessKey"
                    | "checkpointFile"
                    | "awsRegion"
                    | "maxSendingThreads"
            );
            if !known && !IGNORED.contains(&key.as_str()) {
                return Err(Error::Config(format!(
                    "unknown setting \"{key}\"; the Agent's settings are flows, kinesis.endpoint, firehose.endpoint, awsAccessKeyId, awsSecretAccessKey, checkpointFile, maxSendingThreads and {}",
                    IGNORED.join(", ")
                )));
            }
            if IGNORED.contains(&key.as_str()) {
                log::warn!("agent.json: \"{key}\" is accepted but has no effect in sluice agent");
            }
        }
        let text_of = |key: &str| -> Result<Option<String>> {
            match object.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(other) => Err(Error::Config(format!(
                    "\"{key}\" must be a string, not {other}"
                ))),
            }
        };
        let kinesis_endpoint = text_of("kinesis.endpoint")?.map(with_scheme);
        let firehose_endpoint = text_of("firehose.endpoint")?.map(with_scheme);
        let region = text_of("awsRegion")?
            .or_else(|| {
                [&kinesis_endpoint, &firehose_endpoint]
                    .into_iter()
                    .flatten()
                    .find_map(|e| region_of(e))
            })
            .or_else(|| std::env::var("AWS_REGION").ok())
            .or_else(|| std::env::var("AWS_DEFAULT_REGION").ok())
            .unwrap_or_else(|| "us-east-1".to_string());
        let key = text_of("awsAccessKeyId")?.or_else(|| std::env::var("AWS_ACCESS_KEY_ID").ok());
        let secret =
            text_of("awsSecretAccessKey")?.or_else(|| std::env::var("AWS_SECRET_ACCESS_KEY").ok());
        let (Some(key), Some(secret)) = (key, secret) else {
            return Err(Error::Config(
                "no credentials: set awsAccessKeyId and awsSecretAccessKey in the configuration, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY".to_string(),
            ));
        };
        let checkpoint_file = text_of("checkpointFile")?
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("sluice-agent-checkpoints.json"));
        let max_sending_threads = match object.get("maxSendingThreads") {
            None | Some(Value::Null) => DEFAULT_SENDING_THREADS,
            Some(v) => v
                .as_u64()
                .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
                .filter(|n| (1..=1024).contains(n))
                .ok_or_else(|| {
                    Error::Config(format!(
                        "\"maxSendingThreads\" must be a whole number from 1 to 1024, not {v}"
                    ))
                })? as usize,
        };
        let flows = object
            .get("flows")
            .and_then(Value::as_array)
            .filter(|f| !f.is_empty())
            .ok_or_else(|| {
                Error::Config(
                    "\"flows\" is required: a list of {\"filePattern\": …, \"kinesisStream\" | \"deliveryStream\": …}"
                        .to_string(),
                )
            })?
            .iter()
            .enumerate()
            .map(|(i, flow)| parse_flow(flow, i))
            .collect::<Result<Vec<_>>>()?;
        for flow in &flows {
            let (endpoint, setting) = match flow.destination {
                Destination::Kinesis(_) => (&kinesis_endpoint, "kinesis.endpoint"),
                Destination::Firehose(_) => (&firehose_endpoint, "firehose.endpoint"),
            };
            if endpoint.is_none() {
                return Err(Error::Config(format!(
                    "flow {} sends to {:?} but \"{setting}\" is not set (e.g. \"http://127.0.0.1:4567\" for sluice serve)",
                    flow.file_pattern, flow.destination
                )));
            }
        }
        Ok(Self {
            kinesis_endpoint,
            firehose_endpoint,
            region,
            credentials: (key, secret),
            checkpoint_file,
            max_sending_threads,
            flows,
        })
    }
}

/// The Agent takes endpoints with or without a scheme; without one, https.
fn with_scheme(endpoint: String) -> String {
    if endpoint.contains("://") {
        endpoint
    } else {
        format!("https://{endpoint}")
    }
}

/// The region in an AWS endpoint (`kinesis.eu-west-1.amazonaws.com`).
fn region_of(endpoint: &str) -> Option<String> {
    let host = endpoint.split("://").nth(1)?.split(['/', ':']).next()?;
    let parts: Vec<&str> = host.split('.').collect();
    (parts.len() >= 4 && host.ends_with(".amazonaws.com")).then(|| parts[1].to_string())
}

fn parse_flow(flow: &Value, index: usize) -> Result<FlowConfig> {
    let at = |key: &str| format!("flows[{index}].{key}");
    let text = |key: &str| -> Result<Option<&str>> {
        match flow.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(other) => Err(Error::Config(format!(
                "{} must be a string, not {other}",
                at(key)
            ))),
        }
    };
    let number = |key: &str, default: u64, range: std::ops::RangeInclusive<u64>| -> Result<u64> {
        match flow.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => v
                .as_u64()
                .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
                .filter(|n| range.contains(n))
                .ok_or_else(|| {
                    Error::Config(format!(
                        "{} must be a whole number from {} to {}, not {v}",
                        at(key),
                        range.start(),
                        range.end()
                    ))
                }),
        }
    };
    let file_pattern = text("filePattern")?
        .ok_or_else(|| {
            Error::Config(format!(
                "{} is required (e.g. /var/log/app/*.log)",
                at("filePattern")
            ))
        })?
        .to_string();
    if !file_pattern.starts_with('/') {
        return Err(Error::Config(format!(
            "{} '{file_pattern}' must be an absolute path",
            at("filePattern")
        )));
    }
    let destination = match (text("kinesisStream")?, text("deliveryStream")?) {
        (Some(s), None) => Destination::Kinesis(s.to_string()),
        (None, Some(s)) => Destination::Firehose(s.to_string()),
        (Some(_), Some(_)) => {
            return Err(Error::Config(format!(
                "flows[{index}] gives both kinesisStream and deliveryStream; a flow has one destination"
            )));
        }
        (None, None) => {
            return Err(Error::Config(format!(
                "flows[{index}] needs kinesisStream or deliveryStream"
            )));
        }
    };
    let partition_key = match text("partitionKeyOption")? {
        None | Some("RANDOM") => PartitionKeyOption::Random,
        Some("DETERMINISTIC") => PartitionKeyOption::Deterministic,
        Some(other) => {
            return Err(Error::Config(format!(
                "{} '{other}' is not RANDOM or DETERMINISTIC",
                at("partitionKeyOption")
            )));
        }
    };
    let initial_position = match text("initialPosition")? {
        None | Some("END_OF_FILE") => InitialPosition::EndOfFile,
        Some("START_OF_FILE") => InitialPosition::StartOfFile,
        Some(other) => {
            return Err(Error::Config(format!(
                "{} '{other}' is not START_OF_FILE or END_OF_FILE",
                at("initialPosition")
            )));
        }
    };
    let multi_line_start = text("multiLineStartPattern")?
        .map(|p| {
            regex::Regex::new(&format!("^(?:{p})")).map_err(|e| {
                Error::Config(format!(
                    "{} is not a regular expression: {e}",
                    at("multiLineStartPattern")
                ))
            })
        })
        .transpose()?;
    let (max_records, max_bytes) = match destination {
        Destination::Kinesis(_) => (500, 5 * 1024 * 1024),
        Destination::Firehose(_) => (500, 4 * 1024 * 1024),
    };
    let processors = match flow.get("dataProcessingOptions") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(options)) => options
            .iter()
            .enumerate()
            .map(|(i, o)| Processor::parse(o, &format!("{}[{i}]", at("dataProcessingOptions"))))
            .collect::<Result<_>>()?,
        Some(other) => {
            return Err(Error::Config(format!(
                "{} must be a list, not {other}",
                at("dataProcessingOptions")
            )));
        }
    };
    Ok(FlowConfig {
        file_pattern,
        destination,
        partition_key,
        initial_position,
        multi_line_start,
        skip_header_lines: number("skipHeaderLines", 0, 0..=1_000_000)? as usize,
        truncated_record_terminator: text("truncatedRecordTerminator")?
            .unwrap_or("\n")
            .as_bytes()
            .to_vec(),
        max_buffer_age_ms: number("maxBufferAgeMillis", 60_000, 1_000..=900_000)?,
        max_buffer_size_records: number("maxBufferSizeRecords", max_records, 1..=max_records)?
            as usize,
        max_buffer_size_bytes: number("maxBufferSizeBytes", max_bytes as u64, 1..=max_bytes as u64)?
            as usize,
        processors,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agent_s_own_example_reads() {
        let config = AgentConfig::parse(
            r#"{
              "cloudwatch.emitMetrics": false,
              "kinesis.endpoint": "http://127.0.0.1:4567",
              "firehose.endpoint": "http://127.0.0.1:4567",
              "awsAccessKeyId": "k", "awsSecretAccessKey": "s",
              "flows": [
                {"filePattern": "/tmp/app.log*", "kinesisStream": "logs", "partitionKeyOption": "DETERMINISTIC",
                 "initialPosition": "START_OF_FILE", "maxBufferAgeMillis": 1000},
                {"filePattern": "/var/log/httpd/access_log*", "deliveryStream": "web",
                 "dataProcessingOptions": [{"optionName": "LOGTOJSON", "logFormat": "COMBINEDAPACHELOG"}]}
              ]
            }"#,
        )
        .expect("valid");
        assert_eq!(config.flows.len(), 2);
        assert_eq!(
            config.flows[0].destination,
            Destination::Kinesis("logs".into())
        );
        assert_eq!(config.flows[0].max_buffer_age_ms, 1000);
        assert_eq!(config.flows[1].max_buffer_size_bytes, 4 * 1024 * 1024);
        assert_eq!(config.region, "us-east-1");
        assert_eq!(config.max_sending_threads, DEFAULT_SENDING_THREADS);
    }

    #[test]
    fn mistakes_name_the_setting() {
        let error = |text: &str| AgentConfig::parse(text).expect_err("invalid").to_string();
        let base =
            r#""awsAccessKeyId": "k", "awsSecretAccessKey": "s", "kinesis.endpoint": "http://x""#;
        assert!(error(&format!("{{{base}}}")).contains("\"flows\" is required"));
        assert!(
            error(&format!(r#"{{{base}, "flows": [{{"filePattern": "/a", "kinesisStream": "s", "initialPosition": "MIDDLE"}}]}}"#))
                .contains("flows[0].initialPosition 'MIDDLE'")
        );
        assert!(
            error(&format!(r#"{{{base}, "flows": [{{"filePattern": "/a", "kinesisStream": "s", "maxBufferAgeMillis": 5}}]}}"#))
                .contains("flows[0].maxBufferAgeMillis must be a whole number from 1000")
        );
        assert!(
            error(&format!(
                r#"{{{base}, "flows": [{{"filePattern": "/a", "deliveryStream": "d"}}]}}"#
            ))
            .contains("\"firehose.endpoint\" is not set")
        );
        assert!(error(&format!(r#"{{{base}, "flow": []}}"#)).contains("unknown setting \"flow\""));
        assert!(
            error(&format!(
                r#"{{{base}, "maxSendingThreads": 0, "flows": [{{"filePattern": "/a", "kinesisStream": "s"}}]}}"#
            ))
            .contains("\"maxSendingThreads\" must be a whole number from 1 to 1024, not 0")
        );
    }
}
