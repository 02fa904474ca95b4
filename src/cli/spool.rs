//! `spool stats`, `spool verify`, `spool drain` and `spool salvage`: operator tools that open the spool directly.
//!
//! The spool file is locked by the process that has it open, so these refuse to run while
//! the bridge is running (and cannot corrupt it). `stats` only reads, and leaves the file as it
//! found it (see [`crate::spool::inspect`]).

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use clap::Subcommand;

use crate::archive::Archive;
use crate::config::Config;
use crate::delivery::drain::{Drain, DrainGauges, DrainStop, Until};
use crate::delivery::DeadLetters;
use crate::kafka::Publisher;
use crate::metrics::Metrics;
use crate::spool::Spool;

#[derive(Debug, Subcommand)]
pub enum SpoolCommand {
    /// Depth, bytes and the oldest entry's age; reads every entry back to verify the file,
    /// and changes nothing. Exits 1 when the file is damaged.
    Stats,
    /// Reads every entry back and checks it: the file's format, each entry that does not
    /// read (where and why), and the quarantine (damaged entries the bridge moved aside, with
    /// their bytes). Changes nothing. Exits 1 when the file or an entry in it is damaged.
    Verify,
    /// Publish everything in the spool to kafka.brokers, then exit.
    Drain,
    /// Put the events a damaged spool file still holds back into the spool (those Kafka does
    /// not have yet), to be published by the next start or `spool drain`. The bridge does this
    /// by itself for files it moved aside (spool.redb.damaged-*).
    Salvage {
        /// The damaged file.
        file: PathBuf,
    },
}

pub(super) fn run(config: &Path, cmd: SpoolCommand) -> anyhow::Result<i32> {
    let config = super::load(config)?;
    crate::telemetry::init(&config.log);
    super::runtime()?.block_on(async move {
        match cmd {
            SpoolCommand::Stats => stats(&config),
            SpoolCommand::Verify => verify(&config),
            SpoolCommand::Drain => {
                drain(&config, Spool::open(&config.spool, &config.dedupe)?).await
            }
            SpoolCommand::Salvage { file } => salvage(&config, &file).await,
        }
    })
}

fn stats(config: &Config) -> anyhow::Result<i32> {
    let found = crate::spool::inspect(&config.spool.dir)?;
    let age = found.oldest_received_ms.map(|ms| {
        let now = crate::event::unix_ms(std::time::SystemTime::now());
        now.saturating_sub(ms) as f64 / 1000.0
    });
    say!(
        "{}",
        serde_json::json!({
            "dir": config.spool.dir,
            "depth": found.depth,
            "bytes": found.bytes,
            "max_bytes": config.spool.max_bytes,
            "oldest_age_seconds": age,
            "dedupe_entries": found.dedupe_entries,
            "in_log": found.in_log,
            "verified": found.verified,
            "undecodable": found.undecodable,
            "quarantined": found.quarantined,
            "format": found.format,
            "needed_recovery": found.needed_recovery,
            "damage": found.damage,
            "unsalvaged": found.unsalvaged,
        })
    );
    Ok(if found.damage.is_some() { 1 } else { 0 })
}

fn verify(config: &Config) -> anyhow::Result<i32> {
    let found = crate::spool::inspect(&config.spool.dir)?;
    let sound = found.damage.is_none() && found.undecodable == 0;
    say!(
        "{}",
        serde_json::json!({
            "file": found.file,
            "format": found.format,
            "sound": sound,
            "depth": found.depth,
            "in_log": found.in_log,
            "verified": found.verified,
            "needed_recovery": found.needed_recovery,
            "damage": found.damage,
            "undecodable": found.undecodable,
            "undecodable_entries": found.undecodable_entries,
            "quarantined": found.quarantined,
            "quarantine": found.quarantine,
            "unsalvaged": found.unsalvaged,
        })
    );
    Ok(if sound { 0 } else { 1 })
}

async fn salvage(config: &Config, file: &Path) -> anyhow::Result<i32> {
    let spool = Spool::open(&config.spool, &config.dedupe)?;
    let recovery = match &config.kafka.brokers {
        Some(brokers) if config.delivery.recovery_check => {
            let connection = config.kafka.connect(brokers);
            crate::app::drain_settings(config, &connection).recovery
        }
        _ => None,
    };
    let stop = tokio_util::sync::CancellationToken::new();
    let report =
        crate::delivery::salvage::salvage_file(&spool, file, recovery.as_ref(), &stop).await;
    spool.close().await;
    let report = report?;
    let in_spool_dir = file.parent() == Some(config.spool.dir.as_path());
    if in_spool_dir
        && crate::spool::unsalvaged(&config.spool.dir)
            .iter()
            .any(|f| f == file)
    {
        crate::spool::mark_salvaged(file)?;
    }
    say!(
        "{}",
        serde_json::json!({
            "file": file,
            "checked_on_kafka": recovery.is_some(),
            "report": report,
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
    // Topics are not provisioned here: the ones spooled events go to were made by `serve`.
    let topics = crate::topics::Topics::unprovisioned();
    let archive = Archive::of(config.archive.as_ref(), &publisher, &topics, &metrics);
    Drain::new(
        spool.clone(),
        publisher.clone(),
        topics,
        dead_letters,
        metrics,
        settings,
        gauges.clone(),
    )
    .with_archive(archive)
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
