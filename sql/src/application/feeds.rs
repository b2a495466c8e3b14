//! The pumps an application has besides its SQL: one per in-application input stream, mapping
//! a source stream's records into rows ([`input_feed`]), and one per output, writing an
//! in-application stream's rows as JSON or CSV records into a stream ([`output_feed`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BinaryArray, RecordBatch, StringArray, new_null_array,
};
use datafusion::arrow::compute::{cast, filter_record_batch};
use datafusion::arrow::datatypes::{DataType, Int64Type, TimeUnit};
use datafusion::common::exec_err;
use sluice_engine::schema::{DATA, PARTITION_KEY, ROWTIME, SEQUENCE_NUMBER};
use sluice_engine::sequence::parse_sequence_number;
use sluice_engine::{DATA_CONVERSION_ERROR, ErrorReport, Stream, StreamFormat};

use super::input::InputMapper;
use crate::pumps::{Feed, FeedStart};

/// The feed of in-application stream `index` (of `of`) of an input: the records of `source`'s
/// shards `index`, `index + of`, … mapped by `mapper`; records that do not map go to
/// `errors` (the application's `error_stream`).
pub fn input_feed(
    name: String,
    source: Arc<Stream>,
    target: Arc<Stream>,
    errors: Arc<Stream>,
    mapper: InputMapper,
    (index, of): (u32, u32),
    start: FeedStart,
) -> Feed {
    let reporting = Arc::clone(&source);
    let transform = move |batch: RecordBatch| {
        let batch = if of > 1 {
            let shards = batch
                .column_by_name(SEQUENCE_NUMBER)
                .map(|c| c.as_string::<i32>().clone());
            let keep: datafusion::arrow::array::BooleanArray = (0..batch.num_rows())
                .map(|row| {
                    let shard = shards
                        .as_ref()
                        .and_then(|s| parse_sequence_number(s.value(row)).ok())
                        .map_or(0, |(shard, _)| shard);
                    Some(shard % of == index)
                })
                .collect();
            filter_record_batch(&batch, &keep)?
        } else {
            batch
        };
        let Some(data) = batch.column_by_name(DATA).map(|c| c.as_binary::<i32>()) else {
            return exec_err!(
                "an application input reads its records' data, and this stream has no _data column"
            );
        };
        let records: Vec<&[u8]> = (0..data.len())
            .map(|row| {
                if data.is_valid(row) {
                    data.value(row)
                } else {
                    &[]
                }
            })
            .collect();
        let (rows, _origins, failures) = mapper
            .map(&records)
            .map_err(|e| datafusion::error::DataFusionError::External(Box::new(e)))?;
        if !failures.is_empty() {
            let sequence = batch
                .column_by_name(SEQUENCE_NUMBER)
                .map(|c| c.as_string::<i32>().clone());
            let rowtimes = rowtimes(&batch);
            let reports = failures
                .into_iter()
                .map(|failure| {
                    let (shard_index, seq) = sequence
                        .as_ref()
                        .and_then(|s| parse_sequence_number(s.value(failure.record)).ok())
                        .unwrap_or_default();
                    ErrorReport {
                        shard_index,
                        seq,
                        name: DATA_CONVERSION_ERROR,
                        reason: failure.message,
                        data_rowtime_ms: rowtimes.as_ref().map(|t| t.value(failure.record)),
                        data: Some(records[failure.record].to_vec()),
                        pump: None,
                    }
                })
                .collect();
            if let Err(e) = reporting.report_to(&errors, reports) {
                log::error!("an application input could not report to error_stream: {e}");
            }
        }
        Ok(rows)
    };
    Feed {
        name,
        source,
        target,
        start,
        transform: Box::new(transform),
    }
}

fn rowtimes(batch: &RecordBatch) -> Option<datafusion::arrow::array::Int64Array> {
    let column = batch.column_by_name(ROWTIME)?;
    let millis = cast(column, &DataType::Timestamp(TimeUnit::Millisecond, None)).ok()?;
    let ints = cast(&millis, &DataType::Int64).ok()?;
    Some(ints.as_primitive::<Int64Type>().clone())
}

/// Partition keys of output records: spread evenly over the target's shards.
static OUTPUT_KEYS: AtomicU64 = AtomicU64::new(0);

/// The feed of an output: every row of in-application stream `source` as one `format`
/// record (`DestinationSchema`: JSON or CSV) of `target`.
pub fn output_feed(
    name: String,
    source: Arc<Stream>,
    target: Arc<Stream>,
    format: StreamFormat,
    start: FeedStart,
) -> Feed {
    let users = source.user_schema().fields().len();
    let target_columns = Arc::clone(target.user_schema());
    let transform = move |batch: RecordBatch| {
        let rows = batch.num_rows();
        let user_columns = batch.project(&(0..users).collect::<Vec<_>>())?;
        let data: BinaryArray = crate::table::encode_rows(format, &user_columns)?
            .iter()
            .map(|r| Some(r.as_slice()))
            .collect();
        let keys: StringArray = (0..rows)
            .map(|_| {
                let n = OUTPUT_KEYS.fetch_add(1, Ordering::Relaxed);
                Some(format!("{:016x}", n.wrapping_mul(0x9E37_79B9_7F4A_7C15)))
            })
            .collect();
        // The target's own columns are decoded from each record's data by the target.
        let mut fields: Vec<datafusion::arrow::datatypes::FieldRef> =
            target_columns.fields().iter().cloned().collect();
        let mut columns: Vec<ArrayRef> = target_columns
            .fields()
            .iter()
            .map(|f| new_null_array(f.data_type(), rows))
            .collect();
        fields.push(Arc::new(datafusion::arrow::datatypes::Field::new(
            DATA,
            DataType::Binary,
            true,
        )));
        columns.push(Arc::new(data));
        fields.push(Arc::new(datafusion::arrow::datatypes::Field::new(
            PARTITION_KEY,
            DataType::Utf8,
            true,
        )));
        columns.push(Arc::new(keys));
        let schema = Arc::new(datafusion::arrow::datatypes::Schema::new(fields));
        Ok(RecordBatch::try_new(schema, columns)?)
    };
    Feed {
        name,
        source,
        target,
        start,
        transform: Box::new(transform),
    }
}
