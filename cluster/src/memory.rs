//! [`MemoryCoordinator`]: the [`Coordinator`] contract in one process, on tokio's clock, for
//! deterministic tests of what is built on it (with `tokio::time::pause`, a lease expires when
//! the test lets time pass, not when a machine happens to be slow).
//!
//! It keeps etcd's semantics where they matter to ownership: one revision counter for all
//! changes; a key's `create_revision` set when it is created and kept while it lives; a lease's
//! keys deleted (and the deletions watched) when it expires or is revoked; a fenced put refused
//! once its fence key is gone or was re-created at another revision. Expiry is applied before
//! every call, and by a reaper task at each lease's deadline so watchers learn of it unasked.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tokio::time::Instant;

use crate::{
    Claim, Coordinator, CoordinatorError, CoordinatorFuture, Fence, KeyValue, LeaseId, Revision,
    WatchEvent,
};

struct Lease {
    ttl: Duration,
    deadline: Instant,
    keys: BTreeSet<String>,
}

#[derive(Default)]
struct State {
    revision: Revision,
    next_lease: i64,
    keys: BTreeMap<String, KeyValue>,
    leases: HashMap<LeaseId, Lease>,
    watchers: Vec<(String, UnboundedSender<WatchEvent>)>,
}

impl State {
    fn notify(&mut self, event: WatchEvent) {
        let key = match &event {
            WatchEvent::Put(kv) => kv.key.as_str(),
            WatchEvent::Delete { key, .. } => key.as_str(),
        };
        let key = key.to_string();
        // A watcher whose receiver is gone is dropped.
        self.watchers.retain(|(prefix, tx)| {
            !key.starts_with(prefix.as_str()) || tx.send(event.clone()).is_ok()
        });
    }

    fn delete(&mut self, key: &str) {
        if let Some(kv) = self.keys.remove(key) {
            self.revision += 1;
            if let Some(lease) = kv.lease.and_then(|l| self.leases.get_mut(&l)) {
                lease.keys.remove(key);
            }
            let revision = self.revision;
            self.notify(WatchEvent::Delete {
                key: key.to_string(),
                revision,
            });
        }
    }

    /// Ends every lease whose deadline has passed, deleting its keys.
    fn expire(&mut self, now: Instant) {
        let expired: Vec<LeaseId> = self
            .leases
            .iter()
            .filter(|(_, lease)| lease.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            self.end_lease(id);
        }
    }

    fn end_lease(&mut self, id: LeaseId) {
        if let Some(lease) = self.leases.remove(&id) {
            for key in lease.keys {
                self.delete(&key);
            }
        }
    }

    fn fence_holds(&self, fence: &Fence) -> bool {
        self.keys
            .get(&fence.key)
            .is_some_and(|kv| kv.create_revision == fence.epoch)
    }

    fn put(&mut self, key: &str, value: Vec<u8>, lease: Option<LeaseId>) -> Revision {
        self.revision += 1;
        let revision = self.revision;
        let create_revision = self.keys.get(key).map_or(revision, |kv| kv.create_revision);
        let kv = KeyValue {
            key: key.to_string(),
            value,
            create_revision,
            mod_revision: revision,
            lease,
        };
        if let Some(lease) = lease.and_then(|l| self.leases.get_mut(&l)) {
            lease.keys.insert(key.to_string());
        }
        self.keys.insert(key.to_string(), kv.clone());
        self.notify(WatchEvent::Put(kv));
        create_revision
    }
}

/// etcd's contract in memory.
#[derive(Clone, Default)]
pub struct MemoryCoordinator {
    state: Arc<Mutex<State>>,
}

impl std::fmt::Debug for MemoryCoordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.state.lock();
        f.debug_struct("MemoryCoordinator")
            .field("revision", &state.revision)
            .field("keys", &state.keys.len())
            .field("leases", &state.leases.len())
            .finish()
    }
}

impl MemoryCoordinator {
    pub fn new() -> Self {
        Self::default()
    }

    /// The state as of now, expired leases applied.
    fn state(&self) -> parking_lot::MutexGuard<'_, State> {
        let mut state = self.state.lock();
        state.expire(Instant::now());
        state
    }

    /// Ends `lease` at its deadline unless it is renewed meanwhile (then the task for the new
    /// deadline does it). Holds the state weakly, so a dropped coordinator ends its reapers.
    fn reap_at(&self, deadline: Instant) {
        let state: Weak<Mutex<State>> = Arc::downgrade(&self.state);
        tokio::spawn(async move {
            tokio::time::sleep_until(deadline).await;
            if let Some(state) = state.upgrade() {
                state.lock().expire(Instant::now());
            }
        });
    }
}

fn ready<'a, T: Send + 'a>(value: crate::Result<T>) -> CoordinatorFuture<'a, T> {
    Box::pin(std::future::ready(value))
}

impl Coordinator for MemoryCoordinator {
    fn grant(&self, ttl: Duration) -> CoordinatorFuture<'_, LeaseId> {
        let deadline = Instant::now() + ttl;
        let id = {
            let mut state = self.state();
            state.next_lease += 1;
            let id = LeaseId(state.next_lease);
            state.leases.insert(
                id,
                Lease {
                    ttl,
                    deadline,
                    keys: BTreeSet::new(),
                },
            );
            id
        };
        self.reap_at(deadline);
        ready(Ok(id))
    }

    fn keep_alive(&self, lease: LeaseId) -> CoordinatorFuture<'_, ()> {
        let renewed = {
            let mut state = self.state();
            state.leases.get_mut(&lease).map(|l| {
                l.deadline = Instant::now() + l.ttl;
                l.deadline
            })
        };
        match renewed {
            Some(deadline) => {
                self.reap_at(deadline);
                ready(Ok(()))
            }
            None => ready(Err(CoordinatorError::LeaseExpired(lease))),
        }
    }

    fn revoke(&self, lease: LeaseId) -> CoordinatorFuture<'_, ()> {
        self.state().end_lease(lease);
        ready(Ok(()))
    }

    fn create(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> CoordinatorFuture<'_, Claim> {
        let mut state = self.state();
        if let Some(lease) = lease.filter(|l| !state.leases.contains_key(l)) {
            return ready(Err(CoordinatorError::LeaseExpired(lease)));
        }
        let claim = match state.keys.get(key) {
            Some(held) => Claim::Held(held.clone()),
            None => Claim::Won(state.put(key, value, lease)),
        };
        ready(Ok(claim))
    }

    fn get(&self, key: &str) -> CoordinatorFuture<'_, Option<KeyValue>> {
        let found = self.state().keys.get(key).cloned();
        ready(Ok(found))
    }

    fn list(&self, prefix: &str) -> CoordinatorFuture<'_, Vec<KeyValue>> {
        let found = self
            .state()
            .keys
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(_, kv)| kv.clone())
            .collect();
        ready(Ok(found))
    }

    fn put_fenced(&self, fence: &Fence, key: &str, value: Vec<u8>) -> CoordinatorFuture<'_, bool> {
        let mut state = self.state();
        if !state.fence_holds(fence) {
            return ready(Ok(false));
        }
        // As etcd: a put without a lease detaches the key from any lease it had.
        if let Some(lease) = state.keys.get(key).and_then(|kv| kv.lease)
            && let Some(lease) = state.leases.get_mut(&lease)
        {
            lease.keys.remove(key);
        }
        state.put(key, value, None);
        ready(Ok(true))
    }

    fn delete_fenced(&self, fence: &Fence, key: &str) -> CoordinatorFuture<'_, bool> {
        let mut state = self.state();
        if !state.fence_holds(fence) || !state.keys.contains_key(key) {
            return ready(Ok(false));
        }
        state.delete(key);
        ready(Ok(true))
    }

    fn watch(&self, prefix: &str) -> CoordinatorFuture<'_, UnboundedReceiver<WatchEvent>> {
        let (tx, rx) = unbounded_channel();
        self.state().watchers.push((prefix.to_string(), tx));
        ready(Ok(rx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OWNER: &str = "/sluice/v1/owner/orders/0";
    const MANIFEST: &str = "/sluice/v1/manifest/orders/0";

    async fn claim(etcd: &MemoryCoordinator, node: &str, lease: LeaseId) -> crate::Result<Claim> {
        etcd.create(OWNER, node.as_bytes().to_vec(), Some(lease))
            .await
    }

    #[tokio::test(start_paused = true)]
    async fn a_lease_kept_alive_holds_its_key_and_one_left_alone_loses_it() -> crate::Result<()> {
        let etcd = MemoryCoordinator::new();
        let lease = etcd.grant(Duration::from_secs(2)).await?;
        assert!(matches!(claim(&etcd, "n1", lease).await?, Claim::Won(_)));
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            etcd.keep_alive(lease).await?;
        }
        assert!(etcd.get(OWNER).await?.is_some());
        tokio::time::sleep(Duration::from_millis(2001)).await;
        assert_eq!(etcd.get(OWNER).await?, None);
        assert_eq!(
            etcd.keep_alive(lease).await,
            Err(CoordinatorError::LeaseExpired(lease))
        );
        Ok(())
    }

    #[tokio::test(start_paused = true)]
    async fn a_zombie_owner_is_fenced_out_after_another_claims_the_shard() -> crate::Result<()> {
        let etcd = MemoryCoordinator::new();
        let first = etcd.grant(Duration::from_secs(2)).await?;
        let Claim::Won(epoch1) = claim(&etcd, "n1", first).await? else {
            panic!("the first claim wins");
        };
        let zombie = Fence {
            key: OWNER.into(),
            epoch: epoch1,
        };
        assert!(etcd.put_fenced(&zombie, MANIFEST, b"v1".to_vec()).await?);
        // A second node cannot claim while the first holds the key.
        let second = etcd.grant(Duration::from_secs(2)).await?;
        assert!(matches!(claim(&etcd, "n2", second).await?, Claim::Held(kv) if kv.value == b"n1"));
        // n1 pauses past its TTL (SIGSTOP); n2 keeps its lease and claims at a higher epoch.
        for _ in 0..2 {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            etcd.keep_alive(second).await?;
        }
        let Claim::Won(epoch2) = claim(&etcd, "n2", second).await? else {
            panic!("the expired owner's key is gone");
        };
        assert!(epoch2 > epoch1);
        // n1 wakes and writes as if it still owned the shard: refused. n2's write lands.
        assert!(
            !etcd
                .put_fenced(&zombie, MANIFEST, b"zombie".to_vec())
                .await?
        );
        assert!(!etcd.release(&zombie).await?);
        let owner = Fence {
            key: OWNER.into(),
            epoch: epoch2,
        };
        assert!(etcd.put_fenced(&owner, MANIFEST, b"v2".to_vec()).await?);
        let manifest = etcd.get(MANIFEST).await?.expect("a manifest");
        assert_eq!(manifest.value, b"v2");
        // A graceful release frees the key for the next claim.
        assert!(etcd.release(&owner).await?);
        assert_eq!(etcd.get(OWNER).await?, None);
        Ok(())
    }

    #[tokio::test(start_paused = true)]
    async fn watchers_see_claims_and_expiry_in_revision_order() -> crate::Result<()> {
        let etcd = MemoryCoordinator::new();
        let mut events = etcd.watch("/sluice/v1/owner/").await?;
        let lease = etcd.grant(Duration::from_secs(1)).await?;
        claim(&etcd, "n1", lease).await?;
        etcd.create("/sluice/v1/nodes/n1", b"10.0.0.1".to_vec(), Some(lease))
            .await?;
        // Nobody calls: the reaper ends the lease at its deadline.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let put = events.recv().await.expect("a put");
        let deleted = events.recv().await.expect("a delete");
        match (put, deleted) {
            (WatchEvent::Put(kv), WatchEvent::Delete { key, revision }) => {
                assert_eq!((kv.key.as_str(), key.as_str()), (OWNER, OWNER));
                assert!(revision > kv.mod_revision);
            }
            other => panic!("unexpected events {other:?}"),
        }
        // The node key was outside the watched prefix.
        assert!(events.try_recv().is_err());
        assert_eq!(etcd.list("/sluice/v1/").await?, vec![]);
        Ok(())
    }

    #[tokio::test(start_paused = true)]
    async fn a_claim_under_an_expired_lease_is_refused() -> crate::Result<()> {
        let etcd = MemoryCoordinator::new();
        let lease = etcd.grant(Duration::from_secs(1)).await?;
        etcd.revoke(lease).await?;
        assert_eq!(
            claim(&etcd, "n1", lease).await,
            Err(CoordinatorError::LeaseExpired(lease))
        );
        Ok(())
    }
}
