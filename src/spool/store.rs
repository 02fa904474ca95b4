//! The spool's tables in redb, and the one transaction that changes them.
//!
//! The unit of write is the group commit, not the event: each commit stores the events it
//! accepted as one [record](super::record), so its B-tree work is a few inserts however many
//! events it carries (one insert and one delete per event before: a third of the process's CPU
//! under load). Tables:
//! - `batches`: first sequence number → record of encoded [`Message`]s; the publish queue.
//! - `batch_index`: first sequence number → (entries, record bytes); what deletes look up.
//! - `gone`: published entries of batches that still hold unpublished ones. A batch is removed
//!   as a whole when its last entry is published, with its `gone` entries.
//! - `dedupe`: `source \x1f event id` → (receive ms, dedupe seq); ids accepted recently.
//! - `dedupe_batches`: (newest receive ms, first dedupe seq) → record of the keys one commit
//!   added; to forget the oldest first, a batch at a time.
//! - `parked`: entries the drain parked (never published), for the recovery check.
//! - `meta`: counters kept in the same transactions as the data they count.
//!
//! Everything here is synchronous and runs on the writer thread (or a blocking task for
//! reads); redb allows one writer at a time and any number of concurrent readers.

use std::path::{Path, PathBuf};
use std::time::Duration;

use redb::{
    Database, DatabaseError, ReadableDatabase, ReadableTable, TableDefinition, TableHandle,
};

use super::record::{self, RecordBuilder};
use crate::event::Message;

/// Why the spool could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot create spool directory {path}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the spool {0} is in use by another process (is the bridge running?)")]
    InUse(PathBuf),
    #[error("cannot open spool {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: redb::Error,
    },
    #[error("the spool file {path} is damaged ({detail}) and cannot be moved aside: move it away by hand (and salvage it with `spool salvage`)")]
    Damaged { path: PathBuf, detail: String },
    #[error("cannot read the spool's counters")]
    Read(#[source] redb::Error),
    #[error("cannot start the spool writer")]
    Writer(#[source] std::io::Error),
}

/// First sequence number of a batch → its record of encoded messages.
const BATCHES: TableDefinition<u64, &[u8]> = TableDefinition::new("batches");
/// First sequence number of a batch → (entries, bytes of its record): what deletes look up,
/// so they never read the records themselves.
const BATCH_INDEX: TableDefinition<u64, (u64, u64)> = TableDefinition::new("batch_index");
/// Published entries of batches that still hold unpublished ones.
const GONE: TableDefinition<u64, ()> = TableDefinition::new("gone");
const DEDUPE: TableDefinition<&str, (u64, u64)> = TableDefinition::new("dedupe");
/// (newest receive ms of the batch, first dedupe seq) → record of the dedupe keys it added.
const DEDUPE_BATCHES: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("dedupe_batches");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Entries the drain parked (Kafka and the dead-letter topic refused them): the start-up
/// recovery check leaves them out, since they were never published, and looks at the entries
/// after them instead (see delivery::recover).
const PARKED: TableDefinition<u64, ()> = TableDefinition::new("parked");

/// The layout before batches (one entry per event), migrated once on open.
const EVENTS_V1: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
const DEDUPE_BY_TIME_V1: TableDefinition<(u64, u64), &str> = TableDefinition::new("dedupe_by_time");

const NEXT_SEQ: &str = "next_seq";
const BYTES: &str = "bytes";
const DEDUPE_SEQ: &str = "dedupe_seq";
const DEPTH: &str = "depth";
const DEDUPE_ENTRIES: &str = "dedupe_entries";

/// Dedupe keys a transaction forgets before it stops looking (a batch of keys goes as a whole,
/// so up to one batch more): keeps each commit short, yet every commit can forget at least the
/// one batch of keys it may add.
const EXPIRE_PER_COMMIT: usize = 2048;

/// File name of the database inside `spool.dir`.
pub(super) const FILE_NAME: &str = "spool.redb";

/// Counters the writer keeps in memory and in `meta`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Counters {
    pub next_seq: u64,
    pub depth: u64,
    pub bytes: u64,
    pub dedupe_seq: u64,
    pub dedupe_entries: u64,
}

/// Limits applied inside the transaction.
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    pub max_bytes: u64,
    pub dedupe: Option<DedupeLimits>,
}

#[derive(Debug, Clone, Copy)]
pub(super) struct DedupeLimits {
    pub window: Duration,
    pub max_entries: u64,
}

/// What became of one append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppendOutcome {
    Stored { seq: u64 },
    Duplicate,
    Full,
}

/// One append request: the encoded message and its dedupe key.
pub(super) struct Append<'a> {
    pub encoded: &'a [u8],
    pub dedupe_key: Option<&'a str>,
    pub received_at_ms: u64,
}

/// Opens (or creates) the spool database in `dir`; `check` has redb verify the whole file
/// first (see [`super::damage`]), so a damaged file is refused here rather than met later.
pub(super) fn open(dir: &Path, check: bool) -> Result<Database, OpenError> {
    std::fs::create_dir_all(dir).map_err(|source| OpenError::CreateDir {
        path: dir.to_path_buf(),
        source,
    })?;
    let path = dir.join(FILE_NAME);
    // A small cache: appends and the drain touch the newest and oldest pages only, and a
    // large cache shows up as RSS growing while a broker outage fills the spool.
    let db = Database::builder()
        .set_cache_size(16 * 1024 * 1024)
        .set_check_integrity_on_open(check)
        .create(&path)
        .map_err(|e| match e {
            DatabaseError::DatabaseAlreadyOpen => OpenError::InUse(path.clone()),
            other => OpenError::Open {
                path: path.clone(),
                source: other.into(),
            },
        })?;
    create_tables(&db).map_err(|source| OpenError::Open { path, source })?;
    Ok(db)
}

fn create_tables(db: &Database) -> Result<(), redb::Error> {
    let txn = db.begin_write()?;
    {
        txn.open_table(BATCHES)?;
        txn.open_table(BATCH_INDEX)?;
        txn.open_table(GONE)?;
        txn.open_table(DEDUPE)?;
        txn.open_table(DEDUPE_BATCHES)?;
        txn.open_table(META)?;
        txn.open_table(PARKED)?;
    }
    migrate_v1(&txn)?;
    txn.commit()?;
    Ok(())
}

/// Moves a spool written before batches (one entry per event) into the batch layout, each old
/// entry a batch of one under its own sequence number, in the transaction that opens the
/// spool: an upgrade strands nothing, and a crash during it leaves the old layout whole.
fn migrate_v1(txn: &redb::WriteTransaction) -> Result<(), redb::Error> {
    let names: Vec<String> = txn.list_tables()?.map(|t| t.name().to_string()).collect();
    let has = |name: &str| names.iter().any(|n| n == name);
    if !has(EVENTS_V1.name()) && !has(DEDUPE_BY_TIME_V1.name()) {
        return Ok(());
    }
    let mut t = Tables::open(txn)?;
    let mut meta = txn.open_table(META)?;
    let (mut depth, mut bytes) = (0u64, 0u64);
    if has(EVENTS_V1.name()) {
        let old = txn.open_table(EVENTS_V1)?;
        for item in old.iter()? {
            let (seq, value) = item?;
            let mut record = RecordBuilder::events(seq.value());
            record.push(value.value());
            bytes += t.insert_batch(seq.value(), record)?;
            depth += 1;
        }
    }
    let mut keys = 0u64;
    if has(DEDUPE_BY_TIME_V1.name()) {
        let old = txn.open_table(DEDUPE_BY_TIME_V1)?;
        for item in old.iter()? {
            let (at, key) = item?;
            let mut record = RecordBuilder::keys(at.value().1);
            record.push(key.value().as_bytes());
            t.dedupe_batches
                .insert(at.value(), record.finish().as_slice())?;
            keys += 1;
        }
    }
    meta.insert(DEPTH, depth)?;
    meta.insert(BYTES, bytes)?;
    meta.insert(DEDUPE_ENTRIES, keys)?;
    drop((t, meta));
    txn.delete_table(EVENTS_V1)?;
    txn.delete_table(DEDUPE_BY_TIME_V1)?;
    if depth > 0 || keys > 0 {
        tracing::info!(
            events = depth,
            dedupe_entries = keys,
            "spool moved to the batch layout"
        );
    }
    Ok(())
}

/// Reads the counters as last committed.
pub(super) fn load_counters(
    db: &(impl ReadableDatabase + ?Sized),
) -> Result<Counters, redb::Error> {
    let txn = db.begin_read()?;
    let meta = txn.open_table(META)?;
    let get =
        |k: &str| -> Result<u64, redb::Error> { Ok(meta.get(k)?.map(|v| v.value()).unwrap_or(0)) };
    Ok(Counters {
        next_seq: get(NEXT_SEQ)?,
        depth: get(DEPTH)?,
        bytes: get(BYTES)?,
        dedupe_seq: get(DEDUPE_SEQ)?,
        dedupe_entries: get(DEDUPE_ENTRIES)?,
    })
}

/// Has a fresh spool number on from where a damaged one left off (see [`super::damage`]), so
/// sequence numbers never go back while the process runs.
pub(super) fn continue_from(
    db: &Database,
    next_seq: u64,
    dedupe_seq: u64,
) -> Result<Counters, redb::Error> {
    let mut c = load_counters(db)?;
    c.next_seq = c.next_seq.max(next_seq);
    c.dedupe_seq = c.dedupe_seq.max(dedupe_seq);
    let txn = db.begin_write()?;
    {
        let mut meta = txn.open_table(META)?;
        meta.insert(NEXT_SEQ, c.next_seq)?;
        meta.insert(DEDUPE_SEQ, c.dedupe_seq)?;
    }
    txn.commit()?;
    Ok(c)
}

/// What a commit changes besides appends: entries published (deleted), and parked or no
/// longer parked.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Marks<'a> {
    pub deleted: &'a [u64],
    pub parked: &'a [u64],
    pub unparked: &'a [u64],
}

/// Applies a batch of appends and deletes in one durable transaction: the stored appends
/// become one record, whatever their number.
///
/// Returns one outcome per append, in order. On error nothing was written, and `counters`
/// is left as it was.
pub(super) fn commit_batch(
    db: &Database,
    counters: &mut Counters,
    limits: &Limits,
    now_ms: u64,
    appends: &[Append<'_>],
    marks: &Marks<'_>,
) -> Result<Vec<AppendOutcome>, redb::Error> {
    let mut c = *counters;
    let mut txn = db.begin_write()?;
    if appends.is_empty() && marks.parked.is_empty() && marks.unparked.is_empty() {
        // Only deletes of published entries: no fsync of their own. The next append's commit
        // makes them durable; if a crash loses them first, the start-up recovery check finds
        // those entries on Kafka and skips them (see delivery::recover). Parks are fsynced:
        // the recovery check relies on them to know which entries were never sent.
        txn.set_durability(redb::Durability::None)?;
    }
    let outcomes = {
        let mut t = Tables::open(&txn)?;
        t.delete(&mut c, marks.deleted)?;
        t.mark_parked(marks)?;
        let cutoff = limits
            .dedupe
            .map(|d| now_ms.saturating_sub(d.window.as_millis() as u64));
        let mut batch = NewBatch::new(&c, appends);
        let outcomes = appends
            .iter()
            .map(|a| t.admit(&mut c, limits, cutoff, a, &mut batch))
            .collect::<Result<Vec<_>, _>>()?;
        t.write(batch)?;
        if let (Some(d), Some(cutoff)) = (limits.dedupe, cutoff) {
            t.forget_old_ids(&mut c, &d, cutoff)?;
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
        outcomes
    };
    txn.commit()?;
    *counters = c;
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
struct Tables<'txn> {
    batches: redb::Table<'txn, u64, &'static [u8]>,
    index: redb::Table<'txn, u64, (u64, u64)>,
    gone: redb::Table<'txn, u64, ()>,
    dedupe: redb::Table<'txn, &'static str, (u64, u64)>,
    dedupe_batches: redb::Table<'txn, (u64, u64), &'static [u8]>,
    parked: redb::Table<'txn, u64, ()>,
}

impl<'txn> Tables<'txn> {
    fn open(txn: &'txn redb::WriteTransaction) -> Result<Tables<'txn>, redb::Error> {
        Ok(Tables {
            parked: txn.open_table(PARKED)?,
            batches: txn.open_table(BATCHES)?,
            index: txn.open_table(BATCH_INDEX)?,
            gone: txn.open_table(GONE)?,
            dedupe: txn.open_table(DEDUPE)?,
            dedupe_batches: txn.open_table(DEDUPE_BATCHES)?,
        })
    }

    /// Stores a batch record under `first`; returns its size in bytes.
    fn insert_batch(&mut self, first: u64, record: RecordBuilder) -> Result<u64, redb::Error> {
        let count = u64::from(record.count());
        let value = record.finish();
        let len = value.len() as u64;
        self.batches.insert(first, value.as_slice())?;
        self.index.insert(first, (count, len))?;
        Ok(len)
    }

    /// Records parked entries, and forgets those no longer parked or deleted (looked up only
    /// while any entry is parked: the table is empty in normal running).
    fn mark_parked(&mut self, marks: &Marks<'_>) -> Result<(), redb::Error> {
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
    fn delete(&mut self, c: &mut Counters, seqs: &[u64]) -> Result<(), redb::Error> {
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

    fn delete_in(
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
    fn admit(
        &mut self,
        c: &mut Counters,
        limits: &Limits,
        cutoff: Option<u64>,
        a: &Append<'_>,
        batch: &mut NewBatch,
    ) -> Result<AppendOutcome, redb::Error> {
        let key = if limits.dedupe.is_some() {
            a.dedupe_key
        } else {
            None
        };
        let mut replaces_stale = false;
        if let (Some(key), Some(cutoff)) = (key, cutoff) {
            if let Some(seen) = self.dedupe.get(key)? {
                if seen.value().0 >= cutoff {
                    return Ok(AppendOutcome::Duplicate);
                }
                replaces_stale = true;
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
        if let Some(key) = key {
            // The key's dedupe seq says which batch of keys it belongs to (see forget_old_ids).
            let dseq = c.dedupe_seq;
            c.dedupe_seq += 1;
            self.dedupe.insert(key, (a.received_at_ms, dseq))?;
            batch.keys.push(key.as_bytes());
            batch.newest_ms = batch.newest_ms.max(a.received_at_ms);
            if !replaces_stale {
                c.dedupe_entries += 1;
            }
        }
        Ok(AppendOutcome::Stored { seq })
    }

    /// Writes the records of what `admit` stored (nothing when it stored nothing).
    fn write(&mut self, batch: NewBatch) -> Result<(), redb::Error> {
        if batch.events.count() > 0 {
            self.insert_batch(batch.first_seq, batch.events)?;
        }
        if batch.keys.count() > 0 {
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
    fn forget_old_ids(
        &mut self,
        c: &mut Counters,
        d: &DedupeLimits,
        cutoff: u64,
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
            for (i, key) in record::parts(record.value()).enumerate() {
                let Some(key) = key.and_then(|k| std::str::from_utf8(k).ok()) else {
                    break;
                };
                let current = self.dedupe.get(key)?.map(|v| v.value().1);
                if current == Some(first_dseq + i as u64) {
                    self.dedupe.remove(key)?;
                    c.dedupe_entries = c.dedupe_entries.saturating_sub(1);
                }
            }
        }
        Ok(())
    }
}

/// The batch that holds `seq`: its first sequence number, entries and record bytes. Looked up
/// in `batch_index`, so neither deletes nor reads load a record to find where it starts.
fn batch_holding(
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
fn published_in(
    gone: &impl ReadableTable<u64, ()>,
    batch: std::ops::Range<u64>,
) -> Result<Vec<u64>, redb::Error> {
    let mut out = Vec::new();
    for item in gone.range(batch)? {
        out.push(item?.0.value());
    }
    Ok(out)
}

/// What a spool file says is still to publish: its batches (first seq, entries), in order, and
/// the published entries of batches not yet removed. Read by [`super::salvage`] to tell the
/// records a raw scan finds that are still spooled from stale copies of deleted ones.
#[derive(Debug, Default)]
pub(super) struct Live {
    pub batches: Vec<(u64, u64)>,
    pub gone: std::collections::HashSet<u64>,
    /// The next sequence number as of the index's commit.
    pub next_seq: u64,
}

impl Live {
    /// Whether `seq` may still be spooled: listed in a batch and not published, or numbered
    /// after the index's commit (the index may be from an earlier commit than the records,
    /// when redb fell back to one: those newer records are kept, never called stale).
    pub(super) fn holds(&self, seq: u64) -> bool {
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
    pub(super) fn entries(&self) -> u64 {
        let all: u64 = self.batches.iter().map(|&(_, n)| n).sum();
        all.saturating_sub(self.gone.len() as u64)
    }
}

/// Reads the index of batches and the published entries (small tables: no record is loaded).
pub(super) fn live(db: &(impl ReadableDatabase + ?Sized)) -> Result<Live, redb::Error> {
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
    pub source: postcard::Error,
}

/// One spooled message and its sequence number.
#[derive(Debug, Clone)]
pub struct Entry {
    pub seq: u64,
    pub message: Message,
}

/// Up to `limit` entries with a sequence number above `after` (all when `after` is None),
/// oldest first, published ones left out. Entries that cannot be decoded are returned as
/// errors with their seq.
pub(super) fn read_after(
    db: &(impl ReadableDatabase + ?Sized),
    after: Option<u64>,
    limit: usize,
) -> Result<Vec<ReadEntry>, redb::Error> {
    read_skipping(db, after, limit, &std::collections::HashSet::new())
}

/// The oldest `limit` entries that are not parked: those the drain can have sent before a
/// stop (see delivery::recover).
pub(super) fn read_unparked(
    db: &(impl ReadableDatabase + ?Sized),
    limit: usize,
) -> Result<Vec<ReadEntry>, redb::Error> {
    let parked = {
        let txn = db.begin_read()?;
        let table = txn.open_table(PARKED)?;
        let mut parked = std::collections::HashSet::new();
        for item in table.iter()? {
            parked.insert(item?.0.value());
        }
        parked
    };
    read_skipping(db, None, limit, &parked)
}

fn read_skipping(
    db: &(impl ReadableDatabase + ?Sized),
    after: Option<u64>,
    limit: usize,
    skip: &std::collections::HashSet<u64>,
) -> Result<Vec<ReadEntry>, redb::Error> {
    let txn = db.begin_read()?;
    let batches = txn.open_table(BATCHES)?;
    let gone = txn.open_table(GONE)?;
    let start = after.map(|s| s + 1).unwrap_or(0);
    // Reading starts in the batch that holds `start`, if any is still there.
    let from =
        batch_holding(&txn.open_table(BATCH_INDEX)?, start)?.map_or(start, |(first, ..)| first);
    let mut out = Vec::new();
    for item in batches.range(from..)? {
        let (k, v) = item?;
        let first = k.value();
        let record = v.value();
        let count = u64::from(record::count(record));
        let published = published_in(&gone, first..first + count)?;
        for (i, part) in record::parts(record).enumerate() {
            let seq = first + i as u64;
            if seq < start || published.binary_search(&seq).is_ok() || skip.contains(&seq) {
                continue;
            }
            if out.len() == limit {
                return Ok(out);
            }
            let decoded = part.ok_or(postcard::Error::DeserializeUnexpectedEnd);
            out.push(
                decoded
                    .and_then(Message::decode)
                    .map(|message| Entry { seq, message })
                    .map_err(|source| Undecodable { seq, source }),
            );
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn message(id: &str) -> Message {
        Message {
            topic: "t".into(),
            key: Bytes::new(),
            source: "eduzz".into(),
            slug: "s".into(),
            event_id: id.into(),
            received_at_ms: 1_000,
            content_type: "application/json".into(),
            body: Bytes::from(format!("{{\"id\":\"{id}\"}}")),
            cloudevent: None,
        }
    }

    struct Store {
        _dir: tempfile::TempDir,
        db: Database,
        c: Counters,
        limits: Limits,
    }

    impl Store {
        fn new(dedupe: Option<DedupeLimits>) -> Store {
            let dir = tempfile::tempdir().unwrap();
            let db = open(dir.path(), false).unwrap();
            let c = load_counters(&db).unwrap();
            let limits = Limits {
                max_bytes: u64::MAX,
                dedupe,
            };
            Store {
                _dir: dir,
                db,
                c,
                limits,
            }
        }

        /// Commits the ids (each its own message, received at `at_ms`) and `deletes`.
        fn commit(&mut self, ids: &[&str], at_ms: u64, deletes: &[u64]) -> Vec<AppendOutcome> {
            let encoded: Vec<_> = ids.iter().map(|id| message(id).encode()).collect();
            let keys: Vec<_> = ids.iter().map(|id| format!("eduzz\u{1f}{id}")).collect();
            let appends: Vec<_> = encoded
                .iter()
                .zip(&keys)
                .map(|(e, k)| Append {
                    encoded: e,
                    dedupe_key: Some(k),
                    received_at_ms: at_ms,
                })
                .collect();
            commit_batch(
                &self.db,
                &mut self.c,
                &self.limits,
                at_ms,
                &appends,
                &Marks {
                    deleted: deletes,
                    ..Marks::default()
                },
            )
            .unwrap()
        }

        fn ids_after(&self, after: Option<u64>) -> Vec<(u64, String)> {
            read_after(&self.db, after, 100)
                .unwrap()
                .into_iter()
                .map(|e| e.unwrap())
                .map(|e| (e.seq, e.message.event_id))
                .collect()
        }
    }

    fn stored(seqs: std::ops::Range<u64>) -> Vec<AppendOutcome> {
        seqs.map(|seq| AppendOutcome::Stored { seq }).collect()
    }

    #[test]
    fn a_commit_is_one_batch_deleted_in_parts_then_whole() {
        let mut s = Store::new(None);
        assert_eq!(s.commit(&["a", "b", "c"], 1, &[]), stored(0..3));
        assert_eq!(s.commit(&["d"], 1, &[]), stored(3..4));
        let t = s.db.begin_read().unwrap();
        assert_eq!(t.open_table(BATCHES).unwrap().iter().unwrap().count(), 2);
        drop(t);
        let full_bytes = s.c.bytes;
        // b and d published: d's batch goes at once, b is listed as gone.
        s.commit(&[], 1, &[1, 3, 3, 99]);
        assert_eq!((s.c.depth, s.c.next_seq), (2, 4));
        assert!(s.c.bytes < full_bytes && s.c.bytes > 0);
        assert_eq!(s.ids_after(None), [(0, "a".into()), (2, "c".into())]);
        assert_eq!(s.ids_after(Some(0)), [(2, "c".into())]);
        assert_eq!(read_after(&s.db, None, 1).unwrap().len(), 1, "limit");
        // The rest of the first batch: nothing left, nothing listed as gone.
        s.commit(&[], 1, &[2, 0, 1]);
        assert_eq!((s.c.depth, s.c.bytes), (0, 0));
        assert!(s.ids_after(None).is_empty());
        let t = s.db.begin_read().unwrap();
        assert_eq!(t.open_table(GONE).unwrap().iter().unwrap().count(), 0);
        assert_eq!(
            t.open_table(BATCH_INDEX).unwrap().iter().unwrap().count(),
            0
        );
        drop(t);
        assert_eq!(load_counters(&s.db).unwrap(), s.c, "counters are durable");
    }

    #[test]
    fn a_partly_published_batch_is_the_same_after_a_reopen() {
        let mut s = Store::new(None);
        s.commit(&["a", "b", "c"], 1, &[]);
        s.commit(&[], 1, &[0, 2]);
        let (before, counters) = (s.ids_after(None), s.c);
        assert_eq!(before, [(1, "b".into())]);
        let dir = s._dir;
        drop(s.db);
        let db = open(dir.path(), false).unwrap();
        assert_eq!(load_counters(&db).unwrap(), counters);
        let mut s = Store {
            c: counters,
            db,
            _dir: dir,
            limits: s.limits,
        };
        assert_eq!(
            s.ids_after(None),
            before,
            "published entries stay published"
        );
        assert_eq!(s.commit(&["d"], 1, &[1]), stored(3..4));
        assert_eq!(s.ids_after(None), [(3, "d".into())]);
        assert_eq!(s.c.depth, 1);
    }

    #[test]
    fn dedupe_within_a_batch_across_batches_and_forgetting_by_batch() {
        let window = Duration::from_millis(100);
        let mut s = Store::new(Some(DedupeLimits {
            window,
            max_entries: 1_000,
        }));
        let out = s.commit(&["a", "a", "b"], 1_000, &[]);
        assert_eq!(
            out,
            [
                AppendOutcome::Stored { seq: 0 },
                AppendOutcome::Duplicate,
                AppendOutcome::Stored { seq: 1 }
            ]
        );
        assert_eq!(s.commit(&["b"], 1_050, &[]), [AppendOutcome::Duplicate]);
        assert_eq!(s.c.dedupe_entries, 2);
        // Past the window: "a" is taken again (its stale entry replaced), "b" is forgotten
        // with its batch, and the new "a" stays although its old batch goes.
        assert_eq!(s.commit(&["a"], 1_200, &[]), stored(2..3));
        assert_eq!(s.c.dedupe_entries, 1);
        assert_eq!(s.commit(&["a"], 1_250, &[]), [AppendOutcome::Duplicate]);
        assert_eq!(s.commit(&["b"], 1_250, &[]), stored(3..4));
    }

    #[test]
    fn the_oldest_batches_of_ids_go_past_max_entries() {
        let mut s = Store::new(Some(DedupeLimits {
            window: Duration::from_secs(3600),
            max_entries: 2,
        }));
        s.commit(&["a", "b"], 1_000, &[]);
        s.commit(&["c"], 1_001, &[]);
        assert_eq!(s.c.dedupe_entries, 1, "the first batch went as a whole");
        assert_eq!(
            s.commit(&["a", "c"], 1_002, &[]),
            [AppendOutcome::Stored { seq: 3 }, AppendOutcome::Duplicate]
        );
    }

    #[test]
    fn no_room_is_full_and_a_batch_counts_its_framing() {
        let mut s = Store::new(None);
        let one = message("a").encode().len() as u64;
        s.limits.max_bytes = RecordBuilder::HEADER + 2 * RecordBuilder::cost(one as usize);
        let out = s.commit(&["a", "b", "c"], 1, &[]);
        assert_eq!(out[..2], stored(0..2)[..]);
        assert_eq!(out[2], AppendOutcome::Full);
        assert_eq!(s.c.bytes, s.limits.max_bytes);
    }

    #[test]
    fn a_spool_of_the_old_layout_is_moved_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        {
            let db = Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut events = txn.open_table(EVENTS_V1).unwrap();
                let mut dedupe = txn.open_table(DEDUPE).unwrap();
                let mut by_time = txn.open_table(DEDUPE_BY_TIME_V1).unwrap();
                let mut meta = txn.open_table(META).unwrap();
                for (seq, id) in [(7u64, "x"), (9, "y")] {
                    events.insert(seq, message(id).encode().as_slice()).unwrap();
                    let key = format!("eduzz\u{1f}{id}");
                    dedupe.insert(key.as_str(), (1_000, seq)).unwrap();
                    by_time.insert((1_000, seq), key.as_str()).unwrap();
                }
                meta.insert(NEXT_SEQ, 10).unwrap();
                meta.insert(DEDUPE_SEQ, 10).unwrap();
            }
            txn.commit().unwrap();
        }
        let db = open(dir.path(), false).unwrap();
        let mut s = Store {
            c: load_counters(&db).unwrap(),
            db,
            _dir: dir,
            limits: Limits {
                max_bytes: u64::MAX,
                dedupe: Some(DedupeLimits {
                    window: Duration::from_millis(100),
                    max_entries: 100,
                }),
            },
        };
        assert_eq!((s.c.depth, s.c.dedupe_entries, s.c.next_seq), (2, 2, 10));
        assert_eq!(s.ids_after(None), [(7, "x".into()), (9, "y".into())]);
        assert_eq!(s.commit(&["x"], 1_050, &[7]), [AppendOutcome::Duplicate]);
        assert_eq!(s.ids_after(None), [(9, "y".into())]);
        // The migrated ids are forgotten like any others.
        assert_eq!(s.commit(&["y"], 1_200, &[9]), stored(10..11));
        assert_eq!(s.c.dedupe_entries, 1);
        let names: Vec<String> =
            s.db.begin_write()
                .unwrap()
                .list_tables()
                .unwrap()
                .map(|t| t.name().to_string())
                .collect();
        assert!(!names.iter().any(|n| n == "events" || n == "dedupe_by_time"));
    }
}
