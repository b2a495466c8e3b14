//! Segment files: sealed batches of one shard, persisted as Arrow IPC files.
//!
//! A segment is named by the first and last sequence counter it holds
//! (`00000000000000000001-00000000000000016384.arrow`) so a shard's folder lists in order and
//! recovery knows each segment's range before opening it. Segments are written to a temporary
//! name, synced, then renamed into place, so a crash leaves either a whole segment or none.
//! The file's footer also records how many rows it holds and when its newest record arrived
//! ([`read_segment_header`]), so opening a shard reads footers, not whole segments.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::buffer::Buffer;
use arrow::datatypes::SchemaRef;
use arrow_ipc::reader::{FileDecoder, FileReader, read_footer_length};
use arrow_ipc::writer::FileWriter;

use crate::Durability;
use crate::error::{Error, Result};

/// The file name of a segment holding counters `first..=last`.
pub fn segment_file_name(first: u64, last: u64) -> String {
    format!("{first:020}-{last:020}.arrow")
}

/// Parses a segment file name back into its counter range.
pub fn parse_segment_file_name(name: &str) -> Option<(u64, u64)> {
    let stem = name.strip_suffix(".arrow")?;
    let (first, last) = stem.split_once('-')?;
    Some((first.parse().ok()?, last.parse().ok()?))
}

/// Footer keys: how many rows a segment holds, and the newest arrival time among them.
const ROWS_KEY: &str = "sluice.rows";
const MAX_ARRIVAL_KEY: &str = "sluice.max_arrival_ms";
/// When its newest record was appended, what retention counts from (absent in segments written
/// before it was kept: their newest arrival time stands in).
const APPENDED_KEY: &str = "sluice.appended_ms";
/// `<bytes>:<crc32>`: the checksum of the file's first `bytes` bytes (everything before the
/// footer), checked whenever the segment is read.
const CHECKSUM_KEY: &str = "sluice.crc32";

/// Writes `batch` (whose newest record arrived at `max_arrival_ms` and was appended at
/// `appended_ms`) as a segment in `dir`; returns its path. On failure (a full disk, say) nothing
/// is left behind under either name.
pub fn write_segment(
    dir: &Path,
    first: u64,
    last: u64,
    batch: &RecordBatch,
    (max_arrival_ms, appended_ms): (i64, i64),
    durability: Durability,
) -> Result<PathBuf> {
    let path = dir.join(segment_file_name(first, last));
    let tmp = dir.join(format!("{}.tmp", segment_file_name(first, last)));
    let written = write_segment_file(&tmp, batch, (max_arrival_ms, appended_ms), durability)
        .and_then(|_| {
            fs::rename(&tmp, &path).map_err(|e| Error::io("renaming segment into place", &path, e))
        })
        .and_then(|_| match durability {
            Durability::Fsync => sync_dir(dir),
            Durability::Buffered => Ok(()),
        });
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(path)
}

fn write_segment_file(
    tmp: &Path,
    batch: &RecordBatch,
    (max_arrival_ms, appended_ms): (i64, i64),
    durability: Durability,
) -> Result<()> {
    // Encoded in memory first, so the checksum of everything before the footer can go into it.
    let mut writer = FileWriter::try_new(
        Vec::with_capacity(batch.get_array_memory_size() + 4096),
        &batch.schema(),
    )?;
    writer.write_metadata(ROWS_KEY, batch.num_rows().to_string());
    writer.write_metadata(MAX_ARRIVAL_KEY, max_arrival_ms.to_string());
    writer.write_metadata(APPENDED_KEY, appended_ms.to_string());
    writer.write(batch)?;
    let data = writer.get_ref();
    writer.write_metadata(
        CHECKSUM_KEY,
        format!("{}:{}", data.len(), crc32fast::hash(data)),
    );
    writer.finish()?;
    let bytes = writer.into_inner()?;
    let mut file = File::create(tmp).map_err(|e| Error::io("creating segment", tmp, e))?;
    file.write_all(&bytes)
        .map_err(|e| Error::io("writing segment", tmp, e))?;
    if durability == Durability::Fsync {
        file.sync_all()
            .map_err(|e| Error::io("syncing segment", tmp, e))?;
    }
    Ok(())
}

/// What a segment's footer says, and how large its file is.
#[derive(Debug, Clone, PartialEq)]
pub struct SegmentHeader {
    /// The columns it was written with.
    pub columns: SchemaRef,
    /// Its row count, newest arrival time and when that was appended (segments written since
    /// footers carry them).
    pub summary: Option<(usize, i64, i64)>,
    pub file_bytes: u64,
}

/// Reads a segment's footer (no record data).
pub fn read_segment_header(path: &Path) -> Result<SegmentHeader> {
    let file = File::open(path).map_err(|e| Error::io("opening segment", path, e))?;
    let file_bytes = file
        .metadata()
        .map_err(|e| Error::io("reading segment size", path, e))?
        .len();
    let corrupt = |reason: String| Error::Corrupt {
        what: "segment",
        path: path.to_path_buf(),
        reason,
    };
    let reader = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        FileReader::try_new(file, None)
    }))
    .map_err(|_| corrupt("the Arrow IPC decoder failed on its footer".to_string()))?
    .map_err(|e| corrupt(e.to_string()))?;
    let metadata = reader.custom_metadata();
    let number = |key: &str| metadata.get(key).and_then(|v| v.parse::<i64>().ok());
    let summary = number(ROWS_KEY)
        .zip(number(MAX_ARRIVAL_KEY))
        .map(|(rows, max_arrival)| {
            let appended = number(APPENDED_KEY).unwrap_or(max_arrival);
            (rows as usize, max_arrival, appended)
        });
    Ok(SegmentHeader {
        columns: reader.schema(),
        summary,
        file_bytes,
    })
}

/// Reads a segment back as one batch in `schema`.
pub fn read_segment(path: &Path, schema: &SchemaRef) -> Result<RecordBatch> {
    let (found, batch) = read_segment_as_written(path)?;
    if found.fields() != schema.fields() {
        return Err(Error::Corrupt {
            what: "segment",
            path: path.to_path_buf(),
            reason: format!(
                "its columns {:?} do not match the stream's {:?}",
                found.fields(),
                schema.fields()
            ),
        });
    }
    Ok(batch)
}

/// Reads a segment with whatever columns it was written with (one batch, and its schema).
///
/// The file is read whole in one call into a buffer the batch then points into: no zeroed
/// buffer to read into and no copy after the read (what `FileReader` would cost).
pub fn read_segment_as_written(path: &Path) -> Result<(SchemaRef, RecordBatch)> {
    let bytes = fs::read(path).map_err(|e| Error::io("reading segment", path, e))?;
    let buffer = Buffer::from_vec(bytes);
    // The checksum catches damage first; arrow's decoder can still panic on a damaged file
    // written before segments had one, which must not take the server down either.
    let decoded =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| decode_ipc_file(&buffer)))
            .unwrap_or_else(|_| Err("the Arrow IPC decoder failed on it".to_string()));
    decoded.map_err(|reason| Error::Corrupt {
        what: "segment",
        path: path.to_path_buf(),
        reason,
    })
}

/// The schema and the batches (concatenated if more than one) of an Arrow IPC file held in
/// `file`; every length and offset is checked before it is used.
fn decode_ipc_file(file: &Buffer) -> std::result::Result<(SchemaRef, RecordBatch), String> {
    const TRAILER: usize = 10;
    let trailer_start = file
        .len()
        .checked_sub(TRAILER)
        .ok_or("too short to be an Arrow IPC file")?;
    let trailer: [u8; TRAILER] = file[trailer_start..]
        .try_into()
        .map_err(|_| "the file's trailer is cut short")?;
    let footer_len = read_footer_length(trailer).map_err(|e| e.to_string())?;
    let footer_start = trailer_start
        .checked_sub(footer_len)
        .ok_or("its footer runs past the start of the file")?;
    let footer = arrow_ipc::root_as_footer(&file[footer_start..trailer_start])
        .map_err(|e| format!("unreadable footer: {e}"))?;
    let checksum = footer
        .custom_metadata()
        .into_iter()
        .flatten()
        .find(|kv| kv.key() == Some(CHECKSUM_KEY))
        .and_then(|kv| kv.value());
    // Segments written before they carried a checksum are read without one.
    if let Some(checksum) = checksum {
        let (len, crc) = checksum
            .split_once(':')
            .and_then(|(len, crc)| Some((len.parse::<usize>().ok()?, crc.parse::<u32>().ok()?)))
            .ok_or_else(|| format!("unreadable checksum {checksum:?}"))?;
        if len > footer_start {
            return Err(format!("its checksum covers {len} bytes, past its data"));
        }
        let found = crc32fast::hash(&file[..len]);
        if found != crc {
            return Err(format!(
                "checksum mismatch: its data has crc32 {found}, it was written with {crc}"
            ));
        }
    }
    let schema = Arc::new(arrow_ipc::convert::fb_to_schema(
        footer.schema().ok_or("the footer has no schema")?,
    ));
    let block_bytes = |block: &arrow_ipc::Block| {
        let offset = usize::try_from(block.offset()).map_err(|_| "a negative block offset")?;
        let len = usize::try_from(block.metaDataLength()).map_err(|_| "a negative length")?
            + usize::try_from(block.bodyLength()).map_err(|_| "a negative length")?;
        if offset.checked_add(len).is_none_or(|end| end > footer_start) {
            return Err(format!(
                "a block at byte {offset} of {len} bytes runs past the data"
            ));
        }
        Ok::<_, String>(file.slice_with_length(offset, len))
    };
    let mut decoder = FileDecoder::new(Arc::clone(&schema), footer.version());
    for block in footer.dictionaries().iter().flatten() {
        decoder
            .read_dictionary(block, &block_bytes(block)?)
            .map_err(|e| e.to_string())?;
    }
    let mut batches = Vec::new();
    for block in footer.recordBatches().iter().flatten() {
        let batch = decoder
            .read_record_batch(block, &block_bytes(block)?)
            .map_err(|e| e.to_string())?
            .ok_or("a record batch block holds no batch")?;
        batches.push(batch);
    }
    // Sluice writes one batch per segment: taken as read, without copying it again.
    let batch = if batches.len() == 1 {
        batches.swap_remove(0)
    } else {
        arrow::compute::concat_batches(&schema, &batches).map_err(|e| e.to_string())?
    };
    Ok((schema, batch))
}

/// The segments in a shard's folder, in order, after clearing what a crash can leave behind:
/// unfinished segments (`.tmp`), and the parts of a merged segment when the crash came between
/// writing it and deleting them (a segment lying inside another). Segments that overlap only
/// partly are damage, reported by name.
pub fn list_segments(dir: &Path) -> Result<Vec<(u64, u64, PathBuf)>> {
    let mut segments = Vec::new();
    let entries = fs::read_dir(dir).map_err(|e| Error::io("listing segments", dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io("listing segments", dir, e))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.ends_with(".tmp") {
            let path = entry.path();
            fs::remove_file(&path)
                .map_err(|e| Error::io("removing unfinished segment", &path, e))?;
        } else if let Some((first, last)) = parse_segment_file_name(&name) {
            segments.push((first, last, entry.path()));
        }
    }
    // By first counter, the widest first, so a merged segment comes before its parts.
    segments.sort_by_key(|(first, last, _)| (*first, std::cmp::Reverse(*last)));
    let mut kept: Vec<(u64, u64, PathBuf)> = Vec::with_capacity(segments.len());
    for (first, last, path) in segments {
        match kept.last() {
            Some((_, kept_last, _)) if last <= *kept_last => {
                fs::remove_file(&path)
                    .map_err(|e| Error::io("removing a segment merged into another", &path, e))?;
            }
            Some((_, kept_last, kept_path)) if first <= *kept_last => {
                return Err(Error::Corrupt {
                    what: "segment",
                    path,
                    reason: format!(
                        "its records overlap those of {} (and neither holds the other)",
                        kept_path.display()
                    ),
                });
            }
            _ => kept.push((first, last, path)),
        }
    }
    Ok(kept)
}

/// Syncs a directory so a file created or renamed in it survives a crash.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io("syncing folder", dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{ArrayRef, Int64Array};
    use arrow::datatypes::{DataType, Field, Schema};
    use std::sync::Arc;

    #[test]
    fn segments_round_trip_and_list_in_order() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| Error::io("tempdir", "/tmp", e))?;
        let schema = Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, false)]));
        let batch = |v: Vec<i64>| {
            RecordBatch::try_new(
                Arc::clone(&schema),
                vec![Arc::new(Int64Array::from(v)) as ArrayRef],
            )
        };
        write_segment(
            dir.path(),
            11,
            12,
            &batch(vec![3, 4])?,
            (5, 7),
            Durability::Fsync,
        )?;
        write_segment(
            dir.path(),
            1,
            10,
            &batch(vec![1, 2])?,
            (4, 4),
            Durability::Fsync,
        )?;
        fs::write(dir.path().join("x.arrow.tmp"), b"junk")
            .map_err(|e| Error::io("w", dir.path(), e))?;
        let listed = list_segments(dir.path())?;
        assert_eq!(
            listed.iter().map(|(f, l, _)| (*f, *l)).collect::<Vec<_>>(),
            vec![(1, 10), (11, 12)]
        );
        let read = read_segment(&listed[1].2, &schema)?;
        assert_eq!(read, batch(vec![3, 4])?);
        let header = read_segment_header(&listed[1].2)?;
        assert_eq!((header.columns, header.summary), (schema, Some((2, 5, 7))));
        assert!(!dir.path().join("x.arrow.tmp").exists());
        Ok(())
    }

    #[test]
    fn a_segment_cut_at_any_byte_or_with_any_byte_changed_is_an_error_not_a_panic()
    -> std::result::Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir().map_err(|e| Error::io("tempdir", "/tmp", e))?;
        let schema = Arc::new(Schema::new(vec![
            Field::new("x", DataType::Int64, false),
            Field::new("s", DataType::Utf8, false),
        ]));
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                Arc::new(Int64Array::from(vec![1, 2, 3])) as ArrayRef,
                Arc::new(arrow::array::StringArray::from(vec!["a", "bb", "ccc"])) as ArrayRef,
            ],
        )?;
        let path = write_segment(dir.path(), 1, 3, &batch, (9, 9), Durability::Buffered)?;
        let whole = fs::read(&path).map_err(|e| Error::io("r", &path, e))?;
        assert_eq!(read_segment(&path, &schema)?, batch);
        let damaged = dir.path().join(segment_file_name(4, 6));
        let check = |bytes: &[u8]| -> Result<()> {
            fs::write(&damaged, bytes).map_err(|e| Error::io("w", &damaged, e))?;
            if let Err(e) = read_segment(&damaged, &schema) {
                assert!(e.to_string().contains("-00000000000000000006.arrow"), "{e}");
            }
            Ok(())
        };
        for len in 0..whole.len() {
            check(&whole[..len])?;
            assert!(read_segment(&damaged, &schema).is_err(), "cut at {len}");
        }
        // Every byte before the footer (and its end-of-stream marker) is under the checksum.
        let footer_len = i32::from_le_bytes(whole[whole.len() - 10..whole.len() - 6].try_into()?);
        let covered = whole.len() - 10 - footer_len as usize - 8;
        for at in 0..whole.len() {
            let mut bytes = whole.clone();
            bytes[at] ^= 0x5a;
            check(&bytes)?;
            if at < covered {
                let message = read_segment(&damaged, &schema)
                    .err()
                    .map(|e| e.to_string())
                    .unwrap_or_default();
                assert!(
                    message.contains("checksum mismatch"),
                    "byte {at}: {message}"
                );
            }
        }
        Ok(())
    }

    #[test]
    fn a_damaged_segment_is_reported_by_name() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| Error::io("tempdir", "/tmp", e))?;
        let path = dir.path().join(segment_file_name(1, 2));
        fs::write(&path, b"ARROW1 but not really").map_err(|e| Error::io("w", &path, e))?;
        let schema = Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, false)]));
        let message = read_segment(&path, &schema)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            message.contains("00000000000000000001-00000000000000000002.arrow"),
            "{message}"
        );
        Ok(())
    }
}
