//! After a restart: which spooled entries are already on Kafka?
//!
//! The drain deletes an entry only after Kafka confirmed it, but the delete is a separate
//! commit. If the process dies (SIGKILL, power loss) between the confirmation and the
//! delete's commit, the entry is still in the spool although Kafka has it; publishing it again
//! would duplicate an event the sender was told we took.
//!
//! So before draining, the oldest entries of the spool (the only ones that can have been
//! sent: the drain works in order with a bounded window) are looked up in the tails of their
//! topics, by their `source` and `event-id` headers; those found are deleted instead of sent.
//! This needs read access to the topics. If Kafka cannot be read, the check gives up after a
//! bounded time and the entries are published again: the guarantee falls back to at least once,
//! and the log says so.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::message::headers;
use crate::spool::Entry;

/// How one recovery check went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Kafka was read: these sequence numbers are already published.
    Found(Vec<u64>),
    /// Kafka could not be read (down, or no read permission): nothing is known.
    Unknown(String),
}

/// Looks up `entries` in the last `lookback` messages of each partition of their topics.
pub fn already_published(
    reader: &ClientConfig,
    entries: &[Entry],
    lookback: i64,
    timeout: Duration,
) -> Outcome {
    if entries.is_empty() {
        return Outcome::Found(Vec::new());
    }
    let consumer: BaseConsumer = match reader.clone().create() {
        Ok(c) => c,
        Err(e) => return Outcome::Unknown(format!("cannot create a reader: {e}")),
    };
    let deadline = Instant::now() + timeout;
    let left = || deadline.saturating_duration_since(Instant::now());

    let mut wanted: HashMap<(String, String), Vec<u64>> = HashMap::new();
    let mut topics: HashSet<&str> = HashSet::new();
    for e in entries {
        wanted
            .entry((e.message.source.clone(), e.message.event_id.clone()))
            .or_default()
            .push(e.seq);
        topics.insert(&e.message.topic);
    }

    // Where to start and stop reading in every partition of those topics.
    let mut tpl = TopicPartitionList::new();
    let mut ends: HashMap<(String, i32), i64> = HashMap::new();
    for topic in topics {
        let md = match consumer.fetch_metadata(Some(topic), left()) {
            Ok(md) => md,
            Err(e) => return Outcome::Unknown(format!("metadata of {topic}: {e}")),
        };
        let Some(t) = md.topics().iter().find(|t| t.name() == topic) else {
            continue;
        };
        if t.error().is_some() {
            continue; // The topic does not exist: nothing of ours is there.
        }
        for p in t.partitions() {
            let (low, high) = match consumer.fetch_watermarks(topic, p.id(), left()) {
                Ok(w) => w,
                Err(e) => return Outcome::Unknown(format!("offsets of {topic}/{}: {e}", p.id())),
            };
            if high > low {
                let start = low.max(high - lookback);
                if tpl
                    .add_partition_offset(topic, p.id(), Offset::Offset(start))
                    .is_err()
                {
                    return Outcome::Unknown("bad partition list".into());
                }
                ends.insert((topic.to_string(), p.id()), high);
            }
        }
    }
    if ends.is_empty() {
        return Outcome::Found(Vec::new());
    }
    if let Err(e) = consumer.assign(&tpl) {
        return Outcome::Unknown(format!("cannot read the topics: {e}"));
    }

    let mut found = Vec::new();
    while !ends.is_empty() {
        if Instant::now() >= deadline {
            return Outcome::Unknown(format!(
                "reading the topics' tails took longer than {timeout:?}"
            ));
        }
        match consumer.poll(Duration::from_millis(100)) {
            None => {}
            Some(Err(e)) => return Outcome::Unknown(format!("reading the topics: {e}")),
            Some(Ok(m)) => {
                let key = (m.topic().to_string(), m.partition());
                if let Some(h) = m.headers() {
                    let mut source = None;
                    let mut id = None;
                    for header in h.iter() {
                        match header.key {
                            headers::SOURCE => source = header.value,
                            headers::EVENT_ID => id = header.value,
                            _ => {}
                        }
                    }
                    if let (Some(s), Some(i)) = (source, id) {
                        let k = (
                            String::from_utf8_lossy(s).into_owned(),
                            String::from_utf8_lossy(i).into_owned(),
                        );
                        if let Some(seqs) = wanted.remove(&k) {
                            found.extend(seqs);
                        }
                    }
                }
                if ends.get(&key).is_some_and(|end| m.offset() + 1 >= *end) {
                    ends.remove(&key);
                }
            }
        }
    }
    found.sort_unstable();
    Outcome::Found(found)
}
