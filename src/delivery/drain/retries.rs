//! Sends to try again later: after a passing failure (with back-off), or parked (Kafka
//! refused the event for good and no dead-letter topic took it).

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use crate::event::Message;
use crate::retry::Backoff;

/// The longest wait before re-sending after a passing failure.
const MAX_RETRY_BACKOFF: Duration = Duration::from_secs(30);

/// A send to try again at `due`. A parked entry's message is let go of (`None`): it waits in
/// the spool and is read back when due, so parked events cost memory by their number, not
/// their size.
pub(super) struct Retry {
    pub(super) due: Instant,
    pub(super) seq: u64,
    pub(super) message: Option<Message>,
    pub(super) attempt: u32,
    pub(super) parked: bool,
}

/// Retries in the order they are due.
#[derive(Default)]
pub(super) struct Retries {
    queue: VecDeque<Retry>,
}

impl Retries {
    /// When to re-send after `attempt` passing failures: `first`, doubling, at most 30 s.
    pub(super) fn backoff(first: Duration, attempt: u32) -> Duration {
        Backoff::delay_after(first, MAX_RETRY_BACKOFF, attempt + 1)
    }

    pub(super) fn push(&mut self, r: Retry) {
        let at = self.queue.partition_point(|x| x.due <= r.due);
        self.queue.insert(at, r);
    }

    /// The earliest retry's due time.
    pub(super) fn next_due(&self) -> Option<Instant> {
        self.queue.front().map(|r| r.due)
    }

    /// The earliest retry, if it is due at `now`.
    pub(super) fn pop_due(&mut self, now: Instant) -> Option<Retry> {
        if self.queue.front().is_some_and(|r| r.due <= now) {
            self.queue.pop_front()
        } else {
            None
        }
    }

    /// Makes every parked entry due at `now` (an operator fixed the cause: `parked redrive`),
    /// keeping their order; returns how many.
    pub(super) fn parked_due_now(&mut self, now: Instant) -> usize {
        let (mut parked, rest): (VecDeque<Retry>, VecDeque<Retry>) =
            self.queue.drain(..).partition(|r| r.parked);
        let count = parked.len();
        for r in &mut parked {
            r.due = r.due.min(now);
        }
        self.queue = rest;
        for r in parked {
            self.push(r);
        }
        count
    }

    /// Whether every retry left is a parked entry (nothing else is owed to Kafka).
    pub(super) fn only_parked(&self) -> bool {
        self.queue.iter().all(|r| r.parked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn retry(due: Instant, seq: u64) -> Retry {
        Retry {
            due,
            seq,
            message: None,
            attempt: 0,
            parked: true,
        }
    }

    #[test]
    fn retries_come_due_in_time_order_and_ties_keep_their_order() {
        let t = Instant::now();
        let mut r = Retries::default();
        r.push(retry(t + Duration::from_secs(3), 1));
        r.push(retry(t + Duration::from_secs(1), 2));
        r.push(retry(t + Duration::from_secs(3), 3));
        assert_eq!(r.next_due(), Some(t + Duration::from_secs(1)));
        assert!(r.pop_due(t).is_none());
        let due: Vec<u64> = std::iter::from_fn(|| r.pop_due(t + Duration::from_secs(3)))
            .map(|x| x.seq)
            .collect();
        assert_eq!(due, [2, 1, 3]);
        assert!(r.only_parked());
    }

    #[test]
    fn parked_retries_come_due_now_and_the_others_keep_their_time() {
        let now = Instant::now();
        let mut retries = Retries::default();
        let later = now + Duration::from_secs(60);
        retries.push(Retry {
            parked: false,
            ..retry(later, 1)
        });
        retries.push(retry(later, 2));
        retries.push(retry(later + Duration::from_secs(1), 3));
        assert_eq!(retries.parked_due_now(now), 2);
        assert_eq!(retries.pop_due(now).map(|r| r.seq), Some(2));
        assert_eq!(retries.pop_due(now).map(|r| r.seq), Some(3));
        assert!(
            retries.pop_due(now).is_none(),
            "the passing failure keeps its backoff"
        );
        assert_eq!(retries.next_due(), Some(later));
    }

    #[test]
    fn the_backoff_doubles_from_the_setting_up_to_thirty_seconds() {
        let first = Duration::from_millis(500);
        let waits: Vec<u128> = (0..8)
            .map(|a| Retries::backoff(first, a).as_millis())
            .collect();
        assert_eq!(waits, [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000]);
    }
}
