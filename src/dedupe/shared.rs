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
//! when it was queued, then its own. When Redis cannot take them, the index is *bypassed*, not
//! waited for: the claim is answered as if nothing held the key, the replica dedupes with its
//! own spool, and the event's mark is kept (up to 100 000) to write once Redis takes it, so
//! only retries that arrive during the gap itself can be published twice. How each fault is
//! told apart and met (a dropped connection is sent again, not bypassed) is the
//! [batcher]'s to say.

mod batcher;
mod connection;

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis::Value;
use tokio::sync::{mpsc, oneshot};

use super::DedupeSettings;
use crate::event::EventKey;
use crate::metrics::Metrics;
use batcher::Batcher;
use connection::{Managed, RoundTrip};

/// Operations queued for the next round trip; past this, claims bypass the index.
const QUEUE: usize = 16 * 1024;

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
    /// and the event is marked once Redis takes marks again).
    token: Option<String>,
}

enum Op {
    Claim {
        key: Vec<u8>,
        token: String,
        reply: oneshot::Sender<ClaimReply>,
    },
    Mark {
        key: Vec<u8>,
        token: Option<String>,
        /// Answered once Redis took the mark, or it was kept for later (Redis unreachable or
        /// refusing it).
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
enum ClaimReply {
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
        let conn = Managed::new(&settings);
        Self::start_on(conn, settings, metrics)
    }

    /// Starts the index's task on `conn` (Redis, or a scripted one in tests).
    fn start_on(
        conn: impl RoundTrip,
        settings: SharedSettings,
        metrics: Arc<Metrics>,
    ) -> SharedIndex {
        let (tx, rx) = mpsc::channel(QUEUE);
        let owner: Arc<str> = replica_name().into();
        tracing::info!(index = %settings.describe(), replica = %owner, "shared dedupe index configured");
        metrics.shared_dedupe_reachable.set(1);
        metrics.shared_dedupe_marks_pending.set(0);
        let taken = format!("{TAKEN}{owner}");
        let batcher = Batcher::new(rx, conn, &settings, taken, metrics.clone());
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

    /// Claims the event for this replica, or says who has it.
    pub async fn claim(&self, event: &EventKey<'_>) -> Claim {
        let key = event.redis_key(&self.prefix);
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
                .unwrap_or(ClaimReply::Unavailable),
            Err(_) => ClaimReply::Unavailable,
        };
        let result = match answer {
            ClaimReply::Claimed => "claimed",
            ClaimReply::Taken => "taken",
            ClaimReply::Leased(_) => "leased",
            ClaimReply::Unavailable => "bypassed",
        };
        self.metrics.shared_dedupe_claim(result);
        match answer {
            ClaimReply::Claimed => Claim::Mine(Ticket {
                key,
                token: Some(token),
            }),
            ClaimReply::Unavailable => Claim::Mine(Ticket { key, token: None }),
            ClaimReply::Taken => Claim::Taken,
            ClaimReply::Leased(retry_after) => Claim::Leased { retry_after },
        }
    }

    /// Settles a claim: `taken` once the event is durable, marked for every replica to see
    /// (waited for, so that a retry after the answer finds the mark, not the claim; or kept
    /// for later while Redis is away or refuses it), otherwise released so the sender's retry is taken at
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

/// A claim's answer from its `SET … NX GET` and `PTTL` replies; `token` is the claim's value.
fn claimed(set: Option<Value>, ttl: Option<Value>, token: &str) -> ClaimReply {
    let previous = match set {
        Some(Value::Nil) => return ClaimReply::Claimed,
        Some(Value::BulkString(v)) => v,
        _ => return ClaimReply::Unavailable,
    };
    // This very claim: Redis had set it before it dropped the connection, and the round trip
    // was sent again on a new one.
    if previous == token.as_bytes() {
        return ClaimReply::Claimed;
    }
    if previous.starts_with(TAKEN.as_bytes()) {
        return ClaimReply::Taken;
    }
    let ms = match ttl {
        Some(Value::Int(ms)) if ms > 0 => ms as u64,
        _ => 1000,
    };
    ClaimReply::Leased(Duration::from_millis(ms))
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
        let mine = "lease:host/1/a:3";
        assert!(matches!(
            claimed(Some(Value::Nil), Some(Value::Int(30_000)), mine),
            ClaimReply::Claimed
        ));
        // Another delivery was taken (by any replica): a duplicate.
        let taken = claimed(text("taken:host/1/a"), Some(Value::Int(86_000_000)), mine);
        assert!(matches!(taken, ClaimReply::Taken));
        // Another replica's live claim: come back when it expires.
        let leased = claimed(text("lease:host/2/b:7"), Some(Value::Int(1_500)), mine);
        assert!(matches!(leased, ClaimReply::Leased(d) if d == Duration::from_millis(1_500)));
        // This claim itself, set by a round trip sent twice (the connection dropped): ours.
        let again = claimed(text(mine), Some(Value::Int(29_990)), mine);
        assert!(matches!(again, ClaimReply::Claimed));
        // An answer that is not what SET gives: bypass rather than guess.
        assert!(matches!(
            claimed(Some(Value::Okay), None, mine),
            ClaimReply::Unavailable
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
        let key = |s: &'static str, i: &'static str| EventKey::new(s, i).redis_key(&index.prefix);
        assert_eq!(key("eduzz", "a:b"), b"p:eduzz\x1fa:b");
        assert_ne!(key("a", "b:c"), key("a:b", "c"));
    }
}
