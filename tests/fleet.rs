//! Many replicas, one copy of each event: three bridge processes behind no balancer (the test
//! is the balancer), one broker, one Redis as the shared dedupe index. Every test counts what
//! was acknowledged and what arrived on Kafka. Loopback only, bounded in count and time.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::process::BridgeProcess;
use common::redis_server::TestRedis;
use common::*;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_after_claiming_leaves_the_event_to_a_retry_elsewhere() {
    // Replica 0 holds every event for a minute after claiming it (a debug-build test hook):
    // it is killed in that window, as a crash between claim and answer.
    let pause: &[(&str, &str)] = &[("EKB_TEST_PAUSE_AFTER_CLAIM_MS", "60000")];
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
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
