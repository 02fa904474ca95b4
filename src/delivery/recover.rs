//! After a restart: which spooled entries are already on Kafka?
//!
//! The drain deletes an entry only after Kafka confirmed it, but the delete is a separate
//! commit. If the process dies (SIGKILL, power loss) between the confirmation and the
//! delete's commit, the entry is still in the spool although Kafka has it; publishing it again
//! would duplicate an event the sender was told we took.
//!
//! So before draining, the oldest entries of the spool (the only ones that can have been
//! sent: the drain works in order with a bounded window), parked entries left out (Kafka
//! refused them for good and they stay in the spool, recorded as parked: however many there
//! are, they never crowd out the entries after them), are looked up in the tails of their
//! topics, by their `source` and `event-id` headers; those found are deleted instead of sent.
//! A tail reaches back to the first message written since the oldest entry was received
//! (found by timestamp), so the check holds when other replicas write the same topics and
//! this replica's messages are far from the end; and at least `lookback` messages (a
//! broker that cannot look up offsets by time, like librdkafka's mock cluster, gets those).
//! This needs read access to the topics. Each topic is checked on its own, within a time
//! budget of its own, so one slow or unreadable topic leaves the others checked; the topics
//! that could not be read are tried again a few times, and their entries are then published
//! again: for those the guarantee falls back to at least once, and the log names them.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use crate::event::EventKey;
use crate::kafka::reader::{self, ReadError};
use crate::kafka::{headers, Cluster};
use crate::spool::{Entry, Spool};

/// How the start-up check for already-published entries runs.
#[derive(Debug, Clone)]
pub struct Recovery {
    /// The cluster to read the topics from.
    pub reader: Cluster,
    /// Most spooled entries looked up (those that can have been sent before the stop).
    pub candidates: usize,
    /// Messages read back from the end of each partition.
    pub lookback: i64,
    /// Time allowed to one attempt, all topics together.
    pub timeout: Duration,
    /// Time allowed to one topic within an attempt.
    pub per_topic: Duration,
    /// Attempts before giving up (Kafka unreachable, or not readable).
    pub attempts: u32,
}

impl Recovery {
    /// The check for `candidates` entries on the cluster of `reader`.
    pub fn new(reader: Cluster, candidates: usize) -> Recovery {
        Recovery {
            reader,
            candidates,
            lookback: 4 * candidates as i64,
            timeout: Duration::from_secs(15),
            per_topic: Duration::from_secs(3),
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
    let mut pending: Vec<Entry> = match spool.recovery_candidates(r.candidates).await {
        Ok(v) => v.into_iter().filter_map(Result::ok).collect(),
        Err(e) => {
            tracing::warn!(error = %crate::problem::with_causes(&e), "cannot read the spool for the recovery check; skipping it");
            return;
        }
    };
    for attempt in 1..=r.attempts {
        if pending.is_empty() {
            return;
        }
        let checked = check_once(r, pending.clone()).await;
        forget(spool, checked.found).await;
        if !checked.refused.is_empty() {
            let (topics, why) = summary(&checked.refused);
            tracing::warn!(?topics, reason = %why, "the cluster refuses to let these topics be read; their spooled events are published again (some may be duplicates)");
        }
        pending.retain(|e| checked.unknown.contains_key(e.message.topic.as_str()));
        if pending.is_empty() {
            return;
        }
        let (topics, why) = summary(&checked.unknown);
        if attempt == r.attempts {
            tracing::warn!(?topics, reason = %why, events = pending.len(), "could not check which spooled events of these topics are already on Kafka; publishing them (some may be duplicates)");
            return;
        }
        tracing::debug!(?topics, reason = %why, attempt, "recovery check incomplete; retrying those topics");
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

/// The sequence numbers of `entries` found on Kafka (one attempt; what cannot be checked counts
/// as not found, so it is published: at least once). Used by salvage.
pub(crate) async fn published_of(r: &Recovery, entries: Vec<Entry>) -> Vec<u64> {
    let checked = check_once(r, entries).await;
    if !checked.unknown.is_empty() || !checked.refused.is_empty() {
        let (topics, why) = summary(if checked.unknown.is_empty() {
            &checked.refused
        } else {
            &checked.unknown
        });
        tracing::warn!(?topics, reason = %why, "could not check which salvaged events of these topics are on Kafka; publishing them (some may be duplicates)");
    }
    checked.found
}

/// One attempt at looking `entries` up on Kafka, off the async threads (it blocks on reads).
async fn check_once(r: &Recovery, entries: Vec<Entry>) -> Checked {
    let (reader, budget, lookback) = (r.reader.clone(), Budget::of(r), r.lookback);
    // Only for a check that panicked: then every topic counts as unchecked.
    let topics: std::collections::HashSet<String> = entries
        .iter()
        .map(|e| e.message.topic.to_string())
        .collect();
    tokio::task::spawn_blocking(move || already_published(&reader, &entries, lookback, &budget))
        .await
        .unwrap_or_else(|e| Checked::nothing(topics.iter().map(String::as_str), e.to_string()))
}

/// For a log line: the first ten topics of `by_topic`, and one of the reasons.
fn summary(by_topic: &HashMap<String, String>) -> (Vec<&String>, &str) {
    let topics = by_topic.keys().take(10).collect();
    let why = by_topic.values().next().map_or("", String::as_str);
    (topics, why)
}

/// Deletes entries found on Kafka instead of publishing them again.
async fn forget(spool: &Spool, seqs: Vec<u64>) {
    if seqs.is_empty() {
        return;
    }
    tracing::info!(
        events = seqs.len(),
        "spooled events were already on Kafka (confirmed before the last stop, not yet deleted); not publishing them again"
    );
    if let Err(e) = spool.delete(seqs).await {
        tracing::warn!(error = %crate::problem::with_causes(&e), "cannot delete already-published entries; they will be published again");
    }
}

/// Time allowed to one check: all topics together, and each topic.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Budget {
    pub total: Duration,
    pub per_topic: Duration,
}

impl Budget {
    fn of(r: &Recovery) -> Budget {
        Budget {
            total: r.timeout,
            per_topic: r.per_topic,
        }
    }
}

/// What one check found out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Checked {
    /// Sequence numbers of entries found on Kafka.
    pub found: Vec<u64>,
    /// Topics that could not be read in their budget, and why: worth another attempt.
    pub unknown: HashMap<String, String>,
    /// Topics the cluster refuses to describe (not authorised, …): not worth retrying.
    pub refused: HashMap<String, String>,
}

impl Checked {
    /// Nothing could be checked, for `why`.
    fn nothing<'a>(topics: impl IntoIterator<Item = &'a str>, why: String) -> Checked {
        let unknown = topics
            .into_iter()
            .map(|topic| (topic.to_string(), why.clone()))
            .collect();
        Checked {
            unknown,
            ..Checked::default()
        }
    }
}

/// Looks up `entries` in the last `lookback` messages of each partition of their topics,
/// one topic at a time, each within its own budget.
pub(crate) fn already_published(
    reader: &Cluster,
    entries: &[Entry],
    lookback: i64,
    budget: &Budget,
) -> Checked {
    let consumer: BaseConsumer = match reader.reader_config("eduzz-kafka-bridge-recovery").create()
    {
        Ok(c) => c,
        Err(e) => {
            let topics = entries.iter().map(|e| e.message.topic.as_str());
            return Checked::nothing(topics, ReadError::Create(e).to_string());
        }
    };
    let deadline = Instant::now() + budget.total;
    let mut by_topic: HashMap<&str, Wanted> = HashMap::new();
    let mut oldest: HashMap<&str, u64> = HashMap::new();
    for e in entries {
        let t = oldest.entry(&e.message.topic).or_insert(u64::MAX);
        *t = (*t).min(e.message.received_at_ms);
        by_topic
            .entry(&e.message.topic)
            .or_default()
            .entry(e.message.key_on_kafka().into_owned())
            .or_default()
            .push(e.seq);
    }
    let mut checked = Checked::default();
    for (topic, mut wanted) in by_topic {
        let now = Instant::now();
        let topic_deadline = deadline.min(now + budget.per_topic);
        if now >= deadline {
            let why = format!("the check ran out of its {:?}", budget.total);
            checked.unknown.insert(topic.to_string(), why);
            continue;
        }
        // What this replica sent of the topic is within as many messages from the end as it
        // has entries of it (four times that, for margin) when it is the only writer, and
        // after the oldest entry's receipt whoever else writes there.
        let entries: usize = wanted.values().map(Vec::len).sum();
        let tail = Tail {
            lookback: lookback.min((4 * entries as i64).max(1024)),
            since_ms: oldest
                .get(topic)
                .map(|ms| ms.saturating_sub(CLOCK_MARGIN_MS)),
        };
        match tail_of(&consumer, topic, &mut wanted, tail, topic_deadline) {
            Ok(found) => checked.found.extend(found),
            Err(Unread::Refused(why)) => {
                checked.refused.insert(topic.to_string(), why);
            }
            Err(Unread::Unreachable(why)) => {
                checked.unknown.insert(topic.to_string(), why);
            }
        }
    }
    checked.found.sort_unstable();
    checked
}

/// How far before an entry's receipt its message's timestamp may lie: the message is stamped
/// after the entry was received, by this host's clock (or, with `LogAppendTime`, the broker's,
/// which NTP keeps within this of ours).
const CLOCK_MARGIN_MS: u64 = 60_000;

/// How much of a partition's end to read.
#[derive(Debug, Clone, Copy)]
struct Tail {
    /// At least this many messages from the end.
    lookback: i64,
    /// And everything stamped since (ms since the epoch), where the broker can tell.
    since_ms: Option<u64>,
}

/// Entries wanted in one topic: the key their headers carry → their sequence numbers.
type Wanted = HashMap<EventKey<'static>, Vec<u64>>;

/// Why a topic's tail was not read.
enum Unread {
    /// The cluster refuses it (not authorised, …).
    Refused(String),
    /// Kafka unreachable, slow, or out of time: may work next time.
    Unreachable(String),
}

/// Reads the tail of `topic` until `deadline`; the sequence numbers of the wanted entries
/// found there.
fn tail_of(
    consumer: &BaseConsumer,
    topic: &str,
    wanted: &mut Wanted,
    tail: Tail,
    deadline: Instant,
) -> Result<Vec<u64>, Unread> {
    let (tpl, mut ends) = tails(consumer, topic, tail, deadline).map_err(|e| {
        let why = crate::problem::with_causes(&e);
        match e {
            ReadError::Refused { .. } => Unread::Refused(why),
            _ => Unread::Unreachable(why),
        }
    })?;
    let mut found = Vec::new();
    if ends.is_empty() {
        return Ok(found);
    }
    consumer
        .assign(&tpl)
        .map_err(|e| Unread::Unreachable(format!("cannot read {topic}: {e}")))?;
    while !ends.is_empty() {
        if Instant::now() >= deadline {
            let why = format!("reading the tail of {topic} took too long");
            return Err(Unread::Unreachable(why));
        }
        match consumer.poll(Duration::from_millis(100)) {
            None => {}
            Some(Err(e)) => return Err(Unread::Unreachable(format!("reading {topic}: {e}"))),
            Some(Ok(m)) => {
                if let Some(seqs) = m
                    .headers()
                    .and_then(headers::read_key)
                    .and_then(|k| wanted.remove(&k))
                {
                    found.extend(seqs);
                }
                let key = (m.topic().to_string(), m.partition());
                if ends.get(&key).is_some_and(|end| m.offset() + 1 >= *end) {
                    ends.remove(&key);
                }
            }
        }
    }
    Ok(found)
}

type Ends = HashMap<(String, i32), i64>;

/// The last `lookback` messages of every partition of `topic`: where to start reading, and
/// the offset where each partition's tail ends.
fn tails(
    consumer: &BaseConsumer,
    topic: &str,
    tail: Tail,
    deadline: Instant,
) -> Result<(TopicPartitionList, Ends), ReadError> {
    let left = || deadline.saturating_duration_since(Instant::now());
    let mut tpl = TopicPartitionList::new();
    let mut ends = Ends::new();
    // A topic that does not exist holds nothing of ours.
    let ids = reader::partitions(consumer, topic, left())?.unwrap_or_default();
    let stamped = tail
        .since_ms
        .map(|ms| offsets_since(consumer, topic, &ids, ms, left()))
        .unwrap_or_default();
    for p in ids {
        let (low, high) = consumer
            .fetch_watermarks(topic, p, left())
            .map_err(|source| ReadError::Offsets {
                topic: topic.to_string(),
                partition: p,
                source,
            })?;
        if high > low {
            let start = first_offset(low, high, tail.lookback, stamped.get(&p).copied());
            tpl.add_partition_offset(topic, p, Offset::Offset(start))
                .map_err(ReadError::Assign)?;
            ends.insert((topic.to_string(), p), high);
        }
    }
    Ok((tpl, ends))
}

/// Where to start reading a partition holding `low..high`: `lookback` messages from the end,
/// or earlier from `stamped` (the first message since the oldest entry's receipt) when the
/// broker told it: never later than the count alone would start.
fn first_offset(low: i64, high: i64, lookback: i64, stamped: Option<i64>) -> i64 {
    let from_end = high - lookback;
    low.max(stamped.map_or(from_end, |o| o.min(from_end)))
}

/// The first offset of each partition stamped at or after `since_ms`, where the broker can
/// tell (a broker that cannot, or a partition with nothing that new, has none here).
fn offsets_since(
    consumer: &BaseConsumer,
    topic: &str,
    partitions: &[i32],
    since_ms: u64,
    timeout: Duration,
) -> HashMap<i32, i64> {
    let mut tpl = TopicPartitionList::new();
    for &p in partitions {
        let _ = tpl.add_partition_offset(topic, p, Offset::Offset(since_ms as i64));
    }
    match consumer.offsets_for_times(tpl, timeout) {
        Ok(found) => found
            .elements_for_topic(topic)
            .iter()
            .filter_map(|e| match e.offset() {
                Offset::Offset(o) if o >= 0 => Some((e.partition(), o)),
                _ => None,
            })
            .collect(),
        Err(e) => {
            tracing::debug!(topic, error = %e, "offsets by time not available; reading the tail by count");
            HashMap::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Message as Spooled;
    use crate::kafka::{ProducerTuning, Publisher};
    use rdkafka::mocking::MockCluster;
    use rdkafka::types::RDKafkaRespErr;

    fn entry(seq: u64, topic: &str, id: &str) -> Entry {
        Entry {
            seq,
            message: Spooled {
                topic: topic.into(),
                key: id.as_bytes().to_vec().into(),
                source: "eduzz".into(),
                slug: "nutror.lesson_started".into(),
                event_id: id.into(),
                received_at_ms: 0,
                content_type: "application/json".into(),
                body: b"{}".to_vec().into(),
                cloudevent: None,
                archive: None,
                trace: None,
            },
        }
    }

    fn publisher(connection: &Cluster) -> Publisher {
        let tuning = ProducerTuning {
            message_timeout: Some(Duration::from_secs(10)),
            linger: Duration::from_millis(1),
        };
        Publisher::new(connection, tuning).unwrap()
    }

    /// The recovery check of `entries`, with a budget no test reaches.
    async fn check<const N: usize>(connection: Cluster, entries: [Entry; N]) -> Checked {
        let budget = Budget {
            total: Duration::from_secs(20),
            per_topic: Duration::from_secs(5),
        };
        tokio::task::spawn_blocking(move || already_published(&connection, &entries, 100, &budget))
            .await
            .unwrap()
    }

    #[test]
    fn the_tail_reaches_back_to_the_oldest_receipt_when_others_wrote_since() {
        // Other replicas wrote 5000 messages after ours (at 100): the timestamp finds them.
        assert_eq!(first_offset(0, 5100, 1024, Some(100)), 100);
        // A broker that cannot look up offsets by time (the mock cluster): by count.
        assert_eq!(first_offset(0, 5100, 1024, None), 4076);
        // Never less than the count reads, nor before the partition's start.
        assert_eq!(first_offset(0, 5100, 1024, Some(5000)), 4076);
        assert_eq!(first_offset(300, 900, 1024, None), 300);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_unreadable_topic_leaves_the_others_checked() {
        let cluster = MockCluster::new(1).unwrap();
        let brokers = cluster.bootstrap_servers();
        let connection = Cluster::to(&brokers);
        let publisher = publisher(&connection);
        let entries = [
            entry(1, "ok.topic", "a"),
            entry(2, "denied.topic", "d"),
            entry(3, "ok.topic", "b"),
            entry(4, "ok.topic", "c"),
        ];
        // a and b were published before the "crash"; c was not.
        for e in [&entries[0], &entries[2]] {
            let sent = publisher.enqueue(&e.message).unwrap();
            sent.delivered().await.unwrap();
        }
        cluster
            .topic_error(
                "denied.topic",
                RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED,
            )
            .unwrap();
        let checked = check(connection, entries).await;
        assert_eq!(checked.found, vec![1, 3]);
        assert!(checked.unknown.is_empty(), "{:?}", checked.unknown);
        assert_eq!(
            checked.refused.keys().collect::<Vec<_>>(),
            vec!["denied.topic"]
        );
        assert!(checked.refused["denied.topic"].contains("TOPIC_AUTHORIZATION_FAILED"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn parked_events_ahead_in_the_spool_leave_published_ones_in_the_check() {
        use crate::delivery::drain::{Drain, DrainGauges, DrainSettings, DrainStop, Until};
        use crate::delivery::DeadLetters;
        use std::sync::atomic::Ordering;
        use std::sync::Arc;

        let cluster = MockCluster::new(1).unwrap();
        let connection = Cluster::to(&cluster.bootstrap_servers());
        let publisher = publisher(&connection);
        cluster
            .topic_error(
                "refused.topic",
                RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED,
            )
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let settings = crate::spool::SpoolSettings {
            dir: dir.path().to_path_buf(),
            min_free_bytes: 0,
            ..Default::default()
        };
        let spool = Spool::open(&settings, &Default::default()).unwrap();
        // 30 events Kafka refuses for good, with no dead-letter topic: the drain parks them.
        for i in 0..30 {
            spool
                .append(&entry(0, "refused.topic", &format!("p{i}")).message)
                .await
                .unwrap();
        }
        let metrics = Arc::new(crate::metrics::Metrics::new());
        let gauges = Arc::new(DrainGauges::default());
        let stop = DrainStop::default();
        let drain = Drain::new(
            spool.clone(),
            publisher.clone(),
            crate::topics::Topics::unprovisioned(),
            DeadLetters::new(publisher.clone(), None, metrics.clone()),
            metrics,
            DrainSettings::new(8),
            gauges.clone(),
        );
        let task = tokio::spawn(drain.run(stop.clone(), Until::Shutdown));
        while gauges.parked.load(Ordering::Relaxed) < 30 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        stop.stop_by(tokio::time::Instant::now() + Duration::from_secs(2));
        task.await.unwrap();
        // Then small events, published before a crash that left them spooled.
        for i in 0..5 {
            let e = entry(0, "ok.topic", &format!("s{i}"));
            spool.append(&e.message).await.unwrap();
            publisher
                .enqueue(&e.message)
                .unwrap()
                .delivered()
                .await
                .unwrap();
        }
        assert_eq!(spool.stats().depth, 35);
        // A window of 10 candidates: the parked ones would fill it, and the small ones be
        // published again.
        let recovery = Recovery::new(connection, 10);
        skip_already_published(&spool, &recovery, &CancellationToken::new()).await;
        assert_eq!(spool.stats().depth, 30, "only the parked events are left");
        spool.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn events_with_only_cloudevents_headers_are_found() {
        let cluster = MockCluster::new(1).unwrap();
        let connection = Cluster::to(&cluster.bootstrap_servers());
        let publisher = publisher(&connection);
        let ce_only = |seq, id: &str, bridge_headers| {
            let mut e = entry(seq, "ce.topic", id);
            e.message.cloudevent = crate::event::tests::with_cloudevent(bridge_headers).cloudevent;
            e
        };
        let entries = [
            ce_only(1, "a", false),
            ce_only(2, "b", true),
            ce_only(3, "c", false),
        ];
        for e in &entries[..2] {
            publisher
                .enqueue(&e.message)
                .unwrap()
                .delivered()
                .await
                .unwrap();
        }
        let checked = check(connection, entries).await;
        assert_eq!(checked.found, vec![1, 2]);
    }
}
