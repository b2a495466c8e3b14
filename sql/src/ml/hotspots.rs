//! Hotspots: the dense regions among the last `window_size` points of a stream, the algorithm
//! behind Kinesis Data Analytics' `HOTSPOTS`.
//!
//! As in DBSCAN (which KDA names as the model for `scanRadius`), a point with at least
//! `minimum_points` points (itself included) within `scan_radius` of it (Euclidean) is a core
//! point; core points within `scan_radius` of each other, and the points within reach of them,
//! form one region. A region of at least `minimum_points` points is a hotspot, reported with
//! its bounding box (`minValues`, `maxValues`) and its `density`: the share of the window's
//! points it holds, relative to the share of the window's bounding box it covers — how many
//! times denser than the window as a whole it is.
//!
//! Neighbours are kept incrementally: a point entering the window is compared with the points
//! there (`window_size · dimensions` work), a point leaving drops its links; the regions are then
//! found over the links alone.
//!
//! # Example
//!
//! ```
//! use sluice_sql::ml::hotspots::{HotspotParams, Hotspots};
//!
//! let mut hotspots = Hotspots::new(2, HotspotParams { window_size: 100, scan_radius: 0.5, minimum_points: 5 })?;
//! let mut last = Vec::new();
//! for i in 0..100 {
//!     // Points spread over 0..100, and every fourth one in a tight cluster near (50, 50).
//!     let point = if i % 4 == 0 { [50.0 + (i % 3) as f64 * 0.1, 50.0] } else { [i as f64, (i * 37 % 100) as f64] };
//!     last = hotspots.update(&point);
//! }
//! assert_eq!(last.len(), 1);
//! assert!(last[0].min_values[0] >= 50.0 && last[0].max_values[0] <= 50.3);
//! # Ok::<(), sluice_sql::error::Error>(())
//! ```

use std::collections::{HashMap, VecDeque};

use crate::error::{Error, Result};

/// KDA's parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HotspotParams {
    /// `windowSize`: how many of the latest points are searched, 100 to 1,000.
    pub window_size: usize,
    /// `scanRadius`: how near a neighbour is (DBSCAN's ε), greater than 0.
    pub scan_radius: f64,
    /// `minimumNumberOfPointsInAHotspot`, 2 or more (and at most the window).
    pub minimum_points: usize,
}

impl HotspotParams {
    /// Checks the parameters against KDA's ranges.
    pub fn check(&self) -> Result<()> {
        if !(100..=1000).contains(&self.window_size) {
            return Err(Error::Plan(format!(
                "HOTSPOTS: windowSize is 100 to 1000, not {}",
                self.window_size
            )));
        }
        if !(self.scan_radius.is_finite() && self.scan_radius > 0.0) {
            return Err(Error::Plan(format!(
                "HOTSPOTS: scanRadius is a number greater than 0, not {}",
                self.scan_radius
            )));
        }
        if self.minimum_points < 2 || self.minimum_points > self.window_size {
            return Err(Error::Plan(format!(
                "HOTSPOTS: minimumNumberOfPointsInAHotspot is 2 to windowSize ({}), not {}",
                self.window_size, self.minimum_points
            )));
        }
        Ok(())
    }
}

/// One hotspot.
#[derive(Debug, Clone, PartialEq)]
pub struct Hotspot {
    pub density: f64,
    pub min_values: Vec<f64>,
    pub max_values: Vec<f64>,
    /// How many of the window's points it holds.
    pub points: usize,
}

/// The sliding window and its neighbour links.
#[derive(Debug)]
pub struct Hotspots {
    params: HotspotParams,
    dimensions: usize,
    /// Points in the window, oldest first, with their ids.
    window: VecDeque<(u64, Vec<f64>)>,
    /// Each point's neighbours (ids) within the radius.
    links: HashMap<u64, Vec<u64>>,
    next_id: u64,
}

impl Hotspots {
    pub fn new(dimensions: usize, params: HotspotParams) -> Result<Self> {
        params.check()?;
        if dimensions == 0 {
            return Err(Error::Plan(
                "HOTSPOTS needs at least one numeric column in its cursor".into(),
            ));
        }
        Ok(Self {
            params,
            dimensions,
            window: VecDeque::with_capacity(params.window_size + 1),
            links: HashMap::new(),
            next_id: 0,
        })
    }

    /// Takes `values` into the window (the oldest point leaving when it is full) and returns
    /// the window's hotspots, densest first.
    pub fn update(&mut self, values: &[f64]) -> Vec<Hotspot> {
        let mut point: Vec<f64> = values
            .iter()
            .map(|v| if v.is_finite() { *v } else { 0.0 })
            .collect();
        point.resize(self.dimensions, 0.0);
        if self.window.len() == self.params.window_size
            && let Some((old, _)) = self.window.pop_front()
            && let Some(neighbours) = self.links.remove(&old)
        {
            for n in neighbours {
                if let Some(list) = self.links.get_mut(&n) {
                    list.retain(|&x| x != old);
                }
            }
        }
        let id = self.next_id;
        self.next_id += 1;
        let radius2 = self.params.scan_radius * self.params.scan_radius;
        let mut mine = Vec::new();
        for (other, q) in &self.window {
            let d2: f64 = q.iter().zip(&point).map(|(a, b)| (a - b) * (a - b)).sum();
            if d2 <= radius2 {
                mine.push(*other);
                if let Some(list) = self.links.get_mut(other) {
                    list.push(id);
                }
            }
        }
        self.links.insert(id, mine);
        self.window.push_back((id, point));
        self.regions()
    }

    /// The window's hotspots now.
    fn regions(&self) -> Vec<Hotspot> {
        let minimum = self.params.minimum_points;
        let core = |id: &u64| self.links.get(id).is_some_and(|l| l.len() + 1 >= minimum);
        let position: HashMap<u64, usize> = self
            .window
            .iter()
            .enumerate()
            .map(|(i, (id, _))| (*id, i))
            .collect();
        let mut region_of: HashMap<u64, usize> = HashMap::new();
        let mut regions: Vec<Vec<u64>> = Vec::new();
        for (id, _) in &self.window {
            if region_of.contains_key(id) || !core(id) {
                continue;
            }
            let region = regions.len();
            let mut members = vec![*id];
            region_of.insert(*id, region);
            let mut queue = vec![*id];
            while let Some(at) = queue.pop() {
                for n in self.links.get(&at).into_iter().flatten() {
                    if region_of.contains_key(n) {
                        continue;
                    }
                    region_of.insert(*n, region);
                    members.push(*n);
                    // Only core points reach further.
                    if core(n) {
                        queue.push(*n);
                    }
                }
            }
            regions.push(members);
        }
        let (window_lo, window_hi) = self.bounds(self.window.iter().map(|(_, p)| p.as_slice()));
        let window_volume = volume(&window_lo, &window_hi, self.params.scan_radius);
        let total = self.window.len() as f64;
        let mut hotspots: Vec<Hotspot> = regions
            .into_iter()
            .filter(|members| members.len() >= minimum)
            .map(|members| {
                let points = members
                    .iter()
                    .filter_map(|id| position.get(id))
                    .map(|&i| self.window[i].1.as_slice());
                let (lo, hi) = self.bounds(points);
                let share = members.len() as f64 / total;
                let covered = volume(&lo, &hi, self.params.scan_radius) / window_volume;
                Hotspot {
                    density: share / covered.max(f64::MIN_POSITIVE),
                    min_values: lo,
                    max_values: hi,
                    points: members.len(),
                }
            })
            .collect();
        hotspots.sort_by(|a, b| b.density.total_cmp(&a.density));
        hotspots
    }

    fn bounds<'a>(&self, points: impl Iterator<Item = &'a [f64]>) -> (Vec<f64>, Vec<f64>) {
        let mut lo = vec![f64::INFINITY; self.dimensions];
        let mut hi = vec![f64::NEG_INFINITY; self.dimensions];
        for p in points {
            for d in 0..self.dimensions {
                lo[d] = lo[d].min(p[d]);
                hi[d] = hi[d].max(p[d]);
            }
        }
        (lo, hi)
    }
}

/// The volume of a box, each side at least `radius` long (a region of equal points still
/// covers its neighbourhood).
fn volume(lo: &[f64], hi: &[f64], radius: f64) -> f64 {
    lo.iter()
        .zip(hi)
        .map(|(l, h)| (h - l).max(radius))
        .product()
}

/// Hotspots as KDA's `HOTSPOTS_RESULT` JSON: `{"hotspots":[{"density":…,"minValues":[…],
/// "maxValues":[…]}]}`.
pub fn hotspots_json(hotspots: &[Hotspot]) -> String {
    let list: Vec<serde_json::Value> = hotspots
        .iter()
        .map(|h| {
            serde_json::json!({
                "density": h.density,
                "minValues": h.min_values,
                "maxValues": h.max_values,
            })
        })
        .collect();
    serde_json::json!({ "hotspots": list }).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic noise in [0, 1).
    fn noise(i: u64) -> f64 {
        let mut z = i.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) as f64 / u64::MAX as f64
    }

    #[test]
    fn a_planted_dense_region_is_the_hotspot() -> Result<()> {
        let params = HotspotParams {
            window_size: 1000,
            scan_radius: 0.2,
            minimum_points: 17,
        };
        let mut hotspots = Hotspots::new(2, params)?;
        let mut last = Vec::new();
        for i in 0..3000u64 {
            // Uniform over [0, 10)², and one point in five inside [3, 3.5)².
            let point = if i % 5 == 0 {
                [3.0 + 0.5 * noise(2 * i), 3.0 + 0.5 * noise(2 * i + 1)]
            } else {
                [10.0 * noise(2 * i), 10.0 * noise(2 * i + 1)]
            };
            last = hotspots.update(&point);
        }
        assert!(!last.is_empty());
        let top = &last[0];
        assert!(
            top.min_values[0] >= 2.7 && top.max_values[0] <= 3.8,
            "{top:?}"
        );
        assert!(
            top.min_values[1] >= 2.7 && top.max_values[1] <= 3.8,
            "{top:?}"
        );
        assert!(top.points >= 150, "{top:?}");
        assert!(top.density > 10.0, "{top:?}");
        let json = hotspots_json(&last);
        assert!(json.starts_with(r#"{"hotspots":[{"density":"#), "{json}");
        Ok(())
    }

    #[test]
    fn uniform_noise_has_no_hotspot_and_links_follow_the_window() -> Result<()> {
        let params = HotspotParams {
            window_size: 200,
            scan_radius: 0.05,
            minimum_points: 10,
        };
        let mut hotspots = Hotspots::new(2, params)?;
        for i in 0..1000u64 {
            let found = hotspots.update(&[10.0 * noise(2 * i), 10.0 * noise(2 * i + 1)]);
            assert!(found.is_empty(), "{found:?} at {i}");
        }
        assert_eq!(hotspots.window.len(), 200);
        assert_eq!(hotspots.links.len(), 200);
        Ok(())
    }

    #[test]
    fn out_of_range_parameters_name_kdas_limits() {
        let bad = |window_size, scan_radius, minimum_points| {
            HotspotParams {
                window_size,
                scan_radius,
                minimum_points,
            }
            .check()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
        };
        assert!(bad(50, 1.0, 5).contains("windowSize"));
        assert!(bad(100, 0.0, 5).contains("scanRadius"));
        assert!(bad(100, 1.0, 1).contains("minimumNumberOfPointsInAHotspot"));
    }
}
