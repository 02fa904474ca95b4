//! The record the bridge publishes: a routed event, ready for Kafka.
//!
//! A [`Message`] is what crosses from the request side to the publishing side, whether it
//! goes straight to the producer or waits in the spool first, so it holds everything the
//! publish needs and nothing from HTTP. It serialises compactly (postcard) for the spool.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use rdkafka::message::{Header, OwnedHeaders};
use serde::{Deserialize, Serialize};

use crate::source::Event;

/// Kafka header names set on every published message.
pub mod headers {
    pub const EVENT: &str = "event";
    pub const EVENT_ID: &str = "event-id";
    pub const SOURCE: &str = "source";
    pub const RECEIVED_AT: &str = "received-at";
    pub const CONTENT_TYPE: &str = "content-type";
    /// On dead-lettered messages: why Kafka refused the original.
    pub const DLQ_REASON: &str = "dlq-reason";
    /// On dead-lettered messages: the topic it was meant for.
    pub const DLQ_TOPIC: &str = "dlq-original-topic";
}

/// One event on its way to Kafka.
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

    /// The Kafka headers that name the event (slug, id, source, receive time, content type).
    pub fn kafka_headers(&self) -> OwnedHeaders {
        let received_at = rfc3339_ms(self.received_at_ms);
        OwnedHeaders::new_with_capacity(5)
            .insert(header(headers::EVENT, &self.slug))
            .insert(header(headers::EVENT_ID, &self.event_id))
            .insert(header(headers::SOURCE, &self.source))
            .insert(header(headers::RECEIVED_AT, &received_at))
            .insert(header(headers::CONTENT_TYPE, &self.content_type))
    }

    /// Bytes this message occupies in the spool (what `spool.max_bytes` counts).
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("a Message always serialises")
    }

    pub fn decode(bytes: &[u8]) -> Result<Message, postcard::Error> {
        postcard::from_bytes(bytes)
    }

    /// Age of the message now.
    pub fn age(&self) -> Duration {
        SystemTime::now()
            .duration_since(UNIX_EPOCH + Duration::from_millis(self.received_at_ms))
            .unwrap_or_default()
    }
}

fn header<'a>(key: &'a str, value: &'a str) -> Header<'a, &'a str> {
    Header {
        key,
        value: Some(value),
    }
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

/// `2026-11-24T06:16:15.123Z`
pub fn rfc3339_ms(ms: u64) -> String {
    let t = time::OffsetDateTime::UNIX_EPOCH + time::Duration::milliseconds(ms as i64);
    let f = time::format_description::well_known::Rfc3339;
    t.format(&f).unwrap_or_else(|_| ms.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Message {
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

    #[test]
    fn headers_name_the_event() {
        use rdkafka::message::Headers;
        let h = sample().kafka_headers();
        let pairs: Vec<(String, String)> = h
            .iter()
            .map(|h| {
                (
                    h.key.to_string(),
                    String::from_utf8_lossy(h.value.unwrap()).into(),
                )
            })
            .collect();
        assert_eq!(pairs[0], ("event".into(), "nutror.lesson_started".into()));
        assert_eq!(pairs[1], ("event-id".into(), "abc".into()));
        assert_eq!(pairs[2], ("source".into(), "eduzz".into()));
        assert_eq!(
            pairs[3],
            ("received-at".into(), "2023-11-14T22:13:20.123Z".into())
        );
        assert_eq!(pairs[4], ("content-type".into(), "application/json".into()));
    }
}
