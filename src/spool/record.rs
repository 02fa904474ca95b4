//! A record: several byte strings stored as one redb value, framed so that it can be found and
//! checked without redb.
//!
//! The spool writes one record per group commit (the events of the batch, and separately the
//! dedupe keys it added) instead of one B-tree entry per event: the B-tree work of a commit is
//! then a handful of inserts however many events it carries, and the drain's deletes remove a
//! whole batch at once. redb stores the value as it is; this is only its framing.
//!
//! Format 3 (written since spool format 3, see `store`): as format 2 under its own magic, and
//! each part of an events record starts with its message's layout version (see
//! [`crate::event::Message::encode`]), so a reader never guesses a layout from where the bytes
//! end.
//!
//! Format 2 (written since the salvage work, still read):
//! `magic: 4 bytes`, `first: u64 LE` (the sequence number of the first part), `count: u32 LE`,
//! `crc32(magic..count): u32 LE`, then `count` times `len: u32 LE`, `crc32(part): u32 LE` and
//! `len` bytes. The magic, the sequence number and the checksums are for the day redb cannot
//! read its own file (a zeroed page, a truncated file): [`super::salvage`] then scans the raw
//! bytes for records, and a checksum tells a record from the garbage around it.
//!
//! Format 1 (earlier spools, still read): `count: u32 LE`, then `count` times `len: u32 LE`
//! and `len` bytes. The magic read as a little-endian count would be over 3.8 billion parts,
//! which no format-1 record holds, so the two never meet.
//!
//! Hand-written rather than a serde format because the writer appends each event's bytes as it
//! admits it (no intermediate `Vec<Vec<u8>>`), and the reader takes the parts out as slices of
//! the stored value (no copy before each event's own decode).

/// What every magic starts with; its last byte says what the record holds.
pub(super) const MAGIC_PREFIX: [u8; 3] = [0xB7, 0x1D, 0x5C];
/// Opens a format-2 record of events (parts without a layout version). Read as a format-1
/// count it is 0xE25C_1DB7.
pub(super) const MAGIC: [u8; 4] = [0xB7, 0x1D, 0x5C, 0xE2];
/// Opens a record of dedupe keys (a salvage scan looks for events only).
pub(super) const MAGIC_KEYS: [u8; 4] = [0xB7, 0x1D, 0x5C, 0xE3];
/// Opens a format-3 record of events: each part starts with its message's layout version.
pub(super) const MAGIC_V3: [u8; 4] = [0xB7, 0x1D, 0x5C, 0xE4];

/// The parts of a record after its header: where they start, and whether they carry checksums.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Header {
    /// Sequence number of the first part (0 for a format-1 record, which does not know it).
    pub first: u64,
    pub count: u32,
    /// Bytes of the header: where the first part starts.
    pub len: usize,
    pub checked: bool,
    /// Whether each part starts with its message's layout version (a format-3 events record).
    pub versioned: bool,
    /// Whether the parts are events (not dedupe keys).
    pub events: bool,
}

impl Header {
    /// Bytes of a format-2 header.
    pub(super) const V2_LEN: usize = 20;

    /// The header of the record stored for the batch starting at `first`. In a segment
    /// (`in_segment`), where every record was written with a checksummed header, one without
    /// (which [`Header::read`] takes for the first format's, its count in its first bytes) is
    /// damage, never a record of no events; and so is one that says it starts elsewhere (a
    /// read still on a file that was replaced, whose segments' names the fresh one took),
    /// never another batch's events under these numbers.
    pub(super) fn read_stored(record: &[u8], first: u64, in_segment: bool) -> Option<Header> {
        Header::read(record).filter(|h| !in_segment || (h.checked && h.first == first))
    }

    /// Reads the header at the start of `record`; `None` when it is too short, or a format-2
    /// header whose checksum does not match.
    pub(super) fn read(record: &[u8]) -> Option<Header> {
        let head = record.get(..4)?;
        if head != MAGIC && head != MAGIC_KEYS && head != MAGIC_V3 {
            let count = u32::from_le_bytes(head.try_into().ok()?);
            return Some(Header {
                first: 0,
                count,
                len: 4,
                checked: false,
                versioned: false,
                events: true,
            });
        }
        let h = record.get(..Self::V2_LEN)?;
        let crc = u32::from_le_bytes(h[16..20].try_into().ok()?);
        if crc32fast::hash(&h[..16]) != crc {
            return None;
        }
        Some(Header {
            first: u64::from_le_bytes(h[4..12].try_into().ok()?),
            count: u32::from_le_bytes(h[12..16].try_into().ok()?),
            len: Self::V2_LEN,
            checked: true,
            versioned: head == MAGIC_V3,
            events: head != MAGIC_KEYS,
        })
    }
}

/// Builds a record part by part.
#[derive(Debug)]
pub(super) struct RecordBuilder {
    buf: Vec<u8>,
    magic: [u8; 4],
    first: u64,
    count: u32,
}

impl RecordBuilder {
    /// A record of events whose first part is sequence number `first`.
    pub(super) fn events(first: u64) -> RecordBuilder {
        RecordBuilder::with_capacity(first, 0)
    }

    /// A format-2 record of events, whose parts carry no layout version: for entries moved
    /// from the format-1 layout as they were written.
    pub(super) fn unversioned_events(first: u64) -> RecordBuilder {
        RecordBuilder {
            magic: MAGIC,
            ..RecordBuilder::events(first)
        }
    }

    /// A record of dedupe keys whose first part is dedupe sequence number `first`.
    pub(super) fn keys(first: u64) -> RecordBuilder {
        RecordBuilder {
            magic: MAGIC_KEYS,
            ..RecordBuilder::events(first)
        }
    }

    /// A record of events with room for `parts_bytes` (the sum of [`RecordBuilder::cost`] of
    /// its parts).
    pub(super) fn with_capacity(first: u64, parts_bytes: u64) -> RecordBuilder {
        let mut buf = Vec::with_capacity(Self::HEADER as usize + parts_bytes as usize);
        buf.extend_from_slice(&[0; Header::V2_LEN]);
        RecordBuilder {
            buf,
            magic: MAGIC_V3,
            first,
            count: 0,
        }
    }

    /// Bytes a part of `len` bytes adds to the record.
    pub(super) const fn cost(len: usize) -> u64 {
        8 + len as u64
    }

    /// Bytes of a record with no parts.
    pub(super) const HEADER: u64 = Header::V2_LEN as u64;

    pub(super) fn push(&mut self, part: &[u8]) {
        let len = u32::try_from(part.len()).expect("a part is smaller than 4 GiB");
        self.buf.extend_from_slice(&len.to_le_bytes());
        self.buf
            .extend_from_slice(&crc32fast::hash(part).to_le_bytes());
        self.buf.extend_from_slice(part);
        self.count += 1;
    }

    pub(super) fn count(&self) -> u32 {
        self.count
    }

    /// The finished record.
    pub(super) fn finish(mut self) -> Vec<u8> {
        self.buf[..4].copy_from_slice(&self.magic);
        self.buf[4..12].copy_from_slice(&self.first.to_le_bytes());
        self.buf[12..16].copy_from_slice(&self.count.to_le_bytes());
        let crc = crc32fast::hash(&self.buf[..16]);
        self.buf[16..20].copy_from_slice(&crc.to_le_bytes());
        self.buf
    }
}

/// The number of parts a record says it holds (0 for a value that is not a record).
pub(super) fn count(record: &[u8]) -> u32 {
    Header::read(record).map_or(0, |h| h.count)
}

/// The parts of a record, in order: `count(record)` items, each `None` where the part is
/// damaged (its checksum does not match, or its framing is broken: then every later one too).
/// A damaged value never panics, and never reads past its end.
pub(super) fn parts(record: &[u8]) -> impl Iterator<Item = Option<&[u8]>> {
    let header = Header::read(record);
    let mut rest = header.and_then(|h| record.get(h.len..));
    let checked = header.is_some_and(|h| h.checked);
    (0..header.map_or(0, |h| h.count)).map(move |_| {
        let r = rest.take()?;
        let (part, after) = split_part(r, checked)?;
        rest = Some(after);
        part
    })
}

/// Part `i` as stored, whatever its checksum says: `(bytes, whether the checksum matches)`;
/// `None` when the header is damaged or the framing breaks before it (no bytes to keep).
/// What the quarantine keeps of a damaged entry.
pub(super) fn part_as_stored(record: &[u8], i: u32) -> Option<(&[u8], bool)> {
    let header = Header::read(record)?;
    let mut rest = record.get(header.len..)?;
    for n in 0..header.count {
        let len = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?) as usize;
        let frame = if header.checked { 8 } else { 4 };
        let part = rest.get(frame..frame + len)?;
        if n == i {
            let good = !header.checked
                || u32::from_le_bytes(rest[4..8].try_into().ok()?) == crc32fast::hash(part);
            return Some((part, good));
        }
        rest = rest.get(frame + len..)?;
    }
    None
}

/// One part from the start of `r`: `(Some(part) or None when its checksum fails, the rest)`;
/// `None` when the framing itself is broken.
fn split_part(r: &[u8], checked: bool) -> Option<(Option<&[u8]>, &[u8])> {
    let len = u32::from_le_bytes(r.get(..4)?.try_into().ok()?) as usize;
    if !checked {
        return Some((Some(r.get(4..4 + len)?), r.get(4 + len..)?));
    }
    let crc = u32::from_le_bytes(r.get(4..8)?.try_into().ok()?);
    let part = r.get(8..8 + len)?;
    let good = crc32fast::hash(part) == crc;
    Some((good.then_some(part), r.get(8 + len..)?))
}

/// The framing of one part: its length and checksum, from the 8 bytes before it.
pub(super) fn part_frame(frame: [u8; 8]) -> (usize, u32) {
    let len = u32::from_le_bytes(frame[..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(frame[4..].try_into().expect("4 bytes"));
    (len, crc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_come_back_in_order_and_the_length_is_what_cost_says() {
        let mut b = RecordBuilder::events(7);
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
        let h = Header::read(&r).unwrap();
        assert_eq!((h.first, h.count, h.checked), (7, 3, true));
        assert!(
            h.versioned && h.events,
            "new event records say their parts are versioned"
        );
        let old = RecordBuilder::unversioned_events(7).finish();
        let h = Header::read(&old).unwrap();
        assert!(!h.versioned && h.events && h.checked);
        let keys = RecordBuilder::keys(7).finish();
        assert!(!Header::read(&keys).unwrap().events);
        let got: Vec<_> = parts(&r).collect();
        assert_eq!(got, [Some(&b"one"[..]), Some(b""), Some(b"three")]);
    }

    #[test]
    fn a_damaged_record_yields_none_where_it_is_damaged() {
        let mut b = RecordBuilder::keys(0);
        b.push(b"first");
        b.push(b"second");
        b.push(b"third");
        let good = b.finish();
        let mut flipped = good.clone();
        let second = Header::V2_LEN + 8 + 5 + 8;
        flipped[second] ^= 1;
        let got: Vec<_> = parts(&flipped).collect();
        assert_eq!(got, [Some(&b"first"[..]), None, Some(b"third")]);
        let mut cut = good.clone();
        cut.truncate(cut.len() - 2);
        let got: Vec<_> = parts(&cut).collect();
        assert_eq!(got, [Some(&b"first"[..]), Some(b"second"), None]);
        let mut header = good;
        header[13] ^= 1;
        assert_eq!(count(&header), 0, "a header that fails its checksum");
        assert_eq!(parts(&[1, 0]).count(), 0, "too short for a header");
    }

    #[test]
    fn format_1_records_are_still_read() {
        let mut v1 = 2u32.to_le_bytes().to_vec();
        for p in [&b"ab"[..], b"c"] {
            v1.extend_from_slice(&(p.len() as u32).to_le_bytes());
            v1.extend_from_slice(p);
        }
        assert_eq!(count(&v1), 2);
        let got: Vec<_> = parts(&v1).collect();
        assert_eq!(got, [Some(&b"ab"[..]), Some(b"c")]);
        assert!(parts(&[9, 0, 0, 0]).all(|p| p.is_none()));
    }
}
