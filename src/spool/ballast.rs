//! The ballast: a small file of allocated space beside the spool, given up when the disk is
//! full so that the spool can delete again.
//!
//! redb copies on write: even a commit that only deletes entries needs a few free pages for
//! the new versions of the pages it changes, before the old ones are freed. On a filesystem
//! filled to the last byte (by the spool, or by someone else while `spool.min_free_bytes` is
//! 0) the drain could then publish the backlog but never delete it, and the spool would stay
//! unwritable until an operator freed space. Whether a filled file happens to keep enough
//! free pages of its own is luck (one event more or less decides it). So the spool keeps
//! [`BALLAST_BYTES`] allocated in `spool.ballast` while there is room, removes it at the
//! first commit that fails for want of space (logged), and allocates it again once the
//! filesystem has room for it twice over. CockroachDB's "emergency ballast" is the same idea.

use std::path::{Path, PathBuf};

/// Bytes the ballast holds: room for many delete commits (each a handful of 4 KiB pages).
pub(super) const BALLAST_BYTES: u64 = 1024 * 1024;
/// Its file, in the spool directory.
pub(super) const BALLAST_FILE: &str = "spool.ballast";

/// The ballast of one spool directory.
#[derive(Debug)]
pub(super) struct Ballast {
    path: PathBuf,
}

impl Ballast {
    pub(super) fn new(dir: &Path) -> Ballast {
        Ballast {
            path: dir.join(BALLAST_FILE),
        }
    }

    /// Allocates the ballast if it is not there and the filesystem has room for it twice
    /// over (never the last free bytes). Best effort: a filesystem that cannot allocate it
    /// simply has none. Says whether the ballast is there now: when it is not, the filesystem
    /// is short of space, and the spool makes every commit durable in its file (see
    /// `store::wal`: a commit left to a checkpoint holds on to pages a full disk needs).
    pub(super) fn ensure(&self) -> bool {
        if self.path.exists() {
            return true;
        }
        let room = rustix::fs::statvfs(self.path.parent().unwrap_or(Path::new(".")))
            .map(|s| s.f_bavail.saturating_mul(s.f_frsize))
            .unwrap_or(0);
        if room < 2 * BALLAST_BYTES {
            return false;
        }
        let allocated = std::fs::File::create(&self.path).and_then(|f| {
            rustix::fs::fallocate(&f, rustix::fs::FallocateFlags::empty(), 0, BALLAST_BYTES)
                .map_err(std::io::Error::from)
        });
        if let Err(e) = allocated {
            tracing::debug!(error = %e, "no ballast beside the spool");
            let _ = std::fs::remove_file(&self.path);
            return false;
        }
        true
    }

    /// Gives the ballast's space back to the filesystem (the disk is full); says whether there
    /// was one.
    pub(super) fn release(&self) -> bool {
        let released = std::fs::remove_file(&self.path).is_ok();
        if released {
            tracing::warn!(bytes = BALLAST_BYTES, file = %self.path.display(), "the spool's filesystem is full: its ballast was removed so that published events can be deleted; it is allocated again once there is room");
        }
        released
    }
}

/// Whether a commit failed for want of space on the filesystem.
pub(super) fn is_disk_full(e: &redb::Error) -> bool {
    matches!(e, redb::Error::Io(io) if io.kind() == std::io::ErrorKind::StorageFull)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ballast_is_allocated_once_and_released_once() {
        let dir = tempfile::tempdir().unwrap();
        let ballast = Ballast::new(dir.path());
        ballast.ensure();
        let file = dir.path().join(BALLAST_FILE);
        let meta = std::fs::metadata(&file).expect("allocated");
        assert_eq!(meta.len(), BALLAST_BYTES);
        use std::os::unix::fs::MetadataExt;
        assert!(
            meta.blocks() * 512 >= BALLAST_BYTES,
            "allocated, not sparse"
        );
        ballast.ensure();
        assert!(ballast.release());
        assert!(!file.exists());
        assert!(!ballast.release(), "nothing left to release");
        let full = redb::Error::Io(std::io::Error::from_raw_os_error(28));
        assert!(is_disk_full(&full));
        assert!(!is_disk_full(&redb::Error::Io(std::io::Error::other("x"))));
    }
}
