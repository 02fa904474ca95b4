//! `replay`: send archived deliveries again, through the routes in force today.
//!
//! Each archived delivery that matches is read back as its source reads it now (so a rule
//! added since applies, and a dropped event a new rule now takes is sent), and published with
//! its original headers plus `replayed-at` and `replay-id`. Dedupe is bypassed on purpose: a
//! replay exists to send what was sent before.
//!
//! A replay with `--apply` keeps a state file: the archive offsets up to which every send was
//! confirmed, written after each confirmed batch. `--resume FILE` goes on from there, and
//! first reads back what this replay already wrote past that point (its `replay-id` header),
//! so a replay killed half way sends nothing twice. It never writes to the archive it reads.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::io::IsTerminal;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, UNIX_EPOCH};

use bytes::Bytes;
use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rdkafka::consumer::BaseConsumer;
use rdkafka::message::OwnedHeaders;
use serde::{Deserialize, Serialize};

use super::archive_args::{ClusterArgs, Filter, FilterArgs};
use crate::archive::{ArchivedDelivery, Outcome};
use crate::config::Config;
use crate::event::Message;
use crate::kafka::headers::{self, REPLAYED_AT, REPLAY_ID};
use crate::kafka::reader::ReadError;
use crate::kafka::scan::{scan, scan_if_there, ScanStart};
use crate::kafka::{Cluster, Delivery, Publisher};
use crate::route::Decision;

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("mode").required(true).args(["dry_run", "apply"])))]
pub struct ReplayArgs {
    #[command(flatten)]
    filter: FilterArgs,
    /// Only deliveries today's routes send to this topic.
    #[arg(long)]
    topic: Option<String>,
    /// Count what would be sent, per topic; send nothing.
    #[arg(long)]
    dry_run: bool,
    /// Send.
    #[arg(long)]
    apply: bool,
    /// Most events sent per second.
    #[arg(long)]
    rate: Option<f64>,
    /// This replay's id (the `replay-id` header); default: `replay-` and the time.
    #[arg(long)]
    replay_id: Option<String>,
    /// Where the state is kept (default: ./REPLAY-ID.replay.json).
    #[arg(long)]
    state: Option<PathBuf>,
    /// Go on with the replay this state file belongs to (its filter and id; the flags above
    /// other than the mode and --rate are ignored).
    #[arg(long, value_name = "STATE_FILE")]
    resume: Option<PathBuf>,
    #[command(flatten)]
    cluster: ClusterArgs,
}

/// What a resumed replay needs: what it replays, and how far it got.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct State {
    replay_id: String,
    id: Option<String>,
    slug: Option<String>,
    from: Option<i64>,
    to: Option<i64>,
    source: Option<String>,
    topic: Option<String>,
    /// Archive partition → the next offset to read; everything before it was confirmed.
    next: BTreeMap<i32, i64>,
    /// Topics this replay wrote to.
    topics: BTreeSet<String>,
    /// Sends confirmed, over every run of this replay.
    sent: u64,
    /// When the state was last written (ms).
    checkpoint_ms: i64,
}

impl State {
    fn new(args: &ReplayArgs) -> State {
        let now = now_ms();
        let f = &args.filter;
        State {
            replay_id: args
                .replay_id
                .clone()
                .unwrap_or_else(|| format!("replay-{now}")),
            id: f.id.clone(),
            slug: f.slug.clone(),
            from: f.from,
            to: f.to,
            source: f.source.clone(),
            topic: args.topic.clone(),
            next: BTreeMap::new(),
            topics: BTreeSet::new(),
            sent: 0,
            checkpoint_ms: now,
        }
    }

    fn filter(&self) -> anyhow::Result<Filter> {
        FilterArgs {
            id: self.id.clone(),
            slug: self.slug.clone(),
            from: self.from,
            to: self.to,
            source: self.source.clone(),
        }
        .build()
    }

    fn load(path: &Path) -> anyhow::Result<State> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
        Ok(serde_json::from_str(&text)?)
    }

    /// Writes the state beside its file and renames it over, so a kill leaves the old or
    /// the new state, never half of one.
    fn save(&mut self, path: &Path) -> anyhow::Result<()> {
        self.checkpoint_ms = now_ms();
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)?;
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, path)?;
        Ok(())
    }
}

fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

/// Why an archived delivery was not sent, by reason (for the summary).
type Skipped = BTreeMap<&'static str, u64>;

/// Sends confirmed per checkpoint.
const BATCH: usize = 500;

pub(super) fn run(config_path: &Path, args: ReplayArgs) -> anyhow::Result<i32> {
    let config = super::load(config_path)?;
    let Some(archive) = config.archive.clone() else {
        anyhow::bail!("[archive] is disabled in this config: there is nothing to replay");
    };
    let (mut state, path) = open_state(&args)?;
    let cluster = args.cluster.cluster(&config)?;
    let rt = super::runtime()?;
    let _guard = rt.enter();
    let mut replay = Replay {
        config: &config,
        filter: state.filter()?,
        topic: state.topic.clone(),
        apply: args.apply,
        publisher: Publisher::new(&cluster, config.delivery.producer_tuning())?,
        rt: &rt,
        pending: Vec::new(),
        positions: BTreeMap::new(),
        replay_id: state.replay_id.clone(),
        seen: HashSet::new(),
        already: resumed_sends(&cluster, &state, args.resume.is_some())?,
        by_topic: BTreeMap::new(),
        skipped: Skipped::new(),
        pace: Pace::new(args.rate),
        progress: progress_bar(),
    };
    if args.apply && args.resume.is_none() {
        state.save(&path)?;
    }
    if args.apply {
        eprintln!("replay {}: dedupe is bypassed on purpose (a replay sends again what was sent before; consumers dedupe on event-id); state in {}", state.replay_id, path.display());
    }
    let started = Instant::now();
    let consumer: BaseConsumer = cluster
        .scanner_config("eduzz-kafka-bridge-replay")
        .create()?;
    let start = match args.resume {
        Some(_) => ScanStart::Offsets(state.next.clone()),
        None => replay.filter.scan_start(),
    };
    let ends = replay.read_archive(&consumer, &archive.name, &start, &mut state, &path)?;
    replay.finish(&mut state, &path, ends)?;
    replay.progress.finish_and_clear();
    say!("{}", replay.summary(&state, &path, started.elapsed()));
    Ok(0)
}

/// The state a replay starts from: its file's, resumed, or a new one (and where it goes).
fn open_state(args: &ReplayArgs) -> anyhow::Result<(State, PathBuf)> {
    if let Some(file) = &args.resume {
        return Ok((State::load(file)?, file.clone()));
    }
    let state = State::new(args);
    let path = args
        .state
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("{}.replay.json", state.replay_id)));
    Ok((state, path))
}

/// One replay under way.
struct Replay<'a> {
    config: &'a Config,
    filter: Filter,
    topic: Option<String>,
    apply: bool,
    publisher: Publisher,
    rt: &'a tokio::runtime::Runtime,
    /// Sends not yet confirmed, with the archive position they came from.
    pending: Vec<Delivery>,
    /// Archive partition → the next offset to read, as far as this run read.
    positions: BTreeMap<i32, i64>,
    replay_id: String,
    /// Archived deliveries already handled in this run (the archive can hold one twice).
    seen: HashSet<(String, String, String, Outcome)>,
    /// Events this replay sent before it was stopped, past its last checkpoint.
    already: HashSet<(String, String)>,
    by_topic: BTreeMap<String, u64>,
    skipped: Skipped,
    pace: Pace,
    progress: ProgressBar,
}

impl Replay<'_> {
    /// Reads the archive from `start`, sending as it goes and writing the state after each
    /// confirmed batch; returns where each partition ended.
    fn read_archive(
        &mut self,
        consumer: &BaseConsumer,
        archive: &str,
        start: &ScanStart,
        state: &mut State,
        path: &Path,
    ) -> anyhow::Result<BTreeMap<i32, i64>> {
        let mut failed = None;
        let scanned = scan(consumer, archive, start, None, |s| {
            let mut step = self.one(&s.record, s.timestamp_ms, state, path);
            if step.is_ok() && self.pending.len() >= BATCH {
                step = self.checkpoint(state, path);
            }
            match step {
                Ok(()) => ControlFlow::Continue(()),
                Err(e) => {
                    failed = Some(e);
                    ControlFlow::Break(())
                }
            }
        });
        if let Some(e) = failed {
            return Err(e);
        }
        match scanned {
            Ok(ends) => Ok(ends),
            Err(ReadError::NoTopic(t)) => {
                anyhow::bail!("the archive topic {t} does not exist (yet)")
            }
            Err(e) => Err(e.into()),
        }
    }

    /// What the replay did, as the JSON line it prints.
    fn summary(&self, state: &State, path: &Path, took: Duration) -> serde_json::Value {
        let seconds = took.as_secs_f64();
        let sent: u64 = self.by_topic.values().sum();
        serde_json::json!({
            "replay_id": state.replay_id,
            "mode": if self.apply { "apply" } else { "dry-run" },
            "dedupe": "bypassed",
            "by_topic": self.by_topic,
            "skipped": self.skipped,
            "sent": if self.apply { sent } else { 0 },
            "seconds": (seconds * 1000.0).round() / 1000.0,
            "per_second": if seconds > 0.0 { (sent as f64 / seconds).round() } else { 0.0 },
            "state": self.apply.then(|| path.display().to_string()),
        })
    }

    /// Handles one archive record: sends it (or counts it, dry run) or says why not.
    fn one(
        &mut self,
        record: &crate::kafka::reader::Record,
        timestamp_ms: i64,
        state: &mut State,
        path: &Path,
    ) -> anyhow::Result<()> {
        self.progress.inc(1);
        self.positions.insert(record.partition, record.offset + 1);
        let Some(d) = ArchivedDelivery::read(record, timestamp_ms) else {
            return self.skip("not_an_archive_record");
        };
        if !self.filter.matches(&d) {
            return Ok(());
        }
        if d.outcome == Outcome::Duplicate {
            return self.skip("repeat_answered_duplicate");
        }
        if !self.seen.insert(d.identity()) {
            return self.skip("archived_twice");
        }
        let msg = match self.message(&d) {
            Ok(msg) => msg,
            Err(why) => return self.skip(why),
        };
        if self.topic.as_ref().is_some_and(|t| *t != *msg.topic) {
            return self.skip("other_topic");
        }
        if self.already.contains(&(d.source.clone(), d.id.clone())) {
            return self.skip("sent_before_the_resume");
        }
        *self.by_topic.entry(msg.topic.to_string()).or_default() += 1;
        if self.apply {
            // A topic is in the state before anything is sent to it: a resume reads back
            // every topic this replay may have written.
            if state.topics.insert(msg.topic.to_string()) {
                state.save(path)?;
            }
            self.pace.wait();
            let future = self.send(&msg)?;
            self.pending.push(future);
        }
        Ok(())
    }

    /// Counts a delivery not sent, by why.
    fn skip(&mut self, why: &'static str) -> anyhow::Result<()> {
        *self.skipped.entry(why).or_default() += 1;
        Ok(())
    }

    /// The archived delivery as its source reads it and today's routes send it.
    fn message(&self, d: &ArchivedDelivery) -> Result<Message, &'static str> {
        let received = d.received_at_ms().unwrap_or(0);
        let event = read_again(self.config, &d.source, &d.content_type, &d.body, received)?;
        let mut msg = route_again(self.config, &event)?;
        msg.trace = d.trace.clone();
        Ok(msg)
    }

    /// Hands `msg` to the producer with its headers and the replay's, waiting out a full
    /// queue. A refusal ends the replay: its state points before this event, so `--resume`
    /// sends it once the cause is fixed.
    fn send(&mut self, msg: &Message) -> anyhow::Result<Delivery> {
        let replayed_at = crate::event::rfc3339_ms(now_ms() as u64);
        let headers = || replay_headers(msg, &replayed_at, &self.replay_id);
        self.rt
            .block_on(self.publisher.enqueue_when_room(&msg.topic, msg, headers))
            .map_err(|e| {
                anyhow::anyhow!(
                    "the producer refused {} for {}: {e}; the state points before it: --resume once the cause is fixed",
                    msg.event_id,
                    msg.topic
                )
            })
    }

    /// Waits for every send so far, then records how far the archive was read (and, over
    /// every run of the replay, how many sends were confirmed).
    fn checkpoint(&mut self, state: &mut State, path: &Path) -> anyhow::Result<()> {
        let confirmed = self.pending.len() as u64;
        self.confirm()?;
        if self.apply {
            state
                .next
                .extend(self.positions.iter().map(|(p, o)| (*p, *o)));
            state.sent += confirmed;
            state.save(path)?;
        }
        Ok(())
    }

    /// The end of the scan: every send confirmed, the archive read to `ends`.
    fn finish(
        &mut self,
        state: &mut State,
        path: &Path,
        ends: BTreeMap<i32, i64>,
    ) -> anyhow::Result<()> {
        self.positions.extend(ends);
        self.checkpoint(state, path)
    }

    /// Waits for the reports of the sends in flight; a send Kafka refused ends the replay
    /// (its state still points before it, so `--resume` sends it again).
    fn confirm(&mut self) -> anyhow::Result<()> {
        for future in self.pending.drain(..) {
            self.rt
                .block_on(future)
                .map_err(|e| anyhow::anyhow!("Kafka refused a replayed event: {e}"))?;
        }
        Ok(())
    }
}

/// An event as its source (by name) reads the body today.
pub(super) fn read_again(
    config: &Config,
    source: &str,
    content_type: &str,
    body: &[u8],
    received_ms: i64,
) -> Result<crate::event::Event, &'static str> {
    let Some(source) = config.sources.iter().find(|s| *s.name == *source) else {
        return Err("source_no_longer_configured");
    };
    let mut request = http::HeaderMap::new();
    if let Ok(ct) = content_type.parse() {
        request.insert(http::header::CONTENT_TYPE, ct);
    }
    let received_at = UNIX_EPOCH + Duration::from_millis(received_ms.max(0) as u64);
    source
        .read(&request, Bytes::copy_from_slice(body), received_at)
        .map_err(|_| "no_longer_readable")
}

/// The message today's routes make of `event`.
pub(super) fn route_again(
    config: &Config,
    event: &crate::event::Event,
) -> Result<Message, &'static str> {
    match config
        .router
        .route(&event.source, &event.slug, &event.id, &event.doc)
    {
        Decision::Drop { .. } => Err("dropped_by_todays_routes"),
        Decision::Publish { topic, key } | Decision::Overflow { topic, key } => {
            Ok(Message::new(event, topic, key))
        }
    }
}

/// The headers of a replayed message: the event's, as its source writes them today, and the
/// replay's.
fn replay_headers(msg: &Message, replayed_at: &str, replay_id: &str) -> OwnedHeaders {
    headers::of(msg)
        .insert(headers::header(REPLAYED_AT, replayed_at))
        .insert(headers::header(REPLAY_ID, replay_id))
}

/// What a resumed replay already sent past its last checkpoint: the events on the topics it
/// writes that carry its `replay-id`, since shortly before that checkpoint.
fn resumed_sends(
    cluster: &Cluster,
    state: &State,
    resuming: bool,
) -> anyhow::Result<HashSet<(String, String)>> {
    let mut sent = HashSet::new();
    if !resuming {
        return Ok(sent);
    }
    let consumer: BaseConsumer = cluster
        .scanner_config("eduzz-kafka-bridge-replay")
        .create()?;
    let since = ScanStart::Time(state.checkpoint_ms - 60_000);
    for topic in &state.topics {
        scan_if_there(&consumer, topic, &since, None, |s| {
            if s.record.header(REPLAY_ID).as_deref() == Some(state.replay_id.as_str()) {
                if let Some(key) = s.record.event_key() {
                    sent.insert((key.source().to_string(), key.id().to_string()));
                }
            }
            ControlFlow::Continue(())
        })?;
    }
    Ok(sent)
}

/// Spaces sends out to at most `rate` a second.
struct Pace {
    every: Option<Duration>,
    next: Instant,
}

impl Pace {
    fn new(rate: Option<f64>) -> Pace {
        Pace {
            every: rate
                .filter(|r| *r > 0.0)
                .map(|r| Duration::from_secs_f64(1.0 / r)),
            next: Instant::now(),
        }
    }

    fn wait(&mut self) {
        let Some(every) = self.every else { return };
        let now = Instant::now();
        if self.next > now {
            std::thread::sleep(self.next - now);
        }
        self.next = self.next.max(now) + every;
    }
}

/// A spinner with the count and rate on a terminal; nothing otherwise.
fn progress_bar() -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::with_draw_target(None, ProgressDrawTarget::hidden());
    }
    let bar = ProgressBar::new_spinner();
    if let Ok(style) =
        ProgressStyle::with_template("{spinner} {pos} archive records read ({per_sec}) {elapsed}")
    {
        bar.set_style(style);
    }
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}
