//! The task that talks to Redis for a [`SharedIndex`](super::SharedIndex): everything queued
//! while one round trip was under way goes as the next pipeline, and each operation is
//! answered from its reply.
//!
//! What it does when Redis does not take a round trip depends on why:
//!
//! | fault | seen as | answer |
//! |---|---|---|
//! | Redis closed the connection (`CLIENT KILL`, a proxy's idle timeout) | a dropped connection | sent again at once on a new one, within the same `shared_timeout`: not an outage, nothing bypassed; `shared_dedupe_reconnects_total{reason="dropped"}` |
//! | Redis down, slow, unreachable | no reply within `shared_timeout` | the batch is bypassed and Redis rests for a pause doubling up to 5 s; `shared_dedupe_reachable 0` |
//! | Redis answers but refuses writes (`OOM` at `maxmemory`, `READONLY` after a failover) | an error reply per command | that claim is bypassed; that mark is kept, counted (`mark_refused`) and retried; one line per episode; a `READONLY` connection is replaced |
//!
//! A mark not in Redis is a retry on another replica published twice, so no mark is let go
//! but past [`MAX_BACKFILL`] (counted as `mark_dropped`): the kept ones are sent with later
//! round trips (or every [`BACKFILL_TICK`] when nothing else is) until Redis takes them, and
//! `shared_dedupe_marks_pending` shows how many wait, for an alert.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use crate::retry::Outage;

use redis::{ServerError, Value};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::connection::{RoundTrip, Unreachable};
use super::{claimed, ClaimReply, Op, SharedSettings};
use crate::metrics::Metrics;
use crate::telemetry::LogThrottle;

/// Most operations sent in one round trip.
const MAX_BATCH: usize = 1024;
/// Marks kept while Redis does not take them, to write once it does.
const MAX_BACKFILL: usize = 100_000;
/// First pause after a failed round trip; doubles up to [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(250);
pub(super) const MAX_PAUSE: Duration = Duration::from_secs(5);
/// How often kept marks are sent when nothing else is, and again after Redis refused them.
const BACKFILL_TICK: Duration = Duration::from_millis(200);
/// Shortest time between two new connections after `READONLY` replies.
const REPLACE_EVERY: Duration = Duration::from_secs(1);
/// Shortest time between two log lines of one kind (a refusal episode starting or ending, a
/// reconnect), so a Redis that flaps cannot flood the log.
const LOG_EVERY: Duration = Duration::from_secs(60);

/// Deletes the key only if it still holds the caller's claim (a mark or another replica's
/// claim is left alone). Sent by its hash (`EVALSHA`); a batch that releases loads it first,
/// in the same pipeline, so a restarted or failed-over Redis never answers `NOSCRIPT`.
static RELEASE: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0",
    )
});

/// A mark not in Redis yet.
struct Kept {
    key: Vec<u8>,
    /// Whether Redis refused it already (it is counted as `mark_refused` once).
    refused: bool,
}

/// Since when Redis answers but refuses writes, and how many.
struct Refusing {
    since: Instant,
    refused: u64,
}

/// What Redis did with one round trip's writes (claims, marks, releases).
#[derive(Default)]
struct Writes {
    taken: u64,
    refused: u64,
    first_refusal: Option<ServerError>,
    read_only: bool,
}

impl Writes {
    /// Reads one write's reply: whether Redis refused it.
    fn note(&mut self, reply: Option<&Value>) -> bool {
        let Some(Value::ServerError(e)) = reply else {
            self.taken += 1;
            return false;
        };
        self.refused += 1;
        self.read_only |= e.code() == "READONLY";
        self.first_refusal.get_or_insert_with(|| e.clone());
        true
    }
}

/// The task that talks to Redis: one pipeline per batch of queued operations.
pub(super) struct Batcher<C> {
    rx: mpsc::Receiver<Op>,
    conn: C,
    /// `lease`, `window` (as milliseconds for Redis) and `shared_timeout`.
    lease_ms: u64,
    window_ms: u64,
    timeout: Duration,
    /// This replica's "taken" value.
    taken: String,
    /// Marks Redis has not taken yet, oldest first.
    backfill: VecDeque<Kept>,
    /// Kept marks are not sent before this (set after Redis refused them).
    backfill_at: Instant,
    /// Redis failing: since when, and when to try it again.
    down: Outage,
    refusing: Option<Refusing>,
    /// When the connection was last replaced after `READONLY`.
    replaced_at: Option<Instant>,
    lines: LogThrottle,
    metrics: Arc<Metrics>,
}

impl<C: RoundTrip> Batcher<C> {
    pub(super) fn new(
        rx: mpsc::Receiver<Op>,
        conn: C,
        settings: &SharedSettings,
        taken: String,
        metrics: Arc<Metrics>,
    ) -> Batcher<C> {
        Batcher {
            rx,
            conn,
            lease_ms: settings.lease.as_millis() as u64,
            window_ms: settings.window.as_millis() as u64,
            timeout: settings.timeout,
            taken,
            backfill: VecDeque::new(),
            backfill_at: Instant::now(),
            down: Outage::new(FIRST_PAUSE, MAX_PAUSE),
            refusing: None,
            replaced_at: None,
            lines: LogThrottle::new(LOG_EVERY),
            metrics,
        }
    }

    pub(super) async fn run(mut self) {
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
                "stopping with events not yet marked in the shared dedupe index (Redis unreachable or refusing writes): their retries on other replicas may be published again"
            );
        }
    }

    /// Sends one batch (and kept marks, when due) unless Redis is resting after a failure;
    /// whatever Redis did not take is answered as "unavailable" or kept.
    async fn serve(&mut self, ops: &mut Vec<Op>) {
        if self.resting() {
            self.bypass(ops);
        } else {
            let backfill = self.due_backfill();
            let pipe = self.pipeline(ops, &backfill);
            if pipe.is_empty() {
                self.bypass(ops);
            } else {
                match self.round_trip(&pipe).await {
                    Ok(values) => {
                        self.healed();
                        self.answer(ops, backfill, values);
                    }
                    Err(e) => {
                        self.failed(&e);
                        self.keep_oldest(backfill);
                        self.bypass(ops);
                    }
                }
            }
        }
        let pending = i64::try_from(self.backfill.len()).unwrap_or(i64::MAX);
        self.metrics.shared_dedupe_marks_pending.set(pending);
    }

    /// The kept marks to send with this round trip: none while Redis refused them a moment
    /// ago, else the oldest [`MAX_BATCH`].
    fn due_backfill(&mut self) -> Vec<Kept> {
        if Instant::now() < self.backfill_at {
            return Vec::new();
        }
        let n = self.backfill.len().min(MAX_BATCH);
        self.backfill.drain(..n).collect()
    }

    /// Sends `pipe` within `shared_timeout`; when Redis dropped the connection, sends it once
    /// more on a new one in what is left of that time. Sending twice is safe: a claim finds
    /// itself (see [`claimed`]), a mark finds this replica's mark, a release finds nothing.
    async fn round_trip(&mut self, pipe: &redis::Pipeline) -> Result<Vec<Value>, Unreachable> {
        let deadline = Instant::now() + self.timeout;
        match self.attempt(pipe, deadline).await {
            Err(e) if e.dropped() => {
                let again = self.attempt(pipe, deadline).await;
                if again.is_ok() {
                    self.metrics.shared_dedupe_reconnect("dropped");
                    if let Some(held_back) = self.lines.admit("dropped") {
                        tracing::info!(error = %e, similar_since_last_line = held_back, "Redis dropped the shared dedupe connection: sent again on a new one (not an outage, nothing bypassed)");
                    }
                }
                again
            }
            sent => sent,
        }
    }

    async fn attempt(
        &mut self,
        pipe: &redis::Pipeline,
        deadline: Instant,
    ) -> Result<Vec<Value>, Unreachable> {
        match tokio::time::timeout_at(deadline, self.conn.send(pipe)).await {
            Ok(sent) => sent,
            Err(_) => Err(Unreachable::TimedOut),
        }
    }

    /// The commands for `ops` and the kept marks, in order.
    fn pipeline(&self, ops: &[Op], backfill: &[Kept]) -> redis::Pipeline {
        let mut pipe = redis::pipe();
        // A command Redis refuses (OOM, READONLY, an old server without `SET … NX GET`, an
        // ACL) fails its own operation, not the whole batch.
        pipe.ignore_errors();
        if ops.iter().any(|op| matches!(op, Op::Release { .. })) {
            // Its reply (the hash) is not one of the operations' replies.
            pipe.load_script(&RELEASE).ignore();
        }
        for op in ops {
            match op {
                Op::Claim { key, token, .. } => {
                    pipe.cmd("SET")
                        .arg(key)
                        .arg(token)
                        .arg("NX")
                        .arg("GET")
                        .arg("PX")
                        .arg(self.lease_ms);
                    pipe.cmd("PTTL").arg(key);
                }
                Op::Mark { key, .. } => {
                    pipe.cmd("SET")
                        .arg(key)
                        .arg(&self.taken)
                        .arg("GET")
                        .arg("PX")
                        .arg(self.window_ms);
                }
                Op::Release { key, token } => {
                    pipe.invoke_script(RELEASE.key(key).arg(token));
                }
                Op::Flush { .. } => {}
            }
        }
        for kept in backfill {
            pipe.cmd("SET")
                .arg(&kept.key)
                .arg(&self.taken)
                .arg("PX")
                .arg(self.window_ms);
        }
        pipe
    }

    /// Hands each operation its reply from `values` (the pipeline's, in order), then keeps
    /// again the kept marks Redis refused.
    fn answer(&mut self, ops: &mut Vec<Op>, backfill: Vec<Kept>, values: Vec<Value>) {
        let mut values = values.into_iter();
        let mut writes = Writes::default();
        for op in ops.drain(..) {
            match op {
                Op::Claim { token, reply, .. } => {
                    let (set, ttl) = (values.next(), values.next());
                    if writes.note(set.as_ref()) {
                        self.metrics.shared_dedupe_claim("refused");
                    }
                    let _ = reply.send(claimed(set, ttl, &token));
                }
                Op::Mark { key, token, done } => {
                    let _ = done.send(());
                    let reply = values.next();
                    if writes.note(reply.as_ref()) {
                        self.metrics.shared_dedupe_claim("mark_refused");
                        self.keep(Kept { key, refused: true });
                    } else if let Some(Value::BulkString(old)) = reply {
                        self.check_lease(token, &old);
                    }
                }
                Op::Release { .. } => {
                    if writes.note(values.next().as_ref()) {
                        self.metrics.shared_dedupe_claim("refused");
                    }
                }
                Op::Flush { reply } => {
                    let _ = reply.send(());
                }
            }
        }
        let mut refused = Vec::new();
        for (kept, reply) in backfill.into_iter().zip(values) {
            if writes.note(Some(&reply)) {
                if !kept.refused {
                    self.metrics.shared_dedupe_claim("mark_refused");
                }
                refused.push(Kept {
                    refused: true,
                    ..kept
                });
            }
        }
        if !refused.is_empty() {
            self.backfill_at = Instant::now() + BACKFILL_TICK;
            self.keep_oldest(refused);
        }
        self.after(writes);
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

    /// Follows refusal episodes: the first refusal starts one (logged at error), a round trip
    /// whose writes Redis all took with no mark left waiting ends it (logged at info). A
    /// `READONLY` connection is replaced, as it may lead to a demoted primary.
    fn after(&mut self, writes: Writes) {
        if writes.read_only {
            self.replace_connection();
        }
        if let Some(e) = writes.first_refusal {
            match &mut self.refusing {
                Some(r) => r.refused += writes.refused,
                None => self.refusals_began(&e, writes.refused),
            }
        } else if writes.taken > 0 && self.backfill.is_empty() {
            if let Some(r) = self.refusing.take() {
                if let Some(held_back) = self.lines.admit("refusals_ended") {
                    tracing::info!(
                        refused_seconds = r.since.elapsed().as_secs_f64(),
                        refused = r.refused,
                        similar_since_last_line = held_back,
                        "Redis takes shared dedupe writes again; the marks it refused are written"
                    );
                }
            }
        }
    }

    fn refusals_began(&mut self, e: &ServerError, refused: u64) {
        self.refusing = Some(Refusing {
            since: Instant::now(),
            refused,
        });
        let (code, detail) = (e.code(), e.details().unwrap_or_default());
        let Some(held_back) = self.lines.admit("refusals_began") else {
            tracing::debug!(code, detail, "Redis refuses shared dedupe writes again");
            return;
        };
        tracing::error!(
            code,
            detail,
            hint = hint(code),
            similar_since_last_line = held_back,
            "Redis refuses shared dedupe writes: claims are bypassed (each replica dedupes on its own, a retry reaching another replica may be published twice) and refused marks are kept and retried until Redis takes them (shared_dedupe_marks_pending)"
        );
    }

    /// A new connection after `READONLY`, at most once per [`REPLACE_EVERY`].
    fn replace_connection(&mut self) {
        let now = Instant::now();
        if self.replaced_at.is_some_and(|at| now < at + REPLACE_EVERY) {
            return;
        }
        self.replaced_at = Some(now);
        self.conn.replace();
        self.metrics.shared_dedupe_reconnect("read_only");
    }

    /// Keeps `key` to mark once Redis takes marks again.
    fn keep(&mut self, kept: Kept) {
        self.backfill.push_back(kept);
        self.trim_backfill();
    }

    /// Puts back kept marks that were sent and not taken, ahead of the others (they are the
    /// oldest).
    fn keep_oldest(&mut self, kept: Vec<Kept>) {
        for k in kept.into_iter().rev() {
            self.backfill.push_front(k);
        }
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
                    let _ = reply.send(ClaimReply::Unavailable);
                }
                Op::Mark { key, done, .. } => {
                    let _ = done.send(());
                    self.keep(Kept {
                        key,
                        refused: false,
                    });
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
        self.down.waiting(Instant::now())
    }

    fn failed(&mut self, e: &Unreachable) {
        if self.down.fail(Instant::now()).started {
            self.metrics.shared_dedupe_reachable.set(0);
            tracing::error!(error = %e, "shared dedupe index unreachable: each replica dedupes on its own until it answers again (a retry reaching another replica meanwhile may be published twice)");
        } else {
            tracing::debug!(error = %e, "shared dedupe index still unreachable");
        }
    }

    fn healed(&mut self) {
        if let Some(lasted) = self.down.succeed(Instant::now()) {
            self.metrics.shared_dedupe_reachable.set(1);
            tracing::info!(
                unreachable_seconds = lasted.as_secs_f64(),
                marks_to_write = self.backfill.len(),
                "shared dedupe index reachable again"
            );
        }
    }
}

/// What an operator can do about a refusal with error `code`.
fn hint(code: &str) -> &'static str {
    match code {
        "OOM" => "Redis is at its maxmemory: give it more (about 210 bytes per event in dedupe.window)",
        "READONLY" => "the address leads to a read-only replica (after a failover?): connecting again until it leads to the primary",
        "NOPERM" => "the Redis user needs SET, PTTL, EVALSHA and SCRIPT LOAD on the key prefix",
        "MOVED" | "ASK" | "CROSSSLOT" | "CLUSTERDOWN" => "a Redis in cluster mode: use one that is not",
        _ => "the index needs Redis 7.0 or newer (SET … NX GET)",
    }
}

#[cfg(test)]
mod tests;
