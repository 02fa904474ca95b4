//! The core path, black-box: real payloads in over HTTP, the same bytes out of Kafka.

use crate::harness::Test;
use std::time::Duration;

use crate::common::*;
use eduzz_kafka_bridge::source::auth::sign_hex;
use eduzz_kafka_bridge::source::envelope::body_id;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WAIT: Duration = Duration::from_secs(15);

fn json_of(bytes: &[u8]) -> serde_json::Value {
    serde_json::from_slice(bytes).unwrap()
}

async fn every_fixture_lands_byte_exact_with_headers_and_key() {
    let app = TestApp::spawn("").await;

    for (name, body) in fixtures() {
        let slug = name.trim_end_matches(".json");
        let doc = json_of(&body);
        let (resp, id) = if doc["event"].is_object() {
            (app.post_toolzz(&body, TOKEN).await, body_id(&body))
        } else {
            (
                app.post_eduzz(&body, SECRET).await,
                doc["id"].as_str().unwrap().to_string(),
            )
        };
        assert_eq!(resp.status(), 200, "{name}");
        let answer: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(answer["status"], "accepted");
        assert_eq!(answer["id"], id.as_str());
        assert_eq!(answer["topic"], slug);

        let records = app.read_topic(slug, 1, WAIT).await;
        assert_eq!(
            records.len(),
            1,
            "{name}: exactly one message on topic {slug}"
        );
        let r = &records[0];
        assert_eq!(
            r.value, body,
            "{name}: value is the raw body, byte for byte"
        );
        assert_eq!(
            r.key.as_deref(),
            Some(id.as_bytes()),
            "{name}: key is the event id"
        );
        assert_eq!(r.header("event").as_deref(), Some(slug));
        assert_eq!(r.header("event-id").as_deref(), Some(id.as_str()));
        let source = if doc["event"].is_object() {
            "toolzz"
        } else {
            "eduzz"
        };
        assert_eq!(r.header("source").as_deref(), Some(source));
        assert_eq!(
            r.header("content-type").as_deref(),
            Some("application/json")
        );
        let received = r.header("received-at").unwrap();
        assert!(
            time::OffsetDateTime::parse(&received, &time::format_description::well_known::Rfc3339)
                .is_ok(),
            "received-at {received} is RFC 3339"
        );
    }
    app.shutdown().await;
}

async fn other_eduzz_apps_route_by_rules_with_keys_from_pointers() {
    let app = TestApp::spawn(
        r#"
[[routes]]
match = "myeduzz.invoice_*"
topic = "eduzz.invoices"
key = "/data/learner/email"

[[routes]]
match = "nutror.*"
topic = "{source}.{app}"

[[routes]]
match = "blinket.attendance_edited"
drop = true

[default_route]
topic = "eduzz.other.{slug}"
"#,
    )
    .await;

    let paid = eduzz_event("inv-1", "myeduzz.invoice_paid");
    let refunded = eduzz_event("inv-2", "myeduzz.invoice_refunded");
    let lesson = eduzz_event("les-1", "nutror.lesson_started");
    let checkin = eduzz_event("blk-1", "blinket.attendance_checkin");
    let student = eduzz_event("alp-1", "alpaclass.student_created");
    let edited = eduzz_event("blk-2", "blinket.attendance_edited");
    for body in [&paid, &refunded, &lesson, &checkin, &student] {
        assert_eq!(app.post_eduzz(body, SECRET).await.status(), 200);
    }
    let resp = app.post_eduzz(&edited, SECRET).await;
    assert_eq!(resp.status(), 200);
    let answer: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(answer["status"], "dropped");

    let invoices = app.read_topic("eduzz.invoices", 2, WAIT).await;
    assert_eq!(invoices.len(), 2);
    assert_eq!(invoices[0].key.as_deref(), Some(&b"learner@eduzz.com"[..]));
    let mut values: Vec<Vec<u8>> = invoices.iter().map(|r| r.value.clone()).collect();
    values.sort();
    let mut expected = vec![paid.clone(), refunded.clone()];
    expected.sort();
    assert_eq!(values, expected);

    let lessons = app.read_topic("eduzz.nutror", 1, WAIT).await;
    assert_eq!(lessons.len(), 1);
    assert_eq!(lessons[0].value, lesson);
    assert_eq!(lessons[0].key.as_deref(), Some(&b"les-1"[..]));

    let other = app
        .read_topic("eduzz.other.blinket.attendance_checkin", 1, WAIT)
        .await;
    assert_eq!(other.len(), 1);
    assert_eq!(other[0].value, checkin);
    let other = app
        .read_topic("eduzz.other.alpaclass.student_created", 1, WAIT)
        .await;
    assert_eq!(other[0].value, student);

    // The dropped slug went nowhere: its default topic stays empty.
    assert_topic_empty(
        &app.brokers,
        "eduzz.other.blinket.attendance_edited",
        Duration::from_secs(2),
    )
    .await;
    app.shutdown().await;
}

async fn forged_missing_and_rotated_signatures() {
    let app = TestApp::spawn("").await;
    let slug = "nutror.lesson_rated";

    let forged = eduzz_event("forged", slug);
    let resp = app.post_eduzz(&forged, "not-the-secret").await;
    assert_eq!(resp.status(), 401);
    let body = resp.text().await.unwrap();
    assert!(body.contains("\"unauthorized\""), "{body}");
    assert!(
        !body.contains("secret") && !body.contains("signature"),
        "no hint for a forger: {body}"
    );

    let missing = eduzz_event("missing", slug);
    let resp = app
        .client
        .post(app.url("/webhooks/eduzz"))
        .body(missing.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);

    // A valid signature over a body that differs by one byte.
    let tampered_src = eduzz_event("tampered", slug);
    let sig = sign_hex(SECRET.as_bytes(), &tampered_src);
    let mut tampered = tampered_src.clone();
    let last = tampered.len() - 2;
    tampered[last] = b' ';
    let resp = app
        .client
        .post(app.url("/webhooks/eduzz"))
        .header("x-signature", sig)
        .body(tampered)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);

    // Both live secrets are accepted while a rotation is under way.
    let with_old = eduzz_event("rot-old", slug);
    let with_new = eduzz_event("rot-new", slug);
    assert_eq!(app.post_eduzz(&with_old, OLD_SECRET).await.status(), 200);
    assert_eq!(app.post_eduzz(&with_new, SECRET).await.status(), 200);

    // Only the two authentic events are on the topic.
    let records = app.read_topic(slug, 2, WAIT).await;
    let mut ids: Vec<String> = records
        .iter()
        .map(|r| r.header("event-id").unwrap())
        .collect();
    ids.sort();
    assert_eq!(ids, ["rot-new", "rot-old"]);

    // A wrong token on the Toolzz path is refused too.
    let resp = app
        .post_toolzz(&fixture("activities.certificate.issued.json"), "wrong")
        .await;
    assert_eq!(resp.status(), 401);
    app.shutdown().await;
}

async fn bad_input_gets_clear_json_errors_and_publishes_nothing() {
    let app = TestApp::spawn("").await;

    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "malformed JSON",
            b"{\"id\": \"x\", \"event\": ".to_vec(),
            "not valid JSON",
        ),
        ("empty body", b"".to_vec(), "empty"),
        ("array", b"[1,2]".to_vec(), "JSON object"),
        ("no slug", br#"{"id":"a","data":{}}"#.to_vec(), "'event'"),
        (
            "slug of the wrong type",
            br#"{"id":"a","event":{"slug":"x"}}"#.to_vec(),
            "'event' must be a string",
        ),
        (
            "no id",
            br#"{"event":"nutror.lesson_started","data":{}}"#.to_vec(),
            "'id'",
        ),
        (
            "invalid UTF-8",
            b"{\"id\":\"\xff\xfe\",\"event\":\"nutror.x\"}".to_vec(),
            "not valid JSON",
        ),
    ];
    for (what, body, says) in cases {
        let resp = app.post_eduzz(&body, SECRET).await;
        assert_eq!(resp.status(), 400, "{what}");
        assert_eq!(resp.headers()["content-type"], "application/json");
        let answer: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(answer["error"], "invalid_envelope", "{what}");
        let message = answer["message"].as_str().unwrap();
        assert!(message.contains(says), "{what}: {message}");
    }

    // Toolzz: event.slug is named when missing.
    let resp = app
        .post_toolzz(br#"{"event":{"name":"x"},"data":{}}"#, TOKEN)
        .await;
    assert_eq!(resp.status(), 400);
    assert!(resp.text().await.unwrap().contains("event.slug"));

    // Wrong method and unknown path.
    let resp = app
        .client
        .get(app.url("/webhooks/eduzz"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 405);
    assert_eq!(resp.headers()["allow"], "POST");
    let resp = app
        .client
        .post(app.url("/nope"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let answer: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(answer["error"], "not_found");

    // Admin endpoints are not on the public port.
    for path in ["/metrics", "/healthz", "/readyz"] {
        let resp = app.client.get(app.url(path)).send().await.unwrap();
        assert_eq!(resp.status(), 404, "{path}");
    }

    // Nothing of the above reached Kafka: after one valid event, it is the topic's only one.
    let valid = eduzz_event("valid-1", "nutror.lesson_started");
    assert_eq!(app.post_eduzz(&valid, SECRET).await.status(), 200);
    let records = app.read_topic("nutror.lesson_started", 1, WAIT).await;
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0].value, valid);
    app.shutdown().await;
}

async fn oversized_bodies_get_413_declared_or_chunked() {
    let app = TestApp::spawn("").await;

    // Declared too large (the default limit is 960 KiB): refused before the body is read.
    let big = vec![b' '; 960 * 1024 + 1];
    let resp = app.post_eduzz(&big, SECRET).await;
    assert_eq!(resp.status(), 413);
    assert!(resp.text().await.unwrap().contains("payload_too_large"));

    // A client that writes its whole (too large) body before reading gets to read the 413.
    let big = vec![b' '; 1024 * 1024 + 512 * 1024];
    let mut stream = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let head = format!(
        "POST /webhooks/eduzz HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n",
        big.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&big).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert!(text.contains("payload_too_large"), "{text}");

    // Chunked, no length: refused once the limit is crossed, without reading it all (it
    // might never end; a declared body is read to its end, see tests/sender_contract.rs).
    let mut stream = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    stream
        .write_all(
            b"POST /webhooks/eduzz HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n",
        )
        .await
        .unwrap();
    let chunk = vec![b'a'; 64 * 1024];
    let mut answer = Vec::new();
    for _ in 0..20 {
        let head = format!("{:x}\r\n", chunk.len());
        if stream.write_all(head.as_bytes()).await.is_err()
            || stream.write_all(&chunk).await.is_err()
            || stream.write_all(b"\r\n").await.is_err()
        {
            break;
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");

    // Exactly at the limit is fine as far as size goes (the body is then not JSON: 400).
    let at_limit = vec![b' '; 960 * 1024];
    assert_eq!(app.post_eduzz(&at_limit, SECRET).await.status(), 400);
    app.shutdown().await;
}

async fn ping_and_verify_url_get_2xx_and_ping_is_not_published() {
    let app = TestApp::spawn("[default_route]\ntopic = \"all-events\"\n").await;

    let ping = br#"{"id":"ping-1","event":"ping","data":{},"sentDate":"2024-02-29T14:33:02.020Z"}"#;
    let resp = app.post_eduzz(ping, SECRET).await;
    assert_eq!(resp.status(), 200);
    let answer: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(answer["status"], "ok");

    // "Verificar URL" sends a correctly signed fake event: it is an event like any other.
    let fake = eduzz_event("verify-1", "nutror.certificate_viewed");
    assert_eq!(app.post_eduzz(&fake, SECRET).await.status(), 200);

    // On the catch-all topic only the fake event arrives, not the ping before it.
    let records = app.read_topic("all-events", 1, WAIT).await;
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0].value, fake);
    app.shutdown().await;

    // With publish_ping the ping is published like any event.
    let app = TestApp::spawn_with(|t| {
        format!(
            "{}[default_route]\ntopic = \"all-events\"\n",
            t.replace(
                "format = \"eduzz\"\n",
                "format = \"eduzz\"\npublish_ping = true\n"
            )
        )
    })
    .await;
    assert_eq!(app.post_eduzz(ping, SECRET).await.status(), 200);
    let records = app.read_topic("all-events", 1, WAIT).await;
    assert_eq!(records[0].value, ping);
    app.shutdown().await;
}

async fn published_mode_answers_with_partition_and_offset() {
    let app = TestApp::spawn("[delivery]\nack = \"published\"\n").await;

    let mut expected = Vec::new();
    for i in 0..3 {
        let body = eduzz_event(&format!("pub-{i}"), "myeduzz.invoice_paid");
        let resp = app.post_eduzz(&body, SECRET).await;
        assert_eq!(resp.status(), 200);
        let answer: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(answer["status"], "published");
        expected.push((
            answer["partition"].as_i64().unwrap() as i32,
            answer["offset"].as_i64().unwrap(),
            body,
        ));
    }
    let records = app.read_topic("myeduzz.invoice_paid", 3, WAIT).await;
    assert_eq!(records.len(), 3);
    for (partition, offset, body) in expected {
        let r = records
            .iter()
            .find(|r| r.partition == partition && r.offset == offset)
            .expect("the answered partition/offset holds the event");
        assert_eq!(r.value, body);
    }
    app.shutdown().await;
}

async fn received_mode_answers_at_once_and_still_delivers() {
    let app = TestApp::spawn("[delivery]\nack = \"received\"\n").await;
    let body = eduzz_event("rcv-1", "nutror.comment_created");
    assert_eq!(app.post_eduzz(&body, SECRET).await.status(), 200);
    let records = app.read_topic("nutror.comment_created", 1, WAIT).await;
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].value, body);
    app.shutdown().await;
}

async fn slugs_that_make_illegal_topics_are_sanitised_stably() {
    let app = TestApp::spawn("").await;
    let body = eduzz_event("weird-1", "nutror.aula iniciada/ção");
    let resp = app.post_eduzz(&body, SECRET).await;
    assert_eq!(resp.status(), 200);
    let answer: serde_json::Value = resp.json().await.unwrap();
    let topic = answer["topic"].as_str().unwrap().to_string();
    assert!(topic.starts_with("nutror.aula_iniciada__"), "{topic}");
    assert_eq!(
        topic,
        eduzz_kafka_bridge::kafka::topic::sanitize_topic("nutror.aula iniciada/ção")
    );
    let records = app.read_topic(&topic, 1, WAIT).await;
    assert_eq!(records[0].value, body);
    assert_eq!(
        records[0].header("event").as_deref(),
        Some("nutror.aula iniciada/ção")
    );
    app.shutdown().await;
}

async fn the_embedded_default_serves_and_every_run_starts_clean() {
    let text = default_config_on_random_ports();
    let body = fixture("nutror.certificate_viewed.json");
    for run in 0..2 {
        let config = eduzz_kafka_bridge::config::Config::from_toml(&text).unwrap();
        assert!(config.kafka.brokers.is_none());
        let app = eduzz_kafka_bridge::app::Application::build(config)
            .await
            .unwrap();
        let brokers = app.brokers().to_string();
        let url = format!("http://{}/webhooks/eduzz", app.webhook_addr());
        let stop = app.stop_handle();
        let task = tokio::spawn(app.run_until_stopped());
        let resp = reqwest::Client::new()
            .post(url)
            .header("x-signature", sign_hex(b"dev-secret", &body))
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(
            resp.status(),
            200,
            "run {run}: a new broker, a new dedupe memory"
        );
        let records = read_topic(&brokers, "nutror.certificate_viewed", 1, WAIT).await;
        assert_eq!(records.len(), 1, "run {run}");
        assert_eq!(records[0].value, body);
        stop.stop();
        task.await.unwrap().unwrap();
    }
}

async fn events_kafka_could_never_take_get_413_and_are_not_acknowledged() {
    // The producer takes records of at most 300 000 bytes (key, value and headers), and the
    // body limit is as large: a body just under it cannot be published with its headers.
    let app = TestApp::spawn_with(|t| {
        t.replace("[server]\n", "[server]\nmax_body_bytes = 300000\n")
            .replace(
                "[kafka]\n",
                "[kafka]\nproperties = { \"message.max.bytes\" = 300000 }\n",
            )
            + "[sources.eduzz.cloudevents]\nsource = \"https://eduzz.com/webhooks\"\nsubject = \"/data/note\"\n"
    })
    .await;
    let topic = "nutror.lesson_started";
    let padded = |id: &str, note: usize, len: usize| {
        let mut doc: serde_json::Value = serde_json::from_slice(&eduzz_event(id, topic)).unwrap();
        doc["data"]["note"] = "n".repeat(note).into();
        let mut body = serde_json::to_vec(&doc).unwrap();
        body.resize(len.max(body.len()), b' ');
        body
    };
    // Under the body limit, over the producer's once the headers are added.
    let just_over = padded("just-over", 10, 299_990);
    // A 160 KB body whose 150 KB `note` is also its ce_subject header: 310 KB on Kafka.
    let doubled = padded("doubled", 150_000, 160_000);
    for body in [&just_over, &doubled] {
        let resp = app.post_eduzz(body, SECRET).await;
        assert_eq!(resp.status(), 413);
        let answer: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(answer["error"], "record_too_large", "{answer}");
        assert!(
            answer["message"].as_str().unwrap().contains("300000"),
            "{answer}"
        );
    }
    // The same with a smaller subject fits, and is published whole.
    let fits = padded("fits", 100_000, 160_000);
    assert_eq!(app.post_eduzz(&fits, SECRET).await.status(), 200);
    let records = app.read_topic(topic, 1, WAIT).await;
    assert_eq!(
        records.len(),
        1,
        "only the event that fits: {:?}",
        records.len()
    );
    assert_eq!(records[0].value, fits);
    app.wait_spool_empty(WAIT).await;
    assert_eq!(app.metric("eduzz_bridge_parked").await, Some(0.0));
    app.shutdown().await;
}

/// This file's tests, as the harness (tests/api/main.rs) runs them.
pub(crate) fn tests() -> Vec<Test> {
    vec![
        Test::tokio(
            "every_fixture_lands_byte_exact_with_headers_and_key",
            every_fixture_lands_byte_exact_with_headers_and_key,
        ),
        Test::tokio(
            "other_eduzz_apps_route_by_rules_with_keys_from_pointers",
            other_eduzz_apps_route_by_rules_with_keys_from_pointers,
        ),
        Test::tokio(
            "forged_missing_and_rotated_signatures",
            forged_missing_and_rotated_signatures,
        ),
        Test::tokio(
            "bad_input_gets_clear_json_errors_and_publishes_nothing",
            bad_input_gets_clear_json_errors_and_publishes_nothing,
        ),
        Test::tokio(
            "oversized_bodies_get_413_declared_or_chunked",
            oversized_bodies_get_413_declared_or_chunked,
        ),
        Test::tokio(
            "ping_and_verify_url_get_2xx_and_ping_is_not_published",
            ping_and_verify_url_get_2xx_and_ping_is_not_published,
        ),
        Test::tokio(
            "published_mode_answers_with_partition_and_offset",
            published_mode_answers_with_partition_and_offset,
        ),
        Test::tokio(
            "received_mode_answers_at_once_and_still_delivers",
            received_mode_answers_at_once_and_still_delivers,
        ),
        Test::tokio(
            "slugs_that_make_illegal_topics_are_sanitised_stably",
            slugs_that_make_illegal_topics_are_sanitised_stably,
        ),
        Test::tokio(
            "the_embedded_default_serves_and_every_run_starts_clean",
            the_embedded_default_serves_and_every_run_starts_clean,
        ),
        Test::tokio(
            "events_kafka_could_never_take_get_413_and_are_not_acknowledged",
            events_kafka_could_never_take_get_413_and_are_not_acknowledged,
        ),
    ]
}
