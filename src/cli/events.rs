//! `events find`: where did event X go? Each archived delivery that matches, with when and by
//! which source it was received, the rule that routed it and the answer given, and where it
//! is now: its topic, partition and offset, the dead-letter topic and why, or not on Kafka
//! (parked, still spooled, or past its topic's retention).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::ControlFlow;

use clap::{Args, Subcommand};
use rdkafka::consumer::BaseConsumer;
use serde_json::{json, Value};

use super::archive_args::{ClusterArgs, FilterArgs};
use crate::archive::{record::archived_at, ArchivedDelivery, Outcome};
use crate::config::Config;
use crate::kafka::headers::DLQ_REASON;
use crate::kafka::reader::ReadError;
use crate::kafka::scan::{scan, scan_if_there, ScanStart};

#[derive(Debug, Subcommand)]
pub enum EventsCommand {
    /// Find archived deliveries (`--id`, or `--slug` with a time window) and where each went.
    Find(FindArgs),
}

#[derive(Debug, Args)]
pub struct FindArgs {
    #[command(flatten)]
    filter: FilterArgs,
    #[command(flatten)]
    cluster: ClusterArgs,
    /// One JSON object per line instead of text.
    #[arg(long)]
    json: bool,
    /// Most deliveries reported.
    #[arg(long, default_value_t = 1000)]
    limit: usize,
}

/// How far around its archive record an event is looked for on its topic: the two are
/// written together, so their timestamps are milliseconds apart; a minute covers a slow
/// broker's clock and a retry.
const AROUND_MS: i64 = 60_000;
/// How long after its archive record a dead letter can follow (the drain retries passing
/// errors before Kafka refuses for good).
const DEAD_LETTER_AFTER_MS: i64 = 15 * 60_000;

pub(super) fn run(config_path: &std::path::Path, cmd: EventsCommand) -> anyhow::Result<i32> {
    let EventsCommand::Find(args) = cmd;
    let config = super::load(config_path)?;
    let Some(archive) = &config.archive else {
        anyhow::bail!("[archive] is disabled in this config: there is nothing to look up");
    };
    anyhow::ensure!(
        args.filter.id.is_some() || args.filter.slug.is_some(),
        "give --id ID, or --slug GLOB (with --from and --to to bound the search)"
    );
    let filter = args.filter.build()?;
    let cluster = args.cluster.cluster(&config)?;
    let consumer: BaseConsumer = cluster.scanner_config("eduzz-kafka-bridge-find").create()?;
    let mut found: Vec<ArchivedDelivery> = Vec::new();
    let mut seen = HashSet::new();
    let scanned = scan(&consumer, &archive.name, &filter.scan_start(), None, |s| {
        if let Some(d) = ArchivedDelivery::read(&s.record, s.timestamp_ms) {
            if filter.matches(&d) && seen.insert(d.identity()) {
                found.push(d);
            }
        }
        match found.len() >= args.limit {
            true => ControlFlow::Break(()),
            false => ControlFlow::Continue(()),
        }
    });
    match scanned {
        Ok(_) => {}
        Err(ReadError::NoTopic(t)) => anyhow::bail!(
            "the archive topic {t} does not exist (yet): nothing was archived on this cluster"
        ),
        Err(e) => return Err(e.into()),
    }
    found.sort_by_key(|d| (d.received_at_ms(), d.offset));
    let places = locate(&consumer, &config, &found)?;
    for d in &found {
        let line = describe(d, places.get(&place_key(d)));
        match args.json {
            true => say!("{line}"),
            false => say!("{}", text(&line)),
        }
    }
    if found.is_empty() {
        eprintln!("no archived delivery matches");
        return Ok(1);
    }
    Ok(0)
}

/// Where a taken event is now.
#[derive(Debug, Clone)]
enum Place {
    Topic {
        topic: String,
        partition: i32,
        offset: i64,
    },
    DeadLetter {
        topic: String,
        partition: i32,
        offset: i64,
        reason: String,
    },
}

type PlaceKey = (String, String);

fn place_key(d: &ArchivedDelivery) -> PlaceKey {
    (d.source.clone(), d.id.clone())
}

/// Looks each taken delivery up on its topic, around its archive record's time, then on the
/// dead-letter topic for those not found.
fn locate(
    consumer: &BaseConsumer,
    config: &Config,
    found: &[ArchivedDelivery],
) -> anyhow::Result<HashMap<PlaceKey, Place>> {
    let mut by_topic: BTreeMap<String, Vec<&ArchivedDelivery>> = BTreeMap::new();
    for d in found.iter().filter(|d| d.outcome == Outcome::Taken) {
        if let Some(t) = &d.topic {
            by_topic.entry(t.clone()).or_default().push(d);
        }
    }
    let mut places = HashMap::new();
    for (topic, wanted) in &by_topic {
        let from = wanted.iter().map(|d| d.archived_at_ms).min().unwrap_or(0) - AROUND_MS;
        let until = wanted.iter().map(|d| d.archived_at_ms).max().unwrap_or(0) + AROUND_MS;
        look_on(
            consumer,
            topic,
            wanted,
            (from, until),
            &mut places,
            |_, p, o| Place::Topic {
                topic: topic.clone(),
                partition: p,
                offset: o,
            },
        )?;
    }
    let Some(dlq) = &config.delivery.dead_letter_topic else {
        return Ok(places);
    };
    let missing: Vec<&ArchivedDelivery> = by_topic
        .values()
        .flatten()
        .copied()
        .filter(|d| !places.contains_key(&place_key(d)))
        .collect();
    if !missing.is_empty() {
        let from = missing.iter().map(|d| d.archived_at_ms).min().unwrap_or(0) - AROUND_MS;
        let until =
            missing.iter().map(|d| d.archived_at_ms).max().unwrap_or(0) + DEAD_LETTER_AFTER_MS;
        look_on(
            consumer,
            dlq,
            &missing,
            (from, until),
            &mut places,
            |r, p, o| Place::DeadLetter {
                topic: dlq.clone(),
                partition: p,
                offset: o,
                reason: r.header(DLQ_REASON).unwrap_or_default(),
            },
        )?;
    }
    Ok(places)
}

/// Scans `topic` between the two times for the `wanted` events, recording where each is.
fn look_on(
    consumer: &BaseConsumer,
    topic: &str,
    wanted: &[&ArchivedDelivery],
    (from, until): (i64, i64),
    places: &mut HashMap<PlaceKey, Place>,
    place: impl Fn(&crate::kafka::reader::Record, i32, i64) -> Place,
) -> anyhow::Result<()> {
    let mut left: HashSet<PlaceKey> = wanted.iter().map(|d| place_key(d)).collect();
    scan_if_there(consumer, topic, &ScanStart::Time(from), Some(until), |s| {
        let Some(key) = s.record.event_key() else {
            return ControlFlow::Continue(());
        };
        let key = (key.source().to_string(), key.id().to_string());
        if left.remove(&key) {
            places.insert(key, place(&s.record, s.record.partition, s.record.offset));
        }
        match left.is_empty() {
            true => ControlFlow::Break(()),
            false => ControlFlow::Continue(()),
        }
    })?;
    Ok(())
}

/// One delivery and where it is, as a JSON object.
fn describe(d: &ArchivedDelivery, place: Option<&Place>) -> Value {
    let mut line = json!({
        "id": d.id,
        "source": d.source,
        "slug": d.slug,
        "received_at": d.received_at,
        "outcome": d.outcome.as_str(),
        "rule": d.rule,
        "answer": d.answer,
        "archive": {"partition": d.partition, "offset": d.offset, "archived_at": archived_at(d.archived_at_ms)},
    });
    let status = match (d.outcome, place) {
        (Outcome::Dropped, _) => {
            json!({"status": "dropped", "why": format!("rule {} drops it", d.rule.as_deref().unwrap_or("?"))})
        }
        (Outcome::Duplicate, _) => {
            json!({"status": "duplicate", "why": "taken before, within the dedupe window: the first delivery is the one published"})
        }
        (
            Outcome::Taken,
            Some(Place::Topic {
                topic,
                partition,
                offset,
            }),
        ) => {
            json!({"status": "published", "topic": topic, "partition": partition, "offset": offset})
        }
        (
            Outcome::Taken,
            Some(Place::DeadLetter {
                topic,
                partition,
                offset,
                reason,
            }),
        ) => {
            json!({"status": "dead_lettered", "topic": topic, "partition": partition, "offset": offset, "why": reason, "meant_for": d.topic})
        }
        (Outcome::Taken, None) => {
            json!({"status": "not_on_kafka", "topic": d.topic, "why": "not on its topic near its archive time: parked (see `parked list`), still spooled, or past the topic's retention"})
        }
    };
    line["where"] = status;
    line
}

/// The same, as a line for a person.
fn text(line: &Value) -> String {
    let s = |v: &Value| v.as_str().unwrap_or("-").to_string();
    let w = &line["where"];
    let place = match w["status"].as_str() {
        Some("published") => format!(
            "published to {} partition {} offset {}",
            s(&w["topic"]),
            w["partition"],
            w["offset"]
        ),
        Some("dead_lettered") => format!(
            "dead-lettered to {} partition {} offset {} ({})",
            s(&w["topic"]),
            w["partition"],
            w["offset"],
            s(&w["why"])
        ),
        Some(other) => format!("{other}: {}", s(&w["why"])),
        None => "-".into(),
    };
    format!(
        "{} {} {} id={} rule={} answered {} -> {}",
        s(&line["received_at"]),
        s(&line["source"]),
        s(&line["slug"]),
        s(&line["id"]),
        s(&line["rule"]),
        line["answer"],
        place
    )
}
