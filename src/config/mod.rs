//! The configuration: one TOML file with environment overrides, composed of each component's
//! own settings, and built into the parts the bridge runs.
//!
//! Everything the bridge does is decided here, before the first request: a config that would
//! fail at 3 a.m. fails at start-up instead, with a message that names the key. Loading:
//!
//! 1. the `config` crate reads the file and the `EKB__…` environment variables;
//! 2. serde deserialises them into [`Settings`], every stray key reported with a hint from the
//!    real schema ([`unknown`]);
//! 3. each component builds its running part from its own settings ([`Sources`], [`Router`],
//!    the listener with its TLS acceptor, …), exactly once, reporting every problem with its
//!    key path. `check-config` runs these same builds.
//!
//! Environment overrides use the prefix `EKB` and `__` as separator, so
//! `EKB__KAFKA__BROKERS=kafka:9092` sets `kafka.brokers`.

mod unknown;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;

use serde::Deserialize;

use crate::archive::{ArchiveSettings, ArchiveTopic};
use crate::dedupe::{DedupeSettings, SharedSettings};
use crate::delivery::DeliverySettings;
use crate::http::{AdminSettings, Server, ServerSettings};
use crate::kafka::{Kafka, KafkaSettings};
use crate::problem::{Problem, Problems};
use crate::route::{DefaultRouteSettings, RouteSettings, Router};
use crate::source::{SourceSettings, Sources};
use crate::spool::SpoolSettings;
use crate::telemetry::{LogSettings, Otlp, TelemetrySettings};
use crate::topics::layout::{RuleId, TopicLayout};
use crate::topics::settings::TopicSettings;

/// Prefix of environment variables that override the file (`EKB__SECTION__KEY`).
pub const ENV_PREFIX: &str = "EKB";
/// Separator between the prefix and the nested keys of an override.
pub const ENV_SEPARATOR: &str = "__";

/// The whole configuration file, as written: each section is its component's settings type.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    pub server: ServerSettings,
    pub admin: AdminSettings,
    pub kafka: KafkaSettings,
    pub delivery: DeliverySettings,
    pub spool: SpoolSettings,
    pub dedupe: DedupeSettings,
    pub log: LogSettings,
    /// Traces (`[telemetry.otlp]`); off by default.
    pub telemetry: TelemetrySettings,
    /// Webhook sources by name; each owns one HTTP path.
    pub sources: BTreeMap<String, SourceSettings>,
    /// Ordered routing rules: the first whose glob matches the slug wins.
    pub routes: Vec<RouteSettings>,
    /// What happens to a slug no rule matches.
    pub default_route: DefaultRouteSettings,
    /// Bounds on the topics senders can make the bridge create.
    pub topics: TopicSettings,
    /// The archive of deliveries.
    pub archive: ArchiveSettings,
}

/// A configuration, built: every part parsed and checked once, ready to run.
#[derive(Debug)]
pub struct Config {
    pub server: Server,
    /// The admin listener's address; `None` disables it.
    pub admin: Option<SocketAddr>,
    pub kafka: Kafka,
    pub delivery: DeliverySettings,
    pub spool: SpoolSettings,
    pub dedupe: DedupeSettings,
    /// The fleet's shared dedupe index, when `dedupe.shared` is set.
    pub shared_dedupe: Option<SharedSettings>,
    pub log: LogSettings,
    /// Where traces are exported; `None` when tracing is off.
    pub tracing: Option<Otlp>,
    pub sources: Sources,
    pub router: Router,
    /// The spec of each topic the routes write (and the archive), and whether `serve`
    /// creates them.
    pub topics: TopicLayout,
    /// The archive topic; `None` when archiving is off.
    pub archive: Option<ArchiveTopic>,
}

/// Every problem found in a configuration.
#[derive(Debug, Clone)]
pub struct ConfigError {
    pub source_name: String,
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "invalid configuration {} ({} problem{}):",
            self.source_name,
            self.problems.len(),
            if self.problems.len() == 1 { "" } else { "s" }
        )?;
        for p in &self.problems {
            writeln!(f, "  - {p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Reads `path` (TOML) and the `EKB__…` environment overrides, then builds.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let name = path.display().to_string();
        let built = config::Config::builder()
            .add_source(config::File::from(path).format(config::FileFormat::Toml))
            .add_source(
                config::Environment::with_prefix(ENV_PREFIX)
                    .prefix_separator(ENV_SEPARATOR)
                    .separator(ENV_SEPARATOR)
                    .try_parsing(true),
            )
            .build();
        Self::finish(built, name)
    }

    /// Parses TOML text (no environment), then builds. Used by tests and tools.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let built = config::Config::builder()
            .add_source(config::File::from_str(text, config::FileFormat::Toml))
            .build();
        Self::finish(built, "<inline>".into())
    }

    fn finish(
        built: Result<config::Config, config::ConfigError>,
        name: String,
    ) -> Result<Config, ConfigError> {
        let mut problems = Problems::default();
        let tree = built
            .and_then(|c| c.try_deserialize::<serde_json::Value>())
            .map_err(|e| {
                problems.push("file", e);
            })
            .ok();
        let config = tree
            .and_then(|tree| unknown::deserialize::<Settings>(tree, &mut problems))
            .and_then(|settings| settings.build(&mut problems));
        match config {
            Some(c) if problems.is_empty() => Ok(c),
            _ => Err(ConfigError {
                source_name: name,
                problems: problems.into_vec(),
            }),
        }
    }
}

impl Settings {
    /// Builds every part, each from its own section; problems go to `problems`.
    pub(crate) fn build(&self, problems: &mut Problems) -> Option<Config> {
        let server = self.server.build(problems);
        let admin = self.admin.build(problems);
        let kafka = self.kafka.build(problems);
        if let (Some(server), Some(kafka)) = (&server, &kafka) {
            check_body_fits_a_record(server, kafka, problems);
        }
        self.delivery.check(problems);
        let shared_dedupe = self.dedupe.build(problems);
        // In the direct modes taking an event can wait for its topic, then for Kafka, each up
        // to publish_timeout; the claim and the mark wait up to twice shared_timeout each.
        problems.require(
            shared_dedupe.is_none()
                || self.delivery.ack == crate::delivery::AckMode::Spooled
                || self.dedupe.lease
                    > self.delivery.publish_timeout * 2 + self.dedupe.shared_timeout * 4,
            "dedupe.lease",
            "must be longer than 2 × delivery.publish_timeout + 4 × dedupe.shared_timeout (a claim must outlast publishing)",
        );
        let sources = Sources::build(&self.sources, problems);
        for (name, s) in &self.sources {
            problems.require(
                !crate::http::is_admin_path(&s.path),
                format!("sources.{name}.path"),
                "is reserved for the admin endpoints",
            );
        }
        let is_source = |name: &str| self.sources.contains_key(name);
        let rules = self.routes.iter().enumerate();
        let rules = rules
            .map(|(i, r)| (RuleId::Route(i), r.topic_settings()))
            .chain([(RuleId::Default, self.default_route.topic_settings())]);
        // One budget: the router spends it, the layout knows where its overflow goes.
        let budget = self.topics.budget();
        let archive = self.archive.build(problems);
        let topics =
            TopicLayout::build(&self.topics, budget.clone(), rules, problems).map(|layout| {
                match &archive {
                    Some(a) => layout.with_archive(a.name.clone(), a.spec.clone()),
                    None => layout,
                }
            });
        let router = Router::build(
            &self.routes,
            &self.default_route,
            budget,
            is_source,
            problems,
        );
        Some(Config {
            server: server?,
            admin: admin?,
            kafka: kafka?,
            delivery: self.delivery.clone(),
            spool: self.spool.clone(),
            dedupe: self.dedupe.clone(),
            shared_dedupe,
            log: self.log.clone(),
            tracing: self.telemetry.build(problems),
            sources: sources?,
            router: router?,
            topics: topics?,
            archive,
        })
    }
}

/// A body the producer could never publish must not be taken in the first place: Kafka would
/// refuse its record for good, and the dead-letter topic too. Bodies under the limit are
/// still checked one by one with their key and headers (see `Delivery::accept`).
fn check_body_fits_a_record(server: &Server, kafka: &Kafka, problems: &mut Problems) {
    let limit = kafka.max_record_bytes();
    problems.require(
        server.max_body_bytes <= limit,
        "server.max_body_bytes",
        format_args!(
            "must be at most the producer's message.max.bytes ({limit}; set by kafka.properties.\"message.max.bytes\", librdkafka's default 1000000 otherwise): a larger body could never be published"
        ),
    );
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The smallest valid config: one source, everything else defaulted.
    pub(crate) const MINIMAL: &str = r#"
[sources.eduzz]
path = "/webhooks/eduzz"
format = "eduzz"
auth = { type = "hmac-sha256", secrets = ["s3cret"] }
"#;

    #[test]
    fn minimal_config_takes_the_defaults() {
        let c = Config::from_toml(MINIMAL).unwrap();
        assert_eq!(c.delivery.ack, crate::delivery::AckMode::Spooled);
        assert_eq!(c.server.max_body_bytes, 960 * 1024);
        // The default route publishes every slug to the topic of the same name.
        let row = c.router.explain("eduzz", "nutror.lesson_started");
        assert_eq!(row.topic.as_deref(), Some("nutror.lesson_started"));
        assert!(c.kafka.brokers.is_none());
        let (eduzz, _) = c.sources.lookup("/webhooks/eduzz").unwrap();
        assert_eq!(
            eduzz.auth.describe(),
            "hmac-sha256 (header x-signature, 1 live secret)"
        );
    }

    #[test]
    fn a_body_limit_the_spool_cannot_frame_is_refused() {
        let text = format!("[server]\nmax_body_bytes = {}\n{MINIMAL}", 2u64 << 30);
        let e = Config::from_toml(&text).expect_err("a 2 GiB body limit is refused");
        assert!(
            e.problems.iter().any(|p| p.key == "server.max_body_bytes"),
            "{e}"
        );
        // The producer's largest record (librdkafka takes at most 10^9) is the real bound.
        let text = format!(
            "[server]\nmax_body_bytes = {0}\nmax_body_memory_bytes = {0}\n[kafka.properties]\n\"message.max.bytes\" = {0}\n{MINIMAL}",
            1_000_000_000
        );
        assert!(Config::from_toml(&text).is_ok(), "10^9 bytes are taken");
    }

    #[test]
    fn the_default_body_limit_fits_the_default_record_limit() {
        let c = Config::from_toml(MINIMAL).unwrap();
        assert_eq!(c.kafka.max_record_bytes(), 1_000_000);
        assert!(c.server.max_body_bytes <= c.kafka.max_record_bytes());
        let text = format!("[server]\nmax_body_bytes = 1000001\n{MINIMAL}");
        let e = Config::from_toml(&text).expect_err("over librdkafka's default");
        assert!(
            e.problems.iter().any(|p| p.key == "server.max_body_bytes"),
            "{e}"
        );
    }

    #[test]
    fn every_problem_is_reported_with_its_key() {
        let text = r#"
[server]
listen = "nowhere"

[sources.eduzz]
path = "webhooks"
format = "json"
auth = { type = "hmac-sha256", secrets = [] }

[[routes]]
match = "nutror.[*"
topic = "bad topic {slug}"

[[routes]]
match = "*"
source = "ghost"
"#;
        let err = Config::from_toml(text).unwrap_err();
        let keys: Vec<&str> = err.problems.iter().map(|p| p.key.as_str()).collect();
        for expected in [
            "server.listen",
            "sources.eduzz.path",
            "sources.eduzz.slug_pointer",
            "sources.eduzz.auth.secrets",
            "routes[0].match",
            "routes[0].topic",
            "routes[1].source",
            "routes[1].topic",
        ] {
            assert!(keys.contains(&expected), "{expected} missing from {keys:?}");
        }
    }

    #[test]
    fn every_unknown_key_is_named_with_a_hint() {
        let text = format!(
            "{MINIMAL}\n[server]\nlisten_addr = \"x\"\n[delivery]\nakc = \"spooled\"\n[[routes]]\nmatch = \"*\"\ntopik = \"t\"\n"
        );
        let err = Config::from_toml(&text).unwrap_err();
        let problems: Vec<String> = err.problems.iter().map(|p| p.to_string()).collect();
        assert!(
            problems
                .contains(&"server.listen_addr: unknown key; did you mean 'listen'?".to_string()),
            "{problems:?}"
        );
        assert!(
            problems.contains(&"delivery.akc: unknown key; did you mean 'ack'?".to_string()),
            "{problems:?}"
        );
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with("routes.0.topik: unknown key; did you mean 'topic'?")),
            "{problems:?}"
        );
        // The rule without a topic is reported in the same run.
        assert!(
            problems.iter().any(|p| p.starts_with("routes[0].topic:")),
            "{problems:?}"
        );
    }

    /// `text` with each `"env:NAME"` secret written out as a literal: what the config would
    /// be with those variables set, without setting them (`set_var` races with every other
    /// test reading the environment).
    fn with_literal_secrets(text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(at) = rest.find("\"env:") {
            out.push_str(&rest[..at]);
            let after = &rest[at + 1..];
            let end = after.find('"').expect("a quoted env: reference ends");
            out.push_str("\"literal-for-test\"");
            rest = &after[end + 1..];
        }
        out.push_str(rest);
        out
    }

    fn example_config() -> String {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/example.toml");
        let text = std::fs::read_to_string(path).unwrap();
        assert!(
            text.contains("\"env:EDUZZ_WEBHOOK_SECRET\""),
            "secrets come from the environment"
        );
        with_literal_secrets(&text)
    }

    #[test]
    fn the_example_config_documents_only_known_keys() {
        Config::from_toml(&example_config()).unwrap_or_else(|e| panic!("{e}"));
    }

    /// Every key path of a TOML document, except below the maps whose keys are names
    /// (`sources.NAME`, `kafka.properties`).
    fn key_paths(table: &toml::Table, prefix: &[String], out: &mut Vec<Vec<String>>) {
        for (key, value) in table {
            let mut path = prefix.to_vec();
            path.push(key.clone());
            let named = matches!(path.as_slice(), [a] if a == "sources")
                || matches!(path.as_slice(), [a, b] if a == "kafka" && b == "properties");
            if !named {
                out.push(path.clone());
            }
            match value {
                toml::Value::Table(t) if named => {
                    for (name, v) in t {
                        if let toml::Value::Table(inner) = v {
                            let mut p = path.clone();
                            p.push(name.clone());
                            key_paths(inner, &p, out);
                        }
                    }
                }
                toml::Value::Table(t) => key_paths(t, &path, out),
                toml::Value::Array(items) => {
                    for (i, v) in items.iter().enumerate() {
                        if let toml::Value::Table(t) = v {
                            let mut p = path.clone();
                            p.push(i.to_string());
                            key_paths(t, &p, out);
                        }
                    }
                }
                _ => {}
            }
        }
    }

    /// The table (or array element) that holds the last key of `path`.
    fn parent<'v>(root: &'v mut toml::Value, path: &[String]) -> &'v mut toml::Table {
        let mut node = root;
        for step in &path[..path.len() - 1] {
            node = match node {
                toml::Value::Array(items) => &mut items[step.parse::<usize>().unwrap()],
                toml::Value::Table(t) => t.get_mut(step).unwrap(),
                other => panic!("{path:?} runs through {other:?}"),
            };
        }
        node.as_table_mut().unwrap()
    }

    #[test]
    fn every_documented_key_is_known_and_a_typo_of_each_is_named() {
        let text = example_config();
        Config::from_toml(&text).unwrap_or_else(|e| panic!("{e}"));
        let doc: toml::Table = toml::from_str(&text).unwrap();
        let mut paths = Vec::new();
        key_paths(&doc, &[], &mut paths);
        assert!(paths.len() > 40, "{} keys", paths.len());
        for path in &paths {
            let key = path.last().unwrap();
            // Two one-letter typos: the last letter dropped, the first one changed.
            let first = if key.starts_with('x') { "z" } else { "x" };
            for typo in [
                key[..key.len() - 1].to_string(),
                format!("{first}{}", &key[1..]),
            ] {
                let mut wrong = toml::Value::Table(doc.clone());
                let table = parent(&mut wrong, path);
                let value = table.remove(key).unwrap();
                table.insert(typo.clone(), value);
                let err = Config::from_toml(&toml::to_string(&wrong).unwrap())
                    .err()
                    .unwrap_or_else(|| panic!("{path:?} as '{typo}' was accepted"));
                let named = err.problems.iter().any(|p| {
                    p.message.contains(&format!("did you mean '{key}'?"))
                        || p.message.contains(&format!("missing field `{key}`"))
                });
                assert!(named, "{path:?} as '{typo}': {err}");
            }
        }
    }

    #[test]
    fn token_auth_needs_a_place() {
        let text = r#"
[sources.toolzz]
path = "/webhooks/toolzz"
format = "toolzz"
auth = { type = "token", tokens = ["abc"] }
"#;
        let err = Config::from_toml(text).unwrap_err();
        assert_eq!(err.problems[0].key, "sources.toolzz.auth");
    }

    #[test]
    fn property_values_render_as_librdkafka_expects() {
        let text = format!(
            "{MINIMAL}\n[kafka.properties]\n\"linger.ms\" = 7\n\"enable.ssl.certificate.verification\" = false\n\"compression.type\" = \"zstd\"\n"
        );
        let c = Config::from_toml(&text).unwrap();
        let p = c
            .kafka
            .connect("localhost:9092")
            .producer_config(c.delivery.producer_tuning());
        assert_eq!(p.get("linger.ms"), Some("7"));
        assert_eq!(p.get("enable.ssl.certificate.verification"), Some("false"));
        assert_eq!(p.get("compression.type"), Some("zstd"));
    }
}
