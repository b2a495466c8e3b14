//! The Agent's `dataProcessingOptions`, applied to each record in the order given:
//! `SINGLELINE`, `CSVTOJSON`, `LOGTOJSON` (Apache common, combined and error logs, RFC 3164 and
//! RFC 3339 syslog, or a `matchPattern` with `customFieldNames`) and `ADDMETADATA`.
//!
//! A record comes in with its line ending and goes out with one. JSON objects keep their
//! fields in the order the Agent documents. A record a converter cannot parse is sent as it
//! was (and counted), so no line is lost to a pattern that does not fit it.

use serde_json::Value;

use crate::error::{Error, Result};

/// One processing option.
#[derive(Debug, Clone)]
pub enum Processor {
    SingleLine,
    CsvToJson {
        fields: Vec<String>,
        delimiter: String,
    },
    LogToJson {
        pattern: regex::Regex,
        fields: Vec<String>,
        /// Apache logs write a missing value as `-`, which becomes null.
        dash_is_null: bool,
    },
    AddMetadata {
        metadata: Value,
    },
}

// The Agent's building blocks for its log formats.
const INT: &str = r"(?:[+-]?(?:[0-9]+))";
const POSINT: &str = r"(?:[1-9][0-9]*)";
const NONNEGINT: &str = r"(?:[0-9]+)";
const WORD: &str = r"\w+";
const NOQUOTE: &str = r#"[^"]+"#;
const IP: &str = r"(?:[\d\.]+)";
const HOSTNAME: &str = r"(?:[\w\-]+)(?:\.(?:[\w\-]+))*(?:\.?|\b)";
const USER: &str = r"(?:[a-zA-Z0-9._-]+)";
const MONTHDAY: &str = r"(?:(?:0[1-9])|(?:[12][0-9])|(?:3[01])|[1-9])";
const DAY: &str = r"(?:Mon(?:day)?|Tue(?:sday)?|Wed(?:nesday)?|Thu(?:rsday)?|Fri(?:day)?|Sat(?:urday)?|Sun(?:day)?)";
const MONTH: &str = r"\b(?:Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|Jun(?:e)?|Jul(?:y)?|Aug(?:ust)?|Sep(?:tember)?|Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?)\b";
const YEAR: &str = r"(?:[1-9]\d*)";
const TIME: &str =
    r"(?:(?:2[0123]|[01]?[0-9]):(?:[0-5][0-9]):(?:(?:[0-5]?[0-9]|60)(?:[:\.,][0-9]+)?))";

fn iporhost() -> String {
    format!("(?:{HOSTNAME}|{IP})")
}

fn common_apache() -> String {
    let httpdate = format!(r"(?:{MONTHDAY}/{MONTH}/{YEAR}:{TIME}\s{INT})");
    format!(
        r#"({}) ({USER}) ({USER}) \[({httpdate})\] "({NOQUOTE})" ({INT}|\-) ({INT}|\-)"#,
        iporhost()
    )
}

fn log_format(format: &str) -> Option<(String, &'static [&'static str], bool)> {
    const COMMON: &[&str] = &[
        "host", "ident", "authuser", "datetime", "request", "response", "bytes",
    ];
    const COMBINED: &[&str] = &[
        "host", "ident", "authuser", "datetime", "request", "response", "bytes", "referer", "agent",
    ];
    const ERROR: &[&str] = &[
        "timestamp",
        "module",
        "severity",
        "processid",
        "threadid",
        "client",
        "message",
    ];
    const SYSLOG: &[&str] = &["timestamp", "hostname", "program", "processid", "message"];
    let syslog_program = format!(r"([\w\._/%-]+)(?:\[({POSINT})\])?");
    let facility = format!("<{NONNEGINT}.{NONNEGINT}>");
    Some(match format {
        "COMMONAPACHELOG" => (format!("{}.*", common_apache()), COMMON, true),
        "COMBINEDAPACHELOG" => (
            format!(r#"{} "({NOQUOTE})" "({NOQUOTE})".*"#, common_apache()),
            COMBINED,
            true,
        ),
        "APACHEERRORLOG" => {
            let timestamp = format!(r"(?:{DAY}\s+{MONTH}\s+{MONTHDAY}\s+{TIME}\s+{YEAR})");
            let urihost = format!("(?:{}(?::{POSINT})?)", iporhost());
            (
                format!(
                    r"\[({timestamp})\] \[(?:({WORD}):)?({WORD})\] \[pid ({NONNEGINT})(?::tid ({NONNEGINT}))?\] \[client ({urihost})\] (.*)"
                ),
                ERROR,
                true,
            )
        }
        "SYSLOG" => {
            let timestamp = format!(r"(?:{MONTH}\s+{MONTHDAY}\s+{TIME})");
            (
                format!(r"({timestamp}) (?:{facility} )?({USER}) {syslog_program}: (.*)"),
                SYSLOG,
                false,
            )
        }
        "RFC3339SYSLOG" => {
            let timestamp =
                r"(?:\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:Z|[+-]\d{2}:\d{2}))";
            (
                format!(r"({timestamp}) (?:{facility} )?({USER}) {syslog_program}: (.*)"),
                SYSLOG,
                false,
            )
        }
        _ => return None,
    })
}

impl Processor {
    /// Reads one `dataProcessingOptions` entry (named `at` in messages).
    pub fn parse(option: &Value, at: &str) -> Result<Self> {
        let name = option
            .get("optionName")
            .and_then(Value::as_str)
            .ok_or_else(|| {
                Error::Config(format!(
                    "{at}.optionName is required: SINGLELINE, CSVTOJSON, LOGTOJSON or ADDMETADATA"
                ))
            })?;
        let fields = |required: bool| -> Result<Option<Vec<String>>> {
            match option.get("customFieldNames") {
                None | Some(Value::Null) if !required => Ok(None),
                Some(Value::Array(names)) if !names.is_empty() => names
                    .iter()
                    .map(|n| {
                        n.as_str().map(str::to_string).ok_or_else(|| {
                            Error::Config(format!("{at}.customFieldNames must be strings"))
                        })
                    })
                    .collect::<Result<Vec<_>>>()
                    .map(Some),
                _ => Err(Error::Config(format!(
                    "{at}.customFieldNames is required: the names of the fields, in order"
                ))),
            }
        };
        match name {
            "SINGLELINE" => Ok(Self::SingleLine),
            "CSVTOJSON" => Ok(Self::CsvToJson {
                fields: fields(true)?.unwrap_or_default(),
                delimiter: option
                    .get("delimiter")
                    .and_then(Value::as_str)
                    .filter(|d| !d.is_empty())
                    .unwrap_or(",")
                    .to_string(),
            }),
            "LOGTOJSON" => {
                let format = option.get("logFormat").and_then(Value::as_str).ok_or_else(|| {
                    Error::Config(format!(
                        "{at}.logFormat is required: COMMONAPACHELOG, COMBINEDAPACHELOG, APACHEERRORLOG, SYSLOG or RFC3339SYSLOG"
                    ))
                })?;
                let Some((default_pattern, default_fields, dash_is_null)) = log_format(format)
                else {
                    return Err(Error::Config(format!(
                        "{at}.logFormat '{format}' is not COMMONAPACHELOG, COMBINEDAPACHELOG, APACHEERRORLOG, SYSLOG or RFC3339SYSLOG"
                    )));
                };
                let custom = option.get("matchPattern").and_then(Value::as_str);
                let pattern_text = custom.map_or(default_pattern, str::to_string);
                let pattern = regex::Regex::new(&format!("^(?:{pattern_text})$")).map_err(|e| {
                    Error::Config(format!(
                        "{at}.matchPattern is not a regular expression: {e}"
                    ))
                })?;
                let fields = match fields(false)? {
                    Some(fields) => fields,
                    None if custom.is_some() => {
                        return Err(Error::Config(format!(
                            "{at}: a matchPattern needs customFieldNames, one per group"
                        )));
                    }
                    None => default_fields.iter().map(|f| f.to_string()).collect(),
                };
                let groups = pattern.captures_len() - 1;
                if groups != fields.len() {
                    return Err(Error::Config(format!(
                        "{at}: the pattern has {groups} groups but {} field names are given",
                        fields.len()
                    )));
                }
                Ok(Self::LogToJson {
                    pattern,
                    fields,
                    dash_is_null,
                })
            }
            "ADDMETADATA" => {
                let metadata = option
                    .get("metadata")
                    .or_else(|| option.get("metadataFields"))
                    .cloned()
                    .ok_or_else(|| {
                        Error::Config(format!("{at}.metadata is required: the object to add"))
                    })?;
                Ok(Self::AddMetadata { metadata })
            }
            other => Err(Error::Config(format!(
                "{at}.optionName '{other}' is not SINGLELINE, CSVTOJSON, LOGTOJSON or ADDMETADATA"
            ))),
        }
    }

    /// Converts one record; `Err` with the reason when it does not fit.
    pub fn apply(&self, record: &[u8]) -> std::result::Result<Vec<u8>, String> {
        let text = String::from_utf8_lossy(record);
        let body = text.strip_suffix('\n').unwrap_or(&text);
        let body = body.strip_suffix('\r').unwrap_or(body);
        let mut out = match self {
            Self::SingleLine => body.lines().map(str::trim).collect::<Vec<_>>().join(""),
            Self::CsvToJson { fields, delimiter } => {
                let values: Vec<&str> = body.split(delimiter.as_str()).collect();
                let pairs = fields.iter().enumerate().map(|(i, name)| {
                    let value = values.get(i).map(|v| v.trim());
                    (
                        name.as_str(),
                        value
                            .map(|v| Value::String(v.to_string()))
                            .unwrap_or(Value::Null),
                    )
                });
                object(pairs)
            }
            Self::LogToJson {
                pattern,
                fields,
                dash_is_null,
            } => {
                let captures = pattern
                    .captures(body)
                    .ok_or_else(|| "the record does not match the log format".to_string())?;
                let pairs = fields.iter().enumerate().map(|(i, name)| {
                    let value = captures.get(i + 1).map(|m| m.as_str());
                    let value = match value {
                        Some("-") if *dash_is_null => Value::Null,
                        Some(v) => Value::String(v.to_string()),
                        None => Value::Null,
                    };
                    (name.as_str(), value)
                });
                object(pairs)
            }
            Self::AddMetadata { metadata } => object(
                [
                    ("metadata", metadata.clone()),
                    ("data", Value::String(body.to_string())),
                ]
                .into_iter(),
            ),
        }
        .into_bytes();
        out.push(b'\n');
        Ok(out)
    }
}

/// A JSON object with its fields in the order given.
fn object<'a>(pairs: impl Iterator<Item = (&'a str, Value)>) -> String {
    let mut out = String::from("{");
    for (i, (name, value)) in pairs.enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&Value::String(name.to_string()).to_string());
        out.push(':');
        out.push_str(&value.to_string());
    }
    out.push('}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(option: Value, line: &str) -> Value {
        let processor = Processor::parse(&option, "test").expect("valid");
        let out = processor.apply(line.as_bytes()).expect("converts");
        assert_eq!(out.last(), Some(&b'\n'));
        serde_json::from_slice(&out).expect("JSON")
    }

    #[test]
    fn apache_logs_become_the_agent_s_json() {
        // The Agent's documented example.
        let common = run(
            json!({"optionName": "LOGTOJSON", "logFormat": "COMMONAPACHELOG"}),
            "123.45.67.89 - - [27/Oct/2000:09:27:09 -0400] \"GET /java/javaResources.html HTTP/1.0\" 200 -\n",
        );
        assert_eq!(
            common,
            json!({"host": "123.45.67.89", "ident": null, "authuser": null,
                   "datetime": "27/Oct/2000:09:27:09 -0400",
                   "request": "GET /java/javaResources.html HTTP/1.0", "response": "200", "bytes": null})
        );
        let combined = run(
            json!({"optionName": "LOGTOJSON", "logFormat": "COMBINEDAPACHELOG"}),
            "10.0.0.1 - frank [10/Oct/2026:13:55:36 -0700] \"GET /a.gif HTTP/1.0\" 200 2326 \"http://example.com/start.html\" \"Mozilla/4.08\"\n",
        );
        assert_eq!(combined["authuser"], "frank");
        assert_eq!(combined["referer"], "http://example.com/start.html");
        assert_eq!(combined["agent"], "Mozilla/4.08");
        let error = run(
            json!({"optionName": "LOGTOJSON", "logFormat": "APACHEERRORLOG"}),
            "[Fri Sep 09 10:42:29.902022 2011] [core:error] [pid 35708:tid 4328636416] [client 72.15.99.187] File does not exist: /usr/local/apache2/htdocs/favicon.ico\n",
        );
        assert_eq!(error["module"], "core");
        assert_eq!(error["severity"], "error");
        assert_eq!(error["threadid"], "4328636416");
        assert_eq!(error["client"], "72.15.99.187");
    }

    #[test]
    fn syslog_lines_become_json() {
        let line = run(
            json!({"optionName": "LOGTOJSON", "logFormat": "SYSLOG"}),
            "Mar 12 12:00:08 server2 rcd[308]: Loaded 12 packages in 'ximian-red-carpet|351' (0.01878 seconds)\n",
        );
        assert_eq!(
            line,
            json!({"timestamp": "Mar 12 12:00:08", "hostname": "server2", "program": "rcd",
                   "processid": "308", "message": "Loaded 12 packages in 'ximian-red-carpet|351' (0.01878 seconds)"})
        );
        let line = run(
            json!({"optionName": "LOGTOJSON", "logFormat": "RFC3339SYSLOG"}),
            "2026-12-07T10:00:00.123+00:00 web-1 nginx: started\n",
        );
        assert_eq!(line["timestamp"], "2026-12-07T10:00:00.123+00:00");
        assert_eq!(line["processid"], Value::Null);
        let custom = run(
            json!({"optionName": "LOGTOJSON", "logFormat": "SYSLOG",
                   "matchPattern": "^([\\w:]+) (\\w+)", "customFieldNames": ["time", "word"]}),
            "12:00 hello",
        );
        assert_eq!(custom, json!({"time": "12:00", "word": "hello"}));
    }

    #[test]
    fn csv_single_line_and_metadata() {
        let csv = run(
            json!({"optionName": "CSVTOJSON", "customFieldNames": ["a", "b", "c"], "delimiter": "|"}),
            "1| two\n",
        );
        assert_eq!(csv, json!({"a": "1", "b": "two", "c": null}));
        let single = Processor::SingleLine
            .apply(b"  first\n   second  \n")
            .expect("converts");
        assert_eq!(single, b"firstsecond\n");
        let tagged = run(
            json!({"optionName": "ADDMETADATA", "metadata": {"host": "web-1"}}),
            "hello\n",
        );
        assert_eq!(
            tagged,
            json!({"metadata": {"host": "web-1"}, "data": "hello"})
        );
    }

    #[test]
    fn lines_that_do_not_fit_and_bad_options_say_why() {
        let processor = Processor::parse(
            &json!({"optionName": "LOGTOJSON", "logFormat": "COMMONAPACHELOG"}),
            "o",
        )
        .expect("valid");
        assert!(processor.apply(b"not a log line\n").is_err());
        let error = |v: Value| {
            Processor::parse(&v, "opt")
                .expect_err("invalid")
                .to_string()
        };
        assert!(
            error(json!({"optionName": "LOGTOJSON", "logFormat": "NGINX"})).contains("'NGINX'")
        );
        assert!(error(json!({"optionName": "CSVTOJSON"})).contains("customFieldNames is required"));
        assert!(
            error(json!({"optionName": "LOGTOJSON", "logFormat": "SYSLOG", "matchPattern": "(a)(b)", "customFieldNames": ["x"]}))
                .contains("2 groups but 1 field names")
        );
        assert!(error(json!({"optionName": "GZIP"})).contains("'GZIP'"));
    }
}
