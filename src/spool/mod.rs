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

mod damage;
mod inspect;
mod record;
pub mod salvage;
mod store;
mod unchanged;

use std::collections::VecDeque;
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
pub use inspect::{inspect, InspectError, Inspection};
pub use store::{AppendOutcome, Entry, OpenError, ReadEntry, Undecodable};

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
        let (db, counters, damaged) = damage::open_or_replace(&settings.dir)?;
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
        let writer = Writer {
            db: Some(db),
            dir: settings.dir.clone(),
            min_free_bytes: settings.min_free_bytes,
            low_space: None,
            shared: shared.clone(),
            rx,
            counters,
            limits,
            gauges: gauges.clone(),
            committed: committed_tx,
            broken: Outage::new(REOPEN_BACKOFF, MAX_REOPEN_BACKOFF),
            fresh_from: None,
            unmoved: None,
            sound_at: None,
        };
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

    /// The oldest `limit` entries that are not parked: what the drain can have sent before
    /// the last stop (for the start-up recovery check).
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
        read: impl FnOnce(&Database) -> Result<Vec<ReadEntry>, redb::Error> + Send + 'static,
    ) -> Result<Vec<ReadEntry>, SpoolError> {
        let db = self.db()?;
        let read =
            tokio::task::spawn_blocking(move || catch_unwind(AssertUnwindSafe(|| read(&db))))
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
    g.full
        .store(c.bytes + headroom(max_bytes) > max_bytes, Ordering::Relaxed);
}

/// The writer thread: takes everything queued, commits it in one transaction, answers all.
///
/// When a commit fails (disk full, an I/O error), redb refuses every later commit until the
/// database is closed and opened again. The writer does that by itself, with back-off, so the
/// spool heals once the fault is gone (space freed, disk back) without a restart; until then
/// every append is answered 503 and `/readyz` says not ready.
struct Writer {
    /// `None` only while being re-opened.
    db: Option<Arc<Database>>,
    dir: PathBuf,
    min_free_bytes: u64,
    /// While the filesystem has less than `min_free_bytes` free: the spool's size when that
    /// began. The spool may not grow past it (pages freed by deletes are reused inside the
    /// file, so it can take events again once the drain has published some).
    low_space: Option<u64>,
    /// The readers' handle to the same database, swapped on a re-open.
    shared: Arc<Shared>,
    rx: mpsc::Receiver<WriterRequest>,
    counters: store::Counters,
    limits: store::Limits,
    gauges: Arc<SpoolGauges>,
    committed: watch::Sender<Option<u64>>,
    /// Commits failing: since when, and when to try re-opening the file next.
    broken: Outage,
    /// Set while a fresh file is to replace a damaged one: the numbering to go on from.
    fresh_from: Option<(u64, u64)>,
    /// A damaged file that could not be moved aside yet (why it is damaged); retried.
    unmoved: Option<String>,
    /// When the whole-file check last found the file sound after a read failed on it: more
    /// failures within a minute are logged, not checked again (a check reads the whole file).
    sound_at: Option<std::time::Instant>,
}

/// Why one commit attempt failed.
enum Failure {
    /// The file is damaged (redb said so, or panicked): replace it.
    Damaged(String),
    Spool(SpoolError),
}

impl Failure {
    fn into_spool_error(self) -> SpoolError {
        match self {
            Failure::Damaged(_) => SpoolError::Damaged,
            Failure::Spool(e) => e,
        }
    }
}

/// First wait before re-opening a broken store; doubles up to [`MAX_REOPEN_BACKOFF`].
const REOPEN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_REOPEN_BACKOFF: Duration = Duration::from_secs(5);

impl Writer {
    fn run(mut self) {
        let mut batch: Vec<WriterRequest> = Vec::with_capacity(MAX_BATCH);
        let mut closing: Option<oneshot::Sender<()>> = None;
        while let Some(first) = self.rx.blocking_recv() {
            batch.push(first);
            self.gather(&mut batch);
            let result = self.commit(&batch);
            let committed = result.is_ok();
            let stored = settle(&mut batch, result, &mut closing);
            if committed {
                // Handed over before readers hear of the commit, so the drain finds them here.
                self.shared.recent.lock().unwrap().extend(stored);
                self.committed
                    .send_replace(self.counters.next_seq.checked_sub(1));
            }
            if let Some(reply) = closing.take() {
                self.close(batch, reply);
                return;
            }
        }
    }

    /// Adds whatever else is queued to `batch`, up to the batch limits.
    fn gather(&mut self, batch: &mut Vec<WriterRequest>) {
        let mut bytes = 0usize;
        while batch.len() < MAX_BATCH && bytes < MAX_BATCH_BYTES {
            let Ok(cmd) = self.rx.try_recv() else { break };
            if let WriterRequest::Append { encoded, .. } = &cmd {
                bytes += encoded.len();
            }
            batch.push(cmd);
        }
    }

    /// Commits the appends and deletes of `batch` in one transaction. When the file turns out
    /// to be damaged, it is replaced by a fresh one and the batch committed there: its appends
    /// are stored, its deletes were of entries the old file held (and are ignored).
    fn commit(&mut self, batch: &[WriterRequest]) -> Result<Vec<AppendOutcome>, SpoolError> {
        let mut appends = Vec::new();
        let mut deletes = Vec::new();
        // Last mark per entry wins, in the order the marks were sent.
        let mut park_marks = std::collections::BTreeMap::new();
        let mut damaged = None;
        for cmd in batch {
            match cmd {
                WriterRequest::Append {
                    encoded,
                    dedupe_key,
                    received_at_ms,
                    ..
                } => appends.push(store::Append {
                    encoded,
                    dedupe_key: dedupe_key.as_deref(),
                    received_at_ms: *received_at_ms,
                }),
                WriterRequest::Delete { seqs, .. } => deletes.extend_from_slice(seqs),
                WriterRequest::Park {
                    parked: p,
                    unparked: u,
                } => {
                    park_marks.extend(u.iter().map(|&seq| (seq, false)));
                    park_marks.extend(p.iter().map(|&seq| (seq, true)));
                }
                WriterRequest::Damaged { detail } => damaged = Some(detail.clone()),
                WriterRequest::Close { .. } => {}
            }
        }
        if let Some(detail) = damaged {
            tracing::debug!(%detail, "checking the spool file a read found damaged");
            self.check_after_failed_read(detail);
        }
        let (mut parked, mut unparked) = (Vec::new(), Vec::new());
        for (seq, is_parked) in park_marks {
            if is_parked {
                parked.push(seq)
            } else {
                unparked.push(seq)
            }
        }
        let marks = store::Marks {
            deleted: &deletes,
            parked: &parked,
            unparked: &unparked,
        };
        match self.commit_once(&appends, &marks) {
            Err(Failure::Damaged(detail)) => {
                tracing::debug!(%detail, "checking the spool file a commit found damaged");
                self.reopen_with(true);
                self.commit_once(&appends, &marks)
                    .map_err(Failure::into_spool_error)
            }
            other => other.map_err(Failure::into_spool_error),
        }
    }

    /// One attempt at committing; a panic inside redb is taken as damage, like `Corrupted`.
    fn commit_once(
        &mut self,
        appends: &[store::Append<'_>],
        marks: &store::Marks<'_>,
    ) -> Result<Vec<AppendOutcome>, Failure> {
        let db = self
            .healed_db()
            .ok_or(Failure::Spool(SpoolError::Unwritable))?;
        let limits = self.limits_now(!appends.is_empty());
        let now = unix_ms(SystemTime::now());
        let c = &mut self.counters;
        let result = catch_unwind(AssertUnwindSafe(|| {
            store::commit_batch(&db, c, &limits, now, appends, marks)
        }));
        match result {
            Ok(Ok(outcomes)) => {
                publish_gauges(&self.gauges, &self.counters, limits.max_bytes);
                if let Some(lasted) = self.broken.succeed(tokio::time::Instant::now()) {
                    self.gauges.broken.store(false, Ordering::Relaxed);
                    tracing::info!(
                        failing_seconds = lasted.as_secs_f64(),
                        "spool writable again"
                    );
                }
                Ok(outcomes)
            }
            Ok(Err(e)) => {
                // Nothing of this batch was written: every waiting request hears so and
                // answers non-2xx, so the sender keeps the event and retries.
                self.broke(&e);
                Err(Failure::Spool(SpoolError::from(e)))
            }
            Err(panic) => Err(Failure::Damaged(damage::panic_text(&*panic))),
        }
    }

    /// Moves the damaged file aside and goes on with a fresh one, numbering on from where the
    /// old one was (the drain's position stays valid); the moved file waits for salvage.
    fn replace(&mut self, detail: String) {
        self.let_go();
        // What the drain had from the old file in memory is salvaged with it, not published
        // from here as well (two publishers of one event would race the salvage's check).
        *self.shared.recent.lock().unwrap() = Recent::default();
        let damaged = damage::move_aside(&self.dir, DamageKind::FoundRunning, detail.clone());
        if damaged.moved_to.is_none() {
            // Opening the same path again would open the damaged file: stay unwritable and
            // try the move again.
            tracing::error!(detail = %damaged.detail, "the spool file is damaged and cannot be moved aside; requests are answered 503 until it can");
            self.unmoved = Some(detail);
            self.start_broken();
            return;
        }
        self.unmoved = None;
        self.fresh_from = Some((self.counters.next_seq, self.counters.dedupe_seq));
        if self.reopen_with(false).is_none() {
            tracing::error!("cannot start a fresh spool in place of the damaged one; requests are answered 503 while it is retried");
        }
        damage::report(&damaged, &self.dir.join(store::FILE_NAME));
        self.gauges.damaged_files.fetch_add(1, Ordering::Relaxed);
        self.shared.damage.send_modify(|v| v.push(damaged));
    }

    /// A read found the file damaged: check the whole file, unless a check passed within the
    /// last minute (then the failure is only logged: a check stalls the writer).
    fn check_after_failed_read(&mut self, detail: String) {
        if self
            .sound_at
            .is_some_and(|t| t.elapsed() < Duration::from_secs(60))
        {
            tracing::error!(%detail, "a spool read failed on a file redb's check found sound; checked again within a minute");
            return;
        }
        let damaged = self.gauges.damaged_files.load(Ordering::Relaxed);
        let reopened = self.reopen_with(true).is_some();
        if reopened && self.gauges.damaged_files.load(Ordering::Relaxed) == damaged {
            self.sound_at = Some(std::time::Instant::now());
        }
    }

    /// The limits for this batch: the spool's own, capped at its current size while the
    /// filesystem is short of space (checked once per batch with appends: one statvfs).
    fn limits_now(&mut self, appending: bool) -> store::Limits {
        if self.min_free_bytes == 0 {
            return self.limits;
        }
        let free = appending
            .then(|| rustix::fs::statvfs(&self.dir).ok())
            .flatten()
            .map(|s| s.f_bavail.saturating_mul(s.f_frsize));
        match (free, self.low_space) {
            (Some(free), None) if free < self.min_free_bytes => {
                tracing::warn!(free_bytes = free, min_free_bytes = self.min_free_bytes, "spool filesystem low on space: new events are refused (503) until the spool shrinks");
                self.low_space = Some(self.counters.bytes);
            }
            (Some(free), Some(_)) if free >= self.min_free_bytes => {
                tracing::info!(free_bytes = free, "spool filesystem has room again");
                self.low_space = None;
            }
            _ => {}
        }
        match self.low_space {
            Some(cap) => store::Limits {
                max_bytes: self.limits.max_bytes.min(cap),
                ..self.limits
            },
            None => self.limits,
        }
    }

    /// Records a failed commit; logged once when the failures start.
    fn broke(&mut self, e: &redb::Error) {
        if self.broken.is_down() {
            self.broken.fail(tokio::time::Instant::now());
            tracing::debug!(error = %crate::problem::with_causes(e), "spool commit failed again");
        } else {
            tracing::error!(error = %crate::problem::with_causes(e), "spool commit failed; requests are answered 503 until the spool can write again (it re-opens itself)");
            self.start_broken();
        }
    }

    /// Commits fail from now on until a re-open succeeds (tried with back-off).
    fn start_broken(&mut self) {
        if self.broken.is_down() {
            return;
        }
        self.gauges.broken.store(true, Ordering::Relaxed);
        self.broken.fail(tokio::time::Instant::now());
    }

    /// The database to commit to: as it is, or re-opened after a failure once its back-off
    /// is over. `None`: still broken, try later.
    fn healed_db(&mut self) -> Option<Arc<Database>> {
        if !self.broken.is_down() {
            return self.db.clone();
        }
        if self.broken.waiting(tokio::time::Instant::now()) {
            return None;
        }
        let db = match self.unmoved.clone() {
            Some(detail) => {
                self.replace(detail);
                self.db.clone()
            }
            None => self.reopen(),
        };
        if db.is_none() && self.broken.is_down() {
            self.broken.fail(tokio::time::Instant::now());
        }
        db
    }

    /// Closes the database, waiting briefly for readers to let go. A database redb panicked
    /// in may panic again as it closes: that is caught, the file is left behind either way.
    fn let_go(&mut self) {
        let shared = self.shared.db.write().unwrap().take();
        drop(shared);
        if let Some(db) = self.db.take() {
            let deadline = std::time::Instant::now() + Duration::from_secs(2);
            while Arc::strong_count(&db) > 1 && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(2));
            }
            let _ = catch_unwind(AssertUnwindSafe(move || drop(db)));
        }
    }

    /// Closes the database and opens it again (after a failed commit: redb then refuses
    /// commits until a re-open, with a `Corrupted` error about its allocator state, which is
    /// not damage: a full disk heals by this re-open).
    fn reopen(&mut self) -> Option<Arc<Database>> {
        self.reopen_with(false)
    }

    /// Closes the database and opens it again with `check`: redb reads the whole file first,
    /// and a file that fails the check (or makes redb panic) is damaged and replaced by a
    /// fresh one (see [`Writer::replace`]).
    fn reopen_with(&mut self, check: bool) -> Option<Arc<Database>> {
        self.let_go();
        match damage::open_checked(&self.dir, check) {
            damage::CheckedOpen::Sound(db, counters) => self.install(Arc::new(db), counters),
            damage::CheckedOpen::Damaged(detail) => {
                self.replace(detail);
                self.db.clone()
            }
            damage::CheckedOpen::Failed(e) => {
                tracing::debug!(error = %crate::problem::with_causes(&e), "spool not re-opened yet");
                // Without a database the writer must retry the re-open, even when it came
                // here for a check rather than after a failed commit (a full disk fails both).
                self.start_broken();
                None
            }
        }
    }

    /// Takes a (re-)opened database into use. A fresh file replacing a damaged one numbers on
    /// from it; a file whose counters went back (redb fell back to an earlier commit, its
    /// newest one damaged) is damage too: its newest events are in its bytes, for salvage.
    fn install(
        &mut self,
        db: Arc<Database>,
        mut counters: store::Counters,
    ) -> Option<Arc<Database>> {
        if let Some((next_seq, dedupe_seq)) = self.fresh_from {
            match store::continue_from(&db, next_seq, dedupe_seq) {
                Ok(c) => counters = c,
                Err(e) => {
                    tracing::debug!(error = %e, "fresh spool not numbered yet");
                    self.db = Some(db);
                    self.let_go();
                    self.start_broken();
                    return None;
                }
            }
            self.fresh_from = None;
        } else if counters.next_seq < self.counters.next_seq {
            self.db = Some(db);
            self.replace(format!(
                "the file went back to an earlier commit (next sequence number {} instead of {})",
                counters.next_seq, self.counters.next_seq
            ));
            return self.db.clone();
        }
        self.counters = counters;
        self.db = Some(db.clone());
        *self.shared.db.write().unwrap() = Some(db.clone());
        publish_gauges(&self.gauges, &self.counters, self.limits.max_bytes);
        Some(db)
    }

    /// Refuses whatever is still queued, then lets go of the database and answers `reply`.
    fn close(mut self, mut batch: Vec<WriterRequest>, reply: oneshot::Sender<()>) {
        self.rx.close();
        while let Ok(cmd) = self.rx.try_recv() {
            batch.push(cmd);
        }
        let mut late_close = None;
        settle(&mut batch, Err(SpoolError::Closed), &mut late_close);
        if let Some(late) = late_close {
            let _ = late.send(());
        }
        drop(self.db);
        let _ = reply.send(());
    }
}

/// Tells every command of a batch how it went: each append its outcome (in order) when the
/// commit succeeded, everyone the error when it did not. A close request is handed back
/// through `closing`, to be answered once the database is let go. Returns the entries stored.
fn settle(
    batch: &mut Vec<WriterRequest>,
    result: Result<Vec<AppendOutcome>, SpoolError>,
    closing: &mut Option<oneshot::Sender<()>>,
) -> Vec<Entry> {
    let (mut outcomes, failure) = match result {
        Ok(outcomes) => (outcomes.into_iter(), None),
        Err(e) => (Vec::new().into_iter(), Some(e)),
    };
    let mut stored = Vec::new();
    for cmd in batch.drain(..) {
        match cmd {
            WriterRequest::Append { reply, message, .. } => {
                let answer = match (&failure, outcomes.next()) {
                    (Some(e), _) => Err(e.clone()),
                    (None, Some(AppendOutcome::Stored { seq })) => {
                        stored.push(Entry {
                            seq,
                            message: *message,
                        });
                        Ok(Appended::Stored(seq))
                    }
                    (None, Some(AppendOutcome::Duplicate)) => Ok(Appended::Duplicate),
                    (None, Some(AppendOutcome::Full)) => Err(SpoolError::Full),
                    (None, None) => Err(SpoolError::LostOutcome),
                };
                let _ = reply.send(answer);
            }
            WriterRequest::Delete { reply, .. } => {
                if let Some(r) = reply {
                    let _ = r.send(failure.clone().map_or(Ok(()), Err));
                }
            }
            WriterRequest::Close { reply } => *closing = Some(reply),
            WriterRequest::Damaged { .. } | WriterRequest::Park { .. } => {}
        }
    }
    stored
}

/// Most entries, and most bytes of bodies, kept in memory for the drain. Small: while the
/// drain keeps up it takes them within a commit or two, and while it cannot (Kafka away) the
/// oldest are let go (the drain reads them back from disk), so memory stays flat.
const RECENT_MAX_ENTRIES: usize = 1024;
const RECENT_MAX_BYTES: usize = 4 * 1024 * 1024;

/// Entries committed lately, in sequence order and without gaps (every stored entry is added,
/// and only the oldest are let go). Whatever is here is on disk too: this only spares the
/// drain reading back and decoding what the writer just wrote.
#[derive(Default)]
struct Recent {
    entries: VecDeque<Entry>,
    bytes: usize,
}

impl Recent {
    fn extend(&mut self, stored: Vec<Entry>) {
        for e in stored {
            self.bytes += e.message.body.len();
            self.entries.push_back(e);
        }
        while self.entries.len() > RECENT_MAX_ENTRIES || self.bytes > RECENT_MAX_BYTES {
            self.pop();
        }
    }

    fn pop(&mut self) -> Option<Entry> {
        let e = self.entries.pop_front()?;
        self.bytes -= e.message.body.len();
        Some(e)
    }

    /// Takes up to `limit` entries after `after`, if the next one is here; `None` when the
    /// reader has to go to disk. Entries before it are let go (the drain reads forward).
    fn take_after(&mut self, after: Option<u64>, limit: usize) -> Option<Vec<Entry>> {
        let start = after.map_or(0, |s| s + 1);
        while self.entries.front().is_some_and(|e| e.seq < start) {
            self.pop();
        }
        if self.entries.front()?.seq != start {
            return None;
        }
        let n = limit.min(self.entries.len());
        Some((0..n).filter_map(|_| self.pop()).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn entry(seq: u64, body_len: usize) -> Entry {
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

    fn seqs(entries: Option<Vec<Entry>>) -> Option<Vec<u64>> {
        entries.map(|v| v.iter().map(|e| e.seq).collect())
    }

    #[tokio::test]
    async fn a_read_that_finds_the_file_damaged_moves_it_aside_and_goes_on_with_a_fresh_one() {
        let dir = tempfile::tempdir().unwrap();
        let spool = open_in(dir.path());
        let mut damage = spool.damage();
        for i in 0..10 {
            let mut m = entry(i, 10).message;
            m.event_id = format!("before-{i}");
            assert_eq!(spool.append(&m).await.unwrap(), Appended::Stored(i));
        }
        // The disk loses the page that holds an entry, and the next read meets it.
        let file = dir.path().join(store::FILE_NAME);
        let bytes = std::fs::read(&file).unwrap();
        let f = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
        let pages: std::collections::BTreeSet<u64> = (0..bytes.len() - 7)
            .filter(|&i| &bytes[i..i + 7] == b"before-")
            .map(|i| i as u64 & !4095)
            .collect();
        for page in pages {
            std::os::unix::fs::FileExt::write_all_at(&f, &[0u8; 4096], page).unwrap();
        }
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

    #[test]
    fn recent_entries_are_taken_in_order_or_read_from_disk() {
        let mut r = Recent::default();
        assert_eq!(seqs(r.take_after(None, 10)), None, "empty: read the disk");
        r.extend((5..10).map(|s| entry(s, 1)).collect());
        assert_eq!(
            seqs(r.take_after(Some(2), 10)),
            None,
            "3 and 4 are on disk only"
        );
        assert_eq!(seqs(r.take_after(Some(4), 2)), Some(vec![5, 6]));
        assert_eq!(
            seqs(r.take_after(Some(7), 10)),
            Some(vec![8, 9]),
            "7 let go"
        );
        assert_eq!(r.bytes, 0);
    }

    #[test]
    fn recent_entries_stay_within_their_bounds() {
        let mut r = Recent::default();
        r.extend(
            (0..RECENT_MAX_ENTRIES as u64 + 10)
                .map(|s| entry(s, 1))
                .collect(),
        );
        assert_eq!(r.entries.len(), RECENT_MAX_ENTRIES);
        assert_eq!(r.entries.front().map(|e| e.seq), Some(10));
        let big = RECENT_MAX_BYTES / 2 + 1;
        r.extend(vec![entry(10_000, big), entry(10_001, big)]);
        assert_eq!(r.entries.len(), 1);
        assert_eq!(r.bytes, big);
    }
}
