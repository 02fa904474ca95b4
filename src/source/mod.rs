//! Sources: who may post, on which path, in which envelope.
//!
//! A source turns a raw delivery (headers, path token, body) into an [`Event`]: it
//! authenticates the raw bytes first (so an unsigned stranger's JSON is never parsed), then
//! reads the envelope. What it returns is all later stages need; they never see HTTP.
//!
//! `[sources.NAME]` settings are built here, once, into [`Sources`]: secrets read, header
//! names, networks and pointers parsed, every problem reported with its key.

pub mod auth;
pub mod cloudevents;
pub mod envelope;
mod strict_json;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use serde::Deserialize;

use crate::cidr::Cidr;
use crate::event::Event;
use crate::problem::Problems;
pub use auth::{Auth, AuthError, AuthSettings};
pub use cloudevents::{CloudEvents, CloudEventsSettings};
pub use envelope::{EnvelopeError, EnvelopeFormat};

/// The envelope a source's deliveries come in.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// `{"id", "event": "app.name", "data", "sentDate"}`
    Eduzz,
    /// `{"event": {"name", "slug", "send_at"}, "data"}`, no id (one is derived from the body).
    Toolzz,
    /// Any JSON object; slug and id found by JSON pointers.
    Json,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Eduzz => "eduzz",
            Format::Toolzz => "toolzz",
            Format::Json => "json",
        }
    }

    /// The status a taken event is answered with unless `accepted_status` says otherwise.
    ///
    /// Eduzz counts only 200 as delivered (anything else is retried a minute later, and three
    /// failed retries deactivate the URL), and Toolzz's docs ask for 200 OK; so both get 200.
    /// A generic `json` sender usually takes any 2xx, and 202 Accepted says what `spooled`
    /// means (stored, not yet on Kafka), so it keeps 202.
    pub fn accepted_status(self) -> StatusCode {
        match self {
            Format::Eduzz | Format::Toolzz => StatusCode::OK,
            Format::Json => StatusCode::ACCEPTED,
        }
    }

    /// How long the sender goes on retrying a delivery it saw fail, before it gives up on the
    /// URL and discards its events; `None` where its rules are not published.
    ///
    /// Eduzz retries a failed event 3 times, 1 minute apart; after the third failure the URL
    /// goes to Backup (kept 7 days, when that option is on) or Inactive (events discarded).
    pub fn gives_up_after(self) -> Option<Duration> {
        match self {
            Format::Eduzz => Some(Duration::from_secs(3 * 60)),
            Format::Toolzz | Format::Json => None,
        }
    }

    /// The documented slugs a source of this format may send.
    pub(crate) fn documented_slugs(self) -> Vec<String> {
        match self {
            Format::Eduzz => crate::slugs::eduzz(),
            Format::Toolzz => crate::slugs::toolzz(),
            Format::Json => {
                let mut all = crate::slugs::eduzz();
                all.extend(crate::slugs::toolzz());
                all
            }
        }
    }
}

/// `[sources.NAME]`: a path, an envelope format and an authentication rule.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceSettings {
    /// Exact HTTP path, e.g. `/webhooks/eduzz`; may end in `/{token}` for token-in-path auth.
    pub path: String,
    pub format: Format,
    /// For `format = "json"`: JSON pointer to the slug (e.g. `/type`).
    pub slug_pointer: Option<String>,
    /// For `format = "json"`: JSON pointer to the event id; unset derives one from the body.
    pub id_pointer: Option<String>,
    pub auth: AuthSettings,
    /// Publish `ping` events too (they are always answered 2xx).
    #[serde(default)]
    pub publish_ping: bool,
    /// Only these client addresses (CIDRs) may post; empty: anyone (authentication still
    /// applies). Behind a proxy, see `server.trusted_proxies`.
    #[serde(default)]
    pub allow_from: Vec<String>,
    /// Most requests of this source processed at once; unset: only the global limit.
    pub max_in_flight: Option<usize>,
    /// Publish this source's events as CloudEvents (`ce_*` headers); unset: not.
    pub cloudevents: Option<CloudEventsSettings>,
    /// The status an event taken is answered with (`spooled`, `received`): 200 or 202; unset:
    /// the format's ([`Format::accepted_status`]).
    pub accepted_status: Option<u16>,
    /// Keep this source's deliveries in the archive (when `[archive]` is enabled); unset: yes.
    pub archive: Option<bool>,
    /// Continue the trace of an incoming W3C `traceparent` (and `tracestate`): for a sender
    /// that traces its own side. Off, a request starts a trace of its own whatever it sends
    /// (a stranger cannot attach the bridge's spans to a trace of its choosing).
    #[serde(default)]
    pub trust_traceparent: bool,
}

/// Why a delivery was not taken.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("unauthorized")]
    Unauthorized(AuthError),
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
}

/// One configured source.
#[derive(Debug)]
pub struct Source {
    pub name: Arc<str>,
    pub path: String,
    pub envelope: EnvelopeFormat,
    pub auth: Auth,
    pub publish_ping: bool,
    /// Client networks allowed to post; empty: any.
    allow_from: Vec<Cidr>,
    /// This source's share of requests in flight, when limited.
    pub in_flight: Option<Arc<tokio::sync::Semaphore>>,
    /// The CloudEvents attributes its events get, when it publishes them.
    pub cloudevents: Option<CloudEvents>,
    /// What a taken event is answered with: the sender's own idea of success.
    pub accepted_status: StatusCode,
    /// Whether its deliveries are archived (when the archive is on).
    pub archive: bool,
    /// Whether an incoming trace context is continued.
    pub trust_traceparent: bool,
}

impl Source {
    /// Whether a client at `ip` may post to this source.
    pub(crate) fn allows(&self, ip: std::net::IpAddr) -> bool {
        self.allow_from.is_empty() || self.allow_from.iter().any(|n| n.contains(&ip))
    }

    /// Authenticates and parses one delivery.
    pub fn accept(
        &self,
        headers: &HeaderMap,
        path_token: Option<&str>,
        body: Bytes,
        received_at: SystemTime,
    ) -> Result<Event, SourceError> {
        self.auth
            .verify(headers, path_token, &body)
            .map_err(SourceError::Unauthorized)?;
        Ok(self.read(headers, body, received_at)?)
    }

    /// Parses one delivery without authenticating it: only for a body that was authenticated,
    /// or for a dry run that publishes nothing (`check-config --explain`).
    pub fn read(
        &self,
        headers: &HeaderMap,
        body: Bytes,
        received_at: SystemTime,
    ) -> Result<Event, EnvelopeError> {
        let envelope = self.envelope.parse(&body)?;
        let cloudevent = self
            .cloudevents
            .as_ref()
            .map(|ce| ce.attributes(&envelope.slug, &envelope.doc));
        let content_type = headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty() && v.len() <= 256)
            .unwrap_or("application/json")
            .to_string();
        Ok(Event {
            source: self.name.clone(),
            slug: envelope.slug.into(),
            id: envelope.id,
            doc: envelope.doc,
            body,
            content_type,
            received_at,
            cloudevent,
            request_headers: Vec::new(),
            trace: None,
        })
    }

    pub fn format(&self) -> Format {
        self.envelope.format
    }
}

/// All sources, found by request path.
#[derive(Debug, Default)]
pub struct Sources {
    exact: HashMap<String, Arc<Source>>,
    /// Sources whose path ends in `/{token}`, by the path before it.
    token_prefixed: HashMap<String, Arc<Source>>,
    ordered: Vec<Arc<Source>>,
}

impl Sources {
    /// Builds every source; problems go to `problems` under `sources.NAME.…`.
    pub(crate) fn build(
        settings: &BTreeMap<String, SourceSettings>,
        problems: &mut Problems,
    ) -> Option<Sources> {
        let mark = problems.mark();
        problems.require(
            !settings.is_empty(),
            "sources",
            "no source is configured; add e.g. [sources.eduzz]",
        );
        let mut sources = Sources::default();
        for (name, s) in settings {
            let prefix = s.path.strip_suffix("/{token}");
            let taken = prefix.unwrap_or(&s.path);
            if let Some(other) = sources.lookup_exact(taken) {
                problems.push(
                    format!("sources.{name}.path"),
                    format!("'{}' is already the path of source '{other}'", s.path),
                );
            }
            let Some(source) = s.build(name, problems) else {
                continue;
            };
            let source = Arc::new(source);
            match prefix {
                Some(p) => sources.token_prefixed.insert(p.to_string(), source.clone()),
                None => sources.exact.insert(s.path.clone(), source.clone()),
            };
            sources.ordered.push(source);
        }
        problems.none_since(mark).then_some(sources)
    }

    fn lookup_exact(&self, path: &str) -> Option<&str> {
        self.exact
            .get(path)
            .or_else(|| self.token_prefixed.get(path))
            .map(|s| &*s.name)
    }

    /// The source serving `path`, and the token found in the path if the source takes one.
    pub fn lookup<'p>(&self, path: &'p str) -> Option<(&Arc<Source>, Option<&'p str>)> {
        if let Some(s) = self.exact.get(path) {
            return Some((s, None));
        }
        let (prefix, token) = path.rsplit_once('/')?;
        if token.is_empty() {
            return None;
        }
        self.token_prefixed.get(prefix).map(|s| (s, Some(token)))
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Source>> {
        self.ordered.iter()
    }
}

impl SourceSettings {
    /// Builds one source; problems go under `sources.NAME`.
    fn build(&self, name: &str, problems: &mut Problems) -> Option<Source> {
        let key = format!("sources.{name}");
        let mark = problems.mark();
        problems.require(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'),
            &key,
            "source names may hold only letters, digits, '_' and '-'",
        );
        let token_in_path = self.check_path(&key, problems);
        let envelope = self.envelope(&key, problems);
        let auth = self
            .auth
            .build(&format!("{key}.auth"), token_in_path, problems);
        let allow_from: Vec<Cidr> = self
            .allow_from
            .iter()
            .enumerate()
            .filter_map(|(i, c)| problems.check(format!("{key}.allow_from[{i}]"), c.parse()))
            .collect();
        problems.require(
            self.max_in_flight != Some(0),
            format!("{key}.max_in_flight"),
            "must be greater than 0 (remove it for no per-source limit)",
        );
        let cloudevents = self
            .cloudevents
            .as_ref()
            .map(|ce| ce.build(&format!("{key}.cloudevents"), self.format, problems));
        let accepted_status = self.accepted_status(&key, problems);
        let (envelope, auth) = (envelope?, auth?);
        problems.none_since(mark).then(|| Source {
            name: Arc::from(name),
            path: self.path.clone(),
            envelope,
            auth,
            publish_ping: self.publish_ping,
            allow_from,
            in_flight: self
                .max_in_flight
                .map(|n| Arc::new(tokio::sync::Semaphore::new(n))),
            cloudevents: cloudevents.flatten(),
            accepted_status,
            archive: self.archive.unwrap_or(true),
            trust_traceparent: self.trust_traceparent,
        })
    }

    /// The status a taken event gets: the format's unless set; only 200 and 202 say "taken"
    /// with a body (a 201 would claim a resource was made, a 204 could carry no body).
    fn accepted_status(&self, key: &str, problems: &mut Problems) -> StatusCode {
        match self.accepted_status {
            None => self.format.accepted_status(),
            Some(200) => StatusCode::OK,
            Some(202) => StatusCode::ACCEPTED,
            Some(other) => {
                problems.push(
                    format!("{key}.accepted_status"),
                    format!(
                        "{other} is not 200 or 202 (Eduzz and Toolzz count only 200 as delivered)"
                    ),
                );
                StatusCode::OK
            }
        }
    }

    /// Checks the path; returns whether it ends in `/{token}`.
    fn check_path(&self, key: &str, problems: &mut Problems) -> bool {
        let token_in_path = self.path.ends_with("/{token}");
        if !self.path.starts_with('/') {
            problems.push(format!("{key}.path"), "must start with '/'");
        } else if self.path.contains('{') && !token_in_path {
            problems.push(
                format!("{key}.path"),
                "the only placeholder a path may hold is a final '/{token}'",
            );
        }
        if token_in_path && !matches!(self.auth, AuthSettings::Token { .. }) {
            problems.push(
                format!("{key}.path"),
                "'/{token}' in the path needs auth.type = \"token\"",
            );
        }
        token_in_path
    }

    fn envelope(&self, key: &str, problems: &mut Problems) -> Option<EnvelopeFormat> {
        let mark = problems.mark();
        match (self.format, &self.slug_pointer) {
            (Format::Json, None) => problems.push(
                format!("{key}.slug_pointer"),
                "format = \"json\" needs a JSON pointer to the slug, e.g. \"/type\"",
            ),
            (Format::Json, Some(p)) => check_pointer(format!("{key}.slug_pointer"), p, problems),
            (other, Some(_)) => problems.push(
                format!("{key}.slug_pointer"),
                format!(
                    "only used with format = \"json\" (the {} envelope fixes it)",
                    other.as_str()
                ),
            ),
            (_, None) => {}
        }
        if let Some(p) = &self.id_pointer {
            problems.require(
                self.format == Format::Json,
                format!("{key}.id_pointer"),
                "only used with format = \"json\"",
            );
            check_pointer(format!("{key}.id_pointer"), p, problems);
        }
        problems.none_since(mark).then(|| EnvelopeFormat {
            format: self.format,
            slug_pointer: self.slug_pointer.clone(),
            id_pointer: self.id_pointer.clone(),
        })
    }
}

/// Records a problem unless `pointer` is a JSON pointer (empty, or starting with '/').
pub(crate) fn check_pointer(key: String, pointer: &str, problems: &mut Problems) {
    problems.require(
        pointer.is_empty() || pointer.starts_with('/'),
        key,
        format!("'{pointer}' is not a JSON pointer (it must start with '/', e.g. \"/data/id\")"),
    );
}

/// An Eduzz source at `/webhooks/eduzz` and a Toolzz one with a path token, for unit tests.
#[cfg(test)]
pub(crate) fn test_sources() -> Sources {
    tests::sources()
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn sources() -> Sources {
        let settings: BTreeMap<String, SourceSettings> = toml::from_str(
            r#"
[eduzz]
path = "/webhooks/eduzz"
format = "eduzz"
auth = { type = "hmac-sha256", secrets = ["k"] }

[toolzz]
path = "/webhooks/toolzz/{token}"
format = "toolzz"
auth = { type = "token", tokens = ["t"] }
"#,
        )
        .unwrap();
        let mut problems = Problems::default();
        Sources::build(&settings, &mut problems).unwrap()
    }

    fn build(extra: &str) -> Result<Sources, String> {
        let settings: BTreeMap<String, SourceSettings> = toml::from_str(&format!(
            "[generic]\npath = \"/g\"\nformat = \"json\"\nslug_pointer = \"/type\"\nauth = {{ type = \"none\" }}\n{extra}"
        ))
        .unwrap();
        let mut problems = Problems::default();
        Sources::build(&settings, &mut problems).ok_or_else(|| {
            let all: Vec<String> = problems.into_vec().iter().map(|p| p.to_string()).collect();
            all.join("; ")
        })
    }

    #[test]
    fn a_taken_event_is_answered_in_the_senders_success_status() {
        let s = sources();
        let status = |path| s.lookup(path).unwrap().0.accepted_status;
        assert_eq!(status("/webhooks/eduzz"), StatusCode::OK);
        assert_eq!(status("/webhooks/toolzz/t"), StatusCode::OK);
        let json = |extra| build(extra).map(|s| s.lookup("/g").unwrap().0.accepted_status);
        assert_eq!(json(""), Ok(StatusCode::ACCEPTED));
        assert_eq!(json("accepted_status = 200"), Ok(StatusCode::OK));
        let refused = json("accepted_status = 204").unwrap_err();
        assert!(
            refused.contains("sources.generic.accepted_status") && refused.contains("204"),
            "{refused}"
        );
    }

    #[test]
    fn paths_find_their_source_and_token() {
        let s = sources();
        let (src, token) = s.lookup("/webhooks/eduzz").unwrap();
        assert_eq!((&*src.name, token), ("eduzz", None));
        let (src, token) = s.lookup("/webhooks/toolzz/abc").unwrap();
        assert_eq!((&*src.name, token), ("toolzz", Some("abc")));
        assert!(s.lookup("/webhooks/toolzz/").is_none());
        assert!(s.lookup("/webhooks/toolzz").is_none());
        assert!(s.lookup("/webhooks/eduzz/x").is_none());
        assert!(s.lookup("/").is_none());
        assert!(s.lookup("").is_none());
    }
}
