//! A damaged spool file: told apart from a passing error, moved aside, never taken for a fresh
//! start.
//!
//! The spool is the only copy of events the bridge acknowledged and Kafka does not have yet.
//! When its file is damaged (a zeroed page, a truncated or emptied file, a flipped byte) the
//! wrong answers are all easy: exit and leave every spooled event stuck while the sender gives
//! up on the URL, start on an empty file as if nothing had been there, or keep answering 2xx
//! while every read fails. What the spool does instead:
//! - at open, redb checks the whole file (`set_check_integrity_on_open`), and a file it refuses
//!   as damaged (or panics on) is renamed `spool.redb.damaged-<unix ms>` beside it, with an
//!   error log line and a metric, and the spool starts on a fresh file at once;
//! - an empty file is moved aside the same way, and a missing file where [`MARKER`] says a spool
//!   lived is reported: neither is taken for a first start;
//! - while running, a read or commit that finds the file damaged does the same (see the writer
//!   in [`super`]), so new events keep going to a file that works;
//! - what the moved file still holds is [salvaged](super::salvage) and published again, by the
//!   bridge in the background or by `spool salvage FILE`.
//!
//! A panic inside redb is the same thing as a `Corrupted` error here: debug builds of redb
//! assert on what a damaged file makes it read, and release builds may hit an `unreachable!`.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::store::{self, Counters, OpenError, FILE_NAME};
use crate::event::unix_ms;

/// Written beside the spool file once it exists: a later start that finds no spool file (or an
/// empty one) knows a spool lived here and says so, instead of starting fresh in silence.
pub(super) const MARKER: &str = "spool.created";

/// Infix of a damaged file moved aside: `spool.redb.damaged-<unix ms>`.
pub(super) const DAMAGED_INFIX: &str = ".damaged-";
/// Suffix added once a moved file has been salvaged.
pub(super) const SALVAGED_SUFFIX: &str = ".salvaged";

/// Why the spool file was not used as it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DamageKind {
    /// redb refused to open the file as damaged, or panicked opening it.
    Unopenable,
    /// The file is there but empty.
    Empty,
    /// The file is gone, though a spool lived in this directory.
    Missing,
    /// A read or a commit found the file damaged while the bridge ran.
    FoundRunning,
}

impl DamageKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DamageKind::Unopenable => "unopenable",
            DamageKind::Empty => "empty",
            DamageKind::Missing => "missing",
            DamageKind::FoundRunning => "found_running",
        }
    }
}

/// A spool file found damaged: where it went (nowhere when missing), and why.
#[derive(Debug, Clone)]
pub struct Damaged {
    pub kind: DamageKind,
    /// The moved file, to salvage; `None` when there was no file to move.
    pub moved_to: Option<PathBuf>,
    pub detail: String,
}

/// Whether a redb error means the file is damaged (rather than, say, a full disk or a
/// permission, which the spool waits out).
pub(super) fn is_damage(e: &redb::Error) -> bool {
    match e {
        redb::Error::Corrupted(_) => true,
        redb::Error::Io(io) => is_damage_io(io),
        _ => false,
    }
}

fn is_damage_io(io: &std::io::Error) -> bool {
    matches!(
        io.kind(),
        std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::InvalidData
    )
}

/// What a panic said, for the log.
pub(super) fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    let text = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned());
    format!(
        "panic in the storage library: {}",
        text.as_deref().unwrap_or("(no message)")
    )
}

/// Opens the spool in `dir`, moving a damaged file aside and starting a fresh one in its place.
/// Returns the database, its counters and what was found damaged, if anything.
pub(super) fn open_or_replace(
    dir: &Path,
) -> Result<(store::Opened, Counters, Option<Damaged>), OpenError> {
    std::fs::create_dir_all(dir).map_err(|source| OpenError::CreateDir {
        path: dir.to_path_buf(),
        source,
    })?;
    let path = dir.join(FILE_NAME);
    let mut damaged = None;
    match std::fs::metadata(&path) {
        Ok(m) if m.len() == 0 => {
            damaged = Some(move_aside(
                dir,
                DamageKind::Empty,
                "the spool file is empty".into(),
            ))
        }
        Err(e)
            if e.kind() == std::io::ErrorKind::NotFound
                && (dir.join(MARKER).exists() || has_segments(dir)) =>
        {
            damaged = Some(missing(dir, &path))
        }
        _ => {}
    }
    if damaged.is_none() && path.exists() {
        match open_checked(dir, true) {
            CheckedOpen::Sound(opened, counters) => return Ok((opened, counters, None)),
            CheckedOpen::Damaged(detail) => {
                damaged = Some(move_aside(dir, DamageKind::Unopenable, detail))
            }
            CheckedOpen::Failed(e) => return Err(e),
        }
    }
    // A fresh file must not start on segments it does not know (it would cut them back).
    let stays = |d: &&Damaged| d.kind != DamageKind::Missing || has_segments(dir);
    if let Some(d) = damaged.as_ref().filter(stays) {
        if d.moved_to.is_none() {
            return Err(OpenError::Damaged {
                path,
                detail: d.detail.clone(),
            });
        }
    }
    let opened = store::open(dir, false)?;
    let counters = store::load_counters(&opened.db).map_err(OpenError::Read)?;
    mark_lived_here(dir);
    if let Some(d) = &damaged {
        report(d, &path);
    }
    Ok((opened, counters, damaged))
}

/// The spool file is gone: its events are in its segments, if they are still there. Those are
/// moved aside with an empty file in its place, which the salvage then scans with them (as it
/// does an emptied file's), so a fresh file neither takes them for its own nor cuts them back.
fn missing(dir: &Path, path: &Path) -> Damaged {
    let detail = format!("{} is gone, though a spool lived here", path.display());
    if !has_segments(dir) {
        return Damaged {
            kind: DamageKind::Missing,
            moved_to: None,
            detail,
        };
    }
    let detail = format!("{detail}; its segments are kept for the salvage");
    match std::fs::File::create(path) {
        Ok(_) => move_aside(dir, DamageKind::Missing, detail),
        Err(e) => Damaged {
            kind: DamageKind::Missing,
            moved_to: None,
            detail: format!("{detail}, but no file can be put in its place: {e}"),
        },
    }
}

/// Whether segments of the spool file in `dir` hold anything (see `store::segment`).
fn has_segments(dir: &Path) -> bool {
    let segments = store::segment::dir_of(&dir.join(FILE_NAME));
    let written = |p: &PathBuf| std::fs::metadata(p).is_ok_and(|m| m.len() > 0);
    store::segment::files_in(&segments).is_ok_and(|files| files.iter().any(|(_, p)| written(p)))
}

/// What opening the spool file came to.
pub(super) enum CheckedOpen {
    Sound(store::Opened, Counters),
    /// redb refuses the file as damaged, or panicked on it: why.
    Damaged(String),
    /// Any other failure (in use, a permission, a full disk): not the file's fault.
    Failed(OpenError),
}

/// Opens the spool in `dir` and reads its counters (`check`: redb verifies the whole file
/// first), telling a damaged file from any other failure; a panic inside redb is caught.
pub(super) fn open_checked(dir: &Path, check: bool) -> CheckedOpen {
    let opened = catch_unwind(AssertUnwindSafe(|| {
        let opened = store::open(dir, check)?;
        let counters = store::load_counters(&opened.db).map_err(OpenError::Read)?;
        Ok((opened, counters))
    }));
    match opened {
        Ok(Ok((opened, counters))) => CheckedOpen::Sound(opened, counters),
        Ok(Err(OpenError::Open { source, .. } | OpenError::Read(source))) if is_damage(&source) => {
            CheckedOpen::Damaged(source.to_string())
        }
        Ok(Err(e)) => CheckedOpen::Failed(e),
        Err(panic) => CheckedOpen::Damaged(panic_text(&*panic)),
    }
}

/// Renames the spool file aside (kept for salvage, never deleted). The renames are made
/// durable, with the fresh file's name, by the open of the fresh spool in the same directory
/// (it fsyncs the directory before the first commit it acknowledges, see
/// `store::wal::Wal::open`).
pub(super) fn move_aside(dir: &Path, kind: DamageKind, detail: String) -> Damaged {
    let from = dir.join(FILE_NAME);
    let to = dir.join(format!(
        "{FILE_NAME}{DAMAGED_INFIX}{}",
        unix_ms(SystemTime::now())
    ));
    let moved = std::fs::rename(&from, &to).and_then(|()| {
        move_beside(dir, &to).inspect_err(|_| {
            // Back in place, as found: the caller stays unwritable and tries again.
            if let Err(e) = std::fs::rename(&to, &from) {
                tracing::error!(error = %e, path = %to.display(), "cannot move the damaged spool file back after its write-ahead log could not follow it");
            }
        })
    });
    match moved {
        Ok(()) => Damaged {
            kind,
            moved_to: Some(to),
            detail,
        },
        Err(e) => Damaged {
            kind,
            moved_to: None,
            detail: format!("{detail}; it could not be moved aside: {e}"),
        },
    }
}

/// Moves the write-ahead log and the segments beside the damaged file moved to `to`: the log
/// holds the newest commits the file may not, and the segments its records of events, for the
/// salvage; the fresh file starts a log and segments of its own. A log that cannot follow
/// would be overwritten by the fresh file's, its commits lost: then the files moved are put
/// back, and the error returned.
fn move_beside(dir: &Path, to: &Path) -> std::io::Result<()> {
    let mut moved = Vec::new();
    let logs = store::wal::FILE_NAMES
        .iter()
        .map(|name| dir.join(name))
        .zip(logs_beside(to));
    let segments = (
        store::segment::dir_of(&dir.join(FILE_NAME)),
        store::segment::dir_of(to),
    );
    for (log, beside) in logs.chain([segments]) {
        #[cfg(test)]
        let renamed = match tests::FAIL_LOG_MOVE.with(std::cell::Cell::get) && !moved.is_empty() {
            true => Err(std::io::Error::other(
                "fault point: the log cannot be moved",
            )),
            false => std::fs::rename(&log, &beside),
        };
        #[cfg(not(test))]
        let renamed = std::fs::rename(&log, &beside);
        match renamed {
            Ok(()) => moved.push((log, beside)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                for (log, beside) in moved {
                    if let Err(e) = std::fs::rename(&beside, &log) {
                        tracing::error!(error = %e, path = %beside.display(), "cannot move a damaged spool's write-ahead log or segments back");
                    }
                }
                return Err(std::io::Error::new(
                    e.kind(),
                    format!(
                        "what it keeps beside it ({}) cannot follow it: {e}",
                        log.display()
                    ),
                ));
            }
        }
    }
    Ok(())
}

pub(super) fn report(d: &Damaged, path: &Path) {
    match &d.moved_to {
        Some(moved) => tracing::error!(
            damage = d.kind.as_str(),
            detail = %d.detail,
            moved_to = %moved.display(),
            "the spool file {} is damaged: it was moved aside and the bridge goes on with a fresh spool; what it still holds is salvaged and published in the background (or run `eduzz-kafka-bridge spool salvage {}` with the bridge stopped)",
            path.display(),
            moved.display(),
        ),
        None => tracing::error!(
            damage = d.kind.as_str(),
            detail = %d.detail,
            "the spool file {} is missing though a spool lived in this directory: events it held may be lost; the bridge goes on with a fresh spool (look for the file, e.g. a volume not mounted, and salvage it with `eduzz-kafka-bridge spool salvage FILE`)",
            path.display(),
        ),
    }
}

/// Leaves [`MARKER`] in `dir` (best effort: without it only the "missing" report is lost).
fn mark_lived_here(dir: &Path) {
    let marker = dir.join(MARKER);
    if !marker.exists() {
        let text = "A spool lives in this directory: if spool.redb is ever missing or empty, the bridge reports it.\n";
        if let Err(e) = std::fs::write(&marker, text) {
            tracing::warn!(error = %e, path = %marker.display(), "cannot write the spool marker");
        }
    }
}

/// Damaged files moved aside in `dir` and not salvaged yet, oldest first.
pub fn unsalvaged(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                n.contains(DAMAGED_INFIX)
                    && !n.ends_with(SALVAGED_SUFFIX)
                    && !n.ends_with(LOG_SUFFIX)
                    && !n.ends_with(store::segment::DIR_SUFFIX)
            })
        })
        .collect();
    files.sort();
    files
}

/// What a moved file's write-ahead log is called beside it.
const LOG_SUFFIX: &str = ".wal";

/// The write-ahead log's files moved aside with the damaged file `file` (see [`move_aside`]):
/// `<file>.spool-0.wal` and `<file>.spool-1.wal`.
pub(super) fn logs_beside(file: &Path) -> [PathBuf; 2] {
    store::wal::FILE_NAMES.map(|log| {
        let mut name = file.as_os_str().to_owned();
        name.push(".");
        name.push(log);
        PathBuf::from(name)
    })
}

/// Marks a moved file as salvaged (renamed with [`SALVAGED_SUFFIX`]; kept for an operator),
/// with its segments, if it has any.
pub fn mark_salvaged(file: &Path) -> std::io::Result<PathBuf> {
    let mut name = file.as_os_str().to_owned();
    name.push(SALVAGED_SUFFIX);
    let to = PathBuf::from(name);
    std::fs::rename(file, &to)?;
    let segments = store::segment::dir_of(file);
    if segments.exists() {
        std::fs::rename(&segments, store::segment::dir_of(&to))?;
    }
    Ok(to)
}

#[cfg(test)]
mod tests {
    use super::*;

    thread_local! {
        /// Fault point: the second file of the write-ahead log cannot be moved.
        pub(super) static FAIL_LOG_MOVE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }

    /// The spool's three files, each holding its own name.
    fn files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
        [
            FILE_NAME,
            store::wal::FILE_NAMES[0],
            store::wal::FILE_NAMES[1],
        ]
        .iter()
        .map(|name| (dir.join(name), name.as_bytes().to_vec()))
        .collect()
    }

    /// A damaged file whose log cannot follow it stays where it is, its log too: a fresh file
    /// there would write its own log over the only copy of the newest commits.
    #[test]
    fn a_file_whose_log_cannot_follow_it_is_not_moved_at_all() {
        let dir = tempfile::tempdir().unwrap();
        for (path, bytes) in files(dir.path()) {
            std::fs::write(path, bytes).unwrap();
        }
        FAIL_LOG_MOVE.with(|f| f.set(true));
        let stuck = move_aside(dir.path(), DamageKind::FoundRunning, "test".into());
        FAIL_LOG_MOVE.with(|f| f.set(false));
        assert_eq!(stuck.moved_to, None);
        assert!(stuck.detail.contains("cannot follow"), "{}", stuck.detail);
        for (path, bytes) in files(dir.path()) {
            assert_eq!(std::fs::read(&path).unwrap(), bytes, "{}", path.display());
        }
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            3,
            "nothing else"
        );

        let moved = move_aside(dir.path(), DamageKind::FoundRunning, "test".into());
        let to = moved.moved_to.expect("moved once the log can follow");
        let beside = logs_beside(&to);
        assert_eq!(std::fs::read(&to).unwrap(), FILE_NAME.as_bytes());
        for (log, name) in beside.iter().zip(store::wal::FILE_NAMES) {
            assert_eq!(std::fs::read(log).unwrap(), name.as_bytes());
        }
    }
}
