//! The spool's records on disk: a damaged event is found by its own checksum, kept aside in
//! the quarantine (counted, logged, listed by `spool verify`), and every other event is still
//! published, byte for byte.

use std::time::Duration;

use crate::common::process::BridgeProcess;
use crate::common::*;
use crate::harness::Test;

const TOPIC: &str = "spool.events";
const ROUTE: &str = "[default_route]\ntopic = \"spool.events\"\n";
const SLUG: &str = "myeduzz.invoice_paid";

/// `spool verify` on `config`: its exit code and its JSON.
fn verify(config: &std::path::Path) -> (Option<i32>, serde_json::Value) {
    let out = bridge()
        .arg("-c")
        .arg(config)
        .args(["spool", "verify"])
        .output()
        .unwrap();
    let found = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    (out.status.code(), found)
}

/// Flips one bit in the middle of every copy of `needle` in `file` (redb keeps stale copies
/// of pages; whichever is live is damaged). Returns how many copies there were.
fn flip_every_copy(file: &std::path::Path, needle: &[u8]) -> usize {
    let mut bytes = std::fs::read(file).unwrap();
    let at: Vec<usize> = memchr::memmem::find_iter(&bytes, needle).collect();
    for &i in &at {
        bytes[i + needle.len() / 2] ^= 0x01;
    }
    std::fs::write(file, bytes).unwrap();
    at.len()
}

async fn a_damaged_event_is_quarantined_and_every_other_event_is_published() {
    let broker = TestBroker::start();
    let dir = tempfile::tempdir().unwrap();
    let (config, spool) = (dir.path().join("bridge.toml"), dir.path().join("spool"));
    let text = without_provisioning(config_text(broker.bootstrap(), &spool, ROUTE));
    std::fs::write(&config, text).unwrap();
    broker.down();
    let mut first = BridgeProcess::start(&config);
    let url = format!("http://{}/webhooks/eduzz", first.addr);
    let sent = load::send(url, "qrt", SLUG, 2, 10).await;
    assert_eq!(sent.acked.len(), 20, "all taken while Kafka is away");
    assert!(first.terminate().success(), "a clean stop");

    // One event's bytes damaged on disk: its checksum finds it, and only it.
    let victim = "qrt-1-4";
    let copies = flip_every_copy(&spool.join("spool.redb"), &eduzz_event(victim, SLUG));
    assert!(copies >= 1, "the event is in the file");
    let (code, found) = verify(&config);
    assert_eq!(code, Some(1), "damage is an error: {found}");
    assert_eq!(found["undecodable"], 1, "{found}");
    let reason = found["undecodable_entries"][0]["reason"].as_str().unwrap();
    assert!(reason.contains("checksum"), "{found}");
    assert_eq!(found["format"], 3, "{found}");

    // Kafka back: every other event is published once, byte for byte; the damaged one is
    // kept in the quarantine, counted and logged.
    broker.up();
    let mut second = BridgeProcess::start(&config);
    let quarantined = "eduzz_bridge_spool_quarantined";
    let started = std::time::Instant::now();
    while admin_metric(second.admin, quarantined).await != Some(1.0) {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "not quarantined"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_spool_empty(second.admin, Duration::from_secs(60)).await;
    let records = broker.read_topic(TOPIC, 19, Duration::from_secs(30)).await;
    let counts = id_counts(&records);
    let others: Vec<&String> = sent.acked.iter().filter(|id| *id != victim).collect();
    assert!(
        others.iter().all(|id| counts.get(*id) == Some(&1)),
        "{counts:?}"
    );
    assert!(
        !counts.contains_key(victim),
        "the damaged event is not published"
    );
    for r in &records {
        let id = r.header("event-id").unwrap();
        assert_eq!(r.value, eduzz_event(&id, SLUG), "{id}: byte for byte");
    }
    let logs = second.drain_logs().join("\n");
    assert!(logs.contains("quarantine"), "logged:\n{logs}");
    second.terminate();

    // Listed by `spool verify`, with its bytes; a sound spool again. A later start neither
    // logs it again nor forgets it.
    let (code, found) = verify(&config);
    assert_eq!(code, Some(0), "{found}");
    let kept = &found["quarantine"][0];
    assert_eq!(found["quarantined"], 1, "{found}");
    assert!(
        kept["reason"].as_str().unwrap().contains("checksum"),
        "{found}"
    );
    let body_len = eduzz_event(victim, SLUG).len() as u64;
    assert!(kept["bytes"].as_u64().unwrap() > body_len, "{found}");
    let third = BridgeProcess::start(&config);
    assert_eq!(admin_metric(third.admin, quarantined).await, Some(1.0));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let logs = third.drain_logs().join("\n");
    assert!(!logs.contains("quarantine"), "logged once:\n{logs}");
}

/// A spool file the previous release (format 2: no format in `meta`, events without a layout
/// byte, the on-disk index of ids) wrote with the four Eduzz fixtures spooled while Kafka was
/// away, then stopped cleanly.
const FORMAT_2_FILE: &str = "tests/api/fixtures/spool-format2.redb";
const FORMAT_2_TOPIC: &str = "upgrade.events";

async fn a_spool_written_by_the_previous_release_is_upgraded_and_every_event_published() {
    let broker = TestBroker::start();
    let dir = tempfile::tempdir().unwrap();
    let (config, spool) = (dir.path().join("bridge.toml"), dir.path().join("spool"));
    std::fs::create_dir_all(&spool).unwrap();
    let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(FORMAT_2_FILE);
    std::fs::copy(file, spool.join("spool.redb")).unwrap();
    let text = without_provisioning(config_text(broker.bootstrap(), &spool, ""));
    std::fs::write(&config, text).unwrap();
    let (code, found) = verify(&config);
    assert_eq!(
        (code, &found["format"]),
        (Some(0), &serde_json::Value::Null),
        "{found}"
    );
    assert_eq!(
        found["depth"], 4,
        "read as it is, not upgraded by a look: {found}"
    );

    let mut bridge = BridgeProcess::start(&config);
    wait_spool_empty(bridge.admin, Duration::from_secs(60)).await;
    let records = broker
        .read_topic(FORMAT_2_TOPIC, 4, Duration::from_secs(30))
        .await;
    let eduzz: Vec<(String, Vec<u8>)> = fixtures()
        .into_iter()
        .filter(|(name, _)| name.starts_with("nutror."))
        .collect();
    assert_eq!(records.len(), eduzz.len());
    for (name, body) in &eduzz {
        let on_kafka = records.iter().filter(|r| &r.value == body).count();
        assert_eq!(on_kafka, 1, "{name}: once, byte for byte");
    }
    // Its ids still dedupe: a retry of an event the old release took is a duplicate.
    let (name, body) = &eduzz[0];
    let sig = eduzz_kafka_bridge::source::auth::sign_hex(SECRET.as_bytes(), body);
    let answer: serde_json::Value = reqwest::Client::new()
        .post(format!("http://{}/webhooks/eduzz", bridge.addr))
        .header("x-signature", sig)
        .body(body.clone())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer["status"], "duplicate", "{name}: {answer}");
    assert!(bridge.terminate().success());
    let (code, found) = verify(&config);
    assert_eq!(
        (code, &found["format"]),
        (Some(0), &serde_json::json!(3)),
        "{found}"
    );
}

/// This file's tests, as the harness (tests/api/main.rs) runs them.
pub(crate) fn tests() -> Vec<Test> {
    vec![
        Test::tokio(
            "a_damaged_event_is_quarantined_and_every_other_event_is_published",
            a_damaged_event_is_quarantined_and_every_other_event_is_published,
        ),
        Test::tokio(
            "a_spool_written_by_the_previous_release_is_upgraded_and_every_event_published",
            a_spool_written_by_the_previous_release_is_upgraded_and_every_event_published,
        ),
    ]
}
