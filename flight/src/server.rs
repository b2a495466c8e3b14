//! The gRPC server: Flight SQL ([`SqlService`]) behind one [`FlightService`] that checks
//! credentials on every call and answers plain Flight tickets (JSON) itself.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use arrow_flight::flight_service_server::{FlightService, FlightServiceServer};
use arrow_flight::{
    Action, ActionType, Criteria, Empty, FlightData, FlightDescriptor, FlightInfo,
    HandshakeRequest, HandshakeResponse, PollInfo, PutResult, SchemaResult, Ticket,
};
use futures::{Stream, TryStreamExt};
use sluice_auth::Authorizer;
use sluice_sql::SluiceSession;
use tokio::net::TcpListener;
use tonic::metadata::MetadataValue;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Identity, Server, ServerTlsConfig};
use tonic::{Request, Response, Status, Streaming};

use crate::results::{ResultMessage, ResultMessages};
use crate::sql_service::SqlService;
use crate::wire::FlightRouter;

/// HTTP/2 flow-control windows, per call and per connection.
pub const STREAM_WINDOW: u32 = 8 * 1024 * 1024;
pub const CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;
/// The largest HTTP/2 frame each side accepts: with the 16 KiB default, a 1 MiB record batch
/// crosses as 64 frames, each with its own header, bookkeeping and wake-up.
pub const MAX_FRAME: u32 = 1024 * 1024;

/// How long a shutdown waits for open calls to finish.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// The largest message accepted or sent (a `DoPut` batch, a result batch).
pub(crate) const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// How to serve.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Where to listen; 127.0.0.1:50051 by default.
    pub addr: SocketAddr,
    /// Who may call: the server's one [`Authorizer`], shared with its other surfaces.
    pub auth: Authorizer,
    /// PEM certificate chain and private key: serve TLS.
    pub tls: Option<(Vec<u8>, Vec<u8>)>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 50051)),
            auth: Authorizer::open(),
            tls: None,
        }
    }
}

/// The Flight service: credentials, plain tickets, then Flight SQL.
#[derive(Debug, Clone)]
pub struct SluiceFlight {
    sql: Arc<SqlService>,
    auth: Arc<Authorizer>,
}

impl SluiceFlight {
    pub fn new(session: SluiceSession, auth: Authorizer) -> Result<Self, Status> {
        Ok(Self {
            sql: Arc::new(SqlService::new(session)?),
            auth: Arc::new(auth),
        })
    }

    /// Every call's credentials, checked by the server's [`Authorizer`].
    fn check<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let header = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        self.auth
            .check_header(header)
            .map_err(|denied| Status::unauthenticated(denied.to_string()))
    }

    /// What a `DoGet` answers with, as messages whose bodies [`crate::wire`] sends without
    /// joining them ([`FlightService::do_get`] joins them).
    pub async fn result_messages(
        &self,
        request: Request<Ticket>,
    ) -> Result<Response<ResultMessages>, Status> {
        self.check(&request)?;
        if let Some(messages) = self.sql.result_messages(&request.get_ref().ticket).await? {
            return Ok(Response::new(messages));
        }
        let response = FlightService::do_get(self.sql.as_ref(), request).await?;
        Ok(response.map(|data| Box::pin(data.map_ok(ResultMessage::from)) as ResultMessages))
    }

    /// A tonic service for this Flight service, with Sluice's message limits.
    pub fn into_server(self) -> FlightServiceServer<Self> {
        FlightServiceServer::new(self)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }
}

#[tonic::async_trait]
impl FlightService for SluiceFlight {
    type HandshakeStream = BoxStream<HandshakeResponse>;
    type ListFlightsStream = BoxStream<FlightInfo>;
    type DoGetStream = BoxStream<FlightData>;
    type DoPutStream = BoxStream<PutResult>;
    type DoExchangeStream = BoxStream<FlightData>;
    type DoActionStream = BoxStream<arrow_flight::Result>;
    type ListActionsStream = BoxStream<ActionType>;

    async fn handshake(
        &self,
        request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<Self::HandshakeStream>, Status> {
        self.check(&request)?;
        let token = self.auth.session_token().unwrap_or_default().to_string();
        let reply = HandshakeResponse {
            protocol_version: 0,
            payload: token.clone().into_bytes().into(),
        };
        let mut response: Response<Self::HandshakeStream> =
            Response::new(Box::pin(futures::stream::iter([Ok(reply)])));
        if !token.is_empty() {
            let value = MetadataValue::try_from(format!("Bearer {token}"))
                .map_err(|e| Status::internal(e.to_string()))?;
            response.metadata_mut().insert("authorization", value);
        }
        Ok(response)
    }

    async fn list_flights(
        &self,
        request: Request<Criteria>,
    ) -> Result<Response<Self::ListFlightsStream>, Status> {
        self.check(&request)?;
        FlightService::list_flights(self.sql.as_ref(), request).await
    }

    async fn get_flight_info(
        &self,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.check(&request)?;
        FlightService::get_flight_info(self.sql.as_ref(), request).await
    }

    async fn poll_flight_info(
        &self,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<PollInfo>, Status> {
        self.check(&request)?;
        FlightService::poll_flight_info(self.sql.as_ref(), request).await
    }

    async fn get_schema(
        &self,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<SchemaResult>, Status> {
        self.check(&request)?;
        FlightService::get_schema(self.sql.as_ref(), request).await
    }

    async fn do_get(
        &self,
        request: Request<Ticket>,
    ) -> Result<Response<Self::DoGetStream>, Status> {
        // One dispatch for both paths; here the messages' bodies are joined.
        let response = self.result_messages(request).await?;
        Ok(response.map(|messages| {
            Box::pin(messages.map_ok(ResultMessage::into_flight_data)) as Self::DoGetStream
        }))
    }

    async fn do_put(
        &self,
        request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoPutStream>, Status> {
        self.check(&request)?;
        FlightService::do_put(self.sql.as_ref(), request).await
    }

    async fn do_exchange(
        &self,
        request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoExchangeStream>, Status> {
        self.check(&request)?;
        FlightService::do_exchange(self.sql.as_ref(), request).await
    }

    async fn do_action(
        &self,
        request: Request<Action>,
    ) -> Result<Response<Self::DoActionStream>, Status> {
        self.check(&request)?;
        FlightService::do_action(self.sql.as_ref(), request).await
    }

    async fn list_actions(
        &self,
        request: Request<Empty>,
    ) -> Result<Response<Self::ListActionsStream>, Status> {
        self.check(&request)?;
        FlightService::list_actions(self.sql.as_ref(), request).await
    }
}

/// What went wrong starting the server.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("TLS: {0}")]
    Tls(String),
    #[error("{0}")]
    Setup(String),
    #[error("the Flight server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// A bound server, not yet serving: its address is known (port 0 picks a free one).
pub struct BoundServer {
    listener: TcpListener,
    service: SluiceFlight,
    tls: Option<ServerTlsConfig>,
}

impl BoundServer {
    /// Binds `options.addr`.
    pub async fn bind(session: SluiceSession, options: ServerOptions) -> Result<Self, ServeError> {
        let listener =
            TcpListener::bind(options.addr)
                .await
                .map_err(|source| ServeError::Bind {
                    addr: options.addr,
                    source,
                })?;
        let tls = options
            .tls
            .map(|(cert, key)| ServerTlsConfig::new().identity(Identity::from_pem(cert, key)));
        let service = SluiceFlight::new(session, options.auth)
            .map_err(|e| ServeError::Setup(e.message().to_string()))?;
        Ok(Self {
            listener,
            service,
            tls,
        })
    }

    /// The address listened on.
    pub fn local_addr(&self) -> Result<SocketAddr, ServeError> {
        self.listener
            .local_addr()
            .map_err(|e| ServeError::Setup(e.to_string()))
    }

    /// Serves until `shutdown` completes, then stops taking calls and waits for those running
    /// (a subscriber's endless `DoGet` is ended by the shutdown).
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), ServeError> {
        // Wide flow-control windows: with HTTP/2's 64 KiB default, a large DoPut or DoGet
        // waits for a window update every 64 KiB.
        let mut builder = Server::builder()
            .initial_stream_window_size(Some(STREAM_WINDOW))
            .initial_connection_window_size(Some(CONNECTION_WINDOW))
            .max_frame_size(Some(MAX_FRAME));
        if let Some(tls) = self.tls {
            builder = builder
                .tls_config(tls)
                .map_err(|e| ServeError::Tls(e.to_string()))?;
        }
        let incoming = TcpIncoming::from(self.listener).with_nodelay(Some(true));
        let sql = Arc::clone(&self.service.sql);
        let (stopping, stop_requested) = tokio::sync::oneshot::channel::<()>();
        let shutdown = async move {
            shutdown.await;
            // Endless results end, so the graceful stop does not wait on them forever.
            sql.close();
            let _ = stopping.send(());
        };
        let serving = builder
            .add_service(FlightRouter::new(self.service))
            .serve_with_incoming_shutdown(incoming, shutdown);
        tokio::pin!(serving);
        // A client that stopped reading keeps its call open (its data waits in flow control):
        // after a grace period the server stops without it.
        let grace = async {
            if stop_requested.await.is_ok() {
                tokio::time::sleep(SHUTDOWN_GRACE).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            served = &mut serving => served?,
            () = grace => log::warn!(
                "stopping with calls still open {} s after shutdown began (clients not reading)",
                SHUTDOWN_GRACE.as_secs()
            ),
        }
        Ok(())
    }
}
