//! Turning a parsed `CREATE STREAM` into the engine's [`StreamSpec`]: column types through
//! DataFusion's own SQL type mapping, `WITH` options checked one by one.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::common::config::ConfigOptions;
use datafusion::common::{Result as DFResult, TableReference, plan_err};
use datafusion::logical_expr::{AggregateUDF, HigherOrderUDF, ScalarUDF, TableSource, WindowUDF};
use datafusion::sql::planner::{ContextProvider, SqlToRel};
use sluice_engine::{
    DEFAULT_RETENTION_HOURS, MAX_RETENTION_HOURS, MIN_RETENTION_HOURS, StreamFormat, StreamSpec,
};

use datafusion::common::DFSchema;
use datafusion::sql::planner::PlannerContext;
use datafusion::sql::sqlparser::ast::{BinaryOperator, ColumnDef, Expr as SQLExpr};
use sluice_engine::{SourceDefinition, WatermarkDefinition};

use crate::error::{Error, Result};
use crate::parser::CreateStream;

/// The `WITH` options `CREATE STREAM` accepts.
pub const STREAM_OPTIONS: [&str; 9] = [
    "shards",
    "format",
    "partition_key",
    "retention",
    "allowed_lateness",
    "idle_timeout",
    "source",
    "rate",
    "seed",
];

/// Builds the engine's spec for a `CREATE STREAM`.
pub fn stream_spec(create: &CreateStream) -> Result<StreamSpec> {
    let columns = column_schema(create)?;
    let mut options: HashMap<&str, &str> = HashMap::new();
    for (key, value) in &create.options {
        if !STREAM_OPTIONS.contains(&key.as_str()) {
            return Err(Error::Plan(format!(
                "unknown WITH option '{key}' for CREATE STREAM; accepted options are {}",
                STREAM_OPTIONS.join(", ")
            )));
        }
        if options.insert(key, value).is_some() {
            return Err(Error::Plan(format!("WITH option '{key}' is given twice")));
        }
    }
    let shards = match options.get("shards") {
        Some(text) => text.parse::<u32>().map_err(|_| {
            Error::Plan(format!(
                "WITH option shards = '{text}' is not a whole number; expected 1 to 1024"
            ))
        })?,
        None => 1,
    };
    let format = match options.get("format") {
        Some(text) => text.parse::<StreamFormat>()?,
        None if columns.fields().is_empty() => StreamFormat::Raw,
        None => StreamFormat::Json,
    };
    let retention_hours = match options.get("retention") {
        Some(text) => parse_retention_hours(text)?,
        None => DEFAULT_RETENTION_HOURS,
    };
    let partition_key = options.get("partition_key").map(|key| key.to_string());
    let mut watermark = match &create.watermark {
        Some((column, expression)) => Some(watermark_definition(column, expression)?),
        None => None,
    };
    for (option, set) in [
        (
            "allowed_lateness",
            (|w, ms| w.allowed_lateness_ms = ms) as fn(&mut WatermarkDefinition, i64),
        ),
        ("idle_timeout", |w, ms| w.idle_timeout_ms = ms),
    ] {
        let Some(text) = options.get(option) else {
            continue;
        };
        let Some(watermark) = watermark.as_mut() else {
            return Err(Error::Plan(format!(
                "WITH option {option} needs event time: declare WATERMARK FOR <column> AS <column> - INTERVAL '…' in the column list"
            )));
        };
        set(watermark, parse_duration_millis(option, text)?);
    }
    let source = source_definition(&create.name, &options, format)?;
    if let Some(source) = &source {
        crate::source::check(&create.name, &columns, source)?;
    }
    Ok(StreamSpec {
        name: create.name.clone(),
        columns,
        format,
        shards,
        partition_key,
        retention_hours,
        watermark,
        source,
    })
}

/// `source = 'demo'` with its `rate` (records per second) and `seed`.
fn source_definition(
    stream: &str,
    options: &HashMap<&str, &str>,
    format: StreamFormat,
) -> Result<Option<SourceDefinition>> {
    let Some(kind) = options.get("source") else {
        if let Some(option) = ["rate", "seed"]
            .into_iter()
            .find(|o| options.contains_key(o))
        {
            return Err(Error::Plan(format!(
                "WITH option {option} sets up a source; add source = 'demo'"
            )));
        }
        return Ok(None);
    };
    let kind = kind.to_ascii_lowercase();
    if kind != crate::source::DEMO {
        return Err(Error::Plan(format!(
            "unknown source '{kind}' for stream '{stream}'; the built-in source is 'demo'"
        )));
    }
    if format != StreamFormat::Json {
        return Err(Error::Plan(format!(
            "source 'demo' writes JSON records; stream '{stream}' has format '{format}' (leave format out or say 'json')"
        )));
    }
    let rate = match options.get("rate") {
        Some(text) => text
            .parse::<u32>()
            .ok()
            .filter(|r| (1..=crate::source::MAX_RATE).contains(r))
            .ok_or_else(|| {
                Error::Plan(format!(
                    "WITH option rate = '{text}' is not valid; expected records per second, 1 to {}",
                    crate::source::MAX_RATE
                ))
            })?,
        None => crate::source::DEFAULT_RATE,
    };
    let seed = match options.get("seed") {
        Some(text) => text.parse::<u64>().map_err(|_| {
            Error::Plan(format!(
                "WITH option seed = '{text}' is not a whole number from 0 to {}",
                u64::MAX
            ))
        })?,
        // Different streams tick differently unless told otherwise.
        None => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64),
    };
    Ok(Some(SourceDefinition { kind, rate, seed }))
}

/// `WATERMARK FOR ts AS ts - INTERVAL '5' SECOND` (or `AS ts`, no delay).
fn watermark_definition(column: &str, expression: &SQLExpr) -> Result<WatermarkDefinition> {
    let invalid = || {
        Error::Plan(format!(
            "WATERMARK FOR {column} AS {expression}: expected {column} - INTERVAL '…' (or just {column})"
        ))
    };
    let is_column =
        |e: &SQLExpr| matches!(e, SQLExpr::Identifier(i) if i.value.eq_ignore_ascii_case(column));
    let delay_ms = match expression {
        e if is_column(e) => 0,
        SQLExpr::BinaryOp {
            left,
            op: BinaryOperator::Minus,
            right,
        } if is_column(left) => interval_millis(right).map_err(|_| invalid())?,
        _ => return Err(invalid()),
    };
    Ok(WatermarkDefinition {
        column: column.to_string(),
        delay_ms,
        allowed_lateness_ms: 0,
        idle_timeout_ms: 0,
    })
}

/// A duration option: `'10 seconds'`, `'5 minutes'`, `'2 hours'`, `'500 ms'`, or a number of
/// seconds.
pub fn parse_duration_millis(option: &str, text: &str) -> Result<i64> {
    let invalid = || {
        Error::Plan(format!(
            "WITH option {option} = '{text}' is not a duration; write e.g. '30 seconds', '5 minutes' or '1 hour'"
        ))
    };
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    let number: f64 = number.parse().map_err(|_| invalid())?;
    let unit_ms = match unit.trim().to_ascii_lowercase().as_str() {
        "ms" | "millisecond" | "milliseconds" => 1.0,
        "" | "s" | "sec" | "second" | "seconds" => 1_000.0,
        "m" | "min" | "minute" | "minutes" => 60_000.0,
        "h" | "hour" | "hours" => 3_600_000.0,
        "d" | "day" | "days" => 86_400_000.0,
        _ => return Err(invalid()),
    };
    let ms = number * unit_ms;
    if !(0.0..=366.0 * 86_400_000.0).contains(&ms) {
        return Err(invalid());
    }
    Ok(ms.round() as i64)
}

/// The length of an SQL interval literal in milliseconds, as DataFusion reads it.
pub fn interval_millis(expression: &SQLExpr) -> Result<i64> {
    let provider = TypeOnlyContext::default();
    let planner = SqlToRel::new(&provider);
    let planned = planner.sql_to_expr(
        expression.clone(),
        &DFSchema::empty(),
        &mut PlannerContext::new(),
    )?;
    literal_interval_millis(&planned).ok_or_else(|| {
        Error::Plan(format!(
            "'{expression}' is not an interval of days, hours, minutes or seconds"
        ))
    })
}

/// The milliseconds of an interval literal without months, if `expr` is one.
pub fn literal_interval_millis(expr: &datafusion::logical_expr::Expr) -> Option<i64> {
    use datafusion::common::ScalarValue;
    let datafusion::logical_expr::Expr::Literal(value, _) = expr else {
        return None;
    };
    match value {
        ScalarValue::IntervalMonthDayNano(Some(v)) if v.months == 0 => {
            Some(i64::from(v.days) * 86_400_000 + v.nanoseconds / 1_000_000)
        }
        ScalarValue::IntervalDayTime(Some(v)) => {
            Some(i64::from(v.days) * 86_400_000 + i64::from(v.milliseconds))
        }
        _ => None,
    }
}

fn column_schema(create: &CreateStream) -> Result<SchemaRef> {
    let provider = TypeOnlyContext::default();
    let planner = SqlToRel::new(&provider);
    let columns: Vec<ColumnDef> = create.columns.iter().cloned().map(kda_type).collect();
    // Column by column, so a type DataFusion does not know is named with its column.
    for column in &columns {
        if let Err(e) = planner.build_schema(vec![column.clone()]) {
            log::debug!("column {} rejected: {e}", column.name);
            return Err(Error::Plan(format!(
                "column {} has type {}, which Sluice does not know; write one of {SQL_TYPES}",
                column.name, column.data_type
            )));
        }
    }
    let schema = planner.build_schema(columns)?;
    Ok(Arc::new(schema))
}

/// The Arrow type of a column type written as text (`VARCHAR(32)`, `DECIMAL(8, 2)`,
/// `TIMESTAMP`), mapped exactly as `CREATE STREAM` maps it: for the column descriptions the
/// log parsers take (`'host TYPE VARCHAR(32), bytes TYPE INTEGER'`).
pub fn column_type(text: &str) -> Result<DataType> {
    use datafusion::sql::sqlparser::ast::Statement;
    use datafusion::sql::sqlparser::dialect::GenericDialect;
    use datafusion::sql::sqlparser::parser::Parser;
    let unknown = || {
        Error::Plan(format!(
            "'{text}' is not a type Sluice knows; write one of {SQL_TYPES}"
        ))
    };
    let parsed = Parser::parse_sql(&GenericDialect {}, &format!("CREATE TABLE t (c {text})"))
        .map_err(|_| unknown())?;
    let [Statement::CreateTable(table)] = parsed.as_slice() else {
        return Err(unknown());
    };
    let [column] = table.columns.as_slice() else {
        return Err(unknown());
    };
    let provider = TypeOnlyContext::default();
    let schema = SqlToRel::new(&provider)
        .build_schema(vec![kda_type(column.clone())])
        .map_err(|_| unknown())?;
    Ok(schema.field(0).data_type().clone())
}

/// Kinesis Analytics' spellings of types DataFusion names otherwise: `VARBINARY(n)` and
/// `BINARY(n)` are bytes, `CHARACTER VARYING(n)` and `CHARACTER(n)` are text.
fn kda_type(mut column: ColumnDef) -> ColumnDef {
    use datafusion::sql::sqlparser::ast::DataType as SqlType;
    column.data_type = match column.data_type {
        SqlType::Varbinary(_) | SqlType::Binary(_) | SqlType::Blob(_) | SqlType::Bytes(_) => {
            SqlType::Bytea
        }
        SqlType::Character(length)
        | SqlType::CharacterVarying(length)
        | SqlType::CharVarying(length) => SqlType::Varchar(length),
        other => other,
    };
    column
}

/// The column types `CREATE STREAM` takes, for messages.
const SQL_TYPES: &str = "VARCHAR (or CHAR, VARCHAR(n), TEXT), BOOLEAN, TINYINT, SMALLINT, INTEGER, BIGINT, REAL, DOUBLE, DECIMAL(p, s), DATE, TIME, TIMESTAMP, INTERVAL, VARBINARY (or BYTEA)";

/// Parses a retention period: `'24 hours'`, `'7 days'`, `'48h'`, `'2d'` or a number of hours.
pub fn parse_retention_hours(text: &str) -> Result<u32> {
    let invalid = || {
        Error::Plan(format!(
            "retention = '{text}' is not a period; write e.g. '24 hours' or '7 days' ({MIN_RETENTION_HOURS} to {MAX_RETENTION_HOURS} hours)"
        ))
    };
    let trimmed = text.trim().to_ascii_lowercase();
    let split = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    let number: u64 = number.parse().map_err(|_| invalid())?;
    let hours = match unit.trim() {
        "" | "h" | "hour" | "hours" => number,
        "d" | "day" | "days" => number.saturating_mul(24),
        _ => return Err(invalid()),
    };
    if !(u64::from(MIN_RETENTION_HOURS)..=u64::from(MAX_RETENTION_HOURS)).contains(&hours) {
        return Err(Error::Plan(format!(
            "retention of {hours} hour{} is out of range; retention is {MIN_RETENTION_HOURS} to {MAX_RETENTION_HOURS} hours (1 to 365 days)",
            if hours == 1 { "" } else { "s" }
        )));
    }
    Ok(hours as u32)
}

/// A [`ContextProvider`] that knows no tables or functions: enough for DataFusion to map SQL
/// column types to Arrow types exactly as its own `CREATE TABLE` does.
#[derive(Debug, Default)]
struct TypeOnlyContext {
    options: ConfigOptions,
}

impl ContextProvider for TypeOnlyContext {
    fn get_table_source(&self, name: TableReference) -> DFResult<Arc<dyn TableSource>> {
        plan_err!("table '{name}' cannot be used in a column definition")
    }
    fn get_function_meta(&self, _name: &str) -> Option<Arc<ScalarUDF>> {
        None
    }
    fn get_higher_order_meta(&self, _name: &str) -> Option<Arc<HigherOrderUDF>> {
        None
    }
    fn get_aggregate_meta(&self, _name: &str) -> Option<Arc<AggregateUDF>> {
        None
    }
    fn get_window_meta(&self, _name: &str) -> Option<Arc<WindowUDF>> {
        None
    }
    fn get_variable_type(&self, _variable_names: &[String]) -> Option<DataType> {
        None
    }
    fn options(&self) -> &ConfigOptions {
        &self.options
    }
    fn udf_names(&self) -> Vec<String> {
        vec![]
    }
    fn higher_order_function_names(&self) -> Vec<String> {
        vec![]
    }
    fn udaf_names(&self) -> Vec<String> {
        vec![]
    }
    fn udwf_names(&self) -> Vec<String> {
        vec![]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parser::{SluiceStatement, parse_statements};

    fn spec(sql: &str) -> Result<StreamSpec> {
        match parse_statements(sql)?.pop() {
            Some(SluiceStatement::CreateStream(create)) => stream_spec(&create),
            other => panic!("not a CREATE STREAM: {other:?}"),
        }
    }

    #[test]
    fn types_map_as_datafusion_maps_them() -> Result<()> {
        let spec =
            spec("CREATE STREAM t (a VARCHAR, b DOUBLE, c TIMESTAMP, d BIGINT) WITH (shards = 2)")?;
        let types: Vec<_> = spec
            .columns
            .fields()
            .iter()
            .map(|f| f.data_type().clone())
            .collect();
        assert_eq!(types[1], DataType::Float64);
        assert!(matches!(types[2], DataType::Timestamp(_, None)));
        assert_eq!(types[3], DataType::Int64);
        assert_eq!(spec.format, StreamFormat::Json);
        assert_eq!(spec.shards, 2);
        Ok(())
    }

    #[test]
    fn watermarks_read_their_delay() -> Result<()> {
        let spec = spec(
            "CREATE STREAM c (u VARCHAR, ts TIMESTAMP, WATERMARK FOR ts AS ts - INTERVAL '5' SECOND)",
        )?;
        assert_eq!(
            spec.watermark.map(|w| (w.column, w.delay_ms)),
            Some(("ts".to_string(), 5_000))
        );
        let spec = spec_of(
            "CREATE STREAM c (ts TIMESTAMP, WATERMARK FOR ts AS ts - INTERVAL '1' MINUTE)",
        )?;
        assert_eq!(spec.watermark.map(|w| w.delay_ms), Some(60_000));
        assert!(spec_of("CREATE STREAM c (ts TIMESTAMP, WATERMARK FOR ts AS ts + 1)").is_err());
        Ok(())
    }

    fn spec_of(sql: &str) -> Result<StreamSpec> {
        spec(sql)
    }

    #[test]
    fn unknown_options_list_the_accepted_ones() {
        let message = spec("CREATE STREAM t (a INT) WITH (shard = 2)")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            message.contains("'shard'") && message.contains("shards, format"),
            "{message}"
        );
    }

    #[test]
    fn retention_reads_hours_and_days() -> Result<()> {
        assert_eq!(parse_retention_hours("24 hours")?, 24);
        assert_eq!(parse_retention_hours("7 days")?, 168);
        assert_eq!(parse_retention_hours("48h")?, 48);
        assert_eq!(parse_retention_hours("8760")?, 8760);
        assert!(parse_retention_hours("1 hour").is_err());
        assert!(parse_retention_hours("forever").is_err());
        Ok(())
    }
}
