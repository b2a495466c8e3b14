//! What can go wrong in the agent.

/// An agent error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is wrong; the message names the setting.
    #[error("agent configuration: {0}")]
    Config(String),
    /// A file or the checkpoint file could not be read or written.
    #[error("{0}")]
    Io(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
