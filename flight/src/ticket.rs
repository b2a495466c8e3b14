//! What travels in tickets and in `FlightInfo.app_metadata`.
//!
//! Plain Arrow Flight clients (`pyarrow.flight`) ask for data with a JSON ticket:
//!
//! - `{"query": "SELECT STREAM …"}` runs any statement; a continuous one streams for as long as
//!   the client reads.
//! - `{"stream": "clicks", "from": "latest"}` subscribes to a stream: every shard's records
//!   from `from` on — `"latest"` (the default: only what arrives from now), `"trim_horizon"`
//!   (everything retained) or an RFC 3339 time such as `"2026-01-01T00:00:00Z"` (records that
//!   arrived at or after it) — as record batches of the stream's columns, endlessly.
//!
//! Flight SQL tickets are protobuf messages and never start with `{`.

use serde::{Deserialize, Serialize};
use sluice_engine::StartPosition;
use tonic::Status;

/// A plain Flight ticket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlightTicket {
    /// A statement to run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// A stream to subscribe to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
    /// Where a subscription starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
}

/// What a plain ticket asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TicketRequest {
    Query(String),
    Subscribe { stream: String, from: StartPosition },
}

impl FlightTicket {
    /// Whether `bytes` look like a plain (JSON) ticket rather than a Flight SQL one.
    pub fn is_plain(bytes: &[u8]) -> bool {
        bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{')
    }

    /// Reads and checks a plain ticket.
    pub fn parse(bytes: &[u8]) -> Result<TicketRequest, Status> {
        let ticket: FlightTicket = serde_json::from_slice(bytes).map_err(|e| {
            Status::invalid_argument(format!(
                "ticket is not valid: {e}; send {{\"query\": \"SQL\"}} or {{\"stream\": \"name\", \"from\": \"latest\"}}"
            ))
        })?;
        match (ticket.query, ticket.stream) {
            (Some(query), None) => {
                if ticket.from.is_some() {
                    return Err(Status::invalid_argument(
                        "ticket: \"from\" goes with \"stream\", not with \"query\"",
                    ));
                }
                Ok(TicketRequest::Query(query))
            }
            (None, Some(stream)) => Ok(TicketRequest::Subscribe {
                stream,
                from: parse_from(ticket.from.as_deref())?,
            }),
            _ => Err(Status::invalid_argument(
                "ticket needs exactly one of \"query\" and \"stream\"",
            )),
        }
    }
}

fn parse_from(from: Option<&str>) -> Result<StartPosition, Status> {
    let Some(from) = from else {
        return Ok(StartPosition::Latest);
    };
    match from.to_ascii_lowercase().as_str() {
        "latest" => Ok(StartPosition::Latest),
        "trim_horizon" => Ok(StartPosition::TrimHorizon),
        _ => chrono::DateTime::parse_from_rfc3339(from)
            .map(|t| StartPosition::AtTimestamp(t.timestamp_millis()))
            .map_err(|e| {
                Status::invalid_argument(format!(
                    "ticket: \"from\" is '{from}', which is not \"latest\", \"trim_horizon\" or an RFC 3339 time ({e})"
                ))
            }),
    }
}

/// What a statement run through Flight SQL turned out to be, in `FlightInfo.app_metadata`, so
/// that `sluice --connect` prints results as the embedded REPL does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum StatementKind {
    /// Bounded rows.
    Rows,
    /// Rows that keep coming.
    Continuous,
    /// No rows; what the statement did.
    Done { note: String },
}

impl StatementKind {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Option<Self> {
        serde_json::from_slice(bytes).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_tickets_ask_for_a_query_or_a_subscription() {
        assert!(FlightTicket::is_plain(br#" {"query": "SELECT 1"}"#));
        assert!(!FlightTicket::is_plain(b"\x0a\x10type.googleapis"));
        assert_eq!(
            FlightTicket::parse(br#"{"query": "SELECT 1"}"#).ok(),
            Some(TicketRequest::Query("SELECT 1".into()))
        );
        assert_eq!(
            FlightTicket::parse(br#"{"stream": "s"}"#).ok(),
            Some(TicketRequest::Subscribe {
                stream: "s".into(),
                from: StartPosition::Latest
            })
        );
        assert_eq!(
            FlightTicket::parse(br#"{"stream": "s", "from": "2026-01-01T00:00:01Z"}"#).ok(),
            Some(TicketRequest::Subscribe {
                stream: "s".into(),
                from: StartPosition::AtTimestamp(1_767_225_601_000)
            })
        );
        let bad = FlightTicket::parse(br#"{"stream": "s", "from": "yesterday"}"#)
            .err()
            .map(|s| s.message().to_string())
            .unwrap_or_default();
        assert!(bad.contains("'yesterday'"), "{bad}");
        assert!(FlightTicket::parse(br#"{"query": "x", "stream": "s"}"#).is_err());
        assert!(FlightTicket::parse(br#"{"querry": "x"}"#).is_err());
    }
}
