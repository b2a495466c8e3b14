//! An application as the kinesisanalytics API (`KinesisAnalytics_20150814`) describes it: its
//! code, inputs, outputs, reference data and logging options, its status and version. The
//! same shapes are what `CreateApplication` takes, what `DescribeApplication` answers and what
//! Sluice keeps on disk, so a definition written for AWS reads unchanged.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::input::InputSchema;

/// The account and region Sluice answers as (the Kinesis API's).
pub const ACCOUNT: &str = "000000000000";
pub const REGION: &str = "us-east-1";

/// Where an application is in its life, as KDA names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ApplicationStatus {
    Deleting,
    Starting,
    Stopping,
    Ready,
    Running,
    Updating,
}

impl std::fmt::Display for ApplicationStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Deleting => "DELETING",
            Self::Starting => "STARTING",
            Self::Stopping => "STOPPING",
            Self::Ready => "READY",
            Self::Running => "RUNNING",
            Self::Updating => "UPDATING",
        })
    }
}

/// `ResourceARN` and `RoleARN` of a stream, a delivery stream or a function.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Resource {
    #[serde(rename = "ResourceARN")]
    pub resource_arn: String,
    #[serde(rename = "RoleARN", default, skip_serializing_if = "Option::is_none")]
    pub role_arn: Option<String>,
}

/// `InputParallelism`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct InputParallelism {
    pub count: u32,
}

/// `InputStartingPositionConfiguration`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct StartingPosition {
    pub input_starting_position: String,
}

/// One input: a stream whose records map into in-application streams.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Input {
    /// `1.1`, `2.1`, … (given by Sluice).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub input_id: String,
    pub name_prefix: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kinesis_streams_input: Option<Resource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kinesis_firehose_input: Option<Resource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_processing_configuration: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_parallelism: Option<InputParallelism>,
    pub input_schema: InputSchema,
    /// Where the input started reading when the application last started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_starting_position_configuration: Option<StartingPosition>,
}

impl Input {
    /// How many in-application streams it feeds.
    pub fn parallelism(&self) -> u32 {
        self.input_parallelism.map_or(1, |p| p.count)
    }

    /// The in-application streams it feeds: `<NamePrefix>_001`, `_002`, …
    pub fn in_app_stream_names(&self) -> Vec<String> {
        (1..=self.parallelism())
            .map(|i| format!("{}_{i:03}", self.name_prefix))
            .collect()
    }
}

/// `DestinationSchema`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DestinationSchema {
    pub record_format_type: String,
}

/// One output: an in-application stream delivered to a stream or a delivery stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Output {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub output_id: String,
    /// The in-application stream delivered.
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kinesis_streams_output: Option<Resource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kinesis_firehose_output: Option<Resource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lambda_output: Option<Resource>,
    pub destination_schema: DestinationSchema,
}

/// `S3ReferenceDataSource`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct S3ReferenceDataSource {
    #[serde(rename = "BucketARN")]
    pub bucket_arn: String,
    pub file_key: String,
    #[serde(
        rename = "ReferenceRoleARN",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub reference_role_arn: Option<String>,
}

/// One reference table: an object in S3-compatible storage mapped into an in-app table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ReferenceDataSource {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reference_id: String,
    pub table_name: String,
    #[serde(rename = "S3ReferenceDataSource")]
    pub s3_reference_data_source: S3ReferenceDataSource,
    pub reference_schema: InputSchema,
}

/// `CloudWatchLoggingOption`: kept and described; Sluice logs to its own log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CloudWatchLoggingOption {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cloud_watch_logging_option_id: String,
    #[serde(rename = "LogStreamARN")]
    pub log_stream_arn: String,
    #[serde(rename = "RoleARN", default, skip_serializing_if = "Option::is_none")]
    pub role_arn: Option<String>,
}

/// An application, as kept on disk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Application {
    pub application_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub application_description: Option<String>,
    #[serde(default)]
    pub application_code: String,
    #[serde(default)]
    pub inputs: Vec<Input>,
    #[serde(default)]
    pub outputs: Vec<Output>,
    #[serde(default)]
    pub reference_data_sources: Vec<ReferenceDataSource>,
    #[serde(default)]
    pub cloud_watch_logging_options: Vec<CloudWatchLoggingOption>,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    pub application_status: ApplicationStatus,
    pub application_version_id: u64,
    /// Seconds since the epoch, with milliseconds.
    pub create_timestamp: f64,
    pub last_update_timestamp: f64,
    /// The version whose code last ran: starting the same version again resumes its in-app
    /// streams and pumps; a newer one starts them afresh from its code.
    #[serde(default)]
    pub code_version_run: Option<u64>,
    /// The next id for an input, output, reference source or logging option.
    #[serde(default)]
    pub next_id: u32,
}

impl Application {
    /// The application's ARN.
    pub fn arn(&self) -> String {
        application_arn(&self.application_name)
    }

    /// The next `N.1` id.
    pub fn take_id(&mut self) -> String {
        self.next_id += 1;
        format!("{}.1", self.next_id)
    }
}

/// The ARN of application `name`.
pub fn application_arn(name: &str) -> String {
    format!("arn:aws:kinesisanalytics:{REGION}:{ACCOUNT}:application/{name}")
}

/// The name in an ARN of `service` and `kind` (`arn:aws:kinesis:…:stream/NAME`), or the text
/// itself when it is a plain name.
pub fn name_in_arn<'a>(arn: &'a str, service: &str, kind: &str) -> Option<&'a str> {
    if !arn.starts_with("arn:") {
        return Some(arn);
    }
    let mut parts = arn.splitn(6, ':');
    let (_, _, svc, _, _, resource) = (
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
    );
    if svc != service {
        return None;
    }
    resource
        .strip_prefix(kind)
        .and_then(|rest| rest.strip_prefix('/'))
        .filter(|name| !name.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_come_out_of_arns() {
        assert_eq!(
            name_in_arn(
                "arn:aws:kinesis:us-east-1:123456789012:stream/ticker",
                "kinesis",
                "stream"
            ),
            Some("ticker")
        );
        assert_eq!(name_in_arn("ticker", "kinesis", "stream"), Some("ticker"));
        assert_eq!(
            name_in_arn(
                "arn:aws:firehose:us-east-1:1:deliverystream/lake",
                "kinesis",
                "stream"
            ),
            None
        );
        assert_eq!(
            name_in_arn("arn:aws:kinesis:us-east-1:1:stream/", "kinesis", "stream"),
            None
        );
    }

    #[test]
    fn an_input_names_its_in_app_streams() -> Result<(), serde_json::Error> {
        let input: Input = serde_json::from_value(serde_json::json!({
            "NamePrefix": "SOURCE_SQL_STREAM",
            "KinesisStreamsInput": {"ResourceARN": "arn:aws:kinesis:us-east-1:1:stream/in", "RoleARN": "r"},
            "InputParallelism": {"Count": 2},
            "InputSchema": {
                "RecordFormat": {"RecordFormatType": "JSON",
                    "MappingParameters": {"JSONMappingParameters": {"RecordRowPath": "$"}}},
                "RecordColumns": [{"Name": "A", "Mapping": "$.a", "SqlType": "INTEGER"}]
            }
        }))?;
        assert_eq!(
            input.in_app_stream_names(),
            ["SOURCE_SQL_STREAM_001", "SOURCE_SQL_STREAM_002"]
        );
        Ok(())
    }
}
