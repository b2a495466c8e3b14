//! Kinesis Data Analytics applications: what an application is besides its SQL — its input
//! configuration, reference data and outputs, as the kinesisanalytics API describes them.
//!
//! - [`input`]: an input's `InputSchema` and the mapping of a stream's records (JSON at
//!   JSONPaths, or CSV) into the rows of an in-application stream.
//! - [`discover`]: `DiscoverInputSchema`, an `InputSchema` inferred from sample records.

pub mod discover;
pub mod input;
