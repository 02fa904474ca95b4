//! The drain's seam to Kafka: hand a message over, and later hear how it went.
//!
//! The drain is a state machine around "enqueue; get a delivery report". Reports come back
//! on the drain's one queue, tagged with the token it gave each message (see
//! [`crate::kafka::report`]). Behind [`Sink`] in production is the idempotent producer
//! ([`KafkaSink`]); the drain's tests put a fake there that refuses with a full queue, fails
//! deliveries, or holds their reports until released, so fairness, ordering and the stop
//! deadline are tested in milliseconds of paused time.

use rdkafka::error::KafkaError;
use tokio::sync::watch;

use crate::archive::{self, Archive};
use crate::delivery::{DeadLetterError, DeadLetters};
use crate::event::Message;
use crate::kafka::{self, EnqueueError, Outcome, Publisher, ReportTo};
use crate::topics::Topics;

/// Where the drain sends messages, and what it asks about their topics.
pub trait Sink: Send + Sync + 'static {
    /// What the drain keeps of a message until its report comes (the producer span).
    type Pending: Send + 'static;

    /// Hands `msg` over for its own topic, its report to go to `to`; never blocks.
    fn enqueue(&self, msg: &Message, to: ReportTo) -> Result<Self::Pending, EnqueueError>;

    /// Hands `msg` over for the dead-letter topic, Kafka having refused it for good with
    /// `error`; its report goes to `to`.
    fn enqueue_dead_letter(
        &self,
        msg: &Message,
        error: &KafkaError,
        to: ReportTo,
    ) -> Result<Self::Pending, DeadLetterError>;

    /// The report of a message handed over came back.
    fn settle(pending: Self::Pending, outcome: &Outcome);

    /// Whether `msg`'s topic can be written now (starts making it ready if not).
    fn topic_ready(&self, msg: &Message) -> bool;

    /// Whether `topic` is known ready.
    fn topic_is_ready(&self, topic: &str) -> bool;

    /// Changes each time a topic becomes ready; `None` when topics are not provisioned.
    fn topics_ready(&self) -> Option<watch::Receiver<u64>>;

    /// A message reached its own topic: Kafka is up.
    fn published(&self);

    /// A message reached the dead-letter topic.
    fn dead_lettered(&self);

    /// Forgets what the producer learnt of topics (an authorisation error is remembered until
    /// its next metadata refresh, minutes away): before parked events are sent again.
    fn refresh_metadata(&self) -> impl std::future::Future<Output = ()> + Send;
}

/// The real thing: the process's producer and its dead-letter topic.
pub struct KafkaSink {
    pub(crate) publisher: Publisher,
    pub(crate) topics: Topics,
    pub(crate) dead_letters: DeadLetters,
    /// The archive each event's record goes to first, when it is on.
    pub(crate) archive: Option<Archive>,
}

impl Sink for KafkaSink {
    type Pending = tracing::Span;

    /// The archive record first: a full queue then refuses both, and an event sent again
    /// after a failure is archived again (readers drop the repeat), so every event that
    /// reached its topic is in the archive.
    fn enqueue(&self, msg: &Message, to: ReportTo) -> Result<tracing::Span, EnqueueError> {
        if let Some(archive) = &self.archive {
            archive.enqueue(msg, archive::Outcome::Taken)?;
        }
        self.publisher.enqueue_reporting(msg, to)
    }

    fn enqueue_dead_letter(
        &self,
        msg: &Message,
        error: &KafkaError,
        to: ReportTo,
    ) -> Result<tracing::Span, DeadLetterError> {
        self.dead_letters.enqueue_reporting(msg, error, to)?;
        Ok(tracing::Span::none())
    }

    fn settle(span: tracing::Span, outcome: &Outcome) {
        kafka::settle(&span, outcome);
    }

    fn topic_ready(&self, msg: &Message) -> bool {
        self.topics.ready_for(msg)
    }

    fn topic_is_ready(&self, topic: &str) -> bool {
        self.topics.is_ready(topic)
    }

    fn topics_ready(&self) -> Option<watch::Receiver<u64>> {
        self.topics.changes()
    }

    fn published(&self) {
        self.publisher.health().mark_up();
    }

    fn dead_lettered(&self) {
        self.dead_letters.confirmed();
    }

    async fn refresh_metadata(&self) {
        self.publisher.refresh_metadata().await;
    }
}
