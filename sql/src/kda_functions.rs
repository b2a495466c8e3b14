//! Kinesis Data Analytics' functions that DataFusion does not have, or spells otherwise.
//!
//! - `FLOOR(t TO unit)` / `CEIL(t TO unit)` round a timestamp (outside a `GROUP BY` window,
//!   where [`crate::kda`] makes them windows), and `STEP(t BY interval)` rounds down to a
//!   multiple of the interval;
//! - `CHAR_TO_TIMESTAMP('yyyy-MM-dd HH:mm:ss', text)` and `TIMESTAMP_TO_CHAR(format, t)` take
//!   Java's date format patterns, as KDA does;
//! - `TSDIFF(t1, t2)` is `t1 - t2` in milliseconds;
//! - `CURRENT_ROW_TIMESTAMP` is the time (on the engine's clock) a row is processed.
//!
//! `POSITION(x IN y)`, `SUBSTRING(s FROM i FOR n)`, `TRIM(BOTH c FROM s)`, `INITCAP`, `LOWER`,
//! `UPPER`, `CHAR_LENGTH` are DataFusion's own.

use std::ops::ControlFlow;
use std::sync::Arc;

use chrono::{DateTime, NaiveDateTime};
use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, Int64Array, StringArray, TimestampMillisecondArray,
};
use datafusion::arrow::datatypes::{DataType, TimeUnit, TimestampMillisecondType};
use datafusion::common::{Result as DFResult, ScalarValue, exec_err, plan_err};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility, create_udf,
};
use datafusion::sql::parser::Statement as DFStatement;
use datafusion::sql::sqlparser::ast::{
    CeilFloorKind, DateTimeField, Expr, FunctionArg, FunctionArgExpr, FunctionArguments,
    visit_expressions_mut,
};
use sluice_engine::Clock;

use crate::log_parse::{LogParse, LogParser};

use crate::error::Result;

/// Rewrites KDA's spellings of time rounding and `CURRENT_ROW_TIMESTAMP` into calls DataFusion
/// plans. Run after [`crate::kda::rewrite_step_windows`], which takes the windows first.
pub fn rewrite_kda_functions(statement: &mut DFStatement) -> Result<()> {
    let DFStatement::Statement(inner) = statement else {
        return Ok(());
    };
    rewrite_in(inner.as_mut())
}

/// [`rewrite_kda_functions`] for one expression.
pub fn rewrite_kda_expr(expr: &mut Expr) -> Result<()> {
    rewrite_in(expr)
}

fn rewrite_in<V: datafusion::sql::sqlparser::ast::VisitMut>(node: &mut V) -> Result<()> {
    let outcome = visit_expressions_mut(node, |expr| {
        let replacement = match expr {
            Expr::Floor {
                expr: time,
                field: CeilFloorKind::DateTimeField(unit),
            } => unit_name(unit).map(|unit| format!("date_trunc('{unit}', {time})")),
            Expr::Ceil {
                expr: time,
                field: CeilFloorKind::DateTimeField(unit),
            } => unit_name(unit).map(|unit| {
                format!(
                    "CASE WHEN date_trunc('{unit}', {time}) = {time} THEN date_trunc('{unit}', {time}) ELSE date_trunc('{unit}', {time}) + INTERVAL '1' {unit} END"
                )
            }),
            Expr::Function(f)
                if f.name.to_string().eq_ignore_ascii_case("step") && f.over.is_none() =>
            {
                match &f.args {
                    FunctionArguments::List(list) => match list.args.as_slice() {
                        [
                            FunctionArg::Unnamed(FunctionArgExpr::Expr(time)),
                            FunctionArg::Unnamed(FunctionArgExpr::Expr(size)),
                        ] => Some(format!(
                            "date_bin({size}, {time}, TIMESTAMP '1970-01-01 00:00:00')"
                        )),
                        _ => None,
                    },
                    _ => None,
                }
            }
            // MONOTONIC(x) tells KDA that x only grows; Sluice needs no such promise.
            Expr::Function(f)
                if f.name.to_string().eq_ignore_ascii_case("monotonic") && f.over.is_none() =>
            {
                match &f.args {
                    FunctionArguments::List(list) => match list.args.as_slice() {
                        [FunctionArg::Unnamed(FunctionArgExpr::Expr(inner))] => {
                            Some(format!("({inner})"))
                        }
                        _ => None,
                    },
                    _ => None,
                }
            }
            Expr::Identifier(ident)
                if ident.quote_style.is_none()
                    && ident.value.eq_ignore_ascii_case("current_row_timestamp") =>
            {
                Some("current_row_timestamp()".to_string())
            }
            _ => None,
        };
        if let Some(sql) = replacement {
            match crate::kda::parse_expr(&sql) {
                Ok(parsed) => *expr = parsed,
                Err(e) => return ControlFlow::Break(e),
            }
        }
        ControlFlow::Continue(())
    });
    match outcome {
        ControlFlow::Break(e) => Err(e),
        ControlFlow::Continue(()) => Ok(()),
    }
}

fn unit_name(unit: &DateTimeField) -> Option<&'static str> {
    Some(match unit {
        DateTimeField::Second | DateTimeField::Seconds => "SECOND",
        DateTimeField::Minute | DateTimeField::Minutes => "MINUTE",
        DateTimeField::Hour | DateTimeField::Hours => "HOUR",
        DateTimeField::Day | DateTimeField::Days => "DAY",
        DateTimeField::Week(_) | DateTimeField::Weeks => "WEEK",
        DateTimeField::Month | DateTimeField::Months => "MONTH",
        DateTimeField::Year | DateTimeField::Years => "YEAR",
        _ => return None,
    })
}

/// The functions of this module, `CURRENT_ROW_TIMESTAMP` reading `clock`.
pub fn kda_udfs(clock: Arc<dyn Clock>) -> Vec<ScalarUDF> {
    let millis = DataType::Timestamp(TimeUnit::Millisecond, None);
    vec![
        ScalarUDF::from(Coerced::new(
            "char_to_timestamp",
            vec![DataType::Utf8, DataType::Utf8],
            millis.clone(),
            char_to_timestamp,
        )),
        ScalarUDF::from(Coerced::new(
            "timestamp_to_char",
            vec![DataType::Utf8, millis.clone()],
            DataType::Utf8,
            timestamp_to_char,
        )),
        ScalarUDF::from(Coerced::new(
            "tsdiff",
            vec![millis.clone(), millis.clone()],
            DataType::Int64,
            tsdiff,
        )),
    ]
    .into_iter()
    .chain(
        [
            LogParser::Regex,
            LogParser::FastRegex,
            LogParser::VariableColumn,
            LogParser::FixedColumn,
            LogParser::W3c,
            LogParser::SysLog,
        ]
        .map(|parser| ScalarUDF::from(LogParse::new(parser, clock.clone()))),
    )
    .chain([create_udf(
        "current_row_timestamp",
        vec![],
        millis,
        Volatility::Volatile,
        Arc::new(move |_args: &[ColumnarValue]| {
            Ok(ColumnarValue::Scalar(ScalarValue::TimestampMillisecond(
                Some(clock.now_millis()),
                None,
            )))
        }),
    )])
    .collect()
}

/// A function whose arguments are cast to fixed types (any timestamp unit, any string type).
#[derive(Debug)]
struct Coerced {
    name: &'static str,
    args: Vec<DataType>,
    returns: DataType,
    signature: Signature,
    body: fn(&[ColumnarValue]) -> DFResult<ColumnarValue>,
}

impl Coerced {
    fn new(
        name: &'static str,
        args: Vec<DataType>,
        returns: DataType,
        body: fn(&[ColumnarValue]) -> DFResult<ColumnarValue>,
    ) -> Self {
        Self {
            name,
            args,
            returns,
            signature: Signature::user_defined(Volatility::Immutable),
            body,
        }
    }
}

// Functions are told apart by name (each name is registered once).
impl PartialEq for Coerced {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

impl Eq for Coerced {}

impl std::hash::Hash for Coerced {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.name.hash(state);
    }
}

impl ScalarUDFImpl for Coerced {
    fn name(&self) -> &str {
        self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> DFResult<DataType> {
        Ok(self.returns.clone())
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> DFResult<Vec<DataType>> {
        if arg_types.len() != self.args.len() {
            return plan_err!(
                "{}() takes {} arguments, not {}",
                self.name.to_uppercase(),
                self.args.len(),
                arg_types.len()
            );
        }
        Ok(self.args.clone())
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DFResult<ColumnarValue> {
        (self.body)(&args.args)
    }
}

/// The arguments as arrays of one length (scalars repeated).
fn arrays(args: &[ColumnarValue]) -> DFResult<Vec<ArrayRef>> {
    let rows = args
        .iter()
        .find_map(|a| match a {
            ColumnarValue::Array(array) => Some(array.len()),
            ColumnarValue::Scalar(_) => None,
        })
        .unwrap_or(1);
    args.iter().map(|a| a.to_array(rows)).collect()
}

fn char_to_timestamp(args: &[ColumnarValue]) -> DFResult<ColumnarValue> {
    let arrays = arrays(args)?;
    let (formats, texts) = (arrays[0].as_string::<i32>(), arrays[1].as_string::<i32>());
    let mut out = Vec::with_capacity(texts.len());
    for row in 0..texts.len() {
        if formats.is_null(row) || texts.is_null(row) {
            out.push(None);
            continue;
        }
        let pattern = java_pattern(formats.value(row));
        let text = texts.value(row);
        let parsed = NaiveDateTime::parse_from_str(text, &pattern)
            .map(|t| t.and_utc().timestamp_millis())
            .or_else(|_| {
                chrono::NaiveDate::parse_from_str(text, &pattern).map(|d| {
                    d.and_hms_opt(0, 0, 0)
                        .map_or(0, |t| t.and_utc().timestamp_millis())
                })
            });
        match parsed {
            Ok(ms) => out.push(Some(ms)),
            Err(e) => {
                return exec_err!(
                    "CHAR_TO_TIMESTAMP('{}', '{text}'): the text does not match the format ({e})",
                    formats.value(row)
                );
            }
        }
    }
    Ok(ColumnarValue::Array(Arc::new(
        TimestampMillisecondArray::from(out),
    )))
}

fn timestamp_to_char(args: &[ColumnarValue]) -> DFResult<ColumnarValue> {
    let arrays = arrays(args)?;
    let formats = arrays[0].as_string::<i32>();
    let times = arrays[1].as_primitive::<TimestampMillisecondType>();
    let out: StringArray = (0..times.len())
        .map(|row| {
            if formats.is_null(row) || times.is_null(row) {
                return None;
            }
            DateTime::from_timestamp_millis(times.value(row))
                .map(|t| t.format(&java_pattern(formats.value(row))).to_string())
        })
        .collect();
    Ok(ColumnarValue::Array(Arc::new(out)))
}

fn tsdiff(args: &[ColumnarValue]) -> DFResult<ColumnarValue> {
    let arrays = arrays(args)?;
    let (a, b) = (
        arrays[0].as_primitive::<TimestampMillisecondType>(),
        arrays[1].as_primitive::<TimestampMillisecondType>(),
    );
    let out: Int64Array = (0..a.len())
        .map(|row| (a.is_valid(row) && b.is_valid(row)).then(|| a.value(row) - b.value(row)))
        .collect();
    Ok(ColumnarValue::Array(Arc::new(out)))
}

/// A Java `SimpleDateFormat` pattern (what KDA takes) as a chrono format string.
pub fn java_pattern(java: &str) -> String {
    let mut out = String::new();
    let chars: Vec<char> = java.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '\'' {
            // Quoted literal text; '' is a quote.
            i += 1;
            while i < chars.len() && chars[i] != '\'' {
                push_literal(&mut out, chars[i]);
                i += 1;
            }
            if i + 1 < chars.len() && chars[i + 1] == '\'' {
                out.push('\'');
            }
            i += 1;
            continue;
        }
        if !c.is_ascii_alphabetic() {
            push_literal(&mut out, c);
            i += 1;
            continue;
        }
        let run = chars[i..].iter().take_while(|&&d| d == c).count();
        out.push_str(match (c, run) {
            ('y', 2) => "%y",
            ('y', _) => "%Y",
            ('M', 1 | 2) => "%m",
            ('M', 3) => "%b",
            ('M', _) => "%B",
            ('d', _) => "%d",
            ('H', _) => "%H",
            ('h', _) => "%I",
            ('m', _) => "%M",
            ('s', _) => "%S",
            ('S', _) => "%3f",
            ('a', _) => "%p",
            ('E', 1..=3) => "%a",
            ('E', _) => "%A",
            ('D', _) => "%j",
            ('Z', _) => "%z",
            ('X', _) => "%:z",
            _ => "",
        });
        i += run;
    }
    out
}

fn push_literal(out: &mut String, c: char) {
    if c == '%' {
        out.push_str("%%");
    } else {
        out.push(c);
    }
}

#[cfg(test)]
mod tests {
    use super::java_pattern;

    #[test]
    fn java_patterns_become_chrono_formats() {
        assert_eq!(java_pattern("yyyy-MM-dd HH:mm:ss"), "%Y-%m-%d %H:%M:%S");
        assert_eq!(
            java_pattern("dd/MMM/yyyy:hh:mm:ss a"),
            "%d/%b/%Y:%I:%M:%S %p"
        );
        assert_eq!(
            java_pattern("yyyy-MM-dd'T'HH:mm:ss.SSS"),
            "%Y-%m-%dT%H:%M:%S.%3f"
        );
    }
}
