//! Turning buffered records into one object's bytes: Parquet with a page codec, or JSON lines
//! and CSV compressed as a whole.

use std::io::Write;
use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::SchemaRef;
use parquet::arrow::ArrowWriter;
use parquet::basic::{GzipLevel, ZstdLevel};
use parquet::file::properties::WriterProperties;

use crate::error::Result;
use crate::options::{Compression, Format};

/// The object name's ending for `format` and `compression`.
pub fn extension(format: Format, compression: Compression) -> &'static str {
    match (format, compression) {
        (Format::Parquet, _) => ".parquet",
        (Format::Json, Compression::Gzip) => ".json.gz",
        (Format::Json, Compression::Zstd) => ".json.zst",
        (Format::Json, _) => ".json",
        (Format::Csv, Compression::Gzip) => ".csv.gz",
        (Format::Csv, Compression::Zstd) => ".csv.zst",
        (Format::Csv, _) => ".csv",
    }
}

/// Encodes `batches` (all of `schema`) as one object. `raw` batches (`Some(newline)`) hold a
/// stream's records as they arrived (`_data`): JSON and CSV objects then carry each record's
/// bytes, followed by a newline where it has none if `newline`, or concatenated as they are.
pub fn encode(
    batches: &[RecordBatch],
    schema: &SchemaRef,
    format: Format,
    compression: Compression,
    raw: Option<bool>,
) -> Result<Vec<u8>> {
    let plain = match (format, raw) {
        (Format::Parquet, _) => return parquet(batches, schema, compression),
        (_, Some(newline)) => raw_records(batches, newline),
        (Format::Json, None) => {
            let mut out = Vec::new();
            let mut writer = arrow_json::LineDelimitedWriter::new(&mut out);
            for batch in batches {
                writer.write(batch)?;
            }
            writer.finish()?;
            out
        }
        (Format::Csv, None) => {
            let mut out = Vec::new();
            {
                let mut writer = arrow_csv::WriterBuilder::new()
                    .with_header(true)
                    .build(&mut out);
                for batch in batches {
                    writer.write(batch)?;
                }
            }
            out
        }
    };
    compress(plain, compression)
}

fn parquet(
    batches: &[RecordBatch],
    schema: &SchemaRef,
    compression: Compression,
) -> Result<Vec<u8>> {
    let codec = match compression {
        Compression::None => parquet::basic::Compression::UNCOMPRESSED,
        Compression::Snappy => parquet::basic::Compression::SNAPPY,
        Compression::Gzip => parquet::basic::Compression::GZIP(GzipLevel::default()),
        Compression::Zstd => parquet::basic::Compression::ZSTD(ZstdLevel::default()),
    };
    let properties = WriterProperties::builder().set_compression(codec).build();
    let mut out = Vec::new();
    let mut writer = ArrowWriter::try_new(&mut out, Arc::clone(schema), Some(properties))?;
    for batch in batches {
        writer.write(batch)?;
    }
    writer.close()?;
    Ok(out)
}

/// Each record's `_data`, with a newline added where it has none if `newline`.
fn raw_records(batches: &[RecordBatch], newline: bool) -> Vec<u8> {
    let mut out = Vec::new();
    for batch in batches {
        let Some(data) = batch.column_by_name(sluice_engine::schema::DATA) else {
            continue;
        };
        let data = data.as_binary::<i32>();
        for row in 0..data.len() {
            if data.is_null(row) {
                continue;
            }
            let bytes = data.value(row);
            out.extend_from_slice(bytes);
            if newline && bytes.last() != Some(&b'\n') {
                out.push(b'\n');
            }
        }
    }
    out
}

/// Compresses a whole JSON-lines or CSV object.
pub fn compress(plain: Vec<u8>, compression: Compression) -> Result<Vec<u8>> {
    Ok(match compression {
        Compression::None | Compression::Snappy => plain,
        Compression::Gzip => {
            let mut encoder = flate2::write::GzEncoder::new(
                Vec::with_capacity(plain.len() / 4),
                flate2::Compression::default(),
            );
            encoder.write_all(&plain)?;
            encoder.finish()?
        }
        Compression::Zstd => zstd::encode_all(plain.as_slice(), 3)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    use std::io::Read;

    fn batch() -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("url", DataType::Utf8, true),
            Field::new("views", DataType::Int64, true),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(vec![Some("/a"), None])),
                Arc::new(Int64Array::from(vec![3, 4])),
            ],
        )
        .expect("batch")
    }

    #[test]
    fn every_codec_round_trips_through_parquet() {
        let b = batch();
        for codec in [
            Compression::None,
            Compression::Snappy,
            Compression::Gzip,
            Compression::Zstd,
        ] {
            let bytes = encode(
                std::slice::from_ref(&b),
                &b.schema(),
                Format::Parquet,
                codec,
                None,
            )
            .expect("encodes");
            let reader = ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::from(bytes))
                .expect("parquet")
                .build()
                .expect("reader");
            let read: Vec<RecordBatch> = reader.map(|b| b.expect("batch")).collect();
            assert_eq!(read, vec![b.clone()], "{codec:?}");
        }
    }

    #[test]
    fn json_lines_and_csv_compress_as_a_whole() {
        let b = batch();
        let json = encode(
            std::slice::from_ref(&b),
            &b.schema(),
            Format::Json,
            Compression::Gzip,
            None,
        )
        .expect("encodes");
        let mut text = String::new();
        flate2::read::GzDecoder::new(json.as_slice())
            .read_to_string(&mut text)
            .expect("gzip");
        assert_eq!(text, "{\"url\":\"/a\",\"views\":3}\n{\"views\":4}\n");
        let csv = encode(
            std::slice::from_ref(&b),
            &b.schema(),
            Format::Csv,
            Compression::Zstd,
            None,
        )
        .expect("encodes");
        let text =
            String::from_utf8(zstd::decode_all(csv.as_slice()).expect("zstd")).expect("utf8");
        assert_eq!(text, "url,views\n/a,3\n,4\n");
    }
}
