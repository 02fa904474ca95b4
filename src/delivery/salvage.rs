//! Salvaging a damaged spool file: its events back into the live spool, unless Kafka has them.
//!
//! [`crate::spool::salvage`] reads what the moved file still holds; here each chunk of it is
//! looked up on Kafka as the start-up recovery check does (an entry may have been published
//! before the damage, its delete lost), and the rest is appended to the live spool, from where
//! the drain publishes it like any other event. The live spool's dedupe drops what it already
//! holds, so salvaging a file twice (a stop in the middle) adds nothing twice.
//!
//! Salvaged events go to the end of the spool: behind events taken since the damage, so the
//! order of one key's events across the damage is not kept.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::recover::{self, Recovery};
use crate::metrics::Metrics;
use crate::spool::salvage::{self, SalvageError, Scanned};
use crate::spool::{Appended, Entry, Spool, SpoolError};

/// Entries looked up on Kafka, then appended, at a time.
const CHUNK: usize = 4096;

/// What salvaging one file did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct SalvageReport {
    #[serde(flatten)]
    pub scanned: Scanned,
    /// Appended to the live spool, to be published.
    pub requeued: u64,
    /// Found on Kafka already: not appended.
    pub already_on_kafka: u64,
    /// In the live spool already (a salvage run before, or the sender's retry).
    pub duplicate: u64,
    /// Found damaged and kept in the live spool's quarantine.
    pub quarantined: u64,
    /// Whether it ran to the end (not cut short by a stop).
    pub complete: bool,
}

/// Salvages `file` into `spool`, checking on Kafka first when `recovery` is set.
pub async fn salvage_file(
    spool: &Spool,
    file: &Path,
    recovery: Option<&Recovery>,
    stop: &CancellationToken,
) -> Result<SalvageReport, SalvageError> {
    let (tx, mut rx) = mpsc::channel::<Vec<Entry>>(2);
    let path = file.to_path_buf();
    let scan = tokio::task::spawn_blocking(move || {
        salvage::scan_keeping_damage(&path, CHUNK, |chunk| tx.blocking_send(chunk).is_ok())
    });
    let mut report = SalvageReport::default();
    while let Some(chunk) = rx.recv().await {
        if !requeue(spool, chunk, recovery, stop, &mut report).await {
            drop(rx);
            let _ = scan.await;
            return Ok(report);
        }
    }
    let (scanned, damaged) = scan.await.map_err(|e| SalvageError::Read {
        path: file.to_path_buf(),
        source: std::io::Error::other(e.to_string()),
    })??;
    report.scanned = scanned;
    // The damaged events go to the live spool's quarantine, with their bytes: counted and
    // listed by `spool verify` there, not only in this file an operator may delete.
    let quarantined = damaged.len() as u64;
    loop {
        match spool.keep_damaged(file, damaged.clone()).await {
            Ok(()) => break,
            Err(SpoolError::Closed) => return Ok(report),
            Err(_) => {}
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.cancelled() => return Ok(report),
        }
    }
    report.quarantined = quarantined;
    report.complete = true;
    Ok(report)
}

/// Appends the entries of `chunk` Kafka does not have; false when stopped before the end.
async fn requeue(
    spool: &Spool,
    mut chunk: Vec<Entry>,
    recovery: Option<&Recovery>,
    stop: &CancellationToken,
    report: &mut SalvageReport,
) -> bool {
    if let Some(r) = recovery {
        let found = recover::published_of(r, chunk.clone()).await;
        report.already_on_kafka += found.len() as u64;
        chunk.retain(|e| found.binary_search(&e.seq).is_err());
    }
    for e in chunk {
        match append_until_taken(spool, &e, stop).await {
            Some(Appended::Stored(_)) => report.requeued += 1,
            Some(Appended::Duplicate) => report.duplicate += 1,
            None => return false,
        }
    }
    true
}

/// Appends, waiting out a full or unwritable spool; `None` when stopped or closed.
async fn append_until_taken(
    spool: &Spool,
    e: &Entry,
    stop: &CancellationToken,
) -> Option<Appended> {
    loop {
        match spool.append(&e.message).await {
            Ok(appended) => return Some(appended),
            Err(SpoolError::Closed) => return None,
            Err(_) => {}
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.cancelled() => return None,
        }
    }
}

/// The bridge's own salvager: salvages every damaged file of the spool's directory, at start
/// and whenever the spool finds another (or every minute, for files an operator put there).
pub async fn run_salvager(
    spool: Spool,
    recovery: Option<Recovery>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    let mut damage = spool.damage();
    // Files salvaged whose rename failed: not salvaged again (that would append them again).
    let mut done = std::collections::HashSet::new();
    loop {
        for file in crate::spool::unsalvaged(spool.dir()) {
            if done.contains(&file) {
                continue;
            }
            if !salvage_one(&spool, &file, recovery.as_ref(), &metrics, &stop).await {
                return;
            }
            done.insert(file);
        }
        tokio::select! {
            changed = damage.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(Duration::from_secs(60)) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// Salvages one file and logs what it did; false when stopped before the end.
async fn salvage_one(
    spool: &Spool,
    file: &Path,
    recovery: Option<&Recovery>,
    metrics: &Metrics,
    stop: &CancellationToken,
) -> bool {
    tracing::info!(file = %file.display(), "salvaging a damaged spool file");
    let report = match salvage_file(spool, file, recovery, stop).await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %crate::problem::with_causes(&e), file = %file.display(), "cannot salvage the damaged spool file; it is left in place");
            return true;
        }
    };
    count(metrics, &report);
    if !report.complete {
        return false;
    }
    let kept_as = match crate::spool::mark_salvaged(file) {
        Ok(renamed) => renamed,
        Err(e) => {
            tracing::error!(error = %e, file = %file.display(), "salvaged, but cannot be renamed: move it away by hand, or the next start salvages it again (its events would be published twice)");
            file.to_path_buf()
        }
    };
    let s = report.scanned;
    let level_error = s.lost > 0 || s.damaged > 0;
    if level_error {
        tracing::error!(requeued = report.requeued, already_on_kafka = report.already_on_kafka, duplicate = report.duplicate, damaged = s.damaged, quarantined = report.quarantined, lost = s.lost, kept_as = %kept_as.display(), "damaged spool file salvaged; some of its events could not be recovered whole (damaged ones are in the spool's quarantine: `spool verify`)");
    } else {
        tracing::warn!(requeued = report.requeued, already_on_kafka = report.already_on_kafka, duplicate = report.duplicate, index_read = s.index_read, kept_as = %kept_as.display(), "damaged spool file salvaged: its events are published again");
    }
    true
}

/// Adds one salvage's figures to the metrics.
pub(crate) fn count(metrics: &Metrics, r: &SalvageReport) {
    metrics.salvaged("requeued", r.requeued);
    metrics.salvaged("already_on_kafka", r.already_on_kafka);
    metrics.salvaged("duplicate", r.duplicate);
    metrics.salvaged("damaged", r.scanned.damaged);
    metrics.salvaged("lost", r.scanned.lost);
}
