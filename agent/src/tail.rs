//! Following the files of a flow as they grow, rotate and are truncated, and cutting them into
//! records.
//!
//! Files are known by device and inode, so a file renamed by rotation (`app.log` →
//! `app.log.1`) is read on to its end through the handle already open, while the new `app.log`
//! is read from its start. A file that shrinks below what was read was truncated
//! (copytruncate) and is read again from its start; a new file whose first bytes are those of a
//! file already followed is that file's copy, read from where the original had got to. Each
//! file keeps its first bytes (a fingerprint) so a reused inode is a new file.
//!
//! Records are lines, or with `multiLineStartPattern` a line that matches and the lines after it
//! up to the next match (or until the file is idle). Every record knows the file offset after
//! it, which is what checkpoints save.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::checkpoint::{FileId, FlowCheckpoint, hex};
use crate::config::{FlowConfig, InitialPosition};
use crate::error::{Error, Result};

/// Bytes of a file's start that identify it.
const FINGERPRINT_BYTES: usize = 256;
/// A multi-line record in progress is complete when its file was idle this long.
const MULTI_LINE_IDLE: Duration = Duration::from_millis(1000);
/// A file that no longer matches the pattern, read to its end, is let go after this long idle.
const RELEASE_IDLE: Duration = Duration::from_secs(5);
const READ_CHUNK: usize = 1024 * 1024;

/// What checkpoints say of a file besides its identity: where it is and how it begins.
/// Shared by every record of the file until either changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileInfo {
    pub path: PathBuf,
    /// The file's first bytes, in hex.
    pub fingerprint: String,
}

/// One record and where it ends in its file.
#[derive(Debug, Clone)]
pub struct Record {
    pub data: Vec<u8>,
    pub file: FileId,
    pub info: Arc<FileInfo>,
    pub end_offset: u64,
}

struct Tracked {
    path: PathBuf,
    id: FileId,
    file: File,
    /// Offset of the next byte to read.
    read_offset: u64,
    /// Bytes read but not yet in a record, starting at `pending_start`.
    pending: Vec<u8>,
    pending_start: u64,
    /// A multi-line record in progress: its bytes end at `pending_start`.
    current: Vec<u8>,
    header_lines_left: usize,
    fingerprint: Vec<u8>,
    /// `path` and `fingerprint` as records carry them.
    info: Arc<FileInfo>,
    last_data: Instant,
    /// Whether the path still names this file.
    matched: bool,
    /// Where reading it began.
    initial_offset: u64,
}

impl Tracked {
    fn open(path: &Path, id: FileId, offset: u64, skip_header: usize) -> Result<Self> {
        let mut file = File::open(path)
            .map_err(|e| Error::Io(format!("cannot open {}: {e}", path.display())))?;
        let fingerprint = read_fingerprint(&mut file);
        file.seek(SeekFrom::Start(offset))
            .map_err(|e| Error::Io(format!("cannot seek in {}: {e}", path.display())))?;
        Ok(Self {
            path: path.to_path_buf(),
            id,
            file,
            read_offset: offset,
            pending: Vec::new(),
            pending_start: offset,
            current: Vec::new(),
            header_lines_left: if offset == 0 { skip_header } else { 0 },
            info: Arc::new(FileInfo {
                path: path.to_path_buf(),
                fingerprint: hex(&fingerprint),
            }),
            fingerprint,
            last_data: Instant::now(),
            matched: true,
            initial_offset: offset,
        })
    }

    fn restart_at_zero(&mut self, skip_header: usize) -> Result<()> {
        self.file
            .seek(SeekFrom::Start(0))
            .map_err(|e| Error::Io(format!("cannot seek in {}: {e}", self.path.display())))?;
        self.read_offset = 0;
        self.pending.clear();
        self.pending_start = 0;
        self.current.clear();
        self.header_lines_left = skip_header;
        self.initial_offset = 0;
        self.fingerprint = read_fingerprint(&mut self.file);
        self.file
            .seek(SeekFrom::Start(0))
            .map_err(|e| Error::Io(format!("cannot seek in {}: {e}", self.path.display())))?;
        self.refresh_info();
        Ok(())
    }

    /// Brings `info` up to date after the path or the fingerprint changed.
    fn refresh_info(&mut self) {
        let fingerprint = hex(&self.fingerprint);
        if self.info.path != self.path || self.info.fingerprint != fingerprint {
            self.info = Arc::new(FileInfo {
                path: self.path.clone(),
                fingerprint,
            });
        }
    }
}

fn read_fingerprint(file: &mut File) -> Vec<u8> {
    let mut buffer = vec![0; FINGERPRINT_BYTES];
    let mut filled = 0;
    let _ = file.seek(SeekFrom::Start(0));
    while filled < buffer.len() {
        match file.read(&mut buffer[filled..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => filled += n,
        }
    }
    buffer.truncate(filled);
    buffer
}

/// Counters the tailer keeps.
#[derive(Debug, Default, Clone, Copy)]
pub struct TailStats {
    pub lines_read: u64,
    pub bytes_read: u64,
    /// Bytes behind as this flow last reported them (its share of the agent's gauge).
    pub bytes_behind: u64,
}

/// The files of one flow.
pub struct Tailer {
    flow: FlowConfig,
    dir: PathBuf,
    name_pattern: String,
    files: Vec<Tracked>,
    /// Files seen and deliberately not read (older than the flow's start or checkpoint).
    ignored: HashMap<FileId, Vec<u8>>,
    /// Reused for every read.
    buffer: Vec<u8>,
    pub stats: TailStats,
}

impl Tailer {
    /// Starts following `flow`'s files: where `checkpoint` says, else from the initial position.
    pub fn new(flow: FlowConfig, checkpoint: Option<&FlowCheckpoint>) -> Result<Self> {
        let pattern = Path::new(&flow.file_pattern);
        let dir = pattern.parent().unwrap_or(Path::new("/")).to_path_buf();
        let name_pattern = pattern
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if dir.to_string_lossy().contains(['*', '?']) {
            return Err(Error::Config(format!(
                "filePattern '{}': wildcards are supported in the file name only",
                flow.file_pattern
            )));
        }
        let mut tailer = Self {
            flow,
            dir,
            name_pattern,
            files: Vec::new(),
            ignored: HashMap::new(),
            buffer: vec![0; READ_CHUNK],
            stats: TailStats::default(),
        };
        let found = tailer.matching()?;
        let skip = tailer.flow.skip_header_lines;
        match checkpoint {
            Some(saved) => {
                for (path, id, size, modified_ms) in &found {
                    let resumed = saved.files.iter().find(|f| f.id == *id);
                    match resumed {
                        Some(at) => {
                            let mut tracked = Tracked::open(path, *id, 0, skip)?;
                            let same = hex(&tracked.fingerprint).starts_with(&at.fingerprint)
                                || at.fingerprint.starts_with(&hex(&tracked.fingerprint));
                            if same && at.offset <= *size {
                                tracked = Tracked::open(path, *id, at.offset, skip)?;
                            }
                            tailer.files.push(tracked);
                        }
                        None if *modified_ms > saved.saved_at_ms => {
                            tailer.files.push(Tracked::open(path, *id, 0, skip)?);
                        }
                        None => {
                            tailer.ignore(path, *id);
                        }
                    }
                }
            }
            None => {
                // The most recently changed file, from the configured position.
                let newest = found.iter().max_by_key(|(_, _, _, modified)| *modified);
                for (path, id, size, _) in &found {
                    if Some(id) == newest.map(|n| &n.1) {
                        let offset = match tailer.flow.initial_position {
                            InitialPosition::StartOfFile => 0,
                            InitialPosition::EndOfFile => *size,
                        };
                        tailer.files.push(Tracked::open(path, *id, offset, skip)?);
                    } else {
                        tailer.ignore(path, *id);
                    }
                }
            }
        }
        Ok(tailer)
    }

    fn ignore(&mut self, path: &Path, id: FileId) {
        let fingerprint = File::open(path)
            .map(|mut f| read_fingerprint(&mut f))
            .unwrap_or_default();
        self.ignored.insert(id, fingerprint);
    }

    /// The files the pattern matches now: path, identity, size, modification time (ms).
    fn matching(&self) -> Result<Vec<(PathBuf, FileId, u64, i64)>> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => {
                return Err(Error::Io(format!(
                    "cannot list {}: {e}",
                    self.dir.display()
                )));
            }
        };
        let mut found = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if !glob_match(&self.name_pattern, &name) {
                continue;
            }
            let Ok(meta) = entry.metadata() else { continue };
            if !meta.is_file() {
                continue;
            }
            found.push((
                entry.path(),
                FileId {
                    dev: meta.dev(),
                    ino: meta.ino(),
                },
                meta.len(),
                meta.mtime() * 1000 + meta.mtime_nsec() / 1_000_000,
            ));
        }
        found.sort_by_key(|(_, _, _, modified)| *modified);
        Ok(found)
    }

    /// Looks for new, rotated and truncated files, then reads what is new: the records found,
    /// oldest file first, at most about `max_bytes` of them.
    pub fn poll(&mut self, max_bytes: usize) -> Result<Vec<Record>> {
        let found = self.matching()?;
        let skip = self.flow.skip_header_lines;
        for tracked in &mut self.files {
            tracked.matched = false;
        }
        // New files first, while the files already followed are as they were: a copy is
        // recognised by the original's first bytes before the original is truncated.
        for (path, id, size, _) in &found {
            if self.files.iter().any(|t| t.id == *id) {
                continue;
            }
            if let Some(fingerprint) = self.ignored.get(id) {
                let now = File::open(path)
                    .map(|mut f| read_fingerprint(&mut f))
                    .unwrap_or_default();
                if now.starts_with(fingerprint) {
                    continue;
                }
                // The inode was reused for another file.
                self.ignored.remove(id);
            }
            let mut tracked = Tracked::open(path, *id, 0, skip)?;
            // A copy of a file already followed (copytruncate): from where that one had got.
            let original = self.files.iter().find(|t| {
                tracked.fingerprint.len() == FINGERPRINT_BYTES
                    && t.fingerprint == tracked.fingerprint
            });
            if let Some(original) = original {
                let offset = original.pending_start.min(*size);
                log::info!(
                    "{} is a copy of {}: reading it from byte {offset}",
                    path.display(),
                    original.path.display()
                );
                tracked = Tracked::open(path, *id, offset, 0)?;
            }
            self.files.push(tracked);
        }
        for (path, id, size, _) in &found {
            if let Some(tracked) = self.files.iter_mut().find(|t| t.id == *id) {
                tracked.matched = true;
                if tracked.path != *path {
                    tracked.path = path.clone();
                    tracked.refresh_info();
                }
                if *size < tracked.read_offset {
                    log::info!(
                        "{} was truncated ({} bytes, {} read): reading it from its start",
                        path.display(),
                        size,
                        tracked.read_offset
                    );
                    tracked.restart_at_zero(skip)?;
                }
            }
        }
        let mut records = Vec::new();
        let mut budget = max_bytes;
        let flow = self.flow.clone();
        for tracked in &mut self.files {
            if budget == 0 {
                break;
            }
            let size = budget.clamp(4096, READ_CHUNK);
            let read = read_records(
                tracked,
                &flow,
                &mut self.buffer[..size],
                &mut records,
                &mut self.stats,
            )?;
            budget = budget.saturating_sub(read);
        }
        // Let go of files that are gone from the pattern and read to their ends.
        self.files.retain(|t| {
            let done = !t.matched
                && t.pending.is_empty()
                && t.current.is_empty()
                && t.last_data.elapsed() > RELEASE_IDLE;
            if done {
                log::info!("finished {}", t.path.display());
            }
            !done
        });
        Ok(records)
    }

    /// Bytes in the followed files after `acked` (per file, what was acknowledged).
    pub fn bytes_behind(&self, acked: &HashMap<FileId, u64>) -> u64 {
        self.files
            .iter()
            .map(|t| {
                let size = t.file.metadata().map(|m| m.len()).unwrap_or(0);
                let done = acked.get(&t.id).copied().unwrap_or(t.initial_offset);
                size.saturating_sub(done)
            })
            .sum()
    }

    /// Whether every followed file was read to its end and no record is in progress.
    pub fn caught_up(&self) -> bool {
        self.files.iter().all(|t| {
            t.pending.is_empty()
                && t.current.is_empty()
                && t.file.metadata().map(|m| m.len()).unwrap_or(0) <= t.read_offset
        })
    }
}

/// Reads up to `budget` new bytes of `tracked` and cuts them into records; the bytes read.
fn read_records(
    tracked: &mut Tracked,
    flow: &FlowConfig,
    buffer: &mut [u8],
    records: &mut Vec<Record>,
    stats: &mut TailStats,
) -> Result<usize> {
    let n = tracked
        .file
        .read(buffer)
        .map_err(|e| Error::Io(format!("cannot read {}: {e}", tracked.path.display())))?;
    if n == 0 {
        // Idle: a multi-line record in progress is complete, and so is a last line without
        // an ending in a file that was rotated away.
        let idle = tracked.last_data.elapsed();
        if !tracked.current.is_empty() && idle > MULTI_LINE_IDLE {
            let data = std::mem::take(&mut tracked.current);
            records.push(record(flow, data, tracked, tracked.pending_start));
        }
        if !tracked.matched && !tracked.pending.is_empty() && idle > MULTI_LINE_IDLE {
            let data = std::mem::take(&mut tracked.pending);
            tracked.pending_start += data.len() as u64;
            stats.lines_read += 1;
            push_line(tracked, flow, data, records);
        }
        return Ok(0);
    }
    if tracked.fingerprint.len() < FINGERPRINT_BYTES {
        let pos = tracked.read_offset;
        tracked.fingerprint = read_fingerprint(&mut tracked.file);
        let _ = tracked.file.seek(SeekFrom::Start(pos + n as u64));
        tracked.refresh_info();
    }
    tracked.read_offset += n as u64;
    tracked.last_data = Instant::now();
    stats.bytes_read += n as u64;
    tracked.pending.extend_from_slice(&buffer[..n]);
    let mut start = 0;
    let pending = std::mem::take(&mut tracked.pending);
    while let Some(at) = pending[start..].iter().position(|&b| b == b'\n') {
        let end = start + at + 1;
        let line = pending[start..end].to_vec();
        start = end;
        tracked.pending_start += line.len() as u64;
        stats.lines_read += 1;
        push_line(tracked, flow, line, records);
    }
    tracked.pending = pending[start..].to_vec();
    Ok(n)
}

/// Files one complete line (its end is `tracked.pending_start`).
fn push_line(tracked: &mut Tracked, flow: &FlowConfig, line: Vec<u8>, records: &mut Vec<Record>) {
    if tracked.header_lines_left > 0 {
        tracked.header_lines_left -= 1;
        return;
    }
    let end = tracked.pending_start;
    match &flow.multi_line_start {
        None => records.push(record(flow, line, tracked, end)),
        Some(start) => {
            let text = String::from_utf8_lossy(&line);
            if start.is_match(&text) && !tracked.current.is_empty() {
                let previous = std::mem::take(&mut tracked.current);
                let previous_end = end - line.len() as u64;
                records.push(record(flow, previous, tracked, previous_end));
            }
            tracked.current.extend_from_slice(&line);
        }
    }
}

/// A record of `data`, cut at the destination's limit with the truncated-record terminator.
fn record(flow: &FlowConfig, mut data: Vec<u8>, tracked: &Tracked, end: u64) -> Record {
    let max = flow.max_record_bytes();
    if data.len() > max {
        let terminator = &flow.truncated_record_terminator;
        data.truncate(max.saturating_sub(terminator.len()));
        data.extend_from_slice(terminator);
    }
    Record {
        data,
        file: tracked.id,
        info: Arc::clone(&tracked.info),
        end_offset: end,
    }
}

/// `*` (any run) and `?` (one character) against a file name.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    let (mut pi, mut ni) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ni;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ni = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AgentConfig;
    use std::io::Write;

    fn flow(pattern: &str, extra: &str) -> FlowConfig {
        let text = format!(
            r#"{{"awsAccessKeyId": "k", "awsSecretAccessKey": "s", "kinesis.endpoint": "http://127.0.0.1:1",
                "flows": [{{"filePattern": "{pattern}", "kinesisStream": "s", "initialPosition": "START_OF_FILE"{extra}}}]}}"#
        );
        AgentConfig::parse(&text).expect("config").flows.remove(0)
    }

    fn lines(records: &[Record]) -> Vec<String> {
        records
            .iter()
            .map(|r| String::from_utf8_lossy(&r.data).trim_end().to_string())
            .collect()
    }

    fn append(path: &Path, text: &str) {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .expect("open");
        f.write_all(text.as_bytes()).expect("write");
    }

    #[test]
    fn globs_match_file_names() {
        assert!(glob_match("app.log*", "app.log"));
        assert!(glob_match("app.log*", "app.log.1"));
        assert!(glob_match("*.log", "x.log"));
        assert!(!glob_match("*.log", "x.log.1"));
        assert!(glob_match("a?c", "abc"));
    }

    #[test]
    fn lines_follow_rename_rotation_and_partial_lines_wait() {
        let dir = tempfile::tempdir().expect("dir");
        let log = dir.path().join("app.log");
        append(&log, "one\ntwo\nthr");
        let mut tailer = Tailer::new(
            flow(&format!("{}/app.log*", dir.path().display()), ""),
            None,
        )
        .expect("tailer");
        assert_eq!(lines(&tailer.poll(1 << 20).expect("poll")), ["one", "two"]);
        append(&log, "ee\n");
        std::fs::rename(&log, dir.path().join("app.log.1")).expect("rotate");
        append(&log, "four\n");
        let got = tailer.poll(1 << 20).expect("poll");
        let mut got = lines(&got);
        got.extend(lines(&tailer.poll(1 << 20).expect("poll")));
        assert_eq!(got, ["three", "four"]);
    }

    #[test]
    fn copytruncate_reads_the_copy_from_where_the_original_was() {
        let dir = tempfile::tempdir().expect("dir");
        let log = dir.path().join("app.log");
        let long = "x".repeat(300);
        append(&log, &format!("{long}\nsecond\n"));
        let mut tailer = Tailer::new(
            flow(&format!("{}/app.log*", dir.path().display()), ""),
            None,
        )
        .expect("tailer");
        assert_eq!(tailer.poll(1 << 20).expect("poll").len(), 2);
        append(&log, "third\n");
        std::fs::copy(&log, dir.path().join("app.log.1")).expect("copy");
        std::fs::File::create(&log).expect("truncate");
        append(&log, "fourth\n");
        let mut got = lines(&tailer.poll(1 << 20).expect("poll"));
        got.extend(lines(&tailer.poll(1 << 20).expect("poll")));
        got.sort();
        assert_eq!(got, ["fourth", "third"]);
    }

    #[test]
    fn multi_line_records_and_header_lines() {
        let dir = tempfile::tempdir().expect("dir");
        let log = dir.path().join("app.log");
        append(&log, "HEADER\n[1] start\n  at a\n  at b\n[2] next\n");
        let mut tailer = Tailer::new(
            flow(
                &format!("{}/app.log", dir.path().display()),
                r#", "multiLineStartPattern": "\\[", "skipHeaderLines": 1"#,
            ),
            None,
        )
        .expect("tailer");
        let got = tailer.poll(1 << 20).expect("poll");
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].data, b"[1] start\n  at a\n  at b\n");
        // The checkpoint offset of the first record is where the second starts.
        assert_eq!(
            got[0].end_offset,
            "HEADER\n[1] start\n  at a\n  at b\n".len() as u64
        );
    }

    #[test]
    fn a_checkpoint_resumes_at_its_offset() {
        let dir = tempfile::tempdir().expect("dir");
        let log = dir.path().join("app.log");
        append(&log, "one\ntwo\n");
        let meta = std::fs::metadata(&log).expect("meta");
        let id = FileId {
            dev: meta.dev(),
            ino: meta.ino(),
        };
        let saved = FlowCheckpoint {
            saved_at_ms: i64::MAX,
            files: vec![crate::checkpoint::FileCheckpoint {
                path: log.clone(),
                id,
                offset: 4,
                fingerprint: hex(b"one\ntwo\n"),
            }],
        };
        let mut tailer = Tailer::new(
            flow(&format!("{}/app.log", dir.path().display()), ""),
            Some(&saved),
        )
        .expect("tailer");
        assert_eq!(lines(&tailer.poll(1 << 20).expect("poll")), ["two"]);
    }
}
