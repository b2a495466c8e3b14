//! The applications of an engine: kept in `applications.json` in its data folder, each run in
//! its own namespace ([`Engine::namespace`]) by its own SQL session.
//!
//! Starting an application creates its in-application input streams (`<NamePrefix>_001` …),
//! reads its reference tables, runs its code (the first time, or after its code or inputs
//! changed), then starts one feed per in-app input stream and one per output. A running
//! application keeps running across restarts: its feeds and pumps resume from their
//! checkpoints. Stopping it stops them where they are; `LAST_STOPPED_POINT` resumes there.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use datafusion::catalog::TableProvider;
use sluice_delivery::options::S3Options;
use sluice_engine::{ERROR_STREAM, Engine, StreamFormat, StreamSpec};
use tokio::sync::Mutex;

use super::error::{ApplicationError, ErrorKind};
use super::feeds::{input_feed, output_feed};
use super::input::InputMapper;
use super::model::{Application, ApplicationStatus, Input, Output, name_in_arn};
use super::reference::read_reference_table;
use crate::pumps::{FeedStart, PumpManager};
use crate::session::SluiceSession;

type Result<T, E = ApplicationError> = std::result::Result<T, E>;

/// A running application: its session (pumps) and its feeds.
struct Running {
    session: SluiceSession,
    feeds: Arc<PumpManager>,
}

#[derive(Default)]
struct State {
    apps: BTreeMap<String, Application>,
    running: HashMap<String, Running>,
}

/// The applications of one engine.
pub struct Applications {
    engine: Engine,
    path: PathBuf,
    state: Arc<Mutex<State>>,
    /// How reference data is read from S3-compatible storage (the environment's settings
    /// unless set).
    reference_s3: parking_lot::Mutex<S3Options>,
}

impl std::fmt::Debug for Applications {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Applications")
            .field("path", &self.path)
            .finish()
    }
}

impl Applications {
    /// The applications saved in `engine`'s data folder; those that were running start again
    /// in the background (calls made meanwhile wait for them).
    pub fn open(engine: Engine) -> crate::Result<Arc<Self>> {
        let path = engine.options().data_dir.join("applications.json");
        let apps: Vec<Application> = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                crate::Error::Plan(format!(
                    "{} is not a list of applications: {e}",
                    path.display()
                ))
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => {
                return Err(crate::Error::Plan(format!(
                    "reading {}: {e}",
                    path.display()
                )));
            }
        };
        let state = State {
            apps: apps
                .into_iter()
                .map(|a| (a.application_name.clone(), a))
                .collect(),
            running: HashMap::new(),
        };
        let resume: Vec<String> = state
            .apps
            .values()
            .filter(|a| {
                matches!(
                    a.application_status,
                    ApplicationStatus::Running | ApplicationStatus::Starting
                )
            })
            .map(|a| a.application_name.clone())
            .collect();
        let applications = Arc::new(Self {
            engine,
            path,
            state: Arc::new(Mutex::new(state)),
            reference_s3: parking_lot::Mutex::new(S3Options::default()),
        });
        if !resume.is_empty() && tokio::runtime::Handle::try_current().is_ok() {
            let mut guard = Arc::clone(&applications.state)
                .try_lock_owned()
                .map_err(|e| crate::Error::Plan(format!("applications are busy: {e}")))?;
            let this = Arc::clone(&applications);
            tokio::spawn(async move {
                for name in resume {
                    if let Err(e) = this.start_locked(&mut guard, &name, None).await {
                        log::error!("application '{name}' could not start again: {e}");
                        if let Some(app) = guard.apps.get_mut(&name) {
                            app.application_status = ApplicationStatus::Ready;
                        }
                        let _ = this.save(&guard);
                    }
                }
            });
        }
        Ok(applications)
    }

    /// Reads reference data with `options` (endpoint, keys) instead of the environment's.
    pub fn set_reference_s3(&self, options: S3Options) {
        *self.reference_s3.lock() = options;
    }

    /// The engine the applications run on.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Every application, by name.
    pub async fn list(&self) -> Vec<Application> {
        self.state.lock().await.apps.values().cloned().collect()
    }

    /// Application `name`.
    pub async fn get(&self, name: &str) -> Result<Application> {
        self.state
            .lock()
            .await
            .apps
            .get(name)
            .cloned()
            .ok_or_else(|| not_found(name))
    }

    /// Adds a new application (READY).
    pub async fn create(&self, app: Application) -> Result<Application> {
        let mut state = self.state.lock().await;
        if state.apps.contains_key(&app.application_name) {
            return Err(ApplicationError::new(
                ErrorKind::ResourceInUse,
                format!("Application {} already exists.", app.application_name),
            ));
        }
        state.apps.insert(app.application_name.clone(), app.clone());
        self.save(&state)?;
        Ok(app)
    }

    /// Changes application `name` with `change`, checking its version first, and bumps the
    /// version. A running application restarts with the change (its code again if the code or
    /// its inputs changed).
    pub async fn update(
        &self,
        name: &str,
        current_version: Option<u64>,
        change: impl FnOnce(&mut Application) -> Result<()>,
    ) -> Result<()> {
        let mut state = self.state.lock().await;
        let app = state.apps.get_mut(name).ok_or_else(|| not_found(name))?;
        if let Some(version) = current_version
            && version != app.application_version_id
        {
            return Err(ApplicationError::new(
                ErrorKind::ConcurrentModification,
                format!(
                    "Current application version is {}, not {version}; describe the application and retry with its version.",
                    app.application_version_id
                ),
            ));
        }
        let previous = app.clone();
        let mut changed = app.clone();
        change(&mut changed)?;
        let only_tags = Application {
            tags: app.tags.clone(),
            ..changed.clone()
        } == *app;
        if only_tags {
            // Tags change nothing that runs, nor the version.
            app.tags = changed.tags;
            return self.save(&state);
        }
        let restarts_code = changed.application_code != app.application_code
            || changed.inputs != app.inputs
            || changed.reference_data_sources != app.reference_data_sources;
        changed.application_version_id += 1;
        changed.last_update_timestamp = now_seconds(&self.engine);
        let was_running = state.running.contains_key(name);
        if was_running {
            self.stop_locked(&mut state, name).await;
        }
        if restarts_code && let Some(app) = state.apps.get_mut(name) {
            app.code_version_run = None;
        }
        if let Some(app) = state.apps.get_mut(name) {
            let code_version_run = app.code_version_run.map(|_| changed.application_version_id);
            *app = Application {
                code_version_run,
                ..changed
            };
        }
        self.save(&state)?;
        if was_running && let Err(e) = self.start_locked(&mut state, name, None).await {
            // The change does not run: put the application back as it was, running, and say
            // why.
            if let Some(app) = state.apps.get_mut(name) {
                *app = Application {
                    code_version_run: None,
                    ..previous
                };
            }
            self.save(&state)?;
            if let Err(again) = self.start_locked(&mut state, name, None).await {
                log::error!("application '{name}' could not start again as it was: {again}");
                if let Some(app) = state.apps.get_mut(name) {
                    app.application_status = ApplicationStatus::Ready;
                }
                self.save(&state)?;
            }
            return Err(e);
        }
        Ok(())
    }

    /// Deletes application `name`: stops it and drops its namespace. `created` must match its
    /// `CreateTimestamp` when given.
    pub async fn delete(&self, name: &str, created: Option<f64>) -> Result<()> {
        let mut state = self.state.lock().await;
        let app = state.apps.get(name).ok_or_else(|| not_found(name))?;
        if let Some(created) = created
            && (created - app.create_timestamp).abs() > 0.001
        {
            return Err(ApplicationError::new(
                ErrorKind::ResourceNotFound,
                format!(
                    "Application {name} with CreateTimestamp {created} not found; it was created at {}.",
                    app.create_timestamp
                ),
            ));
        }
        self.stop_locked(&mut state, name).await;
        self.engine
            .drop_namespace(name)
            .map_err(|e| ApplicationError::new(ErrorKind::ResourceInUse, e.to_string()))?;
        state.apps.remove(name);
        self.save(&state)
    }

    /// Starts application `name`, each input from `positions` (by input id; NOW by default,
    /// as KDA's console does).
    pub async fn start(&self, name: &str, positions: &HashMap<String, String>) -> Result<()> {
        let mut state = self.state.lock().await;
        let app = state.apps.get(name).ok_or_else(|| not_found(name))?;
        if app.application_status != ApplicationStatus::Ready {
            return Err(ApplicationError::new(
                ErrorKind::ResourceInUse,
                format!(
                    "Application {name} is in {} state; only a READY application can start.",
                    app.application_status
                ),
            ));
        }
        if app.inputs.is_empty() {
            return Err(ApplicationError::new(
                ErrorKind::InvalidApplicationConfiguration,
                format!("Application {name} has no input; add one with AddApplicationInput."),
            ));
        }
        for id in positions.keys() {
            if !app.inputs.iter().any(|i| &i.input_id == id) {
                return Err(ApplicationError::invalid(format!(
                    "InputConfigurations: application {name} has no input with Id {id}"
                )));
            }
        }
        self.start_locked(&mut state, name, Some(positions)).await
    }

    /// Stops application `name`; its pumps and feeds keep their positions.
    pub async fn stop(&self, name: &str) -> Result<()> {
        let mut state = self.state.lock().await;
        let app = state.apps.get(name).ok_or_else(|| not_found(name))?;
        if app.application_status == ApplicationStatus::Ready {
            return Ok(());
        }
        self.stop_locked(&mut state, name).await;
        if let Some(app) = state.apps.get_mut(name) {
            app.application_status = ApplicationStatus::Ready;
        }
        self.save(&state)
    }

    /// Waits until every feed and pump of application `name` has processed what its sources
    /// hold.
    pub async fn wait_caught_up(&self, name: &str, timeout: std::time::Duration) -> Result<()> {
        let (session, feeds) = {
            let state = self.state.lock().await;
            let running = state.running.get(name).ok_or_else(|| {
                ApplicationError::new(
                    ErrorKind::ResourceInUse,
                    format!("Application {name} is not running."),
                )
            })?;
            (running.session.clone(), Arc::clone(&running.feeds))
        };
        let deadline = std::time::Instant::now() + timeout;
        // Feeds, then pumps, until both are caught up in the same pass.
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            feeds
                .wait_caught_up(session.engine(), left)
                .await
                .map_err(internal)?;
            session.wait_pumps_caught_up(left).await.map_err(internal)?;
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if feeds
                .wait_caught_up(session.engine(), std::time::Duration::ZERO)
                .await
                .is_ok()
                || left.is_zero()
            {
                return Ok(());
            }
        }
    }

    /// Waits until every running application has caught up ([`Self::wait_caught_up`]).
    pub async fn wait_all_caught_up(&self, timeout: std::time::Duration) -> Result<()> {
        let names: Vec<String> = self.state.lock().await.running.keys().cloned().collect();
        for name in names {
            self.wait_caught_up(&name, timeout).await?;
        }
        Ok(())
    }

    /// Stops every running application's work (they stay RUNNING on disk and start again with
    /// the next [`Applications::open`]).
    pub async fn shutdown(&self) {
        let mut state = self.state.lock().await;
        let names: Vec<String> = state.running.keys().cloned().collect();
        for name in names {
            self.stop_locked(&mut state, &name).await;
        }
    }

    async fn stop_locked(&self, state: &mut State, name: &str) {
        if let Some(running) = state.running.remove(name) {
            running.feeds.stop_all().await;
            running.session.shutdown().await;
        }
    }

    /// Starts application `name`; `positions` `None` resumes every input where it stopped.
    async fn start_locked(
        &self,
        state: &mut State,
        name: &str,
        positions: Option<&HashMap<String, String>>,
    ) -> Result<()> {
        let app = state
            .apps
            .get(name)
            .cloned()
            .ok_or_else(|| not_found(name))?;
        self.stop_locked(state, name).await;
        let fresh = app.code_version_run != Some(app.application_version_id);
        match self.launch(&app, fresh, positions).await {
            Ok(running) => {
                state.running.insert(name.to_string(), running);
                if let Some(app) = state.apps.get_mut(name) {
                    app.application_status = ApplicationStatus::Running;
                    app.code_version_run = Some(app.application_version_id);
                    for input in &mut app.inputs {
                        if let Some(position) =
                            positions.and_then(|p| p.get(&input.input_id)).cloned()
                        {
                            input.input_starting_position_configuration =
                                Some(super::model::StartingPosition {
                                    input_starting_position: position,
                                });
                        }
                    }
                }
                self.save(state)
            }
            Err(e) => {
                if fresh {
                    let _ = self.engine.drop_namespace(name);
                }
                Err(e)
            }
        }
    }

    async fn launch(
        &self,
        app: &Application,
        fresh: bool,
        positions: Option<&HashMap<String, String>>,
    ) -> Result<Running> {
        let name = &app.application_name;
        if fresh {
            self.engine.drop_namespace(name).map_err(|e| {
                ApplicationError::new(
                    ErrorKind::ResourceInUse,
                    format!("Application {name}'s earlier in-application streams could not be removed: {e}"),
                )
            })?;
        }
        let engine = self.engine.namespace(name).map_err(invalid_config)?;
        // In-application input streams, each with its input's columns.
        let mut inputs = Vec::new();
        for input in &app.inputs {
            let mapper = InputMapper::new(&input.input_schema)
                .map_err(|e| ApplicationError::invalid(format!("Input {}: {e}", input.input_id)))?;
            let source = self.source_of(input)?;
            for stream in input.in_app_stream_names() {
                let spec = StreamSpec::with_columns(
                    stream.as_str(),
                    1,
                    StreamFormat::Json,
                    mapper.schema(),
                );
                engine.create_stream(spec, true).map_err(invalid_config)?;
            }
            inputs.push((input, mapper, source));
        }
        // Reference tables before the session, so its saved pumps plan with them.
        let mut tables: Vec<(String, Arc<dyn TableProvider>)> = Vec::new();
        for reference in &app.reference_data_sources {
            let s3 = self.reference_s3.lock().clone();
            let table = read_reference_table(reference, &s3).await?;
            tables.push((reference.table_name.clone(), Arc::new(table)));
        }
        let session = SluiceSession::with_tables(engine.clone(), tables).map_err(invalid_config)?;
        let started = async {
            if fresh && !app.application_code.trim().is_empty() {
                session
                    .execute_all(&app.application_code)
                    .await
                    .map_err(|e| {
                        ApplicationError::new(
                            ErrorKind::CodeValidation,
                            format!("Application {name}'s code did not run: {e}"),
                        )
                    })?;
            }
            let feeds = Arc::new(PumpManager::default());
            let errors = engine.stream(ERROR_STREAM).map_err(invalid_config)?;
            for (input, mapper, source) in inputs {
                let start = match positions.and_then(|p| p.get(&input.input_id)) {
                    None if positions.is_none() => FeedStart::Resume,
                    None => FeedStart::Now,
                    Some(position) => starting_position(position)?,
                };
                let streams = input.in_app_stream_names();
                let of = streams.len() as u32;
                for (index, stream) in streams.iter().enumerate() {
                    let target = engine.stream(stream).map_err(invalid_config)?;
                    feeds
                        .start_feed(
                            &engine,
                            input_feed(
                                format!("$input_{}_{stream}", input.input_id),
                                Arc::clone(&source),
                                target,
                                Arc::clone(&errors),
                                mapper.clone(),
                                (index as u32, of),
                                start,
                            ),
                        )
                        .map_err(invalid_config)?;
                }
            }
            for output in &app.outputs {
                let (source, target, format) = self.output_ends(&engine, output)?;
                feeds
                    .start_feed(
                        &engine,
                        output_feed(
                            format!("$output_{}", output.output_id),
                            source,
                            target,
                            format,
                            // Outputs deliver everything their in-app stream holds, once.
                            FeedStart::Resume,
                        ),
                    )
                    .map_err(invalid_config)?;
            }
            Ok(feeds)
        };
        match started.await {
            Ok(feeds) => Ok(Running { session, feeds }),
            Err(e) => {
                session.shutdown().await;
                Err(e)
            }
        }
    }

    /// The stream an input reads.
    fn source_of(&self, input: &Input) -> Result<Arc<sluice_engine::Stream>> {
        let Some(resource) = &input.kinesis_streams_input else {
            return Err(ApplicationError::new(
                ErrorKind::UnsupportedOperation,
                format!(
                    "Input {}: only KinesisStreamsInput is supported; read a delivery stream's records from its source stream instead",
                    input.input_id
                ),
            ));
        };
        let stream = name_in_arn(&resource.resource_arn, "kinesis", "stream").ok_or_else(|| {
            ApplicationError::invalid(format!(
                "KinesisStreamsInput.ResourceARN '{}' is not a Kinesis stream ARN",
                resource.resource_arn
            ))
        })?;
        self.engine.stream(stream).map_err(|_| {
            ApplicationError::new(
                ErrorKind::InvalidApplicationConfiguration,
                format!(
                    "Input {}: stream {stream} (KinesisStreamsInput.ResourceARN) does not exist",
                    input.input_id
                ),
            )
        })
    }

    /// An output's in-app stream, the stream its records go into, and their format.
    fn output_ends(
        &self,
        engine: &Engine,
        output: &Output,
    ) -> Result<(
        Arc<sluice_engine::Stream>,
        Arc<sluice_engine::Stream>,
        StreamFormat,
    )> {
        let source = engine.stream(&output.name).map_err(|_| {
            ApplicationError::new(
                ErrorKind::InvalidApplicationConfiguration,
                format!(
                    "Output {}: in-application stream {} does not exist; the application code must create it (CREATE OR REPLACE STREAM \"{}\" …)",
                    output.output_id, output.name, output.name
                ),
            )
        })?;
        let target = if let Some(resource) = &output.kinesis_streams_output {
            let name =
                name_in_arn(&resource.resource_arn, "kinesis", "stream").ok_or_else(|| {
                    ApplicationError::invalid(format!(
                        "KinesisStreamsOutput.ResourceARN '{}' is not a Kinesis stream ARN",
                        resource.resource_arn
                    ))
                })?;
            self.engine.stream(name).map_err(|_| {
                ApplicationError::new(
                    ErrorKind::InvalidApplicationConfiguration,
                    format!("Output {}: stream {name} does not exist", output.output_id),
                )
            })?
        } else if let Some(resource) = &output.kinesis_firehose_output {
            let name = name_in_arn(&resource.resource_arn, "firehose", "deliverystream")
                .ok_or_else(|| {
                    ApplicationError::invalid(format!(
                        "KinesisFirehoseOutput.ResourceARN '{}' is not a Firehose delivery stream ARN",
                        resource.resource_arn
                    ))
                })?;
            let delivery = self
                .engine
                .deliveries()
                .into_iter()
                .find(|d| d.name == name)
                .ok_or_else(|| {
                    ApplicationError::new(
                        ErrorKind::InvalidApplicationConfiguration,
                        format!(
                            "Output {}: delivery stream {name} does not exist",
                            output.output_id
                        ),
                    )
                })?;
            self.engine
                .stream(&delivery.source)
                .map_err(invalid_config)?
        } else {
            return Err(ApplicationError::invalid(format!(
                "Output {} names no destination",
                output.output_id
            )));
        };
        let format = match output
            .destination_schema
            .record_format_type
            .to_ascii_uppercase()
            .as_str()
        {
            "JSON" => StreamFormat::Json,
            "CSV" => StreamFormat::Csv,
            other => {
                return Err(ApplicationError::invalid(format!(
                    "Output {}: DestinationSchema.RecordFormatType '{other}' is not JSON or CSV",
                    output.output_id
                )));
            }
        };
        Ok((source, target, format))
    }

    /// Writes every application to `applications.json`, durably.
    fn save(&self, state: &State) -> Result<()> {
        let apps: Vec<&Application> = state.apps.values().collect();
        sluice_engine::write_json_durably(&self.path, &apps, "applications")
            .map_err(|e| ApplicationError::internal(e.to_string()))
    }
}

/// Seconds since the epoch on the engine's clock, as KDA's timestamps are.
pub fn now_seconds(engine: &Engine) -> f64 {
    engine.clock().now_millis() as f64 / 1000.0
}

fn starting_position(position: &str) -> Result<FeedStart> {
    match position {
        "NOW" => Ok(FeedStart::Now),
        "TRIM_HORIZON" => Ok(FeedStart::TrimHorizon),
        "LAST_STOPPED_POINT" => Ok(FeedStart::Resume),
        other => Err(ApplicationError::invalid(format!(
            "InputStartingPosition '{other}' is not NOW, TRIM_HORIZON or LAST_STOPPED_POINT"
        ))),
    }
}

fn not_found(name: &str) -> ApplicationError {
    ApplicationError::new(
        ErrorKind::ResourceNotFound,
        format!("Application {name} not found."),
    )
}

fn invalid_config(e: impl Into<crate::Error>) -> ApplicationError {
    ApplicationError::new(
        ErrorKind::InvalidApplicationConfiguration,
        e.into().to_string(),
    )
}

fn internal(e: crate::Error) -> ApplicationError {
    ApplicationError::internal(e.to_string())
}
