//! The benchmark's limit: a bare hyper server that reads the request body and answers 200,
//! nothing else. Same runtime, same HTTP/1 settings as the bridge; no parsing, no signature,
//! no routing, no Kafka. `cargo run --release --example bare_hyper -- 127.0.0.1:8090`

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

async fn answer(req: Request<hyper::body::Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let status = match Limited::new(req.into_body(), 1024 * 1024).collect().await {
        Ok(_) => 200,
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

fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8090".into());
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(async move {
            let listener = TcpListener::bind(&addr).await?;
            eprintln!("bare hyper on {}", listener.local_addr()?);
            let mut builder = http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .keep_alive(true);
            loop {
                let (stream, _) = listener.accept().await?;
                let _ = stream.set_nodelay(true);
                let conn = builder.serve_connection(TokioIo::new(stream), service_fn(answer));
                tokio::spawn(async move {
                    let _ = conn.await;
                });
            }
        })
}
