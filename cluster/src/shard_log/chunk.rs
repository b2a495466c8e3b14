//! One chunk of a shard's log in object storage: the records of one group commit, as an Arrow
//! IPC file (`seq`, `arrival_ms`, `partition_key`, `data`), named so that listing a shard's
//! folder gives its chunks in sequence order and says which owner wrote each:
//! `{prefix}/{stream}/{shard:06}/{first_seq:020}-{epoch:020}.arrow`.
//!
//! The file's footer also carries, as of the end of the chunk, the last batch the shard took
//! from each writer that sends its batches once only ([`Producers`], under
//! [`PRODUCERS_KEY`]), so whoever opens the log next knows them.

use std::collections::BTreeMap;

use std::sync::{Arc, LazyLock};

use arrow::array::{BinaryArray, Int64Array, RecordBatch, StringArray, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::ipc::reader::FileReader;
use arrow::ipc::writer::FileWriter;
use object_store::path::Path;

use crate::keys::ShardKey;

/// For each writer that sends numbered batches once only (a pump), the number of the last
/// batch the shard took from it.
pub type Producers = BTreeMap<String, u64>;

/// The key in a chunk's footer under which its [`Producers`] are kept, as JSON.
pub const PRODUCERS_KEY: &str = "sluice.producers";

/// A chunk as read back: its records, and the producers' last batches as of its end.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Chunk {
    pub records: Vec<LogRecord>,
    pub producers: Producers,
}

/// A record as the shard's log keeps it: numbered, timed, with its partition key and blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord {
    pub seq: u64,
    pub arrival_ms: i64,
    pub partition_key: String,
    pub data: Vec<u8>,
}

static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("seq", DataType::UInt64, false),
        Field::new("arrival_ms", DataType::Int64, false),
        Field::new("partition_key", DataType::Utf8, false),
        Field::new("data", DataType::Binary, false),
    ]))
});

/// Where a shard's chunks live: `{prefix}/{stream}/{shard:06}/`.
pub fn shard_folder(prefix: &Path, shard: &ShardKey) -> Path {
    let mut path = prefix.clone();
    for part in shard.stream.split('/') {
        path = path.join(part);
    }
    path.join(format!("{:06}", shard.shard).as_str())
}

/// A chunk's name in its shard's folder.
pub fn chunk_path(folder: &Path, first_seq: u64, epoch: i64) -> Path {
    folder
        .clone()
        .join(format!("{first_seq:020}-{epoch:020}.arrow").as_str())
}

/// The first sequence number and epoch a chunk's name carries, if it is a chunk's name.
pub fn parse_chunk_name(name: &str) -> Option<(u64, i64)> {
    let stem = name.strip_suffix(".arrow")?;
    let (first, epoch) = stem.split_once('-')?;
    Some((first.parse().ok()?, epoch.parse().ok()?))
}

pub fn encode(
    records: &[LogRecord],
    producers: &Producers,
) -> Result<Vec<u8>, arrow::error::ArrowError> {
    let batch = RecordBatch::try_new(
        SCHEMA.clone(),
        vec![
            Arc::new(UInt64Array::from_iter_values(records.iter().map(|r| r.seq))),
            Arc::new(Int64Array::from_iter_values(
                records.iter().map(|r| r.arrival_ms),
            )),
            Arc::new(StringArray::from_iter_values(
                records.iter().map(|r| r.partition_key.as_str()),
            )),
            Arc::new(BinaryArray::from_iter_values(
                records.iter().map(|r| r.data.as_slice()),
            )),
        ],
    )?;
    let mut footer = Vec::new();
    if !producers.is_empty() {
        let json = serde_json::to_string(producers)
            .map_err(|e| arrow::error::ArrowError::ExternalError(Box::new(e)))?;
        footer.push((PRODUCERS_KEY, json));
    }
    write_file(&batch, footer)
}

/// An Arrow IPC file holding `batch`, with `footer` (key, value) pairs in its footer.
pub(crate) fn write_file(
    batch: &RecordBatch,
    footer: Vec<(&str, String)>,
) -> Result<Vec<u8>, arrow::error::ArrowError> {
    let mut writer = FileWriter::try_new(Vec::new(), &batch.schema())?;
    for (key, value) in footer {
        writer.write_metadata(key, value);
    }
    writer.write(batch)?;
    writer.into_inner()
}

/// The batches of an Arrow IPC file whose columns must be `schema`, and its footer.
pub(crate) fn read_file(
    bytes: bytes::Bytes,
    schema: &SchemaRef,
) -> Result<(Vec<RecordBatch>, std::collections::HashMap<String, String>), String> {
    let reader = FileReader::try_new(std::io::Cursor::new(bytes), None)
        .map_err(|e| format!("not an Arrow IPC file: {e}"))?;
    if reader.schema() != *schema {
        return Err(format!("unexpected columns {:?}", reader.schema()));
    }
    let footer = reader.custom_metadata().clone();
    let batches = reader
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    Ok((batches, footer))
}

pub fn decode(bytes: bytes::Bytes) -> Result<Chunk, String> {
    let (batches, footer) = read_file(bytes, &SCHEMA)?;
    let producers = match footer.get(PRODUCERS_KEY) {
        Some(json) => serde_json::from_str(json)
            .map_err(|e| format!("its writers' batch numbers cannot be read: {e}"))?,
        None => Producers::new(),
    };
    let mut records = Vec::new();
    for batch in batches {
        let column = |i: usize| batch.column(i).as_ref();
        let (Some(seq), Some(arrival), Some(keys), Some(data)) = (
            column(0).as_any().downcast_ref::<UInt64Array>(),
            column(1).as_any().downcast_ref::<Int64Array>(),
            column(2).as_any().downcast_ref::<StringArray>(),
            column(3).as_any().downcast_ref::<BinaryArray>(),
        ) else {
            return Err("columns of the wrong types".into());
        };
        for row in 0..batch.num_rows() {
            records.push(LogRecord {
                seq: seq.value(row),
                arrival_ms: arrival.value(row),
                partition_key: keys.value(row).to_string(),
                data: data.value(row).to_vec(),
            });
        }
    }
    Ok(Chunk { records, producers })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_round_trip_and_names_sort_by_sequence() -> Result<(), Box<dyn std::error::Error>> {
        let records = vec![
            LogRecord {
                seq: 7,
                arrival_ms: 1_700_000_000_000,
                partition_key: "k".into(),
                data: b"{\"a\":1}".to_vec(),
            },
            LogRecord {
                seq: 8,
                arrival_ms: 1_700_000_000_001,
                partition_key: "ключ".into(),
                data: vec![0, 255],
            },
        ];
        assert_eq!(
            decode(encode(&records, &Producers::new())?.into())?,
            Chunk {
                records: records.clone(),
                producers: Producers::new()
            }
        );
        let producers = Producers::from([("pump-a".to_string(), 41), ("pump-b".to_string(), 7)]);
        assert_eq!(
            decode(encode(&records, &producers)?.into())?.producers,
            producers
        );
        let folder = shard_folder(&Path::from("sluice/prod"), &ShardKey::new("orders", 3));
        let a = chunk_path(&folder, 9, 20);
        let b = chunk_path(&folder, 10, 5);
        assert_eq!(
            a.as_ref(),
            "sluice/prod/orders/000003/00000000000000000009-00000000000000000020.arrow"
        );
        assert!(a.as_ref() < b.as_ref());
        assert_eq!(
            parse_chunk_name(a.filename().unwrap_or_default()),
            Some((9, 20))
        );
        assert_eq!(parse_chunk_name("manifest.json"), None);
        assert!(decode(bytes::Bytes::from_static(b"garbage")).is_err());
        Ok(())
    }
}
