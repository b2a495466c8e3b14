//! Kinesis Data Analytics' streaming table functions over a cursor:
//!
//! ```sql
//! SELECT STREAM * FROM TABLE(TOP_K_ITEMS_TUMBLING(
//!     CURSOR(SELECT STREAM * FROM "SOURCE_SQL_STREAM_001"), 'TICKER', 5, 60));
//! SELECT STREAM NUMBER_OF_DISTINCT_ITEMS FROM TABLE(COUNT_DISTINCT_ITEMS_TUMBLING(
//!     CURSOR(SELECT STREAM * FROM "SOURCE_SQL_STREAM_001"), 'TICKER', 60));
//! ```
//!
//! Both are tumbling windows over the cursor's `ROWTIME`, so each call becomes the windowed
//! query it stands for, as a derived table that the `STEP` window rewrite
//! ([`crate::kda`]) then turns into a tumbling window:
//!
//! - `TOP_K_ITEMS_TUMBLING(c, 'col', k, seconds)`: per window, the `k` most frequent values of
//!   `col` with their counts (`col`, `MOST_FREQUENT_VALUES`), ranked by count (ties by value).
//!   KDA approximates; this is exact, with one counter per distinct value per window.
//! - `COUNT_DISTINCT_ITEMS_TUMBLING(c, 'col', seconds)`: per window, one row
//!   `NUMBER_OF_DISTINCT_ITEMS`, exact (KDA is exact up to 10,000 items and approximates above).
//!
//! Each output row's `ROWTIME` is its window's end. The cursor reads one stream, optionally
//! filtered (`CURSOR(SELECT STREAM * FROM s WHERE price > 10)`); a cursor over a join or an
//! aggregate is refused with what to write instead (a pump into an in-application stream, and
//! the cursor over that). The machine-learning functions (`RANDOM_CUT_FOREST`,
//! `RANDOM_CUT_FOREST_WITH_EXPLANATION`, `HOTSPOTS`) become calls of their table functions
//! ([`crate::ml::table`]) with the cursor's query as a subquery.

use datafusion::sql::sqlparser::ast::{GroupByExpr, SetExpr, Statement, TableFactor};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::parser::Parser;
use datafusion::sql::sqlparser::tokenizer::{Span, Token, TokenWithSpan, Tokenizer};

use crate::error::{Error, Result};
use crate::parser::{nested, next_significant as significant, prev_significant as before, word};

/// KDA's limits on the arguments.
const MAX_K: u64 = 100_000;
const MAX_WINDOW_SECONDS: u64 = 3_600;

/// Replaces every `TABLE(function(CURSOR(query), …))` in `tokens` by the windowed query it
/// stands for.
pub fn rewrite_cursor_functions(tokens: Vec<TokenWithSpan>) -> Result<Vec<TokenWithSpan>> {
    let mut tokens = tokens;
    while let Some(cursor) = tokens.iter().enumerate().position(|(i, t)| {
        word(&t.token).as_deref() == Some("CURSOR")
            && significant(&tokens, i + 1).is_some_and(|o| tokens[o].token == Token::LParen)
    }) {
        let call = locate(&tokens, cursor)?;
        let replacement = call.rewrite(&tokens)?;
        let span = Span::new(
            tokens[call.table].span.start,
            tokens[call.table_close].span.end,
        );
        let generated = Tokenizer::new(&GenericDialect {}, &replacement)
            .tokenize()
            .map_err(|e| Error::Parse(e.to_string()))?
            .into_iter()
            .map(|token| TokenWithSpan::new(token, span));
        tokens.splice(call.table..=call.table_close, generated);
    }
    Ok(tokens)
}

/// Where the parts of one `TABLE(function(CURSOR(query), arguments…))` are.
struct Call {
    table: usize,
    function: String,
    /// The cursor's query, between `CURSOR(` and its `)`.
    query: (usize, usize),
    /// The arguments after the cursor, as written.
    arguments: Vec<String>,
    table_close: usize,
}

fn text(tokens: &[TokenWithSpan]) -> String {
    tokens.iter().map(|t| t.token.to_string()).collect()
}

fn locate(tokens: &[TokenWithSpan], cursor: usize) -> Result<Call> {
    let function_at = before(tokens, cursor)
        .filter(|&p| tokens[p].token == Token::LParen)
        .and_then(|p| before(tokens, p));
    let function = function_at
        .and_then(|f| word(&tokens[f].token))
        .unwrap_or_else(|| "a table function".to_string());
    let table = function_at
        .and_then(|f| before(tokens, f))
        .filter(|&p| tokens[p].token == Token::LParen)
        .and_then(|p| before(tokens, p))
        .filter(|&t| word(&tokens[t].token).as_deref() == Some("TABLE"));
    let (Some(function_at), Some(table)) = (function_at, table) else {
        return Err(Error::Plan(format!(
            "CURSOR(…) is an argument of a streaming table function read with FROM TABLE(…): write FROM TABLE({function}(CURSOR(SELECT STREAM * FROM stream), …))"
        )));
    };
    let close_of = |open: usize| {
        nested(tokens, open)
            .filter(|&(_, depth)| depth == 0)
            .map(|(j, _)| j)
            .next()
    };
    let unclosed = || {
        Error::Parse(format!(
            "{function}(CURSOR(…) …): a parenthesis is not closed"
        ))
    };
    let cursor_open = significant(tokens, cursor + 1).ok_or_else(unclosed)?;
    let cursor_close = close_of(cursor_open).ok_or_else(unclosed)?;
    let function_open = significant(tokens, function_at + 1).ok_or_else(unclosed)?;
    let function_close = close_of(function_open).ok_or_else(unclosed)?;
    let table_open = significant(tokens, table + 1).ok_or_else(unclosed)?;
    let table_close = close_of(table_open).ok_or_else(unclosed)?;
    // The arguments after the cursor's `)`, which a comma separates from them: split at
    // commas outside parentheses; blanks and comments (`-- name of column in single quotes`)
    // are not part of them, and KDA's reference ends the list with a comma.
    let mut arguments = Vec::new();
    if let Some(comma) = significant(tokens, cursor_close + 1)
        .filter(|&c| c < function_close && tokens[c].token == Token::Comma)
    {
        let mut current = String::new();
        let mut depth = 0usize;
        for token in &tokens[comma + 1..function_close] {
            match token.token {
                Token::LParen => depth += 1,
                Token::RParen => depth = depth.saturating_sub(1),
                Token::Comma if depth == 0 => {
                    arguments.push(std::mem::take(&mut current));
                    continue;
                }
                Token::Whitespace(_) => continue,
                _ => {}
            }
            current.push_str(&token.token.to_string());
        }
        arguments.push(current);
    }
    arguments.retain(|a| !a.is_empty());
    Ok(Call {
        table,
        function,
        query: (cursor_open + 1, cursor_close),
        arguments,
        table_close,
    })
}

impl Call {
    /// The windowed query this call stands for, as a derived table.
    fn rewrite(&self, tokens: &[TokenWithSpan]) -> Result<String> {
        let function = self.function.as_str();
        if let Some((name, _)) = crate::ml::table::MlKind::ALL
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(function))
        {
            return Ok(self.model_call(name, tokens));
        }
        let (shape, items) = match function {
            "TOP_K_ITEMS_TUMBLING" => ("(CURSOR(SELECT STREAM …), 'column', k, window_seconds)", 3),
            "COUNT_DISTINCT_ITEMS_TUMBLING" => {
                ("(CURSOR(SELECT STREAM …), 'column', window_seconds)", 2)
            }
            _ => {
                return Err(Error::Plan(format!(
                    "{function}(CURSOR(SELECT STREAM …), …) is not a streaming table function Sluice knows: they are TOP_K_ITEMS_TUMBLING, COUNT_DISTINCT_ITEMS_TUMBLING, RANDOM_CUT_FOREST, RANDOM_CUT_FOREST_WITH_EXPLANATION and HOTSPOTS"
                )));
            }
        };
        if self.arguments.len() != items {
            return Err(Error::Plan(format!(
                "{function} takes {shape}, not {} arguments after the cursor",
                self.arguments.len()
            )));
        }
        let column = self.column()?;
        let number = |i: usize, what: &str, max: u64| -> Result<u64> {
            match self.arguments[i].parse::<u64>() {
                Ok(n) if (1..=max).contains(&n) => Ok(n),
                _ => Err(Error::Plan(format!(
                    "{function}: {what} is a whole number from 1 to {max}, not {}",
                    self.arguments[i]
                ))),
            }
        };
        let (from, qualifier) = self.cursor_source(tokens)?;
        let step =
            |seconds: u64| format!("STEP({qualifier}.ROWTIME BY INTERVAL '{seconds}' SECOND)");
        Ok(match function {
            "TOP_K_ITEMS_TUMBLING" => {
                let k = number(1, "K (how many values)", MAX_K)?;
                let window = step(number(2, "the window size in seconds", MAX_WINDOW_SECONDS)?);
                // Ranked within each window, so the same query answers over retained data
                // (SELECT without STREAM) and continuously, one window at a time.
                format!(
                    "(SELECT {column}, MOST_FREQUENT_VALUES FROM \
                     (SELECT {column}, COUNT(*) AS MOST_FREQUENT_VALUES, \
                     ROW_NUMBER() OVER (PARTITION BY {window} ORDER BY COUNT(*) DESC, {column}) AS item_rank \
                     {from} GROUP BY {window}, {column}) AS ranked_items \
                     WHERE item_rank <= {k}) AS top_k_items"
                )
            }
            _ => {
                let window = step(number(1, "the window size in seconds", MAX_WINDOW_SECONDS)?);
                format!(
                    "(SELECT COUNT(DISTINCT {column}) AS NUMBER_OF_DISTINCT_ITEMS {from} \
                     GROUP BY {window}) AS count_distinct_items"
                )
            }
        })
    }

    /// A machine-learning function's call: `name(EXISTS (query), arguments…)`, the cursor's
    /// query (without its `STREAM`) planned by DataFusion as a subquery and handed to the
    /// table function ([`crate::ml::table`]).
    fn model_call(&self, name: &str, tokens: &[TokenWithSpan]) -> String {
        let (start, end) = self.query;
        let mut query: Vec<TokenWithSpan> = tokens[start..end].to_vec();
        if let Some(select) =
            significant(&query, 0).filter(|&s| word(&query[s].token).as_deref() == Some("SELECT"))
            && let Some(stream) = significant(&query, select + 1)
                .filter(|&s| word(&query[s].token).as_deref() == Some("STREAM"))
        {
            query.remove(stream);
        }
        let mut call = format!("{name}(EXISTS ({})", text(&query));
        for argument in &self.arguments {
            call.push_str(", ");
            call.push_str(argument);
        }
        call.push(')');
        call
    }

    /// The column argument, `'TICKER'`, as an identifier (unquoted when it can be, so it
    /// resolves as KDA's upper-case names do).
    fn column(&self) -> Result<String> {
        let argument = &self.arguments[0];
        let Some(name) = argument
            .strip_prefix('\'')
            .and_then(|a| a.strip_suffix('\''))
            .filter(|n| !n.is_empty())
        else {
            return Err(Error::Plan(format!(
                "{}: the column is named in single quotes, e.g. 'TICKER_SYMBOL', not {argument}",
                self.function
            )));
        };
        let plain = name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        Ok(if plain {
            name.to_string()
        } else {
            format!("\"{}\"", name.replace('"', "\"\""))
        })
    }

    /// `FROM stream [AS alias] [WHERE …]` of the cursor's query, and the name its columns are
    /// qualified by.
    fn cursor_source(&self, tokens: &[TokenWithSpan]) -> Result<(String, String)> {
        let function = &self.function;
        let (start, end) = self.query;
        // The cursor's query is continuous by nature: its STREAM is dropped here.
        let mut query_tokens: Vec<TokenWithSpan> = tokens[start..end].to_vec();
        if let Some(select) = significant(&query_tokens, 0)
            .filter(|&s| word(&query_tokens[s].token).as_deref() == Some("SELECT"))
            && let Some(stream) = significant(&query_tokens, select + 1)
                .filter(|&s| word(&query_tokens[s].token).as_deref() == Some("STREAM"))
        {
            query_tokens.remove(stream);
        }
        let sql = text(&query_tokens);
        let refuse = |why: &str| {
            Error::Plan(format!(
                "{function}: the cursor reads one stream ({why}); write CURSOR(SELECT STREAM * FROM stream [WHERE …]), or pump the query into an in-application stream and take the cursor over that"
            ))
        };
        let statements = Parser::parse_sql(&GenericDialect {}, &sql)
            .map_err(|e| Error::Parse(format!("{function}: the cursor's query: {e}")))?;
        let [Statement::Query(query)] = statements.as_slice() else {
            return Err(refuse("its query is not a SELECT"));
        };
        let SetExpr::Select(select) = query.body.as_ref() else {
            return Err(refuse("its query is not a single SELECT"));
        };
        if select.from.len() != 1 || !select.from[0].joins.is_empty() {
            return Err(refuse("it joins"));
        }
        let grouped = !matches!(&select.group_by, GroupByExpr::Expressions(e, _) if e.is_empty());
        if grouped || select.having.is_some() || select.distinct.is_some() {
            return Err(refuse("it groups"));
        }
        let TableFactor::Table { name, alias, .. } = &select.from[0].relation else {
            return Err(refuse("it reads a subquery"));
        };
        let qualifier = match alias {
            Some(alias) => alias.name.to_string(),
            None => name
                .0
                .last()
                .map_or_else(|| name.to_string(), |part| part.to_string()),
        };
        let mut from = format!("FROM {}", select.from[0].relation);
        if let Some(selection) = &select.selection {
            from.push_str(&format!(" WHERE {selection}"));
        }
        Ok((from, qualifier))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rewritten(sql: &str) -> Result<String> {
        let tokens = Tokenizer::new(&GenericDialect {}, sql)
            .tokenize_with_location()
            .map_err(|e| Error::Parse(e.to_string()))?;
        Ok(text(&rewrite_cursor_functions(tokens)?))
    }

    #[test]
    fn top_k_becomes_a_per_window_count_sorted_and_limited() -> Result<()> {
        let sql = rewritten(
            "SELECT STREAM * FROM TABLE(TOP_K_ITEMS_TUMBLING(CURSOR(SELECT STREAM * FROM \"SOURCE_SQL_STREAM_001\"), 'TICKER', 5, 60))",
        )?;
        assert_eq!(
            sql,
            "SELECT STREAM * FROM (SELECT TICKER, MOST_FREQUENT_VALUES FROM (SELECT TICKER, COUNT(*) AS MOST_FREQUENT_VALUES, ROW_NUMBER() OVER (PARTITION BY STEP(\"SOURCE_SQL_STREAM_001\".ROWTIME BY INTERVAL '60' SECOND) ORDER BY COUNT(*) DESC, TICKER) AS item_rank FROM \"SOURCE_SQL_STREAM_001\" GROUP BY STEP(\"SOURCE_SQL_STREAM_001\".ROWTIME BY INTERVAL '60' SECOND), TICKER) AS ranked_items WHERE item_rank <= 5) AS top_k_items"
        );
        Ok(())
    }

    #[test]
    fn count_distinct_keeps_the_cursors_filter_and_alias() -> Result<()> {
        let sql = rewritten(
            "SELECT STREAM NUMBER_OF_DISTINCT_ITEMS FROM TABLE(COUNT_DISTINCT_ITEMS_TUMBLING(CURSOR(SELECT STREAM \"review_id\" FROM reviews AS r WHERE r.stars > 2), 'review id', 5))",
        )?;
        assert_eq!(
            sql,
            "SELECT STREAM NUMBER_OF_DISTINCT_ITEMS FROM (SELECT COUNT(DISTINCT \"review id\") AS NUMBER_OF_DISTINCT_ITEMS FROM reviews AS r WHERE r.stars > 2 GROUP BY STEP(r.ROWTIME BY INTERVAL '5' SECOND)) AS count_distinct_items"
        );
        Ok(())
    }

    #[test]
    fn bad_calls_say_what_to_write() {
        let message = |sql: &str| {
            rewritten(sql)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        assert!(message("SELECT * FROM TABLE(TOP_K_ITEMS_TUMBLING(CURSOR(SELECT STREAM * FROM s), 'a', 0, 60))")
            .contains("K (how many values) is a whole number from 1 to 100000, not 0"));
        assert!(message("SELECT * FROM TABLE(TOP_K_ITEMS_TUMBLING(CURSOR(SELECT STREAM * FROM s), 'a', 3, 7200))")
            .contains("the window size in seconds is a whole number from 1 to 3600"));
        assert!(message("SELECT * FROM TABLE(TOP_K_ITEMS_TUMBLING(CURSOR(SELECT STREAM * FROM s), a, 3, 60))")
            .contains("the column is named in single quotes"));
        assert!(message("SELECT * FROM TABLE(COUNT_DISTINCT_ITEMS_TUMBLING(CURSOR(SELECT STREAM * FROM s JOIN t ON s.a = t.a), 'a', 60))")
            .contains("the cursor reads one stream (it joins)"));
        assert!(
            message("SELECT * FROM TABLE(DETECT_THINGS(CURSOR(SELECT STREAM * FROM s)))")
                .contains("DETECT_THINGS(CURSOR(SELECT STREAM …), …) is not a streaming table function Sluice knows")
        );
        assert_eq!(
            rewritten(
                "SELECT STREAM * FROM TABLE(RANDOM_CUT_FOREST(CURSOR(SELECT STREAM \"TEMP\" FROM s WHERE x > 1), 50, 128))"
            )
            .unwrap_or_default(),
            "SELECT STREAM * FROM random_cut_forest(EXISTS (SELECT  \"TEMP\" FROM s WHERE x > 1), 50, 128)"
        );
        assert!(
            message(
                "SELECT * FROM TOP_K_ITEMS_TUMBLING(CURSOR(SELECT STREAM * FROM s), 'a', 3, 60)"
            )
            .contains("write FROM TABLE(TOP_K_ITEMS_TUMBLING(CURSOR")
        );
    }
}
