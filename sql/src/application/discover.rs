//! Schema discovery, what the kinesisanalytics API's `DiscoverInputSchema` (and the KDA
//! console's "Discover schema" button) does: from sample records, an [`InputSchema`] that maps
//! them, with the samples as it parses them.
//!
//! JSON objects give one column per leaf, nested objects flattened (`{"price": {"last": 1}}`
//! is `LAST` at `$.price.last`; a name seen twice takes its parent's name in front,
//! `PRICE_LAST`); arrays are kept as JSON text. Anything else is read as CSV split at the
//! delimiter (`,`, tab, `|` or `;`) that gives every sample the same number of columns, named
//! `COL1`, `COL2`, …. Names are upper case, as KDA's are; a name that is an SQL keyword gets
//! `COL_` in front (`COL_TIMESTAMP`). Types: whole numbers `INTEGER` (or `BIGINT` past its
//! range), other numbers `DOUBLE`, `true`/`false` `BOOLEAN`, text that reads as a timestamp
//! everywhere `TIMESTAMP`, other text `VARCHAR(n)` with n the longest sample rounded up to a
//! power of two (at least 4).

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use super::input::{
    CsvMappingParameters, InputMapper, InputSchema, JsonMappingParameters, MappingParameters,
    RecordColumn, RecordFormat,
};
use crate::error::{Error, Result};

/// Words a column may not be named without quotes; discovered names that are one get `COL_`.
const RESERVED: &[&str] = &[
    "ALL",
    "AND",
    "AS",
    "BY",
    "CASE",
    "CAST",
    "COUNT",
    "CURRENT",
    "DATE",
    "DEFAULT",
    "DESC",
    "DISTINCT",
    "ELSE",
    "END",
    "FALSE",
    "FROM",
    "GROUP",
    "HAVING",
    "HOUR",
    "IN",
    "INTERVAL",
    "IS",
    "JOIN",
    "LIMIT",
    "MINUTE",
    "NOT",
    "NULL",
    "ON",
    "OR",
    "ORDER",
    "PARTITION",
    "RANGE",
    "ROWS",
    "ROWTIME",
    "SECOND",
    "SELECT",
    "STREAM",
    "TABLE",
    "THEN",
    "TIME",
    "TIMESTAMP",
    "TO",
    "TRUE",
    "UNION",
    "USER",
    "VALUE",
    "VALUES",
    "WHEN",
    "WHERE",
    "WINDOW",
    "YEAR",
];

/// Column delimiters CSV discovery tries, in order.
const DELIMITERS: [&str; 4] = [",", "\t", "|", ";"];

/// What discovery found: the schema, and each sample as its rows' values.
#[derive(Debug, Clone, PartialEq)]
pub struct Discovered {
    pub input_schema: InputSchema,
    /// Per row the samples gave, its values as text (NULL as `None`).
    pub parsed: Vec<Vec<Option<String>>>,
    /// The samples as text.
    pub raw: Vec<String>,
}

/// Infers the input schema of `samples`.
pub fn discover(samples: &[&[u8]]) -> Result<Discovered> {
    let texts: Vec<&str> = samples
        .iter()
        .filter_map(|s| std::str::from_utf8(s).ok())
        .filter(|s| !s.trim().is_empty())
        .collect();
    if texts.is_empty() {
        return Err(Error::Plan(
            "no records to discover a schema from: the stream has no UTF-8 records yet; put some and try again".into(),
        ));
    }
    // JSON when most samples are JSON objects (a stray bad record does not make the stream
    // CSV; it goes to error_stream when the application runs), CSV otherwise.
    let objects: Vec<Vec<(String, Json)>> = texts
        .iter()
        .filter_map(|t| match serde_json::from_str(t) {
            Ok(Json::Object(fields)) => Some(fields),
            _ => None,
        })
        .collect();
    let input_schema = if objects.len() * 2 > texts.len() {
        json_schema(&objects)
    } else {
        csv_schema(&texts)?
    };
    let mapper = InputMapper::new(&input_schema)?;
    let (batch, _, _) = mapper.map(samples)?;
    // Rows of the records that mapped; the rest are in `raw` only.
    let parsed = (0..batch.num_rows())
        .map(|row| {
            batch
                .columns()
                .iter()
                .map(|column| {
                    datafusion::arrow::util::display::array_value_to_string(column, row)
                        .ok()
                        .filter(|_| column.is_valid(row))
                })
                .collect()
        })
        .collect();
    Ok(Discovered {
        input_schema,
        parsed,
        raw: texts.iter().map(|t| t.to_string()).collect(),
    })
}

/// One discovered column: where it is and the values seen there.
struct Leaf {
    path: Vec<String>,
    values: Vec<Value>,
}

fn json_schema(objects: &[Vec<(String, Json)>]) -> InputSchema {
    let mut leaves: Vec<Leaf> = Vec::new();
    for object in objects {
        collect_leaves(object, &mut Vec::new(), &mut leaves);
    }
    let mut names: Vec<String> = leaves
        .iter()
        .map(|l| column_name(l.path.last().map_or("", String::as_str)))
        .collect();
    // A name seen twice takes its parent's name in front.
    let twice: Vec<bool> = names
        .iter()
        .map(|name| names.iter().filter(|n| *n == name).count() > 1)
        .collect();
    for (i, twice) in twice.into_iter().enumerate() {
        if twice {
            names[i] = column_name(&leaves[i].path.join("_"));
        }
    }
    let record_columns = leaves
        .iter()
        .zip(names)
        .map(|(leaf, name)| RecordColumn {
            name,
            mapping: Some(json_path(&leaf.path)),
            sql_type: sql_type(&leaf.values),
        })
        .collect();
    InputSchema {
        record_format: RecordFormat {
            record_format_type: "JSON".into(),
            mapping_parameters: Some(MappingParameters {
                json: Some(JsonMappingParameters {
                    record_row_path: "$".into(),
                }),
                csv: None,
            }),
        },
        record_encoding: Some("UTF-8".into()),
        record_columns,
    }
}

fn collect_leaves(object: &[(String, Json)], path: &mut Vec<String>, leaves: &mut Vec<Leaf>) {
    for (key, value) in object {
        path.push(key.clone());
        match value {
            Json::Object(inner) if !inner.is_empty() => collect_leaves(inner, path, leaves),
            value => {
                let value = value.to_value();
                match leaves.iter_mut().find(|l| l.path == *path) {
                    Some(leaf) => leaf.values.push(value),
                    None => leaves.push(Leaf {
                        path: path.clone(),
                        values: vec![value],
                    }),
                }
            }
        }
        path.pop();
    }
}

/// A JSON document that keeps its objects' keys in the order written (`serde_json`'s own
/// map sorts them), so discovered columns come in the records' order.
#[derive(Debug, Clone)]
enum Json {
    Object(Vec<(String, Json)>),
    Array(Vec<Json>),
    Leaf(Value),
}

impl Json {
    fn to_value(&self) -> Value {
        match self {
            Json::Object(fields) => Value::Object(
                fields
                    .iter()
                    .map(|(k, v)| (k.clone(), v.to_value()))
                    .collect::<Map<String, Value>>(),
            ),
            Json::Array(items) => Value::Array(items.iter().map(Json::to_value).collect()),
            Json::Leaf(value) => value.clone(),
        }
    }
}

impl<'de> Deserialize<'de> for Json {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(JsonVisitor)
    }
}

struct JsonVisitor;

impl<'de> Visitor<'de> for JsonVisitor {
    type Value = Json;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Json, E> {
        Ok(Json::Leaf(Value::Bool(v)))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Json, E> {
        Ok(Json::Leaf(Value::from(v)))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Json, E> {
        Ok(Json::Leaf(Value::from(v)))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Json, E> {
        Ok(Json::Leaf(Value::from(v)))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Json, E> {
        Ok(Json::Leaf(Value::String(v.to_string())))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Json, E> {
        Ok(Json::Leaf(Value::String(v)))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Json, E> {
        Ok(Json::Leaf(Value::Null))
    }
    fn visit_none<E: de::Error>(self) -> Result<Json, E> {
        Ok(Json::Leaf(Value::Null))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Json>()? {
            items.push(item);
        }
        Ok(Json::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json, A::Error> {
        let mut fields: Vec<(String, Json)> = Vec::new();
        while let Some((key, value)) = map.next_entry::<String, Json>()? {
            // A key written twice keeps its last value, as JSON readers do.
            fields.retain(|(k, _)| *k != key);
            fields.push((key, value));
        }
        Ok(Json::Object(fields))
    }
}

fn json_path(path: &[String]) -> String {
    let mut out = String::from("$");
    for key in path {
        if !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            out.push('.');
            out.push_str(key);
        } else {
            out.push_str(&format!("['{}']", key.replace('\'', "\\'")));
        }
    }
    out
}

fn csv_schema(texts: &[&str]) -> Result<InputSchema> {
    let lines: Vec<&str> = texts
        .iter()
        .flat_map(|t| t.split('\n'))
        .map(|l| l.trim_end_matches('\r'))
        .filter(|l| !l.is_empty())
        .collect();
    let delimiter = DELIMITERS
        .iter()
        .find(|d| {
            let counts: Vec<usize> = lines.iter().map(|l| l.split(**d).count()).collect();
            counts[0] > 1 && counts.iter().all(|c| *c == counts[0])
        })
        .copied()
        .unwrap_or(",");
    let width = lines
        .iter()
        .map(|l| l.split(delimiter).count())
        .max()
        .unwrap_or(1);
    let record_columns = (0..width)
        .map(|i| {
            let values: Vec<Value> = lines
                .iter()
                .filter_map(|l| l.split(delimiter).nth(i))
                .map(|v| text_value(v.trim()))
                .collect();
            RecordColumn {
                name: format!("COL{}", i + 1),
                mapping: None,
                sql_type: sql_type(&values),
            }
        })
        .collect();
    Ok(InputSchema {
        record_format: RecordFormat {
            record_format_type: "CSV".into(),
            mapping_parameters: Some(MappingParameters {
                json: None,
                csv: Some(CsvMappingParameters {
                    record_row_delimiter: "\n".into(),
                    record_column_delimiter: delimiter.into(),
                }),
            }),
        },
        record_encoding: Some("UTF-8".into()),
        record_columns,
    })
}

/// A CSV field as the JSON value it reads as.
fn text_value(text: &str) -> Value {
    if text.is_empty() {
        return Value::Null;
    }
    if let Ok(n) = text.parse::<i64>() {
        return Value::from(n);
    }
    if let Ok(f) = text.parse::<f64>()
        && f.is_finite()
    {
        return Value::from(f);
    }
    match text {
        "true" | "TRUE" => Value::Bool(true),
        "false" | "FALSE" => Value::Bool(false),
        _ => Value::String(text.to_string()),
    }
}

/// The KDA type that holds every value seen.
fn sql_type(values: &[Value]) -> String {
    let present: Vec<&Value> = values.iter().filter(|v| !v.is_null()).collect();
    if present.is_empty() {
        return "VARCHAR(16)".into();
    }
    if present.iter().all(|v| v.is_i64() || v.is_u64()) {
        let fits = present
            .iter()
            .all(|v| v.as_i64().is_some_and(|n| i32::try_from(n).is_ok()));
        return if fits { "INTEGER" } else { "BIGINT" }.into();
    }
    if present.iter().all(|v| v.is_number()) {
        return "DOUBLE".into();
    }
    if present.iter().all(|v| v.is_boolean()) {
        return "BOOLEAN".into();
    }
    if present
        .iter()
        .all(|v| v.as_str().is_some_and(reads_as_timestamp))
    {
        return "TIMESTAMP".into();
    }
    let longest = present
        .iter()
        .map(|v| match v {
            Value::String(s) => s.chars().count(),
            other => other.to_string().chars().count(),
        })
        .max()
        .unwrap_or(1);
    format!("VARCHAR({})", longest.max(4).next_power_of_two())
}

fn reads_as_timestamp(text: &str) -> bool {
    const FORMATS: [&str; 4] = [
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S",
        "%Y-%m-%dT%H:%M:%S",
    ];
    let text = text.trim_end_matches('Z');
    FORMATS
        .iter()
        .any(|f| chrono::NaiveDateTime::parse_from_str(text, f).is_ok())
}

/// An upper-case column name from a key: other characters become `_`, and a keyword gets
/// `COL_` in front.
fn column_name(key: &str) -> String {
    let mut name: String = key
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    if name.is_empty()
        || name.starts_with(|c: char| c.is_ascii_digit())
        || RESERVED.contains(&name.as_str())
    {
        name.insert_str(0, "COL_");
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    fn columns(discovered: &Discovered) -> Vec<(String, Option<String>, String)> {
        discovered
            .input_schema
            .record_columns
            .iter()
            .map(|c| (c.name.clone(), c.mapping.clone(), c.sql_type.clone()))
            .collect()
    }

    #[test]
    fn json_samples_give_upper_case_typed_columns() -> Result<()> {
        let samples: Vec<&[u8]> = vec![
            br#"{"ticker_symbol": "AMZN", "sector": "RETAIL", "change": -1.5, "price": 131.25, "qty": 3, "timestamp": "2025-12-31 23:59:58.250", "quote": {"last": 130, "ask": 131}}"#,
            br#"{"ticker_symbol": "NFLX", "sector": "MEDIA", "change": 2, "price": 95.5, "qty": 3000000000, "timestamp": "2026-01-01T10:15:00", "quote": {"last": 94.5, "ask": 96}}"#,
        ];
        let discovered = discover(&samples)?;
        let column = |name: &str, path: &str, t: &str| {
            (name.to_string(), Some(path.to_string()), t.to_string())
        };
        assert_eq!(
            columns(&discovered),
            vec![
                column("TICKER_SYMBOL", "$.ticker_symbol", "VARCHAR(4)"),
                column("SECTOR", "$.sector", "VARCHAR(8)"),
                column("CHANGE", "$.change", "DOUBLE"),
                column("PRICE", "$.price", "DOUBLE"),
                column("QTY", "$.qty", "BIGINT"),
                column("COL_TIMESTAMP", "$.timestamp", "TIMESTAMP"),
                column("LAST", "$.quote.last", "DOUBLE"),
                column("ASK", "$.quote.ask", "INTEGER"),
            ]
        );
        assert_eq!(discovered.parsed.len(), 2);
        assert_eq!(discovered.parsed[1][0].as_deref(), Some("NFLX"));
        assert_eq!(
            discovered.parsed[0][5].as_deref(),
            Some("2025-12-31T23:59:58.250")
        );
        assert_eq!(discovered.raw.len(), 2);
        Ok(())
    }

    #[test]
    fn a_stray_bad_record_does_not_make_json_samples_csv() -> Result<()> {
        let samples: Vec<&[u8]> = vec![
            br#"{"TICKER_SYMBOL": "AMZN", "PRICE": 1.5}"#,
            b"not json",
            br#"{"TICKER_SYMBOL": "ORCL", "PRICE": 2}"#,
        ];
        let discovered = discover(&samples)?;
        assert_eq!(
            discovered.input_schema.record_format.record_format_type,
            "JSON"
        );
        assert_eq!(columns(&discovered)[0].0, "TICKER_SYMBOL");
        assert_eq!(discovered.parsed.len(), 2);
        assert_eq!(discovered.raw.len(), 3);
        Ok(())
    }

    #[test]
    fn csv_samples_find_their_delimiter() -> Result<()> {
        let samples: Vec<&[u8]> = vec![b"AMZN|131.25|true\nMSFT|410|false\n", b"NFLX|95.5|true"];
        let discovered = discover(&samples)?;
        let format = &discovered.input_schema.record_format;
        assert_eq!(format.record_format_type, "CSV");
        assert_eq!(
            format
                .mapping_parameters
                .as_ref()
                .and_then(|p| p.csv.as_ref())
                .map(|c| c.record_column_delimiter.as_str()),
            Some("|")
        );
        assert_eq!(
            columns(&discovered),
            vec![
                ("COL1".into(), None, "VARCHAR(4)".into()),
                ("COL2".into(), None, "DOUBLE".into()),
                ("COL3".into(), None, "BOOLEAN".into()),
            ]
        );
        assert_eq!(discovered.parsed.len(), 3);
        Ok(())
    }

    #[test]
    fn names_clash_keywords_and_nothing_to_read() {
        assert_eq!(column_name("order"), "COL_ORDER");
        assert_eq!(column_name("Location Description"), "LOCATION_DESCRIPTION");
        assert_eq!(column_name("1st"), "COL_1ST");
        let samples: Vec<&[u8]> = vec![br#"{"a": {"id": 1}, "b": {"id": 2}}"#];
        let names: Vec<String> = discover(&samples)
            .map(|d| {
                d.input_schema
                    .record_columns
                    .into_iter()
                    .map(|c| c.name)
                    .collect()
            })
            .unwrap_or_default();
        assert_eq!(names, vec!["A_ID", "B_ID"]);
        assert!(discover(&[]).is_err_and(|e| e.to_string().contains("no records to discover")));
    }
}
