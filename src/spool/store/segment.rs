//! Segment files: each group commit's record of events, outside the B-tree.
//!
//! Why: redb keeps a value in the leaf pages of its B-tree, and a group commit's record of
//! events is one value (16 MiB at 64 connections of 256 KiB bodies). So redb read each record
//! back from the file at every operation that reached its leaf: the insert of the next record,
//! the delete once published, the commit, the drain's read. At 256 KiB a third of the bridge's
//! time was the kernel copying those pages, and the drain read three bytes for each byte it
//! published (BENCHMARKS.md, issue 26). Here a record is appended to a segment file, and the
//! B-tree keeps only where it is (`batch_at`: first sequence number → segment, offset; its
//! length is in `batch_index` already). Nothing reads a record again until the drain does, with
//! one `pread` of just its bytes, and a delete reads nothing.
//!
//! Durability is the spool's as before: a commit is made durable by its frame in the
//! [write-ahead log](super::wal), which carries the record itself; the segment is written
//! without a sync (the page cache), and fsynced before each checkpoint (redb's durable commit),
//! so that a durable commit never points at bytes that are not. On open, the current segment
//! is cut back to where the file's last durable commit says it ends, and the log's frames
//! applied again append their records there; segments numbered after it (begun by commits the
//! file does not hold) are removed.
//!
//! Files: `<spool file>.segments/<id, 16 hex digits>.seg`, beside the spool file and named
//! after it, so a damaged file moved aside takes its segments with it (one rename of the
//! directory) and its salvage scans them for records byte by byte, as it scans the file. A
//! record is stored as the store built it ([`super::record`]: magic, sequence numbers, a CRC
//! per header and per event): a segment adds no framing of its own.
//!
//! A segment is appended to up to [`SEGMENT_BYTES`], then the next one begins (or earlier,
//! when nothing in it is still spooled, see [`Segments::checkpointed`]). A segment is deleted
//! once it is older than the oldest batch's segment, as of the durable commit before the newest
//! too: redb falls back to that one when its newest is damaged, and the batches it lists must
//! still be readable. A batch that stays (a parked event) would keep its segment and every later
//! one: its record is moved forward instead (see [`super::compact`]).
//!
//! Hand-written: an append at a known offset, a `pread`, a rename and an unlink are the whole
//! of it; a log crate would bring its own framing and recovery, where the store's records and
//! the write-ahead log already have theirs.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Bytes after which a segment is not appended to any more: small enough that a drained spool
/// gives its disk space back soon, large enough that a segment is created rarely (each one
/// costs an fsync of the directory).
#[cfg(not(test))]
pub(super) const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
/// Small in unit tests, so that a few records roll a segment.
#[cfg(test)]
pub(super) const SEGMENT_BYTES: u64 = 1024 * 1024;

/// Bytes of a segment past which it is left for a new one at a checkpoint that finds nothing
/// spooled in it: so a spool that empties gives back the room its segment took (on a full
/// disk, that room is what lets it write again), without a new file each second under light
/// load.
const ROLL_UNUSED_BYTES: u64 = 1024 * 1024;

/// The directory of segments of the spool file `file`.
pub(in crate::spool) fn dir_of(file: &Path) -> PathBuf {
    let mut name = file.as_os_str().to_owned();
    name.push(DIR_SUFFIX);
    PathBuf::from(name)
}

/// What the directory of a spool file's segments is called after the file's name.
pub(in crate::spool) const DIR_SUFFIX: &str = ".segments";

const EXTENSION: &str = "seg";

pub(super) fn path_of(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:016x}.{EXTENSION}"))
}

/// The id of a segment file, from its name.
fn id_of(path: &Path) -> Option<u64> {
    if path.extension()? != EXTENSION {
        return None;
    }
    u64::from_str_radix(path.file_stem()?.to_str()?, 16).ok()
}

/// The segment files in `dir`, in order of their ids (none when it does not exist).
pub(in crate::spool) fn files_in(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut files = Vec::new();
    for entry in entries {
        let path = entry?.path();
        if let Some(id) = id_of(&path) {
            files.push((id, path));
        }
    }
    files.sort();
    Ok(files)
}

/// Where a record is: its segment and its offset there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::spool) struct At {
    pub segment: u64,
    pub offset: u64,
}

/// Reads the `len` bytes of a record at `at` among the segments in `dir`. A segment that is
/// missing or too short gives back what it has (nothing, or the record cut off): the record's
/// checksums then report its events damaged, as for any other damage to its bytes.
pub(in crate::spool) fn read(dir: &Path, at: At, len: u64) -> io::Result<Vec<u8>> {
    let file = match File::open(path_of(dir, at.segment)) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut buf = vec![0u8; len as usize];
    let filled = read_at_most(&file, &mut buf, at.offset)?;
    buf.truncate(filled);
    Ok(buf)
}

/// Reads into `buf` from `at` until it is full or the file ends; how many bytes were read.
pub(in crate::spool) fn read_at_most(f: &File, buf: &mut [u8], at: u64) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match f.read_at(&mut buf[filled..], at + filled as u64)? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

/// The segments of one spool file, open for appending.
#[derive(Debug)]
pub(in crate::spool) struct Segments {
    dir: PathBuf,
    current: u64,
    file: File,
    /// Where the next record goes in the current segment.
    end: u64,
    /// Where the current segment ended after the last commit taken into use.
    committed: u64,
    /// Whether anything was written since the last [`Segments::sync`].
    dirty: bool,
    /// The lowest segment id that may still exist.
    oldest: u64,
    /// The lowest segment a batch pointed into as of the last durable commit: those below it
    /// go after the next one.
    live_at_last_checkpoint: u64,
}

impl Segments {
    /// Opens the segments of the spool file `file`, whose last durable commit says the current
    /// segment is `current` and ends at `end`: that segment is cut back to `end` (what lies
    /// past it is of commits the file does not hold, and the log's frames are applied again
    /// there), and segments after it are removed.
    pub(super) fn open(file: &Path, current: u64, end: u64) -> io::Result<Segments> {
        let dir = dir_of(file);
        if !dir.exists() {
            std::fs::create_dir_all(&dir)?;
            super::sync_dir(file.parent().unwrap_or(Path::new(".")))?;
        }
        let files = files_in(&dir)?;
        for (_, path) in files.iter().filter(|(id, _)| *id > current) {
            std::fs::remove_file(path)?;
        }
        let oldest = files.first().map_or(current, |(id, _)| (*id).min(current));
        let file = open_segment(&dir, current)?;
        if file.metadata()?.len() > end {
            file.set_len(end)?;
        }
        // Always: a re-open in the same process finds what the last one appended in the page
        // cache, and redb may have made those commits durable as it closed (see `Drop`).
        file.sync_all()?;
        super::sync_dir(&dir)?;
        Ok(Segments {
            dir,
            current,
            file,
            end,
            committed: end,
            dirty: false,
            oldest,
            live_at_last_checkpoint: oldest,
        })
    }

    /// Appends a record; returns where it is. Not durable until [`Segments::sync`].
    pub(super) fn append(&mut self, record: &[u8]) -> io::Result<At> {
        if self.end >= SEGMENT_BYTES {
            self.roll()?;
        }
        #[cfg(test)]
        if tests::FAIL_APPEND.with(std::cell::Cell::get) {
            return Err(io::Error::other(
                "fault point: the segment cannot be written",
            ));
        }
        let at = At {
            segment: self.current,
            offset: self.end,
        };
        self.file.write_all_at(record, self.end)?;
        self.end += record.len() as u64;
        self.dirty = true;
        Ok(at)
    }

    /// Where the current segment ends: stored with each commit, as where the next open cuts
    /// it back to.
    pub(super) fn position(&self) -> (u64, u64) {
        (self.current, self.end)
    }

    /// The appends since the last commit taken into use are part of a commit now.
    pub(super) fn advance(&mut self) {
        self.committed = self.end;
    }

    /// Undoes the appends of a commit that failed: the segment is cut back to where the last
    /// commit left it, so that no salvage (which scans segments for records) ever takes the
    /// events of requests answered as failed. Best effort: the next open cuts it back too.
    pub(in crate::spool) fn retract(&mut self) {
        self.end = self.committed;
        if let Err(e) = self.file.set_len(self.committed) {
            tracing::warn!(error = %e, "a failed commit's record could not be cut from the spool's segment");
        }
    }

    /// Makes every append durable (before a checkpoint).
    pub(super) fn sync(&mut self) -> io::Result<()> {
        if self.dirty {
            self.file.sync_data()?;
            self.dirty = false;
        }
        Ok(())
    }

    /// After a durable commit in which the oldest batch points into segment `live` (`None`:
    /// no batch is in a segment): deletes the segments older than the oldest batch's as of this
    /// durable commit and the one before (see the module's doc), and begins a new segment when
    /// nothing is spooled in the current one and it is large enough to be worth giving back
    /// (the commit was taken into use, see [`Segments::advance`]).
    pub(super) fn checkpointed(&mut self, live: Option<u64>) {
        let below = self
            .live_at_last_checkpoint
            .min(live.unwrap_or(self.current));
        while self.oldest < below {
            match std::fs::remove_file(path_of(&self.dir, self.oldest)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(error = %e, segment = self.oldest, "a published segment of the spool could not be deleted; tried again at the next checkpoint");
                    break;
                }
            }
            self.oldest += 1;
        }
        if live.is_none() && self.end >= ROLL_UNUSED_BYTES && self.end == self.committed {
            if let Err(e) = self.roll() {
                tracing::warn!(error = %e, "a new segment of the spool could not be begun");
            }
        }
        // With no batch in a segment, none of the durable commit just made points into the
        // segment the roll above ended: it can go at the next checkpoint.
        self.live_at_last_checkpoint = live.unwrap_or(self.current);
    }

    /// Ends the current segment (made durable) and begins the next one.
    fn roll(&mut self) -> io::Result<()> {
        self.file.sync_data()?;
        let file = open_segment(&self.dir, self.current + 1)?;
        super::sync_dir(&self.dir)?;
        self.file = file;
        self.current += 1;
        self.end = 0;
        self.committed = 0;
        self.dirty = false;
        Ok(())
    }

    /// Reads a record this spool file's segments hold (to move it forward).
    pub(super) fn read(&self, at: At, len: u64) -> io::Result<Vec<u8>> {
        read(&self.dir, at, len)
    }

    /// The directory the segments are in.
    pub(super) fn dir(&self) -> &Path {
        &self.dir
    }
}

/// redb makes its pending non-durable commits durable when its database is closed (dropped),
/// even after a failed commit: those point into what was appended here since the last
/// checkpoint, so it must be durable before. The writer lets go of its segments before its
/// database (`Writer::let_go`, `Writer::close`); this sync is that.
impl Drop for Segments {
    fn drop(&mut self) {
        if let Err(e) = self.sync() {
            tracing::error!(error = %e, "the spool's segment could not be made durable as the spool closed: a power cut before the kernel writes it back may damage the newest events");
        }
    }
}

fn open_segment(dir: &Path, id: u64) -> io::Result<File> {
    File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path_of(dir, id))
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    thread_local! {
        /// Fault point: the next appends fail (as on a full disk).
        pub(in crate::spool) static FAIL_APPEND: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }

    fn segments(dir: &Path) -> Segments {
        Segments::open(&dir.join("spool.redb"), 0, 0).unwrap()
    }

    #[test]
    fn a_record_is_read_back_where_it_was_appended() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = segments(dir.path());
        let a = s.append(b"first").unwrap();
        let b = s.append(b"second record").unwrap();
        s.advance();
        assert_eq!(b.offset, 5);
        assert_eq!(s.read(a, 5).unwrap(), b"first");
        assert_eq!(s.read(b, 13).unwrap(), b"second record");
        let gone = At {
            segment: 9,
            offset: 0,
        };
        assert_eq!(
            s.read(gone, 4).unwrap(),
            b"",
            "a missing segment reads as nothing"
        );
        assert_eq!(s.read(b, 20).unwrap(), b"second record", "cut off");
    }

    #[test]
    fn open_cuts_the_segment_back_to_the_durable_end_and_removes_later_ones() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("spool.redb");
        {
            let mut s = Segments::open(&file, 0, 0).unwrap();
            s.append(&[1; 100]).unwrap();
            s.roll().unwrap();
            s.append(&[2; 100]).unwrap();
        }
        let s = Segments::open(&file, 0, 40).unwrap();
        let names: Vec<u64> = files_in(&dir_of(&file))
            .unwrap()
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        assert_eq!(names, [0]);
        assert_eq!(s.position(), (0, 40));
        let at = At {
            segment: 0,
            offset: 0,
        };
        assert_eq!(s.read(at, 100).unwrap().len(), 40);
    }

    #[test]
    fn a_failed_commit_leaves_nothing_of_its_record() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = segments(dir.path());
        s.append(b"kept").unwrap();
        s.advance();
        s.append(b"failed commit").unwrap();
        s.retract();
        assert_eq!(s.position(), (0, 4));
        let len = std::fs::metadata(path_of(&s.dir, 0)).unwrap().len();
        assert_eq!(len, 4);
        let at = s.append(b"next").unwrap();
        assert_eq!(at.offset, 4);
    }

    #[test]
    fn segments_go_one_checkpoint_after_no_batch_points_into_them() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = segments(dir.path());
        s.append(&[0; 10]).unwrap();
        s.roll().unwrap();
        s.append(&[1; 10]).unwrap();
        s.roll().unwrap();
        s.advance();
        let ids = |s: &Segments| -> Vec<u64> {
            files_in(&s.dir)
                .unwrap()
                .into_iter()
                .map(|(id, _)| id)
                .collect()
        };
        // The oldest batch is in segment 1: segment 0 goes at the checkpoint after.
        s.checkpointed(Some(1));
        assert_eq!(
            ids(&s),
            [0, 1, 2],
            "the durable commit before still pointed into 0"
        );
        s.checkpointed(Some(1));
        assert_eq!(ids(&s), [1, 2]);
        s.checkpointed(None);
        s.checkpointed(None);
        assert_eq!(ids(&s), [2]);
    }

    #[test]
    fn an_emptied_spool_gives_its_segment_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = segments(dir.path());
        s.append(&vec![7; ROLL_UNUSED_BYTES as usize]).unwrap();
        s.advance();
        s.checkpointed(Some(0));
        assert_eq!(s.position(), (0, ROLL_UNUSED_BYTES), "still spooled: kept");
        s.checkpointed(None);
        assert_eq!(
            s.position(),
            (1, 0),
            "nothing spooled in it: a new one begins"
        );
        s.checkpointed(None);
        assert!(!path_of(&s.dir, 0).exists());
    }
}
