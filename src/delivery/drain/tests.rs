//! The drain alone: a real spool in a temporary directory, a fake [`Sink`] in place of Kafka,
//! and paused time, so a retry's back-off or a stop's deadline is milliseconds of test.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use super::*;
use crate::dedupe::DedupeSettings;
use crate::delivery::DeadLetterError;
use crate::event::tests::sample;
use crate::kafka::{Delivered, ReportTo};
use crate::spool::SpoolSettings;

/// One message handed to the fake: when (paused time), to which topic, and whether it went to
/// the dead-letter topic.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Handed {
    at: Instant,
    topic: String,
    id: String,
    dead_letter: bool,
}

/// What the fake Kafka does.
#[derive(Default)]
struct Script {
    /// Enqueues (counted from 1, refused ones included) answered "queue full".
    queue_full_at: HashSet<usize>,
    enqueues: usize,
    /// Per event id, what its next deliveries report (then success).
    outcomes: HashMap<String, VecDeque<RDKafkaErrorCode>>,
    /// Topics whose reports are held until [`Fake::release`].
    hold: HashSet<String>,
    held: Vec<(String, ReportTo)>,
    /// Event ids whose reports are held until [`Fake::release`] of their topic (a partition
    /// without a leader: the topic's other messages are confirmed).
    hold_ids: HashSet<String>,
    dead_letter_topic: bool,
    /// Dead-letter enqueues still to be answered "queue full".
    dead_letter_queue_full: usize,
    handed: Vec<Handed>,
    published: usize,
}

#[derive(Clone, Default)]
struct Fake(Arc<Mutex<Script>>);

impl Fake {
    fn with<T>(&self, f: impl FnOnce(&mut Script) -> T) -> T {
        f(&mut self.0.lock().unwrap())
    }

    fn handed(&self) -> Vec<Handed> {
        self.with(|s| s.handed.clone())
    }

    /// Ids handed to `topic`, in order.
    fn ids_to(&self, topic: &str) -> Vec<String> {
        let handed = self.handed();
        let to_topic = handed.iter().filter(|h| h.topic == topic && !h.dead_letter);
        to_topic.map(|h| h.id.clone()).collect()
    }

    /// Lets every held report of `topic` through, successful.
    fn release(&self, topic: &str) {
        let held = self.with(|s| {
            s.hold.remove(topic);
            s.hold_ids.clear();
            std::mem::take(&mut s.held)
        });
        for (t, to) in held {
            if t == topic {
                to.report(Ok(Delivered {
                    partition: 0,
                    offset: 0,
                }));
            } else {
                self.with(|s| s.held.push((t, to)));
            }
        }
    }

    fn hand(&self, msg: &Message, dead_letter: bool, to: ReportTo) {
        let mut s = self.0.lock().unwrap();
        s.handed.push(Handed {
            at: Instant::now(),
            topic: msg.topic.to_string(),
            id: msg.event_id.clone(),
            dead_letter,
        });
        let failure = match dead_letter {
            true => None,
            false => s
                .outcomes
                .get_mut(&msg.event_id)
                .and_then(VecDeque::pop_front),
        };
        match failure {
            Some(code) => to.report(Err(KafkaError::MessageProduction(code))),
            None if s.hold.contains(msg.topic.as_str()) || s.hold_ids.contains(&msg.event_id) => {
                s.held.push((msg.topic.to_string(), to))
            }
            None => {
                let offset = s.handed.len() as i64;
                to.report(Ok(Delivered {
                    partition: 0,
                    offset,
                }));
            }
        }
    }
}

impl Sink for Fake {
    type Pending = ();

    fn enqueue(&self, msg: &Message, to: ReportTo) -> Result<(), EnqueueError> {
        let full = self.with(|s| {
            s.enqueues += 1;
            s.queue_full_at.contains(&s.enqueues)
        });
        if full {
            return Err(EnqueueError::QueueFull);
        }
        self.hand(msg, false, to);
        Ok(())
    }

    fn enqueue_dead_letter(
        &self,
        msg: &Message,
        _error: &KafkaError,
        to: ReportTo,
    ) -> Result<(), DeadLetterError> {
        if !self.with(|s| s.dead_letter_topic) {
            return Err(DeadLetterError::NoTopic);
        }
        let full = self.with(|s| {
            let full = s.dead_letter_queue_full > 0;
            s.dead_letter_queue_full = s.dead_letter_queue_full.saturating_sub(1);
            full
        });
        if full {
            return Err(DeadLetterError::Enqueue(EnqueueError::QueueFull));
        }
        self.hand(msg, true, to);
        Ok(())
    }

    fn settle((): (), _outcome: &Outcome) {}

    fn topic_ready(&self, _msg: &Message) -> bool {
        true
    }

    fn topic_is_ready(&self, _topic: &str) -> bool {
        true
    }

    fn topics_ready(&self) -> Option<watch::Receiver<u64>> {
        None
    }

    fn published(&self) {
        self.with(|s| s.published += 1);
    }

    fn dead_lettered(&self) {}

    async fn refresh_metadata(&self) {}
}

/// A spool in a temporary directory holding one event per (topic, id), in that order.
async fn spool_with(dir: &std::path::Path, events: &[(&str, String)]) -> Spool {
    let settings = SpoolSettings {
        dir: dir.to_path_buf(),
        min_free_bytes: 0,
        ..SpoolSettings::default()
    };
    let spool = Spool::open(&settings, &DedupeSettings::default()).unwrap();
    for (topic, id) in events {
        let mut m = sample();
        m.topic = (*topic).into();
        m.event_id = id.clone();
        spool.append(&m).await.unwrap();
    }
    spool
}

/// The same, closed: opened again, its entries are read from the file, not handed over in
/// memory.
async fn closed_spool_with(dir: &std::path::Path, events: &[(&str, String)]) {
    spool_with(dir, events).await.close().await;
}

fn events(topic: &str, n: usize) -> Vec<(&str, String)> {
    (0..n).map(|i| (topic, format!("{topic}-{i}"))).collect()
}

struct Running {
    fake: Fake,
    spool: Spool,
    gauges: Arc<DrainGauges>,
    control: Arc<DrainControl>,
    stop: DrainStop,
    task: tokio::task::JoinHandle<()>,
    dir: tempfile::TempDir,
}

async fn start(events: &[(&str, String)], settings: DrainSettings, fake: Fake) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let spool = spool_with(dir.path(), events).await;
    start_on(spool, dir, settings, fake)
}

/// A drain of `spool` into `fake`, not started (tests that step it call `fill` and `on_read`
/// themselves); its gauges with it.
fn drain_on(
    spool: &Spool,
    fake: &Fake,
    settings: DrainSettings,
) -> (Drain<Fake>, Arc<DrainGauges>) {
    let gauges = Arc::new(DrainGauges::default());
    let metrics = Arc::new(Metrics::new());
    let drain = Drain::with_sink(
        spool.clone(),
        fake.clone(),
        metrics,
        settings,
        gauges.clone(),
    );
    (drain, gauges)
}

/// A drain on `spool` (whose directory is `dir`).
fn start_on(spool: Spool, dir: tempfile::TempDir, settings: DrainSettings, fake: Fake) -> Running {
    let control = Arc::new(DrainControl::default());
    let (drain, gauges) = drain_on(&spool, &fake, settings);
    let drain = drain.with_control(control.clone());
    let stop = DrainStop::default();
    let task = tokio::spawn(drain.run(stop.clone(), Until::Shutdown));
    Running {
        fake,
        spool,
        gauges,
        control,
        stop,
        task,
        dir,
    }
}

/// Waits until `done`. Paused time runs ahead whenever the runtime is idle, as it is while
/// the spool's writer thread (on the real clock) commits, so the limit is real time.
async fn until(mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !done() {
        assert!(std::time::Instant::now() < deadline, "not within 10 s");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn settings(max_in_flight: usize, per_topic: usize) -> DrainSettings {
    DrainSettings {
        max_in_flight_per_topic: per_topic,
        ..DrainSettings::new(max_in_flight)
    }
}

#[tokio::test(start_paused = true)]
async fn a_damaged_entry_is_quarantined_once_and_every_other_entry_published() {
    let dir = tempfile::tempdir().unwrap();
    closed_spool_with(dir.path(), &events("t", 3)).await;
    crate::spool::damage_entry(dir.path(), 1);
    let reopened = spool_with(dir.path(), &[]).await;
    assert_eq!(reopened.stats().depth, 3, "redb's own checks pass");
    let run = start_on(reopened, dir, settings(8, 8), Fake::default());

    until(|| run.spool.stats().depth == 0 && run.spool.quarantined() == 1).await;
    assert_eq!(
        run.fake.ids_to("t"),
        ["t-0", "t-2"],
        "never the damaged one"
    );
    assert_eq!(run.gauges.published.load(Ordering::Relaxed), 2);
    // Kept, not deleted: after a restart it is still counted, and nothing is sent again.
    run.stop.stop_by(Instant::now());
    run.task.await.unwrap();
    run.spool.close().await;
    let again = spool_with(run.dir.path(), &[]).await;
    assert_eq!((again.stats().depth, again.quarantined()), (0, 1));
}

#[tokio::test(start_paused = true)]
async fn a_topic_that_does_not_confirm_holds_its_share_and_the_others_go_on() {
    let mut spooled = events("slow", 12);
    spooled.extend(events("fast", 4));
    let fake = Fake::default();
    fake.with(|s| s.hold.insert("slow".into()));
    let run = start(&spooled, settings(8, 2), fake).await;

    until(|| run.fake.ids_to("fast").len() == 4).await;
    assert_eq!(
        run.fake.ids_to("fast"),
        ["fast-0", "fast-1", "fast-2", "fast-3"]
    );
    assert_eq!(
        run.fake.ids_to("slow"),
        ["slow-0", "slow-1"],
        "at its share: never reported on, it does not borrow"
    );
    until(|| run.spool.stats().depth == 12).await;

    release_and_finish(run, "slow", 12).await;
}

#[tokio::test(start_paused = true)]
async fn a_flowing_topic_alone_borrows_a_second_share_and_no_more() {
    let fake = Fake::default();
    fake.with(|s| s.hold.insert("busy".into()));
    let run = start(&events("busy", 20), settings(8, 2), fake).await;
    until(|| run.fake.ids_to("busy").len() == 2).await;

    // Its first two are confirmed, and Kafka stalls again: it was flowing, and alone.
    run.fake.release("busy");
    run.fake.with(|s| s.hold.insert("busy".into()));
    until(|| run.fake.ids_to("busy").len() == 6).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let borrowed: Vec<String> = (0..6).map(|i| format!("busy-{i}")).collect();
    assert_eq!(
        run.fake.ids_to("busy"),
        borrowed,
        "four in flight: two shares"
    );

    // Another topic's events flow through the half left free.
    append(&run.spool, &events("other", 3)).await;
    until(|| run.fake.ids_to("other").len() == 3).await;

    release_and_finish(run, "busy", 20).await;
}

#[tokio::test(start_paused = true)]
async fn a_topic_not_confirmed_for_a_second_keeps_to_its_share() {
    let fake = Fake::default();
    fake.with(|s| s.hold.insert("t".into()));
    let run = start(&events("t", 2), settings(8, 2), fake).await;
    until(|| run.fake.ids_to("t").len() == 2).await;
    run.fake.release("t");
    run.fake.with(|s| s.hold.insert("t".into()));
    until(|| run.spool.stats().depth == 0).await;

    // Confirmed, then nothing for five seconds: new events get its share, no more.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let more: Vec<(&str, String)> = (2..8).map(|i| ("t", format!("t-{i}"))).collect();
    append(&run.spool, &more).await;
    until(|| run.fake.ids_to("t").len() == 4).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(run.fake.ids_to("t").len(), 4, "t-2 and t-3 only");
    run.fake.release("t");
    until(|| run.spool.stats().depth == 0).await;
    run.stop.stop_by(Instant::now());
    run.task.await.unwrap();
}

/// One partition without a leader: some of a busy topic's messages are never confirmed while
/// the rest are, so it keeps flowing and borrowing until its stuck messages fill two shares.
#[tokio::test(start_paused = true)]
async fn a_topic_stalled_in_part_holds_two_shares_at_most_and_the_others_go_on() {
    let fake = Fake::default();
    let stuck: Vec<String> = (0..20).step_by(4).map(|i| format!("busy-{i}")).collect();
    fake.with(|s| s.hold_ids.extend(stuck.iter().cloned()));
    // 20: the seven left wait aside, within `max_waiting` (16 here), so the drain reads on.
    let run = start(&events("busy", 20), settings(8, 2), fake).await;
    until(|| run.fake.ids_to("busy").len() == 13).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let handed = run.fake.ids_to("busy");
    let held: Vec<&String> = handed.iter().filter(|id| stuck.contains(id)).collect();
    assert_eq!(
        held,
        ["busy-0", "busy-4", "busy-8", "busy-12"],
        "two shares, no more"
    );
    assert_eq!(handed.len(), 13, "up to busy-12, the fourth stuck one");

    append(&run.spool, &events("other", 3)).await;
    until(|| run.fake.ids_to("other").len() == 3).await;

    release_and_finish(run, "busy", 20).await;
}

/// Lets `topic`'s held reports through, waits for the spool to empty, checks that the
/// topic's `n` events were handed in spool order, each once, and stops the drain.
async fn release_and_finish(run: Running, topic: &str, n: usize) {
    run.fake.release(topic);
    until(|| run.spool.stats().depth == 0).await;
    let all: Vec<String> = (0..n).map(|i| format!("{topic}-{i}")).collect();
    assert_eq!(run.fake.ids_to(topic), all, "in spool order, each once");
    run.stop.stop_by(Instant::now());
    run.task.await.unwrap();
}

/// Appends one event per (topic, id) to a running drain's spool.
async fn append(spool: &Spool, events: &[(&str, String)]) {
    for (topic, id) in events {
        let mut m = sample();
        m.topic = (*topic).into();
        m.event_id = id.clone();
        spool.append(&m).await.unwrap();
    }
}

#[tokio::test(start_paused = true)]
async fn a_full_producer_queue_loses_no_place_in_the_order() {
    let spooled = events("t", 10);
    let fake = Fake::default();
    fake.with(|s| s.queue_full_at.extend([3, 4, 8]));
    let run = start(&spooled, settings(16, 16), fake).await;
    until(|| run.spool.stats().depth == 0).await;
    let all: Vec<String> = (0..10).map(|i| format!("t-{i}")).collect();
    assert_eq!(run.fake.ids_to("t"), all, "none skipped, none twice");
    assert_eq!(
        run.fake.with(|s| s.enqueues),
        13,
        "three refused, then taken"
    );
    run.stop.stop_by(Instant::now());
    run.task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_passing_failure_is_sent_again_after_its_backoff_and_deleted_only_once_confirmed() {
    let spooled = events("t", 3);
    let fake = Fake::default();
    let timeouts = [RDKafkaErrorCode::MessageTimedOut; 2];
    fake.with(|s| s.outcomes.insert("t-1".into(), VecDeque::from(timeouts)));
    let run = start(&spooled, settings(8, 8), fake).await;

    until(|| run.fake.ids_to("t").len() == 5).await;
    let sends: Vec<Instant> = run
        .fake
        .handed()
        .into_iter()
        .filter(|h| h.id == "t-1")
        .map(|h| h.at)
        .collect();
    assert_eq!(sends.len(), 3);
    // 500 ms, then twice that (DrainSettings::retry_backoff doubling).
    let waits = [sends[1] - sends[0], sends[2] - sends[1]];
    assert!(waits[0] >= Duration::from_millis(500), "{waits:?}");
    assert!(waits[0] < Duration::from_millis(600), "{waits:?}");
    assert!(waits[1] >= Duration::from_millis(1000), "{waits:?}");
    until(|| run.spool.stats().depth == 0).await;
    assert_eq!(run.gauges.published.load(Ordering::Relaxed), 3);

    // While its report is outstanding an entry stays spooled, however long that takes.
    run.fake.with(|s| s.hold.insert("t".into()));
    let mut m = sample();
    m.topic = "t".into();
    m.event_id = "late".into();
    run.spool.append(&m).await.unwrap();
    until(|| run.fake.ids_to("t").len() == 6).await;
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(
        run.spool.stats().depth,
        1,
        "not deleted before Kafka confirmed it"
    );
    run.fake.release("t");
    until(|| run.spool.stats().depth == 0).await;
    run.stop.stop_by(Instant::now());
    run.task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn an_event_kafka_refuses_for_good_is_parked_then_sent_again_and_the_rest_go_on() {
    let spooled = events("t", 4);
    let fake = Fake::default();
    let refused = VecDeque::from([RDKafkaErrorCode::MessageSizeTooLarge]);
    fake.with(|s| s.outcomes.insert("t-0".into(), refused));
    let settings = DrainSettings {
        park_retry: Duration::from_secs(60),
        ..settings(8, 8)
    };
    let run = start(&spooled, settings, fake).await;

    // No dead-letter topic: parked, kept in the spool; the others are published meanwhile.
    until(|| run.spool.stats().depth == 1).await;
    assert_eq!(run.gauges.parked.load(Ordering::Relaxed), 1);
    assert_eq!(run.fake.ids_to("t"), ["t-0", "t-1", "t-2", "t-3"]);
    let parked_at = run.fake.handed()[0].at;
    // A minute later it is read back from the spool and sent again; this time Kafka takes it.
    until(|| run.fake.ids_to("t").len() == 5).await;
    let again = run.fake.handed()[4].clone();
    assert_eq!(again.id, "t-0");
    assert!(again.at - parked_at >= Duration::from_secs(60));
    until(|| run.spool.stats().depth == 0).await;
    assert_eq!(run.gauges.parked.load(Ordering::Relaxed), 0);
    run.stop.stop_by(Instant::now());
    run.task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_parked_event_is_sent_again_at_once_when_an_operator_asks() {
    let spooled = events("t", 2);
    let fake = Fake::default();
    let refused = VecDeque::from([RDKafkaErrorCode::MessageSizeTooLarge]);
    fake.with(|s| s.outcomes.insert("t-0".into(), refused));
    let settings = DrainSettings {
        park_retry: Duration::from_secs(3600),
        ..settings(8, 8)
    };
    let run = start(&spooled, settings, fake).await;
    until(|| run.gauges.parked.load(Ordering::Relaxed) == 1 && run.spool.stats().depth == 1).await;
    let parked_at = run.fake.handed()[0].at;

    // The cause is fixed (the fake takes it now): `parked redrive` does not wait the hour.
    run.control.redrive_parked();
    until(|| run.spool.stats().depth == 0).await;
    let again = run.fake.handed()[2].clone();
    assert_eq!(again.id, "t-0");
    assert!(again.at - parked_at < Duration::from_secs(60));
    assert_eq!(run.gauges.parked.load(Ordering::Relaxed), 0);
    run.stop.stop_by(Instant::now());
    run.task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn with_a_dead_letter_topic_a_refused_event_goes_there_and_leaves_the_spool() {
    let spooled = events("t", 2);
    let fake = Fake::default();
    let refused = VecDeque::from([RDKafkaErrorCode::TopicAuthorizationFailed]);
    fake.with(|s| {
        s.dead_letter_topic = true;
        s.outcomes.insert("t-1".into(), refused)
    });
    let run = start(&spooled, settings(8, 8), fake).await;
    until(|| run.spool.stats().depth == 0).await;
    let dead: Vec<String> = run
        .fake
        .handed()
        .into_iter()
        .filter(|h| h.dead_letter)
        .map(|h| h.id)
        .collect();
    assert_eq!(dead, ["t-1"]);
    assert_eq!(run.gauges.dead_lettered.load(Ordering::Relaxed), 1);
    assert_eq!(run.gauges.parked.load(Ordering::Relaxed), 0);
    run.stop.stop_by(Instant::now());
    run.task.await.unwrap();
}

/// A full producer queue is no refusal of the dead letter: the event is sent again after its
/// back-off, not parked for a minute.
#[tokio::test(start_paused = true)]
async fn a_dead_letter_met_by_a_full_queue_is_tried_again_not_parked() {
    let fake = Fake::default();
    let refused = VecDeque::from([RDKafkaErrorCode::MessageSizeTooLarge; 2]);
    fake.with(|s| {
        s.dead_letter_topic = true;
        s.dead_letter_queue_full = 1;
        s.outcomes.insert("t-0".into(), refused)
    });
    let run = start(&events("t", 1), settings(8, 8), fake).await;
    until(|| run.spool.stats().depth == 0).await;
    assert_eq!(run.fake.ids_to("t"), ["t-0", "t-0"], "sent again");
    let sent: Vec<Instant> = run.fake.handed().iter().map(|h| h.at).collect();
    assert_eq!(
        sent[1] - sent[0],
        DrainSettings::new(8).retry_backoff,
        "after the back-off, not a park's minute"
    );
    assert_eq!(run.gauges.dead_lettered.load(Ordering::Relaxed), 1);
    assert_eq!(run.gauges.parked.load(Ordering::Relaxed), 0);
    run.stop.stop_by(Instant::now());
    run.task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_stop_waits_for_reports_until_its_deadline_then_leaves_the_rest_spooled() {
    let spooled = events("t", 5);
    let fake = Fake::default();
    fake.with(|s| s.hold.insert("t".into()));
    let run = start(&spooled, settings(8, 8), fake).await;
    until(|| run.fake.ids_to("t").len() == 5).await;

    let asked = Instant::now();
    run.stop.stop_by(asked + Duration::from_secs(2));
    run.task.await.unwrap();
    let took = Instant::now() - asked;
    assert!(took >= Duration::from_secs(2), "returned early: {took:?}");
    assert!(
        took < Duration::from_millis(2100),
        "returned late: {took:?}"
    );
    assert_eq!(
        run.spool.stats().depth,
        5,
        "unconfirmed entries stay for the next start"
    );
}

#[tokio::test(start_paused = true)]
async fn a_stop_with_everything_confirmed_returns_at_once_and_deletes_it_all() {
    let spooled = events("t", 5);
    let run = start(&spooled, settings(8, 8), Fake::default()).await;
    until(|| run.fake.ids_to("t").len() == 5).await;
    let asked = Instant::now();
    run.stop.stop_by(asked + Duration::from_secs(20));
    run.task.await.unwrap();
    assert!(Instant::now() - asked < Duration::from_millis(100));
    assert_eq!(run.spool.stats().depth, 0);
}

/// A backlog is read from the file one batch ahead: the next read is under way while the
/// entries of the last one wait for room in the window, one read at a time, and the drain
/// never holds more than two batches. Every entry still goes once, in order.
#[tokio::test(start_paused = true)]
async fn the_next_batch_is_read_while_the_last_one_is_sent() {
    let dir = tempfile::tempdir().unwrap();
    closed_spool_with(dir.path(), &events("t", 20)).await;
    let spool = spool_with(dir.path(), &[]).await;
    let fake = Fake::default();
    fake.with(|s| s.hold.insert("t".into()));
    let settings = DrainSettings {
        read_batch: 4,
        ..settings(2, 2)
    };
    let (mut drain, _) = drain_on(&spool, &fake, settings);

    drain.fill().await;
    assert!(
        drain.read_ahead.in_progress(),
        "nothing held: a read starts"
    );
    assert!(fake.handed().is_empty());
    let read = drain.read_ahead.done().await;
    drain.on_read(read);
    assert_eq!(drain.buffer.len(), 4);

    drain.fill().await;
    assert_eq!(fake.ids_to("t"), ["t-0", "t-1"], "the window is full");
    assert!(
        drain.read_ahead.in_progress(),
        "the next batch is being read while this one waits"
    );
    let read = drain.read_ahead.done().await;
    drain.on_read(read);
    drain.fill().await;
    assert_eq!(drain.buffer.len(), 6);
    assert!(
        !drain.read_ahead.in_progress(),
        "more than a batch held: no read until it is sent"
    );

    fake.release("t");
    drain.run(DrainStop::default(), Until::Empty).await;
    let want: Vec<String> = (0..20).map(|i| format!("t-{i}")).collect();
    assert_eq!(fake.ids_to("t"), want);
    assert_eq!(spool.stats().depth, 0);
}

/// Reading ahead is bounded in bytes too: with large bodies and Kafka not confirming, the drain
/// holds about two reads' worth (a read stops at about 4 MiB), never a batch of 1 024 of them.
#[tokio::test(start_paused = true)]
async fn large_bodies_are_read_ahead_only_up_to_a_read_s_worth_of_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let spool = spool_with(dir.path(), &[]).await;
    for i in 0..16 {
        let mut m = sample();
        m.topic = "t".into();
        m.event_id = format!("t-{i}");
        m.body = bytes::Bytes::from(vec![b'x'; 1024 * 1024]);
        spool.append(&m).await.unwrap();
    }
    spool.close().await;
    let spool = spool_with(dir.path(), &[]).await;
    let fake = Fake::default();
    fake.with(|s| s.hold.insert("t".into()));
    let (mut drain, _) = drain_on(&spool, &fake, settings(1, 1));
    for _ in 0..4 {
        drain.fill().await;
        if !drain.read_ahead.in_progress() {
            break;
        }
        let read = drain.read_ahead.done().await;
        drain.on_read(read);
    }
    assert_eq!(fake.ids_to("t"), ["t-0"], "the window holds one");
    assert!(!drain.read_ahead.in_progress(), "no read past the bound");
    let held = drain.buffer.len();
    assert!((4..=8).contains(&held), "two reads of about 4 MiB: {held}");
}
