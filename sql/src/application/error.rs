//! The kinesisanalytics API's exceptions: what went wrong with an application request, in the
//! vocabulary AWS answers with.

/// The exception types of the Kinesis Analytics (SQL) API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    InvalidArgument,
    ResourceNotFound,
    ResourceInUse,
    ConcurrentModification,
    CodeValidation,
    UnsupportedOperation,
    InvalidApplicationConfiguration,
    UnableToDetectSchema,
    LimitExceeded,
    TooManyTags,
    /// Something on Sluice's side (a disk that cannot be written).
    ServiceUnavailable,
}

impl ErrorKind {
    /// The `__type` AWS gives it.
    pub fn type_name(self) -> &'static str {
        match self {
            Self::InvalidArgument => "InvalidArgumentException",
            Self::ResourceNotFound => "ResourceNotFoundException",
            Self::ResourceInUse => "ResourceInUseException",
            Self::ConcurrentModification => "ConcurrentModificationException",
            Self::CodeValidation => "CodeValidationException",
            Self::UnsupportedOperation => "UnsupportedOperationException",
            Self::InvalidApplicationConfiguration => "InvalidApplicationConfigurationException",
            Self::UnableToDetectSchema => "UnableToDetectSchemaException",
            Self::LimitExceeded => "LimitExceededException",
            Self::TooManyTags => "TooManyTagsException",
            Self::ServiceUnavailable => "ServiceUnavailableException",
        }
    }

    /// The HTTP status it comes with.
    pub fn status(self) -> u16 {
        match self {
            Self::ServiceUnavailable => 503,
            _ => 400,
        }
    }
}

/// A refused or failed application request.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}: {message}", kind.type_name())]
pub struct ApplicationError {
    pub kind: ErrorKind,
    pub message: String,
}

impl ApplicationError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    /// `InvalidArgumentException`.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidArgument, message)
    }

    /// `ServiceUnavailableException`, for failures on Sluice's side.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::ServiceUnavailable, message)
    }
}
