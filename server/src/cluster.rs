//! `sluice serve --cluster`: this server as one node of several sharing streams through etcd
//! and object storage.
//!
//! [`ClusterMember::join`] connects to etcd, starts the node ([`sluice_cluster::ClusterNode`]:
//! session, controller, shard ownership) and keeps the local engine's streams in step with the
//! cluster's (`streams/` in etcd). [`NodeShards`] is both what the node tells about shards it
//! gains and loses ([`ShardHost`]) and what the Kinesis API asks ([`ShardPlacement`]):
//! - a shard this node comes to own is opened from the shared log: the records earlier owners
//!   logged that the local engine lacks are appended to it with their own sequence numbers, so
//!   iterators and sequence numbers handed out by any owner stay valid;
//! - a put for a shard owned here is logged to object storage (group-committed) and only then
//!   appended locally and acknowledged (`durability = 'shared'`: losing this node loses nothing
//!   acknowledged);
//! - requests for shards owned elsewhere are forwarded by the Kinesis API to the owner.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use object_store::ObjectStore;
use object_store::path::Path;
use parking_lot::Mutex;
use sluice_cluster::etcd::EtcdCoordinator;
use sluice_cluster::node::HostFuture;
use sluice_cluster::shard_log::follow::Follower;
use sluice_cluster::shard_log::{
    LogKey, LogOptions, LogRecord, Logged, NewRecord, ShardLog, SharedStorage,
};
use sluice_cluster::{
    ClusterNode, Coordinator, Fence, NodeConfig, NodeInfo, Ownership, Revision, ShardHost,
    ShardKey, StreamShards, WatchEvent, keys,
};
use sluice_engine::{
    Engine, NumberedRecord, PutResult, RecordRef, Stream, StreamDefinition, StreamSpec,
};
use sluice_kinesis::cluster::{Placement, ShardPlacement};
use sluice_kinesis::consumers::Consumer;
use tokio::runtime::Handle;
use tokio::task::JoinHandle;

mod pumps;

/// What `--cluster`, `--node-id`, `--storage` and `--advertise` say.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// `etcd://host:port[,host:port…]`.
    pub etcd: String,
    /// Unique in the cluster.
    pub node_id: String,
    /// The shared durable tier: `s3://bucket/prefix` (endpoint, region and keys from the usual
    /// AWS variables) or `file:///path` (a folder every node can reach).
    pub storage: String,
    /// The host other nodes reach this one at.
    pub advertise: String,
}

/// Opens the object store a `--storage` URL names.
pub fn open_storage(url: &str) -> Result<SharedStorage, String> {
    if let Some(rest) = url.strip_prefix("s3://") {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(format!("`{url}` names no bucket: write s3://bucket/prefix"));
        }
        // A shard's writes wait on these requests: one that hangs (a connection left dead by
        // a partition) fails within seconds, and the shard's log is opened again.
        // (Set as configuration, which keeps what the environment set, such as AWS_ALLOW_HTTP.)
        use object_store::ClientConfigKey;
        use object_store::aws::AmazonS3ConfigKey;
        let store = object_store::aws::AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .with_config(AmazonS3ConfigKey::Client(ClientConfigKey::Timeout), "5s")
            .with_config(
                AmazonS3ConfigKey::Client(ClientConfigKey::ConnectTimeout),
                "2s",
            )
            .build()
            .map_err(|e| format!("cannot use {url}: {e}"))?;
        return Ok(SharedStorage {
            store: Arc::new(store),
            prefix: Path::from(prefix.trim_matches('/')),
        });
    }
    if let Some(folder) = url.strip_prefix("file://") {
        std::fs::create_dir_all(folder).map_err(|e| format!("cannot create {folder}: {e}"))?;
        let store = object_store::local::LocalFileSystem::new_with_prefix(folder)
            .map_err(|e| format!("cannot use {url}: {e}"))?;
        return Ok(SharedStorage {
            store: Arc::new(store) as Arc<dyn ObjectStore>,
            prefix: Path::from(""),
        });
    }
    Err(format!(
        "`{url}` is not a storage address: write s3://bucket/prefix or file:///path"
    ))
}

/// This node's shards: the logs of those it owns, and the way to the others.
pub struct NodeShards {
    node_id: String,
    engine: Engine,
    coordinator: Arc<dyn Coordinator>,
    storage: SharedStorage,
    /// The logs of the shards this node owns, each with the incarnation of its stream.
    logs: Mutex<HashMap<ShardKey, (Revision, Arc<ShardLog>)>>,
    /// The streams the cluster shares that this node holds copies of, each with its
    /// incarnation: the create revision of its `streams/` key (a stream deleted and created
    /// again under its name is another, with logs of its own).
    incarnations: Mutex<HashMap<String, Revision>>,
    ownership: OnceLock<Ownership>,
    reopening: tokio::sync::Mutex<()>,
    /// The readers of the shards this node follows.
    followers: Mutex<HashMap<LogKey, FollowingSlot>>,
    /// The SQL session the cluster's pumps run in (set once the server has one).
    session: OnceLock<sluice_sql::SluiceSession>,
    /// The cluster's pumps running here.
    pumps: Mutex<HashMap<String, pumps::RunningHere>>,
    /// Held while this node makes (or checks) its copy of a stream: a shard being opened and
    /// the watch of the streams may both find it missing at once, and a stream created
    /// through this node is in etcd a moment before it is marked as the copy.
    making_copies: tokio::sync::Mutex<()>,
    /// Held while a cluster pump starts or stops here.
    pump_changes: tokio::sync::Mutex<()>,
    /// For each pump log and target shard owned here, how far it has gone through the batches
    /// (forgotten when the shard is opened or given up: its next stay starts from etcd's).
    pump_intake: Mutex<HashMap<(sluice_cluster::pump_log::PumpLogKey, ShardKey), pumps::Intake>>,
    /// This node's shards themselves, for what streams call back (weak: streams outlive it).
    me: std::sync::Weak<NodeShards>,
}

impl std::fmt::Debug for NodeShards {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeShards")
            .field("node_id", &self.node_id)
            .field("open", &self.logs.lock().len())
            .finish()
    }
}

impl NodeShards {
    /// The local stream `name`, created from the cluster's definition if this node lacks it.
    async fn local_stream(&self, name: &str) -> Result<Arc<Stream>, String> {
        if let Ok(stream) = self.engine.stream(name) {
            return Ok(stream);
        }
        let key = format!("{}{name}", keys::STREAMS);
        let entry = self
            .coordinator
            .get(&key)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("stream {name} is not defined in the cluster"))?;
        let _one = self.making_copies.lock().await;
        let stream = create_local(&self.engine, &entry).await?;
        self.mark_shared(&stream, entry.create_revision);
        Ok(stream)
    }

    /// Defines `stream`, just created here, in the cluster (`key`, `value`) and marks this
    /// node's stream as its copy. Blocking.
    fn share_created(&self, stream: &Stream, key: &str, value: Vec<u8>) -> Result<(), String> {
        let revision = match Handle::current()
            .block_on(self.coordinator.create(key, value.clone(), None))
            .map_err(|e| e.to_string())?
        {
            sluice_cluster::Claim::Won(revision) => revision,
            // Our own write, seen again by a retry on another etcd member.
            sluice_cluster::Claim::Held(held) if held.value == value => held.create_revision,
            sluice_cluster::Claim::Held(_) => {
                return Err(format!(
                    "another node created a stream named {} at the same time",
                    stream.name()
                ));
            }
        };
        mark_copy_of(stream, revision)?;
        self.mark_shared(stream, revision);
        Ok(())
    }

    fn log(&self, shard: &ShardKey) -> Option<(Revision, Arc<ShardLog>)> {
        self.logs.lock().get(shard).cloned()
    }

    /// Where the consumers of stream `name` (its incarnation now) are kept in etcd.
    async fn consumers_prefix(&self, name: &str) -> Result<String, String> {
        Ok(consumers_prefix(name, self.incarnation(name).await?))
    }

    /// `consumers/{stream}@{incarnation}/{consumer}`: where a consumer of a shared stream is
    /// kept.
    async fn consumer_key(&self, stream: &Stream, consumer: &Consumer) -> Result<String, String> {
        Ok(format!(
            "{}{}",
            self.consumers_prefix(stream.name()).await?,
            consumer.name
        ))
    }

    /// The incarnation of stream `name` now (of this node's copy; etcd's if it has none yet).
    async fn incarnation(&self, name: &str) -> Result<Revision, String> {
        if let Some(&known) = self.incarnations.lock().get(name) {
            return Ok(known);
        }
        let entry = self
            .coordinator
            .get(&format!("{}{name}", keys::STREAMS))
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("stream {name} is not defined in the cluster"))?;
        Ok(entry.create_revision)
    }

    /// Opens `shard`'s log for this node, still its owner, appending locally what the log
    /// holds beyond the local copy; the log, now the shard's.
    async fn open_log(
        &self,
        stream: Arc<Stream>,
        shard: &ShardKey,
        fence: &Fence,
    ) -> Result<Arc<ShardLog>, String> {
        let index = shard.shard;
        let from = stream
            .shard(index)
            .map(|s| s.next_seq())
            .ok_or_else(|| format!("stream {} has no shard {index}", shard.stream))?;
        let ownership = self.ownership.get().cloned();
        let (key, epoch) = (shard.clone(), fence.epoch);
        let live = Arc::new(move || {
            ownership
                .as_ref()
                .and_then(|o| o.fence(&key))
                .is_some_and(|f| f.epoch == epoch)
        });
        let incarnation = self.incarnation(&shard.stream).await?;
        let applied_to = Arc::clone(&stream);
        let apply =
            Arc::new(move |records: &[LogRecord]| append_logged(&applied_to, index, records));
        let (log, recovered) = ShardLog::open(
            self.coordinator.as_ref(),
            &self.storage,
            &LogKey::new(shard.clone(), incarnation),
            fence,
            from,
            LogOptions::default(),
            live,
            apply,
        )
        .await
        .map_err(|e| e.to_string())?;
        // What earlier owners (or this one, before a failed write) logged that this node does
        // not hold yet.
        let imported = recovered.records.len();
        tokio::task::spawn_blocking(move || append_logged(&stream, index, &recovered.records))
            .await
            .map_err(|e| e.to_string())??;
        if imported > 0 {
            log::info!("{shard}: took {imported} records over from the shared log");
        }
        let log = Arc::new(log);
        self.pump_intake.lock().retain(|(_, s), _| s != shard);
        self.logs
            .lock()
            .insert(shard.clone(), (incarnation, Arc::clone(&log)));
        Ok(log)
    }

    /// Logs `records` of this node's `shard`: their sequence numbers once they are durable in
    /// shared storage and appended here.
    async fn append_part(
        &self,
        stream: &Stream,
        shard: u32,
        records: Vec<NewRecord>,
    ) -> Result<Vec<PutResult>, String> {
        let key = ShardKey::new(stream.name(), shard);
        let (incarnation, mut log) = self
            .log(&key)
            .ok_or_else(|| format!("{key} is not owned by this node any more; retry"))?;
        if log.is_stopped() || incarnation != self.incarnation(stream.name()).await? {
            // A write failed (whether its chunk landed is unknown), or the stream was deleted
            // and created again: open the log again under the same epoch — which takes over
            // whatever did land — or the new incarnation's, then go on.
            log = self.reopen(stream, &key).await?;
        }
        let logged: Vec<Logged> = log.append(records).await.map_err(|e| e.to_string())?;
        Ok(logged
            .iter()
            .map(|l| PutResult {
                shard_index: shard,
                seq: l.seq,
            })
            .collect())
    }

    async fn reopen(&self, stream: &Stream, shard: &ShardKey) -> Result<Arc<ShardLog>, String> {
        // One reopening at a time: calls that found the same stopped log take the one the
        // first of them opened, rather than each opening another writer.
        let _one = self.reopening.lock().await;
        let current = self.incarnation(&shard.stream).await?;
        if let Some((incarnation, log)) = self.log(shard)
            && incarnation == current
            && !log.is_stopped()
        {
            return Ok(log);
        }
        let fence = self
            .ownership
            .get()
            .and_then(|o| o.fence(shard))
            .ok_or_else(|| format!("{shard} is not owned by this node any more; retry"))?;
        let stream = self
            .engine
            .stream(stream.name())
            .map_err(|e| e.to_string())?;
        self.open_log(stream, shard, &fence).await
    }
}

/// Appends records of shard `index` as the shared log numbered them to the local copy.
fn append_logged(stream: &Stream, index: u32, records: &[LogRecord]) -> Result<(), String> {
    let numbered: Vec<NumberedRecord<'_>> = records
        .iter()
        .map(|r| NumberedRecord {
            seq: r.seq,
            arrival_ms: r.arrival_ms,
            partition_key: &r.partition_key,
            data: &r.data,
        })
        .collect();
    stream
        .append_numbered(index, &numbered)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Which incarnation of a cluster stream a local copy is (`cluster.json` in the stream's
/// folder): a stream of that name that lacks it is this node's own (created with SQL), and a
/// copy of an older incarnation (deleted and created again while this node was away) is
/// replaced.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct CopyOf {
    incarnation: Option<Revision>,
}

const COPY_OF: &str = "cluster.json";

fn copy_of(stream: &Stream) -> Result<Option<Revision>, String> {
    let marker: CopyOf =
        sluice_engine::read_json_or_default(&stream.dir().join(COPY_OF), "the cluster copy marker")
            .map_err(|e| e.to_string())?;
    Ok(marker.incarnation)
}

fn mark_copy_of(stream: &Stream, incarnation: Revision) -> Result<(), String> {
    sluice_engine::write_json_durably(
        &stream.dir().join(COPY_OF),
        &CopyOf {
            incarnation: Some(incarnation),
        },
        "the cluster copy marker",
    )
    .map_err(|e| e.to_string())
}

/// Creates (or finds) the local copy of a stream from its cluster entry (`streams/{name}`: a
/// [`StreamShards`] whose definition is the engine's; its create revision the incarnation).
async fn create_local(
    engine: &Engine,
    kv: &sluice_cluster::KeyValue,
) -> Result<Arc<Stream>, String> {
    let entry: StreamShards =
        serde_json::from_slice(&kv.value).map_err(|e| format!("a stream entry in etcd: {e}"))?;
    let definition: StreamDefinition = serde_json::from_value(entry.definition)
        .map_err(|e| format!("a stream definition in etcd: {e}"))?;
    let spec = StreamSpec {
        name: definition.name.clone(),
        columns: definition.user_schema().map_err(|e| e.to_string())?,
        format: definition.format,
        shards: definition.shards.len() as u32,
        partition_key: definition.partition_key.clone(),
        retention_hours: definition.retention_hours,
        watermark: definition.watermark.clone(),
        source: None,
    };
    let incarnation = kv.create_revision;
    let engine = engine.clone();
    tokio::task::spawn_blocking(move || {
        let name = spec.name.clone();
        if let Some(existing) = engine.try_stream(&name) {
            match copy_of(&existing)? {
                Some(of) if of == incarnation => return Ok(existing),
                Some(older) => {
                    // Deleted and created again in the cluster while this node was away.
                    log::info!(
                        "stream {name}: replacing this node's copy of incarnation {older} with \
                         one of incarnation {incarnation}"
                    );
                    engine.drop_stream(&name, true).map_err(|e| e.to_string())?;
                }
                None => {
                    return Err(format!(
                        "this node has a stream named {name} of its own (created with SQL), and \
                         the cluster shares another of that name: the cluster's is not served \
                         here until this node's is dropped (DROP STREAM {name})"
                    ));
                }
            }
        }
        let stream = engine
            .create_stream(spec, false)
            .map_err(|e| e.to_string())?;
        mark_copy_of(&stream, incarnation)?;
        Ok(stream)
    })
    .await
    .map_err(|e| e.to_string())?
}

impl ShardHost for NodeShards {
    fn open<'a>(&'a self, shard: &'a ShardKey, fence: &'a Fence) -> HostFuture<'a> {
        Box::pin(async move {
            if shard.pump_name().is_some() {
                return self.open_pump(shard, fence).await;
            }
            let stream = self.local_stream(&shard.stream).await?;
            self.open_log(stream, shard, fence).await.map(|_| ())
        })
    }

    fn close<'a>(&'a self, shard: &'a ShardKey, _fence: &'a Fence) -> HostFuture<'a> {
        Box::pin(async move {
            // Everything acknowledged is in the shared log already; what is being uploaded
            // finishes (acknowledged or certainly not written) before the next owner opens it.
            if shard.pump_name().is_some() {
                self.close_pump(shard, None).await;
                return Ok(());
            }
            let log = self.logs.lock().remove(shard);
            if let Some((_, log)) = log {
                log.close().await;
            }
            Ok(())
        })
    }

    fn lost(&self, shard: &ShardKey) {
        if shard.pump_name().is_some() {
            // Its commits are refused from now on (the fence is gone); stop it soon — unless
            // this node has claimed it again meanwhile.
            if let (Some(me), Some(epoch)) = (self.me.upgrade(), self.pump_epoch(shard)) {
                let unit = shard.clone();
                tokio::spawn(async move { me.close_pump(&unit, Some(epoch)).await });
            }
            return;
        }
        self.logs.lock().remove(shard);
    }
}

impl ShardPlacement for NodeShards {
    fn place(&self, stream: &str, shard: u32) -> Placement {
        let key = ShardKey::new(stream, shard);
        let Some(ownership) = self.ownership.get() else {
            return Placement::Moving;
        };
        if ownership.fence(&key).is_some() && self.logs.lock().contains_key(&key) {
            return Placement::Local;
        }
        match ownership.owner(&key) {
            Some((node, info)) if node != self.node_id && !info.kinesis.is_empty() => {
                Placement::Remote(info.kinesis)
            }
            _ => Placement::Moving,
        }
    }

    fn append(
        &self,
        stream: &Stream,
        parts: &[(u32, Vec<RecordRef<'_>>)],
    ) -> Vec<Result<Vec<PutResult>, String>> {
        let now = chrono::Utc::now().timestamp_millis();
        // Every part goes to its shard's log at once; each is durable in shared storage and
        // appended here (in log order) once its future completes.
        let appends = parts.iter().map(|(shard, records)| {
            let new: Vec<NewRecord> = records
                .iter()
                .map(|r| NewRecord {
                    partition_key: r.partition_key.to_string(),
                    data: r.data.to_vec(),
                    arrival_ms: r.arrival_ms.unwrap_or(now),
                })
                .collect();
            self.append_part(stream, *shard, new)
        });
        Handle::current().block_on(futures::future::join_all(appends))
    }

    fn stream_created(&self, stream: &Stream) -> Result<(), String> {
        let entry = StreamShards {
            shards: stream.open_shards().iter().map(|s| s.index()).collect(),
            definition: serde_json::to_value(stream.definition()).map_err(|e| e.to_string())?,
        };
        let key = format!("{}{}", keys::STREAMS, stream.name());
        let value = serde_json::to_vec(&entry).map_err(|e| e.to_string())?;
        // Known to etcd a moment before this node's stream is marked as its copy: the watch of
        // the streams waits, and then finds it marked.
        let _one = Handle::current().block_on(self.making_copies.lock());
        self.share_created(stream, &key, value)
    }

    fn consumers(&self, stream: &Stream) -> Result<Vec<Consumer>, String> {
        Handle::current().block_on(async {
            let prefix = self.consumers_prefix(stream.name()).await?;
            let listed = self
                .coordinator
                .list(&prefix)
                .await
                .map_err(|e| e.to_string())?;
            let mut consumers = listed
                .iter()
                .map(|kv| serde_json::from_slice::<Consumer>(&kv.value))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("a consumer in etcd: {e}"))?;
            consumers.sort_by_key(|c| c.created_ms);
            Ok(consumers)
        })
    }

    fn add_consumer(&self, stream: &Stream, consumer: &Consumer) -> Result<bool, String> {
        Handle::current().block_on(async {
            let key = self.consumer_key(stream, consumer).await?;
            let value = serde_json::to_vec(consumer).map_err(|e| e.to_string())?;
            match self
                .coordinator
                .create(&key, value.clone(), None)
                .await
                .map_err(|e| e.to_string())?
            {
                sluice_cluster::Claim::Won(_) => Ok(true),
                // Our own write, seen again by a retry on another etcd member.
                sluice_cluster::Claim::Held(held) => Ok(held.value == value),
            }
        })
    }

    fn remove_consumer(&self, stream: &Stream, consumer: &Consumer) -> Result<(), String> {
        Handle::current().block_on(async {
            let key = self.consumer_key(stream, consumer).await?;
            if let Some(kv) = self
                .coordinator
                .get(&key)
                .await
                .map_err(|e| e.to_string())?
            {
                let fence = Fence {
                    key,
                    epoch: kv.create_revision,
                };
                self.coordinator
                    .release(&fence)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            Ok(())
        })
    }

    fn stream_deleted(&self, name: &str) -> Result<(), String> {
        let key = format!("{}{name}", keys::STREAMS);
        Handle::current().block_on(async {
            let Some(entry) = self
                .coordinator
                .get(&key)
                .await
                .map_err(|e| e.to_string())?
            else {
                return Ok(());
            };
            let fence = Fence {
                key: key.clone(),
                epoch: entry.create_revision,
            };
            let released = self
                .coordinator
                .release(&fence)
                .await
                .map_err(|e| e.to_string())?;
            if released {
                // Nobody reads the deleted incarnation's logs any more: they go, in the
                // background (a chunk a late writer adds afterwards stays behind).
                let shards: Vec<u32> = serde_json::from_slice::<StreamShards>(&entry.value)
                    .map(|e| e.shards)
                    .unwrap_or_default();
                let logs = shards
                    .into_iter()
                    .map(|shard| LogKey::new(ShardKey::new(name, shard), entry.create_revision))
                    .collect();
                tokio::spawn(remove_logs(
                    Arc::clone(&self.coordinator),
                    self.storage.clone(),
                    logs,
                    consumers_prefix(name, entry.create_revision),
                ));
            }
            Ok(())
        })
    }
}

/// `consumers/{stream}@{incarnation}/`.
fn consumers_prefix(name: &str, incarnation: Revision) -> String {
    format!("{}{name}@{incarnation}/", keys::CONSUMERS)
}

/// Deletes the chunks and manifests of `logs`, and the consumers under `consumers` (of a
/// deleted stream).
async fn remove_logs(
    coordinator: Arc<dyn Coordinator>,
    storage: SharedStorage,
    logs: Vec<LogKey>,
    consumers: String,
) {
    use futures::{StreamExt, TryStreamExt};
    for kv in coordinator.list(&consumers).await.unwrap_or_default() {
        let fence = Fence {
            key: kv.key,
            epoch: kv.create_revision,
        };
        let _ = coordinator.release(&fence).await;
    }
    for log in logs {
        let folder = log.folder(&storage.prefix);
        let listed = storage
            .store
            .list(Some(&folder))
            .map_ok(|meta| meta.location)
            .boxed();
        let deleted: Vec<_> = storage.store.delete_stream(listed).collect().await;
        if let Some(Err(e)) = deleted.into_iter().find(Result::is_err) {
            log::warn!("cannot delete the log of {} (deleted): {e}", log.shard);
            continue;
        }
        let manifest = log.manifest_key();
        if let Ok(Some(kv)) = coordinator.get(&manifest).await {
            let fence = Fence {
                key: manifest,
                epoch: kv.create_revision,
            };
            if let Err(e) = coordinator.release(&fence).await {
                log::warn!("cannot delete the manifest of {} (deleted): {e}", log.shard);
            }
        }
    }
}

/// This server's membership in the cluster.
pub struct ClusterMember {
    node: ClusterNode,
    shards: Arc<NodeShards>,
    sync: JoinHandle<()>,
    follow: JoinHandle<()>,
    pumps: JoinHandle<()>,
}

impl ClusterMember {
    /// Connects to etcd and the shared storage; the node joins once started with
    /// [`ClusterMember::start`].
    pub fn placement(config: &ClusterConfig, engine: Engine) -> Result<Arc<NodeShards>, String> {
        let coordinator: Arc<dyn Coordinator> =
            Arc::new(EtcdCoordinator::from_url(&config.etcd).map_err(|e| e.to_string())?);
        let storage = open_storage(&config.storage)?;
        Ok(Arc::new_cyclic(|me| NodeShards {
            me: me.clone(),
            node_id: config.node_id.clone(),
            engine,
            coordinator,
            storage,
            logs: Mutex::new(HashMap::new()),
            incarnations: Mutex::new(HashMap::new()),
            ownership: OnceLock::new(),
            reopening: tokio::sync::Mutex::new(()),
            followers: Mutex::new(HashMap::new()),
            session: OnceLock::new(),
            pumps: Mutex::new(HashMap::new()),
            pump_changes: tokio::sync::Mutex::new(()),
            making_copies: tokio::sync::Mutex::new(()),
            pump_intake: Mutex::new(HashMap::new()),
        }))
    }

    /// Starts the node: it registers with the Kinesis and Flight addresses others reach it at,
    /// keeps the local streams in step with the cluster's, and takes the shards assigned to it.
    pub fn start(config: &ClusterConfig, shards: Arc<NodeShards>, info: NodeInfo) -> Self {
        let node = ClusterNode::start(
            shards.coordinator.clone(),
            NodeConfig::new(config.node_id.clone(), info),
            shards.clone(),
        );
        let _ = shards.ownership.set(node.ownership().clone());
        let sync = tokio::spawn(sync_streams(shards.clone()));
        let follow = tokio::spawn(follow_shards(shards.clone()));
        let pumps = tokio::spawn(serve_pumps(shards.clone()));
        Self {
            node,
            shards,
            sync,
            follow,
            pumps,
        }
    }

    /// Gives the cluster's pumps the SQL `session` to run in, and the session the cluster's
    /// register of pumps (CREATE PUMP into a shared stream defines it for every node).
    pub fn attach(shards: &Arc<NodeShards>, session: &sluice_sql::SluiceSession) {
        let _ = shards.session.set(session.clone());
        session.set_cluster_pumps(Arc::new(pumps::Register::new(shards)));
    }

    /// Leaves the cluster gracefully: every shard handed off.
    pub async fn leave(self) {
        self.sync.abort();
        self.follow.abort();
        self.pumps.abort();
        self.node.leave().await;
        drop(self.shards);
    }
}

/// How often a node takes the cluster's pumps' new batches into the shards it owns.
const TAKE_PUMP_BATCHES_EVERY: Duration = Duration::from_millis(200);

/// How often a pump's node deletes the batches every target shard has gone through.
const DELETE_TAKEN_BATCHES_EVERY: Duration = Duration::from_secs(30);

/// Takes the cluster's pumps' committed batches into the target shards this node owns, and
/// restarts the pumps running here whose statement was replaced.
async fn serve_pumps(shards: Arc<NodeShards>) {
    let mut tick = tokio::time::interval(TAKE_PUMP_BATCHES_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut cleaned = tokio::time::Instant::now();
    loop {
        tick.tick().await;
        let specs = match shards.coordinator.list(keys::PUMPS).await {
            Ok(specs) => specs,
            Err(e) => {
                log::debug!("cannot list the cluster's pumps: {e}");
                continue;
            }
        };
        if specs.is_empty() {
            continue;
        }
        shards.restart_replaced_pumps(&specs).await;
        shards.take_pump_batches(&specs).await;
        if cleaned.elapsed() >= DELETE_TAKEN_BATCHES_EVERY {
            cleaned = tokio::time::Instant::now();
            shards.delete_taken_batches(&specs).await;
        }
    }
}

/// Keeps the local engine's streams in step with the cluster's: creates those defined there,
/// drops those deleted there.
async fn sync_streams(shards: Arc<NodeShards>) {
    loop {
        let watch = shards.coordinator.watch(keys::STREAMS).await;
        let listed = shards.coordinator.list(keys::STREAMS).await;
        let (mut events, listed) = match (watch, listed) {
            (Ok(events), Ok(listed)) => (events, listed),
            (Err(e), _) | (_, Err(e)) => {
                log::warn!("cannot read the cluster's streams: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        for kv in listed {
            ensure_local(&shards, &kv).await;
        }
        while let Some(event) = events.recv().await {
            match event {
                WatchEvent::Put(kv) => ensure_local(&shards, &kv).await,
                WatchEvent::Delete { key, .. } => {
                    let Some(name) = key.strip_prefix(keys::STREAMS).map(str::to_string) else {
                        continue;
                    };
                    shards.incarnations.lock().remove(&name);
                    let engine = shards.engine.clone();
                    let _ = tokio::task::spawn_blocking(move || {
                        if engine.stream(&name).is_ok()
                            && let Err(e) = engine.drop_stream(&name, true)
                        {
                            log::warn!("cannot drop stream {name}, deleted in the cluster: {e}");
                        }
                    })
                    .await;
                }
            }
        }
    }
}

async fn ensure_local(shards: &NodeShards, entry: &sluice_cluster::KeyValue) {
    let _one = shards.making_copies.lock().await;
    match create_local(&shards.engine, entry).await {
        Ok(stream) => shards.mark_shared(&stream, entry.create_revision),
        Err(e) => log::warn!("cannot create a stream defined in the cluster: {e}"),
    }
}

/// How long after its arrival at its shard's owner a record may reach another node's copy:
/// an upload (a group commit window, then the write; a slow one is given up after seconds),
/// then the follower's next look at an idle shard ([`IDLE_FOLLOW_AT_MOST`]). Windows over
/// `ROWTIME` wait this long before they close, so such a record still counts.
const ARRIVAL_LAG: Duration = Duration::from_secs(3);

/// How often a node looks for what other nodes logged to the shards it does not own.
const FOLLOW_EVERY: Duration = Duration::from_millis(200);

/// How often an owner records in each shard's manifest where its chain ends, so that whoever
/// takes the shard over next lists only the chunks after it.
const BASE_EVERY: Duration = Duration::from_secs(60);

/// The longest a query waits for its node to take in what other nodes acknowledged; past it,
/// the query reads what the node has.
const CATCH_UP_WITHIN: Duration = Duration::from_secs(2);

/// How soon a query's catch-up reads a shard again whose last chunks wait for a new owner.
const CATCH_UP_RETRY: Duration = Duration::from_millis(25);

/// Following one shard this node does not own: the reader, and the last reason it failed.
struct Following {
    follower: Follower,
    last_error: Option<String>,
    /// Reads in a row that found nothing new: an idle shard is listed less often.
    idle_reads: u32,
    /// When the background task next lists the shard (a query's catch-up does not wait).
    next_read: tokio::time::Instant,
}

/// The longest an idle shard goes unlisted by the background task: each read that finds
/// nothing doubles the wait from [`FOLLOW_EVERY`] up to this (listing requests cost money on
/// S3: a busy shard is listed 5 times a second, an idle one about once in 2 s).
const IDLE_FOLLOW_AT_MOST: Duration = Duration::from_millis(1600);

type FollowingSlot = Arc<tokio::sync::Mutex<Following>>;

impl NodeShards {
    /// Records that `stream` is this node's copy of the cluster's stream of that name, at
    /// `incarnation`: its records are numbered by its shards' owners, and a query over it first
    /// takes in what they logged.
    fn mark_shared(&self, stream: &Stream, incarnation: Revision) {
        stream.set_shared(true);
        stream.set_arrival_lag(ARRIVAL_LAG);
        let node = self.me.clone();
        let name = stream.name().to_string();
        stream.set_catch_up(Arc::new(move || {
            let node = node.clone();
            let name = name.clone();
            Box::pin(async move {
                if let Some(node) = node.upgrade()
                    && tokio::time::timeout(CATCH_UP_WITHIN, node.catch_up(&name))
                        .await
                        .is_err()
                {
                    log::warn!(
                        "a query over {name} reads what this node has: other nodes' records did \
                         not arrive within {} s",
                        CATCH_UP_WITHIN.as_secs()
                    );
                }
            })
        }));
        self.incarnations
            .lock()
            .insert(stream.name().to_string(), incarnation);
    }

    /// The logs of the shards of `name` this node does not own, with their local stream.
    fn followed(&self, name: &str) -> Vec<(Arc<Stream>, LogKey)> {
        let Some(stream) = self.engine.try_stream(name) else {
            return Vec::new();
        };
        let Some(&incarnation) = self.incarnations.lock().get(name) else {
            return Vec::new();
        };
        stream
            .open_shards()
            .iter()
            .map(|shard| ShardKey::new(name, shard.index()))
            .filter(|key| self.log(key).is_none())
            .map(|key| (Arc::clone(&stream), LogKey::new(key, incarnation)))
            .collect()
    }

    fn following(&self, key: &LogKey) -> FollowingSlot {
        Arc::clone(self.followers.lock().entry(key.clone()).or_insert_with(|| {
            Arc::new(tokio::sync::Mutex::new(Following {
                follower: Follower::new(key.clone()),
                last_error: None,
                idle_reads: 0,
                next_read: tokio::time::Instant::now(),
            }))
        }))
    }

    /// Appends to the local copy of one shard what its owners logged since; one reader of a
    /// shard at a time. Whether it left chunks a new owner has yet to confirm (see
    /// [`Follower::waiting`]).
    async fn follow_once(&self, stream: Arc<Stream>, key: &LogKey, scheduled: bool) -> bool {
        let slot = self.following(key);
        let mut following = slot.lock().await;
        let now = tokio::time::Instant::now();
        if scheduled && now < following.next_read {
            return false;
        }
        let result = self.read_into(&mut following.follower, stream).await;
        let found = matches!(result, Ok(true));
        following.idle_reads = if found {
            0
        } else {
            following.idle_reads.saturating_add(1)
        };
        let wait = FOLLOW_EVERY
            .saturating_mul(1 << following.idle_reads.min(4))
            .min(IDLE_FOLLOW_AT_MOST);
        following.next_read = now + wait;
        match result {
            Ok(_) => following.last_error = None,
            Err(e) => {
                // Said once per new reason, not every tick.
                if following.last_error.as_ref() != Some(&e) {
                    log::warn!("cannot follow {}: {e}", key.shard);
                }
                following.last_error = Some(e);
            }
        }
        following.follower.waiting()
    }

    /// Whether it found anything new.
    async fn read_into(
        &self,
        follower: &mut Follower,
        stream: Arc<Stream>,
    ) -> Result<bool, String> {
        let index = follower.shard().shard;
        let next = stream
            .shard(index)
            .map(|s| s.next_seq())
            .ok_or_else(|| format!("no shard {index}"))?;
        let records = follower
            .read(self.coordinator.as_ref(), &self.storage, next)
            .await
            .map_err(|e| e.to_string())?;
        if records.is_empty() {
            return Ok(false);
        }
        tokio::task::spawn_blocking(move || append_logged(&stream, index, &records))
            .await
            .map_err(|e| e.to_string())??;
        Ok(true)
    }

    /// Records, for every shard this node owns, where its chain of chunks ends now.
    async fn commit_bases(&self) {
        let owned: Vec<(ShardKey, Arc<ShardLog>)> = self
            .logs
            .lock()
            .iter()
            .map(|(key, (_, log))| (key.clone(), Arc::clone(log)))
            .collect();
        for (key, log) in owned {
            let Some(fence) = self.ownership.get().and_then(|o| o.fence(&key)) else {
                continue;
            };
            if let Err(e) = log.commit_base(self.coordinator.as_ref(), &fence).await {
                log::warn!("cannot record where {key}'s log ends: {e}");
            }
        }
    }

    /// Takes in, for every shard of stream `name` this node does not own, what its owners
    /// logged until now. A shard changing hands (claimed, its new owner — maybe this node —
    /// still opening it) holds its last chunks back for a moment; they are read again until
    /// they are settled or the shard is this node's.
    async fn catch_up(&self, name: &str) {
        loop {
            let shards = self.followed(name);
            let waiting = futures::future::join_all(
                shards
                    .iter()
                    .map(|(stream, key)| self.follow_once(Arc::clone(stream), key, false)),
            )
            .await;
            if !waiting.contains(&true) {
                return;
            }
            tokio::time::sleep(CATCH_UP_RETRY).await;
        }
    }
}

/// Keeps this node's copies of the shards it does not own up to date from their shared logs,
/// so queries and pumps here read every record, whichever node took it: every
/// [`FOLLOW_EVERY`] (less often for a shard that has been idle, up to
/// [`IDLE_FOLLOW_AT_MOST`]), each such shard's new settled chunks are appended with their own
/// sequence numbers and arrival times.
async fn follow_shards(shards: Arc<NodeShards>) {
    let mut tick = tokio::time::interval(FOLLOW_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut based = tokio::time::Instant::now();
    loop {
        tick.tick().await;
        if based.elapsed() >= BASE_EVERY {
            based = tokio::time::Instant::now();
            shards.commit_bases().await;
        }
        let copies: Vec<(String, Revision)> = shards
            .incarnations
            .lock()
            .iter()
            .map(|(name, incarnation)| (name.clone(), *incarnation))
            .collect();
        let mut wanted: Vec<(Arc<Stream>, LogKey)> = Vec::new();
        for (name, incarnation) in copies {
            if let Some(stream) = shards.engine.try_stream(&name)
                && !stream.is_shared()
            {
                // A stream object replaced since (ALTER) is marked again.
                shards.mark_shared(&stream, incarnation);
            }
            wanted.extend(shards.followed(&name));
        }
        let keys: std::collections::HashSet<&LogKey> = wanted.iter().map(|(_, k)| k).collect();
        shards.followers.lock().retain(|key, _| keys.contains(key));
        futures::future::join_all(
            wanted
                .iter()
                .map(|(stream, key)| shards.follow_once(Arc::clone(stream), key, true)),
        )
        .await;
    }
}
