//! Envelope parsing + routing + message encoding, on arbitrary bytes, in every format.
//! Invariants: no panic; a routed topic is always a legal Kafka name; a message round-trips
//! through the spool encoding byte for byte.
#![no_main]

use std::sync::{Arc, LazyLock};
use std::time::SystemTime;

use bytes::Bytes;
use eduzz_kafka_bridge::config::Config;
use eduzz_kafka_bridge::event::{Event, Message};
use eduzz_kafka_bridge::kafka::topic::check_topic_name;
use eduzz_kafka_bridge::route::{Decision, Router};
use eduzz_kafka_bridge::source::{EnvelopeFormat, Format};
use libfuzzer_sys::fuzz_target;

const CONFIG: &str = r#"
[sources.eduzz]
path = "/e"
format = "eduzz"
auth = { type = "none" }

[[routes]]
match = "myeduzz.invoice_*"
topic = "eduzz.{app}.invoices"
key = "/data/learner/email"

[[routes]]
match = "nutror.*"
topic = "{source}.{slug}"
key = "/data/course/hash"

[[routes]]
match = "*.ping"
drop = true

[default_route]
topic = "{slug}"
key = "/data"
"#;

static ROUTER: LazyLock<Router> = LazyLock::new(|| Config::from_toml(CONFIG).unwrap().router);

static FORMATS: LazyLock<Vec<EnvelopeFormat>> = LazyLock::new(|| {
    vec![
        EnvelopeFormat { format: Format::Eduzz, slug_pointer: None, id_pointer: None },
        EnvelopeFormat { format: Format::Toolzz, slug_pointer: None, id_pointer: None },
        EnvelopeFormat {
            format: Format::Json,
            slug_pointer: Some("/type".into()),
            id_pointer: Some("/meta/id".into()),
        },
    ]
});

fuzz_target!(|data: &[u8]| {
    let body = Bytes::copy_from_slice(data);
    for format in FORMATS.iter() {
        let Ok(env) = format.parse(&body) else { continue };
        assert!(!env.slug.trim().is_empty());
        for source in ["eduzz", "toolzz"] {
            match ROUTER.route(source, &env.slug, &env.id, &env.doc) {
                Decision::Drop { .. } => {}
                Decision::Publish { topic, key } | Decision::Overflow { topic, key } => {
                    assert!(check_topic_name(&topic).is_ok(), "illegal topic {topic:?}");
                    let event = Event {
                        source: Arc::from(source),
                        slug: env.slug.clone().into(),
                        id: env.id.clone(),
                        doc: env.doc.clone(),
                        body: body.clone(),
                        content_type: "application/json".into(),
                        received_at: SystemTime::now(),
                        cloudevent: None,
                        request_headers: Vec::new(),
                        trace: None,
                    };
                    let msg = Message::new(&event, topic, key);
                    assert_eq!(Message::decode(&msg.encode()).unwrap(), msg);
                    assert_eq!(msg.body.as_ref(), data);
                }
            }
        }
    }
});
