//! The columns of a stream: the user's columns, decoded from each record by the stream's format,
//! and the system columns every record carries.
//!
//! Sealed batches are stored in the *stored* layout: `_seq_no` (the per-shard counter),
//! `rowtime`, `_partition_key`, `_data`, then the user columns. Readers and SQL see the *public*
//! layout: the user columns, then `ROWTIME`, `_shard_id`, `_sequence_number`,
//! `_sub_sequence_number`, `_partition_key` and `_data`; `_shard_id`, `_sequence_number` and
//! `_sub_sequence_number` are derived when read, so they cost nothing to store.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, RecordBatch, StringArray, UInt64Array};
use arrow::buffer::{Buffer, OffsetBuffer};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};

use crate::error::{Error, Result};
use crate::sequence::{SEQUENCE_NUMBER_LEN, shard_id, write_sequence_number};

/// Arrival time of a record (processing time), milliseconds, UTC. Lower case so that SQL's
/// unquoted `ROWTIME` (folded to lower case by the SQL planner) finds it.
pub const ROWTIME: &str = "rowtime";
/// The Kinesis shard id of the record's shard, `shardId-000000000000`.
pub const SHARD_ID: &str = "_shard_id";
/// The record's sequence number as a decimal string.
pub const SEQUENCE_NUMBER: &str = "_sequence_number";
/// A KPL user record's place in its aggregated record (as the KCL's `subSequenceNumber`); NULL
/// for a record that was not aggregated.
pub const SUB_SEQUENCE_NUMBER: &str = "_sub_sequence_number";
/// The record's partition key.
pub const PARTITION_KEY: &str = "_partition_key";
/// The record's raw bytes (the data blob).
pub const DATA: &str = "_data";
/// Stored-only: the per-shard sequence counter.
pub(crate) const SEQ_NO: &str = "_seq_no";

/// Names of the system columns in the public layout, in order.
pub const SYSTEM_COLUMNS: [&str; 6] = [
    ROWTIME,
    SHARD_ID,
    SEQUENCE_NUMBER,
    SUB_SEQUENCE_NUMBER,
    PARTITION_KEY,
    DATA,
];

/// Number of system columns at the front of the stored layout.
pub(crate) const STORED_SYSTEM_COLUMNS: usize = 4;

/// Whether `name` is a system column name (compared case-insensitively for `ROWTIME`).
pub fn is_system_column(name: &str) -> bool {
    SYSTEM_COLUMNS.iter().any(|c| c.eq_ignore_ascii_case(name))
}

/// The arrow type of `ROWTIME`.
pub fn rowtime_type() -> DataType {
    DataType::Timestamp(TimeUnit::Millisecond, None)
}

/// Checks a user schema: no system column names, no duplicates; makes every field nullable
/// (a record that does not decode gets NULLs).
pub fn validate_user_schema(schema: &Schema) -> Result<SchemaRef> {
    let mut seen = std::collections::HashSet::new();
    let mut fields = Vec::with_capacity(schema.fields().len());
    for field in schema.fields() {
        if is_system_column(field.name()) || field.name() == SEQ_NO {
            return Err(Error::InvalidArgument(format!(
                "column '{}' is a system column; choose another name (system columns: {})",
                field.name(),
                SYSTEM_COLUMNS.join(", ")
            )));
        }
        if !seen.insert(field.name().to_ascii_lowercase()) {
            return Err(Error::InvalidArgument(format!(
                "column '{}' is declared twice",
                field.name()
            )));
        }
        fields.push(field.as_ref().clone().with_nullable(true));
    }
    Ok(Arc::new(Schema::new(fields)))
}

/// The stored layout for a stream with `user` columns.
pub fn stored_schema(user: &Schema) -> SchemaRef {
    let mut fields = vec![
        Field::new(SEQ_NO, DataType::UInt64, false),
        Field::new(ROWTIME, rowtime_type(), false),
        Field::new(PARTITION_KEY, DataType::Utf8, false),
        Field::new(DATA, DataType::Binary, false),
    ];
    fields.extend(user.fields().iter().map(|f| f.as_ref().clone()));
    Arc::new(Schema::new(fields))
}

/// The public layout (what readers and SQL see) for a stream with `user` columns.
pub fn public_schema(user: &Schema) -> SchemaRef {
    let mut fields: Vec<Field> = user.fields().iter().map(|f| f.as_ref().clone()).collect();
    // Nullable so that an SQL INSERT naming only some columns plans (the planner fills the rest
    // with NULL); Sluice fills them in on arrival, and every stored record has all of them.
    fields.extend([
        Field::new(ROWTIME, rowtime_type(), true),
        Field::new(SHARD_ID, DataType::Utf8, true),
        Field::new(SEQUENCE_NUMBER, DataType::Utf8, true),
        Field::new(SUB_SEQUENCE_NUMBER, DataType::Int64, true),
        Field::new(PARTITION_KEY, DataType::Utf8, true),
        Field::new(DATA, DataType::Binary, true),
    ]);
    Arc::new(Schema::new(fields))
}

/// Converts stored batches of one shard into the public layout, computing only the projected
/// columns (`projection` indexes the public schema; `None` means all).
#[derive(Debug, Clone)]
pub struct PublicProjector {
    public: SchemaRef,
    projected: SchemaRef,
    sources: Vec<ColumnSource>,
    /// Takes KPL aggregated records apart into their user records, decoded by this format.
    deaggregate: Option<crate::StreamFormat>,
}

#[derive(Debug, Clone, Copy)]
enum ColumnSource {
    Stored(usize),
    ShardId,
    SequenceNumber,
    SubSequenceNumber,
}

impl PublicProjector {
    /// A projector for a stream with `user` columns.
    pub fn new(user: &Schema, projection: Option<&[usize]>) -> Result<Self> {
        let public = public_schema(user);
        let n_user = user.fields().len();
        let all: Vec<usize> = (0..public.fields().len()).collect();
        let indices = projection.unwrap_or(&all);
        let mut sources = Vec::with_capacity(indices.len());
        for &i in indices {
            let source = if i < n_user {
                ColumnSource::Stored(STORED_SYSTEM_COLUMNS + i)
            } else {
                match i - n_user {
                    0 => ColumnSource::Stored(1),
                    1 => ColumnSource::ShardId,
                    2 => ColumnSource::SequenceNumber,
                    3 => ColumnSource::SubSequenceNumber,
                    4 => ColumnSource::Stored(2),
                    5 => ColumnSource::Stored(3),
                    _ => {
                        return Err(Error::InvalidArgument(format!(
                            "column index {i} is out of range for a stream with {} columns",
                            public.fields().len()
                        )));
                    }
                }
            };
            sources.push(source);
        }
        let projected = Arc::new(public.project(indices)?);
        Ok(Self {
            public,
            projected,
            sources,
            deaggregate: None,
        })
    }

    /// Makes [`Self::project`] take KPL aggregated records apart: one row per user record,
    /// with its own partition key, data, sub-sequence number and columns (decoded by `format`),
    /// and the aggregate's sequence number and arrival time ([`crate::kpl::expand_stored`]). For
    /// SQL, not for `GetRecords`, which returns records as stored.
    pub fn deaggregating(mut self, format: crate::StreamFormat) -> Self {
        self.deaggregate = Some(format);
        self
    }

    /// The full public schema.
    pub fn public_schema(&self) -> &SchemaRef {
        &self.public
    }

    /// The schema of the batches [`Self::project`] returns.
    pub fn schema(&self) -> &SchemaRef {
        &self.projected
    }

    /// Projects one stored batch of shard `shard_index`.
    pub fn project(&self, shard_index: u32, stored: &RecordBatch) -> Result<RecordBatch> {
        let expanded = match self.deaggregate {
            Some(format) => crate::kpl::expand_stored(stored, format)?,
            None => None,
        };
        let (stored, sub_sequence_numbers) = match &expanded {
            Some((batch, subs)) => (batch, Some(subs)),
            None => (stored, None),
        };
        let rows = stored.num_rows();
        let columns: Vec<ArrayRef> = self
            .sources
            .iter()
            .map(|source| match source {
                ColumnSource::Stored(i) => Arc::clone(stored.column(*i)),
                ColumnSource::ShardId => repeated(shard_id(shard_index).as_bytes(), rows),
                ColumnSource::SequenceNumber => {
                    let mut values = Vec::with_capacity(rows * SEQUENCE_NUMBER_LEN);
                    let mut text = [0u8; SEQUENCE_NUMBER_LEN];
                    if let Some(seqs) = stored.column(0).as_any().downcast_ref::<UInt64Array>() {
                        for seq in seqs.values().iter() {
                            write_sequence_number(&mut text, shard_index, *seq);
                            values.extend_from_slice(&text);
                        }
                    }
                    fixed_width_strings(values, SEQUENCE_NUMBER_LEN)
                }
                ColumnSource::SubSequenceNumber => match sub_sequence_numbers {
                    Some(subs) => Arc::new(subs.clone()) as ArrayRef,
                    None => arrow::array::new_null_array(&DataType::Int64, rows),
                },
            })
            .collect();
        let options = arrow::array::RecordBatchOptions::new().with_row_count(Some(rows));
        Ok(RecordBatch::try_new_with_options(
            Arc::clone(&self.projected),
            columns,
            &options,
        )?)
    }
}

/// `value` repeated `rows` times as a string column.
fn repeated(value: &[u8], rows: usize) -> ArrayRef {
    fixed_width_strings(value.repeat(rows), value.len())
}

/// A string column of values all `width` bytes long, laid end to end in `values`.
fn fixed_width_strings(values: Vec<u8>, width: usize) -> ArrayRef {
    let rows = values.len().checked_div(width).unwrap_or(0);
    let offsets = OffsetBuffer::from_lengths(std::iter::repeat_n(width, rows));
    // The values are ASCII digits and letters, so they are valid UTF-8.
    Arc::new(StringArray::new(offsets, Buffer::from_vec(values), None))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_column_names_are_reserved() {
        let schema = Schema::new(vec![Field::new("rowtime", DataType::Int64, true)]);
        let err = validate_user_schema(&schema).err().map(|e| e.to_string());
        assert!(err.unwrap_or_default().contains("system column"));
    }

    #[test]
    fn duplicate_columns_are_refused() {
        let schema = Schema::new(vec![
            Field::new("a", DataType::Int64, true),
            Field::new("A", DataType::Int64, true),
        ]);
        assert!(validate_user_schema(&schema).is_err());
    }

    #[test]
    fn public_layout_puts_user_columns_first() {
        let user = Schema::new(vec![Field::new("x", DataType::Int64, false)]);
        let public = public_schema(&user);
        let names: Vec<_> = public.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(
            names,
            [
                "x",
                ROWTIME,
                SHARD_ID,
                SEQUENCE_NUMBER,
                SUB_SEQUENCE_NUMBER,
                PARTITION_KEY,
                DATA
            ]
        );
    }
}
