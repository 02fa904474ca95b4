//! Salvage: the events a damaged spool file still holds, read without trusting redb.
//!
//! A file redb refuses (truncated, a flipped header byte) or panics on (a zeroed page) still
//! holds most of its records byte for byte: redb stores values as they are, and each
//! [record](super::record) starts with a magic number and its first sequence number, and
//! carries a checksum for its header and for each event. So the file is scanned for records
//! directly, and every event whose checksum matches is taken.
//!
//! A scan also finds stale copies: pages redb freed (a deleted batch, an older version of a
//! page) keep their old bytes until reused. Where redb can still read the small index of
//! batches and the list of published entries, only the entries that index says are still
//! spooled are taken, and it tells how many could not be found (lost). Where it cannot, every
//! entry found is taken, once per sequence number: some may have been published already,
//! which the caller checks on Kafka (see `delivery::salvage`) — at least once, never lost.
//!
//! Records written before the format had a magic number (spools of earlier versions) are not
//! found by the scan.

use std::collections::{BTreeMap, HashSet};
use std::os::unix::fs::FileExt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use super::record::{self, Header, MAGIC_PREFIX};
use super::store::{self, Entry, Live};
use super::unchanged::Unchanged;

/// Bytes read per step of the scan.
const SCAN_CHUNK: usize = 1024 * 1024;
/// Longest part believed: a length above this is garbage that happened to pass as a header.
const MAX_PART: usize = 64 * 1024 * 1024;

/// Why a file could not be salvaged at all.
#[derive(Debug, thiserror::Error)]
pub enum SalvageError {
    #[error("cannot read {path}")]
    Read {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What a scan found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Scanned {
    /// Events handed over (each sequence number once).
    pub found: u64,
    /// Events whose bytes were found damaged and never found whole.
    pub damaged: u64,
    /// Whether the file's index of batches could be read (then only spooled events are taken).
    pub index_read: bool,
    /// With the index: events it lists as spooled that were not found (gone with the damage).
    pub lost: u64,
    /// Copies of events the index says were published or deleted, left out.
    pub stale: u64,
}

/// An event whose bytes a scan found damaged, and never whole: kept for the quarantine of the
/// live spool (see `store::quarantine`), never just counted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DamagedPart {
    pub seq: u64,
    /// First sequence number of the record it was found in.
    pub batch: u64,
    /// Where its bytes start in the file.
    pub offset: u64,
    pub reason: String,
    /// Its bytes as found (empty past [`KEEP_BYTES`] in all).
    pub bytes: Vec<u8>,
}

/// Bytes of damaged events a scan keeps in all; past it, only where they were and why.
const KEEP_BYTES: usize = 64 * 1024 * 1024;

/// Scans `file`, handing the events found to `each` in chunks of up to `chunk`, in file order;
/// `each` returns false to stop early.
pub fn scan(
    file: &Path,
    chunk: usize,
    each: impl FnMut(Vec<Entry>) -> bool,
) -> Result<Scanned, SalvageError> {
    scan_keeping_damage(file, chunk, each).map(|(scanned, _)| scanned)
}

/// [`scan`], and the events found damaged and never whole (in sequence order).
pub fn scan_keeping_damage(
    file: &Path,
    chunk: usize,
    mut each: impl FnMut(Vec<Entry>) -> bool,
) -> Result<(Scanned, Vec<DamagedPart>), SalvageError> {
    let read_err = |source| SalvageError::Read {
        path: file.to_path_buf(),
        source,
    };
    let live = read_index(file);
    let f = std::fs::File::open(file).map_err(read_err)?;
    let len = f.metadata().map_err(read_err)?.len();
    // The segments beside the file hold its records of events (see `store::segment`), and
    // the write-ahead log moved aside with it its newest commits, which the file itself may
    // not (see `store::wal`): scanned after it, the same way, so that a frame whose header is
    // damaged too still gives its events; only a log's retracted frames are passed over.
    let segments = store::segment::files_in(&store::segment::dir_of(file))
        .map_err(|source| SalvageError::Read {
            path: store::segment::dir_of(file),
            source,
        })?
        .into_iter()
        .map(|(_, path)| (path, false));
    let logs = super::damage::logs_beside(file).map(|path| (path, true));
    let mut beside = Vec::new();
    for (path, log) in segments.chain(logs) {
        match std::fs::File::open(&path) {
            Ok(f) => beside.push((f, path, log)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(SalvageError::Read { path, source }),
        }
    }
    let mut s = Scan {
        file: &f,
        len,
        log: store::wal::is_log_copy(file),
        live: live.as_ref(),
        seen: HashSet::new(),
        damaged: BTreeMap::new(),
        kept_bytes: 0,
        out: Vec::new(),
        stats: Scanned {
            index_read: live.is_some(),
            ..Scanned::default()
        },
    };
    if !s.scan_file(chunk, &mut each).map_err(read_err)? {
        return Ok(s.finish());
    }
    for (f, path, log) in &beside {
        let err = |source| SalvageError::Read {
            path: path.clone(),
            source,
        };
        s.file = f;
        s.len = f.metadata().map_err(err)?.len();
        s.log = *log;
        if !s.scan_file(chunk, &mut each).map_err(err)? {
            return Ok(s.finish());
        }
    }
    if !s.out.is_empty() {
        each(std::mem::take(&mut s.out));
    }
    Ok(s.finish())
}

/// The file's index of batches and published entries, if redb can still read them. The file
/// is opened [unchanged](super::unchanged): salvage never writes to what it salvages.
fn read_index(file: &Path) -> Option<Live> {
    let read = catch_unwind(AssertUnwindSafe(|| {
        let opened = Unchanged::open(file, false).ok()?;
        store::live(opened.db()).ok()
    }));
    read.ok().flatten()
}

struct Scan<'a> {
    file: &'a std::fs::File,
    len: u64,
    /// Whether `file` is a write-ahead log, whose retracted frames are passed over.
    log: bool,
    live: Option<&'a Live>,
    seen: HashSet<u64>,
    damaged: BTreeMap<u64, DamagedPart>,
    kept_bytes: usize,
    out: Vec<Entry>,
    stats: Scanned,
}

impl Scan<'_> {
    /// Scans the whole of `self.file` for records; `false` when `each` asked to stop.
    fn scan_file(
        &mut self,
        chunk: usize,
        each: &mut impl FnMut(Vec<Entry>) -> bool,
    ) -> std::io::Result<bool> {
        let mut buf = vec![0u8; SCAN_CHUNK + MAGIC_PREFIX.len()];
        let mut at = 0u64;
        while at < self.len {
            let n = store::segment::read_at_most(self.file, &mut buf, at)?;
            if n < MAGIC_PREFIX.len() {
                break;
            }
            for hit in memchr::memmem::find_iter(&buf[..n], &MAGIC_PREFIX) {
                self.record_at(at + hit as u64);
                if self.out.len() >= chunk && !each(std::mem::take(&mut self.out)) {
                    return Ok(false);
                }
            }
            // Overlap by the magic's length less one, so a magic across two chunks is found.
            at += (n - (MAGIC_PREFIX.len() - 1)) as u64;
        }
        Ok(true)
    }

    /// Reads the record whose magic is at `offset`, if it is one.
    fn record_at(&mut self, offset: u64) {
        if self.log && store::wal::retracted(self.file, offset) {
            return;
        }
        let mut head = [0u8; Header::V2_LEN];
        if self.file.read_exact_at(&mut head, offset).is_err() {
            return;
        }
        let Some(h) = Header::read(&head).filter(|h| h.checked && h.events) else {
            return;
        };
        let mut pos = offset + h.len as u64;
        for i in 0..u64::from(h.count) {
            let mut frame = [0u8; 8];
            if self.file.read_exact_at(&mut frame, pos).is_err() {
                return;
            }
            let (len, crc) = record::part_frame(frame);
            if len > MAX_PART || pos + 8 + len as u64 > self.len {
                return;
            }
            let mut part = vec![0u8; len];
            if self.file.read_exact_at(&mut part, pos + 8).is_err() {
                return;
            }
            let at = Found {
                seq: h.first + i,
                batch: h.first,
                offset: pos + 8,
            };
            pos += 8 + len as u64;
            self.part(at, &part, crc32fast::hash(&part) == crc, h.versioned);
        }
    }

    fn part(&mut self, at: Found, bytes: &[u8], intact: bool, versioned: bool) {
        let seq = at.seq;
        if self.seen.contains(&seq) {
            return;
        }
        if self.live.is_some_and(|l| !l.holds(seq)) {
            self.stats.stale += 1;
            return;
        }
        let decoded = match intact {
            true => store::decoder(versioned)(bytes),
            false => Err(crate::event::DecodeError::Damaged),
        };
        match decoded {
            Ok(message) => {
                self.seen.insert(seq);
                if let Some(gone) = self.damaged.remove(&seq) {
                    self.kept_bytes -= gone.bytes.len();
                }
                self.out.push(Entry { seq, message });
            }
            Err(why) if !self.damaged.contains_key(&seq) => {
                let room = self.kept_bytes + bytes.len() <= KEEP_BYTES;
                let bytes = if room { bytes.to_vec() } else { Vec::new() };
                self.kept_bytes += bytes.len();
                let part = DamagedPart {
                    seq,
                    batch: at.batch,
                    offset: at.offset,
                    reason: why.to_string(),
                    bytes,
                };
                self.damaged.insert(seq, part);
            }
            Err(_) => {}
        }
    }

    fn finish(mut self) -> (Scanned, Vec<DamagedPart>) {
        self.stats.found = self.seen.len() as u64;
        self.stats.damaged = self.damaged.len() as u64;
        if let Some(live) = self.live {
            // Damaged events are not lost: the quarantine keeps them.
            let kept = self.stats.found + self.stats.damaged;
            self.stats.lost = live.entries().saturating_sub(kept);
        }
        (self.stats, self.damaged.into_values().collect())
    }
}

/// Where a scan found an event.
#[derive(Debug, Clone, Copy)]
struct Found {
    seq: u64,
    batch: u64,
    offset: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dedupe::DedupeSettings;
    use crate::event::Message;
    use crate::spool::{Appended, DamageKind, Spool, SpoolSettings};
    use std::path::PathBuf;

    const EVENTS: usize = 600;

    fn settings(dir: &Path) -> SpoolSettings {
        SpoolSettings {
            dir: dir.to_path_buf(),
            min_free_bytes: 0,
            ..SpoolSettings::default()
        }
    }

    fn message(i: usize) -> Message {
        let mut m = crate::event::tests::sample();
        m.event_id = format!("ev-{i}");
        m.body = bytes::Bytes::from(format!(
            "{{\"id\":\"ev-{i}\",\"pad\":\"{}\"}}",
            "x".repeat(900)
        ));
        m
    }

    /// A spool of 20 events, one commit each, its file and log copied aside while it is open
    /// (as a kill -9 would leave them) as a damaged file and the logs moved with it.
    async fn moved_while_open() -> (tempfile::TempDir, PathBuf, [PathBuf; 2]) {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(&settings(dir.path()), &DedupeSettings::default()).unwrap();
        for i in 0..20 {
            let r = spool.append(&message(i)).await.unwrap();
            assert!(matches!(r, Appended::Stored(_)), "{r:?}");
        }
        let aside = tempfile::tempdir().unwrap();
        let file = aside.path().join("spool.redb.damaged-1");
        std::fs::copy(dir.path().join(store::FILE_NAME), &file).unwrap();
        let logs = super::super::damage::logs_beside(&file);
        for (name, log) in store::wal::FILE_NAMES.iter().zip(&logs) {
            std::fs::copy(dir.path().join(name), log).unwrap();
        }
        spool.close().await;
        (aside, file, logs)
    }

    /// Where each frame of the log at `path` starts (its magic), in file order.
    fn frame_starts(path: &Path) -> Vec<usize> {
        let bytes = std::fs::read(path).unwrap();
        memchr::memmem::find_iter(&bytes, b"EKBW").collect()
    }

    fn write_at(path: &Path, at: usize, bytes: &[u8]) {
        let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
        f.write_all_at(bytes, at as u64).unwrap();
    }

    /// A crash leaves the newest commits in the write-ahead log only: the salvage of the file
    /// moved aside reads them from the log moved with it.
    #[tokio::test]
    async fn the_log_moved_with_a_damaged_file_is_salvaged_with_it() {
        let (_aside, file, logs) = moved_while_open().await;
        let (found, stats) = scan_all(&file);
        assert_eq!(stats.found, 20, "{stats:?}");
        let want: HashSet<String> = (0..20).map(|i| format!("ev-{i}")).collect();
        assert_eq!(ids(&found), want);
        for log in &logs {
            std::fs::remove_file(log).unwrap();
        }
        let (_, without) = scan_all(&file);
        assert!(without.found < 20, "the file alone lacks them: {without:?}");
    }

    /// Two faults at once: the file is damaged, and so is the header of every frame of the
    /// log moved with it. Those frames were acknowledged, and their records still pass their
    /// checksums: every event is found. A retracted frame (its commit failed and its
    /// requests were answered as failed), with only its header zeroed as the version before
    /// left it, is passed over (this version zeroes its events record's header too, see
    /// `wal::retract`).
    #[tokio::test]
    async fn a_moved_log_gives_the_events_of_damaged_headers_and_not_of_retracted_ones() {
        let (_aside, file, logs) = moved_while_open().await;
        let only_in_log = {
            let kept: Vec<Vec<u8>> = logs.iter().map(|l| std::fs::read(l).unwrap()).collect();
            logs.iter().for_each(|l| std::fs::remove_file(l).unwrap());
            let in_file = ids(&scan_all(&file).0);
            for (log, bytes) in logs.iter().zip(kept) {
                std::fs::write(log, bytes).unwrap();
            }
            (0..20)
                .rev()
                .find(|i| !in_file.contains(&format!("ev-{i}")))
        };
        let only_in_log = only_in_log.expect("the file lacks the newest commits");
        for log in &logs {
            for at in frame_starts(log) {
                write_at(log, at + 20, &[0x5A]);
            }
        }
        let (found, stats) = scan_all(&file);
        let want: HashSet<String> = (0..20).map(|i| format!("ev-{i}")).collect();
        assert_eq!((ids(&found), stats.damaged), (want, 0), "{stats:?}");

        let needle = format!("\"id\":\"ev-{only_in_log}\"");
        let (log, at) = logs
            .iter()
            .find_map(|log| {
                let bytes = std::fs::read(log).unwrap();
                let event = memchr::memmem::find(&bytes, needle.as_bytes())?;
                let frame = frame_starts(log).into_iter().filter(|&f| f < event).max()?;
                Some((log, frame))
            })
            .expect("the event is in the log");
        write_at(log, at, &[0u8; 48]);
        let (found, stats) = scan_all(&file);
        let mut want: HashSet<String> = (0..20).map(|i| format!("ev-{i}")).collect();
        want.remove(&format!("ev-{only_in_log}"));
        assert_eq!((ids(&found), stats.damaged), (want, 0), "{stats:?}");
    }

    /// A spool of `EVENTS` events in commits of 20, the first 100 published; closed.
    async fn spool_with_events(dir: &Path) {
        let spool = Spool::open(&settings(dir), &DedupeSettings::default()).unwrap();
        for batch in 0..EVENTS / 20 {
            let appends = (0..20).map(|i| {
                let spool = spool.clone();
                async move { spool.append(&message(batch * 20 + i)).await }
            });
            for r in futures_util::future::join_all(appends).await {
                assert!(matches!(r, Ok(Appended::Stored(_))), "{r:?}");
            }
        }
        spool.delete((0..100).collect()).await.unwrap();
        spool.close().await;
    }

    fn file(dir: &Path) -> PathBuf {
        dir.join(store::FILE_NAME)
    }

    fn ids(found: &[Entry]) -> HashSet<String> {
        found.iter().map(|e| e.message.event_id.clone()).collect()
    }

    fn scan_all(path: &Path) -> (Vec<Entry>, Scanned) {
        let mut all = Vec::new();
        let stats = scan(path, 64, |chunk| {
            all.extend(chunk);
            true
        })
        .unwrap();
        (all, stats)
    }

    /// Opens the damaged spool: it must come up on a fresh file, say why, and take events.
    async fn reopen_damaged(dir: &Path, kind: DamageKind) -> PathBuf {
        let spool = Spool::open(&settings(dir), &DedupeSettings::default()).unwrap();
        let damage = spool.damage().borrow().clone();
        assert_eq!(damage.len(), 1, "{damage:?}");
        assert_eq!(damage[0].kind, kind, "{damage:?}");
        assert_eq!(spool.stats().depth, 0, "a fresh spool");
        assert!(matches!(
            spool.append(&message(9999)).await,
            Ok(Appended::Stored(_))
        ));
        spool.close().await;
        damage[0].moved_to.clone().expect("moved aside")
    }

    #[tokio::test]
    async fn a_whole_file_salvages_exactly_what_is_spooled() {
        let dir = tempfile::tempdir().unwrap();
        spool_with_events(dir.path()).await;
        let (found, stats) = scan_all(&file(dir.path()));
        assert!(stats.index_read);
        assert_eq!(
            (stats.found, stats.lost, stats.damaged),
            (500, 0, 0),
            "{stats:?}"
        );
        let expected: HashSet<String> = (100..EVENTS).map(|i| format!("ev-{i}")).collect();
        assert_eq!(ids(&found), expected);
        let e = found
            .iter()
            .find(|e| e.message.event_id == "ev-321")
            .unwrap();
        assert_eq!(e.message, message(321), "byte for byte");
    }

    #[tokio::test]
    async fn a_zeroed_page_is_moved_aside_and_the_rest_salvaged() {
        let dir = tempfile::tempdir().unwrap();
        spool_with_events(dir.path()).await;
        let path = file(dir.path());
        // The pages of the B-tree, as a disk that lost them would leave them (every page but
        // redb's header): the events are in the segments, moved aside with the file.
        let len = std::fs::metadata(&path).unwrap().len();
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(&vec![0u8; (len - 4096) as usize], 4096)
            .unwrap();
        drop(f);
        let moved = reopen_damaged(dir.path(), DamageKind::Unopenable).await;
        let (found, stats) = scan_all(&moved);
        // Without the index (redb cannot read it here) published events are found too, for
        // the Kafka check; every spooled one is.
        assert!(!stats.index_read, "{stats:?}");
        let found = ids(&found);
        let spooled = (100..EVENTS).filter(|i| found.contains(&format!("ev-{i}")));
        assert_eq!(spooled.count(), EVENTS - 100, "{stats:?}");
    }

    #[tokio::test]
    async fn truncated_files_are_moved_aside_and_salvaged() {
        for cut in [1u64, 4096, 0] {
            let dir = tempfile::tempdir().unwrap();
            spool_with_events(dir.path()).await;
            let path = file(dir.path());
            let len = std::fs::metadata(&path).unwrap().len();
            let keep = if cut == 0 { len / 2 } else { len - cut };
            std::fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .unwrap()
                .set_len(keep)
                .unwrap();
            let moved = reopen_damaged(dir.path(), DamageKind::Unopenable).await;
            let (_, stats) = scan_all(&moved);
            assert!(stats.found > 0, "cut {cut}: {stats:?}");
        }
    }

    #[tokio::test]
    async fn an_emptied_or_missing_file_is_reported_not_taken_for_a_fresh_start() {
        let dir = tempfile::tempdir().unwrap();
        spool_with_events(dir.path()).await;
        std::fs::OpenOptions::new()
            .write(true)
            .open(file(dir.path()))
            .unwrap()
            .set_len(0)
            .unwrap();
        let emptied = reopen_damaged(dir.path(), DamageKind::Empty).await;
        let (found, _) = scan_all(&emptied);
        assert_eq!(found.len(), EVENTS, "its segments hold every event");
        // Gone, with its segments still there (holding the one event taken after the move):
        // they are moved aside with an empty file in its place, for the salvage.
        std::fs::remove_file(file(dir.path())).unwrap();
        let spool = Spool::open(&settings(dir.path()), &DedupeSettings::default()).unwrap();
        let damage = spool.damage().borrow().clone();
        assert_eq!(damage.len(), 1);
        assert_eq!(damage[0].kind, DamageKind::Missing);
        let moved = damage[0].moved_to.clone().expect("its segments kept");
        let (found, _) = scan_all(&moved);
        assert_eq!(ids(&found), HashSet::from(["ev-9999".to_string()]));
        spool.close().await;
        // Gone with nothing beside it: reported.
        std::fs::remove_file(file(dir.path())).unwrap();
        std::fs::remove_dir_all(store::segment::dir_of(&file(dir.path()))).unwrap();
        let spool = Spool::open(&settings(dir.path()), &DedupeSettings::default()).unwrap();
        let damage = spool.damage().borrow().clone();
        assert_eq!(
            (damage[0].kind, damage[0].moved_to.is_none()),
            (DamageKind::Missing, true)
        );
        spool.close().await;
        let first = tempfile::tempdir().unwrap();
        let spool = Spool::open(
            &settings(&first.path().join("new")),
            &DedupeSettings::default(),
        )
        .unwrap();
        assert!(
            spool.damage().borrow().is_empty(),
            "a first start is not damage"
        );
        spool.close().await;
    }

    #[tokio::test]
    async fn a_flipped_header_byte_is_moved_aside_and_salvaged() {
        let dir = tempfile::tempdir().unwrap();
        spool_with_events(dir.path()).await;
        let path = file(dir.path());
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let mut b = [0u8; 1];
        f.read_exact_at(&mut b, 0).unwrap();
        f.write_all_at(&[b[0] ^ 0xff], 0).unwrap();
        drop(f);
        let moved = reopen_damaged(dir.path(), DamageKind::Unopenable).await;
        let (found, stats) = scan_all(&moved);
        assert_eq!(stats.found, found.len() as u64);
        assert!(found.len() >= 500, "{stats:?}");
    }
}
