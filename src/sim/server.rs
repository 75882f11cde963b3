//! The simulator's own accept loop (hyper-util), so a fault can close one connection
//! *without writing a response* — which `axum::serve` cannot do — and so shutdown can
//! drain connections gracefully.
//!
//! Each connection gets a [`ConnDrop`] in every request's extensions. Cancelling it makes
//! the connection task drop the connection (socket closed, nothing written); the client
//! sees "connection closed before message completed", i.e. a transport error.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

/// How long shutdown waits for open connections to finish.
const DRAIN_GRACE: Duration = Duration::from_secs(5);

/// A handle that closes the current connection without a response.
#[derive(Debug, Clone)]
pub struct ConnDrop(CancellationToken);

impl ConnDrop {
    /// Closes the connection; never completes (the request future is dropped with it).
    pub async fn close_without_response(&self) -> Infallible {
        self.0.cancel();
        std::future::pending().await
    }
}

/// Serves `router` on `listener` until `shutdown`, then drains open connections.
pub async fn serve(listener: TcpListener, router: Router, shutdown: CancellationToken) {
    let tracker = TaskTracker::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    tracker.spawn(connection(stream, peer, router.clone(), shutdown.clone()));
                }
                Err(e) => {
                    // E.g. EMFILE: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
    drop(listener);
    tracker.close();
    if tokio::time::timeout(DRAIN_GRACE, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("simulator connections still open after the grace period; closing them");
    }
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    router: Router,
    shutdown: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    let kill = CancellationToken::new();
    let handle = ConnDrop(kill.clone());
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(handle.clone());
        router.clone().oneshot(req)
    });
    let builder = auto::Builder::new(TokioExecutor::new());
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let mut draining = false;
    loop {
        tokio::select! {
            res = conn.as_mut() => {
                if let Err(e) = res {
                    tracing::debug!(%peer, error = %e, "connection ended with error");
                }
                return;
            }
            _ = kill.cancelled() => {
                tracing::debug!(%peer, "connection dropped by fault injection");
                return; // `conn` (and the socket) are dropped here, nothing is written.
            }
            _ = shutdown.cancelled(), if !draining => {
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}
