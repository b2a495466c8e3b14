//! The `WITH` options of `CREATE DELIVERY STREAM`, checked one by one.

use arrow::datatypes::Schema;

use arrow::datatypes::SchemaRef;

use crate::error::{Error, Result};
use crate::partition_query::PartitionQuery;
use crate::prefix::Template;
use crate::record_columns::parse_record_columns;

/// Every option `CREATE DELIVERY STREAM` accepts.
pub const OPTIONS: [&str; 17] = [
    "destination",
    "format",
    "compression",
    "buffer_size_mb",
    "buffer_interval_seconds",
    "prefix",
    "error_output_prefix",
    "s3_endpoint",
    "s3_region",
    "s3_allow_http",
    "s3_access_key_id",
    "s3_secret_access_key",
    "s3_session_token",
    "record_columns",
    "partition_query",
    "record_delimiter",
    "record_split",
];

/// Firehose's default prefix: the UTC hour of the oldest record in the object.
pub const DEFAULT_PREFIX: &str =
    "!{timestamp:yyyy}/!{timestamp:MM}/!{timestamp:dd}/!{timestamp:HH}/";

/// Where records that cannot be converted go by default.
pub const DEFAULT_ERROR_PREFIX: &str = "errors/!{firehose:error-output-type}/!{timestamp:yyyy}/!{timestamp:MM}/!{timestamp:dd}/!{timestamp:HH}/";

/// The object format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Parquet,
    Json,
    Csv,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::Parquet => "parquet",
            Format::Json => "json",
            Format::Csv => "csv",
        }
    }
}

/// How objects are compressed: Parquet compresses its pages, JSON lines and CSV the whole
/// object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Snappy,
    Gzip,
    Zstd,
}

impl Compression {
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Snappy => "snappy",
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
        }
    }
}

/// Endpoint, region and credentials of an S3-compatible store; unset ones come from the
/// `AWS_*` environment variables.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct S3Options {
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub allow_http: bool,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub session_token: Option<String>,
}

/// A delivery stream's settings.
#[derive(Debug, Clone)]
pub struct DeliveryOptions {
    pub destination: String,
    pub format: Format,
    pub compression: Compression,
    /// Flush a buffer when its records reach this many bytes (before compression).
    pub buffer_size_bytes: usize,
    /// Flush a buffer when its oldest record has waited this long (0: after every read).
    pub buffer_interval_ms: i64,
    pub prefix: Template,
    pub error_output_prefix: Template,
    pub s3: S3Options,
    /// Records (JSON) are converted into these columns (`record_columns`, Firehose's record
    /// format conversion); those that do not convert go to the error output.
    pub record_columns: Option<SchemaRef>,
    /// The jq query whose result names each record's partition keys (`partition_query`).
    pub partition_query: Option<PartitionQuery>,
    /// Whether raw records written as JSON lines or CSV get a newline where they end without
    /// one (`record_delimiter = 'newline'`, the default) or are concatenated as they are
    /// (`'none'`, Firehose's default).
    pub newline_delimited: bool,
    /// How one record is split into several before partitioning (`record_split`, Firehose's
    /// `RecordDeAggregation`).
    pub record_split: RecordSplit,
}

/// Firehose's multi-record de-aggregation: how a record holding several is cut.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordSplit {
    None,
    /// Concatenated JSON objects (`{"a":1}{"a":2}`, with or without whitespace between).
    Json,
    /// Records separated by a delimiter.
    Delimited(Vec<u8>),
}

impl DeliveryOptions {
    /// Checks `options` (keys lower-case) for a delivery stream reading a stream whose own
    /// columns are `columns`.
    pub fn parse(options: &[(String, String)], columns: &Schema) -> Result<Self> {
        let mut seen: Vec<&str> = Vec::new();
        for (key, _) in options {
            if !OPTIONS.contains(&key.as_str()) {
                return Err(Error::Invalid(format!(
                    "unknown WITH option '{key}' for CREATE DELIVERY STREAM; accepted options are {}",
                    OPTIONS.join(", ")
                )));
            }
            if seen.contains(&key.as_str()) {
                return Err(Error::Invalid(format!(
                    "WITH option '{key}' is given twice"
                )));
            }
            seen.push(key);
        }
        let get = |key: &str| {
            options
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_str())
        };
        let Some(destination) = get("destination") else {
            return Err(Error::Invalid(
                "CREATE DELIVERY STREAM needs WITH (destination = 's3://bucket/prefix/' | 'file:///folder/' | 'relative/folder/')"
                    .to_string(),
            ));
        };
        let format = match get("format").map(str::to_ascii_lowercase).as_deref() {
            None | Some("json") => Format::Json,
            Some("parquet") => Format::Parquet,
            Some("csv") => Format::Csv,
            Some(other) => {
                return Err(Error::Invalid(format!(
                    "format = '{other}' is not a delivery format; use 'parquet', 'json' or 'csv'"
                )));
            }
        };
        let compression = match (format, get("compression").map(str::to_ascii_lowercase)) {
            (Format::Parquet, None) => Compression::Snappy,
            (_, None) => Compression::None,
            (_, Some(c)) if c == "none" => Compression::None,
            (_, Some(c)) if c == "gzip" => Compression::Gzip,
            (_, Some(c)) if c == "zstd" => Compression::Zstd,
            (Format::Parquet, Some(c)) if c == "snappy" => Compression::Snappy,
            (Format::Parquet, Some(other)) => {
                return Err(Error::Invalid(format!(
                    "compression = '{other}' is not available for parquet; use 'snappy', 'zstd', 'gzip' or 'none'"
                )));
            }
            (format, Some(other)) => {
                return Err(Error::Invalid(format!(
                    "compression = '{other}' is not available for {}; use 'gzip', 'zstd' or 'none'",
                    format.name()
                )));
            }
        };
        let buffer_size_mb = number(get("buffer_size_mb"), "buffer_size_mb", 5, 1..=128)?;
        let interval = number(
            get("buffer_interval_seconds"),
            "buffer_interval_seconds",
            300,
            0..=900,
        )?;
        let record_columns = get("record_columns")
            .map(parse_record_columns)
            .transpose()?;
        let partition_query = get("partition_query")
            .map(PartitionQuery::parse)
            .transpose()?;
        // Partition keys name the query's keys, or the columns records are converted into,
        // or the stream's own columns.
        let key_columns = match (&partition_query, &record_columns) {
            (Some(_), _) => None,
            (None, Some(converted)) => Some(converted.as_ref()),
            (None, None) => Some(columns),
        };
        let newline_delimited = match get("record_delimiter")
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            None | Some("newline") => true,
            Some("none") => false,
            Some(other) => {
                return Err(Error::Invalid(format!(
                    "record_delimiter = '{other}' is not known; use 'newline' (a newline after each record that has none) or 'none' (records concatenated as they are)"
                )));
            }
        };
        let record_split = match get("record_split") {
            None => RecordSplit::None,
            Some(text) if text.eq_ignore_ascii_case("none") => RecordSplit::None,
            Some(text) if text.eq_ignore_ascii_case("json") => RecordSplit::Json,
            Some(text) => match text.split_once(':') {
                Some((kind, delimiter))
                    if kind.eq_ignore_ascii_case("delimited") && !delimiter.is_empty() =>
                {
                    RecordSplit::Delimited(delimiter.as_bytes().to_vec())
                }
                _ => {
                    return Err(Error::Invalid(format!(
                        "record_split = '{text}' is not known; use 'json' (concatenated JSON objects) or 'delimited:<delimiter>'"
                    )));
                }
            },
        };
        let prefix = Template::parse(
            get("prefix").unwrap_or(DEFAULT_PREFIX),
            "prefix",
            key_columns,
        )?;
        if prefix.uses_error_type() {
            return Err(Error::Invalid(
                "prefix cannot use !{firehose:error-output-type}; only error_output_prefix can"
                    .to_string(),
            ));
        }
        let error_output_prefix = Template::parse(
            get("error_output_prefix").unwrap_or(DEFAULT_ERROR_PREFIX),
            "error_output_prefix",
            key_columns,
        )?;
        if !error_output_prefix.partition_columns().is_empty() {
            return Err(Error::Invalid(
                "error_output_prefix cannot use !{partitionKeyFromQuery:…}: records that fail have no usable columns"
                    .to_string(),
            ));
        }
        let allow_http = match get("s3_allow_http").map(str::to_ascii_lowercase).as_deref() {
            None | Some("false") => false,
            Some("true") => true,
            Some(other) => {
                return Err(Error::Invalid(format!(
                    "s3_allow_http = '{other}' is not true or false"
                )));
            }
        };
        Ok(Self {
            destination: destination.to_string(),
            format,
            compression,
            buffer_size_bytes: buffer_size_mb as usize * 1024 * 1024,
            buffer_interval_ms: interval as i64 * 1000,
            prefix,
            error_output_prefix,
            s3: S3Options {
                endpoint: get("s3_endpoint").map(str::to_string),
                region: get("s3_region").map(str::to_string),
                allow_http,
                access_key_id: get("s3_access_key_id").map(str::to_string),
                secret_access_key: get("s3_secret_access_key").map(str::to_string),
                session_token: get("s3_session_token").map(str::to_string),
            },
            record_columns,
            partition_query,
            newline_delimited,
            record_split,
        })
    }
}

fn number(
    text: Option<&str>,
    option: &str,
    default: u64,
    range: std::ops::RangeInclusive<u64>,
) -> Result<u64> {
    let Some(text) = text else {
        return Ok(default);
    };
    match text.trim().parse::<u64>() {
        Ok(n) if range.contains(&n) => Ok(n),
        _ => Err(Error::Invalid(format!(
            "{option} = '{text}' must be a whole number from {} to {}",
            range.start(),
            range.end()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::{DataType, Field};

    fn opts(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn columns() -> Schema {
        Schema::new(vec![Field::new("url", DataType::Utf8, true)])
    }

    #[test]
    fn defaults_are_firehose_s() {
        let o =
            DeliveryOptions::parse(&opts(&[("destination", "out/")]), &columns()).expect("valid");
        assert_eq!(o.format, Format::Json);
        assert_eq!(o.compression, Compression::None);
        assert_eq!(o.buffer_size_bytes, 5 * 1024 * 1024);
        assert_eq!(o.buffer_interval_ms, 300_000);
        let o = DeliveryOptions::parse(
            &opts(&[("destination", "out/"), ("format", "parquet")]),
            &columns(),
        )
        .expect("valid");
        assert_eq!(o.compression, Compression::Snappy);
    }

    #[test]
    fn mistakes_name_the_option() {
        let error = |pairs: &[(&str, &str)]| {
            DeliveryOptions::parse(&opts(pairs), &columns())
                .expect_err("invalid")
                .to_string()
        };
        assert!(error(&[]).contains("needs WITH (destination"));
        assert!(
            error(&[("destination", "x"), ("bogus", "1")]).contains("unknown WITH option 'bogus'")
        );
        assert!(
            error(&[("destination", "x"), ("buffer_size_mb", "0")])
                .contains("buffer_size_mb = '0' must be a whole number from 1 to 128")
        );
        assert!(
            error(&[("destination", "x"), ("buffer_interval_seconds", "901")])
                .contains("from 0 to 900")
        );
        assert!(
            error(&[
                ("destination", "x"),
                ("format", "json"),
                ("compression", "snappy")
            ])
            .contains("not available for json")
        );
        assert!(
            error(&[("destination", "x"), ("format", "avro")]).contains("not a delivery format")
        );
        assert!(
            error(&[
                ("destination", "x"),
                ("prefix", "!{partitionKeyFromQuery:nope}/")
            ])
            .contains("no column 'nope'")
        );
    }
}
