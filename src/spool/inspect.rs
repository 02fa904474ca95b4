//! `spool stats`: the spool's figures, read without changing the file.
//!
//! Opening the file for writing to count its entries would change it under the operator's feet
//! (redb recovers an unclean file as it opens it, and a recovery interrupted half way leaves it
//! flagged), so it is opened [unchanged](super::unchanged): read-only, or a recovered and
//! checked copy; the original is left exactly as it was found.
//!
//! Every entry is read back (and its checksum verified), so `verified: true` means the drain
//! can read the whole spool.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use super::damage::{self, panic_text};
use super::store::{self, Counters, FILE_NAME};
use super::unchanged::{Unchanged, Unopened};

/// Entries read back per step of the verification.
const VERIFY_STEP: usize = 1024;

/// What `spool stats` found.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Inspection {
    pub file: PathBuf,
    pub depth: u64,
    pub bytes: u64,
    pub dedupe_entries: u64,
    /// Receive time of the oldest entry (ms since the epoch).
    pub oldest_received_ms: Option<u64>,
    /// Whether every entry was read back whole.
    pub verified: bool,
    /// Entries that could not be decoded (the bridge moves damaged ones to the quarantine).
    pub undecodable: u64,
    /// The first [`LISTED`] of them: where, and why.
    pub undecodable_entries: Vec<DamagedEntry>,
    /// The file's format (`meta.format`; `None` for a file of before formats were written).
    pub format: Option<u64>,
    /// Events the write-ahead log holds that the file does not yet (a stop without a clean
    /// close): the bridge applies them at its next start. Not in `depth`.
    pub in_log: u64,
    /// Entries in the quarantine (damaged, kept aside with their bytes).
    pub quarantined: u64,
    /// The first [`LISTED`] of them.
    pub quarantine: Vec<super::store::Quarantined>,
    /// The file was not closed cleanly: a copy was repaired and checked instead.
    pub needed_recovery: bool,
    /// Why the file cannot be used, when it cannot: the bridge would move it aside on start.
    pub damage: Option<String>,
    /// Damaged files moved aside in the directory and not salvaged yet.
    pub unsalvaged: Vec<PathBuf>,
}

/// Entries listed one by one, at most (the counts are whole).
pub(super) const LISTED: usize = 1000;

/// An entry in the spool that does not read back.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DamagedEntry {
    pub seq: u64,
    pub reason: String,
}

/// Why the spool could not be inspected at all.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error("there is no spool file at {0}")]
    Missing(PathBuf),
    #[error("the spool {0} is in use by another process (is the bridge running?)")]
    InUse(PathBuf),
    #[error("cannot copy the spool to check it without changing it")]
    Copy(#[source] std::io::Error),
}

/// Inspects the spool in `dir` without changing its file.
pub fn inspect(dir: &Path) -> Result<Inspection, InspectError> {
    let file = dir.join(FILE_NAME);
    if !file.exists() {
        return Err(InspectError::Missing(file));
    }
    let mut found = Inspection {
        file: file.clone(),
        unsalvaged: damage::unsalvaged(dir),
        ..Inspection::default()
    };
    match Unchanged::open(&file, true) {
        Ok(opened) => {
            found.needed_recovery = opened.recovered();
            let stored = store::Readable {
                db: opened.db(),
                path: &file,
            };
            read_all(stored, &mut found);
            match store::pending_in_log(opened.db(), dir) {
                Ok(pending) => in_log(pending, &mut found),
                Err(e) => found.damage = Some(format!("cannot read the write-ahead log: {e}")),
            }
        }
        Err(Unopened::InUse) => return Err(InspectError::InUse(file)),
        Err(Unopened::Copy(e)) => return Err(InspectError::Copy(e)),
        Err(Unopened::Unreadable { recovered, detail }) => {
            found.needed_recovery = recovered;
            found.damage = Some(detail);
        }
    }
    Ok(found)
}

/// Counts what the write-ahead log holds for the next start, and lists its damaged events
/// with the file's.
fn in_log(pending: store::InLog, found: &mut Inspection) {
    found.in_log = pending.events;
    found.undecodable += pending.damaged.len() as u64;
    for seq in pending.damaged {
        if found.undecodable_entries.len() < LISTED {
            found.undecodable_entries.push(DamagedEntry {
                seq,
                reason: format!(
                    "in the write-ahead log: {}",
                    crate::event::DecodeError::Damaged
                ),
            });
        }
    }
}

/// Reads the counters and every entry back; a failure on the way is the file's damage.
fn read_all(file: store::Readable<'_>, found: &mut Inspection) {
    let read = catch_unwind(AssertUnwindSafe(|| verify(file, found)));
    match read {
        Ok(Ok(())) => found.verified = found.damage.is_none(),
        Ok(Err(e)) => found.damage = Some(e.to_string()),
        Err(panic) => found.damage = Some(panic_text(&*panic)),
    }
}

fn verify(file: store::Readable<'_>, found: &mut Inspection) -> Result<(), redb::Error> {
    let db = file.db;
    let Counters {
        depth,
        bytes,
        dedupe_entries,
        ..
    } = store::load_counters(db)?;
    (found.depth, found.bytes, found.dedupe_entries) = (depth, bytes, dedupe_entries);
    let mut after = None;
    let mut entries = 0u64;
    loop {
        let step = store::read_after(file, after, VERIFY_STEP)?;
        let Some(last) = step.last() else { break };
        after = Some(match last {
            Ok(e) => e.seq,
            Err(bad) => bad.seq,
        });
        for e in &step {
            entries += 1;
            match e {
                Ok(e) if found.oldest_received_ms.is_none() => {
                    found.oldest_received_ms = Some(e.message.received_at_ms)
                }
                Ok(_) => {}
                Err(bad) => {
                    found.undecodable += 1;
                    if found.undecodable_entries.len() < LISTED {
                        found.undecodable_entries.push(DamagedEntry {
                            seq: bad.seq,
                            reason: bad.source.to_string(),
                        });
                    }
                }
            }
        }
    }
    found.format = store::format(db)?;
    let quarantine = store::quarantined(db)?;
    found.quarantined = quarantine.len() as u64;
    found.quarantine = quarantine.into_iter().take(LISTED).collect();
    if entries != depth {
        found.damage = Some(format!(
            "the spool counts {depth} entries but {entries} could be read"
        ));
    }
    Ok(())
}
