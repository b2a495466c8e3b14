//! A Kinesis Data Analytics application's input mapping: how the records of a stream become
//! the rows of an in-application stream (`SOURCE_SQL_STREAM_001`), as the application's
//! `InputSchema` says.
//!
//! ```json
//! {"RecordFormat": {"RecordFormatType": "JSON",
//!                   "MappingParameters": {"JSONMappingParameters": {"RecordRowPath": "$"}}},
//!  "RecordEncoding": "UTF-8",
//!  "RecordColumns": [{"Name": "TICKER_SYMBOL", "Mapping": "$.TICKER_SYMBOL", "SqlType": "VARCHAR(4)"},
//!                    {"Name": "LAST", "Mapping": "$.price.last", "SqlType": "REAL"}]}
//! ```
//!
//! JSON records are read at `RecordRowPath` (`$` for the record itself, `$.rows[0:]` for each
//! element of an array in it) and each column at its `Mapping`, a JSONPath relative to the row
//! (or written from `$` through the row path, as KDA's console writes them): `.name`,
//! `['name']`, `[n]`. A missing value is NULL. CSV records are split into rows at
//! `RecordRowDelimiter` and into columns, by position, at `RecordColumnDelimiter`.
//!
//! A value that does not fit its column's type (`"abc"` for an `INTEGER`), or a record that is
//! not JSON or not UTF-8, does not stop the input: the record is left out and reported, with
//! what did not map, for the application's `error_stream`.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, BooleanArray, RecordBatch, StringBuilder};
use datafusion::arrow::compute::{cast, filter_record_batch};
use datafusion::arrow::datatypes::{Field, Schema, SchemaRef};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};

/// `InputSchema`, as the kinesisanalytics API writes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct InputSchema {
    pub record_format: RecordFormat,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record_encoding: Option<String>,
    pub record_columns: Vec<RecordColumn>,
}

/// `RecordFormat`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RecordFormat {
    pub record_format_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mapping_parameters: Option<MappingParameters>,
}

/// `MappingParameters`: one of the two.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MappingParameters {
    #[serde(
        rename = "JSONMappingParameters",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub json: Option<JsonMappingParameters>,
    #[serde(
        rename = "CSVMappingParameters",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub csv: Option<CsvMappingParameters>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct JsonMappingParameters {
    pub record_row_path: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CsvMappingParameters {
    pub record_row_delimiter: String,
    pub record_column_delimiter: String,
}

/// `RecordColumn`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RecordColumn {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mapping: Option<String>,
    pub sql_type: String,
}

/// One step of a JSONPath.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Key(String),
    Index(usize),
    /// `[0:]` or `[*]`: every element (row paths only).
    Each,
}

/// A JSONPath of the form KDA writes: `$`, then `.name`, `['name']`, `[n]`, `[0:]`, `[*]`.
fn parse_path(path: &str) -> Option<Vec<Step>> {
    let mut rest = path.trim().strip_prefix('$')?;
    let mut steps = Vec::new();
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix('.') {
            let end = after.find(['.', '[']).unwrap_or(after.len());
            if end == 0 {
                return None;
            }
            steps.push(Step::Key(after[..end].to_string()));
            rest = &after[end..];
        } else if let Some(after) = rest.strip_prefix('[') {
            let end = after.find(']')?;
            let inside = after[..end].trim();
            steps.push(match inside {
                "*" | "0:" => Step::Each,
                quoted
                    if quoted.len() >= 2
                        && (quoted.starts_with('\'') || quoted.starts_with('"')) =>
                {
                    Step::Key(quoted[1..quoted.len() - 1].to_string())
                }
                number => Step::Index(number.parse().ok()?),
            });
            rest = &after[end + 1..];
        } else {
            return None;
        }
    }
    Some(steps)
}

fn follow<'v>(value: &'v Value, steps: &[Step]) -> Option<&'v Value> {
    steps.iter().try_fold(value, |v, step| match step {
        Step::Key(key) => v.get(key.as_str()),
        Step::Index(i) => v.get(*i),
        Step::Each => None,
    })
}

/// How a record becomes rows.
#[derive(Debug, Clone)]
enum Format {
    Json {
        /// Steps to the row (or to an array of rows, then `Each`).
        row: Vec<Step>,
        columns: Vec<Vec<Step>>,
    },
    Csv {
        row_delimiter: String,
        column_delimiter: String,
    },
}

/// A record that did not map, for `error_stream`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MappingError {
    /// The record's position in what was mapped.
    pub record: usize,
    pub message: String,
}

/// An application input's mapping, ready to map records.
#[derive(Debug, Clone)]
pub struct InputMapper {
    schema: SchemaRef,
    format: Format,
}

impl InputMapper {
    /// Checks `input` as KDA checks it and prepares it; a bad definition's error names the
    /// field (`RecordColumns[2].SqlType`, …).
    pub fn new(input: &InputSchema) -> Result<Self> {
        let invalid = |field: &str, why: String| Error::Plan(format!("InputSchema.{field}: {why}"));
        if let Some(encoding) = &input.record_encoding
            && !encoding.eq_ignore_ascii_case("UTF-8")
        {
            return Err(invalid(
                "RecordEncoding",
                format!("'{encoding}' is not supported; records are UTF-8"),
            ));
        }
        if input.record_columns.is_empty() {
            return Err(invalid("RecordColumns", "names no column".to_string()));
        }
        let mut fields = Vec::new();
        for (i, column) in input.record_columns.iter().enumerate() {
            if column.name.is_empty() {
                return Err(invalid(
                    &format!("RecordColumns[{i}].Name"),
                    "is empty".into(),
                ));
            }
            if fields.iter().any(|f: &Field| f.name() == &column.name) {
                return Err(invalid(
                    &format!("RecordColumns[{i}].Name"),
                    format!("'{}' is named twice", column.name),
                ));
            }
            let data_type = crate::create_stream::column_type(&column.sql_type)
                .map_err(|e| invalid(&format!("RecordColumns[{i}].SqlType"), e.to_string()))?;
            fields.push(Field::new(&column.name, data_type, true));
        }
        let parameters = input.record_format.mapping_parameters.as_ref();
        let format = match input
            .record_format
            .record_format_type
            .to_ascii_uppercase()
            .as_str()
        {
            "JSON" => {
                let row_path = parameters
                    .and_then(|p| p.json.as_ref())
                    .map_or("$", |j| j.record_row_path.as_str());
                let row = parse_path(row_path).ok_or_else(|| {
                    invalid(
                        "RecordFormat.MappingParameters.JSONMappingParameters.RecordRowPath",
                        format!("'{row_path}' is not a JSONPath such as $ or $.records[0:]"),
                    )
                })?;
                if row
                    .split_last()
                    .is_some_and(|(_, before)| before.contains(&Step::Each))
                {
                    return Err(invalid(
                        "RecordFormat.MappingParameters.JSONMappingParameters.RecordRowPath",
                        format!("'{row_path}' may take every element ([0:]) only at its end"),
                    ));
                }
                let prefix: Vec<Step> = row.clone();
                let mut columns = Vec::new();
                for (i, column) in input.record_columns.iter().enumerate() {
                    let default = format!("$.{}", column.name);
                    let mapping = column.mapping.as_deref().unwrap_or(&default);
                    let mut steps = parse_path(mapping)
                        .filter(|s| !s.contains(&Step::Each) || s.starts_with(&prefix))
                        .ok_or_else(|| {
                            invalid(
                                &format!("RecordColumns[{i}].Mapping"),
                                format!(
                                    "'{mapping}' is not a JSONPath such as $.TICKER or $.price.last"
                                ),
                            )
                        })?;
                    // Written from the record's root through the row path: make it relative.
                    if !prefix.is_empty() && steps.starts_with(&prefix) {
                        steps.drain(..prefix.len());
                    }
                    columns.push(steps);
                }
                Format::Json { row, columns }
            }
            "CSV" => {
                let Some(csv) = parameters.and_then(|p| p.csv.as_ref()) else {
                    return Err(invalid(
                        "RecordFormat.MappingParameters",
                        "a CSV record format needs CSVMappingParameters (RecordRowDelimiter, RecordColumnDelimiter)".into(),
                    ));
                };
                if csv.record_row_delimiter.is_empty() || csv.record_column_delimiter.is_empty() {
                    return Err(invalid(
                        "RecordFormat.MappingParameters.CSVMappingParameters",
                        "the row and column delimiters must not be empty".into(),
                    ));
                }
                Format::Csv {
                    row_delimiter: csv.record_row_delimiter.clone(),
                    column_delimiter: csv.record_column_delimiter.clone(),
                }
            }
            other => {
                return Err(invalid(
                    "RecordFormat.RecordFormatType",
                    format!("'{other}' is not JSON or CSV"),
                ));
            }
        };
        Ok(Self {
            schema: Arc::new(Schema::new(fields)),
            format,
        })
    }

    /// The in-application stream's columns.
    pub fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    /// Maps `records` into rows; the rows' records (by position in `records`, one record giving
    /// any number of rows) and the records that did not map.
    pub fn map(&self, records: &[&[u8]]) -> Result<(RecordBatch, Vec<usize>, Vec<MappingError>)> {
        let width = self.schema.fields().len();
        let mut texts: Vec<StringBuilder> = (0..width).map(|_| StringBuilder::new()).collect();
        let mut origins = Vec::new();
        let mut errors = Vec::new();
        for (index, record) in records.iter().enumerate() {
            let Ok(text) = std::str::from_utf8(record) else {
                errors.push(MappingError {
                    record: index,
                    message: "the record is not UTF-8 text".into(),
                });
                continue;
            };
            match &self.format {
                Format::Json { row, columns } => {
                    let value: Value = match serde_json::from_str(text) {
                        Ok(value) => value,
                        Err(e) => {
                            errors.push(MappingError {
                                record: index,
                                message: format!("the record is not JSON: {e}"),
                            });
                            continue;
                        }
                    };
                    let rows: Vec<&Value> = match row.split_last() {
                        Some((Step::Each, to_array)) => follow(&value, to_array)
                            .and_then(Value::as_array)
                            .map(|a| a.iter().collect())
                            .unwrap_or_default(),
                        _ => follow(&value, row).into_iter().collect(),
                    };
                    for row in rows {
                        for (builder, steps) in texts.iter_mut().zip(columns) {
                            builder.append_option(follow(row, steps).and_then(as_text));
                        }
                        origins.push(index);
                    }
                }
                Format::Csv {
                    row_delimiter,
                    column_delimiter,
                } => {
                    for line in text.split(row_delimiter.as_str()).filter(|l| !l.is_empty()) {
                        let mut parts = line.split(column_delimiter.as_str());
                        for builder in &mut texts {
                            builder.append_option(parts.next());
                        }
                        origins.push(index);
                    }
                }
            }
        }
        // Typed columns; a value its type cannot take leaves its record out, reported.
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(width);
        let mut keep = vec![true; origins.len()];
        for (builder, field) in texts.iter_mut().zip(self.schema.fields()) {
            let text = builder.finish();
            let typed = cast(&text, field.data_type())?;
            for row in 0..text.len() {
                if text.is_valid(row) && typed.is_null(row) && keep[row] {
                    keep[row] = false;
                    errors.push(MappingError {
                        record: origins[row],
                        message: format!(
                            "column {}: '{}' is not a value of type {}",
                            field.name(),
                            text.value(row),
                            crate::types::sql_type_name(field.data_type())
                        ),
                    });
                }
            }
            columns.push(typed);
        }
        let batch = RecordBatch::try_new(Arc::clone(&self.schema), columns)?;
        if keep.iter().all(|k| *k) {
            return Ok((batch, origins, errors));
        }
        let mask = BooleanArray::from(keep.clone());
        let batch = filter_record_batch(&batch, &mask)?;
        let origins = origins
            .into_iter()
            .zip(keep)
            .filter_map(|(o, k)| k.then_some(o))
            .collect();
        errors.sort_by_key(|e| e.record);
        Ok((batch, origins, errors))
    }
}

/// A JSON value as the text its column's type is cast from; objects and arrays as JSON.
fn as_text(value: &Value) -> Option<String> {
    match value {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        other => Some(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::util::pretty::pretty_format_batches;

    fn mapper(json: &str) -> Result<InputMapper> {
        let schema: InputSchema =
            serde_json::from_str(json).map_err(|e| Error::Plan(e.to_string()))?;
        InputMapper::new(&schema)
    }

    fn table(batch: &RecordBatch) -> String {
        pretty_format_batches(std::slice::from_ref(batch))
            .map(|t| t.to_string())
            .unwrap_or_default()
    }

    #[test]
    fn json_columns_follow_nested_paths_and_types() -> Result<()> {
        let mapper = mapper(
            r#"{"RecordFormat": {"RecordFormatType": "JSON",
                  "MappingParameters": {"JSONMappingParameters": {"RecordRowPath": "$"}}},
                "RecordEncoding": "UTF-8",
                "RecordColumns": [
                  {"Name": "TICKER_SYMBOL", "Mapping": "$.TICKER_SYMBOL", "SqlType": "VARCHAR(4)"},
                  {"Name": "LAST", "Mapping": "$.price.last", "SqlType": "REAL"},
                  {"Name": "FIRST_TAG", "Mapping": "$['tags'][0]", "SqlType": "VARCHAR(8)"},
                  {"Name": "QTY", "Mapping": "$.qty", "SqlType": "INTEGER"}]}"#,
        )?;
        let records: Vec<&[u8]> = vec![
            br#"{"TICKER_SYMBOL": "AMZN", "price": {"last": 131.5}, "tags": ["retail"], "qty": 3}"#,
            br#"{"TICKER_SYMBOL": "NFLX", "qty": "many"}"#,
            b"not json",
            br#"{"TICKER_SYMBOL": "MSFT", "price": {"last": "410.25"}}"#,
        ];
        let (batch, origins, errors) = mapper.map(&records)?;
        assert_eq!(origins, vec![0, 3]);
        assert_eq!(
            table(&batch),
            "+---------------+--------+-----------+-----+\n\
             | TICKER_SYMBOL | LAST   | FIRST_TAG | QTY |\n\
             +---------------+--------+-----------+-----+\n\
             | AMZN          | 131.5  | retail    | 3   |\n\
             | MSFT          | 410.25 |           |     |\n\
             +---------------+--------+-----------+-----+"
        );
        assert_eq!(errors.len(), 2);
        assert_eq!(errors[0].record, 1);
        assert_eq!(
            errors[0].message,
            "column QTY: 'many' is not a value of type INTEGER"
        );
        assert_eq!(errors[1].record, 2);
        assert!(errors[1].message.starts_with("the record is not JSON"));
        Ok(())
    }

    #[test]
    fn a_row_path_over_an_array_gives_a_row_per_element() -> Result<()> {
        let mapper = mapper(
            r#"{"RecordFormat": {"RecordFormatType": "JSON",
                  "MappingParameters": {"JSONMappingParameters": {"RecordRowPath": "$.readings[0:]"}}},
                "RecordColumns": [
                  {"Name": "SENSOR", "Mapping": "$.readings[0:].sensor", "SqlType": "VARCHAR(8)"},
                  {"Name": "V", "Mapping": "$.value", "SqlType": "DOUBLE"}]}"#,
        )?;
        let records: Vec<&[u8]> =
            vec![br#"{"readings": [{"sensor": "a", "value": 1.5}, {"sensor": "b", "value": 2}]}"#];
        let (batch, origins, errors) = mapper.map(&records)?;
        assert_eq!((batch.num_rows(), origins, errors), (2, vec![0, 0], vec![]));
        Ok(())
    }

    #[test]
    fn csv_records_split_into_rows_and_columns() -> Result<()> {
        let mapper = mapper(
            r#"{"RecordFormat": {"RecordFormatType": "CSV",
                  "MappingParameters": {"CSVMappingParameters":
                     {"RecordRowDelimiter": "\n", "RecordColumnDelimiter": ","}}},
                "RecordColumns": [
                  {"Name": "TICKER", "SqlType": "VARCHAR(4)"},
                  {"Name": "PRICE", "SqlType": "DECIMAL(8,2)"}]}"#,
        )?;
        let records: Vec<&[u8]> = vec![b"AMZN,131.50\nMSFT,410.25\n", b"NFLX,x"];
        let (batch, origins, errors) = mapper.map(&records)?;
        assert_eq!(batch.num_rows(), 2);
        assert_eq!(origins, vec![0, 0]);
        assert_eq!(
            errors,
            vec![MappingError {
                record: 1,
                message: "column PRICE: 'x' is not a value of type DECIMAL(8, 2)".into()
            }]
        );
        Ok(())
    }

    #[test]
    fn bad_definitions_name_the_field() {
        let message = |json: &str| {
            mapper(json)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        assert!(
            message(
                r#"{"RecordFormat": {"RecordFormatType": "JSON"},
                "RecordColumns": [{"Name": "A", "Mapping": "$.a", "SqlType": "INTEGR"}]}"#
            )
            .contains("InputSchema.RecordColumns[0].SqlType: 'INTEGR' is not a type Sluice knows")
        );
        assert!(
            message(
                r#"{"RecordFormat": {"RecordFormatType": "JSON"},
                "RecordColumns": [{"Name": "A", "Mapping": "a.b", "SqlType": "INTEGER"}]}"#
            )
            .contains("InputSchema.RecordColumns[0].Mapping: 'a.b' is not a JSONPath")
        );
        assert!(
            message(
                r#"{"RecordFormat": {"RecordFormatType": "XML"},
                "RecordColumns": [{"Name": "A", "SqlType": "INTEGER"}]}"#
            )
            .contains("InputSchema.RecordFormat.RecordFormatType: 'XML' is not JSON or CSV")
        );
        assert!(
            message(
                r#"{"RecordFormat": {"RecordFormatType": "CSV"},
                "RecordColumns": [{"Name": "A", "SqlType": "INTEGER"}]}"#
            )
            .contains("a CSV record format needs CSVMappingParameters")
        );
        assert!(
            message(
                r#"{"RecordFormat": {"RecordFormatType": "JSON"}, "RecordEncoding": "UTF-16",
                "RecordColumns": [{"Name": "A", "SqlType": "INTEGER"}]}"#
            )
            .contains("InputSchema.RecordEncoding: 'UTF-16' is not supported")
        );
    }

    #[test]
    fn json_paths_read_as_kda_writes_them() {
        assert_eq!(parse_path("$"), Some(vec![]));
        assert_eq!(
            parse_path("$.a['b c'][2].d"),
            Some(vec![
                Step::Key("a".into()),
                Step::Key("b c".into()),
                Step::Index(2),
                Step::Key("d".into())
            ])
        );
        assert_eq!(
            parse_path("$.rows[0:]"),
            Some(vec![Step::Key("rows".into()), Step::Each])
        );
        assert_eq!(parse_path("a.b"), None);
        assert_eq!(parse_path("$..a"), None);
    }
}
