//! Writer commits: a writer that reads somewhere and appends here (a pump) records how far it
//! had read *in the same write-ahead-log frame* as the records it appends, so after a crash the
//! output and the reader's position can never disagree: either both made it or neither did.
//!
//! A commit is an opaque blob per writer name (a pump's checkpoint, as JSON). It travels in the
//! log as an entry on the reserved shard [`COMMIT_SHARD`]; when the log is trimmed after sealing,
//! the latest commit of every writer is first saved in `commits.json` in the stream's folder.
//! Opening the stream reads that file, then replays the log's commits over it, newest last.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use crate::Durability;
use crate::error::{Error, Result};
use crate::wal::WalEntry;

/// The shard number write-ahead-log entries carrying commits use (no real shard has it).
pub const COMMIT_SHARD: u32 = u32::MAX;

const FILE: &str = "commits.json";

/// The log entry carrying `writer`'s commit `data` (empty: the writer's commit is forgotten).
pub(crate) fn commit_entry<'a>(writer: &'a str, data: &'a [u8]) -> WalEntry<'a> {
    WalEntry {
        shard: COMMIT_SHARD,
        seq: 0,
        arrival_ms: 0,
        partition_key: writer,
        data,
    }
}

/// The latest commit of each writer, and whether `commits.json` is behind.
#[derive(Debug, Default)]
pub(crate) struct Commits {
    pub latest: BTreeMap<String, Vec<u8>>,
    pub unsaved: bool,
}

impl Commits {
    /// Reads `commits.json` from the stream's folder (none yet: empty).
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join(FILE);
        match fs::read(&path) {
            Ok(bytes) => {
                let latest: BTreeMap<String, String> =
                    serde_json::from_slice(&bytes).map_err(|e| Error::Corrupt {
                        what: "writer commits",
                        path: path.clone(),
                        reason: e.to_string(),
                    })?;
                Ok(Self {
                    latest: latest
                        .into_iter()
                        .map(|(k, v)| (k, v.into_bytes()))
                        .collect(),
                    unsaved: false,
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(Error::io("reading writer commits", &path, e)),
        }
    }

    /// Records `writer`'s commit (an empty one forgets the writer).
    pub fn set(&mut self, writer: &str, commit: &[u8]) {
        if commit.is_empty() {
            self.latest.remove(writer);
        } else {
            self.latest.insert(writer.to_string(), commit.to_vec());
        }
        self.unsaved = true;
    }

    /// Saves the commits if they changed since the last save, atomically (before the log that
    /// holds them is trimmed).
    pub fn save(&mut self, dir: &Path, durability: Durability) -> Result<()> {
        if !self.unsaved {
            return Ok(());
        }
        let path = dir.join(FILE);
        let tmp = dir.join(format!("{FILE}.tmp"));
        let text: BTreeMap<&str, String> = self
            .latest
            .iter()
            .map(|(k, v)| (k.as_str(), String::from_utf8_lossy(v).into_owned()))
            .collect();
        let bytes = serde_json::to_vec(&text).map_err(|e| Error::Corrupt {
            what: "writer commits",
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let file =
            fs::File::create(&tmp).map_err(|e| Error::io("saving writer commits", &tmp, e))?;
        use std::io::Write;
        (&file)
            .write_all(&bytes)
            .map_err(|e| Error::io("saving writer commits", &tmp, e))?;
        if durability == Durability::Fsync {
            file.sync_all()
                .map_err(|e| Error::io("syncing writer commits", &tmp, e))?;
        }
        fs::rename(&tmp, &path).map_err(|e| Error::io("saving writer commits", &path, e))?;
        if durability == Durability::Fsync {
            crate::segment::sync_dir(dir)?;
        }
        self.unsaved = false;
        Ok(())
    }
}
