//! A shard's log in object storage: what `durability = 'shared'` acknowledges against.
//!
//! The owner of a shard numbers records, groups those that arrive together (at most one group
//! commit per [`LogOptions::commit_every`]: at once when the shard has been idle that long,
//! else when the window passes, or sooner when [`LogOptions::max_bytes`] are waiting),
//! writes each group as one [`chunk`] object created with `PutMode::Create` (never
//! overwritten), and acknowledges the group once the object exists and its session is still
//! live. Groups are written one at a time, in order, so an acknowledged record's chunk and
//! every chunk before it are in storage: any node can rebuild the shard from them.
//!
//! **Epochs and the manifest.** The manifest (etcd, `manifest/{stream}@{incarnation}/{shard}`,
//! [`LogKey`]) lists where
//! each owner's epoch began: `[{epoch, first_seq}, …]`. A new owner, once it has claimed the
//! shard, reads the manifest, lists the chunks, and follows them from the start: a chunk
//! counts only if it was written by the epoch that owned its first sequence number, and only
//! while the chain stays contiguous. Where the chain ends is where its own epoch begins: it
//! appends `{its epoch, next_seq}` to the manifest with a put fenced by its owner key, and only
//! then writes. A zombie — an old owner still writing after it lost the shard — can still
//! create chunk objects, but under its old epoch at sequence numbers the manifest gives to the
//! new one, so nobody ever reads them; and it never acknowledges them, since its session
//! stopped being live before its lease could expire ([`crate::session`]).
//!
//! Sequence numbers keep increasing across owners: each continues from where the chain ends.
//!
//! **Batches taken once.** A writer that must not repeat itself (a pump moving between nodes
//! sends its last batch again) numbers its batches and logs them with
//! [`ShardLog::append_once`]: the log takes batch `k` of a writer only if it took none
//! numbered `k` or higher before. The last batch of each such writer ([`chunk::Producers`]) is
//! kept in every chunk's footer, and in the manifest where an epoch begins and at its base, so
//! a new owner knows it wherever its listing starts.
//!
//! Not yet done here: merging small chunks into segments, deleting chunks past retention, and
//! keeping the manifest's list of epochs short.

pub mod chunk;
pub mod follow;

use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

pub use chunk::{LogRecord, Producers};

use crate::keys::{self, ShardKey};
use crate::{Coordinator, CoordinatorError, Fence, Revision};

/// The first record of a shard is numbered 1, as the engine numbers them.
pub const FIRST_SEQ: u64 = 1;

/// Why the shard log refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogError {
    #[error("this node no longer owns {0}; send the request again (it goes to the new owner)")]
    NotOwner(String),
    #[error("object storage: {0}")]
    Storage(String),
    #[error(transparent)]
    Coordinator(#[from] CoordinatorError),
    #[error("{0}")]
    Corrupt(String),
}

pub type Result<T, E = LogError> = std::result::Result<T, E>;

/// Where one owner's epoch began.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochStart {
    pub epoch: Revision,
    pub first_seq: u64,
    /// The writers' last batches as of `first_seq`.
    #[serde(default, skip_serializing_if = "Producers::is_empty")]
    pub producers: Producers,
}

/// Which log: a shard of one incarnation of its stream. A stream deleted and created again
/// under the same name is another incarnation (the create revision of its `streams/` key), so
/// its shards start new logs rather than continuing the old ones.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LogKey {
    pub shard: ShardKey,
    pub incarnation: Revision,
}

impl LogKey {
    pub fn new(shard: ShardKey, incarnation: Revision) -> Self {
        Self { shard, incarnation }
    }

    /// The shard as the log names it: `{stream}@{incarnation}` (stream names cannot hold `@`).
    fn named(&self) -> ShardKey {
        ShardKey::new(
            format!("{}@{}", self.shard.stream, self.incarnation),
            self.shard.shard,
        )
    }

    /// Its manifest's key: `manifest/{stream}@{incarnation}/{shard}`.
    pub fn manifest_key(&self) -> String {
        self.named().key(keys::MANIFEST)
    }

    /// Where its chunks live: `{prefix}/{stream}@{incarnation}/{shard:06}/`.
    pub fn folder(&self, prefix: &Path) -> Path {
        chunk::shard_folder(prefix, &self.named())
    }
}

/// The shard's manifest, kept in etcd.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub epochs: Vec<EpochStart>,
    /// A sequence number where a chunk of the chain begins (or the chain ended), every chunk
    /// before it settled: an owner records it now and then ([`ShardLog::commit_base`]) so that
    /// a new owner that holds the records before it lists only the chunks from there on.
    #[serde(default)]
    pub base: u64,
    /// The writers' last batches as of `base`.
    #[serde(default, skip_serializing_if = "Producers::is_empty")]
    pub base_producers: Producers,
}

impl Manifest {
    /// Where a listing of the chain may begin for a reader that holds every record before
    /// `holding`: the latest boundary the manifest knows (an epoch's start, or the base; each
    /// begins a chunk or ends the chain, everything before it settled) at or before `holding`,
    /// else the chain's start.
    pub(crate) fn listing_start(&self, holding: u64) -> u64 {
        let first = self.epochs.first().map_or(FIRST_SEQ, |e| e.first_seq);
        self.epochs
            .iter()
            .map(|e| e.first_seq)
            .chain((self.base > 0).then_some(self.base))
            .filter(|&at| at <= holding)
            .max()
            .unwrap_or(first)
            .max(first)
    }

    /// The writers' last batches as of `start`, a boundary [`Manifest::listing_start`] gave.
    fn producers_at(&self, start: u64) -> Producers {
        if self.base > 0 && self.base == start {
            return self.base_producers.clone();
        }
        self.epochs
            .iter()
            .rev()
            .find(|e| e.first_seq == start)
            .map(|e| e.producers.clone())
            .unwrap_or_default()
    }

    /// The epoch whose chunks hold `seq`.
    fn owner_of(&self, seq: u64) -> Option<Revision> {
        self.epochs
            .iter()
            .rev()
            .find(|start| start.first_seq <= seq)
            .map(|start| start.epoch)
    }
}

/// How the log groups and writes.
#[derive(Debug, Clone, Copy)]
pub struct LogOptions {
    /// A shard writes at most one chunk per this interval: a record put to a shard that has
    /// not written for that long is written at once; under load, records wait for the window
    /// to pass and share a chunk (so a shard costs at most 1 / `commit_every` object writes a
    /// second).
    pub commit_every: Duration,
    /// A chunk is written as soon as this many bytes of data wait.
    pub max_bytes: usize,
}

impl Default for LogOptions {
    /// 50 ms or 4 MiB, whichever comes first.
    fn default() -> Self {
        Self {
            commit_every: Duration::from_millis(50),
            max_bytes: 4 * 1024 * 1024,
        }
    }
}

/// The shared durable tier: an object store and the prefix under which shards' logs live.
#[derive(Debug, Clone)]
pub struct SharedStorage {
    pub store: Arc<dyn ObjectStore>,
    pub prefix: Path,
}

/// What a new owner found: the records from where it asked, and the next sequence number.
#[derive(Debug)]
pub struct Recovered {
    pub records: Vec<LogRecord>,
    pub next_seq: u64,
    /// The writers' last batches as of `next_seq`.
    pub producers: Producers,
}

/// Whether the owner may still acknowledge (its session is live and the shard still its own).
pub type Liveness = Arc<dyn Fn() -> bool + Send + Sync>;

/// What the owner does with each group once it is durable, before it is acknowledged: append
/// it to its local copy. Called in log order, one group at a time, on a blocking thread; an
/// error stops the log (the owner opens it again, which appends what is missing).
pub type Apply = Arc<dyn Fn(&[LogRecord]) -> Result<(), String> + Send + Sync>;

/// A record to log.
#[derive(Debug, Clone)]
pub struct NewRecord {
    pub partition_key: String,
    pub data: Vec<u8>,
    pub arrival_ms: i64,
}

/// Where one logged record went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Logged {
    pub seq: u64,
    pub arrival_ms: i64,
}

/// A caller waiting for its records' sequence numbers.
type Reply = oneshot::Sender<Result<Vec<Logged>>>;

struct Pending {
    records: Vec<NewRecord>,
    /// A numbered batch of a writer, taken once only: `(writer, batch)`.
    once: Option<(String, u64)>,
    reply: Reply,
}

/// Where the chain of acknowledged chunks ends now (a chunk boundary), and the writers' last
/// batches there.
#[derive(Debug, Default)]
struct Tail {
    end: u64,
    producers: Producers,
}

/// The owner's handle on a shard's log; dropping it stops its writer.
pub struct ShardLog {
    shard: ShardKey,
    manifest_key: String,
    tail: Arc<std::sync::Mutex<Tail>>,
    queue: mpsc::Sender<Pending>,
    task: JoinHandle<()>,
    closing: Arc<std::sync::atomic::AtomicBool>,
}

impl Drop for ShardLog {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ShardLog {
    /// Opens `log` for its shard's new owner (holding `fence`): rebuilds the chain of chunks,
    /// returns the records from `from_seq` on, and commits where this epoch begins.
    #[allow(clippy::too_many_arguments)]
    pub async fn open(
        coordinator: &dyn Coordinator,
        storage: &SharedStorage,
        log: &LogKey,
        fence: &Fence,
        from_seq: u64,
        options: LogOptions,
        live: Liveness,
        apply: Apply,
    ) -> Result<(Self, Recovered)> {
        let store = storage.store.clone();
        let shard = &log.shard;
        let manifest_key = log.manifest_key();
        let mut manifest = read_manifest(coordinator, log).await?;
        let folder = log.folder(&storage.prefix);
        let recovered = recover(store.as_ref(), &folder, &manifest, from_seq).await?;
        if manifest.epochs.last().map(|e| e.epoch) != Some(fence.epoch) {
            manifest.epochs.push(EpochStart {
                epoch: fence.epoch,
                first_seq: recovered.next_seq,
                producers: recovered.producers.clone(),
            });
            let value = serde_json::to_vec(&manifest).unwrap_or_default();
            if !coordinator.put_fenced(fence, &manifest_key, value).await? {
                return Err(LogError::NotOwner(shard.to_string()));
            }
        }
        let tail = Arc::new(std::sync::Mutex::new(Tail {
            end: recovered.next_seq,
            producers: recovered.producers.clone(),
        }));
        let (queue, pending) = mpsc::channel(1024);
        let closing = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = Writer {
            tail: Arc::clone(&tail),
            producers: recovered.producers.clone(),
            apply,
            closing: Arc::clone(&closing),
            store,
            folder,
            shard: shard.clone(),
            epoch: fence.epoch,
            next_seq: recovered.next_seq,
            last_arrival_ms: recovered.records.last().map_or(i64::MIN, |r| r.arrival_ms),
            options,
            live,
        };
        let task = tokio::spawn(writer.run(pending));
        Ok((
            Self {
                shard: shard.clone(),
                manifest_key,
                tail,
                queue,
                task,
                closing,
            },
            recovered,
        ))
    }

    /// A planned handoff: refuses what has not started uploading and waits for the upload in
    /// flight, so that every write either was acknowledged or certainly left no chunk.
    pub async fn close(&self) {
        self.closing
            .store(true, std::sync::atomic::Ordering::SeqCst);
        // Answered once the writer reaches it: after any upload in flight.
        let _ = self.append(Vec::new()).await;
    }

    /// Records in the manifest (a put fenced by the owner's key) where the chain of
    /// acknowledged chunks ends now, as its base: a new owner then lists only the chunks from
    /// there. Cheap enough for once a minute, not for every write; whether it was recorded.
    pub async fn commit_base(&self, coordinator: &dyn Coordinator, fence: &Fence) -> Result<bool> {
        let (end, producers) = {
            let tail = self.tail.lock().unwrap_or_else(|e| e.into_inner());
            (tail.end, tail.producers.clone())
        };
        let Some(kv) = coordinator.get(&self.manifest_key).await? else {
            return Ok(false);
        };
        let mut manifest: Manifest = serde_json::from_slice(&kv.value).map_err(|e| {
            LogError::Corrupt(format!(
                "the manifest of {} cannot be read: {e}",
                self.shard
            ))
        })?;
        if manifest.base >= end {
            return Ok(true);
        }
        manifest.base = end;
        manifest.base_producers = producers;
        let value = serde_json::to_vec(&manifest).unwrap_or_default();
        Ok(coordinator
            .put_fenced(fence, &self.manifest_key, value)
            .await?)
    }

    /// The last batch of `writer` the log took (0: none), as of its last acknowledged chunk.
    pub fn last_batch_of(&self, writer: &str) -> u64 {
        let tail = self.tail.lock().unwrap_or_else(|e| e.into_inner());
        tail.producers.get(writer).copied().unwrap_or(0)
    }

    /// Whether the log stopped taking writes (a write failed, or the owner lost the shard).
    pub fn is_stopped(&self) -> bool {
        self.task.is_finished()
    }

    /// Logs `records` in order; their sequence numbers once they are durable in object storage.
    pub async fn append(&self, records: Vec<NewRecord>) -> Result<Vec<Logged>> {
        self.send(records, None).await
    }

    /// Logs `records`, batch `batch` of `writer`, unless the log took a batch of that writer
    /// numbered `batch` or higher before: their sequence numbers, or none if it had (the
    /// batch is in the log already, maybe written by this writer's previous node).
    pub async fn append_once(
        &self,
        writer: &str,
        batch: u64,
        records: Vec<NewRecord>,
    ) -> Result<Vec<Logged>> {
        self.send(records, Some((writer.to_string(), batch))).await
    }

    async fn send(
        &self,
        records: Vec<NewRecord>,
        once: Option<(String, u64)>,
    ) -> Result<Vec<Logged>> {
        let (reply, answer) = oneshot::channel();
        let gone = || LogError::NotOwner(self.shard.to_string());
        self.queue
            .send(Pending {
                records,
                once,
                reply,
            })
            .await
            .map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }
}

/// Follows the chain of chunks valid by `manifest`; the records from `from_seq` on.
async fn recover(
    store: &dyn ObjectStore,
    folder: &Path,
    manifest: &Manifest,
    from_seq: u64,
) -> Result<Recovered> {
    // A new owner that holds everything before the manifest's listing start reads only the
    // chunks from there: taking a long-written shard over does not list all its history.
    let start = manifest.listing_start(from_seq);
    let chunks: Vec<(u64, Revision, Path)> = list_chunks(store, folder, start)
        .await?
        .into_iter()
        .filter(|(first, epoch, _)| manifest.owner_of(*first) == Some(*epoch))
        .collect();
    let recovered = read_chain(
        store,
        &chunks,
        start,
        from_seq,
        manifest.producers_at(start),
    )
    .await?;
    if let Some((first, epoch, path)) = chunks.iter().find(|c| c.0 > recovered.next_seq) {
        log::warn!(
            "{path}: the chain ends at {} (no chunk starts there), so this chunk (from {first}, \
             epoch {epoch}) and any after it were never acknowledged; they are left unread",
            recovered.next_seq
        );
    }
    Ok(recovered)
}

/// Reads the chain that `chunks` (valid, in sequence order) make from sequence number `start`
/// (where the writers' last batches were `producers`) until the first gap; the records from
/// `from_seq` on, where the chain ends, and the writers' last batches there.
async fn read_chain(
    store: &dyn ObjectStore,
    chunks: &[(u64, Revision, Path)],
    start: u64,
    from_seq: u64,
    mut producers: Producers,
) -> Result<Recovered> {
    // The chunks to read: those not wholly before `from_seq` (a chunk's length is where its
    // successor starts). Read many at a time: a shard written one record per commit has as
    // many chunks as records, and a new owner must not take minutes to open it. The chain's
    // last chunk is always among them (its successor, if any, begins past the chain's end).
    let wanted: Vec<usize> = (0..chunks.len())
        .filter(|&i| {
            chunks
                .get(i + 1)
                .is_none_or(|(next, _, _)| *next > from_seq)
        })
        .collect();
    let paths: Vec<(usize, Path)> = wanted
        .into_iter()
        .map(|i| (i, chunks[i].2.clone()))
        .collect();
    let mut fetched = fetch(store, paths).await?;
    let mut next = start;
    let mut records = Vec::new();
    for (i, (first, _, path)) in chunks.iter().enumerate() {
        if *first != next {
            // A new owner's listing holds every chunk written before its claim (chunks are
            // written in order), so what follows a gap was never acknowledged. A follower may
            // list while chunks are being written and miss one for a moment (a listing is not
            // a snapshot on every store); it reads on from the gap next time.
            log::debug!("{path}: expected a chunk from {next}; the chain ends there");
            break;
        }
        let Some(chunk) = fetched.remove(&i) else {
            // Wholly before what the caller asked for: its length is its successor's start.
            next = chunks.get(i + 1).map_or(next, |(f, _, _)| *f);
            continue;
        };
        check_numbering(path, *first, &chunk.records)?;
        next = first + chunk.records.len() as u64;
        producers = chunk.producers;
        records.extend(chunk.records.into_iter().filter(|r| r.seq >= from_seq));
    }
    Ok(Recovered {
        records,
        next_seq: next,
        producers,
    })
}

/// The chunks in `folder` that begin at sequence number `from` or later: first sequence
/// number, epoch and path, in sequence order. Only those are listed: their names sort after the
/// name of any chunk beginning at `from - 1`, whatever its epoch.
async fn list_chunks(
    store: &dyn ObjectStore,
    folder: &Path,
    from: u64,
) -> Result<Vec<(u64, Revision, Path)>> {
    let listing = if from > FIRST_SEQ {
        store.list_with_offset(
            Some(folder),
            &chunk::chunk_path(folder, from - 1, Revision::MAX),
        )
    } else {
        store.list(Some(folder))
    };
    let listed: Vec<object_store::ObjectMeta> = listing
        .try_collect()
        .await
        .map_err(|e| LogError::Storage(format!("cannot list {folder}: {e}")))?;
    let mut chunks: Vec<(u64, Revision, Path)> = listed
        .into_iter()
        .filter_map(|meta| {
            let (first, epoch) = chunk::parse_chunk_name(meta.location.filename()?)?;
            Some((first, epoch, meta.location))
        })
        .collect();
    chunks.sort_by_key(|(first, _, _)| *first);
    Ok(chunks)
}

/// The shard's manifest as etcd holds it now.
async fn read_manifest(coordinator: &dyn Coordinator, log: &LogKey) -> Result<Manifest> {
    let shard = &log.shard;
    match coordinator.get(&log.manifest_key()).await? {
        Some(kv) => serde_json::from_slice(&kv.value)
            .map_err(|e| LogError::Corrupt(format!("the manifest of {shard} cannot be read: {e}"))),
        None => Ok(Manifest::default()),
    }
}

/// The bytes of the object at `path`.
pub(crate) async fn read_object(store: &dyn ObjectStore, path: &Path) -> Result<bytes::Bytes> {
    let read = |e: object_store::Error| LogError::Storage(format!("cannot read {path}: {e}"));
    store
        .get(path)
        .await
        .map_err(read)?
        .bytes()
        .await
        .map_err(read)
}

/// The objects under `folder`.
pub(crate) async fn list_objects(
    store: &dyn ObjectStore,
    folder: &Path,
) -> Result<Vec<object_store::ObjectMeta>> {
    store
        .list(Some(folder))
        .try_collect()
        .await
        .map_err(|e| LogError::Storage(format!("cannot list {folder}: {e}")))
}

/// How many chunks a new owner reads at once.
const READ_AHEAD: usize = 32;

/// Reads and decodes the chunks at `paths`, [`READ_AHEAD`] at a time; each under its key.
async fn fetch<K: Eq + std::hash::Hash + Send + 'static>(
    store: &dyn ObjectStore,
    paths: Vec<(K, Path)>,
) -> Result<std::collections::HashMap<K, chunk::Chunk>> {
    futures::stream::iter(paths.into_iter().map(|(key, path)| async move {
        let bytes = read_object(store, &path).await?;
        let chunk = chunk::decode(bytes).map_err(|e| LogError::Corrupt(format!("{path}: {e}")))?;
        Ok::<_, LogError>((key, chunk))
    }))
    .buffer_unordered(READ_AHEAD)
    .try_collect()
    .await
}

/// Checks that `chunk`, read from `path`, numbers its records on from `first`.
fn check_numbering(path: &Path, first: u64, chunk: &[LogRecord]) -> Result<()> {
    if chunk
        .iter()
        .enumerate()
        .any(|(at, r)| r.seq != first + at as u64)
    {
        return Err(LogError::Corrupt(format!(
            "{path}: sequence numbers do not follow from {first}"
        )));
    }
    Ok(())
}

struct Writer {
    tail: Arc<std::sync::Mutex<Tail>>,
    /// The writers' last batches as of `next_seq`.
    producers: Producers,
    apply: Apply,
    closing: Arc<std::sync::atomic::AtomicBool>,
    store: Arc<dyn ObjectStore>,
    folder: Path,
    shard: ShardKey,
    epoch: Revision,
    next_seq: u64,
    last_arrival_ms: i64,
    options: LogOptions,
    live: Liveness,
}

impl Writer {
    async fn run(mut self, mut queue: mpsc::Receiver<Pending>) {
        // When the last chunk began: a shard writes at most one chunk per `commit_every`.
        let mut last_chunk: Option<Instant> = None;
        while let Some(first) = queue.recv().await {
            let mut group = vec![first];
            let mut bytes: usize = group[0].records.iter().map(|r| r.data.len()).sum();
            // An idle shard writes at once (with whatever else is already waiting); a busy one
            // gathers what arrives until a window after its last chunk began.
            let now = Instant::now();
            let deadline = last_chunk.map_or(now, |at| (at + self.options.commit_every).max(now));
            while bytes < self.options.max_bytes {
                match tokio::time::timeout_at(deadline, queue.recv()).await {
                    Ok(Some(more)) => {
                        bytes += more.records.iter().map(|r| r.data.len()).sum::<usize>();
                        group.push(more);
                    }
                    Ok(None) | Err(_) => break,
                }
            }
            last_chunk = Some(Instant::now());
            if let Err(err) = self.commit(group).await {
                // Whether the chunk landed is unknown: nothing more is written in this epoch.
                // The owner gives the shard up and whoever opens it next reads what is there.
                log::error!("{}: {err}; the log stops taking writes", self.shard);
                queue.close();
                while let Some(pending) = queue.recv().await {
                    let _ = pending.reply.send(Err(err.clone()));
                }
                return;
            }
        }
    }

    async fn commit(&mut self, group: Vec<Pending>) -> Result<()> {
        let first_seq = self.next_seq;
        let mut records = Vec::new();
        let mut answers = Vec::with_capacity(group.len());
        let mut producers = self.producers.clone();
        for pending in group {
            if let Some((writer, batch)) = pending.once {
                if producers.get(&writer).is_some_and(|&last| last >= batch) {
                    // Taken before: answered with no sequence numbers, nothing written.
                    answers.push((pending.reply, Vec::new()));
                    continue;
                }
                producers.insert(writer, batch);
            }
            let mut logged = Vec::with_capacity(pending.records.len());
            for record in pending.records {
                // Arrival times never go backwards within a shard.
                self.last_arrival_ms = self.last_arrival_ms.max(record.arrival_ms);
                let seq = first_seq + records.len() as u64;
                logged.push(Logged {
                    seq,
                    arrival_ms: self.last_arrival_ms,
                });
                records.push(LogRecord {
                    seq,
                    arrival_ms: self.last_arrival_ms,
                    partition_key: record.partition_key,
                    data: record.data,
                });
            }
            answers.push((pending.reply, logged));
        }
        if records.is_empty() {
            for (reply, logged) in answers {
                let _ = reply.send(Ok(logged));
            }
            return Ok(());
        }
        let not_owner = || LogError::NotOwner(self.shard.to_string());
        let refuse = |answers: Vec<(Reply, Vec<Logged>)>, err: &LogError| {
            for (reply, _) in answers {
                let _ = reply.send(Err(err.clone()));
            }
        };
        if !(self.live)() || self.closing.load(std::sync::atomic::Ordering::SeqCst) {
            let err = not_owner();
            refuse(answers, &err);
            return Err(err);
        }
        let body = match chunk::encode(&records, &producers) {
            Ok(body) => body,
            Err(e) => {
                let err = LogError::Storage(format!("cannot encode a chunk: {e}"));
                refuse(answers, &err);
                return Err(err);
            }
        };
        let path = chunk::chunk_path(&self.folder, first_seq, self.epoch);
        let put = self
            .store
            .put_opts(
                &path,
                PutPayload::from(body),
                PutOptions {
                    mode: PutMode::Create,
                    ..PutOptions::default()
                },
            )
            .await;
        if let Err(e) = put {
            let err = LogError::Storage(format!("cannot write {path}: {e}"));
            refuse(answers, &err);
            return Err(err);
        }
        // Acknowledged only while the session is certainly alive: past its deadline another
        // node may already own the shard and not have seen this chunk.
        if !(self.live)() {
            let err = not_owner();
            refuse(answers, &err);
            return Err(err);
        }
        self.next_seq = first_seq + records.len() as u64;
        // Applied here, in log order, so the owner's copy never sees a later group first.
        let apply = Arc::clone(&self.apply);
        let applied = tokio::task::spawn_blocking(move || apply(&records))
            .await
            .map_err(|e| e.to_string())
            .and_then(|applied| applied);
        if let Err(reason) = applied {
            let err = LogError::Storage(format!(
                "logged to shared storage but not applied here: {reason}"
            ));
            refuse(answers, &err);
            return Err(err);
        }
        *self.tail.lock().unwrap_or_else(|e| e.into_inner()) = Tail {
            end: self.next_seq,
            producers: producers.clone(),
        };
        self.producers = producers;
        for (reply, logged) in answers {
            let _ = reply.send(Ok(logged));
        }
        Ok(())
    }
}
