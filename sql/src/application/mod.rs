//! Kinesis Data Analytics applications: what an application is besides its SQL — its input
//! configuration, reference data and outputs, as the kinesisanalytics API describes them.
//!
//! - [`input`]: an input's `InputSchema` and the mapping of a stream's records (JSON at
//!   JSONPaths, or CSV) into the rows of an in-application stream.
//! - [`discover`]: `DiscoverInputSchema`, an `InputSchema` inferred from sample records.
//! - [`model`]: an application as the API describes it and Sluice keeps it.
//! - [`manager`]: [`Applications`], their lifecycle (READY, RUNNING, …), each run in its own
//!   namespace by its own session, with [`feeds`] for its inputs and outputs and
//!   [`reference`] tables read from S3-compatible storage.
//! - [`api`]: the `KinesisAnalytics_20150814` actions over [`Applications`], answered in KDA's
//!   shapes with KDA's exceptions ([`error`]).

pub mod api;
pub mod discover;
pub mod error;
pub mod feeds;
pub mod input;
pub mod manager;
pub mod model;
pub mod reference;
pub mod show;

pub use error::{ApplicationError, ErrorKind};
pub use manager::Applications;
