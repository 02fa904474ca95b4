//! The batcher against a scripted Redis (a map of keys behind the [`RoundTrip`] seam) that
//! can refuse writes or drop the connection on cue, in paused time: what takes seconds to
//! stage on a real server (see `tests/api/fleet.rs`) takes none here.

use std::collections::HashMap;

use crate::event::EventKey;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::{Arg, Cmd, Pipeline, Value};

use super::super::{Claim, SharedIndex, SharedSettings, Ticket};
use super::{RoundTrip, Unreachable};
use crate::dedupe::DedupeSettings;
use crate::metrics::{GaugeValues, Metrics};

/// What the scripted Redis holds and how it misbehaves.
#[derive(Default)]
struct Script {
    store: HashMap<Vec<u8>, Vec<u8>>,
    /// The error every write is answered with while set (`OOM …`, `READONLY …`).
    refuse: Option<&'static str>,
    /// Round trips still to be carried out and then lost to a dropped connection.
    drops: usize,
    /// Round trips carried out, and connections replaced.
    trips: usize,
    replaced: usize,
    /// `SCRIPT LOAD`s received.
    loads: usize,
}

impl Script {
    fn run(&mut self, cmd: &Cmd) -> Value {
        let args: Vec<&[u8]> = cmd
            .args_iter()
            .map(|a| match a {
                Arg::Simple(a) => a,
                _ => panic!("the batcher sends plain arguments"),
            })
            .collect();
        let has = |word: &[u8]| args.contains(&word);
        match (args[0], self.refuse) {
            (b"PTTL", _) => Value::Int(if self.store.contains_key(args[1]) {
                1000
            } else {
                -2
            }),
            (_, Some(refusal)) => redis::parse_redis_value(format!("-{refusal}\r\n").as_bytes())
                .expect("an error reply parses"),
            (b"SET", None) => {
                let old = self.store.get(args[1]).cloned();
                if !(has(b"NX") && old.is_some()) {
                    self.store.insert(args[1].to_vec(), args[2].to_vec());
                }
                match (has(b"GET"), old) {
                    (true, Some(old)) => Value::BulkString(old),
                    (true, None) => Value::Nil,
                    (false, _) => Value::Okay,
                }
            }
            (b"EVALSHA", None) => {
                let ours = self.store.get(args[3]).is_some_and(|v| v == args[4]);
                if ours {
                    self.store.remove(args[3]);
                }
                Value::Int(ours.into())
            }
            (other, _) => panic!("unexpected command {}", String::from_utf8_lossy(other)),
        }
    }
}

/// A handle on the script, one clone behind the seam and one in the test.
#[derive(Clone, Default)]
struct Scripted(Arc<Mutex<Script>>);

impl Scripted {
    fn with<T>(&self, f: impl FnOnce(&mut Script) -> T) -> T {
        f(&mut self.0.lock().unwrap())
    }

    /// The value of `key`, as text.
    fn value(&self, key: &[u8]) -> Option<String> {
        self.with(|s| {
            s.store
                .get(key)
                .map(|v| String::from_utf8_lossy(v).into_owned())
        })
    }
}

impl RoundTrip for Scripted {
    async fn send(&mut self, pipe: &Pipeline) -> Result<Vec<Value>, Unreachable> {
        let mut script = self.0.lock().unwrap();
        script.trips += 1;
        // The script is loaded with its reply ignored, as a real pipeline leaves it out.
        let is_load = |cmd: &&Cmd| matches!(cmd.args_iter().next(), Some(Arg::Simple(b"SCRIPT")));
        script.loads += pipe.cmd_iter().filter(is_load).count();
        let replies = pipe
            .cmd_iter()
            .filter(|cmd| !is_load(cmd))
            .map(|cmd| script.run(cmd))
            .collect();
        if script.drops > 0 {
            script.drops -= 1;
            let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
            return Err(Unreachable::Redis(reset.into()));
        }
        Ok(replies)
    }

    fn replace(&mut self) {
        self.with(|s| s.replaced += 1);
    }
}

const OOM: &str = "OOM command not allowed when used memory > 'maxmemory'.";
const READONLY: &str = "READONLY You can't write against a read only replica.";

fn index(redis: &Scripted) -> (SharedIndex, Arc<Metrics>) {
    let settings = SharedSettings::new("redis://127.0.0.1:1/", &DedupeSettings::default());
    let metrics = Arc::new(Metrics::new());
    let index = SharedIndex::start_on(redis.clone(), settings.unwrap(), metrics.clone());
    (index, metrics)
}

/// One series of `metrics` as `/metrics` prints it (0 when absent).
fn series(metrics: &Metrics, name: &str) -> f64 {
    let text = metrics.render(GaugeValues::default());
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

async fn ticket(index: &SharedIndex, id: &str) -> Ticket {
    match index.claim(&EventKey::new("eduzz", id)).await {
        Claim::Mine(ticket) => ticket,
        other => panic!("{id}: {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn a_mark_redis_refuses_is_kept_and_retried_until_redis_takes_it() {
    let redis = Scripted::default();
    let (index, metrics) = index(&redis);
    redis.with(|s| s.refuse = Some(OOM));
    let t = ticket(&index, "e1").await;
    assert!(t.token.is_none(), "a refused claim is bypassed");
    let key = t.key.clone();
    index.settle(t, true).await;
    // Kept and retried while refused, counted once, and shown as pending all along.
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            series(&metrics, "eduzz_bridge_shared_dedupe_marks_pending"),
            1.0
        );
    }
    let trips = redis.with(|s| s.trips);
    assert!(
        trips >= 5,
        "the kept mark was sent again: {trips} round trips"
    );
    let refused = "eduzz_bridge_shared_dedupe_total{result=\"mark_refused\"}";
    assert_eq!(series(&metrics, refused), 1.0);
    assert_eq!(redis.value(&key), None);
    // Redis takes writes again: the mark is written, nothing waits.
    redis.with(|s| s.refuse = None);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(redis.value(&key).unwrap().starts_with("taken:"));
    assert_eq!(
        series(&metrics, "eduzz_bridge_shared_dedupe_marks_pending"),
        0.0
    );
    assert_eq!(
        series(
            &metrics,
            "eduzz_bridge_shared_dedupe_total{result=\"mark_dropped\"}"
        ),
        0.0
    );
    // The index was answering all along.
    assert_eq!(
        series(&metrics, "eduzz_bridge_shared_dedupe_reachable"),
        1.0
    );
}

#[tokio::test(start_paused = true)]
async fn a_round_trip_lost_to_a_dropped_connection_is_sent_again_not_bypassed() {
    let redis = Scripted::default();
    let (index, metrics) = index(&redis);
    // Redis carries out the claim, then the connection drops before its reply.
    redis.with(|s| s.drops = 1);
    let t = ticket(&index, "e1").await;
    let token = t.token.clone().expect("claimed in Redis, not bypassed");
    assert_eq!(redis.value(&t.key), Some(token), "the claim found itself");
    let key = t.key.clone();
    // The mark's round trip is lost the same way: sent again, and it finds its own claim.
    redis.with(|s| s.drops = 1);
    index.settle(t, true).await;
    assert!(redis.value(&key).unwrap().starts_with("taken:"));
    let dropped = "eduzz_bridge_shared_dedupe_reconnects_total{reason=\"dropped\"}";
    assert_eq!(series(&metrics, dropped), 2.0);
    for result in ["bypassed", "lease_lost"] {
        let name = format!("eduzz_bridge_shared_dedupe_total{{result=\"{result}\"}}");
        assert_eq!(series(&metrics, &name), 0.0, "{result}");
    }
    assert_eq!(
        series(&metrics, "eduzz_bridge_shared_dedupe_reachable"),
        1.0
    );
    assert_eq!(
        series(&metrics, "eduzz_bridge_shared_dedupe_marks_pending"),
        0.0
    );
}

#[tokio::test(start_paused = true)]
async fn a_connection_that_drops_again_at_once_is_an_outage() {
    let redis = Scripted::default();
    let (index, metrics) = index(&redis);
    redis.with(|s| s.drops = 2);
    let t = ticket(&index, "e1").await;
    assert!(t.token.is_none(), "bypassed");
    assert_eq!(
        series(&metrics, "eduzz_bridge_shared_dedupe_reachable"),
        0.0
    );
    let dropped = "eduzz_bridge_shared_dedupe_reconnects_total{reason=\"dropped\"}";
    assert_eq!(series(&metrics, dropped), 0.0, "no reconnect that worked");
    index.settle(t, true).await;
    assert_eq!(
        series(&metrics, "eduzz_bridge_shared_dedupe_marks_pending"),
        1.0
    );
}

#[tokio::test(start_paused = true)]
async fn a_read_only_redis_is_connected_to_again_at_most_once_a_second() {
    let redis = Scripted::default();
    let (index, metrics) = index(&redis);
    redis.with(|s| s.refuse = Some(READONLY));
    for n in 0..5 {
        let t = ticket(&index, &format!("e{n}")).await;
        index.settle(t, true).await;
    }
    assert_eq!(redis.with(|s| s.replaced), 1);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        redis.with(|s| s.replaced),
        2,
        "the kept marks' retry met READONLY again"
    );
    let read_only = "eduzz_bridge_shared_dedupe_reconnects_total{reason=\"read_only\"}";
    assert_eq!(series(&metrics, read_only), 2.0);
    assert_eq!(
        series(&metrics, "eduzz_bridge_shared_dedupe_marks_pending"),
        5.0
    );
    redis.with(|s| s.refuse = None);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        series(&metrics, "eduzz_bridge_shared_dedupe_marks_pending"),
        0.0
    );
}

#[tokio::test(start_paused = true)]
async fn a_claim_not_taken_is_released_by_its_script_and_a_retry_may_claim_again() {
    let redis = Scripted::default();
    let (index, _metrics) = index(&redis);
    let t = ticket(&index, "e1").await;
    let key = t.key.clone();
    assert!(redis.value(&key).is_some(), "claimed");
    index.settle(t, false).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        redis.value(&key),
        None,
        "the release script deleted the claim"
    );
    assert_eq!(
        redis.with(|s| s.loads),
        1,
        "the script was loaded with its batch"
    );
    // Another replica's claim is not ours to release.
    let t = ticket(&index, "e1").await;
    let key = t.key.clone();
    redis.with(|s| s.store.insert(key.clone(), b"someone-else".to_vec()));
    index.settle(t, false).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(redis.value(&key).as_deref(), Some("someone-else"));
}
