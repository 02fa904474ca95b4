//! The spool's tables in redb, and the one transaction that changes them.
//!
//! Tables:
//! - `events`: sequence number → encoded [`Message`]; the publish queue, oldest first.
//! - `dedupe`: `source \x1f event id` → (receive ms, dedupe seq); ids accepted recently.
//! - `dedupe_by_time`: (receive ms, dedupe seq) → dedupe key; to forget the oldest first.
//! - `meta`: counters kept in the same transactions as the data they count.
//!
//! Everything here is synchronous and runs on the writer thread (or a blocking task for
//! reads); redb allows one writer at a time and any number of concurrent readers.

use std::path::{Path, PathBuf};
use std::time::Duration;

use redb::{
    Database, DatabaseError, ReadableDatabase, ReadableTable, ReadableTableMetadata,
    TableDefinition,
};

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
    #[error("cannot read the spool's counters")]
    Read(#[source] redb::Error),
    #[error("cannot start the spool writer")]
    Writer(#[source] std::io::Error),
}

const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
const DEDUPE: TableDefinition<&str, (u64, u64)> = TableDefinition::new("dedupe");
const DEDUPE_BY_TIME: TableDefinition<(u64, u64), &str> = TableDefinition::new("dedupe_by_time");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

const NEXT_SEQ: &str = "next_seq";
const BYTES: &str = "bytes";
const DEDUPE_SEQ: &str = "dedupe_seq";

/// Most expired dedupe entries forgotten per transaction (keeps each commit short).
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

/// Opens (or creates) the spool database in `dir`.
pub(super) fn open(dir: &Path) -> Result<Database, OpenError> {
    std::fs::create_dir_all(dir).map_err(|source| OpenError::CreateDir {
        path: dir.to_path_buf(),
        source,
    })?;
    let path = dir.join(FILE_NAME);
    // A small cache: appends and the drain touch the newest and oldest pages only, and a
    // large cache shows up as RSS growing while a broker outage fills the spool.
    let db = Database::builder()
        .set_cache_size(16 * 1024 * 1024)
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
        txn.open_table(EVENTS)?;
        txn.open_table(DEDUPE)?;
        txn.open_table(DEDUPE_BY_TIME)?;
        txn.open_table(META)?;
    }
    txn.commit()?;
    Ok(())
}

/// Reads the counters as last committed.
pub(super) fn load_counters(db: &Database) -> Result<Counters, redb::Error> {
    let txn = db.begin_read()?;
    let meta = txn.open_table(META)?;
    let get =
        |k: &str| -> Result<u64, redb::Error> { Ok(meta.get(k)?.map(|v| v.value()).unwrap_or(0)) };
    let events = txn.open_table(EVENTS)?;
    let dedupe = txn.open_table(DEDUPE_BY_TIME)?;
    Ok(Counters {
        next_seq: get(NEXT_SEQ)?,
        depth: events.len()?,
        bytes: get(BYTES)?,
        dedupe_seq: get(DEDUPE_SEQ)?,
        dedupe_entries: dedupe.len()?,
    })
}

/// Applies a batch of appends and deletes in one durable transaction.
///
/// Returns one outcome per append, in order. On error nothing was written, and `counters`
/// is left as it was.
pub(super) fn commit_batch(
    db: &Database,
    counters: &mut Counters,
    limits: &Limits,
    now_ms: u64,
    appends: &[Append<'_>],
    deletes: &[u64],
) -> Result<Vec<AppendOutcome>, redb::Error> {
    let mut c = *counters;
    let mut txn = db.begin_write()?;
    if appends.is_empty() {
        // Only deletes of published entries: no fsync of their own. The next append's commit
        // makes them durable; if a crash loses them first, the start-up recovery check finds
        // those entries on Kafka and skips them (see delivery::recover).
        txn.set_durability(redb::Durability::None)?;
    }
    let outcomes = {
        let mut t = Tables {
            events: txn.open_table(EVENTS)?,
            dedupe: txn.open_table(DEDUPE)?,
            by_time: txn.open_table(DEDUPE_BY_TIME)?,
        };
        for seq in deletes {
            t.delete(&mut c, *seq)?;
        }
        let cutoff = limits
            .dedupe
            .map(|d| now_ms.saturating_sub(d.window.as_millis() as u64));
        let outcomes = appends
            .iter()
            .map(|a| t.append(&mut c, limits, cutoff, a))
            .collect::<Result<Vec<_>, _>>()?;
        if let (Some(d), Some(cutoff)) = (limits.dedupe, cutoff) {
            t.forget_old_ids(&mut c, &d, cutoff)?;
        }
        let mut meta = txn.open_table(META)?;
        meta.insert(NEXT_SEQ, c.next_seq)?;
        meta.insert(BYTES, c.bytes)?;
        meta.insert(DEDUPE_SEQ, c.dedupe_seq)?;
        outcomes
    };
    txn.commit()?;
    *counters = c;
    Ok(outcomes)
}

/// The tables one commit changes.
struct Tables<'txn> {
    events: redb::Table<'txn, u64, &'static [u8]>,
    dedupe: redb::Table<'txn, &'static str, (u64, u64)>,
    by_time: redb::Table<'txn, (u64, u64), &'static str>,
}

impl Tables<'_> {
    fn delete(&mut self, c: &mut Counters, seq: u64) -> Result<(), redb::Error> {
        if let Some(old) = self.events.remove(seq)? {
            c.bytes = c.bytes.saturating_sub(old.value().len() as u64);
            c.depth = c.depth.saturating_sub(1);
        }
        Ok(())
    }

    /// Stores one append, unless its id was seen since `cutoff` or the spool has no room.
    fn append(
        &mut self,
        c: &mut Counters,
        limits: &Limits,
        cutoff: Option<u64>,
        a: &Append<'_>,
    ) -> Result<AppendOutcome, redb::Error> {
        let key = if limits.dedupe.is_some() {
            a.dedupe_key
        } else {
            None
        };
        let mut stale: Option<(u64, u64)> = None;
        if let (Some(key), Some(cutoff)) = (key, cutoff) {
            if let Some(seen) = self.dedupe.get(key)? {
                let (ms, dseq) = seen.value();
                if ms >= cutoff {
                    return Ok(AppendOutcome::Duplicate);
                }
                stale = Some((ms, dseq));
            }
        }
        let len = a.encoded.len() as u64;
        if c.bytes + len > limits.max_bytes {
            return Ok(AppendOutcome::Full);
        }
        let seq = c.next_seq;
        self.events.insert(seq, a.encoded)?;
        c.next_seq += 1;
        c.depth += 1;
        c.bytes += len;
        if let Some(key) = key {
            if let Some(old) = stale {
                self.by_time.remove(old)?;
                c.dedupe_entries = c.dedupe_entries.saturating_sub(1);
            }
            let dseq = c.dedupe_seq;
            c.dedupe_seq += 1;
            self.dedupe.insert(key, (a.received_at_ms, dseq))?;
            self.by_time.insert((a.received_at_ms, dseq), key)?;
            c.dedupe_entries += 1;
        }
        Ok(AppendOutcome::Stored { seq })
    }

    /// Forgets ids that left the window, and the oldest ones past `max_entries`.
    fn forget_old_ids(
        &mut self,
        c: &mut Counters,
        d: &DedupeLimits,
        cutoff: u64,
    ) -> Result<(), redb::Error> {
        for _ in 0..EXPIRE_PER_COMMIT {
            let oldest = self
                .by_time
                .first()?
                .map(|(k, v)| (k.value(), v.value().to_string()));
            let Some(((ms, dseq), key)) = oldest else {
                break;
            };
            if ms >= cutoff && c.dedupe_entries <= d.max_entries {
                break;
            }
            self.by_time.remove((ms, dseq))?;
            c.dedupe_entries = c.dedupe_entries.saturating_sub(1);
            let current = self.dedupe.get(key.as_str())?.map(|v| v.value());
            if current == Some((ms, dseq)) {
                self.dedupe.remove(key.as_str())?;
            }
        }
        Ok(())
    }
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
/// oldest first. Entries that cannot be decoded are returned as errors with their seq.
pub(super) fn read_after(
    db: &Database,
    after: Option<u64>,
    limit: usize,
) -> Result<Vec<ReadEntry>, redb::Error> {
    let txn = db.begin_read()?;
    let events = txn.open_table(EVENTS)?;
    let start = after.map(|s| s + 1).unwrap_or(0);
    let mut out = Vec::new();
    for item in events.range(start..)?.take(limit) {
        let (k, v) = item?;
        let seq = k.value();
        out.push(
            Message::decode(v.value())
                .map(|message| Entry { seq, message })
                .map_err(|source| Undecodable { seq, source }),
        );
    }
    Ok(out)
}

/// The oldest entry still in the spool, if any.
pub(super) fn oldest(db: &Database) -> Result<Option<Entry>, redb::Error> {
    Ok(read_after(db, None, 1)?
        .into_iter()
        .next()
        .and_then(|r| r.ok()))
}
