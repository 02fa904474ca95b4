//! The durable spool: where an event waits between "acknowledged" and "on Kafka".
//!
//! In `spooled` mode a request is answered 2xx only after its message is in the spool *and*
//! the spool's transaction is fsynced. One writer thread owns all writes and batches
//! whatever arrived while the previous commit was syncing (group commit): under load, many
//! requests share one fsync, so durability costs latency per batch, not per request.
//!
//! The spool is also the memory of what was already accepted (dedupe): the check and the
//! insert happen inside the same transaction, so two copies of one delivery racing each other
//! cannot both get in, and a restart forgets nothing.
//!
//! Readers (the [`drain`](crate::delivery::drain) that publishes, and the `spool` CLI) read
//! committed entries concurrently; they learn of new ones through [`Spool::subscribe`].

mod ballast;
mod damage;
mod ids;
mod inspect;
mod recent;
mod record;
pub mod salvage;
mod store;
mod unchanged;
mod writer;

use ballast::Ballast;
use ids::Ids;
use recent::Recent;
#[cfg(test)]
pub(crate) use store::damage_entry;
use writer::Writer;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use redb::Database;
use serde::Deserialize;
use tokio::sync::{mpsc, oneshot, watch};

use crate::dedupe::DedupeSettings;
use crate::event::{unix_ms, Message};
use crate::retry::Outage;
pub use damage::{mark_salvaged, unsalvaged, DamageKind, Damaged};
pub use inspect::{inspect, DamagedEntry, InspectError, Inspection};
pub use store::{AppendOutcome, Entry, OpenError, Quarantined, ReadEntry, Undecodable};

/// `[spool]`: the durable spool used by `ack = "spooled"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SpoolSettings {
    /// Directory of the spool database (created if missing).
    pub dir: PathBuf,
    /// Bytes of events the spool may hold; past that, new events get 503 + Retry-After.
    pub max_bytes: u64,
    /// Free space kept on the spool's filesystem: below it new events get 503 + Retry-After
    /// (deletes still go through), so a full disk is the exception, not the control.
    pub min_free_bytes: u64,
}

impl Default for SpoolSettings {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("data/spool"),
            max_bytes: 1024 * 1024 * 1024,
            min_free_bytes: 64 * 1024 * 1024,
        }
    }
}

/// Most requests committed in one transaction.
const MAX_BATCH: usize = 4096;
/// Most bytes committed in one transaction (a batch stops growing past this).
const MAX_BATCH_BYTES: usize = 32 * 1024 * 1024;

/// Why an append, a delete or a read did not make it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SpoolError {
    #[error("the spool is full")]
    Full,
    #[error("spool storage failed")]
    Storage(#[source] Arc<redb::Error>),
    #[error("the spool is closed")]
    Closed,
    #[error("the spool writer answered no outcome for an append")]
    LostOutcome,
    #[error("the spool cannot write now (disk full or an I/O error); it re-opens itself")]
    Unwritable,
    #[error("the spool file is damaged; the spool moves it aside and goes on with a fresh one")]
    Damaged,
}

impl From<redb::Error> for SpoolError {
    fn from(e: redb::Error) -> Self {
        SpoolError::Storage(Arc::new(e))
    }
}

/// What became of an accepted message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    /// Durably stored under this sequence number.
    Stored(u64),
    /// Its (source, event id) was accepted before, within the dedupe window.
    Duplicate,
}

/// Live figures, updated after every commit.
#[derive(Debug, Default)]
pub(crate) struct SpoolGauges {
    pub depth: AtomicU64,
    pub bytes: AtomicU64,
    pub full: AtomicBool,
    /// Commits fail (disk full, I/O error) until the store is re-opened successfully.
    pub broken: AtomicBool,
    pub dedupe_entries: AtomicU64,
    /// Spool files found damaged since the process started (moved aside, or missing).
    pub damaged_files: AtomicU64,
    /// Entries in the quarantine (damaged, kept aside).
    pub quarantined: AtomicU64,
}

/// A point-in-time copy of the spool's figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpoolStats {
    pub depth: u64,
    pub bytes: u64,
    pub max_bytes: u64,
    pub dedupe_entries: u64,
}

enum WriterRequest {
    Append {
        /// Kept to hand to the drain in memory once committed (see [`Recent`]).
        message: Box<Message>,
        encoded: Vec<u8>,
        dedupe_key: Option<String>,
        received_at_ms: u64,
        reply: oneshot::Sender<Result<Appended, SpoolError>>,
    },
    Delete {
        seqs: Vec<u64>,
        reply: Option<oneshot::Sender<Result<(), SpoolError>>>,
    },
    /// Entries parked, and parked ones sent again (see [`Spool::mark_parked`]).
    Park {
        parked: Vec<u64>,
        unparked: Vec<u64>,
    },
    /// Commit what came before, then stop the writer.
    Close { reply: oneshot::Sender<()> },
    /// A reader found the file damaged: move it aside and go on with a fresh one.
    Damaged { detail: String },
    /// Entries a read found damaged, to move to the quarantine (see [`Spool::quarantine`]).
    Quarantine { seqs: Vec<u64> },
    /// Damaged events of a salvaged file, to keep (see [`Spool::keep_damaged`]).
    KeepDamaged {
        file: PathBuf,
        parts: Vec<salvage::DamagedPart>,
        reply: oneshot::Sender<Result<(), SpoolError>>,
    },
}

/// The open database, shared by the handles until [`Spool::close`] takes it away.
struct Shared {
    db: RwLock<Option<Arc<Database>>>,
    /// What the writer committed lately, for the drain to take without reading it back.
    recent: Mutex<Recent>,
    /// Damaged files found so far (see [`damage`]); changes each time one is moved aside.
    damage: watch::Sender<Vec<Damaged>>,
    /// Fault point: the next read from the file panics, as redb does on a damaged page.
    #[cfg(test)]
    read_panics: AtomicBool,
}

/// Handle to the spool; cheap to clone. The writer thread ends when the last handle goes.
#[derive(Clone)]
pub struct Spool {
    tx: mpsc::Sender<WriterRequest>,
    shared: Arc<Shared>,
    gauges: Arc<SpoolGauges>,
    committed: watch::Receiver<Option<u64>>,
    max_bytes: u64,
    dir: PathBuf,
}

impl Spool {
    /// Opens the spool in `settings.dir` and starts its writer thread. A damaged spool file is
    /// moved aside and a fresh one started (see [`damage`]); [`Spool::damage`] tells of it.
    pub fn open(settings: &SpoolSettings, dedupe: &DedupeSettings) -> Result<Spool, OpenError> {
        let (opened, mut counters, damaged) = damage::open_or_replace(&settings.dir)?;
        let store::Opened { db, files } = opened;
        let ids = store::load_ids(&db).map_err(OpenError::Read)?;
        counters.dedupe_entries = ids.len() as u64;
        let db = Arc::new(db);
        let limits = store::Limits {
            max_bytes: settings.max_bytes,
            dedupe: dedupe.enabled.then_some(store::DedupeLimits {
                window: dedupe.window,
                max_entries: dedupe.max_entries,
            }),
        };
        let gauges = Arc::new(SpoolGauges::default());
        publish_gauges(&gauges, &counters, limits.max_bytes);
        gauges
            .damaged_files
            .store(damaged.is_some() as u64, Ordering::Relaxed);
        let last_committed = counters.next_seq.checked_sub(1);
        let (committed_tx, committed) = watch::channel(last_committed);
        let (tx, rx) = mpsc::channel(MAX_BATCH * 4);
        let shared = Arc::new(Shared {
            db: RwLock::new(Some(db.clone())),
            recent: Mutex::new(Recent::default()),
            damage: watch::Sender::new(damaged.into_iter().collect()),
            #[cfg(test)]
            read_panics: AtomicBool::new(false),
        });
        let writer = Writer::new(
            (db, files),
            settings,
            shared.clone(),
            rx,
            (counters, ids, limits),
            gauges.clone(),
            committed_tx,
        );
        std::thread::Builder::new()
            .name("spool-writer".into())
            .spawn(move || writer.run())
            .map_err(OpenError::Writer)?;
        Ok(Spool {
            tx,
            shared,
            gauges,
            committed,
            max_bytes: settings.max_bytes,
            dir: settings.dir.clone(),
        })
    }

    /// The damaged spool files found so far (at open, or while running); changes with each.
    pub fn damage(&self) -> watch::Receiver<Vec<Damaged>> {
        self.shared.damage.subscribe()
    }

    /// Tells the writer that a read found the file damaged; the caller's answer is
    /// [`SpoolError::Damaged`] (the writer moves the file aside and starts a fresh one).
    fn found_damaged(&self, detail: String) -> SpoolError {
        tracing::debug!(%detail, "a spool read found the file damaged");
        let _ = self.tx.try_send(WriterRequest::Damaged { detail });
        SpoolError::Damaged
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn db(&self) -> Result<Arc<Database>, SpoolError> {
        self.shared
            .db
            .read()
            .unwrap()
            .clone()
            .ok_or(SpoolError::Closed)
    }

    /// Commits everything queued before this call, stops the writer and closes the file, so
    /// another process (or a new instance) can open it at once. Later calls fail with
    /// [`SpoolError::Closed`].
    pub async fn close(&self) {
        let (reply, done) = oneshot::channel();
        if self.tx.send(WriterRequest::Close { reply }).await.is_ok() {
            let _ = done.await;
        }
        let Some(db) = self.shared.db.write().unwrap().take() else {
            return;
        };
        // Reads in progress hold the database briefly; the file closes with the last one.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while Arc::strong_count(&db) > 1 && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        drop(db);
    }

    /// Stores `msg` durably, unless its (source, event id) was accepted within the window.
    pub async fn append(&self, msg: &Message) -> Result<Appended, SpoolError> {
        let (reply, rx) = oneshot::channel();
        let cmd = WriterRequest::Append {
            message: Box::new(msg.clone()),
            encoded: msg.encode(),
            dedupe_key: Some(msg.event_key().spool_key()),
            received_at_ms: msg.received_at_ms,
            reply,
        };
        self.tx.send(cmd).await.map_err(|_| SpoolError::Closed)?;
        rx.await.map_err(|_| SpoolError::Closed)?
    }

    /// Removes published entries; durable once the returned future resolves.
    pub(crate) async fn delete(&self, seqs: Vec<u64>) -> Result<(), SpoolError> {
        if seqs.is_empty() {
            return Ok(());
        }
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(WriterRequest::Delete {
                seqs,
                reply: Some(reply),
            })
            .await
            .map_err(|_| SpoolError::Closed)?;
        rx.await.map_err(|_| SpoolError::Closed)?
    }

    /// Records entries the drain `parked` (Kafka refused them for good and no dead-letter
    /// topic took them) and parked entries it is sending again (`unparked`), so that the
    /// start-up recovery check leaves out what was never sent. Committed (and fsynced) with
    /// the next batch, not waited for; handed back when the writer's queue is full, to send
    /// again. A mark lost to a failed commit costs the check precision (an event published
    /// twice after a crash), never an event.
    pub(crate) fn mark_parked(
        &self,
        parked: Vec<u64>,
        unparked: Vec<u64>,
    ) -> Result<(), (Vec<u64>, Vec<u64>)> {
        if parked.is_empty() && unparked.is_empty() {
            return Ok(());
        }
        // Sent in the caller's order (not from tasks that could overtake each other): the
        // writer applies marks in the order they were sent, the last one for an entry winning.
        match self.tx.try_send(WriterRequest::Park { parked, unparked }) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(WriterRequest::Park { parked, unparked })) => {
                Err((parked, unparked))
            }
            Err(_) => Ok(()),
        }
    }

    /// Has the writer move entries a read found damaged (checksum or decode) to the
    /// quarantine, in its next commit, after reading them again itself (see
    /// `store::quarantine`). Handed back when the writer's queue is full, to send again.
    pub(crate) fn quarantine(&self, seqs: Vec<u64>) -> Result<(), Vec<u64>> {
        if seqs.is_empty() {
            return Ok(());
        }
        match self.tx.try_send(WriterRequest::Quarantine { seqs }) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(WriterRequest::Quarantine { seqs })) => Err(seqs),
            Err(_) => Ok(()),
        }
    }

    /// Keeps the events a salvage of `file` found damaged in the quarantine, with their bytes
    /// and where they were; durable once this returns.
    pub async fn keep_damaged(
        &self,
        file: &Path,
        parts: Vec<salvage::DamagedPart>,
    ) -> Result<(), SpoolError> {
        if parts.is_empty() {
            return Ok(());
        }
        let (reply, rx) = oneshot::channel();
        let file = file.to_path_buf();
        let cmd = WriterRequest::KeepDamaged { file, parts, reply };
        self.tx.send(cmd).await.map_err(|_| SpoolError::Closed)?;
        rx.await.map_err(|_| SpoolError::Closed)?
    }

    /// One entry, read from the file (a parked entry the drain let go of, to send again);
    /// `None` when it is no longer spooled.
    pub(crate) async fn read_one(&self, seq: u64) -> Result<Option<Entry>, SpoolError> {
        let first = self.first_on_disk(seq.checked_sub(1)).await?;
        Ok(first.filter(|e| e.seq == seq))
    }

    /// The first entry after `after` in the file, if it decodes.
    async fn first_on_disk(&self, after: Option<u64>) -> Result<Option<Entry>, SpoolError> {
        let entries = self.read_disk(after, 1).await?;
        Ok(entries.into_iter().next().and_then(Result::ok))
    }

    /// The parked entries, oldest first, at most `limit` (`parked list`).
    pub async fn parked(&self, limit: usize) -> Result<Vec<ReadEntry>, SpoolError> {
        self.read_file(move |db| store::read_parked(db, limit))
            .await
    }

    /// The oldest `limit` entries that are not parked, without their bodies: what the drain
    /// can have sent before the last stop (for the start-up recovery check, which looks them
    /// up on Kafka by topic, key and time).
    pub(crate) async fn recovery_candidates(
        &self,
        limit: usize,
    ) -> Result<Vec<ReadEntry>, SpoolError> {
        self.read_file(move |db| store::read_unparked(db, limit))
            .await
    }

    /// Up to `limit` committed entries after `after`, oldest first: from memory when the
    /// writer still holds the next one there (the drain keeping up), else from disk.
    pub(crate) async fn read_after(
        &self,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<ReadEntry>, SpoolError> {
        let in_memory = self.shared.recent.lock().unwrap().take_after(after, limit);
        if let Some(entries) = in_memory {
            return Ok(entries.into_iter().map(Ok).collect());
        }
        self.read_disk(after, limit).await
    }

    /// Reads entries from the file (see [`Spool::read_after`]); a damaged file found here is
    /// handed to the writer to replace.
    async fn read_disk(
        &self,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<ReadEntry>, SpoolError> {
        #[cfg(test)]
        let fault = self.shared.read_panics.swap(false, Ordering::SeqCst);
        self.read_file(move |db| {
            #[cfg(test)]
            if fault {
                panic!("fault point: a read met a damaged page");
            }
            store::read_after(db, after, limit)
        })
        .await
    }

    /// Runs `read` on the file in a blocking task. A panic inside redb is caught: it, like a
    /// `Corrupted` error, hands the file to the writer to check (and replace if damaged).
    async fn read_file(
        &self,
        read: impl FnOnce(store::Readable<'_>) -> Result<Vec<ReadEntry>, redb::Error> + Send + 'static,
    ) -> Result<Vec<ReadEntry>, SpoolError> {
        let db = self.db()?;
        let path = self.dir.join(store::FILE_NAME);
        let read = tokio::task::spawn_blocking(move || {
            let file = store::Readable {
                db: &*db,
                path: &path,
            };
            catch_unwind(AssertUnwindSafe(|| read(file)))
        })
        .await
        .map_err(|_| SpoolError::Closed)?;
        match read {
            Ok(Ok(entries)) => Ok(entries),
            Ok(Err(e)) if damage::is_damage(&e) => Err(self.found_damaged(e.to_string())),
            Ok(Err(e)) => Err(SpoolError::from(e)),
            Err(panic) => Err(self.found_damaged(damage::panic_text(&*panic))),
        }
    }

    /// The sequence number of the newest committed entry; changes after each commit.
    pub fn subscribe(&self) -> watch::Receiver<Option<u64>> {
        self.committed.clone()
    }

    pub fn stats(&self) -> SpoolStats {
        SpoolStats {
            depth: self.gauges.depth.load(Ordering::Relaxed),
            bytes: self.gauges.bytes.load(Ordering::Relaxed),
            max_bytes: self.max_bytes,
            dedupe_entries: self.gauges.dedupe_entries.load(Ordering::Relaxed),
        }
    }

    /// Whether the spool has no room left for a typical event, in its own limit or on its
    /// filesystem (readiness reports this).
    pub(crate) fn is_full(&self) -> bool {
        self.gauges.full.load(Ordering::Relaxed)
    }

    /// Whether the last commit failed (disk full, I/O error) and the spool has not healed yet.
    pub(crate) fn is_broken(&self) -> bool {
        self.gauges.broken.load(Ordering::Relaxed)
    }

    /// Spool files found damaged since the process started.
    pub(crate) fn damaged_files(&self) -> u64 {
        self.gauges.damaged_files.load(Ordering::Relaxed)
    }

    /// Entries moved to the quarantine (damaged on disk), in this spool file.
    pub(crate) fn quarantined(&self) -> u64 {
        self.gauges.quarantined.load(Ordering::Relaxed)
    }

    /// Age of the oldest entry, if any.
    pub(crate) async fn oldest_age(&self) -> Option<Duration> {
        let oldest = self.first_on_disk(None).await.ok()??;
        Some(oldest.message.age())
    }
}

/// Room a typical event needs; below it the spool reports itself full (not ready). A sixteenth
/// of a small spool, so a tiny one is not "full" as soon as it holds anything.
fn headroom(max_bytes: u64) -> u64 {
    (64 * 1024).min(max_bytes / 16)
}

fn publish_gauges(g: &SpoolGauges, c: &store::Counters, max_bytes: u64) {
    g.depth.store(c.depth, Ordering::Relaxed);
    g.bytes.store(c.bytes, Ordering::Relaxed);
    g.dedupe_entries.store(c.dedupe_entries, Ordering::Relaxed);
    g.quarantined.store(c.quarantined, Ordering::Relaxed);
    g.full
        .store(c.bytes + headroom(max_bytes) > max_bytes, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    pub(super) fn entry(seq: u64, body_len: usize) -> Entry {
        Entry {
            seq,
            message: Message {
                topic: "t".into(),
                key: Bytes::new(),
                source: "s".into(),
                slug: "e".into(),
                event_id: seq.to_string(),
                received_at_ms: 0,
                content_type: "application/json".into(),
                body: Bytes::from(vec![b'x'; body_len]),
                cloudevent: None,
                archive: None,
                trace: None,
            },
        }
    }

    /// A spool in `dir`, with no free-space reserve (tests write to any filesystem).
    fn open_in(dir: &Path) -> Spool {
        let settings = SpoolSettings {
            dir: dir.to_path_buf(),
            min_free_bytes: 0,
            ..SpoolSettings::default()
        };
        Spool::open(&settings, &DedupeSettings::default()).unwrap()
    }

    pub(super) fn seqs(entries: Option<Vec<Entry>>) -> Option<Vec<u64>> {
        entries.map(|v| v.iter().map(|e| e.seq).collect())
    }

    #[tokio::test]
    async fn a_read_that_finds_the_file_damaged_moves_it_aside_and_goes_on_with_a_fresh_one() {
        let dir = tempfile::tempdir().unwrap();
        let spool = open_in(dir.path());
        for i in 0..10 {
            let mut m = entry(i, 10).message;
            m.event_id = format!("before-{i}");
            assert_eq!(spool.append(&m).await.unwrap(), Appended::Stored(i));
        }
        // Closed and opened again: the close checkpoints, so the entries are in the file
        // itself (until a checkpoint they are in its write-ahead log).
        spool.close().await;
        let spool = open_in(dir.path());
        let mut damage = spool.damage();
        // The disk loses the pages of the B-tree (every page but redb's header: the entries
        // themselves are in segments), and the next read meets the damage.
        let file = dir.path().join(store::FILE_NAME);
        let len = std::fs::metadata(&file).unwrap().len();
        let f = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
        let zeros = vec![0u8; (len - 4096) as usize];
        std::os::unix::fs::FileExt::write_all_at(&f, &zeros, 4096).unwrap();
        spool.shared.read_panics.store(true, Ordering::SeqCst);
        assert!(matches!(
            spool.read_disk(None, 100).await,
            Err(SpoolError::Damaged)
        ));
        damage.changed().await.unwrap();
        let found = damage.borrow().clone();
        assert_eq!(found[0].kind, DamageKind::FoundRunning);
        assert_eq!(spool.damaged_files(), 1);
        // Numbering goes on, so the drain's position holds; the old entries wait for salvage.
        let mut m = entry(0, 10).message;
        m.event_id = "after".into();
        assert_eq!(spool.append(&m).await.unwrap(), Appended::Stored(10));
        let read = spool.read_disk(None, 100).await.unwrap();
        let ids: Vec<_> = read
            .into_iter()
            .map(|e| e.unwrap().message.event_id)
            .collect();
        assert_eq!(ids, ["after"]);
        assert_eq!(spool.stats().depth, 1);
        let moved = found[0].moved_to.clone().unwrap();
        assert!(moved.exists(), "kept for salvage");
        spool.close().await;
    }

    #[tokio::test]
    async fn a_read_that_fails_on_a_sound_file_leaves_it_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let spool = open_in(dir.path());
        assert_eq!(
            spool.append(&entry(0, 10).message).await.unwrap(),
            Appended::Stored(0)
        );
        spool.shared.read_panics.store(true, Ordering::SeqCst);
        assert!(spool.read_disk(None, 10).await.is_err());
        // The writer checks the whole file before it calls it damaged: this one is sound.
        assert_eq!(
            spool.append(&entry(1, 10).message).await.unwrap(),
            Appended::Stored(1)
        );
        assert_eq!(spool.read_disk(None, 10).await.unwrap().len(), 2);
        assert!(spool.damage().borrow().is_empty());
        assert_eq!(spool.damaged_files(), 0);
        spool.close().await;
    }
}
