//! Typed settings, loaded from one TOML file with environment overrides.
//!
//! Everything the bridge does is decided here, before the first request: a config that
//! would fail at 3 a.m. should fail at start-up instead, with a message that names the key.
//! Loading happens in two steps:
//!
//! 1. [`Settings::load`] reads the file and the `EKB__…` environment variables through the
//!    `config` crate and deserialises them into the plain structs below (unknown keys are
//!    rejected).
//! 2. [`Settings::validate`] checks what serde cannot (globs, topic templates, secrets, paths)
//!    and reports *every* problem at once, each as a [`ConfigProblem`] with its key path.
//!
//! Environment overrides use the prefix `EKB` and `__` as separator, so
//! `EKB__KAFKA__BROKERS=kafka:9092` sets `kafka.brokers`.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::secret::Secret;

/// Prefix of environment variables that override the file (`EKB__SECTION__KEY`).
pub const ENV_PREFIX: &str = "EKB";
/// Separator between the prefix and the nested keys of an override.
pub const ENV_SEPARATOR: &str = "__";

/// The whole configuration of one bridge process.
#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    #[serde(default)]
    pub server: ServerSettings,
    #[serde(default)]
    pub admin: AdminSettings,
    #[serde(default)]
    pub kafka: KafkaSettings,
    #[serde(default)]
    pub delivery: DeliverySettings,
    #[serde(default)]
    pub spool: SpoolSettings,
    #[serde(default)]
    pub dedupe: DedupeSettings,
    #[serde(default)]
    pub log: LogSettings,
    /// Webhook sources by name; each owns one HTTP path.
    #[serde(default)]
    pub sources: BTreeMap<String, SourceSettings>,
    /// Ordered routing rules: the first whose glob matches the slug wins.
    #[serde(default)]
    pub routes: Vec<RouteSettings>,
    /// What happens to a slug no rule matches.
    #[serde(default)]
    pub default_route: DefaultRouteSettings,
}

/// The public webhook listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct ServerSettings {
    /// Address of the webhook listener, e.g. `0.0.0.0:8080` (port 0 picks a free port).
    pub listen: String,
    /// Largest request body accepted; larger ones get 413 without being read whole.
    pub max_body_bytes: usize,
    /// Time allowed to send a request's headers, counted from when the connection opens or the
    /// previous answer was sent: it also closes idle keep-alive connections.
    #[serde(with = "humantime_serde")]
    pub header_timeout: Duration,
    /// Largest request head (request line + headers); larger ones get 431.
    pub max_header_bytes: usize,
    /// Most webhook requests being processed at once (bodies buffered in memory); more get 503.
    pub max_in_flight_requests: usize,
    /// Peers (CIDRs) whose `X-Forwarded-For` is believed, e.g. your load balancer.
    pub trusted_proxies: Vec<String>,
    /// Serve HTTPS with these PEM files (reloaded on SIGHUP); unset: plain HTTP.
    pub tls: Option<TlsSettings>,
    /// Time allowed to receive the whole body once the headers are in.
    #[serde(with = "humantime_serde")]
    pub body_timeout: Duration,
    /// Most connections open at once; further ones wait in the kernel's backlog.
    pub max_connections: usize,
    /// Time given to in-flight requests after SIGTERM/SIGINT before the process exits.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:8080".into(),
            max_body_bytes: 1024 * 1024,
            header_timeout: Duration::from_secs(10),
            max_header_bytes: 16 * 1024,
            max_in_flight_requests: 1024,
            trusted_proxies: Vec::new(),
            tls: None,
            body_timeout: Duration::from_secs(15),
            max_connections: 4096,
            shutdown_grace: Duration::from_secs(20),
        }
    }
}

/// Certificate chain and private key for the public listener, as PEM files.
#[derive(Debug, Clone, Deserialize)]
pub struct TlsSettings {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The admin listener: `/healthz`, `/readyz`, `/metrics`. Never the public port.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct AdminSettings {
    /// Address of the admin listener; empty disables it.
    pub listen: String,
}

impl Default for AdminSettings {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9090".into(),
        }
    }
}

/// Where and how to publish.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default)]
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

/// When the bridge answers 2xx, and so what a 2xx promises.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum AckMode {
    /// Answer once the event is handed to the producer's memory queue (fast, lost on a crash).
    Received,
    /// Answer once the broker confirmed the write (slow, nothing to lose, sender waits).
    Published,
    /// Answer once the event is fsynced in the local spool (durable and fast; the default).
    #[default]
    Spooled,
}

impl AckMode {
    pub fn as_str(self) -> &'static str {
        match self {
            AckMode::Received => "received",
            AckMode::Published => "published",
            AckMode::Spooled => "spooled",
        }
    }
}

/// How events travel from the request to Kafka.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct DeliverySettings {
    pub ack: AckMode,
    /// In `published` mode: how long a request waits for the broker before 503.
    #[serde(with = "humantime_serde")]
    pub publish_timeout: Duration,
    /// Topic for events Kafka refuses for good (too large, not authorised, invalid topic).
    pub dead_letter_topic: Option<String>,
    /// In `spooled` mode: most events handed to the producer and not yet confirmed.
    pub max_in_flight: usize,
    /// In `spooled` mode, at start-up: look up the oldest spooled events on Kafka and skip
    /// those an earlier run published but could not delete (needs read access to the topics).
    pub recovery_check: bool,
}

impl Default for DeliverySettings {
    fn default() -> Self {
        Self {
            ack: AckMode::Spooled,
            publish_timeout: Duration::from_secs(10),
            dead_letter_topic: None,
            max_in_flight: 1024,
            recovery_check: true,
        }
    }
}

/// The durable spool used by `ack = "spooled"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct SpoolSettings {
    /// Directory of the spool database (created if missing).
    pub dir: PathBuf,
    /// Bytes of events the spool may hold; past that, new events get 503 + Retry-After.
    pub max_bytes: u64,
}

impl Default for SpoolSettings {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("data/spool"),
            max_bytes: 1024 * 1024 * 1024,
        }
    }
}

/// Remembering which (source, event id) pairs were already accepted.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct DedupeSettings {
    pub enabled: bool,
    /// How long an accepted id is remembered.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// Most ids remembered; the oldest are forgotten first.
    pub max_entries: u64,
}

impl Default for DedupeSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            window: Duration::from_secs(24 * 3600),
            max_entries: 1_000_000,
        }
    }
}

/// Log output.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct LogSettings {
    pub format: LogFormat,
    /// `RUST_LOG`-style filter; the `RUST_LOG` variable wins when set.
    pub filter: String,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            format: LogFormat::Pretty,
            filter: "info".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Pretty,
    Json,
}

/// The envelope a source's deliveries come in.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// `{"id", "event": "app.name", "data", "sentDate"}`
    Eduzz,
    /// `{"event": {"name", "slug", "send_at"}, "data"}`, no id (one is derived from the body).
    Toolzz,
    /// Any JSON object; slug and id found by JSON pointers.
    Json,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Eduzz => "eduzz",
            Format::Toolzz => "toolzz",
            Format::Json => "json",
        }
    }
}

/// One webhook source: a path, an envelope format and an authentication rule.
#[derive(Debug, Clone, Deserialize)]
pub struct SourceSettings {
    /// Exact HTTP path, e.g. `/webhooks/eduzz`; may end in `/{token}` for token-in-path auth.
    pub path: String,
    pub format: Format,
    /// For `format = "json"`: JSON pointer to the slug (e.g. `/type`).
    pub slug_pointer: Option<String>,
    /// For `format = "json"`: JSON pointer to the event id; unset derives one from the body.
    pub id_pointer: Option<String>,
    pub auth: AuthSettings,
    /// Publish `ping` events too (they are always answered 2xx).
    #[serde(default)]
    pub publish_ping: bool,
    /// Only these client addresses (CIDRs) may post; empty: anyone (authentication still
    /// applies). Behind a proxy, see `server.trusted_proxies`.
    #[serde(default)]
    pub allow_from: Vec<String>,
    /// Most requests of this source processed at once; unset: only the global limit.
    pub max_in_flight: Option<usize>,
}

/// How a source proves a delivery is authentic.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case", deny_unknown_fields)]
pub enum AuthSettings {
    /// Hex HMAC-SHA256 of the raw body in a header; any listed secret may match (rotation).
    HmacSha256 {
        #[serde(default = "default_signature_header")]
        header: String,
        secrets: Vec<Secret>,
    },
    /// A shared token in a header, or in the path when `path` ends in `/{token}`.
    Token {
        header: Option<String>,
        tokens: Vec<Secret>,
    },
    /// No authentication at all; must be written out on purpose.
    None,
}

fn default_signature_header() -> String {
    "x-signature".into()
}

/// One routing rule.
#[derive(Debug, Clone, Deserialize)]
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
}

/// The rule for slugs no other rule matches.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct DefaultRouteSettings {
    pub topic: String,
    pub key: Option<String>,
    pub drop: bool,
}

impl Default for DefaultRouteSettings {
    fn default() -> Self {
        Self {
            topic: "{slug}".into(),
            key: None,
            drop: false,
        }
    }
}

/// One thing wrong with a configuration, with the key it concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Every problem found in a configuration.
#[derive(Debug, Clone)]
pub struct ConfigError {
    pub source_name: String,
    pub problems: Vec<ConfigProblem>,
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

impl Settings {
    /// Reads `path` (TOML) and the `EKB__…` environment overrides, then validates.
    pub fn load(path: &Path) -> Result<Settings, ConfigError> {
        let name = path.display().to_string();
        let built = config::Config::builder()
            .add_source(config::File::from(path).format(config::FileFormat::Toml))
            .add_source(
                config::Environment::with_prefix(ENV_PREFIX)
                    .prefix_separator(ENV_SEPARATOR)
                    .separator(ENV_SEPARATOR)
                    .try_parsing(true),
            )
            .build()
            .map_err(|e| single_problem(&name, "file", e.to_string()))?;
        finish(built, name)
    }

    /// Parses TOML text (no environment), then validates. Used by tests and tools.
    pub fn from_toml(text: &str) -> Result<Settings, ConfigError> {
        let built = config::Config::builder()
            .add_source(config::File::from_str(text, config::FileFormat::Toml))
            .build()
            .map_err(|e| single_problem("<inline>", "file", e.to_string()))?;
        finish(built, "<inline>".into())
    }

    /// Checks everything serde cannot, and returns every problem found.
    pub fn validate(&self) -> Result<(), Vec<ConfigProblem>> {
        let mut problems = Vec::new();
        let mut push = |key: String, message: String| problems.push(ConfigProblem { key, message });

        if self.server.listen.parse::<SocketAddr>().is_err() {
            push(
                "server.listen".into(),
                format!(
                    "'{}' is not an address like 0.0.0.0:8080",
                    self.server.listen
                ),
            );
        }
        if !self.admin.listen.is_empty() && self.admin.listen.parse::<SocketAddr>().is_err() {
            push(
                "admin.listen".into(),
                format!(
                    "'{}' is not an address like 127.0.0.1:9090 (empty disables the admin listener)",
                    self.admin.listen
                ),
            );
        }
        if self.server.max_body_bytes == 0 {
            push(
                "server.max_body_bytes".into(),
                "must be greater than 0".into(),
            );
        }
        if self.server.max_header_bytes < 8192 {
            push(
                "server.max_header_bytes".into(),
                "must be at least 8192".into(),
            );
        }
        if self.server.max_in_flight_requests == 0 {
            push(
                "server.max_in_flight_requests".into(),
                "must be greater than 0".into(),
            );
        }
        for (i, cidr) in self.server.trusted_proxies.iter().enumerate() {
            if let Err(why) = parse_cidr(cidr) {
                push(format!("server.trusted_proxies[{i}]"), why);
            }
        }
        if let Some(tls) = &self.server.tls {
            if let Err(why) = crate::http::tls::load_certified_key(&tls.cert, &tls.key) {
                push("server.tls".into(), why);
            }
        }
        if self.server.max_connections == 0 {
            push(
                "server.max_connections".into(),
                "must be greater than 0".into(),
            );
        }
        if self.delivery.max_in_flight == 0 {
            push(
                "delivery.max_in_flight".into(),
                "must be greater than 0".into(),
            );
        }
        if let Some(brokers) = &self.kafka.brokers {
            if brokers.trim().is_empty() {
                push(
                    "kafka.brokers".into(),
                    "is empty; remove the key to use the embedded broker".into(),
                );
            }
        }
        for reserved in ["bootstrap.servers", "metadata.broker.list"] {
            if self.kafka.properties.contains_key(reserved) {
                push(
                    format!("kafka.properties.\"{reserved}\""),
                    "set kafka.brokers instead".into(),
                );
            }
        }
        if let Some(dlq) = &self.delivery.dead_letter_topic {
            if let Err(why) = crate::topic::check_topic_name(dlq) {
                push("delivery.dead_letter_topic".into(), why);
            }
        }
        if self.dedupe.enabled && self.dedupe.max_entries == 0 {
            push(
                "dedupe.max_entries".into(),
                "must be greater than 0 (or set dedupe.enabled = false)".into(),
            );
        }

        if self.sources.is_empty() {
            push(
                "sources".into(),
                "no source is configured; add e.g. [sources.eduzz]".into(),
            );
        }
        let mut paths: BTreeMap<String, &str> = BTreeMap::new();
        for (name, source) in &self.sources {
            let key = format!("sources.{name}");
            if !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                push(
                    key.clone(),
                    "source names may hold only letters, digits, '_' and '-'".into(),
                );
            }
            let path_prefix = source.path.strip_suffix("/{token}");
            if !source.path.starts_with('/') {
                push(format!("{key}.path"), "must start with '/'".into());
            } else if source.path.contains('{') && path_prefix.is_none() {
                push(
                    format!("{key}.path"),
                    "the only placeholder a path may hold is a final '/{token}'".into(),
                );
            }
            let route_path = path_prefix.unwrap_or(&source.path).to_string();
            if let Some(other) = paths.insert(route_path, name) {
                push(
                    format!("{key}.path"),
                    format!("'{}' is already the path of source '{other}'", source.path),
                );
            }
            if crate::http::is_admin_path(&source.path) {
                push(
                    format!("{key}.path"),
                    "is reserved for the admin endpoints".into(),
                );
            }
            for (i, cidr) in source.allow_from.iter().enumerate() {
                if let Err(why) = parse_cidr(cidr) {
                    push(format!("{key}.allow_from[{i}]"), why);
                }
            }
            if source.max_in_flight == Some(0) {
                push(
                    format!("{key}.max_in_flight"),
                    "must be greater than 0 (remove it for no per-source limit)".into(),
                );
            }
            match source.format {
                Format::Json => match &source.slug_pointer {
                    None => push(
                        format!("{key}.slug_pointer"),
                        "format = \"json\" needs a JSON pointer to the slug, e.g. \"/type\"".into(),
                    ),
                    Some(p) => check_pointer(&mut push, format!("{key}.slug_pointer"), p),
                },
                Format::Eduzz | Format::Toolzz => {
                    if source.slug_pointer.is_some() {
                        push(
                            format!("{key}.slug_pointer"),
                            format!(
                                "only used with format = \"json\" (the {} envelope fixes it)",
                                source.format.as_str()
                            ),
                        );
                    }
                }
            }
            if let Some(p) = &source.id_pointer {
                if source.format != Format::Json {
                    push(
                        format!("{key}.id_pointer"),
                        "only used with format = \"json\"".into(),
                    );
                }
                check_pointer(&mut push, format!("{key}.id_pointer"), p);
            }
            match &source.auth {
                AuthSettings::HmacSha256 { header, secrets } => {
                    if secrets.is_empty() {
                        push(
                            format!("{key}.auth.secrets"),
                            "needs at least one secret".into(),
                        );
                    }
                    if http::HeaderName::from_bytes(header.as_bytes()).is_err() {
                        push(
                            format!("{key}.auth.header"),
                            format!("'{header}' is not a valid header name"),
                        );
                    }
                    for (i, s) in secrets.iter().enumerate() {
                        if let Err(why) = s.check() {
                            push(format!("{key}.auth.secrets[{i}]"), why);
                        }
                    }
                    if path_prefix.is_some() {
                        push(
                            format!("{key}.path"),
                            "'/{token}' in the path needs auth.type = \"token\"".into(),
                        );
                    }
                }
                AuthSettings::Token { header, tokens } => {
                    if tokens.is_empty() {
                        push(
                            format!("{key}.auth.tokens"),
                            "needs at least one token".into(),
                        );
                    }
                    for (i, s) in tokens.iter().enumerate() {
                        if let Err(why) = s.check() {
                            push(format!("{key}.auth.tokens[{i}]"), why);
                        }
                    }
                    match (header, path_prefix) {
                        (None, None) => push(
                            format!("{key}.auth"),
                            "a token needs a place: set auth.header, or end the path in '/{token}'"
                                .into(),
                        ),
                        (Some(_), Some(_)) => push(
                            format!("{key}.auth"),
                            "set either auth.header or a '/{token}' path, not both".into(),
                        ),
                        (Some(h), None) if http::HeaderName::from_bytes(h.as_bytes()).is_err() => {
                            push(
                                format!("{key}.auth.header"),
                                format!("'{h}' is not a valid header name"),
                            )
                        }
                        _ => {}
                    }
                }
                AuthSettings::None => {
                    if path_prefix.is_some() {
                        push(
                            format!("{key}.path"),
                            "'/{token}' in the path needs auth.type = \"token\"".into(),
                        );
                    }
                }
            }
        }

        for (i, rule) in self.routes.iter().enumerate() {
            let key = format!("routes[{i}]");
            if let Err(e) = globset::Glob::new(&rule.pattern) {
                push(format!("{key}.match"), format!("bad glob: {e}"));
            }
            if let Some(source) = &rule.source {
                if !self.sources.contains_key(source) {
                    push(
                        format!("{key}.source"),
                        format!("no source is named '{source}'"),
                    );
                }
            }
            match (&rule.topic, rule.drop) {
                (None, false) => push(
                    format!("{key}.topic"),
                    "a rule needs a topic template, or drop = true".into(),
                ),
                (Some(_), true) => push(
                    format!("{key}.topic"),
                    "a rule with drop = true publishes nothing; remove the topic".into(),
                ),
                (Some(t), false) => {
                    if let Err(why) = crate::topic::Template::parse(t) {
                        push(format!("{key}.topic"), why);
                    }
                }
                (None, true) => {}
            }
            if let Some(p) = &rule.key {
                check_pointer(&mut push, format!("{key}.key"), p);
            }
        }
        if !self.default_route.drop {
            if let Err(why) = crate::topic::Template::parse(&self.default_route.topic) {
                push("default_route.topic".into(), why);
            }
        }
        if let Some(p) = &self.default_route.key {
            check_pointer(&mut push, "default_route.key".into(), p);
        }

        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }
}

/// Deserialises, collecting every unknown key, then validates; all problems in one error.
fn finish(built: config::Config, name: String) -> Result<Settings, ConfigError> {
    let mut unknown = Vec::new();
    let settings: Settings =
        serde_ignored::deserialize(built, |path| unknown.push(path.to_string()))
            .map_err(|e| single_problem(&name, &config_error_key(&e), e.to_string()))?;
    let mut problems: Vec<ConfigProblem> = unknown.iter().map(|k| unknown_key(k)).collect();
    if let Err(more) = settings.validate() {
        problems.extend(more);
    }
    if problems.is_empty() {
        Ok(settings)
    } else {
        Err(ConfigError {
            source_name: name,
            problems,
        })
    }
}

/// The keys each section knows, for "did you mean" hints. `*` stands for a source name or a
/// route's index. (A test checks that config/example.toml, which documents every key, has no
/// unknown key.)
const KNOWN_KEYS: &[(&str, &[&str])] = &[
    (
        "",
        &[
            "server",
            "admin",
            "kafka",
            "delivery",
            "spool",
            "dedupe",
            "log",
            "sources",
            "routes",
            "default_route",
        ],
    ),
    (
        "server",
        &[
            "listen",
            "max_body_bytes",
            "header_timeout",
            "body_timeout",
            "max_connections",
            "shutdown_grace",
        ],
    ),
    ("admin", &["listen"]),
    ("kafka", &["brokers", "properties"]),
    (
        "delivery",
        &[
            "ack",
            "publish_timeout",
            "dead_letter_topic",
            "max_in_flight",
            "recovery_check",
        ],
    ),
    ("spool", &["dir", "max_bytes"]),
    ("dedupe", &["enabled", "window", "max_entries"]),
    ("log", &["format", "filter"]),
    (
        "sources.*",
        &[
            "path",
            "format",
            "slug_pointer",
            "id_pointer",
            "auth",
            "publish_ping",
        ],
    ),
    ("routes.*", &["match", "source", "topic", "key", "drop"]),
    ("default_route", &["topic", "key", "drop"]),
];

fn unknown_key(path: &str) -> ConfigProblem {
    let (parent, leaf) = path.rsplit_once('.').unwrap_or(("", path));
    let section = match parent.split_once('.') {
        Some((head @ ("sources" | "routes"), _)) => format!("{head}.*"),
        _ => parent.to_string(),
    };
    let hint = KNOWN_KEYS
        .iter()
        .find(|(s, _)| *s == section)
        .and_then(|(_, keys)| {
            // A near miss: a typo (small edit distance) or a shared prefix (Jaro-Winkler).
            keys.iter()
                .map(|k| {
                    (
                        strsim::jaro_winkler(k, leaf),
                        strsim::levenshtein(k, leaf),
                        *k,
                    )
                })
                .filter(|(jw, lev, _)| *lev <= 2 || *jw >= 0.85)
                .max_by(|a, b| a.0.total_cmp(&b.0))
        })
        .map(|(_, _, k)| format!("; did you mean '{k}'?"))
        .unwrap_or_default();
    ConfigProblem {
        key: path.to_string(),
        message: format!("unknown key{hint}"),
    }
}

/// A network in CIDR notation; a bare address means just that address.
pub fn parse_cidr(text: &str) -> Result<ipnet::IpNet, String> {
    text.parse::<ipnet::IpNet>()
        .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| format!("'{text}' is not an address or a CIDR like 10.0.0.0/8"))
}

fn check_pointer(push: &mut impl FnMut(String, String), key: String, pointer: &str) {
    if !pointer.is_empty() && !pointer.starts_with('/') {
        push(
            key,
            format!(
                "'{pointer}' is not a JSON pointer (it must start with '/', e.g. \"/data/id\")"
            ),
        );
    }
}

fn single_problem(source: &str, key: &str, message: String) -> ConfigError {
    ConfigError {
        source_name: source.to_string(),
        problems: vec![ConfigProblem {
            key: key.to_string(),
            message,
        }],
    }
}

/// The key a `config` crate error is about, when it says (`… for key `server.listen``).
fn config_error_key(e: &config::ConfigError) -> String {
    let text = e.to_string();
    if let Some(start) = text.find("for key `") {
        let rest = &text[start + 9..];
        if let Some(end) = rest.find('`') {
            return rest[..end].to_string();
        }
    }
    if let Some(start) = text.find("unknown field `") {
        let rest = &text[start + 15..];
        if let Some(end) = rest.find('`') {
            return rest[..end].to_string();
        }
    }
    "file".into()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[sources.eduzz]
path = "/webhooks/eduzz"
format = "eduzz"
auth = { type = "hmac-sha256", secrets = ["s3cret"] }
"#;

    #[test]
    fn minimal_config_takes_the_defaults() {
        let s = Settings::from_toml(MINIMAL).unwrap();
        assert_eq!(s.delivery.ack, AckMode::Spooled);
        assert_eq!(s.server.max_body_bytes, 1024 * 1024);
        assert_eq!(s.default_route.topic, "{slug}");
        assert!(s.kafka.brokers.is_none());
        match &s.sources["eduzz"].auth {
            AuthSettings::HmacSha256 { header, secrets } => {
                assert_eq!(header, "x-signature");
                assert_eq!(secrets.len(), 1);
            }
            other => panic!("unexpected auth {other:?}"),
        }
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
        let err = Settings::from_toml(text).unwrap_err();
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
        let err = Settings::from_toml(&text).unwrap_err();
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

    #[test]
    fn the_example_config_documents_only_known_keys() {
        std::env::set_var("EDUZZ_WEBHOOK_SECRET", "a");
        std::env::set_var("EDUZZ_WEBHOOK_SECRET_PREVIOUS", "b");
        std::env::set_var("TOOLZZ_WEBHOOK_TOKEN", "c");
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/example.toml");
        Settings::load(&path).unwrap_or_else(|e| panic!("{e}"));
    }

    #[test]
    fn token_auth_needs_a_place() {
        let text = r#"
[sources.toolzz]
path = "/webhooks/toolzz"
format = "toolzz"
auth = { type = "token", tokens = ["abc"] }
"#;
        let err = Settings::from_toml(text).unwrap_err();
        assert_eq!(err.problems[0].key, "sources.toolzz.auth");
    }

    #[test]
    fn property_values_render_as_librdkafka_expects() {
        let text = format!(
            "{MINIMAL}\n[kafka.properties]\n\"linger.ms\" = 5\n\"enable.ssl.certificate.verification\" = false\n\"compression.type\" = \"zstd\"\n"
        );
        let s = Settings::from_toml(&text).unwrap();
        let p = &s.kafka.properties;
        assert_eq!(p["linger.ms"].to_string(), "5");
        assert_eq!(
            p["enable.ssl.certificate.verification"].to_string(),
            "false"
        );
        assert_eq!(p["compression.type"].to_string(), "zstd");
    }
}
