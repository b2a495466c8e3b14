//! The Flight benchmark: `DoPut` ingest and a Flight SQL query's `DoGet`, each through a real
//! gRPC server on 127.0.0.1 in this process, beside the same work done in-process: appending the
//! same batches through the engine API (`StreamSink::append_batch`, what `DoPut` calls), and
//! DataFusion producing the same query's result from the same session.
//!
//! The `DoGet` client runs on a thread of its own (its own single-threaded runtime, its HTTP/2
//! connection with it), so its CPU time is known apart from the server's: on this 2-core machine
//! the client's decoding competes with the server for the same cores, and the wall ratio counts
//! both. How much of that is beyond any server's reach is measured too: the same result's bytes
//! through a bare loopback socket, and arrow-flight's decoder on its messages without a network
//! (the client's floor).

use std::sync::Arc;
use std::time::Instant;

use arrow::array::{Int64Array, RecordBatch, StringArray, TimestampMillisecondArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow_flight::decode::FlightRecordBatchStream;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::flight_service_client::FlightServiceClient;
use arrow_flight::sql::client::FlightSqlServiceClient;
use arrow_flight::{FlightData, FlightDescriptor, PutResult};
use futures::{StreamExt, TryStreamExt};
use sluice_engine::{Durability, Engine, EngineOptions, StreamFormat, StreamSpec};
use sluice_flight::{BoundServer, ServerOptions};
use sluice_sql::{SluiceSession, StatementOutput, StreamSink};

use crate::measure::{CpuTimer, thread_cpu_secs};

const BATCH_ROWS: usize = 8192;

pub fn flight(records: usize) -> Result<(), Box<dyn std::error::Error>> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(records))
}

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("k", DataType::Utf8, true),
        Field::new("v", DataType::Int64, true),
        Field::new("ts", DataType::Timestamp(TimeUnit::Millisecond, None), true),
        Field::new("note", DataType::Utf8, true),
    ]))
}

/// Batches of 8,192 rows: 1,000 keys, a counter, a time and a ~40-byte string.
fn batches(records: usize) -> Result<Vec<RecordBatch>, arrow::error::ArrowError> {
    let schema = schema();
    (0..records)
        .step_by(BATCH_ROWS)
        .map(|start| {
            let rows = start..(start + BATCH_ROWS).min(records);
            RecordBatch::try_new(
                Arc::clone(&schema),
                vec![
                    Arc::new(StringArray::from_iter_values(
                        rows.clone().map(|i| format!("key-{:04}", i % 1000)),
                    )),
                    Arc::new(Int64Array::from_iter_values(rows.clone().map(|i| i as i64))),
                    Arc::new(TimestampMillisecondArray::from_iter_values(
                        rows.clone().map(|i| 1_767_225_600_000 + (i as i64) / 100),
                    )),
                    Arc::new(StringArray::from_iter_values(
                        rows.map(|i| format!("note {i:012} abcdefghijklmnopqrstuvw")),
                    )),
                ],
            )
        })
        .collect()
}

#[derive(Default)]
struct Figure {
    wall: f64,
    /// CPU seconds of the whole process.
    cpu: f64,
    /// Of `cpu`, the client's (`DoGet` only).
    client_cpu: f64,
}

impl Figure {
    fn rows_per_s(&self, rows: usize) -> f64 {
        rows as f64 / self.wall
    }
}

async fn run(records: usize) -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let engine = Engine::open(
        EngineOptions::new(dir.path().join("data")).with_durability(Durability::Buffered),
    )?;
    for name in ["local_events", "flight_events"] {
        let mut spec = StreamSpec::with_columns(name, 4, StreamFormat::Json, schema());
        spec.partition_key = Some("k".to_string());
        engine.create_stream(spec, false)?;
    }
    let session = SluiceSession::new(engine.clone())?;
    let data = batches(records)?;
    let bytes: usize = data.iter().map(|b| b.get_array_memory_size()).sum();
    let mb = bytes as f64 / 1e6;

    let server = BoundServer::bind(
        session.clone(),
        ServerOptions {
            addr: "127.0.0.1:0".parse()?,
            ..ServerOptions::default()
        },
    )
    .await?;
    let addr = server.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.serve(async move {
        let _ = stopped.await;
    }));
    let channel = endpoint(addr)?.connect().await?;

    // Ingest: in-process append of the same batches, then DoPut.
    let sink = StreamSink::new(engine.stream("local_events")?);
    let cpu = CpuTimer::start();
    let start = Instant::now();
    for batch in &data {
        sink.append_batch(batch).await?;
    }
    let local_put = Figure {
        wall: start.elapsed().as_secs_f64(),
        cpu: cpu.elapsed_secs(),
        ..Figure::default()
    };

    let mut client = FlightServiceClient::new(channel.clone())
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20);
    let cpu = CpuTimer::start();
    let start = Instant::now();
    let sent = futures::stream::iter(data.clone().into_iter().map(Ok));
    let flight_data = FlightDataEncoderBuilder::new()
        .with_flight_descriptor(Some(FlightDescriptor::new_path(vec![
            "flight_events".to_string(),
        ])))
        .build(sent)
        .map(|d| d.expect("encoding"));
    let acks: Vec<PutResult> = client
        .do_put(flight_data)
        .await?
        .into_inner()
        .try_collect()
        .await?;
    let flight_put = Figure {
        wall: start.elapsed().as_secs_f64(),
        cpu: cpu.elapsed_secs(),
        ..Figure::default()
    };
    let appended = count(&session, "flight_events").await?;
    if appended != records as i64 || acks.len() != data.len() {
        return Err(format!("DoPut appended {appended} of {records} records").into());
    }

    // Queries over the retained records, in-process and through Flight SQL: a plain scan
    // (nothing to compute, so Flight's encoding and transfer are all the difference) and a
    // query that computes per row.
    let queries = [
        (
            "DoGet scan",
            "SELECT k, v, ts, note FROM flight_events".to_string(),
        ),
        (
            "DoGet computed",
            "SELECT k, v * 2 AS v2, date_trunc('minute', ts) AS minute, upper(note) AS note, \
             length(note) + v % 7 AS n FROM flight_events WHERE v % 3 <> 0"
                .to_string(),
        ),
    ];
    let client = DoGetClient::start(addr)?;
    let mut gets = Vec::new();
    let mut floors = Vec::new();
    for (name, query) in &queries {
        // Each path RUNS times, alternating, and the median of each: one run of a query is a
        // tenth of a second, and this machine's timing varies by more than the difference.
        let mut locals = Vec::new();
        let mut flights = Vec::new();
        let mut rows = 0;
        let mut megabytes = 0.0;
        for _ in 0..RUNS {
            let (local, local_rows) = run_local(&session, query).await?;
            let (over, flight_rows, flight_bytes) = client.run(query)?;
            if local_rows != flight_rows {
                return Err(format!(
                    "{name}: {local_rows} rows in-process, {flight_rows} over Flight"
                )
                .into());
            }
            rows = flight_rows;
            megabytes = flight_bytes as f64 / 1e6;
            locals.push(local);
            flights.push(over);
        }
        let messages = result_flight_data(&session, query).await?;
        let loopback = loopback_alone(&messages)?;
        let decode = client.decode_alone(messages)?;
        if decode.rows != rows {
            return Err(format!(
                "{name}: {rows} rows over Flight, {} decoded alone",
                decode.rows
            )
            .into());
        }
        let local = median(locals);
        floors.push((*name, local.cpu, loopback, decode.cpu));
        gets.push((*name, local, median(flights), rows, megabytes));
    }

    let _ = stop.send(());
    serving.await??;
    session.shutdown().await;

    println!(
        "{records} rows in {} batches of {BATCH_ROWS} ({mb:.0} MB as Arrow), 4 shards, partition key k",
        data.len()
    );
    println!(
        "| path | in-process rows/s | Flight rows/s | Flight MB/s | wall ratio | CPU s: in-process / Flight (server + client) | server CPU ratio |"
    );
    println!("|---|---|---|---|---|---|---|");
    let put = ("DoPut ingest", local_put, flight_put, records, mb);
    for (name, local, over, rows, megabytes) in std::iter::once(put).chain(gets) {
        let (split, server_ratio) = if over.client_cpu > 0.0 {
            let server = over.cpu - over.client_cpu;
            (
                format!(" ({server:.2} + {:.2})", over.client_cpu),
                format!("{:.2}x", server / local.cpu),
            )
        } else {
            (String::new(), "–".to_string())
        };
        println!(
            "| {name} | {:.0} | {:.0} | {:.1} | {:.2}x | {:.2} / {:.2}{split} | {server_ratio} |",
            local.rows_per_s(rows),
            over.rows_per_s(rows),
            megabytes / over.wall,
            over.wall / local.wall,
            local.cpu,
            over.cpu,
        );
    }
    for (name, local_cpu, loopback, decode_cpu) in floors {
        println!(
            "{name}, the client's floor: the same bytes through a loopback socket alone take {loopback:.3} CPU s (sender + receiver), \
             arrow-flight's decoder alone {decode_cpu:.3}: were the server's own work free, the wall ratio on these 2 shared cores \
             would still be about {:.2}x (CPU ({local_cpu:.3} + {loopback:.3} + {decode_cpu:.3}) / {local_cpu:.3}).",
            (local_cpu + loopback + decode_cpu) / local_cpu,
        );
    }
    println!(
        "DoGet rows: the median of {RUNS} runs of each path, alternating. Target: Flight within 1.5x of in-process (wall ratio <= 1.5)."
    );
    println!(
        "The DoGet client (arrow-flight's FlightSqlServiceClient) runs on its own thread on the same 2 cores; server CPU = process CPU - the client thread's."
    );
    Ok(())
}

/// How many times each query runs on each path.
const RUNS: usize = 5;

/// The run with the median wall time.
fn median(mut runs: Vec<Figure>) -> Figure {
    runs.sort_by(|a, b| a.wall.total_cmp(&b.wall));
    runs.swap_remove(runs.len() / 2)
}

/// `query` run by DataFusion in this process, every batch pulled; returns the rows.
async fn run_local(
    session: &SluiceSession,
    query: &str,
) -> Result<(Figure, usize), Box<dyn std::error::Error>> {
    let cpu = CpuTimer::start();
    let start = Instant::now();
    let mut rows = 0;
    match session.execute(query).await? {
        StatementOutput::Rows(mut batches) => {
            while let Some(batch) = batches.next().await {
                rows += batch?.num_rows();
            }
        }
        other => return Err(format!("unexpected output {other:?}").into()),
    }
    let figure = Figure {
        wall: start.elapsed().as_secs_f64(),
        cpu: cpu.elapsed_secs(),
        ..Figure::default()
    };
    Ok((figure, rows))
}

/// A client's view of the server at `addr`, with the server's own HTTP/2 windows and frames.
fn endpoint(
    addr: std::net::SocketAddr,
) -> Result<tonic::transport::Endpoint, tonic::transport::Error> {
    Ok(
        tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
            .tcp_nodelay(true)
            .initial_stream_window_size(sluice_flight::server::STREAM_WINDOW)
            .initial_connection_window_size(sluice_flight::server::CONNECTION_WINDOW)
            .max_frame_size(sluice_flight::server::MAX_FRAME),
    )
}

/// A Flight SQL client on a thread of its own, with its own single-threaded runtime and
/// connection, so its CPU time can be told apart from the server's.
struct DoGetClient {
    requests: std::sync::mpsc::Sender<ClientRequest>,
}

type DoGetResult = Result<(Figure, usize, usize), String>;

enum ClientRequest {
    /// A query through Flight SQL.
    Query(String, std::sync::mpsc::Sender<DoGetResult>),
    /// Messages decoded by arrow-flight's decoder, [`RUNS`] times, without a network.
    Decode(
        Vec<FlightData>,
        std::sync::mpsc::Sender<Result<Decoded, String>>,
    ),
}

/// What decoding a result alone took: CPU seconds per decode, and the rows.
struct Decoded {
    cpu: f64,
    rows: usize,
}

impl DoGetClient {
    fn start(addr: std::net::SocketAddr) -> Result<Self, Box<dyn std::error::Error>> {
        let (requests, received) = std::sync::mpsc::channel::<ClientRequest>();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        std::thread::Builder::new()
            .name("flight-client".into())
            .spawn(move || {
                let connected = runtime.block_on(async { endpoint(addr)?.connect().await });
                let mut sql = connected.map(FlightSqlServiceClient::new);
                for request in received {
                    match request {
                        ClientRequest::Query(query, answer) => {
                            let result = match &mut sql {
                                Ok(sql) => runtime
                                    .block_on(run_flight(sql, &query))
                                    .map_err(|e| e.to_string()),
                                Err(e) => Err(format!("connecting: {e}")),
                            };
                            let _ = answer.send(result);
                        }
                        ClientRequest::Decode(messages, answer) => {
                            let _ = answer.send(runtime.block_on(decode(messages)));
                        }
                    }
                }
            })?;
        Ok(Self { requests })
    }

    /// Runs `query` on the client thread.
    fn run(&self, query: &str) -> Result<(Figure, usize, usize), Box<dyn std::error::Error>> {
        let (answer, result) = std::sync::mpsc::channel();
        self.requests
            .send(ClientRequest::Query(query.to_string(), answer))?;
        Ok(result.recv()??)
    }

    /// Decodes `messages` on the client thread, as its `DoGet` streams are decoded.
    fn decode_alone(
        &self,
        messages: Vec<FlightData>,
    ) -> Result<Decoded, Box<dyn std::error::Error>> {
        let (answer, result) = std::sync::mpsc::channel();
        self.requests
            .send(ClientRequest::Decode(messages, answer))?;
        Ok(result.recv()??)
    }
}

/// The CPU seconds (both ends, per run, the mean of [`RUNS`]) of sending the headers and bodies
/// of `messages` through a loopback TCP socket between two threads, read 1 MiB at a time: the
/// kernel's part of a `DoGet` of them, with nothing of gRPC or Arrow in it.
fn loopback_alone(messages: &[FlightData]) -> std::io::Result<f64> {
    use std::io::{Read, Write};
    let bytes: usize = messages
        .iter()
        .map(|m| m.data_header.len() + m.data_body.len())
        .sum();
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let mut cpu = 0.0;
    for _ in 0..RUNS {
        let receiver = std::thread::spawn(move || -> std::io::Result<(usize, f64)> {
            let start = thread_cpu_secs();
            let mut socket = std::net::TcpStream::connect(addr)?;
            let mut buffer = vec![0u8; 1 << 20];
            let mut received = 0;
            loop {
                match socket.read(&mut buffer)? {
                    0 => break,
                    n => received += n,
                }
            }
            Ok((received, thread_cpu_secs() - start))
        });
        let (mut socket, _) = listener.accept()?;
        socket.set_nodelay(true)?;
        let start = thread_cpu_secs();
        for message in messages {
            socket.write_all(&message.data_header)?;
            socket.write_all(&message.data_body)?;
        }
        drop(socket);
        let sent_cpu = thread_cpu_secs() - start;
        let (received, received_cpu) = receiver
            .join()
            .map_err(|_| std::io::Error::other("the loopback receiver panicked"))??;
        if received != bytes {
            return Err(std::io::Error::other(format!(
                "loopback: {received} of {bytes} bytes received"
            )));
        }
        cpu += sent_cpu + received_cpu;
    }
    Ok(cpu / RUNS as f64)
}

/// The messages the server sends for `query`, made in-process by the same encoder.
async fn result_flight_data(
    session: &SluiceSession,
    query: &str,
) -> Result<Vec<FlightData>, Box<dyn std::error::Error>> {
    let StatementOutput::Rows(rows) = session.execute(query).await? else {
        return Err(format!("{query}: no rows").into());
    };
    let (_open, closing) = tokio::sync::watch::channel(false);
    let messages: Vec<_> = sluice_flight::results::result_messages(rows, closing)
        .map_ok(sluice_flight::results::ResultMessage::into_flight_data)
        .try_collect()
        .await?;
    Ok(messages)
}

/// `messages` through arrow-flight's decoder (what `FlightSqlServiceClient::do_get` returns),
/// [`RUNS`] times; the CPU seconds of one decode on average.
async fn decode(messages: Vec<FlightData>) -> Result<Decoded, String> {
    let cpu = thread_cpu_secs();
    let mut rows = 0;
    for _ in 0..RUNS {
        rows = 0;
        let flight_data = futures::stream::iter(messages.clone().into_iter().map(Ok));
        let mut batches = FlightRecordBatchStream::new_from_flight_data(flight_data);
        while let Some(batch) = batches.next().await {
            rows += batch.map_err(|e| e.to_string())?.num_rows();
        }
    }
    Ok(Decoded {
        cpu: (thread_cpu_secs() - cpu) / RUNS as f64,
        rows,
    })
}

/// `query` through Flight SQL (`GetFlightInfo`, then `DoGet` of each endpoint); returns the
/// rows and the bytes of Arrow data received.
async fn run_flight(
    sql: &mut FlightSqlServiceClient<tonic::transport::Channel>,
    query: &str,
) -> Result<(Figure, usize, usize), Box<dyn std::error::Error>> {
    let cpu = CpuTimer::start();
    let client_cpu = thread_cpu_secs();
    let start = Instant::now();
    let info = sql.execute(query.to_string(), None).await?;
    let mut rows = 0;
    let mut bytes = 0;
    for endpoint in info.endpoint {
        let ticket = endpoint.ticket.ok_or("no ticket")?;
        let mut stream = sql.do_get(ticket).await?;
        while let Some(batch) = stream.next().await {
            let batch = batch?;
            rows += batch.num_rows();
            bytes += batch
                .columns()
                .iter()
                .map(|c| c.to_data().get_slice_memory_size().unwrap_or(0))
                .sum::<usize>();
        }
    }
    let figure = Figure {
        wall: start.elapsed().as_secs_f64(),
        cpu: cpu.elapsed_secs(),
        client_cpu: thread_cpu_secs() - client_cpu,
    };
    Ok((figure, rows, bytes))
}

async fn count(session: &SluiceSession, stream: &str) -> Result<i64, Box<dyn std::error::Error>> {
    use arrow::array::AsArray;
    let results = session
        .execute_all(&format!("SELECT count(*) AS n FROM {stream}"))
        .await?;
    let batch = results
        .first()
        .and_then(|(_, b)| b.first())
        .ok_or("no count")?;
    Ok(batch
        .column(0)
        .as_primitive::<arrow::datatypes::Int64Type>()
        .value(0))
}
