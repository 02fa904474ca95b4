//! A record: several byte strings stored as one redb value.
//!
//! The spool writes one record per group commit (the events of the batch, and separately the
//! dedupe keys it added) instead of one B-tree entry per event: the B-tree work of a commit is
//! then a handful of inserts however many events it carries, and the drain's deletes remove a
//! whole batch at once. redb stores the value as it is; this is only its framing:
//! `count: u32 LE`, then `count` times `len: u32 LE` followed by `len` bytes.
//!
//! Hand-written rather than a serde format because the writer appends each event's bytes as it
//! admits it (no intermediate `Vec<Vec<u8>>`), and the reader takes the parts out as slices of
//! the stored value (no copy before each event's own decode).

/// Builds a record part by part.
#[derive(Debug)]
pub(super) struct RecordBuilder {
    buf: Vec<u8>,
    count: u32,
}

impl RecordBuilder {
    pub(super) fn new() -> RecordBuilder {
        RecordBuilder::with_capacity(0)
    }

    /// A builder with room for `parts_bytes` (the sum of [`RecordBuilder::cost`] of its parts).
    pub(super) fn with_capacity(parts_bytes: u64) -> RecordBuilder {
        let mut buf = Vec::with_capacity(Self::HEADER as usize + parts_bytes as usize);
        buf.extend_from_slice(&[0; 4]);
        RecordBuilder { buf, count: 0 }
    }

    /// Bytes a part of `len` bytes adds to the record.
    pub(super) const fn cost(len: usize) -> u64 {
        4 + len as u64
    }

    /// Bytes of a record with no parts.
    pub(super) const HEADER: u64 = 4;

    pub(super) fn push(&mut self, part: &[u8]) {
        let len = u32::try_from(part.len()).expect("a part is smaller than 4 GiB");
        self.buf.extend_from_slice(&len.to_le_bytes());
        self.buf.extend_from_slice(part);
        self.count += 1;
    }

    pub(super) fn count(&self) -> u32 {
        self.count
    }

    /// The finished record.
    pub(super) fn finish(mut self) -> Vec<u8> {
        self.buf[..4].copy_from_slice(&self.count.to_le_bytes());
        self.buf
    }
}

/// The number of parts a record says it holds (0 for a value too short to be a record).
pub(super) fn count(record: &[u8]) -> u32 {
    record
        .get(..4)
        .map_or(0, |b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
}

/// The parts of a record, in order: `count(record)` items, each `None` from the first part
/// whose framing is broken (a damaged value never panics, and never reads past its end).
pub(super) fn parts(record: &[u8]) -> impl Iterator<Item = Option<&[u8]>> {
    let mut rest = record.get(4..);
    (0..count(record)).map(move |_| {
        let r = rest.take()?;
        let len = u32::from_le_bytes(r.get(..4)?.try_into().ok()?) as usize;
        let part = r.get(4..4 + len)?;
        rest = r.get(4 + len..);
        Some(part)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_come_back_in_order_and_the_length_is_what_cost_says() {
        let mut b = RecordBuilder::new();
        for p in [&b"one"[..], b"", b"three"] {
            b.push(p);
        }
        assert_eq!(b.count(), 3);
        let r = b.finish();
        assert_eq!(
            r.len() as u64,
            RecordBuilder::HEADER + [3, 0, 5].map(RecordBuilder::cost).iter().sum::<u64>()
        );
        assert_eq!(count(&r), 3);
        let got: Vec<_> = parts(&r).collect();
        assert_eq!(got, [Some(&b"one"[..]), Some(b""), Some(b"three")]);
    }

    #[test]
    fn a_damaged_record_yields_none_from_the_break_on() {
        let mut b = RecordBuilder::new();
        b.push(b"first");
        b.push(b"second");
        let mut r = b.finish();
        r.truncate(r.len() - 2);
        let got: Vec<_> = parts(&r).collect();
        assert_eq!(got, [Some(&b"first"[..]), None]);
        assert_eq!(parts(&[1, 0]).count(), 0, "too short for a header");
        assert!(parts(&[9, 0, 0, 0]).all(|p| p.is_none()));
    }
}
