//! Records in the Kinesis Producer Library's aggregated format, taken apart.
//!
//! The KPL packs many user records into one Kinesis record: the magic bytes `F3 89 9A C2`, a
//! protobuf `AggregatedRecord` (a table of partition keys, a table of explicit hash keys, and
//! the user records, each naming its keys by index), and the MD5 digest of the protobuf bytes.
//! Kinesis stores and returns such a record as one record; consumers (the KCL, Firehose with
//! `RecordDeAggregation`, Sluice's SQL) take it apart, numbering the user records with
//! sub-sequence numbers 0, 1, 2, …
//!
//! # Example
//!
//! ```
//! use sluice_engine::kpl::{Aggregated, aggregate};
//!
//! let record = aggregate(&[("user-1", b"first".as_slice()), ("user-2", b"second".as_slice())]);
//! let Aggregated::Records(records) = Aggregated::parse(&record) else { panic!("aggregated") };
//! assert_eq!(records[1].partition_key, "user-2");
//! assert_eq!(records[1].data, b"second");
//! ```

use md5::{Digest, Md5};
use prost::Message;

/// The four bytes an aggregated record starts with.
pub const MAGIC: [u8; 4] = [0xF3, 0x89, 0x9A, 0xC2];
const DIGEST_LEN: usize = 16;

#[derive(Clone, PartialEq, Message)]
struct AggregatedRecord {
    #[prost(string, repeated, tag = "1")]
    partition_key_table: Vec<String>,
    #[prost(string, repeated, tag = "2")]
    explicit_hash_key_table: Vec<String>,
    #[prost(message, repeated, tag = "3")]
    records: Vec<UserRecordMessage>,
}

#[derive(Clone, PartialEq, Message)]
struct UserRecordMessage {
    #[prost(uint64, required, tag = "1")]
    partition_key_index: u64,
    #[prost(uint64, optional, tag = "2")]
    explicit_hash_key_index: Option<u64>,
    #[prost(bytes = "vec", required, tag = "3")]
    data: Vec<u8>,
}

/// One user record of an aggregated record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    pub partition_key: String,
    pub explicit_hash_key: Option<String>,
    pub data: Vec<u8>,
    /// Its place in the aggregated record, from 0.
    pub sub_sequence_number: u64,
}

/// What a record's bytes turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Aggregated {
    /// Not in the aggregated format: an ordinary record.
    Plain,
    /// An aggregated record, taken apart.
    Records(Vec<UserRecord>),
    /// Starts with the magic bytes but is not a valid aggregated record (its digest does not
    /// match, or its protobuf does not decode): an ordinary record, and worth reporting.
    Corrupt(String),
}

impl Aggregated {
    /// Whether `data` claims the aggregated format (starts with the magic bytes and is long
    /// enough to hold a digest). Cheap: callers check this before [`Aggregated::parse`].
    pub fn claims(data: &[u8]) -> bool {
        data.len() >= MAGIC.len() + DIGEST_LEN && data[..MAGIC.len()] == MAGIC
    }

    /// Takes `data` apart if it is an aggregated record.
    pub fn parse(data: &[u8]) -> Self {
        if !Self::claims(data) {
            return Self::Plain;
        }
        let body = &data[MAGIC.len()..data.len() - DIGEST_LEN];
        let digest = &data[data.len() - DIGEST_LEN..];
        if Md5::digest(body).as_slice() != digest {
            return Self::Corrupt(
                "the record starts with the KPL aggregation magic bytes but its MD5 digest does not match its contents".to_string(),
            );
        }
        let message = match AggregatedRecord::decode(body) {
            Ok(message) => message,
            Err(e) => {
                return Self::Corrupt(format!(
                    "the record starts with the KPL aggregation magic bytes but its AggregatedRecord does not decode: {e}"
                ));
            }
        };
        let mut records = Vec::with_capacity(message.records.len());
        for (index, record) in message.records.into_iter().enumerate() {
            let Some(partition_key) = usize::try_from(record.partition_key_index)
                .ok()
                .and_then(|i| message.partition_key_table.get(i))
            else {
                return Self::Corrupt(format!(
                    "user record {index} of a KPL aggregated record names partition key {} of a table of {}",
                    record.partition_key_index,
                    message.partition_key_table.len()
                ));
            };
            let explicit_hash_key = record
                .explicit_hash_key_index
                .and_then(|i| usize::try_from(i).ok())
                .and_then(|i| message.explicit_hash_key_table.get(i))
                .cloned();
            records.push(UserRecord {
                partition_key: partition_key.clone(),
                explicit_hash_key,
                data: record.data,
                sub_sequence_number: index as u64,
            });
        }
        Self::Records(records)
    }
}

/// Packs `(partition key, data)` user records into one aggregated record, as the KPL does
/// (partition keys shared through the table). For producers and tests.
pub fn aggregate(records: &[(&str, &[u8])]) -> Vec<u8> {
    let mut message = AggregatedRecord::default();
    for (key, data) in records {
        let index = match message.partition_key_table.iter().position(|k| k == key) {
            Some(index) => index,
            None => {
                message.partition_key_table.push((*key).to_string());
                message.partition_key_table.len() - 1
            }
        };
        message.records.push(UserRecordMessage {
            partition_key_index: index as u64,
            explicit_hash_key_index: None,
            data: data.to_vec(),
        });
    }
    let body = message.encode_to_vec();
    let mut out = Vec::with_capacity(MAGIC.len() + body.len() + DIGEST_LEN);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&body);
    out.extend_from_slice(Md5::digest(&body).as_slice());
    out
}

/// A stored-layout batch with every KPL aggregated record replaced by its user records, in
/// order: each with the aggregate's sequence number and arrival time, its own partition key and
/// data, and its own columns decoded from its data by `format`; beside it, each row's
/// sub-sequence number (NULL for an ordinary record). `None` if the batch holds no aggregated
/// record (the common case, found by looking at each record's first bytes).
pub fn expand_stored(
    stored: &arrow::array::RecordBatch,
    format: crate::StreamFormat,
) -> crate::Result<Option<(arrow::array::RecordBatch, arrow::array::Int64Array)>> {
    use arrow::array::{
        Array, ArrayRef, AsArray, BinaryArray, Int64Array, StringArray, UInt32Array,
    };
    use std::sync::Arc;

    let system = crate::schema::STORED_SYSTEM_COLUMNS;
    let data = stored.column(3).as_binary::<i32>();
    if !(0..data.len()).any(|row| data.is_valid(row) && Aggregated::claims(data.value(row))) {
        return Ok(None);
    }
    let keys = stored.column(2).as_string::<i32>();
    // For every output row: the stored row it comes from, and (for a user record) its place
    // among the user records, whose columns are decoded together.
    let mut rows: Vec<u32> = Vec::with_capacity(data.len());
    let mut out_keys: Vec<String> = Vec::with_capacity(data.len());
    let mut out_data: Vec<Vec<u8>> = Vec::with_capacity(data.len());
    let mut user_index: Vec<Option<usize>> = Vec::with_capacity(data.len());
    let mut user_rows: Vec<usize> = Vec::new();
    let mut sub_sequence_numbers: Vec<Option<i64>> = Vec::with_capacity(data.len());
    for row in 0..data.len() {
        let bytes = if data.is_valid(row) {
            data.value(row)
        } else {
            &[][..]
        };
        match Aggregated::parse(bytes) {
            Aggregated::Records(records) => {
                for record in records {
                    user_index.push(Some(user_rows.len()));
                    user_rows.push(out_data.len());
                    rows.push(row as u32);
                    out_keys.push(record.partition_key);
                    out_data.push(record.data);
                    sub_sequence_numbers.push(Some(record.sub_sequence_number as i64));
                }
            }
            Aggregated::Plain | Aggregated::Corrupt(_) => {
                user_index.push(None);
                rows.push(row as u32);
                out_keys.push(keys.value(row).to_string());
                out_data.push(bytes.to_vec());
                sub_sequence_numbers.push(None);
            }
        }
    }
    let schema = stored.schema();
    let user_fields: Vec<arrow::datatypes::FieldRef> =
        schema.fields().iter().skip(system).cloned().collect();
    let user_schema = Arc::new(arrow::datatypes::Schema::new(user_fields));
    let refs: Vec<&[u8]> = user_rows.iter().map(|&i| out_data[i].as_slice()).collect();
    let decoded = crate::format::decode(format, &user_schema, &refs)?;
    let take = UInt32Array::from(rows.clone());
    let mut columns: Vec<ArrayRef> = vec![
        arrow::compute::take(stored.column(0), &take, None)?,
        arrow::compute::take(stored.column(1), &take, None)?,
        Arc::new(StringArray::from(out_keys)),
        Arc::new(BinaryArray::from_iter_values(out_data.iter())),
    ];
    // Each user column: the stored value for an ordinary record, the decoded one for a user
    // record.
    let picks: Vec<(usize, usize)> = rows
        .iter()
        .zip(&user_index)
        .map(|(&row, user)| match user {
            Some(i) => (1, *i),
            None => (0, row as usize),
        })
        .collect();
    for (c, decoded_column) in decoded.columns.iter().enumerate() {
        let original = stored.column(system + c);
        columns.push(arrow::compute::interleave(
            &[original.as_ref(), decoded_column.as_ref()],
            &picks,
        )?);
    }
    Ok(Some((
        arrow::array::RecordBatch::try_new(schema, columns)?,
        Int64Array::from(sub_sequence_numbers),
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_with_shared_keys() {
        let record = aggregate(&[("a", b"1"), ("b", b"2"), ("a", b"3")]);
        let Aggregated::Records(records) = Aggregated::parse(&record) else {
            panic!("not parsed");
        };
        let keys: Vec<&str> = records.iter().map(|r| r.partition_key.as_str()).collect();
        assert_eq!(keys, ["a", "b", "a"]);
        assert_eq!(records[2].data, b"3");
        assert_eq!(records[2].sub_sequence_number, 2);
    }

    #[test]
    fn plain_and_corrupt_records_are_told_apart() {
        assert_eq!(Aggregated::parse(b"{\"a\":1}"), Aggregated::Plain);
        // Too short to hold a digest: plain, even with the magic.
        assert_eq!(Aggregated::parse(&MAGIC), Aggregated::Plain);
        let mut record = aggregate(&[("a", b"payload")]);
        let last = record.len() - 1;
        record[last] ^= 1;
        let Aggregated::Corrupt(reason) = Aggregated::parse(&record) else {
            panic!("a bad digest is corrupt");
        };
        assert!(reason.contains("MD5"), "{reason}");
        // A digest that matches a body that is not an AggregatedRecord.
        let body = [0xFFu8, 0xFF, 0xFF];
        let mut bogus = MAGIC.to_vec();
        bogus.extend_from_slice(&body);
        bogus.extend_from_slice(Md5::digest(body).as_slice());
        assert!(matches!(Aggregated::parse(&bogus), Aggregated::Corrupt(_)));
    }

    #[test]
    fn a_partition_key_index_out_of_the_table_is_corrupt() {
        let message = AggregatedRecord {
            partition_key_table: vec!["a".into()],
            explicit_hash_key_table: vec![],
            records: vec![UserRecordMessage {
                partition_key_index: 3,
                explicit_hash_key_index: None,
                data: b"x".to_vec(),
            }],
        };
        let body = message.encode_to_vec();
        let mut record = MAGIC.to_vec();
        record.extend_from_slice(&body);
        record.extend_from_slice(Md5::digest(&body).as_slice());
        let Aggregated::Corrupt(reason) = Aggregated::parse(&record) else {
            panic!("corrupt");
        };
        assert!(
            reason.contains("partition key 3 of a table of 1"),
            "{reason}"
        );
    }
}
