//! Writing archive records: through the process's producer, beside the event itself.

use std::sync::Arc;

use crate::event::{Message, TopicName};
use crate::kafka::{EnqueueError, Publisher};
use crate::metrics::Metrics;
use crate::telemetry::LogThrottle;
use crate::topics::Topics;

use super::record::{headers_of, Outcome};

/// The archive topic and how to reach it; cheap to clone.
///
/// A record the archive fails to take is counted (`eduzz_bridge_archive_failed_total`) and
/// never holds its event back: the event on its topic is the promise, the archive a copy of
/// it for the operator.
#[derive(Clone)]
pub struct Archive {
    publisher: Publisher,
    topic: TopicName,
    topics: Topics,
    metrics: Arc<Metrics>,
}

impl Archive {
    pub fn new(
        publisher: Publisher,
        topic: TopicName,
        topics: Topics,
        metrics: Arc<Metrics>,
    ) -> Archive {
        Archive {
            publisher,
            topic,
            topics,
            metrics,
        }
    }

    /// The archive of a config's `[archive]` (`None`: archiving is off).
    pub fn of(
        topic: Option<&super::ArchiveTopic>,
        publisher: &Publisher,
        topics: &Topics,
        metrics: &Arc<Metrics>,
    ) -> Option<Archive> {
        topic.map(|t| {
            Archive::new(
                publisher.clone(),
                t.name.clone(),
                topics.clone(),
                metrics.clone(),
            )
        })
    }

    /// Hands the archive record of `msg` to the producer, when its source is archived
    /// (`msg.archive` is set), and counts its report when it comes. Only a full producer
    /// queue is an error, so that the caller backs off before sending the event itself.
    pub(crate) fn enqueue(&self, msg: &Message, outcome: Outcome) -> Result<(), EnqueueError> {
        if msg.archive.is_none() {
            return Ok(());
        }
        // Starts creating the topic on its first write; the record waits in the producer
        // until the topic's metadata shows it.
        self.topics
            .ready_for_topic(&self.topic, &msg.source, &msg.slug);
        let future = match self
            .publisher
            .enqueue_to(&self.topic, msg, headers_of(msg, outcome))
        {
            Ok(future) => future,
            Err(EnqueueError::QueueFull) => return Err(EnqueueError::QueueFull),
            Err(EnqueueError::Refused(e)) => {
                self.failed(&msg.event_id, &e);
                return Ok(());
            }
        };
        let archive = self.clone();
        let id = msg.event_id.clone();
        tokio::spawn(async move {
            match future.await {
                Ok(_) => {
                    archive.metrics.archived.inc();
                }
                Err(e) => archive.failed(&id, &e),
            };
        });
        Ok(())
    }

    /// Archives a delivery answered without being taken (dropped, a duplicate), which the
    /// sender was answered 200 for; a full queue counts as a record not taken.
    pub(crate) fn answered(&self, msg: &Message, outcome: Outcome) {
        let mut msg = msg.clone();
        if let Some(a) = &mut msg.archive {
            a.answer = 200;
        }
        if let Err(e) = self.enqueue(&msg, outcome) {
            self.failed(&msg.event_id, &e);
        }
    }

    /// Counts a record the archive did not take; the line is throttled (one a minute says
    /// as much as one per event when the archive topic is refused).
    fn failed(&self, id: &str, error: &dyn std::fmt::Display) {
        static THROTTLE: std::sync::LazyLock<LogThrottle> =
            std::sync::LazyLock::new(|| LogThrottle::new(std::time::Duration::from_secs(60)));
        self.metrics.archive_failed.inc();
        if let Some(held_back) = THROTTLE.admit("archive") {
            tracing::warn!(event_id = %id.escape_debug(), topic = self.topic.as_str(), error = %error, similar_since_last_line = held_back, "the archive did not take a delivery (its event is not affected)");
        }
    }
}
