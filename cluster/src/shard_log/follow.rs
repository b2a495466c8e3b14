//! Reading a shard one does not own: every node keeps a copy of every shard by following the
//! shards' logs in object storage, so a query (or a pump) on any node reads every record its
//! owners logged, a moment after they did.
//!
//! A follower may take a chunk only once no later owner can disown it. Chunks of an epoch that
//! a later epoch closed (the manifest says where the next one began) are settled. Chunks of the
//! manifest's last epoch are settled too if, *after they were listed*, that epoch still owned
//! the shard, or nobody did: a next owner claims the shard later still, so it lists them and
//! continues after them. Otherwise — a new owner has claimed the shard and may not have
//! committed where its epoch begins — the follower takes only the closed epochs' chunks and
//! waits: the last epoch's latest chunk may be a zombie's, which the new owner never read.

use object_store::path::Path;

use super::{
    LogKey, LogRecord, Producers, Result, SharedStorage, list_chunks, read_chain, read_manifest,
};
use crate::keys::{self, ShardKey};
use crate::{Coordinator, Revision};

/// A node's reader of one shard's log, which it does not own.
#[derive(Debug, Clone)]
pub struct Follower {
    log: LogKey,
    /// A sequence number known to begin a chunk (where the last read ended).
    chunk_starts_at: Option<u64>,
    /// Whether the last read left chunks that a new owner, which has claimed the shard but not
    /// said yet where its epoch begins, may still confirm.
    waiting: bool,
}

impl Follower {
    pub fn new(log: LogKey) -> Self {
        Self {
            log,
            chunk_starts_at: None,
            waiting: false,
        }
    }

    /// Whether the last [`read`](Self::read) held back chunks it listed because a new owner
    /// has claimed the shard and not yet said where its epoch begins: they are probably
    /// settled a moment later (once it has), and a reader that must see every acknowledged
    /// record reads again.
    pub fn waiting(&self) -> bool {
        self.waiting
    }

    pub fn shard(&self) -> &ShardKey {
        &self.log.shard
    }

    pub fn log(&self) -> &LogKey {
        &self.log
    }

    /// The records of the shard's log from `next_seq` on that no owner can disown any more, in
    /// order (empty if there are none yet). Cheap when there is nothing new and `next_seq` is
    /// where the last read ended: one listing of the chunks from `next_seq` on, nothing asked
    /// of etcd.
    pub async fn read(
        &mut self,
        coordinator: &dyn Coordinator,
        storage: &SharedStorage,
        next_seq: u64,
    ) -> Result<Vec<LogRecord>> {
        let store = storage.store.as_ref();
        let folder = self.log.folder(&storage.prefix);
        self.waiting = false;
        let read = if self.chunk_starts_at == Some(next_seq) {
            let listed = list_chunks(store, &folder, next_seq).await?;
            if listed.is_empty() {
                return Ok(Vec::new());
            }
            let (chunks, waiting) = settled(coordinator, &self.log, listed).await?;
            self.waiting = waiting;
            read_chain(store, &chunks, next_seq, next_seq, Producers::new()).await?
        } else {
            // Where `next_seq` falls is not known (the first read, or the copy was filled some
            // other way): follow the chain from the manifest's listing start if this copy
            // holds everything before it, else from the beginning.
            let start = read_manifest(coordinator, &self.log)
                .await?
                .listing_start(next_seq);
            let listed = list_chunks(store, &folder, start).await?;
            let (chunks, waiting) = settled(coordinator, &self.log, listed).await?;
            self.waiting = waiting;
            read_chain(store, &chunks, start, next_seq, Producers::new()).await?
        };
        if read.next_seq >= next_seq {
            self.chunk_starts_at = Some(read.next_seq);
        }
        Ok(read.records)
    }
}

/// The chunks of `listed` that no owner can disown any more, judged by the owner key and the
/// manifest as they are now (after the listing); and whether any were held back only because
/// a new owner has not yet said where its epoch begins (rather than disowned for good).
async fn settled(
    coordinator: &dyn Coordinator,
    log: &LogKey,
    listed: Vec<(u64, Revision, Path)>,
) -> Result<(Vec<(u64, Revision, Path)>, bool)> {
    // The owner first, then the manifest: a manifest read later cannot be older.
    let owner = coordinator
        .get(&log.shard.key(keys::OWNER))
        .await?
        .map(|kv| kv.create_revision);
    let manifest = read_manifest(coordinator, log).await?;
    let last = manifest.epochs.last().map(|e| e.epoch);
    let claimed_since = owner.is_some() && owner != last;
    let (chunks, held): (Vec<_>, Vec<_>) = listed
        .into_iter()
        .filter(|(first, epoch, _)| manifest.owner_of(*first) == Some(*epoch))
        .partition(|(_, epoch, _)| Some(*epoch) != last || !claimed_since);
    Ok((chunks, !held.is_empty()))
}
