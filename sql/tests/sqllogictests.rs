//! Runs the sqllogictest suites under `testdata/` against an embedded engine.
//!
//! Each `.slt` file gets its own scratch data folder and a manual clock starting at
//! 2026-01-01 00:00:00 UTC, so `ROWTIME` and retention are deterministic. Besides SQL, a file
//! may say:
//!
//! - `RESTART` — close the engine and open it again on the same folder (durability tests);
//! - `ADVANCE CLOCK <n> SECONDS|MINUTES|HOURS|DAYS` — move processing time forward.
//!
//! Usage: `cargo test -p sluice-sql --test sqllogictests [-- <filter>] [--complete]`; with
//! `--complete` the expected results in the files are rewritten from what Sluice returns.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use sluice_engine::{Engine, EngineOptions, ManualClock};
use sluice_sql::{SluiceSession, StatementOutput, parse_statements};
use sqllogictest::{AsyncDB, ColumnType, DBOutput};

/// How long one file may run.
const FILE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(180);

const CLOCK_START_MS: i64 = 1_767_225_600_000; // 2026-01-01 00:00:00 UTC

#[derive(Debug, thiserror::Error)]
enum TestError {
    #[error("{0}")]
    Sluice(#[from] sluice_sql::Error),
    #[error("{0}")]
    Harness(String),
}

struct SluiceDb {
    dir: PathBuf,
    clock: ManualClock,
    session: Option<SluiceSession>,
}

impl SluiceDb {
    fn open(dir: &Path, clock: &ManualClock) -> Result<SluiceSession, TestError> {
        let options = EngineOptions::new(dir)
            .with_clock(Arc::new(clock.clone()))
            .with_background(false);
        let engine = Engine::open(options).map_err(sluice_sql::Error::from)?;
        Ok(SluiceSession::new(engine)?)
    }

    fn session(&self) -> Result<&SluiceSession, TestError> {
        self.session
            .as_ref()
            .ok_or_else(|| TestError::Harness("the engine is not open".into()))
    }

    fn harness_command(&mut self, sql: &str) -> Result<Option<DBOutput<SltType>>, TestError> {
        let words: Vec<String> = sql
            .trim()
            .trim_end_matches(';')
            .split_whitespace()
            .map(|w| w.to_ascii_uppercase())
            .collect();
        match words
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .as_slice()
        {
            ["RESTART"] => Ok(Some(DBOutput::StatementComplete(1))),
            ["ADVANCE", "CLOCK", n, unit] => {
                let n: i64 = n
                    .parse()
                    .map_err(|_| TestError::Harness(format!("'{n}' is not a number")))?;
                let unit_ms = match unit.trim_end_matches('S') {
                    "SECOND" => 1_000,
                    "MINUTE" => 60_000,
                    "HOUR" => 3_600_000,
                    "DAY" => 86_400_000,
                    other => return Err(TestError::Harness(format!("unknown unit '{other}'"))),
                };
                self.clock.advance(n * unit_ms);
                Ok(Some(DBOutput::StatementComplete(0)))
            }
            _ => Ok(None),
        }
    }
}

#[async_trait]
impl AsyncDB for SluiceDb {
    type Error = TestError;
    type ColumnType = SltType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<SltType>, TestError> {
        if let Some(output) = self.harness_command(sql)? {
            if matches!(output, DBOutput::StatementComplete(1)) {
                // RESTART: stop the pumps and close the engine (and its folder lock) first.
                if let Some(session) = self.session.take() {
                    session.shutdown().await;
                }
                self.session = Some(Self::open(&self.dir, &self.clock)?);
                return Ok(DBOutput::StatementComplete(0));
            }
            return Ok(output);
        }
        let session = self.session()?.clone();
        let mut last = DBOutput::StatementComplete(0);
        for statement in parse_statements(sql)? {
            last = match session.execute_statement(statement).await? {
                StatementOutput::Done(_) => DBOutput::StatementComplete(0),
                StatementOutput::Rows(stream) | StatementOutput::Continuous(stream) => {
                    let schema = stream.schema();
                    let batches = datafusion::physical_plan::common::collect(stream)
                        .await
                        .map_err(sluice_sql::Error::from)?;
                    let types = schema
                        .fields()
                        .iter()
                        .map(|f| column_type(f.data_type()))
                        .collect();
                    DBOutput::Rows {
                        types,
                        rows: format_rows(&batches)?,
                    }
                }
            };
        }
        Ok(last)
    }

    async fn shutdown(&mut self) {
        if let Some(session) = self.session.take() {
            session.shutdown().await;
        }
    }

    fn engine_name(&self) -> &str {
        "sluice"
    }

    async fn sleep(dur: std::time::Duration) {
        tokio::time::sleep(dur).await;
    }
}

/// The column types a `query` line names, checked strictly (the runner's default validator
/// accepts any types): `T` text, `I` integer, `R` floating point or decimal, `P` timestamp,
/// `D` date, `B` boolean, `?` anything else (binary, intervals, lists).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SltType {
    Text,
    Integer,
    FloatingPoint,
    Timestamp,
    Date,
    Boolean,
    Other,
}

impl ColumnType for SltType {
    fn from_char(value: char) -> Option<Self> {
        Some(match value {
            'T' => Self::Text,
            'I' => Self::Integer,
            'R' => Self::FloatingPoint,
            'P' => Self::Timestamp,
            'D' => Self::Date,
            'B' => Self::Boolean,
            '?' => Self::Other,
            _ => return None,
        })
    }

    fn to_char(&self) -> char {
        match self {
            Self::Text => 'T',
            Self::Integer => 'I',
            Self::FloatingPoint => 'R',
            Self::Timestamp => 'P',
            Self::Date => 'D',
            Self::Boolean => 'B',
            Self::Other => '?',
        }
    }
}

fn column_type(data_type: &DataType) -> SltType {
    match data_type {
        DataType::Int8
        | DataType::Int16
        | DataType::Int32
        | DataType::Int64
        | DataType::UInt8
        | DataType::UInt16
        | DataType::UInt32
        | DataType::UInt64 => SltType::Integer,
        DataType::Float16
        | DataType::Float32
        | DataType::Float64
        | DataType::Decimal128(_, _)
        | DataType::Decimal256(_, _) => SltType::FloatingPoint,
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => SltType::Text,
        DataType::Timestamp(_, _) => SltType::Timestamp,
        DataType::Date32 | DataType::Date64 => SltType::Date,
        DataType::Boolean => SltType::Boolean,
        _ => SltType::Other,
    }
}

fn format_rows(batches: &[RecordBatch]) -> Result<Vec<Vec<String>>, TestError> {
    let options = FormatOptions::default().with_null("NULL");
    let mut rows = Vec::new();
    for batch in batches {
        let formatters = batch
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TestError::Harness(e.to_string()))?;
        for row in 0..batch.num_rows() {
            rows.push(
                formatters
                    .iter()
                    .map(|f| {
                        let text = f.value(row).to_string();
                        if text.is_empty() {
                            "(empty)".to_string()
                        } else {
                            text
                        }
                    })
                    .collect(),
            );
        }
    }
    Ok(rows)
}

fn slt_files(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            slt_files(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "slt") {
            out.push(path);
        }
    }
    Ok(())
}

async fn run_file(path: &Path, complete: bool) -> Result<(), Box<dyn std::error::Error>> {
    let scratch = tempfile::tempdir()?;
    let dir = scratch.path().to_path_buf();
    let clock = ManualClock::new(CLOCK_START_MS);
    let mut runner = sqllogictest::Runner::new(move || {
        let dir = dir.clone();
        let clock = clock.clone();
        async move {
            let session = SluiceDb::open(&dir, &clock)?;
            Ok::<_, TestError>(SluiceDb {
                dir,
                clock,
                session: Some(session),
            })
        }
    });
    runner.with_column_validator(sqllogictest::strict_column_validator);
    if complete {
        runner
            .update_test_file(
                path,
                " ",
                sqllogictest::default_validator,
                sqllogictest::default_normalizer,
                sqllogictest::strict_column_validator,
            )
            .await?;
    } else {
        runner.run_file_async(path).await?;
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let complete = args.iter().any(|a| a == "--complete");
    let filters: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
    let root = Path::new(&manifest_dir()).join("../testdata");
    let mut files = Vec::new();
    if let Err(e) = slt_files(&root, &mut files) {
        eprintln!("cannot list {}: {e}", root.display());
        return std::process::ExitCode::FAILURE;
    }
    files.sort();
    files.retain(|f| {
        filters.is_empty()
            || filters
                .iter()
                .any(|flt| f.to_string_lossy().contains(flt.as_str()))
    });
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start tokio: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let (mut passed, mut failed) = (0, 0);
    for file in &files {
        let name = file
            .strip_prefix(&root)
            .unwrap_or(file)
            .display()
            .to_string();
        // A continuous query that never ends would otherwise hang the whole suite.
        let run = async {
            tokio::time::timeout(FILE_TIMEOUT, run_file(file, complete))
                .await
                .unwrap_or_else(|_| {
                    Err(format!("timed out after {} s", FILE_TIMEOUT.as_secs()).into())
                })
        };
        match runtime.block_on(run) {
            Ok(()) => {
                passed += 1;
                println!("ok     {name}");
            }
            Err(e) => {
                failed += 1;
                println!("FAILED {name}\n{e}\n");
            }
        }
    }
    println!("sqllogictest: {passed} passed, {failed} failed");
    if failed > 0 || files.is_empty() {
        std::process::ExitCode::FAILURE
    } else {
        std::process::ExitCode::SUCCESS
    }
}

/// This package's folder: cargo's at run time, as a test binary built from another checkout
/// sharing the target folder may carry that checkout's path.
fn manifest_dir() -> String {
    std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_string())
}
