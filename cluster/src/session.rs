//! A node's session: its lease, kept alive, and the local deadline it steps down at.
//!
//! Leases are not locks. The owner of a shard must stop accepting writes *before* its lease can
//! expire at etcd, or a node cut off from etcd (but not from its clients) would go on accepting
//! writes for shards another node has claimed. So the session keeps a deadline by its own
//! monotonic clock: the moment the last successful keep-alive was *sent* plus the TTL minus a
//! margin. etcd renews a lease when it receives the keep-alive, no earlier than it was sent, so
//! the lease lives at least until `sent + TTL`; the deadline is earlier. Past it the session is
//! not [`SessionState::live`] and nothing owned may be written, until a keep-alive succeeds
//! again (the lease was still alive: nothing was lost) or fails with `LeaseExpired` (the
//! session is over; the node starts a new one, owning nothing).

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::{Coordinator, CoordinatorError, LeaseId};

/// How a node's session is timed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionTimes {
    /// The lease's time to live at etcd (whole seconds there).
    pub ttl: Duration,
    /// How often the lease is renewed.
    pub keep_alive_every: Duration,
    /// How long before the lease could expire the node steps down.
    pub margin: Duration,
}

impl Default for SessionTimes {
    /// A 2-second lease renewed every 400 ms; the node steps down 500 ms before it could expire.
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(2),
            keep_alive_every: Duration::from_millis(400),
            margin: Duration::from_millis(500),
        }
    }
}

/// The session as the data path sees it.
#[derive(Debug, Clone)]
pub struct SessionState {
    lease: LeaseId,
    deadline: Arc<Mutex<Instant>>,
}

impl SessionState {
    /// The lease this session's keys are held under.
    pub fn lease(&self) -> LeaseId {
        self.lease
    }

    /// Whether the lease is certainly still alive at etcd: writes may be accepted.
    pub fn live(&self) -> bool {
        Instant::now() < *self.deadline.lock()
    }

    /// When the node steps down unless a keep-alive succeeds first.
    pub fn deadline(&self) -> Instant {
        *self.deadline.lock()
    }
}

/// A lease kept alive by a task of its own (so a slow etcd call elsewhere never delays a
/// renewal). The task stops when the session is dropped; the lease then expires at etcd unless
/// [`Session::end`] revoked it first.
pub struct Session {
    state: SessionState,
    ended: watch::Receiver<bool>,
    task: JoinHandle<()>,
}

impl Session {
    /// Grants a lease and starts keeping it alive.
    pub async fn start(
        coordinator: Arc<dyn Coordinator>,
        times: SessionTimes,
    ) -> crate::Result<Self> {
        let sent = Instant::now();
        let lease = coordinator.grant(times.ttl).await?;
        let deadline = Arc::new(Mutex::new(sent + times.ttl.saturating_sub(times.margin)));
        let state = SessionState { lease, deadline };
        let (ended_tx, ended) = watch::channel(false);
        let task = tokio::spawn(keep_alive(coordinator, times, state.clone(), ended_tx));
        Ok(Self { state, ended, task })
    }

    pub fn state(&self) -> &SessionState {
        &self.state
    }

    /// Resolves once etcd says the lease is gone: the session is over for good.
    pub async fn expired(&mut self) {
        let _ = self.ended.wait_for(|ended| *ended).await;
    }

    /// Whether etcd has said the lease is gone.
    pub fn has_expired(&self) -> bool {
        *self.ended.borrow()
    }

    /// Stops renewing and revokes the lease, deleting every key held under it.
    pub async fn end(self, coordinator: &dyn Coordinator) -> crate::Result<()> {
        self.task.abort();
        *self.state.deadline.lock() = Instant::now();
        coordinator.revoke(self.state.lease).await
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn keep_alive(
    coordinator: Arc<dyn Coordinator>,
    times: SessionTimes,
    state: SessionState,
    ended: watch::Sender<bool>,
) {
    let mut ticks = tokio::time::interval(times.keep_alive_every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let sent = Instant::now();
        match coordinator.keep_alive(state.lease).await {
            Ok(()) => {
                let mut deadline = state.deadline.lock();
                *deadline = (*deadline).max(sent + times.ttl.saturating_sub(times.margin));
            }
            Err(CoordinatorError::LeaseExpired(_)) => {
                *state.deadline.lock() = Instant::now();
                let _ = ended.send(true);
                return;
            }
            // Unreachable: try again at the next tick; the deadline stands.
            Err(CoordinatorError::Unavailable(reason)) => {
                log::warn!("cannot renew lease {:?}: {reason}", state.lease);
            }
        }
    }
}
