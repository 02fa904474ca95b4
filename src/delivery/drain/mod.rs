//! The drain: moves spooled events to Kafka, and deletes each only once Kafka confirmed it.
//!
//! The spool is the queue. The drain keeps a window of messages in flight (bounded in count
//! and bytes, so memory stays flat however long Kafka is away), reads more from the spool as
//! confirmations come back, and deletes confirmed entries in batches. It reads in sequence
//! order and librdkafka's idempotent producer keeps that order per partition, so events with
//! the same key stay in order, across outages too (messages never time out in this mode).
//!
//! One topic cannot take the whole window: each topic may always have its share
//! (`max_in_flight_per_topic`) in flight, and borrows a second share only while Kafka is
//! confirming it, no other topic waits and a share stays free ([`shares`]); entries of a topic
//! without room wait aside, in order, while the drain goes on with the others. A topic whose
//! partitions have no leader (or whose broker is slow) then holds its share (two if it
//! stalled while borrowing), never the whole drain.
//!
//! Delivery reports come back on one queue, each tagged with the token its send was given,
//! and are taken up to [`REPORTS_PER_TURN`] at a time: one turn of the loop per batch of
//! reports rather than a future and a turn per message. Entries waiting aside are bounded in
//! count (`max_waiting`) and in bytes like the window; once either bound is reached the drain
//! pauses until the slow topic moves again, so memory stays flat, and the start-up recovery
//! check knows how far past the oldest entry the drain can have gone.
//!
//! A backlog is read from the spool one batch ahead ([`reads`]): the next read runs on
//! another thread while the drain sends the batch before, so reading and sending overlap on
//! the machine's cores instead of taking turns.
//!
//! A topic not yet created (see [`crate::topics`]) is treated the same way: its
//! entries wait aside, in order, until it is ready, and the drain wakes when it is.
//!
//! When Kafka refuses a message for good (too large, topic invalid or not authorised), it goes
//! to the dead-letter topic, in the same in-flight window as everything else (so other
//! confirmations never wait behind it); if that fails too, it stays in the spool ("parked"),
//! is retried now and then, and shows in logs and metrics. It is never dropped.

mod deletes;
mod reads;
mod retries;
mod shares;
mod sink;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rdkafka::error::KafkaError;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::recover::{self, Recovery};
use super::{record, DeadLetterError, DeadLetters};
use crate::archive::Archive;
use crate::event::Message;
use crate::kafka::report::{report_queue, ReportQueue, Reports};
use crate::kafka::{is_permanent, EnqueueError, Outcome, Publisher};
use crate::metrics::Metrics;
use crate::spool::{Entry, Spool};
use crate::telemetry::LogThrottle;
use crate::topics::Topics;
use deletes::PendingDeletes;
use reads::{Held, Read, ReadAhead};
use retries::{Retries, Retry};
use shares::{Limits, TopicShares};
pub use sink::{KafkaSink, Sink};

/// How the drain paces itself.
#[derive(Debug, Clone)]
pub struct DrainSettings {
    pub max_in_flight: usize,
    /// Messages of one topic always allowed in flight (its share), whatever the others do; a
    /// topic borrows a second share only while it is confirmed, no other topic waits and a
    /// share stays free (see [`shares`]), so one stalled topic cannot fill the window.
    pub max_in_flight_per_topic: usize,
    /// Most entries waiting aside for their topic's share.
    pub max_waiting: usize,
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

impl DrainSettings {
    pub fn new(max_in_flight: usize) -> DrainSettings {
        DrainSettings {
            max_in_flight,
            max_in_flight_per_topic: (max_in_flight / 4).max(1),
            max_waiting: 2 * max_in_flight,
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

    /// How far into the spool entries can have been sent before a stop: the in-flight
    /// window, the confirmed ones whose delete was pending, a read batch, and the entries that
    /// waited aside while newer ones of other topics went out. (Entries read ahead are newer
    /// than any sent: they add nothing.)
    pub(crate) fn recovery_candidates(&self) -> usize {
        self.max_in_flight + 2 * self.delete_batch + self.read_batch + self.max_waiting
    }
}

/// Figures the drain shares with metrics and the CLI.
#[derive(Debug, Default)]
pub struct DrainGauges {
    pub parked: AtomicU64,
    pub published: AtomicU64,
    pub dead_lettered: AtomicU64,
}

/// What an operator can ask of a running drain (through the admin listener).
#[derive(Debug, Default)]
pub struct DrainControl {
    /// Send every parked entry again now, not at its next park retry (the cause was fixed).
    redrive_parked: tokio::sync::Notify,
}

impl DrainControl {
    /// Asks the drain to send its parked entries again now (and to notice purged ones).
    pub fn redrive_parked(&self) {
        self.redrive_parked.notify_one();
    }
}

/// When to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Until {
    /// Run until shut down, then publish what the spool still holds until it is empty or
    /// `stop_grace` is over (whatever is left stays for the next start).
    Shutdown,
    /// Stop as soon as the spool is empty (`spool drain`), or when shut down.
    Empty,
}

/// Tells a running drain to stop, and by when it must have returned: the stop of the whole
/// process has one deadline, and the drain's orderly end (deleting what Kafka confirmed) must
/// fit before it rather than be cut off by it.
#[derive(Debug, Clone, Default)]
pub struct DrainStop {
    token: CancellationToken,
    by: Arc<OnceLock<Instant>>,
}

impl DrainStop {
    /// Stop, and return by `deadline` (instead of `stop_grace` from now).
    pub fn stop_by(&self, deadline: Instant) {
        let _ = self.by.set(deadline);
        self.token.cancel();
    }

    /// Cancelled once the stop is asked for (for tasks that stop with the drain).
    pub(crate) fn token(&self) -> CancellationToken {
        self.token.clone()
    }

    /// When the drain has to be done once it stops.
    fn deadline(&self, grace: Duration) -> Instant {
        self.by
            .get()
            .copied()
            .unwrap_or_else(|| Instant::now() + grace)
    }
}

/// What one in-flight send was.
enum Attempt {
    /// The message to its own topic.
    Publish,
    /// The message to the dead-letter topic, after Kafka refused it for good with `error`.
    DeadLetter { error: KafkaError },
}

/// A send in flight, and what it is about.
struct Sending<P> {
    seq: u64,
    message: Message,
    attempt: u32,
    kind: Attempt,
    /// What the sink keeps until the report (the producer span).
    pending: P,
}

/// The in-flight map's hasher: tokens are the drain's own counter, not a stranger's input.
type TokenHasher = foldhash::fast::RandomState;

/// Delivery reports taken per turn of the drain's loop, at most.
const REPORTS_PER_TURN: usize = 1024;

/// The drain task's state. [`Drain::run`] returns when told to (see [`Until`]); entries not
/// confirmed by then stay in the spool for the next start.
///
/// Generic over its [`Sink`] so its tests can put a fake producer there; the bridge runs it on
/// [`KafkaSink`].
pub struct Drain<S: Sink = KafkaSink> {
    spool: Spool,
    sink: S,
    metrics: Arc<Metrics>,
    settings: DrainSettings,
    gauges: Arc<DrainGauges>,
    control: Arc<DrainControl>,
    committed: watch::Receiver<Option<u64>>,
    /// Changes when a topic becomes ready (`None`: topics are not provisioned).
    topics_ready: Option<watch::Receiver<u64>>,
    /// The newest spool entry read so far.
    cursor: Option<u64>,
    /// Entries read and not sent yet, in order.
    buffer: Held,
    /// The next entries, being read while the drain sends those it holds.
    read_ahead: ReadAhead,
    retries: Retries,
    /// Sends in flight, by the token their report comes back with.
    in_flight: HashMap<u64, Sending<S::Pending>, TokenHasher>,
    next_token: u64,
    /// Where every send of this drain reports, and where the drain reads the reports.
    report_queue: ReportQueue,
    reports: Reports,
    report_buf: Vec<(u64, Outcome)>,
    /// Per topic: messages in flight, and spooled entries waiting for the topic's share; also
    /// the bytes in flight, all topics.
    topics: TopicShares,
    queue_full: bool,
    deletes: PendingDeletes,
    /// Entries parked, and parked ones sent again, not yet recorded in the spool.
    to_park: Vec<u64>,
    to_unpark: Vec<u64>,
    /// Entries read back damaged, for the spool to move to its quarantine.
    to_quarantine: Vec<u64>,
    /// Park and dead-letter lines, at most one per interval of each kind (with the count
    /// held back): thousands of refused events must not bury the log.
    log_throttle: LogThrottle,
}

/// How often a park or dead-letter line is written, at most (refusals use the same).
const LOG_EVERY: Duration = Duration::from_secs(10);

impl Drain<KafkaSink> {
    pub fn new(
        spool: Spool,
        publisher: Publisher,
        topics: Topics,
        dead_letters: DeadLetters,
        metrics: Arc<Metrics>,
        settings: DrainSettings,
        gauges: Arc<DrainGauges>,
    ) -> Drain<KafkaSink> {
        let sink = KafkaSink {
            publisher,
            topics,
            dead_letters,
            archive: None,
        };
        Drain::with_sink(spool, sink, metrics, settings, gauges)
    }

    /// The same drain, writing each event's archive record just before the event (see
    /// [`crate::archive`]).
    pub fn with_archive(mut self, archive: Option<Archive>) -> Drain<KafkaSink> {
        self.sink.archive = archive;
        self
    }
}

impl<S: Sink> Drain<S> {
    /// The same drain, answering `control` (see [`DrainControl`]).
    pub fn with_control(mut self, control: Arc<DrainControl>) -> Drain<S> {
        self.control = control;
        self
    }

    pub(crate) fn with_sink(
        spool: Spool,
        sink: S,
        metrics: Arc<Metrics>,
        settings: DrainSettings,
        gauges: Arc<DrainGauges>,
    ) -> Drain<S> {
        let (report_queue, reports) = report_queue();
        Drain {
            committed: spool.subscribe(),
            topics_ready: sink.topics_ready(),
            deletes: PendingDeletes::new(settings.delete_batch, settings.delete_interval),
            spool,
            sink,
            metrics,
            settings,
            gauges,
            control: Arc::default(),
            cursor: None,
            buffer: Held::default(),
            read_ahead: ReadAhead::default(),
            retries: Retries::default(),
            in_flight: HashMap::default(),
            next_token: 0,
            report_queue,
            reports,
            report_buf: Vec::with_capacity(REPORTS_PER_TURN),
            topics: TopicShares::default(),
            queue_full: false,
            to_park: Vec::new(),
            to_unpark: Vec::new(),
            to_quarantine: Vec::new(),
            log_throttle: LogThrottle::new(LOG_EVERY),
        }
    }

    /// Publishes the spool until `stop` (or, with [`Until::Empty`], until it is empty).
    pub async fn run(mut self, stop: DrainStop, until: Until) {
        let shutdown = stop.token.clone();
        if let Some(recovery) = &self.settings.recovery {
            recover::skip_already_published(&self.spool, recovery, &shutdown).await;
        }
        let mut stopping = shutdown.is_cancelled();
        let mut stop_deadline: Option<Instant> = None;
        // One timer for every deadline (retries, pending deletes, a full producer queue, the
        // stop), re-armed only when the earliest one changes: the loop turns once per batch
        // of delivery reports, and a new timer each turn cost more than the rest of the turn.
        let timer = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(timer);
        let mut armed: Option<Instant> = None;
        loop {
            self.fill().await;
            self.deletes
                .delete_when_due(&self.spool, stopping && self.in_flight.is_empty());
            self.flush_park_marks();
            if self.caught_up() && (stopping || until == Until::Empty) {
                return self.finish().await;
            }
            if stopping && stop_deadline.is_none() {
                stop_deadline = Some(stop.deadline(self.settings.stop_grace));
            }
            if stop_deadline.is_some_and(|d| Instant::now() >= d) {
                tracing::warn!(
                    in_flight = self.in_flight.len(),
                    "stop grace over with deliveries unconfirmed; they stay in the spool"
                );
                return self.finish().await;
            }
            let wake = self.next_wake(stop_deadline);
            if wake != armed {
                if let Some(at) = wake {
                    timer.as_mut().reset(at);
                }
                armed = wake;
            }
            tokio::select! {
                _ = self.reports.recv_many(&mut self.report_buf, REPORTS_PER_TURN), if !self.in_flight.is_empty() => self.on_reports(),
                read = self.read_ahead.done() => self.on_read(read),
                changed = self.committed.changed(), if !stopping => stopping = changed.is_err(),
                _ = topic_ready(&mut self.topics_ready), if self.topics.waiting_entries > 0 => {}
                _ = &mut timer, if armed.is_some() => armed = None,
                _ = shutdown.cancelled(), if !stopping => stopping = true,
                _ = self.control.redrive_parked.notified() => self.redrive_parked().await,
            }
        }
    }

    /// Makes every parked entry due now, on fresh topic metadata.
    async fn redrive_parked(&mut self) {
        self.sink.refresh_metadata().await;
        let parked = self.retries.parked_due_now(Instant::now());
        tracing::info!(
            parked,
            "parked events are being sent again now (asked through the admin listener)"
        );
    }

    /// The earliest of: the next retry, the oldest pending delete, a producer queue that was
    /// full (checked again every 5 ms), and the end of the stop grace.
    fn next_wake(&self, stop_deadline: Option<Instant>) -> Option<Instant> {
        let queue = self
            .queue_full
            .then(|| Instant::now() + Duration::from_millis(5));
        [
            self.retries.next_due(),
            self.deletes.due(),
            queue,
            stop_deadline,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Fills the window: due retries first, then entries that waited for their topic's
    /// share, then the spool in order.
    async fn fill(&mut self) {
        self.read_ahead_when_low();
        self.queue_full = self.queue_full && !self.in_flight.is_empty();
        let limits = Limits {
            share: self.settings.max_in_flight_per_topic,
            window: self.settings.max_in_flight,
            window_bytes: self.settings.max_in_flight_bytes,
        };
        let now = Instant::now();
        while !self.queue_full
            && self.in_flight.len() < self.settings.max_in_flight
            && self.topics.bytes_in_flight() < self.settings.max_in_flight_bytes
        {
            let (seq, message, attempt) = if let Some(mut r) = self.due_retry() {
                let Some(message) = self.message_of(&mut r).await else {
                    continue;
                };
                (r.seq, message, r.attempt)
            } else if let Some(e) = self
                .topics
                .next_waiting(limits, now, |t| self.sink.topic_is_ready(t))
            {
                (e.seq, e.message, 0)
            } else if self.topics.waiting_entries >= self.settings.max_waiting
                || self.topics.waiting_bytes >= self.settings.max_in_flight_bytes
            {
                break;
            } else if let Some(e) = self.buffer.pop_front() {
                if !self.topics.has_room(&e.message.topic, limits, now)
                    || !self.sink.topic_ready(&e.message)
                {
                    self.topics.wait(e);
                    continue;
                }
                (e.seq, e.message, 0)
            } else {
                break;
            };
            match self
                .sink
                .enqueue(&message, self.report_queue.to(self.next_token))
            {
                Ok(pending) => self.send(pending, seq, message, attempt, Attempt::Publish),
                Err(EnqueueError::QueueFull) => {
                    let entry = Entry { seq, message };
                    if attempt == 0 && self.topics.is_waiting(&entry.message.topic) {
                        self.topics.wait_first(entry);
                    } else {
                        self.buffer.push_front(entry);
                    }
                    self.queue_full = true;
                }
                Err(EnqueueError::Refused(e)) => self.on_failure(seq, message, attempt, e),
            }
        }
        self.read_ahead_when_low();
    }

    fn due_retry(&mut self) -> Option<Retry> {
        let r = self.retries.pop_due(Instant::now())?;
        if r.parked {
            self.gauges.parked.fetch_sub(1, Ordering::Relaxed);
        }
        Some(r)
    }

    /// The message of a due retry: kept in memory, or (parked) read back from the spool. A
    /// parked entry no longer spooled is gone (`None`); one that cannot be read now waits
    /// another round.
    async fn message_of(&mut self, r: &mut Retry) -> Option<Message> {
        if let Some(m) = r.message.take() {
            return Some(m);
        }
        match self.spool.read_one(r.seq).await {
            Ok(Some(e)) => {
                self.to_unpark.push(r.seq);
                Some(e.message)
            }
            Ok(None) => None,
            Err(e) => {
                tracing::debug!(seq = r.seq, error = %e, "cannot read a parked entry back yet");
                self.gauges.parked.fetch_add(1, Ordering::Relaxed);
                self.retry(Retry {
                    due: Instant::now() + self.settings.park_retry,
                    message: None,
                    ..*r
                });
                None
            }
        }
    }

    /// Records parks in the spool (see [`Spool::mark_parked`]), and hands it the damaged
    /// entries read (see [`Spool::quarantine`]), without waiting for either.
    fn flush_park_marks(&mut self) {
        if let Err(seqs) = self
            .spool
            .quarantine(std::mem::take(&mut self.to_quarantine))
        {
            self.to_quarantine = seqs;
        }
        if self.to_park.is_empty() && self.to_unpark.is_empty() {
            return;
        }
        let (parked, unparked) = (
            std::mem::take(&mut self.to_park),
            std::mem::take(&mut self.to_unpark),
        );
        if let Err((parked, unparked)) = self.spool.mark_parked(parked, unparked) {
            // The writer's queue is full: kept, in order, for the next turn.
            self.to_park = parked;
            self.to_unpark = unparked;
        }
    }

    /// Starts reading the next committed entries when the drain holds no more than a batch
    /// of them (and under [`reads::AHEAD_BYTES`] of bodies) and no read is under way (see
    /// [`reads`]): at the start of a fill, so the read runs while the batch before is sent,
    /// and at its end.
    fn read_ahead_when_low(&mut self) {
        if self.read_ahead.in_progress() || !self.buffer.wants_more(self.settings.read_batch) {
            return;
        }
        let committed = *self.committed.borrow_and_update();
        if committed > self.cursor {
            let batch = self.settings.read_batch;
            self.read_ahead
                .start(&self.spool, self.cursor, batch, committed);
        }
    }

    /// A read came back: its entries go to the end of the buffer.
    fn on_read(&mut self, read: Read) {
        let entries = match read.entries {
            Ok(entries) => entries,
            // Logged by the read, which waited a moment before it came back.
            Err(_) => return,
        };
        if entries.is_empty() {
            // Nothing left up to what was committed: the entries between were deleted (the
            // recovery check found them on Kafka), or were in a damaged file the spool moved
            // aside (salvage puts them back). Reading on from there.
            self.cursor = self.cursor.max(read.committed);
        }
        for entry in entries {
            match entry {
                Ok(e) => {
                    self.cursor = Some(e.seq);
                    self.buffer.push_back(e);
                }
                Err(bad) => {
                    // The spool moves it to its quarantine (and logs it there, once) if it is
                    // damaged; an entry of an unknown layout stays in place.
                    self.cursor = Some(bad.seq);
                    tracing::warn!(seq = bad.seq, error = %crate::problem::with_causes(&bad), "a spooled entry does not read back; not published");
                    self.to_quarantine.push(bad.seq);
                }
            }
        }
    }

    /// Keeps a message handed over under the token it was given (`next_token`).
    fn send(
        &mut self,
        pending: S::Pending,
        seq: u64,
        message: Message,
        attempt: u32,
        kind: Attempt,
    ) {
        self.topics.sent(&message.topic, message.body.len());
        let sending = Sending {
            seq,
            message,
            attempt,
            kind,
            pending,
        };
        self.in_flight.insert(self.next_token, sending);
        self.next_token += 1;
    }

    /// Delivery reports came back (in `report_buf`).
    fn on_reports(&mut self) {
        let mut reports = std::mem::take(&mut self.report_buf);
        for (token, result) in reports.drain(..) {
            match self.in_flight.remove(&token) {
                Some(sent) => self.on_report(sent, result),
                None => tracing::debug!(token, "a delivery report for no send in flight"),
            }
        }
        self.report_buf = reports;
    }

    /// One delivery report came back.
    fn on_report(&mut self, sent: Sending<S::Pending>, result: Outcome) {
        S::settle(sent.pending, &result);
        self.topics
            .reported(&sent.message.topic, sent.message.body.len());
        self.queue_full = false;
        match (sent.kind, result) {
            (Attempt::Publish, result) => {
                record(&self.metrics, &sent.message, &result);
                match result {
                    Ok(_) => {
                        self.topics.confirmed(&sent.message.topic, Instant::now());
                        self.sink.published();
                        self.gauges.published.fetch_add(1, Ordering::Relaxed);
                        self.deletes.push(sent.seq);
                    }
                    Err(e) => self.on_failure(sent.seq, sent.message, sent.attempt, e),
                }
            }
            (Attempt::DeadLetter { error }, Ok(_)) => {
                self.sink.dead_lettered();
                self.gauges.dead_lettered.fetch_add(1, Ordering::Relaxed);
                if let Some(held_back) = self.log_throttle.admit("dead_lettered") {
                    tracing::warn!(seq = sent.seq, event_id = sent.message.event_id.as_str(), topic = sent.message.topic.as_str(), %error, similar_since_last_line = held_back, "Kafka refused the event for good; sent to the dead-letter topic");
                }
                self.deletes.push(sent.seq);
            }
            (Attempt::DeadLetter { error }, Err(why)) => {
                self.park(sent.seq, sent.message, sent.attempt, &error, &why)
            }
        }
    }

    /// A send failed: dead-letter it when Kafka refuses it for good, else retry with backoff.
    fn on_failure(&mut self, seq: u64, message: Message, attempt: u32, error: KafkaError) {
        if is_permanent(&error) {
            let to = self.report_queue.to(self.next_token);
            match self.sink.enqueue_dead_letter(&message, &error, to) {
                Ok(pending) => self.send(
                    pending,
                    seq,
                    message,
                    attempt,
                    Attempt::DeadLetter { error },
                ),
                // The producer's queue is full for a moment: not a refusal of the dead letter,
                // so tried again after a back-off like a passing failure, not parked.
                Err(DeadLetterError::Enqueue(EnqueueError::QueueFull)) => {
                    self.queue_full = true;
                    self.retry_later(seq, message, attempt);
                }
                Err(why) => self.park(seq, message, attempt, &error, &why),
            }
            return;
        }
        tracing::debug!(seq, error = %error, "delivery failed; will retry");
        self.retry_later(seq, message, attempt);
    }

    /// Sends `message` again after its back-off.
    fn retry_later(&mut self, seq: u64, message: Message, attempt: u32) {
        let backoff = Retries::backoff(self.settings.retry_backoff, attempt);
        self.retry(Retry {
            due: Instant::now() + backoff,
            seq,
            message: Some(message),
            attempt: attempt + 1,
            parked: false,
        });
    }

    /// Keeps an event Kafka refuses and no dead-letter topic took; retried now and then. The
    /// log line names the first event of each interval and how many parked since the last
    /// line (`similar_since_last_line`); `eduzz_bridge_parked` counts them all.
    fn park(
        &mut self,
        seq: u64,
        message: Message,
        attempt: u32,
        error: &KafkaError,
        why: &dyn std::fmt::Display,
    ) {
        let parked = self.gauges.parked.fetch_add(1, Ordering::Relaxed) + 1;
        if let Some(held_back) = self.log_throttle.admit("parked") {
            tracing::error!(seq, event_id = message.event_id.as_str(), topic = message.topic.as_str(), error = %error, dead_letter_error = %why, parked, similar_since_last_line = held_back, "Kafka refused the event for good and it could not be dead-lettered; it stays in the spool (parked)");
        }
        self.to_park.push(seq);
        drop(message);
        self.retry(Retry {
            due: Instant::now() + self.settings.park_retry,
            seq,
            message: None,
            attempt: attempt + 1,
            parked: true,
        });
    }

    fn retry(&mut self, r: Retry) {
        self.retries.push(r);
    }

    /// Whether nothing is left to send but parked events.
    fn caught_up(&self) -> bool {
        self.in_flight.is_empty()
            && self.buffer.is_empty()
            && self.topics.waiting_entries == 0
            && *self.committed.borrow() <= self.cursor
            && self.retries.only_parked()
    }

    async fn finish(mut self) {
        self.flush_park_marks();
        self.deletes.finish(&self.spool).await;
    }
}

/// Returns when a topic became ready; never without provisioning.
async fn topic_ready(ready: &mut Option<watch::Receiver<u64>>) {
    let closed = match ready {
        Some(r) => r.changed().await.is_err(),
        None => true,
    };
    if closed {
        std::future::pending::<()>().await;
    }
}
