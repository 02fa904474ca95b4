//! Records that keep old segments, moved forward.
//!
//! A segment is deleted once it is older than the oldest batch's (see [`super::segment`]). So a
//! batch that stays while the rest is published (a parked event, waiting for a redrive) would
//! keep its segment and every later one, their published records included: the disk would
//! fill behind one event, and `spool_bytes` would not show it. At each checkpoint, the records
//! of batches in a segment older than the one before the current, where little is left
//! ([`SPARSE_BYTES`]), are copied to the current segment and pointed at there, in the
//! checkpoint's own durable commit (after the segments' fsync). Their old segment then goes like
//! any other. A backlog (Kafka away) is never copied: its segments are full of records still to
//! publish.

use super::*;

/// Bytes still spooled at or under which an old segment has its records moved forward.
const SPARSE_BYTES: u64 = segment::SEGMENT_BYTES / 8;

/// Most bytes of records one checkpoint moves, and most batches it looks at: a checkpoint stays
/// short, and the next one moves the rest.
const MOVE_BYTES: u64 = 4 * 1024 * 1024;
const LOOK_AT: usize = 4096;

impl Tables<'_> {
    /// Moves forward the records of batches in old segments little is left in (see the
    /// module's doc); whether it moved any. Only in a durable commit, after which the segments
    /// are fsynced: a crash before it leaves the records where they were, and their old segment
    /// is kept until two durable commits no longer point into it.
    pub(super) fn move_forward(&mut self, segments: &mut Segments) -> Result<bool, redb::Error> {
        let (current, _) = segments.position();
        let mut sparse = std::collections::HashSet::new();
        for item in self.live.range(..current.saturating_sub(1))? {
            let (segment, v) = item?;
            if v.value().1 <= SPARSE_BYTES {
                sparse.insert(segment.value());
            }
        }
        if sparse.is_empty() {
            return Ok(false);
        }
        // Batches are in sequence order, the oldest (those that stayed) first.
        let mut picked = Vec::new();
        let mut bytes = 0;
        for item in self.at.iter()?.take(LOOK_AT) {
            let (first, at) = item?;
            let (segment, offset) = at.value();
            if !sparse.contains(&segment) {
                continue;
            }
            let first = first.value();
            let len = self.index.get(first)?.map_or(0, |v| v.value().1);
            picked.push((first, segment::At { segment, offset }, len));
            bytes += len;
            if bytes >= MOVE_BYTES {
                break;
            }
        }
        let mut moved = false;
        for (first, from, len) in picked {
            let record = segments.read(from, len)?;
            // Cut short (its segment damaged): left where it is, for its reads to report.
            if record.len() as u64 != len {
                continue;
            }
            let to = segments.append(&record)?;
            self.at.insert(first, (to.segment, to.offset))?;
            self.live_removed(from.segment, len)?;
            self.live_added(to.segment, len)?;
            moved = true;
        }
        if moved {
            tracing::debug!(bytes, "spool records that kept old segments moved forward");
        }
        Ok(moved)
    }
}
