//! `[topics]`: the spec of the topics the bridge creates, and a rule's overrides merged onto it.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Deserialize;

use super::budget::TopicBudget;
use crate::event::TopicName;
use crate::kafka::admin::TopicSpec;
use crate::kafka::PropertyValue;
use crate::problem::Problems;

/// `[topics]`: how the topics the bridge writes are made, and how many of them senders can
/// make it create.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TopicSettings {
    /// Most topics named after slugs outside the documented catalogue (by templates with
    /// `{slug}` or `{app}`), per process; past it, such events go to `overflow_topic`.
    pub max_dynamic: usize,
    /// Where events go once `max_dynamic` topics are taken.
    pub overflow_topic: String,
    /// `serve` creates each topic before its first write (else: the broker's auto-creation).
    pub provision: bool,
    /// Partitions of a topic the bridge creates: the most consumers of one group that can
    /// share its events.
    pub partitions: i32,
    /// Replication factor of a topic the bridge creates; unset: the broker's default.
    pub replication_factor: Option<i32>,
    /// Topic configs of a topic the bridge creates (`retention.ms`, `cleanup.policy`…).
    pub config: BTreeMap<String, PropertyValue>,
}

impl Default for TopicSettings {
    fn default() -> Self {
        Self {
            max_dynamic: 1000,
            overflow_topic: "eduzz-bridge.overflow".into(),
            provision: true,
            partitions: 6,
            replication_factor: None,
            config: BTreeMap::new(),
        }
    }
}

/// Most partitions the bridge asks for (a typo like 60000 should not reach the cluster).
const MAX_PARTITIONS: i32 = 10_000;

impl TopicSettings {
    /// How many topics senders can make the bridge create, and where the rest go.
    pub(crate) fn budget(&self) -> Arc<TopicBudget> {
        Arc::new(TopicBudget::new(
            self.max_dynamic,
            TopicName::from(self.overflow_topic.as_str()),
        ))
    }

    /// The spec of topics no rule says more about; problems under `topics.…`.
    pub(crate) fn defaults(&self, problems: &mut Problems) -> TopicSpec {
        spec_of(
            "topics",
            None,
            Some(self.partitions),
            self.replication_factor,
            &self.config,
            problems,
        )
    }
}

/// `base` with a rule's overrides, checked; problems under `key`.
pub(crate) fn spec_of(
    key: &str,
    base: Option<&TopicSpec>,
    partitions: Option<i32>,
    replication_factor: Option<i32>,
    config: &BTreeMap<String, PropertyValue>,
    problems: &mut Problems,
) -> TopicSpec {
    // Only what this level sets is checked here: an inherited value was checked where it is set.
    problems.require(
        partitions.is_none_or(|p| (1..=MAX_PARTITIONS).contains(&p)),
        format!("{key}.partitions"),
        format!("must be between 1 and {MAX_PARTITIONS}"),
    );
    problems.require(
        replication_factor.is_none_or(|r| (1..=32).contains(&r)),
        format!("{key}.replication_factor"),
        "must be between 1 and 32 (remove it for the broker's default)",
    );
    let mut merged = base.map(|b| b.config.clone()).unwrap_or_default();
    merged.extend(config.iter().map(|(k, v)| (k.clone(), v.to_string())));
    TopicSpec {
        partitions: partitions.or(base.map(|b| b.partitions)).unwrap_or(1),
        replication_factor: replication_factor.or(base.and_then(|b| b.replication_factor)),
        config: merged,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rule_overrides_what_it_sets_and_inherits_the_rest() {
        let mut problems = Problems::default();
        let mut config = BTreeMap::new();
        config.insert("retention.ms".to_string(), PropertyValue::Int(1000));
        let defaults = TopicSettings {
            config,
            replication_factor: Some(3),
            ..TopicSettings::default()
        }
        .defaults(&mut problems);
        assert_eq!(
            (defaults.partitions, defaults.replication_factor),
            (6, Some(3))
        );
        let mut rule = BTreeMap::new();
        rule.insert(
            "cleanup.policy".to_string(),
            PropertyValue::Text("compact".into()),
        );
        let merged = spec_of(
            "routes[0]",
            Some(&defaults),
            Some(12),
            None,
            &rule,
            &mut problems,
        );
        assert_eq!(merged.partitions, 12);
        assert_eq!(merged.replication_factor, Some(3), "inherited");
        assert_eq!(merged.config["retention.ms"], "1000", "inherited");
        assert_eq!(merged.config["cleanup.policy"], "compact");
        assert!(problems.none_since(problems.mark()));
        assert!(problems.into_vec().is_empty());

        let mut problems = Problems::default();
        spec_of(
            "routes[1]",
            None,
            Some(0),
            Some(40),
            &BTreeMap::new(),
            &mut problems,
        );
        let said: Vec<String> = problems.into_vec().iter().map(|p| p.to_string()).collect();
        assert!(
            said.iter().any(|p| p.starts_with("routes[1].partitions")),
            "{said:?}"
        );
        assert!(
            said.iter()
                .any(|p| p.starts_with("routes[1].replication_factor")),
            "{said:?}"
        );
    }
}
