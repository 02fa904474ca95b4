//! Topic provisioning, black-box: `serve` creates the topics it writes with the partitions
//! the routes ask for (on the embedded broker and on tansu), `topics plan` reports what is
//! missing and what drifted, `topics apply` creates what is missing and is idempotent, and a
//! provisioned topic lets a consumer group share the work.

use crate::harness::{Test, Tool};
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::common::tansu::Tansu;
use crate::common::*;
use eduzz_kafka_bridge::kafka::{reader, Cluster};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;

const WAIT: Duration = Duration::from_secs(30);

/// Partitions of `topic` on `brokers` (`None`: it does not exist).
fn partitions(brokers: &str, topic: &str) -> Option<usize> {
    let consumer: BaseConsumer = Cluster::to(brokers)
        .reader_config("topics-test")
        .create()
        .unwrap();
    reader::partitions(&consumer, topic, Duration::from_secs(5))
        .unwrap()
        .map(|p| p.len())
}

/// Runs `topics COMMAND` with `config`; (exit code, stdout).
fn topics(config: &std::path::Path, command: &str) -> (i32, String) {
    let out = bridge()
        .args(["--config"])
        .arg(config)
        .args(["topics", command])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), format!("{stdout}{stderr}"))
}

/// The line of `topic` in a plan and the lines under it.
fn section<'a>(plan: &'a str, topic: &str) -> Vec<&'a str> {
    let mut lines = plan
        .lines()
        .skip_while(|l| !l.trim_start().starts_with(&format!("{topic} ")));
    let first = lines.next().into_iter();
    first
        .chain(lines.take_while(|l| l.starts_with("    ")))
        .collect()
}

const PROVISIONED: &str = r#"
[topics]
partitions = 6

[[routes]]
match = "myeduzz.invoice_*"
topic = "eduzz.invoices"
key = "/data/learner/email"
partitions = 4
"#;

async fn serve_on_the_embedded_broker_creates_topics_with_their_partitions() {
    let app = TestApp::embedded(PROVISIONED).await;
    for (id, slug) in [
        ("e-1", "nutror.lesson_started"),
        ("e-2", "myeduzz.invoice_paid"),
    ] {
        assert_eq!(
            app.post_eduzz(&eduzz_event(id, slug), SECRET)
                .await
                .status(),
            200
        );
    }
    assert_eq!(
        app.read_topic("nutror.lesson_started", 1, WAIT).await.len(),
        1
    );
    assert_eq!(app.read_topic("eduzz.invoices", 1, WAIT).await.len(), 1);
    assert_eq!(partitions(&app.brokers, "nutror.lesson_started"), Some(6));
    assert_eq!(partitions(&app.brokers, "eduzz.invoices"), Some(4));
    app.shutdown().await;
}

/// `n` members of one consumer group on `topic`, returned once they hold its `partitions`
/// between them (each some) and each member's position is fixed.
fn settled_group(brokers: &str, topic: &str, n: usize, partitions: usize) -> Vec<BaseConsumer> {
    let members: Vec<BaseConsumer> = (0..n)
        .map(|i| {
            let c: BaseConsumer = Cluster::to(brokers)
                .reader_config("downstream-team")
                .set("client.id", format!("member-{i}"))
                .set("auto.offset.reset", "latest")
                .set("session.timeout.ms", "6000")
                .create()
                .unwrap();
            c.subscribe(&[topic]).unwrap();
            c
        })
        .collect();
    let assigned = |m: &BaseConsumer| m.assignment().map_or(0, |a| a.count());
    let started = Instant::now();
    while members.iter().any(|m| assigned(m) == 0)
        || members.iter().map(assigned).sum::<usize>() != partitions
    {
        assert!(started.elapsed() < WAIT, "the group did not settle");
        for m in &members {
            let _ = m.poll(Duration::from_millis(50));
        }
    }
    // Assigned at "latest": make sure each member's position is fixed before posting.
    for m in &members {
        let _ = m.poll(Duration::from_millis(200));
    }
    members
}

async fn three_consumers_of_one_group_share_a_provisioned_topic() {
    let app = TestApp::embedded("[topics]\npartitions = 6\n").await;
    let topic = "nutror.lesson_started";
    // The first event makes the topic (6 partitions); the group forms on it.
    assert_eq!(
        app.post_eduzz(&eduzz_event("warm-up", topic), SECRET)
            .await
            .status(),
        200
    );
    assert_eq!(app.read_topic(topic, 1, WAIT).await.len(), 1);
    assert_eq!(partitions(&app.brokers, topic), Some(6));

    let members = settled_group(&app.brokers, topic, 3, 6);

    let mut posted = HashSet::new();
    for i in 0..600 {
        let id = format!("scale-{i}");
        assert_eq!(
            app.post_eduzz(&eduzz_event(&id, topic), SECRET)
                .await
                .status(),
            200
        );
        posted.insert(id);
    }

    let members = tokio::task::spawn_blocking(move || {
        let mut got: Vec<Vec<String>> = vec![Vec::new(); 3];
        let started = Instant::now();
        while got.iter().map(Vec::len).sum::<usize>() < 600 && started.elapsed() < WAIT {
            for (i, m) in members.iter().enumerate() {
                if let Some(Ok(msg)) = m.poll(Duration::from_millis(20)) {
                    got[i].push(String::from_utf8_lossy(msg.key().unwrap()).into_owned());
                }
            }
        }
        got
    })
    .await
    .unwrap();
    let mut seen: HashMap<&String, usize> = HashMap::new();
    for (i, keys) in members.iter().enumerate() {
        assert!(!keys.is_empty(), "member {i} received a share");
        for k in keys {
            *seen.entry(k).or_default() += 1;
        }
    }
    let counts: Vec<usize> = members.iter().map(Vec::len).collect();
    assert_eq!(counts.iter().sum::<usize>(), 600, "shares {counts:?}");
    assert!(seen.values().all(|&n| n == 1), "each event exactly once");
    assert_eq!(
        seen.keys().map(|k| (*k).clone()).collect::<HashSet<_>>(),
        posted
    );
    app.shutdown().await;
}

async fn serve_creates_topics_with_their_partitions_on_tansu() {
    let Some(tansu) = Tansu::start() else { return };
    let app = TestApp::on(&tansu.brokers(), PROVISIONED).await;
    assert_eq!(
        app.post_eduzz(&eduzz_event("t-1", "myeduzz.invoice_paid"), SECRET)
            .await
            .status(),
        200
    );
    let read = app.read_topic("eduzz.invoices", 1, WAIT).await;
    assert_eq!(read.len(), 1);
    assert_eq!(partitions(&app.brokers, "eduzz.invoices"), Some(4));
    app.shutdown().await;
}

fn plan_and_apply_on_tansu_create_once_and_report_drift() {
    let Some(tansu) = Tansu::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bridge.toml");
    // Invoices get their own partitions (and settings); the rest the defaults.
    let write = |invoices: &str| {
        let routes = format!(
            r#"
[topics]
partitions = 3
config = {{ "retention.ms" = 86400000 }}

[[routes]]
match = "myeduzz.invoice_*"
topic = "eduzz.invoices"
key = "/data/learner/email"
{invoices}

[[routes]]
match = "*"
topic = "{{source}}.{{app}}"
"#
        );
        let text = format!(
            "[kafka]\nbrokers = \"{}\"\n{SOURCES}\n{routes}",
            tansu.brokers()
        );
        std::fs::write(&config, text).unwrap()
    };
    write("partitions = 4");
    let (code, plan) = topics(&config, "plan");
    assert_eq!(code, 0, "{plan}");
    assert!(
        section(&plan, "eduzz.invoices")
            .join("\n")
            .contains("missing: create"),
        "{plan}"
    );
    assert_eq!(
        partitions(&tansu.brokers(), "eduzz.invoices"),
        None,
        "plan changes nothing"
    );

    let (code, applied) = topics(&config, "apply");
    assert_eq!(code, 0, "{applied}");
    assert_eq!(partitions(&tansu.brokers(), "eduzz.invoices"), Some(4));
    assert_eq!(partitions(&tansu.brokers(), "toolzz.activities"), Some(3));
    assert_eq!(partitions(&tansu.brokers(), "eduzz.nutror"), Some(3));
    let created = applied.matches("-> created").count();
    assert!(created >= 5, "{applied}");

    let (code, again) = topics(&config, "apply");
    assert_eq!(code, 0, "{again}");
    assert!(
        !again.contains("-> "),
        "a second apply changes nothing:\n{again}"
    );
    assert!(again.contains(&format!("{created} ok")), "{again}");

    // The routes now want more partitions and another retention for the invoices.
    write("partitions = 6\ntopic_config = { \"retention.ms\" = 1000 }");
    let (code, drift) = topics(&config, "plan");
    assert_eq!(code, 0, "{drift}");
    let invoices = section(&drift, "eduzz.invoices").join("\n");
    assert!(invoices.contains("raise partitions 4 -> 6"), "{drift}");
    assert!(
        invoices.contains("WARNING: messages are keyed by /data/learner/email"),
        "{drift}"
    );
    assert!(
        invoices.contains("retention.ms is 86400000, routes want 1000"),
        "{drift}"
    );
    // tansu 0.6 has no CreatePartitions: apply says so, and leaves the topic as it is.
    let (code, failed) = topics(&config, "apply");
    assert_eq!(code, 1, "{failed}");
    assert!(
        failed.contains("does not implement CreatePartitions"),
        "{failed}"
    );
    assert_eq!(partitions(&tansu.brokers(), "eduzz.invoices"), Some(4));
}

/// Ignored unless asked for: raising partitions needs a broker with CreatePartitions (Apache
/// Kafka); neither librdkafka's mock cluster nor tansu 0.6 implements it.
fn apply_raises_partitions_on_a_real_kafka() {
    let brokers = std::env::var("EKB_KAFKA").expect("EKB_KAFKA=host:port of an Apache Kafka");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bridge.toml");
    let topic = format!("ekb-raise-{}", std::process::id());
    let with = |n: i32| {
        std::fs::write(&config, format!("[kafka]\nbrokers = \"{brokers}\"\n{SOURCES}\n[[routes]]\nmatch = \"*\"\ntopic = \"{topic}\"\npartitions = {n}\n")).unwrap()
    };
    with(2);
    assert_eq!(topics(&config, "apply").0, 0);
    with(5);
    assert_eq!(topics(&config, "apply").0, 0);
    assert_eq!(partitions(&brokers, &topic), Some(5));
}

async fn plan_on_the_mock_cluster_reports_missing_and_too_few_partitions() {
    let broker = TestBroker::start();
    broker
        .cluster()
        .create_topic("eduzz.invoices", 1, 1)
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bridge.toml");
    std::fs::write(
        &config,
        format!(
            "[kafka]\nbrokers = \"{}\"\n{SOURCES}\n{PROVISIONED}",
            broker.bootstrap()
        ),
    )
    .unwrap();
    let (code, plan) = tokio::task::spawn_blocking(move || topics(&config, "plan"))
        .await
        .unwrap();
    assert_eq!(code, 0, "{plan}");
    let invoices = section(&plan, "eduzz.invoices").join("\n");
    assert!(invoices.contains("has: 1 partitions"), "{plan}");
    assert!(invoices.contains("raise partitions 1 -> 4"), "{plan}");
    assert!(
        section(&plan, "nutror.lesson_started")
            .join("\n")
            .contains("missing: create"),
        "{plan}"
    );
    assert!(
        plan.contains("default_route \"{slug}\": 6 partitions"),
        "{plan}"
    );
}

async fn on_a_mock_cluster_by_address_a_topic_metadata_shows_is_written_as_it_is() {
    // The mock cluster reached by address (what `dev-broker` is) has no admin API: the bridge
    // recognises it and never waits on CreateTopics. A topic an operator made is written as it
    // is (2 partitions, not the route's 6); a missing one is left to auto-creation; nothing is
    // dead-lettered on the way.
    let broker = TestBroker::start();
    let made = "nutror.lesson_started";
    broker.cluster().create_topic(made, 2, 1).unwrap();
    let app = TestApp::on(
        broker.bootstrap(),
        "[delivery]\ndead_letter_topic = \"dlq\"\n",
    )
    .await;
    let body = eduzz_event("made-1", made);
    assert_eq!(app.post_eduzz(&body, SECRET).await.status(), 200);
    let missing = "nutror.lesson_finished";
    let other = eduzz_event("auto-1", missing);
    assert_eq!(app.post_eduzz(&other, SECRET).await.status(), 200);
    app.wait_spool_empty(Duration::from_secs(20)).await;
    let read = app.read_topic(made, 1, WAIT).await;
    assert_eq!(read.len(), 1);
    assert_eq!(read[0].value, body);
    assert_eq!(app.read_topic(missing, 1, WAIT).await[0].value, other);
    assert_eq!(
        partitions(&app.brokers, made),
        Some(2),
        "the operator's topic, as it is"
    );
    assert_eq!(
        partitions(&app.brokers, "dlq"),
        None,
        "nothing dead-lettered"
    );
    app.shutdown().await;
}

/// This file's tests, as the harness (tests/api/main.rs) runs them.
pub(crate) fn tests() -> Vec<Test> {
    vec![
        Test::tokio(
            "serve_on_the_embedded_broker_creates_topics_with_their_partitions",
            serve_on_the_embedded_broker_creates_topics_with_their_partitions,
        ),
        Test::tokio(
            "three_consumers_of_one_group_share_a_provisioned_topic",
            three_consumers_of_one_group_share_a_provisioned_topic,
        ),
        Test::tokio(
            "serve_creates_topics_with_their_partitions_on_tansu",
            serve_creates_topics_with_their_partitions_on_tansu,
        )
        .needs(Tool::Tansu),
        Test::sync(
            "plan_and_apply_on_tansu_create_once_and_report_drift",
            plan_and_apply_on_tansu_create_once_and_report_drift,
        )
        .needs(Tool::Tansu),
        Test::sync(
            "apply_raises_partitions_on_a_real_kafka",
            apply_raises_partitions_on_a_real_kafka,
        )
        .ignored("needs Apache Kafka: EKB_KAFKA=host:port, --ignored"),
        Test::tokio(
            "plan_on_the_mock_cluster_reports_missing_and_too_few_partitions",
            plan_on_the_mock_cluster_reports_missing_and_too_few_partitions,
        ),
        Test::tokio(
            "on_a_mock_cluster_by_address_a_topic_metadata_shows_is_written_as_it_is",
            on_a_mock_cluster_by_address_a_topic_metadata_shows_is_written_as_it_is,
        ),
    ]
}
