//! The Flight server from Rust clients: `FlightSqlServiceClient` for Flight SQL and the plain
//! `FlightServiceClient` for subscriptions and `DoPut`, against a real server on 127.0.0.1.

use std::sync::Arc;
use std::time::Duration;

use arrow::array::{AsArray, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Int64Type, Schema};
use arrow_flight::decode::FlightRecordBatchStream;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::flight_service_client::FlightServiceClient;
use arrow_flight::sql::client::FlightSqlServiceClient;
use arrow_flight::sql::{CommandGetTables, CommandStatementIngest, TableDefinitionOptions};
use arrow_flight::{FlightDescriptor, FlightInfo, Ticket};
use futures::{StreamExt, TryStreamExt};
use sluice_engine::{Engine, EngineOptions};
use sluice_flight::{Authorizer, BoundServer, ServerOptions};
use sluice_sql::SluiceSession;
use tonic::Code;
use tonic::transport::Channel;

type TestResult = Result<(), Box<dyn std::error::Error>>;

const TOKEN: &str = "rust-test-token";

struct Running {
    addr: std::net::SocketAddr,
    channel: Channel,
    session: SluiceSession,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), sluice_flight::ServeError>>,
    _dir: tempfile::TempDir,
}

impl Running {
    async fn start(auth: Authorizer) -> Result<Self, Box<dyn std::error::Error>> {
        Self::start_with_cache(auth, sluice_engine::DEFAULT_CACHE_BYTES).await
    }

    /// A server whose engine keeps `cache_bytes` of sealed segments in memory.
    async fn start_with_cache(
        auth: Authorizer,
        cache_bytes: usize,
    ) -> Result<Self, Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let engine = Engine::open(EngineOptions::new(dir.path()).with_cache_bytes(cache_bytes))?;
        let session = SluiceSession::new(engine)?;
        let server = BoundServer::bind(
            session.clone(),
            ServerOptions {
                addr: "127.0.0.1:0".parse()?,
                auth,
                tls: None,
            },
        )
        .await?;
        let addr = server.local_addr()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(server.serve(async move {
            let _ = stopped.await;
        }));
        let channel = Channel::from_shared(format!("http://{addr}"))?
            .connect()
            .await?;
        Ok(Self {
            addr,
            channel,
            session,
            stop: Some(stop),
            task,
            _dir: dir,
        })
    }

    fn sql(&self) -> FlightSqlServiceClient<Channel> {
        let mut client = FlightSqlServiceClient::new(self.channel.clone());
        client.set_token(TOKEN.to_string());
        client
    }

    async fn stop(mut self) -> TestResult {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(10), self.task).await???;
        self.session.shutdown().await;
        Ok(())
    }
}

async fn fetch(
    client: &mut FlightSqlServiceClient<Channel>,
    info: FlightInfo,
) -> Result<Vec<RecordBatch>, Box<dyn std::error::Error>> {
    let mut batches = Vec::new();
    for endpoint in info.endpoint {
        let ticket = endpoint.ticket.ok_or("endpoint without a ticket")?;
        batches.extend(client.do_get(ticket).await?.try_collect::<Vec<_>>().await?);
    }
    Ok(batches)
}

async fn query(
    client: &mut FlightSqlServiceClient<Channel>,
    sql: &str,
) -> Result<Vec<RecordBatch>, Box<dyn std::error::Error>> {
    let info = client.execute(sql.to_string(), None).await?;
    fetch(client, info).await
}

fn int_column(batches: &[RecordBatch], name: &str) -> Vec<i64> {
    batches
        .iter()
        .flat_map(|b| {
            let column = b.column_by_name(name).map(|c| {
                arrow::compute::cast(c, &DataType::Int64)
                    .map(|c| c.as_primitive::<Int64Type>().values().to_vec())
            });
            column.and_then(Result::ok).unwrap_or_default()
        })
        .collect()
}

fn string_column(batches: &[RecordBatch], name: &str) -> Vec<String> {
    batches
        .iter()
        .filter_map(|b| b.column_by_name(name))
        .flat_map(|c| c.as_string::<i32>().iter().flatten().map(String::from))
        .collect()
}

fn status_of(error: arrow_flight::error::FlightError) -> tonic::Status {
    match error {
        arrow_flight::error::FlightError::Tonic(status) => *status,
        other => tonic::Status::unknown(other.to_string()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_metadata_and_prepared_statements() -> TestResult {
    let server = Running::start(Authorizer::open().with_token(TOKEN)).await?;
    let mut client = server.sql();
    let info = client
        .execute(
            "CREATE STREAM orders (id BIGINT, customer VARCHAR) WITH (shards = 2, partition_key = 'customer')"
                .to_string(),
            None,
        )
        .await?;
    assert!(info.endpoint.is_empty(), "DDL has no rows to fetch");
    let written = client
        .execute_update(
            "INSERT INTO orders VALUES (1, 'ada'), (2, 'bob'), (3, 'ada')".to_string(),
            None,
        )
        .await?;
    assert_eq!(written, 3);
    let batches = query(&mut client, "SELECT id FROM orders ORDER BY id").await?;
    assert_eq!(int_column(&batches, "id"), [1, 2, 3]);

    // Streams are tables, with their Arrow schemas.
    let info = client
        .get_tables(CommandGetTables {
            catalog: Some("sluice".into()),
            db_schema_filter_pattern: Some("public".into()),
            table_name_filter_pattern: Some("ord%".into()),
            table_types: vec![],
            include_schema: true,
        })
        .await?;
    let tables = fetch(&mut client, info).await?;
    let names = string_column(&tables, "table_name");
    assert_eq!(names, ["orders"]);
    let schema_bytes = tables[0]
        .column_by_name("table_schema")
        .ok_or("no table_schema")?
        .as_binary::<i32>()
        .value(0)
        .to_vec();
    let schema = arrow::ipc::convert::try_schema_from_ipc_buffer(&schema_bytes)?;
    assert_eq!(schema.field(0).name(), "id");
    assert_eq!(schema.field(0).data_type(), &DataType::Int64);
    // Strings as plain Utf8 (the Flight SQL JDBC driver refuses Utf8View), here and in results.
    assert_eq!(
        schema.field_with_name("customer")?.data_type(),
        &DataType::Utf8
    );
    let info = client
        .execute("SELECT customer FROM orders".into(), None)
        .await?;
    assert_eq!(
        info.clone().try_decode_schema()?.field(0).data_type(),
        &DataType::Utf8
    );
    let customers = fetch(&mut client, info).await?;
    assert_eq!(customers[0].schema().field(0).data_type(), &DataType::Utf8);

    // The SQL types database tools ask for when they connect (JDBC getTypeInfo).
    let info = client
        .get_xdbc_type_info(arrow_flight::sql::CommandGetXdbcTypeInfo { data_type: None })
        .await?;
    let types = fetch(&mut client, info).await?;
    let type_names = string_column(&types, "type_name");
    for name in ["BIGINT", "VARCHAR", "TIMESTAMP", "DECIMAL"] {
        assert!(
            type_names.iter().any(|n| n == name),
            "{name} in {type_names:?}"
        );
    }

    // A prepared statement with a parameter, bound twice.
    let mut prepared = client
        .prepare(
            "SELECT id FROM orders WHERE customer = $1 ORDER BY id".into(),
            None,
        )
        .await?;
    assert_eq!(prepared.parameter_schema()?.fields().len(), 1);
    for (customer, expected) in [("ada", vec![1, 3]), ("bob", vec![2])] {
        let parameters = RecordBatch::try_new(
            Arc::new(Schema::new(vec![Field::new("$1", DataType::Utf8, true)])),
            vec![Arc::new(StringArray::from(vec![customer]))],
        )?;
        prepared.set_parameters(parameters)?;
        let info = prepared.execute().await?;
        assert_eq!(int_column(&fetch(&mut client, info).await?, "id"), expected);
    }
    prepared.close().await?;

    // Bad SQL is InvalidArgument with the parser's words; an unknown stream is NotFound.
    let bad = status_of(
        client
            .execute("SELEKT 1".into(), None)
            .await
            .err()
            .ok_or("accepted")?,
    );
    assert_eq!(bad.code(), Code::InvalidArgument, "{bad:?}");
    assert!(
        bad.message().contains(
            "syntax error at line 1, column 1: Expected: an SQL statement, found: SELEKT"
        ),
        "{bad:?}"
    );
    let missing = status_of(
        client
            .execute("DROP STREAM nowhere".into(), None)
            .await
            .err()
            .ok_or("accepted")?,
    );
    assert_eq!(missing.code(), Code::NotFound, "{missing:?}");
    assert!(missing.message().contains("'nowhere'"), "{missing:?}");
    server.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn do_put_subscriptions_and_cancellation() -> TestResult {
    let server = Running::start(Authorizer::open().with_token(TOKEN)).await?;
    let mut sql = server.sql();
    sql.execute(
        "CREATE STREAM m (device VARCHAR, v BIGINT) WITH (shards = 3, partition_key = 'device')"
            .into(),
        None,
    )
    .await?;
    let mut flight = FlightServiceClient::new(server.channel.clone());
    let authorized = |ticket: Ticket| {
        let mut request = tonic::Request::new(ticket);
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {TOKEN}").parse().expect("header"),
        );
        request
    };

    // A subscription from now on, started before anything is written.
    let ticket = Ticket::new(r#"{"stream": "m", "from": "latest"}"#);
    let response = flight.do_get(authorized(ticket)).await?;
    let mut subscription = FlightRecordBatchStream::new_from_flight_data(
        response
            .into_inner()
            .map_err(arrow_flight::error::FlightError::from),
    );
    let stream = server.session.engine().stream("m")?;
    let before = stream.followers();

    // DoPut: Arrow batches straight in, routed by the partition key column.
    let batch = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("device", DataType::Utf8, false),
            Field::new("v", DataType::Int64, false),
        ])),
        vec![
            Arc::new(StringArray::from(vec!["a", "b", "c", "d"])),
            Arc::new(Int64Array::from(vec![10, 20, 30, 40])),
        ],
    )?;
    let data = FlightDataEncoderBuilder::new()
        .with_flight_descriptor(Some(FlightDescriptor::new_path(vec!["m".into()])))
        .build(futures::stream::iter([Ok(batch.clone())]))
        .map(|d| d.expect("encoded"));
    let mut put = tonic::Request::new(data);
    put.metadata_mut()
        .insert("authorization", format!("Bearer {TOKEN}").parse()?);
    let acks: Vec<_> = flight.do_put(put).await?.into_inner().try_collect().await?;
    assert_eq!(acks.len(), 1);
    let shards = query(&mut sql, "SELECT count(DISTINCT _shard_id) AS n FROM m").await?;
    assert!(int_column(&shards, "n")[0] >= 2, "rows spread over shards");

    // The subscriber sees the rows written after it started.
    let mut seen = Vec::new();
    while seen.len() < 4 {
        let batch = tokio::time::timeout(Duration::from_secs(10), subscription.next())
            .await?
            .ok_or("subscription ended")??;
        seen.extend(int_column(&[batch], "v"));
    }
    seen.sort();
    assert_eq!(seen, [10, 20, 30, 40]);

    // Bulk ingest creates a stream from the batches' columns.
    let ingested = sql
        .execute_ingest(
            CommandStatementIngest {
                table_definition_options: Some(TableDefinitionOptions {
                    if_not_exist: arrow_flight::sql::TableNotExistOption::Create.into(),
                    if_exists: arrow_flight::sql::TableExistsOption::Fail.into(),
                }),
                table: "copied".into(),
                ..Default::default()
            },
            futures::stream::iter([Ok(batch)]),
        )
        .await?;
    assert_eq!(ingested, 4);
    assert_eq!(
        int_column(
            &query(&mut sql, "SELECT sum(v) AS s FROM copied").await?,
            "s"
        ),
        [100]
    );

    // A DoPut naming a column the stream lacks is refused by name; nothing is appended.
    let wrong = RecordBatch::try_new(
        Arc::new(Schema::new(vec![Field::new(
            "colour",
            DataType::Utf8,
            false,
        )])),
        vec![Arc::new(StringArray::from(vec!["red"]))],
    )?;
    let data = FlightDataEncoderBuilder::new()
        .with_flight_descriptor(Some(FlightDescriptor::new_path(vec!["m".into()])))
        .build(futures::stream::iter([Ok(wrong)]))
        .map(|d| d.expect("encoded"));
    let mut put = tonic::Request::new(data);
    put.metadata_mut()
        .insert("authorization", format!("Bearer {TOKEN}").parse()?);
    let refused = match flight.do_put(put).await {
        Err(status) => status,
        Ok(response) => response
            .into_inner()
            .try_collect::<Vec<_>>()
            .await
            .err()
            .ok_or("a wrong column was accepted")?,
    };
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(refused.message().contains("'colour'"), "{refused:?}");

    // A path descriptor's FlightInfo is the stream's schema and a subscription ticket.
    let mut request = tonic::Request::new(FlightDescriptor::new_path(vec!["m".into()]));
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {TOKEN}").parse()?);
    let info = flight.get_flight_info(request).await?.into_inner();
    let schema = info.clone().try_decode_schema()?;
    assert_eq!(schema.field(0).name(), "device");
    let ticket = info.endpoint[0].ticket.clone().ok_or("no ticket")?;
    assert!(String::from_utf8_lossy(&ticket.ticket).contains(r#""stream":"m""#));

    // Dropping the subscription ends its work on the server.
    assert!(stream.followers() >= before);
    drop(subscription);
    let mut waited = 0;
    while stream.followers() >= before && waited < 100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        waited += 1;
    }
    assert!(
        stream.followers() < before,
        "the subscription still reads the stream after its client went away"
    );
    server.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_are_checked_on_every_call() -> TestResult {
    let server = Running::start(
        Authorizer::open()
            .with_token(TOKEN)
            .with_password("ada", "pw"),
    )
    .await?;
    let mut anonymous = FlightSqlServiceClient::new(server.channel.clone());
    let refused = status_of(
        anonymous
            .execute("SHOW STREAMS".into(), None)
            .await
            .err()
            .ok_or("no credentials accepted")?,
    );
    assert_eq!(refused.code(), Code::Unauthenticated);
    let mut wrong = FlightSqlServiceClient::new(server.channel.clone());
    wrong.set_token("nope".into());
    let refused = status_of(
        wrong
            .execute("SHOW STREAMS".into(), None)
            .await
            .err()
            .ok_or("a wrong token accepted")?,
    );
    assert_eq!(refused.code(), Code::Unauthenticated);
    assert!(refused.message().contains("token"), "{refused:?}");

    // Basic credentials are exchanged for the token.
    let mut basic = FlightSqlServiceClient::new(server.channel.clone());
    assert!(basic.handshake("ada", "wrong").await.is_err());
    let token = basic.handshake("ada", "pw").await?;
    assert_eq!(&token[..], TOKEN.as_bytes());
    let streams = query(&mut basic, "SHOW STREAMS").await?;
    assert!(streams.iter().map(|b| b.num_rows()).sum::<usize>() >= 1);
    server.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_clients_that_trust_the_certificate() -> TestResult {
    use sluice_flight::client::ConnectOptions;
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()])?;
    let cert_pem = certified.cert.pem();
    let key_pem = certified.signing_key.serialize_pem();
    let dir = tempfile::tempdir()?;
    let session = SluiceSession::new(Engine::open(EngineOptions::new(dir.path()))?)?;
    let server = BoundServer::bind(
        session.clone(),
        ServerOptions {
            addr: "127.0.0.1:0".parse()?,
            auth: Authorizer::open().with_token(TOKEN),
            tls: Some((cert_pem.clone().into_bytes(), key_pem.into_bytes())),
        },
    )
    .await?;
    let port = server.local_addr()?.port();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.serve(async move {
        let _ = stopped.await;
    }));

    let remote = sluice_flight::RemoteSession::connect(
        &format!("grpc+tls://localhost:{port}"),
        ConnectOptions {
            token: Some(TOKEN.into()),
            ca_pem: Some(cert_pem.into_bytes()),
            ..ConnectOptions::default()
        },
    )
    .await?;
    match remote.execute("CREATE STREAM secure (v BIGINT)").await? {
        sluice_sql::StatementOutput::Done(note) => assert!(note.contains("'secure'"), "{note}"),
        other => return Err(format!("unexpected {other:?}").into()),
    }
    // Without TLS the server does not answer.
    let plain = sluice_flight::RemoteSession::connect(
        &format!("grpc://127.0.0.1:{port}"),
        ConnectOptions {
            token: Some(TOKEN.into()),
            ..ConnectOptions::default()
        },
    )
    .await;
    let refused = match plain {
        Err(e) => e,
        Ok(plain) => plain
            .execute("SHOW STREAMS")
            .await
            .err()
            .ok_or("plain text accepted by a TLS server")?,
    };
    assert!(!refused.is_empty());
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(10), task).await???;
    session.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_stops_reading_does_not_hold_up_the_others() -> TestResult {
    let server = Running::start(Authorizer::open()).await?;
    let mut sql = FlightSqlServiceClient::new(server.channel.clone());
    sql.execute(
        "CREATE STREAM busy (k VARCHAR, pad VARCHAR) WITH (shards = 2, partition_key = 'k')".into(),
        None,
    )
    .await?;
    // Each subscriber is its own client with its own connection, as separate programs are
    // (HTTP/2 shares one flow-control window among the calls of a connection).
    let addr = server.addr;
    let subscribe = |_: ()| async move {
        let channel = Channel::from_shared(format!("http://{addr}"))
            .map_err(|e| tonic::Status::internal(e.to_string()))?
            .connect()
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        let mut flight = FlightServiceClient::new(channel);
        let response = flight
            .do_get(Ticket::new(r#"{"stream": "busy", "from": "latest"}"#))
            .await?;
        Ok::<_, tonic::Status>(FlightRecordBatchStream::new_from_flight_data(
            response
                .into_inner()
                .map_err(arrow_flight::error::FlightError::from),
        ))
    };
    // One subscriber never reads; another reads everything.
    let _stalled = subscribe(()).await?;
    let mut reader = subscribe(()).await?;
    let rows = 100_000usize;
    let pad = "x".repeat(200);
    for start in (0..rows).step_by(10_000) {
        sql.execute_update(
            format!(
                "INSERT INTO busy SELECT concat('k', CAST(value % 97 AS VARCHAR)), '{pad}' FROM generate_series({start}, {}) AS t(value)",
                start + 9_999
            ),
            None,
        )
        .await?;
    }
    let mut received = 0;
    while received < rows {
        let batch = tokio::time::timeout(Duration::from_secs(30), reader.next())
            .await
            .map_err(|_| format!("the reader got {received} rows, then nothing for 30 s"))?
            .ok_or("subscription ended")??;
        received += batch.num_rows();
    }
    assert_eq!(received, rows);
    server.stop().await
}

/// A scan of segments read back from disk arrives as a few messages of whole segments, each
/// carrying its own rows' strings once. (Rows routed from one client batch to four shards kept
/// the whole batch's strings, and each segment went out as hundreds of small messages that
/// each repeated them.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_results_arrive_in_whole_batches_without_repeated_strings() -> TestResult {
    const ROWS: usize = 40_000;
    const NOTE: usize = 50;
    let server = Running::start_with_cache(Authorizer::open(), 0).await?;
    let mut sql = server.sql();
    sql.execute(
        "CREATE STREAM notes (k VARCHAR, v BIGINT, note VARCHAR) WITH (shards = 4, partition_key = 'k')"
            .into(),
        None,
    )
    .await?;
    let batch = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("k", DataType::Utf8, false),
            Field::new("v", DataType::Int64, false),
            Field::new("note", DataType::Utf8, false),
        ])),
        vec![
            Arc::new(StringArray::from_iter_values(
                (0..ROWS).map(|i| format!("key-{}", i % 100)),
            )),
            Arc::new(Int64Array::from_iter_values(0..ROWS as i64)),
            Arc::new(StringArray::from_iter_values(
                (0..ROWS).map(|i| format!("{i:0NOTE$}")),
            )),
        ],
    )?;
    let mut flight = FlightServiceClient::new(server.channel.clone());
    let data = FlightDataEncoderBuilder::new()
        .with_flight_descriptor(Some(FlightDescriptor::new_path(vec!["notes".into()])))
        .with_max_flight_data_size(usize::MAX)
        .build(futures::stream::iter([Ok(batch)]))
        .map(|d| d.expect("encoded"));
    let acks: Vec<_> = flight
        .do_put(data)
        .await?
        .into_inner()
        .try_collect()
        .await?;
    assert_eq!(acks.len(), 1);
    // Sealed, and with no cache every scan reads the segment files.
    server.session.engine().stream("notes")?.seal(true)?;

    let info = sql
        .execute("SELECT k, v, note FROM notes".into(), None)
        .await?;
    let ticket = info.endpoint[0].ticket.clone().ok_or("no ticket")?;
    let messages: Vec<arrow_flight::FlightData> = flight
        .do_get(ticket)
        .await?
        .into_inner()
        .try_collect()
        .await?;
    let body: usize = messages.iter().map(|m| m.data_body.len()).sum();
    // Views (16 bytes a string), the notes themselves, v; keys are short enough to sit in
    // their views.
    let rows_bytes = ROWS * (16 + 16 + NOTE + 8);
    assert!(
        body < rows_bytes * 5 / 4,
        "{body} bytes sent for {rows_bytes} bytes of rows"
    );
    assert!(
        messages.len() <= 1 + 8,
        "{} messages for 4 segments",
        messages.len()
    );
    let batches: Vec<RecordBatch> = FlightRecordBatchStream::new_from_flight_data(
        futures::stream::iter(messages.into_iter().map(Ok)),
    )
    .try_collect()
    .await?;
    let mut values = int_column(&batches, "v");
    values.sort();
    assert_eq!(values, (0..ROWS as i64).collect::<Vec<_>>());
    for batch in &batches {
        let v = batch
            .column_by_name("v")
            .ok_or("no v")?
            .as_primitive::<Int64Type>();
        let note = arrow::compute::cast(
            batch.column_by_name("note").ok_or("no note")?,
            &DataType::Utf8,
        )?;
        for (v, note) in v.values().iter().zip(note.as_string::<i32>().iter()) {
            assert_eq!(note, Some(format!("{v:0NOTE$}").as_str()));
        }
    }
    server.stop().await
}
