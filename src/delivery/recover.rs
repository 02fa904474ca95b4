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
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use crate::kafka::reader::{self, ReadError};
use crate::kafka::{headers, Connection};
use crate::spool::{Entry, Spool};

/// How the start-up check for already-published entries runs.
#[derive(Debug, Clone)]
pub struct Recovery {
    /// The cluster to read the topics from.
    pub reader: Connection,
    /// Most spooled entries looked up (those that can have been sent before the stop).
    pub candidates: usize,
    /// Messages read back from the end of each partition.
    pub lookback: i64,
    /// Time allowed to one attempt.
    pub timeout: Duration,
    /// Attempts before giving up (Kafka unreachable, or not readable).
    pub attempts: u32,
}

impl Recovery {
    /// The check for `candidates` entries on the cluster of `reader`.
    pub fn new(reader: Connection, candidates: usize) -> Recovery {
        Recovery {
            reader,
            candidates,
            lookback: 4 * candidates as i64,
            timeout: Duration::from_secs(15),
            attempts: 10,
        }
    }
}

/// Deletes the spooled entries that an earlier run published but could not delete.
pub(crate) async fn skip_already_published(
    spool: &Spool,
    r: &Recovery,
    shutdown: &CancellationToken,
) {
    let entries: Vec<Entry> = match spool.read_after(None, r.candidates).await {
        Ok(v) => v.into_iter().filter_map(Result::ok).collect(),
        Err(e) => {
            tracing::warn!(error = %crate::problem::with_causes(&e), "cannot read the spool for the recovery check; skipping it");
            return;
        }
    };
    if entries.is_empty() {
        return;
    }
    for attempt in 1..=r.attempts {
        let (reader, lookback, timeout) = (r.reader.clone(), r.lookback, r.timeout);
        let batch = entries.clone();
        let outcome = tokio::task::spawn_blocking(move || {
            already_published(&reader, &batch, lookback, timeout)
        })
        .await
        .unwrap_or_else(|e| Outcome::Unknown(e.to_string()));
        match outcome {
            Outcome::Found(seqs) => return forget(spool, seqs).await,
            Outcome::Unknown(why) if attempt == r.attempts => {
                tracing::warn!(reason = %why, events = entries.len(), "could not check which spooled events are already on Kafka; publishing them all (some may be duplicates)");
            }
            Outcome::Unknown(why) => {
                tracing::debug!(reason = %why, attempt, "recovery check failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                    _ = shutdown.cancelled() => return,
                }
            }
        }
    }
}

/// Deletes entries found on Kafka instead of publishing them again.
async fn forget(spool: &Spool, seqs: Vec<u64>) {
    if !seqs.is_empty() {
        tracing::info!(
            events = seqs.len(),
            "spooled events were already on Kafka (confirmed before the last stop, not yet deleted); not publishing them again"
        );
    }
    if let Err(e) = spool.delete(seqs).await {
        tracing::warn!(error = %crate::problem::with_causes(&e), "cannot delete already-published entries; they will be published again");
    }
}

/// How one recovery check went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Kafka was read: these sequence numbers are already published.
    Found(Vec<u64>),
    /// Kafka could not be read (down, or no read permission): nothing is known.
    Unknown(String),
}

/// Looks up `entries` in the last `lookback` messages of each partition of their topics.
pub(crate) fn already_published(
    reader: &Connection,
    entries: &[Entry],
    lookback: i64,
    timeout: Duration,
) -> Outcome {
    if entries.is_empty() {
        return Outcome::Found(Vec::new());
    }
    let consumer: BaseConsumer = match reader.reader_config("eduzz-kafka-bridge-recovery").create()
    {
        Ok(c) => c,
        Err(e) => return Outcome::Unknown(ReadError::Create(e).to_string()),
    };
    let deadline = Instant::now() + timeout;

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
    let (tpl, mut ends) = match tails(&consumer, topics, lookback, deadline) {
        Ok(t) => t,
        Err(e) => return Outcome::Unknown(crate::problem::with_causes(&e)),
    };
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
                if let Some(seqs) = identity(&m).and_then(|k| wanted.remove(&k)) {
                    found.extend(seqs);
                }
                let key = (m.topic().to_string(), m.partition());
                if ends.get(&key).is_some_and(|end| m.offset() + 1 >= *end) {
                    ends.remove(&key);
                }
            }
        }
    }
    found.sort_unstable();
    Outcome::Found(found)
}

type Ends = HashMap<(String, i32), i64>;

/// The last `lookback` messages of every partition of `topics`: where to start reading, and
/// the offset where each partition's tail ends.
fn tails(
    consumer: &BaseConsumer,
    topics: HashSet<&str>,
    lookback: i64,
    deadline: Instant,
) -> Result<(TopicPartitionList, Ends), ReadError> {
    let left = || deadline.saturating_duration_since(Instant::now());
    let mut tpl = TopicPartitionList::new();
    let mut ends = Ends::new();
    for topic in topics {
        // A topic that does not exist holds nothing of ours.
        let ids = reader::partitions(consumer, topic, left())?.unwrap_or_default();
        for p in ids {
            let (low, high) = consumer
                .fetch_watermarks(topic, p, left())
                .map_err(|source| ReadError::Offsets {
                    topic: topic.to_string(),
                    partition: p,
                    source,
                })?;
            if high > low {
                tpl.add_partition_offset(topic, p, Offset::Offset(low.max(high - lookback)))
                    .map_err(ReadError::Assign)?;
                ends.insert((topic.to_string(), p), high);
            }
        }
    }
    Ok((tpl, ends))
}

/// The (source, event id) a published message carries in its headers.
fn identity<M: Message>(m: &M) -> Option<(String, String)> {
    let h = m.headers()?;
    let mut source = None;
    let mut id = None;
    for header in h.iter() {
        match header.key {
            headers::SOURCE => source = header.value,
            headers::EVENT_ID => id = header.value,
            _ => {}
        }
    }
    Some((
        String::from_utf8_lossy(source?).into_owned(),
        String::from_utf8_lossy(id?).into_owned(),
    ))
}
