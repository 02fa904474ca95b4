//! The whole webhook handler on arbitrary requests, against a real spool.
//!
//! The first input byte picks the path, method and signature; the rest is the body. Correctly
//! signed bodies reach envelope parsing, routing and the spool (which fills up, so the 503
//! path is exercised too). Invariants: no panic; every answer is one of the documented
//! statuses with a JSON body; a 2xx only for authentic, well-formed deliveries.
#![no_main]

use std::net::SocketAddr;
use std::sync::{Arc, LazyLock};

use bytes::Bytes;
use eduzz_kafka_bridge::config::Config;
use eduzz_kafka_bridge::delivery::Delivery;
use eduzz_kafka_bridge::http::webhook::Webhook;
use eduzz_kafka_bridge::metrics::Metrics;
use eduzz_kafka_bridge::pipeline::Pipeline;
use eduzz_kafka_bridge::source::auth::sign_hex;
use eduzz_kafka_bridge::spool::Spool;
use http_body_util::Full;
use libfuzzer_sys::fuzz_target;

static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
});

static WEBHOOK: LazyLock<Arc<Webhook>> = LazyLock::new(|| {
    // The spool lives for the whole run; on tmpfs when there is one, so fsync is cheap.
    let base = if std::path::Path::new("/dev/shm").is_dir() { "/dev/shm" } else { "/tmp" };
    let dir = Box::leak(Box::new(tempfile::tempdir_in(base).unwrap()));
    let text = format!(
        r#"
[server]
max_body_bytes = 65536
body_timeout = "1s"
max_in_flight_requests = 16

[spool]
dir = "{}"
max_bytes = 2000000

[sources.eduzz]
path = "/webhooks/eduzz"
format = "eduzz"
auth = {{ type = "hmac-sha256", secrets = ["fuzz-secret"] }}

[sources.toolzz]
path = "/webhooks/toolzz/{{token}}"
format = "toolzz"
auth = {{ type = "token", tokens = ["fuzz-token"] }}

[[routes]]
match = "nutror.*"
topic = "{{source}}.{{slug}}"
key = "/data/learner/email"
"#,
        dir.path().display()
    );
    // Built the way `serve` builds it: the same config, pipeline and handler.
    let config = Config::from_toml(&text).unwrap();
    let spool = RUNTIME.block_on(async { Spool::open(&config.spool, &config.dedupe).unwrap() });
    let metrics = Arc::new(Metrics::new());
    let delivery = Delivery::spooled(spool, metrics.clone());
    let pipeline = Pipeline::new(config.sources, config.router, delivery, metrics);
    Arc::new(Webhook::new(pipeline, &config.server))
});

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, body)) = data.split_first() else { return };
    let path = match ctl & 3 {
        0 => "/webhooks/eduzz",
        1 => "/webhooks/toolzz/fuzz-token",
        2 => "/webhooks/toolzz/wrong-token",
        _ => "/webhooks/other",
    };
    let method = if ctl & 4 == 0 { http::Method::POST } else { http::Method::PUT };
    let signature = if ctl & 8 == 0 {
        sign_hex(b"fuzz-secret", body)
    } else {
        String::from_utf8_lossy(&body[..body.len().min(64)]).into_owned()
    };
    let mut req = http::Request::builder().method(method.clone()).uri(path);
    if let Ok(v) = http::HeaderValue::from_str(&signature) {
        req = req.header("x-signature", v);
    }
    let req = req.body(Full::new(Bytes::copy_from_slice(body))).unwrap();
    let peer: SocketAddr = "127.0.0.1:40000".parse().unwrap();

    let answer = RUNTIME.block_on(WEBHOOK.clone().handle(req, peer));
    let status = answer.status().as_u16();
    assert!(
        [200, 202, 400, 401, 403, 404, 405, 408, 413, 415, 503].contains(&status),
        "undocumented status {status}"
    );
    let bytes = RUNTIME.block_on(async {
        use http_body_util::BodyExt;
        answer.into_body().collect().await.unwrap().to_bytes()
    });
    let doc: serde_json::Value = serde_json::from_slice(&bytes).expect("answers are JSON");
    if (200..300).contains(&status) {
        assert_eq!(method, http::Method::POST);
        let authentic = (path == "/webhooks/eduzz" && ctl & 8 == 0) || path == "/webhooks/toolzz/fuzz-token";
        assert!(authentic, "2xx for an unauthenticated delivery: {doc}");
        assert!(serde_json::from_slice::<serde_json::Value>(body).is_ok(), "2xx for a body that is not JSON");
    }
});
