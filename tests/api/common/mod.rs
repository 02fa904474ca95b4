//! Test harness: [`TestApp`] owns a bridge on random ports, its broker and its spool, and
//! offers what tests need (post, readiness, metrics, read a topic back), so a test says what
//! it checks rather than how things start.

pub mod broker;
pub mod load;
pub mod otlp;
pub mod process;
pub mod redis_server;
pub mod tansu;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use eduzz_kafka_bridge::app::{Application, StopHandle};
use eduzz_kafka_bridge::config::Config;
use eduzz_kafka_bridge::http::tls::ReloadingCert;
pub use eduzz_kafka_bridge::kafka::reader::Record;
use eduzz_kafka_bridge::kafka::{reader, Cluster};
use eduzz_kafka_bridge::source::auth::sign_hex;
use eduzz_kafka_bridge::telemetry::LogSettings;
use rdkafka::consumer::BaseConsumer;
use rdkafka::Offset;

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

/// Posts `body` signed with [`SECRET`] to the Eduzz webhook at `url`, and returns the JSON
/// answer (for tests that run the bridge in its own process).
pub async fn post_signed(url: &str, body: &[u8]) -> serde_json::Value {
    reqwest::Client::new()
        .post(url)
        .header("x-signature", sign_hex(SECRET.as_bytes(), body))
        .body(body.to_vec())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// A free loopback port (bound and let go: a test's server takes it next).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Sends `request` as raw bytes on a new connection and reads the answer until the server
/// closes it or `wait` passes.
pub async fn raw(addr: std::net::SocketAddr, request: &[u8], wait: Duration) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(wait, s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Says that `tool`, which a test needs, is missing: a failure in CI (`.ci/run` installs it),
/// a skip with `how` to install it elsewhere.
pub fn skip_without(tool: &str, how: &str) {
    assert!(
        std::env::var_os("CI").is_none(),
        "{tool} is not installed: .ci/run must install it ({how})"
    );
    eprintln!("SKIPPED: {tool} is not installed ({how})");
}

/// The payload fixtures: the repository's copies (`examples/payloads`) of the documents in
/// `../shared/fixtures`, byte for byte, so a clone made anywhere runs the same tests.
/// The ERROR lines of a bridge's JSON log.
pub fn error_lines(logs: &[String]) -> Vec<&String> {
    logs.iter()
        .filter(|l| l.contains("\"level\":\"ERROR\""))
        .collect()
}

pub fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/payloads")
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

/// The bridge's binary, run from the repository root with no config from the environment.
pub fn bridge() -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_eduzz-kafka-bridge"));
    c.current_dir(env!("CARGO_MANIFEST_DIR"));
    c.env_remove("EKB_CONFIG");
    c
}

/// config/default.toml as a newcomer runs it (the embedded broker), on random ports.
pub fn default_config_on_random_ports() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/default.toml"))
        .unwrap()
        .replace("127.0.0.1:8080", "127.0.0.1:0")
        .replace("127.0.0.1:9090", "127.0.0.1:0")
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

/// A Kafka-protocol broker a test owns: librdkafka's mock cluster, in this process, behind a
/// proxy (see [`broker`]), so a test can take it down, bring it back and inject errors.
pub struct TestBroker {
    mock: broker::ProxiedMock,
    bootstrap: String,
}

impl TestBroker {
    pub fn start() -> TestBroker {
        let mock = broker::ProxiedMock::start();
        let bootstrap = mock.bootstrap();
        TestBroker { mock, bootstrap }
    }

    pub fn bootstrap(&self) -> &str {
        &self.bootstrap
    }

    /// The broker goes away (an outage): connections cut, new ones refused.
    pub fn down(&self) {
        self.mock.set_down(true);
    }

    pub fn up(&self) {
        self.mock.set_down(false);
    }

    /// Reads `topic` (see [`read_topic`]).
    pub async fn read_topic(&self, topic: &str, expected: usize, timeout: Duration) -> Vec<Record> {
        read_topic(&self.bootstrap, topic, expected, timeout).await
    }

    /// The mock cluster itself, for fault injection.
    pub fn cluster(&self) -> &broker::MockKafka {
        &self.mock.kafka
    }
}

/// A running bridge inside the test process, with everything it needs: its broker (unless it
/// runs against an external one), its spool directory, its config.
pub struct TestApp {
    pub addr: std::net::SocketAddr,
    pub admin: std::net::SocketAddr,
    pub brokers: String,
    pub client: reqwest::Client,
    pub stop: StopHandle,
    pub task: tokio::task::JoinHandle<anyhow::Result<()>>,
    /// The TLS certificate reloader, when the config turns TLS on.
    pub tls: Option<std::sync::Arc<ReloadingCert>>,
    config: String,
    broker: Option<TestBroker>,
    _dir: std::sync::Arc<tempfile::TempDir>,
}

/// `text` with `topics.provision = false` (see [`TestApp::spawn_with`]).
pub fn without_provisioning(text: String) -> String {
    match text.contains("[topics]") {
        true => text.replacen("[topics]", "[topics]\nprovision = false", 1),
        false => format!("{text}\n[topics]\nprovision = false\n"),
    }
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
    /// Starts the bridge on a broker of its own, with `extra` config.
    pub async fn spawn(extra: &str) -> TestApp {
        Self::spawn_with(|t| format!("{t}{extra}")).await
    }

    /// Starts the bridge on a broker of its own, with the config text edited by `edit` (e.g.
    /// to add [server] keys).
    ///
    /// The test broker is librdkafka's mock cluster in this process, reached by address: it
    /// has no CreateTopics API (nor a controller to send one to), so these bridges leave topics
    /// to its auto-creation (`topics.provision = false`). Provisioning is tested on the
    /// embedded broker ([`TestApp::embedded`]) and on tansu.
    pub async fn spawn_with(edit: impl FnOnce(String) -> String) -> TestApp {
        let broker = TestBroker::start();
        let dir = std::sync::Arc::new(tempfile::tempdir().unwrap());
        let text = without_provisioning(edit(config_text(
            broker.bootstrap(),
            &dir.path().join("spool"),
            "",
        )));
        Self::start(text, Some(broker), dir).await
    }

    /// Starts the bridge on the embedded broker (no `kafka.brokers`), as `serve` does with
    /// nothing else installed; `brokers` is the embedded broker's address.
    pub async fn embedded(extra: &str) -> TestApp {
        let dir = std::sync::Arc::new(tempfile::tempdir().unwrap());
        let text = config_text("", &dir.path().join("spool"), extra)
            .replace("[kafka]\nbrokers = \"\"\n", "");
        Self::start(text, None, dir).await
    }

    /// Starts the bridge against a broker in another process (tansu), with `extra` config.
    pub async fn on(brokers: &str, extra: &str) -> TestApp {
        Self::on_dir(
            brokers,
            std::sync::Arc::new(tempfile::tempdir().unwrap()),
            extra,
        )
        .await
    }

    /// Like [`TestApp::on`], with its spool in `dir/spool` (a test may fill it first).
    pub async fn on_dir(
        brokers: &str,
        dir: std::sync::Arc<tempfile::TempDir>,
        extra: &str,
    ) -> TestApp {
        let text = config_text(brokers, &dir.path().join("spool"), extra);
        Self::start(text, None, dir).await
    }

    /// Stops the bridge and starts it again: same broker, same spool, same config.
    pub async fn restart(self) -> TestApp {
        let (config, broker, dir) = self.stop_keeping().await;
        Self::start(config, broker, dir).await
    }

    /// Stops the bridge and starts a fresh one (new spool) on the same broker with `extra`.
    pub async fn respawn(self, extra: &str) -> TestApp {
        let (_, broker, _) = self.stop_keeping().await;
        let broker = broker.expect("respawn needs the app's own broker");
        let dir = std::sync::Arc::new(tempfile::tempdir().unwrap());
        let text = config_text(broker.bootstrap(), &dir.path().join("spool"), extra);
        let text = without_provisioning(text);
        Self::start(text, Some(broker), dir).await
    }

    async fn stop_keeping(
        self,
    ) -> (
        String,
        Option<TestBroker>,
        std::sync::Arc<tempfile::TempDir>,
    ) {
        self.stop.stop();
        self.task.await.unwrap().unwrap();
        (self.config, self.broker, self._dir)
    }

    async fn start(
        text: String,
        broker: Option<TestBroker>,
        dir: std::sync::Arc<tempfile::TempDir>,
    ) -> TestApp {
        let config = Config::from_toml(&text).unwrap_or_else(|e| panic!("{e}"));
        // EKB_TEST_LOG=debug shows the bridge's logs while debugging a test.
        if let Ok(filter) = std::env::var("EKB_TEST_LOG") {
            eduzz_kafka_bridge::telemetry::init(&LogSettings {
                filter,
                ..Default::default()
            });
        }
        let app = Application::build(config).await.expect("the bridge starts");
        let brokers = app.brokers().to_string();
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
            tls,
            config: text,
            broker,
            _dir: dir,
        }
    }

    /// The app's own broker.
    pub fn broker(&self) -> &TestBroker {
        self.broker
            .as_ref()
            .expect("this app runs on an external broker")
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Posts `body` to `path` with `headers`.
    pub async fn post(
        &self,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> reqwest::Response {
        let mut req = self.client.post(self.url(path)).body(body.to_vec());
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.send().await.unwrap()
    }

    /// Posts `body` to the Eduzz source, signed with `secret`.
    pub async fn post_eduzz(&self, body: &[u8], secret: &str) -> reqwest::Response {
        let signature = sign_hex(secret.as_bytes(), body);
        let headers = [
            ("content-type", "application/json"),
            ("x-signature", signature.as_str()),
        ];
        self.post("/webhooks/eduzz", &headers, body).await
    }

    pub async fn post_toolzz(&self, body: &[u8], token: &str) -> reqwest::Response {
        let path = format!("/webhooks/toolzz/{token}");
        self.post(&path, &[("content-type", "application/json")], body)
            .await
    }

    /// `GET` on the admin listener.
    pub async fn admin_get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(format!("http://{}{path}", self.admin))
            .send()
            .await
            .unwrap()
    }

    /// `/readyz`: its status and body.
    pub async fn ready(&self) -> (u16, serde_json::Value) {
        let resp = self.admin_get("/readyz").await;
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap())
    }

    /// The whole `/metrics` text.
    pub async fn metrics(&self) -> String {
        self.admin_get("/metrics").await.text().await.unwrap()
    }

    /// The value of one series, named with its labels as `/metrics` prints it
    /// (`eduzz_bridge_spool_depth`, `eduzz_bridge_published_total{topic="t"}`).
    pub async fn metric(&self, series: &str) -> Option<f64> {
        let text = self.metrics().await;
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    /// Reads `topic` from this app's broker (see [`read_topic`]).
    pub async fn read_topic(&self, topic: &str, expected: usize, timeout: Duration) -> Vec<Record> {
        read_topic(&self.brokers, topic, expected, timeout).await
    }

    /// Waits until the spool is empty (everything acknowledged is on Kafka).
    pub async fn wait_spool_empty(&self, timeout: Duration) {
        wait_spool_empty(self.admin, timeout).await
    }

    /// Stops the bridge the way SIGTERM does and waits for it.
    pub async fn shutdown(self) {
        self.stop_keeping().await;
    }
}

/// Reads `topic` from the beginning until `expected` messages arrived, then a little longer
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
    let consumer: BaseConsumer = Cluster::to(brokers)
        .reader_config("bridge-tests")
        .set("allow.auto.create.topics", "true")
        .create()
        .unwrap();
    let started = Instant::now();
    if reader::assign_all(&consumer, topic, Offset::Beginning, Some(timeout)).is_err() {
        return Vec::new();
    }
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
            out.push(Record::of(&m));
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

/// The value of one series on the admin listener at `admin` (see [`TestApp::metric`]);
/// `None` while it does not answer or has no such series.
pub async fn admin_metric(admin: std::net::SocketAddr, series: &str) -> Option<f64> {
    let text = reqwest::get(format!("http://{admin}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
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
    // Where each copy landed: copies in one batch of one partition are a produce request
    // appended twice; copies far apart were sent twice.
    let copies = |id: &String| -> Vec<(i32, i64)> {
        let of_id = records
            .iter()
            .filter(|r| r.header("event-id").as_ref() == Some(id));
        of_id.map(|r| (r.partition, r.offset)).collect()
    };
    let duplicated: Vec<(&String, Vec<(i32, i64)>)> = duplicated
        .into_iter()
        .map(|(id, _)| (id, copies(id)))
        .collect();
    assert!(
        duplicated.is_empty(),
        "duplicates (partition, offset of each copy): {duplicated:?}"
    );
    assert!(
        unexpected.is_empty(),
        "events never acknowledged arrived: {unexpected:?}"
    );
}
