//! Reading the spool ahead of the sends: the next batch is read while the drain sends the one
//! before.
//!
//! Why: a backlog (after a restart or an outage) is read from the file, on a blocking thread,
//! about 1 024 entries a read. While the drain awaited each read in its loop it sent nothing
//! and took no reports, so each batch cost its read plus its sends one after the other, one
//! core at a time: the drain waited on its reads for 45 % of `spool_bench`'s drain, with the
//! machine a quarter idle (BENCHMARKS.md, issue 26). Now a read runs as a task of its own
//! while the drain goes on with what it holds, started as soon as the drain holds no more
//! than a batch (before it sends them) and less than [`AHEAD_BYTES`] of bodies. One read at a
//! time: each starts after the sequence number where the last one ended.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::spool::{Entry, ReadEntry, Spool, SpoolError};

/// Bytes of bodies held before another read is started: about one read's worth (the spool's
/// reads stop at the record in which 4 MiB were read), so what the drain holds stays about
/// two reads whatever the bodies' size, and however long Kafka is away.
pub(super) const AHEAD_BYTES: usize = 4 * 1024 * 1024;

/// The entries read and not sent yet, in order, and the bytes of their bodies.
#[derive(Default)]
pub(super) struct Held {
    entries: VecDeque<Entry>,
    bytes: usize,
}

impl Held {
    pub(super) fn push_back(&mut self, e: Entry) {
        self.bytes += e.message.body.len();
        self.entries.push_back(e);
    }

    /// Puts back an entry taken from the front (the producer's queue was full).
    pub(super) fn push_front(&mut self, e: Entry) {
        self.bytes += e.message.body.len();
        self.entries.push_front(e);
    }

    pub(super) fn pop_front(&mut self) -> Option<Entry> {
        let e = self.entries.pop_front()?;
        self.bytes -= e.message.body.len();
        Some(e)
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether the drain holds little enough to read more: no more than `batch` entries, and
    /// under [`AHEAD_BYTES`].
    pub(super) fn wants_more(&self, batch: usize) -> bool {
        self.entries.len() <= batch && self.bytes < AHEAD_BYTES
    }
}

/// What a read brought back.
pub(super) struct Read {
    /// The newest committed sequence number when it started: with nothing read, everything
    /// up to it was deleted or moved aside, and the drain reads on from there.
    pub committed: Option<u64>,
    /// The entries read, in order, or why none could be (the read already waited a moment
    /// before reporting it, so the drain may start the next at once).
    pub entries: Result<Vec<ReadEntry>, SpoolError>,
}

/// The read in progress, if any.
#[derive(Default)]
pub(super) struct ReadAhead {
    reading: Option<JoinHandle<Read>>,
}

impl ReadAhead {
    /// Whether a read is under way.
    pub(super) fn in_progress(&self) -> bool {
        self.reading.is_some()
    }

    /// Starts reading up to `limit` entries after `after`; `committed` is the newest committed
    /// sequence number now. Only one read runs at a time: the caller checks [`in_progress`].
    ///
    /// [`in_progress`]: ReadAhead::in_progress
    pub(super) fn start(
        &mut self,
        spool: &Spool,
        after: Option<u64>,
        limit: usize,
        committed: Option<u64>,
    ) {
        debug_assert!(self.reading.is_none(), "one read at a time");
        let spool = spool.clone();
        self.reading = Some(tokio::spawn(async move {
            let entries = spool.read_after(after, limit).await;
            match &entries {
                // Reported by the spool, which moves the file aside and starts a fresh one.
                Err(SpoolError::Damaged) => tokio::time::sleep(Duration::from_millis(20)).await,
                Err(e) => {
                    tracing::error!(error = %crate::problem::with_causes(e), "cannot read the spool; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Ok(_) => {}
            }
            Read { committed, entries }
        }));
    }

    /// The read under way, once done; never returns while none is.
    pub(super) async fn done(&mut self) -> Read {
        let Some(reading) = &mut self.reading else {
            return std::future::pending().await;
        };
        let read = reading.await;
        self.reading = None;
        match read {
            Ok(read) => read,
            Err(e) => {
                // A panic outside the read's own guard: said, and not retried in a hot loop.
                tracing::error!(error = %e, "a read of the spool failed; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
                Read {
                    committed: None,
                    entries: Err(SpoolError::Closed),
                }
            }
        }
    }
}

impl Drop for ReadAhead {
    /// A drain that returns with a read under way does not leave it running.
    fn drop(&mut self) {
        if let Some(reading) = self.reading.take() {
            reading.abort();
        }
    }
}
