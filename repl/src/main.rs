//! `sluice`: a SQL REPL on an embedded Sluice engine.
//!
//! `sluice` opens the REPL on the data folder `./sluice-data` (or `--data-dir`); `sluice -c SQL`
//! and `sluice -f file.sql` run statements without a prompt, for scripts and tests, printing in
//! `--format` (table, csv, tsv, json, ndjson) and exiting non-zero at the first error.
//!
//! # Example
//!
//! ```text
//! $ sluice -c "CREATE STREAM ticker (symbol VARCHAR, price DOUBLE) WITH (shards = 4, partition_key = 'symbol')"
//! $ sluice -c "INSERT INTO ticker VALUES ('AMZN', 130.2)" -c "SELECT symbol, price FROM ticker"
//! ```

mod print;
mod repl;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use sluice_engine::{Durability, Engine, EngineOptions};
use sluice_sql::SluiceSession;

use crate::print::OutputFormat;
use crate::repl::Shell;

/// Sluice: Kinesis-style streams and SQL over them, in one binary.
#[derive(Debug, Parser)]
#[command(name = "sluice", version, about)]
struct Args {
    /// The folder holding streams, segments and logs.
    #[arg(long, default_value = "sluice-data", env = "SLUICE_DATA_DIR")]
    data_dir: PathBuf,

    /// Run this SQL and exit (repeatable; runs in order).
    #[arg(short = 'c', long = "command", value_name = "SQL")]
    commands: Vec<String>,

    /// Run the SQL in this file and exit (repeatable).
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    files: Vec<PathBuf>,

    /// How to print results.
    #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
    format: OutputFormat,

    /// Leave out the row count and timing footer.
    #[arg(short, long)]
    quiet: bool,

    /// Acknowledge writes once the OS has them instead of after fsync (faster, survives a
    /// process crash but not a power loss).
    #[arg(long)]
    os_buffered: bool,
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("Error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), String> {
    let mut options = EngineOptions::new(&args.data_dir);
    if args.os_buffered {
        options = options.with_durability(Durability::Buffered);
    }
    let engine = tokio::task::spawn_blocking(move || Engine::open(options))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    let session = SluiceSession::new(engine).map_err(|e| e.to_string())?;
    let scripted = !args.commands.is_empty() || !args.files.is_empty();
    let mut shell = Shell::new(session.clone(), args.format, !args.quiet);
    let result = if scripted {
        run_scripts(&mut shell, &args).await
    } else {
        let history = dirs::home_dir().map(|home| home.join(".sluice_history"));
        shell.interactive(history).await
    };
    session.shutdown().await;
    result
}

async fn run_scripts(shell: &mut Shell, args: &Args) -> Result<(), String> {
    for file in &args.files {
        let sql = std::fs::read_to_string(file)
            .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
        shell.run_script(&sql).await?;
    }
    for sql in &args.commands {
        shell.run_script(sql).await?;
    }
    Ok(())
}
