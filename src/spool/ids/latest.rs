//! Digest → dedupe sequence number, for every id of the window, in as little memory as a
//! lookup per new event allows.
//!
//! A hash table of a million ids is 2^21 slots of 17 bytes (36 MiB), and it doubles as it
//! grows, both halves alive for a moment. Here only the newest ids (at most [`YOUNG_MAX`])
//! are in a hash table; the others are one array sorted by digest, 16 bytes an id and no
//! empty slot (16 MiB for a million), found by bisection. The young ids are sorted and merged
//! into the array in bulk and in place, whatever the order they came in. An id forgotten in the
//! array is marked [`GONE`] and dropped at the next merge, so a forget never moves memory.
//!
//! Hand-written: an LSM crate would bring its own files and threads for what is one sorted
//! `Vec` and a merge, of 64-bit keys that never leave the process.

use std::collections::HashMap;

use super::Hasher;

/// Most ids in the hash table before they are merged into the array: 2^17 slots (2.2 MiB),
/// and a merge every 65 536 new ids, two passes over the array in the writer's commit (5.6 ms
/// on average, 6.1 at worst, at a million ids on the machine of BENCHMARKS.md).
const YOUNG_MAX: usize = 1 << 16;

/// The number of an id forgotten in the array (no id is ever given it: numbers count up
/// from 0).
const GONE: u64 = u64::MAX;

/// Each digest is in at most one of the two places, with the newest number it was accepted
/// under.
pub(super) struct Latest {
    /// [`YOUNG_MAX`], smaller in tests so that a few operations span several merges.
    young_max: usize,
    young: HashMap<u64, u64, Hasher>,
    /// Sorted by digest, each digest once.
    old: Vec<(u64, u64)>,
    /// Entries of `old` not [`GONE`].
    old_live: usize,
}

impl Default for Latest {
    fn default() -> Latest {
        Latest {
            young_max: YOUNG_MAX,
            young: HashMap::default(),
            old: Vec::new(),
            old_live: 0,
        }
    }
}

impl Latest {
    pub(super) fn get(&self, digest: u64) -> Option<u64> {
        match self.young.get(&digest) {
            Some(&dseq) => Some(dseq),
            None => self.old_at(digest).map(|i| self.old[i].1),
        }
    }

    pub(super) fn len(&self) -> usize {
        self.young.len() + self.old_live
    }

    /// Remembers `digest` under `dseq`, unless it is remembered under a newer number.
    pub(super) fn insert(&mut self, digest: u64, dseq: u64) {
        if let Some(i) = self.old_at(digest) {
            if self.old[i].1 >= dseq {
                return;
            }
            self.forget_old(i);
        }
        let latest = self.young.entry(digest).or_insert(dseq);
        *latest = (*latest).max(dseq);
        if self.young.len() >= self.young_max {
            self.merge();
        }
    }

    /// Forgets `digest` if it is remembered under `dseq` (not if accepted again since).
    pub(super) fn remove_if(&mut self, digest: u64, dseq: u64) {
        if self.young.get(&digest) == Some(&dseq) {
            self.young.remove(&digest);
        } else if let Some(i) = self.old_at(digest) {
            if self.old[i].1 == dseq {
                self.forget_old(i);
            }
        }
    }

    fn old_at(&self, digest: u64) -> Option<usize> {
        let i = self.old.binary_search_by_key(&digest, |&(d, _)| d).ok()?;
        (self.old[i].1 != GONE).then_some(i)
    }

    fn forget_old(&mut self, i: usize) {
        self.old[i].1 = GONE;
        self.old_live -= 1;
    }

    /// Moves the young ids into the array, dropping the forgotten ones, in place: the
    /// forgotten ones are squeezed out, then the array is merged from its end, so the old and
    /// a new array are never alive together. Once the window is full, as many ids are
    /// forgotten between merges as are added, and a merge allocates nothing.
    fn merge(&mut self) {
        let mut young: Vec<(u64, u64)> = self.young.drain().collect();
        young.sort_unstable_by_key(|&(d, _)| d);
        self.old.retain(|&(_, dseq)| dseq != GONE);
        let mut old_end = self.old.len();
        self.old.resize(old_end + young.len(), (0, GONE));
        // Each step fills the last free slot with the larger of the two ends; a digest is
        // never in both (an insert forgets it in the array first).
        for slot in (0..self.old.len()).rev() {
            let Some(&newest_young) = young.last() else {
                break;
            };
            if old_end > 0 && self.old[old_end - 1].0 > newest_young.0 {
                old_end -= 1;
                self.old[slot] = self.old[old_end];
            } else {
                self.old[slot] = newest_young;
                young.pop();
            }
        }
        self.old_live = self.old.len();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        /// Accept the digest under the next number (or under an older one, as `load` may).
        Insert { digest: u64, older_by: u64 },
        /// Forget it under its current number, or under another one (a no-op).
        Remove { digest: u64, current: bool },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (0..24u64, prop_oneof![3 => Just(0u64), 1 => 1..4u64])
                .prop_map(|(digest, older_by)| Op::Insert { digest, older_by }),
            1 => (0..24u64, any::<bool>()).prop_map(|(digest, current)| Op::Remove { digest, current }),
        ]
    }

    proptest! {
        /// Whatever the operations, it answers like a plain map keeping the newest number,
        /// across merges (every 4 ids here).
        #[test]
        fn it_answers_like_a_map_of_the_newest_numbers(ops in prop::collection::vec(op(), 1..300)) {
            let mut latest = Latest { young_max: 4, ..Latest::default() };
            let mut model: HashMap<u64, u64> = HashMap::new();
            for (n, op) in ops.into_iter().enumerate() {
                let next = 10 + n as u64;
                match op {
                    Op::Insert { digest, older_by } => {
                        latest.insert(digest, next - older_by);
                        let e = model.entry(digest).or_insert(next - older_by);
                        *e = (*e).max(next - older_by);
                    }
                    Op::Remove { digest, current } => {
                        let dseq = match model.get(&digest) {
                            Some(&d) if current => d,
                            _ => next,
                        };
                        latest.remove_if(digest, dseq);
                        if model.get(&digest) == Some(&dseq) {
                            model.remove(&digest);
                        }
                    }
                }
                prop_assert_eq!(latest.len(), model.len());
            }
            for digest in 0..24 {
                prop_assert_eq!(latest.get(digest), model.get(&digest).copied());
            }
        }
    }

    #[test]
    fn the_array_holds_each_live_id_once_in_order_after_a_merge() {
        let mut latest = Latest::default();
        for (dseq, digest) in [9u64, 3, 7, 1].into_iter().enumerate() {
            latest.insert(digest, dseq as u64);
        }
        latest.merge();
        latest.remove_if(7, 2);
        latest.insert(3, 10);
        latest.insert(5, 11);
        latest.merge();
        assert_eq!(latest.old, [(1, 3), (3, 10), (5, 11), (9, 0)]);
        assert_eq!((latest.young.len(), latest.len()), (0, 4));
    }

    /// Once as many ids are forgotten between merges as are added (a full window), a merge
    /// reuses the array where it is: the old and a new array are never alive together.
    #[test]
    fn a_merge_of_a_full_window_keeps_the_array_where_it_is() {
        let mut latest = Latest {
            young_max: 4,
            ..Latest::default()
        };
        for dseq in 0..8 {
            latest.insert(dseq * 7 % 8, dseq);
        }
        let (at, capacity) = (latest.old.as_ptr(), latest.old.capacity());
        for dseq in 8..40u64 {
            let oldest = dseq - 8;
            latest.remove_if(oldest * 7 % 8 + 8 * (oldest / 8), oldest);
            latest.insert(dseq * 7 % 8 + 8 * (dseq / 8), dseq);
            assert_eq!(latest.len(), 8);
        }
        assert_eq!((latest.old.as_ptr(), latest.old.capacity()), (at, capacity));
        for dseq in 32..40u64 {
            assert_eq!(latest.get(dseq * 7 % 8 + 8 * (dseq / 8)), Some(dseq));
        }
    }
}
