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

/// Applies a batch of appends and deletes in one transaction, made durable by a frame of the
/// write-ahead log (see [`super::wal`]) or, when a checkpoint is due, by redb itself after the
/// segments' fsync: the stored appends become one record, whatever their number, appended to
/// the current [segment](super::segment).
///
/// `durable`: a checkpoint whatever is due (the filesystem is short of space).
///
/// Returns one outcome per append, in order. On error nothing was committed, and `counters`
/// and `ids` are left as they were; what it wrote beside the file is the caller's to retract
/// ([`Files::retract`]).
pub(in crate::spool) fn commit_batch(
    db: &Database,
    (counters, ids, files): (&mut Counters, &mut Ids, &mut Files),
    (limits, durable): (&Limits, bool),
    now_ms: u64,
    appends: &[Append<'_>],
    marks: &Marks<'_>,
) -> Result<Vec<AppendOutcome>, redb::Error> {
    let mut c = *counters;
    let mut txn = db.begin_write()?;
    // Parks are made durable by redb at once: the recovery check relies on them to know which
    // entries were never sent. So is a quarantine (rare, and its bytes are not in the log).
    let marked = !(marks.parked.is_empty()
        && marks.unparked.is_empty()
        && marks.quarantined.is_empty()
        && marks.kept.is_empty());
    let mut changes = IdChanges::default();
    let (outcomes, moved, written, checkpoint) = {
        let mut t = Tables::open(&txn)?;
        t.delete(&mut c, marks.deleted)?;
        t.mark_parked(marks)?;
        // Opened only when used: the table is empty in normal running.
        let moved = if marks.quarantined.is_empty() && marks.kept.is_empty() {
            Vec::new()
        } else {
            let mut q = txn.open_table(QUARANTINE)?;
            let mut moved = t.quarantine(&mut q, &mut c, marks.quarantined, &files.segments)?;
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
        let written = t.write(batch, &mut changes, &mut files.segments)?;
        if let (Some(d), Some(cutoff)) = (limits.dedupe, cutoff) {
            t.forget_old_ids(&mut c, (&d, cutoff), (ids, &mut changes))?;
        }
        let checkpoint = durable
            || marked
            || files
                .wal
                .checkpoint_due(written.events.len(), written.keys.len());
        // Not on a disk short of space: the copies would take room before the old segments
        // give theirs back.
        let moved_forward = checkpoint && !durable && t.move_forward(&mut files.segments)?;
        let mut meta = txn.open_table(META)?;
        write_counters(&mut meta, &c)?;
        if !written.events.is_empty() || moved_forward {
            write_position(&mut meta, &files.segments)?;
        }
        if c.quarantined != counters.quarantined {
            meta.insert(QUARANTINED, c.quarantined)?;
        }
        (outcomes, moved, written, checkpoint)
    };
    let (logged, checkpoint) =
        log_or_checkpoint(&mut txn, &mut files.wal, &written, (checkpoint, durable))?;
    // On failure the frame written stays in the log, not taken into use, and the record in
    // the segment: the writer retracts both after any failed commit (an error here or a panic
    // in redb alike), see `Files::retract`.
    if checkpoint {
        commit_durably(txn, &mut files.segments)?;
    } else {
        txn.commit()?;
        files.segments.advance();
    }
    if let Some(end) = logged {
        files.wal.advance(end);
    }
    quarantine::log_moved(&moved);
    *counters = c;
    ids.apply(changes);
    Ok(outcomes)
}

/// Makes the commit durable: by a frame of the log, redb committing without durability; or,
/// when `checkpoint` is due (or the log has no room to grow), by redb itself, the commit's
/// events then the first frame of the next generation. Returns where the log ends after the
/// frame written, to be taken into use once redb has the commit, and whether it is a
/// checkpoint.
fn log_or_checkpoint(
    txn: &mut redb::WriteTransaction,
    wal: &mut Wal,
    written: &Written,
    (checkpoint, durable): (bool, bool),
) -> Result<(Option<u64>, bool), redb::Error> {
    let mut checkpoint = checkpoint;
    let mut logged = None;
    let (events, keys) = (&written.events, &written.keys);
    // Only deletes of published entries: no frame. A crash that loses them is made good by
    // the start-up recovery check, which finds those entries on Kafka and skips them.
    if !checkpoint && !events.is_empty() {
        match wal.write(written.newest_ms, events, keys) {
            Ok(end) => logged = Some(end),
            // A full disk, and the log must grow: redb's own durable commit instead.
            Err(e) if e.kind() == std::io::ErrorKind::StorageFull => checkpoint = true,
            Err(e) => return Err(e.into()),
        }
    }
    if checkpoint {
        // The checkpoint's own events are the first frame of the next generation: if redb
        // ever falls back to the commit before this one, the log still holds them.
        wal.restart(wal.next_generation());
        // Not on a disk short of space, where the log's room is better left to the spool.
        if !durable && !events.is_empty() && wal.takes(events.len(), keys.len()) {
            match wal.write(written.newest_ms, events, keys) {
                Ok(end) => logged = Some(end),
                Err(e) => tracing::debug!(error = %e, "a checkpoint's events not logged"),
            }
        }
        txn.open_table(META)?
            .insert(WAL_GENERATION, wal.generation())?;
    } else {
        txn.set_durability(redb::Durability::None)?;
    }
    Ok((logged, checkpoint))
}

/// The records one commit stored (empty when it stored none), for its frame in the log.
struct Written {
    events: Vec<u8>,
    keys: Vec<u8>,
    newest_ms: u64,
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
    pub(super) at: redb::Table<'txn, u64, (u64, u64)>,
    pub(super) live: redb::Table<'txn, u64, (u64, u64)>,
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
            at: txn.open_table(BATCH_AT)?,
            live: txn.open_table(SEGMENT_LIVE)?,
            index: txn.open_table(BATCH_INDEX)?,
            gone: txn.open_table(GONE)?,
            dedupe_batches: txn.open_table(DEDUPE_BATCHES)?,
        })
    }

    /// Stores a batch record under `first` in redb itself, as format 4 did (the upgrade of a
    /// file from before batches, which has no segments yet); returns its size in bytes.
    pub(super) fn insert_batch(
        &mut self,
        first: u64,
        record: RecordBuilder,
    ) -> Result<u64, redb::Error> {
        let count = record.count();
        let record = record.finish();
        self.batches.insert(first, record.as_slice())?;
        self.index
            .insert(first, (u64::from(count), record.len() as u64))?;
        Ok(record.len() as u64)
    }

    /// Appends a finished record of `count` events to the segments, under `first`; returns
    /// its size in bytes. The count is the caller's: a record replayed from the log may have a
    /// damaged header.
    fn insert_record(
        &mut self,
        (first, count): (u64, u32),
        record: &[u8],
        segments: &mut Segments,
    ) -> Result<u64, redb::Error> {
        let len = record.len() as u64;
        let at = segments.append(record)?;
        self.at.insert(first, (at.segment, at.offset))?;
        self.live_added(at.segment, len)?;
        self.index.insert(first, (u64::from(count), len))?;
        Ok(len)
    }

    /// Counts a record of `len` bytes into `segment` (see `SEGMENT_LIVE`).
    pub(super) fn live_added(&mut self, segment: u64, len: u64) -> Result<(), redb::Error> {
        let (batches, bytes) = self.live.get(segment)?.map_or((0, 0), |v| v.value());
        self.live.insert(segment, (batches + 1, bytes + len))?;
        Ok(())
    }

    /// Counts a record of `len` bytes out of `segment`; a segment with none left is no longer
    /// listed.
    pub(super) fn live_removed(&mut self, segment: u64, len: u64) -> Result<(), redb::Error> {
        let (batches, bytes) = self.live.get(segment)?.map_or((0, 0), |v| v.value());
        if batches <= 1 {
            self.live.remove(segment)?;
        } else {
            self.live
                .insert(segment, (batches - 1, bytes.saturating_sub(len)))?;
        }
        Ok(())
    }

    /// The stored record of the batch starting at `first`, `len` bytes long, and whether it
    /// is in a segment: from there, or from redb for a batch of format 4.
    pub(super) fn record(
        &self,
        (first, len): (u64, u64),
        segments: &Segments,
    ) -> Result<Option<(Vec<u8>, bool)>, redb::Error> {
        let tables = (Some(&self.at), &self.batches);
        read::stored_record(tables, segments.dir(), (first, len))
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
            // Its segment goes once older than the oldest batch's (see `Segments::checkpointed`).
            let segment = self.at.remove(batch.start)?.map(|at| at.value().0);
            match segment {
                Some(segment) => self.live_removed(segment, len)?,
                None => {
                    self.batches.remove(batch.start)?;
                }
            }
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

    /// Writes the records of what `admit` stored (nothing when it stored nothing), and hands
    /// them back for the log.
    fn write(
        &mut self,
        batch: NewBatch,
        changes: &mut IdChanges<'_>,
        segments: &mut Segments,
    ) -> Result<Written, redb::Error> {
        let mut written = Written {
            events: Vec::new(),
            keys: Vec::new(),
            newest_ms: batch.newest_ms,
        };
        if batch.events.count() > 0 {
            let count = batch.events.count();
            written.events = batch.events.finish();
            self.insert_record((batch.first_seq, count), &written.events, segments)?;
        }
        if batch.keys.count() > 0 {
            changes.stored_batch(IdBatch {
                first: batch.first_dseq,
                count: batch.keys.count(),
                newest_ms: batch.newest_ms,
            });
            written.keys = batch.keys.finish();
            self.dedupe_batches
                .insert((batch.newest_ms, batch.first_dseq), written.keys.as_slice())?;
        }
        Ok(written)
    }

    /// Applies one frame of the write-ahead log at open (see [`super::wal`]), one that follows
    /// on from what the file holds (see `frames_from`). A damaged frame is stored as it is:
    /// its records' checksums tell the drain which events to quarantine.
    pub(super) fn apply_frame(
        &mut self,
        c: &mut Counters,
        frame: &wal::Frame,
        segments: &mut Segments,
    ) -> Result<(), redb::Error> {
        let len = self.insert_record((frame.first, frame.count), &frame.events, segments)?;
        let count = u64::from(frame.count);
        c.next_seq += count;
        c.depth += count;
        c.bytes += len;
        match record::Header::read(&frame.keys) {
            Some(k) => {
                self.dedupe_batches
                    .insert((frame.newest_ms, k.first), frame.keys.as_slice())?;
                c.dedupe_seq = c.dedupe_seq.max(k.first + u64::from(k.count));
                // An estimate where a key replaced a stale one; the spool counts its ids at open.
                c.dedupe_entries += u64::from(k.count);
            }
            None if !frame.keys.is_empty() => tracing::error!(
                first = frame.first,
                events = count,
                "the dedupe ids of a commit in the spool's write-ahead log are damaged: a retry of those events would be taken again"
            ),
            None => {}
        }
        if !frame.intact {
            tracing::error!(
                first = frame.first,
                events = count,
                "a commit in the spool's write-ahead log is damaged: applied as it is, its damaged events go to the quarantine as the drain meets them"
            );
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
