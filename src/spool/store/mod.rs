//! The spool's tables in redb, and the one transaction that changes them.
//!
//! The unit of write is the group commit, not the event: each commit stores the events it
//! accepted as one [record](super::record), so its B-tree work is a few inserts however many
//! events it carries (one insert and one delete per event before: a third of the process's CPU
//! under load). Tables:
//! - `batch_index`: first sequence number → (entries, record bytes); the publish queue, and
//!   what deletes look up.
//! - `batch_at`: first sequence number → (segment, offset) of its record of encoded
//!   [`Message`]s, kept in a [segment file](segment) beside the file.
//! - `segment_live`: segment → (batches, bytes) still in it: the oldest batch's segment, and
//!   the old segments little is left in ([`compact`]).
//! - `batches`: first sequence number → record, for the batches files of format 4 and before
//!   kept in the B-tree itself (read and deleted as they were; no new ones).
//! - `gone`: published entries of batches that still hold unpublished ones. A batch is removed
//!   as a whole when its last entry is published, with its `gone` entries.
//! - `dedupe_batches`: (newest receive ms, first dedupe seq) → record of the keys one commit
//!   added; to forget the oldest first, a batch at a time. The lookup by id is in memory
//!   ([`super::ids`]), rebuilt from these records on open.
//! - `parked`: entries the drain parked (never published), for the recovery check.
//! - `quarantine`: damaged entries moved out of the way, with their bytes (see [`quarantine`]).
//! - `meta`: counters kept in the same transactions as the data they count, `format`, and the
//!   [write-ahead log](wal)'s generation.
//!
//! A commit is made durable by the write-ahead log beside the file (`spool-0.wal` and
//! `spool-1.wal`, see [`wal`]): redb commits it without durability, and a checkpoint now and
//! then is redb's durable commit, after the segments' fsync.
//!
//! Formats (`meta.format`): 5 since the segments (records of events outside the B-tree, `meta`
//! says where the current segment ends; a format 4 file's records stay in `batches` and are
//! read from there until published); 4 since the write-ahead log (the tables as in 3; a build that does
//! not know the log would open the file without the commits only the log holds, so the format
//! says it is there); 3 since the in-memory ids (no `dedupe` table: a B-tree of random
//! ids made each commit rewrite one leaf per new id; event records of format 3, see
//! [`super::record`]); absent in earlier files (format 2), which are upgraded on open; a
//! newer format than this build knows is refused, never read as if it were this one.
//!
//! Everything here is synchronous and runs on the writer thread (or a blocking task for
//! reads); redb allows one writer at a time and any number of concurrent readers.

use std::path::{Path, PathBuf};
use std::time::Duration;

use redb::{
    Database, DatabaseError, ReadableDatabase, ReadableTable, TableDefinition, TableHandle,
};

use super::ids::{IdBatch, Ids};
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
    #[error("the spool {path} is of format {found}, newer than this build reads (up to {FORMAT}): run the newer version, or move the file away")]
    Newer { path: PathBuf, found: u64 },
}

/// First sequence number of a batch → where its record is among the segments.
const BATCH_AT: TableDefinition<u64, (u64, u64)> = TableDefinition::new("batch_at");
/// Segment → (batches, bytes of their records) still in it: the oldest batch's segment (what
/// may be deleted below it), and the old segments little is left in (see [`compact`]).
const SEGMENT_LIVE: TableDefinition<u64, (u64, u64)> = TableDefinition::new("segment_live");
/// First sequence number of a batch → its record of encoded messages (format 4 and before).
const BATCHES: TableDefinition<u64, &[u8]> = TableDefinition::new("batches");
/// First sequence number of a batch → (entries, bytes of its record): what deletes look up,
/// so they never read the records themselves.
const BATCH_INDEX: TableDefinition<u64, (u64, u64)> = TableDefinition::new("batch_index");
/// Published entries of batches that still hold unpublished ones.
const GONE: TableDefinition<u64, ()> = TableDefinition::new("gone");
/// Format 2's index of ids by key, dropped by the upgrade to format 3.
const DEDUPE_V2: TableDefinition<&str, (u64, u64)> = TableDefinition::new("dedupe");
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
const QUARANTINED: &str = "quarantined";
const FORMAT_KEY: &str = "format";
/// The generation of the write-ahead log's frames that the file does not hold yet.
const WAL_GENERATION: &str = "wal_generation";
/// The current segment, and where it ends (see [`segment`]).
const SEGMENT: &str = "segment";
const SEGMENT_END: &str = "segment_end";

/// The format this build writes (see the module's doc).
pub(super) const FORMAT: u64 = 5;

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
    /// Entries moved to the quarantine (see [`quarantine`]), ever.
    pub quarantined: u64,
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

/// redb's page cache. Small: appends and the drain touch the newest and oldest pages only,
/// and the cache shows up as RSS while a broker outage fills the spool. 4 MiB took 25–33 MiB
/// off the peak RSS of the 500 000-event burst against 16 MiB, with appends and the drain at
/// the same rate (BENCHMARKS.md, issue 26).
const CACHE_BYTES: usize = 4 * 1024 * 1024;

/// A spool file opened for writing, with the files it writes beside it.
#[derive(Debug)]
pub(super) struct Opened {
    pub db: Database,
    pub files: Files,
}

/// What a spool file writes beside it: its write-ahead log and its segments.
#[derive(Debug)]
pub(in crate::spool) struct Files {
    pub wal: Wal,
    pub segments: Segments,
}

impl Files {
    /// Undoes what a commit that failed wrote beside the file (see [`Wal::retract`] and
    /// [`Segments::retract`]).
    pub(in crate::spool) fn retract(&mut self) {
        self.wal.retract();
        self.segments.retract();
    }
}

/// Opens (or creates) the spool database in `dir` and applies what its write-ahead log holds
/// that the file does not; `check` has redb verify the whole file first (see
/// [`super::damage`]), so a damaged file is refused here rather than met later.
pub(super) fn open(dir: &Path, check: bool) -> Result<Opened, OpenError> {
    std::fs::create_dir_all(dir).map_err(|source| OpenError::CreateDir {
        path: dir.to_path_buf(),
        source,
    })?;
    let path = dir.join(FILE_NAME);
    let db = Database::builder()
        .set_cache_size(CACHE_BYTES)
        .set_check_integrity_on_open(check)
        .create(&path)
        .map_err(|e| match e {
            DatabaseError::DatabaseAlreadyOpen => OpenError::InUse(path.clone()),
            other => OpenError::Open {
                path: path.clone(),
                source: other.into(),
            },
        })?;
    match create_tables(&db) {
        Ok(None) => {}
        Ok(Some(found)) => return Err(OpenError::Newer { path, found }),
        Err(source) => return Err(OpenError::Open { path, source }),
    }
    match recover_log(&db, dir) {
        Ok(files) => Ok(Opened { db, files }),
        Err(source) => Err(OpenError::Open { path, source }),
    }
}

/// Applies the write-ahead log's frames the file does not hold yet (see [`wal`]) and
/// checkpoints them (after the segments they were appended to); returns the log, to be
/// written from its start, and the segments.
fn recover_log(db: &Database, dir: &Path) -> Result<Files, redb::Error> {
    let (generation, segment, end) = {
        let txn = db.begin_read()?;
        let meta = txn.open_table(META)?;
        let get =
            |k: &str| -> Result<Option<u64>, redb::Error> { Ok(meta.get(k)?.map(|v| v.value())) };
        (get(WAL_GENERATION)?, get(SEGMENT)?, get(SEGMENT_END)?)
    };
    let mut segments =
        Segments::open(&dir.join(FILE_NAME), segment.unwrap_or(0), end.unwrap_or(0))?;
    let logs = match generation {
        Some(g) => read_logs(dir, g)?,
        None => Vec::new(),
    };
    // The next generation writes the file the file's own generation did not, so its frames
    // stay whole until this recovery is durable; unless the generation after it has frames
    // (the fallback): then past both, so that no frame of theirs is ever taken for a new one.
    let next = match (generation, logs.get(1)) {
        (None, _) => wal::first_generation(),
        (Some(g), Some((_, after))) if after.written() => g.wrapping_add(2),
        (Some(g), _) => g.wrapping_add(1),
    };
    let mut c = load_counters(db)?;
    let before = c.next_seq;
    let txn = db.begin_write()?;
    {
        let mut t = Tables::open(&txn)?;
        // Known limit: a damaged last frame of the first generation is left out as torn even
        // when frames of the next follow it (a fallback or a crash inside a checkpoint, and
        // media damage at once); the next generation then stops at the gap, with a warning.
        let (frames, gap) = frames_from(&logs, c.next_seq);
        for frame in frames {
            t.apply_frame(&mut c, frame, &mut segments)?;
        }
        if let Some(gap) = gap {
            tracing::warn!(
                frame = gap,
                next = c.next_seq,
                "the spool's write-ahead log skips sequence numbers; it is read up to there"
            );
        }
        let mut meta = txn.open_table(META)?;
        if c.next_seq != before {
            write_counters(&mut meta, &c)?;
            write_position(&mut meta, &segments)?;
        }
        meta.insert(WAL_GENERATION, next)?;
    }
    // Kept aside before the checkpoint lets the log be overwritten; when that fails, nothing
    // is committed and the open fails (and is retried): the commits past the damage are
    // nowhere else.
    for (g, log) in &logs {
        if log.past_damage > 0 {
            keep_damaged_log(&dir.join(wal::file_of(*g)), log.past_damage)?;
        }
    }
    commit_durably(txn, &mut segments)?;
    if c.next_seq != before {
        tracing::info!(
            events = c.next_seq - before,
            "spool: commits the file did not hold yet applied from its write-ahead log"
        );
    }
    let torn: u32 = logs.iter().map(|(_, log)| log.torn).sum();
    if torn > 0 {
        tracing::warn!(
            events = torn,
            "the last commit in the spool's write-ahead log was cut off by the stop (its events were never acknowledged): left out"
        );
    }
    let wal = Wal::open(dir, next)?;
    Ok(Files { wal, segments })
}

/// The log's frames of `generation` and of the one after it: a file that fell back to its
/// previous durable commit still says the generation that followed that one (see
/// `wal::FILE_NAMES`).
fn read_logs(dir: &Path, generation: u64) -> std::io::Result<Vec<(u64, wal::Log)>> {
    [generation, generation.wrapping_add(1)]
        .into_iter()
        .map(|g| Ok((g, wal::read_frames(dir, g)?)))
        .collect()
}

/// The frames of `logs` a file whose next sequence number is `next` does not hold yet, in
/// order: those it holds are passed over, and the log ends where a frame does not follow on
/// from the one before (then with that frame's first sequence number).
fn frames_from(logs: &[(u64, wal::Log)], mut next: u64) -> (Vec<&wal::Frame>, Option<u64>) {
    let mut frames = Vec::new();
    for frame in logs.iter().flat_map(|(_, log)| &log.frames) {
        if frame.first < next {
            continue;
        }
        if frame.first != next {
            return (frames, Some(frame.first));
        }
        next += u64::from(frame.count);
        frames.push(frame);
    }
    (frames, None)
}

/// Writes the counters a commit keeps in `meta` (all but the quarantine's, written only when
/// it changes).
fn write_counters(
    meta: &mut redb::Table<'_, &'static str, u64>,
    c: &Counters,
) -> Result<(), redb::Error> {
    for (k, v) in [
        (NEXT_SEQ, c.next_seq),
        (BYTES, c.bytes),
        (DEDUPE_SEQ, c.dedupe_seq),
        (DEPTH, c.depth),
        (DEDUPE_ENTRIES, c.dedupe_entries),
    ] {
        meta.insert(k, v)?;
    }
    Ok(())
}

/// Writes where the current segment ends, with a commit that appended to it: where the next
/// open cuts it back to, if this is the last durable commit then.
fn write_position(
    meta: &mut redb::Table<'_, &'static str, u64>,
    segments: &Segments,
) -> Result<(), redb::Error> {
    let (segment, end) = segments.position();
    meta.insert(SEGMENT, segment)?;
    meta.insert(SEGMENT_END, end)?;
    Ok(())
}

/// Commits `txn` durably (a checkpoint), after the segments' fsync: a durable commit points
/// only at bytes that are durable too. Then lets go of the segments older than the oldest one
/// a batch is in, as of this durable commit and the one before (see
/// [`Segments::checkpointed`]).
fn commit_durably(txn: redb::WriteTransaction, segments: &mut Segments) -> Result<(), redb::Error> {
    let live = txn
        .open_table(SEGMENT_LIVE)?
        .first()?
        .map(|(k, _)| k.value());
    segments.sync()?;
    txn.commit()?;
    segments.advance();
    segments.checkpointed(live);
    Ok(())
}

/// Makes the names in `dir` durable: an `fdatasync` of a file makes its bytes durable, not
/// its name. A filesystem that cannot fsync a directory (some network or FUSE ones) keeps
/// names as it does: not a reason to refuse the spool.
pub(super) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    match std::fs::File::open(dir).and_then(|d| d.sync_all()) {
        Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => Ok(()),
        other => other,
    }
}

/// Copies a log damaged in its middle aside as `spool-<0|1>.wal.damaged-<unix ms>`, for the
/// background salvage (see [`wal`]). An error when it cannot (a full disk): the open must not
/// go on to overwrite the only copy of the commits past the damage.
fn keep_damaged_log(path: &Path, frames: usize) -> std::io::Result<()> {
    let ms = crate::event::unix_ms(std::time::SystemTime::now());
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".damaged-{ms}"));
    let to = PathBuf::from(name);
    #[cfg(test)]
    let copied = match tests::FAIL_LOG_COPY.with(std::cell::Cell::get) {
        true => Err(std::io::Error::other("fault point: no room for the copy")),
        false => std::fs::copy(path, &to),
    };
    #[cfg(not(test))]
    let copied = std::fs::copy(path, &to);
    // Durable before the checkpoint lets the log be overwritten: the copy's bytes, and its
    // name in the directory.
    let copied = copied.and_then(|_| {
        std::fs::File::open(&to)?.sync_all()?;
        std::fs::File::open(path.parent().unwrap_or(Path::new(".")))?.sync_all()
    });
    match copied {
        Ok(_) => {
            tracing::error!(
                frames,
                kept_as = %to.display(),
                "the spool's write-ahead log is damaged in its middle: the commits after the damage are not applied; the log was copied aside and is salvaged in the background"
            );
            Ok(())
        }
        // Of kind `Other` whatever the copy met: never taken for damage of the file itself.
        Err(e) => Err(std::io::Error::other(format!(
                "the spool's write-ahead log {} is damaged in its middle ({frames} frames after the damage) and cannot be copied aside to {} for the salvage: {e}; the spool is not opened until it can be (free space in its directory)",
                path.display(),
                to.display()
        ))),
    }
}

/// What the write-ahead log holds that the file does not (the next open applies it).
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct InLog {
    pub events: u64,
    /// Sequence numbers of its events whose bytes fail their checksums.
    pub damaged: Vec<u64>,
}

/// What the write-ahead log in `dir` holds that the file does not: for `spool stats`, which
/// never writes.
pub(super) fn pending_in_log(
    db: &(impl ReadableDatabase + ?Sized),
    dir: &Path,
) -> Result<InLog, redb::Error> {
    let txn = db.begin_read()?;
    let meta = txn.open_table(META)?;
    let Some(generation) = meta.get(WAL_GENERATION)?.map(|v| v.value()) else {
        return Ok(InLog::default());
    };
    let next = meta.get(NEXT_SEQ)?.map_or(0, |v| v.value());
    let logs = read_logs(dir, generation)?;
    let (mut events, mut damaged) = (0, Vec::new());
    for frame in frames_from(&logs, next).0 {
        events += u64::from(frame.count);
        if !frame.intact {
            let parts = record::parts(&frame.events).chain(std::iter::repeat(None));
            let bad = parts.take(frame.count as usize).enumerate();
            damaged.extend(
                bad.filter(|(_, p)| p.is_none())
                    .map(|(i, _)| frame.first + i as u64),
            );
        }
    }
    Ok(InLog { events, damaged })
}

/// A checkpoint of its own: redb's durable commit of everything committed so far, after which
/// the log starts over (when the writer closes, so a clean stop leaves nothing to apply).
pub(super) fn checkpoint(db: &Database, files: &mut Files) -> Result<(), redb::Error> {
    let next = files.wal.next_generation();
    let txn = db.begin_write()?;
    let moved = Tables::open(&txn)?.move_forward(&mut files.segments)?;
    let mut meta = txn.open_table(META)?;
    if moved {
        write_position(&mut meta, &files.segments)?;
    }
    meta.insert(WAL_GENERATION, next)?;
    drop(meta);
    commit_durably(txn, &mut files.segments)?;
    files.wal.restart(next);
    Ok(())
}

/// Creates the tables and upgrades an older file, in one transaction (a crash during it
/// leaves the old layout whole). `Some(format)`: the file is newer than this build, and
/// nothing was changed.
fn create_tables(db: &Database) -> Result<Option<u64>, redb::Error> {
    let txn = db.begin_write()?;
    let format = txn.open_table(META)?.get(FORMAT_KEY)?.map(|v| v.value());
    if let Some(found) = format.filter(|&f| f > FORMAT) {
        txn.abort()?;
        return Ok(Some(found));
    }
    {
        txn.open_table(BATCHES)?;
        txn.open_table(BATCH_AT)?;
        txn.open_table(SEGMENT_LIVE)?;
        txn.open_table(BATCH_INDEX)?;
        txn.open_table(GONE)?;
        txn.open_table(DEDUPE_BATCHES)?;
        txn.open_table(PARKED)?;
        txn.open_table(QUARANTINE)?;
    }
    if format != Some(FORMAT) {
        migrate_v1(&txn)?;
        upgrade(&txn, format)?;
    }
    txn.commit()?;
    Ok(None)
}

/// From format 2: the index of ids by key goes (the ids are in `dedupe_batches` already,
/// and in memory from now on). Its records of events stay as they are: they say their format.
/// From format 3: nothing moves; the log's first generation is set by [`recover_log`].
/// From format 4: nothing moves either; its records stay in `batches`, and new ones go to
/// segments.
fn upgrade(txn: &redb::WriteTransaction, from: Option<u64>) -> Result<(), redb::Error> {
    let had_index = txn.list_tables()?.any(|t| t.name() == DEDUPE_V2.name());
    if had_index {
        txn.delete_table(DEDUPE_V2)?;
        tracing::info!(format = FORMAT, "spool upgraded from format 2");
    } else if let Some(from) = from {
        tracing::info!(format = FORMAT, from, "spool upgraded");
    }
    txn.open_table(META)?.insert(FORMAT_KEY, FORMAT)?;
    Ok(())
}

/// The ids of the window, from the records of keys (see [`super::ids`]).
pub(super) fn load_ids(db: &(impl ReadableDatabase + ?Sized)) -> Result<Ids, redb::Error> {
    let txn = db.begin_read()?;
    let table = txn.open_table(DEDUPE_BATCHES)?;
    let mut ids = Ids::default();
    for item in table.iter()? {
        let (at, record) = item?;
        let (newest_ms, first) = at.value();
        let record = record.value();
        let keys = record::parts(record).map_while(|k| k.and_then(|k| std::str::from_utf8(k).ok()));
        let batch = IdBatch {
            first,
            count: record::count(record),
            newest_ms,
        };
        ids.load(batch, keys);
    }
    Ok(ids)
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
            let mut record = RecordBuilder::unversioned_events(seq.value());
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

/// The file's format as `meta` says it (`None`: written before formats were, format 2).
pub(super) fn format(db: &(impl ReadableDatabase + ?Sized)) -> Result<Option<u64>, redb::Error> {
    let txn = db.begin_read()?;
    let meta = txn.open_table(META)?;
    Ok(meta.get(FORMAT_KEY)?.map(|v| v.value()))
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
        quarantined: get(QUARANTINED)?,
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

mod commit;
mod compact;
mod quarantine;
mod read;
pub(super) mod segment;
pub(super) mod wal;

use commit::{batch_holding, published_in, Tables};
pub(super) use commit::{commit_batch, Marks};
pub use quarantine::Quarantined;
use quarantine::QUARANTINE;
pub(super) use quarantine::{quarantined, Kept};
pub(super) use read::{decoder, live, read_after, read_parked, read_unparked, Live, Readable};
pub use read::{Entry, ReadEntry, Undecodable};
pub(super) use segment::Segments;
pub(super) use wal::Wal;

/// Test seam: rewrites the stored record of the batch starting at `first` through `damage`,
/// in place in its segment of the spool in `dir` (or in redb, for a batch of format 4), as a
/// disk that flipped bits would leave it: only the record's checksums can tell. A record
/// whose length changes is written after the segment's end instead, and pointed at.
#[cfg(test)]
pub(super) fn damage_record(
    db: &Database,
    dir: &Path,
    first: u64,
    damage: impl FnOnce(&mut Vec<u8>),
) {
    use std::os::unix::fs::FileExt;
    let txn = db.begin_write().unwrap();
    {
        let mut at_table = txn.open_table(BATCH_AT).unwrap();
        let at = at_table.get(first).unwrap().map(|v| v.value());
        let Some((segment, offset)) = at else {
            let mut batches = txn.open_table(BATCHES).unwrap();
            let mut record = batches.get(first).unwrap().unwrap().value().to_vec();
            damage(&mut record);
            batches.insert(first, record.as_slice()).unwrap();
            drop(batches);
            drop(at_table);
            txn.commit().unwrap();
            return;
        };
        let mut index = txn.open_table(BATCH_INDEX).unwrap();
        let (count, len) = index.get(first).unwrap().unwrap().value();
        let segments = segment::dir_of(&dir.join(FILE_NAME));
        let mut record = segment::read(&segments, segment::At { segment, offset }, len).unwrap();
        damage(&mut record);
        let path = segment::path_of(&segments, segment);
        let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
        if record.len() as u64 == len {
            file.write_all_at(&record, offset).unwrap();
        } else {
            let end = file.metadata().unwrap().len();
            file.write_all_at(&record, end).unwrap();
            at_table.insert(first, (segment, end)).unwrap();
            index.insert(first, (count, record.len() as u64)).unwrap();
        }
    }
    txn.commit().unwrap();
}

/// Test seam: flips one bit of entry `seq`'s stored bytes (see [`damage_record`]), as memory
/// or a disk controller that damaged the bytes before redb checksummed its page would leave it.
#[cfg(test)]
pub(crate) fn damage_entry(dir: &Path, seq: u64) {
    let db = Database::open(dir.join(FILE_NAME)).unwrap();
    let first = {
        let txn = db.begin_read().unwrap();
        let index = txn.open_table(BATCH_INDEX).unwrap();
        batch_holding(&index, seq).unwrap().expect("spooled").0
    };
    damage_record(&db, dir, first, |record| {
        let (part, _) = record::part_as_stored(record, (seq - first) as u32).expect("framed");
        let at = part.as_ptr() as usize - record.as_ptr() as usize;
        record[at + 2] ^= 0x10;
    });
}

#[cfg(test)]
mod tests;
