//! Is Kafka reachable? One shared answer, changed only on real transitions.
//!
//! librdkafka reports a broker that cannot be reached again and again, once per connection
//! attempt. An operator wants one line when an outage starts and one when it ends, with its
//! length. [`KafkaHealth`] keeps that state; the producer's context and a metadata probe
//! feed it, and readiness reads it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

/// Shared reachability state of the Kafka cluster.
#[derive(Debug)]
pub struct KafkaHealth {
    reachable: AtomicBool,
    outage_started: Mutex<Option<Instant>>,
}

impl Default for KafkaHealth {
    fn default() -> Self {
        Self::new()
    }
}

impl KafkaHealth {
    pub fn new() -> Self {
        KafkaHealth {
            // Assume reachable until told otherwise: the first probe runs right away.
            reachable: AtomicBool::new(true),
            outage_started: Mutex::new(None),
        }
    }

    pub(crate) fn is_reachable(&self) -> bool {
        self.reachable.load(Ordering::Relaxed)
    }

    /// Records that Kafka could not be reached; logs only when this starts an outage.
    pub(crate) fn mark_down(&self, why: &str) {
        if self.reachable.swap(false, Ordering::Relaxed) {
            *self.outage_started.lock().unwrap() = Some(Instant::now());
            tracing::warn!(reason = why, "Kafka unreachable: outage started; events wait (spooled mode) or are refused with 503");
        }
    }

    /// Records that Kafka answered; logs only when this ends an outage.
    pub(crate) fn mark_up(&self) {
        if !self.reachable.swap(true, Ordering::Relaxed) {
            let lasted = self
                .outage_started
                .lock()
                .unwrap()
                .take()
                .map(|t| t.elapsed())
                .unwrap_or_default();
            tracing::info!(
                outage_seconds = lasted.as_secs_f64(),
                "Kafka reachable again: outage ended"
            );
        }
    }
}

/// The producer's librdkafka context: routes librdkafka's logs into `tracing` (at debug, as
/// they repeat per connection attempt) and turns its error callbacks into [`KafkaHealth`].
/// Its delivery callback is in [`super::report`].
#[derive(Clone)]
pub(super) struct BridgeContext {
    pub health: std::sync::Arc<KafkaHealth>,
}

impl ClientContext for BridgeContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => {
                tracing::debug!(target: "librdkafka", facility = fac, "{message}")
            }
            _ => tracing::trace!(target: "librdkafka", facility = fac, "{message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        match error.rdkafka_error_code() {
            Some(RDKafkaErrorCode::AllBrokersDown) => self.health.mark_down(reason),
            Some(RDKafkaErrorCode::BrokerTransportFailure) => {
                tracing::debug!(target: "librdkafka", %error, reason, "broker connection failed")
            }
            Some(RDKafkaErrorCode::Fatal) => {
                tracing::error!(%error, reason, "Kafka producer hit a fatal error")
            }
            _ => tracing::warn!(%error, reason, "Kafka client error"),
        }
    }
}
