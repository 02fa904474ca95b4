//! Dead letters: where an event goes when Kafka refuses it for good (too large, topic invalid
//! or not authorised), so one bad event neither blocks the rest nor disappears.
//!
//! Every path that can meet such a refusal (the `received` and `published` modes, and the
//! spool's drain) sends through this one type, so the headers, the metric and the "no topic
//! configured" case are the same everywhere.

use std::sync::Arc;

use rdkafka::error::KafkaError;

use crate::event::Message;
use crate::kafka::{headers, EnqueueError, Publisher, ReportTo, Sending};
use crate::metrics::Metrics;

/// Why an event could not be dead-lettered.
#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    #[error("no delivery.dead_letter_topic is configured")]
    NoTopic,
    #[error("the dead-letter topic did not take the event")]
    Enqueue(#[source] EnqueueError),
    #[error("Kafka did not confirm the dead letter")]
    Delivery(#[source] KafkaError),
}

/// The dead-letter topic, if any, and how to reach it.
#[derive(Clone)]
pub struct DeadLetters {
    publisher: Publisher,
    topic: Option<String>,
    metrics: Arc<Metrics>,
}

impl DeadLetters {
    pub fn new(publisher: Publisher, topic: Option<String>, metrics: Arc<Metrics>) -> Self {
        DeadLetters {
            publisher,
            topic,
            metrics,
        }
    }

    /// Hands `msg` to the producer for the dead-letter topic, with `error` as its reason.
    pub(crate) fn enqueue(
        &self,
        msg: &Message,
        error: &KafkaError,
    ) -> Result<Sending, DeadLetterError> {
        let (to, delivery) = ReportTo::waiter();
        self.enqueue_reporting(msg, error, to)?;
        Ok(Sending::untraced(delivery))
    }

    /// [`DeadLetters::enqueue`], reporting to `to`.
    pub(crate) fn enqueue_reporting(
        &self,
        msg: &Message,
        error: &KafkaError,
        to: ReportTo,
    ) -> Result<(), DeadLetterError> {
        let topic = self.topic.as_deref().ok_or(DeadLetterError::NoTopic)?;
        let headers = headers::dead_letter(msg, &error.to_string());
        self.publisher
            .send(topic, msg, headers, to)
            .map_err(DeadLetterError::Enqueue)
    }

    /// Counts a dead letter Kafka confirmed.
    pub(crate) fn confirmed(&self) {
        self.metrics.dead_lettered.inc();
    }

    /// Sends `msg` to the dead-letter topic and waits for Kafka's confirmation.
    pub async fn send(&self, msg: &Message, error: &KafkaError) -> Result<(), DeadLetterError> {
        let future = self.enqueue(msg, error)?;
        future
            .delivered()
            .await
            .map_err(DeadLetterError::Delivery)?;
        self.confirmed();
        Ok(())
    }
}
