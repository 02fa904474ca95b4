//! The spans a trace of the bridge holds, in one place: the request (HTTP server semantic
//! conventions), the spool commit, and the publish (messaging conventions).
//!
//! They are `tracing` spans of their own target, [`TARGET`]: the OpenTelemetry layer takes
//! only that target, and the log layer never does (`otel=off` is added to its filter). With
//! tracing off nothing is interested in the target, so every span here is disabled at its
//! call site: creating one costs a load of the call site's cached interest, and recording on
//! it nothing (the values that need formatting are only made for an enabled span).
//!
//! Parents are always given explicitly, from the event's stored [`TraceContext`], never taken
//! from whatever span happens to be current: the publish of an event spooled before a restart
//! runs on the drain's task, far from the request, and still belongs to the request's trace.

use std::fmt::Display;

use opentelemetry::trace::TraceContextExt;
use tracing::field::Empty;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::context::TraceContext;

/// The target of the bridge's OpenTelemetry spans.
pub const TARGET: &str = "otel";

/// What the server span says of the request before its body is read.
pub struct RequestSpan<'a> {
    pub method: &'a http::Method,
    /// The route as configured (`/webhooks/eduzz`, `/toolzz/{token}`): never the path a
    /// request came with, which for a token source holds the token.
    pub route: &'a str,
    pub version: http::Version,
    pub scheme: &'static str,
    pub client: std::net::IpAddr,
    pub user_agent: Option<&'a str>,
    pub source: &'a str,
}

/// The server span of one request, continuing `parent` (an incoming context the source
/// trusts) or starting a trace.
pub fn request(r: &RequestSpan<'_>, parent: Option<&TraceContext>) -> Span {
    let span = tracing::info_span!(
        target: TARGET,
        "request",
        otel.name = Empty,
        otel.kind = "server",
        otel.status_code = Empty,
        http.request.method = r.method.as_str(),
        http.route = r.route,
        url.path = r.route,
        url.scheme = r.scheme,
        network.protocol.name = "http",
        network.protocol.version = Empty,
        client.address = Empty,
        user_agent.original = r.user_agent,
        http.request.body.size = Empty,
        http.response.status_code = Empty,
        eduzz_bridge.source = r.source,
        eduzz_bridge.event.id = Empty,
        eduzz_bridge.event.slug = Empty,
        eduzz_bridge.outcome = Empty,
    );
    if span.is_disabled() {
        return span;
    }
    span.record("otel.name", format!("{} {}", r.method, r.route));
    span.record("network.protocol.version", protocol_version(r.version));
    span.record("client.address", r.client.to_string());
    adopt(&span, parent);
    span
}

/// The event a request brought, once its body is authenticated.
pub fn request_event(span: &Span, id: &str, slug: &str, body_bytes: usize) {
    span.record("eduzz_bridge.event.id", id);
    span.record("eduzz_bridge.event.slug", slug);
    span.record("http.request.body.size", body_bytes);
}

/// How the request was answered. A 5xx is an error of the server span; a 4xx is the
/// client's (the HTTP conventions leave a server span's status unset then).
pub fn request_answered(span: &Span, status: u16, outcome: &'static str) {
    span.record("http.response.status_code", status);
    span.record("eduzz_bridge.outcome", outcome);
    if status >= 500 {
        span.record("otel.status_code", "ERROR");
    }
}

/// The span of one event's spool commit (the group commit it waited for), a child of its
/// request.
pub fn spool_commit(parent: Option<&TraceContext>, bytes: usize) -> Span {
    let span = tracing::info_span!(
        target: TARGET,
        "spool commit",
        otel.kind = "internal",
        otel.status_code = Empty,
        otel.status_description = Empty,
        eduzz_bridge.spool.entry_bytes = bytes,
    );
    adopt(&span, parent);
    span
}

/// The producer span of one publish (`send {topic}`), a child of the request that brought
/// the event; its partition and offset are recorded once Kafka reports them.
pub fn publish(topic: &str, event_id: &str, parent: Option<&TraceContext>) -> Span {
    let span = tracing::info_span!(
        target: TARGET,
        "send",
        otel.name = Empty,
        otel.kind = "producer",
        otel.status_code = Empty,
        otel.status_description = Empty,
        messaging.system = "kafka",
        messaging.destination.name = topic,
        messaging.operation.name = "send",
        messaging.operation.type = "send",
        messaging.message.id = event_id,
        messaging.destination.partition.id = Empty,
        messaging.kafka.offset = Empty,
        error.type = Empty,
    );
    if span.is_disabled() {
        return span;
    }
    span.record("otel.name", format!("send {topic}"));
    adopt(&span, parent);
    span
}

/// Kafka took the message at `partition`, `offset`.
pub fn published(span: &Span, partition: i32, offset: i64) {
    if span.is_disabled() {
        return;
    }
    span.record("messaging.destination.partition.id", partition.to_string());
    span.record("messaging.kafka.offset", offset);
}

/// The span's work failed with `error` (its kind, as `error.type` wants a low-cardinality
/// value, and the status).
pub fn failed(span: &Span, kind: &str, error: &dyn Display) {
    if span.is_disabled() {
        return;
    }
    span.record("error.type", kind);
    span.record("otel.status_code", "ERROR");
    span.record("otel.status_description", error.to_string());
}

/// Where a span sits in its trace, for what comes after it (a spooled entry, a message's
/// headers); `None` for a disabled span.
pub fn position(span: &Span) -> Option<TraceContext> {
    if span.is_disabled() {
        return None;
    }
    TraceContext::of(span.context().span().span_context())
}

/// Makes `parent` the span's parent; with none, the span starts a trace (it is never
/// attached to whichever span is current).
fn adopt(span: &Span, parent: Option<&TraceContext>) {
    if span.is_disabled() {
        return;
    }
    let cx = parent.map_or_else(opentelemetry::Context::new, TraceContext::parent);
    // Only refused when the span is already built or the layer is missing: neither happens
    // to a span just made by an enabled call site.
    let _ = span.set_parent(cx);
}

fn protocol_version(v: http::Version) -> &'static str {
    match v {
        http::Version::HTTP_09 => "0.9",
        http::Version::HTTP_10 => "1.0",
        http::Version::HTTP_2 => "2",
        http::Version::HTTP_3 => "3",
        _ => "1.1",
    }
}
