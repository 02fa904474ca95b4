//! What travels down the pipeline: an authenticated [`Event`], and the routed [`Message`]
//! that becomes one Kafka record.
//!
//! These are the bottom of the module graph: plain data that every stage can name without
//! depending on the stage that made it. Nothing here knows about HTTP or Kafka's client.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// An authenticated, parsed delivery.
#[derive(Debug, Clone)]
pub struct Event {
    pub source: Arc<str>,
    pub slug: String,
    pub id: String,
    /// The parsed body, for routing (message keys come from it).
    pub doc: serde_json::Value,
    /// The raw body exactly as received; this is what gets published.
    pub body: Bytes,
    pub content_type: String,
    pub received_at: SystemTime,
}

impl Event {
    /// Eduzz's activation event: always answered 2xx.
    pub(crate) fn is_ping(&self) -> bool {
        self.slug == "ping"
    }
}

/// One event on its way to Kafka.
///
/// A `Message` is what crosses from the request side to the publishing side, whether it goes
/// straight to the producer or waits in the spool first, so it holds everything the publish
/// needs and nothing from HTTP. It serialises compactly (postcard) for the spool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub topic: String,
    pub key: Bytes,
    pub source: String,
    pub slug: String,
    pub event_id: String,
    /// Receive time, milliseconds since the Unix epoch.
    pub received_at_ms: u64,
    pub content_type: String,
    /// The request body, byte for byte.
    pub body: Bytes,
}

impl Message {
    /// The message for `event`, routed to `topic` under `key`.
    pub fn new(event: &Event, topic: String, key: Vec<u8>) -> Message {
        Message {
            topic,
            key: Bytes::from(key),
            source: event.source.to_string(),
            slug: event.slug.clone(),
            event_id: event.id.clone(),
            received_at_ms: unix_ms(event.received_at),
            content_type: event.content_type.clone(),
            body: event.body.clone(),
        }
    }

    /// Bytes this message occupies in the spool (what `spool.max_bytes` counts).
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("a Message always serialises")
    }

    pub fn decode(bytes: &[u8]) -> Result<Message, postcard::Error> {
        postcard::from_bytes(bytes)
    }

    /// Age of the message now.
    pub(crate) fn age(&self) -> Duration {
        SystemTime::now()
            .duration_since(UNIX_EPOCH + Duration::from_millis(self.received_at_ms))
            .unwrap_or_default()
    }

    /// The receive time as RFC 3339 (what the `received-at` header carries).
    pub fn received_at(&self) -> String {
        rfc3339_ms(self.received_at_ms)
    }
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

/// `2026-11-24T06:16:15.123Z`
pub(crate) fn rfc3339_ms(ms: u64) -> String {
    let t = time::OffsetDateTime::UNIX_EPOCH + time::Duration::milliseconds(ms as i64);
    let f = time::format_description::well_known::Rfc3339;
    t.format(&f).unwrap_or_else(|_| ms.to_string())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample() -> Message {
        Message {
            topic: "nutror.lesson_started".into(),
            key: Bytes::from_static(b"k"),
            source: "eduzz".into(),
            slug: "nutror.lesson_started".into(),
            event_id: "abc".into(),
            received_at_ms: 1_700_000_000_123,
            content_type: "application/json".into(),
            body: Bytes::from_static(b"{\"x\":\"\xc3\xa9\"}"),
        }
    }

    #[test]
    fn encoding_round_trips_byte_exact() {
        let m = sample();
        assert_eq!(Message::decode(&m.encode()).unwrap(), m);
    }

    #[test]
    fn receive_time_is_rfc3339_utc() {
        assert_eq!(rfc3339_ms(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
    }
}
