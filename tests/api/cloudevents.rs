//! CloudEvents, black-box: every fixture posted to sources that publish CloudEvents, read back
//! from Kafka, and decoded by the official CloudEvents Python SDK (an independent reader, not
//! the bridge's own): the same event comes out, with the body as its data.

use crate::harness::{Test, Tool};
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::*;
use eduzz_kafka_bridge::source::envelope::body_id;
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::macros::{format_description, offset};
use time::{OffsetDateTime, PrimitiveDateTime};

const WAIT: Duration = Duration::from_secs(15);

/// Eduzz keeps the bridge's headers as well; Toolzz writes CloudEvents headers only, reads
/// its zone-less `send_at` in São Paulo's time and takes a subject from the body.
const CLOUDEVENTS: &str = r#"
[sources.eduzz.cloudevents]
source = "https://eduzz.com/webhooks"

[sources.toolzz.cloudevents]
source = "https://toolzz.com.br/webhooks"
type_prefix = "br.com.toolzz."
time_zone = "America/Sao_Paulo"
subject = "/data/user/id"
bridge_headers = false
"#;

/// Where `.ci/install-cloudevents` puts its virtual environment.
pub(crate) fn cloudevents_root() -> PathBuf {
    std::env::var("CLOUDEVENTS_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default())
                .join(".cache/eduzz-kafka-bridge/cloudevents")
        })
}

/// The Python of `.ci/install-cloudevents`' virtual environment.
fn cloudevents_python() -> Option<PathBuf> {
    let python = cloudevents_root().join("bin/python");
    if python.exists() {
        return Some(python);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "the CloudEvents SDK is not installed: .ci/run must install it (.ci/install-cloudevents)"
    );
    eprintln!("SKIPPED: the CloudEvents SDK is not installed (run .ci/install-cloudevents)");
    None
}

/// What the SDK makes of `records`.
fn sdk_decode(python: &PathBuf, records: &[Record]) -> Vec<Value> {
    let input: Vec<Value> = records
        .iter()
        .map(|r| {
            json!({
                "headers": r.headers.iter().map(|(k, v)| json!([k, hex::encode(v)])).collect::<Vec<_>>(),
                "key": r.key.as_ref().map(hex::encode),
                "value": hex::encode(&r.value),
            })
        })
        .collect();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/cloudevents_decode.py");
    let mut child = Command::new(python)
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    serde_json::to_writer(child.stdin.take().unwrap(), &input).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "the SDK could not decode the records");
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The event each fixture should come out as, worked out from the fixture alone.
fn expected(body: &[u8]) -> Value {
    let doc: Value = serde_json::from_slice(body).unwrap();
    if doc["event"].is_object() {
        let local = PrimitiveDateTime::parse(
            doc["event"]["send_at"].as_str().unwrap(),
            format_description!("[year]-[month]-[day] [hour]:[minute]:[second]"),
        )
        .unwrap();
        // São Paulo has kept -03:00 all year since 2019 (and in 2023).
        let at = local.assume_offset(offset!(-3));
        json!({
            "id": body_id(body),
            "source": "https://toolzz.com.br/webhooks",
            "type": format!("br.com.toolzz.{}", doc["event"]["slug"].as_str().unwrap()),
            "time": at.unix_timestamp() * 1000,
            "subject": doc["data"]["user"]["id"].to_string(),
            "data": doc,
        })
    } else {
        let at = OffsetDateTime::parse(doc["sentDate"].as_str().unwrap(), &Rfc3339).unwrap();
        json!({
            "id": doc["id"],
            "source": "https://eduzz.com/webhooks",
            "type": format!("com.eduzz.{}", doc["event"].as_str().unwrap()),
            "time": (at.unix_timestamp_nanos() / 1_000_000) as i64,
            "subject": null,
            "data": doc,
        })
    }
}

async fn every_fixture_reads_back_as_the_same_cloudevent() {
    let app = TestApp::spawn(CLOUDEVENTS).await;
    let mut records = Vec::new();
    let mut wanted = Vec::new();
    for (name, body) in fixtures() {
        let toolzz = serde_json::from_slice::<Value>(&body).unwrap()["event"].is_object();
        let resp = match toolzz {
            true => app.post_toolzz(&body, TOKEN).await,
            false => app.post_eduzz(&body, SECRET).await,
        };
        assert_eq!(resp.status(), 200, "{name}");
        let topic = name.trim_end_matches(".json");
        let read = app.read_topic(topic, 1, WAIT).await;
        assert_eq!(read.len(), 1, "{name}: one message");
        let r = &read[0];
        assert_eq!(
            r.value, body,
            "{name}: the value is the body, byte for byte"
        );
        let headers: HashMap<&str, &[u8]> = r
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_slice()))
            .collect();
        assert_eq!(headers["ce_specversion"], b"1.0", "{name}");
        assert_eq!(headers["content-type"], b"application/json", "{name}");
        assert_eq!(
            headers.contains_key("event-id"),
            !toolzz,
            "{name}: the bridge's headers are kept only where configured"
        );
        records.push(r.clone());
        wanted.push((name, expected(&body)));
    }
    let Some(python) = cloudevents_python() else {
        return;
    };
    let decoded = sdk_decode(&python, &records);
    assert_eq!(decoded.len(), wanted.len(), "the SDK decoded every record");
    for ((name, want), got) in wanted.iter().zip(&decoded) {
        assert_eq!(got["specversion"], "1.0", "{name}");
        assert_eq!(got["datacontenttype"], "application/json", "{name}");
        for attr in ["id", "source", "type", "time", "subject", "data"] {
            assert_eq!(got[attr], want[attr], "{name}: {attr}");
        }
        assert_eq!(
            got["partitionkey"], want["id"],
            "{name}: the key is the event id"
        );
    }
    app.shutdown().await;
}

async fn sources_without_cloudevents_write_no_ce_headers() {
    let app = TestApp::spawn("").await;
    let body = eduzz_event("plain-1", "nutror.lesson_started");
    assert_eq!(app.post_eduzz(&body, SECRET).await.status(), 200);
    let read = app.read_topic("nutror.lesson_started", 1, WAIT).await;
    assert_eq!(read.len(), 1);
    assert!(
        read[0].headers.iter().all(|(k, _)| !k.starts_with("ce_")),
        "{:?}",
        read[0].headers
    );
    app.shutdown().await;
}

/// This file's tests, as the harness (tests/api/main.rs) runs them.
pub(crate) fn tests() -> Vec<Test> {
    vec![
        Test::tokio(
            "every_fixture_reads_back_as_the_same_cloudevent",
            every_fixture_reads_back_as_the_same_cloudevent,
        )
        .needs(Tool::CloudEventsSdk),
        Test::tokio(
            "sources_without_cloudevents_write_no_ce_headers",
            sources_without_cloudevents_write_no_ce_headers,
        ),
    ]
}
