//! Flight SQL over a [`SluiceSession`]: statements, prepared statements with parameters,
//! updates, bulk ingest and the metadata calls that JDBC/ADBC clients make to browse streams as
//! tables.
//!
//! A statement runs when its `FlightInfo` is asked for, so DDL and `INSERT` take effect even if
//! the client never fetches; rows are held (lazily: a bounded query's plan, a continuous query's
//! readers) under a one-time ticket until the client's `DoGet`, and dropped unfetched after
//! [`RESULT_TTL`].

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Array, AsArray, RecordBatch, new_empty_array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, UInt64Type};
use arrow::ipc::writer::IpcWriteOptions;
use arrow_flight::decode::FlightRecordBatchStream;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_server::FlightService;
use arrow_flight::sql::metadata::{SqlInfoData, SqlInfoDataBuilder, XdbcTypeInfoData};
use arrow_flight::sql::server::{FlightSqlService, PeekableFlightDataStream};
use arrow_flight::sql::{
    ActionClosePreparedStatementRequest, ActionCreatePreparedStatementRequest,
    ActionCreatePreparedStatementResult, Any, CommandGetCatalogs, CommandGetCrossReference,
    CommandGetDbSchemas, CommandGetExportedKeys, CommandGetImportedKeys, CommandGetPrimaryKeys,
    CommandGetSqlInfo, CommandGetTableTypes, CommandGetTables, CommandGetXdbcTypeInfo,
    CommandPreparedStatementQuery, CommandPreparedStatementUpdate, CommandStatementIngest,
    CommandStatementQuery, CommandStatementUpdate, DoPutPreparedStatementResult, ProstMessageExt,
    SqlInfo, TicketStatementQuery,
};
use arrow_flight::sql::{TableExistsOption, TableNotExistOption};
use arrow_flight::{
    FlightData, FlightDescriptor, FlightEndpoint, FlightInfo, IpcMessage, PutResult, SchemaAsIpc,
    Ticket, flight_descriptor::DescriptorType,
};
use datafusion::common::ScalarValue;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use futures::{Stream, StreamExt, TryStreamExt};
use parking_lot::Mutex;
use prost::Message;
use sluice_engine::{StreamFormat, StreamSpec};
use sluice_sql::continuous::StreamTail;
use sluice_sql::{SluiceSession, StatementOutput, StreamSink};
use tonic::{Request, Response, Status};

use crate::results::{ResultMessage, ResultMessages, result_messages, wire_schema};
use crate::status::{datafusion_status, engine_status, sql_status};
use crate::ticket::{FlightTicket, StatementKind, TicketRequest};

/// How long rows of an executed statement wait for their `DoGet`.
pub const RESULT_TTL: Duration = Duration::from_secs(300);
/// How long an unused prepared statement is kept.
const PREPARED_TTL: Duration = Duration::from_secs(3600);
/// At most this many executed statements wait for their `DoGet`; beyond it the oldest goes.
const MAX_PENDING: usize = 1024;
type DoGetStream = Pin<Box<dyn Stream<Item = Result<FlightData, Status>> + Send + 'static>>;
type DoPutStream = Pin<Box<dyn Stream<Item = Result<PutResult, Status>> + Send + 'static>>;

struct Pending {
    rows: SendableRecordBatchStream,
    created: Instant,
}

struct Prepared {
    sql: String,
    /// The statement's parameter types, where it determines them.
    types: Vec<Option<DataType>>,
    parameters: Vec<ScalarValue>,
    used: Instant,
}

impl Prepared {
    /// Values bound by a client, as the types the statement expects (a client sends `Utf8`
    /// where DataFusion plans `Utf8View`, an `Int64` where it wants `Int32`).
    fn coerce(&self, values: Vec<ScalarValue>) -> Result<Vec<ScalarValue>, Status> {
        values
            .into_iter()
            .enumerate()
            .map(|(i, value)| match self.types.get(i) {
                Some(Some(wanted)) if &value.data_type() != wanted => {
                    value.cast_to(wanted).map_err(|e| {
                        Status::invalid_argument(format!(
                            "parameter ${} is {}, which cannot be used as {wanted}: {e}",
                            i + 1,
                            value.data_type()
                        ))
                    })
                }
                _ => Ok(value),
            })
            .collect()
    }
}

/// The type a client is told to send for a parameter: the classic string and binary types
/// rather than views, which not every client can build.
fn client_type(data_type: Option<&DataType>) -> DataType {
    match data_type {
        Some(DataType::Utf8View) => DataType::Utf8,
        Some(DataType::BinaryView) => DataType::Binary,
        Some(other) => other.clone(),
        None => DataType::Null,
    }
}

/// The Flight SQL service.
pub struct SqlService {
    session: SluiceSession,
    results: Mutex<HashMap<String, Pending>>,
    prepared: Mutex<HashMap<String, Prepared>>,
    sql_info: SqlInfoData,
    xdbc_types: XdbcTypeInfoData,
    /// Set when the server shuts down: endless results end then.
    closing: tokio::sync::watch::Sender<bool>,
}

impl std::fmt::Debug for SqlService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlService")
            .field("pending", &self.results.lock().len())
            .field("prepared", &self.prepared.lock().len())
            .finish()
    }
}

impl SqlService {
    pub fn new(session: SluiceSession) -> Result<Self, Status> {
        Ok(Self {
            session,
            results: Mutex::new(HashMap::new()),
            prepared: Mutex::new(HashMap::new()),
            sql_info: sql_info()?,
            xdbc_types: crate::xdbc::type_info()?,
            closing: tokio::sync::watch::Sender::new(false),
        })
    }

    /// Ends every result still streaming (subscriptions, continuous queries): the server is
    /// shutting down.
    pub fn close(&self) {
        self.closing.send_replace(true);
    }

    pub fn session(&self) -> &SluiceSession {
        &self.session
    }

    /// Holds `rows` for a `DoGet` and returns the ticket that fetches them.
    fn hold(&self, rows: SendableRecordBatchStream) -> Ticket {
        let handle = uuid::Uuid::new_v4().to_string();
        let mut results = self.results.lock();
        let now = Instant::now();
        results.retain(|_, p| now.duration_since(p.created) < RESULT_TTL);
        if results.len() >= MAX_PENDING
            && let Some(oldest) = results
                .iter()
                .min_by_key(|(_, p)| p.created)
                .map(|(k, _)| k.clone())
        {
            results.remove(&oldest);
        }
        results.insert(handle.clone(), Pending { rows, created: now });
        let ticket = TicketStatementQuery {
            statement_handle: handle.into_bytes().into(),
        };
        Ticket::new(ticket.as_any().encode_to_vec())
    }

    /// The `FlightInfo` of an executed statement.
    fn info_for(
        &self,
        output: StatementOutput,
        descriptor: FlightDescriptor,
    ) -> Result<Response<FlightInfo>, Status> {
        let (schema, endpoint, kind) = match output {
            StatementOutput::Rows(rows) => {
                (rows.schema(), Some(self.hold(rows)), StatementKind::Rows)
            }
            StatementOutput::Continuous(rows) => (
                rows.schema(),
                Some(self.hold(rows)),
                StatementKind::Continuous,
            ),
            StatementOutput::Done(note) => (
                Arc::new(Schema::empty()),
                None,
                StatementKind::Done { note },
            ),
        };
        let mut info = FlightInfo::new()
            .try_with_schema(&wire_schema(&schema))
            .map_err(|e| Status::internal(format!("cannot encode the result schema: {e}")))?
            .with_descriptor(descriptor)
            .with_app_metadata(kind.encode());
        if let Some(ticket) = endpoint {
            info = info.with_endpoint(FlightEndpoint::new().with_ticket(ticket));
        }
        if kind == StatementKind::Continuous {
            info = info.with_total_records(-1);
        }
        Ok(Response::new(info))
    }

    /// The messages a `DoGet` of `ticket` answers with, when it is a query's or a
    /// subscription's (a plain JSON ticket or a Flight SQL statement's); `None` for the other
    /// Flight SQL tickets (metadata).
    pub async fn result_messages(&self, ticket: &[u8]) -> Result<Option<ResultMessages>, Status> {
        let rows = if FlightTicket::is_plain(ticket) {
            self.plain_rows(ticket).await?
        } else if let Some(statement) = Any::decode(ticket)
            .ok()
            .and_then(|any| any.unpack::<TicketStatementQuery>().ok().flatten())
        {
            self.take_result(&statement.statement_handle)?
        } else {
            return Ok(None);
        };
        Ok(Some(result_messages(rows, self.closing.subscribe())))
    }

    /// The rows of a plain ticket's statement or subscription.
    async fn plain_rows(&self, ticket: &[u8]) -> Result<SendableRecordBatchStream, Status> {
        Ok(match FlightTicket::parse(ticket)? {
            TicketRequest::Query(sql) => match self.session.execute(&sql).await {
                Ok(StatementOutput::Rows(rows) | StatementOutput::Continuous(rows)) => rows,
                Ok(StatementOutput::Done(note)) => {
                    // A statement without rows answers with its note as one row.
                    let schema = Arc::new(Schema::new(vec![Field::new(
                        "result",
                        DataType::Utf8,
                        false,
                    )]));
                    let batch = RecordBatch::try_new(
                        Arc::clone(&schema),
                        vec![Arc::new(arrow::array::StringArray::from(vec![note]))],
                    )
                    .map_err(|e| Status::internal(e.to_string()))?;
                    Box::pin(RecordBatchStreamAdapter::new(
                        schema,
                        futures::stream::iter([Ok(batch)]),
                    ))
                }
                Err(e) => return Err(sql_status(e)),
            },
            TicketRequest::Subscribe { stream, from } => {
                let stream = self
                    .session
                    .engine()
                    .stream(&stream)
                    .map_err(engine_status)?;
                StreamTail::subscribe(stream, from).map_err(engine_status)?
            }
        })
    }

    /// The held rows of an executed statement, taken: a ticket fetches once.
    fn take_result(&self, handle: &[u8]) -> Result<SendableRecordBatchStream, Status> {
        let handle = String::from_utf8_lossy(handle).to_string();
        let pending = self.results.lock().remove(&handle).ok_or_else(|| {
            Status::not_found(format!(
                "no result for ticket '{handle}': it was fetched already or waited longer than {} s",
                RESULT_TTL.as_secs()
            ))
        })?;
        Ok(pending.rows)
    }

    /// Appends the batches of a `DoPut` to `stream`, answering each with the running count.
    async fn ingest(
        &self,
        stream_name: &str,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<Response<DoPutStream>, Status> {
        let stream = self
            .session
            .engine()
            .stream(stream_name)
            .map_err(engine_status)?;
        let sink = StreamSink::new(Arc::clone(&stream));
        let mut batches = record_batches(request);
        let mut results = Vec::new();
        let mut total = 0u64;
        while let Some(batch) = batches.next().await {
            let batch = batch?;
            let aligned = align(&batch, stream.public_schema(), stream_name)?;
            total += sink
                .append_batch(&aligned)
                .await
                .map_err(datafusion_status)?;
            results.push(Ok(PutResult {
                app_metadata: serde_json::to_vec(&serde_json::json!({ "records": total }))
                    .unwrap_or_default()
                    .into(),
            }));
        }
        Ok(Response::new(Box::pin(futures::stream::iter(results))))
    }

    /// Runs a statement that changes things and returns how many rows it wrote (-1 when it
    /// writes none that count).
    async fn update(&self, output: StatementOutput) -> Result<i64, Status> {
        match output {
            StatementOutput::Done(_) => Ok(-1),
            StatementOutput::Continuous(_) => Err(Status::invalid_argument(
                "SELECT STREAM returns rows without end; run it as a query, not an update",
            )),
            StatementOutput::Rows(rows) => {
                let schema = rows.schema();
                let batches = datafusion::physical_plan::common::collect(rows)
                    .await
                    .map_err(datafusion_status)?;
                let is_count = schema.fields().len() == 1
                    && schema.field(0).name() == "count"
                    && schema.field(0).data_type() == &DataType::UInt64;
                if is_count {
                    Ok(batches
                        .iter()
                        .flat_map(|b| b.column(0).as_primitive::<UInt64Type>().values().to_vec())
                        .sum::<u64>() as i64)
                } else {
                    Ok(batches.iter().map(|b| b.num_rows() as i64).sum())
                }
            }
        }
    }

    /// A prepared statement's SQL and bound values; with `rows`, those rows' values instead,
    /// one set per row.
    fn prepared_sql(
        &self,
        handle: &[u8],
        rows: Option<&[RecordBatch]>,
    ) -> Result<(String, Vec<Vec<ScalarValue>>), Status> {
        let handle = String::from_utf8_lossy(handle).to_string();
        let mut prepared = self.prepared.lock();
        let entry = prepared.get_mut(&handle).ok_or_else(|| {
            Status::not_found(format!(
                "prepared statement '{handle}' does not exist (closed, or unused for an hour)"
            ))
        })?;
        entry.used = Instant::now();
        let sets = match rows {
            Some(batches) => {
                let count: usize = batches.iter().map(|b| b.num_rows()).sum();
                (0..count)
                    .map(|row| entry.coerce(parameter_row(batches, row)?))
                    .collect::<Result<Vec<_>, Status>>()?
            }
            None => vec![entry.parameters.clone()],
        };
        Ok((entry.sql.clone(), sets))
    }
}

/// The record batches of a `DoPut`.
fn record_batches(
    request: Request<PeekableFlightDataStream>,
) -> impl Stream<Item = Result<RecordBatch, Status>> {
    let data = request.into_inner().map_err(FlightError::from);
    FlightRecordBatchStream::new_from_flight_data(data).map_err(Status::from)
}

/// `batch`'s columns in `schema`'s order, by name, cast to the stream's types; columns the
/// batch lacks are NULL. A column the stream does not have is refused by name.
fn align(batch: &RecordBatch, schema: &SchemaRef, stream: &str) -> Result<RecordBatch, Status> {
    let given = batch.schema();
    for field in given.fields() {
        if schema.field_with_name(field.name()).is_err() {
            let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
            return Err(Status::invalid_argument(format!(
                "stream '{stream}' has no column '{}' (its columns: {})",
                field.name(),
                names.join(", ")
            )));
        }
    }
    let columns = schema
        .fields()
        .iter()
        .map(|field| match batch.column_by_name(field.name()) {
            Some(column) if column.data_type() == field.data_type() => Ok(Arc::clone(column)),
            Some(column) => arrow::compute::cast(column, field.data_type()).map_err(|e| {
                Status::invalid_argument(format!(
                    "column '{}' of stream '{stream}' is {}; the {} sent cannot be cast: {e}",
                    field.name(),
                    field.data_type(),
                    column.data_type()
                ))
            }),
            None => Ok(arrow::array::new_null_array(
                field.data_type(),
                batch.num_rows(),
            )),
        })
        .collect::<Result<Vec<_>, Status>>()?;
    // The public schema marks system columns NOT NULL; a batch leaves them to Sluice.
    let relaxed = Arc::new(Schema::new(
        schema
            .fields()
            .iter()
            .map(|f| f.as_ref().clone().with_nullable(true))
            .collect::<Vec<_>>(),
    ));
    RecordBatch::try_new(relaxed, columns).map_err(|e| Status::invalid_argument(e.to_string()))
}

fn encode_schema(schema: &Schema) -> Result<bytes::Bytes, Status> {
    let IpcMessage(bytes) = SchemaAsIpc::new(schema, &IpcWriteOptions::default())
        .try_into()
        .map_err(|e: arrow::error::ArrowError| Status::internal(e.to_string()))?;
    Ok(bytes)
}

fn sql_info() -> Result<SqlInfoData, Status> {
    let mut builder = SqlInfoDataBuilder::new();
    builder.append(SqlInfo::FlightSqlServerName, "Sluice");
    builder.append(SqlInfo::FlightSqlServerVersion, env!("CARGO_PKG_VERSION"));
    // The Arrow columnar format version (Schema.fbs).
    builder.append(SqlInfo::FlightSqlServerArrowVersion, "1.3");
    builder.append(SqlInfo::FlightSqlServerReadOnly, false);
    builder.append(SqlInfo::FlightSqlServerSql, true);
    builder.append(SqlInfo::FlightSqlServerSubstrait, false);
    builder.append(SqlInfo::FlightSqlServerTransaction, 0i32);
    builder.append(SqlInfo::FlightSqlServerCancel, false);
    builder.append(SqlInfo::FlightSqlServerBulkIngestion, true);
    builder.append(SqlInfo::SqlDdlCatalog, false);
    builder.append(SqlInfo::SqlDdlSchema, false);
    builder.append(SqlInfo::SqlDdlTable, true);
    builder.append(SqlInfo::SqlIdentifierQuoteChar, "\"");
    builder.append(SqlInfo::SqlTransactionsSupported, false);
    builder
        .build()
        .map_err(|e| Status::internal(format!("SQL info: {e}")))
}

/// A ticket that is the metadata command itself.
fn command_info(
    command: impl ProstMessageExt,
    schema: &Schema,
    descriptor: FlightDescriptor,
) -> Result<Response<FlightInfo>, Status> {
    let ticket = Ticket::new(command.as_any().encode_to_vec());
    let info = FlightInfo::new()
        .try_with_schema(schema)
        .map_err(|e| Status::internal(e.to_string()))?
        .with_endpoint(FlightEndpoint::new().with_ticket(ticket))
        .with_descriptor(descriptor);
    Ok(Response::new(info))
}

fn one_batch<E: Into<FlightError>>(
    schema: SchemaRef,
    batch: Result<RecordBatch, E>,
) -> DoGetStream {
    let batch = batch.map_err(Into::into);
    let data = FlightDataEncoderBuilder::new()
        .with_schema(schema)
        .build(futures::stream::once(async move { batch }))
        .map_err(Status::from);
    Box::pin(data)
}

/// The columns Flight SQL defines for primary keys.
fn primary_keys_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("catalog_name", DataType::Utf8, true),
        Field::new("db_schema_name", DataType::Utf8, true),
        Field::new("table_name", DataType::Utf8, false),
        Field::new("column_name", DataType::Utf8, false),
        Field::new("key_name", DataType::Utf8, true),
        Field::new("key_sequence", DataType::Int32, false),
    ]))
}

/// The columns Flight SQL defines for foreign keys (exported, imported, cross reference).
fn foreign_keys_schema() -> SchemaRef {
    let text = |name: &str, nullable| Field::new(name, DataType::Utf8, nullable);
    Arc::new(Schema::new(vec![
        text("pk_catalog_name", true),
        text("pk_db_schema_name", true),
        text("pk_table_name", false),
        text("pk_column_name", false),
        text("fk_catalog_name", true),
        text("fk_db_schema_name", true),
        text("fk_table_name", false),
        text("fk_column_name", false),
        Field::new("key_sequence", DataType::Int32, false),
        text("fk_key_name", true),
        text("pk_key_name", true),
        Field::new("update_rule", DataType::UInt8, false),
        Field::new("delete_rule", DataType::UInt8, false),
    ]))
}

/// Streams have no keys: an empty answer in the shape clients expect.
fn no_rows(schema: SchemaRef) -> DoGetStream {
    let columns = schema
        .fields()
        .iter()
        .map(|f| new_empty_array(f.data_type()))
        .collect();
    one_batch(Arc::clone(&schema), RecordBatch::try_new(schema, columns))
}

/// How a table shows in `GetTables`: streams and tables are `TABLE`.
fn table_type_name(table_type: datafusion::logical_expr::TableType) -> &'static str {
    match table_type {
        datafusion::logical_expr::TableType::Base => "TABLE",
        datafusion::logical_expr::TableType::View => "VIEW",
        datafusion::logical_expr::TableType::Temporary => "LOCAL TEMPORARY",
    }
}

/// The first row of a parameter batch, one value per column.
fn parameter_row(batches: &[RecordBatch], row: usize) -> Result<Vec<ScalarValue>, Status> {
    let mut offset = row;
    for batch in batches {
        if offset < batch.num_rows() {
            return batch
                .columns()
                .iter()
                .map(|c| {
                    ScalarValue::try_from_array(c, offset)
                        .map_err(|e| Status::invalid_argument(format!("parameter: {e}")))
                })
                .collect();
        }
        offset -= batch.num_rows();
    }
    Ok(vec![])
}

#[tonic::async_trait]
impl FlightSqlService for SqlService {
    type FlightService = SqlService;

    async fn get_flight_info_statement(
        &self,
        query: CommandStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let output = self
            .session
            .execute(&query.query)
            .await
            .map_err(sql_status)?;
        self.info_for(output, request.into_inner())
    }

    async fn get_flight_info_prepared_statement(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let (sql, mut sets) = self.prepared_sql(&query.prepared_statement_handle, None)?;
        let parameters = sets.pop().unwrap_or_default();
        let output = self
            .session
            .execute_with_parameters(&sql, parameters)
            .await
            .map_err(sql_status)?;
        self.info_for(output, request.into_inner())
    }

    async fn do_get_statement(
        &self,
        ticket: TicketStatementQuery,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        // `SluiceFlight` answers statement tickets through `result_messages` before the
        // Flight SQL dispatch; this serves callers of `SqlService` on its own.
        let rows = self.take_result(&ticket.statement_handle)?;
        let messages = result_messages(rows, self.closing.subscribe());
        Ok(Response::new(Box::pin(
            messages.map_ok(ResultMessage::into_flight_data),
        )))
    }

    async fn do_get_fallback(
        &self,
        _request: Request<Ticket>,
        message: Any,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        Err(Status::invalid_argument(format!(
            "unknown ticket type '{}'; plain Flight tickets are JSON: {{\"query\": \"SQL\"}} or {{\"stream\": \"name\", \"from\": \"latest\"}}",
            message.type_url
        )))
    }

    async fn get_flight_info_fallback(
        &self,
        _command: arrow_flight::sql::Command,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        // A path descriptor names a stream: its info is a subscription from now on.
        let descriptor = request.into_inner();
        if descriptor.r#type() != DescriptorType::Path || descriptor.path.len() != 1 {
            return Err(Status::invalid_argument(
                "unknown descriptor: send a Flight SQL command or a path naming one stream",
            ));
        }
        let name = &descriptor.path[0];
        let stream = self.session.engine().stream(name).map_err(engine_status)?;
        let ticket = serde_json::to_vec(&FlightTicket {
            query: None,
            stream: Some(name.clone()),
            from: Some("latest".into()),
        })
        .map_err(|e| Status::internal(e.to_string()))?;
        let info = FlightInfo::new()
            .try_with_schema(&wire_schema(stream.public_schema()))
            .map_err(|e| Status::internal(e.to_string()))?
            .with_endpoint(FlightEndpoint::new().with_ticket(Ticket::new(ticket)))
            .with_descriptor(descriptor)
            .with_total_records(-1);
        Ok(Response::new(info))
    }

    async fn do_put_fallback(
        &self,
        mut request: Request<PeekableFlightDataStream>,
        _message: Any,
    ) -> Result<Response<<Self as FlightService>::DoPutStream>, Status> {
        let descriptor = match request.get_mut().peek().await {
            Some(Ok(first)) => first.flight_descriptor.clone(),
            Some(Err(e)) => return Err(e.clone()),
            None => None,
        };
        match descriptor {
            Some(d) if d.r#type() == DescriptorType::Path && d.path.len() == 1 => {
                let name = d.path[0].clone();
                self.ingest(&name, request).await
            }
            _ => Err(Status::invalid_argument(
                "DoPut needs a path descriptor naming the stream to append to, e.g. FlightDescriptor.for_path('clicks')",
            )),
        }
    }

    async fn do_put_statement_update(
        &self,
        command: CommandStatementUpdate,
        _request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        let output = self
            .session
            .execute(&command.query)
            .await
            .map_err(sql_status)?;
        self.update(output).await
    }

    async fn do_put_statement_ingest(
        &self,
        command: CommandStatementIngest,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        let table = command.table.clone();
        if command.temporary {
            return Err(Status::invalid_argument(
                "bulk ingest into a temporary table is not supported: streams are durable",
            ));
        }
        let options = command.table_definition_options.unwrap_or_default();
        let engine = self.session.engine().clone();
        let exists = engine.try_stream(&table).is_some();
        let mut batches = Box::pin(record_batches(request));
        let replace = options.if_exists() == TableExistsOption::Replace;
        if exists && options.if_exists() == TableExistsOption::Fail {
            return Err(Status::already_exists(format!(
                "stream '{table}' already exists; ingest with mode 'append' to add to it"
            )));
        }
        if !exists && options.if_not_exist() != TableNotExistOption::Create {
            return Err(Status::not_found(format!(
                "stream '{table}' does not exist; ingest with mode 'create' or 'create_append' to create it"
            )));
        }
        let mut total = 0i64;
        let mut sink: Option<(StreamSink, Arc<sluice_engine::Stream>)> = None;
        while let Some(batch) = batches.next().await {
            let batch = batch?;
            if sink.is_none() {
                if !exists || replace {
                    // A new stream with the batch's columns, JSON records, one shard.
                    let spec =
                        StreamSpec::with_columns(&table, 1, StreamFormat::Json, batch.schema());
                    let engine = engine.clone();
                    let name = table.clone();
                    tokio::task::spawn_blocking(move || {
                        if replace && engine.try_stream(&name).is_some() {
                            engine.drop_stream(&name, true)?;
                        }
                        engine.create_stream(spec, false)
                    })
                    .await
                    .map_err(|e| Status::internal(e.to_string()))?
                    .map_err(engine_status)?;
                }
                let stream = engine.stream(&table).map_err(engine_status)?;
                sink = Some((StreamSink::new(Arc::clone(&stream)), stream));
            }
            let Some((sink, stream)) = &sink else {
                continue;
            };
            let aligned = align(&batch, stream.public_schema(), &table)?;
            total += sink
                .append_batch(&aligned)
                .await
                .map_err(datafusion_status)? as i64;
        }
        Ok(total)
    }

    async fn do_put_prepared_statement_query(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<DoPutPreparedStatementResult, Status> {
        let batches: Vec<RecordBatch> = record_batches(request).try_collect().await?;
        let values = parameter_row(&batches, 0)?;
        let handle = String::from_utf8_lossy(&query.prepared_statement_handle).to_string();
        let mut prepared = self.prepared.lock();
        let entry = prepared.get_mut(&handle).ok_or_else(|| {
            Status::not_found(format!("prepared statement '{handle}' does not exist"))
        })?;
        entry.parameters = entry.coerce(values)?;
        entry.used = Instant::now();
        Ok(DoPutPreparedStatementResult {
            prepared_statement_handle: Some(query.prepared_statement_handle),
        })
    }

    async fn do_put_prepared_statement_update(
        &self,
        query: CommandPreparedStatementUpdate,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        let batches: Vec<RecordBatch> = record_batches(request).try_collect().await?;
        let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
        let bound = (rows > 0).then_some(batches.as_slice());
        let (sql, sets) = self.prepared_sql(&query.prepared_statement_handle, bound)?;
        if sets.len() == 1 {
            let output = self
                .session
                .execute_with_parameters(&sql, sets.into_iter().flatten().collect())
                .await
                .map_err(sql_status)?;
            return self.update(output).await;
        }
        // One execution per row of parameters, as JDBC's executeBatch.
        let mut total = 0i64;
        for values in sets {
            let output = self
                .session
                .execute_with_parameters(&sql, values)
                .await
                .map_err(sql_status)?;
            total += self.update(output).await?.max(0);
        }
        Ok(total)
    }

    async fn do_action_create_prepared_statement(
        &self,
        query: ActionCreatePreparedStatementRequest,
        _request: Request<arrow_flight::Action>,
    ) -> Result<ActionCreatePreparedStatementResult, Status> {
        let shape = self
            .session
            .describe_statement(&query.query)
            .await
            .map_err(sql_status)?;
        let parameters = Schema::new(
            shape
                .parameters
                .iter()
                .enumerate()
                .map(|(i, t)| Field::new(format!("${}", i + 1), client_type(t.as_ref()), true))
                .collect::<Vec<_>>(),
        );
        let handle = uuid::Uuid::new_v4().to_string();
        {
            let mut prepared = self.prepared.lock();
            let now = Instant::now();
            prepared.retain(|_, p| now.duration_since(p.used) < PREPARED_TTL);
            prepared.insert(
                handle.clone(),
                Prepared {
                    sql: query.query,
                    types: shape.parameters.clone(),
                    parameters: vec![],
                    used: now,
                },
            );
        }
        Ok(ActionCreatePreparedStatementResult {
            prepared_statement_handle: handle.into_bytes().into(),
            dataset_schema: encode_schema(&wire_schema(&shape.schema))?,
            parameter_schema: encode_schema(&wire_schema(&parameters))?,
        })
    }

    async fn do_action_close_prepared_statement(
        &self,
        query: ActionClosePreparedStatementRequest,
        _request: Request<arrow_flight::Action>,
    ) -> Result<(), Status> {
        let handle = String::from_utf8_lossy(&query.prepared_statement_handle).to_string();
        self.prepared.lock().remove(&handle);
        Ok(())
    }

    async fn get_flight_info_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.into_builder().schema();
        command_info(query, &schema, request.into_inner())
    }

    async fn do_get_catalogs(
        &self,
        query: CommandGetCatalogs,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let mut builder = query.into_builder();
        for catalog in self.session.context().catalog_names() {
            builder.append(catalog);
        }
        Ok(Response::new(one_batch(builder.schema(), builder.build())))
    }

    async fn get_flight_info_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder().schema();
        command_info(query, &schema, request.into_inner())
    }

    async fn do_get_schemas(
        &self,
        query: CommandGetDbSchemas,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let mut builder = query.into_builder();
        let context = self.session.context();
        for catalog_name in context.catalog_names() {
            if let Some(catalog) = context.catalog(&catalog_name) {
                for schema in catalog.schema_names() {
                    builder.append(&catalog_name, schema);
                }
            }
        }
        Ok(Response::new(one_batch(builder.schema(), builder.build())))
    }

    async fn get_flight_info_tables(
        &self,
        query: CommandGetTables,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder().schema();
        command_info(query, &schema, request.into_inner())
    }

    async fn do_get_tables(
        &self,
        query: CommandGetTables,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let mut builder = query.into_builder();
        let context = self.session.context();
        for catalog_name in context.catalog_names() {
            let Some(catalog) = context.catalog(&catalog_name) else {
                continue;
            };
            for schema_name in catalog.schema_names() {
                let Some(schema) = catalog.schema(&schema_name) else {
                    continue;
                };
                let mut names = schema.table_names();
                names.sort();
                for name in names {
                    let Ok(Some(table)) = schema.table(&name).await else {
                        continue;
                    };
                    builder
                        .append(
                            &catalog_name,
                            &schema_name,
                            &name,
                            table_type_name(table.table_type()),
                            wire_schema(&table.schema()).as_ref(),
                        )
                        .map_err(|e| Status::internal(e.to_string()))?;
                }
            }
        }
        Ok(Response::new(one_batch(builder.schema(), builder.build())))
    }

    async fn get_flight_info_table_types(
        &self,
        query: CommandGetTableTypes,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.into_builder().schema();
        command_info(query, &schema, request.into_inner())
    }

    async fn do_get_table_types(
        &self,
        query: CommandGetTableTypes,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let mut builder = query.into_builder();
        for table_type in ["LOCAL TEMPORARY", "TABLE", "VIEW"] {
            builder.append(table_type);
        }
        Ok(Response::new(one_batch(builder.schema(), builder.build())))
    }

    async fn get_flight_info_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder(&self.sql_info).schema();
        command_info(query, &schema, request.into_inner())
    }

    async fn do_get_sql_info(
        &self,
        query: CommandGetSqlInfo,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let builder = query.into_builder(&self.sql_info);
        Ok(Response::new(one_batch(builder.schema(), builder.build())))
    }

    async fn get_flight_info_primary_keys(
        &self,
        query: CommandGetPrimaryKeys,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        command_info(query, &primary_keys_schema(), request.into_inner())
    }

    async fn do_get_primary_keys(
        &self,
        _query: CommandGetPrimaryKeys,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        Ok(Response::new(no_rows(primary_keys_schema())))
    }

    async fn get_flight_info_exported_keys(
        &self,
        query: CommandGetExportedKeys,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        command_info(query, &foreign_keys_schema(), request.into_inner())
    }

    async fn do_get_exported_keys(
        &self,
        _query: CommandGetExportedKeys,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        Ok(Response::new(no_rows(foreign_keys_schema())))
    }

    async fn get_flight_info_imported_keys(
        &self,
        query: CommandGetImportedKeys,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        command_info(query, &foreign_keys_schema(), request.into_inner())
    }

    async fn do_get_imported_keys(
        &self,
        _query: CommandGetImportedKeys,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        Ok(Response::new(no_rows(foreign_keys_schema())))
    }

    async fn get_flight_info_cross_reference(
        &self,
        query: CommandGetCrossReference,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        command_info(query, &foreign_keys_schema(), request.into_inner())
    }

    async fn do_get_cross_reference(
        &self,
        _query: CommandGetCrossReference,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        Ok(Response::new(no_rows(foreign_keys_schema())))
    }

    async fn get_flight_info_xdbc_type_info(
        &self,
        query: CommandGetXdbcTypeInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.into_builder(&self.xdbc_types).schema();
        command_info(query, &schema, request.into_inner())
    }

    async fn do_get_xdbc_type_info(
        &self,
        query: CommandGetXdbcTypeInfo,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let builder = query.into_builder(&self.xdbc_types);
        Ok(Response::new(one_batch(builder.schema(), builder.build())))
    }

    async fn register_sql_info(&self, _id: i32, _result: &SqlInfo) {}
}
