//! A robust random cut forest (Guha, Mishra, Roy and Schrijvers, "Robust Random Cut Forest
//! Based Anomaly Detection on Streams", ICML 2016): the algorithm behind Kinesis Data
//! Analytics' `RANDOM_CUT_FOREST`, with its parameters and defaults (100 trees, a sample of 256
//! points per tree, time decay 100,000, shingle size 1).
//!
//! Each tree is a random cut tree over a sample of the stream's points. A point's anomaly
//! score in a tree is what it costs to isolate it: descending to where it would land and
//! walking back up, each node's chance of a random cut separating the point from the node's
//! bounding box mixes in `1 / (depth + 1)`, so a point cut off near the root scores high and one
//! deep in a dense region low; the score is scaled by `log2(1 + mass)` and averaged over the
//! trees (the scoring of AWS's own implementation, so scores read as KDA's did: around 1 for
//! ordinary points, several times that for anomalies). Each point is scored before it updates
//! the trees.
//!
//! The samples are time-decayed reservoirs: a point's priority is `-t / time_decay +
//! ln(-ln u)` for a uniform `u`; a tree keeps the `sample_size` points of least priority, so
//! newer points are favoured and the sample reflects about the last `time_decay` points.
//! With a shingle size of n, the point scored is the last n inputs side by side. Until every
//! tree's sample is full the score is 0, as the forest has not yet seen enough to judge.
//! Everything random comes from a seed, so a forest is deterministic.
//!
//! # Example
//!
//! ```
//! use sluice_sql::ml::random_cut_forest::{ForestParams, RandomCutForest};
//!
//! let mut forest = RandomCutForest::new(1, ForestParams { trees: 20, sample_size: 64, ..ForestParams::default() })?;
//! let mut scores = Vec::new();
//! for i in 0..1_000 {
//!     let value = if i == 900 { 50.0 } else { (i % 7) as f64 };
//!     scores.push(forest.score_and_update(&[value]));
//! }
//! assert!(scores[900] > 2.0 * scores[899]);
//! # Ok::<(), sluice_sql::error::Error>(())
//! ```

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap, VecDeque};

use crate::error::{Error, Result};

/// KDA's parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ForestParams {
    /// `numberOfTrees`, 1 to 1,000.
    pub trees: usize,
    /// `subSampleSize`, 10 to 1,000.
    pub sample_size: usize,
    /// `timeDecay`, 1 to 2^31.
    pub time_decay: f64,
    /// `shingleSize`, 1 to 30.
    pub shingle_size: usize,
    /// Where the randomness starts.
    pub seed: u64,
}

impl Default for ForestParams {
    fn default() -> Self {
        Self {
            trees: 100,
            sample_size: 256,
            time_decay: 100_000.0,
            shingle_size: 1,
            seed: 0x5EED_0FF0_4E57,
        }
    }
}

impl ForestParams {
    /// Checks the parameters against KDA's ranges.
    pub fn check(&self) -> Result<()> {
        let out = |what: &str, range: &str, value: String| {
            Err(Error::Plan(format!(
                "RANDOM_CUT_FOREST: {what} is {range}, not {value}"
            )))
        };
        if !(1..=1_000).contains(&self.trees) {
            return out("numberOfTrees", "1 to 1000", self.trees.to_string());
        }
        if !(10..=1_000).contains(&self.sample_size) {
            return out("subSampleSize", "10 to 1000", self.sample_size.to_string());
        }
        if !(1.0..=2_147_483_648.0).contains(&self.time_decay) {
            return out("timeDecay", "1 to 2147483648", self.time_decay.to_string());
        }
        if !(1..=30).contains(&self.shingle_size) {
            return out("shingleSize", "1 to 30", self.shingle_size.to_string());
        }
        Ok(())
    }
}

/// A forest over points of `dimensions` values (before shingling).
#[derive(Debug)]
pub struct RandomCutForest {
    params: ForestParams,
    trees: Vec<Tree>,
    shingle: VecDeque<Vec<f64>>,
    dimensions: usize,
    /// Points taken in (shingled), the sampler's clock.
    seen: u64,
    /// Scratch space for a tree walk's path, reused from point to point.
    path: Vec<usize>,
}

impl RandomCutForest {
    pub fn new(dimensions: usize, params: ForestParams) -> Result<Self> {
        params.check()?;
        if dimensions == 0 {
            return Err(Error::Plan(
                "RANDOM_CUT_FOREST needs at least one numeric column to score".into(),
            ));
        }
        let trees = (0..params.trees)
            .map(|i| Tree::new(params.seed ^ (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)))
            .collect();
        Ok(Self {
            params,
            trees,
            shingle: VecDeque::with_capacity(params.shingle_size),
            dimensions,
            seen: 0,
            path: Vec::new(),
        })
    }

    /// Scores `values` (one per dimension; NaN and infinities count as 0), then takes them in.
    pub fn score_and_update(&mut self, values: &[f64]) -> f64 {
        let Some(point) = self.shingled(values) else {
            return 0.0;
        };
        let ready = self
            .trees
            .iter()
            .all(|t| t.sampler.len() >= self.params.sample_size);
        let score = if ready {
            let path = &mut self.path;
            self.trees
                .iter()
                .map(|t| t.score(&point, path))
                .sum::<f64>()
                / self.trees.len() as f64
        } else {
            0.0
        };
        self.update_point(point);
        score
    }

    /// Scores `values` as [`Self::score_and_update`] does and explains the score: per input
    /// dimension, the part of it owed to the value being high and the part owed to it being
    /// low (summed over the shingle's positions). The parts add up to the score.
    pub fn explain_and_update(&mut self, values: &[f64]) -> (f64, Attribution) {
        let dims = self.dimensions;
        let mut attribution = Attribution {
            high: vec![0.0; dims],
            low: vec![0.0; dims],
        };
        let Some(point) = self.shingled(values) else {
            return (0.0, attribution);
        };
        let ready = self
            .trees
            .iter()
            .all(|t| t.sampler.len() >= self.params.sample_size);
        let mut score = 0.0;
        if ready {
            let trees = self.trees.len() as f64;
            let mut high = vec![0.0; point.len()];
            let mut low = vec![0.0; point.len()];
            for tree in &self.trees {
                score += tree.attribute(&point, &mut self.path, &mut high, &mut low) / trees;
            }
            // Fold the shingle's positions onto the input's dimensions.
            for (i, (h, l)) in high.iter().zip(&low).enumerate() {
                attribution.high[i % dims] += h / trees;
                attribution.low[i % dims] += l / trees;
            }
        }
        self.update_point(point);
        (score, attribution)
    }

    /// Takes `values` in without scoring them: the bare forest update.
    pub fn update(&mut self, values: &[f64]) {
        if let Some(point) = self.shingled(values) {
            self.update_point(point);
        }
    }

    fn shingled(&mut self, values: &[f64]) -> Option<Vec<f64>> {
        let mut input: Vec<f64> = values
            .iter()
            .map(|v| if v.is_finite() { *v } else { 0.0 })
            .collect();
        input.resize(self.dimensions, 0.0);
        if self.shingle.len() == self.params.shingle_size {
            self.shingle.pop_front();
        }
        self.shingle.push_back(input);
        (self.shingle.len() == self.params.shingle_size)
            .then(|| self.shingle.iter().flatten().copied().collect())
    }

    fn update_point(&mut self, point: Vec<f64>) {
        let t = self.seen;
        self.seen += 1;
        for tree in &mut self.trees {
            tree.sample(t, &point, &self.params);
        }
    }
}

/// How much of a score each dimension owes to its value being high, and being low.
#[derive(Debug, Clone, PartialEq)]
pub struct Attribution {
    pub high: Vec<f64>,
    pub low: Vec<f64>,
}

/// A sampled point's priority in a tree's reservoir.
#[derive(Debug, Clone, Copy)]
struct Priority {
    weight: f64,
    seq: u64,
}

impl PartialEq for Priority {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Priority {}
impl PartialOrd for Priority {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Priority {
    fn cmp(&self, other: &Self) -> Ordering {
        self.weight
            .total_cmp(&other.weight)
            .then(self.seq.cmp(&other.seq))
    }
}

#[derive(Debug, Clone)]
enum Kind {
    Leaf {
        point: Vec<f64>,
    },
    Internal {
        dim: usize,
        cut: f64,
        left: usize,
        right: usize,
    },
}

#[derive(Debug, Clone)]
struct Node {
    parent: Option<usize>,
    mass: usize,
    lo: Vec<f64>,
    hi: Vec<f64>,
    kind: Kind,
}

impl Node {
    /// A leaf holding `point` once, not yet attached.
    fn leaf(point: &[f64]) -> Self {
        Self {
            parent: None,
            mass: 1,
            lo: point.to_vec(),
            hi: point.to_vec(),
            kind: Kind::Leaf {
                point: point.to_vec(),
            },
        }
    }
}

/// One random cut tree and its reservoir.
#[derive(Debug)]
struct Tree {
    nodes: Vec<Node>,
    free: Vec<usize>,
    root: Option<usize>,
    /// The sampled points by sequence number, and their leaves.
    leaf_of: HashMap<u64, usize>,
    /// Max-heap: the sampled point of greatest priority is the next to go.
    sampler: BinaryHeap<Priority>,
    rng: SplitMix,
}

impl Tree {
    fn new(seed: u64) -> Self {
        Self {
            nodes: Vec::new(),
            free: Vec::new(),
            root: None,
            leaf_of: HashMap::new(),
            sampler: BinaryHeap::new(),
            rng: SplitMix(seed),
        }
    }

    /// Offers point `seq` to the reservoir; it enters the tree if it is kept.
    fn sample(&mut self, seq: u64, point: &[f64], params: &ForestParams) {
        let u = self.rng.unit().max(f64::MIN_POSITIVE);
        let weight = -(seq as f64) / params.time_decay + (-u.ln()).ln();
        let priority = Priority { weight, seq };
        if self.sampler.len() >= params.sample_size {
            match self.sampler.peek() {
                Some(top) if priority < *top => {
                    let evicted = top.seq;
                    self.sampler.pop();
                    self.delete(evicted);
                }
                _ => return,
            }
        }
        self.sampler.push(priority);
        let leaf = self.insert(point);
        self.leaf_of.insert(seq, leaf);
    }

    fn alloc(&mut self, node: Node) -> usize {
        match self.free.pop() {
            Some(i) => {
                self.nodes[i] = node;
                i
            }
            None => {
                self.nodes.push(node);
                self.nodes.len() - 1
            }
        }
    }

    /// Inserts `point`, returning its leaf.
    fn insert(&mut self, point: &[f64]) -> usize {
        let Some(mut at) = self.root else {
            let leaf = self.alloc(Node::leaf(point));
            self.root = Some(leaf);
            return leaf;
        };
        loop {
            let node = &self.nodes[at];
            // The node's box grown to hold the point, one dimension at a time (a box is made
            // only for a new internal node).
            let merged = |d: usize| (node.lo[d].min(point[d]), node.hi[d].max(point[d]));
            let total: f64 = (0..point.len())
                .map(|d| {
                    let (l, h) = merged(d);
                    h - l
                })
                .sum();
            if total <= 0.0 {
                // The same point again: its leaf counts it twice.
                self.add_mass_up(at, point);
                return at;
            }
            let mut r = self.rng.unit() * total;
            let mut dim = 0;
            for d in 0..point.len() {
                let (l, h) = merged(d);
                dim = d;
                if r < h - l {
                    break;
                }
                r -= h - l;
            }
            let (low, high) = merged(dim);
            let cut = (low + r).min(high);
            let separates = (cut < node.lo[dim] && point[dim] <= cut)
                || (cut >= node.hi[dim] && point[dim] > cut);
            if separates {
                let parent = node.parent;
                let (lo, hi): (Vec<f64>, Vec<f64>) = (0..point.len()).map(merged).unzip();
                let leaf = self.alloc(Node::leaf(point));
                let (left, right) = if point[dim] <= cut {
                    (leaf, at)
                } else {
                    (at, leaf)
                };
                let mass = self.nodes[at].mass + 1;
                let internal = self.alloc(Node {
                    parent,
                    mass,
                    lo,
                    hi,
                    kind: Kind::Internal {
                        dim,
                        cut,
                        left,
                        right,
                    },
                });
                self.nodes[leaf].parent = Some(internal);
                self.nodes[at].parent = Some(internal);
                match parent {
                    None => self.root = Some(internal),
                    Some(p) => {
                        self.replace_child(p, at, internal);
                        self.add_mass_up(p, point);
                    }
                }
                return leaf;
            }
            match &node.kind {
                Kind::Internal {
                    dim,
                    cut,
                    left,
                    right,
                } => at = if point[*dim] <= *cut { *left } else { *right },
                // A leaf's box is its point, so any cut between it and another point separates
                // them; only rounding gets here. Count the point with the leaf.
                Kind::Leaf { .. } => {
                    self.add_mass_up(at, point);
                    return at;
                }
            }
        }
    }

    /// Adds one to the mass of `from` and its ancestors, widening their boxes to `point`.
    fn add_mass_up(&mut self, from: usize, point: &[f64]) {
        let mut at = Some(from);
        while let Some(i) = at {
            let node = &mut self.nodes[i];
            node.mass += 1;
            for ((l, h), p) in node.lo.iter_mut().zip(node.hi.iter_mut()).zip(point) {
                *l = l.min(*p);
                *h = h.max(*p);
            }
            at = node.parent;
        }
    }

    fn replace_child(&mut self, parent: usize, old: usize, new: usize) {
        if let Kind::Internal { left, right, .. } = &mut self.nodes[parent].kind {
            if *left == old {
                *left = new;
            } else if *right == old {
                *right = new;
            }
        }
    }

    /// Removes sampled point `seq` from the tree.
    fn delete(&mut self, seq: u64) {
        let Some(leaf) = self.leaf_of.remove(&seq) else {
            return;
        };
        if self.nodes[leaf].mass > 1 {
            let mut at = Some(leaf);
            while let Some(i) = at {
                self.nodes[i].mass -= 1;
                at = self.nodes[i].parent;
            }
            return;
        }
        let Some(parent) = self.nodes[leaf].parent else {
            self.root = None;
            self.free.push(leaf);
            return;
        };
        let sibling = match &self.nodes[parent].kind {
            Kind::Internal { left, right, .. } => {
                if *left == leaf {
                    *right
                } else {
                    *left
                }
            }
            Kind::Leaf { .. } => return,
        };
        let grand = self.nodes[parent].parent;
        self.nodes[sibling].parent = grand;
        match grand {
            None => self.root = Some(sibling),
            Some(g) => self.replace_child(g, parent, sibling),
        }
        self.free.extend([leaf, parent]);
        // The ancestors lose one point and shrink to their children's boxes.
        let mut at = grand;
        while let Some(i) = at {
            if let Kind::Internal { left, right, .. } = self.nodes[i].kind {
                for d in 0..self.nodes[i].lo.len() {
                    let lo = self.nodes[left].lo[d].min(self.nodes[right].lo[d]);
                    let hi = self.nodes[left].hi[d].max(self.nodes[right].hi[d]);
                    self.nodes[i].lo[d] = lo;
                    self.nodes[i].hi[d] = hi;
                }
                self.nodes[i].mass -= 1;
            }
            at = self.nodes[i].parent;
        }
    }

    /// Walks from `root` down to the leaf where `point` would land, recording the nodes
    /// passed in `path`; the leaf.
    fn descend(&self, root: usize, point: &[f64], path: &mut Vec<usize>) -> usize {
        path.clear();
        path.push(root);
        let mut at = root;
        while let Kind::Internal {
            dim,
            cut,
            left,
            right,
        } = &self.nodes[at].kind
        {
            at = if point[*dim] <= *cut { *left } else { *right };
            path.push(at);
        }
        at
    }

    /// The point's anomaly score in this tree (see the module's documentation).
    fn score(&self, point: &[f64], path: &mut Vec<usize>) -> f64 {
        let Some(root) = self.root else {
            return 0.0;
        };
        let tree_mass = self.nodes[root].mass as f64;
        // Down to where the point would land.
        let at = self.descend(root, point, path);
        let unseen = |depth: usize| 1.0 / (depth as f64 + 1.0);
        let leaf_depth = path.len() - 1;
        let leaf = &self.nodes[at];
        let same = matches!(&leaf.kind, Kind::Leaf { point: p } if p.as_slice() == point);
        let mut score = if same {
            let mass = leaf.mass as f64;
            let damp = 1.0 - mass / (2.0 * tree_mass);
            damp / (leaf_depth as f64 + (mass + 1.0).log2())
        } else {
            unseen(leaf_depth)
        };
        // Back up: each node may cut the point off from its box.
        for (depth, &i) in path.iter().enumerate().rev().skip(1) {
            let node = &self.nodes[i];
            let (grown, total) = growth(node, point);
            if total > 0.0 && grown > 0.0 {
                let separation = grown / total;
                score = separation * unseen(depth) + (1.0 - separation) * score;
            }
        }
        score * (1.0 + tree_mass).log2()
    }

    /// The point's score in this tree, as [`Self::score`] gives it, with its parts per
    /// dimension and direction added to `high` and `low`: each node's chance of cutting the
    /// point off is split over the dimensions by how far the point lies outside the node's box
    /// in each, above (high) or below (low).
    fn attribute(
        &self,
        point: &[f64],
        path: &mut Vec<usize>,
        high: &mut [f64],
        low: &mut [f64],
    ) -> f64 {
        let Some(root) = self.root else {
            return 0.0;
        };
        let dims = point.len();
        let tree_mass = self.nodes[root].mass as f64;
        let at = self.descend(root, point, path);
        let unseen = |depth: usize| 1.0 / (depth as f64 + 1.0);
        let leaf_depth = path.len() - 1;
        let leaf = &self.nodes[at];
        let mut part_high = vec![0.0; dims];
        let mut part_low = vec![0.0; dims];
        let mut score = match &leaf.kind {
            Kind::Leaf { point: p } if p.as_slice() == point => {
                // A point seen before: no dimension stands out, the score is shared.
                let mass = leaf.mass as f64;
                let damp = 1.0 - mass / (2.0 * tree_mass);
                let score = damp / (leaf_depth as f64 + (mass + 1.0).log2());
                for d in 0..dims {
                    part_high[d] = score / (2.0 * dims as f64);
                    part_low[d] = score / (2.0 * dims as f64);
                }
                score
            }
            Kind::Leaf { point: p } => {
                let score = unseen(leaf_depth);
                let apart: f64 = p.iter().zip(point).map(|(a, b)| (a - b).abs()).sum();
                for d in 0..dims {
                    let gap = (point[d] - p[d]).abs() / apart.max(f64::MIN_POSITIVE);
                    if point[d] > p[d] {
                        part_high[d] = score * gap;
                    } else {
                        part_low[d] = score * gap;
                    }
                }
                score
            }
            Kind::Internal { .. } => 0.0,
        };
        for (depth, &i) in path.iter().enumerate().rev().skip(1) {
            let node = &self.nodes[i];
            let (grown, total) = growth(node, point);
            if total > 0.0 && grown > 0.0 {
                let separation = grown / total;
                let cut_off = unseen(depth);
                for d in 0..dims {
                    part_high[d] *= 1.0 - separation;
                    part_low[d] *= 1.0 - separation;
                    let above = (point[d] - node.hi[d]).max(0.0);
                    let below = (node.lo[d] - point[d]).max(0.0);
                    part_high[d] += cut_off * above / total;
                    part_low[d] += cut_off * below / total;
                }
                score = separation * cut_off + (1.0 - separation) * score;
            }
        }
        let scale = (1.0 + tree_mass).log2();
        for d in 0..dims {
            high[d] += part_high[d] * scale;
            low[d] += part_low[d] * scale;
        }
        score * scale
    }
}

/// How much `node`'s box grows to take in `point` (summed over dimensions), and the grown
/// box's total span: their ratio is the chance a random cut separates the point from the box.
fn growth(node: &Node, point: &[f64]) -> (f64, f64) {
    let (mut grown, mut total) = (0.0, 0.0);
    for ((l, h), p) in node.lo.iter().zip(&node.hi).zip(point) {
        let span = h.max(*p) - l.min(*p);
        total += span;
        grown += span - (h - l);
    }
    (grown, total)
}

/// SplitMix64: small, fast, and the same numbers from the same seed everywhere.
#[derive(Debug, Clone)]
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A noisy series around 10 (deterministic).
    fn series(n: usize, seed: u64) -> Vec<f64> {
        let mut rng = SplitMix(seed);
        (0..n)
            .map(|_| 10.0 + (rng.unit() + rng.unit() + rng.unit() - 1.5) * 2.0)
            .collect()
    }

    fn check_tree(tree: &Tree) {
        let Some(root) = tree.root else {
            assert!(tree.leaf_of.is_empty());
            return;
        };
        assert_eq!(tree.nodes[root].mass, tree.sampler.len());
        assert_eq!(tree.leaf_of.len(), tree.sampler.len());
        // Every node's mass is its children's, every box holds its children's.
        let mut stack = vec![root];
        while let Some(i) = stack.pop() {
            if let Kind::Internal { left, right, .. } = tree.nodes[i].kind {
                assert_eq!(
                    tree.nodes[i].mass,
                    tree.nodes[left].mass + tree.nodes[right].mass
                );
                for child in [left, right] {
                    assert_eq!(tree.nodes[child].parent, Some(i));
                    for d in 0..tree.nodes[i].lo.len() {
                        assert!(tree.nodes[i].lo[d] <= tree.nodes[child].lo[d]);
                        assert!(tree.nodes[i].hi[d] >= tree.nodes[child].hi[d]);
                    }
                }
                stack.extend([left, right]);
            }
        }
    }

    #[test]
    fn planted_anomalies_score_well_above_the_rest() -> Result<()> {
        let mut values = series(3_000, 7);
        for at in [1_500, 2_200, 2_900] {
            values[at] = 30.0;
        }
        let mut forest = RandomCutForest::new(1, ForestParams::default())?;
        let scores: Vec<f64> = values
            .iter()
            .map(|v| forest.score_and_update(&[*v]))
            .collect();
        assert!(
            scores[..255].iter().all(|s| *s == 0.0),
            "no score before the samples fill"
        );
        let mut normal: Vec<f64> = scores[1_000..]
            .iter()
            .enumerate()
            .filter(|(i, _)| ![500, 1_200, 1_900].contains(i))
            .map(|(_, s)| *s)
            .collect();
        normal.sort_by(f64::total_cmp);
        let p99 = normal[normal.len() * 99 / 100];
        let median = normal[normal.len() / 2];
        assert!(
            (0.3..3.0).contains(&median),
            "ordinary points score about 1: {median}"
        );
        for at in [1_500, 2_200, 2_900] {
            assert!(
                scores[at] > 2.0 * p99,
                "anomaly at {at} scored {} against a 99th percentile of {p99}",
                scores[at]
            );
        }
        for tree in &forest.trees {
            check_tree(tree);
        }
        Ok(())
    }

    #[test]
    fn shingles_find_a_break_in_a_pattern() -> Result<()> {
        // A repeating 0..7 ramp whose values are all ordinary; at 1500 the order breaks.
        let mut values: Vec<f64> = (0..2_000).map(|i| (i % 8) as f64).collect();
        values.swap(1_500, 1_504);
        let params = ForestParams {
            shingle_size: 4,
            ..ForestParams::default()
        };
        let mut forest = RandomCutForest::new(1, params)?;
        let scores: Vec<f64> = values
            .iter()
            .map(|v| forest.score_and_update(&[*v]))
            .collect();
        let before = scores[1_000..1_400].iter().cloned().fold(0.0, f64::max);
        let broken = scores[1_500..1_508].iter().cloned().fold(0.0, f64::max);
        assert!(broken > 2.0 * before.max(0.1), "{broken} vs {before}");
        Ok(())
    }

    #[test]
    fn the_same_seed_gives_the_same_scores_and_duplicates_are_counted() -> Result<()> {
        let values: Vec<f64> = (0..800).map(|i| (i % 5) as f64).collect();
        let run = |seed: u64| -> Result<Vec<f64>> {
            let mut forest = RandomCutForest::new(
                1,
                ForestParams {
                    trees: 10,
                    seed,
                    ..ForestParams::default()
                },
            )?;
            let scores = values
                .iter()
                .map(|v| forest.score_and_update(&[*v]))
                .collect();
            for tree in &forest.trees {
                check_tree(tree);
            }
            Ok(scores)
        };
        assert_eq!(run(1)?, run(1)?);
        assert_ne!(run(1)?, run(2)?);
        Ok(())
    }

    #[test]
    fn explanations_add_up_and_point_at_the_odd_dimension() -> Result<()> {
        let params = ForestParams {
            trees: 30,
            sample_size: 64,
            ..ForestParams::default()
        };
        let mut forest = RandomCutForest::new(2, params)?;
        let mut scored = Vec::new();
        for i in 0..600 {
            let x = (i % 10) as f64;
            // At 500, y jumps far below its usual range; x stays ordinary.
            let y = if i == 500 {
                -100.0
            } else {
                5.0 + (i % 3) as f64
            };
            scored.push(forest.explain_and_update(&[x, y]));
        }
        for (score, parts) in &scored[300..] {
            let total: f64 = parts.high.iter().chain(&parts.low).sum();
            assert!(
                (total - score).abs() < 1e-9 * score.max(1.0),
                "{total} vs {score}"
            );
        }
        let (score, parts) = &scored[500];
        assert!(*score > 2.0 * scored[499].0);
        assert!(parts.low[1] > 0.8 * score, "{parts:?}");
        assert!(parts.high[1] < 0.05 * score);
        Ok(())
    }

    #[test]
    fn out_of_range_parameters_name_kdas_limits() {
        let bad = ForestParams {
            sample_size: 5,
            ..ForestParams::default()
        };
        assert!(
            RandomCutForest::new(1, bad)
                .is_err_and(|e| e.to_string().contains("subSampleSize is 10 to 1000, not 5"))
        );
        assert!(RandomCutForest::new(0, ForestParams::default()).is_err());
    }
}
