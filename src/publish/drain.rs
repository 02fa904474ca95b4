//! The drain: moves spooled events to Kafka, and deletes each only once Kafka confirmed it.
//!
//! The spool is the queue. The drain keeps a window of messages in flight (bounded in count
//! and bytes, so memory stays flat however long Kafka is away), reads more from the spool as
//! confirmations come back, and deletes confirmed entries in batches. It reads in sequence
//! order and librdkafka's idempotent producer keeps that order per partition, so events with
//! the same key stay in order, across outages too (messages never time out in this mode).
//!
//! When Kafka refuses a message for good (too large, topic invalid or not authorised), it goes
//! to the dead-letter topic; if that fails too, it stays in the spool ("parked"), is retried
//! now and then, and shows in logs and metrics. It is never dropped.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use rdkafka::error::KafkaError;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::message::Message;
use crate::metrics::Metrics;
use crate::publish::recover::{self, Outcome};
use crate::publish::{is_permanent, Delivered, EnqueueError, Publisher};
use crate::sink::{dead_letter, record};
use crate::spool::{Entry, Spool};

/// How the drain paces itself.
#[derive(Debug, Clone)]
pub struct DrainSettings {
    pub max_in_flight: usize,
    pub max_in_flight_bytes: usize,
    /// Entries read from the spool per read.
    pub read_batch: usize,
    /// Confirmed entries deleted per spool transaction, at most.
    pub delete_batch: usize,
    /// Longest a confirmed entry waits for its delete.
    pub delete_interval: Duration,
    /// First wait before re-sending a message after a passing failure (doubles up to 30 s).
    pub retry_backoff: Duration,
    /// Wait before retrying a parked message.
    pub park_retry: Duration,
    /// Once told to stop: how long to wait for deliveries in flight before giving up on them
    /// (they stay in the spool).
    pub stop_grace: Duration,
    /// Before draining, look up the oldest entries on Kafka (see [`recover`]); None skips it.
    pub recovery: Option<Recovery>,
}

/// How the start-up check for already-published entries runs.
#[derive(Clone)]
pub struct Recovery {
    /// Client settings to read the topics with.
    pub reader: rdkafka::ClientConfig,
    /// Most spooled entries looked up (those that can have been sent before the stop).
    pub candidates: usize,
    /// Messages read back from the end of each partition.
    pub lookback: i64,
    /// Time allowed to one attempt.
    pub timeout: Duration,
    /// Attempts before giving up (Kafka unreachable, or not readable).
    pub attempts: u32,
}

impl std::fmt::Debug for Recovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recovery")
            .field("candidates", &self.candidates)
            .field("lookback", &self.lookback)
            .finish()
    }
}

impl DrainSettings {
    pub fn new(max_in_flight: usize) -> DrainSettings {
        DrainSettings {
            max_in_flight,
            max_in_flight_bytes: 32 * 1024 * 1024,
            read_batch: 1024,
            delete_batch: 8192,
            delete_interval: Duration::from_millis(20),
            retry_backoff: Duration::from_millis(500),
            park_retry: Duration::from_secs(60),
            stop_grace: Duration::from_secs(20),
            recovery: None,
        }
    }
}

/// Figures the drain shares with metrics and the CLI.
#[derive(Debug, Default)]
pub struct DrainGauges {
    pub parked: AtomicU64,
    pub published: AtomicU64,
    pub dead_lettered: AtomicU64,
}

type Report = (u64, Message, u32, Result<Delivered, KafkaError>);
type InFlight = Pin<Box<dyn Future<Output = Report> + Send>>;

struct Retry {
    due: Instant,
    seq: u64,
    message: Message,
    attempt: u32,
    parked: bool,
}

/// When to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Until {
    /// Run until `shutdown` turns true, then publish what the spool still holds until it is
    /// empty or `stop_grace` is over (whatever is left stays for the next start).
    Shutdown,
    /// Stop as soon as the spool is empty (`spool drain`), or on `shutdown`.
    Empty,
}

/// The drain task. Returns when told to (see [`Until`]); entries not confirmed by then stay
/// in the spool for the next start.
pub async fn run(
    spool: Spool,
    publisher: Publisher,
    metrics: Arc<Metrics>,
    settings: DrainSettings,
    gauges: Arc<DrainGauges>,
    mut shutdown: watch::Receiver<bool>,
    until: Until,
) {
    if let Some(recovery) = &settings.recovery {
        skip_already_published(&spool, recovery, &mut shutdown).await;
    }
    let mut committed = spool.subscribe();
    let mut cursor: Option<u64> = None;
    let mut buffer: VecDeque<Entry> = VecDeque::new();
    let mut retries: VecDeque<Retry> = VecDeque::new();
    let mut in_flight: FuturesUnordered<InFlight> = FuturesUnordered::new();
    let mut in_flight_bytes = 0usize;
    let mut to_delete: Vec<u64> = Vec::new();
    let mut oldest_pending_delete: Option<Instant> = None;
    let mut deleting: JoinSet<()> = JoinSet::new();
    let mut queue_full = false;
    let mut stopping = *shutdown.borrow();
    let mut stop_deadline: Option<Instant> = None;

    loop {
        // 1. Fill the window: due retries first, then the spool in order.
        queue_full = queue_full && !in_flight.is_empty();
        while !queue_full
            && in_flight.len() < settings.max_in_flight
            && in_flight_bytes < settings.max_in_flight_bytes
        {
            let (seq, message, attempt) = if retries
                .front()
                .is_some_and(|r| r.due <= Instant::now())
            {
                let r = retries.pop_front().expect("checked");
                if r.parked {
                    gauges.parked.fetch_sub(1, Ordering::Relaxed);
                }
                (r.seq, r.message, r.attempt)
            } else if let Some(e) = buffer.pop_front() {
                (e.seq, e.message, 0)
            } else if *committed.borrow_and_update() > cursor {
                match spool.read_after(cursor, settings.read_batch).await {
                    Ok(entries) => {
                        for entry in entries {
                            match entry {
                                Ok(e) => {
                                    cursor = Some(e.seq);
                                    buffer.push_back(e);
                                }
                                Err((seq, why)) => {
                                    // Unreadable entries stay where they are, for an operator.
                                    cursor = Some(seq);
                                    tracing::error!(seq, error = %why, "spool entry cannot be decoded; left in the spool");
                                }
                            }
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "cannot read the spool; retrying");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
                continue;
            } else {
                break;
            };
            match publisher.enqueue(&message) {
                Ok(future) => {
                    in_flight_bytes += message.body.len();
                    in_flight.push(Box::pin(async move {
                        let result = Publisher::delivered(future).await;
                        (seq, message, attempt, result)
                    }));
                }
                Err(EnqueueError::QueueFull) => {
                    buffer.push_front(Entry { seq, message });
                    queue_full = true;
                }
                Err(EnqueueError::Refused(e)) => {
                    handle_failure(
                        &publisher,
                        &metrics,
                        &settings,
                        &gauges,
                        &mut retries,
                        &mut to_delete,
                        seq,
                        message,
                        attempt,
                        e,
                    )
                    .await;
                }
            }
        }

        if !to_delete.is_empty() && oldest_pending_delete.is_none() {
            oldest_pending_delete = Some(Instant::now());
        }
        if to_delete.len() >= settings.delete_batch
            || (stopping && in_flight.is_empty() && !to_delete.is_empty())
            || oldest_pending_delete.is_some_and(|t| t.elapsed() >= settings.delete_interval)
        {
            flush_deletes(&spool, &mut to_delete, &mut deleting);
            oldest_pending_delete = None;
        }

        let caught_up = in_flight.is_empty()
            && buffer.is_empty()
            && *committed.borrow() <= cursor
            && retries.iter().all(|r| r.parked);
        if caught_up && (stopping || until == Until::Empty) {
            flush_deletes(&spool, &mut to_delete, &mut deleting);
            while deleting.join_next().await.is_some() {}
            return;
        }

        if stopping && stop_deadline.is_none() {
            stop_deadline = Some(Instant::now() + settings.stop_grace);
        }
        let next_retry = retries.front().map(|r| r.due);
        let delete_due = oldest_pending_delete.map(|t| t + settings.delete_interval);
        tokio::select! {
            Some((seq, message, attempt, result)) = in_flight.next(), if !in_flight.is_empty() => {
                in_flight_bytes -= message.body.len();
                queue_full = false;
                record(&metrics, &message, &result);
                match result {
                    Ok(_) => {
                        publisher.health().mark_up();
                        gauges.published.fetch_add(1, Ordering::Relaxed);
                        to_delete.push(seq);
                    }
                    Err(e) => {
                        handle_failure(&publisher, &metrics, &settings, &gauges, &mut retries, &mut to_delete, seq, message, attempt, e).await;
                    }
                }
            }
            changed = committed.changed(), if !stopping => {
                if changed.is_err() {
                    stopping = true;
                }
            }
            _ = sleep_until(next_retry), if next_retry.is_some() => {}
            _ = sleep_until(delete_due), if delete_due.is_some() => {}
            _ = tokio::time::sleep(Duration::from_millis(5)), if queue_full => {}
            _ = shutdown.changed(), if !stopping => {
                stopping = *shutdown.borrow();
            }
            _ = sleep_until(stop_deadline), if stop_deadline.is_some() => {
                tracing::warn!(in_flight = in_flight.len(), "stop grace over with deliveries unconfirmed; they stay in the spool");
                flush_deletes(&spool, &mut to_delete, &mut deleting);
                while deleting.join_next().await.is_some() {}
                return;
            }
        }
    }
}

/// Deletes the spooled entries that an earlier run published but could not delete.
async fn skip_already_published(spool: &Spool, r: &Recovery, shutdown: &mut watch::Receiver<bool>) {
    let entries: Vec<Entry> = match spool.read_after(None, r.candidates).await {
        Ok(v) => v.into_iter().filter_map(Result::ok).collect(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the spool for the recovery check; skipping it");
            return;
        }
    };
    if entries.is_empty() {
        return;
    }
    for attempt in 1..=r.attempts {
        let (reader, lookback, timeout) = (r.reader.clone(), r.lookback, r.timeout);
        let batch = entries.clone();
        let outcome = tokio::task::spawn_blocking(move || {
            recover::already_published(&reader, &batch, lookback, timeout)
        })
        .await
        .unwrap_or_else(|e| Outcome::Unknown(e.to_string()));
        match outcome {
            Outcome::Found(seqs) => {
                if !seqs.is_empty() {
                    tracing::info!(
                        events = seqs.len(),
                        "spooled events were already on Kafka (confirmed before the last stop, not yet deleted); not publishing them again"
                    );
                }
                if let Err(e) = spool.delete(seqs).await {
                    tracing::warn!(error = %e, "cannot delete already-published entries; they will be published again");
                }
                return;
            }
            Outcome::Unknown(why) if attempt == r.attempts => {
                tracing::warn!(reason = %why, events = entries.len(), "could not check which spooled events are already on Kafka; publishing them all (some may be duplicates)");
            }
            Outcome::Unknown(why) => {
                tracing::debug!(reason = %why, attempt, "recovery check failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                    _ = shutdown.changed() => return,
                }
            }
        }
    }
}

async fn sleep_until(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

fn flush_deletes(spool: &Spool, to_delete: &mut Vec<u64>, deleting: &mut JoinSet<()>) {
    if to_delete.is_empty() {
        return;
    }
    let seqs = std::mem::take(to_delete);
    let spool = spool.clone();
    deleting.spawn(async move {
        let n = seqs.len();
        if let Err(e) = spool.delete(seqs).await {
            // The entries stay and are published again after a restart (at least once).
            tracing::error!(error = %e, entries = n, "cannot delete published entries from the spool");
        }
    });
    // Reap finished deletes so the set does not grow.
    while deleting.try_join_next().is_some() {}
}

#[allow(clippy::too_many_arguments)]
async fn handle_failure(
    publisher: &Publisher,
    metrics: &Metrics,
    settings: &DrainSettings,
    gauges: &DrainGauges,
    retries: &mut VecDeque<Retry>,
    to_delete: &mut Vec<u64>,
    seq: u64,
    message: Message,
    attempt: u32,
    error: KafkaError,
) {
    if is_permanent(&error) {
        match dead_letter(publisher, metrics, &message, &error).await {
            Ok(()) => {
                gauges.dead_lettered.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(seq, event_id = %message.event_id, topic = %message.topic, error = %error, "Kafka refused the event for good; sent to the dead-letter topic");
                to_delete.push(seq);
            }
            Err(why) => {
                tracing::error!(seq, event_id = %message.event_id, topic = %message.topic, error = %error, dead_letter_error = %why, "Kafka refused the event for good and it could not be dead-lettered; it stays in the spool (parked)");
                gauges.parked.fetch_add(1, Ordering::Relaxed);
                insert_retry(
                    retries,
                    Retry {
                        due: Instant::now() + settings.park_retry,
                        seq,
                        message,
                        attempt: attempt + 1,
                        parked: true,
                    },
                );
            }
        }
    } else {
        let backoff = settings.retry_backoff * 2u32.saturating_pow(attempt.min(6));
        let backoff = backoff.min(Duration::from_secs(30));
        tracing::debug!(seq, error = %error, ?backoff, "delivery failed; will retry");
        insert_retry(
            retries,
            Retry {
                due: Instant::now() + backoff,
                seq,
                message,
                attempt: attempt + 1,
                parked: false,
            },
        );
    }
}

fn insert_retry(retries: &mut VecDeque<Retry>, r: Retry) {
    let at = retries.partition_point(|x| x.due <= r.due);
    retries.insert(at, r);
}
