//! The quarantine: entries whose stored bytes are damaged, kept aside instead of in the way.
//!
//! Every part of a record carries a CRC (see [`super::record`]), so a flipped bit in one event
//! is found when that event is read, while its neighbours in the same record still read whole.
//! Left in place, a damaged entry would be met (and logged) at every start, counted in the
//! depth for ever, and hold its batch in the file. Deleted, it would be an acknowledged event
//! silently gone. So it is moved here, in the commit that removes it from what is spooled: its
//! bytes as they were stored, where it was (sequence number and batch), and why; counted in
//! `meta` (the `spool_quarantined` gauge) and listed by `spool verify`, for an operator to look
//! at, and every other entry is delivered as usual.
//!
//! The writer re-reads the entry before moving it and moves only what really fails its checksum
//! or its decode: a caller's word is never enough to take an entry out of the spool. An entry
//! of a message layout this build does not know (a newer version wrote it) is not damage and
//! stays where it is.

use super::*;

/// Sequence number → (first sequence number of its batch, why, the bytes as stored).
pub(super) const QUARANTINE: TableDefinition<u64, (u64, &str, &[u8])> =
    TableDefinition::new("quarantine");

/// The quarantine, opened in a commit that moves something there.
pub(super) type Table<'txn> = redb::Table<'txn, u64, (u64, &'static str, &'static [u8])>;

/// An entry moved to the quarantine.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Quarantined {
    pub seq: u64,
    /// First sequence number of the batch (record) it was stored in.
    pub batch: u64,
    pub reason: String,
    /// Bytes kept (the entry as stored; the whole record when its header was damaged).
    pub bytes: u64,
}

/// What is wrong with one stored entry, if anything: `None` when it reads whole (or is of a
/// layout this build does not know), else the reason and the bytes to keep.
fn damage_of(
    (record, in_segment): (&[u8], bool),
    first: u64,
    seq: u64,
) -> Option<(String, Vec<u8>)> {
    let Some(header) = record::Header::read_stored(record, first, in_segment) else {
        let kept = if seq == first {
            record.to_vec()
        } else {
            Vec::new()
        };
        let why =
            format!("its record's header is damaged (the whole record is kept with entry {first})");
        return Some((why, kept));
    };
    let i = u32::try_from(seq - first).ok()?;
    let Some((part, intact)) = record::part_as_stored(record, i) else {
        return Some(("its record ends before it (cut off)".into(), Vec::new()));
    };
    if !intact {
        return Some((
            crate::event::DecodeError::Damaged.to_string(),
            part.to_vec(),
        ));
    }
    match decoder(header.versioned)(part) {
        Ok(_) | Err(crate::event::DecodeError::UnknownLayout(_)) => None,
        Err(e) => Some((format!("it does not decode: {e}"), part.to_vec())),
    }
}

impl Tables<'_> {
    /// Moves the entries of `seqs` that really are damaged to the quarantine, and out of what
    /// is spooled. Unknown, published and intact entries are left as they are.
    pub(super) fn quarantine(
        &mut self,
        q: &mut Table<'_>,
        c: &mut Counters,
        seqs: &[u64],
        segments: &Segments,
    ) -> Result<Vec<Quarantined>, redb::Error> {
        let mut moved = Vec::new();
        for &seq in seqs {
            let Some((first, count, len)) = batch_holding(&self.index, seq)? else {
                continue;
            };
            if self.gone.get(seq)?.is_some() || q.get(seq)?.is_some() {
                continue;
            }
            let Some(record) = self.record((first, len), segments)? else {
                continue;
            };
            let Some((reason, kept)) = damage_of((&record.0, record.1), first, seq) else {
                continue;
            };
            q.insert(seq, (first, reason.as_str(), kept.as_slice()))?;
            self.delete_in(c, first..first + count, len, &[seq])?;
            c.quarantined += 1;
            moved.push(Quarantined {
                seq,
                batch: first,
                reason,
                bytes: kept.len() as u64,
            });
        }
        Ok(moved)
    }
}

/// A damaged event found outside this file (by the salvage of a damaged one), to keep here.
#[derive(Debug)]
pub(in crate::spool) struct Kept<'a> {
    pub seq: u64,
    pub batch: u64,
    pub reason: String,
    pub bytes: &'a [u8],
}

/// Adds what a salvage found damaged to the quarantine (an entry already there stays).
pub(super) fn keep(
    q: &mut Table<'_>,
    c: &mut Counters,
    kept: &[Kept<'_>],
) -> Result<Vec<Quarantined>, redb::Error> {
    let mut added = Vec::new();
    for k in kept {
        if q.get(k.seq)?.is_some() {
            continue;
        }
        q.insert(k.seq, (k.batch, k.reason.as_str(), k.bytes))?;
        c.quarantined += 1;
        added.push(Quarantined {
            seq: k.seq,
            batch: k.batch,
            reason: k.reason.clone(),
            bytes: k.bytes.len() as u64,
        });
    }
    Ok(added)
}

/// Everything in the quarantine, oldest first (for `spool verify`).
pub(in crate::spool) fn quarantined(
    db: &(impl ReadableDatabase + ?Sized),
) -> Result<Vec<Quarantined>, redb::Error> {
    let txn = db.begin_read()?;
    let table = match txn.open_table(QUARANTINE) {
        Ok(t) => t,
        // A file of an earlier format, read without being upgraded (`spool stats`).
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let mut out = Vec::new();
    for item in table.iter()? {
        let (seq, v) = item?;
        let (batch, reason, bytes) = v.value();
        out.push(Quarantined {
            seq: seq.value(),
            batch,
            reason: reason.to_string(),
            bytes: bytes.len() as u64,
        });
    }
    Ok(out)
}

/// Logs what one commit moved: a line per entry, at most a few, then how many more.
pub(super) fn log_moved(moved: &[Quarantined]) {
    const LINES: usize = 8;
    for q in moved.iter().take(LINES) {
        tracing::error!(seq = q.seq, batch = q.batch, reason = %q.reason, kept_bytes = q.bytes, "a damaged spool entry was moved to the quarantine (see `spool verify`); every other entry is delivered");
    }
    if moved.len() > LINES {
        tracing::error!(
            more = moved.len() - LINES,
            "more damaged spool entries were moved to the quarantine"
        );
    }
}
