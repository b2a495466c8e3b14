//! The cluster's pumps on this node: pumps writing into streams the cluster shares.
//!
//! `CREATE PUMP` into a shared stream keeps the pump in etcd (`pumps/{pump}`, [`PumpSpec`]);
//! the controller assigns it like a shard ([`ShardKey::pump`]) and the node it lands on runs
//! it through the session's pump manager, writing through [`LoggedOutput`]: each batch is
//! committed to the pump's log ([`sluice_cluster::pump_log`]) under the node's epoch, then
//! taken by the target shards' owners ([`NodeShards::take_pump_batches`]), each batch once;
//! the pump log's own docs say why nothing is repeated or skipped when the pump moves.

use std::collections::HashMap;
use std::sync::Arc;

use sluice_cluster::keys::{self, PumpSpec, ShardKey};
use sluice_cluster::pump_log::{self, PumpLog, PumpLogKey, PumpRecord};
use sluice_cluster::shard_log::NewRecord;
use sluice_cluster::{Coordinator, Fence, KeyValue, Revision};
use sluice_engine::{PumpCheckpoint, PutRecord, RecordRef, Stream};
use sluice_sql::pumps::{ClusterPump, ClusterPumps, PumpOutput};

use super::NodeShards;

/// The most committed batches a shard's owner takes of one pump per round.
const TAKE_AT_MOST: usize = 64;

/// How often a target shard's owner records in etcd how far it has gone through a pump's
/// batches (when it moved on): seconds apart, not per batch.
const RECORD_TAKEN_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// How far a target shard has gone through a pump's batches, here.
#[derive(Debug, Clone, Copy)]
pub(super) struct Intake {
    /// The last batch gone through.
    through: u64,
    /// What was last recorded in etcd, and when.
    recorded: u64,
    recorded_at: tokio::time::Instant,
}

/// A pump this node runs for the cluster.
#[derive(Debug, Clone)]
pub(super) struct RunningHere {
    /// The version of its definition it runs (a replaced definition restarts it).
    mod_revision: Revision,
    fence: Fence,
}

/// The cluster's register of pumps, as the SQL session sees it.
pub(crate) struct Register {
    shards: std::sync::Weak<NodeShards>,
}

impl Register {
    pub(crate) fn new(shards: &Arc<NodeShards>) -> Self {
        Self {
            shards: Arc::downgrade(shards),
        }
    }

    fn shards(&self) -> Result<Arc<NodeShards>, String> {
        self.shards
            .upgrade()
            .ok_or_else(|| "this node is leaving the cluster".to_string())
    }
}

fn spec_key(name: &str) -> String {
    format!("{}{name}", keys::PUMPS)
}

fn spec_of(kv: &KeyValue) -> Result<PumpSpec, String> {
    serde_json::from_slice(&kv.value).map_err(|e| format!("a pump definition in etcd: {e}"))
}

#[async_trait::async_trait]
impl ClusterPumps for Register {
    async fn create(
        &self,
        name: &str,
        sql: &str,
        target: &str,
        or_replace: bool,
    ) -> Result<(), String> {
        let shards = self.shards()?;
        let coordinator = shards.coordinator.as_ref();
        let value = serde_json::to_vec(&PumpSpec {
            sql: sql.to_string(),
            target: target.to_string(),
        })
        .map_err(|e| e.to_string())?;
        let key = spec_key(name);
        match coordinator
            .create(&key, value.clone(), None)
            .await
            .map_err(|e| e.to_string())?
        {
            sluice_cluster::Claim::Won(_) => Ok(()),
            sluice_cluster::Claim::Held(_) if !or_replace => Err(format!(
                "pump '{name}' already exists; CREATE OR REPLACE PUMP replaces it"
            )),
            sluice_cluster::Claim::Held(kv) => {
                if spec_of(&kv)?.target != target {
                    // Its committed batches are routed to the old target's shards.
                    return Err(format!(
                        "CREATE OR REPLACE PUMP cannot change the stream the cluster's pump \
                         '{name}' writes into; DROP PUMP it and create it again"
                    ));
                }
                // The same pump with a new statement: it keeps its log, so it goes on from
                // where the old statement stopped (its node restarts it).
                let fence = Fence {
                    key: key.clone(),
                    epoch: kv.create_revision,
                };
                match coordinator.put_fenced(&fence, &key, value).await {
                    Ok(true) => Ok(()),
                    Ok(false) => Err(format!(
                        "pump '{name}' was dropped while it was being replaced; create it again"
                    )),
                    Err(e) => Err(e.to_string()),
                }
            }
        }
    }

    async fn remove(&self, name: &str) -> Result<bool, String> {
        let shards = self.shards()?;
        let coordinator = Arc::clone(&shards.coordinator);
        let key = spec_key(name);
        let Some(kv) = coordinator.get(&key).await.map_err(|e| e.to_string())? else {
            return Ok(false);
        };
        let fence = Fence {
            key,
            epoch: kv.create_revision,
        };
        if !coordinator
            .release(&fence)
            .await
            .map_err(|e| e.to_string())?
        {
            return Ok(false);
        }
        // Its node stops it as the unit goes; its log goes a little later (after a last
        // commit in flight, which its fence then refuses).
        let storage = shards.storage.clone();
        let log = PumpLogKey::new(name, kv.create_revision);
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_secs(5)).await;
            if let Err(e) = pump_log::remove(coordinator.as_ref(), &storage, &log).await {
                log::warn!("cannot remove the log of pump {} (dropped): {e}", log.pump);
            }
        });
        Ok(true)
    }

    async fn shares(&self, name: &str) -> Result<bool, String> {
        // Defined in etcd: the cluster's, whether or not this node's copy is made (or marked)
        // yet.
        let key = format!("{}{name}", keys::STREAMS);
        Ok(self
            .shards()?
            .coordinator
            .get(&key)
            .await
            .map_err(|e| e.to_string())?
            .is_some())
    }

    async fn list(&self) -> Result<Vec<ClusterPump>, String> {
        let shards = self.shards()?;
        let listed = shards
            .coordinator
            .list(keys::PUMPS)
            .await
            .map_err(|e| e.to_string())?;
        let ownership = shards.ownership.get();
        listed
            .iter()
            .map(|kv| {
                let name = kv.key.strip_prefix(keys::PUMPS).unwrap_or_default();
                Ok(ClusterPump {
                    name: name.to_string(),
                    sql: spec_of(kv)?.sql,
                    node: ownership
                        .and_then(|o| o.owner(&ShardKey::pump(name)))
                        .map(|(node, _)| node),
                })
            })
            .collect()
    }
}

/// A cluster pump's output: committed to its log under this node's epoch.
struct LoggedOutput {
    coordinator: Arc<dyn Coordinator>,
    log: tokio::sync::Mutex<PumpLog>,
    target: Arc<Stream>,
    resume: Option<PumpCheckpoint>,
    /// The shared streams' incarnations by name, to name the streams of a checkpoint the same
    /// way on every node.
    shards: std::sync::Weak<NodeShards>,
}

#[async_trait::async_trait]
impl PumpOutput for LoggedOutput {
    fn resume_point(&self) -> Option<PumpCheckpoint> {
        self.resume.clone()
    }

    async fn commit(
        &self,
        records: Vec<PutRecord>,
        checkpoint: PumpCheckpoint,
    ) -> Result<(), String> {
        let shards = self
            .shards
            .upgrade()
            .ok_or("this node is leaving the cluster")?;
        let ranges = sluice_kinesis::actions::open_ranges(&self.target);
        let now = chrono::Utc::now().timestamp_millis();
        let routed: Vec<PumpRecord> = records
            .into_iter()
            .map(|record| PumpRecord {
                shard: sluice_kinesis::actions::shard_for(&ranges, &RecordRef::from(&record)),
                arrival_ms: record.arrival_ms.unwrap_or(now),
                partition_key: record.partition_key,
                data: record.data,
            })
            .collect();
        let checkpoint = shards.portable(checkpoint);
        self.log
            .lock()
            .await
            .commit(self.coordinator.as_ref(), &routed, &checkpoint.to_bytes())
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

impl NodeShards {
    /// A checkpoint as every node reads it: the shared streams it names carry their
    /// incarnation in the cluster instead of this node's copy's id.
    fn portable(&self, mut checkpoint: PumpCheckpoint) -> PumpCheckpoint {
        let incarnations = self.incarnations.lock();
        for (name, id) in checkpoint.stream_ids.iter_mut() {
            if let Some(&incarnation) = incarnations.get(name) {
                *id = incarnation as u64;
            }
        }
        checkpoint
    }

    /// A portable checkpoint as this node reads it: each shared stream's incarnation replaced
    /// by its copy's id here, if the copy is of that incarnation (else the stream was deleted
    /// and created again, and the pump starts it anew).
    fn local(&self, mut checkpoint: PumpCheckpoint) -> PumpCheckpoint {
        let incarnations = self.incarnations.lock();
        for (name, id) in checkpoint.stream_ids.iter_mut() {
            if incarnations.get(name).is_some_and(|&i| i as u64 == *id)
                && let Some(stream) = self.engine.try_stream(name)
            {
                *id = stream.definition().id;
            }
        }
        checkpoint
    }

    /// This node now owns pump `unit`: runs it from where its log says it stopped.
    pub(super) async fn open_pump(&self, unit: &ShardKey, fence: &Fence) -> Result<(), String> {
        let name = unit.pump_name().unwrap_or_default();
        // One start or stop at a time: a stop of the last epoch's run must not stop this one.
        let _one = self.pump_changes.lock().await;
        let Some(kv) = self
            .coordinator
            .get(&spec_key(name))
            .await
            .map_err(|e| e.to_string())?
        else {
            // Dropped meanwhile: nothing to run.
            return Ok(());
        };
        let spec = spec_of(&kv)?;
        let session = self
            .session
            .get()
            .cloned()
            .ok_or("the node's SQL session is not ready yet")?;
        let target = self.local_stream(&spec.target).await?;
        let key = PumpLogKey::new(name, kv.create_revision);
        let (log, last) = PumpLog::open(self.coordinator.as_ref(), &self.storage, &key, fence)
            .await
            .map_err(|e| e.to_string())?;
        let resume = match last {
            Some(batch) => Some(
                PumpCheckpoint::from_bytes(&batch.checkpoint)
                    .map(|c| self.local(c))
                    .ok_or_else(|| format!("pump {name}: its last checkpoint cannot be read"))?,
            ),
            None => None,
        };
        let output = Arc::new(LoggedOutput {
            coordinator: Arc::clone(&self.coordinator),
            log: tokio::sync::Mutex::new(log),
            target,
            resume,
            shards: self.me.clone(),
        });
        let pumps = Arc::clone(session.pump_manager());
        pumps.stop(name).await;
        pumps
            .start_with_output(&session, name, &spec.sql, output)
            .await
            .map_err(|e| format!("pump {name} cannot start: {e}"))?;
        log::info!("pump {name} runs here (epoch {})", fence.epoch);
        self.pumps.lock().insert(
            name.to_string(),
            RunningHere {
                mod_revision: kv.mod_revision,
                fence: fence.clone(),
            },
        );
        Ok(())
    }

    /// Stops pump `unit` here (handed off or lost): whatever it committed stays committed.
    /// Given `epoch`, only if it still runs here at that epoch (not claimed again since).
    pub(super) async fn close_pump(&self, unit: &ShardKey, epoch: Option<Revision>) {
        let name = unit.pump_name().unwrap_or_default();
        let _one = self.pump_changes.lock().await;
        {
            let mut running = self.pumps.lock();
            if epoch.is_some_and(|e| running.get(name).is_some_and(|r| r.fence.epoch != e)) {
                return;
            }
            running.remove(name);
        }
        if let Some(session) = self.session.get() {
            session.pump_manager().stop(name).await;
        }
    }

    /// The epoch pump `unit` runs here at, if it does.
    pub(super) fn pump_epoch(&self, unit: &ShardKey) -> Option<Revision> {
        let name = unit.pump_name()?;
        self.pumps.lock().get(name).map(|r| r.fence.epoch)
    }

    /// Restarts the pumps running here whose definition was replaced (CREATE OR REPLACE).
    pub(super) async fn restart_replaced_pumps(&self, specs: &[KeyValue]) {
        let replaced: Vec<(String, Fence)> = {
            let running = self.pumps.lock();
            specs
                .iter()
                .filter_map(|kv| {
                    let name = kv.key.strip_prefix(keys::PUMPS)?;
                    let here = running.get(name)?;
                    (here.mod_revision != kv.mod_revision)
                        .then(|| (name.to_string(), here.fence.clone()))
                })
                .collect()
        };
        for (name, fence) in replaced {
            let unit = ShardKey::pump(&name);
            self.close_pump(&unit, None).await;
            if let Err(e) = self.open_pump(&unit, &fence).await {
                log::warn!("pump {name} could not restart with its new statement: {e}");
            }
        }
    }

    /// Takes, into the shards this node owns, the batches the cluster's pumps committed since
    /// each shard last took one: each batch once, in order.
    pub(super) async fn take_pump_batches(&self, specs: &[KeyValue]) {
        for kv in specs {
            let Some(name) = kv.key.strip_prefix(keys::PUMPS) else {
                continue;
            };
            let Ok(spec) = spec_of(kv) else { continue };
            let key = PumpLogKey::new(name, kv.create_revision);
            if let Err(e) = self.take_batches_of(&key, &spec.target).await {
                log::warn!("cannot take pump {name}'s output into {}: {e}", spec.target);
            }
        }
    }

    async fn take_batches_of(&self, key: &PumpLogKey, target: &str) -> Result<(), String> {
        let writer = key.writer();
        let owned: Vec<(u32, Arc<sluice_cluster::shard_log::ShardLog>)> = self
            .logs
            .lock()
            .iter()
            .filter(|(shard, _)| shard.stream == target)
            .map(|(shard, (_, log))| (shard.shard, Arc::clone(log)))
            .collect();
        if owned.is_empty() {
            return Ok(());
        }
        // A log stopped by a failed write is opened again (as a put would), then goes on.
        let mut open = Vec::with_capacity(owned.len());
        for (shard, log) in owned {
            if log.is_stopped() {
                let stream = self.engine.stream(target).map_err(|e| e.to_string())?;
                let key = ShardKey::new(target, shard);
                open.push((shard, self.reopen(&stream, &key).await?));
            } else {
                open.push((shard, log));
            }
        }
        let owned = open;
        // Where each shard is: the last batch its log took, or a later one gone through for
        // it (a batch may hold no records for a shard) — here, or as recorded by an earlier
        // owner.
        let mut taken: HashMap<u32, u64> = HashMap::new();
        for (shard, log) in &owned {
            let known = self
                .pump_intake
                .lock()
                .get(&(key.clone(), ShardKey::new(target, *shard)))
                .map(|intake| intake.through);
            let through = match known {
                Some(through) => through,
                None => {
                    let recorded = pump_log::taken(self.coordinator.as_ref(), key, *shard)
                        .await
                        .map_err(|e| e.to_string())?;
                    self.pump_intake.lock().insert(
                        (key.clone(), ShardKey::new(target, *shard)),
                        Intake {
                            through: recorded,
                            recorded,
                            recorded_at: tokio::time::Instant::now(),
                        },
                    );
                    recorded
                }
            };
            taken.insert(*shard, log.last_batch_of(&writer).max(through));
        }
        let after = taken.values().copied().min().unwrap_or(0);
        let batches = pump_log::read_batches(
            self.coordinator.as_ref(),
            &self.storage,
            key,
            after,
            TAKE_AT_MOST,
        )
        .await
        .map_err(|e| e.to_string())?;
        if batches.is_empty() {
            self.record_taken(key, target).await;
            return Ok(());
        }
        // Each shard on its own, all at once: a batch's records go to their shards' logs.
        let results = futures::future::join_all(owned.iter().map(|(shard, log)| {
            let batches = &batches;
            let writer = &writer;
            let from = taken[shard];
            async move {
                let mut through = from;
                for batch in batches.iter().filter(|b| b.batch > from) {
                    let records: Vec<NewRecord> = pump_log::records_for(batch, *shard)
                        .map(|r| NewRecord {
                            partition_key: r.partition_key.clone(),
                            data: r.data.clone(),
                            arrival_ms: r.arrival_ms,
                        })
                        .collect();
                    if !records.is_empty()
                        && let Err(e) = log.append_once(writer, batch.batch, records).await
                    {
                        return (*shard, through, Err(e.to_string()));
                    }
                    through = batch.batch;
                }
                (*shard, through, Ok(()))
            }
        }))
        .await;
        let mut outcome = Ok(());
        {
            let mut intake = self.pump_intake.lock();
            for (shard, through, result) in results {
                if let Some(intake) = intake.get_mut(&(key.clone(), ShardKey::new(target, shard))) {
                    intake.through = through;
                }
                outcome = outcome.and(result);
            }
        }
        self.record_taken(key, target).await;
        outcome
    }

    /// Records in etcd how far each shard of `target` owned here has gone through pump log
    /// `key`, for those that moved on since it was last recorded long enough ago.
    async fn record_taken(&self, key: &PumpLogKey, target: &str) {
        let now = tokio::time::Instant::now();
        let due: Vec<(u32, u64)> = self
            .pump_intake
            .lock()
            .iter()
            .filter(|((k, _), intake)| {
                k == key
                    && intake.through > intake.recorded
                    && now.duration_since(intake.recorded_at) >= RECORD_TAKEN_EVERY
            })
            .map(|((_, shard), intake)| (shard.shard, intake.through))
            .collect();
        for (shard, through) in due {
            let Some(fence) = self
                .ownership
                .get()
                .and_then(|o| o.fence(&ShardKey::new(target, shard)))
            else {
                continue;
            };
            match pump_log::record_taken(self.coordinator.as_ref(), key, shard, through, &fence)
                .await
            {
                Ok(true) => {
                    if let Some(intake) = self
                        .pump_intake
                        .lock()
                        .get_mut(&(key.clone(), ShardKey::new(target, shard)))
                    {
                        intake.recorded = through;
                        intake.recorded_at = now;
                    }
                }
                Ok(false) => {}
                Err(e) => log::debug!("cannot record how far {target} took pump {}: {e}", key.pump),
            }
        }
    }

    /// Deletes, for each pump running here, the batches every target shard has gone through.
    pub(super) async fn delete_taken_batches(&self, specs: &[KeyValue]) {
        for kv in specs {
            let Some(name) = kv.key.strip_prefix(keys::PUMPS) else {
                continue;
            };
            if !self.pumps.lock().contains_key(name) {
                continue;
            }
            let Ok(spec) = spec_of(kv) else { continue };
            let Some(target) = self.engine.try_stream(&spec.target) else {
                continue;
            };
            let shards: Vec<u32> = target.shards().iter().map(|s| s.index()).collect();
            let key = PumpLogKey::new(name, kv.create_revision);
            match pump_log::delete_taken(self.coordinator.as_ref(), &self.storage, &key, &shards)
                .await
            {
                Ok(0) => {}
                Ok(n) => log::debug!("pump {name}: deleted {n} batches every shard took"),
                Err(e) => log::warn!("pump {name}: cannot delete batches every shard took: {e}"),
            }
        }
    }
}
