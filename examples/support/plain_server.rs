//! The benchmark's reference servers (bare_hyper, kafka_limit): the same runtime and HTTP/1
//! settings as the bridge, the whole body read (up to 1 MiB), then `handle` says the status.
//! Shared by path (`#[path]`), as examples cannot depend on each other.

use std::convert::Infallible;
use std::future::Future;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

async fn answer<F, Fut>(
    handle: F,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible>
where
    F: Fn(Bytes) -> Fut,
    Fut: Future<Output = u16>,
{
    let status = match Limited::new(req.into_body(), 1024 * 1024).collect().await {
        Ok(body) => handle(body.to_bytes()).await,
        Err(_) => 413,
    };
    let mut r = Response::new(Full::new(Bytes::from_static(b"{\"status\":\"ok\"}\n")));
    *r.status_mut() = http::StatusCode::from_u16(status).unwrap();
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    Ok(r)
}

/// Serves `addr` until the process ends, answering each request with `handle(body)`.
pub async fn serve<F, Fut>(addr: &str, name: &str, handle: F) -> std::io::Result<()>
where
    F: Fn(Bytes) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = u16> + Send + 'static,
{
    let listener = TcpListener::bind(addr).await?;
    eprintln!("{name} on {}", listener.local_addr()?);
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(std::time::Duration::from_secs(10))
        .keep_alive(true);
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let handle = handle.clone();
        let service = service_fn(move |req| answer(handle.clone(), req));
        let conn = builder.serve_connection(TokioIo::new(stream), service);
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
}
