//! The Kafka headers the bridge writes, and how a [`Message`] becomes them.
//!
//! Consumers find the event's identity in headers without parsing the value (which stays the
//! sender's bytes, untouched); the recovery check finds already-published events by them.
//!
//! Sources that publish CloudEvents add the attributes of the Kafka protocol binding, binary
//! content mode (`ce_specversion`, `ce_id`, `ce_source`, `ce_type`, `ce_time`, `ce_subject`,
//! with `content-type` as the data's content type), so any CloudEvents SDK reads the message
//! as an event whose data is the body.

use rdkafka::message::{BorrowedHeaders, Header, Headers, OwnedHeaders};

use crate::event::{EventKey, Message};
use crate::telemetry::TraceContext;

pub const EVENT: &str = "event";
pub const EVENT_ID: &str = "event-id";
pub const SOURCE: &str = "source";
pub const RECEIVED_AT: &str = "received-at";
pub const CONTENT_TYPE: &str = "content-type";
/// On dead-lettered messages: why Kafka refused the original.
pub const DLQ_REASON: &str = "dlq-reason";
/// On dead-lettered messages: the topic it was meant for.
pub const DLQ_TOPIC: &str = "dlq-original-topic";
/// On replayed messages (`replay`): when it was replayed.
pub const REPLAYED_AT: &str = "replayed-at";
/// On replayed messages: which replay sent it (a resumed replay reads it back).
pub const REPLAY_ID: &str = "replay-id";
/// On re-driven dead letters (`dead-letters redrive`): how many times it was sent back.
pub const REDRIVE_ATTEMPT: &str = "redrive-attempt";
/// On re-driven dead letters: the dead letter it was sent back from (`topic/partition/offset`),
/// so a second redrive knows it is done.
pub const REDRIVEN_FROM: &str = "redriven-from";
pub const CE_SPECVERSION: &str = "ce_specversion";
pub const CE_ID: &str = "ce_id";
pub const CE_SOURCE: &str = "ce_source";
pub const CE_TYPE: &str = "ce_type";
pub const CE_TIME: &str = "ce_time";
pub const CE_SUBJECT: &str = "ce_subject";
/// The W3C trace context of the message's publish (its producer span), for consumers that
/// continue the trace.
pub const TRACEPARENT: &str = crate::telemetry::context::TRACEPARENT;
pub const TRACESTATE: &str = crate::telemetry::context::TRACESTATE;
/// The same for CloudEvents sources, as the CloudEvents distributed-tracing extension names
/// it in the Kafka binding.
pub const CE_TRACEPARENT: &str = "ce_traceparent";
pub const CE_TRACESTATE: &str = "ce_tracestate";

/// The headers of a published message: the bridge's own (slug, id, source, receive time,
/// content type), the CloudEvents attributes for sources that publish them, and the trace
/// context the message was taken in.
pub fn of(msg: &Message) -> OwnedHeaders {
    of_traced(msg, msg.trace.as_ref())
}

/// [`of`], with `trace` (the publish's own position in the message's trace, which differs
/// from the stored one only in its fixed-width span id and flags) as the trace context.
pub fn of_traced(msg: &Message, trace: Option<&TraceContext>) -> OwnedHeaders {
    let capacity = if msg.cloudevent.is_some() { 15 } else { 7 };
    fold(
        msg,
        trace,
        OwnedHeaders::new_with_capacity(capacity),
        |h, key, value| h.insert(header(key, value)),
    )
}

/// What librdkafka adds to a record's key, value and headers when it sizes the record
/// against `message.max.bytes` (`RD_KAFKAP_MESSAGE_V2_MAX_OVERHEAD`): the record's length,
/// attributes, timestamp and offset deltas, key and value lengths and header count, each
/// counted at its widest varint.
pub const RECORD_OVERHEAD: usize = 36;

/// The size of `msg`'s record as librdkafka counts it before it takes the record (a record
/// over `message.max.bytes` is refused with MessageSizeTooLarge, for good): the overhead, the
/// key, the value, and each header's name and value with their varint lengths.
///
/// Worked out from the same headers [`of`] writes, so the two cannot disagree; checked
/// against librdkafka itself in the tests below.
pub fn record_size(msg: &Message) -> usize {
    let headers = fold(msg, msg.trace.as_ref(), 0, |n, key, value| {
        n + key.len() + value.len() + varint_len(key.len()) + varint_len(value.len())
    });
    RECORD_OVERHEAD + msg.key.len() + msg.body.len() + headers
}

/// Bytes of the zigzag varint librdkafka writes a length with.
fn varint_len(len: usize) -> usize {
    let mut zigzag = (len as u64) << 1;
    let mut bytes = 1;
    while zigzag >= 0x80 {
        zigzag >>= 7;
        bytes += 1;
    }
    bytes
}

/// Folds every header of a published message, in order, as (name, value), into `init`.
fn fold<T>(
    msg: &Message,
    trace: Option<&TraceContext>,
    init: T,
    mut add: impl FnMut(T, &str, &str) -> T,
) -> T {
    let acc = fold_event(msg, init, &mut add);
    fold_trace(trace, msg.cloudevent.is_some(), acc, &mut add)
}

/// The trace context's headers: `traceparent` and `tracestate`, and for CloudEvents their
/// `ce_` twins too.
fn fold_trace<T>(
    trace: Option<&TraceContext>,
    cloudevent: bool,
    init: T,
    add: &mut impl FnMut(T, &str, &str) -> T,
) -> T {
    let Some(trace) = trace else {
        return init;
    };
    let parent = trace.traceparent();
    let mut acc = add(init, TRACEPARENT, &parent);
    if let Some(state) = trace.tracestate() {
        acc = add(acc, TRACESTATE, state);
    }
    if cloudevent {
        acc = add(acc, CE_TRACEPARENT, &parent);
        if let Some(state) = trace.tracestate() {
            acc = add(acc, CE_TRACESTATE, state);
        }
    }
    acc
}

/// The event's own headers and its CloudEvents attributes.
fn fold_event<T>(msg: &Message, init: T, add: &mut impl FnMut(T, &str, &str) -> T) -> T {
    let Some(ce) = &msg.cloudevent else {
        return fold_named(msg, init, add);
    };
    let acc = match ce.bridge_headers {
        true => fold_named(msg, init, add),
        false => add(init, CONTENT_TYPE, &msg.content_type),
    };
    let acc = add(acc, CE_SPECVERSION, "1.0");
    let acc = add(acc, CE_ID, &msg.event_id);
    let acc = add(acc, CE_SOURCE, &ce.source);
    let acc = add(acc, CE_TYPE, &ce.kind);
    let acc = match &ce.time {
        Some(t) => add(acc, CE_TIME, t),
        None => acc,
    };
    match &ce.subject {
        Some(s) => add(acc, CE_SUBJECT, s),
        None => acc,
    }
}

/// The bridge's own headers of `msg` (slug, id, source, receive time, content type) and its
/// trace context, whatever its source writes on its topic: what the dead-letter topic and
/// the archive start from.
pub(crate) fn named(msg: &Message) -> OwnedHeaders {
    let add = &mut |h: OwnedHeaders, key: &str, value: &str| h.insert(header(key, value));
    let acc = fold_named(msg, OwnedHeaders::new_with_capacity(14), add);
    fold_trace(msg.trace.as_ref(), false, acc, add)
}

/// The trace context a message's headers carry (`traceparent`, `tracestate`), for a message
/// read back to be sent again (a dead letter re-driven, an archived delivery replayed).
pub(crate) fn read_trace<'a>(
    headers: impl IntoIterator<Item = (&'a str, Option<&'a [u8]>)>,
) -> Option<TraceContext> {
    let mut map = http::HeaderMap::new();
    for (key, value) in headers {
        let name = match key {
            TRACEPARENT => http::header::HeaderName::from_static(TRACEPARENT),
            TRACESTATE => http::header::HeaderName::from_static(TRACESTATE),
            _ => continue,
        };
        let value = value.and_then(|v| http::HeaderValue::from_bytes(v).ok())?;
        map.insert(name, value);
    }
    TraceContext::from_headers(&map)
}

/// The event's headers plus why it was dead-lettered and where it was meant to go.
pub(crate) fn dead_letter(msg: &Message, reason: &str) -> OwnedHeaders {
    named(msg)
        .insert(header(DLQ_REASON, reason))
        .insert(header(DLQ_TOPIC, &msg.topic))
}

/// The key a published message's headers carry, as [`Message::key_on_kafka`] names it: the
/// bridge's own `source` and `event-id`, or `ce:` + `ce_source` and `ce_id` when only
/// CloudEvents headers were written. Recovery reads it; [`fold_named`] and the CloudEvents
/// headers write it.
pub(crate) fn read_key(headers: &BorrowedHeaders) -> Option<EventKey<'static>> {
    read_key_of(headers.iter().map(|h| (h.key, h.value)))
}

/// [`read_key`] over headers as (name, value) pairs, for records already read.
pub(crate) fn read_key_of<'a>(
    headers: impl IntoIterator<Item = (&'a str, Option<&'a [u8]>)>,
) -> Option<EventKey<'static>> {
    let (mut source, mut id, mut ce_source, mut ce_id) = (None, None, None, None);
    for (key, value) in headers {
        let value = value.map(String::from_utf8_lossy);
        match key {
            SOURCE => source = value,
            EVENT_ID => id = value,
            CE_SOURCE => ce_source = value,
            CE_ID => ce_id = value,
            _ => {}
        }
    }
    let key = match (source, id) {
        (Some(source), Some(id)) => EventKey::new(source, id),
        _ => EventKey::new(format!("ce:{}", ce_source?), ce_id?),
    };
    Some(key.into_owned())
}

/// Folds the bridge's own headers into `init`.
fn fold_named<T>(msg: &Message, init: T, add: &mut impl FnMut(T, &str, &str) -> T) -> T {
    let acc = add(init, EVENT, &msg.slug);
    let acc = add(acc, EVENT_ID, &msg.event_id);
    let acc = add(acc, SOURCE, &msg.source);
    let acc = add(acc, RECEIVED_AT, &msg.received_at());
    add(acc, CONTENT_TYPE, &msg.content_type)
}

/// One header, for `OwnedHeaders::insert` (which copies it).
pub(crate) fn header<'a>(key: &'a str, value: &'a str) -> Header<'a, &'a str> {
    Header {
        key,
        value: Some(value),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::tests::{sample, with_cloudevent};
    use rdkafka::message::Headers;

    /// One identity from the request to Kafka and back: the key recovery reads from the
    /// headers written is the key the message names, for every way of writing headers; and
    /// the spool's and Redis's keys are built from the same parts.
    #[test]
    fn the_event_key_written_is_the_event_key_read_back() {
        for msg in [sample(), with_cloudevent(true), with_cloudevent(false)] {
            let written = of(&msg);
            let read = read_key(written.as_borrowed()).expect("the headers name the event");
            assert_eq!(read, msg.key_on_kafka().into_owned());
            let dead = dead_letter(&msg, "why");
            assert_eq!(
                read_key(dead.as_borrowed()),
                Some(msg.event_key().into_owned())
            );
        }
        let msg = sample();
        let key = msg.event_key();
        assert_eq!(key.spool_key(), "eduzz\u{1f}abc");
        assert_eq!(key.redis_key("ekb:"), b"ekb:eduzz\x1fabc");
        let unnamed = OwnedHeaders::new().insert(header(EVENT, "x"));
        assert_eq!(read_key(unnamed.as_borrowed()), None);
    }

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

    /// A producer that only takes records into its queue (nothing is ever sent): librdkafka
    /// checks a record's size against `message.max.bytes` right there.
    fn producer(max: usize) -> rdkafka::producer::BaseProducer {
        rdkafka::ClientConfig::new()
            .set("bootstrap.servers", "127.0.0.1:1")
            .set("message.max.bytes", max.to_string())
            .set("log_level", "0")
            .create()
            .unwrap()
    }

    /// Whether librdkafka takes `msg` into its queue.
    fn takes(producer: &rdkafka::producer::BaseProducer, msg: &Message) -> bool {
        let record = rdkafka::producer::BaseRecord::<[u8], [u8]>::to("t")
            .key(msg.key.as_ref())
            .payload(msg.body.as_ref())
            .headers(of(msg));
        match producer.send(record) {
            Ok(()) => true,
            Err((e, _)) => {
                assert_eq!(
                    e.rdkafka_error_code(),
                    Some(rdkafka::types::RDKafkaErrorCode::MessageSizeTooLarge)
                );
                false
            }
        }
    }

    #[test]
    fn record_size_is_what_librdkafka_checks_to_the_byte() {
        let big_subject = {
            let mut m = crate::event::tests::with_cloudevent(true);
            if let Some(ce) = m.cloudevent.as_mut() {
                // Long enough that its length takes a three-byte varint.
                ce.subject = Some("s".repeat(70_000));
            }
            m
        };
        for mut msg in [
            crate::event::tests::sample(),
            crate::event::tests::with_cloudevent(true),
            crate::event::tests::with_cloudevent(false),
            big_subject,
        ] {
            msg.body = bytes::Bytes::from(vec![b' '; 20_000]);
            let size = record_size(&msg);
            let producer = producer(size);
            assert!(
                takes(&producer, &msg),
                "a record of exactly {size} bytes fits"
            );
            msg.body = bytes::Bytes::from(vec![b' '; 20_001]);
            assert!(!takes(&producer, &msg), "one byte more does not");
        }
    }

    #[test]
    fn varint_lengths_are_zigzag() {
        let lens: Vec<usize> = [0, 63, 64, 8191, 8192, 1 << 20]
            .into_iter()
            .map(varint_len)
            .collect();
        assert_eq!(lens, [1, 1, 2, 2, 3, 4]);
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
