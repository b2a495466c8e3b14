//! Sluice's SQL front-end: the statements DataFusion does not know, on sqlparser's own parser.
//!
//! One [`DFParser`] walks the whole input. At the start of each statement we look at the leading
//! words: `CREATE [OR REPLACE] STREAM`, `DROP STREAM`, `SHOW STREAMS`, `DESCRIBE <name>` and
//! `FLUSH` are parsed here with sqlparser's building blocks (column definitions, `WITH`
//! options); everything else is handed to DataFusion's parser untouched, so its whole dialect
//! (including `CREATE EXTERNAL TABLE`) keeps working.

use datafusion::sql::parser::{DFParser, DFParserBuilder, Statement as DFStatement};
use datafusion::sql::sqlparser::ast::{ColumnDef, Expr, ObjectName, SqlOption, Value};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::tokenizer::{Span, Token, TokenWithSpan, Tokenizer};

use crate::error::{Error, Result};

/// A statement Sluice runs.
#[derive(Debug, Clone)]
pub enum SluiceStatement {
    /// `CREATE [OR REPLACE] STREAM [IF NOT EXISTS] name (columns) [WITH (options)]`
    CreateStream(Box<CreateStream>),
    /// `ALTER STREAM name [(columns)] SET (options)`: a new format, columns, partition key or
    /// watermark for the stream and every record it retains (`or_replace`/`if_not_exists`
    /// unused).
    AlterStream(Box<CreateStream>),
    /// `DROP STREAM [IF EXISTS] name`
    DropStream { name: String, if_exists: bool },
    /// `SHOW STREAMS`
    ShowStreams,
    /// `SHOW SHARDS name`: a stream's shards as Kinesis's `ListShards` gives them.
    ShowShards { name: String },
    /// `DESCRIBE name` / `DESC name`: a stream's columns, or any table's through DataFusion.
    Describe { name: String },
    /// `FLUSH`: returns once everything inserted before it is sealed and visible.
    Flush,
    /// `SELECT STREAM …`: a continuous query (the query without the `STREAM` keyword).
    SelectStream(Box<DFStatement>),
    /// `CREATE [OR REPLACE] PUMP name AS INSERT INTO stream SELECT STREAM …`
    CreatePump {
        name: String,
        or_replace: bool,
        /// The insert, without the `STREAM` keyword.
        insert: Box<DFStatement>,
        /// The insert as the user wrote it (with `STREAM`, comments and spacing), which is
        /// what is saved and shown.
        text: String,
    },
    /// `DROP PUMP [IF EXISTS] name`
    DropPump { name: String, if_exists: bool },
    /// `START PUMP name`
    StartPump { name: String },
    /// `STOP PUMP name`
    StopPump { name: String },
    /// `SHOW PUMPS`
    ShowPumps,
    /// `CREATE [OR REPLACE] DELIVERY STREAM [IF NOT EXISTS] name FROM stream WITH (options)`
    CreateDelivery {
        name: String,
        source: String,
        or_replace: bool,
        if_not_exists: bool,
        /// `WITH` options, keys lower-cased, values as text.
        options: Vec<(String, String)>,
    },
    /// `DROP DELIVERY STREAM [IF EXISTS] name`
    DropDelivery { name: String, if_exists: bool },
    /// `SHOW DELIVERY STREAMS`
    ShowDeliveries,
    /// `DESCRIBE DELIVERY STREAM name`
    DescribeDelivery { name: String },
    /// `SHOW APPLICATIONS`: the Kinesis Data Analytics applications and their state.
    ShowApplications,
    /// `DESCRIBE APPLICATION name`: an application's inputs, outputs, reference tables and
    /// in-application streams.
    DescribeApplication { name: String },
    /// Anything DataFusion parses.
    DataFusion(Box<DFStatement>),
}

/// A parsed `CREATE STREAM`.
#[derive(Debug, Clone)]
pub struct CreateStream {
    pub name: String,
    pub or_replace: bool,
    pub if_not_exists: bool,
    pub columns: Vec<ColumnDef>,
    /// `WATERMARK FOR column AS expression`.
    pub watermark: Option<(String, Expr)>,
    /// `WITH` options, keys lower-cased, values as text.
    pub options: Vec<(String, String)>,
}

/// Parses `sql` (one or more statements separated by `;`). A syntax error says where, plainly:
/// `syntax error at line 1, column 1: Expected: an SQL statement, found: SELEC`, then the line
/// and a caret under the place.
pub fn parse_statements(sql: &str) -> Result<Vec<SluiceStatement>> {
    parse_all(sql).map_err(|e| match e {
        Error::Parse(message) => Error::Parse(syntax_error(sql, &message)),
        Error::DataFusion(datafusion::error::DataFusionError::SQL(e, _)) => {
            Error::Parse(syntax_error(sql, &crate::error::parser_message(&e)))
        }
        other => other,
    })
}

/// "syntax error at line L, column C: message", the line, and a caret under column C, from a
/// parser message ending in sqlparser's ` at Line: L, Column: C`.
fn syntax_error(sql: &str, message: &str) -> String {
    let located = message.rsplit_once(" at Line: ").and_then(|(text, place)| {
        let (line, column) = place.split_once(", Column: ")?;
        Some((
            text,
            line.trim().parse::<usize>().ok()?,
            column.trim().parse::<usize>().ok()?,
        ))
    });
    let Some((text, line, column)) = located else {
        return format!("syntax error: {message}");
    };
    let mut out = format!("syntax error at line {line}, column {column}: {text}");
    if let Some(source) = sql.lines().nth(line.saturating_sub(1)) {
        let caret: String = source
            .chars()
            .take(column.saturating_sub(1))
            .map(|c| if c == '\t' { '\t' } else { ' ' })
            .collect();
        out.push_str(&format!("\n  {source}\n  {caret}^"));
    }
    out
}

fn parse_all(sql: &str) -> Result<Vec<SluiceStatement>> {
    let dialect = GenericDialect {};
    let (tokens, continuous) = lift_select_stream(sql, &dialect)?;
    let mut parser = DFParserBuilder::new(tokens)
        .with_dialect(&dialect)
        .build()?;
    let mut statements = Vec::new();
    let mut expecting_delimiter = false;
    loop {
        while parser.parser.consume_token(&Token::SemiColon) {
            expecting_delimiter = false;
        }
        if parser.parser.peek_token() == Token::EOF {
            break;
        }
        if expecting_delimiter {
            let found = parser.parser.peek_token();
            return Err(Error::Parse(format!(
                "expected ';' or the end of the statement, found {} at Line: {}, Column: {}",
                found.token, found.span.start.line, found.span.start.column
            )));
        }
        let start = parser.parser.peek_token().span;
        let statement = parse_statement(&mut parser, sql)?;
        statements.push(match statement {
            SluiceStatement::DataFusion(query) if continuous.contains(&start) => {
                SluiceStatement::SelectStream(query)
            }
            other => other,
        });
        expecting_delimiter = true;
    }
    Ok(statements)
}

/// Tokenizes `sql`, taking out the `STREAM` of every `SELECT STREAM` (Kinesis Analytics' marker
/// of a continuous query) and returning the spans of the `SELECT`s that had one.
///
/// `STREAM` right after `SELECT` is the keyword when an expression follows it; `SELECT stream,`,
/// `SELECT stream FROM` and `SELECT stream AS` name a column called `stream`.
fn lift_select_stream(
    sql: &str,
    dialect: &GenericDialect,
) -> Result<(Vec<TokenWithSpan>, Vec<Span>)> {
    let tokens = Tokenizer::new(dialect, sql)
        .tokenize_with_location()
        .map_err(|e| Error::Parse(e.to_string()))?;
    // KDA's TABLE(TOP_K_ITEMS_TUMBLING(CURSOR(SELECT STREAM …), …)) and the like become the
    // windowed queries they stand for.
    let tokens = crate::cursor::rewrite_cursor_functions(tokens)?;
    let significant = |from: usize| next_significant(&tokens, from);
    let before = |at: usize| prev_significant(&tokens, at);
    let mut drop = Vec::new();
    let mut continuous = Vec::new();
    for (i, token) in tokens.iter().enumerate() {
        if word(&token.token).as_deref() != Some("SELECT") {
            continue;
        }
        let Some(next) = significant(i + 1) else {
            continue;
        };
        if word(&tokens[next].token).as_deref() != Some("STREAM") {
            continue;
        }
        let follows = significant(next + 1).map(|j| &tokens[j].token);
        let is_keyword = match follows {
            Some(Token::Word(w)) => !matches!(w.value.to_ascii_uppercase().as_str(), "FROM" | "AS"),
            Some(
                Token::Mul | Token::LParen | Token::Number(_, _) | Token::SingleQuotedString(_),
            ) => true,
            _ => false,
        };
        if is_keyword {
            drop.push(next);
            continuous.push(token.span);
        }
    }
    // Flink's window spelling, TUMBLE(TABLE s, DESCRIPTOR(ts), …), becomes tumble(s, ts, …);
    // wrapped as FROM TABLE(TUMBLE(…)), the TABLE( … ) goes.
    let mut comma = Vec::new();
    for (i, token) in tokens.iter().enumerate() {
        if word(&token.token).as_deref() != Some("TABLE") {
            continue;
        }
        let Some(open) = significant(i + 1).filter(|&o| tokens[o].token == Token::LParen) else {
            continue;
        };
        let wraps_window = significant(open + 1).is_some_and(|f| {
            matches!(
                word(&tokens[f].token).as_deref(),
                Some("TUMBLE" | "HOP" | "SESSION" | "CUMULATE")
            )
        });
        if !wraps_window {
            continue;
        }
        if let Some((close, _)) = nested(&tokens, open).find(|&(_, depth)| depth == 0) {
            drop.extend([i, open, close]);
        }
    }
    for (i, token) in tokens.iter().enumerate() {
        match word(&token.token).as_deref() {
            Some("TABLE") => {
                let opens_call = before(i)
                    .filter(|&p| tokens[p].token == Token::LParen)
                    .and_then(before)
                    .is_some_and(|f| {
                        matches!(
                            word(&tokens[f].token).as_deref(),
                            Some("TUMBLE" | "HOP" | "SESSION" | "CUMULATE")
                        )
                    });
                if opens_call {
                    drop.push(i);
                }
            }
            Some("PARTITION") => {
                // SESSION(TABLE s PARTITION BY k, …) → session(s, k, …); a parenthesized key
                // list loses its parentheses.
                let in_session = before(i)
                    .and_then(before)
                    .filter(|&t| word(&tokens[t].token).as_deref() == Some("TABLE"))
                    .and_then(before)
                    .filter(|&p| tokens[p].token == Token::LParen)
                    .and_then(before)
                    .is_some_and(|f| word(&tokens[f].token).as_deref() == Some("SESSION"));
                let by =
                    significant(i + 1).filter(|&b| word(&tokens[b].token).as_deref() == Some("BY"));
                if let (true, Some(by)) = (in_session, by) {
                    comma.push(i);
                    drop.push(by);
                    if let Some(open) =
                        significant(by + 1).filter(|&o| tokens[o].token == Token::LParen)
                        && let Some(close) =
                            (open..tokens.len()).find(|&c| tokens[c].token == Token::RParen)
                    {
                        drop.extend([open, close]);
                    }
                }
            }
            Some("DESCRIPTOR") => {
                let open = significant(i + 1).filter(|&o| tokens[o].token == Token::LParen);
                let name = open.and_then(|o| significant(o + 1));
                let close = name
                    .and_then(|n| significant(n + 1))
                    .filter(|&c| tokens[c].token == Token::RParen);
                if let (Some(open), Some(close)) = (open, close) {
                    drop.extend([i, open, close]);
                }
            }
            _ => {}
        }
    }
    // Kinesis Analytics' WINDOWED BY STAGGER (PARTITION BY k, … RANGE INTERVAL …) becomes
    // GROUP BY stagger(k, …, INTERVAL …), which crate::kda turns into a stagger window.
    let mut renamed = Vec::new();
    for i in 0..tokens.len() {
        if word(&tokens[i].token).as_deref() != Some("WINDOWED") {
            continue;
        }
        let by = significant(i + 1).filter(|&b| word(&tokens[b].token).as_deref() == Some("BY"));
        let stagger = by
            .and_then(|b| significant(b + 1))
            .filter(|&s| word(&tokens[s].token).as_deref() == Some("STAGGER"));
        let open = stagger
            .and_then(|s| significant(s + 1))
            .filter(|&o| tokens[o].token == Token::LParen);
        let (Some(stagger), Some(open)) = (stagger, open) else {
            continue;
        };
        renamed.push((i, "GROUP"));
        renamed.push((stagger, "stagger"));
        if let Some(partition) = significant(open + 1)
            .filter(|&p| word(&tokens[p].token).as_deref() == Some("PARTITION"))
        {
            drop.push(partition);
            if let Some(by) = significant(partition + 1)
                .filter(|&b| word(&tokens[b].token).as_deref() == Some("BY"))
            {
                drop.push(by);
            }
        }
        comma.extend(top_level_word(&tokens, open, "RANGE"));
    }
    // Kinesis Analytics' STEP(column BY interval) becomes step(column, interval).
    for i in 0..tokens.len() {
        if word(&tokens[i].token).as_deref() != Some("STEP") {
            continue;
        }
        let Some(open) = significant(i + 1).filter(|&o| tokens[o].token == Token::LParen) else {
            continue;
        };
        comma.extend(top_level_word(&tokens, open, "BY"));
    }
    // Table function names are looked up as written; window functions are registered in lower
    // case, so `TUMBLE(` finds `tumble`.
    let window_calls: Vec<usize> = (0..tokens.len())
        .filter(|&i| {
            matches!(
                word(&tokens[i].token).as_deref(),
                Some("TUMBLE" | "HOP" | "SESSION" | "CUMULATE")
            ) && significant(i + 1).is_some_and(|o| tokens[o].token == Token::LParen)
        })
        .collect();
    // JDBC/ODBC-style `?` parameters become DataFusion's `$1`, `$2`, … in each statement.
    let mut parameters = 0;
    let tokens = tokens
        .into_iter()
        .enumerate()
        .filter(|(i, _)| !drop.contains(i))
        .map(|(i, mut t)| {
            if let (true, Token::Word(w)) = (window_calls.contains(&i), &mut t.token) {
                w.value = w.value.to_ascii_lowercase();
            }
            if let (Some((_, to)), Token::Word(w)) =
                (renamed.iter().find(|(at, _)| *at == i), &mut t.token)
            {
                w.value = (*to).to_string();
                w.keyword = if *to == "GROUP" {
                    datafusion::sql::sqlparser::keywords::Keyword::GROUP
                } else {
                    datafusion::sql::sqlparser::keywords::Keyword::NoKeyword
                };
                w.quote_style = None;
            }
            if comma.contains(&i) {
                t.token = Token::Comma;
            }
            match &mut t.token {
                Token::SemiColon => parameters = 0,
                Token::Placeholder(p) if p == "?" => {
                    parameters += 1;
                    *p = format!("${parameters}");
                }
                _ => {}
            }
            t
        })
        .collect();
    Ok((tokens, continuous))
}

/// The tokens from the parenthesis at `open` to the one closing it, each with the nesting depth
/// after it (1 directly inside; the closing parenthesis is the one at 0).
/// The first token at or after `from` that is not blank or a comment.
pub(crate) fn next_significant(tokens: &[TokenWithSpan], from: usize) -> Option<usize> {
    tokens
        .get(from..)?
        .iter()
        .position(|t| !matches!(t.token, Token::Whitespace(_)))
        .map(|i| from + i)
}

/// The last token before `at` that is not blank or a comment.
pub(crate) fn prev_significant(tokens: &[TokenWithSpan], at: usize) -> Option<usize> {
    tokens[..at]
        .iter()
        .rposition(|t| !matches!(t.token, Token::Whitespace(_)))
}

pub(crate) fn nested(
    tokens: &[TokenWithSpan],
    open: usize,
) -> impl Iterator<Item = (usize, usize)> + '_ {
    let mut depth = 0usize;
    tokens
        .iter()
        .enumerate()
        .skip(open)
        .map_while(move |(j, token)| {
            if depth == 0 && j > open {
                return None;
            }
            match token.token {
                Token::LParen => depth += 1,
                Token::RParen => depth = depth.saturating_sub(1),
                _ => {}
            }
            Some((j, depth))
        })
}

/// The first `keyword` directly inside the parentheses opened at `open`.
fn top_level_word(tokens: &[TokenWithSpan], open: usize, keyword: &str) -> Option<usize> {
    nested(tokens, open)
        .find(|&(j, depth)| depth == 1 && word(&tokens[j].token).as_deref() == Some(keyword))
        .map(|(j, _)| j)
}

pub(crate) fn word(token: &Token) -> Option<String> {
    match token {
        Token::Word(w) => Some(w.value.to_ascii_uppercase()),
        _ => None,
    }
}

fn at_statement_end(parser: &DFParser<'_>, n: usize) -> bool {
    matches!(
        parser.parser.peek_nth_token(n).token,
        Token::EOF | Token::SemiColon
    )
}

fn parse_statement(parser: &mut DFParser<'_>, sql: &str) -> Result<SluiceStatement> {
    let first = word(&parser.parser.peek_nth_token(0).token);
    let second = word(&parser.parser.peek_nth_token(1).token);
    let third = word(&parser.parser.peek_nth_token(2).token);
    if first.as_deref() == Some("CREATE") {
        // CREATE [OR REPLACE] STREAM | PUMP
        let or_replace = second.as_deref() == Some("OR") && third.as_deref() == Some("REPLACE");
        let kind_at = if or_replace { 3 } else { 1 };
        let kind = word(&parser.parser.peek_nth_token(kind_at).token);
        let then = word(&parser.parser.peek_nth_token(kind_at + 1).token);
        if kind.as_deref() == Some("DELIVERY") && then.as_deref() == Some("STREAM") {
            skip(parser, kind_at + 2);
            return parse_create_delivery(parser, or_replace);
        }
        if matches!(kind.as_deref(), Some("STREAM" | "PUMP")) {
            skip(parser, kind_at + 1);
            return if kind.as_deref() == Some("STREAM") {
                parse_create_stream(parser, or_replace)
            } else {
                parse_create_pump(parser, or_replace, sql)
            };
        }
    }
    match (first.as_deref(), second.as_deref(), third.as_deref()) {
        (Some("ALTER"), Some("STREAM"), _) => {
            skip(parser, 2);
            parse_alter_stream(parser)
        }
        (Some("DROP"), Some("DELIVERY"), Some("STREAM")) => {
            skip(parser, 3);
            let if_exists = parser
                .parser
                .parse_keywords(&[Keyword::IF, Keyword::EXISTS]);
            let name = object_name(&parser.parser.parse_object_name(false)?)?;
            Ok(SluiceStatement::DropDelivery { name, if_exists })
        }
        (Some("SHOW"), Some("APPLICATIONS"), _) if at_statement_end(parser, 2) => {
            skip(parser, 2);
            Ok(SluiceStatement::ShowApplications)
        }
        (Some("DESCRIBE" | "DESC"), Some("APPLICATION"), Some(_)) => {
            skip(parser, 2);
            let name = object_name(&parser.parser.parse_object_name(false)?)?;
            Ok(SluiceStatement::DescribeApplication { name })
        }
        (Some("SHOW"), Some("DELIVERY"), Some("STREAMS")) => {
            skip(parser, 3);
            Ok(SluiceStatement::ShowDeliveries)
        }
        (Some("DESCRIBE" | "DESC"), Some("DELIVERY"), Some("STREAM")) => {
            skip(parser, 3);
            let name = object_name(&parser.parser.parse_object_name(false)?)?;
            Ok(SluiceStatement::DescribeDelivery { name })
        }
        (Some("DROP"), Some(kind @ ("PUMP" | "STREAM")), _) => {
            let is_pump = kind == "PUMP";
            skip(parser, 2);
            let if_exists = parser
                .parser
                .parse_keywords(&[Keyword::IF, Keyword::EXISTS]);
            let name = object_name(&parser.parser.parse_object_name(false)?)?;
            Ok(if is_pump {
                SluiceStatement::DropPump { name, if_exists }
            } else {
                SluiceStatement::DropStream { name, if_exists }
            })
        }
        (Some(verb @ ("START" | "STOP")), Some("PUMP"), _) => {
            let start = verb == "START";
            skip(parser, 2);
            let name = object_name(&parser.parser.parse_object_name(false)?)?;
            Ok(if start {
                SluiceStatement::StartPump { name }
            } else {
                SluiceStatement::StopPump { name }
            })
        }
        (Some("SHOW"), Some("SHARDS"), _) => {
            skip(parser, 2);
            let _from = parser.parser.parse_keyword(Keyword::FROM);
            if at_statement_end(parser, 0) {
                return Err(Error::Parse(
                    "SHOW SHARDS needs a stream: SHOW SHARDS stream_name".to_string(),
                ));
            }
            let name = object_name(&parser.parser.parse_object_name(false)?)?;
            Ok(SluiceStatement::ShowShards { name })
        }
        (Some("SHOW"), Some(what @ ("PUMPS" | "STREAMS")), _) => {
            let pumps = what == "PUMPS";
            skip(parser, 2);
            Ok(if pumps {
                SluiceStatement::ShowPumps
            } else {
                SluiceStatement::ShowStreams
            })
        }
        (Some("DESCRIBE" | "DESC"), Some(_), _) if at_statement_end(parser, 2) => {
            parser.parser.next_token();
            let name = object_name(&parser.parser.parse_object_name(false)?)?;
            Ok(SluiceStatement::Describe { name })
        }
        (Some("FLUSH"), _, _) if at_statement_end(parser, 1) => {
            parser.parser.next_token();
            Ok(SluiceStatement::Flush)
        }
        _ => Ok(SluiceStatement::DataFusion(Box::new(
            parser.parse_statement()?,
        ))),
    }
}

/// Consumes `n` tokens already looked at.
fn skip(parser: &mut DFParser<'_>, n: usize) {
    for _ in 0..n {
        parser.parser.next_token();
    }
}

fn parse_create_stream(parser: &mut DFParser<'_>, or_replace: bool) -> Result<SluiceStatement> {
    let p = &mut parser.parser;
    let if_not_exists = p.parse_keywords(&[Keyword::IF, Keyword::NOT, Keyword::EXISTS]);
    let name = object_name(&p.parse_object_name(false)?)?;
    let (columns, watermark) = parse_columns(parser)?;
    let options = parser
        .parser
        .parse_options(Keyword::WITH)?
        .into_iter()
        .map(option_pair)
        .collect::<Result<Vec<_>>>()?;
    Ok(SluiceStatement::CreateStream(Box::new(CreateStream {
        name,
        or_replace,
        if_not_exists,
        columns,
        watermark,
        options,
    })))
}

/// `ALTER STREAM name [(columns)] SET (options)` (`WITH` is taken for `SET` too).
fn parse_alter_stream(parser: &mut DFParser<'_>) -> Result<SluiceStatement> {
    let name = object_name(&parser.parser.parse_object_name(false)?)?;
    let (columns, watermark) = parse_columns(parser)?;
    let p = &mut parser.parser;
    let keyword = if p.peek_keyword(Keyword::WITH) {
        Keyword::WITH
    } else {
        Keyword::SET
    };
    let options = p
        .parse_options(keyword)?
        .into_iter()
        .map(option_pair)
        .collect::<Result<Vec<_>>>()?;
    if options.is_empty() && columns.is_empty() {
        return Err(Error::Plan(format!(
            "ALTER STREAM {name} changes nothing; give new columns and/or SET (format = 'json', …)"
        )));
    }
    Ok(SluiceStatement::AlterStream(Box::new(CreateStream {
        name,
        or_replace: false,
        if_not_exists: false,
        columns,
        watermark,
        options,
    })))
}

/// A stream's `(column type, …, WATERMARK FOR column AS …)` list, if there is one.
#[allow(clippy::type_complexity)]
fn parse_columns(parser: &mut DFParser<'_>) -> Result<(Vec<ColumnDef>, Option<(String, Expr)>)> {
    let p = &mut parser.parser;
    let mut columns = Vec::new();
    let mut watermark = None;
    if p.consume_token(&Token::LParen) {
        loop {
            if p.consume_token(&Token::RParen) {
                break;
            }
            if word(&p.peek_token().token).as_deref() == Some("WATERMARK") {
                p.next_token();
                p.expect_keyword_is(Keyword::FOR)?;
                let column = normalize(&p.parse_identifier()?);
                p.expect_keyword_is(Keyword::AS)?;
                let expression = p.parse_expr()?;
                if watermark.replace((column, expression)).is_some() {
                    return Err(Error::Plan("a stream has at most one WATERMARK".into()));
                }
            } else {
                columns.push(p.parse_column_def()?);
            }
            if !p.consume_token(&Token::Comma) {
                p.expect_token(&Token::RParen)?;
                break;
            }
        }
    }
    Ok((columns, watermark))
}

fn parse_create_pump(
    parser: &mut DFParser<'_>,
    or_replace: bool,
    sql: &str,
) -> Result<SluiceStatement> {
    let name = object_name(&parser.parser.parse_object_name(false)?)?;
    parser.parser.expect_keyword_is(Keyword::AS)?;
    let start = parser.parser.peek_token_ref().span.start;
    let insert = parser.parse_statement()?;
    let end = parser.parser.get_current_token().span.end;
    let text = source_text(sql, start, end).unwrap_or_else(|| insert.to_string());
    let is_insert = matches!(&insert, DFStatement::Statement(s) if matches!(s.as_ref(), datafusion::sql::sqlparser::ast::Statement::Insert(_)));
    if !is_insert {
        return Err(Error::Plan(format!(
            "CREATE PUMP {name} AS … takes INSERT INTO stream SELECT STREAM …, not '{text}'"
        )));
    }
    Ok(SluiceStatement::CreatePump {
        name,
        or_replace,
        insert: Box::new(insert),
        text,
    })
}

/// `sql` on one line, for a table cell: comments out, each run of whitespace outside quotes
/// one space; quoted text is untouched.
pub(crate) fn one_line(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut quote = None;
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        match quote {
            Some(q) => {
                if c == q {
                    quote = None;
                }
                out.push(c);
            }
            None if c == '\'' || c == '"' => {
                quote = Some(c);
                out.push(c);
            }
            None if c == '-' && chars.peek() == Some(&'-') => {
                while chars.next_if(|&c| c != '\n').is_some() {}
                if !out.ends_with(' ') {
                    out.push(' ');
                }
            }
            None if c.is_whitespace() => {
                if !out.ends_with(' ') {
                    out.push(' ');
                }
            }
            None => out.push(c),
        }
    }
    out.trim().to_string()
}

/// The text of `sql` between two token locations (1-based lines and columns in characters).
fn source_text(
    sql: &str,
    start: datafusion::sql::sqlparser::tokenizer::Location,
    end: datafusion::sql::sqlparser::tokenizer::Location,
) -> Option<String> {
    let offset = |location: datafusion::sql::sqlparser::tokenizer::Location| {
        let line_start: usize = sql
            .split_inclusive('\n')
            .take(usize::try_from(location.line).ok()?.checked_sub(1)?)
            .map(str::len)
            .sum();
        let column = usize::try_from(location.column).ok()?.checked_sub(1)?;
        let within = sql[line_start..]
            .char_indices()
            .nth(column)
            .map_or(sql.len() - line_start, |(i, _)| i);
        Some(line_start + within)
    };
    let (from, to) = (offset(start)?, offset(end)?);
    (from < to).then(|| sql.get(from..to).map(|t| t.trim().to_string()))?
}

fn parse_create_delivery(parser: &mut DFParser<'_>, or_replace: bool) -> Result<SluiceStatement> {
    let p = &mut parser.parser;
    let if_not_exists = p.parse_keywords(&[Keyword::IF, Keyword::NOT, Keyword::EXISTS]);
    let name = object_name(&p.parse_object_name(false)?)?;
    if !p.parse_keyword(Keyword::FROM) {
        return Err(Error::Plan(format!(
            "CREATE DELIVERY STREAM {name} needs FROM stream, then WITH (destination = '…', …)"
        )));
    }
    let source = object_name(&p.parse_object_name(false)?)?;
    let options = p
        .parse_options(Keyword::WITH)?
        .into_iter()
        .map(option_pair)
        .collect::<Result<Vec<_>>>()?;
    Ok(SluiceStatement::CreateDelivery {
        name,
        source,
        or_replace,
        if_not_exists,
        options,
    })
}

/// A stream name: one identifier, lower-cased unless quoted (as DataFusion does for tables).
pub(crate) fn object_name(name: &ObjectName) -> Result<String> {
    let parts: Vec<_> = name.0.iter().filter_map(|p| p.as_ident()).collect();
    match parts.as_slice() {
        [ident] => Ok(normalize(ident)),
        _ => Err(Error::Plan(format!(
            "stream name '{name}' must be a single identifier (streams live in one namespace)"
        ))),
    }
}

fn normalize(ident: &datafusion::sql::sqlparser::ast::Ident) -> String {
    if ident.quote_style.is_some() {
        ident.value.clone()
    } else {
        ident.value.to_ascii_lowercase()
    }
}

fn option_pair(option: SqlOption) -> Result<(String, String)> {
    match option {
        SqlOption::KeyValue { key, value } => {
            let text = match value {
                Expr::Value(v) => match v.value {
                    Value::SingleQuotedString(s) | Value::DoubleQuotedString(s) => s,
                    Value::Number(n, _) => n,
                    Value::Boolean(b) => b.to_string(),
                    other => other.to_string(),
                },
                Expr::Identifier(ident) => ident.value,
                other => other.to_string(),
            };
            Ok((key.value.to_ascii_lowercase(), text))
        }
        other => Err(Error::Plan(format!(
            "WITH option '{other}' is not of the form key = value"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_stream_parses_columns_and_options() -> Result<()> {
        let statements = parse_statements(
            "CREATE STREAM Ticker (symbol VARCHAR, price DOUBLE) WITH (shards = 4, format = 'json', partition_key = 'symbol');",
        )?;
        let [SluiceStatement::CreateStream(create)] = statements.as_slice() else {
            panic!("expected one CREATE STREAM, got {statements:?}");
        };
        assert_eq!(create.name, "ticker");
        assert_eq!(create.columns.len(), 2);
        assert_eq!(create.options[0], ("shards".into(), "4".into()));
        assert_eq!(create.options[2], ("partition_key".into(), "symbol".into()));
        Ok(())
    }

    #[test]
    fn several_statements_mix_ours_and_datafusions() -> Result<()> {
        let statements = parse_statements(
            "SHOW STREAMS; select 1; DROP STREAM IF EXISTS x; DESCRIBE ticker; FLUSH; DESCRIBE SELECT 1",
        )?;
        assert!(matches!(statements[0], SluiceStatement::ShowStreams));
        assert!(matches!(statements[1], SluiceStatement::DataFusion(_)));
        assert!(matches!(
            &statements[2],
            SluiceStatement::DropStream { name, if_exists: true } if name == "x"
        ));
        assert!(matches!(&statements[3], SluiceStatement::Describe { name } if name == "ticker"));
        assert!(matches!(statements[4], SluiceStatement::Flush));
        assert!(matches!(statements[5], SluiceStatement::DataFusion(_)));
        Ok(())
    }

    #[test]
    fn select_stream_marks_a_continuous_query() -> Result<()> {
        let statements = parse_statements(
            "SELECT STREAM url, count(*) FROM clicks; SELECT stream, reason FROM e; SELECT stream FROM e; select stream * from clicks",
        )?;
        assert!(matches!(statements[0], SluiceStatement::SelectStream(_)));
        assert!(matches!(statements[1], SluiceStatement::DataFusion(_)));
        assert!(matches!(statements[2], SluiceStatement::DataFusion(_)));
        assert!(matches!(statements[3], SluiceStatement::SelectStream(_)));
        let SluiceStatement::SelectStream(query) = &statements[0] else {
            unreachable!()
        };
        assert_eq!(query.to_string(), "SELECT url, count(*) FROM clicks");
        Ok(())
    }

    #[test]
    fn pump_statements_parse() -> Result<()> {
        let statements = parse_statements(
            "CREATE OR REPLACE PUMP p AS INSERT INTO out SELECT STREAM a FROM src WHERE a > 1; SHOW PUMPS; STOP PUMP p; START PUMP p; DROP PUMP IF EXISTS p",
        )?;
        let SluiceStatement::CreatePump {
            name,
            or_replace,
            insert,
            text,
        } = &statements[0]
        else {
            panic!("expected CREATE PUMP, got {:?}", statements[0]);
        };
        assert_eq!((name.as_str(), *or_replace), ("p", true));
        assert_eq!(
            insert.to_string(),
            "INSERT INTO out SELECT a FROM src WHERE a > 1"
        );
        assert_eq!(text, "INSERT INTO out SELECT STREAM a FROM src WHERE a > 1");
        assert!(matches!(statements[1], SluiceStatement::ShowPumps));
        assert!(matches!(&statements[2], SluiceStatement::StopPump { name } if name == "p"));
        assert!(matches!(&statements[3], SluiceStatement::StartPump { name } if name == "p"));
        assert!(matches!(
            &statements[4],
            SluiceStatement::DropPump {
                if_exists: true,
                ..
            }
        ));
        assert!(parse_statements("CREATE PUMP p AS SELECT 1").is_err());
        // Spread over lines, with a comment: kept as written, up to the statement's end.
        let statements = parse_statements(
            "SHOW STREAMS;\nCREATE PUMP \"P\" AS\n  INSERT INTO \"OUT\" -- the total\n  SELECT STREAM \"é\", b FROM src;\nSHOW PUMPS",
        )?;
        let SluiceStatement::CreatePump { text, .. } = &statements[1] else {
            panic!("expected CREATE PUMP, got {:?}", statements[1]);
        };
        assert_eq!(
            text,
            "INSERT INTO \"OUT\" -- the total\n  SELECT STREAM \"é\", b FROM src"
        );
        assert_eq!(
            one_line(text),
            "INSERT INTO \"OUT\" SELECT STREAM \"é\", b FROM src"
        );
        assert_eq!(
            one_line("SELECT  'a  --b'\n\t, 1 -- x"),
            "SELECT 'a  --b' , 1"
        );
        let Err(e) = parse_statements("CREATE PUMP p AS SELECT STREAM * FROM clicks") else {
            panic!("a pump needs an INSERT");
        };
        assert!(
            e.to_string().contains("not 'SELECT STREAM * FROM clicks'"),
            "{e}"
        );
        Ok(())
    }

    #[test]
    fn garbage_after_a_statement_is_an_error() {
        assert!(parse_statements("SHOW STREAMS now").is_err());
        assert!(parse_statements("CREATE STREAM s (a INT").is_err());
    }
}
