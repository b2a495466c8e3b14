//! Segment files: sealed batches of one shard, persisted as Arrow IPC files.
//!
//! A segment is named by the first and last sequence counter it holds
//! (`00000000000000000001-00000000000000016384.arrow`) so a shard's folder lists in order and
//! recovery knows each segment's range before opening it. Segments are written to a temporary
//! name, synced, then renamed into place, so a crash leaves either a whole segment or none.
//! The file's footer also records how many rows it holds and when its newest record arrived
//! ([`read_segment_header`]), so opening a shard reads footers, not whole segments.

use std::fs::{self, File};
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use arrow_ipc::reader::FileReader;
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

/// Writes `batch` (whose newest record arrived at `max_arrival_ms`) as a segment in `dir`;
/// returns its path. On failure (a full disk, say) nothing is left behind under either name.
pub fn write_segment(
    dir: &Path,
    first: u64,
    last: u64,
    batch: &RecordBatch,
    max_arrival_ms: i64,
    durability: Durability,
) -> Result<PathBuf> {
    let path = dir.join(segment_file_name(first, last));
    let tmp = dir.join(format!("{}.tmp", segment_file_name(first, last)));
    let written = write_segment_file(&tmp, batch, max_arrival_ms, durability)
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
    max_arrival_ms: i64,
    durability: Durability,
) -> Result<()> {
    let file = File::create(tmp).map_err(|e| Error::io("creating segment", tmp, e))?;
    let io = |e: arrow::error::ArrowError| match e {
        arrow::error::ArrowError::IoError(_, e) => Error::io("writing segment", tmp, e),
        other => Error::Arrow(other),
    };
    let mut writer = FileWriter::try_new(BufWriter::new(file), &batch.schema()).map_err(io)?;
    writer.write_metadata(ROWS_KEY, batch.num_rows().to_string());
    writer.write_metadata(MAX_ARRIVAL_KEY, max_arrival_ms.to_string());
    writer.write(batch).map_err(io)?;
    writer.finish().map_err(io)?;
    let file = writer
        .into_inner()
        .map_err(io)?
        .into_inner()
        .map_err(|e| Error::io("writing segment", tmp, e.into_error()))?;
    if durability == Durability::Fsync {
        file.sync_all()
            .map_err(|e| Error::io("syncing segment", tmp, e))?;
    }
    Ok(())
}

/// What a segment's footer says: the columns it was written with and, for segments written
/// since footers carry them, its row count and newest arrival time. Reads no record data.
pub fn read_segment_header(path: &Path) -> Result<(SchemaRef, Option<(usize, i64)>)> {
    let file = File::open(path).map_err(|e| Error::io("opening segment", path, e))?;
    let reader = FileReader::try_new(file, None).map_err(|e| Error::Corrupt {
        what: "segment",
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let metadata = reader.custom_metadata();
    let number = |key: &str| metadata.get(key).and_then(|v| v.parse::<i64>().ok());
    let summary = number(ROWS_KEY)
        .zip(number(MAX_ARRIVAL_KEY))
        .map(|(rows, max_arrival)| (rows as usize, max_arrival));
    Ok((reader.schema(), summary))
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
pub fn read_segment_as_written(path: &Path) -> Result<(SchemaRef, RecordBatch)> {
    let corrupt = |reason: String| Error::Corrupt {
        what: "segment",
        path: path.to_path_buf(),
        reason,
    };
    let file = File::open(path).map_err(|e| Error::io("opening segment", path, e))?;
    let reader = FileReader::try_new(file, None).map_err(|e| corrupt(e.to_string()))?;
    let schema = reader.schema();
    let mut batches = reader
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| corrupt(e.to_string()))?;
    // Sluice writes one batch per segment: taken as read, without copying it again.
    let batch = if batches.len() == 1 {
        batches.swap_remove(0)
    } else {
        arrow::compute::concat_batches(&schema, &batches).map_err(|e| corrupt(e.to_string()))?
    };
    Ok((schema, batch))
}

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
    segments.sort_by_key(|(first, _, _)| *first);
    Ok(segments)
}

/// Segments (as listed, in order) without those lying inside another: a merged segment and the
/// parts it replaced, when a crash came between writing the one and deleting the others. The
/// parts are deleted. Segments that overlap only partly are damage, reported by name.
pub fn without_merged_parts(
    segments: Vec<(u64, u64, PathBuf)>,
) -> Result<Vec<(u64, u64, PathBuf)>> {
    let mut segments = segments;
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
            5,
            Durability::Fsync,
        )?;
        write_segment(dir.path(), 1, 10, &batch(vec![1, 2])?, 4, Durability::Fsync)?;
        fs::write(dir.path().join("x.arrow.tmp"), b"junk")
            .map_err(|e| Error::io("w", dir.path(), e))?;
        let listed = list_segments(dir.path())?;
        assert_eq!(
            listed.iter().map(|(f, l, _)| (*f, *l)).collect::<Vec<_>>(),
            vec![(1, 10), (11, 12)]
        );
        let read = read_segment(&listed[1].2, &schema)?;
        assert_eq!(read, batch(vec![3, 4])?);
        let (columns, summary) = read_segment_header(&listed[1].2)?;
        assert_eq!((columns, summary), (schema, Some((2, 5))));
        assert!(!dir.path().join("x.arrow.tmp").exists());
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
