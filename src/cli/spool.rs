//! `spool stats` and `spool drain`: operator tools that open the spool directly.
//!
//! The spool file is locked by the process that has it open, so these refuse to run while
//! the bridge is running (and cannot corrupt it).

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use clap::Subcommand;

use crate::config::Config;
use crate::delivery::drain::{Drain, DrainGauges, DrainStop, Until};
use crate::delivery::DeadLetters;
use crate::kafka::Publisher;
use crate::metrics::Metrics;
use crate::spool::Spool;

#[derive(Debug, Subcommand)]
pub enum SpoolCommand {
    /// Depth, bytes and the oldest entry's age.
    Stats,
    /// Publish everything in the spool to kafka.brokers, then exit.
    Drain,
}

pub(super) fn run(config: &Path, cmd: SpoolCommand) -> anyhow::Result<i32> {
    let config = super::load(config)?;
    crate::telemetry::init(&config.log);
    super::runtime()?.block_on(async move {
        let spool = Spool::open(&config.spool, &config.dedupe)?;
        match cmd {
            SpoolCommand::Stats => stats(&config, &spool).await,
            SpoolCommand::Drain => drain(&config, spool).await,
        }
    })
}

async fn stats(config: &Config, spool: &Spool) -> anyhow::Result<i32> {
    let st = spool.stats();
    let age = spool.oldest_age().await;
    say!(
        "{}",
        serde_json::json!({
            "dir": config.spool.dir,
            "depth": st.depth,
            "bytes": st.bytes,
            "max_bytes": st.max_bytes,
            "oldest_age_seconds": age.map(|d| d.as_secs_f64()),
            "dedupe_entries": st.dedupe_entries,
        })
    );
    Ok(0)
}

async fn drain(config: &Config, spool: Spool) -> anyhow::Result<i32> {
    let Some(brokers) = config.kafka.brokers.clone() else {
        anyhow::bail!("kafka.brokers is not set: draining into the embedded development broker would lose the events");
    };
    let before = spool.stats().depth;
    let connection = config.kafka.connect(&brokers);
    let publisher = Publisher::new(&connection, config.delivery.producer_tuning())?;
    let metrics = Arc::new(Metrics::new());
    let dead_letters = DeadLetters::new(
        publisher.clone(),
        config.delivery.dead_letter_topic.clone(),
        metrics.clone(),
    );
    let gauges = Arc::new(DrainGauges::default());
    let settings = crate::app::drain_settings(config, &connection);
    Drain::new(
        spool.clone(),
        publisher.clone(),
        dead_letters,
        metrics,
        settings,
        gauges.clone(),
    )
    .run(DrainStop::default(), Until::Empty)
    .await;
    publisher.flush(Duration::from_secs(10)).await;
    let after = spool.stats().depth;
    spool.close().await;
    let count = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    say!(
        "{}",
        serde_json::json!({"before": before, "published": count(&gauges.published), "dead_lettered": count(&gauges.dead_lettered), "left": after, "parked": count(&gauges.parked)})
    );
    Ok(if after == 0 { 0 } else { 1 })
}
