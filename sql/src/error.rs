//! The SQL layer's error type.

use datafusion::error::DataFusionError;

/// What can go wrong running a statement.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The statement did not parse: "syntax error at line L, column C: …" and the line with a
    /// caret under the place.
    #[error("{0}")]
    Parse(String),

    /// The statement parsed but asks for something that cannot be done (an unknown option, a bad
    /// value), with a message naming the thing.
    #[error("{0}")]
    Plan(String),

    /// The statement names a stream, table, pump or delivery stream that does not exist.
    #[error("{0}")]
    NotFound(String),

    /// The stream store refused (unknown stream, oversized record, …).
    #[error(transparent)]
    Engine(#[from] sluice_engine::Error),

    /// DataFusion refused or failed while planning or running a query.
    #[error("{}", datafusion_message(.0))]
    DataFusion(#[from] DataFusionError),
}

/// DataFusion's message without the layers of context it wraps around errors from our own
/// table providers, so a user sees "stream 'x' does not exist" rather than "External error: …".
fn datafusion_message(error: &DataFusionError) -> String {
    match error.find_root() {
        DataFusionError::External(inner) => inner.to_string(),
        root => plainly(&root.to_string()),
    }
}

/// DataFusion's planner reports SQL it cannot plan with a dump of the parser's structures
/// (`Unsupported ast node TableFunction { expr: … } in create_relation`): say what is not
/// supported, and what to write instead when there is something.
fn plainly(message: &str) -> String {
    let Some((_, rest)) = message.split_once("Unsupported ast node ") else {
        return message.to_string();
    };
    let node: String = rest
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    let place = rest
        .rsplit_once(" in ")
        .map(|(_, place)| place.trim())
        .filter(|place| place.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
    match node.as_str() {
        "TableFunction" => "FROM TABLE(function(…)) is supported only around window functions; write FROM TABLE(TUMBLE(TABLE s, DESCRIPTOR(ts), INTERVAL '1' MINUTE)), or FROM tumble(s, ts, INTERVAL '1' MINUTE) (also HOP and SESSION)".to_string(),
        _ => match place {
            Some("create_relation") => {
                format!("this kind of FROM item ({node}) is not supported; FROM takes streams, tables, subqueries, joins and the window functions tumble, hop and session")
            }
            _ => format!("this SQL is not supported: {node}"),
        },
    }
}

impl From<sluice_delivery::Error> for Error {
    fn from(e: sluice_delivery::Error) -> Self {
        match e {
            sluice_delivery::Error::Engine(e) => Error::Engine(e),
            sluice_delivery::Error::NotFound(m) => Error::NotFound(m),
            other => Error::Plan(other.to_string()),
        }
    }
}

impl From<datafusion::arrow::error::ArrowError> for Error {
    fn from(e: datafusion::arrow::error::ArrowError) -> Self {
        Error::DataFusion(DataFusionError::ArrowError(Box::new(e), None))
    }
}

impl From<datafusion::sql::sqlparser::parser::ParserError> for Error {
    fn from(e: datafusion::sql::sqlparser::parser::ParserError) -> Self {
        Error::Parse(parser_message(&e))
    }
}

/// The parser's own words, without its debug wrapping (`ParserError("…")`).
pub(crate) fn parser_message(e: &datafusion::sql::sqlparser::parser::ParserError) -> String {
    use datafusion::sql::sqlparser::parser::ParserError;
    match e {
        ParserError::TokenizerError(message) | ParserError::ParserError(message) => message.clone(),
        ParserError::RecursionLimitExceeded => {
            "the statement nests expressions too deeply".to_string()
        }
    }
}

/// Wraps an engine error for DataFusion.
pub(crate) fn to_datafusion(e: sluice_engine::Error) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}

/// The SQL layer's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::plainly;

    #[test]
    fn unsupported_sql_is_named_without_the_parsers_structures() {
        let dumped = "This feature is not implemented: Unsupported ast node TableFunction { expr: Function(Function { name: ObjectName([Identifier(Ident { value: \"f\" })]) }), alias: None } in create_relation";
        let said = plainly(dumped);
        assert!(
            said.starts_with("FROM TABLE(function(…)) is supported only around window functions"),
            "{said}"
        );
        assert!(!said.contains('{'), "{said}");
        let other = plainly(
            "This feature is not implemented: Unsupported ast node Pivot { table: … } in create_relation",
        );
        assert!(
            other.starts_with("this kind of FROM item (Pivot) is not supported"),
            "{other}"
        );
        assert_eq!(plainly("No field named x"), "No field named x");
    }
}
