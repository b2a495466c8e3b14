//! Kinesis Data Analytics' window spelling in continuous queries:
//!
//! ```sql
//! SELECT STREAM ticker, count(*) FROM trades
//! GROUP BY ticker, STEP(trades.ROWTIME BY INTERVAL '60' SECOND);
//! -- or FLOOR(trades.ROWTIME TO MINUTE), or either over an event-time column
//! ```
//!
//! Grouping a stream by `STEP(column BY interval)` or `FLOOR(column TO unit)` is a tumbling
//! window, so the query is rewritten to read `tumble(stream, column, interval)` under the
//! stream's name (so `trades.ROWTIME` and `trades.ticker` still resolve), with the window
//! expression replaced by `window_start` wherever the query repeats it. As in Kinesis Data
//! Analytics, each output row's `ROWTIME` is its window's end: the query gets a `ROWTIME`
//! column (a bare `ROWTIME` in the select list becomes it), and a pump writes it as the rows'
//! `ROWTIME` in its output stream.

use std::ops::ControlFlow;

use datafusion::sql::parser::Statement as DFStatement;
use datafusion::sql::sqlparser::ast::Ident;
use datafusion::sql::sqlparser::ast::{
    CeilFloorKind, DateTimeField, Expr, FunctionArg, FunctionArgExpr, FunctionArguments,
    GroupByExpr, ObjectName, Query, Select, SelectItem, SetExpr, Statement, TableFactor,
    visit_expressions_mut,
};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::parser::Parser;
use sluice_engine::schema::ROWTIME;

use crate::error::{Error, Result};
use crate::window::{WINDOW_END, WINDOW_START};

/// Rewrites a continuous query (or a pump's `INSERT … SELECT`) that groups by `STEP` or
/// `FLOOR … TO` into one over `tumble(…)`. Other statements are left as they are.
pub fn rewrite_step_windows(statement: &mut DFStatement) -> Result<()> {
    let DFStatement::Statement(inner) = statement else {
        return Ok(());
    };
    match inner.as_mut() {
        Statement::Query(query) => {
            rewrite_query(query)?;
        }
        Statement::Insert(insert) => {
            // The ROWTIME a row keeps is decided on the query as written, before a window
            // replaces its FROM.
            if let Some(source) = insert.source.as_mut()
                && (carry_rowtime(source) | rewrite_query(source)?)
                && !insert.columns.is_empty()
            {
                insert
                    .columns
                    .push(ObjectName::from(vec![Ident::new(ROWTIME)]));
            }
        }
        _ => {}
    }
    Ok(())
}

/// Rewrites only `WINDOWED BY STAGGER` windows: what a bounded query needs (`STEP` and `FLOOR`
/// group a bounded query as plain time keys).
pub fn rewrite_stagger_windows(statement: &mut DFStatement) -> Result<()> {
    let DFStatement::Statement(inner) = statement else {
        return Ok(());
    };
    let query = match inner.as_mut() {
        Statement::Query(query) => query,
        Statement::Insert(insert) => match insert.source.as_mut() {
            Some(source) => source,
            None => return Ok(()),
        },
        _ => return Ok(()),
    };
    let SetExpr::Select(select) = query.body.as_mut() else {
        return Ok(());
    };
    let GroupByExpr::Expressions(groups, _) = &mut select.group_by else {
        return Ok(());
    };
    if let Some(at) = groups.iter().position(is_stagger) {
        let stagger = groups.remove(at);
        rewrite_stagger(select, stagger)?;
    }
    Ok(())
}

/// The window a `GROUP BY` expression asks for: (time column, size as SQL).
fn step_window(expr: &Expr) -> Result<Option<(Expr, String)>> {
    match expr {
        Expr::Function(f) if f.name.to_string().eq_ignore_ascii_case("step") => {
            let FunctionArguments::List(list) = &f.args else {
                return Err(step_shape());
            };
            let args: Vec<&Expr> = list
                .args
                .iter()
                .filter_map(|a| match a {
                    FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => Some(e),
                    _ => None,
                })
                .collect();
            match args.as_slice() {
                [column, size] => Ok(Some(((*column).clone(), size.to_string()))),
                _ => Err(step_shape()),
            }
        }
        Expr::Floor {
            expr,
            field: CeilFloorKind::DateTimeField(unit),
        } => {
            let unit = match unit {
                DateTimeField::Second | DateTimeField::Seconds => "SECOND",
                DateTimeField::Minute | DateTimeField::Minutes => "MINUTE",
                DateTimeField::Hour | DateTimeField::Hours => "HOUR",
                DateTimeField::Day | DateTimeField::Days => "DAY",
                other => {
                    return Err(Error::Plan(format!(
                        "FLOOR(… TO {other}) cannot be a window: windows are fixed lengths, so use SECOND, MINUTE, HOUR or DAY (or STEP(… BY INTERVAL …))"
                    )));
                }
            };
            Ok(Some(((**expr).clone(), format!("INTERVAL '1' {unit}"))))
        }
        _ => Ok(None),
    }
}

fn step_shape() -> Error {
    Error::Plan(
        "STEP takes (time_column BY interval), e.g. STEP(s.ROWTIME BY INTERVAL '60' SECOND)"
            .to_string(),
    )
}

/// Rewrites one query; true if it grouped by a STEP or FLOOR window.
fn rewrite_query(query: &mut Query) -> Result<bool> {
    sort_within_buckets(query)?;
    let SetExpr::Select(select) = query.body.as_mut() else {
        return Ok(false);
    };
    if let Some(windowed) = rewrite_derived(select)? {
        return Ok(windowed);
    }
    let GroupByExpr::Expressions(groups, _) = &mut select.group_by else {
        return Ok(false);
    };
    if let Some(at) = groups.iter().position(is_stagger) {
        let stagger = groups.remove(at);
        return rewrite_stagger(select, stagger).map(|()| true);
    }
    let mut windows = Vec::new();
    for (i, group) in groups.iter().enumerate() {
        if let Some(window) = step_window(group)? {
            windows.push((i, group.clone(), window));
        }
    }
    // With several time keys (KDA's way to get event-time results on ROWTIME's schedule:
    // GROUP BY FLOOR(EVENT_TIME TO MINUTE), STEP(ROWTIME BY INTERVAL '60' SECOND)), the window
    // over ROWTIME decides when rows come out (else the first); the others are grouping keys,
    // so a late event-time minute shows up again in a later ROWTIME window.
    let trigger = windows
        .iter()
        .position(|(_, _, (column, _))| names_rowtime(column))
        .unwrap_or(0);
    if windows.is_empty() {
        return Ok(false);
    }
    let (index, window_expr, (column, size)) = windows.remove(trigger);
    for (_, key_expr, (key_column, key_size)) in &windows {
        let bucket = parse_expr(&format!(
            "date_bin({key_size}, {key_column}, TIMESTAMP '1970-01-01 00:00:00')"
        ))?;
        let replace = |expr: &mut Expr| {
            let _ = visit_expressions_mut(expr, |e| {
                if e == key_expr {
                    *e = bucket.clone();
                }
                ControlFlow::<()>::Continue(())
            });
        };
        groups.iter_mut().for_each(replace);
        for item in &mut select.projection {
            match item {
                SelectItem::UnnamedExpr(expr) => {
                    if expr == key_expr {
                        // The key keeps the name the query would have shown.
                        *item = SelectItem::ExprWithAlias {
                            expr: bucket.clone(),
                            alias: Ident::new(
                                key_column
                                    .to_string()
                                    .rsplit('.')
                                    .next()
                                    .unwrap_or("time")
                                    .trim_matches('"'),
                            ),
                        };
                    } else {
                        replace(expr);
                    }
                }
                SelectItem::ExprWithAlias { expr, .. } => replace(expr),
                _ => {}
            }
        }
        if let Some(having) = select.having.as_mut() {
            replace(having);
        }
    }
    let column = match &column {
        Expr::Identifier(ident) => ident.clone(),
        Expr::CompoundIdentifier(parts) => parts.last().cloned().unwrap_or_else(|| Ident::new("")),
        other => {
            return Err(Error::Plan(format!(
                "a STEP or FLOOR window is over a time column such as s.ROWTIME, not {other}"
            )));
        }
    };
    let (stream, alias_name) = windowed_stream(&select.from, "a STEP or FLOOR window groups")?;
    let from = parse_relation(&format!(
        "SELECT 1 FROM tumble({stream}, {column}, {size}) AS {alias_name}"
    ))?;
    select.from[0].relation = from;

    let window_start = Expr::Identifier(Ident::new(WINDOW_START));
    groups[index] = window_start.clone();
    groups.push(Expr::Identifier(Ident::new(WINDOW_END)));
    let is_rowtime = |e: &Expr| match e {
        Expr::Identifier(i) => i.value.eq_ignore_ascii_case(ROWTIME),
        Expr::CompoundIdentifier(parts) => parts
            .last()
            .is_some_and(|i| i.value.eq_ignore_ascii_case(ROWTIME)),
        _ => false,
    };
    let window_end_as_rowtime = || SelectItem::ExprWithAlias {
        expr: Expr::Identifier(Ident::new(WINDOW_END)),
        alias: Ident::new(ROWTIME),
    };
    let mut has_rowtime = false;
    for item in &mut select.projection {
        let expr = match item {
            SelectItem::UnnamedExpr(e) if is_rowtime(e) => {
                *item = window_end_as_rowtime();
                has_rowtime = true;
                continue;
            }
            SelectItem::UnnamedExpr(e) => e,
            SelectItem::ExprWithAlias { expr, alias } => {
                has_rowtime |= alias.value.eq_ignore_ascii_case(ROWTIME);
                expr
            }
            _ => continue,
        };
        let _ = visit_expressions_mut(expr, |e| {
            if *e == window_expr {
                *e = window_start.clone();
            }
            ControlFlow::<()>::Continue(())
        });
    }
    if !has_rowtime {
        select.projection.push(window_end_as_rowtime());
    }
    Ok(true)
}

/// A query that reads one derived table and does not group (`SELECT STREAM * FROM (SELECT
/// STREAM … GROUP BY STEP(…)) AS t`, what KDA's `TOP_K_ITEMS_TUMBLING` becomes): the window
/// is the derived table's, and its rows' `ROWTIME` (the window's end) passes through. `None`
/// when the query is not of that shape.
fn rewrite_derived(select: &mut Select) -> Result<Option<bool>> {
    let grouped = !matches!(&select.group_by, GroupByExpr::Expressions(e, _) if e.is_empty());
    if grouped || select.from.len() != 1 || !select.from[0].joins.is_empty() {
        return Ok(None);
    }
    let TableFactor::Derived {
        subquery, alias, ..
    } = &mut select.from[0].relation
    else {
        return Ok(None);
    };
    if !rewrite_query(subquery)? {
        return Ok(Some(false));
    }
    let carries_rowtime = select.projection.iter().any(|item| match item {
        SelectItem::Wildcard(_) | SelectItem::QualifiedWildcard(..) => true,
        SelectItem::UnnamedExpr(e) => names_rowtime(e),
        SelectItem::ExprWithAlias { alias, .. } => alias.value.eq_ignore_ascii_case(ROWTIME),
        _ => false,
    });
    if !carries_rowtime {
        let rowtime = match alias {
            Some(alias) => Expr::CompoundIdentifier(vec![alias.name.clone(), Ident::new(ROWTIME)]),
            None => Expr::Identifier(Ident::new(ROWTIME)),
        };
        select.projection.push(SelectItem::ExprWithAlias {
            expr: rowtime,
            alias: Ident::new(ROWTIME),
        });
    }
    Ok(Some(true))
}

/// A pump that neither windows nor aggregates (sliding windows, one row per row, are fine) writes
/// each row with the `ROWTIME` of the row it came from, as Kinesis Data Analytics does (not the time it reached the output stream): the
/// select list gets `s.ROWTIME AS ROWTIME`. True if it was added.
fn carry_rowtime(query: &mut Query) -> bool {
    const AGGREGATES: &[&str] = &[
        "count",
        "sum",
        "avg",
        "min",
        "max",
        "stddev",
        "stddev_pop",
        "stddev_samp",
        "variance",
        "var_pop",
        "var_samp",
        "first_value",
        "last_value",
        "array_agg",
        "string_agg",
        "approx_distinct",
        "approx_median",
        "median",
        "bool_and",
        "bool_or",
    ];
    let SetExpr::Select(select) = query.body.as_mut() else {
        return false;
    };
    let grouped = !matches!(&select.group_by, GroupByExpr::Expressions(e, _) if e.is_empty());
    if grouped || select.from.len() != 1 || !select.from[0].joins.is_empty() {
        return false;
    }
    let TableFactor::Table {
        name,
        alias,
        args: None,
        ..
    } = &select.from[0].relation
    else {
        return false;
    };
    let Some(qualifier) = alias
        .as_ref()
        .map(|a| a.name.clone())
        .or_else(|| name.0.last().and_then(|p| p.as_ident()).cloned())
    else {
        return false;
    };
    let mut aggregates_or_rowtime = false;
    for item in &mut select.projection {
        let expr = match item {
            SelectItem::UnnamedExpr(expr) => expr,
            SelectItem::ExprWithAlias { expr, alias } => {
                aggregates_or_rowtime |= alias.value.eq_ignore_ascii_case(ROWTIME);
                expr
            }
            // `*` brings ROWTIME along already.
            _ => return false,
        };
        // A select item that is ROWTIME already sets it.
        aggregates_or_rowtime |= names_rowtime(expr);
        let _ = visit_expressions_mut(expr, |e| {
            if let Expr::Function(f) = e {
                let function = f.name.to_string().to_ascii_lowercase();
                // A sliding window (OVER) gives a row per row: it keeps its ROWTIME.
                aggregates_or_rowtime |=
                    f.over.is_none() && AGGREGATES.contains(&function.as_str());
            }
            ControlFlow::<()>::Continue(())
        });
    }
    if aggregates_or_rowtime {
        return false;
    }
    select.projection.push(SelectItem::ExprWithAlias {
        expr: Expr::CompoundIdentifier(vec![qualifier, Ident::new(ROWTIME)]),
        alias: Ident::new(ROWTIME),
    });
    true
}

/// `ORDER BY FLOOR(s.ROWTIME TO SECOND), score DESC` (an ORDER BY led by a time bucket, which
/// KDA allows on a stream): the rows of each bucket come out sorted when it closes. The query
/// reads `tumble(s, ROWTIME, INTERVAL '1' SECOND)` and sorts by `window_start`, then the rest.
fn sort_within_buckets(query: &mut Query) -> Result<()> {
    use datafusion::sql::sqlparser::ast::OrderByKind;
    let Some(order_by) = query.order_by.as_mut() else {
        return Ok(());
    };
    let OrderByKind::Expressions(keys) = &mut order_by.kind else {
        return Ok(());
    };
    let Some(first) = keys.first() else {
        return Ok(());
    };
    let Some((column, size)) = step_window(&first.expr)? else {
        return Ok(());
    };
    let SetExpr::Select(select) = query.body.as_mut() else {
        return Ok(());
    };
    let grouped = !matches!(&select.group_by, GroupByExpr::Expressions(e, _) if e.is_empty());
    if grouped {
        return Ok(());
    }
    let column = match &column {
        Expr::Identifier(ident) => ident.clone(),
        Expr::CompoundIdentifier(parts) => parts.last().cloned().unwrap_or_else(|| Ident::new("")),
        other => {
            return Err(Error::Plan(format!(
                "ORDER BY a time bucket sorts the rows of each bucket of a time column such as s.ROWTIME, not {other}"
            )));
        }
    };
    let (stream, alias_name) = windowed_stream(&select.from, "ORDER BY a time bucket sorts")?;
    select.from[0].relation = parse_relation(&format!(
        "SELECT 1 FROM tumble({stream}, {column}, {size}) AS {alias_name}"
    ))?;
    keys[0].expr = Expr::Identifier(Ident::new(WINDOW_START));
    Ok(())
}

fn is_stagger(expr: &Expr) -> bool {
    matches!(expr, Expr::Function(f) if f.name.to_string().eq_ignore_ascii_case("stagger"))
}

/// `WINDOWED BY STAGGER (PARTITION BY key, … RANGE INTERVAL …)` (which the parser hands over
/// as `GROUP BY stagger(key, …, INTERVAL …)`): a window per key, opened by its first row and
/// closed the range later. The query reads `stagger(stream, key, …, ROWTIME, range)`, groups
/// by the window and the keys, and each row's `ROWTIME` is its window's close.
fn rewrite_stagger(select: &mut Select, stagger: Expr) -> Result<()> {
    let Expr::Function(f) = &stagger else {
        return Err(stagger_shape());
    };
    let FunctionArguments::List(list) = &f.args else {
        return Err(stagger_shape());
    };
    let mut args: Vec<Expr> = list
        .args
        .iter()
        .filter_map(|a| match a {
            FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => Some(e.clone()),
            _ => None,
        })
        .collect();
    let Some(range) = args.pop().filter(|r| matches!(r, Expr::Interval(_))) else {
        return Err(stagger_shape());
    };
    if args.is_empty() {
        return Err(stagger_shape());
    }
    let (stream, alias_name) = windowed_stream(&select.from, "WINDOWED BY STAGGER windows")?;
    // The window function takes each key as SQL text over the stream's columns (unqualified):
    // its arguments are planned before any table is known.
    let mut keys = Vec::with_capacity(args.len());
    for key in &args {
        let mut key = key.clone();
        let _ = visit_expressions_mut(&mut key, |e| {
            if let Expr::CompoundIdentifier(parts) = e
                && let Some(last) = parts.last().cloned()
            {
                *e = Expr::Identifier(last);
            }
            ControlFlow::<()>::Continue(())
        });
        crate::kda_functions::rewrite_kda_expr(&mut key)?;
        keys.push(format!("'{}'", key.to_string().replace('\'', "''")));
    }
    select.from[0].relation = parse_relation(&format!(
        "SELECT 1 FROM stagger({stream}, {}, ROWTIME, {range}) AS {alias_name}",
        keys.join(", ")
    ))?;
    let GroupByExpr::Expressions(groups, _) = &mut select.group_by else {
        return Err(stagger_shape());
    };
    groups.push(Expr::Identifier(Ident::new(WINDOW_START)));
    groups.push(Expr::Identifier(Ident::new(WINDOW_END)));
    groups.extend(args);
    let window_end_as_rowtime = SelectItem::ExprWithAlias {
        expr: Expr::Identifier(Ident::new(WINDOW_END)),
        alias: Ident::new(ROWTIME),
    };
    let mut has_rowtime = false;
    for item in &mut select.projection {
        match item {
            SelectItem::UnnamedExpr(e) if names_rowtime(e) => {
                *item = window_end_as_rowtime.clone();
                has_rowtime = true;
            }
            SelectItem::ExprWithAlias { alias, .. } => {
                has_rowtime |= alias.value.eq_ignore_ascii_case(ROWTIME);
            }
            _ => {}
        }
    }
    if !has_rowtime {
        select.projection.push(window_end_as_rowtime);
    }
    Ok(())
}

fn stagger_shape() -> Error {
    Error::Plan(
        "WINDOWED BY STAGGER takes (PARTITION BY key, … RANGE INTERVAL '1' MINUTE)".to_string(),
    )
}

/// The stream a windowed query reads and the name its rows go by (its alias, or its own name);
/// `what` says which window, for the error when FROM is not a single stream.
fn windowed_stream(
    from: &[datafusion::sql::sqlparser::ast::TableWithJoins],
    what: &str,
) -> Result<(Ident, Ident)> {
    let single = from.len() == 1 && from[0].joins.is_empty();
    let Some(TableFactor::Table {
        name,
        alias,
        args: None,
        ..
    }) = from.first().map(|t| &t.relation).filter(|_| single)
    else {
        return Err(Error::Plan(format!(
            "{what} the rows of one stream: FROM names a single stream"
        )));
    };
    let Some(stream) = name.0.last().and_then(|p| p.as_ident()).cloned() else {
        return Err(Error::Plan(format!("cannot window '{name}'")));
    };
    let alias_name = alias.as_ref().map_or(stream.clone(), |a| a.name.clone());
    Ok((stream, alias_name))
}

/// Whether `expr` is the `ROWTIME` column (bare or qualified).
fn names_rowtime(expr: &Expr) -> bool {
    match expr {
        Expr::Identifier(i) => i.value.eq_ignore_ascii_case(ROWTIME),
        Expr::CompoundIdentifier(parts) => parts
            .last()
            .is_some_and(|i| i.value.eq_ignore_ascii_case(ROWTIME)),
        _ => false,
    }
}

pub(crate) fn parse_expr(sql: &str) -> Result<Expr> {
    let dialect = GenericDialect {};
    Parser::new(&dialect)
        .try_with_sql(sql)
        .and_then(|mut p| p.parse_expr())
        .map_err(|e| Error::Parse(e.to_string()))
}

fn parse_relation(sql: &str) -> Result<TableFactor> {
    let dialect = GenericDialect {};
    let query = Parser::new(&dialect)
        .try_with_sql(sql)
        .and_then(|mut p| p.parse_query())
        .map_err(|e| Error::Parse(e.to_string()))?;
    match *query.body {
        SetExpr::Select(select) if select.from.len() == 1 => Ok(select
            .from
            .into_iter()
            .next()
            .map(|t| t.relation)
            .expect("one relation")),
        _ => Err(Error::Parse(format!("could not window: {sql}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parser::{SluiceStatement, parse_statements};

    fn rewritten(sql: &str) -> String {
        let mut statements = parse_statements(sql).expect("parses");
        let statement = match statements.remove(0) {
            SluiceStatement::SelectStream(s) | SluiceStatement::DataFusion(s) => s,
            other => panic!("unexpected {other:?}"),
        };
        let mut statement = *statement;
        rewrite_step_windows(&mut statement).expect("rewrites");
        statement.to_string()
    }

    #[test]
    fn step_becomes_a_tumbling_window_named_like_the_stream() {
        assert_eq!(
            rewritten(
                "SELECT STREAM ticker, count(*) FROM trades GROUP BY ticker, STEP(trades.ROWTIME BY INTERVAL '60' SECOND)"
            ),
            "SELECT ticker, count(*), window_end AS rowtime FROM tumble(trades, ROWTIME, INTERVAL '60' SECOND) AS trades GROUP BY ticker, window_start, window_end"
        );
    }

    #[test]
    fn floor_to_a_unit_is_a_window_of_one_unit() {
        assert_eq!(
            rewritten(
                "SELECT STREAM FLOOR(t.ts TO MINUTE) AS minute, ROWTIME, max(v) FROM s AS t GROUP BY FLOOR(t.ts TO MINUTE)"
            ),
            "SELECT window_start AS minute, window_end AS rowtime, max(v) FROM tumble(s, ts, INTERVAL '1' MINUTE) AS t GROUP BY window_start, window_end"
        );
    }

    #[test]
    fn floor_to_a_month_is_refused() {
        let mut statement =
            match parse_statements("SELECT STREAM count(*) FROM s GROUP BY FLOOR(s.ts TO MONTH)")
                .expect("parses")
                .remove(0)
            {
                SluiceStatement::SelectStream(s) => *s,
                other => panic!("unexpected {other:?}"),
            };
        let error = rewrite_step_windows(&mut statement).expect_err("refused");
        assert!(
            error
                .to_string()
                .contains("FLOOR(… TO MONTH) cannot be a window")
        );
    }
}
