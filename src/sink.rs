//! Taking a routed message: what "acknowledged" means in each ack mode.
//!
//! | mode        | answered 2xx once…                         | lost on a crash?             |
//! |-------------|--------------------------------------------|------------------------------|
//! | `spooled`   | it is fsynced in the local spool           | no                           |
//! | `published` | Kafka confirmed it (acks=all)              | no (the sender waits longer) |
//! | `received`  | it is in the producer's memory queue       | yes, what was queued         |
//!
//! The HTTP handler calls [`Sink::accept`] and turns the result into an answer; it never
//! needs to know which mode is on.

use std::sync::Arc;
use std::time::Duration;

use crate::message::Message;
use crate::metrics::{ErrorLabels, Metrics, SourceLabels, TopicLabels};
use crate::publish::{is_permanent, Delivered, EnqueueError, Publisher};
use crate::spool::{Appended, Spool, SpoolError};

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

/// Why a message was not taken; every case is answered non-2xx so the sender retries.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Refusal {
    /// Full queue or spool: come back later (503 with Retry-After).
    #[error("{0}")]
    Busy(String),
    /// Kafka or storage not working right now (503).
    #[error("{0}")]
    Unavailable(String),
}

/// The ack mode in force and what it needs.
#[derive(Clone)]
pub enum Sink {
    Received {
        publisher: Publisher,
        metrics: Arc<Metrics>,
    },
    Published {
        publisher: Publisher,
        timeout: Duration,
        metrics: Arc<Metrics>,
    },
    Spooled {
        spool: Spool,
        metrics: Arc<Metrics>,
    },
}

impl Sink {
    pub async fn accept(&self, msg: Message) -> Result<Accepted, Refusal> {
        match self {
            Sink::Spooled { spool, metrics } => match spool.append(&msg).await {
                Ok(Appended::Stored(_)) => Ok(Accepted::Spooled),
                Ok(Appended::Duplicate) => {
                    metrics
                        .dedupe_hits
                        .get_or_create(&SourceLabels {
                            source: msg.source.clone(),
                        })
                        .inc();
                    Ok(Accepted::Duplicate)
                }
                Err(SpoolError::Full) => Err(Refusal::Busy("the spool is full".into())),
                Err(e) => Err(Refusal::Unavailable(e.to_string())),
            },
            Sink::Received { publisher, metrics } => {
                let future = enqueue(publisher, &msg)?;
                let (publisher, metrics) = (publisher.clone(), metrics.clone());
                // The sender already has its answer; the report only feeds metrics and logs.
                tokio::spawn(async move {
                    let result = Publisher::delivered(future).await;
                    record(&metrics, &msg, &result);
                    if let Err(e) = result {
                        if is_permanent(&e) {
                            if let Err(why) = dead_letter(&publisher, &metrics, &msg, &e).await {
                                tracing::error!(event_id = %msg.event_id, topic = %msg.topic, error = %e, dead_letter_error = %why, "event lost: Kafka refused it and it could not be dead-lettered (ack = received)");
                            }
                        } else {
                            tracing::error!(event_id = %msg.event_id, topic = %msg.topic, error = %e, "event lost: Kafka did not confirm it (ack = received)");
                        }
                    }
                });
                Ok(Accepted::Queued)
            }
            Sink::Published {
                publisher,
                timeout,
                metrics,
            } => {
                let future = enqueue(publisher, &msg)?;
                let result =
                    match tokio::time::timeout(*timeout, Publisher::delivered(future)).await {
                        Ok(r) => r,
                        Err(_) => {
                            return Err(Refusal::Unavailable(
                                "Kafka did not confirm the event in time".into(),
                            ))
                        }
                    };
                record(metrics, &msg, &result);
                match result {
                    Ok(d) => Ok(Accepted::Published(d)),
                    Err(e) if is_permanent(&e) => {
                        match dead_letter(publisher, metrics, &msg, &e).await {
                            Ok(()) => Ok(Accepted::DeadLettered),
                            Err(why) => {
                                tracing::error!(event_id = %msg.event_id, error = %e, dead_letter_error = %why, "Kafka refused the event for good; answered 503");
                                Err(Refusal::Unavailable(format!(
                                    "Kafka refused the event: {e}"
                                )))
                            }
                        }
                    }
                    Err(e) => Err(Refusal::Unavailable(format!(
                        "Kafka did not confirm the event: {e}"
                    ))),
                }
            }
        }
    }
}

fn enqueue(
    publisher: &Publisher,
    msg: &Message,
) -> Result<rdkafka::producer::DeliveryFuture, Refusal> {
    publisher.enqueue(msg).map_err(|e| match e {
        EnqueueError::QueueFull => Refusal::Busy("the producer queue is full".into()),
        EnqueueError::Refused(e) => {
            Refusal::Unavailable(format!("the producer refused the event: {e}"))
        }
    })
}

/// Sends a message Kafka refused for good to the dead-letter topic, and counts it there.
pub async fn dead_letter(
    publisher: &Publisher,
    metrics: &Metrics,
    msg: &Message,
    error: &rdkafka::error::KafkaError,
) -> Result<(), String> {
    publisher.dead_letter(msg, &error.to_string()).await?;
    metrics.dead_lettered.inc();
    Ok(())
}

/// Counts one delivery report.
pub fn record(
    metrics: &Metrics,
    msg: &Message,
    result: &Result<Delivered, rdkafka::error::KafkaError>,
) {
    match result {
        Ok(_) => {
            metrics
                .published
                .get_or_create(&TopicLabels {
                    topic: msg.topic.clone(),
                })
                .inc();
            metrics.publish_latency.observe(msg.age().as_secs_f64());
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
