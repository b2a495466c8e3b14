//! The columns a delivery stream converts JSON records into (`record_columns`), written as a
//! Hive schema — the form AWS Glue tables and Firehose's record format conversion use:
//! `ticker string, price double, ts timestamp, qty int`.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};

use crate::error::{Error, Result};

/// Parses `name type, name type, …` into an Arrow schema.
pub fn parse_record_columns(text: &str) -> Result<SchemaRef> {
    let mut fields: Vec<Field> = Vec::new();
    for column in split_top_level(text) {
        let column = column.trim();
        let Some((name, data_type)) = column.split_once(char::is_whitespace) else {
            return Err(Error::Invalid(format!(
                "record_columns: '{column}' needs a name and a Hive type, as in 'price double'"
            )));
        };
        let name = name.trim_matches('`');
        if fields.iter().any(|f| f.name().eq_ignore_ascii_case(name)) {
            return Err(Error::Invalid(format!(
                "record_columns: column '{name}' is given twice"
            )));
        }
        fields.push(Field::new(name, hive_type(data_type.trim())?, true));
    }
    if fields.is_empty() {
        return Err(Error::Invalid(
            "record_columns is empty; give columns as 'name type, …' (Hive types: string, int, bigint, double, boolean, timestamp, …)"
                .to_string(),
        ));
    }
    Ok(Arc::new(Schema::new(fields)))
}

/// The Arrow type of Hive type `text` (case-insensitive).
pub fn hive_type(text: &str) -> Result<DataType> {
    let lower = text.to_ascii_lowercase();
    Ok(match lower.as_str() {
        "string" | "char" | "varchar" => DataType::Utf8,
        _ if lower.starts_with("varchar(") || lower.starts_with("char(") => DataType::Utf8,
        "tinyint" => DataType::Int8,
        "smallint" => DataType::Int16,
        "int" | "integer" => DataType::Int32,
        "bigint" => DataType::Int64,
        "float" => DataType::Float32,
        "double" => DataType::Float64,
        "boolean" => DataType::Boolean,
        "timestamp" => DataType::Timestamp(TimeUnit::Millisecond, None),
        "date" => DataType::Date32,
        "binary" => DataType::Binary,
        "decimal" => DataType::Decimal128(10, 0),
        _ if lower.starts_with("decimal(") && lower.ends_with(')') => {
            let inner = &lower["decimal(".len()..lower.len() - 1];
            let (precision, scale) = inner.split_once(',').unwrap_or((inner, "0"));
            match (precision.trim().parse::<u8>(), scale.trim().parse::<i8>()) {
                (Ok(p), Ok(s)) if (1..=38).contains(&p) && s >= 0 && s as u8 <= p => {
                    DataType::Decimal128(p, s)
                }
                _ => {
                    return Err(Error::Invalid(format!(
                        "record_columns: '{text}' is not a decimal Sluice can hold; precision 1 to 38, scale 0 to the precision"
                    )));
                }
            }
        }
        _ => {
            return Err(Error::Invalid(format!(
                "record_columns: '{text}' is not a Hive type Sluice converts to; use string, tinyint, smallint, int, bigint, float, double, decimal(p,s), boolean, timestamp, date or binary (arrays, maps and structs are not supported yet)"
            )));
        }
    })
}

/// Splits at commas outside parentheses (`decimal(10,2)` stays whole).
fn split_top_level(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if !text[start..].trim().is_empty() {
        parts.push(&text[start..]);
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hive_columns_become_arrow_fields() {
        let schema =
            parse_record_columns("ticker string, price decimal(10,2), qty int, ts timestamp")
                .expect("valid");
        assert_eq!(schema.field(1).data_type(), &DataType::Decimal128(10, 2));
        assert_eq!(schema.field(2).data_type(), &DataType::Int32);
        assert_eq!(schema.fields().len(), 4);
    }

    #[test]
    fn mistakes_name_the_column() {
        let error = |t: &str| parse_record_columns(t).expect_err("invalid").to_string();
        assert!(error("price").contains("'price' needs a name and a Hive type"));
        assert!(error("a map<string,int>").contains("not a Hive type"));
        assert!(error("a int, A string").contains("'A' is given twice"));
        assert!(error("d decimal(50,2)").contains("not a decimal"));
        assert!(error(" ").contains("empty"));
    }
}
