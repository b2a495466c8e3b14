//! Firehose's dynamic partitioning keys: a jq query (`MetadataExtractionQuery`) run over each
//! JSON record, whose result object names the keys `!{partitionKeyFromQuery:key}` reads.
//!
//! The query is compiled once by [jaq](https://github.com/01mf02/jaq), a jq implementation,
//! with jq's standard library. A record yields keys when it parses as JSON and the query's first
//! result is an object whose values are strings, numbers or booleans; anything else is the
//! record's error, and the record goes to the error output.
//!
//! # Example
//!
//! ```
//! use sluice_delivery::partition_query::PartitionQuery;
//!
//! let query = PartitionQuery::parse("{customer: .customer_id, year: (.ts[0:4])}").unwrap();
//! let keys = query.keys(br#"{"customer_id": 42, "ts": "2026-12-07"}"#).unwrap();
//! assert_eq!(keys["customer"], "42");
//! assert_eq!(keys["year"], "2026");
//! ```

use std::collections::BTreeMap;

use jaq_core::load::{Arena, File, Loader};
use jaq_core::{Compiler, Ctx, Vars, data, unwrap_valr};
use jaq_json::Val;

use crate::error::{Error, Result};

type Filter = jaq_core::compile::Filter<jaq_core::Native<data::JustLut<Val>>>;

/// A compiled metadata extraction query (cheap to clone: the compiled filter is shared).
#[derive(Clone)]
pub struct PartitionQuery {
    text: String,
    filter: std::sync::Arc<Filter>,
}

impl std::fmt::Debug for PartitionQuery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("PartitionQuery").field(&self.text).finish()
    }
}

impl PartialEq for PartitionQuery {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl PartitionQuery {
    /// Compiles jq query `text`; a mistake is reported with jq's own words and where it is.
    pub fn parse(text: &str) -> Result<Self> {
        let invalid = |detail: String| {
            Error::Invalid(format!(
                "partition query '{text}' is not a jq query Sluice can run: {detail}"
            ))
        };
        let defs = jaq_core::defs()
            .chain(jaq_std::defs())
            .chain(jaq_json::defs());
        let funs = jaq_core::funs()
            .chain(jaq_std::funs())
            .chain(jaq_json::funs());
        let loader = Loader::new(defs);
        let arena = Arena::default();
        let modules = loader
            .load(
                &arena,
                File {
                    code: text,
                    path: (),
                },
            )
            .map_err(|errors| invalid(load_errors(errors)))?;
        let filter = Compiler::default()
            .with_funs(funs)
            .compile(modules)
            .map_err(|errors| {
                let names: Vec<String> = errors
                    .into_iter()
                    .flat_map(|(_, errors)| errors)
                    .map(|(name, undefined)| format!("{name} is not defined ({undefined:?})"))
                    .collect();
                invalid(names.join("; "))
            })?;
        Ok(Self {
            text: text.to_string(),
            filter: std::sync::Arc::new(filter),
        })
    }

    /// The query as written.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The partition keys of one record, or why it has none.
    pub fn keys(&self, record: &[u8]) -> std::result::Result<BTreeMap<String, String>, String> {
        let input = jaq_json::read::parse_single(record)
            .map_err(|e| format!("the record is not JSON: {e}"))?;
        let ctx = Ctx::<data::JustLut<Val>>::new(&self.filter.lut, Vars::new([]));
        let mut out = self.filter.id.run((ctx, input)).map(unwrap_valr);
        let value = match out.next() {
            Some(Ok(value)) => value,
            Some(Err(e)) => return Err(format!("the query failed on the record: {e}")),
            None => return Err("the query returned nothing for the record".to_string()),
        };
        let Val::Obj(object) = value else {
            return Err(format!(
                "the query returned {value}, not an object of partition keys"
            ));
        };
        let mut keys = BTreeMap::new();
        for (key, value) in object.iter() {
            let key = scalar(key).ok_or_else(|| format!("the query returned key {key}"))?;
            let value = match value {
                Val::Null => {
                    return Err(format!(
                        "partition key '{key}' is null for the record (the field is missing?)"
                    ));
                }
                other => scalar(other).ok_or_else(|| {
                    format!("partition key '{key}' is {other}, not a string, number or boolean")
                })?,
            };
            keys.insert(key, value);
        }
        Ok(keys)
    }
}

/// A string, number or boolean as the text that goes into an object key.
fn scalar(value: &Val) -> Option<String> {
    match value {
        Val::TStr(bytes) | Val::BStr(bytes) => Some(String::from_utf8_lossy(bytes).into_owned()),
        Val::Num(_) | Val::Bool(_) => Some(value.to_string()),
        _ => None,
    }
}

fn load_errors<P>(errors: jaq_core::load::Errors<&str, P>) -> String {
    use jaq_core::load::Error as LoadError;
    let mut out = Vec::new();
    for (_, error) in errors {
        match error {
            LoadError::Io(errors) => out.extend(errors.into_iter().map(|(_, e)| e)),
            LoadError::Lex(errors) => out.extend(
                errors
                    .into_iter()
                    .map(|(expected, at)| format!("expected {} at '{at}'", expected.as_str())),
            ),
            LoadError::Parse(errors) => out.extend(
                errors
                    .into_iter()
                    .map(|(expected, at)| format!("expected {} at '{at}'", expected.as_str())),
            ),
        }
    }
    out.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_come_from_the_query_s_object() {
        let query =
            PartitionQuery::parse("{id: .customer.id, kind: .kind, ok: .ok}").expect("valid");
        let keys = query
            .keys(br#"{"customer": {"id": "c-7"}, "kind": 3, "ok": true}"#)
            .expect("keys");
        assert_eq!(keys["id"], "c-7");
        assert_eq!(keys["kind"], "3");
        assert_eq!(keys["ok"], "true");
    }

    #[test]
    fn records_without_keys_say_why() {
        let query = PartitionQuery::parse("{id: .customer_id}").expect("valid");
        assert!(
            query
                .keys(b"not json")
                .expect_err("bad")
                .contains("not JSON")
        );
        assert!(
            query
                .keys(br#"{"other": 1}"#)
                .expect_err("missing")
                .contains("'id' is null")
        );
        assert!(
            query
                .keys(br#"{"customer_id": [1]}"#)
                .expect_err("array")
                .contains("not a string, number or boolean")
        );
        let query = PartitionQuery::parse(".customer_id").expect("valid");
        assert!(
            query
                .keys(br#"{"customer_id": "x"}"#)
                .expect_err("not an object")
                .contains("not an object")
        );
    }

    #[test]
    fn bad_queries_are_refused_with_jq_s_reason() {
        let error = PartitionQuery::parse("{id: .a")
            .expect_err("unclosed")
            .to_string();
        assert!(error.contains("partition query '{id: .a'"), "{error}");
        let error = PartitionQuery::parse("{id: nosuchfn(.a)}")
            .expect_err("undefined")
            .to_string();
        assert!(error.contains("nosuchfn"), "{error}");
    }
}
