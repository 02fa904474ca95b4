//! End to end against a separate broker process (tansu): every fixture in, the same bytes
//! out, read by a consumer group.

use crate::harness::{Test, Tool};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::common::tansu::Tansu;
use crate::common::*;
use eduzz_kafka_bridge::dedupe::DedupeSettings;
use eduzz_kafka_bridge::event::{unix_ms, Message as Spooled};
use eduzz_kafka_bridge::source::envelope::body_id;
use eduzz_kafka_bridge::spool::{Spool, SpoolSettings};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

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
        assert_eq!(resp.status(), 200, "{topic}");
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

/// A replica died after Kafka confirmed three of its events and before it deleted them from
/// its spool; meanwhile other replicas wrote 1500 more messages to the same topic. On restart
/// its recovery check still finds the three and does not publish them again. (The recovery
/// check reads back to their receipt by timestamp, not only a count of messages from the end;
/// tansu's reads happen to find them either way, so `recover`'s unit tests pin the offsets.)
async fn recovery_finds_its_events_behind_other_replicas_messages() {
    let Some(tansu) = Tansu::start() else { return };
    let brokers = tansu.brokers();
    let topic = "fleet.recovery";
    tansu.create_topic(topic, 1);
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let ours: Vec<Spooled> = (0..3)
        .map(|i| spooled(topic, &format!("ours-{i}")))
        .collect();
    let settings = SpoolSettings {
        dir: dir.path().join("spool"),
        ..SpoolSettings::default()
    };
    let spool = Spool::open(&settings, &DedupeSettings::default()).unwrap();
    for m in &ours {
        spool.append(m).await.unwrap();
    }
    spool.close().await;

    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .unwrap();
    let others: Vec<Spooled> = (0..1500)
        .map(|i| spooled(topic, &format!("other-{i}")))
        .collect();
    for m in ours.iter().chain(&others) {
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "source",
                value: Some(&m.source),
            })
            .insert(Header {
                key: "event-id",
                value: Some(&m.event_id),
            });
        let record = FutureRecord::to(topic)
            .payload(m.body.as_ref())
            .key(m.key.as_ref())
            .headers(headers);
        producer
            .send(record, Duration::from_secs(30))
            .await
            .unwrap();
    }

    let route = format!("[default_route]\ntopic = \"{topic}\"\n");
    let app = TestApp::on_dir(&brokers, dir, &route).await;
    app.wait_spool_empty(Duration::from_secs(60)).await;
    let records = app.read_topic(topic, 1503, Duration::from_secs(60)).await;
    let counts = id_counts(&records);
    for m in &ours {
        assert_eq!(counts.get(&m.event_id), Some(&1), "{}", m.event_id);
    }
    assert_eq!(records.len(), 1503);
    app.shutdown().await;
}

fn spooled(topic: &str, id: &str) -> Spooled {
    Spooled {
        topic: topic.into(),
        key: id.as_bytes().to_vec().into(),
        source: "eduzz".into(),
        slug: "myeduzz.invoice_paid".into(),
        event_id: id.into(),
        received_at_ms: unix_ms(SystemTime::now()),
        content_type: "application/json".into(),
        body: eduzz_event(id, "myeduzz.invoice_paid").into(),
        cloudevent: None,
        archive: None,
        trace: None,
    }
}

/// This file's tests, as the harness (tests/api/main.rs) runs them.
pub(crate) fn tests() -> Vec<Test> {
    vec![
        Test::tokio(
            "fixtures_round_trip_through_a_separate_broker_process",
            fixtures_round_trip_through_a_separate_broker_process,
        )
        .needs(Tool::Tansu),
        Test::tokio(
            "recovery_finds_its_events_behind_other_replicas_messages",
            recovery_finds_its_events_behind_other_replicas_messages,
        )
        .needs(Tool::Tansu),
    ]
}
