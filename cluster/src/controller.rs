//! The controller's decision: which node each shard should live on.
//!
//! One node at a time is the controller (it holds the `controller` key under its lease; any
//! node takes over when that key goes). It assigns shards as KCL 3 assigns leases: a shard
//! whose node is gone (or that has none) goes to the least-loaded live node; then, to even out
//! load, shards move from the most- to the least-loaded node, but only while the two differ by
//! more than one shard, only shards that have settled on their assigned owner, and at most
//! [`max_moves`] per round (dampening: a node joining does not make every shard move at once).
//! Load is the number of shards a node is assigned. Losing the controller pauses rebalancing,
//! never the data path: owners keep their shards until told otherwise.

use std::collections::{BTreeMap, BTreeSet};

use crate::keys::ShardKey;

/// How many settled shards one round may move to even out load: a tenth of them, at least one.
pub fn max_moves(shards: usize) -> usize {
    (shards / 10).max(1)
}

/// The assignments to change: shards to (re)assign and the node each goes to, and assignments
/// of shards that no longer exist, to remove.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub assign: BTreeMap<ShardKey, String>,
    pub remove: Vec<ShardKey>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.assign.is_empty() && self.remove.is_empty()
    }
}

/// Plans one round. `current` maps shards to their assigned node; `settled` says whether a
/// shard is owned by the node it is assigned to (only those are moved to rebalance).
pub fn plan(
    shards: &BTreeSet<ShardKey>,
    live: &BTreeSet<String>,
    current: &BTreeMap<ShardKey, String>,
    settled: impl Fn(&ShardKey) -> bool,
) -> Plan {
    let mut plan = Plan {
        remove: current
            .keys()
            .filter(|shard| !shards.contains(shard))
            .cloned()
            .collect(),
        ..Plan::default()
    };
    if live.is_empty() {
        return plan;
    }
    let mut load: BTreeMap<&str, Vec<&ShardKey>> = live
        .iter()
        .map(|node| (node.as_str(), Vec::new()))
        .collect();
    let mut orphans = Vec::new();
    for shard in shards {
        match current
            .get(shard)
            .and_then(|node| load.get_mut(node.as_str()))
        {
            Some(on) => on.push(shard),
            None => orphans.push(shard),
        }
    }
    for shard in orphans {
        let node = least_loaded(&load);
        if let Some(on) = load.get_mut(node) {
            on.push(shard);
        }
        plan.assign.insert(shard.clone(), node.to_string());
    }
    for _ in 0..max_moves(shards.len()) {
        let from = most_loaded(&load);
        let to = least_loaded(&load);
        if load[from].len() <= load[to].len() + 1 {
            break;
        }
        // The last settled shard of the busiest node moves (deterministic, so every controller
        // would pick the same one).
        let Some(index) = load[from]
            .iter()
            .rposition(|shard| settled(shard) && !plan.assign.contains_key(*shard))
        else {
            break;
        };
        let shard = load.get_mut(from).map(|on| on.remove(index));
        if let (Some(shard), Some(on)) = (shard, load.get_mut(to)) {
            on.push(shard);
            plan.assign.insert(shard.clone(), to.to_string());
        }
    }
    plan
}

fn least_loaded<'a>(load: &BTreeMap<&'a str, Vec<&ShardKey>>) -> &'a str {
    load.iter()
        .min_by_key(|(node, on)| (on.len(), *node))
        .map(|(node, _)| *node)
        .unwrap_or_default()
}

fn most_loaded<'a>(load: &BTreeMap<&'a str, Vec<&ShardKey>>) -> &'a str {
    load.iter()
        .max_by_key(|(node, on)| (on.len(), std::cmp::Reverse(*node)))
        .map(|(node, _)| *node)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shards(n: u32) -> BTreeSet<ShardKey> {
        (0..n).map(|i| ShardKey::new("s", i)).collect()
    }

    fn nodes(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    fn apply(current: &mut BTreeMap<ShardKey, String>, plan: &Plan) {
        for shard in &plan.remove {
            current.remove(shard);
        }
        current.extend(plan.assign.clone());
    }

    fn counts(current: &BTreeMap<ShardKey, String>) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for node in current.values() {
            *counts.entry(node.clone()).or_default() += 1;
        }
        counts
    }

    #[test]
    fn new_shards_spread_evenly_over_the_live_nodes() {
        let mut current = BTreeMap::new();
        let plan = plan(&shards(7), &nodes(&["n1", "n2", "n3"]), &current, |_| true);
        apply(&mut current, &plan);
        let counts = counts(&current);
        assert_eq!(counts.values().copied().collect::<Vec<_>>(), [3, 2, 2]);
    }

    #[test]
    fn a_lost_nodes_shards_go_to_the_others_and_nothing_else_moves() {
        let mut current = BTreeMap::new();
        let all = nodes(&["n1", "n2", "n3"]);
        let first = plan(&shards(6), &all, &current, |_| true);
        apply(&mut current, &first);
        let before = current.clone();
        let survivors = nodes(&["n1", "n3"]);
        let round = plan(&shards(6), &survivors, &current, |_| true);
        // Only n2's two shards are reassigned.
        assert_eq!(round.assign.len(), 2);
        assert!(round.assign.keys().all(|s| before[s] == "n2"));
        apply(&mut current, &round);
        assert_eq!(
            counts(&current),
            BTreeMap::from([("n1".into(), 3), ("n3".into(), 3)])
        );
    }

    #[test]
    fn a_joining_node_takes_load_a_few_shards_per_round() {
        let mut current = BTreeMap::new();
        let two = nodes(&["n1", "n2"]);
        let first = plan(&shards(30), &two, &current, |_| true);
        apply(&mut current, &first);
        let three = nodes(&["n1", "n2", "n3"]);
        let mut rounds = 0;
        loop {
            let round = plan(&shards(30), &three, &current, |_| true);
            if round.is_empty() {
                break;
            }
            assert!(round.assign.len() <= max_moves(30), "dampened: {round:?}");
            apply(&mut current, &round);
            rounds += 1;
        }
        assert_eq!(rounds, 4);
        assert!(counts(&current).values().all(|&n| n == 10));
    }

    #[test]
    fn shards_still_moving_are_not_moved_again_and_gone_shards_are_removed() {
        let mut current = BTreeMap::new();
        let first = plan(&shards(4), &nodes(&["n1"]), &current, |_| true);
        apply(&mut current, &first);
        let round = plan(&shards(3), &nodes(&["n1", "n2"]), &current, |_| false);
        assert_eq!(round.remove, vec![ShardKey::new("s", 3)]);
        assert!(
            round.assign.is_empty(),
            "nothing settled may move: {round:?}"
        );
    }

    #[test]
    fn without_live_nodes_nothing_is_assigned() {
        let round = plan(&shards(3), &BTreeSet::new(), &BTreeMap::new(), |_| true);
        assert!(round.is_empty());
    }
}
