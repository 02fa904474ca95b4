//! Logging setup: `tracing` with a `RUST_LOG`-style filter, pretty or JSON.
//!
//! What a sender controls (event ids, slugs, topics made from slugs) is logged as a plain
//! `&str` field (`event_id = msg.event_id.as_str()`), never with `%` (Display): the pretty
//! format writes a `&str` field quoted and escaped, so a newline in a signed event id cannot
//! start a forged line, while JSON escapes it either way. `%` is for what the bridge itself
//! made (addresses, errors, the operator's names).

use serde::Deserialize;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, EnvFilter};

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

/// Installs the global subscriber. `RUST_LOG`, when set, wins over `log.filter`.
/// Calling it twice is harmless (the second call does nothing).
pub fn init(settings: &LogSettings) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&settings.filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = match settings.format {
        LogFormat::Json => fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init()
            .map_err(|e| e.to_string()),
        LogFormat::Pretty => pretty(filter, std::io::stderr)
            .try_init()
            .map_err(|e| e.to_string()),
    };
}

/// The pretty (compact, one line per event) format, writing to `writer`.
fn pretty<W>(filter: EnvFilter, writer: W) -> impl tracing::Subscriber + Send + Sync
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .compact()
        .finish()
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
        let subscriber = pretty(EnvFilter::new("info"), move || writer.clone());
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
