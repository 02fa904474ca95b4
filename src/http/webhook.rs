//! One webhook request, from bytes on the wire to an answer.
//!
//! `path → source` (404), `method` (405), `body` read with a size limit and a deadline
//! (413, 408), `source.accept` (401, 400), ping, `route` (drop), `sink.accept` (503).
//! Each step returns early with its answer; the request's span records source, slug, event
//! id and outcome, and the outcome is logged once at the end.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Body;
use serde_json::json;
use tracing::Instrument;

use super::answer::{self, Answer};
use crate::message::Message;
use crate::metrics::{AuthLabels, Metrics, RequestLabels};
use crate::route::{Decision, Router};
use crate::sink::{Accepted, Refusal, Sink};
use crate::source::{SourceError, Sources};

/// What the webhook handler needs.
pub struct WebhookState {
    pub sources: Sources,
    /// Whose `X-Forwarded-For` to believe.
    pub proxies: super::client_ip::ProxyPolicy,
    /// Requests being processed (bodies in memory), all sources together.
    pub in_flight: Arc<tokio::sync::Semaphore>,
    pub router: Router,
    pub sink: Sink,
    pub metrics: Arc<Metrics>,
    pub max_body_bytes: usize,
    pub body_timeout: std::time::Duration,
}

/// Handles one request on the public listener, from `peer`. Generic over the body so the
/// same code serves hyper's connections and in-memory requests (the fuzz target).
pub async fn handle<B>(state: Arc<WebhookState>, req: Request<B>, peer: SocketAddr) -> Answer
where
    B: Body<Data = Bytes> + Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let started = Instant::now();
    let Some((source, token)) = state.sources.lookup(req.uri().path()) else {
        count(&state.metrics, "-", StatusCode::NOT_FOUND, started);
        return answer::not_found();
    };
    let source = source.clone();
    let token = token.map(str::to_owned);
    let client = state.proxies.client_ip(peer.ip(), req.headers());
    let span = tracing::info_span!(
        "webhook",
        source = %source.name,
        %client,
        slug = tracing::field::Empty,
        event_id = tracing::field::Empty,
    );
    let answer = async {
        let (status, answer, outcome) =
            process(&state, &source, client, token.as_deref(), req).await;
        if status.is_server_error() {
            tracing::warn!(status = status.as_u16(), outcome, "webhook not taken");
        } else if status.is_client_error() {
            tracing::info!(status = status.as_u16(), outcome, "webhook refused");
        } else {
            tracing::debug!(status = status.as_u16(), outcome, "webhook taken");
        }
        count(&state.metrics, &source.name, status, started);
        answer
    }
    .instrument(span)
    .await;
    answer
}

fn count(metrics: &Metrics, source: &str, status: StatusCode, started: Instant) {
    metrics
        .http_requests
        .get_or_create(&RequestLabels {
            source: source.to_string(),
            status: status.as_u16(),
        })
        .inc();
    metrics
        .request_duration
        .observe(started.elapsed().as_secs_f64());
}

async fn process<B>(
    state: &WebhookState,
    source: &crate::source::Source,
    client: IpAddr,
    token: Option<&str>,
    req: Request<B>,
) -> (StatusCode, Answer, &'static str)
where
    B: Body<Data = Bytes> + Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    if req.method() != Method::POST {
        return done(answer::method_not_allowed("POST"), "method_not_allowed");
    }
    if !source.allows(client) {
        return refuse(
            StatusCode::FORBIDDEN,
            "forbidden",
            "this address may not post to this source",
        );
    }
    // Bound the bodies held in memory at once, overall and per source.
    let Ok(_global) = state.in_flight.clone().try_acquire_owned() else {
        return done(answer::busy("too many requests in flight", 1), "busy");
    };
    let _local = match &source.in_flight {
        None => None,
        Some(limit) => match limit.clone().try_acquire_owned() {
            Ok(p) => Some(p),
            Err(_) => {
                return done(
                    answer::busy("too many requests in flight for this source", 1),
                    "busy",
                )
            }
        },
    };
    let received_at = SystemTime::now();
    let (parts, body) = req.into_parts();

    let too_large = || {
        refuse_closing(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            &format!("the body is larger than {} bytes", state.max_body_bytes),
        )
    };
    let declared = parts
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > state.max_body_bytes as u64) {
        return too_large();
    }
    let limited = Limited::new(body, state.max_body_bytes);
    let body: Bytes = match tokio::time::timeout(state.body_timeout, limited.collect()).await {
        Err(_) => {
            return refuse_closing(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                "the body did not arrive in time",
            )
        }
        Ok(Err(e))
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            return too_large()
        }
        Ok(Err(_)) => {
            return refuse_closing(
                StatusCode::BAD_REQUEST,
                "body_unreadable",
                "the body could not be read",
            )
        }
        Ok(Ok(collected)) => collected.to_bytes(),
    };

    let event = match source.accept(&parts.headers, token, body, received_at) {
        Ok(e) => e,
        Err(SourceError::Unauthorized(reason)) => {
            state
                .metrics
                .signature_failures
                .get_or_create(&AuthLabels {
                    source: source.name.to_string(),
                    reason: reason.as_str(),
                })
                .inc();
            tracing::info!(reason = reason.as_str(), "authentication failed");
            return refuse(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "the delivery could not be authenticated",
            );
        }
        Err(SourceError::Envelope(e)) => {
            return refuse(StatusCode::BAD_REQUEST, "invalid_envelope", &e.to_string())
        }
    };
    let span = tracing::Span::current();
    span.record("slug", event.slug.as_str());
    span.record("event_id", event.id.as_str());

    if event.is_ping() && !source.publish_ping {
        state.metrics.event(&source.name, &event.slug, "ping");
        return done(
            answer::json(StatusCode::OK, json!({"status": "ok", "event": "ping"})),
            "ping",
        );
    }

    let (topic, key) = match state
        .router
        .route(&source.name, &event.slug, &event.id, &event.doc)
    {
        Decision::Drop { rule } => {
            state.metrics.event(&source.name, &event.slug, "dropped");
            return done(
                answer::json(
                    StatusCode::OK,
                    json!({"status": "dropped", "id": event.id, "event": event.slug, "rule": rule}),
                ),
                "dropped",
            );
        }
        Decision::Publish { topic, key } => (topic, key),
    };

    let message = Message::new(&event, topic, key);
    let topic = message.topic.clone();
    match state.sink.accept(message).await {
        Ok(accepted) => {
            let (status, body, outcome) = match accepted {
                Accepted::Spooled | Accepted::Queued => (
                    StatusCode::ACCEPTED,
                    json!({"status": "accepted", "id": event.id, "event": event.slug, "topic": topic}),
                    "accepted",
                ),
                Accepted::Published(d) => (
                    StatusCode::OK,
                    json!({"status": "published", "id": event.id, "event": event.slug, "topic": topic,
                           "partition": d.partition, "offset": d.offset}),
                    "published",
                ),
                Accepted::DeadLettered => (
                    StatusCode::OK,
                    json!({"status": "dead_lettered", "id": event.id, "event": event.slug, "topic": topic}),
                    "dead_lettered",
                ),
                Accepted::Duplicate => (
                    StatusCode::OK,
                    json!({"status": "duplicate", "id": event.id, "event": event.slug}),
                    "duplicate",
                ),
            };
            state.metrics.event(&source.name, &event.slug, outcome);
            done(answer::json(status, body), outcome)
        }
        Err(Refusal::Busy(why)) => done(answer::busy(&why, 5), "busy"),
        Err(Refusal::Unavailable(why)) => {
            let mut a = answer::error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", &why);
            a.headers_mut()
                .insert(http::header::RETRY_AFTER, http::HeaderValue::from(10u32));
            done(a, "unavailable")
        }
    }
}

fn done(answer: Answer, outcome: &'static str) -> (StatusCode, Answer, &'static str) {
    (answer.status(), answer, outcome)
}

/// An error answer whose code is also the outcome recorded for the request.
fn refuse(
    status: StatusCode,
    code: &'static str,
    message: &str,
) -> (StatusCode, Answer, &'static str) {
    done(answer::error(status, code, message), code)
}

/// Like [`refuse`], and the connection closes (the body was not read whole).
fn refuse_closing(
    status: StatusCode,
    code: &'static str,
    message: &str,
) -> (StatusCode, Answer, &'static str) {
    done(answer::closing(answer::error(status, code, message)), code)
}
