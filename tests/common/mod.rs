//! Test harness: a Kafka-protocol broker, the bridge on a random port, and a reader that
//! fetches what landed on a topic.
#![allow(dead_code)]

pub mod load;
pub mod process;
pub mod tansu;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use eduzz_kafka_bridge::app::{Application, StopHandle};
use eduzz_kafka_bridge::config::Settings;
use eduzz_kafka_bridge::source::auth::sign_hex;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

pub const SECRET: &str = "test-secret";
pub const OLD_SECRET: &str = "old-secret";
pub const TOKEN: &str = "test-token";

/// Sources as the tests use them: Eduzz signed with two live secrets, Toolzz with a path token.
pub const SOURCES: &str = r#"
[sources.eduzz]
path = "/webhooks/eduzz"
format = "eduzz"
auth = { type = "hmac-sha256", secrets = ["test-secret", "old-secret"] }

[sources.toolzz]
path = "/webhooks/toolzz/{token}"
format = "toolzz"
auth = { type = "token", tokens = ["test-token"] }
"#;

/// The payload fixtures: `../shared/fixtures` beside the repository (the originals), or the
/// copies in `examples/payloads` on a clone made elsewhere.
pub fn fixtures_dir() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let shared = root.join("../shared/fixtures");
    if shared.is_dir() {
        shared
    } else {
        root.join("examples/payloads")
    }
}

/// Every fixture: (file name, raw bytes).
pub fn fixtures() -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(fixtures_dir())
        .expect("the fixtures directory exists")
        .map(|e| {
            let path = e.unwrap().path();
            (
                path.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&path).unwrap(),
            )
        })
        .collect();
    out.sort();
    assert!(
        out.len() >= 5,
        "expected the shared fixtures, found {}",
        out.len()
    );
    out
}

pub fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(fixtures_dir().join(name)).unwrap()
}

/// An Eduzz-envelope event written from the docs' shape.
pub fn eduzz_event(id: &str, slug: &str) -> Vec<u8> {
    serde_json::to_vec_pretty(&serde_json::json!({
        "id": id,
        "event": slug,
        "data": {
            "producer": {"email": "fulano@eduzz.com", "name": "Fulano da Silva"},
            "learner": {"email": "learner@eduzz.com", "name": "Ciclano da Silva"},
            "course": {"hash": "4bba1d18c02755a13ee97521ae61958c3cf9e665", "title": "Título do Curso"},
            "createdAt": "2024-02-29T14:33:02Z"
        },
        "sentDate": "2024-02-29T14:33:02.020Z"
    }))
    .unwrap()
}

/// A running bridge inside the test process.
pub struct TestApp {
    pub addr: std::net::SocketAddr,
    pub admin: std::net::SocketAddr,
    pub brokers: String,
    pub client: reqwest::Client,
    pub stop: StopHandle,
    pub task: tokio::task::JoinHandle<anyhow::Result<()>>,
    pub spool_dir: PathBuf,
    /// The TLS certificate reloader, when the config turns TLS on.
    pub tls: Option<std::sync::Arc<eduzz_kafka_bridge::http::tls::ReloadingCert>>,
    _dir: Option<tempfile::TempDir>,
}

/// The config text for a bridge on random ports with `brokers`, a spool in `spool_dir`,
/// and `extra` TOML appended (routes, [delivery], …).
pub fn config_text(brokers: &str, spool_dir: &std::path::Path, extra: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
shutdown_grace = "5s"

[admin]
listen = "127.0.0.1:0"

[kafka]
brokers = "{brokers}"

[spool]
dir = "{spool}"
{SOURCES}
{extra}
"#,
        spool = spool_dir.display()
    )
}

impl TestApp {
    /// Starts the bridge against `brokers` with `extra` config.
    pub async fn spawn(brokers: &str, extra: &str) -> TestApp {
        let dir = tempfile::tempdir().unwrap();
        let spool_dir = dir.path().join("spool");
        let mut app = Self::spawn_in(brokers, &spool_dir, extra).await;
        app._dir = Some(dir);
        app
    }

    /// Starts the bridge with a config text edited by `edit` (e.g. to add [server] keys).
    pub async fn spawn_with(brokers: &str, edit: impl FnOnce(String) -> String) -> TestApp {
        let dir = tempfile::tempdir().unwrap();
        let spool_dir = dir.path().join("spool");
        let text = edit(config_text(brokers, &spool_dir, ""));
        let mut app = Self::start(&text, &spool_dir).await;
        app._dir = Some(dir);
        app
    }

    /// Starts the bridge with its spool in `spool_dir` (kept by the caller, for restarts).
    pub async fn spawn_in(brokers: &str, spool_dir: &std::path::Path, extra: &str) -> TestApp {
        Self::start(&config_text(brokers, spool_dir, extra), spool_dir).await
    }

    async fn start(text: &str, spool_dir: &std::path::Path) -> TestApp {
        let settings = Settings::from_toml(text).unwrap_or_else(|e| panic!("{e}"));
        let brokers = settings
            .kafka
            .brokers
            .clone()
            .expect("tests name their broker");
        // EKB_TEST_LOG=debug shows the bridge's logs while debugging a test.
        if let Ok(filter) = std::env::var("EKB_TEST_LOG") {
            eduzz_kafka_bridge::telemetry::init(&eduzz_kafka_bridge::config::LogSettings {
                filter,
                ..Default::default()
            });
        }
        let app = Application::build(settings)
            .await
            .expect("the bridge starts");
        let addr = app.webhook_addr();
        let admin = app.admin_addr().unwrap();
        let stop = app.stop_handle();
        let tls = app.tls_reloader();
        let task = tokio::spawn(app.run_until_stopped());
        TestApp {
            addr,
            admin,
            brokers,
            client: reqwest::Client::new(),
            stop,
            task,
            spool_dir: spool_dir.to_path_buf(),
            tls,
            _dir: None,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Posts `body` to the Eduzz source, signed with `secret`.
    pub async fn post_eduzz(&self, body: &[u8], secret: &str) -> reqwest::Response {
        self.client
            .post(self.url("/webhooks/eduzz"))
            .header("content-type", "application/json")
            .header("x-signature", sign_hex(secret.as_bytes(), body))
            .body(body.to_vec())
            .send()
            .await
            .unwrap()
    }

    pub async fn post_toolzz(&self, body: &[u8], token: &str) -> reqwest::Response {
        self.client
            .post(self.url(&format!("/webhooks/toolzz/{token}")))
            .header("content-type", "application/json")
            .body(body.to_vec())
            .send()
            .await
            .unwrap()
    }

    /// Stops the bridge the way SIGTERM does and waits for it.
    pub async fn shutdown(self) {
        self.stop.stop();
        self.task.await.unwrap().unwrap();
    }
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
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| String::from_utf8(v.clone()).unwrap())
    }
}

/// Reads `topic` from the beginning until `expected` messages arrived, then `linger` more
/// to catch extras, or until `timeout`. Returns what was read.
pub async fn read_topic(
    brokers: &str,
    topic: &str,
    expected: usize,
    timeout: Duration,
) -> Vec<Record> {
    let (brokers, topic) = (brokers.to_string(), topic.to_string());
    tokio::task::spawn_blocking(move || read_topic_blocking(&brokers, &topic, expected, timeout))
        .await
        .unwrap()
}

pub fn read_topic_blocking(
    brokers: &str,
    topic: &str,
    expected: usize,
    timeout: Duration,
) -> Vec<Record> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "bridge-tests")
        .set("enable.auto.commit", "false")
        .set("allow.auto.create.topics", "true")
        .create()
        .unwrap();
    let started = Instant::now();
    let partitions = loop {
        let n = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(2))
            .ok()
            .and_then(|md| {
                md.topics()
                    .iter()
                    .find(|t| t.name() == topic && t.error().is_none())
                    .map(|t| t.partitions().len())
            })
            .unwrap_or(0);
        if n > 0 {
            break n;
        }
        if started.elapsed() > timeout {
            return Vec::new();
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions as i32 {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut out = Vec::new();
    // After the expected count, keep reading a little to catch duplicates.
    let linger = Duration::from_millis(500);
    let mut reached: Option<Instant> = None;
    while started.elapsed() < timeout {
        if out.len() >= expected {
            let t = *reached.get_or_insert_with(Instant::now);
            if t.elapsed() >= linger {
                break;
            }
        }
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            out.push(Record {
                topic: m.topic().to_string(),
                partition: m.partition(),
                offset: m.offset(),
                key: m.key().map(|k| k.to_vec()),
                headers: m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec()))
                            .collect()
                    })
                    .unwrap_or_default(),
                value: m.payload().unwrap_or_default().to_vec(),
            });
        }
    }
    out
}

/// Whether `topic` stays empty for `wait` (for "nothing was published" checks).
pub async fn assert_topic_empty(brokers: &str, topic: &str, wait: Duration) {
    let records = read_topic(brokers, topic, 1, wait).await;
    assert!(
        records.is_empty(),
        "{topic} should be empty, has {records:?}"
    );
}

/// Polls the admin `/metrics` until the spool is empty.
pub async fn wait_spool_empty(admin: std::net::SocketAddr, timeout: Duration) {
    let started = Instant::now();
    let client = reqwest::Client::new();
    loop {
        if let Ok(resp) = client.get(format!("http://{admin}/metrics")).send().await {
            let text = resp.text().await.unwrap_or_default();
            if text.lines().any(|l| l == "eduzz_bridge_spool_depth 0") {
                return;
            }
        }
        assert!(
            started.elapsed() < timeout,
            "the spool did not empty within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// How often each event id appears on the topic.
pub fn id_counts(records: &[Record]) -> std::collections::HashMap<String, usize> {
    let mut counts = std::collections::HashMap::new();
    for r in records {
        *counts.entry(r.header("event-id").unwrap()).or_insert(0) += 1;
    }
    counts
}

/// Every acknowledged id arrived exactly once, and nothing else arrived.
pub fn assert_exactly_once(records: &[Record], acked: &std::collections::HashSet<String>) {
    let counts = id_counts(records);
    let missing: Vec<&String> = acked
        .iter()
        .filter(|id| !counts.contains_key(*id))
        .collect();
    let duplicated: Vec<(&String, &usize)> = counts.iter().filter(|(_, n)| **n > 1).collect();
    let unexpected: Vec<&String> = counts.keys().filter(|id| !acked.contains(*id)).collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged events lost: {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    assert!(duplicated.is_empty(), "duplicates: {duplicated:?}");
    assert!(
        unexpected.is_empty(),
        "events never acknowledged arrived: {unexpected:?}"
    );
}
