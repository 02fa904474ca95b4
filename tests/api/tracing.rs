//! Traces: one event followed from Eduzz's request to the Kafka message a consumer reads.
//!
//! The bridge runs as its own process (`serve`, the only place traces are installed) and
//! exports to a real OTLP receiver in this process ([`OtlpReceiver`]); the messages are read
//! back from the broker and their `traceparent` compared with the spans received.

use std::path::Path;
use std::time::Duration;

use eduzz_kafka_bridge::source::auth::sign_hex;

use crate::common::otlp::{OtlpReceiver, ReceivedSpan, INTERNAL, PRODUCER, SERVER};
use crate::common::process::BridgeProcess;
use crate::common::*;
use crate::harness::Test;

const SLUG: &str = "myeduzz.invoice_paid";
/// A sender that traces its own side (the W3C spec's example).
const UPSTREAM: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const UPSTREAM_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const UPSTREAM_SPAN: &str = "00f067aa0ba902b7";

/// A source like Eduzz's whose sender's trace context is continued, and one that publishes
/// CloudEvents.
const MORE_SOURCES: &str = r#"
[sources.traced]
path = "/webhooks/traced"
format = "eduzz"
trust_traceparent = true
auth = { type = "hmac-sha256", secrets = ["test-secret"] }

[sources.events]
path = "/webhooks/events"
format = "eduzz"
auth = { type = "hmac-sha256", secrets = ["test-secret"] }

[sources.events.cloudevents]
source = "https://eduzz.com/webhooks"
"#;

/// Writes the config of a bridge on `brokers` exporting to `endpoint` with `protocol`.
fn write_config(dir: &Path, brokers: &str, otlp: &str) -> std::path::PathBuf {
    let path = dir.join("bridge.toml");
    let extra = format!("{MORE_SOURCES}\n{otlp}");
    let text = without_provisioning(config_text(brokers, &dir.join("spool"), &extra));
    std::fs::write(&path, text).unwrap();
    path
}

fn grpc(receiver: &OtlpReceiver, ratio: f64) -> String {
    format!(
        "[telemetry.otlp]\nendpoint = \"http://{}\"\nsampling_ratio = {ratio}\nresource = {{ \"deployment.environment.name\" = \"test\" }}\n",
        receiver.grpc
    )
}

/// Spans are exported in batches every 5 s by default; the tests want them at once.
const FAST_EXPORT: &[(&str, &str)] = &[("OTEL_BSP_SCHEDULE_DELAY", "100")];

/// Posts `body` signed to `path`, with `headers` more; asserts a 200.
async fn post_signed(
    addr: std::net::SocketAddr,
    path: &str,
    body: &[u8],
    headers: &[(&str, &str)],
) {
    let mut req = reqwest::Client::new()
        .post(format!("http://{addr}{path}"))
        .header("content-type", "application/json")
        .header("x-signature", sign_hex(SECRET.as_bytes(), body))
        .body(body.to_vec());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.unwrap();
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
}

/// The span of `kind` whose event id (server) or message id (producer) is `id`.
/// A producer span counts once it names where the record landed (a publish that failed
/// before a restart has a span too).
fn span_of<'a>(spans: &'a [ReceivedSpan], kind: i32, id: &str) -> Option<&'a ReceivedSpan> {
    spans.iter().find(|s| {
        s.kind == kind
            && match kind {
                PRODUCER => {
                    s.attr("messaging.message.id") == Some(id)
                        && s.attr("messaging.kafka.offset").is_some()
                }
                _ => s.attr("eduzz_bridge.event.id") == Some(id),
            }
    })
}

/// (trace id, span id, flags) of a `traceparent`.
fn parts(traceparent: &str) -> (String, String, String) {
    let p: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(p.len(), 4, "{traceparent}");
    assert_eq!(p[0], "00", "{traceparent}");
    (p[1].into(), p[2].into(), p[3].into())
}

/// The server span of event `id`, its spool commit and its producer span, once all three
/// arrived (or what arrived by then).
async fn trace_of(receiver: &OtlpReceiver, id: &str) -> (ReceivedSpan, ReceivedSpan) {
    let spans = receiver
        .wait_until(Duration::from_secs(20), |s| {
            span_of(s, SERVER, id).is_some() && span_of(s, PRODUCER, id).is_some()
        })
        .await;
    let server = span_of(&spans, SERVER, id)
        .unwrap_or_else(|| panic!("no server span for {id}: {spans:#?}"))
        .clone();
    let producer = span_of(&spans, PRODUCER, id)
        .unwrap_or_else(|| panic!("no producer span for {id}: {spans:#?}"))
        .clone();
    (server, producer)
}

/// The producer span is the server span's child in one trace, with the messaging
/// attributes and where the record landed; the message's `traceparent` names the producer
/// span.
fn assert_one_trace(server: &ReceivedSpan, producer: &ReceivedSpan, record: &Record) {
    assert_eq!(producer.trace_id, server.trace_id, "one trace");
    assert_eq!(
        producer.parent_span_id, server.span_id,
        "the publish is the request's child"
    );
    assert_eq!(producer.name, format!("send {SLUG}"));
    assert_eq!(producer.attr("messaging.system"), Some("kafka"));
    assert_eq!(producer.attr("messaging.destination.name"), Some(SLUG));
    assert_eq!(producer.attr("messaging.operation.name"), Some("send"));
    let partition = record.partition.to_string();
    assert_eq!(
        producer.attr("messaging.destination.partition.id"),
        Some(partition.as_str())
    );
    let offset = record.offset.to_string();
    assert_eq!(
        producer.attr("messaging.kafka.offset"),
        Some(offset.as_str())
    );
    let header = record
        .header("traceparent")
        .expect("the message carries a traceparent");
    let (trace, span, flags) = parts(&header);
    assert_eq!(
        trace, server.trace_id,
        "the consumer continues the same trace"
    );
    assert_eq!(span, producer.span_id, "its parent is the publish");
    assert_eq!(flags, "01", "sampled");
}

/// Posts the Toolzz fixture with its token in the path.
async fn post_toolzz_fixture(addr: std::net::SocketAddr) {
    let toolzz = fixtures()
        .into_iter()
        .find(|(_, b)| serde_json::from_slice::<serde_json::Value>(b).unwrap()["event"].is_object())
        .expect("a Toolzz fixture")
        .1;
    let resp = reqwest::Client::new()
        .post(format!("http://{addr}/webhooks/toolzz/{TOKEN}"))
        .header("content-type", "application/json")
        .body(toolzz)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

/// The HTTP server conventions on the Eduzz request's span, and the resource.
fn assert_server_span(server: &ReceivedSpan) {
    assert_eq!(server.name, "POST /webhooks/eduzz");
    for (key, value) in [
        ("http.request.method", "POST"),
        ("http.route", "/webhooks/eduzz"),
        ("url.path", "/webhooks/eduzz"),
        ("url.scheme", "http"),
        ("http.response.status_code", "200"),
        ("client.address", "127.0.0.1"),
        ("eduzz_bridge.source", "eduzz"),
        ("eduzz_bridge.event.slug", SLUG),
        ("eduzz_bridge.outcome", "accepted"),
    ] {
        assert_eq!(server.attr(key), Some(value), "{key}: {server:#?}");
    }
    assert_eq!(
        server.status, 0,
        "a 200 leaves the server span's status unset"
    );
    assert_eq!(server.service, "eduzz-kafka-bridge");
    let environment = server.resource.get("deployment.environment.name");
    assert_eq!(environment.map(String::as_str), Some("test"));
}

/// No token, secret, signature or body in any span; Toolzz's route names its token's place.
async fn assert_nothing_secret(receiver: &OtlpReceiver, eduzz_body: &[u8]) {
    let toolzz_server = receiver
        .wait_until(Duration::from_secs(10), |s| {
            s.iter()
                .any(|s| s.attr("eduzz_bridge.source") == Some("toolzz"))
        })
        .await
        .into_iter()
        .find(|s| s.attr("eduzz_bridge.source") == Some("toolzz"))
        .expect("the Toolzz request's span");
    assert_eq!(
        toolzz_server.attr("http.route"),
        Some("/webhooks/toolzz/{token}")
    );
    let signature = sign_hex(SECRET.as_bytes(), eduzz_body);
    for s in receiver.spans() {
        let text = format!("{s:?}");
        for secret in [TOKEN, SECRET, signature.as_str()] {
            assert!(!text.contains(secret), "{secret:?} in a span: {s:#?}");
        }
        assert!(!text.contains("Fulano"), "no body in a span: {s:#?}");
    }
}

async fn one_event_is_one_trace_from_the_request_to_the_consumer() {
    let receiver = OtlpReceiver::start().await;
    let broker = TestBroker::start();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), broker.bootstrap(), &grpc(&receiver, 1.0));
    let mut bridge = BridgeProcess::start_with_env(&config, FAST_EXPORT);

    // Eduzz does not trace: its traceparent (a stranger could send one) is not believed.
    let body = eduzz_event("trace-1", SLUG);
    post_signed(
        bridge.addr,
        "/webhooks/eduzz",
        &body,
        &[("traceparent", UPSTREAM)],
    )
    .await;
    // A sender that traces, to a source that trusts it.
    let traced = eduzz_event("trace-2", SLUG);
    let state = [
        ("traceparent", UPSTREAM),
        ("tracestate", "congo=t61rcWkgMzE"),
    ];
    post_signed(bridge.addr, "/webhooks/traced", &traced, &state).await;
    // Toolzz's token is in the path: it must not reach a span.
    post_toolzz_fixture(bridge.addr).await;

    let records = broker.read_topic(SLUG, 2, Duration::from_secs(30)).await;
    let record = |id: &str| {
        records
            .iter()
            .find(|r| r.header("event-id").as_deref() == Some(id))
            .unwrap_or_else(|| panic!("{id} on Kafka"))
            .clone()
    };

    let (server, producer) = trace_of(&receiver, "trace-1").await;
    assert_one_trace(&server, &producer, &record("trace-1"));
    assert_ne!(
        server.trace_id, UPSTREAM_TRACE,
        "a new trace, not the stranger's"
    );
    assert_eq!(server.parent_span_id, "", "a root span");
    assert_server_span(&server);

    let (server2, producer2) = trace_of(&receiver, "trace-2").await;
    let record2 = record("trace-2");
    assert_one_trace(&server2, &producer2, &record2);
    assert_eq!(
        server2.trace_id, UPSTREAM_TRACE,
        "the sender's trace goes on"
    );
    assert_eq!(server2.parent_span_id, UPSTREAM_SPAN);
    assert_eq!(
        record2.header("tracestate").as_deref(),
        Some("congo=t61rcWkgMzE")
    );

    let spans = receiver.spans();
    let commit = spans
        .iter()
        .find(|s| {
            s.kind == INTERNAL && s.name == "spool commit" && s.parent_span_id == server.span_id
        })
        .unwrap_or_else(|| panic!("a spool commit span under the request: {spans:#?}"));
    assert_eq!(commit.trace_id, server.trace_id);

    assert_nothing_secret(&receiver, &body).await;
    // The latency histogram links to the traces (OpenMetrics exemplars).
    let metrics = reqwest::get(format!("http://{}/metrics", bridge.admin))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let traces: Vec<String> = receiver.spans().into_iter().map(|s| s.trace_id).collect();
    let linked = traces.iter().any(|t| {
        metrics.lines().any(|l| {
            l.starts_with("eduzz_bridge_publish_latency_seconds_bucket")
                && l.contains(&format!("# {{trace_id=\"{t}\"}}"))
        })
    });
    assert!(linked, "an exemplar names a trace exported:\n{metrics}");
    assert!(bridge.terminate().success());
}

async fn an_event_spooled_in_an_outage_keeps_its_trace_after_a_restart() {
    let receiver = OtlpReceiver::start().await;
    let broker = TestBroker::start();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), broker.bootstrap(), &grpc(&receiver, 1.0));
    let mut first = BridgeProcess::start_with_env(&config, FAST_EXPORT);
    broker.down();
    let body = eduzz_event("outage-1", SLUG);
    post_signed(first.addr, "/webhooks/eduzz", &body, &[]).await;
    let spans = receiver
        .wait_until(Duration::from_secs(20), |s| {
            span_of(s, SERVER, "outage-1").is_some()
        })
        .await;
    let server = span_of(&spans, SERVER, "outage-1")
        .expect("the request's span is exported during the outage")
        .clone();
    first.kill();

    broker.up();
    let second = BridgeProcess::start_with_env(&config, FAST_EXPORT);
    let records = broker.read_topic(SLUG, 1, Duration::from_secs(30)).await;
    let record = records
        .iter()
        .find(|r| r.header("event-id").as_deref() == Some("outage-1"))
        .expect("published after the restart");
    let (_, producer) = trace_of(&receiver, "outage-1").await;
    assert_one_trace(&server, &producer, record);
    drop(second);
}

async fn spans_go_out_over_http_and_cloudevents_carry_ce_traceparent() {
    let receiver = OtlpReceiver::start().await;
    let broker = TestBroker::start();
    let dir = tempfile::tempdir().unwrap();
    let otlp = format!(
        "[telemetry.otlp]\nendpoint = \"http://{}\"\nprotocol = \"http/protobuf\"\nservice_name = \"bridge-http\"\n",
        receiver.http
    );
    let config = write_config(dir.path(), broker.bootstrap(), &otlp);
    let mut bridge = BridgeProcess::start_with_env(&config, FAST_EXPORT);
    let body = eduzz_event("ce-1", SLUG);
    post_signed(bridge.addr, "/webhooks/events", &body, &[]).await;
    let records = broker.read_topic(SLUG, 1, Duration::from_secs(30)).await;
    let (server, producer) = trace_of(&receiver, "ce-1").await;
    assert_eq!(server.service, "bridge-http");
    assert_one_trace(&server, &producer, &records[0]);
    assert_eq!(
        records[0].header("ce_traceparent"),
        records[0].header("traceparent"),
        "the CloudEvents distributed-tracing extension names the same position"
    );
    assert!(bridge.terminate().success());
}

async fn unsampled_traces_still_travel_and_export_nothing() {
    let receiver = OtlpReceiver::start().await;
    let broker = TestBroker::start();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), broker.bootstrap(), &grpc(&receiver, 0.0));
    let mut bridge = BridgeProcess::start_with_env(&config, FAST_EXPORT);
    let body = eduzz_event("unsampled-1", SLUG);
    post_signed(bridge.addr, "/webhooks/eduzz", &body, &[]).await;
    let records = broker.read_topic(SLUG, 1, Duration::from_secs(30)).await;
    let (_, _, flags) = parts(&records[0].header("traceparent").expect("a traceparent"));
    assert_eq!(
        flags, "00",
        "not sampled, still a trace a consumer may continue"
    );
    assert!(
        bridge.terminate().success(),
        "stopped, so every span is exported"
    );
    assert!(receiver.spans().is_empty(), "{:#?}", receiver.spans());
}

/// With tracing off (no `[telemetry.otlp]`), a trusted sender's context is passed on as it
/// came and an untrusted one is not; no span is made.
async fn with_tracing_off_a_trusted_traceparent_is_passed_on_as_it_came() {
    let app = TestApp::spawn(MORE_SOURCES).await;
    let traced = eduzz_event("off-1", SLUG);
    let plain = eduzz_event("off-2", SLUG);
    post_signed(
        app.addr,
        "/webhooks/traced",
        &traced,
        &[("traceparent", UPSTREAM)],
    )
    .await;
    post_signed(
        app.addr,
        "/webhooks/eduzz",
        &plain,
        &[("traceparent", UPSTREAM)],
    )
    .await;
    let records = app.read_topic(SLUG, 2, Duration::from_secs(30)).await;
    let by_id = |id: &str| {
        records
            .iter()
            .find(|r| r.header("event-id").as_deref() == Some(id))
            .unwrap()
    };
    assert_eq!(
        by_id("off-1").header("traceparent").as_deref(),
        Some(UPSTREAM)
    );
    assert_eq!(by_id("off-2").header("traceparent"), None);
    app.shutdown().await;
}

pub(crate) fn tests() -> Vec<Test> {
    vec![
        Test::tokio(
            "one_event_is_one_trace_from_the_request_to_the_consumer",
            one_event_is_one_trace_from_the_request_to_the_consumer,
        ),
        Test::tokio(
            "an_event_spooled_in_an_outage_keeps_its_trace_after_a_restart",
            an_event_spooled_in_an_outage_keeps_its_trace_after_a_restart,
        ),
        Test::tokio(
            "spans_go_out_over_http_and_cloudevents_carry_ce_traceparent",
            spans_go_out_over_http_and_cloudevents_carry_ce_traceparent,
        ),
        Test::tokio(
            "unsampled_traces_still_travel_and_export_nothing",
            unsampled_traces_still_travel_and_export_nothing,
        ),
        Test::tokio(
            "with_tracing_off_a_trusted_traceparent_is_passed_on_as_it_came",
            with_tracing_off_a_trusted_traceparent_is_passed_on_as_it_came,
        ),
    ]
}
