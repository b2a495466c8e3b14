//! Cluster coordination for Sluice: how several nodes share streams
//! through etcd and object storage. etcd is the only consensus. [`Coordinator`] is shaped on
//! its API (leases, keys with create and modification revisions, compare-and-put transactions,
//! watches) and has two implementations: [`etcd::EtcdCoordinator`] over etcd's v3 gRPC API, and
//! [`memory::MemoryCoordinator`], the same contract in one process on tokio's clock, so the
//! state machines built on it are tested deterministically with a paused clock.
//!
//! The parts, bottom up:
//! - [`keys`]: the key layout under `/sluice/v1/`.
//! - [`session`]: a node's lease, renewed by its own task, and the local deadline at which the
//!   node stops writing, before the lease could expire.
//! - [`mirror`]: the node's watched copy of the keys, the shard map it routes by.
//! - [`controller`]: which node each shard should live on (KCL 3 style, dampened).
//! - [`node`]: [`ClusterNode`] ties them together: registers, elects the controller, claims
//!   assigned shards at an epoch, hands them off gracefully; [`Ownership`] answers the data
//!   path's "may I write this shard now?".
//! - [`shard_log`]: the shared durable tier, a shard's log as chunks in object storage with
//!   a per-shard manifest of epochs in etcd, rebuilt by each new owner.
//! - [`pump_log`]: a pump's output batches, committed once under its owner's epoch, which the
//!   target shards' owners take once each.
//!
//! `sluice serve --cluster` (the `sluice-server` crate's `cluster` module) runs a
//! [`ClusterNode`] whose [`ShardHost`] opens shards from the [`shard_log`] into the local
//! engine, and the Kinesis API forwards requests for shards owned elsewhere
//! (`docs/cluster.md`).
//!
//! Leases are not locks. A key created under a lease carries a cluster-wide increasing
//! `create_revision`: the holder's **epoch**. Every durable side effect of an owner is made
//! conditional on its epoch still being the key's ([`Coordinator::put_fenced`]), so a process
//! that wakes after its lease expired — and after another node claimed the key — has its writes
//! refused rather than applied (`../shared/notes/scale-out.md`, "fencing").
//!
//! # Example
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), sluice_cluster::CoordinatorError> {
//! use std::time::Duration;
//! use sluice_cluster::{Claim, Coordinator, Fence, memory::MemoryCoordinator};
//!
//! let etcd = MemoryCoordinator::new();
//! let lease = etcd.grant(Duration::from_secs(2)).await?;
//! let Claim::Won(epoch) = etcd.create("/sluice/v1/owner/s/0", b"n1".to_vec(), Some(lease)).await? else {
//!     unreachable!("nobody else claimed it")
//! };
//! let fence = Fence { key: "/sluice/v1/owner/s/0".into(), epoch };
//! assert!(etcd.put_fenced(&fence, "/sluice/v1/manifest/s/0", b"{}".to_vec()).await?);
//! # Ok(())
//! # }
//! ```

pub mod controller;
pub mod etcd;
pub mod keys;
pub mod memory;
pub mod mirror;
pub mod node;
pub mod pump_log;
pub mod session;
pub mod shard_log;

pub use keys::{NodeInfo, ShardKey, StreamShards};
pub use node::{ClusterNode, NodeConfig, Ownership, ShardHost};
pub use session::SessionTimes;

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

/// etcd's revision: one counter for the whole key space, increased by every change.
pub type Revision = i64;

/// A lease: keys created under it are deleted when it expires or is revoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LeaseId(pub i64);

/// A key and what etcd knows of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Vec<u8>,
    /// The revision that created the key: an owner's epoch.
    pub create_revision: Revision,
    pub mod_revision: Revision,
    pub lease: Option<LeaseId>,
}

/// What a watch reports, in revision order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    Put(KeyValue),
    Delete { key: String, revision: Revision },
}

/// The answer to [`Coordinator::create`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The key was created; its create revision is the creator's epoch.
    Won(Revision),
    /// The key exists already, held as shown.
    Held(KeyValue),
}

/// Proof of ownership: the key whose existence at `epoch` conditions a write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    pub key: String,
    pub epoch: Revision,
}

/// Why a coordination call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CoordinatorError {
    #[error("lease {0:?} has expired or was revoked")]
    LeaseExpired(LeaseId),
    #[error("the coordinator cannot be reached: {0}")]
    Unavailable(String),
}

pub type Result<T, E = CoordinatorError> = std::result::Result<T, E>;

/// A boxed future, so [`Coordinator`] can be used as `Arc<dyn Coordinator>`.
pub type CoordinatorFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T>> + Send + 'a>>;

/// The narrow seam every cluster component uses: etcd's lease, key, transaction and watch
/// operations, no more.
pub trait Coordinator: Send + Sync {
    /// A new lease that lives `ttl` unless kept alive (etcd counts whole seconds).
    fn grant(&self, ttl: Duration) -> CoordinatorFuture<'_, LeaseId>;
    /// Renews `lease` for its full TTL; `LeaseExpired` once it is gone.
    fn keep_alive(&self, lease: LeaseId) -> CoordinatorFuture<'_, ()>;
    /// Ends `lease` now, deleting its keys.
    fn revoke(&self, lease: LeaseId) -> CoordinatorFuture<'_, ()>;
    /// Creates `key` if it does not exist (an etcd transaction on `create_revision == 0`).
    fn create(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> CoordinatorFuture<'_, Claim>;
    /// The key, if it exists.
    fn get(&self, key: &str) -> CoordinatorFuture<'_, Option<KeyValue>>;
    /// Every key under `prefix`, in key order.
    fn list(&self, prefix: &str) -> CoordinatorFuture<'_, Vec<KeyValue>>;
    /// Puts `key` only while `fence.key` still exists at `fence.epoch`; whether it was put.
    fn put_fenced(&self, fence: &Fence, key: &str, value: Vec<u8>) -> CoordinatorFuture<'_, bool>;
    /// Deletes `key` only while `fence.key` still exists at `fence.epoch`; whether it was
    /// there to delete.
    fn delete_fenced(&self, fence: &Fence, key: &str) -> CoordinatorFuture<'_, bool>;
    /// Deletes `fence.key` if it is still held at `fence.epoch` (a graceful release).
    fn release(&self, fence: &Fence) -> CoordinatorFuture<'_, bool> {
        self.delete_fenced(fence, &fence.key)
    }
    /// The changes under `prefix` from now on.
    fn watch(
        &self,
        prefix: &str,
    ) -> CoordinatorFuture<'_, tokio::sync::mpsc::UnboundedReceiver<WatchEvent>>;
}
