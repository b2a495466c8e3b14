//! Record formats: how a record's bytes become the stream's columns.
//!
//! A stream accepts any blob, as Kinesis does. A `json` stream decodes each record as one JSON
//! object, a `csv` stream as one CSV line, and a `raw` stream decodes nothing. Decoding is
//! columnar: the records of one append are decoded together by arrow-json or arrow-csv into one
//! batch. Only when that fails (or yields the wrong number of rows) are the records decoded one by
//! one, so a bad record costs its own row — NULL columns and an error with the reason — and never
//! its neighbours'.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, new_null_array};
use arrow::datatypes::{Schema, SchemaRef};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// How a stream's records are decoded into columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StreamFormat {
    /// One JSON object per record; fields are matched to columns by name.
    Json,
    /// One CSV line per record (no header); fields are matched to columns by position.
    Csv,
    /// No schema: only the system columns (`_data` holds the bytes).
    Raw,
}

impl FromStr for StreamFormat {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "json" => Ok(Self::Json),
            "csv" => Ok(Self::Csv),
            "raw" => Ok(Self::Raw),
            other => Err(Error::InvalidArgument(format!(
                "format '{other}' is not supported; expected one of 'json', 'csv', 'raw'"
            ))),
        }
    }
}

impl fmt::Display for StreamFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Json => "json",
            Self::Csv => "csv",
            Self::Raw => "raw",
        })
    }
}

/// The user columns decoded from a run of records, and the records that did not decode.
#[derive(Debug)]
pub struct Decoded {
    /// One array per user column, each as long as the input.
    pub columns: Vec<ArrayRef>,
    /// `(index into the input, reason)` for each record whose columns are NULL because it did not
    /// decode.
    pub errors: Vec<(usize, String)>,
}

/// Decodes `records` with `format` into columns of `schema` (the user columns).
///
/// A JSON column whose name is not all lower case (`"TICKER_SYMBOL"`, as Kinesis Data
/// Analytics' schema discovery names them) takes the key as written or, failing that, the key in
/// lower case (`ticker_symbol`), which is what KDA's mapping of such a column reads.
pub fn decode(format: StreamFormat, schema: &SchemaRef, records: &[&[u8]]) -> Result<Decoded> {
    let folded = schema
        .fields()
        .iter()
        .any(|f| f.name().to_lowercase() != *f.name());
    if format != StreamFormat::Json || !folded {
        return decode_exact(format, schema, records);
    }
    let exact = decode_exact(format, schema, records)?;
    let lower = Arc::new(Schema::new(
        schema
            .fields()
            .iter()
            .map(|f| f.as_ref().clone().with_name(f.name().to_lowercase()))
            .collect::<Vec<_>>(),
    ));
    let lowered = decode_exact(format, &lower, records)?;
    let mut columns = Vec::with_capacity(exact.columns.len());
    for (written, lower) in exact.columns.iter().zip(&lowered.columns) {
        let present = arrow::compute::is_not_null(written)?;
        columns.push(arrow::compute::kernels::zip::zip(&present, written, lower)?);
    }
    let mut errors = exact.errors;
    for error in lowered.errors {
        if !errors.iter().any(|(index, _)| *index == error.0) {
            errors.push(error);
        }
    }
    errors.sort_by_key(|(index, _)| *index);
    Ok(Decoded { columns, errors })
}

fn decode_exact(format: StreamFormat, schema: &SchemaRef, records: &[&[u8]]) -> Result<Decoded> {
    if format == StreamFormat::Raw || schema.fields().is_empty() {
        return Ok(Decoded {
            columns: vec![],
            errors: vec![],
        });
    }
    if records.is_empty() {
        let batch = RecordBatch::new_empty(Arc::clone(schema));
        return Ok(Decoded {
            columns: batch.columns().to_vec(),
            errors: vec![],
        });
    }
    let fast = match format {
        StreamFormat::Json => decode_json_records(schema, records).ok().flatten(),
        _ if records
            .iter()
            .any(|r| r.contains(&b'\n') || r.contains(&b'\r')) =>
        {
            None
        }
        // Without line breaks inside records, every anomaly (an empty record, an unbalanced
        // quote joining two lines) loses a row, so a matching row count means one row per record.
        _ => decode_run(format, schema, records)
            .ok()
            .filter(|b| b.num_rows() == records.len()),
    };
    if let Some(batch) = fast {
        return Ok(Decoded {
            columns: batch.columns().to_vec(),
            errors: vec![],
        });
    }
    decode_one_by_one(format, schema, records)
}

/// Decodes every record on its own; the slow path taken only when a run has a bad record.
fn decode_one_by_one(
    format: StreamFormat,
    schema: &SchemaRef,
    records: &[&[u8]],
) -> Result<Decoded> {
    let mut batches = Vec::with_capacity(records.len());
    let mut errors = Vec::new();
    let null_row = || {
        let columns = schema
            .fields()
            .iter()
            .map(|f| new_null_array(f.data_type(), 1))
            .collect();
        RecordBatch::try_new(Arc::clone(schema), columns)
    };
    for (index, record) in records.iter().enumerate() {
        match decode_run(format, schema, &[record]) {
            Ok(batch) if batch.num_rows() == 1 => batches.push(batch),
            Ok(batch) => {
                let what = match format {
                    StreamFormat::Csv => "CSV lines",
                    _ => "JSON values",
                };
                let reason = if batch.num_rows() == 0 {
                    format!("record holds no {what}; expected exactly one")
                } else {
                    format!(
                        "record holds {} {what}; expected exactly one",
                        batch.num_rows()
                    )
                };
                errors.push((index, reason));
                batches.push(null_row()?);
            }
            Err(e) => {
                errors.push((index, describe_decode_error(format, &e)));
                batches.push(null_row()?);
            }
        }
    }
    let batch = arrow::compute::concat_batches(schema, &batches)?;
    Ok(Decoded {
        columns: batch.columns().to_vec(),
        errors,
    })
}

fn describe_decode_error(format: StreamFormat, error: &arrow::error::ArrowError) -> String {
    let message = match error {
        arrow::error::ArrowError::JsonError(m)
        | arrow::error::ArrowError::CsvError(m)
        | arrow::error::ArrowError::ParseError(m)
        | arrow::error::ArrowError::CastError(m)
        | arrow::error::ArrowError::InvalidArgumentError(m) => m.clone(),
        other => other.to_string(),
    };
    format!("record is not valid {format} for the stream's columns: {message}")
}

/// Feeds each record to one JSON decoder in turn, checking after each that it held exactly one
/// complete value. `Ok(None)` means some record did not, and the slow path must sort it out.
fn decode_json_records(
    schema: &SchemaRef,
    records: &[&[u8]],
) -> Result<Option<RecordBatch>, arrow::error::ArrowError> {
    let mut decoder = arrow_json::ReaderBuilder::new(Arc::clone(schema))
        .with_batch_size(records.len() + 1)
        .build_decoder()?;
    for (index, record) in records.iter().enumerate() {
        let read = decoder.decode(record)?;
        if read != record.len() || decoder.has_partial_record() || decoder.len() != index + 1 {
            return Ok(None);
        }
    }
    decoder.flush()
}

/// Decodes records joined by newlines in one pass of the format's decoder.
fn decode_run(
    format: StreamFormat,
    schema: &SchemaRef,
    records: &[&[u8]],
) -> Result<RecordBatch, arrow::error::ArrowError> {
    let total: usize = records.iter().map(|r| r.len() + 1).sum();
    let mut buffer = Vec::with_capacity(total);
    for record in records {
        buffer.extend_from_slice(record);
        buffer.push(b'\n');
    }
    // One more than the records we hold, so a record that holds two values is noticed.
    let batch_size = records.len() + 1;
    let batch = match format {
        StreamFormat::Json => {
            let mut decoder = arrow_json::ReaderBuilder::new(Arc::clone(schema))
                .with_batch_size(batch_size)
                .build_decoder()?;
            feed(&buffer, |bytes| decoder.decode(bytes))?;
            decoder.flush()?
        }
        StreamFormat::Csv => {
            let mut decoder = arrow_csv::ReaderBuilder::new(Arc::clone(schema))
                .with_header(false)
                .with_batch_size(batch_size)
                .build_decoder();
            feed(&buffer, |bytes| decoder.decode(bytes))?;
            // Signal end of input so a final line without a newline is taken.
            decoder.decode(&[])?;
            decoder.flush()?
        }
        StreamFormat::Raw => None,
    };
    Ok(batch.unwrap_or_else(|| RecordBatch::new_empty(Arc::clone(schema))))
}

/// Hands `buffer` to a push decoder until it is all taken or the decoder takes no more.
fn feed(
    buffer: &[u8],
    mut decode: impl FnMut(&[u8]) -> Result<usize, arrow::error::ArrowError>,
) -> Result<(), arrow::error::ArrowError> {
    let mut offset = 0;
    while offset < buffer.len() {
        let read = decode(&buffer[offset..])?;
        if read == 0 {
            break;
        }
        offset += read;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::{DataType, Field, Float64Type, Schema};

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("symbol", DataType::Utf8, true),
            Field::new("price", DataType::Float64, true),
        ]))
    }

    #[test]
    fn json_records_decode_together() {
        let records: Vec<&[u8]> = vec![
            br#"{"symbol":"AMZN","price":1.5}"#,
            br#"{"price":2.5,"symbol":"MSFT","extra":true}"#,
        ];
        let decoded = decode(StreamFormat::Json, &schema(), &records).expect("decodes");
        assert!(decoded.errors.is_empty());
        assert_eq!(decoded.columns[0].as_string::<i32>().value(1), "MSFT");
        assert_eq!(
            decoded.columns[1].as_primitive::<Float64Type>().value(0),
            1.5
        );
    }

    #[test]
    fn a_bad_json_record_costs_only_its_own_row() {
        let records: Vec<&[u8]> = vec![
            br#"{"symbol":"AMZN","price":1.5}"#,
            b"not json at all",
            br#"{"symbol":"X","price":"expensive"}"#,
            br#"{"symbol":"A"}{"symbol":"B"}"#,
            b"",
            br#"{"symbol":"MSFT","price":3.0}"#,
        ];
        let decoded = decode(StreamFormat::Json, &schema(), &records).expect("decodes");
        let bad: Vec<usize> = decoded.errors.iter().map(|(i, _)| *i).collect();
        assert_eq!(bad, vec![1, 2, 3, 4]);
        assert!(decoded.errors[0].1.contains("not valid json"));
        assert!(decoded.errors[2].1.contains("2 JSON values"));
        let symbols = decoded.columns[0].as_string::<i32>();
        assert_eq!(symbols.len(), 6);
        assert_eq!(symbols.value(0), "AMZN");
        assert!(symbols.is_null(1));
        assert_eq!(symbols.value(5), "MSFT");
    }

    #[test]
    fn anomalies_that_cancel_out_are_still_caught() {
        // Two values in one record and an empty record would give the right row count.
        let records: Vec<&[u8]> = vec![
            br#"{"symbol":"A"}"#,
            br#"{"symbol":"B"}{"symbol":"C"}"#,
            b"",
            br#"5"#,
            br#"{"symbol":"D""#,
        ];
        let decoded = decode(StreamFormat::Json, &schema(), &records).expect("decodes");
        let bad: Vec<usize> = decoded.errors.iter().map(|(i, _)| *i).collect();
        assert_eq!(bad, vec![1, 2, 3, 4]);
        let symbols = decoded.columns[0].as_string::<i32>();
        assert_eq!(symbols.value(0), "A");
        assert!(symbols.is_null(1) && symbols.is_null(2));
    }

    #[test]
    fn csv_records_with_line_breaks_decode_one_by_one() {
        let records: Vec<&[u8]> = vec![b"\"two\nlines\",1", b"", b"x,2"];
        let decoded = decode(StreamFormat::Csv, &schema(), &records).expect("decodes");
        assert_eq!(
            decoded.errors.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
            vec![1]
        );
        assert_eq!(decoded.columns[0].as_string::<i32>().value(0), "two\nlines");
    }

    #[test]
    fn csv_records_decode_by_position() {
        let records: Vec<&[u8]> = vec![b"AMZN,1.5", b"MSFT", b"\"A,B\",2"];
        let decoded = decode(StreamFormat::Csv, &schema(), &records).expect("decodes");
        assert_eq!(decoded.errors.len(), 1);
        assert_eq!(decoded.errors[0].0, 1);
        assert_eq!(decoded.columns[0].as_string::<i32>().value(2), "A,B");
    }

    #[test]
    fn upper_case_columns_take_keys_as_written_or_in_lower_case() -> Result<()> {
        let schema = Arc::new(Schema::new(vec![
            Field::new("TICKER_SYMBOL", DataType::Utf8, true),
            Field::new("PRICE", DataType::Float64, true),
        ]));
        let records: Vec<&[u8]> = vec![
            br#"{"ticker_symbol": "AMZN", "price": 1.5}"#,
            br#"{"TICKER_SYMBOL": "NFLX", "PRICE": 2.5, "price": 9.0}"#,
            br#"{"ticker_symbol": "X", "price": "not a number"}"#,
        ];
        let decoded = decode(StreamFormat::Json, &schema, &records)?;
        let symbols = decoded.columns[0].as_string::<i32>();
        let prices = decoded.columns[1].as_primitive::<Float64Type>();
        assert_eq!((symbols.value(0), prices.value(0)), ("AMZN", 1.5));
        // The key as written wins over its lower-case twin.
        assert_eq!((symbols.value(1), prices.value(1)), ("NFLX", 2.5));
        assert_eq!(decoded.errors.len(), 1, "{:?}", decoded.errors);
        assert_eq!(decoded.errors[0].0, 2);
        Ok(())
    }

    #[test]
    fn raw_streams_decode_nothing() {
        let records: Vec<&[u8]> = vec![b"\xff\x00anything"];
        let empty = Arc::new(Schema::empty());
        let decoded = decode(StreamFormat::Raw, &empty, &records).expect("decodes");
        assert!(decoded.columns.is_empty() && decoded.errors.is_empty());
    }

    #[test]
    fn unknown_formats_name_the_accepted_ones() {
        let err = "avro".parse::<StreamFormat>().err().map(|e| e.to_string());
        assert!(err.unwrap_or_default().contains("'json', 'csv', 'raw'"));
    }
}
