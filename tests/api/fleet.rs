//! Many replicas, one copy of each event: three bridge processes behind no balancer (the test
//! is the balancer), one broker, one Redis as the shared dedupe index. Every test counts what
//! was acknowledged and what arrived on Kafka. Loopback only, bounded in count and time.

use crate::harness::{Test, Tool};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::process::BridgeProcess;
use crate::common::redis_server::TestRedis;
use crate::common::*;
use eduzz_kafka_bridge::source::auth::sign_hex;

const TOPIC: &str = "fleet.events";
const SLUG: &str = "myeduzz.invoice_paid";

/// Three replicas, each with a spool of its own, sharing `broker` and `redis`.
struct Fleet {
    broker: TestBroker,
    redis: TestRedis,
    replicas: Vec<BridgeProcess>,
    client: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Fleet {
    /// Starts `n` replicas with a claim lease of `lease`; `env[i]` goes to replica `i`. Redis
    /// may take up to a quarter of the lease per round trip before it is bypassed: on a loaded
    /// two-core machine running debug builds, a shorter timeout makes bypasses (and so
    /// duplicates) the tests would blame on the protocol.
    fn start(n: usize, lease: &str, env: &[&[(&str, &str)]]) -> Option<Fleet> {
        let redis = TestRedis::start()?;
        let broker = TestBroker::start();
        let dir = tempfile::tempdir().unwrap();
        let extra = format!(
            "[default_route]\ntopic = \"{TOPIC}\"\n\n[dedupe]\nshared = \"{}\"\nlease = \"{lease}\"\nshared_timeout = \"{}ms\"\n",
            redis.url(),
            humantime::parse_duration(lease).unwrap().as_millis() / 4
        );
        let replicas = (0..n)
            .map(|i| {
                let spool = dir.path().join(format!("spool-{i}"));
                let config = dir.path().join(format!("bridge-{i}.toml"));
                let text = without_provisioning(config_text(broker.bootstrap(), &spool, &extra));
                std::fs::write(&config, text).unwrap();
                BridgeProcess::start_with_env(&config, env.get(i).copied().unwrap_or_default())
            })
            .collect();
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        Some(Fleet {
            broker,
            redis,
            replicas,
            client,
            _dir: dir,
        })
    }

    fn url(&self, replica: usize) -> String {
        format!("http://{}/webhooks/eduzz", self.replicas[replica].addr)
    }

    /// Posts the signed event `id` to `replica`: the status and body, or `None` without an
    /// answer.
    async fn post(&self, replica: usize, id: &str) -> Option<(u16, serde_json::Value)> {
        post(&self.client, &self.url(replica), id).await
    }

    /// Every replica's `shared_dedupe` metrics, for failure messages.
    async fn claims(&self) -> String {
        let mut out = String::new();
        for r in &self.replicas {
            let url = format!("http://{}/metrics", r.admin);
            let text = self.client.get(url).send().await.unwrap().text().await;
            for line in text.unwrap().lines() {
                if line.starts_with("eduzz_bridge_shared_dedupe") {
                    out.push_str(line);
                    out.push('\n');
                }
            }
        }
        out
    }

    /// The value of one series of `replica`'s `/metrics`, named with its labels as printed.
    async fn metric(&self, replica: usize, series: &str) -> Option<f64> {
        let url = format!("http://{}/metrics", self.replicas[replica].admin);
        let text = self.client.get(url).send().await.ok()?.text().await.ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    /// Reads the topic until `expected` events arrived (and a little longer, for extras).
    async fn published(&self, expected: usize) -> HashMap<String, usize> {
        for r in &self.replicas {
            wait_spool_empty(r.admin, Duration::from_secs(60)).await;
        }
        let records = self
            .broker
            .read_topic(TOPIC, expected, Duration::from_secs(60))
            .await;
        id_counts(&records)
    }
}

async fn post(client: &reqwest::Client, url: &str, id: &str) -> Option<(u16, serde_json::Value)> {
    let body = eduzz_event(id, SLUG);
    let resp = client
        .post(url)
        .header("content-type", "application/json")
        .header("x-signature", sign_hex(SECRET.as_bytes(), &body))
        .body(body)
        .send()
        .await
        .ok()?;
    let status = resp.status().as_u16();
    Some((status, resp.json().await.unwrap_or_default()))
}

/// Posts `id` to `url` until it is answered 2xx (a 503 `in_progress` says another replica
/// holds a live claim); the answer's `status` field.
async fn post_until_taken(client: &reqwest::Client, url: &str, id: &str) -> String {
    let started = Instant::now();
    loop {
        if let Some((code, body)) = post(client, url, id).await {
            if (200..300).contains(&code) {
                return body["status"].as_str().unwrap_or_default().to_string();
            }
            assert_eq!(code, 503, "{id}: {body}");
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{id} not taken in 60 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn assert_once(counts: &HashMap<String, usize>, ids: &HashSet<String>) {
    let missing: Vec<_> = ids.iter().filter(|id| !counts.contains_key(*id)).collect();
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        missing.is_empty(),
        "{} lost: {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    assert!(
        twice.is_empty(),
        "{} published more than once: {:?}",
        twice.len(),
        &twice[..twice.len().min(10)]
    );
    assert_eq!(counts.len(), ids.len(), "only the posted events arrived");
}

async fn the_same_event_posted_to_every_replica_is_published_once() {
    let Some(fleet) = Fleet::start(3, "30s", &[]) else {
        return;
    };
    let mut ids = HashSet::new();
    // In parallel: one replica takes it; the others see its claim (503) or its mark.
    for n in 0..20 {
        let id = format!("parallel-{n}");
        let posts = (0..3).map(|r| fleet.post(r, &id));
        let mut statuses = Vec::new();
        for answer in futures_util::future::join_all(posts).await {
            let (code, body) = answer.unwrap();
            statuses.push((code, body["status"].as_str().unwrap_or("").to_string()));
            if code == 503 {
                assert_eq!(body["error"], "in_progress", "{body}");
            }
        }
        let accepted = statuses.iter().filter(|(_, s)| s == "accepted").count();
        assert_eq!(accepted, 1, "{id}: {statuses:?}");
        assert!(
            statuses
                .iter()
                .all(|(c, s)| (*c == 200 && s == "accepted") || *c == 503 || s == "duplicate"),
            "{id}: {statuses:?}"
        );
        // A retry of every replica after the first answer: a duplicate everywhere.
        for r in 0..3 {
            assert_eq!(
                post_until_taken(&fleet.client, &fleet.url(r), &id).await,
                "duplicate"
            );
        }
        ids.insert(id);
    }
    // One after another: the first replica takes it, the others call it a duplicate.
    for n in 0..20 {
        let id = format!("sequential-{n}");
        let answers: Vec<_> = [n % 3, (n + 1) % 3, (n + 2) % 3].into_iter().collect();
        let mut statuses = Vec::new();
        for r in answers {
            let (code, body) = fleet.post(r, &id).await.unwrap();
            statuses.push((code, body["status"].as_str().unwrap_or("").to_string()));
        }
        assert_eq!(statuses[0], (200, "accepted".to_string()), "{id}");
        assert_eq!(statuses[1], (200, "duplicate".to_string()), "{id}");
        assert_eq!(statuses[2], (200, "duplicate".to_string()), "{id}");
        ids.insert(id);
    }
    assert_once(&fleet.published(ids.len()).await, &ids);
    // Every event is marked "taken" in the index, by the replica that took it.
    let marks = fleet.redis.entries();
    assert_eq!(marks.len(), ids.len(), "{marks:?}");
    assert!(
        marks.iter().all(|(_, v)| v.starts_with("taken:")),
        "{marks:?}"
    );
}

async fn a_replica_killed_after_claiming_leaves_the_event_to_a_retry_elsewhere() {
    // Replica 0 holds every event for a minute after claiming it (the fault point
    // `delivery::after_claim`, compiled into test builds only):
    // it is killed in that window, as a crash between claim and answer.
    let pause: &[(&str, &str)] = &[("FAILPOINTS", "delivery::after_claim=return(60000)")];
    let Some(mut fleet) = Fleet::start(2, "6s", &[pause]) else {
        return;
    };
    let (client, url) = (fleet.client.clone(), fleet.url(0));
    let stuck = tokio::spawn(async move { post(&client, &url, "crash-1").await });
    let started = Instant::now();
    while !fleet
        .redis
        .entries()
        .iter()
        .any(|(_, v)| v.starts_with("lease:"))
    {
        assert!(started.elapsed() < Duration::from_secs(10), "no claim made");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    fleet.replicas.remove(0).kill();
    assert!(
        stuck.await.unwrap().is_none(),
        "the killed replica answered"
    );

    // While the dead replica's claim lives, the retry is refused, never taken nor a duplicate.
    let (code, body) = fleet.post(0, "crash-1").await.unwrap();
    assert_eq!(
        (code, &body["error"]),
        (503, &"in_progress".into()),
        "{body}"
    );
    // Once it expired, the retry is taken.
    let status = post_until_taken(&fleet.client, &fleet.url(0), "crash-1").await;
    assert_eq!(status, "accepted");
    assert!(
        started.elapsed() >= Duration::from_secs(5),
        "taken only after the lease expired"
    );
    let ids = HashSet::from(["crash-1".to_string()]);
    let counts = fleet.published(1).await;
    assert_once(&counts, &ids);
}

/// What happened to one event of a load run.
#[derive(Debug, Clone, Default)]
struct Sent {
    /// The replica that took it first.
    replica: usize,
    /// When its retry on another replica was answered, and whether that answer took it
    /// again (`accepted`) rather than calling it a duplicate.
    retry: Option<(Instant, bool)>,
}

/// Posts `count` distinct events from `workers` tasks, event `i` to replica `i % 3`; every
/// fifth is retried on another replica after its answer. Stops early when `until` passes.
async fn load(
    urls: Arc<Vec<String>>,
    prefix: &'static str,
    count: usize,
    workers: usize,
    until: Instant,
) -> HashMap<String, Sent> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let tasks: Vec<_> = (0..workers)
        .map(|w| {
            let (client, urls) = (client.clone(), urls.clone());
            tokio::spawn(async move {
                let mut sent = HashMap::new();
                for i in (w..count).step_by(workers) {
                    if Instant::now() >= until {
                        break;
                    }
                    let id = format!("{prefix}-{i}");
                    let replica = i % urls.len();
                    post_until_taken(&client, &urls[replica], &id).await;
                    let retry = match i % 5 == 0 {
                        true => {
                            let other = (replica + 1 + (i / 5) % 2) % urls.len();
                            let status = post_until_taken(&client, &urls[other], &id).await;
                            Some((Instant::now(), status == "accepted"))
                        }
                        false => None,
                    };
                    sent.insert(id, Sent { replica, retry });
                }
                sent
            })
        })
        .collect();
    let mut all = HashMap::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

async fn ten_thousand_events_over_three_replicas_with_retries_arrive_exactly_once() {
    let Some(fleet) = Fleet::start(3, "10s", &[]) else {
        return;
    };
    let urls = Arc::new((0..3).map(|r| fleet.url(r)).collect::<Vec<_>>());
    let deadline = Instant::now() + Duration::from_secs(300);
    let sent = load(urls, "many", 10_000, 24, deadline).await;
    assert_eq!(sent.len(), 10_000, "every event was posted in time");
    let retried_and_taken: Vec<_> = sent
        .iter()
        .filter(|(_, s)| s.retry.is_some_and(|(_, taken)| taken))
        .map(|(id, _)| id)
        .collect();
    assert!(
        retried_and_taken.is_empty(),
        "retries on another replica taken again: {:?}; {}",
        &retried_and_taken[..retried_and_taken.len().min(10)],
        fleet.claims().await
    );
    let ids: HashSet<String> = sent.keys().cloned().collect();
    assert_once(&fleet.published(ids.len()).await, &ids);
}

async fn redis_stopped_and_restarted_under_load_loses_nothing() {
    let Some(mut fleet) = Fleet::start(3, "10s", &[]) else {
        return;
    };
    let urls = Arc::new((0..3).map(|r| fleet.url(r)).collect::<Vec<_>>());
    let started = Instant::now();
    let run = tokio::spawn(load(
        urls.clone(),
        "gap",
        usize::MAX,
        6,
        started + Duration::from_secs(7),
    ));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let stopped = Instant::now();
    fleet.redis.stop();
    tokio::time::sleep(Duration::from_secs(2)).await;
    fleet.redis.resume();
    let resumed = Instant::now();
    let sent = run.await.unwrap();
    assert!(sent.len() > 300, "the load ran: {} events", sent.len());

    // Nothing acknowledged is lost. An event arrives twice only where a replica answered
    // its retry "accepted", and that happens only while the index was bypassed: from the
    // outage until Redis answered again (its pause is at most 5 s).
    let ids: HashSet<String> = sent.keys().cloned().collect();
    let expected: usize = sent.values().map(|s| 1 + copies_of_retry(s)).sum();
    let counts = fleet.published(expected).await;
    for (id, s) in &sent {
        assert_eq!(
            counts.get(id),
            Some(&(1 + copies_of_retry(s))),
            "{id}: {s:?}"
        );
        if let Some((at, true)) = s.retry {
            assert!(
                at >= stopped && at <= resumed + Duration::from_secs(6),
                "{id} taken twice outside the outage: {:?} after the start",
                at - started
            );
        }
    }
    assert_eq!(counts.len(), ids.len(), "only the posted events arrived");
    let twice = sent.values().filter(|s| copies_of_retry(s) == 1).count();
    eprintln!(
        "{} events, {} retried, {} taken twice during the outage",
        sent.len(),
        sent.values().filter(|s| s.retry.is_some()).count(),
        twice
    );

    // Once Redis answers again, the events taken during the outage are marked too: a late
    // retry of any event, on a replica that did not take it, is a duplicate.
    for r in &fleet.replicas {
        wait_reachable(&fleet.client, r.admin).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    for (id, s) in &sent {
        let other = (s.replica + 2) % 3;
        let status = post_until_taken(&fleet.client, &urls[other], id).await;
        assert_eq!(status, "duplicate", "{id}: {s:?}");
    }
    let after = fleet.published(expected).await;
    assert_eq!(after, counts, "late retries published nothing");
}

/// 1 when the event's retry was taken again (a second copy is expected), else 0.
fn copies_of_retry(s: &Sent) -> usize {
    usize::from(s.retry.is_some_and(|(_, taken)| taken))
}

/// Waits until the replica at `admin` reports the shared index reachable.
async fn wait_reachable(client: &reqwest::Client, admin: std::net::SocketAddr) {
    let started = Instant::now();
    loop {
        let metrics = client
            .get(format!("http://{admin}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if metrics
            .lines()
            .any(|l| l == "eduzz_bridge_shared_dedupe_reachable 1")
        {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "Redis not reachable again"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits up to `limit` for `done`, polling; whether it came true.
async fn eventually(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let started = Instant::now();
    while !done() {
        if started.elapsed() > limit {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    true
}

/// Redis commands run by the test, as words.
type Commands<'a> = &'a [&'a [&'a str]];

/// Replica 0 takes five events while Redis refuses writes with `code` (after `refuse`), and
/// keeps refusing long enough for the kept marks to be retried and refused again; then Redis
/// is healed (`heal`). The refused marks must be written once Redis takes them: each event's
/// retry on replica 1 is then a duplicate, and each event is on Kafka once. While refused,
/// the marks are counted, the gauge an alert watches says so, and one line is logged.
async fn marks_refused_until_healed(
    prefix: &str,
    code: &str,
    refuse: Commands<'_>,
    heal: Commands<'_>,
) {
    let Some(mut fleet) = Fleet::start(2, "8s", &[]) else {
        return;
    };
    for words in refuse {
        fleet.redis.query(words).expect("Redis takes the command");
    }
    let ids: Vec<String> = (0..5).map(|n| format!("{prefix}-{n}")).collect();
    for id in &ids {
        let status = post_until_taken(&fleet.client, &fleet.url(0), id).await;
        assert_eq!(status, "accepted", "{id}");
    }
    // Five claims and five marks refused, then the kept marks' first retry.
    let retried = eventually(Duration::from_secs(10), || fleet.redis.errors(code) >= 15).await;
    assert!(
        retried,
        "Redis refused {} commands",
        fleet.redis.errors(code)
    );
    let pending = fleet
        .metric(0, "eduzz_bridge_shared_dedupe_marks_pending")
        .await;
    let refused = (fleet.metric(
        0,
        "eduzz_bridge_shared_dedupe_total{result=\"mark_refused\"}",
    ))
    .await;
    for words in heal {
        fleet.redis.query(words).expect("Redis takes the command");
    }
    let marked = eventually(Duration::from_secs(10), || {
        let marks = fleet.redis.entries();
        marks
            .iter()
            .filter(|(_, v)| v.starts_with("taken:"))
            .count()
            == ids.len()
    })
    .await;
    let other = fleet.url(1);
    let retries = futures_util::future::join_all(
        ids.iter()
            .map(|id| post_until_taken(&fleet.client, &other, id)),
    )
    .await;
    assert!(
        retries.iter().all(|s| s == "duplicate"),
        "retries on replica 1 after Redis healed: {retries:?} (all marks written: {marked}); {}",
        fleet.claims().await
    );
    let all: HashSet<String> = ids.iter().cloned().collect();
    assert_once(&fleet.published(all.len()).await, &all);
    assert_eq!(pending, Some(5.0), "marks pending while refused");
    assert_eq!(refused, Some(5.0), "marks refused, each counted once");
    let after = fleet
        .metric(0, "eduzz_bridge_shared_dedupe_marks_pending")
        .await;
    assert_eq!(after, Some(0.0), "marks pending once healed");
    let logs = fleet.replicas[0].drain_logs();
    let errors = error_lines(&logs);
    assert_eq!(
        errors.len(),
        1,
        "one error line for the episode: {errors:#?}"
    );
    assert!(errors[0].contains(code), "{}", errors[0]);
    let healed = logs
        .iter()
        .filter(|l| l.contains("takes shared dedupe writes again"));
    assert_eq!(healed.count(), 1, "{logs:#?}");
    fleet.replicas.clear();
}

async fn marks_refused_by_a_redis_at_maxmemory_are_written_once_it_has_room() {
    marks_refused_until_healed(
        "oom",
        "OOM",
        &[
            &["CONFIG", "SET", "maxmemory-policy", "noeviction"],
            &["CONFIG", "SET", "maxmemory", "1"],
        ],
        &[&["CONFIG", "SET", "maxmemory", "0"]],
    )
    .await;
}

async fn marks_refused_by_a_read_only_redis_are_written_once_it_is_primary_again() {
    // A replica of a master that does not answer: read-only, as a demoted primary after a
    // failover, until it is made a primary again.
    let nowhere = free_port().to_string();
    let demote: &[&str] = &["REPLICAOF", "127.0.0.1", &nowhere];
    marks_refused_until_healed(
        "readonly",
        "READONLY",
        &[demote],
        &[&["REPLICAOF", "NO", "ONE"]],
    )
    .await;
}

async fn redis_dropping_connections_under_load_publishes_nothing_twice() {
    let Some(fleet) = Fleet::start(3, "10s", &[]) else {
        return;
    };
    let urls = Arc::new((0..3).map(|r| fleet.url(r)).collect::<Vec<_>>());
    let run = tokio::spawn(load(
        urls,
        "kill",
        usize::MAX,
        6,
        Instant::now() + Duration::from_secs(6),
    ));
    // Every 0.3 s Redis drops every client's connection (each bridge's among them).
    let mut killed = 0;
    while !run.is_finished() {
        tokio::time::sleep(Duration::from_millis(300)).await;
        if let Some(redis::Value::Int(n)) = fleet.redis.query(&["CLIENT", "KILL", "TYPE", "normal"])
        {
            killed += n;
        }
    }
    let sent = run.await.unwrap();
    assert!(sent.len() > 300, "the load ran: {} events", sent.len());
    assert!(killed >= 10, "connections killed: {killed}");
    let retried = sent.values().filter(|s| s.retry.is_some()).count();
    let taken_again: Vec<_> = sent
        .iter()
        .filter(|(_, s)| s.retry.is_some_and(|(_, taken)| taken))
        .map(|(id, _)| id)
        .collect();
    let claims = fleet.claims().await;
    eprintln!(
        "{} events, {retried} retried, {killed} connections killed, {} taken twice\n{claims}",
        sent.len(),
        taken_again.len()
    );
    assert!(
        taken_again.is_empty(),
        "{} of {retried} retries on another replica taken again: {:?}; {claims}",
        taken_again.len(),
        &taken_again[..taken_again.len().min(10)]
    );
    let ids: HashSet<String> = sent.keys().cloned().collect();
    assert_once(&fleet.published(ids.len()).await, &ids);
    // A reconnect is not an outage: counted as one, with no error logged.
    let mut reconnects = 0.0;
    for r in 0..3 {
        let series = "eduzz_bridge_shared_dedupe_reconnects_total{reason=\"dropped\"}";
        reconnects += fleet.metric(r, series).await.unwrap_or(0.0);
        let logs = fleet.replicas[r].drain_logs();
        let errors = error_lines(&logs);
        assert!(errors.is_empty(), "replica {r}: {errors:#?}");
    }
    assert!(
        reconnects >= 3.0,
        "reconnects counted: {reconnects}; {claims}"
    );
}

/// This file's tests, as the harness (tests/api/main.rs) runs them.
pub(crate) fn tests() -> Vec<Test> {
    vec![
        Test::tokio(
            "the_same_event_posted_to_every_replica_is_published_once",
            the_same_event_posted_to_every_replica_is_published_once,
        )
        .needs(Tool::Redis),
        Test::tokio(
            "a_replica_killed_after_claiming_leaves_the_event_to_a_retry_elsewhere",
            a_replica_killed_after_claiming_leaves_the_event_to_a_retry_elsewhere,
        )
        .needs(Tool::Redis),
        Test::tokio(
            "ten_thousand_events_over_three_replicas_with_retries_arrive_exactly_once",
            ten_thousand_events_over_three_replicas_with_retries_arrive_exactly_once,
        )
        .needs(Tool::Redis),
        Test::tokio(
            "redis_stopped_and_restarted_under_load_loses_nothing",
            redis_stopped_and_restarted_under_load_loses_nothing,
        )
        .needs(Tool::Redis),
        Test::tokio(
            "marks_refused_by_a_redis_at_maxmemory_are_written_once_it_has_room",
            marks_refused_by_a_redis_at_maxmemory_are_written_once_it_has_room,
        )
        .needs(Tool::Redis),
        Test::tokio(
            "marks_refused_by_a_read_only_redis_are_written_once_it_is_primary_again",
            marks_refused_by_a_read_only_redis_are_written_once_it_is_primary_again,
        )
        .needs(Tool::Redis),
        Test::tokio(
            "redis_dropping_connections_under_load_publishes_nothing_twice",
            redis_dropping_connections_under_load_publishes_nothing_twice,
        )
        .needs(Tool::Redis),
    ]
}
