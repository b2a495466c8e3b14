//! Events shared among the `SubscribeToShard` subscriptions that read one shard from the same
//! place. Consumers at the tail of a shard are all woken by the same append and all read from
//! the same sequence number, so the first to ask reads the records and encodes the event; the
//! others wait for it and send the same bytes. Five consumers then cost one read and one
//! encoding per append, not five.
//!
//! Under load the consumers drift a little apart in time: one is woken by an append another has
//! not seen yet. An event read before a subscription's latest append is still taken if it has
//! records (the subscription then comes straight back for what it lacks, the shard being
//! ahead of it); an empty one is read again. So consumers at one place share its read however
//! their wake-ups interleave, and none waits on an event older than what it was woken for.
//! Places behind the newest one asked for are forgotten, and a shard's events go when its last
//! subscription ends.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::OnceCell;

use crate::error::ApiError;
use crate::wire::Protocol;

/// One encoded `SubscribeToShardEvent` and where the subscription goes on from.
#[derive(Debug)]
pub(crate) struct PreparedEvent {
    /// The event-stream message, framed.
    pub frame: Bytes,
    /// How many records it carries.
    pub records: usize,
    /// The counter of the first record after it.
    pub next_seq: u64,
    /// Whether a limit cut the read short.
    pub full: bool,
    /// Whether it ends a closed shard (it carries `ChildShards`).
    pub closed: bool,
}

/// Which shard, as which encoding: (stream id, shard, protocol).
type ShardKey = (u64, u32, Protocol);

type Cell = Arc<OnceCell<Arc<PreparedEvent>>>;

/// The events being read or read for one shard.
#[derive(Default)]
struct ShardEvents {
    subscribers: usize,
    /// (from, append count seen before reading, the event).
    slots: Vec<(u64, u64, Cell)>,
}

/// Every shard's shared events.
#[derive(Default)]
pub(crate) struct SharedEvents {
    shards: Mutex<HashMap<ShardKey, ShardEvents>>,
}

impl std::fmt::Debug for SharedEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedEvents")
            .field("shards", &self.shards.lock().len())
            .finish()
    }
}

impl SharedEvents {
    /// Joins the subscriptions of `(stream_id, shard)` in `protocol` until the guard drops.
    pub(crate) fn join(
        self: &Arc<Self>,
        stream_id: u64,
        shard: u32,
        protocol: Protocol,
    ) -> SharedTail {
        let key = (stream_id, shard, protocol);
        self.shards.lock().entry(key).or_default().subscribers += 1;
        SharedTail {
            events: Arc::clone(self),
            key,
        }
    }

    #[cfg(test)]
    fn slots(&self, key: ShardKey) -> usize {
        self.shards.lock().get(&key).map_or(0, |s| s.slots.len())
    }
}

/// A subscription's membership of its shard's shared events.
pub(crate) struct SharedTail {
    events: Arc<SharedEvents>,
    key: ShardKey,
}

impl SharedTail {
    /// The event read from `from` for a subscription woken by the stream's `appends`-th append:
    /// the one another subscription has read (or is reading) for that place when it is recent
    /// enough or carries records, or else one `read` makes now.
    pub(crate) async fn event<F, Fut>(
        &self,
        from: u64,
        appends: u64,
        read: F,
    ) -> Result<Arc<PreparedEvent>, ApiError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<PreparedEvent, ApiError>>,
    {
        loop {
            let (cell, fresh) = self.cell(from, appends);
            let event = cell
                .get_or_try_init(|| async { read().await.map(Arc::new) })
                .await
                .cloned()?;
            // An older event with records still moves the subscription on (it comes back at
            // once for what it lacks); an older empty one would only send it round again.
            if fresh || event.records > 0 || event.closed {
                return Ok(event);
            }
            self.forget(from, &cell);
        }
    }

    /// The cell for events from `from`, and whether it was read after the `appends`-th append.
    fn cell(&self, from: u64, appends: u64) -> (Cell, bool) {
        let mut shards = self.events.shards.lock();
        let shard = shards.entry(self.key).or_default();
        if let Some((_, seen, cell)) = shard.slots.iter().find(|(at, _, _)| *at == from) {
            return (Arc::clone(cell), *seen >= appends);
        }
        let cell: Cell = Arc::new(OnceCell::new());
        // Places behind this one are no subscription's tail any more.
        shard.slots.retain(|(at, _, _)| *at > from);
        shard.slots.push((from, appends, Arc::clone(&cell)));
        (cell, true)
    }

    /// Drops `cell` from the slot for `from`, so the next ask reads anew.
    fn forget(&self, from: u64, cell: &Cell) {
        let mut shards = self.events.shards.lock();
        if let Some(shard) = shards.get_mut(&self.key) {
            shard
                .slots
                .retain(|(at, _, c)| !(*at == from && Arc::ptr_eq(c, cell)));
        }
    }
}

impl Drop for SharedTail {
    fn drop(&mut self) {
        let mut shards = self.events.shards.lock();
        if let Some(shard) = shards.get_mut(&self.key) {
            shard.subscribers -= 1;
            if shard.subscribers == 0 {
                shards.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn event(next_seq: u64) -> PreparedEvent {
        PreparedEvent {
            frame: Bytes::from(format!("event to {next_seq}")),
            records: 1,
            next_seq,
            full: false,
            closed: false,
        }
    }

    #[tokio::test]
    async fn subscriptions_at_one_place_share_one_read() -> Result<(), ApiError> {
        let shared = Arc::new(SharedEvents::default());
        let reads = Arc::new(AtomicUsize::new(0));
        let tails: Vec<SharedTail> = (0..5).map(|_| shared.join(7, 0, Protocol::Json)).collect();
        let mut frames = Vec::new();
        for tail in &tails {
            let reads = Arc::clone(&reads);
            let got = tail
                .event(10, 3, move || {
                    let reads = Arc::clone(&reads);
                    async move {
                        reads.fetch_add(1, Ordering::SeqCst);
                        Ok(event(12))
                    }
                })
                .await?;
            frames.push(got.frame.clone());
        }
        assert_eq!(reads.load(Ordering::SeqCst), 1);
        assert!(frames.iter().all(|f| f == &frames[0]));
        drop(tails);
        assert_eq!(shared.slots((7, 0, Protocol::Json)), 0);
        Ok(())
    }

    #[tokio::test]
    async fn an_older_event_is_shared_if_it_has_records_and_read_again_if_empty()
    -> Result<(), ApiError> {
        let shared = Arc::new(SharedEvents::default());
        let (a, b) = (
            shared.join(1, 0, Protocol::Json),
            shared.join(1, 0, Protocol::Json),
        );
        let first = a.event(0, 1, || async { Ok(event(5)) }).await?;
        // `b` was woken by append 2: the event read after append 1 has records, so it is
        // shared; `b` comes back for the rest from 5.
        let second = b.event(0, 2, || async { Ok(event(9)) }).await?;
        assert_eq!((first.next_seq, second.next_seq), (5, 5));
        // An empty event read after append 2 is not what a subscription woken by append 3
        // sends: it reads anew.
        let empty = || async {
            Ok(PreparedEvent {
                records: 0,
                ..event(5)
            })
        };
        let nothing = a.event(5, 2, empty).await?;
        assert_eq!(nothing.records, 0);
        let reads = Arc::new(AtomicUsize::new(0));
        let counted = {
            let reads = Arc::clone(&reads);
            move || {
                let reads = Arc::clone(&reads);
                async move {
                    reads.fetch_add(1, Ordering::SeqCst);
                    Ok(event(7))
                }
            }
        };
        let fresh = b.event(5, 3, counted).await?;
        assert_eq!((fresh.next_seq, reads.load(Ordering::SeqCst)), (7, 1));
        Ok(())
    }

    #[tokio::test]
    async fn places_behind_the_newest_are_forgotten_and_a_failed_read_is_not_kept()
    -> Result<(), ApiError> {
        let shared = Arc::new(SharedEvents::default());
        let tail = shared.join(1, 2, Protocol::Cbor);
        tail.event(0, 1, || async { Ok(event(5)) }).await?;
        tail.event(5, 2, || async { Ok(event(8)) }).await?;
        assert_eq!(shared.slots((1, 2, Protocol::Cbor)), 1);
        let failed = tail
            .event(8, 3, || async { Err(ApiError::internal("disk gone")) })
            .await;
        assert!(failed.is_err());
        let retried = tail.event(8, 3, || async { Ok(event(9)) }).await?;
        assert_eq!(retried.next_seq, 9);
        Ok(())
    }
}
