//! Kinesis Data Analytics applications through the kinesisanalytics actions: two applications
//! with the same in-application names side by side, input mapping with nested JSONPaths and
//! CSV, error_stream, outputs, stop and resume, a restart, and bad definitions refused with
//! KDA's exceptions.

use std::path::Path;
use std::sync::Arc;

use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use serde_json::{Value, json};
use sluice_engine::{Engine, EngineOptions, ManualClock, PutRecord, StreamSpec};
use sluice_sql::SluiceSession;
use sluice_sql::application::api::call;
use sluice_sql::application::{ApplicationError, Applications, ErrorKind};

#[path = "../../tests/support/s3_server.rs"]
mod s3_server;

type TestResult = Result<(), Box<dyn std::error::Error>>;

const START_MS: i64 = 1_767_225_600_000; // 2026-01-01 00:00:00 UTC

fn open(dir: &Path, clock: &ManualClock) -> Result<SluiceSession, Box<dyn std::error::Error>> {
    let engine = Engine::open(
        EngineOptions::new(dir.join("data"))
            .with_clock(Arc::new(clock.clone()))
            .with_background(false),
    )?;
    Ok(SluiceSession::new(engine)?)
}

fn apps(session: &SluiceSession) -> Result<&Arc<Applications>, Box<dyn std::error::Error>> {
    Ok(session
        .applications()
        .ok_or("the session has applications")?)
}

/// The values of column `column` of every row, as text, sorted.
fn texts(batches: &[RecordBatch], column: &str) -> Vec<String> {
    let mut out: Vec<String> = batches
        .iter()
        .flat_map(|b| {
            let Some(column) = b.column_by_name(column) else {
                return Vec::new();
            };
            let column = datafusion::arrow::compute::cast(
                column,
                &datafusion::arrow::datatypes::DataType::Utf8,
            )
            .unwrap_or_else(|_| {
                datafusion::arrow::array::new_null_array(
                    &datafusion::arrow::datatypes::DataType::Utf8,
                    column.len(),
                )
            });
            let strings = column.as_string::<i32>();
            (0..strings.len())
                .map(|i| {
                    if strings.is_valid(i) {
                        strings.value(i).to_string()
                    } else {
                        "NULL".to_string()
                    }
                })
                .collect()
        })
        .collect();
    out.sort();
    out
}

async fn query(
    session: &SluiceSession,
    sql: &str,
) -> Result<Vec<RecordBatch>, Box<dyn std::error::Error>> {
    let mut results = session.execute_all(sql).await?;
    Ok(results
        .pop()
        .map(|(_, batches)| batches)
        .unwrap_or_default())
}

fn ticker_input(prefix: &str) -> Value {
    json!({
        "NamePrefix": prefix,
        "KinesisStreamsInput": {
            "ResourceARN": "arn:aws:kinesis:us-east-1:000000000000:stream/ticker",
            "RoleARN": "arn:aws:iam::000000000000:role/kda"
        },
        "InputParallelism": {"Count": 1},
        "InputSchema": {
            "RecordFormat": {
                "RecordFormatType": "JSON",
                "MappingParameters": {"JSONMappingParameters": {"RecordRowPath": "$"}}
            },
            "RecordEncoding": "UTF-8",
            "RecordColumns": [
                {"Name": "TICKER_SYMBOL", "Mapping": "$.TICKER_SYMBOL", "SqlType": "VARCHAR(4)"},
                {"Name": "PRICE", "Mapping": "$.PRICE.last", "SqlType": "DOUBLE"},
                {"Name": "SECTOR", "Mapping": "$.SECTOR", "SqlType": "VARCHAR(16)"}
            ]
        }
    })
}

fn code(threshold: f64) -> String {
    format!(
        r#"CREATE OR REPLACE STREAM "DESTINATION_SQL_STREAM" ("TICKER_SYMBOL" VARCHAR(4), "PRICE" DOUBLE);
-- only the dear ones
CREATE OR REPLACE PUMP "STREAM_PUMP" AS INSERT INTO "DESTINATION_SQL_STREAM"
SELECT STREAM "TICKER_SYMBOL", "PRICE" FROM "SOURCE_SQL_STREAM_001" WHERE "PRICE" > {threshold};"#
    )
}

fn application(name: &str, threshold: f64, output: &str, format: &str) -> Value {
    json!({
        "ApplicationName": name,
        "ApplicationDescription": "prices above a threshold",
        "ApplicationCode": code(threshold),
        "Inputs": [ticker_input("SOURCE_SQL_STREAM")],
        "Outputs": [{
            "Name": "DESTINATION_SQL_STREAM",
            "KinesisStreamsOutput": {"ResourceARN": format!("arn:aws:kinesis:us-east-1:000000000000:stream/{output}"), "RoleARN": "r"},
            "DestinationSchema": {"RecordFormatType": format}
        }],
        "CloudWatchLoggingOptions": [{"LogStreamARN": "arn:aws:logs:us-east-1:000000000000:log-group:kda:log-stream:app", "RoleARN": "r"}],
        "Tags": [{"Key": "team", "Value": "pricing"}]
    })
}

fn tick(symbol: &str, price: f64) -> PutRecord {
    PutRecord::new(
        symbol,
        json!({"TICKER_SYMBOL": symbol, "PRICE": {"last": price, "open": 1.0}, "SECTOR": "TECH"})
            .to_string(),
    )
}

/// Starts application `name` with its input (1.1) at `position`.
async fn start(apps: &Applications, name: &str, position: &str) -> Result<Value, ApplicationError> {
    call(
        apps,
        "StartApplication",
        json!({"ApplicationName": name, "InputConfigurations": [
            {"Id": "1.1", "InputStartingPositionConfiguration": {"InputStartingPosition": position}}]}),
    )
    .await
}

fn kind(result: Result<Value, ApplicationError>) -> Option<(ErrorKind, String)> {
    result.err().map(|e| (e.kind, e.message))
}

async fn version(apps: &Applications, name: &str) -> Result<u64, Box<dyn std::error::Error>> {
    let detail = call(
        apps,
        "DescribeApplication",
        json!({"ApplicationName": name}),
    )
    .await?;
    Ok(detail["ApplicationDetail"]["ApplicationVersionId"]
        .as_u64()
        .ok_or("a version")?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_applications_with_the_same_names_run_side_by_side() -> TestResult {
    let dir = tempfile::tempdir()?;
    let clock = ManualClock::new(START_MS);
    let session = open(dir.path(), &clock)?;
    let engine = session.engine().clone();
    for name in ["ticker", "out_a", "out_b"] {
        engine.create_stream(StreamSpec::raw(name, 2), false)?;
    }
    // Records from a year ago and from now; one that is not JSON.
    let ticker = engine.stream("ticker")?;
    ticker.append(&[tick("AMZN", 150.5), tick("ORCL", 12.0), tick("IBM", 5.0)])?;
    ticker.append(&[PutRecord::new("x", "not json")])?;

    let applications = apps(&session)?;
    let created = call(
        applications,
        "CreateApplication",
        application("alpha", 10.0, "out_a", "JSON"),
    )
    .await?;
    assert_eq!(created["ApplicationSummary"]["ApplicationStatus"], "READY");
    assert_eq!(
        created["ApplicationSummary"]["ApplicationARN"],
        "arn:aws:kinesisanalytics:us-east-1:000000000000:application/alpha"
    );
    call(
        applications,
        "CreateApplication",
        application("beta", 100.0, "out_b", "CSV"),
    )
    .await?;
    for name in ["alpha", "beta"] {
        let detail = call(
            applications,
            "DescribeApplication",
            json!({"ApplicationName": name}),
        )
        .await?;
        let input_id = detail["ApplicationDetail"]["InputDescriptions"][0]["InputId"].clone();
        call(
            applications,
            "StartApplication",
            json!({"ApplicationName": name, "InputConfigurations": [
                {"Id": input_id, "InputStartingPositionConfiguration": {"InputStartingPosition": "TRIM_HORIZON"}}
            ]}),
        )
        .await?;
    }
    session.execute_all("FLUSH").await?;

    let detail = call(
        applications,
        "DescribeApplication",
        json!({"ApplicationName": "alpha"}),
    )
    .await?;
    let detail = &detail["ApplicationDetail"];
    assert_eq!(detail["ApplicationStatus"], "RUNNING");
    assert_eq!(
        detail["InputDescriptions"][0]["InAppStreamNames"],
        json!(["SOURCE_SQL_STREAM_001"])
    );
    assert_eq!(
        detail["InputDescriptions"][0]["InputStartingPositionConfiguration"]["InputStartingPosition"],
        "TRIM_HORIZON"
    );

    // Each application's in-app streams under the same names, apart.
    let alpha = query(
        &session,
        r#"SELECT "TICKER_SYMBOL", "PRICE" FROM alpha."DESTINATION_SQL_STREAM""#,
    )
    .await?;
    assert_eq!(texts(&alpha, "TICKER_SYMBOL"), ["AMZN", "ORCL"]);
    let beta = query(
        &session,
        r#"SELECT "TICKER_SYMBOL" FROM beta."DESTINATION_SQL_STREAM""#,
    )
    .await?;
    assert_eq!(texts(&beta, "TICKER_SYMBOL"), ["AMZN"]);
    let source = query(
        &session,
        r#"SELECT "PRICE" FROM alpha."SOURCE_SQL_STREAM_001""#,
    )
    .await?;
    assert_eq!(texts(&source, "PRICE"), ["12.0", "150.5", "5.0"]);

    // Outputs: JSON records into out_a, CSV into out_b.
    let out_a = query(
        &session,
        "SELECT CAST(_data AS VARCHAR) AS record FROM out_a",
    )
    .await?;
    assert_eq!(
        texts(&out_a, "record"),
        [
            r#"{"TICKER_SYMBOL":"AMZN","PRICE":150.5}"#,
            r#"{"TICKER_SYMBOL":"ORCL","PRICE":12.0}"#
        ]
    );
    let out_b = query(
        &session,
        "SELECT CAST(_data AS VARCHAR) AS record FROM out_b",
    )
    .await?;
    assert_eq!(texts(&out_b, "record"), ["AMZN,150.5"]);

    // The record that did not map is in each application's error_stream, as KDA reports it.
    let errors = query(
        &session,
        r#"SELECT "ERROR_NAME", "DATA_ROW", "MESSAGE" FROM alpha.error_stream"#,
    )
    .await?;
    assert_eq!(texts(&errors, "ERROR_NAME"), ["Data_Conversion_Error"]);
    assert_eq!(texts(&errors, "DATA_ROW"), [hex(b"not json")]);
    assert!(texts(&errors, "MESSAGE")[0].contains("not JSON"));
    let root_errors = query(&session, "SELECT count(*) AS n FROM error_stream").await?;
    assert_eq!(texts(&root_errors, "n"), ["0"]);

    // SQL sees them too.
    let shown = query(&session, "SHOW APPLICATIONS").await?;
    assert_eq!(texts(&shown, "name"), ["alpha", "beta"]);
    assert_eq!(texts(&shown, "status"), ["RUNNING", "RUNNING"]);
    let described = query(&session, "DESCRIBE APPLICATION alpha").await?;
    assert!(texts(&described, "name").contains(&"STREAM_PUMP".to_string()));

    // Stopped, records arrive; LAST_STOPPED_POINT takes them in once.
    call(
        applications,
        "StopApplication",
        json!({"ApplicationName": "alpha"}),
    )
    .await?;
    ticker.append(&[tick("MSFT", 20.0)])?;
    call(
        applications,
        "StartApplication",
        json!({"ApplicationName": "alpha", "InputConfigurations": [
            {"Id": "1.1", "InputStartingPositionConfiguration": {"InputStartingPosition": "LAST_STOPPED_POINT"}}
        ]}),
    )
    .await?;
    session.execute_all("FLUSH").await?;
    let alpha = query(
        &session,
        r#"SELECT "TICKER_SYMBOL" FROM alpha."DESTINATION_SQL_STREAM""#,
    )
    .await?;
    assert_eq!(texts(&alpha, "TICKER_SYMBOL"), ["AMZN", "MSFT", "ORCL"]);

    // A restart: the running applications run again, resuming where they were.
    session.shutdown().await;
    drop((session, engine, ticker));
    let session = open(dir.path(), &clock)?;
    session
        .engine()
        .stream("ticker")?
        .append(&[tick("NFLX", 500.0)])?;
    // Started again in the background; FLUSH waits for it.
    session.execute_all("FLUSH").await?;
    let out_a = query(
        &session,
        "SELECT CAST(_data AS VARCHAR) AS record FROM out_a",
    )
    .await?;
    assert_eq!(
        out_a.iter().map(|b| b.num_rows()).sum::<usize>(),
        4,
        "{:?}",
        texts(&out_a, "record")
    );
    let out_b = query(
        &session,
        "SELECT CAST(_data AS VARCHAR) AS record FROM out_b",
    )
    .await?;
    assert_eq!(texts(&out_b, "record"), ["AMZN,150.5", "NFLX,500.0"]);

    // Deleting one leaves the other.
    let applications = apps(&session)?;
    let created = call(
        applications,
        "DescribeApplication",
        json!({"ApplicationName": "alpha"}),
    )
    .await?["ApplicationDetail"]["CreateTimestamp"]
        .clone();
    call(
        applications,
        "DeleteApplication",
        json!({"ApplicationName": "alpha", "CreateTimestamp": created}),
    )
    .await?;
    assert!(session.engine().namespaces() == ["beta"]);
    let listed = call(applications, "ListApplications", json!({})).await?;
    assert_eq!(listed["ApplicationSummaries"][0]["ApplicationName"], "beta");
    assert_eq!(listed["HasMoreApplications"], false);
    session.shutdown().await;
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csv_input_and_a_code_update() -> TestResult {
    let dir = tempfile::tempdir()?;
    let clock = ManualClock::new(START_MS);
    let session = open(dir.path(), &clock)?;
    let engine = session.engine().clone();
    engine.create_stream(StreamSpec::raw("clicks", 1), false)?;
    engine.create_stream(StreamSpec::raw("counted", 1), false)?;
    let clicks = engine.stream("clicks")?;
    // Two rows in one record, the second's INTEGER not a number.
    clicks.append(&[PutRecord::new("k", "u1|/home|3\nu2|/cart|x")])?;
    let applications = apps(&session)?;
    call(
        applications,
        "CreateApplication",
        json!({
            "ApplicationName": "clickapp",
            "Inputs": [{
                "NamePrefix": "CLICKS",
                "KinesisStreamsInput": {"ResourceARN": "clicks", "RoleARN": "r"},
                "InputSchema": {
                    "RecordFormat": {"RecordFormatType": "CSV", "MappingParameters": {
                        "CSVMappingParameters": {"RecordRowDelimiter": "\n", "RecordColumnDelimiter": "|"}}},
                    "RecordColumns": [
                        {"Name": "USER_ID", "SqlType": "VARCHAR(8)"},
                        {"Name": "URL", "SqlType": "VARCHAR(64)"},
                        {"Name": "N", "SqlType": "INTEGER"}
                    ]
                }
            }],
            "ApplicationCode": "CREATE OR REPLACE STREAM \"OUT\" (\"USER_ID\" VARCHAR(8), \"N\" INTEGER);\nCREATE OR REPLACE PUMP \"P\" AS INSERT INTO \"OUT\" SELECT STREAM \"USER_ID\", \"N\" FROM \"CLICKS_001\";",
            "Outputs": [{"Name": "OUT", "KinesisStreamsOutput": {"ResourceARN": "counted", "RoleARN": "r"},
                         "DestinationSchema": {"RecordFormatType": "JSON"}}]
        }),
    )
    .await?;
    start(applications, "clickapp", "TRIM_HORIZON").await?;
    session.execute_all("FLUSH").await?;
    let rows = query(
        &session,
        r#"SELECT "USER_ID", "N" FROM clickapp."CLICKS_001""#,
    )
    .await?;
    assert_eq!(texts(&rows, "USER_ID"), ["u1"]);
    assert_eq!(texts(&rows, "N"), ["3"]);
    // The row whose N is not a number goes to error_stream, its record with it.
    let errors = query(&session, r#"SELECT "MESSAGE" FROM clickapp.error_stream"#).await?;
    let messages = texts(&errors, "MESSAGE");
    assert_eq!(messages.len(), 1);
    assert!(messages[0].contains('N'), "{messages:?}");

    // New code while running: the application restarts with it.
    let v = version(applications, "clickapp").await?;
    assert_eq!(
        kind(
            call(
                applications,
                "UpdateApplication",
                json!({"ApplicationName": "clickapp", "CurrentApplicationVersionId": v + 5,
                       "ApplicationUpdate": {"ApplicationCodeUpdate": "CREATE OR REPLACE STREAM \"X\" (\"A\" INTEGER);"}}),
            )
            .await
        )
        .map(|(k, _)| k),
        Some(ErrorKind::ConcurrentModification)
    );
    call(
        applications,
        "UpdateApplication",
        json!({"ApplicationName": "clickapp", "CurrentApplicationVersionId": v,
               "ApplicationUpdate": {"ApplicationCodeUpdate": "CREATE OR REPLACE STREAM \"OUT\" (\"USER_ID\" VARCHAR(8), \"N\" INTEGER);\nCREATE OR REPLACE PUMP \"P\" AS INSERT INTO \"OUT\" SELECT STREAM \"USER_ID\", \"N\" * 10 AS \"N\" FROM \"CLICKS_001\" WHERE \"N\" IS NOT NULL;"}}),
    )
    .await?;
    assert_eq!(version(applications, "clickapp").await?, v + 1);
    clicks.append(&[PutRecord::new("k", "u3|/x|4")])?;
    session.execute_all("FLUSH").await?;
    let rows = query(&session, r#"SELECT "N" FROM clickapp."OUT""#).await?;
    // Restarted where its input stopped: only the new record, with the new code.
    assert_eq!(texts(&rows, "N"), ["40"]);
    session.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_definitions_get_kda_exceptions_naming_the_field() -> TestResult {
    let dir = tempfile::tempdir()?;
    let clock = ManualClock::new(START_MS);
    let session = open(dir.path(), &clock)?;
    session
        .engine()
        .create_stream(StreamSpec::raw("ticker", 1), false)?;
    let applications = apps(&session)?;
    let create = |change: &dyn Fn(&mut Value)| {
        let mut request = application("bad", 1.0, "ticker", "JSON");
        change(&mut request);
        request
    };
    let cases: Vec<(Value, ErrorKind, &str)> = vec![
        (
            create(&|r| {
                r["Inputs"][0]["InputSchema"]["RecordColumns"][1]["SqlType"] = json!("MONEY")
            }),
            ErrorKind::InvalidArgument,
            "Inputs[0].InputSchema.RecordColumns[1].SqlType",
        ),
        (
            create(&|r| {
                r["Inputs"][0]["InputSchema"]["RecordColumns"][0]["Mapping"] = json!("TICKER")
            }),
            ErrorKind::InvalidArgument,
            "Inputs[0].InputSchema.RecordColumns[0].Mapping",
        ),
        (
            create(&|r| r["Inputs"][0]["NamePrefix"] = json!("has space")),
            ErrorKind::InvalidArgument,
            "Inputs[0].NamePrefix",
        ),
        (
            create(
                &|r| r["Inputs"][0]["InputProcessingConfiguration"] = json!({"InputLambdaProcessor": {"ResourceARN": "arn:aws:lambda:::f", "RoleARN": "r"}}),
            ),
            ErrorKind::UnsupportedOperation,
            "Lambda",
        ),
        (
            create(&|r| {
                r["Outputs"][0] = json!({"Name": "X", "LambdaOutput": {"ResourceARN": "f", "RoleARN": "r"},
                                          "DestinationSchema": {"RecordFormatType": "JSON"}})
            }),
            ErrorKind::UnsupportedOperation,
            "Outputs[0].LambdaOutput",
        ),
        (
            create(&|r| r["Outputs"][0]["DestinationSchema"]["RecordFormatType"] = json!("XML")),
            ErrorKind::InvalidArgument,
            "Outputs[0].DestinationSchema.RecordFormatType",
        ),
        (
            create(&|r| r["ApplicationCode"] = json!("CREATE OR REPLACE STREAM (")),
            ErrorKind::CodeValidation,
            "",
        ),
        (
            create(&|r| {
                r["ApplicationCode"] = json!("SELECT STREAM * FROM \"SOURCE_SQL_STREAM_001\";")
            }),
            ErrorKind::CodeValidation,
            "CREATE OR REPLACE PUMP",
        ),
        (
            create(&|r| r["ApplicationName"] = json!("no/slash")),
            ErrorKind::InvalidArgument,
            "ApplicationName",
        ),
        (
            create(&|r| {
                r["Inputs"][0]
                    .as_object_mut()
                    .map(|o| o.remove("NamePrefix"))
                    .map_or((), |_| ())
            }),
            ErrorKind::InvalidArgument,
            "NamePrefix",
        ),
    ];
    for (request, expected, field) in cases {
        let got = kind(call(applications, "CreateApplication", request).await);
        let Some((got, message)) = got else {
            return Err(format!("{field}: accepted").into());
        };
        assert_eq!(got, expected, "{message}");
        assert!(message.contains(field), "{message} should name {field}");
    }
    assert!(
        call(applications, "ListApplications", json!({})).await?["ApplicationSummaries"]
            .as_array()
            .is_some_and(Vec::is_empty)
    );

    // Existence, state and versions.
    assert_eq!(
        kind(
            call(
                applications,
                "DescribeApplication",
                json!({"ApplicationName": "nope"})
            )
            .await
        )
        .map(|(k, _)| k),
        Some(ErrorKind::ResourceNotFound)
    );
    call(
        applications,
        "CreateApplication",
        application("ok", 1.0, "ticker", "JSON"),
    )
    .await?;
    assert_eq!(
        kind(
            call(
                applications,
                "CreateApplication",
                application("ok", 1.0, "ticker", "JSON")
            )
            .await
        )
        .map(|(k, _)| k),
        Some(ErrorKind::ResourceInUse)
    );
    assert_eq!(
        kind(
            call(
                applications,
                "StartApplication",
                json!({"ApplicationName": "ok", "InputConfigurations": [
                    {"Id": "1.1", "InputStartingPositionConfiguration": {"InputStartingPosition": "YESTERDAY"}}]}),
            )
            .await
        )
        .map(|(k, _)| k),
        Some(ErrorKind::InvalidArgument)
    );
    // Its output stream comes from the code, which makes it; an output to a missing stream
    // is a configuration error when it starts.
    let v = version(applications, "ok").await?;
    call(
        applications,
        "AddApplicationOutput",
        json!({"ApplicationName": "ok", "CurrentApplicationVersionId": v, "Output": {
            "Name": "NOT_THERE", "KinesisStreamsOutput": {"ResourceARN": "ticker", "RoleARN": "r"},
            "DestinationSchema": {"RecordFormatType": "CSV"}}}),
    )
    .await?;
    let failed = kind(
        call(
            applications,
            "StartApplication",
            json!({"ApplicationName": "ok", "InputConfigurations": []}),
        )
        .await,
    );
    let Some((failed, message)) = failed else {
        return Err("started with an output of a missing in-app stream".into());
    };
    assert_eq!(failed, ErrorKind::InvalidApplicationConfiguration);
    assert!(message.contains("NOT_THERE"), "{message}");
    let status = call(
        applications,
        "DescribeApplication",
        json!({"ApplicationName": "ok"}),
    )
    .await?["ApplicationDetail"]["ApplicationStatus"]
        .clone();
    assert_eq!(status, "READY");
    // Tags don't change the version.
    let arn = "arn:aws:kinesisanalytics:us-east-1:000000000000:application/ok";
    let v = version(applications, "ok").await?;
    call(
        applications,
        "TagResource",
        json!({"ResourceARN": arn, "Tags": [{"Key": "env", "Value": "test"}]}),
    )
    .await?;
    assert_eq!(version(applications, "ok").await?, v);
    let tags = call(
        applications,
        "ListTagsForResource",
        json!({"ResourceARN": arn}),
    )
    .await?;
    assert_eq!(tags["Tags"].as_array().map(Vec::len), Some(2));
    session.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discover_input_schema_samples_a_stream() -> TestResult {
    let dir = tempfile::tempdir()?;
    let clock = ManualClock::new(START_MS);
    let session = open(dir.path(), &clock)?;
    let engine = session.engine();
    engine.create_stream(StreamSpec::raw("ticker", 2), false)?;
    engine
        .stream("ticker")?
        .append(&[tick("AMZN", 150.5), tick("ORCL", 12.0)])?;
    let applications = apps(&session)?;
    let found = call(
        applications,
        "DiscoverInputSchema",
        json!({"ResourceARN": "arn:aws:kinesis:us-east-1:000000000000:stream/ticker", "RoleARN": "r",
               "InputStartingPositionConfiguration": {"InputStartingPosition": "TRIM_HORIZON"}}),
    )
    .await?;
    let columns = found["InputSchema"]["RecordColumns"]
        .as_array()
        .ok_or("columns")?;
    let names: Vec<&str> = columns.iter().filter_map(|c| c["Name"].as_str()).collect();
    assert!(names.contains(&"TICKER_SYMBOL"), "{names:?}");
    assert_eq!(found["RawInputRecords"].as_array().map(Vec::len), Some(2));
    assert_eq!(
        found["ParsedInputRecords"].as_array().map(Vec::len),
        Some(2)
    );
    engine.create_stream(StreamSpec::raw("empty", 1), false)?;
    assert_eq!(
        kind(
            call(
                applications,
                "DiscoverInputSchema",
                json!({"ResourceARN": "empty"})
            )
            .await
        )
        .map(|(k, _)| k),
        Some(ErrorKind::UnableToDetectSchema)
    );
    session.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reference_table_from_s3_joins_the_stream_and_is_read_again_on_update() -> TestResult {
    let dir = tempfile::tempdir()?;
    let root = dir.path().join("s3");
    std::fs::create_dir_all(root.join("refdata"))?;
    std::fs::write(
        root.join("refdata/companies.csv"),
        "AMZN,Amazon\nORCL,Oracle\n",
    )?;
    let (server, addr) =
        s3_server::serve(&root, "127.0.0.1:0".parse()?, ("ref-key", "ref-secret")).await?;
    let clock = ManualClock::new(START_MS);
    let session = open(dir.path(), &clock)?;
    let engine = session.engine().clone();
    engine.create_stream(StreamSpec::raw("ticker", 1), false)?;
    engine.create_stream(StreamSpec::raw("named", 1), false)?;
    let applications = apps(&session)?;
    applications.set_reference_s3(sluice_delivery::options::S3Options {
        endpoint: Some(format!("http://{addr}")),
        region: Some("us-east-1".into()),
        allow_http: true,
        access_key_id: Some("ref-key".into()),
        secret_access_key: Some("ref-secret".into()),
        session_token: None,
    });
    let mut request = application("withref", 0.0, "named", "JSON");
    request["ApplicationCode"] = json!(
        r#"CREATE OR REPLACE STREAM "DESTINATION_SQL_STREAM" ("TICKER_SYMBOL" VARCHAR(4), "COMPANY" VARCHAR(32), "PRICE" DOUBLE);
CREATE OR REPLACE PUMP "STREAM_PUMP" AS INSERT INTO "DESTINATION_SQL_STREAM"
SELECT STREAM "TICKER_SYMBOL", "c"."COMPANY", "PRICE"
FROM "SOURCE_SQL_STREAM_001" LEFT JOIN "COMPANIES" AS "c"
ON "SOURCE_SQL_STREAM_001"."TICKER_SYMBOL" = "c"."TICKER";"#
    );
    call(applications, "CreateApplication", request).await?;
    call(
        applications,
        "AddApplicationReferenceDataSource",
        json!({"ApplicationName": "withref", "CurrentApplicationVersionId": 1, "ReferenceDataSource": {
            "TableName": "COMPANIES",
            "S3ReferenceDataSource": {"BucketARN": "arn:aws:s3:::refdata", "FileKey": "companies.csv",
                                      "ReferenceRoleARN": "arn:aws:iam::000000000000:role/ref"},
            "ReferenceSchema": {
                "RecordFormat": {"RecordFormatType": "CSV", "MappingParameters": {"CSVMappingParameters":
                    {"RecordRowDelimiter": "\n", "RecordColumnDelimiter": ","}}},
                "RecordEncoding": "UTF-8",
                "RecordColumns": [{"Name": "TICKER", "SqlType": "VARCHAR(4)"},
                                  {"Name": "COMPANY", "SqlType": "VARCHAR(32)"}]}}}),
    )
    .await?;
    engine
        .stream("ticker")?
        .append(&[tick("AMZN", 1.0), tick("IBM", 2.0)])?;
    start(applications, "withref", "TRIM_HORIZON").await?;
    session.execute_all("FLUSH").await?;
    let out = query(
        &session,
        "SELECT CAST(_data AS VARCHAR) AS record FROM named",
    )
    .await?;
    assert_eq!(
        texts(&out, "record"),
        [
            r#"{"TICKER_SYMBOL":"AMZN","COMPANY":"Amazon","PRICE":1.0}"#,
            r#"{"TICKER_SYMBOL":"IBM","PRICE":2.0}"#
        ]
    );

    // The object changes; an update (here, of the table's key) reads it again.
    std::fs::write(
        root.join("refdata/companies-v2.csv"),
        "AMZN,Amazon.com\nIBM,IBM Corp\n",
    )?;
    let v = version(applications, "withref").await?;
    let reference_id = call(
        applications,
        "DescribeApplication",
        json!({"ApplicationName": "withref"}),
    )
    .await?["ApplicationDetail"]["ReferenceDataSourceDescriptions"][0]["ReferenceId"]
        .clone();
    call(
        applications,
        "UpdateApplication",
        json!({"ApplicationName": "withref", "CurrentApplicationVersionId": v, "ApplicationUpdate": {
            "ReferenceDataSourceUpdates": [{"ReferenceId": reference_id,
                "S3ReferenceDataSourceUpdate": {"FileKeyUpdate": "companies-v2.csv"}}]}}),
    )
    .await?;
    engine.stream("ticker")?.append(&[tick("IBM", 3.0)])?;
    session.execute_all("FLUSH").await?;
    let out = query(
        &session,
        "SELECT CAST(_data AS VARCHAR) AS record FROM named",
    )
    .await?;
    assert!(
        texts(&out, "record")
            .contains(&r#"{"TICKER_SYMBOL":"IBM","COMPANY":"IBM Corp","PRICE":3.0}"#.to_string()),
        "{:?}",
        texts(&out, "record")
    );
    // A missing object is a configuration error naming it.
    let v = version(applications, "withref").await?;
    let failed = kind(
        call(
            applications,
            "UpdateApplication",
            json!({"ApplicationName": "withref", "CurrentApplicationVersionId": v, "ApplicationUpdate": {
                "ReferenceDataSourceUpdates": [{"ReferenceId": reference_id,
                    "S3ReferenceDataSourceUpdate": {"FileKeyUpdate": "gone.csv"}}]}}),
        )
        .await,
    );
    let Some((failed, message)) = failed else {
        return Err("a missing reference object was accepted".into());
    };
    assert_eq!(failed, ErrorKind::InvalidApplicationConfiguration);
    assert!(message.contains("gone.csv"), "{message}");
    // …and the application runs on as it was, with its version unchanged.
    let detail = call(
        applications,
        "DescribeApplication",
        json!({"ApplicationName": "withref"}),
    )
    .await?;
    assert_eq!(detail["ApplicationDetail"]["ApplicationStatus"], "RUNNING");
    assert_eq!(detail["ApplicationDetail"]["ApplicationVersionId"], v);
    engine.stream("ticker")?.append(&[tick("AMZN", 4.0)])?;
    session.execute_all("FLUSH").await?;
    let out = query(
        &session,
        "SELECT CAST(_data AS VARCHAR) AS record FROM named",
    )
    .await?;
    assert!(
        texts(&out, "record").contains(
            &r#"{"TICKER_SYMBOL":"AMZN","COMPANY":"Amazon.com","PRICE":4.0}"#.to_string()
        ),
        "{:?}",
        texts(&out, "record")
    );
    session.shutdown().await;
    server.abort();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn input_parallelism_spreads_shards_over_in_app_streams() -> TestResult {
    let dir = tempfile::tempdir()?;
    let clock = ManualClock::new(START_MS);
    let session = open(dir.path(), &clock)?;
    let engine = session.engine().clone();
    engine.create_stream(StreamSpec::raw("ticker", 4), false)?;
    engine.create_stream(StreamSpec::raw("sink", 1), false)?;
    let symbols = [
        "AMZN", "ORCL", "IBM", "MSFT", "NFLX", "META", "AAPL", "INTC",
    ];
    let ticks: Vec<PutRecord> = (0..80)
        .map(|i| tick(symbols[i % symbols.len()], i as f64))
        .collect();
    engine.stream("ticker")?.append(&ticks)?;
    let mut request = application("wide", -1.0, "sink", "JSON");
    request["Inputs"][0]["InputParallelism"] = json!({"Count": 2});
    // Only the input: no code, no outputs.
    if let Some(fields) = request.as_object_mut() {
        fields.remove("ApplicationCode");
        fields.remove("Outputs");
    }
    let applications = apps(&session)?;
    call(applications, "CreateApplication", request).await?;
    start(applications, "wide", "TRIM_HORIZON").await?;
    session.execute_all("FLUSH").await?;
    let count = |rows: Vec<RecordBatch>| rows.iter().map(|b| b.num_rows()).sum::<usize>();
    let first = count(query(&session, r#"SELECT * FROM wide."SOURCE_SQL_STREAM_001""#).await?);
    let second = count(query(&session, r#"SELECT * FROM wide."SOURCE_SQL_STREAM_002""#).await?);
    // Every record in exactly one of the two, each fed by its own shards.
    assert_eq!(first + second, 80, "{first} + {second}");
    assert!(first > 0 && second > 0, "{first} + {second}");
    let detail = call(
        applications,
        "DescribeApplication",
        json!({"ApplicationName": "wide"}),
    )
    .await?;
    assert_eq!(
        detail["ApplicationDetail"]["InputDescriptions"][0]["InAppStreamNames"],
        json!(["SOURCE_SQL_STREAM_001", "SOURCE_SQL_STREAM_002"])
    );
    session.shutdown().await;
    Ok(())
}
