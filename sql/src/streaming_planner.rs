//! The streaming planner: what kind of continuous plan a `SELECT STREAM` query (or a pump's
//! `INSERT … SELECT STREAM …`) is, decided once, when it is planned.
//!
//! A continuous query runs one of four ways, and [`ContinuousPlan::decide`] picks it from
//! the logical plan:
//!
//! - **Windowed** ([`WindowedQuery`]): it aggregates (or sorts) over a window — tumbling,
//!   hopping, cumulating, session or stagger ([`WindowSpec`]), KDA's `STEP`/`FLOOR` and multi-key
//!   `GROUP BY`s having become tumbling windows at parsing — and runs once per window as the
//!   watermark closes it.
//! - **Sliding** ([`SlidingQuery`]): it has `OVER` windows; one row out per row in.
//! - **Isolated** ([`IsolatedQuery`]): a pump's row-by-row query over one stream, run batch by
//!   batch so a row it fails on is reported to `error_stream` and skipped.
//! - **Stateless**: filters and projections as one DataFusion plan over endless input.
//!
//! What cannot run on endless input (an aggregate without a window, a sort, `DISTINCT`) is
//! refused here, with what to write instead. `SELECT STREAM` and pumps both plan through
//! [`ContinuousPlanner`], which the session implements; pumps know no more of the session.
//!
//! # Example
//!
//! ```no_run
//! # async fn run(session: &sluice_sql::SluiceSession) -> sluice_sql::error::Result<()> {
//! use sluice_sql::parser::{SluiceStatement, parse_statements};
//! use sluice_sql::streaming_planner::{ContinuousPlan, ContinuousPlanner};
//!
//! let sql = "SELECT STREAM ticker, COUNT(*) FROM trades \
//!            GROUP BY ticker, STEP(trades.ROWTIME BY INTERVAL '60' SECOND)";
//! let Some(SluiceStatement::SelectStream(query)) = parse_statements(sql)?.pop() else {
//!     return Ok(());
//! };
//! let (context, plan) = session.plan_continuous(*query, None).await?;
//! let plan = ContinuousPlan::decide(plan)?;
//! assert_eq!(plan.describe(), "windowed: a tumbling window of 1 minute over rowtime");
//! let rows = plan.start(&context).await?;
//! # Ok(()) }
//! ```

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::execution::SendableRecordBatchStream;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::SessionContext;
use datafusion::sql::parser::Statement as DFStatement;
use sluice_engine::Engine;

use crate::continuous::PumpCursor;
use crate::error::{Error, Result};
use crate::sliding::SlidingQuery;
use crate::stateless::IsolatedQuery;
use crate::window::TumbleSpec;
use crate::window_runtime::WindowedQuery;

/// What pumps and `SELECT STREAM` need to plan a continuous statement: the session's names,
/// dialect rewrites and functions, over streams read through `cursor` (a pump's saved place)
/// or from their oldest retained record.
#[async_trait]
pub trait ContinuousPlanner: Send + Sync + 'static {
    /// The engine the streams live in.
    fn engine(&self) -> &Engine;

    /// Plans `statement` over endless streams: the context it was planned in (which runs it)
    /// and its logical plan.
    async fn plan_continuous(
        &self,
        statement: DFStatement,
        cursor: Option<Arc<PumpCursor>>,
    ) -> Result<(SessionContext, LogicalPlan)>;
}

/// The window of a windowed continuous query, as decided at planning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WindowSpec {
    /// Fixed windows one after another (`tumble`, `STEP`, `FLOOR … TO`).
    Tumble { size_ms: i64, time_column: String },
    /// Fixed windows every `slide_ms` (`hop`).
    Hop {
        size_ms: i64,
        slide_ms: i64,
        time_column: String,
    },
    /// Windows sharing a start every `size_ms`, ending every `step_ms` after it up to
    /// `size_ms` (`cumulate`, Flink's `CUMULATE`).
    Cumulate {
        step_ms: i64,
        size_ms: i64,
        time_column: String,
    },
    /// A window per key that closes after a gap without rows (`session`).
    Session {
        gap_ms: i64,
        keys: usize,
        time_column: String,
    },
    /// A window per key opened by its first row, closed `range_ms` later (KDA's `WINDOWED BY
    /// STAGGER`).
    Stagger {
        range_ms: i64,
        keys: usize,
        time_column: String,
    },
}

impl WindowSpec {
    /// The window `spec` describes.
    pub fn of(spec: &TumbleSpec) -> Self {
        let time_column = spec.time_column.clone();
        let ms = |t: i64| spec.to_millis(t);
        match (&spec.stagger_keys, &spec.session_keys) {
            (Some(keys), _) => Self::Stagger {
                range_ms: ms(spec.size),
                keys: keys.len(),
                time_column,
            },
            (None, Some(keys)) => Self::Session {
                gap_ms: ms(spec.size),
                keys: keys.len(),
                time_column,
            },
            (None, None) if spec.cumulate => Self::Cumulate {
                step_ms: ms(spec.slide),
                size_ms: ms(spec.size),
                time_column,
            },
            (None, None) if spec.slide != spec.size => Self::Hop {
                size_ms: ms(spec.size),
                slide_ms: ms(spec.slide),
                time_column,
            },
            (None, None) => Self::Tumble {
                size_ms: ms(spec.size),
                time_column,
            },
        }
    }
}

impl fmt::Display for WindowSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keys = |n: usize| match n {
            0 => String::new(),
            1 => " per key".to_string(),
            n => format!(" per {n} keys"),
        };
        match self {
            Self::Tumble {
                size_ms,
                time_column,
            } => write!(
                f,
                "a tumbling window of {} over {time_column}",
                span(*size_ms)
            ),
            Self::Hop {
                size_ms,
                slide_ms,
                time_column,
            } => write!(
                f,
                "a hopping window of {} every {} over {time_column}",
                span(*size_ms),
                span(*slide_ms)
            ),
            Self::Cumulate {
                step_ms,
                size_ms,
                time_column,
            } => write!(
                f,
                "cumulating windows growing by {} up to {} over {time_column}",
                span(*step_ms),
                span(*size_ms)
            ),
            Self::Session {
                gap_ms,
                keys: n,
                time_column,
            } => write!(
                f,
                "session windows{} closing after {} without rows, over {time_column}",
                keys(*n),
                span(*gap_ms)
            ),
            Self::Stagger {
                range_ms,
                keys: n,
                time_column,
            } => write!(
                f,
                "stagger windows{} of {} from their first row, over {time_column}",
                keys(*n),
                span(*range_ms)
            ),
        }
    }
}

/// A length of time for people: `1 minute`, `90 seconds`, `250 ms`.
fn span(ms: i64) -> String {
    const UNITS: [(i64, &str); 4] = [
        (86_400_000, "day"),
        (3_600_000, "hour"),
        (60_000, "minute"),
        (1_000, "second"),
    ];
    for (size, name) in UNITS {
        if ms >= size && ms % size == 0 {
            let n = ms / size;
            return format!("{n} {name}{}", if n == 1 { "" } else { "s" });
        }
    }
    format!("{ms} ms")
}

/// How a continuous query runs, decided once from its logical plan.
#[derive(Debug)]
pub enum ContinuousPlan {
    Windowed(WindowedQuery),
    Sliding(SlidingQuery),
    Isolated(IsolatedQuery),
    Stateless(LogicalPlan),
}

impl ContinuousPlan {
    /// Decides how `plan` runs, refusing what cannot run on endless input.
    pub fn decide(plan: LogicalPlan) -> Result<Self> {
        if let Some(windowed) = WindowedQuery::decide(&plan)? {
            return Ok(Self::Windowed(windowed));
        }
        if let Some(sliding) = SlidingQuery::decide(&plan)? {
            return Ok(Self::Sliding(sliding));
        }
        refuse_unbounded_state(&plan)?;
        if let Some(isolated) = IsolatedQuery::decide(&plan)? {
            return Ok(Self::Isolated(isolated));
        }
        Ok(Self::Stateless(plan))
    }

    /// The window of a windowed query.
    pub fn window(&self) -> Option<WindowSpec> {
        match self {
            Self::Windowed(query) => query.spec().map(WindowSpec::of),
            _ => None,
        }
    }

    /// How the query runs, for people (logs, `EXPLAIN`-like messages).
    pub fn describe(&self) -> String {
        match self {
            Self::Windowed(_) => match self.window() {
                Some(window) => format!("windowed: {window}"),
                None => "windowed".to_string(),
            },
            Self::Sliding(query) => format!("sliding: {}", query.describe()),
            Self::Isolated(_) => "row by row, a failing row reported and skipped".to_string(),
            Self::Stateless(_) => "row by row".to_string(),
        }
    }

    /// Starts the query in `context` (the one it was planned in).
    pub async fn start(self, context: &SessionContext) -> Result<SendableRecordBatchStream> {
        match self {
            Self::Windowed(query) => Ok(query.start(context).await?),
            Self::Sliding(query) => Ok(query.start(context).await?),
            Self::Isolated(query) => {
                physical_plan(context, query.plan()).await?;
                Ok(query.start(context).await?)
            }
            Self::Stateless(plan) => {
                let physical = physical_plan(context, &plan).await?;
                Ok(datafusion::physical_plan::execute_stream(
                    physical,
                    context.state().task_ctx(),
                )?)
            }
        }
    }
}

/// DataFusion's physical plan of a row-by-row query; its own check for operators that would
/// wait for the end of the input becomes a message that says so.
async fn physical_plan(
    context: &SessionContext,
    plan: &LogicalPlan,
) -> Result<Arc<dyn datafusion::physical_plan::ExecutionPlan>> {
    context
        .state()
        .create_physical_plan(plan)
        .await
        .map_err(|e| {
            let message = e.to_string();
            match message.split_once("pipeline breaking queries, operator: ") {
                Some((_, rest)) => Error::Plan(format!(
                    "this query cannot run continuously: its {} would wait for the end of an endless stream",
                    rest.split([' ', '{']).next().unwrap_or("operator")
                )),
                None => Error::from(e),
            }
        })
}

/// Refuses continuous queries whose operators would need the whole, endless input, and says
/// what to write instead.
fn refuse_unbounded_state(plan: &LogicalPlan) -> Result<()> {
    let bounded_instead =
        "to compute it over the records retained now, drop STREAM (SELECT … FROM stream)";
    let mut refusal = None;
    plan.apply(|node| {
        refusal = match node {
            LogicalPlan::Aggregate(_) => Some(format!(
                "an aggregate over a stream never finishes without a window: aggregate over tumble(stream, time_column, INTERVAL '1' MINUTE) and group by window_start; {bounded_instead}"
            )),
            LogicalPlan::Sort(_) => Some(format!(
                "ORDER BY cannot run continuously: an endless stream cannot be sorted; drop ORDER BY, or {bounded_instead}"
            )),
            LogicalPlan::Window(_) => Some(format!(
                "window functions (OVER …) cannot run continuously over an endless stream; {bounded_instead}"
            )),
            LogicalPlan::Distinct(_) => Some(format!(
                "DISTINCT cannot run continuously: it would remember every row of an endless stream; {bounded_instead}"
            )),
            _ => None,
        };
        Ok(if refusal.is_some() {
            TreeNodeRecursion::Stop
        } else {
            TreeNodeRecursion::Continue
        })
    })?;
    match refusal {
        Some(message) => Err(Error::Plan(message)),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_describe_themselves() {
        let tumble = WindowSpec::Tumble {
            size_ms: 60_000,
            time_column: "ROWTIME".into(),
        };
        assert_eq!(
            tumble.to_string(),
            "a tumbling window of 1 minute over ROWTIME"
        );
        let hop = WindowSpec::Hop {
            size_ms: 300_000,
            slide_ms: 90_000,
            time_column: "ts".into(),
        };
        assert_eq!(
            hop.to_string(),
            "a hopping window of 5 minutes every 90 seconds over ts"
        );
        let stagger = WindowSpec::Stagger {
            range_ms: 60_000,
            keys: 2,
            time_column: "ROWTIME".into(),
        };
        assert_eq!(
            stagger.to_string(),
            "stagger windows per 2 keys of 1 minute from their first row, over ROWTIME"
        );
        assert_eq!(span(1_500), "1500 ms");
        assert_eq!(span(7_200_000), "2 hours");
    }
}
