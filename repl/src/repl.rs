//! The interactive loop and the non-interactive runs (`-c`, `-f`) share one [`Shell`]: it runs
//! SQL statements and backslash commands and prints what they return.

use std::io::Write;
use std::time::Instant;

use datafusion::physical_plan::common::collect;
use rustyline::DefaultEditor;
use rustyline::error::ReadlineError;
use sluice_sql::{SluiceSession, SluiceStatement, StatementOutput, parse_statements};

use futures::StreamExt;

use crate::print::{ContinuousPrinter, OutputFormat, print_batches};

const HELP: &str = r"Sluice: SQL over Kinesis-style streams.

Statements end with ';' and may span lines.

  CREATE STREAM name (col TYPE, ...) WITH (shards = N, format = 'json'|'csv'|'raw',
                                           partition_key = 'col', retention = '24 hours')
  INSERT INTO name VALUES (...) | SELECT ...      append records
  SELECT ... FROM name                            query the retained records
  SELECT STREAM ... FROM name                     keep running over new records (Ctrl-C stops)
  SHOW STREAMS; DESCRIBE name; DROP STREAM name; FLUSH;

System columns: rowtime, _shard_id, _sequence_number, _partition_key, _data.

  \q              quit
  \?              this help
  \d              list streams and tables
  \d NAME         describe a stream or table
  \pset format F  output format: table, csv, tsv, json, ndjson
  \timing         toggle the row count and timing footer
";

/// Runs statements and prints their results.
#[derive(Clone)]
pub struct Shell {
    session: SluiceSession,
    format: OutputFormat,
    footer: bool,
}

/// Whether the loop should go on.
enum Flow {
    Continue,
    Quit,
}

impl Shell {
    pub fn new(session: SluiceSession, format: OutputFormat, footer: bool) -> Self {
        Self {
            session,
            format,
            footer,
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
        let statements = parse_statements(sql).map_err(|e| e.to_string())?;
        for statement in statements {
            self.run_statement(statement).await?;
        }
        Ok(())
    }

    async fn run_statement(&mut self, statement: SluiceStatement) -> Result<(), String> {
        let start = Instant::now();
        let output = self
            .session
            .execute_statement(statement)
            .await
            .map_err(|e| e.to_string())?;
        match output {
            StatementOutput::Done(note) => {
                if self.format == OutputFormat::Table {
                    let _ = writeln!(std::io::stdout().lock(), "{note}");
                }
            }
            StatementOutput::Continuous(mut stream) => {
                // Rows print as they come, until the query ends (LIMIT) or Ctrl-C drops it.
                let mut printer = ContinuousPrinter::new(self.format);
                while let Some(batch) = stream.next().await {
                    let batch = batch.map_err(|e| e.to_string())?;
                    printer
                        .print(&mut std::io::stdout().lock(), &batch)
                        .map_err(|e| e.to_string())?;
                }
                if self.footer && self.format == OutputFormat::Table {
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
                    self.format,
                    &schema,
                    &batches,
                    start.elapsed(),
                    self.footer,
                )
                .map_err(|e| e.to_string())?;
            }
        }
        let _ = std::io::stdout().flush();
        Ok(())
    }

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
                let streams: Vec<String> = self
                    .session
                    .engine()
                    .streams()
                    .iter()
                    .map(|s| format!("'{}'", s.name().replace('\'', "''")))
                    .collect();
                self.run_interruptible(&format!(
                    "SELECT table_name, table_type FROM information_schema.tables \
                     WHERE table_schema = 'public' AND table_name NOT IN ({}) ORDER BY table_name;",
                    streams.join(", ")
                ))
                .await;
            }
            (Some("\\d"), Some(name), None) => {
                self.run_interruptible(&format!("DESCRIBE {name}")).await
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
    pub async fn interactive(&mut self, history: Option<std::path::PathBuf>) -> Result<(), String> {
        let mut editor = DefaultEditor::new().map_err(|e| e.to_string())?;
        if let Some(path) = &history {
            let _ = editor.load_history(path);
        }
        println!(
            "Sluice {} — \\? for help, \\q to quit.",
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
    use super::statement_complete;

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
