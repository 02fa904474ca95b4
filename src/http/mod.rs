//! The HTTP side: listeners, connections, and the two request handlers.
//!
//! [`serve`] runs one listener with a connection cap, hyper's header-read timeout (which also
//! closes idle keep-alive connections), a request-head size limit, optional TLS, and a graceful
//! stop: when told to stop it accepts nothing more and gives open connections the grace period
//! to finish the request they are on. A connection over the cap gets an immediate 503 and is
//! closed, so a flood of idle sockets shows up as refusals instead of a silent backlog.

pub(crate) mod admin;
mod answer;
pub mod client_ip;
mod settings;
pub mod tls;
pub mod webhook;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::Request;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

pub use answer::Answer;
pub use settings::{AdminSettings, Server, ServerSettings, TlsSettings};

/// Whether `path` belongs to the admin endpoints (no source may use it).
pub(crate) fn is_admin_path(path: &str) -> bool {
    admin::ADMIN_PATHS.contains(&path)
}

/// Connection settings of one listener.
#[derive(Clone)]
pub(crate) struct ListenerSettings {
    pub name: &'static str,
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub max_header_bytes: usize,
    pub grace: Duration,
    pub tls: Option<TlsAcceptor>,
}

/// What a connection over the cap is told before it is closed.
static OVER_CAPACITY: LazyLock<Vec<u8>> = LazyLock::new(|| {
    let body = "{\"error\":\"busy\",\"message\":\"too many open connections\"}\n";
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
});

/// How long a refused connection is read from (and discarded) after its answer.
const LINGER: Duration = Duration::from_secs(1);

/// Answers a connection over the cap with a 503 it can read, then closes it gently: the write
/// side first, then what the client still sends is read and dropped for at most [`LINGER`].
/// Closing with unread input would make the kernel reset the connection, and most clients
/// then report the reset instead of the 503 and its Retry-After.
async fn refuse_connection(mut stream: tokio::net::TcpStream) {
    let answered = tokio::time::timeout(LINGER, stream.write_all(&OVER_CAPACITY)).await;
    if !matches!(answered, Ok(Ok(()))) {
        return;
    }
    let _ = stream.shutdown().await;
    let mut sink = [0u8; 4096];
    let _ = tokio::time::timeout(LINGER, async {
        while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
}

/// Serves `handler` on `listener` until `stop` is cancelled, then drains open connections for
/// at most the grace period.
pub(crate) async fn serve<H, F>(
    listener: TcpListener,
    settings: ListenerSettings,
    handler: H,
    stop: CancellationToken,
) where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Answer> + Send + 'static,
{
    let graceful = GracefulShutdown::new();
    let permits = Arc::new(Semaphore::new(settings.max_connections));
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_timeout)
        .keep_alive(true)
        .max_buf_size(settings.max_header_bytes.max(8192));
    let builder = Arc::new(builder);

    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: pause instead of spinning.
                    tracing::warn!(listener = settings.name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.cancelled() => break,
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tokio::spawn(refuse_connection(stream));
            tracing::debug!(listener = settings.name, %peer, "connection refused: too many open connections");
            continue;
        };
        let _ = stream.set_nodelay(true);
        // Watched from now on, so a stop waits for it (handshake included).
        let watcher = graceful.watcher();
        match settings.tls.clone() {
            None => spawn_connection(stream, peer, permit, &builder, watcher, handler.clone()),
            Some(acceptor) => {
                let (builder, handler) = (builder.clone(), handler.clone());
                let timeout = settings.header_timeout;
                tokio::spawn(async move {
                    match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            spawn_connection(tls, peer, permit, &builder, watcher, handler)
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        }
    }
    drop(listener);
    if tokio::time::timeout(settings.grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            listener = settings.name,
            "grace period over; closing the remaining connections"
        );
    }
}

fn spawn_connection<I, H, F>(
    io: I,
    peer: SocketAddr,
    permit: OwnedSemaphorePermit,
    builder: &http1::Builder,
    watcher: Watcher,
    handler: H,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Answer> + Send + 'static,
{
    let service = service_fn(move |req| {
        let handler = handler.clone();
        async move { Ok::<_, Infallible>(handler(req, peer).await) }
    });
    let conn = watcher.watch(builder.serve_connection(TokioIo::new(io), service));
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(%peer, error = %e, "connection ended with an error");
        }
        drop(permit);
    });
}
