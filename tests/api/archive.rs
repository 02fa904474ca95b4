//! The archive, and what an operator does with it: `events find`, `replay`, `dead-letters`,
//! and the parked events through the admin listener. Real payloads in, the same bytes out.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rdkafka::types::RDKafkaRespErr;
use serde_json::Value;

use crate::common::tansu::Tansu;
use crate::common::*;
use crate::harness::{Test, Tool};

/// A config file for the operator's commands: the tests' sources, `extra` (routes, …).
fn operator_config(dir: &Path, brokers: &str, extra: &str) -> PathBuf {
    let path = dir.join(format!("operator-{}.toml", free_port()));
    std::fs::write(
        &path,
        config_text(brokers, &dir.join("unused-spool"), extra),
    )
    .unwrap();
    path
}

/// Runs the bridge's command line with `config`; its exit code and its JSON lines.
fn operator(config: &Path, args: &[&str]) -> (i32, Vec<Value>) {
    let out = bridge().arg("-c").arg(config).args(args).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    let lines = stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|_| {
                panic!("not JSON: {l}\n{}", String::from_utf8_lossy(&out.stderr))
            })
        })
        .collect();
    (out.status.code().unwrap_or(-1), lines)
}

/// Posts every fixture to its source; returns (id, slug, body) of each.
async fn post_fixtures(app: &TestApp) -> Vec<(String, String, Vec<u8>)> {
    let mut posted = Vec::new();
    for (name, body) in fixtures() {
        let doc: Value = serde_json::from_slice(&body).unwrap();
        let (resp, id, slug) = if doc["event"].is_object() {
            let slug = doc["event"]["slug"].as_str().unwrap().to_string();
            (app.post_toolzz(&body, TOKEN).await, String::new(), slug)
        } else {
            let (id, slug) = (doc["id"].as_str().unwrap(), doc["event"].as_str().unwrap());
            (
                app.post_eduzz(&body, SECRET).await,
                id.to_string(),
                slug.to_string(),
            )
        };
        assert_eq!(resp.status(), 200, "{name}");
        let answer: Value = resp.json().await.unwrap();
        let id = answer["id"].as_str().map_or(id, str::to_string);
        posted.push((id, slug, body));
    }
    posted
}

async fn a_lost_day_is_found_and_replayed_through_a_route_added_later() {
    let app = TestApp::embedded("[[routes]]\nmatch = \"nutror.learner_help\"\ndrop = true\n").await;
    let posted = post_fixtures(&app).await;
    let (first_id, _, first_body) = posted
        .iter()
        .find(|p| p.1 == "nutror.certificate_viewed")
        .unwrap()
        .clone();
    let again: Value = app
        .post_eduzz(&first_body, SECRET)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(again["status"], "duplicate");
    app.wait_spool_empty(Duration::from_secs(30)).await;
    let archived = (posted.len() + 1) as f64; // and the repeat
    wait_metric(&app, "eduzz_bridge_archived_total", archived).await;
    let dir = tempfile::tempdir().unwrap();
    let config = operator_config(dir.path(), &app.brokers, "");

    // Where did it go: the taken delivery names its topic, partition and offset; the repeat
    // says it was a duplicate.
    let (code, found) = operator(&config, &["events", "find", "--id", &first_id, "--json"]);
    assert_eq!(code, 0);
    assert_eq!(found.len(), 2, "{found:?}");
    let (taken, dup) = (&found[0]["where"], &found[1]["where"]);
    assert_eq!(
        (taken["status"].as_str(), dup["status"].as_str()),
        (Some("published"), Some("duplicate"))
    );
    assert_eq!(found[0]["rule"], "default_route");
    assert_eq!(found[0]["answer"], 200);
    let records = app
        .read_topic("nutror.certificate_viewed", 1, Duration::from_secs(10))
        .await;
    let at = records
        .iter()
        .find(|r| {
            r.partition as i64 == taken["partition"].as_i64().unwrap()
                && r.offset == taken["offset"].as_i64().unwrap()
        })
        .expect("the record find names");
    assert_eq!(at.value, first_body);
    let (_, dropped) = operator(
        &config,
        &[
            "events",
            "find",
            "--slug",
            "nutror.learner_*",
            "--from",
            "10m",
            "--to",
            "now",
            "--json",
        ],
    );
    assert_eq!(dropped.len(), 1);
    assert_eq!(dropped[0]["where"]["status"], "dropped");

    replay_through_a_new_route(&app, dir.path(), &posted, &found[0]).await;
    app.shutdown().await;
}

/// A route added since: a dry run counts and sends nothing, then `--apply` sends every
/// nutror delivery (the dropped one too: today's routes take it) at the given rate.
async fn replay_through_a_new_route(
    app: &TestApp,
    dir: &Path,
    posted: &[(String, String, Vec<u8>)],
    first: &Value,
) {
    let config = operator_config(
        dir,
        &app.brokers,
        "[[routes]]\nmatch = \"nutror.*\"\ntopic = \"lms.replayed\"\n",
    );
    let window = ["--slug", "nutror.*", "--from", "10m", "--to", "now"];
    let archive_before = app
        .read_topic("eduzz-bridge.archive", 7, Duration::from_secs(10))
        .await
        .len();
    let (code, dry) = operator(&config, &[&["replay", "--dry-run"][..], &window].concat());
    assert_eq!(code, 0);
    assert_eq!(dry[0]["by_topic"]["lms.replayed"], 4, "{dry:?}");
    assert_eq!(dry[0]["skipped"]["repeat_answered_duplicate"], 1);
    assert_topic_empty(&app.brokers, "lms.replayed", Duration::from_secs(2)).await;

    let state = dir.join("state.json");
    let args = [
        "replay",
        "--apply",
        "--rate",
        "4",
        "--replay-id",
        "r-new-team",
        "--state",
        state.to_str().unwrap(),
    ];
    let started = Instant::now();
    let (code, applied) = operator(&config, &[&args[..], &window].concat());
    assert_eq!(
        (code, applied[0]["sent"].as_u64()),
        (0, Some(4)),
        "{applied:?}"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(700),
        "--rate 4 spaces 4 sends over 3/4 s"
    );
    let replayed = app
        .read_topic("lms.replayed", 4, Duration::from_secs(10))
        .await;
    let bodies: HashSet<&Vec<u8>> = posted
        .iter()
        .filter(|p| p.1.starts_with("nutror."))
        .map(|p| &p.2)
        .collect();
    assert_eq!(replayed.len(), 4);
    for r in &replayed {
        assert!(bodies.contains(&r.value), "byte-identical values");
        assert_eq!(r.header("replay-id").as_deref(), Some("r-new-team"));
        assert!(r.header("replayed-at").is_some());
    }
    let original = replayed
        .iter()
        .find(|r| r.header("event-id").as_deref() == first["id"].as_str())
        .unwrap();
    assert_eq!(
        original.header("received-at").as_deref(),
        first["received_at"].as_str(),
        "the original headers"
    );
    let archive_after = app
        .read_topic(
            "eduzz-bridge.archive",
            archive_before + 1,
            Duration::from_secs(3),
        )
        .await
        .len();
    assert_eq!(
        archive_after, archive_before,
        "a replay never writes to the archive"
    );
}

async fn a_replay_killed_half_way_resumes_and_sends_nothing_twice() {
    let app = TestApp::spawn("").await;
    let ids: Vec<String> = (0..1500).map(|i| format!("resume-{i}")).collect();
    for chunk in ids.chunks(50) {
        let posts = chunk.iter().map(|id| {
            let body = eduzz_event(id, "nutror.lesson_started");
            let app = &app;
            async move { app.post_eduzz(&body, SECRET).await }
        });
        for r in futures_util::future::join_all(posts).await {
            assert_eq!(r.status(), 200);
        }
    }
    app.wait_spool_empty(Duration::from_secs(60)).await;
    let dir = tempfile::tempdir().unwrap();
    let config = operator_config(
        dir.path(),
        &app.brokers,
        "[[routes]]\nmatch = \"nutror.*\"\ntopic = \"lms.resumed\"\n",
    );
    let state = dir.path().join("resume.json");
    let mut child = bridge()
        .arg("-c")
        .arg(&config)
        .args([
            "replay",
            "--apply",
            "--from",
            "1h",
            "--rate",
            "600",
            "--replay-id",
            "r-resume",
            "--state",
        ])
        .arg(&state)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let sent = std::fs::read_to_string(&state)
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
            .and_then(|s| s["sent"].as_u64())
            .unwrap_or(0);
        if sent >= 500 {
            break;
        }
        assert!(Instant::now() < deadline, "no checkpoint within 30 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // SIGKILL past a checkpoint, with sends made since it (about 120 at 600/s): those are
    // what a resume must not send again.
    tokio::time::sleep(Duration::from_millis(200)).await;
    child.kill().unwrap();
    child.wait().unwrap();
    let halfway = app
        .read_topic("lms.resumed", 1500, Duration::from_secs(2))
        .await
        .len();
    assert!(
        (501..1000).contains(&halfway),
        "killed past the first checkpoint (500) and before the second: {halfway} sent"
    );

    let (code, resumed) = operator(
        &config,
        &["replay", "--apply", "--resume", state.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{resumed:?}");
    let records = app
        .read_topic("lms.resumed", 1500, Duration::from_secs(30))
        .await;
    let acked: HashSet<String> = ids.into_iter().collect();
    assert_exactly_once(&records, &acked);
    app.shutdown().await;
}

const FORBIDDEN: &str = r#"
[[routes]]
match = "nutror.*"
topic = "forbidden.topic"
"#;

async fn dead_letters_go_back_once_the_cause_is_fixed_and_only_once() {
    let routes = format!("{FORBIDDEN}\n[delivery]\ndead_letter_topic = \"bridge.dead-letters\"\n");
    let app = TestApp::spawn(&routes).await;
    let cluster = app.broker().cluster();
    cluster
        .topic_error(
            "forbidden.topic",
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED,
        )
        .unwrap();
    let bodies: Vec<Vec<u8>> = (0..3)
        .map(|i| eduzz_event(&format!("dlq-{i}"), "nutror.lesson_started"))
        .collect();
    for b in &bodies {
        assert_eq!(app.post_eduzz(b, SECRET).await.status(), 200);
    }
    app.read_topic("bridge.dead-letters", 3, Duration::from_secs(30))
        .await;
    app.wait_spool_empty(Duration::from_secs(30)).await;
    let dir = tempfile::tempdir().unwrap();
    let config = operator_config(dir.path(), &app.brokers, &routes);
    let (_, listed) = operator(&config, &["dead-letters", "list", "--reason", "uthoriz"]);
    assert_eq!(listed.len(), 3, "{listed:?}");
    assert_eq!(listed[0]["meant_for"], "forbidden.topic");

    // Redriven before the cause is fixed: refused again, back on the dead-letter topic.
    let (_, again) = operator(&config, &["dead-letters", "redrive", "--apply"]);
    assert_eq!(
        (
            again[0]["redriven"].as_u64(),
            again[0]["dead_lettered_again"].as_u64()
        ),
        (Some(0), Some(3)),
        "{again:?}"
    );
    // Fixed: each goes back once, with its attempt count.
    cluster
        .topic_error(
            "forbidden.topic",
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR,
        )
        .unwrap();
    let (code, done) = operator(&config, &["dead-letters", "redrive", "--apply"]);
    assert_eq!(
        (
            code,
            done[0]["redriven"].as_u64(),
            done[0]["already_redriven"].as_u64()
        ),
        (0, Some(3), Some(3)),
        "{done:?}"
    );
    let back = app
        .read_topic("forbidden.topic", 3, Duration::from_secs(10))
        .await;
    assert_eq!(back.len(), 3);
    for r in &back {
        assert!(bodies.contains(&r.value));
        assert_eq!(r.header("redrive-attempt").as_deref(), Some("2"));
    }
    let (_, twice) = operator(&config, &["dead-letters", "redrive", "--apply"]);
    assert_eq!(
        (
            twice[0]["redriven"].as_u64(),
            twice[0]["already_redriven"].as_u64()
        ),
        (Some(0), Some(6))
    );
    assert_eq!(
        app.read_topic("forbidden.topic", 4, Duration::from_secs(2))
            .await
            .len(),
        3,
        "nothing sent twice"
    );
    app.shutdown().await;
}

/// Two topics Kafka refuses (until told otherwise): one to redrive, one to purge.
const TWO_FORBIDDEN: &str = r#"
[[routes]]
match = "nutror.enrollment_created"
topic = "forbidden.other"

[[routes]]
match = "nutror.*"
topic = "forbidden.topic"
"#;

async fn parked_events_are_listed_redriven_and_purged_through_the_admin_listener() {
    let app = TestApp::spawn(TWO_FORBIDDEN).await;
    let cluster = app.broker().cluster();
    let forbid = |e| cluster.topic_error("forbidden.topic", e).unwrap();
    forbid(RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED);
    for id in ["parked-a", "parked-b"] {
        assert_eq!(
            app.post_eduzz(&eduzz_event(id, "nutror.lesson_started"), SECRET)
                .await
                .status(),
            200
        );
    }
    wait_metric(&app, "eduzz_bridge_parked", 2.0).await;
    let dir = tempfile::tempdir().unwrap();
    let config = operator_config(dir.path(), &app.brokers, TWO_FORBIDDEN);
    let admin = app.admin.to_string();
    let (code, listed) = operator(&config, &["parked", "list", "--admin", &admin]);
    assert_eq!((code, listed[0]["count"].as_u64()), (0, Some(2)));
    let ids: HashSet<&str> = listed[0]["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, HashSet::from(["parked-a", "parked-b"]));

    // The cause fixed, a redrive sends them now, not at the next park retry (a minute).
    forbid(RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR);
    let asked = Instant::now();
    assert_eq!(
        operator(&config, &["parked", "redrive", "--admin", &admin]).0,
        0
    );
    app.wait_spool_empty(Duration::from_secs(30)).await;
    assert!(asked.elapsed() < Duration::from_secs(30));
    assert_eq!(
        app.read_topic("forbidden.topic", 2, Duration::from_secs(10))
            .await
            .len(),
        2
    );

    // Purge: refused without --yes and with a count that is not the one parked.
    let refused = RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED;
    cluster.topic_error("forbidden.other", refused).unwrap();
    let body = eduzz_event("parked-c", "nutror.enrollment_created");
    assert_eq!(app.post_eduzz(&body, SECRET).await.status(), 200);
    wait_metric(&app, "eduzz_bridge_parked", 1.0).await;
    assert_eq!(
        operator(&config, &["parked", "purge", "--admin", &admin]).0,
        1
    );
    let wrong = app
        .client
        .post(format!("http://{admin}/parked/purge?confirm=5"))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 409);
    let (code, purged) = operator(&config, &["parked", "purge", "--yes", "--admin", &admin]);
    assert_eq!((code, purged[0]["purged"].as_u64()), (0, Some(1)));
    wait_metric(&app, "eduzz_bridge_spool_depth", 0.0).await;
    wait_metric(&app, "eduzz_bridge_parked", 0.0).await;
    app.shutdown().await;
}

async fn wait_metric(app: &TestApp, series: &str, value: f64) {
    for _ in 0..300 {
        if app.metric(series).await == Some(value) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{series} never reached {value}: {}", app.metrics().await);
}

async fn archive_find_and_replay_on_tansu() {
    let Some(tansu) = Tansu::start() else { return };
    let brokers = tansu.brokers();
    let app = TestApp::on(&brokers, "").await;
    let posted = post_fixtures(&app).await;
    app.wait_spool_empty(Duration::from_secs(60)).await;
    // The archive record goes out just before its event, on another partition: confirmed
    // a moment apart.
    wait_metric(&app, "eduzz_bridge_archived_total", posted.len() as f64).await;
    let dir = tempfile::tempdir().unwrap();
    let config = operator_config(dir.path(), &brokers, "");
    // tansu's end offsets trail a confirmed write by a moment: ask until it shows them all.
    let mut found = Vec::new();
    for _ in 0..50 {
        let (code, lines) = operator(&config, &["events", "find", "--slug", "*", "--json"]);
        assert_eq!(code, 0);
        found = lines;
        if found.len() == posted.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let published: HashMap<&str, &Value> = found
        .iter()
        .map(|f| (f["id"].as_str().unwrap(), &f["where"]))
        .collect();
    assert_eq!(published.len(), posted.len(), "{found:?}");
    assert!(
        published.values().all(|w| w["status"] == "published"),
        "{found:?}"
    );

    tansu.create_topic("lms.all", 3);
    let later = operator_config(
        dir.path(),
        &brokers,
        "[[routes]]\nmatch = \"*\"\ntopic = \"lms.all\"\n",
    );
    let (code, applied) = operator(
        &later,
        &[
            "replay",
            "--apply",
            "--from",
            "1h",
            "--state",
            dir.path().join("s.json").to_str().unwrap(),
        ],
    );
    assert_eq!(
        (code, applied[0]["sent"].as_u64()),
        (0, Some(posted.len() as u64)),
        "{applied:?}"
    );
    let replayed = read_topic(&brokers, "lms.all", posted.len(), Duration::from_secs(60)).await;
    let mut values: Vec<&Vec<u8>> = replayed.iter().map(|r| &r.value).collect();
    let mut bodies: Vec<&Vec<u8>> = posted.iter().map(|p| &p.2).collect();
    values.sort();
    bodies.sort();
    assert_eq!(values, bodies, "byte-identical values on the new topic");
    app.shutdown().await;
}

/// This file's tests, as the harness (tests/api/main.rs) runs them.
pub(crate) fn tests() -> Vec<Test> {
    vec![
        Test::tokio(
            "a_lost_day_is_found_and_replayed_through_a_route_added_later",
            a_lost_day_is_found_and_replayed_through_a_route_added_later,
        ),
        Test::tokio(
            "a_replay_killed_half_way_resumes_and_sends_nothing_twice",
            a_replay_killed_half_way_resumes_and_sends_nothing_twice,
        ),
        Test::tokio(
            "dead_letters_go_back_once_the_cause_is_fixed_and_only_once",
            dead_letters_go_back_once_the_cause_is_fixed_and_only_once,
        ),
        Test::tokio(
            "parked_events_are_listed_redriven_and_purged_through_the_admin_listener",
            parked_events_are_listed_redriven_and_purged_through_the_admin_listener,
        ),
        Test::tokio(
            "archive_find_and_replay_on_tansu",
            archive_find_and_replay_on_tansu,
        )
        .needs(Tool::Tansu),
    ]
}
