//! Reading a topic once through: from a time (or given offsets) up to where each partition
//! ended when the scan began, so a scan of a topic still being written ends.
//!
//! `events find`, `replay` and `dead-letters` read the archive and the dead-letter topic
//! this way. A start time is looked up with `offsets_for_times` (the first record at or after
//! it), so a scan of the last hour of a week-long archive reads an hour of it.

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use super::reader::{self, ReadError, Record};

/// How long one metadata or offsets request may take.
const TIMEOUT: Duration = Duration::from_secs(10);
/// How long a scan waits for a record the partition's end says is there, before it says so
/// rather than hang.
const STALL: Duration = Duration::from_secs(15);

/// Where a scan starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScanStart {
    /// Each partition's first record.
    Beginning,
    /// Each partition's first record with a timestamp at or after this (ms since the epoch).
    Time(i64),
    /// Given offsets (a resumed scan); a partition missing here starts at its beginning.
    Offsets(BTreeMap<i32, i64>),
}

/// A record read, with its timestamp (ms since the epoch).
#[derive(Debug, Clone)]
pub struct Scanned {
    pub record: Record,
    pub timestamp_ms: i64,
}

/// Reads `topic` from `start` up to the end each partition had when the scan began, and on
/// past it while records stamped before `until_ms` (default: the scan's start) still come,
/// handing each record to `each` (which can stop the scan). Returns where each partition
/// ended (the next offset to read).
///
/// A partition is done at its first record stamped after `until_ms`, or once read to its end
/// and quiet. Records past the end are read because a broker can name an end short of what it
/// holds (tansu 0.6 does, for a partition of several batches); the time bound keeps a scan of
/// a topic written all along from running for ever.
pub fn scan<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    start: &ScanStart,
    until_ms: Option<i64>,
    mut each: impl FnMut(Scanned) -> ControlFlow<()>,
) -> Result<BTreeMap<i32, i64>, ReadError> {
    let Some(partitions) = reader::partitions(consumer, topic, TIMEOUT)? else {
        return Err(ReadError::NoTopic(topic.to_string()));
    };
    let ends = ends_of(consumer, topic, &partitions)?;
    let starts = starts_of(consumer, topic, &partitions, start)?;
    let mut next: BTreeMap<i32, i64> = BTreeMap::new();
    let mut tpl = TopicPartitionList::new();
    for &p in &partitions {
        let (from, end) = (starts[&p].max(0), ends[&p]);
        next.insert(p, from);
        if from < end {
            tpl.add_partition_offset(topic, p, Offset::Offset(from))
                .map_err(ReadError::Assign)?;
        }
    }
    let mut open: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
    if open.is_empty() {
        return Ok(next);
    }
    consumer.assign(&tpl).map_err(ReadError::Assign)?;
    let until = until_ms.unwrap_or_else(|| jiff::Timestamp::now().as_millisecond());
    let mut last_record = Instant::now();
    while !open.is_empty() {
        let Some(polled) = consumer.poll(Duration::from_millis(500)) else {
            // Quiet: a partition read to its end is done; one short of it waits (a slow
            // broker), unless what is left was compacted away or is a transaction marker.
            open.retain(|p| next[p] < ends[p] && still_behind(consumer, topic, *p, next[p]));
            if !open.is_empty() && last_record.elapsed() > STALL {
                let p = open[0];
                return Err(ReadError::Stalled {
                    topic: topic.to_string(),
                    partition: p,
                    offset: next[&p],
                    end: ends[&p],
                });
            }
            continue;
        };
        last_record = Instant::now();
        let m = match polled {
            Ok(m) => m,
            // The end as the broker's last fetch answer saw it: trusted only once the
            // scan has read up to the end it took at the start (tansu reports a stale end).
            Err(KafkaError::PartitionEOF(p)) => {
                if next.get(&p).is_some_and(|n| n >= &ends[&p]) {
                    open.retain(|q| *q != p);
                }
                continue;
            }
            Err(e) => return Err(ReadError::Poll(e)),
        };
        let p = m.partition();
        let timestamp_ms = m.timestamp().to_millis().unwrap_or(0);
        if timestamp_ms > until || !open.contains(&p) {
            open.retain(|q| *q != p);
            continue;
        }
        next.insert(p, m.offset() + 1);
        if matches!(start, ScanStart::Time(from) if timestamp_ms < *from) {
            continue; // read from the beginning on a cluster that cannot look times up
        }
        let scanned = Scanned {
            record: Record::of(&m),
            timestamp_ms,
        };
        if each(scanned).is_break() {
            break;
        }
    }
    Ok(next)
}

/// [`scan`] of a topic that may not exist (yet): one that does not holds nothing (`None`).
pub fn scan_if_there<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    start: &ScanStart,
    until_ms: Option<i64>,
    each: impl FnMut(Scanned) -> ControlFlow<()>,
) -> Result<Option<BTreeMap<i32, i64>>, ReadError> {
    match scan(consumer, topic, start, until_ms, each) {
        Err(ReadError::NoTopic(_)) => Ok(None),
        other => other.map(Some),
    }
}

/// Whether a partition's position is still short of what is there to read (a poll that came
/// back empty can be a slow broker, not the end).
fn still_behind<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    partition: i32,
    next: i64,
) -> bool {
    match consumer.fetch_watermarks(topic, partition, TIMEOUT) {
        Ok((_, high)) => next < high,
        Err(_) => true,
    }
}

/// The end (high watermark) of each partition now.
fn ends_of<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    partitions: &[i32],
) -> Result<BTreeMap<i32, i64>, ReadError> {
    watermarks(consumer, topic, partitions, |(_, high)| high)
}

/// The first offset still held in each partition.
fn lows_of<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    partitions: &[i32],
) -> Result<BTreeMap<i32, i64>, ReadError> {
    watermarks(consumer, topic, partitions, |(low, _)| low)
}

/// One of each partition's watermarks, as `pick` takes it from (first offset held, end).
fn watermarks<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    partitions: &[i32],
    pick: fn((i64, i64)) -> i64,
) -> Result<BTreeMap<i32, i64>, ReadError> {
    partitions
        .iter()
        .map(|&p| {
            let marks = consumer
                .fetch_watermarks(topic, p, TIMEOUT)
                .map_err(|source| offsets_error(topic, p, source))?;
            Ok((p, pick(marks)))
        })
        .collect()
}

/// The first offset to read in each partition.
fn starts_of<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    partitions: &[i32],
    start: &ScanStart,
) -> Result<BTreeMap<i32, i64>, ReadError> {
    match start {
        ScanStart::Beginning => lows_of(consumer, topic, partitions),
        ScanStart::Offsets(given) => {
            let mut starts = lows_of(consumer, topic, partitions)?;
            for (p, o) in given {
                if let Some(s) = starts.get_mut(p) {
                    *s = (*s).max(*o);
                }
            }
            Ok(starts)
        }
        ScanStart::Time(ms) => by_time(consumer, topic, partitions, *ms),
    }
}

/// The first offset at or after `ms` in each partition (its end when there is none).
///
/// A cluster that cannot look offsets up by time (librdkafka's mock cluster answers -1 to
/// every such request) is read from the beginning instead; [`scan`] skips what is older.
fn by_time<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    partitions: &[i32],
    ms: i64,
) -> Result<BTreeMap<i32, i64>, ReadError> {
    let found = offsets_at(consumer, topic, partitions, ms)?;
    let lows = lows_of(consumer, topic, partitions)?;
    let ends = ends_of(consumer, topic, partitions)?;
    let unanswered: Vec<i32> = partitions
        .iter()
        .copied()
        .filter(|p| found[p].is_none() && lows[p] < ends[p])
        .collect();
    // "Nothing at or after ms" and "cannot tell" look the same; a partition with records
    // always has one at or after the start of time, so ask for that to tell them apart.
    let blind = !unanswered.is_empty()
        && offsets_at(consumer, topic, &unanswered, 0)?
            .values()
            .all(Option::is_none);
    Ok(partitions
        .iter()
        .map(|&p| {
            let start = match found[&p] {
                Some(o) => o,
                None if blind => lows[&p],
                None => ends[&p],
            };
            (p, start)
        })
        .collect())
}

/// The first offset at or after `ms` in each of `partitions`, `None` where the cluster named
/// none.
fn offsets_at<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    partitions: &[i32],
    ms: i64,
) -> Result<BTreeMap<i32, Option<i64>>, ReadError> {
    let mut tpl = TopicPartitionList::new();
    for &p in partitions {
        tpl.add_partition_offset(topic, p, Offset::Offset(ms))
            .map_err(ReadError::Assign)?;
    }
    let found = consumer
        .offsets_for_times(tpl, TIMEOUT)
        .map_err(|source| offsets_error(topic, partitions[0], source))?;
    Ok(found
        .elements()
        .iter()
        .map(|e| match e.offset() {
            Offset::Offset(o) if o >= 0 => (e.partition(), Some(o)),
            _ => (e.partition(), None),
        })
        .collect())
}

fn offsets_error(topic: &str, partition: i32, source: KafkaError) -> ReadError {
    ReadError::Offsets {
        topic: topic.to_string(),
        partition,
        source,
    }
}
