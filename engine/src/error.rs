//! The engine's error type.

use std::path::PathBuf;

/// Everything that can go wrong in the stream store.
///
/// User mistakes (an unknown stream, an oversized record, a bad option) get their own variants with
/// messages that name the thing and say what was expected; storage failures keep the path involved.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("stream '{0}' does not exist")]
    StreamNotFound(String),

    #[error("stream '{0}' already exists")]
    StreamAlreadyExists(String),

    #[error("shard '{shard}' does not exist in stream '{stream}'")]
    ShardNotFound { stream: String, shard: String },

    #[error(
        "shard {shard} in stream {stream} has already been merged or split, and thus is not eligible for merging or splitting"
    )]
    ShardClosed { stream: String, shard: String },

    #[error("limit exceeded: {0}")]
    LimitExceeded(String),

    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    #[error("record {index} is {size} bytes; a record's data may be at most 1048576 bytes (1 MiB)")]
    RecordTooLarge { index: usize, size: usize },

    #[error(
        "record {index} has a partition key of {len} characters; partition keys must be 1 to 256 characters"
    )]
    InvalidPartitionKey { index: usize, len: usize },

    #[error("{context} ({path}): {source}")]
    Io {
        context: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("corrupt {what} at {path}: {reason}")]
    Corrupt {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },

    #[error(transparent)]
    Arrow(#[from] arrow::error::ArrowError),

    #[error("the engine is closed")]
    Closed,

    #[error("{0}")]
    Retry(String),

    #[error(
        "stream '{0}' is shared by the cluster and its records are numbered by each shard's owner: \
         write it through the Kinesis API (PutRecord, PutRecords) on any node, or with a pump \
         the cluster runs (CREATE PUMP on a node of the cluster). SQL INSERT, Flight DoPut and \
         delivery do not write into shared streams yet; write into a stream created with SQL \
         (kept by this node) instead"
    )]
    SharedStream(String),
}

/// What kind of failure an engine error is: the one classification every protocol maps from
/// (gRPC codes for Flight, AWS exceptions for the Kinesis API), so the same failure means the
/// same thing to every client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Something named does not exist.
    NotFound,
    /// Something to be created exists.
    AlreadyExists,
    /// The thing is in a state that does not allow this (a closed shard).
    InUse,
    /// A configured limit would be passed.
    LimitExceeded,
    /// The request is wrong.
    InvalidInput,
    /// The disk (or quota) is full: nothing more can be stored until space is freed.
    StorageFull,
    /// Stored data failed its checks.
    DataLoss,
    /// The engine is closing or busy: try again.
    Unavailable,
    /// Anything else that went wrong inside.
    Internal,
}

impl Error {
    /// What kind of failure this is.
    pub fn class(&self) -> ErrorClass {
        match self {
            Error::StreamNotFound(_) | Error::ShardNotFound { .. } => ErrorClass::NotFound,
            Error::StreamAlreadyExists(_) => ErrorClass::AlreadyExists,
            Error::ShardClosed { .. } | Error::SharedStream(_) => ErrorClass::InUse,
            Error::LimitExceeded(_) => ErrorClass::LimitExceeded,
            Error::InvalidArgument(_)
            | Error::RecordTooLarge { .. }
            | Error::InvalidPartitionKey { .. }
            | Error::Arrow(_) => ErrorClass::InvalidInput,
            Error::Io { source, .. } => match source.kind() {
                std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded => {
                    ErrorClass::StorageFull
                }
                _ => ErrorClass::Internal,
            },
            Error::Corrupt { .. } => ErrorClass::DataLoss,
            Error::Closed | Error::Retry(_) => ErrorClass::Unavailable,
        }
    }

    /// Wraps an I/O error with what was being done and to which file.
    pub fn io(
        context: impl Into<String>,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        Error::Io {
            context: context.into(),
            path: path.into(),
            source,
        }
    }
}

/// The engine's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
