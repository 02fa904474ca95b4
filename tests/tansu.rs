//! End to end against a separate broker process (tansu): every fixture in, the same bytes
//! out, read by a consumer group.

mod common;

use std::time::Duration;

use common::tansu::Tansu;
use common::*;
use eduzz_kafka_bridge::source::envelope::body_id;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::ClientConfig;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixtures_round_trip_through_a_separate_broker_process() {
    let Some(tansu) = Tansu::start() else { return };
    let brokers = tansu.brokers();
    let topics: Vec<(String, Vec<u8>)> = fixtures()
        .into_iter()
        .map(|(name, body)| (name.trim_end_matches(".json").to_string(), body))
        .collect();
    for (topic, _) in &topics {
        tansu.create_topic(topic, 3);
    }
    let app = TestApp::on(&brokers, "").await;

    for (topic, body) in &topics {
        let doc: serde_json::Value = serde_json::from_slice(body).unwrap();
        let resp = if doc["event"].is_object() {
            app.post_toolzz(body, TOKEN).await
        } else {
            app.post_eduzz(body, SECRET).await
        };
        assert_eq!(resp.status(), 202, "{topic}");
    }
    for (topic, body) in &topics {
        let records = app.read_topic(topic, 1, Duration::from_secs(30)).await;
        assert_eq!(records.len(), 1, "{topic}");
        assert_eq!(&records[0].value, body, "{topic}: byte-exact");
        let doc: serde_json::Value = serde_json::from_slice(body).unwrap();
        let id = doc["id"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| body_id(body));
        assert_eq!(records[0].header("event-id"), Some(id.clone()));
        assert_eq!(records[0].key.as_deref(), Some(id.as_bytes()));
    }

    // A consumer group sees the events too (what downstream teams will run).
    let (topic, body) = &topics[0];
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", "downstream-team")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[topic.as_str()]).unwrap();
    let m = tokio::time::timeout(Duration::from_secs(60), consumer.recv())
        .await
        .expect("the group gets the event")
        .unwrap();
    assert_eq!(m.payload().unwrap(), body.as_slice());
    app.shutdown().await;
}
