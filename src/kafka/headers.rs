//! The Kafka headers the bridge writes, and how a [`Message`] becomes them.
//!
//! Consumers find the event's identity in headers without parsing the value (which stays the
//! sender's bytes, untouched); the recovery check finds already-published events by them.

use rdkafka::message::{Header, OwnedHeaders};

use crate::event::Message;

pub const EVENT: &str = "event";
pub const EVENT_ID: &str = "event-id";
pub const SOURCE: &str = "source";
pub const RECEIVED_AT: &str = "received-at";
pub const CONTENT_TYPE: &str = "content-type";
/// On dead-lettered messages: why Kafka refused the original.
pub const DLQ_REASON: &str = "dlq-reason";
/// On dead-lettered messages: the topic it was meant for.
pub const DLQ_TOPIC: &str = "dlq-original-topic";

/// The headers that name the event (slug, id, source, receive time, content type).
pub fn of(msg: &Message) -> OwnedHeaders {
    named(msg, 5)
}

/// The event's headers plus why it was dead-lettered and where it was meant to go.
pub(crate) fn dead_letter(msg: &Message, reason: &str) -> OwnedHeaders {
    named(msg, 7)
        .insert(header(DLQ_REASON, reason))
        .insert(header(DLQ_TOPIC, &msg.topic))
}

fn named(msg: &Message, capacity: usize) -> OwnedHeaders {
    OwnedHeaders::new_with_capacity(capacity)
        .insert(header(EVENT, &msg.slug))
        .insert(header(EVENT_ID, &msg.event_id))
        .insert(header(SOURCE, &msg.source))
        .insert(header(RECEIVED_AT, &msg.received_at()))
        .insert(header(CONTENT_TYPE, &msg.content_type))
}

fn header<'a>(key: &'a str, value: &'a str) -> Header<'a, &'a str> {
    Header {
        key,
        value: Some(value),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::message::Headers;

    fn pairs(h: &OwnedHeaders) -> Vec<(String, String)> {
        h.iter()
            .map(|h| {
                (
                    h.key.to_string(),
                    String::from_utf8_lossy(h.value.unwrap()).into(),
                )
            })
            .collect()
    }

    #[test]
    fn headers_name_the_event() {
        let pairs = pairs(&of(&crate::event::tests::sample()));
        assert_eq!(pairs[0], ("event".into(), "nutror.lesson_started".into()));
        assert_eq!(pairs[1], ("event-id".into(), "abc".into()));
        assert_eq!(pairs[2], ("source".into(), "eduzz".into()));
        assert_eq!(
            pairs[3],
            ("received-at".into(), "2023-11-14T22:13:20.123Z".into())
        );
        assert_eq!(pairs[4], ("content-type".into(), "application/json".into()));
    }

    #[test]
    fn dead_letters_say_why_and_where() {
        let pairs = pairs(&dead_letter(&crate::event::tests::sample(), "too large"));
        assert_eq!(pairs.len(), 7);
        assert_eq!(pairs[5], ("dlq-reason".into(), "too large".into()));
        assert_eq!(
            pairs[6],
            ("dlq-original-topic".into(), "nutror.lesson_started".into())
        );
    }
}
