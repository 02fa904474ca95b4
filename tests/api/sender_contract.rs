//! "Delivered means what the sender counts as delivered": Eduzz counts only 200 as success,
//! retries a failure 3 times a minute apart, then gives up on the URL. These tests send the
//! way Eduzz does and check what it would see, and the refusals ordinary clients must be able
//! to read. All traffic is on loopback and bounded in time.

use crate::harness::Test;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::common::process::BridgeProcess;
use crate::common::*;
use eduzz_kafka_bridge::source::auth::sign_hex;
use tokio::sync::{Mutex, Semaphore};

const WAIT: Duration = Duration::from_secs(30);

/// What a simulated Eduzz saw of one event: the statuses of its attempts (0: no answer).
type Attempts = Arc<Mutex<HashMap<String, Vec<u16>>>>;

/// Eduzz's delivery of one event, by its published rules: success is 200 and nothing else;
/// a failure (any other status, or no answer) is retried 3 times, `interval` apart; each
/// attempt holds one of the URL's parallel slots.
async fn deliver_as_eduzz(
    client: reqwest::Client,
    url: Arc<std::sync::Mutex<String>>,
    slots: Arc<Semaphore>,
    id: String,
    interval: Duration,
    seen: Attempts,
) {
    let body = eduzz_event(&id, "myeduzz.invoice_paid");
    let signature = sign_hex(SECRET.as_bytes(), &body);
    for _ in 0..4 {
        let status = {
            let _slot = slots.acquire().await.unwrap();
            let url = url.lock().unwrap().clone();
            let sent = client
                .post(url)
                .header("content-type", "application/json")
                .header("x-signature", &signature)
                .body(body.clone())
                .send()
                .await;
            sent.map_or(0, |r| r.status().as_u16())
        };
        seen.lock()
            .await
            .entry(id.clone())
            .or_default()
            .push(status);
        if status == 200 {
            return;
        }
        tokio::time::sleep(interval).await;
    }
}

async fn eduzz_delivers_every_event_at_its_first_attempt_through_an_outage_and_a_sigkill() {
    const EVENTS: usize = 3000;
    let broker = TestBroker::start();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bridge.toml");
    // Eduzz knows one URL: the restarted bridge must listen where the first one did.
    let port = free_port();
    let text = config_text(
        broker.bootstrap(),
        &dir.path().join("spool"),
        "[default_route]\ntopic = \"eduzz.sim\"\n",
    )
    .replacen("127.0.0.1:0", &format!("127.0.0.1:{port}"), 1);
    std::fs::write(&config, without_provisioning(text)).unwrap();
    let mut bridge = BridgeProcess::start(&config);
    let url = Arc::new(std::sync::Mutex::new(format!(
        "http://{}/webhooks/eduzz",
        bridge.addr
    )));

    // Eduzz's minute between retries, scaled down; its parallel cap per URL.
    let interval = Duration::from_secs(1);
    let slots = Arc::new(Semaphore::new(32));
    let seen: Attempts = Arc::default();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let sender = {
        let (url, seen) = (url.clone(), seen.clone());
        tokio::spawn(async move {
            let mut deliveries = Vec::new();
            // About 100 new events a second, each delivered on its own.
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            for n in 0..EVENTS {
                tick.tick().await;
                deliveries.push(tokio::spawn(deliver_as_eduzz(
                    client.clone(),
                    url.clone(),
                    slots.clone(),
                    format!("sim-{n}"),
                    interval,
                    seen.clone(),
                )));
            }
            for d in deliveries {
                d.await.unwrap();
            }
        })
    };
    // A broker outage of 3 s, then a SIGKILL and a restart on the same port.
    tokio::time::sleep(Duration::from_secs(5)).await;
    broker.down();
    tokio::time::sleep(Duration::from_secs(3)).await;
    broker.up();
    tokio::time::sleep(Duration::from_secs(5)).await;
    bridge.kill();
    let bridge = BridgeProcess::start(&config);
    *url.lock().unwrap() = format!("http://{}/webhooks/eduzz", bridge.addr);
    sender.await.unwrap();

    let seen = seen.lock().await.clone();
    assert_eq!(seen.len(), EVENTS);
    let given_up: Vec<_> = seen
        .iter()
        .filter(|(_, a)| a.last() != Some(&200))
        .collect();
    assert!(given_up.is_empty(), "Eduzz gave up on {given_up:?}");
    let first_time = seen.values().filter(|a| a == &&vec![200]).count();
    let retried: Vec<_> = seen.iter().filter(|(_, a)| a.len() > 1).collect();
    eprintln!(
        "{first_time} of {EVENTS} delivered at their first attempt, {} retried",
        retried.len()
    );
    assert!(
        first_time * 100 >= EVENTS * 99,
        "{first_time} of {EVENTS} delivered at their first attempt; retried: {retried:?}"
    );

    wait_spool_empty(bridge.admin, Duration::from_secs(60)).await;
    let records = broker.read_topic("eduzz.sim", EVENTS, WAIT).await;
    let counts = id_counts(&records);
    assert_eq!(counts.len(), EVENTS, "every event reached Kafka");
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "published more than once: {twice:?}");
}

async fn verificar_url_ping_and_toolzz_get_exactly_200_and_json_sources_202() {
    let json_source = r#"
[sources.generic]
path = "/webhooks/generic"
format = "json"
slug_pointer = "/type"
id_pointer = "/id"
auth = { type = "token", header = "x-token", tokens = ["g"] }

[sources.generic200]
path = "/webhooks/generic200"
format = "json"
slug_pointer = "/type"
id_pointer = "/id"
accepted_status = 200
auth = { type = "token", header = "x-token", tokens = ["g"] }

[default_route]
topic = "contract.events"
"#;
    let app = TestApp::spawn(json_source).await;
    // "Verificar URL": a correctly signed fake event; then the activation ping.
    let fake = eduzz_event("verificar-url-1", "nutror.certificate_viewed");
    let ping = br#"{"id":"ping-2","event":"ping","data":{},"sentDate":"2024-02-29T14:33:02.020Z"}"#;
    for (body, status) in [
        (&fake[..], "accepted"),
        (&ping[..], "ok"),
        (&fake[..], "duplicate"),
    ] {
        let resp = app.post_eduzz(body, SECRET).await;
        assert_eq!(resp.status(), 200);
        let answer: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(answer["status"], status);
    }
    let toolzz = fixture("activities.certificate.issued.json");
    let resp = app.post_toolzz(&toolzz, TOKEN).await;
    assert_eq!(resp.status(), 200);
    let answer: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(answer["status"], "accepted");

    let generic = br#"{"type":"order.created","id":"g-1"}"#;
    for (path, status) in [("/webhooks/generic", 202), ("/webhooks/generic200", 200)] {
        let resp = app.post(path, &[("x-token", "g")], generic).await;
        assert_eq!(resp.status(), status, "{path}");
        // A repeat is 200 whatever the source's accepted status.
        let resp = app.post(path, &[("x-token", "g")], generic).await;
        assert_eq!(resp.status(), 200, "{path}");
    }
    let records = app.read_topic("contract.events", 4, WAIT).await;
    assert_eq!(
        records.len(),
        4,
        "fake, toolzz and one generic event per source"
    );
    let mut values: Vec<_> = records.iter().map(|r| r.value.clone()).collect();
    values.sort();
    let mut sent = vec![fake, toolzz, generic.to_vec(), generic.to_vec()];
    sent.sort();
    assert_eq!(values, sent);
    app.shutdown().await;
}

async fn the_failing_gauge_counts_how_long_a_source_got_nothing_but_503() {
    // `published` mode with the broker down: every event is refused with 503.
    let app = TestApp::spawn(
        "[delivery]\nack = \"published\"\npublish_timeout = \"300ms\"\n[default_route]\ntopic = \"gauge.events\"\n",
    )
    .await;
    let gauge = "eduzz_bridge_source_failing_seconds{source=\"eduzz\"}";
    assert_eq!(app.metric(gauge).await, Some(0.0));
    app.broker().down();
    let body = eduzz_event("gauge-1", "nutror.lesson_started");
    assert_eq!(app.post_eduzz(&body, SECRET).await.status(), 503);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let failing = app.metric(gauge).await.unwrap();
    assert!(failing >= 1.5, "{failing}");
    // Strangers' refusals neither end nor start it; the toolzz source is not failing.
    assert_eq!(app.post_eduzz(&body, "forged").await.status(), 401);
    assert!(app.metric(gauge).await.unwrap() >= failing);
    let toolzz = "eduzz_bridge_source_failing_seconds{source=\"toolzz\"}";
    assert_eq!(app.metric(toolzz).await, Some(0.0));
    app.broker().up();
    let mut status = 0;
    for _ in 0..50 {
        status = app.post_eduzz(&body, SECRET).await.status().as_u16();
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(status, 200);
    assert_eq!(app.metric(gauge).await, Some(0.0));
    let resp = app.admin_get("/metrics").await;
    assert_eq!(
        resp.headers()["content-type"],
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    assert!(resp.text().await.unwrap().ends_with("# EOF\n"));
    app.shutdown().await;
}

async fn a_python_urllib_client_posting_just_over_the_limit_reads_a_413() {
    let app = TestApp::spawn("[default_route]\ntopic = \"big.events\"\n").await;
    let script = r#"
import sys, urllib.request, urllib.error
body = b"x" * (2 * 1024 * 1024 + 40)
req = urllib.request.Request(sys.argv[1], data=body, headers={"content-type": "application/json"})
try:
    urllib.request.urlopen(req, timeout=20)
    print("2xx")
except urllib.error.HTTPError as e:
    print(e.code, e.read().decode())
"#;
    let url = app.url("/webhooks/eduzz");
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3")
            .args(["-c", script, &url])
            .output()
            .expect("python3 runs")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with("413 ") && stdout.contains("\"payload_too_large\""),
        "stdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    app.shutdown().await;
}

async fn requests_hyper_cannot_parse_get_json_error_bodies() {
    let app = TestApp::spawn("[default_route]\ntopic = \"raw.events\"\n").await;
    let addr = app.addr;
    let cases = [
        (
            b"POST /webhooks/eduzz HTTP/1.1\r\nHo st: x\r\n\r\n".to_vec(),
            "400",
            "bad_request_head",
        ),
        (
            [
                b"POST /webhooks/eduzz HTTP/1.1\r\nx-big: ".to_vec(),
                vec![b'a'; 40_000],
                b"\r\n\r\n".to_vec(),
            ]
            .concat(),
            "431",
            "request_head_too_large",
        ),
    ];
    for (request, status, code) in cases {
        let answer = raw(addr, &request, Duration::from_secs(10)).await;
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with(&format!("HTTP/1.1 {status} ")), "{answer}");
        assert!(head.contains("content-type: application/json"), "{answer}");
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"], code, "{answer}");
    }
    app.shutdown().await;
}

async fn ipv4_clients_of_a_dual_stack_listener_match_ipv4_networks() {
    if std::net::TcpListener::bind("[::]:0").is_err() {
        return skip_without("IPv6", "a kernel with IPv6 enabled");
    }
    let dual_stack = |allow: &'static str, trusted: &'static str| {
        move |t: String| {
            t.replacen("listen = \"127.0.0.1:0\"", "listen = \"[::]:0\"", 1)
                .replace(
                    "[server]\n",
                    &format!("[server]\ntrusted_proxies = [{trusted}]\n"),
                )
                .replace(
                    "format = \"eduzz\"\n",
                    &format!("format = \"eduzz\"\nallow_from = [{allow}]\n"),
                )
                + "[default_route]\ntopic = \"v4.events\"\n"
        }
    };
    let post = |app: &TestApp, id: &str, xff: Option<&str>| {
        let body = eduzz_event(id, "nutror.learner_help");
        // Reached over IPv4: the peer is ::ffff:127.0.0.1 to the socket.
        let url = format!("http://127.0.0.1:{}/webhooks/eduzz", app.addr.port());
        let mut r = app
            .client
            .post(url)
            .header("x-signature", sign_hex(SECRET.as_bytes(), &body))
            .body(body);
        if let Some(x) = xff {
            r = r.header("x-forwarded-for", x);
        }
        async move { r.send().await.unwrap().status().as_u16() }
    };
    let app = TestApp::spawn_with(dual_stack("\"127.0.0.1/32\"", "")).await;
    assert!(app.addr.is_ipv6(), "{}", app.addr);
    assert_eq!(post(&app, "v4-1", None).await, 200);
    app.shutdown().await;

    // Behind a trusted IPv4 proxy, the forwarded address decides (mapped or not).
    let app = TestApp::spawn_with(dual_stack("\"203.0.113.0/24\"", "\"127.0.0.1/32\"")).await;
    assert_eq!(post(&app, "v4-2", None).await, 403);
    assert_eq!(post(&app, "v4-3", Some("203.0.113.9")).await, 200);
    assert_eq!(post(&app, "v4-4", Some("::ffff:203.0.113.10")).await, 200);
    assert_eq!(post(&app, "v4-5", Some("198.51.100.1")).await, 403);
    app.shutdown().await;
}

async fn serve_on_a_dev_broker_with_provisioning_on_delivers_and_says_why() {
    let mut broker = bridge()
        .arg("dev-broker")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(broker.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let brokers = line.trim().to_string();
    // The default: topics.provision on, which the dev-broker's mock cluster cannot serve.
    let app = TestApp::on(&brokers, "[default_route]\ntopic = \"{slug}\"\n").await;
    let body = fixture("nutror.certificate_viewed.json");
    let resp = app.post_eduzz(&body, SECRET).await;
    assert_eq!(resp.status(), 200);
    let records = app
        .read_topic("nutror.certificate_viewed", 1, Duration::from_secs(20))
        .await;
    assert_eq!(records.len(), 1, "delivered within seconds, not stalled");
    assert_eq!(records[0].value, body);
    app.shutdown().await;
    let _ = broker.kill();
    let _ = broker.wait();
}

fn check_config_into_a_closed_pipe_exits_quietly() {
    let mut child = bridge()
        .args(["check-config", "config/default.toml"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // `| head -0`: the reader is gone before the first line is written.
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.code(), Some(0), "{stderr}");
}

/// This file's tests, as the harness (tests/api/main.rs) runs them.
pub(crate) fn tests() -> Vec<Test> {
    vec![
        Test::tokio(
            "eduzz_delivers_every_event_at_its_first_attempt_through_an_outage_and_a_sigkill",
            eduzz_delivers_every_event_at_its_first_attempt_through_an_outage_and_a_sigkill,
        ),
        Test::tokio(
            "verificar_url_ping_and_toolzz_get_exactly_200_and_json_sources_202",
            verificar_url_ping_and_toolzz_get_exactly_200_and_json_sources_202,
        ),
        Test::tokio(
            "the_failing_gauge_counts_how_long_a_source_got_nothing_but_503",
            the_failing_gauge_counts_how_long_a_source_got_nothing_but_503,
        ),
        Test::tokio(
            "a_python_urllib_client_posting_just_over_the_limit_reads_a_413",
            a_python_urllib_client_posting_just_over_the_limit_reads_a_413,
        ),
        Test::tokio(
            "requests_hyper_cannot_parse_get_json_error_bodies",
            requests_hyper_cannot_parse_get_json_error_bodies,
        ),
        Test::tokio(
            "ipv4_clients_of_a_dual_stack_listener_match_ipv4_networks",
            ipv4_clients_of_a_dual_stack_listener_match_ipv4_networks,
        ),
        Test::tokio(
            "serve_on_a_dev_broker_with_provisioning_on_delivers_and_says_why",
            serve_on_a_dev_broker_with_provisioning_on_delivers_and_says_why,
        ),
        Test::sync(
            "check_config_into_a_closed_pipe_exits_quietly",
            check_config_into_a_closed_pipe_exits_quietly,
        ),
    ]
}
