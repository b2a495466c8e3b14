//! A cluster node: its session, its copy of the shard map, the shards it owns, and — when it
//! is the elected one — the controller's duties.
//!
//! One task per node reconciles what etcd says with what the node holds, on every change the
//! watch brings and on a short tick:
//! - **register**: `nodes/{id}` under the session's lease (so the node disappears with it);
//! - **control**, if it holds `controller` (or can claim it): plan assignments
//!   ([`crate::controller::plan`]) and write them fenced by the controller key, so a deposed
//!   controller's late writes are refused;
//! - **own**: claim `owner/{stream}/{shard}` for each shard assigned here, under the lease; the
//!   key's create revision is the epoch. The [`ShardHost`] opens the shard (from the manifest
//!   and object storage) before it takes writes. A shard assigned elsewhere is handed off:
//!   writes stop, the host closes it (seals and uploads), then the key is released so the new
//!   node can claim it at once. A shard whose owner key went (the lease expired while the node
//!   was cut off) is lost: the host drops it without writing anything more.
//!
//! The data path asks [`Ownership::fence`] before every write: it answers only for shards open
//! here and only while the session is certainly alive ([`crate::session`]), so a node cut off
//! from etcd refuses writes before any other node can claim its shards.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::controller;
use crate::keys::{self, NodeInfo, ShardKey};
use crate::mirror::Mirror;
use crate::session::{Session, SessionState, SessionTimes};
use crate::{Claim, Coordinator, CoordinatorError, Fence, Revision, WatchEvent};

/// What opening or closing a shard returns.
pub type HostFuture<'a> = Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>>;

/// What the node tells the part of Sluice that holds shard data.
pub trait ShardHost: Send + Sync + 'static {
    /// This node now owns `shard` at `fence.epoch`: make it ready for writes (continue its
    /// sequence numbers from what earlier owners committed). Writes are accepted once this
    /// returns `Ok`; an `Err` gives the shard up so it can be tried again.
    fn open<'a>(&'a self, shard: &'a ShardKey, fence: &'a Fence) -> HostFuture<'a>;
    /// A planned handoff: stop taking writes, finish (acknowledge or refuse) those under way,
    /// and make everything acknowledged durable where the next owner will find it. The shard
    /// is still this node's while this runs.
    fn close<'a>(&'a self, shard: &'a ShardKey, fence: &'a Fence) -> HostFuture<'a>;
    /// The shard was lost without a handoff (the session expired): forget it.
    fn lost(&self, shard: &ShardKey);
}

/// A node's identity and timing.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Unique in the cluster: `--node-id`.
    pub id: String,
    pub info: NodeInfo,
    pub times: SessionTimes,
    /// How often the node reconciles even without a change from etcd.
    pub reconcile_every: Duration,
    /// The longest a graceful leave waits for its shards to close.
    pub leave_timeout: Duration,
}

impl NodeConfig {
    pub fn new(id: impl Into<String>, info: NodeInfo) -> Self {
        Self {
            id: id.into(),
            info,
            times: SessionTimes::default(),
            reconcile_every: Duration::from_millis(250),
            leave_timeout: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Default)]
struct View {
    session: Option<SessionState>,
    open: BTreeMap<ShardKey, Revision>,
    owners: BTreeMap<ShardKey, (String, Revision)>,
    nodes: BTreeMap<String, NodeInfo>,
    controller: bool,
}

/// The node's ownership as the data path sees it; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Ownership {
    view: Arc<RwLock<View>>,
}

impl Ownership {
    /// The fence to write `shard` under, if this node may write it now.
    pub fn fence(&self, shard: &ShardKey) -> Option<Fence> {
        let view = self.view.read();
        let epoch = *view.open.get(shard)?;
        view.session.as_ref().filter(|s| s.live())?;
        Some(Fence {
            key: shard.key(keys::OWNER),
            epoch,
        })
    }

    /// The node owning `shard` by the shard map, and how to reach it.
    pub fn owner(&self, shard: &ShardKey) -> Option<(String, NodeInfo)> {
        let view = self.view.read();
        let (node, _) = view.owners.get(shard)?;
        Some((
            node.clone(),
            view.nodes.get(node).cloned().unwrap_or_default(),
        ))
    }

    /// The shards open for writes here (whether or not the session is live this instant).
    pub fn open_shards(&self) -> Vec<ShardKey> {
        self.view.read().open.keys().cloned().collect()
    }

    /// The live nodes by the shard map.
    pub fn nodes(&self) -> BTreeMap<String, NodeInfo> {
        self.view.read().nodes.clone()
    }

    pub fn is_controller(&self) -> bool {
        self.view.read().controller
    }
}

/// A running node; dropping it stops it as a crash would (its lease then expires at etcd).
pub struct ClusterNode {
    ownership: Ownership,
    leave: Option<oneshot::Sender<oneshot::Sender<()>>>,
    task: JoinHandle<()>,
}

impl ClusterNode {
    /// Starts the node's task; it joins the cluster as soon as etcd answers.
    pub fn start(
        coordinator: Arc<dyn Coordinator>,
        config: NodeConfig,
        host: Arc<dyn ShardHost>,
    ) -> Self {
        let ownership = Ownership::default();
        let (leave, leave_rx) = oneshot::channel();
        let task = tokio::spawn(run(coordinator, config, host, ownership.clone(), leave_rx));
        Self {
            ownership,
            leave: Some(leave),
            task,
        }
    }

    pub fn ownership(&self) -> &Ownership {
        &self.ownership
    }

    /// Leaves gracefully: hands every shard off (closing each first) and ends the session.
    pub async fn leave(mut self) {
        if let Some(leave) = self.leave.take() {
            let (done, left) = oneshot::channel();
            if leave.send(done).is_ok() {
                let _ = left.await;
            }
        }
    }
}

impl Drop for ClusterNode {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn run(
    coordinator: Arc<dyn Coordinator>,
    config: NodeConfig,
    host: Arc<dyn ShardHost>,
    ownership: Ownership,
    mut leave: oneshot::Receiver<oneshot::Sender<()>>,
) {
    loop {
        let session = match Session::start(coordinator.clone(), config.times).await {
            Ok(session) => session,
            Err(err) => {
                log::warn!("node {} cannot start a session: {err}", config.id);
                tokio::select! {
                    () = tokio::time::sleep(config.reconcile_every) => continue,
                    done = &mut leave => {
                        if let Ok(done) = done { let _ = done.send(()); }
                        return;
                    }
                }
            }
        };
        ownership.view.write().session = Some(session.state().clone());
        let mut node = Node {
            coordinator: coordinator.clone(),
            config: config.clone(),
            host: host.clone(),
            ownership: ownership.clone(),
            session: session.state().clone(),
            mirror: None,
            registered: None,
            controller: None,
            pending: BTreeMap::new(),
            owned: BTreeMap::new(),
        };
        match serve(&mut node, session, &mut leave).await {
            Some(session) => {
                // Left gracefully.
                if let Err(err) = session.end(coordinator.as_ref()).await {
                    log::warn!("node {} could not revoke its lease: {err}", config.id);
                }
                return;
            }
            None => {
                log::warn!("node {}'s session expired; rejoining", config.id);
                node.lose_all();
            }
        }
    }
}

/// Runs one session until it expires (`None`) or the node leaves (the session, to end).
async fn serve(
    node: &mut Node,
    mut session: Session,
    leave: &mut oneshot::Receiver<oneshot::Sender<()>>,
) -> Option<Session> {
    let mut tick = tokio::time::interval(node.config.reconcile_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut events: Option<UnboundedReceiver<WatchEvent>> = None;
    loop {
        if events.is_none() {
            match Mirror::load(node.coordinator.as_ref()).await {
                Ok((mirror, watch)) => {
                    node.mirror = Some(mirror);
                    events = Some(watch);
                }
                Err(err) => log::warn!("node {} cannot read the shard map: {err}", node.config.id),
            }
        }
        tokio::select! {
            _ = tick.tick() => {}
            event = next_event(&mut events) => match event {
                Some(event) => {
                    let mirror = node.mirror.get_or_insert_with(Mirror::default);
                    mirror.apply(event);
                    if let Some(watch) = events.as_mut() {
                        while let Ok(event) = watch.try_recv() {
                            mirror.apply(event);
                        }
                    }
                }
                // Reopened and listed again at the top of the loop.
                None => events = None,
            },
            () = session.expired() => return None,
            done = &mut *leave => {
                node.leave().await;
                if let Ok(done) = done {
                    let _ = done.send(());
                }
                return Some(session);
            }
        }
        if session.has_expired() {
            return None;
        }
        node.reconcile().await;
    }
}

async fn next_event(events: &mut Option<UnboundedReceiver<WatchEvent>>) -> Option<WatchEvent> {
    match events {
        Some(events) => events.recv().await,
        None => std::future::pending().await,
    }
}

struct Node {
    coordinator: Arc<dyn Coordinator>,
    config: NodeConfig,
    host: Arc<dyn ShardHost>,
    ownership: Ownership,
    session: SessionState,
    mirror: Option<Mirror>,
    /// The node key's create revision, once registered.
    registered: Option<Revision>,
    /// The controller key's create revision, while this node holds it.
    controller: Option<Revision>,
    /// Assignments written but not yet seen back through the watch.
    pending: BTreeMap<ShardKey, String>,
    /// Shards claimed here, by epoch.
    owned: BTreeMap<ShardKey, Revision>,
}

impl Node {
    fn publish(&self) {
        let Some(mirror) = &self.mirror else { return };
        let mut view = self.ownership.view.write();
        view.nodes = mirror.nodes();
        view.owners = mirror
            .owners()
            .into_iter()
            .map(|(shard, kv)| {
                let node = String::from_utf8_lossy(&kv.value).into_owned();
                (shard, (node, kv.create_revision))
            })
            .collect();
        view.controller = self.controller.is_some();
    }

    async fn reconcile(&mut self) {
        self.publish();
        if self.mirror.is_none() || !self.session.live() {
            // No claims or controller writes while the lease may be gone.
            return;
        }
        if let Err(err) = self.reconcile_live().await {
            log::warn!("node {}: {err}", self.config.id);
        }
        self.publish();
    }

    async fn reconcile_live(&mut self) -> crate::Result<()> {
        self.register().await?;
        if self.registered.is_none() {
            return Ok(());
        }
        self.control(false).await?;
        self.own().await
    }

    async fn register(&mut self) -> crate::Result<()> {
        if self.registered.is_some() {
            return Ok(());
        }
        let key = format!("{}{}", keys::NODES, self.config.id);
        let info = serde_json::to_vec(&self.config.info).unwrap_or_default();
        let lease = self.session.lease();
        match self.coordinator.create(&key, info, Some(lease)).await? {
            Claim::Won(revision) => self.registered = Some(revision),
            Claim::Held(kv) if kv.lease == Some(lease) => {
                self.registered = Some(kv.create_revision)
            }
            // An earlier session of this node id is still registered; it goes with its lease.
            Claim::Held(_) => {}
        }
        Ok(())
    }

    /// Acts as the controller if this node is (or can become) it. `leaving`: plan as if this
    /// node were already gone.
    async fn control(&mut self, leaving: bool) -> crate::Result<()> {
        let Some(mirror) = &self.mirror else {
            return Ok(());
        };
        let lease = self.session.lease();
        let epoch = match (mirror.get(keys::CONTROLLER), self.controller) {
            (Some(kv), _) if kv.lease == Some(lease) => kv.create_revision,
            (Some(_), _) => {
                self.controller = None;
                return Ok(());
            }
            (None, Some(epoch)) => epoch,
            (None, None) => {
                if leaving {
                    return Ok(());
                }
                match self
                    .coordinator
                    .create(
                        keys::CONTROLLER,
                        self.config.id.clone().into_bytes(),
                        Some(lease),
                    )
                    .await?
                {
                    Claim::Won(epoch) => {
                        log::info!("node {} is the controller", self.config.id);
                        epoch
                    }
                    Claim::Held(_) => return Ok(()),
                }
            }
        };
        self.controller = Some(epoch);
        let fence = Fence {
            key: keys::CONTROLLER.to_string(),
            epoch,
        };
        let mut live: BTreeSet<String> = mirror.nodes().into_keys().collect();
        if leaving {
            live.remove(&self.config.id);
        }
        let mut assignments = mirror.assignments();
        self.pending
            .retain(|shard, node| assignments.get(shard) != Some(node));
        assignments.extend(self.pending.clone());
        let owners = mirror.owners();
        let plan = controller::plan(&mirror.shards(), &live, &assignments, |shard| {
            owners.get(shard).map(|kv| kv.value.as_slice())
                == assignments.get(shard).map(|node| node.as_bytes())
        });
        for (shard, node) in plan.assign {
            let key = shard.key(keys::ASSIGN);
            if !self
                .coordinator
                .put_fenced(&fence, &key, node.clone().into_bytes())
                .await?
            {
                self.controller = None;
                return Ok(());
            }
            self.pending.insert(shard, node);
        }
        for shard in plan.remove {
            self.pending.remove(&shard);
            self.coordinator
                .delete_fenced(&fence, &shard.key(keys::ASSIGN))
                .await?;
        }
        Ok(())
    }

    async fn own(&mut self) -> crate::Result<()> {
        let Some(mirror) = &self.mirror else {
            return Ok(());
        };
        let shards = mirror.shards();
        let assigned: BTreeSet<ShardKey> = mirror
            .assignments()
            .into_iter()
            .filter(|(shard, node)| *node == self.config.id && shards.contains(shard))
            .map(|(shard, _)| shard)
            .collect();
        let lease = self.session.lease();
        // Shards whose owner key was deleted or re-created since this node claimed them.
        let lost: Vec<ShardKey> = self
            .owned
            .iter()
            .filter(|(shard, epoch)| {
                let key = shard.key(keys::OWNER);
                match mirror.get(&key) {
                    Some(kv) => kv.create_revision != **epoch,
                    None => mirror.deleted_after(&key, **epoch),
                }
            })
            .map(|(shard, _)| shard.clone())
            .collect();
        let handoff: Vec<ShardKey> = self
            .owned
            .keys()
            .filter(|shard| !assigned.contains(*shard) && !lost.contains(*shard))
            .cloned()
            .collect();
        let owners: BTreeMap<ShardKey, Option<crate::LeaseId>> = mirror
            .owners()
            .into_iter()
            .map(|(shard, kv)| (shard, kv.lease))
            .collect();
        for shard in lost {
            self.lose(&shard);
        }
        for shard in handoff {
            self.hand_off(&shard).await?;
        }
        for shard in assigned {
            if self.owned.contains_key(&shard) {
                continue;
            }
            if owners.get(&shard).is_some_and(|held| *held != Some(lease)) {
                // Another node still holds it (handing it off, or about to expire).
                continue;
            }
            let key = shard.key(keys::OWNER);
            let epoch = match self
                .coordinator
                .create(&key, self.config.id.clone().into_bytes(), Some(lease))
                .await?
            {
                Claim::Won(epoch) => epoch,
                Claim::Held(kv) if kv.lease == Some(lease) => kv.create_revision,
                Claim::Held(_) => continue,
            };
            let fence = Fence { key, epoch };
            match self.host.open(&shard, &fence).await {
                Ok(()) => {
                    log::info!("node {} owns {shard} at epoch {epoch}", self.config.id);
                    self.owned.insert(shard.clone(), epoch);
                    self.ownership.view.write().open.insert(shard, epoch);
                }
                Err(reason) => {
                    log::warn!(
                        "node {} could not open {shard}: {reason}; giving it up",
                        self.config.id
                    );
                    self.coordinator.release(&fence).await?;
                }
            }
        }
        Ok(())
    }

    fn lose(&mut self, shard: &ShardKey) {
        log::warn!("node {} lost {shard}", self.config.id);
        self.owned.remove(shard);
        self.ownership.view.write().open.remove(shard);
        self.host.lost(shard);
    }

    fn lose_all(&mut self) {
        let shards: Vec<ShardKey> = self.owned.keys().cloned().collect();
        for shard in shards {
            self.lose(&shard);
        }
        let mut view = self.ownership.view.write();
        view.session = None;
        view.controller = false;
    }

    /// Has the host close `shard` (stopping its writes), then releases it to its next owner.
    async fn hand_off(&mut self, shard: &ShardKey) -> crate::Result<()> {
        let Some(&epoch) = self.owned.get(shard) else {
            return Ok(());
        };
        let fence = Fence {
            key: shard.key(keys::OWNER),
            epoch,
        };
        // The host stops taking writes and finishes those under way while the shard is still
        // this node's (so they can be acknowledged); only then does the fence go.
        if let Err(reason) = self.host.close(shard, &fence).await {
            log::warn!("node {} could not close {shard}: {reason}", self.config.id);
        }
        self.ownership.view.write().open.remove(shard);
        self.owned.remove(shard);
        self.coordinator.release(&fence).await?;
        log::info!("node {} handed {shard} off", self.config.id);
        Ok(())
    }

    /// A graceful leave: out of the node list, the controller's last round, every shard handed
    /// off. The caller then revokes the lease.
    async fn leave(&mut self) {
        let deadline = tokio::time::Instant::now() + self.config.leave_timeout;
        let work = async {
            if let Some(revision) = self.registered.take() {
                let fence = Fence {
                    key: format!("{}{}", keys::NODES, self.config.id),
                    epoch: revision,
                };
                self.coordinator.release(&fence).await?;
                if let Some(mirror) = self.mirror.as_mut() {
                    mirror.apply(WatchEvent::Delete {
                        key: fence.key.clone(),
                        revision: Revision::MAX,
                    });
                }
            }
            if self.controller.is_some() {
                self.control(true).await?;
                if let Some(epoch) = self.controller.take() {
                    let fence = Fence {
                        key: keys::CONTROLLER.to_string(),
                        epoch,
                    };
                    self.coordinator.release(&fence).await?;
                }
            }
            let shards: Vec<ShardKey> = self.owned.keys().cloned().collect();
            for shard in shards {
                self.hand_off(&shard).await?;
            }
            Ok::<_, CoordinatorError>(())
        };
        match tokio::time::timeout_at(deadline, work).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => log::warn!("node {} left uncleanly: {err}", self.config.id),
            Err(_) => log::warn!(
                "node {} did not hand off its shards in time",
                self.config.id
            ),
        }
        self.lose_all();
    }
}
