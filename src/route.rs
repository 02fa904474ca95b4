//! Routing: which topic an event goes to, under which key — or whether it is dropped.
//!
//! Rules are tried in the order of the config file and the first whose glob matches the slug
//! (and whose `source`, if given, matches) wins; the default rule catches everything else, so
//! a slug the platforms add tomorrow still lands somewhere. All globs are compiled into one
//! [`globset::GlobSet`], so a lookup costs one pass however many rules there are.
//!
//! A template with `{slug}` or `{app}` names a topic after what senders post, so a stream of
//! made-up slugs (a buggy platform, a leaked secret, a `json` source) would make the bridge
//! create topics without end, and every topic costs the producer, the broker and the health
//! checks. So `[topics]` bounds it: slugs of the documented catalogue always get their topic,
//! and at most `max_dynamic` other topics are named after slugs; past that, such events go to
//! the `overflow_topic` (their slug is still in the `event` header) and are counted. The
//! count itself is [`crate::topics`]'s budget; the router only asks it.
//!
//! Only matching, rendering and key picking live here. How each rule's topics are made
//! (partitions, replication, configs) is [`crate::topics::TopicLayout`]'s, which knows the
//! routing table only through [`RouteRules`]: the router says which rule a slug follows,
//! the layout what spec that rule's topics get.

use std::collections::BTreeMap;
use std::sync::Arc;

use globset::{Glob, GlobSet, GlobSetBuilder};
use serde::Deserialize;
use serde_json::Value;

use crate::event::TopicName;
use crate::kafka::topic::{Template, TopicVars};
use crate::kafka::PropertyValue;
use crate::problem::Problems;
use crate::source::check_pointer;
use crate::topics::budget::TopicBudget;
use crate::topics::layout::{RouteRules, RuleId, RuleTopicSettings, SlugNamed, Target};

/// `[[routes]]`: one routing rule.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSettings {
    /// Glob on the slug: `nutror.*`, `myeduzz.invoice_*`, `*`.
    #[serde(rename = "match")]
    pub pattern: String,
    /// Only for events of this source (by name); unset: any source.
    pub source: Option<String>,
    /// Topic template with `{slug}`, `{source}` and `{app}`; required unless `drop = true`.
    pub topic: Option<String>,
    /// JSON pointer whose value becomes the message key; unset: the event id.
    pub key: Option<String>,
    /// Accept and answer 2xx, but publish nothing.
    #[serde(default)]
    pub drop: bool,
    /// Partitions of the topics this rule writes (unset: `topics.partitions`).
    pub partitions: Option<i32>,
    /// Replication factor of the topics this rule writes (unset: `topics.replication_factor`).
    pub replication_factor: Option<i32>,
    /// Topic configs of the topics this rule writes, over `topics.config`.
    #[serde(default)]
    pub topic_config: BTreeMap<String, PropertyValue>,
}

/// `[default_route]`: the rule for slugs no other rule matches.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DefaultRouteSettings {
    pub topic: String,
    pub key: Option<String>,
    pub drop: bool,
    pub partitions: Option<i32>,
    pub replication_factor: Option<i32>,
    pub topic_config: BTreeMap<String, PropertyValue>,
}

impl Default for DefaultRouteSettings {
    fn default() -> Self {
        Self {
            topic: "{slug}".into(),
            key: None,
            drop: false,
            partitions: None,
            replication_factor: None,
            topic_config: BTreeMap::new(),
        }
    }
}

/// What to do with one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Publish to `topic` under `key`.
    Publish { topic: TopicName, key: Vec<u8> },
    /// Publish to the overflow topic: the rule would have named a new topic after an
    /// undocumented slug, and `topics.max_dynamic` are taken.
    Overflow { topic: TopicName, key: Vec<u8> },
    /// Answer 2xx and publish nothing, because the rule says so.
    Drop { rule: String },
}

#[derive(Debug, Clone)]
struct Rule {
    id: RuleId,
    /// How the rule is named in logs and `check-config` (`routes[2] nutror.*`).
    label: String,
    source: Option<String>,
    action: Action,
}

#[derive(Debug, Clone)]
enum Action {
    Publish {
        template: Template,
        key_pointer: Option<String>,
    },
    Drop,
}

impl Action {
    /// Publishing to `topic` under the key at `key_pointer`; problems under `key`.
    fn publish(
        key: &str,
        topic: &str,
        key_pointer: Option<&str>,
        problems: &mut Problems,
    ) -> Option<Action> {
        if let Some(p) = key_pointer {
            check_pointer(format!("{key}.key"), p, problems);
        }
        let template = problems.check(format!("{key}.topic"), Template::parse(topic))?;
        Some(Action::Publish {
            template,
            key_pointer: key_pointer.map(str::to_string),
        })
    }
}

/// The routing table of a config.
#[derive(Debug, Clone)]
pub struct Router {
    globs: GlobSet,
    rules: Vec<Rule>,
    default: Rule,
    /// Room for topics named after undocumented slugs (owned by [`crate::topics`]).
    budget: Arc<TopicBudget>,
}

/// One row of the routing table as `check-config` prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RouteRow {
    pub rule: String,
    pub topic: Option<TopicName>,
    pub key: String,
}

impl Router {
    /// Compiles the rules; problems go to `problems` under `routes[i].…` and
    /// `default_route.…`. `is_source` says whether a source of that name exists; topics
    /// named after undocumented slugs are admitted by `budget`.
    pub(crate) fn build(
        routes: &[RouteSettings],
        default: &DefaultRouteSettings,
        budget: Arc<TopicBudget>,
        is_source: impl Fn(&str) -> bool,
        problems: &mut Problems,
    ) -> Option<Router> {
        let mark = problems.mark();
        let mut globs = GlobSetBuilder::new();
        let mut rules = Vec::with_capacity(routes.len());
        for (i, r) in routes.iter().enumerate() {
            let key = format!("routes[{i}]");
            if let Some(glob) = problems.check(format!("{key}.match"), Glob::new(&r.pattern)) {
                globs.add(glob);
            }
            if let Some(source) = r.source.as_deref().filter(|s| !is_source(s)) {
                problems.push(
                    format!("{key}.source"),
                    format!("no source is named '{source}'"),
                );
            }
            let action = r.action(&key, problems);
            rules.extend(action.map(|action| Rule {
                id: RuleId::Route(i),
                label: format!("{key} {}", r.pattern),
                source: r.source.clone(),
                action,
            }));
        }
        let default = default.rule(problems)?;
        let globs = problems.check("routes", globs.build())?;
        problems.none_since(mark).then_some(Router {
            globs,
            rules,
            default,
            budget,
        })
    }

    fn rule_for(&self, source: &str, slug: &str) -> &Rule {
        self.globs
            .matches(slug)
            .into_iter()
            .filter_map(|i| self.rules.get(i))
            .find(|r| r.source.as_deref().is_none_or(|s| s == source))
            .unwrap_or(&self.default)
    }

    /// How the rule events of `slug` from `source` follow is named (`routes[1] nutror.*`).
    pub fn rule_label(&self, source: &str, slug: &str) -> &str {
        &self.rule_for(source, slug).label
    }

    /// Decides where one event goes. `doc` is the parsed body, for key pointers.
    pub fn route(&self, source: &str, slug: &str, id: &str, doc: &Value) -> Decision {
        let (decision, bounded) = self.decide(source, slug, id, doc);
        match decision {
            Decision::Publish { topic, key } if bounded && !self.budget.admit(&topic) => {
                let topic = self.budget.overflow.clone();
                Decision::Overflow { topic, key }
            }
            other => other,
        }
    }

    /// Where one event would go, without counting its topic against `topics.max_dynamic`
    /// (for `check-config --explain`), and the rule that says so.
    pub(crate) fn preview(
        &self,
        source: &str,
        slug: &str,
        id: &str,
        doc: &Value,
    ) -> (Decision, String) {
        let rule = self.rule_for(source, slug).label.clone();
        (self.decide(source, slug, id, doc).0, rule)
    }

    /// The rule's decision, and whether its topic is named after an undocumented slug.
    fn decide(&self, source: &str, slug: &str, id: &str, doc: &Value) -> (Decision, bool) {
        let rule = self.rule_for(source, slug);
        match &rule.action {
            Action::Drop => (
                Decision::Drop {
                    rule: rule.label.clone(),
                },
                false,
            ),
            Action::Publish {
                template,
                key_pointer,
                ..
            } => {
                let topic = template.render(TopicVars { slug, source });
                let key = key_pointer
                    .as_deref()
                    .and_then(|p| key_from(doc, p))
                    .unwrap_or_else(|| id.as_bytes().to_vec());
                let bounded = template.follows_slug() && !crate::slugs::is_documented(slug);
                (Decision::Publish { topic, key }, bounded)
            }
        }
    }

    /// The topic events go to once `topics.max_dynamic` is reached.
    pub fn overflow_topic(&self) -> &TopicName {
        &self.budget.overflow
    }

    /// Where `slug` from `source` would go, for `check-config`.
    pub(crate) fn explain(&self, source: &str, slug: &str) -> RouteRow {
        let rule = self.rule_for(source, slug);
        match &rule.action {
            Action::Drop => RouteRow {
                rule: rule.label.clone(),
                topic: None,
                key: "-".into(),
            },
            Action::Publish {
                template,
                key_pointer,
                ..
            } => RouteRow {
                rule: rule.label.clone(),
                topic: Some(template.render(TopicVars { slug, source })),
                key: key_pointer.clone().unwrap_or_else(|| "event id".into()),
            },
        }
    }
}

impl RouteSettings {
    /// What this rule does; problems under `key` (its topic settings are
    /// [`crate::topics`]'s).
    fn action(&self, key: &str, problems: &mut Problems) -> Option<Action> {
        match (&self.topic, self.drop) {
            (None, false) => {
                problems.push(
                    format!("{key}.topic"),
                    "a rule needs a topic template, or drop = true",
                );
                None
            }
            (Some(_), true) => {
                problems.push(
                    format!("{key}.topic"),
                    "a rule with drop = true publishes nothing; remove the topic",
                );
                None
            }
            (None, true) => Some(Action::Drop),
            (Some(topic), false) => Action::publish(key, topic, self.key.as_deref(), problems),
        }
    }

    /// What [`crate::topics`] reads of this rule: how its topics are made.
    pub(crate) fn topic_settings(&self) -> RuleTopicSettings<'_> {
        RuleTopicSettings {
            publishes: !self.drop && self.topic.is_some(),
            drop: self.drop,
            partitions: self.partitions,
            replication_factor: self.replication_factor,
            topic_config: &self.topic_config,
        }
    }
}

impl DefaultRouteSettings {
    /// The rule for slugs no other rule matches; problems under `default_route.…`.
    fn rule(&self, problems: &mut Problems) -> Option<Rule> {
        let action = match self.drop {
            true => {
                if let Some(p) = &self.key {
                    check_pointer("default_route.key".into(), p, problems);
                }
                Some(Action::Drop)
            }
            false => Action::publish("default_route", &self.topic, self.key.as_deref(), problems),
        };
        Some(Rule {
            id: RuleId::Default,
            label: "default_route".into(),
            source: None,
            action: action?,
        })
    }

    /// What [`crate::topics`] reads of this rule: how its topics are made.
    pub(crate) fn topic_settings(&self) -> RuleTopicSettings<'_> {
        RuleTopicSettings {
            publishes: !self.drop,
            drop: self.drop,
            partitions: self.partitions,
            replication_factor: self.replication_factor,
            topic_config: &self.topic_config,
        }
    }
}

impl RouteRules for Router {
    fn rule_of(&self, source: &str, slug: &str) -> RuleId {
        self.rule_for(source, slug).id
    }

    fn target(&self, source: &str, slug: &str) -> Option<Target> {
        let row = self.explain(source, slug);
        Some(Target {
            rule: self.rule_of(source, slug),
            label: row.rule,
            topic: row.topic?,
            key: row.key,
        })
    }

    fn slug_named(&self) -> Vec<SlugNamed> {
        self.rules
            .iter()
            .chain([&self.default])
            .filter_map(|r| match &r.action {
                Action::Publish { template, .. } if template.follows_slug() => Some(SlugNamed {
                    rule: r.id,
                    label: r.label.clone(),
                    template: template.as_str().to_string(),
                }),
                _ => None,
            })
            .collect()
    }
}

/// The message key at `pointer`: strings as they are, other scalars as their JSON text;
/// absent, null or empty values give `None` (the caller falls back to the event id).
fn key_from(doc: &Value, pointer: &str) -> Option<Vec<u8>> {
    match doc.pointer(pointer)? {
        Value::Null => None,
        Value::String(s) if s.is_empty() => None,
        Value::String(s) => Some(s.as_bytes().to_vec()),
        other => Some(other.to_string().into_bytes()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[derive(serde::Deserialize)]
    struct Rules {
        #[serde(default)]
        routes: Vec<RouteSettings>,
    }

    fn router(rules: &str) -> Router {
        let rules: Rules = toml::from_str(rules).unwrap();
        let mut problems = Problems::default();
        let router = Router::build(
            &rules.routes,
            &DefaultRouteSettings::default(),
            crate::topics::settings::TopicSettings {
                max_dynamic: 3,
                ..Default::default()
            }
            .budget(),
            |s| s == "eduzz" || s == "toolzz",
            &mut problems,
        );
        assert!(problems.is_empty(), "{problems:?}");
        router.unwrap()
    }

    fn publish(topic: &str, key: &str) -> Decision {
        Decision::Publish {
            topic: topic.into(),
            key: key.as_bytes().to_vec(),
        }
    }

    #[test]
    fn first_matching_rule_wins_and_default_catches_the_rest() {
        let r = router(
            r#"
[[routes]]
match = "nutror.lesson_*"
topic = "lessons"
[[routes]]
match = "nutror.*"
topic = "eduzz.{app}"
[[routes]]
match = "*.ping"
drop = true
"#,
        );
        let doc = json!({});
        assert_eq!(
            r.route("eduzz", "nutror.lesson_started", "i", &doc),
            publish("lessons", "i")
        );
        assert_eq!(
            r.route("eduzz", "nutror.module_completed", "i", &doc),
            publish("eduzz.nutror", "i")
        );
        assert_eq!(
            r.route("eduzz", "myeduzz.invoice_paid", "i", &doc),
            publish("myeduzz.invoice_paid", "i")
        );
        assert!(matches!(
            r.route("eduzz", "x.ping", "i", &doc),
            Decision::Drop { .. }
        ));
    }

    #[test]
    fn rules_can_be_limited_to_a_source() {
        let r = router(
            r#"
[[routes]]
match = "*"
source = "toolzz"
topic = "toolzz.{slug}"
"#,
        );
        let doc = json!({});
        assert_eq!(
            r.route("toolzz", "members.updated", "i", &doc),
            publish("toolzz.members.updated", "i")
        );
        assert_eq!(
            r.route("eduzz", "members.updated", "i", &doc),
            publish("members.updated", "i")
        );
    }

    #[test]
    fn keys_come_from_pointers_with_the_id_as_fallback() {
        let r = router(
            r#"
[[routes]]
match = "nutror.*"
topic = "{slug}"
key = "/data/learner/email"
[[routes]]
match = "myeduzz.*"
topic = "{slug}"
key = "/data/invoice/id"
"#,
        );
        let doc = json!({"data": {"learner": {"email": "a@b.c"}, "invoice": {"id": 77}}});
        assert_eq!(
            r.route("eduzz", "nutror.x", "i", &doc),
            publish("nutror.x", "a@b.c")
        );
        assert_eq!(
            r.route("eduzz", "myeduzz.y", "i", &doc),
            publish("myeduzz.y", "77")
        );
        assert_eq!(
            r.route("eduzz", "nutror.x", "i", &json!({})),
            publish("nutror.x", "i")
        );
    }

    #[test]
    fn topics_named_after_made_up_slugs_are_bounded_and_the_rest_overflow() {
        let r = router(
            r#"
[[routes]]
match = "fixed.*"
topic = "fixed"
"#,
        );
        let doc = json!({});
        for i in 0..3 {
            let slug = format!("made.up_{i}");
            assert_eq!(r.route("json", &slug, "i", &doc), publish(&slug, "i"));
        }
        let overflow = Decision::Overflow {
            topic: "eduzz-bridge.overflow".into(),
            key: b"i".to_vec(),
        };
        assert_eq!(r.route("json", "made.up_3", "i", &doc), overflow);
        // Topics already taken stay; documented slugs and fixed topics never overflow.
        assert_eq!(
            r.route("json", "made.up_1", "i", &doc),
            publish("made.up_1", "i")
        );
        assert_eq!(
            r.route("eduzz", "myeduzz.invoice_negotiatied", "i", &doc),
            publish("myeduzz.invoice_negotiatied", "i")
        );
        assert_eq!(
            r.route("json", "fixed.x9", "i", &doc),
            publish("fixed", "i")
        );
    }

    #[test]
    fn illegal_slugs_are_sanitised_into_legal_topics() {
        let r = router("");
        match r.route("eduzz", "nutror.aula iniciada", "i", &json!({})) {
            Decision::Publish { topic, .. } => {
                assert!(topic.starts_with("nutror.aula_iniciada-"), "{topic}");
                assert!(crate::kafka::topic::check_topic_name(&topic).is_ok());
            }
            other => panic!("{other:?}"),
        }
    }
}
