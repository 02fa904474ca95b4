//! An archive record: the event's record with headers that say what became of the delivery,
//! and how a record read back becomes an [`ArchivedDelivery`] again.

use http::HeaderMap;
use rdkafka::message::OwnedHeaders;

use crate::event::{rfc3339_ms, Message};
use crate::kafka::headers;
use crate::kafka::reader::Record;

/// Request headers worth keeping: who sent it and how to find the request in the sender's
/// own history. Never `authorization`, a token or a cookie; the signature is a MAC of the
/// body, not a secret.
pub const KEPT_HEADERS: [&str; 6] = [
    "user-agent",
    "x-forwarded-for",
    "x-real-ip",
    "x-request-id",
    "x-signature",
    "content-length",
];

/// The headers of `request` the archive keeps, in [`KEPT_HEADERS`] order, each at most
/// 512 bytes (a stranger cannot make the archive grow past what a request could hold anyway,
/// but a log of it need not keep more).
pub fn kept_headers(request: &HeaderMap) -> Vec<(String, String)> {
    KEPT_HEADERS
        .iter()
        .filter_map(|name| {
            let value = request.get(*name)?.to_str().ok()?;
            let cut = value.len().min(512);
            Some((
                name.to_string(),
                value.get(..cut).unwrap_or(value).to_string(),
            ))
        })
        .collect()
}

/// What became of a delivery, as the archive says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Taken and sent to its topic.
    Taken,
    /// A drop rule matched: answered, not published.
    Dropped,
    /// Taken before (the dedupe window): answered, not published again.
    Duplicate,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Taken => "taken",
            Outcome::Dropped => "dropped",
            Outcome::Duplicate => "duplicate",
        }
    }

    fn parse(s: &str) -> Option<Outcome> {
        match s {
            "taken" => Some(Outcome::Taken),
            "dropped" => Some(Outcome::Dropped),
            "duplicate" => Some(Outcome::Duplicate),
            _ => None,
        }
    }
}

/// Archive headers: `archive-outcome`, `archive-topic`, `archive-rule`, `archive-answer`,
/// and each kept request header as `request-NAME`.
pub const OUTCOME: &str = "archive-outcome";
pub const TOPIC: &str = "archive-topic";
pub const RULE: &str = "archive-rule";
pub const ANSWER: &str = "archive-answer";
const REQUEST_PREFIX: &str = "request-";

/// The headers of `msg`'s archive record: the bridge's own event headers (always by name,
/// whatever the source writes on its topic), then what became of it.
pub(crate) fn headers_of(msg: &Message, outcome: Outcome) -> OwnedHeaders {
    use headers::header;
    let mut out = headers::named(msg).insert(header(OUTCOME, outcome.as_str()));
    if outcome == Outcome::Taken {
        out = out.insert(header(TOPIC, &msg.topic));
    }
    if let Some(a) = &msg.archive {
        out = out
            .insert(header(RULE, &a.rule))
            .insert(header(ANSWER, &a.answer.to_string()));
        for (name, value) in &a.request_headers {
            out = out.insert(header(&format!("{REQUEST_PREFIX}{name}"), value));
        }
    }
    out
}

/// One archived delivery, read back from the archive topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchivedDelivery {
    pub source: String,
    pub slug: String,
    pub id: String,
    pub received_at: String,
    pub content_type: String,
    pub outcome: Outcome,
    /// The topic it was routed to (taken deliveries).
    pub topic: Option<String>,
    pub rule: Option<String>,
    pub answer: Option<u16>,
    pub request_headers: Vec<(String, String)>,
    pub key: Vec<u8>,
    pub body: Vec<u8>,
    /// Where the archive record is: partition, offset, and its timestamp (ms).
    pub partition: i32,
    pub offset: i64,
    pub archived_at_ms: i64,
    /// The trace the delivery belongs to, when it was traced.
    pub trace: Option<crate::telemetry::TraceContext>,
}

impl ArchivedDelivery {
    /// Reads an archive record; `None` for a record that is not one (written by hand, or by a
    /// later version with a layout this one does not know).
    pub fn read(record: &Record, timestamp_ms: i64) -> Option<ArchivedDelivery> {
        let text = |name: &str| record.header(name);
        let request_headers = record
            .headers
            .iter()
            .filter_map(|(k, v)| {
                let name = k.strip_prefix(REQUEST_PREFIX)?;
                Some((name.to_string(), String::from_utf8_lossy(v).into_owned()))
            })
            .collect();
        Some(ArchivedDelivery {
            source: text(headers::SOURCE)?,
            slug: text(headers::EVENT)?,
            id: text(headers::EVENT_ID)?,
            received_at: text(headers::RECEIVED_AT)?,
            content_type: text(headers::CONTENT_TYPE).unwrap_or_default(),
            outcome: Outcome::parse(&text(OUTCOME)?)?,
            topic: text(TOPIC),
            rule: text(RULE),
            answer: text(ANSWER).and_then(|a| a.parse().ok()),
            request_headers,
            key: record.key.clone().unwrap_or_default(),
            body: record.value.clone(),
            partition: record.partition,
            offset: record.offset,
            archived_at_ms: timestamp_ms,
            trace: record.trace(),
        })
    }

    /// Received-at as milliseconds since the epoch (RFC 3339 in the header).
    pub fn received_at_ms(&self) -> Option<i64> {
        let t: jiff::Timestamp = self.received_at.parse().ok()?;
        Some(t.as_millisecond())
    }

    /// Which delivery this is: a repeat of the same record (an archive record is written
    /// again when its event is sent again) has the same identity.
    pub fn identity(&self) -> (String, String, String, Outcome) {
        (
            self.source.clone(),
            self.id.clone(),
            self.received_at.clone(),
            self.outcome,
        )
    }
}

/// When a record was archived, as RFC 3339.
pub fn archived_at(ms: i64) -> String {
    rfc3339_ms(ms.max(0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::tests::archived;
    use rdkafka::message::Headers;

    fn as_record(msg: &Message, h: &OwnedHeaders) -> Record {
        Record {
            topic: "eduzz-bridge.archive".into(),
            partition: 2,
            offset: 7,
            key: Some(msg.key.to_vec()),
            headers: h
                .iter()
                .map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec()))
                .collect(),
            value: msg.body.to_vec(),
        }
    }

    #[test]
    fn an_archive_record_reads_back_as_the_delivery_it_was_written_for() {
        let msg = archived();
        let h = headers_of(&msg, Outcome::Taken);
        let d = ArchivedDelivery::read(&as_record(&msg, &h), 5).unwrap();
        assert_eq!(
            (d.source.as_str(), d.id.as_str(), d.slug.as_str()),
            ("eduzz", "abc", "nutror.lesson_started")
        );
        assert_eq!(d.outcome, Outcome::Taken);
        assert_eq!(d.topic.as_deref(), Some("nutror.lesson_started"));
        assert_eq!(d.rule.as_deref(), Some("routes[0] nutror.*"));
        assert_eq!(d.answer, Some(200));
        assert_eq!(
            d.request_headers,
            vec![("user-agent".to_string(), "Eduzz-Webhook/1.0".to_string())]
        );
        assert_eq!(d.body, msg.body.to_vec());
        assert_eq!(d.received_at_ms(), Some(msg.received_at_ms as i64));
        assert_eq!((d.partition, d.offset, d.archived_at_ms), (2, 7, 5));
    }

    #[test]
    fn a_dropped_delivery_names_no_topic_and_a_foreign_record_is_not_a_delivery() {
        let msg = archived();
        let h = headers_of(&msg, Outcome::Dropped);
        let d = ArchivedDelivery::read(&as_record(&msg, &h), 0).unwrap();
        assert_eq!((d.outcome, d.topic), (Outcome::Dropped, None));
        let plain = headers::of(&msg);
        assert!(ArchivedDelivery::read(&as_record(&msg, &plain), 0).is_none());
    }

    #[test]
    fn only_the_listed_request_headers_are_kept_and_cut_at_512_bytes() {
        let mut h = HeaderMap::new();
        h.insert("authorization", "Bearer secret".parse().unwrap());
        h.insert("x-token", "secret".parse().unwrap());
        h.insert("user-agent", "a".repeat(600).parse().unwrap());
        h.insert("x-signature", "ab12".parse().unwrap());
        let kept = kept_headers(&h);
        assert_eq!(kept.len(), 2);
        assert_eq!(kept[0].0, "user-agent");
        assert_eq!(kept[0].1.len(), 512);
        assert_eq!(kept[1], ("x-signature".into(), "ab12".into()));
    }
}
