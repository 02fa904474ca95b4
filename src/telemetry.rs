//! Logging setup: `tracing` with a `RUST_LOG`-style filter, pretty or JSON.

use serde::Deserialize;
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
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match settings.format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
        LogFormat::Pretty => builder.compact().try_init(),
    };
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
    use std::time::Duration;

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
