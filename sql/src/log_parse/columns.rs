//! The column descriptions `VARIABLE_COLUMN_LOG_PARSE` and `FIXED_COLUMN_LOG_PARSE` take:
//!
//! ```text
//! '<name> TYPE <type> [NOT NULL], …'                                 (variable columns)
//! '<name> [TYPE <type> ['<date format>']] [NOT NULL] START n [FOR m], …'   (fixed columns)
//! ```
//!
//! Types are spelt and mapped as `CREATE STREAM` maps them; a `DATE`, `TIME` or `TIMESTAMP`
//! may carry a Java date format (`"when" TYPE TIMESTAMP 'dd/MMM/yyyy:HH:mm:ss'`). Names are
//! folded to lower case, as the other parsers' `column1` … are, so unquoted `T.R.HOST` finds
//! them.

use chrono::{NaiveDate, NaiveDateTime, NaiveTime};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::{Result as DFResult, plan_err};

use crate::kda_functions::java_pattern;

/// One described column.
#[derive(Debug, Clone, PartialEq)]
pub struct ColumnDescription {
    pub name: String,
    pub data_type: DataType,
    /// A Java date format for a `DATE`, `TIME` or `TIMESTAMP` column.
    pub format: Option<String>,
    /// Where a fixed column starts (0 is the first character) and how many characters it
    /// takes (to the end of the line when not given).
    pub start: Option<usize>,
    pub length: Option<usize>,
}

impl ColumnDescription {
    /// The column's text as its type's cast reads it: a date or time in its format becomes
    /// ISO text; numbers and the like lose the padding around them; text keeps every character.
    pub fn normalize(&self, text: &str) -> Option<String> {
        if matches!(self.data_type, DataType::Utf8 | DataType::Utf8View) {
            return Some(text.to_string());
        }
        let text = text.trim();
        if text.is_empty() {
            return None;
        }
        let Some(format) = &self.format else {
            return Some(text.to_string());
        };
        let pattern = java_pattern(format);
        match self.data_type {
            DataType::Date32 | DataType::Date64 => NaiveDate::parse_from_str(text, &pattern)
                .ok()
                .map(|d| d.format("%Y-%m-%d").to_string()),
            DataType::Time32(_) | DataType::Time64(_) => NaiveTime::parse_from_str(text, &pattern)
                .ok()
                .map(|t| t.format("%H:%M:%S%.f").to_string()),
            _ => NaiveDateTime::parse_from_str(text, &pattern)
                .ok()
                .or_else(|| {
                    NaiveDate::parse_from_str(text, &pattern)
                        .ok()
                        .and_then(|d| d.and_hms_opt(0, 0, 0))
                })
                .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.f").to_string()),
        }
    }
}

/// Reads a list of column descriptions. `fixed` asks for `START`: a fixed column's place.
pub fn parse_descriptions(
    function: &str,
    text: &str,
    fixed: bool,
) -> DFResult<Vec<ColumnDescription>> {
    let descriptions = split_top_level(text, ',');
    if descriptions.iter().all(|d| d.trim().is_empty()) {
        return plan_err!("{function}: the column list '{text}' describes no column");
    }
    descriptions
        .iter()
        .map(|d| parse_one(function, d.trim(), fixed))
        .collect()
}

fn parse_one(function: &str, description: &str, fixed: bool) -> DFResult<ColumnDescription> {
    let shape = if fixed {
        "'name [TYPE type ['format']] [NOT NULL] START n [FOR m]'"
    } else {
        "'name TYPE type [NOT NULL]'"
    };
    let words = words(description);
    let Some(name) = words.first() else {
        return plan_err!("{function}: a column description is empty; write {shape}");
    };
    let keyword = |i: usize, word: &str| words.get(i).is_some_and(|w| w.eq_ignore_ascii_case(word));
    let mut column = ColumnDescription {
        name: name.trim_matches('"').to_lowercase(),
        data_type: DataType::Utf8,
        format: None,
        start: None,
        length: None,
    };
    let mut i = 1;
    if keyword(i, "TYPE") {
        i += 1;
        let mut type_words = Vec::new();
        while let Some(word) = words.get(i) {
            let upper = word.to_ascii_uppercase();
            if word.starts_with('\'') || ["NOT", "START", "FOR"].contains(&upper.as_str()) {
                break;
            }
            type_words.push(word.as_str());
            i += 1;
        }
        if type_words.is_empty() {
            return plan_err!("{function}: '{description}' names no type after TYPE");
        }
        column.data_type = crate::create_stream::column_type(&type_words.join(" "))
            .map_err(|e| datafusion::error::DataFusionError::Plan(format!("{function}: {e}")))?;
        if let Some(format) = words.get(i).filter(|w| w.starts_with('\'')) {
            column.format = Some(format.trim_matches('\'').to_string());
            i += 1;
        }
    } else if !fixed {
        return plan_err!("{function}: '{description}' is not {shape}");
    }
    if keyword(i, "NOT") && keyword(i + 1, "NULL") {
        i += 2;
    }
    let number = |i: usize, what: &str| -> DFResult<usize> {
        match words.get(i).and_then(|w| w.parse::<usize>().ok()) {
            Some(n) => Ok(n),
            None => {
                plan_err!("{function}: '{description}' needs a number of characters after {what}")
            }
        }
    };
    if fixed {
        if !keyword(i, "START") {
            return plan_err!("{function}: '{description}' has no START; write {shape}");
        }
        column.start = Some(number(i + 1, "START")?);
        i += 2;
        if keyword(i, "FOR") {
            column.length = Some(number(i + 1, "FOR")?);
            i += 2;
        }
    }
    if let Some(extra) = words.get(i) {
        return plan_err!(
            "{function}: '{description}' has '{extra}' where it should end; write {shape}"
        );
    }
    Ok(column)
}

/// The words of a description: separated by white space, except inside quotes and
/// parentheses; a parenthesis directly after a word (`DECIMAL (8, 2)`) joins that word.
fn words(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for word in split_top_level(text, ' ') {
        let word = word.trim();
        if word.is_empty() {
            continue;
        }
        match out.last_mut() {
            Some(last) if word.starts_with('(') => last.push_str(word),
            _ => out.push(word.to_string()),
        }
    }
    out
}

/// `text` split at `separator` where it is outside quotes and parentheses.
fn split_top_level(text: &str, separator: char) -> Vec<String> {
    let mut parts = vec![String::new()];
    let (mut depth, mut quote) = (0usize, None::<char>);
    for c in text.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"') => quote = Some(c),
            (None, '(') => depth += 1,
            (None, ')') => depth = depth.saturating_sub(1),
            (None, c) if c == separator && depth == 0 => {
                parts.push(String::new());
                continue;
            }
            _ => {}
        }
        if let Some(last) = parts.last_mut() {
            last.push(c);
        }
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_descriptions_read_types_formats_and_places() -> DFResult<()> {
        let columns = parse_descriptions(
            "FIXED_COLUMN_LOG_PARSE",
            "a TYPE Integer START 0 FOR 3, \"B\" TYPE DECIMAL (8, 2) NOT NULL START 4 FOR 6, \
             c TYPE TIMESTAMP 'dd/MMM/yyyy:HH:mm:ss' START 10, d START 2 FOR 1",
            true,
        )?;
        assert_eq!(columns.len(), 4);
        assert_eq!(columns[0].data_type, DataType::Int32);
        assert_eq!((columns[0].start, columns[0].length), (Some(0), Some(3)));
        assert_eq!(columns[1].name, "b");
        assert_eq!(columns[1].data_type, DataType::Decimal128(8, 2));
        assert_eq!(columns[2].format.as_deref(), Some("dd/MMM/yyyy:HH:mm:ss"));
        assert_eq!((columns[2].start, columns[2].length), (Some(10), None));
        assert_eq!(columns[3].data_type, DataType::Utf8);
        Ok(())
    }

    #[test]
    fn a_bad_description_says_what_to_write() {
        let missing = parse_descriptions("F", "a TYPE INTEGER", true);
        assert!(matches!(missing, Err(e) if e.to_string().contains("has no START")));
        let unknown = parse_descriptions("F", "a TYPE INTEGR START 0", true);
        assert!(matches!(unknown, Err(e) if e.to_string().contains("'INTEGR' is not a type")));
        let extra = parse_descriptions("V", "a TYPE INTEGER START 0", false);
        assert!(matches!(extra, Err(e) if e.to_string().contains("'START' where it should end")));
    }

    #[test]
    fn dates_in_their_format_become_iso_text() {
        let column = ColumnDescription {
            name: "t".into(),
            data_type: DataType::Timestamp(
                datafusion::arrow::datatypes::TimeUnit::Nanosecond,
                None,
            ),
            format: Some("dd/MMM/yyyy:HH:mm:ss".into()),
            start: None,
            length: None,
        };
        assert_eq!(
            column.normalize(" 24/May/2004:22:01:02 ").as_deref(),
            Some("2004-05-24T22:01:02")
        );
        assert_eq!(column.normalize("yesterday"), None);
    }
}
