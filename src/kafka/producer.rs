//! The producer: one idempotent producer (`enable.idempotence=true`, `acks=all`) for the
//! whole process.
//!
//! [`Publisher::enqueue`] hands a [`Message`] to librdkafka's queue without blocking; its
//! delivery report goes where the caller says (see [`super::report`]): to a future for a
//! request in a direct ack mode, or to the drain's queue of reports. What to do with the
//! report lives with the caller.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::error::KafkaError;
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;

use super::health::{BridgeContext, KafkaHealth};
use super::report::{Delivery, Outcome, ReportTo};
use super::{headers, Cluster, ProducerTuning};
use crate::event::Message;
use crate::telemetry::spans;

pub use super::report::Delivered;

/// Why a message could not be handed to the producer.
#[derive(Debug, thiserror::Error)]
pub enum EnqueueError {
    /// librdkafka's queue is full: back off and try again.
    #[error("the producer queue is full")]
    QueueFull,
    #[error("the producer refused the message")]
    Refused(#[source] KafkaError),
}

/// Whether Kafka will refuse this message however often it is retried.
///
/// Anything else (timeouts, a broker going away, a purge at shutdown) is worth retrying.
pub(crate) fn is_permanent(error: &KafkaError) -> bool {
    use RDKafkaErrorCode::*;
    matches!(
        error.rdkafka_error_code(),
        Some(
            MessageSizeTooLarge
                | InvalidMessageSize
                | InvalidMessage
                | InvalidRecord
                | InvalidTopic
                | UnknownTopic
                | UnknownTopicOrPartition
                | TopicAuthorizationFailed
                | ClusterAuthorizationFailed
                | PolicyViolation
                | UnsupportedForMessageFormat
        )
    )
}

/// A message handed to the producer: its delivery report to come, and the producer span of
/// its publish, which ends with the report.
pub struct Sending {
    delivery: Delivery,
    span: tracing::Span,
}

impl Sending {
    /// A message sent outside any trace (a dead letter, whose headers keep the event's own
    /// trace context).
    pub fn untraced(delivery: Delivery) -> Sending {
        Sending {
            delivery,
            span: tracing::Span::none(),
        }
    }

    /// Waits for the delivery report; the span gets the partition and offset, or the error.
    pub async fn delivered(self) -> Outcome {
        let outcome = self.delivery.await;
        settle(&self.span, &outcome);
        outcome
    }
}

/// Ends the producer span of a message with its outcome.
pub(crate) fn settle(span: &tracing::Span, outcome: &Outcome) {
    match outcome {
        Ok(d) => spans::published(span, d.partition, d.offset),
        Err(e) => spans::failed(span, error_type(e), e),
    }
}

/// A low-cardinality name of a Kafka error, for `error.type`.
fn error_type(e: &KafkaError) -> &'static str {
    match e.rdkafka_error_code() {
        Some(RDKafkaErrorCode::MessageSizeTooLarge) => "message_size_too_large",
        Some(RDKafkaErrorCode::MessageTimedOut) => "message_timed_out",
        Some(RDKafkaErrorCode::PurgeQueue | RDKafkaErrorCode::PurgeInflight) => "purged",
        _ if is_permanent(e) => "refused",
        _ => "_OTHER",
    }
}

/// The process's Kafka producer; cheap to clone.
#[derive(Clone)]
pub struct Publisher {
    producer: ThreadedProducer<BridgeContext>,
    health: Arc<KafkaHealth>,
}

impl Publisher {
    /// Creates the producer for `connection`.
    pub fn new(connection: &Cluster, tuning: ProducerTuning) -> Result<Publisher, KafkaError> {
        let health = Arc::new(KafkaHealth::new());
        let producer = connection
            .producer_config(tuning)
            .create_with_context(BridgeContext {
                health: health.clone(),
            })?;
        Ok(Publisher { producer, health })
    }

    pub fn health(&self) -> &Arc<KafkaHealth> {
        &self.health
    }

    /// Messages handed to librdkafka and not yet reported on.
    pub(crate) fn queue_depth(&self) -> i32 {
        self.producer.in_flight_count()
    }

    /// Hands `msg` to the producer queue for its own topic; never blocks. Its producer span
    /// starts here, a child of the request that brought the event, and its `traceparent`
    /// names that span.
    pub(crate) fn enqueue(&self, msg: &Message) -> Result<Sending, EnqueueError> {
        let (to, delivery) = ReportTo::waiter();
        let span = self.enqueue_reporting(msg, to)?;
        Ok(Sending { delivery, span })
    }

    /// [`Publisher::enqueue`], reporting to `to`; returns the producer span, for the caller
    /// to [`settle`] with the report.
    pub(crate) fn enqueue_reporting(
        &self,
        msg: &Message,
        to: ReportTo,
    ) -> Result<tracing::Span, EnqueueError> {
        let span = spans::publish(&msg.topic, &msg.event_id, msg.trace.as_ref());
        let at = spans::position(&span);
        let trace = match (&msg.trace, &at) {
            (Some(stored), Some(at)) => Some(stored.at(at)),
            (stored, _) => stored.clone(),
        };
        let headers = headers::of_traced(msg, trace.as_ref());
        if let Err(e) = self.send(&msg.topic, msg, headers, to) {
            spans::failed(&span, "enqueue", &e);
            return Err(e);
        }
        Ok(span)
    }

    /// Hands `msg` to the producer queue for `topic` with `headers`; never blocks.
    pub(crate) fn enqueue_to(
        &self,
        topic: &str,
        msg: &Message,
        headers: OwnedHeaders,
    ) -> Result<Delivery, EnqueueError> {
        let (to, delivery) = ReportTo::waiter();
        self.send(topic, msg, headers, to)?;
        Ok(delivery)
    }

    /// Hands `msg` to the producer queue for `topic` with `headers`, its report to go to
    /// `to`; never blocks.
    pub(crate) fn send(
        &self,
        topic: &str,
        msg: &Message,
        headers: OwnedHeaders,
        to: ReportTo,
    ) -> Result<(), EnqueueError> {
        let record = BaseRecord::with_opaque_to(topic, Box::new(to))
            .payload(msg.body.as_ref())
            .key(msg.key.as_ref())
            .headers(headers);
        self.producer.send(record).map_err(|(e, _)| {
            if e.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull) {
                EnqueueError::QueueFull
            } else {
                EnqueueError::Refused(e)
            }
        })
    }

    /// Waits up to `timeout` for every queued message to be reported on.
    pub async fn flush(&self, timeout: Duration) -> bool {
        let producer = self.producer.clone();
        tokio::task::spawn_blocking(move || producer.flush(timeout).is_ok())
            .await
            .unwrap_or(false)
    }

    /// Drops every message not yet confirmed (their delivery reports say so), so that closing
    /// the producer does not wait for a broker that is not answering.
    pub(crate) fn purge(&self) {
        self.producer
            .purge(rdkafka::producer::PurgeConfig::default().queue().inflight());
    }

    /// Asks the cluster for the metadata of every topic, which librdkafka takes into its cache:
    /// a topic that was refused (not authorised) is written again at once once allowed.
    pub(crate) async fn refresh_metadata(&self) {
        let producer = self.producer.clone();
        let _ = tokio::task::spawn_blocking(move || {
            let _ = producer
                .client()
                .fetch_metadata(None, Duration::from_secs(5));
        })
        .await;
    }

    /// Hands `msg` to the producer for `topic` with the headers `headers` makes, waiting
    /// while the queue is full: for the tools that send in bulk (`replay`, `dead-letters
    /// redrive`), which can wait where a request cannot. A refusal is returned.
    pub(crate) async fn enqueue_when_room(
        &self,
        topic: &str,
        msg: &Message,
        headers: impl Fn() -> OwnedHeaders,
    ) -> Result<Delivery, KafkaError> {
        loop {
            match self.enqueue_to(topic, msg, headers()) {
                Ok(future) => return Ok(future),
                Err(EnqueueError::QueueFull) => tokio::time::sleep(Duration::from_millis(20)).await,
                Err(EnqueueError::Refused(e)) => return Err(e),
            }
        }
    }

    /// Asks the cluster for the metadata of `topic` (one topic, so the probe costs the same
    /// however many topics the cluster holds; a missing topic is still an answer); updates
    /// [`KafkaHealth`] either way.
    pub async fn probe(&self, topic: &str, timeout: Duration) -> bool {
        let producer = self.producer.clone();
        let topic = topic.to_string();
        let ok = tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(Some(&topic), timeout)
                .is_ok()
        })
        .await
        .unwrap_or(false);
        if ok {
            self.health.mark_up();
        } else {
            self.health.mark_down("metadata request failed");
        }
        ok
    }
}
