//! The benchmark's Kafka-side limit: a hyper server that hands each request body to the
//! bridge's idempotent producer (same settings as `ack = "received"`) and answers 200 at once.
//! No signature, no parsing, no routing, no spool: what the bridge could do if its own request
//! path cost nothing. `cargo run --release --example kafka_limit -- 127.0.0.1:8091 BROKERS`

#[path = "support/plain_server.rs"]
mod plain_server;

use std::sync::Arc;

use eduzz_kafka_bridge::delivery::{AckMode, DeliverySettings};
use eduzz_kafka_bridge::kafka::Cluster;
use rdkafka::producer::{FutureProducer, FutureRecord};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(addr), Some(brokers)) = (args.next(), args.next()) else {
        anyhow::bail!("usage: kafka_limit ADDR BROKERS");
    };
    let delivery = DeliverySettings {
        ack: AckMode::Received,
        ..DeliverySettings::default()
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let producer: Arc<FutureProducer> = Arc::new(runtime.block_on(async {
        Cluster::to(&brokers)
            .producer_config(delivery.producer_tuning())
            .create()
    })?);
    runtime.block_on(plain_server::serve(&addr, "kafka limit", move |body| {
        let producer = producer.clone();
        async move {
            let record = FutureRecord::<[u8], [u8]>::to("bench.kafka-limit").payload(&body);
            // The delivery report is not awaited: the sender has its answer, as in `received`.
            match producer.send_result(record) {
                Ok(_delivery) => 200,
                Err(_) => 503,
            }
        }
    }))?;
    Ok(())
}
