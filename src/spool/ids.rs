//! The dedupe ids of the window, in memory.
//!
//! Every commit that accepts events with ids already stores those ids as one record of keys
//! (`dedupe_batches`, see [`super::store`]): that record is what makes them durable. Looking
//! them up in an on-disk B-tree keyed by id as well cost one random leaf per new id in every
//! commit (ids are random, so ~27 leaves rewritten per commit of 32 events, the spool's main
//! cost in the default configuration). Here the ids live in a hash table instead, rebuilt from
//! the records when the spool opens, and a commit writes a handful of pages whatever its ids.
//!
//! It holds a 64-bit digest of each key, not the key: 16 bytes an id once it is older than the
//! newest 65 536 (see [`latest`]), so 16 MiB for a window of 1 M ids.
//! A digest found is confirmed against the key stored in its record before an event is
//! called a duplicate, so two ids that share a digest never lose an event: the older of the
//! two only stops being deduped.

mod latest;

use std::collections::{BTreeMap, HashMap};
use std::hash::BuildHasher;

use latest::Latest;

type Hasher = foldhash::fast::RandomState;

/// One commit's record of keys: the ids `first..first + count` (dedupe sequence numbers),
/// accepted no later than `newest_ms`. Its record's table key is `(newest_ms, first)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct IdBatch {
    pub first: u64,
    pub count: u32,
    pub newest_ms: u64,
}

/// The ids remembered: each key's digest → the dedupe sequence number it was last accepted
/// under, and the batches those numbers belong to.
#[derive(Default)]
pub(in crate::spool) struct Ids {
    /// Seeded per process: the digests are never stored, so they need not be stable, and a
    /// sender cannot pick ids that collide.
    digests: Hasher,
    latest: Latest,
    batches: BTreeMap<u64, IdBatch>,
}

/// What one commit changes, applied only once the commit is durable.
#[derive(Default)]
pub(super) struct IdChanges<'a> {
    /// Digest → (dedupe seq, key) of the ids this commit accepted.
    added: HashMap<u64, (u64, &'a str)>,
    batch: Option<IdBatch>,
    /// Batches forgotten, and the (digest, dseq) of their ids.
    gone_batches: Vec<u64>,
    gone_ids: Vec<(u64, u64)>,
}

impl Ids {
    pub(super) fn digest(&self, key: &str) -> u64 {
        self.digests.hash_one(key)
    }

    /// The batch `key`'s digest was last accepted in, and its dedupe sequence number.
    pub(super) fn seen(&self, digest: u64) -> Option<(IdBatch, u64)> {
        let dseq = self.latest.get(digest)?;
        let (_, batch) = self.batches.range(..=dseq).next_back()?;
        (dseq < batch.first + u64::from(batch.count)).then_some((*batch, dseq))
    }

    /// Ids remembered.
    pub(super) fn len(&self) -> usize {
        self.latest.len()
    }

    /// Adds a batch as stored: on open, in the order of the table (a key accepted again
    /// keeps the newer of its numbers).
    pub(super) fn load<'k>(&mut self, batch: IdBatch, keys: impl Iterator<Item = &'k str>) {
        for (i, key) in keys.enumerate() {
            let dseq = batch.first + i as u64;
            self.latest.insert(self.digest(key), dseq);
        }
        self.batches.insert(batch.first, batch);
    }

    pub(super) fn apply(&mut self, changes: IdChanges<'_>) {
        for (d, dseq) in changes.gone_ids {
            self.latest.remove_if(d, dseq);
        }
        if let Some(b) = changes.batch {
            self.batches.insert(b.first, b);
        }
        for first in changes.gone_batches {
            self.batches.remove(&first);
        }
        for (d, (dseq, _)) in changes.added {
            self.latest.insert(d, dseq);
        }
    }
}

impl<'a> IdChanges<'a> {
    /// An id this commit accepted already, under what dedupe seq (`None` when another key of
    /// the same digest was).
    pub(super) fn added(&self, digest: u64, key: &str) -> Option<u64> {
        self.added
            .get(&digest)
            .and_then(|&(dseq, k)| (k == key).then_some(dseq))
    }

    pub(super) fn add(&mut self, digest: u64, dseq: u64, key: &'a str) {
        self.added.insert(digest, (dseq, key));
    }

    pub(super) fn stored_batch(&mut self, batch: IdBatch) {
        self.batch = Some(batch);
    }

    /// Forgets one id of a batch that goes; says whether it was the id's latest acceptance
    /// (not one this commit replaces), i.e. whether the window holds one id fewer.
    pub(super) fn forget(&mut self, ids: &Ids, digest: u64, dseq: u64) -> bool {
        match self.added.get(&digest) {
            // Accepted and forgotten in one commit (its batch the oldest: the clock went back).
            Some(&(added, _)) if added == dseq => {
                self.added.remove(&digest);
                return true;
            }
            Some(_) => return false,
            None => {}
        }
        if ids.latest.get(digest) != Some(dseq) {
            return false;
        }
        self.gone_ids.push((digest, dseq));
        true
    }

    pub(super) fn forget_batch(&mut self, first: u64) {
        self.gone_batches.push(first);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(first: u64, count: u32, newest_ms: u64) -> IdBatch {
        IdBatch {
            first,
            count,
            newest_ms,
        }
    }

    #[test]
    fn an_id_is_seen_in_the_batch_it_was_last_accepted_in() {
        let mut ids = Ids::default();
        ids.load(batch(0, 2, 10), ["a", "b"].into_iter());
        ids.load(batch(2, 1, 20), ["a"].into_iter());
        let (a, b) = (ids.digest("a"), ids.digest("b"));
        assert_eq!(ids.seen(a), Some((batch(2, 1, 20), 2)));
        assert_eq!(ids.seen(b), Some((batch(0, 2, 10), 1)));
        assert_eq!(ids.seen(ids.digest("c")), None);
        assert_eq!(ids.len(), 2);
    }

    #[test]
    fn changes_wait_for_apply_and_an_id_accepted_again_is_not_forgotten() {
        let mut ids = Ids::default();
        ids.load(batch(0, 2, 10), ["a", "b"].into_iter());
        let (a, b) = (ids.digest("a"), ids.digest("b"));
        let mut ch = IdChanges::default();
        ch.add(a, 2, "a");
        assert_eq!(ch.added(a, "a"), Some(2));
        assert_eq!(ch.added(a, "not a"), None, "same digest, other key");
        ch.stored_batch(batch(2, 1, 30));
        ch.forget_batch(0);
        assert!(!ch.forget(&ids, a, 0), "a is accepted again in this commit");
        assert!(ch.forget(&ids, b, 1));
        assert_eq!(ids.seen(b), Some((batch(0, 2, 10), 1)), "not applied yet");
        ids.apply(ch);
        assert_eq!(ids.seen(a), Some((batch(2, 1, 30), 2)));
        assert_eq!(ids.seen(b), None);
        assert_eq!(ids.len(), 1);
    }
}
