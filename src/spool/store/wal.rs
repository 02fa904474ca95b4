//! The write-ahead log: a group commit made durable by one sequential write and one
//! `fdatasync`, while redb's own commit waits for a checkpoint.
//!
//! Why: a durable redb commit writes a dozen pages spread over the file (the copy-on-write of
//! each changed table's leaf and branches, the allocator's state, the header) and fsyncs them,
//! about 0.5 ms on a disk whose `fdatasync` of one page takes 0.12 ms (BENCHMARKS.md, issue
//! 26). What a commit must make durable is small: the record of its events and the record of
//! its dedupe keys, which redb stores as they are. So a commit writes those two records here,
//! in one frame, and fsyncs this file only; redb commits the same changes without durability
//! (visible to readers at once, written to its file later). A **checkpoint** is a durable
//! redb commit: it holds every change so far, so the log starts over behind it, under a new
//! generation. One happens every [`CHECKPOINT_EVERY`]; instead of a frame larger than
//! [`MAX_FRAME_BYTES`] (large bodies), of one that would end past [`MAX_BYTES`], or of one the
//! log has no room to grow for (a full disk); for every commit that parks or quarantines
//! (those marks are rare, and the recovery check relies on them); and when the writer closes.
//! A checkpoint's own events are the first frame of the next generation, which is written to
//! the other of the log's two files ([`FILE_NAMES`]): so the log always holds every commit
//! since the durable commit before the newest, which is what redb falls back to when its
//! newest one is damaged (commits of more than [`MAX_FRAME_BYTES`] excepted).
//!
//! On open, the frames of the current generation that the file does not hold yet (their first
//! sequence number is the file's next one) are applied again, in order, and checkpointed.
//! What a frame does not carry is redone by itself: published entries the file still lists
//! are found on Kafka by the start-up recovery check (as deletes were never fsynced on their
//! own), and old dedupe ids are forgotten again by the next commit.
//!
//! The file is filled with zeros ahead of the frames (from [`FIRST_BYTES`], doubling), and then
//! overwritten in place: here an `fdatasync` after writing into a growing file took 0.33 ms
//! against 0.14 ms into blocks already written, which need no metadata in the sync.
//! Generations tell this cycle's frames from the older ones still in the file behind them.
//!
//! A frame: `magic: 4 bytes` ("EKBW"), `version: u8` (1), 3 bytes of zeros, `generation: u64
//! LE`, `newest_ms: u64 LE` (the newest receive time of its keys, part of their table's key),
//! `first: u64 LE` and `count: u32 LE` (the sequence numbers of its events), `events: u32 LE`
//! and `keys: u32 LE` (the two records' lengths), `crc32(all before): u32 LE`; then the records
//! of events and keys (see [`super::record`]), whose own checksums cover their bytes.
//!
//! Damage, read back at open:
//! - the last frame fails its records' checksums: a write torn by the crash, never
//!   acknowledged (its fsync did not return); it is left out, and logged;
//! - a frame in the middle fails them (a later frame follows on from it, so it was fsynced and
//!   acknowledged): it is applied as it is, and the drain finds its damaged events by their
//!   checksums and moves them to the quarantine (see `store::quarantine`), every other one
//!   delivered;
//! - a frame's header fails its checksum, and frames of the generation follow it: the frames
//!   after it cannot be told apart from garbage with certainty. The log is copied aside as
//!   `spool-<0|1>.wal.damaged-<unix ms>`, with an error, and salvaged in the background like a
//!   damaged spool file (its records carry their sequence numbers and checksums). When it
//!   cannot be copied (no room), the open fails and changes nothing: the commits past the
//!   damage are in that log only.
//!
//! Hand-written rather than a log crate: a frame is two records the store already builds and
//! checksums, the log needs no index (it is read whole once, at open), and the property that
//! matters here (overwriting blocks written before, one `fdatasync` per commit) is what the
//! crates looked at (okaywal, simple-wal) do not let a caller choose.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use super::record;

/// The log's two files inside `spool.dir`: generations alternate between them, so the frames
/// of the generation before the current one are still whole in the other file. If redb ever
/// falls back to its previous durable commit (its newest one found damaged at open), the log
/// still holds everything since that one.
pub(in crate::spool) const FILE_NAMES: [&str; 2] = ["spool-0.wal", "spool-1.wal"];

/// The file of the log that holds the frames of `generation`.
pub(in crate::spool) fn file_of(generation: u64) -> &'static str {
    FILE_NAMES[(generation % 2) as usize]
}

/// How long redb's changes may stay without a durable commit of their own. Longer makes the
/// checkpoint (which writes what changed since the last one) rarer and larger; it also bounds
/// how much the log holds and how much of the drain's progress a crash forgets.
pub(super) const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

/// Most bytes the log grows to: a frame that would end past it is a checkpoint instead. A
/// second of commits of 1 KiB events at 20 000 a second is about 24 MiB.
pub(super) const MAX_BYTES: u64 = 64 * 1024 * 1024;

/// Most bytes of a frame: a commit of more (large bodies) is a checkpoint instead. Each byte
/// logged is written twice (to the log, and to the file by the next checkpoint): with 256 KiB
/// bodies that took 14 % off the rate, where the dozen pages of redb's commit are nothing
/// beside the bodies themselves (BENCHMARKS.md, issue 26).
pub(super) const MAX_FRAME_BYTES: usize = 2 * 1024 * 1024;

/// The log's first length; it doubles each time it must grow (a log of 64 MiB zeroed at the
/// start would be a third of a small disk, and a test suite's hundreds of spools would each
/// write it).
const FIRST_BYTES: u64 = 64 * 1024;

const MAGIC: [u8; 4] = *b"EKBW";
const VERSION: u8 = 1;
/// Bytes of a frame's header.
const HEADER: usize = 48;

/// The log, open for writing: where the next frame goes, and in which generation.
#[derive(Debug)]
pub(in crate::spool) struct Wal {
    /// Both files, opened at once: a checkpoint never fails for want of the next one.
    files: [File; 2],
    generation: u64,
    /// Where the next frame starts.
    end: u64,
    /// Bytes of each file already written (with zeros or old frames): overwritten in place.
    prepared: [u64; 2],
    checkpointed_at: Instant,
}

/// One frame as read back: the records of one commit.
#[derive(Debug)]
pub(super) struct Frame {
    pub newest_ms: u64,
    /// Sequence number of its first event, and how many.
    pub first: u64,
    pub count: u32,
    pub events: Vec<u8>,
    pub keys: Vec<u8>,
    /// Whether every checksum of its records matches.
    pub intact: bool,
}

/// What a log holds for its generation.
#[derive(Debug, Default)]
pub(super) struct Log {
    /// Frames to apply, in order (the damaged ones among them to quarantine).
    pub frames: Vec<Frame>,
    /// Events of a last frame torn by a crash, left out (never acknowledged).
    pub torn: u32,
    /// Frames of the generation found past a frame whose header is damaged: not applied (see
    /// the module's doc).
    pub past_damage: usize,
}

impl Log {
    /// Whether anything of its generation was found (whole, torn or past damage).
    pub(super) fn written(&self) -> bool {
        !self.frames.is_empty() || self.torn > 0 || self.past_damage > 0
    }
}

impl Wal {
    /// Opens (or creates) the log in `dir`, to be written from its start under `generation`.
    /// What it held must have been read first ([`read_frames`]).
    ///
    /// The directory is fsynced before the first frame: an `fdatasync` of a file makes its
    /// bytes durable, not its name, so a power cut could otherwise lose a file created here
    /// (the log's, or the spool file redb created just before) or a damaged file's rename
    /// aside (which happens in this directory before the fresh file is opened), with the
    /// commits acknowledged since.
    pub(super) fn open(dir: &Path, generation: u64) -> io::Result<Wal> {
        let open = |name: &str| {
            File::options()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(dir.join(name))
        };
        let files = [open(FILE_NAMES[0])?, open(FILE_NAMES[1])?];
        super::sync_dir(dir)?;
        let prepared = [files[0].metadata()?.len(), files[1].metadata()?.len()];
        Ok(Wal {
            files,
            generation,
            end: 0,
            prepared,
            checkpointed_at: Instant::now(),
        })
    }

    /// The generation the next checkpoint starts (stored in the file by that checkpoint).
    pub(super) fn next_generation(&self) -> u64 {
        self.generation.wrapping_add(1)
    }

    /// The generation frames are written under now.
    pub(super) fn generation(&self) -> u64 {
        self.generation
    }

    /// Whether a frame of records of these lengths is logged at all (larger ones are written
    /// by redb alone, see [`MAX_FRAME_BYTES`]).
    pub(super) fn takes(&self, events: usize, keys: usize) -> bool {
        HEADER + events + keys <= MAX_FRAME_BYTES
    }

    /// Which of the two files this generation writes.
    fn current(&self) -> usize {
        (self.generation % 2) as usize
    }

    /// Whether a commit of records of these lengths must be a checkpoint: the last one is
    /// [`CHECKPOINT_EVERY`] old, the frame is larger than [`MAX_FRAME_BYTES`], or it would
    /// not fit.
    pub(super) fn checkpoint_due(&self, events: usize, keys: usize) -> bool {
        let frame = HEADER + events + keys;
        self.checkpointed_at.elapsed() >= CHECKPOINT_EVERY
            || !self.takes(events, keys)
            || self.end + frame as u64 > MAX_BYTES
    }

    /// Writes one commit's frame and fsyncs it. Returns where the log ends after it, taken
    /// into use by [`Wal::advance`] once redb has the same commit: when that fails, the next
    /// frame overwrites this one (a frame is durable only with what it was committed with,
    /// and replay stops where the sequence numbers break).
    pub(super) fn write(&mut self, newest_ms: u64, events: &[u8], keys: &[u8]) -> io::Result<u64> {
        let (first, count) = record::Header::read(events).map_or((0, 0), |h| (h.first, h.count));
        let header = frame_header(
            (self.generation, newest_ms),
            (first, count),
            (events.len(), keys.len()),
        );
        let end = self.end + (HEADER + events.len() + keys.len()) as u64;
        self.prepare(end)?;
        let file = &self.files[self.current()];
        file.write_all_at(&header, self.end)?;
        file.write_all_at(events, self.end + HEADER as u64)?;
        file.write_all_at(keys, self.end + (HEADER + events.len()) as u64)?;
        file.sync_data()?;
        Ok(end)
    }

    /// Undoes a written frame not taken into use (its commit failed): its header, and the
    /// header of its events record, are zeroed and fsynced, so that no later open applies it
    /// and no salvage (which scans a log for records byte by byte) takes its events, whatever
    /// later overwrites part of it. Best effort: when that fails too, the next open may apply
    /// a commit whose requests were answered as failed (a retry of them is then a duplicate,
    /// and delivered once).
    pub(in crate::spool) fn retract(&mut self) {
        let file = &self.files[self.current()];
        let zeros = [0u8; HEADER + record::Header::V2_LEN];
        let undone = file
            .write_all_at(&zeros, self.end)
            .and_then(|()| file.sync_data());
        if let Err(e) = undone {
            tracing::warn!(error = %e, "a failed commit's frame could not be undone in the spool's write-ahead log");
        }
    }

    /// Takes a written frame into use (see [`Wal::write`]).
    pub(super) fn advance(&mut self, end: u64) {
        self.end = end;
    }

    /// A checkpoint made everything durable: the log starts over under `generation`, in the
    /// other file.
    pub(super) fn restart(&mut self, generation: u64) {
        self.generation = generation;
        self.end = 0;
        self.checkpointed_at = Instant::now();
    }

    /// Fills the file with zeros up to past `end`, if it is not that long yet, and makes
    /// that durable (each time twice as long: a few times, until the log reached the length a
    /// second of commits takes).
    fn prepare(&mut self, end: u64) -> io::Result<()> {
        let i = self.current();
        let prepared = self.prepared[i];
        if end <= prepared {
            return Ok(());
        }
        let doubled = (prepared * 2).clamp(FIRST_BYTES, MAX_BYTES);
        let target = doubled.max(end).next_multiple_of(4096);
        let zeros = vec![0u8; (target - prepared) as usize];
        self.files[i].write_all_at(&zeros, prepared)?;
        self.files[i].sync_all()?;
        self.prepared[i] = target;
        Ok(())
    }
}

fn frame_header(
    (generation, newest_ms): (u64, u64),
    (first, count): (u64, u32),
    (events, keys): (usize, usize),
) -> [u8; HEADER] {
    let mut h = [0u8; HEADER];
    h[..4].copy_from_slice(&MAGIC);
    h[4] = VERSION;
    h[8..16].copy_from_slice(&generation.to_le_bytes());
    h[16..24].copy_from_slice(&newest_ms.to_le_bytes());
    h[24..32].copy_from_slice(&first.to_le_bytes());
    h[32..36].copy_from_slice(&count.to_le_bytes());
    h[36..40].copy_from_slice(&(events as u32).to_le_bytes());
    h[40..44].copy_from_slice(&(keys as u32).to_le_bytes());
    let crc = crc32fast::hash(&h[..44]);
    h[44..48].copy_from_slice(&crc.to_le_bytes());
    h
}

/// The frames of `generation` in the log in `dir`, in order (see the module's doc for what is
/// done with damage). A missing file holds none.
pub(super) fn read_frames(dir: &Path, generation: u64) -> io::Result<Log> {
    read_frames_in(&dir.join(file_of(generation)), generation)
}

/// The frames of `generation` in the log file at `path`.
pub(super) fn read_frames_in(path: &Path, generation: u64) -> io::Result<Log> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Log::default()),
        Err(e) => return Err(e),
    };
    let mut log = Log::default();
    let mut at = 0;
    while let Some((frame, len)) = frame_at(&bytes[at..], generation) {
        log.frames.push(frame);
        at += len;
    }
    let rest = bytes.get(at + 1..).unwrap_or_default();
    log.past_damage = memchr::memmem::find_iter(rest, &MAGIC)
        .filter(|&i| header_at(&rest[i..], generation).is_some())
        .count();
    if log.past_damage == 0 && log.frames.last().is_some_and(|f| !f.intact) {
        log.torn = log.frames.pop().map_or(0, |f| f.count);
    }
    Ok(log)
}

/// The frame of `generation` whose header is at the start of `bytes`, if its header is whole,
/// and its length.
fn frame_at(bytes: &[u8], generation: u64) -> Option<(Frame, usize)> {
    let (newest_ms, first, count, events_len, keys_len) = header_at(bytes, generation)?;
    let events = bytes.get(HEADER..HEADER + events_len)?;
    let keys = bytes.get(HEADER + events_len..HEADER + events_len + keys_len)?;
    let frame = Frame {
        newest_ms,
        first,
        count,
        intact: whole(events) && (keys.is_empty() || whole(keys)),
        events: events.to_vec(),
        keys: keys.to_vec(),
    };
    Some((frame, HEADER + events_len + keys_len))
}

/// A whole frame header of `generation` at the start of `bytes`: (newest_ms, first, count,
/// bytes of events, bytes of keys).
fn header_at(bytes: &[u8], generation: u64) -> Option<(u64, u64, u32, usize, usize)> {
    let h = bytes.get(..HEADER)?;
    let long = |at: usize| u64::from_le_bytes(h[at..at + 8].try_into().expect("8 bytes"));
    if !sound_header(h) || long(8) != generation {
        return None;
    }
    let word = |at: usize| u32::from_le_bytes(h[at..at + 4].try_into().expect("4 bytes"));
    Some((
        long(16),
        long(24),
        word(32),
        word(36) as usize,
        word(40) as usize,
    ))
}

/// Whether `h` (at least [`HEADER`] bytes) is a frame header that passes its checksum.
fn sound_header(h: &[u8]) -> bool {
    let crc = u32::from_le_bytes(h[44..48].try_into().expect("4 bytes"));
    h[..4] == MAGIC && h[4] == VERSION && crc == crc32fast::hash(&h[..44])
}

/// Whether the record at `record_at` of the log file `file` belongs to a retracted frame:
/// the [`HEADER`] bytes before it are all zeros, as [`Wal::retract`] left a frame whose
/// commit failed (its requests were answered as failed), so its records, though they pass
/// their own checksums, are not for the salvage. (Since it also zeroes the events record's
/// header, a retraction of this version leaves no record to find; this check is for logs of
/// the version before, which zeroed the frame's header only.) A header damaged in any other
/// way (a flipped byte) is not a retraction: that frame's records were acknowledged, and the
/// salvage of a log, which scans for records byte by byte, takes them.
pub(in crate::spool) fn retracted(file: &File, record_at: u64) -> bool {
    let mut header = [0u8; HEADER];
    record_at >= HEADER as u64
        && file
            .read_exact_at(&mut header, record_at - HEADER as u64)
            .is_ok()
        && header.iter().all(|&b| b == 0)
}

/// Whether `path` is a copy of the log kept for the salvage (`spool-<0|1>.wal.damaged-<ms>`,
/// see `store::keep_damaged_log`), rather than a damaged spool file.
pub(in crate::spool) fn is_log_copy(path: &Path) -> bool {
    path.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
        FILE_NAMES
            .iter()
            .any(|log| n.starts_with(&format!("{log}.")))
    })
}

/// Whether a record reads whole: its header and every part pass their checksums.
fn whole(r: &[u8]) -> bool {
    record::Header::read(r).is_some_and(|h| h.checked) && record::parts(r).all(|p| p.is_some())
}

/// A generation for a log that has none yet: unlikely to be any earlier file's, so frames a
/// log kept from a spool file since replaced are never taken for this one's.
pub(super) fn first_generation() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    h.write_u32(std::process::id());
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::record::RecordBuilder;

    fn record(first: u64, parts: &[&[u8]]) -> Vec<u8> {
        let mut b = RecordBuilder::events(first);
        for p in parts {
            b.push(p);
        }
        b.finish()
    }

    /// A log in a fresh directory with frames of these records (no keys), generation 7.
    fn log_of(records: &[Vec<u8>]) -> (tempfile::TempDir, Wal) {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = Wal::open(dir.path(), 7).unwrap();
        for (i, r) in records.iter().enumerate() {
            let end = wal.write(10 + i as u64, r, &[]).unwrap();
            wal.advance(end);
        }
        (dir, wal)
    }

    /// Flips a byte `back` bytes before the end of frame `n` (of `lens`, the records' lengths).
    fn flip(dir: &Path, lens: &[usize], n: usize, back: usize) {
        let path = dir.join(file_of(7));
        let mut bytes = std::fs::read(&path).unwrap();
        let end: usize = lens[..=n].iter().map(|l| HEADER + l).sum();
        bytes[end - back] ^= 0xFF;
        std::fs::write(&path, &bytes).unwrap();
    }

    #[test]
    fn frames_come_back_in_order_and_only_of_their_generation() {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = Wal::open(dir.path(), 7).unwrap();
        let one = record(0, &[b"a", b"bb"]);
        let two = record(2, &[b"ccc"]);
        let end = wal.write(11, &one, &[]).unwrap();
        wal.advance(end);
        let end = wal.write(12, &two, &record(0, &[b"k"])).unwrap();
        wal.advance(end);
        let path = dir.path().join(file_of(7));
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            FIRST_BYTES,
            "zeros ahead"
        );
        let log = read_frames(dir.path(), 7).unwrap();
        assert_eq!(log.frames.len(), 2);
        let f = &log.frames[0];
        assert_eq!((f.newest_ms, f.first, f.count, &f.events), (11, 0, 2, &one));
        assert!(f.keys.is_empty() && f.intact);
        assert_eq!((log.frames[1].first, &log.frames[1].events), (2, &two));
        assert!(
            read_frames_in(&path, 9).unwrap().frames.is_empty(),
            "another generation"
        );

        // After a checkpoint the log goes on in the other file, and the frames of the
        // generation before are still whole; two checkpoints on, that file is overwritten
        // from its start, and its old frames are of an earlier generation, never read.
        wal.restart(8);
        let three = record(3, &[b"d"]);
        let end = wal.write(13, &three, &[]).unwrap();
        wal.advance(end);
        let log = read_frames(dir.path(), 8).unwrap();
        assert_eq!(log.frames.len(), 1);
        assert_eq!(log.frames[0].events, three);
        assert_eq!((log.torn, log.past_damage), (0, 0));
        assert_eq!(read_frames(dir.path(), 7).unwrap().frames.len(), 2);
        wal.restart(9);
        let four = record(4, &[b"e"]);
        let end = wal.write(14, &four, &[]).unwrap();
        wal.advance(end);
        let log = read_frames(dir.path(), 9).unwrap();
        assert_eq!(
            log.frames.len(),
            1,
            "the new frame, not the old ones behind it"
        );
        assert_eq!(log.frames[0].events, four);
    }

    #[test]
    fn a_last_frame_cut_off_is_left_out_and_counted() {
        let records = [record(0, &[b"a"]), record(1, &[b"b", b"c"])];
        let (dir, _wal) = log_of(&records);
        flip(dir.path(), &[records[0].len(), records[1].len()], 1, 1);
        let log = read_frames(dir.path(), 7).unwrap();
        assert_eq!(log.frames.len(), 1);
        assert_eq!(log.torn, 2, "its two events");
    }

    #[test]
    fn a_damaged_frame_in_the_middle_is_applied_as_it_is() {
        let records = [
            record(0, &[b"a"]),
            record(1, &[b"bbbb"]),
            record(2, &[b"c"]),
        ];
        let (dir, _wal) = log_of(&records);
        let lens: Vec<usize> = records.iter().map(Vec::len).collect();
        flip(dir.path(), &lens, 1, 2);
        let log = read_frames(dir.path(), 7).unwrap();
        let intact: Vec<bool> = log.frames.iter().map(|f| f.intact).collect();
        assert_eq!(intact, [true, false, true]);
        assert_eq!((log.torn, log.past_damage), (0, 0));
    }

    #[test]
    fn frames_past_a_damaged_header_are_counted_not_applied() {
        let records = [record(0, &[b"a"]), record(1, &[b"b"]), record(2, &[b"c"])];
        let (dir, _wal) = log_of(&records);
        let lens: Vec<usize> = records.iter().map(Vec::len).collect();
        // The second frame's header: its generation's first byte.
        flip(dir.path(), &lens, 1, lens[1] + HEADER - 8);
        let log = read_frames(dir.path(), 7).unwrap();
        assert_eq!(log.frames.len(), 1);
        assert_eq!(log.past_damage, 1, "the third frame");
    }

    #[test]
    fn a_frame_not_taken_into_use_is_overwritten_by_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = Wal::open(dir.path(), 1).unwrap();
        let long = record(0, &[&[1u8; 300]]);
        wal.write(1, &long, &[]).unwrap();
        let short = record(0, &[b"x"]);
        let end = wal.write(2, &short, &[]).unwrap();
        wal.advance(end);
        let log = read_frames(dir.path(), 1).unwrap();
        assert_eq!(
            log.frames.len(),
            1,
            "what is left of the first frame is not one"
        );
        assert_eq!(log.frames[0].events, short);
        assert_eq!((log.torn, log.past_damage), (0, 0));
    }

    #[test]
    fn a_retracted_frame_is_told_from_a_damaged_header() {
        let records = [record(0, &[b"a"]), record(1, &[b"b"])];
        let (dir, mut wal) = log_of(&records);
        let third = record(2, &[b"c"]);
        wal.write(12, &third, &[]).unwrap();
        wal.retract();
        let lens: Vec<usize> = records.iter().map(Vec::len).collect();
        flip(dir.path(), &lens, 0, lens[0] + 20);
        let file = File::open(dir.path().join(file_of(7))).unwrap();
        let second = (HEADER + records[0].len()) as u64;
        let third_at = second + (HEADER + records[1].len()) as u64;
        assert!(!retracted(&file, HEADER as u64), "a flipped header byte");
        assert!(!retracted(&file, second + HEADER as u64));
        assert!(retracted(&file, third_at + HEADER as u64));
        assert!(!retracted(&file, 0), "nothing before the file's start");
        // Its events record's header is gone too: a later frame that ends inside the zeroed
        // header (a later generation, from the file's start) leaves no record to find.
        let path = dir.path().join(file_of(7));
        let mut bytes = std::fs::read(&path).unwrap();
        let third = third_at as usize;
        bytes[third..third + 20].fill(0xAB);
        std::fs::write(&path, &bytes).unwrap();
        let file = File::open(&path).unwrap();
        assert!(!retracted(&file, third_at + HEADER as u64));
        let found = record::Header::read(&bytes[third + HEADER..]);
        assert!(!found.is_some_and(|h| h.checked), "{found:?}");
    }

    #[test]
    fn copies_of_the_log_are_told_from_spool_files() {
        assert!(is_log_copy(Path::new("/s/spool-0.wal.damaged-17")));
        assert!(is_log_copy(Path::new("spool-1.wal.damaged-17")));
        assert!(!is_log_copy(Path::new("/s/spool.redb.damaged-17")));
        assert!(!is_log_copy(Path::new(
            "/s/spool.redb.damaged-17.spool-0.wal"
        )));
    }

    #[test]
    fn a_checkpoint_is_due_for_a_frame_of_large_bodies() {
        let dir = tempfile::tempdir().unwrap();
        let wal = Wal::open(dir.path(), 1).unwrap();
        assert!(!wal.checkpoint_due(1024, 64));
        assert!(wal.checkpoint_due(MAX_FRAME_BYTES, 0), "large bodies");
    }

    #[test]
    fn a_checkpoint_is_due_when_the_log_is_full() {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = Wal::open(dir.path(), 1).unwrap();
        wal.advance(MAX_BYTES - 1000);
        assert!(!wal.checkpoint_due(500, 0));
        assert!(wal.checkpoint_due(1000, 0));
    }
}
