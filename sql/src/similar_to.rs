//! `SIMILAR TO` with the SQL standard's meaning, as Kinesis Data Analytics has it.
//!
//! In SQL a `SIMILAR TO` pattern matches the whole string, `%` is any run of characters and `_`
//! one character, while `|`, `*`, `+`, `?`, `{m,n}`, `( )` and `[ ]` work as in regular
//! expressions and `.` is an ordinary character. DataFusion plans `SIMILAR TO` as an unanchored
//! regular-expression match, so `'AMZN' SIMILAR TO '%AMZN%'` would be false. A literal pattern
//! is translated to the regular expression with the standard's meaning before planning.

use std::ops::ControlFlow;

use datafusion::sql::parser::Statement as DFStatement;
use datafusion::sql::sqlparser::ast::{Expr, Value, visit_expressions_mut};

use crate::error::{Error, Result};

/// Translates the literal patterns of every `SIMILAR TO` in `statement`.
pub fn rewrite_similar_to(statement: &mut DFStatement) -> Result<()> {
    let DFStatement::Statement(inner) = statement else {
        return Ok(());
    };
    let outcome = visit_expressions_mut(inner.as_mut(), |expr| {
        let Expr::SimilarTo {
            pattern,
            escape_char,
            ..
        } = expr
        else {
            return ControlFlow::Continue(());
        };
        let escape = match escape_char.as_ref().map(|e| &e.value) {
            None => None,
            Some(Value::SingleQuotedString(e)) if e.chars().count() == 1 => e.chars().next(),
            Some(other) => {
                return ControlFlow::Break(Error::Plan(format!(
                    "SIMILAR TO … ESCAPE takes one character, not {other}"
                )));
            }
        };
        if let Expr::Value(value) = pattern.as_mut()
            && let Value::SingleQuotedString(text) = &mut value.value
        {
            *text = similar_to_regex(text, escape);
            *escape_char = None;
        }
        ControlFlow::Continue(())
    });
    match outcome {
        ControlFlow::Break(e) => Err(e),
        ControlFlow::Continue(()) => Ok(()),
    }
}

/// The regular expression (Rust's `regex` syntax) of a SQL `SIMILAR TO` pattern.
pub fn similar_to_regex(pattern: &str, escape: Option<char>) -> String {
    let mut out = String::from("^(?:");
    let mut chars = pattern.chars();
    let mut in_class = false;
    while let Some(c) = chars.next() {
        if Some(c) == escape {
            if let Some(next) = chars.next() {
                out.push_str(&regex_literal(next));
            }
            continue;
        }
        if in_class {
            if c == ']' {
                in_class = false;
            }
            if c == '\\' {
                out.push_str("\\\\");
            } else {
                out.push(c);
            }
            continue;
        }
        match c {
            '%' => out.push_str(".*"),
            '_' => out.push('.'),
            '[' => {
                in_class = true;
                out.push('[');
            }
            '|' | '*' | '+' | '?' | '{' | '}' | '(' | ')' => out.push(c),
            other => out.push_str(&regex_literal(other)),
        }
    }
    out.push_str(")$");
    out
}

fn regex_literal(c: char) -> String {
    if c.is_ascii_punctuation() {
        format!("\\{c}")
    } else {
        c.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matches(text: &str, pattern: &str) -> bool {
        let Ok(re) = regex::Regex::new(&similar_to_regex(pattern, None)) else {
            panic!("{pattern} gave {}", similar_to_regex(pattern, None));
        };
        re.is_match(text)
    }

    #[test]
    fn patterns_match_the_whole_string_as_sql_says() {
        assert!(matches("AMZN", "%AMZN%"));
        assert!(matches("AMZN", "AMZN"));
        assert!(!matches("AMZNX", "AMZN"));
        assert!(matches("TECHNOLOGY", "%TECH%"));
        assert!(matches("abc", "a_c"));
        assert!(!matches("abbc", "a_c"));
        assert!(matches("abd", "%(b|d)%"));
        assert!(matches("ab", "a[bc]"));
        assert!(!matches("aX", "a[bc]"));
        // '.' is an ordinary character in SIMILAR TO.
        assert!(matches("1.5", "1.5"));
        assert!(!matches("1x5", "1.5"));
        assert!(matches("aaa", "a+"));
    }

    #[test]
    fn an_escape_character_makes_wildcards_literal() -> Result<(), regex::Error> {
        let re = regex::Regex::new(&similar_to_regex("100!%", Some('!')))?;
        assert!(re.is_match("100%"));
        assert!(!re.is_match("1000"));
        Ok(())
    }
}
