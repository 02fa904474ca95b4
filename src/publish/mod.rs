//! Publishing to Kafka: the producer, its settings, and what a refusal means.
//!
//! One idempotent producer (`enable.idempotence=true`, `acks=all`) serves the whole process.
//! [`Publisher::enqueue`] hands a [`Message`] to librdkafka's queue without blocking and returns
//! the future of its delivery report; what to do with that report depends on the ack mode and
//! lives with the caller (the HTTP handler, or the spool [`drain`]).

pub mod drain;
pub mod health;
pub mod recover;

use std::sync::Arc;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;

use crate::config::{AckMode, Settings};
use crate::message::{headers, Message};
pub use health::{BridgeContext, KafkaHealth};

/// Where a message landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    pub partition: i32,
    pub offset: i64,
}

/// Why a message could not be handed to the producer.
#[derive(Debug, thiserror::Error)]
pub enum EnqueueError {
    /// librdkafka's queue is full: back off and try again.
    #[error("the producer queue is full")]
    QueueFull,
    #[error("the producer refused the message: {0}")]
    Refused(KafkaError),
}

/// Whether Kafka will refuse this message however often it is retried.
///
/// Anything else (timeouts, a broker going away, a purge at shutdown) is worth retrying.
pub fn is_permanent(error: &KafkaError) -> bool {
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

/// The process's Kafka producer.
#[derive(Clone)]
pub struct Publisher {
    producer: FutureProducer<BridgeContext>,
    health: Arc<KafkaHealth>,
    dead_letter_topic: Option<String>,
}

impl Publisher {
    /// Creates the producer for `brokers` with the config's properties.
    pub fn new(settings: &Settings, brokers: &str) -> Result<Publisher, KafkaError> {
        let health = Arc::new(KafkaHealth::new());
        let config = producer_config(settings, brokers);
        let producer = config.create_with_context(BridgeContext {
            health: health.clone(),
        })?;
        Ok(Publisher {
            producer,
            health,
            dead_letter_topic: settings.delivery.dead_letter_topic.clone(),
        })
    }

    pub fn health(&self) -> &Arc<KafkaHealth> {
        &self.health
    }

    /// Messages handed to librdkafka and not yet reported on.
    pub fn queue_depth(&self) -> i32 {
        self.producer.in_flight_count()
    }

    /// Hands `msg` to the producer queue; never blocks.
    pub fn enqueue(&self, msg: &Message) -> Result<DeliveryFuture, EnqueueError> {
        self.enqueue_with(&msg.topic, msg, msg.kafka_headers())
    }

    fn enqueue_with(
        &self,
        topic: &str,
        msg: &Message,
        headers: OwnedHeaders,
    ) -> Result<DeliveryFuture, EnqueueError> {
        let record = FutureRecord::to(topic)
            .payload(msg.body.as_ref())
            .key(msg.key.as_ref())
            .headers(headers);
        self.producer.send_result(record).map_err(|(e, _)| {
            if e.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull) {
                EnqueueError::QueueFull
            } else {
                EnqueueError::Refused(e)
            }
        })
    }

    /// Waits for one delivery report.
    pub async fn delivered(future: DeliveryFuture) -> Result<Delivered, KafkaError> {
        match future.await {
            Ok(Ok(d)) => Ok(Delivered {
                partition: d.partition,
                offset: d.offset,
            }),
            Ok(Err((e, _))) => Err(e),
            Err(_) => Err(KafkaError::Canceled),
        }
    }

    /// Sends `msg` to the dead-letter topic, with `reason` in a header, and waits for the
    /// broker. Fails when no dead-letter topic is configured.
    pub async fn dead_letter(&self, msg: &Message, reason: &str) -> Result<Delivered, String> {
        let Some(topic) = &self.dead_letter_topic else {
            return Err("no delivery.dead_letter_topic is configured".into());
        };
        let mut h = OwnedHeaders::new_with_capacity(7);
        for header in msg.kafka_headers().iter() {
            h = h.insert(header);
        }
        let h = h
            .insert(Header {
                key: headers::DLQ_REASON,
                value: Some(reason),
            })
            .insert(Header {
                key: headers::DLQ_TOPIC,
                value: Some(msg.topic.as_str()),
            });
        let future = self
            .enqueue_with(topic, msg, h)
            .map_err(|e| e.to_string())?;
        Publisher::delivered(future)
            .await
            .map_err(|e| e.to_string())
    }

    /// Waits up to `timeout` for every queued message to be reported on.
    pub async fn flush(&self, timeout: Duration) -> bool {
        let producer = self.producer.clone();
        tokio::task::spawn_blocking(move || producer.flush(timeout).is_ok())
            .await
            .unwrap_or(false)
    }

    /// Asks the cluster for its metadata; updates [`KafkaHealth`] either way.
    pub async fn probe(&self, timeout: Duration) -> bool {
        let producer = self.producer.clone();
        let ok = tokio::task::spawn_blocking(move || {
            producer.client().fetch_metadata(None, timeout).is_ok()
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

/// Client settings for reading back from the same cluster (the recovery check).
pub fn reader_config(settings: &Settings, brokers: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    for (k, v) in &settings.kafka.properties {
        c.set(k, v.to_string());
    }
    c.set("bootstrap.servers", brokers)
        .set("group.id", "eduzz-kafka-bridge-recovery")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .set("log_level", "3");
    c
}

/// The librdkafka configuration of the producer.
///
/// In `spooled` mode messages never time out inside librdkafka (`message.timeout.ms=0`): the
/// spool already holds them durably, and letting librdkafka retry forever keeps per-key
/// order through an outage. In the other modes the request is waiting, so the timeout is the
/// configured `publish_timeout`.
pub fn producer_config(settings: &Settings, brokers: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    let timeout_ms = match settings.delivery.ack {
        AckMode::Spooled => 0,
        _ => settings.delivery.publish_timeout.as_millis().max(1) as u64,
    };
    // In `published` mode a request waits for its batch: batch for 1 ms, not librdkafka's 5.
    let linger_ms = match settings.delivery.ack {
        AckMode::Published => "1",
        _ => "5",
    };
    c.set("bootstrap.servers", brokers)
        .set("client.id", "eduzz-kafka-bridge")
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", linger_ms)
        .set("message.timeout.ms", timeout_ms.to_string())
        .set("socket.keepalive.enable", "true");
    for (k, v) in &settings.kafka.properties {
        let v = v.to_string();
        let weakens = match k.as_str() {
            "enable.idempotence" => v != "true",
            "acks" | "request.required.acks" => v != "all" && v != "-1",
            _ => false,
        };
        if weakens {
            tracing::warn!(property = %k, value = %v, "kafka.properties weakens the delivery guarantee (idempotence, acks=all)");
        }
        c.set(k, v);
    }
    c
}
