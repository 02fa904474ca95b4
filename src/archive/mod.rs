//! The archive: every delivery the bridge answered, as it arrived, on a Kafka topic of the
//! bridge's own (`eduzz-bridge.archive`), so an operator can find where an event went and
//! send past deliveries again through today's routes (`events find`, `replay`).
//!
//! Why a topic and not a database: the archive is written by the same producer, in the same
//! drain, as the event itself, so it scales with the fleet and outlives any replica; Kafka's
//! own retention and compression bound it, and every replica's archive is one topic. Its
//! record is the event's record (same key, the body byte for byte as the value) with headers
//! that say what happened: the outcome, the rule and topic, the answer and the request headers
//! worth keeping ([`record`]).
//!
//! An archive record is written just before its event, and again if the event is sent again,
//! so the archive can hold a delivery twice, never miss one the drain published (short of a
//! crash between the two, which recovery does not repair: see README). Readers
//! ([`record::ArchivedDelivery`]) drop the repeats.
//!
//! Where it sits: below the delivery modes and the drain, which write through [`Archive`],
//! above [`crate::kafka`].

pub mod record;
mod writer;

use std::time::Duration;

use serde::Deserialize;

use crate::event::TopicName;
use crate::kafka::admin::TopicSpec;
use crate::problem::Problems;
pub use record::{kept_headers, ArchivedDelivery, Outcome};
pub use writer::Archive;

/// `[archive]`: whether deliveries are archived, where, and for how long.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ArchiveSettings {
    /// Archive deliveries (each source can opt out with `sources.NAME.archive = false`).
    pub enabled: bool,
    /// The archive topic.
    pub topic: String,
    /// How long Kafka keeps an archived delivery (the topic's `retention.ms`).
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
    /// The topic's `compression.type` (bodies are JSON: zstd shrinks them several times).
    pub compression: String,
    /// Partitions of the archive topic.
    pub partitions: i32,
    /// Replication factor; unset: the broker's default.
    pub replication_factor: Option<i32>,
}

impl Default for ArchiveSettings {
    fn default() -> Self {
        ArchiveSettings {
            enabled: true,
            topic: "eduzz-bridge.archive".into(),
            retention: Duration::from_secs(7 * 24 * 3600),
            compression: "zstd".into(),
            partitions: 6,
            replication_factor: None,
        }
    }
}

/// The archive topic as the config has it, checked: its name and the spec it is created with.
#[derive(Debug, Clone, PartialEq)]
pub struct ArchiveTopic {
    pub name: TopicName,
    pub spec: TopicSpec,
}

/// The compression types Kafka takes for a topic.
const COMPRESSIONS: [&str; 6] = ["zstd", "lz4", "snappy", "gzip", "producer", "uncompressed"];

impl ArchiveSettings {
    /// The archive topic, or `None` when archiving is off; problems under `archive.…`.
    pub(crate) fn build(&self, problems: &mut Problems) -> Option<ArchiveTopic> {
        problems.check(
            "archive.topic",
            crate::kafka::topic::check_topic_name(&self.topic),
        );
        problems.require(
            (1..=10_000).contains(&self.partitions),
            "archive.partitions",
            "must be between 1 and 10000",
        );
        problems.require(
            COMPRESSIONS.contains(&self.compression.as_str()),
            "archive.compression",
            format!("must be one of {}", COMPRESSIONS.join(", ")),
        );
        problems.require(
            self.retention >= Duration::from_secs(60),
            "archive.retention",
            "must be at least a minute",
        );
        let config = [
            (
                "retention.ms".to_string(),
                self.retention.as_millis().to_string(),
            ),
            ("compression.type".to_string(), self.compression.clone()),
        ];
        self.enabled.then(|| ArchiveTopic {
            name: TopicName::from(self.topic.as_str()),
            spec: TopicSpec {
                partitions: self.partitions,
                replication_factor: self.replication_factor,
                config: config.into_iter().collect(),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::config::tests::MINIMAL;
    use crate::config::Config;

    #[test]
    fn the_archive_is_on_by_default_and_a_source_can_opt_out() {
        let c = Config::from_toml(MINIMAL).unwrap();
        let a = c.archive.expect("on by default");
        assert_eq!(a.name, "eduzz-bridge.archive");
        assert_eq!(a.spec.config["compression.type"], "zstd");
        let text = format!("{MINIMAL}archive = false\n");
        let c = Config::from_toml(&text).unwrap();
        let (eduzz, _) = c.sources.lookup("/webhooks/eduzz").unwrap();
        assert!(!eduzz.archive);
        let off = Config::from_toml(&format!("[archive]\nenabled = false\n{MINIMAL}")).unwrap();
        assert!(off.archive.is_none());
    }

    #[test]
    fn archive_settings_are_checked_with_their_keys() {
        let text = format!(
            "[archive]\npartitions = 0\ncompression = \"brotli\"\nretention = \"1s\"\ntopic = \"a b\"\n{MINIMAL}"
        );
        let e = Config::from_toml(&text).unwrap_err();
        let keys: Vec<&str> = e.problems.iter().map(|p| p.key.as_str()).collect();
        for key in [
            "archive.topic",
            "archive.partitions",
            "archive.compression",
            "archive.retention",
        ] {
            assert!(keys.contains(&key), "{key} in {keys:?}");
        }
    }
}
