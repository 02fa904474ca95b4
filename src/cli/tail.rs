//! `tail`: print a topic's events as JSON lines (partition, offset, key, headers, value).
//!
//! Meant for people checking what the bridge published, and for scripts and tests: values
//! that are UTF-8 are printed as text, anything else as hex.

use std::time::{Duration, Instant};

use clap::Args;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::{json, Map, Value};

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

fn parse_property(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("'{s}' is not key=value"))
}

pub fn run(args: TailArgs) -> anyhow::Result<i32> {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &args.brokers)
        .set("group.id", "eduzz-kafka-bridge-tail")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false");
    for (k, v) in &args.properties {
        config.set(k, v);
    }
    let consumer: BaseConsumer = config.create()?;
    let idle = args.idle_timeout.map(Duration::from_secs_f64);

    // Wait for the topic to exist (the bridge creates it with its first event).
    let started = Instant::now();
    let partitions = loop {
        let md = consumer.fetch_metadata(Some(&args.topic), Duration::from_secs(5))?;
        let n = md
            .topics()
            .iter()
            .find(|t| t.name() == args.topic && t.error().is_none())
            .map(|t| t.partitions().len())
            .unwrap_or(0);
        if n > 0 {
            break n;
        }
        if idle.is_some_and(|d| started.elapsed() >= d) {
            eprintln!("topic {} does not exist (yet)", args.topic);
            return Ok(if args.count.is_some() { 1 } else { 0 });
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let mut tpl = TopicPartitionList::new();
    let start = if args.from_end {
        Offset::End
    } else {
        Offset::Beginning
    };
    for p in 0..partitions as i32 {
        tpl.add_partition_offset(&args.topic, p, start)?;
    }
    consumer.assign(&tpl)?;

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
                let mut headers = Map::new();
                if let Some(h) = m.headers() {
                    for header in h.iter() {
                        headers.insert(
                            header.key.to_string(),
                            bytes_json(header.value.unwrap_or_default()),
                        );
                    }
                }
                let line = json!({
                    "topic": m.topic(),
                    "partition": m.partition(),
                    "offset": m.offset(),
                    "key": m.key().map(bytes_json).unwrap_or(Value::Null),
                    "headers": headers,
                    "value": m.payload().map(bytes_json).unwrap_or(Value::Null),
                });
                println!("{line}");
            }
        }
    }
}

fn bytes_json(b: &[u8]) -> Value {
    match std::str::from_utf8(b) {
        Ok(s) => Value::String(s.to_string()),
        Err(_) => json!({ "hex": hex::encode(b) }),
    }
}
