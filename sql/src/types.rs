//! Arrow types by the SQL names people write: what `DESCRIBE` shows and error messages say,
//! so a column declared `VARCHAR` reads back as `VARCHAR`, not as Arrow's `Utf8View`.

use datafusion::arrow::datatypes::{DataType, TimeUnit};

/// The SQL name of `data_type`, as `CREATE STREAM` and `CAST` accept it; types SQL has no
/// name for keep Arrow's.
pub fn sql_type_name(data_type: &DataType) -> String {
    match data_type {
        DataType::Boolean => "BOOLEAN".into(),
        DataType::Int8 => "TINYINT".into(),
        DataType::Int16 => "SMALLINT".into(),
        DataType::Int32 => "INTEGER".into(),
        DataType::Int64 => "BIGINT".into(),
        DataType::UInt8 => "TINYINT UNSIGNED".into(),
        DataType::UInt16 => "SMALLINT UNSIGNED".into(),
        DataType::UInt32 => "INTEGER UNSIGNED".into(),
        DataType::UInt64 => "BIGINT UNSIGNED".into(),
        DataType::Float16 | DataType::Float32 => "REAL".into(),
        DataType::Float64 => "DOUBLE".into(),
        DataType::Decimal128(p, s) | DataType::Decimal256(p, s) => format!("DECIMAL({p}, {s})"),
        DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8 => "VARCHAR".into(),
        DataType::Binary | DataType::BinaryView | DataType::LargeBinary => "BYTEA".into(),
        DataType::Date32 | DataType::Date64 => "DATE".into(),
        DataType::Time32(_) | DataType::Time64(_) => "TIME".into(),
        DataType::Timestamp(unit, zone) => {
            let precision = match unit {
                TimeUnit::Second => "(0)",
                TimeUnit::Millisecond => "(3)",
                TimeUnit::Microsecond => "(6)",
                TimeUnit::Nanosecond => "",
            };
            match zone {
                Some(zone) => format!("TIMESTAMP{precision} WITH TIME ZONE '{zone}'"),
                None => format!("TIMESTAMP{precision}"),
            }
        }
        DataType::Interval(_) => "INTERVAL".into(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declared_types_read_back_by_their_sql_names() {
        assert_eq!(sql_type_name(&DataType::Utf8View), "VARCHAR");
        assert_eq!(sql_type_name(&DataType::Int64), "BIGINT");
        assert_eq!(sql_type_name(&DataType::Float64), "DOUBLE");
        assert_eq!(
            sql_type_name(&DataType::Decimal128(10, 2)),
            "DECIMAL(10, 2)"
        );
        assert_eq!(
            sql_type_name(&DataType::Timestamp(TimeUnit::Nanosecond, None)),
            "TIMESTAMP"
        );
        assert_eq!(
            sql_type_name(&DataType::Timestamp(TimeUnit::Millisecond, None)),
            "TIMESTAMP(3)"
        );
    }
}
