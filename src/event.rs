//! What travels down the pipeline: an authenticated [`Event`], and the routed [`Message`]
//! that becomes one Kafka record.
//!
//! These are the bottom of the module graph: plain data that every stage can name without
//! depending on the stage that made it. Nothing here knows about HTTP or Kafka's client.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::telemetry::TraceContext;

/// An authenticated, parsed delivery.
#[derive(Debug, Clone)]
pub struct Event {
    pub source: Arc<str>,
    pub slug: Slug,
    pub id: String,
    /// The parsed body, for routing (message keys come from it).
    pub doc: serde_json::Value,
    /// The raw body exactly as received; this is what gets published.
    pub body: Bytes,
    pub content_type: String,
    pub received_at: SystemTime,
    /// The CloudEvents attributes, when the source publishes them (see [`CloudEvent`]).
    pub cloudevent: Option<CloudEvent>,
    /// The request headers the archive keeps (empty for a source that is not archived).
    pub request_headers: Vec<(String, String)>,
    /// Where the event's trace is: the request's span, or with tracing off an incoming
    /// context its source trusts; `None` when neither.
    pub trace: Option<TraceContext>,
}

/// What a source that speaks CloudEvents adds to its messages (the Kafka protocol binding,
/// binary content mode: `ce_*` headers, the body as the value).
///
/// The attributes are worked out when the event is taken and travel with it through the
/// spool, like its topic: what Kafka gets is what was decided when the sender got its 2xx,
/// whatever the config says by the time the spool drains.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CloudEvent {
    /// `ce_source`: the URI the operator gave the source.
    pub source: String,
    /// `ce_type`: the configured prefix and the slug.
    pub kind: String,
    /// `ce_time`: the sender's time of the event, RFC 3339, when the body has one.
    pub time: Option<String>,
    /// `ce_subject`, from the configured JSON pointer, when present.
    pub subject: Option<String>,
    /// Whether the bridge's own headers (`event`, `event-id`, `source`, `received-at`) are
    /// written too.
    pub bridge_headers: bool,
}

impl Event {
    /// Eduzz's activation event: always answered 2xx.
    pub(crate) fn is_ping(&self) -> bool {
        self.slug == "ping"
    }
}

/// Declares a name that travels as text: a newtype over `String` that reads as a `&str`
/// wherever one is wanted, serialises as the bare string (the spool's format is unchanged),
/// and cannot be passed where the other kind of name is expected.
macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl std::ops::Deref for $name {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<String> for $name {
            fn from(s: String) -> Self {
                $name(s)
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                $name(s.to_string())
            }
        }

        impl From<$name> for String {
            fn from(n: $name) -> String {
                n.0
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<String> for $name {
            fn eq(&self, other: &String) -> bool {
                &self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }
    };
}

name_type!(
    /// A Kafka topic's name, as routing made it (already checked legal).
    TopicName
);
name_type!(
    /// An event's slug as its sender named it (`nutror.lesson_started`): what routes match.
    Slug
);

/// One event on its way to Kafka.
///
/// A `Message` is what crosses from the request side to the publishing side, whether it goes
/// straight to the producer or waits in the spool first, so it holds everything the publish
/// needs and nothing from HTTP. It serialises compactly (postcard) for the spool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub topic: TopicName,
    pub key: Bytes,
    pub source: String,
    pub slug: Slug,
    pub event_id: String,
    /// Receive time, milliseconds since the Unix epoch.
    pub received_at_ms: u64,
    pub content_type: String,
    /// The request body, byte for byte.
    pub body: Bytes,
    /// CloudEvents attributes, for sources that publish them. After the fields of the first
    /// layout, so that entries spooled before it existed still decode (see
    /// [`Message::decode_unversioned`]).
    pub cloudevent: Option<CloudEvent>,
    /// What the archive keeps of the delivery beside the event (see [`Archived`]); `None`
    /// for a source that is not archived. After `cloudevent`, for the same reason.
    pub archive: Option<Archived>,
    /// The trace the event belongs to (its request's span): the publish, whenever it
    /// happens, is that span's child, and the message's `traceparent` names it. Last, for
    /// the same reason.
    pub trace: Option<TraceContext>,
}

/// What the archive topic keeps of a delivery beyond the event itself: the rule that routed
/// it, the answer the sender got, and the request headers worth keeping (never a token or a
/// cookie: see `archive::KEPT_HEADERS`). Decided when the event is taken, like its topic, and
/// spooled with it, so the archive says what happened then whatever the config says later.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Archived {
    /// The rule as `check-config` names it (`routes[1] nutror.*`).
    pub rule: String,
    /// The HTTP status the sender got.
    pub answer: u16,
    /// Request headers kept, as (lower-case name, value).
    pub request_headers: Vec<(String, String)>,
}

/// The layout [`Message::encode`] writes, as its first byte. Layouts 1–3 were written without
/// one (spool format 2 and earlier: [`Message::decode_unversioned`]); a new field means a new
/// number here and a `decode` arm for the old one.
pub const MESSAGE_LAYOUT: u8 = 4;

/// Why a spooled message could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("the entry is empty")]
    Empty,
    #[error(
        "layout version {0} is unknown to this version of the bridge (written by a newer one?)"
    )]
    UnknownLayout(u8),
    #[error("the fields do not match the layout")]
    Fields(#[source] postcard::Error),
    #[error("{0} bytes are left after the last field")]
    Trailing(usize),
    #[error("its checksum does not match: the bytes were damaged on disk")]
    Damaged,
}

/// A `Message` as spooled before traces: the same fields without the last one.
#[derive(Deserialize)]
struct MessageV3 {
    topic: TopicName,
    key: Bytes,
    source: String,
    slug: Slug,
    event_id: String,
    received_at_ms: u64,
    content_type: String,
    body: Bytes,
    cloudevent: Option<CloudEvent>,
    archive: Option<Archived>,
}

/// A `Message` as spooled before the archive: the same fields without the last one.
#[derive(Deserialize)]
struct MessageV2 {
    topic: TopicName,
    key: Bytes,
    source: String,
    slug: Slug,
    event_id: String,
    received_at_ms: u64,
    content_type: String,
    body: Bytes,
    cloudevent: Option<CloudEvent>,
}

/// A `Message` as spooled before CloudEvents: the same fields without the last one.
#[derive(Deserialize)]
struct MessageV1 {
    topic: String,
    key: Bytes,
    source: String,
    slug: String,
    event_id: String,
    received_at_ms: u64,
    content_type: String,
    body: Bytes,
}

impl Message {
    /// The message for `event`, routed to `topic` under `key`.
    pub fn new(event: &Event, topic: impl Into<TopicName>, key: Vec<u8>) -> Message {
        Message {
            topic: topic.into(),
            key: Bytes::from(key),
            source: event.source.to_string(),
            slug: event.slug.clone(),
            event_id: event.id.clone(),
            received_at_ms: unix_ms(event.received_at),
            content_type: event.content_type.clone(),
            body: event.body.clone(),
            cloudevent: event.cloudevent.clone(),
            archive: None,
            trace: event.trace.clone(),
        }
    }

    /// Bytes this message occupies in the spool (what `spool.max_bytes` counts): its layout
    /// version ([`MESSAGE_LAYOUT`]), then its fields.
    pub fn encode(&self) -> Vec<u8> {
        // Sized up front (a counting pass, no copies): grown from one byte, the `Vec` of a
        // 256 KiB body was copied again at each of its doublings, half a MiB of `memmove`.
        let size =
            postcard::experimental::serialized_size(self).expect("a Message always serialises");
        let mut out = Vec::with_capacity(1 + size);
        out.push(MESSAGE_LAYOUT);
        postcard::to_extend(self, out).expect("a Message always serialises")
    }

    /// Reads a message written by [`Message::encode`]. The first byte says its layout: a
    /// layout this version does not know (written by a newer bridge) is refused, never read as
    /// another, and so is a message with bytes left over after its last field (what a
    /// truncated newer layout read as an older one would look like).
    pub fn decode(bytes: &[u8]) -> Result<Message, DecodeError> {
        let (&layout, fields) = bytes.split_first().ok_or(DecodeError::Empty)?;
        if layout != MESSAGE_LAYOUT {
            return Err(DecodeError::UnknownLayout(layout));
        }
        let (message, rest) =
            postcard::take_from_bytes::<Message>(fields).map_err(DecodeError::Fields)?;
        match rest.len() {
            0 => Ok(message),
            n => Err(DecodeError::Trailing(n)),
        }
    }

    /// Reads a message spooled before layout versions (spool format 2 and earlier).
    /// Postcard is not self-describing, so an entry written by an earlier version (without
    /// `trace`, `archive` or `cloudevent`) ends where the new layout expects one more field:
    /// such an entry is read with the layout it was written in, so an upgrade never strands
    /// a spool.
    pub fn decode_unversioned(bytes: &[u8]) -> Result<Message, DecodeError> {
        match postcard::from_bytes(bytes) {
            Err(postcard::Error::DeserializeUnexpectedEnd) => Self::decode_v3(bytes),
            other => other,
        }
        .map_err(DecodeError::Fields)
    }

    fn decode_v3(bytes: &[u8]) -> Result<Message, postcard::Error> {
        match postcard::from_bytes::<MessageV3>(bytes) {
            Ok(v3) => Ok(Message {
                topic: v3.topic,
                key: v3.key,
                source: v3.source,
                slug: v3.slug,
                event_id: v3.event_id,
                received_at_ms: v3.received_at_ms,
                content_type: v3.content_type,
                body: v3.body,
                cloudevent: v3.cloudevent,
                archive: v3.archive,
                trace: None,
            }),
            Err(postcard::Error::DeserializeUnexpectedEnd) => Self::decode_v2(bytes),
            Err(e) => Err(e),
        }
    }

    fn decode_v2(bytes: &[u8]) -> Result<Message, postcard::Error> {
        match postcard::from_bytes::<MessageV2>(bytes) {
            Ok(v2) => Ok(Message {
                topic: v2.topic,
                key: v2.key,
                source: v2.source,
                slug: v2.slug,
                event_id: v2.event_id,
                received_at_ms: v2.received_at_ms,
                content_type: v2.content_type,
                body: v2.body,
                cloudevent: v2.cloudevent,
                archive: None,
                trace: None,
            }),
            Err(postcard::Error::DeserializeUnexpectedEnd) => {
                let v1: MessageV1 = postcard::from_bytes(bytes)?;
                Ok(Message {
                    topic: v1.topic.into(),
                    key: v1.key,
                    source: v1.source,
                    slug: v1.slug.into(),
                    event_id: v1.event_id,
                    received_at_ms: v1.received_at_ms,
                    content_type: v1.content_type,
                    body: v1.body,
                    cloudevent: None,
                    archive: None,
                    trace: None,
                })
            }
            Err(e) => Err(e),
        }
    }

    /// Which event this is, as the spool's dedupe index and the fleet's shared index know it.
    pub fn event_key(&self) -> EventKey<'_> {
        EventKey::new(self.source.as_str(), self.event_id.as_str())
    }

    /// Which event this is as its Kafka headers name it, for the start-up recovery check:
    /// the bridge's own `source` and `event-id`, or `ce:` + `ce_source` and `ce_id` when only
    /// CloudEvents headers are written (source names cannot hold `:`, so the two never meet).
    /// `kafka::headers::read_key` reads the same back from a published message.
    pub fn key_on_kafka(&self) -> EventKey<'_> {
        match &self.cloudevent {
            Some(ce) if !ce.bridge_headers => {
                EventKey::new(format!("ce:{}", ce.source), self.event_id.as_str())
            }
            _ => self.event_key(),
        }
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

/// One event's identity: its source and the id its sender gave it. Written once here so the
/// spool's dedupe key, the shared index's Redis key and the headers recovery reads back
/// cannot drift apart. Borrowed on the request path (no copy per request), owned where it is
/// kept (recovery's lookup tables).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventKey<'a> {
    source: Cow<'a, str>,
    id: Cow<'a, str>,
}

/// Between source and id in stored keys: the ASCII unit separator, which no source name
/// holds, so `("a", "b:c")` and `("a:b", "c")` never meet.
const KEY_SEPARATOR: char = '\u{1f}';

impl<'a> EventKey<'a> {
    pub fn new(source: impl Into<Cow<'a, str>>, id: impl Into<Cow<'a, str>>) -> EventKey<'a> {
        EventKey {
            source: source.into(),
            id: id.into(),
        }
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn into_owned(self) -> EventKey<'static> {
        EventKey::new(self.source.into_owned(), self.id.into_owned())
    }

    /// The key of the spool's dedupe table: `source \x1f id`.
    pub fn spool_key(&self) -> String {
        let mut key = String::with_capacity(self.source.len() + self.id.len() + 1);
        key.push_str(&self.source);
        key.push(KEY_SEPARATOR);
        key.push_str(&self.id);
        key
    }

    /// The shared index's Redis key: `prefix` + the spool key.
    pub fn redis_key(&self, prefix: &str) -> Vec<u8> {
        let mut key = Vec::with_capacity(prefix.len() + self.source.len() + self.id.len() + 1);
        key.extend_from_slice(prefix.as_bytes());
        key.extend_from_slice(self.spool_key().as_bytes());
        key
    }
}

impl std::fmt::Display for EventKey<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{:?}", self.source, self.id)
    }
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

/// `2026-11-24T06:16:15.123Z`
pub(crate) fn rfc3339_ms(ms: u64) -> String {
    match jiff::Timestamp::from_millisecond(ms as i64) {
        Ok(t) => t.to_string(),
        Err(_) => ms.to_string(),
    }
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
            cloudevent: None,
            archive: None,
            trace: None,
        }
    }

    /// A message in the trace `4bf92f35…`, at the request span `00f067aa…`, sampled.
    pub(crate) fn traced() -> Message {
        Message {
            trace: Some(TraceContext {
                trace_id: hex_array("4bf92f3577b34da6a3ce929d0e0e4736"),
                span_id: hex_array("00f067aa0ba902b7"),
                flags: 1,
                state: "congo=t61rcWkgMzE".into(),
            }),
            ..archived()
        }
    }

    fn hex_array<const N: usize>(text: &str) -> [u8; N] {
        hex::decode(text).unwrap().try_into().unwrap()
    }

    pub(crate) fn archived() -> Message {
        Message {
            archive: Some(Archived {
                rule: "routes[0] nutror.*".into(),
                answer: 200,
                request_headers: vec![("user-agent".into(), "Eduzz-Webhook/1.0".into())],
            }),
            ..with_cloudevent(true)
        }
    }

    pub(crate) fn with_cloudevent(bridge_headers: bool) -> Message {
        Message {
            cloudevent: Some(CloudEvent {
                source: "https://eduzz.com/webhooks".into(),
                kind: "com.eduzz.nutror.lesson_started".into(),
                time: Some("2024-02-29T14:33:02.020Z".into()),
                subject: Some("learner-7".into()),
                bridge_headers,
            }),
            ..sample()
        }
    }

    #[test]
    fn names_are_their_text_on_disk_and_in_comparisons() {
        let topic = TopicName::from("lms.lessons");
        let as_string = postcard::to_stdvec(&"lms.lessons".to_string()).unwrap();
        assert_eq!(
            postcard::to_stdvec(&topic).unwrap(),
            as_string,
            "the spool's format is unchanged"
        );
        assert_eq!(topic, "lms.lessons");
        assert_eq!(topic.len(), 11, "reads as a str");
        let slug: Slug = "nutror.lesson_started".into();
        assert_eq!(slug.to_string(), "nutror.lesson_started");
    }

    #[test]
    fn encoding_round_trips_byte_exact() {
        let m = sample();
        assert_eq!(Message::decode(&m.encode()).unwrap(), m);
    }

    /// The encoding is allocated once, at its exact size: a large body is copied once.
    #[test]
    fn a_large_body_is_encoded_into_one_allocation_of_its_exact_size() {
        let mut m = traced();
        m.body = Bytes::from(vec![b'x'; 256 * 1024]);
        let encoded = m.encode();
        assert_eq!(encoded.capacity(), encoded.len());
        assert_eq!(Message::decode(&encoded).unwrap(), m);
    }

    #[test]
    fn cloudevent_attributes_round_trip() {
        let m = with_cloudevent(false);
        assert_eq!(Message::decode(&m.encode()).unwrap(), m);
    }

    #[test]
    fn archive_details_round_trip_and_entries_spooled_before_them_still_decode() {
        let m = archived();
        assert_eq!(Message::decode(&m.encode()).unwrap(), m);
        let before = Message {
            archive: None,
            ..m.clone()
        };
        // The layout before the archive: the same bytes without the last two fields' tags.
        let mut old = unversioned(&before);
        assert_eq!(old.pop(), Some(0), "None is one zero byte");
        assert_eq!(old.pop(), Some(0), "None is one zero byte");
        assert_eq!(Message::decode_unversioned(&old).unwrap(), before);
    }

    #[test]
    fn the_trace_round_trips_and_entries_spooled_before_traces_still_decode() {
        let m = traced();
        assert_eq!(Message::decode(&m.encode()).unwrap(), m);
        // What the previous version wrote: the same message without the trace.
        let before = Message {
            trace: None,
            ..m.clone()
        };
        let mut old = unversioned(&before);
        assert_eq!(old.pop(), Some(0), "the trace's None tag");
        assert_eq!(Message::decode_unversioned(&old).unwrap(), before);
    }

    /// What spool format 2 stored: the fields with no layout version before them.
    fn unversioned(m: &Message) -> Vec<u8> {
        let encoded = m.encode();
        assert_eq!(encoded[0], MESSAGE_LAYOUT);
        encoded[1..].to_vec()
    }

    #[test]
    fn a_layout_says_what_it_is_and_a_cut_or_padded_entry_is_refused_not_misread() {
        let m = with_cloudevent(false);
        let encoded = m.encode();
        assert_eq!(encoded[0], MESSAGE_LAYOUT);
        // Cut where an older layout ended (before `cloudevent`'s attributes): read without a
        // version this once decoded as that older layout and lost the attributes.
        let mut cut = encoded.clone();
        cut.truncate(cut.len() - 3);
        assert!(matches!(Message::decode(&cut), Err(DecodeError::Fields(_))));
        let mut padded = encoded.clone();
        padded.push(0);
        assert_eq!(Message::decode(&padded), Err(DecodeError::Trailing(1)));
        let mut newer = encoded;
        newer[0] = MESSAGE_LAYOUT + 1;
        assert_eq!(
            Message::decode(&newer),
            Err(DecodeError::UnknownLayout(MESSAGE_LAYOUT + 1))
        );
        assert_eq!(Message::decode(&[]), Err(DecodeError::Empty));
    }

    #[test]
    fn entries_spooled_before_cloudevents_still_decode() {
        #[derive(Serialize)]
        struct Old<'a> {
            topic: &'a str,
            key: &'a [u8],
            source: &'a str,
            slug: &'a str,
            event_id: &'a str,
            received_at_ms: u64,
            content_type: &'a str,
            #[serde(with = "serde_bytes")]
            body: &'a [u8],
        }
        let m = sample();
        let old = postcard::to_stdvec(&Old {
            topic: &m.topic,
            key: &m.key,
            source: &m.source,
            slug: &m.slug,
            event_id: &m.event_id,
            received_at_ms: m.received_at_ms,
            content_type: &m.content_type,
            body: &m.body,
        })
        .unwrap();
        assert_eq!(Message::decode_unversioned(&old).unwrap(), m);
        assert!(Message::decode_unversioned(&old[..old.len() - 1]).is_err());
    }

    #[test]
    fn the_key_on_kafka_follows_the_headers_written() {
        assert_eq!(sample().key_on_kafka(), EventKey::new("eduzz", "abc"));
        assert_eq!(
            with_cloudevent(true).key_on_kafka(),
            EventKey::new("eduzz", "abc")
        );
        assert_eq!(
            with_cloudevent(false).key_on_kafka(),
            EventKey::new("ce:https://eduzz.com/webhooks", "abc")
        );
    }

    #[test]
    fn receive_time_is_rfc3339_utc() {
        assert_eq!(rfc3339_ms(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
    }
}
