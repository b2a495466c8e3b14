//! The Sluice server: one [`SluiceSession`] served over Arrow Flight / Flight SQL and, on a
//! second port, the AWS JSON APIs — Kinesis Data Streams, and beside it Firehose, the Glue
//! catalog and kinesisanalytics ([`firehose`], [`analytics`]) — all behind the session's one
//! [`Authorizer`]. `sluice serve` is this crate with command-line flags; a Rust program can run
//! the same server in-process.
//!
//! [`Server::bind`] takes both ports (so a port in use fails before anything is served and the
//! addresses are known, port 0 included); [`Server::serve`] runs both until the shutdown future
//! completes, then lets the calls in flight finish, stops pumps and delivery streams, and seals
//! every shard's tail so the next start has no write-ahead log to replay.
//!
//! # Example
//!
//! ```no_run
//! # async fn run(session: sluice_sql::SluiceSession) -> Result<(), sluice_server::ServerError> {
//! use sluice_server::{Server, ServerConfig};
//!
//! let server = Server::bind(session, ServerConfig::default()).await?;
//! println!("Flight SQL on {}, Kinesis on {}", server.flight_addr(), server.kinesis_addr());
//! server.serve(sluice_server::shutdown_signal()).await
//! # }
//! ```

pub mod analytics;
pub mod cluster;
pub mod firehose;

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use sluice_auth::Authorizer;
use sluice_flight::{BoundServer, ServerOptions};
use sluice_kinesis::throttle::ShardLimits;
use sluice_kinesis::{JsonService, KinesisOptions, KinesisServer};
use sluice_sql::SluiceSession;

/// Where and how to serve.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The address both ports listen on (127.0.0.1 by default: this machine only).
    pub bind: IpAddr,
    /// Arrow Flight / Flight SQL's port (0: a free one).
    pub flight_port: u16,
    /// The Kinesis-compatible HTTP API's port (0: a free one).
    pub kinesis_port: u16,
    /// Who may call, on every port.
    pub auth: Authorizer,
    /// PEM certificate chain and private key: Flight over TLS.
    pub tls: Option<(Vec<u8>, Vec<u8>)>,
    /// Enforce Kinesis's per-shard throughput limits.
    pub kinesis_shard_limits: bool,
    /// Run as one node of a cluster (`--cluster`).
    pub cluster: Option<cluster::ClusterConfig>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
            flight_port: 50051,
            kinesis_port: 4567,
            auth: Authorizer::open(),
            tls: None,
            kinesis_shard_limits: false,
            cluster: None,
        }
    }
}

/// Why the server could not start, or failed while serving.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Setup(String),
    #[error("the {api} failed: {message}")]
    Serving { api: &'static str, message: String },
}

/// Both ports bound, not yet serving.
pub struct Server {
    session: SluiceSession,
    flight: BoundServer,
    kinesis: KinesisServer,
    flight_addr: SocketAddr,
    kinesis_addr: SocketAddr,
    secure: bool,
    cluster: Option<cluster::ClusterMember>,
}

impl Server {
    /// Binds Flight and the AWS APIs for `session`.
    pub async fn bind(session: SluiceSession, config: ServerConfig) -> Result<Self, ServerError> {
        let secure = config.tls.is_some();
        let flight = BoundServer::bind(
            session.clone(),
            ServerOptions {
                addr: SocketAddr::new(config.bind, config.flight_port),
                auth: config.auth.clone(),
                tls: config.tls,
            },
        )
        .await
        .map_err(|e| ServerError::Setup(e.to_string()))?;
        let flight_addr = flight
            .local_addr()
            .map_err(|e| ServerError::Setup(e.to_string()))?;
        let firehose_api = Arc::new(
            sluice_sql::firehose::Firehose::open(session.clone())
                .map_err(|e| ServerError::Setup(e.to_string()))?,
        );
        let mut services: Vec<Arc<dyn JsonService>> = vec![
            Arc::new(firehose::FirehoseApi(Arc::clone(&firehose_api))),
            Arc::new(firehose::GlueApi(firehose_api)),
        ];
        if let Some(apps) = session.applications() {
            services.push(Arc::new(analytics::AnalyticsApi(Arc::clone(apps))));
        }
        let placement = match &config.cluster {
            Some(cluster) => Some(
                cluster::ClusterMember::placement(cluster, session.engine().clone())
                    .map_err(ServerError::Setup)?,
            ),
            None => None,
        };
        if let Some(placement) = &placement {
            cluster::ClusterMember::attach(placement, &session);
        }
        let kinesis_options = KinesisOptions {
            auth: config.auth,
            shard_limits: config.kinesis_shard_limits.then(ShardLimits::kinesis),
            services,
            placement: placement
                .clone()
                .map(|p| p as Arc<dyn sluice_kinesis::cluster::ShardPlacement>),
        };
        let addr = SocketAddr::new(config.bind, config.kinesis_port);
        let kinesis = KinesisServer::bind(session.engine().clone(), addr, kinesis_options)
            .await
            .map_err(|source| ServerError::Bind { addr, source })?;
        let kinesis_addr = kinesis
            .local_addr()
            .map_err(|e| ServerError::Setup(e.to_string()))?;
        // The node joins once both ports are known, so others can reach it at once.
        let cluster = match (config.cluster, placement) {
            (Some(cluster), Some(placement)) => {
                let info = sluice_cluster::NodeInfo {
                    kinesis: format!("{}:{}", cluster.advertise, kinesis_addr.port()),
                    flight: format!("{}:{}", cluster.advertise, flight_addr.port()),
                };
                Some(cluster::ClusterMember::start(&cluster, placement, info))
            }
            _ => None,
        };
        Ok(Self {
            session,
            flight,
            kinesis,
            flight_addr,
            kinesis_addr,
            secure,
            cluster,
        })
    }

    /// Where Flight listens.
    pub fn flight_addr(&self) -> SocketAddr {
        self.flight_addr
    }

    /// Where the Kinesis API (and the AWS APIs beside it) listens.
    pub fn kinesis_addr(&self) -> SocketAddr {
        self.kinesis_addr
    }

    /// `grpc+tls` or `grpc`: the scheme a Flight client connects with.
    pub fn flight_scheme(&self) -> &'static str {
        if self.secure { "grpc+tls" } else { "grpc" }
    }

    /// Serves until `shutdown` completes; then finishes the calls in flight, stops pumps and
    /// delivery streams, and seals every shard's tail.
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError> {
        // One signal stops both servers.
        let (stop, stopped) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            shutdown.await;
            let _ = stop.send(true);
        });
        let wait = |mut stopped: tokio::sync::watch::Receiver<bool>| async move {
            let _ = stopped.wait_for(|s| *s).await;
        };
        // A cluster node hands its shards off as soon as it is told to stop, while it still
        // answers the requests forwarded to it.
        let cluster = self.cluster;
        let leaving = {
            let stopped = stopped.clone();
            tokio::spawn(async move {
                if let Some(cluster) = cluster {
                    wait(stopped).await;
                    cluster.leave().await;
                }
            })
        };
        let kinesis_task = tokio::spawn(self.kinesis.serve(wait(stopped.clone())));
        let flight = self
            .flight
            .serve(wait(stopped))
            .await
            .map_err(|e| ServerError::Serving {
                api: "Flight server",
                message: e.to_string(),
            });
        let kinesis = match kinesis_task.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(e) => Err(e.to_string()),
        }
        .map_err(|message| ServerError::Serving {
            api: "Kinesis API",
            message,
        });
        let _ = leaving.await;
        // Pumps stop and delivery streams settle, then every shard's tail is sealed, so the next
        // start has no write-ahead log to replay.
        let session = self.session;
        session.shutdown().await;
        let engine = session.engine().clone();
        drop(session);
        let flushed = tokio::task::spawn_blocking(move || engine.flush())
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()))
            .map_err(|message| ServerError::Serving {
                api: "flush at shutdown",
                message,
            });
        flight.and(kinesis).and(flushed)
    }
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
