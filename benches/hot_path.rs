//! Micro-benchmarks of the per-request hot path, so a regression shows without a load test:
//! signature check, envelope parse, routing, the spool encoding of a message, and the whole
//! pipeline (the same [`Pipeline::process`] that serves requests) on a spool in tmpfs.
//! `cargo bench --bench hot_path`

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use eduzz_kafka_bridge::config::Config;
use eduzz_kafka_bridge::delivery::Delivery;
use eduzz_kafka_bridge::event::{Event, Message};
use eduzz_kafka_bridge::metrics::Metrics;
use eduzz_kafka_bridge::pipeline::{Inbound, Outcome, Pipeline};
use eduzz_kafka_bridge::source::auth::sign_hex;
use eduzz_kafka_bridge::source::{EnvelopeFormat, Format};
use eduzz_kafka_bridge::spool::Spool;

const FIXTURE: &str = include_str!("../examples/payloads/nutror.module_completed.json");

const CONFIG: &str = r#"
[dedupe]
enabled = false

[spool]
max_bytes = 4294967296

[sources.eduzz]
path = "/webhooks/eduzz"
format = "eduzz"
auth = { type = "hmac-sha256", secrets = ["new-secret", "old-secret"] }

[[routes]]
match = "myeduzz.invoice_*"
topic = "eduzz.invoices"
key = "/data/learner/email"
[[routes]]
match = "blinket.*"
topic = "eduzz.events.{slug}"
[[routes]]
match = "alpaclass.*"
topic = "eduzz.school.{slug}"
[[routes]]
match = "nutror.complete_lesson_*"
drop = true
[[routes]]
match = "nutror.*"
topic = "{source}.{app}.{slug}"
key = "/data/learner/email"
"#;

fn hot_path(c: &mut Criterion) {
    let config = Config::from_toml(CONFIG).unwrap();
    let body = Bytes::from_static(FIXTURE.as_bytes());
    let (source, _) = config.sources.lookup("/webhooks/eduzz").unwrap();
    let source = source.clone();
    let mut headers = http::HeaderMap::new();
    // Signed with the second (older) secret: the worst case of a rotation.
    headers.insert(
        "x-signature",
        sign_hex(b"old-secret", &body).parse().unwrap(),
    );
    let format = EnvelopeFormat {
        format: Format::Eduzz,
        slug_pointer: None,
        id_pointer: None,
    };
    let envelope = format.parse(&body).unwrap();

    let mut g = c.benchmark_group("hot_path");
    g.throughput(Throughput::Bytes(body.len() as u64));
    g.bench_function("signature (2 live secrets)", |b| {
        b.iter(|| source.auth.verify(&headers, None, &body).unwrap())
    });
    g.bench_function("envelope parse", |b| {
        b.iter(|| format.parse(&body).unwrap())
    });
    g.bench_function("route", |b| {
        b.iter(|| {
            config
                .router
                .route("eduzz", &envelope.slug, &envelope.id, &envelope.doc)
        })
    });
    let event = Event {
        source: Arc::from("eduzz"),
        slug: envelope.slug.clone().into(),
        id: envelope.id.clone(),
        doc: envelope.doc.clone(),
        body: body.clone(),
        content_type: "application/json".into(),
        received_at: SystemTime::now(),
        cloudevent: None,
        request_headers: Vec::new(),
        trace: None,
    };
    let msg = Message::new(&event, "t", b"k".to_vec());
    let encoded = msg.encode();
    g.bench_function("spool encode", |b| b.iter(|| msg.encode()));
    g.bench_function("spool decode", |b| {
        b.iter(|| Message::decode(&encoded).unwrap())
    });
    g.finish();
    whole_pipeline(c, config, source, headers, body);
}

/// One request through [`Pipeline::process`] in `spooled` mode: authenticate, parse, route,
/// encode, group-commit into a spool on tmpfs (so the figure is CPU, not the disk).
fn whole_pipeline(
    c: &mut Criterion,
    mut config: Config,
    source: Arc<eduzz_kafka_bridge::source::Source>,
    headers: http::HeaderMap,
    body: Bytes,
) {
    let base = if std::path::Path::new("/dev/shm").is_dir() {
        "/dev/shm"
    } else {
        "/tmp"
    };
    let dir = tempfile::tempdir_in(base).unwrap();
    config.spool.dir = dir.path().join("spool");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let metrics = Arc::new(Metrics::new());
    let spool = rt.block_on(async { Spool::open(&config.spool, &config.dedupe).unwrap() });
    let delivery = Delivery::spooled(spool.clone(), metrics.clone());
    let pipeline = Pipeline::new(config.sources, config.router, delivery, metrics);
    let mut g = c.benchmark_group("pipeline");
    g.throughput(Throughput::Bytes(body.len() as u64));
    g.sample_size(20).measurement_time(Duration::from_secs(3));
    g.bench_function("process (spooled, tmpfs, one request at a time)", |b| {
        b.iter(|| {
            let inbound = Inbound {
                headers: &headers,
                path_token: None,
                body: body.clone(),
                received_at: SystemTime::now(),
            };
            let outcome = rt.block_on(pipeline.process(&source, inbound));
            assert!(matches!(outcome, Outcome::Accepted { .. }), "{outcome:?}");
        })
    });
    g.finish();
    rt.block_on(spool.close());
}

criterion_group!(benches, hot_path);
criterion_main!(benches);
