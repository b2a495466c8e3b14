//! `sluice agent`: tails log files into Kinesis streams and Firehose delivery streams, read from
//! the Amazon Kinesis Agent's own configuration file, over the Kinesis and Firehose HTTP APIs
//! with SigV4 — against `sluice serve`, or against AWS.
//!
//! Each flow ([`config`]) has a tailing thread ([`tail`]) that follows its files through
//! rotation and cuts them into records, runs its `dataProcessingOptions` ([`process`]) and
//! fills batches (by `maxBufferSizeRecords`, `maxBufferSizeBytes`, `maxBufferAgeMillis`); and a
//! sending task ([`sender`]) that keeps several batches in flight (`maxSendingThreads` requests
//! over all flows), sends each until every record is acknowledged, and saves how far each file
//! was acknowledged, in the order the batches were read ([`checkpoint`]). A restart (or `kill -9`)
//! resumes there: lines are sent at least once, never lost. Progress (lines read, records sent,
//! bytes behind) goes to standard error and to [`AgentStats`], which the binary serves as
//! Prometheus metrics.
//!
//! # Example
//!
//! ```no_run
//! # async fn example() -> Result<(), sluice_agent::error::Error> {
//! use sluice_agent::{AgentConfig, AgentStats, RunOptions, run};
//!
//! let config = AgentConfig::parse(&std::fs::read_to_string("agent.json").unwrap())?;
//! let stats = std::sync::Arc::new(AgentStats::default());
//! run(config, RunOptions::default(), stats).await?;
//! # Ok(()) }
//! ```

pub mod checkpoint;
pub mod config;
pub mod error;
pub mod process;
pub mod sender;
pub mod tail;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::FuturesOrdered;
use parking_lot::Mutex;

pub use config::AgentConfig;

use checkpoint::{Checkpoints, FileCheckpoint, FileId, FlowCheckpoint};
use config::{Destination, FlowConfig};
use error::{Error, Result};
use sender::Sender;
use tail::{FileInfo, Record, Tailer};

/// How often a flow looks for new lines when there were none.
const POLL: Duration = Duration::from_millis(100);
/// Checkpoints are saved at most this often (and when the agent stops).
const CHECKPOINT_EVERY: Duration = Duration::from_millis(200);

/// What the agent has done, for progress lines and metrics.
#[derive(Debug, Default)]
pub struct AgentStats {
    pub lines_read: AtomicU64,
    pub records_sent: AtomicU64,
    pub bytes_sent: AtomicU64,
    /// Attempts that left records unacknowledged (throttling, errors) and were retried.
    pub retries: AtomicU64,
    /// Records a processing option could not convert (sent as they were).
    pub conversion_failures: AtomicU64,
    pub bytes_behind: AtomicU64,
}

impl AgentStats {
    /// The counters in Prometheus's text format.
    pub fn render(&self) -> String {
        let rows = [
            (
                "sluice_agent_lines_read_total",
                "counter",
                "Lines read from the tailed files",
                &self.lines_read,
            ),
            (
                "sluice_agent_records_sent_total",
                "counter",
                "Records acknowledged by the destination",
                &self.records_sent,
            ),
            (
                "sluice_agent_bytes_sent_total",
                "counter",
                "Bytes of records acknowledged",
                &self.bytes_sent,
            ),
            (
                "sluice_agent_retries_total",
                "counter",
                "Send attempts that were retried",
                &self.retries,
            ),
            (
                "sluice_agent_conversion_failures_total",
                "counter",
                "Records a processing option could not convert",
                &self.conversion_failures,
            ),
            (
                "sluice_agent_bytes_behind",
                "gauge",
                "Bytes in the tailed files not yet acknowledged",
                &self.bytes_behind,
            ),
        ];
        let mut out = String::new();
        for (name, kind, help, value) in rows {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {}\n",
                value.load(Ordering::Relaxed)
            ));
        }
        out
    }

    /// One progress line.
    pub fn progress(&self) -> String {
        format!(
            "sluice agent: {} lines read, {} records sent ({} bytes), {} bytes behind, {} retries",
            self.lines_read.load(Ordering::Relaxed),
            self.records_sent.load(Ordering::Relaxed),
            self.bytes_sent.load(Ordering::Relaxed),
            self.bytes_behind.load(Ordering::Relaxed),
            self.retries.load(Ordering::Relaxed),
        )
    }
}

/// How the agent runs.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// How often a progress line goes to standard error (`None`: never).
    pub progress_every: Option<Duration>,
    /// Stop once every file was read to its end and everything read was acknowledged (for
    /// scripts and benchmarks); otherwise run until stopped.
    pub exit_when_caught_up: bool,
    /// Set to stop: the flows finish the batch in hand, save their checkpoints and return.
    pub stop: Arc<AtomicBool>,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            progress_every: Some(Duration::from_secs(10)),
            exit_when_caught_up: false,
            stop: Arc::new(AtomicBool::new(false)),
        }
    }
}

/// A batch of processed records, with where each came from.
struct Batch {
    records: Vec<Record>,
}

/// What a flow has had acknowledged, per file: the file as records last named it, and the
/// offset after its last acknowledged record.
type Acked = HashMap<FileId, (Arc<FileInfo>, u64)>;

/// The checkpoint file, shared by the flows.
struct CheckpointStore {
    path: PathBuf,
    state: Mutex<CheckpointState>,
}

struct CheckpointState {
    checkpoints: Checkpoints,
    last_saved: Instant,
    unsaved: bool,
}

impl CheckpointStore {
    /// Records `flow`'s acknowledged offsets; saves when the last save is old enough.
    fn update(&self, flow: &str, acked: &Acked) -> Result<()> {
        let mut files: Vec<FileCheckpoint> = acked
            .iter()
            .map(|(id, (info, offset))| FileCheckpoint {
                path: info.path.clone(),
                id: *id,
                offset: *offset,
                fingerprint: info.fingerprint.clone(),
            })
            .collect();
        files.sort_by(|a, b| a.path.cmp(&b.path));
        let mut state = self.state.lock();
        state.checkpoints.flows.insert(
            flow.to_string(),
            FlowCheckpoint {
                saved_at_ms: now_ms(),
                files,
            },
        );
        state.unsaved = true;
        if state.last_saved.elapsed() >= CHECKPOINT_EVERY {
            self.save(&mut state)?;
        }
        Ok(())
    }

    /// Saves what is not saved yet.
    fn flush(&self) -> Result<()> {
        let mut state = self.state.lock();
        if state.unsaved {
            self.save(&mut state)?;
        }
        Ok(())
    }

    fn save(&self, state: &mut CheckpointState) -> Result<()> {
        state.checkpoints.save(&self.path)?;
        state.last_saved = Instant::now();
        state.unsaved = false;
        Ok(())
    }
}

/// Runs every flow of `config` until stopped (or, with `exit_when_caught_up`, until caught up).
pub async fn run(config: AgentConfig, options: RunOptions, stats: Arc<AgentStats>) -> Result<()> {
    let checkpoints = Checkpoints::load(&config.checkpoint_file)?;
    let store = Arc::new(CheckpointStore {
        path: config.checkpoint_file.clone(),
        state: Mutex::new(CheckpointState {
            checkpoints: Checkpoints {
                flows: checkpoints.flows.clone(),
            },
            last_saved: Instant::now(),
            unsaved: false,
        }),
    });
    let stop = Arc::clone(&options.stop);
    // `maxSendingThreads`: requests in flight over all flows.
    let permits = Arc::new(tokio::sync::Semaphore::new(config.max_sending_threads));
    let mut tasks = Vec::new();
    for flow in &config.flows {
        let endpoint = match flow.destination {
            Destination::Kinesis(_) => config.kinesis_endpoint.clone(),
            Destination::Firehose(_) => config.firehose_endpoint.clone(),
        }
        .unwrap_or_default();
        let sender = Sender::new(
            &endpoint,
            flow.destination.clone(),
            flow.partition_key,
            &config.region,
            config.credentials.clone(),
        )
        .map_err(|e| Error::Config(e.message))?;
        let id = flow.id();
        let tailer = Tailer::new(flow.clone(), checkpoints.flows.get(&id))?;
        let acked: Arc<Mutex<Acked>> = Arc::new(Mutex::new(
            checkpoints
                .flows
                .get(&id)
                .map(|c| {
                    c.files
                        .iter()
                        .map(|f| {
                            let info = FileInfo {
                                path: f.path.clone(),
                                fingerprint: f.fingerprint.clone(),
                            };
                            (f.id, (Arc::new(info), f.offset))
                        })
                        .collect()
                })
                .unwrap_or_default(),
        ));
        let (batches, receive) = tokio::sync::mpsc::channel::<Batch>(2);
        let tail_stats = Arc::clone(&stats);
        let tail_acked = Arc::clone(&acked);
        let tail_stop = Arc::clone(&stop);
        let flow_config = flow.clone();
        let exit = options.exit_when_caught_up;
        let tail = tokio::task::spawn_blocking(move || {
            tail_flow(
                tailer,
                &flow_config,
                batches,
                &tail_stats,
                &tail_acked,
                &tail_stop,
                exit,
            )
        });
        let send = tokio::spawn(send_flow(
            id,
            receive,
            Arc::new(sender),
            Arc::clone(&permits),
            config.max_sending_threads,
            Arc::clone(&acked),
            Arc::clone(&store),
            Arc::clone(&stats),
        ));
        tasks.push((tail, send, acked));
    }
    let progress_stats = Arc::clone(&stats);
    let progress = options.progress_every.map(|every| {
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                eprintln!("{}", progress_stats.progress());
            }
        })
    });
    let mut result = Ok(());
    for (tail, send, acked) in tasks {
        let tailer = match tail.await {
            Ok(Ok(tailer)) => Some(tailer),
            Ok(Err(e)) => {
                stop.store(true, Ordering::Relaxed);
                result = Err(e);
                None
            }
            Err(e) => {
                result = Err(Error::Io(format!("a flow stopped: {e}")));
                None
            }
        };
        let _ = send.await;
        // What the flow's last look missed: the batches acknowledged after it.
        if let Some(mut tailer) = tailer {
            report_behind(&mut tailer, &acked, &stats);
        }
    }
    if let Some(progress) = progress {
        progress.abort();
    }
    store.flush()?;
    eprintln!("{}", stats.progress());
    result
}

/// A flow's tailing loop: reads, processes and batches records until stopped.
fn tail_flow(
    mut tailer: Tailer,
    flow: &FlowConfig,
    batches: tokio::sync::mpsc::Sender<Batch>,
    stats: &AgentStats,
    acked: &Mutex<Acked>,
    stop: &AtomicBool,
    exit_when_caught_up: bool,
) -> Result<Tailer> {
    let mut batch: Vec<Record> = Vec::new();
    let mut batch_bytes = 0;
    let mut opened = Instant::now();
    let max_age = Duration::from_millis(flow.max_buffer_age_ms);
    let mut lines_seen = 0;
    while !stop.load(Ordering::Relaxed) {
        let records = tailer.poll(flow.max_buffer_size_bytes.max(1 << 20))?;
        stats
            .lines_read
            .fetch_add(tailer.stats.lines_read - lines_seen, Ordering::Relaxed);
        lines_seen = tailer.stats.lines_read;
        let idle = records.is_empty();
        for mut record in records {
            for processor in &flow.processors {
                match processor.apply(&record.data) {
                    Ok(out) => record.data = out,
                    Err(reason) => {
                        stats.conversion_failures.fetch_add(1, Ordering::Relaxed);
                        log::debug!("{}: not converted ({reason})", record.info.path.display());
                        break;
                    }
                }
            }
            if batch.is_empty() {
                opened = Instant::now();
            }
            if batch_bytes + record.data.len() > flow.max_buffer_size_bytes && !batch.is_empty() {
                send(&batches, &mut batch, &mut batch_bytes)?;
                opened = Instant::now();
            }
            batch_bytes += record.data.len();
            batch.push(record);
            if batch.len() >= flow.max_buffer_size_records {
                send(&batches, &mut batch, &mut batch_bytes)?;
            }
        }
        let caught_up = idle && tailer.caught_up();
        if !batch.is_empty() && (opened.elapsed() >= max_age || (exit_when_caught_up && caught_up))
        {
            send(&batches, &mut batch, &mut batch_bytes)?;
        }
        report_behind(&mut tailer, acked, stats);
        if exit_when_caught_up && caught_up && batch.is_empty() {
            return Ok(tailer);
        }
        if idle {
            std::thread::sleep(POLL);
        }
    }
    Ok(tailer)
}

/// Updates the bytes-behind gauge with this flow's share; the gauge is the sum over flows, so
/// each flow adds the change in its own.
fn report_behind(tailer: &mut Tailer, acked: &Mutex<Acked>, stats: &AgentStats) {
    let offsets: HashMap<FileId, u64> = acked
        .lock()
        .iter()
        .map(|(id, (_, offset))| (*id, *offset))
        .collect();
    let behind = tailer.bytes_behind(&offsets);
    stats.bytes_behind.fetch_add(
        behind.wrapping_sub(tailer.stats.bytes_behind),
        Ordering::Relaxed,
    );
    tailer.stats.bytes_behind = behind;
}

/// A flow's sending task: keeps up to `in_flight` batches sending at once (each holding one of
/// the agent's `permits` while it sends), and acknowledges them in the order they were read, so
/// a file's checkpoint never passes a line that is not acknowledged yet.
#[allow(clippy::too_many_arguments)]
async fn send_flow(
    flow: String,
    mut batches: tokio::sync::mpsc::Receiver<Batch>,
    sender: Arc<Sender>,
    permits: Arc<tokio::sync::Semaphore>,
    in_flight: usize,
    acked: Arc<Mutex<Acked>>,
    store: Arc<CheckpointStore>,
    stats: Arc<AgentStats>,
) {
    let mut sending = FuturesOrdered::new();
    let mut open = true;
    loop {
        tokio::select! {
            biased;
            Some(batch) = sending.next() => {
                let batch: Batch = batch;
                let bytes: usize = batch.records.iter().map(|r| r.data.len()).sum();
                stats
                    .records_sent
                    .fetch_add(batch.records.len() as u64, Ordering::Relaxed);
                stats.bytes_sent.fetch_add(bytes as u64, Ordering::Relaxed);
                let snapshot = {
                    let mut acked = acked.lock();
                    // Records of a file come in order: its last one says how far it got.
                    for record in &batch.records {
                        acked.insert(record.file, (Arc::clone(&record.info), record.end_offset));
                    }
                    acked.clone()
                };
                if let Err(e) = store.update(&flow, &snapshot) {
                    log::error!("{e}");
                }
            }
            batch = batches.recv(), if open && sending.len() < in_flight => match batch {
                Some(batch) => sending.push_back(send_batch(
                    batch,
                    Arc::clone(&sender),
                    Arc::clone(&permits),
                    Arc::clone(&stats),
                )),
                None => open = false,
            },
            else => break,
        }
    }
}

/// Sends one batch until every record in it is acknowledged.
async fn send_batch(
    batch: Batch,
    sender: Arc<Sender>,
    permits: Arc<tokio::sync::Semaphore>,
    stats: Arc<AgentStats>,
) -> Batch {
    // The semaphore is never closed.
    let _permit = permits.acquire_owned().await;
    let datas: Vec<&[u8]> = batch.records.iter().map(|r| r.data.as_slice()).collect();
    sender
        .send_all(&datas, |why| {
            stats.retries.fetch_add(1, Ordering::Relaxed);
            log::warn!("{why}");
        })
        .await;
    batch
}

fn send(
    batches: &tokio::sync::mpsc::Sender<Batch>,
    batch: &mut Vec<Record>,
    bytes: &mut usize,
) -> Result<()> {
    let records = std::mem::take(batch);
    *bytes = 0;
    batches
        .blocking_send(Batch { records })
        .map_err(|_| Error::Io("the sending task stopped".to_string()))
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
