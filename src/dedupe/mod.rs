//! Remembering which events were already taken, so a retried delivery is not published twice.
//!
//! Two memories, one question ("was `(source, event id)` taken before?"):
//! - each replica's [spool](crate::spool) remembers what *it* took, in the same transaction
//!   that stores the event (always on with `dedupe.enabled`);
//! - with `dedupe.shared`, the [`SharedIndex`] on Redis remembers what *any* replica took, so
//!   a retry that a load balancer sends to another replica is recognised too.
//!
//! The shared index is asked first and the spool second: a replica that cannot reach Redis
//! still dedupes what reaches it, and marks its events in Redis once Redis is back.

mod shared;

use std::time::Duration;

use serde::Deserialize;

use crate::problem::Problems;
use crate::secret::Secret;
pub use shared::{Claim, SharedIndex, SharedSettings, Ticket};

/// `[dedupe]`: remembering which (source, event id) pairs were already accepted.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DedupeSettings {
    pub enabled: bool,
    /// How long an accepted id is remembered.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// Most ids remembered by one replica's spool; the oldest are forgotten first.
    pub max_entries: u64,
    /// A Redis URL (`redis://`, `rediss://`, or `env:NAME` / `file:PATH` holding one) for a
    /// dedupe index shared by every replica; without it each replica dedupes on its own.
    pub shared: Option<Secret>,
    /// How long a replica's claim on an event holds while it stores the event; the claim of a
    /// replica that died meanwhile expires after this, and a retry is then taken.
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    /// Longest a request waits for the shared index before going on without it.
    #[serde(with = "humantime_serde")]
    pub shared_timeout: Duration,
    /// Prefix of the shared index's keys (one Redis can serve several deployments).
    pub key_prefix: String,
}

impl Default for DedupeSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            window: Duration::from_secs(24 * 3600),
            max_entries: 1_000_000,
            shared: None,
            lease: Duration::from_secs(30),
            shared_timeout: Duration::from_secs(1),
            key_prefix: "eduzz-kafka-bridge:".into(),
        }
    }
}

impl DedupeSettings {
    /// Checks the settings and builds the shared index's settings when one is configured;
    /// problems go to `problems` under `dedupe.…`.
    pub(crate) fn build(&self, problems: &mut Problems) -> Option<SharedSettings> {
        problems.require(
            !self.enabled || self.max_entries > 0,
            "dedupe.max_entries",
            "must be greater than 0 (or set dedupe.enabled = false)",
        );
        let secret = self.shared.as_ref()?;
        problems.require(self.enabled, "dedupe.shared", "needs dedupe.enabled = true");
        problems.require(
            self.lease >= Duration::from_secs(1),
            "dedupe.lease",
            "must be at least 1s (it must outlast storing an event)",
        );
        problems.require(
            !self.shared_timeout.is_zero() && self.shared_timeout < self.lease,
            "dedupe.shared_timeout",
            "must be greater than 0 and shorter than dedupe.lease",
        );
        let url = problems.check("dedupe.shared", secret.resolve())?;
        let url = String::from_utf8_lossy(&url);
        problems.check("dedupe.shared", SharedSettings::new(&url, self))
    }
}
