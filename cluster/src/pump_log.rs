//! A pump's output in a cluster, committed once however often the pump moves.
//!
//! A pump whose target is a shared stream runs on one node at a time: it is leased like a
//! shard (the unit [`ShardKey::pump`](crate::keys::ShardKey::pump)), and each owner's epoch
//! fences what it commits. Its owner writes each batch of output, with the input positions
//! that come after it (the checkpoint), as one object created once —
//! `{prefix}/.pumps/{pump}@{incarnation}/{batch:020}-{epoch:020}.arrow` — then commits the
//! batch's number in etcd (`pumplog/{pump}@{incarnation}`, a put fenced by its owner key). A
//! batch counts only once committed, and only the object its committing epoch wrote: like a
//! shard's manifest, the state lists where each owner's epoch began, so a zombie's object for
//! a batch number the next owner took is never read.
//!
//! The target shards' owners take each committed batch in order, each its own records, with
//! [`ShardLog::append_once`](crate::shard_log::ShardLog::append_once): a batch taken before
//! (by this owner or the shard's previous one) is not taken again. A new pump owner resumes
//! from the last committed batch's checkpoint, so nothing is repeated or skipped when a pump
//! moves.
//!
//! Each target shard's owner records now and then (fenced by its owner key) the last batch it
//! has gone through ([`record_taken`]): its next owner starts there, and the pump's owner
//! deletes the batches every target shard has gone through, but never the last committed one
//! ([`delete_taken`]).

use std::sync::{Arc, LazyLock};

use arrow::array::{BinaryArray, Int64Array, RecordBatch, StringArray, UInt32Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};

use crate::keys;
use crate::shard_log::chunk::{read_file, write_file};
use crate::shard_log::{LogError, Result, SharedStorage, list_objects, read_object};
use crate::{Coordinator, Fence, Revision};

/// Which pump log: a pump of one incarnation (the create revision of its `pumps/` key).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PumpLogKey {
    pub pump: String,
    pub incarnation: Revision,
}

impl PumpLogKey {
    pub fn new(pump: impl Into<String>, incarnation: Revision) -> Self {
        Self {
            pump: pump.into(),
            incarnation,
        }
    }

    /// `pumplog/{pump}@{incarnation}`.
    pub fn state_key(&self) -> String {
        format!("{}{}@{}", keys::PUMP_LOGS, self.pump, self.incarnation)
    }

    /// `{prefix}/.pumps/{pump}@{incarnation}/`.
    pub fn folder(&self, prefix: &Path) -> Path {
        prefix
            .clone()
            .join(".pumps")
            .join(format!("{}@{}", self.pump, self.incarnation).as_str())
    }

    /// `pumptaken/{pump}@{incarnation}/{shard:06}`.
    fn taken_key(&self, shard: u32) -> String {
        format!(
            "{}{}@{}/{shard:06}",
            keys::PUMPS_TAKEN,
            self.pump,
            self.incarnation
        )
    }

    /// The name the target shards' logs know the pump's batches by.
    pub fn writer(&self) -> String {
        format!("{}@{}", self.pump, self.incarnation)
    }
}

/// One record of a pump's output, routed to its target shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PumpRecord {
    pub shard: u32,
    pub arrival_ms: i64,
    pub partition_key: String,
    pub data: Vec<u8>,
}

/// A committed batch: its number, its records, and where the pump's input resumes after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PumpBatch {
    pub batch: u64,
    pub records: Vec<PumpRecord>,
    pub checkpoint: Vec<u8>,
}

/// Where one owner's epoch began.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct EpochStart {
    epoch: Revision,
    first_batch: u64,
}

/// The pump log's state in etcd.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct State {
    epochs: Vec<EpochStart>,
    /// The last committed batch (0: none yet; batches count from 1).
    last: u64,
}

impl State {
    fn owner_of(&self, batch: u64) -> Option<Revision> {
        self.epochs
            .iter()
            .rev()
            .find(|e| e.first_batch <= batch)
            .map(|e| e.epoch)
    }
}

/// The pump owner's handle on its log.
#[derive(Debug)]
pub struct PumpLog {
    key: PumpLogKey,
    fence: Fence,
    store: Arc<dyn ObjectStore>,
    folder: Path,
    state: State,
}

impl PumpLog {
    /// Opens the log for the pump's new owner (holding `fence`): the last committed batch, to
    /// resume from, and the epoch's start committed.
    pub async fn open(
        coordinator: &dyn Coordinator,
        storage: &SharedStorage,
        key: &PumpLogKey,
        fence: &Fence,
    ) -> Result<(Self, Option<PumpBatch>)> {
        let mut state = read_state(coordinator, key).await?;
        let folder = key.folder(&storage.prefix);
        let store = Arc::clone(&storage.store);
        let last = match state.last {
            0 => None,
            batch => Some(read_batch(store.as_ref(), &folder, &state, batch).await?),
        };
        if state.epochs.last().map(|e| e.epoch) != Some(fence.epoch) {
            state.epochs.push(EpochStart {
                epoch: fence.epoch,
                first_batch: state.last + 1,
            });
            put_state(coordinator, fence, key, &state).await?;
        }
        Ok((
            Self {
                key: key.clone(),
                fence: fence.clone(),
                store,
                folder,
                state,
            },
            last,
        ))
    }

    /// The number the next batch gets.
    pub fn next_batch(&self) -> u64 {
        self.state.last + 1
    }

    /// Commits the next batch: its object, then its number (fenced); the batch's number.
    /// `NotOwner` once another node owns the pump.
    pub async fn commit(
        &mut self,
        coordinator: &dyn Coordinator,
        records: &[PumpRecord],
        checkpoint: &[u8],
    ) -> Result<u64> {
        let batch = self.next_batch();
        let body = encode(records, checkpoint)
            .map_err(|e| LogError::Storage(format!("cannot encode a pump batch: {e}")))?;
        let path = batch_path(&self.folder, batch, self.fence.epoch);
        self.store
            .put_opts(
                &path,
                PutPayload::from(body),
                PutOptions {
                    mode: PutMode::Create,
                    ..PutOptions::default()
                },
            )
            .await
            .map_err(|e| LogError::Storage(format!("cannot write {path}: {e}")))?;
        let mut state = self.state.clone();
        state.last = batch;
        put_state(coordinator, &self.fence, &self.key, &state).await?;
        self.state = state;
        Ok(batch)
    }
}

/// The committed batches of pump log `key` after batch `after`, in order, at most `limit`.
pub async fn read_batches(
    coordinator: &dyn Coordinator,
    storage: &SharedStorage,
    key: &PumpLogKey,
    after: u64,
    limit: usize,
) -> Result<Vec<PumpBatch>> {
    let state = read_state(coordinator, key).await?;
    if state.last <= after {
        return Ok(Vec::new());
    }
    let folder = key.folder(&storage.prefix);
    let store = storage.store.as_ref();
    let mut batches = Vec::new();
    for batch in (after + 1..=state.last).take(limit) {
        batches.push(read_batch(store, &folder, &state, batch).await?);
    }
    Ok(batches)
}

/// The last batch committed to pump log `key` (0: none).
pub async fn last_batch(coordinator: &dyn Coordinator, key: &PumpLogKey) -> Result<u64> {
    Ok(read_state(coordinator, key).await?.last)
}

/// Removes pump log `key`: its state in etcd and its batches (a dropped pump).
pub async fn remove(
    coordinator: &dyn Coordinator,
    storage: &SharedStorage,
    key: &PumpLogKey,
) -> Result<()> {
    let folder = key.folder(&storage.prefix);
    let listed = list_objects(storage.store.as_ref(), &folder).await?;
    for meta in listed {
        storage
            .store
            .delete(&meta.location)
            .await
            .map_err(|e| LogError::Storage(format!("cannot delete {}: {e}", meta.location)))?;
    }
    let taken_prefix = format!("{}{}@{}/", keys::PUMPS_TAKEN, key.pump, key.incarnation);
    let state = coordinator.get(&key.state_key()).await?;
    for kv in coordinator
        .list(&taken_prefix)
        .await?
        .into_iter()
        .chain(state)
    {
        let fence = Fence {
            key: kv.key,
            epoch: kv.create_revision,
        };
        coordinator.release(&fence).await?;
    }
    Ok(())
}

/// Records that target shard `shard` has gone through batch `batch` of pump log `key` (a put
/// fenced by the shard's owner key); whether it was recorded.
pub async fn record_taken(
    coordinator: &dyn Coordinator,
    key: &PumpLogKey,
    shard: u32,
    batch: u64,
    fence: &Fence,
) -> Result<bool> {
    Ok(coordinator
        .put_fenced(fence, &key.taken_key(shard), batch.to_string().into_bytes())
        .await?)
}

/// The last batch of pump log `key` target shard `shard` was recorded to have gone through.
pub async fn taken(coordinator: &dyn Coordinator, key: &PumpLogKey, shard: u32) -> Result<u64> {
    Ok(coordinator
        .get(&key.taken_key(shard))
        .await?
        .and_then(|kv| String::from_utf8(kv.value).ok()?.parse().ok())
        .unwrap_or(0))
}

/// Deletes the batches of pump log `key` that each of the target's shards `shards` has gone
/// through, except the last committed one (a new owner resumes from it); how many.
pub async fn delete_taken(
    coordinator: &dyn Coordinator,
    storage: &SharedStorage,
    key: &PumpLogKey,
    shards: &[u32],
) -> Result<usize> {
    let mut everywhere = u64::MAX;
    for &shard in shards {
        everywhere = everywhere.min(taken(coordinator, key, shard).await?);
    }
    let last = read_state(coordinator, key).await?.last;
    let below = everywhere.min(last);
    if below <= 1 {
        return Ok(0);
    }
    let folder = key.folder(&storage.prefix);
    let listed = list_objects(storage.store.as_ref(), &folder).await?;
    let mut deleted = 0;
    for meta in listed {
        let Some(batch) = meta
            .location
            .filename()
            .and_then(|name| name.split_once('-'))
            .and_then(|(batch, _)| batch.parse::<u64>().ok())
        else {
            continue;
        };
        if batch < below {
            storage
                .store
                .delete(&meta.location)
                .await
                .map_err(|e| LogError::Storage(format!("cannot delete {}: {e}", meta.location)))?;
            deleted += 1;
        }
    }
    Ok(deleted)
}

fn batch_path(folder: &Path, batch: u64, epoch: Revision) -> Path {
    folder
        .clone()
        .join(format!("{batch:020}-{epoch:020}.arrow").as_str())
}

async fn read_state(coordinator: &dyn Coordinator, key: &PumpLogKey) -> Result<State> {
    match coordinator.get(&key.state_key()).await? {
        Some(kv) => serde_json::from_slice(&kv.value).map_err(|e| {
            LogError::Corrupt(format!("the log of pump {} cannot be read: {e}", key.pump))
        }),
        None => Ok(State::default()),
    }
}

async fn put_state(
    coordinator: &dyn Coordinator,
    fence: &Fence,
    key: &PumpLogKey,
    state: &State,
) -> Result<()> {
    let value = serde_json::to_vec(state).unwrap_or_default();
    if coordinator
        .put_fenced(fence, &key.state_key(), value)
        .await?
    {
        Ok(())
    } else {
        Err(LogError::NotOwner(format!("pump {}", key.pump)))
    }
}

/// Reads committed batch `batch`: the object its epoch wrote.
async fn read_batch(
    store: &dyn ObjectStore,
    folder: &Path,
    state: &State,
    batch: u64,
) -> Result<PumpBatch> {
    let epoch = state
        .owner_of(batch)
        .ok_or_else(|| LogError::Corrupt(format!("no epoch of {folder} holds batch {batch}")))?;
    let path = batch_path(folder, batch, epoch);
    let bytes = read_object(store, &path).await?;
    let (records, checkpoint) =
        decode(bytes).map_err(|e| LogError::Corrupt(format!("{path}: {e}")))?;
    Ok(PumpBatch {
        batch,
        records,
        checkpoint,
    })
}

static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("shard", DataType::UInt32, false),
        Field::new("arrival_ms", DataType::Int64, false),
        Field::new("partition_key", DataType::Utf8, false),
        Field::new("data", DataType::Binary, false),
    ]))
});

/// The key in a batch's footer under which its checkpoint is kept.
const CHECKPOINT_KEY: &str = "sluice.checkpoint";

fn encode(records: &[PumpRecord], checkpoint: &[u8]) -> Result<Vec<u8>, String> {
    let batch = RecordBatch::try_new(
        SCHEMA.clone(),
        vec![
            Arc::new(UInt32Array::from_iter_values(
                records.iter().map(|r| r.shard),
            )),
            Arc::new(Int64Array::from_iter_values(
                records.iter().map(|r| r.arrival_ms),
            )),
            Arc::new(StringArray::from_iter_values(
                records.iter().map(|r| r.partition_key.as_str()),
            )),
            Arc::new(BinaryArray::from_iter_values(
                records.iter().map(|r| r.data.as_slice()),
            )),
        ],
    )
    .map_err(|e| e.to_string())?;
    let checkpoint = String::from_utf8(checkpoint.to_vec())
        .map_err(|_| "a pump's checkpoint is JSON text".to_string())?;
    write_file(&batch, vec![(CHECKPOINT_KEY, checkpoint)]).map_err(|e| e.to_string())
}

fn decode(bytes: bytes::Bytes) -> Result<(Vec<PumpRecord>, Vec<u8>), String> {
    let (batches, mut footer) = read_file(bytes, &SCHEMA)?;
    let checkpoint = footer
        .remove(CHECKPOINT_KEY)
        .ok_or("no checkpoint in its footer")?
        .into_bytes();
    let mut records = Vec::new();
    for batch in batches {
        let column = |i: usize| batch.column(i).as_ref();
        let (Some(shard), Some(arrival), Some(keys), Some(data)) = (
            column(0).as_any().downcast_ref::<UInt32Array>(),
            column(1).as_any().downcast_ref::<Int64Array>(),
            column(2).as_any().downcast_ref::<StringArray>(),
            column(3).as_any().downcast_ref::<BinaryArray>(),
        ) else {
            return Err("columns of the wrong types".into());
        };
        for row in 0..batch.num_rows() {
            records.push(PumpRecord {
                shard: shard.value(row),
                arrival_ms: arrival.value(row),
                partition_key: keys.value(row).to_string(),
                data: data.value(row).to_vec(),
            });
        }
    }
    Ok((records, checkpoint))
}

/// The records of `batch` for shard `shard`.
pub fn records_for(batch: &PumpBatch, shard: u32) -> impl Iterator<Item = &PumpRecord> {
    batch.records.iter().filter(move |r| r.shard == shard)
}
