//! The public port under abuse: slow and idle connection floods, oversized and endless
//! requests, limits, allowlists, TLS. Loopback only, bounded in count and time.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use eduzz_kafka_bridge::source::auth::sign_hex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends raw bytes, returns what the server answered before closing (or within `wait`).
async fn raw(addr: std::net::SocketAddr, request: &[u8], wait: Duration) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(wait, s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
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
        assert_eq!(resp.status(), 202);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
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
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 202"));
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_answer_clearly_and_the_rest_of_the_service_goes_on() {
    let app = TestApp::spawn_with(|t| {
        t.replace(
            "[server]\n",
            "[server]\nmax_connections = 8\nheader_timeout = \"2s\"\nbody_timeout = \"3s\"\n",
        )
        .replace(
            "format = \"eduzz\"\n",
            "format = \"eduzz\"\nmax_in_flight = 1\n",
        )
    })
    .await;

    // Over the connection cap: an immediate 503, then the connection is closed.
    let mut held = Vec::new();
    for _ in 0..8 {
        held.push(TcpStream::connect(app.addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let answer = raw(app.addr, b"", Duration::from_secs(2)).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("too many open connections"));
    // A client that sends its whole request before reading (most SDKs) reads the whole 503
    // too, with a length that matches its body, not a reset.
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
    drop(held);
    tokio::time::sleep(Duration::from_millis(200)).await;

    // A request head over max_header_bytes: 431.
    let huge = format!("x-junk: {}\r\n", "a".repeat(40 * 1024));
    let answer = raw(
        app.addr,
        &signed_request("/webhooks/eduzz", b"{}", &huge),
        Duration::from_secs(3),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");

    // Per-source in-flight limit: one slow upload holds the only slot; the next gets 503.
    let body = eduzz_event("slot-1", "nutror.lesson_started");
    let full = signed_request("/webhooks/eduzz", &body, "");
    let (head_part, body_part) = full.split_at(full.len() - body.len());
    let mut slow = TcpStream::connect(app.addr).await.unwrap();
    slow.write_all(head_part).await.unwrap();
    slow.write_all(&body_part[..10]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let resp = app
        .post_eduzz(&eduzz_event("slot-2", "nutror.lesson_started"), SECRET)
        .await;
    assert_eq!(resp.status(), 503);
    assert!(resp.headers().contains_key("retry-after"));
    // The slow upload completes and is taken; then the slot is free again.
    slow.write_all(&body_part[10..]).await.unwrap();
    let mut out = Vec::new();
    slow.read_to_end(&mut out).await.unwrap();
    assert!(String::from_utf8_lossy(&out).starts_with("HTTP/1.1 202"));
    let resp = app
        .post_eduzz(&eduzz_event("slot-3", "nutror.lesson_started"), SECRET)
        .await;
    assert_eq!(resp.status(), 202);

    let records = app
        .read_topic("nutror.lesson_started", 2, Duration::from_secs(20))
        .await;
    let ids: std::collections::HashSet<String> = records
        .iter()
        .map(|r| r.header("event-id").unwrap())
        .collect();
    assert_eq!(
        ids,
        ["slot-1", "slot-3"].into_iter().map(String::from).collect()
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
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
    assert_eq!(app.post_eduzz(&valid, SECRET).await.status(), 202);
    let records = app.read_topic(topic, 1, Duration::from_secs(20)).await;
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].value, valid);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
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
        202
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
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
    assert_eq!(post(&app, Some("1.2.3.4, 10.9.8.7")).await.status(), 202);
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

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tls_serves_webhooks_and_reloads_its_certificate() {
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
            String::from_utf8_lossy(&out).starts_with("HTTP/1.1 202"),
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
