//! Deleting what Kafka confirmed, in batches: a spool transaction per batch, not per event.

use std::time::Duration;

use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::retry::Backoff;
use crate::spool::{Spool, SpoolError};

/// Confirmed entries not deleted yet, and the deletes under way.
pub(super) struct PendingDeletes {
    seqs: Vec<u64>,
    /// When the oldest of `seqs` was confirmed.
    oldest: Option<Instant>,
    running: JoinSet<()>,
    batch: usize,
    interval: Duration,
}

impl PendingDeletes {
    /// Deletes in batches of `batch`, or of whatever is pending once the oldest waited
    /// `interval`.
    pub(super) fn new(batch: usize, interval: Duration) -> PendingDeletes {
        PendingDeletes {
            seqs: Vec::new(),
            oldest: None,
            running: JoinSet::new(),
            batch,
            interval,
        }
    }

    /// `seq` was confirmed by Kafka.
    pub(super) fn push(&mut self, seq: u64) {
        if self.seqs.is_empty() {
            self.oldest = Some(Instant::now());
        }
        self.seqs.push(seq);
    }

    /// When the pending deletes are due at the latest.
    pub(super) fn due(&self) -> Option<Instant> {
        self.oldest.map(|t| t + self.interval)
    }

    /// Starts deleting once a batch is full, the oldest waited long enough, or `now_anyway`
    /// (the drain is stopping with nothing in flight).
    pub(super) fn delete_when_due(&mut self, spool: &Spool, now_anyway: bool) {
        let due = self.seqs.len() >= self.batch
            || (now_anyway && !self.seqs.is_empty())
            || self.due().is_some_and(|t| Instant::now() >= t);
        if due {
            self.flush(spool);
        }
    }

    /// Starts deleting everything pending.
    pub(super) fn flush(&mut self, spool: &Spool) {
        self.oldest = None;
        if self.seqs.is_empty() {
            return;
        }
        let seqs = std::mem::take(&mut self.seqs);
        self.running.spawn(delete_until_done(spool.clone(), seqs));
        // Reap finished deletes so the set does not grow.
        while self.running.try_join_next().is_some() {}
    }

    /// Waits for every delete under way.
    pub(super) async fn finish(&mut self, spool: &Spool) {
        self.flush(spool);
        while self.running.join_next().await.is_some() {}
    }
}

/// Deletes published entries, retrying while the spool cannot write (it heals by itself), so
/// a published event never stays behind. Only a closed spool ends the retries: the entries
/// then stay, and the next start's recovery check finds them on Kafka.
async fn delete_until_done(spool: Spool, seqs: Vec<u64>) {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        match spool.delete(seqs.clone()).await {
            Ok(()) | Err(SpoolError::Closed) => return,
            Err(e) => {
                if backoff.failures() == 0 {
                    tracing::warn!(error = %crate::problem::with_causes(&e), entries = seqs.len(), "cannot delete published entries from the spool yet; retrying");
                }
                tokio::time::sleep(backoff.fail()).await;
            }
        }
    }
}
