//! One way to wait before trying again: exponential back-off with a ceiling, and the outage
//! that a run of failures makes.
//!
//! Every part of the bridge that talks to something that can be away (Kafka's admin API, the
//! producer, the spool's file, Redis, recovery's consumer) retries the same way: wait `first`,
//! then twice as long after each failure, never longer than `max`, and start again from `first`
//! once an attempt succeeds. Written once here so the doubling, the ceiling and the overflow
//! guard are tested once; the crates that offer this (`backon`, `backoff`) wrap the retried
//! call in their own future, while our callers interleave the wait with a stop signal, a
//! channel or a per-entry due time, and only need the arithmetic.

use std::time::Duration;

// tokio's clock, so the state machines built on these types can be tested on paused time
// (outside a runtime it is the system's monotonic clock).
use tokio::time::Instant;

/// Doubling waits between `first` and `max`.
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    next: Duration,
    failures: u32,
}

impl Backoff {
    pub const fn new(first: Duration, max: Duration) -> Backoff {
        Backoff {
            first,
            max,
            next: first,
            failures: 0,
        }
    }

    /// The wait after `failures` failures in a row (1 is the first), without keeping state:
    /// for a queue of entries that each carry their own attempt count.
    pub fn delay_after(first: Duration, max: Duration, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(31);
        first.saturating_mul(1u32 << doublings).min(max)
    }

    /// Records one more failure and returns how long to wait before the next attempt.
    pub fn fail(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let wait = self.next;
        self.next = self.next.saturating_mul(2).min(self.max);
        wait
    }

    /// An attempt succeeded: the next failure waits `first` again.
    pub fn reset(&mut self) {
        self.next = self.first;
        self.failures = 0;
    }

    /// Failures since the last success.
    pub fn failures(&self) -> u32 {
        self.failures
    }
}

/// A run of failures of one dependency: since when, and how long to wait before the next
/// attempt. Logging "outage started" on the first failure and "ended after N s" on the first
/// success is what an operator reads at 3 a.m.; this type tells the caller which of the two a
/// result is, so every dependency logs the same two lines.
#[derive(Debug, Clone)]
pub struct Outage {
    backoff: Backoff,
    since: Option<Instant>,
    retry_at: Option<Instant>,
}

/// What a failure recorded on an [`Outage`] means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failed {
    /// This failure started the outage (log it loudly); later ones are quieter.
    pub started: bool,
    /// Wait this long before the next attempt.
    pub wait: Duration,
}

impl Outage {
    pub const fn new(first: Duration, max: Duration) -> Outage {
        Outage {
            backoff: Backoff::new(first, max),
            since: None,
            retry_at: None,
        }
    }

    /// Records a failure at `now`.
    pub fn fail(&mut self, now: Instant) -> Failed {
        let started = self.since.is_none();
        self.since.get_or_insert(now);
        let wait = self.backoff.fail();
        self.retry_at = Some(now + wait);
        Failed { started, wait }
    }

    /// Records a success; returns how long the outage lasted if this ended one.
    pub fn succeed(&mut self, now: Instant) -> Option<Duration> {
        self.backoff.reset();
        self.retry_at = None;
        self.since
            .take()
            .map(|since| now.saturating_duration_since(since))
    }

    /// Whether an outage is going on.
    pub fn is_down(&self) -> bool {
        self.since.is_some()
    }

    /// Since when the outage lasts, if one does.
    pub fn since(&self) -> Option<Instant> {
        self.since
    }

    /// Whether the wait after the last failure is still running at `now`.
    pub fn waiting(&self, now: Instant) -> bool {
        self.retry_at.is_some_and(|at| now < at)
    }

    /// Failures since the outage started.
    pub fn failures(&self) -> u32 {
        self.backoff.failures()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn waits_double_up_to_the_ceiling_and_start_over_after_a_success() {
        let mut b = Backoff::new(100 * MS, 1000 * MS);
        let waits: Vec<_> = (0..6).map(|_| b.fail().as_millis()).collect();
        assert_eq!(waits, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(b.failures(), 6);
        b.reset();
        assert_eq!(b.failures(), 0);
        assert_eq!(b.fail(), 100 * MS);
    }

    #[test]
    fn the_stateless_form_agrees_and_never_overflows() {
        let mut b = Backoff::new(500 * MS, Duration::from_secs(30));
        for failures in 1..=12 {
            assert_eq!(
                Backoff::delay_after(500 * MS, Duration::from_secs(30), failures),
                b.fail()
            );
        }
        let huge = Backoff::delay_after(Duration::from_secs(u64::MAX / 2), Duration::MAX, u32::MAX);
        assert_eq!(huge, Duration::MAX);
        assert_eq!(Backoff::delay_after(MS, Duration::MAX, 0), MS);
    }

    #[test]
    fn an_outage_starts_once_waits_and_ends_with_its_length() {
        let t0 = Instant::now();
        let mut o = Outage::new(100 * MS, 400 * MS);
        assert!(!o.is_down());
        assert_eq!(
            o.fail(t0),
            Failed {
                started: true,
                wait: 100 * MS
            }
        );
        assert!(o.waiting(t0 + 50 * MS));
        assert!(!o.waiting(t0 + 100 * MS));
        let again = o.fail(t0 + 100 * MS);
        assert_eq!(
            again,
            Failed {
                started: false,
                wait: 200 * MS
            }
        );
        assert_eq!(o.since(), Some(t0));
        assert_eq!(o.failures(), 2);
        assert_eq!(o.succeed(t0 + 1000 * MS), Some(1000 * MS));
        assert_eq!(o.succeed(t0 + 2000 * MS), None);
        assert!(!o.waiting(t0));
        assert_eq!(
            o.fail(t0).wait,
            100 * MS,
            "a new outage starts from the first wait"
        );
    }
}
