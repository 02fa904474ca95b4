//! Reading the spool back: what is live, and entries in sequence order.

use super::*;

/// What a spool file says is still to publish: its batches (first seq, entries), in order, and
/// the published entries of batches not yet removed. Read by [`super::salvage`] to tell the
/// records a raw scan finds that are still spooled from stale copies of deleted ones.
#[derive(Debug, Default)]
pub(in crate::spool) struct Live {
    pub batches: Vec<(u64, u64)>,
    pub gone: std::collections::HashSet<u64>,
    /// The next sequence number as of the index's commit.
    pub next_seq: u64,
}

impl Live {
    /// Whether `seq` may still be spooled: listed in a batch and not published, or numbered
    /// after the index's commit (the index may be from an earlier commit than the records,
    /// when redb fell back to one: those newer records are kept, never called stale).
    pub(in crate::spool) fn holds(&self, seq: u64) -> bool {
        if seq >= self.next_seq {
            return true;
        }
        let i = self.batches.partition_point(|&(first, _)| first <= seq);
        let in_batch = i > 0 && {
            let (first, count) = self.batches[i - 1];
            seq < first + count
        };
        in_batch && !self.gone.contains(&seq)
    }

    /// Entries the index lists as spooled.
    pub(in crate::spool) fn entries(&self) -> u64 {
        let all: u64 = self.batches.iter().map(|&(_, n)| n).sum();
        all.saturating_sub(self.gone.len() as u64)
    }
}

/// Reads the index of batches and the published entries (small tables: no record is loaded).
pub(in crate::spool) fn live(db: &(impl ReadableDatabase + ?Sized)) -> Result<Live, redb::Error> {
    let txn = db.begin_read()?;
    let mut live = Live::default();
    for item in txn.open_table(BATCH_INDEX)?.iter()? {
        let (first, v) = item?;
        live.batches.push((first.value(), v.value().0));
    }
    for item in txn.open_table(GONE)?.iter()? {
        live.gone.insert(item?.0.value());
    }
    live.next_seq = txn
        .open_table(META)?
        .get(NEXT_SEQ)?
        .map_or(0, |v| v.value());
    Ok(live)
}

/// An entry as read: decoded, or the sequence number and why it could not be decoded.
pub type ReadEntry = Result<Entry, Undecodable>;

/// A spooled entry that does not decode (left in place for an operator).
#[derive(Debug, thiserror::Error)]
#[error("spool entry {seq} cannot be decoded")]
pub struct Undecodable {
    pub seq: u64,
    #[source]
    pub source: crate::event::DecodeError,
}

/// One spooled message and its sequence number.
#[derive(Debug, Clone)]
pub struct Entry {
    pub seq: u64,
    pub message: Message,
}

/// Most bytes of stored messages one [`read_after`] returns, past the record (one group
/// commit) that crosses it: 1 024 entries of 256 KiB would be 256 MiB read into memory at
/// once. The drain and `spool verify` read again from where a read stopped.
pub(in crate::spool) const READ_MAX_BYTES: usize = 4 * 1024 * 1024;

/// Up to `limit` entries with a sequence number above `after` (all when `after` is None),
/// oldest first, published ones left out; the read stops at the end of the record in which
/// [`READ_MAX_BYTES`] of them were read. Entries that cannot be decoded are returned as errors
/// with their seq.
pub(in crate::spool) fn read_after(
    file: Readable<'_>,
    after: Option<u64>,
    limit: usize,
) -> Result<Vec<ReadEntry>, redb::Error> {
    read_where(file, after, Budget::new(limit, READ_MAX_BYTES), &|_| true)
}

/// A spool file to read: its database, and the path it has (where its segments are found,
/// see [`segment::dir_of`]).
#[derive(Clone, Copy)]
pub(in crate::spool) struct Readable<'a> {
    pub db: &'a dyn ReadableDatabase,
    pub path: &'a Path,
}

/// The oldest `limit` entries that are not parked: those the drain can have sent before a
/// stop (see delivery::recover), without their bodies. The check looks them up on Kafka by
/// topic, key and time, and tens of thousands of large bodies would not fit in memory.
pub(in crate::spool) fn read_unparked(
    file: Readable<'_>,
    limit: usize,
) -> Result<Vec<ReadEntry>, redb::Error> {
    let parked = parked_seqs(file.db)?;
    let budget = Budget {
        bodies: false,
        ..Budget::new(limit, usize::MAX)
    };
    read_where(file, None, budget, &|seq| !parked.contains(&seq))
}

/// The parked entries (Kafka and the dead-letter topic refused them), oldest first, at most
/// `limit` (for `parked list`).
pub(in crate::spool) fn read_parked(
    file: Readable<'_>,
    limit: usize,
) -> Result<Vec<ReadEntry>, redb::Error> {
    let parked = parked_seqs(file.db)?;
    let Some(&first) = parked.iter().min() else {
        return Ok(Vec::new());
    };
    let everything = Budget::new(usize::MAX, usize::MAX);
    let mut out = read_where(file, first.checked_sub(1), everything, &|seq| {
        parked.contains(&seq)
    })?;
    out.truncate(limit);
    Ok(out)
}

fn parked_seqs(db: &dyn ReadableDatabase) -> Result<std::collections::HashSet<u64>, redb::Error> {
    let txn = db.begin_read()?;
    let table = txn.open_table(PARKED)?;
    let mut parked = std::collections::HashSet::new();
    for item in table.iter()? {
        parked.insert(item?.0.value());
    }
    Ok(parked)
}

/// How much one read returns, at most: entries, and bytes of stored messages (checked at the
/// end of each record); and whether with the messages' bodies.
#[derive(Clone, Copy)]
struct Budget {
    entries: usize,
    bytes: usize,
    bodies: bool,
}

impl Budget {
    fn new(entries: usize, bytes: usize) -> Budget {
        Budget {
            entries,
            bytes,
            bodies: true,
        }
    }
}

/// Entries above `after` whose sequence number `keep` takes, oldest first, published ones left
/// out, within `budget`.
fn read_where(
    file: Readable<'_>,
    after: Option<u64>,
    budget: Budget,
    keep: &dyn Fn(u64) -> bool,
) -> Result<Vec<ReadEntry>, redb::Error> {
    let txn = file.db.begin_read()?;
    let records = Records::open(&txn, file.path)?;
    let gone = txn.open_table(GONE)?;
    let start = after.map(|s| s + 1).unwrap_or(0);
    let index = txn.open_table(BATCH_INDEX)?;
    // Reading starts in the batch that holds `start`, if any is still there.
    let from = batch_holding(&index, start)?.map_or(start, |(first, ..)| first);
    let mut out = Vec::new();
    let mut bytes = 0usize;
    for item in index.range(from..)? {
        // The byte budget is checked between records, never inside one: a record is read
        // whole anyway, and a read that stopped inside it would read all of it again.
        if !out.is_empty() && bytes >= budget.bytes {
            return Ok(out);
        }
        let (k, v) = item?;
        let (first, (listed, len)) = (k.value(), v.value());
        let (record, in_segment) = records.get(first, len)?;
        let header = record::Header::read_stored(&record, first, in_segment);
        let decode = decoder(header.is_some_and(|h| h.versioned));
        // A header that fails its checksum says nothing of its parts: the index still says
        // how many entries the record holds, and each is reported damaged, never skipped.
        let count = header.map_or(listed, |h| u64::from(h.count));
        let published = published_in(&gone, first..first + count)?;
        // Parts only of a header that reads (a segment's record without one is damage).
        let parts = header.map(|_| record::parts(&record));
        let parts = parts.into_iter().flatten().chain(std::iter::repeat(None));
        for (i, part) in parts.take(count as usize).enumerate() {
            let seq = first + i as u64;
            if seq < start || published.binary_search(&seq).is_ok() || !keep(seq) {
                continue;
            }
            if out.len() == budget.entries {
                return Ok(out);
            }
            bytes += part.map_or(0, <[u8]>::len);
            let decoded = part.ok_or(crate::event::DecodeError::Damaged);
            out.push(
                decoded
                    .and_then(decode)
                    .map(|mut message| {
                        if !budget.bodies {
                            message.body = bytes::Bytes::new();
                        }
                        Entry { seq, message }
                    })
                    .map_err(|source| Undecodable { seq, source }),
            );
        }
    }
    Ok(out)
}

/// Where a read finds records: in segments, or (a batch of format 4) in redb.
struct Records {
    at: Option<redb::ReadOnlyTable<u64, (u64, u64)>>,
    batches: redb::ReadOnlyTable<u64, &'static [u8]>,
    segments: PathBuf,
}

impl Records {
    fn open(txn: &redb::ReadTransaction, file: &Path) -> Result<Records, redb::Error> {
        let at = match txn.open_table(BATCH_AT) {
            Ok(t) => Some(t),
            // A file of format 4 or before, read without being upgraded (`spool verify`).
            Err(redb::TableError::TableDoesNotExist(_)) => None,
            Err(e) => return Err(e.into()),
        };
        Ok(Records {
            at,
            batches: txn.open_table(BATCHES)?,
            segments: segment::dir_of(file),
        })
    }

    /// The record of the batch starting at `first`, `len` bytes long as the index says, and
    /// whether it is in a segment. One missing or cut short reads as what is there: its
    /// checksums report its entries damaged.
    fn get(&self, first: u64, len: u64) -> Result<(Vec<u8>, bool), redb::Error> {
        let stored = stored_record(
            (self.at.as_ref(), &self.batches),
            &self.segments,
            (first, len),
        )?;
        Ok(stored.unwrap_or_default())
    }
}

/// The stored record of the batch starting at `first`, `len` bytes long, and whether it is in
/// a segment (among those in `segments`): from there, or from `batches` for a batch of format
/// 4 (`at` is `None` for a file of format 4 read without being upgraded). `None` when neither
/// has it.
pub(super) fn stored_record(
    (at, batches): (
        Option<&impl ReadableTable<u64, (u64, u64)>>,
        &impl ReadableTable<u64, &'static [u8]>,
    ),
    segments: &Path,
    (first, len): (u64, u64),
) -> Result<Option<(Vec<u8>, bool)>, redb::Error> {
    if let Some(at) = at.map(|t| t.get(first)).transpose()?.flatten() {
        let (segment, offset) = at.value();
        let at = segment::At { segment, offset };
        return Ok(Some((segment::read(segments, at, len)?, true)));
    }
    Ok(batches.get(first)?.map(|r| (r.value().to_vec(), false)))
}

/// How the parts of a record decode: with their layout version (`versioned`, format 3), or as
/// spool format 2 wrote them, without one.
pub(in crate::spool) fn decoder(
    versioned: bool,
) -> fn(&[u8]) -> Result<Message, crate::event::DecodeError> {
    if versioned {
        Message::decode
    } else {
        Message::decode_unversioned
    }
}
