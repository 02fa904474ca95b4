//! The spec of every topic a config writes: `[topics]` for those no rule says more about (the
//! overflow topic, the dead letters), each rule's overrides merged onto it for the topics that
//! rule writes, and whether `serve` creates them.
//!
//! Which rule an event follows is routing's answer ([`crate::route`]); this module knows
//! routing only through [`RouteRules`], which the router implements. So topics sit below
//! routing (the router asks the budget for room, the delivery modes ask [`super::Topics`]
//! for readiness) and nothing here reaches back up.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::budget::TopicBudget;
use super::settings::{spec_of, TopicSettings};
use crate::event::TopicName;
use crate::kafka::admin::TopicSpec;
use crate::kafka::PropertyValue;
use crate::problem::Problems;

/// Which rule of the routing table: `routes[i]`, or `default_route`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RuleId {
    Route(usize),
    Default,
}

/// Where a slug's events go under the rule they follow (for `topics plan`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub rule: RuleId,
    /// How the rule is named (`routes[1] nutror.*`).
    pub label: String,
    pub topic: TopicName,
    /// What the messages are keyed by (`/data/learner/email`, `event id`).
    pub key: String,
}

/// A publishing rule whose template names topics after slugs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlugNamed {
    pub rule: RuleId,
    pub label: String,
    pub template: String,
}

/// What topics need to know of routing; the router answers.
pub trait RouteRules: Send + Sync {
    /// The rule events of `slug` from `source` follow.
    fn rule_of(&self, source: &str, slug: &str) -> RuleId;
    /// Where those events go; `None` when their rule drops them.
    fn target(&self, source: &str, slug: &str) -> Option<Target>;
    /// The publishing rules whose template names topics after slugs.
    fn slug_named(&self) -> Vec<SlugNamed>;
}

/// Says what [`TopicSpec`] a topic about to be written should get.
///
/// Kept behind a trait so provisioning can be driven without a routing table.
pub trait TopicSpecs: Send + Sync {
    fn spec(&self, source: &str, slug: &str, topic: &str) -> Arc<TopicSpec>;
}

/// A rule's topic settings, as its config section has them.
pub(crate) struct RuleTopicSettings<'a> {
    /// Whether the rule publishes (`drop = false` and a topic template).
    pub publishes: bool,
    pub drop: bool,
    pub partitions: Option<i32>,
    pub replication_factor: Option<i32>,
    pub topic_config: &'a BTreeMap<String, PropertyValue>,
}

/// The spec of each topic the config writes.
#[derive(Debug, Clone)]
pub struct TopicLayout {
    /// The spec of topics no rule says more about.
    defaults: Arc<TopicSpec>,
    /// The spec of each publishing rule's topics.
    rules: BTreeMap<RuleId, Arc<TopicSpec>>,
    budget: Arc<TopicBudget>,
    provision: bool,
    /// The archive topic and its spec, when deliveries are archived.
    archive: Option<(TopicName, Arc<TopicSpec>)>,
}

impl TopicLayout {
    /// `[topics]` and each rule's overrides, checked; problems under `topics.…`,
    /// `routes[i].…` and `default_route.…`.
    pub(crate) fn build<'a>(
        topics: &TopicSettings,
        budget: Arc<TopicBudget>,
        rules: impl IntoIterator<Item = (RuleId, RuleTopicSettings<'a>)>,
        problems: &mut Problems,
    ) -> Option<TopicLayout> {
        let mark = problems.mark();
        problems.check(
            "topics.overflow_topic",
            crate::kafka::topic::check_topic_name(&topics.overflow_topic),
        );
        let defaults = topics.defaults(problems);
        let mut specs = BTreeMap::new();
        for (id, rule) in rules {
            let key = match id {
                RuleId::Route(i) => format!("routes[{i}]"),
                RuleId::Default => "default_route".into(),
            };
            if rule.drop {
                no_topic_settings(&key, &rule, problems);
            } else if rule.publishes {
                let spec = spec_of(
                    &key,
                    Some(&defaults),
                    rule.partitions,
                    rule.replication_factor,
                    rule.topic_config,
                    problems,
                );
                specs.insert(id, Arc::new(spec));
            }
        }
        problems.none_since(mark).then_some(TopicLayout {
            defaults: Arc::new(defaults),
            rules: specs,
            budget,
            provision: topics.provision,
            archive: None,
        })
    }

    /// The same layout with the archive topic `name`, created with `spec`.
    pub fn with_archive(self, name: TopicName, spec: TopicSpec) -> TopicLayout {
        TopicLayout {
            archive: Some((name, Arc::new(spec))),
            ..self
        }
    }

    /// The archive topic and its spec, when deliveries are archived.
    pub fn archive(&self) -> Option<(&TopicName, &Arc<TopicSpec>)> {
        self.archive.as_ref().map(|(n, s)| (n, s))
    }

    /// Whether `serve` creates topics before their first write.
    pub fn provisions(&self) -> bool {
        self.provision
    }

    /// The spec of topics no rule says more about.
    pub fn defaults(&self) -> &Arc<TopicSpec> {
        &self.defaults
    }

    /// The spec of the topics `rule` writes (the defaults for a rule that drops).
    pub fn rule_spec(&self, rule: RuleId) -> &Arc<TopicSpec> {
        self.rules.get(&rule).unwrap_or(&self.defaults)
    }

    /// The spec `topic`, written for `slug` from `source`, gets.
    pub fn spec(
        &self,
        routes: &dyn RouteRules,
        source: &str,
        slug: &str,
        topic: &str,
    ) -> Arc<TopicSpec> {
        if self.budget.overflow == topic {
            return self.defaults.clone();
        }
        if let Some((name, spec)) = &self.archive {
            if name == topic {
                return spec.clone();
            }
        }
        self.rule_spec(routes.rule_of(source, slug)).clone()
    }

    /// The topic events go to once `topics.max_dynamic` is reached.
    pub fn overflow_topic(&self) -> &TopicName {
        &self.budget.overflow
    }

    /// The specs of this layout as the routing table `routes` picks them, for provisioning.
    pub fn with_routes(&self, routes: Arc<dyn RouteRules>) -> Arc<dyn TopicSpecs> {
        Arc::new(RoutedSpecs {
            layout: self.clone(),
            routes,
        })
    }
}

/// A layout and the routing table that says which rule a topic is written under.
struct RoutedSpecs {
    layout: TopicLayout,
    routes: Arc<dyn RouteRules>,
}

impl TopicSpecs for RoutedSpecs {
    fn spec(&self, source: &str, slug: &str, topic: &str) -> Arc<TopicSpec> {
        self.layout.spec(&*self.routes, source, slug, topic)
    }
}

/// Problems for topic settings on a rule that publishes nothing.
fn no_topic_settings(key: &str, rule: &RuleTopicSettings<'_>, problems: &mut Problems) {
    for (field, set) in [
        ("partitions", rule.partitions.is_some()),
        ("replication_factor", rule.replication_factor.is_some()),
        ("topic_config", !rule.topic_config.is_empty()),
    ] {
        problems.require(
            !set,
            format!("{key}.{field}"),
            "a rule with drop = true writes no topic",
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topics::plan::wanted_topics;

    /// A routing table of two rules: `fixed.*` writes `fixed`, everything else is dropped,
    /// and `named.*` names its topics after the slug.
    struct FakeRoutes;

    impl RouteRules for FakeRoutes {
        fn rule_of(&self, _source: &str, slug: &str) -> RuleId {
            match slug {
                s if s.starts_with("fixed.") => RuleId::Route(0),
                s if s.starts_with("named.") => RuleId::Route(1),
                _ => RuleId::Default,
            }
        }

        fn target(&self, source: &str, slug: &str) -> Option<Target> {
            let rule = self.rule_of(source, slug);
            let topic = match rule {
                RuleId::Route(0) => TopicName::from("fixed"),
                RuleId::Route(_) => TopicName::from(slug),
                RuleId::Default => return None,
            };
            Some(Target {
                rule,
                label: format!("{rule:?}"),
                topic,
                key: "event id".into(),
            })
        }

        fn slug_named(&self) -> Vec<SlugNamed> {
            vec![SlugNamed {
                rule: RuleId::Route(1),
                label: "routes[1] named.*".into(),
                template: "{slug}".into(),
            }]
        }
    }

    fn layout(problems: &mut Problems) -> Option<TopicLayout> {
        let none = BTreeMap::new();
        let rule = |partitions, drop: bool| RuleTopicSettings {
            publishes: !drop,
            drop,
            partitions,
            replication_factor: None,
            topic_config: &none,
        };
        let settings = TopicSettings::default();
        let rules = [
            (RuleId::Route(0), rule(Some(12), false)),
            (RuleId::Route(1), rule(Some(2), false)),
            (RuleId::Default, rule(None, true)),
        ];
        TopicLayout::build(&settings, settings.budget(), rules, problems)
    }

    #[test]
    fn each_topic_gets_its_rules_spec_and_the_overflow_the_defaults() {
        let mut problems = Problems::default();
        let layout = layout(&mut problems).expect("no problems");
        let spec = |slug: &str, topic: &str| layout.spec(&FakeRoutes, "eduzz", slug, topic);
        assert_eq!(spec("fixed.a", "fixed").partitions, 12);
        assert_eq!(spec("named.b", "named.b").partitions, 2);
        assert_eq!(
            spec("named.c", "eduzz-bridge.overflow").partitions,
            6,
            "an event overflowing from a rule gets the overflow topic's spec, not the rule's"
        );
        assert_eq!(spec("other", "other").partitions, 6, "a dropping rule");
        assert!(layout.provisions());
    }

    #[test]
    fn the_plan_lists_each_topic_once_and_the_overflow_when_a_rule_follows_slugs() {
        let mut problems = Problems::default();
        let layout = layout(&mut problems).expect("no problems");
        let slugs = vec![
            "fixed.a".to_string(),
            "fixed.b".into(),
            "named.x".into(),
            "dropped".into(),
        ];
        let (wanted, dynamic) = wanted_topics(&FakeRoutes, &layout, &[("eduzz", slugs)]);
        let listed: Vec<(&str, i32)> = wanted
            .iter()
            .map(|w| (w.topic.as_str(), w.spec.partitions))
            .collect();
        assert_eq!(
            listed,
            [("fixed", 12), ("named.x", 2), ("eduzz-bridge.overflow", 6)]
        );
        assert_eq!(dynamic.len(), 1);
        assert_eq!(dynamic[0].spec.partitions, 2);
    }

    #[test]
    fn a_dropping_rule_with_topic_settings_is_a_problem() {
        let mut problems = Problems::default();
        let config = BTreeMap::from([("retention.ms".to_string(), PropertyValue::Int(1))]);
        let dropping = RuleTopicSettings {
            publishes: false,
            drop: true,
            partitions: Some(3),
            replication_factor: Some(2),
            topic_config: &config,
        };
        let settings = TopicSettings::default();
        let built = TopicLayout::build(
            &settings,
            settings.budget(),
            [(RuleId::Route(4), dropping)],
            &mut problems,
        );
        assert!(built.is_none());
        let keys: Vec<String> = problems.into_vec().into_iter().map(|p| p.key).collect();
        assert_eq!(
            keys,
            [
                "routes[4].partitions",
                "routes[4].replication_factor",
                "routes[4].topic_config"
            ]
        );
    }

    const SOURCES: &str = r#"
[sources.eduzz]
path = "/e"
format = "eduzz"
auth = { type = "hmac-sha256", secrets = ["k"] }
"#;

    #[test]
    fn topic_specs_take_the_defaults_and_each_rule_overrides() {
        let toml = r#"
[topics]
partitions = 4
replication_factor = 3
config = { "retention.ms" = 86400000, "cleanup.policy" = "delete" }

[[routes]]
match = "myeduzz.invoice_*"
topic = "eduzz.invoices"
key = "/data/learner/email"
partitions = 12
topic_config = { "retention.ms" = "604800000" }

[default_route]
topic = "{slug}"
"#;
        let cfg = crate::config::Config::from_toml(&format!("{toml}{SOURCES}")).unwrap();
        let (r, t) = (&cfg.router, &cfg.topics);
        let invoices = t.spec(r, "eduzz", "myeduzz.invoice_paid", "eduzz.invoices");
        assert_eq!(invoices.partitions, 12);
        assert_eq!(invoices.replication_factor, Some(3));
        assert_eq!(invoices.config["retention.ms"], "604800000");
        assert_eq!(invoices.config["cleanup.policy"], "delete");
        let other = t.spec(r, "eduzz", "nutror.lesson_started", "nutror.lesson_started");
        assert_eq!(other.partitions, 4);
        assert_eq!(other.config["retention.ms"], "86400000");
        let (wanted, dynamic) = wanted_topics(
            r,
            t,
            &[(
                "eduzz",
                vec![
                    "myeduzz.invoice_paid".into(),
                    "nutror.lesson_started".into(),
                ],
            )],
        );
        let names: Vec<&str> = wanted.iter().map(|w| w.topic.as_str()).collect();
        assert_eq!(
            names,
            [
                "eduzz.invoices",
                "nutror.lesson_started",
                "eduzz-bridge.overflow",
                "eduzz-bridge.archive"
            ]
        );
        assert_eq!(wanted[0].key, "/data/learner/email");
        let archive = &wanted[3].spec;
        assert_eq!(
            (archive.partitions, archive.config["retention.ms"].as_str()),
            (6, "604800000"),
            "the archive keeps a week by default, on a spec of its own"
        );
        assert_eq!(archive.config["compression.type"], "zstd");
        assert_eq!(
            dynamic.len(),
            1,
            "the default route names topics after slugs"
        );
    }

    #[test]
    fn topic_settings_are_checked() {
        let toml = r#"
[topics]
partitions = 0

[[routes]]
match = "x.*"
drop = true
partitions = 3
"#;
        let err = crate::config::Config::from_toml(&format!("{toml}{SOURCES}")).unwrap_err();
        let keys: Vec<&str> = err.problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, ["topics.partitions", "routes[0].partitions"]);
    }
}
