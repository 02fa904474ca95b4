use super::*;
use bytes::Bytes;

use super::read::READ_MAX_BYTES;

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
        archive: None,
        trace: None,
    }
}

struct Store {
    _dir: tempfile::TempDir,
    db: Database,
    files: Files,
    /// The spool file (its segments are found by its name).
    path: std::path::PathBuf,
    c: Counters,
    ids: Ids,
    limits: Limits,
}

impl Store {
    /// The stored record of the batch starting at `first`, from its segment.
    fn record(&self, first: u64) -> Vec<u8> {
        let t = self.db.begin_read().unwrap();
        let (_, len) = t
            .open_table(BATCH_INDEX)
            .unwrap()
            .get(first)
            .unwrap()
            .unwrap()
            .value();
        let at = t.open_table(BATCH_AT).unwrap().get(first).unwrap();
        let (segment, offset) = at.expect("in a segment").value();
        let at = segment::At { segment, offset };
        segment::read(&segment::dir_of(&self.path), at, len).unwrap()
    }

    /// The spool file, for the reads.
    fn readable_file(&self) -> Readable<'_> {
        Readable {
            db: &self.db,
            path: &self.path,
        }
    }

    fn new(dedupe: Option<DedupeLimits>) -> Store {
        let dir = tempfile::tempdir().unwrap();
        let Opened { db, files } = open(dir.path(), false).unwrap();
        let c = load_counters(&db).unwrap();
        let ids = load_ids(&db).unwrap();
        let limits = Limits {
            max_bytes: u64::MAX,
            dedupe,
        };
        Store {
            path: dir.path().join(FILE_NAME),
            _dir: dir,
            db,
            files,
            c,
            ids,
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
            (&mut self.c, &mut self.ids, &mut self.files),
            (&self.limits, false),
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
        read_after(self.readable_file(), after, 100)
            .unwrap()
            .into_iter()
            .map(|e| e.unwrap())
            .map(|e| (e.seq, e.message.event_id))
            .collect()
    }
}

/// One read stops at the end of the record (group commit) in which [`READ_MAX_BYTES`] of
/// messages were read, whatever its limit in entries: large bodies are not read into memory
/// by the thousand, and no record is read twice.
#[test]
fn a_read_stops_after_the_record_that_crosses_its_byte_budget() {
    let mut s = Store::new(None);
    let big = |id: &str| {
        let mut m = message(id);
        m.body = Bytes::from(vec![b'x'; READ_MAX_BYTES * 2 / 5]);
        m.encode()
    };
    // Records of two, two, two and one large entries.
    for ids in [["a", "b"].as_slice(), &["c", "d"], &["e", "f"], &["g"]] {
        let encoded: Vec<_> = ids.iter().map(|id| big(id)).collect();
        let appends: Vec<_> = encoded
            .iter()
            .map(|e| Append {
                encoded: e,
                dedupe_key: None,
                received_at_ms: 1,
            })
            .collect();
        let marks = Marks::default();
        commit_batch(
            &s.db,
            (&mut s.c, &mut s.ids, &mut s.files),
            (&s.limits, false),
            1,
            &appends,
            &marks,
        )
        .unwrap();
    }
    let seqs = |after| -> Vec<u64> {
        let read = read_after(s.readable_file(), after, 1024).unwrap();
        read.into_iter().map(|e| e.unwrap().seq).collect()
    };
    assert_eq!(
        seqs(None),
        [0, 1, 2, 3],
        "the record that crossed it, whole"
    );
    assert_eq!(seqs(Some(1)), [2, 3, 4, 5], "from inside a record");
    assert_eq!(seqs(Some(3)), [4, 5, 6]);
    assert!(seqs(Some(6)).is_empty());
    assert_eq!(
        read_after(s.readable_file(), None, 3).unwrap().len(),
        3,
        "entries still bound it"
    );
}

/// The recovery check's candidates: the unparked entries, oldest first, with their topics,
/// ids and times but not their bodies.
#[test]
fn recovery_candidates_are_the_unparked_entries_without_their_bodies() {
    let mut s = Store::new(None);
    s.commit(&["a", "b", "c"], 7, &[]);
    let marks = Marks {
        parked: &[1],
        ..Marks::default()
    };
    commit_batch(
        &s.db,
        (&mut s.c, &mut s.ids, &mut s.files),
        (&s.limits, false),
        8,
        &[],
        &marks,
    )
    .unwrap();
    let read: Vec<Entry> = read_unparked(s.readable_file(), 10)
        .unwrap()
        .into_iter()
        .map(|e| e.unwrap())
        .collect();
    let seen: Vec<(u64, &str, u64, usize)> = read
        .iter()
        .map(|e| {
            (
                e.seq,
                e.message.event_id.as_str(),
                e.message.received_at_ms,
                e.message.body.len(),
            )
        })
        .collect();
    assert_eq!(seen, [(0, "a", 1_000, 0), (2, "c", 1_000, 0)]);
    assert!(
        !s.ids_after(None).is_empty(),
        "the drain still reads the bodies"
    );
    let full = read_after(s.readable_file(), None, 1)
        .unwrap()
        .remove(0)
        .unwrap();
    assert_eq!(full.message.body, message("a").body);
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
    assert_eq!(t.open_table(BATCH_AT).unwrap().iter().unwrap().count(), 2);
    assert_eq!(t.open_table(BATCHES).unwrap().iter().unwrap().count(), 0);
    drop(t);
    let full_bytes = s.c.bytes;
    // b and d published: d's batch goes at once, b is listed as gone.
    s.commit(&[], 1, &[1, 3, 3, 99]);
    assert_eq!((s.c.depth, s.c.next_seq), (2, 4));
    assert!(s.c.bytes < full_bytes && s.c.bytes > 0);
    assert_eq!(s.ids_after(None), [(0, "a".into()), (2, "c".into())]);
    assert_eq!(s.ids_after(Some(0)), [(2, "c".into())]);
    assert_eq!(
        read_after(s.readable_file(), None, 1).unwrap().len(),
        1,
        "limit"
    );
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
    drop((s.db, s.files));
    let Opened { db, files } = open(dir.path(), false).unwrap();
    assert_eq!(load_counters(&db).unwrap(), counters);
    let mut s = Store {
        c: counters,
        ids: Ids::default(),
        db,
        files,
        path: dir.path().join(FILE_NAME),
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
            let mut dedupe = txn.open_table(DEDUPE_V2).unwrap();
            let mut by_time = txn.open_table(DEDUPE_BY_TIME_V1).unwrap();
            let mut meta = txn.open_table(META).unwrap();
            for (seq, id) in [(7u64, "x"), (9, "y")] {
                // What the format-1 layout stored: the fields, without a layout version.
                let unversioned = &message(id).encode()[1..];
                events.insert(seq, unversioned).unwrap();
                let key = format!("eduzz\u{1f}{id}");
                dedupe.insert(key.as_str(), (1_000, seq)).unwrap();
                by_time.insert((1_000, seq), key.as_str()).unwrap();
            }
            meta.insert(NEXT_SEQ, 10).unwrap();
            meta.insert(DEDUPE_SEQ, 10).unwrap();
        }
        txn.commit().unwrap();
    }
    let dedupe = DedupeLimits {
        window: Duration::from_millis(100),
        max_entries: 100,
    };
    let mut s = Store::open_in(dir, Some(dedupe));
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

impl Store {
    /// The spool in `dir` as `open` leaves it, its counters and ids read back.
    fn open_in(dir: tempfile::TempDir, dedupe: Option<DedupeLimits>) -> Store {
        let Opened { db, files } = open(dir.path(), false).unwrap();
        Store {
            c: load_counters(&db).unwrap(),
            ids: load_ids(&db).unwrap(),
            db,
            files,
            path: dir.path().join(FILE_NAME),
            _dir: dir,
            limits: Limits {
                max_bytes: u64::MAX,
                dedupe,
            },
        }
    }

    /// Closes the file and opens it again, the ids read back from it.
    fn reopened(self) -> Store {
        let (dir, dedupe) = (self._dir, self.limits.dedupe);
        drop((self.db, self.files));
        Store::open_in(dir, dedupe)
    }
}

#[test]
fn ids_are_read_back_on_open_and_still_forgotten_by_batch() {
    let mut s = Store::new(Some(DedupeLimits {
        window: Duration::from_millis(100),
        max_entries: 1_000,
    }));
    s.commit(&["a", "b"], 1_000, &[]);
    s.commit(&["c"], 1_080, &[]);
    s.commit(&["a"], 1_150, &[]);
    let mut s = s.reopened();
    assert_eq!(
        s.ids.len(),
        2,
        "a (accepted again) and c; b went with its batch"
    );
    assert_eq!(s.c.dedupe_entries, 2);
    assert_eq!(
        s.commit(&["a", "c"], 1_160, &[]),
        [AppendOutcome::Duplicate; 2]
    );
    assert_eq!(
        s.commit(&["b"], 1_160, &[]),
        stored(4..5),
        "b left the window"
    );
    let mut s = s.reopened();
    assert_eq!(
        s.commit(&["a", "b"], 1_170, &[]),
        [AppendOutcome::Duplicate; 2]
    );
}

#[test]
fn a_format_2_spool_is_upgraded_on_open_and_its_ids_still_dedupe() {
    let dir = tempfile::tempdir().unwrap();
    {
        // What format 2 left: an unversioned events record, its keys' record, the index of
        // ids by key, and no format in meta.
        let db = Database::create(dir.path().join(FILE_NAME)).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut t = Tables::open(&txn).unwrap();
            let mut events = RecordBuilder::unversioned_events(0);
            events.push(&message("x").encode()[1..]);
            t.insert_batch(0, events).unwrap();
            let mut keys = RecordBuilder::keys(0);
            keys.push(b"eduzz\x1fx");
            t.dedupe_batches
                .insert((1_000, 0), keys.finish().as_slice())
                .unwrap();
            let mut index = txn.open_table(DEDUPE_V2).unwrap();
            index.insert("eduzz\u{1f}x", (1_000, 0)).unwrap();
            let mut meta = txn.open_table(META).unwrap();
            for (k, v) in [
                (NEXT_SEQ, 1),
                (DEDUPE_SEQ, 1),
                (DEPTH, 1),
                (DEDUPE_ENTRIES, 1),
            ] {
                meta.insert(k, v).unwrap();
            }
        }
        txn.commit().unwrap();
    }
    let dedupe = DedupeLimits {
        window: Duration::from_secs(60),
        max_entries: 100,
    };
    let mut s = Store::open_in(dir, Some(dedupe));
    assert_eq!(s.ids_after(None), [(0, "x".into())]);
    assert_eq!(s.commit(&["x"], 1_050, &[]), [AppendOutcome::Duplicate]);
    assert_eq!(s.commit(&["y"], 1_050, &[]), stored(1..2));
    let txn = s.db.begin_write().unwrap();
    assert!(!txn.list_tables().unwrap().any(|t| t.name() == "dedupe"));
    let meta = txn.open_table(META).unwrap();
    let format = meta.get(FORMAT_KEY).unwrap().map(|v| v.value());
    assert_eq!(format, Some(FORMAT));
}

#[test]
fn a_spool_of_a_newer_format_is_refused_and_left_as_it_is() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = open(dir.path(), false).unwrap().db;
        let txn = db.begin_write().unwrap();
        txn.open_table(META)
            .unwrap()
            .insert(FORMAT_KEY, FORMAT + 1)
            .unwrap();
        txn.commit().unwrap();
    }
    let err = open(dir.path(), false).expect_err("refused");
    assert!(
        matches!(err, OpenError::Newer { found, .. } if found == FORMAT + 1),
        "{err}"
    );
    assert!(err.to_string().contains("newer than this build"), "{err}");
    let db = Database::open(dir.path().join(FILE_NAME)).unwrap();
    let txn = db.begin_read().unwrap();
    let meta = txn.open_table(META).unwrap();
    let format = meta.get(FORMAT_KEY).unwrap().map(|v| v.value());
    assert_eq!(format, Some(FORMAT + 1));
}

impl Store {
    /// Rewrites the stored record of the batch starting at `first` through `damage` (see
    /// [`super::damage_record`]).
    fn damage_record(&mut self, first: u64, damage: impl FnOnce(&mut Vec<u8>)) {
        super::damage_record(&self.db, self._dir.path(), first, damage);
    }

    fn quarantine(&mut self, seqs: &[u64]) {
        commit_batch(
            &self.db,
            (&mut self.c, &mut self.ids, &mut self.files),
            (&self.limits, false),
            1,
            &[],
            &Marks {
                quarantined: seqs,
                ..Marks::default()
            },
        )
        .unwrap();
    }

    /// (seq, whether it reads back) of every spooled entry.
    fn readable(&self) -> Vec<(u64, bool)> {
        read_after(self.readable_file(), None, 100)
            .unwrap()
            .into_iter()
            .map(|e| match e {
                Ok(e) => (e.seq, true),
                Err(bad) => (bad.seq, false),
            })
            .collect()
    }
}

#[test]
fn a_damaged_entry_is_quarantined_with_its_bytes_and_its_neighbours_still_read() {
    let mut s = Store::new(None);
    s.commit(&["a", "b", "c"], 1, &[]);
    // One byte of b's body flipped: a and c still read, b is reported, never skipped.
    let b_at = memchr::memmem::find(&s.record(0), b"{\"id\":\"b\"}").unwrap();
    s.damage_record(0, |r| r[b_at + 2] ^= 0x20);
    assert_eq!(s.readable(), [(0, true), (1, false), (2, true)]);
    // Asking to quarantine an intact entry (or an unknown one) moves nothing.
    s.quarantine(&[0, 42]);
    assert_eq!((s.c.depth, s.c.quarantined), (3, 0));
    s.quarantine(&[1]);
    assert_eq!((s.c.depth, s.c.quarantined), (2, 1));
    assert_eq!(s.readable(), [(0, true), (2, true)]);
    let q = quarantined(&s.db).unwrap();
    assert_eq!(q.len(), 1);
    assert_eq!((q[0].seq, q[0].batch), (1, 0));
    assert!(q[0].reason.contains("checksum"), "{q:?}");
    let kept_len = message("b").encode().len() as u64;
    assert_eq!(q[0].bytes, kept_len, "the entry's bytes as stored");
    // Quarantined once: asked again, nothing changes; the rest publishes and the batch goes.
    s.quarantine(&[1]);
    assert_eq!(s.c.quarantined, 1);
    s.commit(&[], 1, &[0, 2]);
    assert_eq!((s.c.depth, s.c.bytes), (0, 0));
    assert_eq!(load_counters(&s.db).unwrap(), s.c, "counters are durable");
    assert_eq!(quarantined(&s.db).unwrap(), q, "kept after its batch went");
}

#[test]
fn a_record_whose_header_is_damaged_has_every_entry_reported_and_quarantined() {
    let mut s = Store::new(None);
    s.commit(&["a"], 1, &[]);
    s.commit(&["b", "c"], 1, &[]);
    s.commit(&["d"], 1, &[]);
    let whole = s.record(1).len() as u64;
    s.damage_record(1, |r| r[13] ^= 1);
    assert_eq!(
        s.readable(),
        [(0, true), (1, false), (2, false), (3, true)],
        "both entries of the record are reported"
    );
    s.quarantine(&[1, 2]);
    assert_eq!((s.c.depth, s.c.quarantined), (2, 2));
    assert_eq!(s.readable(), [(0, true), (3, true)]);
    let q = quarantined(&s.db).unwrap();
    assert_eq!(
        q.iter().map(|q| (q.seq, q.bytes)).collect::<Vec<_>>(),
        [(1, whole), (2, 0)],
        "the whole record once, with its first entry"
    );
    assert!(q[0].reason.contains("header"), "{q:?}");
}

#[test]
fn an_entry_of_an_unknown_layout_is_not_damage_and_stays() {
    let mut s = Store::new(None);
    s.commit(&["a"], 1, &[]);
    // A well-framed part whose layout byte is from a later version (its checksum matches).
    s.damage_record(0, |r| {
        let mut b = RecordBuilder::events(0);
        let mut part = message("a").encode();
        part[0] = 200;
        b.push(&part);
        *r = b.finish();
    });
    assert_eq!(s.readable(), [(0, false)]);
    s.quarantine(&[0]);
    assert_eq!((s.c.depth, s.c.quarantined), (1, 0));
}

/// The files as a crash would leave them: copied while the spool is open, so the copy of the
/// database holds its last durable commit only, and the log what was fsynced since.
fn crash_image(s: &Store) -> tempfile::TempDir {
    let copy = tempfile::tempdir().unwrap();
    for name in [FILE_NAME, wal::FILE_NAMES[0], wal::FILE_NAMES[1]] {
        std::fs::copy(s._dir.path().join(name), copy.path().join(name)).unwrap();
    }
    // The segments as the page cache has them (a process that crashed, not a power cut).
    let segments = segment::dir_of(&copy.path().join(FILE_NAME));
    std::fs::create_dir(&segments).unwrap();
    for (_, path) in segment::files_in(&segment::dir_of(&s.path)).unwrap() {
        std::fs::copy(&path, segments.join(path.file_name().unwrap())).unwrap();
    }
    copy
}

/// The file of the log that holds frames (in a spool that has not checkpointed since open).
fn log_with_frames(dir: &Path) -> std::path::PathBuf {
    let written = wal::FILE_NAMES
        .iter()
        .map(|n| dir.join(n))
        .filter(|p| std::fs::metadata(p).unwrap().len() > 0);
    let files: Vec<_> = written.collect();
    assert_eq!(files.len(), 1, "{files:?}");
    files[0].clone()
}

/// Dedupe on, with room for every id these tests commit.
fn an_hour_of_ids() -> Option<DedupeLimits> {
    Some(DedupeLimits {
        window: Duration::from_secs(3600),
        max_entries: 100,
    })
}

#[test]
fn commits_only_the_log_holds_are_applied_again_on_open() {
    let dedupe = an_hour_of_ids();
    let mut s = Store::new(dedupe);
    assert_eq!(s.commit(&["a", "b"], 1_000, &[]), stored(0..2));
    assert_eq!(s.commit(&["c"], 1_001, &[]), stored(2..3));
    let image = crash_image(&s);
    {
        let db = Database::open(image.path().join(FILE_NAME)).unwrap();
        assert_eq!(load_counters(&db).unwrap().next_seq, 0, "not in the file");
        let pending = pending_in_log(&db, image.path()).unwrap();
        assert_eq!(pending.events, 3, "what spool stats says");
        assert!(pending.damaged.is_empty());
    }
    let crashed = Store::open_in(image, dedupe);
    assert_eq!(crashed.c, s.c, "counters as committed");
    let mut crashed = crashed;
    assert_eq!(
        crashed.ids_after(None),
        [(0, "a".into()), (1, "b".into()), (2, "c".into())]
    );
    assert_eq!(
        crashed.commit(&["a", "c", "d"], 1_002, &[]),
        [
            AppendOutcome::Duplicate,
            AppendOutcome::Duplicate,
            AppendOutcome::Stored { seq: 3 }
        ],
        "the ids came back with the events"
    );

    // Deletes are not in the log: a crash forgets them (the recovery check finds those
    // entries on Kafka), and what was appended after them is still applied.
    s.commit(&[], 1_003, &[0]);
    s.commit(&["e"], 1_003, &[]);
    let again = Store::open_in(crash_image(&s), dedupe);
    let seqs: Vec<u64> = again.ids_after(None).iter().map(|e| e.0).collect();
    assert_eq!(seqs, [0, 1, 2, 3]);

    // A checkpoint holds everything: the log's frames are not applied twice.
    checkpoint(&s.db, &mut s.files).unwrap();
    let after = Store::open_in(crash_image(&s), dedupe);
    assert_eq!(after.c.next_seq, 4);
    assert_eq!(
        after.ids_after(None).len(),
        3,
        "the delete was checkpointed"
    );
}

#[test]
fn a_torn_frame_ends_what_is_applied_and_the_next_commit_goes_on_from_the_file() {
    let mut s = Store::new(None);
    s.commit(&["a"], 1, &[]);
    s.commit(&["b"], 1, &[]);
    let image = crash_image(&s);
    let log = log_with_frames(image.path());
    let mut bytes = std::fs::read(&log).unwrap();
    let last = bytes.iter().rposition(|&b| b != 0).unwrap();
    bytes[last] ^= 0xFF;
    std::fs::write(&log, &bytes).unwrap();
    let mut crashed = Store::open_in(image, None);
    assert_eq!(crashed.ids_after(None), [(0, "a".into())]);
    assert_eq!(crashed.commit(&["c"], 1, &[]), stored(1..2));
    let again = crashed.reopened();
    assert_eq!(again.ids_after(None), [(0, "a".into()), (1, "c".into())]);
}

/// Where the bytes of event `id` are in the crash image's log.
fn flip_in_log(image: &Path, id: &str) {
    let log = log_with_frames(image);
    let mut bytes = std::fs::read(&log).unwrap();
    let needle = format!("\"id\":\"{id}\"");
    let at = memchr::memmem::find(&bytes, needle.as_bytes()).expect("in the log");
    bytes[at + 3] ^= 0x10;
    std::fs::write(&log, &bytes).unwrap();
}

#[test]
fn a_damaged_commit_in_the_middle_of_the_log_is_applied_and_its_event_quarantined() {
    let mut s = Store::new(None);
    for id in ["a", "b", "c"] {
        s.commit(&[id], 1, &[]);
    }
    let image = crash_image(&s);
    flip_in_log(image.path(), "b");
    {
        let db = Database::open(image.path().join(FILE_NAME)).unwrap();
        let pending = pending_in_log(&db, image.path()).unwrap();
        assert_eq!(
            (pending.events, pending.damaged),
            (3, vec![1]),
            "spool verify"
        );
    }
    let mut crashed = Store::open_in(image, None);
    assert_eq!(crashed.readable(), [(0, true), (1, false), (2, true)]);
    crashed.quarantine(&[1]);
    assert_eq!(crashed.readable(), [(0, true), (2, true)]);
    let q = quarantined(&crashed.db).unwrap();
    assert_eq!(q.len(), 1);
    assert!(q[0].reason.contains("checksum"), "{q:?}");
}

/// A crash image of three commits whose second frame's header is damaged (the byte 20 before
/// its events record's magic): its log's path, and the bytes it holds.
fn crash_image_with_a_damaged_frame_header() -> (tempfile::TempDir, std::path::PathBuf, Vec<u8>) {
    let mut s = Store::new(None);
    for id in ["a", "b", "c"] {
        s.commit(&[id], 1, &[]);
    }
    let image = crash_image(&s);
    let log = log_with_frames(image.path());
    let mut bytes = std::fs::read(&log).unwrap();
    let magics: Vec<usize> = memchr::memmem::find_iter(&bytes, &record::MAGIC_V3).collect();
    bytes[magics[1] - 20] ^= 0xFF;
    std::fs::write(&log, &bytes).unwrap();
    (image, log, bytes)
}

#[test]
fn a_log_damaged_past_repair_is_copied_aside_for_the_salvage() {
    let (image, _, bytes) = crash_image_with_a_damaged_frame_header();
    let dir = image.path().to_path_buf();
    let crashed = Store::open_in(image, None);
    assert_eq!(crashed.ids_after(None), [(0, "a".into())]);
    let aside: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.contains(".wal.damaged-"))
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    let kept = std::fs::read(dir.join(&aside[0])).unwrap();
    assert_eq!(kept, bytes, "the log as it was found");
}

thread_local! {
    /// Fault point: copying a damaged log aside fails (as on a full disk).
    pub(super) static FAIL_LOG_COPY: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// When the damaged log cannot be copied aside, the open fails and changes nothing: the
/// commits past the damage are only in that log, and a checkpoint would let it be overwritten.
/// Once the copy can be made, the open goes on as usual.
#[test]
fn a_damaged_log_that_cannot_be_copied_aside_fails_the_open_and_changes_nothing() {
    let (image, log, bytes) = crash_image_with_a_damaged_frame_header();

    FAIL_LOG_COPY.with(|f| f.set(true));
    let refused = open(image.path(), false);
    FAIL_LOG_COPY.with(|f| f.set(false));
    let Err(refused) = refused else {
        panic!("the open fails")
    };
    let why = crate::problem::with_causes(&refused);
    assert!(why.contains("cannot be copied aside"), "{why}");
    assert_eq!(std::fs::read(&log).unwrap(), bytes, "the log as it was");
    let db = Database::open(image.path().join(FILE_NAME)).unwrap();
    assert_eq!(load_counters(&db).unwrap().next_seq, 0, "nothing applied");
    drop(db);

    let dir = image.path().to_path_buf();
    let opened = Store::open_in(image, None);
    assert_eq!(opened.ids_after(None), [(0, "a".into())]);
    let aside = std::fs::read_dir(&dir)
        .unwrap()
        .filter(|e| {
            let name = e.as_ref().unwrap().file_name();
            name.to_string_lossy().contains(".wal.damaged-")
        })
        .count();
    assert_eq!(aside, 1, "copied aside once it could be");
}

/// redb falls back to its previous durable commit when its newest one is found damaged at
/// open: the frames since that one are still in the log (generations alternate between its
/// two files), and nothing is lost. Emulated with the file of one checkpoint before and the
/// log as it is after the next.
#[test]
fn a_file_that_fell_back_one_checkpoint_is_made_whole_from_the_log() {
    let dedupe = an_hour_of_ids();
    let mut s = Store::new(dedupe);
    s.commit(&["a", "b"], 1_000, &[]);
    let earlier = crash_image(&s);
    s.commit(&["c"], 1_000, &[]);
    checkpoint(&s.db, &mut s.files).unwrap();
    s.commit(&["d"], 1_000, &[]);
    let now = crash_image(&s);
    std::fs::copy(earlier.path().join(FILE_NAME), now.path().join(FILE_NAME)).unwrap();
    let mut fell_back = Store::open_in(now, dedupe);
    let ids: Vec<String> = fell_back.ids_after(None).into_iter().map(|e| e.1).collect();
    assert_eq!(ids, ["a", "b", "c", "d"]);
    assert_eq!(fell_back.c.next_seq, 4);
    assert_eq!(
        fell_back.commit(&["c", "e"], 1_001, &[]),
        [AppendOutcome::Duplicate, AppendOutcome::Stored { seq: 4 }]
    );
    let again = fell_back.reopened();
    assert_eq!(again.ids_after(None).len(), 5, "and durable");
}

/// A power cut loses what the page cache held of the segments (they are fsynced at
/// checkpoints only): the segment is cut back to where the file's last durable commit says it
/// ends, or is missing altogether, and the log's frames write the acknowledged records again.
#[test]
fn a_power_cut_that_loses_the_segments_unsynced_bytes_loses_no_event() {
    let dedupe = an_hour_of_ids();
    let mut s = Store::new(dedupe);
    s.commit(&["a", "b"], 1_000, &[]);
    checkpoint(&s.db, &mut s.files).unwrap();
    s.commit(&["c"], 1_000, &[]);
    s.commit(&["d", "e"], 1_000, &[]);
    for lost in ["the tail", "the whole segment"] {
        let image = crash_image(&s);
        let segments = segment::files_in(&segment::dir_of(&image.path().join(FILE_NAME))).unwrap();
        let (_, path) = segments.last().unwrap();
        match lost {
            // Garbage where the unsynced records were: what a disk may hold after a cut.
            "the tail" => {
                let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
                let len = f.metadata().unwrap().len();
                std::os::unix::fs::FileExt::write_all_at(&f, &[0xA5; 64], len - 64).unwrap();
            }
            _ => std::fs::remove_file(path).unwrap(),
        }
        let reopened = Store::open_in(image, dedupe);
        match lost {
            "the tail" => {
                let ids: Vec<String> = reopened.ids_after(None).into_iter().map(|e| e.1).collect();
                assert_eq!(ids, ["a", "b", "c", "d", "e"]);
            }
            // The checkpointed record too: a power cut does not lose fsynced bytes, but a
            // missing segment reads as damage (reported, never skipped), not as no events.
            _ => assert_eq!(
                reopened.readable(),
                [(0, false), (1, false), (2, true), (3, true), (4, true)]
            ),
        }
    }
}

/// Published records leave the segments: a segment goes once older than the oldest batch's as of
/// two durable commits, and an emptied spool gives back the room of its current segment.
#[test]
fn published_segments_are_deleted_after_the_next_checkpoints() {
    let mut s = Store::new(None);
    // Each message holds its id twice (event id and body): records of about 600 KiB.
    let big = "x".repeat(300 * 1024);
    s.commit(&[&big, "b"], 1, &[]);
    s.commit(&[&format!("{big}2")], 1, &[]);
    checkpoint(&s.db, &mut s.files).unwrap();
    let files = |s: &Store| segment::files_in(&segment::dir_of(&s.path)).unwrap().len();
    assert_eq!(files(&s), 1);
    s.commit(&[], 1, &[0, 1, 2]);
    checkpoint(&s.db, &mut s.files).unwrap();
    assert_eq!(
        files(&s),
        2,
        "a new segment begun; the old one kept one checkpoint more"
    );
    checkpoint(&s.db, &mut s.files).unwrap();
    assert_eq!(files(&s), 1);
    assert_eq!(s.commit(&["c"], 1, &[]), stored(3..4));
    let again = s.reopened();
    assert_eq!(again.ids_after(None), [(3, "c".into())]);
}

/// A file of format 4 keeps its records in redb: read and published from there, while new
/// records go to segments; the upgrade moves nothing.
#[test]
fn a_format_4_batch_is_read_and_deleted_where_it_is() {
    let dir = tempfile::tempdir().unwrap();
    {
        let Opened { db, .. } = open(dir.path(), false).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut t = Tables::open(&txn).unwrap();
            let mut events = RecordBuilder::events(0);
            events.push(&message("old").encode());
            t.insert_batch(0, events).unwrap();
            let mut meta = txn.open_table(META).unwrap();
            for (k, v) in [(NEXT_SEQ, 1), (DEPTH, 1), (FORMAT_KEY, 4)] {
                meta.insert(k, v).unwrap();
            }
        }
        txn.commit().unwrap();
    }
    let mut s = Store::open_in(dir, None);
    assert_eq!(format(&s.db).unwrap(), Some(FORMAT));
    assert_eq!(s.commit(&["new"], 1, &[]), stored(1..2));
    assert_eq!(s.ids_after(None), [(0, "old".into()), (1, "new".into())]);
    s.commit(&[], 1, &[0]);
    let t = s.db.begin_read().unwrap();
    assert_eq!(t.open_table(BATCHES).unwrap().iter().unwrap().count(), 0);
    assert_eq!(t.open_table(BATCH_AT).unwrap().iter().unwrap().count(), 1);
    drop(t);
    assert_eq!(s.ids_after(None), [(1, "new".into())]);
}

/// A commit that fails leaves nothing of its record in the segment, for a salvage to find.
#[test]
fn a_failed_commit_is_cut_from_its_segment() {
    let mut s = Store::new(None);
    s.commit(&["a"], 1, &[]);
    let before = s.files.segments.position();
    segment::tests::FAIL_APPEND.with(|f| f.set(true));
    let encoded = message("b").encode();
    let append = Append {
        encoded: &encoded,
        dedupe_key: None,
        received_at_ms: 1,
    };
    let failed = commit_batch(
        &s.db,
        (&mut s.c, &mut s.ids, &mut s.files),
        (&s.limits, false),
        1,
        &[append],
        &Marks::default(),
    );
    segment::tests::FAIL_APPEND.with(|f| f.set(false));
    assert!(failed.is_err());
    s.files.retract();
    assert_eq!(s.files.segments.position(), before);
    assert_eq!(s.commit(&["c"], 1, &[]), stored(1..2));
    assert_eq!(s.ids_after(None), [(0, "a".into()), (1, "c".into())]);
}

/// A batch that stays (a parked event) while everything after it is published does not keep
/// every later segment: its record is moved forward at a checkpoint, and the old segments go.
#[test]
fn a_batch_that_stays_does_not_keep_the_segments_after_it() {
    let mut s = Store::new(None);
    s.commit(&["stays"], 1, &[]);
    let big = "x".repeat(300 * 1024);
    let mut seq = 1;
    for round in 0..12 {
        let ids: Vec<String> = (0..2).map(|i| format!("{big}{round}-{i}")).collect();
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        s.commit(&ids, 1, &[]);
        s.commit(&[], 1, &[seq, seq + 1]);
        seq += 2;
        checkpoint(&s.db, &mut s.files).unwrap();
    }
    let files = segment::files_in(&segment::dir_of(&s.path)).unwrap();
    let (current, _) = s.files.segments.position();
    assert!(current >= 6, "segments rolled: {current}");
    // The current one, the one before (never moved from), and those a checkpoint or two from
    // deletion: not one per round.
    assert!(files.len() <= 4, "old segments deleted: {files:?}");
    assert_eq!(s.ids_after(None), [(0, "stays".into())]);
    let again = s.reopened();
    assert_eq!(again.ids_after(None), [(0, "stays".into())], "and durable");
}
