//! Sluice's SQL: stream DDL on sqlparser, bounded queries and inserts on DataFusion.
//!
//! [`SluiceSession`] runs SQL against an [`Engine`](sluice_engine::Engine). Sluice's own
//! statements — `CREATE [OR REPLACE] STREAM … WITH (…)`, `DROP STREAM`, `SHOW STREAMS`,
//! `DESCRIBE stream`, `FLUSH` — are parsed by [`parser`] and run against the engine; every
//! other statement goes to DataFusion, whose default schema lists the engine's streams as tables
//! ([`StreamTable`]). So `SELECT … FROM stream` is a bounded query over the retained records,
//! joinable with other streams and with `CREATE EXTERNAL TABLE`s, and `INSERT INTO stream …`
//! appends records routed by the stream's partition key.
//!
//! Continuous queries (`SELECT STREAM …`) and pumps (`CREATE PUMP … AS INSERT INTO … SELECT
//! STREAM …`, [`pumps`]) read streams as endless tables ([`continuous`]). Both plan through
//! the [`streaming_planner`], which decides once how a query runs: stateless queries batch by
//! batch (a pump's with failing rows isolated, [`stateless`]); windowed queries ([`window`],
//! [`session_window`], the Kinesis Analytics spelling in [`kda`] and [`cursor`]) in
//! [`window_runtime`], which executes the query's own plan once per window ([`batch_exec`]) as
//! the [`watermark`] closes it; sliding windows (`OVER`) in [`sliding`], a row out per row in.
//!
//! Kinesis Data Analytics applications ([`application`]) run on top: each in its own namespace
//! of the engine with its own session, fed by input mappings and delivering its outputs, managed
//! through the `kinesisanalytics` actions; KDA's machine-learning functions are in [`ml`].
//!
//! # Example
//!
//! ```
//! use sluice_engine::{Engine, EngineOptions};
//! use sluice_sql::SluiceSession;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> sluice_sql::Result<()> {
//! let dir = tempfile::tempdir().expect("temporary folder");
//! let session = SluiceSession::new(Engine::open(EngineOptions::new(dir.path()))?)?;
//! session.execute_all(
//!     "CREATE STREAM ticker (symbol VARCHAR, price DOUBLE) WITH (shards = 4, partition_key = 'symbol');
//!      INSERT INTO ticker VALUES ('AMZN', 130.2), ('MSFT', 410.5);",
//! ).await?;
//! let results = session.execute_all("SELECT count(*) FROM ticker").await?;
//! assert_eq!(results[0].1[0].num_rows(), 1);
//! # Ok(())
//! # }
//! ```

pub mod application;
pub mod batch_exec;
pub mod continuous;
pub mod create_stream;
pub mod cursor;
pub mod error;
pub mod firehose;
pub mod identifiers;
pub mod kda;
pub mod kda_functions;
pub mod log_parse;
pub mod ml;
pub mod parser;
pub mod pumps;
pub mod schema_provider;
pub mod session;
pub mod session_window;
pub mod similar_to;
pub mod sliding;
pub mod sliding_state;
pub mod source;
pub mod stateless;
pub mod streaming_filter;
pub mod streaming_planner;
pub mod table;
pub mod types;
pub mod watermark;
pub mod window;
pub mod window_runtime;

pub use error::{Error, Result};
pub use parser::{SluiceStatement, parse_statements};
pub use session::{SluiceSession, StatementOutput, StatementShape};
pub use table::{StreamSink, StreamTable};
