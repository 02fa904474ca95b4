//! Running the bridge in production: shutdown, health, metrics, logs.

use crate::harness::Test;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::common::process::BridgeProcess;
use crate::common::*;

const TOPIC: &str = "life.events";
const ROUTE: &str = "[default_route]\ntopic = \"life.events\"\n";

fn write_config(dir: &std::path::Path, brokers: &str, extra: &str) -> std::path::PathBuf {
    let path = dir.join("bridge.toml");
    let text = without_provisioning(config_text(brokers, &dir.join("spool"), extra));
    std::fs::write(&path, text).unwrap();
    path
}

async fn sigterm_under_load_answers_in_flight_requests_and_delivers_every_acknowledged_one() {
    let broker = TestBroker::start();
    let brokers = broker.bootstrap();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), brokers, ROUTE);
    let mut bridge = BridgeProcess::start(&config);

    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(load::run(
        format!("http://{}/webhooks/eduzz", bridge.addr),
        "term",
        "nutror.lesson_started",
        16,
        usize::MAX,
        Duration::from_secs(20),
        stop.clone(),
    ));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let status = tokio::task::block_in_place(|| bridge.terminate());
    assert!(status.success(), "exit 0 after SIGTERM, got {status:?}");
    stop.store(true, Ordering::Relaxed);
    let result = load.await.unwrap();
    assert!(result.acked.len() > 100, "{} acked", result.acked.len());

    // Every request answered 2xx is on Kafka, exactly once, without a restart: the grace
    // period was enough to publish the whole spool.
    let records = broker
        .read_topic(TOPIC, result.acked.len(), Duration::from_secs(30))
        .await;
    assert_exactly_once(&records, &result.acked_set());
    let logs = bridge.drain_logs().join("\n");
    assert!(logs.contains("SIGTERM received"), "{logs}");
    assert!(
        logs.contains("\"spool_depth\":0") && logs.contains("\"message\":\"stopped\""),
        "{logs}"
    );
}

async fn readiness_follows_kafka_and_metrics_describe_the_traffic() {
    let app = TestApp::spawn(&format!(
        "{ROUTE}\n[delivery]\nack = \"published\"\npublish_timeout = \"2s\"\n"
    ))
    .await;
    let health = app.admin_get("/healthz").await;
    assert_eq!(health.status(), 200);
    let (status, body) = app.ready().await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        serde_json::json!({"ready": true, "kafka": "reachable", "spool": "disabled"})
    );

    let body = eduzz_event("m-1", "myeduzz.invoice_paid");
    assert_eq!(app.post_eduzz(&body, SECRET).await.status(), 200);
    assert_eq!(app.post_eduzz(&body, "forged").await.status(), 401);

    // Without a spool, an unreachable Kafka means not ready, and requests get 503.
    app.broker().down();
    let mut not_ready = false;
    for _ in 0..100 {
        let (status, body) = app.ready().await;
        if status == 503 {
            assert_eq!(body["kafka"], "unreachable");
            not_ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(not_ready, "readyz turns 503 while Kafka is down");
    let down = app
        .post_eduzz(&eduzz_event("m-2", "myeduzz.invoice_paid"), SECRET)
        .await;
    assert_eq!(down.status(), 503);
    assert!(down.headers().contains_key("retry-after"));
    // The sender is told what is wrong in the bridge's words; librdkafka's (broker
    // addresses, topic names) stay in the log.
    let answer: serde_json::Value = down.json().await.unwrap();
    assert_eq!(answer["error"], "unavailable", "{answer}");
    let told = answer["message"].as_str().unwrap();
    for detail in ["Local:", "127.0.0.1", "myeduzz", "Broker"] {
        assert!(!told.contains(detail), "{detail} in the answer: {told}");
    }
    app.broker().up();
    let mut ready_again = false;
    for _ in 0..100 {
        if app.ready().await.0 == 200 {
            ready_again = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ready_again, "readyz returns to 200 when Kafka is back");

    let metrics = app.admin_get("/metrics").await;
    assert!(metrics.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/openmetrics-text; version=1.0.0"));
    let text = metrics.text().await.unwrap();
    for needle in [
        "eduzz_bridge_http_requests_total{source=\"eduzz\",status=\"200\"} 1",
        "eduzz_bridge_http_requests_total{source=\"eduzz\",status=\"401\"} 1",
        "eduzz_bridge_http_requests_total{source=\"eduzz\",status=\"503\"} 1",
        "eduzz_bridge_events_total{source=\"eduzz\",slug=\"myeduzz.invoice_paid\",outcome=\"published\"} 1",
        "eduzz_bridge_published_total{topic=\"life.events\"} 1",
        "eduzz_bridge_signature_failures_total{source=\"eduzz\",reason=\"mismatch\"} 1",
        "eduzz_bridge_publish_latency_seconds_count 1",
        "eduzz_bridge_request_duration_seconds_count",
        "eduzz_bridge_producer_queue_depth",
        "eduzz_bridge_kafka_reachable 1",
    ] {
        assert!(text.contains(needle), "{needle} missing from\n{text}");
    }
    app.shutdown().await;
}

async fn an_outage_is_logged_once_when_it_starts_and_once_when_it_ends_and_no_secret_is_logged() {
    let broker = TestBroker::start();
    let brokers = broker.bootstrap();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), brokers, ROUTE);
    let bridge = BridgeProcess::start(&config);

    broker.down();
    let result = load::send(
        format!("http://{}/webhooks/eduzz", bridge.addr),
        "outage",
        "nutror.lesson_started",
        4,
        100,
    )
    .await;
    assert_eq!(
        result.acked.len(),
        400,
        "the spool takes events during the outage"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    broker.up();
    wait_spool_empty(bridge.admin, Duration::from_secs(60)).await;
    // A forged request, to see what an auth failure logs.
    let forged = eduzz_event("forged-1", "nutror.lesson_started");
    let resp = reqwest::Client::new()
        .post(format!("http://{}/webhooks/eduzz", bridge.addr))
        .header(
            "x-signature",
            eduzz_kafka_bridge::source::auth::sign_hex(b"wrong", &forged),
        )
        .body(forged)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    // The refusal's line is the last this test waits for; everything before it is in `logs`.
    let mut logs = Vec::new();
    assert!(
        bridge.wait_for_log("webhook refused", Duration::from_secs(5), &mut logs),
        "the refusal is logged"
    );
    logs.extend(bridge.drain_logs());
    let started = logs.iter().filter(|l| l.contains("outage started")).count();
    let ended = logs.iter().filter(|l| l.contains("outage ended")).count();
    assert_eq!(
        (started, ended),
        (1, 1),
        "one line each:\n{}",
        logs.join("\n")
    );
    let refused = logs
        .iter()
        .find(|l| l.contains("webhook refused") && l.contains("\"outcome\":\"unauthorized\""))
        .expect("the refusal is logged");
    let refused: serde_json::Value = serde_json::from_str(refused).unwrap();
    assert_eq!(
        refused["span"]["source"], "eduzz",
        "the request's span names the source: {refused}"
    );
    let all = logs.join("\n");
    assert!(!all.contains(SECRET), "no secret in the logs");
    assert!(
        !all.contains("Ciclano da Silva"),
        "no body in the logs at info"
    );
    let records = broker.read_topic(TOPIC, 400, Duration::from_secs(30)).await;
    assert_exactly_once(&records, &result.acked_set());
}

async fn sighup_without_tls_is_logged_and_the_bridge_keeps_serving() {
    let broker = TestBroker::start();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), broker.bootstrap(), ROUTE);
    let mut bridge = BridgeProcess::start(&config);

    // logrotate, an operator's `kill -HUP`, a closing terminal: none of them may stop it.
    bridge.signal("HUP");
    let mut logs = Vec::new();
    let logged = tokio::task::block_in_place(|| {
        bridge.wait_for_log(
            "SIGHUP: nothing to reload",
            Duration::from_secs(10),
            &mut logs,
        )
    });
    if !logged {
        // Its log closed: give the exit a moment to be reported.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(
        bridge.exited(),
        None,
        "SIGHUP ended the bridge:\n{}",
        logs.join("\n")
    );
    assert!(logged, "SIGHUP is logged:\n{}", logs.join("\n"));
    let body = eduzz_event("after-hup", "nutror.lesson_started");
    let resp = reqwest::Client::new()
        .post(format!("http://{}/webhooks/eduzz", bridge.addr))
        .header(
            "x-signature",
            eduzz_kafka_bridge::source::auth::sign_hex(SECRET.as_bytes(), &body),
        )
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let records = broker.read_topic(TOPIC, 1, Duration::from_secs(30)).await;
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].value, body);
    let status = tokio::task::block_in_place(|| bridge.terminate());
    assert!(status.success(), "{status:?}");
}

/// On the embedded broker, a stop after an event logs no error: the topic admin's clients
/// outlived the broker and logged its departure as errors after "stopped" (4 stops of 6).
async fn a_clean_stop_on_the_embedded_broker_logs_no_error() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("default.toml");
    std::fs::write(&config, default_config_on_random_ports()).unwrap();
    let body = fixture("nutror.certificate_viewed.json");
    for run in 0..5 {
        let mut bridge = BridgeProcess::start(&config);
        let resp = reqwest::Client::new()
            .post(format!("http://{}/webhooks/eduzz", bridge.addr))
            .header(
                "x-signature",
                eduzz_kafka_bridge::source::auth::sign_hex(b"dev-secret", &body),
            )
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "run {run}");
        let mut logs = Vec::new();
        let created = tokio::task::block_in_place(|| {
            bridge.wait_for_log("topic created", Duration::from_secs(10), &mut logs)
        });
        assert!(created, "run {run}:\n{}", logs.join("\n"));
        tokio::time::sleep(Duration::from_millis(500)).await;
        let status = tokio::task::block_in_place(|| bridge.terminate());
        assert!(status.success(), "run {run}: {status:?}");
        // Every line, up to the end of its log.
        logs.extend(std::iter::from_fn(|| {
            bridge.logs.recv_timeout(Duration::from_secs(5)).ok()
        }));
        assert!(
            logs.iter().any(|l| l.contains("\"message\":\"stopped\"")),
            "run {run}:\n{}",
            logs.join("\n")
        );
        let errors = error_lines(&logs);
        assert!(
            errors.is_empty(),
            "run {run}: errors at a clean stop:\n{errors:#?}"
        );
    }
}

/// A route to a topic the test broker refuses for good, with no dead-letter topic: every
/// event sent there is parked.
const REFUSED: &str = "[default_route]\ntopic = \"refused.events\"\n";

/// A bridge process whose every event is parked: its broker refuses the topic for good.
fn parking_bridge(
    broker: &TestBroker,
    dir: &std::path::Path,
    env: &[(&str, &str)],
) -> BridgeProcess {
    broker
        .cluster()
        .topic_error(
            "refused.events",
            rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED,
        )
        .unwrap();
    let config = write_config(dir, broker.bootstrap(), REFUSED);
    BridgeProcess::start_with_env(&config, env)
}

async fn post_signed(addr: std::net::SocketAddr, body: &[u8]) -> u16 {
    reqwest::Client::new()
        .post(format!("http://{addr}/webhooks/eduzz"))
        .header("content-type", "application/json")
        .header(
            "x-signature",
            eduzz_kafka_bridge::source::auth::sign_hex(SECRET.as_bytes(), body),
        )
        .body(body.to_vec())
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Waits until the bridge reports `n` parked events.
async fn wait_parked(admin: std::net::SocketAddr, n: usize) {
    for _ in 0..300 {
        if admin_metric(admin, "eduzz_bridge_parked").await == Some(n as f64) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{n} events were not parked in time");
}

async fn a_newline_in_a_signed_event_id_cannot_forge_a_pretty_log_line() {
    let broker = TestBroker::start();
    let dir = tempfile::tempdir().unwrap();
    let bridge = parking_bridge(
        &broker,
        dir.path(),
        &[("EKB__LOG__FORMAT", "pretty"), ("NO_COLOR", "1")],
    );
    let forged = "2026-01-01T00:00:00.000000Z  INFO eduzz_kafka_bridge: all events published";
    let body = eduzz_event(&format!("evil\n{forged}"), "nutror.lesson_started");
    assert_eq!(post_signed(bridge.addr, &body).await, 200);
    wait_parked(bridge.admin, 1).await;
    let mut logs = Vec::new();
    let parked = tokio::task::block_in_place(|| {
        bridge.wait_for_log("(parked)", Duration::from_secs(10), &mut logs)
    });
    logs.extend(bridge.drain_logs());
    let all = logs.join("\n");
    assert!(parked, "the park is logged:\n{all}");
    assert!(
        !logs.iter().any(|l| l.starts_with(forged)),
        "a sender forged a log line:\n{all}"
    );
    let line = logs.iter().find(|l| l.contains("(parked)")).unwrap();
    assert!(
        line.contains(r"evil\n2026-01-01"),
        "the id is logged escaped: {line}"
    );
}

async fn parked_events_are_logged_once_per_interval_with_a_count() {
    let broker = TestBroker::start();
    let dir = tempfile::tempdir().unwrap();
    let bridge = parking_bridge(&broker, dir.path(), &[]);
    for i in 0..40 {
        let body = eduzz_event(&format!("park-{i}"), "nutror.lesson_started");
        assert_eq!(post_signed(bridge.addr, &body).await, 200);
    }
    wait_parked(bridge.admin, 40).await;
    // The 40 parked events are reported by the gauge; the log holds one line, not forty.
    let mut logs = Vec::new();
    assert!(
        bridge.wait_for_log("(parked)", Duration::from_secs(5), &mut logs),
        "the first park is logged"
    );
    logs.extend(bridge.drain_logs());
    let parks: Vec<serde_json::Value> = logs
        .iter()
        .filter(|l| l.contains("(parked)"))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(parks.len(), 1, "{}", logs.join("\n"));
    assert_eq!(parks[0]["similar_since_last_line"], 0, "{}", parks[0]);
    assert_eq!(parks[0]["level"], "ERROR");
}

/// This file's tests, as the harness (tests/api/main.rs) runs them.
pub(crate) fn tests() -> Vec<Test> {
    vec![
        Test::tokio(
            "sigterm_under_load_answers_in_flight_requests_and_delivers_every_acknowledged_one",
            sigterm_under_load_answers_in_flight_requests_and_delivers_every_acknowledged_one,
        ),
        Test::tokio(
            "readiness_follows_kafka_and_metrics_describe_the_traffic",
            readiness_follows_kafka_and_metrics_describe_the_traffic,
        ),
        Test::tokio(
            "an_outage_is_logged_once_when_it_starts_and_once_when_it_ends_and_no_secret_is_logged",
            an_outage_is_logged_once_when_it_starts_and_once_when_it_ends_and_no_secret_is_logged,
        ),
        Test::tokio(
            "sighup_without_tls_is_logged_and_the_bridge_keeps_serving",
            sighup_without_tls_is_logged_and_the_bridge_keeps_serving,
        ),
        Test::tokio(
            "a_newline_in_a_signed_event_id_cannot_forge_a_pretty_log_line",
            a_newline_in_a_signed_event_id_cannot_forge_a_pretty_log_line,
        ),
        Test::tokio(
            "a_clean_stop_on_the_embedded_broker_logs_no_error",
            a_clean_stop_on_the_embedded_broker_logs_no_error,
        ),
        Test::tokio(
            "parked_events_are_logged_once_per_interval_with_a_count",
            parked_events_are_logged_once_per_interval_with_a_count,
        ),
    ]
}
