//! The fleet's dedupe index on Redis: a claim protocol under which a retry that lands on
//! another replica is recognised, and no event is ever lost to it.
//!
//! One key per `(source, event id)`, through three steps:
//!
//! | step | when | Redis | so that |
//! |---|---|---|---|
//! | claim | before the event is stored | `SET k lease:… NX GET PX lease`, `PTTL k` | one replica at a time stores an event |
//! | mark | once it is stored (spool fsynced, or Kafka confirmed), before the answer | `SET k taken:… GET PX window` | any later retry, on any replica, is a duplicate |
//! | release | when the replica refused it (full, unavailable) | `DEL k` if it still holds this claim | the sender's retry is taken at once |
//!
//! A retry that finds another live claim is answered 503 with `Retry-After` (never 2xx: the
//! claimant may still fail); a claim left by a replica that died expires after `lease`, and the
//! retry is then taken. Only a "taken" mark turns a delivery into a 2xx `duplicate`, and a mark
//! is written only after the event is durable, so a 2xx always means some replica holds it.
//!
//! Requests do not talk to Redis themselves: like the spool's group commit, one task sends
//! everything queued while the previous round trip was under way as one pipeline, so the index
//! costs one round trip per batch, not per event. A 2xx waits for the claim and the mark
//! (a retry after the answer then finds the mark); releases are not waited for.
//!
//! A claim (and a mark) waits at most about twice `shared_timeout`: the round trip under way
//! when it was queued, then its own. When Redis does not answer within `shared_timeout`
//! (down, slow, unreachable), the index is *bypassed*, not waited for: claims answer [`Claim::Unavailable`] at once and each
//! replica dedupes with its own spool, for a pause that doubles up to 5 s between attempts.
//! Marks of events taken meanwhile are kept (up to 100 000) and written once Redis answers
//! again, so only retries that arrive during the gap itself can be published twice.

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::Value;
use tokio::sync::{mpsc, oneshot};

use super::DedupeSettings;
use crate::metrics::Metrics;

/// Most operations sent in one round trip.
const MAX_BATCH: usize = 1024;
/// Operations queued for the next round trip; past this, claims bypass the index.
const QUEUE: usize = 16 * 1024;
/// Marks kept while Redis is away, to write once it is back.
const MAX_BACKFILL: usize = 100_000;
/// First pause after a failed round trip; doubles up to [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(250);
const MAX_PAUSE: Duration = Duration::from_secs(5);
/// How often marks kept during an outage are retried when nothing else is sent.
const BACKFILL_TICK: Duration = Duration::from_millis(200);

/// Deletes the key only if it still holds the caller's claim (a mark or another replica's
/// claim is left alone).
const RELEASE: &str =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0";

/// Value prefixes: a claim under way, and an event taken.
const LEASE: &str = "lease:";
const TAKEN: &str = "taken:";

/// `[dedupe]` with `shared` set, built: the Redis client (not yet connected) and the timings.
#[derive(Clone)]
pub struct SharedSettings {
    client: redis::Client,
    lease: Duration,
    timeout: Duration,
    window: Duration,
    prefix: String,
}

impl fmt::Debug for SharedSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

impl SharedSettings {
    /// Parses `url` (nothing is connected yet).
    pub(super) fn new(url: &str, d: &DedupeSettings) -> Result<SharedSettings, redis::RedisError> {
        Ok(SharedSettings {
            client: redis::Client::open(url)?,
            lease: d.lease,
            timeout: d.shared_timeout,
            window: d.window,
            prefix: d.key_prefix.clone(),
        })
    }

    /// Where the index lives and how claims behave, without credentials (for logs).
    pub fn describe(&self) -> String {
        format!(
            "redis {} (lease {:?}, timeout {:?})",
            self.client.get_connection_info().addr(),
            self.lease,
            self.timeout
        )
    }
}

/// What the shared index says about a delivery.
#[derive(Debug)]
pub enum Claim {
    /// This replica may store the event: settle the ticket once it knows how that went.
    Mine(Ticket),
    /// A delivery of this event was taken before, by this replica or another.
    Taken,
    /// Another delivery of this event is being stored right now; try again after this.
    Leased { retry_after: Duration },
}

/// A claim on one event, to be settled with [`SharedIndex::settle`].
#[derive(Debug)]
pub struct Ticket {
    key: Vec<u8>,
    /// The claim's value in Redis; `None` when the index was bypassed (nothing to release,
    /// and the event is marked once Redis answers again).
    token: Option<String>,
}

enum Op {
    Claim {
        key: Vec<u8>,
        token: String,
        reply: oneshot::Sender<Answer>,
    },
    Mark {
        key: Vec<u8>,
        token: Option<String>,
        /// Answered once the mark is in Redis, or kept for later.
        done: oneshot::Sender<()>,
    },
    Release {
        key: Vec<u8>,
        token: String,
    },
    /// Answered once everything queued before it was sent (or kept for later).
    Flush {
        reply: oneshot::Sender<()>,
    },
}

/// The batcher's answer to one claim.
enum Answer {
    Claimed,
    Taken,
    Leased(Duration),
    Unavailable,
}

/// Handle to the shared index; cheap to clone. Its task ends with the last handle.
#[derive(Clone)]
pub struct SharedIndex {
    tx: mpsc::Sender<Op>,
    prefix: Arc<str>,
    owner: Arc<str>,
    serial: Arc<AtomicU64>,
    timeout: Duration,
    metrics: Arc<Metrics>,
}

impl SharedIndex {
    /// Starts the index's task; Redis is connected on first use, and reconnected as needed.
    pub fn start(settings: SharedSettings, metrics: Arc<Metrics>) -> SharedIndex {
        let (tx, rx) = mpsc::channel(QUEUE);
        let owner: Arc<str> = replica_name().into();
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(settings.timeout))
            .set_response_timeout(Some(settings.timeout))
            .set_number_of_retries(1)
            .set_max_delay(MAX_PAUSE);
        let conn = ConnectionManager::new_lazy_with_config(settings.client.clone(), config);
        tracing::info!(index = %settings.describe(), replica = %owner, "shared dedupe index configured");
        metrics.shared_dedupe_reachable.set(1);
        let batcher = Batcher {
            rx,
            conn: conn.map_err(|e| e.to_string()),
            settings: settings.clone(),
            taken: format!("{TAKEN}{owner}"),
            backfill: VecDeque::new(),
            down: None,
            refusal_logged: false,
            metrics: metrics.clone(),
        };
        tokio::spawn(batcher.run());
        SharedIndex {
            tx,
            prefix: settings.prefix.into(),
            owner,
            serial: Arc::new(AtomicU64::new(0)),
            timeout: settings.timeout,
            metrics,
        }
    }

    /// Claims `(source, id)` for this replica, or says who has it.
    pub async fn claim(&self, source: &str, id: &str) -> Claim {
        let key = self.key(source, id);
        let n = self.serial.fetch_add(1, Ordering::Relaxed);
        let token = format!("{LEASE}{}:{n}", self.owner);
        let (reply, answer) = oneshot::channel();
        let op = Op::Claim {
            key: key.clone(),
            token: token.clone(),
            reply,
        };
        let answer = match self.tx.try_send(op) {
            Ok(()) => tokio::time::timeout(self.longest_wait(), answer)
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or(Answer::Unavailable),
            Err(_) => Answer::Unavailable,
        };
        let result = match answer {
            Answer::Claimed => "claimed",
            Answer::Taken => "taken",
            Answer::Leased(_) => "leased",
            Answer::Unavailable => "bypassed",
        };
        self.metrics.shared_dedupe_claim(result);
        match answer {
            Answer::Claimed => Claim::Mine(Ticket {
                key,
                token: Some(token),
            }),
            Answer::Unavailable => Claim::Mine(Ticket { key, token: None }),
            Answer::Taken => Claim::Taken,
            Answer::Leased(retry_after) => Claim::Leased { retry_after },
        }
    }

    /// Settles a claim: `taken` once the event is durable, marked for every replica to see
    /// (waited for, so that a retry after the answer finds the mark, not the claim; or kept
    /// for later while Redis is away), otherwise released so the sender's retry is taken at
    /// once (not waited for).
    pub async fn settle(&self, ticket: Ticket, taken: bool) {
        let Ticket { key, token } = ticket;
        let (done, marked) = oneshot::channel();
        let op = match (taken, token) {
            (true, token) => Op::Mark { key, token, done },
            (false, Some(token)) => Op::Release { key, token },
            // Nothing was claimed in Redis: nothing to release.
            (false, None) => return,
        };
        let queued = tokio::time::timeout(self.timeout, self.tx.send(op)).await;
        if !matches!(queued, Ok(Ok(()))) {
            self.metrics.shared_dedupe_claim("mark_dropped");
            tracing::warn!("shared dedupe queue full: a claim could not be settled (it expires after dedupe.lease)");
            return;
        }
        if taken {
            let _ = tokio::time::timeout(self.longest_wait(), marked).await;
        }
    }

    /// Sends whatever is queued; returns once it was sent or kept for later, or after `wait`.
    pub async fn flush(&self, wait: Duration) {
        let (reply, done) = oneshot::channel();
        if self.tx.send(Op::Flush { reply }).await.is_ok() {
            let _ = tokio::time::timeout(wait, done).await;
        }
    }

    /// How long an operation can take: the round trip under way when it was queued, then its
    /// own (one batch is sent at a time), each bounded by `shared_timeout`.
    fn longest_wait(&self) -> Duration {
        self.timeout * 2 + Duration::from_millis(50)
    }

    fn key(&self, source: &str, id: &str) -> Vec<u8> {
        let mut key = Vec::with_capacity(self.prefix.len() + source.len() + id.len() + 1);
        key.extend_from_slice(self.prefix.as_bytes());
        key.extend_from_slice(source.as_bytes());
        key.push(0x1f);
        key.extend_from_slice(id.as_bytes());
        key
    }
}

/// This replica's name in the index: host, process and start time, so a restarted replica
/// (same host, maybe the same pid in a container) is never mistaken for its predecessor.
fn replica_name() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "bridge".into());
    let started = crate::event::unix_ms(std::time::SystemTime::now());
    format!("{host}/{}/{started:x}", std::process::id())
}

/// Since when Redis fails, and when to try it again.
struct Down {
    since: Instant,
    retry_at: Instant,
    pause: Duration,
}

/// The task that talks to Redis: one pipeline per batch of queued operations.
struct Batcher {
    rx: mpsc::Receiver<Op>,
    /// The connection, or why it could not even be set up (a bad TLS setting, …).
    conn: Result<ConnectionManager, String>,
    settings: SharedSettings,
    /// This replica's "taken" value.
    taken: String,
    /// Keys of events taken while Redis was away, to mark once it is back.
    backfill: VecDeque<Vec<u8>>,
    down: Option<Down>,
    /// Whether a command Redis refused was logged at error level already.
    refusal_logged: bool,
    metrics: Arc<Metrics>,
}

impl Batcher {
    async fn run(mut self) {
        let mut ops = Vec::with_capacity(MAX_BATCH);
        loop {
            let backfill_due = !self.backfill.is_empty();
            tokio::select! {
                n = self.rx.recv_many(&mut ops, MAX_BATCH) => if n == 0 {
                    break;
                },
                _ = tokio::time::sleep(BACKFILL_TICK), if backfill_due => {}
            }
            self.serve(&mut ops).await;
        }
        if !self.backfill.is_empty() {
            tracing::warn!(
                events = self.backfill.len(),
                "stopping with events not yet marked in the shared dedupe index (Redis unreachable): their retries on other replicas may be published again"
            );
        }
    }

    /// Sends one batch (and marks kept from an outage) unless Redis is resting after a
    /// failure; whatever was not sent is answered as "unavailable" or kept.
    async fn serve(&mut self, ops: &mut Vec<Op>) {
        if self.resting() {
            self.bypass(ops);
            return;
        }
        let keep = self.backfill.len().min(MAX_BATCH);
        let backfill: Vec<Vec<u8>> = self.backfill.drain(..keep).collect();
        let pipe = self.pipeline(ops, &backfill);
        if pipe.is_empty() {
            self.bypass(ops);
            return;
        }
        let sent = match &mut self.conn {
            Ok(conn) => tokio::time::timeout(self.settings.timeout, pipe.query_async(conn))
                .await
                .unwrap_or_else(|_| Err(timed_out())),
            Err(why) => Err(redis::RedisError::from((
                redis::ErrorKind::Client,
                "cannot connect",
                why.clone(),
            ))),
        };
        match sent {
            Ok(values) => {
                self.healed();
                self.answer(ops, values);
            }
            Err(e) => {
                self.failed(&e);
                for key in backfill.into_iter().rev() {
                    self.backfill.push_front(key);
                }
                self.trim_backfill();
                self.bypass(ops);
            }
        }
    }

    /// The commands for `ops` and the kept marks, in order.
    fn pipeline(&self, ops: &[Op], backfill: &[Vec<u8>]) -> redis::Pipeline {
        let lease = self.settings.lease.as_millis() as u64;
        let window = self.settings.window.as_millis() as u64;
        let mut pipe = redis::pipe();
        // A command Redis refuses (an old server without `SET … NX GET`, a cluster's MOVED, an
        // ACL) fails its own operation, not the whole batch.
        pipe.ignore_errors();
        for op in ops {
            match op {
                Op::Claim { key, token, .. } => {
                    pipe.cmd("SET")
                        .arg(key)
                        .arg(token)
                        .arg("NX")
                        .arg("GET")
                        .arg("PX")
                        .arg(lease);
                    pipe.cmd("PTTL").arg(key);
                }
                Op::Mark { key, .. } => {
                    pipe.cmd("SET")
                        .arg(key)
                        .arg(&self.taken)
                        .arg("GET")
                        .arg("PX")
                        .arg(window);
                }
                Op::Release { key, token } => {
                    pipe.cmd("EVAL").arg(RELEASE).arg(1).arg(key).arg(token);
                }
                Op::Flush { .. } => {}
            }
        }
        for key in backfill {
            pipe.cmd("SET")
                .arg(key)
                .arg(&self.taken)
                .arg("PX")
                .arg(window)
                .ignore();
        }
        pipe
    }

    /// Hands each operation its reply from `values` (the pipeline's, in order).
    fn answer(&mut self, ops: &mut Vec<Op>, values: Vec<Value>) {
        let mut values = values.into_iter();
        for op in ops.drain(..) {
            match op {
                Op::Claim { reply, .. } => {
                    let (set, ttl) = (values.next(), values.next());
                    self.refused(set.as_ref());
                    let _ = reply.send(claimed(set, ttl));
                }
                Op::Mark {
                    key, token, done, ..
                } => {
                    let _ = done.send(());
                    match values.next() {
                        Some(Value::BulkString(old)) => self.check_lease(token, &old),
                        refused @ Some(Value::ServerError(_)) => {
                            self.refused(refused.as_ref());
                            self.keep(key);
                        }
                        _ => {}
                    }
                }
                Op::Release { .. } => {
                    values.next();
                }
                Op::Flush { reply } => {
                    let _ = reply.send(());
                }
            }
        }
    }

    /// A mark replaced `old`: anything but this claim (or this replica's own earlier mark)
    /// means the claim had expired and another replica may have taken the event too.
    fn check_lease(&self, token: Option<String>, old: &[u8]) {
        let Some(token) = token else { return };
        if old != token.as_bytes() && old != self.taken.as_bytes() {
            self.metrics.shared_dedupe_claim("lease_lost");
            tracing::warn!("a claim expired before its event was stored (dedupe.lease shorter than storing took): another replica may have taken it too");
        }
    }

    /// Logs a command Redis refused: once at error level (it will not heal by itself: a Redis
    /// older than 7.0, a cluster endpoint, an ACL), then at debug.
    fn refused(&mut self, reply: Option<&Value>) {
        let Some(Value::ServerError(e)) = reply else {
            return;
        };
        self.metrics.shared_dedupe_claim("refused");
        if std::mem::replace(&mut self.refusal_logged, true) {
            tracing::debug!(error = ?e, "Redis refused a shared dedupe command");
        } else {
            tracing::error!(error = ?e, "Redis refused a shared dedupe command (it needs Redis 7.0 or newer, not in cluster mode, and SET, PTTL and EVAL allowed): those events are deduped by their replica alone");
        }
    }

    /// Keeps `key` to mark once Redis takes marks again.
    fn keep(&mut self, key: Vec<u8>) {
        self.backfill.push_back(key);
        self.trim_backfill();
    }

    /// Forgets the oldest kept marks past [`MAX_BACKFILL`], counting each.
    fn trim_backfill(&mut self) {
        while self.backfill.len() > MAX_BACKFILL {
            self.backfill.pop_front();
            self.metrics.shared_dedupe_claim("mark_dropped");
        }
    }

    /// Answers without Redis: claims are bypassed, marks kept for later.
    fn bypass(&mut self, ops: &mut Vec<Op>) {
        for op in ops.drain(..) {
            match op {
                Op::Claim { reply, .. } => {
                    let _ = reply.send(Answer::Unavailable);
                }
                Op::Mark { key, done, .. } => {
                    let _ = done.send(());
                    self.keep(key);
                }
                // The claim expires by itself after the lease.
                Op::Release { .. } => {}
                Op::Flush { reply } => {
                    let _ = reply.send(());
                }
            }
        }
    }

    /// Whether Redis failed recently and is not to be tried yet.
    fn resting(&self) -> bool {
        self.down
            .as_ref()
            .is_some_and(|d| Instant::now() < d.retry_at)
    }

    fn failed(&mut self, e: &redis::RedisError) {
        let now = Instant::now();
        match &mut self.down {
            Some(d) => {
                d.pause = (d.pause * 2).min(MAX_PAUSE);
                d.retry_at = now + d.pause;
                tracing::debug!(error = %e, "shared dedupe index still unreachable");
            }
            None => {
                self.metrics.shared_dedupe_reachable.set(0);
                tracing::error!(error = %e, "shared dedupe index unreachable: each replica dedupes on its own until it answers again (a retry reaching another replica meanwhile may be published twice)");
                self.down = Some(Down {
                    since: now,
                    retry_at: now + FIRST_PAUSE,
                    pause: FIRST_PAUSE,
                });
            }
        }
    }

    fn healed(&mut self) {
        if let Some(d) = self.down.take() {
            self.metrics.shared_dedupe_reachable.set(1);
            tracing::info!(
                unreachable_seconds = d.since.elapsed().as_secs_f64(),
                marks_to_write = self.backfill.len(),
                "shared dedupe index reachable again"
            );
        }
    }
}

fn timed_out() -> redis::RedisError {
    redis::RedisError::from((
        redis::ErrorKind::Io,
        "no answer within dedupe.shared_timeout",
    ))
}

/// A claim's answer from its `SET … NX GET` and `PTTL` replies.
fn claimed(set: Option<Value>, ttl: Option<Value>) -> Answer {
    let previous = match set {
        Some(Value::Nil) => return Answer::Claimed,
        Some(Value::BulkString(v)) => v,
        _ => return Answer::Unavailable,
    };
    if previous.starts_with(TAKEN.as_bytes()) {
        return Answer::Taken;
    }
    let ms = match ttl {
        Some(Value::Int(ms)) if ms > 0 => ms as u64,
        _ => 1000,
    };
    Answer::Leased(Duration::from_millis(ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> Option<Value> {
        Some(Value::BulkString(s.as_bytes().to_vec()))
    }

    #[test]
    fn a_claim_reads_what_the_key_held() {
        // Nothing there: the key is ours now.
        assert!(matches!(
            claimed(Some(Value::Nil), Some(Value::Int(30_000))),
            Answer::Claimed
        ));
        // Another delivery was taken (by any replica): a duplicate.
        let taken = claimed(text("taken:host/1/a"), Some(Value::Int(86_000_000)));
        assert!(matches!(taken, Answer::Taken));
        // Another replica's live claim: come back when it expires.
        let leased = claimed(text("lease:host/2/b:7"), Some(Value::Int(1_500)));
        assert!(matches!(leased, Answer::Leased(d) if d == Duration::from_millis(1_500)));
        // An answer that is not what SET gives: bypass rather than guess.
        assert!(matches!(
            claimed(Some(Value::Okay), None),
            Answer::Unavailable
        ));
    }

    #[test]
    fn keys_keep_source_and_id_apart() {
        let (tx, _rx) = mpsc::channel(1);
        let index = SharedIndex {
            tx,
            prefix: "p:".into(),
            owner: "me".into(),
            serial: Arc::new(AtomicU64::new(0)),
            timeout: Duration::from_secs(1),
            metrics: Arc::new(Metrics::new()),
        };
        assert_eq!(index.key("eduzz", "a:b"), b"p:eduzz\x1fa:b");
        assert_ne!(index.key("a", "b:c"), index.key("a:b", "c"));
    }
}
