//! AWS's error vocabulary: each error is HTTP 400 (or 413/500) with
//! `{"__type": "<Exception>", "message": "…"}`.

use axum::http::StatusCode;

/// The account id Sluice reports in ARNs and messages.
pub const ACCOUNT: &str = "000000000000";
/// The region Sluice reports in ARNs.
pub const REGION: &str = "us-east-1";

/// A Kinesis API error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind:?}: {message}")]
pub struct ApiError {
    pub kind: ErrorKind,
    pub message: String,
    /// The envelope names the message `Message`, as AWS does for type errors, not `message`.
    pub capitalised: bool,
}

/// The `__type` of an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    ResourceNotFound,
    ResourceInUse,
    InvalidArgument,
    Validation,
    ExpiredIterator,
    LimitExceeded,
    Serialization,
    UnknownOperation,
    MissingAuthenticationToken,
    UnrecognizedClient,
    InvalidSignature,
    IncompleteSignature,
    ProvisionedThroughputExceeded,
    PayloadTooLarge,
    InternalFailure,
    /// A shard moving between nodes of a cluster: answered as `InternalFailure` (which the
    /// SDKs retry), but expected, so not logged as a failure of this node.
    ShardMoving,
    /// An error of another API served on the same port ([`crate::JsonService`]), in that
    /// API's own vocabulary.
    Service {
        type_name: &'static str,
        status: u16,
    },
}

impl ErrorKind {
    /// The kind a Kinesis `__type` names (another node's answer, passed on as its own).
    pub fn from_type_name(name: &str) -> Option<Self> {
        [
            Self::ResourceNotFound,
            Self::ResourceInUse,
            Self::InvalidArgument,
            Self::Validation,
            Self::ExpiredIterator,
            Self::LimitExceeded,
            Self::Serialization,
            Self::UnknownOperation,
            Self::MissingAuthenticationToken,
            Self::UnrecognizedClient,
            Self::InvalidSignature,
            Self::IncompleteSignature,
            Self::ProvisionedThroughputExceeded,
            Self::PayloadTooLarge,
            Self::InternalFailure,
        ]
        .into_iter()
        .find(|kind| kind.type_name() == name)
    }

    /// The name AWS SDKs match on.
    pub fn type_name(self) -> &'static str {
        match self {
            Self::ResourceNotFound => "ResourceNotFoundException",
            Self::ResourceInUse => "ResourceInUseException",
            Self::InvalidArgument => "InvalidArgumentException",
            Self::Validation => "ValidationException",
            Self::ExpiredIterator => "ExpiredIteratorException",
            Self::LimitExceeded => "LimitExceededException",
            Self::Serialization => "SerializationException",
            Self::UnknownOperation => "UnknownOperationException",
            Self::MissingAuthenticationToken => "MissingAuthenticationTokenException",
            Self::UnrecognizedClient => "UnrecognizedClientException",
            Self::InvalidSignature => "InvalidSignatureException",
            Self::IncompleteSignature => "IncompleteSignatureException",
            Self::ProvisionedThroughputExceeded => "ProvisionedThroughputExceededException",
            Self::PayloadTooLarge => "RequestEntityTooLargeException",
            Self::InternalFailure | Self::ShardMoving => "InternalFailure",
            Self::Service { type_name, .. } => type_name,
        }
    }

    pub fn status(self) -> StatusCode {
        match self {
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::InternalFailure | Self::ShardMoving => StatusCode::INTERNAL_SERVER_ERROR,
            Self::MissingAuthenticationToken => StatusCode::FORBIDDEN,
            Self::Service { status, .. } => {
                StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST)
            }
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

impl ApiError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            capitalised: false,
        }
    }

    /// Sends the message as `Message`.
    pub fn with_capitalised_message(mut self) -> Self {
        self.capitalised = true;
        self
    }

    pub fn not_found(stream: &str) -> Self {
        Self::new(
            ErrorKind::ResourceNotFound,
            format!("Stream {stream} under account {ACCOUNT} not found."),
        )
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidArgument, message)
    }

    pub fn serialization(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Serialization, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InternalFailure, message)
    }
}

impl From<sluice_engine::Error> for ApiError {
    /// Through the engine's one classification ([`sluice_engine::ErrorClass`]), as Flight maps
    /// it too: a full disk is a resource limit (`LimitExceededException`, as Flight's
    /// `ResourceExhausted`), not an internal failure.
    fn from(error: sluice_engine::Error) -> Self {
        use sluice_engine::Error as E;
        use sluice_engine::ErrorClass as C;
        match (&error, error.class()) {
            (E::StreamNotFound(name), _) => Self::not_found(name),
            (E::StreamAlreadyExists(name), _) => Self::new(
                ErrorKind::ResourceInUse,
                format!("Stream {name} under account {ACCOUNT} already exists."),
            ),
            (E::ShardNotFound { stream, shard }, _) => Self::new(
                ErrorKind::ResourceNotFound,
                format!("Shard {shard} in stream {stream} under account {ACCOUNT} does not exist"),
            ),
            (E::ShardClosed { stream, shard }, _) => Self::new(
                ErrorKind::ResourceInUse,
                format!(
                    "Shard {shard} in stream {stream} under account {ACCOUNT} has already been merged or split, and thus is not eligible for merging or splitting."
                ),
            ),
            (E::LimitExceeded(message), _) => Self::new(ErrorKind::LimitExceeded, message.clone()),
            (_, C::NotFound) => Self::new(ErrorKind::ResourceNotFound, error.to_string()),
            (_, C::AlreadyExists | C::InUse) => {
                Self::new(ErrorKind::ResourceInUse, error.to_string())
            }
            (_, C::LimitExceeded) => Self::new(ErrorKind::LimitExceeded, error.to_string()),
            (_, C::InvalidInput) => Self::invalid(error.to_string()),
            (_, C::StorageFull) => Self::new(
                ErrorKind::LimitExceeded,
                format!(
                    "Sluice cannot store more records: the disk is full ({error}); free space and retry."
                ),
            ),
            (E::Closed, _) => Self::internal("Sluice is shutting down"),
            (_, C::Unavailable | C::DataLoss | C::Internal) => Self::internal(error.to_string()),
        }
    }
}

/// Collects constraint violations and words them as AWS does:
/// `2 validation errors detected: Value 'x' at 'streamName' failed to satisfy constraint: …; …`.
#[derive(Debug, Default)]
pub struct Validation {
    problems: Vec<String>,
    /// A refusal that is not a constraint (two members that disagree): reported only when every
    /// constraint holds, as AWS checks constraints first.
    then: Option<ApiError>,
}

impl Validation {
    pub fn check(&mut self, ok: bool, value: &str, at: &str, constraint: &str) {
        if !ok {
            self.problems.push(format!(
                "Value '{value}' at '{at}' failed to satisfy constraint: {constraint}"
            ));
        }
    }

    pub fn missing(&mut self, at: &str) {
        self.problems.push(format!(
            "Value null at '{at}' failed to satisfy constraint: Member must not be null"
        ));
    }

    /// Refuses the request with `error` if every constraint holds (the first such error wins).
    pub fn refuse_after_constraints(&mut self, error: ApiError) {
        self.then.get_or_insert(error);
    }

    /// Whether a constraint has failed so far.
    pub fn has_problems(&self) -> bool {
        !self.problems.is_empty()
    }

    pub fn finish(self) -> Result<(), ApiError> {
        match self.problems.len() {
            0 => self.then.map_or(Ok(()), Err),
            n => Err(ApiError::new(
                ErrorKind::Validation,
                format!(
                    "{n} validation error{} detected: {}",
                    if n == 1 { "" } else { "s" },
                    self.problems.join("; ")
                ),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_errors_are_worded_as_aws_words_them() {
        let mut v = Validation::default();
        v.check(
            false,
            "",
            "streamName",
            "Member must have length greater than or equal to 1",
        );
        v.missing("shardCount");
        let error = v.finish().err().map(|e| e.message).unwrap_or_default();
        assert_eq!(
            error,
            "2 validation errors detected: Value '' at 'streamName' failed to satisfy constraint: \
             Member must have length greater than or equal to 1; Value null at 'shardCount' failed \
             to satisfy constraint: Member must not be null"
        );
    }
}

#[cfg(test)]
mod engine_error_tests {
    use super::*;

    #[test]
    fn a_full_disk_is_a_limit_over_kinesis_as_over_flight() {
        let full = sluice_engine::Error::io(
            "appending",
            "/data/wal",
            std::io::Error::from(std::io::ErrorKind::StorageFull),
        );
        assert_eq!(full.class(), sluice_engine::ErrorClass::StorageFull);
        let api = ApiError::from(full);
        assert_eq!(api.kind, ErrorKind::LimitExceeded);
        assert!(api.message.contains("disk is full"), "{}", api.message);
        let other = sluice_engine::Error::io(
            "reading",
            "/data/x",
            std::io::Error::from(std::io::ErrorKind::PermissionDenied),
        );
        assert_eq!(ApiError::from(other).kind, ErrorKind::InternalFailure);
    }
}
