//! Taking a routed message: what "acknowledged" means in each ack mode, and how the spool
//! reaches Kafka.
//!
//! | mode        | answered 2xx once…                         | lost on a crash?             |
//! |-------------|--------------------------------------------|------------------------------|
//! | `spooled`   | it is fsynced in the local spool           | no                           |
//! | `published` | Kafka confirmed it (acks=all)              | no (the sender waits longer) |
//! | `received`  | it is in the producer's memory queue       | yes, what was queued         |
//!
//! The pipeline calls [`Delivery::accept`] and turns the result into an outcome; it never
//! needs to know which mode is on. In `spooled` mode the [`drain`] publishes the spool.

mod dead_letter;
pub mod drain;
pub mod recover;
pub mod salvage;

use std::sync::Arc;
use std::time::Duration;

use rdkafka::error::KafkaError;
use serde::Deserialize;

use crate::archive::{self, Archive};
use crate::dedupe::{Claim, SharedIndex};
use crate::event::Message;
use crate::kafka::topic::check_topic_name;
use crate::kafka::{
    headers, is_permanent, Delivered, EnqueueError, ProducerTuning, Publisher, Sending,
    DEFAULT_MESSAGE_MAX_BYTES,
};
use crate::metrics::{ErrorLabels, Metrics, SourceLabels};
use crate::problem::Problems;
use crate::spool::{Appended, Spool, SpoolError};
use crate::telemetry::{spans, LogThrottle};
use crate::topics::Topics;
pub use dead_letter::{DeadLetterError, DeadLetters};

/// When the bridge answers 2xx, and so what a 2xx promises.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum AckMode {
    /// Answer once the event is handed to the producer's memory queue (fast, lost on a crash).
    Received,
    /// Answer once the broker confirmed the write (slow, nothing to lose, sender waits).
    Published,
    /// Answer once the event is fsynced in the local spool (durable and fast; the default).
    #[default]
    Spooled,
}

impl AckMode {
    pub fn as_str(self) -> &'static str {
        match self {
            AckMode::Received => "received",
            AckMode::Published => "published",
            AckMode::Spooled => "spooled",
        }
    }
}

/// `[delivery]`: how events travel from the request to Kafka.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeliverySettings {
    pub ack: AckMode,
    /// In `published` mode: how long a request waits for the broker before 503. In `received`
    /// and `published` modes, also how long a request waits for its topic to be created.
    #[serde(with = "humantime_serde")]
    pub publish_timeout: Duration,
    /// Topic for events Kafka refuses for good (too large, not authorised, invalid topic).
    pub dead_letter_topic: Option<String>,
    /// In `spooled` mode: most events handed to the producer and not yet confirmed, all
    /// topics together; one topic always may have a quarter of it, and half while Kafka is
    /// confirming it and no other topic waits (so one stalled topic cannot hold up the others).
    /// The drain's rate on one topic follows that share.
    pub max_in_flight: usize,
    /// In `spooled` mode, at start-up: look up the oldest spooled events on Kafka and skip
    /// those an earlier run published but could not delete (needs read access to the topics).
    pub recovery_check: bool,
}

impl Default for DeliverySettings {
    fn default() -> Self {
        Self {
            ack: AckMode::Spooled,
            publish_timeout: Duration::from_secs(10),
            dead_letter_topic: None,
            max_in_flight: 4096,
            recovery_check: true,
        }
    }
}

impl DeliverySettings {
    /// Checks the settings; problems go to `problems` under `delivery.…`.
    pub(crate) fn check(&self, problems: &mut Problems) {
        problems.require(
            self.max_in_flight > 0,
            "delivery.max_in_flight",
            "must be greater than 0",
        );
        if let Some(dlq) = &self.dead_letter_topic {
            problems.check("delivery.dead_letter_topic", check_topic_name(dlq));
        }
    }

    /// How the producer holds messages in this mode.
    ///
    /// In `spooled` mode messages never time out inside librdkafka: the spool already holds
    /// them durably, and letting librdkafka retry forever keeps per-key order through an
    /// outage. In the other modes the request is waiting, so the timeout is
    /// `publish_timeout`; in `published` mode it waits for its batch too, so batches are
    /// short (1 ms instead of librdkafka's 5).
    pub fn producer_tuning(&self) -> ProducerTuning {
        ProducerTuning {
            message_timeout: match self.ack {
                AckMode::Spooled => None,
                _ => Some(self.publish_timeout),
            },
            linger: Duration::from_millis(match self.ack {
                AckMode::Published => 1,
                _ => 5,
            }),
        }
    }
}

/// What became of an accepted message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepted {
    /// In the producer's queue (`received`).
    Queued,
    /// Confirmed by Kafka (`published`).
    Published(Delivered),
    /// Kafka refused it for good and it went to the dead-letter topic (`published`).
    DeadLettered,
    /// Durably in the spool (`spooled`).
    Spooled,
    /// Already accepted earlier, within the dedupe window: nothing new is published.
    Duplicate,
}

/// Why a message was not taken; every case is answered non-2xx. The sender retries all but
/// [`Refusal::TooLarge`], which no retry can cure.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Refusal {
    /// Its Kafka record (body, key and headers) would be larger than the producer takes
    /// (413): taking it would acknowledge an event Kafka refuses for good.
    #[error("the event's Kafka record would be {size} bytes (body, key and headers); the producer takes at most {limit} (message.max.bytes)")]
    TooLarge { size: usize, limit: usize },
    /// Full queue or spool: come back later (503 with Retry-After).
    #[error("{0}")]
    Busy(&'static str),
    /// Kafka or storage not working right now (503). `answer` is all a sender is told; the
    /// spool's or librdkafka's own words stay in `detail`, which is logged, because they
    /// describe our infrastructure to whoever posts.
    #[error("{answer}: {detail}")]
    Unavailable {
        answer: &'static str,
        detail: String,
    },
    /// Another replica is taking this very event right now (503 with Retry-After): it may
    /// still fail, so this delivery is neither taken nor called a duplicate.
    #[error("another delivery of this event is being taken; retry in {retry_after:?}")]
    InProgress { retry_after: Duration },
}

/// The ack mode in force and what it needs.
#[derive(Clone)]
pub struct Delivery {
    mode: Mode,
    metrics: Arc<Metrics>,
    /// The fleet's dedupe index (`dedupe.shared`), asked before the mode takes an event.
    shared: Option<SharedIndex>,
    /// The largest record the producer takes (its `message.max.bytes`).
    max_record_bytes: usize,
    /// The archive of deliveries, when it is on.
    archive: Option<Archive>,
}

#[derive(Clone)]
enum Mode {
    Received(Direct),
    Published(Direct),
    Spooled { spool: Spool },
}

/// What the modes without a spool write through.
#[derive(Clone)]
struct Direct {
    publisher: Publisher,
    topics: Topics,
    dead_letters: DeadLetters,
    /// How long a request waits for its topic to be created (and, `published`, confirmed).
    timeout: Duration,
}

impl Delivery {
    /// `spooled`: a 2xx once the spool has the event.
    pub fn spooled(spool: Spool, metrics: Arc<Metrics>) -> Delivery {
        Delivery {
            mode: Mode::Spooled { spool },
            metrics,
            shared: None,
            max_record_bytes: DEFAULT_MESSAGE_MAX_BYTES,
            archive: None,
        }
    }

    /// `received` or `published`, straight to the producer.
    pub(crate) fn direct(
        ack: AckMode,
        publisher: Publisher,
        topics: Topics,
        dead_letters: DeadLetters,
        timeout: Duration,
        metrics: Arc<Metrics>,
    ) -> Delivery {
        let direct = Direct {
            publisher,
            topics,
            dead_letters,
            timeout,
        };
        let mode = match ack {
            AckMode::Published => Mode::Published(direct),
            _ => Mode::Received(direct),
        };
        Delivery {
            mode,
            metrics,
            shared: None,
            max_record_bytes: DEFAULT_MESSAGE_MAX_BYTES,
            archive: None,
        }
    }

    /// The same delivery, with every event claimed in the fleet's `index` before it is taken.
    pub fn with_shared_index(self, index: SharedIndex) -> Delivery {
        Delivery {
            shared: Some(index),
            ..self
        }
    }

    /// The same delivery, refusing events whose record would be over `max_record_bytes` (the
    /// producer's `message.max.bytes`; librdkafka's default unless set).
    pub fn with_max_record_bytes(self, max_record_bytes: usize) -> Delivery {
        Delivery {
            max_record_bytes,
            ..self
        }
    }

    /// The same delivery, archiving every delivery of an archived source in `archive` (see
    /// [`crate::archive`]): in the direct modes here, in `spooled` mode through the drain.
    pub fn with_archive(self, archive: Option<Archive>) -> Delivery {
        Delivery { archive, ..self }
    }

    /// Whether deliveries are archived.
    pub fn archives(&self) -> bool {
        self.archive.is_some()
    }

    /// The status a taken event is answered with, for a source whose sender counts
    /// `accepted` as success: 200 in `published` mode (it says where the event is), else
    /// `accepted`.
    pub fn taken_status(&self, accepted: http::StatusCode) -> http::StatusCode {
        match self.mode {
            Mode::Published(_) => http::StatusCode::OK,
            _ => accepted,
        }
    }

    /// Archives a delivery answered without being taken (dropped, or a duplicate): straight
    /// to the producer, as nothing is spooled for it. A full queue is counted as a record the
    /// archive did not take.
    pub fn archive_answered(&self, msg: &Message, outcome: archive::Outcome) {
        if let Some(archive) = &self.archive {
            archive.answered(msg, outcome);
        }
    }

    /// Takes `msg` as the mode promises; with a shared index, only once this replica holds
    /// the event's claim (a retry another replica took is a duplicate, one it is taking now
    /// is refused for a while), and the claim is marked taken or released by the outcome.
    ///
    /// An event whose record the producer would refuse is refused first, before any claim:
    /// spooled, it would be acknowledged and then parked for ever (the dead-letter topic
    /// refuses it too, being as large).
    pub async fn accept(&self, msg: Message) -> Result<Accepted, Refusal> {
        let size = headers::record_size(&msg);
        if size > self.max_record_bytes {
            let limit = self.max_record_bytes;
            return Err(Refusal::TooLarge { size, limit });
        }
        let Some(index) = &self.shared else {
            return self.take(msg).await;
        };
        let ticket = match index.claim(&msg.event_key()).await {
            Claim::Mine(ticket) => ticket,
            Claim::Taken => {
                self.duplicate(&msg);
                return Ok(Accepted::Duplicate);
            }
            Claim::Leased { retry_after } => return Err(Refusal::InProgress { retry_after }),
        };
        // Taking and settling run to the end even if the request goes away meanwhile (the
        // sender hung up, the server is stopping): a claim left unsettled would refuse the
        // event's retries for a whole lease, and an event spooled but never marked could be
        // taken again by another replica once the lease expired.
        let (delivery, index) = (self.clone(), index.clone());
        let settled = tokio::spawn(async move {
            pause_after_claim().await;
            let result = delivery.take(msg).await;
            index.settle(ticket, result.is_ok()).await;
            result
        });
        settled
            .await
            .unwrap_or_else(|e| Err(unavailable("taking the event failed", e)))
    }

    fn duplicate(&self, msg: &Message) {
        self.metrics
            .dedupe_hits
            .get_or_create(&SourceLabels {
                source: msg.source.clone(),
            })
            .inc();
        self.archive_answered(msg, archive::Outcome::Duplicate);
    }

    async fn take(&self, msg: Message) -> Result<Accepted, Refusal> {
        match &self.mode {
            Mode::Spooled { spool } => self.spool(spool, msg).await,
            Mode::Received(direct) => self.queue(direct, msg).await,
            Mode::Published(direct) => self.publish(direct, msg).await,
        }
    }

    /// Spools `msg`, in a span of its request's trace that lasts until its group commit is
    /// durable.
    async fn spool(&self, spool: &Spool, msg: Message) -> Result<Accepted, Refusal> {
        let span = spans::spool_commit(msg.trace.as_ref(), msg.body.len());
        let appended = spool.append(&msg).await;
        if let Err(e) = &appended {
            spans::failed(&span, "spool", e);
        }
        // The span ends here, when the entry is durable (or refused).
        drop(span);
        match appended {
            Ok(Appended::Stored(_)) => Ok(Accepted::Spooled),
            Ok(Appended::Duplicate) => {
                self.duplicate(&msg);
                Ok(Accepted::Duplicate)
            }
            Err(SpoolError::Full) => Err(Refusal::Busy("the spool is full")),
            Err(e) => Err(unavailable("the spool cannot take events right now", e)),
        }
    }

    async fn queue(&self, direct: &Direct, msg: Message) -> Result<Accepted, Refusal> {
        topic_ready(&direct.topics, &msg, direct.timeout).await?;
        self.archive_taken(&msg)?;
        let future = enqueue(&direct.publisher, &msg)?;
        let (metrics, dead_letters) = (self.metrics.clone(), direct.dead_letters.clone());
        // The sender already has its answer; the report only feeds metrics and logs.
        tokio::spawn(async move {
            let result = future.delivered().await;
            record(&metrics, &msg, &result);
            match result {
                Ok(_) => {}
                Err(e) if is_permanent(&e) => {
                    if let Err(why) = dead_letters.send(&msg, &e).await {
                        tracing::error!(event_id = msg.event_id.as_str(), topic = msg.topic.as_str(), error = %e, dead_letter_error = %why, "event lost: Kafka refused it and it could not be dead-lettered (ack = received)");
                    }
                }
                Err(e) => {
                    tracing::error!(event_id = msg.event_id.as_str(), topic = msg.topic.as_str(), error = %e, "event lost: Kafka did not confirm it (ack = received)");
                }
            }
        });
        Ok(Accepted::Queued)
    }

    async fn publish(&self, direct: &Direct, msg: Message) -> Result<Accepted, Refusal> {
        let timeout = direct.timeout;
        topic_ready(&direct.topics, &msg, timeout).await?;
        self.archive_taken(&msg)?;
        let future = enqueue(&direct.publisher, &msg)?;
        let Ok(result) = tokio::time::timeout(timeout, future.delivered()).await else {
            return Err(unavailable(
                "Kafka did not confirm the event in time",
                format!("no delivery report within {timeout:?}"),
            ));
        };
        record(&self.metrics, &msg, &result);
        match result {
            Ok(d) => Ok(Accepted::Published(d)),
            Err(e) if is_permanent(&e) => match direct.dead_letters.send(&msg, &e).await {
                Ok(()) => Ok(Accepted::DeadLettered),
                Err(why) => {
                    tracing::error!(event_id = msg.event_id.as_str(), error = %e, dead_letter_error = %why, "Kafka refused the event for good; answered 503");
                    Err(unavailable("Kafka refused the event", e))
                }
            },
            Err(e) => Err(unavailable("Kafka did not confirm the event", e)),
        }
    }

    /// Archives a taken event just before it is sent (so a full queue refuses both).
    fn archive_taken(&self, msg: &Message) -> Result<(), Refusal> {
        match &self.archive {
            Some(archive) => archive
                .enqueue(msg, archive::Outcome::Taken)
                .map_err(|_| Refusal::Busy("the producer queue is full")),
            None => Ok(()),
        }
    }
}

/// Fault point `delivery::after_claim` (compiled in only with the `fault-points` feature,
/// which only the tests turn on): `FAILPOINTS=delivery::after_claim=return(60000)` holds every
/// claimed event that many milliseconds before it is taken, so a test can kill a replica
/// between its claim and its answer (the fleet tests). An async sleep, not the crate's own
/// `sleep` action, which would block a runtime thread.
async fn pause_after_claim() {
    #[cfg(feature = "fault-points")]
    if let Some(Some(ms)) = fail::eval("delivery::after_claim", |arg| arg) {
        if let Ok(ms) = ms.parse() {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
    }
}

/// Waits for the message's topic to exist (created on its first write), up to `timeout`.
async fn topic_ready(topics: &Topics, msg: &Message, timeout: Duration) -> Result<(), Refusal> {
    match topics.wait_ready(msg, timeout).await {
        true => Ok(()),
        false => Err(unavailable(
            "the event's topic is not ready yet",
            format!(
                "topic '{}' is being created, or the cluster refuses to create it",
                msg.topic
            ),
        )),
    }
}

fn enqueue(publisher: &Publisher, msg: &Message) -> Result<Sending, Refusal> {
    publisher.enqueue(msg).map_err(|e| match e {
        EnqueueError::QueueFull => Refusal::Busy("the producer queue is full"),
        EnqueueError::Refused(e) => unavailable("the producer refused the event", e),
    })
}

/// A 503 whose `answer` the sender reads and whose `detail` only the log does. The warning
/// is throttled: an outage refuses every request, and one line a second says as much.
fn unavailable(answer: &'static str, detail: impl std::fmt::Display) -> Refusal {
    static THROTTLE: std::sync::LazyLock<LogThrottle> =
        std::sync::LazyLock::new(|| LogThrottle::new(Duration::from_secs(1)));
    let detail = detail.to_string();
    if let Some(held_back) = THROTTLE.admit(answer) {
        tracing::warn!(reason = answer, detail = %detail, similar_since_last_line = held_back, "event refused with 503");
    }
    Refusal::Unavailable { answer, detail }
}

/// Counts one delivery report.
pub(crate) fn record(metrics: &Metrics, msg: &Message, result: &Result<Delivered, KafkaError>) {
    match result {
        Ok(_) => {
            metrics.published(&msg.topic);
            let sampled = msg.trace.as_ref().filter(|t| t.is_sampled());
            let trace_id = sampled.map(|t| t.trace_id_hex());
            metrics.publish_latency(msg.age().as_secs_f64(), trace_id);
        }
        Err(e) => {
            metrics
                .publish_errors
                .get_or_create(&ErrorLabels {
                    kind: e
                        .rdkafka_error_code()
                        .map(|c| format!("{c:?}"))
                        .unwrap_or_else(|| "other".into()),
                })
                .inc();
        }
    }
}
