//! The interactive loop and the non-interactive runs (`-c`, `-f`) share one [`Shell`]: it runs
//! SQL statements and backslash commands and prints what they return.

use std::io::Write;
use std::time::Instant;

use datafusion::physical_plan::common::collect;
use rustyline::DefaultEditor;
use rustyline::error::ReadlineError;
use sluice_flight::RemoteSession;
use sluice_sql::{SluiceSession, StatementOutput, parse_statements};

use futures::StreamExt;

use sluice_sql::continuous::QueryProgress;

use crate::print::{ContinuousPrinter, OutputFormat, print_batches};
use crate::status::{FIRST_STATUS_AFTER, STATUS_EVERY, waiting_status};

const HELP: &str = r"Sluice: SQL over Kinesis-style streams.

Statements end with ';' and may span lines.

  CREATE STREAM name (col TYPE, ...) WITH (shards = N, format = 'json'|'csv'|'raw',
                                           partition_key = 'col', retention = '24 hours')
  INSERT INTO name VALUES (...) | SELECT ...      append records
  SELECT ... FROM name                            query the retained records
  SELECT STREAM ... FROM name                     keep running over new records (Ctrl-C stops)
  SHOW STREAMS; DESCRIBE name; SHOW SHARDS name; DROP STREAM name; FLUSH;

Windows (in SELECT STREAM and pumps; a window's row comes out once the watermark passes its end):
  FROM tumble(name, ts, INTERVAL '1' MINUTE) GROUP BY window_start, ...     also hop(), session()
  GROUP BY ..., STEP(name.ROWTIME BY INTERVAL '60' SECOND)                  Kinesis Analytics
  CREATE STREAM ... (..., ts TIMESTAMP, WATERMARK FOR ts AS ts - INTERVAL '5' SECOND)

Pumps and delivery streams (run in the background, survive restarts):
  CREATE PUMP name AS INSERT INTO out SELECT STREAM ... FROM name;  SHOW PUMPS; STOP/START/DROP PUMP
  CREATE DELIVERY STREAM name FROM stream WITH (destination = 's3://bucket/prefix/',
                                                format = 'parquet');  SHOW DELIVERY STREAMS

Try it on live data: `sluice demo`, or
  CREATE STREAM t (ticker_symbol VARCHAR, sector VARCHAR, change DOUBLE, price DOUBLE)
    WITH (source = 'demo');

System columns: rowtime, _shard_id, _sequence_number, _partition_key, _data.
Run `sluice serve` to share one data folder; `sluice --connect grpc://127.0.0.1:50051` opens
this REPL on it. Docs: docs/sql.md.

  \q              quit
  \?              this help
  \d              list streams and tables
  \d NAME         describe a stream or table
  \pset format F  output format: table, csv, tsv, json, ndjson
  \timing         toggle the row count and timing footer
";

/// Where statements run: an engine in this process, or a server over Flight SQL.
#[derive(Clone)]
pub enum Backend {
    Embedded(SluiceSession),
    Remote(RemoteSession),
}

impl Backend {
    /// Runs a script's statements one by one; `visit` sees each statement's output before the
    /// next runs, and the first error stops the script.
    async fn run_script<F, Fut>(&self, sql: &str, mut visit: F) -> Result<(), String>
    where
        F: FnMut(StatementOutput, Option<QueryProgress>) -> Fut,
        Fut: std::future::Future<Output = Result<(), String>>,
    {
        // Parsed here first in both cases: a syntax error anywhere runs nothing.
        let statements = parse_statements(sql).map_err(|e| e.to_string())?;
        match self {
            Self::Embedded(session) => {
                for statement in statements {
                    let (output, progress) = session
                        .execute_watched(statement)
                        .await
                        .map_err(|e| e.to_string())?;
                    visit(output, progress).await?;
                }
            }
            Self::Remote(remote) => {
                for text in split_statements(sql) {
                    visit(remote.execute(&text).await?, None).await?;
                }
            }
        }
        Ok(())
    }

    /// Runs one statement.
    async fn execute(&self, sql: &str) -> Result<StatementOutput, String> {
        match self {
            Self::Embedded(session) => session.execute(sql).await.map_err(|e| e.to_string()),
            Self::Remote(remote) => remote.execute(sql).await,
        }
    }

    /// The names of the streams, for `\d`.
    async fn stream_names(&self) -> Result<Vec<String>, String> {
        let mut names = Vec::new();
        let batches = match self.execute("SHOW STREAMS").await? {
            StatementOutput::Rows(rows) | StatementOutput::Continuous(rows) => {
                collect(rows).await.map_err(|e| e.to_string())?
            }
            StatementOutput::Done(_) => vec![],
        };
        for batch in &batches {
            if let Some(column) = batch.column_by_name("name") {
                let column = datafusion::arrow::compute::cast(
                    column,
                    &datafusion::arrow::datatypes::DataType::Utf8,
                )
                .map_err(|e| e.to_string())?;
                use datafusion::arrow::array::AsArray;
                names.extend(column.as_string::<i32>().iter().flatten().map(String::from));
            }
        }
        Ok(names)
    }
}

/// Runs statements and prints their results.
#[derive(Clone)]
pub struct Shell {
    backend: Backend,
    format: OutputFormat,
    footer: bool,
    /// At the interactive prompt a continuous query that prints nothing says what it waits for.
    interactive: bool,
}

/// Whether the loop should go on.
enum Flow {
    Continue,
    Quit,
}

impl Shell {
    pub fn new(backend: Backend, format: OutputFormat, footer: bool) -> Self {
        Self {
            backend,
            format,
            footer,
            interactive: false,
        }
    }

    /// Runs every statement of `sql` in order; stops at the first error and returns it.
    pub async fn run_script(&mut self, sql: &str) -> Result<(), String> {
        for line in sql.lines() {
            let trimmed = line.trim();
            if trimmed.starts_with('\\') {
                return Err(format!(
                    "backslash commands such as '{trimmed}' only work at the interactive prompt"
                ));
            }
        }
        let backend = self.backend.clone();
        let (format, footer, interactive) = (self.format, self.footer, self.interactive);
        let mut start = Instant::now();
        backend
            .run_script(sql, |output, progress| {
                let started = std::mem::replace(&mut start, Instant::now());
                let waiting = interactive.then_some(Waiting { progress });
                print_output(output, format, footer, started, waiting)
            })
            .await
    }
}

/// A continuous query's status, shown while it has printed nothing.
struct Waiting {
    progress: Option<QueryProgress>,
}

/// Prints one statement's output as it comes.
async fn print_output(
    output: StatementOutput,
    format: OutputFormat,
    footer: bool,
    start: Instant,
    waiting: Option<Waiting>,
) -> Result<(), String> {
    {
        match output {
            StatementOutput::Done(note) => {
                if format == OutputFormat::Table {
                    let _ = writeln!(std::io::stdout().lock(), "{note}");
                }
            }
            StatementOutput::Continuous(mut stream) => {
                // Rows print as they come, until the query ends (LIMIT) or Ctrl-C drops it.
                let mut printer = ContinuousPrinter::new(format);
                let mut status = tokio::time::interval_at(
                    tokio::time::Instant::now() + FIRST_STATUS_AFTER,
                    STATUS_EVERY,
                );
                let mut shown = String::new();
                loop {
                    let batch = tokio::select! {
                        batch = stream.next() => batch,
                        _ = status.tick(), if waiting.is_some() && printer.rows() == 0 => {
                            let line = waiting_status(waiting.as_ref().and_then(|w| w.progress.as_ref()));
                            if line != shown {
                                eprintln!("{line}");
                                shown = line;
                            }
                            continue;
                        }
                    };
                    let Some(batch) = batch else {
                        break;
                    };
                    let batch = batch.map_err(|e| e.to_string())?;
                    printer
                        .print(&mut std::io::stdout().lock(), &batch)
                        .map_err(|e| e.to_string())?;
                }
                if footer && format == OutputFormat::Table {
                    let rows = printer.rows();
                    let noun = if rows == 1 { "row" } else { "rows" };
                    println!("{rows} {noun} ({:.3} s)", start.elapsed().as_secs_f64());
                }
            }
            StatementOutput::Rows(stream) => {
                let schema = stream.schema();
                let batches = collect(stream).await.map_err(|e| e.to_string())?;
                let mut stdout = std::io::stdout().lock();
                print_batches(
                    &mut stdout,
                    format,
                    &schema,
                    &batches,
                    start.elapsed(),
                    footer,
                )
                .map_err(|e| e.to_string())?;
            }
        }
        let _ = std::io::stdout().flush();
        Ok(())
    }
}

impl Shell {
    /// Runs `sql` in its own task; Ctrl-C aborts the task (dropping the statement's work) and
    /// returns to the prompt at once, even while the statement is busy computing.
    async fn run_interruptible(&mut self, sql: &str) {
        let mut shell = self.clone();
        let sql = sql.to_string();
        let mut task = tokio::spawn(async move { shell.run_script(&sql).await });
        tokio::select! {
            joined = &mut task => match joined {
                Ok(Ok(())) => {}
                Ok(Err(e)) => eprintln!("Error: {e}"),
                Err(e) => eprintln!("Error: the statement failed: {e}"),
            },
            _ = tokio::signal::ctrl_c() => {
                task.abort();
                eprintln!("^C (statement cancelled)");
            }
        }
    }

    async fn backslash(&mut self, command: &str) -> Flow {
        let mut words = command.split_whitespace();
        match (words.next(), words.next(), words.next()) {
            (Some("\\q" | "\\quit"), None, _) => return Flow::Quit,
            (Some("\\?" | "\\h" | "\\help"), _, _) => print!("{HELP}"),
            (Some("\\d"), None, _) => {
                self.run_interruptible("SHOW STREAMS").await;
                let names = match self.backend.stream_names().await {
                    Ok(names) => names,
                    Err(e) => {
                        eprintln!("Error: {e}");
                        return Flow::Continue;
                    }
                };
                let streams: Vec<String> = names
                    .iter()
                    .map(|name| format!("'{}'", name.replace('\'', "''")))
                    .collect();
                self.run_interruptible(&format!(
                    "SELECT table_name, table_type FROM information_schema.tables \
                     WHERE table_schema = 'public' AND table_name NOT IN ({}) ORDER BY table_name;",
                    streams.join(", ")
                ))
                .await;
            }
            (Some("\\d"), Some(name), None) => {
                self.run_interruptible(&format!("DESCRIBE {name}")).await;
                let is_stream = self
                    .backend
                    .stream_names()
                    .await
                    .is_ok_and(|names| names.iter().any(|n| n == name));
                if is_stream {
                    println!(
                        "Shards: SHOW SHARDS {name} lists them (hash-key ranges, lineage, sequence numbers)."
                    );
                }
            }
            (Some("\\pset"), Some("format"), Some(format)) => match format.parse() {
                Ok(format) => {
                    self.format = format;
                    println!("Output format is {format}.");
                }
                Err(e) => eprintln!("Error: {e}"),
            },
            (Some("\\timing"), None, _) => {
                self.footer = !self.footer;
                println!("Timing is {}.", if self.footer { "on" } else { "off" });
            }
            _ => eprintln!("Error: unknown command '{command}'; \\? lists the commands"),
        }
        Flow::Continue
    }

    /// The interactive loop: reads statements across lines until `;`, keeps history.
    /// `place` says where statements run (the data folder, or the server connected to).
    pub async fn interactive(
        &mut self,
        history: Option<std::path::PathBuf>,
        place: &str,
    ) -> Result<(), String> {
        self.interactive = true;
        let mut editor = DefaultEditor::new().map_err(|e| e.to_string())?;
        if let Some(path) = &history {
            let _ = editor.load_history(path);
        }
        println!(
            "Sluice {} {place} — \\? for help, \\q to quit.",
            env!("CARGO_PKG_VERSION")
        );
        let mut buffer = String::new();
        loop {
            let prompt = if buffer.is_empty() {
                "sluice> "
            } else {
                "     -> "
            };
            match editor.readline(prompt) {
                Ok(line) => {
                    let trimmed = line.trim();
                    if buffer.is_empty() && trimmed.starts_with('\\') {
                        let _ = editor.add_history_entry(trimmed);
                        if let Flow::Quit = self.backslash(trimmed).await {
                            break;
                        }
                        continue;
                    }
                    if trimmed.is_empty() && buffer.is_empty() {
                        continue;
                    }
                    buffer.push_str(&line);
                    buffer.push('\n');
                    if statement_complete(&buffer) {
                        let sql = std::mem::take(&mut buffer);
                        let _ = editor.add_history_entry(sql.trim());
                        self.run_interruptible(&sql).await;
                    }
                }
                Err(ReadlineError::Interrupted) => {
                    buffer.clear();
                }
                Err(ReadlineError::Eof) => break,
                Err(e) => return Err(e.to_string()),
            }
        }
        if let Some(path) = &history {
            let _ = editor.save_history(path);
        }
        Ok(())
    }
}

/// The statements of a script, as text: split at each `;` outside quotes and comments.
pub fn split_statements(sql: &str) -> Vec<String> {
    let mut statements = Vec::new();
    let mut current = String::new();
    let mut in_single = false;
    let mut in_double = false;
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' if !in_double => in_single = !in_single,
            '"' if !in_single => in_double = !in_double,
            '-' if !in_single && !in_double && chars.peek() == Some(&'-') => {
                // A comment runs to the end of the line; it is not sent.
                for c in chars.by_ref() {
                    if c == '\n' {
                        current.push('\n');
                        break;
                    }
                }
                continue;
            }
            ';' if !in_single && !in_double => {
                if !current.trim().is_empty() {
                    statements.push(current.trim().to_string());
                }
                current.clear();
                continue;
            }
            _ => {}
        }
        current.push(c);
    }
    if !current.trim().is_empty() {
        statements.push(current.trim().to_string());
    }
    statements
}

/// Whether `sql` ends with a `;` outside quotes and comments.
fn statement_complete(sql: &str) -> bool {
    let mut in_single = false;
    let mut in_double = false;
    let mut last_significant = None;
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' if !in_double => in_single = !in_single,
            '"' if !in_single => in_double = !in_double,
            '-' if !in_single && !in_double && chars.peek() == Some(&'-') => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        break;
                    }
                }
                continue;
            }
            _ => {}
        }
        if !c.is_whitespace() {
            last_significant = Some((c, in_single || in_double));
        }
    }
    matches!(last_significant, Some((';', false)))
}

#[cfg(test)]
mod tests {
    use super::{split_statements, statement_complete};

    #[test]
    fn scripts_split_into_statements_outside_quotes_and_comments() {
        assert_eq!(
            split_statements("SELECT 'a;b'; -- c;d\nSELECT \"x;\" FROM t;;  "),
            vec!["SELECT 'a;b'", "SELECT \"x;\" FROM t"]
        );
        assert_eq!(split_statements("SHOW STREAMS"), vec!["SHOW STREAMS"]);
    }

    #[test]
    fn statements_end_at_a_semicolon_outside_quotes() {
        assert!(statement_complete("SELECT 1;"));
        assert!(statement_complete("SELECT\n 1 ;  \n"));
        assert!(!statement_complete("SELECT ';"));
        assert!(!statement_complete("SELECT 1"));
        assert!(!statement_complete("SELECT 1 -- done;"));
        assert!(statement_complete("SELECT 'a;b';"));
    }
}
