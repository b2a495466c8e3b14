//! `SHOW APPLICATIONS` and `DESCRIBE APPLICATION name` in SQL.

use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, RecordBatch, StringArray, TimestampMillisecondArray, UInt64Array,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};

use super::manager::Applications;
use super::model::Application;
use crate::error::{Error, Result};

/// One row per application: its name, status, version, input and output counts, and when it
/// was created.
pub async fn show(apps: &Applications) -> Result<RecordBatch> {
    let list = apps.list().await;
    let schema = Arc::new(Schema::new(vec![
        Field::new("name", DataType::Utf8, false),
        Field::new("status", DataType::Utf8, false),
        Field::new("version", DataType::UInt64, false),
        Field::new("inputs", DataType::UInt64, false),
        Field::new("outputs", DataType::UInt64, false),
        Field::new("reference_tables", DataType::UInt64, false),
        Field::new(
            "created",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        ),
    ]));
    let count = |f: fn(&Application) -> usize| -> ArrayRef {
        Arc::new(UInt64Array::from_iter_values(
            list.iter().map(|a| f(a) as u64),
        ))
    };
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            list.iter().map(|a| a.application_name.as_str()),
        )),
        Arc::new(StringArray::from_iter_values(
            list.iter().map(|a| a.application_status.to_string()),
        )),
        Arc::new(UInt64Array::from_iter_values(
            list.iter().map(|a| a.application_version_id),
        )),
        count(|a| a.inputs.len()),
        count(|a| a.outputs.len()),
        count(|a| a.reference_data_sources.len()),
        Arc::new(TimestampMillisecondArray::from_iter_values(
            list.iter()
                .map(|a| (a.create_timestamp * 1000.0).round() as i64),
        )),
    ];
    Ok(RecordBatch::try_new(schema, columns)?)
}

/// Application `name` (matched without regard to case when no name matches exactly, since
/// SQL folds unquoted names) as rows of `(item, name, detail)`.
pub async fn describe(apps: &Applications, name: &str) -> Result<RecordBatch> {
    let list = apps.list().await;
    let app = list
        .iter()
        .find(|a| a.application_name == name)
        .or_else(|| {
            let mut folded = list
                .iter()
                .filter(|a| a.application_name.eq_ignore_ascii_case(name));
            match (folded.next(), folded.next()) {
                (Some(one), None) => Some(one),
                _ => None,
            }
        })
        .ok_or_else(|| {
            Error::NotFound(format!(
                "application '{name}' does not exist; SHOW APPLICATIONS lists them"
            ))
        })?;
    let mut rows: Vec<(String, String, String)> = vec![(
        "application".into(),
        app.application_name.clone(),
        format!(
            "{}, version {}{}",
            app.application_status,
            app.application_version_id,
            app.application_description
                .as_deref()
                .map(|d| format!(": {d}"))
                .unwrap_or_default()
        ),
    )];
    for input in &app.inputs {
        let source = input
            .kinesis_streams_input
            .as_ref()
            .map_or("?", |r| r.resource_arn.as_str());
        rows.push((
            "input".into(),
            input.input_id.clone(),
            format!(
                "{source} as {} ({}, {} columns)",
                input.in_app_stream_names().join(", "),
                input.input_schema.record_format.record_format_type,
                input.input_schema.record_columns.len()
            ),
        ));
    }
    for source in &app.reference_data_sources {
        let s3 = &source.s3_reference_data_source;
        rows.push((
            "reference table".into(),
            source.table_name.clone(),
            format!(
                "s3://{}/{}",
                s3.bucket_arn.trim_start_matches("arn:aws:s3:::"),
                s3.file_key
            ),
        ));
    }
    for output in &app.outputs {
        let target = output
            .kinesis_streams_output
            .as_ref()
            .or(output.kinesis_firehose_output.as_ref())
            .map_or("?", |r| r.resource_arn.as_str());
        rows.push((
            "output".into(),
            output.output_id.clone(),
            format!(
                "{} to {target} as {}",
                output.name, output.destination_schema.record_format_type
            ),
        ));
    }
    if let Some(namespace) = apps
        .engine()
        .namespaces()
        .into_iter()
        .find(|n| n == &app.application_name)
        .and_then(|n| apps.engine().namespace(&n).ok())
    {
        for stream in namespace.streams() {
            let records: usize = stream.stats().iter().map(|s| s.records).sum();
            rows.push((
                "in-application stream".into(),
                namespace.local_name(stream.name()).to_string(),
                format!("{records} records"),
            ));
        }
        for pump in namespace.pumps() {
            rows.push(("pump".into(), pump.name, crate::parser::one_line(&pump.sql)));
        }
    }
    let schema = Arc::new(Schema::new(vec![
        Field::new("item", DataType::Utf8, false),
        Field::new("name", DataType::Utf8, false),
        Field::new("detail", DataType::Utf8, false),
    ]));
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.0.as_str()),
        )),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.1.as_str()),
        )),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.2.as_str()),
        )),
    ];
    Ok(RecordBatch::try_new(schema, columns)?)
}
