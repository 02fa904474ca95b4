//! The public port under abuse: slow and idle connection floods, oversized and endless
//! requests, limits, allowlists, TLS. Loopback only, bounded in count and time.

use crate::harness::Test;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::*;
use eduzz_kafka_bridge::source::auth::sign_hex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends raw bytes, returns what the server answered before closing (or within `wait`).
fn signed_request(path: &str, body: &[u8], extra_headers: &str) -> Vec<u8> {
    let mut r = format!(
        "POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\nx-signature: {}\r\ncontent-length: {}\r\nconnection: close\r\n{extra_headers}\r\n",
        sign_hex(SECRET.as_bytes(), body),
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

async fn slow_loris_and_idle_floods_do_not_stop_a_normal_client() {
    // header_timeout is 10 s by default: the floods below stay open through the whole test.
    let app = TestApp::spawn("").await;

    // 1000 idle connections and 1000 that trickle a request head one byte at a time.
    let mut idle = Vec::new();
    for _ in 0..1000 {
        idle.push(TcpStream::connect(app.addr).await.unwrap());
    }
    let head = b"POST /webhooks/eduzz HTTP/1.1\r\nhost: x\r\nx-slow: ";
    let mut slow = Vec::new();
    for _ in 0..1000 {
        slow.push(TcpStream::connect(app.addr).await.unwrap());
    }
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let trickle = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && i < head.len() {
                for s in slow.iter_mut() {
                    let _ = s.write_all(&head[i..i + 1]).await;
                }
                i += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            slow
        })
    };

    // Meanwhile a normal client is served, promptly, every time.
    let mut worst = Duration::ZERO;
    for i in 0..50 {
        let body = eduzz_event(&format!("normal-{i}"), "nutror.lesson_started");
        let started = Instant::now();
        let resp = app.post_eduzz(&body, SECRET).await;
        worst = worst.max(started.elapsed());
        assert_eq!(resp.status(), 200);
    }
    assert!(
        worst < Duration::from_secs(2),
        "a normal request took {worst:?} during the flood"
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    drop(trickle.await.unwrap());
    drop(idle);
    let records = app
        .read_topic("nutror.lesson_started", 50, Duration::from_secs(30))
        .await;
    assert_eq!(records.len(), 50);
    app.shutdown().await;
}

async fn idle_and_slow_connections_are_closed_after_the_header_timeout() {
    let app = TestApp::spawn_with(|t| {
        t.replace(
            "[server]\n",
            "[server]\nheader_timeout = \"1s\"\nbody_timeout = \"1s\"\n",
        )
    })
    .await;

    // Idle after connecting: closed.
    let mut idle = TcpStream::connect(app.addr).await.unwrap();
    let mut buf = [0u8; 512];
    let started = Instant::now();
    let n = tokio::time::timeout(Duration::from_secs(5), idle.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0, "closed without an answer");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "idle connection closed after ~1 s"
    );

    // Idle between keep-alive requests: closed too.
    let body = eduzz_event("ka-1", "nutror.lesson_started");
    let mut ka = TcpStream::connect(app.addr).await.unwrap();
    let mut req = signed_request("/webhooks/eduzz", &body, "");
    let text = String::from_utf8(req.clone())
        .unwrap()
        .replace("connection: close\r\n", "");
    req = text.into_bytes();
    ka.write_all(&req).await.unwrap();
    let n = ka.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let started = Instant::now();
    let rest = tokio::time::timeout(Duration::from_secs(5), ka.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(rest, 0, "closed, not answered");
    assert!(started.elapsed() < Duration::from_secs(3));

    // A chunked body that never ends: 408, and the connection is closed.
    let answer = raw(
        app.addr,
        b"POST /webhooks/eduzz HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n5\r\n{\"id\"\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("body_timeout"), "{answer}");
    app.shutdown().await;
}

/// Config edit: `[server]` keys and a `[delivery]` in `published` mode, so that a request
/// stays busy (authenticated, waiting for Kafka) for as long as the broker is down.
fn published_with(server: &'static str) -> impl FnOnce(String) -> String {
    move |t| {
        format!(
            "{}\n[delivery]\nack = \"published\"\npublish_timeout = \"4s\"\n",
            t.replace("[server]\n", &format!("[server]\n{server}\n"))
        )
    }
}

/// Posts a signed Eduzz event from a task of its own; the task returns the raw answer (8 s at
/// most), so the test can go on while the request waits.
fn post_in_background(
    addr: std::net::SocketAddr,
    id: &str,
    slug: &str,
) -> tokio::task::JoinHandle<String> {
    let request = signed_request("/webhooks/eduzz", &eduzz_event(id, slug), "");
    tokio::spawn(async move { raw(addr, &request, Duration::from_secs(8)).await })
}

/// Whether the server closed `s` (EOF, or a reset) within `wait`.
async fn closed_within(s: &mut TcpStream, wait: Duration) -> bool {
    let mut buf = [0u8; 256];
    matches!(
        tokio::time::timeout(wait, s.read(&mut buf)).await,
        Ok(Ok(0) | Err(_))
    )
}

async fn at_the_connection_cap_idle_connections_make_room_and_busy_ones_do_not() {
    let app = TestApp::spawn_with(published_with("max_connections = 4")).await;

    // Four idle connections fill the cap; a new client still gets in: the oldest idle one is
    // closed to make room, the others stay open.
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(TcpStream::connect(app.addr).await.unwrap());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let body = eduzz_event("room-1", "nutror.lesson_started");
    let answer = raw(
        app.addr,
        &signed_request("/webhooks/eduzz", &body, ""),
        Duration::from_secs(5),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(closed_within(&mut held[0], Duration::from_secs(2)).await);
    assert!(!closed_within(&mut held[3], Duration::from_millis(300)).await);
    let evicted = "eduzz_bridge_connections_closed_total{listener=\"webhook\",reason=\"evicted_at_capacity\"}";
    assert!(app.metric(evicted).await.unwrap() >= 1.0);
    drop(held);

    // Four requests busy with Kafka (down): those are never closed to make room, so a new
    // connection gets an immediate 503 it can read whole, with a length matching its body.
    app.broker().down();
    let busy: Vec<_> = (0..4)
        .map(|i| post_in_background(app.addr, &format!("busy-{i}"), "nutror.lesson_started"))
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let body = eduzz_event("over-cap", "nutror.lesson_started");
    let answer = raw(
        app.addr,
        &signed_request("/webhooks/eduzz", &body, ""),
        Duration::from_secs(3),
    )
    .await;
    let (head, sent) = answer.split_once("\r\n\r\n").expect("a whole answer");
    assert!(head.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(head.contains("retry-after: 1"), "{head}");
    let declared: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(declared, sent.len(), "{answer}");
    let json: serde_json::Value = serde_json::from_str(sent).unwrap();
    assert_eq!(json["error"], "busy");
    assert!(json["message"]
        .as_str()
        .unwrap()
        .contains("too many open connections"));
    let refused =
        "eduzz_bridge_connections_closed_total{listener=\"webhook\",reason=\"over_capacity\"}";
    assert_eq!(app.metric(refused).await, Some(1.0));
    app.broker().up();
    for b in busy {
        // Published once Kafka is back, or told to retry: never cut off.
        let answer = b.await.unwrap();
        assert!(
            answer.starts_with("HTTP/1.1 200") || answer.starts_with("HTTP/1.1 503"),
            "{answer}"
        );
    }
    app.shutdown().await;
}

async fn only_authenticated_requests_hold_in_flight_slots_and_every_refusal_is_counted() {
    let app = TestApp::spawn_with(|t| {
        published_with(
            "max_header_bytes = 8192\nmax_body_bytes = 4096\nmax_body_memory_bytes = 6000",
        )(t)
        .replace(
            "format = \"eduzz\"\n",
            "format = \"eduzz\"\nmax_in_flight = 1\n",
        )
    })
    .await;
    let topic = "nutror.lesson_started";

    // A slow upload, and headers announcing a body that never comes, hold no slot: the only
    // slot of the source is still free for a signed request.
    let body = eduzz_event("slot-1", topic);
    let full = signed_request("/webhooks/eduzz", &body, "");
    let (head_part, body_part) = full.split_at(full.len() - body.len());
    let mut slow = TcpStream::connect(app.addr).await.unwrap();
    slow.write_all(head_part).await.unwrap();
    slow.write_all(&body_part[..10]).await.unwrap();
    let mut no_body = TcpStream::connect(app.addr).await.unwrap();
    no_body
        .write_all(b"POST /webhooks/eduzz HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let resp = app.post_eduzz(&eduzz_event("slot-2", topic), SECRET).await;
    assert_eq!(resp.status(), 200);
    // Bad signatures never take it either.
    for _ in 0..3 {
        let resp = app.post_eduzz(&eduzz_event("forged", topic), "wrong").await;
        assert_eq!(resp.status(), 401);
    }
    // The slow upload completes and is taken.
    slow.write_all(&body_part[10..]).await.unwrap();
    let mut out = Vec::new();
    slow.read_to_end(&mut out).await.unwrap();
    assert!(String::from_utf8_lossy(&out).starts_with("HTTP/1.1 200"));

    // Bodies in memory are bounded all together: with 4000 bytes still arriving, another
    // 4000 do not fit in 6000 and get 503 (read whole and dropped, so the client reads it).
    let big = |id: &str| {
        let pad = "x".repeat(3900);
        format!(r#"{{"id":"{id}","event":"{topic}","data":{{"pad":"{pad}"}}}}"#).into_bytes()
    };
    let first = big("mem-1");
    let full = signed_request("/webhooks/eduzz", &first, "");
    let mut holder = TcpStream::connect(app.addr).await.unwrap();
    holder.write_all(&full[..full.len() - 10]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let resp = app.post_eduzz(&big("mem-2"), SECRET).await;
    assert_eq!(resp.status(), 503);
    assert!(resp.text().await.unwrap().contains("request bodies"));
    holder.write_all(&full[full.len() - 10..]).await.unwrap();
    let mut out = Vec::new();
    holder.read_to_end(&mut out).await.unwrap();
    assert!(String::from_utf8_lossy(&out).starts_with("HTTP/1.1 200"));

    // The slot bites once requests are authenticated: one waits for Kafka (down), the next
    // gets 503 + Retry-After.
    app.broker().down();
    let waiting = post_in_background(app.addr, "slot-3", topic);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let resp = app.post_eduzz(&eduzz_event("slot-4", topic), SECRET).await;
    assert_eq!(resp.status(), 503);
    assert!(resp.headers().contains_key("retry-after"));
    assert!(resp
        .text()
        .await
        .unwrap()
        .contains("in flight for this source"));
    app.broker().up();
    let _ = waiting.await;

    for (reason, at_least) in [("unauthorized", 3.0), ("busy", 2.0)] {
        let series = format!("eduzz_bridge_refusals_total{{source=\"eduzz\",reason=\"{reason}\"}}");
        let n = app.metric(&series).await.unwrap_or(0.0);
        assert!(n >= at_least, "{series} = {n}");
    }
    let records = app.read_topic(topic, 3, Duration::from_secs(20)).await;
    let ids: std::collections::HashSet<String> = records
        .iter()
        .map(|r| r.header("event-id").unwrap())
        .collect();
    for id in ["slot-1", "slot-2", "mem-1"] {
        assert!(ids.contains(id), "{id} missing from {ids:?}");
    }
    assert!(!ids.contains("slot-4") && !ids.contains("mem-2"));
    drop(no_body);
    app.shutdown().await;
}

/// Attacker `i`: from 127.0.0.2-4, connects and sends nothing (even `i`) or a head announcing
/// a body it never sends (odd), and reconnects as soon as it is closed, until `stop`; how many
/// times it was closed.
async fn attacker(
    i: u32,
    addr: std::net::SocketAddr,
    stop: tokio_util::sync::CancellationToken,
) -> u32 {
    let from = std::net::SocketAddr::from(([127, 0, 0, 2 + (i % 3) as u8], 0));
    let head: &[u8] = if i % 2 == 0 {
        b""
    } else {
        b"POST /webhooks/eduzz HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n"
    };
    let mut reconnects = 0u32;
    while !stop.is_cancelled() {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(from).unwrap();
        let Ok(mut s) = socket.connect(addr).await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let _ = s.write_all(head).await;
        let mut buf = [0u8; 512];
        tokio::select! {
            _ = s.read(&mut buf) => reconnects += 1,
            _ = stop.cancelled() => {}
        }
    }
    reconnects
}

async fn floods_of_unauthenticated_connections_never_turn_a_signed_request_away() {
    let app = TestApp::spawn_with(|t| {
        t.replace(
            "[server]\n",
            "[server]\nmax_connections = 64\nmax_in_flight_requests = 8\nmax_idle_per_client = 48\n",
        )
    })
    .await;
    let addr = app.addr;
    // 300 attackers from three addresses other than the real client's (127.0.0.2-4; all of
    // 127/8 is loopback): half send nothing, half announce a body they never send; each
    // reconnects as soon as it is closed. Together they want far more than the cap.
    let stop = tokio_util::sync::CancellationToken::new();
    let mut attackers = tokio::task::JoinSet::new();
    for i in 0..300u32 {
        attackers.spawn(attacker(i, addr, stop.clone()));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let mut statuses = Vec::new();
    for i in 0..30 {
        let body = eduzz_event(&format!("real-{i}"), "nutror.lesson_started");
        let resp = client
            .post(app.url("/webhooks/eduzz"))
            .header("x-signature", sign_hex(SECRET.as_bytes(), &body))
            .body(body)
            .send()
            .await;
        statuses.push(resp.map(|r| r.status().as_u16()).unwrap_or(0));
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    stop.cancel();
    let mut reconnects = 0;
    while let Some(n) = attackers.join_next().await {
        reconnects += n.unwrap();
    }
    let closed: Vec<String> = app
        .metrics()
        .await
        .lines()
        .filter(|l| l.starts_with("eduzz_bridge_connections_closed_total{"))
        .map(String::from)
        .collect();
    assert!(
        statuses.iter().all(|s| *s == 200),
        "{statuses:?} {closed:#?}"
    );
    assert!(
        reconnects > 100,
        "the attackers were closed and came back: {reconnects}"
    );
    let text = app.metrics().await;
    assert!(
        text.contains("reason=\"evicted_at_capacity\"")
            || text.contains("reason=\"evicted_client_limit\""),
        "{text}"
    );
    app.read_topic("nutror.lesson_started", 30, Duration::from_secs(20))
        .await
        .len()
        .eq(&30)
        .then_some(())
        .expect("all 30 on Kafka");
    app.shutdown().await;
}

async fn ambiguous_and_hostile_bodies_are_refused_and_nothing_is_half_published() {
    let app =
        TestApp::spawn_with(|t| t.replace("[server]\n", "[server]\nmax_header_bytes = 16384\n"))
            .await;
    let topic = "nutror.comment_created";
    let deep = format!(
        r#"{{"id":"deep","event":"{topic}","data":{}{}}}"#,
        "[".repeat(5000),
        "]".repeat(5000)
    );
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "duplicate id",
            format!(r#"{{"id":"a","event":"{topic}","id":"b"}}"#).into_bytes(),
            "duplicate key 'id'",
        ),
        (
            "duplicate nested key",
            format!(r#"{{"id":"c","event":"{topic}","data":{{"x":1,"x":2}}}}"#).into_bytes(),
            "duplicate key 'x'",
        ),
        ("deeply nested", deep.into_bytes(), "recursion limit"),
        (
            "number as slug",
            br#"{"id":"d","event":42}"#.to_vec(),
            "must be a string, not a number",
        ),
        (
            "trailing garbage",
            format!(r#"{{"id":"e","event":"{topic}"}} x"#).into_bytes(),
            "trailing",
        ),
        ("whitespace only", b"   \n ".to_vec(), "empty"),
        ("NUL bytes", b"\0\0\0".to_vec(), "not valid JSON"),
        (
            "number as id",
            format!(r#"{{"id":12345,"event":"{topic}"}}"#).into_bytes(),
            "'id' must be a string, not a number",
        ),
        (
            "blank id",
            format!(r#"{{"id":"   ","event":"{topic}"}}"#).into_bytes(),
            "missing field 'id'",
        ),
    ];
    for (what, body, says) in cases {
        let resp = app.post_eduzz(&body, SECRET).await;
        assert_eq!(resp.status(), 400, "{what}");
        let text = resp.text().await.unwrap();
        assert!(text.contains(says), "{what}: {text}");
    }
    // A body in an encoding the bridge does not decode is refused, whatever it holds.
    let valid = eduzz_event("encoded", topic);
    let signature = sign_hex(SECRET.as_bytes(), &valid);
    for encoding in ["gzip", "br, identity"] {
        let headers = [
            ("x-signature", signature.as_str()),
            ("content-encoding", encoding),
        ];
        let resp = app.post("/webhooks/eduzz", &headers, &valid).await;
        assert_eq!(resp.status(), 415, "{encoding}");
        let answer: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(answer["error"], "unsupported_encoding");
    }
    let valid = eduzz_event("valid", topic);
    assert_eq!(app.post_eduzz(&valid, SECRET).await.status(), 200);
    let records = app.read_topic(topic, 1, Duration::from_secs(20)).await;
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].value, valid);
    app.shutdown().await;
}

async fn a_configured_signature_header_is_the_only_one_accepted() {
    let app = TestApp::spawn_with(|t| {
        t.replace(
            "secrets = [\"test-secret\", \"old-secret\"]",
            "header = \"x-eduzz-signature\", secrets = [\"test-secret\"]",
        )
    })
    .await;
    let body = eduzz_event("hdr-1", "nutror.lesson_rated");
    let sig = sign_hex(SECRET.as_bytes(), &body);
    let send = |name: &'static str, value: String, body: Vec<u8>| {
        let client = app.client.clone();
        let url = app.url("/webhooks/eduzz");
        async move {
            client
                .post(url)
                .header(name, value)
                .body(body)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(
        send("x-signature", sig.clone(), body.clone()).await,
        401,
        "the default header name is not read"
    );
    assert_eq!(
        send("x-eduzz-signature", sig.clone(), body.clone()).await,
        200
    );
    assert_eq!(
        send(
            "x-eduzz-signature",
            sign_hex(b"old-secret", &body),
            body.clone()
        )
        .await,
        401,
        "a removed secret no longer works"
    );
    app.shutdown().await;
}

async fn allowlists_trust_forwarded_for_only_from_configured_proxies() {
    let allow = |trusted: &'static str| {
        move |t: String| {
            t.replace(
                "[server]\n",
                &format!("[server]\ntrusted_proxies = [{trusted}]\n"),
            )
            .replace(
                "format = \"eduzz\"\n",
                "format = \"eduzz\"\nallow_from = [\"10.0.0.0/8\"]\n",
            )
        }
    };
    let body = eduzz_event("ip-1", "nutror.learner_help");
    let post = |app: &TestApp, xff: Option<&'static str>| {
        let mut r = app
            .client
            .post(app.url("/webhooks/eduzz"))
            .header("x-signature", sign_hex(SECRET.as_bytes(), &body))
            .body(body.clone());
        if let Some(x) = xff {
            r = r.header("x-forwarded-for", x);
        }
        async move { r.send().await.unwrap() }
    };

    // Behind a trusted proxy (loopback here), the forwarded client address decides.
    let app = TestApp::spawn_with(allow("\"127.0.0.1/32\"")).await;
    let resp = post(&app, None).await;
    assert_eq!(resp.status(), 403);
    let answer: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(answer["error"], "forbidden");
    assert_eq!(post(&app, Some("192.0.2.7")).await.status(), 403);
    assert_eq!(post(&app, Some("1.2.3.4, 10.9.8.7")).await.status(), 200);
    app.shutdown().await;

    // Without trusted proxies the header is ignored: a client cannot claim an address.
    let app = TestApp::spawn_with(allow("")).await;
    assert_eq!(post(&app, Some("10.9.8.7")).await.status(), 403);
    app.shutdown().await;
}

mod tls {
    use super::*;
    use rustls::pki_types::{CertificateDer, ServerName};
    use tokio_rustls::TlsConnector;

    fn self_signed(dir: &std::path::Path) -> Vec<u8> {
        let c = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        std::fs::write(dir.join("cert.pem"), c.cert.pem()).unwrap();
        std::fs::write(dir.join("key.pem"), c.signing_key.serialize_pem()).unwrap();
        c.cert.der().to_vec()
    }

    async fn handshake(
        addr: std::net::SocketAddr,
        trusted: &[Vec<u8>],
    ) -> Result<(tokio_rustls::client::TlsStream<TcpStream>, Vec<u8>), String> {
        let mut roots = rustls::RootCertStore::empty();
        for der in trusted {
            roots.add(CertificateDer::from(der.clone())).unwrap();
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let tcp = TcpStream::connect(addr).await.unwrap();
        let stream = TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .map_err(|e| e.to_string())?;
        let presented = stream.get_ref().1.peer_certificates().unwrap()[0].to_vec();
        Ok((stream, presented))
    }

    pub(super) async fn tls_serves_webhooks_and_reloads_its_certificate() {
        let certs = tempfile::tempdir().unwrap();
        let first = self_signed(certs.path());
        let tls = format!(
            "[server]\ntls = {{ cert = \"{}\", key = \"{}\" }}\n",
            certs.path().join("cert.pem").display(),
            certs.path().join("key.pem").display()
        );
        let app = TestApp::spawn_with(|t| t.replace("[server]\n", &tls)).await;
        let bridge = app.tls.clone().expect("TLS is on");

        let (mut stream, presented) = handshake(app.addr, std::slice::from_ref(&first))
            .await
            .unwrap();
        assert_eq!(presented, first);
        let body = eduzz_event("tls-1", "nutror.lesson_started");
        stream
            .write_all(&signed_request("/webhooks/eduzz", &body, ""))
            .await
            .unwrap();
        let mut out = Vec::new();
        stream.read_to_end(&mut out).await.unwrap();
        assert!(
            String::from_utf8_lossy(&out).starts_with("HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&out)
        );

        // Plain HTTP on the TLS port gets nowhere.
        let answer = raw(
            app.addr,
            &signed_request("/webhooks/eduzz", &body, ""),
            Duration::from_secs(3),
        )
        .await;
        assert!(!answer.starts_with("HTTP/1.1 2"), "{answer}");

        // New files + reload: new handshakes present the new certificate.
        let second = self_signed(certs.path());
        bridge.reload().unwrap();
        let (_, presented) = handshake(app.addr, &[first.clone(), second.clone()])
            .await
            .unwrap();
        assert_eq!(presented, second);
        // A broken file is refused and the current certificate stays.
        std::fs::write(certs.path().join("cert.pem"), "not a certificate").unwrap();
        assert!(bridge.reload().is_err());
        let (_, presented) = handshake(app.addr, &[first, second.clone()]).await.unwrap();
        assert_eq!(presented, second);

        let records = app
            .read_topic("nutror.lesson_started", 1, Duration::from_secs(20))
            .await;
        assert_eq!(records[0].value, body);
        app.shutdown().await;
    }
}

/// What one keep-alive connection gets for a request refused before its body was read (head
/// first, its body 200 ms later), then a signed event on the same connection.
async fn refused_then_next_on_one_connection(app: &TestApp, head: &str) -> String {
    let late_body = br#"{"id":"x","event":"y"}"#;
    let mut s = TcpStream::connect(app.addr).await.unwrap();
    let head = format!(
        "{head}\r\nhost: x\r\ncontent-length: {}\r\n\r\n",
        late_body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let next = eduzz_event("after-a-refusal", "nutror.comment_created");
    let mut rest = late_body.to_vec();
    rest.extend(signed_request("/webhooks/eduzz", &next, ""));
    // The server may have closed the connection already: then the write can fail.
    let _ = s.write_all(&rest).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

async fn a_request_refused_before_its_body_arrived_leaves_the_connection_usable() {
    let app = TestApp::spawn("").await;
    for (head, status) in [
        ("POST /no/such/path HTTP/1.1", "404"),
        (
            "POST /webhooks/eduzz HTTP/1.1\r\ncontent-encoding: gzip",
            "415",
        ),
        ("PUT /webhooks/eduzz HTTP/1.1", "405"),
    ] {
        let text = refused_then_next_on_one_connection(&app, head).await;
        assert!(
            text.starts_with(&format!("HTTP/1.1 {status}")),
            "{head}: {text}"
        );
        let answers = text.matches("HTTP/1.1 ").count();
        let first = &text[..text.find("\r\n\r\n").unwrap_or(text.len())];
        // Either the next request was answered properly on the same connection, or the
        // refusal said the connection closes: a client never sends into a dead connection.
        let closing = first.to_ascii_lowercase().contains("connection: close");
        assert!(
            (answers == 2 && text.contains("HTTP/1.1 200")) || (answers == 1 && closing),
            "{head}: {text}"
        );
    }
    app.shutdown().await;
}

/// This file's tests, as the harness (tests/api/main.rs) runs them.
pub(crate) fn tests() -> Vec<Test> {
    vec![
        Test::tokio(
            "slow_loris_and_idle_floods_do_not_stop_a_normal_client",
            slow_loris_and_idle_floods_do_not_stop_a_normal_client,
        ),
        Test::tokio(
            "idle_and_slow_connections_are_closed_after_the_header_timeout",
            idle_and_slow_connections_are_closed_after_the_header_timeout,
        ),
        Test::tokio(
            "at_the_connection_cap_idle_connections_make_room_and_busy_ones_do_not",
            at_the_connection_cap_idle_connections_make_room_and_busy_ones_do_not,
        ),
        Test::tokio(
            "only_authenticated_requests_hold_in_flight_slots_and_every_refusal_is_counted",
            only_authenticated_requests_hold_in_flight_slots_and_every_refusal_is_counted,
        ),
        Test::tokio(
            "floods_of_unauthenticated_connections_never_turn_a_signed_request_away",
            floods_of_unauthenticated_connections_never_turn_a_signed_request_away,
        ),
        Test::tokio(
            "ambiguous_and_hostile_bodies_are_refused_and_nothing_is_half_published",
            ambiguous_and_hostile_bodies_are_refused_and_nothing_is_half_published,
        ),
        Test::tokio(
            "a_configured_signature_header_is_the_only_one_accepted",
            a_configured_signature_header_is_the_only_one_accepted,
        ),
        Test::tokio(
            "allowlists_trust_forwarded_for_only_from_configured_proxies",
            allowlists_trust_forwarded_for_only_from_configured_proxies,
        ),
        Test::tokio(
            "tls::tls_serves_webhooks_and_reloads_its_certificate",
            tls::tls_serves_webhooks_and_reloads_its_certificate,
        ),
        Test::tokio(
            "a_request_refused_before_its_body_arrived_leaves_the_connection_usable",
            a_request_refused_before_its_body_arrived_leaves_the_connection_usable,
        ),
    ]
}
