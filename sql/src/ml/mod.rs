//! Kinesis Data Analytics' machine-learning functions, as algorithms over streams of numbers.
//!
//! - [`random_cut_forest`]: the robust random cut forest behind `RANDOM_CUT_FOREST`.

pub mod random_cut_forest;
