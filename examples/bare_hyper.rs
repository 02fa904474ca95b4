//! The benchmark's limit: a bare hyper server that reads the request body and answers 200,
//! nothing else. Same runtime, same HTTP/1 settings as the bridge; no parsing, no signature,
//! no routing, no Kafka. `cargo run --release --example bare_hyper -- 127.0.0.1:8090`

#[path = "support/plain_server.rs"]
mod plain_server;

fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8090".into());
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(plain_server::serve(&addr, "bare hyper", |_body| async {
            200
        }))
}
