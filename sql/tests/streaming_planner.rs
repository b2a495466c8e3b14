//! The streaming planner decides once, from the plan, how a continuous query runs: each shape
//! of query a user writes (Flink's and KDA's window spellings, sliding windows, pumps, plain
//! filters) gets its kind and window, and what cannot run on endless input is refused.

use std::sync::Arc;

use datafusion::sql::parser::Statement as DFStatement;
use sluice_engine::{Engine, EngineOptions};
use sluice_sql::SluiceSession;
use sluice_sql::continuous::PumpCursor;
use sluice_sql::parser::{SluiceStatement, parse_statements};
use sluice_sql::streaming_planner::{ContinuousPlan, ContinuousPlanner, WindowSpec};

type TestResult<T = ()> = Result<T, Box<dyn std::error::Error>>;

async fn session(dir: &std::path::Path) -> TestResult<SluiceSession> {
    let session = SluiceSession::new(Engine::open(EngineOptions::new(dir))?)?;
    session
        .execute_all(
            "CREATE STREAM trades (ticker VARCHAR, price DOUBLE, event_time TIMESTAMP) \
             WITH (shards = 2, partition_key = 'ticker'); \
             CREATE STREAM out (ticker VARCHAR, n BIGINT);",
        )
        .await?;
    Ok(session)
}

fn statement(sql: &str) -> TestResult<DFStatement> {
    match parse_statements(sql)?.pop() {
        Some(SluiceStatement::SelectStream(query) | SluiceStatement::DataFusion(query)) => {
            Ok(*query)
        }
        other => Err(format!("not a query: {other:?}").into()),
    }
}

async fn decide(session: &SluiceSession, sql: &str) -> TestResult<ContinuousPlan> {
    let (_, plan) = session.plan_continuous(statement(sql)?, None).await?;
    Ok(ContinuousPlan::decide(plan)?)
}

#[tokio::test]
async fn each_window_spelling_is_decided_as_its_window() -> TestResult {
    let dir = tempfile::tempdir()?;
    let session = session(dir.path()).await?;
    let cases = [
        (
            "SELECT STREAM ticker, COUNT(*) FROM tumble(trades, ROWTIME, INTERVAL '1' MINUTE) GROUP BY ticker, window_start",
            "windowed: a tumbling window of 1 minute over rowtime",
        ),
        (
            "SELECT STREAM ticker, COUNT(*) FROM trades GROUP BY ticker, STEP(trades.ROWTIME BY INTERVAL '10' SECOND)",
            "windowed: a tumbling window of 10 seconds over rowtime",
        ),
        (
            "SELECT STREAM ticker, FLOOR(event_time TO MINUTE), COUNT(*) FROM trades \
             GROUP BY ticker, FLOOR(event_time TO MINUTE), STEP(trades.ROWTIME BY INTERVAL '60' SECOND)",
            "windowed: a tumbling window of 1 minute over rowtime",
        ),
        (
            "SELECT STREAM COUNT(*) FROM hop(trades, event_time, INTERVAL '30' SECOND, INTERVAL '2' MINUTE) GROUP BY window_start",
            "windowed: a hopping window of 2 minutes every 30 seconds over event_time",
        ),
        (
            "SELECT STREAM COUNT(*) FROM TABLE(CUMULATE(TABLE trades, DESCRIPTOR(event_time), INTERVAL '1' MINUTE, INTERVAL '1' HOUR)) GROUP BY window_start, window_end",
            "windowed: cumulating windows growing by 1 minute up to 1 hour over event_time",
        ),
        (
            "SELECT STREAM ticker, COUNT(*) FROM session(trades, ticker, event_time, INTERVAL '5' MINUTE) GROUP BY ticker, window_start",
            "windowed: session windows per key closing after 5 minutes without rows, over event_time",
        ),
        (
            "SELECT STREAM ticker, COUNT(*) FROM trades WINDOWED BY STAGGER (PARTITION BY ticker RANGE INTERVAL '1' MINUTE)",
            "windowed: stagger windows per key of 1 minute from their first row, over rowtime",
        ),
    ];
    for (sql, expected) in cases {
        let plan = decide(&session, sql).await?;
        assert_eq!(plan.describe(), expected, "{sql}");
        assert!(matches!(plan, ContinuousPlan::Windowed(_)), "{sql}");
    }
    let tumble = decide(
        &session,
        "SELECT STREAM COUNT(*) FROM tumble(trades, event_time, INTERVAL '250' MILLISECOND) GROUP BY window_start",
    )
    .await?;
    assert_eq!(
        tumble.window(),
        Some(WindowSpec::Tumble {
            size_ms: 250,
            time_column: "event_time".into()
        })
    );
    Ok(())
}

#[tokio::test]
async fn sliding_stateless_and_pump_queries_get_their_kind() -> TestResult {
    let dir = tempfile::tempdir()?;
    let session = session(dir.path()).await?;
    let sliding = decide(
        &session,
        "SELECT STREAM ticker, AVG(price) OVER (PARTITION BY ticker RANGE INTERVAL '1' MINUTE PRECEDING) FROM trades",
    )
    .await?;
    assert!(matches!(sliding, ContinuousPlan::Sliding(_)));
    assert_eq!(
        sliding.describe(),
        "sliding: one row out per row in, over RANGE windows over the last 60000 ms of ROWTIME"
    );
    let filter = decide(
        &session,
        "SELECT STREAM ticker FROM trades WHERE price > 10",
    )
    .await?;
    assert!(matches!(filter, ContinuousPlan::Stateless(_)));
    assert_eq!(filter.window(), None);
    // The same query read by a pump runs batch by batch, isolating rows it fails on.
    let cursor = Arc::new(PumpCursor::default().for_pump("p"));
    let (_, plan) = session
        .plan_continuous(
            statement("SELECT STREAM ticker FROM trades WHERE price > 10")?,
            Some(cursor),
        )
        .await?;
    assert!(matches!(
        ContinuousPlan::decide(plan)?,
        ContinuousPlan::Isolated(_)
    ));
    Ok(())
}

#[tokio::test]
async fn what_cannot_run_on_endless_input_is_refused_with_what_to_write() -> TestResult {
    let dir = tempfile::tempdir()?;
    let session = session(dir.path()).await?;
    let refused = |sql: &'static str| {
        let session = session.clone();
        async move {
            match decide(&session, sql).await {
                Ok(plan) => format!("decided {}", plan.describe()),
                Err(e) => e.to_string(),
            }
        }
    };
    assert!(
        refused("SELECT STREAM ticker, COUNT(*) FROM trades GROUP BY ticker")
            .await
            .contains("an aggregate over a stream never finishes without a window")
    );
    assert!(
        refused("SELECT STREAM ticker FROM trades ORDER BY price")
            .await
            .contains("ORDER BY cannot run continuously")
    );
    assert!(
        refused("SELECT STREAM DISTINCT ticker FROM trades")
            .await
            .contains("DISTINCT cannot run continuously")
    );
    assert!(
        refused("SELECT STREAM COUNT(*) FROM tumble(trades, ROWTIME, INTERVAL '1' MINUTE)")
            .await
            .contains("must group by window_start")
    );
    Ok(())
}
