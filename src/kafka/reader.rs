//! Reading topics back: find a topic's partitions, assign them all, and turn what arrives
//! into [`Record`]s.
//!
//! The recovery check, `tail` and the tests read the same way: without a consumer group's
//! rebalancing (partitions are assigned, not subscribed), so a read starts at once and sees
//! every partition.

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

/// Why a topic could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("cannot create a Kafka reader")]
    Create(#[source] KafkaError),
    #[error("cannot fetch the metadata of {topic}")]
    Metadata {
        topic: String,
        #[source]
        source: KafkaError,
    },
    #[error("cannot fetch the offsets of {topic}/{partition}")]
    Offsets {
        topic: String,
        partition: i32,
        #[source]
        source: KafkaError,
    },
    #[error("topic {0} does not exist (yet)")]
    NoTopic(String),
    #[error("the cluster refuses to describe {topic}: {code:?}")]
    Refused {
        topic: String,
        code: rdkafka::types::RDKafkaRespErr,
    },
    #[error("cannot assign the partitions")]
    Assign(#[source] KafkaError),
    #[error("cannot read the topic")]
    Poll(#[source] KafkaError),
    #[error("{topic}/{partition} sends nothing past offset {offset}, though its end is {end}")]
    Stalled {
        topic: String,
        partition: i32,
        offset: i64,
        end: i64,
    },
}

/// The partitions of `topic`, or `None` when the cluster does not have it (yet). Any other
/// error the cluster gives for the topic (not authorised, …) is an error: "cannot tell" is
/// not "holds nothing".
pub fn partitions<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    timeout: Duration,
) -> Result<Option<Vec<i32>>, ReadError> {
    use rdkafka::types::RDKafkaRespErr::{
        RD_KAFKA_RESP_ERR_LEADER_NOT_AVAILABLE as LEADER_NOT_AVAILABLE,
        RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART as UNKNOWN_TOPIC,
    };
    let md = consumer
        .fetch_metadata(Some(topic), timeout)
        .map_err(|source| ReadError::Metadata {
            topic: topic.to_string(),
            source,
        })?;
    let Some(t) = md.topics().iter().find(|t| t.name() == topic) else {
        return Ok(None);
    };
    match t.error() {
        None if !t.partitions().is_empty() => {
            Ok(Some(t.partitions().iter().map(|p| p.id()).collect()))
        }
        None | Some(UNKNOWN_TOPIC | LEADER_NOT_AVAILABLE) => Ok(None),
        Some(code) => Err(ReadError::Refused {
            topic: topic.to_string(),
            code,
        }),
    }
}

/// Waits for `topic` to exist (up to `wait`; `None`: as long as it takes, but a metadata error
/// ends the wait), then assigns every partition from `start`. Returns the partition count.
pub fn assign_all<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    start: Offset,
    wait: Option<Duration>,
) -> Result<usize, ReadError> {
    let started = Instant::now();
    let ids = loop {
        let expired = wait.is_some_and(|w| started.elapsed() >= w);
        match partitions(consumer, topic, Duration::from_secs(2)) {
            Ok(Some(ids)) => break ids,
            Ok(None) if expired => return Err(ReadError::NoTopic(topic.to_string())),
            Err(e) if expired || wait.is_none() => return Err(e),
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    let mut tpl = TopicPartitionList::new();
    for p in &ids {
        tpl.add_partition_offset(topic, *p, start)
            .map_err(ReadError::Assign)?;
    }
    consumer.assign(&tpl).map_err(ReadError::Assign)?;
    Ok(ids.len())
}

/// One message read back from Kafka.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub headers: Vec<(String, Vec<u8>)>,
    pub value: Vec<u8>,
}

impl Record {
    pub fn of<M: Message>(m: &M) -> Record {
        Record {
            topic: m.topic().to_string(),
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().map(<[u8]>::to_vec),
            headers: m
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec()))
                        .collect()
                })
                .unwrap_or_default(),
            value: m.payload().unwrap_or_default().to_vec(),
        }
    }

    /// The trace context its headers carry (`traceparent`, `tracestate`), so an event sent
    /// again (re-driven, replayed) stays in the trace of the request that brought it.
    pub fn trace(&self) -> Option<crate::telemetry::TraceContext> {
        super::headers::read_trace(
            self.headers
                .iter()
                .map(|(k, v)| (k.as_str(), Some(v.as_slice()))),
        )
    }

    /// Which event this record is, as its headers name it (see
    /// [`super::headers::read_key`]).
    pub fn event_key(&self) -> Option<crate::event::EventKey<'static>> {
        super::headers::read_key_of(
            self.headers
                .iter()
                .map(|(k, v)| (k.as_str(), Some(v.as_slice()))),
        )
    }

    /// A header's value as text (lossy), if present.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }
}
