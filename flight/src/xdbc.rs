//! `GetXdbcTypeInfo`: the SQL types a stream's columns can have, as JDBC's
//! `DatabaseMetaData.getTypeInfo()` and ODBC's `SQLGetTypeInfo` report them. Database tools
//! (DBeaver, the JDBC Flight SQL driver) ask for it when they connect.

use arrow_flight::sql::metadata::{XdbcTypeInfo, XdbcTypeInfoData, XdbcTypeInfoDataBuilder};
use arrow_flight::sql::{Nullable, Searchable, XdbcDataType, XdbcDatetimeSubcode};
use tonic::Status;

/// One type: its name, its JDBC/ODBC code, its size or precision, and how literals are written.
struct SqlType {
    name: &'static str,
    code: XdbcDataType,
    size: Option<i32>,
    quote: Option<&'static str>,
    params: Option<&'static [&'static str]>,
    subcode: Option<XdbcDatetimeSubcode>,
    radix: Option<i32>,
    scale: Option<(i32, i32)>,
}

impl SqlType {
    const fn new(name: &'static str, code: XdbcDataType) -> Self {
        Self {
            name,
            code,
            size: None,
            quote: None,
            params: None,
            subcode: None,
            radix: None,
            scale: None,
        }
    }
}

/// Every type `CREATE STREAM` and `CAST` accept, by the name DataFusion's SQL parser knows.
fn sql_types() -> Vec<SqlType> {
    use XdbcDataType as X;
    let number = |name, code, bits| SqlType {
        size: Some(bits),
        radix: Some(2),
        ..SqlType::new(name, code)
    };
    let text = |name, code| SqlType {
        quote: Some("'"),
        size: Some(i32::MAX),
        ..SqlType::new(name, code)
    };
    let datetime = |name, code, subcode, size| SqlType {
        quote: Some("'"),
        subcode: Some(subcode),
        size: Some(size),
        ..SqlType::new(name, code)
    };
    vec![
        number("BOOLEAN", X::XdbcBit, 1),
        number("TINYINT", X::XdbcTinyint, 8),
        number("SMALLINT", X::XdbcSmallint, 16),
        number("INTEGER", X::XdbcInteger, 32),
        number("BIGINT", X::XdbcBigint, 64),
        number("REAL", X::XdbcReal, 24),
        number("DOUBLE", X::XdbcDouble, 53),
        SqlType {
            size: Some(38),
            radix: Some(10),
            params: Some(&["precision", "scale"]),
            scale: Some((0, 38)),
            ..SqlType::new("DECIMAL", X::XdbcDecimal)
        },
        text("VARCHAR", X::XdbcVarchar),
        SqlType {
            quote: Some("'"),
            size: Some(i32::MAX),
            ..SqlType::new("BYTEA", X::XdbcVarbinary)
        },
        // ODBC's SQL_CODE_DATE is 1, which the protocol also names XDBC_SUBCODE_YEAR.
        datetime(
            "DATE",
            X::XdbcDate,
            XdbcDatetimeSubcode::XdbcSubcodeYear,
            10,
        ),
        datetime(
            "TIME",
            X::XdbcTime,
            XdbcDatetimeSubcode::XdbcSubcodeTime,
            18,
        ),
        datetime(
            "TIMESTAMP",
            X::XdbcTimestamp,
            XdbcDatetimeSubcode::XdbcSubcodeTimestamp,
            29,
        ),
        SqlType {
            quote: Some("INTERVAL '"),
            ..SqlType::new("INTERVAL", X::XdbcInterval)
        },
    ]
}

/// The answer to `GetXdbcTypeInfo`, built once when the service starts.
pub(crate) fn type_info() -> Result<XdbcTypeInfoData, Status> {
    let mut builder = XdbcTypeInfoDataBuilder::new();
    for t in sql_types() {
        let is_text = matches!(
            t.code,
            XdbcDataType::XdbcVarchar | XdbcDataType::XdbcVarbinary
        );
        builder.append(XdbcTypeInfo {
            type_name: t.name.into(),
            data_type: t.code,
            column_size: t.size,
            literal_prefix: t.quote.map(Into::into),
            literal_suffix: t.quote.map(|_| "'".into()),
            create_params: t.params.map(|p| p.iter().map(|s| s.to_string()).collect()),
            nullable: Nullable::NullabilityNullable,
            case_sensitive: is_text,
            searchable: if is_text {
                Searchable::Full
            } else {
                Searchable::Basic
            },
            unsigned_attribute: t.radix.map(|_| false),
            fixed_prec_scale: false,
            auto_increment: t.radix.map(|_| false),
            local_type_name: Some(t.name.into()),
            minimum_scale: t.scale.map(|(min, _)| min),
            maximum_scale: t.scale.map(|(_, max)| max),
            sql_data_type: t.code,
            datetime_subcode: t.subcode,
            num_prec_radix: t.radix,
            interval_precision: None,
        });
    }
    builder
        .build()
        .map_err(|e| Status::internal(format!("building the SQL type list: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::AsArray;
    use arrow::datatypes::Int32Type;
    use arrow_flight::sql::CommandGetXdbcTypeInfo;

    #[test]
    fn every_stream_column_type_is_listed_and_filterable_by_code() -> Result<(), Status> {
        let info = type_info()?;
        let all = CommandGetXdbcTypeInfo { data_type: None }
            .into_builder(&info)
            .build()
            .map_err(|e| Status::internal(e.to_string()))?;
        let names: Vec<&str> = all.column(0).as_string::<i32>().iter().flatten().collect();
        for name in [
            "BOOLEAN",
            "BIGINT",
            "DOUBLE",
            "DECIMAL",
            "VARCHAR",
            "TIMESTAMP",
        ] {
            assert!(names.contains(&name), "{name} missing from {names:?}");
        }
        let varchar = CommandGetXdbcTypeInfo {
            data_type: Some(XdbcDataType::XdbcVarchar as i32),
        }
        .into_builder(&info)
        .build()
        .map_err(|e| Status::internal(e.to_string()))?;
        assert_eq!(varchar.num_rows(), 1);
        assert_eq!(
            varchar.column(1).as_primitive::<Int32Type>().value(0),
            XdbcDataType::XdbcVarchar as i32
        );
        Ok(())
    }
}
