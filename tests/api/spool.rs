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

/// A bridge taking events while its broker is down, on a spool of its own.
struct Spooling {
    _dir: tempfile::TempDir,
    config: std::path::PathBuf,
    spool: std::path::PathBuf,
    first: BridgeProcess,
    /// Where it takes Eduzz's webhooks.
    url: String,
}

fn spooling_while_down(broker: &TestBroker) -> Spooling {
    let dir = tempfile::tempdir().unwrap();
    let (config, spool) = (dir.path().join("bridge.toml"), dir.path().join("spool"));
    let text = without_provisioning(config_text(broker.bootstrap(), &spool, ROUTE));
    std::fs::write(&config, text).unwrap();
    broker.down();
    let first = BridgeProcess::start(&config);
    let url = format!("http://{}/webhooks/eduzz", first.addr);
    Spooling {
        _dir: dir,
        config,
        spool,
        first,
        url,
    }
}

async fn a_damaged_event_is_quarantined_and_every_other_event_is_published() {
    let broker = TestBroker::start();
    let mut s = spooling_while_down(&broker);
    let sent = load::send(s.url.clone(), "qrt", SLUG, 2, 10).await;
    assert_eq!(sent.acked.len(), 20, "all taken while Kafka is away");
    // Killed at once: the newest commits are in the write-ahead log only, which the file's
    // own (redb's) checksums do not cover; the records' checksums do.
    s.first.kill();

    // One event's bytes damaged on disk, wherever they are: its checksum finds it, and only
    // it. (redb checks its own pages at open: a flip in a page of the file may instead have
    // the file moved aside and salvaged, which keeps a damaged event in the quarantine too.)
    let victim = "qrt-1-4";
    let needle = eduzz_event(victim, SLUG);
    let segments = std::fs::read_dir(s.spool.join("spool.redb.segments"))
        .unwrap()
        .map(|e| e.unwrap().path());
    let copies = ["spool-0.wal", "spool-1.wal", "spool.redb"]
        .iter()
        .map(|name| s.spool.join(name))
        .chain(segments)
        .map(|path| flip_every_copy(&path, &needle))
        .sum::<usize>();
    assert!(copies >= 1, "the event is on disk");
    let (code, found) = verify(&s.config);
    assert_eq!(found["format"], 5, "{found}");
    let depth = found["depth"].as_u64().unwrap() + found["in_log"].as_u64().unwrap();
    assert_eq!(depth, 20, "in the file or its log: {found}");
    assert_eq!(code, Some(1), "damage is an error: {found}");

    // Kafka back: every other event is published once, byte for byte; the damaged one is
    // kept in the quarantine, counted and logged.
    broker.up();
    let mut second = BridgeProcess::start(&s.config);
    let quarantined = "eduzz_bridge_spool_quarantined";
    let started = std::time::Instant::now();
    while admin_metric(second.admin, quarantined).await != Some(1.0) {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "not quarantined: {}",
            second.drain_logs().join("\n")
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
    let (code, found) = verify(&s.config);
    assert_eq!(code, Some(0), "{found}");
    let kept = &found["quarantine"][0];
    assert_eq!(found["quarantined"], 1, "{found}");
    assert!(
        kept["reason"].as_str().unwrap().contains("checksum"),
        "{found}"
    );
    let body_len = eduzz_event(victim, SLUG).len() as u64;
    assert!(kept["bytes"].as_u64().unwrap() > body_len, "{found}");
    let third = BridgeProcess::start(&s.config);
    assert_eq!(admin_metric(third.admin, quarantined).await, Some(1.0));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let logs = third.drain_logs().join("\n");
    assert!(!logs.contains("quarantine"), "logged once:\n{logs}");
}

/// The frames of the write-ahead log file `bytes`, in order from its start: (offset, generation)
/// of each (the layout in `src/spool/store/wal.rs`: a 48-byte header, magic "EKBW",
/// generation at 8, the records' lengths at 36 and 40).
fn frames(bytes: &[u8]) -> Vec<(usize, u64)> {
    let mut found = Vec::new();
    let mut at = 0;
    while bytes.len() >= at + 48 && &bytes[at..at + 4] == b"EKBW" {
        let field = |i: usize| u32::from_le_bytes(bytes[at + i..at + i + 4].try_into().unwrap());
        let generation = u64::from_le_bytes(bytes[at + 8..at + 16].try_into().unwrap());
        found.push((at, generation));
        at += 48 + field(36) as usize + field(40) as usize;
    }
    found
}

/// A frame's header damaged in the middle of the log, after a kill: the frames after it cannot
/// be trusted as they are, so the log is copied aside (with an error) and salvaged, and every
/// event acknowledged is published once, byte for byte, the damaged frame's too (its records
/// carry their own checksums).
async fn a_log_damaged_in_its_middle_is_copied_aside_and_every_event_published_once() {
    let broker = TestBroker::start();
    let mut s = spooling_while_down(&broker);
    // A checkpoint is due a second after the open: the first event is one, the next ones are
    // frames of the generation it starts, each its own commit (one sender).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let sent = load::send(s.url.clone(), "mid", SLUG, 1, 20).await;
    assert_eq!(sent.acked.len(), 20, "all taken while Kafka is away");
    s.first.kill();

    // The newest generation's file, and a frame with frames of its generation after it.
    let logs = ["spool-0.wal", "spool-1.wal"].map(|name| {
        let bytes = std::fs::read(s.spool.join(name)).unwrap();
        (name, frames(&bytes), bytes)
    });
    let [a, b] = logs;
    let newest = |l: &(&str, Vec<(usize, u64)>, Vec<u8>)| l.1.first().map(|f| f.1);
    let (name, found, mut bytes) = if newest(&a) > newest(&b) { a } else { b };
    let gen = found[0].1;
    assert!(
        found.iter().filter(|f| f.1 == gen).count() >= 6,
        "frames of one generation in {name}: {found:?}"
    );
    let victim = found[3].0;
    bytes[victim + 20] ^= 0x01;
    std::fs::write(s.spool.join(name), bytes).unwrap();

    broker.up();
    let mut second = BridgeProcess::start(&s.config);
    wait_spool_empty(second.admin, Duration::from_secs(60)).await;
    broker.read_topic(TOPIC, 20, Duration::from_secs(30)).await;
    // A copy published late (by the salvage, which runs in the background) would show now.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let records = broker.read_topic(TOPIC, 21, Duration::from_secs(3)).await;
    let counts = id_counts(&records);
    assert!(
        sent.acked.iter().all(|id| counts.get(id) == Some(&1)),
        "every acknowledged event once: {counts:?}\n{}",
        second.drain_logs().join("\n")
    );
    for r in &records {
        let id = r.header("event-id").unwrap();
        assert_eq!(r.value, eduzz_event(&id, SLUG), "{id}: byte for byte");
    }
    // (The error the open logged is read by `BridgeProcess::start`; the salvage's line is not.)
    let logs = second.drain_logs().join("\n");
    let salvaged = format!("{name}.damaged-");
    assert!(
        logs.lines()
            .any(|l| l.contains("damaged spool file salvaged") && l.contains(&salvaged)),
        "the copy salvaged:\n{logs}"
    );
    let kept: Vec<String> = std::fs::read_dir(&s.spool)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&format!("{name}.damaged-")))
        .collect();
    assert_eq!(kept.len(), 1, "copied aside: {kept:?}");
    second.terminate();
}

/// A spool file an earlier release wrote with the four Eduzz fixtures spooled while Kafka was
/// away, then stopped cleanly: format 2 (no format in `meta`, events without a layout byte,
/// the on-disk index of ids), format 3 (the release before the write-ahead log, written by
/// b985e19's build), and format 4 (the release before segments, with its records in the
/// B-tree, written by a54737c's build).
const FORMAT_2_FILE: &str = "tests/api/fixtures/spool-format2.redb";
const FORMAT_3_FILE: &str = "tests/api/fixtures/spool-format3.redb";
const FORMAT_4_FILE: &str = "tests/api/fixtures/spool-format4.redb";
const UPGRADE_TOPIC: &str = "upgrade.events";

async fn a_spool_written_by_the_previous_release_is_upgraded_and_every_event_published() {
    upgraded_and_published(FORMAT_4_FILE, serde_json::json!(4)).await;
}

async fn a_spool_of_format_3_is_upgraded_and_every_event_published() {
    upgraded_and_published(FORMAT_3_FILE, serde_json::json!(3)).await;
}

async fn a_spool_of_format_2_is_upgraded_and_every_event_published() {
    upgraded_and_published(FORMAT_2_FILE, serde_json::Value::Null).await;
}

/// Opens a copy of `fixture` (whose `meta` says `format`): `spool verify` reads it as it is,
/// the bridge upgrades it, publishes its four events once, byte for byte, and its ids still
/// dedupe.
async fn upgraded_and_published(fixture: &str, format: serde_json::Value) {
    let broker = TestBroker::start();
    let dir = tempfile::tempdir().unwrap();
    let (config, spool) = (dir.path().join("bridge.toml"), dir.path().join("spool"));
    std::fs::create_dir_all(&spool).unwrap();
    let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(fixture);
    std::fs::copy(file, spool.join("spool.redb")).unwrap();
    let text = without_provisioning(config_text(broker.bootstrap(), &spool, ""));
    std::fs::write(&config, text).unwrap();
    let (code, found) = verify(&config);
    assert_eq!((code, &found["format"]), (Some(0), &format), "{found}");
    assert_eq!(
        found["depth"], 4,
        "read as it is, not upgraded by a look: {found}"
    );

    let mut bridge = BridgeProcess::start(&config);
    wait_spool_empty(bridge.admin, Duration::from_secs(60)).await;
    let records = broker
        .read_topic(UPGRADE_TOPIC, 4, Duration::from_secs(30))
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
    let answer = post_signed(&format!("http://{}/webhooks/eduzz", bridge.addr), body).await;
    assert_eq!(answer["status"], "duplicate", "{name}: {answer}");
    assert!(bridge.terminate().success());
    let (code, found) = verify(&config);
    assert_eq!(
        (code, &found["format"]),
        (Some(0), &serde_json::json!(5)),
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
            "a_log_damaged_in_its_middle_is_copied_aside_and_every_event_published_once",
            a_log_damaged_in_its_middle_is_copied_aside_and_every_event_published_once,
        ),
        Test::tokio(
            "a_spool_written_by_the_previous_release_is_upgraded_and_every_event_published",
            a_spool_written_by_the_previous_release_is_upgraded_and_every_event_published,
        ),
        Test::tokio(
            "a_spool_of_format_3_is_upgraded_and_every_event_published",
            a_spool_of_format_3_is_upgraded_and_every_event_published,
        ),
        Test::tokio(
            "a_spool_of_format_2_is_upgraded_and_every_event_published",
            a_spool_of_format_2_is_upgraded_and_every_event_published,
        ),
    ]
}
