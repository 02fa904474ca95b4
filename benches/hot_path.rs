//! Micro-benchmarks of the per-request hot path, so a regression shows without a load test:
//! signature check, envelope parse, routing, and the spool encoding of a message.
//! `cargo bench --bench hot_path`

use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use eduzz_kafka_bridge::config::{Format, Settings};
use eduzz_kafka_bridge::message::Message;
use eduzz_kafka_bridge::route::Router;
use eduzz_kafka_bridge::source::auth::sign_hex;
use eduzz_kafka_bridge::source::{EnvelopeFormat, Event, Sources};

const FIXTURE: &str = include_str!("../examples/payloads/nutror.module_completed.json");

const CONFIG: &str = r#"
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
    let settings = Settings::from_toml(CONFIG).unwrap();
    let sources = Sources::from_settings(&settings).unwrap();
    let router = Router::from_settings(&settings).unwrap();
    let body = Bytes::from_static(FIXTURE.as_bytes());
    let (source, _) = sources.lookup("/webhooks/eduzz").unwrap();
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
        b.iter(|| router.route("eduzz", &envelope.slug, &envelope.id, &envelope.doc))
    });
    g.bench_function("accept + route + encode (whole request, no I/O)", |b| {
        b.iter_batched(
            || body.clone(),
            |body| {
                let event = source
                    .accept(&headers, None, body, SystemTime::now())
                    .unwrap();
                let eduzz_kafka_bridge::route::Decision::Publish { topic, key } =
                    router.route("eduzz", &event.slug, &event.id, &event.doc)
                else {
                    unreachable!()
                };
                Message::new(&event, topic, key).encode()
            },
            BatchSize::SmallInput,
        )
    });
    let event = Event {
        source: Arc::from("eduzz"),
        slug: envelope.slug.clone(),
        id: envelope.id.clone(),
        doc: envelope.doc.clone(),
        body: body.clone(),
        content_type: "application/json".into(),
        received_at: SystemTime::now(),
    };
    let msg = Message::new(&event, "t".into(), b"k".to_vec());
    let encoded = msg.encode();
    g.bench_function("spool encode", |b| b.iter(|| msg.encode()));
    g.bench_function("spool decode", |b| {
        b.iter(|| Message::decode(&encoded).unwrap())
    });
    g.finish();
}

criterion_group!(benches, hot_path);
criterion_main!(benches);
