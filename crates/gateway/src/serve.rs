//! Accepting HTTP connections. Each connection speaks HTTP/1.1 with a deadline for every
//! request's line and headers (`gateway.header_read_timeout_ms`, which also closes idle
//! keep-alive connections): `axum::serve` gives hyper no timer, so a client that opened a
//! connection and dribbled its headers, or sent nothing, held it forever. HTTP/2 is not
//! offered: its cleartext preface sniffing waits for bytes with no deadline at all.

use std::time::Duration;

use axum::Router;
use axum::serve::Listener;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// Serves `app` on `listener` until `shutdown`; then stops accepting and waits for the open
/// connections to finish their requests. Dropping the future closes them all at once (the
/// connections live in a `JoinSet` owned here).
pub(crate) async fn serve(
    mut listener: TcpListener,
    app: Router,
    header_read_timeout: Duration,
    shutdown: CancellationToken,
) {
    let mut connections = JoinSet::new();
    loop {
        let (tcp, _) = tokio::select! {
            () = shutdown.cancelled() => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            // axum's accept retries (with a pause) on errors such as too many open files.
            accepted = Listener::accept(&mut listener) => accepted,
        };
        // No Nagle: a streamed answer is many small writes, and each would otherwise wait
        // for the client's (delayed) ACK of the one before, up to 40 ms.
        if let Err(e) = tcp.set_nodelay(true) {
            warn!(error = %e, "could not set TCP_NODELAY on a connection");
        }
        let service = TowerToHyperService::new(app.clone());
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let mut builder = http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(header_read_timeout);
            let conn = builder.serve_connection(TokioIo::new(tcp), service);
            tokio::pin!(conn);
            let served = tokio::select! {
                served = conn.as_mut() => served,
                () = shutdown.cancelled() => {
                    // Finish the request in flight, then close.
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = served {
                debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
}
