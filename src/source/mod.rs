//! Sources: who may post, on which path, in which envelope.
//!
//! A source turns a raw delivery (headers, path, body) into an [`Event`]: it authenticates
//! the raw bytes first (so an unsigned stranger's JSON is never parsed), then reads the
//! envelope. What it returns is all later stages need; they never see HTTP.

pub mod auth;
pub mod envelope;
pub mod strict_json;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use http::HeaderMap;

use crate::config::{Format, Settings};
pub use auth::{Auth, AuthError};
pub use envelope::{EnvelopeError, EnvelopeFormat};

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
    pub fn is_ping(&self) -> bool {
        self.slug == "ping"
    }
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
    pub allow_from: Vec<ipnet::IpNet>,
    /// This source's share of requests in flight, when limited.
    pub in_flight: Option<Arc<tokio::sync::Semaphore>>,
}

impl Source {
    /// Whether a client at `ip` may post to this source.
    pub fn allows(&self, ip: std::net::IpAddr) -> bool {
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
        let envelope = self.envelope.parse(&body)?;
        let content_type = headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty() && v.len() <= 256)
            .unwrap_or("application/json")
            .to_string();
        Ok(Event {
            source: self.name.clone(),
            slug: envelope.slug,
            id: envelope.id,
            doc: envelope.doc,
            body,
            content_type,
            received_at,
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
    /// Builds every source of the config (the config must have been validated).
    pub fn from_settings(settings: &Settings) -> Result<Sources, String> {
        let mut sources = Sources::default();
        for (name, s) in &settings.sources {
            let prefix = s.path.strip_suffix("/{token}");
            let auth = Auth::from_settings(&s.auth, prefix.is_some())
                .map_err(|e| format!("sources.{name}.auth: {e}"))?;
            let source = Arc::new(Source {
                name: Arc::from(name.as_str()),
                path: s.path.clone(),
                envelope: EnvelopeFormat {
                    format: s.format,
                    slug_pointer: s.slug_pointer.clone(),
                    id_pointer: s.id_pointer.clone(),
                },
                auth,
                publish_ping: s.publish_ping,
                allow_from: s
                    .allow_from
                    .iter()
                    .map(|c| crate::config::parse_cidr(c))
                    .collect::<Result<_, _>>()
                    .map_err(|e| format!("sources.{name}.allow_from: {e}"))?,
                in_flight: s
                    .max_in_flight
                    .map(|n| Arc::new(tokio::sync::Semaphore::new(n))),
            });
            match prefix {
                Some(p) => sources.token_prefixed.insert(p.to_string(), source.clone()),
                None => sources.exact.insert(s.path.clone(), source.clone()),
            };
            sources.ordered.push(source);
        }
        Ok(sources)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn sources() -> Sources {
        let s = Settings::from_toml(
            r#"
[sources.eduzz]
path = "/webhooks/eduzz"
format = "eduzz"
auth = { type = "hmac-sha256", secrets = ["k"] }

[sources.toolzz]
path = "/webhooks/toolzz/{token}"
format = "toolzz"
auth = { type = "token", tokens = ["t"] }
"#,
        )
        .unwrap();
        Sources::from_settings(&s).unwrap()
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
