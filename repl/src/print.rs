//! Printing results in the formats the REPL offers: an aligned table for people, csv, json and
//! nd-json for scripts.

use std::fmt;
use std::io::Write;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use arrow::error::ArrowError;

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// An aligned table with a row count and timing footer.
    Table,
    /// Comma-separated values with a header line.
    Csv,
    /// Tab-separated values with a header line.
    Tsv,
    /// One JSON array of objects.
    Json,
    /// One JSON object per line.
    Ndjson,
}

impl FromStr for OutputFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "table" => Ok(Self::Table),
            "csv" => Ok(Self::Csv),
            "tsv" => Ok(Self::Tsv),
            "json" => Ok(Self::Json),
            "ndjson" | "nd-json" => Ok(Self::Ndjson),
            other => Err(format!(
                "unknown format '{other}'; expected table, csv, tsv, json or ndjson"
            )),
        }
    }
}

impl fmt::Display for OutputFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Table => "table",
            Self::Csv => "csv",
            Self::Tsv => "tsv",
            Self::Json => "json",
            Self::Ndjson => "ndjson",
        })
    }
}

/// Writes `batches` to `out` in `format`; with `footer`, the table format ends with
/// `N rows in set (0.012 s)`.
pub fn print_batches(
    out: &mut dyn Write,
    format: OutputFormat,
    schema: &SchemaRef,
    batches: &[RecordBatch],
    elapsed: Duration,
    footer: bool,
) -> Result<(), ArrowError> {
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    match format {
        OutputFormat::Table => {
            if schema.fields().is_empty() {
                // Nothing to draw.
            } else if batches.is_empty() {
                let empty = RecordBatch::new_empty(schema.clone());
                writeln!(
                    out,
                    "{}",
                    arrow::util::pretty::pretty_format_batches(&[empty])?
                )?;
            } else {
                let shown = batches
                    .iter()
                    .map(for_table)
                    .collect::<Result<Vec<_>, _>>()?;
                writeln!(
                    out,
                    "{}",
                    arrow::util::pretty::pretty_format_batches(&shown)?
                )?;
            }
            if footer {
                let noun = if rows == 1 { "row" } else { "rows" };
                writeln!(out, "{rows} {noun} in set ({:.3} s)", elapsed.as_secs_f64())?;
            }
        }
        OutputFormat::Csv | OutputFormat::Tsv => {
            let delimiter = if format == OutputFormat::Csv {
                b','
            } else {
                b'\t'
            };
            let mut writer = arrow_csv::WriterBuilder::new()
                .with_header(true)
                .with_delimiter(delimiter)
                .build(&mut *out);
            if batches.is_empty() {
                writer.write(&RecordBatch::new_empty(schema.clone()))?;
            }
            for batch in batches {
                writer.write(batch)?;
            }
        }
        OutputFormat::Json => {
            let mut writer = arrow_json::ArrayWriter::new(&mut *out);
            for batch in batches {
                writer.write(batch)?;
            }
            writer.finish()?;
            if rows == 0 {
                write!(out, "[]")?;
            }
            writeln!(out)?;
        }
        OutputFormat::Ndjson => {
            let mut writer = arrow_json::LineDelimitedWriter::new(&mut *out);
            for batch in batches {
                writer.write(batch)?;
            }
            writer.finish()?;
        }
    }
    Ok(())
}

/// The widest a binary value (a record's `_data`) is shown in a table, in characters.
const BINARY_SHOWN: usize = 32;

/// `batch` as a table shows it: binary columns (a record's `_data`) abbreviated to their first
/// characters (as text when they are UTF-8, as hex otherwise) and their length, so one blob
/// does not push the other columns off the screen. CSV and JSON keep every byte.
fn for_table(batch: &RecordBatch) -> Result<RecordBatch, ArrowError> {
    use arrow::array::{Array, ArrayRef, AsArray, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    let binary = |t: &DataType| {
        matches!(
            t,
            DataType::Binary | DataType::LargeBinary | DataType::BinaryView
        )
    };
    let schema = batch.schema();
    if !schema.fields().iter().any(|f| binary(f.data_type())) {
        return Ok(batch.clone());
    }
    let mut fields = Vec::with_capacity(schema.fields().len());
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
    for (field, column) in schema.fields().iter().zip(batch.columns()) {
        if !binary(field.data_type()) {
            fields.push(field.as_ref().clone());
            columns.push(Arc::clone(column));
            continue;
        }
        let column = arrow::compute::cast(column, &DataType::Binary)?;
        let values = column.as_binary::<i32>();
        let shown: StringArray = (0..values.len())
            .map(|i| values.is_valid(i).then(|| abbreviate(values.value(i))))
            .collect();
        fields.push(Field::new(
            field.name(),
            DataType::Utf8,
            field.is_nullable(),
        ));
        columns.push(Arc::new(shown));
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
}

/// The first characters of `bytes` and, when cut, how many bytes there are.
fn abbreviate(bytes: &[u8]) -> String {
    let text = match std::str::from_utf8(bytes) {
        Ok(text)
            if !text
                .chars()
                .any(|c| c.is_control() && c != '\n' && c != '\t') =>
        {
            text.replace(['\n', '\t'], " ")
        }
        _ => bytes.iter().map(|b| format!("{b:02x}")).collect(),
    };
    if text.chars().count() <= BINARY_SHOWN {
        return text;
    }
    let head: String = text.chars().take(BINARY_SHOWN - 1).collect();
    format!("{head}… ({} bytes)", bytes.len())
}

/// Prints the batches of a continuous query as they arrive: one table per batch, a CSV header
/// only before the first, and JSON as one object per line (a stream has no end to close an
/// array at).
pub struct ContinuousPrinter {
    format: OutputFormat,
    rows: usize,
}

impl ContinuousPrinter {
    pub fn new(format: OutputFormat) -> Self {
        Self { format, rows: 0 }
    }

    /// Prints one batch and flushes, so each row shows as soon as it is produced.
    pub fn print(&mut self, out: &mut dyn Write, batch: &RecordBatch) -> Result<(), ArrowError> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        match self.format {
            OutputFormat::Table => {
                writeln!(
                    out,
                    "{}",
                    arrow::util::pretty::pretty_format_batches(&[for_table(batch)?])?
                )?;
            }
            OutputFormat::Csv | OutputFormat::Tsv => {
                let delimiter = if self.format == OutputFormat::Csv {
                    b','
                } else {
                    b'\t'
                };
                let mut writer = arrow_csv::WriterBuilder::new()
                    .with_header(self.rows == 0)
                    .with_delimiter(delimiter)
                    .build(&mut *out);
                writer.write(batch)?;
            }
            OutputFormat::Json | OutputFormat::Ndjson => {
                let mut writer = arrow_json::LineDelimitedWriter::new(&mut *out);
                writer.write(batch)?;
                writer.finish()?;
            }
        }
        self.rows += batch.num_rows();
        out.flush()?;
        Ok(())
    }

    /// Rows printed so far.
    pub fn rows(&self) -> usize {
        self.rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{ArrayRef, Int64Array};
    use arrow::datatypes::{DataType, Field, Schema};

    fn batch() -> (SchemaRef, RecordBatch) {
        let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]));
        let column: ArrayRef = Arc::new(Int64Array::from(vec![1, 2]));
        let batch = RecordBatch::try_new(schema.clone(), vec![column]).expect("batch");
        (schema, batch)
    }

    fn render(format: OutputFormat) -> String {
        let (schema, batch) = batch();
        let mut out = Vec::new();
        print_batches(
            &mut out,
            format,
            &schema,
            &[batch],
            Duration::from_millis(12),
            true,
        )
        .expect("prints");
        String::from_utf8(out).expect("utf-8")
    }

    #[test]
    fn continuous_csv_has_one_header() {
        let (_, batch) = batch();
        let mut printer = ContinuousPrinter::new(OutputFormat::Csv);
        let mut out = Vec::new();
        printer.print(&mut out, &batch).expect("prints");
        printer.print(&mut out, &batch).expect("prints");
        assert_eq!(String::from_utf8(out).expect("utf-8"), "n\n1\n2\n1\n2\n");
        assert_eq!(printer.rows(), 4);
    }

    #[test]
    fn tables_abbreviate_record_data() -> Result<(), ArrowError> {
        use arrow::array::BinaryArray;
        let long = br#"{"ticker_symbol":"AMZN","sector":"RETAIL","change":1.5,"price":131.25}"#;
        let data: ArrayRef = Arc::new(BinaryArray::from(vec![
            Some(&long[..]),
            Some(&b"short"[..]),
            Some(&[0u8, 159, 146, 150][..]),
            None,
        ]));
        let schema = Arc::new(Schema::new(vec![Field::new(
            "_data",
            DataType::Binary,
            true,
        )]));
        let batch = RecordBatch::try_new(Arc::clone(&schema), vec![data])?;
        let mut out = Vec::new();
        print_batches(
            &mut out,
            OutputFormat::Table,
            &schema,
            std::slice::from_ref(&batch),
            Duration::ZERO,
            false,
        )?;
        let table = String::from_utf8_lossy(&out).into_owned();
        assert!(
            table.contains(&format!(
                "| {{\"ticker_symbol\":\"AMZN\",\"sector… ({} bytes) |",
                long.len()
            )),
            "{table}"
        );
        assert!(table.contains("| short "), "{table}");
        assert!(table.contains("| 009f9296 "), "{table}");
        // CSV keeps every byte.
        let mut csv = Vec::new();
        print_batches(
            &mut csv,
            OutputFormat::Csv,
            &schema,
            &[batch],
            Duration::ZERO,
            false,
        )?;
        let csv = String::from_utf8_lossy(&csv).into_owned();
        assert!(
            csv.contains("3133312e3235") && !csv.contains("bytes)"),
            "{csv}"
        );
        Ok(())
    }

    #[test]
    fn formats_render_as_scripts_expect() {
        assert!(render(OutputFormat::Table).ends_with("2 rows in set (0.012 s)\n"));
        assert_eq!(render(OutputFormat::Csv), "n\n1\n2\n");
        assert_eq!(render(OutputFormat::Json), "[{\"n\":1},{\"n\":2}]\n");
        assert_eq!(render(OutputFormat::Ndjson), "{\"n\":1}\n{\"n\":2}\n");
    }
}
