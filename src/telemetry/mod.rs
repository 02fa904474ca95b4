//! Logs and traces: `tracing` with a `RUST_LOG`-style filter, pretty or JSON, and, when
//! `[telemetry.otlp]` is set, OpenTelemetry traces of each event from its request to its
//! Kafka message ([`spans`], [`context`], [`otlp`]).
//!
//! What a sender controls (event ids, slugs, topics made from slugs) is logged as a plain
//! `&str` field (`event_id = msg.event_id.as_str()`), never with `%` (Display): the pretty
//! format writes a `&str` field quoted and escaped, so a newline in a signed event id cannot
//! start a forged line, while JSON escapes it either way. `%` is for what the bridge itself
//! made (addresses, errors, the operator's names).

pub mod context;
pub mod otlp;
pub mod spans;

use serde::Deserialize;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, EnvFilter, Layer, Registry};

pub use context::TraceContext;
pub use otlp::{Otlp, TelemetrySettings};

/// `[log]`: log output.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSettings {
    pub format: LogFormat,
    /// `RUST_LOG`-style filter; the `RUST_LOG` variable wins when set.
    pub filter: String,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            format: LogFormat::Pretty,
            filter: "info".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Pretty,
    Json,
}

/// Installs the global subscriber for logs alone (the command-line tools). `RUST_LOG`, when
/// set, wins over `log.filter`. Calling it twice is harmless (the second call does nothing).
pub fn init(settings: &LogSettings) {
    let _ = Registry::default().with(log_layer(settings)).try_init();
}

/// What `serve` holds while it runs: the trace provider, flushed when the bridge stops.
#[must_use = "dropping it stops exporting traces"]
pub struct Telemetry {
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Telemetry {
    /// Whether traces are exported.
    pub fn tracing(&self) -> bool {
        self.provider.is_some()
    }

    /// Exports the spans still queued and stops the exporter (up to its timeout).
    pub fn shutdown(self) {
        if let Some(provider) = self.provider {
            if let Err(e) = provider.shutdown() {
                tracing::warn!(error = %e, "traces not all exported at shutdown");
            }
        }
    }
}

/// Installs logs and, with `otlp`, the OpenTelemetry layer for the [`spans::TARGET`] spans.
/// Call it inside the Tokio runtime (the gRPC exporter's channel lives on it). An exporter
/// that cannot be built is reported and the bridge runs without traces: traces are never a
/// reason to refuse events.
pub fn init_serving(settings: &LogSettings, otlp: Option<&Otlp>) -> Telemetry {
    let (provider, problem) = match otlp.map(Otlp::tracer_provider) {
        None => (None, None),
        Some(Ok(p)) => (Some(p), None),
        Some(Err(e)) => (None, Some(e)),
    };
    let traces = provider.as_ref().map(|p| {
        use opentelemetry::trace::TracerProvider as _;
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("eduzz-kafka-bridge"))
            .with_location(false)
            .with_threads(false)
            .with_tracked_inactivity(false)
            .with_filter(Targets::new().with_target(spans::TARGET, LevelFilter::TRACE))
    });
    let _ = Registry::default()
        .with(log_layer(settings))
        .with(traces)
        .try_init();
    match (&problem, otlp) {
        (Some(e), _) => {
            tracing::error!(error = %e, "traces are off: the OTLP exporter could not be built")
        }
        (None, Some(o)) => tracing::info!("traces: {}", o.describe()),
        (None, None) => {}
    }
    Telemetry { provider }
}

/// The log output: pretty or JSON on stderr, filtered by `RUST_LOG` or `log.filter`; never
/// the trace spans (their target is off in every filter).
fn log_layer<S>(settings: &LogSettings) -> Box<dyn Layer<S> + Send + Sync>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    let filter = log_filter(&settings.filter);
    match settings.format {
        LogFormat::Json => fmt::layer()
            .with_writer(std::io::stderr)
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_filter(filter)
            .boxed(),
        LogFormat::Pretty => pretty(std::io::stderr).with_filter(filter).boxed(),
    }
}

/// `RUST_LOG` (when set and valid) or the configured filter, with the trace spans' target off.
fn log_filter(configured: &str) -> EnvFilter {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(configured))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    filter.add_directive(
        format!("{}=off", spans::TARGET)
            .parse()
            .expect("a valid directive"),
    )
}

/// The pretty (compact, one line per event) format, writing to `writer`.
fn pretty<S, W>(writer: W) -> impl Layer<S> + Send + Sync
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    fmt::layer().with_writer(writer).compact()
}

/// Lets a repeated log line through at most once per interval per kind, and says how many were
/// held back in between: under a flood of refusals the log stays readable (one line per kind
/// every few seconds, with a count) instead of one line per request.
///
/// Hand-written because what is wanted is "first line now, then a count per interval" keyed by
/// a fixed set of kinds; rate-limiting crates (`governor`) answer "may I?" but do not count
/// what they refused, and `tracing` has no throttling of its own.
#[derive(Debug)]
pub(crate) struct LogThrottle {
    interval: std::time::Duration,
    kinds: std::sync::Mutex<std::collections::HashMap<&'static str, Window>>,
}

#[derive(Debug)]
struct Window {
    opened: std::time::Instant,
    held_back: u64,
}

impl LogThrottle {
    pub(crate) fn new(interval: std::time::Duration) -> LogThrottle {
        LogThrottle {
            interval,
            kinds: Default::default(),
        }
    }

    /// `Some(n)` when a line of this kind may be written now, `n` being how many were held back
    /// since the last one; `None` when this one is held back.
    pub(crate) fn admit(&self, kind: &'static str) -> Option<u64> {
        let now = std::time::Instant::now();
        let mut kinds = self.kinds.lock().unwrap_or_else(|p| p.into_inner());
        match kinds.get_mut(kind) {
            Some(w) if now.duration_since(w.opened) < self.interval => {
                w.held_back += 1;
                None
            }
            Some(w) => {
                let held = std::mem::take(&mut w.held_back);
                w.opened = now;
                Some(held)
            }
            None => {
                kinds.insert(
                    kind,
                    Window {
                        opened: now,
                        held_back: 0,
                    },
                );
                Some(0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    /// A log writer into memory.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_newline_in_a_str_field_stays_on_its_line_in_pretty_logs() {
        let out = Captured::default();
        let writer = out.clone();
        let subscriber = Registry::default()
            .with(pretty(move || writer.clone()).with_filter(log_filter("info")));
        let id = "evil\n2026-01-01T00:00:00Z  INFO forged";
        tracing::subscriber::with_default(subscriber, || {
            tracing::error!(event_id = id, "parked");
        });
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(
            text.contains(r#""evil\n2026-01-01"#),
            "quoted and escaped: {text}"
        );
    }

    #[test]
    fn throttle_lets_one_line_per_interval_through_and_counts_the_rest() {
        let t = LogThrottle::new(Duration::from_millis(50));
        assert_eq!(t.admit("busy"), Some(0));
        for _ in 0..99 {
            assert_eq!(t.admit("busy"), None);
        }
        // Another kind has its own window.
        assert_eq!(t.admit("full"), Some(0));
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(t.admit("busy"), Some(99));
        assert_eq!(t.admit("busy"), None);
    }
}
