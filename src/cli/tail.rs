//! `tail`: print a topic's events as JSON lines (partition, offset, key, headers, value).
//!
//! Meant for people checking what the bridge published, and for scripts and tests: values
//! that are UTF-8 are printed as text, anything else as hex.

use std::time::{Duration, Instant};

use clap::Args;
use rdkafka::consumer::BaseConsumer;
use rdkafka::Offset;
use serde_json::{json, Map, Value};

use crate::kafka::reader::{self, ReadError, Record};
use crate::kafka::Cluster;

#[derive(Debug, Args)]
pub struct TailArgs {
    /// Bootstrap servers (the bridge logs them when it runs on its embedded broker).
    #[arg(long, env = "EKB__KAFKA__BROKERS")]
    brokers: String,
    /// Topic to read.
    #[arg(long)]
    topic: String,
    /// Start at the end of the topic instead of the beginning.
    #[arg(long)]
    from_end: bool,
    /// Exit after this many events.
    #[arg(long)]
    count: Option<usize>,
    /// Exit after this many seconds without a new event (default: run until interrupted).
    #[arg(long)]
    idle_timeout: Option<f64>,
    /// Extra librdkafka properties, `key=value` (repeatable), e.g. for TLS or SASL.
    #[arg(long = "property", short = 'X', value_parser = parse_property)]
    properties: Vec<(String, String)>,
}

/// A `-X` argument without `=`.
#[derive(Debug, thiserror::Error)]
#[error("'{0}' is not key=value")]
struct NotKeyValue(String);

fn parse_property(s: &str) -> Result<(String, String), NotKeyValue> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| NotKeyValue(s.to_string()))
}

pub(super) fn run(args: TailArgs) -> anyhow::Result<i32> {
    let consumer: BaseConsumer = Cluster::to(&args.brokers)
        .with_properties(args.properties.clone())
        .reader_config("eduzz-kafka-bridge-tail")
        .create()?;
    let idle = args.idle_timeout.map(Duration::from_secs_f64);
    let start = if args.from_end {
        Offset::End
    } else {
        Offset::Beginning
    };
    // Wait for the topic to exist (the bridge creates it with its first event).
    match reader::assign_all(&consumer, &args.topic, start, idle) {
        Ok(_) => {}
        Err(ReadError::NoTopic(topic)) => {
            eprintln!("topic {topic} does not exist (yet)");
            return Ok(if args.count.is_some() { 1 } else { 0 });
        }
        Err(e) => return Err(e.into()),
    }
    let mut seen = 0usize;
    let mut last = Instant::now();
    loop {
        if args.count.is_some_and(|c| seen >= c) {
            return Ok(0);
        }
        if idle.is_some_and(|d| last.elapsed() >= d) {
            return Ok(if args.count.is_some_and(|c| seen < c) {
                1
            } else {
                0
            });
        }
        match consumer.poll(Duration::from_millis(200)) {
            None => {}
            Some(Err(e)) => eprintln!("kafka error: {e}"),
            Some(Ok(m)) => {
                seen += 1;
                last = Instant::now();
                say!("{}", line(&Record::of(&m)));
            }
        }
    }
}

/// One record as a JSON line: text where the bytes are UTF-8, hex where they are not.
fn line(r: &Record) -> Value {
    let headers: Map<String, Value> = r
        .headers
        .iter()
        .map(|(k, v)| (k.clone(), bytes_json(v)))
        .collect();
    json!({
        "topic": r.topic,
        "partition": r.partition,
        "offset": r.offset,
        "key": r.key.as_deref().map(bytes_json).unwrap_or(Value::Null),
        "headers": headers,
        "value": bytes_json(&r.value),
    })
}

fn bytes_json(b: &[u8]) -> Value {
    match std::str::from_utf8(b) {
        Ok(s) => Value::String(s.to_string()),
        Err(_) => json!({ "hex": hex::encode(b) }),
    }
}
