//! Sending records: Kinesis `PutRecords` or Firehose `PutRecordBatch` over HTTP, JSON 1.1,
//! signed with SigV4 (so the same agent works against AWS), retried with exponential backoff
//! until every record is acknowledged — records a response reports as failed (throttling) are
//! sent again, the others are not.

use std::time::Duration;

use base64::Engine as _;
use md5::{Digest, Md5};
use serde_json::Value;

use crate::config::{Destination, PartitionKeyOption};

const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// A failed attempt.
#[derive(Debug)]
pub struct SendError {
    pub message: String,
}

/// The client of one destination.
pub struct Sender {
    client: reqwest::Client,
    url: String,
    host: String,
    destination: Destination,
    partition_key: PartitionKeyOption,
    region: String,
    credentials: (String, String),
}

impl Sender {
    /// A client for `destination` at `endpoint`.
    pub fn new(
        endpoint: &str,
        destination: Destination,
        partition_key: PartitionKeyOption,
        region: &str,
        credentials: (String, String),
    ) -> Result<Self, SendError> {
        let url = reqwest::Url::parse(endpoint).map_err(|e| SendError {
            message: format!("endpoint '{endpoint}' is not a URL: {e}"),
        })?;
        let host = match (url.host_str(), url.port()) {
            (Some(host), Some(port)) => format!("{host}:{port}"),
            (Some(host), None) => host.to_string(),
            _ => {
                return Err(SendError {
                    message: format!("endpoint '{endpoint}' has no host"),
                });
            }
        };
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| SendError {
                message: e.to_string(),
            })?;
        Ok(Self {
            client,
            url: url.to_string(),
            host,
            destination,
            partition_key,
            region: region.to_string(),
            credentials,
        })
    }

    /// Sends `records` until each one is acknowledged; `on_retry` hears about every attempt
    /// that left records unacknowledged.
    pub async fn send_all(&self, records: &[&[u8]], mut on_retry: impl FnMut(&str)) {
        let mut left: Vec<usize> = (0..records.len()).collect();
        let mut backoff = FIRST_BACKOFF;
        while !left.is_empty() {
            let batch: Vec<&[u8]> = left.iter().map(|&i| records[i]).collect();
            match self.send(&batch).await {
                Ok(failed) if failed.is_empty() => return,
                Ok(failed) => {
                    on_retry(&format!(
                        "{} of {} records were not accepted ({}); sending them again",
                        failed.len(),
                        batch.len(),
                        failed[0].1
                    ));
                    left = failed.iter().map(|(i, _)| left[*i]).collect();
                }
                Err(e) => on_retry(&e.message),
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// One attempt: the records that failed (index in `records`, error code).
    async fn send(&self, records: &[&[u8]]) -> Result<Vec<(usize, String)>, SendError> {
        let (target, service, body) = self.body(records);
        let headers = sluice_kinesis::sigv4::sign_json_post(
            &self.host,
            &target,
            &body,
            (&self.credentials.0, &self.credentials.1),
            &self.region,
            service,
            "application/x-amz-json-1.1",
            now_seconds(),
        );
        let mut request = self
            .client
            .post(&self.url)
            .header("content-type", "application/x-amz-json-1.1")
            .header("x-amz-target", &target);
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let response = request.body(body).send().await.map_err(|e| SendError {
            message: format!("{target} to {} failed: {e}", self.url),
        })?;
        let status = response.status();
        let text = response.text().await.map_err(|e| SendError {
            message: format!("{target}: reading the answer failed: {e}"),
        })?;
        let answer: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if !status.is_success() {
            let kind = answer
                .get("__type")
                .and_then(Value::as_str)
                .unwrap_or("error");
            let message = answer
                .get("message")
                .or_else(|| answer.get("Message"))
                .and_then(Value::as_str)
                .unwrap_or(&text);
            return Err(SendError {
                message: format!("{target}: HTTP {status} {kind}: {message}"),
            });
        }
        let results = answer
            .get("Records")
            .or_else(|| answer.get("RequestResponses"))
            .and_then(Value::as_array)
            .ok_or_else(|| SendError {
                message: format!("{target}: the answer has no per-record results: {text}"),
            })?;
        Ok(results
            .iter()
            .enumerate()
            .filter_map(|(i, r)| {
                r.get("ErrorCode")
                    .and_then(Value::as_str)
                    .map(|code| (i, code.to_string()))
            })
            .collect())
    }

    /// The action, the signing service and the JSON body for `records`.
    fn body(&self, records: &[&[u8]]) -> (String, &'static str, Vec<u8>) {
        let base64 = base64::engine::general_purpose::STANDARD;
        let mut body = Vec::with_capacity(records.iter().map(|r| r.len() * 4 / 3 + 64).sum());
        let name = |name: &str| Value::String(name.to_string()).to_string();
        let (target, service) = match &self.destination {
            Destination::Kinesis(stream) => {
                body.extend_from_slice(
                    format!("{{\"StreamName\":{},\"Records\":[", name(stream)).as_bytes(),
                );
                for (i, record) in records.iter().enumerate() {
                    if i > 0 {
                        body.push(b',');
                    }
                    let key = match self.partition_key {
                        PartitionKeyOption::Random => uuid::Uuid::new_v4().simple().to_string(),
                        PartitionKeyOption::Deterministic => Md5::digest(record)
                            .iter()
                            .map(|b| format!("{b:02x}"))
                            .collect(),
                    };
                    body.extend_from_slice(b"{\"PartitionKey\":\"");
                    body.extend_from_slice(key.as_bytes());
                    body.extend_from_slice(b"\",\"Data\":\"");
                    body.extend_from_slice(base64.encode(record).as_bytes());
                    body.extend_from_slice(b"\"}");
                }
                ("Kinesis_20131202.PutRecords", "kinesis")
            }
            Destination::Firehose(stream) => {
                body.extend_from_slice(
                    format!("{{\"DeliveryStreamName\":{},\"Records\":[", name(stream)).as_bytes(),
                );
                for (i, record) in records.iter().enumerate() {
                    if i > 0 {
                        body.push(b',');
                    }
                    body.extend_from_slice(b"{\"Data\":\"");
                    body.extend_from_slice(base64.encode(record).as_bytes());
                    body.extend_from_slice(b"\"}");
                }
                ("Firehose_20150804.PutRecordBatch", "firehose")
            }
        };
        body.extend_from_slice(b"]}");
        (target.to_string(), service, body)
    }
}

fn now_seconds() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}
