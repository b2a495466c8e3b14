//! Kinesis Data Analytics' log parsers, each a function from a line to a row (a struct)
//! whose fields are read as KDA reads them, `T.REC.COLUMN1`:
//!
//! ```sql
//! SELECT STREAM t.rec.column1, t.rec.column2
//! FROM (SELECT STREAM REGEX_LOG_PARSE(sector, '.*([E].).*([R].*)') AS rec FROM s) AS t;
//! ```
//!
//! - `REGEX_LOG_PARSE(line, pattern)` matches the whole line (as Java's `Matcher.matches`)
//!   and returns one `VARCHAR` field per group, `COLUMN1` … `COLUMNn`;
//!   `FAST_REGEX_LOG_PARSER` does the same with lazy quantifiers, as KDA's fast parser does.
//! - `VARIABLE_COLUMN_LOG_PARSE(line, columns, delimiter [, escape, quote])` splits the line
//!   at the delimiter into a number of `VARCHAR` fields or into named, typed fields (`'host
//!   TYPE VARCHAR(32), bytes TYPE INTEGER'`); an escape character or quotes keep a delimiter
//!   inside a field.
//! - `FIXED_COLUMN_LOG_PARSE(line, columns)` cuts fixed-width fields (`'a TYPE INTEGER START
//!   0 FOR 3, b TYPE BOOLEAN START 4'`) and casts them to their types.
//! - `W3C_LOG_PARSE(line, format)` reads web server logs in an Apache or predefined format.
//! - `SYS_LOG_PARSE(line)` reads syslog lines, the year taken from the engine clock.
//!
//! A line that does not have the shape asked for gives NULL (not an error: one bad line must
//! not stop a stream). Field names are lower case, so unquoted `T.REC.COLUMN1` finds them.

mod columns;
mod syslog;
mod w3c;

use std::borrow::Cow;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, StringBuilder, StructArray};
use datafusion::arrow::buffer::NullBuffer;
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Fields};
use datafusion::common::{Result as DFResult, ScalarValue, exec_err, plan_err};
use datafusion::logical_expr::{
    ColumnarValue, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDFImpl, Signature, Volatility,
};
use sluice_engine::Clock;

use columns::{ColumnDescription, parse_descriptions};
use w3c::W3cFormat;

/// Which parser.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LogParser {
    Regex,
    /// `FAST_REGEX_LOG_PARSER`: the same, with lazy quantifiers (each group takes as little as
    /// it can, as KDA's fast parser does).
    FastRegex,
    VariableColumn,
    FixedColumn,
    W3c,
    /// `SYS_LOG_PARSE`, whose lines carry no year: the engine's clock supplies it.
    SysLog,
}

impl LogParser {
    fn sql_name(self) -> &'static str {
        match self {
            LogParser::Regex => "REGEX_LOG_PARSE",
            LogParser::FastRegex => "FAST_REGEX_LOG_PARSER",
            LogParser::VariableColumn => "VARIABLE_COLUMN_LOG_PARSE",
            LogParser::FixedColumn => "FIXED_COLUMN_LOG_PARSE",
            LogParser::W3c => "W3C_LOG_PARSE",
            LogParser::SysLog => "SYS_LOG_PARSE",
        }
    }

    fn arguments(self) -> &'static str {
        match self {
            LogParser::Regex | LogParser::FastRegex => "(line, pattern)",
            LogParser::VariableColumn => "(line, columns, delimiter [, escape, quote])",
            LogParser::FixedColumn => "(line, columns)",
            LogParser::W3c => "(line, format)",
            LogParser::SysLog => "(line)",
        }
    }
}

/// A log parser as a scalar function returning a struct.
#[derive(Debug)]
pub struct LogParse {
    parser: LogParser,
    signature: Signature,
    clock: Arc<dyn Clock>,
}

impl PartialEq for LogParse {
    fn eq(&self, other: &Self) -> bool {
        self.parser == other.parser && Arc::ptr_eq(&self.clock, &other.clock)
    }
}

impl Eq for LogParse {}

impl std::hash::Hash for LogParse {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.parser.hash(state);
    }
}

/// A parser made ready from its constant arguments: how it reads a line.
enum Compiled {
    Regex(regex::Regex),
    Variable(Splitter),
    Fixed(Vec<ColumnDescription>),
    W3c(W3cFormat),
    SysLog { now_ms: i64 },
}

/// A parser's fields and how it reads a line.
struct Layout {
    fields: Fields,
    compiled: Compiled,
}

impl Layout {
    /// Reads `line` into `out`, one text per field (what the field's type casts from); false
    /// when the line does not have the parser's shape.
    fn parse<'a>(&self, line: &'a str, out: &mut [Option<Cow<'a, str>>]) -> bool {
        match &self.compiled {
            Compiled::Regex(re) => {
                let Some(captures) = re.captures(line) else {
                    return false;
                };
                for (i, slot) in out.iter_mut().enumerate() {
                    *slot = captures.get(i + 1).map(|m| Cow::Borrowed(m.as_str()));
                }
                true
            }
            Compiled::Variable(splitter) => {
                let mut parts = splitter.split(line).into_iter();
                for slot in out.iter_mut() {
                    *slot = parts.next();
                }
                true
            }
            Compiled::Fixed(columns) => {
                let chars: Vec<char> = line.chars().collect();
                for (column, slot) in columns.iter().zip(out.iter_mut()) {
                    let start = column.start.unwrap_or(0);
                    let end = column
                        .length
                        .map_or(chars.len(), |n| (start + n).min(chars.len()));
                    *slot = chars
                        .get(start..end.max(start))
                        .filter(|_| start < chars.len())
                        .and_then(|c| column.normalize(&c.iter().collect::<String>()))
                        .map(Cow::Owned);
                }
                true
            }
            Compiled::W3c(format) => format.parse(line, out),
            Compiled::SysLog { now_ms } => syslog::parse(line, *now_ms, out),
        }
    }
}

impl LogParse {
    pub fn new(parser: LogParser, clock: Arc<dyn Clock>) -> Self {
        // A syslog line's year depends on when it is read.
        let volatility = match parser {
            LogParser::SysLog => Volatility::Volatile,
            _ => Volatility::Immutable,
        };
        Self {
            parser,
            signature: Signature::user_defined(volatility),
            clock,
        }
    }

    fn sql_name(&self) -> &'static str {
        self.parser.sql_name()
    }

    /// The parser's layout, from its constant arguments.
    fn layout(&self, constants: &[Option<&ScalarValue>]) -> DFResult<Layout> {
        let name = self.sql_name();
        let text = |i: usize, what: &str| -> DFResult<String> {
            match constants.get(i).copied().flatten() {
                Some(ScalarValue::Utf8(Some(s)) | ScalarValue::Utf8View(Some(s))) => Ok(s.clone()),
                Some(ScalarValue::LargeUtf8(Some(s))) => Ok(s.clone()),
                Some(other) if what == "columns" && !other.is_null() => Ok(other.to_string()),
                _ => plan_err!("{name}: the {what} must be a constant string"),
            }
        };
        let optional = |i: usize, what: &str| -> DFResult<Option<String>> {
            match constants.get(i) {
                None => Ok(None),
                Some(_) => text(i, what).map(Some),
            }
        };
        Ok(match self.parser {
            LogParser::Regex | LogParser::FastRegex => {
                let pattern = text(1, "pattern")?;
                let anchored = match self.parser {
                    LogParser::FastRegex => format!("^(?:{})$", lazy(&pattern)),
                    _ => format!("^(?:{pattern})$"),
                };
                let re = regex::Regex::new(&anchored).map_err(|e| {
                    datafusion::error::DataFusionError::Plan(format!(
                        "{name}: '{pattern}' is not a regular expression: {e}"
                    ))
                })?;
                Layout {
                    fields: numbered(re.captures_len() - 1),
                    compiled: Compiled::Regex(re),
                }
            }
            LogParser::VariableColumn => {
                let columns = text(1, "columns")?;
                let fields = match columns.trim().parse::<usize>() {
                    Ok(n) => numbered(n),
                    Err(_) => typed(&parse_descriptions(name, &columns, false)?),
                };
                let delimiter = text(2, "delimiter")?;
                if delimiter.is_empty() {
                    return plan_err!("{name}: the delimiter is empty");
                }
                let escape = optional(3, "escape")?.and_then(|e| e.chars().next());
                let quote = optional(4, "quote")?.and_then(|q| {
                    let mut chars = q.chars();
                    let open = chars.next()?;
                    Some((open, chars.next().unwrap_or(open)))
                });
                Layout {
                    fields,
                    compiled: Compiled::Variable(Splitter {
                        delimiter,
                        escape,
                        quote,
                    }),
                }
            }
            LogParser::FixedColumn => {
                let columns = parse_descriptions(name, &text(1, "columns")?, true)?;
                Layout {
                    fields: typed(&columns),
                    compiled: Compiled::Fixed(columns),
                }
            }
            LogParser::W3c => {
                let format = W3cFormat::compile(&text(1, "format")?)?;
                Layout {
                    fields: format.fields(),
                    compiled: Compiled::W3c(format),
                }
            }
            LogParser::SysLog => Layout {
                fields: syslog::fields(),
                compiled: Compiled::SysLog {
                    now_ms: self.clock.now_millis(),
                },
            },
        })
    }
}

/// Splits a line at a delimiter; an escape character takes the next character as it is, and
/// text between quotes keeps its delimiters.
struct Splitter {
    delimiter: String,
    escape: Option<char>,
    quote: Option<(char, char)>,
}

impl Splitter {
    fn split<'a>(&self, line: &'a str) -> Vec<Cow<'a, str>> {
        if self.escape.is_none() && self.quote.is_none() {
            return line
                .split(self.delimiter.as_str())
                .map(Cow::Borrowed)
                .collect();
        }
        let mut fields = vec![String::new()];
        let mut in_quotes = false;
        let mut rest = line;
        while let Some(c) = rest.chars().next() {
            let field = fields.last_mut();
            match (self.quote, in_quotes) {
                _ if Some(c) == self.escape => {
                    rest = &rest[c.len_utf8()..];
                    if let (Some(next), Some(field)) = (rest.chars().next(), field) {
                        field.push(next);
                        rest = &rest[next.len_utf8()..];
                    }
                    continue;
                }
                (Some((_, close)), true) if c == close => in_quotes = false,
                (Some((open, _)), false) if c == open => in_quotes = true,
                (_, false) if rest.starts_with(self.delimiter.as_str()) => {
                    rest = &rest[self.delimiter.len()..];
                    fields.push(String::new());
                    continue;
                }
                _ => {
                    if let Some(field) = field {
                        field.push(c);
                    }
                }
            }
            rest = &rest[c.len_utf8()..];
        }
        fields.into_iter().map(Cow::Owned).collect()
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

fn typed(columns: &[ColumnDescription]) -> Fields {
    columns
        .iter()
        .map(|c| Field::new(&c.name, c.data_type.clone(), true))
        .collect()
}

impl ScalarUDFImpl for LogParse {
    fn name(&self) -> &str {
        match self.parser {
            LogParser::Regex => "regex_log_parse",
            LogParser::FastRegex => "fast_regex_log_parser",
            LogParser::VariableColumn => "variable_column_log_parse",
            LogParser::FixedColumn => "fixed_column_log_parse",
            LogParser::W3c => "w3c_log_parse",
            LogParser::SysLog => "sys_log_parse",
        }
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> DFResult<Vec<DataType>> {
        let arity_ok = match self.parser {
            LogParser::Regex | LogParser::FastRegex | LogParser::FixedColumn | LogParser::W3c => {
                arg_types.len() == 2
            }
            LogParser::VariableColumn => (3..=5).contains(&arg_types.len()),
            LogParser::SysLog => arg_types.len() == 1,
        };
        if !arity_ok {
            return plan_err!(
                "{} takes {}, not {} arguments",
                self.sql_name(),
                self.parser.arguments(),
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
            DataType::Struct(self.layout(args.scalar_arguments)?.fields),
            true,
        )))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DFResult<ColumnarValue> {
        let DataType::Struct(fields) = args.return_field.data_type().clone() else {
            return exec_err!("{} returns a row", self.sql_name());
        };
        let rows = args.number_rows;
        let mut constants = Vec::with_capacity(args.args.len());
        for (i, arg) in args.args.iter().enumerate().skip(1) {
            match arg {
                ColumnarValue::Scalar(s) => constants.push(s),
                ColumnarValue::Array(_) => {
                    return exec_err!("{}: argument {} must be a constant", self.sql_name(), i + 1);
                }
            }
        }
        let mut constant_refs: Vec<Option<&ScalarValue>> = vec![None];
        constant_refs.extend(constants.iter().map(|s| Some(*s)));
        let layout = self.layout(&constant_refs)?;
        let lines = cast(&args.args[0].to_array(rows)?, &DataType::Utf8)?;
        let lines = lines.as_string::<i32>();
        let mut builders: Vec<StringBuilder> =
            fields.iter().map(|_| StringBuilder::new()).collect();
        // The fields' texts borrow from the lines where they can.
        let mut texts: Vec<Option<Cow<'_, str>>> = vec![None; fields.len()];
        let mut valid = Vec::with_capacity(rows);
        for row in 0..rows {
            texts.iter_mut().for_each(|t| *t = None);
            let parsed = lines.is_valid(row) && layout.parse(lines.value(row), &mut texts);
            valid.push(parsed);
            for (builder, text) in builders.iter_mut().zip(&texts) {
                builder.append_option(text.as_deref().filter(|_| parsed));
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
    use super::{Splitter, lazy};

    #[test]
    fn quantifiers_become_lazy_outside_classes_and_escapes() {
        assert_eq!(lazy("(.*)-(.+)"), "(.*?)-(.+?)");
        assert_eq!(lazy("[a*]+\\*x{2,3}"), "[a*]+?\\*x{2,3}?");
        assert_eq!(lazy("(?:a)b*?"), "(?:a)b*?");
    }

    #[test]
    fn escapes_and_quotes_keep_delimiters_inside_a_field() {
        let splitter = Splitter {
            delimiter: ",".into(),
            escape: Some('\\'),
            quote: Some(('"', '"')),
        };
        assert_eq!(splitter.split("a,b"), vec!["a", "b"]);
        assert_eq!(splitter.split("a\\,b,c"), vec!["a,b", "c"]);
        assert_eq!(splitter.split("\"x, y\",z,"), vec!["x, y", "z", ""]);
        let brackets = Splitter {
            delimiter: " | ".into(),
            escape: None,
            quote: Some(('[', ']')),
        };
        assert_eq!(brackets.split("[a | b] | c"), vec!["a | b", "c"]);
    }
}
