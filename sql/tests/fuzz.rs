//! Fuzzing the SQL front end (proptest, a bounded number of cases so that it runs in CI):
//! statements made of Sluice's and KDA's keywords, names, literals, punctuation and stray
//! characters are parsed and, when they parse, run against a session with streams in it. Any
//! error is fine; a panic or a statement that does not come back is not, and the session must
//! answer an ordinary query afterwards.

use std::time::Duration;

use proptest::prelude::*;
use sluice_engine::{Engine, EngineOptions};
use sluice_sql::{SluiceSession, parse_statements};

/// Words a statement is made of: keywords, names that exist and names that do not, literals,
/// operators, and the odd character.
fn token() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "SELECT",
            "STREAM",
            "FROM",
            "WHERE",
            "GROUP",
            "BY",
            "ORDER",
            "LIMIT",
            "INSERT",
            "INTO",
            "VALUES",
            "CREATE",
            "OR",
            "REPLACE",
            "PUMP",
            "AS",
            "WITH",
            "DROP",
            "ALTER",
            "SHOW",
            "STREAMS",
            "DESCRIBE",
            "EXPLAIN",
            "DELIVERY",
            "JOIN",
            "ON",
            "UNION",
            "ALL",
            "CAST",
            "INTERVAL",
            "'1'",
            "MINUTE",
            "SECOND",
            "STEP",
            "FLOOR",
            "ROWTIME",
            "TO",
            "TUMBLE",
            "HOP",
            "SESSION",
            "TABLE",
            "DESCRIPTOR",
            "WINDOW",
            "WATERMARK",
            "FOR",
            "NULL",
            "count(*)",
            "sum",
            "(",
            ")",
            ",",
            ";",
            "*",
            "=",
            "<",
            "+",
            "-",
            "/",
            "||",
            ".",
            "\"",
            "'",
            "ticks",
            "\"ticks\"",
            "n",
            "s",
            "_data",
            "_partition_key",
            "nowhere",
            "error_stream",
            "1",
            "0",
            "-1",
            "2.5",
            "'x'",
            "TRUE",
            "CURRENT_ROW_TIMESTAMP",
            "LOCALTIMESTAMP",
            "OVER",
            "RANGE",
            "PRECEDING",
            "PARTITION",
        ])
        .prop_map(str::to_string),
        "[a-z_]{1,8}",
        "[0-9]{1,12}",
        ".{1,3}",
    ]
}

fn soup(words: std::ops::Range<usize>) -> impl Strategy<Value = String> {
    prop::collection::vec(token(), words).prop_map(|words| words.join(" "))
}

/// Token soup, alone or inside the statements people write, so that many of them parse and
/// reach planning and execution.
fn statement() -> impl Strategy<Value = String> {
    prop_oneof![
        soup(1..24),
        soup(1..6).prop_map(|e| format!("SELECT {e} FROM ticks")),
        soup(1..6).prop_map(|e| format!("SELECT s, n FROM ticks WHERE {e}")),
        soup(1..6).prop_map(|e| format!("SELECT s, count(*) FROM ticks GROUP BY {e}")),
        soup(1..4).prop_map(|e| format!("INSERT INTO ticks VALUES ({e}, 1)")),
        soup(1..6).prop_map(|e| format!("SELECT STREAM {e} FROM ticks")),
        soup(1..6).prop_map(|e| format!(
            "SELECT STREAM s, count(*) FROM ticks GROUP BY s, STEP(ticks.ROWTIME BY INTERVAL {e})"
        )),
        soup(1..6).prop_map(|e| format!("CREATE OR REPLACE STREAM {e}")),
        (soup(1..4), soup(1..4)).prop_map(|(a, b)| format!(
            "CREATE OR REPLACE PUMP fuzz_pump AS INSERT INTO ticks SELECT STREAM {a} FROM ticks WHERE {b}"
        )),
    ]
}

#[test]
fn arbitrary_statements_fail_cleanly_and_the_session_keeps_answering() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let session = runtime.block_on(async {
        let engine = Engine::open(EngineOptions::new(dir.path())).expect("engine");
        let session = SluiceSession::new(engine).expect("session");
        session
            .execute_all(
                "CREATE STREAM ticks (s VARCHAR, n BIGINT) WITH (format = 'json');
                 INSERT INTO ticks VALUES ('a', 1), ('b', 2);",
            )
            .await
            .expect("setup");
        session
    });
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 384,
        ..ProptestConfig::default()
    });
    let parsed = std::sync::atomic::AtomicUsize::new(0);
    runner
        .run(&statement(), |text| {
            let Ok(statements) = parse_statements(&text) else {
                return Ok(());
            };
            parsed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            runtime.block_on(async {
                for statement in statements {
                    // Continuous queries come back at once with a stream that is dropped here.
                    let ran = tokio::time::timeout(
                        Duration::from_secs(20),
                        session.execute_statement(statement),
                    )
                    .await;
                    prop_assert!(ran.is_ok(), "did not come back: {text}");
                }
                Ok(())
            })
        })
        .expect("every statement fails cleanly or runs");
    // The cases reach planning and execution, not only the parser.
    let parsed = parsed.into_inner();
    assert!(parsed >= 40, "only {parsed} statements parsed");
    let rows = runtime.block_on(async {
        session
            .execute_all("SELECT count(*) FROM ticks")
            .await
            .map(|results| results.len())
    });
    assert!(rows.is_ok(), "the session stopped answering: {rows:?}");
    runtime.block_on(session.shutdown());
}
