//! A spool file opened so that it stays exactly as it is, for `spool stats` and salvage.
//!
//! redb recovers a file that was not closed cleanly (a SIGKILL) as it opens it for writing, and
//! its read-only open refuses such a file. So a file is opened read-only, and when redb would
//! have to recover it first, a copy beside it is opened (and recovered) instead: the original,
//! an operator's evidence or a file waiting for salvage, is never written to.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use redb::{Database, DatabaseError, ReadOnlyDatabase, ReadableDatabase};

use super::damage::panic_text;

/// The cache of a database opened this way: it is read once, front to back.
const CACHE_BYTES: usize = 16 * 1024 * 1024;

/// A spool file, or a recovered copy of it, open for reading.
pub(super) enum Unchanged {
    ReadOnly(ReadOnlyDatabase),
    /// The copy is deleted when this is dropped.
    Copy {
        db: Database,
        _copy: tempfile::NamedTempFile,
    },
}

/// Why a file could not be opened unchanged.
#[derive(Debug)]
pub(super) enum Unopened {
    /// Another process has it open (the bridge is running).
    InUse,
    /// The copy of a file needing recovery could not be made (no room beside it?).
    Copy(std::io::Error),
    /// redb refuses the file (or its recovered copy), or panics on it: it is damaged.
    Unreadable { recovered: bool, detail: String },
}

impl Unchanged {
    /// Opens `file` without changing it; `check` has redb verify the whole copy when one is
    /// needed (a read-only open cannot check).
    pub(super) fn open(file: &Path, check: bool) -> Result<Unchanged, Unopened> {
        let unreadable = |recovered, detail| Unopened::Unreadable { recovered, detail };
        let opened = catch_unwind(AssertUnwindSafe(|| {
            redb::Builder::new()
                .set_cache_size(CACHE_BYTES)
                .open_read_only(file)
        }));
        match opened {
            Ok(Ok(db)) => Ok(Unchanged::ReadOnly(db)),
            Ok(Err(DatabaseError::DatabaseAlreadyOpen)) => Err(Unopened::InUse),
            Ok(Err(DatabaseError::RepairAborted)) => Self::open_copy(file, check),
            Ok(Err(e)) => Err(unreadable(false, e.to_string())),
            Err(panic) => Err(unreadable(false, panic_text(&*panic))),
        }
    }

    /// Copies `file` beside itself and opens the copy for redb to recover.
    fn open_copy(file: &Path, check: bool) -> Result<Unchanged, Unopened> {
        let dir = file.parent().unwrap_or(Path::new("."));
        let copy = tempfile::Builder::new()
            .prefix(".spool-copy-")
            .tempfile_in(dir)
            .map_err(Unopened::Copy)?;
        std::fs::copy(file, copy.path()).map_err(Unopened::Copy)?;
        let opened = catch_unwind(AssertUnwindSafe(|| {
            Database::builder()
                .set_cache_size(CACHE_BYTES)
                .set_check_integrity_on_open(check)
                .open(copy.path())
        }));
        let detail = match opened {
            Ok(Ok(db)) => return Ok(Unchanged::Copy { db, _copy: copy }),
            Ok(Err(e)) => e.to_string(),
            Err(panic) => panic_text(&*panic),
        };
        Err(Unopened::Unreadable {
            recovered: true,
            detail,
        })
    }

    /// Whether redb had to recover the file (so a copy is what is open).
    pub(super) fn recovered(&self) -> bool {
        matches!(self, Unchanged::Copy { .. })
    }

    pub(super) fn db(&self) -> &dyn ReadableDatabase {
        match self {
            Unchanged::ReadOnly(db) => db,
            Unchanged::Copy { db, .. } => db,
        }
    }
}
