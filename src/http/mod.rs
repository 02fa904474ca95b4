//! The HTTP side: listeners, connections, and the two request handlers.
//!
//! [`serve`] runs one listener with a connection cap (see [`connections`] for which connection
//! makes room when it is reached), hyper's header-read timeout (which also closes idle
//! keep-alive connections), a request-head size limit, optional TLS, and a graceful stop: when
//! told to stop it accepts nothing more and gives open connections the grace period to finish
//! the request they are on. A connection refused at the cap gets an immediate 503; every
//! refused or cut-off connection is counted by reason, and logged at most once per few seconds
//! per reason with the count of those held back.

pub(crate) mod admin;
mod answer;
pub mod client_ip;
pub(crate) mod connections;
pub(crate) mod failing;
mod outcome;
mod parked;
mod parse_errors;
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
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::metrics::Metrics;
use crate::telemetry::LogThrottle;
use connections::{Connection, Connections, Evicted};

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
    pub max_idle_per_client: usize,
    pub header_timeout: Duration,
    pub max_header_bytes: usize,
    pub grace: Duration,
    pub tls: Option<TlsAcceptor>,
    pub metrics: Arc<Metrics>,
}

/// Counts and logs (throttled) what a listener did to connections on its own.
#[derive(Clone)]
struct ConnectionCloseLog {
    listener: &'static str,
    metrics: Arc<Metrics>,
    throttle: Arc<LogThrottle>,
}

impl ConnectionCloseLog {
    fn count(&self, reason: &'static str, peer: SocketAddr) {
        self.metrics.connection_closed(self.listener, reason);
        if let Some(held_back) = self.throttle.admit(reason) {
            tracing::warn!(
                listener = self.listener,
                reason,
                %peer,
                similar_since_last_line = held_back,
                "connection refused or closed"
            );
        }
    }

    fn evicted(&self, e: Evicted, peer: SocketAddr) {
        if e.at_capacity {
            self.count("evicted_at_capacity", peer);
        }
        if e.client_limit {
            self.count("evicted_client_limit", peer);
        }
    }

    /// What hyper ended a connection with, when it answered on its own (400, 431) or timed out.
    fn ended(&self, e: &hyper::Error, peer: SocketAddr) {
        let reason = if e.is_parse_too_large() {
            "request_head_too_large"
        } else if e.is_parse() {
            "bad_request_head"
        } else if e.is_timeout() {
            "header_timeout"
        } else {
            tracing::debug!(%peer, error = %e, "connection ended with an error");
            return;
        };
        self.count(reason, peer);
    }
}

/// How often each kind of refused connection is logged, at most.
const LOG_EVERY: Duration = Duration::from_secs(10);

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
    let tasks = TaskTracker::new();
    let connections = Connections::new(settings.max_connections, settings.max_idle_per_client);
    let closures = ConnectionCloseLog {
        listener: settings.name,
        metrics: settings.metrics.clone(),
        throttle: Arc::new(LogThrottle::new(LOG_EVERY)),
    };
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_timeout)
        .keep_alive(true)
        .max_buf_size(settings.max_header_bytes.max(8192));
    let builder = Arc::new(builder);

    loop {
        tokio::select! {
            _ = connections.wait_for_room() => {}
            _ = stop.cancelled() => break,
        }
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => (stream, canonical(peer)),
                Err(e) => {
                    // Out of file descriptors and the like: pause instead of spinning.
                    tracing::warn!(listener = settings.name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.cancelled() => break,
        };
        let conn = match connections.open(peer.ip()) {
            Ok((conn, evicted)) => {
                closures.evicted(evicted, peer);
                conn
            }
            Err(connections::Full) => {
                closures.count("over_capacity", peer);
                tokio::spawn(refuse_connection(stream));
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let opened = Opened {
            conn,
            peer,
            // Tracked from now on, so a stop waits for it (handshake included).
            tasks: tasks.clone(),
            stop: stop.clone(),
            closures: closures.clone(),
        };
        match settings.tls.clone() {
            None => opened.serve(stream, &builder, handler.clone()),
            Some(acceptor) => {
                let timeout = settings.header_timeout;
                opened.serve_tls(stream, acceptor, timeout, builder.clone(), handler.clone());
            }
        }
    }
    drop(listener);
    tasks.close();
    if tokio::time::timeout(settings.grace, tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            listener = settings.name,
            "grace period over; closing the remaining connections"
        );
    }
}

/// The peer as every later check sees it: an IPv4 client of a dual-stack `[::]` listener
/// arrives as `::ffff:a.b.c.d`, which no IPv4 network in `allow_from` or `trusted_proxies`
/// would contain, and which would count apart from the same client on an IPv4 listener.
fn canonical(peer: SocketAddr) -> SocketAddr {
    SocketAddr::new(peer.ip().to_canonical(), peer.port())
}

/// How long a connection closed to make room may take to finish the answer it is writing.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// A connection let in, about to be served.
struct Opened {
    conn: Connection,
    peer: SocketAddr,
    /// The listener's connection tasks, which a stop waits for.
    tasks: TaskTracker,
    /// The listener is stopping.
    stop: CancellationToken,
    closures: ConnectionCloseLog,
}

impl Opened {
    /// Like [`Opened::serve`], after a TLS handshake that must end within `timeout` (and
    /// ends at once if the connection is closed to make room).
    fn serve_tls<H, F>(
        self,
        stream: tokio::net::TcpStream,
        acceptor: TlsAcceptor,
        timeout: Duration,
        builder: Arc<http1::Builder>,
        handler: H,
    ) where
        H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = Answer> + Send + 'static,
    {
        let tasks = self.tasks.clone();
        tasks.spawn(async move {
            let handshake = tokio::time::timeout(timeout, acceptor.accept(stream));
            let shaken = tokio::select! {
                shaken = handshake => shaken,
                _ = self.conn.closed().cancelled() => return,
                _ = self.stop.cancelled() => return,
            };
            match shaken {
                Ok(Ok(tls)) => self.serve(tls, &builder, handler),
                Ok(Err(e)) => {
                    tracing::debug!(peer = %self.peer, error = %e, "TLS handshake failed");
                    self.closures.count("tls_handshake_failed", self.peer);
                }
                Err(_) => self.closures.count("tls_handshake_failed", self.peer),
            }
        });
    }

    /// Serves HTTP/1 on `io` in a task of its own, until the client leaves, the connection
    /// ends, or it is closed to make room (see [`connections`]).
    fn serve<I, H, F>(self, io: I, builder: &http1::Builder, handler: H)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = Answer> + Send + 'static,
    {
        let Opened {
            conn,
            peer,
            tasks,
            stop,
            closures,
        } = self;
        let state = conn.state();
        let service = service_fn(move |mut req: Request<Incoming>| {
            let (handler, state) = (handler.clone(), state.clone());
            state.receiving();
            req.extensions_mut().insert(state.clone());
            async move {
                let answer = handler(req, peer).await;
                state.idle();
                Ok::<_, Infallible>(answer)
            }
        });
        let io = TokioIo::new(parse_errors::JsonParseErrors::new(io));
        let served = builder.serve_connection(io, service);
        tasks.spawn(async move {
            let mut served = std::pin::pin!(served);
            let ended = tokio::select! {
                ended = served.as_mut() => ended,
                _ = stop.cancelled() => {
                    // The request in progress is finished, then the connection closes.
                    served.as_mut().graceful_shutdown();
                    served.await
                }
                _ = conn.closed().cancelled() => {
                    if conn.closed_mid_request() {
                        // Closed to make room mid-request: nothing was taken, nothing to finish.
                        Ok(())
                    } else {
                        // Closed to make room while idle: an answer being written is finished.
                        served.as_mut().graceful_shutdown();
                        tokio::time::timeout(CLOSE_WAIT, served).await.unwrap_or(Ok(()))
                    }
                }
            };
            if let Err(e) = ended {
                closures.ended(&e, peer);
            }
            drop(conn);
        });
    }
}
