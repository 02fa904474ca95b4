//! `spool stats` and `spool drain`: operator tools that open the spool directly.
//!
//! The spool file is locked by the process that has it open, so these refuse to run while
//! the bridge is running (and cannot corrupt it).

use std::path::Path;
use std::sync::Arc;

use clap::Subcommand;
use tokio::sync::watch;

use crate::metrics::Metrics;
use crate::publish::drain::{self, DrainGauges, DrainSettings, Until};
use crate::publish::Publisher;
use crate::spool::Spool;

#[derive(Debug, Subcommand)]
pub enum SpoolCommand {
    /// Depth, bytes and the oldest entry's age.
    Stats,
    /// Publish everything in the spool to kafka.brokers, then exit.
    Drain,
}

pub fn run(config: &Path, cmd: SpoolCommand) -> anyhow::Result<i32> {
    let settings = super::load(config)?;
    crate::telemetry::init(&settings.log);
    super::runtime()?.block_on(async move {
        let spool = Spool::open(&settings.spool, &settings.dedupe).map_err(anyhow::Error::msg)?;
        match cmd {
            SpoolCommand::Stats => {
                let st = spool.stats();
                let age = spool.oldest_age().await;
                println!(
                    "{}",
                    serde_json::json!({
                        "dir": settings.spool.dir,
                        "depth": st.depth,
                        "bytes": st.bytes,
                        "max_bytes": st.max_bytes,
                        "oldest_age_seconds": age.map(|d| d.as_secs_f64()),
                        "dedupe_entries": st.dedupe_entries,
                    })
                );
                Ok(0)
            }
            SpoolCommand::Drain => {
                let Some(brokers) = settings.kafka.brokers.clone() else {
                    anyhow::bail!("kafka.brokers is not set: draining into the embedded development broker would lose the events");
                };
                let before = spool.stats().depth;
                let publisher = Publisher::new(&settings, &brokers)?;
                let gauges = Arc::new(DrainGauges::default());
                let (_stop, stop_rx) = watch::channel(false);
                let mut drain_settings = DrainSettings::new(settings.delivery.max_in_flight);
                drain_settings.recovery =
                    crate::app::recovery(&settings, &brokers, &drain_settings);
                drain::run(
                    spool.clone(),
                    publisher.clone(),
                    Arc::new(Metrics::new()),
                    drain_settings,
                    gauges.clone(),
                    stop_rx,
                    Until::Empty,
                )
                .await;
                publisher.flush(std::time::Duration::from_secs(10)).await;
                let after = spool.stats().depth;
                spool.close().await;
                let parked = gauges.parked.load(std::sync::atomic::Ordering::Relaxed);
                println!(
                    "{}",
                    serde_json::json!({"before": before, "published": gauges.published.load(std::sync::atomic::Ordering::Relaxed), "dead_lettered": gauges.dead_lettered.load(std::sync::atomic::Ordering::Relaxed), "left": after, "parked": parked})
                );
                Ok(if after == 0 { 0 } else { 1 })
            }
        }
    })
}
