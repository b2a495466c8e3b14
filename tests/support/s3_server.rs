//! A real S3 protocol server (`s3s-fs`) on 127.0.0.1, in the test's process, serving a folder
//! (one sub-folder per bucket) with one access key. Shared by the tests that need S3-compatible
//! storage (`#[path = …] mod s3_server;`), so none reaches beyond the loopback address.

use std::net::SocketAddr;
use std::path::Path;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use s3s::auth::SimpleAuth;
use s3s::service::S3ServiceBuilder;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// Serves `root` over S3 on `addr` (port 0 for any) with `key`/`secret` until the task is
/// aborted; the task and the address it listens on.
pub async fn serve(
    root: &Path,
    addr: SocketAddr,
    (key, secret): (&str, &str),
) -> Result<(JoinHandle<()>, SocketAddr), Box<dyn std::error::Error>> {
    let fs = s3s_fs::FileSystem::new(root).map_err(|e| format!("s3s-fs: {e:?}"))?;
    let mut builder = S3ServiceBuilder::new(fs);
    builder.set_auth(SimpleAuth::from_single(key, secret));
    let service = builder.build();
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let task = tokio::spawn(async move {
        let http = ConnBuilder::new(TokioExecutor::new());
        // Dropped with this task when the server is stopped, which ends every connection.
        let mut connections = tokio::task::JoinSet::new();
        loop {
            let Ok((socket, _)) = listener.accept().await else {
                continue;
            };
            let conn = http
                .serve_connection(TokioIo::new(socket), service.clone())
                .into_owned();
            connections.spawn(async move {
                let _ = conn.await;
            });
        }
    });
    Ok((task, local))
}
