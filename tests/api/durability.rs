//! "Acknowledged means safe": fault tests. Each counts what was acknowledged and what arrived
//! on Kafka, and fails on any difference. All traffic is on loopback and bounded in time.

use crate::harness::Test;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::common::process::BridgeProcess;
use crate::common::*;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

const TOPIC: &str = "fault.events";
const ROUTE: &str = "[default_route]\ntopic = \"fault.events\"\n";

async fn broker_down_under_load_loses_nothing_and_duplicates_nothing() {
    let app = TestApp::spawn(ROUTE).await;

    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(load::run(
        app.url("/webhooks/eduzz"),
        "down",
        "nutror.lesson_watched",
        8,
        usize::MAX,
        Duration::from_secs(6),
        stop.clone(),
    ));
    tokio::time::sleep(Duration::from_secs(1)).await;
    app.broker().down();
    tokio::time::sleep(Duration::from_secs(3)).await;
    // While Kafka is away the spool keeps taking events: ready, and answering 200 (accepted).
    let ready = reqwest::get(format!("http://{}/readyz", app.admin))
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    app.broker().up();
    let result = load.await.unwrap();

    assert!(
        result.acked.len() > 100,
        "load ran: {} acked",
        result.acked.len()
    );
    assert!(
        result.refused.is_empty(),
        "nothing refused during the outage: {:?}",
        &result.refused[..result.refused.len().min(5)]
    );
    app.wait_spool_empty(Duration::from_secs(60)).await;
    let records = app
        .read_topic(TOPIC, result.acked.len(), Duration::from_secs(60))
        .await;
    assert_exactly_once(&records, &result.acked_set());
    app.shutdown().await;
}

async fn sigkill_under_load_then_restart_delivers_every_acknowledged_event() {
    let broker = TestBroker::start();
    let brokers = broker.bootstrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bridge.toml");
    std::fs::write(
        &config,
        without_provisioning(config_text(brokers, &dir.path().join("spool"), ROUTE)),
    )
    .unwrap();

    let mut first = BridgeProcess::start(&config);
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(load::run(
        format!("http://{}/webhooks/eduzz", first.addr),
        "kill",
        "myeduzz.invoice_paid",
        16,
        usize::MAX,
        Duration::from_secs(20),
        stop.clone(),
    ));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    first.kill();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let before = load.await.unwrap();
    assert!(
        before.acked.len() > 100,
        "load ran before the kill: {}",
        before.acked.len()
    );

    // Restart on the same spool, and keep sending.
    let second = BridgeProcess::start(&config);
    let after = load::send(
        format!("http://{}/webhooks/eduzz", second.addr),
        "after",
        "myeduzz.invoice_paid",
        4,
        50,
    )
    .await;
    assert_eq!(after.acked.len(), 200);
    wait_spool_empty(second.admin, Duration::from_secs(60)).await;

    let mut acked: HashSet<String> = before.acked_set();
    acked.extend(after.acked_set());
    let unacked: HashSet<String> = before
        .failed
        .iter()
        .chain(before.refused.iter().map(|(id, _)| id))
        .cloned()
        .collect();
    let records = broker
        .read_topic(TOPIC, acked.len(), Duration::from_secs(60))
        .await;
    assert_acked_once_and_nothing_stray(&id_counts(&records), &acked, &unacked);
    let logs = second.drain_logs();
    assert!(
        error_lines(&logs).is_empty(),
        "no errors after the restart:\n{}",
        logs.join("\n")
    );
}

/// SIGKILLs under load, one after another on the same spool (`KILLS` times, each after a
/// different stretch of load): whatever was acknowledged before any kill is on Kafka exactly
/// once at the end, and nothing arrived that was never sent.
async fn sigkill_in_a_loop_under_load_loses_nothing_and_duplicates_nothing() {
    const KILLS: usize = 50;
    let (broker, dir) = bridge_dir();
    let config = dir.path().join("bridge.toml");
    let mut sent = load::LoadResult::default();
    for round in 0..KILLS {
        let mut bridge = BridgeProcess::start(&config);
        let stop = Arc::new(AtomicBool::new(false));
        let (url, until) = (
            format!("http://{}/webhooks/eduzz", bridge.addr),
            stop.clone(),
        );
        let load = tokio::spawn(async move {
            let prefix = format!("loop{round}");
            let slug = "myeduzz.invoice_paid";
            load::run(
                url,
                &prefix,
                slug,
                8,
                usize::MAX,
                Duration::from_secs(10),
                until,
            )
            .await
        });
        // Kills land at different points of the commit, publish and delete cycle.
        tokio::time::sleep(Duration::from_millis(100 + 37 * (round as u64 % 9))).await;
        bridge.kill();
        stop.store(true, Ordering::Relaxed);
        sent.merge(load.await.unwrap());
    }
    assert!(
        sent.acked.len() > KILLS * 20,
        "load ran: {}",
        sent.acked.len()
    );
    let last = BridgeProcess::start(&config);
    wait_spool_empty(last.admin, Duration::from_secs(120)).await;
    let acked = sent.acked_set();
    let unacked: HashSet<String> = sent
        .failed
        .iter()
        .chain(sent.refused.iter().map(|(id, _)| id))
        .cloned()
        .collect();
    let records = broker
        .read_topic(TOPIC, acked.len(), Duration::from_secs(60))
        .await;
    eprintln!(
        "{KILLS} kills: {} acknowledged, {} unanswered, {} records",
        acked.len(),
        unacked.len(),
        records.len()
    );
    assert_acked_once_and_nothing_stray(&id_counts(&records), &acked, &unacked);
}

/// Every acknowledged event is on Kafka once, and nothing arrived that was never sent (an
/// event sent but not acknowledged may or may not have made it).
fn assert_acked_once_and_nothing_stray(
    counts: &HashMap<String, usize>,
    acked: &HashSet<String>,
    unacked: &HashSet<String>,
) {
    let lost: Vec<&String> = acked
        .iter()
        .filter(|id| !counts.contains_key(*id))
        .collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged events lost: {:?}",
        lost.len(),
        &lost[..lost.len().min(10)]
    );
    let acked_twice: Vec<_> = counts
        .iter()
        .filter(|(id, n)| **n > 1 && acked.contains(*id))
        .collect();
    assert!(
        acked_twice.is_empty(),
        "acknowledged events duplicated: {acked_twice:?}"
    );
    let stray: Vec<_> = counts
        .keys()
        .filter(|id| !acked.contains(*id) && !unacked.contains(*id))
        .collect();
    assert!(stray.is_empty(), "events never sent arrived: {stray:?}");
}

async fn a_full_spool_answers_503_loses_nothing_and_recovers() {
    // Room for a few dozen events only.
    let app = TestApp::spawn_with(|t| {
        format!(
            "{}{ROUTE}",
            t.replace("[spool]\n", "[spool]\nmax_bytes = 40000\n")
        )
    })
    .await;
    let admin = app.admin;
    let client = reqwest::Client::new();

    app.broker().down();
    let mut acked = HashSet::new();
    let mut first_refusal = None;
    for i in 0..500 {
        let id = format!("full-{i}");
        let body = eduzz_event(&id, "nutror.lesson_saved");
        let resp = app.post_eduzz(&body, SECRET).await;
        match resp.status().as_u16() {
            200 => {
                acked.insert(id);
            }
            503 => {
                assert!(
                    resp.headers().contains_key("retry-after"),
                    "503 carries Retry-After"
                );
                let answer: serde_json::Value = resp.json().await.unwrap();
                assert_eq!(answer["error"], "busy");
                first_refusal = Some(i);
                break;
            }
            other => panic!("unexpected status {other}"),
        }
    }
    let refused_at = first_refusal.expect("the spool fills up and refuses");
    assert!(refused_at > 5, "a few events fit first ({refused_at})");
    let ready = client
        .get(format!("http://{admin}/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503, "not ready while the spool is full");
    let body: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(body["spool"], "full");

    // Kafka comes back: the spool drains and new events are taken again.
    app.broker().up();
    wait_spool_empty(admin, Duration::from_secs(60)).await;
    let id = "full-after".to_string();
    let body = eduzz_event(&id, "nutror.lesson_saved");
    assert_eq!(app.post_eduzz(&body, SECRET).await.status(), 200);
    acked.insert(id);
    let ready = client
        .get(format!("http://{admin}/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);

    wait_spool_empty(admin, Duration::from_secs(60)).await;
    let records = app
        .read_topic(TOPIC, acked.len(), Duration::from_secs(30))
        .await;
    assert_exactly_once(&records, &acked);
    app.shutdown().await;
}

async fn injected_broker_errors_cause_no_loss_and_no_duplicates() {
    // librdkafka's mock broker checks idempotent sequence numbers only for transactional
    // producers (rd_kafka_mock_validate_records), so when an injected error fails one request
    // it still appends the pipelined request behind it, leaving a gap that a real broker
    // refuses with OUT_OF_ORDER_SEQUENCE_NUMBER; librdkafka then (rightly, for a real broker)
    // takes the later success as proof of the earlier batch. One request in flight per
    // connection keeps the mock from creating gaps, so this test sees real retry behaviour.
    let app = TestApp::spawn(&format!(
        "{ROUTE}\n[kafka.properties]\n\"max.in.flight.requests.per.connection\" = 1\n"
    ))
    .await;

    use RDKafkaRespErr::*;
    let errors: Vec<RDKafkaRespErr> = [
        RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
        RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
        RD_KAFKA_RESP_ERR_LEADER_NOT_AVAILABLE,
        RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS,
    ]
    .into_iter()
    .cycle()
    .take(40)
    .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(load::run(
        app.url("/webhooks/eduzz"),
        "errs",
        "blinket.attendance_checkin",
        8,
        300,
        Duration::from_secs(15),
        stop,
    ));
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        app.broker()
            .cluster()
            .request_errors(RDKafkaApiKey::Produce, &errors);
    }
    let result = load.await.unwrap();
    assert_eq!(
        result.acked.len(),
        2400,
        "every request taken: {:?}",
        &result.refused[..result.refused.len().min(5)]
    );
    app.wait_spool_empty(Duration::from_secs(60)).await;
    let records = app
        .read_topic(TOPIC, result.acked.len(), Duration::from_secs(60))
        .await;
    assert_exactly_once(&records, &result.acked_set());
    assert_eq!(
        app.metric("eduzz_bridge_published_total{topic=\"fault.events\"}")
            .await,
        Some(2400.0)
    );
    app.shutdown().await;
}

async fn the_same_delivery_twice_and_after_a_restart_is_published_once() {
    let body = fixture("nutror.module_completed.json");

    let app = TestApp::spawn(ROUTE).await;
    let first = app.post_eduzz(&body, SECRET).await;
    assert_eq!(first.status(), 200);
    // Eduzz retries (its own timeout, say): the same bytes again, concurrently too.
    let (a, b) = tokio::join!(app.post_eduzz(&body, SECRET), app.post_eduzz(&body, SECRET));
    for resp in [a, b] {
        assert_eq!(resp.status(), 200);
        let answer: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(answer["status"], "duplicate");
        assert_eq!(answer["id"], "uufzv5xh659yhlc8hwj386ftf");
    }
    // Two copies racing each other: only one gets in.
    let race = eduzz_event("race-1", "nutror.module_completed");
    let (a, b) = tokio::join!(app.post_eduzz(&race, SECRET), app.post_eduzz(&race, SECRET));
    assert_eq!((a.status().as_u16(), b.status().as_u16()), (200, 200));
    let (a, b): (serde_json::Value, serde_json::Value) =
        (a.json().await.unwrap(), b.json().await.unwrap());
    let mut statuses = [a["status"].clone(), b["status"].clone()];
    statuses.sort_by_key(|s| s.to_string());
    assert_eq!(statuses, ["accepted", "duplicate"]);

    // After a restart the dedupe memory is still there.
    let app = app.restart().await;
    let again = app.post_eduzz(&body, SECRET).await;
    assert_eq!(again.status(), 200);
    let answer: serde_json::Value = again.json().await.unwrap();
    assert_eq!(answer["status"], "duplicate");
    let fresh = eduzz_event("fresh-1", "nutror.module_completed");
    assert_eq!(app.post_eduzz(&fresh, SECRET).await.status(), 200);
    app.wait_spool_empty(Duration::from_secs(30)).await;

    let records = app.read_topic(TOPIC, 3, Duration::from_secs(30)).await;
    let acked: HashSet<String> = ["uufzv5xh659yhlc8hwj386ftf", "race-1", "fresh-1"]
        .into_iter()
        .map(String::from)
        .collect();
    assert_exactly_once(&records, &acked);
    let original = records
        .iter()
        .find(|r| r.header("event-id").as_deref() == Some("uufzv5xh659yhlc8hwj386ftf"))
        .unwrap();
    assert_eq!(original.value, body);
    app.shutdown().await;
}

async fn events_kafka_refuses_for_good_go_to_the_dead_letter_topic_or_stay_spooled() {
    let routes = r#"
[[routes]]
match = "nutror.*"
topic = "forbidden.topic"

[delivery]
dead_letter_topic = "bridge.dead-letters"
"#;
    let app = TestApp::spawn(routes).await;
    app.broker()
        .cluster()
        .topic_error(
            "forbidden.topic",
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED,
        )
        .unwrap();
    let body = eduzz_event("dlq-1", "nutror.enrollment_created");
    assert_eq!(app.post_eduzz(&body, SECRET).await.status(), 200);
    let records = app
        .read_topic("bridge.dead-letters", 1, Duration::from_secs(60))
        .await;
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].value, body);
    assert_eq!(
        records[0].header("dlq-original-topic").as_deref(),
        Some("forbidden.topic")
    );
    assert!(records[0]
        .header("dlq-reason")
        .unwrap()
        .to_lowercase()
        .contains("authoriz"));
    assert_eq!(records[0].header("event-id").as_deref(), Some("dlq-1"));
    app.wait_spool_empty(Duration::from_secs(30)).await;

    // Without a dead-letter topic the event stays in the spool and is reported.
    let routes = "[[routes]]\nmatch = \"nutror.*\"\ntopic = \"forbidden.topic\"\n";
    let app = app.respawn(routes).await;
    let body = eduzz_event("parked-1", "nutror.enrollment_created");
    assert_eq!(app.post_eduzz(&body, SECRET).await.status(), 200);
    let mut parked = false;
    for _ in 0..300 {
        let text = app.metrics().await;
        if text.contains("eduzz_bridge_parked 1") {
            assert!(text.contains("eduzz_bridge_spool_depth 1"), "{text}");
            parked = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        parked,
        "the refused event is parked in the spool and reported"
    );
    app.shutdown().await;
}

async fn spool_stats_and_drain_work_while_the_bridge_is_stopped() {
    let broker = TestBroker::start();
    let brokers = broker.bootstrap();
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let config = dir.path().join("bridge.toml");
    std::fs::write(
        &config,
        without_provisioning(config_text(brokers, &spool, ROUTE))
            .replace("shutdown_grace = \"5s\"", "shutdown_grace = \"1s\""),
    )
    .unwrap();
    let cli = |args: &[&str]| {
        let out = bridge()
            .arg("--config")
            .arg(&config)
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };

    // Kafka is down: events wait in the spool, and stay there when the bridge stops.
    broker.down();
    let mut bridge = BridgeProcess::start(&config);
    let (code, _, err) = tokio::task::block_in_place(|| cli(&["spool", "stats"]));
    assert_ne!(
        code,
        Some(0),
        "stats refuses while the bridge holds the spool"
    );
    assert!(err.contains("in use"), "{err}");
    let result = load::send(
        format!("http://{}/webhooks/eduzz", bridge.addr),
        "stopped",
        "alpaclass.student_created",
        4,
        25,
    )
    .await;
    assert_eq!(result.acked.len(), 100);
    // A client in the middle of a request holds the listener for the whole grace period.
    let mut slow = tokio::net::TcpStream::connect(bridge.addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(
        &mut slow,
        b"POST /webhooks/eduzz HTTP/1.1\r\ncontent-length: 10\r\n\r\n{",
    )
    .await
    .unwrap();
    let stopping = std::time::Instant::now();
    assert!(
        bridge.terminate().success(),
        "SIGTERM exits 0 even with events unpublished"
    );
    // The grace period (1 s) bounds the whole stop, the stalled drain included.
    // (Before one deadline covered every step, listeners and drain took a grace each: 2.3 s.)
    let took = stopping.elapsed();
    assert!(took < Duration::from_millis(1800), "stop took {took:?}");
    drop(slow);

    let (code, out, err) = tokio::task::block_in_place(|| cli(&["spool", "stats"]));
    assert_eq!(code, Some(0), "{err}");
    let stats: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(stats["depth"], 100, "{stats}");
    assert!(stats["oldest_age_seconds"].as_f64().unwrap() > 0.0);

    // Kafka is back: `spool drain` publishes the backlog and exits 0 with an empty spool.
    broker.up();
    let (code, out, err) = tokio::task::block_in_place(|| cli(&["spool", "drain"]));
    assert_eq!(code, Some(0), "{out}{err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["left"], 0, "{report}");
    let records = broker.read_topic(TOPIC, 100, Duration::from_secs(30)).await;
    assert_exactly_once(&records, &result.acked_set());
}

/// A tmpfs of `size` mounted on a fresh directory, unmounted on drop: a small disk that fills.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> SmallDisk {
        let dir = tempfile::tempdir().unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("mount runs");
        assert!(
            status.success(),
            "mounting a tmpfs needs root (CI runs as root): {status:?}"
        );
        SmallDisk { dir }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.dir.path())
            .status();
    }
}

async fn a_full_disk_answers_503_loses_nothing_and_the_spool_heals_without_a_restart() {
    // No free-space reserve: the filesystem really fills and commits fail (ENOSPC).
    small_disk_fills_then_heals(0, "unwritable").await;
}

async fn a_free_space_reserve_refuses_events_before_the_disk_is_full() {
    // A reserve of half the disk: events are refused before any write fails.
    small_disk_fills_then_heals(1536 * 1024, "full").await;
}

/// Fills a spool on a 3 MiB filesystem while Kafka is down, then brings Kafka back: 503s
/// while full (readiness says `spool_state`), nothing acknowledged lost, and the spool takes
/// events again by itself, in the room the published events left inside its file (the
/// filesystem stays full). Whether a file filled to the last byte kept a few free pages for
/// redb's first delete was luck (spool format 3 fits one more 8 KiB event on this disk than
/// format 2, and then could not delete at all): the spool's ballast (1 MiB, `spool.ballast`)
/// is given up at the first commit the full disk refuses, and that room is what heals it.
async fn small_disk_fills_then_heals(min_free: u64, spool_state: &str) {
    let disk = SmallDisk::mount("3m");
    let spool = disk.dir.path().join("spool");
    // The spool's own limit is far away: the filesystem fills first.
    let app = TestApp::spawn_with(|t| {
        let t = t.replace(
            "[spool]\ndir = ",
            &format!(
                "[spool]\ndir = \"{}\"\nmax_bytes = 1073741824\nmin_free_bytes = {min_free}\n# was: ",
                spool.display()
            ),
        );
        format!("{t}{ROUTE}")
    })
    .await;
    app.broker().down();
    let padding = "x".repeat(8 * 1024);
    let event = |id: &str| {
        let mut doc: serde_json::Value =
            serde_json::from_slice(&eduzz_event(id, "nutror.lesson_saved")).unwrap();
        doc["data"]["padding"] = serde_json::Value::String(padding.clone());
        serde_json::to_vec(&doc).unwrap()
    };
    let mut acked = HashSet::new();
    let mut refused = false;
    for i in 0..2000 {
        let id = format!("disk-{i}");
        let resp = app.post_eduzz(&event(&id), SECRET).await;
        match resp.status().as_u16() {
            200 => {
                acked.insert(id);
            }
            503 => {
                assert!(resp.headers().contains_key("retry-after"));
                refused = true;
                break;
            }
            other => panic!("unexpected status {other}"),
        }
    }
    assert!(refused, "the disk fills up and requests are refused");
    assert!(
        acked.len() > 20,
        "events fit before it did: {}",
        acked.len()
    );
    let (status, body) = app.ready().await;
    assert_eq!((status, body["spool"].as_str()), (503, Some(spool_state)));

    // Kafka comes back: the backlog drains, and the spool takes events again by itself.
    app.broker().up();
    let mut healed = false;
    for i in 0..120 {
        let id = format!("after-{i}");
        if app.post_eduzz(&event(&id), SECRET).await.status() == 200 {
            acked.insert(id);
            healed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(healed, "the spool writes again without a restart");
    app.wait_spool_empty(Duration::from_secs(60)).await;
    assert_eq!(app.ready().await.0, 200, "ready again");
    let records = app
        .read_topic(TOPIC, acked.len(), Duration::from_secs(60))
        .await;
    assert_exactly_once(&records, &acked);
    app.shutdown().await;
    drop(disk);
}

/// A broker, and a directory with a bridge's `bridge.toml` (routing to [`TOPIC`]) and the
/// place of its `spool`.
fn bridge_dir() -> (TestBroker, tempfile::TempDir) {
    let broker = TestBroker::start();
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    std::fs::write(
        dir.path().join("bridge.toml"),
        without_provisioning(config_text(broker.bootstrap(), &spool, ROUTE)),
    )
    .unwrap();
    (broker, dir)
}

/// A bridge (its own process, `bridge.toml` and `spool` in the returned directory) that took
/// `workers × per_worker` events while Kafka was away, then was SIGKILLed: they all wait in
/// its spool (in the write-ahead log: no checkpoint was due). The broker is left down.
async fn spooled_then_killed(
    prefix: &str,
    workers: usize,
    per_worker: usize,
) -> (TestBroker, tempfile::TempDir, load::LoadResult) {
    spooled_then_killed_after(prefix, (workers, per_worker), false).await
}

/// [`spooled_then_killed`], with a checkpoint first: the events are in the spool file itself,
/// for the tests that damage that file's pages. A commit more than a second after the last
/// checkpoint is one: here one more event, `<prefix>-last` (a retry would be answered as a
/// duplicate before it reached the spool's writer).
async fn checkpointed_then_killed(
    prefix: &str,
    workers: usize,
    per_worker: usize,
) -> (TestBroker, tempfile::TempDir, load::LoadResult) {
    spooled_then_killed_after(prefix, (workers, per_worker), true).await
}

async fn spooled_then_killed_after(
    prefix: &str,
    (workers, per_worker): (usize, usize),
    checkpoint: bool,
) -> (TestBroker, tempfile::TempDir, load::LoadResult) {
    let (broker, dir) = bridge_dir();
    let config = dir.path().join("bridge.toml");
    broker.down();
    let mut first = BridgeProcess::start(&config);
    let url = format!("http://{}/webhooks/eduzz", first.addr);
    let slug = "myeduzz.invoice_paid";
    let mut sent = load::send(url.clone(), prefix, slug, workers, per_worker).await;
    assert_eq!(sent.acked.len(), workers * per_worker, "all taken");
    if checkpoint {
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let id = format!("{prefix}-last");
        let answer = post_signed(&url, &eduzz_event(&id, slug)).await;
        assert_eq!(answer["status"], "accepted", "{answer}");
        sent.acked.push(id);
    }
    first.kill();
    (broker, dir, sent)
}

/// How a spool file is damaged between a SIGKILL and the next start.
#[derive(Debug, Clone, Copy)]
enum Damage {
    /// One byte cut off the end.
    CutByOne,
    /// Cut to half its length.
    CutToHalf,
    /// Emptied to zero length.
    Emptied,
}

fn damage(file: &std::path::Path, how: Damage) {
    let f = std::fs::OpenOptions::new().write(true).open(file).unwrap();
    let len = f.metadata().unwrap().len();
    match how {
        Damage::CutByOne => f.set_len(len - 1).unwrap(),
        Damage::CutToHalf => f.set_len(len / 2).unwrap(),
        Damage::Emptied => f.set_len(0).unwrap(),
    }
}

/// Every page of the spool file's B-tree zeroed (all but redb's header), as a disk that lost
/// them leaves it, after a SIGKILL: redb refuses the file, which is moved aside with its
/// segments (where the events are, see `store::segment`) and its write-ahead log, and
/// salvaged from them; the bridge serves on.
async fn zeroed_pages_of_the_index_the_bridge_serves_on_and_keeps_every_event() {
    use std::os::unix::fs::FileExt;
    let (broker, dir, before) = checkpointed_then_killed("dmg", 4, 100).await;
    let (config, spool) = (dir.path().join("bridge.toml"), dir.path().join("spool"));
    let file = spool.join("spool.redb");
    let len = std::fs::metadata(&file).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
    f.write_all_at(&vec![0u8; (len - 4096) as usize], 4096)
        .unwrap();
    broker.up();
    let second = BridgeProcess::start(&config);
    let url = format!("http://{}/webhooks/eduzz", second.addr);
    let after = load::send(url, "after", "myeduzz.invoice_paid", 2, 25).await;
    assert_eq!(after.acked.len(), 50);
    wait_spool_empty(second.admin, Duration::from_secs(60)).await;
    let records = broker
        .read_topic(TOPIC, 50 + 380, Duration::from_secs(60))
        .await;
    let counts = id_counts(&records);
    assert!(after.acked.iter().all(|id| counts.contains_key(id)));
    let kept = before.acked.iter().filter(|id| counts.contains_key(*id));
    let kept = kept.count();
    // Every one: the segments and the log hold them all.
    assert_eq!(kept, before.acked.len(), "kept");
    assert!(counts.values().all(|&n| n == 1), "published once");
}

async fn a_damaged_spool_is_moved_aside_the_bridge_serves_on_and_salvages_what_it_can() {
    let damages = [Damage::CutByOne, Damage::CutToHalf, Damage::Emptied];
    for how in damages {
        // Cut or emptied, the file is moved aside with its segments and write-ahead log, and
        // the events are salvaged from them.
        let (broker, dir, before) = spooled_then_killed("dmg", 4, 100).await;
        let (config, spool) = (dir.path().join("bridge.toml"), dir.path().join("spool"));
        damage(&spool.join("spool.redb"), how);
        broker.up();

        // It starts at once, on a fresh spool, and takes new events.
        let second = BridgeProcess::start(&config);
        let url = format!("http://{}/webhooks/eduzz", second.addr);
        let after = load::send(url, "after", "myeduzz.invoice_paid", 2, 25).await;
        assert_eq!(after.acked.len(), 50, "{how:?}");
        let damaged = admin_metric(second.admin, "eduzz_bridge_spool_damaged_files").await;
        assert_eq!(damaged, Some(1.0), "{how:?}: reported");
        let ready: serde_json::Value = reqwest::get(format!("http://{}/readyz", second.admin))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(ready["ready"], true, "{how:?}: serving on a fresh spool");
        assert_eq!(ready["spool_damaged_files"], 1, "{how:?}: {ready}");
        let moved: Vec<_> = std::fs::read_dir(&spool)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with("spool.redb.damaged-"))
            .filter(|n| !n.ends_with(".wal") && !n.ends_with(".segments"))
            .collect();
        assert_eq!(
            moved.len(),
            1,
            "{how:?}: moved aside, not deleted: {moved:?}"
        );
        let file = moved[0].trim_end_matches(".salvaged");
        let log = spool.join(format!("{file}.spool-0.wal"));
        assert!(log.exists(), "{how:?}: its write-ahead log went with it");
        let segments = spool.join(format!("{file}.segments"));
        assert!(segments.exists(), "{how:?}: its segments went with it");

        // Whatever is left of the file, the events are in its segments and log.
        let expected = 400;
        let started = std::time::Instant::now();
        let requeued = r#"eduzz_bridge_spool_salvaged_total{outcome="requeued"}"#;
        loop {
            let salvaged = std::fs::read_dir(&spool).unwrap().any(|e| {
                e.unwrap()
                    .file_name()
                    .to_string_lossy()
                    .ends_with(".salvaged")
            });
            if salvaged {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "{how:?}: salvage did not finish"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let n = admin_metric(second.admin, requeued).await.unwrap_or(0.0);
        assert!(n >= expected as f64, "{how:?}: {n} requeued");
        wait_spool_empty(second.admin, Duration::from_secs(60)).await;
        let records = broker
            .read_topic(TOPIC, 50 + expected, Duration::from_secs(30))
            .await;
        let counts = id_counts(&records);
        assert!(
            after.acked.iter().all(|id| counts.contains_key(id)),
            "{how:?}"
        );
        let salvaged = before
            .acked
            .iter()
            .filter(|id| counts.contains_key(*id))
            .count();
        assert!(salvaged >= expected, "{how:?}: {salvaged} of 400 salvaged");
        assert!(counts.values().all(|&n| n == 1), "{how:?}: published once");
        eprintln!("{how:?}: {salvaged} of 400 acknowledged events salvaged");
    }
}

async fn parked_events_wait_on_disk_not_in_memory() {
    let broker = TestBroker::start();
    broker
        .cluster()
        .topic_error(
            "forbidden.topic",
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED,
        )
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bridge.toml");
    let route = "[default_route]\ntopic = \"forbidden.topic\"\n";
    std::fs::write(
        &config,
        without_provisioning(config_text(
            broker.bootstrap(),
            &dir.path().join("spool"),
            route,
        )),
    )
    .unwrap();
    let bridge = BridgeProcess::start(&config);
    let url = format!("http://{}/webhooks/eduzz", bridge.addr);
    let client = reqwest::Client::new();
    // Warm up (the first requests allocate what any request needs), then measure.
    let pad = "x".repeat(900 * 1024);
    let body = |id: &str| {
        serde_json::to_vec(&serde_json::json!({
            "id": id, "event": "myeduzz.invoice_paid", "sentDate": "2024-02-29T14:33:02.020Z",
            "data": {"pad": pad},
        }))
        .unwrap()
    };
    let post = |id: String| {
        let (client, url, body) = (client.clone(), url.clone(), body(&id));
        async move {
            let sig = eduzz_kafka_bridge::source::auth::sign_hex(SECRET.as_bytes(), &body);
            let r = client
                .post(&url)
                .header("x-signature", sig)
                .body(body)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
        }
    };
    for i in 0..10 {
        post(format!("warm-{i}")).await;
    }
    let parked = |n: f64| async move {
        for _ in 0..600 {
            if admin_metric(bridge.admin, "eduzz_bridge_parked").await == Some(n) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("not {n} parked");
    };
    parked(10.0).await;
    let before = bridge.rss_bytes();
    // 120 more: about 108 MB of events Kafka refuses for good, and no dead-letter topic.
    for i in 0..120 {
        post(format!("big-{i}")).await;
    }
    parked(130.0).await;
    let grown = bridge.rss_bytes().saturating_sub(before);
    eprintln!(
        "RSS grew by {} MB for 108 MB of parked events",
        grown / 1_000_000
    );
    assert!(
        grown < 60_000_000,
        "parked events held in memory: RSS grew by {grown} bytes"
    );
}

async fn spool_stats_verifies_a_killed_spool_and_leaves_the_file_as_it_found_it() {
    let (broker, dir, sent) = checkpointed_then_killed("stats", 2, 50).await;
    let (config, spool) = (dir.path().join("bridge.toml"), dir.path().join("spool"));
    let file = spool.join("spool.redb");
    let before = std::fs::read(&file).unwrap();
    let stats_any = || {
        let out = bridge()
            .arg("--config")
            .arg(&config)
            .args(["spool", "stats"])
            .output()
            .unwrap();
        let found = serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap();
        (out.status.code(), found)
    };
    let stats = |expect: i32| {
        let (code, found) = stats_any();
        assert_eq!(code, Some(expect), "{found}");
        found
    };
    let found = stats(0);
    assert_eq!(found["depth"], sent.acked.len(), "{found}");
    assert_eq!(found["in_log"], 0, "checkpointed: {found}");
    assert_eq!(found["verified"], true, "{found}");
    assert_eq!(found["needed_recovery"], true, "{found}");
    assert!(
        std::fs::read(&file).unwrap() == before,
        "the file is as it was"
    );
    // Zeroed pages (every page of the B-tree: the events are in segments): the file is not
    // moved.
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
    let pages: Vec<usize> = (4096..before.len()).step_by(4096).collect();
    for &page in &pages {
        f.write_all_at(&[0u8; 4096], page as u64).unwrap();
    }
    // Found and reported, or (redb fell back to its durable commit before the newest) every
    // event still counted, in the file or in the write-ahead log.
    let (code, found) = stats_any();
    let counted = found["depth"].as_u64().unwrap_or(0) + found["in_log"].as_u64().unwrap_or(0);
    match code {
        Some(1) => assert!(found["damage"].is_string(), "{found}"),
        _ => assert_eq!(counted, sent.acked.len() as u64, "{found}"),
    }
    assert!(file.exists(), "stats moves nothing");
    // Undamaged again, the same spool serves and publishes everything.
    for &page in &pages {
        f.write_all_at(&before[page..page + 4096], page as u64)
            .unwrap();
    }
    broker.up();
    let second = BridgeProcess::start(&config);
    wait_spool_empty(second.admin, Duration::from_secs(60)).await;
    let records = broker
        .read_topic(TOPIC, sent.acked.len(), Duration::from_secs(30))
        .await;
    let counts = id_counts(&records);
    assert!(sent.acked.iter().all(|id| counts.contains_key(id)));
    assert_eq!(
        admin_metric(second.admin, "eduzz_bridge_spool_damaged_files").await,
        Some(0.0)
    );
}

/// This file's tests, as the harness (tests/api/main.rs) runs them.
pub(crate) fn tests() -> Vec<Test> {
    vec![
        Test::sync(
            "the_test_brokers_proxy_counts_kafka_frames_however_the_stream_is_cut",
            crate::common::broker::frames_are_counted_however_the_stream_is_cut,
        ),
        Test::tokio(
            "broker_down_under_load_loses_nothing_and_duplicates_nothing",
            broker_down_under_load_loses_nothing_and_duplicates_nothing,
        ),
        Test::tokio(
            "sigkill_under_load_then_restart_delivers_every_acknowledged_event",
            sigkill_under_load_then_restart_delivers_every_acknowledged_event,
        ),
        Test::tokio(
            "sigkill_in_a_loop_under_load_loses_nothing_and_duplicates_nothing",
            sigkill_in_a_loop_under_load_loses_nothing_and_duplicates_nothing,
        ),
        Test::tokio(
            "a_full_spool_answers_503_loses_nothing_and_recovers",
            a_full_spool_answers_503_loses_nothing_and_recovers,
        ),
        Test::tokio(
            "injected_broker_errors_cause_no_loss_and_no_duplicates",
            injected_broker_errors_cause_no_loss_and_no_duplicates,
        ),
        Test::tokio(
            "the_same_delivery_twice_and_after_a_restart_is_published_once",
            the_same_delivery_twice_and_after_a_restart_is_published_once,
        ),
        Test::tokio(
            "events_kafka_refuses_for_good_go_to_the_dead_letter_topic_or_stay_spooled",
            events_kafka_refuses_for_good_go_to_the_dead_letter_topic_or_stay_spooled,
        ),
        Test::tokio(
            "spool_stats_and_drain_work_while_the_bridge_is_stopped",
            spool_stats_and_drain_work_while_the_bridge_is_stopped,
        ),
        Test::tokio(
            "a_full_disk_answers_503_loses_nothing_and_the_spool_heals_without_a_restart",
            a_full_disk_answers_503_loses_nothing_and_the_spool_heals_without_a_restart,
        ),
        Test::tokio(
            "a_free_space_reserve_refuses_events_before_the_disk_is_full",
            a_free_space_reserve_refuses_events_before_the_disk_is_full,
        ),
        Test::tokio(
            "a_damaged_spool_is_moved_aside_the_bridge_serves_on_and_salvages_what_it_can",
            a_damaged_spool_is_moved_aside_the_bridge_serves_on_and_salvages_what_it_can,
        ),
        Test::tokio(
            "zeroed_pages_of_the_index_the_bridge_serves_on_and_keeps_every_event",
            zeroed_pages_of_the_index_the_bridge_serves_on_and_keeps_every_event,
        ),
        Test::tokio(
            "parked_events_wait_on_disk_not_in_memory",
            parked_events_wait_on_disk_not_in_memory,
        ),
        Test::tokio(
            "spool_stats_verifies_a_killed_spool_and_leaves_the_file_as_it_found_it",
            spool_stats_verifies_a_killed_spool_and_leaves_the_file_as_it_found_it,
        ),
    ]
}
