//! The benchmark's Kafka-side limit: a hyper server that hands each request body to the
//! bridge's idempotent producer (same settings as `ack = "received"`) and answers 200 at once.
//! No signature, no parsing, no routing, no spool: what the bridge could do if its own request
//! path cost nothing. `cargo run --release --example kafka_limit -- 127.0.0.1:8091 BROKERS`

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use eduzz_kafka_bridge::delivery::{AckMode, DeliverySettings};
use eduzz_kafka_bridge::kafka::Connection;
use http_body_util::{BodyExt, Full, Limited};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio::net::TcpListener;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

async fn answer(
    producer: Arc<FutureProducer>,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let status = match Limited::new(req.into_body(), 1024 * 1024).collect().await {
        Ok(body) => {
            let body = body.to_bytes();
            let record = FutureRecord::<[u8], [u8]>::to("bench.kafka-limit").payload(&body);
            match producer.send_result(record) {
                Ok(_delivery) => 200,
                Err(_) => 503,
            }
        }
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

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(addr), Some(brokers)) = (args.next(), args.next()) else {
        anyhow::bail!("usage: kafka_limit ADDR BROKERS");
    };
    let delivery = DeliverySettings {
        ack: AckMode::Received,
        ..DeliverySettings::default()
    };
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(async move {
            let producer: Arc<FutureProducer> = Arc::new(
                Connection::to(&brokers)
                    .producer_config(delivery.producer_tuning())
                    .create()?,
            );
            let listener = TcpListener::bind(&addr).await?;
            eprintln!("kafka limit on {}", listener.local_addr()?);
            let mut builder = http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .keep_alive(true);
            loop {
                let (stream, _) = listener.accept().await?;
                let _ = stream.set_nodelay(true);
                let producer = producer.clone();
                let service = service_fn(move |req| answer(producer.clone(), req));
                let conn = builder.serve_connection(TokioIo::new(stream), service);
                tokio::spawn(async move {
                    let _ = conn.await;
                });
            }
        })
}
