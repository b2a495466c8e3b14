//! The random cut forest benchmark: KDA's `RANDOM_CUT_FOREST` algorithm with its default
//! parameters (100 trees, 256-point samples, time decay 100,000, shingle size 1) scoring and
//! taking in a noisy series one value at a time, beside the bare forest update (sampling,
//! inserting and deleting points, no scoring) over the same values in the same run.

use sluice_sql::ml::random_cut_forest::{ForestParams, RandomCutForest};

use crate::measure::CpuTimer;

pub fn rcf(records: usize) -> Result<(), Box<dyn std::error::Error>> {
    println!(
        "random cut forest: {records} values, 100 trees, sample 256, time decay 100000, shingle 1"
    );
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let values: Vec<f64> = (0..records)
        .map(|i| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let noise = (state % 1_000) as f64 / 500.0 - 1.0;
            if i % 10_000 == 9_999 {
                40.0
            } else {
                10.0 + noise
            }
        })
        .collect();

    let mut bare = RandomCutForest::new(1, ForestParams::default())?;
    let cpu = CpuTimer::start();
    for v in &values {
        bare.update(&[*v]);
    }
    let bare_secs = cpu.elapsed_secs();

    let mut forest = RandomCutForest::new(1, ForestParams::default())?;
    let cpu = CpuTimer::start();
    let mut planted = 0.0;
    let mut ordinary = 0.0;
    for (i, v) in values.iter().enumerate() {
        let score = forest.score_and_update(&[*v]);
        if i % 10_000 == 9_999 {
            planted += score;
        } else {
            ordinary += score;
        }
    }
    let scored_secs = cpu.elapsed_secs();
    let anomalies = (records / 10_000).max(1) as f64;

    let rate = |secs: f64| records as f64 / secs.max(1e-9);
    crate::measure::print_side_by_side(
        ("score+update", "bare update"),
        &[(
            "values/s per core (CPU time)",
            rate(scored_secs),
            rate(bare_secs),
        )],
    );
    println!(
        "  score+update / bare update CPU time: {:.2}x; mean score {:.2} ordinary, {:.2} planted",
        scored_secs / bare_secs.max(1e-9),
        ordinary / (records as f64 - anomalies),
        planted / anomalies
    );
    Ok(())
}
