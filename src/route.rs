//! Routing: which topic an event goes to, under which key — or whether it is dropped.
//!
//! Rules are tried in the order of the config file and the first whose glob matches the slug
//! (and whose `source`, if given, matches) wins; the default rule catches everything else, so
//! a slug the platforms add tomorrow still lands somewhere. All globs are compiled into one
//! [`globset::GlobSet`], so a lookup costs one pass however many rules there are.

use globset::{Glob, GlobSet, GlobSetBuilder};
use serde_json::Value;

use crate::config::Settings;
use crate::topic::{Template, TopicVars};

/// What to do with one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Publish to `topic` under `key`.
    Publish { topic: String, key: Vec<u8> },
    /// Answer 2xx and publish nothing, because the rule says so.
    Drop { rule: String },
}

#[derive(Debug, Clone)]
struct Rule {
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

/// The routing table of a config.
#[derive(Debug, Clone)]
pub struct Router {
    globs: GlobSet,
    rules: Vec<Rule>,
    default: Rule,
}

/// One row of the routing table as `check-config` prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteRow {
    pub rule: String,
    pub topic: Option<String>,
    pub key: String,
}

impl Router {
    /// Compiles the rules of a validated config.
    pub fn from_settings(settings: &Settings) -> Result<Router, String> {
        let mut builder = GlobSetBuilder::new();
        let mut rules = Vec::with_capacity(settings.routes.len());
        for (i, r) in settings.routes.iter().enumerate() {
            builder.add(Glob::new(&r.pattern).map_err(|e| format!("routes[{i}].match: {e}"))?);
            let action = if r.drop {
                Action::Drop
            } else {
                let text = r.topic.as_deref().unwrap_or("{slug}");
                Action::Publish {
                    template: Template::parse(text)
                        .map_err(|e| format!("routes[{i}].topic: {e}"))?,
                    key_pointer: r.key.clone(),
                }
            };
            rules.push(Rule {
                label: format!("routes[{i}] {}", r.pattern),
                source: r.source.clone(),
                action,
            });
        }
        let d = &settings.default_route;
        let default = Rule {
            label: "default_route".into(),
            source: None,
            action: if d.drop {
                Action::Drop
            } else {
                Action::Publish {
                    template: Template::parse(&d.topic)
                        .map_err(|e| format!("default_route.topic: {e}"))?,
                    key_pointer: d.key.clone(),
                }
            },
        };
        Ok(Router {
            globs: builder.build().map_err(|e| e.to_string())?,
            rules,
            default,
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

    /// Decides where one event goes. `doc` is the parsed body, for key pointers.
    pub fn route(&self, source: &str, slug: &str, id: &str, doc: &Value) -> Decision {
        let rule = self.rule_for(source, slug);
        match &rule.action {
            Action::Drop => Decision::Drop {
                rule: rule.label.clone(),
            },
            Action::Publish {
                template,
                key_pointer,
            } => Decision::Publish {
                topic: template.render(TopicVars { slug, source }),
                key: key_pointer
                    .as_deref()
                    .and_then(|p| key_from(doc, p))
                    .unwrap_or_else(|| id.as_bytes().to_vec()),
            },
        }
    }

    /// Where `slug` from `source` would go, for `check-config`.
    pub fn explain(&self, source: &str, slug: &str) -> RouteRow {
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
            } => RouteRow {
                rule: rule.label.clone(),
                topic: Some(template.render(TopicVars { slug, source })),
                key: key_pointer.clone().unwrap_or_else(|| "event id".into()),
            },
        }
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

    fn router(rules: &str) -> Router {
        let text = format!(
            r#"
[sources.eduzz]
path = "/e"
format = "eduzz"
auth = {{ type = "none" }}

[sources.toolzz]
path = "/t"
format = "toolzz"
auth = {{ type = "none" }}
{rules}"#
        );
        Router::from_settings(&Settings::from_toml(&text).unwrap()).unwrap()
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
    fn illegal_slugs_are_sanitised_into_legal_topics() {
        let r = router("");
        match r.route("eduzz", "nutror.aula iniciada", "i", &json!({})) {
            Decision::Publish { topic, .. } => {
                assert!(topic.starts_with("nutror.aula_iniciada-"), "{topic}");
                assert!(crate::topic::check_topic_name(&topic).is_ok());
            }
            other => panic!("{other:?}"),
        }
    }
}
