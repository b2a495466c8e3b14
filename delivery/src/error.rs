//! Delivery errors.

/// What can go wrong setting up or running a delivery stream.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A bad option, prefix or statement: the message says which and why.
    #[error("{0}")]
    Invalid(String),
    /// The statement names a stream or delivery stream that does not exist.
    #[error("{0}")]
    NotFound(String),
    #[error(transparent)]
    Engine(#[from] sluice_engine::Error),
    #[error("object store: {0}")]
    Store(#[from] object_store::Error),
    #[error(transparent)]
    Arrow(#[from] arrow::error::ArrowError),
    #[error(transparent)]
    Parquet(#[from] parquet::errors::ParquetError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
