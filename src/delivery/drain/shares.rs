//! One topic cannot take the whole window: messages in flight per topic, and the entries that
//! wait for their topic's share (or for their topic to be created).

use std::collections::{HashMap, VecDeque};

use crate::spool::Entry;

/// Topic names are the drain's keys, looked up several times per event; they come from the
/// operator's routes, not from strangers, so a fast hash is safe here.
type TopicHasher = foldhash::fast::RandomState;

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
    pub(super) waiting_entries: usize,
    pub(super) waiting_bytes: usize,
}

impl TopicShares {
    /// Whether a new entry of `topic` can be sent now: nothing of it waits, and it is below
    /// its share.
    pub(super) fn has_room(&self, topic: &str, per_topic: usize) -> bool {
        !self.is_waiting(topic) && self.below_share(topic, per_topic)
    }

    fn below_share(&self, topic: &str, per_topic: usize) -> bool {
        self.in_flight.get(topic).copied().unwrap_or(0) < per_topic
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
        per_topic: usize,
        ready: impl Fn(&str) -> bool,
    ) -> Option<Entry> {
        for _ in 0..self.order.len() {
            let topic = self.order.pop_front()?;
            let room = self.below_share(&topic, per_topic) && ready(&topic);
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

    pub(super) fn sent(&mut self, topic: &str) {
        *self.in_flight.entry(topic.to_string()).or_default() += 1;
    }

    pub(super) fn reported(&mut self, topic: &str) {
        if let Some(n) = self.in_flight.get_mut(topic) {
            *n -= 1;
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
        while let Some(e) = shares.next_waiting(1, |_| true) {
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
        shares.sent("a");
        assert!(!shares.has_room("a", 1));
        assert!(shares.has_room("b", 1));
        shares.wait(entry(1, "a"));
        shares.wait(entry(2, "b"));
        shares.wait(entry(3, "c"));
        let not_c = |t: &str| t != "c";
        assert_eq!(shares.next_waiting(1, not_c).map(|e| e.seq), Some(2));
        assert_eq!(shares.next_waiting(1, not_c).map(|e| e.seq), None);
        shares.reported("a");
        assert_eq!(shares.next_waiting(1, not_c).map(|e| e.seq), Some(1));
        // An entry taken and not sent (a full producer queue) goes back in front of its topic.
        shares.wait(entry(9, "c"));
        let taken = shares.next_waiting(1, |_| true).unwrap();
        assert_eq!(taken.seq, 3);
        shares.wait_first(taken);
        assert_eq!(shares.next_waiting(1, |_| true).map(|e| e.seq), Some(3));
        assert_eq!(shares.next_waiting(1, |_| true).map(|e| e.seq), Some(9));
    }
}
