//! What senders can make the bridge create, and what one slow topic can hold up: made-up slugs
//! by the hundred, and a topic whose partition has no leader. Loopback and the mock cluster.

use crate::harness::Test;
use std::collections::HashSet;
use std::time::{Duration, Instant};

use crate::common::*;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;

/// Topics on the cluster whose name starts with `prefix`.
fn topics_named(brokers: &str, prefix: &str) -> usize {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    let metadata = consumer
        .fetch_metadata(None, Duration::from_secs(5))
        .unwrap();
    metadata
        .topics()
        .iter()
        .filter(|t| t.name().starts_with(prefix))
        .count()
}

async fn made_up_slugs_create_a_bounded_number_of_topics_and_the_rest_overflow() {
    let app =
        TestApp::spawn("[topics]\nmax_dynamic = 40\noverflow_topic = \"flood.overflow\"\n").await;
    let before = app.metrics().await.len();
    let mut accepted = 0;
    for i in 0..300 {
        let body = eduzz_event(&format!("f-{i}"), &format!("made_up.s{i}"));
        let resp = app.post_eduzz(&body, SECRET).await;
        assert_eq!(resp.status(), 200);
        let answer: serde_json::Value = resp.json().await.unwrap();
        let expected = if i < 40 {
            format!("made_up.s{i}")
        } else {
            "flood.overflow".to_string()
        };
        assert_eq!(answer["topic"], expected.as_str(), "{answer}");
        accepted += 1;
    }
    // A documented event after the burst still gets its own topic, at once.
    let started = Instant::now();
    let resp = app
        .post_eduzz(
            &eduzz_event("real-1", "myeduzz.invoice_negotiatied"),
            SECRET,
        )
        .await;
    assert_eq!(resp.status(), 200);
    let real = app
        .read_topic("myeduzz.invoice_negotiatied", 1, Duration::from_secs(10))
        .await;
    assert_eq!(real.len(), 1);
    assert!(started.elapsed() < Duration::from_secs(5));

    let overflow = app
        .read_topic("flood.overflow", 260, Duration::from_secs(20))
        .await;
    assert_eq!(overflow.len(), 260);
    let slugs: HashSet<String> = overflow
        .iter()
        .map(|r| r.header("event").unwrap())
        .collect();
    assert_eq!(slugs.len(), 260, "each overflowed event keeps its slug");
    assert!(slugs.contains("made_up.s299"));
    assert_eq!(topics_named(&app.brokers, "made_up."), 40);
    assert_eq!(
        app.metric("eduzz_bridge_topic_overflow_total{source=\"eduzz\"}")
            .await,
        Some(260.0)
    );
    // /metrics did not grow with the slugs: made-up slugs count as "other".
    let after = app.metrics().await.len();
    assert!(after < before + 4096, "{before} -> {after} bytes");
    assert_eq!(accepted, 300);
    app.shutdown().await;
}

async fn a_topic_without_a_leader_does_not_hold_up_the_others() {
    let app = TestApp::spawn("[delivery]\nmax_in_flight = 128\n").await;
    let stalled = "stalled.topic";
    app.broker()
        .cluster()
        .partition_leader(stalled, 0, None)
        .unwrap();
    // Far more than the whole in-flight window for the stalled topic first...
    for i in 0..200 {
        let resp = app
            .post_eduzz(&eduzz_event(&format!("s-{i}"), stalled), SECRET)
            .await;
        assert_eq!(resp.status(), 200);
    }
    // ...then events for another topic: they reach Kafka while the first waits.
    let topic = "nutror.lesson_started";
    for i in 0..50 {
        let resp = app
            .post_eduzz(&eduzz_event(&format!("ok-{i}"), topic), SECRET)
            .await;
        assert_eq!(resp.status(), 200);
    }
    let records = app.read_topic(topic, 50, Duration::from_secs(15)).await;
    assert_eq!(records.len(), 50, "the healthy topic was held up");
    assert!(app.metric("eduzz_bridge_spool_depth").await.unwrap() >= 200.0);

    // The leader comes back: the stalled topic drains, exactly once and in order.
    app.broker()
        .cluster()
        .partition_leader(stalled, 0, Some(1))
        .unwrap();
    app.wait_spool_empty(Duration::from_secs(60)).await;
    let records = app.read_topic(stalled, 200, Duration::from_secs(20)).await;
    let ids: Vec<String> = records
        .iter()
        .map(|r| r.header("event-id").unwrap())
        .collect();
    let expected: Vec<String> = (0..200).map(|i| format!("s-{i}")).collect();
    assert_eq!(ids, expected);
    app.shutdown().await;
}

/// This file's tests, as the harness (tests/api/main.rs) runs them.
pub(crate) fn tests() -> Vec<Test> {
    vec![
        Test::tokio(
            "made_up_slugs_create_a_bounded_number_of_topics_and_the_rest_overflow",
            made_up_slugs_create_a_bounded_number_of_topics_and_the_rest_overflow,
        ),
        Test::tokio(
            "a_topic_without_a_leader_does_not_hold_up_the_others",
            a_topic_without_a_leader_does_not_hold_up_the_others,
        ),
    ]
}
