//! The client side of `sluice --connect`: statements run on a Sluice server through Flight SQL
//! and come back as the same [`StatementOutput`] an embedded session gives, so the REPL prints
//! them the same way.

use std::sync::Arc;

use arrow::datatypes::Schema;
use arrow_flight::sql::client::FlightSqlServiceClient;
use datafusion::error::DataFusionError;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use futures::{StreamExt, TryStreamExt};
use sluice_sql::StatementOutput;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use crate::ticket::StatementKind;

/// A connection to a Sluice server.
#[derive(Debug, Clone)]
pub struct RemoteSession {
    client: FlightSqlServiceClient<Channel>,
    url: String,
}

/// How to reach and authenticate to a server.
#[derive(Debug, Clone, Default)]
pub struct ConnectOptions {
    /// Sent as `authorization: Bearer <token>`.
    pub token: Option<String>,
    /// Exchanged for a token by a Basic handshake.
    pub basic: Option<(String, String)>,
    /// PEM of the CA that signed the server's certificate (`grpc+tls://`).
    pub ca_pem: Option<Vec<u8>>,
}

impl RemoteSession {
    /// Connects to `url`: `grpc://host:port` or `grpc+tls://host:port`.
    pub async fn connect(url: &str, options: ConnectOptions) -> Result<Self, String> {
        let (endpoint, tls) = if let Some(rest) = url.strip_prefix("grpc+tls://") {
            (format!("https://{rest}"), true)
        } else if let Some(rest) = url.strip_prefix("grpc://") {
            (format!("http://{rest}"), false)
        } else {
            return Err(format!(
                "cannot connect to '{url}': write grpc://host:port or grpc+tls://host:port"
            ));
        };
        let mut endpoint = Endpoint::from_shared(endpoint)
            .map_err(|e| format!("cannot connect to '{url}': {e}"))?
            .tcp_nodelay(true)
            .initial_stream_window_size(crate::server::STREAM_WINDOW)
            .initial_connection_window_size(crate::server::CONNECTION_WINDOW)
            .max_frame_size(crate::server::MAX_FRAME);
        if tls {
            let mut config = ClientTlsConfig::new();
            if let Some(ca) = &options.ca_pem {
                config = config.ca_certificate(Certificate::from_pem(ca));
            }
            endpoint = endpoint
                .tls_config(config)
                .map_err(|e| format!("TLS for '{url}': {e}"))?;
        }
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| connect_failure(url, &e))?;
        let mut client = FlightSqlServiceClient::new(channel);
        if let Some(token) = options.token {
            client.set_token(token);
        }
        if let Some((user, password)) = options.basic {
            client
                .handshake(&user, &password)
                .await
                .map_err(|e| format!("cannot log in to '{url}': {}", message(e)))?;
        }
        Ok(Self {
            client,
            url: url.to_string(),
        })
    }

    /// Where this session is connected.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Runs one statement on the server. A continuous query's rows keep coming until the
    /// returned stream is dropped, which cancels the query on the server.
    pub async fn execute(&self, sql: &str) -> Result<StatementOutput, String> {
        let mut client = self.client.clone();
        let info = client
            .execute(sql.to_string(), None)
            .await
            .map_err(message)?;
        let kind = StatementKind::decode(&info.app_metadata).unwrap_or(StatementKind::Rows);
        if let StatementKind::Done { note } = kind {
            return Ok(StatementOutput::Done(note));
        }
        let schema = Arc::new(
            info.clone()
                .try_decode_schema()
                .map_err(|e| e.to_string())?,
        );
        let tickets: Vec<_> = info
            .endpoint
            .into_iter()
            .filter_map(|endpoint| endpoint.ticket)
            .collect();
        let url = self.url.clone();
        let failed_url = self.url.clone();
        let batches = futures::stream::iter(tickets)
            .then(move |ticket| {
                let mut client = client.clone();
                async move { client.do_get(ticket).await }
            })
            .map_ok(move |stream| {
                let url = url.clone();
                stream.map_err(move |e| DataFusionError::External(lost(&url, e).into()))
            })
            .map_err(move |e| DataFusionError::External(lost(&failed_url, e).into()))
            .try_flatten();
        let rows = Box::pin(RecordBatchStreamAdapter::new(
            Arc::clone(&schema) as Arc<Schema>,
            batches,
        ));
        Ok(match kind {
            StatementKind::Continuous => StatementOutput::Continuous(rows),
            _ => StatementOutput::Rows(rows),
        })
    }
}

/// Why a connection could not be made, in words that say what to check.
fn connect_failure(url: &str, error: &(dyn std::error::Error + 'static)) -> String {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    let mut innermost = error.to_string();
    while let Some(e) = cause {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            let hint = match io.kind() {
                std::io::ErrorKind::ConnectionRefused => Some("connection refused"),
                std::io::ErrorKind::TimedOut => Some("the connection timed out"),
                std::io::ErrorKind::ConnectionReset => Some("the connection was reset"),
                _ => None,
            };
            if let Some(hint) = hint {
                return format!(
                    "cannot connect to '{url}': {hint}; is `sluice serve` running at that address? (it serves Flight SQL on port 50051 unless started with --flight-port)"
                );
            }
        }
        innermost = e.to_string();
        cause = e.source();
    }
    format!("cannot connect to '{url}': {innermost}")
}

/// A failure while results were coming: the server's own message, or, when the connection
/// itself broke, words that say so.
fn lost(url: &str, error: arrow_flight::error::FlightError) -> String {
    use std::error::Error as _;
    match &error {
        arrow_flight::error::FlightError::Tonic(status) if status.source().is_some() => format!(
            "the connection to '{url}' was lost ({}); is `sluice serve` still running?",
            status.message()
        ),
        _ => message(error),
    }
}

/// The server's own message for a failure, as the embedded REPL would print it.
fn message(error: arrow_flight::error::FlightError) -> String {
    match error {
        arrow_flight::error::FlightError::Tonic(status) => status.message().to_string(),
        other => other.to_string(),
    }
}
