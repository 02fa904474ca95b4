//! One topic cannot take the whole window: messages in flight per topic, and the entries that
//! wait for their topic's share (or for their topic to be created).
//!
//! Each topic may always have its share in flight. A topic Kafka is confirming (a successful
//! delivery report within the last second) may borrow a second share while no other topic has
//! entries waiting, as long as one share of the window stays free, in messages and in bytes.
//! A drain of one busy topic (the burst after an outage of a bridge that serves one product)
//! then keeps twice as much in flight, which is what keeps the producer's batches full instead
//! of each round waiting out `linger.ms` (see BENCHMARKS.md).
//!
//! The cost, and why the borrowing stops at one share: a topic can stall while it borrows, or
//! stall in part (one partition without a leader, the others confirming, so it keeps
//! borrowing) until its stuck messages fill both shares. It then holds half of the window
//! instead of a quarter until it confirms again, and the other topics share the other half.
//! A topic waiting aside for its creation also stops the others from borrowing; that only
//! slows them to their shares.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

use crate::spool::Entry;

/// Topic names are the drain's keys, looked up several times per event; they come from the
/// operator's routes, not from strangers, so a fast hash is safe here.
type TopicHasher = foldhash::fast::RandomState;

/// How long after its last confirmed message a topic counts as flowing (and may borrow).
const FLOWING: Duration = Duration::from_secs(1);

/// What a flowing topic may have in flight, in shares.
const MOST_SHARES: usize = 2;

/// How much of the window a topic may have in flight.
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    /// What each topic may always have in flight.
    pub share: usize,
    /// The whole window (messages in flight, all topics).
    pub window: usize,
    /// The whole window in bytes of bodies.
    pub window_bytes: usize,
}

impl Limits {
    /// Whether one share of the window stays free: in messages once one more is sent, and in
    /// bytes now (with `in_flight` messages of `bytes` in flight).
    fn share_free_after_one_more(&self, in_flight: usize, bytes: usize) -> bool {
        let share_bytes = self.window_bytes / self.window.max(1) * self.share;
        in_flight + 1 + self.share <= self.window && bytes + share_bytes < self.window_bytes
    }
}

/// Messages in flight per topic, and the entries waiting for their topic's share.
///
/// Entries wait in spool order per topic, and a topic's waiting entries go before any newer
/// entry of that topic, so per-key order holds as it does without waiting. Topics with
/// waiting entries are served round-robin, so none waits behind another's backlog.
#[derive(Default)]
pub(super) struct TopicShares {
    in_flight: HashMap<String, usize, TopicHasher>,
    waiting: HashMap<String, VecDeque<Entry>, TopicHasher>,
    /// Topics with waiting entries, in the order they started waiting (checked round-robin).
    order: VecDeque<String>,
    /// Messages in flight, all topics, and their bytes.
    total_in_flight: usize,
    total_bytes: usize,
    /// When a message of each topic was last confirmed.
    last_confirmed: HashMap<String, Instant, TopicHasher>,
    pub(super) waiting_entries: usize,
    pub(super) waiting_bytes: usize,
}

impl TopicShares {
    /// Whether a new entry of `topic` can be sent at `now`: nothing of it waits, and it has
    /// room.
    pub(super) fn has_room(&self, topic: &str, limits: Limits, now: Instant) -> bool {
        !self.is_waiting(topic) && self.room(topic, limits, now)
    }

    /// Whether `topic` may have one more in flight: it is below its share, or below two
    /// shares while it is flowing, no other topic waits, and one share of the window stays
    /// free after it.
    fn room(&self, topic: &str, limits: Limits, now: Instant) -> bool {
        let mine = self.in_flight.get(topic).copied().unwrap_or(0);
        if mine < limits.share {
            return true;
        }
        let others_wait = match self.waiting.len() {
            0 => false,
            1 => !self.waiting.contains_key(topic),
            _ => true,
        };
        let flowing = self
            .last_confirmed
            .get(topic)
            .is_some_and(|at| now.saturating_duration_since(*at) < FLOWING);
        mine < MOST_SHARES * limits.share
            && flowing
            && !others_wait
            && limits.share_free_after_one_more(self.total_in_flight, self.total_bytes)
    }

    /// Bytes of the bodies in flight, all topics.
    pub(super) fn bytes_in_flight(&self) -> usize {
        self.total_bytes
    }

    pub(super) fn is_waiting(&self, topic: &str) -> bool {
        self.waiting.contains_key(topic)
    }

    /// Puts `e` behind its topic's waiting entries.
    pub(super) fn wait(&mut self, e: Entry) {
        self.waiting_entries += 1;
        self.waiting_bytes += e.message.body.len();
        let topic = e.message.topic.to_string();
        let queue = self.waiting.entry(topic.clone()).or_default();
        if queue.is_empty() {
            self.order.push_back(topic);
        }
        queue.push_back(e);
    }

    /// Puts `e` back in front of its topic's waiting entries (it was taken, then not sent).
    pub(super) fn wait_first(&mut self, e: Entry) {
        self.waiting_entries += 1;
        self.waiting_bytes += e.message.body.len();
        self.waiting
            .entry(e.message.topic.to_string())
            .or_default()
            .push_front(e);
    }

    /// The first waiting entry of a topic that has room again and is `ready`.
    pub(super) fn next_waiting(
        &mut self,
        limits: Limits,
        now: Instant,
        ready: impl Fn(&str) -> bool,
    ) -> Option<Entry> {
        for _ in 0..self.order.len() {
            let topic = self.order.pop_front()?;
            let room = self.room(&topic, limits, now) && ready(&topic);
            let queue = self.waiting.get_mut(&topic)?;
            let next = if room { queue.pop_front() } else { None };
            if queue.is_empty() {
                self.waiting.remove(&topic);
            } else {
                self.order.push_back(topic);
            }
            if let Some(e) = next {
                self.waiting_entries -= 1;
                self.waiting_bytes -= e.message.body.len();
                return Some(e);
            }
        }
        None
    }

    /// A message of `topic` with a body of `bytes` was sent.
    pub(super) fn sent(&mut self, topic: &str, bytes: usize) {
        *self.in_flight.entry(topic.to_string()).or_default() += 1;
        self.total_in_flight += 1;
        self.total_bytes += bytes;
    }

    /// Kafka confirmed a message of `topic` at `now`: the topic is flowing.
    pub(super) fn confirmed(&mut self, topic: &str, now: Instant) {
        match self.last_confirmed.get_mut(topic) {
            Some(at) => *at = now,
            None => {
                self.last_confirmed.insert(topic.to_string(), now);
            }
        }
    }

    /// The report of a message of `topic` with a body of `bytes` came back, whatever it said.
    pub(super) fn reported(&mut self, topic: &str, bytes: usize) {
        if let Some(n) = self.in_flight.get_mut(topic) {
            *n -= 1;
            self.total_in_flight -= 1;
            self.total_bytes -= bytes;
            if *n == 0 {
                self.in_flight.remove(topic);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::tests::sample;

    /// A share of one, and no room to borrow once anything is in flight.
    const ONE: Limits = Limits {
        share: 1,
        window: 2,
        window_bytes: usize::MAX,
    };

    fn now() -> Instant {
        Instant::now()
    }

    fn entry(seq: u64, topic: &str) -> Entry {
        let mut message = sample();
        message.topic = topic.into();
        Entry { seq, message }
    }

    #[test]
    fn topics_waiting_are_served_in_turn_and_each_in_order() {
        let mut shares = TopicShares::default();
        for (seq, topic) in [(1, "a"), (2, "a"), (3, "a"), (4, "b"), (5, "b"), (6, "c")] {
            shares.wait(entry(seq, topic));
        }
        assert_eq!(shares.waiting_entries, 6);
        let mut served = Vec::new();
        while let Some(e) = shares.next_waiting(ONE, now(), |_| true) {
            served.push((e.seq, e.message.topic.clone()));
        }
        let seqs: Vec<u64> = served.iter().map(|(s, _)| *s).collect();
        assert_eq!(
            seqs,
            [1, 4, 6, 2, 5, 3],
            "round-robin, each topic in spool order"
        );
        assert_eq!((shares.waiting_entries, shares.waiting_bytes), (0, 0));
        assert!(!shares.is_waiting("a"));
    }

    #[test]
    fn a_topic_at_its_share_or_not_ready_waits_and_others_go_on() {
        let mut shares = TopicShares::default();
        shares.sent("a", 1);
        assert!(!shares.has_room("a", ONE, now()));
        assert!(shares.has_room("b", ONE, now()));
        shares.wait(entry(1, "a"));
        shares.wait(entry(2, "b"));
        shares.wait(entry(3, "c"));
        let not_c = |t: &str| t != "c";
        assert_eq!(
            shares.next_waiting(ONE, now(), not_c).map(|e| e.seq),
            Some(2)
        );
        assert_eq!(shares.next_waiting(ONE, now(), not_c).map(|e| e.seq), None);
        shares.reported("a", 1);
        assert_eq!(
            shares.next_waiting(ONE, now(), not_c).map(|e| e.seq),
            Some(1)
        );
        // An entry taken and not sent (a full producer queue) goes back in front of its topic.
        shares.wait(entry(9, "c"));
        let taken = shares.next_waiting(ONE, now(), |_| true).unwrap();
        assert_eq!(taken.seq, 3);
        shares.wait_first(taken);
        assert_eq!(
            shares.next_waiting(ONE, now(), |_| true).map(|e| e.seq),
            Some(3)
        );
        assert_eq!(
            shares.next_waiting(ONE, now(), |_| true).map(|e| e.seq),
            Some(9)
        );
    }

    #[test]
    fn a_flowing_topic_alone_borrows_a_second_share_and_stops_once_another_waits() {
        let limits = Limits {
            share: 2,
            window: 8,
            window_bytes: usize::MAX,
        };
        let t0 = Instant::now();
        let mut shares = TopicShares::default();
        let fill = |shares: &mut TopicShares, topic: &str, at: Instant| {
            let mut sent = 0;
            while shares.has_room(topic, limits, at) {
                shares.sent(topic, 1);
                sent += 1;
            }
            sent
        };
        assert_eq!(fill(&mut shares, "a", t0), 2, "never confirmed: its share");
        shares.reported("a", 1);
        assert_eq!(
            fill(&mut shares, "a", t0),
            1,
            "a failure is no confirmation"
        );
        shares.reported("a", 1);
        shares.confirmed("a", t0);
        assert_eq!(fill(&mut shares, "a", t0), 3, "flowing: up to two shares");
        assert!(
            shares.has_room("b", limits, t0),
            "another topic has its share"
        );
        assert_eq!(
            fill(&mut shares, "b", t0),
            2,
            "b at its share, never confirmed"
        );
        // b's next entry waits aside; a, back at its share, may not borrow while it does.
        shares.wait(entry(1, "b"));
        shares.reported("a", 1);
        shares.reported("a", 1);
        assert!(
            !shares.has_room("a", limits, t0),
            "a at its share while b waits"
        );
        assert!(shares.next_waiting(limits, t0, |_| true).is_none());
        shares.reported("b", 1);
        assert_eq!(
            shares.next_waiting(limits, t0, |_| true).map(|e| e.seq),
            Some(1)
        );
        shares.sent("b", 1);
        // Nothing waits any more: a borrows again, until it has not been confirmed for a
        // second.
        assert!(shares.has_room("a", limits, t0));
        assert!(!shares.has_room("a", limits, t0 + FLOWING), "a stalled");
    }

    #[test]
    fn a_borrowing_topic_leaves_a_share_of_the_bytes_free() {
        let limits = Limits {
            share: 2,
            window: 8,
            window_bytes: 8_000,
        };
        let now = Instant::now();
        let mut shares = TopicShares::default();
        shares.confirmed("a", now);
        let mut sent = 0;
        while shares.has_room("a", limits, now) {
            shares.sent("a", 2_500);
            sent += 1;
        }
        assert_eq!(
            sent, 3,
            "a fourth would leave less than 2 000 bytes of 8 000"
        );
    }
}
