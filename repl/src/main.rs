//! `sluice`: a SQL REPL on an embedded Sluice engine, and the Sluice server.
//!
//! `sluice` opens the REPL on the data folder `./sluice-data` (or `--data-dir`); `sluice -c SQL`
//! and `sluice -f file.sql` run statements without a prompt, for scripts and tests, printing in
//! `--format` (table, csv, tsv, json, ndjson) and exiting non-zero at the first error.
//! `sluice demo` opens the REPL with a live stock-ticker stream (`demo_ticker`) to try
//! continuous queries on. `sluice serve` serves Arrow Flight and Flight SQL on 127.0.0.1:50051
//! until SIGINT/SIGTERM;
//! `sluice --connect grpc://127.0.0.1:50051` runs the same REPL against it.
//!
//! # Example
//!
//! ```text
//! $ sluice -c "CREATE STREAM ticker (symbol VARCHAR, price DOUBLE) WITH (shards = 4, partition_key = 'symbol')"
//! $ sluice -c "INSERT INTO ticker VALUES ('AMZN', 130.2)" -c "SELECT symbol, price FROM ticker"
//! ```

mod agent;
mod print;
mod repl;
mod status;

/// mimalloc, as DataFusion's own CLI and the benchmarks use, so the figures in `benchmarks/` are
/// the ones `sluice` gives. Loading 2 million rows over `DoPut` and reading them back with
/// pyarrow peaked at ~400 MB resident with it against 510-540 MB on the system allocator, at the
/// same read rate.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sluice_engine::{Durability, Engine, EngineOptions};
use sluice_flight::client::ConnectOptions;
use sluice_flight::{Authorizer, RemoteSession};
use sluice_server::{Server, ServerConfig};
use sluice_sql::SluiceSession;

use crate::print::OutputFormat;
use crate::repl::{Backend, Shell};

/// Sluice: Kinesis-style streams and SQL over them, in one binary.
#[derive(Debug, Parser)]
#[command(
    name = "sluice",
    version,
    about,
    after_help = "New here? `sluice demo` opens the REPL with a live stock-ticker stream to query."
)]
struct Args {
    /// The folder holding streams, segments and logs.
    #[arg(
        long,
        default_value = "sluice-data",
        env = "SLUICE_DATA_DIR",
        global = true
    )]
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
    #[arg(long, global = true)]
    os_buffered: bool,

    /// Memory for sealed segments, in MiB, shared by every stream; older records are read from
    /// disk when a reader reaches them.
    #[arg(
        long,
        value_name = "MIB",
        default_value_t = 256,
        env = "SLUICE_CACHE_MB",
        global = true
    )]
    cache_mb: usize,

    /// Run statements on a Sluice server instead of an embedded engine
    /// (grpc://host:port or grpc+tls://host:port).
    #[arg(long, value_name = "URL")]
    connect: Option<String>,

    /// The bearer token: what `sluice serve` requires (on Flight and /metrics; with it the AWS
    /// APIs accept only configured keys), or what `--connect` sends.
    #[arg(long, env = "SLUICE_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,

    /// A user for Basic authentication (with --password); `sluice serve` also takes it as an
    /// AWS access key id whose secret is the password.
    #[arg(long, env = "SLUICE_USER", global = true)]
    user: Option<String>,

    /// The password for Basic authentication (with --user).
    #[arg(long, env = "SLUICE_PASSWORD", global = true, hide_env_values = true)]
    password: Option<String>,

    /// The CA certificate (PEM) a grpc+tls:// server's certificate is checked against.
    #[arg(long, value_name = "FILE")]
    tls_ca: Option<PathBuf>,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve Arrow Flight / Flight SQL and the Kinesis API until SIGINT or SIGTERM.
    Serve(ServeArgs),
    /// Open the REPL with a live stock-ticker stream, `demo_ticker`, to try continuous
    /// queries on at once (shaped like the Kinesis Data Analytics console's demo stream).
    Demo,
    /// Tail log files into Kinesis streams and Firehose delivery streams, configured as the
    /// Amazon Kinesis Agent is (`-c agent.json`).
    Agent(agent::AgentArgs),
}

/// The stream `sluice demo` creates, and what to try on it.
const DEMO_STREAM: &str = "CREATE STREAM IF NOT EXISTS demo_ticker (
    ticker_symbol VARCHAR, sector VARCHAR, change DOUBLE, price DOUBLE, event_time TIMESTAMP,
    WATERMARK FOR event_time AS event_time - INTERVAL '1' SECOND
) WITH (source = 'demo', shards = 2)";

const DEMO_HINT: &str = "A stock ticker feeds the stream demo_ticker (ticker_symbol, sector, change, price, event_time), five records a second. Try:

  SELECT STREAM ticker_symbol, change, price FROM demo_ticker WHERE abs(change) > 4;
  SELECT STREAM window_start, sector, count(*) AS trades, avg(price) AS avg_price
    FROM tumble(demo_ticker, event_time, INTERVAL '10' SECOND)
    GROUP BY window_start, sector;
  SELECT ticker_symbol, count(*), min(price), max(price) FROM demo_ticker GROUP BY ticker_symbol;

Ctrl-C stops a continuous query; \\q quits.
";

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// The address to listen on; other machines can reach Sluice only if this says so.
    #[arg(long, default_value = "127.0.0.1", env = "SLUICE_BIND")]
    bind: IpAddr,

    /// The Kinesis Data Streams API port (0 picks a free one).
    #[arg(long, default_value_t = 4567, env = "SLUICE_KINESIS_PORT")]
    kinesis_port: u16,

    /// The Arrow Flight / Flight SQL port (0 picks a free one).
    #[arg(long, default_value_t = 50051, env = "SLUICE_FLIGHT_PORT")]
    flight_port: u16,

    /// Serve TLS with this certificate chain (PEM; with --tls-key).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,

    /// The private key (PEM) of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,

    /// An access key (with --aws-secret-access-key) the AWS APIs' SigV4 signatures are verified
    /// against; also taken as Basic credentials on Flight and /metrics. With no credential flag
    /// at all the server is open, and any SigV4-shaped request is accepted.
    #[arg(
        long,
        env = "SLUICE_AWS_ACCESS_KEY_ID",
        requires = "aws_secret_access_key"
    )]
    aws_access_key_id: Option<String>,

    /// The secret key of --aws-access-key-id.
    #[arg(
        long,
        env = "SLUICE_AWS_SECRET_ACCESS_KEY",
        hide_env_values = true,
        requires = "aws_access_key_id"
    )]
    aws_secret_access_key: Option<String>,

    /// Enforce Kinesis's per-shard throughput limits on the Kinesis API (1,000 records and
    /// 1 MiB per second of writes, 2 MiB and 5 calls per second of reads), answering
    /// ProvisionedThroughputExceededException beyond them.
    #[arg(long)]
    kinesis_shard_limits: bool,

    /// Join a cluster whose nodes share streams through this etcd
    /// (etcd://host:port[,host:port…]); needs --node-id and --storage.
    #[arg(long, requires_all = ["node_id", "storage"])]
    cluster: Option<String>,

    /// This node's name in the cluster, unique among its nodes.
    #[arg(long, requires = "cluster")]
    node_id: Option<String>,

    /// The cluster's shared durable storage: s3://bucket/prefix (endpoint, region and keys from
    /// the usual AWS variables) or file:///path (a folder every node reaches).
    #[arg(long, requires = "cluster")]
    storage: Option<String>,

    /// The host or address other nodes reach this one at (default: the --bind address).
    #[arg(long, requires = "cluster")]
    advertise: Option<String>,
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
    let result = match &args.command {
        Some(Command::Serve(serve)) => runtime.block_on(run_server(&args, serve)),
        Some(Command::Demo) => runtime.block_on(run_demo(&args)),
        Some(Command::Agent(agent)) => runtime.block_on(agent::run_agent(agent)),
        None => runtime.block_on(run(&args)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn open_session(args: &Args) -> Result<SluiceSession, String> {
    let mut options =
        EngineOptions::new(&args.data_dir).with_cache_bytes(args.cache_mb.saturating_mul(1 << 20));
    if args.os_buffered {
        options = options.with_durability(Durability::Buffered);
    }
    let engine = tokio::task::spawn_blocking(move || Engine::open(options))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    SluiceSession::new(engine).map_err(|e| e.to_string())
}

fn basic(args: &Args) -> Result<Option<(String, String)>, String> {
    match (&args.user, &args.password) {
        (Some(user), Some(password)) => Ok(Some((user.clone(), password.clone()))),
        (None, None) => Ok(None),
        _ => Err("--user and --password go together".to_string()),
    }
}

/// The server's one authorizer, from every credential flag: Flight, the AWS APIs and
/// `/metrics` all ask it, so credentials given for one surface close them all. An AWS access key
/// is a user whose password is its secret key, and `--user`/`--password` sign AWS requests too.
fn authorizer(args: &Args, serve: &ServeArgs) -> Result<Authorizer, String> {
    let mut auth = Authorizer::open();
    if let Some(token) = &args.token {
        auth = auth.with_token(token);
    }
    if let Some((user, password)) = basic(args)? {
        auth = auth.with_password(user, password);
    }
    if let (Some(key), Some(secret)) = (&serve.aws_access_key_id, &serve.aws_secret_access_key) {
        auth = auth.with_password(key, secret);
    }
    if auth.is_open() && !serve.bind.is_loopback() {
        eprintln!(
            "Warning: serving on {} without credentials: anyone who can reach it can read and write every stream. Give --token, --user/--password or --aws-access-key-id/--aws-secret-access-key.",
            serve.bind
        );
    }
    Ok(auth)
}

async fn run(args: &Args) -> Result<(), String> {
    let (backend, session) = match &args.connect {
        Some(url) => {
            let ca_pem = match &args.tls_ca {
                Some(path) => Some(
                    std::fs::read(path)
                        .map_err(|e| format!("cannot read {}: {e}", path.display()))?,
                ),
                None => None,
            };
            let options = ConnectOptions {
                token: args.token.clone(),
                basic: basic(args)?,
                ca_pem,
            };
            let remote = RemoteSession::connect(url, options).await?;
            (Backend::Remote(remote), None)
        }
        None => {
            let session = open_session(args).await?;
            (Backend::Embedded(session.clone()), Some(session))
        }
    };
    let scripted = !args.commands.is_empty() || !args.files.is_empty();
    let mut shell = Shell::new(backend, args.format, !args.quiet);
    let result = if scripted {
        run_scripts(&mut shell, args).await
    } else {
        let history = dirs::home_dir().map(|home| home.join(".sluice_history"));
        let place = match &args.connect {
            Some(url) => format!("connected to {url}"),
            None => format!("on the data folder {}", args.data_dir.display()),
        };
        shell.interactive(history, &place).await
    };
    if let Some(session) = session {
        session.shutdown().await;
    }
    result
}

/// `sluice demo`: the REPL (or `-c`/`-f`) on an engine with the demo ticker stream running.
async fn run_demo(args: &Args) -> Result<(), String> {
    if args.connect.is_some() {
        return Err(
            "sluice demo runs on its own data folder; to try the demo on a server, run there: CREATE STREAM demo_ticker (ticker_symbol VARCHAR, sector VARCHAR, change DOUBLE, price DOUBLE) WITH (source = 'demo')".to_string(),
        );
    }
    let session = open_session(args).await?;
    session
        .execute_all(DEMO_STREAM)
        .await
        .map_err(|e| e.to_string())?;
    let stream = session
        .engine()
        .stream("demo_ticker")
        .map_err(|e| e.to_string())?;
    if stream.definition().source.is_none() {
        session.shutdown().await;
        return Err(format!(
            "the data folder {} has a stream demo_ticker that no demo source feeds; run sluice demo with another --data-dir",
            args.data_dir.display()
        ));
    }
    let scripted = !args.commands.is_empty() || !args.files.is_empty();
    let mut shell = Shell::new(Backend::Embedded(session.clone()), args.format, !args.quiet);
    let result = if scripted {
        run_scripts(&mut shell, args).await
    } else {
        print!("{DEMO_HINT}");
        let history = dirs::home_dir().map(|home| home.join(".sluice_history"));
        let place = format!("on the data folder {}", args.data_dir.display());
        shell.interactive(history, &place).await
    };
    session.shutdown().await;
    result
}

async fn run_server(args: &Args, serve: &ServeArgs) -> Result<(), String> {
    let auth = authorizer(args, serve)?;
    let tls = match (&serve.tls_cert, &serve.tls_key) {
        (Some(cert), Some(key)) => {
            let read = |path: &PathBuf| {
                std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
            };
            Some((read(cert)?, read(key)?))
        }
        _ => None,
    };
    let session = open_session(args).await?;
    let config = ServerConfig {
        bind: serve.bind,
        flight_port: serve.flight_port,
        kinesis_port: serve.kinesis_port,
        auth,
        tls,
        kinesis_shard_limits: serve.kinesis_shard_limits,
        cluster: serve
            .cluster
            .as_ref()
            .map(|etcd| sluice_server::cluster::ClusterConfig {
                etcd: etcd.clone(),
                node_id: serve.node_id.clone().unwrap_or_default(),
                storage: serve.storage.clone().unwrap_or_default(),
                advertise: serve
                    .advertise
                    .clone()
                    .unwrap_or_else(|| serve.bind.to_string()),
            }),
    };
    let server = Server::bind(session, config)
        .await
        .map_err(|e| e.to_string())?;
    // Scripts and tests read this line to learn the ports; written without panicking if
    // whoever started us stopped reading.
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(
        stdout,
        "Sluice {} serving Arrow Flight SQL on {}://{} and the Kinesis API on http://{} (data folder {})",
        env!("CARGO_PKG_VERSION"),
        server.flight_scheme(),
        server.flight_addr(),
        server.kinesis_addr(),
        args.data_dir.display()
    );
    let _ = stdout.flush();
    drop(stdout);
    let result = server
        .serve(sluice_server::shutdown_signal())
        .await
        .map_err(|e| e.to_string());
    let _ = writeln!(std::io::stderr(), "Sluice stopped.");
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
