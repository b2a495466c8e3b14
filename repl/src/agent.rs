//! `sluice agent -c agent.json`: the file tailer ([`sluice_agent`]) with progress on standard
//! error and, when asked, its counters served as Prometheus metrics.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use sluice_agent::{AgentConfig, AgentStats, RunOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Debug, clap::Args)]
pub struct AgentArgs {
    /// The Kinesis Agent configuration file (agent.json: flows, kinesis.endpoint, …).
    #[arg(short = 'c', long = "config")]
    config: PathBuf,
    /// Serve the agent's counters as Prometheus metrics on this address (e.g. 127.0.0.1:9100).
    #[arg(long)]
    metrics_addr: Option<SocketAddr>,
    /// Seconds between progress lines on standard error (0: none).
    #[arg(long, default_value_t = 10)]
    progress_seconds: u64,
    /// Stop once every file was read to its end and everything read was acknowledged.
    #[arg(long)]
    exit_when_caught_up: bool,
}

pub async fn run_agent(args: &AgentArgs) -> Result<(), String> {
    let text = std::fs::read_to_string(&args.config)
        .map_err(|e| format!("cannot read {}: {e}", args.config.display()))?;
    let config = AgentConfig::parse(&text).map_err(|e| e.to_string())?;
    let stats = Arc::new(AgentStats::default());
    if let Some(addr) = args.metrics_addr {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
        let local = listener.local_addr().map_err(|e| e.to_string())?;
        eprintln!("sluice agent: metrics on http://{local}/metrics");
        let stats = Arc::clone(&stats);
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let stats = Arc::clone(&stats);
                tokio::spawn(async move {
                    // Any request gets the metrics; the request itself is read and ignored.
                    let mut request = [0u8; 4096];
                    let _ = socket.read(&mut request).await;
                    let body = stats.render();
                    let response = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = socket.write_all(response.as_bytes()).await;
                });
            }
        });
    }
    let options = RunOptions {
        progress_every: (args.progress_seconds > 0)
            .then(|| Duration::from_secs(args.progress_seconds)),
        exit_when_caught_up: args.exit_when_caught_up,
        ..RunOptions::default()
    };
    // SIGINT or SIGTERM: finish the batches in hand, save the checkpoints, stop.
    let stop = Arc::clone(&options.stop);
    tokio::spawn(async move {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async {
                match terminate.as_mut() {
                    Some(t) => { t.recv().await; }
                    None => std::future::pending::<()>().await,
                }
            } => {}
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    sluice_agent::run(config, options, stats)
        .await
        .map_err(|e| e.to_string())
}
