//! Names as Kinesis Data Analytics programs write them.
//!
//! Kinesis Data Analytics folds unquoted identifiers to upper case: its schema discovery names
//! columns `"TICKER_SYMBOL"`, and its programs mix quoted `"SOURCE_SQL_STREAM_001"` with
//! unquoted `ticker_symbol`. DataFusion (like PostgreSQL) folds them to lower case, which is
//! what Sluice's own SQL relies on. Both hold at once by one rule, applied before planning:
//!
//! - a name resolves as DataFusion resolves it whenever it can (Sluice's SQL is unchanged);
//! - otherwise an unquoted name, or a quoted one written all in upper case (what KDA's folding
//!   makes of an unquoted one), takes the one stream or column whose name equals it ignoring
//!   case. Two such candidates (`"price"` and `"PRICE"`) are left alone, so DataFusion's own
//!   "no field" error names them.
//!
//! # Example
//!
//! ```sql
//! CREATE STREAM "SOURCE_SQL_STREAM_001" ("TICKER_SYMBOL" VARCHAR(4), "PRICE" DOUBLE);
//! SELECT STREAM ticker_symbol, price FROM SOURCE_SQL_STREAM_001;   -- resolves as KDA does
//! ```

use std::collections::BTreeSet;
use std::ops::ControlFlow;

use datafusion::sql::parser::Statement as DFStatement;
use datafusion::sql::sqlparser::ast::{
    Expr, Ident, ObjectName, ObjectNamePart, Statement, TableObject, visit_expressions_mut,
    visit_relations_mut,
};
use sluice_engine::schema::ROWTIME;

/// The names a statement may refer to: streams and tables, and the columns of streams.
pub trait KnownNames {
    /// Every stream and table name of the default schema.
    fn relations(&self) -> Vec<String>;
    /// The columns (system columns included) of stream or table `name`, if it has them.
    fn columns(&self, name: &str) -> Vec<String>;
}

/// Rewrites the names of `statement` that resolve only as Kinesis Data Analytics resolves
/// them to the exact, quoted names they mean.
pub fn resolve_kda_names(statement: &mut DFStatement, known: &dyn KnownNames) {
    let DFStatement::Statement(inner) = statement else {
        return;
    };
    if !matches!(
        inner.as_ref(),
        Statement::Query(_) | Statement::Insert(_) | Statement::Explain { .. }
    ) {
        return;
    }
    let relations = known.relations();
    let _ = visit_relations_mut(inner.as_mut(), |name| {
        if let Some(ObjectNamePart::Identifier(last)) = name.0.last_mut() {
            resolve_ident(last, &relations);
        }
        ControlFlow::<()>::Continue(())
    });
    // The streams read (named in FROM, or passed to window functions by name): their columns
    // are what the query's expressions name. An INSERT's target is not read.
    let mut used: BTreeSet<String> = BTreeSet::new();
    let mut note_read = |name: &mut ObjectName| {
        if let Some(last) = last_name(name) {
            used.insert(last);
        }
        ControlFlow::<()>::Continue(())
    };
    let _ = match inner.as_mut() {
        Statement::Insert(insert) => match insert.source.as_mut() {
            Some(source) => visit_relations_mut(source.as_mut(), &mut note_read),
            None => return,
        },
        other => visit_relations_mut(other, &mut note_read),
    };
    let _ = visit_expressions_mut(inner.as_mut(), |expr| {
        if let Expr::Identifier(ident) = expr
            && relations
                .iter()
                .any(|r| r.eq_ignore_ascii_case(&ident.value))
        {
            resolve_ident(ident, &relations);
            used.insert(folded(ident));
        }
        ControlFlow::<()>::Continue(())
    });
    let mut columns: Vec<String> = Vec::new();
    for name in &used {
        columns.extend(known.columns(name));
    }
    columns.sort();
    columns.dedup();
    let mut names = columns.clone();
    names.extend(relations.iter().cloned());
    let _ = visit_expressions_mut(inner.as_mut(), |expr| {
        match expr {
            Expr::Identifier(ident) => resolve_ident(ident, &names),
            Expr::CompoundIdentifier(parts) => {
                let last = parts.len().saturating_sub(1);
                for (i, part) in parts.iter_mut().enumerate() {
                    let candidates = if i == last { &columns } else { &names };
                    resolve_ident(part, candidates);
                }
            }
            _ => {}
        }
        ControlFlow::<()>::Continue(())
    });
    if let Statement::Insert(insert) = inner.as_mut()
        && let TableObject::TableName(table) = &insert.table
        && let Some(target) = last_name(table)
    {
        let target_columns = known.columns(&target);
        for column in &mut insert.columns {
            if let Some(ObjectNamePart::Identifier(ident)) = column.0.last_mut() {
                resolve_ident(ident, &target_columns);
            }
        }
    }
}

/// The name an identifier has once folded as DataFusion folds it.
fn folded(ident: &Ident) -> String {
    match ident.quote_style {
        Some(_) => ident.value.clone(),
        None => ident.value.to_lowercase(),
    }
}

fn last_name(name: &ObjectName) -> Option<String> {
    match name.0.last() {
        Some(ObjectNamePart::Identifier(ident)) => Some(folded(ident)),
        _ => None,
    }
}

/// Makes `ident` the quoted name it means, if it resolves only as KDA resolves names.
fn resolve_ident(ident: &mut Ident, known: &[String]) {
    let as_written = folded(ident);
    if known.contains(&as_written) {
        return;
    }
    // KDA's APPROXIMATE_ARRIVAL_TIME (when a record reached the stream) is Sluice's ROWTIME,
    // unless a column has that name.
    if ident.value.eq_ignore_ascii_case("approximate_arrival_time")
        && known.iter().any(|k| k == ROWTIME)
        && !known
            .iter()
            .any(|k| k.eq_ignore_ascii_case("approximate_arrival_time"))
    {
        *ident = Ident::new(ROWTIME);
        return;
    }
    if ident.quote_style.is_some() && ident.value != ident.value.to_uppercase() {
        return;
    }
    let mut matches = known
        .iter()
        .filter(|k| k.eq_ignore_ascii_case(&ident.value));
    let (Some(only), None) = (matches.next(), matches.next()) else {
        return;
    };
    *ident = Ident::with_quote('"', only.clone());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parser::{SluiceStatement, parse_statements};

    struct Catalog;

    impl KnownNames for Catalog {
        fn relations(&self) -> Vec<String> {
            vec![
                "SOURCE_SQL_STREAM_001".into(),
                "DEST".into(),
                "ticker".into(),
            ]
        }
        fn columns(&self, name: &str) -> Vec<String> {
            match name {
                "SOURCE_SQL_STREAM_001" | "DEST" => vec![
                    "TICKER_SYMBOL".into(),
                    "PRICE".into(),
                    "price".into(),
                    "rowtime".into(),
                ],
                "ticker" => vec!["symbol".into(), "Change".into()],
                _ => vec![],
            }
        }
    }

    fn resolved(sql: &str) -> String {
        let mut statements = parse_statements(sql).expect("parses");
        let statement = match statements.remove(0) {
            SluiceStatement::DataFusion(s) | SluiceStatement::SelectStream(s) => s,
            other => panic!("unexpected {other:?}"),
        };
        let mut statement = *statement;
        resolve_kda_names(&mut statement, &Catalog);
        statement.to_string()
    }

    #[test]
    fn unquoted_names_find_upper_case_streams_and_columns() {
        assert_eq!(
            resolved(
                "SELECT ticker_symbol, SOURCE_SQL_STREAM_001.ROWTIME FROM SOURCE_SQL_STREAM_001"
            ),
            r#"SELECT "TICKER_SYMBOL", "SOURCE_SQL_STREAM_001".ROWTIME FROM "SOURCE_SQL_STREAM_001""#
        );
        // Quoted upper case is what KDA makes of unquoted names: ROWTIME is the rowtime column.
        assert_eq!(
            resolved(r#"SELECT "ROWTIME", "TICKER_SYMBOL" FROM "SOURCE_SQL_STREAM_001""#),
            r#"SELECT "rowtime", "TICKER_SYMBOL" FROM "SOURCE_SQL_STREAM_001""#
        );
        assert_eq!(
            resolved(
                "INSERT INTO dest (ticker_symbol) SELECT ticker_symbol FROM source_sql_stream_001"
            ),
            r#"INSERT INTO "DEST" ("TICKER_SYMBOL") SELECT "TICKER_SYMBOL" FROM "SOURCE_SQL_STREAM_001""#
        );
    }

    #[test]
    fn names_that_resolve_or_are_ambiguous_stay_as_written() {
        // `price` exists in lower case; `Price` quoted in mixed case means exactly that.
        assert_eq!(
            resolved(r#"SELECT price, "Price", symbol FROM ticker"#),
            r#"SELECT price, "Price", symbol FROM ticker"#
        );
        // Both "PRICE" and "price" exist: PRICE unquoted is price; nothing guessed.
        assert_eq!(
            resolved("SELECT PRICE FROM SOURCE_SQL_STREAM_001"),
            r#"SELECT PRICE FROM "SOURCE_SQL_STREAM_001""#
        );
        // A mixed-case column is found by its unquoted name.
        assert_eq!(
            resolved("SELECT change FROM ticker"),
            r#"SELECT "Change" FROM ticker"#
        );
    }
}
