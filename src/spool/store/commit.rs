//! The one transaction that changes the spool: a group commit's appends, deletes and park
//! marks, and the counters kept with them.

use super::*;
use crate::spool::ids::IdChanges;

/// What a commit changes besides appends: entries published (deleted), and parked or no
/// longer parked.
#[derive(Debug, Default, Clone, Copy)]
pub(in crate::spool) struct Marks<'a> {
    pub deleted: &'a [u64],
    pub parked: &'a [u64],
    pub unparked: &'a [u64],
    /// Entries a read found damaged: moved to the quarantine if they really are.
    pub quarantined: &'a [u64],
    /// Damaged events a salvage found, to keep in the quarantine.
    pub kept: &'a [quarantine::Kept<'a>],
}

/// Applies a batch of appends and deletes in one durable transaction: the stored appends
/// become one record, whatever their number.
///
/// Returns one outcome per append, in order. On error nothing was written, and `counters`
/// and `ids` are left as they were.
pub(in crate::spool) fn commit_batch(
    db: &Database,
    (counters, ids): (&mut Counters, &mut Ids),
    limits: &Limits,
    now_ms: u64,
    appends: &[Append<'_>],
    marks: &Marks<'_>,
) -> Result<Vec<AppendOutcome>, redb::Error> {
    let mut c = *counters;
    let mut txn = db.begin_write()?;
    if appends.is_empty()
        && marks.parked.is_empty()
        && marks.unparked.is_empty()
        && marks.quarantined.is_empty()
        && marks.kept.is_empty()
    {
        // Only deletes of published entries: no fsync of their own. The next append's commit
        // makes them durable; if a crash loses them first, the start-up recovery check finds
        // those entries on Kafka and skips them (see delivery::recover). Parks are fsynced:
        // the recovery check relies on them to know which entries were never sent.
        txn.set_durability(redb::Durability::None)?;
    }
    let mut changes = IdChanges::default();
    let outcomes = {
        let mut t = Tables::open(&txn)?;
        t.delete(&mut c, marks.deleted)?;
        t.mark_parked(marks)?;
        // Opened only when used: the table is empty in normal running.
        let moved = if marks.quarantined.is_empty() && marks.kept.is_empty() {
            Vec::new()
        } else {
            let mut q = txn.open_table(QUARANTINE)?;
            let mut moved = t.quarantine(&mut q, &mut c, marks.quarantined)?;
            moved.extend(quarantine::keep(&mut q, &mut c, marks.kept)?);
            moved
        };
        let cutoff = limits
            .dedupe
            .map(|d| now_ms.saturating_sub(d.window.as_millis() as u64));
        let mut batch = NewBatch::new(&c, appends);
        let outcomes = appends
            .iter()
            .map(|a| t.admit(&mut c, (limits, cutoff), a, &mut batch, (ids, &mut changes)))
            .collect::<Result<Vec<_>, _>>()?;
        t.write(batch, &mut changes)?;
        if let (Some(d), Some(cutoff)) = (limits.dedupe, cutoff) {
            t.forget_old_ids(&mut c, (&d, cutoff), (ids, &mut changes))?;
        }
        let mut meta = txn.open_table(META)?;
        for (k, v) in [
            (NEXT_SEQ, c.next_seq),
            (BYTES, c.bytes),
            (DEDUPE_SEQ, c.dedupe_seq),
            (DEPTH, c.depth),
            (DEDUPE_ENTRIES, c.dedupe_entries),
        ] {
            meta.insert(k, v)?;
        }
        if c.quarantined != counters.quarantined {
            meta.insert(QUARANTINED, c.quarantined)?;
        }
        (outcomes, moved)
    };
    txn.commit()?;
    let (outcomes, moved) = outcomes;
    quarantine::log_moved(&moved);
    *counters = c;
    ids.apply(changes);
    Ok(outcomes)
}

/// What one commit stores: its events' record and its dedupe keys' record.
struct NewBatch {
    first_seq: u64,
    events: RecordBuilder,
    first_dseq: u64,
    keys: RecordBuilder,
    newest_ms: u64,
}

impl NewBatch {
    /// Sized for all of `appends` up front: a batch of large events is copied into its
    /// record once, not again at each growth.
    fn new(c: &Counters, appends: &[Append<'_>]) -> NewBatch {
        let bytes = appends
            .iter()
            .map(|a| RecordBuilder::cost(a.encoded.len()))
            .sum();
        NewBatch {
            first_seq: c.next_seq,
            events: RecordBuilder::with_capacity(c.next_seq, bytes),
            first_dseq: c.dedupe_seq,
            keys: RecordBuilder::keys(c.dedupe_seq),
            newest_ms: 0,
        }
    }
}

/// The tables one commit changes.
pub(super) struct Tables<'txn> {
    pub(super) batches: redb::Table<'txn, u64, &'static [u8]>,
    pub(super) index: redb::Table<'txn, u64, (u64, u64)>,
    pub(super) gone: redb::Table<'txn, u64, ()>,
    pub(super) dedupe_batches: redb::Table<'txn, (u64, u64), &'static [u8]>,
    pub(super) parked: redb::Table<'txn, u64, ()>,
}

impl<'txn> Tables<'txn> {
    pub(super) fn open(txn: &'txn redb::WriteTransaction) -> Result<Tables<'txn>, redb::Error> {
        Ok(Tables {
            parked: txn.open_table(PARKED)?,
            batches: txn.open_table(BATCHES)?,
            index: txn.open_table(BATCH_INDEX)?,
            gone: txn.open_table(GONE)?,
            dedupe_batches: txn.open_table(DEDUPE_BATCHES)?,
        })
    }

    /// Stores a batch record under `first`; returns its size in bytes.
    pub(super) fn insert_batch(
        &mut self,
        first: u64,
        record: RecordBuilder,
    ) -> Result<u64, redb::Error> {
        let count = u64::from(record.count());
        let value = record.finish();
        let len = value.len() as u64;
        self.batches.insert(first, value.as_slice())?;
        self.index.insert(first, (count, len))?;
        Ok(len)
    }

    /// Records parked entries, and forgets those no longer parked or deleted (looked up only
    /// while any entry is parked: the table is empty in normal running).
    pub(super) fn mark_parked(&mut self, marks: &Marks<'_>) -> Result<(), redb::Error> {
        for &seq in marks.unparked {
            self.parked.remove(seq)?;
        }
        for &seq in marks.parked {
            self.parked.insert(seq, ())?;
        }
        if self.parked.first()?.is_some() {
            for &seq in marks.deleted {
                self.parked.remove(seq)?;
            }
        }
        Ok(())
    }

    /// Removes published entries. A batch goes as a whole once all its entries are published;
    /// until then the published ones are listed in `gone`. Unknown or repeated sequence
    /// numbers are ignored.
    pub(super) fn delete(&mut self, c: &mut Counters, seqs: &[u64]) -> Result<(), redb::Error> {
        let mut seqs = seqs.to_vec();
        seqs.sort_unstable();
        seqs.dedup();
        let mut rest = seqs.as_slice();
        while let Some(&seq) = rest.first() {
            let Some((first, count, len)) = batch_holding(&self.index, seq)? else {
                rest = &rest[1..];
                continue;
            };
            let end = first + count;
            let (these, after) = rest.split_at(rest.partition_point(|&s| s < end));
            self.delete_in(c, first..end, len, these)?;
            rest = after;
        }
        Ok(())
    }

    pub(super) fn delete_in(
        &mut self,
        c: &mut Counters,
        batch: std::ops::Range<u64>,
        len: u64,
        seqs: &[u64],
    ) -> Result<(), redb::Error> {
        let gone = published_in(&self.gone, batch.clone())?;
        let fresh: Vec<u64> = seqs
            .iter()
            .copied()
            .filter(|s| gone.binary_search(s).is_err())
            .collect();
        c.depth = c.depth.saturating_sub(fresh.len() as u64);
        if (gone.len() + fresh.len()) as u64 >= batch.end - batch.start {
            self.batches.remove(batch.start)?;
            self.index.remove(batch.start)?;
            for s in gone {
                self.gone.remove(s)?;
            }
            c.bytes = c.bytes.saturating_sub(len);
        } else {
            for s in fresh {
                self.gone.insert(s, ())?;
            }
        }
        Ok(())
    }

    /// Decides one append: a duplicate, no room, or stored (added to `batch`).
    fn admit<'a>(
        &mut self,
        c: &mut Counters,
        (limits, cutoff): (&Limits, Option<u64>),
        a: &Append<'a>,
        batch: &mut NewBatch,
        (ids, changes): (&Ids, &mut IdChanges<'a>),
    ) -> Result<AppendOutcome, redb::Error> {
        let key = a.dedupe_key.filter(|_| limits.dedupe.is_some());
        let digest = key.map(|k| ids.digest(k));
        let mut replaces_stale = false;
        if let (Some(key), Some(d), Some(cutoff)) = (key, digest, cutoff) {
            if changes.added(d, key).is_some() {
                return Ok(AppendOutcome::Duplicate);
            }
            if let Some((seen, dseq)) = ids.seen(d) {
                if self.stored_key(seen, dseq)?.as_deref() == Some(key.as_bytes()) {
                    if seen.newest_ms >= cutoff {
                        return Ok(AppendOutcome::Duplicate);
                    }
                    replaces_stale = true;
                }
            }
        }
        let header = if batch.events.count() == 0 {
            RecordBuilder::HEADER
        } else {
            0
        };
        let len = header + RecordBuilder::cost(a.encoded.len());
        if c.bytes + len > limits.max_bytes {
            return Ok(AppendOutcome::Full);
        }
        let seq = c.next_seq;
        batch.events.push(a.encoded);
        c.next_seq += 1;
        c.depth += 1;
        c.bytes += len;
        if let (Some(key), Some(d)) = (key, digest) {
            // The key's dedupe seq says which batch of keys it belongs to (see forget_old_ids).
            let dseq = c.dedupe_seq;
            c.dedupe_seq += 1;
            changes.add(d, dseq, key);
            batch.keys.push(key.as_bytes());
            batch.newest_ms = batch.newest_ms.max(a.received_at_ms);
            if !replaces_stale {
                c.dedupe_entries += 1;
            }
        }
        Ok(AppendOutcome::Stored { seq })
    }

    /// The key stored under dedupe seq `dseq` of `batch`: what a digest found is confirmed
    /// against (read only for ids seen before, so only for duplicates, in practice).
    fn stored_key(&self, batch: IdBatch, dseq: u64) -> Result<Option<Vec<u8>>, redb::Error> {
        let Some(record) = self.dedupe_batches.get((batch.newest_ms, batch.first))? else {
            return Ok(None);
        };
        let nth = (dseq - batch.first) as usize;
        let key = record::parts(record.value())
            .nth(nth)
            .flatten()
            .map(<[u8]>::to_vec);
        Ok(key)
    }

    /// Writes the records of what `admit` stored (nothing when it stored nothing).
    fn write(&mut self, batch: NewBatch, changes: &mut IdChanges<'_>) -> Result<(), redb::Error> {
        if batch.events.count() > 0 {
            self.insert_batch(batch.first_seq, batch.events)?;
        }
        if batch.keys.count() > 0 {
            changes.stored_batch(IdBatch {
                first: batch.first_dseq,
                count: batch.keys.count(),
                newest_ms: batch.newest_ms,
            });
            self.dedupe_batches.insert(
                (batch.newest_ms, batch.first_dseq),
                batch.keys.finish().as_slice(),
            )?;
        }
        Ok(())
    }

    /// Forgets batches of ids that left the window, and the oldest ones while there are more
    /// than `max_entries`. A key accepted again since (its stale entry replaced) has a newer
    /// dedupe seq and stays.
    pub(super) fn forget_old_ids(
        &mut self,
        c: &mut Counters,
        (d, cutoff): (&DedupeLimits, u64),
        (ids, changes): (&Ids, &mut IdChanges<'_>),
    ) -> Result<(), redb::Error> {
        let mut forgotten = 0;
        while forgotten < EXPIRE_PER_COMMIT {
            let oldest = self.dedupe_batches.first()?.map(|(k, _)| k.value());
            let Some((newest_ms, first_dseq)) = oldest else {
                break;
            };
            if newest_ms >= cutoff && c.dedupe_entries <= d.max_entries {
                break;
            }
            let Some(record) = self.dedupe_batches.remove((newest_ms, first_dseq))? else {
                break;
            };
            forgotten += record::count(record.value()).max(1) as usize;
            changes.forget_batch(first_dseq);
            for (i, key) in record::parts(record.value()).enumerate() {
                let Some(key) = key.and_then(|k| std::str::from_utf8(k).ok()) else {
                    break;
                };
                if changes.forget(ids, ids.digest(key), first_dseq + i as u64) {
                    c.dedupe_entries = c.dedupe_entries.saturating_sub(1);
                }
            }
        }
        Ok(())
    }
}

/// The batch that holds `seq`: its first sequence number, entries and record bytes. Looked up
/// in `batch_index`, so neither deletes nor reads load a record to find where it starts.
pub(super) fn batch_holding(
    index: &impl ReadableTable<u64, (u64, u64)>,
    seq: u64,
) -> Result<Option<(u64, u64, u64)>, redb::Error> {
    let Some(item) = index.range(..=seq)?.next_back() else {
        return Ok(None);
    };
    let (first, (count, len)) = {
        let (k, v) = item?;
        (k.value(), v.value())
    };
    Ok((seq < first + count).then_some((first, count, len)))
}

/// The published entries listed for a batch, in order.
pub(super) fn published_in(
    gone: &impl ReadableTable<u64, ()>,
    batch: std::ops::Range<u64>,
) -> Result<Vec<u64>, redb::Error> {
    let mut out = Vec::new();
    for item in gone.range(batch)? {
        out.push(item?.0.value());
    }
    Ok(out)
}
