//! The spool's one writer: a thread that takes every request queued, commits them in one
//! redb transaction (group commit), and answers each; and heals the file it writes to.

use super::*;

/// The writer thread: takes everything queued, commits it in one transaction, answers all.
///
/// When a commit fails (disk full, an I/O error), redb refuses every later commit until the
/// database is closed and opened again. The writer does that by itself, with back-off, so the
/// spool heals once the fault is gone (space freed, disk back) without a restart; until then
/// every append is answered 503 and `/readyz` says not ready.
pub(super) struct Writer {
    /// `None` only while being re-opened.
    db: Option<Arc<Database>>,
    /// The file's write-ahead log and segments (see `store::wal`, `store::segment`); `None`
    /// with `db`.
    files: Option<store::Files>,
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
    /// The dedupe ids of the window (rebuilt from the file at each (re-)open).
    ids: Ids,
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
    /// Space given up when the disk is full, so deletes can go on (see [`ballast`]).
    ballast: Ballast,
    /// The spool has no ballast (a commit found the disk full, or there is no room for one):
    /// since when, to look again once a second. While it has none, or the filesystem is short
    /// of space otherwise (see [`Writer::short_of_space`]), every commit is durable in the file
    /// itself: pages a commit frees are reusable only after a durable commit, and one left to
    /// a checkpoint would hold on to them (see `store::wal`).
    tight: Option<std::time::Instant>,
    /// Free bytes of the filesystem, as last looked at (once per batch with appends).
    free: u64,
}

/// Free bytes below which every commit is durable in the file itself (see [`Writer::tight`]):
/// a checkpoint writes all that the commits since the last one changed, and on a nearly full
/// disk it must not fail (the commits it held could not be applied from the log again either,
/// for want of the same room).
const LOG_NEEDS_FREE: u64 = 256 * 1024 * 1024;

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
    pub(super) fn new(
        (db, files): (Arc<Database>, store::Files),
        settings: &SpoolSettings,
        shared: Arc<Shared>,
        rx: mpsc::Receiver<WriterRequest>,
        (counters, ids, limits): (store::Counters, Ids, store::Limits),
        gauges: Arc<SpoolGauges>,
        committed: watch::Sender<Option<u64>>,
    ) -> Writer {
        let ballast = Ballast::new(&settings.dir);
        let tight = (!ballast.ensure()).then(std::time::Instant::now);
        Writer {
            free: free_bytes(&settings.dir).unwrap_or(0),
            ballast,
            tight,
            db: Some(db),
            files: Some(files),
            dir: settings.dir.clone(),
            min_free_bytes: settings.min_free_bytes,
            low_space: None,
            shared,
            rx,
            counters,
            ids,
            limits,
            gauges,
            committed,
            broken: Outage::new(REOPEN_BACKOFF, MAX_REOPEN_BACKOFF),
            fresh_from: None,
            unmoved: None,
            sound_at: None,
        }
    }

    pub(super) fn run(mut self) {
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
        let mut quarantined = Vec::new();
        let mut kept = Vec::new();
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
                WriterRequest::Quarantine { seqs } => quarantined.extend_from_slice(seqs),
                WriterRequest::KeepDamaged { file, parts, .. } => {
                    kept.extend(parts.iter().map(|p| store::Kept {
                        seq: p.seq,
                        batch: p.batch,
                        reason: format!(
                            "{}; salvaged from {} (offset {})",
                            p.reason,
                            file.display(),
                            p.offset
                        ),
                        bytes: &p.bytes,
                    }))
                }
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
            quarantined: &quarantined,
            kept: &kept,
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
        let durable = self.short_of_space();
        let now = unix_ms(SystemTime::now());
        let Some(files) = self.files.as_mut() else {
            return Err(Failure::Spool(SpoolError::Unwritable));
        };
        let state = (&mut self.counters, &mut self.ids, files);
        let result = catch_unwind(AssertUnwindSafe(|| {
            store::commit_batch(&db, state, (&limits, durable), now, appends, marks)
        }));
        if !matches!(result, Ok(Ok(_))) {
            // Whatever failed (an error on the way, or a panic that skipped the store's own
            // undo), a frame this batch left in the log must not bring it back at the re-open,
            // nor its record in a segment be found by a salvage.
            if let Some(files) = self.files.as_mut() {
                files.retract();
            }
        }
        match result {
            Ok(Ok(outcomes)) => {
                publish_gauges(&self.gauges, &self.counters, limits.max_bytes);
                if let Some(lasted) = self.broken.succeed(tokio::time::Instant::now()) {
                    self.gauges.broken.store(false, Ordering::Relaxed);
                    tracing::info!(
                        failing_seconds = lasted.as_secs_f64(),
                        "spool writable again"
                    );
                    self.tight = (!self.ballast.ensure()).then(std::time::Instant::now);
                }
                Ok(outcomes)
            }
            Ok(Err(e)) => {
                // Nothing of this batch was written: every waiting request hears so and
                // answers non-2xx, so the sender keeps the event and retries.
                if ballast::is_disk_full(&e) {
                    self.ballast.release();
                    self.tight = Some(std::time::Instant::now());
                }
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
        let free = appending.then(|| free_bytes(&self.dir)).flatten();
        if let Some(free) = free {
            self.free = free;
        }
        if self.min_free_bytes == 0 {
            return self.limits;
        }
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

    /// Whether the filesystem is short of space (see [`Writer::tight`]): below
    /// [`LOG_NEEDS_FREE`] or `min_free_bytes`, or without a ballast (looked at again once a
    /// second, when the ballast is allocated if there is room for it).
    fn short_of_space(&mut self) -> bool {
        if let Some(since) = self.tight {
            if since.elapsed() >= Duration::from_secs(1) {
                self.tight = (!self.ballast.ensure()).then(std::time::Instant::now);
            }
        }
        self.tight.is_some() || self.low_space.is_some() || self.free < LOG_NEEDS_FREE
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
        self.files = None;
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
            damage::CheckedOpen::Sound(opened, counters) => self.install(opened, counters),
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
        opened: store::Opened,
        mut counters: store::Counters,
    ) -> Option<Arc<Database>> {
        let db = Arc::new(opened.db);
        self.files = Some(opened.files);
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
        }
        let ids = match store::load_ids(&*db) {
            Ok(ids) => ids,
            Err(e) => {
                tracing::debug!(error = %e, "dedupe ids not read back yet");
                self.db = Some(db);
                self.let_go();
                self.start_broken();
                return None;
            }
        };
        if counters.next_seq < self.counters.next_seq {
            self.db = Some(db);
            self.replace(format!(
                "the file went back to an earlier commit (next sequence number {} instead of {})",
                counters.next_seq, self.counters.next_seq
            ));
            return self.db.clone();
        }
        self.counters = store::Counters {
            dedupe_entries: ids.len() as u64,
            ..counters
        };
        self.ids = ids;
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
        // A clean stop leaves nothing for the next open to apply from the log.
        if let (Some(db), Some(files), false) =
            (&self.db, self.files.as_mut(), self.broken.is_down())
        {
            if let Err(e) = store::checkpoint(db, files) {
                tracing::warn!(error = %crate::problem::with_causes(&e), "spool not checkpointed at its close; the next start applies its write-ahead log");
            }
        }
        // The segments first: redb's close makes its pending commits durable, and those point
        // into them (see `store::Segments`'s `Drop`).
        drop(self.files.take());
        drop(self.db);
        let _ = reply.send(());
    }
}

/// Free bytes of the filesystem `dir` is on (for an unprivileged user).
fn free_bytes(dir: &Path) -> Option<u64> {
    let s = rustix::fs::statvfs(dir).ok()?;
    Some(s.f_bavail.saturating_mul(s.f_frsize))
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
            WriterRequest::KeepDamaged { reply, .. } => {
                let _ = reply.send(failure.clone().map_or(Ok(()), Err));
            }
            WriterRequest::Delete { reply, .. } => {
                if let Some(r) = reply {
                    let _ = r.send(failure.clone().map_or(Ok(()), Err));
                }
            }
            WriterRequest::Close { reply } => *closing = Some(reply),
            WriterRequest::Damaged { .. }
            | WriterRequest::Park { .. }
            | WriterRequest::Quarantine { .. } => {}
        }
    }
    stored
}
