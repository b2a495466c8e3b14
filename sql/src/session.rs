//! A SQL session over an engine: parses statements with [`parse_statements`], runs Sluice's own
//! statements against the engine and everything else through a DataFusion [`SessionContext`]
//! whose default schema is the engine's streams.

use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, BooleanArray, RecordBatch, StringArray, UInt32Array, UInt64Array,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::MemoryCatalogProviderList;
use datafusion::common::{ParamValues, ScalarValue};
use datafusion::execution::SendableRecordBatchStream;
use datafusion::execution::SessionStateBuilder;
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_plan::memory::MemoryStream;
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion::sql::parser::Statement as DFStatement;
use datafusion::sql::sqlparser::ast::{
    Ident, ObjectName, ObjectType, Statement as SQLStatement, TableObject,
};
use sluice_engine::schema::{DATA, PARTITION_KEY, SYSTEM_COLUMNS};
use sluice_engine::{
    DIRECT_PUT_NAMESPACE, Engine, NAMESPACE_SEPARATOR, PumpDefinition, StreamFormat,
};

use crate::application::Applications;
use crate::continuous::{PumpCursor, QueryProgress};
use crate::create_stream::stream_spec;
use crate::error::{Error, Result};
use crate::identifiers::{KnownNames, resolve_kda_names};
use crate::parser::{SluiceStatement, parse_statements};
use crate::pumps::{ClusterPumps, PumpManager};
use crate::schema_provider::{StreamCatalog, StreamSchemaProvider, StreamView};
use crate::similar_to::rewrite_similar_to;
use crate::source::SourceManager;
use crate::streaming_filter::StreamingFilterRule;
use crate::streaming_planner::{ContinuousPlan, ContinuousPlanner};
use crate::window::TumbleFunction;
use sluice_delivery::DeliveryManager;
use sluice_engine::DeliveryDefinition;

/// How long `FLUSH` waits for pumps to catch up.
const FLUSH_PUMP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// What a statement produced.
pub enum StatementOutput {
    /// Rows, streamed.
    Rows(SendableRecordBatchStream),
    /// Rows of a continuous query: the stream ends only if the query does (`LIMIT`) or is
    /// dropped by its reader.
    Continuous(SendableRecordBatchStream),
    /// A statement without rows, and a short note of what it did.
    Done(String),
}

impl std::fmt::Debug for StatementOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Rows(stream) => write!(f, "Rows({:?})", stream.schema()),
            Self::Continuous(stream) => write!(f, "Continuous({:?})", stream.schema()),
            Self::Done(note) => write!(f, "Done({note})"),
        }
    }
}

/// What a statement returns and the parameters it takes, known before it runs.
#[derive(Debug, Clone)]
pub struct StatementShape {
    /// The columns of its rows (none for a statement without rows).
    pub schema: SchemaRef,
    /// The type of each parameter, `$1` first, where the statement determines it.
    pub parameters: Vec<Option<DataType>>,
}

/// The one statement in `sql`.
fn one_statement(sql: &str) -> Result<SluiceStatement> {
    let mut statements = parse_statements(sql)?;
    if statements.len() != 1 {
        return Err(Error::Parse(format!(
            "expected one statement, found {}",
            statements.len()
        )));
    }
    Ok(statements.remove(0))
}

/// A SQL session on an engine.
#[derive(Clone)]
pub struct SluiceSession {
    engine: Engine,
    /// Plans bounded statements: streams are snapshots.
    ctx: SessionContext,
    /// The streams and tables the contexts resolve names in.
    provider: Arc<StreamSchemaProvider>,
    /// The pumps running on this session's engine.
    pumps: Arc<PumpManager>,
    /// In a cluster: its pumps (those writing into streams it shares), set by the server.
    cluster_pumps: Arc<std::sync::OnceLock<Arc<dyn ClusterPumps>>>,
    /// The delivery streams running on this session's engine.
    deliveries: Arc<DeliveryManager>,
    /// The built-in sources feeding streams (`source = 'demo'`).
    sources: Arc<SourceManager>,
    /// The Kinesis Data Analytics applications on the engine (the engine's own session only;
    /// an application's session runs inside its namespace).
    applications: Option<Arc<Applications>>,
}

impl std::fmt::Debug for SluiceSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SluiceSession")
            .field("engine", &self.engine)
            .finish()
    }
}

#[async_trait::async_trait]
impl ContinuousPlanner for SluiceSession {
    fn engine(&self) -> &Engine {
        &self.engine
    }

    async fn plan_continuous(
        &self,
        statement: DFStatement,
        cursor: Option<Arc<PumpCursor>>,
    ) -> Result<(SessionContext, LogicalPlan)> {
        let context = self.continuous_context(cursor)?;
        let plan = self.plan_in(&context, statement).await?;
        Ok((context, plan))
    }
}

impl SluiceSession {
    /// A session whose default schema holds the engine's streams. Pumps saved in the engine's
    /// catalog as running are started (this needs a Tokio runtime).
    pub fn new(engine: Engine) -> Result<Self> {
        Self::with_tables(engine, Vec::new())
    }

    /// A session as [`SluiceSession::new`] makes it, with `tables` beside the streams before
    /// any saved pump starts (an application's reference tables, which its pumps join).
    pub fn with_tables(
        engine: Engine,
        tables: Vec<(String, Arc<dyn datafusion::catalog::TableProvider>)>,
    ) -> Result<Self> {
        let config = SessionConfig::new()
            .with_information_schema(true)
            .with_default_catalog_and_schema("sluice", "public");
        let ctx = SessionContext::new_with_config(config);
        let provider = Arc::new(StreamSchemaProvider::new(engine.clone()));
        ctx.register_catalog(
            "sluice",
            Arc::new(StreamCatalog::new(
                engine.clone(),
                Arc::clone(&provider) as _,
                StreamView::Bounded,
                None,
            )),
        );
        let bounded = || TumbleFunction::new(engine.clone(), StreamView::Bounded, None);
        ctx.register_udtf("tumble", Arc::new(bounded()));
        ctx.register_udtf("hop", Arc::new(bounded().hopping()));
        ctx.register_udtf("cumulate", Arc::new(bounded().cumulating()));
        ctx.register_udtf("session", Arc::new(bounded().sessions()));
        ctx.register_udtf("stagger", Arc::new(bounded().staggered()));
        for (name, kind) in crate::ml::table::MlKind::ALL {
            ctx.register_udtf(name, Arc::new(crate::ml::table::MlFunction(kind)));
        }
        for udf in crate::kda_functions::kda_udfs(Arc::clone(engine.clock())) {
            ctx.register_udf(udf);
        }
        let session = Self {
            engine,
            ctx,
            provider,
            pumps: Arc::new(PumpManager::default()),
            cluster_pumps: Arc::default(),
            deliveries: Arc::new(DeliveryManager::default()),
            sources: Arc::new(SourceManager::default()),
            applications: None,
        };
        for (name, table) in tables {
            session
                .ctx
                .register_table(datafusion::common::TableReference::bare(name), table)?;
        }
        session.sources.start_saved(&session.engine)?;
        session.pumps.start_saved(Arc::new(session.clone()))?;
        session.deliveries.start_saved(&session.engine);
        let applications = match session.engine.namespace_name() {
            None => Some(Applications::open(session.engine.clone())?),
            Some(_) => None,
        };
        Ok(Self {
            applications,
            ..session
        })
    }

    /// A context for continuous queries: the same tables, with streams unbounded and read
    /// through `cursor` when given. One partition, so the plan pulls one batch at a time.
    pub(crate) fn continuous_context(
        &self,
        cursor: Option<Arc<PumpCursor>>,
    ) -> Result<SessionContext> {
        let config = self.ctx.copied_config().with_target_partitions(1);
        let state = SessionStateBuilder::new_from_existing(self.ctx.state())
            .with_config(config)
            .with_catalog_list(Arc::new(MemoryCatalogProviderList::new()))
            .with_physical_optimizer_rule(Arc::new(StreamingFilterRule))
            .build();
        let continuous = SessionContext::new_with_state(state);
        let windows =
            || TumbleFunction::new(self.engine.clone(), StreamView::Continuous, cursor.clone());
        continuous.register_udtf("tumble", Arc::new(windows()));
        continuous.register_udtf("hop", Arc::new(windows().hopping()));
        continuous.register_udtf("cumulate", Arc::new(windows().cumulating()));
        continuous.register_udtf("session", Arc::new(windows().sessions()));
        continuous.register_udtf("stagger", Arc::new(windows().staggered()));
        for (name, kind) in crate::ml::table::MlKind::ALL {
            continuous.register_udtf(name, Arc::new(crate::ml::table::MlFunction(kind)));
        }
        let schema = self
            .provider
            .with_view(StreamView::Continuous, cursor.clone());
        continuous.register_catalog(
            "sluice",
            Arc::new(StreamCatalog::new(
                self.engine.clone(),
                Arc::new(schema),
                StreamView::Continuous,
                cursor,
            )),
        );
        Ok(continuous)
    }

    /// Stops this session's pumps and waits for them, so that dropping the session (and its
    /// clones) closes the engine. Pumps stay marked running in the catalog and start again
    /// with the next session.
    pub async fn shutdown(&self) {
        if let Some(applications) = &self.applications {
            // Boxed: an application's own session shuts down from inside this.
            Box::pin(applications.shutdown()).await;
        }
        self.sources.stop_all().await;
        self.pumps.stop_all().await;
        // What delivery streams still buffer is delivered after the next start: their
        // positions were never committed past it.
        self.deliveries.stop_all().await;
    }

    /// The Kinesis Data Analytics applications on this session's engine (none for a session
    /// inside an application's namespace).
    pub fn applications(&self) -> Option<&Arc<Applications>> {
        self.applications.as_ref()
    }

    /// Waits until every pump of this session has processed what its sources hold.
    pub async fn wait_pumps_caught_up(&self, timeout: std::time::Duration) -> Result<()> {
        self.pumps.wait_caught_up(&self.engine, timeout).await
    }

    fn root_applications(&self) -> Result<&Applications> {
        self.applications.as_deref().ok_or_else(|| {
            Error::Plan(
                "applications are managed from the engine's own session, not from inside an application".into(),
            )
        })
    }

    /// The engine this session runs on.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The DataFusion context (for registering tables or functions).
    pub fn context(&self) -> &SessionContext {
        &self.ctx
    }

    /// Runs every statement in `sql`, collecting each one's rows.
    pub async fn execute_all(&self, sql: &str) -> Result<Vec<(SchemaRef, Vec<RecordBatch>)>> {
        let mut results = Vec::new();
        for statement in parse_statements(sql)? {
            match self.execute_statement(statement).await? {
                StatementOutput::Rows(stream) | StatementOutput::Continuous(stream) => {
                    let schema = stream.schema();
                    let batches = datafusion::physical_plan::common::collect(stream).await?;
                    results.push((schema, batches));
                }
                StatementOutput::Done(_) => results.push((Arc::new(Schema::empty()), vec![])),
            }
        }
        Ok(results)
    }

    /// Runs one parsed statement; a continuous query comes with a handle on its progress
    /// (records read, watermark, the next window to close), for a client waiting on its rows.
    pub async fn execute_watched(
        &self,
        statement: SluiceStatement,
    ) -> Result<(StatementOutput, Option<QueryProgress>)> {
        match statement {
            SluiceStatement::SelectStream(query) => {
                let cursor = Arc::new(PumpCursor::default());
                let context = self.continuous_context(Some(Arc::clone(&cursor)))?;
                let plan = self.plan_in(&context, *query).await?;
                let rows = self.start_continuous(&context, plan).await?;
                Ok((
                    StatementOutput::Continuous(rows),
                    Some(QueryProgress::new(cursor)),
                ))
            }
            other => Ok((self.execute_statement(other).await?, None)),
        }
    }

    /// Runs one parsed statement.
    pub async fn execute_statement(&self, statement: SluiceStatement) -> Result<StatementOutput> {
        match statement {
            SluiceStatement::CreateStream(create) => {
                let spec = stream_spec(&create)?;
                let engine = self.engine.clone();
                let name = spec.name.clone();
                let shards = spec.shards;
                let (replaced, definition) = blocking(move || {
                    let replaced = create.or_replace && engine.try_stream(&spec.name).is_some();
                    if replaced {
                        engine.drop_stream(&spec.name, true)?;
                    }
                    let existed = engine.try_stream(&spec.name).is_some();
                    let stream = engine.create_stream(spec, create.if_not_exists)?;
                    Ok((replaced, (!existed).then(|| stream.definition().clone())))
                })
                .await?;
                if replaced {
                    self.sources.stop(&name);
                }
                if let Some(definition) = definition {
                    self.sources.start(&self.engine, &definition, true)?;
                }
                let verb = if replaced { "replaced" } else { "created" };
                Ok(StatementOutput::Done(format!(
                    "Stream '{name}' {verb} with {shards} shard{}.",
                    if shards == 1 { "" } else { "s" }
                )))
            }
            SluiceStatement::AlterStream(alter) => {
                if alter.options.iter().any(|(k, _)| k == "shards") {
                    return Err(Error::Plan(format!(
                        "ALTER STREAM {} cannot change the shard count; reshard with the Kinesis API's SplitShard, MergeShards or UpdateShardCount",
                        alter.name
                    )));
                }
                let retention = alter.options.iter().any(|(k, _)| k == "retention");
                let spec = stream_spec(&alter)?;
                let engine = self.engine.clone();
                let name = alter.name.clone();
                let records = blocking(move || {
                    let stream = engine.alter_stream(&spec.name, spec.clone())?;
                    if retention {
                        engine.set_retention(&spec.name, spec.retention_hours)?;
                    }
                    Ok(stream.stats().iter().map(|s| s.records).sum::<usize>())
                })
                .await?;
                Ok(StatementOutput::Done(format!(
                    "Stream '{name}' altered; its {records} retained record{} were decoded again.",
                    if records == 1 { "" } else { "s" }
                )))
            }
            SluiceStatement::DropStream { name, if_exists } => {
                let engine = self.engine.clone();
                let dropped = name.clone();
                blocking(move || engine.drop_stream(&dropped, if_exists)).await?;
                self.sources.stop(&name);
                Ok(StatementOutput::Done(format!("Stream '{name}' dropped.")))
            }
            SluiceStatement::ShowStreams => rows(self.show_streams()?),
            SluiceStatement::ShowShards { name } => rows(self.show_shards(&name)?),
            SluiceStatement::Describe { name } => match self.engine.try_stream(&name) {
                Some(_) => rows(self.describe_stream(&name)?),
                None if !self.ctx.table_exist(name.as_str())? => Err(Error::NotFound(format!(
                    "stream or table '{name}' does not exist; SHOW STREAMS lists the streams, \\d the tables"
                ))),
                None => {
                    let frame = self.ctx.sql(&format!("DESCRIBE \"{name}\"")).await?;
                    Ok(StatementOutput::Rows(frame.execute_stream().await?))
                }
            },
            SluiceStatement::Flush => {
                // Sources first append every record their clock has reached; pumps then take
                // in everything inserted before the FLUSH (and what other pumps write
                // meanwhile), then every tail is sealed.
                self.sources.catch_up().await?;
                self.pumps
                    .wait_caught_up(&self.engine, FLUSH_PUMP_TIMEOUT)
                    .await?;
                // Applications take in what their inputs hold, and deliver their outputs.
                if let Some(applications) = &self.applications {
                    applications
                        .wait_all_caught_up(FLUSH_PUMP_TIMEOUT)
                        .await
                        .map_err(|e| Error::Plan(e.message))?;
                }
                // Then delivery streams write what is due (everything, with a 0 s interval),
                // pumps' output included.
                self.deliveries
                    .wait_settled(&self.engine, FLUSH_PUMP_TIMEOUT)
                    .await?;
                let engine = self.engine.clone();
                blocking(move || engine.flush()).await?;
                Ok(StatementOutput::Done("Flushed.".to_string()))
            }
            SluiceStatement::CreateDelivery {
                name,
                source,
                or_replace,
                if_not_exists,
                options,
            } => {
                let done = self
                    .create_delivery(&name, &source, options, or_replace, if_not_exists)
                    .await?;
                Ok(StatementOutput::Done(done))
            }
            SluiceStatement::DropDelivery { name, if_exists } => {
                let done = self.drop_delivery(&name, if_exists).await?;
                Ok(StatementOutput::Done(done))
            }
            SluiceStatement::ShowDeliveries => rows(self.deliveries.show(&self.engine)?),
            SluiceStatement::ShowApplications => {
                rows(crate::application::show::show(self.root_applications()?).await?)
            }
            SluiceStatement::DescribeApplication { name } => {
                rows(crate::application::show::describe(self.root_applications()?, &name).await?)
            }
            SluiceStatement::DescribeDelivery { name } => {
                rows(self.deliveries.describe(&self.engine, &name)?)
            }
            SluiceStatement::DataFusion(statement) => self.execute_datafusion(*statement).await,
            SluiceStatement::SelectStream(query) => self.execute_continuous(*query).await,
            pump @ (SluiceStatement::CreatePump { .. }
            | SluiceStatement::DropPump { .. }
            | SluiceStatement::StartPump { .. }
            | SluiceStatement::StopPump { .. }
            | SluiceStatement::ShowPumps) => self.execute_pump_statement(pump).await,
        }
    }

    /// `CREATE [OR REPLACE] DELIVERY STREAM [IF NOT EXISTS] name FROM source WITH (options)`:
    /// checked whole before anything running is touched. Returns what was done, in words.
    pub async fn create_delivery(
        &self,
        name: &str,
        source: &str,
        options: Vec<(String, String)>,
        or_replace: bool,
        if_not_exists: bool,
    ) -> Result<String> {
        let existing = self
            .engine
            .deliveries()
            .into_iter()
            .find(|d| d.name == name);
        if existing.is_some() {
            if if_not_exists {
                return Ok(format!("Delivery stream '{name}' already exists."));
            }
            if !or_replace {
                return Err(Error::Plan(format!(
                    "delivery stream '{name}' already exists; CREATE OR REPLACE DELIVERY STREAM replaces it"
                )));
            }
        }
        let definition = DeliveryDefinition {
            name: name.to_string(),
            source: source.to_string(),
            options,
            version: existing.as_ref().map_or(1, |e| e.version + 1),
        };
        // Check everything before touching what runs.
        sluice_delivery::prepare(&self.engine, &definition)?;
        if existing.is_some() {
            self.deliveries.stop(name).await;
            let engine = self.engine.clone();
            let dropped = name.to_string();
            blocking(move || engine.drop_delivery(&dropped)).await?;
        }
        let engine = self.engine.clone();
        let saved = definition.clone();
        blocking(move || engine.save_delivery(saved)).await?;
        self.deliveries.start(&self.engine, &definition)?;
        let verb = if existing.is_some() {
            "replaced"
        } else {
            "created"
        };
        Ok(format!(
            "Delivery stream '{name}' {verb}, reading '{}'.",
            definition.source
        ))
    }

    /// Changes delivery stream `name`'s options in place: its version goes up (new objects are
    /// named with it) and it resumes where it had delivered, so nothing is delivered twice or
    /// skipped. What it had buffered is read again and written with the new options.
    pub async fn update_delivery(&self, name: &str, options: Vec<(String, String)>) -> Result<u32> {
        let Some(existing) = self
            .engine
            .deliveries()
            .into_iter()
            .find(|d| d.name == name)
        else {
            return Err(Error::NotFound(format!(
                "delivery stream '{name}' does not exist; SHOW DELIVERY STREAMS lists them"
            )));
        };
        let definition = DeliveryDefinition {
            options,
            version: existing.version + 1,
            ..existing
        };
        sluice_delivery::prepare(&self.engine, &definition)?;
        self.deliveries.stop(name).await;
        let engine = self.engine.clone();
        let saved = definition.clone();
        blocking(move || engine.save_delivery(saved)).await?;
        self.deliveries.start(&self.engine, &definition)?;
        Ok(definition.version)
    }

    /// `DROP DELIVERY STREAM [IF EXISTS] name`; a Firehose direct-put delivery stream's own
    /// stream of records goes with it.
    pub async fn drop_delivery(&self, name: &str, if_exists: bool) -> Result<String> {
        self.deliveries.stop(name).await;
        let source = self
            .engine
            .deliveries()
            .into_iter()
            .find(|d| d.name == name)
            .map(|d| d.source);
        let engine = self.engine.clone();
        let dropped = name.to_string();
        let existed = blocking(move || engine.drop_delivery(&dropped)).await?;
        if !existed && !if_exists {
            return Err(Error::NotFound(format!(
                "delivery stream '{name}' does not exist; SHOW DELIVERY STREAMS lists them"
            )));
        }
        let direct_put = format!("{DIRECT_PUT_NAMESPACE}{NAMESPACE_SEPARATOR}{name}");
        if source.as_deref() == Some(direct_put.as_str()) {
            let engine = self.engine.clone();
            blocking(move || engine.drop_stream(&direct_put, true)).await?;
        }
        Ok(format!("Delivery stream '{name}' dropped."))
    }

    /// What the delivery streams are doing, as `SHOW DELIVERY STREAMS` shows it.
    pub fn delivery_streams(&self) -> &Arc<DeliveryManager> {
        &self.deliveries
    }

    /// Parses and runs `sql`, which must hold exactly one statement.
    pub async fn execute(&self, sql: &str) -> Result<StatementOutput> {
        self.execute_statement(one_statement(sql)?).await
    }

    /// Parses and runs `sql`, one statement, with its parameters (`$1`, `$2`, … or `?`) bound
    /// to `parameters` in order: how prepared statements run.
    pub async fn execute_with_parameters(
        &self,
        sql: &str,
        parameters: Vec<ScalarValue>,
    ) -> Result<StatementOutput> {
        let statement = one_statement(sql)?;
        if parameters.is_empty() {
            return self.execute_statement(statement).await;
        }
        let values = ParamValues::List(parameters.into_iter().map(Into::into).collect());
        match statement {
            SluiceStatement::DataFusion(statement) => {
                self.execute_datafusion_with(*statement, Some(values)).await
            }
            SluiceStatement::SelectStream(query) => {
                let context = self.continuous_context(None)?;
                let plan = self
                    .plan_in(&context, *query)
                    .await?
                    .with_param_values(values)?;
                let rows = self.start_continuous(&context, plan).await?;
                Ok(StatementOutput::Continuous(rows))
            }
            _ => Err(Error::Plan(
                "this statement takes no parameters; only queries and INSERT do".to_string(),
            )),
        }
    }

    /// What `sql` (one statement) returns and which parameters it takes, without running it.
    /// Statements of Sluice's own (stream and pump DDL, `SHOW …`) describe as no columns.
    pub async fn describe_statement(&self, sql: &str) -> Result<StatementShape> {
        let statement = one_statement(sql)?;
        let plan = match statement {
            SluiceStatement::DataFusion(mut statement) => {
                self.refuse_table_commands_on_streams(&statement)?;
                resolve_kda_names(&mut statement, self);
                rewrite_similar_to(&mut statement)?;
                crate::sliding::order_windows_by_rowtime(&mut statement);
                crate::kda::rewrite_stagger_windows(&mut statement)?;
                crate::kda_functions::rewrite_kda_functions(&mut statement)?;
                self.name_insert_columns(&mut statement);
                let state = self.ctx.state();
                self.check_tables_exist(&state, &statement)?;
                state.statement_to_plan(*statement).await?
            }
            SluiceStatement::SelectStream(query) => {
                let context = self.continuous_context(None)?;
                self.plan_in(&context, *query).await?
            }
            _ => {
                return Ok(StatementShape {
                    schema: Arc::new(Schema::empty()),
                    parameters: vec![],
                });
            }
        };
        let types = plan.get_parameter_types()?;
        let mut parameters: Vec<(usize, Option<DataType>)> = types
            .into_iter()
            .filter_map(|(id, t)| {
                let n = id.trim_start_matches('$').parse::<usize>().ok()?;
                Some((n, t))
            })
            .collect();
        parameters.sort_by_key(|(n, _)| *n);
        Ok(StatementShape {
            schema: Arc::new(plan.schema().as_arrow().clone()),
            parameters: parameters.into_iter().map(|(_, t)| t).collect(),
        })
    }

    async fn execute_datafusion(&self, statement: DFStatement) -> Result<StatementOutput> {
        self.execute_datafusion_with(statement, None).await
    }

    async fn execute_datafusion_with(
        &self,
        mut statement: DFStatement,
        parameters: Option<ParamValues>,
    ) -> Result<StatementOutput> {
        self.refuse_table_commands_on_streams(&statement)?;
        resolve_kda_names(&mut statement, self);
        rewrite_similar_to(&mut statement)?;
        crate::sliding::order_windows_by_rowtime(&mut statement);
        crate::kda::rewrite_stagger_windows(&mut statement)?;
        crate::kda_functions::rewrite_kda_functions(&mut statement)?;
        self.name_insert_columns(&mut statement);
        let state = self.ctx.state();
        self.check_tables_exist(&state, &statement)?;
        let mut plan = state.statement_to_plan(statement).await?;
        if let Some(values) = parameters {
            plan = plan.with_param_values(values)?;
        }
        let is_command = matches!(plan, LogicalPlan::Ddl(_) | LogicalPlan::Statement(_));
        let is_write = matches!(plan, LogicalPlan::Dml(_) | LogicalPlan::Copy(_));
        let frame = self.ctx.execute_logical_plan(plan).await?;
        if is_command {
            frame.collect().await?;
            return Ok(StatementOutput::Done("OK.".to_string()));
        }
        if is_write {
            // Writes happen now, whether or not anyone reads the count they return.
            let schema = Arc::new(frame.schema().as_arrow().clone());
            let batches = frame.collect().await?;
            return Ok(StatementOutput::Rows(Box::pin(MemoryStream::try_new(
                batches, schema, None,
            )?)));
        }
        Ok(StatementOutput::Rows(frame.execute_stream().await?))
    }

    /// Plans a `SELECT STREAM` query over unbounded streams and starts it.
    async fn execute_continuous(&self, query: DFStatement) -> Result<StatementOutput> {
        let context = self.continuous_context(None)?;
        let plan = self.plan_in(&context, query).await?;
        let rows = self.start_continuous(&context, plan).await?;
        Ok(StatementOutput::Continuous(rows))
    }

    /// Plans `statement` in `context` as this session plans any statement.
    pub(crate) async fn plan_in(
        &self,
        context: &SessionContext,
        mut statement: DFStatement,
    ) -> Result<LogicalPlan> {
        resolve_kda_names(&mut statement, self);
        rewrite_similar_to(&mut statement)?;
        crate::sliding::order_windows_by_rowtime(&mut statement);
        self.name_insert_columns(&mut statement);
        crate::kda::rewrite_step_windows(&mut statement)?;
        crate::kda_functions::rewrite_kda_functions(&mut statement)?;
        let state = context.state();
        self.check_tables_exist(&state, &statement)?;
        Ok(state.statement_to_plan(statement).await?)
    }

    /// Decides how a continuous plan runs (once, here) and starts it.
    async fn start_continuous(
        &self,
        context: &SessionContext,
        plan: LogicalPlan,
    ) -> Result<SendableRecordBatchStream> {
        ContinuousPlan::decide(plan)?.start(context).await
    }

    /// Hands the pumps writing into streams a cluster shares to `pumps` (the server does, as
    /// the node joins): CREATE PUMP into such a stream defines the pump for the whole cluster.
    pub fn set_cluster_pumps(&self, pumps: Arc<dyn ClusterPumps>) {
        let _ = self.cluster_pumps.set(pumps);
    }

    /// The pumps running on this session's engine (a cluster's pumps run through them too).
    pub fn pump_manager(&self) -> &Arc<PumpManager> {
        &self.pumps
    }

    /// The cluster's register of pumps, if `sql`'s target is a stream it shares (asked of the
    /// cluster: a copy created here a moment ago may not know it yet).
    async fn cluster_pumps_for(
        &self,
        sql: &str,
    ) -> Result<Option<(Arc<dyn ClusterPumps>, String)>> {
        let (Some(cluster), Some(target)) =
            (self.cluster_pumps.get(), crate::pumps::pump_target(sql))
        else {
            return Ok(None);
        };
        if self
            .engine
            .try_stream(&target)
            .is_some_and(|s| s.is_shared())
        {
            return Ok(Some((Arc::clone(cluster), target)));
        }
        let shared = cluster.shares(&target).await.map_err(|e| {
            Error::Plan(format!(
                "cannot ask the cluster whether it shares stream '{target}': {e}"
            ))
        })?;
        Ok(shared.then(|| (Arc::clone(cluster), target)))
    }

    /// The cluster's pumps, for SHOW PUMPS and DROP PUMP.
    async fn cluster_pump_list(&self) -> Result<Vec<crate::pumps::ClusterPump>> {
        match self.cluster_pumps.get() {
            Some(cluster) => cluster
                .list()
                .await
                .map_err(|e| Error::Plan(format!("cannot list the cluster's pumps: {e}"))),
            None => Ok(Vec::new()),
        }
    }

    async fn execute_pump_statement(&self, statement: SluiceStatement) -> Result<StatementOutput> {
        let engine = self.engine.clone();
        let unknown = |name: &str| {
            Error::NotFound(format!(
                "pump '{name}' does not exist; SHOW PUMPS lists the pumps"
            ))
        };
        let find = |name: &str| engine.pumps().into_iter().find(|p| p.name == name);
        match statement {
            SluiceStatement::CreatePump {
                name,
                or_replace,
                insert: _,
                text: sql,
            } => {
                if let Some((cluster, target)) = self.cluster_pumps_for(&sql).await? {
                    if find(&name).is_some() {
                        return Err(Error::Plan(format!(
                            "pump '{name}' runs on this node only; DROP PUMP it before creating \
                             one of that name for the cluster"
                        )));
                    }
                    // Its errors now, as for a pump here; then the cluster runs it somewhere,
                    // so it may read only streams every node has.
                    for source in self.pumps.check(self, &name, &sql).await? {
                        if self
                            .engine
                            .try_stream(&source)
                            .is_some_and(|s| !s.is_shared())
                        {
                            return Err(Error::Plan(format!(
                                "pump '{name}' writes into '{target}', which the cluster shares, \
                                 so it runs on whichever node the cluster picks; it reads \
                                 '{source}', which only this node has. Read streams the cluster \
                                 shares (created with the Kinesis API), or write into a stream \
                                 of this node's own"
                            )));
                        }
                    }
                    cluster
                        .create(&name, &sql, &target, or_replace)
                        .await
                        .map_err(Error::Plan)?;
                    return Ok(StatementOutput::Done(format!(
                        "Pump '{name}' created; the cluster runs it on one node at a time."
                    )));
                }
                // A replaced pump's successor keeps its place (saved read positions and
                // watermark), so replacing the query neither repeats nor skips records.
                let replaced = find(&name);
                if let Some(old) = &replaced {
                    if !or_replace {
                        return Err(Error::Plan(format!(
                            "pump '{name}' already exists; CREATE OR REPLACE PUMP replaces it"
                        )));
                    }
                    if old.running {
                        self.pumps.stop(&name).await;
                    }
                }
                if let Err(e) = self.pumps.start(self, &name, &sql).await {
                    if let Some(old) = replaced.filter(|old| old.running) {
                        // Keep the old pump running when its replacement cannot start.
                        if let Err(restart) = self.pumps.start(self, &name, &old.sql).await {
                            log::error!("pump '{name}' could not be restarted: {restart}");
                        }
                    }
                    return Err(e);
                }
                let definition = PumpDefinition {
                    name: name.clone(),
                    reads: self.pumps.reads(&name),
                    writes: crate::pumps::pump_target(&sql),
                    sql,
                    running: true,
                };
                let saved = engine.clone();
                if let Err(e) = blocking(move || saved.save_pump(definition)).await {
                    self.pumps.stop(&name).await;
                    return Err(e);
                }
                Ok(StatementOutput::Done(format!(
                    "Pump '{name}' created and running."
                )))
            }
            SluiceStatement::DropPump { name, if_exists } => {
                if find(&name).is_none()
                    && let Some(cluster) = self.cluster_pumps.get()
                    && cluster.remove(&name).await.map_err(Error::Plan)?
                {
                    return Ok(StatementOutput::Done(format!("Pump '{name}' dropped.")));
                }
                if find(&name).is_none() {
                    return if if_exists {
                        Ok(StatementOutput::Done("OK.".into()))
                    } else {
                        Err(unknown(&name))
                    };
                }
                self.pumps.stop(&name).await;
                let dropped = name.clone();
                let target = find(&name).and_then(|p| crate::pumps::pump_target(&p.sql));
                blocking(move || {
                    // A new pump of this name must not resume from this one's last commit.
                    if let Some(target) = target.and_then(|t| engine.try_stream(&t)) {
                        target.forget_commit(&dropped)?;
                    }
                    engine.drop_pump(&dropped)
                })
                .await?;
                Ok(StatementOutput::Done(format!("Pump '{name}' dropped.")))
            }
            SluiceStatement::StartPump { name } | SluiceStatement::StopPump { name }
                if find(&name).is_none()
                    && self
                        .cluster_pump_list()
                        .await?
                        .iter()
                        .any(|p| p.name == name) =>
            {
                Err(Error::Plan(format!(
                    "pump '{name}' is the cluster's and always runs (on one node at a time); \
                     DROP PUMP stops it for good"
                )))
            }
            SluiceStatement::StartPump { name } => {
                let mut pump = find(&name).ok_or_else(|| unknown(&name))?;
                if self.pumps.is_running(&name) {
                    return Ok(StatementOutput::Done(format!(
                        "Pump '{name}' is already running."
                    )));
                }
                self.pumps.start(self, &name, &pump.sql).await?;
                pump.running = true;
                pump.reads = self.pumps.reads(&name);
                pump.writes = crate::pumps::pump_target(&pump.sql);
                blocking(move || engine.save_pump(pump)).await?;
                Ok(StatementOutput::Done(format!("Pump '{name}' started.")))
            }
            SluiceStatement::StopPump { name } => {
                let mut pump = find(&name).ok_or_else(|| unknown(&name))?;
                self.pumps.stop(&name).await;
                pump.running = false;
                blocking(move || engine.save_pump(pump)).await?;
                Ok(StatementOutput::Done(format!("Pump '{name}' stopped.")))
            }
            SluiceStatement::ShowPumps => rows(
                self.pumps
                    .show(&self.engine, &self.cluster_pump_list().await?)?,
            ),
            other => Err(Error::Plan(format!("not a pump statement: {other:?}"))),
        }
    }

    /// A query or insert naming a missing table gets an error that says so in Sluice's words,
    /// before DataFusion's planner reports it as a missing `sluice.public.` table.
    fn check_tables_exist(
        &self,
        state: &datafusion::execution::SessionState,
        statement: &DFStatement,
    ) -> Result<()> {
        let DFStatement::Statement(inner) = statement else {
            return Ok(());
        };
        if !matches!(
            inner.as_ref(),
            SQLStatement::Query(_) | SQLStatement::Insert(_)
        ) {
            return Ok(());
        }
        let Some(schema) = self
            .ctx
            .catalog("sluice")
            .and_then(|catalog| catalog.schema("public"))
        else {
            return Ok(());
        };
        for reference in state.resolve_table_references(statement)? {
            let in_default_schema = match reference.schema() {
                None => true,
                Some(schema) => {
                    schema == "public" && reference.catalog().is_none_or(|c| c == "sluice")
                }
            };
            let is_function = state.table_functions().contains_key(reference.table());
            if in_default_schema && !is_function && !schema.table_exist(reference.table()) {
                return Err(Error::NotFound(format!(
                    "stream or table '{}' does not exist; SHOW STREAMS lists the streams",
                    reference.table()
                )));
            }
        }
        Ok(())
    }

    /// `DROP TABLE stream` would otherwise say the table does not exist.
    fn refuse_table_commands_on_streams(&self, statement: &DFStatement) -> Result<()> {
        let DFStatement::Statement(inner) = statement else {
            return Ok(());
        };
        if let SQLStatement::Drop {
            object_type: ObjectType::Table | ObjectType::View,
            names,
            ..
        } = inner.as_ref()
        {
            for name in names {
                if let Some(stream) = single_name(name).and_then(|n| self.engine.try_stream(&n)) {
                    return Err(Error::Plan(format!(
                        "'{0}' is a stream; use DROP STREAM {0}",
                        self.engine.local_name(stream.name())
                    )));
                }
            }
        }
        Ok(())
    }

    /// `INSERT INTO stream VALUES …` without a column list means the stream's own columns (for a
    /// raw stream, `_partition_key` and `_data`), not every column including the system ones.
    fn name_insert_columns(&self, statement: &mut DFStatement) {
        let DFStatement::Statement(inner) = statement else {
            return;
        };
        let SQLStatement::Insert(insert) = inner.as_mut() else {
            return;
        };
        if !insert.columns.is_empty() {
            return;
        }
        let TableObject::TableName(table) = &insert.table else {
            return;
        };
        let Some(stream) = single_name(table).and_then(|n| self.engine.try_stream(&n)) else {
            return;
        };
        let columns: Vec<String> = match stream.format() {
            StreamFormat::Raw => vec![PARTITION_KEY.to_string(), DATA.to_string()],
            _ => stream
                .user_schema()
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .collect(),
        };
        insert.columns = columns
            .into_iter()
            .map(|c| ObjectName::from(vec![Ident::with_quote('"', c)]))
            .collect();
    }

    fn show_streams(&self) -> Result<RecordBatch> {
        let streams = self.engine.streams();
        let schema = Arc::new(Schema::new(vec![
            Field::new("name", DataType::Utf8, false),
            Field::new("format", DataType::Utf8, false),
            Field::new("shards", DataType::UInt32, false),
            Field::new("partition_key", DataType::Utf8, true),
            Field::new("retention_hours", DataType::UInt32, false),
            Field::new("records", DataType::UInt64, false),
        ]));
        let definitions: Vec<_> = streams.iter().map(|s| s.definition().clone()).collect();
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from_iter_values(
                definitions.iter().map(|d| self.engine.local_name(&d.name)),
            )),
            Arc::new(StringArray::from_iter_values(
                definitions.iter().map(|d| d.format.to_string()),
            )),
            Arc::new(UInt32Array::from_iter_values(
                streams.iter().map(|s| s.open_shards().len() as u32),
            )),
            Arc::new(StringArray::from_iter(
                definitions.iter().map(|d| d.partition_key.as_deref()),
            )),
            Arc::new(UInt32Array::from_iter_values(
                definitions.iter().map(|d| d.retention_hours),
            )),
            Arc::new(UInt64Array::from_iter_values(streams.iter().map(|s| {
                s.stats().iter().map(|st| st.records as u64).sum::<u64>()
            }))),
        ];
        Ok(RecordBatch::try_new(schema, columns)?)
    }

    /// `SHOW SHARDS name`: every shard, open and closed, as `ListShards` lists it (ids, hash-key
    /// range, lineage, sequence number range), with the records it retains and whether it is
    /// open.
    fn show_shards(&self, name: &str) -> Result<RecordBatch> {
        use sluice_engine::sequence::{format_sequence_number, shard_id};
        let stream = self.engine.try_stream(name).ok_or_else(|| {
            Error::NotFound(format!(
                "stream '{name}' does not exist; SHOW STREAMS lists the streams"
            ))
        })?;
        let shards = stream.shards();
        let schema = Arc::new(Schema::new(vec![
            Field::new("shard_id", DataType::Utf8, false),
            Field::new("starting_hash_key", DataType::Utf8, false),
            Field::new("ending_hash_key", DataType::Utf8, false),
            Field::new("parent_shard_id", DataType::Utf8, true),
            Field::new("adjacent_parent_shard_id", DataType::Utf8, true),
            Field::new("starting_sequence_number", DataType::Utf8, false),
            Field::new("ending_sequence_number", DataType::Utf8, true),
            Field::new("records", DataType::UInt64, false),
            Field::new("state", DataType::Utf8, false),
        ]));
        let text = |f: &dyn Fn(&sluice_engine::Shard) -> String| -> ArrayRef {
            Arc::new(StringArray::from_iter_values(shards.iter().map(|s| f(s))))
        };
        let maybe = |f: &dyn Fn(&sluice_engine::Shard) -> Option<String>| -> ArrayRef {
            Arc::new(StringArray::from_iter(shards.iter().map(|s| f(s))))
        };
        let columns: Vec<ArrayRef> = vec![
            text(&|s| shard_id(s.index())),
            text(&|s| s.hash_key_range().start.to_string()),
            text(&|s| s.hash_key_range().end.to_string()),
            maybe(&|s| s.parent().map(shard_id)),
            maybe(&|s| s.adjacent_parent().map(shard_id)),
            text(&|s| format_sequence_number(s.index(), s.trim_horizon())),
            maybe(&|s| {
                s.ending_seq()
                    .map(|end| format_sequence_number(s.index(), end))
            }),
            Arc::new(UInt64Array::from_iter_values(
                shards.iter().map(|s| s.stats().records as u64),
            )),
            text(&|s| if s.is_open() { "OPEN" } else { "CLOSED" }.to_string()),
        ];
        Ok(RecordBatch::try_new(schema, columns)?)
    }

    fn describe_stream(&self, name: &str) -> Result<RecordBatch> {
        let stream = self.engine.stream(name)?;
        let schema = stream.public_schema();
        let schema_out = Arc::new(Schema::new(vec![
            Field::new("column_name", DataType::Utf8, false),
            Field::new("data_type", DataType::Utf8, false),
            Field::new("is_nullable", DataType::Boolean, false),
            Field::new("kind", DataType::Utf8, false),
        ]));
        let fields = schema.fields();
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from_iter_values(
                fields.iter().map(|f| f.name().as_str()),
            )),
            Arc::new(StringArray::from_iter_values(
                fields
                    .iter()
                    .map(|f| crate::types::sql_type_name(f.data_type())),
            )),
            Arc::new(BooleanArray::from_iter(
                fields.iter().map(|f| Some(f.is_nullable())),
            )),
            Arc::new(StringArray::from_iter_values(fields.iter().map(|f| {
                if SYSTEM_COLUMNS.contains(&f.name().as_str()) {
                    "system"
                } else {
                    "column"
                }
            }))),
        ];
        Ok(RecordBatch::try_new(schema_out, columns)?)
    }
}

/// A one-part name as DataFusion resolves it: lower-cased unless quoted.
fn single_name(name: &ObjectName) -> Option<String> {
    let idents: Vec<_> = name.0.iter().filter_map(|p| p.as_ident()).collect();
    let [ident] = idents.as_slice() else {
        return None;
    };
    Some(if ident.quote_style.is_some() {
        ident.value.clone()
    } else {
        ident.value.to_ascii_lowercase()
    })
}

fn rows(batch: RecordBatch) -> Result<StatementOutput> {
    let schema = batch.schema();
    let stream = MemoryStream::try_new(vec![batch], schema, None)?;
    Ok(StatementOutput::Rows(Box::pin(stream)))
}

/// Runs engine work that touches the disk off the async workers.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> sluice_engine::Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| Error::Plan(format!("engine task failed: {e}")))?
        .map_err(Error::from)
}

impl KnownNames for SluiceSession {
    fn relations(&self) -> Vec<String> {
        self.ctx
            .catalog("sluice")
            .and_then(|catalog| catalog.schema("public"))
            .map(|schema| schema.table_names())
            .unwrap_or_default()
    }

    fn columns(&self, name: &str) -> Vec<String> {
        self.engine
            .try_stream(name)
            .map(|stream| {
                stream
                    .public_schema()
                    .fields()
                    .iter()
                    .map(|f| f.name().clone())
                    .collect()
            })
            .unwrap_or_default()
    }
}
