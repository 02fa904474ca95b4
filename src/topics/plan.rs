//! `topics plan`: the topics the routes write, and what would take each from what the cluster
//! has to what its route wants. Nothing is ever deleted and no partition count lowered (Kafka
//! cannot lower one, and a delete loses data); config drift is reported, not changed, because
//! an operator may have tuned a topic on purpose.

use std::collections::HashSet;
use std::sync::Arc;

use super::layout::{RouteRules, TopicLayout};
use crate::event::TopicName;
use crate::kafka::admin::{ConfigsUnread, Existing, TopicSpec};

/// A topic the routes write, as `topics plan` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WantedTopic {
    pub topic: TopicName,
    pub spec: Arc<TopicSpec>,
    /// The rule that names it (`routes[1] nutror.*`).
    pub rule: String,
    /// What its messages are keyed by (`/data/learner/email`, `event id`).
    pub key: String,
}

/// A rule whose template names topics after slugs, so it also makes topics for slugs first
/// seen at run time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DynamicRule {
    pub rule: String,
    pub template: String,
    pub spec: Arc<TopicSpec>,
}

/// Every topic the rules make of the `slugs` each source may send (the documented
/// catalogue), the overflow topic when a rule names topics after slugs, the archive topic,
/// and the rules that name topics after slugs.
pub fn wanted_topics(
    routes: &dyn RouteRules,
    layout: &TopicLayout,
    slugs: &[(&str, Vec<String>)],
) -> (Vec<WantedTopic>, Vec<DynamicRule>) {
    let mut topics: Vec<WantedTopic> = Vec::new();
    let mut seen = HashSet::new();
    for (source, slugs) in slugs {
        for target in slugs.iter().filter_map(|slug| routes.target(source, slug)) {
            if seen.insert(target.topic.clone()) {
                topics.push(WantedTopic {
                    topic: target.topic,
                    spec: layout.rule_spec(target.rule).clone(),
                    rule: target.label,
                    key: target.key,
                });
            }
        }
    }
    let dynamic: Vec<DynamicRule> = routes
        .slug_named()
        .into_iter()
        .map(|r| DynamicRule {
            spec: layout.rule_spec(r.rule).clone(),
            rule: r.label,
            template: r.template,
        })
        .collect();
    let overflow = layout.overflow_topic();
    if !dynamic.is_empty() && seen.insert(overflow.clone()) {
        topics.push(WantedTopic {
            topic: overflow.clone(),
            spec: layout.defaults().clone(),
            rule: "topics.overflow_topic".into(),
            key: "as the rule it overflows from".into(),
        });
    }
    if let Some((archive, spec)) = layout.archive() {
        if seen.insert(archive.clone()) {
            topics.push(WantedTopic {
                topic: archive.clone(),
                spec: spec.clone(),
                rule: "archive.topic".into(),
                key: "as the event".into(),
            });
        }
    }
    (topics, dynamic)
}

/// What a topic needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Create,
    Raise {
        from: i32,
        to: i32,
    },
    /// More partitions than wanted: left as they are.
    MoreThanWanted {
        has: i32,
        wants: i32,
    },
    Drift {
        key: String,
        has: Option<String>,
        wants: String,
    },
    ConfigsUnread(ConfigsUnread),
}

/// The changes that take `existing` to `spec`.
pub fn changes(spec: &TopicSpec, existing: Option<&Existing>) -> Vec<Change> {
    let Some(existing) = existing else {
        return vec![Change::Create];
    };
    let mut out = Vec::new();
    if existing.partitions < spec.partitions {
        out.push(Change::Raise {
            from: existing.partitions,
            to: spec.partitions,
        });
    } else if existing.partitions > spec.partitions {
        out.push(Change::MoreThanWanted {
            has: existing.partitions,
            wants: spec.partitions,
        });
    }
    match &existing.config {
        Ok(config) => out.extend(spec.config.iter().filter_map(|(key, wants)| {
            let has = config.get(key);
            (has != Some(wants)).then(|| Change::Drift {
                key: key.clone(),
                has: has.cloned(),
                wants: wants.clone(),
            })
        })),
        Err(why) if !spec.config.is_empty() => out.push(Change::ConfigsUnread(why.clone())),
        Err(_) => {}
    }
    out
}

/// One line saying what `change` means for a topic whose messages are keyed by `key`.
pub fn describe(change: &Change, key: &str) -> String {
    match change {
        Change::Create => "missing: create".into(),
        Change::Raise { from, to } => format!(
            "raise partitions {from} -> {to}; WARNING: messages are keyed by {key}, and keys move to other partitions (per-key order holds only within the old and within the new layout)"
        ),
        Change::MoreThanWanted { has, wants } => {
            format!("has {has} partitions, routes want {wants}: kept (a partition count is never lowered)")
        }
        Change::Drift { key, has, wants } => format!(
            "config drift: {key} is {}, routes want {wants} (reported; apply does not change configs)",
            has.as_deref().unwrap_or("unset")
        ),
        Change::ConfigsUnread(why) => format!("configs not checked: {why}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(partitions: i32, config: &[(&str, &str)]) -> TopicSpec {
        TopicSpec {
            partitions,
            replication_factor: None,
            config: config
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    fn existing(partitions: i32, config: &[(&str, &str)]) -> Existing {
        Existing {
            partitions,
            config: Ok(config
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()),
        }
    }

    #[test]
    fn plans_create_raise_keep_and_drift() {
        let want = spec(6, &[("retention.ms", "1000")]);
        assert_eq!(changes(&want, None), [Change::Create]);
        assert_eq!(
            changes(&want, Some(&existing(6, &[("retention.ms", "1000")]))),
            []
        );
        assert_eq!(
            changes(&want, Some(&existing(2, &[("retention.ms", "5")]))),
            [
                Change::Raise { from: 2, to: 6 },
                Change::Drift {
                    key: "retention.ms".into(),
                    has: Some("5".into()),
                    wants: "1000".into()
                }
            ]
        );
        assert_eq!(
            changes(&want, Some(&existing(8, &[("retention.ms", "1000")]))),
            [Change::MoreThanWanted { has: 8, wants: 6 }]
        );
        let unread = Existing {
            partitions: 6,
            config: Err(ConfigsUnread::EmbeddedBroker),
        };
        assert_eq!(
            changes(&want, Some(&unread)),
            [Change::ConfigsUnread(ConfigsUnread::EmbeddedBroker)]
        );
        assert_eq!(changes(&spec(6, &[]), Some(&unread)), []);
    }
}
