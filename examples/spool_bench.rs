//! Spool benchmark: how fast events go into the spool (group commit, with and without dedupe)
//! and how fast the drain empties a full spool into Kafka.
//!
//! `cargo run --release --example spool_bench -- BROKERS [EVENTS] [BODY_BYTES] [CONCURRENCY]`
//! Prints one JSON object. BROKERS should be a broker in another process
//! (`eduzz-kafka-bridge dev-broker`), so the bridge's CPU is not shared with it unfairly.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use eduzz_kafka_bridge::dedupe::DedupeSettings;
use eduzz_kafka_bridge::delivery::drain::{Drain, DrainGauges, DrainSettings, DrainStop, Until};
use eduzz_kafka_bridge::delivery::{DeadLetters, DeliverySettings};
use eduzz_kafka_bridge::event::{unix_ms, Message};
use eduzz_kafka_bridge::kafka::{Cluster, Publisher};
use eduzz_kafka_bridge::metrics::Metrics;
use eduzz_kafka_bridge::spool::{Appended, Spool, SpoolSettings};

/// The bridge's allocator, so the figures are the product's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn message(i: usize, body: &Bytes) -> Message {
    Message {
        topic: "bench.drain".into(),
        key: Bytes::from(format!("key-{}", i % 1000)),
        source: "eduzz".into(),
        slug: "nutror.lesson_started".into(),
        event_id: format!("bench-{i}"),
        received_at_ms: unix_ms(SystemTime::now()),
        content_type: "application/json".into(),
        body: body.clone(),
        cloudevent: None,
        archive: None,
        trace: None,
    }
}

/// The drain's settings; `DRAIN_TOPIC_SHARE` overrides the per-topic share of the window
/// (every event here goes to one topic, so its share, two while it flows, is what limits
/// the drain).
fn drain_settings(max_in_flight: usize) -> DrainSettings {
    let mut s = DrainSettings::new(max_in_flight);
    if let Some(share) = std::env::var("DRAIN_TOPIC_SHARE")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        s.max_in_flight_per_topic = share;
    }
    s
}

/// Appends `events` messages from `concurrency` tasks; returns appends per second.
async fn fill(spool: &Spool, events: usize, concurrency: usize, body: &Bytes) -> f64 {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..concurrency {
        let (spool, body) = (spool.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = t;
            while i < events {
                let r = spool.append(&message(i, &body)).await.expect("append");
                assert!(matches!(r, Appended::Stored(_)));
                i += concurrency;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    events as f64 / started.elapsed().as_secs_f64()
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let brokers = args
        .next()
        .expect("usage: spool_bench BROKERS [EVENTS] [BODY_BYTES] [CONCURRENCY]");
    let events: usize = args
        .next()
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(200_000);
    let body_bytes: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(1024);
    let concurrency: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(256);
    let body = Bytes::from(vec![b'x'; body_bytes]);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let dir = tempfile::tempdir()?;
        let spool_settings = |name: &str| SpoolSettings {
            dir: dir.path().join(name),
            max_bytes: 64 * 1024 * 1024 * 1024,
            ..SpoolSettings::default()
        };
        let no_dedupe = DedupeSettings {
            enabled: false,
            ..Default::default()
        };

        // Appends, with the default dedupe and without.
        let with = Spool::open(&spool_settings("dedupe"), &DedupeSettings::default())?;
        let append_dedupe = fill(&with, events / 4, concurrency, &body).await;
        with.close().await;
        let spool = Spool::open(&spool_settings("main"), &no_dedupe)?;
        let append_plain = fill(&spool, events, concurrency, &body).await;

        // Drain: the whole spool to Kafka.
        let delivery = DeliverySettings::default();
        let mut tuning = delivery.producer_tuning();
        // `DRAIN_LINGER_MS` overrides the producer's linger (what the drain's rate depends on
        // with a window of messages in flight: each round waits for its batch).
        if let Some(ms) = std::env::var("DRAIN_LINGER_MS")
            .ok()
            .and_then(|v| v.parse().ok())
        {
            tuning.linger = std::time::Duration::from_millis(ms);
        }
        let publisher = Publisher::new(&Cluster::to(&brokers), tuning)?;
        let metrics = Arc::new(Metrics::new());
        let dead_letters = DeadLetters::new(publisher.clone(), None, metrics.clone());
        let gauges = Arc::new(DrainGauges::default());
        let started = Instant::now();
        Drain::new(
            spool.clone(),
            publisher.clone(),
            eduzz_kafka_bridge::topics::Topics::unprovisioned(),
            dead_letters,
            metrics,
            drain_settings(delivery.max_in_flight),
            gauges.clone(),
        )
        .run(DrainStop::default(), Until::Empty)
        .await;
        let drained = gauges.published.load(std::sync::atomic::Ordering::Relaxed);
        let drain_secs = started.elapsed().as_secs_f64();
        assert_eq!(drained as usize, events, "every event published");
        assert_eq!(spool.stats().depth, 0, "spool empty");
        spool.close().await;
        println!(
            "{}",
            serde_json::json!({
                "events": events,
                "body_bytes": body_bytes,
                "concurrency": concurrency,
                "append_per_sec": append_plain,
                "append_per_sec_with_dedupe": append_dedupe,
                "drain_per_sec": events as f64 / drain_secs,
                "drain_seconds": drain_secs,
            })
        );
        Ok(())
    })
}
