//! `ferrokinesis-loopback [PORT]`: ferrokinesis on 127.0.0.1:PORT (0: a free port), streams
//! created, deleted and updated at once (as its own benchmark instructions start it), prints
//! `listening on 127.0.0.1:N`, serves until SIGINT/SIGTERM.

use ferrokinesis::store::StoreOptions;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let port: u16 = std::env::args()
        .nth(1)
        .map_or(Ok(0), |p| p.parse())
        .map_err(|e| std::io::Error::other(format!("PORT: {e}")))?;
    let options = StoreOptions {
        create_stream_ms: 0,
        delete_stream_ms: 0,
        update_stream_ms: 0,
        shard_limit: 1000,
        ..StoreOptions::default()
    };
    let (app, _store) = ferrokinesis::create_app(options);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    println!("listening on {}", listener.local_addr()?);
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("a SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    };
    ferrokinesis::serve_plain_http(listener, app, shutdown).await
}
