//! Sluice's errors as gRPC statuses: every variant is matched, so a new one is a compile error
//! here rather than a silent `Internal`.

use datafusion::error::DataFusionError;
use tonic::{Code, Status};

/// The status a client sees for a failed statement, with the error's own message.
pub fn sql_status(error: sluice_sql::Error) -> Status {
    let code = match &error {
        sluice_sql::Error::Parse(_) | sluice_sql::Error::Plan(_) => Code::InvalidArgument,
        sluice_sql::Error::NotFound(_) => Code::NotFound,
        sluice_sql::Error::Engine(e) => engine_code(e),
        sluice_sql::Error::DataFusion(e) => datafusion_code(e),
    };
    Status::new(code, error.to_string())
}

/// The status for an engine error.
pub fn engine_status(error: sluice_engine::Error) -> Status {
    Status::new(engine_code(&error), error.to_string())
}

/// The status for a DataFusion error (a query failing while it streams).
pub fn datafusion_status(error: DataFusionError) -> Status {
    sql_status(sluice_sql::Error::DataFusion(error))
}

fn engine_code(error: &sluice_engine::Error) -> Code {
    use sluice_engine::ErrorClass as C;
    match error.class() {
        C::NotFound => Code::NotFound,
        C::AlreadyExists => Code::AlreadyExists,
        C::InUse => Code::FailedPrecondition,
        C::LimitExceeded | C::StorageFull => Code::ResourceExhausted,
        C::InvalidInput => Code::InvalidArgument,
        C::DataLoss => Code::DataLoss,
        C::Unavailable => Code::Unavailable,
        C::Internal => Code::Internal,
    }
}

/// As InfluxDB's `datafusion_error_to_tonic_code`: the user's mistakes are `InvalidArgument`,
/// the server's are `Internal`, and errors from Sluice's own tables keep their meaning.
fn datafusion_code(error: &DataFusionError) -> Code {
    match error.find_root() {
        DataFusionError::External(inner) => {
            if let Some(engine) = inner.downcast_ref::<sluice_engine::Error>() {
                engine_code(engine)
            } else if let Some(sql) = inner.downcast_ref::<sluice_sql::Error>() {
                match sql {
                    sluice_sql::Error::Parse(_) | sluice_sql::Error::Plan(_) => {
                        Code::InvalidArgument
                    }
                    sluice_sql::Error::NotFound(_) => Code::NotFound,
                    sluice_sql::Error::Engine(e) => engine_code(e),
                    sluice_sql::Error::DataFusion(e) => datafusion_code(e),
                }
            } else {
                Code::Internal
            }
        }
        DataFusionError::Plan(_)
        | DataFusionError::SQL(..)
        | DataFusionError::SchemaError(..)
        | DataFusionError::Configuration(_)
        | DataFusionError::Substrait(_)
        // Our sinks and tables report bad rows (a NULL partition key, a bad cast) this way.
        | DataFusionError::Execution(_)
        | DataFusionError::ArrowError(..) => Code::InvalidArgument,
        DataFusionError::NotImplemented(_) => Code::Unimplemented,
        DataFusionError::ResourcesExhausted(_) => Code::ResourceExhausted,
        DataFusionError::ObjectStore(_) => Code::Unavailable,
        DataFusionError::ParquetError(_)
        | DataFusionError::IoError(_)
        | DataFusionError::Internal(_)
        | DataFusionError::ExecutionJoin(_)
        | DataFusionError::Ffi(_) => Code::Internal,
        // find_root unwraps these; should one remain, its first error decides.
        DataFusionError::Context(_, inner)
        | DataFusionError::Diagnostic(_, inner) => datafusion_code(inner),
        DataFusionError::Shared(inner) => datafusion_code(inner),
        DataFusionError::Collection(errors) => {
            errors.first().map_or(Code::Internal, datafusion_code)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_mistakes_are_invalid_arguments_and_missing_things_not_found() {
        let parse = sql_status(sluice_sql::Error::Parse("expected ')'".into()));
        assert_eq!(parse.code(), Code::InvalidArgument);
        assert!(parse.message().contains("expected ')'"));
        let missing = sql_status(sluice_sql::Error::Engine(
            sluice_engine::Error::StreamNotFound("clicks".into()),
        ));
        assert_eq!(missing.code(), Code::NotFound);
        assert_eq!(missing.message(), "stream 'clicks' does not exist");
        let wrapped = datafusion_status(DataFusionError::Context(
            "scanning".into(),
            Box::new(DataFusionError::External(Box::new(
                sluice_engine::Error::StreamAlreadyExists("x".into()),
            ))),
        ));
        assert_eq!(wrapped.code(), Code::AlreadyExists);
        assert_eq!(
            datafusion_status(DataFusionError::Internal("bug".into())).code(),
            Code::Internal
        );
    }
}
