//! Where the cluster's state lives in etcd: every key under `/sluice/v1/`.
//!
//! | key | value | written by |
//! |---|---|---|
//! | `nodes/{node}` | [`NodeInfo`] JSON, under the node's lease | the node |
//! | `controller` | the controller's node id, under its lease | the elected node |
//! | `streams/{stream}` | [`StreamShards`] JSON | whoever creates or reshards the stream |
//! | `assign/{stream}/{shard}` | the node id the shard should live on | the controller, fenced |
//! | `owner/{stream}/{shard}` | the owning node id, under its lease; its create revision is the owner's epoch | the owner |
//! | `consumers/{stream}@{incarnation}/{consumer}` | a registered enhanced fan-out consumer (JSON) | the node that registered it |
//! | `manifest/{stream}@{incarnation}/{shard}` | what the shard's owners have committed, fenced by the owner key ([`crate::shard_log::LogKey`]) | the owner |
//! | `pumps/{pump}` | a pump whose output goes into a shared stream ([`PumpSpec`] JSON): leased like a shard, as the unit [`ShardKey::pump`] | the node whose SQL created it |
//! | `pumplog/{pump}@{incarnation}` | the pump's committed batches, fenced by its unit's owner key ([`crate::pump_log`]) | the pump's owner |
//! | `pumptaken/{pump}@{incarnation}/{shard}` | the last of the pump's batches a target shard has gone through, fenced by the shard's owner key (now and then, not per batch) | the target shard's owner |

use serde::{Deserialize, Serialize};

pub const ROOT: &str = "/sluice/v1/";
pub const NODES: &str = "/sluice/v1/nodes/";
pub const CONTROLLER: &str = "/sluice/v1/controller";
pub const STREAMS: &str = "/sluice/v1/streams/";
pub const ASSIGN: &str = "/sluice/v1/assign/";
pub const OWNER: &str = "/sluice/v1/owner/";
pub const MANIFEST: &str = "/sluice/v1/manifest/";
pub const CONSUMERS: &str = "/sluice/v1/consumers/";
pub const PUMPS: &str = "/sluice/v1/pumps/";
pub const PUMP_LOGS: &str = "/sluice/v1/pumplog/";
pub const PUMPS_TAKEN: &str = "/sluice/v1/pumptaken/";

/// What a unit's "stream" begins with when the unit is a pump (stream names in a cluster,
/// Kinesis's, cannot hold `:`).
const PUMP_UNIT: &str = "pump:";

/// One shard of one stream: the unit that is assigned, owned and moved.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ShardKey {
    pub stream: String,
    pub shard: u32,
}

impl ShardKey {
    pub fn new(stream: impl Into<String>, shard: u32) -> Self {
        Self {
            stream: stream.into(),
            shard,
        }
    }

    /// `{prefix}{stream}/{shard}`; the shard is zero-padded so keys sort in shard order.
    pub fn key(&self, prefix: &str) -> String {
        format!("{prefix}{}/{:06}", self.stream, self.shard)
    }

    /// The unit a pump is leased as: assigned, owned and moved like a shard.
    pub fn pump(name: &str) -> Self {
        Self::new(format!("{PUMP_UNIT}{name}"), 0)
    }

    /// The pump this unit is, if it is one rather than a stream's shard.
    pub fn pump_name(&self) -> Option<&str> {
        self.stream.strip_prefix(PUMP_UNIT)
    }

    /// The shard a key under `prefix` names, if it names one.
    pub fn parse(prefix: &str, key: &str) -> Option<Self> {
        let rest = key.strip_prefix(prefix)?;
        let (stream, shard) = rest.rsplit_once('/')?;
        Some(Self::new(stream, shard.parse().ok()?))
    }
}

impl std::fmt::Display for ShardKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/shardId-{:012}", self.stream, self.shard)
    }
}

/// What a node tells the others about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct NodeInfo {
    /// Where its Kinesis-compatible HTTP API answers (`host:port`).
    pub kinesis: String,
    /// Where its Flight endpoint answers (`host:port`).
    pub flight: String,
}

/// A stream as the cluster knows it: the shards that are to be owned (its open shards;
/// closed ones take no writes), and its definition, from which every node makes its copy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct StreamShards {
    pub shards: Vec<u32>,
    #[serde(default)]
    pub definition: serde_json::Value,
}

/// A pump as the cluster knows it: its statement, and the shared stream it writes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct PumpSpec {
    pub sql: String,
    pub target: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_keys_round_trip_and_sort_by_shard() {
        let key = ShardKey::new("orders/eu", 7);
        let text = key.key(OWNER);
        assert_eq!(text, "/sluice/v1/owner/orders/eu/000007");
        assert_eq!(ShardKey::parse(OWNER, &text), Some(key.clone()));
        assert!(ShardKey::new("s", 9).key(ASSIGN) < ShardKey::new("s", 10).key(ASSIGN));
        assert_eq!(ShardKey::parse(OWNER, "/sluice/v1/owner/orders"), None);
        assert_eq!(ShardKey::parse(ASSIGN, "/sluice/v1/owner/s/000001"), None);
        let pump = ShardKey::pump("to_totals");
        assert_eq!(ShardKey::parse(OWNER, &pump.key(OWNER)), Some(pump.clone()));
        assert_eq!(pump.pump_name(), Some("to_totals"));
        assert_eq!(key.pump_name(), None);
    }
}
