//! Everything that speaks Kafka, in one place: how to reach the cluster and the client settings
//! of each role ([`Cluster`]), the idempotent producer ([`Publisher`]), the headers a message
//! carries ([`headers`]), reading topics back ([`reader`]), topic naming ([`topic`]),
//! reachability ([`health`]) and the embedded development broker ([`broker`]).
//!
//! The rest of the bridge hands this module [`Message`](crate::event::Message)s and gets back
//! delivery reports; it never builds an rdkafka config of its own.

pub mod admin;
pub mod broker;
pub mod headers;
mod health;
mod producer;
pub mod reader;
pub mod report;
pub mod scan;
pub mod topic;

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use serde::Deserialize;

use crate::problem::Problems;
pub use health::KafkaHealth;
pub(crate) use producer::is_permanent;
pub(crate) use producer::settle;
pub use producer::{Delivered, EnqueueError, Publisher, Sending};
pub use report::{Delivery, Outcome, ReportTo};

/// `[kafka]`: where and how to publish.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaSettings {
    /// `host:port[,host:port…]`. Unset: start an embedded in-process broker (development only).
    pub brokers: Option<String>,
    /// Passed to librdkafka as they are (`"compression.type" = "zstd"`, SASL, TLS…).
    pub properties: BTreeMap<String, PropertyValue>,
}

/// A librdkafka property value as written in TOML (string, number or boolean).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum PropertyValue {
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(String),
}

impl fmt::Display for PropertyValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PropertyValue::Bool(b) => write!(f, "{b}"),
            PropertyValue::Int(i) => write!(f, "{i}"),
            PropertyValue::Float(x) => write!(f, "{x}"),
            PropertyValue::Text(s) => f.write_str(s),
        }
    }
}

/// The Kafka settings, checked: the brokers (or none, for the embedded broker) and the
/// operator's librdkafka properties as librdkafka reads them.
#[derive(Debug, Clone)]
pub struct Kafka {
    pub brokers: Option<String>,
    properties: Vec<(String, String)>,
    max_record_bytes: usize,
}

/// librdkafka's `message.max.bytes` unless the operator's properties set it: the largest
/// record (key, value and headers, see [`headers::record_size`]) the producer takes.
pub const DEFAULT_MESSAGE_MAX_BYTES: usize = 1_000_000;

/// The producer property that bounds a record's size.
pub const MESSAGE_MAX_BYTES: &str = "message.max.bytes";

/// The values librdkafka accepts for `message.max.bytes`.
const MESSAGE_MAX_BYTES_RANGE: std::ops::RangeInclusive<usize> = 1000..=1_000_000_000;

impl KafkaSettings {
    /// Checks the settings; problems go to `problems` under `kafka.…`.
    pub(crate) fn build(&self, problems: &mut Problems) -> Option<Kafka> {
        let mark = problems.mark();
        if let Some(brokers) = &self.brokers {
            problems.require(
                !brokers.trim().is_empty(),
                "kafka.brokers",
                "is empty; remove the key to use the embedded broker",
            );
        }
        for reserved in ["bootstrap.servers", "metadata.broker.list"] {
            problems.require(
                !self.properties.contains_key(reserved),
                format!("kafka.properties.\"{reserved}\""),
                "set kafka.brokers instead",
            );
        }
        let max_record_bytes = self.max_record_bytes(problems);
        problems.none_since(mark).then(|| Kafka {
            brokers: self.brokers.clone(),
            properties: self
                .properties
                .iter()
                .map(|(k, v)| (k.clone(), v.to_string()))
                .collect(),
            max_record_bytes: max_record_bytes.unwrap_or(DEFAULT_MESSAGE_MAX_BYTES),
        })
    }

    /// The producer's `message.max.bytes`: the operator's, checked as librdkafka would check
    /// it at start-up, or librdkafka's default.
    fn max_record_bytes(&self, problems: &mut Problems) -> Option<usize> {
        let Some(value) = self.properties.get(MESSAGE_MAX_BYTES) else {
            return Some(DEFAULT_MESSAGE_MAX_BYTES);
        };
        let limit = value
            .to_string()
            .parse::<usize>()
            .ok()
            .filter(|n| MESSAGE_MAX_BYTES_RANGE.contains(n));
        problems.require(
            limit.is_some(),
            format!("kafka.properties.\"{MESSAGE_MAX_BYTES}\""),
            format_args!(
                "'{value}' is not a whole number of bytes from {} to {}",
                MESSAGE_MAX_BYTES_RANGE.start(),
                MESSAGE_MAX_BYTES_RANGE.end()
            ),
        );
        limit
    }
}

impl Kafka {
    /// The largest record the producer takes (its `message.max.bytes`): a larger one is
    /// refused for good, so an event that would make one is refused before it is taken.
    pub fn max_record_bytes(&self) -> usize {
        self.max_record_bytes
    }

    /// The connection to `bootstrap` (the configured brokers, or the embedded broker's).
    pub fn connect(&self, bootstrap: &str) -> Cluster {
        Cluster {
            bootstrap: bootstrap.to_string(),
            properties: self.properties.clone(),
        }
    }
}

/// How long the producer may hold a message, and how long it batches.
#[derive(Debug, Clone, Copy)]
pub struct ProducerTuning {
    /// `None`: retry forever (`message.timeout.ms=0`), for messages the spool already keeps.
    pub message_timeout: Option<Duration>,
    pub linger: Duration,
}

/// A cluster to talk to, and the client settings of each role.
#[derive(Debug, Clone)]
pub struct Cluster {
    bootstrap: String,
    properties: Vec<(String, String)>,
}

impl Cluster {
    /// A connection with no extra properties (tools, tests).
    pub fn to(bootstrap: &str) -> Cluster {
        Cluster {
            bootstrap: bootstrap.to_string(),
            properties: Vec::new(),
        }
    }

    /// The same cluster with extra librdkafka properties (`tail -X key=value`).
    pub(crate) fn with_properties(
        mut self,
        extra: impl IntoIterator<Item = (String, String)>,
    ) -> Self {
        self.properties.extend(extra);
        self
    }

    pub fn bootstrap(&self) -> &str {
        &self.bootstrap
    }

    /// The producer's settings: idempotent, `acks=all`, then the operator's properties (a
    /// property that weakens the guarantee is logged, not refused).
    pub fn producer_config(&self, tuning: ProducerTuning) -> ClientConfig {
        let timeout_ms = tuning
            .message_timeout
            .map_or(0, |t| t.as_millis().max(1) as u64);
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.bootstrap)
            .set("client.id", "eduzz-kafka-bridge")
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", tuning.linger.as_millis().to_string())
            .set("message.timeout.ms", timeout_ms.to_string())
            .set("socket.keepalive.enable", "true");
        for (k, v) in &self.properties {
            if weakens_guarantee(k, v) {
                tracing::warn!(property = %k, value = %v, "kafka.properties weakens the delivery guarantee (idempotence, acks=all)");
            }
            c.set(k, v);
        }
        c
    }

    /// A reader's settings: assigned partitions, no offsets committed, librdkafka's own log
    /// quiet (the caller reports what matters).
    pub fn reader_config(&self, group: &str) -> ClientConfig {
        let mut c = ClientConfig::new();
        for (k, v) in &self.properties {
            c.set(k, v);
        }
        c.set("bootstrap.servers", &self.bootstrap)
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false")
            .set("log_level", "3");
        c
    }
}

impl Cluster {
    /// A scan's settings ([`scan`]): a reader's, told when it reaches a partition's end.
    pub fn scanner_config(&self, group: &str) -> ClientConfig {
        let mut c = self.reader_config(group);
        c.set("enable.partition.eof", "true");
        c
    }

    /// An admin client's settings: the operator's properties (SASL, TLS…), no topic ever
    /// created by asking for its metadata, librdkafka's own log quiet.
    pub(crate) fn admin_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        for (k, v) in &self.properties {
            c.set(k, v);
        }
        c.set("bootstrap.servers", &self.bootstrap)
            .set("allow.auto.create.topics", "false")
            .set("log_level", "3");
        c
    }
}

fn weakens_guarantee(key: &str, value: &str) -> bool {
    match key {
        "enable.idempotence" => value != "true",
        "acks" | "request.required.acks" => value != "all" && value != "-1",
        _ => false,
    }
}
