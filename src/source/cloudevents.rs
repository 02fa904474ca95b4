//! CloudEvents for a source: the attributes its events carry on Kafka (binary content mode).
//!
//! Downstream consumers in the wider ecosystem read events through a CloudEvents SDK; with
//! `[sources.NAME.cloudevents]` set, each message gets `ce_id` (the event id), `ce_source`
//! (the URI the operator chose for the source), `ce_type` (a prefix and the slug), `ce_time`
//! (the sender's own time of the event) and optionally `ce_subject`, while the value stays
//! the body as it was signed.
//!
//! Eduzz's `sentDate` is RFC 3339 with a zone; Toolzz's `send_at` (`2023-08-28 20:47:31`) has
//! none, so it is read in the source's `time_zone` (UTC unless told). `ce_time` is always
//! written in UTC. A time that cannot be read leaves `ce_time` out (it is optional in the
//! spec) rather than refusing an event the sender signed.

use std::str::FromStr;

use jiff::civil::DateTime;
use jiff::tz::TimeZone;
use jiff::Timestamp;
use serde::Deserialize;
use serde_json::Value;

use super::{check_pointer, Format};
use crate::event::CloudEvent;
use crate::problem::Problems;

/// `[sources.NAME.cloudevents]`: publish this source's events as CloudEvents.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloudEventsSettings {
    /// `ce_source`: a URI naming where the events come from, e.g. `https://eduzz.com/webhooks`.
    pub source: String,
    /// `ce_type` is this prefix and the slug; default `com.eduzz.` (eduzz), `com.toolzz.`
    /// (toolzz), nothing (json).
    pub type_prefix: Option<String>,
    /// Zone of times written without one (Toolzz's `send_at`): an IANA name
    /// (`America/Sao_Paulo`), `UTC` or an offset (`-03:00`).
    #[serde(default = "utc")]
    pub time_zone: String,
    /// JSON pointer to the event's time; default `/sentDate` (eduzz), `/event/send_at`
    /// (toolzz), none (json).
    pub time_pointer: Option<String>,
    /// JSON pointer whose value becomes `ce_subject`; unset: no subject.
    pub subject: Option<String>,
    /// Keep the bridge's own headers (`event`, `event-id`, `source`, `received-at`) too.
    #[serde(default = "yes")]
    pub bridge_headers: bool,
}

fn utc() -> String {
    "UTC".into()
}

fn yes() -> bool {
    true
}

/// A source's CloudEvents settings, built.
#[derive(Debug, Clone)]
pub struct CloudEvents {
    source: String,
    type_prefix: String,
    zone: TimeZone,
    time_pointer: Option<String>,
    subject_pointer: Option<String>,
    bridge_headers: bool,
}

impl CloudEventsSettings {
    /// Checks the settings of a source of `format`; problems go under `key`.
    pub(crate) fn build(
        &self,
        key: &str,
        format: Format,
        problems: &mut Problems,
    ) -> Option<CloudEvents> {
        let mark = problems.mark();
        problems.require(
            !self.source.is_empty()
                && !self.source.contains(char::is_whitespace)
                && http::Uri::from_str(&self.source).is_ok(),
            format!("{key}.source"),
            format!(
                "'{}' is not a URI (e.g. \"https://eduzz.com/webhooks\")",
                self.source
            ),
        );
        let zone = problems.check(format!("{key}.time_zone"), zone(&self.time_zone));
        for (field, pointer) in [
            ("time_pointer", &self.time_pointer),
            ("subject", &self.subject),
        ] {
            if let Some(p) = pointer {
                check_pointer(format!("{key}.{field}"), p, problems);
            }
        }
        let (type_prefix, time_pointer) = match format {
            Format::Eduzz => ("com.eduzz.", Some("/sentDate")),
            Format::Toolzz => ("com.toolzz.", Some("/event/send_at")),
            Format::Json => ("", None),
        };
        problems.none_since(mark).then(|| CloudEvents {
            source: self.source.clone(),
            type_prefix: self.type_prefix.clone().unwrap_or(type_prefix.into()),
            zone: zone.unwrap_or(TimeZone::UTC),
            time_pointer: self
                .time_pointer
                .clone()
                .or(time_pointer.map(str::to_string)),
            subject_pointer: self.subject.clone(),
            bridge_headers: self.bridge_headers,
        })
    }
}

/// Why a time zone setting is not one.
#[derive(Debug, thiserror::Error)]
#[error("'{0}' is not a time zone (use an IANA name like \"America/Sao_Paulo\", \"UTC\" or an offset like \"-03:00\")")]
pub struct ZoneError(String);

/// An IANA name, `UTC` or a fixed offset (`-03:00`), as jiff's Temporal parser reads them.
fn zone(name: &str) -> Result<TimeZone, ZoneError> {
    static PARSER: jiff::fmt::temporal::DateTimeParser = jiff::fmt::temporal::DateTimeParser::new();
    PARSER
        .parse_time_zone(name)
        .map_err(|_| ZoneError(name.to_string()))
}

impl CloudEvents {
    /// The attributes of an event of `slug` whose parsed body is `doc`.
    pub(crate) fn attributes(&self, slug: &str, doc: &Value) -> CloudEvent {
        let text_at = |pointer: &Option<String>| match doc.pointer(pointer.as_deref()?)? {
            Value::String(s) if !s.is_empty() => Some(s.clone()),
            v @ (Value::Number(_) | Value::Bool(_)) => Some(v.to_string()),
            _ => None,
        };
        CloudEvent {
            source: self.source.clone(),
            kind: format!("{}{slug}", self.type_prefix),
            time: text_at(&self.time_pointer).and_then(|t| self.utc_time(&t)),
            subject: text_at(&self.subject_pointer),
            bridge_headers: self.bridge_headers,
        }
    }

    /// `text` as RFC 3339 in UTC: read with its own offset, or in the source's zone when it
    /// has none.
    fn utc_time(&self, text: &str) -> Option<String> {
        let at = match Timestamp::from_str(text) {
            Ok(t) => t,
            Err(_) => self
                .zone
                .to_timestamp(DateTime::from_str(text).ok()?)
                .ok()?,
        };
        Some(at.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn built(toml: &str, format: Format) -> Result<CloudEvents, Vec<String>> {
        let settings: CloudEventsSettings = toml::from_str(toml).unwrap();
        let mut problems = Problems::default();
        settings
            .build("ce", format, &mut problems)
            .ok_or_else(|| problems.into_vec().iter().map(|p| p.to_string()).collect())
    }

    #[test]
    fn zones_are_names_or_fixed_offsets_and_nothing_else() {
        for good in ["America/Sao_Paulo", "UTC", "-03:00", "+05:30"] {
            assert!(zone(good).is_ok(), "{good}");
        }
        for bad in ["Mars/Olympus", "-26:00", "03:00", "", "Sao Paulo"] {
            let e = zone(bad).unwrap_err();
            assert!(e.to_string().contains("is not a time zone"), "{bad}: {e}");
        }
        let fixed = zone("-03:00").unwrap();
        let t: jiff::Timestamp = "2024-01-01T00:00:00Z".parse().unwrap();
        assert_eq!(fixed.to_offset(t).seconds(), -3 * 3600);
    }

    #[test]
    fn eduzz_times_keep_their_zone() {
        let ce = built(r#"source = "https://eduzz.com/webhooks""#, Format::Eduzz).unwrap();
        let doc = serde_json::json!({"sentDate": "2024-02-29T11:33:02.020-03:00"});
        let a = ce.attributes("nutror.lesson_started", &doc);
        assert_eq!(a.kind, "com.eduzz.nutror.lesson_started");
        assert_eq!(a.time.as_deref(), Some("2024-02-29T14:33:02.02Z"));
        assert_eq!(a.subject, None);
    }

    #[test]
    fn toolzz_local_times_take_the_source_zone() {
        let doc = serde_json::json!({"event": {"send_at": "2023-08-28 20:47:31"}, "data": {"user": {"id": 42}}});
        let utc = built(r#"source = "/toolzz""#, Format::Toolzz).unwrap();
        assert_eq!(
            utc.attributes("x", &doc).time.as_deref(),
            Some("2023-08-28T20:47:31Z")
        );
        let sp = built(
            r#"source = "/toolzz"
time_zone = "America/Sao_Paulo"
subject = "/data/user/id""#,
            Format::Toolzz,
        )
        .unwrap();
        let a = sp.attributes("certificate.issued", &doc);
        assert_eq!(a.time.as_deref(), Some("2023-08-28T23:47:31Z"));
        assert_eq!(a.subject.as_deref(), Some("42"));
        assert_eq!(a.kind, "com.toolzz.certificate.issued");
        let fixed = built(
            r#"source = "/toolzz"
time_zone = "+05:30""#,
            Format::Toolzz,
        )
        .unwrap();
        assert_eq!(
            fixed.attributes("x", &doc).time.as_deref(),
            Some("2023-08-28T15:17:31Z")
        );
    }

    #[test]
    fn an_unreadable_time_is_left_out() {
        let ce = built(r#"source = "/e""#, Format::Eduzz).unwrap();
        let doc = serde_json::json!({"sentDate": "yesterday"});
        assert_eq!(ce.attributes("x", &doc).time, None);
    }

    #[test]
    fn bad_settings_are_named() {
        let problems = built(
            r#"source = "not a uri"
time_zone = "Mars/Olympus"
subject = "data/id""#,
            Format::Eduzz,
        )
        .unwrap_err();
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems[0].contains("ce.source"), "{problems:?}");
        assert!(problems[1].contains("ce.time_zone"), "{problems:?}");
        assert!(problems[2].contains("ce.subject"), "{problems:?}");
    }
}
