//! Object key prefixes with Firehose's expressions: `!{timestamp:yyyy/MM/dd}`,
//! `!{firehose:random-string}`, `!{firehose:error-output-type}` and
//! `!{partitionKeyFromQuery:column}` (dynamic partitioning by a column of each record).

use arrow::datatypes::Schema;
use chrono::{DateTime, Utc};

use crate::error::{Error, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    /// A chrono format string, from the Java-style pattern.
    Timestamp(String),
    Random,
    ErrorType,
    PartitionKey(String),
}

/// A parsed prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    text: String,
    parts: Vec<Part>,
}

impl Template {
    /// Parses `text` (the value of option `what`); partition keys must be columns of `columns`,
    /// or may be any name when `columns` is `None` (keys that a partition query returns).
    pub fn parse(text: &str, what: &str, columns: Option<&Schema>) -> Result<Self> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(start) = rest.find("!{") {
            if start > 0 {
                parts.push(Part::Text(rest[..start].to_string()));
            }
            let Some(end) = rest[start..].find('}') else {
                return Err(Error::Invalid(format!(
                    "{what} '{text}': an expression !{{… is not closed with }}"
                )));
            };
            let expression = &rest[start + 2..start + end];
            let (namespace, argument) = expression.split_once(':').unwrap_or((expression, ""));
            parts.push(match namespace {
                "timestamp" => Part::Timestamp(chrono_pattern(argument, what, text)?),
                "firehose" if argument == "random-string" => Part::Random,
                "firehose" if argument == "error-output-type" => Part::ErrorType,
                "partitionKeyFromLambda" => {
                    return Err(Error::Invalid(format!(
                        "{what} '{text}': !{{partitionKeyFromLambda:…}} needs a Lambda function, which Sluice does not run; use !{{partitionKeyFromQuery:key}} with a partition query (jq) instead"
                    )));
                }
                "partitionKeyFromQuery" => {
                    if argument.is_empty() {
                        return Err(Error::Invalid(format!(
                            "{what} '{text}': !{{partitionKeyFromQuery:…}} needs a key name"
                        )));
                    }
                    if columns.is_some_and(|c| c.index_of(argument).is_err()) {
                        return Err(Error::Invalid(format!(
                            "{what} '{text}': the stream has no column '{argument}' to partition by"
                        )));
                    }
                    Part::PartitionKey(argument.to_string())
                }
                _ => {
                    return Err(Error::Invalid(format!(
                        "{what} '{text}': !{{{expression}}} is not an expression Sluice knows; use !{{timestamp:yyyy/MM/dd}}, !{{firehose:random-string}}, !{{firehose:error-output-type}} or !{{partitionKeyFromQuery:column}}"
                    )));
                }
            });
            rest = &rest[start + end + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_string()));
        }
        Ok(Self {
            text: text.to_string(),
            parts,
        })
    }

    /// The template as written.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The columns whose values pick a record's partition, in order.
    pub fn partition_columns(&self) -> Vec<&str> {
        self.parts
            .iter()
            .filter_map(|p| match p {
                Part::PartitionKey(c) => Some(c.as_str()),
                _ => None,
            })
            .collect()
    }

    pub(crate) fn uses_error_type(&self) -> bool {
        self.parts.contains(&Part::ErrorType)
    }

    /// The prefix for an object whose oldest record arrived at `arrival_ms`, for records whose
    /// partition columns hold `keys` (in [`Self::partition_columns`] order).
    pub fn evaluate(&self, arrival_ms: i64, keys: &[String], error_type: Option<&str>) -> String {
        let time: DateTime<Utc> = DateTime::from_timestamp_millis(arrival_ms).unwrap_or_default();
        let mut keys = keys.iter();
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(text) => out.push_str(text),
                Part::Timestamp(pattern) => out.push_str(&time.format(pattern).to_string()),
                Part::Random => out.push_str(&random_string()),
                Part::ErrorType => out.push_str(error_type.unwrap_or("processing-failed")),
                Part::PartitionKey(_) => out.push_str(keys.next().map_or("null", |k| k.as_str())),
            }
        }
        out
    }
}

/// Translates a Java date pattern (`yyyy`, `yy`, `MM`, `dd`, `HH`, `mm`, `ss`, other
/// characters as they are) into a chrono one.
fn chrono_pattern(pattern: &str, what: &str, text: &str) -> Result<String> {
    if pattern.is_empty() {
        return Err(Error::Invalid(format!(
            "{what} '{text}': !{{timestamp:…}} needs a pattern such as yyyy/MM/dd"
        )));
    }
    let mut out = String::new();
    let chars: Vec<char> = pattern.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let run = chars[i..].iter().take_while(|&&d| d == c).count();
        let piece = match (c, run) {
            ('y', 4) => "%Y".to_string(),
            ('y', 2) => "%y".to_string(),
            ('M', 2) => "%m".to_string(),
            ('d', 2) => "%d".to_string(),
            ('H', 2) => "%H".to_string(),
            ('m', 2) => "%M".to_string(),
            ('s', 2) => "%S".to_string(),
            ('y' | 'M' | 'd' | 'H' | 'm' | 's', _) => {
                return Err(Error::Invalid(format!(
                    "{what} '{text}': '{}' is not a date field Sluice knows; use yyyy, yy, MM, dd, HH, mm or ss",
                    chars[i..i + run].iter().collect::<String>()
                )));
            }
            ('%', _) => "%%".repeat(run),
            _ => chars[i..i + run].iter().collect(),
        };
        out.push_str(&piece);
        i += run;
    }
    Ok(out)
}

/// Firehose's random string: 11 characters of letters and digits.
fn random_string() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..11].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::{DataType, Field};

    fn columns() -> Schema {
        Schema::new(vec![
            Field::new("country", DataType::Utf8, true),
            Field::new("device", DataType::Utf8, true),
        ])
    }

    // 2026-03-04T05:06:07.000Z
    const AT: i64 = 1_772_600_767_000;

    #[test]
    fn firehose_expressions_evaluate() {
        let t = Template::parse(
            "year=!{timestamp:yyyy}/month=!{timestamp:MM}/day=!{timestamp:dd}/!{timestamp:HH-mm-ss}/",
            "prefix",
            Some(&columns()),
        )
        .expect("valid");
        assert_eq!(
            t.evaluate(AT, &[], None),
            "year=2026/month=03/day=04/05-06-07/"
        );
        let t = Template::parse(
            "c=!{partitionKeyFromQuery:country}/d=!{partitionKeyFromQuery:device}/",
            "prefix",
            Some(&columns()),
        )
        .expect("valid");
        assert_eq!(t.partition_columns(), ["country", "device"]);
        assert_eq!(
            t.evaluate(AT, &["de".into(), "phone".into()], None),
            "c=de/d=phone/"
        );
        let t = Template::parse(
            "errors/!{firehose:error-output-type}/!{firehose:random-string}",
            "error_output_prefix",
            Some(&columns()),
        )
        .expect("valid");
        let out = t.evaluate(AT, &[], Some("format-conversion-failed"));
        assert!(out.starts_with("errors/format-conversion-failed/"));
        assert_eq!(out.len(), "errors/format-conversion-failed/".len() + 11);
    }

    #[test]
    fn mistakes_are_named() {
        let error = |text: &str| {
            Template::parse(text, "prefix", Some(&columns()))
                .expect_err("invalid")
                .to_string()
        };
        assert!(error("!{timestamp:yyyy").contains("not closed"));
        assert!(error("!{nope:x}").contains("!{nope:x} is not an expression"));
        assert!(error("!{timestamp:yyy}").contains("'yyy' is not a date field"));
        assert!(error("!{partitionKeyFromQuery:city}").contains("no column 'city'"));
    }
}
