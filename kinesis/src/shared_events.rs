//! Events shared among the `SubscribeToShard` subscriptions that read one shard from the same
//! place. Consumers at the tail of a shard are all woken by the same append and all read from
//! the same sequence number, so the first to ask reads the records and encodes the event; the
//! others wait for it and send the same bytes. Five consumers then cost one read and one
//! encoding per append, not five.
//!
//! An event is reused only by a subscription that has seen no later append than the one it was
//! read after (the stream's append count, taken before reading), so a subscription never takes
//! an event older than what it was woken for. Places behind the newest one asked for are
//! forgotten, and a shard's events go when its last subscription ends.

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
    /// The event read from `from` after the stream's `appends`-th append: one another
    /// subscription has read (or is reading) for that place and no older append, or else one
    /// `read` makes now.
    pub(crate) async fn event<F, Fut>(
        &self,
        from: u64,
        appends: u64,
        read: F,
    ) -> Result<Arc<PreparedEvent>, ApiError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<PreparedEvent, ApiError>>,
    {
        let cell = {
            let mut shards = self.events.shards.lock();
            let shard = shards.entry(self.key).or_default();
            let found = shard
                .slots
                .iter()
                .find(|(at, seen, _)| *at == from && *seen >= appends)
                .map(|(_, _, cell)| Arc::clone(cell));
            match found {
                Some(cell) => cell,
                None => {
                    let cell: Cell = Arc::new(OnceCell::new());
                    // Places behind this one are no subscription's tail any more.
                    shard.slots.retain(|(at, _, _)| *at > from);
                    shard.slots.push((from, appends, Arc::clone(&cell)));
                    cell
                }
            }
        };
        cell.get_or_try_init(|| async { read().await.map(Arc::new) })
            .await
            .cloned()
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
                .event(10, 3, || async move {
                    reads.fetch_add(1, Ordering::SeqCst);
                    Ok(event(12))
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
    async fn an_event_read_before_a_later_append_is_read_again() -> Result<(), ApiError> {
        let shared = Arc::new(SharedEvents::default());
        let (a, b) = (
            shared.join(1, 0, Protocol::Json),
            shared.join(1, 0, Protocol::Json),
        );
        let first = a.event(0, 1, || async { Ok(event(5)) }).await?;
        // `b` was woken by append 2: the event read after append 1 may lack its records.
        let second = b.event(0, 2, || async { Ok(event(9)) }).await?;
        assert_eq!((first.next_seq, second.next_seq), (5, 9));
        // And `a`, still at append 1, takes the newer one.
        let again = a.event(0, 1, || async { Ok(event(0)) }).await?;
        assert_eq!(again.next_seq, 9);
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
