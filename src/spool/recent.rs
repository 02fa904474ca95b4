//! The entries committed lately, kept in memory so the drain need not read back and decode
//! what the writer just wrote.

use std::collections::VecDeque;

use super::Entry;

/// Most entries, and most bytes of bodies, kept in memory for the drain. Small: while the
/// drain keeps up it takes them within a commit or two, and while it cannot (Kafka away) the
/// oldest are let go (the drain reads them back from disk), so memory stays flat.
const RECENT_MAX_ENTRIES: usize = 1024;
const RECENT_MAX_BYTES: usize = 4 * 1024 * 1024;

/// Entries committed lately, in sequence order and without gaps (every stored entry is added,
/// and only the oldest are let go). Whatever is here is on disk too: this only spares the
/// drain reading back and decoding what the writer just wrote.
#[derive(Default)]
pub(super) struct Recent {
    entries: VecDeque<Entry>,
    bytes: usize,
}

impl Recent {
    pub(super) fn extend(&mut self, stored: Vec<Entry>) {
        for e in stored {
            self.bytes += e.message.body.len();
            self.entries.push_back(e);
        }
        while self.entries.len() > RECENT_MAX_ENTRIES || self.bytes > RECENT_MAX_BYTES {
            self.pop();
        }
    }

    fn pop(&mut self) -> Option<Entry> {
        let e = self.entries.pop_front()?;
        self.bytes -= e.message.body.len();
        Some(e)
    }

    /// Takes up to `limit` entries after `after`, if the next one is here; `None` when the
    /// reader has to go to disk. Entries before it are let go (the drain reads forward).
    pub(super) fn take_after(&mut self, after: Option<u64>, limit: usize) -> Option<Vec<Entry>> {
        let start = after.map_or(0, |s| s + 1);
        while self.entries.front().is_some_and(|e| e.seq < start) {
            self.pop();
        }
        if self.entries.front()?.seq != start {
            return None;
        }
        let n = limit.min(self.entries.len());
        Some((0..n).filter_map(|_| self.pop()).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::tests::{entry, seqs};

    #[test]
    fn recent_entries_are_taken_in_order_or_read_from_disk() {
        let mut r = Recent::default();
        assert_eq!(seqs(r.take_after(None, 10)), None, "empty: read the disk");
        r.extend((5..10).map(|s| entry(s, 1)).collect());
        assert_eq!(
            seqs(r.take_after(Some(2), 10)),
            None,
            "3 and 4 are on disk only"
        );
        assert_eq!(seqs(r.take_after(Some(4), 2)), Some(vec![5, 6]));
        assert_eq!(
            seqs(r.take_after(Some(7), 10)),
            Some(vec![8, 9]),
            "7 let go"
        );
        assert_eq!(r.bytes, 0);
    }

    #[test]
    fn recent_entries_stay_within_their_bounds() {
        let mut r = Recent::default();
        r.extend(
            (0..RECENT_MAX_ENTRIES as u64 + 10)
                .map(|s| entry(s, 1))
                .collect(),
        );
        assert_eq!(r.entries.len(), RECENT_MAX_ENTRIES);
        assert_eq!(r.entries.front().map(|e| e.seq), Some(10));
        let big = RECENT_MAX_BYTES / 2 + 1;
        r.extend(vec![entry(10_000, big), entry(10_001, big)]);
        assert_eq!(r.entries.len(), 1);
        assert_eq!(r.bytes, big);
    }
}
