//! The write-ahead log: what makes an acknowledged record durable before it is sealed.
//!
//! Each stream has its own log, a folder of numbered files. One append call becomes one *frame*
//! (`[payload length u32][crc32 of payload u32][payload]`, little-endian) holding every record of
//! the call with the shard, sequence number and arrival time already assigned, so replay rebuilds
//! exactly what was acknowledged. A frame is all or nothing: recovery stops at the first frame
//! whose length runs past the end of the file or whose checksum does not match, truncates the
//! last file there (a torn write that was never acknowledged), and refuses to guess about damage
//! anywhere else.
//!
//! Once every record of a file is in sealed segments, the file is deleted.
//!
//! # Group commit
//!
//! Writing a frame and making it durable are separate steps: [`WriteAheadLog::write`] hands the
//! frame to the operating system under the stream's append lock and returns its [`WalPosition`];
//! [`GroupCommit::wait`] then returns once an `fsync` covering that position has completed, and
//! is called after the lock is released. Writers that arrive while one `fsync` runs wait for the
//! next, which covers all of them: one `fsync` per group of concurrent appends instead of one per
//! append. A frame written to the operating system survives the process being killed; only an
//! acknowledged one (synced) is promised to survive the machine losing power.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::{Condvar, Mutex};

use crate::Durability;
use crate::error::{Error, Result};

/// Rotate to a new log file once the current one holds this many bytes.
const ROTATE_BYTES: u64 = 64 * 1024 * 1024;
const HEADER: usize = 8;

/// One record as the log stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalRecord {
    pub shard: u32,
    pub seq: u64,
    pub arrival_ms: i64,
    pub partition_key: String,
    pub data: Vec<u8>,
}

/// A borrowed record to log.
#[derive(Debug, Clone, Copy)]
pub struct WalEntry<'a> {
    pub shard: u32,
    pub seq: u64,
    pub arrival_ms: i64,
    pub partition_key: &'a str,
    pub data: &'a [u8],
}

#[derive(Debug)]
struct LogFile {
    generation: u64,
    path: PathBuf,
    /// The highest sequence number logged in this file, per shard.
    max_seq: HashMap<u32, u64>,
}

/// What recovery found in a stream's log.
#[derive(Debug, Default)]
pub struct WalReplay {
    /// Every record of every intact frame, in log order.
    pub records: Vec<WalRecord>,
    /// Bytes cut from the end of the last file (a torn, unacknowledged write), if any.
    pub truncated_bytes: u64,
}

/// The appending side of a stream's log.
#[derive(Debug)]
pub struct WriteAheadLog {
    dir: PathBuf,
    durability: Durability,
    files: Vec<LogFile>,
    current: Arc<File>,
    current_size: u64,
    /// A failed write left part of a frame that could not be cut off yet: no frame may follow
    /// it until it is.
    torn: bool,
    /// Bytes written over the log's life (this process): frames' positions.
    written: u64,
    group: Arc<GroupCommit>,
}

/// Where a frame ends in the log: durable once an `fsync` has covered it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct WalPosition(u64);

/// Batches the `fsync`s of concurrent writers (see the module docs).
#[derive(Debug)]
pub struct GroupCommit {
    durability: Durability,
    state: Mutex<SyncState>,
    synced: Condvar,
}

#[derive(Debug)]
struct SyncState {
    /// Everything up to here is durable.
    synced: u64,
    /// The newest position written, and the file holding it (earlier files were synced when
    /// the log moved past them, so syncing this one covers everything up to it).
    latest: u64,
    file: Arc<File>,
    path: PathBuf,
    /// A writer is running an `fsync` now; the others wait for it.
    syncing: bool,
    /// `fsync`s run so far.
    syncs: u64,
}

impl GroupCommit {
    fn new(durability: Durability, file: Arc<File>, path: PathBuf) -> Self {
        Self {
            durability,
            state: Mutex::new(SyncState {
                synced: 0,
                latest: 0,
                file,
                path,
                syncing: false,
                syncs: 0,
            }),
            synced: Condvar::new(),
        }
    }

    fn published(&self, position: u64, file: &Arc<File>, path: &Path) {
        let mut state = self.state.lock();
        state.latest = position;
        if !Arc::ptr_eq(&state.file, file) {
            state.file = Arc::clone(file);
            state.path = path.to_path_buf();
        }
    }

    /// How many `fsync`s group commit has run: fewer than appends when writers overlap.
    pub fn syncs(&self) -> u64 {
        self.state.lock().syncs
    }

    /// Returns once everything up to `position` is durable (at once unless the durability is
    /// `fsync`). The first writer to find no `fsync` running runs one for everyone waiting.
    pub fn wait(&self, position: WalPosition) -> Result<()> {
        if self.durability != Durability::Fsync {
            return Ok(());
        }
        let mut state = self.state.lock();
        loop {
            if state.synced >= position.0 {
                return Ok(());
            }
            if state.syncing {
                self.synced.wait(&mut state);
                continue;
            }
            state.syncing = true;
            let (target, file, path) = (state.latest, Arc::clone(&state.file), state.path.clone());
            drop(state);
            let result = file.sync_data();
            state = self.state.lock();
            state.syncing = false;
            state.syncs += 1;
            if result.is_ok() {
                state.synced = state.synced.max(target);
            }
            self.synced.notify_all();
            result.map_err(|e| Error::io("syncing write-ahead log", &path, e))?;
        }
    }
}

fn log_path(dir: &Path, generation: u64) -> PathBuf {
    dir.join(format!("{generation:020}.wal"))
}

fn list_generations(dir: &Path) -> Result<Vec<u64>> {
    let mut generations = Vec::new();
    let entries = fs::read_dir(dir).map_err(|e| Error::io("listing write-ahead log", dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io("listing write-ahead log", dir, e))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if let Some(stem) = name.strip_suffix(".wal")
            && let Ok(generation) = stem.parse::<u64>()
        {
            generations.push(generation);
        }
    }
    generations.sort_unstable();
    Ok(generations)
}

impl WriteAheadLog {
    /// Opens the log in `dir`, replaying what it holds. A torn tail of the last file is truncated;
    /// damage in an earlier file is an error that names the file.
    pub fn open(dir: &Path, durability: Durability) -> Result<(Self, WalReplay)> {
        fs::create_dir_all(dir).map_err(|e| Error::io("creating write-ahead log", dir, e))?;
        let generations = list_generations(dir)?;
        let mut replay = WalReplay::default();
        let mut files = Vec::new();
        for (i, &generation) in generations.iter().enumerate() {
            let path = log_path(dir, generation);
            let is_last = i + 1 == generations.len();
            let (records, good_len, file_len) = read_log_file(&path)?;
            if good_len < file_len {
                if !is_last {
                    return Err(Error::Corrupt {
                        what: "write-ahead log",
                        path,
                        reason: format!(
                            "damaged frame at byte {good_len} of {file_len} in a file that is not the last"
                        ),
                    });
                }
                let file = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(|e| Error::io("truncating torn write-ahead log", &path, e))?;
                file.set_len(good_len)
                    .and_then(|_| file.sync_all())
                    .map_err(|e| Error::io("truncating torn write-ahead log", &path, e))?;
                log::warn!(
                    "write-ahead log {}: cut {} bytes of a torn, unacknowledged write",
                    path.display(),
                    file_len - good_len
                );
                replay.truncated_bytes = file_len - good_len;
            }
            let mut max_seq = HashMap::new();
            for record in &records {
                let entry = max_seq.entry(record.shard).or_insert(record.seq);
                *entry = (*entry).max(record.seq);
            }
            files.push(LogFile {
                generation,
                path,
                max_seq,
            });
            replay.records.extend(records);
        }
        let generation = generations.last().map_or(1, |g| g + 1);
        let (current, path) = create_log_file(dir, generation, durability)?;
        let current = Arc::new(current);
        let group = Arc::new(GroupCommit::new(
            durability,
            Arc::clone(&current),
            path.clone(),
        ));
        files.push(LogFile {
            generation,
            path,
            max_seq: HashMap::new(),
        });
        Ok((
            Self {
                dir: dir.to_path_buf(),
                durability,
                files,
                current,
                current_size: 0,
                torn: false,
                written: 0,
                group,
            },
            replay,
        ))
    }

    /// The group commit that makes this log's writes durable.
    pub fn group_commit(&self) -> Arc<GroupCommit> {
        Arc::clone(&self.group)
    }

    /// Appends one frame holding `entries` and waits until it is as durable as the log's
    /// [`Durability`] promises. (Writers holding a lock use [`Self::write`] and wait after
    /// releasing it.)
    pub fn append(&mut self, entries: &[WalEntry<'_>]) -> Result<()> {
        let position = self.write(entries)?;
        self.group.wait(position)
    }

    /// Writes one frame holding `entries` to the operating system; durable once
    /// [`GroupCommit::wait`] returns for the position given back.
    pub fn write(&mut self, entries: &[WalEntry<'_>]) -> Result<WalPosition> {
        if entries.is_empty() {
            return Ok(WalPosition(self.written));
        }
        let payload_len: usize = 4 + entries
            .iter()
            .map(|e| 4 + 8 + 8 + 2 + e.partition_key.len() + 4 + e.data.len())
            .sum::<usize>();
        let mut frame = Vec::with_capacity(HEADER + payload_len);
        frame.extend_from_slice(&(payload_len as u32).to_le_bytes());
        frame.extend_from_slice(&[0; 4]);
        frame.extend_from_slice(&(entries.len() as u32).to_le_bytes());
        for e in entries {
            frame.extend_from_slice(&e.shard.to_le_bytes());
            frame.extend_from_slice(&e.seq.to_le_bytes());
            frame.extend_from_slice(&e.arrival_ms.to_le_bytes());
            frame.extend_from_slice(&(e.partition_key.len() as u16).to_le_bytes());
            frame.extend_from_slice(e.partition_key.as_bytes());
            frame.extend_from_slice(&(e.data.len() as u32).to_le_bytes());
            frame.extend_from_slice(e.data);
        }
        let crc = crc32fast::hash(&frame[HEADER..]);
        frame[4..8].copy_from_slice(&crc.to_le_bytes());

        let path = self.current_path().to_path_buf();
        if self.torn {
            self.cut_torn_frame(&path)?;
        }
        if let Err(e) = (&*self.current).write_all(&frame) {
            // A full disk can take part of a frame. Cut it off, or the next frame would land
            // after it and recovery would stop at the torn one, dropping acknowledged records.
            self.cut_torn_frame(&path)?;
            return Err(Error::io("appending to write-ahead log", &path, e));
        }
        self.current_size += frame.len() as u64;
        self.written += frame.len() as u64;
        self.group.published(self.written, &self.current, &path);
        let position = WalPosition(self.written);
        if let Some(file) = self.files.last_mut() {
            for e in entries {
                let max = file.max_seq.entry(e.shard).or_insert(e.seq);
                *max = (*max).max(e.seq);
            }
        }
        if self.current_size >= ROTATE_BYTES
            && let Err(e) = self.rotate()
        {
            // The frame is written; it must not be reported as failed (its sequence numbers
            // would be handed out again). The log keeps growing this file and tries again.
            log::warn!("write-ahead log {}: cannot rotate yet: {e}", path.display());
        }
        Ok(position)
    }

    /// Truncates the current file back to its last whole frame after a failed write.
    fn cut_torn_frame(&mut self, path: &Path) -> Result<()> {
        self.torn = true;
        self.current.set_len(self.current_size).map_err(|e| {
            Error::io(
                "cutting a partly written frame from the write-ahead log",
                path,
                e,
            )
        })?;
        self.torn = false;
        Ok(())
    }

    /// Deletes log files whose records are all sealed. `sealed_through(shard)` is the highest
    /// sequence number of the shard that is durable in a segment. If the current file is fully
    /// covered it is rotated first, so an idle stream's log shrinks to nothing.
    pub fn trim(&mut self, sealed_through: impl Fn(u32) -> u64) -> Result<()> {
        let covered = |file: &LogFile| {
            file.max_seq
                .iter()
                .all(|(shard, max)| *max <= sealed_through(*shard))
        };
        if self.current_size > 0 && self.files.last().is_some_and(covered) {
            self.rotate()?;
        }
        let last = self.files.len().saturating_sub(1);
        let mut kept = Vec::with_capacity(self.files.len());
        for (i, file) in std::mem::take(&mut self.files).into_iter().enumerate() {
            if i < last && covered(&file) {
                fs::remove_file(&file.path)
                    .map_err(|e| Error::io("removing sealed write-ahead log", &file.path, e))?;
            } else {
                kept.push(file);
            }
        }
        self.files = kept;
        Ok(())
    }

    /// Bytes in the log files still kept.
    pub fn file_count(&self) -> usize {
        self.files.len()
    }

    fn current_path(&self) -> &Path {
        self.files
            .last()
            .map(|f| f.path.as_path())
            .unwrap_or(self.dir.as_path())
    }

    fn rotate(&mut self) -> Result<()> {
        // Group commit syncs only the newest file: the one left behind is synced now.
        if self.durability == Durability::Fsync && self.current_size > 0 {
            let old = self.current_path().to_path_buf();
            self.current
                .sync_data()
                .map_err(|e| Error::io("syncing write-ahead log", &old, e))?;
        }
        let generation = self.files.last().map_or(1, |f| f.generation + 1);
        let (file, path) = create_log_file(&self.dir, generation, self.durability)?;
        // The new file is only used from here on; a failure above leaves the log as it was.
        self.current = Arc::new(file);
        self.current_size = 0;
        self.group.published(self.written, &self.current, &path);
        self.files.push(LogFile {
            generation,
            path,
            max_seq: HashMap::new(),
        });
        Ok(())
    }
}

fn create_log_file(dir: &Path, generation: u64, durability: Durability) -> Result<(File, PathBuf)> {
    let path = log_path(dir, generation);
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(|e| Error::io("creating write-ahead log", &path, e))?;
    if durability == Durability::Fsync {
        crate::segment::sync_dir(dir)?;
    }
    Ok((file, path))
}

/// Reads every intact frame of a log file: the records, the length of the intact prefix and the
/// file's length.
fn read_log_file(path: &Path) -> Result<(Vec<WalRecord>, u64, u64)> {
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(|e| Error::io("reading write-ahead log", path, e))?;
    let mut records = Vec::new();
    let mut offset = 0usize;
    while offset + HEADER <= bytes.len() {
        let len = u32::from_le_bytes([
            bytes[offset],
            bytes[offset + 1],
            bytes[offset + 2],
            bytes[offset + 3],
        ]) as usize;
        let crc = u32::from_le_bytes([
            bytes[offset + 4],
            bytes[offset + 5],
            bytes[offset + 6],
            bytes[offset + 7],
        ]);
        let start = offset + HEADER;
        let Some(payload) = bytes.get(start..start + len) else {
            break;
        };
        if crc32fast::hash(payload) != crc {
            break;
        }
        match parse_frame(payload) {
            Some(frame) => records.extend(frame),
            None => break,
        }
        offset = start + len;
    }
    Ok((records, offset as u64, bytes.len() as u64))
}

fn parse_frame(payload: &[u8]) -> Option<Vec<WalRecord>> {
    let mut cursor = payload;
    let mut take = |n: usize| -> Option<&[u8]> {
        if cursor.len() < n {
            return None;
        }
        let (head, rest) = cursor.split_at(n);
        cursor = rest;
        Some(head)
    };
    let count = u32::from_le_bytes(take(4)?.try_into().ok()?) as usize;
    let mut records = Vec::with_capacity(count.min(1 << 16));
    for _ in 0..count {
        let shard = u32::from_le_bytes(take(4)?.try_into().ok()?);
        let seq = u64::from_le_bytes(take(8)?.try_into().ok()?);
        let arrival_ms = i64::from_le_bytes(take(8)?.try_into().ok()?);
        let pk_len = u16::from_le_bytes(take(2)?.try_into().ok()?) as usize;
        let partition_key = String::from_utf8(take(pk_len)?.to_vec()).ok()?;
        let data_len = u32::from_le_bytes(take(4)?.try_into().ok()?) as usize;
        let data = take(data_len)?.to_vec();
        records.push(WalRecord {
            shard,
            seq,
            arrival_ms,
            partition_key,
            data,
        });
    }
    Some(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(shard: u32, seq: u64, data: &[u8]) -> WalEntry<'_> {
        WalEntry {
            shard,
            seq,
            arrival_ms: 1_000 + seq as i64,
            partition_key: "key",
            data,
        }
    }

    #[test]
    fn frames_replay_in_order() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| Error::io("tempdir", "/tmp", e))?;
        {
            let (mut wal, replay) = WriteAheadLog::open(dir.path(), Durability::Fsync)?;
            assert!(replay.records.is_empty());
            wal.append(&[entry(0, 1, b"a"), entry(1, 1, b"b")])?;
            wal.append(&[entry(0, 2, b"c")])?;
        }
        let (_wal, replay) = WriteAheadLog::open(dir.path(), Durability::Fsync)?;
        let data: Vec<_> = replay.records.iter().map(|r| r.data.clone()).collect();
        assert_eq!(data, vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]);
        assert_eq!(replay.records[1].shard, 1);
        assert_eq!(replay.records[2].arrival_ms, 1_002);
        Ok(())
    }

    #[test]
    fn a_torn_tail_is_cut_at_every_byte_offset() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| Error::io("tempdir", "/tmp", e))?;
        let path = {
            let (mut wal, _) = WriteAheadLog::open(dir.path(), Durability::Buffered)?;
            wal.append(&[entry(0, 1, b"first")])?;
            wal.append(&[entry(0, 2, b"second"), entry(0, 3, b"third")])?;
            wal.current_path().to_path_buf()
        };
        let full = fs::read(&path).map_err(|e| Error::io("read", &path, e))?;
        let first_frame = HEADER + 4 + 4 + 8 + 8 + 2 + 3 + 4 + 5;
        for cut in first_frame..full.len() {
            let case = tempfile::tempdir().map_err(|e| Error::io("tempdir", "/tmp", e))?;
            let copy = case.path().join(path.file_name().unwrap_or_default());
            fs::write(&copy, &full[..cut]).map_err(|e| Error::io("write", &copy, e))?;
            let (_wal, replay) = WriteAheadLog::open(case.path(), Durability::Buffered)?;
            assert_eq!(replay.records.len(), 1, "cut at {cut}");
            assert_eq!(replay.truncated_bytes as usize, cut - first_frame);
            let len = fs::metadata(&copy)
                .map_err(|e| Error::io("stat", &copy, e))?
                .len();
            assert_eq!(len as usize, first_frame);
        }
        Ok(())
    }

    #[test]
    fn a_flipped_bit_in_the_last_frame_is_detected() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| Error::io("tempdir", "/tmp", e))?;
        let path = {
            let (mut wal, _) = WriteAheadLog::open(dir.path(), Durability::Buffered)?;
            wal.append(&[entry(0, 1, b"first")])?;
            wal.append(&[entry(0, 2, b"second")])?;
            wal.current_path().to_path_buf()
        };
        let mut bytes = fs::read(&path).map_err(|e| Error::io("read", &path, e))?;
        let last = bytes.len() - 2;
        bytes[last] ^= 0x40;
        fs::write(&path, &bytes).map_err(|e| Error::io("write", &path, e))?;
        let (_wal, replay) = WriteAheadLog::open(dir.path(), Durability::Buffered)?;
        assert_eq!(replay.records.len(), 1);
        Ok(())
    }

    #[test]
    fn damage_before_the_last_file_is_reported_by_name() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| Error::io("tempdir", "/tmp", e))?;
        {
            let (mut wal, _) = WriteAheadLog::open(dir.path(), Durability::Buffered)?;
            wal.append(&[entry(0, 1, b"first")])?;
        }
        {
            let (mut wal, _) = WriteAheadLog::open(dir.path(), Durability::Buffered)?;
            wal.append(&[entry(0, 2, b"second")])?;
        }
        let first = log_path(dir.path(), 1);
        let mut bytes = fs::read(&first).map_err(|e| Error::io("read", &first, e))?;
        bytes.truncate(bytes.len() - 1);
        fs::write(&first, &bytes).map_err(|e| Error::io("write", &first, e))?;
        let err = WriteAheadLog::open(dir.path(), Durability::Buffered).err();
        let message = err.map(|e| e.to_string()).unwrap_or_default();
        assert!(message.contains("00000000000000000001.wal"), "{message}");
        Ok(())
    }

    #[test]
    fn covered_files_are_deleted() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| Error::io("tempdir", "/tmp", e))?;
        let (mut wal, _) = WriteAheadLog::open(dir.path(), Durability::Buffered)?;
        wal.append(&[entry(0, 1, b"a"), entry(1, 1, b"b")])?;
        wal.trim(|shard| if shard == 0 { 1 } else { 0 })?;
        assert_eq!(wal.file_count(), 1);
        wal.trim(|_| 1)?;
        assert_eq!(wal.file_count(), 1);
        assert_eq!(list_generations(dir.path())?.len(), 1);
        Ok(())
    }
}
