//! The engine: the catalog of streams in one data folder, and the background work that seals
//! tails and expires old records.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use parking_lot::{Mutex, RwLock};

use crate::cache::CacheStats;
use crate::catalog::{
    Catalog, ColumnDefinition, DEFAULT_RETENTION_HOURS, DeliveryDefinition, MAX_RETENTION_HOURS,
    MIN_RETENTION_HOURS, PumpCheckpoint, PumpDefinition, ShardDefinition, SourceDefinition,
    StreamDefinition, WatermarkDefinition,
};
use crate::clock::{Clock, SystemClock};
use crate::error::{Error, Result};
use crate::format::StreamFormat;
use crate::routing::even_split;
use crate::schema::validate_user_schema;
use crate::stream::{Reshard, Stream, StreamRuntime};

/// The name of the stream that collects records that did not decode.
pub const ERROR_STREAM: &str = "error_stream";

/// Between a namespace and a stream's name inside the engine (`app:SOURCE_SQL_STREAM_001`).
pub const NAMESPACE_SEPARATOR: char = ':';

/// The namespace that holds each Firehose direct-put delivery stream's records, in a stream
/// named like the delivery stream (`firehose:clicks`). Applications cannot take this name.
pub const DIRECT_PUT_NAMESPACE: &str = "firehose";

/// How hard an append works to make its records survive a crash before it returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// `fsync` the write-ahead log before acknowledging (survives power loss).
    #[default]
    Fsync,
    /// Hand the write to the operating system and return (survives a process crash, not a
    /// power loss). Faster; opt in.
    Buffered,
}

/// How to open an engine.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// The folder holding the catalog, segments and logs.
    pub data_dir: PathBuf,
    pub durability: Durability,
    /// The processing-time clock (`ROWTIME`, retention).
    pub clock: Arc<dyn Clock>,
    /// Seal a shard's tail once it holds this many records…
    pub seal_rows: usize,
    /// …or this many bytes…
    pub seal_bytes: usize,
    /// …or its oldest record has waited this long.
    pub seal_after: Duration,
    /// Run a background thread that seals aged tails and expires old records.
    pub background: bool,
    /// At most this many bytes of sealed segments stay in memory (shared by every stream);
    /// older records are read from disk when a reader reaches them.
    pub cache_bytes: usize,
}

/// The default [`EngineOptions::cache_bytes`]: 256 MiB.
pub const DEFAULT_CACHE_BYTES: usize = 256 * 1024 * 1024;

impl EngineOptions {
    /// Defaults for a data folder: fsync durability, the system clock, background sealing.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            durability: Durability::Fsync,
            clock: Arc::new(SystemClock),
            seal_rows: 16 * 1024,
            seal_bytes: 8 * 1024 * 1024,
            seal_after: Duration::from_secs(1),
            background: true,
            cache_bytes: DEFAULT_CACHE_BYTES,
        }
    }

    /// Uses `clock` for processing time.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Sets the durability of appends.
    pub fn with_durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }

    /// Turns the background sealer on or off (tests turn it off for determinism).
    pub fn with_background(mut self, background: bool) -> Self {
        self.background = background;
        self
    }

    /// Bounds the memory sealed segments may take (see [`EngineOptions::cache_bytes`]).
    pub fn with_cache_bytes(mut self, bytes: usize) -> Self {
        self.cache_bytes = bytes;
        self
    }
}

/// What a new stream looks like.
#[derive(Debug, Clone)]
pub struct StreamSpec {
    pub name: String,
    pub columns: SchemaRef,
    pub format: StreamFormat,
    pub shards: u32,
    pub partition_key: Option<String>,
    pub retention_hours: u32,
    /// `WATERMARK FOR column AS column - delay`.
    pub watermark: Option<WatermarkDefinition>,
    /// A built-in generator that feeds the stream (`source = 'demo'`).
    pub source: Option<SourceDefinition>,
}

impl StreamSpec {
    /// A `raw` stream (no columns) with `shards` shards and default retention.
    pub fn raw(name: impl Into<String>, shards: u32) -> Self {
        Self {
            name: name.into(),
            columns: Arc::new(Schema::empty()),
            format: StreamFormat::Raw,
            shards,
            partition_key: None,
            retention_hours: DEFAULT_RETENTION_HOURS,
            watermark: None,
            source: None,
        }
    }

    /// A stream of `format` records decoded into `columns`.
    pub fn with_columns(
        name: impl Into<String>,
        shards: u32,
        format: StreamFormat,
        columns: SchemaRef,
    ) -> Self {
        Self {
            columns,
            format,
            ..Self::raw(name, shards)
        }
    }
}

/// An embedded Sluice engine over one data folder. Cheap to clone; clones share the engine.
#[derive(Debug, Clone)]
pub struct Engine {
    inner: Arc<EngineInner>,
    _background: Option<Arc<BackgroundTask>>,
    /// The namespace this handle sees ([`Engine::namespace`]); `None` for the engine's own.
    namespace: Option<Arc<str>>,
}

#[derive(Debug)]
struct EngineInner {
    options: EngineOptions,
    runtime: StreamRuntime,
    catalog: Mutex<Catalog>,
    streams: RwLock<BTreeMap<String, Arc<Stream>>>,
    /// Held for the engine's life so a second process cannot open the same folder.
    _lock: fs::File,
}

impl Engine {
    /// Opens the engine on `options.data_dir`, creating it if needed and recovering every
    /// stream's segments and write-ahead log.
    pub fn open(options: EngineOptions) -> Result<Self> {
        let dir = options.data_dir.clone();
        fs::create_dir_all(dir.join("streams"))
            .and_then(|_| fs::create_dir_all(dir.join("pumps")))
            .map_err(|e| Error::io("creating data folder", &dir, e))?;
        let lock_path = dir.join("LOCK");
        let lock = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| Error::io("opening lock file", &lock_path, e))?;
        lock.try_lock().map_err(|_| {
            Error::InvalidArgument(format!(
                "data folder {0} is in use by another Sluice process; one process owns a data folder at a time: run `sluice serve --data-dir {0}` and connect to it with `sluice --connect grpc://127.0.0.1:50051` (as many as you like), or give this one another --data-dir",
                dir.display()
            ))
        })?;
        let catalog = Catalog::load(&dir.join("catalog.json"))?;
        let runtime = StreamRuntime::from_options(&options);
        let inner = Arc::new(EngineInner {
            options,
            runtime,
            catalog: Mutex::new(catalog),
            streams: RwLock::new(BTreeMap::new()),
            _lock: lock,
        });
        inner.recover()?;
        let background = inner
            .options
            .background
            .then(|| Arc::new(BackgroundTask::spawn(Arc::downgrade(&inner))));
        Ok(Self {
            inner,
            _background: background,
            namespace: None,
        })
    }

    /// A handle on the same engine that sees only the streams and pumps of namespace `name`
    /// (a Kinesis Data Analytics application's in-app streams), under their own names: two
    /// namespaces can both hold `SOURCE_SQL_STREAM_001`. The namespace's own `error_stream`
    /// is created on first use and collects its streams' decoding failures. Inside the
    /// engine a namespaced stream is called `namespace:name` (`:` is not allowed in names, so
    /// nothing else can collide with it); handles accept that qualified form too.
    pub fn namespace(&self, name: &str) -> Result<Self> {
        validate_stream_name(name).map_err(|_| {
            Error::InvalidArgument(format!(
                "namespace '{name}' is not valid; names are 1 to 128 characters of letters, digits, '_', '-' and '.'"
            ))
        })?;
        let handle = Self {
            inner: Arc::clone(&self.inner),
            _background: self._background.clone(),
            namespace: Some(Arc::from(name)),
        };
        let errors = handle.qualify(ERROR_STREAM).into_owned();
        let mut catalog = self.inner.catalog.lock();
        if !self.inner.streams.read().contains_key(&errors) {
            let mut definition = error_stream_definition(
                catalog.next_stream_id,
                self.inner.options.clock.now_millis(),
            );
            definition.name = errors.clone();
            // Kinesis Data Analytics's error columns first, then Sluice's.
            let timestamp = DataType::Timestamp(arrow::datatypes::TimeUnit::Millisecond, None);
            let kda = [
                ("ERROR_TIME", timestamp.clone()),
                ("ERROR_LEVEL", DataType::Utf8),
                ("ERROR_NAME", DataType::Utf8),
                ("MESSAGE", DataType::Utf8),
                ("DATA_ROWTIME", timestamp),
                ("DATA_ROW", DataType::Utf8),
                ("PUMP_NAME", DataType::Utf8),
            ];
            let mut columns: Vec<ColumnDefinition> = kda
                .into_iter()
                .map(|(name, data_type)| ColumnDefinition {
                    name: name.to_string(),
                    data_type: data_type.to_string(),
                })
                .collect();
            columns.append(&mut definition.columns);
            definition.columns = columns;
            let stream = self.inner.open_stream(definition.clone())?;
            catalog.next_stream_id += 1;
            catalog.streams.push(definition);
            catalog.save(&self.inner.catalog_path())?;
            self.inner.streams.write().insert(errors, stream);
        }
        Ok(handle)
    }

    /// The namespace this handle sees, if it is not the engine's own.
    pub fn namespace_name(&self) -> Option<&str> {
        self.namespace.as_deref()
    }

    /// The namespaces that hold streams, by name.
    pub fn namespaces(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .inner
            .streams
            .read()
            .keys()
            .filter_map(|name| {
                name.split_once(NAMESPACE_SEPARATOR)
                    .map(|(ns, _)| ns.to_string())
            })
            .collect();
        names.dedup();
        names
    }

    /// Deletes namespace `name`: its pumps, their positions, and its streams with their
    /// records. Delivery streams reading its streams must be dropped first.
    pub fn drop_namespace(&self, name: &str) -> Result<()> {
        let handle = Self {
            namespace: Some(Arc::from(name)),
            ..self.clone()
        };
        for pump in handle.pumps() {
            handle.drop_pump(&pump.name)?;
        }
        let mut streams: Vec<String> = handle
            .streams()
            .iter()
            .map(|s| handle.local_name(s.name()).to_string())
            .collect();
        // The error stream last: the others report into it until they are gone.
        streams.sort_by_key(|s| s == ERROR_STREAM);
        for stream in streams {
            handle.remove_stream(&handle.qualify(&stream))?;
        }
        Ok(())
    }

    /// `name` as the engine knows it: qualified with this handle's namespace unless it
    /// already is.
    pub fn qualify<'a>(&self, name: &'a str) -> std::borrow::Cow<'a, str> {
        match &self.namespace {
            Some(ns) if !name.contains(NAMESPACE_SEPARATOR) => {
                std::borrow::Cow::Owned(format!("{ns}{NAMESPACE_SEPARATOR}{name}"))
            }
            _ => std::borrow::Cow::Borrowed(name),
        }
    }

    /// `name` as this handle's users know it: without this handle's namespace.
    pub fn local_name<'a>(&self, name: &'a str) -> &'a str {
        match &self.namespace {
            Some(ns) => name
                .strip_prefix(ns.as_ref())
                .and_then(|rest| rest.strip_prefix(NAMESPACE_SEPARATOR))
                .unwrap_or(name),
            None => name,
        }
    }

    /// Whether engine-wide stream name `name` is in this handle's namespace.
    fn sees(&self, name: &str) -> bool {
        match (&self.namespace, name.split_once(NAMESPACE_SEPARATOR)) {
            (None, None) => true,
            (Some(ns), Some((prefix, _))) => prefix == ns.as_ref(),
            _ => false,
        }
    }

    /// The engine's options.
    pub fn options(&self) -> &EngineOptions {
        &self.inner.options
    }

    /// The processing-time clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.inner.options.clock
    }

    /// What the segment cache holds now (every stream shares it).
    pub fn cache_stats(&self) -> CacheStats {
        self.inner.runtime.cache.stats()
    }

    /// Creates a stream. With `if_not_exists`, an existing stream of that name is left as is.
    pub fn create_stream(&self, spec: StreamSpec, if_not_exists: bool) -> Result<Arc<Stream>> {
        let columns = validate_spec(&spec)?;
        let spec = StreamSpec {
            name: self.qualify(&spec.name).into_owned(),
            ..spec
        };
        let mut catalog = self.inner.catalog.lock();
        if let Some(existing) = self.inner.streams.read().get(&spec.name) {
            if if_not_exists {
                return Ok(Arc::clone(existing));
            }
            return Err(Error::StreamAlreadyExists(
                self.local_name(&spec.name).to_string(),
            ));
        }
        let definition = StreamDefinition {
            id: catalog.next_stream_id,
            name: spec.name.clone(),
            columns: columns
                .fields()
                .iter()
                .map(|f| ColumnDefinition {
                    name: f.name().clone(),
                    data_type: f.data_type().to_string(),
                })
                .collect(),
            format: spec.format,
            partition_key: spec.partition_key,
            retention_hours: spec.retention_hours,
            shards: even_split(spec.shards)
                .into_iter()
                .enumerate()
                .map(|(index, range)| ShardDefinition {
                    index: index as u32,
                    hash_key_range: range,
                    parent: None,
                    adjacent_parent: None,
                    ending_seq: None,
                })
                .collect(),
            created_at_ms: self.inner.options.clock.now_millis(),
            watermark: spec.watermark,
            tags: BTreeMap::new(),
            source: spec.source,
        };
        let stream = self.inner.open_stream(definition.clone())?;
        catalog.next_stream_id += 1;
        catalog.streams.push(definition);
        catalog.save(&self.inner.catalog_path())?;
        self.inner
            .streams
            .write()
            .insert(spec.name, Arc::clone(&stream));
        Ok(stream)
    }

    /// Drops a stream and deletes its records. With `if_exists`, a missing stream is no error.
    pub fn drop_stream(&self, name: &str, if_exists: bool) -> Result<()> {
        if self.local_name(name) == ERROR_STREAM {
            return Err(Error::InvalidArgument(format!(
                "'{ERROR_STREAM}' is a system stream and cannot be dropped"
            )));
        }
        match self.remove_stream(&self.qualify(name)) {
            Err(Error::StreamNotFound(_)) if if_exists => Ok(()),
            other => other,
        }
    }

    /// Drops stream `name` (qualified) unless a pump or delivery stream uses it.
    fn remove_stream(&self, name: &str) -> Result<()> {
        let mut catalog = self.inner.catalog.lock();
        if let Some(delivery) = catalog.deliveries.iter().find(|d| d.source == name) {
            return Err(Error::InvalidArgument(format!(
                "stream '{name}' feeds delivery stream '{}'; DROP DELIVERY STREAM {} first",
                delivery.name, delivery.name
            )));
        }
        if let Some((pump, writes)) = catalog.pumps.iter().find_map(|p| {
            if p.writes.as_deref() == Some(name) {
                return Some((p.name.clone(), true));
            }
            let reads = if p.reads.is_empty() {
                // Pumps saved before their streams were recorded: the streams of their
                // saved positions.
                self.pump_checkpoint(&p.name)
                    .is_ok_and(|c| c.positions.iter().any(|(s, _, _)| s == name))
            } else {
                p.reads.iter().any(|r| r == name)
            };
            reads.then(|| (p.name.clone(), false))
        }) {
            return Err(Error::InvalidArgument(format!(
                "stream '{name}' is {} by pump '{pump}'; DROP PUMP {pump} first",
                if writes { "written" } else { "read" }
            )));
        }
        let Some(stream) = self.inner.streams.write().remove(name) else {
            return Err(Error::StreamNotFound(self.local_name(name).to_string()));
        };
        // Readers following it (continuous queries, subscriptions) end, saying why.
        stream.mark_dropped();
        catalog.streams.retain(|s| s.name != name);
        catalog.save(&self.inner.catalog_path())?;
        let dir = stream.dir().to_path_buf();
        drop(stream);
        fs::remove_dir_all(&dir).map_err(|e| Error::io("deleting stream folder", &dir, e))?;
        Ok(())
    }

    /// Changes how long `name` keeps its records (24–8760 hours); records already older than
    /// a shorter retention expire with the next sweep.
    pub fn set_retention(&self, name: &str, hours: u32) -> Result<()> {
        if !(MIN_RETENTION_HOURS..=MAX_RETENTION_HOURS).contains(&hours) {
            return Err(Error::InvalidArgument(format!(
                "retention of {hours} hour{} is outside {MIN_RETENTION_HOURS}–{MAX_RETENTION_HOURS} hours",
                if hours == 1 { "" } else { "s" }
            )));
        }
        let name = &self.qualify(name);
        let mut catalog = self.inner.catalog.lock();
        let stream = self.stream(name)?;
        catalog.update_stream(&self.inner.catalog_path(), name, |d| {
            d.retention_hours = hours;
        })?;
        stream.set_retention_hours(hours);
        Ok(())
    }

    /// Changes how stream `name` decodes its records — format, columns, partition key and
    /// watermark from `spec` (its name, shards and retention are ignored) — for every record it
    /// retains as well as new ones: its segments are decoded again from each record's data.
    /// Refused while anything reads the stream continuously (pumps, delivery streams,
    /// subscriptions), since they hold the old columns.
    pub fn alter_stream(&self, name: &str, spec: StreamSpec) -> Result<Arc<Stream>> {
        if self.local_name(name) == ERROR_STREAM {
            return Err(Error::InvalidArgument(format!(
                "'{ERROR_STREAM}' is a system stream and cannot be altered"
            )));
        }
        let columns = validate_spec(&StreamSpec {
            name: self.local_name(name).to_string(),
            ..spec.clone()
        })?;
        let name = &self.qualify(name).into_owned();
        let mut catalog = self.inner.catalog.lock();
        let stream = self.stream(name)?;
        if let Some(delivery) = catalog.deliveries.iter().find(|d| d.source == *name) {
            return Err(Error::InvalidArgument(format!(
                "stream '{name}' feeds delivery stream '{}'; DROP DELIVERY STREAM {} before altering it",
                delivery.name, delivery.name
            )));
        }
        let readers = stream.followers();
        if readers > 0 {
            return Err(Error::InvalidArgument(format!(
                "stream '{name}' is being read continuously ({readers} reader{}: pumps, continuous queries or subscriptions); stop them before altering it",
                if readers == 1 { "" } else { "s" }
            )));
        }
        let position = catalog.position(name)?;
        let before = catalog.streams[position].clone();
        let mut definition = before.clone();
        definition.format = spec.format;
        definition.columns = columns
            .fields()
            .iter()
            .map(|f| ColumnDefinition {
                name: f.name().clone(),
                data_type: f.data_type().to_string(),
            })
            .collect();
        definition.partition_key = spec.partition_key;
        definition.watermark = spec.watermark;
        definition.shards = stream.shard_definitions();
        definition.retention_hours = stream.retention_hours();
        let path = self.inner.catalog_path();
        let inner = &self.inner;
        let replaced = stream.retire(|| {
            catalog.streams[position] = definition.clone();
            catalog.save(&path)?;
            inner.open_stream(definition)
        });
        match replaced {
            Ok(new) => {
                self.inner
                    .streams
                    .write()
                    .insert(name.to_string(), Arc::clone(&new));
                Ok(new)
            }
            Err(e) => {
                catalog.streams[position] = before;
                catalog.save(&path)?;
                Err(e)
            }
        }
    }

    /// Splits or merges shards of stream `name` (Kinesis's SplitShard, MergeShards and
    /// UpdateShardCount), durably. Parents are closed with their ending sequence numbers and
    /// children opened with their lineage, for every reader and SQL alike. Returns the indexes
    /// of the shards opened.
    pub fn reshard(&self, name: &str, change: Reshard) -> Result<Vec<u32>> {
        if self.local_name(name) == ERROR_STREAM {
            return Err(Error::InvalidArgument(format!(
                "'{ERROR_STREAM}' is a system stream and cannot be resharded"
            )));
        }
        let name = &self.qualify(name);
        let mut catalog = self.inner.catalog.lock();
        let stream = self.stream(name)?;
        let path = self.inner.catalog_path();
        stream.reshard(change, |shards| {
            catalog.update_stream(&path, name, |d| d.shards = shards.to_vec())
        })
    }

    /// The tags of stream `name`.
    pub fn stream_tags(&self, name: &str) -> Result<BTreeMap<String, String>> {
        Ok(self
            .inner
            .catalog
            .lock()
            .stream(&self.qualify(name))?
            .tags
            .clone())
    }

    /// Replaces the tags of stream `name`, durably.
    pub fn set_stream_tags(&self, name: &str, tags: BTreeMap<String, String>) -> Result<()> {
        let path = self.inner.catalog_path();
        self.inner
            .catalog
            .lock()
            .update_stream(&path, &self.qualify(name), |d| d.tags = tags)
    }

    /// The stream called `name`.
    pub fn stream(&self, name: &str) -> Result<Arc<Stream>> {
        self.try_stream(name)
            .ok_or_else(|| Error::StreamNotFound(self.local_name(name).to_string()))
    }

    /// The stream whose full name (its namespace included, as [`Stream::name`] gives it) is
    /// `full_name`, whatever namespace this handle is for: a reader that follows a stream of
    /// another namespace (an application reading its input) finds it again by its name.
    pub fn stream_by_full_name(&self, full_name: &str) -> Option<Arc<Stream>> {
        self.inner.streams.read().get(full_name).cloned()
    }

    /// The stream called `name`, if there is one.
    pub fn try_stream(&self, name: &str) -> Option<Arc<Stream>> {
        self.inner
            .streams
            .read()
            .get(self.qualify(name).as_ref())
            .cloned()
    }

    /// Every stream this handle sees (its namespace's), by name.
    pub fn streams(&self) -> Vec<Arc<Stream>> {
        self.inner
            .streams
            .read()
            .iter()
            .filter(|(name, _)| self.sees(name))
            .map(|(_, stream)| Arc::clone(stream))
            .collect()
    }

    /// Every stream of every namespace.
    fn all_streams(&self) -> Vec<Arc<Stream>> {
        self.inner.streams.read().values().cloned().collect()
    }

    /// Seals every tail: afterwards everything appended before the call is in segments (and was
    /// already visible to readers). The barrier `FLUSH` builds on.
    pub fn flush(&self) -> Result<()> {
        for stream in self.all_streams() {
            stream.seal(true)?;
        }
        Ok(())
    }

    /// Every pump in the catalog.
    pub fn pumps(&self) -> Vec<PumpDefinition> {
        self.inner
            .catalog
            .lock()
            .pumps
            .iter()
            .filter(|p| self.sees(&p.name))
            .map(|p| PumpDefinition {
                name: self.local_name(&p.name).to_string(),
                reads: p
                    .reads
                    .iter()
                    .map(|r| self.local_name(r).to_string())
                    .collect(),
                writes: p.writes.as_deref().map(|w| self.local_name(w).to_string()),
                ..p.clone()
            })
            .collect()
    }

    /// Adds a pump to the catalog, or replaces the one of the same name.
    pub fn save_pump(&self, pump: PumpDefinition) -> Result<()> {
        let pump = PumpDefinition {
            name: self.qualify(&pump.name).into_owned(),
            reads: pump
                .reads
                .iter()
                .map(|r| self.qualify(r).into_owned())
                .collect(),
            writes: pump.writes.as_deref().map(|w| self.qualify(w).into_owned()),
            ..pump
        };
        let mut catalog = self.inner.catalog.lock();
        match catalog.pumps.iter_mut().find(|p| p.name == pump.name) {
            Some(existing) => *existing = pump,
            None => catalog.pumps.push(pump),
        }
        catalog.save(&self.inner.catalog_path())
    }

    /// Removes a pump and its saved read positions. Returns whether it existed.
    pub fn drop_pump(&self, name: &str) -> Result<bool> {
        let name = &self.qualify(name);
        let mut catalog = self.inner.catalog.lock();
        let before = catalog.pumps.len();
        catalog.pumps.retain(|p| p.name != name.as_ref());
        if catalog.pumps.len() == before {
            return Ok(false);
        }
        catalog.save(&self.inner.catalog_path())?;
        remove_if_present(&self.pump_positions_path(name))?;
        Ok(true)
    }

    /// Every delivery stream in the catalog.
    pub fn deliveries(&self) -> Vec<DeliveryDefinition> {
        // Delivery streams live in the engine's own namespace.
        if self.namespace.is_some() {
            return Vec::new();
        }
        self.inner.catalog.lock().deliveries.clone()
    }

    /// Adds a delivery stream to the catalog, or replaces the one of the same name.
    pub fn save_delivery(&self, delivery: DeliveryDefinition) -> Result<()> {
        let mut catalog = self.inner.catalog.lock();
        match catalog
            .deliveries
            .iter_mut()
            .find(|d| d.name == delivery.name)
        {
            Some(existing) => *existing = delivery,
            None => catalog.deliveries.push(delivery),
        }
        catalog.save(&self.inner.catalog_path())
    }

    /// Removes a delivery stream and its saved positions. Returns whether it existed.
    pub fn drop_delivery(&self, name: &str) -> Result<bool> {
        let mut catalog = self.inner.catalog.lock();
        let before = catalog.deliveries.len();
        catalog.deliveries.retain(|d| d.name != name);
        if catalog.deliveries.len() == before {
            return Ok(false);
        }
        catalog.save(&self.inner.catalog_path())?;
        remove_if_present(&self.positions_path("deliveries", name))?;
        Ok(true)
    }

    /// Saves how far a delivery stream has delivered, durably (written, synced, renamed).
    pub fn save_delivery_positions(&self, name: &str, positions: &PumpCheckpoint) -> Result<()> {
        let path = self.positions_path("deliveries", name);
        write_json_durably(&path, positions, "delivery positions")
    }

    /// How far a delivery stream had delivered when it last saved (empty if it never did).
    pub fn delivery_positions(&self, name: &str) -> Result<PumpCheckpoint> {
        read_json_or_default(
            &self.positions_path("deliveries", name),
            "delivery positions",
        )
    }

    /// Saves how far a pump has got.
    pub fn save_pump_checkpoint(&self, name: &str, checkpoint: &PumpCheckpoint) -> Result<()> {
        let path = self.pump_positions_path(name);
        let tmp = path.with_extension("json.tmp");
        let bytes = serde_json::to_vec(checkpoint).map_err(|e| Error::Corrupt {
            what: "pump checkpoint",
            path: path.clone(),
            reason: e.to_string(),
        })?;
        fs::write(&tmp, bytes)
            .and_then(|_| fs::rename(&tmp, &path))
            .map_err(|e| Error::io("saving pump checkpoint", &path, e))
    }

    /// How far a pump had got when it last saved (empty if it never did).
    pub fn pump_checkpoint(&self, name: &str) -> Result<PumpCheckpoint> {
        let path = self.pump_positions_path(name);
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| Error::Corrupt {
                what: "pump checkpoint",
                path,
                reason: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(PumpCheckpoint::default()),
            Err(e) => Err(Error::io("reading pump checkpoint", &path, e)),
        }
    }

    fn pump_positions_path(&self, name: &str) -> PathBuf {
        self.positions_path("pumps", name)
    }

    fn positions_path(&self, kind: &str, name: &str) -> PathBuf {
        self.inner
            .options
            .data_dir
            .join(kind)
            .join(format!("{}.positions.json", self.qualify(name)))
    }

    /// Expires records older than each stream's retention. Returns how many expired.
    pub fn expire(&self) -> Result<usize> {
        let mut expired = 0;
        for stream in self.all_streams() {
            expired += stream.expire()?;
        }
        Ok(expired)
    }
}

impl EngineInner {
    fn catalog_path(&self) -> PathBuf {
        self.options.data_dir.join("catalog.json")
    }

    fn stream_dir(&self, id: u64) -> PathBuf {
        self.options.data_dir.join("streams").join(id.to_string())
    }

    fn open_stream(&self, definition: StreamDefinition) -> Result<Arc<Stream>> {
        let dir = self.stream_dir(definition.id);
        let errors = match definition.name.split_once(NAMESPACE_SEPARATOR) {
            _ if is_error_stream(&definition.name) => None,
            Some((namespace, _)) => self
                .streams
                .read()
                .get(&format!("{namespace}{NAMESPACE_SEPARATOR}{ERROR_STREAM}"))
                .cloned(),
            None => self.streams.read().get(ERROR_STREAM).cloned(),
        };
        Stream::open(definition, dir, self.runtime.clone(), errors)
    }

    /// Opens every stream in the catalog, the error stream first (others report into it).
    fn recover(&self) -> Result<()> {
        let mut catalog = self.catalog.lock();
        if !catalog.streams.iter().any(|s| s.name == ERROR_STREAM) {
            let definition =
                error_stream_definition(catalog.next_stream_id, self.options.clock.now_millis());
            catalog.next_stream_id += 1;
            catalog.streams.insert(0, definition);
            catalog.save(&self.catalog_path())?;
        }
        let mut definitions = catalog.streams.clone();
        definitions.sort_by_key(|d| !is_error_stream(&d.name));
        for definition in definitions {
            let name = definition.name.clone();
            let stream = self.open_stream(definition)?;
            self.streams.write().insert(name, stream);
        }
        remove_orphan_folders(&self.options.data_dir.join("streams"), &catalog)?;
        Ok(())
    }

    fn background_pass(&self) {
        let streams: Vec<Arc<Stream>> = self.streams.read().values().cloned().collect();
        for stream in streams {
            if let Err(e) = stream.seal(false) {
                log::error!("sealing stream '{}': {e}", stream.name());
            }
            if let Err(e) = stream.expire() {
                log::error!("expiring records of stream '{}': {e}", stream.name());
            }
            if let Err(e) = stream.compact() {
                log::error!("merging small segments of stream '{}': {e}", stream.name());
            }
        }
    }
}

/// Whether engine-wide name `name` is the engine's or a namespace's error stream.
fn is_error_stream(name: &str) -> bool {
    name.rsplit(NAMESPACE_SEPARATOR).next() == Some(ERROR_STREAM)
}

fn error_stream_definition(id: u64, now_ms: i64) -> StreamDefinition {
    let columns = ["stream_name", "shard_id", "sequence_number", "reason"]
        .into_iter()
        .map(|name| ColumnDefinition {
            name: name.to_string(),
            data_type: DataType::Utf8.to_string(),
        })
        .collect();
    StreamDefinition {
        id,
        name: ERROR_STREAM.to_string(),
        columns,
        format: StreamFormat::Json,
        partition_key: Some("stream_name".to_string()),
        retention_hours: DEFAULT_RETENTION_HOURS,
        shards: vec![ShardDefinition {
            index: 0,
            hash_key_range: even_split(1)[0],
            parent: None,
            adjacent_parent: None,
            ending_seq: None,
        }],
        created_at_ms: now_ms,
        watermark: None,
        tags: BTreeMap::new(),
        source: None,
    }
}

/// Deletes stream folders the catalog no longer knows (a drop interrupted by a crash).
fn remove_orphan_folders(streams_dir: &Path, catalog: &Catalog) -> Result<()> {
    let entries =
        fs::read_dir(streams_dir).map_err(|e| Error::io("listing streams", streams_dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io("listing streams", streams_dir, e))?;
        let Ok(id) = entry.file_name().to_string_lossy().parse::<u64>() else {
            continue;
        };
        if !catalog.streams.iter().any(|s| s.id == id) {
            let path = entry.path();
            log::warn!("removing folder {} of a dropped stream", path.display());
            fs::remove_dir_all(&path)
                .map_err(|e| Error::io("removing dropped stream", &path, e))?;
        }
    }
    Ok(())
}

/// Checks everything about a stream's specification that does not depend on other streams;
/// returns its user columns.
fn validate_spec(spec: &StreamSpec) -> Result<SchemaRef> {
    validate_stream_name(&spec.name)?;
    if spec.shards == 0 || spec.shards > 1024 {
        return Err(Error::InvalidArgument(format!(
            "shards = {} is out of range; a stream has 1 to 1024 shards",
            spec.shards
        )));
    }
    if !(MIN_RETENTION_HOURS..=MAX_RETENTION_HOURS).contains(&spec.retention_hours) {
        return Err(Error::InvalidArgument(format!(
            "retention of {} hour{} is out of range; retention is {MIN_RETENTION_HOURS} to {MAX_RETENTION_HOURS} hours",
            spec.retention_hours,
            if spec.retention_hours == 1 { "" } else { "s" }
        )));
    }
    let columns = validate_user_schema(&spec.columns)?;
    match (spec.format, columns.fields().is_empty()) {
        (StreamFormat::Raw, false) => {
            return Err(Error::InvalidArgument(format!(
                "stream '{}' declares columns but format 'raw' decodes none; use format 'json' or 'csv'",
                spec.name
            )));
        }
        (StreamFormat::Json | StreamFormat::Csv, true) => {
            return Err(Error::InvalidArgument(format!(
                "stream '{}' has format '{}' but declares no columns to decode into; declare columns or use format 'raw'",
                spec.name, spec.format
            )));
        }
        _ => {}
    }
    if let Some(key) = &spec.partition_key
        && columns.field_with_name(key).is_err()
    {
        return Err(Error::InvalidArgument(format!(
            "partition_key '{key}' is not a column of stream '{}'; its columns are {}",
            spec.name,
            column_list(&columns)
        )));
    }

    if let Some(watermark) = &spec.watermark {
        let is_timestamp = columns
            .field_with_name(&watermark.column)
            .is_ok_and(|f| matches!(f.data_type(), DataType::Timestamp(_, _)));
        if !is_timestamp {
            return Err(Error::InvalidArgument(format!(
                "WATERMARK FOR {0}: '{0}' must be a TIMESTAMP column of stream '{1}'",
                watermark.column, spec.name
            )));
        }
        if watermark.delay_ms < 0 {
            return Err(Error::InvalidArgument(format!(
                "WATERMARK FOR {}: the delay must not be negative",
                watermark.column
            )));
        }
    }
    Ok(columns)
}

fn validate_stream_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "stream name '{name}' is not valid; names are 1 to 128 characters of letters, digits, '_', '-' and '.'"
        )))
    }
}

fn column_list(schema: &Schema) -> String {
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    names.join(", ")
}

/// The background thread: seals aged tails and expires old records until the engine goes away.
#[derive(Debug)]
struct BackgroundTask {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl BackgroundTask {
    fn spawn(engine: Weak<EngineInner>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let handle = std::thread::Builder::new()
            .name("sluice-sealer".into())
            .spawn(move || {
                while !flag.load(Ordering::Acquire) {
                    std::thread::park_timeout(Duration::from_millis(100));
                    if flag.load(Ordering::Acquire) {
                        break;
                    }
                    match engine.upgrade() {
                        Some(inner) => inner.background_pass(),
                        None => break,
                    }
                }
            })
            .ok();
        Self { stop, handle }
    }
}

impl Drop for BackgroundTask {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(handle) = self.handle.take() {
            handle.thread().unpark();
            let _ = handle.join();
        }
    }
}

/// Fields of a schema, for building [`StreamSpec`]s in tests and examples.
pub fn fields(columns: &[(&str, DataType)]) -> SchemaRef {
    Arc::new(Schema::new(
        columns
            .iter()
            .map(|(name, data_type)| Field::new(*name, data_type.clone(), true))
            .collect::<Vec<_>>(),
    ))
}

/// Removes a file that may not exist.
fn remove_if_present(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("removing saved positions", path, e)),
    }
}

/// Writes `value` as JSON to `path` through a synced temporary file and a rename (then syncs
/// the folder, so the rename itself survives a crash). For the small state files kept beside
/// the engine's (applications, Firehose's and Glue's records) as much as for its own.
pub fn write_json_durably<T: serde::Serialize>(
    path: &Path,
    value: &T,
    what: &'static str,
) -> Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(|e| Error::io("creating folder", dir, e))?;
    }
    let tmp = path.with_extension("json.tmp");
    let bytes = serde_json::to_vec(value).map_err(|e| Error::Corrupt {
        what,
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let written = (|| {
        use std::io::Write;
        let mut file = fs::File::create(&tmp)?;
        file.write_all(&bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    })();
    written.map_err(|e| Error::io("saving", path, e))
}

/// Reads JSON from `path`, or the default value if there is no file.
pub fn read_json_or_default<T: serde::de::DeserializeOwned + Default>(
    path: &Path,
    what: &'static str,
) -> Result<T> {
    match fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| Error::Corrupt {
            what,
            path: path.to_path_buf(),
            reason: e.to_string(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(T::default()),
        Err(e) => Err(Error::io("reading", path, e)),
    }
}
