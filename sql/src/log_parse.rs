//! Kinesis Data Analytics' log parsers: `REGEX_LOG_PARSE(line, pattern)`,
//! `FAST_REGEX_LOG_PARSER(line, pattern)` and `VARIABLE_COLUMN_LOG_PARSE(line, columns,
//! delimiter)`. Each returns a row (a struct) whose
//! fields are read as KDA reads them, `T.REC.COLUMN1`:
//!
//! ```sql
//! SELECT STREAM t.rec.column1, t.rec.column2
//! FROM (SELECT STREAM REGEX_LOG_PARSE(sector, '.*([E].).*([R].*)') AS rec FROM s) AS t;
//! ```
//!
//! `REGEX_LOG_PARSE` matches the whole line (as Java's `Matcher.matches`) and returns one
//! `VARCHAR` field per group, `COLUMN1` … `COLUMNn`, or NULL when the line does not match.
//! `VARIABLE_COLUMN_LOG_PARSE` splits the line at the delimiter into a number of `VARCHAR`
//! fields (`COLUMN1` …) or into named, typed fields (`'host TYPE VARCHAR(32), bytes TYPE
//! INTEGER'`). Field names are lower case, so unquoted `T.REC.COLUMN1` finds them.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, StringBuilder, StructArray};
use datafusion::arrow::buffer::NullBuffer;
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Fields};
use datafusion::common::{Result as DFResult, ScalarValue, exec_err, plan_err};
use datafusion::logical_expr::{
    ColumnarValue, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDFImpl, Signature, Volatility,
};

/// Which parser.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LogParser {
    Regex,
    /// `FAST_REGEX_LOG_PARSER`: the same, with lazy quantifiers (each group takes as little as
    /// it can, as KDA's fast parser does).
    FastRegex,
    VariableColumn,
}

/// A log parser as a scalar function returning a struct.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct LogParse {
    parser: LogParser,
    signature: Signature,
}

impl LogParse {
    pub fn new(parser: LogParser) -> Self {
        Self {
            parser,
            signature: Signature::user_defined(Volatility::Immutable),
        }
    }

    fn sql_name(&self) -> &'static str {
        match self.parser {
            LogParser::Regex => "REGEX_LOG_PARSE",
            LogParser::FastRegex => "FAST_REGEX_LOG_PARSER",
            LogParser::VariableColumn => "VARIABLE_COLUMN_LOG_PARSE",
        }
    }

    /// The pattern as this parser matches it: the whole line, lazily for the fast parser.
    fn pattern(&self, pattern: &str) -> String {
        match self.parser {
            LogParser::FastRegex => format!("^(?:{})$", lazy(pattern)),
            _ => format!("^(?:{pattern})$"),
        }
    }

    /// The fields the call returns, from its constant arguments.
    fn fields(&self, constants: &[Option<&ScalarValue>]) -> DFResult<Fields> {
        let text = |i: usize, what: &str| -> DFResult<String> {
            match constants.get(i).copied().flatten() {
                Some(ScalarValue::Utf8(Some(s)) | ScalarValue::Utf8View(Some(s))) => Ok(s.clone()),
                Some(ScalarValue::LargeUtf8(Some(s))) => Ok(s.clone()),
                Some(other) if what == "columns" => Ok(other.to_string()),
                _ => plan_err!("{}: the {what} must be a constant string", self.sql_name()),
            }
        };
        match self.parser {
            LogParser::Regex | LogParser::FastRegex => {
                let pattern = text(1, "pattern")?;
                let groups = regex::Regex::new(&self.pattern(&pattern))
                    .map_err(|e| {
                        datafusion::error::DataFusionError::Plan(format!(
                            "{}: '{pattern}' is not a regular expression: {e}",
                            self.sql_name()
                        ))
                    })?
                    .captures_len()
                    - 1;
                Ok(numbered(groups))
            }
            LogParser::VariableColumn => {
                let columns = text(1, "columns")?;
                if let Ok(n) = columns.trim().parse::<usize>() {
                    return Ok(numbered(n));
                }
                columns
                    .split(',')
                    .map(|description| {
                        let mut words = description.split_whitespace();
                        let (Some(name), Some(kw), Some(sql_type)) =
                            (words.next(), words.next(), words.next())
                        else {
                            return plan_err!(
                                "VARIABLE_COLUMN_LOG_PARSE: '{description}' is not 'name TYPE type'"
                            );
                        };
                        if !kw.eq_ignore_ascii_case("type") {
                            return plan_err!(
                                "VARIABLE_COLUMN_LOG_PARSE: '{description}' is not 'name TYPE type'"
                            );
                        }
                        Ok(Field::new(
                            name.trim_matches('"').to_lowercase(),
                            arrow_type(sql_type)?,
                            true,
                        ))
                    })
                    .collect::<DFResult<Vec<_>>>()
                    .map(Fields::from)
            }
        }
    }
}

/// `pattern` with every `*`, `+`, `?` and `{m,n}` quantifier made lazy.
fn lazy(pattern: &str) -> String {
    let mut out = String::with_capacity(pattern.len() + 8);
    let mut chars = pattern.chars().peekable();
    let mut in_class = false;
    while let Some(c) = chars.next() {
        out.push(c);
        match c {
            '\\' => {
                if let Some(next) = chars.next() {
                    out.push(next);
                }
                continue;
            }
            '[' if !in_class => in_class = true,
            ']' if in_class => in_class = false,
            // `(?` opens a group's flags; it quantifies nothing.
            '?' if out.ends_with("(?") => {}
            '*' | '+' | '?' | '}' if !in_class => {
                // Already lazy (`*?`): keep it as it is.
                match chars.next_if_eq(&'?') {
                    Some(q) => out.push(q),
                    None => out.push('?'),
                }
            }
            _ => {}
        }
    }
    out
}

fn numbered(n: usize) -> Fields {
    (1..=n)
        .map(|i| Field::new(format!("column{i}"), DataType::Utf8, true))
        .collect()
}

fn arrow_type(sql: &str) -> DFResult<DataType> {
    let base = sql.split('(').next().unwrap_or(sql).to_ascii_uppercase();
    Ok(match base.as_str() {
        "VARCHAR" | "CHAR" => DataType::Utf8,
        "INTEGER" | "INT" => DataType::Int32,
        "BIGINT" => DataType::Int64,
        "SMALLINT" => DataType::Int16,
        "TINYINT" => DataType::Int8,
        "DOUBLE" => DataType::Float64,
        "REAL" => DataType::Float32,
        "BOOLEAN" => DataType::Boolean,
        "TIMESTAMP" => {
            DataType::Timestamp(datafusion::arrow::datatypes::TimeUnit::Millisecond, None)
        }
        other => {
            return plan_err!(
                "VARIABLE_COLUMN_LOG_PARSE: a field's type is VARCHAR, INTEGER, BIGINT, SMALLINT, TINYINT, DOUBLE, REAL, BOOLEAN or TIMESTAMP, not {other}"
            );
        }
    })
}

impl ScalarUDFImpl for LogParse {
    fn name(&self) -> &str {
        match self.parser {
            LogParser::Regex => "regex_log_parse",
            LogParser::FastRegex => "fast_regex_log_parser",
            LogParser::VariableColumn => "variable_column_log_parse",
        }
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> DFResult<Vec<DataType>> {
        let arity_ok = match self.parser {
            LogParser::Regex | LogParser::FastRegex => arg_types.len() == 2,
            LogParser::VariableColumn => (3..=5).contains(&arg_types.len()),
        };
        if !arity_ok {
            return plan_err!(
                "{} takes {}, not {} arguments",
                self.sql_name(),
                match self.parser {
                    LogParser::Regex | LogParser::FastRegex => "(line, pattern)",
                    LogParser::VariableColumn => "(line, columns, delimiter [, escape, quote])",
                },
                arg_types.len()
            );
        }
        Ok(arg_types
            .iter()
            .enumerate()
            .map(|(i, t)| match (self.parser, i, t) {
                (LogParser::VariableColumn, 1, t) if t.is_integer() => DataType::Int64,
                _ => DataType::Utf8,
            })
            .collect())
    }

    fn return_type(&self, _arg_types: &[DataType]) -> DFResult<DataType> {
        plan_err!(
            "{} needs its constant arguments to know its fields",
            self.sql_name()
        )
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> DFResult<FieldRef> {
        Ok(Arc::new(Field::new(
            self.name(),
            DataType::Struct(self.fields(args.scalar_arguments)?),
            true,
        )))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DFResult<ColumnarValue> {
        let DataType::Struct(fields) = args.return_field.data_type().clone() else {
            return exec_err!("{} returns a row", self.sql_name());
        };
        let rows = args.number_rows;
        let arrays = args
            .args
            .iter()
            .map(|a| a.to_array(rows))
            .collect::<DFResult<Vec<_>>>()?;
        let constant = |i: usize| -> DFResult<String> {
            match args.args.get(i) {
                Some(ColumnarValue::Scalar(s)) => Ok(s.to_string()),
                _ => exec_err!("{}: argument {} must be a constant", self.sql_name(), i + 1),
            }
        };
        let lines = cast(&arrays[0], &DataType::Utf8)?;
        let lines = lines.as_string::<i32>();
        let mut builders: Vec<StringBuilder> =
            fields.iter().map(|_| StringBuilder::new()).collect();
        let mut valid = Vec::with_capacity(rows);
        match self.parser {
            LogParser::Regex | LogParser::FastRegex => {
                let pattern = constant(1)?;
                let Ok(re) = regex::Regex::new(&self.pattern(&pattern)) else {
                    return exec_err!(
                        "{}: '{pattern}' is not a regular expression",
                        self.sql_name()
                    );
                };
                for row in 0..rows {
                    let captures = lines
                        .is_valid(row)
                        .then(|| re.captures(lines.value(row)))
                        .flatten();
                    valid.push(captures.is_some());
                    for (i, builder) in builders.iter_mut().enumerate() {
                        builder.append_option(
                            captures
                                .as_ref()
                                .and_then(|c| c.get(i + 1))
                                .map(|m| m.as_str()),
                        );
                    }
                }
            }
            LogParser::VariableColumn => {
                let delimiter = constant(2)?;
                if delimiter.is_empty() {
                    return exec_err!("VARIABLE_COLUMN_LOG_PARSE: the delimiter is empty");
                }
                for row in 0..rows {
                    if lines.is_null(row) {
                        valid.push(false);
                        builders.iter_mut().for_each(|b| b.append_null());
                        continue;
                    }
                    valid.push(true);
                    let mut parts = lines.value(row).split(delimiter.as_str());
                    for builder in &mut builders {
                        builder.append_option(parts.next());
                    }
                }
            }
        }
        let columns = builders
            .iter_mut()
            .zip(fields.iter())
            .map(|(builder, field)| {
                let text: ArrayRef = Arc::new(builder.finish());
                Ok(cast(&text, field.data_type())?)
            })
            .collect::<DFResult<Vec<_>>>()?;
        let parsed = StructArray::try_new(fields, columns, Some(NullBuffer::from(valid)))?;
        Ok(ColumnarValue::Array(Arc::new(parsed)))
    }
}

#[cfg(test)]
mod tests {
    use super::lazy;

    #[test]
    fn quantifiers_become_lazy_outside_classes_and_escapes() {
        assert_eq!(lazy("(.*)-(.+)"), "(.*?)-(.+?)");
        assert_eq!(lazy("[a*]+\\*x{2,3}"), "[a*]+?\\*x{2,3}?");
        assert_eq!(lazy("(?:a)b*?"), "(?:a)b*?");
    }
}
