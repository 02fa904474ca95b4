//! The W3C trace context one event carries from its request to its Kafka message.
//!
//! A webhook is answered long before its event is published (after a broker outage, even
//! after a restart), so the context cannot live in a span on the stack: it is taken from the
//! request's span, stored in the spooled entry beside the event, and the producer span of the
//! publish is started as its child, whenever that happens. [`TraceContext`] is that stored
//! form: plain bytes and the `tracestate` text, with its own serde shape, so the spool's
//! format does not follow the OpenTelemetry crates' types.
//!
//! Parsing an incoming `traceparent` is the SDK's W3C propagator's job (version, lengths,
//! all-zero ids, the `tracestate` list); only the bridge's own bounds are added here.

use std::str::FromStr;

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use serde::{Deserialize, Serialize};

/// The W3C header of the trace's position.
pub const TRACEPARENT: &str = "traceparent";
/// The W3C header of vendors' trace data.
pub const TRACESTATE: &str = "tracestate";

/// The longest `tracestate` carried on: the W3C recommends passing at least 512 characters
/// on, and a sender's longer list is dropped whole rather than stored with every event.
pub const MAX_TRACESTATE_BYTES: usize = 512;

/// A position in a trace: the trace, the span that is the parent of what comes next, the
/// sampling decision, and the vendors' `tracestate`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceContext {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    /// The W3C trace flags (bit 0: sampled).
    pub flags: u8,
    /// The `tracestate` header's value; empty when there is none.
    pub state: String,
}

impl TraceContext {
    /// The context of an incoming `traceparent` (and `tracestate`), when it is a valid one.
    pub fn from_headers(headers: &http::HeaderMap) -> Option<TraceContext> {
        let parent = headers.get(TRACEPARENT)?.to_str().ok()?;
        if !well_formed(parent) {
            return None;
        }
        let cx = TraceContextPropagator::new().extract(&HeaderText(headers));
        TraceContext::of(cx.span().span_context())
    }

    /// The stored form of a span's context; `None` when it is no real span (tracing is off,
    /// or the span is disabled).
    pub fn of(span: &SpanContext) -> Option<TraceContext> {
        if !span.is_valid() {
            return None;
        }
        let mut state = span.trace_state().header();
        if state.len() > MAX_TRACESTATE_BYTES {
            state.clear();
        }
        Some(TraceContext {
            trace_id: span.trace_id().to_bytes(),
            span_id: span.span_id().to_bytes(),
            flags: span.trace_flags().to_u8(),
            state,
        })
    }

    /// The same trace and `tracestate`, at `child`'s span and with its sampling decision:
    /// what a message's headers carry once its producer span exists. Only the fixed-width
    /// parts change, so the record keeps the size it was checked with when it was taken.
    pub fn at(&self, child: &TraceContext) -> TraceContext {
        if child.trace_id != self.trace_id {
            return self.clone();
        }
        TraceContext {
            span_id: child.span_id,
            flags: child.flags,
            ..self.clone()
        }
    }

    /// As an OpenTelemetry span context, remote (it came from elsewhere, or from before a
    /// restart).
    pub fn span_context(&self) -> SpanContext {
        SpanContext::new(
            TraceId::from_bytes(self.trace_id),
            SpanId::from_bytes(self.span_id),
            TraceFlags::new(self.flags),
            true,
            TraceState::from_str(&self.state).unwrap_or_default(),
        )
    }

    /// A parent context for a span started from this position.
    pub fn parent(&self) -> opentelemetry::Context {
        opentelemetry::Context::new().with_remote_span_context(self.span_context())
    }

    /// The `traceparent` header's value (version 00).
    pub fn traceparent(&self) -> String {
        format!(
            "00-{}-{}-{:02x}",
            hex::encode(self.trace_id),
            hex::encode(self.span_id),
            self.flags
        )
    }

    /// The `tracestate` header's value, when there is one.
    pub fn tracestate(&self) -> Option<&str> {
        (!self.state.is_empty()).then_some(self.state.as_str())
    }

    /// The trace id as 32 hex digits, as trace back ends show it.
    pub fn trace_id_hex(&self) -> String {
        hex::encode(self.trace_id)
    }

    /// Whether the trace is sampled (its spans are exported).
    pub fn is_sampled(&self) -> bool {
        self.flags & 1 == 1
    }
}

/// The W3C shape the SDK's propagator does not check itself (it takes a trace id of 31
/// digits, for one): `vv-{32 hex}-{16 hex}-ff`, lower-case, exactly 55 characters for
/// version 00 (a later version may append fields after a dash).
fn well_formed(traceparent: &str) -> bool {
    let b = traceparent.as_bytes();
    let hex = |range: std::ops::Range<usize>| {
        b[range]
            .iter()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
    };
    let fits = match traceparent.get(..2) {
        Some("00") => b.len() == 55,
        _ => b.len() == 55 || (b.len() > 56 && b[55] == b'-'),
    };
    fits && b[2] == b'-'
        && b[35] == b'-'
        && b[52] == b'-'
        && hex(0..2)
        && hex(3..35)
        && hex(36..52)
        && hex(53..55)
}

/// Request headers as the propagator reads them (a value that is not visible ASCII is no
/// value).
struct HeaderText<'a>(&'a http::HeaderMap);

impl Extractor for HeaderText<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_traceparent_is_read_and_written_back_the_same() {
        let h = headers(&[(TRACEPARENT, PARENT), (TRACESTATE, "congo=t61rcWkgMzE")]);
        let cx = TraceContext::from_headers(&h).expect("valid");
        assert_eq!(cx.traceparent(), PARENT);
        assert_eq!(cx.tracestate(), Some("congo=t61rcWkgMzE"));
        assert_eq!(cx.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(cx.is_sampled());
        // Through the OpenTelemetry form and back.
        assert_eq!(TraceContext::of(&cx.span_context()), Some(cx));
    }

    #[test]
    fn what_is_not_a_traceparent_starts_no_trace() {
        for bad in [
            "",
            "garbage",
            // All-zero trace id and span id are invalid.
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            // Version ff is forbidden; wrong lengths.
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01",
        ] {
            let h = headers(&[(TRACEPARENT, bad)]);
            assert_eq!(TraceContext::from_headers(&h), None, "{bad:?}");
        }
        assert_eq!(TraceContext::from_headers(&http::HeaderMap::new()), None);
    }

    #[test]
    fn an_oversized_tracestate_is_dropped_and_the_trace_kept() {
        let long = (0..40)
            .map(|i| format!("v{i}=abcdefghijklmn"))
            .collect::<Vec<_>>()
            .join(",");
        assert!(long.len() > MAX_TRACESTATE_BYTES);
        let h = headers(&[(TRACEPARENT, PARENT), (TRACESTATE, &long)]);
        let cx = TraceContext::from_headers(&h).expect("the traceparent is still valid");
        assert_eq!(cx.tracestate(), None);
        assert_eq!(cx.traceparent(), PARENT);
    }

    #[test]
    fn a_child_position_changes_only_the_span_and_the_flags() {
        let h = headers(&[(TRACEPARENT, PARENT), (TRACESTATE, "a=1")]);
        let cx = TraceContext::from_headers(&h).unwrap();
        let child = TraceContext {
            span_id: [7; 8],
            flags: 0,
            state: String::new(),
            ..cx.clone()
        };
        let at = cx.at(&child);
        assert_eq!(
            at.traceparent(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0707070707070707-00"
        );
        assert_eq!(at.tracestate(), Some("a=1"));
        assert_eq!(at.traceparent().len(), cx.traceparent().len());
        // A span of another trace leaves the position as it was.
        let other = TraceContext {
            trace_id: [9; 16],
            ..child
        };
        assert_eq!(cx.at(&other), cx);
    }
}
