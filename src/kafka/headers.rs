//! The Kafka headers the bridge writes, and how a [`Message`] becomes them.
//!
//! Consumers find the event's identity in headers without parsing the value (which stays the
//! sender's bytes, untouched); the recovery check finds already-published events by them.
//!
//! Sources that publish CloudEvents add the attributes of the Kafka protocol binding, binary
//! content mode (`ce_specversion`, `ce_id`, `ce_source`, `ce_type`, `ce_time`, `ce_subject`,
//! with `content-type` as the data's content type), so any CloudEvents SDK reads the message
//! as an event whose data is the body.

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
pub const CE_SPECVERSION: &str = "ce_specversion";
pub const CE_ID: &str = "ce_id";
pub const CE_SOURCE: &str = "ce_source";
pub const CE_TYPE: &str = "ce_type";
pub const CE_TIME: &str = "ce_time";
pub const CE_SUBJECT: &str = "ce_subject";

/// The headers of a published message: the bridge's own (slug, id, source, receive time,
/// content type), and the CloudEvents attributes for sources that publish them.
pub fn of(msg: &Message) -> OwnedHeaders {
    let Some(ce) = &msg.cloudevent else {
        return named(msg, 5);
    };
    let headers = match ce.bridge_headers {
        true => named(msg, 11),
        false => OwnedHeaders::new_with_capacity(7).insert(header(CONTENT_TYPE, &msg.content_type)),
    };
    let headers = headers
        .insert(header(CE_SPECVERSION, "1.0"))
        .insert(header(CE_ID, &msg.event_id))
        .insert(header(CE_SOURCE, &ce.source))
        .insert(header(CE_TYPE, &ce.kind));
    let headers = match &ce.time {
        Some(t) => headers.insert(header(CE_TIME, t)),
        None => headers,
    };
    match &ce.subject {
        Some(s) => headers.insert(header(CE_SUBJECT, s)),
        None => headers,
    }
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
    fn cloudevents_attributes_follow_the_bridge_headers() {
        let pairs = pairs(&of(&crate::event::tests::with_cloudevent(true)));
        let keys: Vec<&str> = pairs.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "event",
                "event-id",
                "source",
                "received-at",
                "content-type",
                "ce_specversion",
                "ce_id",
                "ce_source",
                "ce_type",
                "ce_time",
                "ce_subject"
            ]
        );
        assert_eq!(pairs[5].1, "1.0");
        assert_eq!(pairs[6].1, "abc");
        assert_eq!(pairs[8].1, "com.eduzz.nutror.lesson_started");
    }

    #[test]
    fn cloudevents_alone_keep_the_content_type() {
        let pairs = pairs(&of(&crate::event::tests::with_cloudevent(false)));
        let keys: Vec<&str> = pairs.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "content-type",
                "ce_specversion",
                "ce_id",
                "ce_source",
                "ce_type",
                "ce_time",
                "ce_subject"
            ]
        );
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
