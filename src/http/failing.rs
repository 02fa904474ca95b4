//! How long each source has gone without a single success: the clock Eduzz runs on us.
//!
//! Eduzz counts anything but 200 as a failure, retries a failed event 3 times a minute apart,
//! and then deactivates the URL (its events discarded) or, with the Backup option, keeps them
//! for 7 days. So what tells an operator that events are about to be lost *upstream*, where no
//! spool of ours can save them, is not how many refusals there were (a flood of forged
//! signatures makes many) but how long a source has been answered nothing but failures: three
//! minutes of it and Eduzz has given up on the oldest event.
//!
//! A streak starts at a failure the sender itself got: any answer to a request that passed
//! authentication, and the bridge's own 5xx, whoever asked. A 4xx before authentication (a
//! 401, a 403, a 404) is left out: anyone can earn one, and a stranger must not be able to
//! start the clock on a quiet source. Any 2xx ends the streak; only a 2xx can, and only the
//! real sender gets one. `eduzz_bridge_source_failing_seconds{source}` shows the streak at
//! every scrape (0 when the last answer counted was a 2xx), so the alert fires even when no
//! request comes in, which is what an Inactive URL looks like.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::StatusCode;
use tokio::time::Instant;

use crate::metrics::{Metrics, SourceLabels};
use crate::source::{Source, Sources};

/// A streak shorter than this is left to the refusal lines (a blip is not an emergency);
/// longer ones are logged at error level, at most once per this interval.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// The failing streak of each source, and its gauge.
pub(crate) struct FailingSources {
    streaks: Mutex<HashMap<Arc<str>, Streak>>,
    metrics: Arc<Metrics>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Streak {
    /// When the first failure of the streak was answered; `None`: the last answer was a 2xx.
    since: Option<Instant>,
    /// Failures answered since then.
    failures: u64,
    /// The last error line about this streak.
    logged: Option<Instant>,
}

impl FailingSources {
    /// Every source starts at 0, so an alert on the gauge has a series from the first scrape.
    pub(crate) fn new(sources: &Sources, metrics: Arc<Metrics>) -> FailingSources {
        let streaks = sources
            .iter()
            .map(|s| (s.name.clone(), Streak::default()))
            .collect();
        let failing = FailingSources {
            streaks: Mutex::new(streaks),
            metrics,
        };
        failing.sample();
        failing
    }

    /// Records the answer `source` got; `authenticated` says whether the request passed
    /// authentication (only then is a 4xx the sender's own).
    pub(crate) fn answered(&self, source: &Source, status: StatusCode, authenticated: bool) {
        if status.is_client_error() && !authenticated {
            return;
        }
        let now = Instant::now();
        let mut streaks = self.streaks.lock().unwrap_or_else(|p| p.into_inner());
        // Every source has its entry from the start.
        let Some(streak) = streaks.get_mut(&*source.name) else {
            return;
        };
        if status.is_success() {
            if let Some(since) = streak.since.filter(|_| streak.logged.is_some()) {
                tracing::info!(source = %source.name, failed_for = ?now - since, failures = streak.failures, "source answered 2xx again");
            }
            *streak = Streak::default();
            return;
        }
        let since = *streak.since.get_or_insert(now);
        streak.failures += 1;
        let failing = now - since;
        let due = streak.logged.is_none_or(|at| now - at >= LOG_EVERY);
        if failing >= LOG_EVERY && due {
            streak.logged = Some(now);
            log_streak(source, failing, streak.failures, status);
        }
    }

    /// Sets each source's gauge to its streak now (called when `/metrics` is scraped).
    pub(crate) fn sample(&self) {
        let now = Instant::now();
        let streaks = self.streaks.lock().unwrap_or_else(|p| p.into_inner());
        for (name, streak) in streaks.iter() {
            let failing = streak.since.map_or(Duration::ZERO, |since| now - since);
            self.metrics
                .source_failing
                .get_or_create(&SourceLabels {
                    source: name.to_string(),
                })
                .set(failing.as_secs_f64());
        }
    }

    /// How long `source` has been failing (zero when it is not).
    #[cfg(test)]
    fn failing_for(&self, source: &str) -> Duration {
        let streaks = self.streaks.lock().unwrap();
        streaks
            .get(source)
            .and_then(|s| s.since)
            .map_or(Duration::ZERO, |since| Instant::now() - since)
    }
}

/// The error line of a long streak: how long, and when the sender gives up if its rules say.
fn log_streak(source: &Source, failing: Duration, failures: u64, last: StatusCode) {
    let secs = failing.as_secs();
    let last = last.as_u16();
    match source.format().gives_up_after() {
        Some(limit) => {
            let left = limit.saturating_sub(failing).as_secs();
            tracing::error!(
                source = %source.name,
                failing_seconds = secs,
                failures,
                last_status = last,
                sender_gives_up_in_seconds = left,
                "source answered nothing but failures for {secs} s: its sender retries a failed event 3 times, 1 minute apart, then deactivates the URL and discards its events (in about {left} s). Check /readyz, the spool and Kafka"
            );
        }
        None => tracing::error!(
            source = %source.name,
            failing_seconds = secs,
            failures,
            last_status = last,
            "source answered nothing but failures for {secs} s; its sender may give up. Check /readyz, the spool and Kafka"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sources() -> Sources {
        crate::source::test_sources()
    }

    fn gauge(metrics: &Metrics, source: &str) -> String {
        let text = metrics.render(Default::default());
        let series = format!("eduzz_bridge_source_failing_seconds{{source=\"{source}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&series).map(str::to_string))
            .unwrap_or_else(|| panic!("{series} not in\n{text}"))
    }

    #[tokio::test(start_paused = true)]
    async fn a_streak_runs_from_the_first_failure_until_a_success() {
        let (sources, metrics) = (sources(), Arc::new(Metrics::new()));
        let failing = FailingSources::new(&sources, metrics.clone());
        let eduzz = sources.lookup("/webhooks/eduzz").unwrap().0;
        assert_eq!(gauge(&metrics, "eduzz"), "0.0");
        assert_eq!(gauge(&metrics, "toolzz"), "0.0");

        failing.answered(eduzz, StatusCode::SERVICE_UNAVAILABLE, true);
        tokio::time::advance(Duration::from_secs(30)).await;
        failing.answered(eduzz, StatusCode::SERVICE_UNAVAILABLE, true);
        // No request for a while: the gauge goes on growing at each scrape.
        tokio::time::advance(Duration::from_secs(45)).await;
        failing.sample();
        assert_eq!(gauge(&metrics, "eduzz"), "75.0");
        assert_eq!(gauge(&metrics, "toolzz"), "0.0");

        failing.answered(eduzz, StatusCode::OK, true);
        failing.sample();
        assert_eq!(gauge(&metrics, "eduzz"), "0.0");
        assert_eq!(failing.failing_for("eduzz"), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn strangers_cannot_start_the_clock_but_the_bridges_own_refusals_do() {
        let (sources, metrics) = (sources(), Arc::new(Metrics::new()));
        let failing = FailingSources::new(&sources, metrics);
        let eduzz = sources.lookup("/webhooks/eduzz").unwrap().0;
        for status in [
            StatusCode::UNAUTHORIZED,
            StatusCode::FORBIDDEN,
            StatusCode::PAYLOAD_TOO_LARGE,
        ] {
            failing.answered(eduzz, status, false);
        }
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(failing.failing_for("eduzz"), Duration::ZERO);

        // A 503 before authentication (bodies filling memory) hurts the real sender too.
        failing.answered(eduzz, StatusCode::SERVICE_UNAVAILABLE, false);
        tokio::time::advance(Duration::from_secs(5)).await;
        // An authenticated 400 is the sender's own: it goes on.
        failing.answered(eduzz, StatusCode::BAD_REQUEST, true);
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(failing.failing_for("eduzz"), Duration::from_secs(10));
        // A stranger's 401 neither starts nor ends a streak.
        failing.answered(eduzz, StatusCode::UNAUTHORIZED, false);
        assert_eq!(failing.failing_for("eduzz"), Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn long_streaks_are_logged_at_most_once_per_interval() {
        let (sources, metrics) = (sources(), Arc::new(Metrics::new()));
        let failing = FailingSources::new(&sources, metrics);
        let eduzz = sources.lookup("/webhooks/eduzz").unwrap().0;
        let logged = |f: &FailingSources| f.streaks.lock().unwrap()["eduzz"].logged;
        failing.answered(eduzz, StatusCode::SERVICE_UNAVAILABLE, true);
        tokio::time::advance(Duration::from_secs(9)).await;
        failing.answered(eduzz, StatusCode::SERVICE_UNAVAILABLE, true);
        assert_eq!(logged(&failing), None, "a 9 s blip is not logged");
        tokio::time::advance(Duration::from_secs(1)).await;
        failing.answered(eduzz, StatusCode::SERVICE_UNAVAILABLE, true);
        let first = logged(&failing).expect("10 s of failures are logged");
        tokio::time::advance(Duration::from_secs(3)).await;
        failing.answered(eduzz, StatusCode::SERVICE_UNAVAILABLE, true);
        assert_eq!(
            logged(&failing),
            Some(first),
            "held back within the interval"
        );
        tokio::time::advance(Duration::from_secs(7)).await;
        failing.answered(eduzz, StatusCode::SERVICE_UNAVAILABLE, true);
        assert!(logged(&failing) > Some(first));
    }
}
