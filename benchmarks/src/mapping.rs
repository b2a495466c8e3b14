//! The input mapping benchmark: a KDA application's JSON input mapping (`InputSchema` with
//! JSONPath `Mapping`s, one of them nested, `$.price.last`) turning N ticker records into the
//! rows of an in-application stream, beside arrow-json decoding the same bytes into the same
//! columns (the nested one as a struct) in the same run.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Fields, Schema};
use sluice_sql::application::input::{InputMapper, InputSchema};

use crate::measure::CpuTimer;

const MAPPING: &str = r#"{
  "RecordFormat": {"RecordFormatType": "JSON",
                   "MappingParameters": {"JSONMappingParameters": {"RecordRowPath": "$"}}},
  "RecordEncoding": "UTF-8",
  "RecordColumns": [
    {"Name": "TICKER_SYMBOL", "Mapping": "$.TICKER_SYMBOL", "SqlType": "VARCHAR(4)"},
    {"Name": "SECTOR", "Mapping": "$.SECTOR", "SqlType": "VARCHAR(16)"},
    {"Name": "LAST", "Mapping": "$.price.last", "SqlType": "DOUBLE"},
    {"Name": "QTY", "Mapping": "$.qty", "SqlType": "INTEGER"}]}"#;

/// Records mapped per call, as a stream read hands them over.
const BATCH: usize = 8_192;

pub fn mapping(records: usize) -> Result<(), Box<dyn std::error::Error>> {
    println!("input mapping: {records} JSON records, 4 columns, one at a nested path");
    let sectors = ["RETAIL", "MEDIA", "TECHNOLOGY", "ENERGY"];
    let tickers = ["AMZN", "NFLX", "MSFT", "XOM"];
    let texts: Vec<String> = (0..records)
        .map(|i| {
            format!(
                r#"{{"TICKER_SYMBOL":"{}","SECTOR":"{}","price":{{"last":{}.{:02}}},"qty":{}}}"#,
                tickers[i % 4],
                sectors[i % 4],
                100 + i % 300,
                i % 100,
                i % 1_000
            )
        })
        .collect();

    let input: InputSchema = serde_json::from_str(MAPPING)?;
    let mapper = InputMapper::new(&input)?;
    let cpu = CpuTimer::start();
    let mut mapped = 0;
    for chunk in texts.chunks(BATCH) {
        let records: Vec<&[u8]> = chunk.iter().map(|t| t.as_bytes()).collect();
        let (batch, _, errors) = mapper.map(&records)?;
        if !errors.is_empty() {
            return Err(format!("{} records did not map: {:?}", errors.len(), errors[0]).into());
        }
        mapped += batch.num_rows();
    }
    let mapping_secs = cpu.elapsed_secs();

    let schema = Arc::new(Schema::new(vec![
        Field::new("TICKER_SYMBOL", DataType::Utf8, true),
        Field::new("SECTOR", DataType::Utf8, true),
        Field::new(
            "price",
            DataType::Struct(Fields::from(vec![Field::new(
                "last",
                DataType::Float64,
                true,
            )])),
            true,
        ),
        Field::new("qty", DataType::Int32, true),
    ]));
    let cpu = CpuTimer::start();
    let mut decoded = 0;
    for chunk in texts.chunks(BATCH) {
        let mut decoder = arrow_json::ReaderBuilder::new(Arc::clone(&schema))
            .with_batch_size(BATCH)
            .build_decoder()?;
        for text in chunk {
            decoder.decode(text.as_bytes())?;
        }
        decoded += decoder.flush()?.map_or(0, |b| b.num_rows());
    }
    let decoding_secs = cpu.elapsed_secs();
    if (mapped, decoded) != (records, records) {
        return Err(format!("{mapped} mapped and {decoded} decoded of {records}").into());
    }

    let rate = |secs: f64| records as f64 / secs.max(1e-9);
    crate::measure::print_side_by_side(
        ("mapping", "arrow-json"),
        &[(
            "records/s per core (CPU time)",
            rate(mapping_secs),
            rate(decoding_secs),
        )],
    );
    println!(
        "  mapping / arrow-json CPU time: {:.2}x",
        mapping_secs / decoding_secs.max(1e-9)
    );
    Ok(())
}
