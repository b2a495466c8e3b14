//! Kinesis Data Analytics' machine-learning functions, as algorithms over streams of numbers,
//! and their table functions in SQL.
//!
//! - [`random_cut_forest`]: the robust random cut forest behind `RANDOM_CUT_FOREST` and
//!   `RANDOM_CUT_FOREST_WITH_EXPLANATION`.
//! - [`hotspots`]: the dense regions of a sliding window behind `HOTSPOTS`.
//! - [`table`]: the functions in SQL, `FROM TABLE(RANDOM_CUT_FOREST(CURSOR(SELECT STREAM …)))`.

pub mod hotspots;
pub mod random_cut_forest;
pub mod table;
