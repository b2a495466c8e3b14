//! Arrow Flight and Flight SQL for Sluice.
//!
//! [`BoundServer`] serves a [`SluiceSession`](sluice_sql::SluiceSession) over gRPC:
//!
//! - **Flight SQL** ([`sql_service`]): any statement Sluice understands, from ADBC, JDBC or
//!   `FlightSqlServiceClient`; prepared statements with parameters; updates; bulk ingest; and
//!   the metadata calls (catalogs, schemas, tables with their Arrow schemas, table types, SQL
//!   info, keys) that let database tools browse streams as tables.
//! - **Plain Flight**: `DoGet` with a JSON ticket ([`ticket`]) runs a query or subscribes to a
//!   stream and keeps sending record batches as records arrive, each subscriber reading the
//!   shards at its own pace; `DoPut` with a path descriptor naming a stream appends the record
//!   batches sent (columns by name, routed by the partition key column, no JSON parsing).
//! - Optional authentication checked on every call by the server's one
//!   [`Authorizer`](sluice_auth::Authorizer) (bearer token, Basic credentials and a handshake
//!   that exchanges them for a token), the same one its Kinesis port and `/metrics` ask; and TLS.
//!
//! Query and subscription results go out as messages of about 2 MiB ([`results`]), written to
//! the connection by [`wire`] with their Arrow buffers as they are, not copied into gRPC
//! message buffers.
//!
//! Errors become gRPC statuses by an exhaustive match ([`status`]): bad SQL is
//! `InvalidArgument`, an unknown stream `NotFound`, and so on, each with the message the REPL
//! would print. [`client::RemoteSession`] is the client side `sluice --connect` uses.

pub mod client;
pub mod results;
pub mod server;
pub mod sql_service;
pub mod status;
pub mod ticket;
pub mod wire;
mod xdbc;

pub use client::RemoteSession;
pub use server::{BoundServer, ServeError, ServerOptions, SluiceFlight};
pub use sluice_auth::Authorizer;
