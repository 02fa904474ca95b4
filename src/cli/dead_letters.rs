//! `dead-letters list | redrive`: the dead-letter topic, read, and its events sent back once
//! the cause is fixed (a topic created, a size limit raised).
//!
//! A dead letter is sent back to the topic it was meant for (or, `--through-routes`, where
//! today's routes send it) with `redrive-attempt` and `redriven-from` headers. One that Kafka
//! refuses again goes back to the dead-letter topic with the new reason and the next attempt
//! count: never lost. Kafka topics are append-only, so a dead letter is never removed; a
//! redrive looks for `redriven-from` on the dead-letter topic and the topics it writes, and
//! leaves alone what an earlier redrive already sent back.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::ops::ControlFlow;

use clap::{Args, Subcommand};
use rdkafka::consumer::BaseConsumer;
use rdkafka::error::KafkaError;
use rdkafka::message::OwnedHeaders;
use serde_json::json;

use super::archive_args::{parse_time, ClusterArgs};
use super::replay::{read_again, route_again};
use crate::config::Config;
use crate::event::Message;
use crate::kafka::headers::{
    self, CONTENT_TYPE, DLQ_REASON, DLQ_TOPIC, EVENT, EVENT_ID, RECEIVED_AT, REDRIVEN_FROM,
    REDRIVE_ATTEMPT, SOURCE,
};
use crate::kafka::reader::{ReadError, Record};
use crate::kafka::scan::{scan_if_there, ScanStart, Scanned};
use crate::kafka::{is_permanent, Publisher};

#[derive(Debug, Subcommand)]
pub enum DeadLettersCommand {
    /// List dead letters (JSON lines).
    List(Which),
    /// Send dead letters back (see the module docs).
    Redrive {
        #[command(flatten)]
        which: Which,
        /// Count what would be sent, per topic; send nothing.
        #[arg(long, conflicts_with = "apply", required_unless_present = "apply")]
        dry_run: bool,
        /// Send.
        #[arg(long)]
        apply: bool,
        /// Send each where today's routes send it, not to the topic it was meant for.
        #[arg(long)]
        through_routes: bool,
    },
}

#[derive(Debug, Args)]
pub struct Which {
    /// Only dead letters whose reason contains this (`MessageSizeTooLarge`).
    #[arg(long)]
    reason: Option<String>,
    /// Only this event id.
    #[arg(long)]
    id: Option<String>,
    /// Only dead letters written at or after (RFC 3339, a date, or a time ago: `36h`).
    #[arg(long, value_parser = parse_time)]
    from: Option<i64>,
    #[command(flatten)]
    cluster: ClusterArgs,
}

/// One dead letter read back.
struct DeadLetter {
    scanned: Scanned,
    topic: String,
}

impl DeadLetter {
    fn header(&self, name: &str) -> Option<String> {
        self.scanned.record.header(name)
    }

    /// `topic/partition/offset`: what `redriven-from` names.
    fn mark(&self) -> String {
        let r = &self.scanned.record;
        format!("{}/{}/{}", self.topic, r.partition, r.offset)
    }

    fn attempt(&self) -> u32 {
        self.header(REDRIVE_ATTEMPT)
            .and_then(|a| a.parse().ok())
            .unwrap_or(0)
    }
}

pub(super) fn run(config_path: &std::path::Path, cmd: DeadLettersCommand) -> anyhow::Result<i32> {
    let config = super::load(config_path)?;
    let Some(dlq) = config.delivery.dead_letter_topic.clone() else {
        anyhow::bail!("delivery.dead_letter_topic is not set in this config");
    };
    let which = match &cmd {
        DeadLettersCommand::List(w) | DeadLettersCommand::Redrive { which: w, .. } => w,
    };
    let cluster = which.cluster.cluster(&config)?;
    let consumer: BaseConsumer = cluster
        .scanner_config("eduzz-kafka-bridge-dead-letters")
        .create()?;
    let (letters, mut handled) = read_dead_letters(&consumer, &dlq, which)?;
    match cmd {
        DeadLettersCommand::List(_) => {
            for d in &letters {
                say!("{}", describe(d, handled.contains(&d.mark())));
            }
            Ok(0)
        }
        DeadLettersCommand::Redrive {
            apply,
            through_routes,
            ..
        } => {
            let topics: BTreeSet<String> =
                letters.iter().filter_map(|d| d.header(DLQ_TOPIC)).collect();
            let since = letters
                .iter()
                .map(|d| d.scanned.timestamp_ms)
                .min()
                .unwrap_or(0);
            handled.extend(redriven_marks(&consumer, &topics, since)?);
            let todo: Vec<&DeadLetter> = letters
                .iter()
                .filter(|d| !handled.contains(&d.mark()))
                .collect();
            let redrive = Redrive {
                config: &config,
                dlq: &dlq,
                through_routes,
            };
            redrive.run(&cluster, &todo, letters.len() - todo.len(), apply)
        }
    }
}

/// The dead letters asked for, and the marks of those an earlier redrive already handled
/// (a dead letter written again names the one it came from).
fn read_dead_letters(
    consumer: &BaseConsumer,
    dlq: &str,
    which: &Which,
) -> anyhow::Result<(Vec<DeadLetter>, HashSet<String>)> {
    let (mut letters, mut handled) = (Vec::new(), HashSet::new());
    let start = which.from.map_or(ScanStart::Beginning, ScanStart::Time);
    scan_if_there(consumer, dlq, &start, None, |scanned| {
        let d = DeadLetter {
            scanned,
            topic: dlq.to_string(),
        };
        if let Some(from) = d.header(REDRIVEN_FROM) {
            handled.insert(from);
        }
        let reason_ok = which
            .reason
            .as_ref()
            .is_none_or(|r| d.header(DLQ_REASON).is_some_and(|h| h.contains(r.as_str())));
        let id_ok = which
            .id
            .as_ref()
            .is_none_or(|id| d.header(EVENT_ID).as_deref() == Some(id));
        if reason_ok && id_ok {
            letters.push(d);
        }
        ControlFlow::Continue(())
    })?;
    Ok((letters, handled))
}

/// The `redriven-from` marks on `topics` since shortly before `since_ms`.
fn redriven_marks(
    consumer: &BaseConsumer,
    topics: &BTreeSet<String>,
    since_ms: i64,
) -> anyhow::Result<HashSet<String>> {
    let mut marks = HashSet::new();
    for topic in topics {
        let start = ScanStart::Time(since_ms - 60_000);
        let result = scan_if_there(consumer, topic, &start, None, |s| {
            if let Some(m) = s.record.header(REDRIVEN_FROM) {
                marks.insert(m);
            }
            ControlFlow::Continue(())
        });
        match result {
            Ok(_) => {}
            // A topic the cluster will not even describe took nothing: its dead letters
            // are sent and refused again, and stay dead letters.
            Err(e @ ReadError::Refused { .. }) => {
                eprintln!("cannot look for earlier redrives on {topic}: {e}");
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(marks)
}

fn describe(d: &DeadLetter, redriven: bool) -> serde_json::Value {
    let r = &d.scanned.record;
    json!({
        "partition": r.partition,
        "offset": r.offset,
        "id": d.header(EVENT_ID),
        "source": d.header(SOURCE),
        "slug": d.header(EVENT),
        "received_at": d.header(RECEIVED_AT),
        "reason": d.header(DLQ_REASON),
        "meant_for": d.header(DLQ_TOPIC),
        "redrive_attempt": d.attempt(),
        "redriven": redriven,
        "bytes": r.value.len(),
    })
}

/// A redrive under way.
struct Redrive<'a> {
    config: &'a Config,
    dlq: &'a str,
    through_routes: bool,
}

impl Redrive<'_> {
    fn run(
        &self,
        cluster: &crate::kafka::Cluster,
        todo: &[&DeadLetter],
        already: usize,
        apply: bool,
    ) -> anyhow::Result<i32> {
        let mut by_topic: BTreeMap<String, u64> = BTreeMap::new();
        let mut skipped: BTreeMap<&'static str, u64> = BTreeMap::new();
        let messages: Vec<(&DeadLetter, Message)> = todo
            .iter()
            .filter_map(|d| match self.message(d) {
                Ok(m) => Some((*d, m)),
                Err(why) => {
                    *skipped.entry(why).or_default() += 1;
                    None
                }
            })
            .collect();
        for (_, m) in &messages {
            *by_topic.entry(m.topic.to_string()).or_default() += 1;
        }
        let (mut sent, mut again) = (0u64, 0u64);
        if apply {
            let rt = super::runtime()?;
            let _guard = rt.enter();
            let publisher = Publisher::new(cluster, self.config.delivery.producer_tuning())?;
            for (d, m) in &messages {
                match rt.block_on(self.send(&publisher, d, m))? {
                    true => sent += 1,
                    false => again += 1,
                }
            }
        }
        say!(
            "{}",
            json!({"mode": if apply { "apply" } else { "dry-run" }, "by_topic": by_topic, "redriven": sent, "dead_lettered_again": again, "already_redriven": already, "skipped": skipped})
        );
        Ok(0)
    }

    /// What a dead letter is sent back as.
    fn message(&self, d: &DeadLetter) -> Result<Message, &'static str> {
        let r = &d.scanned.record;
        let text = |name| d.header(name).unwrap_or_default();
        let received = text(RECEIVED_AT)
            .parse::<jiff::Timestamp>()
            .map_or(0, |t| t.as_millisecond());
        let event = read_again(
            self.config,
            &text(SOURCE),
            &text(CONTENT_TYPE),
            &r.value,
            received,
        );
        let mut msg = if self.through_routes {
            route_again(self.config, &event?)?
        } else {
            let topic = d.header(DLQ_TOPIC).ok_or("no_original_topic")?;
            let key = r.key.clone().unwrap_or_default();
            match event {
                Ok(event) => Message::new(&event, topic, key),
                Err(_) => as_recorded(r, topic, key, received),
            }
        };
        // Still in the trace of the request that brought it.
        msg.trace = r.trace();
        Ok(msg)
    }

    /// Sends `m` back; on a refusal for good, writes it to the dead-letter topic again.
    /// `true` when it reached its topic.
    async fn send(
        &self,
        publisher: &Publisher,
        d: &DeadLetter,
        m: &Message,
    ) -> anyhow::Result<bool> {
        let attempt = (d.attempt() + 1).to_string();
        let mark = d.mark();
        let error = match send_once(publisher, m, &attempt, &mark).await {
            Ok(()) => return Ok(true),
            Err(e) if is_permanent(&e) => e,
            Err(e) => anyhow::bail!(
                "Kafka did not confirm {} (nothing lost: it is still a dead letter): {e}",
                m.event_id
            ),
        };
        self.dead_letter_again(publisher, m, &error, &attempt, &mark)
            .await?;
        Ok(false)
    }

    async fn dead_letter_again(
        &self,
        publisher: &Publisher,
        m: &Message,
        error: &KafkaError,
        attempt: &str,
        mark: &str,
    ) -> anyhow::Result<()> {
        let reason = error.to_string();
        let headers = || with_redrive(headers::dead_letter(m, &reason), attempt, mark);
        let sent = match publisher.enqueue_when_room(self.dlq, m, headers).await {
            Ok(future) => future.await,
            Err(e) => Err(e),
        };
        sent.map_err(|e| {
            anyhow::anyhow!("{} was refused again ({error}) and the dead-letter topic did not take it back ({e}); it is still there from before", m.event_id)
        })?;
        eprintln!(
            "{} refused again ({error}): back on {} with attempt {attempt}",
            m.event_id, self.dlq
        );
        Ok(())
    }
}

/// Sends `m` to its topic with the redrive's headers and waits for Kafka's answer (a refusal
/// when it is handed over counts as Kafka's answer).
async fn send_once(
    publisher: &Publisher,
    m: &Message,
    attempt: &str,
    mark: &str,
) -> Result<(), KafkaError> {
    let headers = || with_redrive(headers::of(m), attempt, mark);
    let future = publisher.enqueue_when_room(&m.topic, m, headers).await?;
    future.await.map(|_| ())
}

/// A dead letter whose source is no longer configured: sent back as it was recorded.
fn as_recorded(r: &Record, topic: String, key: Vec<u8>, received_ms: i64) -> Message {
    let text = |name| r.header(name).unwrap_or_default();
    Message {
        topic: topic.into(),
        key: key.into(),
        source: text(SOURCE),
        slug: text(EVENT).into(),
        event_id: text(EVENT_ID),
        received_at_ms: received_ms.max(0) as u64,
        content_type: text(CONTENT_TYPE),
        body: r.value.clone().into(),
        cloudevent: None,
        archive: None,
        trace: None,
    }
}

fn with_redrive(h: OwnedHeaders, attempt: &str, mark: &str) -> OwnedHeaders {
    h.insert(headers::header(REDRIVE_ATTEMPT, attempt))
        .insert(headers::header(REDRIVEN_FROM, mark))
}
