//! Where each flow has got to: for each file, how far its records were acknowledged by the
//! destination. Saved (written, synced, renamed) after acknowledgements, so after a restart or
//! `kill -9` the agent resumes at the last acknowledged record: no line is lost, and the lines
//! sent but not yet saved are sent again (at least once, as the Kinesis Agent).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// A file as the agent knows it: its device and inode survive renames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
}

/// One file's acknowledged position.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileCheckpoint {
    pub path: PathBuf,
    pub id: FileId,
    /// Every byte before this was sent and acknowledged.
    pub offset: u64,
    /// The file's first bytes (hex), to tell a reused inode or a copy apart.
    pub fingerprint: String,
}

/// One flow's checkpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowCheckpoint {
    /// When it was saved (ms since the epoch): files changed after it are new to the flow.
    pub saved_at_ms: i64,
    pub files: Vec<FileCheckpoint>,
}

/// The checkpoint file: every flow's, by flow id.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Checkpoints {
    pub flows: BTreeMap<String, FlowCheckpoint>,
}

impl Checkpoints {
    /// Reads `path` (nothing saved yet if it does not exist).
    pub fn load(path: &Path) -> Result<Self> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                Error::Io(format!(
                    "checkpoint file {} cannot be read ({e}); move it away to start over",
                    path.display()
                ))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(Error::Io(format!(
                "checkpoint file {} cannot be read: {e}",
                path.display()
            ))),
        }
    }

    /// Saves to `path` durably.
    pub fn save(&self, path: &Path) -> Result<()> {
        let failed = |e: std::io::Error| {
            Error::Io(format!(
                "checkpoint file {} cannot be written: {e}",
                path.display()
            ))
        };
        let bytes = serde_json::to_vec(self).map_err(|e| Error::Io(e.to_string()))?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(failed)?;
        }
        let temporary = path.with_extension("tmp");
        let mut file = std::fs::File::create(&temporary).map_err(failed)?;
        file.write_all(&bytes).map_err(failed)?;
        file.sync_all().map_err(failed)?;
        std::fs::rename(&temporary, path).map_err(failed)?;
        Ok(())
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
