//! The domain path of one webhook, without HTTP: authenticate, parse, answer pings, route,
//! and hand the message to the delivery mode — raw bytes and headers in, one [`Outcome`] out.
//!
//! The HTTP handler only finds the source, applies its limits, reads the body and maps the
//! outcome to an answer; the fuzz target and the benchmarks call this same function, so what
//! they exercise is what serves requests.

use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use http::{HeaderMap, StatusCode};

use crate::archive::Outcome as Answered;
use crate::delivery::{Accepted, Delivery, Refusal};
use crate::event::{Archived, Event, Message};
use crate::kafka::Delivered;
use crate::metrics::{AuthLabels, Metrics, SourceLabels};
use crate::route::{Decision, Router};
use crate::source::{AuthError, EnvelopeError, Source, SourceError, Sources};

/// A delivery as it arrived: what the source needs to authenticate and parse it.
pub struct Inbound<'a> {
    pub headers: &'a HeaderMap,
    /// The token found in the path, for sources whose path ends in `/{token}`.
    pub path_token: Option<&'a str>,
    pub body: Bytes,
    pub received_at: SystemTime,
}

/// The event an outcome is about, as answers name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRef {
    pub id: String,
    pub slug: String,
}

/// What became of one delivery.
#[derive(Debug)]
pub enum Outcome {
    /// The signature or token did not check out (the reason is for logs only).
    Unauthorized(AuthError),
    /// Not an envelope this source takes.
    Invalid(EnvelopeError),
    /// Eduzz's activation ping, answered and not published.
    Ping,
    /// A drop rule matched: answered, not published.
    Dropped { event: EventRef, rule: String },
    /// Taken: spooled or queued, as the ack mode promises.
    Accepted { event: EventRef, topic: String },
    /// Taken and confirmed by Kafka (`published` mode).
    Published {
        event: EventRef,
        topic: String,
        delivered: Delivered,
    },
    /// Kafka refused it for good; it is on the dead-letter topic (`published` mode).
    DeadLettered { event: EventRef, topic: String },
    /// Taken before, within the dedupe window.
    Duplicate { event: EventRef },
    /// Not taken: now (full, or Kafka or storage unavailable: the sender should retry), or
    /// ever (its record would be larger than Kafka takes).
    Refused(Refusal),
}

impl Outcome {
    /// The outcome's name in logs and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Unauthorized(_) => "unauthorized",
            Outcome::Invalid(_) => "invalid_envelope",
            Outcome::Ping => "ping",
            Outcome::Dropped { .. } => "dropped",
            Outcome::Accepted { .. } => "accepted",
            Outcome::Published { .. } => "published",
            Outcome::DeadLettered { .. } => "dead_lettered",
            Outcome::Duplicate { .. } => "duplicate",
            Outcome::Refused(Refusal::Busy(_)) => "busy",
            Outcome::Refused(Refusal::Unavailable { .. }) => "unavailable",
            Outcome::Refused(Refusal::InProgress { .. }) => "in_progress",
            Outcome::Refused(Refusal::TooLarge { .. }) => "record_too_large",
        }
    }
}

/// Sources, routes and the delivery mode: everything between a body and Kafka.
pub struct Pipeline {
    sources: Sources,
    router: Router,
    delivery: Delivery,
    metrics: Arc<Metrics>,
}

impl Pipeline {
    pub fn new(
        sources: Sources,
        router: Router,
        delivery: Delivery,
        metrics: Arc<Metrics>,
    ) -> Self {
        Pipeline {
            sources,
            router,
            delivery,
            metrics,
        }
    }

    pub fn sources(&self) -> &Sources {
        &self.sources
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Takes one delivery for `source` as far as its ack mode goes: [`Pipeline::authenticate`]
    /// then [`Pipeline::deliver`].
    pub async fn process(&self, source: &Source, inbound: Inbound<'_>) -> Outcome {
        match self.authenticate(source, inbound) {
            Ok(event) => self.deliver(source, event).await,
            Err(outcome) => outcome,
        }
    }

    /// Checks the signature or token and parses the envelope: the work a stranger can make
    /// the bridge do, before it holds anything but the body. Records slug and id on the
    /// request's span.
    pub fn authenticate(&self, source: &Source, inbound: Inbound<'_>) -> Result<Event, Outcome> {
        let event = match source.accept(
            inbound.headers,
            inbound.path_token,
            inbound.body,
            inbound.received_at,
        ) {
            Ok(e) => e,
            Err(SourceError::Unauthorized(reason)) => {
                self.metrics
                    .signature_failures
                    .get_or_create(&AuthLabels {
                        source: source.name.to_string(),
                        reason: reason.as_str(),
                    })
                    .inc();
                tracing::debug!(reason = reason.as_str(), "authentication failed");
                return Err(Outcome::Unauthorized(reason));
            }
            Err(SourceError::Envelope(e)) => return Err(Outcome::Invalid(e)),
        };
        let mut event = event;
        if source.archive && self.delivery.archives() {
            event.request_headers = crate::archive::kept_headers(inbound.headers);
        }
        let span = tracing::Span::current();
        span.record("slug", event.slug.as_str());
        span.record("event_id", event.id.as_str());
        Ok(event)
    }

    /// Answers pings, routes an authenticated event and hands it to the delivery mode.
    pub async fn deliver(&self, source: &Source, mut event: Event) -> Outcome {
        let outcome = if event.is_ping() && !source.publish_ping {
            Outcome::Ping
        } else {
            let er = EventRef {
                id: event.id.clone(),
                slug: event.slug.to_string(),
            };
            let decision = self
                .router
                .route(&source.name, &event.slug, &event.id, &event.doc);
            if matches!(decision, Decision::Overflow { .. }) {
                let source = source.name.to_string();
                self.metrics
                    .topic_overflow
                    .get_or_create(&SourceLabels { source })
                    .inc();
            }
            match decision {
                Decision::Drop { rule } => {
                    let mut message = Message::new(&event, "", event.id.as_bytes().to_vec());
                    let kept = std::mem::take(&mut event.request_headers);
                    message.archive = self.archived(source, kept, &rule, StatusCode::OK);
                    self.delivery.archive_answered(&message, Answered::Dropped);
                    Outcome::Dropped { event: er, rule }
                }
                Decision::Publish { topic, key } | Decision::Overflow { topic, key } => {
                    let mut message = Message::new(&event, topic.clone(), key);
                    let rule = self.router.rule_label(&source.name, &event.slug);
                    let answer = self.delivery.taken_status(source.accepted_status);
                    let kept = std::mem::take(&mut event.request_headers);
                    message.archive = self.archived(source, kept, rule, answer);
                    taken(er, topic.into(), self.delivery.accept(message).await)
                }
            }
        };
        if !matches!(outcome, Outcome::Refused(_)) {
            self.metrics
                .event(&source.name, &event.slug, outcome.label());
        }
        outcome
    }

    /// What the archive keeps of an event beside it (its rule, its answer, the request
    /// headers kept), when its source is archived.
    fn archived(
        &self,
        source: &Source,
        request_headers: Vec<(String, String)>,
        rule: &str,
        answer: StatusCode,
    ) -> Option<Archived> {
        (source.archive && self.delivery.archives()).then(|| Archived {
            rule: rule.to_string(),
            answer: answer.as_u16(),
            request_headers,
        })
    }
}

fn taken(event: EventRef, topic: String, result: Result<Accepted, Refusal>) -> Outcome {
    match result {
        Ok(Accepted::Spooled | Accepted::Queued) => Outcome::Accepted { event, topic },
        Ok(Accepted::Published(delivered)) => Outcome::Published {
            event,
            topic,
            delivered,
        },
        Ok(Accepted::DeadLettered) => Outcome::DeadLettered { event, topic },
        Ok(Accepted::Duplicate) => Outcome::Duplicate { event },
        Err(refusal) => Outcome::Refused(refusal),
    }
}
