//! The Kinesis API as one node of a cluster, against a placement whose answers the test sets:
//! records for shards owned here go through its `append`; a PutRecords whose shards are partly
//! moving lands the records of the shards owned here and fails only the others (so a producer
//! retrying the failed entries duplicates nothing); a single PutRecord for a moving shard is
//! answered InternalFailure; resharding is refused, saying why.

use std::sync::Arc;

use axum::body::Body;
use axum::http::Request;
use http_body_util::BodyExt;
use parking_lot::Mutex;
use serde_json::{Value, json};
use sluice_engine::{Engine, EngineOptions, NumberedRecord, PutResult, RecordRef, Stream};
use sluice_kinesis::cluster::{Placement, ShardPlacement};
use sluice_kinesis::consumers::Consumer;
use sluice_kinesis::{KinesisOptions, router};
use tower::ServiceExt;

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// Owns the shards listed; the others are moving. Appends straight to the engine, counting.
#[derive(Debug, Default)]
struct FixedPlacement {
    owned: Vec<u32>,
    appended: Mutex<Vec<u32>>,
    registered: Mutex<Vec<String>>,
    /// The consumers the cluster keeps.
    consumers: Mutex<Vec<Consumer>>,
}

impl ShardPlacement for FixedPlacement {
    fn place(&self, _stream: &str, shard: u32) -> Placement {
        if self.owned.contains(&shard) {
            Placement::Local
        } else {
            Placement::Moving
        }
    }

    fn append(
        &self,
        stream: &Stream,
        parts: &[(u32, Vec<RecordRef<'_>>)],
    ) -> Vec<Result<Vec<PutResult>, String>> {
        parts
            .iter()
            .map(|(shard, records)| {
                self.appended
                    .lock()
                    .extend(std::iter::repeat_n(*shard, records.len()));
                // Numbered here, as a shard's owner numbers its log.
                let next = stream.shard(*shard).ok_or("no such shard")?.next_seq();
                let numbered: Vec<NumberedRecord<'_>> = records
                    .iter()
                    .enumerate()
                    .map(|(i, r)| NumberedRecord {
                        seq: next + i as u64,
                        arrival_ms: 1_733_500_000_000,
                        partition_key: r.partition_key,
                        data: r.data,
                    })
                    .collect();
                stream
                    .append_numbered(*shard, &numbered)
                    .map_err(|e| e.to_string())?;
                Ok(numbered
                    .iter()
                    .map(|n| PutResult {
                        shard_index: *shard,
                        seq: n.seq,
                    })
                    .collect())
            })
            .collect()
    }

    fn stream_created(&self, stream: &Stream) -> Result<(), String> {
        stream.set_shared(true);
        self.registered.lock().push(stream.name().to_string());
        Ok(())
    }

    fn stream_deleted(&self, _name: &str) -> Result<(), String> {
        Ok(())
    }

    fn consumers(&self, _stream: &Stream) -> Result<Vec<Consumer>, String> {
        Ok(self.consumers.lock().clone())
    }

    fn add_consumer(&self, _stream: &Stream, consumer: &Consumer) -> Result<bool, String> {
        let mut consumers = self.consumers.lock();
        if consumers.iter().any(|c| c.name == consumer.name) {
            return Ok(false);
        }
        consumers.push(consumer.clone());
        Ok(true)
    }

    fn remove_consumer(&self, _stream: &Stream, consumer: &Consumer) -> Result<(), String> {
        self.consumers.lock().retain(|c| c.name != consumer.name);
        Ok(())
    }
}

/// A Kinesis API call of `action` with `body`, as an SDK sends it (this server is open).
fn request(action: &str, body: Value) -> Result<Request<Body>, axum::http::Error> {
    Request::builder()
        .method("POST")
        .uri("/")
        .header("x-amz-target", format!("Kinesis_20131202.{action}"))
        .header("content-type", "application/x-amz-json-1.1")
        .header(
            "authorization",
            "AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/kinesis/aws4_request, SignedHeaders=host, Signature=0",
        )
        .header("x-amz-date", "20260101T000000Z")
        .body(Body::from(body.to_string()))
}

async fn call(
    app: &axum::Router,
    action: &str,
    body: Value,
) -> Result<(u16, Value), Box<dyn std::error::Error>> {
    let response = app.clone().oneshot(request(action, body)?).await?;
    let status = response.status().as_u16();
    let bytes = response.into_body().collect().await?.to_bytes();
    let value = if bytes.is_empty() {
        json!({})
    } else {
        serde_json::from_slice(&bytes)?
    };
    Ok((status, value))
}

/// The explicit hash key of shard `shard` of 2.
fn hash_key(shard: u32) -> String {
    ((u128::MAX / 2 + 1) * shard as u128).to_string()
}

/// A node's Kinesis API on a fresh engine, with a cluster that gives it `owned` shards.
struct Node {
    _dir: tempfile::TempDir,
    engine: Engine,
    placement: Arc<FixedPlacement>,
    app: axum::Router,
}

fn node(owned: Vec<u32>) -> Result<Node, Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let engine = Engine::open(EngineOptions::new(dir.path()).with_background(false))?;
    let placement = Arc::new(FixedPlacement {
        owned,
        ..FixedPlacement::default()
    });
    let app = router(
        engine.clone(),
        KinesisOptions {
            placement: Some(placement.clone() as Arc<dyn ShardPlacement>),
            ..KinesisOptions::default()
        },
    );
    Ok(Node {
        _dir: dir,
        engine,
        placement,
        app,
    })
}

/// A node owning shard 0 of stream `s` (2 shards), created through it.
async fn node_with_stream() -> Result<Node, Box<dyn std::error::Error>> {
    let node = node(vec![0])?;
    let (status, _) = call(
        &node.app,
        "CreateStream",
        json!({"StreamName": "s", "ShardCount": 2}),
    )
    .await?;
    assert_eq!(status, 200);
    Ok(node)
}

#[tokio::test]
async fn records_of_moving_shards_fail_alone_and_the_rest_land_through_the_placement() -> TestResult
{
    let Node {
        _dir,
        engine,
        placement,
        app,
    } = node_with_stream().await?;
    assert_eq!(*placement.registered.lock(), ["s"]);

    let entries: Vec<Value> = (0..4)
        .map(|i| json!({"PartitionKey": "k", "ExplicitHashKey": hash_key(i % 2), "Data": "eA=="}))
        .collect();
    let (status, answer) = call(
        &app,
        "PutRecords",
        json!({"StreamName": "s", "Records": entries}),
    )
    .await?;
    assert_eq!(status, 200);
    assert_eq!(answer["FailedRecordCount"], 2, "{answer}");
    let records = answer["Records"].as_array().ok_or("records")?;
    for (i, record) in records.iter().enumerate() {
        if i % 2 == 0 {
            assert_eq!(record["ShardId"], "shardId-000000000000", "{record}");
        } else {
            assert_eq!(record["ErrorCode"], "InternalFailure", "{record}");
            let message = record["ErrorMessage"].as_str().unwrap_or_default();
            assert!(
                message.contains("moving between nodes; retry shortly"),
                "{message}"
            );
        }
    }
    // Only shard 0's records went through the placement, and only they are in the stream.
    assert_eq!(*placement.appended.lock(), [0, 0]);
    assert_eq!(engine.stream("s")?.shard(1).map(|s| s.next_seq()), Some(1));
    // Nothing else may number a shared stream's records: they belong to the owners' logs.
    let refused = engine
        .stream("s")?
        .append(&[sluice_engine::PutRecord::new("k", b"x".to_vec())]);
    assert!(
        matches!(&refused, Err(sluice_engine::Error::SharedStream(name)) if name == "s"),
        "{refused:?}"
    );
    assert_eq!(engine.stream("s")?.shard(0).map(|s| s.next_seq()), Some(3));

    let (status, answer) = call(
        &app,
        "PutRecord",
        json!({"StreamName": "s", "PartitionKey": "k", "ExplicitHashKey": hash_key(1), "Data": "eA=="}),
    )
    .await?;
    assert_eq!(
        (status, answer["__type"].as_str()),
        (500, Some("InternalFailure")),
        "{answer}"
    );

    let (status, answer) = call(
        &app,
        "SplitShard",
        json!({"StreamName": "s", "ShardToSplit": "shardId-000000000000", "NewStartingHashKey": "1"}),
    )
    .await?;
    assert_eq!(status, 400, "{answer}");
    let message = answer["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("not supported when Sluice runs as a cluster"),
        "{message}"
    );
    Ok(())
}

#[tokio::test]
async fn a_stream_the_node_keeps_for_itself_is_answered_here() -> TestResult {
    let Node {
        _dir,
        engine,
        placement,
        app,
    } = node(vec![])?;
    // Created on this node alone (as SQL creates streams), not through the cluster.
    engine.create_stream(sluice_engine::StreamSpec::raw("local", 2), false)?;
    for action in ["PutRecord", "PutRecords"] {
        let body = match action {
            "PutRecord" => {
                json!({"StreamName": "local", "PartitionKey": "k", "ExplicitHashKey": hash_key(1), "Data": "eA=="})
            }
            _ => {
                json!({"StreamName": "local", "Records": [{"PartitionKey": "k", "ExplicitHashKey": hash_key(1), "Data": "eA=="}]})
            }
        };
        let (status, answer) = call(&app, action, body).await?;
        assert_eq!(status, 200, "{action}: {answer}");
        assert_eq!(
            answer
                .get("FailedRecordCount")
                .and_then(Value::as_u64)
                .unwrap_or(0),
            0
        );
    }
    // Neither placed nor refused as moving: this node owns no shard of the cluster.
    assert!(placement.appended.lock().is_empty());
    assert_eq!(
        engine.stream("local")?.shard(1).map(|s| s.next_seq()),
        Some(3)
    );
    Ok(())
}

#[tokio::test]
async fn a_shared_streams_consumers_are_kept_by_the_cluster_and_any_node_serves_subscriptions()
-> TestResult {
    let Node {
        _dir,
        engine: _,
        placement,
        app,
    } = node_with_stream().await?;
    let stream_arn = "arn:aws:kinesis:us-east-1:000000000000:stream/s";
    let (status, answer) = call(
        &app,
        "RegisterStreamConsumer",
        json!({"StreamARN": stream_arn, "ConsumerName": "app"}),
    )
    .await?;
    assert_eq!(status, 200, "{answer}");
    let arn = answer["Consumer"]["ConsumerARN"]
        .as_str()
        .ok_or("an ARN")?
        .to_string();
    // Kept by the cluster, not in this node's folder; the same name again is refused.
    assert_eq!(placement.consumers.lock().len(), 1);
    let (status, answer) = call(
        &app,
        "RegisterStreamConsumer",
        json!({"StreamARN": stream_arn, "ConsumerName": "app"}),
    )
    .await?;
    assert_eq!(
        (status, answer["__type"].as_str()),
        (400, Some("ResourceInUseException")),
        "{answer}"
    );
    let (_, summary) = call(&app, "DescribeStreamSummary", json!({"StreamName": "s"})).await?;
    assert_eq!(summary["StreamDescriptionSummary"]["ConsumerCount"], 1);

    // A subscription to a shard this node does not own is served here, from its copy.
    tokio::time::sleep(std::time::Duration::from_millis(600)).await; // ACTIVE
    let request = request(
        "SubscribeToShard",
        json!({"ConsumerARN": arn, "ShardId": "shardId-000000000001", "StartingPosition": {"Type": "TRIM_HORIZON"}}),
    )?;
    // The event stream stays open; its answer's status is enough.
    let response = app.clone().oneshot(request).await?;
    assert_eq!(response.status().as_u16(), 200);
    drop(response);

    let (status, _) = call(
        &app,
        "DeregisterStreamConsumer",
        json!({"ConsumerARN": arn}),
    )
    .await?;
    assert_eq!(status, 200);
    assert!(placement.consumers.lock().is_empty());
    Ok(())
}
