//! A node's copy of the cluster's keys (everything under `/sluice/v1/`), kept by one etcd
//! watch: the shard map every node routes by, never built by gossip between peers.
//!
//! The watch is opened before the keys are listed, so nothing changed in between is missed;
//! events and the listing may then overlap, and each key keeps whichever version is newest by
//! revision. A watch that closes (etcd compacted past it, or the node was cut off) makes the
//! mirror stale until it is opened and listed again.

use std::collections::{BTreeMap, BTreeSet};

use tokio::sync::mpsc::UnboundedReceiver;

use crate::keys::{self, NodeInfo, ShardKey, StreamShards};
use crate::{Coordinator, KeyValue, WatchEvent};

/// The keys as of the latest event applied.
#[derive(Debug, Default)]
pub struct Mirror {
    keys: BTreeMap<String, KeyValue>,
    /// Deletions seen, by key, so a listing older than a deletion cannot bring the key back.
    deleted: BTreeMap<String, i64>,
}

impl Mirror {
    /// Opens a watch and lists the keys; the watch's events are applied with [`Mirror::apply`].
    pub async fn load(
        coordinator: &dyn Coordinator,
    ) -> crate::Result<(Self, UnboundedReceiver<WatchEvent>)> {
        let events = coordinator.watch(keys::ROOT).await?;
        let mut mirror = Self::default();
        for kv in coordinator.list(keys::ROOT).await? {
            mirror.put(kv);
        }
        Ok((mirror, events))
    }

    pub fn apply(&mut self, event: WatchEvent) {
        match event {
            WatchEvent::Put(kv) => self.put(kv),
            WatchEvent::Delete { key, revision } => {
                if self
                    .keys
                    .get(&key)
                    .is_some_and(|kv| kv.mod_revision < revision)
                {
                    self.keys.remove(&key);
                }
                self.deleted.insert(key, revision);
            }
        }
    }

    fn put(&mut self, kv: KeyValue) {
        if self
            .deleted
            .get(&kv.key)
            .is_some_and(|&gone| gone > kv.mod_revision)
        {
            return;
        }
        match self.keys.get(&kv.key) {
            Some(have) if have.mod_revision >= kv.mod_revision => {}
            _ => {
                self.keys.insert(kv.key.clone(), kv);
            }
        }
    }

    /// Whether `key` was seen deleted after `revision`.
    pub fn deleted_after(&self, key: &str, revision: i64) -> bool {
        self.deleted.get(key).is_some_and(|&gone| gone > revision)
    }

    pub fn get(&self, key: &str) -> Option<&KeyValue> {
        self.keys.get(key)
    }

    fn under<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = &'a KeyValue> + 'a {
        self.keys
            .range(prefix.to_string()..)
            .take_while(move |(k, _)| k.starts_with(prefix))
            .map(|(_, kv)| kv)
    }

    /// The live nodes and what they told about themselves.
    pub fn nodes(&self) -> BTreeMap<String, NodeInfo> {
        self.under(keys::NODES)
            .filter_map(|kv| {
                let id = kv.key.strip_prefix(keys::NODES)?;
                let info = serde_json::from_slice(&kv.value).unwrap_or_default();
                Some((id.to_string(), info))
            })
            .collect()
    }

    /// Every unit that is to be owned: each shard of every stream, and each pump.
    pub fn shards(&self) -> BTreeSet<ShardKey> {
        self.under(keys::STREAMS)
            .filter_map(|kv| {
                let stream = kv.key.strip_prefix(keys::STREAMS)?;
                let shards: StreamShards = serde_json::from_slice(&kv.value).ok()?;
                Some(
                    shards
                        .shards
                        .into_iter()
                        .map(move |shard| ShardKey::new(stream, shard)),
                )
            })
            .flatten()
            .chain(
                self.under(keys::PUMPS)
                    .filter_map(|kv| Some(ShardKey::pump(kv.key.strip_prefix(keys::PUMPS)?))),
            )
            .collect()
    }

    /// Shards and the node the controller assigned each to.
    pub fn assignments(&self) -> BTreeMap<ShardKey, String> {
        self.shard_keys(keys::ASSIGN)
            .map(|(shard, kv)| (shard, String::from_utf8_lossy(&kv.value).into_owned()))
            .collect()
    }

    /// Shards and their owner keys (the owner's id is the value, its epoch the key's create
    /// revision).
    pub fn owners(&self) -> BTreeMap<ShardKey, &KeyValue> {
        self.shard_keys(keys::OWNER).collect()
    }

    fn shard_keys<'a>(
        &'a self,
        prefix: &'a str,
    ) -> impl Iterator<Item = (ShardKey, &'a KeyValue)> + 'a {
        self.under(prefix)
            .filter_map(move |kv| Some((ShardKey::parse(prefix, &kv.key)?, kv)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(key: &str, value: &str, create: i64, modified: i64) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: value.as_bytes().to_vec(),
            create_revision: create,
            mod_revision: modified,
            lease: None,
        }
    }

    #[test]
    fn the_newest_version_of_a_key_wins_whatever_order_it_arrives_in() {
        let mut mirror = Mirror::default();
        let key = "/sluice/v1/assign/s/000000";
        mirror.apply(WatchEvent::Put(kv(key, "n2", 5, 9)));
        // An older listing arrives after the event: ignored.
        mirror.put(kv(key, "n1", 5, 6));
        assert_eq!(mirror.assignments()[&ShardKey::new("s", 0)], "n2");
        mirror.apply(WatchEvent::Delete {
            key: key.into(),
            revision: 10,
        });
        mirror.put(kv(key, "n2", 5, 9));
        assert!(mirror.assignments().is_empty());
        mirror.apply(WatchEvent::Put(kv(key, "n3", 11, 11)));
        assert_eq!(mirror.assignments()[&ShardKey::new("s", 0)], "n3");
    }

    #[test]
    fn shards_come_from_the_streams_and_nodes_from_their_keys() {
        let mut mirror = Mirror::default();
        mirror.put(kv("/sluice/v1/streams/a", r#"{"shards":[0,2]}"#, 1, 1));
        mirror.put(kv("/sluice/v1/streams/b", r#"{"shards":[1]}"#, 2, 2));
        mirror.put(kv(
            "/sluice/v1/nodes/n1",
            r#"{"kinesis":"10.0.0.1:4567","flight":"10.0.0.1:50051"}"#,
            3,
            3,
        ));
        let shards: Vec<String> = mirror.shards().iter().map(|s| s.to_string()).collect();
        assert_eq!(
            shards,
            [
                "a/shardId-000000000000",
                "a/shardId-000000000002",
                "b/shardId-000000000001"
            ]
        );
        assert_eq!(mirror.nodes()["n1"].kinesis, "10.0.0.1:4567");
    }
}
