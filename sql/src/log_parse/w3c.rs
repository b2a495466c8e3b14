//! `W3C_LOG_PARSE(line, format)`: web server logs in an Apache `LogFormat` (`%h %l %u %t
//! "%r" %>s %b`) or one of KDA's predefined formats (`COMMON`, `COMMON WITH VHOST`,
//! `NCSA EXTENDED`, `REFERER`, `AGENT`, `IIS`). One field per specifier, `column1` …, typed
//! by what the specifier prints: status codes `INTEGER`; byte counts, durations, ports and
//! process ids `BIGINT`; `%t` a `TIMESTAMP` (UTC); the rest `VARCHAR`. A `-` (what Apache
//! writes for "nothing") is NULL.
//!
//! The format is compiled once into a regular expression matching the whole line: a
//! specifier inside double quotes takes everything up to the closing quote (with `\"`
//! escapes), `%t` its `[…]`, any other specifier a run of non-blank characters.

use std::borrow::Cow;

use chrono::DateTime;
use datafusion::arrow::datatypes::{DataType, Field, Fields, TimeUnit};
use datafusion::common::{Result as DFResult, plan_err};

/// A compiled `W3C_LOG_PARSE` format.
#[derive(Debug, Clone)]
pub struct W3cFormat {
    regex: regex::Regex,
    specifiers: Vec<Specifier>,
}

#[derive(Debug, Clone, PartialEq)]
struct Specifier {
    letter: char,
    /// `{Referer}` in `%{Referer}i` (KDA also writes `%[Referer]i`).
    argument: Option<String>,
}

impl Specifier {
    fn data_type(&self) -> DataType {
        match (self.letter, &self.argument) {
            ('s', _) => DataType::Int32,
            ('b' | 'B' | 'D' | 'T' | 'I' | 'O' | 'S' | 'p' | 'P' | 'k', _) => DataType::Int64,
            ('t', None) => DataType::Timestamp(TimeUnit::Millisecond, None),
            _ => DataType::Utf8,
        }
    }
}

/// KDA's predefined formats, by name.
fn predefined(name: &str) -> Option<&'static str> {
    let name = name.split_whitespace().collect::<Vec<_>>().join(" ");
    Some(match name.to_ascii_uppercase().as_str() {
        "COMMON" => r#"%h %l %u %t "%r" %>s %b"#,
        "COMMON WITH VHOST" => r#"%v %h %l %u %t "%r" %>s %b"#,
        "NCSA EXTENDED" | "COMBINED" => r#"%h %l %u %t "%r" %>s %b "%{Referer}i" "%{User-agent}i""#,
        "REFERER" | "REFERRER" => "%{Referer}i -> %U",
        "AGENT" => "%{User-agent}i",
        // Microsoft IIS's own log format: client, user, date, time, service, server name,
        // server address, time taken, bytes received, bytes sent, status, Windows status,
        // method, target, parameters; comma separated, with a trailing comma.
        "IIS" => {
            "%h, %u, %{date}t, %{time}t, %{service}e, %v, %A, %T, %I, %O, %s, %{win32}e, %m, %U, %q,"
        }
        _ => return None,
    })
}

impl W3cFormat {
    /// Compiles `format`: a predefined name or an Apache format string.
    pub fn compile(format: &str) -> DFResult<Self> {
        let format = predefined(format).unwrap_or(format);
        let mut pattern = String::from("^");
        let mut specifiers = Vec::new();
        let mut chars = format.chars().peekable();
        let mut in_quotes = false;
        while let Some(c) = chars.next() {
            if c != '%' {
                if c == '"' {
                    in_quotes = !in_quotes;
                }
                if c == ' ' {
                    pattern.push_str(" +");
                } else {
                    pattern.push_str(&regex::escape(&c.to_string()));
                }
                continue;
            }
            if chars.next_if_eq(&'%').is_some() {
                pattern.push('%');
                continue;
            }
            // Apache's conditions and redirect markers: `%!200,304U`, `%>s`, `%<s`.
            while chars
                .next_if(|c| c.is_ascii_digit() || matches!(c, '!' | ',' | '<' | '>'))
                .is_some()
            {}
            let argument = match chars.next_if(|c| matches!(c, '{' | '[')) {
                Some(open) => {
                    let close = if open == '{' { '}' } else { ']' };
                    let mut argument = String::new();
                    loop {
                        match chars.next() {
                            Some(c) if c == close => break,
                            Some(c) => argument.push(c),
                            None => {
                                return plan_err!(
                                    "W3C_LOG_PARSE: the format '{format}' opens '{open}' without closing it"
                                );
                            }
                        }
                    }
                    Some(argument)
                }
                None => None,
            };
            let Some(letter) = chars.next().filter(char::is_ascii_alphabetic) else {
                return plan_err!(
                    "W3C_LOG_PARSE: '{format}' is neither a predefined format (COMMON, COMMON WITH VHOST, NCSA EXTENDED, REFERER, AGENT, IIS) nor an Apache log format: a '%' is not followed by a specifier letter"
                );
            };
            let specifier = Specifier { letter, argument };
            pattern.push_str(match (&specifier, in_quotes) {
                (_, true) => r#"((?:[^"\\]|\\.)*)"#,
                (
                    Specifier {
                        letter: 't',
                        argument: None,
                    },
                    false,
                ) => r"\[([^\]]*)\]",
                (
                    Specifier {
                        letter: 't' | 'r', ..
                    },
                    false,
                ) => "(.*?)",
                _ => r"(\S*?)",
            });
            specifiers.push(specifier);
        }
        if specifiers.is_empty() {
            return plan_err!(
                "W3C_LOG_PARSE: '{format}' has no specifiers; write a predefined format (COMMON, COMMON WITH VHOST, NCSA EXTENDED, REFERER, AGENT, IIS) or an Apache log format such as '%h %l %u %t \"%r\" %>s %b'"
            );
        }
        pattern.push_str(" *$");
        let regex = regex::Regex::new(&pattern).map_err(|e| {
            datafusion::error::DataFusionError::Plan(format!(
                "W3C_LOG_PARSE: the format '{format}' cannot be matched: {e}"
            ))
        })?;
        Ok(Self { regex, specifiers })
    }

    /// One field per specifier, `column1` ….
    pub fn fields(&self) -> Fields {
        self.specifiers
            .iter()
            .enumerate()
            .map(|(i, s)| Field::new(format!("column{}", i + 1), s.data_type(), true))
            .collect()
    }

    /// Reads `line` into `out` (text each field's type casts from); false when it does not
    /// have the format.
    pub fn parse<'a>(&self, line: &'a str, out: &mut [Option<Cow<'a, str>>]) -> bool {
        let Some(captures) = self.regex.captures(line) else {
            return false;
        };
        for (i, (specifier, slot)) in self.specifiers.iter().zip(out.iter_mut()).enumerate() {
            let text = captures.get(i + 1).map_or("", |m| m.as_str());
            *slot = match (specifier.letter, &specifier.argument, text) {
                (_, _, "-") => None,
                ('t', None, text) => DateTime::parse_from_str(text, "%d/%b/%Y:%H:%M:%S %z")
                    .ok()
                    .map(|t| Cow::Owned(t.naive_utc().format("%Y-%m-%dT%H:%M:%S%.3f").to_string())),
                (_, _, text) if text.contains("\\\"") => {
                    Some(Cow::Owned(text.replace("\\\"", "\"")))
                }
                (_, _, text) => Some(Cow::Borrowed(text)),
            };
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(format: &str, line: &str) -> DFResult<Option<Vec<Option<String>>>> {
        let compiled = W3cFormat::compile(format)?;
        let mut out = vec![None; compiled.specifiers.len()];
        let parsed = compiled.parse(line, &mut out);
        Ok(parsed.then(|| out.into_iter().map(|t| t.map(Cow::into_owned)).collect()))
    }

    #[test]
    fn common_log_format_splits_into_typed_columns() -> DFResult<()> {
        let fields = W3cFormat::compile("COMMON")?.fields();
        let types: Vec<_> = fields.iter().map(|f| f.data_type().clone()).collect();
        assert_eq!(types[3], DataType::Timestamp(TimeUnit::Millisecond, None));
        assert_eq!(types[5], DataType::Int32);
        assert_eq!(types[6], DataType::Int64);
        let row = parse(
            "COMMON",
            r#"127.0.0.1 - frank [10/Oct/2000:13:55:36 -0700] "GET /apache_pb.gif HTTP/1.0" 200 2326"#,
        )?;
        assert_eq!(
            row,
            Some(vec![
                Some("127.0.0.1".into()),
                None,
                Some("frank".into()),
                Some("2000-10-10T20:55:36.000".into()),
                Some("GET /apache_pb.gif HTTP/1.0".into()),
                Some("200".into()),
                Some("2326".into()),
            ])
        );
        Ok(())
    }

    #[test]
    fn quoted_fields_keep_blanks_and_escaped_quotes() -> DFResult<()> {
        let row = parse(
            "NCSA EXTENDED",
            r#"10.0.0.2 - - [01/Jan/2026:00:00:01 +0000] "GET / HTTP/1.1" 304 - "-" "curl \"8\" (x)""#,
        )?;
        let row = row.unwrap_or_default();
        assert_eq!(row.get(6), Some(&None));
        assert_eq!(row.get(7), Some(&None));
        assert_eq!(row.get(8), Some(&Some(r#"curl "8" (x)"#.to_string())));
        Ok(())
    }

    #[test]
    fn custom_and_bracketed_specifiers() -> DFResult<()> {
        let row = parse("%[Referer]i -> %U", "http://a.example/x -> /index.html")?;
        assert_eq!(
            row,
            Some(vec![
                Some("http://a.example/x".into()),
                Some("/index.html".into())
            ])
        );
        assert_eq!(parse("COMMON", "not a log line")?, None);
        assert!(W3cFormat::compile("%{Referer").is_err());
        assert!(W3cFormat::compile("no specifiers").is_err());
        Ok(())
    }

    #[test]
    fn iis_lines_split_at_commas() -> DFResult<()> {
        let row = parse(
            "IIS",
            "192.168.114.201, -, 03/20/01, 7:55:20, W3SVC2, SALES1, 172.21.13.45, 4502, 163, 3223, 200, 0, GET, /DeptLogo.gif, -,",
        )?
        .unwrap_or_default();
        assert_eq!(row.len(), 15);
        assert_eq!(row[0].as_deref(), Some("192.168.114.201"));
        assert_eq!(row[3].as_deref(), Some("7:55:20"));
        assert_eq!(row[10].as_deref(), Some("200"));
        assert_eq!(row[13].as_deref(), Some("/DeptLogo.gif"));
        assert_eq!(row[14], None);
        Ok(())
    }
}
